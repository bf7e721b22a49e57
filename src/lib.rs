//! pagetier: a FUSE filesystem prototyping a page-cache extension with a
//! read-only device tier. See README.md for the model and the interfaces.
//!
//! The library exists for the `pagetier` binary, the mount tests and the
//! benchmarks: it exports what they use and nothing else (the modules are
//! private, so the compiler reports code nothing reaches). `tier` is public
//! for the benchmarks and the tests of its parsers.
#![deny(clippy::undocumented_unsafe_blocks)]

mod cli;
mod coherence;
mod control;
mod creds;
mod errno;
mod forgets;
mod fs;
mod fuse;
mod heap;
mod inode;
mod iomode;
mod lock;
mod metrics;
mod notify;
mod range;
mod run;
mod size;
mod stats;
mod storage;
pub mod tier;
mod tools;
mod top;
mod watch;
mod workers;

pub use cli::{Cli, Command, MountArgs, normalize_args, settings};
pub use heap::restart_without_thread_caches;
pub use iomode::PassthroughMode;
pub use range::ByteRange;
pub use run::{LogConfig, init_logging_with, mount_with_log};
pub use size::{ByteSize, parse_capacity, parse_size};
pub use stats::StatsDocument;
pub use tools::{
    BatchOptions, SimulateArgs, evict, prefetch, residency, simulate, stats as print_stats,
};
pub use top::top;
