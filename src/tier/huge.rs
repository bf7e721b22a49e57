//! Huge pages from base pages and back: a huge page partly covered by an invalidation is
//! *split* (the covered base pages are freed, the others stay resident as base pages in the
//! same chunk; `splits` counts these); a fill that completes all 512 pages of an extent at
//! their home slots of one chunk *collapses* them into one huge page (`collapses`).
//! Both run under the file's shard lock; neither frees memory under it.

use std::ops::Range;

use crate::tier::DeviceTier;
use crate::tier::folio::{self, Folio};
use crate::tier::map::{Entry, FileState};
use crate::tier::policy::FolioKey;
use crate::tier::stats::{add, sub};
use crate::tier::sync::{Arc, lock};
use crate::tier::types::{FileId, FolioId, SLOTS_PER_CHUNK};

impl DeviceTier {
    /// If all 512 pages of `ext` are resident unpinned base pages at their home slots of one
    /// chunk, turns them into one huge page. Caller holds the shard lock.
    pub(super) fn try_collapse(&self, st: &mut FileState, file: FileId, ext: u64) {
        let mut chunk = None;
        let mut n = 0;
        for (&p, e) in st.base_in_extent(ext) {
            let Entry::Ready(f) = e else { return };
            let loc = f.loc();
            let c = *chunk.get_or_insert(loc.chunk);
            if Arc::strong_count(f) != 1
                || loc.chunk != c
                || loc.slot != Some((p % SLOTS_PER_CHUNK as u64) as u16)
            {
                return;
            }
            n += 1;
        }
        if n != SLOTS_PER_CHUNK {
            return;
        }
        let first = ext * SLOTS_PER_CHUNK as u64;
        // Pinned base pages (the `pin` hint) must stay pinned in the huge page: take the pin
        // budget for the rest of the extent first, or do not collapse (a readahead may have
        // filled some pages over the budget, and the huge page would lose the others' pin).
        let pinned_parts = (first..first + SLOTS_PER_CHUNK as u64)
            .filter(|p| st.pinned.contains(&FolioKey::base(file, *p)))
            .count() as u64;
        let extra = SLOTS_PER_CHUNK as u64 - pinned_parts;
        if pinned_parts > 0 && !self.reserve_pin(extra) {
            return;
        }
        let mut parts = Vec::with_capacity(SLOTS_PER_CHUNK);
        let mut ids = Vec::with_capacity(SLOTS_PER_CHUNK);
        for p in first..first + SLOTS_PER_CHUNK as u64 {
            let Some(Entry::Ready(f)) = st.base.remove(&p) else {
                unreachable!("checked above")
            };
            // Unpinned (count 1) under the shard lock, and pins are only taken under it.
            let f = Arc::try_unwrap(f).unwrap_or_else(|_| unreachable!("unpinned folio"));
            ids.push(f.id());
            parts.push(f);
        }
        match self.arena.collapse(parts) {
            Ok(huge) => {
                let mut policy = lock(&self.policy);
                let key = FolioKey::huge(file, ext);
                if pinned_parts > 0 {
                    // The parts' pins and the reservation above make the huge page's.
                    for (i, id) in ids.iter().enumerate() {
                        let part = FolioKey::base(file, first + i as u64);
                        if !st.pinned.remove(&part) {
                            policy.remove(&part, *id);
                        }
                    }
                    st.pinned.insert(key);
                } else {
                    for (i, id) in ids.iter().enumerate() {
                        let part = FolioKey::base(file, first + i as u64);
                        self.untrack(st, &mut **policy, &part, *id);
                    }
                    self.track(st, &mut **policy, key, huge.id(), false);
                }
                drop(policy);
                st.huge.insert(ext, Entry::Ready(Arc::new(huge)));
                sub(&self.stats.resident_base, SLOTS_PER_CHUNK as u64);
                add(&self.stats.resident_huge, 1);
                add(&self.stats.collapses, 1);
            }
            Err(parts) => {
                if pinned_parts > 0 {
                    sub(&self.pinned_slots, extra);
                }
                for (i, f) in parts.into_iter().enumerate() {
                    st.base.insert(first + i as u64, Entry::Ready(Arc::new(f)));
                }
            }
        }
    }

    /// Splits the huge page `folio` of extent `ext` (already removed from the page map):
    /// the base pages in `covered` are freed, the others are installed as base pages in the
    /// same chunk; returns their keys, for the caller to track. Caller holds the shard lock.
    /// Waits for readers' pins to drain first: readers pin only under this shard lock (held)
    /// and never block while pinned, so they drain promptly.
    pub(super) fn split_huge(
        &self,
        st: &mut FileState,
        file: FileId,
        ext: u64,
        folio: Arc<Folio>,
        covered: Range<u64>,
    ) -> Vec<(FolioKey, FolioId)> {
        let folio = folio::unpinned(folio);
        let first = ext * SLOTS_PER_CHUNK as u64;
        let mut mask = [0u64; SLOTS_PER_CHUNK / 64];
        for p in covered {
            let i = (p - first) as usize;
            mask[i / 64] |= 1 << (i % 64);
        }
        let mut kept = Vec::new();
        for (i, bf) in self.arena.split(folio, &mask) {
            let k = FolioKey::base(file, first + i as u64);
            kept.push((k, bf.id()));
            st.base.insert(first + i as u64, Entry::Ready(Arc::new(bf)));
        }
        kept
    }
}
