//! Host-view opens served by the kernel (FUSE passthrough onto the STORAGE file), on a real
//! mount: what the daemon no longer sees, the one-mode-per-inode rule, and the device tier
//! staying exact while a passthrough writer (which the daemon never sees write) is open.
//!
//! Passthrough needs a kernel that offers it and CAP_SYS_ADMIN; where the mount reports it
//! off, the tests that need it say so and return (the `off` test still runs).

mod common;
mod util;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Mounted, wait_until};
use pagetier::StatsDocument;
use util::pattern;

/// How long an eventually-true condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

const MIB: usize = 1 << 20;

/// Mounts a STORAGE holding `data` as `f` with `opts`.
fn mount_with_file(opts: &[&str], data: &[u8]) -> Mounted {
    let data = data.to_vec();
    Mounted::with(opts, move |s| fs::write(s.join("f"), &data).unwrap())
}

/// Whether the mount has passthrough on; logs why a test is skipped when not.
fn passthrough_on(m: &Mounted, test: &str) -> bool {
    let on = m.stats().passthrough.mode == pagetier::PassthroughMode::On;
    if !on {
        eprintln!(
            "{test}: skipped, passthrough is off on this machine; log:\n{}",
            m.log_text()
        );
    }
    on
}

fn get_xattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::getxattr(p, name, &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

/// Device bytes resident for `p` (its `user.pagetier.residency`).
#[track_caller]
fn resident_bytes(p: &Path) -> u64 {
    let raw = get_xattr(p, "user.pagetier.residency").expect("residency xattr");
    let v: serde_json::Value = serde_json::from_slice(&raw).expect("residency is JSON");
    v["resident_bytes"].as_u64().expect("resident_bytes")
}

#[track_caller]
fn prefetch(p: &Path) {
    rustix::fs::setxattr(
        p,
        "user.pagetier.prefetch",
        b"0-",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap_or_else(|e| panic!("prefetch {}: {e}", p.display()));
}

/// A 4 KiB block whose every word says `round`.
fn block_of(round: u32) -> Vec<u8> {
    round.to_le_bytes().repeat(1024)
}

/// Sets its flag when dropped: a background loop stops even when the test panics.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Waits until the daemon has released every file handle the test closed.
fn wait_for_releases(m: &Mounted, open_handles: u64) {
    assert!(
        wait_until(DEADLINE, || m.stats().open_handles <= open_handles),
        "handles were not released: {}",
        m.stats()
    );
}

#[test]
fn read_only_host_opens_are_served_by_the_kernel() {
    let data = pattern(4 * MIB + 123, 7);
    let m = mount_with_file(&[], &data);
    if !passthrough_on(&m, "read_only_host_opens_are_served_by_the_kernel") {
        return;
    }
    assert!(
        m.log_text().contains("passthrough on"),
        "the startup log says what is in force:\n{}",
        m.log_text()
    );
    let s0 = m.stats();
    for _ in 0..3 {
        assert!(
            fs::read(m.host("f")).unwrap() == data,
            "host view != STORAGE"
        );
    }
    let s1 = m.stats();
    assert_eq!(
        (s1.host.reads, s1.host.read_bytes),
        (s0.host.reads, s0.host.read_bytes),
        "the daemon served reads of a passthrough open"
    );
    assert!(
        s1.passthrough.host_opens >= s0.passthrough.host_opens + 3,
        "passthrough opens not counted: {:?}",
        s1.passthrough
    );
    assert_eq!(s1.passthrough.writer_opens, 0);
    assert!(
        s1.kernel.max_pages > 0 && s1.kernel.max_readahead > 0,
        "{:?}",
        s1.kernel
    );
}

/// A host-view file's registration outlives its opens: later read-only opens name it again
/// instead of registering anew, and once the file is unlinked behind the mount and the
/// kernel forgets the inode, the registration (which holds the file's space) goes.
#[test]
fn a_released_registration_is_named_again_until_the_kernel_forgets_the_file() {
    let data = pattern(MIB + 5, 3);
    let m = mount_with_file(&[], &data);
    if !passthrough_on(
        &m,
        "a_released_registration_is_named_again_until_the_kernel_forgets_the_file",
    ) {
        return;
    }
    let handles = m.stats().open_handles;
    assert!(
        fs::read(m.host("f")).unwrap() == data,
        "host view != STORAGE"
    );
    wait_for_releases(&m, handles);
    let s0 = m.stats();
    assert_eq!(s0.passthrough.idle_registrations, 1, "{:?}", s0.passthrough);
    for _ in 0..3 {
        assert!(
            fs::read(m.host("f")).unwrap() == data,
            "host view != STORAGE"
        );
    }
    wait_for_releases(&m, handles);
    let s1 = m.stats();
    assert_eq!(
        s1.passthrough.idle_reuses,
        s0.passthrough.idle_reuses + 3,
        "each later open names the kept registration: {:?}",
        s1.passthrough
    );
    assert_eq!(s1.passthrough.idle_registrations, 1);
    assert_eq!(s1.passthrough.host_opens, s0.passthrough.host_opens + 3);
    fs::remove_file(m.backing("f")).unwrap();
    assert!(
        wait_until(DEADLINE, || m.stats().passthrough.idle_registrations == 0),
        "the registration of a file unlinked behind the mount stays: {:?}",
        m.stats().passthrough
    );
    assert_eq!(
        fs::read(m.host("f")).map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENOENT))
    );
}

/// An open that names a kept registration opens nothing in STORAGE until a call of its own
/// needs a descriptor: `SEEK_DATA`/`SEEK_HOLE`, `fsync` and `copy_file_range` from it still
/// answer as STORAGE does, also after the file's name is gone.
#[test]
fn an_open_naming_a_kept_registration_answers_its_own_calls() {
    let data = pattern(MIB + 5, 9);
    let m = Mounted::with(&[], {
        let data = data.clone();
        move |s| {
            let f = File::create(s.join("f")).unwrap();
            f.write_all_at(&data, 0).unwrap();
            // A hole from 4 KiB past the data to 3 MiB, then data again.
            f.write_all_at(&[7; 4096], 3 * MIB as u64).unwrap();
            f.sync_all().unwrap();
        }
    });
    if !passthrough_on(
        &m,
        "an_open_naming_a_kept_registration_answers_its_own_calls",
    ) {
        return;
    }
    let handles = m.stats().open_handles;
    drop(File::open(m.host("f")).unwrap());
    wait_for_releases(&m, handles);
    let s0 = m.stats();
    assert_eq!(s0.passthrough.idle_registrations, 1, "{:?}", s0.passthrough);

    let daemon_fds = || {
        fs::read_dir(format!("/proc/{}/fd", m.pid().expect("the daemon's pid")))
            .unwrap()
            .count()
    };
    let fds_before = daemon_fds();
    let f = File::open(m.host("f")).unwrap();
    let s1 = m.stats();
    assert_eq!(
        s1.passthrough.idle_reuses,
        s0.passthrough.idle_reuses + 1,
        "the open did not name the kept registration: {:?}",
        s1.passthrough
    );
    assert_eq!(daemon_fds(), fds_before, "the open opened STORAGE");
    let backing = File::open(m.backing("f")).unwrap();
    for at in [
        0,
        4096,
        2 * MIB as u64,
        3 * MIB as u64,
        3 * MIB as u64 + 4096,
    ] {
        for whence in [
            rustix::fs::SeekFrom::Data(at),
            rustix::fs::SeekFrom::Hole(at),
        ] {
            assert_eq!(
                rustix::fs::seek(&f, whence).map_err(|e| e.raw_os_error()),
                rustix::fs::seek(&backing, whence).map_err(|e| e.raw_os_error()),
                "{whence:?}"
            );
        }
    }
    assert_eq!(
        daemon_fds(),
        fds_before + 1,
        "SEEK_DATA and SEEK_HOLE opened STORAGE once"
    );
    f.sync_all().expect("fsync of a read-only open");
    let dst = File::create(m.host("copy")).unwrap();
    let (mut from, mut to) = (0u64, 0u64);
    while from < data.len() as u64 {
        let left = data.len() - from as usize;
        let n = rustix::fs::copy_file_range(&f, Some(&mut from), &dst, Some(&mut to), left)
            .expect("copy_file_range from it");
        assert!(n > 0, "copy_file_range returned 0 at {from}");
    }
    drop(dst);
    assert!(fs::read(m.backing("copy")).unwrap() == data, "the copy");
    let mut got = vec![0u8; data.len()];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got == data, "the open's own reads");

    // Its name removed through the mount, a second such open still answers.
    let g = File::open(m.host("f")).unwrap();
    fs::remove_file(m.host("f")).unwrap();
    assert_eq!(
        rustix::fs::seek(&g, rustix::fs::SeekFrom::Hole(0)).map_err(|e| e.raw_os_error()),
        Ok(MIB as u64 + 4096)
    );
    g.sync_all().expect("fsync after the unlink");
    let mut got = vec![0u8; 4096];
    g.read_exact_at(&mut got, 3 * MIB as u64).unwrap();
    assert!(got == [7; 4096], "read after the unlink");
}

#[test]
fn a_writer_beside_passthrough_readers_leaves_no_stale_device_read() {
    const SIZE: usize = 2 * MIB;
    const ROUNDS: u32 = 300;
    let m = mount_with_file(&[], &pattern(SIZE, 3));
    if !passthrough_on(
        &m,
        "a_writer_beside_passthrough_readers_leaves_no_stale_device_read",
    ) {
        return;
    }
    let dev = m.device().join("f");
    prefetch(&dev);
    assert!(resident_bytes(&dev) > 0, "prefetch made nothing resident");

    // A reader holds the inode in passthrough mode; a writer must join it.
    let reader = File::open(m.host("f")).unwrap();
    let handles = m.stats().open_handles;
    let writer = OpenOptions::new().write(true).open(m.host("f")).unwrap();
    let s = m.stats();
    assert!(s.passthrough.writer_opens >= 1, "{:?}", s.passthrough);
    assert_eq!(
        resident_bytes(&dev),
        0,
        "device pages kept while a writer the daemon cannot see is open"
    );

    // Device readers hammer the file meanwhile: none may install a page.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let hammer = {
        let (dev, stop) = (dev.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = File::open(&dev).unwrap();
            let mut buf = vec![0u8; 256 << 10];
            let mut off = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let n = f.read_at(&mut buf, off).unwrap();
                off = if n == 0 { 0 } else { off + n as u64 };
            }
        })
    };
    let device_file = File::open(&dev).unwrap();
    let blocks = (SIZE / 4096) as u64;
    for round in 1..=ROUNDS {
        let block = block_of(round);
        let at = (u64::from(round) * 37 % blocks) * 4096;
        writer.write_all_at(&block, at).unwrap();
        // After the host write returns, no read may see older bytes.
        let mut got = vec![0u8; 4096];
        device_file.read_exact_at(&mut got, at).unwrap();
        assert!(
            got == block,
            "round {round}: the device view read stale bytes at {at}"
        );
        let mut via_reader = vec![0u8; 4096];
        reader.read_exact_at(&mut via_reader, at).unwrap();
        assert!(via_reader == block, "round {round}: the passthrough reader");
    }
    stop.store(true, Ordering::SeqCst);
    hammer.join().unwrap();
    assert_eq!(
        resident_bytes(&dev),
        0,
        "a device page was installed while the writer was open"
    );
    // A prefetch is skipped too.
    prefetch(&dev);
    assert_eq!(resident_bytes(&dev), 0, "prefetch installed pages");
    let s = m.stats();
    assert!(s.passthrough.device_reads_behind > 0, "{:?}", s.passthrough);
    assert_eq!(
        s.host.writes, 0,
        "passthrough writes never reach the daemon: {:?}",
        s.host
    );

    drop(writer);
    drop(reader);
    drop(device_file);
    wait_for_releases(&m, handles - 1);
    // The tier holds the file again, with its current bytes.
    let storage = fs::read(m.backing("f")).unwrap();
    assert!(
        wait_until(DEADLINE, || {
            let mut got = Vec::new();
            File::open(&dev).unwrap().read_to_end(&mut got).unwrap();
            assert!(got == storage, "the device view differs from STORAGE");
            resident_bytes(&dev) > 0
        }),
        "device pages did not come back after the writer closed"
    );
}

#[test]
fn a_cached_writer_keeps_later_readers_daemon_served() {
    let m = mount_with_file(&[], &pattern(64 << 10, 5));
    if !passthrough_on(&m, "a_cached_writer_keeps_later_readers_daemon_served") {
        return;
    }
    let handles = m.stats().open_handles;
    let s0 = m.stats();
    let writer = OpenOptions::new().write(true).open(m.host("f")).unwrap();
    writer.write_all_at(b"written first", 100).unwrap();
    let reader = File::open(m.host("f")).unwrap();
    let mut got = vec![0u8; 13];
    reader.read_exact_at(&mut got, 100).unwrap();
    assert_eq!(&got, b"written first");
    let s1 = m.stats();
    assert_eq!(
        s1.passthrough.host_opens, s0.passthrough.host_opens,
        "an open beside a daemon-served writer went passthrough"
    );
    assert!(
        s1.host.reads > s0.host.reads,
        "the reader was not daemon-served"
    );
    assert_eq!(s1.host.writes, s0.host.writes + 1);
    // Once both are released, a reader goes passthrough again.
    drop(reader);
    drop(writer);
    wait_for_releases(&m, handles);
    let data = fs::read(m.host("f")).unwrap();
    assert_eq!(&data[100..113], b"written first");
    assert!(m.stats().passthrough.host_opens > s1.passthrough.host_opens);
}

#[test]
fn a_cached_open_after_a_passthrough_writer_sees_its_bytes() {
    let v1 = pattern(256 << 10, 1);
    let v2 = pattern(256 << 10, 2);
    let m = mount_with_file(&[], &v1);
    if !passthrough_on(
        &m,
        "a_cached_open_after_a_passthrough_writer_sees_its_bytes",
    ) {
        return;
    }
    let handles = m.stats().open_handles;
    let read_all = |f: &File| {
        let mut got = vec![0u8; v1.len()];
        f.read_exact_at(&mut got, 0).unwrap();
        got
    };
    let rw = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.host("f"))
            .unwrap()
    };
    // A daemon-served open leaves v1 in the kernel's page cache of the host-view file.
    let cached = rw();
    assert!(read_all(&cached) == v1);
    drop(cached);
    wait_for_releases(&m, handles);
    // A passthrough reader, then a writer that joins it, writes v2 behind the daemon.
    let s0 = m.stats();
    let reader = File::open(m.host("f")).unwrap();
    let writer = OpenOptions::new().write(true).open(m.host("f")).unwrap();
    writer.write_all_at(&v2, 0).unwrap();
    drop(writer);
    drop(reader);
    let s1 = m.stats();
    assert_eq!(
        (
            s1.passthrough.host_opens - s0.passthrough.host_opens,
            s1.passthrough.writer_opens - s0.passthrough.writer_opens
        ),
        (2, 1),
        "reader and writer were not both passthrough"
    );
    wait_for_releases(&m, handles);
    // The next daemon-served open must not keep the page cache holding v1.
    let cached = rw();
    assert!(
        read_all(&cached) == v2,
        "a cached open read bytes older than the writer's"
    );
    assert!(fs::read(m.device().join("f")).unwrap() == v2, "device view");
}

#[test]
fn mmap_of_a_passthrough_open_sees_storage_and_a_passthrough_write() {
    let data = pattern(3 * MIB, 9);
    let m = mount_with_file(&[], &data);
    if !passthrough_on(
        &m,
        "mmap_of_a_passthrough_open_sees_storage_and_a_passthrough_write",
    ) {
        return;
    }
    let reader = File::open(m.host("f")).unwrap();
    // SAFETY: the test owns the file; the mapping is read while the test writes it only
    // through the FUSE mount, which is what it checks.
    let map = unsafe { memmap2::Mmap::map(&reader) }.unwrap();
    assert!(map[..] == data[..], "mapping != STORAGE");
    let writer = OpenOptions::new().write(true).open(m.host("f")).unwrap();
    let block = block_of(0xabcd);
    writer.write_all_at(&block, MIB as u64 + 4096).unwrap();
    assert!(
        map[MIB + 4096..MIB + 8192] == block[..],
        "the mapping does not show a write that returned"
    );
    let s = m.stats();
    assert!(s.passthrough.writer_opens >= 1, "{:?}", s.passthrough);
}

#[test]
fn passthrough_off_serves_every_open_from_the_daemon() {
    let data = pattern(MIB + 17, 4);
    for opts in [
        &["--passthrough", "off"][..],
        &["-o", "passthrough=off"][..],
    ] {
        let m = mount_with_file(opts, &data);
        assert!(fs::read(m.host("f")).unwrap() == data);
        let s: StatsDocument = m.stats();
        assert_eq!(
            s.passthrough.mode,
            pagetier::PassthroughMode::Off,
            "{opts:?}"
        );
        assert_eq!(s.passthrough.host_opens, 0, "{opts:?}");
        assert_eq!(s.host.read_bytes, data.len() as u64, "{opts:?}");
        assert!(
            m.log_text().contains("passthrough off"),
            "{opts:?}: the startup log says so:\n{}",
            m.log_text()
        );
    }
}
