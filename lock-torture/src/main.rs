//! `lock-torture`: the fault campaign. Worker processes contend for a few
//! keys of one backend, each holding making fenced writes to a register that
//! refuses stale tokens; a nemesis injects one fault at a time (a worker
//! killed or paused past its TTL, its connection cut, reset, slowed or losing
//! replies, the server paused, etcd's history compacted) and heals it; the
//! checker then reads the merged history (one monotonic clock for every
//! process) for overlapping holders, token regressions, stale writes and
//! recovery times, and the service is inspected for leftovers.
//!
//! ```sh
//! lock-torture run --backend etcd --seed 7                 # every fault once
//! lock-torture run --backend zk --duration 10m --seed 7    # the long campaign
//! lock-torture smoke                                       # CI: every backend, every fault, fixed seed
//! ```

mod campaign;
mod checker;
mod clock;
mod history;
mod nemesis;
mod register;
mod report;
mod target;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "lock-torture", about = "A fault campaign with a history checker, against every distlock backend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One campaign against one backend.
    Run(campaign::CampaignArgs),
    /// Every backend, every fault it allows, once, with a fixed seed (CI).
    Smoke {
        /// Where histories go.
        #[arg(long, default_value = "target/torture")]
        out: std::path::PathBuf,
    },
    /// A worker process (started by the campaign).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            report_error(&format!("cannot start: {error}"));
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Worker(args) => worker::run(args).await,
            Command::Run(args) => campaigns(vec![args]).await,
            Command::Smoke { out } => {
                let all = ["file", "etcd", "zk", "consul"].map(|backend| campaign::CampaignArgs {
                    backend: backend.to_owned(),
                    workers: 4,
                    keys: 2,
                    faults: Vec::new(),
                    duration: None,
                    seed: 1,
                    // etcd's shortest: keeps the CI run short.
                    ttl: std::time::Duration::from_secs(2),
                    out: out.clone(),
                });
                campaigns(all.to_vec()).await
            }
        }
    });
    ExitCode::from(code)
}

/// Runs the campaigns one after another and prints the table; exit 0 only
/// when no campaign found a violation.
async fn campaigns(all: Vec<campaign::CampaignArgs>) -> u8 {
    let mut outcomes = Vec::new();
    for args in &all {
        match campaign::run(args).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(error) => {
                report_error(&format!("{}: {error}", args.backend));
                return 1;
            }
        }
    }
    let table = report::table(&outcomes);
    let violations = report::violations(&outcomes);
    emit(&table, violations);
    u8::from(violations > 0)
}

#[allow(clippy::print_stdout)]
fn emit(table: &str, violations: usize) {
    println!("{table}");
    println!("torture: {violations} violations");
}

#[allow(clippy::print_stderr)]
fn report_error(message: &str) {
    eprintln!("lock-torture: {message}");
}
