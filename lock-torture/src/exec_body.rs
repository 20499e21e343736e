//! `lock-torture exec-body`: the command a `distlock exec` guards in exec
//! mode. It stands for an arbitrary user command: it knows its lock only
//! from its environment (`DISTLOCK_KEY`, `DISTLOCK_FENCING_TOKEN`), never
//! looks for a loss, and traps SIGTERM: once told to stop it goes on writing
//! until it is killed. Only the register's fencing and `distlock exec`'s
//! SIGKILL stop it.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{MissedTickBehavior, interval};

use crate::history::{Kind, Recorder};
use crate::register::{WriteRequest, Writer};

/// Between two writes.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// `lock-torture exec-body`: the guarded command (started by `distlock
/// exec`, for an exec-worker).
#[derive(Debug, Args)]
pub struct ExecBodyArgs {
    /// The worker's name in the history.
    #[arg(long)]
    pub name: String,
    /// How its writes are signed: the worker incarnation's
    /// [`crate::worker::writer_id`].
    #[arg(long)]
    pub writer: String,
    /// The key the worker asked for, checked against `DISTLOCK_KEY`.
    #[arg(long)]
    pub key: String,
    /// The register's address.
    #[arg(long)]
    pub register: String,
    /// The history file to append to (the worker's).
    #[arg(long)]
    pub history: PathBuf,
    /// Writes to make, [`WRITE_INTERVAL`] apart, unless SIGTERM comes first.
    #[arg(long)]
    pub writes: u32,
}

/// Runs the holding; exits 0 after its writes, and never once SIGTERM has
/// come.
pub async fn run(args: ExecBodyArgs) -> u8 {
    // The trap: with a handler installed, SIGTERM no longer ends the process.
    let Ok(mut terminate) = signal(SignalKind::terminate()) else { return 1 };
    let Ok(mut history) = Recorder::open(&args.history, &args.name) else { return 1 };
    let key = std::env::var("DISTLOCK_KEY").unwrap_or_default();
    let token = std::env::var("DISTLOCK_FENCING_TOKEN").ok().and_then(|token| token.parse::<u64>().ok());
    let Some(token) = token.filter(|_| key == args.key) else {
        history.record(Kind::AcquireFailed {
            key: args.key,
            error: format!("exec-body: DISTLOCK_KEY {key:?} without a matching DISTLOCK_FENCING_TOKEN"),
        });
        return 1;
    };
    // For the worker's record of how the holding ended; told before the
    // grant is recorded, so a recorded grant always has its end recorded.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{token}").and_then(|()| stdout.flush());
    history.record(Kind::Granted { key: key.clone(), token });
    let Ok(mut register) = Writer::connect(&args.register).await else { return 1 };
    let mut tick = interval(WRITE_INTERVAL);
    // Resumed after a pause, it writes at once, then every interval again.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut terminated = false;
    let mut written = 0;
    loop {
        tokio::select! {
            _ = terminate.recv(), if !terminated => terminated = true,
            _ = tick.tick() => {
                if written >= args.writes && !terminated {
                    return 0;
                }
                let request = WriteRequest { key: key.clone(), token, worker: args.writer.clone() };
                if register.write(&request).await.is_err() {
                    return 1;
                }
                written += 1;
            }
        }
    }
}
