//! Device-view metadata coherence. The kernel caches device-view entries and attributes as
//! long as the host view's (`--cache-timeout`: a day on a local STORAGE whose every change
//! the watcher sees); a change made through the host view must show in the device view as
//! soon as the host call returns, and a change made to STORAGE behind the mount's back as
//! soon as the watcher reports it.
//!
//! Each check looks first, so that the kernel holds the old entry or attributes, changes
//! through the host view, then looks again at once: no poll, because the guarantee is
//! "before the host call returns". Only changes behind the mount's back and pages of a
//! device-view mmap are polled for, with a deadline.

mod common;
mod util;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use common::{Mounted, wait_until};
use util::{free_port, http_get, pattern, run_deadline, sample};

/// How long an eventually-true condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// Rounds of every check: a missed notification may depend on timing.
const ROUNDS: usize = 8;

fn dstat(m: &Mounted, rel: &str) -> io::Result<fs::Metadata> {
    fs::symlink_metadata(m.device().join(rel))
}

fn gone(r: io::Result<fs::Metadata>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::NotFound)
}

/// The stats count the notifications the test's changes made.
fn assert_notifications_counted(m: &Mounted) {
    let s = m.stats();
    assert!(
        s.notifications.sent > 0,
        "no device-view notification was counted: {:?}",
        s.notifications
    );
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn host_changes_show_at_once_in_the_device_view() {
    let m = Mounted::new();
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    for r in 0..ROUNDS {
        // Size: append, then truncate.
        let a = format!("a{r}.bin");
        fs::write(m.host(&a), pattern(1000, 1)).unwrap();
        check(
            dstat(&m, &a).unwrap().len() == 1000,
            format!("{a}: first size"),
        );
        let mut f = OpenOptions::new().append(true).open(m.host(&a)).unwrap();
        f.write_all(&pattern(500, 2)).unwrap();
        drop(f);
        let size = dstat(&m, &a).unwrap().len();
        check(
            size == 1500,
            format!("{a}: device size {size} after a host append to 1500"),
        );
        let got = fs::read(m.device().join(&a)).unwrap();
        check(
            got.len() == 1500,
            format!("{a}: device read {} bytes, want 1500", got.len()),
        );
        File::options()
            .write(true)
            .open(m.host(&a))
            .unwrap()
            .set_len(10)
            .unwrap();
        let size = dstat(&m, &a).unwrap().len();
        check(
            size == 10,
            format!("{a}: device size {size} after a host truncate to 10"),
        );

        // Mode and times.
        fs::set_permissions(m.host(&a), fs::Permissions::from_mode(0o600)).unwrap();
        let mode = dstat(&m, &a).unwrap().mode() & 0o7777;
        check(
            mode == 0o600,
            format!("{a}: device mode {mode:o} after chmod 600"),
        );
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + r as u64);
        File::options()
            .write(true)
            .open(m.host(&a))
            .unwrap()
            .set_modified(when)
            .unwrap();
        let mtime = dstat(&m, &a).unwrap().modified().unwrap();
        check(
            mtime == when,
            format!("{a}: device mtime {mtime:?} after setting {when:?}"),
        );

        // Names: unlink, rename over, link, create where a lookup failed.
        let (b, c, d) = (format!("b{r}"), format!("c{r}"), format!("d{r}"));
        fs::write(m.host(&b), b"bb").unwrap();
        fs::write(m.host(&c), b"ccc").unwrap();
        fs::write(m.host(&d), b"dddd").unwrap();
        let b_ino = dstat(&m, &b).unwrap().ino();
        dstat(&m, &c).unwrap();
        dstat(&m, &d).unwrap();
        fs::remove_file(m.host(&d)).unwrap();
        check(
            gone(dstat(&m, &d)),
            format!("{d}: device still has it after a host unlink"),
        );
        fs::rename(m.host(&b), m.host(&c)).unwrap();
        check(
            gone(dstat(&m, &b)),
            format!("{b}: device still has it after a host rename away"),
        );
        match dstat(&m, &c) {
            Ok(st) => check(
                st.ino() == b_ino && st.len() == 2,
                format!("{c}: device shows the replaced file after a host rename over it"),
            ),
            Err(e) => check(false, format!("{c}: device stat after rename over it: {e}")),
        }
        fs::hard_link(m.host(&c), m.host(&format!("{c}.link"))).unwrap();
        let nlink = dstat(&m, &c).unwrap().nlink();
        check(
            nlink == 2,
            format!("{c}: device nlink {nlink} after a host link"),
        );
        let e = format!("e{r}");
        check(
            gone(dstat(&m, &e)),
            format!("{e}: exists before it was made"),
        );
        fs::write(m.host(&e), b"e").unwrap();
        check(
            dstat(&m, &e).is_ok(),
            format!("{e}: device misses a file the host made"),
        );

        // Directories: rename one, remove one.
        let (dir, moved, empty) = (format!("dir{r}"), format!("moved{r}"), format!("empty{r}"));
        fs::create_dir(m.host(&dir)).unwrap();
        fs::write(m.host(&format!("{dir}/x")), b"x").unwrap();
        fs::create_dir(m.host(&empty)).unwrap();
        dstat(&m, &format!("{dir}/x")).unwrap();
        dstat(&m, &empty).unwrap();
        fs::rename(m.host(&dir), m.host(&moved)).unwrap();
        check(
            gone(dstat(&m, &format!("{dir}/x"))),
            format!("{dir}/x: device still has it after the host renamed {dir}"),
        );
        check(
            dstat(&m, &format!("{moved}/x")).is_ok(),
            format!("{moved}/x: device misses it after the host renamed {dir}"),
        );
        fs::remove_dir(m.host(&empty)).unwrap();
        check(
            gone(dstat(&m, &empty)),
            format!("{empty}: device still has it after rmdir"),
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_notifications_counted(&m);
}

#[test]
fn device_view_metadata_is_answered_from_the_kernel_cache() {
    let port = free_port();
    let m = Mounted::with(&["--metrics-addr", &port.to_string()], |s| {
        fs::create_dir(s.join("train")).unwrap();
        fs::write(s.join("train/shard"), pattern(8192, 3)).unwrap();
    });
    let path = m.device().join("train/shard");
    for _ in 0..100 {
        fs::symlink_metadata(&path).unwrap();
        let f = File::open(&path).unwrap();
        f.metadata().unwrap();
        drop(f);
    }
    // A request is counted just after its reply: wait for the last open to show.
    let count = |op: &str, view: &str| {
        let (_, body) = http_get(port, "/metrics");
        let series =
            format!("pagetier_request_duration_seconds_count{{op=\"{op}\",view=\"{view}\"}}");
        sample(&body, &series).unwrap_or(0.0)
    };
    assert!(
        wait_until(DEADLINE, || count("open", "device") >= 100.0),
        "every open reaches the daemon"
    );
    // 100 path walks, stats and fstats: a few requests unless the kernel cached nothing
    // (a second-long stall of this machine may expire an entry once or twice).
    let asked = count("lookup", "device") + count("getattr", "device");
    assert!(
        asked < 50.0,
        "{asked} device-view lookups and getattrs for 100 opens"
    );
    assert_eq!(
        count("flush", "device"),
        0.0,
        "a device-view close has nothing to flush"
    );
    // Nor has a read-only host-view close; a writable one is flushed.
    let host = m.host("train/shard");
    for _ in 0..10 {
        drop(File::open(&host).unwrap());
    }
    drop(OpenOptions::new().write(true).open(&host).unwrap());
    assert!(wait_until(DEADLINE, || count("flush", "host") >= 1.0));
    assert_eq!(
        count("flush", "host"),
        1.0,
        "FLUSHes for 10 read-only and 1 writable host closes"
    );
}

/// Rounds of create, rename, unlink under device-view lookups. With one worker most
/// notifications wait out `notify::WAIT` (20 ms): about 60 ms a round.
const ROUNDS_UNDER_LOOKUPS: usize = 100;

#[test]
fn host_changes_under_busy_device_lookups_never_hang() {
    // One worker: a notification that waits for a kernel lock held by a device-view lookup
    // must not keep that lookup from being served.
    let m = Mounted::with(&["--threads", "1"], |s| {
        fs::create_dir(s.join("d")).unwrap()
    });
    let host_dir = m.host("d");
    let dev_dir = m.device().join("d");
    let done = Arc::new(AtomicBool::new(false));
    let looker = {
        let (dev_dir, done) = (dev_dir.clone(), done.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !done.load(Ordering::Relaxed) {
                for n in [format!("f{i}"), format!("g{i}")] {
                    let _ = fs::symlink_metadata(dev_dir.join(n));
                }
                if i.is_multiple_of(16) {
                    let _ = fs::read_dir(&dev_dir).map(|d| d.count());
                }
                i = (i + 1) % ROUNDS_UNDER_LOOKUPS;
            }
        })
    };
    let (tx, rx) = mpsc::channel();
    {
        let host_dir = host_dir.clone();
        std::thread::spawn(move || {
            for i in 0..ROUNDS_UNDER_LOOKUPS {
                let r = (|| -> io::Result<()> {
                    fs::write(host_dir.join(format!("f{i}")), [i as u8])?;
                    fs::rename(
                        host_dir.join(format!("f{i}")),
                        host_dir.join(format!("g{i}")),
                    )?;
                    if i > 0 {
                        fs::remove_file(host_dir.join(format!("g{}", i - 1)))?;
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    let _ = tx.send(Err(format!("round {i}: {e}")));
                    return;
                }
            }
            let _ = tx.send(Ok(()));
        });
    }
    let outcome = rx.recv_timeout(Duration::from_secs(120));
    done.store(true, Ordering::Relaxed);
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("host change failed: {e}"),
        Err(_) => panic!("host changes under device-view lookups hung for 120 s"),
    }
    looker.join().unwrap();
    assert_eq!(
        names(&dev_dir),
        names(&host_dir),
        "device view names after the run"
    );
    let last = format!("g{}", ROUNDS_UNDER_LOOKUPS - 1);
    assert_eq!(names(&dev_dir), BTreeSet::from([last]));
    assert_notifications_counted(&m);
}

#[test]
fn host_write_reaches_a_device_mmap() {
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("f.bin"), pattern(3 * 4096, 4)).unwrap()
    });
    let f = File::open(m.device().join("f.bin")).unwrap();
    // SAFETY: the map is read-only and lives only within this test; the file changes
    // underneath it only through the mount, which is the behaviour under test.
    let map = unsafe { memmap2::Mmap::map(&f) }.expect("mmap of a device-view file");
    assert_eq!(
        &map[..],
        &pattern(3 * 4096, 4)[..],
        "mapped bytes before the write"
    );
    let new = pattern(4096, 9);
    File::options()
        .write(true)
        .open(m.host("f.bin"))
        .unwrap()
        .write_all_at(&new, 4096)
        .unwrap();
    // Attributes are dropped before the write returns; mapped pages moments after (nobody
    // waits for them, so a busy writer does not pay a thread hand-off per write).
    assert!(
        wait_until(DEADLINE, || map[4096..8192] == new[..]),
        "the device mmap kept the overwritten bytes"
    );
    assert_eq!(
        &map[..4096],
        &pattern(3 * 4096, 4)[..4096],
        "untouched page"
    );
}

#[test]
fn changes_behind_the_mounts_back_show_within_the_ttl() {
    let m = Mounted::with(&[], |s| {
        fs::write(s.join("a"), b"a").unwrap();
        fs::write(s.join("b"), b"b").unwrap();
    });
    assert_eq!(dstat(&m, "a").unwrap().len(), 1);
    assert!(dstat(&m, "b").is_ok());
    fs::write(m.backing("a"), b"grown").unwrap();
    fs::remove_file(m.backing("b")).unwrap();
    assert!(
        wait_until(DEADLINE, || dstat(&m, "a").is_ok_and(|st| st.len() == 5)),
        "device size never caught up with an external write"
    );
    assert!(
        wait_until(DEADLINE, || gone(dstat(&m, "b"))),
        "device still lists an externally removed file"
    );
}

/// `rel` in the device view or the host view.
fn in_view(m: &Mounted, device: bool, rel: &str) -> PathBuf {
    if device {
        m.device().join(rel)
    } else {
        m.host(rel)
    }
}

/// An `O_PATH` descriptor of `path`: the kernel holds its inode (and the daemon its entry)
/// while nothing opens the file.
fn hold(path: PathBuf) -> File {
    File::options()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .unwrap()
}

/// Writes `bytes` to STORAGE's `b` until it gets inode number `ino`: whether it did within
/// a few seconds. ext4 hands a freed number to the next file made near it, once nothing holds
/// the old object; another process making files in the same block group may take it first,
/// so a caller tries again with a new object rather than fail.
fn reuse_number(m: &Mounted, b: &str, ino: u64, bytes: &[u8]) -> bool {
    wait_until(Duration::from_secs(3), || {
        let _ = fs::remove_file(m.backing(b));
        fs::write(m.backing(b), bytes).unwrap();
        fs::metadata(m.backing(b)).unwrap().ino() == ino
    })
}

/// Tries a scenario that needs STORAGE to reuse an inode number: a few times, since another
/// process may take the number first (`reuse_number`).
const REUSE_TRIES: usize = 5;

/// STORAGE (ext4) reuses a freed inode number at once. While the kernel still holds the old
/// object (here through an `O_PATH` descriptor, as it holds a cached dentry of an old name
/// until an invalidation lands), a new object with the same number is looked up through the
/// mount: reopening the old object must fail or give the old bytes, never the new object's,
/// and the new name reads the new bytes. In both views; the device view reads the old object
/// first, so that the tier holds pages of it.
#[test]
fn a_reused_inode_number_never_reaches_the_new_object_through_the_old_one() {
    let m = Mounted::with(&[], |_| {});
    let (old_bytes, new_bytes) = (pattern(64 * 1024, 31), pattern(64 * 1024, 32));
    let mut problems = Vec::new();
    for device in [false, true] {
        let view = |rel: &str| in_view(&m, device, rel);
        let mut reused = 0;
        for round in 0..ROUNDS {
            let at = format!("device view {device}, round {round}");
            let a = format!("a{round}-{device}");
            fs::write(m.backing(&a), &old_bytes).unwrap();
            let seen = || {
                if device {
                    fs::read(view(&a)).is_ok_and(|got| got == old_bytes)
                } else {
                    fs::metadata(view(&a)).is_ok_and(|st| st.len() == old_bytes.len() as u64)
                }
            };
            assert!(wait_until(DEADLINE, seen), "{at}: {a} never showed");
            let held = hold(view(&a));
            let old_ino = fs::metadata(m.backing(&a)).unwrap().ino();
            fs::remove_file(m.backing(&a)).unwrap();
            let b = format!("b{round}-{device}");
            if !reuse_number(&m, &b, old_ino, &new_bytes) {
                continue;
            }
            reused += 1;
            let new_read = fs::read(view(&b));
            if !new_read.as_ref().is_ok_and(|got| *got == new_bytes) {
                problems.push(format!(
                    "{at}: the new name read {:?} bytes, not its own",
                    new_read.map(|g| g.len())
                ));
            }
            match fs::read(format!("/proc/self/fd/{}", held.as_raw_fd())) {
                Ok(got) if got == new_bytes => problems.push(format!(
                    "{at}: the old object reopened reads the new object's bytes"
                )),
                Ok(got) if got != old_bytes => problems.push(format!(
                    "{at}: the old object reopened reads {} other bytes",
                    got.len()
                )),
                _ => {}
            }
        }
        assert!(
            reused > 0,
            "device view {device}: STORAGE never reused an inode number in {ROUNDS} rounds; the test needs a filesystem that does (ext4)"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// An inode number reused twice: A's id is live when B comes (B gets an id of its own), then
/// the kernel forgets A, B is deleted and C takes A's id back. A change to C behind the
/// mount's back must reach the kernel's cached attributes of C's id, not of B's.
#[test]
fn a_reused_number_taken_back_follows_changes_behind_the_mount() {
    let m = Mounted::with(&[], |_| {});
    // Everything but A stays held, so that the only inode the kernel may forget (here, or
    // in a `drop_caches` of a test running alongside) is A.
    let mut keep = Vec::new();
    for device in [false, true] {
        let view = |rel: &str| in_view(&m, device, rel);
        let tag = if device { "dev" } else { "host" };
        let mut done = false;
        for t in 0..REUSE_TRIES {
            let (a, b, c) = (
                format!("A-{tag}{t}"),
                format!("B-{tag}{t}"),
                format!("C-{tag}{t}"),
            );
            fs::write(m.backing(&a), pattern(1000, 41)).unwrap();
            assert!(wait_until(DEADLINE, || fs::symlink_metadata(view(&a)).is_ok()));
            let held_a = hold(view(&a));
            let a_ino = fs::metadata(m.backing(&a)).unwrap().ino();
            let a_view_ino = fs::metadata(view(&a)).unwrap().ino();
            fs::remove_file(m.backing(&a)).unwrap();
            if !reuse_number(&m, &b, a_ino, &pattern(2000, 40)) {
                continue;
            }
            let b_view_ino = fs::metadata(view(&b)).unwrap().ino();
            assert_ne!(b_view_ino, a_view_ino, "{tag}: B while A is live");
            keep.push(hold(view(&b)));
            // The kernel forgets A once nothing holds it (its name was invalidated already).
            let before = m.stats().inodes;
            drop(held_a);
            assert!(
                wait_until(DEADLINE, || m.stats().inodes < before),
                "{tag}: the kernel never forgot A"
            );
            fs::remove_file(m.backing(&b)).unwrap();
            if !reuse_number(&m, &c, a_ino, &pattern(3000, 40)) {
                continue;
            }
            let st = fs::metadata(view(&c)).unwrap();
            assert_eq!(
                (st.ino(), st.len()),
                (a_view_ino, 3000),
                "{tag}: C takes A's id back"
            );
            keep.push(hold(view(&c)));
            // Changed behind the mount's back: the watcher must reach C's id.
            fs::write(m.backing(&c), pattern(5000, 42)).unwrap();
            assert!(
                wait_until(DEADLINE, || fs::symlink_metadata(view(&c))
                    .is_ok_and(|st| st.len() == 5000)),
                "{tag}: C's size never caught up with a change behind the mount's back: {:?}",
                fs::symlink_metadata(view(&c)).map(|st| st.len())
            );
            assert_eq!(
                fs::read(view(&c)).unwrap(),
                pattern(5000, 42),
                "{tag}: C's bytes"
            );
            done = true;
            break;
        }
        assert!(
            done,
            "{tag}: STORAGE never reused an inode number in {REUSE_TRIES} tries; the test needs a filesystem that does (ext4)"
        );
    }
}

/// With the default cache timeout, a local STORAGE's names and attributes are cached for a
/// day: every external change must reach the kernel through the watcher, attribute-only
/// changes (`chmod`, `touch -d`) too, and also below a directory made behind the mount's back
/// in a directory the kernel had forgotten.
#[test]
fn external_changes_show_under_long_cache_timeouts() {
    let m = Mounted::with(&[], |s| {
        fs::create_dir(s.join("p")).unwrap();
        fs::write(s.join("p/f"), b"one").unwrap();
        fs::write(s.join("q"), b"q").unwrap();
    });
    let q = File::open(m.host("q")).unwrap();
    assert_eq!(q.metadata().unwrap().len(), 1);
    let idle_inodes = m.stats().inodes;
    assert!(
        wait_until(DEADLINE, || m.log_text().contains("every change watched")),
        "the long cache timeout is not in force:\n{}",
        m.log_text()
    );
    let mode = |p: &Path| fs::metadata(p).map(|st| st.permissions().mode() & 0o777);
    assert_eq!(
        mode(&m.host("p/f")).unwrap(),
        mode(&m.backing("p/f")).unwrap()
    );
    assert!(dstat(&m, "p/f").is_ok());
    fs::set_permissions(m.backing("p/f"), fs::Permissions::from_mode(0o640)).unwrap();
    assert!(
        wait_until(DEADLINE, || mode(&m.host("p/f")).is_ok_and(|x| x == 0o640)
            && dstat(&m, "p/f")
                .is_ok_and(|st| st.permissions().mode() & 0o777 == 0o640)),
        "an external chmod never reached the kernel"
    );
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(m.backing("p/f"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    assert!(
        wait_until(DEADLINE, || fs::metadata(m.host("p/f"))
            .and_then(|st| st.modified())
            .is_ok_and(|t| t == when)),
        "an external mtime change never reached the kernel"
    );

    // The kernel forgets `p` (nothing holds it), then a directory appears in it.
    assert!(
        wait_until(DEADLINE, || {
            let _ = fs::write("/proc/sys/vm/drop_caches", "2");
            m.stats().inodes <= idle_inodes
        }),
        "the kernel never forgot p"
    );
    fs::create_dir(m.backing("p/new")).unwrap();
    fs::write(m.backing("p/new/g"), b"1").unwrap();
    // The watcher handles events in order: once this later change shows, it has handled
    // the directory's creation, before anything looked `p` up again.
    fs::write(m.backing("q"), b"22").unwrap();
    assert!(
        wait_until(DEADLINE, || fs::metadata(m.host("q"))
            .is_ok_and(|st| st.len() == 2)),
        "an external write never showed"
    );
    assert!(
        wait_until(DEADLINE, || fs::metadata(m.host("p/new/g"))
            .is_ok_and(|st| st.len() == 1)),
        "a file made behind the mount's back never showed"
    );
    fs::write(m.backing("p/new/g"), b"123").unwrap();
    // `stat(2)`, not `statx` with a birth time, which the kernel may always ask the daemon for.
    let size = |p: &Path| rustix::fs::stat(p).map(|st| st.st_size);
    assert!(
        wait_until(DEADLINE, || size(&m.host("p/new/g")).is_ok_and(|n| n == 3)),
        "a change below a directory made behind the mount's back was never reported"
    );
    assert_eq!(fs::read(m.host("p/new/g")).unwrap(), b"123");
}

/// `--cache-timeout 0`: nothing is cached, every path walk asks the daemon; by default the
/// kernel asks once.
#[test]
fn cache_timeout_zero_caches_nothing() {
    for (opts, fresh) in [(&["--cache-timeout", "0"][..], true), (&[][..], false)] {
        let port = free_port();
        let port_s = port.to_string();
        let opts: Vec<&str> = opts
            .iter()
            .copied()
            .chain(["--metrics-addr", &port_s])
            .collect();
        let m = Mounted::with(&opts, |s| {
            fs::write(s.join("a"), b"a").unwrap();
        });
        for _ in 0..20 {
            assert_eq!(fs::symlink_metadata(m.host("a")).unwrap().len(), 1);
        }
        let lookups = || {
            let (_, body) = http_get(port, "/metrics");
            sample(
                &body,
                "pagetier_request_duration_seconds_count{op=\"lookup\",view=\"host\"}",
            )
            .unwrap_or(0.0)
        };
        // A request is counted just after its reply: wait for the last one to show.
        if fresh {
            assert!(
                wait_until(DEADLINE, || lookups() >= 20.0),
                "{} lookups for 20 path walks, nothing cached",
                lookups()
            );
        } else {
            let n = lookups();
            assert!(n <= 2.0, "{n} lookups for 20 path walks, default timeout");
        }
    }
}

/// Rounds of `mkdir -p` + `cd` + `getcwd` in a fresh child under directory churn, and the
/// time they may take in all.
const CWD_ROUNDS: usize = 300;
const CWD_BUDGET: Duration = Duration::from_secs(90);

/// Creates and removes directories in `dir` until `stop` is set: `width` at a time, so
/// that every pass makes `2 * width` entry events.
fn churn_dirs(
    dir: std::path::PathBuf,
    width: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    fs::create_dir_all(&dir).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            for i in 0..width {
                let _ = fs::create_dir(dir.join(format!("d{i}")));
            }
            for i in 0..width {
                let _ = fs::remove_dir(dir.join(format!("d{i}")));
            }
        }
    })
}

/// `mkdir -p MNT/a/b && cd MNT/a/b && git init` must never fail with "unable to get current
/// working directory" while other processes create and remove directories, through the
/// host view and in STORAGE. A change made through the mount is already known to the
/// kernel: telling it again (from the watcher's inotify event) unhashes the dentry the
/// process has just entered, and its `getcwd` fails with ENOENT.
#[test]
fn getcwd_works_in_a_directory_just_made_under_directory_churn() {
    let m = Mounted::new();
    let stop = Arc::new(AtomicBool::new(false));
    let churners = [
        churn_dirs(m.host("churn-host"), 16, stop.clone()),
        churn_dirs(m.backing("churn-storage"), 16, stop.clone()),
    ];
    let start = Instant::now();
    let mut rounds = 0;
    let mut failures = Vec::new();
    while rounds < CWD_ROUNDS && start.elapsed() < CWD_BUDGET {
        let dir = m.host(&format!("r{rounds}/a/b"));
        // `realpath .` resolves a relative name from getcwd(3) and fails if it fails.
        let out = run_deadline(
            Command::new("sh")
                .arg("-c")
                .arg(r#"mkdir -p "$1" && cd "$1" && realpath ."#)
                .arg("sh")
                .arg(&dir),
            DEADLINE,
        );
        if out.code() != 0 || out.stdout.trim_end() != dir.to_str().unwrap() {
            failures.push(format!(
                "round {rounds}: exit {}, stdout {:?}, stderr {:?}",
                out.code(),
                out.stdout,
                out.stderr
            ));
        }
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for c in churners {
        c.join().unwrap();
    }
    assert!(
        rounds >= 50,
        "only {rounds} rounds ran within {CWD_BUDGET:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {rounds} rounds could not get their working directory; first: {}",
        failures.len(),
        failures[0]
    );
}
