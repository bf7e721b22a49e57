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
//! # Faulting policy
//! With huge pages on, a miss in extent `E` faults the whole huge page when **all** hold:
//! the access is *sequential* (the read starts where the previous device read of that file
//! ended — a file's first read at offset 0 counts — or is at least
//! [`SEQUENTIAL_MIN_READ`] = 128 KiB long, or it is a prefetch); `E` lies wholly inside the
//! file (tails use base pages, so a small file never pins 2 MiB); and no base page of `E` is
//! resident or being filled. Otherwise the missing 4 KiB pages the read touches are faulted
//! as base pages, preferring each page's *home slot* (page `i` of an extent in slot `i` of a
//! chunk already holding that extent's pages) so that a re-faulted extent can **collapse**
//! back into a huge page once all 512 pages sit in one chunk. A huge fault that finds no free
//! chunk evicts policy victims (a bounded scan; a base-page victim takes the other base pages
//! of its extent along); if no chunk frees it falls back to base pages (readahead gives up
//! instead); a base fault that cannot get a single slot (everything pinned or filling) reads
//! storage directly into the caller's buffer (a *bypass*). A fault never fails for lack of space.
//! Bytes past EOF in a tail page are zero and are never served.
//!
//! # Eviction and admission
//! The [`EvictionPolicy`] (chosen by name with [`policy_by_name`]; default [`DEFAULT_POLICY`],
//! see `evict.rs` for the measurements behind it) orders resident folios and also decides
//! *admission*: every miss is recorded with the policy, and when a read misses a page while
//! the arena is full the policy is asked whether evicting a victim for it pays off. If not,
//! the read is served straight from storage without installing the page (a bypass, counted
//! in `admission_refusals`); an explicit [`DeviceTier::prefetch`] always admits, readahead
//! stops. Capacity is never exceeded and a fault never fails for lack of space either way.
//!
//! # Hints and pinning
//! [`DeviceTier::set_hint`] sets a file's [`Hint`] (the `user.pagetier.hint` xattr): `random`
//! turns off readahead and huge faults for the file, `sequential` makes every read sequential
//! and readahead start at its largest window, `epoch` is passed to the policy, and `pin` keeps
//! the file's folios out of the policy — they are never evicted, only invalidated — as long as
//! all pinned folios fit in [`TierOptions::pin_share`] of the capacity; folios beyond that
//! share are evictable as usual. Changing the hint away from `pin` hands the folios back to
//! the policy. A hint survives [`DeviceTier::invalidate_file`]; clear it with `Hint::Normal`.
//!
//! # Readahead
//! [`DeviceTier::read_with_readahead`] is [`DeviceTier::read`] plus readahead: when a file is
//! read sequentially, the extents ahead of the reader are faulted by a small pool of tier
//! threads through an owned `Arc` source, in a window that grows on sustained sequential
//! reads and closes on a random one (`readahead.rs`). Readahead fills are ordinary fills:
//! the same `Filling` reservations and the same invalidation-sequence check.
//!
//! # Concurrency and freshness
//! State is sharded by file ([`SHARDS`] shards). A fault reserves its folios and marks them
//! `Filling` in the file's page map under the shard lock, remembers the file's
//! [`InvalidationSeq`], drops the lock, reads storage **directly into the arena memory**
//! (page-aligned, so `O_DIRECT` works), re-locks and installs only if the sequence is
//! unchanged; otherwise the folio is freed and `discarded_fills` counted. Every invalidation
//! bumps the sequence (from a tier-wide counter, so values never repeat). Concurrent faults
//! of the same page do one storage read: the others wait on the shard's condition variable.
//! Readers *pin* a resident folio by cloning its `Arc` under the shard lock and copy after
//! unlocking; a folio's memory returns to the arena only when the last pin drops, eviction
//! skips pinned folios, and a split waits (yielding) for pins to drain — pins are held only
//! across one memcpy or one reply write ([`DeviceTier::read_resident`]: a hit that lies in one
//! huge page goes to the FUSE reply straight from the arena), never while blocking or locking.
//!
//! # Lock order
//! `shard.files` → (`policy` | `arena.alloc` | readahead `queue`). At most one shard lock is
//! held at a time; `policy`, `arena.alloc` and the readahead queue are leaves and never nested
//! with each other. No storage I/O and
//! no freeing of folios happens under a shard lock (removed folios are dropped after unlock).
//!
//! # Invalidation
//! [`DeviceTier::invalidate_range`] drops every page overlapping the byte range. A partly
//! covered huge page is *split*: the covered base pages are freed, the others stay resident
//! as base pages in the same chunk (`splits` counts these). Returned counts are device pages:
//! a whole huge page counts 1, a split counts the base pages it dropped.

#![deny(clippy::undocumented_unsafe_blocks)]

mod arena;
mod evict;
mod folio;
mod hint;
mod map;
pub mod range;
mod readahead;
mod s3fifo;
pub mod sim;
pub mod size;
mod stats;
mod sync;
#[cfg(test)]
mod tests;
mod tinylfu;

use std::collections::HashMap;
use std::io;

use serde::Serialize;

use self::arena::{Arena, Need};
use self::folio::{Folio, contiguous_mut};
use self::map::{Entry, FileState};
use self::readahead::{Job, Readahead};
use self::stats::{Counters, add, sub};
use self::sync::{Arc, AtomicU64, Condvar, Mutex, MutexGuard, Ordering, lock, wait};

pub use self::evict::{
    DEFAULT_POLICY, EvictionPolicy, FolioKey, LruPolicy, POLICY_NAMES, UnknownPolicy,
    policy_by_name,
};
pub use self::folio::FolioId;
pub use self::hint::{Hint, HintError};
pub use self::range::{ByteRange, RangeError};
pub use self::readahead::{
    RA_INITIAL_WINDOW, RA_MAX_WINDOW, RA_QUEUE_JOBS, RA_THREADS, SharedSource,
};
pub use self::s3fifo::S3FifoPolicy;
pub use self::size::{ByteSize, SizeError, parse_capacity, parse_size};
pub use self::stats::{DEVICE_FIELDS, DeviceStats, InvalidationCounts, TierDiagnostics, TierStats};
pub use self::tinylfu::{FrequencySketch, TINYLFU_MARGIN, TinyLfuPolicy};

/// Base page size.
pub const PAGE_SIZE: u64 = 4096;
/// Huge page (and arena chunk) size.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;
/// Base pages per huge page / slots per chunk.
pub const SLOTS_PER_CHUNK: usize = (HUGE_PAGE_SIZE / PAGE_SIZE) as usize;
/// A device read at least this long counts as sequential (may fault huge pages).
pub const SEQUENTIAL_MIN_READ: u64 = 128 << 10;
/// Number of lock shards (files are spread by a hash of their id).
pub const SHARDS: usize = 64;

/// Victims examined per eviction round when a huge page needs a whole free chunk.
const HUGE_EVICT_SCAN: usize = 64;
/// Eviction rounds a huge fault tries before falling back to base pages (another faulting
/// thread may take the chunk a round freed; readahead runs four of them).
const HUGE_EVICT_ROUNDS: u32 = 4;
/// Eviction rounds a base fault tries before bypassing the tier.
const BASE_EVICT_ROUNDS: u32 = 3;

/// Stable id of a backing inode, assigned by the caller.
pub type FileId = u64;
/// Per-file invalidation sequence; see the module docs.
pub type InvalidationSeq = u64;

/// Configuration of a [`DeviceTier`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierConfig {
    /// Arena size in bytes; rounded down to whole 2 MiB chunks; at least one chunk.
    pub capacity: u64,
    /// Allow 2 MiB device pages.
    pub huge_pages: bool,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            capacity: 1 << 30,
            huge_pages: true,
        }
    }
}

/// Tier settings beyond [`TierConfig`] (kept apart so that `TierConfig` literals elsewhere
/// stay valid).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierOptions {
    /// Share of the capacity that pinned (`pin` hint) folios may hold, 0.0..=1.0.
    pub pin_share: f64,
    /// Largest readahead window in bytes (0: no readahead). Default [`RA_MAX_WINDOW`].
    pub readahead_max: u64,
}

impl Default for TierOptions {
    fn default() -> Self {
        TierOptions {
            pin_share: 0.5,
            readahead_max: RA_MAX_WINDOW,
        }
    }
}

/// Why device pages are dropped (counted per cause in [`InvalidationCounts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidationCause {
    Write,
    Truncate,
    Fallocate,
    Copy,
    UnlinkRename,
    External,
    /// An explicit `user.pagetier.evict` request.
    Evict,
}

impl InvalidationCause {
    pub const COUNT: usize = 7;
    pub const ALL: [InvalidationCause; Self::COUNT] = [
        Self::Write,
        Self::Truncate,
        Self::Fallocate,
        Self::Copy,
        Self::UnlinkRename,
        Self::External,
        Self::Evict,
    ];
}

/// Reads backing storage; implemented by the caller (with `O_DIRECT` when possible).
pub trait FillSource {
    /// Read into `buf` (page-aligned, len a multiple of 4096) from `offset` (4096-aligned).
    /// Returns bytes read (short at EOF).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl FillSource for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

/// Errors creating a tier.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("device capacity {capacity} bytes is smaller than one 2 MiB chunk")]
    CapacityTooSmall { capacity: u64 },
    #[error(
        "device capacity {capacity} bytes exceeds available memory ({available} bytes MemAvailable); choose a smaller --device-capacity"
    )]
    CapacityExceedsMemory { capacity: u64, available: u64 },
    #[error("device capacity {capacity} bytes does not fit in this address space")]
    CapacityTooLarge { capacity: u64 },
    #[error("cannot map the device arena: {0}")]
    Map(#[source] io::Error),
}

/// A file's device residency (the `user.pagetier.residency` xattr, minus `size`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Residency {
    /// Device bytes held: 2 MiB per huge page + 4 KiB per base page.
    pub resident_bytes: u64,
    pub huge_pages: u64,
    pub base_pages: u64,
}

/// Outcome of [`DeviceTier::prefetch`]; the three fields add up to the clipped range length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PrefetchReport {
    /// Bytes of the range this call read from storage into the tier.
    pub faulted_bytes: u64,
    /// Bytes of the range already resident (or filled meanwhile by another thread).
    pub already_resident_bytes: u64,
    /// Bytes not made resident because no arena space could be freed (all pinned/filling).
    pub skipped_bytes: u64,
}

struct Shard {
    /// Lock order: first (see module docs).
    files: Mutex<HashMap<FileId, FileState>>,
    /// Signalled whenever a `Filling` entry of this shard is installed or removed.
    filled: Condvar,
}

/// Per-call accounting of one read or prefetch.
#[derive(Default)]
struct Acct {
    hits: u64,
    misses: u64,
    bypass: u64,
    resident_bytes: u64,
    faulted_bytes: u64,
    skipped_bytes: u64,
    refused: u64,
}

/// Bytes of a resident folio, pinned for one reply (see [`DeviceTier::read_resident`]).
pub struct ResidentBytes {
    folio: Arc<Folio>,
    range: std::ops::Range<usize>,
}

impl std::ops::Deref for ResidentBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.folio.bytes()[self.range.clone()]
    }
}

/// What a device read with readahead served (see [`DeviceTier::read_with_readahead`]).
pub enum Served {
    /// This many bytes, copied into the caller's buffer.
    Copied(usize),
    /// The bytes in place in the tier, pinned for one reply.
    Resident(ResidentBytes),
}

impl Served {
    /// The number of bytes served, copied into `out` (the buffer the read was given) if they
    /// are not there yet: for callers that want them in a buffer (tests, benchmarks).
    pub fn into_copied(self, out: &mut [u8]) -> usize {
        match self {
            Served::Copied(n) => n,
            Served::Resident(bytes) => {
                out[..bytes.len()].copy_from_slice(&bytes);
                bytes.len()
            }
        }
    }
}

/// How a device read relates to the file's previous one (see [`DeviceTier::note_read`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Access {
    /// May fault huge pages.
    sequential: bool,
    /// Opens or advances readahead.
    readahead: bool,
    /// Starts exactly where the previous read ended: the folio it starts in (if the read
    /// starts inside one) was already counted as used by the previous read.
    continues: bool,
}

impl Access {
    /// Prefetch and readahead: sequential, not a use of anything.
    const INTERNAL: Access = Access {
        sequential: true,
        readahead: false,
        continues: false,
    };
}

/// Who asks [`DeviceTier::serve`] for pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// A device read: subject to admission; refused pages are bypassed.
    Read,
    /// An explicit prefetch: always admitted.
    Prefetch,
    /// Readahead: subject to admission; a refused page, or a huge page for which no chunk
    /// frees, ends the job (never a bypass or a fall-back to base pages).
    Readahead,
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
}

impl std::fmt::Debug for DeviceTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTier")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// An in-flight fill: folios reserved as `Filling` under `keys`. Dropping it unfinished (an
/// error or a panic in the `FillSource`) removes the `Filling` entries and wakes waiters, so
/// nothing half-filled is ever installed or waited on forever.
struct Fill<'t> {
    tier: &'t DeviceTier,
    file: FileId,
    seq: InvalidationSeq,
    keys: Vec<FolioKey>,
    folios: Vec<Folio>,
    /// A readahead fill: installed as not yet read.
    speculative: bool,
}

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        if !self.folios.is_empty() {
            self.tier.finish_fill(self, false);
        }
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
        })
    }

    /// The eviction policy's name.
    pub fn policy_name(&self) -> &'static str {
        lock(&self.policy).name()
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

    /// Device-view read: copies file bytes `[offset, offset + out.len())` clipped to
    /// `file_size` into `out`; hits come from the arena, misses are faulted through `src`
    /// first. Returns bytes copied (0 at or past EOF). A storage error is returned as is.
    pub fn read(
        &self,
        file: FileId,
        file_size: u64,
        offset: u64,
        out: &mut [u8],
        src: &dyn FillSource,
    ) -> io::Result<usize> {
        self.read_with(file, file_size, offset, out, false, src, |st, end| {
            Self::note_read(st, offset, end)
        })
        .map(|served| match served {
            Served::Copied(n) => n,
            Served::Resident(_) => unreachable!("a read that may not pin never does"),
        })
    }

    /// A device read whose bookkeeping under the shard lock is `begin(state, end)`. With
    /// `pin`, a read that lies in one huge page as served comes back pinned, not copied.
    #[allow(clippy::too_many_arguments)]
    fn read_with(
        &self,
        file: FileId,
        file_size: u64,
        offset: u64,
        out: &mut [u8],
        pin: bool,
        src: &dyn FillSource,
        begin: impl FnOnce(&mut FileState, u64) -> Access,
    ) -> io::Result<Served> {
        add(&self.stats.reads, 1);
        if offset >= file_size || out.is_empty() {
            return Ok(Served::Copied(0));
        }
        let end = offset.saturating_add(out.len() as u64).min(file_size);
        let access = {
            let mut g = lock(&self.shard(file).files);
            begin(self.state(&mut g, file), end)
        };
        self.read_sequential(file, file_size, offset, end, out, pin, access, src)
    }

    /// Access-pattern detection for a read of `[offset, end)` (hints override); remembers
    /// `end`.
    fn note_read(st: &mut FileState, offset: u64, end: u64) -> Access {
        let continues = offset == st.last_end;
        st.last_end = end;
        let (sequential, readahead) = match st.hint {
            Hint::Random => (false, false),
            Hint::Sequential => (true, true),
            _ => (
                continues || end - offset >= SEQUENTIAL_MIN_READ,
                continues || offset == 0,
            ),
        };
        Access {
            sequential,
            readahead,
            continues,
        }
    }

    /// The body of [`DeviceTier::read`] once sequential detection is done.
    #[allow(clippy::too_many_arguments)]
    fn read_sequential(
        &self,
        file: FileId,
        file_size: u64,
        offset: u64,
        end: u64,
        out: &mut [u8],
        pin: bool,
        access: Access,
        src: &dyn FillSource,
    ) -> io::Result<Served> {
        let n = (end - offset) as usize;
        let mut acct = Acct::default();
        let mut pinned = None;
        let r = self.serve(
            file,
            file_size,
            offset,
            end,
            Some(&mut out[..n]),
            pin.then_some(&mut pinned),
            access,
            Mode::Read,
            src,
            &mut acct,
        );
        add(&self.stats.admission_refusals, acct.refused);
        add(&self.stats.hits, acct.hits);
        add(&self.stats.misses, acct.misses);
        add(&self.stats.lookups, acct.hits + acct.misses);
        add(&self.stats.bypass_reads, acct.bypass);
        r.map(|()| {
            add(&self.stats.bytes_served, n as u64);
            match pinned {
                Some(bytes) => Served::Resident(bytes),
                None => Served::Copied(n),
            }
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
        let mut acct = Acct::default();
        self.serve(
            file,
            file_size,
            offset,
            end,
            None,
            None,
            Access::INTERNAL,
            Mode::Prefetch,
            src,
            &mut acct,
        )?;
        Ok(PrefetchReport {
            faulted_bytes: acct.faulted_bytes,
            already_resident_bytes: acct.resident_bytes,
            skipped_bytes: acct.skipped_bytes,
        })
    }

    /// Makes `[start, end)` (inside the file) resident piece by piece and copies it into
    /// `out` (which covers exactly `[start, end)`) when given. With `pin`, a range that lies
    /// in one huge page is pinned into it instead of copied, a fresh fill included: the fill
    /// is installed first and pinned on the next round, so it is served from the arena (if an
    /// invalidation or eviction beat the pin, the extent is faulted again and copied). Progress
    /// is guaranteed: each iteration serves at least one page (from a resident folio, a fresh
    /// fill, or a bypass) or waits for another thread's fill to finish.
    #[allow(clippy::too_many_arguments)]
    fn serve(
        &self,
        file: FileId,
        file_size: u64,
        start: u64,
        end: u64,
        mut out: Option<&mut [u8]>,
        mut pin: Option<&mut Option<ResidentBytes>>,
        access: Access,
        mode: Mode,
        src: &dyn FillSource,
        acct: &mut Acct,
    ) -> io::Result<()> {
        let shard = self.shard(file);
        let mut pos = start;
        let mut failures_at: (u64, u32, u32) = (u64::MAX, 0, 0); // (extent, huge, base) rounds
        let mut recorded_at = u64::MAX; // the miss at this position was told to the policy
        let mut pin_filled = u64::MAX; // extent this call faulted and installed, to pin
        while pos < end {
            let ext = pos / HUGE_PAGE_SIZE;
            let ext_start = ext * HUGE_PAGE_SIZE;
            let piece_end = end.min(ext_start + HUGE_PAGE_SIZE);
            if failures_at.0 != ext {
                failures_at = (ext, 0, 0);
            }
            let mut g = lock(&shard.files);
            let st = self.state(&mut g, file);

            // 1. A resident huge page serves the whole piece.
            match st.huge.get(&ext) {
                Some(Entry::Ready(f)) => {
                    let folio = f.clone();
                    if pin_filled != ext {
                        let entered = Self::enters(access, mode, start, pos, ext_start);
                        let key = FolioKey::huge(file, ext);
                        let first_read = mode != Mode::Readahead && st.unread.remove(&key);
                        self.touch(&[key], entered, mode, first_read);
                        acct.hits += 1;
                        acct.resident_bytes += piece_end - pos;
                    } // else: this call's own fill, counted as its miss when it was made
                    drop(g);
                    match pin.as_deref_mut() {
                        Some(slot) if pos == start && piece_end == end => {
                            *slot = Some(ResidentBytes {
                                folio,
                                range: (pos - ext_start) as usize..(end - ext_start) as usize,
                            });
                        }
                        _ => copy_out(&mut out, start, pos, piece_end, folio.bytes(), ext_start),
                    }
                    pos = piece_end;
                    continue;
                }
                Some(Entry::Filling(_)) => {
                    drop(wait(&shard.filled, g));
                    continue;
                }
                None => {}
            }

            // 2. A run of resident base pages starting at `pos`.
            let first_page = pos / PAGE_SIZE;
            let last_page = (piece_end - 1) / PAGE_SIZE;
            match st.base.get(&first_page) {
                Some(Entry::Ready(_)) => {
                    let mut pins = Vec::new();
                    for (&p, e) in st.base.range(first_page..=last_page) {
                        match e {
                            Entry::Ready(f) if p == first_page + pins.len() as u64 => {
                                pins.push(f.clone())
                            }
                            _ => break,
                        }
                    }
                    let keys: Vec<FolioKey> = (0..pins.len() as u64)
                        .map(|i| FolioKey::base(file, first_page + i))
                        .collect();
                    let entered = Self::enters(access, mode, start, pos, first_page * PAGE_SIZE);
                    let first_read = mode != Mode::Readahead
                        && !st.unread.is_empty()
                        && keys.iter().fold(false, |any, k| st.unread.remove(k) | any);
                    self.touch(&keys, entered, mode, first_read);
                    drop(g);
                    let run_end = piece_end.min((first_page + pins.len() as u64) * PAGE_SIZE);
                    for (i, pin) in pins.iter().enumerate() {
                        let p_start = (first_page + i as u64) * PAGE_SIZE;
                        let (a, b) = (pos.max(p_start), run_end.min(p_start + PAGE_SIZE));
                        copy_out(&mut out, start, a, b, pin.bytes(), p_start);
                    }
                    acct.hits += pins.len() as u64;
                    acct.resident_bytes += run_end - pos;
                    drop(pins);
                    pos = run_end;
                    continue;
                }
                Some(Entry::Filling(_)) => {
                    drop(wait(&shard.filled, g));
                    continue;
                }
                None => {}
            }

            // 3. A miss at `pos`: fault a huge page or a run of base pages.
            let want_huge = self.cfg.huge_pages
                && access.sequential
                && st.hint != Hint::Random
                && ext_start + HUGE_PAGE_SIZE <= file_size
                && failures_at.1 < HUGE_EVICT_ROUNDS
                && st.base_in_extent(ext).next().is_none();
            let run = match st.base.range(first_page..=last_page).next() {
                Some((&p, _)) => p - first_page,
                None => last_page + 1 - first_page,
            } as usize;
            if recorded_at != pos && mode == Mode::Read {
                recorded_at = pos;
                let mut policy = lock(&self.policy);
                if want_huge {
                    if Self::enters(access, mode, start, pos, ext_start) {
                        policy.record_miss(&FolioKey::huge(file, ext));
                    }
                } else {
                    let skip = !Self::enters(access, mode, start, pos, first_page * PAGE_SIZE);
                    for i in u64::from(skip)..run as u64 {
                        policy.record_miss(&FolioKey::base(file, first_page + i));
                    }
                }
            }
            let (keys, folios) = if want_huge {
                match self.arena.alloc_huge() {
                    Some(f) => (vec![FolioKey::huge(file, ext)], vec![f]),
                    None => {
                        drop(g);
                        failures_at.1 += 1;
                        let admitted = mode == Mode::Prefetch
                            || lock(&self.policy).admit(&FolioKey::huge(file, ext));
                        if !admitted {
                            // Fall back to base pages: free slots, or admission per page.
                            failures_at.1 = HUGE_EVICT_ROUNDS;
                            continue;
                        }
                        if !self.evict(Need::Chunk) || failures_at.1 >= HUGE_EVICT_ROUNDS {
                            if mode == Mode::Readahead {
                                // Readahead does not scatter an extent over base pages (that
                                // fragments the arena for the huge faults that follow): the
                                // job ends, and the reader faults the extent if it gets there.
                                add(&self.stats.readahead_dropped, end - pos);
                                return Ok(());
                            }
                            failures_at.1 = HUGE_EVICT_ROUNDS;
                            add(&self.stats.huge_fallbacks, 1);
                        }
                        continue;
                    }
                }
            } else {
                let home = if self.cfg.huge_pages {
                    st.home_chunk(ext)
                        .map(|c| (c, (first_page % SLOTS_PER_CHUNK as u64) as u16))
                } else {
                    None
                };
                let folios = self.arena.alloc_base(run, home);
                if folios.is_empty() {
                    drop(g);
                    failures_at.2 += 1;
                    let admitted = mode == Mode::Prefetch
                        || lock(&self.policy).admit(&FolioKey::base(file, first_page));
                    if !admitted {
                        acct.refused += 1;
                        if mode == Mode::Readahead {
                            return Ok(());
                        }
                        failures_at.2 = BASE_EVICT_ROUNDS + 1;
                    }
                    if failures_at.2 <= BASE_EVICT_ROUNDS && self.evict(Need::Slots(run)) {
                        continue;
                    }
                    // No slot can be had: serve this run straight from storage.
                    let run_end = piece_end.min((first_page + run as u64) * PAGE_SIZE);
                    match out.as_deref_mut() {
                        Some(o) => {
                            bypass_read(
                                src,
                                file_size,
                                pos,
                                run_end,
                                &mut o[(pos - start) as usize..(run_end - start) as usize],
                            )?;
                            acct.misses += run_end.div_ceil(PAGE_SIZE) - first_page;
                            acct.bypass += 1;
                        }
                        None => acct.skipped_bytes += run_end - pos,
                    }
                    failures_at.2 = 0;
                    pos = run_end;
                    continue;
                }
                let keys = (0..folios.len() as u64)
                    .map(|i| FolioKey::base(file, first_page + i))
                    .collect();
                (keys, folios)
            };
            for (k, f) in keys.iter().zip(&folios) {
                st.insert(*k, Entry::Filling(f.id()));
            }
            let mut fill = Fill {
                tier: self,
                file,
                seq: st.seq,
                keys,
                folios,
                speculative: mode == Mode::Readahead,
            };
            drop(g);

            self.run_fill(&mut fill, file_size, src)?;
            let served_end = if want_huge {
                piece_end
            } else {
                piece_end.min((first_page + fill.folios.len() as u64) * PAGE_SIZE)
            };
            // Once per extent: if the installed page is gone by the next round (invalidated
            // or evicted), the refault is copied, so a reader always makes progress.
            if want_huge && pin.is_some() && pos == start && piece_end == end && pin_filled != ext {
                acct.misses += 1;
                acct.faulted_bytes += served_end - pos;
                self.finish_fill(&mut fill, true);
                pin_filled = ext;
                continue; // pinned next round, without a copy
            }
            // The fill is ours alone until installed: copy straight from it. Data read from
            // storage during this call is fresh even if an invalidation races the install.
            for (k, f) in fill.keys.iter().zip(&fill.folios) {
                let f_start = if k.is_huge() {
                    ext_start
                } else {
                    k.position() * PAGE_SIZE
                };
                let (a, b) = (pos.max(f_start), served_end.min(f_start + f.len() as u64));
                copy_out(&mut out, start, a, b, f.bytes(), f_start);
            }
            acct.misses += fill.folios.len() as u64;
            acct.faulted_bytes += served_end - pos;
            self.finish_fill(&mut fill, true);
            pos = served_end;
        }
        Ok(())
    }

    /// Reads storage into the fill's folios: one `read_at` per run of folios that are
    /// consecutive in the arena, zero past EOF.
    fn run_fill(
        &self,
        fill: &mut Fill<'_>,
        file_size: u64,
        src: &dyn FillSource,
    ) -> io::Result<()> {
        let mut i = 0;
        while i < fill.folios.len() {
            let f_start = if fill.keys[i].is_huge() {
                fill.keys[i].position() * HUGE_PAGE_SIZE
            } else {
                fill.keys[i].position() * PAGE_SIZE
            };
            let mut j = i + 1;
            while j < fill.folios.len()
                && fill.keys[j].position() == fill.keys[i].position() + (j - i) as u64
                && contiguous_mut(&mut fill.folios[i..=j]).is_some()
            {
                j += 1;
            }
            let buf = match contiguous_mut(&mut fill.folios[i..j]) {
                Some(b) => b,
                None => fill.folios[i].bytes_mut(),
            };
            let started = std::time::Instant::now();
            let got = read_fully(src, buf, f_start, file_size);
            add(&self.stats.fill_reads, 1);
            add(&self.stats.fill_nanos, started.elapsed().as_nanos() as u64);
            let got = got?;
            add(&self.stats.bytes_faulted, got as u64);
            i = j;
        }
        Ok(())
    }

    /// Installs (`ok`, and the file's sequence unchanged) or discards a fill; wakes waiters.
    fn finish_fill(&self, fill: &mut Fill<'_>, ok: bool) {
        let shard = self.shard(fill.file);
        let mut g = lock(&shard.files);
        let keys = std::mem::take(&mut fill.keys);
        let folios = std::mem::take(&mut fill.folios);
        let mut discard = Vec::new();
        let mut installed = Vec::new();
        if let Some(st) = g.get_mut(&fill.file) {
            let valid = ok && st.seq == fill.seq;
            for (key, folio) in keys.into_iter().zip(folios) {
                let ours = matches!(st.get(&key), Some(Entry::Filling(id)) if *id == folio.id());
                if ours && valid {
                    installed.push((key, folio.id()));
                    st.insert(key, Entry::Ready(Arc::new(folio)));
                } else {
                    if ours {
                        st.remove(&key);
                    }
                    discard.push(folio);
                }
            }
            if !installed.is_empty() {
                let mut policy = lock(&self.policy);
                for (k, id) in &installed {
                    self.track(st, &mut **policy, *k, *id, fill.speculative);
                    if fill.speculative {
                        st.unread.insert(*k);
                    }
                }
                drop(policy);
                let huge = installed.iter().filter(|(k, _)| k.is_huge()).count() as u64;
                add(&self.stats.resident_huge, huge);
                add(&self.stats.resident_base, installed.len() as u64 - huge);
                if self.cfg.huge_pages && huge == 0 {
                    let ext = installed[0].0.position() / SLOTS_PER_CHUNK as u64;
                    self.try_collapse(st, fill.file, ext);
                }
            }
            if st.is_empty() {
                g.remove(&fill.file);
            }
        } else {
            discard.extend(folios);
        }
        shard.filled.notify_all();
        drop(g);
        if ok {
            add(&self.stats.discarded_fills, discard.len() as u64);
        }
        drop(discard);
    }

    /// If all 512 pages of `ext` are resident unpinned base pages at their home slots of one
    /// chunk, turns them into one huge page. Caller holds the shard lock.
    fn try_collapse(&self, st: &mut FileState, file: FileId, ext: u64) {
        let mut chunk = None;
        let mut n = 0;
        for (&p, e) in st.base_in_extent(ext) {
            let Entry::Ready(f) = e else { return };
            let loc = f.loc();
            let c = *chunk.get_or_insert(loc.chunk);
            if Arc::strong_count(f) != 1
                || loc.chunk != c
                || loc.slot != Some((p % SLOTS_PER_CHUNK as u64) as u16)
            {
                return;
            }
            n += 1;
        }
        if n != SLOTS_PER_CHUNK {
            return;
        }
        let first = ext * SLOTS_PER_CHUNK as u64;
        let mut parts = Vec::with_capacity(SLOTS_PER_CHUNK);
        let mut ids = Vec::with_capacity(SLOTS_PER_CHUNK);
        for p in first..first + SLOTS_PER_CHUNK as u64 {
            let Some(Entry::Ready(f)) = st.base.remove(&p) else {
                unreachable!("checked above")
            };
            // Unpinned (count 1) under the shard lock, and pins are only taken under it.
            let f = Arc::try_unwrap(f).unwrap_or_else(|_| unreachable!("unpinned folio"));
            ids.push(f.id());
            parts.push(f);
        }
        match self.arena.collapse(parts) {
            Ok(huge) => {
                let mut policy = lock(&self.policy);
                for (i, id) in ids.iter().enumerate() {
                    self.untrack(
                        st,
                        &mut **policy,
                        &FolioKey::base(file, first + i as u64),
                        *id,
                    );
                }
                self.track(
                    st,
                    &mut **policy,
                    FolioKey::huge(file, ext),
                    huge.id(),
                    false,
                );
                drop(policy);
                st.huge.insert(ext, Entry::Ready(Arc::new(huge)));
                sub(&self.stats.resident_base, SLOTS_PER_CHUNK as u64);
                add(&self.stats.resident_huge, 1);
                add(&self.stats.collapses, 1);
            }
            Err(parts) => {
                for (i, f) in parts.into_iter().enumerate() {
                    st.base.insert(first + i as u64, Entry::Ready(Arc::new(f)));
                }
            }
        }
    }

    /// Registers a newly resident folio of `st`: pinned (kept out of the policy) if the file
    /// has the `pin` hint and the pin budget has room, else tracked by the policy
    /// (`speculative`: installed by readahead, not read yet). Caller holds the shard lock and
    /// the policy lock.
    fn track(
        &self,
        st: &mut FileState,
        policy: &mut dyn EvictionPolicy,
        key: FolioKey,
        id: FolioId,
        speculative: bool,
    ) {
        if st.hint == Hint::Pin && self.reserve_pin(slots_of(&key)) {
            st.pinned.insert(key);
        } else if speculative {
            policy.insert_speculative(key, id);
        } else {
            policy.insert(key, id);
        }
    }

    /// Undoes [`DeviceTier::track`] for a folio leaving the page map (not via `pop_victim`).
    fn untrack(
        &self,
        st: &mut FileState,
        policy: &mut dyn EvictionPolicy,
        key: &FolioKey,
        id: FolioId,
    ) {
        if st.pinned.remove(key) {
            sub(&self.pinned_slots, slots_of(key));
        } else {
            policy.remove(key, id);
        }
    }

    /// Takes `slots` from the pin budget if it has room.
    fn reserve_pin(&self, slots: u64) -> bool {
        self.pinned_slots
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + slots <= self.pin_budget).then_some(used + slots)
            })
            .is_ok()
    }

    /// Sets the file's [`Hint`] (see the module docs); `Hint::Normal` clears it. Pinning
    /// takes the file's resident folios out of the policy while the pin budget has room;
    /// unpinning hands them back.
    pub fn set_hint(&self, file: FileId, hint: Hint) {
        let mut g = lock(&self.shard(file).files);
        let st = self.state(&mut g, file);
        let old = st.hint;
        st.hint = hint;
        let mut policy = lock(&self.policy);
        policy.set_hint(file, hint);
        if hint == Hint::Random {
            st.ra_window = 0;
            st.ra_next = 0;
        }
        if old == Hint::Pin && hint != Hint::Pin {
            let keys: Vec<FolioKey> = st.pinned.drain().collect();
            for k in keys {
                if let Some(Entry::Ready(f)) = st.get(&k) {
                    policy.insert(k, f.id());
                }
                sub(&self.pinned_slots, slots_of(&k));
            }
        } else if hint == Hint::Pin && old != Hint::Pin {
            let ready: Vec<(FolioKey, FolioId)> = st
                .huge
                .iter()
                .map(|(&e, x)| (FolioKey::huge(file, e), x))
                .chain(st.base.iter().map(|(&p, x)| (FolioKey::base(file, p), x)))
                .filter_map(|(k, x)| match x {
                    Entry::Ready(f) => Some((k, f.id())),
                    Entry::Filling(_) => None,
                })
                .collect();
            for (k, id) in ready {
                if !self.reserve_pin(slots_of(&k)) {
                    break;
                }
                policy.remove(&k, id);
                st.pinned.insert(k);
            }
        }
        drop(policy);
        if st.is_empty() {
            g.remove(&file);
        }
    }

    /// The file's hint.
    pub fn hint(&self, file: FileId) -> Hint {
        lock(&self.shard(file).files)
            .get(&file)
            .map_or(Hint::Normal, |st| st.hint)
    }

    /// [`DeviceTier::read`] plus readahead: a read that continues the file's previous read (or
    /// starts at 0) opens or advances a readahead window, whose extents are faulted by the
    /// tier's readahead threads through `src` (module docs, `readahead.rs`). The window is
    /// queued before this read is served, so the two overlap. A read that lies in one huge
    /// page as served, a fresh fault included, comes back pinned ([`Served::Resident`]:
    /// replied from the arena, no copy); any other is copied into `out`.
    pub fn read_with_readahead(
        self: &Arc<Self>,
        file: FileId,
        file_size: u64,
        offset: u64,
        out: &mut [u8],
        src: SharedSource,
    ) -> io::Result<Served> {
        self.read_with(file, file_size, offset, out, true, &*src, |st, end| {
            self.begin_read(st, file, file_size, offset, end, &src)
        })
    }

    /// [`DeviceTier::read_with_readahead`] without the copy, when it can be had: if the
    /// bytes `[offset, offset + len)` (clipped to `file_size`, non-empty) lie in one resident
    /// huge page, the read is accounted and served as a pin of that page. Otherwise returns
    /// `None` having done nothing, and the caller reads with a copy. Hold the result only
    /// while handing the bytes on (one reply): a split of the page waits for it.
    pub fn read_resident(
        self: &Arc<Self>,
        file: FileId,
        file_size: u64,
        offset: u64,
        len: u64,
        src: &SharedSource,
    ) -> Option<ResidentBytes> {
        let end = offset.saturating_add(len).min(file_size);
        if offset >= end {
            return None;
        }
        let ext = offset / HUGE_PAGE_SIZE;
        let ext_start = ext * HUGE_PAGE_SIZE;
        if end > ext_start + HUGE_PAGE_SIZE {
            return None;
        }
        let mut g = lock(&self.shard(file).files);
        let st = g.get_mut(&file)?;
        let Some(Entry::Ready(f)) = st.huge.get(&ext) else {
            return None;
        };
        let folio = f.clone();
        let access = self.begin_read(st, file, file_size, offset, end, src);
        let key = FolioKey::huge(file, ext);
        let first_read = st.unread.remove(&key);
        let entered = Self::enters(access, Mode::Read, offset, offset, ext_start);
        self.touch(&[key], entered, Mode::Read, first_read);
        drop(g);
        add(&self.stats.reads, 1);
        add(&self.stats.hits, 1);
        add(&self.stats.lookups, 1);
        add(&self.stats.bytes_served, end - offset);
        Some(ResidentBytes {
            folio,
            range: (offset - ext_start) as usize..(end - ext_start) as usize,
        })
    }

    /// The bookkeeping every device read starts with, under the file's shard lock: access
    /// detection (`note_read`) and readahead (open, advance or close the window).
    fn begin_read(
        self: &Arc<Self>,
        st: &mut FileState,
        file: FileId,
        file_size: u64,
        offset: u64,
        end: u64,
        src: &SharedSource,
    ) -> Access {
        let access = Self::note_read(st, offset, end);
        if !access.continues {
            // A new pass (a read at 0 opens one; anything else closes the window).
            st.ra_window = 0;
            st.ra_next = 0;
        }
        if access.readahead {
            self.advance_readahead(st, file, file_size, end, src);
        }
        access
    }

    /// Issues the next readahead window if the reader (now at `end`) is within half a window
    /// of the frontier. Caller holds the shard lock (the queue lock nests inside it).
    fn advance_readahead(
        self: &Arc<Self>,
        st: &mut FileState,
        file: FileId,
        file_size: u64,
        end: u64,
        src: &SharedSource,
    ) {
        let max = self.readahead_max;
        if max == 0 {
            return;
        }
        let window = match (st.ra_window, st.hint) {
            (_, Hint::Sequential) => max,
            (0, _) => RA_INITIAL_WINDOW.min(max),
            (w, _) => w,
        };
        let frontier = st.ra_next.max(end);
        if frontier >= file_size || frontier - end >= window / 2 {
            st.ra_window = window;
            st.ra_next = frontier;
            return;
        }
        // Issue up to the window's end past the reader, aligned to an extent boundary.
        let target = (end + window)
            .next_multiple_of(HUGE_PAGE_SIZE)
            .min(file_size);
        // Resident huge pages at the frontier need no job (an epoch rereading what the tier
        // kept would otherwise wake a worker per extent for nothing).
        let mut frontier = frontier;
        while frontier < target
            && matches!(
                st.huge.get(&(frontier / HUGE_PAGE_SIZE)),
                Some(Entry::Ready(_))
            )
        {
            frontier = (frontier / HUGE_PAGE_SIZE + 1) * HUGE_PAGE_SIZE;
        }
        if frontier >= target {
            st.ra_window = (window * 2).min(max);
            st.ra_next = target;
            return;
        }
        let issued = self.readahead.submit(
            self,
            file,
            file_size,
            frontier,
            target - frontier,
            st.seq,
            src,
        );
        if issued < target {
            add(&self.stats.readahead_dropped, target - issued);
        }
        st.ra_next = issued;
        st.ra_window = (window * 2).min(max);
    }

    /// Runs one readahead job (on a readahead thread).
    fn run_readahead(&self, job: &Job) {
        {
            let g = lock(&self.shard(job.file).files);
            if g.get(&job.file).is_none_or(|st| st.seq != job.seq) {
                return; // invalidated since it was queued
            }
        }
        let mut acct = Acct::default();
        let end = job.offset + job.len;
        let r = self.serve(
            job.file,
            job.file_size,
            job.offset,
            end,
            None,
            None,
            Access::INTERNAL,
            Mode::Readahead,
            &*job.src,
            &mut acct,
        );
        add(&self.stats.readahead_bytes, acct.faulted_bytes);
        add(&self.stats.admission_refusals, acct.refused);
        if let Err(e) = r {
            tracing::debug!(file = job.file, offset = job.offset, error = %e, "readahead failed");
        }
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

    /// Whether a `mode` read of `[start, ..)`, now at `pos`, *enters* the folio starting at
    /// `folio_start` — a new use of it for the policy — rather than continuing inside a folio
    /// the file's previous read already used (a sequential reader's 1 MiB reads of a 2 MiB
    /// page are one use, like one 4 KiB read of a 4 KiB page). Prefetch and readahead are
    /// never uses.
    fn enters(access: Access, mode: Mode, start: u64, pos: u64, folio_start: u64) -> bool {
        mode == Mode::Read && !(access.continues && pos == start && pos != folio_start)
    }

    /// Tells the policy about resident folios being read: a use of each (the first only if
    /// `first_entered`, see [`DeviceTier::enters`]) for a device read, recency alone for a
    /// prefetch, nothing for readahead (its reader will come). Skipped if the policy is busy
    /// (an approximate order under contention keeps the hit path from queueing on a global
    /// lock) — unless this is the first read of a readahead folio (`first_read`), which the
    /// policy must see to stop treating it as speculative.
    fn touch(&self, keys: &[FolioKey], first_entered: bool, mode: Mode, first_read: bool) {
        if mode == Mode::Readahead {
            return;
        }
        let policy = if first_read {
            Some(lock(&self.policy))
        } else {
            self.policy.try_lock().ok()
        };
        if let Some(mut p) = policy {
            for (i, k) in keys.iter().enumerate() {
                if mode == Mode::Read && (i > 0 || first_entered) {
                    p.touch(k);
                } else {
                    p.touch_again(k);
                }
            }
        }
    }

    /// Evicts policy victims until `need` is met or a bounded scan gives up. Takes no lock
    /// on entry. Returns whether progress for `need` is now possible.
    fn evict(&self, need: Need) -> bool {
        let limit = match need {
            Need::Chunk => HUGE_EVICT_SCAN,
            Need::Slots(n) => n.min(SLOTS_PER_CHUNK) + HUGE_EVICT_SCAN,
        };
        for _ in 0..limit {
            if self.arena.satisfies(need) {
                return true;
            }
            let Some((key, id)) = lock(&self.policy).pop_victim() else {
                break;
            };
            self.evict_one(key, id, need == Need::Chunk);
        }
        match need {
            Need::Chunk => self.arena.satisfies(Need::Chunk),
            Need::Slots(_) => self.arena.satisfies(Need::Slots(1)),
        }
    }

    /// Evicts the popped victim `key` unless a reader pins it. With `whole_extent` (a huge
    /// fault needs a free chunk) a base-page victim takes the other unpinned base pages of
    /// its extent with it: they share its home chunk, and freeing them one victim at a time
    /// would scatter free slots over many chunks and push later huge faults to base pages.
    fn evict_one(&self, key: FolioKey, id: FolioId, whole_extent: bool) {
        let shard = self.shard(key.file);
        let mut g = lock(&shard.files);
        let Some(st) = g.get_mut(&key.file) else {
            return;
        };
        let mut victims = Vec::new();
        match st.get(&key) {
            Some(Entry::Ready(f)) if f.id() == id => {
                if Arc::strong_count(f) == 1 {
                    victims.extend(st.remove(&key));
                } else {
                    // Pinned by a reader: keep it, as most recently used.
                    lock(&self.policy).insert(key, id);
                }
            }
            _ => {}
        }
        if whole_extent && !key.is_huge() && !victims.is_empty() {
            let ext = key.position() / SLOTS_PER_CHUNK as u64;
            let siblings: Vec<(FolioKey, FolioId)> = st
                .base_in_extent(ext)
                .filter_map(|(&p, e)| match e {
                    Entry::Ready(f) if Arc::strong_count(f) == 1 => {
                        Some((FolioKey::base(key.file, p), f.id()))
                    }
                    _ => None,
                })
                .filter(|(k, _)| !st.pinned.contains(k))
                .collect();
            let mut policy = lock(&self.policy);
            for (k, sid) in siblings {
                policy.remove(&k, sid);
                victims.extend(st.remove(&k));
            }
        }
        if st.is_empty() {
            g.remove(&key.file);
        }
        drop(g);
        for v in &victims {
            let huge = matches!(v, Entry::Ready(f) if f.loc().slot.is_none());
            add(&self.stats.evictions, 1);
            sub(
                if huge {
                    &self.stats.resident_huge
                } else {
                    &self.stats.resident_base
                },
                1,
            );
        }
        drop(victims);
    }

    /// Drops exactly the device pages overlapping `[offset, offset + len)` (`len == u64::MAX`:
    /// to the end of the file), splitting partly covered huge pages, and bumps the file's
    /// invalidation sequence so fills that started earlier are discarded. Returns device
    /// pages dropped (a huge page counts 1, a split counts the base pages it dropped).
    pub fn invalidate_range(
        &self,
        file: FileId,
        offset: u64,
        len: u64,
        cause: InvalidationCause,
    ) -> u64 {
        if len == 0 {
            return 0;
        }
        let end = offset.saturating_add(len);
        let first_page = offset / PAGE_SIZE;
        let end_page = if end == u64::MAX {
            u64::MAX
        } else {
            end.div_ceil(PAGE_SIZE)
        };
        let per = SLOTS_PER_CHUNK as u64;
        let shard = self.shard(file);
        let mut g = lock(&shard.files);
        let Some(st) = g.get_mut(&file) else { return 0 };
        st.seq = self.next_seq();
        let mut garbage: Vec<Arc<Folio>> = Vec::new();
        let mut gone: Vec<(FolioKey, FolioId)> = Vec::new();
        let mut added: Vec<(FolioKey, FolioId)> = Vec::new();
        let mut dropped = 0u64;
        let mut splits = 0u64;

        let pages: Vec<u64> = st
            .base
            .range(first_page..end_page)
            .map(|(&p, _)| p)
            .collect();
        for p in pages {
            if let Some(Entry::Ready(f)) = st.base.remove(&p) {
                gone.push((FolioKey::base(file, p), f.id()));
                garbage.push(f);
                dropped += 1;
            }
        }
        let end_ext = if end_page == u64::MAX {
            u64::MAX
        } else {
            end_page.div_ceil(per)
        };
        let exts: Vec<u64> = st
            .huge
            .range(first_page / per..end_ext)
            .map(|(&e, _)| e)
            .collect();
        for e in exts {
            let Some(Entry::Ready(f)) = st.huge.remove(&e) else {
                continue;
            };
            gone.push((FolioKey::huge(file, e), f.id()));
            let (es, ee) = (e * per, e * per + per);
            let (cs, ce) = (first_page.max(es), end_page.min(ee));
            if cs == es && ce == ee {
                garbage.push(f);
                dropped += 1;
                continue;
            }
            // Split. Readers pin only under this shard lock (held) and never block while
            // pinned, so the pins drain promptly.
            let mut f = f;
            let folio = loop {
                match Arc::try_unwrap(f) {
                    Ok(folio) => break folio,
                    Err(again) => {
                        f = again;
                        std::thread::yield_now();
                    }
                }
            };
            let mut mask = [0u64; SLOTS_PER_CHUNK / 64];
            for p in cs..ce {
                let i = (p - es) as usize;
                mask[i / 64] |= 1 << (i % 64);
            }
            for (i, bf) in self.arena.split(folio, &mask) {
                let k = FolioKey::base(file, es + i as u64);
                added.push((k, bf.id()));
                st.base.insert(es + i as u64, Entry::Ready(Arc::new(bf)));
            }
            dropped += ce - cs;
            splits += 1;
        }
        if !gone.is_empty() || !added.is_empty() {
            let mut policy = lock(&self.policy);
            for (k, id) in &gone {
                self.untrack(st, &mut **policy, k, *id);
            }
            for (k, id) in &added {
                self.track(st, &mut **policy, *k, *id, false);
            }
        }
        if st.is_empty() {
            g.remove(&file);
        }
        shard.filled.notify_all();
        drop(g);
        let gone_huge = gone.iter().filter(|(k, _)| k.is_huge()).count() as u64;
        sub(&self.stats.resident_huge, gone_huge);
        sub(&self.stats.resident_base, gone.len() as u64 - gone_huge);
        add(&self.stats.resident_base, added.len() as u64);
        add(&self.stats.splits, splits);
        add(&self.stats.invalidations[cause as usize], dropped);
        drop(garbage);
        dropped
    }

    /// Drops all of the file's device pages and forgets the file (its sequential-access
    /// state); in-flight fills are discarded. Returns device pages dropped.
    pub fn invalidate_file(&self, file: FileId, cause: InvalidationCause) -> u64 {
        let shard = self.shard(file);
        let mut g = lock(&shard.files);
        let Some(mut st) = g.remove(&file) else {
            return 0;
        };
        if st.hint != Hint::Normal {
            let mut fresh = FileState::new(self.next_seq());
            fresh.hint = st.hint;
            g.insert(file, fresh);
        }
        shard.filled.notify_all();
        let pinned = std::mem::take(&mut st.pinned);
        let mut gone = Vec::new();
        let mut garbage = Vec::new();
        for (k, e) in st
            .huge
            .into_iter()
            .map(|(e, x)| (FolioKey::huge(file, e), x))
            .chain(
                st.base
                    .into_iter()
                    .map(|(p, x)| (FolioKey::base(file, p), x)),
            )
        {
            if let Entry::Ready(f) = e {
                gone.push((k, f.id()));
                garbage.push(f);
            }
        }
        if !gone.is_empty() {
            let mut policy = lock(&self.policy);
            for (k, id) in &gone {
                if !pinned.contains(k) {
                    policy.remove(k, *id);
                }
            }
        }
        let unpinned: u64 = pinned.iter().map(slots_of).sum();
        sub(&self.pinned_slots, unpinned);
        drop(g);
        let gone_huge = gone.iter().filter(|(k, _)| k.is_huge()).count() as u64;
        sub(&self.stats.resident_huge, gone_huge);
        sub(&self.stats.resident_base, gone.len() as u64 - gone_huge);
        add(&self.stats.invalidations[cause as usize], gone.len() as u64);
        drop(garbage);
        gone.len() as u64
    }

    /// The file's resident device pages.
    pub fn residency(&self, file: FileId) -> Residency {
        let g = lock(&self.shard(file).files);
        let (huge_pages, base_pages) = g.get(&file).map_or((0, 0), FileState::resident_counts);
        Residency {
            resident_bytes: huge_pages * HUGE_PAGE_SIZE + base_pages * PAGE_SIZE,
            huge_pages,
            base_pages,
        }
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
        s.diagnostics.policy = policy;
        s.diagnostics.pinned_bytes = self.pinned_slots.load(Ordering::Relaxed) * PAGE_SIZE;
        s
    }

    /// Estimated heap and table bytes of tier metadata: chunk table, shard tables, per-file
    /// state, and per resident folio its page-map entry (B-tree nodes about half full), its
    /// `Arc<Folio>` allocation and its eviction-policy entry. The arena itself is excluded.
    pub fn metadata_bytes(&self) -> u64 {
        let files: u64 = self
            .shards
            .iter()
            .map(|s| lock(&s.files).len() as u64)
            .sum();
        let per_policy = lock(&self.policy).bytes_per_entry();
        let folios = self.stats.resident_huge.load(Ordering::Relaxed)
            + self.stats.resident_base.load(Ordering::Relaxed);
        let per_map_entry = 2 * (size_of::<u64>() + size_of::<Entry>()) as u64 + 8;
        let per_arc = (2 * size_of::<usize>() + size_of::<Folio>()).next_multiple_of(16) as u64;
        let per_file = ((size_of::<(FileId, FileState)>() + 1) * 8 / 7) as u64;
        self.arena.metadata_bytes()
            + (size_of::<DeviceTier>() + SHARDS * size_of::<Shard>()) as u64
            + files * per_file
            + folios * (per_map_entry + per_arc + per_policy)
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        self.arena.check_invariants();
        let (mut huge, mut base) = (0, 0);
        let mut filling = 0;
        let (mut pinned, mut pinned_slots) = (0u64, 0u64);
        for s in self.shards.iter() {
            for st in lock(&s.files).values() {
                for k in &st.pinned {
                    assert!(
                        matches!(st.get(k), Some(Entry::Ready(_))),
                        "pinned key {k:?} is not resident"
                    );
                    assert_eq!(st.hint, Hint::Pin, "pinned folio of an unpinned file");
                    pinned += 1;
                    pinned_slots += slots_of(k);
                }
                let (h, b) = st.resident_counts();
                huge += h;
                base += b;
                filling += st.huge.len() as u64 + st.base.len() as u64 - h - b;
                for (&e, x) in &st.huge {
                    if matches!(x, Entry::Ready(_)) {
                        assert!(
                            st.base_in_extent(e).next().is_none(),
                            "extent {e} both huge and base"
                        );
                    }
                }
            }
        }
        assert_eq!(filling, 0, "fills left behind");
        assert_eq!(huge, self.stats.resident_huge.load(Ordering::Relaxed));
        assert_eq!(base, self.stats.resident_base.load(Ordering::Relaxed));
        assert_eq!(
            lock(&self.policy).len() as u64 + pinned,
            huge + base,
            "policy tracks exactly the resident unpinned folios"
        );
        assert_eq!(self.pinned_slots.load(Ordering::Relaxed), pinned_slots);
        assert!(pinned_slots <= self.pin_budget, "pin budget exceeded");
        assert_eq!(
            self.arena.used_slots(),
            huge * SLOTS_PER_CHUNK as u64 + base,
            "no leaked arena memory"
        );
    }

    /// Keys of the file's pinned folios, sorted.
    #[cfg(test)]
    fn pinned_keys(&self, file: FileId) -> Vec<FolioKey> {
        let g = lock(&self.shard(file).files);
        let mut v: Vec<FolioKey> = g
            .get(&file)
            .map(|st| st.pinned.iter().copied().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Asserts every resident byte of `file` equals `truth` (zero past its end).
    #[cfg(test)]
    fn audit(&self, file: FileId, truth: &[u8]) {
        let g = lock(&self.shard(file).files);
        let Some(st) = g.get(&file) else { return };
        let check = |start: u64, bytes: &[u8]| {
            let s = (start as usize).min(truth.len());
            let e = (start as usize + bytes.len()).min(truth.len());
            let n = e - s;
            if bytes[..n] != truth[s..e] || bytes[n..].iter().any(|&b| b != 0) {
                let i = (0..bytes.len())
                    .find(|&i| bytes[i] != truth.get(start as usize + i).copied().unwrap_or(0));
                panic!(
                    "stale byte in resident page of file {file} at offset {:?}",
                    i.map(|i| start as usize + i)
                );
            }
        };
        for (&e, x) in &st.huge {
            if let Entry::Ready(f) = x {
                check(e * HUGE_PAGE_SIZE, f.bytes());
            }
        }
        for (&p, x) in &st.base {
            if let Entry::Ready(f) = x {
                check(p * PAGE_SIZE, f.bytes());
            }
        }
    }
}

/// Copies file bytes `[from, to)` from a folio whose first byte is file offset `src_start`
/// into `out`, whose first byte is file offset `out_start`.
fn copy_out(
    out: &mut Option<&mut [u8]>,
    out_start: u64,
    from: u64,
    to: u64,
    src: &[u8],
    src_start: u64,
) {
    if let Some(o) = out.as_deref_mut()
        && from < to
    {
        let (a, b) = ((from - out_start) as usize, (to - out_start) as usize);
        let s = (from - src_start) as usize;
        o[a..b].copy_from_slice(&src[s..s + (b - a)]);
    }
}

/// Fills `buf` from storage at `offset` (both page-aligned), tolerating short reads at EOF;
/// everything past what storage returned, or past `file_size`, is zeroed. Returns bytes read.
fn read_fully(
    src: &dyn FillSource,
    buf: &mut [u8],
    offset: u64,
    file_size: u64,
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match src.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n.min(buf.len() - done);
                if n % PAGE_SIZE as usize != 0 {
                    break; // EOF: a further read would not be aligned.
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Storage ended before the size the caller saw: the file shrank (or was
    // replaced) since. Installing the zeros would serve bytes that were never
    // in the file, so the fill fails and the caller retries with a fresh size.
    let expected = file_size.saturating_sub(offset).min(buf.len() as u64) as usize;
    if done < expected {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "storage is shorter than the file size it reported: the file changed during the fill",
        ));
    }
    let valid = (file_size.saturating_sub(offset)).min(done as u64) as usize;
    buf[valid..].fill(0);
    Ok(done)
}

/// Reads file bytes `[from, to)` straight from storage into `out` through a page-aligned
/// bounce buffer (used when the arena has no space at all).
fn bypass_read(
    src: &dyn FillSource,
    file_size: u64,
    from: u64,
    to: u64,
    out: &mut [u8],
) -> io::Result<()> {
    let a = from / PAGE_SIZE * PAGE_SIZE;
    let b = to.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let mut bounce = memmap2::MmapMut::map_anon((b - a) as usize)?;
    read_fully(src, &mut bounce, a, file_size)?;
    let s = (from - a) as usize;
    out.copy_from_slice(&bounce[s..s + out.len()]);
    Ok(())
}

/// Arena slots a folio of this key occupies.
fn slots_of(key: &FolioKey) -> u64 {
    if key.is_huge() {
        SLOTS_PER_CHUNK as u64
    } else {
        1
    }
}
