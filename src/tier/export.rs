//! Exports: a resident file's pages moved into shared memory, where the kernel can serve them.
//!
//! A device-view open of a file whose pages are all resident may be served by the kernel
//! itself (FUSE passthrough onto a backing file): no daemon round trip per read, and an mmap
//! maps device memory. The arena cannot be a backing file, so [`DeviceTier::export_open`]
//! *migrates* the file: its folios are copied into a [`DeviceCopy`] (`shmem.rs`, at the
//! file's own offsets, 2 MiB extents as 2 MiB pages), removed from the page map and *lent*
//! to the copy (`arena.rs`: their memory is freed, their capacity stays used). Migration
//! works on whole files, never on page lists.
//!
//! When the last open is released the export stays, *idle*: the next open is served at once
//! (a migration of a 1 GiB file costs tens of milliseconds, and a reader that opens a file
//! again and again should not pay it each time). Idle exports (but those of files with the
//! `pin` hint, which stay like pinned pages) are dropped, oldest first,
//! before any policy victim when a fault needs room (their reader left, and the policy cannot
//! weigh them page by page), when a new export needs their pin budget, when more than
//! [`MAX_IDLE_EXPORTS`] are idle, or on `user.pagetier.evict` — dropping one is the eviction
//! of all its pages.
//!
//! # The one place a device copy is updated instead of invalidated
//! Everywhere else a host change *drops* the device pages it overlaps. A passthrough reader
//! cannot be told to fault again: the kernel reads the copy directly, and a hole would read
//! as zeros. So while an export exists, every invalidation of its file *updates the copy in
//! place* before the host call returns: the changed range is read again from storage and
//! written into the copy, and the copy's size follows the file's (`refresh`). Readers'
//! mappings see the new bytes at once (a shared shmem page is the one copy).
//!
//! Invariants:
//! - an export exists in a file's state (`FileState::export`) from its migration until its
//!   import finished; while it exists the copy equals the file: every invalidation of the file
//!   either refreshes it (export alive) or, once the export is dead, takes the usual path;
//! - an exported file's page map is empty except for the folios its own import installs;
//! - the copy's capacity is lent (`ExportState::lent` slots) while the export lives, and
//!   counted in the pin budget while it is not idle (idle ones are in `idle_lent` instead: they
//!   can be dropped at any time, so they pin nothing); an export that outgrows the free
//!   capacity takes it anyway (`over_commits`) rather than serve a stale byte, and reopening
//!   an idle one takes its pin budget back even past the budget (`over_commits`): its pages
//!   are nowhere else;
//! - an export holds a descriptor of its copy only from its first in-place update until its
//!   last release (`shmem.rs`): an open takes none (the kernel reads through its own
//!   registration, and most opens see no update, so holding one would cost an `openat` and
//!   a `close` per open), and an idle one costs a name in shared memory and this struct, so
//!   small files can all be exported. (Held from the open instead for a while: zero pages
//!   past the cut of a copy truncated in place were blamed on this, but they are the
//!   kernel's, as on any file with large folios — `truncate_inode_partial_folio` zeroes the
//!   cut part of a large folio before it drops it, and a read that checked the size before
//!   the cut copies the zeros; README, Passthrough.)
//! - an export keeps the kernel's passthrough registration of its copy from its first
//!   kernel-served open until it dies (`Export::registration`), idle ones too: a later open
//!   names it again instead of reopening the copy and registering it anew (two ioctls per
//!   open saved). The kernel then holds the copy's open file (a few hundred bytes of kernel
//!   memory per idle export, no descriptor of the daemon's); dropping the export drops it.
//!   An idle export keeps it as the kernel's id alone, handed over to the tier's `IdleIds`
//!   at its last release (when no open holds a clone of the token), like the host view's
//!   idle registrations (`iomode.rs`), and closes that id when dropped;
//! - `opens` counts the device-view opens holding the export; only an export with no open
//!   (idle, listed in `idle_exports`) is ever dropped, and a dropped export is dead: it is in
//!   no file state and holds no capacity.
//! - an idle export that nothing but its file state and its releasing open holds (no other
//!   clone of its `Arc`: none can be made but from the state, under the shard lock) is
//!   *compacted* at that release: its copy's number, parked registration, lent capacity and
//!   idle stamp move into the state as an [`IdleExport`] (12 bytes instead of a 128-byte
//!   allocation), and the `Arc` the open still holds is left *disowned*: dead, lending
//!   nothing, reaching no copy. Anything that wants the export again (an open, a daemon-served
//!   read) *revives* it from those 12 bytes under the shard lock ([`DeviceTier::export_of`]);
//!   anything that would drop it (the idle list, an invalidation) takes it out of the state
//!   under that lock, so a compact export is dropped or revived, never both. Exports of more
//!   than 256 MiB, of `pin` files, and ones whose registration is still a token (an open
//!   holds a clone) are not compacted.
//!
//! Lock order: an export's `state` lock comes *before* a shard lock (refresh and import do
//! storage I/O and then touch the page map); nothing takes an export's lock while holding a
//! shard lock; the idle list is a leaf, never held while taking either.

use std::io;
use std::num::{NonZeroU16, NonZeroU32};
#[cfg(test)]
use std::os::fd::BorrowedFd;

use crate::iomode::{BackingToken, IdleIds, Registration};
use crate::tier::fill::read_fully;
use crate::tier::folio::{self, Folio};
use crate::tier::hint::Hint;
use crate::tier::map::{Entry, ExportSlot, FileState};
use crate::tier::policy::FolioKey;
use crate::tier::reclaim::slots_of;
use crate::tier::shmem::DeviceCopy;
use crate::tier::stats::{add, sub};
use crate::tier::sync::{Arc, Mutex, Ordering, lock, thread};
use crate::tier::types::{
    FileId, FillSource, HUGE_PAGE_SIZE, InvalidationCause, PAGE_SIZE, SLOTS_PER_CHUNK, SharedSource,
};
use crate::tier::{DeviceTier, remove_state};

/// One exported file (see module docs).
pub struct Export {
    copy: DeviceCopy,
    state: Mutex<ExportState>,
    /// The kernel's registration of the copy as a passthrough backing file: made at the
    /// first kernel-served open, kept while the export lives (idle ones too, as the kernel's
    /// id alone), dropped when it dies (module docs). A leaf lock.
    registration: Mutex<Kept>,
}

/// How an export keeps the kernel's registration of its copy. 16 bytes: "none" is an
/// absent id, not a third variant (the kernel's ids start at 1).
enum Kept {
    /// While opens may name it (a token allocation of the adapter's).
    Token(BackingToken),
    /// While idle: the kernel's id, handed over to the tier's [`IdleIds`] (no allocation; at
    /// a million idle exports the tokens were a tenth of the daemon's memory). The next
    /// open names it again ([`Registration::Idle`]); a drop closes it. `None`: no
    /// registration.
    Parked(Option<NonZeroU32>),
}

const NOT_REGISTERED: Kept = Kept::Parked(None);

// Every exported file keeps one `Export` (in an `Arc`: 16 bytes more) and, while idle, an
// idle-list entry: at 104 bytes the allocation takes glibc's 128-byte chunk, not its 144.
// (Shuttle's locks, in its concurrency tests, are larger.)
#[cfg(not(feature = "shuttle"))]
const _: () = assert!(size_of::<Export>() <= 104);
const _: () = assert!(size_of::<IdleEntry>() == 10);
const _: () = assert!(size_of::<IdleExport>() == 12);

/// The stamp of the release that made an export idle: the low 16 bits of a tier sequence
/// number, never 0 ([`IdleEntry`]).
type Stamp = NonZeroU16;

/// An idle export in the file's state instead of its `Arc` (module docs: compaction).
#[derive(Clone, Copy, Debug)]
pub struct IdleExport {
    /// Its copy's number in shared memory ([`SharedMemory::reattach`]).
    number: u32,
    /// Its registration, parked as the kernel's id (`None`: not registered).
    id: Option<NonZeroU32>,
    /// Slots of capacity lent to the copy (only copies of up to 256 MiB are compacted).
    lent: u16,
    /// The release that made it idle (its current idle-list entry carries the same).
    stamp: Stamp,
}

impl DeviceTier {
    /// Whether `file`'s export keeps a registration of its copy (`Some(true)`: as an id
    /// alone), looked at without reviving it.
    #[cfg(test)]
    pub fn kept_registration(&self, file: FileId) -> Option<bool> {
        match self.find_export(file) {
            Found::None => None,
            Found::Idle(idle) => idle.id.map(|_| true),
            Found::Live(e) => e.registration_kept(),
        }
    }
}

impl IdleExport {
    /// Slots of capacity lent to its copy.
    #[cfg(test)]
    pub fn lent_slots(&self) -> u64 {
        u64::from(self.lent)
    }
}

/// What a file's state holds of an export, looked at without reviving it.
enum Found {
    None,
    Live(Arc<Export>),
    Idle(IdleExport),
}

impl Found {
    /// What a file's state holds of an export (call under its shard lock).
    fn of(st: &FileState) -> Found {
        match &st.export {
            ExportSlot::None => Found::None,
            ExportSlot::Live(e) => Found::Live(e.clone()),
            ExportSlot::Idle(idle) => Found::Idle(*idle),
        }
    }
}

struct ExportState {
    opens: u32,
    /// False once dropped: an invalidation that waited for the lock takes the usual path.
    alive: bool,
    /// Slots of capacity lent to the copy (and taken from the pin budget).
    lent: u64,
    /// While idle (and listed: not a `pin` file): the stamp of the release that made it
    /// idle (its entry in the tier's idle list carries the same stamp; older entries of it
    /// are stale), counted in `exports_idle`. None otherwise.
    idle_since: Option<Stamp>,
    /// Reads the file from storage for in-place updates: the source of an open holding the
    /// export, none while idle (an idle export holds no storage descriptor, so an unlinked
    /// file's space is freed; a change to it drops it instead).
    src: Option<SharedSource>,
}

impl Export {
    /// An idle export brought back from its compact form: idle still, under the same stamp.
    fn revived(shared: &crate::tier::shmem::SharedMemory, idle: IdleExport) -> Export {
        Export {
            copy: shared.reattach(idle.number),
            state: Mutex::new(ExportState {
                opens: 0,
                alive: true,
                lent: u64::from(idle.lent),
                idle_since: Some(idle.stamp),
                src: None,
            }),
            registration: Mutex::new(Kept::Parked(idle.id)),
        }
    }

    /// Whether the export holds a descriptor of its copy.
    #[cfg(test)]
    pub fn holds_fd(&self) -> bool {
        self.copy.is_held()
    }

    /// Calls `f` with a descriptor of the copy.
    #[cfg(test)]
    pub fn with_fd<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> io::Result<R> {
        self.copy.with_fd(f)
    }

    /// The copy's registration as a passthrough backing file: the export's own (named again
    /// by `register` from its id if it was parked), or a new one that `register` makes from a
    /// descriptor of the copy (then kept: module docs).
    pub fn registration(
        &self,
        register: impl FnOnce(Registration<'_>) -> io::Result<BackingToken>,
    ) -> io::Result<BackingToken> {
        let mut kept = lock(&self.registration);
        let token = match &*kept {
            Kept::Token(token) => return Ok(token.clone()),
            Kept::Parked(Some(id)) => register(Registration::Idle(id.get()))?,
            Kept::Parked(None) => self.copy.with_fd(|fd| register(Registration::New(fd)))??,
        };
        *kept = Kept::Token(token.clone());
        Ok(token)
    }

    /// Hands the registration over to `ids` as the kernel's id, if no open holds a clone of
    /// it (the export's last open was released).
    fn park_registration(&self, ids: &dyn IdleIds) {
        let mut kept = lock(&self.registration);
        if let Kept::Token(token) = std::mem::replace(&mut *kept, NOT_REGISTERED) {
            *kept = match ids.hand_over(token) {
                Ok(id) => {
                    debug_assert_ne!(id, 0, "the kernel's ids start at 1");
                    Kept::Parked(NonZeroU32::new(id))
                }
                Err(token) => Kept::Token(token),
            };
        }
    }

    /// Whether the export keeps a registration of its copy: `Some(true)` as an id alone.
    #[cfg(test)]
    pub fn registration_kept(&self) -> Option<bool> {
        match &*lock(&self.registration) {
            Kept::Parked(None) => None,
            Kept::Token(_) => Some(false),
            Kept::Parked(Some(_)) => Some(true),
        }
    }
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Export")
    }
}

/// Idle exports kept at most: each costs the kernel a tmpfs inode and name (about 1 KiB) and
/// the daemon this struct, outside the tier's capacity.
pub const MAX_IDLE_EXPORTS: usize = 1 << 20;

/// Spare room the idle list keeps past `len` entries: a quarter, since it is weeded at a
/// quarter over the idle exports ([`stale_bound`]) and room past that would never be used.
fn idle_room(len: usize) -> usize {
    len / 4 + 1024
}

/// Entries the idle list may hold with `idle` exports idle before its stale entries (of
/// exports reopened or dropped since) are weeded out: a quarter more than the idle ones
/// (each weeding then pays for a quarter of new entries), so that the list costs about 15
/// bytes per idle export.
pub(super) fn stale_bound(idle: u64) -> usize {
    idle as usize + idle as usize / 4 + 4096
}

/// An entry of the idle list: an export of `file` that lost its last open at the release
/// stamped `stamp` (its `idle_since`). 10 bytes, not 16: at a million idle exports the list
/// is one of the tier's largest tables. Two releases of one export whose stamps agree (2^16
/// sequence numbers apart, with the older entry still listed) make the older entry look
/// current: the export may then be dropped a little early (which only changes the order of
/// evictions), and a weeding keeps that entry once more.
#[derive(Clone, Copy, Debug)]
#[repr(C, packed(2))]
pub(super) struct IdleEntry {
    file: FileId,
    stamp: Stamp,
}

impl IdleEntry {
    fn new(file: FileId, stamp: Stamp) -> IdleEntry {
        IdleEntry { file, stamp }
    }

    /// Whether this entry is the one of a release stamped `idle_since` (None: not idle, which
    /// no entry is of).
    fn stamped(&self, idle_since: Option<Stamp>) -> bool {
        let stamp = self.stamp;
        idle_since == Some(stamp)
    }
}

/// Pages of a `size`-byte file.
fn pages_of(size: u64) -> u64 {
    size.div_ceil(PAGE_SIZE)
}

/// Pages of a `size`-byte exported file, as `(huge, base)`: 2 MiB extents wholly inside the
/// file were copied as 2 MiB pages.
fn exported_pages(size: u64) -> (u64, u64) {
    let huge = size / HUGE_PAGE_SIZE;
    (huge, pages_of(size - huge * HUGE_PAGE_SIZE))
}

/// What an invalidation found of a file's export ([`DeviceTier::refresh_if_exported`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExportInvalidation {
    /// No live export (none, or an idle one just dropped): the usual path applies.
    None,
    /// An open export, unchanged: its bytes did not change (a name went) or it is pinned
    /// (an eviction): nothing else to do.
    Kept,
    /// An open export, updated in place: the page map still drops what the range covers
    /// (pages a fault racing the migration may have installed), keeping the file's state.
    Updated,
}

/// Why a file could not be exported (the open is daemon-served instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotExported {
    /// Shared memory is not available (no `CAP_SYS_ADMIN`, or not enabled).
    NoSharedMemory,
    /// Empty, or not every page of the file is resident.
    NotWhole,
    /// The pin budget (`--pin-share`) has no room for the whole file.
    PinBudget,
    /// The file changed or was evicted during the migration.
    Raced,
    /// Shared memory refused the copy (logged).
    CopyFailed,
}

impl DeviceTier {
    /// The live export of `file`, if any, revived first if it was compacted (cheap when none
    /// exists anywhere).
    pub(super) fn export_of(&self, file: FileId) -> Option<Arc<Export>> {
        if self.exports_live.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut g = lock(&self.shard(file).files);
        let st = g.get_mut(&file)?;
        match &st.export {
            ExportSlot::None => None,
            ExportSlot::Live(e) => Some(e.clone()),
            ExportSlot::Idle(idle) => {
                // A compact export exists only where shared memory does.
                let shared = self.shared.get()?;
                let e = Arc::new(Export::revived(shared, *idle));
                st.export = ExportSlot::Live(e.clone());
                sub(&self.exports_compact, 1);
                Some(e)
            }
        }
    }

    /// Whether `file` has an export, live or idle (never revives one).
    pub(super) fn is_exported(&self, file: FileId) -> bool {
        self.exports_live.load(Ordering::Relaxed) > 0
            && lock(&self.shard(file).files)
                .get(&file)
                .is_some_and(|st| st.is_exported())
    }

    /// What `file`'s state holds of an export, without reviving a compact one.
    fn find_export(&self, file: FileId) -> Found {
        if self.exports_live.load(Ordering::Relaxed) == 0 {
            return Found::None;
        }
        lock(&self.shard(file).files)
            .get(&file)
            .map_or(Found::None, Found::of)
    }

    /// The copy's size of an export found by [`Self::find_export`] (a system call or more).
    fn found_len(&self, found: &Found) -> u64 {
        match found {
            Found::None => 0,
            Found::Live(e) => e.copy.len().unwrap_or(0),
            Found::Idle(idle) => self
                .shared
                .get()
                .and_then(|m| m.len_of(idle.number).ok())
                .unwrap_or(0),
        }
    }

    /// Takes one open of `file`'s export, migrating the file into shared memory first if it
    /// has no export yet: every page of the `file_size` bytes must be resident, and fit in
    /// the pin budget. `src` reads the file from storage for in-place updates. Give the open
    /// back with [`DeviceTier::export_release`].
    pub fn export_open(
        &self,
        file: FileId,
        file_size: u64,
        src: &SharedSource,
    ) -> Result<Arc<Export>, NotExported> {
        loop {
            let Some(e) = self.export_of(file) else {
                return self.migrate_in(file, file_size, src);
            };
            if self.join(&e, src) {
                return Ok(e);
            }
            // Dropped meanwhile: migrate the file again if it is still whole.
            thread::yield_now();
        }
    }

    /// Takes one open of `file`'s live export, if it has one (never migrates).
    pub fn export_join(&self, file: FileId, src: &SharedSource) -> Option<Arc<Export>> {
        let e = self.export_of(file)?;
        self.join(&e, src).then_some(e)
    }

    /// Takes one open of `e` if it is alive (not dropped); `src` serves its in-place updates.
    fn join(&self, e: &Export, src: &SharedSource) -> bool {
        let mut s = lock(&e.state);
        if !s.alive {
            return false;
        }
        self.take_open(&mut s);
        s.src.get_or_insert_with(|| src.clone());
        true
    }

    /// Tells the policy that an open the kernel serves uses `file` (`size` bytes) once: one
    /// use of each key its pages would have if they came back (whole 2 MiB extents as huge
    /// pages, with huge pages on; the rest as base pages). The daemon sees none of the open's
    /// reads, and a frequency-based policy must still know the file is used when a drop
    /// sends its pages back to the page map.
    pub fn touch_exported(&self, file: FileId, size: u64) {
        let huge = if self.cfg.huge_pages {
            size / HUGE_PAGE_SIZE
        } else {
            0
        };
        let base = (huge * HUGE_PAGE_SIZE / PAGE_SIZE)..pages_of(size);
        let mut policy = lock(&self.policy);
        for e in 0..huge {
            policy.record_use(&FolioKey::huge(file, e));
        }
        for p in base {
            policy.record_use(&FolioKey::base(file, p));
        }
        drop(policy);
        add(&self.stats.policy_touches, 1);
    }

    /// Copies the whole resident file into a new copy and swaps the page map for the export.
    fn migrate_in(
        &self,
        file: FileId,
        size: u64,
        src: &SharedSource,
    ) -> Result<Arc<Export>, NotExported> {
        let shared = self.shared.get().ok_or(NotExported::NoSharedMemory)?;
        if size == 0 {
            return Err(NotExported::NotWhole);
        }
        // Readahead queued by earlier reads would fault pages into the map of the export.
        self.readahead.cancel(file);
        let (seq, folios, own_pinned) = {
            let g = lock(&self.shard(file).files);
            let st = g.get(&file).ok_or(NotExported::NotWhole)?;
            let mut folios = Vec::new();
            let mut pos = 0;
            while pos < size {
                let ext = pos / HUGE_PAGE_SIZE;
                if let Some(Entry::Ready(f)) = st.huge.get(&ext) {
                    folios.push((pos, f.clone()));
                    pos = (ext + 1) * HUGE_PAGE_SIZE;
                } else if let Some(Entry::Ready(f)) = st.base.get(&(pos / PAGE_SIZE)) {
                    folios.push((pos, f.clone()));
                    pos += PAGE_SIZE;
                } else {
                    return Err(NotExported::NotWhole);
                }
            }
            if st.is_exported() {
                return Err(NotExported::Raced);
            }
            let own_pinned: u64 = st.pinned.iter().map(slots_of).sum();
            (st.seq(), folios, own_pinned)
        };
        // `size` came from a stat before the snapshot: a change between the two (a truncate
        // up, a write past the end) bumped no sequence this snapshot could see, so the size
        // must still hold after it; any later change bumps the sequence and fails the swap.
        if src.size().map_err(|_| NotExported::Raced)? != size {
            return Err(NotExported::Raced);
        }
        let slots: u64 = folios.iter().map(|(_, f)| f.len() as u64 / PAGE_SIZE).sum();
        // The file's own pinned folios (the `pin` hint) leave the pin budget as they leave
        // the page map: reserve only the rest now (before any copying: a file that cannot
        // be exported costs nothing), the discount comes back after the swap. Idle exports
        // hold no pin budget: dropping them would not help.
        if !self.reserve_pin(slots.saturating_sub(own_pinned)) {
            return Err(NotExported::PinBudget);
        }
        let unreserve = || sub(&self.pinned_slots, slots.saturating_sub(own_pinned));
        // Copy with no lock held: the pins keep every folio's bytes alive and unchanged.
        let copy = shared
            .create(size)
            .and_then(|copy| {
                for (pos, f) in &folios {
                    let n = (size - pos).min(f.len() as u64) as usize;
                    copy.write_at(&f.bytes()[..n], *pos)?;
                }
                Ok(copy)
            })
            .map_err(|e| {
                unreserve();
                tracing::warn!(error = %e, file, "cannot copy a file into shared device memory");
                NotExported::CopyFailed
            })?;
        drop(folios);
        let export = Arc::new(Export {
            copy,
            state: Mutex::new(ExportState {
                opens: 1,
                alive: true,
                lent: slots,
                idle_since: None,
                src: Some(src.clone()),
            }),
            registration: Mutex::new(NOT_REGISTERED),
        });
        let taken = self.swap_in_export(file, seq, slots, &export);
        let Some(taken) = taken else {
            unreserve();
            return Err(NotExported::Raced);
        };
        add(&self.pinned_slots, slots.min(own_pinned));
        for f in taken {
            self.arena.lend(folio::unpinned(f));
        }
        add(&self.stats.exports, 1);
        Ok(export)
    }

    /// Under the shard lock: if nothing changed since `seq` and the page map still holds
    /// exactly `slots` slots of ready folios, removes them all and installs `export`.
    /// Returns the removed folios (to lend after the lock).
    fn swap_in_export(
        &self,
        file: FileId,
        seq: u64,
        slots: u64,
        export: &Arc<Export>,
    ) -> Option<Vec<Arc<Folio>>> {
        let mut g = lock(&self.shard(file).files);
        let st = g.get_mut(&file)?;
        let ready = |m: &std::collections::BTreeMap<u64, Entry>| {
            m.values().all(|e| matches!(e, Entry::Ready(_)))
        };
        let held: u64 = st.huge.len() as u64 * 512 + st.base.len() as u64;
        if st.seq() != seq || st.is_exported() || held != slots || !ready(&st.huge) {
            return None;
        }
        if !ready(&st.base) {
            return None;
        }
        let mut taken = Vec::new();
        let mut policy = lock(&self.policy);
        let keys: Vec<(FolioKey, Arc<Folio>)> = std::mem::take(&mut st.huge)
            .into_iter()
            .map(|(e, x)| (FolioKey::huge(file, e), x))
            .chain(
                std::mem::take(&mut st.base)
                    .into_iter()
                    .map(|(p, x)| (FolioKey::base(file, p), x)),
            )
            .filter_map(|(k, x)| match x {
                Entry::Ready(f) => Some((k, f)),
                Entry::Filling(_) => None,
            })
            .collect();
        let (mut huge, mut base) = (0, 0);
        for (k, f) in keys {
            self.untrack(st, &mut **policy, &k, f.id());
            if k.is_huge() {
                huge += 1;
            } else {
                base += 1;
            }
            taken.push(f);
        }
        drop(policy);
        st.unread.clear();
        // Fills that started before the swap must not install into the export's map.
        st.set_seq(self.next_seq());
        st.export = ExportSlot::Live(export.clone());
        st.drop_empty_pages();
        self.exports_live.fetch_add(1, Ordering::Relaxed);
        drop(g);
        sub(&self.stats.resident_huge, huge);
        sub(&self.stats.resident_base, base);
        Some(taken)
    }

    /// One more open of a live export (taking it out of the idle ones if it was idle:
    /// its copy is pinned again, past the budget if need be).
    fn take_open(&self, s: &mut ExportState) {
        if s.idle_since.take().is_some() {
            sub(&self.exports_idle, 1);
            sub(&self.idle_lent, s.lent);
            if !self.reserve_pin(s.lent) {
                add(&self.pinned_slots, s.lent);
                add(&self.stats.over_commits, 1);
            }
        }
        s.opens += 1;
    }

    /// Gives back one open of `export` (of `file`); after the last one the export stays,
    /// idle, until it is dropped (module docs).
    pub fn export_release(&self, file: FileId, export: &Arc<Export>) {
        let mut s = lock(&export.state);
        s.opens -= 1;
        if s.opens > 0 || !s.alive {
            return;
        }
        s.src = None;
        let _ = export.copy.hold(false);
        if let Some(ids) = self.idle_ids.get() {
            export.park_registration(ids.as_ref());
        }
        // A file with the `pin` hint keeps its export: like its pinned pages, it is never
        // evicted to make room, only dropped by a change or an explicit eviction.
        if self.hint(file) == Hint::Pin {
            return;
        }
        let stamp = Stamp::new(self.next_seq() as u16).unwrap_or(Stamp::MIN);
        s.idle_since = Some(stamp);
        sub(&self.pinned_slots, s.lent);
        add(&self.idle_lent, s.lent);
        add(&self.exports_idle, 1);
        self.compact(file, export, &mut s);
        drop(s);
        let listed = {
            let mut q = lock(&self.idle_exports);
            // Grown by a quarter, not doubled (`idle_room`).
            if q.len() == q.capacity() {
                let more = idle_room(q.len());
                q.reserve_exact(more);
            }
            q.push_back(IdleEntry::new(file, stamp));
            q.len()
        };
        if listed > stale_bound(self.exports_idle.load(Ordering::Relaxed)) {
            self.forget_stale_idle_entries();
        }
        if self.exports_idle.load(Ordering::Relaxed) > MAX_IDLE_EXPORTS as u64 {
            self.drop_idle_export();
        }
    }

    /// Compacts the export `held` (of `file`, its state `s` locked) that its last open just
    /// left idle, if only its file state and that open hold it (module docs): the state then
    /// keeps it as an [`IdleExport`], and `held` is disowned.
    fn compact(&self, file: FileId, held: &Arc<Export>, s: &mut ExportState) {
        let (Some(stamp), Ok(lent)) = (s.idle_since, u16::try_from(s.lent)) else {
            return;
        };
        let mut g = lock(&self.shard(file).files);
        let Some(st) = g.get_mut(&file) else {
            return;
        };
        // Two holders: the state and the caller (whose clone is not the state's). A third
        // could only come from the state, under this lock.
        let ExportSlot::Live(e) = &st.export else {
            return;
        };
        if !Arc::ptr_eq(e, held) || Arc::strong_count(held) != 2 {
            return;
        }
        let mut kept = lock(&held.registration);
        let Kept::Parked(id) = *kept else {
            // A token: some open's clone of it is still alive.
            return;
        };
        *kept = NOT_REGISTERED;
        drop(kept);
        let number = held.copy.disown();
        st.export = ExportSlot::Idle(IdleExport {
            number,
            id,
            lent,
            stamp,
        });
        s.alive = false;
        s.lent = 0;
        s.idle_since = None;
        add(&self.exports_compact, 1);
    }

    /// Whether an idle-list entry is still current: its export is idle since that release
    /// (an export busy right now keeps its entry).
    fn idle_entry_current(&self, entry: IdleEntry) -> bool {
        match self.find_export(entry.file) {
            Found::None => false,
            Found::Idle(idle) => entry.stamped(Some(idle.stamp)),
            Found::Live(export) => match export.state.try_lock() {
                Ok(s) => s.opens == 0 && s.alive && entry.stamped(s.idle_since),
                Err(_) => true,
            },
        }
    }

    /// Takes `file`'s compact export out of its state, if it still has one (stamped `stamp`,
    /// if given), as a drop does: the caller finishes the drop with [`Self::drop_compact`].
    fn take_compact(&self, file: FileId, stamp: Option<Stamp>) -> Option<IdleExport> {
        let mut g = lock(&self.shard(file).files);
        let st = g.get_mut(&file)?;
        let ExportSlot::Idle(idle) = st.export else {
            return None;
        };
        if stamp.is_some_and(|s| s != idle.stamp) {
            return None;
        }
        st.export = ExportSlot::None;
        st.set_seq(self.next_seq());
        if st.is_empty() {
            remove_state(&mut g, file);
        }
        Some(idle)
    }

    /// Finishes the drop of a compact export taken out of its state: its capacity, its
    /// registration and its copy go.
    fn drop_compact(&self, idle: IdleExport) {
        sub(&self.exports_compact, 1);
        if let Some(shared) = self.shared.get() {
            drop(shared.reattach(idle.number));
        }
        self.dropped(u64::from(idle.lent), true, idle.id);
    }

    /// The accounting of a dropped export (out of its file state already) that lent `lent`
    /// slots, was `idle` or pinned, and kept registration `id`.
    fn dropped(&self, lent: u64, idle: bool, id: Option<NonZeroU32>) {
        if idle {
            sub(&self.exports_idle, 1);
            sub(&self.idle_lent, lent);
        } else {
            sub(&self.pinned_slots, lent);
        }
        self.arena.unlend(lent);
        self.exports_live.fetch_sub(1, Ordering::Relaxed);
        if let (Some(id), Some(ids)) = (id, self.idle_ids.get()) {
            ids.close(id.get());
        }
        add(&self.stats.dropped_exports, 1);
        add(&self.stats.evictions, lent.div_ceil(SLOTS_PER_CHUNK as u64));
    }

    /// Weeds the idle list when its stale entries pass the bound ([`stale_bound`]): an export
    /// dropped by an invalidation or an eviction stays listed until then. Only a release
    /// looked at the list before, and after `evict -r` of a million files none came: a
    /// million entries stayed. Call with no tier lock held.
    pub(super) fn weed_idle_list_if_stale(&self) {
        let listed = lock(&self.idle_exports).len();
        if listed > stale_bound(self.exports_idle.load(Ordering::Relaxed)) {
            self.forget_stale_idle_entries();
        }
    }

    /// Rebuilds the idle list without the entries of exports reopened or dropped since (each
    /// release adds one; only the newest of an idle export counts), in place: the list is
    /// taken out (the checks take shard and export locks, which come before it), weeded,
    /// and put back in front of the entries released meanwhile, with a quarter of room.
    fn forget_stale_idle_entries(&self) {
        let mut kept = Vec::from(std::mem::take(&mut *lock(&self.idle_exports)));
        kept.retain(|&e| self.idle_entry_current(e));
        let mut q = lock(&self.idle_exports);
        kept.extend(q.drain(..));
        kept.shrink_to(kept.len() + idle_room(kept.len()));
        *q = kept.into();
    }

    /// Drops the oldest idle export, if any: its pages leave the tier (an eviction).
    /// Returns whether one was dropped.
    pub(super) fn drop_idle_export(&self) -> bool {
        loop {
            let Some(entry) = lock(&self.idle_exports).pop_front() else {
                return false;
            };
            if self.drop_if_current(entry) {
                return true;
            }
        }
    }

    /// Drops the export an idle-list entry names, if the entry is current. Returns whether
    /// it was dropped.
    fn drop_if_current(&self, entry: IdleEntry) -> bool {
        let file = entry.file;
        loop {
            let export = match self.find_export(file) {
                Found::None => return false,
                Found::Idle(idle) => {
                    // An older entry of an export reopened (and maybe idle again) since: stale.
                    if !entry.stamped(Some(idle.stamp)) {
                        return false;
                    }
                    match self.take_compact(file, Some(idle.stamp)) {
                        Some(idle) => {
                            self.drop_compact(idle);
                            return true;
                        }
                        // Revived (or dropped) since the look: look again.
                        None => continue,
                    }
                }
                Found::Live(export) => export,
            };
            // A busy export is not idle (being opened, refreshed or dropped); and a caller
            // may hold another export's lock (a refresh making room): never wait here.
            let Ok(mut s) = export.state.try_lock() else {
                return false;
            };
            if !entry.stamped(s.idle_since) {
                return false;
            }
            return self.drop_locked(file, &export, &mut s);
        }
    }

    /// Drops the export of `file` whose state `s` is locked, if no open holds it (an export
    /// with opens is pinned). Returns whether it was dropped.
    fn drop_locked(&self, file: FileId, export: &Export, s: &mut ExportState) -> bool {
        if s.opens > 0 || !s.alive {
            return false;
        }
        s.alive = false;
        // No open names it any more, and no later open can join a dead export.
        let registration = std::mem::replace(&mut *lock(&export.registration), NOT_REGISTERED);
        let idle = s.idle_since.take().is_some();
        let lent = std::mem::take(&mut s.lent);
        {
            let mut g = lock(&self.shard(file).files);
            if let Some(st) = g.get_mut(&file) {
                st.export = ExportSlot::None;
                st.set_seq(self.next_seq());
                if st.is_empty() {
                    remove_state(&mut g, file);
                }
            }
        }
        // A token unregisters when its last clone drops; a parked id is closed here.
        let id = match registration {
            Kept::Parked(id) => id,
            Kept::Token(_) => None,
        };
        self.dropped(lent, idle, id);
        true
    }

    /// An invalidation of `[offset, end)` of `file`, as far as its export goes (module docs):
    /// an idle export is dropped; an open one is updated in place (or, for an unlink or an
    /// eviction, which change no byte, kept as it is).
    pub(super) fn refresh_if_exported(
        &self,
        file: FileId,
        offset: u64,
        end: u64,
        cause: InvalidationCause,
    ) -> ExportInvalidation {
        let export = loop {
            let found = self.find_export(file);
            match found {
                Found::None => return ExportInvalidation::None,
                Found::Live(export) => break export,
                // Idle and compact: it goes like any page would (see below).
                Found::Idle(_) => {}
            }
            let len = self.found_len(&found);
            if let Some(idle) = self.take_compact(file, None) {
                let (huge, base) = exported_pages(len);
                self.drop_compact(idle);
                add(&self.stats.invalidations[cause as usize], huge + base);
                self.weed_idle_list_if_stale();
                return ExportInvalidation::None;
            }
            // Revived (or dropped) since the look: look again.
        };
        let mut s = lock(&export.state);
        if !s.alive {
            return ExportInvalidation::None;
        }
        if s.opens == 0 {
            // Idle: no reader to keep exact, so the export goes like any page would.
            let (huge, base) = Self::exported_residency(&export);
            if self.drop_locked(file, &export, &mut s) {
                add(&self.stats.invalidations[cause as usize], huge + base);
                drop(s);
                self.weed_idle_list_if_stale();
            }
            return ExportInvalidation::None;
        }
        if matches!(
            cause,
            InvalidationCause::UnlinkRename | InvalidationCause::Evict
        ) {
            return ExportInvalidation::Kept;
        }
        // Updates come in runs (a writer's requests): keep a descriptor until the last
        // release rather than reopen the copy by name for each use. Best effort.
        let _ = export.copy.hold(true);
        if let Err(e) = self.refresh(&export.copy, &mut s, offset, end, cause) {
            tracing::error!(error = %e, file, "cannot update a device copy served by the kernel");
            add(&self.stats.update_failures, 1);
        }
        ExportInvalidation::Updated
    }

    /// Makes `[offset, end)` of the copy (and its size) equal the file's in storage. A
    /// truncate copies nothing past the copy's old end: what it added is a hole in storage
    /// and zeros in the grown copy alike (a `truncate -s 1T` of an exported file reads no
    /// terabyte of zeros; a write out there is invalidated as a write).
    fn refresh(
        &self,
        copy: &DeviceCopy,
        s: &mut ExportState,
        offset: u64,
        end: u64,
        cause: InvalidationCause,
    ) -> io::Result<()> {
        let src = s
            .src
            .clone()
            .ok_or_else(|| io::Error::other("an open export has no source"))?;
        let end = match cause {
            InvalidationCause::Truncate => end.min(copy.len()?.max(offset)),
            _ => end,
        };
        let mut tries = 0;
        loop {
            let size = src.size()?;
            self.resize_copy(copy, s, size)?;
            match self.copy_range(copy, &*src, size, offset, end) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && tries < 8 => tries += 1,
                done => return done,
            }
        }
    }

    /// Sets the copy's size to `size`, lending or giving back the capacity that changes.
    fn resize_copy(&self, copy: &DeviceCopy, s: &mut ExportState, size: u64) -> io::Result<()> {
        let old = copy.len()?;
        if old == size {
            return Ok(());
        }
        copy.set_len(size)?;
        let (was, now) = (pages_of(old), pages_of(size));
        if now > was {
            let more = now - was;
            if !self.arena.lend_room(more) {
                self.evict(crate::tier::arena::Need::Slots(more as usize));
                if !self.arena.lend_room(more) {
                    self.arena.lend_over(more);
                    add(&self.stats.over_commits, 1);
                }
            }
            add(&self.pinned_slots, more);
            s.lent += more;
        } else {
            let less = (was - now).min(s.lent);
            self.arena.unlend(less);
            sub(&self.pinned_slots, less);
            s.lent -= less;
        }
        Ok(())
    }

    /// Reads file bytes `[offset, end)` (page-aligned outward, clipped to `size`) from
    /// storage and writes them into the copy, one extent at a time.
    fn copy_range(
        &self,
        copy: &DeviceCopy,
        src: &dyn FillSource,
        size: u64,
        offset: u64,
        end: u64,
    ) -> io::Result<()> {
        let mut pos = offset / PAGE_SIZE * PAGE_SIZE;
        let end = end.min(size);
        let mut bounce = memmap2::MmapMut::map_anon(HUGE_PAGE_SIZE as usize)?;
        while pos < end {
            let next = ((pos / HUGE_PAGE_SIZE + 1) * HUGE_PAGE_SIZE)
                .min(end.div_ceil(PAGE_SIZE) * PAGE_SIZE);
            let buf = &mut bounce[..(next - pos) as usize];
            read_fully(src, buf, pos, size)?;
            let valid = (size - pos).min(next - pos) as usize;
            copy.write_at(&buf[..valid], pos)?;
            add(&self.stats.updated_bytes, valid as u64);
            pos = next;
        }
        add(&self.stats.updates, 1);
        Ok(())
    }

    /// Bytes of a file's export as a device read: `[offset, offset + out.len())` clipped to
    /// the copy, read from the copy.
    pub(super) fn read_exported(
        &self,
        export: &Export,
        offset: u64,
        out: &mut [u8],
    ) -> io::Result<usize> {
        let n = export.copy.read_at(out, offset)?;
        add(&self.stats.reads, 1);
        add(&self.stats.shared_reads, 1);
        add(&self.stats.bytes_served, n as u64);
        Ok(n)
    }

    /// Resident pages of an exported file, as `(huge, base)`.
    pub(super) fn exported_residency(export: &Export) -> (u64, u64) {
        exported_pages(export.copy.len().unwrap_or(0))
    }

    /// `file`'s (huge, base) pages: its export's (its copy's size, learnt after the shard
    /// lock) or its resident folios', under one lock of its shard.
    pub(super) fn resident_pages_of(&self, file: FileId) -> (u64, u64) {
        let found = match lock(&self.shard(file).files).get(&file) {
            None => return (0, 0),
            Some(st) => match Found::of(st) {
                Found::None => return st.resident_counts(),
                found => found,
            },
        };
        exported_pages(self.found_len(&found))
    }

    /// Capacity lent to copies, in bytes.
    pub(super) fn exported_bytes(&self) -> u64 {
        self.arena.lent_slots() * PAGE_SIZE
    }
}
