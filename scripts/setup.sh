#!/usr/bin/env bash
# Install what pagetier's scripts need (Debian 12) and configure FUSE. Safe to re-run:
# packages already installed are skipped, and apt-get update runs at most once, only
# when something is missing. Quiet unless something is missing or fails.
#
#   scripts/setup.sh [--check]     --check: report what is missing, change nothing
set -euo pipefail

# fuse3: fusermount3 and /etc/fuse.conf    fio: the workloads in fixtures/fio
# util-linux-extra: fincore (page-cache residency)    attr: setfattr/getfattr
# bindfs, libfuse3-dev, pkg-config, gcc: the peers scripts/bench compares against
# glusterfs-server, glusterfs-client: scripts/cluster (the cross-node tests)
# python3: bench, make-dataset    python3-venv, python3-pip: target/py, a virtualenv with numpy
#   and pyarrow for the device-view mmap tests (made below)
# tmux: the `pagetier top` test    shellcheck: lints scripts
packages=(fuse3 fio util-linux-extra attr bindfs libfuse3-dev pkg-config gcc shellcheck python3 python3-venv python3-pip tmux glusterfs-server glusterfs-client)

check_only=0
case ${1:-} in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--check]" >&2; exit 2 ;;
esac

log() { echo "setup: $*" >&2; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    log "need root for: $*"
    return 1
  fi
}

installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
  if ((check_only)); then
    log "missing packages: ${missing[*]}"
  else
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    out=$(mktemp)
    if ! { as_root apt-get update -qq && \
           as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$out" 2>&1; then
      cat "$out" >&2
      rm -f "$out"
      log "apt-get failed"
      exit 1
    fi
    rm -f "$out"
  fi
fi

# user_allow_other lets a non-root user pass -o allow_other (root needs nothing).
conf=/etc/fuse.conf
fuse_conf_ok() { grep -qsx '[[:space:]]*user_allow_other[[:space:]]*' "$conf"; }
if ! fuse_conf_ok; then
  if ((check_only)); then
    log "$conf lacks user_allow_other"
  else
    printf '\n# added by pagetier scripts/setup.sh\nuser_allow_other\n' | as_root tee -a "$conf" >/dev/null
    log "enabled user_allow_other in $conf"
  fi
fi

if [[ ! -c /dev/fuse ]]; then
  if ((check_only)); then
    log "/dev/fuse is missing"
  else
    as_root modprobe fuse 2>/dev/null || true
    [[ -c /dev/fuse ]] || { log "/dev/fuse is missing and modprobe fuse did not create it"; exit 1; }
  fi
fi

# target/py: numpy and pyarrow from PyPI for the tests that memory-map files through the
# device view as data loaders do (Debian's numpy is too old for PyPI's pyarrow).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$repo/target/py
venv_ok() { [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import numpy, pyarrow' 2>/dev/null; }
if ! venv_ok; then
  if ((check_only)); then
    log "$venv lacks numpy/pyarrow"
  else
    log "making $venv (numpy, pyarrow)"
    out=$(mktemp)
    if ! { /usr/bin/python3 -m venv "$venv" && "$venv/bin/pip" install -q numpy pyarrow; } >"$out" 2>&1; then
      cat "$out" >&2
      rm -f "$out"
      log "pip install numpy pyarrow failed"
      exit 1
    fi
    rm -f "$out"
  fi
fi

if ((check_only)) && { ((${#missing[@]})) || ! fuse_conf_ok || [[ ! -c /dev/fuse ]] || ! venv_ok; }; then
  exit 1
fi
exit 0
