//! The host view (`MOUNTPOINT/…`) is a full read-write passthrough of STORAGE.
//!
//! Each test does an operation through the mount with real syscalls, then
//! compares with what STORAGE holds (contents, mode, owner, size, times,
//! xattrs, link counts) and with what the mount reports, and checks that
//! errors are the backing filesystem's errnos. `differential_against_plain_dir`
//! runs generated operation sequences on the mount and on a plain temp dir and
//! requires identical results.
//!
//! Runs as root (CI does); `--allow-other` mounts let a uid-65534 child act.

mod common;
mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{
    DirBuilderExt, DirEntryExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
    symlink,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Mounted, wait_until};
use rustix::fs::{
    AtFlags, CWD, FallocateFlags, FileType, Mode, OFlags, RenameFlags, Timespec, Timestamps,
    UTIME_NOW, UTIME_OMIT, XattrFlags,
};
use util::{assert_errno, errno_of, pattern, rerrno_of};

const MIB: u64 = 1 << 20;

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

fn perm(md: &fs::Metadata) -> u32 {
    md.mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// The process umask, read without changing it (tests share the process).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("Umask line");
    u32::from_str_radix(line.trim(), 8).unwrap()
}

fn ts(sec: i64, nsec: i64) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Asks the kernel to forget unused dentries and inodes, so the next lookup
/// goes to the daemon again (after FUSE FORGETs).
fn drop_kernel_caches() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
}

fn xattr_get(p: &Path, name: &str) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

fn xattr_list(p: &Path) -> BTreeSet<String> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..])
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", p.display()));
    buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// Tree snapshots: what a directory tree looks like, for comparing the mount
// with STORAGE (or with a plain reference directory).

#[derive(Debug, PartialEq, Eq, Clone)]
struct Node {
    kind: &'static str,
    perm: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    /// None for directories when sizes are not compared.
    size: Option<u64>,
    rdev: u64,
    /// (mtime, mtime_nsec, ctime, ctime_nsec), only when times are compared.
    times: Option<(i64, i64, i64, i64)>,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
}

struct Snapshot {
    nodes: BTreeMap<String, Node>,
    /// For each path, the other paths that are the same inode.
    same_inode: BTreeMap<String, BTreeSet<String>>,
    /// Entries whose readdir d_ino differed from their lstat st_ino.
    dino_mismatch: Vec<String>,
}

fn kind_of(ft: fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "chardev"
    } else if ft.is_block_device() {
        "blockdev"
    } else {
        "unknown"
    }
}

fn snapshot(root: &Path, with_times: bool, dir_sizes: bool) -> Snapshot {
    let mut nodes = BTreeMap::new();
    let mut inos: BTreeMap<String, u64> = BTreeMap::new();
    let mut dino_mismatch = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display())) {
            let e = e.unwrap();
            let rel_child = rel.join(e.file_name());
            let key = rel_child.to_string_lossy().into_owned();
            let path = e.path();
            let md = lstat(&path);
            if e.ino() != md.ino() {
                dino_mismatch.push(format!("{key}: d_ino {} st_ino {}", e.ino(), md.ino()));
            }
            let kind = kind_of(md.file_type());
            let content = (kind == "file").then(|| fs::read(&path).unwrap());
            let target = (kind == "symlink").then(|| fs::read_link(&path).unwrap());
            if kind == "dir" {
                stack.push(rel_child.clone());
            }
            inos.insert(key.clone(), md.ino());
            nodes.insert(
                key,
                Node {
                    kind,
                    perm: perm(&md),
                    uid: md.uid(),
                    gid: md.gid(),
                    nlink: md.nlink(),
                    size: (kind != "dir" || dir_sizes).then(|| md.size()),
                    rdev: md.rdev(),
                    times: with_times
                        .then(|| (md.mtime(), md.mtime_nsec(), md.ctime(), md.ctime_nsec())),
                    content,
                    target,
                },
            );
        }
    }
    let same_inode = inos
        .iter()
        .map(|(k, ino)| {
            let others = inos
                .iter()
                .filter(|(k2, i2)| *k2 != k && *i2 == ino)
                .map(|(k2, _)| k2.clone())
                .collect();
            (k.clone(), others)
        })
        .collect();
    Snapshot {
        nodes,
        same_inode,
        dino_mismatch,
    }
}

#[track_caller]
fn assert_same_tree(mount_side: &Path, reference: &Path, with_times: bool) {
    let m = snapshot(mount_side, with_times, true);
    let r = snapshot(reference, with_times, true);
    assert!(
        m.dino_mismatch.is_empty(),
        "readdir inode numbers differ from lookup inode numbers through the mount: {:?}",
        m.dino_mismatch
    );
    let mk: Vec<_> = m.nodes.keys().collect();
    let rk: Vec<_> = r.nodes.keys().collect();
    assert_eq!(mk, rk, "names through the mount vs in STORAGE");
    for (k, node) in &m.nodes {
        assert_eq!(node, &r.nodes[k], "{k}: through the mount vs in STORAGE");
    }
    assert_eq!(
        m.same_inode, r.same_inode,
        "hard-link groups through the mount vs in STORAGE"
    );
}

// ---------------------------------------------------------------------------
// Data path

#[test]
fn create_write_read_round_trip() {
    let m = util::Guarded::new(Mounted::new());
    let data = pattern(300_000, 7);
    fs::write(m.host("f"), &data).unwrap();
    assert_eq!(fs::read(m.backing("f")).unwrap(), data, "STORAGE content");
    assert_eq!(fs::read(m.host("f")).unwrap(), data, "content via mount");
    assert_eq!(lstat(&m.host("f")).len(), data.len() as u64);
    assert_eq!(lstat(&m.backing("f")).len(), data.len() as u64);

    // pwrite in the middle, not page aligned.
    let f = OpenOptions::new().write(true).open(m.host("f")).unwrap();
    f.write_all_at(b"hello", 100_001).unwrap();
    drop(f);
    let mut want = data.clone();
    want[100_001..100_006].copy_from_slice(b"hello");
    assert_eq!(fs::read(m.backing("f")).unwrap(), want, "after pwrite");

    // O_APPEND appends at the end, whatever the file offset.
    let mut f = OpenOptions::new().append(true).open(m.host("f")).unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    want.extend_from_slice(b"tail");
    assert_eq!(fs::read(m.backing("f")).unwrap(), want, "after O_APPEND");
    assert_eq!(fs::read(m.host("f")).unwrap(), want);

    // O_TRUNC empties it in STORAGE.
    drop(
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.host("f"))
            .unwrap(),
    );
    assert_eq!(lstat(&m.backing("f")).len(), 0, "O_TRUNC in STORAGE");
    assert_eq!(lstat(&m.host("f")).len(), 0);
}

#[test]
fn read_and_seek_files_from_storage() {
    let data = pattern(3 * MIB as usize + 17, 3);
    let m = mounted_with(&[], |s| fs::write(s.join("big"), &data).unwrap());
    let mut f = File::open(m.host("big")).unwrap();
    let mut all = Vec::new();
    f.read_to_end(&mut all).unwrap();
    assert!(all == data, "sequential read differs from STORAGE");
    for &(off, len) in &[
        (0u64, 1usize),
        (4095, 2),
        (MIB - 7, 4096 * 3),
        (3 * MIB, 17),
    ] {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off).unwrap();
        assert_eq!(
            buf,
            data[off as usize..off as usize + len],
            "pread at {off}"
        );
    }
    assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), data.len() as u64);
    let mut buf = [0u8; 8];
    assert_eq!(f.read(&mut buf).unwrap(), 0, "read at EOF");
}

#[test]
fn writes_at_offsets_beyond_4g() {
    let m = util::Guarded::new(Mounted::new());
    let f = File::create(m.host("sparse")).unwrap();
    let off = 5 * 1024 * MIB + 3;
    f.write_all_at(b"far away", off).unwrap();
    drop(f);
    let b = File::open(m.backing("sparse")).unwrap();
    assert_eq!(b.metadata().unwrap().len(), off + 8, "STORAGE size");
    let mut buf = [0u8; 8];
    b.read_exact_at(&mut buf, off).unwrap();
    assert_eq!(&buf, b"far away");
    let h = File::open(m.host("sparse")).unwrap();
    let mut buf = [0u8; 4];
    h.read_exact_at(&mut buf, 4 * 1024 * MIB).unwrap();
    assert_eq!(buf, [0; 4], "hole reads as zeros");
}

#[test]
fn mmap_shared_write_reaches_storage() {
    let m = util::Guarded::new(Mounted::new());
    fs::write(m.host("map"), vec![0u8; 65536]).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.host("map"))
        .unwrap();
    // SAFETY: a fresh shared mapping of an open file; only this test touches
    // it and it is unmapped before the file is dropped.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            65536,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let s = std::slice::from_raw_parts_mut(p as *mut u8, 65536);
        s[4096..4096 + 6].copy_from_slice(b"mapped");
        assert_eq!(libc::msync(p, 65536, libc::MS_SYNC), 0, "msync");
        assert_eq!(libc::munmap(p, 65536), 0);
    }
    drop(f);
    let b = fs::read(m.backing("map")).unwrap();
    assert_eq!(&b[4096..4102], b"mapped", "STORAGE after msync");
}

#[test]
fn fsync_fdatasync_and_directory_fsync() {
    let m = util::Guarded::new(Mounted::new());
    let mut f = File::create(m.host("s")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_data().expect("fdatasync through the mount");
    f.sync_all().expect("fsync through the mount");
    drop(f);
    File::open(&m.mnt)
        .unwrap()
        .sync_all()
        .expect("fsync of a directory");
    assert_eq!(fs::read(m.backing("s")).unwrap(), b"durable");
}

#[test]
fn concurrent_writers_and_readers() {
    let m = util::Guarded::new(Mounted::new());
    fs::create_dir(m.host("c")).unwrap();
    fs::write(m.host("shared"), []).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let m = &m;
            s.spawn(move || {
                let shared = OpenOptions::new()
                    .write(true)
                    .open(m.host("shared"))
                    .unwrap();
                for i in 0..25u8 {
                    let name = format!("c/t{t}-{i}");
                    fs::write(m.host(&name), pattern(65536 + i as usize, t ^ i)).unwrap();
                    shared
                        .write_all_at(&pattern(4096, t), (t as u64 * 25 + i as u64) * 4096)
                        .unwrap();
                }
            });
        }
        let m = &m;
        s.spawn(move || {
            for _ in 0..50 {
                let n = fs::read_dir(m.host("c")).unwrap().count();
                assert!(n <= 100);
            }
        });
    });
    for t in 0..4u8 {
        for i in 0..25u8 {
            let name = format!("c/t{t}-{i}");
            assert!(
                fs::read(m.backing(&name)).unwrap() == pattern(65536 + i as usize, t ^ i),
                "{name} in STORAGE"
            );
        }
    }
    let shared = fs::read(m.backing("shared")).unwrap();
    assert_eq!(shared.len(), 100 * 4096);
    for (blk, chunk) in shared.chunks(4096).enumerate() {
        assert_eq!(
            chunk,
            &pattern(4096, (blk / 25) as u8)[..],
            "shared block {blk}"
        );
    }
}

// ---------------------------------------------------------------------------
// Lookup, getattr, readdir

fn prepare_tree(s: &Path) {
    fs::create_dir_all(s.join("a/b/c")).unwrap();
    fs::write(s.join("top"), b"top file").unwrap();
    fs::write(s.join("a/f1"), pattern(10_000, 1)).unwrap();
    fs::write(s.join("a/b/empty"), b"").unwrap();
    fs::write(s.join("a/b/c/deep"), b"deep").unwrap();
    chmod(&s.join("a/f1"), 0o640);
    chmod(&s.join("a/b"), 0o710);
    symlink("a/f1", s.join("rel-link")).unwrap();
    symlink("/nonexistent/target", s.join("dangling")).unwrap();
    fs::hard_link(s.join("a/f1"), s.join("a/b/f1-link")).unwrap();
    rustix::fs::mknodat(CWD, s.join("fifo"), FileType::Fifo, Mode::from(0o600), 0).unwrap();
    std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap();
    std::os::unix::fs::chown(s.join("top"), Some(1234), Some(4321)).unwrap();
    std::os::unix::fs::lchown(s.join("rel-link"), Some(77), Some(88)).unwrap();
    let t = Timestamps {
        last_access: ts(1_000_000_001, 5),
        last_modification: ts(1_200_000_000, 123_456_789),
    };
    rustix::fs::utimensat(CWD, s.join("a/b/empty"), &t, AtFlags::empty()).unwrap();
}

#[test]
fn storage_tree_served_exactly() {
    // Daemon-served opens: the kernel sends no READ for an empty file, so its STORAGE
    // atime stays as set; a passthrough read of it reaches STORAGE and updates the atime
    // (relatime), as reading STORAGE directly does.
    let m = mounted_with(&["--passthrough", "off"], prepare_tree);
    // Names, types, modes, owners, sizes, link counts, mtime/ctime to the
    // nanosecond, contents, symlink targets, hard-link groups; readdir(plus)
    // inode numbers agree with lookups; the control dir is hidden from the
    // root's readdir.
    assert_same_tree(&m.mnt, &m.storage, true);
    let root = lstat(&m.mnt);
    let broot = lstat(&m.storage);
    assert_eq!(perm(&root), perm(&broot), "root dir mode");
    assert_eq!(root.nlink(), broot.nlink(), "root dir nlink");
    let a = lstat(&m.host("a/b/empty"));
    assert_eq!((a.atime(), a.atime_nsec()), (1_000_000_001, 5), "atime");
}

#[test]
fn readdir_large_directory() {
    let m = mounted_with(&[], |s| {
        fs::create_dir(s.join("many")).unwrap();
        for i in 0..2000 {
            File::create(s.join(format!("many/entry-with-a-long-name-{i:05}-padding"))).unwrap();
        }
    });
    let listed: Vec<String> = fs::read_dir(m.host("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let set: BTreeSet<_> = listed.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        2000,
        "readdir returned duplicates or missed entries"
    );
    assert_eq!(set, names(&m.backing("many")));
    for i in 0..500 {
        File::create(m.host(&format!("many/new-{i}"))).unwrap();
    }
    for i in 0..2000 {
        if i % 3 == 0 {
            fs::remove_file(m.host(&format!("many/entry-with-a-long-name-{i:05}-padding")))
                .unwrap();
        }
    }
    let listed: Vec<String> = fs::read_dir(m.host("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed.len(), 2500 - 667);
    assert_eq!(
        listed.into_iter().collect::<BTreeSet<_>>(),
        names(&m.backing("many"))
    );
}

#[test]
fn inode_numbers_stable_across_lookups_and_forgets() {
    let m = mounted_with(&[], prepare_tree);
    let paths = [
        "top",
        "a",
        "a/f1",
        "a/b/f1-link",
        "a/b/c/deep",
        "rel-link",
        "fifo",
    ];
    let before: Vec<u64> = paths.iter().map(|p| lstat(&m.host(p)).ino()).collect();
    assert_eq!(before[2], before[3], "hard links a/f1 and a/b/f1-link");
    let distinct: BTreeSet<_> = before.iter().collect();
    assert_eq!(
        distinct.len(),
        paths.len() - 1,
        "distinct objects, distinct inodes"
    );
    for round in 0..3 {
        drop_kernel_caches();
        let after: Vec<u64> = paths.iter().map(|p| lstat(&m.host(p)).ino()).collect();
        assert_eq!(
            after, before,
            "inode numbers changed after forget (round {round})"
        );
    }
    // The root keeps its number too.
    let r1 = lstat(&m.mnt).ino();
    drop_kernel_caches();
    assert_eq!(lstat(&m.mnt).ino(), r1);
}

#[test]
fn external_changes_in_storage_become_visible() {
    let m = mounted_with(&[], |s| fs::write(s.join("ext"), b"one").unwrap());
    assert_eq!(fs::read(m.host("ext")).unwrap(), b"one");
    fs::write(m.backing("ext"), b"two, longer").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            fs::read(m.host("ext")).ok().as_deref() == Some(&b"two, longer"[..])
        }),
        "external rewrite not visible through the mount: {:?}",
        fs::read(m.host("ext"))
    );
    assert!(fs::metadata(m.host("new")).is_err());
    fs::write(m.backing("new"), b"n").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || fs::metadata(m.host("new"))
            .is_ok()),
        "file created in STORAGE not visible through the mount"
    );
    fs::remove_file(m.backing("new")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || fs::metadata(m.host("new"))
            .is_err()),
        "file removed from STORAGE still visible through the mount"
    );
}

#[test]
fn errors_are_the_backing_errnos() {
    let m = mounted_with(&[], |s| {
        fs::write(s.join("file"), b"x").unwrap();
        fs::create_dir(s.join("dir")).unwrap();
    });
    assert_errno(
        "open missing",
        errno_of("open", File::open(m.host("missing"))),
        libc::ENOENT,
    );
    assert_errno(
        "open file/x",
        errno_of("open", File::open(m.host("file/x"))),
        libc::ENOTDIR,
    );
    assert_errno(
        "open dir for writing",
        errno_of("open", OpenOptions::new().write(true).open(m.host("dir"))),
        libc::EISDIR,
    );
    assert_errno(
        "O_EXCL on existing",
        errno_of(
            "open",
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m.host("file")),
        ),
        libc::EEXIST,
    );
    assert_errno(
        "O_DIRECTORY on a file",
        errno_of(
            "open",
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(m.host("file")),
        ),
        libc::ENOTDIR,
    );
    let long = "n".repeat(256);
    assert_errno(
        "256-byte name",
        errno_of("create", File::create(m.host(&long))),
        libc::ENAMETOOLONG,
    );
    let ok = "n".repeat(255);
    File::create(m.host(&ok)).expect("255-byte name");
    assert!(m.backing(&ok).exists());
}

// ---------------------------------------------------------------------------
// setattr

#[test]
fn chmod_passes_through() {
    let m = util::Guarded::new(Mounted::new());
    fs::write(m.host("f"), b"x").unwrap();
    fs::create_dir(m.host("d")).unwrap();
    for mode in [0o640, 0o4755, 0o2711, 0o1777, 0o000, 0o644] {
        chmod(&m.host("f"), mode);
        assert_eq!(perm(&lstat(&m.backing("f"))), mode, "STORAGE mode");
        assert_eq!(perm(&lstat(&m.host("f"))), mode, "mode via mount");
    }
    chmod(&m.host("d"), 0o711);
    assert_eq!(perm(&lstat(&m.backing("d"))), 0o711);
    // fchmod on an open file.
    let f = File::open(m.host("f")).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    assert_eq!(perm(&lstat(&m.backing("f"))), 0o600, "fchmod");
}

#[test]
fn chown_passes_through() {
    let m = util::Guarded::new(Mounted::new());
    fs::write(m.host("f"), b"x").unwrap();
    std::os::unix::fs::chown(m.host("f"), Some(65534), Some(65533)).unwrap();
    let b = lstat(&m.backing("f"));
    assert_eq!((b.uid(), b.gid()), (65534, 65533), "STORAGE owner");
    let h = lstat(&m.host("f"));
    assert_eq!((h.uid(), h.gid()), (65534, 65533), "owner via mount");
    // -1 leaves a field alone.
    std::os::unix::fs::chown(m.host("f"), None, Some(0)).unwrap();
    let b = lstat(&m.backing("f"));
    assert_eq!((b.uid(), b.gid()), (65534, 0), "chown -1:0");
    std::os::unix::fs::chown(m.host("f"), Some(1000), None).unwrap();
    let b = lstat(&m.backing("f"));
    assert_eq!((b.uid(), b.gid()), (1000, 0), "chown 1000:-1");
    // lchown changes the symlink, not its target.
    symlink("f", m.host("l")).unwrap();
    std::os::unix::fs::lchown(m.host("l"), Some(4242), Some(4243)).unwrap();
    let l = lstat(&m.backing("l"));
    assert_eq!((l.uid(), l.gid()), (4242, 4243), "symlink owner in STORAGE");
    assert_eq!(
        lstat(&m.backing("f")).uid(),
        1000,
        "lchown touched the target"
    );
}

#[test]
fn truncate_shrinks_and_extends() {
    let m = util::Guarded::new(Mounted::new());
    let data = pattern(10_000, 9);
    fs::write(m.host("t"), &data).unwrap();
    // truncate(2) by path.
    let c = std::ffi::CString::new(m.host("t").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 4000) }, 0);
    assert_eq!(fs::read(m.backing("t")).unwrap(), data[..4000], "shrunk");
    assert_eq!(lstat(&m.host("t")).len(), 4000);
    // ftruncate on an open file, extending.
    let f = OpenOptions::new().write(true).open(m.host("t")).unwrap();
    f.set_len(20_000).unwrap();
    drop(f);
    let b = fs::read(m.backing("t")).unwrap();
    assert_eq!(b.len(), 20_000, "extended in STORAGE");
    assert_eq!(b[..4000], data[..4000]);
    assert!(
        b[4000..].iter().all(|&x| x == 0),
        "extension reads as zeros"
    );
    assert_eq!(fs::read(m.host("t")).unwrap(), b);
    // truncate to zero while the data is in the kernel's cache.
    let f = OpenOptions::new().write(true).open(m.host("t")).unwrap();
    f.set_len(0).unwrap();
    assert_eq!(fs::read(m.host("t")).unwrap(), b"", "read after truncate 0");
    assert_eq!(lstat(&m.backing("t")).len(), 0);
}

#[test]
fn utimens_explicit_omit_and_now() {
    let m = util::Guarded::new(Mounted::new());
    fs::write(m.host("u"), b"x").unwrap();
    let t = Timestamps {
        last_access: ts(1_000_000_000, 123_456_789),
        last_modification: ts(1_100_000_000, 987_654_321),
    };
    rustix::fs::utimensat(CWD, m.host("u"), &t, AtFlags::empty()).unwrap();
    let b = lstat(&m.backing("u"));
    assert_eq!(
        (b.atime(), b.atime_nsec()),
        (1_000_000_000, 123_456_789),
        "atime"
    );
    assert_eq!(
        (b.mtime(), b.mtime_nsec()),
        (1_100_000_000, 987_654_321),
        "mtime"
    );
    let h = lstat(&m.host("u"));
    assert_eq!((h.mtime(), h.mtime_nsec()), (1_100_000_000, 987_654_321));
    assert_eq!((h.atime(), h.atime_nsec()), (1_000_000_000, 123_456_789));

    // UTIME_OMIT for atime, a new mtime.
    let t = Timestamps {
        last_access: ts(0, UTIME_OMIT),
        last_modification: ts(1_200_000_000, 5),
    };
    rustix::fs::utimensat(CWD, m.host("u"), &t, AtFlags::empty()).unwrap();
    let b = lstat(&m.backing("u"));
    assert_eq!(
        (b.atime(), b.atime_nsec()),
        (1_000_000_000, 123_456_789),
        "OMIT atime"
    );
    assert_eq!((b.mtime(), b.mtime_nsec()), (1_200_000_000, 5), "new mtime");

    // UTIME_NOW for atime, UTIME_OMIT for mtime (futimens on an open fd).
    let before = now_secs();
    let f = File::open(m.host("u")).unwrap();
    let t = Timestamps {
        last_access: ts(0, UTIME_NOW),
        last_modification: ts(0, UTIME_OMIT),
    };
    rustix::fs::futimens(&f, &t).unwrap();
    let after = now_secs();
    let b = lstat(&m.backing("u"));
    assert!(
        b.atime() >= before - 1 && b.atime() <= after + 1,
        "UTIME_NOW atime {} not within [{before}, {after}]",
        b.atime()
    );
    assert_eq!(
        (b.mtime(), b.mtime_nsec()),
        (1_200_000_000, 5),
        "OMIT mtime"
    );
    // Both NOW (utimes(path, NULL)).
    let t = Timestamps {
        last_access: ts(0, UTIME_NOW),
        last_modification: ts(0, UTIME_NOW),
    };
    rustix::fs::utimensat(CWD, m.host("u"), &t, AtFlags::empty()).unwrap();
    let b = lstat(&m.backing("u"));
    assert!(b.mtime() >= before - 1, "UTIME_NOW mtime {}", b.mtime());
}

#[test]
fn writes_update_mtime_coherently() {
    let m = util::Guarded::new(Mounted::new());
    fs::write(m.host("w"), b"x").unwrap();
    let old = ts(1_000_000_000, 0);
    let t = Timestamps {
        last_access: old,
        last_modification: old,
    };
    rustix::fs::utimensat(CWD, m.host("w"), &t, AtFlags::empty()).unwrap();
    let mut f = OpenOptions::new().append(true).open(m.host("w")).unwrap();
    f.write_all(b"more").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let b = lstat(&m.backing("w"));
    assert!(
        b.mtime() > 1_000_000_000,
        "STORAGE mtime not updated by a write"
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            let h = lstat(&m.host("w"));
            let b = lstat(&m.backing("w"));
            (h.mtime(), h.mtime_nsec(), h.len()) == (b.mtime(), b.mtime_nsec(), b.len())
        }),
        "mtime/size via mount {:?} never matched STORAGE {:?}",
        lstat(&m.host("w")),
        lstat(&m.backing("w"))
    );
}

// ---------------------------------------------------------------------------
// Namespace operations

#[test]
fn mkdir_and_rmdir() {
    let m = util::Guarded::new(Mounted::new());
    let mask = umask();
    fs::DirBuilder::new()
        .mode(0o750)
        .create(m.host("d"))
        .unwrap();
    let b = lstat(&m.backing("d"));
    assert!(b.is_dir(), "STORAGE d is a directory");
    assert_eq!(perm(&b), 0o750 & !mask, "mkdir mode (umask {mask:o})");
    assert_errno(
        "mkdir existing",
        errno_of("mkdir", fs::create_dir(m.host("d"))),
        libc::EEXIST,
    );
    fs::create_dir(m.host("d/s1")).unwrap();
    fs::create_dir(m.host("d/s2")).unwrap();
    assert_eq!(lstat(&m.host("d")).nlink(), 4, "nlink of d via mount");
    assert_eq!(lstat(&m.backing("d")).nlink(), 4, "nlink of d in STORAGE");
    fs::write(m.host("d/file"), b"x").unwrap();
    assert_errno(
        "rmdir non-empty",
        errno_of("rmdir", fs::remove_dir(m.host("d"))),
        libc::ENOTEMPTY,
    );
    assert!(m.backing("d/file").exists());
    assert_errno(
        "rmdir a file",
        errno_of("rmdir", fs::remove_dir(m.host("d/file"))),
        libc::ENOTDIR,
    );
    assert_errno(
        "rmdir missing",
        errno_of("rmdir", fs::remove_dir(m.host("nope"))),
        libc::ENOENT,
    );
    fs::remove_dir(m.host("d/s1")).unwrap();
    assert!(!m.backing("d/s1").exists(), "rmdir reached STORAGE");
    assert_eq!(lstat(&m.host("d")).nlink(), 3);
    fs::remove_file(m.host("d/file")).unwrap();
    fs::remove_dir(m.host("d/s2")).unwrap();
    fs::remove_dir(m.host("d")).unwrap();
    assert!(fs::symlink_metadata(m.backing("d")).is_err());
    assert!(names(&m.storage).is_empty(), "STORAGE is empty again");
}

#[test]
fn unlink_and_open_unlinked_file() {
    let m = util::Guarded::new(Mounted::new());
    fs::write(m.host("u"), b"still here").unwrap();
    fs::create_dir(m.host("d")).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.host("u"))
        .unwrap();
    fs::remove_file(m.host("u")).unwrap();
    assert!(
        fs::symlink_metadata(m.backing("u")).is_err(),
        "unlink reached STORAGE"
    );
    assert!(fs::symlink_metadata(m.host("u")).is_err());
    let mut buf = [0u8; 10];
    f.read_exact_at(&mut buf, 0)
        .expect("read an unlinked open file");
    assert_eq!(&buf, b"still here");
    f.write_all_at(b"STILL", 0)
        .expect("write an unlinked open file");
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"STILL here");
    assert_eq!(
        f.metadata().unwrap().nlink(),
        0,
        "fstat nlink of unlinked file"
    );
    assert_errno(
        "unlink missing",
        errno_of("unlink", fs::remove_file(m.host("u"))),
        libc::ENOENT,
    );
    assert_errno(
        "unlink a directory",
        errno_of("unlink", fs::remove_file(m.host("d"))),
        libc::EISDIR,
    );
    // Nothing left behind in STORAGE (no silly-rename files).
    drop(f);
    assert_eq!(names(&m.storage), BTreeSet::from(["d".to_string()]));
}

#[test]
fn rename_moves_and_replaces() {
    let m = util::Guarded::new(Mounted::new());
    fs::write(m.host("a"), b"AAA").unwrap();
    fs::write(m.host("c"), b"CCC").unwrap();
    let ino_a = lstat(&m.host("a")).ino();
    let bino_a = lstat(&m.backing("a")).ino();
    fs::rename(m.host("a"), m.host("b")).unwrap();
    assert!(
        fs::symlink_metadata(m.backing("a")).is_err(),
        "old name in STORAGE"
    );
    assert_eq!(fs::read(m.backing("b")).unwrap(), b"AAA");
    assert_eq!(lstat(&m.backing("b")).ino(), bino_a, "renamed, not copied");
    assert_eq!(
        lstat(&m.host("b")).ino(),
        ino_a,
        "inode number kept across rename"
    );
    // Over an existing file.
    fs::rename(m.host("b"), m.host("c")).unwrap();
    assert_eq!(fs::read(m.backing("c")).unwrap(), b"AAA");
    assert_eq!(fs::read(m.host("c")).unwrap(), b"AAA");
    assert_eq!(names(&m.storage), BTreeSet::from(["c".to_string()]));

    // Directories with children, across directories.
    fs::create_dir_all(m.host("x/y")).unwrap();
    fs::write(m.host("x/y/leaf"), b"leaf").unwrap();
    fs::create_dir(m.host("z")).unwrap();
    fs::rename(m.host("x/y"), m.host("z/y2")).unwrap();
    assert_eq!(fs::read(m.backing("z/y2/leaf")).unwrap(), b"leaf");
    assert_eq!(fs::read(m.host("z/y2/leaf")).unwrap(), b"leaf");
    assert!(fs::symlink_metadata(m.host("x/y")).is_err());
    assert_eq!(lstat(&m.host("x")).nlink(), 2, "x lost its subdir");
    assert_eq!(lstat(&m.host("z")).nlink(), 3, "z gained a subdir");

    // Errors as on the backing fs.
    fs::create_dir(m.host("empty")).unwrap();
    fs::rename(m.host("empty"), m.host("x")).expect("dir over empty dir");
    assert!(m.backing("x").is_dir());
    assert_errno(
        "dir over non-empty dir",
        errno_of("rename", fs::rename(m.host("x"), m.host("z"))),
        libc::ENOTEMPTY,
    );
    assert_errno(
        "file over dir",
        errno_of("rename", fs::rename(m.host("c"), m.host("z"))),
        libc::EISDIR,
    );
    assert_errno(
        "dir over file",
        errno_of("rename", fs::rename(m.host("z"), m.host("c"))),
        libc::ENOTDIR,
    );
    assert_errno(
        "missing source",
        errno_of("rename", fs::rename(m.host("nope"), m.host("c2"))),
        libc::ENOENT,
    );
    assert_eq!(fs::read(m.backing("c")).unwrap(), b"AAA");
}

#[test]
fn rename_noreplace() {
    let m = util::Guarded::new(Mounted::new());
    fs::write(m.host("a"), b"A").unwrap();
    fs::write(m.host("b"), b"B").unwrap();
    let r = rustix::fs::renameat_with(CWD, m.host("a"), CWD, m.host("b"), RenameFlags::NOREPLACE);
    assert_errno(
        "NOREPLACE onto existing",
        rerrno_of("renameat2", r),
        libc::EEXIST,
    );
    assert_eq!(fs::read(m.backing("a")).unwrap(), b"A");
    assert_eq!(fs::read(m.backing("b")).unwrap(), b"B");
    rustix::fs::renameat_with(CWD, m.host("a"), CWD, m.host("c"), RenameFlags::NOREPLACE)
        .expect("NOREPLACE onto a free name");
    assert_eq!(fs::read(m.backing("c")).unwrap(), b"A");
    assert!(fs::symlink_metadata(m.backing("a")).is_err());
}

#[test]
fn rename_exchange() {
    let m = util::Guarded::new(Mounted::new());
    fs::write(m.host("a"), b"A").unwrap();
    fs::write(m.host("b"), b"BB").unwrap();
    let (ia, ib) = (lstat(&m.host("a")).ino(), lstat(&m.host("b")).ino());
    rustix::fs::renameat_with(CWD, m.host("a"), CWD, m.host("b"), RenameFlags::EXCHANGE)
        .expect("RENAME_EXCHANGE");
    assert_eq!(fs::read(m.backing("a")).unwrap(), b"BB", "STORAGE a");
    assert_eq!(fs::read(m.backing("b")).unwrap(), b"A", "STORAGE b");
    assert_eq!(fs::read(m.host("a")).unwrap(), b"BB");
    assert_eq!(lstat(&m.host("a")).ino(), ib, "inode follows the object");
    assert_eq!(lstat(&m.host("b")).ino(), ia);
    // A file and a directory with a child, in different directories.
    fs::create_dir_all(m.host("d/sub")).unwrap();
    fs::write(m.host("d/sub/child"), b"c").unwrap();
    rustix::fs::renameat_with(
        CWD,
        m.host("a"),
        CWD,
        m.host("d/sub"),
        RenameFlags::EXCHANGE,
    )
    .expect("exchange file and dir");
    assert!(m.backing("a").is_dir());
    assert_eq!(fs::read(m.backing("a/child")).unwrap(), b"c");
    assert_eq!(fs::read(m.backing("d/sub")).unwrap(), b"BB");
    assert_eq!(fs::read(m.host("a/child")).unwrap(), b"c");
    assert_eq!(fs::read(m.host("d/sub")).unwrap(), b"BB");
    let r = rustix::fs::renameat_with(CWD, m.host("a"), CWD, m.host("none"), RenameFlags::EXCHANGE);
    assert_errno(
        "exchange with missing",
        rerrno_of("renameat2", r),
        libc::ENOENT,
    );
}

#[test]
fn open_handles_follow_renames() {
    let m = util::Guarded::new(Mounted::new());
    fs::create_dir(m.host("dir")).unwrap();
    fs::write(m.host("dir/f"), b"0123456789").unwrap();
    let f = OpenOptions::new()
        .write(true)
        .open(m.host("dir/f"))
        .unwrap();
    let dirfd = rustix::fs::open(
        m.host("dir"),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    fs::rename(m.host("dir"), m.host("moved")).unwrap();
    fs::rename(m.host("moved/f"), m.host("moved/g")).unwrap();
    f.write_all_at(b"XY", 2).unwrap();
    f.sync_all().unwrap();
    assert_eq!(fs::read(m.backing("moved/g")).unwrap(), b"01XY456789");
    // A directory fd keeps naming the same directory after it moved.
    let nf = rustix::fs::openat(
        &dirfd,
        "created",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        Mode::from(0o644),
    )
    .expect("openat on a moved directory");
    drop(nf);
    assert!(
        m.backing("moved/created").exists(),
        "created in the moved dir"
    );
    assert!(!m.backing("dir").exists(), "old dir name not recreated");
}

#[test]
fn hard_links_share_one_inode() {
    let m = util::Guarded::new(Mounted::new());
    fs::write(m.host("a"), b"data").unwrap();
    fs::hard_link(m.host("a"), m.host("b")).unwrap();
    let (ha, hb) = (lstat(&m.host("a")), lstat(&m.host("b")));
    assert_eq!(ha.ino(), hb.ino(), "one inode under both names");
    assert_eq!((ha.nlink(), hb.nlink()), (2, 2), "link count via mount");
    let (ba, bb) = (lstat(&m.backing("a")), lstat(&m.backing("b")));
    assert_eq!(ba.ino(), bb.ino(), "a real hard link in STORAGE");
    assert_eq!(ba.nlink(), 2);
    // Writes through one name show through the other.
    fs::write(m.host("b"), b"changed via b").unwrap();
    assert_eq!(fs::read(m.host("a")).unwrap(), b"changed via b");
    // chmod through one name: same mode and ctime under both.
    chmod(&m.host("a"), 0o600);
    let (ha, hb) = (lstat(&m.host("a")), lstat(&m.host("b")));
    assert_eq!(perm(&hb), 0o600);
    assert_eq!(
        (ha.ctime(), ha.ctime_nsec()),
        (hb.ctime(), hb.ctime_nsec()),
        "ctime under both names"
    );
    let bb = lstat(&m.backing("b"));
    assert_eq!((hb.ctime(), hb.ctime_nsec()), (bb.ctime(), bb.ctime_nsec()));
    // Linking into another directory, then unlinking.
    fs::create_dir(m.host("d")).unwrap();
    fs::hard_link(m.host("b"), m.host("d/c")).unwrap();
    assert_eq!(lstat(&m.host("a")).nlink(), 3);
    fs::remove_file(m.host("a")).unwrap();
    assert_eq!(
        lstat(&m.host("b")).nlink(),
        2,
        "nlink after unlink via mount"
    );
    assert_eq!(lstat(&m.host("d/c")).nlink(), 2);
    assert_eq!(lstat(&m.backing("b")).nlink(), 2, "nlink in STORAGE");
    assert_errno(
        "link onto existing",
        errno_of("link", fs::hard_link(m.host("b"), m.host("d/c"))),
        libc::EEXIST,
    );
    assert_errno(
        "link a directory",
        errno_of("link", fs::hard_link(m.host("d"), m.host("d2"))),
        libc::EPERM,
    );
}

#[test]
fn hard_links_already_in_storage_are_one_inode() {
    let m = mounted_with(&[], |s| {
        fs::create_dir(s.join("d")).unwrap();
        fs::write(s.join("x"), b"shared").unwrap();
        fs::hard_link(s.join("x"), s.join("y")).unwrap();
        fs::hard_link(s.join("x"), s.join("d/z")).unwrap();
    });
    let inos: Vec<u64> = ["x", "y", "d/z"]
        .iter()
        .map(|p| lstat(&m.host(p)).ino())
        .collect();
    assert!(
        inos.iter().all(|&i| i == inos[0]),
        "names of one STORAGE inode got different inode numbers: {inos:?}"
    );
    assert_eq!(lstat(&m.host("y")).nlink(), 3);
    fs::hard_link(m.host("d/z"), m.host("w")).unwrap();
    for p in ["x", "y", "d/z", "w"] {
        assert_eq!(lstat(&m.host(p)).nlink(), 4, "{p}: nlink after a new link");
    }
    chmod(&m.host("y"), 0o604);
    let cx = lstat(&m.host("x"));
    let cz = lstat(&m.host("d/z"));
    assert_eq!(perm(&cz), 0o604);
    assert_eq!((cx.ctime(), cx.ctime_nsec()), (cz.ctime(), cz.ctime_nsec()));
    // Truncating through one name is seen through all.
    File::options()
        .write(true)
        .open(m.host("w"))
        .unwrap()
        .set_len(2)
        .unwrap();
    assert_eq!(fs::read(m.host("x")).unwrap(), b"sh");
    assert_eq!(lstat(&m.host("d/z")).len(), 2);
}

#[test]
fn symlink_and_readlink() {
    let m = util::Guarded::new(Mounted::new());
    symlink("target/x", m.host("rel")).unwrap();
    let long = format!("/{}", "p/".repeat(150));
    symlink(&long, m.host("abs")).unwrap();
    for (name, target) in [("rel", "target/x"), ("abs", long.as_str())] {
        let b = lstat(&m.backing(name));
        assert!(b.file_type().is_symlink(), "{name}: a symlink in STORAGE");
        assert_eq!(fs::read_link(m.backing(name)).unwrap(), Path::new(target));
        let h = lstat(&m.host(name));
        assert!(h.file_type().is_symlink(), "{name}: a symlink via mount");
        assert_eq!(h.len(), target.len() as u64, "{name}: symlink size");
        assert_eq!(fs::read_link(m.host(name)).unwrap(), Path::new(target));
    }
    assert_errno(
        "symlink onto existing",
        errno_of("symlink", symlink("x", m.host("rel"))),
        libc::EEXIST,
    );
    // Following works through the kernel.
    fs::write(m.host("file"), b"via link").unwrap();
    symlink("file", m.host("tofile")).unwrap();
    assert_eq!(fs::read(m.host("tofile")).unwrap(), b"via link");
    assert_errno(
        "readlink a regular file",
        errno_of("readlink", fs::read_link(m.host("file"))),
        libc::EINVAL,
    );
}

#[test]
fn storage_symlink_pointing_outside_is_not_followed_by_the_daemon() {
    let outside = tempfile::Builder::new()
        .prefix("pagetier-outside-")
        .tempdir()
        .unwrap();
    fs::write(outside.path().join("secret"), b"keep").unwrap();
    let out_md = lstat(outside.path());
    let out_path = outside.path().to_path_buf();
    let m = mounted_with(&[], |s| {
        symlink(&out_path, s.join("link")).unwrap();
        symlink(out_path.join("secret"), s.join("flink")).unwrap();
    });
    let h = lstat(&m.host("link"));
    assert!(
        h.file_type().is_symlink(),
        "served as a symlink, not as its target"
    );
    assert_eq!(fs::read_link(m.host("link")).unwrap(), out_path);
    assert!(lstat(&m.host("flink")).file_type().is_symlink());

    // lchown / utimensat(AT_SYMLINK_NOFOLLOW) act on the link only.
    std::os::unix::fs::lchown(m.host("link"), Some(4242), Some(4242)).unwrap();
    assert_eq!(
        lstat(&m.backing("link")).uid(),
        4242,
        "link owner in STORAGE"
    );
    let t = Timestamps {
        last_access: ts(1_000_000_000, 0),
        last_modification: ts(1_000_000_000, 0),
    };
    rustix::fs::utimensat(CWD, m.host("flink"), &t, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    assert_eq!(lstat(&m.backing("flink")).mtime(), 1_000_000_000);
    let secret = lstat(&out_path.join("secret"));
    assert_ne!(
        secret.mtime(),
        1_000_000_000,
        "the outside file's mtime changed"
    );
    let now_out = lstat(&out_path);
    assert_eq!(
        (now_out.uid(), now_out.gid(), now_out.mode()),
        (out_md.uid(), out_md.gid(), out_md.mode()),
        "the outside dir's owner or mode changed"
    );

    // User xattrs on a symlink: same answer as the backing fs gives, and the
    // target is untouched.
    let local = outside.path().join("local-link");
    symlink("secret", &local).unwrap();
    let want = rustix::fs::lsetxattr(&local, "user.x", b"1", XattrFlags::empty());
    let got = rustix::fs::lsetxattr(m.host("flink"), "user.x", b"1", XattrFlags::empty());
    assert_eq!(
        got.map_err(|e| e.raw_os_error()),
        want.map_err(|e| e.raw_os_error()),
        "lsetxattr on a symlink"
    );
    assert!(
        !xattr_list(&out_path.join("secret")).contains("user.x"),
        "xattr landed on the outside file"
    );

    // O_NOFOLLOW refuses the link.
    assert_errno(
        "O_NOFOLLOW on a symlink",
        errno_of(
            "open",
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(m.host("flink")),
        ),
        libc::ELOOP,
    );

    // Names *through* the link are resolved by the kernel from the caller's
    // root, as on a local fs: they land in the outside dir, never in STORAGE.
    fs::write(m.host("link/made-through-link"), b"k").unwrap();
    assert!(out_path.join("made-through-link").exists());
    assert!(
        lstat(&m.backing("link")).file_type().is_symlink(),
        "link still a link"
    );
    assert_eq!(
        names(&m.storage),
        BTreeSet::from(["flink".to_string(), "link".to_string()])
    );

    // Renaming and unlinking the link leave the outside alone.
    fs::rename(m.host("link"), m.host("link2")).unwrap();
    assert_eq!(fs::read_link(m.backing("link2")).unwrap(), out_path);
    fs::remove_file(m.host("link2")).unwrap();
    fs::remove_file(m.host("flink")).unwrap();
    assert!(fs::symlink_metadata(m.backing("link2")).is_err());
    assert_eq!(fs::read(out_path.join("secret")).unwrap(), b"keep");
    assert!(out_path.is_dir());
}

#[test]
fn mknod_fifo_and_socket() {
    let m = util::Guarded::new(Mounted::new());
    let mask = umask();
    rustix::fs::mknodat(CWD, m.host("p"), FileType::Fifo, Mode::from(0o640), 0).unwrap();
    let b = lstat(&m.backing("p"));
    assert!(b.file_type().is_fifo(), "STORAGE p is a fifo");
    assert_eq!(perm(&b), 0o640 & !mask);
    assert!(lstat(&m.host("p")).file_type().is_fifo());
    // The fifo works through the mount (O_RDWR never blocks on a fifo).
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(m.host("p"))
        .unwrap();
    f.write_all(b"pipe").unwrap();
    let mut buf = [0u8; 4];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pipe");

    rustix::fs::mknodat(CWD, m.host("s"), FileType::Socket, Mode::from(0o600), 0).unwrap();
    assert!(
        lstat(&m.backing("s")).file_type().is_socket(),
        "mknod S_IFSOCK"
    );
    let _l = std::os::unix::net::UnixListener::bind(m.host("bound")).expect("bind in the mount");
    assert!(lstat(&m.backing("bound")).file_type().is_socket(), "bind()");
    assert_errno(
        "mknod onto existing",
        rerrno_of(
            "mknod",
            rustix::fs::mknodat(CWD, m.host("p"), FileType::Fifo, Mode::from(0o600), 0),
        ),
        libc::EEXIST,
    );
}

#[test]
fn mknod_char_device_as_root() {
    let m = util::Guarded::new(Mounted::new());
    let dev = rustix::fs::makedev(1, 3);
    rustix::fs::mknodat(
        CWD,
        m.host("null"),
        FileType::CharacterDevice,
        Mode::from(0o666),
        dev,
    )
    .expect("mknod c 1 3 as root");
    let b = lstat(&m.backing("null"));
    assert!(
        b.file_type().is_char_device(),
        "STORAGE null is a char device"
    );
    assert_eq!(b.rdev(), dev, "rdev in STORAGE");
    let h = lstat(&m.host("null"));
    assert!(h.file_type().is_char_device());
    assert_eq!(h.rdev(), dev, "rdev via mount");
}

#[test]
fn o_tmpfile_works_or_is_not_supported() {
    let m = util::Guarded::new(Mounted::new());
    fs::create_dir(m.host("d")).unwrap();
    match rustix::fs::open(
        m.host("d"),
        OFlags::TMPFILE | OFlags::RDWR,
        Mode::from(0o600),
    ) {
        Err(e) => {
            assert_errno("O_TMPFILE", e.raw_os_error(), libc::EOPNOTSUPP);
        }
        Ok(fd) => {
            rustix::io::write(&fd, b"anonymous").unwrap();
            assert!(names(&m.host("d")).is_empty(), "tmpfile visible via mount");
            assert!(
                names(&m.backing("d")).is_empty(),
                "tmpfile named in STORAGE"
            );
            let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            rustix::fs::linkat(
                CWD,
                proc_path.as_str(),
                CWD,
                m.host("d/named"),
                AtFlags::SYMLINK_FOLLOW,
            )
            .expect("linkat an O_TMPFILE into the mount");
            assert_eq!(fs::read(m.backing("d/named")).unwrap(), b"anonymous");
            assert_eq!(lstat(&m.backing("d/named")).nlink(), 1);
        }
    }
}

// ---------------------------------------------------------------------------
// statfs, xattrs, access

#[test]
fn statfs_matches_storage() {
    let m = util::Guarded::new(Mounted::new());
    let h = rustix::fs::statvfs(&m.mnt).expect("statvfs via mount");
    let b = rustix::fs::statvfs(&m.storage).unwrap();
    assert_eq!(
        h.f_blocks * h.f_frsize,
        b.f_blocks * b.f_frsize,
        "total bytes via mount vs STORAGE"
    );
    assert_eq!(h.f_files, b.f_files, "total inodes");
    assert_eq!(h.f_namemax, b.f_namemax, "name max");
    let (hf, bf) = (
        (h.f_bavail * h.f_frsize) as f64,
        (b.f_bavail * b.f_frsize) as f64,
    );
    assert!(
        (hf - bf).abs() <= 0.01 * (b.f_blocks * b.f_frsize) as f64,
        "available bytes via mount {hf} vs STORAGE {bf}"
    );
}

#[test]
fn xattrs_pass_through() {
    let m = util::Guarded::new(Mounted::new());
    fs::write(m.host("f"), b"x").unwrap();
    fs::create_dir(m.host("d")).unwrap();
    let f = m.host("f");
    rustix::fs::setxattr(&f, "user.color", b"blue", XattrFlags::empty()).unwrap();
    assert_eq!(
        xattr_get(&m.backing("f"), "user.color").unwrap(),
        b"blue",
        "STORAGE"
    );
    assert_eq!(xattr_get(&f, "user.color").unwrap(), b"blue", "via mount");
    assert_eq!(
        rustix::fs::getxattr_query(&f, "user.color").unwrap(),
        4,
        "size query"
    );
    let mut small = [0u8; 2];
    assert_errno(
        "get with a small buffer",
        rerrno_of(
            "getxattr",
            rustix::fs::getxattr(&f, "user.color", &mut small[..]),
        ),
        libc::ERANGE,
    );
    assert_errno(
        "XATTR_CREATE on existing",
        rerrno_of(
            "setxattr",
            rustix::fs::setxattr(&f, "user.color", b"red", XattrFlags::CREATE),
        ),
        libc::EEXIST,
    );
    assert_errno(
        "XATTR_REPLACE on missing",
        rerrno_of(
            "setxattr",
            rustix::fs::setxattr(&f, "user.none", b"x", XattrFlags::REPLACE),
        ),
        libc::ENODATA,
    );
    rustix::fs::setxattr(&f, "user.color", b"red", XattrFlags::REPLACE).unwrap();
    assert_eq!(xattr_get(&m.backing("f"), "user.color").unwrap(), b"red");
    assert_errno(
        "get missing",
        rerrno_of("getxattr", xattr_get(&f, "user.none")),
        libc::ENODATA,
    );
    // Empty and large values.
    rustix::fs::setxattr(&f, "user.empty", b"", XattrFlags::empty()).unwrap();
    assert_eq!(xattr_get(&m.backing("f"), "user.empty").unwrap(), b"");
    let big = pattern(3000, 5);
    rustix::fs::setxattr(&f, "user.big", &big, XattrFlags::empty()).unwrap();
    assert_eq!(xattr_get(&m.backing("f"), "user.big").unwrap(), big);
    assert_eq!(xattr_get(&f, "user.big").unwrap(), big);
    // Set in STORAGE directly: visible through the mount.
    rustix::fs::setxattr(m.backing("f"), "user.ext", b"e", XattrFlags::empty()).unwrap();
    assert_eq!(xattr_get(&f, "user.ext").unwrap(), b"e");
    // List: exactly what STORAGE holds, no pagetier control names.
    let listed = xattr_list(&f);
    assert_eq!(
        listed,
        xattr_list(&m.backing("f")),
        "listxattr via mount vs STORAGE"
    );
    for n in ["user.color", "user.empty", "user.big", "user.ext"] {
        assert!(listed.contains(n), "{n} listed");
    }
    assert!(
        !listed.iter().any(|n| n.starts_with("user.pagetier")),
        "control xattrs listed: {listed:?}"
    );
    // Remove.
    rustix::fs::removexattr(&f, "user.color").unwrap();
    assert_errno(
        "STORAGE after remove",
        rerrno_of("getxattr", xattr_get(&m.backing("f"), "user.color")),
        libc::ENODATA,
    );
    assert_errno(
        "remove missing",
        rerrno_of("removexattr", rustix::fs::removexattr(&f, "user.color")),
        libc::ENODATA,
    );
    // fsetxattr and directories.
    let file = File::open(&f).unwrap();
    rustix::fs::fsetxattr(&file, "user.fd", b"via fd", XattrFlags::empty()).unwrap();
    assert_eq!(xattr_get(&m.backing("f"), "user.fd").unwrap(), b"via fd");
    rustix::fs::setxattr(m.host("d"), "user.dir", b"D", XattrFlags::empty()).unwrap();
    assert_eq!(xattr_get(&m.backing("d"), "user.dir").unwrap(), b"D");
    // trusted.* as root.
    rustix::fs::setxattr(&f, "trusted.t", b"T", XattrFlags::empty()).unwrap();
    assert_eq!(xattr_get(&m.backing("f"), "trusted.t").unwrap(), b"T");
}

#[test]
fn access_checks() {
    use rustix::fs::Access;
    let m = mounted_with(&[], |s| {
        fs::write(s.join("plain"), b"x").unwrap();
        fs::write(s.join("exe"), b"#!/bin/sh\n").unwrap();
        chmod(&s.join("plain"), 0o644);
        chmod(&s.join("exe"), 0o755);
    });
    let acc = |p: &str, a: Access| rustix::fs::accessat(CWD, m.host(p), a, AtFlags::empty());
    acc("plain", Access::EXISTS).expect("F_OK");
    acc("plain", Access::READ_OK | Access::WRITE_OK).expect("R_OK|W_OK as root");
    acc("exe", Access::EXEC_OK).expect("X_OK on 0755");
    assert_errno(
        "X_OK on 0644 as root",
        rerrno_of("access", acc("plain", Access::EXEC_OK)),
        libc::EACCES,
    );
    assert_errno(
        "F_OK on missing",
        rerrno_of("access", acc("missing", Access::EXISTS)),
        libc::ENOENT,
    );
}

// ---------------------------------------------------------------------------
// fallocate, SEEK_DATA/SEEK_HOLE, copy_file_range

#[test]
fn fallocate_allocates() {
    let m = util::Guarded::new(Mounted::new());
    let f = File::create(m.host("fa")).unwrap();
    rustix::fs::fallocate(&f, FallocateFlags::empty(), 0, MIB).expect("fallocate mode 0");
    let b = lstat(&m.backing("fa"));
    assert_eq!(b.len(), MIB, "size after fallocate");
    assert!(
        b.blocks() * 512 >= MIB,
        "blocks after fallocate: {}",
        b.blocks()
    );
    assert_eq!(lstat(&m.host("fa")).len(), MIB);
    rustix::fs::fallocate(&f, FallocateFlags::KEEP_SIZE, MIB, MIB).expect("KEEP_SIZE");
    let b = lstat(&m.backing("fa"));
    assert_eq!(b.len(), MIB, "KEEP_SIZE kept the size");
    assert!(
        b.blocks() * 512 >= 2 * MIB,
        "KEEP_SIZE allocated: {}",
        b.blocks()
    );
}

#[test]
fn fallocate_punch_hole() {
    let m = util::Guarded::new(Mounted::new());
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.host("ph"))
        .unwrap();
    f.write_all_at(&vec![0xAA; MIB as usize], 0).unwrap();
    f.sync_all().unwrap();
    let before = lstat(&m.backing("ph")).blocks();
    rustix::fs::fallocate(
        &f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        65536,
        131072,
    )
    .expect("punch hole");
    let mut got = vec![0u8; MIB as usize];
    f.read_exact_at(&mut got, 0).unwrap();
    let mut want = vec![0xAA; MIB as usize];
    want[65536..196608].fill(0);
    assert!(got == want, "content via mount after punch");
    assert!(
        fs::read(m.backing("ph")).unwrap() == want,
        "STORAGE after punch"
    );
    let b = lstat(&m.backing("ph"));
    assert_eq!(b.len(), MIB, "size unchanged");
    assert!(
        b.blocks() + 256 <= before,
        "STORAGE blocks {before} -> {}: no hole punched",
        b.blocks()
    );
}

#[test]
fn fallocate_zero_range() {
    let m = util::Guarded::new(Mounted::new());
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.host("zr"))
        .unwrap();
    f.write_all_at(&vec![0xBB; 262144], 0).unwrap();
    rustix::fs::fallocate(&f, FallocateFlags::ZERO_RANGE, 4096, 8192).expect("zero range");
    let mut want = vec![0xBB; 262144];
    want[4096..12288].fill(0);
    let mut got = vec![0u8; 262144];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got == want, "content via mount after zero range");
    assert!(
        fs::read(m.backing("zr")).unwrap() == want,
        "STORAGE after zero range"
    );
    // Past EOF without KEEP_SIZE grows the file.
    rustix::fs::fallocate(&f, FallocateFlags::ZERO_RANGE, 262144, 65536).unwrap();
    assert_eq!(lstat(&m.backing("zr")).len(), 262144 + 65536);
    assert_eq!(f.metadata().unwrap().len(), 262144 + 65536);
}

/// (offset, SEEK_DATA answer, SEEK_HOLE answer) for each offset.
type SeekAnswers = Vec<(u64, Result<u64, i32>, Result<u64, i32>)>;

fn seek_answers(path: &Path, offsets: &[u64]) -> SeekAnswers {
    let f = File::open(path).unwrap();
    offsets
        .iter()
        .map(|&o| {
            let d =
                rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(o)).map_err(|e| e.raw_os_error());
            let h =
                rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(o)).map_err(|e| e.raw_os_error());
            (o, d, h)
        })
        .collect()
}

#[test]
fn lseek_data_and_hole() {
    let m = mounted_with(&[], |s| {
        let f = File::create(s.join("sparse")).unwrap();
        f.write_all_at(&[0x11; 4096], 0).unwrap();
        f.write_all_at(&[0x22; 4096], MIB).unwrap();
        f.set_len(2 * MIB).unwrap();
        f.sync_all().unwrap();
    });
    let offs = [
        0,
        100,
        4096,
        8192,
        MIB - 1,
        MIB,
        MIB + 4096,
        2 * MIB - 1,
        2 * MIB,
        3 * MIB,
    ];
    let want = seek_answers(&m.backing("sparse"), &offs);
    // Sanity: the backing fs does report the hole.
    assert_eq!(want[0].2, Ok(4096), "backing fs has no SEEK_HOLE support?");
    assert_eq!(
        seek_answers(&m.host("sparse"), &offs),
        want,
        "(offset, SEEK_DATA, SEEK_HOLE)"
    );

    // The same for a sparse file made through the mount.
    let f = File::create(m.host("made")).unwrap();
    f.write_all_at(&[1; 8192], 2 * MIB).unwrap();
    f.set_len(4 * MIB).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let offs = [0, 2 * MIB, 2 * MIB + 8192, 4 * MIB - 1];
    assert_eq!(
        seek_answers(&m.host("made"), &offs),
        seek_answers(&m.backing("made"), &offs)
    );
}

#[test]
fn copy_file_range_copies() {
    let m = util::Guarded::new(Mounted::new());
    let data = pattern(MIB as usize + 123, 4);
    fs::write(m.host("src"), &data).unwrap();
    let src = File::open(m.host("src")).unwrap();
    let dst = File::create(m.host("dst")).unwrap();
    let (mut oi, mut oo) = (0u64, 0u64);
    while oi < data.len() as u64 {
        let want = data.len() - oi as usize;
        let n = rustix::fs::copy_file_range(&src, Some(&mut oi), &dst, Some(&mut oo), want)
            .expect("copy_file_range");
        assert!(n > 0, "copy_file_range returned 0 before EOF at {oi}");
    }
    drop(dst);
    assert!(fs::read(m.backing("dst")).unwrap() == data, "STORAGE copy");
    assert!(fs::read(m.host("dst")).unwrap() == data, "copy via mount");
    // A range into the middle of an existing file, extending it.
    let dst = OpenOptions::new().write(true).open(m.host("dst")).unwrap();
    let (mut oi, mut oo) = (5000u64, MIB + 100);
    let mut left = 1000usize;
    while left > 0 {
        let n =
            rustix::fs::copy_file_range(&src, Some(&mut oi), &dst, Some(&mut oo), left).unwrap();
        assert!(n > 0);
        left -= n;
    }
    drop(dst);
    let mut want = data.clone();
    want.resize(MIB as usize + 1100, 0);
    want[MIB as usize + 100..MIB as usize + 1100].copy_from_slice(&data[5000..6000]);
    assert!(
        fs::read(m.backing("dst")).unwrap() == want,
        "ranged copy in STORAGE"
    );
    assert!(
        fs::read(m.host("dst")).unwrap() == want,
        "ranged copy via mount"
    );
}

// ---------------------------------------------------------------------------
// Ownership and permissions (another user through --allow-other)

#[test]
fn created_files_belong_to_the_caller() {
    let m = mounted_with(&["--allow-other"], |s| {
        fs::create_dir(s.join("pub")).unwrap();
        chmod(&s.join("pub"), 0o777);
    });
    util::open_up(m.dir.path());
    let out = util::sh_as_nobody(
        "cd \"$1\" && touch f && mkdir d && ln -s target l && mkfifo p && echo data > g && \
         ln g g2 && mv f f-moved",
        &[&m.host("pub")],
    );
    assert_eq!(out.code(), 0, "shell as uid 65534 failed: {out:?}");
    for name in ["f-moved", "d", "l", "p", "g"] {
        let b = lstat(&m.backing(&format!("pub/{name}")));
        assert_eq!(
            (b.uid(), b.gid()),
            (util::NOBODY, util::NOBODY),
            "pub/{name} in STORAGE belongs to the caller"
        );
        let h = lstat(&m.host(&format!("pub/{name}")));
        assert_eq!(
            (h.uid(), h.gid()),
            (util::NOBODY, util::NOBODY),
            "pub/{name} via mount"
        );
    }
    assert_eq!(fs::read(m.backing("pub/g2")).unwrap(), b"data\n");
    // Root's files are still root's.
    fs::write(m.host("pub/rootfile"), b"r").unwrap();
    let b = lstat(&m.backing("pub/rootfile"));
    assert_eq!((b.uid(), b.gid()), (0, 0));
}

#[test]
fn setgid_directory_passes_its_group_on() {
    let m = mounted_with(&[], |s| {
        fs::create_dir(s.join("sg")).unwrap();
        std::os::unix::fs::chown(s.join("sg"), None, Some(4242)).unwrap();
        chmod(&s.join("sg"), 0o2777);
    });
    fs::write(m.host("sg/f"), b"x").unwrap();
    fs::create_dir(m.host("sg/d")).unwrap();
    assert_eq!(
        lstat(&m.backing("sg/f")).gid(),
        4242,
        "file gid from setgid dir"
    );
    let d = lstat(&m.backing("sg/d"));
    assert_eq!(d.gid(), 4242, "dir gid from setgid dir");
    assert_ne!(d.mode() & 0o2000, 0, "subdir inherits the setgid bit");
}

#[test]
fn permissions_enforced_for_other_users() {
    let m = mounted_with(&["--allow-other"], |s| {
        fs::write(s.join("rootfile"), b"orig").unwrap();
        chmod(&s.join("rootfile"), 0o644);
        fs::write(s.join("private"), b"secret").unwrap();
        chmod(&s.join("private"), 0o600);
        fs::create_dir(s.join("locked")).unwrap();
        fs::write(s.join("locked/inside"), b"i").unwrap();
        chmod(&s.join("locked"), 0o755);
    });
    util::open_up(m.dir.path());
    let denied = |script: &str, p: &Path, msg: &str| {
        let out = util::sh_as_nobody(script, &[p]);
        assert_ne!(
            out.code(),
            0,
            "{script} on {} succeeded as uid 65534",
            p.display()
        );
        assert!(
            out.stderr.contains(msg),
            "{script} on {}: want {msg:?}, stderr {:?}",
            p.display(),
            out.stderr
        );
    };
    let eacces = "Permission denied";
    denied("echo x >> \"$1\"", &m.host("rootfile"), eacces);
    denied("cat \"$1\"", &m.host("private"), eacces);
    denied("rm -f \"$1\"", &m.host("locked/inside"), eacces);
    denied("touch \"$1\"", &m.host("locked/new"), eacces);
    denied("mkdir \"$1\"", &m.host("locked/newdir"), eacces);
    denied(
        "chmod 666 \"$1\"",
        &m.host("rootfile"),
        "Operation not permitted",
    );
    denied("truncate -s 0 \"$1\"", &m.host("rootfile"), eacces);
    // What is allowed still works.
    let out = util::sh_as_nobody("cat \"$1\"", &[&m.host("rootfile")]);
    assert_eq!((out.code(), out.stdout.as_str()), (0, "orig"), "{out:?}");
    // And nothing changed in STORAGE.
    assert_eq!(fs::read(m.backing("rootfile")).unwrap(), b"orig");
    assert_eq!(perm(&lstat(&m.backing("rootfile"))), 0o644);
    assert!(m.backing("locked/inside").exists());
    assert!(!m.backing("locked/new").exists());
    assert!(!m.backing("locked/newdir").exists());
}

#[test]
fn read_only_refuses_every_modification() {
    let m = mounted_with(&["--read-only"], |s| {
        fs::write(s.join("f"), b"ro").unwrap();
        fs::create_dir(s.join("d")).unwrap();
    });
    let rofs = libc::EROFS;
    assert_eq!(fs::read(m.host("f")).unwrap(), b"ro", "reads work");
    let checks: Vec<(&str, i32)> = vec![
        (
            "open for write",
            errno_of("", OpenOptions::new().write(true).open(m.host("f"))),
        ),
        ("create", errno_of("", File::create(m.host("new")))),
        ("mkdir", errno_of("", fs::create_dir(m.host("d2")))),
        ("rmdir", errno_of("", fs::remove_dir(m.host("d")))),
        ("unlink", errno_of("", fs::remove_file(m.host("f")))),
        ("rename", errno_of("", fs::rename(m.host("f"), m.host("g")))),
        (
            "link",
            errno_of("", fs::hard_link(m.host("f"), m.host("g"))),
        ),
        ("symlink", errno_of("", symlink("f", m.host("s")))),
        (
            "chmod",
            errno_of(
                "",
                fs::set_permissions(m.host("f"), fs::Permissions::from_mode(0o600)),
            ),
        ),
        (
            "chown",
            errno_of("", std::os::unix::fs::chown(m.host("f"), Some(1), None)),
        ),
        (
            "setxattr",
            rerrno_of(
                "",
                rustix::fs::setxattr(m.host("f"), "user.x", b"1", XattrFlags::empty()),
            ),
        ),
        (
            "utimens",
            rerrno_of(
                "",
                rustix::fs::utimensat(
                    CWD,
                    m.host("f"),
                    &Timestamps {
                        last_access: ts(1, 0),
                        last_modification: ts(1, 0),
                    },
                    AtFlags::empty(),
                ),
            ),
        ),
    ];
    for (what, e) in checks {
        assert_errno(what, e, rofs);
    }
    assert_eq!(fs::read(m.backing("f")).unwrap(), b"ro");
    assert_eq!(names(&m.storage), BTreeSet::from(["d".into(), "f".into()]));
}

// ---------------------------------------------------------------------------
// Differential: generated operation sequences on the mount and on a plain dir

const FILES: [&str; 6] = ["a", "b", "c", "d0/a", "d0/b", "d1/a"];
const DIRS: [&str; 3] = ["d0", "d1", "d0/e"];

fn any_path(i: usize) -> &'static str {
    let all: [&str; 9] = ["a", "b", "c", "d0/a", "d0/b", "d1/a", "d0", "d1", "d0/e"];
    all[i % all.len()]
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        f: usize,
        off: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        f: usize,
        len: u64,
    },
    Unlink {
        p: usize,
    },
    Rename {
        p: usize,
        q: usize,
        flags: u8,
    },
    Link {
        p: usize,
        q: usize,
    },
    Symlink {
        p: usize,
        target: usize,
    },
    Mkdir {
        d: usize,
    },
    Rmdir {
        d: usize,
    },
    Chmod {
        p: usize,
        mode: u32,
    },
    SetXattr {
        p: usize,
        v: u8,
    },
}

fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0..FILES.len(), 0u64..200_000, 0usize..70_000, any::<u8>())
            .prop_map(|(f, off, len, seed)| Op::Write { f, off, len, seed }),
        2 => (0..FILES.len(), 0u64..300_000).prop_map(|(f, len)| Op::Truncate { f, len }),
        2 => (0usize..9).prop_map(|p| Op::Unlink { p }),
        3 => (0usize..9, 0usize..9, 0u8..3).prop_map(|(p, q, flags)| Op::Rename { p, q, flags }),
        2 => (0usize..9, 0usize..9).prop_map(|(p, q)| Op::Link { p, q }),
        1 => (0usize..9, 0usize..9).prop_map(|(p, target)| Op::Symlink { p, target }),
        3 => (0..DIRS.len()).prop_map(|d| Op::Mkdir { d }),
        1 => (0..DIRS.len()).prop_map(|d| Op::Rmdir { d }),
        1 => (0usize..9, prop::sample::select(vec![0o600u32, 0o644, 0o755, 0o4750]))
            .prop_map(|(p, mode)| Op::Chmod { p, mode }),
        1 => (0usize..9, any::<u8>()).prop_map(|(p, v)| Op::SetXattr { p, v }),
    ]
}

fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let os = |r: std::io::Result<()>| r.map_err(|e| e.raw_os_error().unwrap_or(-1));
    let rx = |r: rustix::io::Result<()>| r.map_err(|e| e.raw_os_error());
    match *op {
        Op::Write { f, off, len, seed } => os(OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(root.join(FILES[f]))
            .and_then(|file| file.write_all_at(&pattern(len, seed), off))),
        Op::Truncate { f, len } => os(OpenOptions::new()
            .write(true)
            .open(root.join(FILES[f]))
            .and_then(|file| file.set_len(len))),
        Op::Unlink { p } => os(fs::remove_file(root.join(any_path(p)))),
        Op::Rename { p, q, flags } => {
            let flags = [
                RenameFlags::empty(),
                RenameFlags::NOREPLACE,
                RenameFlags::EXCHANGE,
            ][flags as usize];
            rx(rustix::fs::renameat_with(
                CWD,
                root.join(any_path(p)),
                CWD,
                root.join(any_path(q)),
                flags,
            ))
        }
        Op::Link { p, q } => os(fs::hard_link(
            root.join(any_path(p)),
            root.join(any_path(q)),
        )),
        Op::Symlink { p, target } => os(symlink(any_path(target), root.join(any_path(p)))),
        Op::Mkdir { d } => os(fs::create_dir(root.join(DIRS[d]))),
        Op::Rmdir { d } => os(fs::remove_dir(root.join(DIRS[d]))),
        Op::Chmod { p, mode } => os(fs::set_permissions(
            root.join(any_path(p)),
            fs::Permissions::from_mode(mode),
        )),
        Op::SetXattr { p, v } => rx(rustix::fs::lsetxattr(
            root.join(any_path(p)),
            "user.v",
            &[v],
            XattrFlags::empty(),
        )),
    }
}

fn xattrs_of_tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    snapshot(root, false, false)
        .nodes
        .keys()
        .map(|k| (k.clone(), xattr_get(&root.join(k), "user.v").ok()))
        .collect()
}

#[test]
fn differential_against_plain_dir() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let m = util::Guarded::new(Mounted::new());
    let reference = tempfile::Builder::new()
        .prefix("pagetier-ref-")
        .tempdir()
        .unwrap();
    let case = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op_strategy(), 1..40), |ops| {
        case.set(case.get() + 1);
        let name = format!("case{}", case.get());
        let (mroot, rroot) = (m.host(&name), reference.path().join(&name));
        fs::create_dir(&mroot).unwrap();
        fs::create_dir(&rroot).unwrap();
        for (i, op) in ops.iter().enumerate() {
            let got = apply(&mroot, op);
            let want = apply(&rroot, op);
            if got != want {
                return Err(TestCaseError::fail(format!(
                    "step {i} {op:?}: mount {got:?} vs plain dir {want:?}"
                )));
            }
        }
        let ms = snapshot(&mroot, false, false);
        let rs = snapshot(&rroot, false, false);
        if ms.nodes != rs.nodes || ms.same_inode != rs.same_inode {
            return Err(TestCaseError::fail(format!(
                "trees differ:\nmount {:#?}\nplain {:#?}",
                (ms.nodes.keys().collect::<Vec<_>>(), &ms.same_inode),
                (rs.nodes.keys().collect::<Vec<_>>(), &rs.same_inode)
            )));
        }
        if !ms.dino_mismatch.is_empty() {
            return Err(TestCaseError::fail(format!(
                "d_ino: {:?}",
                ms.dino_mismatch
            )));
        }
        let (mx, rx) = (xattrs_of_tree(&mroot), xattrs_of_tree(&rroot));
        if mx != rx {
            return Err(TestCaseError::fail(format!("xattrs {mx:?} vs {rx:?}")));
        }
        // STORAGE holds what the mount shows.
        let bs = snapshot(&m.backing(&name), false, false);
        if bs.nodes != ms.nodes {
            return Err(TestCaseError::fail("STORAGE differs from the mount"));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------
// fio

#[test]
fn fio_write_verify() {
    let m = util::Guarded::new(Mounted::new());
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fio/write-verify.fio");
    let mut cmd = Command::new("fio");
    let files: Vec<&str> = if job.exists() {
        // The fixture's variables; its files are DIR/write-verify.<job>.0.
        cmd.arg(&job)
            .env("DIR", &m.mnt)
            .env("SIZE", "8M")
            .env("JOBS", "2");
        vec!["write-verify.0.0", "write-verify.1.0"]
    } else {
        cmd.args([
            "--name=wv",
            "--rw=write",
            "--bs=64k",
            "--size=8M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--ioengine=psync",
        ])
        .arg(format!("--directory={}", m.mnt.display()));
        vec!["wv.0.0"]
    };
    cmd.current_dir(m.dir.path());
    let out = util::run_deadline(&mut cmd, Duration::from_secs(200));
    assert_eq!(out.code(), 0, "fio failed:\n{}\n{}", out.stdout, out.stderr);
    for f in files {
        let b = fs::read(m.backing(f)).unwrap_or_else(|e| panic!("{f} in STORAGE: {e}"));
        assert_eq!(b.len() as u64, 8 * MIB, "{f}: size in STORAGE");
        assert_eq!(lstat(&m.host(f)).len(), 8 * MIB, "{f}: size via mount");
        assert!(
            fs::read(m.host(f)).unwrap() == b,
            "{f}: mount vs STORAGE content"
        );
    }
}

/// `Mounted::with` under a watchdog, so that a daemon that stops answering
/// fails the test instead of hanging it.
fn mounted_with(opts: &[&str], prepare: impl FnOnce(&Path)) -> util::Guarded {
    util::Guarded::new(Mounted::with(opts, prepare))
}
