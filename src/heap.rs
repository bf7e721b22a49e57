//! Giving memory back: hash maps that shrink once mostly empty, and the allocator's free
//! pages returned to the system. The daemon's tables grow with what the kernel holds (a
//! million inodes in an epoch) and must fall back near idle once it forgets them: large
//! tables are mappings of their own, free pages are trimmed, and the daemon runs without
//! glibc's per-thread caches of freed chunks (their chunks pin pages no trim returns).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;

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

/// Returns the heap's free pages to the system: glibc keeps what many small frees (a
/// forgotten table) gave back otherwise.
pub fn release_free_memory() {
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
