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
    .union(WatchMask::ATTRIB)
    .union(WatchMask::ONLYDIR);

struct State {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, WatchedDir>,
    /// STORAGE's root, read-only (`open_by_handle_at` refuses an `O_PATH` one), and the id
    /// of its mount: handles of directories on that mount reopen through it.
    root: OwnedFd,
    root_mount: Option<i32>,
}

/// A watched directory: its key, and how to reach it again when a directory appears in
/// it — whether or not the kernel still knows it, so that a directory made behind the
/// mount's back is watched wherever it appears.
struct WatchedDir {
    key: InodeKey,
    reach: Reach,
}

enum Reach {
    /// A file handle on STORAGE's root mount (no descriptor held).
    Handle(storage::FileHandle),
    /// A descriptor, where handles do not work (another mount, no handle support).
    Fd(OwnedFd),
}

impl State {
    /// How to reach the directory behind `fd` again.
    fn reach(&self, fd: OwnedFd) -> Reach {
        match storage::FileHandle::of(fd.as_fd()) {
            Ok((h, mount)) if Some(mount) == self.root_mount => Reach::Handle(h),
            _ => Reach::Fd(fd),
        }
    }

    /// Opens the watched directory `wd` as `O_PATH`.
    fn open_dir(&self, wd: &WatchDescriptor) -> Option<OwnedFd> {
        match &self.dirs.get(wd)?.reach {
            Reach::Handle(h) => h.open(self.root.as_fd()).ok(),
            Reach::Fd(fd) => fd.try_clone().ok(),
        }
    }
}

impl State {
    /// Watches `dir` and every directory below it; false if a watch could not be added
    /// (`fs.inotify.max_user_watches`, for one): changes below it are then seen at open only.
    fn add_tree(&mut self, dir: OwnedFd) -> bool {
        let mut all = true;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let Ok(st) = storage::stat(&d) else { continue };
            let path = storage::proc_path(d.as_fd());
            let p = Path::new(OsStr::from_bytes(path.as_bytes()));
            match self.inotify.watches().add(p, MASK) {
                Ok(wd) => {
                    let reach = match d.try_clone() {
                        Ok(fd) => self.reach(fd),
                        Err(_) => continue,
                    };
                    let key = storage::key_of(&st);
                    self.dirs.insert(wd, WatchedDir { key, reach });
                }
                Err(e) => {
                    warn!(
                        "inotify watch failed ({e}); external changes below it are seen at open \
                         only, and the kernel caches names and attributes for 1 s at most"
                    );
                    all = false;
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
        all
    }
}

impl Watcher {
    /// Starts watching the tree at `storage`.
    pub fn start(storage_root: &Path, fs: Arc<Pagetier>) -> std::io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let root = rustix::fs::open(
            storage_root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let root_mount = storage::FileHandle::of(root.as_fd()).ok().map(|(_, m)| m);
        let mut state = State {
            inotify,
            dirs: HashMap::new(),
            root,
            root_mount,
        };
        let all = state.add_tree(storage::open_root(storage_root)?);
        // Before the first event: own operations register their events from here on.
        fs.coherence().watcher_started(all);
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
    } else if mask.contains(EventMask::ATTRIB) {
        Some(StorageEvent::Attributes)
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
                warn!(
                    "inotify queue overflowed: some external changes are seen at open only, and \
                     the kernel caches names and attributes for 1 s at most from now on"
                );
                fs.coherence().watcher_missed();
                continue;
            }
            if mask.contains(EventMask::IGNORED) {
                // The directory went (or its watch was removed): forget it.
                state.dirs.remove(&wd);
                continue;
            }
            let (Some(dir_key), Some(name), Some(event)) =
                (state.dirs.get(&wd).map(|d| d.key), name, event_of(mask))
            else {
                continue;
            };
            let name = OsStr::from_bytes(&name);
            // A new directory is watched even where the kernel forgot its parent: changes
            // below it must be reported once the kernel looks it up.
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
                && mask.contains(EventMask::ISDIR)
                && let Some(dir_fd) = state.open_dir(&wd)
                && let Ok(fd) = rustix::fs::openat(
                    &dir_fd,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                && !state.add_tree(fd)
            {
                fs.coherence().watcher_missed();
            }
            let Some(dir_id) = fs.inodes().known_id(dir_key) else {
                continue;
            };
            let Some(dir) = fs.inodes().get(dir_id) else {
                continue;
            };
            debug!(dir = dir_id, ?name, ?event, "storage event");
            fs.coherence().storage_event(fs.inodes(), &dir, name, event);
        }
    }
}
