#!/usr/bin/env bash
# The first thing to run: build pagetier, mount the checked-in fixtures/data, and read it
# with fio through the host view, then twice through the device view (cold, then warm
# tier), checking every file's sha256 through both views and printing the tier's stats.
# Exits non-zero if any step fails; always unmounts.
#
#   scripts/demo.sh
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

say() { printf '\n== %s\n' "$*"; }
die() { echo "demo: error: $*" >&2; exit 1; }

say "setup (packages, /etc/fuse.conf)"
scripts/setup.sh

say "cargo build --release"
cargo build --release --locked
bin=$repo/target/release/pagetier
[[ -x $bin ]] || die "no binary at $bin"

work=$(mktemp -d "${TMPDIR:-/tmp}/pagetier-demo.XXXXXX")
mnt=$work/mnt
mkdir "$mnt"
cleanup() {
  local rc=$?
  pt_unmount "$mnt" || echo "demo: could not unmount $mnt" >&2
  if [[ -s $work/pid ]]; then
    pt_wait_pid_gone "$(cat "$work/pid")" 10 || echo "demo: daemon did not exit" >&2
  fi
  if pt_is_fuse_mounted "$mnt"; then
    echo "demo: leaving $work: $mnt is still mounted" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "mount fixtures/data on $mnt (read-only: the fixtures are checked in)"
pt_t 60 "$bin" mount fixtures/data "$mnt" --daemon --read-only --pid-file "$work/pid" ||
  die "pagetier mount --daemon failed or did not return within 60 s"
pt_wait_mounted "$mnt" 10 || die "pagetier returned but $mnt is not mounted"
dev=$mnt/.pagetier/device
pt_t 10 test -d "$dev" || die "no device view at $dev"

stats_json() {
  if ! pt_t 20 "$bin" stats "$mnt" --json 2>/dev/null; then
    pt_t 20 cat "$mnt/.pagetier/stats"
  fi
}
# Prints "hits misses kernel-served-opens" of the device tier from stats JSON on stdin.
hits_misses() {
  python3 -c 'import json,sys; j=json.load(sys.stdin); d=j["device"]
print(d["hits"], d["misses"], j.get("passthrough", {}).get("device_opens", 0))'
}

say "sha256 of every file through the host view"
(cd "$mnt" && pt_t 60 sha256sum --quiet -c "$repo/fixtures/data.sha256") || die "host view returned wrong bytes"
echo "ok: $(wc -l <fixtures/data.sha256) files match"

say "fio shards-read through the host view ($mnt)"
pt_t 120 scripts/fio-job shards-read "$mnt" >"$work/fio-host.txt" 2>&1 || { cat "$work/fio-host.txt"; die "fio failed on the host view"; }
pt_fio_summary <"$work/fio-host.txt"

before=$(stats_json | hits_misses) || die "stats are not JSON with device.hits/misses"
for pass in 1 2; do
  say "fio shards-read through the device view, pass $pass ($dev)"
  pt_t 120 scripts/fio-job shards-read "$dev" >"$work/fio-dev$pass.txt" 2>&1 || { cat "$work/fio-dev$pass.txt"; die "fio failed on the device view"; }
  pt_fio_summary <"$work/fio-dev$pass.txt"
  after=$(stats_json | hits_misses)
  read -r h0 m0 k0 <<<"$before"
  read -r h1 m1 k1 <<<"$after"
  dh=$((h1 - h0)) dm=$((m1 - m0)) dk=$((k1 - k0))
  echo "device tier, pass $pass: $dh hits, $dm misses (page lookups by the daemon);" \
    "$dk opens served by the kernel from shared device memory"
  if ((pass == 2)); then
    # Resident files are read by the kernel (no lookup reaches the daemon) or hit.
    ((dh > 0 || dk > 0)) || die "the second device-view pass had no tier hits and no kernel-served open"
    ((dm == 0)) || echo "demo: warning: the second pass still missed $dm times" >&2
  fi
  before=$after
done

say "sha256 of every file through the device view"
(cd "$dev" && pt_t 60 sha256sum --quiet -c "$repo/fixtures/data.sha256") || die "device view returned wrong bytes"
echo "ok: $(wc -l <fixtures/data.sha256) files match"

say "pagetier stats $mnt"
pt_t 20 "$bin" stats "$mnt" || { echo "(pagetier stats failed; the raw file:)"; pt_t 20 cat "$mnt/.pagetier/stats"; }

say "unmount"
pt_unmount "$mnt" || die "could not unmount $mnt"
pt_wait_pid_gone "$(cat "$work/pid")" 20 || die "daemon still running after unmount"
echo "demo: all steps passed"
