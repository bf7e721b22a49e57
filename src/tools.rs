//! The client subcommands: `stats`, `residency`, `prefetch`, `evict`.
//!
//! They talk to a mount only through its files: `.pagetier/stats` and the
//! `user.pagetier.*` xattrs, so they work for any user who can read the mount.
//! `residency`, `prefetch` and `evict` walk directories (`-r`) on a thread of
//! their own while several files are worked on at once (`-j`), one or two
//! xattr requests per file, with a progress bar of files/s and bytes/s and a
//! final line with the rate; `prefetch` stops at the tier's capacity.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

use crate::lock::lock;
use crate::stats::StatsDocument;

/// Finds the control directory of the mount holding `mnt`.
fn stats_path(mnt: &Path) -> PathBuf {
    mnt.join(".pagetier/stats")
}

pub fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// `pagetier stats MOUNTPOINT`.
pub fn stats(mnt: &Path, json: bool) -> Result<()> {
    let p = stats_path(mnt);
    let text = std::fs::read_to_string(&p)
        .with_context(|| format!("{}: not a pagetier mount?", p.display()))?;
    if json {
        println!("{text}");
        return Ok(());
    }
    let doc = StatsDocument::parse(text.as_bytes())
        .with_context(|| format!("{}: not a stats document", p.display()))?;
    let mut out = String::new();
    let d = &doc.device;
    let reads = d.hits + d.misses;
    let ratio = if reads > 0 {
        d.hits as f64 / reads as f64 * 100.0
    } else {
        0.0
    };
    writeln!(out, "device tier")?;
    writeln!(
        out,
        "  capacity        {:>12}   used {:>12}",
        human(d.capacity_bytes),
        human(d.used_bytes)
    )?;
    writeln!(
        out,
        "  pages           {:>12} huge {:>12} base",
        d.huge_pages, d.base_pages
    )?;
    writeln!(
        out,
        "  hits / misses   {:>12} / {:<12} ({ratio:.1}% hits)",
        d.hits, d.misses
    )?;
    writeln!(
        out,
        "  served          {:>12}   faulted {:>9}",
        human(d.bytes_served),
        human(d.bytes_faulted)
    )?;
    writeln!(
        out,
        "  evictions {}  splits {}  collapses {}  discarded fills {}  refused writes {}",
        d.evictions, d.splits, d.collapses, d.discarded_fills, d.refused_writes
    )?;
    writeln!(out, "invalidations (pages)")?;
    for (cause, n) in doc.invalidations_by_cause() {
        writeln!(out, "  {cause:<15} {n:>12}")?;
    }
    let h = &doc.host;
    writeln!(
        out,
        "host view\n  reads {} ({})  writes {} ({})",
        h.reads,
        human(h.read_bytes),
        h.writes,
        human(h.write_bytes)
    )?;
    let p = &doc.passthrough;
    writeln!(
        out,
        "  (daemon-served only) passthrough {}: {} opens served by the kernel, {} writable",
        p.mode.name(),
        p.host_opens,
        p.writer_opens
    )?;
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    Ok(())
}

fn xattr_get(path: &Path, name: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::getxattr(path, name, &mut buf[..])
        .map_err(|e| anyhow!("{}: {name}: {e}", path.display()))?;
    buf.truncate(n);
    Ok(buf)
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .map_err(|e| anyhow!("{}: {name}: {}", path.display(), std::io::Error::from(e)))
}

/// The FUSE mount holding `path` (its mount point), per /proc/self/mountinfo.
fn mount_root_of(path: &Path) -> Option<PathBuf> {
    let abs = std::fs::canonicalize(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            // "fuse.pagetier" through mount.fuse3, plain "fuse" when mounted directly.
            right.starts_with("fuse").then_some(())?;
            let mp = PathBuf::from(left.split_whitespace().nth(4)?.replace("\\040", " "));
            abs.starts_with(&mp).then_some(mp)
        })
        .max_by_key(|mp| mp.as_os_str().len())
}

/// The device tier's capacity as the stats of the mount holding `path` say.
fn tier_capacity(path: &Path) -> Result<u64> {
    let root = mount_root_of(path)
        .ok_or_else(|| anyhow!("{} is not in a pagetier mount", path.display()))?;
    let stats = stats_path(&root);
    let text = std::fs::read_to_string(&stats)
        .with_context(|| format!("reading the tier's capacity from {}", stats.display()))?;
    let doc = StatsDocument::parse(text.as_bytes())
        .with_context(|| format!("{}: not a stats document", stats.display()))?;
    Ok(doc.device.capacity_bytes)
}

fn resident_bytes(path: &Path) -> Result<u64> {
    let v: Value = serde_json::from_slice(&xattr_get(path, "user.pagetier.residency")?)?;
    Ok(v["resident_bytes"].as_u64().unwrap_or(0))
}

/// How `residency`, `prefetch` and `evict` go through their paths.
#[derive(Clone, Debug, Default)]
pub struct BatchOptions {
    /// Descend into directories (never following symlinks below the paths given).
    pub recursive: bool,
    /// Files worked on at once (None: [`DEFAULT_JOBS`]).
    pub jobs: Option<usize>,
    /// `prefetch`: go on past the tier's capacity.
    pub ignore_capacity: bool,
}

/// Files worked on at once unless `-j` says otherwise. Each file costs one or two FUSE
/// requests that mostly wait (a prefetch waits for the tier's `O_DIRECT` fill from
/// STORAGE), not CPU, so several in flight keep the daemon's workers and the disk busy
/// even on a machine of 2 CPUs.
pub const DEFAULT_JOBS: usize = 8;

/// Files handed from the walk to the workers at a time: enough that the workers
/// seldom wait at a chunk's end, few enough that work starts at once.
const CHUNK: usize = 1024;

impl BatchOptions {
    fn jobs(&self) -> usize {
        self.jobs.unwrap_or(DEFAULT_JOBS).max(1)
    }
}

/// A regular file found under the paths given (`size` 0 unless the walk was asked
/// for sizes), or a path given by name for `residency`.
struct Item {
    path: PathBuf,
    size: u64,
}

/// A path given on the command line, checked before any work starts.
struct Top {
    path: PathBuf,
    /// Walk it (a directory under `-r`); otherwise it is one item.
    walk: bool,
    size: u64,
}

/// Checks the paths given. `strict` (prefetch, evict): a directory without `-r` or a
/// non-regular path is an error before anything is done. Otherwise (residency) every
/// path that is not walked is one item, and its error is reported with its result.
fn top_paths(paths: &[PathBuf], recursive: bool, strict: bool) -> Result<Vec<Top>> {
    let mut out = Vec::new();
    for p in paths {
        let md = match std::fs::metadata(p) {
            Ok(md) => md,
            Err(e) if strict => return Err(anyhow!("{}: {e}", p.display())),
            Err(_) => {
                out.push(Top {
                    path: p.clone(),
                    walk: false,
                    size: 0,
                });
                continue;
            }
        };
        if md.is_dir() && recursive {
            out.push(Top {
                path: p.clone(),
                walk: true,
                size: 0,
            });
        } else if md.is_dir() && strict {
            return Err(anyhow!("{} is a directory (use -r)", p.display()));
        } else if !md.is_file() && strict {
            return Err(anyhow!("{} is not a regular file", p.display()));
        } else {
            out.push(Top {
                path: p.clone(),
                walk: false,
                size: md.len(),
            });
        }
    }
    Ok(out)
}

/// The walk: lists directories depth first in name order and sends the regular files
/// found, a chunk at a time, to the workers. File types come from `readdir` (no
/// request per file) and sizes, when asked, from one `stat` each. A directory or file
/// that cannot be read is reported and counted, and the walk goes on.
struct Walk<'a> {
    sizes: bool,
    bar: &'a Progress,
    tx: std::sync::mpsc::SyncSender<Vec<Item>>,
    chunk: Vec<Item>,
    failed: u64,
}

impl Walk<'_> {
    /// Queues `it`; false once the workers have stopped listening.
    fn push(&mut self, it: Item) -> bool {
        self.bar.found();
        self.chunk.push(it);
        self.chunk.len() < CHUNK || self.flush()
    }

    fn flush(&mut self) -> bool {
        self.chunk.is_empty() || self.tx.send(std::mem::take(&mut self.chunk)).is_ok()
    }

    fn fail(&mut self, what: &Path, e: impl std::fmt::Display) {
        self.failed += 1;
        self.bar.note(&format!("{}: {e}", what.display()));
    }

    fn dir(&mut self, dir: &Path) -> bool {
        let listed = std::fs::read_dir(dir).and_then(|d| d.collect::<std::io::Result<Vec<_>>>());
        let mut entries = match listed {
            Ok(e) => e,
            Err(e) => {
                self.fail(dir, e);
                return true;
            }
        };
        entries.sort_unstable_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let ft = match e.file_type() {
                Ok(ft) => ft,
                Err(err) => {
                    self.fail(&path, err);
                    continue;
                }
            };
            if ft.is_dir() {
                if !self.dir(&path) {
                    return false;
                }
            } else if ft.is_file() {
                let size = if self.sizes {
                    match e.metadata() {
                        Ok(md) => md.len(),
                        Err(err) => {
                            self.fail(&path, err);
                            continue;
                        }
                    }
                } else {
                    0
                };
                if !self.push(Item { path, size }) {
                    return false;
                }
            }
        }
        true
    }
}

/// The progress bar on stderr (hidden when stderr is not a terminal): files done of
/// files found so far, files/s, bytes and bytes/s.
struct Progress {
    bar: indicatif::ProgressBar,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Progress {
    fn new(what: &str) -> Self {
        use std::io::IsTerminal as _;
        use std::sync::atomic::Ordering::Relaxed;
        let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: indicatif::ProgressBar::hidden(),
                bytes,
            };
        }
        let bar = indicatif::ProgressBar::new(0);
        let per_sec =
            |st: &indicatif::ProgressState, n: u64| n as f64 / st.elapsed().as_secs_f64().max(1e-3);
        let (b1, b2) = (bytes.clone(), bytes.clone());
        let style = indicatif::ProgressStyle::with_template(&format!(
            "{what} {{wide_bar}} {{pos}}/{{len}} files {{files_rate}} files/s \
             {{bytes_done}} {{bytes_rate}}/s {{elapsed}} {{msg}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .with_key(
            "files_rate",
            move |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}", per_sec(st, st.pos()));
            },
        )
        .with_key(
            "bytes_done",
            move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}", human(b1.load(Relaxed)));
            },
        )
        .with_key(
            "bytes_rate",
            move |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}", human(per_sec(st, b2.load(Relaxed)) as u64));
            },
        );
        bar.set_style(style);
        bar.set_message("(listing)");
        Progress { bar, bytes }
    }

    /// The walk found one more file.
    fn found(&self) {
        self.bar.inc_length(1);
    }

    /// The walk is over: the length is final.
    fn listed(&self) {
        self.bar.set_message("");
    }

    /// One file done, `bytes` of it worked on.
    fn done(&self, bytes: u64) {
        self.bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        self.bar.inc(1);
    }

    /// An error line on stderr, above the bar.
    fn note(&self, msg: &str) {
        self.bar.suspend(|| eprintln!("pagetier: {msg}"));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Runs `work` over `items` on `jobs` threads, in order of admission: `admit`
/// (called under a lock, in list order) may stop the batch before an item.
fn run_batch<T: Send>(
    items: &[Item],
    jobs: usize,
    mut admit: impl FnMut(&Item) -> bool + Send,
    work: impl Fn(&Item) -> T + Sync,
) -> Vec<Option<T>> {
    let next = std::sync::Mutex::new((0usize, false));
    let results: Vec<std::sync::Mutex<Option<T>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let admit = std::sync::Mutex::new(&mut admit);
    std::thread::scope(|sc| {
        for _ in 0..jobs.min(items.len().max(1)) {
            sc.spawn(|| {
                loop {
                    let i = {
                        let mut g = lock(&next);
                        if g.1 || g.0 >= items.len() {
                            return;
                        }
                        if !(lock(&admit))(&items[g.0]) {
                            g.1 = true;
                            return;
                        }
                        g.0 += 1;
                        g.0 - 1
                    };
                    let r = work(&items[i]);
                    *lock(&results[i]) = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
        .collect()
}

/// Walks `tops` on a thread of its own while the files it has found are worked on,
/// `jobs` at a time, a chunk after another (so a million files never wait for the
/// whole listing, nor sit in memory at once). `admit` sees the files in walk order
/// and may refuse one (then every later one: `None`); `each` gets every file with
/// its result, in walk order. Returns how many paths the walk failed on.
fn drive<T: Send>(
    tops: &[Top],
    jobs: usize,
    sizes: bool,
    bar: &Progress,
    admit: &mut (dyn FnMut(&Item) -> bool + Send),
    work: &(dyn Fn(&Item) -> T + Sync),
    mut each: impl FnMut(&Item, Option<T>),
) -> u64 {
    std::thread::scope(|sc| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Item>>(4);
        let walker = sc.spawn(move || {
            let mut w = Walk {
                sizes,
                bar,
                tx,
                chunk: Vec::with_capacity(CHUNK),
                failed: 0,
            };
            for t in tops {
                let more = if t.walk {
                    w.dir(&t.path)
                } else {
                    w.push(Item {
                        path: t.path.clone(),
                        size: t.size,
                    })
                };
                if !more {
                    break;
                }
            }
            w.flush();
            bar.listed();
            w.failed
        });
        let mut refused = false;
        let mut gate = |it: &Item| {
            refused = refused || !admit(it);
            !refused
        };
        for chunk in rx {
            let results = run_batch(&chunk, jobs, &mut gate, work);
            for (it, r) in chunk.iter().zip(results) {
                each(it, r);
            }
        }
        walker.join().unwrap_or(1)
    })
}

fn rate(n: u64, secs: f64) -> f64 {
    n as f64 / secs.max(1e-3)
}

/// One file's `user.pagetier.residency`.
struct Residency {
    size: u64,
    resident: u64,
    huge: u64,
    base: u64,
}

fn residency_of(path: &Path) -> Result<Residency> {
    let raw = xattr_get(path, "user.pagetier.residency")?;
    let v: Value = serde_json::from_slice(&raw)
        .with_context(|| format!("{}: not a residency document", path.display()))?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok(Residency {
        size: n("size"),
        resident: n("resident_bytes"),
        huge: n("huge_pages"),
        base: n("base_pages"),
    })
}

/// `pagetier residency [-r] [-j N] PATH...`: one line per file, in the order given
/// (a directory's files in name order under `-r`), then with `-r` a total line.
pub fn residency(paths: &[PathBuf], opts: &BatchOptions) -> Result<()> {
    let tops = top_paths(paths, opts.recursive, false)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    writeln!(
        out,
        "{:>12} {:>12} {:>6} {:>6}  path",
        "size", "resident", "huge", "base"
    )?;
    let bar = Progress::new("residency");
    let t0 = Instant::now();
    let mut total = Residency {
        size: 0,
        resident: 0,
        huge: 0,
        base: 0,
    };
    let (mut done, mut failed) = (0u64, 0u64);
    let mut write_err = None;
    let walk_failed = drive(
        &tops,
        opts.jobs(),
        false,
        &bar,
        &mut |_| true,
        &|it| {
            let r = residency_of(&it.path);
            bar.done(r.as_ref().map_or(0, |r| r.size));
            r
        },
        |it, r| match r {
            Some(Ok(r)) => {
                done += 1;
                total.size += r.size;
                total.resident += r.resident;
                total.huge += r.huge;
                total.base += r.base;
                if let Err(e) = writeln!(
                    out,
                    "{:>12} {:>12} {:>6} {:>6}  {}",
                    human(r.size),
                    human(r.resident),
                    r.huge,
                    r.base,
                    it.path.display()
                ) {
                    write_err.get_or_insert(e);
                }
            }
            Some(Err(e)) => {
                failed += 1;
                bar.note(&format!("{e:#}"));
            }
            None => {}
        },
    );
    bar.finish();
    let secs = t0.elapsed().as_secs_f64();
    if opts.recursive {
        writeln!(
            out,
            "{:>12} {:>12} {:>6} {:>6}  total: {done} file(s) in {secs:.2} s ({:.0} files/s)",
            human(total.size),
            human(total.resident),
            total.huge,
            total.base,
            rate(done, secs)
        )?;
    }
    out.flush()?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    if failed + walk_failed > 0 {
        Err(anyhow!("some paths failed"))
    } else {
        Ok(())
    }
}

/// What happened to one file of a batch.
struct Done {
    before: u64,
    after: u64,
}

/// Prefetches `range` of one file. First by getting `user.pagetier.prefetch:RANGE`
/// (needs only read permission; answers with what it did: one request per file);
/// a mount without that form gets the setxattr form, with residency read before and
/// after.
fn prefetch_one(path: &Path, range: &str) -> Result<Done> {
    let name = if range == "0-" {
        "user.pagetier.prefetch".to_string()
    } else {
        format!("user.pagetier.prefetch:{range}")
    };
    let mut buf = [0u8; 4096];
    match rustix::fs::getxattr(path, name.as_str(), &mut buf[..]) {
        Ok(n) => {
            let v: Value = serde_json::from_slice(&buf[..n])
                .with_context(|| format!("{}: {name}: not a prefetch report", path.display()))?;
            let before = v["already_resident_bytes"].as_u64().unwrap_or(0);
            let faulted = v["faulted_bytes"].as_u64().unwrap_or(0);
            return Ok(Done {
                before,
                after: before + faulted,
            });
        }
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => {}
        Err(e) => {
            return Err(anyhow!(
                "{}: {name}: {}",
                path.display(),
                std::io::Error::from(e)
            ));
        }
    }
    let before = resident_bytes(path)?;
    xattr_set(path, "user.pagetier.prefetch", range.as_bytes())?;
    let after = resident_bytes(path)?;
    Ok(Done { before, after })
}

/// `pagetier prefetch [-r] [-j N] [--ignore-capacity] [--range R] PATH...`.
///
/// Files are admitted in walk order while the bytes they will occupy (their
/// size, or the range's length within them, in 4 KiB pages) add up to no
/// more than the tier's capacity; past that the rest is skipped (later files
/// would only evict earlier ones) unless `--ignore-capacity` (then the walk
/// needs no `stat` per file).
pub fn prefetch(range: &str, paths: &[PathBuf], opts: &BatchOptions) -> Result<()> {
    let (start, last) =
        crate::control::parse_range(range).map_err(|e| anyhow!("--range {range}: {e}"))?;
    let tops = top_paths(paths, opts.recursive, true)?;
    let footprint = |it: &Item| -> u64 {
        let end = last.map_or(it.size, |l| l.saturating_add(1).min(it.size));
        end.saturating_sub(start).div_ceil(4096) * 4096
    };
    let capacity =
        match (opts.ignore_capacity, tops.first()) {
            (false, Some(first)) => Some(tier_capacity(&first.path).map_err(|e| {
                anyhow!("{e:#}; pass --ignore-capacity to prefetch without a limit")
            })?),
            _ => None,
        };
    let bar = Progress::new("prefetch");
    let t0 = Instant::now();
    let mut admitted = 0u64;
    let (mut done, mut failed, mut skipped) = (0u64, 0u64, 0u64);
    let (mut faulted, mut resident, mut skipped_bytes) = (0u64, 0u64, 0u64);
    let walk_failed = drive(
        &tops,
        opts.jobs(),
        capacity.is_some(),
        &bar,
        &mut |it| {
            let fp = footprint(it);
            match capacity {
                Some(cap) if admitted + fp > cap => false,
                _ => {
                    admitted += fp;
                    true
                }
            }
        },
        &|it| {
            let r = prefetch_one(&it.path, range);
            bar.done(r.as_ref().map_or(0, |d| d.after.max(d.before)));
            r
        },
        |it, r| match r {
            Some(Ok(d)) => {
                done += 1;
                resident += d.before;
                faulted += d.after.saturating_sub(d.before);
            }
            Some(Err(e)) => {
                bar.note(&format!("{e:#}"));
                failed += 1;
            }
            None => {
                skipped += 1;
                skipped_bytes += footprint(it);
            }
        },
    );
    bar.finish();
    let secs = t0.elapsed().as_secs_f64();
    failed += walk_failed;

    let mut out = String::new();
    writeln!(
        out,
        "prefetched {done} file(s) in {secs:.2} s: {} faulted ({}/s), {} already resident; \
         {:.0} files/s",
        human(faulted),
        human(rate(faulted, secs) as u64),
        human(resident),
        rate(done, secs)
    )?;
    if skipped > 0 {
        writeln!(
            out,
            "skipped {skipped} file(s), {}: over the tier's capacity of {} \
             (--ignore-capacity to prefetch them anyway)",
            human(skipped_bytes),
            human(capacity.unwrap_or(0))
        )?;
    }
    if failed > 0 {
        writeln!(out, "failed {failed} file(s)")?;
    }
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    if failed > 0 {
        return Err(anyhow!("{failed} file(s) failed"));
    }
    Ok(())
}

/// `pagetier evict [-r] [-j N] PATH...`: per file, its residency (for the bytes
/// dropped) and then `user.pagetier.evict`.
pub fn evict(paths: &[PathBuf], opts: &BatchOptions) -> Result<()> {
    let tops = top_paths(paths, opts.recursive, true)?;
    let bar = Progress::new("evict");
    let t0 = Instant::now();
    let (mut done, mut failed, mut dropped) = (0u64, 0u64, 0u64);
    let walk_failed = drive(
        &tops,
        opts.jobs(),
        false,
        &bar,
        &mut |_| true,
        &|it| {
            let r = (|| -> Result<Done> {
                let before = resident_bytes(&it.path)?;
                xattr_set(&it.path, "user.pagetier.evict", b"1")?;
                Ok(Done { before, after: 0 })
            })();
            bar.done(r.as_ref().map_or(0, |d| d.before));
            r
        },
        |_, r| match r {
            Some(Ok(d)) => {
                done += 1;
                dropped += d.before.saturating_sub(d.after);
            }
            Some(Err(e)) => {
                bar.note(&format!("{e:#}"));
                failed += 1;
            }
            None => {}
        },
    );
    bar.finish();
    let secs = t0.elapsed().as_secs_f64();
    failed += walk_failed;
    println!(
        "evicted {done} file(s): {} dropped from the tier in {secs:.2} s ({:.0} files/s)",
        human(dropped),
        rate(done, secs)
    );
    if failed > 0 {
        return Err(anyhow!("{failed} file(s) failed"));
    }
    Ok(())
}

/// What `pagetier simulate` was asked.
#[derive(Debug, Default)]
pub struct SimulateArgs {
    pub traces: Vec<PathBuf>,
    pub synthetic: Vec<String>,
    pub capacities: Vec<String>,
    pub page_size: String,
    pub policies: Vec<String>,
    pub epoch_hint: bool,
    pub json: bool,
}

/// `pagetier simulate`: replays traces through the policies and OPT.
pub fn simulate(a: SimulateArgs) -> Result<()> {
    use crate::tier::sim::{SimConfig, TraceSpec, run_simulation};
    let page_size = match a.page_size.to_ascii_lowercase().as_str() {
        "4k" | "4096" | "4kib" => 4096,
        "2m" | "2097152" | "2mib" => 2 << 20,
        other => return Err(anyhow!("--page-size {other:?}: expected 4k or 2m")),
    };
    for p in &a.policies {
        crate::tier::policy_by_name(p).map_err(|_| {
            anyhow!(
                "--policy {p:?}: expected one of {}",
                crate::tier::POLICY_NAMES.join(", ")
            )
        })?;
    }
    let mut cfg = SimConfig::default();
    if !a.traces.is_empty() || !a.synthetic.is_empty() {
        cfg.traces.clear();
        for t in &a.traces {
            cfg.traces.push(
                TraceSpec::from_csv_file(t, page_size)
                    .map_err(|e| anyhow!("--trace {}: {e}", t.display()))?,
            );
        }
        for t in &a.synthetic {
            cfg.traces.push(
                t.parse::<TraceSpec>()
                    .map_err(|e| anyhow!("--synthetic {t:?}: {e}"))?,
            );
        }
    }
    if !a.capacities.is_empty() {
        cfg.capacities = a
            .capacities
            .iter()
            .map(|c| crate::size::parse_size(c).map_err(|e| anyhow!("--capacity {c:?}: {e}")))
            .collect::<Result<_>>()?;
    }
    cfg.page_size = page_size;
    cfg.policies = a.policies;
    cfg.epoch_hint = a.epoch_hint;
    let report = run_simulation(cfg);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
