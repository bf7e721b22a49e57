//! Invalidation: dropping exactly the device pages a host modification touched.
//!
//! [`DeviceTier::invalidate_range`] drops every page overlapping the byte range. A partly
//! covered huge page is *split*: the covered base pages are freed, the others stay resident
//! as base pages in the same chunk (`splits` counts these). Returned counts are device pages:
//!
//! Every invalidation bumps the file's [`InvalidationSeq`] (from a tier-wide counter, so
//! values never repeat): a fill that started before it is discarded when it tries to install
//! (`fault.rs`), and so is a queued readahead job. Removed folios are freed after the shard
//! lock is dropped.

use crate::tier::DeviceTier;
use crate::tier::folio::Folio;
use crate::tier::hint::Hint;
use crate::tier::map::{Entry, FileState};
use crate::tier::policy::FolioKey;
use crate::tier::reclaim::slots_of;
use crate::tier::stats::{add, sub};
use crate::tier::sync::{Arc, lock, thread};
use crate::tier::types::{FileId, FolioId, InvalidationCause, PAGE_SIZE, SLOTS_PER_CHUNK};

impl DeviceTier {
    /// Drops exactly the device pages overlapping `[offset, offset + len)` (`len == u64::MAX`:
    /// to the end of the file), splitting partly covered huge pages, and bumps the file's
    /// invalidation sequence so fills that started earlier are discarded. Returns device
    /// pages dropped (a huge page counts 1, a split counts the base pages it dropped).
    pub fn invalidate_range(
        &self,
        file: FileId,
        offset: u64,
        len: u64,
        cause: InvalidationCause,
    ) -> u64 {
        if len == 0 {
            return 0;
        }
        let end = offset.saturating_add(len);
        let first_page = offset / PAGE_SIZE;
        let end_page = if end == u64::MAX {
            u64::MAX
        } else {
            end.div_ceil(PAGE_SIZE)
        };
        let per = SLOTS_PER_CHUNK as u64;
        let shard = self.shard(file);
        let mut g = lock(&shard.files);
        let Some(st) = g.get_mut(&file) else { return 0 };
        st.seq = self.next_seq();
        let mut garbage: Vec<Arc<Folio>> = Vec::new();
        let mut gone: Vec<(FolioKey, FolioId)> = Vec::new();
        let mut added: Vec<(FolioKey, FolioId)> = Vec::new();
        let mut dropped = 0u64;
        let mut splits = 0u64;

        let pages: Vec<u64> = st
            .base
            .range(first_page..end_page)
            .map(|(&p, _)| p)
            .collect();
        for p in pages {
            if let Some(Entry::Ready(f)) = st.base.remove(&p) {
                gone.push((FolioKey::base(file, p), f.id()));
                garbage.push(f);
                dropped += 1;
            }
        }
        let end_ext = if end_page == u64::MAX {
            u64::MAX
        } else {
            end_page.div_ceil(per)
        };
        let exts: Vec<u64> = st
            .huge
            .range(first_page / per..end_ext)
            .map(|(&e, _)| e)
            .collect();
        for e in exts {
            let Some(Entry::Ready(f)) = st.huge.remove(&e) else {
                continue;
            };
            gone.push((FolioKey::huge(file, e), f.id()));
            let (es, ee) = (e * per, e * per + per);
            let (cs, ce) = (first_page.max(es), end_page.min(ee));
            if cs == es && ce == ee {
                garbage.push(f);
                dropped += 1;
                continue;
            }
            // Split. Readers pin only under this shard lock (held) and never block while
            // pinned, so the pins drain promptly.
            let mut f = f;
            let folio = loop {
                match Arc::try_unwrap(f) {
                    Ok(folio) => break folio,
                    Err(again) => {
                        f = again;
                        thread::yield_now();
                    }
                }
            };
            let mut mask = [0u64; SLOTS_PER_CHUNK / 64];
            for p in cs..ce {
                let i = (p - es) as usize;
                mask[i / 64] |= 1 << (i % 64);
            }
            for (i, bf) in self.arena.split(folio, &mask) {
                let k = FolioKey::base(file, es + i as u64);
                added.push((k, bf.id()));
                st.base.insert(es + i as u64, Entry::Ready(Arc::new(bf)));
            }
            dropped += ce - cs;
            splits += 1;
        }
        if !gone.is_empty() || !added.is_empty() {
            let mut policy = lock(&self.policy);
            for (k, id) in &gone {
                self.untrack(st, &mut **policy, k, *id);
            }
            for (k, id) in &added {
                self.track(st, &mut **policy, *k, *id, false);
            }
        }
        if st.is_empty() {
            g.remove(&file);
        }
        shard.filled.notify_all();
        drop(g);
        let gone_huge = gone.iter().filter(|(k, _)| k.is_huge()).count() as u64;
        sub(&self.stats.resident_huge, gone_huge);
        sub(&self.stats.resident_base, gone.len() as u64 - gone_huge);
        add(&self.stats.resident_base, added.len() as u64);
        add(&self.stats.splits, splits);
        add(&self.stats.invalidations[cause as usize], dropped);
        drop(garbage);
        dropped
    }

    /// Drops all of the file's device pages and forgets the file (its sequential-access
    /// state); in-flight fills are discarded. Returns device pages dropped.
    pub fn invalidate_file(&self, file: FileId, cause: InvalidationCause) -> u64 {
        let shard = self.shard(file);
        let mut g = lock(&shard.files);
        let Some(mut st) = g.remove(&file) else {
            return 0;
        };
        if st.hint != Hint::Normal {
            let mut fresh = FileState::new(self.next_seq());
            fresh.hint = st.hint;
            g.insert(file, fresh);
        }
        shard.filled.notify_all();
        let pinned = std::mem::take(&mut st.pinned);
        let mut gone = Vec::new();
        let mut garbage = Vec::new();
        for (k, e) in st
            .huge
            .into_iter()
            .map(|(e, x)| (FolioKey::huge(file, e), x))
            .chain(
                st.base
                    .into_iter()
                    .map(|(p, x)| (FolioKey::base(file, p), x)),
            )
        {
            if let Entry::Ready(f) = e {
                gone.push((k, f.id()));
                garbage.push(f);
            }
        }
        if !gone.is_empty() {
            let mut policy = lock(&self.policy);
            for (k, id) in &gone {
                if !pinned.contains(k) {
                    policy.remove(k, *id);
                }
            }
        }
        let unpinned: u64 = pinned.iter().map(slots_of).sum();
        sub(&self.pinned_slots, unpinned);
        drop(g);
        let gone_huge = gone.iter().filter(|(k, _)| k.is_huge()).count() as u64;
        sub(&self.stats.resident_huge, gone_huge);
        sub(&self.stats.resident_base, gone.len() as u64 - gone_huge);
        add(&self.stats.invalidations[cause as usize], gone.len() as u64);
        drop(garbage);
        gone.len() as u64
    }
}
