//! The client subcommands: `stats`, `residency`, `prefetch`, `evict`.
//!
//! They talk to a mount only through its files: `.pagetier/stats` and the
//! `user.pagetier.*` xattrs, so they work for any user who can read the mount.
//! `prefetch` and `evict` walk directories (`-r`) and work on several files
//! at once (`-j`); `prefetch` stops at the tier's capacity.

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

/// `pagetier residency PATH...`.
pub fn residency(paths: &[PathBuf]) -> Result<()> {
    println!(
        "{:>12} {:>12} {:>6} {:>6}  path",
        "size", "resident", "huge", "base"
    );
    let mut failed = false;
    for p in paths {
        match xattr_get(p, "user.pagetier.residency") {
            Ok(v) => {
                let v: Value = serde_json::from_slice(&v)?;
                let n = |k: &str| v[k].as_u64().unwrap_or(0);
                println!(
                    "{:>12} {:>12} {:>6} {:>6}  {}",
                    human(n("size")),
                    human(n("resident_bytes")),
                    n("huge_pages"),
                    n("base_pages"),
                    p.display()
                );
            }
            Err(e) => {
                eprintln!("pagetier: {e}");
                failed = true;
            }
        }
    }
    if failed {
        Err(anyhow!("some paths failed"))
    } else {
        Ok(())
    }
}

/// How `prefetch` and `evict` go through their paths.
#[derive(Clone, Debug, Default)]
pub struct BatchOptions {
    /// Descend into directories (never following symlinks below the paths given).
    pub recursive: bool,
    /// Files worked on at once (None: CPUs, at most 8).
    pub jobs: Option<usize>,
    /// `prefetch`: go on past the tier's capacity.
    pub ignore_capacity: bool,
}

impl BatchOptions {
    fn jobs(&self) -> usize {
        self.jobs
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map_or(2, |n| n.get())
                    .min(8)
            })
            .max(1)
    }
}

/// A regular file found under the paths given.
struct Item {
    path: PathBuf,
    size: u64,
}

/// Lists the regular files of `paths` (descending into directories when
/// `recursive`), in a stable order. Other kinds below a directory are
/// skipped silently; a non-regular path given by name is an error.
fn collect_files(paths: &[PathBuf], recursive: bool) -> Result<Vec<Item>> {
    fn walk(dir: &Path, out: &mut Vec<Item>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("{}", dir.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("{}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let ft = e.file_type()?;
            if ft.is_dir() {
                walk(&e.path(), out)?;
            } else if ft.is_file() {
                let size = e.metadata()?.len();
                out.push(Item {
                    path: e.path(),
                    size,
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        let md = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        if md.is_dir() {
            if !recursive {
                return Err(anyhow!("{} is a directory (use -r)", p.display()));
            }
            walk(p, &mut out)?;
        } else if md.is_file() {
            out.push(Item {
                path: p.clone(),
                size: md.len(),
            });
        } else {
            return Err(anyhow!("{} is not a regular file", p.display()));
        }
    }
    Ok(out)
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

/// A byte progress bar on stderr, hidden when stderr is not a terminal.
fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{wide_bar}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}} {{msg}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
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

/// What happened to one file of a batch.
struct Done {
    before: u64,
    after: u64,
}

/// Prefetches `range` of one file. First by getting `user.pagetier.prefetch:RANGE`
/// (needs only read permission; answers with what it did); a mount without
/// that form gets the setxattr form, with residency read before and after.
fn prefetch_one(path: &Path, range: &str) -> Result<Done> {
    let name = if range == "0-" {
        "user.pagetier.prefetch".to_string()
    } else {
        format!("user.pagetier.prefetch:{range}")
    };
    let mut buf = vec![0u8; 4096];
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
/// Files are admitted in order while the bytes they will occupy (their
/// size, or the range's length within them, in 4 KiB pages) add up to no
/// more than the tier's capacity; past that the rest is skipped (later files
/// would only evict earlier ones) unless `--ignore-capacity`.
pub fn prefetch(range: &str, paths: &[PathBuf], opts: &BatchOptions) -> Result<()> {
    let (start, last) =
        crate::control::parse_range(range).map_err(|e| anyhow!("--range {range}: {e}"))?;
    let items = collect_files(paths, opts.recursive)?;
    let footprint = |it: &Item| -> u64 {
        let end = last.map_or(it.size, |l| l.saturating_add(1).min(it.size));
        end.saturating_sub(start).div_ceil(4096) * 4096
    };
    let capacity =
        match (opts.ignore_capacity, items.first()) {
            (false, Some(first)) => Some(tier_capacity(&first.path).map_err(|e| {
                anyhow!("{e:#}; pass --ignore-capacity to prefetch without a limit")
            })?),
            _ => None,
        };
    let total: u64 = items.iter().map(footprint).sum();
    let bar = progress(total, "prefetch");
    let t0 = Instant::now();
    let mut admitted = 0u64;
    let results = run_batch(
        &items,
        opts.jobs(),
        |it| {
            let fp = footprint(it);
            match capacity {
                Some(cap) if admitted + fp > cap => false,
                _ => {
                    admitted += fp;
                    true
                }
            }
        },
        |it| {
            let r = prefetch_one(&it.path, range);
            bar.inc(footprint(it));
            r
        },
    );
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();

    let (mut done, mut failed, mut skipped) = (0u64, 0u64, 0u64);
    let (mut faulted, mut resident, mut skipped_bytes) = (0u64, 0u64, 0u64);
    for (it, r) in items.iter().zip(&results) {
        match r {
            Some(Ok(d)) => {
                done += 1;
                resident += d.before;
                faulted += d.after.saturating_sub(d.before);
            }
            Some(Err(e)) => {
                eprintln!("pagetier: {e:#}");
                failed += 1;
            }
            None => {
                skipped += 1;
                skipped_bytes += footprint(it);
            }
        }
    }
    let mut out = String::new();
    writeln!(
        out,
        "prefetched {done} file(s) in {secs:.2} s: {} faulted ({}/s), {} already resident",
        human(faulted),
        human((faulted as f64 / secs.max(1e-3)) as u64),
        human(resident)
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

/// `pagetier evict [-r] [-j N] PATH...`.
pub fn evict(paths: &[PathBuf], opts: &BatchOptions) -> Result<()> {
    let items = collect_files(paths, opts.recursive)?;
    let bar = progress(items.iter().map(|i| i.size).sum(), "evict");
    let results = run_batch(
        &items,
        opts.jobs(),
        |_| true,
        |it| {
            let r = (|| -> Result<Done> {
                let before = resident_bytes(&it.path)?;
                xattr_set(&it.path, "user.pagetier.evict", b"1")?;
                Ok(Done { before, after: 0 })
            })();
            bar.inc(it.size);
            r
        },
    );
    bar.finish_and_clear();
    let (mut done, mut failed, mut dropped) = (0u64, 0u64, 0u64);
    for r in results.iter().flatten() {
        match r {
            Ok(d) => {
                done += 1;
                dropped += d.before.saturating_sub(d.after);
            }
            Err(e) => {
                eprintln!("pagetier: {e:#}");
                failed += 1;
            }
        }
    }
    println!(
        "evicted {done} file(s): {} dropped from the tier",
        human(dropped)
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
