//! Fills: reading storage into reserved arena folios and installing them.
//!
//! # Freshness
//! State is sharded by file ([`SHARDS`](crate::tier::SHARDS) shards). A fault reserves its
//! folios and marks them `Filling` in the file's page map under the shard lock, remembers
//! the file's [`InvalidationSeq`], drops the lock, reads storage **directly into the arena
//! memory** (page-aligned, so `O_DIRECT` works), re-locks and installs only if the sequence is
//! unchanged; otherwise the folio is freed and `discarded_fills` counted. Every invalidation
//! bumps the sequence (from a tier-wide counter, so values never repeat). Concurrent faults
//! of the same page do one storage read: the others wait on the shard's condition variable.
//! Readers *pin* a resident folio by cloning its `Arc` under the shard lock and copy after
//! unlocking; a folio's memory returns to the arena only when the last pin drops, eviction
//! skips pinned folios, and a split waits (yielding) for pins to drain — pins are held only
//! across one memcpy or one reply write (`read.rs`: a read that lies in one
//! huge page goes to the FUSE reply straight from the arena), never while blocking or locking.

use std::io;

use crate::tier::folio::{Folio, contiguous_mut};
use crate::tier::map::Entry;
use crate::tier::policy::FolioKey;
use crate::tier::stats::add;
use crate::tier::sync::{Arc, lock};
use crate::tier::types::{
    FileId, FillSource, HUGE_PAGE_SIZE, InvalidationSeq, PAGE_SIZE, SLOTS_PER_CHUNK,
};
use crate::tier::{DeviceTier, remove_state};

/// An in-flight fill: folios reserved as `Filling` under `keys`. Dropping it unfinished (an
/// error or a panic in the `FillSource`) removes the `Filling` entries and wakes waiters, so
/// nothing half-filled is ever installed or waited on forever.
pub(super) struct Fill<'t> {
    pub(super) tier: &'t DeviceTier,
    pub(super) file: FileId,
    pub(super) seq: InvalidationSeq,
    pub(super) keys: Vec<FolioKey>,
    pub(super) folios: Vec<Folio>,
    /// A readahead fill: installed as not yet read.
    pub(super) speculative: bool,
}

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        if !self.folios.is_empty() {
            self.tier.finish_fill(self, false);
        }
    }
}

impl DeviceTier {
    /// Reads storage into the fill's folios: one `read_at` per run of folios that are
    /// consecutive in the arena, zero past EOF.
    pub(super) fn run_fill(
        &self,
        fill: &mut Fill<'_>,
        file_size: u64,
        src: &dyn FillSource,
    ) -> io::Result<()> {
        let mut i = 0;
        while i < fill.folios.len() {
            let f_start = if fill.keys[i].is_huge() {
                fill.keys[i].position() * HUGE_PAGE_SIZE
            } else {
                fill.keys[i].position() * PAGE_SIZE
            };
            let mut j = i + 1;
            while j < fill.folios.len()
                && fill.keys[j].position() == fill.keys[i].position() + (j - i) as u64
                && contiguous_mut(&mut fill.folios[i..=j]).is_some()
            {
                j += 1;
            }
            let buf = match contiguous_mut(&mut fill.folios[i..j]) {
                Some(b) => b,
                None => fill.folios[i].bytes_mut(),
            };
            let started = std::time::Instant::now();
            let got = read_fully(src, buf, f_start, file_size);
            add(&self.stats.fill_reads, 1);
            add(&self.stats.fill_nanos, started.elapsed().as_nanos() as u64);
            let got = got?;
            add(&self.stats.bytes_faulted, got as u64);
            i = j;
        }
        Ok(())
    }

    /// Installs (`ok`, and the file's sequence unchanged) or discards a fill; wakes waiters.
    pub(super) fn finish_fill(&self, fill: &mut Fill<'_>, ok: bool) {
        let shard = self.shard(fill.file);
        let mut g = lock(&shard.files);
        let keys = std::mem::take(&mut fill.keys);
        let folios = std::mem::take(&mut fill.folios);
        let mut discard = Vec::new();
        let mut installed = Vec::new();
        if let Some(st) = g.get_mut(&fill.file) {
            let valid = ok && st.seq() == fill.seq;
            for (key, folio) in keys.into_iter().zip(folios) {
                let ours = matches!(st.get(&key), Some(Entry::Filling(id)) if *id == folio.id());
                if ours && valid {
                    installed.push((key, folio.id()));
                    st.insert(key, Entry::Ready(Arc::new(folio)));
                } else {
                    if ours {
                        st.remove(&key);
                    }
                    discard.push(folio);
                }
            }
            if !installed.is_empty() {
                let mut policy = lock(&self.policy);
                for (k, id) in &installed {
                    self.track(st, &mut **policy, *k, *id, fill.speculative);
                    if fill.speculative {
                        st.unread.insert(*k);
                    }
                }
                drop(policy);
                let huge = installed.iter().filter(|(k, _)| k.is_huge()).count() as u64;
                add(&self.stats.resident_huge, huge);
                add(&self.stats.resident_base, installed.len() as u64 - huge);
                if self.cfg.huge_pages && huge == 0 {
                    let ext = installed[0].0.position() / SLOTS_PER_CHUNK as u64;
                    self.try_collapse(st, fill.file, ext);
                }
            }
            if st.is_empty() {
                remove_state(&mut g, fill.file);
            }
        } else {
            discard.extend(folios);
        }
        shard.wake_filled();
        drop(g);
        if ok {
            add(&self.stats.discarded_fills, discard.len() as u64);
        }
        drop(discard);
    }
}

/// Fills `buf` from storage at `offset` (both page-aligned), tolerating short reads at EOF;
/// everything past what storage returned, or past `file_size`, is zeroed. Returns bytes read.
pub(super) fn read_fully(
    src: &dyn FillSource,
    buf: &mut [u8],
    offset: u64,
    file_size: u64,
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match src.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n.min(buf.len() - done);
                if n % PAGE_SIZE as usize != 0 {
                    break; // EOF: a further read would not be aligned.
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Storage ended before the size the caller saw: the file shrank (or was
    // replaced) since. Installing the zeros would serve bytes that were never
    // in the file, so the fill fails and the caller retries with a fresh size.
    let expected = file_size.saturating_sub(offset).min(buf.len() as u64) as usize;
    if done < expected {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "storage is shorter than the file size it reported: the file changed during the fill",
        ));
    }
    let valid = (file_size.saturating_sub(offset)).min(done as u64) as usize;
    buf[valid..].fill(0);
    Ok(done)
}

/// Reads file bytes `[from, to)` straight from storage into `out` through a page-aligned
/// bounce buffer (used when the arena has no space at all).
pub(super) fn bypass_read(
    src: &dyn FillSource,
    file_size: u64,
    from: u64,
    to: u64,
    out: &mut [u8],
) -> io::Result<()> {
    let a = from / PAGE_SIZE * PAGE_SIZE;
    let b = to.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let mut bounce = memmap2::MmapMut::map_anon((b - a) as usize)?;
    read_fully(src, &mut bounce, a, file_size)?;
    let s = (from - a) as usize;
    out.copy_from_slice(&bounce[s..s + out.len()]);
    Ok(())
}
