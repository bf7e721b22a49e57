//! The stats document (`MOUNTPOINT/.pagetier/stats`, docs/INTERFACE.md) as one typed value.
//!
//! [`StatsDocument`] is written by the mount (`Pagetier::stats_document`, serialized into the
//! stats file) and read by everything that consumes it: the metrics endpoint, `--log-stats`,
//! `pagetier stats`, `pagetier top` and the tests. No one indexes the JSON by string.
//!
//! Invariants:
//! - The JSON form keeps the shape docs/INTERFACE.md states, key for key (the golden test
//!   below lists every key path); a field added here is a field added to that interface.
//! - The nested tier parts are the tier's own snapshot types ([`DeviceStats`],
//!   [`InvalidationCounts`], [`TierDiagnostics`]): one type per part, written and read back
//!   by the same serde derive, so writer and readers cannot drift apart.
//! - The stats file is written with its keys sorted at every level, as it always has been
//!   ([`StatsDocument::to_file_bytes`]).

use serde::{Deserialize, Serialize};

use crate::iomode::PassthroughMode;
#[cfg(test)]
use crate::tier::POLICY_NAMES;
use crate::tier::{DeviceStats, InvalidationCounts, SharedStats, TierDiagnostics, TierStats};
pub use crate::workers::WorkerStats;

/// The version number the document carries (`"version"`).
pub const STATS_VERSION: u32 = 1;

/// The whole `.pagetier/stats` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsDocument {
    /// Always 1 (`STATS_VERSION`).
    pub version: u32,
    pub device: DeviceStats,
    pub invalidations: InvalidationCounts,
    /// Not part of the stable interface (logs, tests, benchmarks, metrics).
    pub diagnostics: TierDiagnostics,
    pub host: HostStats,
    pub notifications: NotificationStats,
    /// Live inodes the mount tracks.
    pub inodes: u64,
    /// Open file and directory handles.
    pub open_handles: u64,
    /// Absent from the documents of mounts older than it (read as `off` and zeros).
    #[serde(default)]
    pub passthrough: PassthroughStats,
    /// Absent from the documents of mounts older than it (read as zeros).
    #[serde(default)]
    pub kernel: KernelStats,
    /// Absent from the documents of mounts older than it (read as zeros).
    #[serde(default)]
    pub shared: SharedStats,
    /// Absent from the documents of mounts older than it (read as zeros).
    #[serde(default)]
    pub workers: WorkerStats,
}

/// The `"passthrough"` object: opens the kernel serves itself (FUSE passthrough).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassthroughStats {
    /// In force now: `on` or `off`.
    pub mode: PassthroughMode,
    /// Host-view opens answered with passthrough since the mount (their reads and writes
    /// never reach the daemon, so `host.reads`/`host.read_bytes` do not count them).
    pub host_opens: u64,
    /// Device-view opens answered with passthrough onto shared device memory since the
    /// mount (`shared` in the tier stats; their reads never reach the daemon, so the
    /// device hit ratio is a ratio of what the daemon saw).
    #[serde(default)]
    pub device_opens: u64,
    /// Of the host-view ones, writable ones (each bypasses the device tier for its file while open).
    pub writer_opens: u64,
    /// Backing registrations the kernel refused (those opens were daemon-served, and
    /// passthrough went off).
    pub registration_failures: u64,
    /// Host-view registrations kept idle now (no open; the next read-only open names one
    /// again instead of registering), and the opens that did so since the mount.
    #[serde(default)]
    pub idle_registrations: u64,
    #[serde(default)]
    pub idle_reuses: u64,
    /// Device-view reads served straight from STORAGE because a passthrough writer of the
    /// file was open.
    pub device_reads_behind: u64,
}

/// The `"kernel"` object: what the kernel agreed to at init.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelStats {
    /// Largest daemon-served request in 4 KiB pages (`fs.fuse.max_pages_limit` caps it).
    pub max_pages: u64,
    /// Largest kernel readahead in bytes.
    pub max_readahead: u64,
}

/// The `"host"` object: host-view reads and writes since the mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStats {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// The `"notifications"` object: FUSE cache notifications for the device view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationStats {
    /// Notifications written.
    pub sent: u64,
    /// Host-view changes that replied before their entry notifications were written.
    pub late: u64,
}

impl StatsDocument {
    /// The document of a mount whose tier reports `tier`.
    pub fn new(
        tier: TierStats,
        host: HostStats,
        notifications: NotificationStats,
        inodes: u64,
        open_handles: u64,
        passthrough: PassthroughStats,
        kernel: KernelStats,
    ) -> StatsDocument {
        StatsDocument {
            version: STATS_VERSION,
            device: tier.device,
            invalidations: tier.invalidations,
            diagnostics: tier.diagnostics,
            host,
            notifications,
            inodes,
            open_handles,
            passthrough,
            kernel,
            shared: tier.shared,
            workers: WorkerStats::default(),
        }
    }

    /// The document with the FUSE workers' figures.
    pub fn with_workers(mut self, workers: WorkerStats) -> StatsDocument {
        self.workers = workers;
        self
    }

    /// Device pages dropped, all causes summed.
    pub fn invalidations_total(&self) -> u64 {
        self.invalidations_by_cause().iter().map(|(_, n)| n).sum()
    }

    /// `(cause, device pages dropped)` in the order of the JSON object's keys.
    pub fn invalidations_by_cause(&self) -> [(&'static str, u64); 7] {
        let i = &self.invalidations;
        [
            ("copy", i.copy),
            ("evict", i.evict),
            ("external", i.external),
            ("fallocate", i.fallocate),
            ("truncate", i.truncate),
            ("unlink_rename", i.unlink_rename),
            ("write", i.write),
        ]
    }

    /// The stats file's bytes: pretty JSON with sorted keys (the order readers of the
    /// file have always seen; going through `Value` sorts them).
    pub fn to_file_bytes(&self) -> Vec<u8> {
        serde_json::to_value(self)
            .and_then(|v| serde_json::to_vec_pretty(&v))
            .unwrap_or_default()
    }

    /// Parses a stats document (the stats file's contents).
    pub fn parse(bytes: &[u8]) -> serde_json::Result<StatsDocument> {
        serde_json::from_slice(bytes)
    }
}

/// A document of zeros, for tests that set the fields they need.
#[cfg(test)]
pub(crate) fn zeroed() -> StatsDocument {
    StatsDocument {
        version: STATS_VERSION,
        device: DeviceStats {
            capacity_bytes: 0,
            used_bytes: 0,
            huge_pages_enabled: true,
            huge_pages: 0,
            base_pages: 0,
            reads: 0,
            hits: 0,
            misses: 0,
            bytes_served: 0,
            bytes_faulted: 0,
            evictions: 0,
            splits: 0,
            collapses: 0,
            discarded_fills: 0,
            refused_writes: 0,
            metadata_bytes: 0,
        },
        invalidations: InvalidationCounts::default(),
        diagnostics: TierDiagnostics {
            lookups: 0,
            bypass_reads: 0,
            huge_fallbacks: 0,
            policy_entries: 0,
            policy: POLICY_NAMES[0].to_owned(),
            admission_refusals: 0,
            readahead_bytes: 0,
            readahead_dropped: 0,
            pinned_bytes: 0,
            fill_reads: 0,
            fill_nanos: 0,
        },
        host: HostStats::default(),
        notifications: NotificationStats::default(),
        inodes: 0,
        open_handles: 0,
        passthrough: PassthroughStats::default(),
        kernel: KernelStats::default(),
        shared: SharedStats {
            enabled: true,
            ..SharedStats::default()
        },
        workers: WorkerStats::default(),
    }
}

/// The document as compact JSON (for messages and logs).
impl std::fmt::Display for StatsDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key path of the document and its JSON type, as captured from a real mount
    /// before the document became typed (it must never change by accident).
    const GOLDEN_SHAPE: &[(&str, &str)] = &[
        ("device.base_pages", "number"),
        ("device.bytes_faulted", "number"),
        ("device.bytes_served", "number"),
        ("device.capacity_bytes", "number"),
        ("device.collapses", "number"),
        ("device.discarded_fills", "number"),
        ("device.evictions", "number"),
        ("device.hits", "number"),
        ("device.huge_pages", "number"),
        ("device.huge_pages_enabled", "bool"),
        ("device.metadata_bytes", "number"),
        ("device.misses", "number"),
        ("device.reads", "number"),
        ("device.refused_writes", "number"),
        ("device.splits", "number"),
        ("device.used_bytes", "number"),
        ("diagnostics.admission_refusals", "number"),
        ("diagnostics.bypass_reads", "number"),
        ("diagnostics.fill_nanos", "number"),
        ("diagnostics.fill_reads", "number"),
        ("diagnostics.huge_fallbacks", "number"),
        ("diagnostics.lookups", "number"),
        ("diagnostics.pinned_bytes", "number"),
        ("diagnostics.policy", "string"),
        ("diagnostics.policy_entries", "number"),
        ("diagnostics.readahead_bytes", "number"),
        ("diagnostics.readahead_dropped", "number"),
        ("host.read_bytes", "number"),
        ("host.reads", "number"),
        ("host.write_bytes", "number"),
        ("host.writes", "number"),
        ("inodes", "number"),
        ("invalidations.copy", "number"),
        ("invalidations.evict", "number"),
        ("invalidations.external", "number"),
        ("invalidations.fallocate", "number"),
        ("invalidations.truncate", "number"),
        ("invalidations.unlink_rename", "number"),
        ("invalidations.write", "number"),
        ("kernel.max_pages", "number"),
        ("kernel.max_readahead", "number"),
        ("notifications.late", "number"),
        ("notifications.sent", "number"),
        ("open_handles", "number"),
        ("passthrough.device_opens", "number"),
        ("passthrough.device_reads_behind", "number"),
        ("passthrough.host_opens", "number"),
        ("passthrough.idle_registrations", "number"),
        ("passthrough.idle_reuses", "number"),
        ("passthrough.mode", "string"),
        ("passthrough.registration_failures", "number"),
        ("passthrough.writer_opens", "number"),
        ("shared.bytes", "number"),
        ("shared.daemon_reads", "number"),
        ("shared.dropped", "number"),
        ("shared.enabled", "bool"),
        ("shared.exports", "number"),
        ("shared.files", "number"),
        ("shared.kernel_bytes", "number"),
        ("shared.over_commits", "number"),
        ("shared.policy_touches", "number"),
        ("shared.update_failures", "number"),
        ("shared.updated_bytes", "number"),
        ("shared.updates", "number"),
        ("version", "number"),
        ("workers.buffer_bytes", "number"),
        ("workers.parked", "number"),
        ("workers.parking", "bool"),
        ("workers.parks", "number"),
        ("workers.threads", "number"),
    ];

    /// `(key path, JSON type)` of every leaf of `v`, sorted.
    pub(crate) fn shape(v: &serde_json::Value) -> Vec<(String, &'static str)> {
        fn walk(v: &serde_json::Value, path: String, out: &mut Vec<(String, &'static str)>) {
            use serde_json::Value::*;
            let kind = match v {
                Object(o) => {
                    for (k, x) in o {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        walk(x, p, out);
                    }
                    return;
                }
                Null => "null",
                Bool(_) => "bool",
                Number(_) => "number",
                String(_) => "string",
                Array(_) => "array",
            };
            out.push((path, kind));
        }
        let mut out = Vec::new();
        walk(v, String::new(), &mut out);
        out.sort();
        out
    }

    fn sample_document() -> StatsDocument {
        let tier = crate::tier::DeviceTier::new(crate::tier::TierConfig {
            capacity: 4 << 20,
            huge_pages: true,
        })
        .unwrap();
        StatsDocument::new(
            tier.stats(),
            HostStats {
                reads: 1,
                writes: 2,
                read_bytes: 3,
                write_bytes: 4,
            },
            NotificationStats { sent: 5, late: 6 },
            7,
            8,
            PassthroughStats {
                mode: PassthroughMode::On,
                host_opens: 9,
                device_opens: 13,
                writer_opens: 10,
                registration_failures: 11,
                idle_registrations: 14,
                idle_reuses: 15,
                device_reads_behind: 12,
            },
            KernelStats {
                max_pages: 256,
                max_readahead: 1 << 20,
            },
        )
    }

    #[test]
    fn the_document_keeps_its_golden_shape() {
        let doc = sample_document();
        let v: serde_json::Value = serde_json::from_slice(&doc.to_file_bytes()).unwrap();
        let want: Vec<(String, &str)> = GOLDEN_SHAPE
            .iter()
            .map(|(k, t)| (k.to_string(), *t))
            .collect();
        assert_eq!(shape(&v), want);
    }

    #[test]
    fn a_document_without_passthrough_and_kernel_still_parses() {
        let mut v = serde_json::to_value(sample_document()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("passthrough");
        o.remove("kernel");
        o.remove("shared");
        let doc: StatsDocument = serde_json::from_value(v).unwrap();
        assert_eq!(doc.shared, SharedStats::default());
        assert_eq!(doc.passthrough, PassthroughStats::default());
        assert_eq!(doc.passthrough.mode, PassthroughMode::Off);
        assert_eq!(doc.kernel, KernelStats::default());
    }

    #[test]
    fn the_document_reads_back_what_was_written() {
        let doc = sample_document();
        assert_eq!(StatsDocument::parse(&doc.to_file_bytes()).unwrap(), doc);
        assert!(POLICY_NAMES.contains(&doc.diagnostics.policy.as_str()));
    }

    #[test]
    fn the_file_lists_keys_sorted() {
        let text = String::from_utf8(sample_document().to_file_bytes()).unwrap();
        let top: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  \""))
            .map(|l| l.trim().split('"').nth(1).unwrap())
            .collect();
        let mut sorted = top.clone();
        sorted.sort_unstable();
        assert_eq!(top, sorted);
        assert!(text.starts_with("{\n  \"device\": {\n    \"base_pages\""));
    }

    #[test]
    fn the_document_has_every_field() {
        let doc = serde_json::to_value(sample_document()).unwrap();
        assert_eq!(doc["version"], 1);
        for k in crate::tier::DEVICE_FIELDS {
            assert!(doc["device"].get(k).is_some(), "device.{k}");
        }
        assert_eq!(doc["device"]["capacity_bytes"], 4 << 20);
        for k in [
            "write",
            "truncate",
            "fallocate",
            "copy",
            "unlink_rename",
            "external",
            "evict",
        ] {
            assert_eq!(doc["invalidations"][k], 0, "invalidations.{k}");
        }
    }

    #[test]
    fn invalidations_are_summed_over_every_cause() {
        let mut doc = sample_document();
        doc.invalidations = InvalidationCounts {
            write: 1,
            truncate: 2,
            fallocate: 4,
            copy: 8,
            unlink_rename: 16,
            external: 32,
            evict: 64,
        };
        assert_eq!(doc.invalidations_total(), 127);
        let v = serde_json::to_value(&doc).unwrap();
        let causes = v["invalidations"].as_object().unwrap();
        assert_eq!(causes.len(), doc.invalidations_by_cause().len());
        for (cause, n) in doc.invalidations_by_cause() {
            assert_eq!(v["invalidations"][cause], n, "{cause}");
        }
    }
}
