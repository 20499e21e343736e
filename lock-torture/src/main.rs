//! `lock-torture`: the fault campaign. Worker processes contend for a few
//! keys of one backend, each holding making fenced writes to a register that
//! refuses stale tokens; a nemesis injects one fault at a time (a worker
//! killed or paused past its TTL, its connection cut, reset, slowed or losing
//! replies, the server paused, etcd's history compacted) and heals it; the
//! checker then reads the merged history (one monotonic clock for every
//! process) for overlapping holders, token regressions, stale writes and
//! recovery times, and the service is inspected for leftovers. In exec mode
//! the workers hold their locks through `distlock exec`, guarding a command
//! that traps SIGTERM and writes until it is killed.
//!
//! ```sh
//! lock-torture run --backend etcd --seed 7                 # every fault once
//! lock-torture run --backend zk --duration 10m --seed 7    # the long campaign
//! lock-torture run --backend etcd --mode exec --seed 3     # through `distlock exec`
//! lock-torture smoke                                       # CI: every backend, both modes, fixed seed
//! ```

mod campaign;
mod checker;
mod clock;
mod distlock_binary;
mod exec_body;
mod exec_worker;
mod history;
mod nemesis;
mod process_tree;
mod register;
mod report;
mod target;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::nemesis::Fault;

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
    /// Every backend, every fault it allows, once, with a fixed seed, then
    /// every backend in exec mode with the faults that differ there (CI).
    Smoke {
        /// Where histories go.
        #[arg(long, default_value = "target/torture")]
        out: std::path::PathBuf,
    },
    /// A worker process (started by the campaign).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// An exec-mode worker process, running `distlock exec` (started by the
    /// campaign).
    #[command(hide = true)]
    ExecWorker(exec_worker::ExecWorkerArgs),
    /// The command an exec-mode worker's `distlock exec` guards.
    #[command(hide = true)]
    ExecBody(exec_body::ExecBodyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The libraries' diagnostics, on stderr, only when RUST_LOG asks (e.g.
    // `RUST_LOG=lock_etcd=debug`, to follow a finding); the campaign itself
    // reports through its histories.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
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
            Command::ExecWorker(args) => exec_worker::run(args).await,
            Command::ExecBody(args) => exec_body::run(args).await,
            Command::Run(args) => campaigns(vec![args]).await,
            Command::Smoke { out } => campaigns(smoke(&out)).await,
        }
    });
    ExitCode::from(code)
}

/// The CI campaigns: every backend, every fault it allows, in library mode;
/// then every backend in exec mode with the faults whose effect differs
/// there (a killed supervisor, a paused process tree, a cut that makes
/// `distlock exec` kill its command), to keep the run short.
fn smoke(out: &std::path::Path) -> Vec<campaign::CampaignArgs> {
    let one = |backend: &str, mode, faults: &[Fault]| campaign::CampaignArgs {
        backend: backend.to_owned(),
        mode,
        workers: 4,
        keys: 2,
        faults: faults.to_vec(),
        duration: None,
        seed: 1,
        // etcd's shortest: keeps the CI run short.
        ttl: std::time::Duration::from_secs(2),
        out: out.to_path_buf(),
    };
    let backends = ["file", "etcd", "zk", "consul"];
    let library = backends.iter().map(|backend| one(backend, campaign::Mode::Library, &[]));
    let exec = [Fault::Kill, Fault::Pause, Fault::Cut];
    library.chain(backends.iter().map(|backend| one(backend, campaign::Mode::Exec, &exec))).collect()
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
