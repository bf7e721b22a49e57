//! Command-line parsing: clap definitions and the `-o` option language.
//!
//! Pure and unit-tested: nothing here touches the system. `-o` options carry
//! the same settings as the flags (so that `mount -t fuse.pagetier` and
//! /etc/fstab work through mount.fuse3); a flag given explicitly wins over the
//! same setting in `-o`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// pagetier: a FUSE filesystem with a read-only device tier.
#[derive(Parser, Debug)]
#[command(name = "pagetier", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount STORAGE at MOUNTPOINT and serve it until unmounted.
    Mount(Box<MountArgs>),
    /// Show the tier's counters of a mount.
    Stats {
        mountpoint: PathBuf,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Show how much of each file is resident in the device tier.
    Residency {
        /// Descend into directories (a total line follows the files).
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Files worked on at once (default: 8).
        #[arg(short = 'j', long, value_parser = clap::value_parser!(u16).range(1..=256))]
        jobs: Option<u16>,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Fault files (or a byte range of them) into the device tier.
    Prefetch {
        /// Byte range `A-B` (inclusive) or `A-` (to the end); default all.
        #[arg(long, default_value = "0-")]
        range: String,
        /// Descend into directories.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Files worked on at once (default: 8).
        #[arg(short = 'j', long, value_parser = clap::value_parser!(u16).range(1..=256))]
        jobs: Option<u16>,
        /// Go on past the tier's capacity (later files then evict earlier ones).
        #[arg(long)]
        ignore_capacity: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Drop files' pages from the device tier.
    Evict {
        /// Descend into directories.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Files worked on at once (default: 8).
        #[arg(short = 'j', long, value_parser = clap::value_parser!(u16).range(1..=256))]
        jobs: Option<u16>,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Replay page-access traces through every policy and Belady's OPT.
    Simulate {
        /// A trace recorded with `mount --trace FILE` (CSV file_id,offset,len); repeatable.
        #[arg(long = "trace")]
        traces: Vec<PathBuf>,
        /// A synthetic trace, e.g. `shuffled:pages=64k,epochs=5` (kinds: seq, shuffled,
        /// zipf, hotset); repeatable. Without any trace: the standard synthetic set.
        #[arg(long = "synthetic")]
        synthetic: Vec<String>,
        /// Tier capacity to simulate (repeatable; default 1/1.5, 1/2 and 1/4 of 256 MiB).
        #[arg(long = "capacity")]
        capacities: Vec<String>,
        /// Replay page size: 4k (base pages) or 2m (huge pages).
        #[arg(long, default_value = "4k")]
        page_size: String,
        /// Policies to replay (default: all).
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// Mark every file of an epoch trace with the `epoch` hint.
        #[arg(long)]
        epoch_hint: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A live view of a mount's tier: occupancy, hit ratio, throughput, faults.
    Top {
        mountpoint: PathBuf,
        /// Print one frame (two samples one interval apart) and exit; also
        /// what happens when stdout is not a terminal.
        #[arg(long)]
        once: bool,
        /// Seconds between refreshes.
        #[arg(long, default_value = "1", value_parser = parse_interval)]
        interval: Duration,
    },
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.05..=3600.0).contains(&x) => Ok(Duration::from_secs_f64(x)),
        _ => Err(format!("{s:?}: expected seconds from 0.05 to 3600")),
    }
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// `auto` or `off` (`--passthrough`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AutoOff {
    Auto,
    Off,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Args, Debug, Clone, Default)]
pub struct MountArgs {
    /// The directory tree to serve.
    pub storage: PathBuf,
    /// Where to mount it.
    pub mountpoint: PathBuf,
    /// FUSE worker threads (default: CPUs, at least 2; with 1, host-view renames and
    /// unlinks can wait 20 ms for device-view lookups in the same directory).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// Let other users use the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Refuse every modification (EROFS).
    #[arg(long)]
    pub read_only: bool,
    /// error, warn, info, debug or trace (RUST_LOG also works).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Mount options: opt[,opt...] (see README).
    #[arg(short = 'o', action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Detach; return only once the mount is live.
    #[arg(long)]
    pub daemon: bool,
    /// Stay in the foreground (the default for `pagetier mount`).
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// With --daemon: write the daemon's pid to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Clear a stale (dead) FUSE mount at MOUNTPOINT first.
    #[arg(long)]
    pub clear_stale: bool,
    /// Device tier capacity (512MiB, 8G, ...; default 1GiB).
    #[arg(long)]
    pub device_capacity: Option<String>,
    /// Use 2 MiB device pages.
    #[arg(long, value_enum)]
    pub huge_pages: Option<OnOff>,
    /// Serve read-only host-view opens through FUSE passthrough (auto: where the kernel
    /// and privileges allow; the default) or never (off).
    #[arg(long, value_enum)]
    pub passthrough: Option<AutoOff>,
    /// Let a FUSE worker park after its reply while requests come from one caller at a time
    /// and another worker reads (auto, the default; two callers, or a request 2 ms in a
    /// handler, bring it back), or keep every worker reading (off).
    #[arg(long, value_enum)]
    pub worker_parking: Option<AutoOff>,
    /// With passthrough on: a device-view open of a wholly resident file at least this big
    /// is served by the kernel from shared device memory (default 0: any size).
    #[arg(long, value_name = "SIZE")]
    pub device_passthrough_min: Option<String>,
    /// With passthrough on: a device-view open of a file not yet wholly resident and at most
    /// this big prefetches it whole first, then is served by the kernel like a resident one
    /// (default 256K; 0: only files with the `sequential` or `pin` hint; never under `random`).
    #[arg(long, value_name = "SIZE")]
    pub device_open_prefetch: Option<String>,
    /// Every SECS seconds, compare each file that device-view readers hold open through the
    /// kernel (exported to shared device memory) with STORAGE, and update its copy if it
    /// changed: the bound for changes no watcher sees (another node, default 1; 0: never).
    #[arg(long, value_name = "SECS")]
    pub revalidate: Option<String>,
    /// How long the kernel may cache names and attributes: `auto` (default: a day where an
    /// inotify watcher sees every change of a local STORAGE, else 1 s), or whole seconds
    /// (0: not at all).
    #[arg(long, value_name = "SECS|auto")]
    pub cache_timeout: Option<String>,
    /// Largest daemon-served read or write request to ask the kernel for (default 1M; 128K
    /// to 16M, a power of two); `fs.fuse.max_pages_limit` caps it too.
    #[arg(long, value_name = "SIZE")]
    pub max_request: Option<String>,
    /// Name of the control directory.
    #[arg(long)]
    pub control_dir: Option<String>,
    /// Device tier eviction/admission policy: tinylfu (default), lru, s3fifo.
    #[arg(long)]
    pub policy: Option<String>,
    /// Share of the tier that files with the `pin` hint may hold (0 to 1; default 0.5).
    #[arg(long)]
    pub pin_share: Option<f64>,
    /// Largest device-view readahead window (e.g. 32M, the default); 0 or `off` disables
    /// readahead.
    #[arg(long, value_name = "SIZE")]
    pub readahead: Option<String>,
    /// Record device-view page accesses to FILE (CSV: file_id,offset,len).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Serve Prometheus metrics at ADDR (`PORT`, `IP:PORT`, `localhost:PORT`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Allow --metrics-addr to be a non-loopback address.
    #[arg(long)]
    pub metrics_allow_remote: bool,
    /// Log to FILE instead of stderr (reopened on SIGHUP, for logrotate).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Log a summary line at info every SECS seconds (default 60).
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "60"
    )]
    pub log_stats: Option<String>,
    /// On SIGINT/SIGTERM, how long open files may keep the mount before the
    /// connection is aborted (default 5).
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<String>,
}

/// Everything a mount needs, after merging flags and `-o` options.
#[derive(Debug, Clone, PartialEq)]
pub struct MountSettings {
    pub threads: u16,
    pub allow_other: bool,
    pub read_only: bool,
    pub log_level: Option<String>,
    pub device_capacity: u64,
    pub huge_pages: bool,
    /// `--passthrough auto` (true) or `off`.
    pub passthrough: bool,
    /// `--worker-parking auto` (true) or `off`.
    pub worker_parking: bool,
    /// Smallest file whose device-view opens may be passthrough (bytes).
    pub device_passthrough_min: u64,
    /// Largest file a device-view open prefetches whole (bytes).
    pub device_open_prefetch: u64,
    /// Largest daemon-served request asked of the kernel (bytes).
    pub max_request: u32,
    /// Period of the open-file revalidation (None: never).
    pub revalidate: Option<Duration>,
    /// `--cache-timeout` (None: auto, `fs.rs` [`crate::fs::CacheTimeout`]).
    pub cache_timeout: Option<Duration>,
    pub control_dir: String,
    pub clear_stale: bool,
    /// Eviction/admission policy name (checked against the tier's list).
    pub policy: String,
    /// Share of the tier pinned files may hold.
    pub pin_share: f64,
    /// Largest readahead window in bytes (0: off).
    pub readahead: u64,
    /// Generic mount flags passed to the kernel (nosuid, nodev, ...).
    pub kernel_flags: Vec<String>,
    /// Where to serve Prometheus metrics (None: not at all).
    pub metrics_addr: Option<SocketAddr>,
    /// Logs go to this file instead of stderr.
    pub log_file: Option<PathBuf>,
    /// Period of the summary log line (None: no summary).
    pub log_stats: Option<Duration>,
    /// How long a signalled unmount waits for open files before aborting.
    pub drain_timeout: Duration,
}

/// Default `--drain-timeout`.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);
/// Default period of `--log-stats` given without a value.
pub const DEFAULT_LOG_STATS: u64 = 60;

/// Default device tier capacity.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;

/// Standard mount options accepted and ignored (mount(8) and fstab noise).
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "_netdev",
    "nofail",
    "async",
    "relatime",
    "strictatime",
    "lazytime",
    "nolazytime",
    "x-systemd.automount",
];
/// Standard flags passed on to the kernel.
const KERNEL: &[&str] = &[
    "nosuid", "suid", "nodev", "dev", "noexec", "exec", "noatime", "atime", "dirsync", "sync",
];

fn parse_bool_value(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(format!("-o {key}={v}: expected on or off")),
    }
}

fn check_level(l: &str) -> Result<String, String> {
    match l.to_ascii_lowercase().as_str() {
        l @ ("error" | "warn" | "info" | "debug" | "trace" | "off") => Ok(l.to_string()),
        _ => Err(format!(
            "log level {l:?}: expected error, warn, info, debug, trace or off"
        )),
    }
}

fn parse_secs(what: &str, v: &str) -> Result<Duration, String> {
    v.parse::<u64>()
        .ok()
        .filter(|n| (1..=86_400).contains(n))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{what} {v:?}: expected whole seconds from 1 to 86400"))
}

/// Parses a metrics address: `PORT`, `IP:PORT`, `[IPv6]:PORT` or
/// `localhost:PORT`. A bare port binds loopback.
pub fn parse_metrics_addr(v: &str) -> Result<SocketAddr, String> {
    let bad =
        || format!("metrics address {v:?}: expected PORT, IP:PORT, [IPv6]:PORT or localhost:PORT");
    if let Ok(port) = v.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = v.strip_prefix("localhost:") {
        let port = port.parse::<u16>().map_err(|_| bad())?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    v.parse::<SocketAddr>().map_err(|_| bad())
}

fn check_control_dir(name: &str) -> Result<String, String> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 255
    {
        return Err(format!(
            "control dir {name:?}: must be a single file name component"
        ));
    }
    Ok(name.to_string())
}

fn check_policy(name: &str) -> Result<String, String> {
    crate::tier::policy_by_name(name)
        .map(|_| name.to_string())
        .map_err(|_| {
            format!(
                "policy {name:?}: expected one of {}",
                crate::tier::POLICY_NAMES.join(", ")
            )
        })
}

fn check_readahead(v: &str) -> Result<u64, String> {
    if v.trim().eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    let n = crate::size::parse_size(v).map_err(|e| format!("readahead: {e}"))?;
    if n > READAHEAD_LIMIT {
        return Err(format!(
            "readahead {v:?}: at most {} MiB",
            READAHEAD_LIMIT >> 20
        ));
    }
    Ok(n)
}

/// Largest readahead window accepted: what the readahead queue holds (jobs of one extent).
const READAHEAD_LIMIT: u64 = crate::tier::RA_QUEUE_JOBS as u64 * crate::tier::HUGE_PAGE_SIZE;

fn check_pin_share(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|x| (0.0..=1.0).contains(x))
        .ok_or_else(|| format!("pin share {v:?}: expected a fraction from 0 to 1"))
}

/// Default `--device-passthrough-min`: 0, every size. A daemon-served open of a small file
/// costs two read round trips on every open (its bytes, then end of file); its export costs
/// one copy, once.
pub const DEFAULT_DEVICE_PASSTHROUGH_MIN: u64 = 0;

/// Default `--device-open-prefetch`: 256 KiB. A loader reads a small file whole, and an
/// ImageNet JPEG is about 110 KiB; a random reader of a file this small pays at most one
/// 256 KiB storage read for it.
pub const DEFAULT_DEVICE_OPEN_PREFETCH: u64 = 256 * 1024;

/// A size option (`0`, `4096`, `64K`, `1M`, ...).
fn parse_size_value(what: &str, v: &str) -> Result<u64, String> {
    crate::size::parse_size(v).map_err(|e| format!("{what}: {e}"))
}

/// Default `--revalidate` period in seconds.
pub const DEFAULT_REVALIDATE: u64 = 1;

/// `--revalidate`: whole seconds, 0 for never.
fn parse_revalidate(what: &str, v: &str) -> Result<Option<Duration>, String> {
    if v.trim() == "0" {
        return Ok(None);
    }
    parse_secs(what, v).map(Some)
}

/// `--cache-timeout`: `auto` (None) or whole seconds from 0 to 86400.
fn parse_cache_timeout(what: &str, v: &str) -> Result<Option<Duration>, String> {
    match v.trim() {
        "auto" => Ok(None),
        "0" => Ok(Some(Duration::ZERO)),
        n => parse_secs(what, n)
            .map(Some)
            .map_err(|_| format!("{what} {v:?}: expected auto or whole seconds from 0 to 86400")),
    }
}

/// `--max-request`: a power of two from 128 KiB to 16 MiB (fuser's largest request).
fn parse_max_request(what: &str, v: &str) -> Result<u32, String> {
    let n = crate::size::parse_size(v).map_err(|e| format!("{what}: {e}"))?;
    if !(128 << 10..=16 << 20).contains(&n) || !n.is_power_of_two() {
        return Err(format!(
            "{what} {v}: expected a power of two from 128K to 16M"
        ));
    }
    Ok(n as u32)
}

/// Merges `-o` options and flags into settings. `cpus` is the default thread count.
pub fn settings(args: &MountArgs, cpus: usize) -> Result<MountSettings, String> {
    let mut s = MountSettings {
        threads: cpus.clamp(2, 16) as u16,
        allow_other: false,
        read_only: false,
        log_level: None,
        device_capacity: DEFAULT_CAPACITY,
        huge_pages: true,
        passthrough: true,
        worker_parking: true,
        device_passthrough_min: DEFAULT_DEVICE_PASSTHROUGH_MIN,
        device_open_prefetch: DEFAULT_DEVICE_OPEN_PREFETCH,
        max_request: crate::fuse::MAX_IO,
        revalidate: Some(Duration::from_secs(DEFAULT_REVALIDATE)),
        cache_timeout: None,
        control_dir: ".pagetier".to_string(),
        clear_stale: false,
        policy: crate::tier::DEFAULT_POLICY.to_string(),
        pin_share: 0.5,
        readahead: crate::tier::RA_MAX_WINDOW,
        kernel_flags: Vec::new(),
        metrics_addr: None,
        log_file: None,
        log_stats: None,
        drain_timeout: DEFAULT_DRAIN,
    };
    let allow_remote = apply_options(&mut s, &args.options)? || args.metrics_allow_remote;
    apply_flags(&mut s, args)?;
    if let Some(a) = s.metrics_addr
        && !a.ip().is_loopback()
        && !allow_remote
    {
        return Err(format!(
            "metrics address {a} is not a loopback address: the endpoint has no \
             authentication; pass --metrics-allow-remote (-o metrics_allow_remote) to serve it there"
        ));
    }
    Ok(s)
}

/// Applies `-o` options (comma-separated, in order) to `s`; returns whether one was
/// `metrics_allow_remote`.
fn apply_options(s: &mut MountSettings, options: &[String]) -> Result<bool, String> {
    let mut allow_remote = false;
    for opt in options.iter().flat_map(|o| o.split(',')) {
        let opt = opt.trim();
        if opt.is_empty() {
            continue;
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("threads", Some(v)) => {
                s.threads = v
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| format!("-o threads={v}: expected a number from 1 to 256"))?
            }
            ("allow_other", None) => s.allow_other = true,
            ("ro", None) | ("read_only", None) => s.read_only = true,
            ("log_level", Some(v)) => s.log_level = Some(check_level(v)?),
            ("device_capacity", Some(v)) => {
                s.device_capacity = crate::size::parse_capacity(v)
                    .map_err(|e| format!("-o device_capacity: {e}"))?
            }
            ("huge_pages", Some(v)) => s.huge_pages = parse_bool_value(key, v)?,
            ("passthrough", Some("auto")) => s.passthrough = true,
            ("passthrough", Some("off")) => s.passthrough = false,
            ("passthrough", Some(v)) => {
                return Err(format!("-o passthrough={v}: expected auto or off"));
            }
            ("worker_parking", Some("auto")) => s.worker_parking = true,
            ("worker_parking", Some("off")) => s.worker_parking = false,
            ("worker_parking", Some(v)) => {
                return Err(format!("-o worker_parking={v}: expected auto or off"));
            }
            ("max_request", Some(v)) => s.max_request = parse_max_request("-o max_request", v)?,
            ("revalidate", Some(v)) => s.revalidate = parse_revalidate("-o revalidate", v)?,
            ("cache_timeout", Some(v)) => {
                s.cache_timeout = parse_cache_timeout("-o cache_timeout", v)?
            }
            ("device_passthrough_min", Some(v)) => {
                s.device_passthrough_min = parse_size_value("-o device_passthrough_min", v)?
            }
            ("device_open_prefetch", Some(v)) => {
                s.device_open_prefetch = parse_size_value("-o device_open_prefetch", v)?
            }
            ("control_dir", Some(v)) => s.control_dir = check_control_dir(v)?,
            ("clear_stale", None) => s.clear_stale = true,
            ("policy", Some(v)) => s.policy = check_policy(v)?,
            ("pin_share", Some(v)) => s.pin_share = check_pin_share(v)?,
            ("readahead", Some(v)) => s.readahead = check_readahead(v)?,
            ("metrics_addr", Some(v)) => s.metrics_addr = Some(parse_metrics_addr(v)?),
            ("metrics_allow_remote", None) => allow_remote = true,
            ("log_file", Some(v)) if !v.is_empty() => s.log_file = Some(PathBuf::from(v)),
            ("log_stats", None) => {
                s.log_stats = Some(Duration::from_secs(DEFAULT_LOG_STATS));
            }
            ("log_stats", Some(v)) => s.log_stats = Some(parse_secs("-o log_stats", v)?),
            ("drain_timeout", Some(v)) => s.drain_timeout = parse_secs("-o drain_timeout", v)?,
            ("fsname" | "subtype", Some(_)) => {}
            (k, None) if IGNORED.contains(&k) => {}
            (k, None) if KERNEL.contains(&k) => s.kernel_flags.push(k.to_string()),
            (k, Some(_)) if k.starts_with("x-") || k.starts_with("comment") => {}
            _ => return Err(format!("unknown mount option -o {opt}")),
        }
    }
    Ok(allow_remote)
}

/// Applies the command-line flags to `s`: they win over `-o` options.
fn apply_flags(s: &mut MountSettings, args: &MountArgs) -> Result<(), String> {
    if let Some(t) = args.threads {
        s.threads = t;
    }
    s.allow_other |= args.allow_other;
    s.read_only |= args.read_only;
    s.clear_stale |= args.clear_stale;
    if let Some(l) = &args.log_level {
        s.log_level = Some(check_level(l)?);
    }
    if let Some(c) = &args.device_capacity {
        s.device_capacity =
            crate::size::parse_capacity(c).map_err(|e| format!("--device-capacity: {e}"))?;
    }
    if let Some(h) = args.huge_pages {
        s.huge_pages = h == OnOff::On;
    }
    if let Some(p) = args.passthrough {
        s.passthrough = p == AutoOff::Auto;
    }
    if let Some(p) = args.worker_parking {
        s.worker_parking = p == AutoOff::Auto;
    }
    if let Some(r) = &args.revalidate {
        s.revalidate = parse_revalidate("--revalidate", r)?;
    }
    if let Some(c) = &args.cache_timeout {
        s.cache_timeout = parse_cache_timeout("--cache-timeout", c)?;
    }
    if let Some(m) = &args.max_request {
        s.max_request = parse_max_request("--max-request", m)?;
    }
    if let Some(m) = &args.device_passthrough_min {
        s.device_passthrough_min = parse_size_value("--device-passthrough-min", m)?;
    }
    if let Some(m) = &args.device_open_prefetch {
        s.device_open_prefetch = parse_size_value("--device-open-prefetch", m)?;
    }
    if let Some(c) = &args.control_dir {
        s.control_dir = check_control_dir(c)?;
    }
    if let Some(p) = &args.policy {
        s.policy = check_policy(p)?;
    }
    if let Some(p) = args.pin_share {
        s.pin_share = check_pin_share(&p.to_string())?;
    }
    if let Some(r) = &args.readahead {
        s.readahead = check_readahead(r)?;
    }
    if let Some(a) = &args.metrics_addr {
        s.metrics_addr = Some(parse_metrics_addr(a)?);
    }
    if let Some(f) = &args.log_file {
        s.log_file = Some(f.clone());
    }
    if let Some(v) = &args.log_stats {
        s.log_stats = Some(parse_secs("--log-stats", v)?);
    }
    if let Some(v) = &args.drain_timeout {
        s.drain_timeout = parse_secs("--drain-timeout", v)?;
    }
    Ok(())
}

/// Rewrites `pagetier STORAGE MOUNTPOINT -o ...` (what mount.fuse3 runs) into
/// `pagetier mount --daemon STORAGE MOUNTPOINT -o ...`.
pub fn normalize_args(mut argv: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    let cli = Cli::command();
    let is_subcommand = |name: &str| name == "help" || cli.find_subcommand(name).is_some();
    if let Some(first) = argv.get(1) {
        let s = first.to_string_lossy();
        if !s.starts_with('-') && !is_subcommand(&s) {
            let foreground = argv.iter().any(|a| a == "-f" || a == "--foreground");
            argv.insert(1, "mount".into());
            if !foreground {
                argv.insert(2, "--daemon".into());
            }
        }
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(opts: &[&str]) -> MountArgs {
        MountArgs {
            storage: "/s".into(),
            mountpoint: "/m".into(),
            options: opts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let s = settings(&args(&[]), 2).unwrap();
        assert_eq!(s.threads, 2);
        assert!(s.huge_pages && !s.read_only && !s.allow_other);
        assert!(s.passthrough, "passthrough is auto by default");
        assert_eq!(s.max_request, 1 << 20);
        assert_eq!(s.device_capacity, DEFAULT_CAPACITY);
        assert_eq!(s.control_dir, ".pagetier");
    }

    #[test]
    fn o_options_carry_every_setting() {
        let s = settings(
            &args(&[
                "threads=4,allow_other,ro",
                "device_capacity=512MiB,huge_pages=off,control_dir=.ctl,log_level=debug",
                "rw,nosuid,nodev,noatime,defaults",
            ]),
            2,
        )
        .unwrap();
        assert_eq!(s.threads, 4);
        assert!(s.allow_other && s.read_only && !s.huge_pages);
        assert_eq!(s.device_capacity, 512 << 20);
        assert_eq!(s.control_dir, ".ctl");
        assert_eq!(s.log_level.as_deref(), Some("debug"));
        assert_eq!(s.kernel_flags, vec!["nosuid", "nodev", "noatime"]);
    }

    #[test]
    fn request_and_passthrough_sizes_parse_and_bad_ones_are_refused() {
        let s = settings(&args(&["max_request=4M,device_passthrough_min=0"]), 2).unwrap();
        assert_eq!((s.max_request, s.device_passthrough_min), (4 << 20, 0));
        assert_eq!(s.device_open_prefetch, DEFAULT_DEVICE_OPEN_PREFETCH);
        let s = settings(&args(&["device_open_prefetch=1M"]), 2).unwrap();
        assert_eq!(s.device_open_prefetch, 1 << 20);
        assert!(settings(&args(&["device_open_prefetch=-1"]), 2).is_err());
        let mut a = args(&[]);
        a.device_open_prefetch = Some("0".into());
        assert_eq!(settings(&a, 2).unwrap().device_open_prefetch, 0);
        assert_eq!(s.revalidate, Some(Duration::from_secs(1)));
        let s = settings(&args(&["revalidate=0"]), 2).unwrap();
        assert_eq!(s.revalidate, None);
        let s = settings(&args(&["revalidate=7"]), 2).unwrap();
        assert_eq!(s.revalidate, Some(Duration::from_secs(7)));
        assert!(settings(&args(&["revalidate=-1"]), 2).is_err());
        assert!(settings(&args(&["revalidate=1.5"]), 2).is_err());
        assert_eq!(settings(&args(&[]), 2).unwrap().cache_timeout, None);
        let s = settings(&args(&["cache_timeout=0"]), 2).unwrap();
        assert_eq!(s.cache_timeout, Some(Duration::ZERO));
        let s = settings(&args(&["cache_timeout=600"]), 2).unwrap();
        assert_eq!(s.cache_timeout, Some(Duration::from_secs(600)));
        assert_eq!(
            settings(&args(&["cache_timeout=auto"]), 2)
                .unwrap()
                .cache_timeout,
            None
        );
        for bad in [
            "cache_timeout=-1",
            "cache_timeout=1.5",
            "cache_timeout=86401",
        ] {
            assert!(settings(&args(&[bad]), 2).is_err(), "{bad}");
        }
        let mut a = args(&["max_request=4M"]);
        a.max_request = Some("256K".into());
        a.device_passthrough_min = Some("64M".into());
        let s = settings(&a, 2).unwrap();
        assert_eq!(
            (s.max_request, s.device_passthrough_min),
            (256 << 10, 64 << 20)
        );
        for bad in ["3M", "64K", "32M", "0", "x"] {
            let e = settings(&args(&[&format!("max_request={bad}")]), 2).unwrap_err();
            assert!(e.contains("max_request"), "{bad}: {e}");
        }
        assert!(settings(&args(&["device_passthrough_min=-1"]), 2).is_err());
    }

    #[test]
    fn flags_win_over_o_options() {
        let mut a = args(&["threads=4"]);
        a.threads = Some(8);
        assert_eq!(settings(&a, 2).unwrap().threads, 8);
        let mut a = args(&["passthrough=off"]);
        assert!(!settings(&a, 2).unwrap().passthrough);
        a.passthrough = Some(AutoOff::Auto);
        assert!(settings(&a, 2).unwrap().passthrough);
        a = args(&["passthrough=auto"]);
        assert!(settings(&a, 2).unwrap().passthrough);
        a.passthrough = Some(AutoOff::Off);
        assert!(!settings(&a, 2).unwrap().passthrough);
        a = args(&["worker_parking=off"]);
        assert!(!settings(&a, 2).unwrap().worker_parking);
        a.worker_parking = Some(AutoOff::Auto);
        assert!(settings(&a, 2).unwrap().worker_parking);
        assert!(
            settings(&args(&[]), 2).unwrap().worker_parking,
            "auto by default"
        );
    }

    #[test]
    fn bad_options_are_refused_with_a_message() {
        for bad in [
            "bogus",
            "bogus=1",
            "threads=0",
            "threads=abc",
            "huge_pages=maybe",
            "passthrough=on",
            "passthrough",
            "worker_parking=on",
            "worker_parking",
            "device_capacity=12XB",
            "control_dir=a/b",
            "log_level=loud",
            "metrics_addr=nowhere",
            "metrics_addr=0.0.0.0:9464",
            "log_stats=0",
            "log_stats=soon",
            "drain_timeout=-1",
        ] {
            let e = settings(&args(&[bad]), 2).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn operations_settings() {
        let s = settings(&args(&[]), 2).unwrap();
        assert_eq!(s.metrics_addr, None);
        assert_eq!(s.log_stats, None);
        assert_eq!(s.drain_timeout, DEFAULT_DRAIN);
        let s = settings(
            &args(&["metrics_addr=9464,log_stats,log_file=/var/log/p.log,drain_timeout=9"]),
            2,
        )
        .unwrap();
        assert_eq!(s.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(s.log_stats, Some(Duration::from_secs(60)));
        assert_eq!(s.log_file, Some(PathBuf::from("/var/log/p.log")));
        assert_eq!(s.drain_timeout, Duration::from_secs(9));
        let s = settings(&args(&["log_stats=5,metrics_addr=[::1]:1"]), 2).unwrap();
        assert_eq!(s.log_stats, Some(Duration::from_secs(5)));
        assert_eq!(s.metrics_addr, Some("[::1]:1".parse().unwrap()));
    }

    #[test]
    fn metrics_addresses() {
        assert_eq!(
            parse_metrics_addr("localhost:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(parse_metrics_addr("example.com:9").is_err());
        assert!(parse_metrics_addr("1.2.3.4").is_err());
        // Non-loopback only when allowed, by flag or option.
        let mut a = args(&[]);
        a.metrics_addr = Some("0.0.0.0:9464".into());
        assert!(
            settings(&a, 2)
                .unwrap_err()
                .contains("--metrics-allow-remote")
        );
        a.metrics_allow_remote = true;
        assert_eq!(
            settings(&a, 2).unwrap().metrics_addr,
            Some("0.0.0.0:9464".parse().unwrap())
        );
        let b = args(&["metrics_addr=10.0.0.1:9464,metrics_allow_remote"]);
        assert!(settings(&b, 2).is_ok());
    }

    #[test]
    fn log_stats_flag_takes_an_optional_value() {
        let parse = |xs: &[&str]| {
            let mut v = vec!["pagetier", "mount", "/s", "/m"];
            v.extend(xs);
            match Cli::try_parse_from(v).unwrap().command {
                Command::Mount(a) => settings(&a, 2).unwrap().log_stats,
                _ => unreachable!(),
            }
        };
        assert_eq!(parse(&["--log-stats"]), Some(Duration::from_secs(60)));
        assert_eq!(parse(&["--log-stats=7"]), Some(Duration::from_secs(7)));
        assert_eq!(parse(&[]), None);
        // A bare flag before the positionals does not swallow STORAGE.
        let cli = Cli::try_parse_from(["pagetier", "mount", "--log-stats", "/s", "/m"]).unwrap();
        let Command::Mount(a) = cli.command else {
            unreachable!()
        };
        assert_eq!(a.storage, PathBuf::from("/s"));
    }

    #[test]
    fn mount_helper_form_is_rewritten() {
        let v = |xs: &[&str]| {
            xs.iter()
                .map(Into::into)
                .collect::<Vec<std::ffi::OsString>>()
        };
        assert_eq!(
            normalize_args(v(&["pagetier", "/s", "/m", "-o", "ro"])),
            v(&["pagetier", "mount", "--daemon", "/s", "/m", "-o", "ro"])
        );
        assert_eq!(
            normalize_args(v(&["pagetier", "/s", "/m", "-f"])),
            v(&["pagetier", "mount", "/s", "/m", "-f"])
        );
        assert_eq!(
            normalize_args(v(&["pagetier", "stats", "/m"])),
            v(&["pagetier", "stats", "/m"])
        );
    }

    #[test]
    fn policy_and_pin_share_are_checked() {
        let mut a = args(&["policy=lru,pin_share=0.25"]);
        let s = settings(&a, 2).unwrap();
        assert_eq!((s.policy.as_str(), s.pin_share), ("lru", 0.25));
        assert_eq!(
            settings(&args(&[]), 2).unwrap().policy,
            crate::tier::DEFAULT_POLICY
        );
        a.policy = Some("belady".into());
        assert!(settings(&a, 2).unwrap_err().contains("tinylfu"));
        assert!(settings(&args(&["pin_share=1.5"]), 2).is_err());
        assert_eq!(
            settings(&args(&["readahead=8M"]), 2).unwrap().readahead,
            8 << 20
        );
        assert_eq!(settings(&args(&["readahead=off"]), 2).unwrap().readahead, 0);
        assert_eq!(settings(&args(&["readahead=0"]), 2).unwrap().readahead, 0);
        let e = settings(&args(&["readahead=1G"]), 2).unwrap_err();
        assert!(e.contains("at most 64 MiB"), "{e}");
        let e = settings(&args(&["readahead=lots"]), 2).unwrap_err();
        assert!(e.contains("readahead"), "{e}");
        assert!(settings(&args(&["policy=mru"]), 2).is_err());
    }

    #[test]
    fn every_subcommand_is_left_alone() {
        let v = |xs: &[&str]| {
            xs.iter()
                .map(Into::into)
                .collect::<Vec<std::ffi::OsString>>()
        };
        for sub in [
            "simulate",
            "top",
            "stats",
            "prefetch",
            "evict",
            "residency",
            "help",
        ] {
            assert_eq!(normalize_args(v(&["pagetier", sub])), v(&["pagetier", sub]));
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
