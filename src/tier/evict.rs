//! Eviction policy: which resident folio to give up next.
//!
//! The tier keeps the policy behind one mutex (a leaf lock, taken while at most one shard lock
//! is held) and tells it about every folio that becomes resident or stops being resident, so
//! the policy's set of keys equals the set of resident (installed) folios, except for one
//! victim transiently popped by an evictor.
//!
//! Duties of an implementation: `insert`, `touch`, `remove` and `pop_victim` are O(1) or
//! O(log n); `remove` of a key whose id differs from the stored one does nothing (the key was
//! re-used by a newer folio); `pop_victim` removes what it returns. Duties of the tier: call
//! `insert` once per installed folio, `remove` when a folio leaves a page map for any reason
//! other than `pop_victim`, and re-`insert` a popped victim it decided not to evict (pinned).

use lru::LruCache;

use crate::tier::FileId;
use crate::tier::folio::FolioId;

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
    /// A folio became resident.
    fn insert(&mut self, key: FolioKey, id: FolioId);
    /// A resident folio was read.
    fn touch(&mut self, key: &FolioKey);
    /// A folio stopped being resident (invalidated, split, collapsed).
    fn remove(&mut self, key: &FolioKey, id: FolioId);
    /// Chooses and removes the next victim.
    fn pop_victim(&mut self) -> Option<(FolioKey, FolioId)>;
    /// Number of tracked folios.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Estimated heap bytes used per tracked folio.
    fn bytes_per_entry(&self) -> u64;
}

/// Least-recently-used, on the `lru` crate.
pub struct LruPolicy {
    lru: LruCache<FolioKey, FolioId>,
}

impl LruPolicy {
    pub fn new() -> LruPolicy {
        LruPolicy {
            lru: LruCache::unbounded(),
        }
    }
}

impl Default for LruPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl EvictionPolicy for LruPolicy {
    fn insert(&mut self, key: FolioKey, id: FolioId) {
        self.lru.put(key, id);
    }

    fn touch(&mut self, key: &FolioKey) {
        self.lru.promote(key);
    }

    fn remove(&mut self, key: &FolioKey, id: FolioId) {
        if self.lru.peek(key) == Some(&id) {
            self.lru.pop(key);
        }
    }

    fn pop_victim(&mut self) -> Option<(FolioKey, FolioId)> {
        self.lru.pop_lru()
    }

    fn len(&self) -> usize {
        self.lru.len()
    }

    fn bytes_per_entry(&self) -> u64 {
        // One heap node (key, value, two links) rounded to the allocator's 16-byte classes,
        // plus a hashbrown slot (key ref + node pointer + control byte) at 7/8 load.
        let node = (size_of::<FolioKey>() + size_of::<FolioId>() + 2 * size_of::<usize>())
            .next_multiple_of(16);
        let slot = (2 * size_of::<usize>() + 1) * 8 / 7;
        (node + slot) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_order_touch_and_stale_remove() {
        let mut p = LruPolicy::new();
        p.insert(FolioKey::base(1, 0), 10);
        p.insert(FolioKey::huge(1, 0), 11);
        p.insert(FolioKey::base(2, 5), 12);
        p.touch(&FolioKey::base(1, 0));
        assert_eq!(p.pop_victim(), Some((FolioKey::huge(1, 0), 11)));
        p.remove(&FolioKey::base(2, 5), 99); // stale id: ignored
        assert_eq!(p.len(), 2);
        p.remove(&FolioKey::base(2, 5), 12);
        assert_eq!(p.pop_victim(), Some((FolioKey::base(1, 0), 10)));
        assert!(p.is_empty());
        assert!(p.bytes_per_entry() >= 48);
    }

    #[test]
    fn key_encoding() {
        let k = FolioKey::huge(3, 7);
        assert!(k.is_huge());
        assert_eq!(k.position(), 7);
        assert_ne!(k, FolioKey::base(3, 7));
        assert!(!FolioKey::base(3, 7).is_huge());
    }
}
