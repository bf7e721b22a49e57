//! Helpers for the passthrough and CLI mount tests, beside the shared harness
//! in `common/`: running a child under a deadline, guarding mounts made
//! outside [`common::Mounted`], and reading errnos.
//!
//! Nothing here sleeps for synchronisation: every wait polls a condition
//! until a deadline (`common::wait_until`).
#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub use crate::common::force_unmount;
use crate::common::wait_until;

/// What a finished child did.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The exit code; panics (with the output) if a signal ended the child.
    pub fn code(&self) -> i32 {
        match self.status.code() {
            Some(c) => c,
            None => panic!("child was killed by a signal: {self:?}"),
        }
    }
}

/// Runs `cmd` with stdin closed and stdout/stderr captured; kills it and
/// panics if it has not exited within `deadline` (a hang is a failure).
///
/// Output goes to anonymous temp files, not pipes, so that a daemon that
/// forks and keeps the inherited descriptors cannot make the read hang.
pub fn run_deadline(cmd: &mut Command, deadline: Duration) -> Finished {
    let what = format!("{cmd:?}");
    let out = tempfile::tempfile().expect("temp file");
    let err = tempfile::tempfile().expect("temp file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let exited = wait_until(deadline, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{what} did not exit within {deadline:?} (hang); stderr so far:\n{}",
            read_all(err)
        );
    }
    let status = child.wait().expect("wait child");
    Finished {
        status,
        stdout: read_all(out),
        stderr: read_all(err),
    }
}

fn read_all(mut f: fs::File) -> String {
    use std::io::Seek;
    let mut s = Vec::new();
    let _ = f.seek(io::SeekFrom::Start(0));
    let _ = f.read_to_end(&mut s);
    String::from_utf8_lossy(&s).into_owned()
}

/// Waits (with a deadline) for `child` to exit and returns its exit code;
/// kills it and panics on a hang.
pub fn wait_child(child: &mut Child, deadline: Duration) -> Option<i32> {
    let exited = wait_until(deadline, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("process {} did not exit within {deadline:?}", child.id());
    }
    child.wait().expect("wait").code()
}

/// Is process `pid` still alive (and not a zombie)?
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after the parenthesised comm) is the state; Z = zombie.
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Owns a mount made outside the harness (a `--daemon` mount, one made by
/// `mount -t fuse.pagetier`, ...): on drop it unmounts it, waits for the
/// daemon (if its pid is known) to exit and kills it if it does not.
pub struct MountGuard {
    pub mnt: PathBuf,
    pub pid: Option<u32>,
    pub child: Option<Child>,
}

impl MountGuard {
    pub fn new(mnt: &Path) -> Self {
        MountGuard {
            mnt: mnt.to_path_buf(),
            pid: None,
            child: None,
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let found = find_daemon_pids(&self.mnt);
        force_unmount(&self.mnt);
        if let Some(mut c) = self.child.take() {
            if !wait_until(Duration::from_secs(10), || {
                matches!(c.try_wait(), Ok(Some(_)))
            }) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        // Also daemons the test never learnt the pid of (it failed first).
        let mut pids = found;
        pids.extend(find_daemon_pids(&self.mnt));
        pids.extend(self.pid);
        if !wait_until(Duration::from_secs(10), || {
            pids.iter().all(|&p| !pid_alive(p))
        }) {
            for &pid in &pids {
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
        // A killed daemon leaves a dead mount behind.
        force_unmount(&self.mnt);
    }
}

/// The raw errno of a failed std call; panics (naming `what`) if it succeeded.
pub fn errno_of<T: std::fmt::Debug>(what: &str, r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: not an OS error: {e}")),
    }
}

/// The errno of a failed rustix call; panics (naming `what`) if it succeeded.
pub fn rerrno_of<T: std::fmt::Debug>(what: &str, r: rustix::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e.raw_os_error(),
    }
}

/// Names an errno for assertion messages.
pub fn errname(errno: i32) -> String {
    format!("{} ({errno})", io::Error::from_raw_os_error(errno))
}

/// Asserts that `got` is `want`, naming both errnos.
#[track_caller]
pub fn assert_errno(what: &str, got: i32, want: i32) {
    assert_eq!(
        got,
        want,
        "{what}: got {}, want {}",
        errname(got),
        errname(want)
    );
}

/// A deterministic byte pattern (period 251, so page-aligned copies differ).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// Makes `dir` (a tempdir, 0700 by default) traversable by other users.
pub fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
}

/// The uid/gid tests use as "another user".
pub const NOBODY: u32 = 65534;

/// Runs `sh -c script sh args...` as uid/gid [`NOBODY`] under a deadline.
pub fn sh_as_nobody(script: &str, args: &[&Path]) -> Finished {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .env("LC_ALL", "C");
    run_deadline(&mut cmd, Duration::from_secs(30))
}

/// Is the calling process root?
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The pids of running `pagetier` processes whose command line names `mnt`
/// (for daemons the test did not spawn directly: `--daemon`, mount helpers).
pub fn find_daemon_pids(mnt: &Path) -> Vec<u32> {
    let want = mnt.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            if pid == me || !pid_alive(pid) {
                return None;
            }
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_pagetier = args.first().is_some_and(|a0| a0.ends_with(b"pagetier"));
            (is_pagetier && args.contains(&want)).then_some(pid)
        })
        .collect()
}

/// The first of [`find_daemon_pids`].
pub fn find_daemon_pid(mnt: &Path) -> Option<u32> {
    find_daemon_pids(mnt).first().copied()
}

/// Fails a test instead of letting it hang on a daemon that stopped
/// answering: if still armed after `limit`, it force-unmounts `mnt`
/// (`umount -f` aborts the FUSE connection, so every blocked syscall returns
/// ENOTCONN and the test fails with that). Disarmed on drop.
pub struct Watchdog {
    disarm: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn arm(mnt: &Path, limit: Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mnt = mnt.to_path_buf();
        let thread = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!(
                    "watchdog: test still blocked after {limit:?}; aborting the FUSE \
                     connection of {} (umount -f)",
                    mnt.display()
                );
                let _ = Command::new("umount")
                    .arg("-f")
                    .arg(&mnt)
                    .stderr(Stdio::null())
                    .status();
            }
        });
        Watchdog {
            disarm: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A harness mount with a [`Watchdog`] (field order: the watchdog is
/// disarmed before the mount is torn down).
pub struct Guarded {
    _watchdog: Watchdog,
    pub m: crate::common::Mounted,
}

/// How long one mount test may run before the watchdog aborts its mount.
pub const TEST_LIMIT: Duration = Duration::from_secs(240);

impl Guarded {
    pub fn new(m: crate::common::Mounted) -> Self {
        Guarded {
            _watchdog: Watchdog::arm(&m.mnt, TEST_LIMIT),
            m,
        }
    }
}

impl std::ops::Deref for Guarded {
    type Target = crate::common::Mounted;
    fn deref(&self) -> &Self::Target {
        &self.m
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.m
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:port: (status line, body).
pub fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The value of the sample `series` (name plus labels, as printed).
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
