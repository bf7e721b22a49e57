//! Per-thread caller credentials for backing operations.
//!
//! When the daemon runs as root, operations that create or change objects
//! run with the caller's fsuid, fsgid and supplementary groups, so that the
//! backing filesystem itself applies ownership, set-gid inheritance, the
//! clearing of set-id bits and permission checks exactly as it would for the
//! caller. Invariant: the switch is per *thread* (raw `setfsuid`, `setfsgid`
//! and `setgroups` syscalls, which — unlike glibc's `setgroups` — touch only
//! the calling thread) and is always undone when the guard drops, before the
//! worker thread handles its next request. A switch that does not take effect
//! fails the request (`EPERM`): nothing runs as root on a caller's behalf.

use std::fs;

use tracing::{error, warn};

use crate::errno::{Errno, FsResult};

/// Who asked for an operation (from the FUSE request header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Restores the thread's credentials to the daemon's own on drop.
#[must_use]
pub struct CredGuard {
    active: bool,
}

/// Supplementary groups of process `pid`, from `/proc/PID/status`.
fn groups_of(pid: u32) -> Option<Vec<libc::gid_t>> {
    if pid == 0 {
        return None;
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Groups:"))?;
    line["Groups:".len()..]
        .split_whitespace()
        .map(|g| g.parse().ok())
        .collect()
}

/// Sets this thread's supplementary groups.
fn set_groups(groups: &[libc::gid_t]) -> std::io::Result<()> {
    // SAFETY: the raw syscall reads `groups.len()` gids from a valid slice and
    // affects only the calling thread's credentials.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets this thread's filesystem uid and gid and reads them back: `setfsuid` and
/// `setfsgid` never report failure (they return the previous id either way), so the
/// switch is checked by asking again with an invalid id, which changes nothing and
/// returns the current one. Returns the ids in effect afterwards.
fn set_fsids(uid: u32, gid: u32) -> (u32, u32) {
    // SAFETY: setfsgid/setfsuid take plain integers and change only the calling
    // thread's filesystem ids; `u32::MAX` (-1) is never a valid id, so those calls
    // change nothing and only return the current id.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        let gid_now = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        let uid_now = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        (uid_now, gid_now)
    }
}

/// Become `caller` for filesystem purposes on this thread, when the daemon
/// runs as root and the caller is someone else. No-op otherwise.
///
/// Fails with `EPERM` (and a log line) when the thread's credentials did not
/// switch: the request must not run with the daemon's own rights. Whatever part
/// of the switch happened is undone first.
pub fn become_caller(caller: Caller) -> FsResult<CredGuard> {
    let root = rustix::process::geteuid().is_root();
    if !root || (caller.uid == 0 && caller.gid == 0) {
        return Ok(CredGuard { active: false });
    }
    // Active from here: dropping it on an early return restores the daemon's ids.
    let guard = CredGuard { active: true };
    let groups = groups_of(caller.pid).unwrap_or_else(|| vec![caller.gid]);
    if let Err(e) = set_groups(&groups) {
        warn!(
            uid = caller.uid,
            gid = caller.gid,
            "cannot take the caller's supplementary groups: {e}"
        );
        return Err(Errno::EPERM);
    }
    let now = set_fsids(caller.uid, caller.gid);
    if now != (caller.uid, caller.gid) {
        warn!(
            uid = caller.uid,
            gid = caller.gid,
            fsuid = now.0,
            fsgid = now.1,
            "cannot take the caller's filesystem ids"
        );
        return Err(Errno::EPERM);
    }
    Ok(guard)
}

impl Drop for CredGuard {
    fn drop(&mut self) {
        if self.active {
            let now = set_fsids(0, 0);
            let groups = set_groups(&[]);
            if now != (0, 0) || groups.is_err() {
                // Nothing to fail here; the next switch on this thread sets every id anew.
                error!(
                    fsuid = now.0,
                    fsgid = now.1,
                    ?groups,
                    "cannot restore the daemon's credentials on this thread"
                );
            }
        }
    }
}

/// Applies the caller's umask to creations on this thread.
///
/// Under `FUSE_DONT_MASK` the kernel leaves the umask to us, so that the
/// backing filesystem can let a parent's default ACL take precedence over
/// it, exactly as for a local caller. Invariant: the umask is per *thread*
/// (the worker thread unshares its fs struct once, on first use) and is
/// reset to 0 when the guard drops. If the thread cannot get a private fs
/// struct, nothing is changed and [`UmaskGuard::fallback_mask`] tells the
/// caller to apply the mask to the mode itself.
#[must_use]
pub struct UmaskGuard {
    active: bool,
}

impl UmaskGuard {
    pub fn set(mask: u32) -> UmaskGuard {
        thread_local! {
            static OWN_FS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
        }
        let own = OWN_FS.with(|own| {
            *own.get().get_or_insert_with(|| {
                // SAFETY: unshare(CLONE_FS) only detaches this thread's cwd,
                // root and umask from the other threads; no memory is touched.
                let ok = unsafe { libc::unshare(libc::CLONE_FS) } == 0;
                own.set(Some(ok));
                ok
            })
        });
        if own {
            // SAFETY: umask only sets this thread's (now private) file mode mask.
            unsafe { libc::umask((mask & 0o777) as libc::mode_t) };
        }
        UmaskGuard { active: own }
    }

    /// The mask the caller must apply to the mode itself (0 if applied here).
    pub fn fallback_mask(&self, mask: u32) -> u32 {
        if self.active { 0 } else { mask & 0o777 }
    }
}

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        if self.active {
            // SAFETY: restores this thread's private umask to 0.
            unsafe { libc::umask(0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's filesystem ids, read without changing them.
    fn fsids() -> (u32, u32) {
        // SAFETY: with -1 (never a valid id) setfsuid/setfsgid change nothing and
        // return the current id.
        unsafe {
            (
                libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
                libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
            )
        }
    }

    /// The kernel's capability header and data (`capget(2)`, version 3: two words).
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    /// `CAP_SETUID` from linux/capability.h (libc does not define it).
    const CAP_SETUID: u32 = 7;

    /// Drops `cap` from this thread's effective capabilities (capabilities are per thread).
    fn drop_effective(cap: u32) {
        let mut head = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: capget/capset read and write one header and two data words, all owned
        // here and laid out as the kernel's structs; capset changes only this thread.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_capget, &mut head, data.as_mut_ptr()),
                0
            );
            data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
            assert_eq!(libc::syscall(libc::SYS_capset, &mut head, data.as_ptr()), 0);
        }
    }

    #[test]
    fn the_switch_takes_effect_and_is_undone() {
        if !rustix::process::geteuid().is_root() {
            return; // needs root, as the mount tests do
        }
        std::thread::spawn(|| {
            let caller = Caller {
                uid: 4321,
                gid: 4322,
                pid: 0,
            };
            let guard = become_caller(caller).expect("root can switch");
            assert_eq!(fsids(), (4321, 4322));
            drop(guard);
            assert_eq!(fsids(), (0, 0));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_switch_that_does_not_take_effect_fails_the_request() {
        if !rustix::process::geteuid().is_root() {
            return; // needs root, as the mount tests do
        }
        std::thread::spawn(|| {
            // Without CAP_SETUID, setfsuid silently leaves the fsuid alone.
            drop_effective(CAP_SETUID);
            let caller = Caller {
                uid: 4321,
                gid: 4322,
                pid: 0,
            };
            assert_eq!(become_caller(caller).err(), Some(Errno::EPERM));
            assert_eq!(fsids(), (0, 0), "the part that switched is undone");
        })
        .join()
        .unwrap();
    }
}
