//! The readahead pool: a few threads that run queued jobs, knowing nothing of the tier.
//!
//! A [`Job`] is the file it is for and a closure that does the work (`window.rs` builds
//! them: each faults at most one extent through the tier's fault path, holding the tier
//! only weakly until it runs). The pool bounds the queue at [`RA_QUEUE_JOBS`] (a job that
//! does not fit is dropped, and the caller is told how many were queued), runs at most
//! [`RA_THREADS`] jobs at a time on threads started on first use and stopped (joined) when
//! the pool is dropped, and can cancel a file's queued jobs and wait for its running ones.
//! Threads come from `sync.rs`, so they are shuttle's under the `shuttle` feature.
//!
//! Lock order: `queue` is a leaf; it may be taken under a shard lock (submitting), never the
//! other way round. Workers take `queue` alone and run jobs without it.

use std::collections::VecDeque;

use crate::tier::sync::{Arc, Condvar, Mutex, lock, thread, wait};
use crate::tier::types::{FileId, RA_QUEUE_JOBS, RA_THREADS};

/// One unit of readahead work for `file`.
pub struct Job {
    pub file: FileId,
    /// The work; dropping it releases everything the job holds (the file's storage).
    pub run: Box<dyn FnOnce() + Send>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    running: usize,
    /// Files of the jobs running now (one entry per running job).
    running_files: Vec<FileId>,
    shutdown: bool,
}

#[derive(Default)]
struct Shared {
    /// Lock order: after a shard lock, never before one (see module docs).
    queue: Mutex<Queue>,
    /// Signalled when a job is queued or on shutdown.
    work: Condvar,
    /// Signalled when a job finishes.
    idle: Condvar,
}

/// A readahead pool.
#[derive(Default)]
pub struct Readahead {
    shared: Arc<Shared>,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
}

impl Readahead {
    /// Queues `jobs` in order while the queue has room and drops the rest; returns how many
    /// were queued. Starts the workers on first use.
    pub fn submit(&self, jobs: Vec<Job>) -> usize {
        let mut queued = 0;
        {
            let mut q = lock(&self.shared.queue);
            for job in jobs {
                if q.jobs.len() >= RA_QUEUE_JOBS {
                    break;
                }
                q.jobs.push_back(job);
                queued += 1;
            }
        }
        if queued > 0 {
            self.shared.work.notify_all();
            self.start();
        }
        queued
    }

    fn start(&self) {
        let mut threads = lock(&self.threads);
        while threads.len() < RA_THREADS {
            let shared = self.shared.clone();
            let spawned = thread::Builder::new()
                .name("pagetier-ra".into())
                .spawn(move || worker(&shared));
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a readahead thread");
                    break;
                }
            }
        }
    }

    /// Drops the queued jobs of `file` and waits until none of its jobs runs,
    /// so that no readahead holds the file open any more (its space is freed
    /// at once when it was deleted).
    pub fn cancel(&self, file: FileId) {
        let mut q = lock(&self.shared.queue);
        q.jobs.retain(|j| j.file != file);
        while q.running_files.contains(&file) {
            q = wait(&self.shared.idle, q);
        }
    }

    /// Blocks until no job is queued or running.
    pub fn wait_idle(&self) {
        let mut q = lock(&self.shared.queue);
        while !q.jobs.is_empty() || q.running > 0 {
            if lock(&self.threads).is_empty() {
                return; // nothing would ever run them
            }
            q = wait(&self.shared.idle, q);
        }
    }
}

impl Drop for Readahead {
    fn drop(&mut self) {
        lock(&self.shared.queue).shutdown = true;
        self.shared.work.notify_all();
        let me = thread::current().id();
        for h in std::mem::take(&mut *lock(&self.threads)) {
            // The last owner of the pool may be dropped by a worker finishing a job: that
            // worker exits on its own, it cannot join itself.
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }
}

fn worker(shared: &Shared) {
    loop {
        let job = {
            let mut q = lock(&shared.queue);
            loop {
                if q.shutdown {
                    return;
                }
                if let Some(j) = q.jobs.pop_front() {
                    q.running += 1;
                    q.running_files.push(j.file);
                    break j;
                }
                q = wait(&shared.work, q);
            }
        };
        let file = job.file;
        // Running the job consumes it: what it holds (an open backing file) is closed
        // before the job counts as finished, so a cancelled file is really let go.
        (job.run)();
        let mut q = lock(&shared.queue);
        q.running -= 1;
        if let Some(i) = q.running_files.iter().position(|f| *f == file) {
            q.running_files.swap_remove(i);
        }
        shared.idle.notify_all();
    }
}
