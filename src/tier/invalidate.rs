//! Invalidation: dropping exactly the device pages a host modification touched.
//!
//! [`DeviceTier::invalidate_range`] drops every page overlapping the byte range. A partly
//! covered huge page is *split*: the covered base pages are freed, the others stay resident
//! as base pages in the same chunk (`splits` counts these). Returned counts are device pages:
//!
//! An exported file (its pages in shared memory, served by the kernel) is the exception: its
//! copy is updated in place instead (`export.rs`). A migration may install an export between
//! an invalidation's look for one and its page-map work, copied from pages older than the
//! change: the page-map work therefore checks again under the shard lock, and on finding an
//! export it did not refresh starts over (refreshing it), never dropping or forgetting a
//! state that holds one.
//!
//! Every invalidation bumps the file's [`InvalidationSeq`](crate::tier::InvalidationSeq) (from a tier-wide counter, so
//! values never repeat): a fill that started before it is discarded when it tries to install
//! (`fault.rs`), and so is a queued readahead job. Removed folios are freed after the shard
//! lock is dropped.

use crate::tier::export::ExportInvalidation;
use crate::tier::folio::Folio;
use crate::tier::hint::Hint;
use crate::tier::map::{Entry, FileState, Pages};
use crate::tier::policy::FolioKey;
use crate::tier::reclaim::slots_of;
use crate::tier::stats::{add, sub};
use crate::tier::sync::{Arc, lock, thread};
use crate::tier::types::{FileId, FolioId, InvalidationCause, PAGE_SIZE, SLOTS_PER_CHUNK};
use crate::tier::{DeviceTier, remove_state};

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
        loop {
            let found = self.refresh_if_exported(file, offset, end, cause);
            if found == ExportInvalidation::Kept {
                return 0;
            }
            let refreshed = found == ExportInvalidation::Updated;
            if let Some(n) = self.drop_range(file, offset, end, cause, refreshed) {
                return n;
            }
            // A migration installed an export after the look above, from pages that may
            // predate this change: refresh it like any open export.
            thread::yield_now();
        }
    }

    /// The page-map part of [`DeviceTier::invalidate_range`] over `[offset, end)` (`end`
    /// `u64::MAX`: to the end of the file); keeps the file's state. Unless `refreshed` (the
    /// caller updated the file's export), finding an export does nothing and returns None:
    /// it was installed since the caller looked, and its copy may miss the change.
    fn drop_range(
        &self,
        file: FileId,
        offset: u64,
        end: u64,
        cause: InvalidationCause,
        refreshed: bool,
    ) -> Option<u64> {
        let pages = PageRange {
            first: offset / PAGE_SIZE,
            end: if end == u64::MAX {
                u64::MAX
            } else {
                end.div_ceil(PAGE_SIZE)
            },
        };
        let shard = self.shard(file);
        let mut g = lock(&shard.files);
        let Some(st) = g.get_mut(&file) else {
            return Some(0);
        };
        if st.is_exported() && !refreshed {
            return None;
        }
        st.set_seq(self.next_seq());
        let mut dropped = Dropped::default();
        Self::drop_base_pages(st, file, pages, &mut dropped);
        self.drop_huge_pages(st, file, pages, &mut dropped);
        if !dropped.gone.is_empty() || !dropped.added.is_empty() {
            let mut policy = lock(&self.policy);
            for (k, id) in &dropped.gone {
                self.untrack(st, &mut **policy, k, *id);
            }
            for (k, id) in &dropped.added {
                self.track(st, &mut **policy, *k, *id, false);
            }
        }
        if st.is_empty() {
            remove_state(&mut g, file);
        } else {
            st.drop_empty_pages();
        }
        shard.wake_filled();
        drop(g);
        let gone_huge = dropped.gone.iter().filter(|(k, _)| k.is_huge()).count() as u64;
        sub(&self.stats.resident_huge, gone_huge);
        sub(
            &self.stats.resident_base,
            dropped.gone.len() as u64 - gone_huge,
        );
        add(&self.stats.resident_base, dropped.added.len() as u64);
        add(&self.stats.splits, dropped.splits);
        add(&self.stats.invalidations[cause as usize], dropped.pages);
        drop(dropped.garbage);
        Some(dropped.pages)
    }

    /// Removes the base pages in `pages` from the page map (in-flight fills included: they
    /// will not install).
    fn drop_base_pages(st: &mut FileState, file: FileId, pages: PageRange, d: &mut Dropped) {
        let keys: Vec<u64> = st
            .base
            .range(pages.first..pages.end)
            .map(|(&p, _)| p)
            .collect();
        for p in keys {
            if let Some(Entry::Ready(f)) = st.base.remove(&p) {
                d.gone.push((FolioKey::base(file, p), f.id()));
                d.garbage.push(f);
                d.pages += 1;
            }
        }
    }

    /// Removes the huge pages overlapping `pages` from the page map: wholly covered ones are
    /// dropped, partly covered ones split (`huge.rs`).
    fn drop_huge_pages(&self, st: &mut FileState, file: FileId, pages: PageRange, d: &mut Dropped) {
        let per = SLOTS_PER_CHUNK as u64;
        let end_ext = if pages.end == u64::MAX {
            u64::MAX
        } else {
            pages.end.div_ceil(per)
        };
        let exts: Vec<u64> = st
            .huge
            .range(pages.first / per..end_ext)
            .map(|(&e, _)| e)
            .collect();
        for e in exts {
            let Some(Entry::Ready(f)) = st.huge.remove(&e) else {
                continue;
            };
            d.gone.push((FolioKey::huge(file, e), f.id()));
            let (es, ee) = (e * per, e * per + per);
            let covered = pages.first.max(es)..pages.end.min(ee);
            if covered == (es..ee) {
                d.garbage.push(f);
                d.pages += 1;
                continue;
            }
            d.pages += covered.end - covered.start;
            d.added.extend(self.split_huge(st, file, e, f, covered));
            d.splits += 1;
        }
    }
    /// Drops all of the file's device pages and forgets the file (its sequential-access
    /// state); in-flight fills are discarded. Returns device pages dropped.
    pub fn invalidate_file(&self, file: FileId, cause: InvalidationCause) -> u64 {
        let shard = self.shard(file);
        let (mut g, mut st) = loop {
            match self.refresh_if_exported(file, 0, u64::MAX, cause) {
                ExportInvalidation::Kept => return 0,
                // Keep the state, which holds the export.
                ExportInvalidation::Updated => {
                    // `refreshed`: never None.
                    return self.drop_range(file, 0, u64::MAX, cause, true).unwrap_or(0);
                }
                ExportInvalidation::None => {}
            }
            let mut g = lock(&shard.files);
            match g.get(&file) {
                None => return 0,
                // A migration finished since the look above: its export has an open
                // (a reader the kernel serves), so it must be refreshed, never forgotten
                // with the state that holds it.
                Some(st) if st.is_exported() => {
                    drop(g);
                    thread::yield_now();
                }
                Some(_) => {
                    let st = remove_state(&mut g, file).expect("looked up under the same lock");
                    break (g, st);
                }
            }
        };
        if st.hint() != Hint::Normal {
            let mut fresh = FileState::new(self.next_seq());
            fresh.set_hint(st.hint());
            g.insert(file, fresh);
        }
        shard.wake_filled();
        let Pages {
            pinned, huge, base, ..
        } = st.take_pages();
        let mut gone = Vec::new();
        let mut garbage = Vec::new();
        for (k, e) in huge
            .into_iter()
            .map(|(e, x)| (FolioKey::huge(file, e), x))
            .chain(base.into_iter().map(|(p, x)| (FolioKey::base(file, p), x)))
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

/// Base pages `[first, end)` of a file (`end == u64::MAX`: to the end of the file).
#[derive(Clone, Copy, Debug)]
struct PageRange {
    first: u64,
    end: u64,
}

/// What an invalidation removed, to account and free after the shard lock is dropped.
#[derive(Default)]
struct Dropped {
    /// Folios removed from the page map, freed after unlocking.
    garbage: Vec<Arc<Folio>>,
    /// Their keys, untracked from the policy or the pinned set.
    gone: Vec<(FolioKey, FolioId)>,
    /// Base pages that a split left resident, tracked anew.
    added: Vec<(FolioKey, FolioId)>,
    /// Device pages dropped (a huge page counts 1, a split the base pages it dropped).
    pages: u64,
    splits: u64,
}
