"""Helpers shared by the tiering benchmarks (scripts/bench-epochs, scripts/bench-cold,
scripts/bench-tiering): sizes, the release binary, mounts and their daemons."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "target" / "release" / "pagetier"


def build(no_build=False):
    """Builds the release binary unless told not to."""
    if not no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)


def size(text):
    """Parses 512M, 4G, 1.5G, 4096 (binary units) into bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def stats(mnt):
    """The mount's .pagetier/stats document."""
    return json.loads((Path(mnt) / ".pagetier" / "stats").read_text())


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def unmount(mnt, pid_file=None):
    """Unmounts (lazily if it must) and, given the daemon's pid file, waits for it to exit so
    that its arena is gone before the next run."""
    subprocess.run(["fusermount3", "-u", str(mnt)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while mounted(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    if mounted(mnt):
        subprocess.run(["umount", "-l", str(mnt)], stderr=subprocess.DEVNULL)
    if pid_file is None:
        return
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 20
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        print(f"warning: pagetier daemon {pid} still running 20 s after unmount",
              file=sys.stderr, flush=True)
    Path(pid_file).unlink(missing_ok=True)
