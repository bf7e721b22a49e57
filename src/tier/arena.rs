//! The arena: one anonymous memory mapping carved into 2 MiB chunks.
//!
//! A chunk is `Free`, holds one huge page (`Huge`), or is a base-page chunk holding up to
//! 512 4 KiB slots (`Base`, with a used-slot bitmap). Base slots are packed: allocation takes
//! the lowest free slot of the lowest partly used base chunk before opening a free chunk, so
//! free chunks stay available for huge pages.
//!
//! Invariants (all under the single `alloc` mutex, a leaf lock: nothing is locked while it
//! is held):
//! - every slot/chunk handed out is owned by exactly one live [`Folio`]; it returns to the
//!   free lists only when that folio is dropped (or converted by [`Arena::split`] /
//!   [`Arena::collapse`], which consume the folios they replace);
//! - `used_slots` (4 KiB units) equals 512 x huge chunks + set bits of base chunks +
//!   `lent_slots`, and never exceeds `512 x chunk_count`: capacity cannot be exceeded;
//! - `lent_slots` is capacity lent to device copies in shared memory (`shmem.rs`,
//!   `export.rs`): a folio *lent* with [`Arena::lend`] gives its memory back to the free
//!   lists (and to the kernel, `MADV_DONTNEED`) but not its capacity, which the copy now
//!   holds until [`Arena::unlend`]. Allocation checks capacity (`used_slots`) besides free
//!   chunks and slots, since lent capacity has no chunk. Only [`Arena::lend_over`] (a copy
//!   readers are served from outgrew the free capacity) may push `used_slots` past the
//!   capacity, and then nothing is allocated until it is back under;
//! - `partial` holds exactly the base chunks with 1..=511 used slots; `free` exactly the
//!   `Free` chunks.
//!
//! The mapping's memory itself is only touched through a [`Folio`] (see `folio.rs`).

use std::collections::BTreeSet;

use memmap2::{MmapOptions, MmapRaw};

use crate::tier::folio::{Folio, FolioLoc};
use crate::tier::sync::{Arc, Mutex, lock};
use crate::tier::types::{HUGE_PAGE_SIZE, PAGE_SIZE, SLOTS_PER_CHUNK, TierError};

/// Chunk number inside the arena.
pub type ChunkIndex = u32;
/// Slot number (0..512) inside a base-page chunk.
pub type SlotIndex = u16;

const WORDS: usize = SLOTS_PER_CHUNK / 64;

#[derive(Clone, Debug, PartialEq, Eq)]
enum ChunkState {
    Free,
    Huge,
    Base { used: [u64; WORDS], count: u16 },
}

struct Alloc {
    chunks: Vec<ChunkState>,
    /// Free chunks, used as a stack.
    free: Vec<ChunkIndex>,
    /// Base chunks with at least one free and one used slot.
    partial: BTreeSet<ChunkIndex>,
    used_slots: u64,
    /// Capacity lent to shared-memory copies (see module docs); part of `used_slots`.
    lent_slots: u64,
}

/// What an eviction round tries to make available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// One free chunk (for a huge page).
    Chunk,
    /// This many free base slots.
    Slots(usize),
}

pub struct Arena {
    mem: MmapRaw,
    chunk_count: u32,
    alloc: Mutex<Alloc>,
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

impl Arena {
    /// Maps `chunk_count` chunks of anonymous memory (lazily backed by the kernel).
    pub fn new(chunk_count: u32) -> Result<Arc<Arena>, TierError> {
        let bytes = chunk_count as u64 * HUGE_PAGE_SIZE;
        let len =
            usize::try_from(bytes).map_err(|_| TierError::CapacityTooLarge { capacity: bytes })?;
        let mem: MmapRaw = MmapOptions::new()
            .len(len)
            .map_anon()
            .map_err(TierError::Map)?
            .into();
        #[cfg(target_os = "linux")]
        if let Err(e) = mem.advise(memmap2::Advice::HugePage) {
            tracing::debug!(error = %e, "madvise(MADV_HUGEPAGE) on the device arena failed");
        }
        Ok(Arc::new(Arena {
            mem,
            chunk_count,
            alloc: Mutex::new(Alloc {
                chunks: vec![ChunkState::Free; chunk_count as usize],
                free: (0..chunk_count).rev().collect(),
                partial: BTreeSet::new(),
                used_slots: 0,
                lent_slots: 0,
            }),
        }))
    }

    /// Slots (4 KiB units) currently owned by folios, including in-flight fills.
    pub fn used_slots(&self) -> u64 {
        lock(&self.alloc).used_slots
    }

    /// True if `need` can be met right now.
    pub fn satisfies(&self, need: Need) -> bool {
        let a = lock(&self.alloc);
        match need {
            Need::Chunk => !a.free.is_empty() && a.room() >= SLOTS_PER_CHUNK as u64,
            Need::Slots(n) => a.room() >= n as u64,
        }
    }

    /// Bytes of allocator metadata (chunk table and free lists).
    pub fn metadata_bytes(&self) -> u64 {
        let a = lock(&self.alloc);
        (a.chunks.capacity() * size_of::<ChunkState>()
            + a.free.capacity() * size_of::<ChunkIndex>()
            + a.partial.len() * 2 * size_of::<ChunkIndex>()
            + size_of::<Arena>()) as u64
    }

    /// Pointer to the first byte of `loc`. Valid for the folio length of `loc`.
    pub(super) fn ptr(&self, loc: FolioLoc) -> *mut u8 {
        let off = loc.chunk as usize * HUGE_PAGE_SIZE as usize
            + loc.slot.map_or(0, |s| s as usize * PAGE_SIZE as usize);
        debug_assert!(loc.chunk < self.chunk_count);
        // Pointer arithmetic only; `off` is inside the mapping because chunk < chunk_count.
        self.mem.as_mut_ptr().wrapping_add(off)
    }

    /// Takes a free chunk as a huge page.
    pub fn alloc_huge(self: &Arc<Self>) -> Option<Folio> {
        let mut a = lock(&self.alloc);
        if a.room() < SLOTS_PER_CHUNK as u64 {
            return None;
        }
        let c = a.free.pop()?;
        a.chunks[c as usize] = ChunkState::Huge;
        a.used_slots += SLOTS_PER_CHUNK as u64;
        drop(a);
        // SAFETY: chunk `c` was just moved from the free list to `Huge` under the alloc
        // lock, so no other folio owns any of its bytes.
        Some(unsafe {
            Folio::from_owned(
                self.clone(),
                FolioLoc {
                    chunk: c,
                    slot: None,
                },
            )
        })
    }

    /// Allocates up to `want` base slots. Slot `i` of the result goes to `home.0` slot
    /// `home.1 + i` when that slot is free (so an extent can later collapse in place);
    /// otherwise to the lowest free slot of the lowest partly used chunk, or a fresh chunk.
    /// Returns fewer than `want` (maybe none) when the arena is full; stops at the first
    /// slot it cannot get so the result maps to a prefix of the request.
    pub fn alloc_base(
        self: &Arc<Self>,
        want: usize,
        home: Option<(ChunkIndex, SlotIndex)>,
    ) -> Vec<Folio> {
        let mut a = lock(&self.alloc);
        let mut locs = Vec::with_capacity(want);
        let want = want.min(a.room() as usize);
        for i in 0..want {
            let homed = home.and_then(|(c, s)| {
                let s = s as usize + i;
                (s < SLOTS_PER_CHUNK && a.try_take_slot(c, s as SlotIndex))
                    .then_some((c, s as SlotIndex))
            });
            match homed.or_else(|| a.take_any_slot()) {
                Some((c, s)) => locs.push(FolioLoc {
                    chunk: c,
                    slot: Some(s),
                }),
                None => break,
            }
        }
        drop(a);
        locs.into_iter()
            // SAFETY: each location was marked used under the alloc lock just above and
            // was free before, so the new folio is its only owner.
            .map(|loc| unsafe { Folio::from_owned(self.clone(), loc) })
            .collect()
    }

    /// Returns a folio's memory to the free lists. Called only by `Folio::drop`.
    pub(super) fn release(&self, loc: FolioLoc) {
        let mut a = lock(&self.alloc);
        match loc.slot {
            None => {
                debug_assert_eq!(a.chunks[loc.chunk as usize], ChunkState::Huge);
                a.chunks[loc.chunk as usize] = ChunkState::Free;
                a.free.push(loc.chunk);
                a.used_slots -= SLOTS_PER_CHUNK as u64;
            }
            Some(s) => a.free_slot(loc.chunk, s),
        }
    }

    /// Capacity lent to shared-memory copies, in slots.
    pub fn lent_slots(&self) -> u64 {
        lock(&self.alloc).lent_slots
    }

    /// Lends `folio`'s capacity to a shared-memory copy: its memory returns to the free
    /// lists and to the kernel, its slots stay counted as used (module docs). Returns the
    /// slots lent.
    pub fn lend(&self, folio: Folio) -> u64 {
        let loc = folio.disown();
        let (off, len) = self.range(loc);
        let slots = (len as u64) / PAGE_SIZE;
        // The memory goes back to the kernel *before* the slots go back to the free lists:
        // once free, a fill on another thread may take a slot and write a page into it, and
        // a `MADV_DONTNEED` after that would zero the new page under its owner (whole pages
        // of zeros read through the device view, under pressure).
        // SAFETY: the range belonged to `folio` alone, which was consumed above, and it is
        // not yet in the free lists: nothing references its bytes, and nothing can until
        // the lock below frees it; a later owner writes before it reads.
        let freed = unsafe {
            self.mem
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, len)
        };
        if let Err(e) = freed {
            tracing::debug!(error = %e, "madvise(MADV_DONTNEED) on lent arena memory failed");
        }
        let mut a = lock(&self.alloc);
        match loc.slot {
            None => {
                a.chunks[loc.chunk as usize] = ChunkState::Free;
                a.free.push(loc.chunk);
            }
            Some(s) => {
                a.free_slot(loc.chunk, s);
                a.used_slots += 1;
            }
        }
        a.lent_slots += slots;
        slots
    }

    /// Takes `slots` of free capacity as lent (a copy grows). False if there is no room.
    pub fn lend_room(&self, slots: u64) -> bool {
        let mut a = lock(&self.alloc);
        if a.room() < slots {
            return false;
        }
        a.used_slots += slots;
        a.lent_slots += slots;
        true
    }

    /// Takes `slots` as lent even past the capacity: a copy that readers are served from
    /// grew and nothing could be evicted; stale bytes would be worse (`export.rs`).
    pub fn lend_over(&self, slots: u64) {
        let mut a = lock(&self.alloc);
        a.used_slots += slots;
        a.lent_slots += slots;
    }

    /// Gives back `slots` of lent capacity (a copy shrank or was dropped).
    pub fn unlend(&self, slots: u64) {
        let mut a = lock(&self.alloc);
        debug_assert!(slots <= a.lent_slots);
        let slots = slots.min(a.lent_slots);
        a.lent_slots -= slots;
        a.used_slots -= slots;
    }

    /// Byte offset and length of `loc` in the mapping.
    fn range(&self, loc: FolioLoc) -> (usize, usize) {
        let off = loc.chunk as usize * HUGE_PAGE_SIZE as usize
            + loc.slot.map_or(0, |s| s as usize * PAGE_SIZE as usize);
        let len = if loc.slot.is_some() {
            PAGE_SIZE
        } else {
            HUGE_PAGE_SIZE
        };
        (off, len as usize)
    }

    /// Splits a huge page: pages whose bit is set in `drop_mask` are freed, every other page
    /// `i` becomes a base folio in slot `i` of the same chunk. Returns `(page_index, folio)`.
    pub fn split(self: &Arc<Self>, huge: Folio, drop_mask: &[u64; WORDS]) -> Vec<(usize, Folio)> {
        debug_assert!(huge.loc().slot.is_none());
        // The huge folio's ownership moves into the base folios: disown it (no release).
        let chunk = huge.disown().chunk;
        let mut used = [0u64; WORDS];
        for (u, d) in used.iter_mut().zip(drop_mask) {
            *u = !d;
        }
        let count: u32 = used.iter().map(|w| w.count_ones()).sum();
        {
            let mut a = lock(&self.alloc);
            a.used_slots -= SLOTS_PER_CHUNK as u64 - count as u64;
            if count == 0 {
                a.chunks[chunk as usize] = ChunkState::Free;
                a.free.push(chunk);
            } else {
                a.chunks[chunk as usize] = ChunkState::Base {
                    used,
                    count: count as u16,
                };
                if (count as usize) < SLOTS_PER_CHUNK {
                    a.partial.insert(chunk);
                }
            }
        }
        (0..SLOTS_PER_CHUNK)
            .filter(|i| used[i / 64] & (1 << (i % 64)) != 0)
            .map(|i| {
                let loc = FolioLoc {
                    chunk,
                    slot: Some(i as SlotIndex),
                };
                // SAFETY: the huge folio owning the whole chunk is consumed (never dropped,
                // so never released); its kept slots pass one-to-one to these base folios.
                (i, unsafe { Folio::from_owned(self.clone(), loc) })
            })
            .collect()
    }

    /// Collapses 512 base folios, `parts[i]` in slot `i` of one chunk, into a huge folio.
    /// Returns the parts unchanged if they do not form such a chunk.
    pub fn collapse(self: &Arc<Self>, parts: Vec<Folio>) -> Result<Folio, Vec<Folio>> {
        let chunk = match parts.first() {
            Some(f) => f.loc().chunk,
            None => return Err(parts),
        };
        let ok = parts.len() == SLOTS_PER_CHUNK
            && parts.iter().enumerate().all(|(i, f)| {
                f.loc()
                    == FolioLoc {
                        chunk,
                        slot: Some(i as SlotIndex),
                    }
            });
        if !ok {
            return Err(parts);
        }
        {
            let mut a = lock(&self.alloc);
            debug_assert!(matches!(
                a.chunks[chunk as usize],
                ChunkState::Base { count: 512, .. }
            ));
            a.chunks[chunk as usize] = ChunkState::Huge;
        }
        for p in parts {
            // Ownership of each slot moves into the huge folio below: no release.
            p.disown();
        }
        // SAFETY: the 512 base folios that owned every slot of `chunk` were consumed above
        // without releasing, so the chunk's only owner is the folio created here.
        Ok(unsafe { Folio::from_owned(self.clone(), FolioLoc { chunk, slot: None }) })
    }

    #[cfg(test)]
    pub fn check_invariants(&self) {
        let a = lock(&self.alloc);
        let mut used = 0u64;
        for (i, c) in a.chunks.iter().enumerate() {
            let i = i as ChunkIndex;
            match c {
                ChunkState::Free => assert!(a.free.contains(&i) && !a.partial.contains(&i)),
                ChunkState::Huge => {
                    used += 512;
                    assert!(!a.free.contains(&i) && !a.partial.contains(&i));
                }
                ChunkState::Base { used: bits, count } => {
                    let n: u32 = bits.iter().map(|w| w.count_ones()).sum();
                    assert_eq!(n, *count as u32);
                    assert!(n > 0 && !a.free.contains(&i));
                    assert_eq!(a.partial.contains(&i), (n as usize) < SLOTS_PER_CHUNK);
                    used += n as u64;
                }
            }
        }
        assert_eq!(used + a.lent_slots, a.used_slots);
        assert!(used <= a.chunk_count_slots());
    }
}

impl Alloc {
    fn chunk_count_slots(&self) -> u64 {
        self.chunks.len() as u64 * SLOTS_PER_CHUNK as u64
    }

    /// Capacity not used by folios or lent, in slots.
    fn room(&self) -> u64 {
        self.chunk_count_slots().saturating_sub(self.used_slots)
    }

    fn try_take_slot(&mut self, c: ChunkIndex, s: SlotIndex) -> bool {
        let ChunkState::Base { used, count } = &mut self.chunks[c as usize] else {
            return false;
        };
        let (w, b) = (s as usize / 64, s as usize % 64);
        if used[w] & (1 << b) != 0 {
            return false;
        }
        used[w] |= 1 << b;
        *count += 1;
        if *count as usize == SLOTS_PER_CHUNK {
            self.partial.remove(&c);
        }
        self.used_slots += 1;
        true
    }

    fn take_any_slot(&mut self) -> Option<(ChunkIndex, SlotIndex)> {
        let c = match self.partial.first() {
            Some(&c) => c,
            None => {
                let c = self.free.pop()?;
                self.chunks[c as usize] = ChunkState::Base {
                    used: [0; WORDS],
                    count: 0,
                };
                self.partial.insert(c);
                c
            }
        };
        let ChunkState::Base { used, .. } = &self.chunks[c as usize] else {
            unreachable!("partial holds only base chunks")
        };
        let (w, word) = used.iter().enumerate().find(|(_, w)| **w != u64::MAX)?;
        let s = (w * 64 + (!word).trailing_zeros() as usize) as SlotIndex;
        let took = self.try_take_slot(c, s);
        debug_assert!(took);
        Some((c, s))
    }

    fn free_slot(&mut self, c: ChunkIndex, s: SlotIndex) {
        let ChunkState::Base { used, count } = &mut self.chunks[c as usize] else {
            unreachable!("base folio in a non-base chunk")
        };
        let (w, b) = (s as usize / 64, s as usize % 64);
        debug_assert!(used[w] & (1 << b) != 0);
        used[w] &= !(1 << b);
        *count -= 1;
        self.used_slots -= 1;
        if *count == 0 {
            self.chunks[c as usize] = ChunkState::Free;
            self.partial.remove(&c);
            self.free.push(c);
        } else {
            self.partial.insert(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_and_base_share_capacity() {
        let a = Arena::new(2).unwrap();
        let h = a.alloc_huge().unwrap();
        let b = a.alloc_base(600, None);
        assert_eq!(b.len(), 512, "only one chunk left");
        assert!(a.alloc_huge().is_none());
        assert_eq!(a.used_slots(), 1024);
        a.check_invariants();
        drop(h);
        assert!(a.satisfies(Need::Chunk));
        drop(b);
        assert_eq!(a.used_slots(), 0);
        a.check_invariants();
    }

    #[test]
    fn base_slots_pack_and_home_hint_works() {
        let a = Arena::new(3).unwrap();
        let x = a.alloc_base(3, None);
        let locs: Vec<_> = x.iter().map(|f| f.loc()).collect();
        assert!(locs.iter().all(|l| l.chunk == locs[0].chunk));
        assert_eq!(
            locs.iter().map(|l| l.slot.unwrap()).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let y = a.alloc_base(2, Some((locs[0].chunk, 100)));
        assert_eq!(y[0].loc().slot, Some(100));
        assert_eq!(y[1].loc().slot, Some(101));
        // Home slot taken: falls back to the lowest free slot.
        let z = a.alloc_base(1, Some((locs[0].chunk, 100)));
        assert_eq!(z[0].loc().slot, Some(3));
        a.check_invariants();
        // Base pages stay in one chunk: two chunks remain free for huge pages.
        assert!(a.alloc_huge().is_some());
        assert!(a.alloc_huge().is_some());
    }

    #[test]
    fn split_then_collapse_round_trip() {
        let a = Arena::new(1).unwrap();
        let h = a.alloc_huge().unwrap();
        let mut mask = [0u64; WORDS];
        mask[0] = 0b110; // drop pages 1 and 2
        let parts = a.split(h, &mask);
        assert_eq!(parts.len(), 510);
        assert_eq!(a.used_slots(), 510);
        a.check_invariants();
        let mut parts: Vec<Folio> = parts.into_iter().map(|(_, f)| f).collect();
        let refill = a.alloc_base(2, Some((0, 1)));
        assert_eq!(
            refill.iter().map(|f| f.loc().slot).collect::<Vec<_>>(),
            vec![Some(1), Some(2)]
        );
        parts.splice(1..1, refill);
        let huge = a.collapse(parts).map_err(|_| ()).unwrap();
        assert!(huge.is_huge());
        assert_eq!(a.used_slots(), 512);
        a.check_invariants();
        drop(huge);
        assert_eq!(a.used_slots(), 0);
        a.check_invariants();
    }

    #[test]
    fn collapse_rejects_misplaced_parts() {
        let a = Arena::new(2).unwrap();
        let parts = a.alloc_base(511, None);
        let back = a.collapse(parts).unwrap_err();
        assert_eq!(back.len(), 511);
    }

    #[test]
    fn lent_capacity_stays_used_until_given_back() {
        let a = Arena::new(2).unwrap();
        let h = a.alloc_huge().unwrap();
        let b = a.alloc_base(3, None);
        assert_eq!(a.lend(h), 512);
        for f in b {
            assert_eq!(a.lend(f), 1);
        }
        a.check_invariants();
        assert_eq!(a.used_slots(), 515);
        assert_eq!(a.lent_slots(), 515);
        // Two chunks are free, but only 509 slots of capacity: no huge page fits.
        assert!(!a.satisfies(Need::Chunk));
        assert!(a.alloc_huge().is_none());
        let rest = a.alloc_base(600, None);
        assert_eq!(rest.len(), 509);
        assert!(!a.lend_room(1));
        a.unlend(515);
        a.check_invariants();
        assert_eq!(a.used_slots(), 509);
        assert!(a.lend_room(3));
        assert_eq!(a.lent_slots(), 3);
        a.check_invariants();
    }

    #[test]
    fn meminfo_is_readable() {
        assert!(mem_available().unwrap_or(1) > 0);
    }
}
