//! `pagetier-faultfs SOURCE MOUNTPOINT`: a tiny error-injecting FUSE
//! passthrough used as STORAGE by the reliability tests.
//!
//! It serves SOURCE read-write (by path, attributes never cached, every open
//! `FOPEN_DIRECT_IO` so that each read reaches this process) and fails reads
//! with `EIO`:
//! - always, for files whose name contains `bad`;
//! - when armed through the magic file `.faults` in its root (hidden from
//!   listings, reachable by path). Writing to it sets the fault mode:
//!   `on` (every read of a regular file fails), `off`, `range A B`
//!   (reads overlapping bytes `[A, B)` of any file fail), or `short N`
//!   (reads end at byte N as if the file ended there, while its attributes
//!   still give the full size: a file shrinking under a reader). Reading it returns
//!   `mode=... failed_reads=N`, N counting the reads failed so far.
//!
//! With `--refuse-direct`, opens with `O_DIRECT` fail with `EINVAL` (as some
//! filesystems do), so that readers must fall back to buffered reads.
//!
//! Test-only: no hard links, no xattrs, no locking; nodes are never pruned.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, SessionACL, TimeOrNow,
    WriteFlags,
};

/// Inode number of the magic `.faults` file.
const FAULTS_INO: u64 = u64::MAX - 1;
const FAULTS_NAME: &str = ".faults";
const TTL: Duration = Duration::ZERO;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Off,
    All,
    Range(u64, u64),
    Short(u64),
}

struct FaultFs {
    root: PathBuf,
    root_ino: u64,
    /// FUSE ino (the backing st_ino, root = 1) -> backing path.
    nodes: Mutex<HashMap<u64, PathBuf>>,
    files: Mutex<HashMap<u64, File>>,
    next_fh: AtomicU64,
    mode: Mutex<Mode>,
    failed: AtomicU64,
    refuse_direct: bool,
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn kind_of(ft: fs::FileType) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_fifo() {
        FileType::NamedPipe
    } else if ft.is_socket() {
        FileType::Socket
    } else if ft.is_char_device() {
        FileType::CharDevice
    } else if ft.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

impl FaultFs {
    fn ino_of(&self, md: &fs::Metadata) -> u64 {
        if md.ino() == self.root_ino {
            1
        } else {
            md.ino()
        }
    }

    fn attr(&self, md: &fs::Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.ino_of(md)),
            size: md.size(),
            blocks: md.blocks(),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: time(md.ctime(), md.ctime_nsec()),
            kind: kind_of(md.file_type()),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: md.blksize() as u32,
            flags: 0,
        }
    }

    fn faults_attr(&self) -> FileAttr {
        let now = SystemTime::now();
        FileAttr {
            ino: INodeNo(FAULTS_INO),
            size: 4096,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind: FileType::RegularFile,
            perm: 0o666,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        if ino.0 == 1 {
            return Ok(self.root.clone());
        }
        self.nodes
            .lock()
            .unwrap()
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    /// Stats `path` and remembers it under its inode number.
    fn remember(&self, path: PathBuf) -> Result<FileAttr, Errno> {
        let md = fs::symlink_metadata(&path).map_err(|e| errno(&e))?;
        let attr = self.attr(&md);
        if attr.ino.0 != 1 {
            self.nodes.lock().unwrap().insert(attr.ino.0, path);
        }
        Ok(attr)
    }

    fn should_fail(&self, path: &Path, offset: u64, size: u32) -> bool {
        let named_bad = path
            .file_name()
            .is_some_and(|n| n.as_bytes().windows(3).any(|w| w == b"bad"));
        let fail = named_bad
            || match *self.mode.lock().unwrap() {
                Mode::Off => false,
                Mode::All => true,
                Mode::Range(a, b) => offset < b && offset.saturating_add(size as u64) > a,
                Mode::Short(_) => false,
            };
        if fail {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        fail
    }

    fn set_mode(&self, text: &[u8]) -> Result<(), Errno> {
        let text = String::from_utf8_lossy(text);
        let words: Vec<&str> = text.split_whitespace().collect();
        let mode = match words.as_slice() {
            ["on"] => Mode::All,
            ["off"] => Mode::Off,
            ["short", n] => Mode::Short(n.parse().map_err(|_| Errno::EINVAL)?),
            ["range", a, b] => {
                let a = a.parse().map_err(|_| Errno::EINVAL)?;
                let b = b.parse().map_err(|_| Errno::EINVAL)?;
                Mode::Range(a, b)
            }
            _ => return Err(Errno::EINVAL),
        };
        *self.mode.lock().unwrap() = mode;
        eprintln!("faultfs: mode {mode:?}");
        Ok(())
    }

    fn report(&self) -> Vec<u8> {
        format!(
            "mode={:?} failed_reads={}\n",
            *self.mode.lock().unwrap(),
            self.failed.load(Ordering::Relaxed)
        )
        .into_bytes()
    }

    fn add_file(&self, f: File) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().unwrap().insert(fh, f);
        FileHandle(fh)
    }

    fn with_file<T>(
        &self,
        fh: FileHandle,
        f: impl FnOnce(&File) -> io::Result<T>,
    ) -> Result<T, Errno> {
        let files = self.files.lock().unwrap();
        let file = files.get(&fh.0).ok_or(Errno::EBADF)?;
        // Cloning the descriptor lets the I/O run without the table lock.
        let file = file.try_clone().map_err(|e| errno(&e))?;
        drop(files);
        f(&file).map_err(|e| errno(&e))
    }
}

fn open_options(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => o.write(true),
        libc::O_RDWR => o.read(true).write(true),
        _ => o.read(true),
    };
    o.custom_flags(flags & (libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC | libc::O_NOFOLLOW));
    o
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == 1 && name == FAULTS_NAME {
            return reply.entry(&TTL, &self.faults_attr(), Generation(0));
        }
        match self.child(parent, name).and_then(|p| self.remember(p)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == FAULTS_INO {
            return reply.attr(&TTL, &self.faults_attr());
        }
        match self.path(ino).and_then(|p| self.remember(p)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino.0 == FAULTS_INO {
            return reply.attr(&TTL, &self.faults_attr());
        }
        let res = (|| -> Result<FileAttr, Errno> {
            let path = self.path(ino)?;
            let io = |r: io::Result<()>| r.map_err(|e| errno(&e));
            if let Some(m) = mode {
                io(fs::set_permissions(
                    &path,
                    fs::Permissions::from_mode(m & 0o7777),
                ))?;
            }
            if uid.is_some() || gid.is_some() {
                io(std::os::unix::fs::lchown(&path, uid, gid))?;
            }
            if let Some(size) = size {
                match fh {
                    Some(fh) => self.with_file(fh, |f| f.set_len(size))?,
                    None => io(OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(size)))?,
                }
            }
            if atime.is_some() || mtime.is_some() {
                let t = |t: Option<TimeOrNow>| match t {
                    None => None,
                    Some(TimeOrNow::Now) => Some(SystemTime::now()),
                    Some(TimeOrNow::SpecificTime(t)) => Some(t),
                };
                let f = File::open(&path).map_err(|e| errno(&e))?;
                let mut times = fs::FileTimes::new();
                if let Some(a) = t(atime) {
                    times = times.set_accessed(a);
                }
                if let Some(m) = t(mtime) {
                    times = times.set_modified(m);
                }
                io(f.set_times(times))?;
            }
            self.remember(path)
        })();
        match res {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .path(ino)
            .and_then(|p| fs::read_link(p).map_err(|e| errno(&e)))
        {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let res = self.child(parent, name).and_then(|p| {
            fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(&p)
                .map_err(|e| errno(&e))?;
            self.remember(p)
        });
        match res {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .child(parent, name)
            .and_then(|p| fs::remove_file(p).map_err(|e| errno(&e)))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .child(parent, name)
            .and_then(|p| fs::remove_dir(p).map_err(|e| errno(&e)))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.bits() != 0 {
            return reply.error(Errno::EINVAL);
        }
        let res = (|| -> Result<(), Errno> {
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            fs::rename(&from, &to).map_err(|e| errno(&e))?;
            self.remember(to).map(|_| ())
        })();
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == FAULTS_INO {
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
        if self.refuse_direct && flags.0 & libc::O_DIRECT != 0 {
            return reply.error(Errno::EINVAL);
        }
        let res = self.path(ino).and_then(|p| {
            open_options(flags.0)
                .open(p)
                .map_err(|e| errno(&e))
                .map(|f| self.add_file(f))
        });
        match res {
            Ok(fh) => reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let res = self.child(parent, name).and_then(|p| {
            let mut o = open_options(flags);
            o.create(true)
                .mode(mode & !umask & 0o7777)
                .custom_flags(flags & (libc::O_APPEND | libc::O_EXCL));
            let f = o.open(&p).map_err(|e| errno(&e))?;
            let attr = self.remember(p)?;
            Ok((attr, self.add_file(f)))
        });
        match res {
            Ok((a, fh)) => reply.created(&TTL, &a, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 == FAULTS_INO {
            let r = self.report();
            let s = (offset as usize).min(r.len());
            let e = (s + size as usize).min(r.len());
            return reply.data(&r[s..e]);
        }
        match self.path(ino) {
            Ok(p) if self.should_fail(&p, offset, size) => return reply.error(Errno::EIO),
            Ok(_) => {}
            Err(e) => return reply.error(e),
        }
        let size = match *self.mode.lock().unwrap() {
            Mode::Short(n) => {
                let cut = n.saturating_sub(offset).min(size as u64) as u32;
                if cut < size {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
                cut
            }
            _ => size,
        };
        let res = self.with_file(fh, |f| {
            let mut buf = vec![0u8; size as usize];
            let mut done = 0;
            while done < buf.len() {
                match f.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(done);
            Ok(buf)
        });
        match res {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 == FAULTS_INO {
            return match self.set_mode(data) {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(e),
            };
        }
        match self.with_file(fh, |f| f.write_all_at(data, offset)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino.0 == FAULTS_INO {
            return reply.ok();
        }
        let res = self.with_file(fh, |f| {
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let res = self.path(ino).and_then(|p| {
            let mut items: Vec<(u64, FileType, OsString)> = vec![
                (ino.0, FileType::Directory, ".".into()),
                (1, FileType::Directory, "..".into()),
            ];
            for e in fs::read_dir(&p).map_err(|e| errno(&e))? {
                let e = e.map_err(|e| errno(&e))?;
                let Ok(md) = e.metadata() else { continue };
                items.push((self.ino_of(&md), kind_of(md.file_type()), e.file_name()));
            }
            Ok(items)
        });
        match res {
            Ok(items) => {
                for (i, (ino, kind, name)) in items.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let path = std::ffi::CString::new(self.root.as_os_str().as_bytes()).unwrap();
        match rustix::fs::statvfs(path.as_c_str()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                255,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }
}

fn main() {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let refuse_direct = args.first().is_some_and(|a| a == "--refuse-direct");
    if refuse_direct {
        args.remove(0);
    }
    let [source, mnt] = args.as_slice() else {
        eprintln!("usage: pagetier-faultfs [--refuse-direct] SOURCE MOUNTPOINT");
        std::process::exit(2);
    };
    let root = fs::canonicalize(source).expect("SOURCE");
    let root_ino = fs::metadata(&root).expect("stat SOURCE").ino();
    let fs = FaultFs {
        root,
        root_ino,
        nodes: Mutex::new(HashMap::new()),
        files: Mutex::new(HashMap::new()),
        next_fh: AtomicU64::new(1),
        mode: Mutex::new(Mode::Off),
        failed: AtomicU64::new(0),
        refuse_direct,
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("faultfs".into()),
        MountOption::Subtype("faultfs".into()),
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(4);
    let session = match fuser::Session::new(fs, Path::new(mnt), &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "pagetier-faultfs: mounting {}: {e}",
                Path::new(mnt).display()
            );
            std::process::exit(1);
        }
    };
    if let Err(e) = session.run() {
        eprintln!("pagetier-faultfs: {e}");
        std::process::exit(1);
    }
}
