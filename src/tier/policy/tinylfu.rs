//! W-TinyLFU: a small LRU *window* in front of an LRU *main* region, with TinyLFU deciding
//! which of the window's leavers may displace a main resident (Einziger et al., ToS '17; the
//! design of Caffeine). See `policy/mod.rs` for the measurements behind it.
//!
//! # Regions (weights in base-page slots; a huge folio weighs `huge_weight`)
//! - **window** (about 1 % of the capacity, at least four huge pages when those are in use):
//!   every faulted folio enters here, so a miss is always installed (and readahead keeps
//!   running) even when the tier is full of pages worth keeping;
//! - **ahead**: folios installed by readahead and not yet read. A reader touching one moves
//!   it to the window. They are never chosen while the window has a leaver, so readahead is
//!   not thrown away just before the reader reaches it; beyond two readahead windows' worth
//!   (32 huge pages, at most a quarter of the capacity) the oldest goes first (a reader that
//!   stopped);
//! - **main**: the rest of the capacity, LRU order.
//!
//! When a victim is needed, the window's LRU folio (the *candidate*) duels main's LRU folio:
//! the candidate moves into main and the main folio is evicted only if the candidate's
//! frequency estimate exceeds the victim's by more than [`TINYLFU_MARGIN`] and the `epoch`
//! rule does not keep the victim; otherwise the candidate is evicted. While main has room,
//! window leavers move in without a duel; main's LRU is evicted without one only when the
//! window is below half its budget (the rest is unread readahead or fills in flight).
//!
//! Frequency is estimated by a count-min sketch of 4-bit counters (4 probes per key,
//! conservative update), sized from the capacity (as if all huge pages) at 32 counters
//! (16 bytes) per tracked folio and grown, keeping every count, if more folios are tracked;
//! folded back (each counter the largest of those it replaces) once they fall to a quarter.
//! Every 10 samples per tracked-folio share of the table (≈ 10 × resident folios) all counters
//! are halved, so the estimate follows the recent past. A sample is one *use* of a folio (the
//! tier reports a sequential pass through a folio once, whatever the read size).
//! Deterministic: the hash is a fixed mix of the key, no per-process seed.

use crate::tier::hint::Hint;
use crate::tier::policy::contract::{EpochFiles, EvictionPolicy, FolioKey};
use crate::tier::policy::recency::RecencyList;
use crate::tier::types::{FileId, FolioId};

/// A window leaver displaces main's LRU folio only if its frequency estimate exceeds the
/// victim's by more than this (see `policy/mod.rs`: in an epoch the unread incumbents trail by one).
pub const TINYLFU_MARGIN: u8 = 1;

/// Counters per tracked folio. A tier at half the dataset sees about twice as many distinct
/// keys as it tracks; at 32 counters per entry (4 probes each) a key's probes all collide with
/// other keys' less than 1 % of the time, where 8 per entry let a sixth of the candidates
/// overtake incumbents on borrowed counts.
const COUNTERS_PER_ENTRY: usize = 32;
/// Smallest sketch (counters).
const MIN_COUNTERS: usize = 1 << 10;
/// Samples between halvings, per tracked folio.
const SAMPLES_PER_ENTRY: u64 = 10;
/// Saturation of a 4-bit counter.
const MAX_COUNT: u8 = 15;
/// The sketch folds to a smaller size once the folios tracked need this fraction of it or
/// less (1/4): a table sized for a burst (small files prefetched at open stay tracked only
/// until their export takes them) does not stay after it, and a size stays put while the
/// count moves within a factor of 4 of it.
const SHRINK_AT: usize = 4;

/// The sketch's size, in counters, for `entries` tracked folios.
fn counters_for(entries: usize) -> usize {
    entries
        .saturating_mul(COUNTERS_PER_ENTRY)
        .min(1 << 40)
        .next_power_of_two()
        .max(MIN_COUNTERS)
}

/// Samples between halvings for a table of `counters` (10 per tracked-folio share).
fn period_for(counters: usize) -> u64 {
    SAMPLES_PER_ENTRY * (counters / COUNTERS_PER_ENTRY).max(1) as u64
}

/// The larger of each nibble of `a` and `b`.
fn max_nibbles(a: u8, b: u8) -> u8 {
    (a & 0x0F).max(b & 0x0F) | (a & 0xF0).max(b & 0xF0)
}

/// A count-min sketch of 4-bit counters, two per byte, with periodic halving ("reset" in
/// TinyLFU).
#[derive(Debug)]
pub struct FrequencySketch {
    /// Counter `i` is the low (even `i`) or high (odd `i`) nibble of byte `i / 2`.
    nibbles: Vec<u8>,
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
        Self::with_counters(MIN_COUNTERS)
    }

    fn with_counters(n: usize) -> FrequencySketch {
        FrequencySketch {
            nibbles: vec![0; n / 2],
            samples: 0,
            period: period_for(n),
        }
    }

    fn counters(&self) -> usize {
        self.nibbles.len() * 2
    }

    fn get(&self, i: usize) -> u8 {
        (self.nibbles[i / 2] >> (4 * (i & 1))) & 0xF
    }

    fn bump(&mut self, i: usize) {
        self.nibbles[i / 2] += 1 << (4 * (i & 1));
    }

    /// Makes room for `entries` tracked folios. Growing keeps every estimate: the table
    /// size is a power of two and a key's probes in the larger table agree with its old ones
    /// in the low bits, so each new counter starts as a copy of the old counter it extends
    /// (still an over-estimate, never an under-estimate).
    pub fn ensure(&mut self, entries: usize) {
        let want = counters_for(entries);
        if want > self.counters() {
            let copies = want / self.counters();
            self.nibbles = self.nibbles.repeat(copies);
            self.period = period_for(want);
        }
    }

    /// Gives the memory of a table sized for far more folios back: once `entries` need
    /// [`SHRINK_AT`] times fewer counters than it has, folds it to their size. Each counter
    /// of the smaller table becomes the largest of the counters that fold onto it: a key's
    /// probes in the smaller table are the low bits of its probes in the larger, so every
    /// estimate stays an over-estimate (the reverse of [`Self::ensure`]). Costs one pass
    /// over the table, after the tracked count fell by at least [`SHRINK_AT`] times.
    pub fn shrink_to(&mut self, entries: usize) {
        let want = counters_for(entries);
        if want.saturating_mul(SHRINK_AT) > self.counters() {
            return;
        }
        // Counters `i` and `i + want` share a nibble position (`want` is even), so the fold
        // is a per-nibble maximum over the table's byte-slices of `want / 2`.
        let bytes = want / 2;
        let mut folded = self.nibbles[..bytes].to_vec();
        for part in self.nibbles[bytes..].chunks(bytes) {
            for (f, &b) in folded.iter_mut().zip(part) {
                *f = max_nibbles(*f, b);
            }
        }
        self.nibbles = folded;
        self.period = period_for(want);
        self.samples = self.samples.min(self.period / 2);
    }

    fn slots(&self, key: &FolioKey) -> [usize; 4] {
        let h = mix(key.file.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ mix(key.index));
        let mask = self.counters() - 1;
        let mut out = [0; 4];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (h.rotate_left(16 * i as u32) as usize ^ (i * 0x5bd1_e995)) & mask;
        }
        out
    }

    /// Counts one access of `key`.
    pub fn increment(&mut self, key: &FolioKey) {
        let slots = self.slots(key);
        let min = slots.iter().map(|&s| self.get(s)).min().unwrap_or(0);
        if min < MAX_COUNT {
            for s in slots {
                if self.get(s) == min {
                    self.bump(s);
                }
            }
        }
        self.samples += 1;
        if self.samples >= self.period {
            for b in &mut self.nibbles {
                // Halves both nibbles: each loses its low bit to the shift.
                *b = (*b >> 1) & 0x77;
            }
            self.samples /= 2;
        }
    }

    /// Estimated recent accesses of `key` (an over-estimate, never under, before halving).
    pub fn estimate(&self, key: &FolioKey) -> u8 {
        self.slots(key)
            .iter()
            .map(|&s| self.get(s))
            .min()
            .unwrap_or(0)
    }
}

impl Default for FrequencySketch {
    fn default() -> Self {
        Self::new()
    }
}

/// Folios in one region, in LRU order, with their total weight (a huge folio weighs
/// `huge_weight` slots, a base folio one).
struct Region {
    lru: RecencyList,
    weight: u64,
    huge_weight: u64,
}

impl Region {
    fn new() -> Region {
        Region {
            lru: RecencyList::new(),
            weight: 0,
            huge_weight: 1,
        }
    }

    fn weight_of(&self, key: &FolioKey) -> u64 {
        if key.is_huge() { self.huge_weight } else { 1 }
    }

    fn put(&mut self, key: FolioKey, id: FolioId) {
        if self.lru.put(key, id).is_none() {
            self.weight += self.weight_of(&key);
        }
    }

    /// Removes `key` if it is held with `id` (any id when `None`); returns its id.
    fn take(&mut self, key: &FolioKey, id: Option<FolioId>) -> Option<FolioId> {
        let held = *self.lru.peek(key)?;
        if id.is_some_and(|id| id != held) {
            return None;
        }
        self.lru.pop(key);
        self.weight -= self.weight_of(key);
        Some(held)
    }

    fn pop_lru(&mut self) -> Option<(FolioKey, FolioId)> {
        let (k, id) = self.lru.pop_lru()?;
        self.weight -= self.weight_of(&k);
        Some((k, id))
    }

    fn lru_key(&self) -> Option<FolioKey> {
        self.lru.peek_lru().map(|(k, _)| *k)
    }
}

/// W-TinyLFU (module docs), with the `epoch` hint rule.
pub struct TinyLfuPolicy {
    window: Region,
    ahead: Region,
    main: Region,
    window_budget: u64,
    main_budget: u64,
    ahead_limit: u64,
    sketch: FrequencySketch,
    /// Folios the sketch is sized for whatever is tracked: the tier's capacity in huge pages.
    sketch_floor: usize,
    epoch: EpochFiles,
    margin: u8,
}

impl TinyLfuPolicy {
    pub fn new() -> TinyLfuPolicy {
        Self::with_margin(TINYLFU_MARGIN)
    }

    /// With another admission margin (for measurements).
    pub fn with_margin(margin: u8) -> TinyLfuPolicy {
        // Until told the capacity: a window of one and a practically unbounded main.
        TinyLfuPolicy {
            window: Region::new(),
            ahead: Region::new(),
            main: Region::new(),
            window_budget: 1,
            main_budget: u64::MAX / 4,
            ahead_limit: u64::MAX / 4,
            sketch: FrequencySketch::new(),
            sketch_floor: 0,
            epoch: EpochFiles::default(),
            margin,
        }
    }

    /// Whether main has room for `key` without evicting.
    fn main_has_room(&self, key: &FolioKey) -> bool {
        self.main.weight + self.main.weight_of(key) <= self.main_budget
    }

    /// Moves `key`, the window's LRU folio, to main's most recent end.
    fn window_to_main(&mut self, key: FolioKey) {
        let id = self.window.take(&key, None).expect("the window's LRU key");
        self.main.put(key, id);
    }

    /// Moves window leavers into main while main has room and the window is over budget.
    fn rebalance(&mut self) {
        while self.window.weight > self.window_budget {
            match self.window.lru_key() {
                Some(c) if self.main_has_room(&c) => self.window_to_main(c),
                _ => break,
            }
        }
    }

    /// Makes a resident `key` its region's most recent (a read readahead folio joins the
    /// window). False if not tracked.
    fn promote(&mut self, key: &FolioKey) -> bool {
        if self.window.lru.promote(key) || self.main.lru.promote(key) {
            return true;
        }
        let Some(id) = self.ahead.take(key, None) else {
            return false;
        };
        self.window.put(*key, id);
        self.rebalance();
        true
    }

    /// Whether `candidate` (leaving the window) may displace main's `victim`.
    fn wins(&self, candidate: &FolioKey, victim: &FolioKey) -> bool {
        !self.epoch.keeps(candidate, victim)
            && self.sketch.estimate(candidate)
                > self.sketch.estimate(victim).saturating_add(self.margin)
    }
}

impl Default for TinyLfuPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl EvictionPolicy for TinyLfuPolicy {
    fn configure(&mut self, capacity: u64, huge_weight: u64) {
        let huge_weight = huge_weight.max(1);
        let floor = if huge_weight > 1 { 4 * huge_weight } else { 1 };
        for r in [&mut self.window, &mut self.ahead, &mut self.main] {
            r.huge_weight = huge_weight;
        }
        self.window_budget = (capacity / 100).max(floor.min(capacity / 4)).max(1);
        self.main_budget = capacity.saturating_sub(self.window_budget);
        // Sized for a tier of huge pages now (a growth later keeps the counts, but a
        // smaller table meanwhile collides more).
        self.sketch_floor = usize::try_from(capacity / huge_weight)
            .unwrap_or(usize::MAX)
            .min(1 << 26);
        self.sketch.ensure(self.sketch_floor);
        // Room for a sequential reader's readahead in flight: up to the 32 MiB window past
        // the reader plus the window being read (32 huge pages).
        self.ahead_limit = (32 * huge_weight)
            .max(self.window_budget)
            .min(capacity / 4)
            .max(huge_weight);
    }

    fn insert(&mut self, key: FolioKey, id: FolioId) {
        self.window.put(key, id);
        self.rebalance();
        self.sketch.ensure(self.len());
    }

    fn insert_speculative(&mut self, key: FolioKey, id: FolioId) {
        self.ahead.put(key, id);
        self.sketch.ensure(self.len());
    }

    fn touch(&mut self, key: &FolioKey) {
        if self.promote(key) {
            self.sketch.increment(key);
        }
    }

    fn touch_again(&mut self, key: &FolioKey) {
        self.promote(key);
    }

    fn remove(&mut self, key: &FolioKey, id: FolioId) {
        let _ = self.window.take(key, Some(id)).is_some()
            || self.ahead.take(key, Some(id)).is_some()
            || self.main.take(key, Some(id)).is_some();
        self.sketch.shrink_to(self.len().max(self.sketch_floor));
    }

    fn pop_victim(&mut self) -> Option<(FolioKey, FolioId)> {
        if self.ahead.weight > self.ahead_limit {
            return self.ahead.pop_lru();
        }
        // Main loses a folio only to a window leaver that beats it — while the window holds
        // at least half its budget: it may be below budget here because the tier evicts
        // before it installs (fills in flight), but drained further its last folio would be
        // the one a reader is in the middle of.
        while let Some(c) = self.window.lru_key() {
            if self.window.weight < self.window_budget / 2 && !self.main.lru.is_empty() {
                break;
            }
            let Some(v) = self.main.lru_key() else {
                return self.window.pop_lru();
            };
            if self.main_has_room(&c) {
                // Main gave room to readahead, or the window grew past its budget: the
                // leaver moves in, no duel.
                self.window_to_main(c);
                continue;
            }
            if self.wins(&c, &v) {
                let victim = self.main.pop_lru();
                self.window_to_main(c);
                return victim;
            }
            return self.window.pop_lru();
        }
        self.main.pop_lru().or_else(|| self.ahead.pop_lru())
    }

    fn record_miss(&mut self, key: &FolioKey) {
        self.sketch.increment(key);
    }

    fn record_use(&mut self, key: &FolioKey) {
        self.sketch.increment(key);
    }

    fn set_hint(&mut self, file: FileId, hint: Hint) {
        self.epoch.set_hint(file, hint);
    }

    fn len(&self) -> usize {
        self.window.lru.len() + self.ahead.lru.len() + self.main.lru.len()
    }

    fn bytes_per_entry(&self) -> u64 {
        let node = (size_of::<FolioKey>() + size_of::<FolioId>() + 2 * size_of::<usize>())
            .next_multiple_of(16);
        let slot = (2 * size_of::<usize>() + 1) * 8 / 7;
        (node + slot) as u64
    }

    fn fixed_bytes(&self) -> u64 {
        // Sized for the folios tracked (or the tier's capacity in huge pages, if more); a
        // table sized for a burst folds back once the burst is gone.
        self.sketch.nibbles.len() as u64
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

    /// The sketch is counted once, as a fixed part that stays after the folios go.
    #[test]
    fn the_sketch_is_counted_as_fixed_bytes() {
        let mut p = TinyLfuPolicy::new();
        let small = p.fixed_bytes();
        assert_eq!(small, (MIN_COUNTERS / 2) as u64);
        for i in 0..1000 {
            p.insert(FolioKey::base(1, i), i);
        }
        let grown = p.fixed_bytes();
        assert!(grown >= 1000 * COUNTERS_PER_ENTRY as u64 / 2, "{grown}");
        for i in 0..1000 {
            p.remove(&FolioKey::base(1, i), i);
        }
        // Folded back once the folios went, to within the fold's factor of its smallest
        // size (a table is kept while the count is within a factor of 4 of it).
        let left = p.fixed_bytes();
        assert!(left <= 2 * small && left < grown / 8, "{left} of {grown}");
    }

    /// Folding keeps every estimate at or above what it was, waits until the folios need a
    /// quarter of the table, and leaves the size the remaining folios need.
    #[test]
    fn sketch_shrink_keeps_estimates_as_over_estimates() {
        let mut s = FrequencySketch::new();
        s.ensure(100_000);
        let big = s.counters();
        let keys: Vec<FolioKey> = (0..5_000).map(|i| FolioKey::base(i % 13, i)).collect();
        for (n, k) in keys.iter().enumerate() {
            for _ in 0..n % 7 {
                s.increment(k);
            }
        }
        let before: Vec<u8> = keys.iter().map(|k| s.estimate(k)).collect();
        // Not yet a quarter: stays.
        s.shrink_to(100_000 / 3);
        assert_eq!(s.counters(), big);
        s.shrink_to(1_000);
        assert_eq!(s.counters(), counters_for(1_000));
        assert!(s.counters() < big / 4);
        for ((k, &b), n) in keys.iter().zip(&before).zip(0..) {
            let e = s.estimate(k);
            assert!(e >= b, "key {n}: {e} < {b}");
            assert!(e as usize >= n % 7, "never under the true count");
        }
        // The halving period follows the size.
        assert_eq!(
            s.period,
            SAMPLES_PER_ENTRY * (counters_for(1_000) / COUNTERS_PER_ENTRY) as u64
        );
    }

    #[test]
    fn the_sketch_keeps_its_configured_size() {
        let mut p = TinyLfuPolicy::new();
        p.configure(4096 * 512, 512);
        let floor = p.fixed_bytes();
        assert_eq!(floor, (counters_for(4096) / 2) as u64);
        for i in 0..200_000 {
            p.insert(FolioKey::base(1, i), i);
        }
        assert!(p.fixed_bytes() > floor);
        for i in 0..200_000 {
            p.remove(&FolioKey::base(1, i), i);
        }
        assert_eq!(p.fixed_bytes(), floor);
    }

    #[test]
    fn sketch_growth_keeps_estimates() {
        let mut s = FrequencySketch::new();
        let keys: Vec<FolioKey> = (0..40).map(|i| FolioKey::huge(i % 7, i)).collect();
        for (n, k) in keys.iter().enumerate() {
            for _ in 0..n % 5 {
                s.increment(k);
            }
        }
        let before: Vec<u8> = keys.iter().map(|k| s.estimate(k)).collect();
        s.ensure(1000);
        assert_eq!(s.counters(), 32768);
        let after: Vec<u8> = keys.iter().map(|k| s.estimate(k)).collect();
        assert_eq!(before, after);
        for (n, &e) in after.iter().enumerate() {
            assert!(e as usize >= n % 5, "never under");
        }
    }

    /// A full policy of `capacity` slots (huge weight 4): base keys 0..capacity of file 1,
    /// each missed once, installed in order (ids = page numbers).
    fn filled(capacity: u64) -> TinyLfuPolicy {
        let mut p = TinyLfuPolicy::new();
        p.configure(capacity, 4);
        for i in 0..capacity {
            p.record_miss(&FolioKey::base(1, i));
            p.insert(FolioKey::base(1, i), i);
        }
        p
    }

    #[test]
    fn regions_are_sized_from_the_capacity() {
        let mut p = TinyLfuPolicy::new();
        p.configure(65536, 512); // 256 MiB of 4 KiB slots, 2 MiB huge pages
        assert_eq!(p.window_budget, 2048, "at least four huge pages");
        p.configure(1 << 20, 512);
        assert_eq!(p.window_budget, (1 << 20) / 100, "1 %");
        p.configure(1000, 1);
        assert_eq!((p.window_budget, p.main_budget), (10, 990));
        p.configure(3, 1);
        assert_eq!(p.window_budget, 1, "never empty");
    }

    /// Uses the policy cannot see (kernel-served reads of an exported file) count in the
    /// sketch without tracking the key: a page coming back after a drop is known as popular.
    #[test]
    fn record_use_counts_frequency_without_tracking() {
        let mut p = TinyLfuPolicy::new();
        p.configure(1024, 512);
        let k = FolioKey::base(9, 0);
        let before = p.sketch.estimate(&k);
        for _ in 0..3 {
            p.record_use(&k);
        }
        assert_eq!(p.sketch.estimate(&k), before + 3);
        assert_eq!(p.len(), 0, "nothing tracked");
    }

    #[test]
    fn window_leaver_duels_mains_lru() {
        // Capacity 100 with huge weight 4: the window is four huge pages (16 slots), not 1 %.
        let mut p = filled(100);
        assert_eq!(
            (p.window.weight, p.main.weight),
            (16, 84),
            "the newest fill the window"
        );
        // Equal frequency: the candidate (the window's LRU) loses and is the victim.
        assert_eq!(p.pop_victim(), Some((FolioKey::base(1, 84), 84)));
        p.insert(FolioKey::base(2, 0), 1000);
        let c = FolioKey::base(1, 85);
        for _ in 0..3 {
            p.touch(&c);
        }
        // Touching made 85 the most recent; the next leaver is 86, a loser again.
        assert_eq!(p.pop_victim(), Some((FolioKey::base(1, 86), 86)));
        p.insert(FolioKey::base(2, 1), 1001);
        for k in (87..100).map(|i| FolioKey::base(1, i)) {
            p.touch(&k);
        }
        p.touch(&FolioKey::base(2, 0));
        p.touch(&FolioKey::base(2, 1));
        // Now 85 leaves: estimate 4 against main's LRU at 1, so it displaces it.
        assert_eq!(p.pop_victim(), Some((FolioKey::base(1, 0), 0)));
        assert!(p.main.lru.contains(&c));
        assert_eq!(p.len(), 99);
        assert_eq!(p.window.weight + p.main.weight, 99);
    }

    #[test]
    fn epoch_rule_keeps_main_epoch_pages() {
        let mut p = filled(100);
        p.set_hint(1, Hint::Epoch);
        let c = FolioKey::base(1, 84);
        for _ in 0..5 {
            p.record_miss(&c);
        }
        assert_eq!(
            p.pop_victim(),
            Some((c, 84)),
            "epoch over epoch never displaces"
        );
        p.set_hint(1, Hint::Normal);
        let c = FolioKey::base(1, 85);
        for _ in 0..5 {
            p.record_miss(&c);
        }
        assert_eq!(p.pop_victim(), Some((FolioKey::base(1, 0), 0)));
    }

    #[test]
    fn readahead_is_kept_until_read_then_joins_the_window() {
        let mut p = filled(100);
        let ahead = FolioKey::huge(3, 0);
        p.insert_speculative(ahead, 7);
        assert_eq!(p.ahead.weight, 4);
        for _ in 0..16 {
            let (k, _) = p.pop_victim().unwrap();
            assert_ne!(
                k, ahead,
                "unread readahead is not a victim while others are"
            );
        }
        p.touch(&ahead);
        assert_eq!((p.ahead.weight, p.window.lru.peek(&ahead)), (0, Some(&7)));
        p.remove(&ahead, 8);
        assert_eq!(p.len(), 85, "stale id: kept");
        p.remove(&ahead, 7);
        assert_eq!(p.len(), 84);
    }

    #[test]
    fn unread_readahead_beyond_a_quarter_goes_first() {
        let mut p = filled(100);
        for i in 0..7 {
            p.insert_speculative(FolioKey::huge(3, i), 200 + i);
        }
        assert_eq!(p.ahead.weight, 28);
        assert_eq!(p.pop_victim(), Some((FolioKey::huge(3, 0), 200)));
        assert_eq!(p.ahead.weight, 24);
    }
}
