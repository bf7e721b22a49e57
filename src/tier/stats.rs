//! Tier counters: relaxed atomics bumped on the hot path, read as one [`TierStats`] snapshot.
//!
//! Definitions (also in docs/INTERFACE.md): `hits`/`misses` count device-page lookups, one per
//! folio (huge or base page) a device read copies from; a lookup is a miss when this read had
//! to fault the page (or had to read storage directly because no space could be made), so
//! `misses` equals faults. `lookups` (diagnostic) is always `hits + misses`. Invalidation
//! counters count device pages dropped, by cause: a dropped huge page counts 1, a split counts
//! the base pages it dropped. Snapshot fields are read independently, so while threads are
//! active two fields may be off by in-flight operations; at rest they are exact.

use serde::{Deserialize, Serialize};

use crate::tier::sync::{AtomicU64, Ordering};
use crate::tier::types::InvalidationCause;

#[derive(Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub lookups: AtomicU64,
    pub bytes_served: AtomicU64,
    pub bytes_faulted: AtomicU64,
    pub evictions: AtomicU64,
    pub splits: AtomicU64,
    pub collapses: AtomicU64,
    pub discarded_fills: AtomicU64,
    pub refused_writes: AtomicU64,
    pub bypass_reads: AtomicU64,
    pub huge_fallbacks: AtomicU64,
    pub admission_refusals: AtomicU64,
    pub readahead_bytes: AtomicU64,
    pub readahead_dropped: AtomicU64,
    /// Storage reads made to fill folios, and their total time in nanoseconds.
    pub fill_reads: AtomicU64,
    pub fill_nanos: AtomicU64,
    /// Installed (ready) folios.
    pub resident_huge: AtomicU64,
    pub resident_base: AtomicU64,
    pub invalidations: [AtomicU64; InvalidationCause::COUNT],
    /// Shared memory (`export.rs`): migrations in, exports dropped, in-place updates and their
    /// bytes, updates that failed, copies grown past the capacity, device reads served
    /// from a copy by the daemon.
    pub exports: AtomicU64,
    pub dropped_exports: AtomicU64,
    pub updates: AtomicU64,
    pub updated_bytes: AtomicU64,
    pub update_failures: AtomicU64,
    pub over_commits: AtomicU64,
    pub shared_reads: AtomicU64,
    pub policy_touches: AtomicU64,
}

pub fn add(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

pub fn sub(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.fetch_sub(n, Ordering::Relaxed);
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The field names of [`DeviceStats`] in its JSON form (the stable `"device"`
/// object of `.pagetier/stats`), in order.
#[cfg(test)]
pub const DEVICE_FIELDS: [&str; 16] = [
    "capacity_bytes",
    "used_bytes",
    "huge_pages_enabled",
    "huge_pages",
    "base_pages",
    "reads",
    "hits",
    "misses",
    "bytes_served",
    "bytes_faulted",
    "evictions",
    "splits",
    "collapses",
    "discarded_fills",
    "refused_writes",
    "metadata_bytes",
];

/// The `"device"` object of the stats JSON, field for field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStats {
    pub capacity_bytes: u64,
    /// Arena bytes owned by folios (resident pages plus in-flight fills).
    pub used_bytes: u64,
    pub huge_pages_enabled: bool,
    /// Resident huge pages.
    pub huge_pages: u64,
    /// Resident base pages.
    pub base_pages: u64,
    pub reads: u64,
    pub hits: u64,
    pub misses: u64,
    pub bytes_served: u64,
    pub bytes_faulted: u64,
    pub evictions: u64,
    pub splits: u64,
    pub collapses: u64,
    pub discarded_fills: u64,
    pub refused_writes: u64,
    pub metadata_bytes: u64,
}

/// The `"invalidations"` object of the stats JSON: device pages dropped, by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidationCounts {
    pub write: u64,
    pub truncate: u64,
    pub fallocate: u64,
    pub copy: u64,
    pub unlink_rename: u64,
    pub external: u64,
    pub evict: u64,
}

/// Counters that are not part of the stable JSON (for logs, tests and benchmarks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierDiagnostics {
    /// Always `hits + misses`.
    pub lookups: u64,
    /// Device reads (or parts) served straight from storage because no arena space could be
    /// freed (everything pinned or being filled). Counted in `misses` too.
    pub bypass_reads: u64,
    /// Huge faults that fell back to base pages because no chunk could be freed quickly.
    pub huge_fallbacks: u64,
    /// Resident folios tracked by the eviction policy (pinned folios are not).
    pub policy_entries: u64,
    /// The eviction policy's name.
    pub policy: String,
    /// Missed pages the policy refused to install in a full tier (served by bypass, or
    /// ending a readahead job).
    pub admission_refusals: u64,
    /// Bytes faulted into the tier by readahead threads.
    pub readahead_bytes: u64,
    /// Readahead bytes not read ahead: not issued because the readahead queue was full, or
    /// given up because no whole chunk could be freed for a huge page (readahead never falls
    /// back to base pages).
    pub readahead_dropped: u64,
    /// Arena bytes held by pinned folios (the `pin` hint).
    pub pinned_bytes: u64,
    /// Storage reads made to fill folios (faults, prefetch and readahead).
    pub fill_reads: u64,
    /// Their total time in nanoseconds: `fill_nanos / fill_reads` is the mean fault latency.
    pub fill_nanos: u64,
}

/// Device memory the kernel serves: files migrated into shared memory for passthrough
/// opens of the device view (`export.rs`). The `"shared"` object of the stats JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedStats {
    /// Shared memory is set up (a private tmpfs, `huge=advise`).
    pub enabled: bool,
    /// Files exported now (each has passthrough opens, or is being moved back).
    pub files: u64,
    /// Capacity lent to their copies (part of `device.used_bytes`).
    pub bytes: u64,
    /// Bytes the kernel has allocated in the tmpfs (equals `bytes` up to the 4 KiB
    /// rounding of file tails; more means memory was allocated behind the tier).
    pub kernel_bytes: u64,
    /// Migrations into shared memory since the mount, and exports dropped (idle ones
    /// evicted under pressure or by `user.pagetier.evict`).
    pub exports: u64,
    pub dropped: u64,
    /// In-place updates of a copy (host changes while exported), their bytes, and
    /// failures (logged as errors).
    pub updates: u64,
    pub updated_bytes: u64,
    pub update_failures: u64,
    /// Copies that grew past the free capacity (taken anyway: never a stale byte).
    pub over_commits: u64,
    /// Device reads the daemon served from a copy (an open that was not passthrough).
    pub daemon_reads: u64,
    /// Kernel-served opens told to the eviction policy: each touches the file's folio keys
    /// once (frequency only), since the daemon sees none of their reads.
    #[serde(default)]
    pub policy_touches: u64,
}

/// A snapshot of the tier's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierStats {
    pub device: DeviceStats,
    pub invalidations: InvalidationCounts,
    pub diagnostics: TierDiagnostics,
    #[serde(default)]
    pub shared: SharedStats,
}

impl Counters {
    pub fn invalidation_counts(&self) -> InvalidationCounts {
        let i = |c: InvalidationCause| get(&self.invalidations[c as usize]);
        InvalidationCounts {
            write: i(InvalidationCause::Write),
            truncate: i(InvalidationCause::Truncate),
            fallocate: i(InvalidationCause::Fallocate),
            copy: i(InvalidationCause::Copy),
            unlink_rename: i(InvalidationCause::UnlinkRename),
            external: i(InvalidationCause::External),
            evict: i(InvalidationCause::Evict),
        }
    }

    pub fn snapshot(
        &self,
        capacity_bytes: u64,
        used_bytes: u64,
        huge_pages_enabled: bool,
        metadata_bytes: u64,
        policy_entries: u64,
    ) -> TierStats {
        // Read hits after misses so a concurrent reader can only make lookups look larger.
        let misses = get(&self.misses);
        let hits = get(&self.hits);
        TierStats {
            device: DeviceStats {
                capacity_bytes,
                used_bytes,
                huge_pages_enabled,
                huge_pages: get(&self.resident_huge),
                base_pages: get(&self.resident_base),
                reads: get(&self.reads),
                hits,
                misses,
                bytes_served: get(&self.bytes_served),
                bytes_faulted: get(&self.bytes_faulted),
                evictions: get(&self.evictions),
                splits: get(&self.splits),
                collapses: get(&self.collapses),
                discarded_fills: get(&self.discarded_fills),
                refused_writes: get(&self.refused_writes),
                metadata_bytes,
            },
            invalidations: self.invalidation_counts(),
            diagnostics: TierDiagnostics {
                lookups: get(&self.lookups),
                bypass_reads: get(&self.bypass_reads),
                huge_fallbacks: get(&self.huge_fallbacks),
                policy_entries,
                policy: String::new(),
                admission_refusals: get(&self.admission_refusals),
                readahead_bytes: get(&self.readahead_bytes),
                readahead_dropped: get(&self.readahead_dropped),
                pinned_bytes: 0,
                fill_reads: get(&self.fill_reads),
                fill_nanos: get(&self.fill_nanos),
            },
            shared: SharedStats {
                exports: get(&self.exports),
                dropped: get(&self.dropped_exports),
                updates: get(&self.updates),
                updated_bytes: get(&self.updated_bytes),
                update_failures: get(&self.update_failures),
                over_commits: get(&self.over_commits),
                daemon_reads: get(&self.shared_reads),
                policy_touches: get(&self.policy_touches),
                ..SharedStats::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_counts_by_cause_and_json_shape() {
        let c = Counters::default();
        add(&c.invalidations[InvalidationCause::Truncate as usize], 3);
        add(
            &c.invalidations[InvalidationCause::UnlinkRename as usize],
            2,
        );
        let s = c.snapshot(4 << 20, 0, true, 10, 0);
        assert_eq!(s.invalidations.truncate, 3);
        assert_eq!(s.invalidations.unlink_rename, 2);
        let v = serde_json::to_value(&s).unwrap();
        let dev = v["device"].as_object().unwrap();
        let keys: Vec<&str> = dev.keys().map(String::as_str).collect();
        for k in DEVICE_FIELDS {
            assert!(keys.contains(&k), "missing {k}");
        }
        assert_eq!(keys.len(), 16);
        assert_eq!(v["invalidations"].as_object().unwrap().len(), 7);
    }
}
