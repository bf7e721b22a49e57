//! The filesystem core: host view, device view and control directory.
//!
//! Knows nothing of FUSE: every operation takes plain values and returns an
//! [`FsResult`]; `fuse.rs` only translates. Invariants:
//! - the host view is a write-through passthrough: nothing is acknowledged
//!   before STORAGE has accepted it;
//! - every modification through the device view (or through a `--read-only`
//!   mount) fails with `EROFS` before touching STORAGE, and is counted;
//! - every change to file data made through the mount invalidates exactly the
//!   device pages it covers *after* STORAGE has the new bytes and *before* the
//!   reply, so no later read of either view can see the old bytes (a fill that
//!   raced with the change is discarded by the tier's invalidation sequence);
//! - a file whose backing fingerprint changed behind the mount's back has its
//!   device pages and kernel-cached data dropped at the next open;
//! - every change made through the host view tells the kernel what it made
//!   stale in its cache of the device view (entries, attributes, mapped
//!   pages) as `notify.rs` describes: attributes and entries before the reply;
//! - a host-view open is served by the kernel (passthrough) or by the daemon as
//!   its inode's I/O mode allows (`iomode.rs`), held until its release; a
//!   writable passthrough open, whose writes the daemon never sees, keeps the
//!   device tier out of its file until it is released (`coherence.rs`);
//! - every change of names made through the host view registers the inotify
//!   events it causes before its syscall, so that the watcher does not tell
//!   the kernel again what it already knows.
//!
//! `coherence.rs` holds the protocol behind these; this file only calls it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use serde_json::json;

use crate::coherence::{Child, Coherence, DeviceAccess, EntryEvent};
use crate::control::{self, ControlXattr};
use crate::creds::{Caller, become_caller};
use crate::errno::{Errno, FsResult};
use crate::inode::{
    CONTROL_ID, Inode, InodeId, InodeTable, ROOT_ID, STATS_ID, View, decode, encode,
};
use crate::iomode::{BackingToken, Held, IoModes, PassthroughMode, Registration};
use crate::lock::{lock, read, write};
use crate::stats::{HostStats, KernelStats, NotificationStats, PassthroughStats, StatsDocument};
use crate::storage::{self, Attr, RawEntry};
use crate::tier::{
    DeviceTier, Export, FillSource, Hint, InvalidationCause, NotExported, SHARED_MEMORY_KIND,
    Served, SharedSource,
};

/// Settings of the filesystem core.
#[derive(Clone, Debug, Default)]
pub struct FsConfig {
    /// Refuse every modification in both views.
    pub read_only: bool,
    /// Name of the control directory in the root (`.pagetier`).
    pub control_name: OsString,
    /// Record every device-view read here (CSV `file_id,offset,len`).
    pub trace: Option<std::path::PathBuf>,
    /// Serve read-only host-view opens through FUSE passthrough where the kernel allows
    /// it (`--passthrough auto`); the adapter enables it at init ([`Pagetier::enable_passthrough`]).
    pub passthrough: bool,
    /// With passthrough on, a device-view open of a wholly resident file of at least this
    /// many bytes is served by the kernel from shared device memory (`tier/export.rs`).
    pub device_passthrough_min: u64,
    /// A device-view open of a file not yet wholly resident and at most this many bytes
    /// prefetches it whole and is then served like a resident one (`--device-open-prefetch`;
    /// 0: only under the `sequential` or `pin` hint).
    pub device_open_prefetch: u64,
    /// How long the kernel may cache names and attributes.
    pub cache_timeout: CacheTimeout,
    /// STORAGE is changed only by this machine (`storage::is_local_fs`), so the watcher can
    /// see every change of it (false: a network or FUSE filesystem, or unknown).
    pub storage_local: bool,
}

/// How long the kernel may cache names and attributes (`--cache-timeout`).
///
/// The kernel asks again only when a timeout ran out, so every name and attribute it may
/// cache must be dropped by a notification as soon as it changes. Changes through the mount
/// notify themselves, and the watcher notifies the changes STORAGE reports through inotify
/// (`watch.rs`). `Auto` caches for [`CacheTimeout::LONG`] only while both hold for every
/// change: STORAGE is a local filesystem (inotify does not see another node's changes to a
/// network filesystem) and the watcher has missed nothing (no watch failed, no queue
/// overflowed); otherwise for [`CacheTimeout::SHORT`], which bounds how long a change no
/// notification reports stays visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheTimeout {
    Auto,
    Fixed(Duration),
}

impl Default for CacheTimeout {
    fn default() -> Self {
        CacheTimeout::Fixed(CacheTimeout::SHORT)
    }
}

impl CacheTimeout {
    /// `Auto`'s timeout when every change is notified (what `passthrough_ll -o cache=always`
    /// uses).
    pub const LONG: Duration = Duration::from_secs(86_400);
    /// `Auto`'s timeout otherwise.
    pub const SHORT: Duration = Duration::from_secs(1);

    /// The timeout in force, given whether STORAGE is local ([`FsConfig::storage_local`])
    /// and whether the watcher has seen every change so far.
    pub fn now(self, storage_local: bool, watcher_sees_all: bool) -> Duration {
        match self {
            CacheTimeout::Fixed(d) => d,
            CacheTimeout::Auto if storage_local && watcher_sees_all => CacheTimeout::LONG,
            CacheTimeout::Auto => CacheTimeout::SHORT,
        }
    }
}

/// Limits the kernel agreed to at init (for stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLimits {
    /// Largest request in pages (`fs.fuse.max_pages_limit` caps it).
    pub max_pages: u32,
    /// Largest readahead the kernel makes, in bytes.
    pub max_readahead: u32,
}

/// What the caller asked `setattr` to change.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
}

/// A time to set: now, or a given instant.
#[derive(Clone, Copy, Debug)]
pub enum TimeSpec {
    Now,
    At(SystemTime),
}

/// How the kernel should treat an opened file.
#[derive(Clone, Debug, Default)]
pub struct OpenOut {
    /// Bypass the kernel page cache (device view, stats).
    pub direct_io: bool,
    /// The backing file is unchanged since the kernel cached it: keep it.
    pub keep_cache: bool,
    /// A read-only open (device view, stats, read-only host opens): its close
    /// has nothing to flush, so the kernel need not send FLUSH.
    pub no_flush: bool,
    /// Served by the kernel onto this backing registration (FUSE passthrough): the
    /// daemon sees none of its reads and writes.
    pub passthrough: Option<BackingToken>,
}

impl OpenOut {
    /// A read-only open served by the daemon past the kernel's page cache (device view,
    /// stats): nothing to keep, nothing to flush.
    fn read_only_uncached() -> Self {
        OpenOut {
            direct_io: true,
            keep_cache: false,
            no_flush: true,
            passthrough: None,
        }
    }
}

/// One item of a directory listing.
#[derive(Clone, Debug)]
pub struct DirItem {
    pub ino: u64,
    /// Offset of the *next* item.
    pub next: u64,
    pub fmt: u32,
    pub name: Vec<u8>,
    /// With readdirplus: attributes, and a lookup reference taken for `ino`
    /// (the adapter forgets it again if the item did not fit).
    pub attr: Option<Attr>,
}

/// Filesystem statistics for statfs.
#[derive(Clone, Copy, Debug)]
pub struct FsStat {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// The I/O mode a device-view open took ([`Pagetier::open`]).
#[derive(Default)]
struct DeviceIo {
    /// The mode held until release (`None`: passthrough is off, no mode is tracked).
    held: Option<Held>,
    /// Passthrough: the registration of the copy to name in the reply.
    backing: Option<BackingToken>,
    /// Passthrough: the export of the file's device pages the open holds.
    export: Option<Arc<Export>>,
}

/// Host-view counters.
#[derive(Default)]
struct HostCounters {
    reads: AtomicU64,
    writes: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
}

/// The descriptor an open file's own calls (fstat, lseek, fsync, ftruncate, copies) use.
enum OpenFile {
    /// Host view: a descriptor opened with the open's own flags.
    Own(OwnedFd),
    /// Host view, read-only and served by the kernel through the inode's registration named
    /// again: no descriptor until one of the open's own calls needs it (an `lseek` with
    /// `SEEK_DATA`, an `fsync`, a copy), then the object opened by its handle with the open's
    /// flags, once. Such an open sends no `READ`; not opening STORAGE saves an open, an
    /// `fstat` and a close per open of a file the kernel still knows.
    Deferred {
        flags: OFlags,
        fd: std::sync::OnceLock<OwnedFd>,
    },
    /// Device view: the storage source's (`O_DIRECT` where STORAGE allows it), which serves
    /// fstat and lseek as well as the fills; sharing it saves a dup and a close per open.
    Source(Arc<StorageSource>),
}

impl OpenFile {
    /// The descriptor; a deferred one is opened now, by `inode`'s handle.
    fn fd<'a>(&'a self, inode: Option<&Inode>) -> FsResult<BorrowedFd<'a>> {
        Ok(match self {
            OpenFile::Own(fd) => fd.as_fd(),
            OpenFile::Source(source) => source.fd.as_fd(),
            OpenFile::Deferred { flags, fd } => {
                if let Some(fd) = fd.get() {
                    return Ok(fd.as_fd());
                }
                let opened = inode.ok_or(Errno::EBADF)?.reopen(*flags)?;
                // Two calls racing: the loser's descriptor is closed here.
                fd.get_or_init(|| opened).as_fd()
            }
        })
    }
}

enum HandleKind {
    /// An open regular file of either view.
    File {
        file: OpenFile,
        /// Device view: what faults (and readahead) read storage through.
        source: Option<SharedSource>,
        view: View,
        append: bool,
        /// The I/O mode this open holds until its release (`iomode.rs`): every host-view
        /// open, and device-view opens while passthrough is on.
        io: Option<Held>,
        /// Device view, served by the kernel: the export of the file's device pages it
        /// holds until its release (`tier/export.rs`).
        export: Option<Arc<Export>>,
    },
    /// An open directory: a snapshot of its entries, refreshed at offset 0.
    Dir {
        entries: Mutex<Vec<RawEntry>>,
        view: View,
    },
    /// The control directory.
    ControlDir,
    /// The stats file: the JSON generated at open.
    Stats(Vec<u8>),
}

struct Handle {
    inode: Option<Arc<Inode>>,
    kind: HandleKind,
}

/// A released handle, gone from the handle table and from every mode and export it held:
/// dropping it closes its descriptors. The adapter drops it after the reply, so that the
/// `close` of STORAGE's file (7–9% of the daemon's CPU in a device-view small-file epoch)
/// runs while the caller goes on instead of before it can.
pub struct Released {
    _handle: Option<Arc<Handle>>,
}

/// Reads a backing file for the device tier: `O_DIRECT` when the backing
/// filesystem allows it, else buffered reads that drop what they cached. It
/// owns its descriptor so that readahead can use it after the read returns.
struct StorageSource {
    fd: OwnedFd,
    direct: bool,
}

impl StorageSource {
    /// A source for the backing object behind `inode` (`O_DIRECT` where STORAGE allows it).
    fn open_fd(inode: &Inode) -> FsResult<Arc<StorageSource>> {
        let (fd, direct) = match inode.reopen(OFlags::RDONLY | OFlags::DIRECT) {
            Ok(fd) => (fd, true),
            Err(_) => (inode.reopen(OFlags::RDONLY)?, false),
        };
        Ok(Arc::new(StorageSource { fd, direct }))
    }
}

impl FillSource for StorageSource {
    fn size(&self) -> std::io::Result<u64> {
        Ok(rustix::fs::fstat(&self.fd)?.st_size as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let n = storage::pread_full(self.fd.as_fd(), buf, offset)?;
        if !self.direct {
            let _ = rustix::fs::fadvise(
                &self.fd,
                offset,
                std::num::NonZeroU64::new(buf.len() as u64),
                rustix::fs::Advice::DontNeed,
            );
        }
        Ok(n)
    }
}

/// The filesystem.
pub struct Pagetier {
    cfg: FsConfig,
    inodes: InodeTable,
    /// Open files and directories by handle number (read-mostly: every read
    /// looks its handle up).
    handles: std::sync::RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    tier: Arc<DeviceTier>,
    host: HostCounters,
    started: SystemTime,
    trace: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
    /// Keeps both views and the kernel's caches of them coherent with STORAGE.
    coherence: Coherence,
    /// Each FUSE inode's I/O mode: passthrough or daemon-served (`iomode.rs`).
    io_modes: IoModes,
    /// Passthrough is negotiated with the kernel and no registration has failed.
    passthrough_on: AtomicBool,
    /// Limits the kernel agreed to at init.
    kernel_limits: Mutex<KernelLimits>,
    /// The FUSE workers (`workers.rs`), for the stats; set once the session is made.
    workers: std::sync::OnceLock<Arc<crate::workers::Workers>>,
    /// Device-view reads served straight from STORAGE while a passthrough writer was open.
    device_reads_behind: AtomicU64,
    /// Device-view opens served by the kernel from shared device memory.
    device_passthrough_opens: AtomicU64,
}

fn ts(t: TimeSpec) -> Timespec {
    match t {
        TimeSpec::Now => Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        TimeSpec::At(t) => {
            let (sec, nsec) = match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let mut sec = -(d.as_secs() as i64);
                    let mut nsec = d.subsec_nanos() as i64;
                    if nsec > 0 {
                        sec -= 1;
                        nsec = 1_000_000_000 - nsec;
                    }
                    (sec, nsec)
                }
            };
            Timespec {
                tv_sec: sec,
                tv_nsec: nsec as _,
            }
        }
    }
}

const OMIT: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_OMIT,
};

impl Pagetier {
    /// A filesystem serving the STORAGE whose root is `root_fd`.
    pub fn new(cfg: FsConfig, root_fd: OwnedFd, tier: Arc<DeviceTier>) -> FsResult<Self> {
        let st = storage::stat(&root_fd)?;
        if storage::fmt_of(&st) != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        let trace = match &cfg.trace {
            Some(path) => {
                let f = std::fs::File::create(path).map_err(Errno::from)?;
                Some(Mutex::new(std::io::BufWriter::new(f)))
            }
            None => None,
        };
        Ok(Pagetier {
            trace,
            inodes: InodeTable::new(storage::key_of(&st), root_fd),
            cfg,
            handles: std::sync::RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            coherence: Coherence::new(tier.clone()),
            tier,
            host: HostCounters::default(),
            started: SystemTime::now(),
            io_modes: IoModes::new(),
            passthrough_on: AtomicBool::new(false),
            kernel_limits: Mutex::new(KernelLimits::default()),
            workers: std::sync::OnceLock::new(),
            device_reads_behind: AtomicU64::new(0),
            device_passthrough_opens: AtomicU64::new(0),
        })
    }

    /// Whether the mount asks the kernel for passthrough at init (`--passthrough auto`).
    pub fn passthrough_wanted(&self) -> bool {
        self.cfg.passthrough
    }

    /// The kernel agreed to passthrough at init: read-only host-view opens use it from now.
    pub fn enable_passthrough(&self) {
        self.passthrough_on.store(true, Ordering::SeqCst);
        match self.tier.enable_shared_memory() {
            Ok(()) => tracing::info!(
                device_memory = SHARED_MEMORY_KIND,
                min_size = self.cfg.device_passthrough_min,
                "device-view opens of wholly resident files are served by the kernel from \
                 shared device memory"
            ),
            Err(e) => tracing::info!(
                error = %e,
                "no shared device memory: device-view opens are served by the daemon"
            ),
        }
    }

    /// Whether passthrough is in force now.
    pub fn passthrough_mode(&self) -> PassthroughMode {
        if self.passthrough_on.load(Ordering::SeqCst) {
            PassthroughMode::On
        } else {
            PassthroughMode::Off
        }
    }

    /// Records the limits the kernel agreed to at init.
    pub fn set_kernel_limits(&self, limits: KernelLimits) {
        *lock(&self.kernel_limits) = limits;
    }

    /// Lets passthrough registrations stay idle between opens as the kernel's ids: host-view
    /// ones in the mode table (`iomode.rs`), device-view ones with their idle exports
    /// (`tier/export.rs`).
    pub fn set_idle_ids(&self, ids: std::sync::Arc<dyn crate::iomode::IdleIds>) {
        self.tier.set_idle_ids(ids.clone());
        self.io_modes.set_idle_ids(ids);
    }

    /// The session's FUSE workers, reported in the stats.
    pub fn set_workers(&self, workers: Arc<crate::workers::Workers>) {
        let _ = self.workers.set(workers);
    }

    /// A backing registration failed: no new passthrough from now on (inodes already in
    /// passthrough mode keep it until their opens are released). Logged once.
    fn passthrough_failed(&self, err: &std::io::Error) {
        if self.passthrough_on.swap(false, Ordering::SeqCst) {
            self.io_modes.drop_idle();
            tracing::info!(
                error = %err,
                "passthrough off: the kernel refused a backing file; host-view opens are \
                 served by the daemon from now on"
            );
        }
    }

    /// Starts telling the kernel, through `notifier`, what host-view changes
    /// make stale in its cache of the device view. Until then (and without
    /// it) device-view entries and attributes must not be cached.
    pub fn connect_kernel(&self, notifier: fuser::Notifier) -> std::io::Result<()> {
        self.coherence.connect(notifier)
    }

    /// Whether the kernel may cache device-view entries and attributes: only
    /// once it is told what host-view changes make stale there.
    pub fn device_view_cacheable(&self) -> bool {
        self.coherence.is_connected()
    }

    /// How long the kernel may cache names and attributes now ([`CacheTimeout`]).
    pub fn cache_timeout(&self) -> Duration {
        self.cfg
            .cache_timeout
            .now(self.cfg.storage_local, self.coherence.sees_all())
    }

    /// The coherence protocol (the watcher answers STORAGE's events through it).
    pub fn coherence(&self) -> &Coherence {
        &self.coherence
    }

    /// The inode table (for leak checks).
    pub fn inodes(&self) -> &InodeTable {
        &self.inodes
    }

    // ----- inodes and attributes -------------------------------------------------

    fn node(&self, id: InodeId) -> FsResult<Arc<Inode>> {
        self.inodes.get(id).ok_or(Errno::ESTALE)
    }

    /// Decodes a FUSE inode that must be a backing object.
    fn backing(&self, ino: u64) -> FsResult<(Arc<Inode>, View)> {
        let (id, view) = decode(ino).ok_or(Errno::EINVAL)?;
        if id == CONTROL_ID || id == STATS_ID {
            return Err(Errno::EPERM);
        }
        Ok((self.node(id)?, view))
    }

    /// Decodes a FUSE inode whose contents may be modified.
    fn writable(&self, ino: u64) -> FsResult<(Arc<Inode>, View)> {
        let (id, view) = decode(ino).ok_or(Errno::EINVAL)?;
        if id == CONTROL_ID || id == STATS_ID || view == View::Device || self.cfg.read_only {
            return Err(self.refuse(view));
        }
        Ok((self.node(id)?, view))
    }

    /// Counts and returns a refused modification.
    fn refuse(&self, view: View) -> Errno {
        if view == View::Device {
            self.tier.count_refused_write();
        }
        Errno::EROFS
    }

    fn attr_of(&self, inode: &Inode, view: View) -> FsResult<Attr> {
        let st = storage::stat(inode.fd()?)?;
        Ok(Attr::from_stat(encode(inode.id, view), &st))
    }

    fn control_attr(&self, id: InodeId) -> FsResult<Attr> {
        let root = self.node(ROOT_ID)?;
        let like = self.attr_of(&root, View::Host)?;
        let mut a = match id {
            CONTROL_ID => Attr::synthetic(encode(id, View::Host), libc::S_IFDIR, 0o555, 2, &like),
            _ => Attr::synthetic(encode(id, View::Host), libc::S_IFREG, 0o444, 1, &like),
        };
        a.atime = self.started;
        a.mtime = self.started;
        a.ctime = self.started;
        Ok(a)
    }

    /// Looks `name` up in directory `parent`, taking one lookup reference.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let (pid, view) = decode(parent).ok_or(Errno::EINVAL)?;
        match pid {
            CONTROL_ID => {
                return match name.as_bytes() {
                    b"device" => self.attr_of(&*self.node(ROOT_ID)?, View::Device),
                    b"stats" => self.control_attr(STATS_ID),
                    _ => Err(Errno::ENOENT),
                };
            }
            STATS_ID => return Err(Errno::ENOTDIR),
            ROOT_ID if view == View::Host && name == self.cfg.control_name.as_os_str() => {
                return self.control_attr(CONTROL_ID);
            }
            _ => {}
        }
        storage::check_name(name)?;
        self.lookup_child(&*self.node(pid)?, view, name)
    }

    /// Drops `n` kernel references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        let Some((id, view)) = decode(ino) else {
            return;
        };
        if id == CONTROL_ID || id == STATS_ID {
            return;
        }
        // Device pages outlive the kernel's reference: the table remembers
        // what was seen of the file while the tier holds pages of it, and the
        // next open revalidates them. No readahead may add pages once it is
        // dropped.
        if self.inodes.forget(id, n, view).is_some() {
            self.io_modes.forget(encode(id, View::Host));
            let has_pages = |id| self.tier.holds_pages(id);
            self.inodes.prune_forgotten(id, |id| {
                has_pages(id) || {
                    self.tier.cancel_readahead(id);
                    has_pages(id)
                }
            });
        }
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let (id, view) = decode(ino).ok_or(Errno::EINVAL)?;
        if id == CONTROL_ID || id == STATS_ID {
            return self.control_attr(id);
        }
        self.attr_of(&*self.node(id)?, view)
    }

    /// Changes attributes of `ino` (through open handle `fh` when given).
    pub fn setattr(
        &self,
        caller: Caller,
        ino: u64,
        fh: Option<u64>,
        set: SetAttr,
    ) -> FsResult<Attr> {
        let (inode, view) = self.writable(ino)?;
        self.coherence
            .changing(&inode, || self.apply_setattr(caller, &inode, fh, set))?;
        self.attr_of(&inode, view)
    }

    fn apply_setattr(
        &self,
        caller: Caller,
        inode: &Inode,
        fh: Option<u64>,
        set: SetAttr,
    ) -> FsResult<()> {
        if set.mode.is_none()
            && set.uid.is_none()
            && set.gid.is_none()
            && set.size.is_none()
            && set.atime.is_none()
            && set.mtime.is_none()
        {
            // chown(f, -1, -1) and friends: the kernel sends an empty setattr
            // for a change that only marks ctime; let the backing fs mark it.
            let fd = inode.fd()?;
            let _as = become_caller(caller)?;
            rustix::fs::chownat(&fd, "", None, None, AtFlags::EMPTY_PATH)?;
            return Ok(());
        }
        if let Some(mode) = set.mode {
            self.chmod(caller, inode, mode)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            let fd = inode.fd()?;
            let _as = become_caller(caller)?;
            rustix::fs::chownat(
                &fd,
                "",
                set.uid.map(uid_of),
                set.gid.map(gid_of),
                AtFlags::EMPTY_PATH,
            )?;
        }
        if let Some(size) = set.size {
            storage::check_offset(size)?;
            if !inode.is_reg() {
                return Err(if inode.is_dir() {
                    Errno::EISDIR
                } else {
                    Errno::EINVAL
                });
            }
            let handle = fh.and_then(|fh| self.handle(fh).ok());
            let old = storage::stat(inode.fd()?)?.st_size as u64;
            match handle.as_deref().map(|h| &h.kind) {
                Some(HandleKind::File { file, .. }) => {
                    rustix::fs::ftruncate(file.fd(Some(inode))?, size)?;
                }
                _ => {
                    let path_fd = inode.fd()?;
                    let _as = become_caller(caller)?;
                    let fd = storage::reopen(path_fd.as_fd(), OFlags::WRONLY)?;
                    rustix::fs::ftruncate(&fd, size)?;
                }
            }
            let from = old.min(size) & !4095;
            self.tier
                .invalidate_range(inode.id, from, u64::MAX, InvalidationCause::Truncate);
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = Timestamps {
                last_access: set.atime.map(ts).unwrap_or(OMIT),
                last_modification: set.mtime.map(ts).unwrap_or(OMIT),
            };
            let fd = inode.fd()?;
            let path = storage::proc_path(fd.as_fd());
            let _as = become_caller(caller)?;
            rustix::fs::utimensat(rustix::fs::CWD, path.as_c_str(), &times, AtFlags::empty())?;
        }
        Ok(())
    }

    fn chmod(&self, caller: Caller, inode: &Inode, mode: u32) -> FsResult<()> {
        let fd = inode.fd()?;
        let path = storage::proc_path(fd.as_fd());
        let mode = Mode::from_bits_truncate(mode & 0o7777);
        let res = {
            let _as = become_caller(caller)?;
            rustix::fs::chmodat(rustix::fs::CWD, path.as_c_str(), mode, AtFlags::empty())
        };
        match res {
            Err(rustix::io::Errno::PERM) => {
                // The kernel asks a non-owner's write to drop set-id bits with a
                // mode change; dropping them is never an escalation, so do it.
                let cur = storage::stat(&fd)?.st_mode & 0o7777;
                let kill = libc::S_ISUID | libc::S_ISGID;
                if mode.bits() & !kill == cur & !kill && mode.bits() & kill != cur & kill {
                    rustix::fs::chmodat(rustix::fs::CWD, path.as_c_str(), mode, AtFlags::empty())?;
                    Ok(())
                } else {
                    Err(Errno::EPERM)
                }
            }
            r => Ok(r?),
        }
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let (inode, _) = self.backing(ino)?;
        let target = rustix::fs::readlinkat(inode.fd()?, "", Vec::new())?;
        Ok(target.into_bytes())
    }

    fn dir_for_create(&self, parent: u64, name: &OsStr) -> FsResult<(Arc<Inode>, View)> {
        let (dir, view) = self.writable(parent)?;
        if dir.id == ROOT_ID && name == self.cfg.control_name.as_os_str() {
            return Err(Errno::EEXIST);
        }
        storage::check_name(name)?;
        Ok((dir, view))
    }

    /// Looks the child `name` of `dir` up in STORAGE, taking one reference
    /// (also right after creating it).
    fn lookup_child(&self, dir: &Inode, view: View, name: &OsStr) -> FsResult<Attr> {
        let (fd, st) = storage::open_child(dir.fd()?.as_fd(), name)?;
        let inode = self
            .inodes
            .lookup_ref(storage::key_of(&st), storage::fmt_of(&st), fd, view);
        Ok(Attr::from_stat(encode(inode.id, view), &st))
    }

    pub fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<Attr> {
        let (dir, view) = self.dir_for_create(parent, name)?;
        let own = self
            .coherence
            .expect_own(&[(&dir, name, EntryEvent::Created)]);
        let dir_fd = dir.fd()?;
        as_creator(caller, mode, umask, |perm| {
            let kind = rustix::fs::FileType::from_raw_mode(mode);
            rustix::fs::mknodat(&dir_fd, name, kind, perm, rdev as u64)
        })?;
        own.happened();
        self.coherence.device_view_stale(|s| {
            s.entry(&dir, name);
        });
        self.lookup_child(&dir, view, name)
    }

    pub fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<Attr> {
        let (dir, view) = self.dir_for_create(parent, name)?;
        let own = self
            .coherence
            .expect_own(&[(&dir, name, EntryEvent::Created)]);
        let dir_fd = dir.fd()?;
        as_creator(caller, mode, umask, |perm| {
            rustix::fs::mkdirat(&dir_fd, name, perm)
        })?;
        own.happened();
        self.coherence.device_view_stale(|s| {
            s.entry(&dir, name);
        });
        self.lookup_child(&dir, view, name)
    }

    pub fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> FsResult<Attr> {
        let (dir, view) = self.dir_for_create(parent, name)?;
        let own = self
            .coherence
            .expect_own(&[(&dir, name, EntryEvent::Created)]);
        {
            let dir_fd = dir.fd()?;
            let _as = become_caller(caller)?;
            rustix::fs::symlinkat(target, &dir_fd, name)?;
        }
        own.happened();
        self.coherence.device_view_stale(|s| {
            s.entry(&dir, name);
        });
        self.lookup_child(&dir, view, name)
    }

    pub fn link(
        &self,
        caller: Caller,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> FsResult<Attr> {
        let (inode, _) = self.writable(ino)?;
        let (dir, view) = self.dir_for_create(newparent, newname)?;
        self.coherence.changing(&inode, || {
            let own = self
                .coherence
                .expect_own(&[(&dir, newname, EntryEvent::Created)]);
            let fd = inode.fd()?;
            let path = storage::proc_path(fd.as_fd());
            let dir_fd = dir.fd()?;
            let _as = become_caller(caller)?;
            rustix::fs::linkat(
                rustix::fs::CWD,
                path.as_c_str(),
                &dir_fd,
                newname,
                AtFlags::SYMLINK_FOLLOW,
            )?;
            own.happened();
            Ok(())
        })?;
        self.coherence.device_view_stale(|s| {
            s.entry(&dir, newname);
        });
        self.lookup_child(&dir, view, newname)
    }

    pub fn unlink(&self, caller: Caller, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove_entry(caller, parent, name, AtFlags::empty())
    }

    pub fn rmdir(&self, caller: Caller, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove_entry(caller, parent, name, AtFlags::REMOVEDIR)
    }

    /// Removes the entry `name` of `parent` (`unlinkat` with `flags`: a file, or with
    /// `REMOVEDIR` a directory) as the caller; a removed file's device pages go with it
    /// (`coherence.rs`), and the device view's cached entry and the victim's attributes are
    /// marked stale.
    fn remove_entry(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        flags: AtFlags,
    ) -> FsResult<()> {
        let (dir, _) = self.dir_for_create(parent, name)?;
        let victim = Child::of(&self.inodes, &dir, name);
        let own = self
            .coherence
            .expect_own(&[(&dir, name, EntryEvent::Deleted)]);
        self.inodes.pin(victim.map(|v| v.id()));
        {
            let dir_fd = dir.fd()?;
            let _as = become_caller(caller)?;
            rustix::fs::unlinkat(&dir_fd, name, flags)?;
        }
        own.happened();
        if !flags.contains(AtFlags::REMOVEDIR) {
            self.coherence.name_gone(&self.inodes, victim);
        }
        self.coherence.device_view_stale(|s| {
            s.entry(&dir, name);
            if let Some(v) = victim {
                v.mark_stale(&self.inodes, s);
            }
        });
        Ok(())
    }

    pub fn rename(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        let (from, _) = self.dir_for_create(parent, name)?;
        let (to, _) = self.dir_for_create(newparent, newname)?;
        let flags = rustix::fs::RenameFlags::from_bits(flags).ok_or(Errno::EINVAL)?;
        let exchange = flags.contains(rustix::fs::RenameFlags::EXCHANGE);
        let victim = if exchange {
            None
        } else {
            Child::of(&self.inodes, &to, newname)
        };
        let moved = Child::of(&self.inodes, &from, name);
        let own = self
            .coherence
            .expect_rename(&from, name, &to, newname, exchange);
        self.inodes.pin(victim.map(|v| v.id()));
        {
            let (from_fd, to_fd) = (from.fd()?, to.fd()?);
            let _as = become_caller(caller)?;
            rustix::fs::renameat_with(&from_fd, name, &to_fd, newname, flags)?;
        }
        own.happened();
        self.coherence.name_gone(&self.inodes, victim);
        if let Some(inode) = moved.and_then(|m| self.inodes.get(m.id())) {
            self.coherence.note_changed_by_us(&inode);
        }
        self.coherence.device_view_stale(|s| {
            s.entry(&from, name).entry(&to, newname);
            for child in [moved, victim].into_iter().flatten() {
                child.mark_stale(&self.inodes, s);
            }
        });
        Ok(())
    }

    // ----- files -----------------------------------------------------------------

    fn add_handle(&self, inode: Option<Arc<Inode>>, kind: HandleKind) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        write(&self.handles).insert(fh, Arc::new(Handle { inode, kind }));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        read(&self.handles).get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// Open flags for the backing file of a host-view open.
    fn backing_flags(flags: i32) -> OFlags {
        let keep = libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_SYNC
            | libc::O_DSYNC
            | libc::O_NOATIME
            | libc::O_NONBLOCK;
        OFlags::from_bits_retain((flags & keep) as u32)
    }

    /// Opens FUSE inode `ino`. An open may be served by the kernel (passthrough,
    /// `iomode.rs`): `register` registers a backing descriptor with the kernel when it is
    /// the inode's first passthrough open, or names the inode's idle registration again.
    pub fn open(
        &self,
        ino: u64,
        flags: i32,
        register: impl FnOnce(Registration<'_>) -> std::io::Result<BackingToken>,
    ) -> FsResult<(u64, OpenOut)> {
        let (id, view) = decode(ino).ok_or(Errno::EINVAL)?;
        let wants_write = flags & libc::O_ACCMODE != libc::O_RDONLY
            || flags & (libc::O_TRUNC | libc::O_APPEND) != 0;
        if id == STATS_ID {
            return self.open_stats(wants_write);
        }
        if id == CONTROL_ID {
            return Err(Errno::EISDIR);
        }
        let inode = self.node(id)?;
        if wants_write && (view == View::Device || self.cfg.read_only) {
            return Err(self.refuse(view));
        }
        let mut register = Some(register);
        let mut register = |r: Registration<'_>| {
            let register = register.take().expect("an open registers at most once");
            register(r)
        };
        if view == View::Host
            && !wants_write
            && let Some(opened) = self.open_host_registered(&inode, ino, flags, &mut register)
        {
            return opened;
        }
        let (file, source) = match view {
            View::Host => (
                OpenFile::Own(inode.reopen(Self::backing_flags(flags))?),
                None,
            ),
            View::Device => {
                let source = StorageSource::open_fd(&inode)?;
                (
                    OpenFile::Source(source.clone()),
                    Some(source as SharedSource),
                )
            }
        };
        let st = storage::stat(file.fd(Some(&inode))?)?;
        let keep = self.coherence.revalidate(&inode, &st);
        let append = flags & libc::O_APPEND != 0;
        match view {
            View::Host => {
                let fd = file.fd(Some(&inode))?;
                let (io, passthrough) = self.choose_io(&inode, ino, wants_write, |idle| {
                    register(match idle {
                        Some(id) => Registration::Idle(id),
                        None => Registration::New(fd),
                    })
                });
                Ok(self.host_handle(inode, file, append, wants_write, io, keep, passthrough))
            }
            View::Device => {
                let source = source.ok_or(Errno::EIO)?;
                let size = st.st_size as u64;
                let DeviceIo {
                    held,
                    backing: passthrough,
                    export,
                } = self.choose_device_io(&inode, ino, size, &source, register);
                let fh = self.add_handle(
                    Some(inode),
                    HandleKind::File {
                        file,
                        source: Some(source),
                        view,
                        append: false,
                        io: held,
                        export,
                    },
                );
                Ok((
                    fh,
                    match passthrough {
                        Some(backing) => OpenOut {
                            direct_io: false,
                            keep_cache: false,
                            no_flush: true,
                            passthrough: Some(backing),
                        },
                        None => OpenOut::read_only_uncached(),
                    },
                ))
            }
        }
    }

    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<(Attr, u64, OpenOut)> {
        let (dir, view) = self.dir_for_create(parent, name)?;
        let oflags = Self::backing_flags(flags)
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | if flags & libc::O_EXCL != 0 {
                OFlags::EXCL
            } else {
                OFlags::empty()
            };
        // Without O_EXCL an existing file is opened and no event comes: the
        // registration then expires unused.
        let own = self
            .coherence
            .expect_own(&[(&dir, name, EntryEvent::Created)]);
        let dir_fd = dir.fd()?;
        let file = as_creator(caller, mode, umask, |perm| {
            rustix::fs::openat(&dir_fd, name, oflags, perm)
        })?;
        own.happened();
        self.coherence.device_view_stale(|s| {
            s.entry(&dir, name);
        });
        let attr = self.lookup_child(&dir, view, name)?;
        let inode = self.node(decode(attr.ino).ok_or(Errno::EIO)?.0)?;
        self.coherence.created(&inode);
        // An existing file opened without O_EXCL may be in passthrough mode: join it.
        let (io, passthrough) = self.choose_io(&inode, attr.ino, true, |_| {
            Err(std::io::Error::from_raw_os_error(libc::EINVAL))
        });
        let fh = self.add_handle(
            Some(inode),
            HandleKind::File {
                file: OpenFile::Own(file),
                source: None,
                view,
                append: flags & libc::O_APPEND != 0,
                io: Some(io),
                export: None,
            },
        );
        Ok((
            attr,
            fh,
            OpenOut {
                passthrough,
                ..OpenOut::default()
            },
        ))
    }

    /// Opens the stats file: the document generated now, read-only.
    fn open_stats(&self, wants_write: bool) -> FsResult<(u64, OpenOut)> {
        if wants_write {
            return Err(Errno::EROFS);
        }
        let json = self.stats_document().to_file_bytes();
        let fh = self.add_handle(None, HandleKind::Stats(json));
        Ok((fh, OpenOut::read_only_uncached()))
    }

    /// A read-only host-view open that the kernel serves through a registration it already
    /// has (the inode in passthrough mode, or its idle registration), or `None` (no mode
    /// taken) when there is none or not every change of STORAGE is seen. It opens nothing in
    /// STORAGE: the kernel reads the STORAGE file it registered, so the open needs no descriptor of the daemon's
    /// ([`OpenFile::Deferred`]) and has no cached data to keep or drop, hence no
    /// revalidation either (a device-view open revalidates for the device tier). That saves
    /// an open by handle, an `fstat` and a close per open of a file the kernel still knows.
    fn open_host_registered(
        &self,
        inode: &Arc<Inode>,
        ino: u64,
        flags: i32,
        register: &mut impl FnMut(Registration<'_>) -> std::io::Result<BackingToken>,
    ) -> Option<FsResult<(u64, OpenOut)>> {
        // Only while every change of STORAGE reaches the watcher, which then takes the name
        // of a file replaced or removed behind the mount from the kernel (until it does, an
        // open by handle reached the old object too, which the registration holds open).
        // On shared storage another node's change is not reported: opening the STORAGE
        // object is what finds it gone (`ESTALE`, and the kernel looks the name up again),
        // so such an open goes the usual way.
        if !self.passthrough_on.load(Ordering::SeqCst)
            || !inode.is_reg()
            || !self.cfg.storage_local
            || !self.coherence.sees_all()
        {
            return None;
        }
        let chosen = self.io_modes.open_registered(ino, |idle| match idle {
            Some(id) => register(Registration::Idle(id)),
            None => unreachable!("open_registered names only an idle registration"),
        })?;
        if let Some(err) = &chosen.registration_failed {
            self.passthrough_failed(err);
        }
        let oflags = Self::backing_flags(flags);
        let file = match chosen.held {
            Held::Cached => match inode.reopen(oflags) {
                // Naming the registration failed: served by the daemon, from a descriptor.
                Ok(fd) => OpenFile::Own(fd),
                Err(e) => {
                    self.io_modes.release(ino, Held::Cached, true);
                    return Some(Err(e));
                }
            },
            _ => OpenFile::Deferred {
                flags: oflags,
                fd: std::sync::OnceLock::new(),
            },
        };
        let append = flags & libc::O_APPEND != 0;
        Some(Ok(self.host_handle(
            inode.clone(),
            file,
            append,
            false,
            chosen.held,
            false,
            chosen.backing,
        )))
    }

    /// The handle of a host-view open that took mode `io`, and its reply.
    // The open's facts, each from a different step of it: a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn host_handle(
        &self,
        inode: Arc<Inode>,
        file: OpenFile,
        append: bool,
        writable: bool,
        io: Held,
        keep: bool,
        passthrough: Option<BackingToken>,
    ) -> (u64, OpenOut) {
        let fh = self.add_handle(
            Some(inode),
            HandleKind::File {
                file,
                source: None,
                view: View::Host,
                append,
                io: Some(io),
                export: None,
            },
        );
        let out = OpenOut {
            direct_io: false,
            // The kernel refuses a passthrough open that keeps the cache.
            keep_cache: keep && passthrough.is_none(),
            // A read-only descriptor cannot dirty a page, even through mmap: its close has
            // nothing to flush.
            no_flush: !writable,
            passthrough,
        };
        (fh, out)
    }

    /// Chooses and takes the I/O mode of a host-view open of `inode` (FUSE inode `ino`;
    /// `iomode.rs`), last thing before the reply. A writable open that joins passthrough
    /// marks the file written behind the daemon before the reply (`coherence.rs`).
    fn choose_io(
        &self,
        inode: &Inode,
        ino: u64,
        writable: bool,
        register: impl FnOnce(Option<u32>) -> std::io::Result<BackingToken>,
    ) -> (Held, Option<BackingToken>) {
        let allowed = self.passthrough_on.load(Ordering::SeqCst) && inode.is_reg();
        let chosen = self.io_modes.open(ino, writable, allowed, register);
        if let Some(err) = &chosen.registration_failed {
            self.passthrough_failed(err);
        }
        if chosen.held == Held::PassthroughWriter {
            self.coherence.writer_behind_opened(inode);
        }
        (chosen.held, chosen.backing)
    }

    /// Chooses the I/O mode of a device-view open of `inode` (FUSE inode `ino`, `size`
    /// bytes now): served by the kernel from shared device memory when passthrough is on,
    /// the file is at least `--device-passthrough-min` and wholly resident (made so first
    /// when [`Self::prefetch_at_open`] says so), no passthrough writer writes it behind the
    /// daemon, and the inode has no daemon-served open; else daemon-served. An inode already
    /// in passthrough mode is joined whatever its size. Returns the mode held (with the
    /// registration to name) and the export the open holds.
    fn choose_device_io(
        &self,
        inode: &Inode,
        ino: u64,
        size: u64,
        source: &SharedSource,
        register: impl FnOnce(Registration<'_>) -> std::io::Result<BackingToken>,
    ) -> DeviceIo {
        if !self.passthrough_on.load(Ordering::SeqCst) || !inode.is_reg() {
            return DeviceIo::default();
        }
        let create =
            size >= self.cfg.device_passthrough_min && !self.coherence.has_writer_behind(inode);
        let export = self.device_export(inode.id, size, source, create);
        let chosen = self.io_modes.open(ino, false, export.is_some(), |idle| {
            debug_assert!(idle.is_none(), "the device view keeps no idle registration");
            let export = export.as_ref().expect("allowed only with an export");
            export.registration(register)
        });
        if let Some(err) = &chosen.registration_failed {
            self.passthrough_failed(err);
        }
        // The inode may be in passthrough mode through another device-view open whose
        // export this one could not take (that open's migration was still in flight): join
        // the export now, or be served by the daemon beside the kernel-served opens (an
        // uncached open is allowed beside them), holding the mode's count either way.
        let export = match (chosen.held, export) {
            (Held::PassthroughReader, None) => self.tier.export_join(inode.id, source),
            (_, export) => export,
        };
        match (chosen.held, export) {
            (Held::PassthroughReader, Some(export)) => {
                self.device_passthrough_opens
                    .fetch_add(1, Ordering::Relaxed);
                self.tier.touch_exported(inode.id, size);
                DeviceIo {
                    held: Some(chosen.held),
                    backing: chosen.backing,
                    export: Some(export),
                }
            }
            (Held::PassthroughReader, None) => DeviceIo {
                held: Some(chosen.held),
                ..DeviceIo::default()
            },
            (held, export) => {
                if let Some(export) = export {
                    self.tier.export_release(inode.id, &export);
                }
                debug_assert_eq!(held, Held::Cached, "a passthrough inode has an export");
                DeviceIo {
                    held: Some(held),
                    ..DeviceIo::default()
                }
            }
        }
    }

    /// Takes an open of the file's export: joins a live one, or (with `create`) migrates the
    /// wholly resident file into shared memory, prefetching it first where
    /// [`Self::prefetch_at_open`] says so.
    fn device_export(
        &self,
        id: u64,
        size: u64,
        source: &SharedSource,
        create: bool,
    ) -> Option<Arc<Export>> {
        if !create {
            return self.tier.export_join(id, source);
        }
        match self.tier.export_open(id, size, source) {
            Ok(e) => Some(e),
            Err(NotExported::NotWhole) if self.prefetch_at_open(id, size) => {
                self.tier
                    .prefetch(id, size, 0, size, source.as_ref())
                    .ok()?;
                self.tier.export_open(id, size, source).ok()
            }
            Err(_) => None,
        }
    }

    /// Whether a device-view open of `id` (`size` bytes, not wholly resident) prefetches the
    /// file before it exports it: under the `sequential` or `pin` hint, and for a small file
    /// (`--device-open-prefetch`) unless its hint is `random`. A reader of a small file reads
    /// it whole; prefetched at open, its bytes come in one storage read instead of a read
    /// round trip each, its later opens are kernel-served from the first epoch on, and its
    /// page-map state lives for the length of the open instead of until a second open
    /// migrates it (a million such states freed in another order fragment the heap).
    fn prefetch_at_open(&self, id: u64, size: u64) -> bool {
        if size == 0 {
            return false; // nothing to prefetch, and an empty file is never exported
        }
        match self.tier.hint(id) {
            Hint::Sequential | Hint::Pin => true,
            Hint::Random => false,
            Hint::Normal | Hint::Epoch => size <= self.cfg.device_open_prefetch,
        }
    }

    /// Compares every file that device-view readers hold open through the kernel (exported
    /// to shared device memory) with STORAGE, and, where it changed, brings its copy up to
    /// date (`coherence.rs` revalidation, then the export's in-place update). The daemon sees
    /// no read of such an open, so nothing else would notice a change no watcher reports
    /// (another node's write to shared storage). Returns the files checked.
    pub fn revalidate_kernel_served(&self) -> usize {
        let open: Vec<Arc<Handle>> = read(&self.handles)
            .values()
            .filter(|h| {
                matches!(
                    &h.kind,
                    HandleKind::File {
                        export: Some(_),
                        ..
                    }
                )
            })
            .cloned()
            .collect();
        let mut seen = std::collections::HashSet::new();
        for h in &open {
            let (Some(inode), HandleKind::File { file, .. }) = (&h.inode, &h.kind) else {
                continue;
            };
            if !seen.insert(inode.id) {
                continue;
            }
            match file.fd(Some(inode)).and_then(storage::stat) {
                Ok(st) => {
                    self.coherence.revalidate(inode, &st);
                }
                Err(e) => tracing::debug!(id = inode.id, error = %e, "revalidation: stat failed"),
            }
        }
        seen.len()
    }

    /// Reads up to `size` bytes at `offset` and hands them to `reply`.
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(FsResult<&[u8]>) -> R,
    ) -> R {
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply(Err(e)),
        };
        if let HandleKind::Stats(json) = &handle.kind {
            let start = (offset as usize).min(json.len());
            let end = (start + size as usize).min(json.len());
            return reply(Ok(&json[start..end]));
        }
        let HandleKind::File {
            file, source, view, ..
        } = &handle.kind
        else {
            return reply(Err(Errno::EISDIR));
        };
        if storage::check_offset(offset).is_err() {
            return reply(Err(Errno::EINVAL));
        }
        crate::heap::REPLY_BUFFERS.with(size as usize, |out| {
            let res = match (view, source) {
                (View::Host, _) => {
                    let r = file
                        .fd(handle.inode.as_deref())
                        .map_err(|e| std::io::Error::from_raw_os_error(e.raw()))
                        .and_then(|fd| storage::pread_clipped(fd, out, offset));
                    if let Ok(n) = r {
                        self.host.reads.fetch_add(1, Ordering::Relaxed);
                        self.host.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    r.map(Served::Copied)
                }
                (View::Device, Some(src)) => self.device_read(&handle, src, offset, out),
                (View::Device, None) => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
            };
            match res {
                // A read inside one huge page, hit or fresh fault, is replied straight from
                // the arena.
                Ok(Served::Resident(bytes)) => reply(Ok(&bytes)),
                Ok(Served::Copied(n)) => reply(Ok(&out[..n])),
                Err(e) => reply(Err(e.into())),
            }
        })
    }

    /// A device-view read: the tier owns the protocol (pinned hit, fault, retry when the
    /// file shrank); it asks for the file size through the handle's storage source (the
    /// same open file as the handle's descriptor).
    fn device_read(
        &self,
        handle: &Handle,
        src: &SharedSource,
        offset: u64,
        out: &mut [u8],
    ) -> std::io::Result<Served> {
        let inode = handle.inode.as_ref().expect("file handles have an inode");
        self.trace_read(inode.id, offset, out.len());
        let size = || src.size();
        match self.coherence.device_access(inode) {
            DeviceAccess::Tier(_tier_use) => self.tier.read(inode.id, offset, out, src, size),
            DeviceAccess::Storage => {
                self.device_reads_behind.fetch_add(1, Ordering::Relaxed);
                DeviceTier::read_bypassing(src.as_ref(), offset, out, size).map(Served::Copied)
            }
        }
    }

    /// Appends a device read to the `--trace` file, if any.
    fn trace_read(&self, id: u64, offset: u64, len: usize) {
        if let Some(trace) = &self.trace {
            use std::io::Write;
            let _ = writeln!(lock(trace), "{id},{offset},{len}");
        }
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let handle = self.handle(fh)?;
        let HandleKind::File {
            file, view, append, ..
        } = &handle.kind
        else {
            return Err(Errno::EBADF);
        };
        if *view == View::Device || self.cfg.read_only {
            return Err(self.refuse(*view));
        }
        storage::check_offset(offset)?;
        let inode = handle.inode.as_ref().ok_or(Errno::EBADF)?;
        let n = self.coherence.changing(inode, || {
            let fd = file.fd(Some(inode))?;
            let n = storage::pwrite_full(fd, data, offset)?;
            // STORAGE has the bytes: now drop the device copies they replace.
            let from = if *append {
                let size = storage::stat(fd)?.st_size as u64;
                offset.min(size.saturating_sub(n as u64))
            } else {
                offset
            };
            let len = if *append { u64::MAX } else { n as u64 };
            self.tier
                .invalidate_range(inode.id, from, len, InvalidationCause::Write);
            Ok(n)
        })?;
        self.host.writes.fetch_add(1, Ordering::Relaxed);
        self.host.write_bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n as u32)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let handle = self.handle(fh)?;
        match &handle.kind {
            HandleKind::File { file, .. } => {
                let fd = file.fd(handle.inode.as_deref())?;
                if datasync {
                    rustix::fs::fdatasync(fd)?;
                } else {
                    rustix::fs::fsync(fd)?;
                }
                Ok(())
            }
            HandleKind::Dir { .. } => {
                let inode = handle.inode.as_ref().ok_or(Errno::EBADF)?;
                let fd = inode.reopen(OFlags::RDONLY | OFlags::DIRECTORY)?;
                rustix::fs::fsync(&fd)?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Releases handle `fh`: a host-view open gives back its I/O mode, and a passthrough
    /// writer lets the device tier hold the file again (`coherence.rs`). Everything the
    /// next open may look at is done before this returns; only the handle's descriptors
    /// stay open, until the returned [`Released`] is dropped.
    #[must_use = "dropping the result closes the handle's descriptors"]
    pub fn release(&self, fh: u64) -> Released {
        let Some(handle) = write(&self.handles).remove(&fh) else {
            return Released { _handle: None };
        };
        if let (
            Some(inode),
            HandleKind::File {
                io: Some(held),
                view,
                export,
                ..
            },
        ) = (&handle.inode, &handle.kind)
        {
            // Host-view registrations stay idle for the next open (`iomode.rs`); the
            // device view's belong to its exports.
            self.io_modes
                .release(encode(inode.id, *view), *held, *view == View::Host);
            if *held == Held::PassthroughWriter {
                self.coherence.writer_behind_closed(inode);
            }
            // After the mode: the export outlives the registration that names its copy.
            if let Some(export) = export {
                self.tier.export_release(inode.id, export);
            }
        }
        Released {
            _handle: Some(handle),
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let handle = self.handle(fh)?;
        let HandleKind::File { file, view, .. } = &handle.kind else {
            return Err(Errno::EBADF);
        };
        if *view == View::Device || self.cfg.read_only {
            return Err(self.refuse(*view));
        }
        storage::check_offset(offset)?;
        storage::check_offset(len)?;
        let flags = rustix::fs::FallocateFlags::from_bits(mode as u32).ok_or(Errno::ENOTSUP)?;
        let inode = handle.inode.as_ref().ok_or(Errno::EBADF)?;
        self.coherence.changing(inode, || {
            rustix::fs::fallocate(file.fd(Some(inode))?, flags, offset, len)?;
            let changes_data = libc::FALLOC_FL_PUNCH_HOLE
                | libc::FALLOC_FL_ZERO_RANGE
                | libc::FALLOC_FL_COLLAPSE_RANGE
                | libc::FALLOC_FL_INSERT_RANGE;
            let shifts = libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE;
            if mode & changes_data != 0 {
                let span = if mode & shifts != 0 { u64::MAX } else { len };
                self.tier
                    .invalidate_range(inode.id, offset, span, InvalidationCause::Fallocate);
            }
            Ok(())
        })
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let handle = self.handle(fh)?;
        let HandleKind::File { file, .. } = &handle.kind else {
            return Err(Errno::EBADF);
        };
        if offset < 0 {
            return Err(Errno::ENXIO);
        }
        let pos = match whence {
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset as u64),
            libc::SEEK_SET => rustix::fs::SeekFrom::Start(offset as u64),
            _ => return Err(Errno::EINVAL),
        };
        Ok(rustix::fs::seek(file.fd(handle.inode.as_deref())?, pos)? as i64)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
        flags: u32,
    ) -> FsResult<u32> {
        let hin = self.handle(fh_in)?;
        let hout = self.handle(fh_out)?;
        let (
            HandleKind::File { file: fin, .. },
            HandleKind::File {
                file: fout, view, ..
            },
        ) = (&hin.kind, &hout.kind)
        else {
            return Err(Errno::EBADF);
        };
        if *view == View::Device || self.cfg.read_only {
            return Err(self.refuse(*view));
        }
        if flags != 0 {
            return Err(Errno::EINVAL);
        }
        storage::check_offset(offset_in)?;
        storage::check_offset(offset_out)?;
        let mut oin = offset_in;
        let mut oout = offset_out;
        let len = len.min(u32::MAX as u64 & !4095) as usize;
        let inode = hout.inode.as_ref().ok_or(Errno::EBADF)?;
        let fin = fin.fd(hin.inode.as_deref())?;
        let fout = fout.fd(Some(inode))?;
        let n = self.coherence.changing(inode, || {
            let n = rustix::fs::copy_file_range(fin, Some(&mut oin), fout, Some(&mut oout), len)?;
            self.tier
                .invalidate_range(inode.id, offset_out, n as u64, InvalidationCause::Copy);
            Ok(n)
        })?;
        Ok(n as u32)
    }

    // ----- directories -------------------------------------------------------------

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let (id, view) = decode(ino).ok_or(Errno::EINVAL)?;
        if id == CONTROL_ID {
            return Ok(self.add_handle(None, HandleKind::ControlDir));
        }
        if id == STATS_ID {
            return Err(Errno::ENOTDIR);
        }
        let inode = self.node(id)?;
        if !inode.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let (_, entries) = storage::list_dir(inode.fd()?.as_fd())?;
        Ok(self.add_handle(
            Some(inode),
            HandleKind::Dir {
                entries: Mutex::new(entries),
                view,
            },
        ))
    }

    /// Lists directory entries from `offset` on. With `plus`, each item
    /// carries attributes and one lookup reference.
    pub fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        plus: bool,
        mut emit: impl FnMut(DirItem) -> bool,
    ) -> FsResult<()> {
        let handle = self.handle(fh)?;
        let me = ino;
        let dot = |name: &[u8], next: u64, ino: u64| DirItem {
            ino,
            next,
            fmt: libc::S_IFDIR,
            name: name.to_vec(),
            attr: None,
        };
        match &handle.kind {
            HandleKind::ControlDir => {
                let names: [(&[u8], u64, u32); 4] = [
                    (b".", me, libc::S_IFDIR),
                    (b"..", 1, libc::S_IFDIR),
                    (b"device", encode(ROOT_ID, View::Device), libc::S_IFDIR),
                    (b"stats", encode(STATS_ID, View::Host), libc::S_IFREG),
                ];
                for (i, (name, ino, fmt)) in names.iter().enumerate().skip(offset as usize) {
                    let attr = if plus && i >= 2 {
                        Some(self.getattr(*ino)?)
                    } else {
                        None
                    };
                    let full = emit(DirItem {
                        ino: *ino,
                        next: i as u64 + 1,
                        fmt: *fmt,
                        name: name.to_vec(),
                        attr,
                    });
                    if full {
                        break;
                    }
                }
                Ok(())
            }
            HandleKind::Dir { entries, view } => {
                let inode = handle.inode.as_ref().ok_or(Errno::EBADF)?;
                if offset == 0 {
                    let (_, fresh) = storage::list_dir(inode.fd()?.as_fd())?;
                    *lock(entries) = fresh;
                    if emit(dot(b".", 1, me)) {
                        return Ok(());
                    }
                }
                if offset <= 1 && emit(dot(b"..", 2, me)) {
                    return Ok(());
                }
                // One entry at a time, until the kernel's buffer is full: a listing costs
                // what it returns (a lookup per entry with `plus`), not the whole directory
                // on every request.
                let mut i = offset.saturating_sub(2) as usize;
                loop {
                    let Some((name, key, fmt)) =
                        lock(entries).get(i).map(|e| (e.name.clone(), e.key, e.fmt))
                    else {
                        return Ok(());
                    };
                    i += 1;
                    let next = i as u64 + 2;
                    let os_name = OsStr::from_bytes(&name);
                    if inode.id == ROOT_ID
                        && *view == View::Host
                        && os_name == self.cfg.control_name.as_os_str()
                    {
                        continue;
                    }
                    let item = if plus {
                        match self.lookup(ino, os_name) {
                            Ok(attr) => DirItem {
                                ino: attr.ino,
                                next,
                                fmt: attr.fmt,
                                name,
                                attr: Some(attr),
                            },
                            Err(Errno::ENOENT) => continue,
                            Err(err) => return Err(err),
                        }
                    } else {
                        DirItem {
                            ino: encode(self.inodes.id_of(key), *view),
                            next,
                            fmt,
                            name,
                            attr: None,
                        }
                    };
                    if emit(item) {
                        return Ok(());
                    }
                }
            }
            _ => Err(Errno::ENOTDIR),
        }
    }

    pub fn statfs(&self, ino: u64) -> FsResult<FsStat> {
        let (id, view) = decode(ino).ok_or(Errno::EINVAL)?;
        if view == View::Device {
            let d = self.tier.stats().device;
            let (cap, used) = (d.capacity_bytes, d.used_bytes);
            let free = cap.saturating_sub(used) / 4096;
            return Ok(FsStat {
                blocks: cap / 4096,
                bfree: free,
                bavail: free,
                files: 0,
                ffree: 0,
                bsize: 4096,
                namelen: 255,
                frsize: 4096,
            });
        }
        let node = if id == CONTROL_ID || id == STATS_ID {
            self.node(ROOT_ID)?
        } else {
            self.node(id)?
        };
        let s = rustix::fs::fstatvfs(node.fd()?)?;
        Ok(FsStat {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }

    // ----- xattrs ------------------------------------------------------------------

    /// Is `ino` a virtual control object (no xattrs of its own)?
    fn is_control(ino: u64) -> bool {
        matches!(decode(ino), Some((CONTROL_ID | STATS_ID, _)))
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        if Self::is_control(ino) {
            return Err(Errno::ENODATA);
        }
        let (inode, _) = self.backing(ino)?;
        if let Some(ctl) = control::parse_name(name) {
            return self.control_get(&inode, ctl);
        }
        let fd = inode.fd()?;
        let path = storage::proc_path(fd.as_fd());
        read_sized(
            || rustix::fs::getxattr_query(path.as_c_str(), name),
            |buf| rustix::fs::getxattr(path.as_c_str(), name, buf),
        )
    }

    pub fn listxattr(&self, caller: Caller, ino: u64) -> FsResult<Vec<u8>> {
        if Self::is_control(ino) {
            return Ok(Vec::new());
        }
        let (inode, _) = self.backing(ino)?;
        let fd = inode.fd()?;
        let path = storage::proc_path(fd.as_fd());
        let mut names = read_sized(
            || rustix::fs::listxattr_query(path.as_c_str()),
            |buf| rustix::fs::listxattr(path.as_c_str(), buf),
        )?;
        if caller.uid != 0 {
            // The daemon lists with CAP_SYS_ADMIN: hide trusted.* as the
            // backing filesystem does from an unprivileged caller.
            names = names
                .split_inclusive(|&b| b == 0)
                .filter(|n| !n.starts_with(b"trusted."))
                .flatten()
                .copied()
                .collect();
        }
        Ok(names)
    }

    pub fn setxattr(
        &self,
        caller: Caller,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        let (inode, view) = self.backing(ino)?;
        if let Some(ctl) = control::parse_name(name) {
            return self.control_set(&inode, view, ctl, value);
        }
        if view == View::Device || self.cfg.read_only {
            return Err(self.refuse(view));
        }
        let flags = rustix::fs::XattrFlags::from_bits(flags as u32).ok_or(Errno::EINVAL)?;
        let fd = inode.fd()?;
        let path = storage::proc_path(fd.as_fd());
        self.coherence.changing(&inode, || {
            let _as = become_caller(caller)?;
            Ok(rustix::fs::setxattr(path.as_c_str(), name, value, flags)?)
        })
    }

    pub fn removexattr(&self, caller: Caller, ino: u64, name: &OsStr) -> FsResult<()> {
        let (inode, view) = self.backing(ino)?;
        match control::parse_name(name) {
            Some(ControlXattr::Hint) if inode.is_reg() => {
                self.tier.set_hint(inode.id, Hint::Normal);
                return Ok(());
            }
            Some(_) => return Err(Errno::EPERM),
            None => {}
        }
        if view == View::Device || self.cfg.read_only {
            return Err(self.refuse(view));
        }
        let fd = inode.fd()?;
        let path = storage::proc_path(fd.as_fd());
        self.coherence.changing(&inode, || {
            let _as = become_caller(caller)?;
            Ok(rustix::fs::removexattr(path.as_c_str(), name)?)
        })
    }

    pub fn access(&self, caller: Caller, ino: u64, mask: i32) -> FsResult<()> {
        let (id, view) = decode(ino).ok_or(Errno::EINVAL)?;
        if id == CONTROL_ID || id == STATS_ID {
            return if mask & libc::W_OK != 0 {
                Err(Errno::EROFS)
            } else {
                Ok(())
            };
        }
        let inode = self.node(id)?;
        if mask & libc::W_OK != 0 && (view == View::Device || self.cfg.read_only) {
            return Err(Errno::EROFS);
        }
        let fd = inode.fd()?;
        let path = storage::proc_path(fd.as_fd());
        let _as = become_caller(caller)?;
        rustix::fs::accessat(
            rustix::fs::CWD,
            path.as_c_str(),
            rustix::fs::Access::from_bits_truncate(mask as u32),
            AtFlags::EACCESS,
        )?;
        Ok(())
    }

    // ----- control -----------------------------------------------------------------

    fn control_get(&self, inode: &Inode, ctl: ControlXattr) -> FsResult<Vec<u8>> {
        match ctl {
            ControlXattr::Residency => {
                if !inode.is_reg() {
                    return Err(Errno::ENODATA);
                }
                let size = storage::stat(inode.fd()?)?.st_size as u64;
                let r = self.tier.residency(inode.id);
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["size"] = json!(size);
                Ok(serde_json::to_vec(&v).unwrap_or_default())
            }
            ControlXattr::Prefetch(range) => {
                if !inode.is_reg() {
                    return Err(Errno::ENODATA);
                }
                let r = self.prefetch(inode, range.as_deref().unwrap_or("0-"))?;
                Ok(control::prefetch_reply(
                    r.faulted_bytes,
                    r.already_resident_bytes,
                    r.skipped_bytes,
                ))
            }
            ControlXattr::Evict => Err(Errno::ENODATA),
            ControlXattr::Hint => Ok(self.tier.hint(inode.id).name().as_bytes().to_vec()),
        }
    }

    /// Faults the byte range `range` (`A-B`, `A-`) of `inode` into the tier.
    fn prefetch(&self, inode: &Inode, range: &str) -> FsResult<crate::tier::PrefetchReport> {
        let (start, end) =
            control::parse_range(range.trim_end_matches('\0').trim()).map_err(|_| Errno::EINVAL)?;
        // One descriptor serves the stat and the fills (not a second reopen by handle).
        let source = StorageSource::open_fd(inode)?;
        let st = storage::stat(&source.fd)?;
        let src: SharedSource = source;
        self.coherence.revalidate(inode, &st);
        let size = st.st_size as u64;
        let end = end.map_or(size, |e| e.saturating_add(1).min(size));
        if start >= end {
            return Ok(crate::tier::PrefetchReport::default());
        }
        // While a passthrough writer is open the tier holds nothing of the file: skipped.
        let DeviceAccess::Tier(_tier_use) = self.coherence.device_access(inode) else {
            return Ok(crate::tier::PrefetchReport {
                skipped_bytes: end - start,
                ..Default::default()
            });
        };
        Ok(self
            .tier
            .prefetch(inode.id, size, start, end - start, src.as_ref())?)
    }

    fn control_set(
        &self,
        inode: &Inode,
        _view: View,
        ctl: ControlXattr,
        value: &[u8],
    ) -> FsResult<()> {
        if !inode.is_reg() {
            return Err(Errno::EINVAL);
        }
        match ctl {
            ControlXattr::Residency => Err(Errno::EPERM),
            ControlXattr::Evict => {
                self.tier
                    .invalidate_file(inode.id, InvalidationCause::Evict);
                Ok(())
            }
            ControlXattr::Prefetch(Some(_)) => Err(Errno::EINVAL),
            ControlXattr::Hint => {
                let text = std::str::from_utf8(value).map_err(|_| Errno::EINVAL)?;
                let hint: Hint = text
                    .trim_end_matches('\0')
                    .trim()
                    .parse()
                    .map_err(|_| Errno::EINVAL)?;
                self.tier.set_hint(inode.id, hint);
                Ok(())
            }
            ControlXattr::Prefetch(None) => {
                let text = std::str::from_utf8(value).map_err(|_| Errno::EINVAL)?;
                self.prefetch(inode, text).map(|_| ())
            }
        }
    }

    /// Writes out buffered trace records (at unmount).
    pub fn flush_trace(&self) {
        if let Some(trace) = &self.trace {
            use std::io::Write;
            let _ = lock(trace).flush();
        }
    }

    /// The `.pagetier/stats` document.
    /// The stats document (`.pagetier/stats`, the metrics, `--log-stats`).
    pub fn stats_document(&self) -> StatsDocument {
        let h = &self.host;
        let n = self.coherence.notify_counters();
        StatsDocument::new(
            self.tier.stats(),
            HostStats {
                reads: h.reads.load(Ordering::Relaxed),
                writes: h.writes.load(Ordering::Relaxed),
                read_bytes: h.read_bytes.load(Ordering::Relaxed),
                write_bytes: h.write_bytes.load(Ordering::Relaxed),
            },
            NotificationStats {
                sent: n.sent.load(Ordering::Relaxed),
                late: n.late.load(Ordering::Relaxed),
            },
            self.inodes.live_count() as u64,
            read(&self.handles).len() as u64,
            self.passthrough_stats(),
            self.kernel_stats(),
        )
        .with_workers(self.workers.get().map(|w| w.stats()).unwrap_or_default())
    }

    fn passthrough_stats(&self) -> PassthroughStats {
        let c = self.io_modes.counters();
        // A device-view open counts in the table's `passthrough_opens` before it counts
        // here: read this one first, so that opens made between the two loads cannot make
        // the difference negative (a debug build panicked, a release build wrapped).
        let device_opens = self.device_passthrough_opens.load(Ordering::SeqCst);
        let all_opens = c.passthrough_opens.load(Ordering::SeqCst);
        PassthroughStats {
            mode: self.passthrough_mode(),
            host_opens: all_opens.saturating_sub(device_opens),
            device_opens,
            writer_opens: c.writer_opens.load(Ordering::Relaxed),
            registration_failures: c.registration_failures.load(Ordering::Relaxed),
            idle_registrations: self.io_modes.idle_count() as u64,
            idle_reuses: c.idle_reuses.load(Ordering::Relaxed),
            device_reads_behind: self.device_reads_behind.load(Ordering::Relaxed),
        }
    }

    fn kernel_stats(&self) -> KernelStats {
        let k = *lock(&self.kernel_limits);
        KernelStats {
            max_pages: k.max_pages.into(),
            max_readahead: k.max_readahead.into(),
        }
    }
}

/// Creates something as `caller`: with its credentials and umask, and the
/// permission bits of `mode` (masked here if the thread could not take the
/// umask itself).
fn as_creator<T>(
    caller: Caller,
    mode: u32,
    umask: u32,
    create: impl FnOnce(Mode) -> rustix::io::Result<T>,
) -> FsResult<T> {
    let _as = become_caller(caller)?;
    let um = crate::creds::UmaskGuard::set(umask);
    let mode = mode & !um.fallback_mask(umask);
    Ok(create(Mode::from_bits_truncate(mode & 0o7777))?)
}

/// Reads a value whose size is asked first (xattrs), retrying while it
/// grows between the two calls.
fn read_sized(
    query: impl Fn() -> rustix::io::Result<usize>,
    fetch: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> FsResult<Vec<u8>> {
    loop {
        let mut buf = vec![0u8; query()?];
        match fetch(&mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn uid_of(u: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(u)
}

fn gid_of(g: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(g)
}

#[cfg(test)]
mod cache_timeout_tests {
    use super::*;

    #[test]
    fn auto_is_long_only_for_a_local_storage_whose_every_change_is_watched() {
        let auto = CacheTimeout::Auto;
        assert_eq!(auto.now(true, true), CacheTimeout::LONG);
        assert_eq!(auto.now(true, false), CacheTimeout::SHORT, "a watch failed");
        assert_eq!(auto.now(false, true), CacheTimeout::SHORT, "shared storage");
        let fixed = CacheTimeout::Fixed(Duration::ZERO);
        assert_eq!(fixed.now(true, true), Duration::ZERO);
        assert_eq!(fixed.now(true, false), Duration::ZERO);
    }
}
