//! Facade tests: unit cases, a proptest reference model (random operation sequences checked
//! step by step against a plain model of the file bytes, with the invariants after each
//! step) and a multi-threaded freshness test (writers invalidate, readers verify version
//! stamps: zero stale reads).

use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64 as StdAtomicU64, AtomicUsize, Ordering as O};

use proptest::prelude::*;

use super::*;
use crate::iomode::Registration;
use crate::tier::types::RA_INITIAL_WINDOW;

const MIB: u64 = 1 << 20;

/// Storage backed by a byte vector; checks the `FillSource` alignment contract.
struct VecSource {
    data: StdMutex<Vec<u8>>,
    calls: AtomicUsize,
}

impl VecSource {
    fn new(data: Vec<u8>) -> VecSource {
        VecSource {
            data: StdMutex::new(data),
            calls: AtomicUsize::new(0),
        }
    }
}

fn slice_read(data: &[u8], buf: &mut [u8], offset: u64) -> io::Result<usize> {
    assert_eq!(offset % PAGE_SIZE, 0, "unaligned offset");
    assert_eq!(buf.len() % PAGE_SIZE as usize, 0, "unaligned length");
    assert_eq!(
        buf.as_ptr() as usize % PAGE_SIZE as usize,
        0,
        "unaligned buffer"
    );
    let off = (offset as usize).min(data.len());
    let n = buf.len().min(data.len() - off);
    buf[..n].copy_from_slice(&data[off..off + n]);
    Ok(n)
}

impl FillSource for VecSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.calls.fetch_add(1, O::Relaxed);
        slice_read(&self.data.lock().unwrap(), buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.data.lock().unwrap().len() as u64)
    }
}

struct SliceSource<'a>(&'a [u8]);

impl FillSource for SliceSource<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        slice_read(self.0, buf, offset)
    }
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// A tier with the reference LRU policy (the unit tests below assume its victim order) and
/// no readahead: every fault is the test's own reads'.
fn tier(chunks: u64, huge: bool) -> Arc<DeviceTier> {
    tier_with(chunks, huge, "lru")
}

/// [`tier`] with another policy.
fn tier_with(chunks: u64, huge: bool, policy: &str) -> Arc<DeviceTier> {
    tier_opts_ra(chunks, huge, policy, 0)
}

/// A tier with readahead as configured by default.
fn tier_ra(chunks: u64, huge: bool, policy: &str) -> Arc<DeviceTier> {
    tier_opts_ra(chunks, huge, policy, TierOptions::default().readahead_max)
}

fn tier_opts_ra(chunks: u64, huge: bool, policy: &str, readahead_max: u64) -> Arc<DeviceTier> {
    let cfg = TierConfig {
        capacity: chunks * HUGE_PAGE_SIZE,
        huge_pages: huge,
    };
    let opts = TierOptions {
        readahead_max,
        ..TierOptions::default()
    };
    Arc::new(DeviceTier::with_options(cfg, policy_by_name(policy).unwrap(), opts).unwrap())
}

/// A shared source over a copy of `data`.
fn shared(data: &[u8]) -> SharedSource {
    Arc::new(VecSource::new(data.to_vec()))
}

/// A device read through the tier's entry point, of a file whose size stays `size`;
/// returns the bytes served, copied into `out`.
fn read_into(
    t: &Arc<DeviceTier>,
    file: FileId,
    size: u64,
    off: u64,
    out: &mut [u8],
    src: &SharedSource,
) -> io::Result<usize> {
    Ok(t.read(file, off, out, src, || Ok(size))?.into_copied(out))
}

fn read_vec(
    t: &Arc<DeviceTier>,
    file: FileId,
    size: u64,
    off: u64,
    len: usize,
    src: &SharedSource,
) -> Vec<u8> {
    let mut out = vec![0xAA; len];
    let n = read_into(t, file, size, off, &mut out, src).unwrap();
    out.truncate(n);
    out
}

#[test]
fn config_errors_are_clear() {
    let e = DeviceTier::new(TierConfig {
        capacity: MIB,
        huge_pages: true,
    })
    .unwrap_err();
    assert!(matches!(e, TierError::CapacityTooSmall { .. }), "{e}");
    let e = DeviceTier::new(TierConfig {
        capacity: 1 << 62,
        huge_pages: true,
    })
    .unwrap_err();
    assert!(matches!(e, TierError::CapacityExceedsMemory { .. }), "{e}");
    assert!(e.to_string().contains("MemAvailable"));
    let t = DeviceTier::new(TierConfig {
        capacity: 5 * MIB,
        huge_pages: false,
    })
    .unwrap();
    assert_eq!(t.config().capacity, 4 * MIB, "rounded down to chunks");
    assert_eq!(t.stats().device.capacity_bytes, 4 * MIB);
}

#[test]
fn sequential_read_faults_huge_then_hits() {
    let data = pattern(6 * MIB, 1);
    let store = Arc::new(VecSource::new(data.clone()));
    let src: SharedSource = store.clone();
    let t = tier(4, true);
    assert_eq!(
        read_vec(&t, 1, 6 * MIB, 0, MIB as usize, &src),
        &data[..MIB as usize]
    );
    assert_eq!(
        t.residency(1),
        Residency {
            resident_bytes: 2 * MIB,
            huge_pages: 1,
            base_pages: 0
        }
    );
    assert_eq!(
        read_vec(&t, 1, 6 * MIB, MIB, 64 << 10, &src),
        &data[MIB as usize..(MIB + (64 << 10)) as usize]
    );
    let s = t.stats();
    assert_eq!((s.device.reads, s.device.misses, s.device.hits), (2, 1, 1));
    assert_eq!(s.device.bytes_faulted, 2 * MIB);
    assert_eq!(s.device.bytes_served, MIB + (64 << 10));
    assert_eq!(
        store.calls.load(O::Relaxed),
        1,
        "one storage read per huge fault"
    );
    t.check_invariants();
}

#[test]
fn small_random_reads_fault_base_pages() {
    let data = pattern(6 * MIB, 2);
    let src = shared(&data);
    let t = tier(4, true);
    let off = 3 * MIB + 4000;
    assert_eq!(
        read_vec(&t, 1, 6 * MIB, off, 200, &src),
        &data[off as usize..off as usize + 200]
    );
    assert_eq!(
        t.residency(1),
        Residency {
            resident_bytes: 8192,
            huge_pages: 0,
            base_pages: 2
        }
    );
    assert_eq!(t.stats().device.misses, 2);
    t.check_invariants();
}

#[test]
fn huge_pages_off_never_faults_huge() {
    let data = pattern(3 * MIB, 3);
    let src = shared(&data);
    let t = tier(2, false);
    assert_eq!(read_vec(&t, 1, 3 * MIB, 0, 3 * MIB as usize, &src), data);
    assert_eq!(t.residency(1).huge_pages, 0);
    assert_eq!(t.residency(1).base_pages, 768);
    t.check_invariants();
}

#[test]
fn tail_is_clipped_and_zero_filled() {
    let size = 2 * MIB + 100;
    let data = pattern(size, 4);
    let src = shared(&data);
    let t = tier(2, true);
    let got = read_vec(&t, 1, size, 0, 4 * MIB as usize, &src);
    assert_eq!(got, data);
    let r = t.residency(1);
    assert_eq!(
        (r.huge_pages, r.base_pages),
        (1, 1),
        "the tail extent uses base pages"
    );
    assert_eq!(read_vec(&t, 1, size, size, 10, &src), Vec::<u8>::new());
    assert_eq!(
        read_vec(&t, 1, size, size - 1, 10, &src),
        &data[size as usize - 1..]
    );
    t.audit(1, &data);
    t.check_invariants();
}

#[test]
fn partial_invalidation_splits_and_refault_collapses() {
    let mut data = pattern(4 * MIB, 5);
    let t = tier(3, true);
    read_vec(&t, 1, 4 * MIB, 0, 2 * MIB as usize, &shared(&data));
    assert_eq!(t.residency(1).huge_pages, 1);
    data[4096..8192].fill(0x77);
    assert_eq!(
        t.invalidate_range(1, 4096, 4096, InvalidationCause::Write),
        1
    );
    let r = t.residency(1);
    assert_eq!((r.huge_pages, r.base_pages), (0, 511));
    let s = t.stats();
    assert_eq!((s.device.splits, s.invalidations.write), (1, 1));
    t.audit(1, &data);
    t.check_invariants();
    // Re-read the extent sequentially: the hole refaults into its home slot and collapses.
    assert_eq!(
        read_vec(&t, 1, 4 * MIB, 0, 2 * MIB as usize, &shared(&data)),
        &data[..2 * MIB as usize]
    );
    let r = t.residency(1);
    assert_eq!((r.huge_pages, r.base_pages), (1, 0));
    assert_eq!(t.stats().device.collapses, 1);
    t.audit(1, &data);
    t.check_invariants();
}

#[test]
fn invalidation_across_extents_and_to_eof() {
    let data = pattern(6 * MIB, 6);
    let t = tier(4, true);
    read_vec(&t, 1, 6 * MIB, 0, 6 * MIB as usize, &shared(&data));
    assert_eq!(t.residency(1).huge_pages, 3);
    // Truncate to 3 MiB + 1: extent 1 is split (pages 768.. overlap, 256 dropped, 256 kept),
    // extent 2 is dropped whole (1).
    let dropped = t.invalidate_range(1, 3 * MIB + 1, u64::MAX, InvalidationCause::Truncate);
    assert_eq!(dropped, 256 + 1);
    let r = t.residency(1);
    assert_eq!((r.huge_pages, r.base_pages), (1, 256));
    assert_eq!(t.stats().invalidations.truncate, 257);
    assert_eq!(t.invalidate_range(1, 0, 0, InvalidationCause::Write), 0);
    assert_eq!(t.invalidate_file(1, InvalidationCause::Evict), 257);
    assert_eq!(t.residency(1), Residency::default());
    assert_eq!(t.stats().invalidations.evict, 257);
    assert_eq!(t.invalidate_file(1, InvalidationCause::Evict), 0);
    t.check_invariants();
}

#[test]
fn eviction_keeps_capacity_and_serves_correct_bytes() {
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| pattern(4 * MIB + 4096 * i, i as u8))
        .collect();
    let t = tier(2, true);
    for round in 0..3 {
        for (i, d) in files.iter().enumerate() {
            let got = read_vec(&t, i as u64, d.len() as u64, 0, d.len(), &shared(d));
            assert!(got == *d, "round {round} file {i}");
            assert!(t.stats().device.used_bytes <= 4 * MIB);
        }
    }
    assert!(t.stats().device.evictions > 0);
    t.check_invariants();
}

#[test]
fn fragmented_arena_falls_back_to_base_pages() {
    let data = pattern(8 * MIB, 7);
    let t = tier(2, true);
    let src = shared(&data);
    // Scatter base pages of many files over both chunks (non-sequential small reads).
    for f in 0..600u64 {
        read_vec(&t, 100 + f, 8 * MIB, 4096 * (1 + f % 1000), 10, &src);
    }
    let got = read_vec(&t, 1, 8 * MIB, 0, 8 * MIB as usize, &shared(&data));
    assert!(got == data);
    assert!(t.stats().device.used_bytes <= 4 * MIB);
    t.check_invariants();
}

#[test]
fn storage_errors_propagate_and_leave_nothing() {
    struct Broken;
    impl FillSource for Broken {
        fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
    }
    let t = tier(2, true);
    let mut out = vec![0; 4096];
    let e = read_into(
        &t,
        1,
        4 * MIB,
        0,
        &mut out,
        &(Arc::new(Broken) as SharedSource),
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(t.prefetch(1, 4 * MIB, 0, 4 * MIB, &Broken).is_err());
    assert_eq!(t.residency(1), Residency::default());
    assert_eq!(t.stats().device.used_bytes, 0);
    t.check_invariants();
    let data = pattern(4 * MIB, 8);
    assert_eq!(
        read_vec(&t, 1, 4 * MIB, 0, 4096, &shared(&data)),
        &data[..4096]
    );
}

#[test]
fn panicking_source_does_not_wedge_waiters() {
    struct Panics;
    impl FillSource for Panics {
        fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<usize> {
            panic!("source bug")
        }
    }
    let t = tier(2, true);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut out = vec![0; 4096];
        read_into(
            &t,
            1,
            4 * MIB,
            0,
            &mut out,
            &(Arc::new(Panics) as SharedSource),
        )
    }));
    assert!(r.is_err());
    t.check_invariants();
    let data = pattern(4 * MIB, 9);
    assert_eq!(
        read_vec(&t, 1, 4 * MIB, 0, 4096, &shared(&data)),
        &data[..4096]
    );
}

#[test]
fn fill_racing_an_invalidation_is_discarded() {
    // A short read off the previous read's end: a base-page fault, copied from the fill.
    let t = tier(2, true);
    let src = Racy::new(&t, 7);
    let before = src.data.lock().unwrap().clone();
    let got = read_vec(&t, 7, 4 * MIB, 4096, 4096, &(src as SharedSource));
    assert_eq!(
        got,
        &before[4096..8192],
        "the reader gets what storage had when it read"
    );
    let s = t.stats();
    assert_eq!(s.device.discarded_fills, 1);
    assert_eq!(
        t.residency(7),
        Residency::default(),
        "the stale fill was not installed"
    );
    t.check_invariants();
}

#[test]
fn pinned_fault_racing_an_invalidation_is_faulted_again_and_copied() {
    // A read inside one huge page at a file's start: faulted to be served pinned; the fill
    // is discarded, so the read faults once more and copies that fill (also discarded).
    let t = tier(2, true);
    let src = Racy::new(&t, 8);
    let mut want = src.data.lock().unwrap()[..4096].to_vec();
    want[0] ^= 0xFF; // what storage held at the second fill
    let got = read_vec(&t, 8, 4 * MIB, 0, 4096, &(src as SharedSource));
    assert_eq!(
        got, want,
        "the reader gets what storage had when it last read"
    );
    let s = t.stats();
    assert_eq!(s.device.discarded_fills, 2);
    assert_eq!(
        t.residency(8),
        Residency::default(),
        "no stale fill installed"
    );
    t.check_invariants();
}

/// Storage whose content changes (with an invalidation) while a fill is reading it: after
/// each read, the first byte read is flipped and invalidated.
struct Racy {
    tier: std::sync::Weak<DeviceTier>,
    file: FileId,
    data: StdMutex<Vec<u8>>,
}

impl Racy {
    fn new(t: &Arc<DeviceTier>, file: FileId) -> Arc<Racy> {
        Arc::new(Racy {
            tier: Arc::downgrade(t),
            file,
            data: StdMutex::new(pattern(4 * MIB, 10)),
        })
    }
}

impl FillSource for Racy {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = slice_read(&self.data.lock().unwrap(), buf, offset)?;
        self.data.lock().unwrap()[offset as usize] ^= 0xFF; // a host write lands after our read ...
        self.tier.upgrade().unwrap().invalidate_range(
            self.file,
            offset,
            1,
            InvalidationCause::Write,
        ); // ... and invalidates
        Ok(n)
    }
}

#[test]
fn concurrent_faults_of_one_extent_read_storage_once() {
    struct Slow(VecSource);
    impl FillSource for Slow {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            std::thread::sleep(std::time::Duration::from_millis(30));
            self.0.read_at(buf, offset)
        }
    }
    let data = pattern(2 * MIB, 11);
    let slow = Arc::new(Slow(VecSource::new(data.clone())));
    let src: SharedSource = slow.clone();
    let t = tier(2, true);
    let barrier = std::sync::Barrier::new(8);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                barrier.wait();
                assert!(read_vec(&t, 1, 2 * MIB, 0, 2 * MIB as usize, &src) == data);
            });
        }
    });
    assert_eq!(slow.0.calls.load(O::Relaxed), 1);
    let s = t.stats();
    assert_eq!((s.device.misses, s.device.hits), (1, 7));
    t.check_invariants();
}

#[test]
fn prefetch_reports_and_counts_no_reads() {
    let data = pattern(5 * MIB, 12);
    let t = tier(4, true);
    let src = SliceSource(&data);
    let r = t.prefetch(1, 5 * MIB, 0, u64::MAX, &src).unwrap();
    assert_eq!(
        r,
        PrefetchReport {
            faulted_bytes: 5 * MIB,
            already_resident_bytes: 0,
            skipped_bytes: 0
        }
    );
    let res = t.residency(1);
    assert_eq!((res.huge_pages, res.base_pages), (2, 256));
    let r = t.prefetch(1, 5 * MIB, MIB, MIB, &src).unwrap();
    assert_eq!(r.already_resident_bytes, MIB);
    assert_eq!(
        t.prefetch(1, 5 * MIB, 5 * MIB, 10, &src).unwrap(),
        PrefetchReport::default()
    );
    let s = t.stats();
    assert_eq!((s.device.reads, s.device.hits, s.device.misses), (0, 0, 0));
    t.audit(1, &data);
    t.check_invariants();
}

#[test]
fn stats_json_and_refused_writes() {
    let t = tier(1, true);
    t.count_refused_write();
    t.count_refused_write();
    let s = t.stats();
    assert_eq!(s.device.refused_writes, 2);
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["device"]["huge_pages_enabled"], true);
    assert_eq!(v["invalidations"]["unlink_rename"], 0);
    assert!(s.device.metadata_bytes > 0);
    let r = serde_json::to_string(&t.residency(3)).unwrap();
    assert_eq!(r, r#"{"resident_bytes":0,"huge_pages":0,"base_pages":0}"#);
}

/// Metadata estimate per GiB resident (scaled from a 64 MiB arena).
#[test]
fn metadata_is_small_with_huge_pages() {
    for huge in [true, false] {
        let t = tier(32, huge);
        let empty = t.metadata_bytes();
        let data = pattern(64 * MIB, 13);
        t.prefetch(1, 64 * MIB, 0, 64 * MIB, &SliceSource(&data))
            .unwrap();
        assert_eq!(t.stats().device.used_bytes, 64 * MIB);
        let per_gib = t.metadata_bytes() * 16;
        let per_gib_folios = (t.metadata_bytes() - empty) * 16;
        eprintln!(
            "huge_pages={huge}: metadata ~{per_gib} B per GiB resident ({per_gib_folios} B per GiB for folios)"
        );
        if huge {
            assert!(per_gib < 1 << 20, "{per_gib}");
        }
    }
}

#[test]
fn evicting_every_file_gives_the_file_maps_back() {
    // 40,000 small files spread over the 64 shards, then every one evicted: the shards'
    // maps shrink with them (before, each kept its slots: 43% of the full figure stayed),
    // and an emptied one holds nothing (before, each kept a few dozen slots).
    let t = tier(100, false);
    let empty = t.metadata_bytes();
    let data = pattern(PAGE_SIZE, 7);
    let files = 1..=40_000u64;
    for f in files.clone() {
        t.prefetch(f, PAGE_SIZE, 0, PAGE_SIZE, &SliceSource(&data))
            .unwrap();
    }
    let full = t.metadata_bytes();
    for f in files {
        assert_eq!(t.invalidate_file(f, InvalidationCause::Evict), 1);
    }
    assert_eq!(t.stats().device.used_bytes, 0);
    let after = t.metadata_bytes();
    assert_eq!(
        after, empty,
        "empty {empty} B, 40,000 files {full} B, all evicted {after} B"
    );
}

// ---------------------------------------------------------------------------------------
// Reference model (proptest).

#[derive(Debug, Clone)]
enum Op {
    Read {
        file: usize,
        off: u64,
        len: u64,
    },
    /// Continue where the previous read of the file ended (sequential detection).
    ReadNext {
        file: usize,
        len: u64,
    },
    Write {
        file: usize,
        off: u64,
        len: u64,
        byte: u8,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    Prefetch {
        file: usize,
        off: u64,
        len: u64,
    },
    Evict {
        file: usize,
    },
    Hint {
        file: usize,
        hint: Hint,
    },
    /// A read continuing the previous one (opens and advances readahead).
    ReadAhead {
        file: usize,
        len: u64,
    },
}

const FILES: usize = 3;

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..6 * MIB,
        (0u64..12).prop_map(|i| i * MIB / 2),
        (0u64..3, 0u64..3).prop_map(|(e, d)| (e * 2 * MIB + d * 4096).saturating_sub(1)),
    ]
}

fn length() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..9000, 4096u64..(160 << 10), MIB..3 * MIB]
}

fn op() -> impl Strategy<Value = Op> {
    let f = 0..FILES;
    prop_oneof![
        4 => (f.clone(), offset(), length()).prop_map(|(file, off, len)| Op::Read { file, off, len }),
        3 => (f.clone(), length()).prop_map(|(file, len)| Op::ReadNext { file, len }),
        3 => (f.clone(), offset(), length(), any::<u8>()).prop_map(|(file, off, len, byte)| Op::Write { file, off, len: len.min(MIB), byte }),
        1 => (f.clone(), 0u64..7 * MIB).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (f.clone(), offset(), length()).prop_map(|(file, off, len)| Op::Prefetch { file, off, len }),
        1 => f.clone().prop_map(|file| Op::Evict { file }),
        1 => (f.clone(), proptest::sample::select(Hint::ALL.to_vec())).prop_map(|(file, hint)| Op::Hint { file, hint }),
        2 => (f, length()).prop_map(|(file, len)| Op::ReadAhead { file, len }),
    ]
}

/// Runs `ops` against a tier and a model (the files' bytes), checking every result and the
/// tier's invariants after each step. Long because it is one `match` with an arm of a few
/// lines per [`Op`] over state local to the run; splitting it would scatter the model.
fn run_model(policy: &str, chunks: u64, huge: bool, sizes: [u64; FILES], ops: &[Op]) {
    let t = tier_ra(chunks, huge, policy);
    let mut pinned_before: Vec<(usize, FolioKey)> = Vec::new();
    let mut files: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| pattern(s, i as u8 * 50))
        .collect();
    let mut next = [0u64; FILES];
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Read { file, off, len } => {
                let d = &files[file];
                let got = read_vec(
                    &t,
                    file as u64,
                    d.len() as u64,
                    off,
                    len as usize,
                    &shared(d),
                );
                // The snapshot source must not outlive the next write: settle readahead.
                t.wait_readahead();
                let want = d
                    .get(off as usize..(off as usize + len as usize).min(d.len()))
                    .unwrap_or(&[]);
                assert!(
                    got == want,
                    "step {step}: {op:?} returned stale or wrong bytes"
                );
                next[file] = off + got.len() as u64;
            }
            Op::ReadNext { file, len } => {
                let d = &files[file];
                let off = next[file];
                let got = read_vec(
                    &t,
                    file as u64,
                    d.len() as u64,
                    off,
                    len as usize,
                    &shared(d),
                );
                // The snapshot source must not outlive the next write: settle readahead.
                t.wait_readahead();
                let want = d
                    .get(off as usize..(off as usize + len as usize).min(d.len()))
                    .unwrap_or(&[]);
                assert!(
                    got == want,
                    "step {step}: {op:?} at {off} returned stale or wrong bytes"
                );
                next[file] = if got.is_empty() {
                    0
                } else {
                    off + got.len() as u64
                };
            }
            Op::Write {
                file,
                off,
                len,
                byte,
            } => {
                let d = &mut files[file];
                let end = (off + len) as usize;
                if d.len() < end {
                    d.resize(end, 0);
                }
                d[off as usize..end].fill(byte);
                t.invalidate_range(file as u64, off, len, InvalidationCause::Write);
            }
            Op::Truncate { file, size } => {
                let old = files[file].len() as u64;
                files[file].resize(size as usize, 0);
                t.invalidate_range(
                    file as u64,
                    size.min(old),
                    u64::MAX,
                    InvalidationCause::Truncate,
                );
            }
            Op::Prefetch { file, off, len } => {
                let d = &files[file];
                let r = t
                    .prefetch(file as u64, d.len() as u64, off, len, &SliceSource(d))
                    .unwrap();
                let clipped = (off + len).min(d.len() as u64).saturating_sub(off);
                assert_eq!(
                    r.faulted_bytes + r.already_resident_bytes + r.skipped_bytes,
                    clipped,
                    "step {step}"
                );
            }
            Op::Evict { file } => {
                let before = t.residency(file as u64);
                let n = t.invalidate_file(file as u64, InvalidationCause::Evict);
                assert_eq!(n, before.huge_pages + before.base_pages);
            }
            Op::Hint { file, hint } => {
                t.set_hint(file as u64, hint);
                assert_eq!(t.hint(file as u64), hint);
            }
            Op::ReadAhead { file, len } => {
                let d = &files[file];
                let off = next[file];
                let src: SharedSource = Arc::new(VecSource::new(d.clone()));
                let mut out = vec![0xAA; len as usize];
                let n = read_into(&t, file as u64, d.len() as u64, off, &mut out, &src).unwrap();
                let want = d
                    .get(off as usize..(off as usize + len as usize).min(d.len()))
                    .unwrap_or(&[]);
                assert!(
                    out[..n] == *want,
                    "step {step}: {op:?} at {off} returned stale or wrong bytes"
                );
                next[file] = if n == 0 { 0 } else { off + n as u64 };
                // The snapshot source must not outlive the next write: settle readahead.
                t.wait_readahead();
            }
        }
        // Pinned folios stay resident unless their file was invalidated or re-hinted.
        let touched = match *op {
            Op::Write { file, .. }
            | Op::Truncate { file, .. }
            | Op::Evict { file }
            | Op::Hint { file, .. } => Some(file),
            _ => None,
        };
        for (file, key) in &pinned_before {
            if touched != Some(*file) {
                let now = t.pinned_keys(*file as u64);
                // A pinned base page may since have collapsed (with its 511
                // neighbours, e.g. filled by readahead) into a pinned huge page.
                let collapsed = !key.is_huge()
                    && now.contains(&FolioKey::huge(
                        *file as u64,
                        key.index / SLOTS_PER_CHUNK as u64,
                    ));
                assert!(
                    now.contains(key) || collapsed,
                    "step {step}: pinned {key:?} of file {file} was evicted"
                );
            }
        }
        pinned_before = (0..FILES)
            .flat_map(|f| t.pinned_keys(f as u64).into_iter().map(move |k| (f, k)))
            .collect();
        // Invariants after every step.
        let s = t.stats();
        assert!(
            s.device.used_bytes <= s.device.capacity_bytes,
            "step {step}: capacity exceeded"
        );
        assert_eq!(s.device.hits + s.device.misses, s.diagnostics.lookups);
        let (mut hp, mut bp) = (0, 0);
        for (i, d) in files.iter().enumerate() {
            t.audit(i as u64, d);
            let r = t.residency(i as u64);
            assert_eq!(
                r.resident_bytes,
                r.huge_pages * HUGE_PAGE_SIZE + r.base_pages * PAGE_SIZE
            );
            hp += r.huge_pages;
            bp += r.base_pages;
        }
        assert_eq!(
            (s.device.huge_pages, s.device.base_pages),
            (hp, bp),
            "step {step}"
        );
        assert_eq!(
            s.device.used_bytes,
            hp * HUGE_PAGE_SIZE + bp * PAGE_SIZE,
            "step {step}"
        );
        if !huge {
            assert_eq!(hp, 0);
        }
        t.check_invariants();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every case runs against every policy.
    #[test]
    fn reference_model(
        chunks in 2u64..=6,
        huge in any::<bool>(),
        sizes in proptest::array::uniform3(0u64..6 * MIB),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        for policy in POLICY_NAMES {
            run_model(policy, chunks, huge, sizes, &ops);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Multi-threaded freshness.

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Storage whose every page holds one version stamp (a u64 repeated).
struct Versioned {
    data: StdMutex<Vec<u8>>,
}

impl FillSource for Versioned {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        slice_read(&self.data.lock().unwrap(), buf, offset)
    }
}

/// Two writers (storage, then invalidation, then the committed version) against four
/// readers checking every page they get against the versions committed before the read.
/// Long because the threads' bodies are written inline, sharing the test's state.
#[test]
fn concurrent_readers_never_see_stale_pages() {
    const SIZE: u64 = 6 * MIB;
    const PAGES: usize = (SIZE / PAGE_SIZE) as usize;
    let t = tier(3, true);
    let stores: Vec<Arc<Versioned>> = (0..2)
        .map(|_| {
            Arc::new(Versioned {
                data: StdMutex::new(vec![0; SIZE as usize]),
            })
        })
        .collect();
    let sources: Vec<SharedSource> = stores.iter().map(|s| s.clone() as SharedSource).collect();
    let committed: Vec<Vec<StdAtomicU64>> = (0..2)
        .map(|_| (0..PAGES).map(|_| StdAtomicU64::new(0)).collect())
        .collect();
    let version = StdAtomicU64::new(1);
    let stale = StdAtomicU64::new(0);
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let (t, stores, committed, version) = (&t, &stores, &committed, &version);
            s.spawn(move || {
                let mut rng = XorShift(0x9E37 + w);
                for _ in 0..300 {
                    let f = rng.below(2) as usize;
                    let first = rng.below(PAGES as u64) as usize;
                    let span = if rng.below(4) == 0 { 700 } else { 8 };
                    let n = (1 + rng.below(span) as usize).min(PAGES - first);
                    let v;
                    {
                        let mut d = stores[f].data.lock().unwrap();
                        // Versions are drawn under the file's lock so storage order = version order.
                        v = version.fetch_add(1, O::Relaxed);
                        for chunk in d[first * 4096..(first + n) * 4096].chunks_exact_mut(8) {
                            chunk.copy_from_slice(&v.to_le_bytes());
                        }
                    }
                    let cause = if rng.below(2) == 0 {
                        InvalidationCause::Write
                    } else {
                        InvalidationCause::Fallocate
                    };
                    t.invalidate_range(
                        f as u64,
                        first as u64 * PAGE_SIZE,
                        n as u64 * PAGE_SIZE,
                        cause,
                    );
                    for c in &committed[f][first..first + n] {
                        c.fetch_max(v, O::SeqCst);
                    }
                }
            });
        }
        for r in 0..4u64 {
            let (t, sources, committed, stale) = (&t, &sources, &committed, &stale);
            s.spawn(move || {
                let mut rng = XorShift(0xABCDEF + r);
                let mut buf = vec![0u8; 3 * MIB as usize];
                for i in 0..400 {
                    let f = rng.below(2) as usize;
                    let (off, len) = if i % 3 == 0 {
                        (rng.below(3) * 2 * MIB, (MIB + rng.below(2 * MIB)) as usize)
                    } else {
                        (
                            rng.below(PAGES as u64) * PAGE_SIZE,
                            4096 * (1 + rng.below(4) as usize),
                        )
                    };
                    let first = (off / PAGE_SIZE) as usize;
                    let npages = (len.div_ceil(4096)).min(PAGES - first);
                    let floor: Vec<u64> = committed[f][first..first + npages]
                        .iter()
                        .map(|c| c.load(O::SeqCst))
                        .collect();
                    let n =
                        read_into(t, f as u64, SIZE, off, &mut buf[..len], &sources[f]).unwrap();
                    for (p, page) in buf[..n].chunks(4096).enumerate() {
                        let v = u64::from_le_bytes(page[..8].try_into().unwrap());
                        let uniform = page.chunks_exact(8).all(|c| c == v.to_le_bytes());
                        if !uniform || v < floor[p] {
                            stale.fetch_add(1, O::Relaxed);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(stale.load(O::Relaxed), 0, "stale reads");
    t.check_invariants();
    for (f, st) in stores.iter().enumerate() {
        t.audit(f as u64, &st.data.lock().unwrap());
    }
    let s = t.stats();
    assert!(s.device.used_bytes <= s.device.capacity_bytes);
    eprintln!("mt stats: {:?}", s);
}

#[test]
fn device_tier_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DeviceTier>();
}

// ---------------------------------------------------------------------------------------
// Policies in the tier, hints, pinning, readahead.

/// A tier with a pin share and no readahead.
fn tier_opts(chunks: u64, huge: bool, policy: &str, pin_share: f64) -> Arc<DeviceTier> {
    let cfg = TierConfig {
        capacity: chunks * HUGE_PAGE_SIZE,
        huge_pages: huge,
    };
    let opts = TierOptions {
        pin_share,
        readahead_max: 0,
    };
    Arc::new(DeviceTier::with_options(cfg, policy_by_name(policy).unwrap(), opts).unwrap())
}

#[test]
fn pinned_file_survives_pressure_within_its_share() {
    for policy in POLICY_NAMES {
        let t = tier_opts(4, true, policy, 0.5);
        let a = pattern(4 * MIB, 1);
        let b = pattern(4 * MIB, 2);
        let other = shared(&pattern(16 * MIB, 3));
        t.set_hint(1, Hint::Pin);
        read_vec(&t, 1, 4 * MIB, 0, 4 * MIB as usize, &shared(&a));
        assert_eq!(
            t.pinned_keys(1).len(),
            2,
            "{policy}: both huge pages pinned"
        );
        t.set_hint(2, Hint::Pin);
        read_vec(&t, 2, 4 * MIB, 0, 4 * MIB as usize, &shared(&b));
        assert!(
            t.pinned_keys(2).is_empty(),
            "{policy}: the pin share is used up"
        );
        for _ in 0..3 {
            for off in (0..16 * MIB).step_by(MIB as usize) {
                read_vec(&t, 3, 16 * MIB, off, MIB as usize, &other);
                assert!(t.stats().device.used_bytes <= 8 * MIB);
            }
        }
        assert_eq!(
            t.residency(1).huge_pages,
            2,
            "{policy}: pinned pages evicted"
        );
        assert_eq!(t.stats().diagnostics.pinned_bytes, 4 * MIB);
        t.check_invariants();
        t.audit(1, &a);
        // Unpinned, the file competes again; a pinned file's invalidation frees its share.
        t.set_hint(1, Hint::Normal);
        assert!(t.pinned_keys(1).is_empty());
        assert_eq!(t.stats().diagnostics.pinned_bytes, 0);
        t.check_invariants();
        t.set_hint(2, Hint::Pin);
        t.invalidate_range(2, 0, 4096, InvalidationCause::Write);
        t.check_invariants();
        t.invalidate_file(2, InvalidationCause::Evict);
        assert_eq!(t.hint(2), Hint::Pin, "hints survive invalidate_file");
        assert_eq!(t.stats().diagnostics.pinned_bytes, 0);
        t.check_invariants();
    }
}

#[test]
fn random_hint_faults_base_pages_and_sequential_hint_huge() {
    let d = pattern(4 * MIB, 4);
    let t = tier(4, true);
    t.set_hint(1, Hint::Random);
    read_vec(&t, 1, 4 * MIB, 0, MIB as usize, &shared(&d));
    assert_eq!(t.residency(1).huge_pages, 0);
    assert_eq!(t.residency(1).base_pages, 256);
    t.set_hint(2, Hint::Sequential);
    read_vec(&t, 2, 4 * MIB, 12288, 4096, &shared(&d));
    assert_eq!(t.residency(2).huge_pages, 1, "sequential hint: huge fault");
    t.check_invariants();
}

#[test]
fn readahead_runs_ahead_of_a_sequential_reader_and_not_a_random_one() {
    const SIZE: u64 = 32 * MIB;
    let d = pattern(SIZE, 5);
    let src: SharedSource = Arc::new(VecSource::new(d.clone()));
    let t = tier_ra(32, true, "lru");
    let mut buf = vec![0u8; 128 << 10];
    let n = t
        .read(1, 0, &mut buf, &src, || Ok(SIZE))
        .unwrap()
        .into_copied(&mut buf);
    assert_eq!(&buf[..n], &d[..n]);
    t.wait_readahead();
    let first = t.residency(1).resident_bytes;
    assert!(first >= RA_INITIAL_WINDOW, "window faulted ahead: {first}");
    let mut off = n as u64;
    while off < SIZE {
        let n = t
            .read(1, off, &mut buf, &src, || Ok(SIZE))
            .unwrap()
            .into_copied(&mut buf);
        assert_eq!(&buf[..n], &d[off as usize..off as usize + n]);
        off += n as u64;
        // Let the window's jobs run before the next read, so that what is checked
        // below is the window logic, not how the machine schedules the workers.
        t.wait_readahead();
    }
    let s = t.stats();
    // The reader faults a page itself only when it overtakes a job not yet started.
    assert!(s.diagnostics.readahead_bytes >= SIZE / 2, "{s:?}");
    assert!(
        s.device.misses <= 4,
        "the reader found readahead's pages: {s:?}"
    );
    // Random reads of another file: no readahead.
    for i in [7u64, 3, 11, 5] {
        t.read(2, i * MIB, &mut buf[..4096], &src, || Ok(SIZE))
            .unwrap()
            .into_copied(&mut buf[..4096]);
    }
    t.wait_readahead();
    assert_eq!(t.residency(2).resident_bytes, 4 * 4096);
    // The random hint turns it off even for sequential reads.
    t.set_hint(3, Hint::Random);
    for i in 0..4u64 {
        t.read(3, i * 4096, &mut buf[..4096], &src, || Ok(SIZE))
            .unwrap()
            .into_copied(&mut buf[..4096]);
    }
    t.wait_readahead();
    assert_eq!(t.residency(3).resident_bytes, 4 * 4096);
    t.check_invariants();
}

/// A source whose reads from readahead threads wait for a gate, holding live data.
struct GatedSource {
    data: StdMutex<Vec<u8>>,
    open: StdMutex<bool>,
    cv: std::sync::Condvar,
    waiting: AtomicUsize,
}

impl FillSource for GatedSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        // Only readahead beyond the first extent is held: the test's own read
        // may wait on a readahead fill of extent 0 (jobs are queued before the
        // read is served), and holding that one would hold the test itself.
        if std::thread::current().name() == Some("pagetier-ra") && offset >= 2 * MIB {
            // Read the data first, then wait: the fill holds pre-write bytes.
            let n = slice_read(&self.data.lock().unwrap(), buf, offset)?;
            self.waiting.fetch_add(1, O::SeqCst);
            let mut g = self.open.lock().unwrap();
            while !*g {
                g = self.cv.wait(g).unwrap();
            }
            return Ok(n);
        }
        slice_read(&self.data.lock().unwrap(), buf, offset)
    }
}

#[test]
fn readahead_fill_racing_a_write_is_discarded() {
    const SIZE: u64 = 8 * MIB;
    let src = Arc::new(GatedSource {
        data: StdMutex::new(pattern(SIZE, 6)),
        open: StdMutex::new(false),
        cv: std::sync::Condvar::new(),
        waiting: AtomicUsize::new(0),
    });
    let t = tier_ra(8, true, "lru");
    let mut buf = vec![0u8; 4096];
    t.read(1, 0, &mut buf, &(src.clone() as SharedSource), || Ok(SIZE))
        .unwrap()
        .into_copied(&mut buf);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while src.waiting.load(O::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no readahead fill of extent 1 started"
        );
        std::thread::yield_now();
    }
    // A write lands in the range being read ahead.
    src.data.lock().unwrap()[3 * MIB as usize..3 * MIB as usize + 100].fill(0xEE);
    t.invalidate_range(1, 3 * MIB, 100, InvalidationCause::Write);
    *src.open.lock().unwrap() = true;
    src.cv.notify_all();
    t.wait_readahead();
    t.check_invariants();
    t.audit(1, &src.data.lock().unwrap());
    assert!(t.stats().device.discarded_fills > 0);
}

#[test]
fn tinylfu_keeps_epoch_data_where_lru_churns() {
    // 8 MiB dataset of 4 KiB reads in shuffled order, tier of 4 MiB, base pages.
    let d = pattern(8 * MIB, 8);
    let pages = 8 * MIB / 4096;
    let mut hit = Vec::new();
    for policy in ["lru", "tinylfu"] {
        let t = tier_with(2, false, policy);
        let mut rng = XorShift(42);
        let mut order: Vec<u64> = (0..pages).collect();
        for _ in 0..4 {
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for &p in &order {
                let got = read_vec(&t, 1, 8 * MIB, p * 4096, 4096, &shared(&d));
                assert!(got[..] == d[(p * 4096) as usize..][..4096]);
            }
            assert!(t.stats().device.used_bytes <= 4 * MIB);
        }
        let s = t.stats();
        hit.push(s.device.hits as f64 / (s.device.hits + s.device.misses) as f64);
        t.check_invariants();
        // W-TinyLFU admits every miss into its window; the duel happens on the way out.
        assert_eq!(s.diagnostics.admission_refusals, 0);
    }
    // 3 warm epochs of 4: at most 3/4 × 1/2 = 0.375.
    assert!(hit[1] > 0.33, "tinylfu {hit:?}");
    assert!(hit[0] < 0.2, "lru {hit:?}");
}

/// Shuffled epochs over 32 shards of 4 MiB read in 1 MiB reads with readahead (the shape of
/// the fio train-epoch job), the tier at half the dataset: storage fills per epoch, epochs
/// 2 to 5, for `policy`.
fn shard_epoch_fills(policy: &str) -> Vec<u64> {
    const FILES: u64 = 32;
    const SHARD: u64 = 4 * MIB;
    let data: Vec<Vec<u8>> = (0..FILES).map(|f| pattern(SHARD, f as u8)).collect();
    let srcs: Vec<SharedSource> = data
        .iter()
        .map(|d| Arc::new(VecSource::new(d.clone())) as SharedSource)
        .collect();
    let t = tier_ra(FILES * SHARD / HUGE_PAGE_SIZE / 2, true, policy);
    let mut rng = XorShift(7);
    let mut order: Vec<u64> = (0..FILES).collect();
    let mut buf = vec![0u8; MIB as usize];
    let mut fills = Vec::new();
    for _ in 0..5 {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let before = t.stats().diagnostics.fill_reads;
        for &f in &order {
            let d = &data[f as usize];
            for off in (0..SHARD).step_by(MIB as usize) {
                let n = t
                    .read(f + 1, off, &mut buf, &srcs[f as usize], || Ok(SHARD))
                    .unwrap()
                    .into_copied(&mut buf);
                assert!(buf[..n] == d[off as usize..][..n]);
                // Readahead finishes before the next read: the counts do not depend on
                // how the machine schedules the workers.
                t.wait_readahead();
            }
        }
        fills.push(t.stats().diagnostics.fill_reads - before);
        assert!(t.stats().device.used_bytes <= FILES * SHARD / 2);
    }
    t.check_invariants();
    fills.remove(0);
    fills
}

#[test]
fn tinylfu_keeps_epoch_shards_through_readahead() {
    // 64 extents per epoch. tinylfu's main region holds 28 of them (the window takes four
    // huge pages of the 32), so about 36 fills per epoch; LRU refills nearly everything.
    let lru = shard_epoch_fills("lru");
    let ours = shard_epoch_fills("tinylfu");
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len() as f64;
    // A loaded machine (the whole suite in parallel) may end a readahead whose eviction found
    // no chunk free in time, and the reader then faults that extent: 40.25 was seen there.
    assert!(mean(&ours) <= 44.0, "tinylfu fills {ours:?}, lru {lru:?}");
    assert!(
        mean(&lru) >= mean(&ours) + 8.0,
        "tinylfu fills {ours:?}, lru {lru:?}"
    );
}

#[test]
fn resident_reads_pin_one_huge_page_or_decline() {
    const SIZE: u64 = 8 * MIB;
    let d = pattern(SIZE, 9);
    let src: SharedSource = Arc::new(VecSource::new(d.clone()));
    let t = tier_ra(8, true, "lru");
    assert!(
        t.read_resident(1, SIZE, 0, MIB, &src).is_none(),
        "nothing resident"
    );
    assert_eq!(t.stats().device.reads, 0, "a decline does nothing");
    t.prefetch(1, SIZE, 0, 4 * MIB, &*src).unwrap();
    let got = t
        .read_resident(1, SIZE, MIB, MIB, &src)
        .expect("inside extent 0");
    assert!(got[..] == d[MIB as usize..2 * MIB as usize]);
    drop(got);
    assert!(
        t.read_resident(1, SIZE, MIB, 2 * MIB, &src).is_none(),
        "spans two extents"
    );
    assert!(
        t.read_resident(1, SIZE, 5 * MIB, 4096, &src).is_none(),
        "not resident"
    );
    assert!(
        t.read_resident(1, SIZE, SIZE, 4096, &src).is_none(),
        "at EOF"
    );
    // Clipped to the file size.
    let got = t.read_resident(1, 3 * MIB + 5, 3 * MIB, MIB, &src).unwrap();
    assert!(got[..] == d[3 * MIB as usize..][..5]);
    drop(got);
    let s = t.stats();
    assert_eq!(
        (s.device.reads, s.device.hits, s.device.bytes_served),
        (2, 2, MIB + 5)
    );
    // A host write drops the page: the next resident read declines, the copy path refills.
    t.invalidate_range(1, MIB, 10, InvalidationCause::Write);
    assert!(t.read_resident(1, SIZE, 0, MIB, &src).is_none());
    t.check_invariants();
}

#[test]
fn a_fault_inside_one_huge_page_is_served_pinned() {
    const SIZE: u64 = 8 * MIB;
    let d = pattern(SIZE, 11);
    let src: SharedSource = Arc::new(VecSource::new(d.clone()));
    // No readahead: every fault below is the reader's own.
    let no_readahead = |huge| {
        let cfg = TierConfig {
            capacity: 8 * HUGE_PAGE_SIZE,
            huge_pages: huge,
        };
        let opts = TierOptions {
            readahead_max: 0,
            ..TierOptions::default()
        };
        Arc::new(DeviceTier::with_options(cfg, policy_by_name("lru").unwrap(), opts).unwrap())
    };
    let t = no_readahead(true);
    let mut buf = vec![0u8; MIB as usize];
    // A miss at the start of an extent: faulted whole, installed, replied from the arena.
    let served = t.read(1, 0, &mut buf, &src, || Ok(SIZE)).unwrap();
    let Served::Resident(bytes) = served else {
        panic!("a fault inside one huge page was copied")
    };
    assert!(bytes[..] == d[..MIB as usize]);
    drop(bytes);
    t.wait_readahead();
    let s = t.stats();
    assert_eq!(
        (s.device.reads, s.device.misses),
        (1, 1),
        "one read, one fault: {s:?}"
    );
    assert_eq!(s.device.bytes_served, MIB);
    // Two extents at once are copied; so is everything with huge pages off.
    let mut two = vec![0u8; 2 * MIB as usize];
    let served = t.read(1, MIB, &mut two, &src, || Ok(SIZE)).unwrap();
    assert!(matches!(served, Served::Copied(n) if n == two.len()));
    assert!(two[..] == d[MIB as usize..3 * MIB as usize]);
    let base = no_readahead(false);
    let served = base.read(1, 0, &mut buf, &src, || Ok(SIZE)).unwrap();
    assert!(matches!(served, Served::Copied(n) if n == buf.len()));
    assert!(buf[..] == d[..MIB as usize]);
    t.check_invariants();
    base.check_invariants();
}

/// Exports (`export.rs`) over real shared memory: the file moves whole (capacity lent, not
/// added), reads of it come from the copy, a change with an open updates the copy in place
/// (size included), the last release leaves it idle (a reopen migrates nothing), and an
/// eviction drops it. Needs CAP_SYS_ADMIN for the private tmpfs; without it there is
/// nothing to check.
/// A truncate that grows an exported file copies no byte past the copy's old end: storage
/// has a hole there and the grown copy zeros (a `truncate -s 1T` must not read a terabyte).
/// The partial last page is copied again; the copy's size follows.
#[test]
fn a_truncate_up_of_an_exported_file_copies_only_the_old_tail() {
    let t = tier(8, false);
    if let Err(e) = t.enable_shared_memory() {
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        return;
    }
    let size = 10_000;
    let vs = Arc::new(VecSource::new(pattern(size, 5)));
    let src: SharedSource = vs.clone();
    t.prefetch(1, size, 0, size, vs.as_ref()).unwrap();
    let e = t.export_open(1, size, &src).unwrap();
    let grown = 6 * MIB;
    vs.data.lock().unwrap().resize(grown as usize, 0);
    t.invalidate_range(1, size & !4095, u64::MAX, InvalidationCause::Truncate);
    let s = t.stats();
    assert_eq!(s.shared.updated_bytes, PAGE_SIZE, "only the old last page");
    assert_eq!(s.shared.bytes, grown);
    let mut out = vec![1u8; 4096];
    let n = t
        .read(1, grown - 4096, &mut out, &src, || Ok(grown))
        .unwrap()
        .into_copied(&mut out);
    assert_eq!((n, out.iter().all(|&b| b == 0)), (4096, true));
    let mut head = vec![0u8; size as usize];
    let n = t
        .read(1, 0, &mut head, &src, || Ok(grown))
        .unwrap()
        .into_copied(&mut head);
    assert_eq!(&head[..n], &vs.data.lock().unwrap()[..size as usize]);
    t.export_release(1, &e);
    t.check_invariants();
}

#[test]
fn an_export_moves_the_file_whole_updates_in_place_and_drops_when_idle() {
    let t = tier(8, true);
    if let Err(e) = t.enable_shared_memory() {
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        return;
    }
    let size = 5 * MIB + 100;
    let vs = Arc::new(VecSource::new(pattern(size, 3)));
    let src: SharedSource = vs.clone();
    assert_eq!(
        t.export_open(1, size, &src).unwrap_err(),
        NotExported::NotWhole
    );
    t.prefetch(1, size, 0, size, vs.as_ref()).unwrap();
    t.check_invariants();
    let used = t.stats().device.used_bytes;
    let before = t.residency(1);
    let e = t.export_open(1, size, &src).unwrap();
    t.check_invariants();
    let s = t.stats();
    assert_eq!(s.device.used_bytes, used, "capacity lent, not added");
    assert_eq!(s.shared.bytes, size.div_ceil(PAGE_SIZE) * PAGE_SIZE);
    assert_eq!((s.shared.files, s.shared.exports), (1, 1));
    assert_eq!((s.device.huge_pages, s.device.base_pages), (0, 0));
    assert_eq!(t.residency(1), before, "residency is the copy's");
    assert!(s.shared.kernel_bytes >= s.shared.bytes - PAGE_SIZE);

    let read_at = |off: u64, len: usize, size: u64| {
        let mut out = vec![0u8; len];
        let n = t
            .read(1, off, &mut out, &src, || Ok(size))
            .unwrap()
            .into_copied(&mut out);
        out.truncate(n);
        out
    };
    let at = (2 * MIB - 3) as usize;
    assert_eq!(
        read_at(at as u64, 9, size),
        vs.data.lock().unwrap()[at..at + 9]
    );

    // A change across the 2 MiB boundary: the copy is updated, nothing is dropped.
    vs.data.lock().unwrap()[at..at + 6].copy_from_slice(b"ABCDEF");
    assert_eq!(
        t.invalidate_range(1, at as u64, 6, InvalidationCause::Write),
        0
    );
    assert_eq!(&read_at(at as u64, 6, size), b"ABCDEF");
    // The file grows: so does the copy, and the capacity lent to it.
    vs.data.lock().unwrap().extend(pattern(3 * MIB, 9));
    let grown = size + 3 * MIB;
    t.invalidate_range(1, size, u64::MAX, InvalidationCause::Write);
    assert_eq!(
        read_at(grown - 5, 10, grown),
        vs.data.lock().unwrap()[(grown - 5) as usize..]
    );
    let s = t.stats();
    assert_eq!(s.shared.updates, 2);
    assert_eq!(s.shared.bytes, grown.div_ceil(PAGE_SIZE) * PAGE_SIZE);
    t.check_invariants();

    // Idle after the last release (and compact: only this open held it); a reopen joins
    // it; an evict while open is refused.
    t.export_release(1, &e);
    assert_eq!(t.exports_compact.load(Ordering::Relaxed), 1);
    t.check_invariants();
    let e2 = t.export_open(1, grown, &src).unwrap();
    assert_eq!(t.exports_compact.load(Ordering::Relaxed), 0);
    assert_eq!(t.stats().shared.exports, 1, "a reopen migrated again");
    assert_eq!(t.invalidate_file(1, InvalidationCause::Evict), 0);
    assert_eq!(t.stats().shared.files, 1, "evicted under an open");
    t.export_release(1, &e2);
    t.invalidate_file(1, InvalidationCause::Evict);
    let s = t.stats();
    assert_eq!((s.shared.files, s.shared.dropped), (0, 1));
    assert_eq!((s.device.used_bytes, s.shared.bytes), (0, 0));
    assert_eq!(t.residency(1).resident_bytes, 0);
    t.check_invariants();
    drop((e, e2));
    assert_eq!(
        t.stats().shared.kernel_bytes,
        0,
        "the copy is freed with its last holder"
    );
}

/// A 4-chunk tier with shared memory, holding file 1 (`size` bytes of pattern `seed`)
/// resident, and its source; `None` without CAP_SYS_ADMIN (nothing to check then).
fn tier_with_resident_file(
    size: u64,
    seed: u8,
    hint: Hint,
) -> Option<(Arc<DeviceTier>, Arc<VecSource>, SharedSource)> {
    let t = tier(4, true);
    t.enable_shared_memory().ok()?;
    t.set_hint(1, hint);
    let vs = Arc::new(VecSource::new(pattern(size, seed)));
    let src: SharedSource = vs.clone();
    t.prefetch(1, size, 0, size, vs.as_ref()).unwrap();
    Some((t, vs, src))
}

/// Small files can all be exported: an idle export holds neither a descriptor nor pin budget,
/// so idle copies may add up to more than `--pin-share` and to more files than a process may
/// hold descriptors; reopening one takes its budget back.
#[test]
fn idle_exports_hold_no_descriptor_and_no_pin_budget() {
    let t = tier(4, true);
    if t.enable_shared_memory().is_err() {
        return;
    }
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let size = 16 * 1024;
    // 300 × 16 KiB = 4.7 MiB: more than the 4 MiB pin budget of an 8 MiB tier.
    let files: Vec<(FileId, SharedSource)> = (1..=300)
        .map(|f| {
            let vs = Arc::new(VecSource::new(pattern(size, f as u8)));
            t.prefetch(f, size, 0, size, vs.as_ref()).unwrap();
            (f, vs as SharedSource)
        })
        .collect();
    let before = fds();
    for (f, src) in &files {
        let e = t.export_open(*f, size, src).unwrap();
        t.export_release(*f, &e);
        assert!(!e.holds_fd(), "an idle export lets its descriptor go");
        let e = t.export_open(*f, size, src).unwrap();
        assert!(
            !e.holds_fd(),
            "reopening an idle export takes no descriptor"
        );
        t.invalidate_range(*f, 0, 1, InvalidationCause::Write);
        assert!(
            e.holds_fd(),
            "an in-place update keeps one while the export is open"
        );
        t.export_release(*f, &e);
        assert!(!e.holds_fd(), "an idle export lets it go");
    }
    assert!(
        fds() <= before + 2,
        "{} descriptors after, {before} before",
        fds()
    );
    let s = t.stats();
    assert_eq!(
        (s.shared.files, s.shared.dropped),
        (300, 0),
        "{:?}",
        s.shared
    );
    t.check_invariants();
    let pinned = t.pinned_slots.load(Ordering::Relaxed);
    let e = t.export_open(7, size, &files[6].1).unwrap();
    assert_eq!(t.pinned_slots.load(Ordering::Relaxed), pinned + 4);
    let mut out = vec![0u8; size as usize];
    assert_eq!(t.read_exported(&e, 0, &mut out).unwrap(), size as usize);
    assert_eq!(out, pattern(size, 7));
    t.check_invariants();
    t.export_release(7, &e);
    assert_eq!(t.pinned_slots.load(Ordering::Relaxed), pinned);
    t.check_invariants();
}

/// Idle exports give way first: a fault that needs room drops them, oldest first.
#[test]
fn idle_exports_are_dropped_when_the_tier_needs_room() {
    let Some((t, _, src)) = tier_with_resident_file(4 * MIB, 5, Hint::Normal) else {
        return;
    };
    let e = t.export_open(1, 4 * MIB, &src).unwrap();
    t.export_release(1, &e);
    // 8 MiB of tier, 4 lent to the idle export: a second 8 MiB file needs all of it.
    let other = VecSource::new(pattern(8 * MIB, 6));
    let r = t.prefetch(2, 8 * MIB, 0, 8 * MIB, &other).unwrap();
    assert_eq!(r.faulted_bytes, 8 * MIB, "{r:?}");
    let s = t.stats();
    assert_eq!((s.shared.files, s.shared.dropped), (0, 1));
    t.check_invariants();
}

/// An export registers its copy once, keeps the registration while idle, and lets it go
/// when it is dropped.
#[test]
fn an_exports_registration_is_made_once_and_dropped_with_it() {
    let Some((t, _, src)) = tier_with_resident_file(4 * MIB, 5, Hint::Normal) else {
        return;
    };
    let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let register = |r: Registration<'_>| {
        assert!(matches!(r, Registration::New(_)), "no ids: nothing parked");
        made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(std::sync::Arc::new(made.clone()) as crate::iomode::BackingToken)
    };
    let e = t.export_open(1, 4 * MIB, &src).unwrap();
    let first = e.registration(register).unwrap();
    t.export_release(1, &e);
    drop(first);
    assert_eq!(
        e.registration_kept(),
        Some(false),
        "an idle export keeps its registration (as a token, with no ids to park it)"
    );
    let e2 = t.export_open(1, 4 * MIB, &src).unwrap();
    let again = e2.registration(register).unwrap();
    assert_eq!(
        made.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "registered once"
    );
    t.export_release(1, &e2);
    drop(again);
    // An 8 MiB file needs the idle export's room: it is dropped, and its registration too.
    let other = VecSource::new(pattern(8 * MIB, 6));
    t.prefetch(2, 8 * MIB, 0, 8 * MIB, &other).unwrap();
    assert_eq!(t.stats().shared.dropped, 1);
    assert_eq!(
        e.registration_kept(),
        None,
        "a dropped export lets its registration go"
    );
    assert_eq!(
        std::sync::Arc::strong_count(&made),
        1,
        "no token left alive"
    );
    t.check_invariants();
}

/// Stands for the kernel's ids of registrations: a token handed over is kept by id until
/// named again or closed.
#[derive(Default)]
struct ParkedIds {
    parked: StdMutex<std::collections::HashMap<u32, crate::iomode::BackingToken>>,
    next: std::sync::atomic::AtomicU32,
    closed: std::sync::atomic::AtomicU32,
}

impl crate::iomode::IdleIds for ParkedIds {
    fn hand_over(
        &self,
        token: crate::iomode::BackingToken,
    ) -> Result<u32, crate::iomode::BackingToken> {
        if std::sync::Arc::strong_count(&token) > 1 {
            return Err(token);
        }
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.parked.lock().unwrap().insert(id, token);
        Ok(id)
    }

    fn close(&self, id: u32) {
        assert!(
            self.parked.lock().unwrap().remove(&id).is_some(),
            "closed once"
        );
        self.closed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// With ids to park them in, an idle export keeps its registration as the kernel's id alone
/// (never while an open holds a clone of the token), the next open names that id again, and
/// a drop closes it.
#[test]
fn an_idle_exports_registration_is_parked_as_an_id() {
    let Some((t, _, src)) = tier_with_resident_file(4 * MIB, 5, Hint::Normal) else {
        return;
    };
    let ids = std::sync::Arc::new(ParkedIds::default());
    t.set_idle_ids(ids.clone());
    let made = std::sync::atomic::AtomicUsize::new(0);
    let register = |r: Registration<'_>| match r {
        Registration::New(_) => {
            made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(std::sync::Arc::new(()) as crate::iomode::BackingToken)
        }
        Registration::Idle(id) => Ok(ids.parked.lock().unwrap().remove(&id).expect("a parked id")),
    };
    let e = t.export_open(1, 4 * MIB, &src).unwrap();
    let held = e.registration(register).unwrap();
    // Released while another clone (an open's, in the mode table) is alive: kept as it is.
    t.export_release(1, &e);
    assert_eq!(e.registration_kept(), Some(false), "a held token stays one");
    drop(held);
    drop(e);
    let e = t.export_open(1, 4 * MIB, &src).unwrap();
    t.export_release(1, &e);
    assert_eq!(
        e.registration_kept(),
        None,
        "compact: the open's Arc is disowned"
    );
    assert_eq!(t.kept_registration(1), Some(true), "idle: parked as an id");
    assert_eq!(ids.parked.lock().unwrap().len(), 1);
    // Reopened: the id is named again, nothing registered anew.
    let e = t.export_open(1, 4 * MIB, &src).unwrap();
    let again = e.registration(register).unwrap();
    assert_eq!(e.registration_kept(), Some(false));
    assert!(
        ids.parked.lock().unwrap().is_empty(),
        "the id went back into a token"
    );
    assert_eq!(
        made.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "registered once"
    );
    drop(again);
    t.export_release(1, &e);
    assert_eq!(t.kept_registration(1), Some(true));
    // An 8 MiB file needs the idle export's room: it is dropped, and its id closed.
    let other = VecSource::new(pattern(8 * MIB, 6));
    t.prefetch(2, 8 * MIB, 0, 8 * MIB, &other).unwrap();
    assert_eq!(t.stats().shared.dropped, 1);
    assert_eq!(t.kept_registration(1), None);
    assert_eq!(ids.closed.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(ids.parked.lock().unwrap().is_empty());
    t.check_invariants();
}

/// An idle export that nothing but its state holds is kept compact: the releasing open's
/// `Arc` is disowned (dropping it removes no copy), a read or a reopen revives it with the
/// same copy and accounting, a change drops it like any page; one that another holder still
/// has stays an `Arc`.
#[test]
fn an_idle_export_is_kept_compact_and_revived_with_its_copy() {
    let Some((t, vs, src)) = tier_with_resident_file(4 * MIB, 5, Hint::Normal) else {
        return;
    };
    let compact = || t.exports_compact.load(Ordering::Relaxed);
    let e = t.export_open(1, 4 * MIB, &src).unwrap();
    // A second holder (a daemon-served read in flight): no compaction.
    let other = t.export_of(1).unwrap();
    t.export_release(1, &e);
    assert_eq!(compact(), 0, "another holder: it stays an Arc");
    drop((e, other));
    t.check_invariants();
    let e = t.export_open(1, 4 * MIB, &src).unwrap();
    t.export_release(1, &e);
    assert_eq!(compact(), 1);
    t.check_invariants();
    let kernel = t.stats().shared.kernel_bytes;
    assert!(kernel >= 4 * MIB);
    drop(e);
    let s = t.stats();
    assert_eq!(
        s.shared.kernel_bytes, kernel,
        "a disowned Arc removes no copy"
    );
    assert_eq!((s.shared.files, s.shared.exports), (1, 1));
    assert_eq!(t.residency(1).resident_bytes, 4 * MIB);
    assert!(t.holds_pages(1));
    // A daemon-served read revives it and reads the copy.
    let mut out = vec![0u8; 4096];
    let n = t
        .read(1, MIB + 7, &mut out, &src, || Ok(4 * MIB))
        .unwrap()
        .into_copied(&mut out);
    let at = (MIB + 7) as usize;
    assert_eq!(out[..n], vs.data.lock().unwrap()[at..at + 4096]);
    assert_eq!(compact(), 0);
    t.check_invariants();
    // A reopen joins it, still one export; released, compact again.
    let e = t.export_open(1, 4 * MIB, &src).unwrap();
    t.export_release(1, &e);
    drop(e);
    assert_eq!((compact(), t.stats().shared.exports), (1, 1));
    // A write drops it like any page: capacity and copy go.
    vs.data.lock().unwrap()[5] = 0xEE;
    t.invalidate_range(1, 5, 1, InvalidationCause::Write);
    let s = t.stats();
    assert_eq!((s.shared.files, s.shared.dropped, compact()), (0, 1, 0));
    assert_eq!((s.device.used_bytes, s.shared.kernel_bytes), (0, 0));
    assert!(!t.holds_pages(1));
    t.check_invariants();
}

/// Reopening an idle export many times drops nothing and leaves the idle list bounded: only
/// an export's newest release counts.
#[test]
fn reopened_exports_are_not_dropped_by_their_old_idle_entries() {
    let Some((t, _, src)) = tier_with_resident_file(2 * MIB, 7, Hint::Normal) else {
        return;
    };
    for _ in 0..(5 * export::stale_bound(1)) {
        let e = t.export_open(1, 2 * MIB, &src).unwrap();
        t.export_release(1, &e);
    }
    let s = t.stats();
    assert_eq!(
        (s.shared.files, s.shared.exports, s.shared.dropped),
        (1, 1, 0)
    );
    assert!(lock(&t.idle_exports).len() <= export::stale_bound(1) + 1);
    assert_eq!(t.exports_idle.load(Ordering::Relaxed), 1);
    t.check_invariants();
}

/// Exports dropped by evictions leave the idle list with them: their entries are weeded once
/// they pass the bound, with no release to look (before, `evict -r` of every file kept every
/// entry).
#[test]
fn evicted_idle_exports_leave_the_idle_list() {
    let t = tier(64, true);
    if t.enable_shared_memory().is_err() {
        return;
    }
    let size = 4096;
    let n = 3 * export::stale_bound(0) as u64;
    for f in 1..=n {
        let vs = Arc::new(VecSource::new(pattern(size, f as u8)));
        t.prefetch(f, size, 0, size, vs.as_ref()).unwrap();
        let src: SharedSource = vs;
        let e = t.export_open(f, size, &src).unwrap();
        t.export_release(f, &e);
    }
    assert_eq!(t.exports_idle.load(Ordering::Relaxed), n);
    assert_eq!(lock(&t.idle_exports).len() as u64, n);
    for f in 1..=n {
        t.invalidate_file(f, InvalidationCause::Evict);
    }
    let s = t.stats();
    assert_eq!((s.shared.files, s.device.used_bytes), (0, 0));
    assert_eq!(t.exports_idle.load(Ordering::Relaxed), 0);
    assert!(
        lock(&t.idle_exports).len() <= export::stale_bound(0),
        "{} entries listed",
        lock(&t.idle_exports).len()
    );
    t.check_invariants();
}

/// An idle export of a file with the `pin` hint is not dropped to make room (like its pinned
/// pages), only by an explicit eviction.
#[test]
fn a_pinned_files_export_stays_under_pressure() {
    let Some((t, _, src)) = tier_with_resident_file(4 * MIB, 5, Hint::Pin) else {
        return;
    };
    let e = t.export_open(1, 4 * MIB, &src).unwrap();
    t.export_release(1, &e);
    let other = VecSource::new(pattern(8 * MIB, 6));
    t.prefetch(2, 8 * MIB, 0, 8 * MIB, &other).unwrap();
    assert_eq!(t.stats().shared.files, 1);
    assert!(
        t.residency(2).resident_bytes <= 4 * MIB,
        "only the room the pinned export leaves: {:?}",
        t.residency(2)
    );
    t.check_invariants();
    t.invalidate_file(1, InvalidationCause::Evict);
    assert_eq!(t.stats().shared.files, 0);
    t.check_invariants();
}

/// A whole-file invalidation racing a migration never forgets an export that has an open:
/// while a reader holds the export, the file's state keeps it (so later changes refresh the
/// copy the kernel serves, and later opens join it). The invalidation that looked for an
/// export just before the migration installed one must find it when it takes the shard.
#[test]
fn a_file_invalidation_racing_a_migration_keeps_the_open_export() {
    let Some((t, vs, src)) = tier_with_resident_file(64 * 1024, 3, Hint::Normal) else {
        return;
    };
    let size = 64 * 1024;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let invalidator = {
        let (t, stop) = (t.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                t.invalidate_file(1, InvalidationCause::Write);
            }
        })
    };
    let mut held = 0;
    for _ in 0..20_000 {
        t.prefetch(1, size, 0, size, vs.as_ref()).unwrap();
        if let Ok(e) = t.export_open(1, size, &src) {
            held += 1;
            let now = t.export_of(1);
            assert!(
                now.as_ref().is_some_and(|n| Arc::ptr_eq(n, &e)),
                "an open export left its file's state"
            );
            t.export_release(1, &e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    invalidator.join().unwrap();
    assert!(held > 0, "no migration won against the invalidations");
    t.check_invariants();
}

/// A host write racing a migration never leaves the new export with the old bytes: the write
/// changed storage and then looked for an export before the migration (made from pages
/// older than the write) installed one; its invalidation must then refresh that export
/// instead of only dropping pages. Every read of a held export returns at least the version
/// of the last write that completed before the read.
#[test]
fn a_write_racing_a_migration_leaves_no_stale_export() {
    const SIZE: u64 = 64 * 1024;
    let stamp = |v: u64| -> Vec<u8> { (0..SIZE / 8).flat_map(|_| v.to_le_bytes()).collect() };
    let Some((t, vs, src)) = tier_with_resident_file(SIZE, 0, Hint::Normal) else {
        return;
    };
    *vs.data.lock().unwrap() = stamp(0);
    t.invalidate_file(1, InvalidationCause::Write);
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (t, vs, committed, stop) = (t.clone(), vs.clone(), committed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut v = 0;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                *vs.data.lock().unwrap() = stamp(v);
                t.invalidate_range(1, 0, SIZE, InvalidationCause::Write);
                committed.store(v, Ordering::SeqCst);
            }
        })
    };
    let (mut held, mut out) = (0, vec![0u8; SIZE as usize]);
    for _ in 0..20_000 {
        t.prefetch(1, SIZE, 0, SIZE, vs.as_ref()).unwrap();
        let Ok(e) = t.export_open(1, SIZE, &src) else {
            continue;
        };
        held += 1;
        for _ in 0..3 {
            let floor = committed.load(Ordering::SeqCst);
            assert_eq!(t.read_exported(&e, 0, &mut out).unwrap(), SIZE as usize);
            let v = u64::from_le_bytes(out[..8].try_into().unwrap());
            assert!(
                v >= floor,
                "the export holds version {v}, {floor} was written"
            );
        }
        t.export_release(1, &e);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(held > 0, "no migration won against the writes");
    t.check_invariants();
}

/// `holds_pages` says what `residency` says of resident, exported and evicted files.
#[test]
fn holds_pages_agrees_with_residency() {
    let Some((t, _, src)) = tier_with_resident_file(4 * MIB, 5, Hint::Normal) else {
        return;
    };
    assert!(!t.holds_pages(9), "a file never read");
    assert!(
        t.holds_pages(1) && t.residency(1).resident_bytes > 0,
        "resident"
    );
    let e = t.export_open(1, 4 * MIB, &src).unwrap();
    t.export_release(1, &e);
    assert!(t.holds_pages(1), "an idle export holds the file's pages");
    assert!(t.residency(1).resident_bytes > 0);
    t.invalidate_file(1, InvalidationCause::Evict);
    assert!(
        !t.holds_pages(1) && t.residency(1).resident_bytes == 0,
        "evicted"
    );
    t.check_invariants();
}
