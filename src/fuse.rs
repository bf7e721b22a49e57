//! The FUSE adapter: a thin translation between fuser and [`Pagetier`].
//!
//! Each callback opens a tracing span, calls one core method and replies with
//! its value or its errno. No filesystem logic lives here.
//!
//! Invariant: every error reply goes through [`failed`], the one place a failed
//! request is logged (op, inode, view, name, errno; `warn` only for errnos that
//! mean trouble, `debug` for ordinary answers). Every request the kernel sends
//! this mount is answered here, including those a program makes in passing
//! (ioctl `TCGETS` from `isatty()`, `poll`): fuser's defaults, which warn
//! "[Not Implemented]", are left only for requests it never sends (locks, as
//! `FUSE_POSIX_LOCKS` is not negotiated; `bmap`, for block devices only).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, Errno as FErrno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner,
    OpenFlags, PollEvents, PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, debug_span, info, warn};

use crate::creds::Caller;
use crate::errno::Errno;
use crate::forgets::ForgetQueue;
use crate::fs::{KernelLimits, OpenOut, Pagetier, SetAttr, TimeSpec};
use crate::iomode::{BackingToken, IdleIds, Registration};
use crate::metrics::{Op, RequestMetrics, RequestTimer, ViewLabel};
use crate::storage::Attr;
use crate::workers::{Turn, Workers};

/// How long the kernel may cache the control directory's names, which never change.
const CONTROL_TTL: Duration = Duration::from_secs(86_400);

/// Largest read and write the kernel is asked to send (and readahead).
pub const MAX_IO: u32 = 1 << 20;

/// fuser's view of the filesystem.
pub struct FuseAdapter {
    pub fs: Arc<Pagetier>,
    /// Request latency histograms (None: metrics off, nothing is timed).
    pub metrics: Option<Arc<RequestMetrics>>,
    /// Largest request asked of the kernel (`--max-request`; [`MAX_IO`] by default).
    pub max_io: u32,
    /// The worker threads' turns (`workers.rs`): an idle worker may park after its reply.
    pub workers: Arc<Workers>,
    /// Where a `BATCH_FORGET` goes, to be applied off the workers (`forgets.rs`).
    pub forgets: ForgetQueue,
}

/// One request in a handler: timed (metrics on only), then the worker's turn ends. Fields
/// drop in order, so the time is taken before the worker may park.
pub struct InHandler<'a> {
    _timer: Option<RequestTimer<'a>>,
    _turn: Turn<'a>,
}

impl FuseAdapter {
    /// Starts one request on `ino`: the returned guard is the handler's first local, so it
    /// drops after the reply went out.
    #[inline]
    fn timed(&self, req: &Request, op: Op, ino: INodeNo) -> InHandler<'_> {
        InHandler {
            _timer: self.metrics.as_deref().map(|m| m.start(op, ino.0)),
            _turn: self.workers.enter(req.pid()),
        }
    }
}

/// The view label of `ino` for request spans.
fn view(ino: INodeNo) -> &'static str {
    ViewLabel::of(ino.0).name()
}

/// What a request addressed, for the log line of its failure.
#[derive(Clone, Copy)]
struct Target<'a> {
    op: Op,
    ino: INodeNo,
    /// The name the request carried (a lookup's, a create's, an xattr's), if any.
    name: Option<&'a OsStr>,
}

fn at(op: Op, ino: INodeNo, name: Option<&OsStr>) -> Target<'_> {
    Target { op, ino, name }
}

/// The one place a failed request is reported: logs it and gives the errno to reply with.
///
/// Every failure is logged with its op, inode, view, name and errno: at `warn` when the errno
/// says the mount or its storage is in trouble ([`Errno::is_trouble`]: an I/O error, a stale
/// inode, no memory or descriptors left), at `debug` otherwise, since a program's
/// ordinary requests fail all the time (a lookup of a missing name, a create of an existing
/// one, a write to the read-only device view, ...) and must not fill the log.
fn failed(t: Target, e: Errno) -> FErrno {
    let (op, ino, view) = (t.op.name(), t.ino.0, view(t.ino));
    match t.name {
        Some(name) if e.is_trouble() => warn!(op, ino, view, ?name, errno = %e, "request failed"),
        Some(name) => debug!(op, ino, view, ?name, errno = %e, "request failed"),
        None if e.is_trouble() => warn!(op, ino, view, errno = %e, "request failed"),
        None => debug!(op, ino, view, errno = %e, "request failed"),
    }
    FErrno::from_i32(e.raw())
}

fn kind(fmt: u32) -> FileType {
    match fmt {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn fattr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: kind(a.fmt),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// Attributes sent with "." and ".." in readdirplus replies (ignored by the kernel).
fn dot_attr(ino: u64, fmt: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: std::time::UNIX_EPOCH,
        mtime: std::time::UNIX_EPOCH,
        ctime: std::time::UNIX_EPOCH,
        crtime: std::time::UNIX_EPOCH,
        kind: kind(fmt),
        perm: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn fopen(o: &OpenOut) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if o.no_flush {
        f |= FopenFlags::FOPEN_NOFLUSH;
    }
    f
}

/// The backing registration a passthrough open names in its reply. The core hands back
/// only tokens this adapter made ([`BackingId`]s).
fn backing_of(out: &OpenOut) -> Option<&BackingId> {
    let id = out.passthrough.as_ref()?.downcast_ref::<BackingId>();
    debug_assert!(id.is_some(), "a backing token that is no BackingId");
    id
}

/// Idle passthrough registrations as the kernel's ids (`iomode.rs`): this adapter's tokens
/// are [`BackingId`]s, and an id handed over is closed with `FUSE_DEV_IOC_BACKING_CLOSE` on
/// a duplicate of the session's `/dev/fuse`.
pub struct KernelIdleIds {
    device: OwnedFd,
}

impl KernelIdleIds {
    pub fn new(device: OwnedFd) -> KernelIdleIds {
        KernelIdleIds { device }
    }
}

impl IdleIds for KernelIdleIds {
    fn hand_over(&self, token: BackingToken) -> Result<u32, BackingToken> {
        match token.downcast::<BackingId>() {
            Ok(id) => Arc::try_unwrap(id)
                .map(BackingId::into_raw)
                .map_err(|id| id as BackingToken),
            Err(token) => Err(token),
        }
    }

    fn close(&self, id: u32) {
        /// `_IOW(FUSE_DEV_IOC_MAGIC = 229, 2, uint32_t)` of `<linux/fuse.h>`.
        const FUSE_DEV_IOC_BACKING_CLOSE: u32 = 0x4004_e502;
        // SAFETY: an ioctl on our own open `/dev/fuse` descriptor that reads one `u32` from
        // a live local for the duration of the call.
        let rc = unsafe {
            libc::ioctl(
                self.device.as_raw_fd(),
                FUSE_DEV_IOC_BACKING_CLOSE as _,
                &id as *const u32,
            )
        };
        if rc < 0 {
            // After the connection ended the kernel has freed every id already.
            debug!(id, error = %std::io::Error::last_os_error(), "closing an idle backing id");
        }
    }
}

/// Whether this process may register backing files (`CAP_SYS_ADMIN` in its effective set).
fn has_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
            u64::from_str_radix(hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Asks the kernel for FUSE passthrough at init when the mount wants it; says at info
/// what is in force and why.
fn negotiate_passthrough(fs: &Pagetier, config: &mut KernelConfig) {
    if !fs.passthrough_wanted() {
        info!("passthrough off (--passthrough off): every open is served by the daemon");
        return;
    }
    if !config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
        info!("passthrough off: the kernel does not offer FUSE passthrough");
        return;
    }
    if !has_sys_admin() {
        info!("passthrough off: registering backing files needs CAP_SYS_ADMIN");
        return;
    }
    if let Err(missing) = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
        info!(
            ?missing,
            "passthrough off: the kernel refused FUSE passthrough"
        );
        return;
    }
    // Backing files are on a filesystem that stacks nothing: depth 1 (0 disables it).
    if let Err(max) = config.set_max_stack_depth(1) {
        info!(max, "passthrough off: the kernel refused stack depth 1");
        return;
    }
    fs.enable_passthrough();
    info!(
        "passthrough on: read-only host-view opens are served by the kernel from STORAGE \
         (writable opens of a file held so join them and bypass the device tier)"
    );
}

/// The limits the kernel will use, from what init asked and it offered: readahead as
/// set; requests up to the larger of write and readahead size, in pages, capped by
/// `fs.fuse.max_pages_limit`.
fn kernel_limits(max_readahead: u32, max_write: u32) -> KernelLimits {
    let page = crate::tier::PAGE_SIZE as u32;
    let wanted = max_readahead.max(max_write).div_ceil(page);
    let limit = std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(256);
    KernelLimits {
        max_pages: wanted.min(limit),
        max_readahead,
    }
}

impl FuseAdapter {
    /// How long the kernel may cache an entry or attributes of `ino`: the mount's cache
    /// timeout (`fs.rs` `CacheTimeout`) in both views. The device view has no writer of its
    /// own that would keep the kernel informed, so host-view changes push what they make
    /// stale in it (`notify.rs`); without that push it is not cached at all.
    fn ttl(&self, ino: u64) -> Duration {
        match crate::inode::decode(ino) {
            Some((_, crate::inode::View::Device)) if !self.fs.device_view_cacheable() => {
                Duration::ZERO
            }
            _ => self.fs.cache_timeout(),
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, t: Target, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&self.ttl(a.ino), &fattr(&a), Generation(0)),
            Err(e) => reply.error(failed(t, e)),
        }
    }
}

fn reply_empty(reply: ReplyEmpty, t: Target, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(failed(t, e)),
    }
}

fn reply_xattr(reply: ReplyXattr, t: Target, size: u32, r: Result<Vec<u8>, Errno>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        // The caller's buffer is too small: it asks for the size again.
        Ok(v) if v.len() > size as usize => reply.error(failed(t, Errno(libc::ERANGE))),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(failed(t, e)),
    }
}

fn time(t: TimeOrNow) -> TimeSpec {
    match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(t) => TimeSpec::At(t),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let max_io = self.max_io;
        let readahead = match config.set_max_readahead(max_io) {
            Ok(_) => max_io,
            Err(max) => {
                let _ = config.set_max_readahead(max);
                max
            }
        };
        let _ = config.set_max_write(max_io);
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_EXPORT_SUPPORT,
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_DONT_MASK,
        ] {
            if let Err(missing) = config.add_capabilities(cap) {
                debug!(?missing, "kernel lacks capability");
            }
        }
        negotiate_passthrough(&self.fs, config);
        self.fs.set_kernel_limits(kernel_limits(readahead, max_io));
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = self.timed(req, Op::Lookup, parent);
        let _s = debug_span!("lookup", view = view(parent), parent = parent.0, ?name).entered();
        let r = self.fs.lookup(parent.0, name);
        match (r, crate::inode::decode(parent.0)) {
            // The control directory's children (`device`, `stats`) never change: their names
            // stay cached even where attributes may not (the device root's, when the device
            // view is not cached).
            (Ok(a), Some((crate::inode::CONTROL_ID, crate::inode::View::Host))) => {
                reply.entry_with_ttls(&self.ttl(a.ino), &CONTROL_TTL, &fattr(&a), Generation(0))
            }
            (r, _) => self.reply_entry(reply, at(Op::Lookup, parent, Some(name)), r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // Queued, not applied here (`forgets.rs`): fuser calls this once per inode of a
        // BATCH_FORGET, and a worker that reads again at once keeps the kernel's batches,
        // and the request buffer pages they fill, small. No worker turn: a worker must not
        // park in the middle of a batch.
        self.forgets.push(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = self.timed(req, Op::Getattr, ino);
        let _s = debug_span!("getattr", view = view(ino), ino = ino.0).entered();
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl(a.ino), &fattr(&a)),
            Err(e) => reply.error(failed(at(Op::Getattr, ino, None), e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _t = self.timed(req, Op::Setattr, ino);
        let _s = debug_span!(
            "setattr",
            view = view(ino),
            ino = ino.0,
            ?mode,
            ?uid,
            ?gid,
            ?size
        )
        .entered();
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        match self.fs.setattr(caller(req), ino.0, fh.map(|f| f.0), set) {
            Ok(a) => reply.attr(&self.ttl(a.ino), &fattr(&a)),
            Err(e) => reply.error(failed(at(Op::Setattr, ino, None), e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let _t = self.timed(req, Op::Readlink, ino);
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(failed(at(Op::Readlink, ino, None), e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _t = self.timed(req, Op::Mknod, parent);
        let _s =
            debug_span!("mknod", view = view(parent), parent = parent.0, ?name, mode).entered();
        self.reply_entry(
            reply,
            at(Op::Mknod, parent, Some(name)),
            self.fs
                .mknod(caller(req), parent.0, name, mode, umask, rdev),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _t = self.timed(req, Op::Mkdir, parent);
        let _s =
            debug_span!("mkdir", view = view(parent), parent = parent.0, ?name, mode).entered();
        self.reply_entry(
            reply,
            at(Op::Mkdir, parent, Some(name)),
            self.fs.mkdir(caller(req), parent.0, name, mode, umask),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.timed(req, Op::Unlink, parent);
        let _s = debug_span!("unlink", view = view(parent), parent = parent.0, ?name).entered();
        reply_empty(
            reply,
            at(Op::Unlink, parent, Some(name)),
            self.fs.unlink(caller(req), parent.0, name),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.timed(req, Op::Rmdir, parent);
        let _s = debug_span!("rmdir", view = view(parent), parent = parent.0, ?name).entered();
        reply_empty(
            reply,
            at(Op::Rmdir, parent, Some(name)),
            self.fs.rmdir(caller(req), parent.0, name),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _t = self.timed(req, Op::Symlink, parent);
        let _s = debug_span!(
            "symlink",
            view = view(parent),
            parent = parent.0,
            ?link_name
        )
        .entered();
        self.reply_entry(
            reply,
            at(Op::Symlink, parent, Some(link_name)),
            self.fs
                .symlink(caller(req), parent.0, link_name, target.as_os_str()),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(req, Op::Rename, parent);
        let _s = debug_span!(
            "rename",
            view = view(parent),
            parent = parent.0,
            ?name,
            newparent = newparent.0,
            ?newname
        )
        .entered();
        reply_empty(
            reply,
            at(Op::Rename, parent, Some(name)),
            self.fs.rename(
                caller(req),
                parent.0,
                name,
                newparent.0,
                newname,
                flags.bits(),
            ),
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _t = self.timed(req, Op::Link, ino);
        let _s = debug_span!(
            "link",
            view = view(ino),
            ino = ino.0,
            newparent = newparent.0,
            ?newname
        )
        .entered();
        self.reply_entry(
            reply,
            at(Op::Link, ino, Some(newname)),
            self.fs.link(caller(req), ino.0, newparent.0, newname),
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.timed(req, Op::Open, ino);
        let _s = debug_span!("open", view = view(ino), ino = ino.0, flags = flags.0).entered();
        let register = |r: Registration<'_>| match r {
            Registration::New(fd) => reply
                .open_backing(fd)
                .map(|id| Arc::new(id) as BackingToken),
            Registration::Idle(id) => {
                // SAFETY: `id` is an idle registration of this inode on this connection,
                // which the mode table or the inode's export took over from a `BackingId`
                // (`KernelIdleIds::hand_over`) and has not closed; the new `BackingId` owns
                // it from here (and closes it when dropped, unless handed over again).
                let backing = unsafe { reply.wrap_backing(id) };
                Ok(Arc::new(backing) as BackingToken)
            }
        };
        match self.fs.open(ino.0, flags.0, register) {
            Ok((fh, out)) => match backing_of(&out) {
                Some(id) => reply.opened_passthrough(FileHandle(fh), fopen(&out), id),
                None => reply.opened(FileHandle(fh), fopen(&out)),
            },
            Err(e) => reply.error(failed(at(Op::Open, ino, None), e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _t = self.timed(req, Op::Read, ino);
        let _s = debug_span!(
            "read",
            view = view(ino),
            ino = ino.0,
            fh = fh.0,
            offset,
            size
        )
        .entered();
        self.fs.read(fh.0, offset, size, |r| match r {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(failed(at(Op::Read, ino, None), e)),
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _t = self.timed(req, Op::Write, ino);
        let _s = debug_span!(
            "write",
            view = view(ino),
            ino = ino.0,
            fh = fh.0,
            offset,
            size = data.len()
        )
        .entered();
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(failed(at(Op::Write, ino, None), e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(req, Op::Flush, ino);
        // Writes are write-through: there is nothing to flush.
        reply.ok();
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(req, Op::Release, ino);
        let released = self.fs.release(fh.0);
        reply.ok();
        drop(released);
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(req, Op::Fsync, ino);
        let _s = debug_span!("fsync", view = view(ino), ino = ino.0, fh = fh.0, datasync).entered();
        reply_empty(
            reply,
            at(Op::Fsync, ino, None),
            self.fs.fsync(fh.0, datasync),
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.timed(req, Op::Opendir, ino);
        let _s = debug_span!("opendir", view = view(ino), ino = ino.0).entered();
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(failed(at(Op::Opendir, ino, None), e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _t = self.timed(req, Op::Readdir, ino);
        let _s = debug_span!("readdir", view = view(ino), ino = ino.0, fh = fh.0, offset).entered();
        let r = self.fs.readdir(ino.0, fh.0, offset, false, |it| {
            reply.add(
                INodeNo(it.ino),
                it.next,
                kind(it.fmt),
                OsStr::from_bytes(&it.name),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(failed(at(Op::Readdir, ino, None), e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _t = self.timed(req, Op::Readdirplus, ino);
        let _s = debug_span!(
            "readdirplus",
            view = view(ino),
            ino = ino.0,
            fh = fh.0,
            offset
        )
        .entered();
        let r = self.fs.readdir(ino.0, fh.0, offset, true, |it| {
            // "." and "..": the kernel ignores their attributes.
            let attr = it
                .attr
                .as_ref()
                .map_or_else(|| dot_attr(it.ino, it.fmt), fattr);
            let ttl = if it.attr.is_some() {
                self.ttl(it.ino)
            } else {
                Duration::ZERO
            };
            let full = reply.add(
                INodeNo(it.ino),
                it.next,
                OsStr::from_bytes(&it.name),
                &ttl,
                &attr,
                Generation(0),
            );
            if full && it.attr.is_some() && it.name != b"." && it.name != b".." {
                // Not sent: give back the lookup reference it took.
                self.fs.forget(it.ino, 1);
            }
            full
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(failed(at(Op::Readdirplus, ino, None), e)),
        }
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(req, Op::Releasedir, ino);
        let released = self.fs.release(fh.0);
        reply.ok();
        drop(released);
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(req, Op::Fsyncdir, ino);
        reply_empty(
            reply,
            at(Op::Fsyncdir, ino, None),
            self.fs.fsync(fh.0, datasync),
        );
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _t = self.timed(req, Op::Statfs, ino);
        match self.fs.statfs(ino.0) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(failed(at(Op::Statfs, ino, None), e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(req, Op::Setxattr, ino);
        let _s = debug_span!("setxattr", view = view(ino), ino = ino.0, ?name).entered();
        reply_empty(
            reply,
            at(Op::Setxattr, ino, Some(name)),
            self.fs.setxattr(caller(req), ino.0, name, value, flags),
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _t = self.timed(req, Op::Getxattr, ino);
        let _s = debug_span!("getxattr", view = view(ino), ino = ino.0, ?name).entered();
        reply_xattr(
            reply,
            at(Op::Getxattr, ino, Some(name)),
            size,
            self.fs.getxattr(ino.0, name),
        );
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = self.timed(req, Op::Listxattr, ino);
        reply_xattr(
            reply,
            at(Op::Listxattr, ino, None),
            size,
            self.fs.listxattr(caller(req), ino.0),
        );
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.timed(req, Op::Removexattr, ino);
        reply_empty(
            reply,
            at(Op::Removexattr, ino, Some(name)),
            self.fs.removexattr(caller(req), ino.0, name),
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _t = self.timed(req, Op::Access, ino);
        reply_empty(
            reply,
            at(Op::Access, ino, None),
            self.fs.access(caller(req), ino.0, mask.bits()),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _t = self.timed(req, Op::Create, parent);
        let _s = debug_span!(
            "create",
            view = view(parent),
            parent = parent.0,
            ?name,
            mode,
            flags
        )
        .entered();
        match self
            .fs
            .create(caller(req), parent.0, name, mode, umask, flags)
        {
            Ok((a, fh, out)) => match backing_of(&out) {
                Some(id) => reply.created_passthrough(
                    &self.ttl(a.ino),
                    &fattr(&a),
                    Generation(0),
                    FileHandle(fh),
                    fopen(&out),
                    id,
                ),
                None => reply.created(
                    &self.ttl(a.ino),
                    &fattr(&a),
                    Generation(0),
                    FileHandle(fh),
                    fopen(&out),
                ),
            },
            Err(e) => reply.error(failed(at(Op::Create, parent, Some(name)), e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(req, Op::Fallocate, ino);
        let _s = debug_span!(
            "fallocate",
            view = view(ino),
            ino = ino.0,
            offset,
            length,
            mode
        )
        .entered();
        reply_empty(
            reply,
            at(Op::Fallocate, ino, None),
            self.fs.fallocate(fh.0, offset, length, mode),
        );
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _t = self.timed(req, Op::Lseek, ino);
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(failed(at(Op::Lseek, ino, None), e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _t = self.timed(req, Op::CopyFileRange, ino_in);
        let _s = debug_span!(
            "copy_file_range",
            view = view(ino_in),
            offset_in,
            offset_out,
            len
        )
        .entered();
        match self.fs.copy_file_range(
            fh_in.0,
            offset_in,
            fh_out.0,
            offset_out,
            len,
            flags.bits() as u32,
        ) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(failed(at(Op::CopyFileRange, ino_in, None), e)),
        }
    }

    /// No ioctl is supported. A terminal query on a file (`isatty()` sends `TCGETS`) is
    /// the common one: every request gets `ENOTTY`, what a plain file answers, logged at
    /// `debug` like any expected failure (fuser's default would warn on each).
    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let _t = self.timed(req, Op::Ioctl, ino);
        let _s = debug_span!("ioctl", view = view(ino), ino = ino.0, cmd).entered();
        reply.error(failed(at(Op::Ioctl, ino, None), Errno::ENOTTY));
    }

    /// `poll`/`epoll` on a file: `ENOSYS`, after which the kernel stops asking for this
    /// mount and reports files always ready, as a regular file is (fuser's default would
    /// warn).
    fn poll(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        let _t = self.timed(req, Op::Poll, ino);
        reply.error(failed(at(Op::Poll, ino, None), Errno::ENOSYS));
    }
}

use std::os::unix::ffi::OsStrExt;
