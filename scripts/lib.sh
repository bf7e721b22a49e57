# shellcheck shell=bash
# Helpers shared by scripts/demo.sh and scripts/test.sh. Source it; it defines functions only.

# Is $1 a FUSE mount point right now (per /proc/self/mountinfo)?
pt_is_fuse_mounted() {
  local want
  # resolve the parent only: a stat of a hung FUSE mount point would hang here
  want=$(realpath -m -- "$(dirname -- "$1")")/$(basename -- "$1")
  want=${want#/}
  want=/$want
  # field 5 is the mount point (octal-escaped), the fs type follows the " - " separator
  awk -v want="$want" '
    { split($0, halves, " - ") ; split(halves[1], l, " ") ; split(halves[2], r, " ")
      mp = l[5] ; gsub(/\\040/, " ", mp)
      if (mp == want && r[1] ~ /^fuse/) found = 1 }
    END { exit !found }' /proc/self/mountinfo
}

# Polls until $1 is FUSE-mounted or $2 seconds (default 20) pass.
pt_wait_mounted() {
  local mnt=$1 deadline=$((SECONDS + ${2:-20}))
  until pt_is_fuse_mounted "$mnt"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# Unmounts $1 if it is a FUSE mount: fusermount3 -u, then a lazy umount as a last resort.
# Returns non-zero only if the mount is still there afterwards.
pt_unmount() {
  local mnt=$1 i
  pt_is_fuse_mounted "$mnt" || return 0
  for i in 1 2 3 4 5; do
    fusermount3 -u "$mnt" 2>/dev/null && return 0
    pt_is_fuse_mounted "$mnt" || return 0
    sleep "0.$i"
  done
  echo "unmount: $mnt is busy; lazy unmount" >&2
  fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  ! pt_is_fuse_mounted "$mnt"
}

# pt_t SECONDS CMD...: CMD with a deadline (SIGTERM, then SIGKILL 5 s later): anything
# that touches a FUSE mount can hang forever if the daemon does.
pt_t() {
  local secs=$1
  shift
  timeout -k 5 "$secs" "$@"
  local rc=$?
  ((rc == 124 || rc == 137)) && echo "timed out after ${secs}s: $*" >&2
  return "$rc"
}

# Waits up to $2 seconds (default 20) for process $1 to exit (not our child: polls /proc).
pt_wait_pid_gone() {
  local pid=$1 deadline=$((SECONDS + ${2:-20}))
  while [[ -e /proc/$pid ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# Prints fio's summary lines (per-job IOPS/BW, latency percentiles header, group totals).
pt_fio_summary() {
  grep -E '^\s*(read|write): IOPS=|^\s*clat \(|^\s*(READ|WRITE):|err=\s*[1-9]' || true
}
