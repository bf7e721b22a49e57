//! FUSE worker threads that step aside while one caller at a time uses the mount.
//!
//! fuser runs a fixed number of worker threads (`--threads`), each blocked in a read of
//! `/dev/fuse`. With one loader process the kernel has one request at a time (an `OPEN`, then
//! the `RELEASE` of that file), and a second reading thread only costs: the two contend for
//! the connection's input-queue lock and the kernel wakes them in turn, on either CPU. On a
//! 2-CPU machine one thread read 100,000 small files 15% faster than two; with four loaders
//! two threads were 3–6% faster than one (docs/BENCH.md). So a worker that has just answered
//! a request *parks* while another worker is reading and the requests come from one caller
//! (the same thread id as the one before, for the last [`SEVERAL_WINDOW`] requests); a parked
//! worker looks every [`POLL`] and goes back to reading when requests of two callers interleave, or when a
//! request has been in a handler a whole poll with none finishing (a slow storage read, or a
//! handler that waits for another request: the 20 ms entry-notification case of
//! `--threads 1` resolves within a poll here). The kernel stamps every request with its
//! caller's thread id, so telling one caller from several costs nothing per request.
//!
//! Invariants:
//! - at least one worker is never parked (checked under `park_lock` before parking);
//! - a worker parks only after its reply went out and holds no lock and no request while
//!   parked (the [`Turn`] guard is the last thing a request handler drops; `forget`, called
//!   once per inode of a batch, takes no turn);
//! - every wait is bounded ([`POLL`], [`IDLE_POLL`] after a quiet second), and a parked
//!   worker goes back to fuser's loop once the connection ends (`poll` of `/dev/fuse`
//!   reports an error then), so an unmount ends every worker.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lock::lock;

/// How often a parked worker looks while the mount is busy.
pub const POLL: Duration = Duration::from_millis(2);
/// How often it looks once no request finished for [`IDLE_AFTER`] polls (the next request
/// wakes it back to [`POLL`]).
pub const IDLE_POLL: Duration = Duration::from_millis(200);
/// Polls without a finished request before a parked worker slows down (one second).
const IDLE_AFTER: u32 = 500;
/// Requests of two callers interleaved within this many requests: every worker reads. (A
/// count, not a time: no clock read per request.)
pub const SEVERAL_WINDOW: u64 = 256;

/// Whether callers interleaved recently: at request number `mixed_at` (0: never), `now`
/// requests having started since the mount (both counted from 1).
fn several_callers(mixed_at: u64, now: u64) -> bool {
    mixed_at != 0 && now.saturating_sub(mixed_at) < SEVERAL_WINDOW
}

/// Whether a parked worker goes back to reading: callers interleave, or a request is in a
/// handler and none finished since the last look (`progressed`).
fn rejoins(several: bool, handling: usize, progressed: bool) -> bool {
    several || (handling > 0 && !progressed)
}

/// The `"workers"` object of the stats document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// FUSE worker threads (`--threads`).
    pub threads: u64,
    /// Whether idle workers park (`--worker-parking auto` with more than one thread).
    pub parking: bool,
    /// Workers parked now.
    pub parked: u64,
    /// Times a worker parked since the mount.
    pub parks: u64,
    /// Bytes kept for the replies the daemon copies (request-sized buffers reused from one
    /// read to the next, given back when the daemon trims its heap: after the kernel forgot
    /// many inodes). Absent from the documents of mounts older than it (read as 0).
    #[serde(default)]
    pub buffer_bytes: u64,
}

/// The workers of one mount (module docs).
pub struct Workers {
    threads: usize,
    /// `--worker-parking auto` with more than one thread.
    enabled: bool,
    /// Parking is on: enabled, and the connection is watched ([`Workers::watch`]).
    active: AtomicBool,
    /// Requests inside a handler now.
    handling: AtomicUsize,
    /// Requests finished since the mount.
    finished: AtomicU64,
    /// Requests started since the mount.
    started: AtomicU64,
    /// The caller (thread id) of the last request that had one.
    last_caller: AtomicU32,
    /// The number (`started`) of the last request whose caller differed from the one
    /// before; 0: never.
    mixed_at: AtomicU64,
    parked: AtomicUsize,
    park_lock: Mutex<()>,
    wake: Condvar,
    /// Parked workers poll slowly ([`IDLE_POLL`]); the next request wakes them.
    sleepy: AtomicBool,
    /// The session ended: nobody parks, parked workers leave.
    ended: AtomicBool,
    /// The session's `/dev/fuse` (a duplicate): polled for the connection's end.
    device: OnceLock<OwnedFd>,
    parks: AtomicU64,
}

/// One request's time in a handler; dropping it (after the reply) may park the worker.
#[must_use]
pub struct Turn<'a>(&'a Workers);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Workers {
    /// The workers of a session running `threads` threads; `park` false keeps every worker
    /// reading.
    pub fn new(threads: usize, park: bool) -> Workers {
        Workers {
            threads,
            enabled: park && threads > 1,
            active: AtomicBool::new(false),
            handling: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
            started: AtomicU64::new(0),
            last_caller: AtomicU32::new(0),
            mixed_at: AtomicU64::new(0),
            parked: AtomicUsize::new(0),
            park_lock: Mutex::new(()),
            wake: Condvar::new(),
            sleepy: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            device: OnceLock::new(),
            parks: AtomicU64::new(0),
        }
    }

    /// Starts the turn of a request from thread `caller` (0: none, as for the kernel's own
    /// requests): the handler's first step.
    #[inline]
    pub fn enter(&self, caller: u32) -> Turn<'_> {
        self.handling.fetch_add(1, Ordering::AcqRel);
        if self.active.load(Ordering::Relaxed) {
            let n = self.started.fetch_add(1, Ordering::Relaxed) + 1;
            if caller != 0 && self.last_caller.load(Ordering::Relaxed) != caller {
                let before = self.last_caller.swap(caller, Ordering::Relaxed);
                if before != 0 && before != caller {
                    self.mixed_at.store(n, Ordering::Relaxed);
                }
            }
            if self.sleepy.load(Ordering::Relaxed) && self.sleepy.swap(false, Ordering::AcqRel) {
                let _g = lock(&self.park_lock);
                self.wake.notify_all();
            }
        }
        Turn(self)
    }

    /// Watches the session's `/dev/fuse` (a duplicate descriptor): a parked worker leaves
    /// when the connection ends. Parking starts here (if enabled): a worker that could not
    /// see the end would keep an unmount waiting.
    pub fn watch(&self, device: OwnedFd) {
        if self.device.set(device).is_ok() && self.enabled {
            self.active.store(true, Ordering::Release);
        }
    }

    /// Whether the connection ended (an unmount or an abort): `/dev/fuse` polls with an
    /// error then.
    fn connection_ended(&self) -> bool {
        let Some(fd) = self.device.get() else {
            return false;
        };
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
            Ok(_) => fds[0]
                .revents()
                .intersects(rustix::event::PollFlags::ERR | rustix::event::PollFlags::HUP),
            Err(_) => true,
        }
    }

    fn others_reading(&self) -> bool {
        self.threads - self.parked.load(Ordering::Acquire) > 1
    }

    fn several(&self) -> bool {
        several_callers(
            self.mixed_at.load(Ordering::Relaxed),
            self.started.load(Ordering::Relaxed),
        )
    }

    fn leave(&self) {
        self.handling.fetch_sub(1, Ordering::AcqRel);
        self.finished.fetch_add(1, Ordering::Relaxed);
        if !self.active.load(Ordering::Relaxed)
            || self.ended.load(Ordering::Relaxed)
            || !self.others_reading()
            || self.several()
        {
            return;
        }
        self.park();
    }

    fn park(&self) {
        let mut g = lock(&self.park_lock);
        if !self.others_reading() {
            return;
        }
        self.parked.fetch_add(1, Ordering::AcqRel);
        self.parks.fetch_add(1, Ordering::Relaxed);
        let mut seen = self.finished.load(Ordering::Relaxed);
        let mut quiet = 0u32;
        while !self.ended.load(Ordering::Relaxed) {
            let poll = if quiet >= IDLE_AFTER {
                self.sleepy.store(true, Ordering::Release);
                IDLE_POLL
            } else {
                POLL
            };
            g = self
                .wake
                .wait_timeout(g, poll)
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
            let now = self.finished.load(Ordering::Relaxed);
            let progressed = now != seen;
            seen = now;
            // A request woke the mount (it cleared `sleepy`): poll fast again.
            let woken = quiet >= IDLE_AFTER && !self.sleepy.load(Ordering::Acquire);
            quiet = if progressed || woken { 0 } else { quiet + 1 };
            if rejoins(
                self.several(),
                self.handling.load(Ordering::Acquire),
                progressed,
            ) || self.connection_ended()
            {
                break;
            }
        }
        self.parked.fetch_sub(1, Ordering::AcqRel);
        drop(g);
    }

    /// Ends the pool without a connection (tests): parked workers leave at once, none parks
    /// again. A mount needs none: its parked workers see the connection's end.
    #[cfg(test)]
    pub fn shutdown(&self) {
        self.ended.store(true, Ordering::Relaxed);
        let _g = lock(&self.park_lock);
        self.wake.notify_all();
    }

    /// The stats document's `"workers"` object.
    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            threads: self.threads as u64,
            parking: self.active.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed) as u64,
            parks: self.parks.load(Ordering::Relaxed),
            buffer_bytes: crate::heap::REPLY_BUFFERS.kept_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// A pool watching the read end of a pipe in place of `/dev/fuse` (closing the write
    /// end is the connection's end); the write end is returned.
    fn watched(threads: usize) -> (Arc<Workers>, OwnedFd) {
        let w = Arc::new(Workers::new(threads, true));
        let (r, wr) = rustix::pipe::pipe().unwrap();
        w.watch(r);
        (w, wr)
    }

    #[test]
    fn callers_count_as_several_only_within_the_window() {
        let w = SEVERAL_WINDOW;
        assert!(!several_callers(0, 5), "never interleaved");
        assert!(several_callers(100, 100 + w - 1));
        assert!(!several_callers(100, 100 + w));
    }

    #[test]
    fn a_parked_worker_rejoins_for_several_callers_or_a_stall() {
        assert!(rejoins(true, 0, true));
        assert!(
            rejoins(false, 1, false),
            "a request in a handler a whole poll"
        );
        assert!(!rejoins(false, 1, true), "one caller, requests finishing");
        assert!(!rejoins(false, 0, false), "an idle mount");
    }

    #[test]
    fn without_parking_a_turn_only_counts() {
        let w = Workers::new(2, false);
        {
            let _t = w.enter(7);
            assert_eq!(w.handling.load(Ordering::Relaxed), 1);
        }
        drop(w.enter(8));
        assert_eq!(w.finished.load(Ordering::Relaxed), 2);
        assert_eq!(w.stats().parks, 0);
        assert!(!w.stats().parking);
    }

    #[test]
    fn one_worker_never_parks() {
        let (w, _end) = watched(1);
        drop(w.enter(7));
        let stats = w.stats();
        assert_eq!(
            stats,
            WorkerStats {
                threads: 1,
                // The process's reply buffers, whatever other tests left there.
                buffer_bytes: stats.buffer_bytes,
                ..Default::default()
            }
        );
    }

    /// Two "workers" on real threads: with one caller the second parks and one always
    /// serves; requests of two callers bring it back; a stalled handler brings it back; the
    /// connection's end and the shutdown release it.
    #[test]
    fn one_caller_parks_a_worker_and_two_callers_or_a_stall_bring_it_back() {
        let unwatched = Workers::new(2, true);
        drop(unwatched.enter(7));
        assert_eq!(unwatched.stats().parks, 0, "parking starts with the watch");
        let (w, _end) = watched(2);
        let deadline = Instant::now() + Duration::from_secs(10);
        let wait_for = |cond: &dyn Fn() -> bool| {
            while !cond() {
                assert!(Instant::now() < deadline, "timed out");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        // Worker A answers one request of caller 7 and parks (B is "reading").
        let a = {
            let w = w.clone();
            std::thread::spawn(move || drop(w.enter(7)))
        };
        wait_for(&|| w.stats().parked == 1);
        // The last worker never parks: its turn returns at once.
        drop(w.enter(7));
        assert_eq!(w.stats().parked, 1);
        // A second caller interleaves: A rejoins.
        drop(w.enter(8));
        a.join().unwrap();
        assert_eq!(w.stats().parked, 0);
        assert!(w.several());
        // While callers interleave, nobody parks.
        drop(w.enter(7));
        assert_eq!(w.stats().parks, 1);

        // A stall: a fresh pool, A parked, B's request stays in its handler.
        let (w, _end) = watched(2);
        let a = {
            let w = w.clone();
            std::thread::spawn(move || drop(w.enter(7)))
        };
        wait_for(&|| w.stats().parked == 1);
        let slow = w.enter(7);
        a.join().unwrap();
        // No worker is left to read here: end the pool before the slow turn ends (it
        // would park, as a worker does while another reads).
        w.shutdown();
        drop(slow);

        // The connection's end releases a parked worker.
        let (w, end) = watched(2);
        let a = {
            let w = w.clone();
            std::thread::spawn(move || drop(w.enter(7)))
        };
        wait_for(&|| w.stats().parked == 1);
        drop(end);
        a.join().unwrap();

        // Shutdown releases a parked worker and stops parking.
        let (w, _end) = watched(2);
        let a = {
            let w = w.clone();
            std::thread::spawn(move || drop(w.enter(7)))
        };
        wait_for(&|| w.stats().parked == 1);
        w.shutdown();
        a.join().unwrap();
        drop(w.enter(7));
        assert_eq!(w.stats().parked, 0);
    }
}
