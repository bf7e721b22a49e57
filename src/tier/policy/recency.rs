//! A recency list of folio keys (the `lru` crate's `LruCache`) that gives its table back once
//! mostly empty.
//!
//! An `LruCache` never shrinks its hash table: a tier that once tracked a million base pages
//! kept the table's megabytes after every page left the policy (evicted, or moved into shared
//! memory for the kernel to serve, `export.rs`): 13 MB at 100,000 small files, about 130 bytes
//! per file the tier had ever held. [`RecencyList`] rebuilds the cache when it holds under a
//! quarter of the most entries it held since the last rebuild (`heap::is_sparse`), in the
//! same order. The rebuild is O(entries left) under the policy's lock, and it happens only
//! after three quarters of the peak left one by one, so its cost is amortised over those
//! removals.
//!
//! Invariant: iteration order and contents are exactly those of the wrapped cache; a rebuild
//! changes neither.

use lru::LruCache;

use crate::heap::is_sparse;
use crate::tier::policy::contract::FolioKey;
use crate::tier::types::FolioId;

/// Folio keys in LRU order (see module docs).
pub struct RecencyList {
    lru: LruCache<FolioKey, FolioId>,
    /// Most entries held since the cache was made (or last rebuilt).
    peak: usize,
}

impl RecencyList {
    pub fn new() -> RecencyList {
        RecencyList {
            lru: LruCache::unbounded(),
            peak: 0,
        }
    }

    /// Inserts or updates `key` as the most recent; returns the id it replaced.
    pub fn put(&mut self, key: FolioKey, id: FolioId) -> Option<FolioId> {
        let old = self.lru.put(key, id);
        self.peak = self.peak.max(self.lru.len());
        old
    }

    /// Makes `key` the most recent; false if absent.
    pub fn promote(&mut self, key: &FolioKey) -> bool {
        self.lru.promote(key)
    }

    pub fn pop(&mut self, key: &FolioKey) -> Option<FolioId> {
        let id = self.lru.pop(key);
        self.shrink_if_sparse();
        id
    }

    pub fn pop_lru(&mut self) -> Option<(FolioKey, FolioId)> {
        let popped = self.lru.pop_lru();
        self.shrink_if_sparse();
        popped
    }

    pub fn peek(&self, key: &FolioKey) -> Option<&FolioId> {
        self.lru.peek(key)
    }

    pub fn peek_lru(&self) -> Option<(&FolioKey, &FolioId)> {
        self.lru.peek_lru()
    }

    #[cfg(test)]
    pub fn contains(&self, key: &FolioKey) -> bool {
        self.lru.contains(key)
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    fn shrink_if_sparse(&mut self) {
        if !is_sparse(self.lru.len(), self.peak) {
            return;
        }
        // Least recent first into the new cache: the last put is the most recent, as before.
        let mut fresh = LruCache::unbounded();
        while let Some((k, id)) = self.lru.pop_lru() {
            fresh.put(k, id);
        }
        self.lru = fresh;
        self.peak = self.lru.len();
    }
}

impl Default for RecencyList {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(r: &mut RecencyList) -> Vec<u64> {
        let mut out = Vec::new();
        let mut copy = RecencyList::new();
        while let Some((k, id)) = r.pop_lru() {
            out.push(id);
            copy.put(k, id);
        }
        *r = copy;
        out
    }

    /// A rebuild keeps every entry in its order, and the peak follows what is left.
    #[test]
    fn a_sparse_list_is_rebuilt_in_the_same_order() {
        let mut r = RecencyList::new();
        let n = 20_000u64;
        for i in 0..n {
            r.put(FolioKey::base(1, i), i);
        }
        assert_eq!(r.peak, n as usize);
        // Promote a few so that the order differs from the insertion order.
        for i in [5, 3, 9] {
            assert!(r.promote(&FolioKey::base(1, i)));
        }
        // Remove all but 1,000 (and the promoted three): past the threshold, so a rebuild.
        for i in 10..(n - 1000) {
            assert_eq!(r.pop(&FolioKey::base(1, i)), Some(i));
        }
        assert!(r.peak < n as usize, "rebuilt: peak {}", r.peak);
        assert_eq!(r.len(), 1010);
        let order = keys(&mut r);
        let mut want: Vec<u64> = [0, 1, 2, 4, 6, 7, 8].into();
        want.extend((n - 1000)..n);
        want.extend([5, 3, 9]);
        assert_eq!(order, want);
        assert_eq!(r.peek_lru().map(|(_, id)| *id), Some(0));
        assert_eq!(r.peek(&FolioKey::base(1, 9)), Some(&9));
    }

    /// Below the threshold nothing is rebuilt (small lists never are).
    #[test]
    fn a_small_list_is_left_alone() {
        let mut r = RecencyList::new();
        for i in 0..4000 {
            r.put(FolioKey::base(2, i), i);
        }
        while r.pop_lru().is_some() {}
        assert_eq!(r.peak, 4000, "under 4,096 entries: never rebuilt");
        assert!(r.is_empty());
    }
}
