//! Operational telemetry: the Prometheus endpoint (`--metrics-addr`), the
//! per-request latency histograms the FUSE adapter feeds, and the periodic
//! `--log-stats` summary line.
//!
//! Invariants:
//! - Nothing here runs unless asked for: with metrics off, the adapter holds
//!   no [`RequestMetrics`] and pays one `Option` check per request.
//! - Counters and gauges are *sampled* from [`Pagetier::stats_document`] at
//!   scrape time (no hot-path cost); every number of the stats document is
//!   exported (a test fails when a field of [`StatsDocument`] is not).
//! - The request hot path touches only relaxed atomics of a fixed table
//!   indexed by (op, view): no lock, no allocation, no label hashing.
//! - The endpoint runs on a one-thread tokio runtime on its own plain thread;
//!   the runtime is blocked on only from that thread, never from a FUSE worker
//!   or from inside the runtime (where `block_on` would panic or stall it).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, info, warn};

use crate::fs::Pagetier;
use crate::inode::{CONTROL_ID, STATS_ID, View};
use crate::stats::{HostStats, StatsDocument};
use crate::tier::{DeviceStats, TierDiagnostics};

// ----- request latency ---------------------------------------------------------------

/// A FUSE operation, as labelled in `pagetier_request_duration_seconds{op}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Fallocate,
    Lseek,
    CopyFileRange,
    Ioctl,
    Poll,
}

impl Op {
    pub const ALL: [Op; 35] = [
        Op::Lookup,
        Op::Forget,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Access,
        Op::Create,
        Op::Fallocate,
        Op::Lseek,
        Op::CopyFileRange,
        Op::Ioctl,
        Op::Poll,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Access => "access",
            Op::Create => "create",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
            Op::CopyFileRange => "copy_file_range",
            Op::Ioctl => "ioctl",
            Op::Poll => "poll",
        }
    }
}

/// Which part of the mount a request addressed, as labelled in `{view}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewLabel {
    Host,
    Device,
    /// `.pagetier` itself and `.pagetier/stats`.
    Control,
}

impl ViewLabel {
    const ALL: [ViewLabel; 3] = [ViewLabel::Host, ViewLabel::Device, ViewLabel::Control];

    /// The view of FUSE inode `ino` (the host view for a number that decodes to nothing).
    pub fn of(ino: u64) -> ViewLabel {
        match crate::inode::decode(ino) {
            Some((id, _)) if id == CONTROL_ID || id == STATS_ID => ViewLabel::Control,
            Some((_, View::Device)) => ViewLabel::Device,
            _ => ViewLabel::Host,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ViewLabel::Host => "host",
            ViewLabel::Device => "device",
            ViewLabel::Control => "control",
        }
    }
}

/// Upper bounds of the latency buckets, in nanoseconds (10 µs .. 10 s).
const BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A fixed-bucket histogram of durations made of relaxed atomics.
///
/// Readers may see `sum` and the buckets of an observation that is half
/// recorded; Prometheus tolerates that skew (it is one observation).
#[derive(Default)]
pub struct LatencyHistogram {
    /// `buckets[i]` counts observations in `(BOUNDS_NS[i-1], BOUNDS_NS[i]]`;
    /// the last one those above every bound (`+Inf`).
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with upper bounds in seconds).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let n = b.load(Ordering::Relaxed);
                count += n;
                let le = BOUNDS_NS
                    .get(i)
                    .map_or(f64::INFINITY, |&ns| ns as f64 / 1e9);
                (le, n)
            })
            .collect();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

/// Request latency per (op, view), fed by the FUSE adapter when metrics are on.
pub struct RequestMetrics {
    hist: Box<[[LatencyHistogram; 3]]>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            hist: (0..Op::COUNT).map(|_| Default::default()).collect(),
        }
    }
}

impl RequestMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts timing a request; the latency is recorded when the timer drops.
    #[inline]
    pub fn start(&self, op: Op, ino: u64) -> RequestTimer<'_> {
        RequestTimer {
            hist: &self.hist[op as usize][ViewLabel::of(ino) as usize],
            start: Instant::now(),
        }
    }

    pub fn histogram(&self, op: Op, view: ViewLabel) -> &LatencyHistogram {
        &self.hist[op as usize][view as usize]
    }
}

/// Records the time from its creation to its drop into one histogram.
pub struct RequestTimer<'a> {
    hist: &'a LatencyHistogram,
    start: Instant,
}

impl Drop for RequestTimer<'_> {
    fn drop(&mut self) {
        self.hist.observe(self.start.elapsed());
    }
}

// ----- the exposition ----------------------------------------------------------------

/// The Prometheus name of a stats key: `bytes_served` -> `served_bytes`
/// (the unit last, as Prometheus names it).
fn metric_key(key: &str) -> String {
    match key.strip_prefix("bytes_") {
        Some(rest) => format!("{rest}_bytes"),
        None => key.to_string(),
    }
}

fn encode_counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn encode_gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Writes the families of one stats document: `device` levels as gauges and its counts as
/// counters (`pagetier_device_*`), `invalidations` as one counter family by `cause`, `host`
/// as counters, `diagnostics` as gauges (the fill time as a counter in seconds),
/// `notifications` as gauges, `inodes` and `open_handles` as gauges. A test checks that
/// every number of the document is exported.
fn encode_stats(doc: &StatsDocument, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    encode_device(&doc.device, enc)?;
    encode_invalidations(doc, enc)?;
    encode_host(&doc.host, enc)?;
    encode_diagnostics(&doc.diagnostics, enc)?;
    encode_passthrough(doc, enc)?;
    encode_mount(doc, enc)
}

/// `pagetier_passthrough_*`: whether it is on (gauge, 1: on) and its counts (counters);
/// `pagetier_kernel_*`: the limits agreed at init (gauges).
fn encode_passthrough(
    doc: &StatsDocument,
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let p = &doc.passthrough;
    encode_gauge(
        enc,
        "pagetier_passthrough_on",
        "Whether read-only host-view opens are served by the kernel (1: on)",
        u64::from(p.mode == crate::iomode::PassthroughMode::On),
    )?;
    encode_gauge(
        enc,
        "pagetier_passthrough_idle_registrations",
        "Host-view backing registrations kept idle for the next read-only open",
        p.idle_registrations,
    )?;
    for (key, help, v) in [
        (
            "host_opens",
            "Host-view opens served by the kernel (FUSE passthrough)",
            p.host_opens,
        ),
        (
            "device_opens",
            "Device-view opens served by the kernel from shared device memory",
            p.device_opens,
        ),
        (
            "writer_opens",
            "Writable passthrough opens (each bypasses the device tier for its file)",
            p.writer_opens,
        ),
        (
            "registration_failures",
            "Backing files the kernel refused to register",
            p.registration_failures,
        ),
        (
            "idle_reuses",
            "Host-view passthrough opens that named an idle registration again",
            p.idle_reuses,
        ),
        (
            "device_reads_behind",
            "Device-view reads served from storage while a passthrough writer was open",
            p.device_reads_behind,
        ),
    ] {
        encode_counter(enc, &format!("pagetier_passthrough_{key}"), help, v)?;
    }
    let sh = &doc.shared;
    for (key, help, v) in [
        (
            "enabled",
            "Whether shared device memory is set up (1: yes)",
            u64::from(sh.enabled),
        ),
        (
            "files",
            "Files exported to shared device memory now",
            sh.files,
        ),
        ("bytes", "Device capacity lent to exported copies", sh.bytes),
        (
            "kernel_bytes",
            "Bytes the kernel allocated in shared device memory",
            sh.kernel_bytes,
        ),
    ] {
        encode_gauge(enc, &format!("pagetier_shared_{key}"), help, v)?;
    }
    for (key, help, v) in [
        (
            "exports",
            "Files migrated into shared device memory",
            sh.exports,
        ),
        ("dropped", "Idle exports dropped (evicted)", sh.dropped),
        ("updates", "In-place updates of exported copies", sh.updates),
        (
            "updated_bytes",
            "Bytes written into exported copies by in-place updates",
            sh.updated_bytes,
        ),
        (
            "update_failures",
            "In-place updates of exported copies that failed",
            sh.update_failures,
        ),
        (
            "over_commits",
            "Exported copies that grew past the free device capacity",
            sh.over_commits,
        ),
        (
            "daemon_reads",
            "Device reads the daemon served from an exported copy",
            sh.daemon_reads,
        ),
        (
            "policy_touches",
            "Kernel-served device-view opens told to the eviction policy",
            sh.policy_touches,
        ),
    ] {
        encode_counter(enc, &format!("pagetier_shared_{key}"), help, v)?;
    }
    let k = &doc.kernel;
    encode_gauge(
        enc,
        "pagetier_kernel_max_pages",
        "Largest daemon-served FUSE request in pages, as agreed at init",
        k.max_pages,
    )?;
    encode_gauge(
        enc,
        "pagetier_kernel_max_readahead",
        "Largest kernel readahead in bytes, as agreed at init",
        k.max_readahead,
    )?;
    let w = &doc.workers;
    for (key, help, v) in [
        ("threads", "FUSE worker threads", w.threads),
        (
            "parking",
            "Whether idle FUSE workers park (1) or all keep reading (0)",
            u64::from(w.parking),
        ),
        ("parked", "FUSE workers parked now", w.parked),
        (
            "buffer_bytes",
            "Bytes kept for replies the daemon copies (reused read buffers)",
            w.buffer_bytes,
        ),
    ] {
        encode_gauge(enc, &format!("pagetier_workers_{key}"), help, v)?;
    }
    encode_counter(
        enc,
        "pagetier_workers_parks",
        "Times a FUSE worker parked while one caller used the mount",
        w.parks,
    )
}

/// `pagetier_device_*`: levels as gauges, counts as counters.
fn encode_device(d: &DeviceStats, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let device_gauges = [
        ("capacity_bytes", "Device tier arena size", d.capacity_bytes),
        (
            "used_bytes",
            "Device tier arena bytes held by resident pages and in-flight fills",
            d.used_bytes,
        ),
        ("huge_pages", "Resident 2 MiB device pages", d.huge_pages),
        ("base_pages", "Resident 4 KiB device pages", d.base_pages),
        (
            "metadata_bytes",
            "Host memory used by the tier's bookkeeping",
            d.metadata_bytes,
        ),
        (
            "huge_pages_enabled",
            "A setting of the device tier (1: on)",
            u64::from(d.huge_pages_enabled),
        ),
    ];
    for (key, help, v) in device_gauges {
        encode_gauge(enc, &format!("pagetier_device_{key}"), help, v)?;
    }
    let device_counters = [
        ("reads", "Device-view reads served by the tier", d.reads),
        (
            "hits",
            "Device page lookups served from resident pages",
            d.hits,
        ),
        (
            "misses",
            "Device page lookups that faulted (equals faults)",
            d.misses,
        ),
        (
            "bytes_served",
            "Bytes returned by device-view reads",
            d.bytes_served,
        ),
        (
            "bytes_faulted",
            "Bytes read from storage into the tier",
            d.bytes_faulted,
        ),
        (
            "evictions",
            "Device pages evicted to make room",
            d.evictions,
        ),
        (
            "splits",
            "Huge device pages split by partial invalidation",
            d.splits,
        ),
        (
            "collapses",
            "Huge device pages collapsed back from base pages",
            d.collapses,
        ),
        (
            "discarded_fills",
            "Faults discarded at install time because the file changed",
            d.discarded_fills,
        ),
        (
            "refused_writes",
            "Modifications refused (EROFS) in the device view",
            d.refused_writes,
        ),
    ];
    for (key, help, v) in device_counters {
        encode_counter(
            enc,
            &format!("pagetier_device_{}", metric_key(key)),
            help,
            v,
        )?;
    }
    Ok(())
}

/// `pagetier_invalidated_pages_total{cause}`.
fn encode_invalidations(
    doc: &StatsDocument,
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(0u64);
    let mut fam = enc.encode_descriptor(
        "pagetier_invalidated_pages",
        "Device pages dropped, by cause",
        None,
        c.metric_type(),
    )?;
    for (cause, n) in doc.invalidations_by_cause() {
        ConstCounter::new(n).encode(fam.encode_family(&[("cause", cause)])?)?;
    }
    Ok(())
}

/// `pagetier_host_*_total`.
fn encode_host(h: &HostStats, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    for (key, help, v) in [
        ("reads", "Host-view reads", h.reads),
        ("writes", "Host-view writes", h.writes),
        (
            "read_bytes",
            "Bytes read through the host view",
            h.read_bytes,
        ),
        (
            "write_bytes",
            "Bytes written through the host view",
            h.write_bytes,
        ),
    ] {
        encode_counter(enc, &format!("pagetier_host_{key}"), help, v)?;
    }
    Ok(())
}

/// The fill reads and time as `pagetier_device_fill_*` counters, the rest as
/// `pagetier_diagnostics_*` gauges (the policy's name is not a number).
fn encode_diagnostics(
    g: &TierDiagnostics,
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    // Fault latency: rate(fill_seconds) / rate(fill_reads) is the mean.
    encode_counter(
        enc,
        "pagetier_device_fill_reads",
        "Storage reads made to fill device pages (faults, prefetch, readahead)",
        g.fill_reads,
    )?;
    let c = ConstCounter::new(g.fill_nanos as f64 / 1e9);
    c.encode(enc.encode_descriptor(
        "pagetier_device_fill_seconds",
        "Time spent in storage reads that fill device pages",
        None,
        c.metric_type(),
    )?)?;
    for (key, v) in [
        ("admission_refusals", g.admission_refusals),
        ("bypass_reads", g.bypass_reads),
        ("huge_fallbacks", g.huge_fallbacks),
        ("lookups", g.lookups),
        ("pinned_bytes", g.pinned_bytes),
        ("policy_entries", g.policy_entries),
        ("readahead_bytes", g.readahead_bytes),
        ("readahead_dropped", g.readahead_dropped),
    ] {
        encode_gauge(
            enc,
            &format!("pagetier_diagnostics_{key}"),
            "A diagnostic field of the stats document",
            v,
        )?;
    }
    Ok(())
}

/// Notifications, live inodes and open handles: gauges.
fn encode_mount(doc: &StatsDocument, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let n = &doc.notifications;
    for (key, v) in [("sent", n.sent), ("late", n.late)] {
        encode_gauge(
            enc,
            &format!("pagetier_notifications_{key}"),
            "A field of the stats document",
            v,
        )?;
    }
    encode_gauge(
        enc,
        "pagetier_live_inodes",
        "Inodes the mount tracks",
        doc.inodes,
    )?;
    encode_gauge(
        enc,
        "pagetier_open_handles",
        "Open file and directory handles",
        doc.open_handles,
    )
}

/// Writes the latency histograms: one series per (op, view) seen so far.
fn encode_latency(
    req: &RequestMetrics,
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let mut fam = enc.encode_descriptor(
        "pagetier_request_duration_seconds",
        "FUSE request latency, from dispatch to reply, by op and view",
        None,
        MetricType::Histogram,
    )?;
    for op in Op::ALL {
        for view in ViewLabel::ALL {
            let (sum, count, buckets) = req.histogram(op, view).snapshot();
            if count == 0 {
                continue;
            }
            let labels = [("op", op.name()), ("view", view.name())];
            fam.encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
    }
    Ok(())
}

/// Samples the filesystem at each scrape.
struct PagetierCollector {
    fs: Arc<Pagetier>,
    req: Arc<RequestMetrics>,
}

impl std::fmt::Debug for PagetierCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PagetierCollector")
    }
}

impl Collector for PagetierCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = ConstGauge::new(1i64);
        let labels = [("version", env!("CARGO_PKG_VERSION"))];
        info.encode(
            enc.encode_descriptor(
                "pagetier_build_info",
                "The running pagetier's version",
                None,
                info.metric_type(),
            )?
            .encode_family(&labels)?,
        )?;
        encode_stats(&self.fs.stats_document(), &mut enc)?;
        encode_latency(&self.req, &mut enc)
    }
}

/// Builds the registry a scrape encodes.
pub fn registry(fs: Arc<Pagetier>, req: Arc<RequestMetrics>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(PagetierCollector { fs, req }));
    r
}

/// The exposition text of `registry` (OpenMetrics text format).
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 << 10);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
        let _ = writeln!(out, "# encoding failed\n# EOF");
    }
    out
}

// ----- the HTTP endpoint -------------------------------------------------------------

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted.
const MAX_REQUEST: usize = 8 << 10;
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the endpoint's socket (before the mount, so that a taken port is a
/// plain startup error).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves `GET /metrics` on `listener` from a one-thread tokio runtime on a
/// thread of its own, for the life of the process.
pub fn serve(
    listener: TcpListener,
    fs: Arc<Pagetier>,
    req: Arc<RequestMetrics>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let registry = Arc::new(registry(fs, req));
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            // A plain thread outside the runtime: blocking on it here is safe.
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        warn!("metrics endpoint {addr}: {e}");
                        return;
                    }
                };
                info!(%addr, "serving metrics at http://{addr}/metrics");
                loop {
                    match listener.accept().await {
                        Ok((sock, peer)) => {
                            let registry = registry.clone();
                            tokio::spawn(async move {
                                if let Err(e) = answer(sock, &registry).await {
                                    debug!(%peer, "metrics request: {e}");
                                }
                            });
                        }
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!("metrics endpoint: accept: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        })?;
    Ok(())
}

/// Answers one HTTP/1.x request on `sock` and closes it.
async fn answer(mut sock: tokio::net::TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut n = 0;
    let head_end = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            if let Some(i) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok::<_, std::io::Error>(Some(i));
            }
            if n == buf.len() {
                return Ok(None);
            }
            let r = sock.read(&mut buf[n..]).await?;
            if r == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            n += r;
        }
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let (status, body) = match head_end {
        None => ("431 Request Header Fields Too Large", String::new()),
        Some(end) => {
            let head = String::from_utf8_lossy(&buf[..end]);
            route(head.lines().next().unwrap_or(""), registry)
        }
    };
    let (ctype, body) = if status.starts_with("200") && !body.is_empty() {
        (CONTENT_TYPE, body)
    } else {
        ("text/plain; charset=utf-8", body)
    };
    let head_only = buf.starts_with(b"HEAD ");
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(&body);
    }
    sock.write_all(out.as_bytes()).await?;
    sock.shutdown().await
}

/// (status, body) for a request line.
fn route(line: &str, registry: &Registry) -> (&'static str, String) {
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", render(registry)),
        ("GET" | "HEAD", "/") => ("200 OK", "pagetier: metrics at /metrics\n".to_string()),
        (_, "/metrics" | "/") => ("405 Method Not Allowed", "GET only\n".to_string()),
        _ => ("404 Not Found", "not found: try /metrics\n".to_string()),
    }
}

// ----- the --log-stats summary line --------------------------------------------------

/// Logs one summary line at info (target `pagetier::stats`) every `period`,
/// from a plain thread, for the life of the process: readable text, or with
/// `structured` (JSON logs) the numbers as fields.
pub fn log_stats_every(
    period: Duration,
    fs: Arc<Pagetier>,
    structured: bool,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("log-stats".into())
        .spawn(move || {
            let mut prev = crate::top::Sample::from_document(&fs.stats_document(), Instant::now());
            loop {
                std::thread::sleep(period);
                let cur = crate::top::Sample::from_document(&fs.stats_document(), Instant::now());
                let r = crate::top::Rates::between(&prev, &cur);
                if structured {
                    info!(
                        target: "pagetier::stats",
                        used_bytes = cur.used,
                        capacity_bytes = cur.capacity,
                        hit_ratio = r.hit_ratio,
                        device_served_bps = r.served_bps as u64,
                        device_faulted_bps = r.faulted_bps as u64,
                        host_read_bps = r.host_read_bps as u64,
                        host_write_bps = r.host_write_bps as u64,
                        faults = cur.misses.saturating_sub(prev.misses),
                        evictions = cur.evictions.saturating_sub(prev.evictions),
                        invalidations = cur.invalidations.saturating_sub(prev.invalidations),
                        open_handles = cur.open_handles,
                        inodes = cur.inodes,
                        "stats"
                    );
                } else {
                    info!(target: "pagetier::stats", "{}", crate::top::summary_line(&cur, &r));
                }
                prev = cur;
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_what_they_should() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_nanos(10_000)); // on the first bound: le=1e-5
        h.observe(Duration::from_micros(11));
        h.observe(Duration::from_secs(60)); // +Inf
        let (sum, count, b) = h.snapshot();
        assert_eq!(count, 3);
        assert_eq!(b[0], (1e-5, 1));
        assert_eq!(b[1], (2.5e-5, 1));
        assert_eq!(b.last().unwrap(), &(f64::INFINITY, 1));
        assert!((sum - 60.000021).abs() < 1e-9);
    }

    #[test]
    fn views_of_inodes() {
        assert_eq!(ViewLabel::of(1), ViewLabel::Host);
        assert_eq!(ViewLabel::of(2), ViewLabel::Device);
        let stats = crate::inode::encode(STATS_ID, View::Host);
        assert_eq!(ViewLabel::of(stats), ViewLabel::Control);
        assert_eq!(
            ViewLabel::of(crate::inode::encode(7, View::Device)),
            ViewLabel::Device
        );
    }

    #[test]
    fn op_table_is_in_discriminant_order() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?}");
        }
    }

    struct Doc(StatsDocument, RequestMetrics);
    impl std::fmt::Debug for Doc {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Doc")
        }
    }
    impl Collector for Doc {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_stats(&self.0, &mut enc)?;
            encode_latency(&self.1, &mut enc)
        }
    }

    fn exposition(doc: StatsDocument, req: RequestMetrics) -> String {
        let mut r = Registry::default();
        r.register_collector(Box::new(Doc(doc, req)));
        render(&r)
    }

    #[test]
    fn the_stats_document_is_exported_under_its_metric_names() {
        let mut doc = crate::stats::zeroed();
        let d = &mut doc.device;
        (d.capacity_bytes, d.used_bytes, d.huge_pages_enabled) = (1024, 512, true);
        (d.huge_pages, d.base_pages, d.hits, d.misses) = (1, 2, 5, 3);
        (d.bytes_served, d.bytes_faulted) = (4096, 8192);
        (doc.invalidations.write, doc.invalidations.external) = (2, 1);
        (doc.host.reads, doc.host.read_bytes) = (4, 100);
        (doc.inodes, doc.open_handles, doc.notifications.sent) = (9, 2, 3);
        let g = &mut doc.diagnostics;
        (g.fill_reads, g.fill_nanos, g.bypass_reads) = (4, 2_000_000_000, 1);
        let req = RequestMetrics::new();
        drop(req.start(Op::Read, 2));
        let text = exposition(doc, req);
        for line in [
            "pagetier_device_capacity_bytes 1024",
            "pagetier_device_used_bytes 512",
            "pagetier_device_huge_pages_enabled 1",
            "pagetier_device_huge_pages 1",
            "pagetier_device_base_pages 2",
            "pagetier_device_hits_total 5",
            "pagetier_device_misses_total 3",
            "pagetier_device_served_bytes_total 4096",
            "pagetier_device_faulted_bytes_total 8192",
            "pagetier_invalidated_pages_total{cause=\"write\"} 2",
            "pagetier_invalidated_pages_total{cause=\"external\"} 1",
            "pagetier_host_reads_total 4",
            "pagetier_host_read_bytes_total 100",
            "pagetier_live_inodes 9",
            "pagetier_open_handles 2",
            "pagetier_notifications_sent 3",
            "pagetier_device_fill_reads_total 4",
            "pagetier_device_fill_seconds_total 2.0",
            "pagetier_diagnostics_bypass_reads 1",
            "# TYPE pagetier_device_hits counter",
            "# TYPE pagetier_request_duration_seconds histogram",
            "pagetier_request_duration_seconds_count{op=\"read\",view=\"device\"} 1",
            "pagetier_request_duration_seconds_bucket{le=\"+Inf\",op=\"read\",view=\"device\"} 1",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("op=\"write\""), "unseen series are left out");
    }

    /// The metric (without a `_total` suffix) a number of the document is exported as.
    fn metric_of(section: &str, key: &str) -> String {
        match (section, key) {
            ("invalidations", cause) => format!("pagetier_invalidated_pages{{cause=\"{cause}\"}}"),
            ("diagnostics", "fill_reads") => "pagetier_device_fill_reads".to_string(),
            ("diagnostics", "fill_nanos") => "pagetier_device_fill_seconds".to_string(),
            ("", "inodes") => "pagetier_live_inodes".to_string(),
            ("", k) => format!("pagetier_{k}"),
            (s, k) => format!("pagetier_{s}_{}", metric_key(k)),
        }
    }

    #[test]
    fn every_number_of_the_stats_document_is_exported_with_its_value() {
        // Give every number of the document its own value, then find each in the exposition.
        let mut v = serde_json::to_value(crate::stats::zeroed()).unwrap();
        let mut want = Vec::new();
        let mut next = 10u64;
        let mut number = |section: &str, key: &str, x: &mut serde_json::Value| {
            if x.is_boolean() {
                *x = true.into();
                want.push((metric_of(section, key), "1".to_string()));
            } else if x.is_number() {
                next += 1;
                if key == "fill_nanos" {
                    *x = (next * 1_000_000_000).into();
                    want.push((metric_of(section, key), format!("{next}.0")));
                } else {
                    *x = next.into();
                    want.push((metric_of(section, key), next.to_string()));
                }
            }
        };
        for (section, body) in v.as_object_mut().unwrap() {
            match body {
                serde_json::Value::Object(o) => {
                    for (key, x) in o.iter_mut() {
                        number(section, key, x);
                    }
                }
                x if section != "version" => number("", section, x),
                _ => {}
            }
        }
        assert_eq!(
            want.len(),
            67,
            "every number and flag of the document: {want:?}"
        );
        let doc: StatsDocument = serde_json::from_value(v).unwrap();
        let text = exposition(doc, RequestMetrics::new());
        for (name, value) in want {
            let total = match name.split_once('{') {
                Some((base, labels)) => format!("{base}_total{{{labels}"),
                None => format!("{name}_total"),
            };
            assert!(
                text.lines()
                    .any(|l| l == format!("{name} {value}") || l == format!("{total} {value}")),
                "{name} {value} is not exported:\n{text}"
            );
        }
    }

    #[test]
    fn routes() {
        let r = Registry::default();
        assert_eq!(route("GET /metrics HTTP/1.1", &r).0, "200 OK");
        assert_eq!(route("GET /metrics?x=1 HTTP/1.1", &r).0, "200 OK");
        assert!(route("POST /metrics HTTP/1.1", &r).0.starts_with("405"));
        assert!(route("GET /nope HTTP/1.1", &r).0.starts_with("404"));
        assert!(route("", &r).0.starts_with("404"));
    }
}
