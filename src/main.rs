//! The `pagetier` binary: parse, then hand over to the library.

use clap::Parser;
use pagetier::{Cli, Command};

fn main() {
    let argv = pagetier::normalize_args(std::env::args_os().collect());
    let cli = Cli::parse_from(argv);
    let res = match cli.command {
        Command::Mount(args) => {
            if let Some(e) = pagetier::restart_without_thread_caches() {
                eprintln!("pagetier: warning: running with glibc's thread caches (restart: {e})");
            }
            let args = *args;
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            match pagetier::settings(&args, cpus) {
                Ok(s) => pagetier::init_logging_with(&pagetier::LogConfig {
                    level: s.log_level.clone(),
                    format: args.log_format.unwrap_or_default(),
                    file: s.log_file.clone(),
                    stats: s.log_stats.is_some(),
                })
                .and_then(|log| pagetier::mount_with_log(args, s, log)),
                Err(e) => Err(anyhow::anyhow!(e)),
            }
        }
        Command::Stats { mountpoint, json } => pagetier::print_stats(&mountpoint, json),
        Command::Residency {
            recursive,
            jobs,
            paths,
        } => pagetier::residency(
            &paths,
            &pagetier::BatchOptions {
                recursive,
                jobs: jobs.map(usize::from),
                ignore_capacity: false,
            },
        ),
        Command::Prefetch {
            range,
            recursive,
            jobs,
            ignore_capacity,
            paths,
        } => pagetier::prefetch(
            &range,
            &paths,
            &pagetier::BatchOptions {
                recursive,
                jobs: jobs.map(usize::from),
                ignore_capacity,
            },
        ),
        Command::Evict {
            recursive,
            jobs,
            paths,
        } => pagetier::evict(
            &paths,
            &pagetier::BatchOptions {
                recursive,
                jobs: jobs.map(usize::from),
                ignore_capacity: true,
            },
        ),
        Command::Simulate {
            traces,
            synthetic,
            capacities,
            page_size,
            policies,
            epoch_hint,
            json,
        } => pagetier::simulate(pagetier::SimulateArgs {
            traces,
            synthetic,
            capacities,
            page_size,
            policies,
            epoch_hint,
            json,
        }),
        Command::Top {
            mountpoint,
            once,
            interval,
        } => pagetier::top(&mountpoint, once, interval),
    };
    if let Err(e) = res {
        eprintln!("pagetier: error: {e:#}");
        std::process::exit(1);
    }
}
