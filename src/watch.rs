//! Watching STORAGE for changes made behind the mount's back.
//!
//! An inotify watch on every directory of STORAGE reports changes that other
//! processes make to backing files' data (metadata-only changes are caught
//! by the open-time revalidation). For a file the mount knows (live inode)
//! whose fingerprint differs from what the mount last saw, the watcher drops
//! its device pages and the kernel's cached host-view data; for entry
//! changes it drops the kernel's cached dentries. Invariant: the watcher
//! never resolves paths — directories are reached through `O_PATH` fds and
//! watched through their `/proc/self/fd/N` link — and it calls the kernel
//! notifier with no lock held.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use rustix::fs::{AtFlags, OFlags};
use tracing::{debug, warn};

use crate::fs::Pagetier;
use crate::inode::{InodeKey, View, encode};
use crate::storage;
use crate::tier::InvalidationCause;

/// A running watcher thread.
pub struct Watcher {
    stop: Arc<AtomicBool>,
}

const MASK: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR);

struct State {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, InodeKey>,
}

impl State {
    /// Watches `dir` and every directory below it.
    fn add_tree(&mut self, dir: OwnedFd) {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let Ok(st) = storage::stat(&d) else { continue };
            let path = storage::proc_path(d.as_fd());
            let p = Path::new(OsStr::from_bytes(path.as_bytes()));
            match self.inotify.watches().add(p, MASK) {
                Ok(wd) => {
                    self.dirs.insert(wd, storage::key_of(&st));
                }
                Err(e) => {
                    warn!(
                        "inotify watch failed ({e}); external changes below it are seen at open only"
                    );
                    continue;
                }
            }
            let Ok((_, entries)) = storage::list_dir(d.as_fd()) else {
                continue;
            };
            for e in entries {
                if e.fmt == libc::S_IFDIR || e.fmt == 0 {
                    let name = OsStr::from_bytes(&e.name);
                    if let Ok(fd) = rustix::fs::openat(
                        &d,
                        name,
                        OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                    ) {
                        stack.push(fd);
                    }
                }
            }
        }
    }
}

impl Watcher {
    /// Starts watching the tree at `storage`.
    pub fn start(
        storage_root: &Path,
        fs: Arc<Pagetier>,
        notifier: fuser::Notifier,
    ) -> std::io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let mut state = State {
            inotify,
            dirs: HashMap::new(),
        };
        state.add_tree(storage::open_root(storage_root)?);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || run(state, fs, notifier, stop2))?;
        Ok(Watcher { stop })
    }

    /// Asks the thread to stop (it exits with the process otherwise).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn run(mut state: State, fs: Arc<Pagetier>, notifier: fuser::Notifier, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let events: Vec<(WatchDescriptor, EventMask, Option<Vec<u8>>)> =
            match state.inotify.read_events_blocking(&mut buf) {
                Ok(evs) => evs
                    .map(|e| (e.wd, e.mask, e.name.map(|n| n.as_bytes().to_vec())))
                    .collect(),
                Err(e) => {
                    warn!("inotify read failed: {e}; stopping the watcher");
                    return;
                }
            };
        for (wd, mask, name) in events {
            if mask.contains(EventMask::Q_OVERFLOW) {
                warn!("inotify queue overflowed: some external changes are seen at open only");
                continue;
            }
            let (Some(dir_key), Some(name)) = (state.dirs.get(&wd).copied(), name) else {
                continue;
            };
            let Some(dir_id) = fs.inodes().known_id(dir_key) else {
                continue;
            };
            let name = OsStr::from_bytes(&name);
            let Some(dir) = fs.inodes().get(dir_id) else {
                continue;
            };
            let child = rustix::fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW).ok();
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
                && mask.contains(EventMask::ISDIR)
                && let Ok(fd) = rustix::fs::openat(
                    &dir.fd,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
            {
                state.add_tree(fd);
            }
            if mask.intersects(
                EventMask::CREATE | EventMask::DELETE | EventMask::MOVED_FROM | EventMask::MOVED_TO,
            ) {
                for view in [View::Host, View::Device] {
                    let _ = notifier.inval_entry(fuser::INodeNo(encode(dir_id, view)), name);
                }
            }
            let Some(st) = child else { continue };
            let Some(id) = fs.inodes().known_id(storage::key_of(&st)) else {
                continue;
            };
            let Some(inode) = fs.inodes().get(id) else {
                continue;
            };
            if !inode.is_reg() || inode.writes_in_flight.load(Ordering::SeqCst) > 0 {
                continue;
            }
            let fp = storage::fingerprint(&st);
            let seen = *inode.seen.lock().unwrap();
            if seen != Some(fp) {
                debug!(id, ?name, "external change");
                fs.tier().invalidate_file(id, InvalidationCause::External);
                for view in [View::Host, View::Device] {
                    let _ = notifier.inval_inode(fuser::INodeNo(encode(id, view)), 0, 0);
                }
            }
        }
    }
}
