//! Eviction policies: which resident folio to give up next, and whether a missed page is
//! worth a victim at all. The contract every policy keeps (and the tier's side of it) is
//! stated in `contract.rs`; each policy has its own file; this file only re-exports them and
//! names them ([`policy_by_name`]).
//!
//!
//! # Policies ([`policy_by_name`], [`POLICY_NAMES`])
//! - `tinylfu` — **the default**: W-TinyLFU (Einziger et al., ToS '17; Caffeine's design, see
//!   `tinylfu.rs`). Every miss is installed in a small LRU window (1 % of the tier, at least
//!   four huge pages), readahead's folios wait apart until read, and a window leaver enters
//!   the LRU main region only if a 4-bit count-min sketch (periodic halving) estimates it
//!   more frequent than main's LRU folio by more than [`TINYLFU_MARGIN`];
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
//! `lru` and `tinylfu` also honour [`Hint::Epoch`](crate::tier::Hint::Epoch): a page of an epoch file never displaces
//! a page that is itself of an epoch file (keep what is resident; see above), whatever
//! recency or frequency say — `lru` refuses the missed page (a bypass), `tinylfu` evicts the
//! window leaver. `s3fifo` ignores hints.

mod contract;
mod lru;
mod recency;
mod s3fifo;
mod tinylfu;

pub use self::contract::{EvictionPolicy, FolioKey};
pub use self::lru::LruPolicy;
pub use self::s3fifo::S3FifoPolicy;
pub use self::tinylfu::TinyLfuPolicy;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::hint::Hint;
    use crate::tier::types::FolioId;

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
