//! I/O modes of FUSE inodes: which opens the kernel serves itself (passthrough) and which the
//! daemon serves, per FUSE inode.
//!
//! The kernel keeps one I/O mode per FUSE inode: while any open of an inode is in passthrough
//! mode, every other open of it must be answered with passthrough too, naming the same backing
//! registration (else that open fails with `EIO`); while a daemon-served open that may use the
//! page cache exists, a passthrough open fails. The host view (`2n+1`) and the device view
//! (`2n+2`) are different FUSE inodes, so their modes never meet; the table is keyed by FUSE
//! inode number so that either view can use it.
//!
//! [`IoModes::open`] chooses the mode of one open and takes it; [`IoModes::release`] gives it
//! back at that open's RELEASE. The choice: a read-only open of an inode with no cached open
//! is passthrough when allowed (the first registers the backing file; later ones reuse its
//! registration); any open of an inode in passthrough mode joins it, writable ones included;
//! every other open is daemon-served (cached).
//!
//! Idle registrations: the last release of a host-view inode in passthrough mode keeps its
//! registration, idle, and the next read-only open of that inode names it again instead of
//! registering a new one (two `ioctl`s, about 12% of the daemon's time in a small-file epoch,
//! saved per open). [`IoModes::open_registered`] takes such an open only when the inode has a
//! registration to name (its passthrough mode or an idle one), deciding under the table lock,
//! so that the caller can skip opening the STORAGE file for it. An idle registration holds
//! the STORAGE file open in the kernel (a few hundred bytes of kernel memory, and an unlinked
//! file's space) but no descriptor of the daemon's and no mode: the kernel's mode counts open
//! files only. It goes when the kernel forgets the inode ([`IoModes::forget`], which an
//! unlink or a replace behind the mount leads to once the watcher invalidates the name), when
//! passthrough goes off, or when more than [`MAX_IDLE_REGISTRATIONS`] are idle (any one then:
//! it only bounds kernel memory).
//! An idle registration is kept as the kernel's id of it alone ([`IdleIds`]: the adapter
//! hands the id over and closes it when it goes): 16 bytes in the idle map, no allocation
//! (as a token with its allocation it cost about 100 bytes per known inode, a third of the
//! daemon's memory per inode at a million files). The map shrinks once mostly empty and
//! gives the heap back, so the daemon falls back to its idle size after the kernel forgets.
//! With no [`IdleIds`] set, none is kept. The device view keeps none here: its registrations
//! belong to its exports (`tier/export.rs`), which park idle ones through the same
//! [`IdleIds`].
//!
//! Invariants:
//! - a mode is held from the open's reply until that open's RELEASE. The kernel leaves it
//!   earlier (at the last close), so the table may say more than the kernel holds, never
//!   less, and every answer it gives stays valid: it never answers cached while the kernel
//!   may hold passthrough, nor passthrough while it may hold cached.
//! - a record exists exactly while it counts opens: `Cached` counts daemon-served ones,
//!   `Passthrough` counts passthrough ones and holds the inode's one backing registration
//!   until the last of them is released (dropping the token unregisters it).
//! - a registration is made under the table lock, so two first opens of one inode cannot
//!   register two backing files; the token of a released record is dropped after the lock.
//!
//! Lock order: the table lock is a leaf.

use std::any::Any;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::heap::{release_free_memory, shrink_if_sparse};
use crate::lock::lock;

/// The kernel's registration of a backing file (the adapter's `fuser::BackingId`, which this
/// module never looks into). Dropping the last clone unregisters it.
pub type BackingToken = Arc<dyn Any + Send + Sync>;

/// Whether passthrough is in force for the mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassthroughMode {
    /// Read-only host-view opens are served by the kernel.
    On,
    /// Every open is served by the daemon (`--passthrough off`, or the kernel or the
    /// privileges do not allow it).
    #[default]
    Off,
}

impl PassthroughMode {
    pub fn name(self) -> &'static str {
        match self {
            PassthroughMode::On => "on",
            PassthroughMode::Off => "off",
        }
    }
}

/// What an open's `register` closure is asked for.
#[derive(Debug)]
pub enum Registration<'a> {
    /// Register this descriptor as the inode's backing file.
    New(std::os::fd::BorrowedFd<'a>),
    /// A token for the inode's idle registration, given as the kernel's id of it
    /// ([`IdleIds`]).
    Idle(u32),
}

/// The mode one open took, to give back at its release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Served by the daemon.
    Cached,
    /// Served by the kernel, reading only.
    PassthroughReader,
    /// Served by the kernel, writing: its writes reach STORAGE without the daemon.
    PassthroughWriter,
}

/// What [`IoModes::open`] chose for one open.
pub struct Chosen {
    /// The mode taken (give it back with [`IoModes::release`]).
    pub held: Held,
    /// For a passthrough open: the registration to name in the reply.
    pub backing: Option<BackingToken>,
    /// The registration this open tried failed (it is daemon-served instead).
    pub registration_failed: Option<io::Error>,
}

/// One inode's mode.
enum IoMode {
    /// Daemon-served opens.
    Cached { opens: u64 },
    /// Passthrough opens, of which `writers` are writable, and their one registration.
    Passthrough {
        opens: u64,
        writers: u64,
        backing: BackingToken,
    },
}

/// Most idle registrations kept (module docs): bounded like the device view's idle exports.
pub const MAX_IDLE_REGISTRATIONS: usize = 1 << 20;

/// Capacity of an emptied idle map worth giving back at once (a map that held a handful
/// is not: trimming the heap on every forget would cost more than it returns).
const EMPTIED_TRIM_MIN: usize = 1024;

/// Passthrough opens since the mount (for stats).
#[derive(Debug, Default)]
pub struct IoModeCounters {
    /// Passthrough opens that named an idle registration instead of registering.
    pub idle_reuses: AtomicU64,
    /// Opens answered with passthrough.
    pub passthrough_opens: AtomicU64,
    /// Of these, writable ones.
    pub writer_opens: AtomicU64,
    /// Registrations that failed (those opens were daemon-served).
    pub registration_failures: AtomicU64,
}

/// Idle registrations as the kernel's ids (module docs): only the adapter knows what a
/// [`BackingToken`] is, so it turns one into its id and closes ids. An open that names an
/// idle id again gets a token for it from its `register` closure (`Some(id)`).
pub trait IdleIds: Send + Sync {
    /// The kernel's id of `token`, handed over: the registration stays until
    /// [`IdleIds::close`]. The token comes back if another clone of it is alive.
    fn hand_over(&self, token: BackingToken) -> Result<u32, BackingToken>;
    /// Unregisters an id from [`IdleIds::hand_over`] (errors are the adapter's to log).
    fn close(&self, id: u32);
}

/// The modes and the idle registrations, under one lock.
struct Table {
    modes: HashMap<u64, IoMode>,
    /// Idle registrations (the kernel's ids) of host-view inodes with no open (at most
    /// `idle_capacity`).
    idle: HashMap<u64, u32>,
}

/// The mode of every FUSE inode with an open file.
pub struct IoModes {
    table: Mutex<Table>,
    idle_capacity: usize,
    /// Set once the session exists; until then no registration is kept idle.
    ids: OnceLock<Arc<dyn IdleIds>>,
    counters: IoModeCounters,
}

impl Default for IoModes {
    fn default() -> Self {
        Self::with_idle_capacity(MAX_IDLE_REGISTRATIONS)
    }
}

impl IoModes {
    pub fn new() -> Self {
        Self::default()
    }

    /// A table keeping at most `idle_capacity` idle registrations (0: none).
    pub fn with_idle_capacity(idle_capacity: usize) -> Self {
        IoModes {
            table: Mutex::new(Table {
                modes: HashMap::new(),
                idle: HashMap::new(),
            }),
            idle_capacity,
            ids: OnceLock::new(),
            counters: IoModeCounters::default(),
        }
    }

    /// Lets idle registrations be kept, as ids (once; later calls are ignored).
    pub fn set_idle_ids(&self, ids: Arc<dyn IdleIds>) {
        let _ = self.ids.set(ids);
    }

    /// Closes idle ids (after the table lock).
    fn close_ids(&self, ids: impl IntoIterator<Item = u32>) {
        if let Some(c) = self.ids.get() {
            for id in ids {
                c.close(id);
            }
        }
    }

    /// Chooses and takes the mode of one open of FUSE inode `ino` (module docs).
    /// `passthrough_allowed`: a read-only open of an inode with no open may start
    /// passthrough; `register` makes the backing registration for it (`None`), or a token
    /// for the inode's idle registration (`Some(id)`, the kernel's id). Never registers for
    /// a writable open, and never fails: a failed registration leaves the open cached.
    pub fn open(
        &self,
        ino: u64,
        writable: bool,
        passthrough_allowed: bool,
        register: impl FnOnce(Option<u32>) -> io::Result<BackingToken>,
    ) -> Chosen {
        let mut table = lock(&self.table);
        let (chosen, reused) = choose(&mut table, ino, writable, passthrough_allowed, register);
        drop(table);
        self.count(chosen, reused)
    }

    /// [`Self::open`] of a read-only open with passthrough allowed, taken only if it needs
    /// no new registration: the inode is in passthrough mode (the open joins it) or keeps an
    /// idle registration (`register` gets its id). `None`, with no mode taken, otherwise: the
    /// caller then opens the file and calls [`Self::open`]. Decided and taken under one lock,
    /// so the registration cannot go in between.
    pub fn open_registered(
        &self,
        ino: u64,
        register: impl FnOnce(Option<u32>) -> io::Result<BackingToken>,
    ) -> Option<Chosen> {
        let mut table = lock(&self.table);
        let registered = match table.modes.get(&ino) {
            Some(IoMode::Passthrough { .. }) => true,
            Some(IoMode::Cached { .. }) => false,
            None => table.idle.contains_key(&ino),
        };
        if !registered {
            return None;
        }
        let (chosen, reused) = choose(&mut table, ino, false, true, register);
        drop(table);
        Some(self.count(chosen, reused))
    }

    /// Counts an open's choice.
    fn count(&self, chosen: Chosen, reused: bool) -> Chosen {
        let c = &self.counters;
        if reused {
            c.idle_reuses.fetch_add(1, Ordering::Relaxed);
        }
        match chosen.held {
            Held::PassthroughReader => c.passthrough_opens.fetch_add(1, Ordering::Relaxed),
            Held::PassthroughWriter => {
                c.writer_opens.fetch_add(1, Ordering::Relaxed);
                c.passthrough_opens.fetch_add(1, Ordering::Relaxed)
            }
            Held::Cached if chosen.registration_failed.is_some() => {
                c.registration_failures.fetch_add(1, Ordering::Relaxed)
            }
            Held::Cached => 0,
        };
        chosen
    }

    /// Gives back the mode `held` of one open of `ino` (at its RELEASE). The last
    /// passthrough open's release keeps the registration idle with `keep_idle` (module
    /// docs), else unregisters the backing file (after the table lock).
    pub fn release(&self, ino: u64, held: Held, keep_idle: bool) {
        let mut table = lock(&self.table);
        let Table { modes, idle } = &mut *table;
        let Entry::Occupied(mut e) = modes.entry(ino) else {
            debug_assert!(false, "release of inode {ino} with no mode");
            return;
        };
        let last = match (e.get_mut(), held) {
            (IoMode::Cached { opens }, Held::Cached) => {
                *opens -= 1;
                *opens == 0
            }
            (IoMode::Passthrough { opens, writers, .. }, Held::PassthroughReader)
            | (IoMode::Passthrough { opens, writers, .. }, Held::PassthroughWriter) => {
                *opens -= 1;
                *writers -= u64::from(held == Held::PassthroughWriter);
                *opens == 0
            }
            _ => {
                debug_assert!(
                    false,
                    "release of inode {ino} in another mode than {held:?}"
                );
                false
            }
        };
        let mut gone = last.then(|| e.remove());
        let (mut evicted, mut replaced, mut shared) = (None, None, None);
        if keep_idle
            && self.idle_capacity > 0
            && let Some(ids) = self.ids.get()
            && let Some(IoMode::Passthrough { backing, .. }) = gone.take()
        {
            match ids.hand_over(backing) {
                Ok(id) => {
                    if idle.len() >= self.idle_capacity
                        && let Some(&any) = idle.keys().next()
                    {
                        evicted = idle.remove(&any);
                    }
                    // None: an inode with an open has no idle registration.
                    replaced = idle.insert(ino, id);
                }
                // Another clone is alive: it unregisters when it goes.
                Err(token) => shared = Some(token),
            }
        }
        drop(table);
        drop((gone, shared));
        self.close_ids(evicted.into_iter().chain(replaced));
    }

    /// The kernel forgot FUSE inode `ino`: its idle registration goes (after the lock).
    pub fn forget(&self, ino: u64) {
        let mut table = lock(&self.table);
        let Some(gone) = table.idle.remove(&ino) else {
            return;
        };
        // The last one of many gives the map's slots back too (shrinking stops at a few
        // thousand); either way the heap is trimmed after the frees.
        let emptied = table.idle.is_empty() && table.idle.capacity() >= EMPTIED_TRIM_MIN;
        if emptied {
            table.idle.shrink_to(0);
        }
        let shrunk = shrink_if_sparse(&mut table.idle);
        drop(table);
        self.close_ids([gone]);
        if shrunk || emptied {
            release_free_memory();
        }
    }

    /// Drops every idle registration (passthrough went off).
    pub fn drop_idle(&self) {
        let gone = std::mem::take(&mut lock(&self.table).idle);
        self.close_ids(gone.into_values());
        release_free_memory();
    }

    /// Idle registrations kept now.
    pub fn idle_count(&self) -> usize {
        lock(&self.table).idle.len()
    }

    /// The counters since the mount.
    pub fn counters(&self) -> &IoModeCounters {
        &self.counters
    }

    #[cfg(test)]
    /// `(passthrough opens, writable ones)` held now on `ino`, or None when it is not in
    /// passthrough mode (for tests and checks).
    pub fn passthrough_opens(&self, ino: u64) -> Option<(u64, u64)> {
        match lock(&self.table).modes.get(&ino) {
            Some(IoMode::Passthrough { opens, writers, .. }) => Some((*opens, *writers)),
            _ => None,
        }
    }

    #[cfg(test)]
    /// Inodes with a mode now (every one has an open).
    pub fn len(&self) -> usize {
        lock(&self.table).modes.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The choice of [`IoModes::open`] under the table lock: the mode taken, and whether it
/// named an idle registration.
fn choose(
    table: &mut Table,
    ino: u64,
    writable: bool,
    passthrough_allowed: bool,
    register: impl FnOnce(Option<u32>) -> io::Result<BackingToken>,
) -> (Chosen, bool) {
    let Table { modes, idle } = table;
    let mut reused = false;
    let chosen = match modes.entry(ino) {
        Entry::Occupied(mut e) => match e.get_mut() {
            IoMode::Cached { opens } => {
                *opens += 1;
                cached()
            }
            IoMode::Passthrough {
                opens,
                writers,
                backing,
            } => {
                *opens += 1;
                *writers += u64::from(writable);
                passthrough(writable, backing.clone())
            }
        },
        Entry::Vacant(e) if !writable && passthrough_allowed => {
            match register(idle.remove(&ino).inspect(|_| reused = true)) {
                Ok(backing) => {
                    e.insert(IoMode::Passthrough {
                        opens: 1,
                        writers: 0,
                        backing: backing.clone(),
                    });
                    passthrough(false, backing)
                }
                Err(err) => {
                    e.insert(IoMode::Cached { opens: 1 });
                    Chosen {
                        registration_failed: Some(err),
                        ..cached()
                    }
                }
            }
        }
        Entry::Vacant(e) => {
            e.insert(IoMode::Cached { opens: 1 });
            cached()
        }
    };
    (chosen, reused)
}

fn cached() -> Chosen {
    Chosen {
        held: Held::Cached,
        backing: None,
        registration_failed: None,
    }
}

fn passthrough(writable: bool, backing: BackingToken) -> Chosen {
    Chosen {
        held: if writable {
            Held::PassthroughWriter
        } else {
            Held::PassthroughReader
        },
        backing: Some(backing),
        registration_failed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A registration that counts how many of its kind are alive.
    struct Reg(Arc<AtomicUsize>);
    impl Drop for Reg {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Idle registrations of every test table, by id (ids are unique in the process).
    static PARKED: Mutex<Option<HashMap<u32, Reg>>> = Mutex::new(None);
    static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

    /// The tests' [`IdleIds`]: a parked `Reg` stays alive until closed or named again.
    struct TestIds;
    impl IdleIds for TestIds {
        fn hand_over(&self, token: BackingToken) -> Result<u32, BackingToken> {
            let reg = token.downcast::<Reg>().expect("a test token");
            let reg = Arc::try_unwrap(reg).map_err(|r| r as BackingToken)?;
            let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
            lock(&PARKED).get_or_insert_default().insert(id, reg);
            Ok(id)
        }
        fn close(&self, id: u32) {
            let reg = lock(&PARKED).get_or_insert_default().remove(&id);
            assert!(reg.is_some(), "closed an id twice or never parked");
        }
    }

    /// A token for idle id `id` again.
    fn named_again(id: u32) -> io::Result<BackingToken> {
        let reg = lock(&PARKED).get_or_insert_default().remove(&id);
        Ok(Arc::new(reg.expect("a parked id")) as BackingToken)
    }

    fn modes_with(idle_capacity: usize) -> IoModes {
        let m = IoModes::with_idle_capacity(idle_capacity);
        m.set_idle_ids(Arc::new(TestIds));
        m
    }

    fn modes() -> IoModes {
        modes_with(MAX_IDLE_REGISTRATIONS)
    }

    fn registrar(
        alive: &Arc<AtomicUsize>,
    ) -> impl FnOnce(Option<u32>) -> io::Result<BackingToken> + '_ {
        move |idle| match idle {
            Some(id) => named_again(id),
            None => {
                alive.fetch_add(1, Ordering::SeqCst);
                Ok(Arc::new(Reg(alive.clone())) as BackingToken)
            }
        }
    }

    /// Registers nothing new; names an idle registration again.
    fn never(idle: Option<u32>) -> io::Result<BackingToken> {
        named_again(idle.expect("no registration expected"))
    }

    #[test]
    fn readers_share_one_registration_until_the_last_release() {
        let m = modes();
        let alive = Arc::new(AtomicUsize::new(0));
        let a = m.open(3, false, true, registrar(&alive));
        let b = m.open(3, false, true, never);
        assert_eq!(
            (a.held, b.held),
            (Held::PassthroughReader, Held::PassthroughReader)
        );
        assert!(Arc::ptr_eq(
            a.backing.as_ref().unwrap(),
            b.backing.as_ref().unwrap()
        ));
        drop((a, b));
        assert_eq!(
            alive.load(Ordering::SeqCst),
            1,
            "the table holds the registration"
        );
        m.release(3, Held::PassthroughReader, false);
        assert_eq!(alive.load(Ordering::SeqCst), 1);
        m.release(3, Held::PassthroughReader, false);
        assert_eq!(alive.load(Ordering::SeqCst), 0, "last release unregisters");
        assert!(m.is_empty());
        // The next reader registers afresh.
        let c = m.open(3, false, true, registrar(&alive));
        assert_eq!(c.held, Held::PassthroughReader);
        assert_eq!(alive.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_kept_registration_is_named_again_until_forgotten() {
        let m = modes();
        let alive = Arc::new(AtomicUsize::new(0));
        let a = m.open(3, false, true, registrar(&alive));
        drop(a);
        m.release(3, Held::PassthroughReader, true);
        assert_eq!(alive.load(Ordering::SeqCst), 1, "kept idle");
        assert!(m.is_empty(), "an idle registration holds no mode");
        assert_eq!(m.idle_count(), 1);
        // A writer beside it is daemon-served: the idle registration is no open.
        let w = m.open(3, true, true, never);
        assert_eq!(w.held, Held::Cached);
        m.release(3, Held::Cached, true);
        let b = m.open(3, false, true, never);
        assert_eq!(b.held, Held::PassthroughReader, "named again");
        assert_eq!(m.counters().idle_reuses.load(Ordering::Relaxed), 1);
        assert_eq!(m.idle_count(), 0, "taken while open");
        drop(b);
        m.release(3, Held::PassthroughReader, true);
        m.forget(3);
        assert_eq!(
            alive.load(Ordering::SeqCst),
            0,
            "forgetting the inode drops it"
        );
        // Without keep_idle (the device view) the last release unregisters.
        m.open(4, false, true, registrar(&alive));
        m.release(4, Held::PassthroughReader, false);
        assert_eq!(alive.load(Ordering::SeqCst), 0);
        // Passthrough going off drops every idle one.
        m.open(5, false, true, registrar(&alive));
        m.release(5, Held::PassthroughReader, true);
        m.drop_idle();
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_open_without_a_new_registration_is_taken_only_when_one_exists() {
        let m = modes();
        let alive = Arc::new(AtomicUsize::new(0));
        // No mode and nothing idle: nothing taken, nothing registered.
        assert!(m.open_registered(3, never).is_none());
        assert!(m.is_empty());
        // In passthrough mode: joins it.
        let a = m.open(3, false, true, registrar(&alive));
        let b = m.open_registered(3, never).expect("joins the mode");
        assert_eq!(b.held, Held::PassthroughReader);
        assert!(Arc::ptr_eq(
            a.backing.as_ref().unwrap(),
            b.backing.as_ref().unwrap()
        ));
        drop((a, b));
        m.release(3, Held::PassthroughReader, true);
        m.release(3, Held::PassthroughReader, true);
        assert_eq!(m.idle_count(), 1);
        // Idle: named again, counted as a reuse.
        let c = m
            .open_registered(3, never)
            .expect("names the idle registration");
        assert_eq!(c.held, Held::PassthroughReader);
        assert_eq!(m.idle_count(), 0);
        assert_eq!(m.counters().idle_reuses.load(Ordering::Relaxed), 1);
        assert_eq!(alive.load(Ordering::SeqCst), 1, "no new registration");
        drop(c);
        m.release(3, Held::PassthroughReader, true);
        // A daemon-served open keeps the inode cached: nothing taken beside it.
        let w = m.open(3, true, true, never);
        assert_eq!(w.held, Held::Cached);
        assert!(m.open_registered(3, never).is_none());
        m.release(3, Held::Cached, true);
        // Forgotten: nothing to name.
        m.forget(3);
        assert!(m.open_registered(3, never).is_none());
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_registration_stays_idle_only_as_an_id_handed_over() {
        // No IdleIds (before the session): the last release unregisters.
        let m = IoModes::new();
        let alive = Arc::new(AtomicUsize::new(0));
        m.open(3, false, true, registrar(&alive));
        m.release(3, Held::PassthroughReader, true);
        assert_eq!((m.idle_count(), alive.load(Ordering::SeqCst)), (0, 0));
        // A token still held elsewhere is not handed over: it unregisters when that goes.
        let m = modes();
        let a = m.open(4, false, true, registrar(&alive));
        m.release(4, Held::PassthroughReader, true);
        assert_eq!(m.idle_count(), 0, "another clone was alive");
        assert_eq!(alive.load(Ordering::SeqCst), 1);
        drop(a);
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn idle_registrations_are_bounded() {
        let m = modes_with(2);
        let alive = Arc::new(AtomicUsize::new(0));
        for ino in [1, 2, 3] {
            m.open(ino, false, true, registrar(&alive));
            m.release(ino, Held::PassthroughReader, true);
        }
        assert_eq!((m.idle_count(), alive.load(Ordering::SeqCst)), (2, 2));
        // 3, the newest, is kept; one of 1 and 2 went.
        m.open(3, false, true, never);
        let reuses = m.counters().idle_reuses.load(Ordering::Relaxed);
        m.open(1, false, true, registrar(&alive));
        m.open(2, false, true, registrar(&alive));
        assert_eq!(m.counters().idle_reuses.load(Ordering::Relaxed), reuses + 1);
        let off = modes_with(0);
        off.open(1, false, true, registrar(&alive));
        off.release(1, Held::PassthroughReader, true);
        assert_eq!(off.idle_count(), 0, "capacity 0 keeps none");
    }

    #[test]
    fn a_writer_joins_passthrough_and_never_registers() {
        let m = modes();
        let alive = Arc::new(AtomicUsize::new(0));
        m.open(5, false, true, registrar(&alive));
        let w = m.open(5, true, true, never);
        assert_eq!(w.held, Held::PassthroughWriter);
        assert_eq!(m.passthrough_opens(5), Some((2, 1)));
        // Even with passthrough no longer allowed, an inode in passthrough mode stays there.
        let r = m.open(5, false, false, never);
        assert_eq!(r.held, Held::PassthroughReader);
        m.release(5, Held::PassthroughReader, false);
        m.release(5, Held::PassthroughReader, false);
        assert_eq!(m.passthrough_opens(5), Some((1, 1)), "the writer keeps it");
        drop((w, r));
        m.release(5, Held::PassthroughWriter, false);
        assert_eq!(alive.load(Ordering::SeqCst), 0);
        let c = m.counters();
        assert_eq!(c.passthrough_opens.load(Ordering::Relaxed), 3);
        assert_eq!(c.writer_opens.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_cached_open_keeps_every_later_open_cached() {
        let m = modes();
        let w = m.open(7, true, true, never);
        assert_eq!(w.held, Held::Cached);
        assert!(w.backing.is_none());
        let r = m.open(7, false, true, never);
        assert_eq!(
            r.held,
            Held::Cached,
            "a reader beside a daemon-served writer"
        );
        m.release(7, Held::Cached, false);
        m.release(7, Held::Cached, false);
        assert!(m.is_empty());
        let alive = Arc::new(AtomicUsize::new(0));
        let r = m.open(7, false, true, registrar(&alive));
        assert_eq!(
            r.held,
            Held::PassthroughReader,
            "free again once all are released"
        );
    }

    #[test]
    fn without_passthrough_every_open_is_cached() {
        let m = modes();
        assert_eq!(m.open(9, false, false, never).held, Held::Cached);
        assert_eq!(m.open(9, true, false, never).held, Held::Cached);
        assert_eq!(m.passthrough_opens(9), None);
    }

    #[test]
    fn a_failed_registration_leaves_the_open_cached() {
        let m = modes();
        let c = m.open(11, false, true, |_| {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        });
        assert_eq!(c.held, Held::Cached);
        assert_eq!(
            c.registration_failed.and_then(|e| e.raw_os_error()),
            Some(libc::EPERM)
        );
        assert_eq!(
            m.counters().registration_failures.load(Ordering::Relaxed),
            1
        );
        // Held cached: a second reader cannot start passthrough beside it.
        assert_eq!(m.open(11, false, true, never).held, Held::Cached);
    }

    #[test]
    fn concurrent_first_readers_register_once() {
        let m = Arc::new(modes());
        let alive = Arc::new(AtomicUsize::new(0));
        let registered = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (m, alive, registered) = (m.clone(), alive.clone(), registered.clone());
                std::thread::spawn(move || {
                    let c = m.open(13, false, true, |idle| {
                        registered.fetch_add(1, Ordering::SeqCst);
                        registrar(&alive)(idle)
                    });
                    assert_eq!(c.held, Held::PassthroughReader);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(registered.load(Ordering::SeqCst), 1);
        assert_eq!(m.passthrough_opens(13), Some((8, 0)));
        for _ in 0..8 {
            m.release(13, Held::PassthroughReader, false);
        }
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }
}
