//! The fault path: serves a device read or a prefetch from resident folios and faults the
//! misses from storage into the arena.
//!
//! # Faulting policy
//! With huge pages on, a miss in extent `E` faults the whole huge page when **all** hold:
//! the access is *sequential* (the read starts where the previous device read of that file
//! ended — a file's first read at offset 0 counts — or is at least
//! [`SEQUENTIAL_MIN_READ`](crate::tier::SEQUENTIAL_MIN_READ) = 128 KiB long, or it is a
//! prefetch); `E` lies wholly inside the file (tails use base pages, so a small file never
//! pins 2 MiB); and no base page of `E` is
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
//! The [`EvictionPolicy`](crate::tier::EvictionPolicy) (chosen by name with
//! [`policy_by_name`](crate::tier::policy_by_name); default
//! [`DEFAULT_POLICY`](crate::tier::DEFAULT_POLICY),
//! see `policy/mod.rs` for the measurements behind it) orders resident folios and also decides
//! *admission*: every miss is recorded with the policy, and when a read misses a page while
//! the arena is full the policy is asked whether evicting a victim for it pays off. If not,
//! the read is served straight from storage without installing the page (a bypass, counted
//! in `admission_refusals`); an explicit [`DeviceTier::prefetch`] always admits, readahead
//! stops. Capacity is never exceeded and a fault never fails for lack of space either way.
//!
//! # Fills
//! How a fault reads storage and installs what it read, and why that is fresh: `fill.rs`.

use std::io;

use crate::tier::arena::Need;
use crate::tier::fill::{Fill, bypass_read};
use crate::tier::folio::Folio;
use crate::tier::hint::Hint;
use crate::tier::map::{Entry, FileState};
use crate::tier::policy::FolioKey;
use crate::tier::stats::add;
use crate::tier::sync::{Arc, lock};
use crate::tier::types::{
    BASE_EVICT_ROUNDS, FileId, FillSource, HUGE_EVICT_ROUNDS, HUGE_PAGE_SIZE, PAGE_SIZE,
    SLOTS_PER_CHUNK,
};
use crate::tier::{DeviceTier, ShardGuard};

/// Per-call accounting of one read, prefetch or readahead job.
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

/// One call of the fault path: make `[start, end)` of `file` (inside the file, whose size
/// was `file_size` when the caller looked) resident for `mode`.
#[derive(Clone, Copy, Debug)]
pub(super) struct FaultRequest {
    pub(super) file: FileId,
    pub(super) file_size: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) access: Access,
    pub(super) mode: Mode,
    /// A read that lies in one huge page as served may come back pinned instead of copied.
    pub(super) pin: bool,
}

impl FaultRequest {
    /// Whether this request, now at `pos`, *enters* the folio starting at `folio_start` — a
    /// new use of it for the policy — rather than continuing inside a folio the file's
    /// previous read already used (a sequential reader's 1 MiB reads of a 2 MiB page are one
    /// use, like one 4 KiB read of a 4 KiB page). Prefetch and readahead are never uses.
    fn enters(&self, pos: u64, folio_start: u64) -> bool {
        self.mode == Mode::Read
            && !(self.access.continues && pos == self.start && pos != folio_start)
    }

    /// Whether the piece `[pos, piece_end)` is the whole request and may be served pinned.
    fn pins_whole(&self, pos: u64, piece_end: u64) -> bool {
        self.pin && pos == self.start && piece_end == self.end
    }
}

/// The rest of a request inside the extent the current position lies in.
#[derive(Clone, Copy, Debug)]
struct Piece {
    pos: u64,
    ext: u64,
    ext_start: u64,
    /// End of the piece: the request's end or the extent's, whichever comes first.
    end: u64,
    first_page: u64,
    last_page: u64,
}

impl Piece {
    fn at(pos: u64, request_end: u64) -> Piece {
        let ext = pos / HUGE_PAGE_SIZE;
        let ext_start = ext * HUGE_PAGE_SIZE;
        let end = request_end.min(ext_start + HUGE_PAGE_SIZE);
        Piece {
            pos,
            ext,
            ext_start,
            end,
            first_page: pos / PAGE_SIZE,
            last_page: (end - 1) / PAGE_SIZE,
        }
    }

    /// End of a run of `pages` base pages starting at the piece's first page, within it.
    fn run_end(&self, pages: u64) -> u64 {
        self.end.min((self.first_page + pages) * PAGE_SIZE)
    }
}

/// Failed attempts to make room in one extent.
#[derive(Debug, Default)]
struct Rounds {
    ext: u64,
    /// Eviction rounds for a free chunk.
    huge: u32,
    /// The extent is faulted as base pages from now on.
    huge_given_up: bool,
    /// Eviction rounds for free slots.
    base: u32,
}

impl Rounds {
    /// Starts counting afresh when the position moved to another extent.
    fn enter(&mut self, ext: u64) {
        if self.ext != ext {
            *self = Rounds {
                ext,
                ..Rounds::default()
            };
        }
    }
}

/// Progress of one [`DeviceTier::serve`] call.
struct Cursor<'o> {
    /// Where served bytes are copied; covers exactly the request (`None`: prefetch,
    /// readahead).
    out: Option<&'o mut [u8]>,
    out_start: u64,
    pos: u64,
    acct: Acct,
    rounds: Rounds,
    /// The position whose miss the policy was told of (once per position).
    miss_recorded: Option<u64>,
    /// The extent this call faulted and installed to serve it pinned on the next round.
    filled_to_pin: Option<u64>,
    /// The whole request, pinned in one huge page.
    pinned: Option<ResidentBytes>,
}

impl Cursor<'_> {
    /// Copies file bytes `[from, to)` from a folio whose first byte is file offset
    /// `src_start` into `out`, if there is one.
    fn copy(&mut self, from: u64, to: u64, src: &[u8], src_start: u64) {
        if let Some(o) = self.out.as_deref_mut()
            && from < to
        {
            let (a, b) = (
                (from - self.out_start) as usize,
                (to - self.out_start) as usize,
            );
            let s = (from - src_start) as usize;
            o[a..b].copy_from_slice(&src[s..s + (b - a)]);
        }
    }
}

/// What the loop of [`DeviceTier::serve`] does after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Look at the (possibly advanced) position again.
    Continue,
    /// End the call here (readahead gives up).
    Stop,
}

/// What [`DeviceTier::serve`] did.
pub(super) struct Outcome {
    pub(super) acct: Acct,
    /// `Some` if the request was served pinned (see [`FaultRequest::pin`]), else copied.
    pub(super) result: io::Result<Option<ResidentBytes>>,
}

/// Bytes of a resident folio, pinned for one reply (see `DeviceTier::read`).
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

/// How a device read relates to the file's previous one (see `read.rs`).
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

/// What the position of a [`DeviceTier::serve`] call finds in the page map.
enum Found {
    /// A resident huge page: serves the whole piece.
    Huge(Arc<Folio>),
    /// Resident base pages from the position on (consecutive, at least one).
    BaseRun(Vec<Arc<Folio>>),
    /// Another thread is filling the page: wait for it.
    Filling,
    Miss,
}

impl DeviceTier {
    /// Makes the request resident piece by piece and copies it into `out` (which covers
    /// exactly `[start, end)`) when given. With [`FaultRequest::pin`], a request that lies in
    /// one huge page is pinned into it instead of copied, a fresh fill included: the fill is
    /// installed first and pinned on the next round, so it is served from the arena (if an
    /// invalidation or eviction beat the pin, the extent is faulted again and copied).
    /// Progress is guaranteed: each round serves at least one page (from a resident folio,
    /// a fresh fill, or a bypass) or waits for another thread's fill to finish.
    pub(super) fn serve(
        &self,
        req: &FaultRequest,
        out: Option<&mut [u8]>,
        src: &dyn FillSource,
    ) -> Outcome {
        let mut cur = Cursor {
            out,
            out_start: req.start,
            pos: req.start,
            acct: Acct::default(),
            rounds: Rounds::default(),
            miss_recorded: None,
            filled_to_pin: None,
            pinned: None,
        };
        let result = self.serve_rounds(req, &mut cur, src);
        Outcome {
            result: result.map(|()| cur.pinned.take()),
            acct: cur.acct,
        }
    }

    /// The loop of [`DeviceTier::serve`]: one piece per round.
    fn serve_rounds(
        &self,
        req: &FaultRequest,
        cur: &mut Cursor<'_>,
        src: &dyn FillSource,
    ) -> io::Result<()> {
        let shard = self.shard(req.file);
        while cur.pos < req.end {
            let piece = Piece::at(cur.pos, req.end);
            cur.rounds.enter(piece.ext);
            let mut g = lock(&shard.files);
            let st = self.state(&mut g, req.file);
            match Self::find(st, &piece) {
                Found::Huge(folio) => {
                    self.note_huge_hit(req, cur, st, &piece);
                    drop(g);
                    Self::serve_huge(req, cur, &piece, folio);
                }
                Found::BaseRun(pins) => {
                    self.note_base_hits(req, cur, st, &piece, pins.len());
                    drop(g);
                    Self::serve_base_run(cur, &piece, &pins);
                }
                Found::Filling => drop(shard.wait_filled(g)),
                Found::Miss => {
                    if self.fault(req, cur, g, &piece, src)? == Next::Stop {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// What the piece's position finds: a resident huge page, a run of resident base
    /// pages (pinned by cloning their `Arc`s), a fill in progress, or nothing.
    fn find(st: &FileState, piece: &Piece) -> Found {
        match st.huge.get(&piece.ext) {
            Some(Entry::Ready(f)) => return Found::Huge(f.clone()),
            Some(Entry::Filling(_)) => return Found::Filling,
            None => {}
        }
        let mut pins = Vec::new();
        for (&p, e) in st.base.range(piece.first_page..=piece.last_page) {
            match e {
                Entry::Ready(f) if p == piece.first_page + pins.len() as u64 => {
                    pins.push(f.clone())
                }
                Entry::Filling(_) if p == piece.first_page => return Found::Filling,
                _ => break,
            }
        }
        if pins.is_empty() {
            Found::Miss
        } else {
            Found::BaseRun(pins)
        }
    }

    /// Accounts a hit of the piece in a resident huge page and tells the policy, under the
    /// shard lock. A page this call faulted to pin was counted as its miss already.
    fn note_huge_hit(
        &self,
        req: &FaultRequest,
        cur: &mut Cursor<'_>,
        st: &mut FileState,
        piece: &Piece,
    ) {
        if cur.filled_to_pin == Some(piece.ext) {
            return;
        }
        let key = FolioKey::huge(req.file, piece.ext);
        let first_read = req.mode != Mode::Readahead && st.unread.remove(&key);
        let entered = req.enters(piece.pos, piece.ext_start);
        self.touch(&[key], entered, req.mode, first_read);
        cur.acct.hits += 1;
        cur.acct.resident_bytes += piece.end - piece.pos;
    }

    /// Serves the piece from a resident huge page (shard lock dropped): pinned if it is
    /// the whole request and the caller asked for a pin, else copied.
    fn serve_huge(req: &FaultRequest, cur: &mut Cursor<'_>, piece: &Piece, folio: Arc<Folio>) {
        if req.pins_whole(piece.pos, piece.end) {
            let range =
                (piece.pos - piece.ext_start) as usize..(piece.end - piece.ext_start) as usize;
            cur.pinned = Some(ResidentBytes { folio, range });
        } else {
            cur.copy(piece.pos, piece.end, folio.bytes(), piece.ext_start);
        }
        cur.pos = piece.end;
    }

    /// Accounts hits of `pages` resident base pages from the piece's position and tells the
    /// policy, under the shard lock.
    fn note_base_hits(
        &self,
        req: &FaultRequest,
        cur: &mut Cursor<'_>,
        st: &mut FileState,
        piece: &Piece,
        pages: usize,
    ) {
        let keys: Vec<FolioKey> = (0..pages as u64)
            .map(|i| FolioKey::base(req.file, piece.first_page + i))
            .collect();
        let entered = req.enters(piece.pos, piece.first_page * PAGE_SIZE);
        let first_read = req.mode != Mode::Readahead
            && !st.unread.is_empty()
            && keys.iter().fold(false, |any, k| st.unread.remove(k) | any);
        self.touch(&keys, entered, req.mode, first_read);
        cur.acct.hits += pages as u64;
        cur.acct.resident_bytes += piece.run_end(pages as u64) - piece.pos;
    }

    /// Copies a run of resident base pages (pinned in `pins`, shard lock dropped).
    fn serve_base_run(cur: &mut Cursor<'_>, piece: &Piece, pins: &[Arc<Folio>]) {
        let run_end = piece.run_end(pins.len() as u64);
        for (i, pin) in pins.iter().enumerate() {
            let p_start = (piece.first_page + i as u64) * PAGE_SIZE;
            let (a, b) = (piece.pos.max(p_start), run_end.min(p_start + PAGE_SIZE));
            cur.copy(a, b, pin.bytes(), p_start);
        }
        cur.pos = run_end;
    }

    /// A miss at the piece's position: faults a huge page (see the module docs for when) or
    /// the run of missing base pages there, reading storage without the shard lock; makes
    /// room (or bypasses) when the arena has none.
    fn fault(
        &self,
        req: &FaultRequest,
        cur: &mut Cursor<'_>,
        mut g: ShardGuard<'_>,
        piece: &Piece,
        src: &dyn FillSource,
    ) -> io::Result<Next> {
        let st = self.state(&mut g, req.file);
        let want_huge = self.cfg.huge_pages
            && req.access.sequential
            && st.hint() != Hint::Random
            && piece.ext_start + HUGE_PAGE_SIZE <= req.file_size
            && !cur.rounds.huge_given_up
            && st.base_in_extent(piece.ext).next().is_none();
        let run = match st.base.range(piece.first_page..=piece.last_page).next() {
            Some((&p, _)) => p - piece.first_page,
            None => piece.last_page + 1 - piece.first_page,
        };
        self.record_miss(req, cur, piece, want_huge, run);
        let reserved = if want_huge {
            self.arena
                .alloc_huge()
                .map(|f| (vec![FolioKey::huge(req.file, piece.ext)], vec![f]))
        } else {
            let home = self
                .cfg
                .huge_pages
                .then(|| st.home_chunk(piece.ext))
                .flatten();
            let slot = (piece.first_page % SLOTS_PER_CHUNK as u64) as u16;
            let folios = self.arena.alloc_base(run as usize, home.map(|c| (c, slot)));
            let keys = (0..folios.len() as u64)
                .map(|i| FolioKey::base(req.file, piece.first_page + i))
                .collect();
            (!folios.is_empty()).then_some((keys, folios))
        };
        let Some((keys, folios)) = reserved else {
            drop(g);
            return if want_huge {
                Ok(self.make_room_huge(req, cur, piece))
            } else {
                self.make_room_base(req, cur, piece, run, src)
            };
        };
        for (k, f) in keys.iter().zip(&folios) {
            st.insert(*k, Entry::Filling(f.id()));
        }
        let mut fill = Fill {
            tier: self,
            file: req.file,
            seq: st.seq(),
            keys,
            folios,
            speculative: req.mode == Mode::Readahead,
        };
        drop(g);
        self.run_fill(&mut fill, req.file_size, src)?;
        self.serve_fill(req, cur, piece, fill);
        Ok(Next::Continue)
    }

    /// Tells the policy about the miss at the piece's position (a device read only, once
    /// per position): the huge page if one is wanted and entered, else each missing base
    /// page of the run (the first only if entered).
    fn record_miss(
        &self,
        req: &FaultRequest,
        cur: &mut Cursor<'_>,
        piece: &Piece,
        want_huge: bool,
        run: u64,
    ) {
        if req.mode != Mode::Read || cur.miss_recorded == Some(piece.pos) {
            return;
        }
        cur.miss_recorded = Some(piece.pos);
        let mut policy = lock(&self.policy);
        if want_huge {
            if req.enters(piece.pos, piece.ext_start) {
                policy.record_miss(&FolioKey::huge(req.file, piece.ext));
            }
        } else {
            let skip = !req.enters(piece.pos, piece.first_page * PAGE_SIZE);
            for i in u64::from(skip)..run {
                policy.record_miss(&FolioKey::base(req.file, piece.first_page + i));
            }
        }
    }

    /// No free chunk for a huge fault: evicts for one if the policy admits the page. After
    /// a refusal or [`HUGE_EVICT_ROUNDS`] failed rounds the extent falls back to base pages
    /// — except for readahead, which ends instead (scattering an extent over base pages
    /// fragments the arena for the huge faults that follow; the reader faults the extent if
    /// it gets there).
    fn make_room_huge(&self, req: &FaultRequest, cur: &mut Cursor<'_>, piece: &Piece) -> Next {
        cur.rounds.huge += 1;
        let admitted = req.mode == Mode::Prefetch
            || lock(&self.policy).admit(&FolioKey::huge(req.file, piece.ext));
        if !admitted {
            // Base pages: free slots, or admission per page.
            cur.rounds.huge_given_up = true;
            return Next::Continue;
        }
        if !self.evict(Need::Chunk) || cur.rounds.huge >= HUGE_EVICT_ROUNDS {
            if req.mode == Mode::Readahead {
                add(&self.stats.readahead_dropped, req.end - piece.pos);
                return Next::Stop;
            }
            cur.rounds.huge_given_up = true;
            add(&self.stats.huge_fallbacks, 1);
        }
        Next::Continue
    }

    /// No free slot for a base fault of `run` pages: evicts for them if the policy admits
    /// the page, up to [`BASE_EVICT_ROUNDS`] rounds; otherwise (or when refused) the run is
    /// read straight from storage — readahead ends instead.
    fn make_room_base(
        &self,
        req: &FaultRequest,
        cur: &mut Cursor<'_>,
        piece: &Piece,
        run: u64,
        src: &dyn FillSource,
    ) -> io::Result<Next> {
        cur.rounds.base += 1;
        let admitted = req.mode == Mode::Prefetch
            || lock(&self.policy).admit(&FolioKey::base(req.file, piece.first_page));
        if admitted {
            if cur.rounds.base <= BASE_EVICT_ROUNDS && self.evict(Need::Slots(run as usize)) {
                return Ok(Next::Continue);
            }
        } else {
            cur.acct.refused += 1;
            if req.mode == Mode::Readahead {
                return Ok(Next::Stop);
            }
        }
        self.bypass(req, cur, piece, run, src)?;
        Ok(Next::Continue)
    }

    /// No slot can be had: serves the run of `run` missing pages straight from storage into
    /// `out` (a prefetch skips it).
    fn bypass(
        &self,
        req: &FaultRequest,
        cur: &mut Cursor<'_>,
        piece: &Piece,
        run: u64,
        src: &dyn FillSource,
    ) -> io::Result<()> {
        let run_end = piece.run_end(run);
        match cur.out.as_deref_mut() {
            Some(o) => {
                let (a, b) = (
                    (piece.pos - cur.out_start) as usize,
                    (run_end - cur.out_start) as usize,
                );
                bypass_read(src, req.file_size, piece.pos, run_end, &mut o[a..b])?;
                cur.acct.misses += run_end.div_ceil(PAGE_SIZE) - piece.first_page;
                cur.acct.bypass += 1;
            }
            None => cur.acct.skipped_bytes += run_end - piece.pos,
        }
        cur.rounds.base = 0;
        cur.pos = run_end;
        Ok(())
    }

    /// Serves the piece from a fill just read (still ours alone: copied straight from it;
    /// data read during this call is fresh even if an invalidation races the install) and
    /// installs the fill. A huge fill that is the whole pinned request is installed first
    /// and pinned on the next round instead — once per extent: if the page is gone by then
    /// (invalidated or evicted), the refault is copied, so a reader always makes progress.
    fn serve_fill(
        &self,
        req: &FaultRequest,
        cur: &mut Cursor<'_>,
        piece: &Piece,
        mut fill: Fill<'_>,
    ) {
        let huge = fill.keys[0].is_huge();
        let served_end = if huge {
            piece.end
        } else {
            piece.run_end(fill.folios.len() as u64)
        };
        cur.acct.faulted_bytes += served_end - piece.pos;
        if huge && req.pins_whole(piece.pos, piece.end) && cur.filled_to_pin != Some(piece.ext) {
            cur.acct.misses += 1;
            self.finish_fill(&mut fill, true);
            cur.filled_to_pin = Some(piece.ext);
            return;
        }
        for (k, f) in fill.keys.iter().zip(&fill.folios) {
            let f_start = if k.is_huge() {
                piece.ext_start
            } else {
                k.position() * PAGE_SIZE
            };
            let (a, b) = (
                piece.pos.max(f_start),
                served_end.min(f_start + f.len() as u64),
            );
            cur.copy(a, b, f.bytes(), f_start);
        }
        cur.acct.misses += fill.folios.len() as u64;
        self.finish_fill(&mut fill, true);
        cur.pos = served_end;
    }

    /// Tells the policy about resident folios being read: a use of each (the first only if
    /// `first_entered`, see `FaultRequest::enters`) for a device read, recency alone for a
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
