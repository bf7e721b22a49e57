//! The inode table: FUSE inode numbers <-> backing inodes.
//!
//! Every backing object is identified by its [`InodeKey`] (device, inode
//! number), and its [`InodeId`] is *derived* from the key
//! ([`InodeTable::id_of`]): `slot(dev) * 2^56 + ino + FIRST_BACKING_ID`, where
//! a device's slot is its rank among the devices seen (STORAGE's own first).
//! So a file keeps its inode number after the kernel forgets it and looks it
//! up again, hard links share one id, and the table needs no key->id map: the
//! only keys it remembers an id for are the rare ones outside that range (an
//! inode number of 2^56 or more, or a 64th device), in a map that is never
//! pruned. An id is never handed to two keys.
//!
//! An id is *live* while the kernel holds lookup references (the sum of its
//! lookups and forgets, in both views). A live inode is reached through a
//! kernel *file handle* (`name_to_handle_at`): each operation opens an
//! `O_PATH` descriptor from it (`open_by_handle_at`, which needs
//! CAP_DAC_READ_SEARCH: always before the thread takes a caller's
//! credentials) and closes it after, so the daemon holds no descriptor per
//! known inode. A live inode *holds* an `O_PATH | O_NOFOLLOW` descriptor
//! instead when handles cannot reach it: the root; every inode when STORAGE's
//! filesystem gives no handles (or the daemon may not open them); an object
//! on another mount than STORAGE's root. A handle-backed inode is *pinned*
//! (gets a held descriptor too, until the kernel forgets it) when a name of it
//! is removed through the mount, so that it stays reachable while the kernel
//! may still use it: a handle reopens an unlinked object only while something
//! holds it (an open file does; a removed directory that is only a process's
//! working directory is held by nothing else), and some filesystems refuse
//! even that. An object deleted behind the mount's back is not pinned: once
//! nothing holds it, operations on its inode fail with `ESTALE`.
//!
//! When the kernel forgets an inode, its entry goes: nothing of it is kept
//! but, while the device tier may hold pages of it, what the mount last saw
//! of the file (its coherence fingerprint and file handle), so that the next
//! open revalidates the pages instead of trusting them (`coherence.rs`:
//! a never-seen file is taken to have none). [`InodeTable::prune_forgotten`]
//! drops that too once the tier holds nothing of the id.
//!
//! A (dev, ino) reused by a new object maps to the same id once the old
//! object's id is no longer live, as the backing filesystem reuses the inode
//! number; the new object never inherits the old one's cached state: its file
//! handle differs (the generation is part of it), so a remembered fingerprint
//! of the old object is replaced by one that matches no file, and the next
//! open or change drops the id's device pages and the kernel's cached data.
//! (Without handles, the fingerprint tells, as a change behind the mount's
//! back.) While the old object's id is still live, the new object gets an id
//! of its own instead (a *displaced* key, from the mapped range): the kernel
//! may still hold dentries of the old object's names that point at the live
//! id, and an old name must never reach the new object's bytes. A lookup of
//! an object that has one of the key's ids finds it by its handle; the id
//! bound last to an object that was not live is the key's *newest*, the one
//! [`InodeTable::id_of`] gives (STORAGE has one object under a number at a
//! time, and a change seen by name concerns it), unless STORAGE had deleted
//! the object by then (a lookup that opened it before the delete: asked of
//! the object, outside the lock, only for a key with more than one object);
//! an id leaves the key's list once the table holds nothing of it. A
//! reference-model property test checks these rules.
//!
//! Each id appears under two views. FUSE inode numbers encode the view in the
//! low bit: `2*id + 1` is the host view, `2*id + 2` the device view, so the
//! root (id 0) is FUSE inode 1 as the protocol requires and the device view's
//! root is inode 2. Ids 1 and 2 are the virtual control directory and stats
//! file; backing objects start at [`FIRST_BACKING_ID`].
//!
//! The table also counts how many of an inode's lookup references the device
//! view holds: while that is zero the kernel has no device-view inode for it,
//! so there is nothing of it to invalidate there (`notify.rs`).
//!
//! Each inode carries its coherence state ([`FileState`]), opaque here: only
//! `coherence.rs` reads or writes it.
//!
//! Lock order: the table's `RwLock`, then an inode's coherence state (a
//! leaf); never call out (or make a syscall) while holding either.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::hash::{Hash, Hasher};
use std::io;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, RwLock};

use rustix::fs::{Mode, OFlags};

use crate::coherence::{FileState, Remembered};
use crate::errno::FsResult;
use crate::heap::{release_free_memory, shrink_if_sparse, shrink_set_if_sparse};
use crate::lock::{read, write};
use crate::storage::FileHandle;

/// Stable internal id of a backing object (or a virtual control object).
pub type InodeId = u64;

/// Root of STORAGE.
pub const ROOT_ID: InodeId = 0;
/// The virtual control directory (`.pagetier`).
pub const CONTROL_ID: InodeId = 1;
/// The virtual stats file (`.pagetier/stats`).
pub const STATS_ID: InodeId = 2;
/// The first id handed to a backing object other than the root.
pub const FIRST_BACKING_ID: InodeId = 3;

/// Bits of a derived id that hold the inode number (module docs).
const INO_BITS: u32 = 56;
/// Devices that get a slot of derived ids; keys of later ones are mapped.
const DEV_SLOTS: usize = 63;
/// The first id of the map of keys outside the derived range.
const FIRST_MAPPED_ID: InodeId = (DEV_SLOTS as u64) << INO_BITS;
/// Past the last id: `encode` must not overflow.
const ID_LIMIT: InodeId = (u64::MAX - 2) / 2;

/// Which view a FUSE inode number belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum View {
    /// The read-write passthrough of STORAGE.
    Host,
    /// The read-only device view under `.pagetier/device`.
    Device,
}

/// Splits a FUSE inode number into (id, view).
pub fn decode(fuse_ino: u64) -> Option<(InodeId, View)> {
    if fuse_ino == 0 {
        return None;
    }
    let v = fuse_ino - 1;
    let view = if v.is_multiple_of(2) {
        View::Host
    } else {
        View::Device
    };
    Some((v / 2, view))
}

/// The FUSE inode number of `id` in `view`.
pub fn encode(id: InodeId, view: View) -> u64 {
    match view {
        View::Host => id * 2 + 1,
        View::Device => id * 2 + 2,
    }
}

/// Identity of a backing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
}

/// What a backing file looked like (its size, mtime and ctime), as a 64-bit digest: all
/// anyone asks of it is whether the file changed since, and every known inode holds one
/// (and every forgotten file the tier keeps pages of): 8 bytes instead of the 32 of the
/// fields. The digest is keyed by a random key drawn once per daemon, so a change whose new
/// fingerprint has the old digest (taken for no change) is a 2^-64 chance per comparison that
/// no one can aim at; a digest is never kept past the daemon. Never 1: that is
/// [`Fingerprint::NOTHING`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint(NonZeroU64);

impl Fingerprint {
    /// Matches no file's fingerprint.
    pub const NOTHING: Fingerprint = Fingerprint(NonZeroU64::MIN);

    pub fn new(size: u64, mtime: (i64, u32), ctime: (i64, u32)) -> Fingerprint {
        static KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);
        let digest = KEY.hash_one((size, mtime, ctime)).max(2);
        Fingerprint(NonZeroU64::new(digest).expect("at least 2"))
    }

    /// The fingerprint as one word (0 is none of them: `Option<Fingerprint>` in an atomic).
    pub fn to_bits(fp: Option<Fingerprint>) -> u64 {
        fp.map_or(0, |f| f.0.get())
    }

    /// The inverse of [`Fingerprint::to_bits`].
    pub fn from_bits(bits: u64) -> Option<Fingerprint> {
        NonZeroU64::new(bits).map(Fingerprint)
    }
}

// With its `Arc`'s counts, 120 bytes: glibc's 128-byte chunk (every known inode has one).
const _: () = assert!(size_of::<Inode>() == 104);

/// The mount through which handles are opened (STORAGE's root's).
#[derive(Debug)]
struct HandleMount {
    fd: OwnedFd,
    mount_id: i32,
}

/// How a live inode reaches its backing object.
#[derive(Debug)]
enum Backing {
    /// A descriptor held for as long as the inode is live.
    Held(OwnedFd),
    /// A file handle, opened for each operation; `pinned` holds a descriptor
    /// once a name of the object was removed through the mount.
    Handle {
        handle: FileHandle,
        mount: Arc<HandleMount>,
        pinned: OnceLock<OwnedFd>,
    },
}

impl Backing {
    /// Whether STORAGE still has the object under a name (a link count above 0): false once
    /// it is deleted, or when it can no longer be reached. A system call or two: never under
    /// the table's lock.
    fn still_named(&self) -> bool {
        let st = match self {
            Backing::Held(fd) => rustix::fs::fstat(fd),
            Backing::Handle { handle, mount, .. } => match handle.open(mount.fd.as_fd()) {
                Ok(fd) => rustix::fs::fstat(&fd),
                Err(_) => return false,
            },
        };
        st.is_ok_and(|st| st.st_nlink > 0)
    }
}

/// An `O_PATH` descriptor of an inode's backing object, for one operation:
/// the inode's own, or one opened from its file handle and closed on drop.
#[derive(Debug)]
pub enum InodeFd<'a> {
    Held(BorrowedFd<'a>),
    Opened(OwnedFd),
}

impl AsFd for InodeFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            InodeFd::Held(fd) => *fd,
            InodeFd::Opened(fd) => fd.as_fd(),
        }
    }
}

/// A live backing inode.
#[derive(Debug)]
pub struct Inode {
    pub id: InodeId,
    pub key: InodeKey,
    /// `S_IFMT` bits of the backing object (its type never changes).
    pub fmt: u32,
    backing: Backing,
    nlookup: AtomicU64,
    /// The share of `nlookup` held through the device view.
    device_nlookup: AtomicU64,
    /// What the mount last saw of the backing file, and the changes through
    /// the mount running on it (see `coherence.rs`).
    pub coherence: FileState,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.fmt == libc::S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.fmt == libc::S_IFREG
    }
    /// Whether the kernel may hold a device-view inode (and entries naming
    /// it) for this object. The root always counts: the device view's root
    /// is reached through the control directory, which takes no reference.
    pub fn in_device_view(&self) -> bool {
        self.id == ROOT_ID || self.device_nlookup.load(Ordering::SeqCst) > 0
    }

    /// An `O_PATH | O_NOFOLLOW` descriptor of the backing object, for one
    /// operation (never keep it). Take it before switching to a caller's
    /// credentials: opening a handle needs the daemon's. `ESTALE` when the
    /// object is gone.
    pub fn fd(&self) -> FsResult<InodeFd<'_>> {
        match &self.backing {
            Backing::Held(fd) => Ok(InodeFd::Held(fd.as_fd())),
            Backing::Handle {
                handle,
                mount,
                pinned,
            } => match pinned.get() {
                Some(fd) => Ok(InodeFd::Held(fd.as_fd())),
                None => Ok(InodeFd::Opened(handle.open(mount.fd.as_fd())?)),
            },
        }
    }

    /// Opens the object anew with `flags` (as [`crate::storage::reopen`] of [`Self::fd`], in one
    /// syscall where the inode keeps a handle).
    pub fn reopen(&self, flags: OFlags) -> FsResult<OwnedFd> {
        match &self.backing {
            Backing::Handle {
                handle,
                mount,
                pinned,
            } if pinned.get().is_none() => Ok(handle.open_as(mount.fd.as_fd(), flags)?),
            _ => crate::storage::reopen(self.fd()?.as_fd(), flags),
        }
    }

    /// Whether the inode holds a descriptor (held or pinned).
    #[cfg(test)]
    pub fn holds_fd(&self) -> bool {
        match &self.backing {
            Backing::Held(_) => true,
            Backing::Handle { pinned, .. } => pinned.get().is_some(),
        }
    }

    /// Holds a descriptor of the object from now on (module docs): call
    /// before a name of it is removed through the mount.
    pub fn pin(&self) -> FsResult<()> {
        if let Backing::Handle {
            handle,
            mount,
            pinned,
        } = &self.backing
            && pinned.get().is_none()
        {
            let fd = handle.open(mount.fd.as_fd())?;
            // A concurrent pin won: either descriptor does.
            let _ = pinned.set(fd);
        }
        Ok(())
    }

    fn handle(&self) -> Option<&FileHandle> {
        match &self.backing {
            Backing::Held(_) => None,
            Backing::Handle { handle, .. } => Some(handle),
        }
    }
}

/// What is kept of a forgotten inode while the tier may hold pages of it.
#[derive(Debug)]
struct Forgotten {
    remembered: Remembered,
    /// The object's file handle, as [`handle_digest`] (0: none): all a lookup needs of it
    /// is whether a new handle differs. 8 bytes instead of the 24 of the handle (and the
    /// fingerprint is a digest too): a map slot of a forgotten inode is 32 bytes, and after
    /// the kernel forgets a million exported files the map has two million slots.
    handle: u64,
    /// Tells this forget from an earlier one of the id ([`InodeTable::prune_forgotten`]).
    stamp: u64,
}

// A forgotten inode's map slot is its id and this: 32 bytes.
const _: () = assert!(size_of::<Forgotten>() == 24);

/// A 64-bit digest of a file handle, never 0. Two handles of one (dev, ino) with equal
/// digests are taken to be one object: the handles are the kernel's (inode number and
/// generation), not chosen by a user, and even then the object's fingerprint (its ctime)
/// tells a new object, as it tells a change behind the mount.
fn handle_digest(handle: &FileHandle) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    handle.hash(&mut h);
    h.finish().max(1)
}

/// A live inode in the table's set, hashed and compared by its id: the set needs no key of
/// its own (8 bytes a slot instead of 16; at a million inodes the table has two slots for
/// each).
#[derive(Debug, Clone)]
struct Live(Arc<Inode>);

impl PartialEq for Live {
    fn eq(&self, other: &Live) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Live {}

impl Hash for Live {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As the id itself hashes: lookups by id (`Borrow`) find it.
        self.0.id.hash(state);
    }
}

impl Borrow<InodeId> for Live {
    fn borrow(&self) -> &InodeId {
        &self.0.id
    }
}

#[derive(Default)]
struct Inner {
    live: HashSet<Live>,
    /// What the mount last saw of forgotten files whose device pages may
    /// outlive the forget: restored when they come back, so that those pages
    /// are revalidated at the next open instead of trusted blindly.
    forgotten: HashMap<InodeId, Forgotten>,
    /// Size of `forgotten` after its last sweep ([`InodeTable::prune_forgotten`]).
    swept_len: usize,
    /// Most live inodes since the heap was last trimmed ([`InodeTable::forget`]).
    peak_since_trim: usize,
    next_stamp: u64,
    /// Devices with a slot of derived ids, in slot order.
    devs: Vec<u64>,
    /// Ids of keys outside the derived range (never pruned).
    mapped: HashMap<InodeKey, InodeId>,
    /// For a key whose number was reused while an older object's id of it was live (module
    /// docs): the ids of it the table holds, its own among them, in the order their objects
    /// were bound to them, newest last (an object STORAGE had deleted goes first). Empty but
    /// for such keys.
    displaced: HashMap<InodeKey, Vec<InodeId>>,
    next_mapped: InodeId,
}

impl Inner {
    /// The id of `key`'s newest object, if it has one yet.
    fn id(&self, key: InodeKey) -> Option<InodeId> {
        if !self.displaced.is_empty()
            && let Some(ids) = self.displaced.get(&key)
        {
            return ids.last().copied();
        }
        self.base_id(key)
    }

    /// The derived or mapped id of `key`, if it has one yet.
    fn base_id(&self, key: InodeKey) -> Option<InodeId> {
        if key.ino < (1 << INO_BITS) - FIRST_BACKING_ID
            && let Some(slot) = self.devs.iter().position(|d| *d == key.dev)
        {
            return Some(((slot as u64) << INO_BITS) + key.ino + FIRST_BACKING_ID);
        }
        self.mapped.get(&key).copied()
    }

    /// The derived or mapped id of `key`, giving its device a slot or the key a mapped id.
    fn assign(&mut self, key: InodeKey) -> InodeId {
        if let Some(id) = self.base_id(key) {
            return id;
        }
        if key.ino < (1 << INO_BITS) - FIRST_BACKING_ID && self.devs.len() < DEV_SLOTS {
            self.devs.push(key.dev);
            return self.base_id(key).expect("the device has a slot now");
        }
        let id = self.next_mapped_id();
        self.mapped.insert(key, id);
        id
    }

    fn next_mapped_id(&mut self) -> InodeId {
        let id = self.next_mapped;
        assert!(id < ID_LIMIT, "inode ids exhausted");
        self.next_mapped += 1;
        id
    }

    /// Every id of `key`, its newest object's first (module docs): the displaced list (an
    /// empty vector, which allocates nothing, but for reused inode numbers), then its own.
    fn ids(&mut self, key: InodeKey) -> (Vec<InodeId>, InodeId) {
        let base = self.assign(key);
        let displaced = match self.displaced.get(&key) {
            Some(ids) => ids.iter().rev().copied().collect(),
            None => Vec::new(),
        };
        (displaced, base)
    }

    /// A new id for a new object of `key` (whose own id is `base`), all of whose ids are live
    /// with other objects; the key's newest unless STORAGE no longer has the object.
    fn displace(&mut self, key: InodeKey, base: InodeId, newest: bool) -> InodeId {
        let id = self.next_mapped_id();
        // The list holds every id of the key the table holds, its own too.
        let ids = self.displaced.entry(key).or_insert_with(|| vec![base]);
        place(ids, id, newest);
        id
    }

    /// Puts `id`, just bound to an object that was not live, in its place among `key`'s ids:
    /// the newest if STORAGE still has the object (the lookup found it under a name, and
    /// STORAGE has one object under a number at a time), else the oldest (a lookup that
    /// opened the object before it was deleted).
    fn bound(&mut self, key: InodeKey, id: InodeId, newest: bool) {
        if !self.displaced.is_empty()
            && let Some(ids) = self.displaced.get_mut(&key)
        {
            ids.retain(|i| *i != id);
            place(ids, id, newest);
        }
    }

    /// Forgets `id` as one of a displaced key's ids: the table holds nothing of it now.
    fn gone(&mut self, id: InodeId) {
        if !self.displaced.is_empty() {
            self.displaced.retain(|_, ids| {
                ids.retain(|i| *i != id);
                !ids.is_empty()
            });
        }
    }
}

/// Puts `id` in a displaced key's list: last (the newest), or first when STORAGE no longer
/// has its object.
fn place(ids: &mut Vec<InodeId>, id: InodeId, newest: bool) {
    if newest {
        ids.push(id);
    } else {
        ids.insert(0, id);
    }
}

/// Fewest live inodes since the last heap trim for a halving to trim again: below it, the
/// frees left untrimmed hold at most a few hundred KiB (each may keep one page resident).
const TRIM_MIN_PEAK: usize = 128;

/// The table of inodes.
pub struct InodeTable {
    inner: RwLock<Inner>,
    root_key: InodeKey,
    /// Where handles are opened, when STORAGE's filesystem gives them and
    /// the daemon may open them (else every inode holds a descriptor).
    handles: Option<Arc<HandleMount>>,
}

impl InodeTable {
    /// A table whose root (id 0, never forgotten) is `root_fd`.
    pub fn new(root_key: InodeKey, root_fd: OwnedFd) -> Self {
        let handles = Self::probe_handles(root_fd.as_fd());
        let mut inner = Inner {
            next_mapped: FIRST_MAPPED_ID,
            devs: vec![root_key.dev],
            ..Default::default()
        };
        inner.live.insert(Live(Arc::new(Inode {
            id: ROOT_ID,
            key: root_key,
            fmt: libc::S_IFDIR,
            backing: Backing::Held(root_fd),
            nlookup: AtomicU64::new(1),
            device_nlookup: AtomicU64::new(0),
            coherence: FileState::new(None),
        })));
        InodeTable {
            inner: RwLock::new(inner),
            root_key,
            handles,
        }
    }

    /// The mount to open handles through, if a handle of the root can be
    /// made and opened again.
    fn probe_handles(root: BorrowedFd<'_>) -> Option<Arc<HandleMount>> {
        let probe = || -> io::Result<HandleMount> {
            let (handle, mount_id) = FileHandle::of(root)?;
            // `open_by_handle_at` takes no `O_PATH` descriptor of the mount.
            let fd = rustix::fs::openat(
                root,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            handle.open(fd.as_fd())?;
            Ok(HandleMount { fd, mount_id })
        };
        match probe() {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                tracing::info!("no file handles for STORAGE ({e}): one descriptor per live inode");
                None
            }
        }
    }

    /// Whether live inodes are reached through file handles.
    #[cfg(test)]
    pub fn uses_handles(&self) -> bool {
        self.handles.is_some()
    }

    /// The live inode `id`, if the kernel still references it.
    pub fn get(&self, id: InodeId) -> Option<Arc<Inode>> {
        read(&self.inner).live.get(&id).map(|l| l.0.clone())
    }

    /// The id of `key` (module docs).
    pub fn id_of(&self, key: InodeKey) -> InodeId {
        if key == self.root_key {
            return ROOT_ID;
        }
        if let Some(id) = read(&self.inner).id(key) {
            return id;
        }
        // A key with no id has no displaced ones either.
        write(&self.inner).assign(key)
    }

    /// The id of `key` if it has one without assigning (an object on a
    /// device never seen, or mapped and never seen, has none).
    pub fn known_id(&self, key: InodeKey) -> Option<InodeId> {
        if key == self.root_key {
            return Some(ROOT_ID);
        }
        read(&self.inner).id(key)
    }

    /// How the inode of the object behind `fd` reaches it (module docs).
    fn backing_of(&self, fd: OwnedFd) -> Backing {
        if let Some(mount) = &self.handles
            && let Ok((handle, mount_id)) = FileHandle::of(fd.as_fd())
            && mount_id == mount.mount_id
        {
            return Backing::Handle {
                handle,
                mount: mount.clone(),
                pinned: OnceLock::new(),
            };
        }
        Backing::Held(fd)
    }

    /// Records one kernel lookup reference to the object `key` (opened as
    /// `fd`) in `view`, making it live if it was not. Returns the live inode.
    pub fn lookup_ref(&self, key: InodeKey, fmt: u32, fd: OwnedFd, view: View) -> Arc<Inode> {
        let backing = self.backing_of(fd);
        self.lookup_backing_with(key, fmt, backing, view, Backing::still_named)
    }

    /// [`Self::lookup_ref`], with what tells whether STORAGE still has the object.
    fn lookup_backing_with(
        &self,
        key: InodeKey,
        fmt: u32,
        backing: Backing,
        view: View,
        still_named: impl Fn(&Backing) -> bool,
    ) -> Arc<Inode> {
        let device = u64::from(view == View::Device);
        let new_handle = match &backing {
            Backing::Held(_) => None,
            Backing::Handle { handle, .. } => Some(handle),
        };
        // The same object, unless the inode number was reused by a new object after the
        // old one was deleted: then its type or its handle (generation) differs.
        let same_object = |inode: &Inode| {
            inode.fmt == fmt
                && match (inode.handle(), new_handle) {
                    (Some(old), Some(new)) => old == new,
                    _ => true,
                }
        };
        // Asked (once, without the lock) only of a key with more than one object.
        let mut named = None;
        loop {
            let mut inner = write(&self.inner);
            let (displaced, base) = if key == self.root_key {
                (Vec::new(), ROOT_ID)
            } else {
                inner.ids(key)
            };
            let mut free = None;
            for &id in displaced.iter().chain([&base]) {
                match inner.live.get(&id) {
                    Some(Live(inode)) if same_object(inode) => {
                        inode.nlookup.fetch_add(1, Ordering::Relaxed);
                        // Counted before the reply carries the entry, so a change that
                        // finds it zero happened before this lookup's stat.
                        inode.device_nlookup.fetch_add(device, Ordering::SeqCst);
                        return inode.clone();
                    }
                    Some(_) => {}
                    None => free = free.or(Some(id)),
                }
            }
            if named.is_none() && (free.is_none() || !displaced.is_empty()) {
                drop(inner);
                named = Some(still_named(&backing));
                continue;
            }
            let newest = named.unwrap_or(true);
            // Every id of the key live with another object: the kernel may still reach that
            // one through a name it holds, so this one gets an id of its own (module docs).
            let id = match free {
                Some(id) => {
                    inner.bound(key, id, newest);
                    id
                }
                None => inner.displace(key, base, newest),
            };
            let remembered = inner.forgotten.remove(&id).map(|f| match new_handle {
                Some(new) if f.handle != 0 && f.handle != handle_digest(new) => {
                    Remembered::matching_nothing()
                }
                _ => f.remembered,
            });
            let inode = Arc::new(Inode {
                id,
                key,
                fmt,
                backing,
                nlookup: AtomicU64::new(1),
                device_nlookup: AtomicU64::new(device),
                coherence: FileState::new(remembered),
            });
            inner.live.insert(Live(inode.clone()));
            inner.peak_since_trim = inner.peak_since_trim.max(inner.live.len());
            return inode;
        }
    }

    /// [`Self::lookup_backing_with`] of an object STORAGE still has.
    #[cfg(test)]
    fn lookup_backing(&self, key: InodeKey, fmt: u32, backing: Backing, view: View) -> Arc<Inode> {
        self.lookup_backing_with(key, fmt, backing, view, |_| true)
    }

    /// Drops `n` lookup references held through `view`; returns the inode if
    /// it is no longer live. What the mount saw of it is kept until
    /// [`Self::prune_forgotten`] finds the tier holds nothing of it.
    pub fn forget(&self, id: InodeId, n: u64, view: View) -> Option<Arc<Inode>> {
        if id == ROOT_ID {
            return None;
        }
        let mut inner = write(&self.inner);
        let gone = Self::forget_locked(&mut inner, id, n, view);
        // A table that shrank a lot gives its memory back (after unlocking). The heap is
        // trimmed each time the live inodes halve: the frees of many small entries leave
        // free chunks whose pages stay resident until a trim, so trimming only when the
        // map itself shrinks (not below a few thousand entries) kept megabytes.
        let shrunk = shrink_set_if_sparse(&mut inner.live) | shrink_if_sparse(&mut inner.forgotten);
        let halved =
            inner.peak_since_trim >= TRIM_MIN_PEAK && inner.live.len() <= inner.peak_since_trim / 2;
        let trim = shrunk || halved;
        if trim {
            inner.peak_since_trim = inner.live.len();
        }
        drop(inner);
        if trim {
            release_free_memory();
        }
        gone
    }

    fn forget_locked(inner: &mut Inner, id: InodeId, n: u64, view: View) -> Option<Arc<Inode>> {
        let Live(inode) = inner.live.get(&id)?;
        if view == View::Device {
            let d = inode.device_nlookup.load(Ordering::SeqCst);
            inode
                .device_nlookup
                .store(d.saturating_sub(n), Ordering::SeqCst);
        }
        let prev = inode.nlookup.load(Ordering::Relaxed);
        let left = prev.saturating_sub(n);
        inode.nlookup.store(left, Ordering::Relaxed);
        if left == 0 {
            let Live(gone) = inner.live.take(&id)?;
            if let Some(remembered) = gone.coherence.remembered() {
                let handle = gone.handle().map_or(0, handle_digest);
                let stamp = inner.next_stamp;
                inner.next_stamp += 1;
                inner.forgotten.insert(
                    id,
                    Forgotten {
                        remembered,
                        handle,
                        stamp,
                    },
                );
            } else {
                inner.gone(id);
            }
            Some(gone)
        } else {
            None
        }
    }

    /// Drops what is kept of the forgotten inode `id` unless
    /// `has_device_pages(id)` (called without the table's lock: it may call
    /// the tier); now and then sweeps every forgotten inode the same way, so
    /// that what the tier evicted since is dropped too. Call after a
    /// [`Self::forget`] that returned the inode. A forgotten inode that gets
    /// device pages again is live again (pages come only through opens).
    pub fn prune_forgotten(&self, id: InodeId, has_device_pages: impl Fn(InodeId) -> bool) {
        let (candidates, sweep) = {
            let inner = read(&self.inner);
            let sweep = inner.forgotten.len() > 2 * inner.swept_len + 1024;
            let candidates: Vec<(InodeId, u64)> = if sweep {
                inner.forgotten.iter().map(|(i, f)| (*i, f.stamp)).collect()
            } else {
                inner
                    .forgotten
                    .get(&id)
                    .map(|f| (id, f.stamp))
                    .into_iter()
                    .collect()
            };
            (candidates, sweep)
        };
        let drop_ids: Vec<(InodeId, u64)> = candidates
            .into_iter()
            .filter(|(i, _)| !has_device_pages(*i))
            .collect();
        if drop_ids.is_empty() && !sweep {
            return;
        }
        let mut inner = write(&self.inner);
        for (i, stamp) in drop_ids {
            // Looked up (and maybe forgotten again) meanwhile: not this entry.
            if inner.forgotten.get(&i).is_some_and(|f| f.stamp == stamp) {
                inner.forgotten.remove(&i);
                inner.gone(i);
            }
        }
        if sweep {
            inner.swept_len = inner.forgotten.len();
        }
        let shrunk = shrink_if_sparse(&mut inner.forgotten);
        drop(inner);
        if shrunk {
            release_free_memory();
        }
    }

    /// Pins the live inode `id`, if any (module docs): call before a name of
    /// it is removed through the mount. A failure leaves it unpinned (the
    /// object may be gone already).
    pub fn pin(&self, id: Option<InodeId>) {
        if let Some(inode) = id.and_then(|id| self.get(id)) {
            let _ = inode.pin();
        }
    }

    /// Number of live inodes (for leak checks and stats).
    pub fn live_count(&self) -> usize {
        read(&self.inner).live.len()
    }

    /// Number of forgotten inodes whose fingerprint is kept.
    #[cfg(test)]
    pub fn forgotten_count(&self) -> usize {
        read(&self.inner).forgotten.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::fs::File;

    use crate::storage;
    use proptest::prelude::*;

    fn fd() -> OwnedFd {
        File::open("/").unwrap().into()
    }

    /// A handle-backed inode's backing with made-up handle bytes.
    fn handle_backing(t: &InodeTable, bytes: &[u8]) -> Backing {
        Backing::Handle {
            handle: FileHandle::from_parts(1, bytes),
            mount: t.handles.clone().expect("/ gives file handles"),
            pinned: OnceLock::new(),
        }
    }

    /// Makes the table remember a fingerprint of the object `key` with handle `handle`, as
    /// if the kernel had forgotten it while the tier held pages of it.
    fn seen_before(t: &InodeTable, key: InodeKey, handle: &[u8]) {
        let forgotten = Forgotten {
            remembered: Remembered::of_fingerprint(Fingerprint::new(5, (1, 2), (3, 4))),
            handle: handle_digest(&FileHandle::from_parts(1, handle)),
            stamp: 0,
        };
        let id = t.id_of(key);
        write(&t.inner).forgotten.insert(id, forgotten);
    }

    #[test]
    fn a_known_inode_fits_its_memory_budget() {
        // Every inode the kernel knows costs its `Arc` allocation and two set slots (at a
        // million inodes): within a 176-byte glibc chunk and 8-byte slots, the daemon holds
        // about 230 bytes per inode (docs/BENCH.md; the bound is 300).
        let arc = size_of::<Inode>() + 2 * size_of::<usize>();
        assert!(arc + 8 <= 176, "Arc<Inode> needs {arc} bytes");
        assert_eq!(size_of::<Live>(), 8);
    }

    #[test]
    fn view_encoding_roundtrips() {
        assert_eq!(encode(ROOT_ID, View::Host), 1);
        assert_eq!(encode(ROOT_ID, View::Device), 2);
        for id in [0, 1, 2, 3, 1000, u32::MAX as u64, ID_LIMIT - 1] {
            for view in [View::Host, View::Device] {
                assert_eq!(decode(encode(id, view)), Some((id, view)));
            }
        }
        assert_eq!(decode(0), None);
    }

    #[test]
    fn ids_are_stable_across_forget() {
        let root = InodeKey { dev: 1, ino: 2 };
        let t = InodeTable::new(root, fd());
        let key = InodeKey { dev: 1, ino: 99 };
        let a = t.lookup_ref(key, libc::S_IFREG, fd(), View::Host);
        assert!(a.id >= FIRST_BACKING_ID);
        let b = t.lookup_ref(key, libc::S_IFREG, fd(), View::Host);
        assert_eq!(a.id, b.id);
        assert!(t.forget(a.id, 1, View::Host).is_none());
        assert!(t.forget(a.id, 1, View::Host).is_some());
        assert!(t.get(a.id).is_none());
        let id = a.id;
        drop((a, b));
        let c = t.lookup_ref(key, libc::S_IFREG, fd(), View::Host);
        assert_eq!(c.id, id, "re-lookup keeps the inode number");
        assert_ne!(t.id_of(InodeKey { dev: 1, ino: 100 }), id);
        // What was seen of the file survives too: `coherence.rs` tests it.
    }

    #[test]
    fn forget_drops_the_entry_and_keeps_nothing_of_an_unseen_file() {
        let t = InodeTable::new(InodeKey { dev: 1, ino: 2 }, fd());
        for ino in 10..1010 {
            let key = InodeKey { dev: 1, ino };
            let a = t.lookup_ref(key, libc::S_IFREG, fd(), View::Host);
            t.lookup_ref(key, libc::S_IFREG, fd(), View::Device);
            assert!(t.forget(a.id, 1, View::Device).is_none());
            assert!(t.forget(a.id, 1, View::Host).is_some());
            t.prune_forgotten(a.id, |_| panic!("nothing kept, nothing to ask"));
        }
        assert_eq!(t.live_count(), 1, "only the root is live");
        assert_eq!(t.forgotten_count(), 0);
    }

    #[test]
    fn ids_derive_from_keys_and_never_collide() {
        let root = InodeKey { dev: 7, ino: 2 };
        let t = InodeTable::new(root, fd());
        assert_eq!(t.id_of(root), ROOT_ID);
        assert_eq!(t.known_id(root), Some(ROOT_ID));
        let keys = [
            InodeKey { dev: 7, ino: 0 },
            InodeKey { dev: 7, ino: 1 },
            InodeKey { dev: 7, ino: 3 },
            InodeKey { dev: 8, ino: 3 },
            InodeKey { dev: 9, ino: 3 },
            InodeKey {
                dev: 7,
                ino: u64::MAX,
            },
            InodeKey {
                dev: 8,
                ino: 1 << INO_BITS,
            },
        ];
        assert_eq!(
            t.known_id(keys[3]),
            None,
            "a device never seen has no slot yet"
        );
        let ids: Vec<InodeId> = keys.iter().map(|k| t.id_of(*k)).collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{ids:?}");
        assert!(
            ids.iter()
                .all(|id| *id >= FIRST_BACKING_ID && *id < ID_LIMIT)
        );
        assert_eq!(ids[2], 3 + FIRST_BACKING_ID, "STORAGE's device is slot 0");
        assert_eq!(
            ids[3],
            (1 << INO_BITS) + 3 + FIRST_BACKING_ID,
            "the next device slot 1"
        );
        assert!(ids[5] >= FIRST_MAPPED_ID && ids[6] >= FIRST_MAPPED_ID);
        for (k, id) in keys.iter().zip(&ids) {
            assert_eq!(t.id_of(*k), *id, "stable");
            assert_eq!(t.known_id(*k), Some(*id));
        }
    }

    #[test]
    fn hard_links_share_one_live_inode() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let root_fd = storage::open_root(dir.path()).unwrap();
        let t = InodeTable::new(storage::key_of(&storage::stat(&root_fd).unwrap()), root_fd);
        let root = t.get(ROOT_ID).unwrap();
        let look = |name: &str| {
            let (fd, st) =
                storage::open_child(root.fd().unwrap().as_fd(), OsStr::new(name)).unwrap();
            t.lookup_ref(storage::key_of(&st), storage::fmt_of(&st), fd, View::Host)
        };
        let (a, b) = (look("a"), look("b"));
        assert!(Arc::ptr_eq(&a, &b), "one entry for both names");
        assert!(
            t.forget(a.id, 1, View::Host).is_none(),
            "b's reference holds it"
        );
        assert!(t.forget(a.id, 1, View::Host).is_some());
    }

    #[test]
    fn a_reused_inode_number_with_another_handle_is_a_new_object() {
        let t = InodeTable::new(InodeKey { dev: 1, ino: 2 }, fd());
        let key = InodeKey { dev: 1, ino: 50 };
        let old = t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"gen1"), View::Host);
        assert!(old.coherence.remembered().is_none(), "never seen");
        let same = t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"gen1"), View::Host);
        assert!(Arc::ptr_eq(&old, &same), "same handle, same entry");
        // The object died behind the kernel's back and its number was reused while the
        // kernel still holds the old one (and names that point at it).
        let new = t.lookup_backing(
            key,
            libc::S_IFREG,
            handle_backing(&t, b"gen2"),
            View::Device,
        );
        assert_ne!(new.id, old.id, "the new object gets an id of its own");
        assert!(new.id >= FIRST_MAPPED_ID);
        assert!(
            Arc::ptr_eq(&t.get(old.id).unwrap(), &old),
            "the old id still reaches the old object, never the new one"
        );
        assert!(new.coherence.remembered().is_none(), "a fresh id: no pages");
        assert_eq!(t.id_of(key), new.id, "the key's newest object");
        // Each object is found again by its handle, whichever id is newest.
        let again = t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"gen2"), View::Host);
        assert!(Arc::ptr_eq(&again, &new));
        let old_again =
            t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"gen1"), View::Host);
        assert!(Arc::ptr_eq(&old_again, &old));
        assert!(new.in_device_view() && !old.in_device_view());
        // The old object's id is forgotten: a third object takes it back, not a new id.
        assert!(t.forget(old.id, 3, View::Host).is_some());
        let third = t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"gen3"), View::Host);
        assert_eq!(third.id, old.id);
        assert_eq!(
            t.id_of(key),
            old.id,
            "the object now under the number is the newest"
        );
        let second = t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"gen2"), View::Host);
        assert!(
            Arc::ptr_eq(&second, &new),
            "a live object found again changes no order"
        );
        assert_eq!(t.id_of(key), old.id);
        // Once the table holds nothing of the displaced id, the key's own id is its id.
        assert!(t.forget(new.id, 2, View::Host).is_none());
        assert!(t.forget(new.id, 1, View::Device).is_some());
        t.prune_forgotten(new.id, |_| false);
        assert!(t.get(new.id).is_none());
        assert_eq!(t.id_of(key), old.id);
        assert!(t.forget(old.id, 1, View::Host).is_some());
        t.prune_forgotten(old.id, |_| false);
        assert!(read(&t.inner).displaced.is_empty(), "nothing left of it");
    }

    #[test]
    fn a_key_reused_again_and_again_gives_each_live_object_one_id() {
        let t = InodeTable::new(InodeKey { dev: 1, ino: 2 }, fd());
        let key = InodeKey { dev: 1, ino: 55 };
        let gens: [&[u8]; 4] = [b"g1", b"g2", b"g3", b"g4"];
        let first: Vec<Arc<Inode>> = gens
            .iter()
            .map(|g| t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, g), View::Host))
            .collect();
        let ids: HashSet<InodeId> = first.iter().map(|i| i.id).collect();
        assert_eq!(ids.len(), 4, "four live objects, four ids");
        // Looked up again in any order, each finds its own entry.
        for (g, inode) in gens.iter().zip(&first).rev() {
            let again = t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, g), View::Host);
            assert!(Arc::ptr_eq(&again, inode));
        }
        // A type change tells a new object even without a handle.
        let dir = t.lookup_ref(key, libc::S_IFDIR, fd(), View::Host);
        assert!(!ids.contains(&dir.id));
        for inode in first.iter().chain([&dir]) {
            let n = inode.nlookup.load(Ordering::Relaxed);
            assert!(t.forget(inode.id, n, View::Host).is_some());
            t.prune_forgotten(inode.id, |_| false);
        }
        assert_eq!(t.live_count(), 1, "only the root");
        assert!(read(&t.inner).displaced.is_empty());
    }

    /// Keys of the reference model: few, so that numbers are reused often.
    const MODEL_KEYS: usize = 3;

    /// A step of the reference model.
    #[derive(Clone, Debug)]
    enum Op {
        /// STORAGE deletes key `k`'s object and gives its number to a new one.
        Replace(usize),
        /// A lookup of key `k`'s current object, or (`stale`) of the one before it, opened
        /// by a lookup that began before it was deleted.
        Lookup { k: usize, stale: bool, device: bool },
        /// The kernel forgets every reference to one live object; the tier keeps pages of
        /// it or not.
        Forget { pick: usize, pages: bool },
        /// The tier drops whatever it kept of forgotten objects.
        Evict,
    }

    fn model_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0..MODEL_KEYS).prop_map(Op::Replace),
            4 => (0..MODEL_KEYS, any::<bool>(), any::<bool>())
                .prop_map(|(k, stale, device)| Op::Lookup { k, stale, device }),
            2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, pages)| Op::Forget { pick, pages }),
            1 => Just(Op::Evict),
        ]
    }

    proptest! {
        /// Against a model of STORAGE objects (key, generation) and the kernel's references:
        /// a live object keeps its entry, no two live objects share an id, a key's id is
        /// its current object's whenever that is live (the watcher's changes reach it),
        /// and nothing is left once the kernel forgets everything and the tier drops it.
        #[test]
        fn inode_table_follows_a_reference_model(ops in prop::collection::vec(model_op(), 1..80)) {
            let t = InodeTable::new(InodeKey { dev: 1, ino: 2 }, fd());
            let key = |k: usize| InodeKey { dev: 1, ino: 100 + k as u64 };
            let mut generation = [0u32; MODEL_KEYS];
            // (key, generation) -> (entry, lookups, of them through the device view)
            let mut live: HashMap<(usize, u32), (Arc<Inode>, u64, u64)> = HashMap::new();
            let mut kept: Vec<InodeId> = Vec::new();
            let forget_all = |t: &InodeTable, inode: &Inode, n: u64, d: u64| {
                let host = (n > d).then(|| t.forget(inode.id, n - d, View::Host));
                let dev = (d > 0).then(|| t.forget(inode.id, d, View::Device));
                dev.or(host).flatten().is_some()
            };
            for op in ops {
                match op {
                    Op::Replace(k) => generation[k] += 1,
                    Op::Lookup { k, stale, device } => {
                        let g = if stale { generation[k].saturating_sub(1) } else { generation[k] };
                        let named = g == generation[k];
                        let view = if device { View::Device } else { View::Host };
                        let handle = format!("{k}.{g}");
                        let inode = t.lookup_backing_with(
                            key(k),
                            libc::S_IFREG,
                            handle_backing(&t, handle.as_bytes()),
                            view,
                            |_| named,
                        );
                        match live.get_mut(&(k, g)) {
                            Some((entry, n, d)) => {
                                prop_assert!(Arc::ptr_eq(entry, &inode), "a live object keeps its entry");
                                *n += 1;
                                *d += u64::from(device);
                            }
                            None => {
                                prop_assert!(
                                    live.values().all(|(e, ..)| e.id != inode.id),
                                    "id {} of {handle} is another live object's", inode.id
                                );
                                live.insert((k, g), (inode, 1, u64::from(device)));
                            }
                        }
                    }
                    Op::Forget { pick, pages } => {
                        let mut objects: Vec<(usize, u32)> = live.keys().copied().collect();
                        if objects.is_empty() {
                            continue;
                        }
                        objects.sort();
                        let (inode, n, d) = live.remove(&objects[pick % objects.len()]).unwrap();
                        prop_assert!(forget_all(&t, &inode, n, d), "the last forget ends it");
                        t.prune_forgotten(inode.id, |_| pages);
                        if pages {
                            kept.push(inode.id);
                        }
                    }
                    Op::Evict => {
                        for id in kept.drain(..) {
                            t.prune_forgotten(id, |_| false);
                        }
                    }
                }
                prop_assert_eq!(t.live_count(), live.len() + 1);
                for (entry, ..) in live.values() {
                    prop_assert!(Arc::ptr_eq(&t.get(entry.id).unwrap(), entry));
                }
                for (k, g) in generation.iter().enumerate() {
                    if let Some((entry, ..)) = live.get(&(k, *g)) {
                        prop_assert_eq!(t.id_of(key(k)), entry.id, "key {} names its current object", k);
                    }
                }
            }
            for (inode, n, d) in live.into_values() {
                prop_assert!(forget_all(&t, &inode, n, d));
                t.prune_forgotten(inode.id, |_| false);
            }
            for id in kept {
                t.prune_forgotten(id, |_| false);
            }
            prop_assert_eq!(t.live_count(), 1);
            prop_assert_eq!(t.forgotten_count(), 0);
            prop_assert!(read(&t.inner).displaced.is_empty());
        }
    }

    #[test]
    fn a_forgotten_fingerprint_is_kept_while_the_tier_has_pages() {
        let t = InodeTable::new(InodeKey { dev: 1, ino: 2 }, fd());
        let key = InodeKey { dev: 1, ino: 60 };
        seen_before(&t, key, b"gen2");
        let a = t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"gen2"), View::Host);
        assert!(a.coherence.remembered().is_some());
        let id = a.id;
        assert!(t.forget(id, 1, View::Host).is_some());
        assert_eq!(t.forgotten_count(), 1);
        t.prune_forgotten(id, |i| {
            assert_eq!(i, id);
            true
        });
        assert_eq!(t.forgotten_count(), 1, "pages of it remain: kept");
        // Back with the same handle: the fingerprint comes back.
        let b = t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"gen2"), View::Host);
        assert!(b.coherence.remembered().is_some());
        assert_eq!(t.forgotten_count(), 0, "live again");
        assert!(t.forget(id, 1, View::Host).is_some());
        t.prune_forgotten(id, |_| false);
        assert_eq!(t.forgotten_count(), 0, "no pages left: dropped");
        let c = t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"gen2"), View::Host);
        assert!(c.coherence.remembered().is_none(), "nothing kept of it");
    }

    #[test]
    fn a_stale_prune_leaves_a_newer_forget_alone() {
        let t = InodeTable::new(InodeKey { dev: 1, ino: 2 }, fd());
        let key = InodeKey { dev: 1, ino: 70 };
        seen_before(&t, key, b"g2");
        let a = t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"g2"), View::Host);
        assert!(a.coherence.remembered().is_some());
        let id = a.id;
        assert!(t.forget(id, 1, View::Host).is_some());
        // While the prune asks the tier, the file comes back and is forgotten again.
        t.prune_forgotten(id, |_| {
            t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"g2"), View::Host);
            assert!(t.forget(id, 1, View::Host).is_some());
            false
        });
        assert_eq!(
            t.forgotten_count(),
            1,
            "the newer forget's fingerprint stays"
        );
    }

    #[test]
    fn a_fingerprint_tells_every_field_and_is_a_word() {
        let base = Fingerprint::new(5, (1, 2), (3, 4));
        assert_eq!(base, Fingerprint::new(5, (1, 2), (3, 4)), "deterministic");
        for other in [
            Fingerprint::new(6, (1, 2), (3, 4)),
            Fingerprint::new(5, (2, 2), (3, 4)),
            Fingerprint::new(5, (1, 3), (3, 4)),
            Fingerprint::new(5, (1, 2), (4, 4)),
            Fingerprint::new(5, (1, 2), (3, 5)),
            Fingerprint::new(5, (3, 4), (1, 2)),
        ] {
            assert_ne!(base, other);
            assert_ne!(other, Fingerprint::NOTHING);
        }
        for fp in [None, Some(base), Some(Fingerprint::NOTHING)] {
            assert_eq!(Fingerprint::from_bits(Fingerprint::to_bits(fp)), fp);
        }
        assert_eq!(Fingerprint::to_bits(None), 0);
    }

    #[test]
    fn a_reused_number_of_a_forgotten_object_never_gets_its_fingerprint() {
        let t = InodeTable::new(InodeKey { dev: 1, ino: 2 }, fd());
        let key = InodeKey { dev: 1, ino: 80 };
        let id = t.id_of(key);
        let seen = Remembered::of_fingerprint(Fingerprint::new(5, (1, 2), (3, 4)));
        let forgotten = |handle: &[u8]| Forgotten {
            remembered: seen,
            handle: handle_digest(&FileHandle::from_parts(1, handle)),
            stamp: 0,
        };
        let shown = |r: Option<Remembered>| format!("{:?}", r.unwrap());
        write(&t.inner).forgotten.insert(id, forgotten(b"g1"));
        let same = t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"g1"), View::Host);
        assert_eq!(
            shown(same.coherence.remembered()),
            shown(Some(seen)),
            "the same object"
        );
        assert!(t.forget(id, 1, View::Host).is_some());
        write(&t.inner).forgotten.insert(id, forgotten(b"g1"));
        let other = t.lookup_backing(key, libc::S_IFREG, handle_backing(&t, b"g2"), View::Host);
        assert_eq!(other.id, id);
        assert_eq!(
            shown(other.coherence.remembered()),
            shown(Some(Remembered::matching_nothing())),
            "another object under the reused number: nothing it could match"
        );
    }

    #[test]
    fn live_inodes_hold_no_descriptor_but_reach_their_object() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let root_fd = storage::open_root(dir.path()).unwrap();
        let t = InodeTable::new(storage::key_of(&storage::stat(&root_fd).unwrap()), root_fd);
        if !t.uses_handles() {
            eprintln!("no file handles here: nothing to test");
            return;
        }
        let root = t.get(ROOT_ID).unwrap();
        assert!(root.holds_fd(), "the root always holds its descriptor");
        let mut live = Vec::new();
        for name in ["f", "d"] {
            let (fd, st) =
                storage::open_child(root.fd().unwrap().as_fd(), OsStr::new(name)).unwrap();
            let inode = t.lookup_ref(storage::key_of(&st), storage::fmt_of(&st), fd, View::Host);
            assert!(!inode.holds_fd(), "{name}");
            let again = storage::stat(inode.fd().unwrap()).unwrap();
            assert_eq!(
                storage::key_of(&again),
                inode.key,
                "{name}: the same object"
            );
            live.push(inode);
        }
        let (f, d) = (&live[0], &live[1]);
        // Pinned before its name goes, a file stays reachable; unpinned, it does not.
        f.pin().unwrap();
        assert!(f.holds_fd());
        std::fs::remove_file(dir.path().join("f")).unwrap();
        assert_eq!(storage::stat(f.fd().unwrap()).unwrap().st_nlink, 0);
        std::fs::remove_dir(dir.path().join("d")).unwrap();
        assert!(d.fd().is_err(), "a handle does not reopen a deleted object");
    }

    #[test]
    fn without_handles_inodes_hold_their_descriptor() {
        let proc = || -> OwnedFd { File::open("/proc").unwrap().into() };
        // procfs gives no file handles: a table over it holds descriptors.
        let t = InodeTable::new(InodeKey { dev: 1, ino: 2 }, proc());
        assert!(!t.uses_handles());
        let a = t.lookup_ref(
            InodeKey { dev: 1, ino: 3 },
            libc::S_IFDIR,
            proc(),
            View::Host,
        );
        assert!(a.holds_fd());
        assert!(storage::stat(a.fd().unwrap()).is_ok());
        // Nor does an object on another filesystem than STORAGE's root.
        let t = InodeTable::new(InodeKey { dev: 1, ino: 2 }, fd());
        assert!(t.uses_handles());
        let b = t.lookup_ref(
            InodeKey { dev: 2, ino: 3 },
            libc::S_IFDIR,
            proc(),
            View::Host,
        );
        assert!(b.holds_fd());
        assert!(t.forget(b.id, 1, View::Host).is_some());
    }

    #[test]
    fn device_view_references_are_counted_apart() {
        let root = InodeKey { dev: 1, ino: 2 };
        let t = InodeTable::new(root, fd());
        assert!(
            t.get(ROOT_ID).unwrap().in_device_view(),
            "the device root always is"
        );
        let key = InodeKey { dev: 1, ino: 7 };
        let a = t.lookup_ref(key, libc::S_IFREG, fd(), View::Host);
        assert!(!a.in_device_view());
        t.lookup_ref(key, libc::S_IFREG, fd(), View::Device);
        t.lookup_ref(key, libc::S_IFREG, fd(), View::Device);
        assert!(a.in_device_view());
        assert!(t.forget(a.id, 1, View::Device).is_none());
        assert!(a.in_device_view(), "one device reference is left");
        assert!(t.forget(a.id, 1, View::Device).is_none());
        assert!(
            !a.in_device_view(),
            "the host reference keeps it live, not in the device view"
        );
        assert!(t.forget(a.id, 1, View::Host).is_some());
        // Back from forgotten through the device view.
        let b = t.lookup_ref(key, libc::S_IFREG, fd(), View::Device);
        assert!(b.in_device_view());
    }

    #[test]
    fn root_is_never_forgotten() {
        let t = InodeTable::new(InodeKey { dev: 1, ino: 2 }, fd());
        assert!(t.forget(ROOT_ID, 100, View::Host).is_none());
        assert!(t.get(ROOT_ID).is_some());
        assert_eq!(t.live_count(), 1);
    }
}
