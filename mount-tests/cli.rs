//! The `pagetier` command line: bad input and bad state give a clear error and
//! a non-zero exit (never a panic or a hang: every child runs under a
//! deadline), and the mount lifecycle (signals, fusermount3 -u, --daemon,
//! stale mounts, the mount.fuse3 forms) behaves as docs/INTERFACE.md says.

mod common;
mod util;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Mounted, bin, is_fuse_mounted, wait_until};
use rustix::process::{Pid, Signal, kill_process};
use util::{Finished, MountGuard, errno_of, run_deadline};

const DEADLINE: Duration = Duration::from_secs(30);

/// A STORAGE (holding `hello`) and an empty MOUNTPOINT in a fresh temp dir.
struct Dirs {
    tmp: tempfile::TempDir,
    storage: PathBuf,
    mnt: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::Builder::new()
        .prefix("pagetier-cli-")
        .tempdir()
        .unwrap();
    let storage = tmp.path().join("storage");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&storage).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(storage.join("hello"), b"hi").unwrap();
    Dirs { tmp, storage, mnt }
}

/// Runs `pagetier ARGS...` under the deadline.
fn pagetier<S: AsRef<OsStr>>(args: &[S]) -> Finished {
    let mut cmd = Command::new(bin());
    cmd.args(args).env("RUST_LOG", "warn");
    run_deadline(&mut cmd, DEADLINE)
}

/// `pagetier mount STORAGE MNT EXTRA...` under the deadline, with a guard
/// that unmounts whatever a wrongly successful run left mounted.
fn mount_expecting_failure(d: &Dirs, extra: &[&str]) -> Finished {
    let _guard = MountGuard::new(&d.mnt);
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("mount"),
        d.storage.as_os_str(),
        d.mnt.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let out = pagetier(&args);
    assert!(
        !is_fuse_mounted(&d.mnt),
        "pagetier mount {extra:?} left a mount behind: {out:?}"
    );
    out
}

/// A failed run: non-zero exit, no panic, an error message naming each of
/// `mentions` (case-insensitively).
#[track_caller]
fn assert_fails_cleanly(out: &Finished, mentions: &[&str]) {
    assert_ne!(out.code(), 0, "expected a non-zero exit: {out:?}");
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"),
        "panicked instead of reporting an error:\n{}",
        out.stderr
    );
    let lower = out.stderr.to_lowercase();
    assert!(
        lower.contains("error"),
        "no error message on stderr: {out:?}"
    );
    for m in mentions {
        assert!(
            lower.contains(&m.to_lowercase()),
            "error message does not mention {m:?}:\n{}",
            out.stderr
        );
    }
}

/// As [`assert_fails_cleanly`], and one `pagetier: error: ...` line names
/// every one of `mentions` (the documented form for bad state).
#[track_caller]
fn assert_one_line_error(out: &Finished, mentions: &[&str]) {
    assert_fails_cleanly(out, &[]);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("pagetier: error:"))
        .unwrap_or_else(|| panic!("no `pagetier: error:` line on stderr:\n{}", out.stderr));
    for m in mentions {
        assert!(
            line.to_lowercase().contains(&m.to_lowercase()),
            "error line does not mention {m:?}: {line}"
        );
    }
}

// ---------------------------------------------------------------------------
// Bad state

#[test]
fn storage_missing() {
    let d = dirs();
    let missing = d.tmp.path().join("no-such-storage");
    let _g = MountGuard::new(&d.mnt);
    let out = pagetier(&[OsStr::new("mount"), missing.as_os_str(), d.mnt.as_os_str()]);
    assert_one_line_error(&out, &["no-such-storage"]);
    assert!(!is_fuse_mounted(&d.mnt));
}

#[test]
fn storage_not_a_directory() {
    let d = dirs();
    let file = d.tmp.path().join("storage-file");
    fs::write(&file, b"x").unwrap();
    let _g = MountGuard::new(&d.mnt);
    let out = pagetier(&[OsStr::new("mount"), file.as_os_str(), d.mnt.as_os_str()]);
    assert_one_line_error(&out, &["storage-file"]);
    assert!(!is_fuse_mounted(&d.mnt));
}

#[test]
fn mountpoint_missing() {
    let d = dirs();
    let missing = d.tmp.path().join("no-such-mnt");
    let _g = MountGuard::new(&missing);
    let out = pagetier(&[
        OsStr::new("mount"),
        d.storage.as_os_str(),
        missing.as_os_str(),
    ]);
    assert_one_line_error(&out, &["no-such-mnt"]);
    assert!(!missing.exists(), "the mountpoint was created");
}

#[test]
fn mountpoint_not_a_directory() {
    let d = dirs();
    let file = d.tmp.path().join("mnt-file");
    fs::write(&file, b"x").unwrap();
    let _g = MountGuard::new(&file);
    let out = pagetier(&[OsStr::new("mount"), d.storage.as_os_str(), file.as_os_str()]);
    assert_one_line_error(&out, &["mnt-file"]);
    assert!(!is_fuse_mounted(&file));
    assert_eq!(fs::read(&file).unwrap(), b"x");
}

#[test]
fn mountpoint_already_mounted() {
    let m = mounted_with(&[], |s| fs::write(s.join("hello"), b"hi").unwrap());
    let pid = m.pid().unwrap();
    let out = pagetier(&[
        OsStr::new("mount"),
        m.storage.as_os_str(),
        m.mnt.as_os_str(),
    ]);
    assert_one_line_error(&out, &["mount"]);
    // The first mount is untouched and still serves.
    assert!(util::pid_alive(pid), "the first daemon died");
    assert_eq!(fs::read(m.host("hello")).unwrap(), b"hi");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let n = mounts
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some(&*m.mnt.to_string_lossy()))
        .count();
    assert_eq!(n, 1, "mounted twice at the same place");
}

// ---------------------------------------------------------------------------
// Bad input

#[test]
fn unknown_option() {
    let d = dirs();
    let out = mount_expecting_failure(&d, &["--frobnicate"]);
    assert_fails_cleanly(&out, &["--frobnicate"]);
}

#[test]
fn threads_zero() {
    let d = dirs();
    let out = mount_expecting_failure(&d, &["--threads", "0"]);
    assert_fails_cleanly(&out, &["threads"]);
}

#[test]
fn threads_not_a_number() {
    let d = dirs();
    let out = mount_expecting_failure(&d, &["--threads", "abc"]);
    assert_fails_cleanly(&out, &["threads", "abc"]);
}

#[test]
fn bogus_mount_option() {
    let d = dirs();
    let out = mount_expecting_failure(&d, &["-o", "bogus=1"]);
    assert_fails_cleanly(&out, &["bogus"]);
}

#[test]
fn device_capacity_bad_suffix() {
    let d = dirs();
    let out = mount_expecting_failure(&d, &["--device-capacity", "12XB"]);
    assert_fails_cleanly(&out, &["12XB"]);
}

#[test]
fn device_capacity_zero() {
    let d = dirs();
    let out = mount_expecting_failure(&d, &["--device-capacity", "0"]);
    assert_fails_cleanly(&out, &["capacity"]);
}

#[test]
fn readahead_too_large() {
    let d = dirs();
    let out = mount_expecting_failure(&d, &["--readahead", "128M"]);
    assert_fails_cleanly(&out, &["readahead", "64 MiB"]);
}

#[test]
fn huge_pages_maybe() {
    let d = dirs();
    let out = mount_expecting_failure(&d, &["--huge-pages", "maybe"]);
    assert_fails_cleanly(&out, &["maybe"]);
}

#[test]
fn bad_values_in_mount_options() {
    let d = dirs();
    for (opt, mention) in [
        ("threads=0", "threads"),
        ("threads=abc", "abc"),
        ("device_capacity=12XB", "12XB"),
        ("device_capacity=0", "capacity"),
        ("huge_pages=maybe", "maybe"),
        ("log_level=loud", "loud"),
        ("threads=2,nosuchopt", "nosuchopt"),
        ("readahead=1G", "at most 64 MiB"),
        ("readahead=lots", "readahead"),
    ] {
        let out = mount_expecting_failure(&d, &["-o", opt]);
        assert_fails_cleanly(&out, &[mention]);
    }
}

#[test]
fn missing_arguments() {
    let out = pagetier(&["mount"]);
    assert_fails_cleanly(&out, &[]);
    let out = pagetier::<&str>(&[]);
    assert_ne!(out.code(), 0, "no arguments at all: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// Lifecycle

fn signal_unmounts_and_exits_zero(sig: Signal) {
    let mut m = mounted_with(&[], |s| fs::write(s.join("hello"), b"hi").unwrap());
    assert_eq!(fs::read(m.host("hello")).unwrap(), b"hi");
    let mut child = m.take_child().expect("daemon");
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    kill_process(pid, sig).unwrap();
    assert!(
        wait_until(DEADLINE, || !is_fuse_mounted(&m.mnt)),
        "still mounted after {sig:?}; log:\n{}",
        m.log_text()
    );
    let code = util::wait_child(&mut child, DEADLINE);
    assert_eq!(code, Some(0), "exit after {sig:?}; log:\n{}", m.log_text());
    assert!(
        !m.log_text().contains("panicked"),
        "panic in log:\n{}",
        m.log_text()
    );
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    signal_unmounts_and_exits_zero(Signal::TERM);
}

#[test]
fn sigint_unmounts_and_exits_zero() {
    signal_unmounts_and_exits_zero(Signal::INT);
}

/// SIGTERM while files are open: the mount leaves the namespace at once
/// (a lazy unmount), and the daemon exits 0 once the last of them is closed.
#[test]
fn sigterm_with_a_busy_mount_still_unmounts() {
    let mut m = mounted_with(&[], |s| fs::write(s.join("hello"), b"hi").unwrap());
    let held = fs::File::open(m.host("hello")).unwrap();
    let dir_held = fs::File::open(&m.mnt).unwrap();
    let mut child = m.take_child().expect("daemon");
    kill_process(Pid::from_raw(child.id() as i32).unwrap(), Signal::TERM).unwrap();
    assert!(
        wait_until(DEADLINE, || !is_fuse_mounted(&m.mnt)),
        "still mounted after SIGTERM with open files; log:\n{}",
        m.log_text()
    );
    drop((held, dir_held));
    let code = util::wait_child(&mut child, DEADLINE);
    assert_eq!(code, Some(0), "log:\n{}", m.log_text());
}

#[test]
fn fusermount_u_makes_the_daemon_exit_zero() {
    let mut m = util::Guarded::new(Mounted::new());
    assert_eq!(m.unmount(), Some(0), "log:\n{}", m.log_text());
    assert!(!is_fuse_mounted(&m.mnt));
}

#[test]
fn daemon_returns_once_live_and_writes_pid_file() {
    let d = dirs();
    let pid_file = d.tmp.path().join("pagetier.pid");
    let mut guard = MountGuard::new(&d.mnt);
    let out = pagetier(&[
        OsStr::new("mount"),
        d.storage.as_os_str(),
        d.mnt.as_os_str(),
        OsStr::new("--daemon"),
        OsStr::new("--pid-file"),
        pid_file.as_os_str(),
    ]);
    // Checked before anything else: the mount must already be live.
    let live = is_fuse_mounted(&d.mnt);
    guard.pid = util::find_daemon_pid(&d.mnt);
    assert_eq!(out.code(), 0, "--daemon: {out:?}");
    assert!(live, "--daemon returned before the mount was live");
    assert_eq!(fs::read(d.mnt.join("hello")).unwrap(), b"hi");
    let text = fs::read_to_string(&pid_file).expect("pid file written");
    let pid: u32 = text.trim().parse().expect("pid file holds a number");
    guard.pid = Some(pid);
    assert!(
        util::pid_alive(pid),
        "pid {pid} from the pid file is not running"
    );
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        exe,
        fs::canonicalize(bin()).unwrap(),
        "the pid file names another program"
    );
    // It serves until unmounted, then exits.
    let st = run_deadline(Command::new("fusermount3").arg("-u").arg(&d.mnt), DEADLINE);
    assert_eq!(st.code(), 0, "fusermount3 -u: {st:?}");
    assert!(
        wait_until(DEADLINE, || !util::pid_alive(pid)),
        "daemon {pid} still running after unmount"
    );
}

#[test]
fn stale_mount_reported_then_cleared_with_clear_stale() {
    stale_mount(&["--clear-stale"]);
}

#[test]
fn stale_mount_cleared_with_o_clear_stale() {
    stale_mount(&["-o", "clear_stale"]);
}

fn stale_mount(clear: &[&str]) {
    let mut m = mounted_with(&[], |s| fs::write(s.join("hello"), b"hi").unwrap());
    let mut child = m.take_child().expect("daemon");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        is_fuse_mounted(&m.mnt),
        "a killed daemon leaves its mount listed"
    );
    util::assert_errno(
        "stat of a dead mount",
        errno_of("stat", fs::metadata(&m.mnt)),
        libc::ENOTCONN,
    );
    let out = pagetier(&[
        OsStr::new("mount"),
        m.storage.as_os_str(),
        m.mnt.as_os_str(),
    ]);
    assert_one_line_error(&out, &["stale", "--clear-stale"]);
    util::assert_errno(
        "a refused mount leaves the dead mount alone",
        errno_of("stat", fs::metadata(&m.mnt)),
        libc::ENOTCONN,
    );
    // The harness's start() waits for a mount that answers (the stale one
    // fails with ENOTCONN); check that it serves STORAGE too.
    m.start(clear);
    assert!(
        wait_until(DEADLINE, || fs::read(m.host("hello")).ok().as_deref()
            == Some(&b"hi"[..])),
        "{clear:?} did not mount a serving filesystem; log:\n{}",
        m.log_text()
    );
    fs::write(m.host("new"), b"n").unwrap();
    assert_eq!(fs::read(m.backing("new")).unwrap(), b"n");
    assert_eq!(m.unmount(), Some(0), "log:\n{}", m.log_text());
    assert!(
        !is_fuse_mounted(&m.mnt),
        "a mount remains after unmounting the new daemon (stale one not cleared)"
    );
}

#[test]
fn o_form_threads_and_ro_mounts_read_only() {
    let m = mounted_with(&["-o", "threads=2,ro"], |s| {
        fs::write(s.join("hello"), b"hi").unwrap()
    });
    assert_eq!(fs::read(m.host("hello")).unwrap(), b"hi");
    util::assert_errno(
        "write to a file",
        errno_of(
            "open",
            fs::OpenOptions::new().write(true).open(m.host("hello")),
        ),
        libc::EROFS,
    );
    util::assert_errno(
        "create",
        errno_of("create", fs::File::create(m.host("new"))),
        libc::EROFS,
    );
    util::assert_errno(
        "mkdir",
        errno_of("mkdir", fs::create_dir(m.host("d"))),
        libc::EROFS,
    );
    assert_eq!(fs::read(m.backing("hello")).unwrap(), b"hi");
    assert!(!m.backing("new").exists());
}

/// The standard options mount(8)/mount.fuse3 and fstab pass along, in the
/// combinations they really produce.
#[test]
fn standard_mount_options_are_accepted() {
    for opts in [
        "rw,noatime,nosuid,threads=2,dev",
        "rw,threads=2,dev,suid",
        "defaults,nofail,_netdev,auto,user",
        "noexec,nodev,relatime,users,noauto",
        "exec,suid,atime",
    ] {
        let m = mounted_with(&["-o", opts], |s| {
            fs::write(s.join("hello"), b"hi").unwrap()
        });
        assert_eq!(fs::read(m.host("hello")).unwrap(), b"hi", "-o {opts}");
    }
}

/// Spawns a mount.fuse3-style command and checks it daemonized with the
/// mount live on return; the guard cleans up.
fn assert_daemonized_mount(d: &Dirs, mut cmd: Command, what: &str) -> MountGuard {
    let mut guard = MountGuard::new(&d.mnt);
    let out = run_deadline(&mut cmd, DEADLINE);
    let live = is_fuse_mounted(&d.mnt);
    guard.pid = util::find_daemon_pid(&d.mnt);
    assert_eq!(out.code(), 0, "{what}: {out:?}");
    assert!(live, "{what} returned before the mount was live");
    assert_eq!(
        fs::read(d.mnt.join("hello")).unwrap(),
        b"hi",
        "{what} serves"
    );
    fs::write(d.mnt.join("written"), b"w").unwrap();
    assert_eq!(fs::read(d.storage.join("written")).unwrap(), b"w");
    assert!(guard.pid.is_some(), "{what}: no daemon process found");
    guard
}

#[test]
fn mount_fuse3_style_without_subcommand_daemonizes() {
    let d = dirs();
    let mut cmd = Command::new(bin());
    cmd.arg(&d.storage).arg(&d.mnt).args(["-o", "threads=2"]);
    let guard = assert_daemonized_mount(&d, cmd, "pagetier S M -o threads=2");
    // What mount.fuse3 adds as root.
    drop(guard);
    let d = dirs();
    let mut cmd = Command::new(bin());
    cmd.arg(&d.storage)
        .arg(&d.mnt)
        .args(["-o", "rw,threads=2,dev,suid"]);
    let _guard = assert_daemonized_mount(&d, cmd, "pagetier S M -o rw,threads=2,dev,suid");
}

fn mount_helper() -> Option<&'static str> {
    ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// A temp dir holding a symlink `pagetier` -> the binary under test, and a
/// PATH with it first.
fn path_with_pagetier() -> (tempfile::TempDir, String) {
    let bindir = tempfile::Builder::new()
        .prefix("pagetier-bin-")
        .tempdir()
        .unwrap();
    symlink(bin(), bindir.path().join("pagetier")).unwrap();
    let path = format!(
        "{}:{}",
        bindir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (bindir, path)
}

#[test]
fn mount_t_fuse_pagetier() {
    let Some(helper) = mount_helper() else {
        eprintln!("skipped: no mount.fuse3");
        return;
    };
    let d = dirs();
    let (_bindir, path) = path_with_pagetier();
    // mount(8) may run its helper with a sanitized PATH, in which case it
    // cannot find `pagetier` in our temp dir: then run the helper the way
    // mount(8) does (`mount.fuse3 SOURCE MNT -t TYPE -o OPTS`) ourselves.
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "fuse.pagetier"])
        .arg(&d.storage)
        .arg(&d.mnt)
        .args(["-o", "threads=2"])
        .env("PATH", &path);
    {
        let mut probe = MountGuard::new(&d.mnt);
        let out = run_deadline(&mut cmd, DEADLINE);
        probe.pid = util::find_daemon_pid(&d.mnt);
        if out.code() == 0 {
            assert!(
                is_fuse_mounted(&d.mnt),
                "mount returned 0 but nothing mounted"
            );
            assert_eq!(fs::read(d.mnt.join("hello")).unwrap(), b"hi");
            return;
        }
        assert!(
            out.stderr.contains("pagetier: not found"),
            "mount -t fuse.pagetier failed: {out:?}"
        );
        eprintln!("mount(8) sanitizes PATH here; running {helper} directly");
    }
    let mut cmd = Command::new(helper);
    cmd.arg(&d.storage)
        .arg(&d.mnt)
        .args(["-t", "fuse.pagetier", "-o", "threads=2"])
        .env("PATH", &path);
    let _guard = assert_daemonized_mount(&d, cmd, "mount.fuse3 -t fuse.pagetier");
}

#[test]
fn mount_t_fuse_with_program_in_source() {
    if mount_helper().is_none() {
        eprintln!("skipped: no mount.fuse3");
        return;
    }
    let d = dirs();
    let mut source = std::ffi::OsString::from(bin());
    source.push("#");
    source.push(&d.storage);
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "fuse"])
        .arg(&source)
        .arg(&d.mnt)
        .args(["-o", "threads=2"]);
    let _guard = assert_daemonized_mount(&d, cmd, "mount -t fuse 'pagetier#STORAGE'");
}

/// `Mounted::with` under a watchdog, so that a daemon that stops answering
/// fails the test instead of hanging it.
fn mounted_with(opts: &[&str], prepare: impl FnOnce(&Path)) -> util::Guarded {
    util::Guarded::new(Mounted::with(opts, prepare))
}
