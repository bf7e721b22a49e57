//! Per-file page map: file position → folio (or an in-flight fill).
//!
//! One [`FileState`] per file, owned by the file's shard and touched only under that shard's
//! lock. Huge pages are keyed by extent index (`offset / 2 MiB`) in `huge`, base pages by page
//! index (`offset / 4 KiB`) in `base`, both ordered so a range invalidation visits only the
//! keys it drops.
//!
//! Invariants:
//! - an extent is covered by at most one of: a `huge` entry, or `base` entries (never both);
//! - `Entry::Filling(id)` marks a fill in progress by the thread holding folio `id`; only that
//!   thread replaces it with `Ready` (if `seq` is unchanged) or removes it; an invalidation
//!   may remove it first, in which case the filler discards its folio;
//! - every `Ready` folio's bytes equal the file's bytes at the time of its fill, and no
//!   invalidation of its range has happened since (otherwise it would have been removed);
//! - `seq` (the file's [`InvalidationSeq`]) changes on every invalidation and is drawn from a
//!   tier-wide counter, so a forgotten and re-created file never repeats an old value;
//! - `pinned` holds exactly the keys of `Ready` folios kept out of the eviction policy (the
//!   `pin` hint); every other `Ready` folio is tracked by the policy;
//! - a state with a hint other than `Normal` is kept even when it holds no page;
//! - `export`, when set (live or idle, [`ExportSlot`]), holds the file's pages instead of the
//!   maps (`export.rs`);
//! - `unread` holds keys of folios installed by readahead and not read since (it may also
//!   hold keys no longer resident: the only cost is one extra policy call on a later hit).

use std::collections::{BTreeMap, HashSet};
use std::hash::RandomState;

use crate::tier::arena::ChunkIndex;
use crate::tier::export::{Export, IdleExport};
use crate::tier::folio::Folio;
use crate::tier::hint::Hint;
use crate::tier::policy::FolioKey;
use crate::tier::sync::Arc;
use crate::tier::types::{FolioId, InvalidationSeq, SLOTS_PER_CHUNK};

/// A set of folio keys that is one pointer while empty, as it is for nearly every file
/// (`pinned` and `unread` of [`FileState`]): a tree of a million small files keeps a million
/// states, each about 100 bytes instead of 180.
#[derive(Default, Debug)]
// The box is the point: one pointer in the state, the set's 48 bytes only when non-empty.
#[allow(clippy::box_collection)]
pub struct KeySet(Option<Box<HashSet<FolioKey, RandomState>>>);

impl KeySet {
    pub fn insert(&mut self, k: FolioKey) -> bool {
        self.0.get_or_insert_with(Box::default).insert(k)
    }

    pub fn remove(&mut self, k: &FolioKey) -> bool {
        let Some(set) = self.0.as_mut() else {
            return false;
        };
        let removed = set.remove(k);
        if set.is_empty() {
            self.0 = None;
        }
        removed
    }

    pub fn contains(&self, k: &FolioKey) -> bool {
        self.0.as_ref().is_some_and(|s| s.contains(k))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }

    pub fn iter(&self) -> impl Iterator<Item = &FolioKey> {
        self.0.iter().flat_map(|s| s.iter())
    }

    /// Empties the set, returning its keys.
    pub fn drain(&mut self) -> impl Iterator<Item = FolioKey> + use<> {
        self.0.take().into_iter().flat_map(|s| s.into_iter())
    }
}

/// Bits of [`FileState`]'s word that hold its sequence number.
const SEQ_BITS: u32 = 56;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

pub enum Entry {
    Ready(Arc<Folio>),
    Filling(FolioId),
}

/// A file's export (`export.rs`), in one of two forms: an `Arc` that opens share, or, once
/// idle with nothing else holding it, the 12 bytes it needs to be opened again or dropped
/// (a tier of a million exported small files keeps nearly all of them idle, and the `Arc`
/// was a 128-byte allocation each). 16 bytes.
#[derive(Debug, Default)]
pub enum ExportSlot {
    #[default]
    None,
    Live(Arc<Export>),
    Idle(IdleExport),
}

pub struct FileState {
    /// The file's invalidation sequence number (the low 56 bits) and its hint
    /// (`user.pagetier.hint`, the top 8): one word, so that a state is 32 bytes and a slot of
    /// a shard's map 40, not 48 (a tier of a million small files keeps a million states, in
    /// maps that are between half and seven eighths full). Read and written through
    /// [`FileState::seq`] and [`FileState::hint`]. Sequence numbers count the tier's
    /// invalidations and fills: 2^56 of them take centuries.
    seq_hint: u64,
    /// The file's pages moved into shared memory for the kernel to serve (`export.rs`).
    pub export: ExportSlot,
    /// The page map and the read state, boxed and absent while empty: a tier of a million
    /// exported small files keeps a million states whose page maps are empty, and a state is
    /// then 32 bytes instead of 120. Reached through `Deref` (an absent box reads as
    /// [`NO_PAGES`]) and `DerefMut` (which makes the box).
    pages: Option<Box<Pages>>,
}

/// The page-map part of a [`FileState`].
#[derive(Default)]
pub struct Pages {
    /// End offset of the previous device read (sequential-access detection).
    pub last_end: u64,
    pub huge: BTreeMap<u64, Entry>,
    pub base: BTreeMap<u64, Entry>,
    /// Ready folios kept out of the eviction policy (see module docs).
    pub pinned: KeySet,
    /// Readahead frontier: the end of what readahead has been issued for (0: none).
    pub ra_next: u64,
    /// Current readahead window in bytes (0: not reading sequentially).
    pub ra_window: u64,
    /// Folios installed by readahead and not read yet (see module docs): their first hit
    /// must reach the policy, which keeps them apart until then.
    pub unread: KeySet,
}

/// What a state without a page map reads as.
static NO_PAGES: Pages = Pages {
    last_end: 0,
    huge: BTreeMap::new(),
    base: BTreeMap::new(),
    pinned: KeySet(None),
    ra_next: 0,
    ra_window: 0,
    unread: KeySet(None),
};

impl std::ops::Deref for FileState {
    type Target = Pages;

    fn deref(&self) -> &Pages {
        self.pages.as_deref().unwrap_or(&NO_PAGES)
    }
}

impl std::ops::DerefMut for FileState {
    fn deref_mut(&mut self) -> &mut Pages {
        self.pages.get_or_insert_with(Box::default)
    }
}

impl FileState {
    pub fn new(seq: InvalidationSeq) -> FileState {
        let mut st = FileState {
            seq_hint: 0,
            export: ExportSlot::None,
            pages: None,
        };
        st.set_seq(seq);
        st
    }

    pub fn seq(&self) -> InvalidationSeq {
        self.seq_hint & SEQ_MASK
    }

    pub fn set_seq(&mut self, seq: InvalidationSeq) {
        debug_assert!(seq <= SEQ_MASK, "sequence numbers fit 56 bits");
        self.seq_hint = (self.seq_hint & !SEQ_MASK) | (seq & SEQ_MASK);
    }

    /// The file's hint (`user.pagetier.hint`).
    pub fn hint(&self) -> Hint {
        Hint::ALL[(self.seq_hint >> SEQ_BITS) as usize]
    }

    pub fn set_hint(&mut self, hint: Hint) {
        let index = Hint::ALL
            .iter()
            .position(|h| *h == hint)
            .expect("every hint is listed");
        self.seq_hint = (self.seq_hint & SEQ_MASK) | ((index as u64) << SEQ_BITS);
    }

    /// Takes the page map and the read state out (empty ones if there were none).
    pub fn take_pages(&mut self) -> Pages {
        self.pages.take().map(|b| *b).unwrap_or_default()
    }

    /// Drops the box of an empty page map: one with no page, fill or key, and either no read
    /// state or an export (whose reads go to the kernel, so its read state means nothing).
    pub fn drop_empty_pages(&mut self) {
        let Some(p) = self.pages.as_deref() else {
            return;
        };
        let empty =
            p.huge.is_empty() && p.base.is_empty() && p.pinned.is_empty() && p.unread.is_empty();
        let no_read_state = p.last_end == 0 && p.ra_next == 0 && p.ra_window == 0;
        if empty && (no_read_state || self.is_exported()) {
            self.pages = None;
        }
    }

    /// Whether the state holds a page-map box (for the metadata estimate).
    pub fn has_pages_box(&self) -> bool {
        self.pages.is_some()
    }

    pub fn get(&self, key: &FolioKey) -> Option<&Entry> {
        if key.is_huge() {
            self.huge.get(&key.position())
        } else {
            self.base.get(&key.position())
        }
    }

    pub fn remove(&mut self, key: &FolioKey) -> Option<Entry> {
        self.unread.remove(key);
        if key.is_huge() {
            self.huge.remove(&key.position())
        } else {
            self.base.remove(&key.position())
        }
    }

    pub fn insert(&mut self, key: FolioKey, e: Entry) {
        if key.is_huge() {
            self.huge.insert(key.position(), e);
        } else {
            self.base.insert(key.position(), e);
        }
    }

    /// Base entries (ready or filling) of `extent`.
    pub fn base_in_extent(
        &self,
        extent: u64,
    ) -> std::collections::btree_map::Range<'_, u64, Entry> {
        let first = extent * SLOTS_PER_CHUNK as u64;
        self.base.range(first..first + SLOTS_PER_CHUNK as u64)
    }

    /// The chunk that holds this extent's base pages at their home slots (page `i` of the
    /// extent in slot `i`), judged by the first ready base page of the extent alone.
    ///
    /// One page decides because an extent collapses in place only when *every* page sits at
    /// its home slot: if the first ready page is elsewhere there is no home to aim for
    /// while it stays. Looking further (the old scan for any home page) cost a walk of up
    /// to 512 entries on every base fault in an extent that cannot collapse — 11% of the
    /// daemon's CPU on cold random 4 KiB reads.
    pub fn home_chunk(&self, extent: u64) -> Option<ChunkIndex> {
        let (page, folio) = self.base_in_extent(extent).find_map(|(page, e)| match e {
            Entry::Ready(f) => Some((page, f)),
            Entry::Filling(_) => None,
        })?;
        let loc = folio.loc();
        (loc.slot == Some((page % SLOTS_PER_CHUNK as u64) as u16)).then_some(loc.chunk)
    }

    /// (huge pages, base pages) that are resident (ready).
    pub fn resident_counts(&self) -> (u64, u64) {
        let ready = |m: &BTreeMap<u64, Entry>| {
            m.values().filter(|e| matches!(e, Entry::Ready(_))).count() as u64
        };
        (ready(&self.huge), ready(&self.base))
    }

    /// Whether the file has an export, live or idle.
    pub fn is_exported(&self) -> bool {
        !matches!(self.export, ExportSlot::None)
    }

    /// Pages (ready or filling) or an export: the tier may hold some of the file's bytes.
    pub fn holds_pages(&self) -> bool {
        self.is_exported() || !self.huge.is_empty() || !self.base.is_empty()
    }

    /// No pages, no fills and no hint: the state can be forgotten.
    pub fn is_empty(&self) -> bool {
        !self.holds_pages() && self.hint() == Hint::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's state stays small: a million small files keep a million of them.
    #[test]
    fn a_file_state_is_small_and_key_sets_behave_as_sets() {
        assert!(
            size_of::<FileState>() <= 32,
            "{} bytes",
            size_of::<FileState>()
        );
        assert_eq!(size_of::<ExportSlot>(), 16);
        let mut s = KeySet::default();
        assert!(s.is_empty() && !s.contains(&FolioKey::base(1, 2)));
        assert!(s.insert(FolioKey::base(1, 2)));
        assert!(!s.insert(FolioKey::base(1, 2)));
        assert!(s.insert(FolioKey::huge(1, 0)));
        assert!(s.contains(&FolioKey::base(1, 2)) && !s.is_empty());
        assert_eq!(s.iter().count(), 2);
        assert!(s.remove(&FolioKey::base(1, 2)) && !s.remove(&FolioKey::base(1, 2)));
        assert_eq!(s.drain().collect::<Vec<_>>(), [FolioKey::huge(1, 0)]);
        assert!(s.is_empty());
        s.insert(FolioKey::base(3, 3));
        s.remove(&FolioKey::base(3, 3));
        assert!(s.is_empty(), "the last removal frees the set");
    }
    use crate::tier::arena::Arena;

    /// The sequence number and the hint share a word without touching each other.
    #[test]
    fn the_sequence_number_and_the_hint_share_a_word() {
        let mut st = FileState::new(SEQ_MASK);
        assert_eq!((st.seq(), st.hint()), (SEQ_MASK, Hint::Normal));
        for hint in Hint::ALL {
            st.set_hint(hint);
            assert_eq!((st.seq(), st.hint()), (SEQ_MASK, hint));
            st.set_seq(7);
            assert_eq!((st.seq(), st.hint()), (7, hint));
            st.set_seq(SEQ_MASK);
        }
        st.set_hint(Hint::Normal);
        assert!(st.is_empty(), "no hint left: nothing to keep");
    }

    /// Reading a state without pages makes no box; writing makes one; an emptied map gives
    /// it back when nothing (no read state, or an export) needs it.
    #[test]
    fn the_page_map_box_exists_only_while_needed() {
        let a = Arena::new(1).unwrap();
        let mut st = FileState::new(1);
        assert!(st.get(&FolioKey::base(1, 0)).is_none() && st.base.is_empty());
        assert_eq!((st.last_end, st.resident_counts()), (0, (0, 0)));
        assert!(!st.has_pages_box(), "reads need no box");
        let f = Arc::new(a.alloc_base(1, None).pop().unwrap());
        st.insert(FolioKey::base(1, 0), Entry::Ready(f));
        st.last_end = 4096;
        assert!(st.has_pages_box());
        assert!(st.remove(&FolioKey::base(1, 0)).is_some());
        st.drop_empty_pages();
        assert!(st.has_pages_box(), "the read state is kept");
        st.last_end = 0;
        st.drop_empty_pages();
        assert!(!st.has_pages_box());
        st.unread.insert(FolioKey::base(1, 3));
        st.drop_empty_pages();
        assert!(st.has_pages_box(), "a key is kept");
        st.unread.clear();
        st.ra_window = 1 << 20;
        assert!(st.take_pages().ra_window == 1 << 20 && !st.has_pages_box());
        assert_eq!(st.take_pages().ra_window, 0, "taken from none: empty");
    }

    #[test]
    fn home_chunk_only_for_home_slots() {
        let a = Arena::new(2).unwrap();
        let mut st = FileState::new(1);
        let mut v = a.alloc_base(2, None); // slots 0 and 1
        let f1 = v.pop().unwrap();
        let f0 = v.pop().unwrap();
        // page 512 + 1 (extent 1, index 1) in slot 1: a home slot.
        st.insert(FolioKey::base(9, 513), Entry::Ready(Arc::new(f1)));
        assert_eq!(st.home_chunk(1), Some(0));
        // page 5 (extent 0, index 5) in slot 0: not home.
        st.insert(FolioKey::base(9, 5), Entry::Ready(Arc::new(f0)));
        assert_eq!(st.home_chunk(0), None);
        // Extent 1's first ready page (512, index 0) is not home (slot 2): the home page
        // 513 behind it no longer makes chunk 0 the extent's home.
        let f2 = a.alloc_base(1, Some((0, 2))).pop().unwrap();
        assert_eq!(f2.loc().slot, Some(2));
        st.insert(FolioKey::base(9, 512), Entry::Ready(Arc::new(f2)));
        assert_eq!(st.home_chunk(1), None);
        assert!(st.remove(&FolioKey::base(9, 512)).is_some());
        assert_eq!(st.home_chunk(1), Some(0));
        assert_eq!(st.resident_counts(), (0, 2));
        st.insert(FolioKey::huge(9, 4), Entry::Filling(77));
        assert!(matches!(
            st.get(&FolioKey::huge(9, 4)),
            Some(Entry::Filling(77))
        ));
        assert_eq!(st.resident_counts(), (0, 2));
        assert_eq!(st.base_in_extent(1).count(), 1);
        assert!(st.remove(&FolioKey::base(9, 5)).is_some());
        assert!(!st.is_empty());
    }
}
