//! The `pagetier` binary: parse, then hand over to the library.

use clap::Parser;
use pagetier::cli::{Cli, Command};

fn main() {
    let argv = pagetier::cli::normalize_args(std::env::args_os().collect());
    let cli = Cli::parse_from(argv);
    let res = match cli.command {
        Command::Mount(args) => {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            match pagetier::cli::settings(&args, cpus) {
                Ok(s) => {
                    pagetier::run::init_logging(
                        s.log_level.as_deref(),
                        args.log_format.unwrap_or_default(),
                    );
                    pagetier::run::mount(args, s)
                }
                Err(e) => Err(anyhow::anyhow!(e)),
            }
        }
        Command::Stats { mountpoint, json } => pagetier::tools::stats(&mountpoint, json),
        Command::Residency { paths } => pagetier::tools::residency(&paths),
        Command::Prefetch { range, paths } => pagetier::tools::prefetch(&range, &paths),
        Command::Evict { paths } => pagetier::tools::evict(&paths),
    };
    if let Err(e) = res {
        eprintln!("pagetier: error: {e:#}");
        std::process::exit(1);
    }
}
