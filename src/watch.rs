//! Watching STORAGE for changes made behind the mount's back.
//!
//! An inotify watch on every directory of STORAGE reports changes of names
//! and of files' data (metadata-only changes are caught by the open-time
//! revalidation). This module only translates: each event about a name in a
//! directory the mount knows goes to [`Coherence::storage_event`], which
//! decides what is stale and tells the kernel (and passes over the events the
//! mount's own operations caused). Invariants: the watcher never resolves
//! paths — directories are reached through `O_PATH` fds and watched through
//! their `/proc/self/fd/N` link — and it holds no lock while it hands an
//! event on. New directories are watched whoever made them.
//!
//! [`Coherence::storage_event`]: crate::coherence::Coherence::storage_event

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use rustix::fs::OFlags;
use tracing::{debug, warn};

use crate::coherence::{EntryEvent, StorageEvent};
use crate::fs::Pagetier;
use crate::inode::InodeKey;
use crate::storage;

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
    pub fn start(storage_root: &Path, fs: Arc<Pagetier>) -> std::io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let mut state = State {
            inotify,
            dirs: HashMap::new(),
        };
        state.add_tree(storage::open_root(storage_root)?);
        // Before the first event: own operations register their events from here on.
        fs.coherence().watcher_started();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || run(state, fs, stop2))?;
        Ok(Watcher { stop })
    }

    /// Asks the thread to stop (it exits with the process otherwise).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What an inotify event says happened to its name.
fn event_of(mask: EventMask) -> Option<StorageEvent> {
    let entry = |e| Some(StorageEvent::Entry(e));
    if mask.contains(EventMask::CREATE) {
        entry(EntryEvent::Created)
    } else if mask.contains(EventMask::DELETE) {
        entry(EntryEvent::Deleted)
    } else if mask.contains(EventMask::MOVED_FROM) {
        entry(EntryEvent::MovedFrom)
    } else if mask.contains(EventMask::MOVED_TO) {
        entry(EntryEvent::MovedTo)
    } else if mask.intersects(EventMask::MODIFY | EventMask::CLOSE_WRITE) {
        Some(StorageEvent::Data)
    } else {
        None
    }
}

fn run(mut state: State, fs: Arc<Pagetier>, stop: Arc<AtomicBool>) {
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
            let (Some(dir_key), Some(name), Some(event)) =
                (state.dirs.get(&wd).copied(), name, event_of(mask))
            else {
                continue;
            };
            let Some(dir_id) = fs.inodes().known_id(dir_key) else {
                continue;
            };
            let name = OsStr::from_bytes(&name);
            let Some(dir) = fs.inodes().get(dir_id) else {
                continue;
            };
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
                && mask.contains(EventMask::ISDIR)
                && let Ok(dir_fd) = dir.fd()
                && let Ok(fd) = rustix::fs::openat(
                    &dir_fd,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
            {
                state.add_tree(fd);
            }
            debug!(dir = dir_id, ?name, ?event, "storage event");
            fs.coherence().storage_event(fs.inodes(), &dir, name, event);
        }
    }
}
