//! The fault path: serves a device read or a prefetch from resident folios and faults the
//! misses from storage into the arena.
//!
//! # Faulting policy
//! With huge pages on, a miss in extent `E` faults the whole huge page when **all** hold:
//! the access is *sequential* (the read starts where the previous device read of that file
//! ended — a file's first read at offset 0 counts — or is at least
//! [`SEQUENTIAL_MIN_READ`] = 128 KiB long, or it is a prefetch); `E` lies wholly inside the
//! file (tails use base pages, so a small file never pins 2 MiB); and no base page of `E` is
//! resident or being filled. Otherwise the missing 4 KiB pages the read touches are faulted
//! as base pages, preferring each page's *home slot* (page `i` of an extent in slot `i` of a
//! chunk already holding that extent's pages) so that a re-faulted extent can **collapse**
//! back into a huge page once all 512 pages sit in one chunk. A huge fault that finds no free
//! chunk evicts policy victims (a bounded scan; a base-page victim takes the other base pages
//! of its extent along); if no chunk frees it falls back to base pages (readahead gives up
//! instead); a base fault that cannot get a single slot (everything pinned or filling) reads
//! storage directly into the caller's buffer (a *bypass*). A fault never fails for lack of space.
//! Bytes past EOF in a tail page are zero and are never served.
//!
//! # Admission
//! The [`EvictionPolicy`] (chosen by name with [`policy_by_name`]; default [`DEFAULT_POLICY`],
//! see `evict.rs` for the measurements behind it) orders resident folios and also decides
//! *admission*: every miss is recorded with the policy, and when a read misses a page while
//! the arena is full the policy is asked whether evicting a victim for it pays off. If not,
//! the read is served straight from storage without installing the page (a bypass, counted
//! in `admission_refusals`); an explicit [`DeviceTier::prefetch`] always admits, readahead
//! stops. Capacity is never exceeded and a fault never fails for lack of space either way.
//!
//! # Fills and freshness
//! State is sharded by file ([`SHARDS`] shards). A fault reserves its folios and marks them
//! `Filling` in the file's page map under the shard lock, remembers the file's
//! [`InvalidationSeq`], drops the lock, reads storage **directly into the arena memory**
//! (page-aligned, so `O_DIRECT` works), re-locks and installs only if the sequence is
//! unchanged; otherwise the folio is freed and `discarded_fills` counted. Every invalidation
//! bumps the sequence (from a tier-wide counter, so values never repeat). Concurrent faults
//! of the same page do one storage read: the others wait on the shard's condition variable.
//! Readers *pin* a resident folio by cloning its `Arc` under the shard lock and copy after
//! unlocking; a folio's memory returns to the arena only when the last pin drops, eviction
//! skips pinned folios, and a split waits (yielding) for pins to drain — pins are held only
//! across one memcpy or one reply write ([`DeviceTier::read_resident`]: a hit that lies in one
//! huge page goes to the FUSE reply straight from the arena), never while blocking or locking.

use std::io;

use crate::tier::DeviceTier;
use crate::tier::arena::Need;
use crate::tier::folio::{Folio, contiguous_mut};
use crate::tier::hint::Hint;
use crate::tier::map::{Entry, FileState};
use crate::tier::policy::FolioKey;
use crate::tier::stats::add;
use crate::tier::sync::{Arc, lock, wait};
use crate::tier::types::{
    BASE_EVICT_ROUNDS, FileId, FillSource, HUGE_EVICT_ROUNDS, HUGE_PAGE_SIZE, InvalidationSeq,
    PAGE_SIZE, SEQUENTIAL_MIN_READ, SLOTS_PER_CHUNK,
};

/// Per-call accounting of one read or prefetch.
#[derive(Default)]
pub(super) struct Acct {
    pub(super) hits: u64,
    pub(super) misses: u64,
    pub(super) bypass: u64,
    pub(super) resident_bytes: u64,
    pub(super) faulted_bytes: u64,
    pub(super) skipped_bytes: u64,
    pub(super) refused: u64,
}

/// Bytes of a resident folio, pinned for one reply (see [`DeviceTier::read_resident`]).
pub struct ResidentBytes {
    pub(super) folio: Arc<Folio>,
    pub(super) range: std::ops::Range<usize>,
}

impl std::ops::Deref for ResidentBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.folio.bytes()[self.range.clone()]
    }
}

/// What a device read with readahead served (see [`DeviceTier::read_with_readahead`]).
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

/// How a device read relates to the file's previous one (see [`DeviceTier::note_read`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Access {
    /// May fault huge pages.
    pub(super) sequential: bool,
    /// Opens or advances readahead.
    pub(super) readahead: bool,
    /// Starts exactly where the previous read ended: the folio it starts in (if the read
    /// starts inside one) was already counted as used by the previous read.
    pub(super) continues: bool,
}

impl Access {
    /// Prefetch and readahead: sequential, not a use of anything.
    pub(super) const INTERNAL: Access = Access {
        sequential: true,
        readahead: false,
        continues: false,
    };
}

/// Who asks [`DeviceTier::serve`] for pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    /// A device read: subject to admission; refused pages are bypassed.
    Read,
    /// An explicit prefetch: always admitted.
    Prefetch,
    /// Readahead: subject to admission; a refused page, or a huge page for which no chunk
    /// frees, ends the job (never a bypass or a fall-back to base pages).
    Readahead,
}

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
    /// A device read whose bookkeeping under the shard lock is `begin(state, end)`. With
    /// `pin`, a read that lies in one huge page as served comes back pinned, not copied.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn read_with(
        &self,
        file: FileId,
        file_size: u64,
        offset: u64,
        out: &mut [u8],
        pin: bool,
        src: &dyn FillSource,
        begin: impl FnOnce(&mut FileState, u64) -> Access,
    ) -> io::Result<Served> {
        add(&self.stats.reads, 1);
        if offset >= file_size || out.is_empty() {
            return Ok(Served::Copied(0));
        }
        let end = offset.saturating_add(out.len() as u64).min(file_size);
        let access = {
            let mut g = lock(&self.shard(file).files);
            begin(self.state(&mut g, file), end)
        };
        self.read_sequential(file, file_size, offset, end, out, pin, access, src)
    }

    /// Access-pattern detection for a read of `[offset, end)` (hints override); remembers
    /// `end`.
    pub(super) fn note_read(st: &mut FileState, offset: u64, end: u64) -> Access {
        let continues = offset == st.last_end;
        st.last_end = end;
        let (sequential, readahead) = match st.hint {
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

    /// The body of [`DeviceTier::read`] once sequential detection is done.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn read_sequential(
        &self,
        file: FileId,
        file_size: u64,
        offset: u64,
        end: u64,
        out: &mut [u8],
        pin: bool,
        access: Access,
        src: &dyn FillSource,
    ) -> io::Result<Served> {
        let n = (end - offset) as usize;
        let mut acct = Acct::default();
        let mut pinned = None;
        let r = self.serve(
            file,
            file_size,
            offset,
            end,
            Some(&mut out[..n]),
            pin.then_some(&mut pinned),
            access,
            Mode::Read,
            src,
            &mut acct,
        );
        add(&self.stats.admission_refusals, acct.refused);
        add(&self.stats.hits, acct.hits);
        add(&self.stats.misses, acct.misses);
        add(&self.stats.lookups, acct.hits + acct.misses);
        add(&self.stats.bypass_reads, acct.bypass);
        r.map(|()| {
            add(&self.stats.bytes_served, n as u64);
            match pinned {
                Some(bytes) => Served::Resident(bytes),
                None => Served::Copied(n),
            }
        })
    }

    /// Makes `[start, end)` (inside the file) resident piece by piece and copies it into
    /// `out` (which covers exactly `[start, end)`) when given. With `pin`, a range that lies
    /// in one huge page is pinned into it instead of copied, a fresh fill included: the fill
    /// is installed first and pinned on the next round, so it is served from the arena (if an
    /// invalidation or eviction beat the pin, the extent is faulted again and copied). Progress
    /// is guaranteed: each iteration serves at least one page (from a resident folio, a fresh
    /// fill, or a bypass) or waits for another thread's fill to finish.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn serve(
        &self,
        file: FileId,
        file_size: u64,
        start: u64,
        end: u64,
        mut out: Option<&mut [u8]>,
        mut pin: Option<&mut Option<ResidentBytes>>,
        access: Access,
        mode: Mode,
        src: &dyn FillSource,
        acct: &mut Acct,
    ) -> io::Result<()> {
        let shard = self.shard(file);
        let mut pos = start;
        let mut failures_at: (u64, u32, u32) = (u64::MAX, 0, 0); // (extent, huge, base) rounds
        let mut recorded_at = u64::MAX; // the miss at this position was told to the policy
        let mut pin_filled = u64::MAX; // extent this call faulted and installed, to pin
        while pos < end {
            let ext = pos / HUGE_PAGE_SIZE;
            let ext_start = ext * HUGE_PAGE_SIZE;
            let piece_end = end.min(ext_start + HUGE_PAGE_SIZE);
            if failures_at.0 != ext {
                failures_at = (ext, 0, 0);
            }
            let mut g = lock(&shard.files);
            let st = self.state(&mut g, file);

            // 1. A resident huge page serves the whole piece.
            match st.huge.get(&ext) {
                Some(Entry::Ready(f)) => {
                    let folio = f.clone();
                    if pin_filled != ext {
                        let entered = Self::enters(access, mode, start, pos, ext_start);
                        let key = FolioKey::huge(file, ext);
                        let first_read = mode != Mode::Readahead && st.unread.remove(&key);
                        self.touch(&[key], entered, mode, first_read);
                        acct.hits += 1;
                        acct.resident_bytes += piece_end - pos;
                    } // else: this call's own fill, counted as its miss when it was made
                    drop(g);
                    match pin.as_deref_mut() {
                        Some(slot) if pos == start && piece_end == end => {
                            *slot = Some(ResidentBytes {
                                folio,
                                range: (pos - ext_start) as usize..(end - ext_start) as usize,
                            });
                        }
                        _ => copy_out(&mut out, start, pos, piece_end, folio.bytes(), ext_start),
                    }
                    pos = piece_end;
                    continue;
                }
                Some(Entry::Filling(_)) => {
                    drop(wait(&shard.filled, g));
                    continue;
                }
                None => {}
            }

            // 2. A run of resident base pages starting at `pos`.
            let first_page = pos / PAGE_SIZE;
            let last_page = (piece_end - 1) / PAGE_SIZE;
            match st.base.get(&first_page) {
                Some(Entry::Ready(_)) => {
                    let mut pins = Vec::new();
                    for (&p, e) in st.base.range(first_page..=last_page) {
                        match e {
                            Entry::Ready(f) if p == first_page + pins.len() as u64 => {
                                pins.push(f.clone())
                            }
                            _ => break,
                        }
                    }
                    let keys: Vec<FolioKey> = (0..pins.len() as u64)
                        .map(|i| FolioKey::base(file, first_page + i))
                        .collect();
                    let entered = Self::enters(access, mode, start, pos, first_page * PAGE_SIZE);
                    let first_read = mode != Mode::Readahead
                        && !st.unread.is_empty()
                        && keys.iter().fold(false, |any, k| st.unread.remove(k) | any);
                    self.touch(&keys, entered, mode, first_read);
                    drop(g);
                    let run_end = piece_end.min((first_page + pins.len() as u64) * PAGE_SIZE);
                    for (i, pin) in pins.iter().enumerate() {
                        let p_start = (first_page + i as u64) * PAGE_SIZE;
                        let (a, b) = (pos.max(p_start), run_end.min(p_start + PAGE_SIZE));
                        copy_out(&mut out, start, a, b, pin.bytes(), p_start);
                    }
                    acct.hits += pins.len() as u64;
                    acct.resident_bytes += run_end - pos;
                    drop(pins);
                    pos = run_end;
                    continue;
                }
                Some(Entry::Filling(_)) => {
                    drop(wait(&shard.filled, g));
                    continue;
                }
                None => {}
            }

            // 3. A miss at `pos`: fault a huge page or a run of base pages.
            let want_huge = self.cfg.huge_pages
                && access.sequential
                && st.hint != Hint::Random
                && ext_start + HUGE_PAGE_SIZE <= file_size
                && failures_at.1 < HUGE_EVICT_ROUNDS
                && st.base_in_extent(ext).next().is_none();
            let run = match st.base.range(first_page..=last_page).next() {
                Some((&p, _)) => p - first_page,
                None => last_page + 1 - first_page,
            } as usize;
            if recorded_at != pos && mode == Mode::Read {
                recorded_at = pos;
                let mut policy = lock(&self.policy);
                if want_huge {
                    if Self::enters(access, mode, start, pos, ext_start) {
                        policy.record_miss(&FolioKey::huge(file, ext));
                    }
                } else {
                    let skip = !Self::enters(access, mode, start, pos, first_page * PAGE_SIZE);
                    for i in u64::from(skip)..run as u64 {
                        policy.record_miss(&FolioKey::base(file, first_page + i));
                    }
                }
            }
            let (keys, folios) = if want_huge {
                match self.arena.alloc_huge() {
                    Some(f) => (vec![FolioKey::huge(file, ext)], vec![f]),
                    None => {
                        drop(g);
                        failures_at.1 += 1;
                        let admitted = mode == Mode::Prefetch
                            || lock(&self.policy).admit(&FolioKey::huge(file, ext));
                        if !admitted {
                            // Fall back to base pages: free slots, or admission per page.
                            failures_at.1 = HUGE_EVICT_ROUNDS;
                            continue;
                        }
                        if !self.evict(Need::Chunk) || failures_at.1 >= HUGE_EVICT_ROUNDS {
                            if mode == Mode::Readahead {
                                // Readahead does not scatter an extent over base pages (that
                                // fragments the arena for the huge faults that follow): the
                                // job ends, and the reader faults the extent if it gets there.
                                add(&self.stats.readahead_dropped, end - pos);
                                return Ok(());
                            }
                            failures_at.1 = HUGE_EVICT_ROUNDS;
                            add(&self.stats.huge_fallbacks, 1);
                        }
                        continue;
                    }
                }
            } else {
                let home = if self.cfg.huge_pages {
                    st.home_chunk(ext)
                        .map(|c| (c, (first_page % SLOTS_PER_CHUNK as u64) as u16))
                } else {
                    None
                };
                let folios = self.arena.alloc_base(run, home);
                if folios.is_empty() {
                    drop(g);
                    failures_at.2 += 1;
                    let admitted = mode == Mode::Prefetch
                        || lock(&self.policy).admit(&FolioKey::base(file, first_page));
                    if !admitted {
                        acct.refused += 1;
                        if mode == Mode::Readahead {
                            return Ok(());
                        }
                        failures_at.2 = BASE_EVICT_ROUNDS + 1;
                    }
                    if failures_at.2 <= BASE_EVICT_ROUNDS && self.evict(Need::Slots(run)) {
                        continue;
                    }
                    // No slot can be had: serve this run straight from storage.
                    let run_end = piece_end.min((first_page + run as u64) * PAGE_SIZE);
                    match out.as_deref_mut() {
                        Some(o) => {
                            bypass_read(
                                src,
                                file_size,
                                pos,
                                run_end,
                                &mut o[(pos - start) as usize..(run_end - start) as usize],
                            )?;
                            acct.misses += run_end.div_ceil(PAGE_SIZE) - first_page;
                            acct.bypass += 1;
                        }
                        None => acct.skipped_bytes += run_end - pos,
                    }
                    failures_at.2 = 0;
                    pos = run_end;
                    continue;
                }
                let keys = (0..folios.len() as u64)
                    .map(|i| FolioKey::base(file, first_page + i))
                    .collect();
                (keys, folios)
            };
            for (k, f) in keys.iter().zip(&folios) {
                st.insert(*k, Entry::Filling(f.id()));
            }
            let mut fill = Fill {
                tier: self,
                file,
                seq: st.seq,
                keys,
                folios,
                speculative: mode == Mode::Readahead,
            };
            drop(g);

            self.run_fill(&mut fill, file_size, src)?;
            let served_end = if want_huge {
                piece_end
            } else {
                piece_end.min((first_page + fill.folios.len() as u64) * PAGE_SIZE)
            };
            // Once per extent: if the installed page is gone by the next round (invalidated
            // or evicted), the refault is copied, so a reader always makes progress.
            if want_huge && pin.is_some() && pos == start && piece_end == end && pin_filled != ext {
                acct.misses += 1;
                acct.faulted_bytes += served_end - pos;
                self.finish_fill(&mut fill, true);
                pin_filled = ext;
                continue; // pinned next round, without a copy
            }
            // The fill is ours alone until installed: copy straight from it. Data read from
            // storage during this call is fresh even if an invalidation races the install.
            for (k, f) in fill.keys.iter().zip(&fill.folios) {
                let f_start = if k.is_huge() {
                    ext_start
                } else {
                    k.position() * PAGE_SIZE
                };
                let (a, b) = (pos.max(f_start), served_end.min(f_start + f.len() as u64));
                copy_out(&mut out, start, a, b, f.bytes(), f_start);
            }
            acct.misses += fill.folios.len() as u64;
            acct.faulted_bytes += served_end - pos;
            self.finish_fill(&mut fill, true);
            pos = served_end;
        }
        Ok(())
    }

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
            let valid = ok && st.seq == fill.seq;
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
                g.remove(&fill.file);
            }
        } else {
            discard.extend(folios);
        }
        shard.filled.notify_all();
        drop(g);
        if ok {
            add(&self.stats.discarded_fills, discard.len() as u64);
        }
        drop(discard);
    }

    /// Whether a `mode` read of `[start, ..)`, now at `pos`, *enters* the folio starting at
    /// `folio_start` — a new use of it for the policy — rather than continuing inside a folio
    /// the file's previous read already used (a sequential reader's 1 MiB reads of a 2 MiB
    /// page are one use, like one 4 KiB read of a 4 KiB page). Prefetch and readahead are
    /// never uses.
    pub(super) fn enters(
        access: Access,
        mode: Mode,
        start: u64,
        pos: u64,
        folio_start: u64,
    ) -> bool {
        mode == Mode::Read && !(access.continues && pos == start && pos != folio_start)
    }

    /// Tells the policy about resident folios being read: a use of each (the first only if
    /// `first_entered`, see [`DeviceTier::enters`]) for a device read, recency alone for a
    /// prefetch, nothing for readahead (its reader will come). Skipped if the policy is busy
    /// (an approximate order under contention keeps the hit path from queueing on a global
    /// lock) — unless this is the first read of a readahead folio (`first_read`), which the
    /// policy must see to stop treating it as speculative.
    pub(super) fn touch(
        &self,
        keys: &[FolioKey],
        first_entered: bool,
        mode: Mode,
        first_read: bool,
    ) {
        if mode == Mode::Readahead {
            return;
        }
        let policy = if first_read {
            Some(lock(&self.policy))
        } else {
            self.policy.try_lock().ok()
        };
        if let Some(mut p) = policy {
            for (i, k) in keys.iter().enumerate() {
                if mode == Mode::Read && (i > 0 || first_entered) {
                    p.touch(k);
                } else {
                    p.touch_again(k);
                }
            }
        }
    }
}

/// Copies file bytes `[from, to)` from a folio whose first byte is file offset `src_start`
/// into `out`, whose first byte is file offset `out_start`.
pub(super) fn copy_out(
    out: &mut Option<&mut [u8]>,
    out_start: u64,
    from: u64,
    to: u64,
    src: &[u8],
    src_start: u64,
) {
    if let Some(o) = out.as_deref_mut()
        && from < to
    {
        let (a, b) = ((from - out_start) as usize, (to - out_start) as usize);
        let s = (from - src_start) as usize;
        o[a..b].copy_from_slice(&src[s..s + (b - a)]);
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
