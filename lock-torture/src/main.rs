//! `lock-torture`: the fault campaign. Worker processes contend for a few
//! keys of one backend, each holding making fenced writes to a register that
//! refuses stale tokens; a nemesis injects one fault at a time (a worker
//! killed or paused past its TTL, its connection cut, reset, slowed or losing
//! replies, the server paused, etcd's history compacted) and heals it; the
//! checker then reads the merged history (one monotonic clock for every
//! process) for overlapping holders, token regressions, stale writes and
//! recovery times, and the service is inspected for leftovers. In exec mode
//! the workers hold their locks through `distlock exec`, guarding a command
//! that traps SIGTERM and writes until it is killed. With `--cluster` they
//! use the service's 3-member cluster, whose leader the nemesis kills and
//! pauses; the memory backend's workers are tasks of the campaign.
//!
//! ```sh
//! lock-torture run --backend etcd --seed 7                 # every fault once
//! lock-torture run --backend zk --duration 10m --seed 7    # the long campaign
//! lock-torture run --backend etcd --mode exec --seed 3     # through `distlock exec`
//! lock-torture run --backend consul --cluster --seed 5     # leader kills and pauses
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
mod task_worker;
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
    /// Every backend, every fault it allows, once, with a fixed seed; every
    /// server backend in exec mode with the faults that differ there, and on
    /// its cluster with the leader's faults (CI). The backends run side by
    /// side (their services are separate), each one's campaigns in turn.
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
            Command::Run(args) => campaigns(vec![vec![args]]).await,
            Command::Smoke { out } => campaigns(smoke(&out)).await,
        }
    });
    ExitCode::from(code)
}

/// The CI campaigns, one lane per backend: every fault it allows in library
/// mode; then, but for memory, exec mode with the faults whose effect
/// differs there (a killed supervisor, a paused process tree, a cut that
/// makes `distlock exec` kill its command); then, for the server backends,
/// the cluster campaign with the faults a cluster adds (its leader killed
/// and paused).
fn smoke(out: &std::path::Path) -> Vec<Vec<campaign::CampaignArgs>> {
    let one = |backend: &str, mode, cluster, faults: &[Fault]| campaign::CampaignArgs {
        backend: backend.to_owned(),
        cluster,
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
    let library = campaign::Mode::Library;
    let exec = [Fault::Kill, Fault::Pause, Fault::Cut];
    let cluster = [Fault::Pause, Fault::ServerPause, Fault::LeaderKill, Fault::Compact];
    let mut lanes = vec![
        vec![one("memory", library, false, &[])],
        vec![one("file", library, false, &[]), one("file", campaign::Mode::Exec, false, &exec)],
    ];
    for backend in ["etcd", "zk", "consul"] {
        lanes.push(vec![
            one(backend, library, false, &[]),
            one(backend, campaign::Mode::Exec, false, &exec),
            one(backend, library, true, &cluster),
        ]);
    }
    lanes
}

/// Runs the lanes side by side, each lane's campaigns one after another,
/// and prints the table (in lane order); exit 0 only when no campaign found
/// a violation.
async fn campaigns(lanes: Vec<Vec<campaign::CampaignArgs>>) -> u8 {
    // Built before any campaign runs, not while others do.
    if lanes.iter().flatten().any(|args| args.mode == campaign::Mode::Exec)
        && let Err(error) = distlock_binary::locate().await
    {
        report_error(&error);
        return 1;
    }
    let runs: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for args in &lane {
                    outcomes.push(campaign::run(args).await.map_err(|error| format!("{}: {error}", args.backend))?);
                }
                Ok::<_, String>(outcomes)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    let mut failed = false;
    for run in runs {
        match run.await {
            Ok(Ok(lane)) => outcomes.extend(lane),
            Ok(Err(error)) => {
                report_error(&error);
                failed = true;
            }
            Err(panicked) => {
                report_error(&format!("a campaign panicked: {panicked}"));
                failed = true;
            }
        }
    }
    let table = report::table(&outcomes);
    let violations = report::violations(&outcomes);
    emit(&table, violations, failed);
    u8::from(violations > 0 || failed)
}

#[allow(clippy::print_stdout)]
fn emit(table: &str, violations: usize, failed: bool) {
    println!("{table}");
    if failed {
        println!("torture: {violations} violations, and a campaign could not run (see above)");
    } else {
        println!("torture: {violations} violations");
    }
}

#[allow(clippy::print_stderr)]
fn report_error(message: &str) {
    eprintln!("lock-torture: {message}");
}
