//! Eviction policy: which resident folio to give up next, and whether a missed page is worth
//! a victim at all.
//!
//! The tier keeps the policy behind one mutex (a leaf lock, taken while at most one shard lock
//! is held) and tells it about every folio that becomes resident or stops being resident, so
//! the policy's set of keys equals the set of resident (installed) *evictable* folios —
//! pinned folios (the `pin` hint) are kept out of it — except for one victim transiently
//! popped by an evictor.
//!
//! Duties of an implementation: `insert`, `insert_speculative`, `touch`, `touch_again`,
//! `remove`, `record_miss`, `admit` and `pop_victim` are O(1) or O(log n) (amortized);
//! `remove` of a key it does not hold, or whose id differs from the stored one, does nothing
//! (the key was re-used by a newer folio, or is pinned); `pop_victim` removes what it returns;
//! results depend only on the sequence of calls (no clocks, no random seeds), so a trace
//! replays identically. Duties of the tier: call `configure` once first; call `insert` once
//! per installed evictable folio (`insert_speculative` for one installed by readahead, not yet
//! read), `remove` when a folio leaves a page map for any reason other than `pop_victim`,
//! re-`insert` a popped victim it decided not to evict (pinned by a reader); report each *use*
//! of a folio once — `record_miss` when a read misses it, `touch` when a read finds it
//! resident — where a sequential read continuing inside the folio its predecessor used is not
//! a new use (`touch_again`: recency only); and ask `admit` before evicting anything for a
//! missed folio (a refused page is served without being installed — a *bypass* — so a fault
//!
//! This file is the contract only: the policies live beside it (`lru.rs`, `s3fifo.rs`,
//! `tinylfu.rs`) and the factory in `mod.rs`, which imports them — nothing here imports back.

use std::collections::HashSet;

use crate::tier::hint::Hint;
use crate::tier::types::{FileId, FolioId};

/// Names a resident folio: the file and its page-map key (see [`FolioKey::huge`] / `base`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FolioKey {
    pub file: FileId,
    /// Base page index, or extent index with [`FolioKey::HUGE_BIT`] set.
    pub index: u64,
}

impl FolioKey {
    pub const HUGE_BIT: u64 = 1 << 63;

    pub fn huge(file: FileId, extent: u64) -> FolioKey {
        FolioKey {
            file,
            index: extent | Self::HUGE_BIT,
        }
    }

    pub fn base(file: FileId, page: u64) -> FolioKey {
        FolioKey { file, index: page }
    }

    pub fn is_huge(&self) -> bool {
        self.index & Self::HUGE_BIT != 0
    }

    /// Extent index (huge) or page index (base).
    pub fn position(&self) -> u64 {
        self.index & !Self::HUGE_BIT
    }
}

/// A replacement policy over resident folios. See the module docs for the contract.
pub trait EvictionPolicy: Send {
    /// Called once, before anything else, with the tier's capacity in base-page slots and
    /// the weight of a huge folio in slots (1 when every key weighs the same).
    fn configure(&mut self, _capacity: u64, _huge_weight: u64) {}
    /// A folio became resident.
    fn insert(&mut self, key: FolioKey, id: FolioId);
    /// A folio became resident by readahead: nobody has read it yet.
    fn insert_speculative(&mut self, key: FolioKey, id: FolioId) {
        self.insert(key, id)
    }
    /// A resident folio was used (read by a read that entered it).
    fn touch(&mut self, key: &FolioKey);
    /// A resident folio was read again by the same use (a sequential read continuing inside
    /// it) or prefetched: recency, not frequency.
    fn touch_again(&mut self, key: &FolioKey) {
        self.touch(key)
    }
    /// A folio stopped being resident (invalidated, split, collapsed).
    fn remove(&mut self, key: &FolioKey, id: FolioId);
    /// Chooses and removes the next victim.
    fn pop_victim(&mut self) -> Option<(FolioKey, FolioId)>;
    /// A read missed `key` (not resident); called once per missed folio, before `admit`.
    fn record_miss(&mut self, _key: &FolioKey) {}
    /// `key` was used where the policy cannot see it (a page of an exported file, read by the
    /// kernel): frequency only, the key is not tracked. A policy with no history of keys it
    /// does not hold ignores it.
    fn record_use(&mut self, _key: &FolioKey) {}
    /// The tier is full: should a victim be evicted so that the missed `candidate` can be
    /// installed? `false` serves the read without installing the page.
    fn admit(&mut self, _candidate: &FolioKey) -> bool {
        true
    }
    /// The file's hint changed (`Hint::Normal` clears it).
    fn set_hint(&mut self, _file: FileId, _hint: Hint) {}
    /// The policy's name, as accepted by [`policy_by_name`](super::policy_by_name).
    fn name(&self) -> &'static str;
    /// Number of tracked folios.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Estimated heap bytes used per tracked folio.
    fn bytes_per_entry(&self) -> u64;
    /// Heap bytes the policy holds whatever it tracks (a frequency sketch sized for the
    /// most folios it ever tracked).
    fn fixed_bytes(&self) -> u64 {
        0
    }
}

/// The files carrying [`Hint::Epoch`], and the admission rule they imply (module docs).
#[derive(Debug, Default)]
pub struct EpochFiles(HashSet<FileId>);

impl EpochFiles {
    pub fn set_hint(&mut self, file: FileId, hint: Hint) {
        if hint == Hint::Epoch {
            self.0.insert(file);
        } else {
            self.0.remove(&file);
        }
    }

    /// True if `candidate` must not displace `victim`: both are pages of epoch files.
    pub fn keeps(&self, candidate: &FolioKey, victim: &FolioKey) -> bool {
        self.0.contains(&candidate.file) && self.0.contains(&victim.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_encoding() {
        let k = FolioKey::huge(3, 7);
        assert!(k.is_huge());
        assert_eq!(k.position(), 7);
        assert_ne!(k, FolioKey::base(3, 7));
        assert!(!FolioKey::base(3, 7).is_huge());
    }
}
