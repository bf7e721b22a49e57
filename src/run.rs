//! Mount lifecycle: checks, daemonizing, logging, signals, stale mounts.
//!
//! Invariants: every refusal is a one-line error (never a panic or a hang);
//! `--daemon` returns only after the kernel has the mount live, and its exit
//! status says whether it is; SIGINT/SIGTERM unmount and exit 0: the mount
//! leaves the namespace at once (lazily), requests in flight complete, and
//! files still open after `--drain-timeout` get ENOTCONN (the connection is
//! aborted) rather than keeping the daemon alive; SIGHUP reopens `--log-file`.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use fuser::{Config, MountOption, SessionACL};
use tracing::{info, warn};

use crate::cli::{LogFormat, MountArgs, MountSettings};
use crate::forgets::ForgetQueue;
use crate::fs::{CacheTimeout, FsConfig, Pagetier};
use crate::fuse::FuseAdapter;
use crate::metrics::{Op, RequestMetrics};
use crate::tier::{DeviceTier, TierConfig};
use crate::watch;

/// The `--log-file`: appended to, and reopened by path on SIGHUP (so that
/// logrotate can move it away and signal).
pub struct LogFile {
    path: PathBuf,
    file: RwLock<Arc<fs::File>>,
}

impl LogFile {
    fn open_file(path: &Path) -> std::io::Result<fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
    }

    /// Opens (creates, appends to) `path`.
    pub fn open(path: &Path) -> Result<Arc<LogFile>> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let file =
            Self::open_file(&path).with_context(|| format!("--log-file {}", path.display()))?;
        Ok(Arc::new(LogFile {
            path,
            file: RwLock::new(Arc::new(file)),
        }))
    }

    /// Opens the path anew; lines being written meanwhile go to the old file.
    pub fn reopen(&self) -> std::io::Result<()> {
        let f = Arc::new(Self::open_file(&self.path)?);
        *crate::lock::write(&self.file) = f;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// tracing's handle on a [`LogFile`]: each event writes to the current file.
struct LogSink(Arc<LogFile>);

/// One event's writer: the file current when the event began.
struct LogWriter(Arc<fs::File>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(crate::lock::read(&self.0.file).clone())
    }
}

/// Where and how a mount logs.
#[derive(Debug, Clone, Default)]
pub struct LogConfig {
    pub level: Option<String>,
    pub format: LogFormat,
    /// Log here instead of stderr.
    pub file: Option<PathBuf>,
    /// `--log-stats` is on: its summary lines (target `pagetier::stats`) are
    /// enabled at info whatever the level.
    pub stats: bool,
}

/// Sets up tracing as `cfg` says; returns the log file to reopen on SIGHUP.
pub fn init_logging_with(cfg: &LogConfig) -> Result<Option<Arc<LogFile>>> {
    use tracing_subscriber::EnvFilter;
    let mut filter = match &cfg.level {
        Some(l) => EnvFilter::new(format!("{l},fuser={l}")),
        // fuser warns when the kernel already unmounted on `fusermount3 -u`.
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,fuser::session=error")),
    };
    if cfg.stats
        && let Ok(d) = "pagetier::stats=info".parse()
    {
        filter = filter.add_directive(d);
    }
    let file = cfg.file.as_deref().map(LogFile::open).transpose()?;
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match (&file, cfg.format) {
        (None, LogFormat::Text) => b.with_writer(std::io::stderr).try_init(),
        (None, LogFormat::Json) => b.with_writer(std::io::stderr).json().try_init(),
        (Some(f), LogFormat::Text) => b
            .with_ansi(false)
            .with_writer(LogSink(f.clone()))
            .try_init(),
        (Some(f), LogFormat::Json) => b.with_writer(LogSink(f.clone())).json().try_init(),
    };
    Ok(file)
}

/// Sends panics to the log too: a daemon's stderr is `/dev/null`, and a panicking request
/// handler only shows as fuser's "Reply not sent" warning (the caller gets `EIO`).
fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            %location,
            "panic: {message}"
        );
        default(info);
    }));
}

/// Is `path` (absolute, canonical) a mount point right now?
fn mounted_at(path: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (unescape(left.split_whitespace().nth(4)?) == want)
            .then(|| right.split_whitespace().next().unwrap_or("").to_string())
    })
}

/// Decodes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The FUSE connection number (the minor device number) of the mount at `path`.
fn connection_of(path: &Path) -> Option<u32> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().rev().find_map(|l| {
        let mut f = l.split_whitespace();
        let devno = f.nth(2)?;
        f.next()?;
        (unescape(f.next()?) == want).then_some(())?;
        devno.split_once(':')?.1.parse().ok()
    })
}

/// Absolute form of `p` without resolving a (possibly dead) last component.
fn absolute(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => fs::canonicalize(parent)
            .map(|c| c.join(name))
            .unwrap_or(abs),
        _ => abs,
    }
}

fn lazy_unmount(mnt: &Path) -> Result<()> {
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes())?;
    if rustix::mount::unmount(c.as_c_str(), rustix::mount::UnmountFlags::DETACH).is_ok() {
        return Ok(());
    }
    let st = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mnt)
        .status()
        .context("running fusermount3")?;
    if !st.success() {
        bail!("could not unmount {}", mnt.display());
    }
    Ok(())
}

/// Checks STORAGE and MOUNTPOINT; clears a stale mount when asked.
fn preflight(args: &MountArgs, s: &MountSettings) -> Result<(PathBuf, PathBuf)> {
    let storage = &args.storage;
    let md = fs::metadata(storage).map_err(|e| anyhow!("STORAGE {}: {e}", storage.display()))?;
    if !md.is_dir() {
        bail!("STORAGE {} is not a directory", storage.display());
    }
    let storage = fs::canonicalize(storage)?;
    let mnt = absolute(&args.mountpoint);
    match fs::metadata(&mnt) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            if s.clear_stale {
                warn!("clearing stale mount at {}", mnt.display());
                lazy_unmount(&mnt)?;
            } else {
                bail!(
                    "MOUNTPOINT {} is a stale mount (Transport endpoint is not connected): \
                     a FUSE daemon died without unmounting; run `fusermount3 -uz {}` \
                     or pass --clear-stale",
                    mnt.display(),
                    mnt.display()
                );
            }
        }
        Err(e) => bail!("MOUNTPOINT {}: {e}", mnt.display()),
        Ok(md) if !md.is_dir() => bail!("MOUNTPOINT {} is not a directory", mnt.display()),
        Ok(_) => {}
    }
    if let Some(fstype) = mounted_at(&mnt) {
        bail!(
            "MOUNTPOINT {} is already mounted ({fstype}); unmount it first",
            mnt.display()
        );
    }
    if mnt.starts_with(&storage) && mnt != storage {
        // Serving a tree from inside itself would loop.
        bail!("MOUNTPOINT {} lies inside STORAGE", mnt.display());
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: load the fuse module (modprobe fuse) or install fuse3");
    }
    let ctl = storage.join(&s.control_dir);
    if fs::symlink_metadata(&ctl).is_ok() {
        bail!(
            "STORAGE already holds an entry named {:?}, the control directory's name; \
             pick another with --control-dir NAME",
            s.control_dir
        );
    }
    Ok((storage, mnt))
}

/// Raises the open-file limit to its hard maximum (open files hold descriptors).
fn raise_fd_limit() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(max) = lim.maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
}

/// Forks; the parent waits until the child reports the mount live and exits
/// with its verdict. Returns the write end the child reports on.
fn daemonize() -> Result<OwnedFd> {
    let (rd, wr) = rustix::pipe::pipe().context("pipe")?;
    // SAFETY: called before this process starts any thread (logging and
    // parsing only so far), so the child is a faithful single-threaded copy.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid > 0 {
        drop(wr);
        let mut f = fs::File::from(rd);
        let mut buf = [0u8; 1];
        let ok = matches!(f.read(&mut buf), Ok(1)) && buf[0] == b'1';
        std::process::exit(if ok { 0 } else { 1 });
    }
    drop(rd);
    let _ = rustix::process::setsid();
    Ok(wr)
}

/// Detaches the daemon's stdio once the mount is live.
fn detach_stdio() {
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Aborts the FUSE connection `conn` (fusectl); false if that is impossible.
fn abort_connection(conn: Option<u32>) -> bool {
    conn.is_some_and(|c| fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), "1").is_ok())
}

/// What the stopper thread hears about.
enum Life {
    /// SIGINT or SIGTERM.
    Stop(i32),
    /// The session loop returned.
    Ended,
}

/// The tier and the filesystem core over STORAGE, as the settings say.
fn open_filesystem(args: &MountArgs, s: &MountSettings, storage: &Path) -> Result<Arc<Pagetier>> {
    let tier = Arc::new(
        DeviceTier::with_options(
            TierConfig {
                capacity: s.device_capacity,
                huge_pages: s.huge_pages,
            },
            crate::tier::policy_by_name(&s.policy).map_err(|e| anyhow!("--policy: {e}"))?,
            crate::tier::TierOptions {
                pin_share: s.pin_share,
                readahead_max: s.readahead,
            },
        )
        .map_err(|e| anyhow!("--device-capacity: {e}"))?,
    );
    let root_fd = crate::storage::open_root(storage)
        .with_context(|| format!("opening STORAGE {}", storage.display()))?;
    let storage_local = crate::storage::is_local_fs(storage);
    let fs = Arc::new(
        Pagetier::new(
            FsConfig {
                read_only: s.read_only,
                control_name: OsString::from(&s.control_dir),
                trace: args.trace.clone(),
                passthrough: s.passthrough,
                device_passthrough_min: s.device_passthrough_min,
                device_open_prefetch: s.device_open_prefetch,
                cache_timeout: match s.cache_timeout {
                    Some(d) => CacheTimeout::Fixed(d),
                    None => CacheTimeout::Auto,
                },
                storage_local,
            },
            root_fd,
            tier,
        )
        .map_err(|e| anyhow!("STORAGE {}: {e}", storage.display()))?,
    );
    Ok(fs)
}

/// fuser's session configuration: mount options, who may use the mount, worker threads.
fn fuse_config(s: &MountSettings, storage: &Path) -> Config {
    let mut opts = vec![
        MountOption::FSName(storage.to_string_lossy().into_owned()),
        MountOption::Subtype("pagetier".into()),
        MountOption::DefaultPermissions,
    ];
    if s.read_only {
        opts.push(MountOption::RO);
    }
    for f in &s.kernel_flags {
        opts.push(match f.as_str() {
            "nosuid" => MountOption::NoSuid,
            "suid" => MountOption::Suid,
            "nodev" => MountOption::NoDev,
            "dev" => MountOption::Dev,
            "noexec" => MountOption::NoExec,
            "exec" => MountOption::Exec,
            "noatime" => MountOption::NoAtime,
            "atime" => MountOption::Atime,
            "dirsync" => MountOption::DirSync,
            "sync" => MountOption::Sync,
            other => MountOption::CUSTOM(other.to_string()),
        });
    }
    let mut config = Config::default();
    config.mount_options = opts;
    config.acl = if s.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(s.threads as usize);
    config.clone_fd = true;
    config
}

/// Signals: SIGHUP reopens the log file; SIGINT/SIGTERM go to the stopper as [`Life::Stop`].
fn spawn_signal_thread(
    mut signals: signal_hook::iterator::Signals,
    sig_tx: Sender<Life>,
    log: Option<Arc<LogFile>>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig != signal_hook::consts::SIGHUP {
                    let _ = sig_tx.send(Life::Stop(sig));
                    continue;
                }
                match &log {
                    Some(l) => match l.reopen() {
                        Ok(()) => {
                            info!(file = %l.path().display(), "SIGHUP: reopened the log file")
                        }
                        Err(e) => {
                            warn!(file = %l.path().display(), "SIGHUP: reopening the log file: {e}")
                        }
                    },
                    None => info!("SIGHUP: logs go to stderr; nothing to reopen"),
                }
            }
        })?;
    Ok(())
}

/// The stopper: on the first SIGINT/SIGTERM, unmount lazily (new opens
/// fail, requests in flight complete, open files keep working); once the
/// drain timeout passes or a second signal comes, abort the connection so
/// that whatever still holds files gets ENOTCONN instead of a daemon that
/// never exits. Returns the flag it sets once it has started stopping the mount.
fn spawn_stopper(
    mut unmounter: fuser::SessionUnmounter,
    mnt: PathBuf,
    drain: Duration,
    fs: Arc<Pagetier>,
    conn: Option<u32>,
    life_rx: Receiver<Life>,
) -> Result<Arc<AtomicBool>> {
    let stopping = Arc::new(AtomicBool::new(false));
    let stopping_set = stopping.clone();
    std::thread::Builder::new()
        .name("stopper".into())
        .spawn(move || {
            let sig = match life_rx.recv() {
                Ok(Life::Stop(sig)) => sig,
                Ok(Life::Ended) | Err(_) => return,
            };
            info!(sig, "signal: unmounting");
            stopping_set.store(true, Ordering::SeqCst);
            if unmounter.unmount().is_err() {
                let _ = lazy_unmount(&mnt);
            }
            match life_rx.recv_timeout(drain) {
                Ok(Life::Ended) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Life::Stop(_)) => warn!("second signal: aborting the connection"),
                Err(RecvTimeoutError::Timeout) => warn!(
                    open_handles = fs.stats_document().open_handles,
                    "files still open {} s after the unmount: aborting the connection",
                    drain.as_secs()
                ),
            }
            if abort_connection(conn) {
                match life_rx.recv_timeout(Duration::from_secs(2)) {
                    Ok(Life::Ended) | Err(RecvTimeoutError::Disconnected) => return,
                    _ => {}
                }
            }
            // No fusectl (or it did not help): exiting closes /dev/fuse,
            // which aborts the connection all the same.
            warn!("exiting with files still open: they get ENOTCONN");
            std::process::exit(0);
        })?;
    Ok(stopping)
}

/// Mounts and serves until unmounted or signalled; `log` is the log file to reopen on
/// SIGHUP (from [`init_logging_with`]). A little over 80 lines: the order of its steps is
/// the point (each constraint is commented where it applies), so it reads top to bottom
/// and delegates each step's body.
pub fn mount_with_log(args: MountArgs, s: MountSettings, log: Option<Arc<LogFile>>) -> Result<()> {
    let (storage, mnt) = preflight(&args, &s)?;
    // Bound before forking, so that a taken port is a plain startup error.
    let metrics_listener = match s.metrics_addr {
        Some(a) => Some(crate::metrics::bind(a).map_err(|e| anyhow!("--metrics-addr {a}: {e}"))?),
        None => None,
    };
    let report = if args.daemon && !args.foreground {
        Some(daemonize()?)
    } else {
        None
    };
    // Creation modes arrive with the caller's umask already applied.
    rustix::process::umask(rustix::fs::Mode::empty());
    raise_fd_limit();
    crate::heap::fix_mmap_threshold();
    log_panics();

    let fs = open_filesystem(&args, &s, &storage)?;
    let config = fuse_config(&s, &storage);
    let req_metrics = metrics_listener
        .is_some()
        .then(|| Arc::new(RequestMetrics::new()));
    let workers = Arc::new(crate::workers::Workers::new(
        s.threads.into(),
        s.worker_parking,
    ));
    fs.set_workers(workers.clone());
    let adapter = FuseAdapter {
        fs: fs.clone(),
        metrics: req_metrics.clone(),
        max_io: s.max_request,
        workers: workers.clone(),
        forgets: start_forget_queue(fs.clone(), req_metrics.clone())?,
    };
    // Signal handlers go in before the mount is live: a SIGTERM sent as soon
    // as the mount shows up waits in `signals` instead of killing us.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let mut session = fuser::Session::new(adapter, &mnt, &config)
        .map_err(|e| anyhow!("mounting {}: {e}", mnt.display()))?;
    // Not a stat of MOUNTPOINT: nothing serves the mount until `run` below.
    let conn = connection_of(&mnt);
    info!(storage = %storage.display(), mountpoint = %mnt.display(), "mounted");

    // Before anything is served: device-view replies are cached only once
    // host-view changes can tell the kernel what they make stale there.
    if let Err(e) = fs.connect_kernel(session.notifier()) {
        warn!("device-view entries and attributes will not be cached: {e}");
    }
    let watcher = watch::Watcher::start(&storage, fs.clone());
    if let Err(e) = &watcher {
        warn!("not watching STORAGE for external changes: {e}");
    }
    info!(
        cache_timeout_secs = fs.cache_timeout().as_secs(),
        "the kernel caches names and attributes for {:?} ({})",
        fs.cache_timeout(),
        match s.cache_timeout {
            Some(_) => "--cache-timeout",
            None if fs.cache_timeout() == CacheTimeout::LONG => {
                "auto: local STORAGE, every change watched"
            }
            None => "auto: STORAGE is shared or not every change is watched",
        }
    );

    if let Some(period) = s.revalidate {
        revalidate_every(period, fs.clone())?;
    }
    let json_logs = args.log_format == Some(LogFormat::Json);
    start_telemetry(
        &fs,
        metrics_listener.zip(req_metrics),
        s.log_stats,
        json_logs,
    )?;

    announce_live(args.pid_file.as_deref(), report)?;

    // Signals: SIGHUP reopens the log file; SIGINT/SIGTERM go to the stopper.
    let (life_tx, life_rx) = channel::<Life>();
    let sig_handle = signals.handle();
    spawn_signal_thread(signals, life_tx.clone(), log)?;
    let stopping = spawn_stopper(
        session.unmount_callable(),
        mnt.clone(),
        s.drain_timeout,
        fs.clone(),
        conn,
        life_rx,
    )?;

    // Idle passthrough registrations are closed through it (iomode.rs).
    match std::os::fd::AsFd::as_fd(&session).try_clone_to_owned() {
        Ok(fd) => fs.set_idle_ids(std::sync::Arc::new(crate::fuse::KernelIdleIds::new(fd))),
        Err(e) => warn!(error = %e, "cannot duplicate /dev/fuse: no registration stays idle"),
    }
    // Parked workers poll it for the connection's end (workers.rs).
    match std::os::fd::AsFd::as_fd(&session).try_clone_to_owned() {
        Ok(fd) => workers.watch(fd),
        Err(e) => warn!(error = %e, "cannot watch /dev/fuse: no worker parks"),
    }
    let res = session.run();
    let _ = life_tx.send(Life::Ended);
    fs.flush_trace();
    sig_handle.close();
    if let Ok(w) = watcher {
        w.stop();
    }
    info!("unmounted");
    match res {
        // After our own unmount the kernel may end the connection with ECONNABORTED
        // instead of ENODEV (a file still open at the unmount): that is the stop we asked for.
        Err(e)
            if stopping.load(Ordering::SeqCst) && e.raw_os_error() == Some(libc::ECONNABORTED) =>
        {
            Ok(())
        }
        r => r.map_err(|e| anyhow!("serving {}: {e}", mnt.display())),
    }
}

/// Starts the metrics endpoint (when `--metrics-addr` bound a listener) and the
/// `--log-stats` line (every `log_stats`), each on a thread of its own.
fn start_telemetry(
    fs: &Arc<Pagetier>,
    metrics: Option<(std::net::TcpListener, Arc<RequestMetrics>)>,
    log_stats: Option<Duration>,
    json_logs: bool,
) -> Result<()> {
    if let Some((listener, req)) = metrics {
        crate::metrics::serve(listener, fs.clone(), req)
            .map_err(|e| anyhow!("starting the metrics endpoint: {e}"))?;
    }
    if let Some(period) = log_stats {
        crate::metrics::log_stats_every(period, fs.clone(), json_logs)?;
    }
    Ok(())
}

/// The thread that applies the kernel's batched forgets (`forgets.rs`), timed as `forget`
/// requests when metrics are on.
fn start_forget_queue(
    fs: Arc<Pagetier>,
    metrics: Option<Arc<RequestMetrics>>,
) -> Result<ForgetQueue> {
    ForgetQueue::start(move |ino, n| {
        let _t = metrics.as_deref().map(|m| m.start(Op::Forget, ino));
        fs.forget(ino, n);
    })
    .context("starting the forget thread")
}

/// Every `period`, compares the files that device-view readers hold open through the kernel
/// with STORAGE (`--revalidate`; [`Pagetier::revalidate_kernel_served`]), on a thread of its
/// own for the life of the process.
fn revalidate_every(period: Duration, fs: Arc<Pagetier>) -> Result<()> {
    std::thread::Builder::new()
        .name("revalidate".into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                fs.revalidate_kernel_served();
            }
        })
        .context("starting the revalidation thread")?;
    Ok(())
}

/// The mount is live: writes the pid file, and with `--daemon` tells the waiting parent
/// (through `report`) and lets go of the terminal.
fn announce_live(pid_file: Option<&Path>, report: Option<OwnedFd>) -> Result<()> {
    if let Some(pid_file) = pid_file {
        fs::write(pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file {}", pid_file.display()))?;
    }
    if let Some(wr) = report {
        let mut f = fs::File::from(wr);
        let _ = f.write_all(b"1");
        detach_stdio();
    }
    Ok(())
}
