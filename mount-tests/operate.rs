//! Operating a mount: the Prometheus endpoint, `pagetier top`, prefetch and
//! evict of a dataset directory, and the lifecycle (SIGTERM under load,
//! SIGHUP log reopening, the systemd unit). Every wait has a deadline.

mod common;
mod util;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mounted, bin, is_fuse_mounted, wait_until};
use rustix::process::{Pid, Signal, kill_process};
use util::{free_port, http_get, run_deadline, sample, wait_child};

const DEADLINE: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn write_file(p: &Path, len: usize, seed: u8) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, util::pattern(len, seed)).unwrap();
}

#[test]
fn metrics_endpoint_answers_and_its_counters_follow_device_reads() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mounted::with(&["--metrics-addr", &addr], |s| {
        write_file(&s.join("data/f"), 4 * MIB + 123, 1)
    });
    let (status, body) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}\n{body}");
    assert_eq!(
        sample(&body, "pagetier_device_hits_total"),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "pagetier_device_capacity_bytes"),
        Some((1u64 << 30) as f64)
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    let dev = m.device().join("data/f");
    assert_eq!(fs::read(&dev).unwrap().len(), 4 * MIB + 123);
    assert_eq!(fs::read(&dev).unwrap().len(), 4 * MIB + 123);
    // The second open may have been served by the kernel from shared device memory.
    let passthrough = m.stats().passthrough.device_opens > 0;

    let (_, body) = http_get(port, "/metrics");
    let st = m.stats();
    let d = &st.device;
    for (series, key, value) in [
        ("pagetier_device_hits_total", "hits", d.hits),
        ("pagetier_device_misses_total", "misses", d.misses),
        (
            "pagetier_device_served_bytes_total",
            "bytes_served",
            d.bytes_served,
        ),
        (
            "pagetier_device_faulted_bytes_total",
            "bytes_faulted",
            d.bytes_faulted,
        ),
        ("pagetier_device_used_bytes", "used_bytes", d.used_bytes),
        ("pagetier_device_huge_pages", "huge_pages", d.huge_pages),
        ("pagetier_device_base_pages", "base_pages", d.base_pages),
    ] {
        assert_eq!(
            sample(&body, series),
            Some(value as f64),
            "{series} vs stats {key}\n{body}"
        );
    }
    // The first pass faults, on the reader's thread (a miss) or ahead of it (readahead; the
    // reader then waits for the fill and counts a hit); the second pass hits.
    let faulted = d.misses + st.diagnostics.readahead_bytes;
    assert!(d.hits > 0 && faulted > 0, "{st}");
    assert!(d.bytes_faulted >= 4 * MIB as u64 + 123, "{st}");
    let passes_served = if passthrough { 1 } else { 2 };
    assert!(d.bytes_served >= passes_served * (4 * MIB as u64 + 123));
    let reads = sample(
        &body,
        r#"pagetier_request_duration_seconds_count{op="read",view="device"}"#,
    )
    .expect("a device read latency histogram");
    assert!(reads >= 2.0, "{body}");
    assert!(body.contains(r#"pagetier_invalidated_pages_total{cause="write"} 0"#));
    assert!(sample(&body, "pagetier_live_inodes").is_some_and(|x| x >= 1.0));
    assert!(sample(&body, "pagetier_open_handles").is_some());

    let (status, _) = http_get(port, "/nope");
    assert!(status.contains("404"), "{status}");
}

#[test]
fn metrics_address_must_be_loopback_unless_allowed_and_free() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, mnt) = (tmp.path().join("s"), tmp.path().join("m"));
    fs::create_dir(&s).unwrap();
    fs::create_dir(&mnt).unwrap();
    let port = free_port();
    let out = run_deadline(
        Command::new(bin())
            .arg("mount")
            .arg(&s)
            .arg(&mnt)
            .args(["--metrics-addr", &format!("0.0.0.0:{port}")]),
        DEADLINE,
    );
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("--metrics-allow-remote"), "{out:?}");
    assert!(!is_fuse_mounted(&mnt));

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = run_deadline(
        Command::new(bin())
            .arg("mount")
            .arg(&s)
            .arg(&mnt)
            .args(["-o", &format!("metrics_addr={port}")]),
        DEADLINE,
    );
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("--metrics-addr"), "{out:?}");
    assert!(!is_fuse_mounted(&mnt));
}

#[test]
fn top_once_prints_one_frame() {
    let m = Mounted::with(&[], |s| write_file(&s.join("f"), MIB, 2));
    fs::read(m.device().join("f")).unwrap();
    let out = run_deadline(
        Command::new(bin())
            .args(["top", "--once", "--interval", "0.2"])
            .arg(&m.mnt),
        DEADLINE,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    for want in [
        "tier",
        "hit ratio",
        "device view",
        "host view",
        "per second",
    ] {
        assert!(
            out.stdout.contains(want),
            "{want:?} missing:\n{}",
            out.stdout
        );
    }
    assert!(
        !out.stdout.contains('\x1b'),
        "escape codes in a non-tty frame"
    );
}

/// A private tmux server, killed on drop.
struct Tmux(String);

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.0, "-f", "/dev/null"]);
        c
    }
    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

#[test]
fn top_renders_in_a_terminal_and_quits_on_q() {
    if !have("tmux") {
        eprintln!("SKIPPED: tmux is not installed (scripts/setup.sh installs it)");
        return;
    }
    let m = Mounted::with(&[], |s| write_file(&s.join("f"), 3 * MIB, 3));
    fs::read(m.device().join("f")).unwrap();
    fs::read(m.device().join("f")).unwrap();
    let tmux = Tmux(format!("pagetier-top-{}", std::process::id()));
    let script = format!(
        "{} top --interval 0.3 {}; echo top-exited-$?; sleep 60",
        bin(),
        m.mnt.display()
    );
    let st = tmux
        .cmd()
        .args(["new-session", "-d", "-s", "top", "-x", "110", "-y", "30"])
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success());
    let mut screen = String::new();
    assert!(
        wait_until(DEADLINE, || {
            screen = tmux.screen();
            screen.contains("hit ratio") && screen.contains("now")
        }),
        "top did not draw:\n{screen}"
    );
    // The first refresh has rates; the cumulative hit ratio is there too.
    assert!(
        screen.contains("since mount") && screen.contains("q: quit"),
        "{screen}"
    );
    tmux.cmd()
        .args(["send-keys", "-t", "top", "q"])
        .status()
        .unwrap();
    assert!(
        wait_until(DEADLINE, || {
            screen = tmux.screen();
            screen.contains("top-exited-0")
        }),
        "top did not quit on q:\n{screen}"
    );
    // Back on the normal screen: the frame is gone with the alternate screen.
    assert!(
        !screen.contains("hit ratio"),
        "terminal not restored:\n{screen}"
    );
}

/// A small training-data tree: huge-page-sized and small files, nested.
fn dataset(s: &Path) -> Vec<(String, usize)> {
    let files = [
        ("ds/shard-0/a.bin", 3 * MIB + 5),
        ("ds/shard-0/b.bin", 2 * MIB),
        ("ds/shard-1/c.bin", 300 * 1024),
        ("ds/shard-1/deep/d.bin", 4 * MIB),
        ("ds/shard-1/deep/e.bin", 7),
        ("ds/empty", 0),
        ("ds/label.txt", 4096),
    ];
    for (i, (p, len)) in files.iter().enumerate() {
        write_file(&s.join(p), *len, i as u8);
    }
    std::os::unix::fs::symlink("shard-0/a.bin", s.join("ds/link")).unwrap();
    files.iter().map(|(p, l)| (p.to_string(), *l)).collect()
}

fn resident(p: &Path) -> u64 {
    let mut buf = vec![0u8; 4096];
    let k = rustix::fs::getxattr(p, "user.pagetier.residency", &mut buf[..]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&buf[..k]).unwrap();
    n(&v["resident_bytes"])
}

#[test]
fn prefetch_r_makes_a_dataset_resident_and_device_reads_all_hit() {
    let mut files = Vec::new();
    // The threshold below is this mount's, whatever the default.
    let m = Mounted::with(
        &[
            "--device-capacity",
            "64MiB",
            "--device-passthrough-min",
            "1M",
        ],
        |s| files = dataset(s),
    );
    let total: usize = files.iter().map(|f| f.1).sum();

    let out = run_deadline(
        Command::new(bin())
            .args(["prefetch", "-r", "-j", "4"])
            .arg(m.host("ds")),
        DEADLINE,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("prefetched 7 file(s)"), "{out:?}");
    assert!(!out.stdout.contains("skipped"), "{out:?}");
    for (p, len) in &files {
        // Residency counts whole 4 KiB pages.
        assert_eq!(
            resident(&m.host(p)),
            (*len as u64).div_ceil(4096) * 4096,
            "{p}"
        );
    }

    let before = m.stats();
    for (p, len) in &files {
        assert_eq!(fs::read(m.device().join(p)).unwrap().len(), *len, "{p}");
    }
    let after = m.stats();
    assert_eq!(
        after.device.misses, before.device.misses,
        "a read after prefetch faulted"
    );
    // Files of at least 1 MiB (`--device-passthrough-min`) may be served by the kernel from
    // shared device memory (passthrough): the daemon then serves exactly the others, all hits.
    let kernel_served: u64 = files
        .iter()
        .filter(|_| after.passthrough.device_opens > before.passthrough.device_opens)
        .filter(|(_, len)| *len as u64 >= 1 << 20)
        .map(|(_, len)| *len as u64)
        .sum();
    assert!(after.device.hits > before.device.hits || kernel_served == total as u64);
    assert_eq!(
        after.device.bytes_served - before.device.bytes_served,
        total as u64 - kernel_served
    );

    // Again, through the device view: everything is already resident.
    let out = run_deadline(
        Command::new(bin())
            .args(["prefetch", "-r"])
            .arg(m.device().join("ds")),
        DEADLINE,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("0 B faulted"), "{out:?}");

    // Without -r a directory is refused.
    let out = run_deadline(
        Command::new(bin()).arg("prefetch").arg(m.host("ds")),
        DEADLINE,
    );
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("-r"), "{out:?}");

    let out = run_deadline(
        Command::new(bin())
            .args(["evict", "-r", "-j", "3"])
            .arg(m.host("ds")),
        DEADLINE,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("evicted 7 file(s)"), "{out:?}");
    for (p, _) in &files {
        assert_eq!(resident(&m.host(p)), 0, "{p}");
    }
    assert_eq!(m.stats().device.used_bytes, 0);
}

#[test]
fn prefetch_stops_at_the_tier_capacity_unless_told_otherwise() {
    let m = Mounted::with(&["--device-capacity", "8MiB"], |s| {
        for i in 0..6 {
            write_file(&s.join(format!("ds/{i}.bin")), 3 * MIB, i as u8);
        }
    });
    let out = run_deadline(
        Command::new(bin())
            .args(["prefetch", "-r"])
            .arg(m.host("ds")),
        DEADLINE,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("prefetched 2 file(s)"), "{out:?}");
    assert!(out.stdout.contains("skipped 4 file(s)"), "{out:?}");
    let st = m.stats();
    assert_eq!(st.device.evictions, 0, "{st}");
    assert_eq!(st.device.used_bytes, 6 * MIB as u64, "{st}");

    let out = run_deadline(
        Command::new(bin())
            .args(["prefetch", "-r", "-j", "1", "--ignore-capacity"])
            .arg(m.host("ds")),
        DEADLINE,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("prefetched 6 file(s)"), "{out:?}");
    assert!(m.stats().device.evictions > 0);
}

#[test]
fn sigterm_during_fio_unmounts_and_fio_fails_instead_of_hanging() {
    if !have("fio") {
        eprintln!("SKIPPED: fio is not installed (scripts/setup.sh installs it)");
        return;
    }
    let mut m = Mounted::with(&["--drain-timeout", "2"], |s| {
        write_file(&s.join("f"), 8 * MIB, 4)
    });
    let mut fio = Command::new("fio")
        .args([
            "--name=seq",
            "--rw=read",
            "--bs=1M",
            "--direct=1",
            "--ioengine=psync",
            "--time_based",
            "--runtime=120",
            "--size=8M",
        ])
        .arg(format!("--filename={}", m.device().join("f").display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fio");
    let started = m.stats();
    assert!(
        wait_until(DEADLINE, || m.stats().device.hits
            > started.device.hits + 64),
        "fio does not read"
    );
    let mut daemon = m.take_child().expect("daemon");
    let t0 = Instant::now();
    kill_process(Pid::from_raw(daemon.id() as i32).unwrap(), Signal::TERM).unwrap();
    let code = wait_child(&mut daemon, DEADLINE);
    assert_eq!(code, Some(0), "daemon exit; log:\n{}", m.log_text());
    assert!(!is_fuse_mounted(&m.mnt), "still mounted");
    let fio_code = wait_child(&mut fio, DEADLINE);
    let _ = fio.kill();
    let mut err = String::new();
    if let Some(mut e) = fio.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        matches!(fio_code, Some(c) if c != 0),
        "fio should fail once the connection is gone: {fio_code:?} {err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        m.log_text().contains("aborting the connection"),
        "{}",
        m.log_text()
    );
}

/// The sample unit's ExecStart, with systemd's specifiers and variables filled in.
fn unit_exec_start(unit: &str, vars: &[(&str, String)]) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut line = line.to_string();
    for (k, v) in vars {
        line = line.replace(k, v);
    }
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn systemd_unit_verifies_and_its_commands_drive_the_lifecycle() {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pagetier@.service");
    let unit = fs::read_to_string(&unit_path).unwrap();
    for key in [
        "Type=forking",
        "PIDFile=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.contains(key), "{key} missing in the unit");
    }
    let tmp = tempfile::Builder::new()
        .prefix("pagetier-unit-")
        .tempdir()
        .unwrap();

    if have("systemd-analyze") {
        // Verify a copy whose binary exists; any warning fails the test.
        let copy = tmp.path().join("pagetier@mnt-test.service");
        fs::write(&copy, unit.replace("/usr/local/bin/pagetier", bin())).unwrap();
        let out = run_deadline(
            Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(&copy),
            DEADLINE,
        );
        assert_eq!(out.code(), 0, "{out:?}");
        assert!(out.stderr.trim().is_empty(), "{}", out.stderr);
    } else {
        eprintln!("systemd-analyze missing: the unit is only parse-checked");
    }

    // Run ExecStart, ExecReload and the stop as systemd would.
    let storage = tmp.path().join("storage");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&storage).unwrap();
    fs::create_dir(&mnt).unwrap();
    write_file(&storage.join("f"), MIB, 5);
    let pid_file = tmp.path().join("pid");
    let log = tmp.path().join("pagetier.log");
    let argv = unit_exec_start(
        &unit,
        &[
            ("/usr/local/bin/pagetier", bin().to_string()),
            ("/run/pagetier/%i/pid", pid_file.display().to_string()),
            ("/var/log/pagetier/%i.log", log.display().to_string()),
            ("${STORAGE}", storage.display().to_string()),
            ("%f", mnt.display().to_string()),
            (
                "${OPTIONS}",
                "device_capacity=64MiB,log_stats=1".to_string(),
            ),
        ],
    );
    assert!(
        argv.iter().all(|a| !a.contains('%') && !a.contains('$')),
        "{argv:?}"
    );
    let _guard = util::MountGuard::new(&mnt);
    let out = run_deadline(
        Command::new(&argv[0])
            .args(&argv[1..])
            .env("RUST_LOG", "info"),
        DEADLINE,
    );
    assert_eq!(out.code(), 0, "{argv:?}: {out:?}");
    assert!(is_fuse_mounted(&mnt), "not mounted once --daemon returned");
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = Pid::from_raw(pid).unwrap();
    assert!(
        wait_until(DEADLINE, || fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("pagetier::stats"))),
        "no --log-stats line in {}",
        log.display()
    );

    // logrotate: move the log away, then `systemctl reload` (SIGHUP).
    let rotated = tmp.path().join("pagetier.log.1");
    fs::rename(&log, &rotated).unwrap();
    kill_process(pid, Signal::HUP).unwrap();
    assert!(
        wait_until(DEADLINE, || fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("reopened the log file"))),
        "the log was not reopened"
    );

    // `systemctl stop`: SIGTERM, then the daemon is gone and the mount too.
    kill_process(pid, Signal::TERM).unwrap();
    assert!(
        wait_until(DEADLINE, || !is_fuse_mounted(&mnt)
            && !util::pid_alive(pid.as_raw_nonzero().get() as u32)),
        "still running after SIGTERM"
    );
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("unmounted"), "{text}");
    assert!(
        !fs::read_to_string(&rotated)
            .unwrap()
            .contains("reopened the log file")
    );
}

#[test]
fn fstab_line_of_the_readme_parses() {
    // The options of README's fstab line, as mount.fuse3 passes them.
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.contains("fuse.pagetier") && !l.trim_start().starts_with("mount"))
        .expect("an fstab line in README");
    let opts = line.split_whitespace().nth(3).expect("options field");
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-storage");
    // A missing STORAGE is reported only after the options were accepted.
    let out = run_deadline(
        Command::new(bin())
            .arg(&missing)
            .arg(tmp.path())
            .args(["-o", opts]),
        DEADLINE,
    );
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("STORAGE"), "{opts}: {out:?}");
}

#[test]
fn failed_requests_are_logged_at_debug_and_isatty_or_poll_on_a_file_answer_quietly() {
    use std::os::fd::AsRawFd;
    // A log file: plain text (stderr gets colour codes between the fields).
    let logs = tempfile::tempdir().unwrap();
    let log_file = logs.path().join("pagetier.log");
    let log_arg = log_file.to_str().unwrap();
    let m = Mounted::with(&["--log-level", "debug", "--log-file", log_arg], |s| {
        fs::write(s.join("f"), b"x").unwrap()
    });
    let log_text = || fs::read_to_string(&log_file).unwrap_or_default();
    // isatty() asks the file with ioctl(TCGETS): a file of either view answers ENOTTY,
    // as any plain file does.
    for p in [m.host("f"), m.device().join("f")] {
        let f = fs::File::open(&p).unwrap();
        // SAFETY: isatty only queries the open descriptor `f` owns.
        let tty = unsafe { libc::isatty(f.as_raw_fd()) };
        let e = std::io::Error::last_os_error();
        assert_eq!(tty, 0, "{}", p.display());
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{}: {e}", p.display());
        // poll() on a file: ready at once, as a plain file is.
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes the one pollfd owned here.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        assert_eq!(ready, 1, "{}", p.display());
        assert_ne!(pfd.revents & libc::POLLIN, 0, "{}", p.display());
    }
    // Failures every program meets: each logged once, at debug, saying what failed.
    assert!(fs::metadata(m.host("missing")).is_err());
    fs::create_dir(m.host("d")).unwrap();
    fs::write(m.host("d/x"), b"x").unwrap();
    assert!(fs::remove_dir(m.host("d")).is_err());
    let failed = |op: &str, what: &str| {
        log_text()
            .lines()
            .find(|l| {
                l.contains("request failed")
                    && l.contains(&format!("op=\"{op}\""))
                    && l.contains(what)
            })
            .map(str::to_string)
    };
    let want = [
        ("lookup", "name=\"missing\""),
        ("rmdir", "name=\"d\""),
        ("ioctl", "os error 25"),
        ("poll", "os error 38"),
    ];
    assert!(
        wait_until(DEADLINE, || want
            .iter()
            .all(|(op, what)| failed(op, what).is_some())),
        "failed requests not logged with op, name and errno:\n{}",
        log_text()
    );
    let rmdir = failed("rmdir", "name=\"d\"").unwrap();
    assert!(
        rmdir.contains("DEBUG") && rmdir.contains("os error 39"),
        "{rmdir}"
    );
    let log = log_text();
    assert!(
        !log.contains("Not Implemented"),
        "fuser's default warned:\n{log}"
    );
    for line in log.lines().filter(|l| l.contains("request failed")) {
        assert!(
            line.contains("DEBUG"),
            "an expected failure above debug: {line}"
        );
    }
}
