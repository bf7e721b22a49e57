//! Giving memory back: hash maps that shrink once mostly empty, and the allocator's free
//! pages returned to the system. The daemon's tables grow with what the kernel holds (a
//! million inodes in an epoch) and must fall back near idle once it forgets them: large
//! tables are mappings of their own, free pages are trimmed, the daemon runs without
//! glibc's per-thread caches of freed chunks (their chunks pin pages no trim returns), and
//! the buffers that copied replies are read into are kept in one pool that a trim empties
//! (a worker's own buffer stayed resident for the daemon's life).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::sync::Mutex;

use crate::lock::lock;

/// Shrinks `map` to twice its length when it uses under a quarter of its capacity (a hash
/// map never shrinks by itself: after the kernel forgot a million inodes, their slots would
/// stay). Returns whether it shrank.
pub fn shrink_if_sparse<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) -> bool {
    if !is_sparse(map.len(), map.capacity()) {
        return false;
    }
    map.shrink_to(2 * map.len());
    true
}

/// [`shrink_if_sparse`] for a set.
pub fn shrink_set_if_sparse<T: std::hash::Hash + Eq>(set: &mut HashSet<T>) -> bool {
    if !is_sparse(set.len(), set.capacity()) {
        return false;
    }
    set.shrink_to(2 * set.len());
    true
}

/// Whether a table of `capacity` slots holding `len` entries should give memory back: under a
/// quarter used, and more than a few thousand slots spare.
pub fn is_sparse(len: usize, capacity: usize) -> bool {
    is_sparse_by(len, capacity, 4096)
}

/// [`is_sparse`] with `spare` slots instead of a few thousand: for a table that is one of
/// many (the tier's 64 shards each keeping 4,096 spare slots would keep 4.4 MB).
pub fn is_sparse_by(len: usize, capacity: usize, spare: usize) -> bool {
    capacity > 4 * len + spare
}

/// Large allocations (128 KiB and up: the tables of a million inodes) get pages of their own
/// from `mmap`, given back whole when freed. glibc otherwise raises that threshold each time
/// such a block is freed (up to 32 MiB) and then serves the next tables from a thread's
/// arena, whose free top `malloc_trim` never returns: a million-inode epoch left 30 MiB
/// resident after the kernel forgot every inode. Setting the threshold once fixes it (and
/// the trim threshold) at glibc's default. Call before the daemon's threads start.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes no pointer and only sets an allocator parameter, under the
    // allocator's own lock; any value is valid for M_MMAP_THRESHOLD up to 32 MiB.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// The tunable that turns glibc's per-thread caches of freed chunks off.
const NO_THREAD_CACHES: &str = "glibc.malloc.tcache_count=0";

/// glibc keeps up to 7 freed chunks of each size in a cache per thread, and `malloc_trim`
/// leaves them alone. After the kernel forgot a million inodes those cached chunks, one in
/// each of hundreds of otherwise free pages, kept 1.5–2.5 MiB resident while the live heap
/// was back within 18 KB of its idle size (heaptrack); with the caches off the daemon went
/// back to its idle RSS exactly, and small-file epochs ran as fast (docs/BENCH.md). The
/// caches can only be turned off by a tunable read at process start: this gives the
/// `GLIBC_TUNABLES` value to start again with, or None when `current` already sets the
/// cache's size (the operator's choice stands, and a restarted daemon does not restart again).
pub fn tunables_without_thread_caches(current: Option<&OsStr>) -> Option<OsString> {
    let current = current.unwrap_or_default();
    if current
        .as_bytes()
        .split(|&b| b == b':')
        .any(|t| t.starts_with(b"glibc.malloc.tcache_count="))
    {
        return None;
    }
    let mut value = current.to_os_string();
    if !value.is_empty() {
        value.push(":");
    }
    value.push(NO_THREAD_CACHES);
    Some(value)
}

/// Starts the daemon's program again, same arguments, with glibc's per-thread caches off
/// ([`tunables_without_thread_caches`]). Returns only when that is not needed (not glibc, or
/// already set) or the exec failed; the daemon then runs with the caches, which costs only
/// memory after forgets. Call first thing in `main`, before any thread starts.
pub fn restart_without_thread_caches() -> Option<std::io::Error> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return None;
    }
    let value = tunables_without_thread_caches(std::env::var_os("GLIBC_TUNABLES").as_deref())?;
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    Some(cmd.args(args).env("GLIBC_TUNABLES", value).exec())
}

/// Buffers kept at most by a [`BufferPool`]: more than the workers that copy at once.
const POOL_KEEPS: usize = 8;

/// Request-sized buffers for the replies the daemon copies (a read's bytes), reused from one
/// request to the next so that a read does not fault fresh pages in, and given back whole by
/// [`BufferPool::release`] (which [`release_free_memory`] calls). A buffer per worker thread
/// (a thread-local) kept the megabyte of the largest read resident for the daemon's life:
/// 2.1 MB of the 2.5 MB that a device-view epoch over 100,000 files left after `evict -r`
/// and `drop_caches` (heaptrack), where the daemon had been at 1.1 MB.
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// The daemon's pool (one per process: [`release_free_memory`] is process-wide too).
pub static REPLY_BUFFERS: BufferPool = BufferPool::new();

impl BufferPool {
    pub const fn new() -> BufferPool {
        BufferPool {
            free: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a buffer of `len` bytes (its contents are whatever an earlier request
    /// left), then keeps the buffer for the next request. A new buffer is zeroed by the
    /// allocator (a large one is a fresh mapping whose pages fault in as `f` writes them).
    pub fn with<R>(&self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut buf = lock(&self.free).pop().unwrap_or_default();
        if buf.len() < len {
            // Not `resize`: that would copy the old bytes and write every new page.
            buf = vec![0; len];
        }
        let out = f(&mut buf[..len]);
        let mut free = lock(&self.free);
        if free.len() < POOL_KEEPS {
            free.push(buf);
        }
        out
    }

    /// Bytes the pool keeps now (buffers lent to a request are not counted).
    pub fn kept_bytes(&self) -> u64 {
        lock(&self.free).iter().map(|b| b.capacity() as u64).sum()
    }

    /// Frees every buffer kept (a request holding one keeps it until it is done).
    pub fn release(&self) {
        let kept = std::mem::take(&mut *lock(&self.free));
        drop(kept);
    }
}

impl Default for BufferPool {
    fn default() -> Self {
        Self::new()
    }
}

/// Returns the heap's free pages to the system, after the reply buffers: glibc keeps what
/// many small frees (a forgotten table) gave back otherwise.
pub fn release_free_memory() {
    REPLY_BUFFERS.release();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer; it only walks the allocator's own free lists,
    // under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunables(current: Option<&str>) -> Option<String> {
        tunables_without_thread_caches(current.map(OsStr::new)).map(|v| v.into_string().unwrap())
    }

    #[test]
    fn a_pooled_buffer_is_reused_until_released() {
        let pool = BufferPool::new();
        assert_eq!(pool.kept_bytes(), 0);
        let first = pool.with(1 << 20, |b| {
            assert_eq!(b.len(), 1 << 20);
            b[0] = 7;
            b.as_ptr() as usize
        });
        assert!(pool.kept_bytes() >= 1 << 20);
        // A smaller request takes the same buffer; a larger one replaces it.
        let again = pool.with(4096, |b| {
            assert_eq!((b.len(), b[0]), (4096, 7));
            b.as_ptr() as usize
        });
        assert_eq!(again, first);
        pool.with(2 << 20, |b| assert_eq!(b.len(), 2 << 20));
        assert!(pool.kept_bytes() >= 2 << 20 && pool.kept_bytes() < 3 << 20);
        pool.release();
        assert_eq!(pool.kept_bytes(), 0);
        pool.with(16, |b| assert_eq!(b, [0; 16]));
    }

    #[test]
    fn a_pool_keeps_a_bounded_number_of_buffers() {
        let pool = BufferPool::new();
        // Requests inside requests each take a buffer of their own (as concurrent workers do).
        fn nest(pool: &BufferPool, depth: usize) {
            if depth > 0 {
                pool.with(4096, |_| nest(pool, depth - 1));
            }
        }
        nest(&pool, 2 * POOL_KEEPS);
        assert_eq!(pool.kept_bytes(), (POOL_KEEPS * 4096) as u64);
    }

    #[test]
    fn the_thread_caches_go_off_once_and_other_tunables_stay() {
        assert_eq!(tunables(None).as_deref(), Some(NO_THREAD_CACHES));
        assert_eq!(tunables(Some("")).as_deref(), Some(NO_THREAD_CACHES));
        assert_eq!(
            tunables(Some("glibc.malloc.arena_max=1")).as_deref(),
            Some("glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0")
        );
        // Set already (by the restart, or by the operator): left alone.
        assert_eq!(tunables(Some(NO_THREAD_CACHES)), None);
        assert_eq!(
            tunables(Some("glibc.malloc.arena_max=1:glibc.malloc.tcache_count=3")),
            None
        );
        // A longer name is another tunable.
        assert!(tunables(Some("glibc.malloc.tcache_count_x=1")).is_some());
    }
}
