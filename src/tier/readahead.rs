//! Readahead into the tier: a small pool of threads that fault extents of a file ahead of a
//! sequential device-view reader.
//!
//! The reader's thread decides (under its file's shard lock, in
//! `DeviceTier::read_with_readahead`) and enqueues [`Job`]s of at most one extent each; the
//! workers run them through the same fault path as `prefetch` — so a readahead fill reserves
//! `Filling` entries, reads storage without locks and installs only if the file's
//! invalidation sequence is unchanged — and a reader that reaches a page still being filled
//! waits for that fill instead of issuing its own. A job also carries the sequence seen when
//! it was queued and is dropped unstarted if the file was invalidated since.
//!
//! Window: the first sequential read (at offset 0, or continuing the previous read) opens a
//! window of [`RA_INITIAL_WINDOW`] past the read's end; every time the reader comes within
//! half a window of the frontier, the next window is issued and the window doubles, up to
//! [`RA_MAX_WINDOW`] (`sequential` hint: starts at the maximum). A read that does not continue
//! the previous one closes the window; the `random` hint disables readahead.
//!
//! Bounds: at most [`RA_QUEUE_JOBS`] queued jobs (a job that does not fit is not issued, and
//! the frontier does not advance past it); [`RA_THREADS`] workers, started on first use and
//! stopped (joined) when the tier is dropped. Readahead is speculative: when the tier is full
//! it is subject to the policy's admission, and a refused page ends the job (never a bypass).
//!
//! Lock order: `shard.files` → `queue` (a leaf). Workers take `queue` alone.

use std::collections::VecDeque;
use std::thread::JoinHandle;

use crate::tier::sync::{Arc, Condvar, Mutex, Weak, lock, wait};
use crate::tier::{DeviceTier, FileId, FillSource, HUGE_PAGE_SIZE, InvalidationSeq};

/// First readahead window.
pub const RA_INITIAL_WINDOW: u64 = 4 << 20;
/// Largest readahead window.
pub const RA_MAX_WINDOW: u64 = 32 << 20;
/// Bound of the job queue (jobs are at most one 2 MiB extent).
pub const RA_QUEUE_JOBS: usize = 32;
/// Worker threads: each keeps one 2 MiB O_DIRECT read in flight. Measured on a cold 4 GiB
/// sequential read (`scripts/bench-cold`): 2 workers read 1341–2231 MB/s, 4 workers
/// 2385–2454 MB/s, O_DIRECT at one read in flight 2210–2446 MB/s, in alternation.
pub const RA_THREADS: usize = 4;

/// An owned storage reader that worker threads can use after the read returned.
pub type SharedSource = Arc<dyn FillSource + Send + Sync>;

/// Fault `[offset, offset + len)` of `file` (size `file_size` when queued).
pub struct Job {
    pub tier: Weak<DeviceTier>,
    pub file: FileId,
    pub file_size: u64,
    pub offset: u64,
    pub len: u64,
    pub seq: InvalidationSeq,
    pub src: SharedSource,
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
    /// Signalled when the pool becomes idle.
    idle: Condvar,
}

/// The readahead pool of one tier.
#[derive(Default)]
pub struct Readahead {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Readahead {
    /// Splits `[offset, offset + len)` into extent-sized jobs and queues as many as fit;
    /// returns the end of the last queued job (`offset` if none fit). Starts the workers on
    /// first use.
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &self,
        tier: &Arc<DeviceTier>,
        file: FileId,
        file_size: u64,
        offset: u64,
        len: u64,
        seq: InvalidationSeq,
        src: &SharedSource,
    ) -> u64 {
        let end = offset.saturating_add(len).min(file_size);
        let mut pos = offset;
        {
            let mut q = lock(&self.shared.queue);
            while pos < end && q.jobs.len() < RA_QUEUE_JOBS {
                let piece_end = end.min((pos / HUGE_PAGE_SIZE + 1) * HUGE_PAGE_SIZE);
                q.jobs.push_back(Job {
                    tier: Arc::downgrade(tier),
                    file,
                    file_size,
                    offset: pos,
                    len: piece_end - pos,
                    seq,
                    src: src.clone(),
                });
                pos = piece_end;
            }
        }
        if pos > offset {
            self.shared.work.notify_all();
            self.start();
        }
        pos
    }

    fn start(&self) {
        let mut threads = lock(&self.threads);
        while threads.len() < RA_THREADS {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
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
        let me = std::thread::current().id();
        for h in std::mem::take(&mut *lock(&self.threads)) {
            // The last tier reference may be dropped by a worker finishing a job: that
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
        if let Some(tier) = job.tier.upgrade() {
            tier.run_readahead(&job);
        }
        let file = job.file;
        // The job's source (an open backing file) is closed before the job
        // counts as finished, so a cancelled file is really let go.
        drop(job);
        let mut q = lock(&shared.queue);
        q.running -= 1;
        if let Some(i) = q.running_files.iter().position(|f| *f == file) {
            q.running_files.swap_remove(i);
        }
        shared.idle.notify_all();
    }
}
