#!/usr/bin/env bash
# The whole check, as CI runs it (.ci/run): setup, format, lints, every test (mount tests
# included: they need root or a usable /dev/fuse and are never skipped), then fio's
# write-and-verify through a real pagetier mount, the stale-read check of kernel-served
# device-view opens (scripts/stale-check), every byte through both views with the tier under
# pressure (scripts/verify-files), then the cross-node checks on a loopback
# GlusterFS volume (scripts/cluster). Runs every step even after a failure,
# prints a table of steps and a final "steps: N passed, N failed" line; exits non-zero
# if any step failed.
#
#   scripts/test.sh [--long]
#     --long   also the long soak tests: exports PAGETIER_LONG=1 (tests read it) and runs
#              the fio verification with bigger files and the stale check longer
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

long=0
for arg in "$@"; do
  case $arg in
    --long) long=1 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "usage: scripts/test.sh [--long]" >&2; exit 2 ;;
  esac
done
if ((long)); then
  export PAGETIER_LONG=1
fi
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

passed=() failed=() summary=()
# step NAME CMD...: runs CMD, records the result and its time; never exits.
step() {
  local name=$1 start rc
  shift
  printf '\n== %s\n' "$name"
  start=$SECONDS
  "$@"
  rc=$?
  if ((rc == 0)); then
    passed+=("$name")
    summary+=("$(printf '  ok    %-22s %4ss' "$name" $((SECONDS - start)))")
  else
    failed+=("$name")
    summary+=("$(printf '  FAIL  %-22s %4ss  (exit %s)' "$name" $((SECONDS - start)) "$rc")")
  fi
  return 0
}

# The bash scripts that shellcheck lints.
shell_scripts() {
  local f
  for f in scripts/* .ci/run; do
    [[ -f $f ]] || continue
    if [[ $f == *.sh ]] || head -n1 "$f" | grep -qE '^#!.*\b(ba)?sh\b'; then
      echo "$f"
    fi
  done
}

lint_scripts() {
  local files
  mapfile -t files < <(shell_scripts)
  shellcheck -x "${files[@]}" || return 1
  # syntax check of the python scripts without writing __pycache__ into the tree
  python3 -c 'import ast, sys
for f in sys.argv[1:]:
    ast.parse(open(f).read(), f)' scripts/make-dataset scripts/make-fixtures scripts/bench.py scripts/bench-epochs \
    scripts/bench-files.py scripts/cluster-test scripts/bench-cluster || return 1
  scripts/make-fixtures --check
}

fuse_ready() {
  [[ -c /dev/fuse ]] || { echo "/dev/fuse is missing: mount tests cannot run" >&2; return 1; }
  command -v fusermount3 >/dev/null || { echo "fusermount3 is missing" >&2; return 1; }
  if [[ $(id -u) -ne 0 ]] && [[ ! -r /dev/fuse || ! -w /dev/fuse ]]; then
    echo "not root and /dev/fuse is not usable by $(id -un): mount tests cannot run" >&2
    return 1
  fi
}

run_tests() {
  fuse_ready || return 1
  if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests; cargo test --doc does
    # the tool config kills a test hung for 5 minutes (a hung mount would stall CI)
    local -a cfg=()
    ((long)) || cfg=(--tool-config-file "pagetier-scripts:$repo/scripts/nextest-tool.toml")
    cargo nextest run --locked --no-fail-fast "${cfg[@]}" || return 1
    cargo test --locked --doc
  else
    cargo test --locked --no-fail-fast
  fi
}

# The mount suites again with every daemon serving all opens itself (`--passthrough off`): the
# default run above has read-only host-view opens served by the kernel where it allows it.
passthrough_off_tests() {
  fuse_ready || return 1
  local -a cfg=()
  ((long)) || cfg=(--tool-config-file "pagetier-scripts:$repo/scripts/nextest-tool.toml")
  PAGETIER_TEST_PASSTHROUGH=off cargo nextest run --locked --no-fail-fast "${cfg[@]}" \
    --test passthrough --test coherence --test device --test reliability --test security --test operate
}

# The tier's concurrency tests: the shuttle feature swaps the tier's locks, atomics and threads
# for shuttle's (src/tier/sync.rs), so that build runs these tests only, each over many
# randomized and PCT schedules.
shuttle_tests() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --features shuttle --lib -E 'test(shuttle)'
  else
    cargo test --locked --features shuttle --lib shuttle_
  fi
}

# Writes files with fio through the host view of a fresh mount, verifies them there, then
# re-reads and verifies them through the device view and in STORAGE itself.
fio_verify() {
  local bin=$repo/target/debug/pagetier work mnt rc=0
  fuse_ready || return 1
  [[ -x $bin ]] || cargo build --locked || return 1
  work=$(mktemp -d "${TMPDIR:-/tmp}/pagetier-fio.XXXXXX") || return 1
  mnt=$work/mnt
  mkdir "$work/storage" "$mnt"
  if ((long)); then
    export SIZE=256M JOBS=2
  else
    export SIZE=16M JOBS=2
  fi
  {
    pt_t 60 "$bin" mount "$work/storage" "$mnt" --daemon --pid-file "$work/pid" &&
      pt_wait_mounted "$mnt" 10 &&
      echo "-- write-verify through the host view" &&
      pt_t 300 scripts/fio-job write-verify "$mnt" >"$work/fio.txt" 2>&1 &&
      pt_fio_summary <"$work/fio.txt" &&
      echo "-- read-verify through the device view" &&
      pt_t 300 scripts/fio-job read-verify "$mnt/.pagetier/device" >"$work/fio.txt" 2>&1 &&
      pt_fio_summary <"$work/fio.txt" &&
      echo "-- read-verify in STORAGE" &&
      pt_t 300 scripts/fio-job read-verify "$work/storage" >"$work/fio.txt" 2>&1 &&
      pt_fio_summary <"$work/fio.txt"
  } || {
    rc=1
    [[ -f $work/fio.txt ]] && tail -n 40 "$work/fio.txt"
  }
  pt_unmount "$mnt" || rc=1
  if [[ -s $work/pid ]]; then
    pt_wait_pid_gone "$(cat "$work/pid")" 20 || { echo "daemon did not exit after unmount" >&2; rc=1; }
  fi
  unset SIZE JOBS
  # never rm -rf through a mount that is still there
  if pt_is_fuse_mounted "$mnt"; then
    echo "leaving $work: $mnt is still mounted" >&2
  else
    rm -rf "$work"
  fi
  return "$rc"
}

# No stale read through kernel-served device-view opens (scripts/stale-check): host-view fio
# writes, truncates and renames over against device-view fio verify readers, held descriptors
# and mappings, then a concurrent torture; and once more with every open daemon-served.
# One round and 6 s of torture, then one round with `--passthrough off` (about 30 s); with
# --long 10 rounds and 60 s, then 3 rounds and 20 s.
stale_check() {
  local bin=$repo/target/debug/pagetier
  fuse_ready || return 1
  [[ -x $bin ]] || cargo build --locked || return 1
  local -a on=(--rounds 1 --seconds 6) off=(--rounds 1)
  ((long)) && on=(--rounds 10 --seconds 60) off=(--rounds 3 --seconds 20)
  local rc=0
  pt_t 600 scripts/stale-check --bin "$bin" "${on[@]}" || rc=1
  pt_t 600 scripts/stale-check --bin "$bin" "${off[@]}" --pt-args '--passthrough off' || rc=1
  return "$rc"
}

# Every byte right through both views with the tier under pressure (scripts/verify-files over
# 20,000 small files and a 48 MiB tier: pages evicted and exports dropped while files
# migrate; it caught freed arena memory released after another fill had taken it, zero pages
# through the device view). About 20 s; with --long 100,000 files and a 256 MiB tier.
pressure_verify() {
  local bin=$repo/target/debug/pagetier work rc=0
  fuse_ready || return 1
  [[ -x $bin ]] || cargo build --locked || return 1
  local -a what=(--files 20000 --device-capacity 48MiB --rewrites 200)
  ((long)) && what=(--files 100000 --device-capacity 256MiB --rewrites 1000)
  work=$(mktemp -d "${TMPDIR:-/tmp}/pagetier-pressure.XXXXXX") || return 1
  pt_t 900 scripts/verify-files --bin "$bin" --workdir "$work" --mean-size 4096 --readers 4 \
    "${what[@]}" 2>&1 | grep -v 'content differs' | tail -n 3
  rc=${PIPESTATUS[0]}
  rm -rf "$work"
  return "$rc"
}

# The cross-node checks on a loopback GlusterFS volume with pagetier on two nodes
# (scripts/cluster, scripts/cluster-test): 60 changes, or 60 s of them with --long.
cluster_tests() {
  local bin=$repo/target/debug/pagetier
  [[ -x $bin ]] || cargo build --locked || return 1
  local what=(--rounds 60)
  ((long)) && what=(--seconds 60)
  PAGETIER_BIN=$bin pt_t 600 scripts/cluster --bin "$bin" -- scripts/cluster-test "${what[@]}"
}

step setup scripts/setup.sh
step fmt cargo fmt --all --check
step clippy cargo clippy --locked --all-targets -- -D warnings
step shellcheck lint_scripts
step tests run_tests
step shuttle shuttle_tests
step passthrough-off passthrough_off_tests
step fio-verify fio_verify
step stale-check stale_check
step pressure-verify pressure_verify
step cluster cluster_tests

printf '\n== summary%s\n' "$( ((long)) && echo ' (--long)')"
printf '%s\n' "${summary[@]}"
echo "steps: ${#passed[@]} passed, ${#failed[@]} failed"
((${#failed[@]} == 0))
