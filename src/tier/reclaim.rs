//! Reclaim: which folios the eviction policy tracks, the pin budget, and eviction rounds.
//!
//! # Tracking
//! Every installed folio is either *tracked* by the [`EvictionPolicy`] or *pinned* (the file
//! has the `pin` hint and the pin budget had room); every folio leaving a page map for a
//! reason other than `pop_victim` is untracked. So the policy's keys are exactly the
//! resident unpinned folios (checked by `check_invariants`).
//!
//! # Hints and pinning
//! [`DeviceTier::set_hint`] sets a file's [`Hint`] (the `user.pagetier.hint` xattr): `random`
//! turns off readahead and huge faults for the file, `sequential` makes every read sequential
//! and readahead start at its largest window, `epoch` is passed to the policy, and `pin` keeps
//! the file's folios out of the policy — they are never evicted, only invalidated — as long as
//! all pinned folios fit in [`TierOptions::pin_share`](crate::tier::TierOptions::pin_share) of the capacity; folios beyond that
//! share are evictable as usual. Changing the hint away from `pin` hands the folios back to
//! the policy. A hint survives [`DeviceTier::invalidate_file`]; clear it with `Hint::Normal`.
//!
//! # Eviction
//! A fault that finds no space first drops idle exports (files in shared memory that no
//! open holds, oldest first), then evicts policy victims in a bounded scan (`evict`). A victim a
//! reader pins (its `Arc` is shared) is kept and re-inserted as most recently used. Victims
//! are removed under their shard lock and freed after it is dropped.

use crate::tier::arena::Need;
use crate::tier::hint::Hint;
use crate::tier::map::{Entry, FileState};
use crate::tier::policy::{EvictionPolicy, FolioKey};
use crate::tier::stats::{add, sub};
use crate::tier::sync::{Arc, Ordering, lock};
use crate::tier::types::{FileId, FolioId, HUGE_EVICT_SCAN, SLOTS_PER_CHUNK};
use crate::tier::{DeviceTier, remove_state};

impl DeviceTier {
    /// Registers a newly resident folio of `st`: pinned (kept out of the policy) if the file
    /// has the `pin` hint and the pin budget has room, else tracked by the policy
    /// (`speculative`: installed by readahead, not read yet). Caller holds the shard lock and
    /// the policy lock.
    pub(super) fn track(
        &self,
        st: &mut FileState,
        policy: &mut dyn EvictionPolicy,
        key: FolioKey,
        id: FolioId,
        speculative: bool,
    ) {
        if st.hint() == Hint::Pin && self.reserve_pin(slots_of(&key)) {
            st.pinned.insert(key);
        } else if speculative {
            policy.insert_speculative(key, id);
        } else {
            policy.insert(key, id);
        }
    }

    /// Undoes [`DeviceTier::track`] for a folio leaving the page map (not via `pop_victim`).
    pub(super) fn untrack(
        &self,
        st: &mut FileState,
        policy: &mut dyn EvictionPolicy,
        key: &FolioKey,
        id: FolioId,
    ) {
        if st.pinned.remove(key) {
            sub(&self.pinned_slots, slots_of(key));
        } else {
            policy.remove(key, id);
        }
    }

    /// Takes `slots` from the pin budget if it has room.
    pub(super) fn reserve_pin(&self, slots: u64) -> bool {
        self.pinned_slots
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + slots <= self.pin_budget).then_some(used + slots)
            })
            .is_ok()
    }

    /// Evicts policy victims until `need` is met or a bounded scan gives up. Takes no lock
    /// on entry. Returns whether progress for `need` is now possible.
    pub(super) fn evict(&self, need: Need) -> bool {
        let limit = match need {
            Need::Chunk => HUGE_EVICT_SCAN,
            Need::Slots(n) => n.min(SLOTS_PER_CHUNK) + HUGE_EVICT_SCAN,
        };
        for _ in 0..limit {
            if self.arena.satisfies(need) {
                return true;
            }
            // Files exported to shared memory that no open holds go first, oldest first
            // (`export.rs`): their readers left, and the policy cannot weigh them page by page.
            if self.drop_idle_export() {
                continue;
            }
            let Some((key, id)) = lock(&self.policy).pop_victim() else {
                break;
            };
            self.evict_one(key, id, need == Need::Chunk);
        }
        match need {
            Need::Chunk => self.arena.satisfies(Need::Chunk),
            Need::Slots(_) => self.arena.satisfies(Need::Slots(1)),
        }
    }

    /// Evicts the popped victim `key` unless a reader pins it. With `whole_extent` (a huge
    /// fault needs a free chunk) a base-page victim takes the other unpinned base pages of
    /// its extent with it: they share its home chunk, and freeing them one victim at a time
    /// would scatter free slots over many chunks and push later huge faults to base pages.
    pub(super) fn evict_one(&self, key: FolioKey, id: FolioId, whole_extent: bool) {
        let shard = self.shard(key.file);
        let mut g = lock(&shard.files);
        let Some(st) = g.get_mut(&key.file) else {
            return;
        };
        let mut victims = Vec::new();
        match st.get(&key) {
            Some(Entry::Ready(f)) if f.id() == id => {
                if Arc::strong_count(f) == 1 {
                    victims.extend(st.remove(&key));
                } else {
                    // Pinned by a reader: keep it, as most recently used.
                    lock(&self.policy).insert(key, id);
                }
            }
            _ => {}
        }
        if whole_extent && !key.is_huge() && !victims.is_empty() {
            let ext = key.position() / SLOTS_PER_CHUNK as u64;
            let siblings: Vec<(FolioKey, FolioId)> = st
                .base_in_extent(ext)
                .filter_map(|(&p, e)| match e {
                    Entry::Ready(f) if Arc::strong_count(f) == 1 => {
                        Some((FolioKey::base(key.file, p), f.id()))
                    }
                    _ => None,
                })
                .filter(|(k, _)| !st.pinned.contains(k))
                .collect();
            let mut policy = lock(&self.policy);
            for (k, sid) in siblings {
                policy.remove(&k, sid);
                victims.extend(st.remove(&k));
            }
        }
        if st.is_empty() {
            remove_state(&mut g, key.file);
        }
        drop(g);
        for v in &victims {
            let huge = matches!(v, Entry::Ready(f) if f.loc().slot.is_none());
            add(&self.stats.evictions, 1);
            sub(
                if huge {
                    &self.stats.resident_huge
                } else {
                    &self.stats.resident_base
                },
                1,
            );
        }
        drop(victims);
    }
}

impl DeviceTier {
    /// Moves `st`'s resident folios between the policy and the pinned set after its hint
    /// changed from `old` to `st.hint()`: unpinning hands them all back to the policy; pinning
    /// takes them out of it while the pin budget has room. Caller holds the shard lock and
    /// the policy lock.
    pub(super) fn repin(
        &self,
        st: &mut FileState,
        policy: &mut dyn EvictionPolicy,
        file: FileId,
        old: Hint,
    ) {
        if old == Hint::Pin && st.hint() != Hint::Pin {
            let keys: Vec<FolioKey> = st.pinned.drain().collect();
            for k in keys {
                if let Some(Entry::Ready(f)) = st.get(&k) {
                    policy.insert(k, f.id());
                }
                sub(&self.pinned_slots, slots_of(&k));
            }
        } else if st.hint() == Hint::Pin && old != Hint::Pin {
            let ready: Vec<(FolioKey, FolioId)> = st
                .huge
                .iter()
                .map(|(&e, x)| (FolioKey::huge(file, e), x))
                .chain(st.base.iter().map(|(&p, x)| (FolioKey::base(file, p), x)))
                .filter_map(|(k, x)| match x {
                    Entry::Ready(f) => Some((k, f.id())),
                    Entry::Filling(_) => None,
                })
                .collect();
            for (k, id) in ready {
                if !self.reserve_pin(slots_of(&k)) {
                    break;
                }
                policy.remove(&k, id);
                st.pinned.insert(k);
            }
        }
    }
}

/// Arena slots a folio of this key occupies.
pub(super) fn slots_of(key: &FolioKey) -> u64 {
    if key.is_huge() {
        SLOTS_PER_CHUNK as u64
    } else {
        1
    }
}
