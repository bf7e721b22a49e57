//! Telling the kernel what a host-view change made stale in the device view.
//!
//! The kernel caches device-view entries and attributes for as long as the
//! host view's (`fuse.rs`), which spares a training job a round trip per path
//! component and per `stat` on every file it opens. For changes made through
//! the host view the kernel keeps its *host-view* caches right by itself, but
//! it cannot know that device-view inode `2n+2` is the same file as host-view
//! inode `2n+1`. So every such change tells the kernel what it made stale in
//! the device view with FUSE notifications. Changes made behind the mount's
//! back are the other source: for them the watcher (`watch.rs`, decided by
//! `coherence.rs`) tells the kernel what went stale in *both* views, through
//! the same [`KernelNotifier`] with [`KernelNotifier::send_now`].
//!
//! Three kinds, three ways, each chosen by what the kernel locks for it:
//! - *Attributes* (and ACLs) of an inode: written by the worker that made the
//!   change, before it replies. The kernel takes only spinlocks for them, so
//!   this cannot wait on a FUSE request; it costs one `writev`.
//! - *Entries* (a name in a directory): the kernel takes the directory's inode
//!   lock, which a device-view lookup holds while it waits for a free worker.
//!   A worker blocked here could deadlock the mount, so one thread of its own
//!   ([`KernelNotifier`]) writes them; the worker waits for it up to [`WAIT`]
//!   before it replies. Past WAIT (every worker is busy with such changes) it
//!   replies anyway and the name lands moments later: the one window in which
//!   a device-view name lags the host view (`notifications.late` counts them).
//! - *Pages* a device-view `mmap` holds: the kernel takes page locks, which a
//!   fault holds while it waits for a worker; the same thread drops them
//!   without anyone waiting (a busy writer must not pay a thread hand-off per
//!   write), coalesced per inode. A device-view mapping sees a host write
//!   moments after the write returns.
//!
//! The watcher is no FUSE worker: no request waits on it, so it writes its
//! notifications itself, in order, and returns once all are written
//! ([`KernelNotifier::send_now`]). That lets it record the file as seen
//! afterwards without an open slipping in between that keeps pages it has
//! not dropped yet.
//!
//! Only what the kernel can hold is notified: inodes with device-view lookup
//! references ([`Inode::in_device_view`]) and entries in such directories. A
//! change nothing in the device view refers to costs nothing. (The host view
//! is notified only for changes behind the mount's back, for every live inode.)

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use tracing::debug;

use crate::inode::{Inode, View, encode};
use crate::lock::lock;

/// How long a worker waits for its entry notifications before it replies anyway.
pub const WAIT: Duration = Duration::from_millis(20);

/// One thing the kernel may cache that a change made stale. Inode numbers are
/// FUSE (device-view) inode numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StaleItem {
    /// The entry `name` in directory `parent`.
    Entry { parent: u64, name: OsString },
    /// An inode's attributes, ACLs and mapped pages.
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

    /// Behind the mount's back, the name `name` in `dir` appeared or went away:
    /// both views' entries (the kernel drops `dir`'s attributes with them).
    pub fn external_entry(&mut self, dir: &Inode, name: &OsStr) -> &mut Self {
        self.items.push(StaleItem::Entry {
            parent: encode(dir.id, View::Host),
            name: name.to_owned(),
        });
        if dir.in_device_view() {
            self.items.push(StaleItem::Entry {
                parent: encode(dir.id, View::Device),
                name: name.to_owned(),
            });
        }
        self
    }

    /// Behind the mount's back, `inode`'s data changed: both views' attributes
    /// and pages.
    pub fn external_data(&mut self, inode: &Inode) -> &mut Self {
        let host = StaleItem::Inode(encode(inode.id, View::Host));
        if !self.items.contains(&host) {
            self.items.push(host);
        }
        self.inode(inode)
    }

    /// Whether nothing needs telling.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The gathered items.
    #[cfg(test)]
    pub fn items(&self) -> &[StaleItem] {
        &self.items
    }
}

/// Where notifications are written: the FUSE connection, or a test's stand-in.
pub trait NotifySink: Send + Sync + 'static {
    /// Drops the entry `name` of directory `parent`.
    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()>;
    /// Drops the attributes and ACLs of `ino` (never waits on a FUSE request).
    fn inval_attrs(&self, ino: u64) -> io::Result<()>;
    /// Drops every cached page of `ino`.
    fn inval_pages(&self, ino: u64) -> io::Result<()>;
}

impl NotifySink for fuser::Notifier {
    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        fuser::Notifier::inval_entry(self, fuser::INodeNo(parent), name)
    }
    fn inval_attrs(&self, ino: u64) -> io::Result<()> {
        // A negative offset: attributes only, no page is touched.
        fuser::Notifier::inval_inode(self, fuser::INodeNo(ino), -1, 0)
    }
    fn inval_pages(&self, ino: u64) -> io::Result<()> {
        // Offset 0, length 0: every page (and the attributes once more).
        fuser::Notifier::inval_inode(self, fuser::INodeNo(ino), 0, 0)
    }
}

/// Work for the notification thread.
enum Job {
    /// Entries to drop; `done` hears when they are written.
    Entries {
        entries: Vec<(u64, OsString)>,
        done: mpsc::SyncSender<()>,
    },
    /// Pages of these inodes to drop (nobody waits).
    Pages(Vec<u64>),
}

/// Counters of the notifier (for stats).
#[derive(Debug, Default)]
pub struct NotifyCounters {
    /// Notifications written.
    pub sent: AtomicU64,
    /// Changes that replied before their entry notifications were written.
    pub late: AtomicU64,
}

impl NotifyCounters {
    /// Counts a notification written; a failed one is only logged (the
    /// connection is going away, so nothing is cached any more).
    fn note(&self, what: &dyn std::fmt::Debug, r: io::Result<()>) {
        match r {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => debug!(?what, "notification not written: {e}"),
        }
    }
}

struct Connected {
    sink: Arc<dyn NotifySink>,
    queue: mpsc::Sender<Job>,
}

/// The connection to the kernel and the notification thread. Unconnected
/// (before the mount is live, and in tests of the core), [`KernelNotifier::send`]
/// does nothing.
pub struct KernelNotifier {
    conn: OnceLock<Connected>,
    counters: Arc<NotifyCounters>,
    /// Inodes whose page drop is queued and not yet started: a later change
    /// rides on it.
    pages_pending: Arc<Mutex<HashSet<u64>>>,
    /// How long [`KernelNotifier::send`] waits for entries: [`WAIT`].
    wait: Duration,
}

impl Default for KernelNotifier {
    fn default() -> Self {
        KernelNotifier {
            conn: OnceLock::new(),
            counters: Arc::default(),
            pages_pending: Arc::default(),
            wait: WAIT,
        }
    }
}

impl KernelNotifier {
    /// A notifier with no connection yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A notifier whose `send` waits up to `wait` for entries: a test that checks what is
    /// written before `send` returns must not depend on the notification thread being
    /// scheduled within [`WAIT`] on a loaded machine.
    #[cfg(test)]
    fn with_wait(wait: Duration) -> Self {
        KernelNotifier {
            wait,
            ..Self::default()
        }
    }

    /// Starts the notification thread writing to `sink`. Once only.
    pub fn connect(&self, sink: impl NotifySink) -> io::Result<()> {
        let sink: Arc<dyn NotifySink> = Arc::new(sink);
        let (tx, rx) = mpsc::channel::<Job>();
        let (thread_sink, counters) = (sink.clone(), self.counters.clone());
        let pending = self.pages_pending.clone();
        std::thread::Builder::new()
            .name("kernel-notify".into())
            .spawn(move || {
                let note = |what: &dyn std::fmt::Debug, r| counters.note(what, r);
                // Ends when the filesystem (the only sender) is dropped.
                for job in rx {
                    match job {
                        Job::Entries { entries, done } => {
                            for (parent, name) in &entries {
                                note(&(parent, name), thread_sink.inval_entry(*parent, name));
                            }
                            let _ = done.try_send(());
                        }
                        Job::Pages(inos) => {
                            for ino in inos {
                                // Unmarked first: a change made from here on queues anew.
                                lock(&pending).remove(&ino);
                                note(&ino, thread_sink.inval_pages(ino));
                            }
                        }
                    }
                }
            })?;
        self.conn
            .set(Connected { sink, queue: tx })
            .map_err(|_| io::Error::other("kernel notifier already connected"))
    }

    /// Whether notifications are written.
    pub fn is_connected(&self) -> bool {
        self.conn.get().is_some()
    }

    /// Tells the kernel what `stale` lists: attributes at once, entries before
    /// returning (up to [`WAIT`]), pages soon after.
    pub fn send(&self, stale: Stale) {
        let Some(conn) = self.conn.get() else {
            return;
        };
        let mut entries = Vec::new();
        let mut pages = Vec::new();
        for item in stale.items {
            match item {
                StaleItem::Inode(ino) => {
                    self.counters.note(&ino, conn.sink.inval_attrs(ino));
                    if lock(&self.pages_pending).insert(ino) {
                        pages.push(ino);
                    }
                }
                StaleItem::Entry { parent, name } => entries.push((parent, name)),
            }
        }
        if !pages.is_empty() {
            let _ = conn.queue.send(Job::Pages(pages));
        }
        if entries.is_empty() {
            return;
        }
        let (done, written) = mpsc::sync_channel(1);
        if conn.queue.send(Job::Entries { entries, done }).is_err() {
            return;
        }
        if written.recv_timeout(self.wait).is_err() {
            self.counters.late.fetch_add(1, Ordering::Relaxed);
            debug!(
                "device-view entry notifications still queued after {:?}; replying anyway",
                self.wait
            );
        }
    }

    /// Tells the kernel what `stale` lists, written by the calling thread in
    /// order: every entry, and every inode's attributes and pages, before it
    /// returns. Only for a thread no FUSE request waits on (the watcher): it
    /// may block on the kernel's directory and page locks until a worker
    /// serves the request that holds them.
    pub fn send_now(&self, stale: Stale) {
        let Some(conn) = self.conn.get() else {
            return;
        };
        for item in stale.items {
            match item {
                StaleItem::Inode(ino) => {
                    // Pages and attributes in one; a page drop still queued changes nothing.
                    self.counters.note(&ino, conn.sink.inval_pages(ino));
                }
                StaleItem::Entry { parent, name } => {
                    let r = conn.sink.inval_entry(parent, &name);
                    self.counters.note(&(parent, &name), r);
                }
            }
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
    use std::sync::Condvar;
    use std::time::Instant;

    /// Records what it is told, as text; entry and page notifications block while the
    /// gate is closed (as the kernel's directory and page locks can), attributes never.
    #[derive(Clone, Default)]
    struct Recorder {
        seen: Arc<Mutex<Vec<String>>>,
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
        fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }
        fn count(&self, what: &str) -> usize {
            self.seen().iter().filter(|s| *s == what).count()
        }
        fn push(&self, what: String) {
            self.seen.lock().unwrap().push(what);
        }
    }

    impl NotifySink for Recorder {
        fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()> {
            self.wait_gate();
            self.push(format!("entry {parent} {}", name.to_string_lossy()));
            Ok(())
        }
        fn inval_attrs(&self, ino: u64) -> io::Result<()> {
            self.push(format!("attrs {ino}"));
            Ok(())
        }
        fn inval_pages(&self, ino: u64) -> io::Result<()> {
            self.wait_gate();
            self.push(format!("pages {ino}"));
            Ok(())
        }
    }

    fn table() -> InodeTable {
        InodeTable::new(InodeKey { dev: 1, ino: 2 }, fd())
    }

    fn fd() -> std::os::fd::OwnedFd {
        File::open("/").unwrap().into()
    }

    /// Polls `cond` until it holds, failing the test after 10 s.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn entry_in_root(name: &str) -> Stale {
        let t = table();
        let mut s = Stale::new();
        s.entry(&t.get(ROOT_ID).unwrap(), OsStr::new(name));
        s
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
    fn attributes_and_entries_are_written_before_send_returns() {
        let rec = Recorder::default();
        let n = KernelNotifier::with_wait(Duration::from_secs(30));
        n.connect(rec.clone()).unwrap();
        n.send(entry_in_root("x"));
        // No polling: send waited for both.
        let seen = rec.seen();
        assert!(seen.contains(&"attrs 2".to_string()), "{seen:?}");
        assert!(seen.contains(&"entry 2 x".to_string()), "{seen:?}");
        eventually("the root's pages dropped", || rec.count("pages 2") == 1);
        assert_eq!(n.counters().sent.load(Ordering::Relaxed), 3);
        assert_eq!(n.counters().late.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_blocked_entry_notification_does_not_hold_the_worker() {
        let rec = Recorder::default();
        rec.set_closed(true);
        let n = KernelNotifier::new();
        n.connect(rec.clone()).unwrap();
        let start = Instant::now();
        n.send(entry_in_root("y"));
        assert!(start.elapsed() >= WAIT, "waited for the entry first");
        assert_eq!(rec.seen(), ["attrs 2"], "attributes never wait");
        assert_eq!(n.counters().late.load(Ordering::Relaxed), 1);
        // Once the lock is free the entry still lands.
        rec.set_closed(false);
        eventually("the entry written", || rec.count("entry 2 y") == 1);
    }

    #[test]
    fn page_drops_coalesce_while_one_is_queued() {
        let t = table();
        let file = t.lookup_ref(
            InodeKey { dev: 1, ino: 12 },
            libc::S_IFREG,
            fd(),
            View::Device,
        );
        let ino = encode(file.id, View::Device);
        let rec = Recorder::default();
        rec.set_closed(true);
        let n = KernelNotifier::new();
        n.connect(rec.clone()).unwrap();
        for _ in 0..100 {
            let mut s = Stale::new();
            s.inode(&file);
            n.send(s); // never waits: nobody waits for pages
        }
        assert_eq!(
            rec.count(&format!("attrs {ino}")),
            100,
            "attributes every time"
        );
        rec.set_closed(false);
        // The queue is first in, first out: once this entry is written, so are the pages.
        n.send(entry_in_root("z"));
        let pages = rec.count(&format!("pages {ino}"));
        assert!(
            (1..=2).contains(&pages),
            "100 changes, {pages} page drops: one in flight, at most one more queued"
        );
    }

    #[test]
    fn send_now_writes_everything_itself_in_order() {
        let t = table();
        let file = t.lookup_ref(
            InodeKey { dev: 1, ino: 13 },
            libc::S_IFREG,
            fd(),
            View::Host,
        );
        let rec = Recorder::default();
        let n = KernelNotifier::new();
        n.connect(rec.clone()).unwrap();
        let mut s = Stale::new();
        s.external_entry(&t.get(ROOT_ID).unwrap(), OsStr::new("e"))
            .external_data(&file);
        n.send_now(s);
        let host = encode(file.id, View::Host);
        // No polling: written before send_now returned, by the caller.
        assert_eq!(
            rec.seen(),
            ["entry 1 e", "entry 2 e", &format!("pages {host}")],
            "both views of the root's entry, the host-only file's pages (no device view)"
        );
        assert_eq!(n.counters().sent.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn unconnected_send_is_a_no_op() {
        KernelNotifier::new().send(entry_in_root("w"));
    }
}
