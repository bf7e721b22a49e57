//! Telling the kernel what a host-view change made stale in the device view.
//!
//! The kernel caches device-view entries and attributes for as long as the
//! host view's (`fuse.rs`), which spares a training job a round trip per path
//! component and per `stat` on every file it opens. For changes made through
//! the host view the kernel keeps its *host-view* caches right by itself, but
//! it cannot know that device-view inode `2n+2` is the same file as host-view
//! inode `2n+1`. So every such change pushes what it made stale in the device
//! view (an entry, an inode's attributes, ACLs and mmap pages) to the kernel
//! as FUSE notifications before it is acknowledged. Changes made behind the
//! mount's back reach the kernel through the watcher (`watch.rs`) instead.
//!
//! Invariants:
//! - Notifications are written by one thread of their own ([`KernelNotifier`]),
//!   never by a FUSE worker: an entry notification takes the directory's inode
//!   lock and a data one takes page locks, and a device-view request can hold
//!   either while it waits for a free worker. A worker blocked in a
//!   notification could therefore deadlock the mount.
//! - The worker that made a change waits until its notifications have been
//!   written, up to [`WAIT`], and only then replies: the device view shows the
//!   change as soon as the host-view call returns. Past WAIT (the kernel lock
//!   is held by a request that needs a worker) it replies anyway and the
//!   notifications land moments later; that is the one window in which a
//!   device-view name or attribute lags the host view.
//! - Only what the kernel can hold is notified: inodes with device-view lookup
//!   references ([`Inode::in_device_view`]) and entries in such directories.
//!   A change nothing in the device view refers to costs nothing.

use std::ffi::{OsStr, OsString};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

use tracing::debug;

use crate::inode::{Inode, View, encode};

/// How long a worker waits for its notifications before it replies anyway.
pub const WAIT: Duration = Duration::from_millis(20);

/// One thing the kernel may cache that a change made stale. Inode numbers are
/// FUSE (device-view) inode numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StaleItem {
    /// The entry `name` in directory `parent`.
    Entry { parent: u64, name: OsString },
    /// An inode's attributes, ACLs and cached pages.
    Inode(u64),
}

/// The device-view items one change made stale, gathered before they are sent.
#[derive(Debug, Default)]
pub struct Stale {
    items: Vec<StaleItem>,
}

impl Stale {
    /// Nothing stale yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `inode`'s attributes (size, times, mode, link count) or data changed.
    pub fn inode(&mut self, inode: &Inode) -> &mut Self {
        if inode.in_device_view() {
            let ino = encode(inode.id, View::Device);
            if !self.items.contains(&StaleItem::Inode(ino)) {
                self.items.push(StaleItem::Inode(ino));
            }
        }
        self
    }

    /// The name `name` in `dir` was removed, replaced or created (which also
    /// changes `dir`'s own attributes).
    pub fn entry(&mut self, dir: &Inode, name: &OsStr) -> &mut Self {
        if dir.in_device_view() {
            self.items.push(StaleItem::Entry {
                parent: encode(dir.id, View::Device),
                name: name.to_owned(),
            });
        }
        self.inode(dir)
    }

    /// Whether nothing needs telling.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The gathered items.
    pub fn items(&self) -> &[StaleItem] {
        &self.items
    }
}

/// Where notifications are written: the FUSE connection, or a test's stand-in.
pub trait NotifySink: Send + 'static {
    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()>;
    fn inval_inode(&self, ino: u64) -> io::Result<()>;
}

impl NotifySink for fuser::Notifier {
    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        fuser::Notifier::inval_entry(self, fuser::INodeNo(parent), name)
    }
    fn inval_inode(&self, ino: u64) -> io::Result<()> {
        // Offset 0, length 0: attributes, ACLs and every cached page (a
        // device-view mmap keeps pages of its own).
        fuser::Notifier::inval_inode(self, fuser::INodeNo(ino), 0, 0)
    }
}

struct Batch {
    items: Vec<StaleItem>,
    done: mpsc::SyncSender<()>,
}

/// Counters of the notifier (for stats).
#[derive(Debug, Default)]
pub struct NotifyCounters {
    /// Notifications written.
    pub sent: AtomicU64,
    /// Changes that replied before their notifications were written.
    pub late: AtomicU64,
}

/// The notification thread and the queue to it. Unconnected (before the
/// mount is live, and in tests of the core), [`KernelNotifier::send`] does
/// nothing.
#[derive(Default)]
pub struct KernelNotifier {
    queue: OnceLock<Mutex<mpsc::Sender<Batch>>>,
    counters: std::sync::Arc<NotifyCounters>,
}

impl KernelNotifier {
    /// A notifier with no connection yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the notification thread writing to `sink`. Once only.
    pub fn connect(&self, sink: impl NotifySink) -> io::Result<()> {
        let (tx, rx) = mpsc::channel::<Batch>();
        let counters = self.counters.clone();
        std::thread::Builder::new()
            .name("kernel-notify".into())
            .spawn(move || {
                // Ends when the filesystem (the only sender) is dropped.
                for batch in rx {
                    for item in &batch.items {
                        let r = match item {
                            StaleItem::Entry { parent, name } => sink.inval_entry(*parent, name),
                            StaleItem::Inode(ino) => sink.inval_inode(*ino),
                        };
                        match r {
                            Ok(()) => {
                                counters.sent.fetch_add(1, Ordering::Relaxed);
                            }
                            // The connection is going away: nothing is cached any more.
                            Err(e) => debug!(?item, "notification not written: {e}"),
                        }
                    }
                    let _ = batch.done.try_send(());
                }
            })?;
        self.queue
            .set(Mutex::new(tx))
            .map_err(|_| io::Error::other("kernel notifier already connected"))
    }

    /// Whether the notification thread runs.
    pub fn is_connected(&self) -> bool {
        self.queue.get().is_some()
    }

    /// Has `stale` written to the kernel, waiting up to [`WAIT`] for it.
    pub fn send(&self, stale: Stale) {
        if stale.is_empty() {
            return;
        }
        let Some(queue) = self.queue.get() else {
            return;
        };
        let (done, written) = mpsc::sync_channel(1);
        let batch = Batch {
            items: stale.items,
            done,
        };
        if queue.lock().unwrap().send(batch).is_err() {
            return;
        }
        if written.recv_timeout(WAIT).is_err() {
            self.counters.late.fetch_add(1, Ordering::Relaxed);
            debug!("device-view notifications still queued after {WAIT:?}; replying anyway");
        }
    }

    /// The notifier's counters.
    pub fn counters(&self) -> &NotifyCounters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inode::{InodeKey, InodeTable, ROOT_ID};
    use std::fs::File;
    use std::sync::{Arc, Condvar};
    use std::time::Instant;

    /// Records what it is told; blocks while `gate` is closed.
    #[derive(Clone, Default)]
    struct Recorder {
        seen: Arc<Mutex<Vec<StaleItem>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Recorder {
        fn wait_gate(&self) {
            let (lock, cv) = &*self.gate;
            let mut closed = lock.lock().unwrap();
            while *closed {
                closed = cv.wait(closed).unwrap();
            }
        }
        fn set_closed(&self, closed: bool) {
            let (lock, cv) = &*self.gate;
            *lock.lock().unwrap() = closed;
            cv.notify_all();
        }
    }

    impl NotifySink for Recorder {
        fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()> {
            self.wait_gate();
            self.seen.lock().unwrap().push(StaleItem::Entry {
                parent,
                name: name.to_owned(),
            });
            Ok(())
        }
        fn inval_inode(&self, ino: u64) -> io::Result<()> {
            self.wait_gate();
            self.seen.lock().unwrap().push(StaleItem::Inode(ino));
            Ok(())
        }
    }

    fn table() -> InodeTable {
        InodeTable::new(InodeKey { dev: 1, ino: 2 }, fd())
    }

    fn fd() -> std::os::fd::OwnedFd {
        File::open("/").unwrap().into()
    }

    #[test]
    fn only_what_the_device_view_holds_is_stale() {
        let t = table();
        let root = t.get(ROOT_ID).unwrap();
        let host_only = t.lookup_ref(
            InodeKey { dev: 1, ino: 10 },
            libc::S_IFDIR,
            fd(),
            View::Host,
        );
        let shown = t.lookup_ref(
            InodeKey { dev: 1, ino: 11 },
            libc::S_IFREG,
            fd(),
            View::Device,
        );
        let mut s = Stale::new();
        s.entry(&host_only, OsStr::new("a")).inode(&host_only);
        assert!(s.is_empty(), "nothing the device view holds: {s:?}");
        s.entry(&root, OsStr::new("b")).inode(&shown).inode(&shown);
        assert_eq!(
            s.items(),
            [
                StaleItem::Entry {
                    parent: encode(ROOT_ID, View::Device),
                    name: "b".into()
                },
                StaleItem::Inode(encode(ROOT_ID, View::Device)),
                StaleItem::Inode(encode(shown.id, View::Device)),
            ],
            "the root's entry and attributes, the file once"
        );
    }

    #[test]
    fn send_returns_once_written_in_order() {
        let t = table();
        let root = t.get(ROOT_ID).unwrap();
        let rec = Recorder::default();
        let n = KernelNotifier::new();
        n.connect(rec.clone()).unwrap();
        let mut s = Stale::new();
        s.entry(&root, OsStr::new("x"));
        n.send(s);
        // No polling: send waited for the thread to write both.
        assert_eq!(rec.seen.lock().unwrap().len(), 2);
        assert_eq!(n.counters().sent.load(Ordering::Relaxed), 2);
        assert_eq!(n.counters().late.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_blocked_notification_does_not_hold_the_worker() {
        let t = table();
        let root = t.get(ROOT_ID).unwrap();
        let rec = Recorder::default();
        rec.set_closed(true);
        let n = KernelNotifier::new();
        n.connect(rec.clone()).unwrap();
        let mut s = Stale::new();
        s.inode(&root);
        let start = Instant::now();
        n.send(s);
        assert!(start.elapsed() >= WAIT, "waited for the write first");
        assert!(rec.seen.lock().unwrap().is_empty());
        assert_eq!(n.counters().late.load(Ordering::Relaxed), 1);
        // Once the lock is free the notification still lands.
        rec.set_closed(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while rec.seen.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "notification never written");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn unconnected_send_is_a_no_op() {
        let t = table();
        let mut s = Stale::new();
        s.inode(&t.get(ROOT_ID).unwrap());
        KernelNotifier::new().send(s);
    }
}
