#!/usr/bin/env python3
"""Same-run A/B of pagetier builds on small-file epochs.

    scripts/ab-files OLD_BIN NEW_BIN [--dataset DIR] [--reps 3] [--views dev,host]
                     [--readers 1,4] [--device-capacity 1280MiB]

For each rep, each binary in turn and each view: a fresh mount of DATASET (made by
`scripts/bench-files`, e.g. bench-results/tmp/files/storage/imagenet-100000-8192-s1), two
untimed epochs (a cold one, then one that migrates every file into shared memory on the
device view), then one timed epoch per reader count, every file once in a new seeded order,
with scripts/epoch-reader. Prints each epoch and the medians per (binary, view, readers).
The binaries alternate, so both see the same machine; compare medians, not single runs.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import importlib  # noqa: E402

bench_files = importlib.import_module("bench-files")  # scripts/bench-files.py: the reader


def epoch(reader, root, paths, readers, seed, tmp):
    """One epoch of `readers` processes over `paths` under `root`: (files/s, errors)."""
    order = paths[:]
    random.Random(seed).shuffle(order)
    procs = []
    for i in range(readers):
        lst = os.path.join(tmp, f"list.{i}")
        with open(lst, "w") as f:
            f.write("\n".join(order[i::readers]) + "\n")
        procs.append(subprocess.Popen([reader, root, lst], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE))
    for p in procs:
        if p.stdout.readline() != b"ready\n":
            sys.exit("epoch-reader did not start")
    t0 = time.monotonic()
    for p in procs:
        p.stdin.write(b"g")
        p.stdin.close()
    results = [json.loads(p.stdout.read()) for p in procs]
    for p in procs:
        p.wait()
    wall = time.monotonic() - t0
    errors = sum(sum(r["errors"].values()) for r in results)
    return sum(r["files"] for r in results) / wall, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--dataset", default=os.path.join(
        bench_files.REPO, "bench-results/tmp/files/storage/imagenet-100000-8192-s1"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--views", default="dev,host")
    ap.add_argument("--readers", default="1,4")
    ap.add_argument("--device-capacity", default="1280MiB")
    a = ap.parse_args()
    if not os.path.isdir(a.dataset):
        sys.exit(f"{a.dataset}: no dataset (make one with scripts/bench-files --files N)")
    reader = bench_files.build_reader()
    paths = sorted(os.path.relpath(os.path.join(d, f), a.dataset)
                   for d, _, fs in os.walk(a.dataset) for f in fs)
    readers = [int(r) for r in a.readers.split(",")]
    out = {}
    with tempfile.TemporaryDirectory(prefix="pagetier-ab-") as tmp:
        mnt, pid_file = os.path.join(tmp, "mnt"), os.path.join(tmp, "pid")
        os.mkdir(mnt)
        for rep in range(a.reps):
            for binary in (a.old, a.new):
                for view in a.views.split(","):
                    subprocess.run([binary, "mount", a.dataset, mnt, "--daemon", "--pid-file",
                                    pid_file, "--device-capacity", a.device_capacity,
                                    "--log-file", os.path.join(tmp, "log")], check=True)
                    root = os.path.join(mnt, ".pagetier/device") if view == "dev" else mnt
                    try:
                        epoch(reader, root, paths, 1, 1, tmp)
                        epoch(reader, root, paths, 1, 2, tmp)
                        for r in readers:
                            fps, errors = epoch(reader, root, paths, r, 10 + 7 * rep + r, tmp)
                            out.setdefault((binary, view, r), []).append(fps)
                            print(f"rep {rep} {binary} {view} R={r} {fps:9.0f} files/s, "
                                  f"{errors} errors", flush=True)
                    finally:
                        subprocess.run(["fusermount3", "-u", mnt])
                        pid = open(pid_file).read().strip()
                        deadline = time.monotonic() + 30
                        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                            time.sleep(0.1)
    for (binary, view, r), v in sorted(out.items()):
        print(f"{binary} {view} R={r}: median {statistics.median(v):,.0f} files/s "
              f"{[round(x) for x in v]}")


if __name__ == "__main__":
    main()
