//! Trace-driven simulation of the eviction policies (pure: no arena, no threads, no I/O
//! except reading a recorded trace).
//!
//! A trace is a sequence of page accesses. Each access is replayed against a cache of
//! `capacity / page_size` pages the way the tier drives its policy: a resident page is a hit
//! (`touch`); a miss is recorded (`record_miss`) and installed if there is room, else the
//! policy is asked to `admit` it — yes pops a victim, no serves it without installing it.
//! Belady's OPT (MIN, with bypass: a missed page is not installed when its next use is the
//! furthest) is replayed beside the policies as the upper bound. Everything is deterministic:
//! the same config gives the same report.
//!
//! Traces: synthetic ([`TraceSpec`]: sequential epochs, shuffled epochs, zipfian reads, a hot
//! working set beside a cold scan) or recorded, from a CSV file of `file_id,offset,len` lines
//! (one device-view read per line; `#` comments and a `file_id,...` header are skipped).
//!
//! # Measured (the table behind the choice of the default policy)
//! `cargo test --release --lib tier::sim::tests::print_standard_table -- --ignored --nocapture`
//! prints the standard table (dataset 256 MiB of 4 KiB pages in 1 MiB files, 5 epochs / 4×
//! dataset accesses); see `policy/mod.rs` for the conclusions.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::{self, BufRead};
use std::path::Path;
use std::str::FromStr;

use serde::Serialize;

use crate::tier::hint::Hint;
use crate::tier::policy::{EvictionPolicy, FolioKey, POLICY_NAMES, policy_by_name};
use crate::tier::types::{FileId, PAGE_SIZE};

/// Pages per synthetic file (1 MiB files of 4 KiB pages).
const PAGES_PER_FILE: u64 = 256;

/// A trace to replay.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceSpec {
    /// `epochs` passes over `pages` pages in order.
    SequentialEpochs { pages: u64, epochs: u32 },
    /// `epochs` passes over `pages` pages, each in a fresh random order.
    ShuffledEpochs { pages: u64, epochs: u32, seed: u64 },
    /// `accesses` reads of `pages` pages with zipfian popularity (`exponent`, e.g. 0.9).
    Zipf {
        pages: u64,
        accesses: u64,
        exponent: f64,
        seed: u64,
    },
    /// `accesses` reads: `hot_percent` % uniformly over `hot_pages`, the rest a sequential
    /// scan (wrapping) over `cold_pages` other pages.
    HotSet {
        hot_pages: u64,
        cold_pages: u64,
        accesses: u64,
        hot_percent: u32,
        seed: u64,
    },
    /// A recorded trace (see [`TraceSpec::from_csv_file`]), already split into pages.
    Recorded { name: String, pages: Vec<FolioKey> },
}

/// A malformed trace spec or CSV line.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace spec {0:?}: {1}")]
    Spec(String, String),
    #[error("{path}:{line}: expected `file_id,offset,len`, got {text:?}")]
    Csv {
        path: String,
        line: usize,
        text: String,
    },
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
}

impl TraceSpec {
    /// Reads a recorded trace: one `file_id,offset,len` device-view read per line, split into
    /// `page_size` pages.
    pub fn from_csv_file(path: &Path, page_size: u64) -> Result<TraceSpec, TraceError> {
        let shown = path.display().to_string();
        let f = std::fs::File::open(path).map_err(|e| TraceError::Io(shown.clone(), e))?;
        Self::from_csv(io::BufReader::new(f), &shown, page_size)
    }

    /// As [`TraceSpec::from_csv_file`], from any reader; `name` names the trace.
    pub fn from_csv(r: impl BufRead, name: &str, page_size: u64) -> Result<TraceSpec, TraceError> {
        let mut pages = Vec::new();
        for (i, line) in r.lines().enumerate() {
            let line = line.map_err(|e| TraceError::Io(name.to_owned(), e))?;
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with("file_id") {
                continue;
            }
            let bad = || TraceError::Csv {
                path: name.to_owned(),
                line: i + 1,
                text: t.to_owned(),
            };
            let f: Vec<u64> = t
                .split(',')
                .map(|x| x.trim().parse::<u64>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?;
            let [file, off, len] = f[..] else {
                return Err(bad());
            };
            if len == 0 {
                continue;
            }
            let end = off.checked_add(len).ok_or_else(bad)?;
            for p in off / page_size..end.div_ceil(page_size) {
                pages.push(FolioKey::base(file, p));
            }
        }
        let name = Path::new(name)
            .file_name()
            .map_or(name.to_owned(), |n| n.to_string_lossy().into_owned());
        Ok(TraceSpec::Recorded { name, pages })
    }

    /// A short label for tables.
    pub fn label(&self) -> String {
        match self {
            TraceSpec::SequentialEpochs { pages, epochs } => {
                format!("seq-epochs {pages}p x{epochs}")
            }
            TraceSpec::ShuffledEpochs { pages, epochs, .. } => {
                format!("shuffled-epochs {pages}p x{epochs}")
            }
            TraceSpec::Zipf {
                pages, exponent, ..
            } => format!("zipf {exponent} {pages}p"),
            TraceSpec::HotSet {
                hot_pages,
                cold_pages,
                hot_percent,
                ..
            } => format!("hot {hot_pages}p@{hot_percent}%+scan {cold_pages}p"),
            TraceSpec::Recorded { name, .. } => format!("csv {name}"),
        }
    }

    /// Distinct pages the trace touches (its dataset), for synthetic traces.
    pub fn dataset_pages(&self) -> u64 {
        match self {
            TraceSpec::SequentialEpochs { pages, .. }
            | TraceSpec::ShuffledEpochs { pages, .. }
            | TraceSpec::Zipf { pages, .. } => *pages,
            TraceSpec::HotSet {
                hot_pages,
                cold_pages,
                ..
            } => hot_pages + cold_pages,
            TraceSpec::Recorded { pages, .. } => pages.iter().collect::<HashSet<_>>().len() as u64,
        }
    }

    /// The page accesses.
    pub fn generate(&self) -> Vec<FolioKey> {
        let key = |p: u64| FolioKey::base(p / PAGES_PER_FILE, p % PAGES_PER_FILE);
        match *self {
            TraceSpec::SequentialEpochs { pages, epochs } => {
                (0..epochs).flat_map(|_| (0..pages).map(key)).collect()
            }
            TraceSpec::ShuffledEpochs {
                pages,
                epochs,
                seed,
            } => {
                let mut rng = SplitMix(seed);
                let mut order: Vec<u64> = (0..pages).collect();
                let mut out = Vec::with_capacity((pages * epochs as u64) as usize);
                for _ in 0..epochs {
                    rng.shuffle(&mut order);
                    out.extend(order.iter().map(|&p| key(p)));
                }
                out
            }
            TraceSpec::Zipf {
                pages,
                accesses,
                exponent,
                seed,
            } => {
                let mut rng = SplitMix(seed);
                let mut cdf = Vec::with_capacity(pages as usize);
                let mut sum = 0.0;
                for r in 1..=pages {
                    sum += 1.0 / (r as f64).powf(exponent);
                    cdf.push(sum);
                }
                // Scatter popularity over the pages so rank is not file order.
                let mut page_of_rank: Vec<u64> = (0..pages).collect();
                rng.shuffle(&mut page_of_rank);
                (0..accesses)
                    .map(|_| {
                        let u = rng.unit() * sum;
                        let r = cdf.partition_point(|&c| c < u).min(pages as usize - 1);
                        key(page_of_rank[r])
                    })
                    .collect()
            }
            TraceSpec::HotSet {
                hot_pages,
                cold_pages,
                accesses,
                hot_percent,
                seed,
            } => {
                let mut rng = SplitMix(seed);
                let mut scan = 0;
                (0..accesses)
                    .map(|_| {
                        if rng.below(100) < hot_percent as u64 || cold_pages == 0 {
                            key(rng.below(hot_pages.max(1)))
                        } else {
                            scan = (scan + 1) % cold_pages;
                            key(hot_pages + scan)
                        }
                    })
                    .collect()
            }
            TraceSpec::Recorded { ref pages, .. } => pages.clone(),
        }
    }
}

impl FromStr for TraceSpec {
    type Err = TraceError;

    /// `KIND[:key=value,...]` with KIND one of `seq`, `shuffled`, `zipf`, `hotset` and keys
    /// `pages`, `epochs`, `accesses`, `exponent`, `hot`, `cold`, `hot_percent`, `seed`.
    /// Example: `shuffled:pages=65536,epochs=5`.
    fn from_str(s: &str) -> Result<TraceSpec, TraceError> {
        let err = |m: &str| TraceError::Spec(s.to_owned(), m.to_owned());
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        let mut kv = HashMap::new();
        for part in rest.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| err("expected key=value"))?;
            kv.insert(k.trim(), v.trim());
        }
        let num = |k: &str, d: u64| -> Result<u64, TraceError> {
            kv.get(k).map_or(Ok(d), |v| {
                parse_count(v).ok_or_else(|| err(&format!("bad number for {k}")))
            })
        };
        let pages = num("pages", 65536)?;
        let seed = num("seed", 1)?;
        let spec = match kind.trim() {
            "seq" | "sequential" => TraceSpec::SequentialEpochs {
                pages,
                epochs: num("epochs", 5)? as u32,
            },
            "shuffled" => TraceSpec::ShuffledEpochs {
                pages,
                epochs: num("epochs", 5)? as u32,
                seed,
            },
            "zipf" => TraceSpec::Zipf {
                pages,
                accesses: num("accesses", 4 * pages)?,
                exponent: kv
                    .get("exponent")
                    .map_or(Ok(0.9), |v| v.parse().map_err(|_| err("bad exponent")))?,
                seed,
            },
            "hotset" => TraceSpec::HotSet {
                hot_pages: num("hot", pages / 8)?,
                cold_pages: num("cold", pages)?,
                accesses: num("accesses", 4 * pages)?,
                hot_percent: num("hot_percent", 50)?.min(100) as u32,
                seed,
            },
            _ => return Err(err("kind must be seq, shuffled, zipf or hotset")),
        };
        Ok(spec)
    }
}

/// `65536`, `64k` (×1024) or `1m` (×1024²).
fn parse_count(v: &str) -> Option<u64> {
    let v = v.to_ascii_lowercase();
    let (n, mul) = match v.as_bytes().last()? {
        b'k' => (&v[..v.len() - 1], 1 << 10),
        b'm' => (&v[..v.len() - 1], 1 << 20),
        _ => (&v[..], 1),
    };
    n.parse::<u64>().ok()?.checked_mul(mul)
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub traces: Vec<TraceSpec>,
    /// Cache sizes in bytes (each rounded down to whole pages).
    pub capacities: Vec<u64>,
    /// Page size of the replay (4 KiB models base pages; 2 MiB models huge pages).
    pub page_size: u64,
    /// Policy names (see `POLICY_NAMES`); empty means all of them.
    pub policies: Vec<String>,
    /// Replay OPT beside the policies.
    pub opt: bool,
    /// Tell the policies that every file of an epoch trace carries `Hint::Epoch`.
    pub epoch_hint: bool,
}

impl Default for SimConfig {
    /// The standard synthetic set over a 256 MiB dataset at tiers of 1/1.5, 1/2 and 1/4 of it.
    fn default() -> Self {
        let dataset: u64 = 256 << 20;
        SimConfig::synthetic(dataset, vec![dataset * 2 / 3, dataset / 2, dataset / 4])
    }
}

impl SimConfig {
    /// The standard synthetic traces over `dataset_bytes` of 4 KiB pages.
    pub fn synthetic(dataset_bytes: u64, capacities: Vec<u64>) -> SimConfig {
        let pages = (dataset_bytes / PAGE_SIZE).max(1);
        SimConfig {
            traces: vec![
                TraceSpec::SequentialEpochs { pages, epochs: 5 },
                TraceSpec::ShuffledEpochs {
                    pages,
                    epochs: 5,
                    seed: 1,
                },
                TraceSpec::Zipf {
                    pages,
                    accesses: 4 * pages,
                    exponent: 0.9,
                    seed: 2,
                },
                TraceSpec::HotSet {
                    hot_pages: pages / 8,
                    cold_pages: pages,
                    accesses: 4 * pages,
                    hot_percent: 50,
                    seed: 3,
                },
            ],
            capacities,
            page_size: PAGE_SIZE,
            policies: Vec::new(),
            opt: true,
            epoch_hint: false,
        }
    }
}

/// One trace at one capacity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimRow {
    pub trace: String,
    pub accesses: u64,
    pub distinct_pages: u64,
    pub capacity_pages: u64,
    /// OPT's hit ratio, if replayed.
    pub opt: Option<f64>,
    /// Hit ratio per policy, in [`SimReport::policies`] order.
    pub hit_ratios: Vec<f64>,
}

/// Hit ratios side by side; `Display` prints a table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    pub policies: Vec<String>,
    pub rows: Vec<SimRow>,
}

#[cfg(test)]
impl SimReport {
    /// The hit ratio of `policy` in `row`.
    pub fn ratio(&self, row: &SimRow, policy: &str) -> Option<f64> {
        let i = self.policies.iter().position(|p| p == policy)?;
        row.hit_ratios.get(i).copied()
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tw = self
            .rows
            .iter()
            .map(|r| r.trace.len())
            .max()
            .unwrap_or(5)
            .max(5);
        write!(
            f,
            "{:<tw$} {:>9} {:>8} {:>8} {:>7}",
            "trace", "accesses", "distinct", "capacity", "OPT"
        )?;
        for p in &self.policies {
            write!(f, " {:>15}", p)?;
        }
        writeln!(f)?;
        for r in &self.rows {
            let opt = r
                .opt
                .map_or("-".to_owned(), |o| format!("{:.1}%", o * 100.0));
            write!(
                f,
                "{:<tw$} {:>9} {:>8} {:>8} {:>7}",
                r.trace, r.accesses, r.distinct_pages, r.capacity_pages, opt
            )?;
            for &h in &r.hit_ratios {
                let cell = match r.opt {
                    Some(o) if o > 0.0 => format!("{:.1}% ({:.2})", h * 100.0, h / o),
                    _ => format!("{:.1}%", h * 100.0),
                };
                write!(f, " {:>15}", cell)?;
            }
            writeln!(f)?;
        }
        if self.rows.iter().any(|r| r.opt.is_some()) {
            writeln!(
                f,
                "(x.xx) = hit ratio / OPT's; capacity and distinct in pages"
            )?;
        }
        Ok(())
    }
}

/// Replays every trace at every capacity through OPT and every policy.
///
/// # Panics
/// If a name in `cfg.policies` is unknown (validate with `policy_by_name` first).
pub fn run_simulation(cfg: SimConfig) -> SimReport {
    let policies: Vec<String> = if cfg.policies.is_empty() {
        POLICY_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        cfg.policies.clone()
    };
    let page_size = cfg.page_size.max(1);
    let mut rows = Vec::new();
    for spec in &cfg.traces {
        let trace = regroup(spec.generate(), page_size);
        let distinct = trace.iter().collect::<HashSet<_>>().len() as u64;
        let epoch = cfg.epoch_hint
            && matches!(
                spec,
                TraceSpec::SequentialEpochs { .. } | TraceSpec::ShuffledEpochs { .. }
            );
        let files: Vec<FileId> = if epoch {
            let set: BTreeSet<FileId> = trace.iter().map(|k| k.file).collect();
            set.into_iter().collect()
        } else {
            Vec::new()
        };
        for &cap in &cfg.capacities {
            let capacity = (cap / page_size).max(1);
            let opt = cfg
                .opt
                .then(|| ratio(opt_hits(&trace, capacity), trace.len()));
            let hit_ratios = policies
                .iter()
                .map(|name| {
                    let mut p =
                        policy_by_name(name).unwrap_or_else(|e| panic!("run_simulation: {e}"));
                    for &f in &files {
                        p.set_hint(f, Hint::Epoch);
                    }
                    ratio(policy_hits(p.as_mut(), &trace, capacity), trace.len())
                })
                .collect();
            rows.push(SimRow {
                trace: spec.label(),
                accesses: trace.len() as u64,
                distinct_pages: distinct,
                capacity_pages: capacity,
                opt,
                hit_ratios,
            });
        }
    }
    SimReport { policies, rows }
}

fn ratio(hits: u64, n: usize) -> f64 {
    if n == 0 { 0.0 } else { hits as f64 / n as f64 }
}

/// Maps 4 KiB page keys onto `page_size` pages, merging consecutive repeats (one read of a
/// large page, not many).
fn regroup(trace: Vec<FolioKey>, page_size: u64) -> Vec<FolioKey> {
    if page_size == PAGE_SIZE {
        return trace;
    }
    let per = (page_size / PAGE_SIZE).max(1);
    let mut out: Vec<FolioKey> = Vec::with_capacity(trace.len());
    for k in trace {
        let g = FolioKey::base(k.file, k.position() / per);
        if out.last() != Some(&g) {
            out.push(g);
        }
    }
    out
}

/// Hits of `policy` replaying `trace` in a cache of `capacity` pages, driven exactly as the
/// tier drives it (module docs). Checks the capacity and the policy's bookkeeping as it goes.
pub fn policy_hits(policy: &mut dyn EvictionPolicy, trace: &[FolioKey], capacity: u64) -> u64 {
    policy.configure(capacity, 1);
    let mut resident: HashSet<FolioKey> = HashSet::new();
    let mut hits = 0;
    for (id, key) in (1u64..).zip(trace) {
        if resident.contains(key) {
            hits += 1;
            policy.touch(key);
            continue;
        }
        policy.record_miss(key);
        if (resident.len() as u64) < capacity {
            resident.insert(*key);
            policy.insert(*key, id);
        } else if policy.admit(key) {
            let (victim, _) = policy.pop_victim().expect("a full cache has a victim");
            assert!(
                resident.remove(&victim),
                "victim {victim:?} was not resident"
            );
            resident.insert(*key);
            policy.insert(*key, id);
        }
        debug_assert!(resident.len() as u64 <= capacity);
        debug_assert_eq!(resident.len(), policy.len());
    }
    hits
}

/// Hits of Belady's OPT (MIN with bypass) replaying `trace` in `capacity` pages.
pub fn opt_hits(trace: &[FolioKey], capacity: u64) -> u64 {
    // Dense ids, then each access's next use (usize::MAX: never).
    let mut ids: HashMap<FolioKey, u32> = HashMap::new();
    let dense: Vec<u32> = trace
        .iter()
        .map(|k| {
            let n = ids.len() as u32;
            *ids.entry(*k).or_insert(n)
        })
        .collect();
    let mut next = vec![usize::MAX; trace.len()];
    let mut last = vec![usize::MAX; ids.len()];
    for i in (0..trace.len()).rev() {
        next[i] = last[dense[i] as usize];
        last[dense[i] as usize] = i;
    }
    // Resident pages ordered by next use; `at[id]` = its current next use (or none).
    let mut by_next: BTreeSet<(usize, u32)> = BTreeSet::new();
    let mut at: Vec<Option<usize>> = vec![None; ids.len()];
    let mut hits = 0;
    for i in 0..trace.len() {
        let id = dense[i];
        if let Some(n) = at[id as usize] {
            hits += 1;
            by_next.remove(&(n, id));
        } else if by_next.len() as u64 >= capacity {
            let &(far, victim) = by_next.last().expect("full");
            if next[i] >= far {
                continue; // bypass: this page is needed last
            }
            by_next.remove(&(far, victim));
            at[victim as usize] = None;
        }
        by_next.insert((next[i], id));
        at[id as usize] = Some(next[i]);
    }
    hits
}

/// A small deterministic PRNG (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn small(capacities: Vec<u64>) -> SimConfig {
        // 32 MiB dataset: big enough for the shapes, small enough for a debug build.
        SimConfig::synthetic(32 << 20, capacities)
    }

    #[test]
    fn targets_hold_on_the_synthetic_traces() {
        let d: u64 = 32 << 20;
        let r = run_simulation(small(vec![d * 2 / 3, d / 2, d / 4]));
        for row in &r.rows {
            let opt = row.opt.unwrap();
            let lru = r.ratio(row, "lru").unwrap();
            let ours = r.ratio(row, "tinylfu").unwrap();
            if row.trace.contains("epochs") {
                assert!(ours >= 0.9 * opt, "{}: {ours} vs OPT {opt}\n{r}", row.trace);
            } else {
                assert!(
                    ours >= lru - 0.02,
                    "{}: {ours} vs LRU {lru}\n{r}",
                    row.trace
                );
            }
            for &h in &row.hit_ratios {
                assert!(h <= opt + 1e-12, "{}: a policy beat OPT\n{r}", row.trace);
            }
        }
    }

    #[test]
    fn same_config_same_report_and_a_table() {
        let cfg = small(vec![8 << 20]);
        let a = run_simulation(cfg.clone());
        let b = run_simulation(cfg);
        assert_eq!(a, b);
        let text = a.to_string();
        assert!(text.contains("OPT") && text.contains("tinylfu") && text.contains("shuffled"));
        assert_eq!(a.rows.len(), 4);
    }

    #[test]
    fn csv_traces_split_into_pages() {
        let csv = "file_id,offset,len\n# comment\n1,0,8192\n1,4096,1\n2,10000,0\n\n3,8191,2\n";
        let t = TraceSpec::from_csv(csv.as_bytes(), "dir/x.csv", 4096).unwrap();
        let TraceSpec::Recorded {
            ref name,
            ref pages,
        } = t
        else {
            panic!()
        };
        assert_eq!(name, "x.csv");
        assert_eq!(
            pages,
            &[
                FolioKey::base(1, 0),
                FolioKey::base(1, 1),
                FolioKey::base(1, 1),
                FolioKey::base(3, 1),
                FolioKey::base(3, 2),
            ]
        );
        let e = TraceSpec::from_csv("1,2\n".as_bytes(), "t", 4096).unwrap_err();
        assert!(e.to_string().contains("t:1"), "{e}");
        let mut cfg = SimConfig::synthetic(1 << 20, vec![8192]);
        cfg.traces = vec![t];
        let r = run_simulation(cfg);
        assert_eq!(r.rows[0].opt, Some(1.0 / 5.0));
    }

    #[test]
    fn trace_specs_parse() {
        assert_eq!(
            "shuffled:pages=64k,epochs=3".parse::<TraceSpec>().unwrap(),
            TraceSpec::ShuffledEpochs {
                pages: 65536,
                epochs: 3,
                seed: 1
            }
        );
        assert!(matches!(
            "zipf:exponent=1.1".parse::<TraceSpec>().unwrap(),
            TraceSpec::Zipf { exponent, .. } if exponent == 1.1
        ));
        assert!("lfu".parse::<TraceSpec>().is_err());
        assert!("seq:pages".parse::<TraceSpec>().is_err());
    }

    #[test]
    fn huge_page_replay_regroups_reads() {
        let spec = TraceSpec::SequentialEpochs {
            pages: 1024,
            epochs: 2,
        };
        let mut cfg = SimConfig::synthetic(4 << 20, vec![4 << 20]);
        cfg.traces = vec![spec];
        cfg.page_size = crate::tier::types::HUGE_PAGE_SIZE;
        let r = run_simulation(cfg);
        // 4 files of 1 MiB: one 2 MiB page each, 2 fit; the second epoch hits 2 of 4.
        assert_eq!(r.rows[0].accesses, 8);
        assert_eq!(r.rows[0].capacity_pages, 2);
        assert_eq!(r.rows[0].opt, Some(0.25));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// OPT bounds every policy; replays never exceed capacity (checked inside) and are
        /// deterministic.
        #[test]
        fn opt_bounds_every_policy(
            trace in proptest::collection::vec((0u64..3, 0u64..24), 1..400),
            capacity in 1u64..20,
        ) {
            let trace: Vec<FolioKey> = trace.into_iter().map(|(f, p)| FolioKey::base(f, p)).collect();
            let opt = opt_hits(&trace, capacity);
            for name in POLICY_NAMES {
                let h = policy_hits(policy_by_name(name).unwrap().as_mut(), &trace, capacity);
                prop_assert!(h <= opt, "{name}: {h} > OPT {opt}");
                let again = policy_hits(policy_by_name(name).unwrap().as_mut(), &trace, capacity);
                prop_assert_eq!(h, again);
            }
        }
    }
}
