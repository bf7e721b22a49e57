//! Shared harness for mount-level tests.
//!
//! Each [`Mounted`] owns a fresh temp STORAGE and MOUNTPOINT, starts the real
//! `pagetier` binary in the foreground, waits (with a deadline) until the
//! kernel lists the mount, and on drop always unmounts and reaps the daemon —
//! also when the test panics. Nothing here sleeps for synchronisation: every
//! wait polls a condition until a deadline.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The daemon binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pagetier")
}

/// Polls `cond` every few milliseconds until it holds or `deadline` passes.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Is `path` a mount point of a FUSE filesystem right now (per /proc/self/mountinfo)?
pub fn is_fuse_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let mut parts = l.split(" - ");
        let left = parts.next().unwrap_or("");
        let right = parts.next().unwrap_or("");
        left.split_whitespace().nth(4) == Some(&*want) && right.starts_with("fuse")
    })
}

/// Unmounts `mnt` if a FUSE filesystem is mounted there: `fusermount3 -u`,
/// then a lazy `umount -l` if that did not do it (a busy or dead mount).
pub fn force_unmount(mnt: &Path) {
    if is_fuse_mounted(mnt) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
    }
    if is_fuse_mounted(mnt) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
    }
}

/// A live pagetier mount over a temp STORAGE directory.
pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub storage: PathBuf,
    pub mnt: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Mounted {
    /// Mounts an empty STORAGE with default options.
    pub fn new() -> Self {
        Self::with(&[], |_| {})
    }

    /// Mounts with extra command-line options; `prepare` fills STORAGE first.
    pub fn with(opts: &[&str], prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pagetier-test-")
            .tempdir()
            .expect("tempdir");
        let storage = dir.path().join("storage");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&storage).unwrap();
        fs::create_dir(&mnt).unwrap();
        prepare(&storage);
        let mut m = Mounted {
            log: dir.path().join("daemon.log"),
            dir,
            storage,
            mnt,
            child: None,
        };
        m.start(opts);
        m
    }

    /// Starts the daemon on this STORAGE/MOUNTPOINT and waits for the mount. The
    /// environment's `PAGETIER_TEST_PASSTHROUGH` (`auto` or `off`) picks `--passthrough` for
    /// every mount whose test does not choose it itself, so that CI runs the suites both ways.
    pub fn start(&mut self, opts: &[&str]) {
        let log = fs::File::create(&self.log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("mount")
            .arg(&self.storage)
            .arg(&self.mnt)
            .args(opts);
        if let Some(mode) = std::env::var_os("PAGETIER_TEST_PASSTHROUGH")
            && !opts
                .iter()
                .any(|o| o.starts_with("--passthrough") || o.contains("passthrough="))
        {
            cmd.arg("--passthrough").arg(mode);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "pagetier=info");
        }
        let mut child = cmd.spawn().expect("spawn pagetier");
        let mnt = self.mnt.clone();
        // Listed and answering: a stale mount the daemon is asked to clear is listed too,
        // but fails with ENOTCONN until the new one replaces it. statfs always asks the
        // daemon (a stat could be answered from cached attributes, and would cache them).
        let live = |mnt: &Path| is_fuse_mounted(mnt) && rustix::fs::statfs(mnt).is_ok();
        let ok = wait_until(Duration::from_secs(20), || {
            live(&mnt) || matches!(child.try_wait(), Ok(Some(_)))
        });
        if !ok || !live(&self.mnt) {
            // Whether the daemon had exited (and how), or is still running, tells a
            // failed mount from a slow one.
            let status = child.try_wait();
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pagetier did not mount {} within the deadline (daemon: {status:?}, \
                 listed: {}); log:\n{}",
                self.mnt.display(),
                is_fuse_mounted(&self.mnt),
                self.log_text()
            );
        }
        self.child = Some(child);
    }

    /// The device view root: `MOUNTPOINT/.pagetier/device`.
    pub fn device(&self) -> PathBuf {
        self.mnt.join(".pagetier/device")
    }

    /// `MOUNTPOINT/.pagetier/stats` parsed as JSON.
    pub fn stats(&self) -> pagetier::StatsDocument {
        let bytes = fs::read(self.mnt.join(".pagetier/stats")).expect("read stats");
        pagetier::StatsDocument::parse(&bytes).expect("stats is a stats document")
    }

    /// A path in the host view.
    pub fn host(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The same path in STORAGE, for comparing what the mount did.
    pub fn backing(&self, rel: &str) -> PathBuf {
        self.storage.join(rel)
    }

    /// The daemon's pid, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// What the daemon has logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts and waits for the daemon to exit; returns its exit status code.
    pub fn unmount(&mut self) -> Option<i32> {
        force_unmount(&self.mnt);
        let mut child = self.child.take()?;
        let exited = wait_until(Duration::from_secs(20), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
        }
        child.wait().ok().and_then(|s| s.code())
    }

    /// Takes the daemon process out of the harness's hands (for signal tests).
    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let status = self.unmount();
        // A test that killed the daemon may leave a dead mount behind.
        force_unmount(&self.mnt);
        // A failing test's mount directory goes with it: keep what the daemon said.
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- daemon log (last {} lines; exit status {status:?}) ---",
                tail.len()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
