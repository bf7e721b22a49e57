//! Coherence: no read of either view returns bytes STORAGE no longer holds.
//!
//! One home for the protocol the host view, the device view and the watcher
//! share. Three sources change STORAGE, and each is answered here:
//! - *A change of a file's data or attributes made through the mount*
//!   ([`Coherence::changing`]): before it, a change made behind the mount's
//!   back since the mount last looked drops the whole file's device pages;
//!   while it runs the file is marked in flight, so the watcher leaves it to
//!   the change; after it, the file's fingerprint is recorded so that the
//!   change is not taken for an external one, and the kernel is told what it
//!   made stale in the device view. The caller drops exactly the device pages
//!   its change covers, after STORAGE has the new bytes.
//! - *A change of names made through the mount* (mkdir, create, mknod, symlink,
//!   link, unlink, rmdir, rename): the kernel already knows it in the host
//!   view, and the caller tells it about the device view. Before the syscall
//!   the operation registers the inotify events it will cause
//!   ([`Coherence::expect_own`]); the watcher consumes a matching registration
//!   instead of notifying. Notifying anyway would unhash the host-view dentry
//!   a process may just have entered, and its `getcwd` would fail.
//! - *A change behind the mount's back*: the watcher hands each inotify event
//!   to [`Coherence::storage_event`], which drops the file's device pages and
//!   tells the kernel what went stale in both views; an open that comes first
//!   finds it by fingerprint ([`Coherence::revalidate`]) and drops the kernel's
//!   cached data by not keeping it.
//! - *A writable open the kernel serves itself* (FUSE passthrough, `iomode.rs`):
//!   its writes reach STORAGE without the daemon, so no write can drop what it
//!   covers. Before such an open is answered ([`Coherence::writer_behind_opened`])
//!   the file is marked, the device-tier accesses already running drain, and its
//!   device pages are dropped; while it is marked, device reads and prefetches
//!   bypass the tier ([`Coherence::device_access`]). At its release
//!   ([`Coherence::writer_behind_closed`]) the fingerprint is forgotten and the
//!   kernel told, as for a change behind the mount's back.
//!
//! Invariants:
//! - a file's fingerprint ([`FileState`], private to this module) is recorded
//!   only after every invalidation that the state it describes requires has
//!   completed: the device pages dropped, and (by the watcher) the kernel's
//!   pages dropped. So a matching fingerprint always means the caches hold
//!   nothing older than it, and an open may keep the kernel's cache.
//! - the watcher records what it saw, too: its invalidation covers the file as
//!   it stat'd it (the stat comes first), and leaving the old fingerprint
//!   would make the next open drop again the device pages refilled with the
//!   new bytes and the kernel's cache. A later change still shows: it changes
//!   the fingerprint (ctime is fine-grained once queried, multigrain
//!   timestamps), and its own event follows.
//! - a registration of an own event is withdrawn when the syscall fails, is
//!   consumed by at most one event, and expires [`OWN_EVENT_TTL`] after the
//!   syscall (an unwatched directory never reports it). An event that meets a
//!   registration whose syscall has not returned yet waits for the outcome
//!   (up to `OUTCOME_WAIT`; past it the event is taken as the operation's).
//! - no lock of this module is held while calling the tier or the kernel.
//! - while a file is marked written behind the daemon, no device page of it is
//!   installed or served: every tier access of it either started before the
//!   mark and finished before the pages were dropped, or sees the mark.
//!
//! Lock order: an inode's fingerprint mutex, its drain mutex and the own-event
//! registry are leaves (taken after the inode table's lock, never together).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Stat};
use tracing::debug;

use crate::errno::FsResult;
use crate::inode::{Fingerprint, Inode, InodeId, InodeKey, InodeTable};
use crate::lock::lock;
use crate::notify::{KernelNotifier, NotifyCounters, NotifySink, Stale};
use crate::storage;
use crate::tier::{DeviceTier, Hint, InvalidationCause};

/// How long a registration of an own event waits for its event after the
/// syscall returned. Past it the event is taken for an external one.
pub const OWN_EVENT_TTL: Duration = Duration::from_secs(5);

/// How long the watcher waits for a registered operation whose syscall has
/// not returned yet (it already caused the event, or an external change did).
const OUTCOME_WAIT: Duration = Duration::from_secs(1);

/// What the mount last saw of a backing file, and whether a change made
/// through the mount is running on it. Lives in [`Inode`]; only this module
/// reads or writes it.
#[derive(Debug, Default)]
pub struct FileState {
    /// The file as last seen by an open, a change through the mount or the
    /// watcher; the kernel's cached data is kept across opens only while the
    /// backing file matches it.
    /// `Fingerprint::to_bits` of it: 8 bytes with no lock (a compare and a store; a
    /// revalidation that finds a change never held a lock across the invalidation anyway).
    seen: AtomicU64,
    /// Changes through the mount in progress; the watcher leaves the file to
    /// them (each revalidates before it changes anything). 16 bits, like `tier_users`:
    /// each counts calls running on the daemon's own threads (at most a few hundred), and
    /// the state is then 16 bytes: the inode fills glibc's 128-byte chunk, not the 144.
    changes_in_flight: AtomicU16,
    /// Writable opens the kernel serves itself (passthrough): their writes
    /// reach STORAGE without the daemon seeing them, so while one is held the
    /// device tier neither keeps nor installs pages of the file.
    writers_behind: AtomicU32,
    /// Device-tier accesses (reads, prefetches) running that found no writer
    /// behind; a writer's open waits for them to drain before it drops the
    /// file's pages, so none installs a page after that.
    tier_users: AtomicU16,
}

/// Wakes a writer's open waiting for a file's `tier_users` to drain: one for all files (such
/// opens are rare, and a waiter re-checks its own file), so no inode carries one.
static DRAINED: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());

/// What survives of a [`FileState`] while the kernel has forgotten the inode
/// (its device pages outlive the forget).
#[derive(Clone, Copy, Debug)]
pub struct Remembered(Fingerprint);

impl Remembered {
    /// What to remember of an object that took the id of another (a reused
    /// inode number): it matches no file, so the next open or change drops
    /// whatever the caches hold of the id.
    pub fn matching_nothing() -> Self {
        Remembered(Fingerprint::NOTHING)
    }

    /// What was seen of a file, made up (for the inode table's tests).
    #[cfg(test)]
    pub fn of_fingerprint(fp: Fingerprint) -> Self {
        Remembered(fp)
    }
}

impl FileState {
    /// The state of an inode made live, with what was remembered of it.
    pub fn new(remembered: Option<Remembered>) -> Self {
        FileState {
            seen: AtomicU64::new(Fingerprint::to_bits(remembered.map(|r| r.0))),
            changes_in_flight: AtomicU16::new(0),
            ..FileState::default()
        }
    }

    /// What to remember when the kernel forgets the inode.
    pub fn remembered(&self) -> Option<Remembered> {
        self.seen().map(Remembered)
    }

    /// The file as last seen.
    fn seen(&self) -> Option<Fingerprint> {
        Fingerprint::from_bits(self.seen.load(Ordering::SeqCst))
    }

    fn set_seen(&self, fp: Option<Fingerprint>) {
        self.seen.store(Fingerprint::to_bits(fp), Ordering::SeqCst);
    }

    fn in_flight(&self) -> bool {
        self.changes_in_flight.load(Ordering::SeqCst) > 0
    }
}

/// What a revalidation found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// The file as last seen.
    Unchanged,
    /// Changed behind the mount's back (its device pages are now dropped).
    Changed,
    /// Never seen before (the kernel and the tier hold nothing of it).
    First,
}

/// How a device-view read (or a prefetch) of a file may reach its bytes.
pub enum DeviceAccess<'a> {
    /// Through the device tier, as usual; hold the guard until the tier call returns.
    Tier(TierUse<'a>),
    /// Straight from STORAGE, bypassing the tier: a writer the daemon does not see is open,
    /// so no page of the file may be installed (or served from the tier).
    Storage,
}

/// A device-tier access in progress on a file (see [`FileState::tier_users`]).
pub struct TierUse<'a>(&'a FileState);

impl Drop for TierUse<'_> {
    fn drop(&mut self) {
        let state = self.0;
        if state.tier_users.fetch_sub(1, Ordering::SeqCst) == 1
            && state.writers_behind.load(Ordering::SeqCst) > 0
        {
            let _g = lock(&DRAINED.0);
            DRAINED.1.notify_all();
        }
    }
}

/// Marks a change through the mount in progress on a file.
struct InFlight<'a>(&'a FileState);

impl<'a> InFlight<'a> {
    fn enter(state: &'a FileState) -> Self {
        state.changes_in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.changes_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An inotify event about a name in a watched directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryEvent {
    /// `IN_CREATE`: the name appeared (create, mkdir, mknod, symlink, link).
    Created,
    /// `IN_DELETE`: the name went away (unlink, rmdir).
    Deleted,
    /// `IN_MOVED_FROM`: the name was renamed away.
    MovedFrom,
    /// `IN_MOVED_TO`: a rename put something under the name.
    MovedTo,
}

/// What the watcher saw happen to a name in a watched directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageEvent {
    /// The name itself changed.
    Entry(EntryEvent),
    /// The data of the file under the name changed (`IN_MODIFY`, `IN_CLOSE_WRITE`).
    Data,
    /// Its attributes changed (`IN_ATTRIB`: mode, owner, times, link count). A regular
    /// file is checked as for [`Self::Data`] (its fingerprint holds the ctime); anything
    /// else has only its attributes dropped from the kernel's caches.
    Attributes,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EventKey {
    dir: InodeKey,
    name: OsString,
    event: EntryEvent,
}

#[derive(Debug)]
struct Registration {
    token: u64,
    /// When the syscall returned successfully; `None` while it runs.
    happened_at: Option<Instant>,
}

#[derive(Debug)]
struct Registry {
    by_key: HashMap<EventKey, Vec<Registration>>,
    next_token: u64,
    swept: Instant,
}

impl Registry {
    /// Drops registrations whose event never came (at most once a second).
    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.swept) < Duration::from_secs(1) {
            return;
        }
        self.swept = now;
        self.by_key.retain(|_, regs| {
            regs.retain(|r| !r.expired(now));
            !regs.is_empty()
        });
    }

    fn remove(&mut self, key: &EventKey, token: u64) {
        if let Some(regs) = self.by_key.get_mut(key) {
            regs.retain(|r| r.token != token);
            if regs.is_empty() {
                self.by_key.remove(key);
            }
        }
    }
}

impl Registration {
    fn expired(&self, now: Instant) -> bool {
        self.happened_at
            .is_some_and(|t| now.duration_since(t) > OWN_EVENT_TTL)
    }
}

/// What a consumer finds for an event.
enum Match {
    /// A registration whose syscall returned: the event is the mount's own.
    Own,
    /// Only registrations whose syscall still runs.
    Undecided,
    /// None: the event is external.
    External,
}

/// The registry of inotify events the mount's own operations will cause.
struct OwnEvents {
    registry: Mutex<Registry>,
    /// Signalled when a registration's syscall returns (or fails).
    outcome: Condvar,
}

impl OwnEvents {
    fn new() -> Self {
        OwnEvents {
            registry: Mutex::new(Registry {
                by_key: HashMap::new(),
                next_token: 0,
                swept: Instant::now(),
            }),
            outcome: Condvar::new(),
        }
    }

    fn find(registry: &mut Registry, key: &EventKey, now: Instant) -> Match {
        let Some(regs) = registry.by_key.get_mut(key) else {
            return Match::External;
        };
        if let Some(i) = regs
            .iter()
            .position(|r| r.happened_at.is_some() && !r.expired(now))
        {
            regs.remove(i);
            if regs.is_empty() {
                registry.by_key.remove(key);
            }
            return Match::Own;
        }
        if regs.iter().any(|r| r.happened_at.is_none()) {
            Match::Undecided
        } else {
            Match::External
        }
    }

    /// Whether `key` is an event the mount's own operation caused (consuming
    /// its registration).
    fn consume(&self, key: &EventKey) -> bool {
        let deadline = Instant::now() + OUTCOME_WAIT;
        let mut registry = lock(&self.registry);
        loop {
            let now = Instant::now();
            registry.sweep(now);
            match Self::find(&mut registry, key, now) {
                Match::Own => return true,
                Match::External => return false,
                Match::Undecided if now >= deadline => {
                    // The syscall has not returned for a second: it caused the event.
                    debug!(
                        ?key,
                        "own operation still running; its event taken as its own"
                    );
                    return true;
                }
                Match::Undecided => {
                    registry = self
                        .outcome
                        .wait_timeout(registry, deadline - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
            }
        }
    }
}

/// The events one operation through the mount registered; withdrawn when
/// dropped before [`OwnChange::happened`] (the syscall failed).
#[must_use = "call happened() once the syscall succeeded"]
pub struct OwnChange<'c> {
    own: &'c OwnEvents,
    registered: Vec<(EventKey, u64)>,
}

impl OwnChange<'_> {
    /// The syscall succeeded: its events are expected from now on.
    pub fn happened(mut self) {
        let now = Instant::now();
        let mut registry = lock(&self.own.registry);
        for (key, token) in self.registered.drain(..) {
            if let Some(r) = registry
                .by_key
                .get_mut(&key)
                .and_then(|regs| regs.iter_mut().find(|r| r.token == token))
            {
                r.happened_at = Some(now);
            }
        }
        drop(registry);
        self.own.outcome.notify_all();
    }
}

impl Drop for OwnChange<'_> {
    fn drop(&mut self) {
        if self.registered.is_empty() {
            return;
        }
        let mut registry = lock(&self.own.registry);
        for (key, token) in self.registered.drain(..) {
            registry.remove(&key, token);
        }
        drop(registry);
        self.own.outcome.notify_all();
    }
}

/// The object under a name, looked at before a change removes or replaces
/// the name.
#[derive(Clone, Copy, Debug)]
pub struct Child {
    id: InodeId,
    nlink: u64,
    regular: bool,
}

impl Child {
    /// The object now named `name` in `dir`, if the mount ever gave it an id.
    pub fn of(inodes: &InodeTable, dir: &Inode, name: &OsStr) -> Option<Child> {
        let st = rustix::fs::statat(dir.fd().ok()?, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        let id = inodes.known_id(storage::key_of(&st))?;
        Some(Child {
            id,
            nlink: st.st_nlink,
            regular: storage::fmt_of(&st) == libc::S_IFREG,
        })
    }

    /// The object's id.
    pub fn id(&self) -> InodeId {
        self.id
    }

    /// Marks the object's device-view attributes stale, if the kernel holds it.
    pub fn mark_stale(&self, inodes: &InodeTable, stale: &mut Stale) {
        if let Some(inode) = inodes.get(self.id) {
            stale.inode(&inode);
        }
    }
}

/// The coherence protocol's state: the device tier to drop pages from, the
/// kernel to tell, and the events the mount's own operations will cause.
pub struct Coherence {
    tier: Arc<DeviceTier>,
    kernel: KernelNotifier,
    own: OwnEvents,
    /// Whether a watcher reports STORAGE's events (else nothing consumes
    /// registrations, and none are made).
    watched: AtomicBool,
    /// Whether every event of STORAGE has reached [`Self::storage_event`]: a watch that
    /// could not be added or an overflowed queue clears it for good (long cache timeouts
    /// rely on it, `fs.rs` [`crate::fs::CacheTimeout`]).
    sees_all: AtomicBool,
}

impl Coherence {
    /// Coherence over `tier`, with no kernel connection yet.
    pub fn new(tier: Arc<DeviceTier>) -> Self {
        Coherence {
            tier,
            kernel: KernelNotifier::new(),
            own: OwnEvents::new(),
            watched: AtomicBool::new(false),
            sees_all: AtomicBool::new(false),
        }
    }

    /// Starts telling the kernel, through `sink`, what goes stale. Once only.
    pub fn connect(&self, sink: impl NotifySink) -> std::io::Result<()> {
        self.kernel.connect(sink)
    }

    /// A watcher hands STORAGE's events to [`Self::storage_event`] from now
    /// on (called before its first event; own operations register from then).
    pub fn watcher_started(&self, watches_all: bool) {
        self.watched.store(true, Ordering::SeqCst);
        self.sees_all.store(watches_all, Ordering::SeqCst);
    }

    /// The watcher missed events (a directory it could not watch, an overflowed queue):
    /// from now on the kernel caches names and attributes only briefly.
    pub fn watcher_missed(&self) {
        self.sees_all.store(false, Ordering::SeqCst);
    }

    /// Whether a watcher has reported every change of STORAGE so far.
    pub fn sees_all(&self) -> bool {
        self.watched.load(Ordering::SeqCst) && self.sees_all.load(Ordering::SeqCst)
    }

    /// Whether the kernel is told what goes stale (device-view entries and
    /// attributes may be cached only then).
    pub fn is_connected(&self) -> bool {
        self.kernel.is_connected()
    }

    /// The notifier's counters (for stats).
    pub fn notify_counters(&self) -> &NotifyCounters {
        self.kernel.counters()
    }

    // ----- changes through the mount --------------------------------------------

    /// Runs `change`, a modification of `inode`'s data or attributes made
    /// through the mount (see the module docs). The caller drops exactly the
    /// device pages its change covers.
    pub fn changing<T>(&self, inode: &Inode, change: impl FnOnce() -> FsResult<T>) -> FsResult<T> {
        let res = if inode.is_reg() {
            let _in_flight = InFlight::enter(&inode.coherence);
            if let Ok(st) = inode.fd().and_then(storage::stat)
                && self.check(inode, &st) == Seen::Changed
            {
                // The watcher leaves the file to this change, so do its part:
                // the kernel's cached data of both views (pages moments later).
                let mut stale = Stale::new();
                stale.external_data(inode);
                self.kernel.send(stale);
            }
            let res = change();
            self.note_changed_by_us(inode);
            res
        } else {
            change()
        };
        // Even a failed change may have done part of its work (a short write).
        self.device_view_stale(|s| {
            s.inode(inode);
        });
        res
    }

    /// Records the backing file's state after a change made through the
    /// mount, so that the next open keeps the kernel's (already updated) cache.
    pub fn note_changed_by_us(&self, inode: &Inode) {
        if let Ok(st) = inode.fd().and_then(storage::stat) {
            inode.coherence.set_seen(Some(storage::fingerprint(&st)));
        }
    }

    /// Registers the inotify events an operation through the mount is about
    /// to cause, each `(directory, name, event)`. Call before the syscall;
    /// [`OwnChange::happened`] after it succeeded.
    pub fn expect_own(&self, events: &[(&Inode, &OsStr, EntryEvent)]) -> OwnChange<'_> {
        if !self.watched.load(Ordering::SeqCst) {
            return OwnChange {
                own: &self.own,
                registered: Vec::new(),
            };
        }
        let mut registry = lock(&self.own.registry);
        registry.sweep(Instant::now());
        let mut registered = Vec::with_capacity(events.len());
        for (dir, name, event) in events {
            let key = EventKey {
                dir: dir.key,
                name: (*name).to_owned(),
                event: *event,
            };
            let token = registry.next_token;
            registry.next_token += 1;
            registry
                .by_key
                .entry(key.clone())
                .or_default()
                .push(Registration {
                    token,
                    happened_at: None,
                });
            registered.push((key, token));
        }
        OwnChange {
            own: &self.own,
            registered,
        }
    }

    /// The events a rename through the mount causes (`exchange`: both names
    /// move).
    pub fn expect_rename<'a>(
        &'a self,
        from: &Inode,
        name: &OsStr,
        to: &Inode,
        newname: &OsStr,
        exchange: bool,
    ) -> OwnChange<'a> {
        let mut events = vec![
            (from, name, EntryEvent::MovedFrom),
            (to, newname, EntryEvent::MovedTo),
        ];
        if exchange {
            events.push((to, newname, EntryEvent::MovedFrom));
            events.push((from, name, EntryEvent::MovedTo));
        }
        self.expect_own(&events)
    }

    /// After a name was removed or replaced through the mount: a regular file
    /// whose last name went away loses its device pages; one that keeps other
    /// names only changed its link count and ctime.
    pub fn name_gone(&self, inodes: &InodeTable, victim: Option<Child>) {
        let Some(Child {
            id,
            nlink,
            regular: true,
        }) = victim
        else {
            return;
        };
        if nlink <= 1 {
            self.tier
                .invalidate_file(id, InvalidationCause::UnlinkRename);
            // A later file that reuses the inode number starts without it.
            self.tier.set_hint(id, Hint::Normal);
            // Nor may readahead keep the deleted file's space allocated.
            self.tier.cancel_readahead(id);
        } else if let Some(inode) = inodes.get(id) {
            self.note_changed_by_us(&inode);
        }
    }

    /// A file created through the mount (its inode number may be reused):
    /// no device page of an earlier file may serve it.
    pub fn created(&self, inode: &Inode) {
        self.tier
            .invalidate_file(inode.id, InvalidationCause::UnlinkRename);
        self.note_changed_by_us(inode);
    }

    /// Tells the kernel what `mark` finds stale in the device view after a
    /// change through the host view (see `notify.rs`).
    pub fn device_view_stale(&self, mark: impl FnOnce(&mut Stale)) {
        let mut stale = Stale::new();
        mark(&mut stale);
        self.kernel.send(stale);
    }

    // ----- writers the daemon does not see (passthrough) ----------------------

    /// How a device-view read or a prefetch of `inode` reaches its bytes now: through the
    /// tier, unless a passthrough writer is open (then straight from STORAGE).
    pub fn device_access<'a>(&self, inode: &'a Inode) -> DeviceAccess<'a> {
        let state = &inode.coherence;
        // Dekker-style with `writer_behind_opened`: the access announces itself, then looks
        // for a writer; the writer announces itself, then waits for accesses to drain. One
        // of them sees the other.
        state.tier_users.fetch_add(1, Ordering::SeqCst);
        let guard = TierUse(state);
        if state.writers_behind.load(Ordering::SeqCst) > 0 {
            drop(guard);
            return DeviceAccess::Storage;
        }
        DeviceAccess::Tier(guard)
    }

    /// A writable open of `inode` that the kernel serves itself (passthrough) is about to
    /// be answered. Before the answer: from now on device reads go straight to STORAGE;
    /// the tier accesses already running drain; then the file's device pages are dropped,
    /// and fills and readahead in flight discarded (the invalidation sequence). So no
    /// device read that starts after the writer's first write returns can see older bytes.
    pub fn writer_behind_opened(&self, inode: &Inode) {
        let state = &inode.coherence;
        state.writers_behind.fetch_add(1, Ordering::SeqCst);
        let mut g = lock(&DRAINED.0);
        while state.tier_users.load(Ordering::SeqCst) > 0 {
            // The timeout only bounds a wake-up lost to the guard's unlocked fast path.
            g = DRAINED
                .1
                .wait_timeout(g, Duration::from_millis(10))
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
        drop(g);
        self.tier
            .invalidate_file(inode.id, InvalidationCause::Write);
        self.tier.cancel_readahead(inode.id);
        debug!(
            id = inode.id,
            "passthrough writer open: device tier bypassed"
        );
    }

    /// The release of a writable passthrough open of `inode`: the tier may hold the file
    /// again once no such writer is left. Its writes changed the file behind the mount:
    /// the fingerprint is forgotten, so the next open of the host view drops the kernel's
    /// cached data of it (an open keeps it only for a fingerprint it has seen), and the
    /// kernel is told that both views' attributes and the device view's mapped pages are
    /// stale. The pages the tier installs from now on are read after the last write.
    pub fn writer_behind_closed(&self, inode: &Inode) {
        let state = &inode.coherence;
        state.writers_behind.fetch_sub(1, Ordering::SeqCst);
        state.set_seen(None);
        let mut stale = Stale::new();
        stale.external_data(inode);
        self.kernel.send(stale);
    }

    /// Whether a passthrough writer of `inode` is open.
    pub fn has_writer_behind(&self, inode: &Inode) -> bool {
        inode.coherence.writers_behind.load(Ordering::SeqCst) > 0
    }

    // ----- opens ----------------------------------------------------------------

    /// Compares the backing file (`st`, just stat'd) with what the mount last
    /// saw of it; if it changed behind the mount's back, drops its device
    /// pages. Returns whether the kernel's cached data may be kept.
    pub fn revalidate(&self, inode: &Inode, st: &Stat) -> bool {
        self.check(inode, st) == Seen::Unchanged
    }

    /// [`Self::revalidate`], telling what it found.
    fn check(&self, inode: &Inode, st: &Stat) -> Seen {
        let fp = storage::fingerprint(st);
        let found = match inode.coherence.seen() {
            Some(old) if old == fp => Seen::Unchanged,
            Some(_) => Seen::Changed,
            None => Seen::First,
        };
        if found == Seen::Changed {
            self.tier
                .invalidate_file(inode.id, InvalidationCause::External);
        }
        inode.coherence.set_seen(Some(fp));
        found
    }

    // ----- the watcher ------------------------------------------------------------

    /// The watcher's answer to `event` on the name `name` of the watched
    /// directory `dir`: an entry event the mount's own operation caused is
    /// consumed silently (the kernel knows); any other tells the kernel to
    /// drop the name in both views. Then a regular file now under the name
    /// whose data changed behind the mount's back loses its device pages and
    /// the kernel's cached data in both views. Blocks on kernel locks: only
    /// for a thread no FUSE request waits on.
    pub fn storage_event(
        &self,
        inodes: &InodeTable,
        dir: &Inode,
        name: &OsStr,
        event: StorageEvent,
    ) {
        if let StorageEvent::Entry(entry) = event {
            let key = EventKey {
                dir: dir.key,
                name: name.to_owned(),
                event: entry,
            };
            if self.own.consume(&key) {
                return;
            }
            let mut stale = Stale::new();
            stale.external_entry(dir, name);
            self.kernel.send_now(stale);
        }
        let Some(child) = Child::of(inodes, dir, name) else {
            return;
        };
        let Some(inode) = inodes.get(child.id) else {
            return;
        };
        if event == StorageEvent::Attributes && !inode.is_reg() {
            let mut stale = Stale::new();
            stale.external_data(&inode);
            self.kernel.send_now(stale);
        } else {
            self.external_data_check(&inode, name);
        }
    }

    /// Drops what caches hold of `inode` if its data changed behind the
    /// mount's back, then records what was seen (module docs).
    fn external_data_check(&self, inode: &Inode, name: &OsStr) {
        if !inode.is_reg() || inode.coherence.in_flight() {
            return;
        }
        let Ok(st) = inode.fd().and_then(storage::stat) else {
            return;
        };
        let fp = storage::fingerprint(&st);
        if inode.coherence.seen() == Some(fp) {
            return;
        }
        debug!(id = inode.id, ?name, "external change");
        self.tier
            .invalidate_file(inode.id, InvalidationCause::External);
        let mut stale = Stale::new();
        stale.external_data(inode);
        self.kernel.send_now(stale);
        inode.coherence.set_seen(Some(fp));
    }
}

#[cfg(test)]
mod tests {
    //! The protocol without a mount: a real small tier, real backing files in a
    //! temp directory, the inode table, and a sink that records what the kernel
    //! would be told. Watcher events are handed in as inotify would report them.

    use super::*;
    use crate::errno::Errno;
    use crate::inode::{View, encode};
    use crate::tier::{FillSource, TierConfig};
    use std::fs::{self, File};
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;

    /// Records every notification as text: `entry PARENT NAME`, `attrs INO`, `pages INO`,
    /// and whether the notification thread wrote it (pages a worker queued).
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<(bool, String)>>>);

    impl Recorder {
        fn push(&self, what: String) {
            let queued = std::thread::current().name() == Some("kernel-notify");
            lock(&self.0).push((queued, what));
        }
        /// Everything recorded since the last take.
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *lock(&self.0))
                .into_iter()
                .map(|(_, what)| what)
                .collect()
        }
        /// What callers wrote themselves since the last take (the watcher writes all it
        /// tells itself); what the notification thread wrote is dropped.
        fn take_written_by_callers(&self) -> Vec<String> {
            std::mem::take(&mut *lock(&self.0))
                .into_iter()
                .filter(|(queued, _)| !queued)
                .map(|(_, what)| what)
                .collect()
        }
    }

    impl NotifySink for Recorder {
        fn inval_entry(&self, parent: u64, name: &OsStr) -> std::io::Result<()> {
            self.push(format!("entry {parent} {}", name.to_string_lossy()));
            Ok(())
        }
        fn inval_attrs(&self, ino: u64) -> std::io::Result<()> {
            self.push(format!("attrs {ino}"));
            Ok(())
        }
        fn inval_pages(&self, ino: u64) -> std::io::Result<()> {
            self.push(format!("pages {ino}"));
            Ok(())
        }
    }

    /// Fills the tier from a backing file.
    struct FileSource(File);

    impl FillSource for FileSource {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            storage::pread_full(self.0.as_fd(), buf, offset)
        }
    }

    /// Size of `f` at the start: two device pages.
    const F_SIZE: usize = 8192;

    struct Fixture {
        dir: tempfile::TempDir,
        inodes: InodeTable,
        tier: Arc<DeviceTier>,
        coh: Coherence,
        rec: Recorder,
        root: Arc<Inode>,
        /// The regular file `f`, live in the table.
        f: Arc<Inode>,
        f_view: View,
    }

    impl Fixture {
        /// STORAGE with one file `f`, looked up through `view`.
        fn new(f_view: View) -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("f"), vec![b'a'; F_SIZE]).unwrap();
            let root_fd = storage::open_root(dir.path()).unwrap();
            let root_key = storage::key_of(&storage::stat(&root_fd).unwrap());
            let inodes = InodeTable::new(root_key, root_fd);
            let root = inodes.get(crate::inode::ROOT_ID).unwrap();
            let tier = Arc::new(
                DeviceTier::new(TierConfig {
                    capacity: 2 << 20,
                    huge_pages: false,
                })
                .unwrap(),
            );
            let coh = Coherence::new(tier.clone());
            coh.watcher_started(true);
            let rec = Recorder::default();
            coh.connect(rec.clone()).unwrap();
            let f = Self::look_up(&inodes, &root, "f", f_view);
            assert_eq!(f.id, inodes.id_of(f.key));
            Fixture {
                dir,
                inodes,
                tier,
                coh,
                rec,
                root,
                f,
                f_view,
            }
        }

        fn look_up(inodes: &InodeTable, dir: &Inode, name: &str, view: View) -> Arc<Inode> {
            let (fd, st) =
                storage::open_child(dir.fd().unwrap().as_fd(), OsStr::new(name)).unwrap();
            inodes.lookup_ref(storage::key_of(&st), storage::fmt_of(&st), fd, view)
        }

        /// FUSE inode numbers of the file `f` in the host and the device view.
        fn f_inos(&self) -> [u64; 2] {
            [
                encode(self.f.id, View::Host),
                encode(self.f.id, View::Device),
            ]
        }

        /// `told` with `f`'s inode numbers written `F_HOST` and `F_DEVICE`.
        fn symbolic(&self, told: &str) -> String {
            let [host, device] = self.f_inos().map(|i| i.to_string());
            told.split(' ')
                .map(|word| match word {
                    w if w == host => "F_HOST",
                    w if w == device => "F_DEVICE",
                    w => w,
                })
                .collect::<Vec<_>>()
                .join(" ")
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Device pages dropped because STORAGE changed behind the mount's back.
        fn external_drops(&self) -> u64 {
            self.tier.stats().invalidations.external
        }

        fn open(&self) -> bool {
            self.coh
                .revalidate(&self.f, &storage::stat(self.f.fd().unwrap()).unwrap())
        }

        fn fill(&self) {
            let size = storage::stat(self.f.fd().unwrap()).unwrap().st_size as u64;
            let src = FileSource(File::open(self.path("f")).unwrap());
            let got = self.tier.prefetch(self.f.id, size, 0, size, &src).unwrap();
            assert!(got.faulted_bytes + got.already_resident_bytes > 0);
        }

        /// A write through the mount: overwrites the first byte, under the change guard.
        fn our_write(&self, during: impl FnOnce()) {
            self.coh
                .changing(&self.f, || {
                    let file = File::options().write(true).open(self.path("f"))?;
                    file.write_all_at(b"x", 0)?;
                    during();
                    Ok::<_, Errno>(())
                })
                .unwrap();
        }

        /// A write straight to STORAGE: appends a byte (size and times change).
        fn external_write(&self) {
            let file = File::options().append(true).open(self.path("f")).unwrap();
            file.write_all_at(b"z", 0).unwrap();
        }

        fn event(&self, event: StorageEvent, name: &str) {
            self.coh
                .storage_event(&self.inodes, &self.root, OsStr::new(name), event);
        }

        fn forget_and_look_up(&mut self) {
            assert!(self.inodes.forget(self.f.id, 1, self.f_view).is_some());
            self.f = Self::look_up(&self.inodes, &self.root, "f", self.f_view);
        }

        /// mkdir through the mount, with its event registered first.
        fn our_mkdir(&self, name: &str) -> std::io::Result<()> {
            let own = self
                .coh
                .expect_own(&[(&self.root, OsStr::new(name), EntryEvent::Created)]);
            fs::create_dir(self.path(name))?;
            own.happened();
            Ok(())
        }

        fn our_rename(&self, from: &str, to: &str) {
            let own = self.coh.expect_rename(
                &self.root,
                OsStr::new(from),
                &self.root,
                OsStr::new(to),
                false,
            );
            fs::rename(self.path(from), self.path(to)).unwrap();
            own.happened();
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// A host-view open of `f`, and whether it may keep the kernel's cache.
        Open {
            keep: bool,
        },
        /// Device pages of all of `f`.
        Fill,
        OurWrite,
        ExternalWrite,
        /// A write through the mount during which the watcher handles a data event of `f`.
        OurWriteMeetingEvent,
        /// The watcher handles `event` on the name in the root.
        Event(StorageEvent, &'static str),
        OurMkdir(&'static str),
        /// mkdir through the mount that fails (the name exists).
        OurMkdirFails(&'static str),
        ExternalMkdir(&'static str),
        ExternalRmdir(&'static str),
        OurRename(&'static str, &'static str),
        ExternalRename(&'static str, &'static str),
        /// The kernel forgets `f` and looks it up again.
        Forget,
    }

    use EntryEvent::*;
    use Step::*;
    use StorageEvent::{Data, Entry};

    struct Case {
        name: &'static str,
        /// `f` is looked up through the device view (else the host view only).
        device_view: bool,
        steps: &'static [Step],
        /// Device pages dropped as external changes, in all.
        external_drops: u64,
        /// Everything the watcher told the kernel, in order.
        watcher_told: &'static [&'static str],
    }

    const CASES: &[Case] = &[
        Case {
            name: "our write then its MODIFY: nothing dropped, nothing told",
            device_view: false,
            steps: &[
                Open { keep: false },
                Fill,
                OurWrite,
                Event(Data, "f"),
                Open { keep: true },
            ],
            external_drops: 0,
            watcher_told: &[],
        },
        Case {
            name: "external write then MODIFY: device pages and both views' data",
            device_view: true,
            steps: &[Open { keep: false }, Fill, ExternalWrite, Event(Data, "f")],
            external_drops: 2,
            watcher_told: &["pages F_HOST", "pages F_DEVICE"],
        },
        Case {
            name: "a file the device view does not hold: host view only",
            device_view: false,
            steps: &[Open { keep: false }, Fill, ExternalWrite, Event(Data, "f")],
            external_drops: 2,
            watcher_told: &["pages F_HOST"],
        },
        Case {
            name: "the watcher records what it dropped for: the next open keeps, drops nothing",
            device_view: false,
            steps: &[
                Open { keep: false },
                Fill,
                ExternalWrite,
                Event(Data, "f"),
                Fill,
                Open { keep: true },
                Event(Data, "f"),
            ],
            external_drops: 2,
            watcher_told: &["pages F_HOST"],
        },
        Case {
            name: "open after an external change, before its event: the open drops, the event finds nothing",
            device_view: false,
            steps: &[
                Open { keep: false },
                Fill,
                ExternalWrite,
                Open { keep: false },
                Event(Data, "f"),
            ],
            external_drops: 2,
            watcher_told: &[],
        },
        Case {
            name: "external change met by our write: the watcher leaves it, the write's guard drops",
            device_view: false,
            steps: &[
                Open { keep: false },
                Fill,
                ExternalWrite,
                OurWriteMeetingEvent,
                Open { keep: true },
            ],
            external_drops: 2,
            watcher_told: &[],
        },
        Case {
            name: "forget keeps what was seen: unchanged file kept after re-lookup",
            device_view: false,
            steps: &[Open { keep: false }, Fill, Forget, Open { keep: true }],
            external_drops: 0,
            watcher_told: &[],
        },
        Case {
            name: "forget keeps what was seen: changed file dropped after re-lookup",
            device_view: false,
            steps: &[
                Open { keep: false },
                Fill,
                Forget,
                ExternalWrite,
                Open { keep: false },
            ],
            external_drops: 2,
            watcher_told: &[],
        },
        Case {
            name: "our mkdir then its CREATE: the kernel is not told again",
            device_view: false,
            steps: &[OurMkdir("d"), Event(Entry(Created), "d")],
            external_drops: 0,
            watcher_told: &[],
        },
        Case {
            name: "external mkdir: both views' entries",
            device_view: false,
            steps: &[ExternalMkdir("d"), Event(Entry(Created), "d")],
            external_drops: 0,
            watcher_told: &["entry 1 d", "entry 2 d"],
        },
        Case {
            name: "a registration is consumed once: external rmdir and mkdir after ours are told",
            device_view: false,
            steps: &[
                OurMkdir("d"),
                ExternalRmdir("d"),
                ExternalMkdir("d"),
                Event(Entry(Created), "d"),
                Event(Entry(Deleted), "d"),
                Event(Entry(Created), "d"),
            ],
            external_drops: 0,
            watcher_told: &["entry 1 d", "entry 2 d", "entry 1 d", "entry 2 d"],
        },
        Case {
            name: "the event kind must match: our mkdir does not hide an external delete",
            device_view: false,
            steps: &[
                OurMkdir("d"),
                ExternalRmdir("d"),
                Event(Entry(Deleted), "d"),
            ],
            external_drops: 0,
            watcher_told: &["entry 1 d", "entry 2 d"],
        },
        Case {
            name: "a failed mkdir withdraws its registration: the external one is told",
            device_view: false,
            steps: &[
                ExternalMkdir("d"),
                OurMkdirFails("d"),
                Event(Entry(Created), "d"),
            ],
            external_drops: 0,
            watcher_told: &["entry 1 d", "entry 2 d"],
        },
        Case {
            name: "our rename: neither MOVED_FROM nor MOVED_TO told, nor the moved file dropped",
            device_view: true,
            steps: &[
                Open { keep: false },
                Fill,
                OurRename("f", "g"),
                Event(Entry(MovedFrom), "f"),
                Event(Entry(MovedTo), "g"),
            ],
            external_drops: 0,
            watcher_told: &[],
        },
        Case {
            name: "external rename: both names in both views, and the moved file's data (its ctime changed)",
            device_view: false,
            steps: &[
                Open { keep: false },
                ExternalRename("f", "g"),
                Event(Entry(MovedFrom), "f"),
                Event(Entry(MovedTo), "g"),
            ],
            external_drops: 0,
            watcher_told: &[
                "entry 1 f",
                "entry 2 f",
                "entry 1 g",
                "entry 2 g",
                "pages F_HOST",
            ],
        },
    ];

    fn run(case: &Case) -> (u64, Vec<String>) {
        let view = if case.device_view {
            View::Device
        } else {
            View::Host
        };
        let mut fx = Fixture::new(view);
        let mut told = Vec::new();
        for (i, step) in case.steps.iter().enumerate() {
            match *step {
                Open { keep } => assert_eq!(fx.open(), keep, "{}: step {i} {step:?}", case.name),
                Fill => fx.fill(),
                OurWrite => fx.our_write(|| {}),
                ExternalWrite => fx.external_write(),
                OurWriteMeetingEvent => {
                    fx.our_write(|| {
                        fx.rec.take();
                        fx.event(Data, "f");
                        told.extend(fx.rec.take_written_by_callers());
                    });
                }
                Event(event, name) => {
                    fx.rec.take();
                    fx.event(event, name);
                    told.extend(fx.rec.take_written_by_callers());
                }
                OurMkdir(name) => fx.our_mkdir(name).unwrap(),
                OurMkdirFails(name) => assert!(fx.our_mkdir(name).is_err()),
                ExternalMkdir(name) => fs::create_dir(fx.path(name)).unwrap(),
                ExternalRmdir(name) => fs::remove_dir(fx.path(name)).unwrap(),
                OurRename(from, to) => fx.our_rename(from, to),
                ExternalRename(from, to) => fs::rename(fx.path(from), fx.path(to)).unwrap(),
                Forget => fx.forget_and_look_up(),
            }
        }
        let told = told.into_iter().map(|t| fx.symbolic(&t)).collect();
        (fx.external_drops(), told)
    }

    #[test]
    fn event_sequences() {
        let mut wrong = Vec::new();
        for case in CASES {
            let (drops, told) = run(case);
            if drops != case.external_drops || told != case.watcher_told {
                wrong.push(format!(
                    "{}: dropped {drops} (want {}), told {told:?} (want {:?})",
                    case.name, case.external_drops, case.watcher_told
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_write_after_an_unseen_external_change_drops_the_kernels_data() {
        // The watcher leaves a file to a write in flight, so the write's guard does its part.
        let fx = Fixture::new(View::Device);
        fx.open();
        fx.fill();
        fx.external_write();
        fx.rec.take();
        fx.our_write(|| {});
        assert_eq!(fx.external_drops(), 2);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let told: Vec<String> = lock(&fx.rec.0).iter().map(|(_, w)| w.clone()).collect();
            if fx
                .f_inos()
                .iter()
                .all(|ino| told.contains(&format!("pages {ino}")))
            {
                break;
            }
            assert!(Instant::now() < deadline, "pages never dropped: {told:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_writer_behind_the_daemon_keeps_the_tier_out_of_the_file_until_it_closes() {
        let fx = Fixture::new(View::Device);
        assert!(!fx.open(), "first open");
        fx.fill();
        assert!(fx.tier.residency(fx.f.id).resident_bytes > 0);
        // A device read that started before the writer: it must drain before the drop.
        let early = fx.coh.device_access(&fx.f);
        assert!(matches!(early, DeviceAccess::Tier(_)));
        std::thread::scope(|s| {
            let opening = s.spawn(|| fx.coh.writer_behind_opened(&fx.f));
            // The writer's open waits for the early access (polled: the open must not
            // finish while it runs, and must once it ends).
            let deadline = Instant::now() + Duration::from_secs(10);
            while !fx.coh.has_writer_behind(&fx.f) {
                assert!(
                    Instant::now() < deadline,
                    "the writer never marked the file"
                );
                std::thread::yield_now();
            }
            assert!(
                !opening.is_finished(),
                "the open did not wait for the running access"
            );
            assert!(matches!(fx.coh.device_access(&fx.f), DeviceAccess::Storage));
            drop(early);
            opening.join().unwrap();
        });
        assert_eq!(fx.tier.residency(fx.f.id).resident_bytes, 0, "pages kept");
        assert!(matches!(fx.coh.device_access(&fx.f), DeviceAccess::Storage));
        // The writer writes behind the daemon, then closes.
        fs::write(fx.path("f"), vec![b'b'; F_SIZE]).unwrap();
        fx.rec.take();
        fx.coh.writer_behind_closed(&fx.f);
        assert!(!fx.coh.has_writer_behind(&fx.f));
        assert!(matches!(fx.coh.device_access(&fx.f), DeviceAccess::Tier(_)));
        let told = fx.rec.take_written_by_callers();
        for ino in fx.f_inos() {
            assert!(told.contains(&format!("attrs {ino}")), "{told:?}");
        }
        // The next open keeps no cached data of the file.
        assert!(
            !fx.open(),
            "an open kept the kernel's data after a writer behind"
        );
        assert!(fx.open());
    }

    #[test]
    fn an_event_meeting_a_running_own_operation_waits_for_its_outcome() {
        for succeeds in [true, false] {
            let fx = Fixture::new(View::Host);
            let own = fx
                .coh
                .expect_own(&[(&fx.root, OsStr::new("d"), EntryEvent::Created)]);
            fs::create_dir(fx.path("d")).unwrap();
            std::thread::scope(|s| {
                let watcher = s.spawn(|| fx.event(Entry(Created), "d"));
                // The watcher must wait (up to OUTCOME_WAIT) while the operation has not
                // returned. Not a synchronisation: the pause only gives a watcher that
                // decided early the time to be caught; a correct one passes either way.
                std::thread::sleep(Duration::from_millis(20));
                assert!(fx.rec.take().is_empty(), "decided before the outcome");
                if succeeds {
                    own.happened();
                } else {
                    drop(own); // the syscall failed: the CREATE was someone else's
                }
                watcher.join().unwrap();
            });
            let want: &[&str] = if succeeds {
                &[]
            } else {
                &["entry 1 d", "entry 2 d"]
            };
            assert_eq!(fx.rec.take(), want, "own operation succeeded: {succeeds}");
        }
    }

    #[test]
    fn without_a_watcher_nothing_is_registered() {
        let fx = Fixture::new(View::Host);
        let unwatched = Coherence::new(fx.tier.clone());
        let own = unwatched.expect_own(&[(&fx.root, OsStr::new("d"), EntryEvent::Created)]);
        own.happened();
        assert!(lock(&unwatched.own.registry).by_key.is_empty());
    }

    #[test]
    fn registrations_expire_after_the_ttl() {
        let fx = Fixture::new(View::Host);
        fx.our_mkdir("d").unwrap();
        let key = EventKey {
            dir: fx.root.key,
            name: "d".into(),
            event: EntryEvent::Created,
        };
        let later = Instant::now() + OWN_EVENT_TTL + Duration::from_secs(1);
        let mut registry = lock(&fx.coh.own.registry);
        assert!(matches!(
            OwnEvents::find(&mut registry, &key, later),
            Match::External
        ));
        registry.sweep(later);
        assert!(registry.by_key.is_empty(), "{:?}", registry.by_key);
    }

    #[test]
    fn changes_through_the_mount_tell_the_device_view_only_what_it_holds() {
        let fx = Fixture::new(View::Device);
        fx.open();
        fx.rec.take();
        fx.our_write(|| {});
        assert_eq!(
            fx.rec.take().first().map(|t| fx.symbolic(t)).as_deref(),
            Some("attrs F_DEVICE")
        );
        let host_only = Fixture::new(View::Host);
        host_only.open();
        host_only.our_write(|| {});
        assert_eq!(host_only.rec.take(), Vec::<String>::new());
    }
}
