#!/usr/bin/env python3
"""pagetier benchmark suite: the same fio workloads on STORAGE itself, on peer
FUSE filesystems and on pagetier's two views, over the same data, in alternation.

    scripts/bench [--quick] [--reps N] [--systems a,b,...] [--jobs a,b,...] [--cold] ...

One command: installs what is missing (scripts/setup.sh), builds pagetier (release) and
the C peer passthrough_ll (from the source libfuse3-dev ships, into target/peers/),
generates the dataset (scripts/make-dataset), mounts every system over the same STORAGE,
then for each job runs rep 1 on A, B, C, ..., rep 2 on A, B, C, ... and reports medians
and ratios from that one run into bench-results/<timestamp>/: results.md, results.json,
throughput.png, hit-ratio.png, raw/ (every fio JSON) and bench.log.
See docs/BENCH.md for what each system and job means.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIO_DIR = os.path.join(REPO, "fixtures", "fio")
MiB = 1 << 20

# name -> what it is (docs/BENCH.md explains each)
SYSTEMS = {
    "storage-warm": "fio directly on STORAGE, backing files in the page cache",
    "storage-odirect": "fio directly on STORAGE with O_DIRECT (direct=1): the disk",
    "bindfs": "bindfs, single-threaded (its default)",
    "bindfs-mt": "bindfs --multithreaded",
    "ll-auto": "libfuse passthrough_ll -o cache=auto (kernel page cache of the FUSE file)",
    "ll-never": "libfuse passthrough_ll -o cache=never (direct_io: every read to the daemon)",
    "pt-host": "pagetier host view",
    "pt-dev-cold": "pagetier device view, tier emptied (user.pagetier.evict) before each run",
    "pt-dev-warm": "pagetier device view, tier filled (user.pagetier.prefetch=0-) before each run",
}
PEERS = ["storage-warm", "storage-odirect", "bindfs", "bindfs-mt", "ll-auto", "ll-never"]
PAGETIER = ["pt-host", "pt-dev-cold", "pt-dev-warm"]


def log(msg):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if LOGFILE:
        LOGFILE.write(line + "\n")
        LOGFILE.flush()


LOGFILE = None


def die(msg):
    log(f"bench: error: {msg}")
    sys.exit(1)


def run(cmd, check=True, capture=True, env=None, timeout=None):
    r = subprocess.run(cmd, env=env, timeout=timeout, text=True,
                       stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.PIPE if capture else None)
    if check and r.returncode != 0:
        die(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{(r.stdout or '')[-2000:]}"
            f"{(r.stderr or '')[-2000:]}")
    return r


def out(cmd):
    try:
        r = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return r.stdout.strip()
    except OSError as e:
        return f"unavailable ({e})"


def cpu_idle():
    """How an idle CPU waits for its next wakeup (`/sys/devices/system/cpu/cpuidle`).

    Every FUSE request wakes a daemon thread and every reply wakes the caller, usually on the
    other CPU. In a VM whose idle vCPUs halt without polling first (`cpuidle-haltpoll` with
    `guest_halt_poll_ns=0`), each such wakeup exits to the hypervisor: on the project's
    machine that tripled the time of a small-file open (docs/BENCH.md, "Halted vCPUs"), so
    results of machines that differ here do not compare.
    """
    base = "/sys/devices/system/cpu/cpuidle"
    try:
        driver = open(f"{base}/current_driver").read().strip()
        governor = open(f"{base}/current_governor").read().strip()
    except OSError:
        return "unknown"
    text = f"{driver} (governor {governor})"
    try:
        poll_ns = int(open("/sys/module/haltpoll/parameters/guest_halt_poll_ns").read())
    except (OSError, ValueError):
        return text
    if driver == "haltpoll":
        text += (", halted vCPUs poll for up to {:,} ns first".format(poll_ns) if poll_ns
                 else ", guest halt polling off (`guest_halt_poll_ns=0`): every cross-CPU "
                      "wakeup of an idle vCPU exits to the hypervisor")
    return text


def parse_size(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", text.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    return int(float(m[1]) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
                              "T": 1 << 40}[m[2].upper()])


def fmt_size(n):
    for unit, s in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n % s == 0:
            return f"{n // s}{unit}"
    return str(n)


# ---------------------------------------------------------------------------- mounts

def is_fuse_mounted(path):
    # resolve the parent only: a stat of a hung FUSE mount point would hang
    path = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))),
                        os.path.basename(path))
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mp = left.split()[4].replace("\\040", " ")
            if mp == path and right.startswith("fuse"):
                return True
    return False


def wait_for(cond, seconds, what):
    end = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > end:
            die(f"timed out waiting for {what}")
        time.sleep(0.05)


class Mounts:
    """The FUSE mounts of this run; unmounts all of them at exit, whatever happens."""

    def __init__(self, root):
        self.root = root
        self.mounted = []  # (mountpoint, pid file or None)

    def mount(self, name, cmd, pid_file=None):
        mnt = os.path.join(self.root, name)
        os.makedirs(mnt, exist_ok=True)
        if is_fuse_mounted(mnt):
            self.unmount_one(mnt, None)
        cmd = [mnt if c == "{mnt}" else c for c in cmd]
        if mnt not in cmd:
            cmd.append(mnt)
        log(f"mount {name}: {' '.join(cmd)}")
        run(cmd)
        self.mounted.append((mnt, pid_file))
        wait_for(lambda: is_fuse_mounted(mnt), 20, f"{name} to mount on {mnt}")
        return mnt

    @staticmethod
    def unmount_one(mnt, pid_file):
        for _ in range(10):
            if not is_fuse_mounted(mnt):
                break
            subprocess.run(["fusermount3", "-u", mnt], stderr=subprocess.DEVNULL)
            time.sleep(0.1)
        if is_fuse_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", mnt], stderr=subprocess.DEVNULL)
        if pid_file and os.path.exists(pid_file):
            try:
                pid = int(open(pid_file).read().strip())
                end = time.monotonic() + 20
                while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
                    time.sleep(0.05)
            except ValueError:
                pass

    def unmount_all(self):
        while self.mounted:
            mnt, pid_file = self.mounted.pop()
            self.unmount_one(mnt, pid_file)


# ---------------------------------------------------------------------------- page cache

def fincore(paths):
    """(resident bytes, total bytes) of `paths` in the host page cache, by fincore."""
    if not paths or not shutil.which("fincore"):
        return None
    res = total = 0
    # chunk the argument list; fincore --json --bytes prints one record per file
    for i in range(0, len(paths), 200):
        r = subprocess.run(["fincore", "--json", "--bytes", *paths[i:i + 200]],
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if r.returncode != 0:
            return None
        for rec in json.loads(r.stdout)["fincore"]:
            res += int(rec["res"])
            total += int(rec["size"])
    return res, total


def background_cpu(seconds=0.25):
    """Share of all CPUs busy over `seconds` while this harness is idle: other work."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / (t1 - t0) if t1 > t0 else 0.0


def read_files(paths):
    buf = bytearray(4 * MiB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def drop_caches(paths):
    """Drop the page cache: globally when root (also the FUSE mounts' own caches), else
    per file with fadvise(DONTNEED) on the backing files."""
    subprocess.run(["sync"])
    if os.geteuid() == 0:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------- jobs

class Job:
    """One benchmark job: a fixtures/fio file plus its environment."""

    def __init__(self, name, fio, env, files, subdir="", epochs=0, unaligned=False):
        self.name, self.fio, self.env, self.files = name, fio, env, files
        self.subdir = subdir  # DIR relative to the system's root
        self.epochs = epochs  # train-epoch: one fio per epoch
        self.unaligned = unaligned


def dataset_files(root, sub=""):
    out = []
    for dp, dns, fns in os.walk(os.path.join(root, sub)):
        dns.sort()
        out += [os.path.join(dp, f) for f in sorted(fns) if f.endswith(".bin")]
    return out


def make_jobs(names, a, storage):
    seq_size, rand_size = a.size, max(a.size // 4, 16 * MiB)
    data = dataset_files(storage, "dataset")
    train = dataset_files(storage, "dataset/train")
    fio_files = lambda jobs: [os.path.join(storage, f"fio-data.{j}") for j in range(jobs)]
    catalog = {
        "seq-read-1m": lambda: Job("seq-read-1m", "seq-read-1m", {"SIZE": seq_size, "JOBS": 1},
                                   fio_files(1)),
        "seq-read-1m-x4": lambda: Job("seq-read-1m-x4", "seq-read-1m",
                                      {"SIZE": seq_size // 4, "JOBS": 4}, fio_files(4)),
        "rand-read-4k": lambda: Job("rand-read-4k", "rand-read-4k", {"SIZE": rand_size, "JOBS": 1},
                                    fio_files(1)),
        "rand-read-4k-x4": lambda: Job("rand-read-4k-x4", "rand-read-4k",
                                       {"SIZE": rand_size // 4, "JOBS": 4}, fio_files(4)),
        "mmap-read-4k": lambda: Job("mmap-read-4k", "mmap-read-4k",
                                    {"SIZE": rand_size, "JOBS": 1}, fio_files(1)),
        "rand-read-128k": lambda: Job("rand-read-128k", "rand-read-128k",
                                      {"SIZE": seq_size, "JOBS": 1}, fio_files(1)),
        "shards-read": lambda: Job("shards-read", "shards-read", {}, data, subdir="dataset"),
        "train-epoch": lambda: Job("train-epoch", "train-epoch", {"EPOCHS": 1}, train,
                                   subdir="dataset/train", epochs=a.epochs),
    }
    jobs = []
    for n in names:
        base, _, variant = n.partition("@")
        if base not in catalog or variant not in ("", "unaligned"):
            die(f"unknown job {n!r}; jobs: {', '.join(catalog)} (each may take @unaligned)")
        j = catalog[base]()
        if variant:
            j.name, j.unaligned = n, True
        jobs.append(j)
    return jobs


def job_file(job, outdir):
    path = os.path.join(FIO_DIR, job.fio + ".fio")
    if not job.unaligned:
        return path
    # fio puts the first buffer at a page boundary + iomem_align: 512 makes every buffer
    # start 512 bytes into a page (still fine for O_DIRECT on 512-byte sectors)
    text = open(path).read()
    if "iomem_align=4k" not in text:
        die(f"{path} has no iomem_align=4k to replace")
    alt = os.path.join(outdir, f"{job.fio}-unaligned.fio")
    with open(alt, "w") as f:
        f.write(text.replace("iomem_align=4k", "iomem_align=512"))
    return alt


def parse_fio(text):
    """The one (group-reported) job of fio's JSON output -> a flat result dict."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in fio output")
    d = json.loads(text[start:])
    j = d["jobs"][0]
    if j.get("error"):
        raise ValueError(f"fio job error {j['error']}")
    r = j["read"]
    pct = r.get("clat_ns", {}).get("percentile", {})
    return {
        "bytes": r["io_bytes"],
        "runtime_ms": r["runtime"],
        "mbps": r["bw_bytes"] / 1e6,
        "iops": r["iops"],
        "lat_mean_us": r["lat_ns"]["mean"] / 1e3,
        "p50_us": pct.get("50.000000", 0) / 1e3,
        "p99_us": pct.get("99.000000", 0) / 1e3,
        "usr_cpu": j.get("usr_cpu"),
        "sys_cpu": j.get("sys_cpu"),
    }


# ---------------------------------------------------------------------------- the systems

class System:
    def __init__(self, name, root, extra=(), pt_mount=None, device=False):
        self.name, self.root, self.extra = name, root, list(extra)
        self.pt_mount = pt_mount  # pagetier mount point, for stats and xattrs
        self.device = device

    def path(self, job):
        return os.path.join(self.root, job.subdir) if job.subdir else self.root


def pt_stats(mnt):
    try:
        with open(os.path.join(mnt, ".pagetier", "stats")) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        log(f"warning: cannot read pagetier stats: {e}")
        return None


def stats_delta(before, after):
    if not before or not after:
        return None
    out = {}
    for k in ("reads", "hits", "misses", "bytes_served", "bytes_faulted", "evictions"):
        out[k] = after["device"].get(k, 0) - before["device"].get(k, 0)
    lookups = out["hits"] + out["misses"]
    out["hit_ratio"] = out["hits"] / lookups if lookups else None
    return out


def pt_residency(host_paths):
    res = size = 0
    for p in host_paths:
        try:
            d = json.loads(os.getxattr(p, "user.pagetier.residency"))
            res += d["resident_bytes"]
            size += d["size"]
        except (OSError, ValueError, KeyError):
            return None
    return res, size


def host_paths(system, job, storage):
    """The files a job reads, as paths through the pagetier host view."""
    return [os.path.join(system.pt_mount, os.path.relpath(p, storage)) for p in job.files]


# ---------------------------------------------------------------------------- main

def main():
    global LOGFILE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="systems: " + ", ".join(SYSTEMS))
    ap.add_argument("--quick", action="store_true", help="small data, 2 reps: under 5 minutes")
    ap.add_argument("--cluster", action="store_true",
                    help="instead: two nodes over a loopback GlusterFS volume "
                         "(scripts/cluster -- scripts/bench-cluster; README 'Running on many nodes')")
    ap.add_argument("--reps", type=int, help="repetitions of every (job, system) (default 3, quick 2)")
    ap.add_argument("--systems", help="comma-separated (default: all; 'peers' = the non-pagetier ones)")
    ap.add_argument("--jobs", help="comma-separated job names; name@unaligned runs it with "
                    "iomem_align=512 instead of 4k")
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before every run (default: warm it)")
    ap.add_argument("--total", type=parse_size, help="dataset size (default 1G, quick 256M)")
    ap.add_argument("--shard", type=parse_size, default=4 * MiB, help="shard size (default 4M)")
    ap.add_argument("--size", type=parse_size, help="seq/rand file size (default 1G, quick 256M)")
    ap.add_argument("--epochs", type=int, help="train-epoch epochs per rep (default 3, quick 2)")
    ap.add_argument("--runtime", type=int, help="cap per fio run in s (default 10, quick 5)")
    ap.add_argument("--device-capacity", help="pagetier --device-capacity (default: fits the data)")
    ap.add_argument("--pt-args", default="",
                    help="extra pagetier mount options, space-separated (e.g. '--passthrough off')")
    ap.add_argument("--workdir", default=os.path.join(REPO, "bench-results", "tmp"),
                    help="STORAGE and mount points (default bench-results/tmp, kept for reuse)")
    ap.add_argument("--out", help="results directory (default bench-results/<timestamp>)")
    ap.add_argument("--no-build", action="store_true", help="use the existing target/release binary")
    ap.add_argument("--no-setup", action="store_true", help="skip scripts/setup.sh")
    ap.add_argument("--no-charts", action="store_true")
    a = ap.parse_args()
    if a.cluster:
        if not a.no_build:
            run(["cargo", "build", "--release", "--locked"], capture=False)
        reps = ["--reps", str(a.reps)] if a.reps else []
        sys.exit(subprocess.run([os.path.join(REPO, "scripts", "cluster"), "--",
                                 os.path.join(REPO, "scripts", "bench-cluster"), *reps]).returncode)

    q = a.quick
    a.reps = a.reps or (2 if q else 3)
    a.total = a.total or (256 * MiB if q else 1 << 30)
    a.size = a.size or (256 * MiB if q else 1 << 30)
    a.epochs = a.epochs or (2 if q else 3)
    a.runtime = a.runtime or (5 if q else 10)
    if a.systems in (None, "all"):
        systems = list(SYSTEMS)
    else:
        systems = []
        for s in a.systems.split(","):
            systems += PEERS if s == "peers" else PAGETIER if s == "pagetier" else [s]
    for s in systems:
        if s not in SYSTEMS:
            die(f"unknown system {s!r}; systems: {', '.join(SYSTEMS)}")
    default_jobs = (["seq-read-1m", "rand-read-4k", "shards-read", "train-epoch"] if q else
                    ["seq-read-1m", "seq-read-1m-x4", "rand-read-4k", "rand-read-4k-x4",
                     "mmap-read-4k", "rand-read-128k", "shards-read", "train-epoch"])
    job_names = a.jobs.split(",") if a.jobs else default_jobs

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = a.out or os.path.join(REPO, "bench-results", stamp)
    os.makedirs(outdir, exist_ok=True)
    LOGFILE = open(os.path.join(outdir, "bench.log"), "w")
    log(f"bench: results in {outdir}; systems {','.join(systems)}; jobs {','.join(job_names)}; "
        f"reps {a.reps}; {'cold' if a.cold else 'warm'} page cache")
    if a.cold and os.geteuid() != 0:
        log("warning: not root: --cold drops only the backing files (fadvise), not FUSE caches")

    if not a.no_setup:
        run([os.path.join(REPO, "scripts", "setup.sh")], capture=False)
    for tool in ("fio", "fusermount3"):
        if not shutil.which(tool):
            die(f"{tool} is missing (scripts/setup.sh installs it)")

    want_pt = any(s in PAGETIER for s in systems)
    pt_bin = os.path.join(REPO, "target", "release", "pagetier")
    if want_pt and not a.no_build:
        log("cargo build --release")
        run(["cargo", "build", "--release", "--locked"], capture=False)
    ll_bin = None
    if any(s.startswith("ll-") for s in systems):
        ll_bin = build_passthrough_ll()

    storage = os.path.join(a.workdir, "storage")
    os.makedirs(storage, exist_ok=True)
    log(f"dataset: {fmt_size(a.total)} in {fmt_size(a.shard)} shards")
    run([os.path.join(REPO, "scripts", "make-dataset"), os.path.join(storage, "dataset"),
         "--total", str(a.total), "--shard", str(a.shard), "--quiet"])
    jobs = make_jobs(job_names, a, storage)
    lay_out_fio_files(jobs, storage, a)
    data_bytes = sum(os.path.getsize(p) for j in jobs for p in set(j.files))

    mounts = Mounts(os.path.join(a.workdir, "mnt"))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    try:
        sysobjs = mount_systems(systems, storage, mounts, a, pt_bin, ll_bin, data_bytes)
        meta = machine_info(storage, pt_bin if want_pt else None, ll_bin, a, systems, job_names)
        with open(os.path.join(outdir, "machine.json"), "w") as f:
            json.dump(meta, f, indent=2)
        runs = bench_loop(jobs, sysobjs, a, storage, outdir)
    finally:
        mounts.unmount_all()

    raw = os.path.join(outdir, "fio-raw.jsonl")
    if os.path.exists(raw):
        run(["gzip", "-f", raw])
    summary = summarize(runs, jobs, systems)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump({"machine": meta, "runs": runs, "summary": summary}, f, indent=2)
    md = report_md(summary, meta, systems, a)
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(md)
    print(md)
    if not a.no_charts:
        charts(summary, runs, systems, outdir)
    log(f"bench: done: {outdir}")


def build_passthrough_ll():
    src = "/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c"
    if not os.path.exists(src):
        die(f"{src} is missing (apt-get install libfuse3-dev)")
    dest_dir = os.path.join(REPO, "target", "peers")
    dest = os.path.join(dest_dir, "passthrough_ll")
    if os.path.exists(dest) and os.path.getmtime(dest) >= os.path.getmtime(src):
        return dest
    os.makedirs(dest_dir, exist_ok=True)
    flags = run(["pkg-config", "--cflags", "--libs", "fuse3"]).stdout.split()
    log(f"build {dest} from {src}")
    run(["gcc", "-O2", "-Wall", "-o", dest, src, *flags])
    return dest


def lay_out_fio_files(jobs, storage, a):
    """Create fio-data.N for the seq/rand jobs in STORAGE (the largest size wins)."""
    need = {}
    for j in jobs:
        if j.subdir:
            continue
        for i in range(j.env["JOBS"]):
            need[i] = max(need.get(i, 0), j.env["SIZE"])
    for i, size in sorted(need.items()):
        path = os.path.join(storage, f"fio-data.{i}")
        if os.path.exists(path) and os.path.getsize(path) >= size:
            continue
        log(f"lay out {path} ({fmt_size(size)})")
        env = dict(os.environ, DIR=storage, SIZE=str(size), JOBS="1", RUNTIME="600")
        # fio's layout of a one-job seq-read writes fio-data.0; rename to fio-data.i
        with tempfile.TemporaryDirectory(dir=storage) as tmp:
            env["DIR"] = tmp
            run(["fio", "--create_only=1", os.path.join(FIO_DIR, "seq-read-1m.fio")], env=env)
            os.replace(os.path.join(tmp, "fio-data.0"), path)


def mount_systems(names, storage, mounts, a, pt_bin, ll_bin, data_bytes):
    out = {}
    pt_mnt = None
    for n in names:
        if n == "storage-warm":
            out[n] = System(n, storage)
        elif n == "storage-odirect":
            out[n] = System(n, storage, extra=["--direct=1"])
        elif n in ("bindfs", "bindfs-mt"):
            cmd = ["bindfs", "--no-allow-other"] + (["--multithreaded"] if n == "bindfs-mt" else [])
            out[n] = System(n, mounts.mount(n, cmd + [storage]))
        elif n in ("ll-auto", "ll-never"):
            cache = n.split("-")[1]
            out[n] = System(n, mounts.mount(n, [ll_bin, "-o", f"source={storage},cache={cache}"]))
        elif n in PAGETIER:
            if pt_mnt is None:
                if not os.access(pt_bin, os.X_OK):
                    die(f"no pagetier binary at {pt_bin}")
                cap = a.device_capacity or fmt_size(max(1 << 30, -(-data_bytes * 5 // 4 // (1 << 30)) << 30))
                pid = os.path.join(mounts.root, "pagetier.pid")
                # A device-view open is served by the kernel only if the whole file fits
                # the pin budget (--pin-share): let a 1 GiB fio file in a 2 GiB tier fit.
                pt_mnt = mounts.mount("pagetier", [pt_bin, "mount", storage, "{mnt}", "--daemon",
                                                   "--pid-file", pid, "--device-capacity", cap,
                                                   "--pin-share", "0.9", *a.pt_args.split()],
                                      pid_file=pid)
            if n == "pt-host":
                out[n] = System(n, pt_mnt, pt_mount=pt_mnt)
            else:
                out[n] = System(n, os.path.join(pt_mnt, ".pagetier", "device"), pt_mount=pt_mnt,
                                device=True)
    return out


def prepare(system, job, a, storage):
    """Put caches and tier in the state the run wants; returns what it measured."""
    info = {}
    if system.pt_mount and system.device:
        hp = host_paths(system, job, storage)
        attr, value = (("user.pagetier.evict", b"1") if system.name == "pt-dev-cold"
                       else ("user.pagetier.prefetch", b"0-"))
        for p in hp:
            os.setxattr(p, attr, value)
        r = pt_residency(hp)
        if r:
            info["tier_resident"] = r[0] / r[1] if r[1] else 1.0
        if system.name == "pt-dev-warm":
            # "Warm" is the steady state of a resident file: a device-view open of it that
            # can be served by the kernel has migrated it into shared device memory (once;
            # it stays there across closes). Make that first open here, and time it.
            t0 = time.monotonic()
            for p in hp:
                dev = os.path.join(system.root, os.path.relpath(p, system.pt_mount))
                with open(dev, "rb") as f:
                    f.read(1)
            info["first_open_s"] = time.monotonic() - t0
    if a.cold:
        drop_caches(job.files)
    elif system.name != "storage-odirect":
        read_files(job.files)  # re-warm: idle page cache does not stay here for long
    r = fincore(job.files)
    if r:
        info["host_resident"] = r[0] / r[1] if r[1] else 1.0
    return info


def fio_once(system, job, a, outdir, tag, seed=None):
    env = dict(os.environ, DIR=system.path(job), RUNTIME=str(a.runtime), SIZE="16M", JOBS="1",
               EPOCHS="1", SEED=str(seed or 1))
    env.update({k: str(v) for k, v in job.env.items()})
    cmd = ["fio", "--output-format=json", *system.extra, job_file(job, outdir)]
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=a.runtime * 6 + 120)
    # every fio output, one JSON document per line, gzipped at the end of the run
    with open(os.path.join(outdir, "fio-raw.jsonl"), "a") as f:
        f.write(json.dumps({"tag": tag, "rc": r.returncode, "stderr": r.stderr[-2000:],
                            "stdout": r.stdout}) + "\n")
    if r.returncode != 0:
        raise RuntimeError(f"fio exit {r.returncode}: {r.stderr.strip()[-500:]}")
    res = parse_fio(r.stdout)
    res["wall_s"] = time.monotonic() - t0
    return res


def bench_loop(jobs, sysobjs, a, storage, outdir):
    runs = []
    total = sum(len(sysobjs) * a.reps for _ in jobs)
    n = 0
    for job in jobs:
        for rep in range(1, a.reps + 1):
            for name, s in sysobjs.items():
                n += 1
                info = prepare(s, job, a, storage)
                epochs = job.epochs or 1
                for e in range(1, epochs + 1):
                    tag = f"{job.name}.{name}.r{rep}" + (f".e{e}" if job.epochs else "")
                    before = pt_stats(s.pt_mount) if s.pt_mount else None
                    # the tier residency was measured before epoch 1 only
                    pre = info if e == 1 else {k: v for k, v in info.items()
                                               if k != "tier_resident"}
                    rec = {"job": job.name, "system": name, "rep": rep, **pre,
                           "background_cpu": background_cpu()}
                    if job.epochs:
                        rec["epoch"] = e
                    try:
                        rec.update(fio_once(s, job, a, outdir, tag, seed=rep * 1000 + e))
                    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as ex:
                        rec["error"] = str(ex)
                    if s.pt_mount:
                        rec["device_stats"] = stats_delta(before, pt_stats(s.pt_mount))
                    runs.append(rec)
                    res = ("ERROR " + rec["error"][:200]) if "error" in rec else (
                        f"{rec['mbps']:9.1f} MB/s {rec['iops']:10.0f} IOPS p50 {rec['p50_us']:8.1f}us "
                        f"p99 {rec['p99_us']:8.1f}us")
                    hr = (rec.get("device_stats") or {}).get("hit_ratio")
                    extra = "".join([
                        f" host-cache {info['host_resident']:.0%}" if "host_resident" in info else "",
                        f" tier {info['tier_resident']:.0%}" if "tier_resident" in info and e == 1 else "",
                        f" hits {hr:.0%}" if hr is not None else "",
                        f" first-open {info['first_open_s']:.3f}s"
                        if "first_open_s" in info and e == 1 else ""])
                    log(f"[{n}/{total}] {tag:42s} {res}{extra}")
    return runs


def summarize(runs, jobs, systems):
    """medians per (job[#epoch], system) over reps"""
    keys = []
    for j in jobs:
        if j.epochs:
            keys += [f"{j.name}#{e}" for e in range(1, j.epochs + 1)]
        else:
            keys.append(j.name)
    summary = {}
    for key in keys:
        name, _, ep = key.partition("#")
        summary[key] = {}
        for s in systems:
            rs = [r for r in runs if r["job"] == name and r["system"] == s
                  and (not ep or r.get("epoch") == int(ep))]
            ok = [r for r in rs if "error" not in r]
            if not ok:
                summary[key][s] = {"errors": len(rs)}
                continue
            med = lambda k: statistics.median(r[k] for r in ok)
            mbps = [r["mbps"] for r in ok]
            d = {"background_cpu": max(r.get("background_cpu", 0) for r in ok), "mbps": med("mbps"), "iops": med("iops"), "p50_us": med("p50_us"),
                 "p99_us": med("p99_us"), "lat_mean_us": med("lat_mean_us"),
                 "spread": (max(mbps) - min(mbps)) / med("mbps") if med("mbps") else 0,
                 "n": len(ok), "errors": len(rs) - len(ok)}
            hrs = [r["device_stats"]["hit_ratio"] for r in ok
                   if r.get("device_stats") and r["device_stats"].get("hit_ratio") is not None]
            if hrs:
                d["hit_ratio"] = statistics.median(hrs)
            for k in ("host_resident", "tier_resident", "first_open_s"):
                v = [r[k] for r in ok if k in r]
                if v:
                    d[k] = statistics.median(v)
            summary[key][s] = d
    return summary


def machine_info(storage, pt_bin, ll_bin, a, systems, jobs):
    mem = out(["sh", "-c", "grep MemTotal /proc/meminfo"])
    cpu = out(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"])
    df = out(["df", "-hT", storage]).splitlines()[-1]
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "nproc": os.cpu_count(),
        "cpu": cpu.strip(),
        "memory": mem.split(":", 1)[-1].strip(),
        "kernel": platform.release(),
        "cpu_idle": cpu_idle(),
        "storage_fs": df,
        "fio": out(["fio", "--version"]),
        "bindfs": out(["bindfs", "--version"]),
        "libfuse": out(["pkg-config", "--modversion", "fuse3"]),
        "pagetier": out([pt_bin, "--version"]) if pt_bin else None,
        "pagetier_git": out(["git", "-C", REPO, "describe", "--always", "--dirty"]),
        "passthrough_ll": ll_bin,
        "args": {k: v for k, v in vars(a).items()},
        "systems": {s: SYSTEMS[s] for s in systems},
        "jobs": jobs,
        "mode": "cold" if a.cold else "warm",
    }


def report_md(summary, meta, systems, a):
    peers = [s for s in systems if s in PEERS]
    L = [f"# pagetier bench {meta['date']}", ""]
    L.append(f"{meta['nproc']} CPUs ({meta['cpu']}), {meta['memory']}, kernel {meta['kernel']}; "
             f"{meta['fio']}, {meta['bindfs']}, libfuse {meta['libfuse']}"
             + (f", {meta['pagetier']} ({meta['pagetier_git']})" if meta.get("pagetier") else "")
             + ".")
    L.append(f"STORAGE: `{meta['storage_fs']}`.")
    L.append(f"CPU idle: {meta.get('cpu_idle', 'unknown')}.")
    L.append(f"Mode: **{meta['mode']}** page cache; {a.reps} reps per (job, system), run in "
             f"alternation; medians; 'spread' = (max-min)/median of MB/s; "
             f"ratio columns = this row's MB/s / the column system's MB/s.")
    busy = max((d.get("background_cpu", 0) for per in summary.values() for d in per.values()),
               default=0)
    if busy > 0.2:
        L.append(f"**Warning:** other processes kept up to {busy:.0%} of the CPUs busy just "
                 f"before some runs: the machine was shared; expect noise.")
    L.append("")
    for key, per in summary.items():
        L.append(f"## {key}")
        L.append("")
        head = ["system", "MB/s", "IOPS", "p50 µs", "p99 µs", "spread", "cache"] + \
            [f"×{p}" for p in peers]
        L.append("| " + " | ".join(head) + " |")
        L.append("|" + "---|" * len(head))
        for s in systems:
            d = per.get(s, {})
            if "mbps" not in d:
                L.append(f"| {s} | error ({d.get('errors', 0)} runs) |" + " |" * (len(head) - 2))
                continue
            cache = []
            if "host_resident" in d:
                cache.append(f"host {d['host_resident']:.0%}")
            if "tier_resident" in d:
                cache.append(f"tier {d['tier_resident']:.0%}")
            if "hit_ratio" in d:
                cache.append(f"hits {d['hit_ratio']:.0%}")
            row = [s, f"{d['mbps']:.0f}", f"{d['iops']:.0f}", f"{d['p50_us']:.1f}",
                   f"{d['p99_us']:.1f}", f"{d['spread']:.0%}", ", ".join(cache)]
            for p in peers:
                pm = per.get(p, {}).get("mbps")
                row.append(f"{d['mbps'] / pm:.2f}" if pm else "")
            L.append("| " + " | ".join(row) + " |")
        L.append("")
    return "\n".join(L) + "\n"


def charts(summary, runs, systems, outdir):
    py = ensure_matplotlib()
    if not py:
        log("warning: no matplotlib: charts skipped")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump({"summary": summary, "runs": runs, "systems": systems}, f)
        f.flush()
        r = subprocess.run([py, os.path.abspath(__file__), "--charts-from", f.name, outdir],
                           text=True, capture_output=True)
    if r.returncode != 0:
        log(f"warning: charts failed: {r.stderr[-1000:]}")
    else:
        log(r.stdout.strip())


def ensure_matplotlib():
    """A python with matplotlib: this one, or a venv under target/ (pip from PyPI)."""
    try:
        import matplotlib  # noqa: F401
        return sys.executable
    except ImportError:
        pass
    venv = os.path.join(REPO, "target", "bench-venv")
    py = os.path.join(venv, "bin", "python3")
    if os.path.exists(py) and subprocess.run([py, "-c", "import matplotlib"],
                                             capture_output=True).returncode == 0:
        return py
    log(f"pip install matplotlib into {venv}")
    if subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True).returncode != 0:
        return None
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "matplotlib"], capture_output=True, text=True)
    if r.returncode != 0:
        log(f"pip failed: {r.stderr[-500:]}")
        return None
    return py


def draw_charts(input_json, outdir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = json.load(open(input_json))
    summary, runs, systems = d["summary"], d["runs"], d["systems"]
    keys = list(summary)
    fig, ax = plt.subplots(figsize=(min(16, max(8, 0.18 * len(keys) * len(systems) + 3)), 5.5))
    width = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        ys = [summary[k].get(s, {}).get("mbps", 0) for k in keys]
        ax.bar([x + i * width for x in range(len(keys))], ys, width, label=s)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(keys))])
    ax.set_xticklabels(keys, rotation=20, ha="right")
    ax.set_ylabel("MB/s (median)")
    ax.set_yscale("log")
    ax.set_title("Throughput per job and system")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "throughput.png"), dpi=110)
    made = ["throughput.png"]

    pt = [s for s in systems if s.startswith("pt-dev")]
    ep = [r for r in runs if r.get("epoch") and r["system"] in pt and r.get("device_stats")
          and r["device_stats"].get("hit_ratio") is not None]
    if ep:
        fig, ax = plt.subplots(figsize=(7, 4))
        for s in pt:
            reps = sorted({r["rep"] for r in ep if r["system"] == s})
            for rep in reps:
                pts = sorted((r["epoch"], r["device_stats"]["hit_ratio"]) for r in ep
                             if r["system"] == s and r["rep"] == rep)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        label=f"{s} rep {rep}")
        ax.set_xticks(sorted({r["epoch"] for r in ep}))
        ax.set_xlabel("epoch")
        ax.set_ylabel("device-tier hit ratio")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("train-epoch: device view hit ratio per epoch")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "hit-ratio.png"), dpi=110)
        made.append("hit-ratio.png")
    print("charts: " + ", ".join(made))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--charts-from":
        draw_charts(sys.argv[2], sys.argv[3])
    else:
        main()
