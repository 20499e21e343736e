//! `lock-bench`: how close each distlock backend gets to its server's own
//! round trip. Prints a table, then one JSON line per scenario.
//!
//! ```text
//! cargo run --release -p lock-bench -- --backend mem --backend etcd
//! cargo run --release -p lock-bench -- --smoke
//! cargo run --release -p lock-bench -- --peers   # against Curator, kazoo, python-etcd3, python-consul, etcdctl, consul
//! ```

// A benchmark's output is its product.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod election;
mod peers;
mod readers;
mod scenarios;
mod stats;
mod target;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Command-line options; defaults keep a full run of all backends within a
/// few minutes on two cores.
#[derive(Debug, Parser)]
#[command(about = "Benchmarks distlock backends against their server's raw round trip")]
pub struct Options {
    /// Backends to run (mem, file, etcd, zk, consul); default: all built in.
    #[arg(long = "backend")]
    backends: Vec<String>,
    /// Samples for the latency scenarios.
    #[arg(long, default_value_t = 500)]
    iterations: usize,
    /// Length of the contention and spread scenarios.
    #[arg(long, value_parser = parse_seconds, default_value = "3")]
    duration: Duration,
    /// Locks held at once in the scale scenario.
    #[arg(long, default_value_t = 10_000)]
    locks: usize,
    /// How long the scale scenario watches the service's request rate.
    #[arg(long, value_parser = parse_seconds, default_value = "5")]
    hold: Duration,
    /// Lease TTL of the benchmark's clients, in seconds.
    #[arg(long, value_parser = parse_seconds, default_value = "5")]
    ttl: Duration,
    /// A tiny run that only checks every scenario still works.
    #[arg(long)]
    smoke: bool,
    /// Compare distlock with other projects' lock clients on the same
    /// servers (installs them through `scripts/services install peers`).
    #[arg(long)]
    peers: bool,
    /// Rounds of the peer comparison: each runs every scenario on every
    /// side in turn, `--iterations` split over them; `--duration` is each
    /// round's contended run.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>().map(Duration::from_secs_f64).map_err(|e| format!("{text:?} is not a number of seconds: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut options = Options::parse();
    if options.smoke {
        options.iterations = 20;
        options.duration = Duration::from_millis(500);
        options.locks = 200;
        options.hold = Duration::from_secs(1);
        options.rounds = 1;
    }
    if options.peers {
        return peers::run(&options).await;
    }
    if options.backends.is_empty() {
        options.backends = vec!["mem".into(), "file".into(), "etcd".into(), "zk".into(), "consul".into()];
    }
    let mut rows = Vec::new();
    let mut failed = false;
    for name in options.backends.clone() {
        let target = match target::Target::named(&name, options.ttl) {
            Ok(target) => target,
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::from(2);
            }
        };
        let runs = [
            scenarios::latency(&target, &options).await,
            scenarios::contention(&target, &options, 4).await,
            scenarios::contention(&target, &options, 16).await,
            scenarios::spread(&target, &options).await,
            scenarios::scale(&target, &options).await,
            readers::read_latency(&target, &options).await,
            readers::shared_readers(&target, &options).await,
            election::semaphore_latency(&target, &options).await,
            election::leader_failover(&target, &options).await,
        ];
        for run in runs {
            match run {
                Ok(mut done) => {
                    done.iter().for_each(|row| println!("{}", row.text()));
                    rows.append(&mut done);
                }
                Err(error) => {
                    eprintln!("{name}: {error}");
                    failed = true;
                }
            }
        }
    }
    println!();
    rows.iter().for_each(|row| println!("{}", row.json()));
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
