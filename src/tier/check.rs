//! Test-only checks of the tier's invariants, used by the unit, model and shuttle tests.

use crate::tier::DeviceTier;
use crate::tier::hint::Hint;
use crate::tier::map::{Entry, ExportSlot};
use crate::tier::policy::FolioKey;
use crate::tier::reclaim::slots_of;
use crate::tier::sync::{Ordering, lock};
use crate::tier::types::{FileId, HUGE_PAGE_SIZE, PAGE_SIZE, SLOTS_PER_CHUNK};

impl DeviceTier {
    pub(super) fn check_invariants(&self) {
        self.arena.check_invariants();
        let (mut huge, mut base) = (0, 0);
        let mut filling = 0;
        let (mut pinned, mut pinned_slots) = (0u64, 0u64);
        let (mut compact, mut compact_lent) = (0u64, 0u64);
        for s in self.shards.iter() {
            for st in lock(&s.files).values() {
                if let ExportSlot::Idle(idle) = &st.export {
                    compact += 1;
                    compact_lent += idle.lent_slots();
                }
                for k in st.pinned.iter() {
                    assert!(
                        matches!(st.get(k), Some(Entry::Ready(_))),
                        "pinned key {k:?} is not resident"
                    );
                    assert_eq!(st.hint(), Hint::Pin, "pinned folio of an unpinned file");
                    pinned += 1;
                    pinned_slots += slots_of(k);
                }
                let (h, b) = st.resident_counts();
                huge += h;
                base += b;
                filling += st.huge.len() as u64 + st.base.len() as u64 - h - b;
                for (&e, x) in &st.huge {
                    if matches!(x, Entry::Ready(_)) {
                        assert!(
                            st.base_in_extent(e).next().is_none(),
                            "extent {e} both huge and base"
                        );
                    }
                }
            }
        }
        assert_eq!(filling, 0, "fills left behind");
        assert_eq!(huge, self.stats.resident_huge.load(Ordering::Relaxed));
        assert_eq!(base, self.stats.resident_base.load(Ordering::Relaxed));
        assert_eq!(
            lock(&self.policy).len() as u64 + pinned,
            huge + base,
            "policy tracks exactly the resident unpinned folios"
        );
        let lent = self.arena.lent_slots();
        let idle_lent = self.idle_lent.load(Ordering::Relaxed);
        assert!(
            idle_lent <= lent,
            "idle exports lend part of the lent capacity"
        );
        assert_eq!(
            compact,
            self.exports_compact.load(Ordering::Relaxed),
            "compact exports are counted"
        );
        assert!(
            compact_lent <= idle_lent,
            "compact exports are idle ones: {compact_lent} > {idle_lent} slots"
        );
        assert_eq!(
            self.pinned_slots.load(Ordering::Relaxed),
            pinned_slots + lent - idle_lent,
            "pinned folios and the copies of exports in use hold the pin budget"
        );
        assert!(pinned_slots <= self.pin_budget, "pin budget exceeded");
        assert_eq!(
            self.arena.used_slots(),
            huge * SLOTS_PER_CHUNK as u64 + base + lent,
            "no leaked arena memory"
        );
    }

    /// Keys of the file's pinned folios, sorted.
    pub(super) fn pinned_keys(&self, file: FileId) -> Vec<FolioKey> {
        let g = lock(&self.shard(file).files);
        let mut v: Vec<FolioKey> = g
            .get(&file)
            .map(|st| st.pinned.iter().copied().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Asserts every resident byte of `file` equals `truth` (zero past its end).
    pub(super) fn audit(&self, file: FileId, truth: &[u8]) {
        let g = lock(&self.shard(file).files);
        let Some(st) = g.get(&file) else { return };
        let check = |start: u64, bytes: &[u8]| {
            let s = (start as usize).min(truth.len());
            let e = (start as usize + bytes.len()).min(truth.len());
            let n = e - s;
            if bytes[..n] != truth[s..e] || bytes[n..].iter().any(|&b| b != 0) {
                let i = (0..bytes.len())
                    .find(|&i| bytes[i] != truth.get(start as usize + i).copied().unwrap_or(0));
                panic!(
                    "stale byte in resident page of file {file} at offset {:?}",
                    i.map(|i| start as usize + i)
                );
            }
        };
        for (&e, x) in &st.huge {
            if let Entry::Ready(f) = x {
                check(e * HUGE_PAGE_SIZE, f.bytes());
            }
        }
        for (&p, x) in &st.base {
            if let Entry::Ready(f) = x {
                check(p * PAGE_SIZE, f.bytes());
            }
        }
    }
}
