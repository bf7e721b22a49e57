//! Folios: the device copies of file pages.
//!
//! A [`Folio`] is either a huge page (an aligned 2 MiB extent of one file, occupying a whole
//! chunk) or a base page (4 KiB, one slot of a base-page chunk). A `Folio` value *owns* its
//! arena memory: the arena hands each slot to exactly one folio and takes it back only in
//! `Folio::drop` (or through `Arena::split`/`Arena::collapse`, which consume folios via
//! [`Folio::disown`]). Therefore:
//! - `&mut Folio` is exclusive access to its bytes (used while filling, before the folio is
//!   published) — [`Folio::bytes_mut`];
//! - `&Folio` is shared, read-only access — [`Folio::bytes`]. Once published in a page map a
//!   folio lives in an `Arc` and is never written again; a reader holding an `Arc` clone
//!   (a *pin*) keeps the memory from being freed or reused until the clone is dropped.

use crate::tier::arena::{Arena, ChunkIndex, SlotIndex};
use crate::tier::sync::{Arc, IdCounter, Ordering, thread};
use crate::tier::types::FolioId;
use crate::tier::types::{HUGE_PAGE_SIZE, PAGE_SIZE};

static NEXT_FOLIO_ID: IdCounter = IdCounter::new(1);

/// Where a folio lives: a whole chunk (`slot == None`) or one base slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FolioLoc {
    pub chunk: ChunkIndex,
    pub slot: Option<SlotIndex>,
}

pub struct Folio {
    /// `None` only transiently inside `disown`/`drop`.
    arena: Option<Arc<Arena>>,
    id: FolioId,
    loc: FolioLoc,
}

impl Folio {
    /// Wraps memory the caller owns.
    ///
    /// # Safety
    /// `loc` must have just been taken from the arena's free lists (or from folios consumed
    /// with [`Folio::disown`]) so that no other live folio covers any of its bytes.
    pub(super) unsafe fn from_owned(arena: Arc<Arena>, loc: FolioLoc) -> Folio {
        Folio {
            arena: Some(arena),
            id: NEXT_FOLIO_ID.fetch_add(1, Ordering::Relaxed),
            loc,
        }
    }

    pub fn id(&self) -> FolioId {
        self.id
    }

    pub fn loc(&self) -> FolioLoc {
        self.loc
    }

    pub fn is_huge(&self) -> bool {
        self.loc.slot.is_none()
    }

    pub fn len(&self) -> usize {
        if self.is_huge() {
            HUGE_PAGE_SIZE as usize
        } else {
            PAGE_SIZE as usize
        }
    }

    fn arena(&self) -> &Arena {
        self.arena.as_deref().expect("live folio has an arena")
    }

    /// Shared view of the folio's bytes.
    pub fn bytes(&self) -> &[u8] {
        let ptr = self.arena().ptr(self.loc);
        // SAFETY: `ptr..ptr+len` lies inside the arena mapping (chunk < chunk_count, slot <
        // 512) and is owned by this folio alone (module invariant). Writes happen only through
        // `bytes_mut`, which needs `&mut self`, so none can overlap this shared borrow; the
        // memory stays mapped while the folio's `Arc<Arena>` lives.
        unsafe { std::slice::from_raw_parts(ptr, self.len()) }
    }

    /// Exclusive view of the folio's bytes (used while filling, before publication).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let ptr = self.arena().ptr(self.loc);
        // SAFETY: as in `bytes`, the range is mapped and owned by this folio alone; `&mut self`
        // guarantees no other reference to the folio — hence to its bytes — exists.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.len()) }
    }

    /// Consumes the folio *without* returning its memory to the arena; the caller (the arena's
    /// split/collapse) hands the memory to new folios.
    pub(super) fn disown(mut self) -> FolioLoc {
        self.arena = None;
        self.loc
    }
}

/// Waits until no reader pins `f` (readers pin only for one reply, never while blocking),
/// then owns it: for the split of a huge page and the lending of a migrated folio.
pub(super) fn unpinned(mut f: Arc<Folio>) -> Folio {
    loop {
        match Arc::try_unwrap(f) {
            Ok(f) => return f,
            Err(again) => {
                f = again;
                thread::yield_now();
            }
        }
    }
}

/// Exclusive view of a run of base folios that sit in consecutive slots of one chunk, as one
/// slice (so one `read_at` can fill them). Returns `None` if they are not consecutive.
pub fn contiguous_mut(folios: &mut [Folio]) -> Option<&mut [u8]> {
    let first = folios.first()?;
    let (chunk, s0) = (first.loc.chunk, first.loc.slot?);
    let consecutive = folios.iter().enumerate().all(|(i, f)| {
        f.loc
            == FolioLoc {
                chunk,
                slot: Some(s0 + i as SlotIndex),
            }
    });
    if !consecutive {
        return None;
    }
    let ptr = first.arena().ptr(first.loc);
    let len = folios.len() * PAGE_SIZE as usize;
    // SAFETY: the folios occupy consecutive slots of one chunk, so the range is one piece of
    // the mapping, and each slot is owned by one of these folios alone; the `&mut` borrow of
    // all of them for the slice's lifetime excludes every other access.
    Some(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

impl Drop for Folio {
    fn drop(&mut self) {
        if let Some(arena) = self.arena.take() {
            arena.release(self.loc);
        }
    }
}

impl std::fmt::Debug for Folio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Folio")
            .field("id", &self.id)
            .field("loc", &self.loc)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_private_per_folio() {
        let a = Arena::new(1).unwrap();
        let mut v = a.alloc_base(3, None);
        for (i, f) in v.iter_mut().enumerate() {
            f.bytes_mut().fill(i as u8 + 1);
        }
        for (i, f) in v.iter().enumerate() {
            assert!(f.bytes().iter().all(|&b| b == i as u8 + 1));
            assert_eq!(f.len(), 4096);
        }
        let run = contiguous_mut(&mut v).unwrap();
        assert_eq!(run.len(), 3 * 4096);
        assert_eq!(run[4096], 2);
        assert_ne!(v[0].id(), v[1].id());
    }

    #[test]
    fn non_consecutive_run_is_refused() {
        let a = Arena::new(1).unwrap();
        let mut v = a.alloc_base(3, None);
        v.swap(0, 2);
        assert!(contiguous_mut(&mut v).is_none());
    }
}
