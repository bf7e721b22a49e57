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
