#!/usr/bin/env python3
"""Epoch benchmark over an ImageNet-shaped tree of small files, on STORAGE, FUSE peers and
pagetier's two views, in alternation, with the daemons' memory.

    scripts/bench-files [--quick] [--files N] [--mean-size 16K] [--readers 1,4] [--epochs E]
                        [--systems a,b,...] [--device-capacity SIZE] [--nofile N] ...

One command: installs what is missing (scripts/setup.sh), builds pagetier (release), the C
peer passthrough_ll (as scripts/bench does) and the reader (scripts/epoch-reader.c, into
target/peers/), generates the dataset with `scripts/make-dataset --shape imagenet` into
bench-results/tmp/files/storage/ (kept for the next run), then for each reader count R:

  1. mounts every FUSE system fresh over that STORAGE (so epoch 1 of the device view is
     cold: the tier is empty) and records each daemon's memory (/proc/PID/status);
  2. runs E epochs; in each epoch every system in turn (A B C ... then A B C ...): first an
     untimed pass that warms STORAGE's page cache, then R reader processes started at once,
     each taking a share of every file in a new random order (seeded, the same order for
     every system in an epoch), open / read whole / close per file; records files/s, MB/s,
     per-file latency, failures by errno (EMFILE counted, the epoch carries on) and, for
     pagetier, the stats deltas (hits by bytes, inodes, tier use);
  3. records the daemons' memory after the epochs, writes 2 to /proc/sys/vm/drop_caches
     (the kernel forgets its dentries and inodes: FORGETs reach the daemons), waits for the
     memory to settle and records it again, with pagetier's `inodes`;
  4. unmounts everything (also on failure or Ctrl-C).

Results: bench-results/<stamp>-files/ with results.md (tables), results.json (every epoch
of every system), machine.json, bench.log and the pagetier daemons' logs. docs/BENCH.md
explains the systems and what each figure means.
"""
import argparse
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (scripts/bench.py: mounts, passthrough_ll, logging, sizes)
from bench import Mounts, build_passthrough_ll, log, parse_size, run  # noqa: E402

REPO = bench.REPO
MiB = 1 << 20

# name -> what it is (docs/BENCH.md, "Small-file epochs")
SYSTEMS = {
    "storage-warm": "the readers directly on STORAGE (ext4), page cache warmed before each epoch",
    "ll-auto": "libfuse passthrough_ll -o cache=auto",
    "ll-never": "libfuse passthrough_ll -o cache=never (direct_io)",
    "bindfs": "bindfs, single-threaded (its default)",
    "pt-host": "pagetier host view",
    "pt-dev": "pagetier device view, tier holding the whole dataset; epoch 1 on a fresh mount (cold)",
    "pt-dev-half": "pagetier device view, tier of half the dataset (--device-capacity)",
}
PEERS = ["storage-warm", "ll-auto", "ll-never", "bindfs"]
PAGETIER = ["pt-host", "pt-dev", "pt-dev-half"]
FUSE_PEERS = ["ll-auto", "ll-never", "bindfs"]


# ---------------------------------------------------------------------------- tools

def build_reader():
    """target/peers/epoch-reader from scripts/epoch-reader.c (rebuilt when the source is newer)."""
    src = os.path.join(REPO, "scripts", "epoch-reader.c")
    dest = os.path.join(REPO, "target", "peers", "epoch-reader")
    if os.path.exists(dest) and os.path.getmtime(dest) >= os.path.getmtime(src):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    log(f"build {dest} from {src}")
    run(["gcc", "-O2", "-Wall", "-Wextra", "-o", dest, src])
    return dest


def make_dataset(a, storage):
    """Generates (or keeps) the dataset; returns (its name under STORAGE, [(path, size)])."""
    name = f"imagenet-{a.files}-{a.mean_size}-s{a.seed}" + (f"-c{a.classes}" if a.classes else "")
    cmd = [os.path.join(REPO, "scripts", "make-dataset"), os.path.join(storage, name),
           "--shape", "imagenet", "--files", str(a.files), "--mean-size", str(a.mean_size),
           "--seed", str(a.seed)] + (["--classes", str(a.classes)] if a.classes else [])
    log(f"dataset: {' '.join(cmd[1:])}")
    subprocess.run(cmd, check=True)
    files = []
    with open(os.path.join(storage, name, "manifest.csv")) as f:
        next(f)
        for line in f:
            _, path, size = line.rstrip("\n").split(",")
            files.append((path, int(size)))
    return name, files


# ---------------------------------------------------------------------------- daemons

def pid_of_mount(mnt):
    """The pid of the process whose command line names `mnt` (bindfs, passthrough_ll)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if mnt.encode() in args:
            return int(d)
    return None


def memory(pid):
    """VmRSS and its parts (bytes) of `pid`, from /proc/PID/status; None if it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        return None
    out["RequestBuffers"] = request_buffers(pid)
    return out


# fuser's request buffer: one per FUSE worker thread, 16 MiB + 4 KiB, zeroed by calloc, so
# its own mapping (page-rounded with malloc's header: 16,392 KiB; two side by side merge).
FUSER_BUFFER_KIB = 16392


def request_buffers(pid):
    """Resident bytes of pagetier's FUSE request buffers (anonymous mappings whose size is a
    multiple of fuser's buffer). Pages the kernel filled stay resident: a BATCH_FORGET of a
    million inodes writes 16 bytes each into one. None if unreadable."""
    total, size, anon = 0, 0, False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split()
                if "-" in head[0] and not head[0].endswith(":"):
                    anon = len(head) == 5  # no path
                elif head[0] == "Size:":
                    size = int(head[1])
                elif head[0] == "Rss:" and anon and size and size % FUSER_BUFFER_KIB == 0:
                    total += int(head[1]) * 1024
    except OSError:
        return None
    return total


class Daemon:
    """A mounted system: its reader root and, for FUSE systems, its daemon's pid and mount."""

    def __init__(self, name, root, mnt=None, pid=None, pt=False, log_file=None):
        self.name, self.root, self.mnt, self.pid, self.pt = name, root, mnt, pid, pt
        self.log_file = log_file

    def snapshot(self):
        """Memory of the daemon and, for pagetier, the stats document's figures."""
        snap = {}
        if self.pid:
            snap["memory"] = memory(self.pid)
        if self.pt:
            st = bench.pt_stats(self.mnt)
            if st:
                dev = st["device"]
                snap["inodes"] = st.get("inodes")
                snap["open_handles"] = st.get("open_handles")
                snap["device"] = {k: dev.get(k) for k in (
                    "used_bytes", "capacity_bytes", "huge_pages", "base_pages", "hits", "misses",
                    "bytes_served", "bytes_faulted", "evictions", "metadata_bytes")}
                # Exported copies live in the tier's private tmpfs, not in the daemon's RSS.
                snap["device"]["shared_bytes"] = (st.get("shared") or {}).get("bytes") or 0
        return snap


def mount_all(names, storage, mounts, a, pt_bin, ll_bin, page_bytes, outdir, tag):
    """Mounts every FUSE system of `names` fresh; returns {name: Daemon} and {name: error}.
    `page_bytes`: the data in whole 4 KiB pages (what a tier holding all of it uses)."""
    daemons, errors = {}, {}
    prlimit = ["prlimit", f"--nofile={a.nofile}:{a.nofile}", "--"] if a.nofile else []
    for n in names:
        try:
            if n == "storage-warm":
                daemons[n] = Daemon(n, storage)
            elif n == "bindfs":
                mnt = mounts.mount(n, prlimit + ["bindfs", "--no-allow-other", storage])
                daemons[n] = Daemon(n, mnt, mnt, pid_of_mount(mnt))
            elif n in ("ll-auto", "ll-never"):
                cache = n.split("-")[1]
                mnt = mounts.mount(n, prlimit + [ll_bin, "-o", f"source={storage},cache={cache}"])
                daemons[n] = Daemon(n, mnt, mnt, pid_of_mount(mnt))
            else:
                # The tier holds whole 4 KiB pages: a tree of small files takes up to half
                # as much again as its bytes (a 4 KiB mean: 1.5x), so size it by pages.
                cap = (max(MiB, page_bytes // 2 // MiB * MiB) if n == "pt-dev-half"
                       else a.device_capacity or max(1 << 30, -(-page_bytes * 5 // 4 // MiB) * MiB))
                pid_file = os.path.join(mounts.root, f"{n}.pid")
                log_file = os.path.join(outdir, f"{n}.{tag}.log")
                cmd = prlimit + [pt_bin, "mount", storage, "{mnt}", "--daemon", "--pid-file",
                                 pid_file, "--device-capacity", f"{cap // MiB}MiB",
                                 "--log-file", log_file] + a.pt_args.split()
                mnt = mounts.mount(n, cmd, pid_file=pid_file)
                with open(pid_file) as f:
                    pid = int(f.read().strip())
                root = mnt if n == "pt-host" else os.path.join(mnt, ".pagetier", "device")
                daemons[n] = Daemon(n, root, mnt, pid, pt=True, log_file=log_file)
        except SystemExit as e:  # bench.die exits 1: the mount failed; note it and go on
            if e.code != 1:  # a signal (130): stop the run
                raise
            errors[n] = "mount failed (see bench.log)"
            log(f"{n}: mount failed; it is left out of this pass")
    return daemons, errors


def daemon_log_problems(path):
    """(count, first line) of the WARN/ERROR lines in a pagetier daemon's log."""
    count, first = 0, None
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if "ERROR" in line or "WARN" in line:
                    count += 1
                    first = first or line.strip()[:300]
    except OSError:
        pass
    return count, first


# ---------------------------------------------------------------------------- epochs

def run_readers(reader, root, paths, readers, workdir, timeout):
    """One epoch: `readers` processes, reader i taking every `readers`-th path of `paths`
    (already shuffled) from the i-th, all started together. Returns the combined result."""
    procs = []
    try:
        for i in range(readers):
            share = paths[i::readers]
            lst = os.path.join(workdir, f"list.{i}")
            with open(lst, "w") as f:
                f.write("\n".join(share) + "\n")
            procs.append(subprocess.Popen([reader, root, lst], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for p in procs:
            if p.stdout.readline() != b"ready\n":
                raise RuntimeError(f"reader did not start: {p.stderr.read().decode()[-300:]}")
        t0 = time.monotonic()
        for p in procs:
            p.stdin.write(b"g")
            p.stdin.close()
        results = []
        for p in procs:
            left = max(1.0, timeout - (time.monotonic() - t0))
            p.wait(timeout=left)
            results.append(json.loads(p.stdout.read()))
        wall = time.monotonic() - t0
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    except (RuntimeError, ValueError, OSError) as e:
        return {"error": str(e)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    out = {"files": sum(r["files"] for r in results), "bytes": sum(r["bytes"] for r in results),
           "wall_s": wall, "p50_us": max(r["p50_ns"] for r in results) / 1e3,
           "p99_us": max(r["p99_ns"] for r in results) / 1e3,
           "max_us": max(r["max_ns"] for r in results) / 1e3, "errors": {}}
    for r in results:
        for k, v in r["errors"].items():
            out["errors"][k] = out["errors"].get(k, 0) + v
        if r["first_error"] and "first_error" not in out:
            out["first_error"] = r["first_error"]
    out["files_per_s"] = out["files"] / wall
    out["mbps"] = out["bytes"] / wall / 1e6
    return out


def device_delta(before, after):
    if not before.get("device") or not after.get("device"):
        return None
    d = {k: after["device"][k] - before["device"][k]
         for k in ("hits", "misses", "bytes_served", "bytes_faulted", "evictions")}
    # Files the kernel serves (exported) are faulted in by the daemon at open and read by the
    # kernel: faulted bytes then exceed the bytes the daemon served, and a ratio of the two
    # says nothing (it went negative).
    d["byte_hit_ratio"] = (1 - d["bytes_faulted"] / d["bytes_served"]
                           if d["bytes_served"] and d["bytes_faulted"] <= d["bytes_served"]
                           else None)
    return d


def drop_caches(what):
    """echo `what` > drop_caches (1 page cache, 2 dentries and inodes, 3 both) after a sync;
    False (with a warning) where that is not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write(f"{what}\n")
    except OSError as e:
        log(f"warning: cannot drop caches ({e})")
        return False
    return True


def drop_and_settle(daemons, seconds=60, still=3.0):
    """echo 2 > drop_caches, then waits until every daemon's RSS and inode count have not moved
    for `still` seconds (at most `seconds`): a daemon may take a million FORGETs with pauses
    of a second or more, so two equal samples half a second apart are not the end of them."""
    if not drop_caches(2):
        log("warning: the 'after drop_caches' figures are not that")
        return False
    prev, since, end = None, time.monotonic(), time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.5)
        cur = {n: ((d.snapshot().get("memory") or {}).get("VmRSS"), d.snapshot().get("inodes"))
               for n, d in daemons.items() if d.pid}
        if cur != prev:
            prev, since = cur, time.monotonic()
        elif time.monotonic() - since >= still:
            break
    return True


# Files read once before the idle figure is taken.
WARM_FILES = 256


def warm_idle(daemons, rel, reader, pt_bin, tmp, timeout):
    """The daemons' idle snapshots after each has served a few files and forgotten them (the
    tier evicts them, the kernel drops its dentries and inodes): the figure that memory after
    the epochs comes back to. A daemon fresh from its mount has not yet faulted in the code
    and the threads' first heap pages that every request path touches once (0.1-0.3 MiB of
    pagetier's 4.2-4.4 MiB, 0.3 MiB of bindfs's 1.2 MiB), which no amount of giving back
    returns; they are not per-file memory."""
    sample = rel[:WARM_FILES]
    for n, d in daemons.items():
        res = run_readers(reader, d.root, sample, 1, tmp, timeout)
        if "error" in res or res["errors"]:
            log(f"warning: {n}: warm-up read: {res.get('error') or res['errors']}")
        if d.pt:
            r = subprocess.run([pt_bin, "evict"] + [os.path.join(d.root, p) for p in sample],
                               capture_output=True, text=True)
            if r.returncode != 0:
                log(f"warning: {n}: warm-up evict: {r.stderr.strip()[-300:]}")
    drop_and_settle(daemons)
    return {n: d.snapshot() for n, d in daemons.items()}


def one_pass(readers, a, names, files, dsname, storage, mounts, tools, page_bytes, outdir,
             records, memory_rows, tmp):
    """All epochs at `readers` readers on fresh mounts: fills `records` and `memory_rows`."""
    pt_bin, ll_bin, reader = tools
    tag = f"r{readers}"
    daemons, mount_errors = mount_all(names, storage, mounts, a, pt_bin, ll_bin, page_bytes,
                                      outdir, tag)
    for n, err in mount_errors.items():
        records.append({"system": n, "readers": readers, "epoch": 0, "error": err})
    idle_fresh = {n: d.snapshot() for n, d in daemons.items()}
    rel = [os.path.join(dsname, p) for p, _ in files]
    idle = warm_idle(daemons, rel, reader, pt_bin, tmp, a.timeout)
    for epoch in range(1, a.epochs + 1):
        order = list(rel)
        random.Random(f"{a.seed}-epoch-{epoch}").shuffle(order)
        for n, d in daemons.items():
            warm = run_readers(reader, storage, rel, 1, tmp, a.timeout)
            if "error" in warm or warm["errors"]:
                log(f"warning: warming STORAGE: {warm.get('error') or warm['errors']}")
            before = d.snapshot()
            res = run_readers(reader, d.root, order, readers, tmp, a.timeout)
            after = d.snapshot()
            rec = {"system": n, "readers": readers, "epoch": epoch, **res,
                   "loadavg_1m": os.getloadavg()[0]}
            if d.pt:
                rec["device_delta"] = device_delta(before, after)
                rec["inodes_after"] = after.get("inodes")
                rec["tier_used_bytes"] = (after.get("device") or {}).get("used_bytes")
            if d.pid:
                rec["rss_after"] = (after.get("memory") or {}).get("VmRSS")
            records.append(rec)
            log(f"R={readers} epoch {epoch} {n:12s} " + (
                f"ERROR {res['error']}" if "error" in res else
                f"{res['files_per_s']:9.0f} files/s {res['mbps']:8.1f} MB/s  p50 {res['p50_us']:7.1f}us "
                f"p99 {res['p99_us']:8.1f}us" + (f"  errors {res['errors']}" if res["errors"] else "")
                + (f"  hits {rec['device_delta']['byte_hit_ratio']:.0%}"
                   if rec.get("device_delta") and rec["device_delta"]["byte_hit_ratio"] is not None
                   else "")))
    after_epochs = {n: d.snapshot() for n, d in daemons.items()}
    dropped = drop_and_settle(daemons)
    after_drop = {n: d.snapshot() for n, d in daemons.items()}
    # A tier that holds files keeps their state after the kernel forgets them, by design:
    # evicting the tree and dropping again shows what the device view holds of its own.
    after_evict = {}
    holding = {n: d for n, d in daemons.items()
               if d.pt and ((after_drop[n].get("device") or {}).get("used_bytes") or 0) > 0}
    if dropped and holding:
        for n, d in holding.items():
            r = subprocess.run([pt_bin, "evict", "-r", os.path.join(d.root, dsname)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                log(f"warning: {n}: evict -r: {r.stderr.strip()[-300:]}")
        if drop_and_settle(holding):
            after_evict = {n: d.snapshot() for n, d in holding.items()}
    for n, d in daemons.items():
        if not d.pid:
            continue
        row = {"system": n, "readers": readers, "pid": d.pid, "idle": idle[n],
               "idle_fresh": idle_fresh[n],
               "after_epochs": after_epochs[n], "after_drop_caches": after_drop[n] if dropped else None,
               "after_evict": after_evict.get(n)}
        if d.log_file:
            row["log_problems"], row["log_first_problem"] = daemon_log_problems(d.log_file)
        memory_rows.append(row)
    mounts.unmount_all()


# ---------------------------------------------------------------------------- report

def fmt_bytes(n):
    if n is None:
        return "?"
    return f"{n / MiB:.1f} MiB"


def report_md(meta, records, memory_rows, a, names):
    L = [f"# pagetier small-file epochs {meta['date']}", ""]
    loads = [r["loadavg_1m"] for r in records if "loadavg_1m" in r]
    L.append(f"{meta['nproc']} CPUs ({meta['cpu']}), {meta['memory']}, kernel {meta['kernel']}; "
             f"libfuse {meta['libfuse']}, {meta['bindfs']}, {meta['pagetier']} "
             f"(`{os.path.relpath(meta['pagetier_bin'], REPO)}`, tree {meta['pagetier_git']}); "
             f"daemons' RLIMIT_NOFILE {a.nofile or meta['nofile']}; load before the run "
             f"{' '.join(meta['loadavg'])}" + (f", 1-min load during the epochs {min(loads):.1f}–"
                                               f"{max(loads):.1f}" if loads else "") + ".")
    L.append(f"CPU idle: {meta.get('cpu_idle', 'unknown')}.")
    L.append(f"Dataset: {a.files} files (`make-dataset --shape imagenet --mean-size {a.mean_size}`), "
             f"{meta['data_bytes'] / MiB:.0f} MiB, in `{meta['storage_fs']}`. Each epoch reads every "
             f"file once in a new random order (seeded; the same order for every system), split "
             f"between R reader processes; open / read whole / close per file; " + (
                 "systems one at a time (`--isolate`: each mounted alone for all its epochs, "
                 "each on a fresh mount); " if getattr(a, "isolate", False) else
                 "systems in alternation per epoch; ") +
             "page cache dropped before the run, dentries and inodes before every pass; "
             "STORAGE's page cache warmed before every run; every FUSE system mounted fresh for "
             "each R (device view epoch 1 = empty tier).")
    L.append("")
    peers = [p for p in FUSE_PEERS if p in names]
    for readers in a.readers:
        L.append(f"## {readers} reader{'s' if readers > 1 else ''}: files/s (MB/s)")
        L.append("")
        head = ["system"] + [f"epoch {e}" for e in range(1, a.epochs + 1)] + \
            [f"×storage-warm (ep {a.epochs})", f"×best FUSE peer (ep {a.epochs})", "failures"]
        L.append("| " + " | ".join(head) + " |")
        L.append("|" + "---|" * len(head))
        rate = {}
        for r in records:
            if r["readers"] == readers and r.get("epoch") and "files_per_s" in r:
                rate[(r["system"], r["epoch"])] = r["files_per_s"]
        best_peer = max((rate.get((p, a.epochs), 0) for p in peers), default=0)
        for n in names:
            rs = [r for r in records if r["system"] == n and r["readers"] == readers]
            cells, fails = [], []
            for e in range(1, a.epochs + 1):
                r = next((x for x in rs if x.get("epoch") == e), None)
                if r is None or "error" in r:
                    cells.append("error" if r else "–")
                    if r:
                        fails.append(f"ep {e}: {r['error']}")
                    continue
                cell = f"{r['files_per_s']:,.0f} ({r['mbps']:.0f})"
                if r["errors"]:
                    cell += " ⚠"
                    failed = sum(r["errors"].values())
                    fails.append(f"ep {e}: {failed / (failed + r['files']):.1%} failed ("
                                 + ", ".join(f"{k} ×{v}" for k, v in r["errors"].items()) + ")")
                dd = r.get("device_delta")
                if dd and dd.get("byte_hit_ratio") is not None:
                    cell += f" hits {dd['byte_hit_ratio']:.0%}"
                cells.append(cell)
            for r in rs:
                if r.get("epoch") == 0:
                    fails.append(r["error"])
            last = rate.get((n, a.epochs))
            sw = rate.get(("storage-warm", a.epochs))
            ratio_sw = f"{last / sw:.2f}" if last and sw else ""
            ratio_peer = f"{last / best_peer:.2f}" if last and best_peer and n not in peers else ""
            L.append("| " + " | ".join([n] + cells + [ratio_sw, ratio_peer,
                                                       "; ".join(fails)[:300]]) + " |")
        L.append("")
    L.append("⚠ = some files failed (see failures); files/s counts only files read whole. "
             "`hits` = device-tier hits by bytes in that epoch (1 − bytes faulted / bytes served), "
             "left out where the daemon faulted more than it served (files faulted in at open "
             "and read by the kernel).")
    L.append("")
    L.append("## Daemon memory (VmRSS)")
    L.append("")
    L.append("| system | R | idle | after epochs | after drop_caches | after evict -r, drop | "
             "tier used | own after epochs "
             "| own after drop | of it request buffers | inodes: peak / after epochs / after drop "
             "| own per inode | tier metadata | log warnings |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in memory_rows:
        rss = lambda s: ((s or {}).get("memory") or {}).get("VmRSS")
        anon = lambda s: ((s or {}).get("memory") or {}).get("RssAnon")
        dev = lambda s: (s or {}).get("device") or {}
        # The arena's part of the tier: used bytes less the exported copies (tmpfs).
        arena = lambda s: (dev(s).get("used_bytes") or 0) - (dev(s).get("shared_bytes") or 0)
        idle, aft, drop = rss(m["idle"]), rss(m["after_epochs"]), rss(m["after_drop_caches"])
        used_a = dev(m["after_epochs"]).get("used_bytes") or 0
        anon_a, anon_d = anon(m["after_epochs"]), anon(m["after_drop_caches"])
        own_a = anon_a - arena(m["after_epochs"]) if anon_a is not None else None
        own_d = anon_d - arena(m["after_drop_caches"]) if anon_d is not None else None
        idle_anon = anon(m["idle"])
        bufs = ((m["after_drop_caches"] or {}).get("memory") or {}).get("RequestBuffers")
        bufs = fmt_bytes(bufs) if bufs is not None and m["system"].startswith("pt-") else ""
        ino_a = m["after_epochs"].get("inodes")
        ino_d = (m["after_drop_caches"] or {}).get("inodes")
        # the kernel may forget inodes during the epochs: divide by the most seen after any
        peak = max([r.get("inodes_after") or 0 for r in records
                    if r["system"] == m["system"] and r["readers"] == m["readers"]]
                   + [ino_a or 0])
        per = (f"{(own_a - idle_anon) / peak:,.0f} B"
               if own_a is not None and idle_anon and peak else "")
        meta_bytes = dev(m["after_epochs"]).get("metadata_bytes")
        meta = f"{meta_bytes / used_a:.2%}" if meta_bytes and used_a else ""
        inodes = "" if ino_a is None else f"{peak} / {ino_a} / {'' if ino_d is None else ino_d}"
        logp = (f"{m['log_problems']}: {m['log_first_problem'][:120]}"
                if m.get("log_problems") else "")
        fresh = rss(m.get("idle_fresh"))
        vs_idle = lambda v: f"{fmt_bytes(v)} ({v / idle - 1:+.0%})" if v and idle else fmt_bytes(v)
        evicted = rss(m.get("after_evict"))
        L.append(f"| {m['system']} | {m['readers']} | {fmt_bytes(idle)}"
                 f"{f' (fresh {fresh / MiB:.1f})' if fresh else ''} | {fmt_bytes(aft)} | "
                 f"{vs_idle(drop) if not dev(m['after_drop_caches']).get('used_bytes') else fmt_bytes(drop)} "
                 f"| {vs_idle(evicted) if evicted else ''} "
                 f"| {fmt_bytes(used_a) if m['after_epochs'].get('device') else ''} "
                 f"| {fmt_bytes(own_a)} | {fmt_bytes(own_d)} | {bufs} | {inodes} | {per} | {meta} | {logp} |")
    L.append("")
    L.append(f"'idle' = after the mount served {WARM_FILES} files once and forgot them (the tier "
             "evicted them, drop_caches), with the figure fresh from the mount in brackets: the "
             "first requests fault in code and the threads' first heap pages once; "
             "'(+n%)' = against idle, where the daemon holds no file (a tier that holds files keeps their state). "
             "'own' = RssAnon − the arena's part of the tier's used bytes (the arena is anonymous "
             "memory of the daemon, counted in its RSS when resident; exported copies live in a "
             "private tmpfs and are not); 'after evict -r, drop' = VmRSS after `pagetier evict -r` of "
             "the tree and another drop_caches, for a mount whose tier held pages after the first "
             "(a resident file's state stays while the tier holds it, by design); 'own per inode' = (own after epochs − idle RssAnon) / "
             "the most inodes the mount tracked after any epoch (pagetier's `inodes`); 'of it "
             "request buffers' = the resident part of fuser's two 16 MiB request buffers (the "
             "kernel writes 16 bytes per pending forget into one and its touched pages stay "
             "resident; pagetier queues forgets so that batches stay small); 'tier metadata' = the stats' metadata_bytes / used_bytes (target ≤ 0.1%).")
    return "\n".join(L) + "\n"


def machine_info(a, storage, pt_bin, data_bytes):
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": bench.out(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]).strip(),
        "memory": bench.out(["sh", "-c", "grep MemTotal /proc/meminfo"]).split(":", 1)[-1].strip(),
        "kernel": os.uname().release,
        "cpu_idle": bench.cpu_idle(),
        "storage_fs": bench.out(["df", "-hT", storage]).splitlines()[-1],
        "bindfs": bench.out(["bindfs", "--version"]),
        "libfuse": bench.out(["pkg-config", "--modversion", "fuse3"]),
        "pagetier": bench.out([pt_bin, "--version"]) if os.path.exists(pt_bin) else None,
        "pagetier_git": bench.out(["git", "-C", REPO, "describe", "--always", "--dirty"]),
        "pagetier_bin": pt_bin,
        "nofile": bench.out(["sh", "-c", "ulimit -Sn; ulimit -Hn"]).replace("\n", "/"),
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "data_bytes": data_bytes,
        "args": vars(a),
    }
    return info


# ---------------------------------------------------------------------------- main

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="systems: " + ", ".join(SYSTEMS))
    ap.add_argument("--quick", action="store_true", help="5,000 files, 2 epochs")
    ap.add_argument("--files", type=int, help="files in the dataset (default 50000, quick 5000)")
    ap.add_argument("--mean-size", type=parse_size, default=16 * 1024,
                    help="mean file size (default 16K; ImageNet's is 110K)")
    ap.add_argument("--classes", type=int, help="class directories (make-dataset's default)")
    ap.add_argument("--seed", type=int, default=1, help="dataset and epoch orders (default 1)")
    ap.add_argument("--readers", default="1,4", help="reader process counts (default 1,4)")
    ap.add_argument("--epochs", type=int, help="epochs per reader count (default 3, quick 2)")
    ap.add_argument("--systems", help="comma-separated (default all; 'peers', 'pagetier')")
    ap.add_argument("--device-capacity", type=parse_size,
                    help="pt-dev's tier (default 1.25 x the data in whole 4 KiB pages, at least 1 "
                    "GiB; pt-dev-half: half)")
    ap.add_argument("--isolate", action="store_true",
                    help="run the systems one at a time, each mounted alone for all its epochs "
                    "(dentries and inodes dropped before each), instead of in alternation with "
                    "all mounted: at a million files several mounts' inodes and page caches do "
                    "not fit in RAM together, and the kernel reclaims one system's caches for "
                    "another's")
    ap.add_argument("--pt-args", default="", help="more `pagetier mount` options, e.g. "
                    "'--huge-pages off --threads 4'")
    ap.add_argument("--nofile", type=int, help="RLIMIT_NOFILE (soft and hard) for every daemon "
                    "(default: inherited)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per epoch run (default 900)")
    ap.add_argument("--pagetier-bin", help="pagetier binary (default target/release/pagetier)")
    ap.add_argument("--workdir", default=os.path.join(REPO, "bench-results", "tmp", "files"),
                    help="STORAGE and mount points (default bench-results/tmp/files, kept)")
    ap.add_argument("--out", help="results directory (default bench-results/<stamp>-files)")
    ap.add_argument("--no-build", action="store_true", help="use the existing pagetier binary")
    ap.add_argument("--no-setup", action="store_true", help="skip scripts/setup.sh")
    ap.add_argument("--report-from", metavar="RESULTS_JSON",
                    help="only rewrite results.md beside RESULTS_JSON from it (no run)")
    a = ap.parse_args()
    if a.report_from:
        return a, []
    a.files = a.files or (5000 if a.quick else 50000)
    a.epochs = a.epochs or (2 if a.quick else 3)
    try:
        a.readers = [int(r) for r in a.readers.split(",")]
    except ValueError:
        ap.error("--readers takes counts like 1,4")
    if a.files <= 0 or a.epochs <= 0 or any(r <= 0 for r in a.readers):
        ap.error("--files, --epochs and --readers must be positive")
    names = []
    for s in (a.systems or "all").split(","):
        names += (list(SYSTEMS) if s == "all" else PEERS if s == "peers"
                  else PAGETIER if s == "pagetier" else [s])
    for s in names:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r}; systems: {', '.join(SYSTEMS)}")
    return a, list(dict.fromkeys(names))


def rewrite_report(path):
    """results.md again from results.json (e.g. after the report's format changed)."""
    with open(path) as f:
        d = json.load(f)
    a = argparse.Namespace(**d["machine"]["args"])
    names = list(dict.fromkeys(r["system"] for r in d["epochs"]))
    md = report_md(d["machine"], d["epochs"], d["memory"], a, names)
    with open(os.path.join(os.path.dirname(path), "results.md"), "w") as f:
        f.write(md)
    print(md)


def main():
    a, names = parse_args()
    if a.report_from:
        rewrite_report(a.report_from)
        return
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = a.out or os.path.join(REPO, "bench-results", f"{stamp}-files")
    os.makedirs(outdir, exist_ok=True)
    bench.LOGFILE = open(os.path.join(outdir, "bench.log"), "w")
    log(f"bench-files: results in {outdir}; {a.files} files, mean {a.mean_size} B; readers "
        f"{a.readers}; {a.epochs} epochs; systems {','.join(names)}; load {os.getloadavg()}")
    if not a.no_setup:
        run([os.path.join(REPO, "scripts", "setup.sh")], capture=False)
    pt_bin = a.pagetier_bin or os.path.join(REPO, "target", "release", "pagetier")
    if any(n in PAGETIER for n in names):
        if not a.no_build and not a.pagetier_bin:
            log("cargo build --release")
            run(["cargo", "build", "--release", "--locked"], capture=False)
        if not os.access(pt_bin, os.X_OK):
            bench.die(f"no pagetier binary at {pt_bin}")
    ll_bin = build_passthrough_ll() if any(n.startswith("ll-") for n in names) else None
    reader = build_reader()

    storage = os.path.join(a.workdir, "storage")
    os.makedirs(storage, exist_ok=True)
    dsname, files = make_dataset(a, storage)
    data_bytes = sum(s for _, s in files)
    page_bytes = sum(-(-s // 4096) * 4096 for _, s in files)
    meta = machine_info(a, storage, pt_bin, data_bytes)
    with open(os.path.join(outdir, "machine.json"), "w") as f:
        json.dump(meta, f, indent=2)

    mounts = Mounts(os.path.join(a.workdir, "mnt"))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: (log("bench-files: interrupted: unmounting"), sys.exit(130)))
    records, memory_rows = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
            # Other data's page cache out of the way once (reclaiming it would also reclaim
            # the systems' inodes), then each pass starts without the previous one's dentries
            # and inodes; STORAGE's page cache is warmed again before every run anyway.
            drop_caches(3)
            for readers in a.readers:
                for group in ([[n] for n in names] if a.isolate else [names]):
                    drop_caches(2)
                    one_pass(readers, a, group, files, dsname, storage, mounts,
                             (pt_bin, ll_bin, reader), page_bytes, outdir, records, memory_rows,
                             tmp)
    finally:
        mounts.unmount_all()
        with open(os.path.join(outdir, "results.json"), "w") as f:
            json.dump({"machine": meta, "epochs": records, "memory": memory_rows}, f, indent=2)
    md = report_md(meta, records, memory_rows, a, names)
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(md)
    print(md)
    log(f"bench-files: done: {outdir}")


if __name__ == "__main__":
    main()
