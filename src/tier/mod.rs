//! The device tier: a capacity-bounded memory arena of read-only copies of file pages.
//!
//! [`DeviceTier`] is the facade the FUSE layer calls. It serves device-view reads from
//! resident pages, faults misses straight from storage (through the caller's [`FillSource`])
//! into the arena, and drops exactly the pages a host modification touched.
//!
//! # Pages
//! A *huge page* is an aligned 2 MiB extent of one file held in one 2 MiB arena chunk; a
//! *base page* is 4 KiB held in one slot of a base-page chunk (512 slots). Capacity is a
//! whole number of chunks and is never exceeded: every byte of arena memory belongs to at
//! most one folio (see `arena.rs`, `folio.rs`).
//!
//! # Layout (one file per concern, like Linux mm's page cache)
//! - `mod.rs` — this facade: [`DeviceTier`], its construction and the public calls, each
//!   composing the parts below; the one device-read entry point, [`DeviceTier::read`].
//! - `read.rs` — the steps of a device read: access detection, the pinned hit in one
//!   resident huge page, the read that faults (and [`Served`]).
//! - `types.rs` — ids, sizes, configuration, reports, errors, [`FillSource`]; imports nothing
//!   else of the tier.
//! - `fault.rs` — the fault path: serve a read or prefetch from resident folios, fault
//!   misses into the arena, bypass when no space can be had (faulting policy, admission).
//! - `fill.rs` — a fill: reserved folios read from storage without locks, installed only if
//!   no invalidation intervened (freshness).
//! - `window.rs` — readahead decisions (the window per file) and the jobs they queue;
//!   `readahead.rs` — the pool of threads that runs those jobs.
//! - `reclaim.rs` — tracking folios with the policy, the pin budget, eviction rounds.
//! - `huge.rs` — collapsing base pages into a huge page and splitting a huge page.
//! - `invalidate.rs` — dropping the pages a host modification touched
//!   ([`DeviceTier::invalidate_range`], [`DeviceTier::invalidate_file`]).
//! - `policy/` — the eviction contract and one file per policy; `arena.rs`, `folio.rs`,
//!   `map.rs` — memory, folios and per-file page maps; `hint.rs`, `stats.rs`, `sim.rs`,
//!   `sync.rs` (the one door to `std::sync`, swapped for shuttle in concurrency tests).
//! - Tests: `tests.rs` (unit cases, a proptest reference model, a threaded freshness test),
//!   `shuttle_tests.rs` (schedules explored by shuttle), `check.rs` (invariant checks).
//!
//! # Concurrency
//! State is sharded by file ([`SHARDS`] shards). Faults reserve folios as `Filling` under the
//! shard lock, read storage without locks and install only if the file's invalidation
//! sequence is unchanged (`fault.rs`, `invalidate.rs`). Readers *pin* a resident folio by
//! cloning its `Arc` under the shard lock and copy (or reply) after unlocking; a folio's
//! memory returns to the arena only when the last pin drops.
//!
//! # Lock order
//! `shard.files` → (`policy` | `arena.alloc` | readahead `queue`). At most one shard lock is
//! held at a time; `policy`, `arena.alloc` and the readahead queue are leaves and never nested
//! with each other. No storage I/O and no freeing of folios happens under a shard lock
//! (removed folios are dropped after unlock).

#![deny(clippy::undocumented_unsafe_blocks)]

mod arena;
#[cfg(test)]
mod check;
mod export;
mod fault;
mod fill;
mod folio;
mod hint;
mod huge;
mod invalidate;
mod map;
mod policy;
mod read;
mod readahead;
mod reclaim;
mod shmem;
#[cfg(all(test, feature = "shuttle"))]
mod shuttle_tests;
pub mod sim;
mod stats;
mod sync;
#[cfg(test)]
mod tests;
mod types;
mod window;

use std::collections::HashMap;
use std::io;

use self::arena::Arena;
use self::fault::{Access, FaultRequest, Mode, Outcome};
use self::folio::Folio;
use self::map::{Entry, FileState};
use self::readahead::Readahead;
use self::stats::{Counters, add};
use self::sync::{Arc, AtomicU64, Condvar, Mutex, MutexGuard, Ordering, lock, wait};

pub use self::export::{Export, NotExported};
pub use self::fault::ResidentBytes;
pub use self::hint::{Hint, HintError};
pub use self::policy::{
    DEFAULT_POLICY, EvictionPolicy, FolioKey, POLICY_NAMES, UnknownPolicy, policy_by_name,
};
pub use self::read::Served;
pub use self::shmem::{SHARED_MEMORY_KIND, shmem_huge_bytes};
#[cfg(test)]
pub use self::stats::DEVICE_FIELDS;
pub use self::stats::{DeviceStats, InvalidationCounts, SharedStats, TierDiagnostics, TierStats};
pub use self::types::{
    FileId, FillSource, FolioId, HUGE_PAGE_SIZE, InvalidationCause, InvalidationSeq, PAGE_SIZE,
    PrefetchReport, RA_MAX_WINDOW, RA_QUEUE_JOBS, Residency, SHARDS, SLOTS_PER_CHUNK, SharedSource,
    TierConfig, TierError, TierOptions,
};

/// Times [`DeviceTier::read`] retries a read whose file shrank during the fill before it
/// gives up with `EIO` (a file truncated again and again while being read).
pub const SHRINK_RETRIES: u32 = 8;

/// Takes `file`'s state out of its shard's map (held locked by the caller), and gives the
/// map's spare slots back once under a quarter of them is used, all of them once it is empty:
/// a map never shrinks by itself, and after `evict -r` of every file their slots stayed (40
/// bytes each). A shard holds a 64th of the files, so a few dozen spare slots already count,
/// and 64 shards' last few dozen kept about 100 KB after a million files were evicted (a shard that
/// empties and fills again pays one small allocation per growth step, next to a file's fill).
fn remove_state(files: &mut HashMap<FileId, FileState>, file: FileId) -> Option<FileState> {
    let st = files.remove(&file);
    if files.is_empty() {
        files.shrink_to(0);
    } else if crate::heap::is_sparse_by(files.len(), files.capacity(), 64) {
        files.shrink_to(2 * files.len());
    }
    st
}

struct Shard {
    /// Lock order: first (see module docs).
    files: Mutex<HashMap<FileId, FileState>>,
    /// Signalled whenever a `Filling` entry of this shard is installed or removed.
    filled: Condvar,
    /// Threads waiting on `filled`; changed and read only under `files`' lock.
    waiting: AtomicU64,
}

/// A shard's lock, held.
type ShardGuard<'a> = MutexGuard<'a, HashMap<FileId, FileState>>;

impl Shard {
    /// Waits until a fill or an invalidation of this shard ends (`g`: this shard's lock).
    fn wait_filled<'a>(&self, g: ShardGuard<'a>) -> ShardGuard<'a> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let g = wait(&self.filled, g);
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        g
    }

    /// Wakes the threads waiting for a fill, if there are any; call holding this shard's
    /// lock. Waking costs a system call even with nobody waiting, and a fill almost never
    /// has a waiter: checking first takes that call off every miss.
    fn wake_filled(&self) {
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.filled.notify_all();
        }
    }
}

/// The device tier. `Send + Sync`; see the module docs for semantics.
pub struct DeviceTier {
    cfg: TierConfig,
    arena: Arc<Arena>,
    shards: Box<[Shard]>,
    /// Leaf lock: taken with at most one shard lock held, never together with `arena.alloc`.
    policy: Mutex<Box<dyn EvictionPolicy>>,
    seq: AtomicU64,
    stats: Counters,
    /// Arena slots held by pinned folios; at most `pin_budget` (see `track`).
    pinned_slots: AtomicU64,
    pin_budget: u64,
    /// Largest readahead window (0: none); see [`TierOptions::readahead_max`].
    readahead_max: u64,
    readahead: Readahead,
    /// Shared device memory for exports, once enabled ([`DeviceTier::enable_shared_memory`]).
    shared: std::sync::OnceLock<shmem::SharedMemory>,
    /// Exports alive now (a read checks for one only while this is not 0).
    exports_live: AtomicU64,
    /// Of those, idle ones kept compact in their file state (`export.rs`), without an `Arc`.
    exports_compact: AtomicU64,
    /// Files whose export lost its last open, oldest first (may name exports reopened or
    /// gone since: checked when popped). A leaf lock.
    idle_exports: Mutex<std::collections::VecDeque<export::IdleEntry>>,
    /// Exports alive with no open (at most `MAX_IDLE_EXPORTS` after a release).
    exports_idle: AtomicU64,
    /// Capacity lent to idle exports' copies (slots): part of the arena's lent slots, but not
    /// of the pin budget (an idle export can be dropped at any time).
    idle_lent: AtomicU64,
    /// Where idle exports' registrations are parked as the kernel's ids (`export.rs`), once
    /// the session exists; until then they keep their tokens.
    idle_ids: std::sync::OnceLock<std::sync::Arc<dyn crate::iomode::IdleIds>>,
}

impl std::fmt::Debug for DeviceTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTier")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl DeviceTier {
    /// Maps the arena. Capacity is rounded down to 2 MiB and must be at least one chunk and
    /// at most `MemAvailable` (when `/proc/meminfo` is readable).
    pub fn new(cfg: TierConfig) -> Result<DeviceTier, TierError> {
        Self::with_policy(
            cfg,
            policy_by_name(DEFAULT_POLICY).expect("the default policy exists"),
        )
    }

    /// Like [`DeviceTier::new`] with another eviction policy.
    pub fn with_policy(
        cfg: TierConfig,
        policy: Box<dyn EvictionPolicy>,
    ) -> Result<DeviceTier, TierError> {
        Self::with_options(cfg, policy, TierOptions::default())
    }

    /// Like [`DeviceTier::with_policy`] with [`TierOptions`].
    pub fn with_options(
        cfg: TierConfig,
        mut policy: Box<dyn EvictionPolicy>,
        opts: TierOptions,
    ) -> Result<DeviceTier, TierError> {
        let chunks = cfg.capacity / HUGE_PAGE_SIZE;
        if chunks == 0 {
            return Err(TierError::CapacityTooSmall {
                capacity: cfg.capacity,
            });
        }
        let capacity = chunks * HUGE_PAGE_SIZE;
        if let Some(available) = arena::mem_available()
            && capacity > available
        {
            return Err(TierError::CapacityExceedsMemory {
                capacity,
                available,
            });
        }
        let chunks = u32::try_from(chunks).map_err(|_| TierError::CapacityTooLarge { capacity })?;
        let arena = Arena::new(chunks)?;
        let shards = (0..SHARDS)
            .map(|_| Shard {
                files: Mutex::new(HashMap::new()),
                filled: Condvar::new(),
                waiting: AtomicU64::new(0),
            })
            .collect();
        let slots = capacity / PAGE_SIZE;
        // Without huge pages every folio is a base page: all weigh one slot.
        let huge_weight = if cfg.huge_pages {
            SLOTS_PER_CHUNK as u64
        } else {
            1
        };
        policy.configure(slots, huge_weight);
        let pin_budget = (slots as f64 * opts.pin_share.clamp(0.0, 1.0)) as u64;
        tracing::debug!(
            capacity,
            huge_pages = cfg.huge_pages,
            policy = policy.name(),
            pin_budget,
            "device tier mapped"
        );
        Ok(DeviceTier {
            cfg: TierConfig { capacity, ..cfg },
            arena,
            shards,
            policy: Mutex::new(policy),
            seq: AtomicU64::new(1),
            stats: Counters::default(),
            pinned_slots: AtomicU64::new(0),
            pin_budget,
            readahead_max: opts.readahead_max,
            readahead: Readahead::default(),
            shared: std::sync::OnceLock::new(),
            exports_live: AtomicU64::new(0),
            exports_compact: AtomicU64::new(0),
            idle_exports: Mutex::new(std::collections::VecDeque::new()),
            exports_idle: AtomicU64::new(0),
            idle_lent: AtomicU64::new(0),
            idle_ids: std::sync::OnceLock::new(),
        })
    }

    /// Lets idle exports keep their registrations as the kernel's ids alone (`export.rs`;
    /// once, later calls are ignored).
    pub fn set_idle_ids(&self, ids: std::sync::Arc<dyn crate::iomode::IdleIds>) {
        let _ = self.idle_ids.set(ids);
    }

    /// Sets up shared device memory (a private tmpfs the size of the capacity, `shmem.rs`),
    /// so that resident files can be exported to the kernel (`export.rs`). Needs
    /// `CAP_SYS_ADMIN`; calling it again does nothing.
    pub fn enable_shared_memory(&self) -> io::Result<()> {
        if self.shared.get().is_some() {
            return Ok(());
        }
        // Lent capacity may outgrow the capacity only by copies growing under readers
        // (`Arena::lend_over`); the tmpfs limit is a backstop twice as far.
        let memory = shmem::SharedMemory::new(2 * self.cfg.capacity)?;
        let _ = self.shared.set(memory);
        Ok(())
    }

    /// Whether shared device memory is set up.
    pub fn shared_memory_enabled(&self) -> bool {
        self.shared.get().is_some()
    }

    /// The effective configuration (capacity rounded to chunks).
    pub fn config(&self) -> TierConfig {
        self.cfg
    }

    fn shard(&self, file: FileId) -> &Shard {
        let h = file.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARDS.trailing_zeros());
        &self.shards[h as usize]
    }

    fn next_seq(&self) -> InvalidationSeq {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn state<'g>(
        &self,
        g: &'g mut MutexGuard<'_, HashMap<FileId, FileState>>,
        file: FileId,
    ) -> &'g mut FileState {
        g.entry(file)
            .or_insert_with(|| FileState::new(self.next_seq()))
    }

    /// The device-view read, the one entry point of the whole protocol: serves file bytes
    /// `[offset, offset + out.len())`, clipped to the file size that `file_size` reports
    /// (it is called once, and again after the file shrank during a fill).
    ///
    /// 1. A read that lies in one resident huge page is served pinned, with one lock and no
    ///    copy ([`Served::Resident`]; `read.rs`).
    /// 2. Otherwise the read advances readahead and faults what is missing (`fault.rs`); it
    ///    is copied into `out` ([`Served::Copied`]) unless it lies in one huge page as
    ///    served, a fresh fault included, which comes back pinned too.
    /// 3. If storage turned out shorter than the size seen (the file shrank or was replaced
    ///    during the fill), nothing of that fill is installed and the read is retried with a
    ///    fresh size, up to [`SHRINK_RETRIES`] times; then it fails with `EIO`.
    ///
    /// Returns 0 bytes at or past EOF. A storage error is returned as is. Hold a
    /// [`Served::Resident`] only while handing the bytes on (one reply).
    pub fn read(
        self: &Arc<Self>,
        file: FileId,
        offset: u64,
        out: &mut [u8],
        src: &SharedSource,
        mut file_size: impl FnMut() -> io::Result<u64>,
    ) -> io::Result<Served> {
        let size = file_size()?;
        if let Some(export) = self.export_of(file) {
            let n = out.len().min(size.saturating_sub(offset) as usize);
            return self
                .read_exported(&export, offset, &mut out[..n])
                .map(Served::Copied);
        }
        if let Some(bytes) = self.read_resident(file, size, offset, out.len() as u64, src) {
            return Ok(Served::Resident(bytes));
        }
        retry_if_shrunk(size, file_size, |size| {
            self.read_faulting(file, size, offset, &mut *out, src)
        })
    }

    /// A device-view read that bypasses the tier: file bytes `[offset, offset + out.len())`
    /// clipped to the size `file_size` reports, read straight from storage (page-aligned,
    /// so `O_DIRECT` works) into `out`, nothing installed, with the same retry as
    /// [`DeviceTier::read`] when the file shrank during the read. For a file whose writes
    /// the mount cannot see while they happen. Returns bytes copied.
    pub fn read_bypassing(
        src: &dyn FillSource,
        offset: u64,
        out: &mut [u8],
        mut file_size: impl FnMut() -> io::Result<u64>,
    ) -> io::Result<usize> {
        let size = file_size()?;
        retry_if_shrunk(size, file_size, |size| {
            if offset >= size || out.is_empty() {
                return Ok(0);
            }
            let end = offset.saturating_add(out.len() as u64).min(size);
            let n = (end - offset) as usize;
            fill::bypass_read(src, size, offset, end, &mut out[..n])?;
            Ok(n)
        })
    }

    /// Faults `[offset, offset + len)` clipped to `file_size` into the tier (huge pages where
    /// the extent lies wholly in the file). Does not count as a device read.
    pub fn prefetch(
        &self,
        file: FileId,
        file_size: u64,
        offset: u64,
        len: u64,
        src: &dyn FillSource,
    ) -> io::Result<PrefetchReport> {
        if offset >= file_size || len == 0 {
            return Ok(PrefetchReport::default());
        }
        let end = offset.saturating_add(len).min(file_size);
        if self.is_exported(file) {
            return Ok(PrefetchReport {
                already_resident_bytes: end - offset,
                ..PrefetchReport::default()
            });
        }
        self.prefetch_range(file, file_size, offset, end, src)
    }

    /// [`DeviceTier::prefetch`] of `[offset, end)` (non-empty, within the file) into the
    /// page map.
    fn prefetch_range(
        &self,
        file: FileId,
        file_size: u64,
        offset: u64,
        end: u64,
        src: &dyn FillSource,
    ) -> io::Result<PrefetchReport> {
        let req = FaultRequest {
            file,
            file_size,
            start: offset,
            end,
            access: Access::INTERNAL,
            mode: Mode::Prefetch,
            pin: false,
        };
        let Outcome { acct, result } = self.serve(&req, None, src);
        result?;
        Ok(PrefetchReport {
            faulted_bytes: acct.faulted_bytes,
            already_resident_bytes: acct.resident_bytes,
            skipped_bytes: acct.skipped_bytes,
        })
    }

    /// Sets the file's [`Hint`] (see the module docs); `Hint::Normal` clears it. Pinning
    /// takes the file's resident folios out of the policy while the pin budget has room;
    /// unpinning hands them back.
    pub fn set_hint(&self, file: FileId, hint: Hint) {
        let mut g = lock(&self.shard(file).files);
        let st = self.state(&mut g, file);
        let old = st.hint();
        st.set_hint(hint);
        let mut policy = lock(&self.policy);
        policy.set_hint(file, hint);
        if hint == Hint::Random {
            st.ra_window = 0;
            st.ra_next = 0;
        }
        self.repin(st, &mut **policy, file, old);
        drop(policy);
        if st.is_empty() {
            remove_state(&mut g, file);
        }
    }

    /// The file's hint.
    pub fn hint(&self, file: FileId) -> Hint {
        lock(&self.shard(file).files)
            .get(&file)
            .map_or(Hint::Normal, |st| st.hint())
    }

    /// Blocks until all queued readahead has run (for tests, benchmarks and orderly exits).
    pub fn wait_readahead(&self) {
        self.readahead.wait_idle();
    }

    /// Cancels `file`'s queued readahead and waits for its running jobs: after
    /// this no readahead holds the file's storage open.
    pub fn cancel_readahead(&self, file: FileId) {
        self.readahead.cancel(file);
    }

    /// The file's resident device pages.
    pub fn residency(&self, file: FileId) -> Residency {
        let (huge_pages, base_pages) = self.resident_pages_of(file);
        Residency {
            resident_bytes: huge_pages * HUGE_PAGE_SIZE + base_pages * PAGE_SIZE,
            huge_pages,
            base_pages,
        }
    }

    /// Whether the tier may hold pages of `file`: resident or filling folios, or an export.
    /// What [`Self::residency`] tells without its size, and without its cost: an exported
    /// file's size is its copy's, which an idle export can learn only by opening the copy
    /// (an `openat`, an `fstat` and a `close`; the kernel forgetting a million exported files
    /// asks this of each).
    pub fn holds_pages(&self, file: FileId) -> bool {
        lock(&self.shard(file).files)
            .get(&file)
            .is_some_and(FileState::holds_pages)
    }

    /// Counts a device-side modification that was refused (EROFS).
    pub fn count_refused_write(&self) {
        add(&self.stats.refused_writes, 1);
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> TierStats {
        let (policy_entries, policy) = {
            let p = lock(&self.policy);
            (p.len() as u64, p.name())
        };
        let mut s = self.stats.snapshot(
            self.cfg.capacity,
            self.arena.used_slots() * PAGE_SIZE,
            self.cfg.huge_pages,
            self.metadata_bytes(),
            policy_entries,
        );
        s.diagnostics.policy = policy.to_owned();
        s.shared.enabled = self.shared.get().is_some();
        s.shared.files = self.exports_live.load(Ordering::Relaxed);
        s.shared.bytes = self.exported_bytes();
        s.shared.kernel_bytes = self.shared.get().map_or(0, |m| m.used_bytes());
        s.diagnostics.pinned_bytes = self.pinned_slots.load(Ordering::Relaxed) * PAGE_SIZE;
        s
    }

    /// Estimated heap and table bytes of tier metadata: chunk table, shard tables, per-file
    /// state (by the maps' capacity), exports, the policy's fixed part (a frequency sketch),
    /// and per resident folio its page-map entry (B-tree nodes about half full), its
    /// `Arc<Folio>` allocation and its eviction-policy entry. The arena itself is excluded.
    pub fn metadata_bytes(&self) -> u64 {
        // The maps' capacity, not their length: a map keeps its slots after entries go.
        // And the states that hold a page-map box (a walk of the states: stats are read
        // seldom, and a shard's lock is held for one walk of its own states only).
        let (files, page_boxes) = self
            .shards
            .iter()
            .map(|s| {
                let g = lock(&s.files);
                let boxes = g.values().filter(|st| st.has_pages_box()).count();
                (g.capacity() as u64, boxes as u64)
            })
            .fold((0, 0), |(f, b), (sf, sb)| (f + sf, b + sb));
        let (per_policy, policy_fixed) = {
            let p = lock(&self.policy);
            (p.bytes_per_entry(), p.fixed_bytes())
        };
        let folios = self.stats.resident_huge.load(Ordering::Relaxed)
            + self.stats.resident_base.load(Ordering::Relaxed);
        let per_map_entry = 2 * (size_of::<u64>() + size_of::<Entry>()) as u64 + 8;
        let per_arc = (2 * size_of::<usize>() + size_of::<Folio>()).next_multiple_of(16) as u64;
        let per_file = ((size_of::<(FileId, FileState)>() + 1) * 8 / 7) as u64;
        let per_page_box = size_of::<map::Pages>().next_multiple_of(16) as u64;
        // An export: its `Arc` allocation (a copy is named by its number, no allocation of its
        // own), unless it is kept compact in its state; and its idle-list entries.
        let per_export = (2 * size_of::<usize>() + size_of::<export::Export>()) as u64;
        let arc_exports = self
            .exports_live
            .load(Ordering::Relaxed)
            .saturating_sub(self.exports_compact.load(Ordering::Relaxed));
        let idle_entries = lock(&self.idle_exports).capacity() as u64;
        self.arena.metadata_bytes()
            + (size_of::<DeviceTier>() + SHARDS * size_of::<Shard>()) as u64
            + files * per_file
            + page_boxes * per_page_box
            + arc_exports * per_export
            + idle_entries * size_of::<export::IdleEntry>() as u64
            + folios * (per_map_entry + per_arc + per_policy)
            + policy_fixed
    }
}

/// Runs `attempt` with the file size `size`; while it fails because storage turned out
/// shorter than that size (`UnexpectedEof`: the file shrank or was replaced meanwhile), runs
/// it again with a fresh size from `file_size`, up to [`SHRINK_RETRIES`] times, then fails
/// with `EIO`.
fn retry_if_shrunk<T>(
    mut size: u64,
    mut file_size: impl FnMut() -> io::Result<u64>,
    mut attempt: impl FnMut(u64) -> io::Result<T>,
) -> io::Result<T> {
    let mut retries = 0;
    loop {
        match attempt(size) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                if retries == SHRINK_RETRIES {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                retries += 1;
                size = file_size()?;
            }
            done => return done,
        }
    }
}
