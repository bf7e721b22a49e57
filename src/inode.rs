//! The inode table: FUSE inode numbers <-> backing inodes.
//!
//! Every backing object is identified by its [`InodeKey`] (device, inode
//! number) and gets one [`InodeId`] for the life of the mount: the key->id map
//! is never pruned, so a file keeps its inode number even after the kernel
//! forgets it and looks it up again, and hard links share one id. An id is
//! *live* while the kernel holds lookup references; a live inode owns an
//! `O_PATH | O_NOFOLLOW` descriptor of the backing object, through which every
//! operation on it is made (never a path).
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
//! `coherence.rs` reads or writes it. What it remembers survives a forget.
//!
//! Lock order: the table's `RwLock`, then an inode's coherence state (a
//! leaf); never call out while holding either.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::coherence::{FileState, Remembered};
use crate::lock::{read, write};

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

/// What a backing file looked like: used to tell whether it changed since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

/// A live backing inode.
#[derive(Debug)]
pub struct Inode {
    pub id: InodeId,
    pub key: InodeKey,
    /// `S_IFMT` bits of the backing object (its type never changes).
    pub fmt: u32,
    /// `O_PATH | O_NOFOLLOW` descriptor of the backing object.
    pub fd: OwnedFd,
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
}

#[derive(Default)]
struct Inner {
    live: HashMap<InodeId, Arc<Inode>>,
    /// What the mount last saw of files the kernel forgot: restored when they
    /// come back, so that their device pages (kept across the forget) are
    /// revalidated at the next open instead of trusted blindly.
    forgotten: HashMap<InodeId, Remembered>,
    ids: HashMap<InodeKey, InodeId>,
    next: InodeId,
}

/// The table of inodes.
pub struct InodeTable {
    inner: RwLock<Inner>,
}

impl InodeTable {
    /// A table whose root (id 0, never forgotten) is `root_fd`.
    pub fn new(root_key: InodeKey, root_fd: OwnedFd) -> Self {
        let mut inner = Inner {
            next: FIRST_BACKING_ID,
            ..Default::default()
        };
        inner.ids.insert(root_key, ROOT_ID);
        inner.live.insert(
            ROOT_ID,
            Arc::new(Inode {
                id: ROOT_ID,
                key: root_key,
                fmt: libc::S_IFDIR,
                fd: root_fd,
                nlookup: AtomicU64::new(1),
                device_nlookup: AtomicU64::new(0),
                coherence: FileState::new(None),
            }),
        );
        InodeTable {
            inner: RwLock::new(inner),
        }
    }

    /// The live inode `id`, if the kernel still references it.
    pub fn get(&self, id: InodeId) -> Option<Arc<Inode>> {
        read(&self.inner).live.get(&id).cloned()
    }

    /// The id of `key`, assigning a new one if it was never seen.
    pub fn id_of(&self, key: InodeKey) -> InodeId {
        if let Some(id) = read(&self.inner).ids.get(&key) {
            return *id;
        }
        let mut inner = write(&self.inner);
        Self::assign(&mut inner, key)
    }

    /// The id of `key` if it was ever seen (no assignment).
    pub fn known_id(&self, key: InodeKey) -> Option<InodeId> {
        read(&self.inner).ids.get(&key).copied()
    }

    fn assign(inner: &mut Inner, key: InodeKey) -> InodeId {
        if let Some(id) = inner.ids.get(&key) {
            return *id;
        }
        let id = inner.next;
        inner.next += 1;
        inner.ids.insert(key, id);
        id
    }

    /// Records one kernel lookup reference to the object `key` (opened as
    /// `fd`) in `view`, making it live if it was not. Returns the live inode.
    pub fn lookup_ref(&self, key: InodeKey, fmt: u32, fd: OwnedFd, view: View) -> Arc<Inode> {
        let device = u64::from(view == View::Device);
        let mut inner = write(&self.inner);
        let id = Self::assign(&mut inner, key);
        if let Some(inode) = inner.live.get(&id) {
            // Same object (key) but the type may differ if the inode number was
            // reused by a new object after the old one was deleted.
            if inode.fmt == fmt {
                inode.nlookup.fetch_add(1, Ordering::Relaxed);
                // Counted before the reply carries the entry, so a change that
                // finds it zero happened before this lookup's stat.
                inode.device_nlookup.fetch_add(device, Ordering::SeqCst);
                return inode.clone();
            }
        }
        let remembered = inner.forgotten.remove(&id);
        let inode = Arc::new(Inode {
            id,
            key,
            fmt,
            fd,
            nlookup: AtomicU64::new(1),
            device_nlookup: AtomicU64::new(device),
            coherence: FileState::new(remembered),
        });
        inner.live.insert(id, inode.clone());
        inode
    }

    /// Drops `n` lookup references held through `view`; returns the inode if
    /// it is no longer live.
    pub fn forget(&self, id: InodeId, n: u64, view: View) -> Option<Arc<Inode>> {
        if id == ROOT_ID {
            return None;
        }
        let mut inner = write(&self.inner);
        let inode = inner.live.get(&id)?;
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
            let gone = inner.live.remove(&id)?;
            if let Some(r) = gone.coherence.remembered() {
                inner.forgotten.insert(id, r);
            }
            Some(gone)
        } else {
            None
        }
    }

    /// Number of live inodes (for leak checks and stats).
    pub fn live_count(&self) -> usize {
        read(&self.inner).live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn fd() -> OwnedFd {
        File::open("/").unwrap().into()
    }

    #[test]
    fn view_encoding_roundtrips() {
        assert_eq!(encode(ROOT_ID, View::Host), 1);
        assert_eq!(encode(ROOT_ID, View::Device), 2);
        for id in [0, 1, 2, 3, 1000, u32::MAX as u64] {
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
        assert_eq!(a.id, FIRST_BACKING_ID);
        let b = t.lookup_ref(key, libc::S_IFREG, fd(), View::Host);
        assert_eq!(a.id, b.id);
        assert!(t.forget(a.id, 1, View::Host).is_none());
        assert!(t.forget(a.id, 1, View::Host).is_some());
        assert!(t.get(a.id).is_none());
        drop((a, b));
        let c = t.lookup_ref(key, libc::S_IFREG, fd(), View::Host);
        assert_eq!(c.id, FIRST_BACKING_ID, "re-lookup keeps the inode number");
        assert_eq!(t.id_of(InodeKey { dev: 1, ino: 100 }), FIRST_BACKING_ID + 1);
        // What was seen of the file survives too: `coherence.rs` tests it.
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
