//! Device reads, below the facade's entry point (`DeviceTier::read`, which sequences them and
//! retries a read whose file shrank during a fill): access detection, the pinned hit in one
//! resident huge page (one lock, no copy), and the read that faults through `fault.rs`.
//!
//! A read *pins* what it serves by cloning the folio's `Arc` under the shard lock; pins are
//! held only across one memcpy or one reply write, never while blocking or locking, so a
//! split that waits for them (`huge.rs`) does not wait long.

use std::io;

use crate::tier::DeviceTier;
use crate::tier::fault::{Access, FaultRequest, Mode, Outcome, ResidentBytes};
use crate::tier::hint::Hint;
use crate::tier::map::{Entry, FileState};
use crate::tier::policy::FolioKey;
use crate::tier::stats::add;
use crate::tier::sync::{Arc, lock};
use crate::tier::types::{FileId, HUGE_PAGE_SIZE, SEQUENTIAL_MIN_READ, SharedSource};

/// What a device read with readahead served (see [`DeviceTier::read`]).
pub enum Served {
    /// This many bytes, copied into the caller's buffer.
    Copied(usize),
    /// The bytes in place in the tier, pinned for one reply.
    Resident(ResidentBytes),
}

impl Served {
    /// The number of bytes served, copied into `out` (the buffer the read was given) if they
    /// are not there yet: for callers that want them in a buffer (tests, benchmarks).
    pub fn into_copied(self, out: &mut [u8]) -> usize {
        match self {
            Served::Copied(n) => n,
            Served::Resident(bytes) => {
                out[..bytes.len()].copy_from_slice(&bytes);
                bytes.len()
            }
        }
    }
}

impl DeviceTier {
    /// Access-pattern detection for a read of `[offset, end)` (hints override); remembers
    /// `end`.
    pub(super) fn note_read(st: &mut FileState, offset: u64, end: u64) -> Access {
        let continues = offset == st.last_end;
        st.last_end = end;
        let (sequential, readahead) = match st.hint() {
            Hint::Random => (false, false),
            Hint::Sequential => (true, true),
            _ => (
                continues || end - offset >= SEQUENTIAL_MIN_READ,
                continues || offset == 0,
            ),
        };
        Access {
            sequential,
            readahead,
            continues,
        }
    }

    /// The read without a copy, when it can be had: if the bytes `[offset, offset + len)`
    /// (clipped to `file_size`, non-empty) lie in one resident huge page, the read is
    /// accounted and served as a pin of that page. Otherwise returns `None` having done
    /// nothing. Hold the result only while handing the bytes on (one reply): a split of the
    /// page waits for it.
    pub(super) fn read_resident(
        self: &Arc<Self>,
        file: FileId,
        file_size: u64,
        offset: u64,
        len: u64,
        src: &SharedSource,
    ) -> Option<ResidentBytes> {
        let end = offset.saturating_add(len).min(file_size);
        if offset >= end {
            return None;
        }
        let ext = offset / HUGE_PAGE_SIZE;
        let ext_start = ext * HUGE_PAGE_SIZE;
        if end > ext_start + HUGE_PAGE_SIZE {
            return None;
        }
        let mut g = lock(&self.shard(file).files);
        let st = g.get_mut(&file)?;
        let Some(Entry::Ready(f)) = st.huge.get(&ext) else {
            return None;
        };
        let folio = f.clone();
        let access = self.begin_read(st, file, file_size, offset, end, src);
        let key = FolioKey::huge(file, ext);
        let first_read = st.unread.remove(&key);
        // A new use unless the read continues inside the page its predecessor used.
        let entered = !(access.continues && offset != ext_start);
        self.touch(&[key], entered, Mode::Read, first_read);
        drop(g);
        add(&self.stats.reads, 1);
        add(&self.stats.hits, 1);
        add(&self.stats.lookups, 1);
        add(&self.stats.bytes_served, end - offset);
        Some(ResidentBytes {
            folio,
            range: (offset - ext_start) as usize..(end - ext_start) as usize,
        })
    }

    /// A device read with readahead that may fault: copies file bytes `[offset, offset +
    /// out.len())` clipped to `file_size` into `out`, hits from the arena, misses faulted
    /// through `src` first; a read that continues the file's previous one (or starts at 0)
    /// opens or advances the readahead window first, so readahead and this read overlap. A
    /// read that lies in one huge page as served, a fresh fault included, comes back pinned
    /// ([`Served::Resident`]). A storage error is returned as is; `UnexpectedEof` means the
    /// file shrank below `file_size` during the fill.
    pub(super) fn read_faulting(
        self: &Arc<Self>,
        file: FileId,
        file_size: u64,
        offset: u64,
        out: &mut [u8],
        src: &SharedSource,
    ) -> io::Result<Served> {
        add(&self.stats.reads, 1);
        if offset >= file_size || out.is_empty() {
            return Ok(Served::Copied(0));
        }
        let end = offset.saturating_add(out.len() as u64).min(file_size);
        let access = {
            let mut g = lock(&self.shard(file).files);
            let st = self.state(&mut g, file);
            self.begin_read(st, file, file_size, offset, end, src)
        };
        let req = FaultRequest {
            file,
            file_size,
            start: offset,
            end,
            access,
            mode: Mode::Read,
            pin: true,
        };
        let n = (end - offset) as usize;
        let Outcome { acct, result } = self.serve(&req, Some(&mut out[..n]), &**src);
        add(&self.stats.admission_refusals, acct.refused);
        add(&self.stats.hits, acct.hits);
        add(&self.stats.misses, acct.misses);
        add(&self.stats.lookups, acct.hits + acct.misses);
        add(&self.stats.bypass_reads, acct.bypass);
        let pinned = result?;
        add(&self.stats.bytes_served, n as u64);
        Ok(match pinned {
            Some(bytes) => Served::Resident(bytes),
            None => Served::Copied(n),
        })
    }
}
