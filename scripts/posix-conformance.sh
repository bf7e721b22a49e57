#!/usr/bin/env bash
# POSIX conformance of pagetier's host view versus a plain ext4 directory.
#
# Runs the pjdfstest suite (the Rust rewrite, from crates.io) as root on a plain
# directory of the repo's filesystem (ext4 here) and inside a fresh pagetier mount
# (--allow-other), then prints per-run totals and every test whose outcome differs.
# A second, smaller section replays probes modelled on original (C) pjdfstest
# assertions that the Rust port does not carry (supplementary groups, set-id clearing,
# xattrs, ACLs, umask) on both directories and lists the probes that differ.
# Slow-ish (a build, a cargo install on first use, ~65,000 link() calls) and needs root:
# deliberately not part of scripts/test.sh or CI.
#
#   scripts/posix-conformance.sh [--no-build] [--no-probes] [--keep] [-- PATTERN...]
#     --no-build    use target/release/pagetier as it is (default: cargo build --release)
#     --no-probes   run only the pjdfstest suite
#     --keep        keep the work directory (target/posix-conformance) with all logs
#     PATTERN...    only pjdfstest tests whose name contains one of them
#
# Environment: PJDFSTEST_VERSION (default 0.2.2), PJD_USER (the second dummy user the
# suite switches to, created with its own group if missing; default "tests").
# Exit status: 0 when pagetier matches ext4 in both sections, 1 when anything differs,
# 2 on a usage or setup error.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 2

build=1 probes=1 keep=0
patterns=()
while (($#)); do
  case $1 in
    --no-build) build=0 ;;
    --no-probes) probes=0 ;;
    --keep) keep=1 ;;
    --) shift; patterns+=("$@"); break ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "usage: scripts/posix-conformance.sh [--no-build] [--no-probes] [--keep] [-- PATTERN...]" >&2; exit 2 ;;
    *) patterns+=("$1") ;;
  esac
  shift
done

die() { echo "posix-conformance: $*" >&2; exit 2; }

((EUID == 0)) || die "must run as root (the suite switches users and creates device nodes)"
command -v fusermount3 >/dev/null || die "fusermount3 not found"

version=${PJDFSTEST_VERSION:-0.2.2}
pjd_user=${PJD_USER:-tests}
tools=$repo/target/pjdfstest-$version
pjdfstest=$tools/bin/pjdfstest
work=$repo/target/posix-conformance
bin=$repo/target/release/pagetier
export NO_COLOR=1 CARGO_TERM_COLOR=never

# ----- setup ---------------------------------------------------------------------------

if [[ ! -x $pjdfstest ]]; then
  echo "installing pjdfstest $version into $tools"
  cargo install --locked pjdfstest --version "=$version" --root "$tools" >&2 \
    || cargo install pjdfstest --version "=$version" --root "$tools" >&2 \
    || die "cargo install pjdfstest failed"
fi
if ((build)); then
  cargo build --release >&2 || die "cargo build --release failed"
fi
[[ -x $bin ]] || die "$bin missing (run without --no-build)"

# The suite switches to two dummy users, each with its own primary group.
nobody_gid=$(getent passwd nobody | cut -d: -f4) || die "no user 'nobody'"
nobody_group=$(getent group "$nobody_gid" | cut -d: -f1) || die "no group $nobody_gid"
if ! getent passwd "$pjd_user" >/dev/null; then
  echo "creating dummy user '$pjd_user' for the suite"
  getent group "$pjd_user" >/dev/null || groupadd "$pjd_user" || die "groupadd $pjd_user"
  useradd -M -N -g "$pjd_user" -s /usr/sbin/nologin "$pjd_user" || die "useradd $pjd_user"
fi
pjd_group=$(getent group "$(id -g "$pjd_user")" | cut -d: -f1)

mnt=$work/mnt
storage=$work/storage
plain=$work/plain
if [[ -d $mnt ]] && grep -qF " $mnt fuse" /proc/mounts; then
  fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null || true
  ! grep -qF " $mnt fuse" /proc/mounts || die "a stale mount at $mnt could not be removed"
fi
rm -rf "$work"
mkdir -p "$mnt" "$storage" "$plain" || die "cannot create $work"
# The dummy users must reach both test trees.
chmod 755 "$work" "$storage" "$plain" "$mnt"
for d in "$repo/target" "$repo"; do chmod o+x "$d" 2>/dev/null || true; done

fstype=$(stat -f -c %T "$plain")
[[ $fstype == ext2/ext3 ]] || echo "note: $plain is on '$fstype', not ext4: the baseline is that filesystem" >&2
secondary=()
if [[ -d /dev/shm && $(stat -f -c %T /dev/shm) != "$fstype" ]]; then
  secondary=(-s /dev/shm) # a second filesystem for the EXDEV tests
fi

pidfile=$work/pagetier.pid
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local i
  if grep -qF " $mnt fuse" /proc/mounts 2>/dev/null; then
    for i in 1 2 3 4 5; do
      fusermount3 -u "$mnt" 2>/dev/null && break
      sleep "0.$i"
    done
    grep -qF " $mnt fuse" /proc/mounts && { fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null; }
  fi
  if [[ -s $pidfile ]]; then
    for i in $(seq 50); do
      kill -0 "$(cat "$pidfile")" 2>/dev/null || break
      sleep 0.1
    done
  fi
  if ((keep)); then
    echo "work directory kept: $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$work/pjdfstest.toml" <<TOML
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
naptime = 0.01
# The EROFS tests remount the filesystem under test read-only: never on the root fs.
allow_remount = false

[dummy_auth]
entries = [
  ["nobody", "$nobody_group"],
  ["$pjd_user", "$pjd_group"],
]
TOML

"$bin" mount "$storage" "$mnt" --allow-other --daemon --pid-file "$pidfile" >"$work/mount.log" 2>&1 \
  || { cat "$work/mount.log" >&2; die "mount failed"; }
grep -qF " $mnt fuse" /proc/mounts || die "pagetier is not mounted at $mnt"
chmod 755 "$mnt"

# ----- the suite -------------------------------------------------------------------------

# run_suite NAME DIR: raw output in $work/NAME.out, "test status" lines in $work/NAME.res
run_suite() {
  local name=$1 dir=$2
  echo "running pjdfstest $version on $name ($dir)" >&2
  timeout 1800 "$pjdfstest" -c "$work/pjdfstest.toml" -p "$dir" "${secondary[@]}" -- "${patterns[@]}" \
    >"$work/$name.out" 2>&1
  sed 's/\x1b\[[0-9;]*m//g' "$work/$name.out" \
    | awk '/^[A-Za-z0-9_]+::[^ \t]*[ \t]/ { s = $NF; if (s == "ok" || s == "FAILED" || s == "skipped") print $1, s;
             else if ($0 ~ /PASSED UNEXPECTEDLY$/) print $1, "FAILED"; else if ($0 ~ /failed as expected$/) print $1, "xfail" }' \
    | sort >"$work/$name.res"
}

# failure_of NAME TEST: the assertion message(s) printed under a failed test
failure_of() {
  sed 's/\x1b\[[0-9;]*m//g' "$work/$1.out" \
    | awk -v t="$2" '$1 == t { on = 1; next } /^[A-Za-z0-9_]+::[^ \t]*[ \t]/ || /^Summary/ { on = 0 }
                     on { sub(/^\t/, ""); print "      " $0 }' \
    | grep -v '^ *$' | head -n 8
}

count() { awk -v s="$2" '$2 == s' "$work/$1.res" | wc -l; }

run_suite ext4 "$plain"
run_suite pagetier "$mnt"

status=0
echo
echo "pjdfstest $version (tests: $(wc -l <"$work/ext4.res"))"
for n in ext4 pagetier; do
  printf '  %-9s %4d passed, %3d failed, %3d skipped\n' "$n:" "$(count "$n" ok)" "$(count "$n" FAILED)" "$(count "$n" skipped)"
done
echo "ext4: $(count ext4 ok) passed, $(count ext4 FAILED) failed; pagetier: $(count pagetier ok) passed, $(count pagetier FAILED) failed"

join -a1 -a2 -e missing -o 0,1.2,2.2 "$work/ext4.res" "$work/pagetier.res" \
  | awk '$2 != $3' >"$work/suite.diff"
if [[ -s $work/suite.diff ]]; then
  echo "tests that differ (test: ext4 -> pagetier):"
  while read -r t a b; do
    echo "  $t: $a -> $b"
    if [[ $b == FAILED ]]; then
      failure_of pagetier "$t"
    elif [[ $b == skipped ]]; then
      sed 's/\x1b\[[0-9;]*m//g' "$work/pagetier.out" \
        | awk -v t="$t" '$1 == t { on = 1; next } on && /^\t/ { print "      " substr($0, 2); next } { on = 0 }' | head -n 2
    fi
    # A skip is only a difference in coverage; a failure or a missing result is a regression.
    [[ $b == skipped && $a == ok ]] || status=1
  done <"$work/suite.diff"
else
  echo "no test differs"
fi

# ----- probes beyond the Rust port -------------------------------------------------------

if ((probes)) && ! command -v python3 >/dev/null; then
  echo "python3 not found: probes skipped" >&2
  probes=0
fi
if ((probes)); then
  if ! command -v setfacl >/dev/null; then
    echo "note: setfacl not found (apt-get install acl): the ACL probes report no-setfacl" >&2
  fi
  cat >"$work/probes.py" <<'PY'
import errno
import os
import shutil
import stat
import subprocess
import sys
import time

NOBODY, NOGROUP = 65534, 65534
SUPP = 65533  # a gid that is nobody's supplementary group in the probes


def en(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def as_user(uid, gids, fn):
    """Runs fn() in a child with uid, egid=gids[0], groups=gids; returns its str result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups(gids)
            os.setresgid(gids[0], gids[0], gids[0])
            os.setresuid(uid, uid, uid)
            res = fn()
            out = "ok" if res is None else str(res)
        except OSError as e:
            out = en(e)
        except Exception as e:  # noqa: BLE001
            out = "exc:" + type(e).__name__
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode()


def mode(p):
    return oct(stat.S_IMODE(os.lstat(p).st_mode))


def owner(p):
    st = os.lstat(p)
    return f"{st.st_uid}:{st.st_gid}"


def mkfile(p, m=0o644, uid=0, gid=0, data=b"x"):
    with open(p, "wb") as f:
        f.write(data)
    os.chown(p, uid, gid)
    os.chmod(p, m)
    return p


PROBES = []


def probe(fn):
    PROBES.append(fn)
    return fn


@probe
def chown_to_supplementary_group(d):
    f = mkfile(f"{d}/f", 0o644, NOBODY, NOGROUP)
    r = as_user(NOBODY, [NOGROUP, SUPP], lambda: os.chown(f, -1, SUPP))
    return f"{r} {owner(f)}"


@probe
def chown_to_foreign_group_eperm(d):
    f = mkfile(f"{d}/f", 0o644, NOBODY, NOGROUP)
    return as_user(NOBODY, [NOGROUP], lambda: os.chown(f, -1, SUPP))


@probe
def chmod_sgid_file_of_supplementary_group(d):
    f = mkfile(f"{d}/f", 0o755, NOBODY, SUPP)
    r = as_user(NOBODY, [NOGROUP, SUPP], lambda: os.chmod(f, 0o2755))
    return f"{r} {mode(f)}"


@probe
def chmod_sgid_file_of_foreign_group_cleared(d):
    f = mkfile(f"{d}/f", 0o755, NOBODY, SUPP)
    r = as_user(NOBODY, [NOGROUP], lambda: os.chmod(f, 0o2755))
    return f"{r} {mode(f)}"


@probe
def create_in_dir_writable_by_supplementary_group(d):
    os.mkdir(f"{d}/g", 0o770)
    os.chown(f"{d}/g", 0, SUPP)

    def fn():
        os.close(os.open(f"{d}/g/f", os.O_CREAT | os.O_WRONLY, 0o644))
        os.mkdir(f"{d}/g/sub", 0o755)
        os.unlink(f"{d}/g/f")
    r = as_user(NOBODY, [NOGROUP, SUPP], fn)
    return f"{r} sub={owner(d + '/g/sub') if os.path.exists(d + '/g/sub') else '-'}"


@probe
def access_via_supplementary_group(d):
    f = mkfile(f"{d}/f", 0o060, 0, SUPP)
    return as_user(NOBODY, [NOGROUP, SUPP], lambda: os.close(os.open(f, os.O_RDWR)))


@probe
def setgid_dir_inheritance(d):
    os.mkdir(f"{d}/g", 0o777)
    os.chown(f"{d}/g", 0, SUPP)
    os.chmod(f"{d}/g", 0o2777)

    def fn():
        os.close(os.open(f"{d}/g/f", os.O_CREAT | os.O_WRONLY, 0o644))
        os.mkdir(f"{d}/g/sub", 0o755)
    r = as_user(NOBODY, [NOGROUP], fn)
    return f"{r} f={owner(d + '/g/f')},{mode(d + '/g/f')} sub={owner(d + '/g/sub')},{mode(d + '/g/sub')}"


@probe
def create_sgid_file_in_sgid_dir_nonmember(d):
    os.mkdir(f"{d}/g", 0o777)
    os.chown(f"{d}/g", 0, SUPP)
    os.chmod(f"{d}/g", 0o2777)
    r = as_user(NOBODY, [NOGROUP],
                lambda: os.close(os.open(f"{d}/g/f", os.O_CREAT | os.O_WRONLY, 0o2755)))
    return f"{r} {owner(d + '/g/f')},{mode(d + '/g/f')}"


@probe
def open_rdonly_trunc_root(d):
    f = mkfile(f"{d}/f", 0o644, data=b"hello")
    try:
        os.close(os.open(f, os.O_RDONLY | os.O_TRUNC))
        r = "ok"
    except OSError as e:
        r = en(e)
    return f"{r} size={os.stat(f).st_size}"


@probe
def open_rdonly_trunc_owner(d):
    f = mkfile(f"{d}/f", 0o644, NOBODY, NOGROUP, data=b"hello")
    r = as_user(NOBODY, [NOGROUP], lambda: os.close(os.open(f, os.O_RDONLY | os.O_TRUNC)))
    return f"{r} size={os.stat(f).st_size}"


@probe
def open_wronly_trunc_owner(d):
    f = mkfile(f"{d}/f", 0o644, NOBODY, NOGROUP, data=b"hello")
    r = as_user(NOBODY, [NOGROUP], lambda: os.close(os.open(f, os.O_WRONLY | os.O_TRUNC)))
    return f"{r} size={os.stat(f).st_size}"


@probe
def write_by_nonowner_clears_setid(d):
    f = mkfile(f"{d}/f", 0o6777)

    def fn():
        fd = os.open(f, os.O_WRONLY)
        os.write(fd, b"y")
        os.close(fd)
    r = as_user(NOBODY, [NOGROUP], fn)
    return f"{r} {mode(f)}"


@probe
def truncate_by_nonowner_clears_setid(d):
    f = mkfile(f"{d}/f", 0o6777)
    r = as_user(NOBODY, [NOGROUP], lambda: os.truncate(f, 0))
    return f"{r} {mode(f)}"


@probe
def ftruncate_by_nonowner_clears_setid(d):
    f = mkfile(f"{d}/f", 0o6777)

    def fn():
        fd = os.open(f, os.O_WRONLY)
        os.ftruncate(fd, 0)
        os.close(fd)
    r = as_user(NOBODY, [NOGROUP], fn)
    return f"{r} {mode(f)}"


@probe
def write_by_owner_clears_setid(d):
    f = mkfile(f"{d}/f", 0o6777, NOBODY, NOGROUP)

    def fn():
        fd = os.open(f, os.O_WRONLY)
        os.write(fd, b"y")
        os.close(fd)
    r = as_user(NOBODY, [NOGROUP], fn)
    return f"{r} {mode(f)}"


@probe
def chown_by_root_clears_setid(d):
    f = mkfile(f"{d}/f", 0o6755)
    os.chown(f, NOBODY, -1)
    return mode(f)


@probe
def chown_by_owner_clears_setid(d):
    f = mkfile(f"{d}/f", 0o6755, NOBODY, NOGROUP)
    r = as_user(NOBODY, [NOGROUP, SUPP], lambda: os.chown(f, -1, SUPP))
    return f"{r} {mode(f)}"


@probe
def create_mode0_rdwr_by_creator(d):
    os.chmod(d, 0o777)
    r = as_user(NOBODY, [NOGROUP],
                lambda: os.close(os.open(f"{d}/f", os.O_CREAT | os.O_RDWR | os.O_EXCL, 0)))
    return f"{r} {mode(d + '/f')}"


@probe
def utime_now_by_nonowner_writer(d):
    f = mkfile(f"{d}/f", 0o666)
    return as_user(NOBODY, [NOGROUP], lambda: os.utime(f, None))


@probe
def utime_explicit_by_nonowner_eperm(d):
    f = mkfile(f"{d}/f", 0o666)
    return as_user(NOBODY, [NOGROUP], lambda: os.utime(f, (1, 1)))


@probe
def utime_now_via_supplementary_group_writer(d):
    f = mkfile(f"{d}/f", 0o660, 0, SUPP)
    return as_user(NOBODY, [NOGROUP, SUPP], lambda: os.utime(f, None))


@probe
def truncate_via_supplementary_group_writer(d):
    f = mkfile(f"{d}/f", 0o660, 0, SUPP, data=b"hello")
    r = as_user(NOBODY, [NOGROUP, SUPP], lambda: os.truncate(f, 1))
    return f"{r} size={os.stat(f).st_size}"


@probe
def sticky_dir_rename_by_nonowner(d):
    os.chmod(d, 0o1777)
    f = mkfile(f"{d}/f", 0o644)
    return as_user(NOBODY, [NOGROUP], lambda: os.rename(f, f"{d}/g"))


@probe
def sticky_dir_unlink_by_dir_owner(d):
    os.chmod(d, 0o1777)
    os.chown(d, NOBODY, NOGROUP)
    f = mkfile(f"{d}/f", 0o644, 1001, 1001)
    return as_user(NOBODY, [NOGROUP], lambda: os.unlink(f))


@probe
def hardlink_foreign_unreadable_file(d):
    os.chmod(d, 0o777)
    f = mkfile(f"{d}/f", 0o600)
    return as_user(NOBODY, [NOGROUP], lambda: os.link(f, f"{d}/l"))


@probe
def xattr_user_set_by_nonowner_writer(d):
    f = mkfile(f"{d}/f", 0o666)
    return as_user(NOBODY, [NOGROUP], lambda: os.setxattr(f, "user.a", b"1"))


@probe
def xattr_user_set_via_supplementary_group(d):
    f = mkfile(f"{d}/f", 0o660, 0, SUPP)
    return as_user(NOBODY, [NOGROUP, SUPP], lambda: os.setxattr(f, "user.a", b"1"))


@probe
def xattr_trusted_listed_to_nonroot(d):
    f = mkfile(f"{d}/f", 0o644)
    os.setxattr(f, "trusted.pt", b"1")
    os.setxattr(f, "user.pt", b"1")
    return as_user(NOBODY, [NOGROUP], lambda: ",".join(sorted(os.listxattr(f))))


@probe
def xattr_trusted_get_by_nonroot(d):
    f = mkfile(f"{d}/f", 0o644)
    os.setxattr(f, "trusted.pt", b"1")
    return as_user(NOBODY, [NOGROUP], lambda: os.getxattr(f, "trusted.pt"))


@probe
def acl_grants_access(d):
    f = mkfile(f"{d}/f", 0o600)
    if shutil.which("setfacl") is None:
        return "no-setfacl"
    subprocess.run(["setfacl", "-m", f"u:{NOBODY}:rw", f], check=True)
    time.sleep(1.1)  # let a cached mode expire
    return as_user(NOBODY, [NOGROUP], lambda: os.close(os.open(f, os.O_RDWR)))


@probe
def acl_default_inherited(d):
    if shutil.which("setfacl") is None:
        return "no-setfacl"
    os.mkdir(f"{d}/g", 0o755)
    subprocess.run(["setfacl", "-d", "-m", "o::---", f"{d}/g"], check=True)
    os.close(os.open(f"{d}/g/f", os.O_CREAT | os.O_WRONLY, 0o666))
    return mode(f"{d}/g/f")


@probe
def many_supplementary_groups(d):
    gids = [NOGROUP] + list(range(70000, 70040)) + [SUPP]
    f = mkfile(f"{d}/f", 0o060, 0, SUPP)
    return as_user(NOBODY, gids, lambda: os.close(os.open(f, os.O_RDWR)))


@probe
def mknod_fifo_owner(d):
    os.chmod(d, 0o777)
    r = as_user(NOBODY, [NOGROUP, SUPP], lambda: os.mkfifo(f"{d}/p", 0o644))
    return f"{r} {owner(d + '/p')}"


@probe
def symlink_owner(d):
    os.chmod(d, 0o777)
    r = as_user(NOBODY, [NOGROUP], lambda: os.symlink("x", f"{d}/s"))
    return f"{r} {owner(d + '/s')}"


@probe
def rmdir_nonempty(d):
    os.mkdir(f"{d}/g")
    mkfile(f"{d}/g/f")
    try:
        os.rmdir(f"{d}/g")
        return "ok"
    except OSError as e:
        return en(e)


@probe
def rename_exchange(d):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    mkfile(f"{d}/a", data=b"A")
    mkfile(f"{d}/b", data=b"B")
    AT_FDCWD = -100
    rc = libc.renameat2(AT_FDCWD, f"{d}/a".encode(), AT_FDCWD, f"{d}/b".encode(), 2)
    if rc != 0:
        return errno.errorcode[ctypes.get_errno()]
    return open(f"{d}/a", "rb").read().decode()


@probe
def link_max(d):
    f = mkfile(f"{d}/f")
    os.mkdir(f"{d}/l")
    n = 1
    while n < 70000:
        try:
            os.link(f, f"{d}/l/{n}")
        except OSError as e:
            return f"{en(e)} at nlink={n}"
        n += 1
    return "no-limit"


@probe
def xattr_user_value_roundtrip(d):
    f = mkfile(f"{d}/f", 0o644)
    os.setxattr(f, "user.v", b"hello")
    return os.getxattr(f, "user.v").decode() or "<empty>"


@probe
def xattr_list_as_root(d):
    f = mkfile(f"{d}/f", 0o644)
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "trusted.b", b"2")
    return ",".join(sorted(os.listxattr(f))) or "<empty>"


@probe
def xattr_dir_value(d):
    os.mkdir(f"{d}/g")
    os.setxattr(f"{d}/g", "user.v", b"dirval")
    return os.getxattr(f"{d}/g", "user.v").decode() or "<empty>"


@probe
def xattr_create_flag_on_existing(d):
    f = mkfile(f"{d}/f", 0o644)
    os.setxattr(f, "user.v", b"1")
    try:
        os.setxattr(f, "user.v", b"2", os.XATTR_CREATE)
        return "ok"
    except OSError as e:
        return en(e)


@probe
def xattr_replace_flag_on_missing(d):
    f = mkfile(f"{d}/f", 0o644)
    try:
        os.setxattr(f, "user.v", b"2", os.XATTR_REPLACE)
        return "ok"
    except OSError as e:
        return en(e)


@probe
def xattr_remove_then_get(d):
    f = mkfile(f"{d}/f", 0o644)
    os.setxattr(f, "user.v", b"1")
    os.removexattr(f, "user.v")
    try:
        os.getxattr(f, "user.v")
        return "present"
    except OSError as e:
        return en(e)


@probe
def xattr_erange_small_buffer(d):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    f = mkfile(f"{d}/f", 0o644)
    os.setxattr(f, "user.v", b"0123456789")
    buf = ctypes.create_string_buffer(4)
    n = libc.getxattr(f.encode(), b"user.v", buf, 4)
    q = libc.getxattr(f.encode(), b"user.v", None, 0)
    return f"small={errno.errorcode.get(ctypes.get_errno()) if n < 0 else n} query={q}"


@probe
def xattr_acl_readback(d):
    if shutil.which("getfacl") is None:
        return "no-acl-tools"
    f = mkfile(f"{d}/f", 0o640)
    subprocess.run(["setfacl", "-m", f"u:{NOBODY}:r", f], check=True)
    out = subprocess.run(["getfacl", "-cp", f], capture_output=True, text=True).stdout
    return ";".join(l for l in out.split("\n") if l.startswith("user:"))


@probe
def lutimes_symlink(d):
    os.symlink("target", f"{d}/s")
    os.utime(f"{d}/s", (1000, 2000), follow_symlinks=False)
    st = os.lstat(f"{d}/s")
    return f"{int(st.st_atime)},{int(st.st_mtime)}"


@probe
def chown_noop_updates_ctime(d):
    f = mkfile(f"{d}/f", 0o644)
    c0 = os.stat(f).st_ctime_ns
    time.sleep(0.02)
    os.chown(f, -1, -1)
    return "changed" if os.stat(f).st_ctime_ns != c0 else "same"


@probe
def cache_coherence_chmod_then_stat_storage(d):
    f = mkfile(f"{d}/f", 0o644)
    os.chmod(f, 0o600)
    return mode(f)


@probe
def umask_applied_on_create(d):
    old = os.umask(0o027)
    try:
        os.close(os.open(f"{d}/f", os.O_CREAT | os.O_WRONLY, 0o666))
        os.mkdir(f"{d}/g", 0o777)
        os.mkfifo(f"{d}/p", 0o666)
    finally:
        os.umask(old)
    return f"{mode(d + '/f')} {mode(d + '/g')} {mode(d + '/p')}"


@probe
def default_acl_overrides_umask(d):
    if shutil.which("setfacl") is None:
        return "no-setfacl"
    os.mkdir(f"{d}/g", 0o777)
    subprocess.run(["setfacl", "-d", "-m", "u::rwx,g::rwx,o::rwx", f"{d}/g"], check=True)
    old = os.umask(0o077)
    try:
        os.close(os.open(f"{d}/g/f", os.O_CREAT | os.O_WRONLY, 0o666))
    finally:
        os.umask(old)
    return mode(f"{d}/g/f")


def main():
    base = sys.argv[1]
    only = sys.argv[2:]
    os.umask(0)
    for i, fn in enumerate(PROBES):
        if only and fn.__name__ not in only:
            continue
        d = os.path.join(base, f"p{i:02d}")
        if os.path.lexists(d):
            shutil.rmtree(d)
        os.mkdir(d, 0o755)
        try:
            res = fn(d)
        except OSError as e:
            res = "setup-" + en(e)
        print(f"{fn.__name__} {res}", flush=True)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
PY
  echo
  echo "probes (modelled on C pjdfstest assertions the Rust port lacks)" >&2
  mkdir -p "$plain/probes" "$mnt/probes"
  chmod 755 "$plain/probes" "$mnt/probes"
  python3 "$work/probes.py" "$plain/probes" >"$work/probes-ext4.txt" 2>&1
  timeout 900 python3 "$work/probes.py" "$mnt/probes" >"$work/probes-pagetier.txt" 2>&1
  np=$(wc -l <"$work/probes-ext4.txt")
  diffs=$(awk 'NR == FNR { e[$1] = substr($0, length($1) + 2); next }
               { p = substr($0, length($1) + 2); if (!($1 in e) || e[$1] != p) printf "  %s: ext4 \"%s\" -> pagetier \"%s\"\n", $1, e[$1], p; seen[$1] = 1 }
               END { for (k in e) if (!(k in seen)) printf "  %s: ext4 \"%s\" -> pagetier (missing)\n", k, e[k] }' \
    "$work/probes-ext4.txt" "$work/probes-pagetier.txt")
  nfail=0
  [[ -n $diffs ]] && nfail=$(grep -c . <<<"$diffs")
  echo "probes: $((np - nfail)) same, $nfail differ (of $np)"
  if ((nfail)); then
    echo "probes that differ:"
    echo "$diffs"
    status=1
  fi
fi

exit "$status"
