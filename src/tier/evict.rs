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
//! never fails for lack of space).
//!
//! # Policies ([`policy_by_name`], [`POLICY_NAMES`])
//! - `tinylfu` — **the default**: W-TinyLFU (Einziger et al., ToS '17; Caffeine's design, see
//!   `tinylfu.rs`). Every miss is installed in a small LRU window (1 % of the tier, at least
//!   four huge pages), readahead's folios wait apart until read, and a window leaver enters
//!   the LRU main region only if a 4-bit count-min sketch (periodic halving) estimates it
//!   more frequent than main's LRU folio by more than [`TINYLFU_MARGIN`](crate::tier::TINYLFU_MARGIN);
//!   otherwise the leaver is the victim.
//! - `lru` — least recently used, on the `lru` crate; admits everything. The reference.
//! - `s3fifo` — S3-FIFO (Yang et al., SOSP '23): a small probationary FIFO (10 %), a main
//!   FIFO with 2-bit reuse counters, a ghost FIFO of recently evicted keys. Scan-resistant.
//!
//! Why `tinylfu` wins on hit ratio (measured with `tier::sim`, 256 MiB dataset of 4 KiB
//! pages, 5 epochs; reproduce with `pagetier simulate`): in a shuffled epoch every page is
//! read once per epoch, so any page kept resident is worth exactly one hit per epoch;
//! replacing it by the page just read (which will not come back this epoch) can only lose.
//! LRU and S3-FIFO replace on every miss. Hit ratio / OPT's at tiers of 1/1.5, 1/2, 1/4 of
//! the dataset:
//!
//! | trace                 | lru              | s3fifo           | tinylfu          |
//! |-----------------------|------------------|------------------|------------------|
//! | sequential epochs     | 0.00 0.00 0.00   | 0.52 0.00 0.00   | 0.99 0.99 0.99   |
//! | shuffled epochs       | 0.45 0.31 0.14   | 0.60 0.50 0.48   | 0.99 0.99 0.96   |
//! | zipf 0.9              | 1.00 0.98 0.89   | 1.00 0.98 0.91   | 1.00 0.98 0.91   |
//! | hot set 50 % + scan   | 0.77 0.80 0.70   | 0.80 0.83 0.92   | 0.99 0.99 0.96   |
//!
//! TinyLFU's frequency comparison sees resident and missed pages of an epoch dataset at
//! (nearly) the same frequency and keeps the incumbents. The margin of 1 is needed because
//! at any moment of an epoch the not-yet-read resident pages are one use behind the missed
//! ones (margin 0: 0.66 of OPT on shuffled epochs at 1/2; margin 2: 0.999, but slower to let
//! a newly hot page in). That is also why a use must be counted once per folio whatever the
//! read size: a 2 MiB page read in two 1 MiB reads counted twice per epoch, and every leaver
//! then beat the incumbents by more than the margin. On zipfian and hot-set-plus-scan
//! traces TinyLFU is at or above LRU (frequency beats recency there). Where recency matters
//! more than frequency (a working set that moves), TinyLFU adapts one sketch-halving period
//! later than LRU — choose `lru` then.
//!
//! # Why the default is `tinylfu`
//! Measured end to end too (`scripts/bench-epochs`: fio training epochs through the device
//! view, 512 MiB of 4 MiB shards, a 256 MiB tier, huge pages on; README "Training-aware
//! tiering" has the table): `tinylfu` keeps about 48 % of the bytes an epoch reads against
//! LRU's 15 %, and its misses are faulted with readahead like LRU's, so it reads epochs 2+
//! faster. An earlier admission-only TinyLFU (no window) refused missed extents in a full
//! tier, which stopped readahead and made it slower than LRU end to end; the window fixed
//! that.
//!
//! # The `epoch` hint
//! `lru` and `tinylfu` also honour [`Hint::Epoch`]: a page of an epoch file never displaces
//! a page that is itself of an epoch file (keep what is resident; see above), whatever
//! recency or frequency say — `lru` refuses the missed page (a bypass), `tinylfu` evicts the
//! window leaver. `s3fifo` ignores hints.

use std::collections::HashSet;

use lru::LruCache;

use crate::tier::folio::FolioId;
use crate::tier::s3fifo::S3FifoPolicy;
use crate::tier::tinylfu::TinyLfuPolicy;
use crate::tier::{FileId, Hint};

/// Names accepted by [`policy_by_name`]; the first is the default.
pub const POLICY_NAMES: [&str; 3] = ["tinylfu", "lru", "s3fifo"];

/// The policy used when none is named.
pub const DEFAULT_POLICY: &str = POLICY_NAMES[0];

/// A policy name that [`policy_by_name`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown eviction policy {0:?}: expected one of tinylfu (default), lru, s3fifo")]
pub struct UnknownPolicy(pub String);

/// A fresh policy by name (ASCII case ignored): one of [`POLICY_NAMES`].
pub fn policy_by_name(name: &str) -> Result<Box<dyn EvictionPolicy>, UnknownPolicy> {
    match name.trim().to_ascii_lowercase().as_str() {
        "lru" => Ok(Box::new(LruPolicy::new())),
        "s3fifo" | "s3-fifo" => Ok(Box::new(S3FifoPolicy::new())),
        "tinylfu" => Ok(Box::new(TinyLfuPolicy::new())),
        _ => Err(UnknownPolicy(name.to_owned())),
    }
}

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
    /// The tier is full: should a victim be evicted so that the missed `candidate` can be
    /// installed? `false` serves the read without installing the page.
    fn admit(&mut self, _candidate: &FolioKey) -> bool {
        true
    }
    /// The file's hint changed (`Hint::Normal` clears it).
    fn set_hint(&mut self, _file: FileId, _hint: Hint) {}
    /// The policy's name, as accepted by [`policy_by_name`].
    fn name(&self) -> &'static str;
    /// Number of tracked folios.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Estimated heap bytes used per tracked folio.
    fn bytes_per_entry(&self) -> u64;
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

/// Least-recently-used, on the `lru` crate.
pub struct LruPolicy {
    lru: LruCache<FolioKey, FolioId>,
    epoch: EpochFiles,
}

impl LruPolicy {
    pub fn new() -> LruPolicy {
        LruPolicy {
            lru: LruCache::unbounded(),
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

    #[test]
    fn policies_by_name() {
        for n in POLICY_NAMES {
            assert_eq!(policy_by_name(n).unwrap().name(), n);
        }
        assert_eq!(policy_by_name(" LRU ").unwrap().name(), "lru");
        let e = policy_by_name("mru").err().unwrap();
        assert!(e.to_string().contains("tinylfu (default)"), "{e}");
        assert_eq!(DEFAULT_POLICY, "tinylfu");
    }

    #[test]
    fn key_encoding() {
        let k = FolioKey::huge(3, 7);
        assert!(k.is_huge());
        assert_eq!(k.position(), 7);
        assert_ne!(k, FolioKey::base(3, 7));
        assert!(!FolioKey::base(3, 7).is_huge());
    }

    #[derive(Clone, Debug)]
    enum Call {
        Insert(u64, bool),
        InsertSpeculative(u64, bool),
        Touch(u64, bool),
        TouchAgain(u64, bool),
        Remove(u64, bool),
        Miss(u64, bool),
        Pop,
        Hint(bool),
    }

    fn key(p: u64, huge: bool) -> FolioKey {
        if huge {
            FolioKey::huge(1 + p % 2, p)
        } else {
            FolioKey::base(1 + p % 2, p)
        }
    }

    fn call() -> impl proptest::strategy::Strategy<Value = Call> {
        use proptest::prelude::*;
        let k = (0u64..24, proptest::bool::weighted(0.3));
        prop_oneof![
            3 => k.clone().prop_map(|(p, h)| Call::Insert(p, h)),
            2 => k.clone().prop_map(|(p, h)| Call::InsertSpeculative(p, h)),
            3 => k.clone().prop_map(|(p, h)| Call::Touch(p, h)),
            1 => k.clone().prop_map(|(p, h)| Call::TouchAgain(p, h)),
            1 => k.clone().prop_map(|(p, h)| Call::Remove(p, h)),
            2 => k.prop_map(|(p, h)| Call::Miss(p, h)),
            3 => Just(Call::Pop),
            1 => proptest::bool::ANY.prop_map(Call::Hint),
        ]
    }

    /// Drives `policy` like the tier (only resident keys are inserted once, removed or
    /// touched) and returns the victims it chose.
    fn replay(name: &str, calls: &[Call]) -> Vec<(FolioKey, FolioId)> {
        let mut p = policy_by_name(name).unwrap();
        p.configure(64, 8);
        let mut held: std::collections::HashMap<FolioKey, FolioId> = Default::default();
        let mut victims = Vec::new();
        for (id, c) in (1u64..).zip(calls) {
            match *c {
                Call::Insert(k, h) | Call::InsertSpeculative(k, h) => {
                    let k = key(k, h);
                    if let std::collections::hash_map::Entry::Vacant(e) = held.entry(k) {
                        e.insert(id);
                        if matches!(c, Call::Insert(..)) {
                            p.insert(k, id);
                        } else {
                            p.insert_speculative(k, id);
                        }
                    }
                }
                Call::Touch(k, h) => p.touch(&key(k, h)),
                Call::TouchAgain(k, h) => p.touch_again(&key(k, h)),
                Call::Remove(k, h) => {
                    let k = key(k, h);
                    if let Some(id) = held.remove(&k) {
                        p.remove(&k, id + 1); // a stale id: ignored
                        p.remove(&k, id);
                    }
                }
                Call::Miss(k, h) => {
                    p.record_miss(&key(k, h));
                    let _ = p.admit(&key(k, h));
                }
                Call::Pop => match p.pop_victim() {
                    Some((k, id)) => {
                        assert_eq!(held.remove(&k), Some(id), "{name}: victim not held");
                        victims.push((k, id));
                    }
                    None => assert!(held.is_empty(), "{name}: no victim from a non-empty set"),
                },
                Call::Hint(on) => p.set_hint(1, if on { Hint::Epoch } else { Hint::Normal }),
            }
            assert_eq!(p.len(), held.len(), "{name}: tracked set");
        }
        // Everything held comes out, once.
        while let Some((k, id)) = p.pop_victim() {
            assert_eq!(held.remove(&k), Some(id), "{name}: drained victim not held");
        }
        assert!(
            held.is_empty() && p.is_empty(),
            "{name}: lost keys {held:?}"
        );
        victims
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

        /// Every policy keeps exactly the set of keys it was given (victims are held keys,
        /// stale removes are ignored, nothing is lost or invented) and replays identically.
        #[test]
        fn policies_keep_the_contract(calls in proptest::collection::vec(call(), 1..300)) {
            for name in POLICY_NAMES {
                let a = replay(name, &calls);
                let b = replay(name, &calls);
                proptest::prop_assert_eq!(a, b, "{} is not deterministic", name);
            }
        }
    }
}
