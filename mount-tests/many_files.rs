//! Many files through one mount: the daemon holds no descriptor per inode the
//! kernel knows (live inodes keep a file handle, `src/inode.rs`), so an epoch
//! over more files than the descriptor limit (a hard 20,000 here) succeeds and
//! the daemon's descriptor count stays small; and the inode table gives its
//! entries back when the kernel forgets them.
//!
//! Every mount is owned by a guard that unmounts it on drop, also on panic;
//! waits poll a condition until a deadline. Runs as root (CI does).

mod common;
mod util;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Mounted, wait_until};

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
