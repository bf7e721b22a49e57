//! S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP '23).
//!
//! New folios enter a small probationary FIFO; a folio read again while there (reuse counter
//! ≥ 1) moves to the main FIFO when it reaches the head, otherwise it is evicted and its key
//! remembered in a ghost FIFO. A folio whose key is in the ghost enters main directly. Main is
//! a FIFO with 2-bit reuse counters: a head folio with a nonzero counter is re-queued with the
//! counter decremented. The small FIFO is evicted from while it holds at least 10 % of the
//! tracked folios; the ghost remembers as many keys as there are tracked folios.
//!
//! Removal (invalidation) is lazy: queue entries carry a stamp, and an entry whose stamp no
//! longer matches the folio's is skipped; queues are compacted when stale entries dominate.

use std::collections::{HashMap, VecDeque};

use crate::tier::policy::contract::{EvictionPolicy, FolioKey};
use crate::tier::types::FolioId;

/// Share of tracked folios the small FIFO may hold before it is evicted from (percent).
const SMALL_PERCENT: usize = 10;
/// Reuse counter ceiling.
const MAX_FREQ: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Debug)]
struct Meta {
    id: FolioId,
    freq: u8,
    queue: Queue,
    stamp: u64,
}

#[derive(Debug, Default)]
pub struct S3FifoPolicy {
    map: HashMap<FolioKey, Meta>,
    small: VecDeque<(FolioKey, u64)>,
    main: VecDeque<(FolioKey, u64)>,
    small_len: usize,
    main_len: usize,
    ghost: VecDeque<(FolioKey, u64)>,
    ghost_set: HashMap<FolioKey, u64>,
    stamp: u64,
}

impl S3FifoPolicy {
    pub fn new() -> S3FifoPolicy {
        S3FifoPolicy::default()
    }

    fn next_stamp(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }

    fn push(&mut self, key: FolioKey, queue: Queue) -> u64 {
        let stamp = self.next_stamp();
        match queue {
            Queue::Small => {
                self.small.push_back((key, stamp));
                self.small_len += 1;
            }
            Queue::Main => {
                self.main.push_back((key, stamp));
                self.main_len += 1;
            }
        }
        stamp
    }

    fn remember_ghost(&mut self, key: FolioKey) {
        let stamp = self.next_stamp();
        self.ghost_set.insert(key, stamp);
        self.ghost.push_back((key, stamp));
        let cap = self.map.len().max(1);
        while self.ghost_set.len() > cap {
            let Some((k, s)) = self.ghost.pop_front() else {
                break;
            };
            if self.ghost_set.get(&k) == Some(&s) {
                self.ghost_set.remove(&k);
            }
        }
        if self.ghost.len() > 2 * self.ghost_set.len() + 64 {
            let set = &self.ghost_set;
            self.ghost.retain(|(k, s)| set.get(k) == Some(s));
        }
    }

    /// Pops the head of `queue` that is still live, if any.
    fn pop_live(&mut self, queue: Queue) -> Option<FolioKey> {
        loop {
            let q = match queue {
                Queue::Small => &mut self.small,
                Queue::Main => &mut self.main,
            };
            let (k, s) = q.pop_front()?;
            if self
                .map
                .get(&k)
                .is_some_and(|m| m.stamp == s && m.queue == queue)
            {
                match queue {
                    Queue::Small => self.small_len -= 1,
                    Queue::Main => self.main_len -= 1,
                }
                return Some(k);
            }
        }
    }

    fn compact(&mut self) {
        let map = &self.map;
        if self.small.len() > 2 * self.small_len + 64 {
            self.small
                .retain(|(k, s)| map.get(k).is_some_and(|m| m.stamp == *s));
        }
        if self.main.len() > 2 * self.main_len + 64 {
            self.main
                .retain(|(k, s)| map.get(k).is_some_and(|m| m.stamp == *s));
        }
    }
}

impl EvictionPolicy for S3FifoPolicy {
    fn insert(&mut self, key: FolioKey, id: FolioId) {
        let queue = if self.ghost_set.remove(&key).is_some() {
            Queue::Main
        } else {
            Queue::Small
        };
        if let Some(old) = self.map.remove(&key) {
            match old.queue {
                Queue::Small => self.small_len -= 1,
                Queue::Main => self.main_len -= 1,
            }
        }
        let stamp = self.push(key, queue);
        self.map.insert(
            key,
            Meta {
                id,
                freq: 0,
                queue,
                stamp,
            },
        );
    }

    fn touch(&mut self, key: &FolioKey) {
        if let Some(m) = self.map.get_mut(key) {
            m.freq = (m.freq + 1).min(MAX_FREQ);
        }
    }

    fn touch_again(&mut self, _key: &FolioKey) {
        // FIFO order: only uses count, and this is not a new one.
    }

    fn remove(&mut self, key: &FolioKey, id: FolioId) {
        if self.map.get(key).is_some_and(|m| m.id == id) {
            let m = self.map.remove(key).expect("checked");
            match m.queue {
                Queue::Small => self.small_len -= 1,
                Queue::Main => self.main_len -= 1,
            }
            self.compact();
        }
    }

    fn pop_victim(&mut self) -> Option<(FolioKey, FolioId)> {
        loop {
            let total = self.map.len();
            if total == 0 {
                return None;
            }
            let from_small = self.small_len > 0
                && (self.small_len * 100 >= total * SMALL_PERCENT || self.main_len == 0);
            if from_small {
                let k = self.pop_live(Queue::Small)?;
                let freq = self.map[&k].freq;
                if freq >= 1 {
                    let stamp = self.push(k, Queue::Main);
                    let m = self.map.get_mut(&k).expect("live");
                    m.queue = Queue::Main;
                    m.freq = 0;
                    m.stamp = stamp;
                    continue;
                }
                let m = self.map.remove(&k).expect("live");
                self.remember_ghost(k);
                return Some((k, m.id));
            }
            let k = self.pop_live(Queue::Main)?;
            let freq = self.map[&k].freq;
            if freq > 0 {
                let stamp = self.push(k, Queue::Main);
                let m = self.map.get_mut(&k).expect("live");
                m.freq = freq - 1;
                m.stamp = stamp;
                continue;
            }
            let m = self.map.remove(&k).expect("live");
            return Some((k, m.id));
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn bytes_per_entry(&self) -> u64 {
        // Map slot + queue entry + a ghost entry (map slot + queue entry) per folio.
        let slot = (size_of::<FolioKey>() + size_of::<Meta>() + 1) * 8 / 7;
        let q = size_of::<(FolioKey, u64)>();
        let ghost = (size_of::<FolioKey>() + 8 + 1) * 8 / 7 + q;
        (slot + q + ghost) as u64
    }

    fn name(&self) -> &'static str {
        "s3fifo"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hit_wonders_leave_first_and_reused_survive() {
        let mut p = S3FifoPolicy::new();
        for i in 0..10 {
            p.insert(FolioKey::base(1, i), i);
        }
        p.touch(&FolioKey::base(1, 0));
        // Page 0 was reused: it moves to main; 1 is the first victim.
        assert_eq!(p.pop_victim(), Some((FolioKey::base(1, 1), 1)));
        // A ghost hit goes to main.
        p.insert(FolioKey::base(1, 1), 11);
        assert_eq!(p.map[&FolioKey::base(1, 1)].queue, Queue::Main);
        p.remove(&FolioKey::base(1, 5), 99);
        assert_eq!(p.len(), 10);
        p.remove(&FolioKey::base(1, 5), 5);
        assert_eq!(p.len(), 9);
        let mut seen = Vec::new();
        while let Some((k, _)) = p.pop_victim() {
            seen.push(k);
        }
        assert_eq!(seen.len(), 9);
        assert!(!seen.contains(&FolioKey::base(1, 5)));
        assert!(p.is_empty());
    }
}
