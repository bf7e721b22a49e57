//! `pagetier top MOUNTPOINT`: a live view of a mount's tier, refreshed every
//! interval from `.pagetier/stats` alone (so any user who can read the mount
//! can run it).
//!
//! Rates are deltas of the stats counters over the wall time between two
//! samples. On a terminal it draws on the alternate screen in raw mode and
//! quits on `q`, `Esc` or Ctrl-C (also on SIGTERM/SIGHUP), always restoring
//! the terminal; with `--once`, or when stdout is not a terminal, it prints
//! one frame (two samples one interval apart) as plain text and exits.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::stats::StatsDocument;
use crate::tools::human;
use anyhow::{Context, Result};

/// The numbers `top` shows, read from one stats document.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub at: Option<Instant>,
    pub capacity: u64,
    pub used: u64,
    pub huge_pages: u64,
    pub base_pages: u64,
    pub hits: u64,
    pub misses: u64,
    pub served: u64,
    pub faulted: u64,
    pub evictions: u64,
    pub splits: u64,
    pub discarded_fills: u64,
    /// All causes summed.
    pub invalidations: u64,
    pub host_read_bytes: u64,
    pub host_write_bytes: u64,
    pub open_handles: u64,
    pub inodes: u64,
}

impl Sample {
    pub fn from_document(doc: &StatsDocument, at: Instant) -> Sample {
        let d = &doc.device;
        Sample {
            at: Some(at),
            capacity: d.capacity_bytes,
            used: d.used_bytes,
            huge_pages: d.huge_pages,
            base_pages: d.base_pages,
            hits: d.hits,
            misses: d.misses,
            served: d.bytes_served,
            faulted: d.bytes_faulted,
            evictions: d.evictions,
            splits: d.splits,
            discarded_fills: d.discarded_fills,
            invalidations: doc.invalidations_total(),
            host_read_bytes: doc.host.read_bytes,
            host_write_bytes: doc.host.write_bytes,
            open_handles: doc.open_handles,
            inodes: doc.inodes,
        }
    }

    /// Reads and parses `stats`.
    pub fn read(stats: &Path) -> Result<Sample> {
        let bytes = std::fs::read(stats)
            .with_context(|| format!("{}: not a pagetier mount?", stats.display()))?;
        let doc = StatsDocument::parse(&bytes)
            .with_context(|| format!("{}: not a stats document", stats.display()))?;
        Ok(Sample::from_document(&doc, Instant::now()))
    }

    /// Hits over lookups since the mount, if there was any lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let lookups = self.hits + self.misses;
        (lookups > 0).then(|| self.hits as f64 / lookups as f64)
    }
}

/// Per-second rates between two samples.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    pub secs: f64,
    /// Hits over lookups within the interval (None: no lookup).
    pub hit_ratio: Option<f64>,
    pub lookups_ps: f64,
    pub faults_ps: f64,
    pub served_bps: f64,
    pub faulted_bps: f64,
    pub host_read_bps: f64,
    pub host_write_bps: f64,
    pub evictions_ps: f64,
    pub invalidations_ps: f64,
}

impl Rates {
    pub fn between(a: &Sample, b: &Sample) -> Rates {
        let secs = match (a.at, b.at) {
            (Some(x), Some(y)) => y.saturating_duration_since(x).as_secs_f64(),
            _ => 0.0,
        };
        // Counters only grow; a smaller value means another mount (treat as 0).
        let per = |x: u64, y: u64| {
            if secs > 0.0 {
                y.saturating_sub(x) as f64 / secs
            } else {
                0.0
            }
        };
        let hits = b.hits.saturating_sub(a.hits);
        let lookups = hits + b.misses.saturating_sub(a.misses);
        Rates {
            secs,
            hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
            lookups_ps: per(a.hits + a.misses, b.hits + b.misses),
            faults_ps: per(a.misses, b.misses),
            served_bps: per(a.served, b.served),
            faulted_bps: per(a.faulted, b.faulted),
            host_read_bps: per(a.host_read_bytes, b.host_read_bytes),
            host_write_bps: per(a.host_write_bytes, b.host_write_bytes),
            evictions_ps: per(a.evictions, b.evictions),
            invalidations_ps: per(a.invalidations, b.invalidations),
        }
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

fn rate(bps: f64) -> String {
    format!("{}/s", human(bps.round() as u64))
}

/// One line for logs (`--log-stats`).
pub fn summary_line(s: &Sample, r: &Rates) -> String {
    format!(
        "tier {} of {}, hit ratio {} ({} since mount), device {} served {} faulted, \
         host {} read {} written, {:.0} faults/s, {:.0} evictions/s, {:.0} invalidations/s, \
         {} handles, {} inodes",
        human(s.used),
        human(s.capacity),
        pct(r.hit_ratio),
        pct(s.hit_ratio()),
        rate(r.served_bps),
        rate(r.faulted_bps),
        rate(r.host_read_bps),
        rate(r.host_write_bps),
        r.faults_ps,
        r.evictions_ps,
        r.invalidations_ps,
        s.open_handles,
        s.inodes
    )
}

/// The lines of one frame, at most `width` columns each.
pub fn render(mnt: &Path, prev: Option<&Sample>, cur: &Sample, width: usize) -> Vec<String> {
    let r = prev.map(|p| Rates::between(p, cur));
    let fill = if cur.capacity > 0 {
        cur.used as f64 / cur.capacity as f64
    } else {
        0.0
    };
    let bar_w = width.saturating_sub(48).clamp(10, 40);
    let full = ((fill * bar_w as f64).round() as usize).min(bar_w);
    let bar = format!("[{}{}]", "#".repeat(full), ".".repeat(bar_w - full));
    let rt = |f: &dyn Fn(&Rates) -> String| r.as_ref().map_or_else(|| "-".to_string(), f);
    let mut lines = vec![
        format!(
            "pagetier top  {}   {}",
            mnt.display(),
            r.as_ref()
                .map_or_else(String::new, |r| format!("(over {:.1} s)", r.secs))
        ),
        String::new(),
        format!(
            "tier          {:>10} of {:<10} {:>5.1}%  {bar}",
            human(cur.used),
            human(cur.capacity),
            fill * 100.0
        ),
        format!(
            "pages         {:>10} huge   {:>10} base",
            cur.huge_pages, cur.base_pages
        ),
        format!(
            "hit ratio     {:>10} now    {:>10} since mount   lookups {}",
            rt(&|r| pct(r.hit_ratio)),
            pct(cur.hit_ratio()),
            rt(&|r| format!("{:.0}/s", r.lookups_ps))
        ),
        format!(
            "device view   {:>12} served   {:>12} faulted",
            rt(&|r| rate(r.served_bps)),
            rt(&|r| rate(r.faulted_bps))
        ),
        format!(
            "host view     {:>12} read     {:>12} written",
            rt(&|r| rate(r.host_read_bps)),
            rt(&|r| rate(r.host_write_bps))
        ),
        format!(
            "per second    {:>8} faults  {:>8} evictions  {:>8} invalidations",
            rt(&|r| format!("{:.0}", r.faults_ps)),
            rt(&|r| format!("{:.0}", r.evictions_ps)),
            rt(&|r| format!("{:.0}", r.invalidations_ps))
        ),
        format!(
            "since mount   {:>8} faults  {:>8} evictions  {:>8} invalidations  {} splits  {} discarded fills",
            cur.misses, cur.evictions, cur.invalidations, cur.splits, cur.discarded_fills
        ),
        format!(
            "mount         {:>8} open handles  {:>8} live inodes",
            cur.open_handles, cur.inodes
        ),
    ];
    for l in &mut lines {
        if l.chars().count() > width {
            *l = l.chars().take(width).collect();
        }
    }
    lines
}

/// `pagetier top MOUNTPOINT [--once] [--interval SECS]`.
pub fn top(mnt: &Path, once: bool, interval: Duration) -> Result<()> {
    let stats: PathBuf = mnt.join(".pagetier/stats");
    let first = Sample::read(&stats)?;
    if once || !std::io::stdout().is_terminal() {
        std::thread::sleep(interval);
        let cur = Sample::read(&stats)?;
        let mut out = render(mnt, Some(&first), &cur, 200).join("\n");
        out.push('\n');
        std::io::stdout().lock().write_all(out.as_bytes())?;
        return Ok(());
    }
    live(mnt, &stats, first, interval)
}

/// Puts the terminal back however `live` ends (including a panic).
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<TerminalGuard> {
        crossterm::terminal::enable_raw_mode().context("raw mode")?;
        let g = TerminalGuard;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(g)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = crossterm::execute!(
            std::io::stdout(),
            crossterm::cursor::Show,
            crossterm::terminal::LeaveAlternateScreen
        );
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

fn quit_key(ev: &crossterm::event::Event) -> bool {
    use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};
    match ev {
        Event::Key(k) if k.kind != KeyEventKind::Release => {
            matches!(
                k.code,
                KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc
            ) || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL))
        }
        _ => false,
    }
}

fn live(mnt: &Path, stats: &Path, first: Sample, interval: Duration) -> Result<()> {
    use crossterm::{cursor, event, queue, style, terminal};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let _guard = TerminalGuard::enter()?;
    let mut out = std::io::stdout();
    let mut prev: Option<Sample> = None;
    let mut cur = first;
    let mut error: Option<String> = None;
    loop {
        let (w, _h) = terminal::size().unwrap_or((80, 24));
        let mut lines = match &error {
            None => render(mnt, prev.as_ref(), &cur, w as usize),
            Some(e) => vec![
                format!("pagetier top  {}", mnt.display()),
                String::new(),
                e.clone(),
            ],
        };
        lines.push(String::new());
        lines.push("q: quit".to_string());
        queue!(out, terminal::Clear(terminal::ClearType::All))?;
        for (i, l) in lines.iter().enumerate() {
            queue!(out, cursor::MoveTo(0, i as u16), style::Print(l))?;
        }
        out.flush()?;

        let tick = Instant::now() + interval;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let left = tick.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if event::poll(left.min(Duration::from_millis(200)))? {
                let ev = event::read()?;
                if quit_key(&ev) {
                    return Ok(());
                }
                if matches!(ev, event::Event::Resize(..)) {
                    break;
                }
            }
        }
        match Sample::read(stats) {
            Ok(s) => {
                error = None;
                prev = Some(std::mem::replace(&mut cur, s));
            }
            Err(e) => error = Some(format!("stats unavailable: {e:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn doc(hits: u64, misses: u64, served: u64) -> StatsDocument {
        let mut doc = crate::stats::zeroed();
        let d = &mut doc.device;
        d.capacity_bytes = 1 << 30;
        d.used_bytes = 256 << 20;
        d.huge_pages = 128;
        d.hits = hits;
        d.misses = misses;
        d.bytes_served = served;
        d.bytes_faulted = misses * (2 << 20);
        doc.invalidations.write = 1;
        doc.invalidations.external = 2;
        doc.inodes = 5;
        doc.open_handles = 1;
        doc
    }

    #[test]
    fn rates_are_deltas_over_the_interval() {
        let t0 = Instant::now();
        let a = Sample::from_document(&doc(10, 10, 100 << 20), t0);
        let b = Sample::from_document(&doc(40, 20, 300 << 20), t0 + Duration::from_secs(2));
        let r = Rates::between(&a, &b);
        assert_eq!(r.secs, 2.0);
        assert_eq!(r.served_bps, (100 << 20) as f64);
        assert_eq!(r.faults_ps, 5.0);
        assert_eq!(r.hit_ratio, Some(0.75));
        assert_eq!(b.invalidations, 3);
        assert_eq!(b.hit_ratio(), Some(40.0 / 60.0));
    }

    #[test]
    fn a_frame_shows_the_hit_ratio_and_fits_the_width() {
        let t0 = Instant::now();
        let a = Sample::from_document(&doc(0, 0, 0), t0);
        let b = Sample::from_document(&doc(90, 10, 1 << 30), t0 + Duration::from_secs(1));
        let lines = render(Path::new("/mnt/x"), Some(&a), &b, 60);
        let text = lines.join("\n");
        assert!(text.contains("hit ratio"), "{text}");
        assert!(text.contains("90.0%"), "{text}");
        assert!(text.contains("1.0 GiB/s"), "{text}");
        assert!(lines.iter().all(|l| l.chars().count() <= 60));
        let first = render(Path::new("/mnt/x"), None, &a, 120).join("\n");
        assert!(
            first.contains("hit ratio") && first.contains(" - "),
            "{first}"
        );
    }
}
