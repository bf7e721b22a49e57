//! Security: nobody is let in further than STORAGE's own
//! permissions allow, the device view is read-only for everyone, and a
//! symlink swapped into STORAGE never leads the daemon outside it.
//!
//! - `device_view_is_read_only_even_for_root`: every modification through the
//!   device view (and into it from the host view) fails with EROFS, as root.
//! - `second_user_gets_exactly_the_backing_permissions`: with `--allow-other`,
//!   uid 65534 runs one script against a plain copy of the tree and against
//!   the mount; outputs and resulting trees must be identical. Without
//!   `--allow-other` it gets nothing.
//! - `control_xattrs_follow_file_permissions`: residency and prefetch need read
//!   permission, evict needs write permission (for uid 65534).
//! - `symlink_swap_race_never_escapes_storage`: a directory in STORAGE is
//!   swapped with a symlink to an outside directory while workers walk,
//!   read, create and unlink through the mount (never following symlinks
//!   themselves); no outside content is ever returned and nothing outside is
//!   opened, read, created or changed (inotify watches it).
//!
//! Runs as root (CI does). Every mount is unmounted on drop, also on panic.

mod common;
mod util;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Mounted, wait_until};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};
use util::{Guarded, NOBODY, errname, open_up, sh_as_nobody};

fn long() -> bool {
    std::env::var_os("PAGETIER_LONG").is_some_and(|v| v != "0" && !v.is_empty())
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

fn os_err(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// What a tree looks like, for "nothing changed" and "same result" checks:
/// path -> (type+mode, uid, gid, size, content or link target).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u32, u32, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let body = if md.is_file() {
                fs::read(&p).unwrap()
            } else if md.file_type().is_symlink() {
                fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()
            } else {
                stack.push(p.clone());
                Vec::new()
            };
            let size = if md.is_dir() { 0 } else { md.len() };
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (md.mode(), md.uid(), md.gid(), size, body),
            );
        }
    }
    out
}

// ----- device view read-only --------------------------------------------------------------

/// Every modification through the device view fails with EROFS — as root,
/// who passes every permission check — and STORAGE is untouched.
#[test]
fn device_view_is_read_only_even_for_root() {
    let m = Guarded::new(Mounted::with(&["--allow-other"], |s| {
        fs::write(s.join("f"), b"original").unwrap();
        fs::create_dir(s.join("d")).unwrap();
        fs::write(s.join("d/g"), b"inner").unwrap();
        rustix::fs::setxattr(
            s.join("f"),
            "user.keep",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }));
    let before = snapshot(&m.storage);
    let d = m.device();
    let refused0 = m.stats().device.refused_writes;
    let p = |s: &str| d.join(s);
    let cpath = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let ops: Vec<(&str, io::Result<()>)> = vec![
        ("create", File::create(p("new")).map(drop)),
        (
            "open O_WRONLY",
            fs::OpenOptions::new().write(true).open(p("f")).map(drop),
        ),
        (
            "open O_RDWR",
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p("f"))
                .map(drop),
        ),
        (
            "open O_APPEND",
            fs::OpenOptions::new().append(true).open(p("f")).map(drop),
        ),
        ("open O_TRUNC", {
            let r = rustix::fs::open(p("f"), OFlags::RDONLY | OFlags::TRUNC, Mode::empty());
            r.map(drop).map_err(io::Error::from)
        }),
        ("truncate", {
            // SAFETY: a valid NUL-terminated path.
            let r = unsafe { libc::truncate(cpath(&p("f")).as_ptr(), 0) };
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }),
        ("unlink", fs::remove_file(p("f"))),
        ("unlink in subdir", fs::remove_file(p("d/g"))),
        ("rmdir", fs::remove_dir(p("d"))),
        ("mkdir", fs::create_dir(p("d2"))),
        ("rename", fs::rename(p("f"), p("f2"))),
        ("rename host->device", fs::rename(m.host("f"), p("moved"))),
        ("rename device->host", fs::rename(p("f"), m.host("moved"))),
        ("link", fs::hard_link(p("f"), p("l"))),
        ("link host->device", fs::hard_link(m.host("f"), p("l"))),
        ("symlink", symlink("f", p("s"))),
        (
            "mknod fifo",
            rustix::fs::mknodat(
                rustix::fs::CWD,
                p("fifo"),
                rustix::fs::FileType::Fifo,
                Mode::from_raw_mode(0o644),
                0,
            )
            .map_err(io::Error::from),
        ),
        (
            "chmod",
            fs::set_permissions(p("f"), fs::Permissions::from_mode(0o777)),
        ),
        (
            "chown",
            std::os::unix::fs::chown(p("f"), Some(NOBODY), Some(NOBODY)),
        ),
        (
            "utimes",
            rustix::fs::utimensat(
                rustix::fs::CWD,
                p("f"),
                &rustix::fs::Timestamps {
                    last_access: rustix::fs::Timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    },
                    last_modification: rustix::fs::Timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    },
                },
                AtFlags::empty(),
            )
            .map_err(io::Error::from),
        ),
        (
            "setxattr",
            rustix::fs::setxattr(p("f"), "user.x", b"1", rustix::fs::XattrFlags::empty())
                .map_err(io::Error::from),
        ),
        (
            "removexattr",
            rustix::fs::removexattr(p("f"), "user.keep").map_err(io::Error::from),
        ),
        (
            "write stats",
            fs::OpenOptions::new()
                .write(true)
                .open(m.mnt.join(".pagetier/stats"))
                .map(drop),
        ),
        (
            "create in control dir",
            File::create(m.mnt.join(".pagetier/x")).map(drop),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, r) in ops {
        match r {
            Err(e) if os_err(&e) == libc::EROFS => {}
            other => wrong.push(format!("{what}: {other:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "device view modifications not refused with EROFS: {wrong:#?}"
    );
    // A read-only fd cannot be turned into a writer either.
    let ro = File::open(p("f")).unwrap();
    let e = rustix::fs::fallocate(&ro, rustix::fs::FallocateFlags::empty(), 0, 4096).unwrap_err();
    assert_eq!(e.raw_os_error(), libc::EBADF, "fallocate on a read-only fd");
    // SAFETY: mapping a valid fd; the result is checked and unmapped.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&ro),
            0,
        )
    };
    assert_eq!(
        map,
        libc::MAP_FAILED,
        "writable shared mmap of a device file"
    );
    assert_eq!(snapshot(&m.storage), before, "STORAGE changed");
    assert_eq!(fs::read(p("f")).unwrap(), b"original");
    let refused = m.stats().device.refused_writes - refused0;
    assert!(refused >= 10, "refused_writes grew by only {refused}");
}

// ----- a second user -----------------------------------------------------------------------

/// Builds the same tree with the same owners and modes under `root`.
fn permission_tree(root: &Path) {
    let w = |p: &str, mode: u32, uid: u32| {
        let path = root.join(p);
        fs::write(&path, format!("content of {p}\n")).unwrap();
        chown(&path, uid);
        chmod(&path, mode);
    };
    let d = |p: &str, mode: u32, uid: u32| {
        let path = root.join(p);
        fs::create_dir(&path).unwrap();
        chown(&path, uid);
        chmod(&path, mode);
    };
    w("secret", 0o600, 0);
    w("public", 0o644, 0);
    w("world", 0o666, 0);
    w("mine", 0o600, NOBODY);
    w("script", 0o755, 0);
    d("closed", 0o700, 0);
    w("closed/inner", 0o644, 0);
    d("open", 0o777, 0);
    w("open/roots", 0o644, 0);
    d("sticky", 0o1777, 0);
    w("sticky/roots", 0o666, 0);
    w("sticky/mine", 0o644, NOBODY);
    d("readonly", 0o755, 0);
    w("readonly/f", 0o644, 0);
    d("noexec", 0o644, 0);
    w("noexec/f", 0o644, 0);
    d("setgid", 0o2777, 0);
    rustix::fs::chownat(
        rustix::fs::CWD,
        root.join("setgid"),
        None,
        Some(rustix::fs::Gid::from_raw(4242)),
        AtFlags::empty(),
    )
    .unwrap();
}

/// Each line: `name ok` or `name fail: <strerror>`.
const SCRIPT: &str = r#"
cd "$1" || exit 99
op() { n=$1; shift; if out=$("$@" 2>&1); then echo "$n ok"; else echo "$n fail: ${out##*: }"; fi; }
op read-secret cat secret
op read-public cat public
op read-mine cat mine
op append-public sh -c 'echo x >> public'
op append-world sh -c 'echo x >> world'
op truncate-world sh -c ': > world'
op append-mine sh -c 'echo x >> mine'
op create-root sh -c ': > newfile'
op create-readonly sh -c ': > readonly/new'
op create-open sh -c ': > open/new'
op mkdir-open mkdir open/dir
op rmdir-open rmdir open/dir
op rename-open mv open/new open/renamed
op unlink-open-own rm -f open/renamed
op unlink-open-roots rm -f open/roots
op unlink-readonly rm -f readonly/f
op unlink-sticky-roots rm -f sticky/roots
op unlink-sticky-own rm -f sticky/mine
op list-closed ls closed
op read-closed cat closed/inner
op list-noexec ls noexec
op read-noexec cat noexec/f
op chmod-public chmod 777 public
op chmod-mine chmod 640 mine
op chown-mine chown 0 mine
op chgrp-mine chgrp 0 mine
op utime-public touch -d 2001-01-01 public
op utime-world-now touch world
op utime-world-past touch -d 2001-01-01 world
op link-public ln public open/hardlink
op link-mine ln mine open/minelink
op symlink-open ln -s /etc/passwd open/sym
op setgid-create sh -c ': > setgid/f && stat -c %g setgid/f'
op setgid-mkdir sh -c 'mkdir setgid/d && stat -c %g:%a setgid/d'
op xattr-set-world setfattr -n user.t -v 1 world
op xattr-set-public setfattr -n user.t -v 1 public
op xattr-get-world getfattr --only-values -n user.t world
op xattr-set-trusted setfattr -n trusted.t -v 1 world
op exec-script ./script
op exec-public ./public
op setuid-chmod chmod 4755 mine
"#;

/// With `--allow-other`, uid 65534 can do exactly what STORAGE's permissions
/// allow: the same script run against a plain copy of the tree and through
/// the mount prints the same results and leaves the same tree. Through the
/// device view, reads follow the same permissions and every write fails.
#[test]
fn second_user_gets_exactly_the_backing_permissions() {
    let plain = tempfile::tempdir().unwrap();
    open_up(plain.path());
    permission_tree(plain.path());
    fs::write(plain.path().join("script"), "#!/bin/sh\necho ran\n").unwrap();
    let m = Guarded::new(Mounted::with(&["--allow-other"], |s| {
        permission_tree(s);
        fs::write(s.join("script"), "#!/bin/sh\necho ran\n").unwrap();
    }));
    open_up(m.dir.path());
    let on_plain = sh_as_nobody(SCRIPT, &[plain.path()]);
    let on_mount = sh_as_nobody(SCRIPT, &[&m.mnt]);
    assert_eq!(on_plain.code(), 0, "{on_plain:?}");
    let (a, b) = (on_plain.stdout.trim(), on_mount.stdout.trim());
    if a != b {
        let diff: Vec<String> = a
            .lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .map(|(x, y)| format!("plain: {x:40} mount: {y}"))
            .collect();
        panic!(
            "uid 65534 gets different results through the mount:\n{}\n(full mount output:\n{b})",
            diff.join("\n")
        );
    }
    // Sanity: the script did hit both outcomes.
    assert!(a.contains("read-secret fail: Permission denied"), "{a}");
    assert!(a.contains("append-world ok"), "{a}");
    assert_eq!(
        snapshot(plain.path()),
        snapshot(&m.storage),
        "trees differ after the same operations"
    );

    // The device view: the same read permissions, no writes at all.
    let dev_script = r#"
cd "$1" || exit 99
op() { n=$1; shift; if out=$("$@" 2>&1); then echo "$n ok"; else echo "$n fail: ${out##*: }"; fi; }
op read-secret cat secret
op read-public cat public
op read-mine cat mine
op list-closed ls closed
op read-closed cat closed/inner
op append-world sh -c 'echo x >> world'
op append-mine sh -c 'echo x >> mine'
op create-open sh -c ': > open/new2'
op chmod-mine chmod 600 mine
op mkdir-open mkdir open/dir2
"#;
    let before = snapshot(&m.storage);
    let out = sh_as_nobody(dev_script, &[&m.device()]).stdout;
    let want = "read-secret fail: Permission denied\n\
                read-public ok\n\
                read-mine ok\n\
                list-closed fail: Permission denied\n\
                read-closed fail: Permission denied\n\
                append-world fail: Read-only file system\n\
                append-mine fail: Read-only file system\n\
                create-open fail: Read-only file system\n\
                chmod-mine fail: Read-only file system\n\
                mkdir-open fail: Read-only file system";
    assert_eq!(out.trim(), want, "device view as uid 65534");
    assert_eq!(snapshot(&m.storage), before, "device view changed STORAGE");

    // Without --allow-other another user gets nothing.
    let m2 = Guarded::new(Mounted::with(&[], permission_tree));
    open_up(m2.dir.path());
    let r = sh_as_nobody(
        "cat \"$1/public\" 2>&1; ls \"$1/.pagetier/device/public\" 2>&1; true",
        &[&m2.mnt],
    );
    assert!(
        !r.stdout.contains("content of") && r.stdout.contains("Permission denied"),
        "a mount without --allow-other served uid 65534: {r:?}"
    );
}

/// Control xattrs for uid 65534: residency and prefetch (its getxattr form)
/// need read permission, evict needs write permission; a refused prefetch
/// faults nothing.
#[test]
fn control_xattrs_follow_file_permissions() {
    let m = Guarded::new(Mounted::with(&["--allow-other"], |s| {
        permission_tree(s);
        for f in ["secret", "public", "world"] {
            fs::write(s.join(f), vec![7u8; 1 << 20]).unwrap();
        }
    }));
    open_up(m.dir.path());
    let script = r#"
op() { n=$1; shift; if out=$("$@" 2>&1); then echo "$n ok"; else echo "$n fail: ${out##*: }"; fi; }
for v in "$1" "$1/.pagetier/device"; do
  op "$v residency-secret" getfattr -n user.pagetier.residency "$v/secret"
  op "$v residency-public" getfattr -n user.pagetier.residency "$v/public"
  op "$v prefetch-secret" getfattr -n user.pagetier.prefetch "$v/secret"
  op "$v prefetch-public" getfattr -n user.pagetier.prefetch:0-4095 "$v/public"
  op "$v evict-public" setfattr -n user.pagetier.evict -v 1 "$v/public"
  op "$v evict-world" setfattr -n user.pagetier.evict -v 1 "$v/world"
done
"#;
    let out = sh_as_nobody(script, &[&m.mnt]).stdout;
    let res = |f: &str| -> u64 {
        let mut buf = [0u8; 256];
        let n = rustix::fs::getxattr(m.host(f), "user.pagetier.residency", &mut buf).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        v["resident_bytes"].as_u64().unwrap()
    };
    assert_eq!(res("secret"), 0, "a refused prefetch faulted pages: {out}");
    let mut gaps = Vec::new();
    for view in [m.mnt.clone(), m.device()] {
        let v = view.display().to_string();
        for (op, want) in [
            ("residency-secret", "fail: Permission denied"),
            ("residency-public", "ok"),
            ("prefetch-secret", "fail: Permission denied"),
            ("prefetch-public", "ok"),
            ("evict-public", "fail: Permission denied"),
            ("evict-world", "ok"),
        ] {
            let line = format!("{v} {op} {want}");
            if !out.lines().any(|l| l == line) {
                let got = out
                    .lines()
                    .find(|l| l.starts_with(&format!("{v} {op} ")))
                    .unwrap_or("(missing)");
                gaps.push(format!("want `{line}`, got `{got}`"));
            }
        }
    }
    assert!(
        gaps.is_empty(),
        "control xattrs do not follow file permissions for uid {NOBODY}:\n{}",
        gaps.join("\n")
    );
}

// ----- symlink swap race -------------------------------------------------------------------

const CANARY: &[u8] = b"OUTSIDE-CANARY";

fn open2(dir: &File, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        path,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(io::Error::from)
}

/// What workers may legitimately get while `a/d` is being swapped with a
/// symlink: the symlink refused (ELOOP, ENOTDIR), the name briefly or
/// finally elsewhere (ENOENT, ESTALE), a created name already there (EEXIST),
/// a directory still holding a worker's entry (ENOTEMPTY), EXDEV never.
fn allowed(e: &io::Error) -> bool {
    matches!(
        os_err(e),
        libc::ELOOP | libc::ENOTDIR | libc::ENOENT | libc::ESTALE | libc::EEXIST | libc::ENOTEMPTY
    )
}

/// For ~3 s (30 s long) one thread swaps the directory `a/d` of STORAGE with a
/// symlink to a directory outside STORAGE (RENAME_EXCHANGE, atomic), while
/// workers walk, read, stat, create, write, rename and unlink under `a/d`
/// through both views without ever following a symlink themselves. Nothing
/// outside STORAGE is returned, listed, opened, created or changed.
#[test]
fn symlink_swap_race_never_escapes_storage() {
    let secs = if long() { 30 } else { 3 };
    let m = Guarded::new(Mounted::with(&[], |s| {
        let outside = s.with_file_name("outside");
        fs::create_dir(&outside).unwrap();
        fs::create_dir(outside.join("sub")).unwrap();
        for i in 0..8 {
            let body = [CANARY, format!("-{i}").as_bytes()].concat();
            fs::write(outside.join(format!("f{i}")), &body).unwrap();
            fs::write(outside.join(format!("sub/f{i}")), &body).unwrap();
        }
        fs::create_dir_all(s.join("a/d/sub")).unwrap();
        for i in 0..8 {
            fs::write(s.join(format!("a/d/f{i}")), format!("INSIDE-{i}")).unwrap();
            fs::write(s.join(format!("a/d/sub/f{i}")), format!("INSIDE-{i}")).unwrap();
        }
        symlink(&outside, s.join("a/link")).unwrap();
    }));
    let outside = m.storage.with_file_name("outside");
    let before = snapshot(&outside);
    let mut ino = inotify::Inotify::init().expect("inotify");
    for p in [outside.clone(), outside.join("sub")] {
        ino.watches()
            .add(&p, inotify::WatchMask::ALL_EVENTS)
            .expect("watch outside");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let a = File::open(m.storage.join("a")).unwrap();
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                rustix::fs::renameat_with(&a, "d", &a, "link", RenameFlags::EXCHANGE)
                    .expect("RENAME_EXCHANGE");
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut workers = Vec::new();
    for w in 0..4u32 {
        let stop = stop.clone();
        let host = File::open(&m.mnt).unwrap();
        let device = File::open(m.device()).unwrap();
        workers.push(std::thread::spawn(move || -> Result<[u64; 2], String> {
            let mut counts = [0u64; 2]; // [ok, refused]
            let mut note = |r: io::Result<()>, what: &str| -> Result<(), String> {
                match r {
                    Ok(()) => counts[0] += 1,
                    Err(e) if allowed(&e) => counts[1] += 1,
                    Err(e) => return Err(format!("{what}: unexpected {e}")),
                }
                Ok(())
            };
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let root = if i.is_multiple_of(2) { &host } else { &device };
                let k = i % 8;
                // read a file (top level and one directory down)
                for path in [format!("a/d/f{k}"), format!("a/d/sub/f{k}")] {
                    let r = open2(root, &path, OFlags::RDONLY).and_then(|fd| {
                        let mut v = Vec::new();
                        File::from(fd).read_to_end(&mut v)?;
                        if v.windows(CANARY.len()).any(|x| x == CANARY) {
                            return Err(io::Error::other(format!(
                                "read outside content through the mount at {path}: {:?}",
                                String::from_utf8_lossy(&v)
                            )));
                        }
                        Ok(())
                    });
                    if let Err(e) = &r
                        && e.raw_os_error().is_none()
                    {
                        return Err(e.to_string());
                    }
                    note(r, "read")?;
                }
                // list the directory
                let r = open2(root, "a/d", OFlags::RDONLY | OFlags::DIRECTORY).and_then(|fd| {
                    let dir = rustix::fs::Dir::read_from(&fd).map_err(io::Error::from)?;
                    for e in dir {
                        let e = e.map_err(io::Error::from)?;
                        let name = e.file_name().to_bytes();
                        if name == b"sub" || name.starts_with(b"f") || name.starts_with(b"w") {
                            continue;
                        }
                        if name != b"." && name != b".." {
                            return Err(io::Error::other(format!(
                                "listed a foreign name {:?}",
                                String::from_utf8_lossy(name)
                            )));
                        }
                    }
                    Ok(())
                });
                if let Err(e) = &r
                    && e.raw_os_error().is_none()
                {
                    return Err(e.to_string());
                }
                note(r, "list")?;
                // stat without following
                let r = open2(root, "a/d", OFlags::PATH | OFlags::DIRECTORY).and_then(|fd| {
                    rustix::fs::statat(&fd, "f0", AtFlags::SYMLINK_NOFOLLOW)
                        .map(drop)
                        .map_err(io::Error::from)
                });
                note(r, "stat")?;
                // create, write, rename, unlink, mkdir, rmdir (host view only)
                if std::ptr::eq(root, &host) {
                    let r = open2(&host, "a/d", OFlags::PATH | OFlags::DIRECTORY).and_then(|d| {
                        let name = format!("w{w}-{i}");
                        let fd = rustix::fs::openat(
                            &d,
                            name.as_str(),
                            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW,
                            Mode::from_raw_mode(0o644),
                        )
                        .map_err(io::Error::from)?;
                        rustix::io::write(&fd, b"WORKER").map_err(io::Error::from)?;
                        drop(fd);
                        let moved = format!("w{w}-{i}-m");
                        rustix::fs::renameat(&d, name.as_str(), &d, moved.as_str())
                            .map_err(io::Error::from)?;
                        rustix::fs::unlinkat(&d, moved.as_str(), AtFlags::empty())
                            .map_err(io::Error::from)?;
                        let dn = format!("w{w}-dir");
                        rustix::fs::mkdirat(&d, dn.as_str(), Mode::from_raw_mode(0o755))
                            .map_err(io::Error::from)?;
                        rustix::fs::unlinkat(&d, dn.as_str(), AtFlags::REMOVEDIR)
                            .map_err(io::Error::from)
                    });
                    note(r, "create/write/rename/unlink")?;
                    // a chmod through the mount of whatever `a/d/f0` is
                    let r = open2(&host, "a/d/f0", OFlags::PATH).and_then(|fd| {
                        rustix::fs::chmodat(
                            rustix::fs::CWD,
                            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd))
                                .as_str(),
                            Mode::from_raw_mode(0o644),
                            AtFlags::empty(),
                        )
                        .map_err(io::Error::from)
                    });
                    note(r, "chmod")?;
                }
            }
            Ok(counts)
        }));
    }
    let end = Instant::now() + Duration::from_secs(secs);
    wait_until(Duration::from_secs(secs + 1), || {
        Instant::now() >= end || workers.iter().any(|t| t.is_finished())
    });
    stop.store(true, Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(30), || swapper.is_finished()),
        "swapper hangs"
    );
    swapper.join().expect("swapper");
    let mut errors = Vec::new();
    let mut totals = [0u64; 2];
    for t in workers {
        assert!(
            wait_until(Duration::from_secs(60), || t.is_finished()),
            "worker hangs"
        );
        match t.join().unwrap() {
            Ok(c) => {
                totals[0] += c[0];
                totals[1] += c[1];
            }
            Err(e) => errors.push(e),
        }
    }
    // Events on the outside directories (nobody legitimately touched them).
    let mut buf = [0u8; 64 * 1024];
    let events: Vec<String> = match ino.read_events(&mut buf) {
        Ok(evs) => evs.map(|e| format!("{:?} {:?}", e.mask, e.name)).collect(),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
        Err(e) => panic!("inotify read: {e}"),
    };
    drop(ino);
    eprintln!(
        "{} swaps; worker ops ok {}, refused {}",
        swaps.load(Ordering::Relaxed),
        totals[0],
        totals[1]
    );
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(
        events.is_empty(),
        "something touched the outside directory during the race: {events:?}"
    );
    assert_eq!(snapshot(&outside), before, "outside directory changed");
    assert!(totals[0] > 0, "no worker operation succeeded");
    assert!(swaps.load(Ordering::Relaxed) > 10, "too few swaps");
    let _ = errname(0);
}
