//! The tier's vocabulary: ids, sizes, configuration, causes, reports, errors and the storage
//! trait. Every other tier module imports these from here; this module imports nothing from
//! the tier (so there is no cycle through the facade).

use std::io;

use serde::Serialize;

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
pub(crate) const HUGE_EVICT_SCAN: usize = 64;
/// Eviction rounds a huge fault tries before falling back to base pages (another faulting
/// thread may take the chunk a round freed; readahead runs four of them).
pub(crate) const HUGE_EVICT_ROUNDS: u32 = 4;
/// Eviction rounds a base fault tries before bypassing the tier.
pub(crate) const BASE_EVICT_ROUNDS: u32 = 3;

/// First readahead window.
pub const RA_INITIAL_WINDOW: u64 = 4 << 20;
/// Largest readahead window.
pub const RA_MAX_WINDOW: u64 = 32 << 20;
/// Bound of the readahead job queue (jobs are at most one 2 MiB extent).
pub const RA_QUEUE_JOBS: usize = 32;
/// Readahead worker threads: each keeps one 2 MiB O_DIRECT read in flight. Measured on a
/// cold 4 GiB sequential read (`scripts/bench-cold`): 2 workers read 1341–2231 MB/s, 4
/// workers 2385–2454 MB/s, O_DIRECT at one read in flight 2210–2446 MB/s, in alternation.
pub const RA_THREADS: usize = 4;

/// Stable id of a backing inode, assigned by the caller.
pub type FileId = u64;
/// Per-file invalidation sequence; see the module docs of `invalidate.rs`.
pub type InvalidationSeq = u64;
/// Unique id of a folio (never reused in a process); also names an in-flight fill.
pub type FolioId = u64;

/// Configuration of a `DeviceTier`.
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

/// Why device pages are dropped (counted per cause in the tier's invalidation counts).
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

    /// The file's size now (for in-place updates of an exported copy, `export.rs`).
    fn size(&self) -> io::Result<u64> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl FillSource for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// An owned storage reader that readahead threads can use after the read returned. A plain
/// `std::sync::Arc`: it only shares ownership, it does not synchronise anything.
pub type SharedSource = std::sync::Arc<dyn FillSource + Send + Sync>;

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

/// Outcome of a prefetch; the three fields add up to the clipped range length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PrefetchReport {
    /// Bytes of the range this call read from storage into the tier.
    pub faulted_bytes: u64,
    /// Bytes of the range already resident (or filled meanwhile by another thread).
    pub already_resident_bytes: u64,
    /// Bytes not made resident because no arena space could be freed (all pinned/filling).
    pub skipped_bytes: u64,
}
