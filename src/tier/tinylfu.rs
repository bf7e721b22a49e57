//! TinyLFU admission over LRU order (see `evict.rs` for why this is the default policy).
//!
//! Frequency is estimated by a count-min sketch of 4-bit counters (4 probes per key,
//! conservative update), sized to 8 counters per tracked folio and rebuilt empty when the
//! tracked set outgrows it (only while a tier fills up). Every 10 samples per counter-eighth
//! (≈ 10 × resident folios) all counters are halved, so the estimate follows the recent past.
//! Deterministic: the hash is a fixed mix of the key, no per-process seed.

use lru::LruCache;

use crate::tier::evict::{EpochFiles, EvictionPolicy, FolioKey};
use crate::tier::folio::FolioId;
use crate::tier::{FileId, Hint};

/// A missed page displaces the victim only if its frequency estimate exceeds the victim's by
/// more than this (see `evict.rs`: in an epoch the unread incumbents trail by one).
pub const TINYLFU_MARGIN: u8 = 1;

/// Counters per tracked folio.
const COUNTERS_PER_ENTRY: usize = 8;
/// Smallest sketch (counters).
const MIN_COUNTERS: usize = 1 << 10;
/// Samples between halvings, per tracked folio.
const SAMPLES_PER_ENTRY: u64 = 10;
/// Saturation of a 4-bit counter.
const MAX_COUNT: u8 = 15;

/// A count-min sketch of small counters with periodic halving ("reset" in TinyLFU).
#[derive(Debug)]
pub struct FrequencySketch {
    counters: Vec<u8>,
    samples: u64,
    period: u64,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl FrequencySketch {
    pub fn new() -> FrequencySketch {
        FrequencySketch {
            counters: vec![0; MIN_COUNTERS],
            samples: 0,
            period: SAMPLES_PER_ENTRY * (MIN_COUNTERS / COUNTERS_PER_ENTRY) as u64,
        }
    }

    /// Makes room for `entries` tracked folios (rebuilds empty if it must grow).
    pub fn ensure(&mut self, entries: usize) {
        let want = (entries * COUNTERS_PER_ENTRY)
            .next_power_of_two()
            .max(MIN_COUNTERS);
        if want > self.counters.len() {
            self.counters = vec![0; want];
            self.samples = 0;
            self.period = SAMPLES_PER_ENTRY * (want / COUNTERS_PER_ENTRY) as u64;
        }
    }

    fn slots(&self, key: &FolioKey) -> [usize; 4] {
        let h = mix(key.file.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ mix(key.index));
        let mask = self.counters.len() - 1;
        let mut out = [0; 4];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (h.rotate_left(16 * i as u32) as usize ^ (i * 0x5bd1_e995)) & mask;
        }
        out
    }

    /// Counts one access of `key`.
    pub fn increment(&mut self, key: &FolioKey) {
        let slots = self.slots(key);
        let min = slots.iter().map(|&s| self.counters[s]).min().unwrap_or(0);
        if min < MAX_COUNT {
            for s in slots {
                if self.counters[s] == min {
                    self.counters[s] += 1;
                }
            }
        }
        self.samples += 1;
        if self.samples >= self.period {
            for c in &mut self.counters {
                *c /= 2;
            }
            self.samples /= 2;
        }
    }

    /// Estimated recent accesses of `key` (an over-estimate, never under, before halving).
    pub fn estimate(&self, key: &FolioKey) -> u8 {
        self.slots(key)
            .iter()
            .map(|&s| self.counters[s])
            .min()
            .unwrap_or(0)
    }

    pub fn bytes(&self) -> usize {
        self.counters.len()
    }
}

impl Default for FrequencySketch {
    fn default() -> Self {
        Self::new()
    }
}

/// LRU victim order, TinyLFU admission, the `epoch` hint rule.
pub struct TinyLfuPolicy {
    lru: LruCache<FolioKey, FolioId>,
    sketch: FrequencySketch,
    epoch: EpochFiles,
    margin: u8,
}

impl TinyLfuPolicy {
    pub fn new() -> TinyLfuPolicy {
        Self::with_margin(TINYLFU_MARGIN)
    }

    /// With another admission margin (for measurements).
    pub fn with_margin(margin: u8) -> TinyLfuPolicy {
        TinyLfuPolicy {
            lru: LruCache::unbounded(),
            sketch: FrequencySketch::new(),
            epoch: EpochFiles::default(),
            margin,
        }
    }
}

impl Default for TinyLfuPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl EvictionPolicy for TinyLfuPolicy {
    fn insert(&mut self, key: FolioKey, id: FolioId) {
        self.lru.put(key, id);
        self.sketch.ensure(self.lru.len());
    }

    fn touch(&mut self, key: &FolioKey) {
        if self.lru.promote(key) {
            self.sketch.increment(key);
        }
    }

    fn remove(&mut self, key: &FolioKey, id: FolioId) {
        if self.lru.peek(key) == Some(&id) {
            self.lru.pop(key);
        }
    }

    fn pop_victim(&mut self) -> Option<(FolioKey, FolioId)> {
        self.lru.pop_lru()
    }

    fn record_miss(&mut self, key: &FolioKey) {
        self.sketch.increment(key);
    }

    fn admit(&mut self, candidate: &FolioKey) -> bool {
        let Some((victim, _)) = self.lru.peek_lru() else {
            return true;
        };
        if self.epoch.keeps(candidate, victim) {
            return false;
        }
        self.sketch.estimate(candidate) > self.sketch.estimate(victim).saturating_add(self.margin)
    }

    fn set_hint(&mut self, file: FileId, hint: Hint) {
        self.epoch.set_hint(file, hint);
    }

    fn len(&self) -> usize {
        self.lru.len()
    }

    fn bytes_per_entry(&self) -> u64 {
        let node = (size_of::<FolioKey>() + size_of::<FolioId>() + 2 * size_of::<usize>())
            .next_multiple_of(16);
        let slot = (2 * size_of::<usize>() + 1) * 8 / 7;
        (node + slot + COUNTERS_PER_ENTRY) as u64
    }

    fn name(&self) -> &'static str {
        "tinylfu"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sketch_counts_saturates_and_halves() {
        let mut s = FrequencySketch::new();
        let k = FolioKey::base(1, 2);
        for _ in 0..3 {
            s.increment(&k);
        }
        assert_eq!(s.estimate(&k), 3);
        assert_eq!(s.estimate(&FolioKey::base(1, 3)), 0);
        for _ in 0..40 {
            s.increment(&k);
        }
        assert_eq!(s.estimate(&k), MAX_COUNT);
        // Drive a halving with other keys.
        let period = s.period;
        for i in 0..period {
            s.increment(&FolioKey::base(2, 1000 + i));
        }
        assert!(s.estimate(&k) <= MAX_COUNT / 2 + 1, "{}", s.estimate(&k));
    }

    #[test]
    fn frequent_candidate_displaces_rare_victim_and_ties_keep_incumbent() {
        let mut p = TinyLfuPolicy::new();
        p.insert(FolioKey::base(1, 0), 10);
        p.record_miss(&FolioKey::base(1, 0));
        let c = FolioKey::base(1, 1);
        p.record_miss(&c);
        assert!(!p.admit(&c), "1 vs 1: keep");
        p.record_miss(&c);
        assert!(!p.admit(&c), "2 vs 1: within the margin");
        p.record_miss(&c);
        assert!(p.admit(&c), "3 vs 1");
        p.set_hint(1, Hint::Epoch);
        assert!(!p.admit(&c), "epoch over epoch is never admitted");
    }
}
