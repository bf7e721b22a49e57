//! Device-view opens served by the kernel from shared device memory (FUSE passthrough onto a
//! file's exported copy, `src/tier/export.rs`), on a real mount: the daemon sees none of the
//! reads, mappings map device memory, and every host change is in the copy before the host
//! call returns (updated in place, never a hole or a stale byte). After the last close the
//! export stays, idle, until it is evicted.
//!
//! Needs passthrough and shared memory (CAP_SYS_ADMIN); where the mount reports either off,
//! the tests say so and return.

mod common;
mod util;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use common::{Mounted, wait_until};
use util::pattern;

const MIB: usize = 1 << 20;
const HUGE: usize = 2 * MIB;
const DEADLINE: Duration = Duration::from_secs(10);

fn mount_with(files: &[(&str, usize)]) -> Mounted {
    mount_with_opts(files, &[])
}

/// [`mount_with`], with more mount options.
fn mount_with_opts(files: &[(&str, usize)], opts: &[&str]) -> Mounted {
    let files: Vec<(String, usize)> = files.iter().map(|(n, l)| (n.to_string(), *l)).collect();
    let opts: Vec<&str> = ["--passthrough", "auto"]
        .iter()
        .chain(opts)
        .copied()
        .collect();
    Mounted::with(&opts, move |s| {
        for (i, (name, len)) in files.iter().enumerate() {
            fs::write(s.join(name), pattern(*len, 40 + i as u8)).unwrap();
        }
    })
}

/// Whether device-view passthrough can work here; logs why a test is skipped when not.
fn shared_on(m: &Mounted, test: &str) -> bool {
    let st = m.stats();
    let on = st.passthrough.mode == pagetier::PassthroughMode::On && st.shared.enabled;
    if !on {
        eprintln!(
            "{test}: skipped, passthrough or shared memory is off here; log:\n{}",
            m.log_text()
        );
    }
    on
}

fn prefetch(m: &Mounted, rel: &str) {
    let out = Command::new(common::bin())
        .arg("prefetch")
        .arg(m.host(rel))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn pread_all(f: &File) -> Vec<u8> {
    let len = f.metadata().unwrap().len() as usize;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], done as u64).unwrap();
        assert!(n > 0, "short read at {done} of {len}");
        done += n;
    }
    buf
}

fn host_write(m: &Mounted, rel: &str, off: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(m.host(rel)).unwrap();
    f.write_all_at(data, off).unwrap();
}

#[test]
fn a_resident_file_is_read_by_the_kernel_and_host_changes_land_in_the_copy() {
    let size = 6 * MIB + 123;
    let m = mount_with(&[("f", size)]);
    if !shared_on(&m, "resident_file") {
        return;
    }
    prefetch(&m, "f");
    let mut model = fs::read(m.backing("f")).unwrap();
    let s0 = m.stats();
    let dev = File::open(m.device().join("f")).unwrap();
    let s1 = m.stats();
    assert_eq!(s1.passthrough.device_opens, s0.passthrough.device_opens + 1);
    assert_eq!(
        (s1.shared.files, s1.shared.exports),
        (1, 1),
        "{:?}",
        s1.shared
    );
    assert_eq!(s1.shared.bytes, size.div_ceil(4096) as u64 * 4096);
    assert_eq!(
        s1.device.huge_pages + s1.device.base_pages,
        0,
        "moved, not copied"
    );
    assert_eq!(pread_all(&dev), model, "kernel-served bytes");
    let s2 = m.stats();
    assert_eq!(s2.device.reads, s1.device.reads, "the daemon saw a read");

    // A write straddling a huge page boundary, visible to the open reader at once.
    let data = b"straddles-2MiB";
    host_write(&m, "f", HUGE as u64 - 5, data);
    model[HUGE - 5..HUGE - 5 + data.len()].copy_from_slice(data);
    assert_eq!(pread_all(&dev), model, "after a write across a huge page");
    assert!(m.stats().shared.updates > s2.shared.updates);

    // Shrink, then grow by writing past the end: the copy's size follows.
    let short = 3 * MIB + 7;
    OpenOptions::new()
        .write(true)
        .open(m.host("f"))
        .unwrap()
        .set_len(short as u64)
        .unwrap();
    model.truncate(short);
    assert_eq!(dev.metadata().unwrap().len(), short as u64);
    assert_eq!(pread_all(&dev), model, "after a truncate");
    let tail = pattern(MIB + 99, 77);
    host_write(&m, "f", (short + 4000) as u64, &tail);
    model.resize(short + 4000, 0);
    model.extend_from_slice(&tail);
    assert_eq!(pread_all(&dev), model, "after a write past the end");

    // Closing the last open leaves the export idle: the next open is served at once,
    // without a second migration.
    drop(dev);
    let s3 = m.stats();
    let again = File::open(m.device().join("f")).unwrap();
    assert_eq!(pread_all(&again), model, "reopened");
    let s4 = m.stats();
    assert_eq!(
        s4.shared.exports, s3.shared.exports,
        "a reopen migrated again"
    );
    assert_eq!(s4.passthrough.device_opens, s3.passthrough.device_opens + 1);
    drop(again);

    // An eviction drops the idle export (once its release arrived): its pages leave the
    // tier, the copy is freed, and the next read faults exact bytes from storage.
    assert!(
        wait_until(DEADLINE, || {
            let _ = rustix::fs::setxattr(
                m.host("f").as_path(),
                "user.pagetier.evict",
                b"1",
                rustix::fs::XattrFlags::empty(),
            );
            m.stats().shared.files == 0
        }),
        "the idle export was not dropped: {:?}",
        m.stats().shared
    );
    let st = m.stats();
    assert_eq!(st.shared.dropped, 1);
    assert_eq!(
        (st.shared.bytes, st.shared.kernel_bytes),
        (0, 0),
        "{:?}",
        st.shared
    );
    assert_eq!(st.device.used_bytes, 0, "{:?}", st.device);
    assert_eq!(fs::read(m.device().join("f")).unwrap(), model);
}

#[test]
fn a_device_view_mapping_maps_device_memory_and_sees_host_writes() {
    let size = 4 * MIB;
    let m = mount_with(&[("a.npy", 0)]);
    if !shared_on(&m, "mapping") {
        return;
    }
    // numpy's .npy and pyarrow's Arrow IPC and Parquet through the device view,
    // memory-mapped as data loaders do (target/py, the virtualenv scripts/setup.sh makes).
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/py/bin/python");
    let script = format!(
        r#"
import numpy as np, sys, os, subprocess
host, dev = sys.argv[1], sys.argv[2]
np.save(host, np.arange({n}, dtype=np.uint32))
subprocess.run([sys.argv[3], "prefetch", host], check=True, capture_output=True)
a = np.load(dev, mmap_mode="r")
assert a.shape == ({n},) and int(a[12345]) == 12345 and int(a.sum()) == sum(range({n}))
off = a.offset + 4 * 1000
with open(host, "r+b") as f:
    f.seek(off); f.write(np.uint32(4242).tobytes())
assert int(a[1000]) == 4242, int(a[1000])
import pyarrow as pa, pyarrow.ipc, pyarrow.parquet as pq
t = pa.table({{"x": np.arange(500000, dtype=np.int64), "y": np.arange(500000, dtype=np.float64) / 7}})
with pa.OSFile(host + ".arrow", "wb") as f, pa.ipc.new_file(f, t.schema) as w:
    w.write_table(t)
pq.write_table(t, host + ".parquet")
for p in (host + ".arrow", host + ".parquet"):
    subprocess.run([sys.argv[3], "prefetch", p], check=True, capture_output=True)
d = os.path.dirname(dev)
with pa.memory_map(os.path.join(d, "a.npy.arrow")) as src:
    got = pa.ipc.open_file(src).read_all()
    assert got.equals(t), "arrow ipc through a device-view mapping differs"
    assert src.size() == os.path.getsize(host + ".arrow")
got = pq.read_table(os.path.join(d, "a.npy.parquet"), memory_map=True)
assert got.equals(t), "parquet read with memory_map=True through the device view differs"
print("ok")
"#,
        n = size / 4
    );
    let out = Command::new(python)
        .arg("-c")
        .arg(&script)
        .arg(m.host("a.npy"))
        .arg(m.device().join("a.npy"))
        .arg(common::bin())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => panic!("{python}: {e} (scripts/setup.sh makes target/py with numpy and pyarrow)"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && out.stdout.starts_with(b"ok"),
        "numpy/pyarrow memory maps through the device view failed: {stderr}\n{}",
        m.log_text()
    );
    let st = m.stats();
    assert!(st.passthrough.device_opens >= 3, "{:?}", st.passthrough);
}

/// With `--device-passthrough-min 0` a small resident file is served by the kernel too: its
/// export costs one copy, and saves two read round trips on every open.
#[test]
fn small_resident_files_are_kernel_served_with_min_0() {
    let m = mount_with_opts(
        &[("tiny", 100), ("small", 16 * 1024)],
        &["--device-passthrough-min", "0"],
    );
    if !shared_on(&m, "small_kernel_served") {
        return;
    }
    for f in ["tiny", "small"] {
        prefetch(&m, f);
        let want = fs::read(m.backing(f)).unwrap();
        let s0 = m.stats();
        for _ in 0..3 {
            assert_eq!(fs::read(m.device().join(f)).unwrap(), want, "{f}");
        }
        let s1 = m.stats();
        assert_eq!(
            s1.passthrough.device_opens - s0.passthrough.device_opens,
            3,
            "{f}: every open kernel-served"
        );
        assert_eq!(s1.device.reads, s0.device.reads, "{f}: no daemon read");
        assert_eq!(
            s1.shared.policy_touches - s0.shared.policy_touches,
            3,
            "{f}: each kernel-served open told to the policy"
        );
    }
    let st = m.stats();
    assert_eq!(
        (st.shared.files, st.shared.exports),
        (2, 2),
        "{:?}",
        st.shared
    );
    // A host write reaches the idle export's file: it is dropped, the next read faults.
    fs::write(m.host("small"), b"changed").unwrap();
    assert_eq!(fs::read(m.device().join("small")).unwrap(), b"changed");
    assert_eq!(m.stats().shared.dropped, 1);
}

/// A device-view open of a small file that is not resident yet prefetches it whole and is
/// served by the kernel from that first open (`--device-open-prefetch`, 256 KiB by default):
/// one storage read, no daemon read. A bigger file, or one with the `random` hint, is
/// daemon-served; with `--device-open-prefetch 0` so is a small one.
#[test]
fn a_small_cold_file_is_kernel_served_from_its_first_open() {
    let files = [
        ("small", 100 * 1024),
        ("edge", 256 * 1024),
        ("big", 256 * 1024 + 1),
        ("rand", 8192),
    ];
    let m = mount_with_opts(&files, &[]);
    if !shared_on(&m, "first_open") {
        return;
    }
    rustix::fs::setxattr(
        m.host("rand").as_path(),
        "user.pagetier.hint",
        b"random",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    for (f, kernel) in [
        ("small", true),
        ("edge", true),
        ("big", false),
        ("rand", false),
    ] {
        let want = fs::read(m.backing(f)).unwrap();
        let s0 = m.stats();
        assert_eq!(fs::read(m.device().join(f)).unwrap(), want, "{f}");
        let s1 = m.stats();
        let opens = s1.passthrough.device_opens - s0.passthrough.device_opens;
        let reads = s1.device.reads - s0.device.reads;
        let exports = s1.shared.exports - s0.shared.exports;
        if kernel {
            assert_eq!(
                (opens, reads, exports),
                (1, 0, 1),
                "{f}: prefetched, kernel-served"
            );
        } else {
            assert_eq!(opens, 0, "{f}: daemon-served");
            assert!(reads > 0, "{f}: read by the daemon");
        }
    }
    drop(m);

    let m = mount_with_opts(&files[..1], &["--device-open-prefetch", "0"]);
    let want = fs::read(m.backing("small")).unwrap();
    let s0 = m.stats();
    assert_eq!(fs::read(m.device().join("small")).unwrap(), want);
    let s1 = m.stats();
    assert_eq!(
        s1.passthrough.device_opens, s0.passthrough.device_opens,
        "--device-open-prefetch 0: a cold open is daemon-served"
    );
    assert!(s1.device.reads > s0.device.reads);
}

#[test]
fn small_or_partly_resident_files_stay_daemon_served() {
    let m = mount_with_opts(
        &[("small", 512 * 1024), ("big", 8 * MIB)],
        &["--device-passthrough-min", "1M"],
    );
    if !shared_on(&m, "daemon_served") {
        return;
    }
    prefetch(&m, "small");
    let want_small = fs::read(m.backing("small")).unwrap();
    let want_big = fs::read(m.backing("big")).unwrap();
    let s0 = m.stats();
    assert_eq!(fs::read(m.device().join("small")).unwrap(), want_small);
    assert_eq!(fs::read(m.device().join("big")).unwrap(), want_big);
    let s1 = m.stats();
    assert_eq!(
        s1.passthrough.device_opens, s0.passthrough.device_opens,
        "below --device-passthrough-min, or not resident at open: daemon-served"
    );
    assert!(s1.device.reads > s0.device.reads);
    assert!(
        s1.device.hits > s0.device.hits,
        "the small file was resident"
    );
    // Now `big` is resident: its next open is kernel-served.
    wait_until(DEADLINE, || {
        let r = m.stats();
        r.device.used_bytes >= 8 * MIB as u64 + 512 * 1024
    });
    let mut dev = File::open(m.device().join("big")).unwrap();
    if m.stats().passthrough.device_opens == s1.passthrough.device_opens {
        // Readahead may still have been filling; a fresh open after it lands must export.
        drop(dev);
        prefetch(&m, "big");
        dev = File::open(m.device().join("big")).unwrap();
    }
    assert_eq!(pread_all(&dev), want_big);
    assert!(m.stats().passthrough.device_opens > s1.passthrough.device_opens);
}
