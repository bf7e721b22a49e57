//! Device-view mount tests: freshness after host and external changes, invalidation
//! counters, refusal of every modification, the control surface (xattrs, control
//! directory, stats, statfs), the host page cache, and concurrent readers and writers.
//!
//! Every test owns its own mount ([`common::Mounted`]), so tests are independent and run
//! in parallel. Nothing sleeps for synchronisation: waits poll with a deadline
//! ([`common::wait_until`]). File contents are pseudo-random with a per-version seed, so a
//! stale page can never pass for a fresh one.
//!
//! Counting note: `docs/INTERFACE.md` defines `hits`/`misses` as one per *device page*
//! touched by a device-view read, where a resident 2 MiB huge page is one device page. The
//! hit-count assertions therefore use device pages (residency `huge_pages + base_pages`) with
//! huge pages on, and 4 KiB pages with `--huge-pages off`.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Mounted, is_fuse_mounted, wait_until};
use pagetier::StatsDocument;
use serde_json::Value;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const PAGE: u64 = 4096;
const HUGE: u64 = 2 * MIB;

/// How long an eventually-true condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

// ----- data ------------------------------------------------------------------------------

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `len` deterministic pseudo-random bytes; different seeds differ (almost) everywhere.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let base = splitmix(seed);
    let mut v = Vec::with_capacity(len + 8);
    let mut i = 0u64;
    while v.len() < len {
        v.extend_from_slice(&splitmix(base ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes());
        i += 1;
    }
    v.truncate(len);
    v
}

/// Compares large buffers without dumping them.
#[track_caller]
fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: got {} bytes, want {} bytes; first difference at byte {first} (page {}, 2 MiB extent {})",
        got.len(),
        want.len(),
        first as u64 / PAGE,
        first as u64 / HUGE,
    );
}

#[track_caller]
fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// `len` bytes at `off` (short at EOF) through a fresh read-only open.
#[track_caller]
fn pread(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let f = File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    pread_fd(&f, off, len)
}

#[track_caller]
fn pread_fd(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("pread at {}: {e}", off + got as u64),
        }
    }
    buf.truncate(got);
    buf
}

#[track_caller]
fn host_write_at(p: &Path, off: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {} for write: {e}", p.display()));
    f.write_all_at(data, off)
        .unwrap_or_else(|e| panic!("write {} at {off}: {e}", p.display()));
}

/// Writes `model[off..off+data.len()] = data`, growing `model` with zeros as a file would.
fn model_write(model: &mut Vec<u8>, off: u64, data: &[u8]) {
    let end = off as usize + data.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[off as usize..end].copy_from_slice(data);
}

// ----- stats and xattrs ------------------------------------------------------------------

/// Invalidation counter of `cause` (a key of the stats' `invalidations` object).
#[track_caller]
fn inval(s: &StatsDocument, cause: &str) -> u64 {
    s.invalidations_by_cause()
        .into_iter()
        .find(|(c, _)| *c == cause)
        .unwrap_or_else(|| panic!("stats has no invalidations.{cause}: {s}"))
        .1
}

/// Asserts that invalidation counter `key` grew from `s0` to `s1`, showing all counters.
#[track_caller]
/// A host change dropped device pages (`invalidations.KEY` grew) — or, where the file was
/// exported to shared device memory, updated the copy in place for its passthrough readers
/// (`shared.updates` grew, the one thing passthrough promises there) or dropped the idle
/// export (`shared.dropped` grew along with `invalidations.KEY`).
fn assert_inval_grew(s0: &StatsDocument, s1: &StatsDocument, key: &str, what: &str) {
    if s0.shared.files > 0 {
        let updated = s1.shared.updates > s0.shared.updates;
        let dropped = s1.shared.dropped > s0.shared.dropped && inval(s1, key) > inval(s0, key);
        assert!(
            updated || dropped,
            "{what}: the file is exported, yet its copy was neither updated nor dropped: \
             {:?} -> {:?}, invalidations {:?} -> {:?}",
            s0.shared,
            s1.shared,
            s0.invalidations,
            s1.invalidations
        );
        return;
    }
    assert!(
        inval(s1, key) > inval(s0, key),
        "{what}: invalidations.{key} did not grow\n  before {:?}\n  after  {:?}\n  device after {:?}",
        s0.invalidations,
        s1.invalidations,
        s1.device
    );
}

fn get_xattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::getxattr(p, name, &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    rustix::fs::setxattr(p, name, value, rustix::fs::XattrFlags::empty())?;
    Ok(())
}

fn list_xattr(p: &Path) -> io::Result<Vec<String>> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(p, &mut buf[..])?;
    Ok(buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// The parsed `user.pagetier.residency` of `p`.
#[track_caller]
fn residency(p: &Path) -> Value {
    let raw = get_xattr(p, "user.pagetier.residency")
        .unwrap_or_else(|e| panic!("getxattr user.pagetier.residency {}: {e}", p.display()));
    serde_json::from_slice(&raw).unwrap_or_else(|e| {
        panic!(
            "residency of {} is not JSON ({e}): {:?}",
            p.display(),
            String::from_utf8_lossy(&raw)
        )
    })
}

/// `(size, resident_bytes, huge_pages, base_pages)` of a residency document.
#[track_caller]
fn res4(r: &Value) -> (u64, u64, u64, u64) {
    let f = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("residency has no numeric {k}: {r}"))
    };
    (
        f("size"),
        f("resident_bytes"),
        f("huge_pages"),
        f("base_pages"),
    )
}

#[track_caller]
fn prefetch(p: &Path, range: &str) {
    set_xattr(p, "user.pagetier.prefetch", range.as_bytes())
        .unwrap_or_else(|e| panic!("prefetch {range:?} of {}: {e}", p.display()));
}

#[track_caller]
fn evict(p: &Path) {
    set_xattr(p, "user.pagetier.evict", b"1")
        .unwrap_or_else(|e| panic!("evict {}: {e}", p.display()));
}

fn errno(r: &io::Result<()>) -> Option<i32> {
    r.as_ref().err().and_then(|e| e.raw_os_error())
}

fn errno_name(e: i32) -> String {
    rustix::io::Errno::from_raw_os_error(e).to_string()
}

// ----- STORAGE snapshots -----------------------------------------------------------------

/// Everything a refused operation could have changed about one STORAGE entry.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// FNV-1a of the contents (files) or the link target (symlinks).
    digest: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let p = root.join(rel);
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let (kind, digest) = if ft.is_dir() {
            ("dir", 0)
        } else if ft.is_symlink() {
            (
                "symlink",
                fnv(fs::read_link(&p).unwrap().as_os_str().as_bytes()),
            )
        } else if ft.is_file() {
            ("file", fnv(&fs::read(&p).unwrap()))
        } else {
            ("other", 0)
        };
        let mut xattrs: Vec<(String, Vec<u8>)> = list_xattr(&p)
            .unwrap_or_default()
            .into_iter()
            .map(|n| {
                let mut buf = vec![0u8; 64 * 1024];
                let len = rustix::fs::lgetxattr(&p, n.as_str(), &mut buf[..]).unwrap_or(0);
                buf.truncate(len);
                (n, buf)
            })
            .collect();
        xattrs.sort();
        out.insert(
            rel.to_path_buf(),
            Node {
                kind,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                nlink: md.nlink(),
                size: md.size(),
                mtime: (md.mtime(), md.mtime_nsec()),
                ctime: (md.ctime(), md.ctime_nsec()),
                digest,
                xattrs,
            },
        );
        if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                walk(root, &rel.join(n), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

#[track_caller]
fn assert_unchanged(before: &BTreeMap<PathBuf, Node>, after: &BTreeMap<PathBuf, Node>) {
    let mut diffs = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => diffs.push(format!("{} vanished", k.display())),
            Some(a) if a != v => diffs.push(format!(
                "{} changed:\n  before {v:?}\n  after  {a:?}",
                k.display()
            )),
            Some(_) => {}
        }
    }
    for k in after.keys().filter(|k| !before.contains_key(*k)) {
        diffs.push(format!("{} appeared", k.display()));
    }
    assert!(diffs.is_empty(), "STORAGE changed:\n{}", diffs.join("\n"));
}

// ----- refusal checks --------------------------------------------------------------------

/// Collects `(operation, outcome, allowed errnos)` and reports every mismatch at once.
#[derive(Default)]
struct Refusals {
    failures: Vec<String>,
    checked: usize,
}

impl Refusals {
    fn expect(&mut self, what: &str, res: io::Result<()>, allowed: &[i32]) {
        self.checked += 1;
        match errno(&res) {
            Some(e) if allowed.contains(&e) => {}
            _ => self.failures.push(format!(
                "{what}: got {}, want {}",
                match &res {
                    Ok(()) => "success".to_string(),
                    Err(e) => e.to_string(),
                },
                allowed
                    .iter()
                    .map(|&e| errno_name(e))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
        }
    }

    #[track_caller]
    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} refused operations misbehaved:\n{}",
            self.failures.len(),
            self.checked,
            self.failures.join("\n")
        );
    }
}

fn open_with(p: &Path, o: &mut OpenOptions) -> io::Result<()> {
    o.open(p).map(drop)
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn truncate_path(p: &Path, len: i64) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::truncate(c.as_ptr(), len) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `mmap(PROT_READ|PROT_WRITE, MAP_SHARED)` of the first page of `f`.
fn mmap_shared_writable(f: &File) -> io::Result<()> {
    // SAFETY: a fresh mapping at a kernel-chosen address; unmapped below if it succeeds.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `p` is the mapping created above, of exactly this length.
    unsafe { libc::munmap(p, PAGE as usize) };
    Ok(())
}

fn fallocate_fd(f: &File, mode: i32, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs every modifying operation against the paths under `view` (and renames/links
/// between `view` and `other`), expecting `EROFS` (or `EXDEV` across views).
fn refuse_everything(r: &mut Refusals, view: &Path, other: &Path, label: &str) {
    let rofs = &[libc::EROFS][..];
    let cross = &[libc::EROFS, libc::EXDEV][..];
    let a = view.join("a.txt");
    let b = view.join("d/b.txt");
    let d = view.join("d");
    let empty = view.join("emptydir");

    r.expect(
        &format!("{label}: open O_WRONLY"),
        open_with(&a, OpenOptions::new().write(true)),
        rofs,
    );
    r.expect(
        &format!("{label}: open O_RDWR"),
        open_with(&a, OpenOptions::new().read(true).write(true)),
        rofs,
    );
    r.expect(
        &format!("{label}: open O_WRONLY|O_APPEND"),
        open_with(&a, OpenOptions::new().append(true)),
        rofs,
    );
    r.expect(
        &format!("{label}: open O_RDONLY|O_APPEND"),
        open_with(
            &a,
            OpenOptions::new().read(true).custom_flags(libc::O_APPEND),
        ),
        rofs,
    );
    r.expect(
        &format!("{label}: open O_WRONLY|O_TRUNC"),
        open_with(&a, OpenOptions::new().write(true).truncate(true)),
        rofs,
    );
    r.expect(
        &format!("{label}: open O_RDONLY|O_TRUNC"),
        open_with(
            &b,
            OpenOptions::new().read(true).custom_flags(libc::O_TRUNC),
        ),
        rofs,
    );
    r.expect(
        &format!("{label}: create (O_CREAT|O_EXCL)"),
        open_with(
            &view.join("new.txt"),
            OpenOptions::new().write(true).create_new(true),
        ),
        rofs,
    );
    r.expect(
        &format!("{label}: create in subdir"),
        open_with(
            &d.join("new.txt"),
            OpenOptions::new().write(true).create(true),
        ),
        rofs,
    );
    r.expect(
        &format!("{label}: O_CREAT|O_TRUNC of existing"),
        open_with(
            &a,
            OpenOptions::new().write(true).create(true).truncate(true),
        ),
        rofs,
    );
    r.expect(
        &format!("{label}: mkdir"),
        fs::create_dir(view.join("newdir")),
        rofs,
    );
    r.expect(&format!("{label}: rmdir"), fs::remove_dir(&empty), rofs);
    r.expect(&format!("{label}: unlink"), fs::remove_file(&a), rofs);
    r.expect(
        &format!("{label}: rename within"),
        fs::rename(&a, view.join("c.txt")),
        rofs,
    );
    r.expect(
        &format!("{label}: rename over existing within"),
        fs::rename(&a, &b),
        rofs,
    );
    r.expect(
        &format!("{label}: rename dir within"),
        fs::rename(&empty, view.join("emptydir2")),
        rofs,
    );
    r.expect(
        &format!("{label}: renameat2 RENAME_EXCHANGE within"),
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &a,
            rustix::fs::CWD,
            &b,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(io::Error::from),
        rofs,
    );
    r.expect(
        &format!("{label}: rename out of the view"),
        fs::rename(&a, other.join("moved-out.txt")),
        cross,
    );
    r.expect(
        &format!("{label}: rename into the view"),
        fs::rename(other.join("a.txt"), view.join("moved-in.txt")),
        cross,
    );
    r.expect(
        &format!("{label}: rename into the view over existing"),
        fs::rename(other.join("a.txt"), &b),
        cross,
    );
    r.expect(
        &format!("{label}: link within"),
        fs::hard_link(&a, view.join("l.txt")),
        rofs,
    );
    r.expect(
        &format!("{label}: link from the other view into this one"),
        fs::hard_link(other.join("a.txt"), view.join("l2.txt")),
        cross,
    );
    r.expect(
        &format!("{label}: link from this view into the other"),
        fs::hard_link(&a, other.join("l3.txt")),
        cross,
    );
    r.expect(
        &format!("{label}: symlink"),
        std::os::unix::fs::symlink("a.txt", view.join("s")),
        rofs,
    );
    r.expect(
        &format!("{label}: mknod fifo"),
        rustix::fs::mknodat(
            rustix::fs::CWD,
            view.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .map_err(io::Error::from),
        rofs,
    );
    r.expect(
        &format!("{label}: truncate(path) shrink"),
        truncate_path(&a, 1),
        rofs,
    );
    r.expect(
        &format!("{label}: truncate(path) grow"),
        truncate_path(&a, 1 << 20),
        rofs,
    );
    r.expect(
        &format!("{label}: chmod file"),
        rustix::fs::chmod(&a, rustix::fs::Mode::from_raw_mode(0o600)).map_err(io::Error::from),
        rofs,
    );
    r.expect(
        &format!("{label}: chmod dir"),
        rustix::fs::chmod(&d, rustix::fs::Mode::from_raw_mode(0o700)).map_err(io::Error::from),
        rofs,
    );
    r.expect(
        &format!("{label}: chown"),
        std::os::unix::fs::chown(&a, Some(1234), Some(1234)),
        rofs,
    );
    let t = rustix::fs::Timespec {
        tv_sec: 1_000_000,
        tv_nsec: 0,
    };
    r.expect(
        &format!("{label}: utimensat"),
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &a,
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            rustix::fs::AtFlags::empty(),
        )
        .map_err(io::Error::from),
        rofs,
    );
    r.expect(
        &format!("{label}: setxattr user.test (replace)"),
        set_xattr(&a, "user.test", b"changed"),
        rofs,
    );
    r.expect(
        &format!("{label}: setxattr user.other (new)"),
        set_xattr(&b, "user.other", b"x"),
        rofs,
    );
    r.expect(
        &format!("{label}: setxattr on a directory"),
        set_xattr(&d, "user.test", b"x"),
        rofs,
    );
    r.expect(
        &format!("{label}: removexattr user.test"),
        rustix::fs::removexattr(&a, "user.test").map_err(io::Error::from),
        rofs,
    );
    // A read-only fd is all one can get: it must not allow writes either.
    let ro = File::open(&a).expect("read-only open must work");
    r.expect(
        &format!("{label}: fallocate on a read-only fd"),
        fallocate_fd(&ro, 0, 0, 8192),
        &[libc::EBADF],
    );
    r.expect(
        &format!("{label}: mmap PROT_WRITE MAP_SHARED on a read-only fd"),
        mmap_shared_writable(&ro),
        &[libc::EACCES],
    );
    r.expect(
        &format!("{label}: write(2) on a read-only fd"),
        (&ro).write_all(b"x"),
        &[libc::EBADF],
    );
}

/// STORAGE layout used by the refusal tests.
fn refusal_tree(s: &Path) {
    fs::write(s.join("a.txt"), pattern(10_000, 1)).unwrap();
    set_xattr(&s.join("a.txt"), "user.test", b"original").unwrap();
    fs::create_dir(s.join("d")).unwrap();
    fs::write(s.join("d/b.txt"), pattern(3 * MIB as usize, 2)).unwrap();
    fs::create_dir(s.join("emptydir")).unwrap();
    std::os::unix::fs::symlink("a.txt", s.join("link")).unwrap();
}

// ----- processes -------------------------------------------------------------------------

/// A child process (maybe a stray mount) that is always cleaned up.
struct Reaped {
    child: Child,
    mnt: PathBuf,
}

impl Drop for Reaped {
    fn drop(&mut self) {
        common::force_unmount(&self.mnt);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        common::force_unmount(&self.mnt);
    }
}

/// Runs `cmd` to completion within `deadline`; returns (exit code, stdout, stderr).
fn run_with_deadline(mut cmd: Command, deadline: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    // Drain the pipes on threads so a chatty child never blocks.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let done = wait_until(deadline, || matches!(child.try_wait(), Ok(Some(_))));
    if !done {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let (o, e) = (to.join().unwrap(), te.join().unwrap());
    assert!(
        done,
        "{cmd:?} did not finish within {deadline:?}; stderr:\n{e}"
    );
    (status.code(), o, e)
}

// ===== 1. hits and misses ================================================================

/// Reads `rel` twice through the device view; pass 2 must add no misses and at least
/// `min_hits(resident)` hits; both passes must equal STORAGE.
fn two_pass(m: &Mounted, rel: &str, min_hits: impl Fn(&Value) -> u64) {
    let want = read(&m.backing(rel));
    let s0 = m.stats();
    assert_bytes_eq(&read(&m.device().join(rel)), &want, "device pass 1");
    // Readahead may still be filling ahead of where pass 1 stopped: let it land.
    let mut s1 = m.stats();
    wait_until(Duration::from_secs(10), || {
        s1 = m.stats();
        s1.device.huge_pages * 2 * MIB + s1.device.base_pages * 4096 == s1.device.used_bytes
    });
    // Pass 1 faults: on the reader's thread (misses) or ahead of it (readahead).
    let faulted = |s: &StatsDocument| s.device.misses + s.diagnostics.readahead_bytes;
    assert!(
        faulted(&s1) > faulted(&s0),
        "pass 1 of a cold file faulted nothing: misses {} -> {}, readahead {} -> {}",
        s0.device.misses,
        s1.device.misses,
        s0.diagnostics.readahead_bytes,
        s1.diagnostics.readahead_bytes
    );
    let res = residency(&m.device().join(rel));
    let (_, resident, _, _) = res4(&res);
    assert_eq!(
        resident,
        want.len().div_ceil(PAGE as usize) as u64 * PAGE,
        "after pass 1 the whole file should be resident (capacity is ample): {res}"
    );
    assert_bytes_eq(&read(&m.device().join(rel)), &want, "device pass 2");
    let s2 = m.stats();
    assert_eq!(
        s2.device.misses, s1.device.misses,
        "pass 2 faulted (misses grew); hits {} -> {}",
        s1.device.hits, s2.device.hits
    );
    if s2.passthrough.device_opens > s1.passthrough.device_opens {
        // Served by the kernel from shared device memory: the daemon saw no read at all.
        assert!(s2.shared.exports > s1.shared.exports, "{:?}", s2.shared);
        assert_eq!(
            s2.device.reads, s1.device.reads,
            "a passthrough open's reads reached the daemon"
        );
        eprintln!("two_pass {rel}: pass 2 served by the kernel (passthrough)");
        return;
    }
    let need = min_hits(&res);
    assert!(
        s2.device.hits - s1.device.hits >= need,
        "pass 2 hits grew by {} but {need} device pages were read (residency {res})",
        s2.device.hits - s1.device.hits
    );
    eprintln!(
        "two_pass {rel}: pass1 misses +{} hits +{}; pass2 misses +0 hits +{}",
        s1.device.misses - s0.device.misses,
        s1.device.hits - s0.device.hits,
        s2.device.hits - s1.device.hits
    );
}

#[test]
fn second_device_read_is_all_hits() {
    let size = 5 * MIB as usize + 12_345;
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("f.bin"), pattern(size, 11)).unwrap()
    });
    // Each device page (huge or base) is looked up at least once by a full read.
    two_pass(&m, "f.bin", |r| {
        let (_, _, huge, base) = res4(r);
        assert!(
            huge >= 1,
            "a sequential read of 5 MiB from offset 0 faulted no huge page: {r}"
        );
        huge + base
    });
}

#[test]
fn second_device_read_is_all_hits_with_base_pages_only() {
    let size = 3 * MIB as usize + 777;
    let m = Mounted::with(&["--huge-pages", "off"], |s| {
        fs::write(s.join("f.bin"), pattern(size, 12)).unwrap()
    });
    // With base pages only, every 4 KiB page of the file is one lookup.
    two_pass(&m, "f.bin", |r| {
        let (_, _, huge, base) = res4(r);
        assert_eq!(
            huge, 0,
            "--huge-pages off, yet huge pages are resident: {r}"
        );
        base
    });
    assert!(!m.stats().device.huge_pages_enabled);
}

// ===== 2. host writes ====================================================================

#[test]
fn host_write_then_device_read_sees_new_bytes() {
    let size = 4 * MIB as usize + 5000;
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("f.bin"), pattern(size, 21)).unwrap()
    });
    let host = m.host("f.bin");
    let dv = m.device().join("f.bin");
    let mut model = read(&m.backing("f.bin"));

    prefetch(&host, "0-");
    let (_, _, huge, _) = res4(&residency(&dv));
    assert_eq!(
        huge, 2,
        "prefetch 0- of a 4 MiB + tail file: 2 huge pages expected"
    );
    assert_bytes_eq(&read(&dv), &model, "device read before writes");

    // A device reader that stays open across every write.
    let dfd = File::open(&dv).unwrap();
    let writes: [(&str, u64, usize); 6] = [
        ("4 KiB unaligned inside huge page 0", MIB + 100, 4096),
        ("straddling the huge page boundary", HUGE - 5, 10),
        ("one byte at offset 0", 0, 1),
        ("over the tail, extending the file", size as u64 - 3, 100),
        ("at EOF", size as u64 + 97, 3000),
        ("past EOF leaving a hole", size as u64 + MIB, 8000),
    ];
    for (i, (what, off, len)) in writes.into_iter().enumerate() {
        // Make everything resident again so the write has something to invalidate.
        prefetch(&host, "0-");
        assert_bytes_eq(&read(&dv), &model, &format!("before write {i} ({what})"));
        let s0 = m.stats();
        // Pages that existed (and were resident) before the write.
        let resident_end = (model.len() as u64).div_ceil(PAGE) * PAGE;
        let data = pattern(len, 100 + i as u64);
        host_write_at(&host, off, &data);
        let s1 = m.stats();
        if off < resident_end {
            assert_inval_grew(
                &s0,
                &s1,
                "write",
                &format!("write {i} ({what}) over resident pages"),
            );
        }
        model_write(&mut model, off, &data);
        assert_bytes_eq(
            &pread_fd(&dfd, 0, model.len() + HUGE as usize),
            &model,
            &format!("device fd opened before write {i} ({what})"),
        );
        assert_bytes_eq(
            &read(&m.backing("f.bin")),
            &model,
            &format!("STORAGE after write {i} ({what})"),
        );
        assert_bytes_eq(
            &read(&dv),
            &model,
            &format!("device after write {i} ({what})"),
        );
        assert_bytes_eq(
            &pread(&dv, off, len),
            &data,
            &format!("device pread of the written range {i} ({what})"),
        );
        assert_bytes_eq(
            &read(&host),
            &model,
            &format!("host after write {i} ({what})"),
        );
    }

    // An O_APPEND write through the host view.
    prefetch(&host, "0-");
    let _ = read(&dv);
    let data = pattern(6000, 200);
    let mut f = OpenOptions::new().append(true).open(&host).unwrap();
    f.write_all(&data).unwrap();
    drop(f);
    let end = model.len() as u64;
    model_write(&mut model, end, &data);
    assert_bytes_eq(&read(&m.backing("f.bin")), &model, "STORAGE after append");
    assert_bytes_eq(&read(&dv), &model, "device after O_APPEND write");
}

// ===== 3. splits =========================================================================

#[test]
fn small_write_splits_a_resident_huge_page() {
    let size = 8 * MIB as usize;
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("f.bin"), pattern(size, 31)).unwrap()
    });
    let host = m.host("f.bin");
    let dv = m.device().join("f.bin");

    prefetch(&host, "0-");
    let before = res4(&residency(&host));
    assert_eq!(
        before,
        (size as u64, size as u64, 4, 0),
        "(size, resident_bytes, huge_pages, base_pages) after prefetch 0- of 8 MiB"
    );
    let s0 = m.stats();

    let off = HUGE + 2 * PAGE; // page 2 of extent 1
    let data = pattern(PAGE as usize, 32);
    host_write_at(&host, off, &data);

    let after = res4(&residency(&host));
    assert_eq!(
        after,
        (size as u64, size as u64 - PAGE, 3, 511),
        "(size, resident_bytes, huge_pages, base_pages) after a 4 KiB write into huge page 1"
    );
    let s1 = m.stats();
    assert_eq!(s1.device.splits, s0.device.splits + 1, "stats splits");
    assert_eq!(
        s1.invalidations.write,
        s0.invalidations.write + 1,
        "invalidations.write should count the one base page dropped"
    );
    assert_eq!(
        s1.device.used_bytes,
        s0.device.used_bytes - PAGE,
        "used_bytes should drop by exactly the dropped page"
    );

    // The other 511 pages of the extent are served without faulting.
    let want = read(&m.backing("f.bin"));
    let ranges = [(HUGE, 2 * PAGE), (off + PAGE, HUGE - 3 * PAGE)];
    for (a, len) in ranges {
        assert_bytes_eq(
            &pread(&dv, a, len as usize),
            &want[a as usize..(a + len) as usize],
            "surviving pages of the split extent",
        );
    }
    let s2 = m.stats();
    assert_eq!(
        s2.device.misses, s1.device.misses,
        "reading the 511 surviving pages faulted"
    );
    assert!(s2.device.hits - s1.device.hits >= 511);

    // The written page faults once and carries the new bytes.
    assert_bytes_eq(&pread(&dv, off, PAGE as usize), &data, "the written page");
    let s3 = m.stats();
    assert_eq!(
        s3.device.misses,
        s2.device.misses + 1,
        "the written page should be one base-page miss"
    );
    assert_bytes_eq(&read(&dv), &want, "whole file after the split");
}

// ===== 4. invalidation by every kind of host change ======================================

/// Makes `rel` fully resident, reads it once through the device view (so the kernel also
/// holds a dentry and inode for it there), and returns a device fd opened *before* the
/// change under test: reads through it must not be stale either, because the change
/// itself (not a later open) has to drop the pages it covers.
#[track_caller]
fn warm(m: &Mounted, rel: &str) -> File {
    prefetch(&m.host(rel), "0-");
    let want = read(&m.backing(rel));
    assert_bytes_eq(&read(&m.device().join(rel)), &want, "warm-up device read");
    let (_, resident, _, _) = res4(&residency(&m.device().join(rel)));
    assert!(resident > 0, "{rel} should be resident after warm-up");
    File::open(m.device().join(rel)).unwrap()
}

/// Reads `rel` through a device fd opened before the change and compares with STORAGE.
#[track_caller]
fn open_fd_equals_storage(fd: &File, m: &Mounted, rel: &str, what: &str) {
    let want = read(&m.backing(rel));
    let got = pread_fd(fd, 0, want.len() + 2 * HUGE as usize);
    assert_bytes_eq(
        &got,
        &want,
        &format!("{what} (device fd opened before the change)"),
    );
}

#[track_caller]
fn device_equals_storage(m: &Mounted, rel: &str, what: &str) {
    let want = read(&m.backing(rel));
    assert_bytes_eq(&read(&m.device().join(rel)), &want, what);
}

#[test]
fn truncate_shrink_and_grow_leave_no_stale_device_bytes() {
    let size = 6 * MIB as usize;
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("t.bin"), pattern(size, 41)).unwrap();
        fs::write(s.join("o.bin"), pattern(size, 42)).unwrap();
    });
    let host = m.host("t.bin");

    // Shrink to the middle of huge page 1, not page-aligned.
    let fd = warm(&m, "t.bin");
    let s0 = m.stats();
    OpenOptions::new()
        .write(true)
        .open(&host)
        .unwrap()
        .set_len(3 * MIB + 100)
        .unwrap();
    let s1 = m.stats();
    assert_eq!(
        fs::metadata(m.backing("t.bin")).unwrap().len(),
        3 * MIB + 100
    );
    open_fd_equals_storage(&fd, &m, "t.bin", "after shrink");
    assert_inval_grew(&s0, &s1, "truncate", "shrinking a resident file");
    device_equals_storage(&m, "t.bin", "device after shrink");

    // Grow again: the bytes past the old EOF must read as zeros, not old data.
    let fd = warm(&m, "t.bin");
    OpenOptions::new()
        .write(true)
        .open(&host)
        .unwrap()
        .set_len(5 * MIB)
        .unwrap();
    open_fd_equals_storage(&fd, &m, "t.bin", "after grow");
    let got = read(&m.device().join("t.bin"));
    assert_eq!(got.len() as u64, 5 * MIB, "device size after grow");
    assert!(
        got[(3 * MIB + 100) as usize..].iter().all(|&b| b == 0),
        "grown region is not zero through the device view"
    );
    device_equals_storage(&m, "t.bin", "device after grow");

    // Shrink by truncate(path) through the host view.
    let fd = warm(&m, "t.bin");
    let s2 = m.stats();
    truncate_path(&host, 12_345).unwrap();
    let s3 = m.stats();
    open_fd_equals_storage(&fd, &m, "t.bin", "after truncate(path)");
    assert_inval_grew(&s2, &s3, "truncate", "truncate(path) of a resident file");
    device_equals_storage(&m, "t.bin", "device after truncate(path)");

    // O_TRUNC open of another resident file, then a short rewrite.
    let fd = warm(&m, "o.bin");
    let s4 = m.stats();
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.host("o.bin"))
        .unwrap();
    let s5 = m.stats();
    open_fd_equals_storage(&fd, &m, "o.bin", "after O_TRUNC open");
    assert_inval_grew(&s4, &s5, "truncate", "O_TRUNC open of a resident file");
    device_equals_storage(&m, "o.bin", "device after O_TRUNC open");
    assert_eq!(read(&m.device().join("o.bin")).len(), 0);
    f.write_all(&pattern(5000, 43)).unwrap();
    drop(f);
    open_fd_equals_storage(&fd, &m, "o.bin", "after O_TRUNC + rewrite");
    device_equals_storage(&m, "o.bin", "device after O_TRUNC + rewrite");
}

#[test]
fn fallocate_punch_hole_and_zero_range_leave_no_stale_device_bytes() {
    let size = 6 * MIB as usize;
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("f.bin"), pattern(size, 51)).unwrap()
    });
    let host = m.host("f.bin");
    let ops: [(&str, i32, u64, u64); 4] = [
        (
            "punch hole, aligned, inside huge page 0",
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            MIB + PAGE,
            64 * KIB,
        ),
        (
            "punch hole, unaligned, across the extent boundary",
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            HUGE - 1000,
            9000,
        ),
        (
            "zero range, unaligned",
            libc::FALLOC_FL_ZERO_RANGE,
            3 * MIB + 17,
            10_000,
        ),
        (
            "zero range of a whole huge page",
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            2 * HUGE,
            HUGE,
        ),
    ];
    for (what, mode, off, len) in ops {
        let fd = warm(&m, "f.bin");
        let s0 = m.stats();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&host)
            .unwrap();
        fallocate_fd(&f, mode, off, len).unwrap_or_else(|e| panic!("fallocate {what}: {e}"));
        drop(f);
        let s1 = m.stats();
        open_fd_equals_storage(&fd, &m, "f.bin", what);
        assert_inval_grew(&s0, &s1, "fallocate", what);
        let got = read(&m.device().join("f.bin"));
        assert!(
            got[off as usize..(off + len) as usize]
                .iter()
                .all(|&b| b == 0),
            "{what}: device view still shows data in the deallocated range"
        );
        device_equals_storage(&m, "f.bin", &format!("device after {what}"));
    }
}

#[test]
fn copy_file_range_into_file_leaves_no_stale_device_bytes() {
    let size = 4 * MIB as usize;
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("src.bin"), pattern(size, 61)).unwrap();
        fs::write(s.join("dst.bin"), pattern(size, 62)).unwrap();
    });
    let fd = warm(&m, "dst.bin");
    let s0 = m.stats();
    let fin = File::open(m.host("src.bin")).unwrap();
    let fout = OpenOptions::new()
        .write(true)
        .open(m.host("dst.bin"))
        .unwrap();
    // Unaligned, across the huge page boundary, and past the old EOF.
    let (mut off_in, mut off_out): (i64, i64) = (100, (HUGE - 7) as i64);
    let mut left = (3 * MIB + 123) as usize;
    while left > 0 {
        // SAFETY: valid fds and offsets owned by this frame.
        let n = unsafe {
            libc::copy_file_range(
                fin.as_raw_fd(),
                &mut off_in,
                fout.as_raw_fd(),
                &mut off_out,
                left,
                0,
            )
        };
        assert!(n > 0, "copy_file_range: {}", io::Error::last_os_error());
        left -= n as usize;
    }
    drop((fin, fout));
    let s1 = m.stats();
    let src = read(&m.backing("src.bin"));
    let mut model = pattern(size, 62);
    model_write(
        &mut model,
        HUGE - 7,
        &src[100..100 + (3 * MIB + 123) as usize],
    );
    assert_bytes_eq(&read(&m.backing("dst.bin")), &model, "STORAGE after copy");
    open_fd_equals_storage(&fd, &m, "dst.bin", "after copy_file_range");
    assert_inval_grew(&s0, &s1, "copy", "copy_file_range into a resident file");
    device_equals_storage(&m, "dst.bin", "device after copy_file_range");
}

/// Rounds of the name-based tests: the kernel's device-view dentries must be dropped by the
/// host operation itself, so each round gives a stale dentry another chance to show.
const NAME_ROUNDS: u64 = 20;

#[test]
fn unlink_of_last_link_leaves_no_stale_device_bytes() {
    let size = 512 * KIB as usize + 300;
    let m = Mounted::with(&[], |s| {
        for r in 0..NAME_ROUNDS {
            fs::write(s.join(format!("f{r}.bin")), pattern(size, 700 + r)).unwrap();
        }
        fs::write(s.join("g.bin"), pattern(size, 72)).unwrap();
        fs::hard_link(s.join("g.bin"), s.join("g2.bin")).unwrap();
    });
    let mut problems = Vec::new();
    for r in 0..NAME_ROUNDS {
        let rel = format!("f{r}.bin");
        drop(warm(&m, &rel));
        let s0 = m.stats();
        fs::remove_file(m.host(&rel)).unwrap();
        let s1 = m.stats();
        if s1.invalidations.unlink_rename <= s0.invalidations.unlink_rename {
            problems.push(format!(
                "round {r}: unlink of the last link of a resident file: invalidations.unlink_rename did not grow: before {:?}, after {:?}",
                s0.invalidations, s1.invalidations
            ));
        }
        match File::open(m.device().join(&rel)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!(
                "round {r}: device open of the unlinked name: {e}, want ENOENT"
            )),
            Ok(f) => problems.push(format!(
                "round {r}: device open of the unlinked name succeeded (want ENOENT); it reads {} bytes",
                pread_fd(&f, 0, 2 * size).len()
            )),
        }
        // A new file under the old name (ext4 readily reuses the inode number).
        let fresh = pattern(size, 800 + r);
        fs::write(m.host(&rel), &fresh).unwrap();
        let got = read(&m.device().join(&rel));
        if got != fresh {
            problems.push(format!(
                "round {r}: device read of the re-created name is stale ({} bytes; equals the unlinked file: {})",
                got.len(),
                got == pattern(size, 700 + r)
            ));
        }
    }
    // Unlinking one of two links keeps the data (and must not serve anything wrong).
    let fd = warm(&m, "g.bin");
    fs::remove_file(m.host("g2.bin")).unwrap();
    open_fd_equals_storage(&fd, &m, "g.bin", "after unlinking the other link");
    device_equals_storage(&m, "g.bin", "device after unlinking the other link");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn rename_over_existing_file_leaves_no_stale_device_bytes() {
    let size = 512 * KIB as usize + 4096;
    let m = Mounted::with(&[], |s| {
        for r in 0..NAME_ROUNDS {
            fs::write(s.join(format!("a{r}.bin")), pattern(size, 810 + r)).unwrap();
            fs::write(s.join(format!("b{r}.bin")), pattern(size, 820 + r)).unwrap();
        }
    });
    let mut problems = Vec::new();
    for r in 0..NAME_ROUNDS {
        let (a, b) = (format!("a{r}.bin"), format!("b{r}.bin"));
        drop(warm(&m, &a));
        drop(warm(&m, &b));
        let s0 = m.stats();
        fs::rename(m.host(&a), m.host(&b)).unwrap();
        let s1 = m.stats();
        if s1.invalidations.unlink_rename <= s0.invalidations.unlink_rename {
            problems.push(format!(
                "round {r}: rename over a resident file: invalidations.unlink_rename did not grow: before {:?}, after {:?}",
                s0.invalidations, s1.invalidations
            ));
        }
        let got = read(&m.device().join(&b));
        if got != pattern(size, 810 + r) {
            problems.push(format!(
                "round {r}: device read of the rename target is stale (it is the replaced file's bytes: {})",
                got == pattern(size, 820 + r)
            ));
        }
        match File::open(m.device().join(&a)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!(
                "round {r}: device open of the old name: {e}, want ENOENT"
            )),
            Ok(_) => problems.push(format!(
                "round {r}: device open of the renamed-away name succeeded (want ENOENT)"
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ===== 5. changes behind the mount =======================================================

#[test]
fn external_change_is_seen_by_fresh_opens() {
    let size = 4 * MIB as usize + 1000;
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("f.bin"), pattern(size, 91)).unwrap()
    });
    warm(&m, "f.bin");
    assert_bytes_eq(&read(&m.host("f.bin")), &pattern(size, 91), "host warm-up");
    let s0 = m.stats();

    // Same size, new bytes, written straight into STORAGE.
    let v2 = pattern(size, 92);
    {
        let f = OpenOptions::new()
            .write(true)
            .open(m.backing("f.bin"))
            .unwrap();
        f.write_all_at(&v2, 0).unwrap();
    }
    assert_bytes_eq(
        &read(&m.device().join("f.bin")),
        &v2,
        "fresh device open after external overwrite",
    );
    assert_bytes_eq(
        &read(&m.host("f.bin")),
        &v2,
        "fresh host open after external overwrite",
    );
    let s1 = m.stats();
    assert_inval_grew(
        &s0,
        &s1,
        "external",
        "external overwrite of a resident file",
    );

    // The file grows behind the mount.
    warm(&m, "f.bin");
    let mut v3 = v2.clone();
    let tail = pattern(3 * MIB as usize, 93);
    v3.extend_from_slice(&tail);
    {
        let mut f = OpenOptions::new()
            .append(true)
            .open(m.backing("f.bin"))
            .unwrap();
        f.write_all(&tail).unwrap();
    }
    assert_bytes_eq(
        &read(&m.device().join("f.bin")),
        &v3,
        "fresh device open after external append",
    );
    assert_bytes_eq(
        &read(&m.host("f.bin")),
        &v3,
        "fresh host open after external append",
    );
}

#[test]
fn external_change_reaches_an_open_device_reader() {
    let size = 4 * MIB as usize;
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("f.bin"), pattern(size, 95)).unwrap()
    });
    let reader = File::open(m.device().join("f.bin")).unwrap();
    assert_bytes_eq(
        &pread_fd(&reader, 0, size),
        &pattern(size, 95),
        "first read",
    );
    assert!(res4(&residency(&m.device().join("f.bin"))).1 > 0);
    let s0 = m.stats();

    let v2 = pattern(size, 96);
    {
        let f = OpenOptions::new()
            .write(true)
            .open(m.backing("f.bin"))
            .unwrap();
        f.write_all_at(&v2, 0).unwrap();
        f.sync_all().unwrap();
    }
    let mut last = Vec::new();
    let fresh = wait_until(DEADLINE, || {
        last = pread_fd(&reader, 0, size);
        last == v2
    });
    if !fresh {
        assert_bytes_eq(
            &last,
            &v2,
            &format!("open device fd still stale {DEADLINE:?} after an external write"),
        );
    }
    let s1 = m.stats();
    assert_inval_grew(
        &s0,
        &s1,
        "external",
        "external write under an open device fd",
    );
}

// ===== 6. refusals =======================================================================

#[test]
fn device_view_refuses_every_modification() {
    let m = Mounted::with(&[], refusal_tree);
    let before = snapshot(&m.storage);
    let s0 = m.stats();
    let mut r = Refusals::default();
    refuse_everything(&mut r, &m.device(), &m.mnt, "device view");
    // The device root itself.
    r.expect(
        "device root: chmod",
        rustix::fs::chmod(m.device(), rustix::fs::Mode::from_raw_mode(0o700))
            .map_err(io::Error::from),
        &[libc::EROFS],
    );
    let s1 = m.stats();
    let after = snapshot(&m.storage);
    r.finish();
    assert_unchanged(&before, &after);
    assert!(
        s1.device.refused_writes > s0.device.refused_writes,
        "refused_writes stayed {}",
        s0.device.refused_writes
    );
    // Reads still work and still match.
    assert_bytes_eq(
        &read(&m.device().join("d/b.txt")),
        &read(&m.backing("d/b.txt")),
        "read after refusals",
    );
    let value = get_xattr(&m.device().join("a.txt"), "user.test").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&value),
        "original",
        "getxattr user.test through the device view (STORAGE holds \"original\")"
    );
}

#[test]
fn read_only_mount_refuses_host_writes() {
    let m = Mounted::with(&["--read-only"], refusal_tree);
    let before = snapshot(&m.storage);
    let mut r = Refusals::default();
    refuse_everything(&mut r, &m.mnt, &m.device(), "--read-only host view");
    refuse_everything(&mut r, &m.device(), &m.mnt, "--read-only device view");
    let after = snapshot(&m.storage);
    r.finish();
    assert_unchanged(&before, &after);
    assert_bytes_eq(
        &read(&m.host("a.txt")),
        &pattern(10_000, 1),
        "host read on --read-only",
    );
    assert_bytes_eq(
        &read(&m.device().join("a.txt")),
        &pattern(10_000, 1),
        "device read on --read-only",
    );
}

// ===== 7. mmap ===========================================================================

#[test]
fn readonly_mmap_of_device_file_matches_storage() {
    let size = 3 * MIB as usize + 123;
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("f.bin"), pattern(size, 101)).unwrap()
    });
    let f = File::open(m.device().join("f.bin")).unwrap();
    // SAFETY: nothing modifies the file while the map is alive.
    let map = unsafe { memmap2::Mmap::map(&f) }
        .unwrap_or_else(|e| panic!("read-only MAP_SHARED mmap of a device-view file: {e}"));
    assert_bytes_eq(&map, &read(&m.backing("f.bin")), "mmap of the device view");
    drop(map);
    // SAFETY: as above.
    let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&f) }
        .unwrap_or_else(|e| panic!("MAP_PRIVATE mmap of a device-view file: {e}"));
    assert_bytes_eq(
        &map,
        &read(&m.backing("f.bin")),
        "private mmap of the device view",
    );
}

// ===== 8. statfs =========================================================================

#[test]
fn device_view_statfs_reports_tier_capacity() {
    let size = 6 * MIB as usize;
    let m = Mounted::with(&["--device-capacity", "64MiB"], |s| {
        fs::write(s.join("f.bin"), pattern(size, 111)).unwrap()
    });
    let v0 = rustix::fs::statvfs(m.device()).unwrap();
    assert_eq!(
        v0.f_blocks * v0.f_frsize,
        64 * MIB,
        "device statfs: f_blocks {} * f_frsize {}",
        v0.f_blocks,
        v0.f_frsize
    );
    assert!(v0.f_bfree <= v0.f_blocks && v0.f_bavail <= v0.f_blocks);
    let used0 = (v0.f_blocks - v0.f_bfree) * v0.f_frsize;
    let _ = read(&m.device().join("f.bin"));
    let v1 = rustix::fs::statvfs(m.device().join("f.bin")).unwrap();
    assert_eq!(v1.f_blocks * v1.f_frsize, 64 * MIB);
    let used1 = (v1.f_blocks - v1.f_bfree) * v1.f_frsize;
    assert!(
        used1 >= used0 + size as u64,
        "device statfs used {used0} -> {used1} after reading {size} bytes"
    );
    assert_eq!(
        used1,
        m.stats().device.used_bytes,
        "statfs used vs stats used_bytes"
    );
    assert_eq!(m.stats().device.capacity_bytes, 64 * MIB);
    // The host view reports STORAGE's filesystem.
    let h = rustix::fs::statvfs(&m.mnt).unwrap();
    let s = rustix::fs::statvfs(&m.storage).unwrap();
    assert_eq!(
        h.f_blocks * h.f_frsize,
        s.f_blocks * s.f_frsize,
        "host statfs vs STORAGE"
    );
}

// ===== 9. control xattrs =================================================================

/// Size of the control-xattr test file: three huge pages and a 4-page tail.
const CTL_SIZE: usize = 6 * MIB as usize + 3 * 4096 + 100;

#[test]
fn control_xattr_residency_prefetch_evict() {
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("f.bin"), pattern(CTL_SIZE, 121)).unwrap()
    });
    let host = m.host("f.bin");
    let dv = m.device().join("f.bin");
    let size = CTL_SIZE as u64;

    let r = residency(&host);
    assert_eq!(res4(&r), (size, 0, 0, 0), "cold residency {r}");
    assert_eq!(
        r.as_object().unwrap().len(),
        4,
        "residency should have exactly size, resident_bytes, huge_pages, base_pages: {r}"
    );

    prefetch(&host, "0-");
    let tail_pages = (size - 3 * HUGE).div_ceil(PAGE);
    assert_eq!(
        res4(&residency(&host)),
        (size, 3 * HUGE + tail_pages * PAGE, 3, tail_pages),
        "after prefetch 0-"
    );
    assert_eq!(
        residency(&dv),
        residency(&host),
        "residency via device vs host view"
    );
    // Everything prefetched is a hit.
    let s0 = m.stats();
    assert_bytes_eq(
        &read(&dv),
        &read(&m.backing("f.bin")),
        "device read after prefetch",
    );
    assert_eq!(
        m.stats().device.misses,
        s0.device.misses,
        "misses after prefetch 0-"
    );

    if m.stats().shared.files > 0 {
        // The read was served by the kernel from shared device memory: its pages are
        // pinned until the open's release arrives (asynchronous to close), then evictable.
        assert!(wait_until(Duration::from_secs(10), || {
            evict(&host);
            res4(&residency(&host)).1 == 0
        }));
    }
    evict(&host);
    assert_eq!(res4(&residency(&host)), (size, 0, 0, 0), "after evict");
    let s1 = m.stats();
    assert_eq!(
        s1.invalidations.evict - s0.invalidations.evict,
        3 + tail_pages,
        "invalidations.evict should count the device pages dropped"
    );

    // Sub-ranges: whatever the page size chosen, the range itself must be resident.
    for (range, a, b) in [
        ("4096-8191", 4096u64, 8192u64),
        ("0-1M", 0, MIB + 1),
        ("1M-", MIB, size),
        (" 5M - 6M \n", 5 * MIB, 6 * MIB + 1),
    ] {
        evict(&dv);
        prefetch(&dv, range);
        let (_, resident, _, _) = res4(&residency(&dv));
        assert!(
            resident >= b - a,
            "prefetch {range:?}: resident_bytes {resident}"
        );
        let s = m.stats();
        let want = read(&m.backing("f.bin"));
        assert_bytes_eq(
            &pread(&dv, a, (b - a) as usize),
            &want[a as usize..b as usize],
            &format!("device read of prefetched {range:?}"),
        );
        assert_eq!(
            m.stats().device.misses,
            s.device.misses,
            "reading the prefetched range {range:?} faulted"
        );
    }
    evict(&dv);
    assert_eq!(
        res4(&residency(&dv)),
        (size, 0, 0, 0),
        "evict via the device view"
    );
}

#[test]
fn prefetch_ranges_are_exact_with_base_pages() {
    let m = Mounted::with(&["--huge-pages", "off"], |s| {
        fs::write(s.join("f.bin"), pattern(CTL_SIZE, 122)).unwrap()
    });
    let host = m.host("f.bin");
    let size = CTL_SIZE as u64;
    for (range, pages) in [
        ("4096-8191", 1u64),
        ("4096-8192", 2),
        ("0-4095", 1),
        ("0-1M", MIB / PAGE + 1), // inclusive: byte 1 MiB is in page 256
        ("0-1023K", MIB / PAGE),
        ("6M-", (size - 6 * MIB).div_ceil(PAGE)),
        ("0-", size.div_ceil(PAGE)),
        ("0-1G", size.div_ceil(PAGE)),
        ("100M-", 0),
    ] {
        evict(&host);
        prefetch(&host, range);
        assert_eq!(
            res4(&residency(&host)),
            (size, pages * PAGE, 0, pages),
            "(size, resident_bytes, huge_pages, base_pages) after prefetch {range:?} with base pages only"
        );
    }
}

#[test]
fn malformed_control_values_are_einval() {
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("f.bin"), pattern(CTL_SIZE, 123)).unwrap()
    });
    let mut r = Refusals::default();
    for p in [m.host("f.bin"), m.device().join("f.bin")] {
        for bad in [
            &b"abc"[..],
            b"10-5",
            b"",
            b"-5",
            b"5",
            b"0-1Q",
            b"x-",
            b"\xff-",
            b"0-1-2",
        ] {
            r.expect(
                &format!(
                    "prefetch {:?} on {}",
                    String::from_utf8_lossy(bad),
                    p.display()
                ),
                set_xattr(&p, "user.pagetier.prefetch", bad),
                &[libc::EINVAL],
            );
        }
    }
    r.finish();
    assert_eq!(
        res4(&residency(&m.host("f.bin"))),
        (CTL_SIZE as u64, 0, 0, 0),
        "a rejected prefetch faulted something"
    );
}

#[test]
fn control_xattrs_are_never_listed_or_stored() {
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("f.bin"), pattern(CTL_SIZE, 124)).unwrap();
        set_xattr(&s.join("f.bin"), "user.test", b"hello").unwrap();
    });
    let host = m.host("f.bin");
    let dv = m.device().join("f.bin");
    let _ = residency(&host);
    let _ = residency(&dv);
    prefetch(&host, "0-");
    prefetch(&dv, "0-1M");
    let _ = residency(&host);
    evict(&dv);
    evict(&host);
    let _ = residency(&dv);

    for p in [&host, &dv] {
        let names = list_xattr(p).unwrap();
        assert!(
            names.iter().any(|n| n == "user.test"),
            "listxattr {} lost user.test: {names:?}",
            p.display()
        );
        assert!(
            !names.iter().any(|n| n.starts_with("user.pagetier.")),
            "listxattr {} shows control names: {names:?}",
            p.display()
        );
        assert_eq!(get_xattr(p, "user.test").unwrap(), b"hello");
    }
    let backing = m.backing("f.bin");
    let names = list_xattr(&backing).unwrap();
    assert_eq!(
        names,
        vec!["user.test".to_string()],
        "STORAGE xattrs after control use"
    );
    for n in [
        "user.pagetier.residency",
        "user.pagetier.prefetch",
        "user.pagetier.evict",
    ] {
        let e = get_xattr(&backing, n).expect_err("control xattr reached STORAGE");
        assert_eq!(e.raw_os_error(), Some(libc::ENODATA), "{n} in STORAGE: {e}");
    }
}

// ===== 10. control directory =============================================================

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn control_dir_hidden_but_reachable() {
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("f.bin"), b"hello").unwrap();
        fs::create_dir(s.join("sub")).unwrap();
        fs::write(s.join("sub/g"), b"g").unwrap();
    });
    let root = names(&m.mnt);
    assert_eq!(root, names(&m.storage), "host root listing vs STORAGE");
    assert!(
        !root.iter().any(|n| n == ".pagetier"),
        "root lists .pagetier: {root:?}"
    );
    let ctl = fs::metadata(m.mnt.join(".pagetier")).expect("stat .pagetier");
    assert!(ctl.is_dir());
    assert!(fs::metadata(m.device()).unwrap().is_dir());
    assert!(
        fs::metadata(m.mnt.join(".pagetier/stats"))
            .unwrap()
            .is_file()
    );
    assert_eq!(m.stats().version, 1);
    assert_eq!(
        names(&m.device()),
        names(&m.storage),
        "device root listing vs STORAGE"
    );
    assert_eq!(names(&m.device().join("sub")), vec!["g".to_string()]);
    assert_eq!(read(&m.device().join("sub/g")), b"g");
}

#[test]
fn control_dir_can_be_renamed() {
    let m = Mounted::with(&["--control-dir", ".ctl"], |s| {
        fs::write(s.join("f.bin"), b"hello").unwrap();
        // With another control name, an entry called .pagetier is ordinary data.
        fs::write(s.join(".pagetier"), b"just a file").unwrap();
    });
    let root = names(&m.mnt);
    assert!(
        !root.iter().any(|n| n == ".ctl"),
        "root lists .ctl: {root:?}"
    );
    assert_eq!(root, names(&m.storage), "host root listing vs STORAGE");
    assert_eq!(read(&m.mnt.join(".pagetier")), b"just a file");
    assert!(fs::metadata(m.mnt.join(".ctl")).unwrap().is_dir());
    let stats = StatsDocument::parse(&fs::read(m.mnt.join(".ctl/stats")).unwrap()).unwrap();
    assert_eq!(stats.version, 1);
    assert_eq!(read(&m.mnt.join(".ctl/device/f.bin")), b"hello");
    let e = fs::metadata(m.mnt.join(".ctl/device/.ctl")).map(drop);
    assert!(
        e.is_err(),
        "the device view exposes the control dir inside itself"
    );
}

/// Spawns `pagetier mount` over a STORAGE holding a conflicting entry; it must refuse.
fn expect_refused_mount(storage_entry: &str, as_dir: bool, opts: &[&str]) {
    let dir = tempfile::Builder::new()
        .prefix("pagetier-test-")
        .tempdir()
        .unwrap();
    let storage = dir.path().join("storage");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&storage).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(storage.join("f"), b"x").unwrap();
    if as_dir {
        fs::create_dir(storage.join(storage_entry)).unwrap();
    } else {
        fs::write(storage.join(storage_entry), b"x").unwrap();
    }
    let child = Command::new(common::bin())
        .arg("mount")
        .arg(&storage)
        .arg(&mnt)
        .args(opts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut g = Reaped {
        child,
        mnt: mnt.clone(),
    };
    let ended = wait_until(Duration::from_secs(20), || {
        matches!(g.child.try_wait(), Ok(Some(_))) || is_fuse_mounted(&mnt)
    });
    assert!(ended, "pagetier neither exited nor mounted within 20 s");
    assert!(
        !is_fuse_mounted(&mnt),
        "pagetier mounted over a STORAGE holding {storage_entry:?} (opts {opts:?})"
    );
    let exited = wait_until(DEADLINE, || matches!(g.child.try_wait(), Ok(Some(_))));
    assert!(exited, "pagetier did not exit");
    let status = g.child.wait().unwrap();
    let mut err = String::new();
    g.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !status.success(),
        "exit status {status} for a conflicting {storage_entry:?}; stderr: {err}"
    );
    assert!(
        err.contains(storage_entry) && err.contains("pagetier: error:"),
        "the message should name {storage_entry:?}: {err:?}"
    );
    assert_eq!(
        fs::read(storage.join("f")).unwrap(),
        b"x",
        "STORAGE touched by a refused mount"
    );
}

#[test]
fn storage_entry_named_like_control_dir_refuses_mount() {
    expect_refused_mount(".pagetier", true, &[]);
    expect_refused_mount(".pagetier", false, &[]);
    expect_refused_mount(".ctl", false, &["--control-dir", ".ctl"]);
}

// ===== 11. host page cache ===============================================================

/// Fraction of `p`'s pages in the host page cache, by `mincore`.
fn cached_fraction(p: &Path) -> f64 {
    let f = File::open(p).unwrap();
    // SAFETY: read-only shared map of a file nobody truncates while it is mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    let pages = map.len().div_ceil(PAGE as usize);
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` is a live mapping of `map.len()` bytes; `vec` holds one byte per page.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            vec.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 != 0).count() as f64 / pages as f64
}

fn drop_from_page_cache(p: &Path) {
    let f = File::open(p).unwrap();
    f.sync_all().unwrap();
    // SAFETY: plain syscall on a valid fd.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise DONTNEED");
}

#[test]
fn device_reads_do_not_fill_host_page_cache() {
    const BLOCK: usize = MIB as usize;
    const BLOCKS: usize = 200;
    let m = Mounted::with(&["--device-capacity", "256MiB"], |s| {
        let mut f = File::create(s.join("big.bin")).unwrap();
        for i in 0..BLOCKS {
            f.write_all(&pattern(BLOCK, 1000 + i as u64)).unwrap();
        }
        f.sync_all().unwrap();
    });
    let backing = m.backing("big.bin");
    drop_from_page_cache(&backing);
    let before = cached_fraction(&backing);
    assert!(
        before < 0.05,
        "precondition: {:.1}% of STORAGE file cached after DONTNEED",
        before * 100.0
    );

    let s0 = m.stats();
    let mut f = File::open(m.device().join("big.bin")).unwrap();
    let mut buf = vec![0u8; BLOCK];
    for i in 0..BLOCKS {
        f.read_exact(&mut buf).unwrap();
        if buf != pattern(BLOCK, 1000 + i as u64) {
            assert_bytes_eq(
                &buf,
                &pattern(BLOCK, 1000 + i as u64),
                &format!("1 MiB block {i}"),
            );
        }
    }
    assert_eq!(f.read(&mut buf).unwrap(), 0, "EOF after 200 MiB");
    let s1 = m.stats();
    let after = cached_fraction(&backing);
    eprintln!(
        "page cache of the STORAGE file: {:.2}% before, {:.2}% after; misses +{}, bytes_faulted +{}",
        before * 100.0,
        after * 100.0,
        s1.device.misses - s0.device.misses,
        s1.device.bytes_faulted - s0.device.bytes_faulted
    );
    assert!(
        s1.device.bytes_faulted - s0.device.bytes_faulted >= (BLOCK * BLOCKS) as u64 / 2,
        "the tier faulted too little to be the source of these reads"
    );
    assert!(
        after < 0.05,
        "device-view reads left {:.1}% of the STORAGE file in the host page cache",
        after * 100.0
    );
}

// ===== 12. concurrency ===================================================================

const CBLOCKS: u64 = 1024; // 4 MiB per file

fn stamp(block: u64, version: u64) -> Vec<u8> {
    let word = (block << 32) | version;
    word.to_le_bytes().repeat(PAGE as usize / 8)
}

/// `(block, version)` of a 4 KiB block if every word carries the same stamp.
fn unstamp(buf: &[u8]) -> Option<(u64, u64)> {
    let first = &buf[..8];
    if buf.chunks_exact(8).all(|w| w == first) {
        let w = u64::from_le_bytes(first.try_into().unwrap());
        Some((w >> 32, w & 0xffff_ffff))
    } else {
        None
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn concurrent_host_writes_never_give_stale_device_reads() {
    const FILES: usize = 2;
    let m = Mounted::with(&[], |s| {
        for f in 0..FILES {
            let mut data = Vec::with_capacity((CBLOCKS * PAGE) as usize);
            for b in 0..CBLOCKS {
                data.extend_from_slice(&stamp(b, 0));
            }
            fs::write(s.join(format!("c{f}.bin")), data).unwrap();
        }
    });
    for f in 0..FILES {
        prefetch(&m.host(&format!("c{f}.bin")), "0-");
    }
    let acked: Vec<Vec<AtomicU64>> = (0..FILES)
        .map(|_| (0..CBLOCKS).map(|_| AtomicU64::new(0)).collect())
        .collect();
    // The version of each block's newest write begun (set before the write, so a version
    // above `acked` is in flight). A read of a block that a write overlaps may see it torn,
    // as on any Linux filesystem (a kernel-served read of a device copy that an in-place
    // update is rewriting does); a torn block with no write begun since the read started is
    // a bug.
    let started: Vec<Vec<AtomicU64>> = (0..FILES)
        .map(|_| (0..CBLOCKS).map(|_| AtomicU64::new(0)).collect())
        .collect();
    let torn_in_flight = AtomicU64::new(0);
    let problems = Mutex::new(Vec::<String>::new());
    let (writes, reads, blocks_checked) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(3);
    let s0 = m.stats();

    std::thread::scope(|s| {
        for f in 0..FILES {
            let (acked, started, writes, host) = (
                &acked[f],
                &started[f],
                &writes,
                m.host(&format!("c{f}.bin")),
            );
            s.spawn(move || {
                let file = OpenOptions::new().write(true).open(&host).unwrap();
                let mut rng = Rng(0x1234_5678 + f as u64);
                let mut n = 0u64;
                while Instant::now() < deadline && n < 200_000 {
                    let b = rng.next() % CBLOCKS;
                    let v = acked[b as usize].load(Ordering::Relaxed) + 1;
                    started[b as usize].store(v, Ordering::Release);
                    file.write_all_at(&stamp(b, v), b * PAGE).unwrap();
                    acked[b as usize].store(v, Ordering::Release);
                    n += 1;
                }
                writes.fetch_add(n, Ordering::Relaxed);
            });
        }
        for r in 0..2u64 {
            let (acked, started, torn_in_flight, problems, reads, checked) = (
                &acked,
                &started,
                &torn_in_flight,
                &problems,
                &reads,
                &blocks_checked,
            );
            let files: Vec<File> = (0..FILES)
                .map(|f| File::open(m.device().join(format!("c{f}.bin"))).unwrap())
                .collect();
            s.spawn(move || {
                let mut rng = Rng(0xdead_beef + r);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let f = (rng.next() % FILES as u64) as usize;
                    // Mostly 4 KiB reads; every fourth a 256 KiB sequential one.
                    let count = if rng.next().is_multiple_of(4) { 64 } else { 1 };
                    let first = if count == 1 {
                        rng.next() % CBLOCKS
                    } else {
                        (rng.next() % (CBLOCKS / 64)) * 64
                    };
                    let mins: Vec<u64> = (first..first + count)
                        .map(|b| acked[f][b as usize].load(Ordering::Acquire))
                        .collect();
                    let buf = pread_fd(&files[f], first * PAGE, (count * PAGE) as usize);
                    n += 1;
                    if buf.len() != (count * PAGE) as usize {
                        problems.lock().unwrap().push(format!(
                            "file {f} block {first}: short read {} bytes",
                            buf.len()
                        ));
                        continue;
                    }
                    for (j, chunk) in buf.chunks_exact(PAGE as usize).enumerate() {
                        let b = first + j as u64;
                        let max = acked[f][b as usize].load(Ordering::Acquire) + 1;
                        checked.fetch_add(1, Ordering::Relaxed);
                        let msg = match unstamp(chunk) {
                            None if started[f][b as usize].load(Ordering::Acquire) > mins[j] => {
                                torn_in_flight.fetch_add(1, Ordering::Relaxed);
                                None
                            }
                            None => Some(format!(
                                "file {f} block {b}: torn block with no write begun since the read started"
                            )),
                            Some((idx, _)) if idx != b => {
                                Some(format!("file {f} block {b}: holds block {idx}"))
                            }
                            Some((_, v)) if v < mins[j] => Some(format!(
                                "file {f} block {b}: STALE version {v}, {} was acknowledged before the read",
                                mins[j]
                            )),
                            Some((_, v)) if v > max => Some(format!(
                                "file {f} block {b}: version {v} from the future (max {max})"
                            )),
                            Some(_) => None,
                        };
                        if let Some(msg) = msg {
                            problems.lock().unwrap().push(msg);
                        }
                    }
                }
                reads.fetch_add(n, Ordering::Relaxed);
            });
        }
    });

    let s1 = m.stats();
    let problems = problems.into_inner().unwrap();
    eprintln!(
        "concurrency: {} writes, {} reads, {} blocks checked ({} torn by a write in flight), {} problems; misses +{}, hits +{}, splits +{}, discarded_fills +{}",
        writes.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
        blocks_checked.load(Ordering::Relaxed),
        torn_in_flight.load(Ordering::Relaxed),
        problems.len(),
        s1.device.misses - s0.device.misses,
        s1.device.hits - s0.device.hits,
        s1.device.splits - s0.device.splits,
        s1.device.discarded_fills - s0.device.discarded_fills,
    );
    assert!(
        problems.is_empty(),
        "{} bad reads; first ones:\n{}",
        problems.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        writes.load(Ordering::Relaxed) >= 100,
        "too few writes to mean anything"
    );
    assert!(
        reads.load(Ordering::Relaxed) >= 100,
        "too few reads to mean anything"
    );
    for (f, acked) in acked.iter().enumerate() {
        let rel = format!("c{f}.bin");
        device_equals_storage(&m, &rel, "device after the concurrent run");
        let data = read(&m.backing(&rel));
        for (b, chunk) in data.chunks_exact(PAGE as usize).enumerate() {
            assert_eq!(
                unstamp(chunk),
                Some((b as u64, acked[b].load(Ordering::Relaxed))),
                "STORAGE {rel} block {b} after the run"
            );
        }
    }
}

// ===== 13. fio ===========================================================================

#[test]
fn fio_second_pass_adds_no_misses() {
    if Command::new("fio")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("fio is not installed: skipping");
        return;
    }
    const FILES: [&str; 3] = ["a.dat", "b.dat", "c.dat"];
    let size = 8 * MIB as usize;
    let m = Mounted::with(&[], |s| {
        fs::create_dir(s.join("fio")).unwrap();
        for (i, f) in FILES.iter().enumerate() {
            fs::write(s.join("fio").join(f), pattern(size, 130 + i as u64)).unwrap();
        }
    });
    let dir = m.device().join("fio");
    let run = |pass: u32| -> u64 {
        let mut cmd = Command::new("fio");
        cmd.arg("--name=r")
            .arg(format!("--directory={}", dir.display()))
            .arg(format!("--filename={}", FILES.join(":")))
            .args([
                "--rw=read",
                "--bs=1M",
                "--ioengine=psync",
                "--readonly",
                "--output-format=json",
            ]);
        let (code, out, err) = run_with_deadline(cmd, Duration::from_secs(120));
        assert_eq!(code, Some(0), "fio pass {pass} failed:\n{err}\n{out}");
        let json: Value = serde_json::from_str(&out[out.find('{').unwrap_or(0)..])
            .unwrap_or_else(|e| panic!("fio JSON ({e}):\n{out}"));
        json["jobs"][0]["read"]["io_bytes"].as_u64().unwrap_or(0)
    };
    let s0 = m.stats();
    let b1 = run(1);
    // Let readahead started by pass 1 finish: an extent still being filled
    // when pass 2 reaches it is neither a miss nor a hit yet.
    let settled = |s: &StatsDocument| {
        s.device.huge_pages * 2 * MIB + s.device.base_pages * 4096 == s.device.used_bytes
    };
    let mut s1 = m.stats();
    wait_until(Duration::from_secs(10), || {
        s1 = m.stats();
        settled(&s1)
    });
    let b2 = run(2);
    let s2 = m.stats();
    let total = (size * FILES.len()) as u64;
    eprintln!(
        "fio pass 1: {b1} bytes, hits +{}, misses +{}; pass 2: {b2} bytes, hits +{}, misses +{}",
        s1.device.hits - s0.device.hits,
        s1.device.misses - s0.device.misses,
        s2.device.hits - s1.device.hits,
        s2.device.misses - s1.device.misses,
    );
    assert_eq!(b1, total, "fio pass 1 read bytes");
    assert_eq!(b2, total, "fio pass 2 read bytes");
    let faulted = |s: &StatsDocument| s.device.misses + s.diagnostics.readahead_bytes;
    assert!(faulted(&s1) > faulted(&s0), "pass 1 faulted nothing");
    assert_eq!(
        s2.device.misses, s1.device.misses,
        "fio pass 2 added misses"
    );
    if s2.passthrough.device_opens > s1.passthrough.device_opens {
        // Pass 2 found the file whole: the kernel served it from shared device memory.
        assert_eq!(
            s2.device.reads, s1.device.reads,
            "passthrough reads reached the daemon"
        );
        return;
    }
    assert!(s2.device.hits > s1.device.hits, "fio pass 2 added no hits");
}

/// A device-view listing leaves entries the kernel keeps (readdirplus gives
/// them a TTL), yet a host-view unlink right after is seen by the next device
/// lookup: the unlink drops the cached entry before it returns.
#[test]
fn host_unlink_after_a_device_listing_is_seen_at_once() {
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("gone.bin"), b"old bytes").unwrap();
        fs::write(s.join("kept.bin"), b"kept").unwrap();
    });
    // Like `ls -l`, twice: the kernel may switch to readdirplus once entries are stat'ed.
    let mut names = Vec::new();
    for _ in 0..2 {
        names = fs::read_dir(m.device())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let _ = e.metadata();
                e.file_name()
            })
            .collect();
    }
    assert!(names.iter().any(|n| n == "gone.bin"), "{names:?}");
    fs::remove_file(m.host("gone.bin")).unwrap();
    let err = fs::metadata(m.device().join("gone.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "stale device entry");
    assert_eq!(fs::read(m.device().join("kept.bin")).unwrap(), b"kept");
}

/// `--readahead off` faults only what the reader asks for; the default window reads ahead.
/// Either way the bytes are the file's.
#[test]
fn readahead_option_turns_readahead_off() {
    const SIZE: usize = 8 << 20;
    let data = pattern(SIZE, 77);
    for (opts, ahead) in [(&["--readahead", "off"][..], false), (&[][..], true)] {
        let m = Mounted::with(opts, |s| fs::write(s.join("seq.bin"), &data).unwrap());
        let p = m.device().join("seq.bin");
        let mut f = File::open(&p).unwrap();
        let mut got = vec![0u8; 1 << 20];
        // Two sequential reads: the second continues the first and may open a window.
        f.read_exact(&mut got).unwrap();
        assert_bytes_eq(&got, &data[..1 << 20], "first MiB");
        f.read_exact(&mut got).unwrap();
        assert_bytes_eq(&got, &data[1 << 20..2 << 20], "second MiB");
        let readahead = |m: &Mounted| m.stats().diagnostics.readahead_bytes;
        if ahead {
            assert!(
                wait_until(Duration::from_secs(10), || readahead(&m) > 0),
                "the default window read nothing ahead: {}",
                m.stats()
            );
        } else {
            // Reading the rest, the reader faults every extent itself.
            let mut rest = Vec::new();
            f.read_to_end(&mut rest).unwrap();
            assert_bytes_eq(&rest, &data[2 << 20..], "the rest");
            let s = m.stats();
            assert_eq!(readahead(&m), 0, "readahead with --readahead off: {s}");
            assert_eq!(s.device.misses, 4, "one fault per 2 MiB extent: {s}");
        }
    }
}
