//! The client subcommands: `stats`, `residency`, `prefetch`, `evict`.
//!
//! They talk to a mount only through its files: `.pagetier/stats` and the
//! `user.pagetier.*` xattrs, so they work for any user who can read the mount.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

/// Finds the control directory of the mount holding `mnt`.
fn stats_path(mnt: &Path) -> PathBuf {
    mnt.join(".pagetier/stats")
}

fn human(b: u64) -> String {
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
    let v: Value = serde_json::from_str(&text)?;
    let mut out = String::new();
    let d = &v["device"];
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let reads = n(&d["hits"]) + n(&d["misses"]);
    let ratio = if reads > 0 {
        n(&d["hits"]) as f64 / reads as f64 * 100.0
    } else {
        0.0
    };
    writeln!(out, "device tier")?;
    writeln!(
        out,
        "  capacity        {:>12}   used {:>12}",
        human(n(&d["capacity_bytes"])),
        human(n(&d["used_bytes"]))
    )?;
    writeln!(
        out,
        "  pages           {:>12} huge {:>12} base",
        n(&d["huge_pages"]),
        n(&d["base_pages"])
    )?;
    writeln!(
        out,
        "  hits / misses   {:>12} / {:<12} ({ratio:.1}% hits)",
        n(&d["hits"]),
        n(&d["misses"])
    )?;
    writeln!(
        out,
        "  served          {:>12}   faulted {:>9}",
        human(n(&d["bytes_served"])),
        human(n(&d["bytes_faulted"]))
    )?;
    writeln!(
        out,
        "  evictions {}  splits {}  collapses {}  discarded fills {}  refused writes {}",
        n(&d["evictions"]),
        n(&d["splits"]),
        n(&d["collapses"]),
        n(&d["discarded_fills"]),
        n(&d["refused_writes"])
    )?;
    writeln!(out, "invalidations (pages)")?;
    if let Some(o) = v["invalidations"].as_object() {
        for (k, x) in o {
            writeln!(out, "  {k:<15} {:>12}", n(x))?;
        }
    }
    let h = &v["host"];
    writeln!(
        out,
        "host view\n  reads {} ({})  writes {} ({})",
        n(&h["reads"]),
        human(n(&h["read_bytes"])),
        n(&h["writes"]),
        human(n(&h["write_bytes"]))
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

/// `pagetier prefetch [--range R] PATH...`.
pub fn prefetch(range: &str, paths: &[PathBuf]) -> Result<()> {
    let bar = indicatif::ProgressBar::new(paths.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} files {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    for p in paths {
        bar.set_message(p.display().to_string());
        xattr_set(p, "user.pagetier.prefetch", range.as_bytes())?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "prefetched {} file(s) in {:.2}s",
        paths.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `pagetier evict PATH...`.
pub fn evict(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        xattr_set(p, "user.pagetier.evict", b"1")?;
    }
    Ok(())
}
