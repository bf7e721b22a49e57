//! Forgets that arrive in batches, applied off the FUSE worker threads.
//!
//! The kernel answers a worker's read of `/dev/fuse` with a `BATCH_FORGET` holding every
//! forget that is pending and fits the read buffer, 16 bytes each; fuser reads into a 16 MiB
//! buffer per worker and keeps it for the life of the mount. Applied in the worker, a batch
//! takes the inode table's lock once per inode, and while it does the next batch grows:
//! after `drop_caches` of a million inodes the batches filled megabytes of each buffer, and
//! those pages stay resident (up to 10 MiB, for a daemon of 4.4 MiB idle). A worker that only
//! queues each forget (fuser hands them over one at a time) reads again soon after, so a
//! batch holds what the kernel queued in that time; one thread applies the queue.
//!
//! Invariants:
//! - every forget pushed is applied exactly once, in push order, by the queue's thread;
//!   the ones still queued when the queue is dropped are applied before the drop returns;
//! - delay changes nothing the kernel can see: lookup counts only add, so a lookup answered
//!   while a forget waits adds to the count the forget later subtracts from, and an inode
//!   number stays taken until its forget is applied (it is never given out early);
//! - a push wakes the thread only when it waits for work (no system call per forget while
//!   it is busy);
//! - the queue keeps no memory once drained: the applying thread takes the whole vector and
//!   drops it (a large one is its own mapping, unmapped then).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::lock::lock;

/// One forget: the kernel's inode number and the count of lookups it gives back.
pub type Forget = (u64, u64);

#[derive(Default)]
struct Pending {
    forgets: Vec<Forget>,
    /// The thread waits for work (a push must wake it).
    idle: bool,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// The queue and its applying thread (module docs).
pub struct ForgetQueue {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ForgetQueue {
    /// Starts the thread that calls `apply(ino, nlookup)` for every forget pushed.
    pub fn start(apply: impl Fn(u64, u64) + Send + 'static) -> std::io::Result<ForgetQueue> {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("forgets".into())
            .spawn(move || {
                while let Some(batch) = theirs.next_batch() {
                    for &(ino, n) in &batch {
                        apply(ino, n);
                    }
                }
            })?;
        Ok(ForgetQueue {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues one forget for the thread; returns at once.
    pub fn push(&self, ino: u64, nlookup: u64) {
        let mut p = lock(&self.shared.pending);
        p.forgets.push((ino, nlookup));
        if std::mem::take(&mut p.idle) {
            drop(p);
            self.shared.wake.notify_one();
        }
    }
}

impl Shared {
    /// Everything queued, once there is something; None once closed and drained.
    fn next_batch(&self) -> Option<Vec<Forget>> {
        let mut p = lock(&self.pending);
        while p.forgets.is_empty() {
            if p.closed {
                return None;
            }
            p.idle = true;
            p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.idle = false;
        Some(std::mem::take(&mut p.forgets))
    }
}

impl Drop for ForgetQueue {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        // Woken whether it waits or not: `closed` is seen before it would wait again.
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn every_forget_is_applied_once_in_order_and_the_rest_on_drop() {
        let (tx, rx) = mpsc::channel();
        let q = ForgetQueue::start(move |ino, n| tx.send((ino, n)).unwrap()).unwrap();
        q.push(2, 1);
        q.push(3, 5);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok((2, 1)));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok((3, 5)));
        // The thread waits again; a push wakes it.
        q.push(4, 2);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok((4, 2)));
        for i in 10..1000 {
            q.push(i, 1);
        }
        drop(q);
        let rest: Vec<_> = rx.try_iter().collect();
        assert_eq!(rest, (10..1000).map(|i| (i, 1)).collect::<Vec<_>>());
    }

    #[test]
    fn a_dropped_queue_with_nothing_queued_ends_its_thread() {
        let (tx, rx) = mpsc::channel::<Forget>();
        drop(ForgetQueue::start(move |ino, n| tx.send((ino, n)).unwrap()).unwrap());
        // The thread owned the sender: it is gone, so the thread ended.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
