//! Many files through one mount: the daemon holds no descriptor per inode the
//! kernel knows (live inodes keep a file handle, `src/inode.rs`), so an epoch
//! over more files than the descriptor limit (a hard 20,000 here) succeeds and
//! the daemon's descriptor count stays small; and the inode table gives its
//! entries back when the kernel forgets them. A directory of 100,000 entries
//! lists exactly (every name once, small `getdents64` buffers, a seek back to
//! a cookie of the listing continues it) through both views, and the client
//! tools walk a tree (`residency -r`, `prefetch -r`).
//!
//! Every mount is owned by a guard that unmounts it on drop, also on panic;
//! waits poll a condition until a deadline. Runs as root (CI does).

mod common;
mod util;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Mounted, bin, wait_until};

const DIRS: usize = 30;
const FILES_PER_DIR: usize = 1000;
/// The daemon's descriptors may never come near the limit (20,000 here).
const FD_BOUND: usize = 1000;

fn rel(d: usize, i: usize) -> String {
    format!("d{d:02}/f{i:04}")
}

/// Each file's bytes: small, and different for every file.
fn content(d: usize, i: usize) -> Vec<u8> {
    format!("file {d}/{i}: {}\n", "x".repeat((d * 7 + i) % 97)).into_bytes()
}

fn fill(storage: &Path) {
    for d in 0..DIRS {
        fs::create_dir(storage.join(format!("d{d:02}"))).unwrap();
        for i in 0..FILES_PER_DIR {
            fs::write(storage.join(rel(d, i)), content(d, i)).unwrap();
        }
    }
}

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

/// The daemon's (VmRSS, RssAnon) in KiB: all resident memory, and the part
/// that is not the binary's and libraries' pages.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// Asks the kernel to drop unused dentries and inodes, so it sends FORGETs.
fn drop_dentries() {
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
}

#[test]
fn an_epoch_over_more_files_than_the_fd_limit_holds_no_fd_per_inode() {
    let started = Instant::now();
    let m = util::Guarded::new(Mounted::with(&[], fill));
    let pid = m.pid().unwrap();
    let idle_inodes = m.stats().inodes;
    // The code paths of a lookup and a forget run once before "idle" is measured.
    for i in 0..100 {
        fs::metadata(m.host(&rel(0, i))).unwrap();
    }
    let mut live = 0;
    let forgotten = |live: &mut u64| {
        wait_until(Duration::from_secs(20), || {
            drop_dentries();
            *live = m.stats().inodes;
            *live <= idle_inodes + 8
        })
    };
    assert!(forgotten(&mut live), "{live} inodes live after drop_caches");
    let idle_rss = rss_kib(pid);
    let mut max_fds = fd_count(pid);
    let total = DIRS * FILES_PER_DIR;

    // Stat every file through the host view: the kernel looks each one up
    // and keeps it (until memory is short). Then it forgets them all, and the
    // table gives its entries back. Twice: what stays after the first time is
    // reused the second.
    for round in 1..=2 {
        let mut max_known = 0;
        for d in 0..DIRS {
            for i in 0..FILES_PER_DIR {
                let md = fs::metadata(m.host(&rel(d, i)))
                    .unwrap_or_else(|e| panic!("stat {}: {e}", rel(d, i)));
                assert_eq!(md.len(), content(d, i).len() as u64, "{}", rel(d, i));
            }
            max_fds = max_fds.max(fd_count(pid));
            max_known = max_known.max(m.stats().inodes);
        }
        let known_rss = rss_kib(pid);
        assert!(
            max_known > 20_000,
            "round {round}: the kernel held only {max_known} inodes at once"
        );
        assert!(
            forgotten(&mut live),
            "round {round}: after drop_caches {live} inodes are still live (idle {idle_inodes})"
        );
        let forgotten_rss = rss_kib(pid);
        eprintln!(
            "round {round}: daemon (VmRSS, RssAnon) KiB: idle {idle_rss:?}; {max_known} inodes \
             known {known_rss:?} ({} bytes of VmRSS per known inode); after the forgets \
             {forgotten_rss:?}",
            (known_rss.0.saturating_sub(idle_rss.0) * 1024) / max_known
        );
    }

    // Open, read and close every file through the host view (and stat it).
    let mut max_live = 0;
    for d in 0..DIRS {
        for i in 0..FILES_PER_DIR {
            let path = m.host(&rel(d, i));
            let got = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", rel(d, i)));
            assert!(got == content(d, i), "{}: bytes differ", rel(d, i));
            fs::metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", rel(d, i)));
        }
        max_fds = max_fds.max(fd_count(pid));
        max_live = max_live.max(m.stats().inodes);
    }
    // And every tenth through the device view.
    for d in 0..DIRS {
        for i in (d % 10..FILES_PER_DIR).step_by(10) {
            let path = m.device().join(rel(d, i));
            let got = fs::read(&path).unwrap_or_else(|e| panic!("device read {}: {e}", rel(d, i)));
            assert!(got == content(d, i), "device {}: bytes differ", rel(d, i));
        }
        max_fds = max_fds.max(fd_count(pid));
    }
    assert!(
        max_live > 20_000,
        "the kernel held only {max_live} inodes at once: more than the fd limit were meant"
    );
    max_fds = max_fds.max(fd_count(pid));
    assert!(
        max_fds < FD_BOUND,
        "the daemon held {max_fds} descriptors with {total} files known"
    );
    eprintln!(
        "at most {max_fds} daemon descriptors; {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}

/// A directory removed through the mount while it is a process's working
/// directory is held by nothing but the daemon: its inode, pinned at the
/// removal, still answers (stat: nlink 0; opendir: an empty listing)
/// instead of `ESTALE`.
/// An unlinked open file likewise.
#[test]
fn removed_objects_the_kernel_still_uses_answer() {
    let m = util::Guarded::new(Mounted::with(&[], |s| {
        fs::create_dir(s.join("d")).unwrap();
        fs::write(s.join("f"), b"still here").unwrap();
    }));
    let done = util::run_deadline(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"cd "$1" && rmdir "$1" && stat -c %h . && ls -a ."#)
            .arg("sh")
            .arg(m.host("d")),
        Duration::from_secs(30),
    );
    assert_eq!(done.code(), 0, "{done:?}");
    assert_eq!(
        done.stdout.split_whitespace().collect::<Vec<_>>(),
        ["0"],
        "nlink of the removed cwd, then its listing (empty: `.` and `..` are gone too): {done:?}"
    );
    let file = fs::File::open(m.host("f")).unwrap();
    fs::remove_file(m.host("f")).unwrap();
    let md = file.metadata().unwrap();
    assert_eq!(
        (md.nlink(), md.len()),
        (0, 10),
        "fstat of the unlinked open file"
    );
}

/// Entries of the big directory.
const BIG: usize = 100_000;

fn big_name(i: usize) -> String {
    format!("e{i:06}")
}

/// Lists `dir` with `getdents64` into a buffer of `buf_len` bytes (each call
/// continues at the cookie after the last entry it returned), from cookie `from`
/// (0: the start; else an `lseek` to it first).
/// Returns each entry's name and the cookie that continues after it, `.` and `..`
/// left out.
fn list(dir: &Path, buf_len: usize, from: u64) -> Vec<(String, u64)> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    if from != 0 {
        rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(from)).unwrap();
    }
    let mut buf = vec![std::mem::MaybeUninit::uninit(); buf_len];
    let mut raw = rustix::fs::RawDir::new(&fd, &mut buf);
    let mut out = Vec::new();
    while let Some(e) = raw.next() {
        let e = e.unwrap_or_else(|e| panic!("getdents64 {}: {e}", dir.display()));
        let name = e.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            out.push((name, e.next_entry_cookie()));
        }
    }
    out
}

/// Every name of `got` exactly once, and exactly the names of `want`.
fn assert_same_names(what: &str, got: &[(String, u64)], want: &[String]) {
    let mut names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(
        names.len(),
        before,
        "{what}: {} duplicate names",
        before - names.len()
    );
    let missing: Vec<_> = want
        .iter()
        .filter(|w| names.binary_search(&w.as_str()).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: {} names missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        names.len(),
        want.len(),
        "{what}: names that are not in STORAGE"
    );
}

#[test]
fn a_directory_of_100000_entries_lists_exactly_and_the_tools_walk_a_tree() {
    let started = Instant::now();
    let tree_files = |c: usize, i: usize| (format!("tree/c{c}/f{i:03}"), 1 + (c * 50 + i) * 331);
    let m = util::Guarded::new(Mounted::with(&["--device-capacity", "64MiB"], |s| {
        // Hard links to two empty files (ext4 allows 65,000 links to one): a link is a
        // third of the cost of a create.
        let big = s.join("big");
        fs::create_dir(&big).unwrap();
        for src in ["src0", "src1"] {
            fs::File::create(s.join(src)).unwrap();
        }
        for i in 0..BIG {
            fs::hard_link(s.join(["src0", "src1"][i % 2]), big.join(big_name(i))).unwrap();
        }
        for c in 0..4 {
            fs::create_dir_all(s.join(format!("tree/c{c}"))).unwrap();
            for i in 0..50 {
                let (p, len) = tree_files(c, i);
                fs::write(s.join(p), vec![c as u8 ^ i as u8; len]).unwrap();
            }
        }
    }));
    let made = started.elapsed();
    let want: Vec<String> = (0..BIG).map(big_name).collect();

    // The host view with getdents64 into 32 KiB (what glibc's readdir uses), keeping
    // the cookies; the device view through std::fs::read_dir.
    let t = Instant::now();
    let got = list(&m.host("big"), 32 << 10, 0);
    assert_same_names("host", &got, &want);
    eprintln!(
        "host: {} entries in {:.2} s",
        got.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let dev: Vec<(String, u64)> = fs::read_dir(m.device().join("big"))
        .unwrap()
        .map(|e| (e.unwrap().file_name().to_string_lossy().into_owned(), 0))
        .collect();
    assert_same_names("device", &dev, &want);
    eprintln!(
        "device: {} entries in {:.2} s",
        dev.len(),
        t.elapsed().as_secs_f64()
    );
    // Seeking to the cookie after entry K continues the listing with entry K + 1, also
    // with 1 KiB buffers (a dozen entries per call). Near the end: each request costs
    // the daemon the whole directory.
    let k = got.len() - 1000;
    let rest = list(&m.host("big"), 1024, got[k - 1].1);
    let names = |v: &[(String, u64)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert!(
        names(&rest) == names(&got[k..]),
        "the listing from the cookie of entry {k} ({} entries) is not the rest of the \
         listing ({} entries)",
        rest.len(),
        got.len() - k
    );
    let listed = started.elapsed();

    // The tools over a tree: nothing resident, then all of it, then again (all hits).
    let tool = |args: &[&str], path: &Path| {
        util::run_deadline(
            std::process::Command::new(bin()).args(args).arg(path),
            Duration::from_secs(60),
        )
    };
    let out = tool(&["residency", "-r"], &m.host("tree"));
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1 + 200 + 1, "{out:?}");
    assert!(out.stdout.contains("total: 200 file(s)"), "{out:?}");
    let out = tool(&["prefetch", "-r", "-j", "3"], &m.host("tree"));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("prefetched 200 file(s)"), "{out:?}");
    for c in 0..4 {
        for i in 0..50 {
            let (p, len) = tree_files(c, i);
            let mut buf = vec![0u8; 4096];
            let n =
                rustix::fs::getxattr(m.host(&p), "user.pagetier.residency", &mut buf[..]).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
            assert_eq!(
                v["resident_bytes"].as_u64(),
                Some((len as u64).div_ceil(4096) * 4096),
                "{p}: {v}"
            );
        }
    }
    let out = tool(&["prefetch", "-r"], &m.device().join("tree"));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("prefetched 200 file(s)"), "{out:?}");
    assert!(out.stdout.contains(" 0 B faulted"), "{out:?}");
    let out = tool(&["residency", "-r", "-j", "2"], &m.device().join("tree"));
    assert_eq!(out.code(), 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 202, "{out:?}");
    assert!(
        lines[1].ends_with("tree/c0/f000"),
        "files in name order: {out:?}"
    );
    assert!(
        lines[200].ends_with("tree/c3/f049"),
        "files in name order: {out:?}"
    );
    eprintln!(
        "made {BIG} entries in {:.1} s, listed in {:.1} s, tools in {:.1} s",
        made.as_secs_f64(),
        (listed - made).as_secs_f64(),
        (started.elapsed() - listed).as_secs_f64()
    );
}

/// Reads `f0`..`f{n}` under `root` once, checking each file's bytes.
fn read_all(root: &Path, n: usize) {
    for i in 0..n {
        let p = root.join(format!("f{i}"));
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            i.to_string(),
            "{}",
            p.display()
        );
    }
}

/// Worker parking (`--worker-parking auto`, the default): while one thread uses the mount
/// a worker parks and one serves alone; four threads at once bring it back (it parks again
/// afterwards, so `parks` grows); every byte read is right throughout and the unmount ends
/// the daemon with a worker parked. With `off` nobody parks.
#[test]
fn a_worker_parks_for_one_caller_and_comes_back_for_several() {
    const N: usize = 300;
    let prepare = |s: &Path| {
        for i in 0..N {
            fs::write(s.join(format!("f{i}")), i.to_string()).unwrap();
        }
    };
    let m = util::Guarded::new(Mounted::with(&["--threads", "2"], prepare));
    let host = m.host("");
    read_all(&host, N);
    read_all(&host.join(".pagetier/device"), N);
    let s = m.stats();
    assert!(s.workers.parking, "{:?}", s.workers);
    assert_eq!(s.workers.threads, 2);
    assert!(
        s.workers.parks >= 1,
        "one caller parked no worker: {:?}",
        s.workers
    );
    let before = s.workers.parks;
    let readers: Vec<_> = (0..4)
        .map(|t| {
            let root = if t % 2 == 0 {
                host.clone()
            } else {
                host.join(".pagetier/device")
            };
            std::thread::spawn(move || read_all(&root, N))
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    read_all(&host, N);
    read_all(&host, N);
    let after = m.stats().workers;
    assert!(
        after.parks > before,
        "no worker parked again after the four callers, so none came back for them: {after:?}"
    );
    drop(m);

    let m = util::Guarded::new(Mounted::with(
        &["--threads", "2", "--worker-parking", "off"],
        prepare,
    ));
    read_all(&m.host(""), N);
    let w = m.stats().workers;
    assert!(!w.parking && w.parks == 0, "{w:?}");
}

/// The daemon starts itself again with glibc's per-thread caches of freed chunks off: their
/// chunks pin pages that no trim returns, 1.5–2.5 MiB after the kernel forgot a million
/// inodes (`src/heap.rs`). The restarted daemon is the mount's (same pid as announced, same
/// arguments) and serves it.
#[test]
fn the_daemon_runs_without_glibc_thread_caches() {
    let m = util::Guarded::new(Mounted::with(&[], |s| {
        fs::write(s.join("a"), b"bytes").unwrap()
    }));
    let pid = m.pid().unwrap();
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let tunables: Vec<&[u8]> = environ
        .split(|&b| b == 0)
        .filter(|v| v.starts_with(b"GLIBC_TUNABLES="))
        .collect();
    assert_eq!(
        tunables,
        [b"GLIBC_TUNABLES=glibc.malloc.tcache_count=0".as_slice()],
        "the daemon's environment"
    );
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.split(|&b| b == 0).any(|a| a == b"mount"),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    assert_eq!(fs::read(m.host("a")).unwrap(), b"bytes");
}

/// The buffers that daemon-copied replies are read into are reused from one read to the
/// next, and go back to the system when the daemon trims its heap after the kernel forgot
/// many inodes: a daemon that once served large reads does not keep their buffers for life.
#[test]
fn reply_buffers_go_back_when_the_kernel_forgets() {
    const SMALL: usize = 400;
    let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    // Passthrough off: host-view reads are the daemon's, copied into a reply buffer.
    let m = util::Guarded::new(Mounted::with(&["--passthrough", "off"], |s| {
        fs::write(s.join("big"), &big).unwrap();
        for i in 0..SMALL {
            fs::write(s.join(format!("s{i:03}")), b"small").unwrap();
        }
    }));
    let idle_inodes = m.stats().inodes;
    assert_eq!(fs::read(m.host("big")).unwrap(), big);
    let kept = m.stats().workers.buffer_bytes;
    assert!(
        kept >= 4096,
        "{kept} bytes of reply buffers after a 4 MiB read"
    );

    // The kernel learns hundreds of inodes and forgets them: the table's trim frees the
    // buffers along with the heap's free pages.
    for i in 0..SMALL {
        fs::metadata(m.host(&format!("s{i:03}"))).unwrap();
    }
    let mut last = (0, 0);
    let freed = wait_until(Duration::from_secs(20), || {
        drop_dentries();
        let s = m.stats();
        last = (s.inodes, s.workers.buffer_bytes);
        s.inodes <= idle_inodes + 8 && s.workers.buffer_bytes == 0
    });
    assert!(
        freed,
        "(inodes, buffer bytes) {last:?} after drop_caches (idle inodes {idle_inodes}, buffers \
         {kept} bytes before)"
    );
    // And a read after that gets a buffer again.
    assert_eq!(fs::read(m.host("big")).unwrap(), big);
    assert!(m.stats().workers.buffer_bytes > 0);
}
