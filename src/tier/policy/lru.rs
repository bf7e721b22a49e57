//! Least recently used, on the `lru` crate: the reference policy. Admits everything, except
//! that a page of an epoch file never displaces a page of an epoch file (`Hint::Epoch`, see
//! the policy overview in `mod.rs`).

use crate::tier::hint::Hint;
use crate::tier::policy::contract::{EpochFiles, EvictionPolicy, FolioKey};
use crate::tier::policy::recency::RecencyList;
use crate::tier::types::{FileId, FolioId};

/// Least-recently-used, on the `lru` crate.
pub struct LruPolicy {
    lru: RecencyList,
    epoch: EpochFiles,
}

impl LruPolicy {
    pub fn new() -> LruPolicy {
        LruPolicy {
            lru: RecencyList::new(),
            epoch: EpochFiles::default(),
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

    fn admit(&mut self, candidate: &FolioKey) -> bool {
        self.lru
            .peek_lru()
            .is_none_or(|(victim, _)| !self.epoch.keeps(candidate, victim))
    }

    fn set_hint(&mut self, file: FileId, hint: Hint) {
        self.epoch.set_hint(file, hint);
    }

    fn name(&self) -> &'static str {
        "lru"
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
    fn lru_epoch_hint_keeps_epoch_incumbents() {
        let mut p = LruPolicy::new();
        p.insert(FolioKey::base(1, 0), 1);
        assert!(p.admit(&FolioKey::base(1, 9)));
        p.set_hint(1, Hint::Epoch);
        assert!(!p.admit(&FolioKey::base(1, 9)), "epoch over epoch");
        assert!(
            p.admit(&FolioKey::base(2, 9)),
            "other files compete as usual"
        );
        p.set_hint(1, Hint::Normal);
        assert!(p.admit(&FolioKey::base(1, 9)));
    }
}
