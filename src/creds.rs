//! Per-thread caller credentials for backing operations.
//!
//! When the daemon runs as root, operations that create or change objects
//! run with the caller's fsuid, fsgid and supplementary groups, so that the
//! backing filesystem itself applies ownership, set-gid inheritance, the
//! clearing of set-id bits and permission checks exactly as it would for the
//! caller. Invariant: the switch is per *thread* (raw `setfsuid`, `setfsgid`
//! and `setgroups` syscalls, which — unlike glibc's `setgroups` — touch only
//! the calling thread) and is always undone when the guard drops, before the
//! worker thread handles its next request.

use std::fs;

/// Who asked for an operation (from the FUSE request header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    /// The daemon itself (used for internal operations).
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };
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

fn set_groups(groups: &[libc::gid_t]) -> bool {
    // SAFETY: the raw syscall reads `groups.len()` gids from a valid slice and
    // affects only the calling thread's credentials.
    unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) == 0 }
}

fn set_fsids(uid: u32, gid: u32) {
    // SAFETY: setfsgid/setfsuid take plain integers and change only the
    // calling thread's filesystem ids; they cannot fail in a way that breaks
    // memory safety (they return the previous id).
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
    }
}

/// Become `caller` for filesystem purposes on this thread, when the daemon
/// runs as root and the caller is someone else. No-op otherwise.
pub fn become_caller(caller: Caller) -> CredGuard {
    let root = rustix::process::geteuid().is_root();
    if !root || (caller.uid == 0 && caller.gid == 0) {
        return CredGuard { active: false };
    }
    let groups = groups_of(caller.pid).unwrap_or_else(|| vec![caller.gid]);
    set_groups(&groups);
    set_fsids(caller.uid, caller.gid);
    CredGuard { active: true }
}

impl Drop for CredGuard {
    fn drop(&mut self) {
        if self.active {
            set_fsids(0, 0);
            set_groups(&[]);
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
