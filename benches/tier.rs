//! Device-tier micro-benchmarks: resident lookups (4 KiB / 1 MiB), fault install, eviction,
//! range invalidation and split; plus a one-off measurement of real metadata heap bytes per
//! GiB resident (huge pages on/off) with a counting allocator, and a one-off measurement of a
//! cold sequential read with and without readahead (simulated storage latency, and a real
//! `O_DIRECT` file when the temp directory allows it), printed before the benchmarks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io;
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagetier::tier::{
    DeviceTier, FillSource, HUGE_PAGE_SIZE, InvalidationCause, RA_MAX_WINDOW, SharedSource,
    TierConfig, TierOptions, policy_by_name,
};

/// Counts live heap bytes (for the metadata measurement).
struct Counting;

static HEAP: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HEAP.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HEAP.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        HEAP.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MIB: u64 = 1 << 20;

/// Storage in memory, so the benchmarks time the tier and not a disk.
struct Mem(Vec<u8>);

impl Mem {
    fn read(data: &[u8], buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let off = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - off);
        buf[..n].copy_from_slice(&data[off..off + n]);
        Ok(n)
    }
}

impl FillSource for Mem {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        Mem::read(&self.0, buf, offset)
    }
}

/// A tier with the default policy and no readahead (the benchmarks time the tier's own
/// work for each read).
fn tier(bytes: u64, huge: bool) -> Arc<DeviceTier> {
    tier_ra(bytes, huge, "tinylfu", false)
}

fn tier_ra(bytes: u64, huge: bool, policy: &str, readahead: bool) -> Arc<DeviceTier> {
    let cfg = TierConfig {
        capacity: bytes,
        huge_pages: huge,
    };
    let opts = TierOptions {
        readahead_max: if readahead { RA_MAX_WINDOW } else { 0 },
        ..TierOptions::default()
    };
    Arc::new(DeviceTier::with_options(cfg, policy_by_name(policy).unwrap(), opts).unwrap())
}

/// One device read through the tier's entry point, copied into `out`; returns its length.
fn read(
    t: &Arc<DeviceTier>,
    file: u64,
    size: u64,
    off: u64,
    out: &mut [u8],
    src: &SharedSource,
) -> usize {
    t.read(file, off, out, src, || Ok(size))
        .unwrap()
        .into_copied(out)
}

fn report_metadata() {
    const SIZE: u64 = 256 * MIB;
    let src: SharedSource = Arc::new(Mem(vec![7u8; SIZE as usize]));
    for huge in [true, false] {
        let before = HEAP.load(Ordering::Relaxed);
        let t = tier(SIZE, huge);
        let empty = HEAP.load(Ordering::Relaxed) - before;
        t.prefetch(1, SIZE, 0, SIZE, &*src).unwrap();
        let full = HEAP.load(Ordering::Relaxed) - before;
        let scale = (1 << 30) / SIZE as isize;
        eprintln!(
            "metadata huge_pages={huge}: measured heap {} B/GiB resident (empty tier {} B/GiB of capacity), estimate metadata_bytes() {} B/GiB",
            full * scale,
            empty * scale,
            t.metadata_bytes() as isize * scale
        );
    }
}

/// Storage with a fixed latency per call and a bandwidth, that serves calls in parallel (as
/// an SSD does at queue depth > 1): each call sleeps for its own service time.
struct Slow {
    data: Vec<u8>,
    latency: Duration,
    bytes_per_sec: f64,
}

impl FillSource for Slow {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::thread::sleep(
            self.latency + Duration::from_secs_f64(buf.len() as f64 / self.bytes_per_sec),
        );
        Mem::read(&self.data, buf, offset)
    }
}

/// An `O_DIRECT` file.
struct Direct(std::fs::File);

impl FillSource for Direct {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }
}

/// Reads `size` bytes sequentially in 128 KiB reads through a fresh tier; returns MB/s.
fn cold_sequential(size: u64, src: SharedSource, readahead: bool) -> f64 {
    let t = tier_ra(size + 4 * HUGE_PAGE_SIZE, true, "lru", readahead);
    let mut buf = vec![0u8; 128 << 10];
    let start = Instant::now();
    let mut off = 0;
    while off < size {
        let n = read(&t, 1, size, off, &mut buf, &src);
        black_box(&buf);
        off += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    t.wait_readahead();
    size as f64 / secs / 1e6
}

fn report_readahead() {
    const SIZE: u64 = 256 * MIB;
    let slow: SharedSource = Arc::new(Slow {
        data: vec![5u8; SIZE as usize],
        latency: Duration::from_micros(100),
        bytes_per_sec: 2e9,
    });
    eprintln!(
        "readahead: cold sequential 128 KiB reads, simulated storage (100 us + 2 GB/s per call, parallel): sync faults {:.0} MB/s, readahead {:.0} MB/s",
        cold_sequential(SIZE, slow.clone(), false),
        cold_sequential(SIZE, slow, true)
    );
    // A real file read with O_DIRECT, if the filesystem of the temp directory allows it.
    let Ok(dir) = tempfile::tempdir_in(std::env::var("PAGETIER_BENCH_DIR").unwrap_or(".".into()))
    else {
        return;
    };
    let path = dir.path().join("seq");
    if std::fs::write(&path, vec![9u8; SIZE as usize]).is_err() {
        return;
    }
    let open = || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
    };
    let Ok(f) = open() else {
        eprintln!(
            "readahead: O_DIRECT not supported in {}",
            dir.path().display()
        );
        return;
    };
    let raw = {
        let mut bounce = memmap2::MmapMut::map_anon(4 << 20).unwrap();
        let start = Instant::now();
        let mut off = 0;
        while off < SIZE {
            off += std::os::unix::fs::FileExt::read_at(&f, &mut bounce, off).unwrap() as u64;
        }
        SIZE as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    let sync = cold_sequential(SIZE, Arc::new(Direct(open().unwrap())), false);
    let ra = cold_sequential(SIZE, Arc::new(Direct(open().unwrap())), true);
    eprintln!(
        "readahead: O_DIRECT file in {}: raw 4 MiB reads {raw:.0} MB/s; tier sync faults {sync:.0} MB/s, readahead {ra:.0} MB/s",
        dir.path().display()
    );
}

fn lookups(c: &mut Criterion) {
    let size = 8 * MIB;
    let src: SharedSource = Arc::new(Mem(vec![1u8; size as usize]));
    let mut g = c.benchmark_group("lookup_resident");
    for (huge, name) in [(true, "huge"), (false, "base")] {
        let t = tier(size, huge);
        t.prefetch(1, size, 0, size, &*src).unwrap();
        for len in [4096usize, MIB as usize] {
            let mut out = vec![0u8; len];
            let mut off = 0u64;
            g.throughput(Throughput::Bytes(len as u64));
            g.bench_function(format!("{name}_{}k", len / 1024), |b| {
                b.iter(|| {
                    off = (off + len as u64 * 3) % (size - len as u64) / 4096 * 4096;
                    black_box(read(&t, 1, size, off, &mut out, &src))
                })
            });
        }
    }
    g.finish();
}

fn faults(c: &mut Criterion) {
    let size = 8 * MIB;
    let src: SharedSource = Arc::new(Mem(vec![2u8; size as usize]));
    let mut g = c.benchmark_group("fault_install");
    let t = tier(size, true);
    let mut out = vec![0u8; HUGE_PAGE_SIZE as usize];
    g.throughput(Throughput::Bytes(HUGE_PAGE_SIZE));
    g.bench_function("huge_2m", |b| {
        b.iter(|| {
            t.invalidate_file(1, InvalidationCause::Evict);
            black_box(read(&t, 1, size, 0, &mut out, &src))
        })
    });
    let t = tier(size, false);
    let mut out = vec![0u8; 4096];
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("base_4k", |b| {
        b.iter(|| {
            t.invalidate_file(1, InvalidationCause::Evict);
            black_box(read(&t, 1, size, 12288, &mut out, &src))
        })
    });
    g.finish();
}

fn eviction(c: &mut Criterion) {
    // 2 chunks of capacity, 3 files read round-robin: every read evicts one huge page.
    let size = 2 * MIB;
    let src: SharedSource = Arc::new(Mem(vec![3u8; size as usize]));
    let t = tier(2 * HUGE_PAGE_SIZE, true);
    let mut out = vec![0u8; size as usize];
    let mut file = 0u64;
    let mut g = c.benchmark_group("eviction");
    g.throughput(Throughput::Bytes(size));
    g.bench_function("huge_fault_with_evict", |b| {
        b.iter(|| {
            file = (file + 1) % 3;
            black_box(read(&t, file, size, 0, &mut out, &src))
        })
    });
    g.finish();
}

fn invalidation(c: &mut Criterion) {
    let size = 8 * MIB;
    let src: SharedSource = Arc::new(Mem(vec![4u8; size as usize]));
    let mut g = c.benchmark_group("invalidate");
    let t = tier(size, true);
    g.bench_function("range_whole_huge_pages_8m", |b| {
        b.iter_batched(
            || t.prefetch(1, size, 0, size, &*src).unwrap(),
            |_| black_box(t.invalidate_range(1, 0, size, InvalidationCause::Write)),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("split_huge_4k_write", |b| {
        b.iter_batched(
            || {
                t.invalidate_file(1, InvalidationCause::Evict);
                t.prefetch(1, size, 0, HUGE_PAGE_SIZE, &*src).unwrap()
            },
            |_| black_box(t.invalidate_range(1, 40960, 4096, InvalidationCause::Write)),
            BatchSize::PerIteration,
        )
    });
    let tb = tier(size, false);
    g.bench_function("range_256_base_pages", |b| {
        b.iter_batched(
            || tb.prefetch(1, size, 0, MIB, &*src).unwrap(),
            |_| black_box(tb.invalidate_range(1, 0, MIB, InvalidationCause::Write)),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, lookups, faults, eviction, invalidation);

fn main() {
    report_metadata();
    report_readahead();
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
