//! Reliability under faults, bad input and load: nothing acknowledged
//! is lost, no read returns stale or foreign bytes, the daemon keeps serving.
//!
//! - Faults: STORAGE full (a 16 MiB tmpfs), STORAGE read errors (pagetier
//!   stacked on `pagetier-faultfs`, see `faultfs.rs`), the daemon SIGKILLed in
//!   the middle of fsynced writes, backing files replaced / truncated /
//!   deleted / renamed / chmod'ed behind the mount's back during reads, memory
//!   (RSS bound) and descriptor / inode leaks.
//! - Bad input: the library's parsers under proptest; hostile names, paths,
//!   offsets, sizes, xattrs and open-file counts through a real mount, each
//!   compared with a plain ext4 directory where the errno is the filesystem's.
//! - Load: fio (16 jobs) mixing host-view writes with device-view reads, then a
//!   full verify; a linearizability check that no device read is stale.
//!
//! Every mount the tests make (pagetier, faultfs, tmpfs) is owned by a guard
//! that unmounts it on drop, also on panic. Nothing sleeps for
//! synchronisation: waits poll a condition until a deadline. CI runs the
//! bounded versions (a few seconds each); `PAGETIER_LONG=1` runs them longer.
//! Runs as root (CI does).

mod common;
mod util;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mounted, is_fuse_mounted, wait_until};
use pagetier::StatsDocument;
use serde_json::Value;
use util::{MountGuard, TEST_LIMIT, Watchdog, errname, force_unmount, run_deadline};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

// ----- shared helpers ------------------------------------------------------------------

/// Long soak runs (`scripts/test.sh --long`).
fn long() -> bool {
    std::env::var_os("PAGETIER_LONG").is_some_and(|v| v != "0" && !v.is_empty())
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One 4 KiB page of stamped content: a header `[version u64][file u32][page
/// u32]` then words derived from (file, version, page), so that any page of
/// another file, version or position — or zeros — is detected.
fn stamp_page(file: u32, version: u64, page: u64, out: &mut [u8]) {
    debug_assert_eq!(out.len(), 4096);
    out[0..8].copy_from_slice(&version.to_le_bytes());
    out[8..12].copy_from_slice(&file.to_le_bytes());
    out[12..16].copy_from_slice(&(page as u32).to_le_bytes());
    let seed = (file as u64) << 48 ^ version << 24 ^ page;
    for (j, w) in out[16..].chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&splitmix(seed.wrapping_mul(1021) ^ j as u64).to_le_bytes());
    }
}

/// `len` bytes of stamped content (the last page cut short).
fn stamped(file: u32, version: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len.div_ceil(4096) as usize * 4096];
    for (p, page) in v.chunks_exact_mut(4096).enumerate() {
        stamp_page(file, version, p as u64, page);
    }
    v.truncate(len as usize);
    v
}

/// The version a stamped page claims (its header).
fn page_version(page: &[u8]) -> u64 {
    u64::from_le_bytes(page[0..8].try_into().unwrap())
}

/// What each page of a read claims, as runs: `0..3 v7, 3..5 zero, 5..9 v7`.
fn page_runs(got: &[u8]) -> String {
    let claim = |page: &[u8]| {
        if page.iter().all(|&b| b == 0) {
            "zero".to_string()
        } else if page.len() >= 8 {
            format!("v{}", page_version(page))
        } else {
            "short".to_string()
        }
    };
    let mut runs: Vec<(usize, usize, String)> = Vec::new();
    for (i, page) in got.chunks(4096).enumerate() {
        let c = claim(page);
        match runs.last_mut() {
            Some((_, end, last)) if *last == c => *end = i + 1,
            _ => runs.push((i, i + 1, c)),
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .take(12)
        .map(|(a, b, c)| format!("{a}..{b} {c}"))
        .collect();
    shown.join(", ") + if runs.len() > 12 { ", …" } else { "" }
}

/// The first offset where `got` and `want` differ, or their common length.
fn first_diff(got: &[u8], want: &[u8]) -> usize {
    got.iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()))
}

#[track_caller]
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let d = first_diff(got, want);
        panic!(
            "{what}: differs (got {} bytes, want {}; first difference at offset {d}: got {:02x?}, want {:02x?})",
            got.len(),
            want.len(),
            &got[d.min(got.len())..(d + 16).min(got.len())],
            &want[d.min(want.len())..(d + 16).min(want.len())],
        );
    }
}

fn read_all(p: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(p)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

#[track_caller]
fn read(p: &Path) -> Vec<u8> {
    read_all(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn os_err(e: &io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("not an OS error: {e}"))
}

/// Residency JSON of a file (either view).
fn residency(p: &Path) -> Value {
    let v = rustix::fs::getxattr(p, "user.pagetier.residency", &mut [0u8; 512][..])
        .unwrap_or_else(|e| panic!("residency of {}: {e}", p.display()));
    let mut buf = vec![0u8; v];
    let n = rustix::fs::getxattr(p, "user.pagetier.residency", &mut buf).unwrap();
    serde_json::from_slice(&buf[..n]).expect("residency JSON")
}

fn resident_bytes(p: &Path) -> u64 {
    residency(p)["resident_bytes"].as_u64().unwrap()
}

/// The stats once the tier has settled: readahead runs in the background, and
/// a fill in flight holds arena bytes that no resident page accounts for yet.
/// Polls (with a deadline) until no fill is in flight, then returns the stats.
fn settled(m: &Mounted) -> StatsDocument {
    let mut s = m.stats();
    wait_until(Duration::from_secs(10), || {
        s = m.stats();
        // Pages of files exported to shared device memory count in used_bytes too.
        let resident = s.device.huge_pages * 2 * MIB + s.device.base_pages * 4 * KIB;
        resident + s.shared.bytes == s.device.used_bytes
    });
    s
}

/// Stats invariants that hold at rest (no device read or fill in flight).
#[track_caller]
fn assert_stats_at_rest(s: &StatsDocument, what: &str) {
    let cap = s.device.capacity_bytes;
    let used = s.device.used_bytes;
    let resident = s.device.huge_pages * 2 * MIB + s.device.base_pages * 4 * KIB + s.shared.bytes;
    assert!(used <= cap, "{what}: used_bytes {used} > capacity {cap}");
    assert_eq!(
        resident, used,
        "{what}: resident pages ({resident} bytes) != used_bytes ({used}) at rest: {s}"
    );
    assert!(
        s.device.bytes_faulted >= s.device.misses.min(1),
        "{what}: misses without faulted bytes: {s}"
    );
}

/// The daemon's resident set size in bytes.
fn rss(pid: u32) -> u64 {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    st.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * KIB
}

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Asks the kernel to drop unused dentries and inodes, so it sends FORGETs.
fn drop_dentries() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
}

/// A filesystem mounted under a pagetier STORAGE: torn down after pagetier.
enum Lower {
    Tmpfs(PathBuf),
    Faultfs {
        mnt: PathBuf,
        child: Option<Child>,
        log: PathBuf,
    },
}

impl Lower {
    /// Mounts a tmpfs of `size` (e.g. `16m`) on `at`.
    fn tmpfs(at: &Path, size: &str) -> Lower {
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs on {}: {st}", at.display());
        Lower::Tmpfs(at.to_path_buf())
    }

    /// Serves `src` with `pagetier-faultfs` on `at` (refusing O_DIRECT opens
    /// if `refuse_direct`).
    fn faultfs(src: &Path, at: &Path, refuse_direct: bool) -> Lower {
        let log = at.with_extension("faultfs.log");
        let out = File::create(&log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pagetier-faultfs"))
            .args(refuse_direct.then_some("--refuse-direct"))
            .arg(src)
            .arg(at)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn pagetier-faultfs");
        let ok = wait_until(Duration::from_secs(20), || {
            is_fuse_mounted(at) || matches!(child.try_wait(), Ok(Some(_)))
        });
        if !ok || !is_fuse_mounted(at) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "faultfs did not mount {}: {}",
                at.display(),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Lower::Faultfs {
            mnt: at.to_path_buf(),
            child: Some(child),
            log,
        }
    }

    fn log_text(&self) -> String {
        match self {
            Lower::Faultfs { log, .. } => fs::read_to_string(log).unwrap_or_default(),
            Lower::Tmpfs(_) => String::new(),
        }
    }
}

impl Drop for Lower {
    fn drop(&mut self) {
        match self {
            Lower::Tmpfs(at) => {
                let ok = Command::new("umount")
                    .arg(&*at)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    let _ = Command::new("umount").arg("-l").arg(&*at).status();
                }
            }
            Lower::Faultfs { mnt, child, .. } => {
                force_unmount(mnt);
                if let Some(mut c) = child.take() {
                    if !wait_until(Duration::from_secs(10), || {
                        matches!(c.try_wait(), Ok(Some(_)))
                    }) {
                        let _ = c.kill();
                    }
                    let _ = c.wait();
                }
                force_unmount(mnt);
            }
        }
    }
}

/// A pagetier mount whose STORAGE is itself a mount ([`Lower`]); on drop the
/// pagetier mount goes first, then the lower one, then the temp dirs.
struct Stacked {
    wd: Option<Watchdog>,
    m: Option<Mounted>,
    lower: Option<Lower>,
}

impl Stacked {
    fn new(opts: &[&str], make: impl FnOnce(&Path) -> Lower) -> Stacked {
        let mut lower = None;
        let m = Mounted::with(opts, |s| lower = Some(make(s)));
        Stacked {
            wd: Some(Watchdog::arm(&m.mnt, TEST_LIMIT)),
            m: Some(m),
            lower,
        }
    }
}

impl std::ops::Deref for Stacked {
    type Target = Mounted;
    fn deref(&self) -> &Mounted {
        self.m.as_ref().unwrap()
    }
}

impl Drop for Stacked {
    fn drop(&mut self) {
        self.wd.take();
        if let Some(m) = self.m.as_mut() {
            m.unmount();
            force_unmount(&m.mnt);
        }
        self.lower.take();
        self.m.take();
    }
}

/// A harness mount with a watchdog.
fn guarded(opts: &[&str], prepare: impl FnOnce(&Path)) -> util::Guarded {
    util::Guarded::new(Mounted::with(opts, prepare))
}

/// The daemon still answers: a create, write, read of a fresh file through the
/// host view and a read through the device view return the bytes.
#[track_caller]
fn assert_serving(m: &Mounted, tag: &str) {
    let name = format!("alive-{tag}");
    let data = stamped(0xA11E, 7, 300 * KIB);
    fs::write(m.host(&name), &data).unwrap_or_else(|e| panic!("{tag}: write after fault: {e}"));
    assert_same(&read(&m.host(&name)), &data, &format!("{tag}: host read"));
    assert_same(
        &read(&m.device().join(&name)),
        &data,
        &format!("{tag}: device read"),
    );
    fs::remove_file(m.host(&name)).unwrap();
}

// ----- faults: storage full --------------------------------------------------------------

/// STORAGE on a 16 MiB tmpfs: writers get ENOSPC; what was acknowledged is in
/// STORAGE and intact; device-view reads equal STORAGE's bytes (no device copy
/// claims bytes STORAGE doesn't hold); the daemon keeps serving.
#[test]
fn storage_full_gives_enospc_and_loses_nothing_acknowledged() {
    let m = Stacked::new(&["--device-capacity", "64MiB"], |s| Lower::tmpfs(s, "16m"));
    // Data acknowledged (and cached in the tier) before the disk fills.
    let keep = stamped(1, 1, 4 * MIB + 123);
    fs::write(m.host("keep"), &keep).unwrap();
    assert_same(&read(&m.device().join("keep")), &keep, "keep via device");
    assert!(resident_bytes(&m.device().join("keep")) > 0);

    // Fill STORAGE through the host view, counting acknowledged bytes.
    let chunk = stamped(2, 1, 16 * MIB);
    let mut fill = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.host("fill"))
        .unwrap();
    let mut acked = 0usize;
    let enospc = loop {
        let piece = &chunk[acked..(acked + 256 * KIB as usize).min(chunk.len())];
        assert!(!piece.is_empty(), "16 MiB tmpfs accepted 16 MiB + 4 MiB");
        match fill.write(piece) {
            Ok(0) => panic!("write returned 0"),
            Ok(n) => acked += n,
            Err(e) => break e,
        }
    };
    assert_eq!(
        os_err(&enospc),
        libc::ENOSPC,
        "writer into a full STORAGE: got {}",
        errname(os_err(&enospc))
    );
    // Another write and an fsync: still ENOSPC / fine, never a crash.
    let again = fill
        .write(&chunk[..4096])
        .expect_err("write into full STORAGE");
    assert_eq!(os_err(&again), libc::ENOSPC, "second write: {again}");
    fill.sync_all().expect("fsync after ENOSPC");
    drop(fill);

    // A new file: create works (tmpfs needs no block), its write gets ENOSPC.
    let mut f = File::create(m.host("empty")).unwrap();
    let e = f.write_all(&chunk[..64 * KIB as usize]).expect_err("write");
    assert_eq!(os_err(&e), libc::ENOSPC, "write to new file: {e}");
    drop(f);

    // Everything acknowledged is in STORAGE, intact; nothing extra is claimed.
    let in_storage = read(&m.backing("fill"));
    assert!(
        in_storage.len() >= acked,
        "STORAGE holds {} bytes of fill, {acked} were acknowledged",
        in_storage.len()
    );
    assert_same(
        &in_storage[..acked],
        &chunk[..acked],
        "acknowledged fill bytes in STORAGE",
    );
    for view in [m.host("fill"), m.device().join("fill")] {
        assert_same(
            &read(&view),
            &in_storage,
            &format!("{} vs STORAGE", view.display()),
        );
    }
    let empty_storage = read(&m.backing("empty"));
    assert_same(
        &read(&m.device().join("empty")),
        &empty_storage,
        "empty via device",
    );
    assert_same(&read(&m.backing("keep")), &keep, "keep in STORAGE");
    assert_same(&read(&m.host("keep")), &keep, "keep via host");
    assert_same(
        &read(&m.device().join("keep")),
        &keep,
        "keep via device (tier)",
    );

    // Free space: the daemon serves as before. tmpfs frees an unlinked file's blocks when
    // its last descriptor closes, and the kernel sends FUSE RELEASE for the device-view read
    // above asynchronously: wait (bounded) for the space to come back.
    fs::remove_file(m.host("fill")).unwrap();
    let free = || {
        let v = rustix::fs::statvfs(&m.storage).unwrap();
        v.f_bavail * v.f_frsize
    };
    assert!(
        wait_until(Duration::from_secs(10), || free() >= MIB),
        "STORAGE space not freed 10 s after unlinking fill: {} bytes free",
        free()
    );
    assert_serving(&m, "after-enospc");
    assert_stats_at_rest(&settled(&m), "after ENOSPC");
}

// ----- faults: storage read errors ----------------------------------------------------------

fn faults(m: &Mounted, mode: &str) {
    // STORAGE is the faultfs mount: its magic file sets the mode.
    fs::write(m.storage.join(".faults"), mode).expect("set faultfs mode");
}

fn failed_reads(m: &Mounted) -> u64 {
    let t = fs::read_to_string(m.storage.join(".faults")).unwrap();
    t.split("failed_reads=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[track_caller]
fn expect_eio(r: io::Result<impl std::fmt::Debug>, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected EIO, got Ok({v:?})"),
        Err(e) => assert_eq!(os_err(&e), libc::EIO, "{what}: got {e}"),
    }
}

fn pread_at(p: &Path, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let f = File::open(p)?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// STORAGE returns EIO: readers of both views get EIO, no failed page stays in
/// the tier, and once the faults clear reads succeed with the right bytes.
/// Device faults read STORAGE with O_DIRECT.
#[test]
fn storage_read_errors_never_poison_the_tier_direct_fills() {
    storage_read_errors(false);
}

/// The same with a STORAGE that refuses O_DIRECT (buffered fills).
#[test]
fn storage_read_errors_never_poison_the_tier_buffered_fills() {
    storage_read_errors(true);
}

fn storage_read_errors(refuse_direct: bool) {
    let good = stamped(3, 1, 8 * MIB);
    let bad = stamped(4, 1, MIB);
    let good2 = good.clone();
    let m = Stacked::new(&["--device-capacity", "64MiB"], move |s| {
        let src = s.with_file_name("faultfs-src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("good"), &good2).unwrap();
        fs::write(src.join("bad-file"), &bad).unwrap();
        fs::write(src.join("other"), stamped(5, 1, 3 * MIB)).unwrap();
        Lower::faultfs(&src, s, refuse_direct)
    });
    let d = m.device();
    let what = |s: &str| {
        format!(
            "{s} (faultfs log: {})",
            m.lower.as_ref().unwrap().log_text()
        )
    };

    // A file STORAGE always fails: EIO in both views, for reads and prefetch.
    expect_eio(
        read_all(&m.host("bad-file")),
        &what("host read of bad-file"),
    );
    expect_eio(
        read_all(&d.join("bad-file")),
        &what("device read of bad-file"),
    );
    expect_eio(
        xattr_set(&d.join("bad-file"), "user.pagetier.prefetch", b"0-"),
        "prefetch of bad-file",
    );
    assert_eq!(
        resident_bytes(&d.join("bad-file")),
        0,
        "bad-file resident after EIO"
    );
    let s = settled(&m);
    assert_stats_at_rest(&s, "after bad-file");
    assert_eq!(s.device.used_bytes, 0, "failed fills hold arena bytes: {s}");

    // Every read fails: EIO in both views; nothing resident.
    faults(&m, "on");
    expect_eio(read_all(&m.host("good")), "host read with faults on");
    expect_eio(read_all(&d.join("good")), "device read with faults on");
    expect_eio(
        pread_at(&d.join("good"), 5 * MIB, 4096),
        "small device read, faults on",
    );
    assert_eq!(
        resident_bytes(&d.join("good")),
        0,
        "good resident while faults on"
    );
    assert_stats_at_rest(&settled(&m), "faults on");
    assert!(failed_reads(&m) > 0, "faultfs failed no read");

    // Faults in one range: reads touching it fail, others succeed; the failed
    // extent does not become resident.
    faults(&m, &format!("range {} {}", 3 * MIB, 3 * MIB + 4096));
    let mut ok_bytes = 0;
    for off in (0..8 * MIB).step_by(MIB as usize) {
        let r = pread_at(&d.join("good"), off, MIB as usize);
        if (2 * MIB..4 * MIB).contains(&off) {
            // The huge page 2..4 MiB spans the faulty range: either this read
            // fails or it is served without the faulty bytes.
            if let Ok(v) = &r {
                assert_same(
                    v,
                    &good[off as usize..][..MIB as usize],
                    "device read near fault",
                );
            } else {
                expect_eio(r, &format!("device read at {off} with a fault at 3 MiB"));
            }
        } else {
            let v = r.unwrap_or_else(|e| panic!("device read at {off} (no fault there): {e}"));
            assert_same(
                &v,
                &good[off as usize..][..MIB as usize],
                "device read away from fault",
            );
            ok_bytes += v.len() as u64;
        }
    }
    expect_eio(
        pread_at(&d.join("good"), 3 * MIB, 4096),
        "device read of the faulty page",
    );
    expect_eio(
        pread_at(&m.host("good"), 3 * MIB, 4096),
        "host read of the faulty page",
    );
    let res = resident_bytes(&d.join("good"));
    assert!(
        res >= ok_bytes.min(6 * MIB) && res <= 8 * MIB - 4096,
        "resident {res} after reading {ok_bytes} good bytes around a faulty page"
    );
    assert_stats_at_rest(&settled(&m), "range faults");

    // Clear the faults: every byte reads right in both views (a poisoned page
    // would now be served as a hit with wrong bytes).
    faults(&m, "off");
    let s0 = m.stats();
    assert_same(
        &read(&d.join("good")),
        &good,
        "device read after faults cleared",
    );
    assert_same(
        &read(&m.host("good")),
        &good,
        "host read after faults cleared",
    );
    let s1 = m.stats();
    // Faulted again by the reader (a miss) or ahead of it (readahead).
    let refaulted = |s: &StatsDocument| s.device.misses + s.diagnostics.readahead_bytes;
    assert!(
        refaulted(&s1) > refaulted(&s0),
        "the extent that failed was never faulted again (served from the tier?)"
    );
    assert_eq!(resident_bytes(&d.join("good")), 8 * MIB);
    assert_same(&read(&d.join("good")), &good, "device re-read (hits)");
    assert_same(
        &read(&d.join("other")),
        &stamped(5, 1, 3 * MIB),
        "other file",
    );
    assert_stats_at_rest(&settled(&m), "after faults cleared");
    assert_serving(&m, "after-eio");
}

/// STORAGE's data ends before the size its attributes give (a file shrinking
/// between the daemon's stat and its fill): a device read returns the bytes
/// that exist, then EOF or an error — never zeros that no version of the file
/// held — and installs nothing that outlives the condition.
#[test]
fn storage_short_reads_never_turn_into_zeros() {
    let data = stamped(6, 1, 4 * MIB);
    let data2 = data.clone();
    let m = Stacked::new(&["--device-capacity", "64MiB"], move |s| {
        let src = s.with_file_name("faultfs-src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), &data2).unwrap();
        Lower::faultfs(&src, s, false)
    });
    let cut = MIB + 5000;
    faults(&m, &format!("short {cut}"));
    let d = m.device().join("f");
    let mut problems = Vec::new();
    match read_all(&d) {
        Ok(v) => {
            let n = v.len().min(data.len());
            if v[..n] != data[..n] {
                let at = first_diff(&v, &data);
                problems.push(format!(
                    "device read while STORAGE ends at {cut}: {} bytes, wrong from offset {at} (page there claims version {})",
                    v.len(),
                    page_version(&v[at / 4096 * 4096..])
                ));
            }
        }
        Err(e) => eprintln!("device read while STORAGE ends early: {e}"),
    }
    faults(&m, "off");
    match read_all(&d) {
        Ok(v) if v == data => {}
        Ok(v) => problems.push(format!(
            "after STORAGE recovered, the device view serves {} bytes differing from offset {} (stale fill installed in the tier)",
            v.len(),
            first_diff(&v, &data)
        )),
        Err(e) => problems.push(format!("device read after recovery: {e}")),
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_same(&read(&m.host("f")), &data, "host view after recovery");
}

fn xattr_set(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    rustix::fs::setxattr(p, name, value, rustix::fs::XattrFlags::empty()).map_err(io::Error::from)
}

// ----- faults: daemon killed ---------------------------------------------------------------

const WBLOCK: u64 = 64 * KIB;

/// What one writer thread saw acknowledged.
#[derive(Default)]
struct Acks {
    written: BTreeSet<u64>,
    fsynced: BTreeSet<u64>,
}

/// SIGKILL while writers write and fsync through the host view: every write
/// that returned is in STORAGE (write-through), in particular every fsynced
/// one; `--clear-stale` remounts on the dead mountpoint and serves the same
/// bytes in both views.
#[test]
fn sigkill_during_fsynced_writes_loses_nothing_acknowledged() {
    let rounds = if long() { 5 } else { 1 };
    for round in 0..rounds {
        sigkill_round(round);
    }
}

fn sigkill_round(round: u64) {
    const WRITERS: u32 = 4;
    let mut m = Mounted::with(&["--device-capacity", "64MiB"], |_| {});
    let _wd = Watchdog::arm(&m.mnt, TEST_LIMIT);
    let acks: Vec<Arc<Mutex<Acks>>> = (0..WRITERS).map(|_| Arc::default()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let path = m.host(&format!("w{w}"));
        let acks = acks[w as usize].clone();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || -> Option<io::Error> {
            let f = match OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) => return Some(e),
            };
            // Blocks in a scrambled order, so that holes and overwrites happen.
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                let block = splitmix(i ^ (w as u64) << 32) % 512;
                let data = stamped(w, round * 1_000_000 + i, WBLOCK);
                if let Err(e) = f.write_all_at(&data, block * WBLOCK) {
                    return Some(e);
                }
                acks.lock().unwrap().written.insert(i);
                if i % 4 == 3 {
                    if let Err(e) = f.sync_all() {
                        return Some(e);
                    }
                    let mut a = acks.lock().unwrap();
                    let done: Vec<u64> = a.written.iter().copied().collect();
                    a.fsynced.extend(done);
                }
            }
            None
        }));
    }
    let total = || {
        acks.iter()
            .map(|a| a.lock().unwrap().fsynced.len())
            .sum::<usize>()
    };
    assert!(
        wait_until(Duration::from_secs(30), || total() >= 200),
        "writers made no progress: {} fsynced",
        total()
    );
    let mut child = m.take_child().expect("daemon");
    child.kill().expect("SIGKILL the daemon");
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        assert!(
            wait_until(Duration::from_secs(30), || t.is_finished()),
            "a writer hangs on the dead mount"
        );
        if let Some(e) = t.join().unwrap() {
            // Killed under the writer: the connection is gone.
            assert!(
                matches!(os_err(&e), libc::ENOTCONN | libc::ECONNABORTED),
                "writer error after SIGKILL: {e}"
            );
        }
    }

    // Replay each writer's acknowledged writes into a model; STORAGE must hold
    // the last acknowledged version of every block (a write in flight at the
    // kill may or may not have landed: it only may replace the model's block).
    let mut models = Vec::new();
    for w in 0..WRITERS {
        let a = acks[w as usize].lock().unwrap();
        let last_acked = a.written.last().copied();
        let in_flight = last_acked.map_or(0, |l| l + 1);
        let mut model: BTreeMap<u64, (u64, Option<u64>)> = BTreeMap::new(); // block -> (acked i, in-flight i)
        for &i in &a.written {
            let block = splitmix(i ^ (w as u64) << 32) % 512;
            model.insert(block, (i, None));
        }
        let fb = splitmix(in_flight ^ (w as u64) << 32) % 512;
        model.entry(fb).and_modify(|e| e.1 = Some(in_flight));
        let stored = read(&m.backing(&format!("w{w}")));
        for (&block, &(i, maybe)) in &model {
            let at = (block * WBLOCK) as usize;
            let got = stored.get(at..at + WBLOCK as usize).unwrap_or_else(|| {
                panic!("w{w}: block {block} (acknowledged write {i}) missing from STORAGE")
            });
            let want = stamped(w, round * 1_000_000 + i, WBLOCK);
            let alt = maybe.map(|j| stamped(w, round * 1_000_000 + j, WBLOCK));
            if got != want.as_slice() && alt.as_deref() != Some(got) {
                assert_same(
                    got,
                    &want,
                    &format!("w{w} block {block}: acknowledged write {i}"),
                );
            }
        }
        assert!(
            a.fsynced.len() <= a.written.len() && !a.fsynced.is_empty(),
            "w{w}: no fsynced write"
        );
        models.push(stored);
    }

    // Restart on the dead mountpoint.
    assert!(
        is_fuse_mounted(&m.mnt),
        "the killed daemon left no dead mount?"
    );
    let pid_file = m.dir.path().join("pid2");
    let mut guard = MountGuard::new(&m.mnt);
    let r = run_deadline(
        Command::new(common::bin())
            .arg("mount")
            .arg(&m.storage)
            .arg(&m.mnt)
            .args(["--daemon", "--clear-stale", "--pid-file"])
            .arg(&pid_file),
        Duration::from_secs(30),
    );
    assert_eq!(r.code(), 0, "remount with --clear-stale: {r:?}");
    guard.pid = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    for (w, stored) in models.iter().enumerate() {
        let name = format!("w{w}");
        assert_same(&read(&m.host(&name)), stored, "host view after restart");
        assert_same(
            &read(&m.device().join(&name)),
            stored,
            "device view after restart",
        );
    }
    assert_serving(&m, "after-restart");
    drop(guard);
}

// ----- faults: changes behind the mount's back ---------------------------------------------

const FILES: u32 = 4;
const TRUNC_LEN: u64 = 64 * KIB;

/// Size of version `v` of a file: several huge pages, varying, never page aligned.
fn version_len(v: u64) -> u64 {
    (1 + v % 3) * 2 * MIB + 4096 * (v % 7) + 100
}

/// Checks one whole-file read: every byte is one version's; the length is
/// that version's, or (after an in-place truncate) between TRUNC_LEN and it.
/// What a whole-file read of a stamped file returned.
enum WholeRead {
    /// One whole version (possibly cut by an in-place truncate).
    Version,
    /// One version with zero pages inside the part an in-place truncate of that version cut
    /// off: FUSE's short-read handling (see `external_changes_during_reads`).
    CutToZeros,
}

/// Checks a whole-file read: one version, cut at most to `TRUNC_LEN`. Pages of zeros past
/// `TRUNC_LEN` are accepted (as `WholeRead::CutToZeros`) only where `truncated(v)` says an
/// in-place truncate cut version `v`; any other byte must be version `v`'s.
fn check_version(
    file: u32,
    got: &[u8],
    truncated: impl Fn(u64) -> bool,
) -> Result<WholeRead, String> {
    if got.len() < 16 {
        return Err(format!(
            "f{file}: read {} bytes (no version header)",
            got.len()
        ));
    }
    let v = page_version(got);
    let full = version_len(v);
    let len = got.len() as u64;
    if len != full && !(TRUNC_LEN..=full).contains(&len) {
        return Err(format!(
            "f{file}: version {v} read with {len} bytes (full {full})"
        ));
    }
    let want = stamped(file, v, len);
    if got != want.as_slice() {
        let d = first_diff(got, &want);
        let only_cut_zeros = got
            .chunks(4096)
            .zip(want.chunks(4096))
            .enumerate()
            .filter(|(_, (g, w))| g != w)
            .all(|(i, (g, _))| i as u64 * 4096 >= TRUNC_LEN && g.iter().all(|&b| b == 0));
        if only_cut_zeros && truncated(v) {
            return Ok(WholeRead::CutToZeros);
        }
        let other = page_version(&got[d / 4096 * 4096..]);
        return Err(format!(
            "f{file}: version {v} with a foreign byte at {d} (that page claims version {other}, {len} bytes read; pages: {})",
            page_runs(got)
        ));
    }
    Ok(WholeRead::Version)
}

fn place_version(storage: &Path, file: u32, v: u64) {
    let tmp = storage.join(format!(".tmp-f{file}"));
    fs::write(&tmp, stamped(file, v, version_len(v))).unwrap();
    fs::rename(&tmp, storage.join(format!("f{file}"))).unwrap();
}

/// Backing files replaced, truncated, deleted, renamed and chmod'ed in STORAGE
/// while readers read them through the mount: every read returns one complete
/// version (stamped content detects any mix, zeros or stale pages); errors are
/// only ENOENT/ESTALE/EIO; the daemon keeps serving.
///
/// One exception, host view only: a read racing an in-place truncate of the version it
/// reads may show zero pages *inside the part the truncate cut off* (never in the bytes it
/// kept, never another version's bytes). The daemon answers a read request past the new
/// end short, and the kernel's FUSE client zero-fills the rest of the request's pages and
/// caches them; when the watcher's invalidation of the file landed while the request was
/// in flight, the kernel keeps its old size and hands those zeros to readers, with pages
/// it read before the truncate after them. A plain reader of ext4 sees zeros there too
/// (ext4 zeroes the cut part of a large folio in place). The device view answers from the
/// tier, which never installs a short fill, so it stays strict.
fn external_changes_during_reads(view_device: bool) {
    let secs = if long() { 30 } else { 3 };
    // Host view: daemon-served reads. A passthrough read is a read of STORAGE, and on ext4
    // a read racing an in-place truncate can return zeros inside the old length (the
    // truncated part of a large folio is zeroed in place): a plain reader of STORAGE saw
    // it in 42 of 2.07 M whole-file reads under 2783 truncates. README, Passthrough. The
    // device view's kernel-served reads read a shared-memory copy that the daemon cuts with
    // `ftruncate` when STORAGE is cut: its 2 MiB pages are zeroed past the cut the same way.
    let opts: &[&str] = if view_device {
        &["--device-capacity", "32MiB"]
    } else {
        &["--device-capacity", "32MiB", "--passthrough", "off"]
    };
    let m = guarded(opts, |s| {
        for f in 0..FILES {
            place_version(s, f, 0);
        }
    });
    let root = if view_device {
        m.device()
    } else {
        m.mnt.clone()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let zero_reads = Arc::new(AtomicU64::new(0));
    // (file, version) pairs an in-place truncate cut: the mutator adds one before it cuts.
    let cut: Arc<Mutex<HashSet<(u32, u64)>>> = Arc::default();
    let errors: Arc<Mutex<HashMap<i32, u64>>> = Arc::default();
    let mut readers = Vec::new();
    for r in 0..4u32 {
        let (root, stop, reads, zero_reads, cut, errors) = (
            root.clone(),
            stop.clone(),
            reads.clone(),
            zero_reads.clone(),
            cut.clone(),
            errors.clone(),
        );
        readers.push(std::thread::spawn(move || -> Result<(), String> {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let file = i % FILES;
                i += 1;
                let p = root.join(format!("f{file}"));
                // Alternate whole-file reads in big chunks and in 4 KiB reads.
                let got = File::open(&p).and_then(|mut f| {
                    let mut v = Vec::new();
                    if i % 2 == 0 {
                        f.read_to_end(&mut v)?;
                    } else {
                        let mut buf = [0u8; 4096];
                        loop {
                            let n = f.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            v.extend_from_slice(&buf[..n]);
                        }
                    }
                    Ok(v)
                });
                match got {
                    Ok(v) => {
                        let truncated = |ver| cut.lock().unwrap().contains(&(file, ver));
                        if let WholeRead::CutToZeros = check_version(file, &v, truncated)? {
                            zero_reads.fetch_add(1, Ordering::Relaxed);
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let n = os_err(&e);
                        if !matches!(n, libc::ENOENT | libc::ESTALE | libc::EIO) {
                            return Err(format!("f{file}: unexpected error {e}"));
                        }
                        *errors.lock().unwrap().entry(n).or_default() += 1;
                    }
                }
            }
            Ok(())
        }));
    }
    // The mutator works in STORAGE directly.
    let end = Instant::now() + Duration::from_secs(secs);
    let mut version = 1u64;
    let mut ops = [0u64; 5];
    // The version each file holds now.
    let mut current = [0u64; FILES as usize];
    while Instant::now() < end && readers.iter().all(|t| !t.is_finished()) {
        let file = (version % FILES as u64) as u32;
        let path = m.storage.join(format!("f{file}"));
        let op = (version / FILES as u64 % 5) as usize;
        match op {
            0 => {
                place_version(&m.storage, file, version);
                current[file as usize] = version;
            }
            1 => {
                // In place: the current version keeps its first TRUNC_LEN bytes.
                cut.lock().unwrap().insert((file, current[file as usize]));
                if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                    f.set_len(TRUNC_LEN).unwrap();
                }
            }
            2 => {
                let _ = fs::remove_file(&path);
                place_version(&m.storage, file, version);
                current[file as usize] = version;
            }
            3 => {
                let away = m.storage.join(format!("moved-f{file}"));
                let _ = fs::rename(&path, &away);
                place_version(&m.storage, file, version);
                current[file as usize] = version;
                let _ = fs::remove_file(&away);
            }
            _ => {
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o000));
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o644));
            }
        }
        ops[op] += 1;
        version += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in readers {
        assert!(
            wait_until(Duration::from_secs(60), || t.is_finished()),
            "reader hangs"
        );
        if let Err(e) = t.join().unwrap() {
            failures.push(e);
        }
    }
    let reads = reads.load(Ordering::Relaxed);
    eprintln!(
        "{}: {reads} whole-file reads ({} with zeros where a racing truncate cut), ops (replace, truncate, delete, rename, chmod) {ops:?}, errors {:?}",
        if view_device { "device" } else { "host" },
        zero_reads.load(Ordering::Relaxed),
        errors.lock().unwrap()
    );
    assert!(failures.is_empty(), "stale or mixed reads: {failures:#?}");
    assert!(reads > 0, "no read completed");
    // At rest, a fresh open of each file equals STORAGE in both views.
    for f in 0..FILES {
        let name = format!("f{f}");
        let want = read(&m.backing(&name));
        assert_same(&read(&m.device().join(&name)), &want, "device view at rest");
        assert_same(&read(&m.host(&name)), &want, "host view at rest");
    }
    assert_serving(&m, "after-external");
}

#[test]
fn external_changes_during_device_reads_never_show_stale_or_mixed_bytes() {
    external_changes_during_reads(true);
}

#[test]
fn external_changes_during_host_reads_never_show_stale_or_mixed_bytes() {
    external_changes_during_reads(false);
}

// ----- faults: memory and leaks -----------------------------------------------------------

/// The daemon's RSS stays within the tier's capacity plus 64 MiB while it reads
/// a dataset four times the tier (twice).
#[test]
fn rss_stays_within_capacity_plus_constant() {
    const SLACK: u64 = 64 * MIB;
    let cap = 64 * MIB;
    let (files, passes) = if long() { (64, 4) } else { (16, 2) };
    let file_len = 16 * MIB;
    let m = guarded(&["--device-capacity", "64MiB"], |s| {
        for f in 0..files {
            fs::write(s.join(format!("d{f}")), stamped(f, 1, file_len)).unwrap();
        }
    });
    let pid = m.pid().unwrap();
    let base = rss(pid);
    let mut peak = base;
    let mut buf = vec![0u8; MIB as usize];
    for pass in 0..passes {
        for f in 0..files {
            let mut h = File::open(m.device().join(format!("d{f}"))).unwrap();
            let mut off = 0u64;
            loop {
                let n = h.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                if off == 0 {
                    // Spot-check content (cheap): the first page of each file.
                    let mut p = vec![0u8; 4096];
                    stamp_page(f, 1, 0, &mut p);
                    assert_same(&buf[..4096], &p, "first page");
                }
                off += n as u64;
            }
            assert_eq!(off, file_len, "pass {pass} d{f}");
            peak = peak.max(rss(pid));
        }
    }
    let s = settled(&m);
    eprintln!(
        "RSS: start {} MiB, peak {} MiB; evictions {}",
        base / MIB,
        peak / MIB,
        s.device.evictions
    );
    // The tier may evict or refuse admission (scan resistance): either way the
    // reads pushed several capacities through the device view.
    assert!(
        s.device.bytes_served >= 4 * cap,
        "device view served only {} bytes",
        s.device.bytes_served
    );
    assert!(
        peak <= cap + SLACK,
        "daemon RSS peaked at {} MiB > capacity {} MiB + {} MiB",
        peak / MIB,
        cap / MIB,
        SLACK / MIB
    );
    assert_stats_at_rest(&s, "after RSS run");
}

/// Many open/close, create/unlink, lookup/forget and mkdir/rmdir cycles leave
/// no descriptor, inode or handle behind once the kernel forgets.
#[test]
fn no_fd_inode_or_handle_leak_after_many_cycles() {
    let cycles = if long() { 20_000 } else { 2_000 };
    let m = guarded(&[], |s| {
        fs::create_dir(s.join("many")).unwrap();
        for i in 0..300 {
            fs::write(s.join(format!("many/f{i}")), [i as u8; 10]).unwrap();
        }
    });
    let pid = m.pid().unwrap();
    let settle = || {
        drop_dentries();
        let s = m.stats();
        (s.inodes, s.open_handles, fd_count(pid))
    };
    let base = settle();
    for i in 0..cycles {
        let name = format!("c{}", i % 97);
        // create, write, read in both views, unlink
        fs::write(m.host(&name), b"x").unwrap();
        let _ = read(&m.host(&name));
        let _ = read(&m.device().join(&name));
        fs::remove_file(m.host(&name)).unwrap();
        // lookups of a missing name, of existing files in both views
        assert!(fs::metadata(m.host("missing")).is_err());
        let _ = fs::metadata(m.host(&format!("many/f{}", i % 300))).unwrap();
        let _ = fs::metadata(m.device().join(format!("many/f{}", (i * 7) % 300))).unwrap();
        if i % 10 == 0 {
            fs::create_dir(m.host("dir")).unwrap();
            fs::remove_dir(m.host("dir")).unwrap();
            let _ = fs::read_dir(m.device().join("many")).unwrap().count();
        }
        // an opened and dropped file of STORAGE under the mount
        if i % 3 == 0 {
            let f = File::open(m.host(&format!("many/f{}", i % 300))).unwrap();
            let g = File::open(m.device().join(format!("many/f{}", i % 300))).unwrap();
            drop((f, g));
        }
    }
    let during = settle();
    let mut last = during;
    let back = wait_until(Duration::from_secs(30), || {
        last = settle();
        last.0 <= base.0 + 4 && last.1 == base.1 && last.2 <= base.2 + 4
    });
    assert!(
        back,
        "after {cycles} cycles and dropped dentries: (inodes, open_handles, fds) = {last:?}, baseline {base:?} (before forgetting: {during:?})"
    );
    assert_serving(&m, "after-cycles");
}

// ----- bad input: parsers ----------------------------------------------------------------

mod parsers {
    use pagetier::{ByteRange, ByteSize, MountArgs, parse_capacity, parse_size, settings};
    use proptest::prelude::*;

    fn args(o: &str) -> MountArgs {
        MountArgs {
            options: vec![o.to_string()],
            ..Default::default()
        }
    }

    /// Strings near the grammar: digits, dots, dashes, suffixes, spaces,
    /// commas, `=`, NULs and non-ASCII.
    fn near_size() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                "[0-9]{1,25}",
                Just(".".to_string()),
                Just("-".to_string()),
                Just(" ".to_string()),
                Just("\0".to_string()),
                "(?i)(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib|p|e|x)",
                "\\PC{0,3}",
                Just("\u{130}".to_string()), // İ: lower-cases to two chars
                Just("\u{212A}".to_string()), // Kelvin sign K
                Just("١".to_string()),       // Arabic-Indic digit one
            ],
            0..8,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn size_parsers_never_panic(s in prop_oneof![near_size(), any::<String>()]) {
            let a = parse_size(&s);
            let c = parse_capacity(&s);
            // capacity is size with a floor of one 2 MiB chunk
            match (&a, &c) {
                (Ok(v), Ok(w)) => prop_assert!(v == w && *w >= 2 << 20),
                (Ok(v), Err(_)) => prop_assert!(*v < 2 << 20),
                (Err(_), Ok(_)) => prop_assert!(false, "capacity accepted what size refused: {s:?}"),
                (Err(e), Err(_)) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn size_round_trips(v in any::<u64>(), spaces in " {0,2}", i in 0usize..5) {
            prop_assert_eq!(parse_size(&format!("{spaces}{v}{spaces}")), Ok(v));
            prop_assert_eq!(ByteSize(v).to_string().parse::<ByteSize>(), Ok(ByteSize(v)));
            let (suf, mult) = [("B", 1u128), ("KiB", 1 << 10), ("m", 1 << 20), ("GB", 1 << 30), ("t", 1 << 40)][i];
            let want = v as u128 * mult;
            let got = parse_size(&format!("{v}{suf}"));
            if want <= u64::MAX as u128 {
                prop_assert_eq!(got, Ok(want as u64));
            } else {
                prop_assert!(got.is_err(), "{v}{suf} overflowed to {got:?}");
            }
        }

        #[test]
        fn range_parser_never_panics(s in prop_oneof![near_size(), any::<String>()], raw in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(r) = ByteRange::parse(&s)
                && let Some(e) = r.end_inclusive
            {
                prop_assert!(r.start <= e, "{s:?} parsed reversed: {r:?}");
            }
            let _ = ByteRange::parse_bytes(&raw);
            let _ = s.parse::<ByteRange>();
        }

        #[test]
        fn range_round_trips(a in any::<u64>(), b in any::<u64>(), open in any::<bool>()) {
            let text = if open {
                format!("{}-", ByteSize(a))
            } else {
                format!("{}-{}", ByteSize(a), ByteSize(b))
            };
            let r = ByteRange::parse(&text);
            if open {
                prop_assert_eq!(r, Ok(ByteRange { start: a, end_inclusive: None }));
            } else if a <= b {
                prop_assert_eq!(r.clone(), Ok(ByteRange { start: a, end_inclusive: Some(b) }));
                // and the NUL-terminated xattr form of it
                let mut bytes = text.clone().into_bytes();
                bytes.push(0);
                prop_assert_eq!(ByteRange::parse_bytes(&bytes), r);
            } else {
                prop_assert!(r.is_err(), "{text:?} reversed but accepted");
            }
        }

        #[test]
        fn mount_options_never_panic(
            opts in proptest::collection::vec(
                prop_oneof![
                    "(threads|device_capacity|huge_pages|control_dir|log_level|policy|ro|allow_other|clear_stale|rw|nosuid|x-foo|comment)(=\\PC{0,12})?",
                    any::<String>(),
                ],
                0..6,
            )
        ) {
            let joined = opts.join(",");
            if let Ok(s) = settings(&args(&joined), 4) {
                prop_assert!((1..=256).contains(&s.threads));
                prop_assert!(s.device_capacity >= 2 << 20);
                prop_assert!(!s.control_dir.is_empty() && !s.control_dir.contains('/'));
            }
        }

        #[test]
        fn mount_options_round_trip(
            threads in 1u16..=256,
            cap_mib in 2u64..1_000_000,
            huge in any::<bool>(),
            ro in any::<bool>(),
            dir in "[A-Za-z0-9_.-]{1,40}",
        ) {
            prop_assume!(dir != "." && dir != "..");
            let o = format!(
                "threads={threads},device_capacity={cap_mib}MiB,huge_pages={},control_dir={dir}{}",
                if huge { "on" } else { "off" },
                if ro { ",ro" } else { "" }
            );
            let s = settings(&args(&o), 4).map_err(|e| TestCaseError::fail(format!("{o}: {e}")))?;
            prop_assert_eq!(s.threads, threads);
            prop_assert_eq!(s.device_capacity, cap_mib << 20);
            prop_assert_eq!(s.huge_pages, huge);
            prop_assert_eq!(s.read_only, ro);
            prop_assert_eq!(s.control_dir, dir);
        }
    }
}

// ----- bad input: through a mount ----------------------------------------------------------

/// A result as a comparable value: Ok(n) or the errno.
fn outcome<T>(r: io::Result<T>, f: impl FnOnce(T) -> i64) -> Result<i64, String> {
    r.map(f).map_err(|e| errname(os_err(&e)))
}

/// Every byte 1..=255 except '/' in a name: created through the host view,
/// the same names exist in STORAGE, list back through both views, and read
/// back with the right contents. 255-byte names work, 256 is ENAMETOOLONG.
#[test]
fn hostile_names_round_trip() {
    let m = guarded(&[], |_| {});
    let mut want = BTreeSet::new();
    for b in 1u8..=255 {
        if b == b'/' {
            continue;
        }
        // "." and ".." name the directories themselves.
        let mut names = vec![vec![b'n', b, b'x']];
        if b != b'.' {
            names.extend([vec![b], vec![b, b]]);
        }
        for n in names {
            let name = OsStr::from_bytes(&n);
            fs::write(m.mnt.join(name), &n).unwrap_or_else(|e| panic!("create {n:?}: {e}"));
            want.insert(n);
        }
    }
    let listed = |d: &Path| -> BTreeSet<Vec<u8>> {
        fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect()
    };
    assert_eq!(listed(&m.storage), want, "names in STORAGE");
    assert_eq!(listed(&m.mnt), want, "names listed by the host view");
    assert_eq!(listed(&m.device()), want, "names listed by the device view");
    for n in &want {
        let name = OsStr::from_bytes(n);
        assert_eq!(
            &read(&m.storage.join(name)),
            n,
            "content in STORAGE of {n:?}"
        );
        assert_eq!(&read(&m.device().join(name)), n, "device read of {n:?}");
    }
    // Name lengths, compared with a plain directory.
    let plain = tempfile::tempdir().unwrap();
    for (len, expect_ok) in [(255usize, true), (256, false), (1000, false)] {
        let name = "é".repeat(len / 2) + &"a".repeat(len % 2);
        assert_eq!(name.len(), len);
        let on_mount = outcome(File::create(m.mnt.join(&name)), |_| 0);
        let on_plain = outcome(File::create(plain.path().join(&name)), |_| 0);
        assert_eq!(on_mount, on_plain, "create with a {len}-byte name");
        assert_eq!(on_mount.is_ok(), expect_ok, "{len}-byte name: {on_mount:?}");
        if !expect_ok {
            assert_eq!(on_mount, Err(errname(libc::ENAMETOOLONG)));
            let lookup = outcome(fs::metadata(m.device().join(&name)), |_| 0);
            assert_eq!(
                lookup,
                Err(errname(libc::ENAMETOOLONG)),
                "device lookup, {len} bytes"
            );
        } else {
            assert!(m.storage.join(&name).exists());
        }
    }
    assert_serving(&m, "after-names");
}

/// Paths of 4095 bytes (PATH_MAX - 1) work through the mount; 4096 gets
/// ENAMETOOLONG, as in a plain directory.
#[test]
fn longest_paths_work() {
    let m = guarded(&[], |_| {});
    let plain = tempfile::tempdir().unwrap();
    for root in [m.mnt.clone(), plain.path().to_path_buf()] {
        let dir = File::open(&root).unwrap();
        let comp = "d".repeat(250);
        let mut rel = String::new();
        while rel.len() + comp.len() + 1 + 10 < 4095 {
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(&comp);
            rustix::fs::mkdirat(&dir, rel.as_str(), rustix::fs::Mode::from_raw_mode(0o755))
                .unwrap_or_else(|e| panic!("mkdir {} deep: {e}", rel.len()));
        }
        let file = format!("{rel}/{}", "f".repeat(4095 - rel.len() - 1));
        assert_eq!(file.len(), 4095);
        let fd = rustix::fs::openat(
            &dir,
            file.as_str(),
            rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap_or_else(|e| panic!("create a 4095-byte path under {}: {e}", root.display()));
        rustix::io::write(&fd, b"deep").unwrap();
        drop(fd);
        let too_long = format!("{file}g");
        let e = rustix::fs::openat(
            &dir,
            too_long.as_str(),
            rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .expect_err("4096-byte path");
        assert_eq!(e.raw_os_error(), libc::ENAMETOOLONG, "{}", root.display());
    }
    // What went through the host view is in STORAGE; the device view reads it.
    let dir = File::open(m.device()).unwrap();
    let mut found = None;
    for e in walk(&m.storage) {
        if e.file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b"fff"))
        {
            found = Some(e);
        }
    }
    let found = found.expect("deep file in STORAGE");
    let rel = found.strip_prefix(&m.storage).unwrap();
    assert_eq!(rel.as_os_str().len(), 4095);
    let sdir = File::open(&m.storage).unwrap();
    let fd = rustix::fs::openat(
        &sdir,
        rel,
        rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .expect("open the deep file in STORAGE");
    let mut buf = [0u8; 8];
    assert_eq!(rustix::io::read(&fd, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"deep", "STORAGE holds what the host view wrote");
    let fd = rustix::fs::openat(
        &dir,
        rel,
        rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .expect("open the deep file through the device view");
    let mut buf = [0u8; 8];
    assert_eq!(rustix::io::read(&fd, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"deep");
    assert_serving(&m, "after-paths");
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Offsets near i64::MAX, I/O past EOF, zero-length I/O, huge truncates: the
/// host view gives exactly what ext4 (a plain temp dir) gives; the device view
/// reads like ext4 reads; the daemon keeps serving.
#[test]
fn extreme_offsets_and_sizes_match_ext4() {
    let m = guarded(&[], |s| {
        fs::write(s.join("f"), stamped(9, 1, 10_000)).unwrap()
    });
    let plain = tempfile::tempdir().unwrap();
    fs::write(plain.path().join("f"), stamped(9, 1, 10_000)).unwrap();
    let offsets: [u64; 9] = [
        i64::MAX as u64,
        i64::MAX as u64 - 1,
        i64::MAX as u64 - 4095,
        1 << 62,
        1 << 44,
        (1 << 44) - 4096,
        1 << 40,
        10_000,
        20_000,
    ];
    let open = |root: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(root.join("f"))
            .unwrap()
    };
    let (fm, fp) = (open(&m.mnt), open(plain.path()));
    let dv = File::open(m.device().join("f")).unwrap();
    for &off in &offsets {
        for len in [0usize, 1, 4096] {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            let rm = outcome(fm.read_at(&mut a, off), |n| n as i64);
            let rp = outcome(fp.read_at(&mut b, off), |n| n as i64);
            assert_eq!(rm, rp, "pread({len} bytes at {off}) host view vs ext4");
            let rd = outcome(dv.read_at(&mut a, off), |n| n as i64);
            assert_eq!(rd, rp, "pread({len} bytes at {off}) device view vs ext4");
        }
    }
    // Writes: compare results and the resulting size; undo each one.
    for &off in &offsets {
        for len in [0usize, 1, 4096] {
            let data = vec![0xAB; len];
            let wm = outcome(fm.write_at(&data, off), |n| n as i64);
            let wp = outcome(fp.write_at(&data, off), |n| n as i64);
            assert_eq!(wm, wp, "pwrite({len} bytes at {off}) host view vs ext4");
            let (sm, sp) = (fm.metadata().unwrap().len(), fp.metadata().unwrap().len());
            assert_eq!(sm, sp, "size after pwrite({len} at {off})");
            assert_eq!(
                fs::metadata(m.backing("f")).unwrap().len(),
                sp,
                "STORAGE size"
            );
            if sm > 10_000 {
                // A device read of the hole and the written bytes.
                let mut buf = vec![1u8; 8192];
                let at = off.saturating_sub(4096);
                let n = dv.read_at(&mut buf, at).unwrap();
                let mut want = vec![0u8; 8192];
                let pn = fp.read_at(&mut want, at).unwrap();
                assert_eq!(
                    (n, &buf[..n]),
                    (pn, &want[..pn]),
                    "device read around {off}"
                );
                fm.set_len(10_000).unwrap();
                fp.set_len(10_000).unwrap();
            }
        }
    }
    for size in [i64::MAX as u64, 1 << 62, (1 << 44) + 1, 1 << 40, 0, 10_000] {
        let tm = outcome(fm.set_len(size), |_| 0);
        let tp = outcome(fp.set_len(size), |_| 0);
        assert_eq!(tm, tp, "ftruncate({size}) host view vs ext4");
    }
    // The untouched prefix is intact everywhere.
    fm.write_all_at(&stamped(9, 1, 10_000), 0).unwrap();
    let want = stamped(9, 1, 10_000);
    assert_same(
        &read(&m.device().join("f")),
        &want,
        "device view after extremes",
    );
    assert_same(&read(&m.backing("f")), &want, "STORAGE after extremes");
    assert_serving(&m, "after-offsets");
    assert_stats_at_rest(&settled(&m), "after offsets");
}

/// O_DIRECT with unaligned buffers, offsets and lengths through the host view:
/// ext4 refuses with EINVAL; through FUSE the kernel may accept. Either way
/// nothing crashes and STORAGE holds exactly what a successful write wrote.
#[test]
fn unaligned_o_direct_on_host_view_never_corrupts() {
    let base = stamped(10, 1, 64 * KIB);
    let m = guarded(&[], |s| {
        fs::write(s.join("f"), stamped(10, 1, 64 * KIB)).unwrap()
    });
    let plain = tempfile::tempdir().unwrap();
    fs::write(plain.path().join("f"), &base).unwrap();
    let mut model = base.clone();
    let backing = vec![0x5Au8; 20_000];
    for (off, len, shift) in [
        (1u64, 1000usize, 1usize),
        (4095, 5000, 3),
        (0, 4096, 7),
        (4096, 4096, 0),
    ] {
        let data = &backing[shift..shift + len];
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(p)
        };
        let plain_r = open(&plain.path().join("f")).and_then(|f| f.write_at(data, off));
        let mount_r = open(&m.host("f")).and_then(|f| f.write_at(data, off));
        eprintln!(
            "O_DIRECT write {len}@{off} (buffer +{shift}): ext4 {:?}, mount {:?}",
            outcome(plain_r, |n| n as i64),
            outcome(
                mount_r
                    .as_ref()
                    .map(|n| *n)
                    .map_err(|e| io::Error::from_raw_os_error(os_err(e))),
                |n| n as i64
            )
        );
        match mount_r {
            Ok(n) => model[off as usize..off as usize + n].copy_from_slice(&data[..n]),
            Err(e) => assert_eq!(os_err(&e), libc::EINVAL, "O_DIRECT write error: {e}"),
        }
        // Unaligned O_DIRECT reads.
        let mut buf = vec![0u8; len + shift];
        match open(&m.host("f")).and_then(|f| f.read_at(&mut buf[shift..], off)) {
            Ok(n) => assert_same(
                &buf[shift..shift + n],
                &model[off as usize..off as usize + n],
                "O_DIRECT read",
            ),
            Err(e) => assert_eq!(os_err(&e), libc::EINVAL, "O_DIRECT read error: {e}"),
        }
        assert_same(
            &read(&m.backing("f")),
            &model,
            "STORAGE after O_DIRECT write",
        );
        assert_same(
            &read(&m.device().join("f")),
            &model,
            "device view after O_DIRECT write",
        );
        assert_same(
            &read(&m.host("f")),
            &model,
            "host view after O_DIRECT write",
        );
    }
    assert_serving(&m, "after-odirect");
}

/// 64 KiB xattr values (the VFS maximum) and one byte more: the same result as
/// on ext4 (ENOSPC/E2BIG/ok); control xattrs answer size queries correctly.
#[test]
fn huge_xattr_values_match_ext4() {
    let m = guarded(&[], |s| fs::write(s.join("f"), b"x").unwrap());
    let plain = tempfile::tempdir().unwrap();
    fs::write(plain.path().join("f"), b"x").unwrap();
    for len in [4000usize, 65_536, 65_537, 1 << 20] {
        let v = vec![b'v'; len];
        let rm = outcome(xattr_set(&m.host("f"), "user.big", &v), |_| 0);
        let rp = outcome(xattr_set(&plain.path().join("f"), "user.big", &v), |_| 0);
        assert_eq!(rm, rp, "setxattr of {len} bytes: mount vs ext4");
        let dv = outcome(xattr_set(&m.device().join("f"), "user.big", &v), |_| 0);
        assert!(dv.is_err(), "setxattr through the device view succeeded");
        let get = |p: &Path| -> Result<i64, String> {
            let mut buf = vec![0u8; 70_000];
            outcome(
                rustix::fs::getxattr(p, "user.big", &mut buf).map_err(io::Error::from),
                |n| n as i64,
            )
        };
        assert_eq!(
            get(&m.host("f")),
            get(&plain.path().join("f")),
            "getxattr after {len}"
        );
        assert_eq!(
            get(&m.device().join("f")),
            get(&plain.path().join("f")),
            "device getxattr"
        );
    }
    // Size query then fetch of the residency control xattr.
    let r = residency(&m.device().join("f"));
    assert_eq!(r["size"], 1);
    // A too-small buffer gets ERANGE.
    let e = rustix::fs::getxattr(m.host("f"), "user.pagetier.residency", &mut [0u8; 3][..])
        .expect_err("3-byte buffer");
    assert_eq!(e.raw_os_error(), libc::ERANGE);
    // A 64 KiB prefetch value is malformed: EINVAL, not a crash.
    let e = xattr_set(&m.host("f"), "user.pagetier.prefetch", &vec![b'9'; 65_536]).unwrap_err();
    assert_eq!(os_err(&e), libc::EINVAL, "64 KiB prefetch range: {e}");
    assert_serving(&m, "after-xattrs");
}

fn raise_own_fd_limit(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let max = lim.maximum.unwrap_or(u64::MAX);
    assert!(
        max >= want,
        "hard fd limit {max} < {want}: raise it to run this test"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(max),
            maximum: lim.maximum,
        },
    )
    .unwrap();
}

/// 5000 files open at once through the mount all work (the daemon raises its
/// own limit); with the daemon's limit cut to 1024, opens beyond it fail with
/// EMFILE/ENFILE — never a crash — and once closed, everything is released and
/// opens work again.
#[test]
fn more_open_files_than_the_daemon_fd_limit() {
    const N: usize = 5000;
    raise_own_fd_limit(2 * N as u64 + 200);
    let m = guarded(&[], |s| {
        for i in 0..N {
            fs::write(s.join(format!("o{i}")), i.to_le_bytes()).unwrap();
        }
    });
    let pid = m.pid().unwrap();
    let base_handles = m.stats().open_handles;
    let mut open = Vec::with_capacity(N);
    for i in 0..N {
        let p = if i % 2 == 0 {
            m.host(&format!("o{i}"))
        } else {
            m.device().join(format!("o{i}"))
        };
        open.push(File::open(&p).unwrap_or_else(|e| panic!("open #{i} of {N}: {e}")));
    }
    assert_eq!(m.stats().open_handles, base_handles + N as u64);
    for (i, f) in open.iter().enumerate().step_by(97) {
        let mut b = [0u8; 8];
        assert_eq!(f.read_at(&mut b, 0).unwrap(), 8);
        assert_eq!(usize::from_le_bytes(b), i);
    }
    drop(open);
    assert!(
        wait_until(Duration::from_secs(20), || m.stats().open_handles
            == base_handles),
        "handles not released after close: {}",
        m.stats()
    );

    // Now cut the daemon's limit below what the test will open.
    let daemon = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let lim = rustix::process::Rlimit {
        current: Some(1024),
        maximum: Some(1024),
    };
    rustix::process::prlimit(Some(daemon), rustix::process::Resource::Nofile, lim)
        .expect("prlimit on the daemon");
    let mut open = Vec::new();
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..3000 {
        match File::open(m.host(&format!("o{i}"))) {
            Ok(f) => open.push(f),
            Err(e) => {
                let n = os_err(&e);
                assert!(
                    matches!(n, libc::EMFILE | libc::ENFILE),
                    "open #{i} past the daemon's fd limit: {e}"
                );
                *refused.entry(errname(n)).or_default() += 1;
            }
        }
    }
    eprintln!(
        "with a 1024-fd daemon: {} opens ok, refused {refused:?}",
        open.len()
    );
    assert!(!refused.is_empty(), "3000 opens fit in a 1024-fd daemon?");
    // Still serving (reads of what is open, the stats file).
    for f in open.iter().step_by(50) {
        let mut b = [0u8; 8];
        f.read_at(&mut b, 0)
            .expect("read an open file at the fd limit");
    }
    drop(open);
    assert!(
        wait_until(Duration::from_secs(20), || {
            drop_dentries();
            m.stats().open_handles == base_handles
        }),
        "handles not released: {}",
        m.stats()
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            drop_dentries();
            fd_count(pid) < 1000
        }),
        "daemon holds {} fds after everything was closed and forgotten",
        fd_count(pid)
    );
    assert_serving(&m, "after-emfile");
}

// ----- load ---------------------------------------------------------------------------------

/// fio, 16 jobs for a fixed time: 8 write (verify=crc32c, verified at the end
/// through the host view) while 8 read the same files through the device
/// view. Then both views equal STORAGE byte for byte (no stale device page
/// survived the overwrites) and the counters add up.
#[test]
fn fio_mixed_host_writes_and_device_reads() {
    let runtime = if long() { 60 } else { 10 };
    let m = guarded(&["--device-capacity", "128MiB"], |_| {});
    let job = m.dir.path().join("mixed.fio");
    let mut text = format!(
        "[global]\nioengine=psync\nsize=16m\nbs=64k\nruntime={runtime}\ntime_based=1\n\
         group_reporting=0\n"
    );
    for j in 0..8 {
        let file = format!("load{j}");
        text += &format!(
            "[write{j}]\nfilename={}\nrw=randwrite\nverify=crc32c\ndo_verify=1\n\
             verify_fatal=1\nverify_state_save=0\nfsync=16\nrandseed={}\n",
            m.host(&file).display(),
            1000 + j
        );
    }
    // Preallocate so device readers have full files from the start.
    for j in 0..8 {
        fs::write(m.host(&format!("load{j}")), vec![0u8; 16 * MIB as usize]).unwrap();
    }
    for j in 0..8 {
        let file = format!("load{j}");
        text += &format!(
            "[read{j}]\nfilename={}\nrw=randread\nbs=4k,64k\nbsrange=4k-256k\ndirect=0\nrandseed={}\n",
            m.device().join(&file).display(),
            2000 + j
        );
    }
    fs::write(&job, text).unwrap();
    let out = m.dir.path().join("fio.json");
    let r = run_deadline(
        Command::new("fio")
            .arg(&job)
            .arg("--output-format=json")
            .arg(format!("--output={}", out.display())),
        Duration::from_secs(runtime + 240),
    );
    let report: Value = fs::read_to_string(&out)
        .ok()
        .and_then(|t| serde_json::from_str(&t[t.find('{').unwrap_or(0)..]).ok())
        .unwrap_or(Value::Null);
    assert_eq!(r.code(), 0, "fio failed: {r:?}\n{report}");
    let mut dev_read_bytes = 0;
    for job in report["jobs"].as_array().expect("fio jobs") {
        let name = job["jobname"].as_str().unwrap();
        assert_eq!(job["error"], 0, "fio job {name}: error {}", job["error"]);
        if name.starts_with("read") {
            dev_read_bytes += job["read"]["io_bytes"].as_u64().unwrap();
        }
    }
    assert!(dev_read_bytes > 0, "device readers read nothing");
    let s0 = settled(&m);
    assert_stats_at_rest(&s0, "after fio");
    assert!(
        s0.device.bytes_served >= dev_read_bytes,
        "bytes_served {} < bytes fio read through the device view {dev_read_bytes}",
        s0.device.bytes_served
    );
    assert!(
        s0.device.hits + s0.device.misses >= s0.device.reads / 2,
        "page lookups fewer than device reads: {s0}"
    );
    assert!(
        s0.invalidations.write > 0,
        "writes invalidated nothing: {s0}"
    );
    // Full compare at rest, and the counters of exactly these reads.
    let mut read_bytes = 0u64;
    let mut reads_with_data = 0u64;
    for j in 0..8 {
        let name = format!("load{j}");
        let want = read(&m.backing(&name));
        let mut f = File::open(m.device().join(&name)).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 256 * KIB as usize];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            reads_with_data += 1;
            got.extend_from_slice(&buf[..n]);
        }
        read_bytes += got.len() as u64;
        assert_same(
            &got,
            &want,
            &format!("{name}: device view vs STORAGE after load"),
        );
        assert_same(
            &read(&m.host(&name)),
            &want,
            &format!("{name}: host view vs STORAGE"),
        );
    }
    let s1 = settled(&m);
    assert_eq!(
        s1.device.bytes_served - s0.device.bytes_served,
        read_bytes,
        "bytes_served counts exactly the bytes device reads returned"
    );
    let lookups = s1.device.hits + s1.device.misses - s0.device.hits - s0.device.misses;
    assert!(
        lookups >= reads_with_data,
        "{lookups} page lookups for {reads_with_data} device reads with data"
    );
    assert!(
        s1.device.reads - s0.device.reads >= reads_with_data,
        "device reads counter"
    );
    assert_stats_at_rest(&s1, "after compare");
}

/// Linearizability of device reads under concurrent host writes: a device
/// read that starts after a host write returned sees that write (or a later
/// one), never an older version of any page.
#[test]
fn device_reads_are_never_older_than_completed_writes() {
    const PAGES: u64 = 1024; // 4 MiB per file
    const WFILES: u32 = 4;
    let secs = if long() { 60 } else { 5 };
    let m = guarded(&["--device-capacity", "64MiB"], |s| {
        for f in 0..WFILES {
            let mut v = vec![0u8; (PAGES * 4096) as usize];
            for p in 0..PAGES {
                stamp_page(f, 0, p, &mut v[(p * 4096) as usize..][..4096]);
            }
            fs::write(s.join(format!("lin{f}")), v).unwrap();
        }
    });
    // completed[f][p]: the latest version whose write has returned.
    let completed: Arc<Vec<Vec<AtomicU64>>> = Arc::new(
        (0..WFILES)
            .map(|_| (0..PAGES).map(|_| AtomicU64::new(0)).collect())
            .collect(),
    );
    let issued = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..WFILES {
        let (completed, issued, stop) = (completed.clone(), issued.clone(), stop.clone());
        let path = m.host(&format!("lin{w}"));
        threads.push(std::thread::spawn(move || -> Result<u64, String> {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| e.to_string())?;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let v = issued.fetch_add(1, Ordering::SeqCst);
                let first = splitmix(v) % PAGES;
                let count = (1 + splitmix(v ^ 1) % 32).min(PAGES - first);
                let mut buf = vec![0u8; (count * 4096) as usize];
                for i in 0..count {
                    stamp_page(w, v, first + i, &mut buf[(i * 4096) as usize..][..4096]);
                }
                f.write_all_at(&buf, first * 4096)
                    .map_err(|e| e.to_string())?;
                for i in 0..count {
                    completed[w as usize][(first + i) as usize].fetch_max(v, Ordering::SeqCst);
                }
                n += 1;
            }
            Ok(n)
        }));
    }
    for r in 0..8u32 {
        let (completed, issued, stop) = (completed.clone(), issued.clone(), stop.clone());
        let dev_root = m.device();
        threads.push(std::thread::spawn(move || -> Result<u64, String> {
            let files: Vec<File> = (0..WFILES)
                .map(|f| File::open(dev_root.join(format!("lin{f}"))).unwrap())
                .collect();
            let mut n = 0u64;
            let mut i = r as u64 * 7919;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let file = (splitmix(i) % WFILES as u64) as usize;
                let first = splitmix(i ^ 2) % PAGES;
                let count = (1 + splitmix(i ^ 3) % 64).min(PAGES - first);
                // What had completed before this read started.
                let floor: Vec<u64> = (first..first + count)
                    .map(|p| completed[file][p as usize].load(Ordering::SeqCst))
                    .collect();
                let mut buf = vec![0u8; (count * 4096) as usize];
                let got = files[file]
                    .read_at(&mut buf, first * 4096)
                    .map_err(|e| format!("device read: {e}"))?;
                if got != buf.len() {
                    return Err(format!("short device read {got} of {}", buf.len()));
                }
                let ceiling = issued.load(Ordering::SeqCst);
                for (k, page) in buf.chunks_exact(4096).enumerate() {
                    let p = first + k as u64;
                    let v = page_version(page);
                    let mut want = vec![0u8; 4096];
                    stamp_page(file as u32, v, p, &mut want);
                    if page != want.as_slice() {
                        return Err(format!("lin{file} page {p}: torn or foreign content (claims v{v})"));
                    }
                    if v < floor[k] || v > ceiling {
                        return Err(format!(
                            "lin{file} page {p}: STALE device read: version {v}, but version {} had completed before the read started",
                            floor[k]
                        ));
                    }
                }
                n += 1;
            }
            Ok(n)
        }));
    }
    let end = Instant::now() + Duration::from_secs(secs);
    wait_until(Duration::from_secs(secs + 1), || {
        Instant::now() >= end || threads.iter().any(|t| t.is_finished())
    });
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    let mut counts = Vec::new();
    for t in threads {
        assert!(
            wait_until(Duration::from_secs(60), || t.is_finished()),
            "thread hangs"
        );
        match t.join().unwrap() {
            Ok(n) => counts.push(n),
            Err(e) => errors.push(e),
        }
    }
    eprintln!("ops per thread (4 writers, 8 readers): {counts:?}");
    assert!(errors.is_empty(), "{errors:#?}");
    for f in 0..WFILES {
        let name = format!("lin{f}");
        let want = read(&m.backing(&name));
        assert_same(&read(&m.device().join(&name)), &want, "device at rest");
    }
    assert_stats_at_rest(&settled(&m), "after linearizability run");
}
