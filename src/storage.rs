//! Access to the backing directory STORAGE, always through descriptors.
//!
//! Invariant (safety as root): no function here resolves a multi-component
//! path or follows a symlink. Children are opened relative to their parent's
//! `O_PATH` descriptor with `O_NOFOLLOW`; an existing object is reopened for
//! I/O through its `/proc/self/fd/N` magic link, which names the very inode
//! the descriptor holds, or through its kernel file handle
//! ([`FileHandle`], `open_by_handle_at`), which names one object of one
//! filesystem and never a path. So whatever a user does inside STORAGE — even
//! swapping a directory for a symlink mid-operation — the daemon never
//! touches anything outside it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags, Stat};

use crate::errno::{Errno, FsResult};
use crate::inode::{Fingerprint, InodeKey};

/// `/proc/self/fd/N` for `fd`.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

/// Checks that `name` is a single path component the kernel may send.
pub fn check_name(name: &OsStr) -> FsResult<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if b.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

/// Opens the child `name` of directory `parent` as `O_PATH | O_NOFOLLOW`
/// and stats it.
pub fn open_child(parent: BorrowedFd<'_>, name: &OsStr) -> FsResult<(OwnedFd, Stat)> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    Ok((fd, st))
}

/// Opens STORAGE's root directory as `O_PATH`.
pub fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Filesystem types whose files other machines change too, where inotify reports only this
/// machine's changes (`statfs(2)` `f_type`, `<linux/magic.h>`): NFS, SMB/CIFS, Ceph, any
/// FUSE filesystem (GlusterFS, sshfs, ...), Lustre, 9p, AFS, GFS2, OCFS2, Coda.
const SHARED_FS_TYPES: [i64; 13] = [
    0x6969,      // NFS
    0x517b,      // SMB
    0xfe53_4d42, // SMB2
    0xff53_4d42, // CIFS
    0x00c3_6400, // Ceph
    0x6573_5546, // FUSE
    0x0bd0_0bd0, // Lustre
    0x0102_1997, // 9p
    0x5346_414f, // AFS
    0x6b41_4653, // kAFS
    0x0116_1970, // GFS2
    0x7461_636f, // OCFS2
    0x7375_7245, // Coda
];

/// Whether the filesystem of `path` is changed only by this machine (not a network or
/// cluster filesystem, nor a FUSE one, whose changes may come from anywhere). Unknown (the
/// `statfs` failed): false.
pub fn is_local_fs(path: &std::path::Path) -> bool {
    rustix::fs::statfs(path)
        .map(|st| !SHARED_FS_TYPES.contains(&{ st.f_type }))
        .unwrap_or(false)
}

/// `MAX_HANDLE_SZ` of `<fcntl.h>`.
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// A kernel file handle: names one object of one filesystem for as long as
/// it exists (its generation is part of it), and reopens it without a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileHandle(HandleRepr);

/// Handles this long or shorter are kept inline, with no allocation: ext4's are 8 bytes,
/// xfs's 8–16, tmpfs's 12 (btrfs's 20 go to the heap). Every known inode holds one.
const INLINE_HANDLE: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HandleRepr {
    /// `bytes[len..]` are zero.
    Inline {
        kind: i32,
        len: u8,
        bytes: [u8; INLINE_HANDLE],
    },
    Heap {
        kind: i32,
        bytes: Box<[u8]>,
    },
}

impl FileHandle {
    fn new(kind: i32, bytes: &[u8]) -> FileHandle {
        FileHandle(match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE_HANDLE => {
                let mut inline = [0; INLINE_HANDLE];
                inline[..bytes.len()].copy_from_slice(bytes);
                HandleRepr::Inline {
                    kind,
                    len,
                    bytes: inline,
                }
            }
            _ => HandleRepr::Heap {
                kind,
                bytes: bytes.into(),
            },
        })
    }

    fn kind(&self) -> i32 {
        match &self.0 {
            HandleRepr::Inline { kind, .. } | HandleRepr::Heap { kind, .. } => *kind,
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.0 {
            HandleRepr::Inline { len, bytes, .. } => &bytes[..*len as usize],
            HandleRepr::Heap { bytes, .. } => bytes,
        }
    }

    /// The handle of the object behind `fd` (any descriptor, `O_PATH` too)
    /// and the id of the mount it was reached through.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<(FileHandle, i32)> {
        let mut raw = RawHandle {
            handle_bytes: MAX_HANDLE_SZ as u32,
            handle_type: 0,
            f_handle: [0; MAX_HANDLE_SZ],
        };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `raw` is a `struct file_handle` whose `handle_bytes` says how
        // much room follows it; the path is an empty C string; every pointer
        // outlives the call, which writes only into `raw` and `mount_id`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                fd.as_raw_fd(),
                c"".as_ptr(),
                &mut raw as *mut RawHandle,
                &mut mount_id as *mut libc::c_int,
                libc::AT_EMPTY_PATH,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
        Ok((
            FileHandle::new(raw.handle_type, &raw.f_handle[..len]),
            mount_id,
        ))
    }

    /// Opens the object as `O_PATH | O_NOFOLLOW` through any descriptor of
    /// its mount. Fails (`ESTALE`) when the object no longer exists.
    pub fn open(&self, mount: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        self.open_as(mount, OFlags::PATH | OFlags::NOFOLLOW)
    }

    /// Opens the object with `flags` (close-on-exec; never creating) through any descriptor
    /// of its mount: one syscall where an `O_PATH` open and a reopen through `/proc` take
    /// three.
    pub fn open_as(&self, mount: BorrowedFd<'_>, flags: OFlags) -> io::Result<OwnedFd> {
        let flags = (flags | OFlags::CLOEXEC) - (OFlags::CREATE | OFlags::EXCL);
        let bytes = self.bytes();
        let mut raw = RawHandle {
            handle_bytes: bytes.len() as u32,
            handle_type: self.kind(),
            f_handle: [0; MAX_HANDLE_SZ],
        };
        raw.f_handle[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: `raw` is a valid `struct file_handle` of `handle_bytes`
        // bytes that outlives the call, which only reads it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mount.as_raw_fd(),
                &raw as *const RawHandle,
                flags.bits() as libc::c_int,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(r as libc::c_int) })
    }
}

impl FileHandle {
    /// A handle of made-up bytes (for tests of what holds handles).
    #[cfg(test)]
    pub fn from_parts(kind: i32, bytes: &[u8]) -> FileHandle {
        FileHandle::new(kind, bytes)
    }
}

/// Reopens the object behind an `O_PATH` descriptor with `flags` for I/O.
pub fn reopen(fd: BorrowedFd<'_>, flags: OFlags) -> FsResult<OwnedFd> {
    let path = proc_path(fd);
    let flags = (flags | OFlags::CLOEXEC) - (OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW);
    Ok(rustix::fs::open(path.as_c_str(), flags, Mode::empty())?)
}

/// Stats the object behind any descriptor.
pub fn stat(fd: impl AsFd) -> FsResult<Stat> {
    Ok(rustix::fs::fstat(fd)?)
}

/// The identity of a stat result.
pub fn key_of(st: &Stat) -> InodeKey {
    InodeKey {
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

/// The change fingerprint of a stat result.
pub fn fingerprint(st: &Stat) -> Fingerprint {
    Fingerprint::new(
        st.st_size as u64,
        (st.st_mtime, st.st_mtime_nsec as u32),
        (st.st_ctime, st.st_ctime_nsec as u32),
    )
}

/// `S_IFMT` bits of a stat result.
pub fn fmt_of(st: &Stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

/// File attributes as the filesystem reports them (FUSE-agnostic).
#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// `S_IFMT` bits.
    pub fmt: u32,
    /// Permission bits incl. set-id and sticky.
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

impl Attr {
    /// Attributes of a backing object reported under FUSE inode `ino`.
    pub fn from_stat(ino: u64, st: &Stat) -> Attr {
        Attr {
            ino,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec as i64),
            mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
            ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
            fmt: st.st_mode & libc::S_IFMT,
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
        }
    }

    /// Attributes of a virtual (control) object.
    pub fn synthetic(ino: u64, fmt: u32, perm: u16, nlink: u32, like: &Attr) -> Attr {
        Attr {
            ino,
            size: 0,
            blocks: 0,
            fmt,
            perm,
            nlink,
            ..like.clone()
        }
    }
}

/// One directory entry of a backing directory.
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub name: Vec<u8>,
    pub key: InodeKey,
    /// `S_IFMT` bits, or 0 when the backing filesystem does not say.
    pub fmt: u32,
}

/// Reads all entries of the directory behind `dir` (without "." and "..").
pub fn list_dir(dir: BorrowedFd<'_>) -> FsResult<(u64, Vec<RawEntry>)> {
    let fd = reopen(dir, OFlags::RDONLY | OFlags::DIRECTORY)?;
    let dev = rustix::fs::fstat(&fd)?.st_dev;
    let d = rustix::fs::Dir::new(fd)?;
    let mut out = Vec::new();
    for entry in d {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        use rustix::fs::FileType as T;
        let fmt = match entry.file_type() {
            T::RegularFile => libc::S_IFREG,
            T::Directory => libc::S_IFDIR,
            T::Symlink => libc::S_IFLNK,
            T::Fifo => libc::S_IFIFO,
            T::Socket => libc::S_IFSOCK,
            T::CharacterDevice => libc::S_IFCHR,
            T::BlockDevice => libc::S_IFBLK,
            T::Unknown => 0,
        };
        out.push(RawEntry {
            name: name.to_vec(),
            key: InodeKey {
                dev,
                ino: entry.ino(),
            },
            fmt,
        });
    }
    Ok((dev, out))
}

/// Reads as much as fits into `buf` at `offset`, retrying short reads until
/// EOF. Returns the number of bytes read.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                if done > 0 {
                    break;
                }
                return Err(e.into());
            }
        }
    }
    Ok(done)
}

/// [`pread_full`] of a file that may be truncated meanwhile: what was read is clipped to
/// the size a regular file has *after* the read. A read racing an in-place truncate can
/// copy bytes inside the old length that the truncate has already zeroed (ext4 zeroes the
/// cut part of a large folio in place); the truncate sets the new size before it zeroes,
/// so a size taken after the read covers every zero the read could have seen.
pub fn pread_clipped(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let n = pread_full(fd, buf, offset)?;
    if n == 0 {
        return Ok(0);
    }
    let st = rustix::fs::fstat(fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Ok(n);
    }
    let left = (st.st_size as u64).saturating_sub(offset);
    Ok(n.min(usize::try_from(left).unwrap_or(usize::MAX)))
}

/// Writes all of `data` at `offset` (short writes are retried; an error after
/// partial progress reports the progress, as write(2) does).
pub fn pwrite_full(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> FsResult<usize> {
    let mut done = 0;
    while done < data.len() {
        match rustix::io::pwrite(fd, &data[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                if done > 0 {
                    break;
                }
                return Err(e.into());
            }
        }
    }
    Ok(done)
}

/// Rejects offsets that cannot be represented as `off_t`.
pub fn check_offset(offset: u64) -> FsResult<()> {
    if offset > i64::MAX as u64 {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_components() {
        assert!(check_name(OsStr::new("a b é")).is_ok());
        assert_eq!(check_name(OsStr::new("..")), Err(Errno::EINVAL));
        assert_eq!(check_name(OsStr::new(".")), Err(Errno::EINVAL));
        assert_eq!(check_name(OsStr::new("a/b")), Err(Errno::EINVAL));
        assert_eq!(check_name(OsStr::new("")), Err(Errno::EINVAL));
        let long = "x".repeat(256);
        assert_eq!(check_name(OsStr::new(&long)), Err(Errno::ENAMETOOLONG));
        assert!(check_name(OsStr::new(&"x".repeat(255))).is_ok());
    }

    /// Short handles are inline and long ones on the heap; both give back their bytes.
    #[test]
    fn handles_keep_their_bytes_inline_or_not() {
        assert!(size_of::<FileHandle>() <= 24, "{}", size_of::<FileHandle>());
        for len in [0, 8, 12, 16, 17, 20, MAX_HANDLE_SZ] {
            let bytes: Vec<u8> = (0..len as u8).map(|b| b ^ 0x5a).collect();
            let h = FileHandle::from_parts(7, &bytes);
            assert_eq!((h.kind(), h.bytes()), (7, &bytes[..]), "{len} bytes");
            assert_eq!(
                matches!(h.0, HandleRepr::Inline { .. }),
                len <= INLINE_HANDLE
            );
            assert_eq!(h.clone(), h);
        }
        assert_ne!(
            FileHandle::from_parts(1, &[1, 2]),
            FileHandle::from_parts(1, &[1, 2, 0])
        );
    }

    /// Clipping keeps every byte of a file that is not being truncated, and leaves what is
    /// not a regular file (whose size says nothing of what it reads) alone.
    #[test]
    fn clipped_reads_keep_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8 | 1).collect();
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let f = std::fs::File::open(dir.path().join("f")).unwrap();
        let mut buf = vec![0; 16_384];
        assert_eq!(pread_clipped(f.as_fd(), &mut buf, 0).unwrap(), 10_000);
        assert_eq!(&buf[..10_000], &data[..]);
        assert_eq!(pread_clipped(f.as_fd(), &mut buf, 9_000).unwrap(), 1_000);
        assert_eq!(pread_clipped(f.as_fd(), &mut buf, 20_000).unwrap(), 0);
        let zero = std::fs::File::open("/dev/zero").unwrap();
        assert_eq!(pread_clipped(zero.as_fd(), &mut buf, 0).unwrap(), 16_384);
    }

    #[test]
    fn file_handles_name_one_object() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("s")).unwrap();
        let root = open_root(dir.path()).unwrap();
        let Ok((root_handle, mount_id)) = FileHandle::of(root.as_fd()) else {
            eprintln!("no file handles here: nothing to test");
            return;
        };
        let mount = rustix::fs::openat(&root, ".", OFlags::RDONLY, Mode::empty()).unwrap();
        let handle_of = |name: &str| {
            let (fd, st) = open_child(root.as_fd(), OsStr::new(name)).unwrap();
            let (h, m) = FileHandle::of(fd.as_fd()).unwrap();
            assert_eq!(m, mount_id, "{name}: one mount");
            (h, st)
        };
        let (a, st_a) = handle_of("a");
        let (b, _) = handle_of("b");
        assert_eq!(a, b, "two names of one inode");
        assert_ne!(a, root_handle);
        let fd = a.open(mount.as_fd()).unwrap();
        assert_eq!(key_of(&stat(&fd).unwrap()), key_of(&st_a));
        // A symlink's handle opens the symlink, not its target.
        let (s, _) = handle_of("s");
        assert_eq!(
            fmt_of(&stat(s.open(mount.as_fd()).unwrap()).unwrap()),
            libc::S_IFLNK
        );
        // Unlinked, the object is reachable while a descriptor holds it; once
        // none does it is gone, and its handle opens nothing (not another
        // object that reuses its inode number).
        std::fs::remove_file(dir.path().join("a")).unwrap();
        std::fs::remove_file(dir.path().join("b")).unwrap();
        assert!(a.open(mount.as_fd()).is_ok(), "held by `fd`");
        drop(fd);
        assert!(a.open(mount.as_fd()).is_err());
    }

    #[test]
    fn children_are_opened_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("out")).unwrap();
        let root = open_root(dir.path()).unwrap();
        let (fd, st) = open_child(root.as_fd(), OsStr::new("out")).unwrap();
        assert_eq!(fmt_of(&st), libc::S_IFLNK);
        // Looking up below a symlink must fail, not walk into /etc.
        assert_eq!(
            open_child(fd.as_fd(), OsStr::new("passwd")).err(),
            Some(Errno::ENOTDIR)
        );
    }
}
