//! Readahead decisions: when a file is read sequentially, which extents ahead of the reader
//! to fault, queued as jobs on the tier's readahead pool (`readahead.rs`).
//!
//! Every device read ([`DeviceTier::read`]) that faults starts here: when a file is read
//! sequentially, the extents ahead of the reader are faulted by a small pool of tier
//! threads through an owned `Arc` source, in a window that grows on sustained sequential
//! reads and closes on a random one (`readahead.rs`). Readahead fills are ordinary fills:
//! the same `Filling` reservations and the same invalidation-sequence check.
//!
//! Window: the first sequential read (at offset 0, or continuing the previous read) opens a
//! window of [`RA_INITIAL_WINDOW`] past the read's end; every time the reader comes within
//! half a window of the frontier, the next window is issued and the window doubles, up to
//! [`RA_MAX_WINDOW`](crate::tier::RA_MAX_WINDOW) (`sequential` hint: starts at the maximum).
//! A read that does not continue the previous one closes the window; the `random` hint
//! disables readahead. A job carries the invalidation sequence seen when it was queued and
//! is dropped unstarted if the file was invalidated since. Readahead is speculative: when
//! the tier is full it is subject to the policy's admission, and a refused page ends the job
//! (never a bypass).

use crate::tier::DeviceTier;
use crate::tier::fault::{Access, FaultRequest, Mode, Outcome};
use crate::tier::hint::Hint;
use crate::tier::map::{Entry, FileState};
use crate::tier::readahead::Job;
use crate::tier::stats::add;
use crate::tier::sync::{Arc, lock};
use crate::tier::types::{
    FileId, FillSource, HUGE_PAGE_SIZE, InvalidationSeq, RA_INITIAL_WINDOW, RA_QUEUE_JOBS,
    SharedSource,
};

impl DeviceTier {
    /// The bookkeeping every device read starts with, under the file's shard lock: access
    /// detection (`note_read`) and readahead (open, advance or close the window).
    pub(super) fn begin_read(
        self: &Arc<Self>,
        st: &mut FileState,
        file: FileId,
        file_size: u64,
        offset: u64,
        end: u64,
        src: &SharedSource,
    ) -> Access {
        let access = Self::note_read(st, offset, end);
        if !access.continues {
            // A new pass (a read at 0 opens one; anything else closes the window).
            st.ra_window = 0;
            st.ra_next = 0;
        }
        if access.readahead {
            self.advance_readahead(st, file, file_size, end, src);
        }
        access
    }

    /// Issues the next readahead window if the reader (now at `end`) is within half a window
    /// of the frontier. Caller holds the shard lock (the queue lock nests inside it).
    pub(super) fn advance_readahead(
        self: &Arc<Self>,
        st: &mut FileState,
        file: FileId,
        file_size: u64,
        end: u64,
        src: &SharedSource,
    ) {
        let max = self.readahead_max;
        if max == 0 {
            return;
        }
        let window = match (st.ra_window, st.hint()) {
            (_, Hint::Sequential) => max,
            (0, _) => RA_INITIAL_WINDOW.min(max),
            (w, _) => w,
        };
        let frontier = st.ra_next.max(end);
        if frontier >= file_size || frontier - end >= window / 2 {
            st.ra_window = window;
            st.ra_next = frontier;
            return;
        }
        // Issue up to the window's end past the reader, aligned to an extent boundary.
        let target = (end + window)
            .next_multiple_of(HUGE_PAGE_SIZE)
            .min(file_size);
        // Resident huge pages at the frontier need no job (an epoch rereading what the tier
        // kept would otherwise wake a worker per extent for nothing).
        let mut frontier = frontier;
        while frontier < target
            && matches!(
                st.huge.get(&(frontier / HUGE_PAGE_SIZE)),
                Some(Entry::Ready(_))
            )
        {
            frontier = (frontier / HUGE_PAGE_SIZE + 1) * HUGE_PAGE_SIZE;
        }
        if frontier >= target {
            st.ra_window = (window * 2).min(max);
            st.ra_next = target;
            return;
        }
        let issued = self.submit_readahead(file, file_size, frontier, target, st.seq(), src);
        if issued < target {
            add(&self.stats.readahead_dropped, target - issued);
        }
        st.ra_next = issued;
        st.ra_window = (window * 2).min(max);
    }

    /// Queues extent-sized readahead jobs for `[offset, end)` while the pool has room;
    /// returns the end of the last queued one (`offset` if none fit).
    fn submit_readahead(
        self: &Arc<Self>,
        file: FileId,
        file_size: u64,
        offset: u64,
        end: u64,
        seq: InvalidationSeq,
        src: &SharedSource,
    ) -> u64 {
        let mut extents = Vec::new();
        let mut pos = offset;
        while pos < end && extents.len() < RA_QUEUE_JOBS {
            let piece_end = end.min((pos / HUGE_PAGE_SIZE + 1) * HUGE_PAGE_SIZE);
            extents.push(Extent {
                file,
                file_size,
                offset: pos,
                end: piece_end,
                seq,
            });
            pos = piece_end;
        }
        let jobs = extents
            .iter()
            .map(|&extent| {
                let tier = Arc::downgrade(self);
                let src = src.clone();
                Job {
                    file,
                    run: Box::new(move || {
                        if let Some(tier) = tier.upgrade() {
                            tier.run_readahead(extent, &*src);
                        }
                    }),
                }
            })
            .collect();
        let queued = self.readahead.submit(jobs);
        extents
            .get(queued.wrapping_sub(1))
            .map_or(offset, |e| e.end)
    }

    /// Runs one readahead job (on a readahead thread).
    fn run_readahead(&self, job: Extent, src: &dyn FillSource) {
        {
            let g = lock(&self.shard(job.file).files);
            if g.get(&job.file).is_none_or(|st| st.seq() != job.seq) {
                return; // invalidated since it was queued
            }
        }
        let req = FaultRequest {
            file: job.file,
            file_size: job.file_size,
            start: job.offset,
            end: job.end,
            access: Access::INTERNAL,
            mode: Mode::Readahead,
            pin: false,
        };
        let Outcome { acct, result } = self.serve(&req, None, src);
        add(&self.stats.readahead_bytes, acct.faulted_bytes);
        add(&self.stats.admission_refusals, acct.refused);
        if let Err(e) = result {
            tracing::debug!(file = job.file, offset = job.offset, error = %e, "readahead failed");
        }
    }
}

/// What one readahead job faults: `[offset, end)` of `file` (size `file_size` and
/// invalidation sequence `seq` when queued), at most one extent.
#[derive(Clone, Copy, Debug)]
struct Extent {
    file: FileId,
    file_size: u64,
    offset: u64,
    end: u64,
    seq: InvalidationSeq,
}
