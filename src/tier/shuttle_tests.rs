//! Concurrency tests under shuttle (`cargo nextest run --features shuttle -E 'test(shuttle)'`):
//! with the `shuttle` feature, `sync.rs` hands the tier shuttle's locks, condition variables,
//! atomics and threads, and each test below runs many randomized schedules of a few threads
//! racing fills, invalidations (with splits), readers holding pinned bytes, eviction and
//! readahead. After every schedule the tier's invariants must hold (`check_invariants`), no
//! resident byte may be stale (`audit`), the arena never exceeds its capacity, a reader's
//! pinned bytes never change under it, and every read returns bytes at least as new as
//! the last write that completed before the read started.
//!
//! Schedules come from a seeded random scheduler (reproducible) and from PCT (which finds
//! bugs of small depth with known probability); iteration counts keep the whole run to a
//! few seconds.

use std::io;

use crate::tier::sync::{Arc, AtomicU64, Mutex, Ordering, lock, thread};
use crate::tier::{
    DeviceTier, FileId, FillSource, HUGE_PAGE_SIZE, InvalidationCause, PAGE_SIZE, Served,
    SharedSource, TierConfig, TierOptions, policy_by_name,
};

const MIB: u64 = 1 << 20;
/// Schedules per test and scheduler (the two-thread race is cheap: it gets ten times as many).
const ITERATIONS: usize = 100;
/// Seed of the random scheduler (a failure names the schedule to replay).
const SEED: u64 = 0x5EED_71E2;

/// Storage whose every page holds one version stamp (a u64 repeated); version 0 at first.
/// Its lock is the tier's kind (shuttle's here), so storage reads are scheduling points too.
struct Store {
    data: Mutex<Vec<u8>>,
    /// Per page: the newest version whose write (storage and invalidation) has completed.
    committed: Vec<AtomicU64>,
}

impl Store {
    fn new(size: u64) -> Arc<Store> {
        Arc::new(Store {
            data: Mutex::new(vec![0; size as usize]),
            committed: (0..size / PAGE_SIZE).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn len(&self) -> u64 {
        lock(&self.data).len() as u64
    }

    /// A host write: stamps pages `[first, first + n)` with `version` in storage, then
    /// invalidates them in the tier (as the FUSE layer does after the write), then records
    /// the version as committed.
    fn write(&self, t: &DeviceTier, file: FileId, first: u64, n: u64, version: u64) {
        {
            let mut d = lock(&self.data);
            let (a, b) = (
                (first * PAGE_SIZE) as usize,
                ((first + n) * PAGE_SIZE) as usize,
            );
            for word in d[a..b].chunks_exact_mut(8) {
                word.copy_from_slice(&version.to_le_bytes());
            }
        }
        t.invalidate_range(
            file,
            first * PAGE_SIZE,
            n * PAGE_SIZE,
            InvalidationCause::Write,
        );
        for c in &self.committed[first as usize..(first + n) as usize] {
            c.fetch_max(version, Ordering::SeqCst);
        }
    }

    /// The committed versions of the pages `[offset, offset + len)` covers.
    fn floors(&self, offset: u64, len: u64) -> Vec<u64> {
        let first = (offset / PAGE_SIZE) as usize;
        let end = (offset + len).div_ceil(PAGE_SIZE) as usize;
        self.committed[first..end.min(self.committed.len())]
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }

    fn snapshot(&self) -> Vec<u8> {
        lock(&self.data).clone()
    }
}

impl FillSource for Store {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let d = lock(&self.data);
        let off = (offset as usize).min(d.len());
        let n = buf.len().min(d.len() - off);
        buf[..n].copy_from_slice(&d[off..off + n]);
        Ok(n)
    }
}

fn tier(chunks: u64, readahead_max: u64) -> Arc<DeviceTier> {
    let cfg = TierConfig {
        capacity: chunks * HUGE_PAGE_SIZE,
        huge_pages: true,
    };
    let opts = TierOptions {
        readahead_max,
        ..TierOptions::default()
    };
    Arc::new(DeviceTier::with_options(cfg, policy_by_name("lru").unwrap(), opts).unwrap())
}

/// Asserts that `bytes` (file offset `offset`, page-aligned) are whole pages each holding
/// one version at least its floor.
fn assert_fresh(bytes: &[u8], offset: u64, floors: &[u64], what: &str) {
    for (i, page) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
        let v = u64::from_le_bytes(page[..8].try_into().unwrap());
        assert!(
            page.chunks_exact(8).all(|w| w == v.to_le_bytes()),
            "{what}: torn page at {}",
            offset + i as u64 * PAGE_SIZE
        );
        assert!(
            v >= floors[i],
            "{what}: stale page at {}: version {v} < committed {}",
            offset + i as u64 * PAGE_SIZE,
            floors[i]
        );
    }
}

/// A device read through the entry point, checked for freshness; returns what it served.
fn read_checked(t: &Arc<DeviceTier>, store: &Arc<Store>, file: FileId, offset: u64, len: u64) {
    let src: SharedSource = store.clone();
    let floors = store.floors(offset, len);
    let mut out = vec![0u8; len as usize];
    let size = store.len();
    let n = t
        .read(file, offset, &mut out, &src, || Ok(store.len()))
        .unwrap()
        .into_copied(&mut out);
    assert_eq!(n as u64, len.min(size.saturating_sub(offset)), "short read");
    assert_fresh(&out[..n], offset, &floors, "read");
}

/// The checks after every schedule.
fn assert_settled(t: &DeviceTier, files: &[(FileId, &Arc<Store>)]) {
    t.check_invariants();
    for (file, store) in files {
        t.audit(*file, &store.snapshot());
    }
    let s = t.stats();
    assert!(
        s.device.used_bytes <= s.device.capacity_bytes,
        "capacity exceeded"
    );
}

/// The smallest race: a reader faulting file 1's first huge page (served pinned) or base
/// pages, against a writer rewriting pages inside that extent.
fn fill_vs_invalidate() {
    let t = tier(2, 0);
    let one = Store::new(4 * MIB);
    let reader = {
        let (t, one) = (t.clone(), one.clone());
        thread::spawn(move || {
            read_checked(&t, &one, 1, 0, 16 * PAGE_SIZE);
            read_checked(&t, &one, 1, 40 * PAGE_SIZE, 2 * PAGE_SIZE);
        })
    };
    let writer = {
        let (t, one) = (t.clone(), one.clone());
        thread::spawn(move || {
            one.write(&t, 1, 1, 1, 1);
            one.write(&t, 1, 40, 2, 2);
        })
    };
    reader.join().unwrap();
    writer.join().unwrap();
    assert_settled(&t, &[(1, &one)]);
}

#[test]
fn shuttle_fill_vs_invalidate_random() {
    shuttle::check_random_with_seed(fill_vs_invalidate, SEED, 10 * ITERATIONS);
}

#[test]
fn shuttle_fill_vs_invalidate_pct() {
    shuttle::check_pct(fill_vs_invalidate, 10 * ITERATIONS, 3);
}

/// Four threads on a tier of two chunks: a reader faulting a huge page and base pages of
/// file 1, a reader pinning bytes of file 1's first huge page and holding them across
/// scheduling points, a writer invalidating (and so splitting) parts of file 1, and a
/// reader of file 2 whose faults evict file 1's pages.
fn fill_invalidate_pin_evict() {
    let t = tier(2, 0);
    let one = Store::new(4 * MIB);
    let two = Store::new(2 * MIB);
    let reader = {
        let (t, one) = (t.clone(), one.clone());
        thread::spawn(move || {
            read_checked(&t, &one, 1, 0, MIB);
            read_checked(&t, &one, 1, 2 * MIB + 3 * PAGE_SIZE, 2 * PAGE_SIZE);
            read_checked(&t, &one, 1, MIB, 2 * MIB);
        })
    };
    let pinner = {
        let (t, one) = (t.clone(), one.clone());
        thread::spawn(move || {
            let src: SharedSource = one.clone();
            let floors = one.floors(0, 16 * PAGE_SIZE);
            let mut out = vec![0u8; 16 * PAGE_SIZE as usize];
            let served = t.read(1, 0, &mut out, &src, || Ok(4 * MIB)).unwrap();
            match served {
                Served::Resident(bytes) => {
                    assert_fresh(&bytes, 0, &floors, "pinned read");
                    let seen = bytes.to_vec();
                    // Held across scheduling points without taking a lock (the pin
                    // contract): nothing may free or reuse the memory meanwhile.
                    thread::yield_now();
                    thread::yield_now();
                    assert!(bytes[..] == seen[..], "pinned bytes changed under a reader");
                }
                Served::Copied(n) => assert_fresh(&out[..n], 0, &floors, "copied read"),
            }
        })
    };
    let writer = {
        let (t, one) = (t.clone(), one.clone());
        thread::spawn(move || {
            one.write(&t, 1, 1, 2, 1);
            one.write(&t, 1, 600, 1, 2);
            one.write(&t, 1, 0, 1, 3);
        })
    };
    let evictor = {
        let (t, two) = (t.clone(), two.clone());
        thread::spawn(move || {
            read_checked(&t, &two, 2, 0, 2 * MIB);
            t.prefetch(2, 2 * MIB, 0, 2 * MIB, &*two).unwrap();
            t.invalidate_file(2, InvalidationCause::Evict);
        })
    };
    for h in [reader, pinner, writer, evictor] {
        h.join().unwrap();
    }
    assert_settled(&t, &[(1, &one), (2, &two)]);
}

#[test]
fn shuttle_fill_invalidate_pin_evict_random() {
    shuttle::check_random_with_seed(fill_invalidate_pin_evict, SEED, ITERATIONS);
}

#[test]
fn shuttle_fill_invalidate_pin_evict_pct() {
    shuttle::check_pct(fill_invalidate_pin_evict, ITERATIONS, 3);
}

/// A sequential reader with readahead (the pool's threads are shuttle's) while a writer
/// invalidates pages ahead of it: no readahead fill that raced the write may stay.
fn readahead_vs_invalidate() {
    let t = tier(4, 4 * MIB);
    let one = Store::new(6 * MIB);
    let reader = {
        let (t, one) = (t.clone(), one.clone());
        thread::spawn(move || {
            for i in 0..3 {
                read_checked(&t, &one, 1, i * MIB, MIB);
            }
        })
    };
    let writer = {
        let (t, one) = (t.clone(), one.clone());
        thread::spawn(move || {
            one.write(&t, 1, 700, 3, 1);
            one.write(&t, 1, 1100, 1, 2);
        })
    };
    reader.join().unwrap();
    writer.join().unwrap();
    t.wait_readahead();
    assert_settled(&t, &[(1, &one)]);
}

#[test]
fn shuttle_readahead_vs_invalidate_random() {
    shuttle::check_random_with_seed(readahead_vs_invalidate, SEED, ITERATIONS / 2);
}

/// A reader while the file shrinks (storage first, then the tier, as the FUSE layer does on
/// truncate): the read is retried with the new size and returns a prefix of either file,
/// never an error or bytes from beyond the new end.
fn read_vs_shrink() {
    const OLD: u64 = 4 * MIB;
    const NEW: u64 = MIB + 5 * PAGE_SIZE;
    let t = tier(2, 0);
    let one = Store::new(OLD);
    one.write(&t, 1, 0, OLD / PAGE_SIZE, 1);
    let reader = {
        let (t, one) = (t.clone(), one.clone());
        thread::spawn(move || {
            let src: SharedSource = one.clone();
            let mut out = vec![0u8; 2 * MIB as usize];
            let n = t
                .read(1, 0, &mut out, &src, || Ok(one.len()))
                .unwrap()
                .into_copied(&mut out);
            assert!(n as u64 == 2 * MIB || n as u64 == NEW, "read {n} bytes");
            assert_fresh(&out[..n], 0, &vec![1; n.div_ceil(4096)], "read");
        })
    };
    let truncator = {
        let (t, one) = (t.clone(), one.clone());
        thread::spawn(move || {
            lock(&one.data).truncate(NEW as usize);
            t.invalidate_range(1, NEW, u64::MAX, InvalidationCause::Truncate);
        })
    };
    reader.join().unwrap();
    truncator.join().unwrap();
    assert_settled(&t, &[(1, &one)]);
}

#[test]
fn shuttle_read_vs_shrink_random() {
    shuttle::check_random_with_seed(read_vs_shrink, SEED, ITERATIONS);
}
