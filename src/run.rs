//! Mount lifecycle: checks, daemonizing, signals, stale mounts.
//!
//! Invariants: every refusal is a one-line error (never a panic or a hang);
//! `--daemon` returns only after the kernel has the mount live, and its exit
//! status says whether it is; SIGINT/SIGTERM unmount and exit 0.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use fuser::{Config, MountOption, SessionACL};
use tracing::{info, warn};

use crate::cli::{LogFormat, MountArgs, MountSettings};
use crate::fs::{FsConfig, Pagetier};
use crate::fuse::FuseAdapter;
use crate::tier::{DeviceTier, TierConfig};
use crate::watch;

/// Sets up tracing: quiet by default, `--log-level` or RUST_LOG to change.
pub fn init_logging(level: Option<&str>, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(format!("{l},fuser={l}")),
        // fuser warns when the kernel already unmounted on `fusermount3 -u`.
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,fuser::session=error")),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
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

/// Raises the open-file limit to its hard maximum (one fd per live inode).
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

/// Mounts and serves until unmounted or signalled.
pub fn mount(args: MountArgs, s: MountSettings) -> Result<()> {
    let (storage, mnt) = preflight(&args, &s)?;
    let report = if args.daemon && !args.foreground {
        Some(daemonize()?)
    } else {
        None
    };
    // Creation modes arrive with the caller's umask already applied.
    rustix::process::umask(rustix::fs::Mode::empty());
    raise_fd_limit();

    let tier = Arc::new(
        DeviceTier::new(TierConfig {
            capacity: s.device_capacity,
            huge_pages: s.huge_pages,
        })
        .map_err(|e| anyhow!("--device-capacity: {e}"))?,
    );
    let root_fd = crate::storage::open_root(&storage)
        .with_context(|| format!("opening STORAGE {}", storage.display()))?;
    let fs = Arc::new(
        Pagetier::new(
            FsConfig {
                read_only: s.read_only,
                control_name: OsString::from(&s.control_dir),
                trace: args.trace.clone(),
            },
            root_fd,
            tier,
        )
        .map_err(|e| anyhow!("STORAGE {}: {e}", storage.display()))?,
    );

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

    let adapter = FuseAdapter { fs: fs.clone() };
    let mut session = fuser::Session::new(adapter, &mnt, &config)
        .map_err(|e| anyhow!("mounting {}: {e}", mnt.display()))?;
    // Not a stat of MOUNTPOINT: nothing serves the mount until `run` below.
    let conn = connection_of(&mnt);
    info!(storage = %storage.display(), mountpoint = %mnt.display(), "mounted");

    let watcher = watch::Watcher::start(&storage, fs.clone(), session.notifier());
    if let Err(e) = &watcher {
        warn!("not watching STORAGE for external changes: {e}");
    }

    if let Some(pid_file) = &args.pid_file {
        fs::write(pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file {}", pid_file.display()))?;
    }
    if let Some(wr) = report {
        let mut f = fs::File::from(wr);
        let _ = f.write_all(b"1");
        detach_stdio();
    }

    // Signals: SIGINT/SIGTERM unmount (lazily, aborting the connection if
    // files are still busy), which ends the session loop below.
    let mut unmounter = session.unmount_callable();
    let mnt_sig = mnt.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let sig_handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    info!("SIGHUP: logs go to stderr; nothing to reopen");
                    continue;
                }
                info!(sig, "signal: unmounting");
                if unmounter.unmount().is_err() {
                    let _ = lazy_unmount(&mnt_sig);
                    if let Some(c) = conn {
                        let _ = fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), "1");
                    }
                }
                break;
            }
        })?;

    let res = session.run();
    fs.flush_trace();
    sig_handle.close();
    if let Ok(w) = watcher {
        w.stop();
    }
    info!("unmounted");
    res.map_err(|e| anyhow!("serving {}: {e}", mnt.display()))
}
