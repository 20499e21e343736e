//! `lock-torture exec-worker`: a contending process of exec mode. It runs
//! `distlock exec` again and again, each time on a key drawn from its seed,
//! with `lock-torture exec-body` as the guarded command, and records how each
//! run ended, until told to stop.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use clap::Args;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};
use tokio::time::{sleep, timeout};

use crate::exec_body::WRITE_INTERVAL;
use crate::history::{Kind, Recorder};
use crate::process_tree;

/// What `distlock exec` exits with when the lock was lost while the command
/// ran (lock-cli's `exit::LOST`).
const DISTLOCK_LOST: i32 = 74;

/// Exit codes after which running `distlock exec` again cannot help: a
/// usage error, a malformed URL, key or option, a command not found or not
/// executable.
const DISTLOCK_FATAL: [i32; 4] = [2, 78, 126, 127];

/// `lock-torture exec-worker`: one contending process of exec mode
/// (started by the campaign).
#[derive(Debug, Args)]
pub struct ExecWorkerArgs {
    /// What every worker process is told.
    #[command(flatten)]
    pub worker: crate::worker::WorkerIdentity,
    /// The `distlock` binary to run.
    #[arg(long)]
    pub distlock: PathBuf,
    /// Where `distlock exec`'s messages go.
    #[arg(long)]
    pub log: PathBuf,
}

/// The most writes one holding makes: a holding lasts up to 1.5 × TTL, so
/// that some are renewed and some outlive a cut.
fn most_writes(ttl: Duration) -> usize {
    let nanos = ttl.as_nanos() * 3 / 2 / WRITE_INTERVAL.as_nanos();
    usize::try_from(nanos).unwrap_or(usize::MAX).max(1)
}

/// Runs until SIGTERM (the campaign ends workers with SIGTERM, then SIGKILL).
pub async fn run(ExecWorkerArgs { worker: args, distlock, log }: ExecWorkerArgs) -> u8 {
    let Ok(mut history) = Recorder::open(&args.history, &args.name) else { return 1 };
    history.record(Kind::Started { pid: std::process::id() });
    let Ok(body) = std::env::current_exe() else { return 1 };
    let Ok(mut stop) = signal(SignalKind::terminate()) else { return 1 };
    let mut random = crate::nemesis::Random::new(args.seed);
    let ttl = humantime::format_duration(args.ttl).to_string();
    loop {
        let key = args.keys[random.below(args.keys.len())].clone();
        let writes = 1 + random.below(most_writes(args.ttl));
        let log = match std::fs::OpenOptions::new().create(true).append(true).open(&log) {
            Ok(log) => Stdio::from(log),
            Err(_) => Stdio::null(),
        };
        let mut command = Command::new(&distlock);
        command
            .args(["exec", "--backend", &args.url, "--key", &key, "--ttl", &ttl, "--"])
            .arg(&body)
            .args(["exec-body", "--name", &args.name, "--key", &key, "--register", &args.register])
            .args(["--writer", &crate::worker::writer_id(&args.name, args.incarnation)])
            .arg("--history")
            .arg(&args.history)
            .args(["--writes", &writes.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                let error = format!("cannot run {}: {error}", distlock.display());
                history.record(Kind::AcquireFailed { key, error });
                return 1;
            }
        };
        let run = supervise(child, &mut stop).await;
        let code = run.status.as_ref().ok().and_then(ExitStatus::code);
        match (run.token, code) {
            (Some(token), Some(DISTLOCK_LOST)) => {
                let reason = format!("distlock exec exited {DISTLOCK_LOST}: the lock was lost");
                history.record(Kind::Lost { key, token, reason });
            }
            (Some(token), _) => history.record(Kind::Released { key, token, ok: true }),
            (None, _) if run.stopped => {}
            (None, code) => {
                let error = format!("distlock exec exited {code:?} before running the command");
                history.record(Kind::AcquireFailed { key, error });
                if code.is_some_and(|code| DISTLOCK_FATAL.contains(&code)) {
                    return 1;
                }
                sleep(Duration::from_millis(50)).await;
            }
        }
        if run.stopped {
            return 0;
        }
    }
}

/// How one `distlock exec` ended.
struct Run {
    status: std::io::Result<ExitStatus>,
    /// The token its command was started with, if it was.
    token: Option<u64>,
    /// Whether the worker was told to stop meanwhile.
    stopped: bool,
}

/// Waits for `distlock exec`, reading its command's token as it starts;
/// on SIGTERM ends the run (see [`end`]).
async fn supervise(mut child: Child, stop: &mut SignalStream) -> Run {
    let pid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    let mut lines = child.stdout.take().map(|stdout| BufReader::new(stdout).lines());
    let mut token = None;
    let mut stopped = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            line = async { lines.as_mut()?.next_line().await.ok().flatten() }, if lines.is_some() => {
                match line {
                    Some(line) => token = line.trim().parse().ok(),
                    None => lines = None,
                }
            }
            _ = stop.recv(), if !stopped => {
                stopped = true;
                end(pid);
            }
            // Again, in case distlock started the command after the last look.
            () = sleep(Duration::from_millis(500)), if stopped => end(pid),
        }
    };
    if token.is_none()
        && let Some(lines) = lines.as_mut()
        && let Ok(Ok(Some(line))) = timeout(Duration::from_millis(100), lines.next_line()).await
    {
        token = line.trim().parse().ok();
    }
    Run { status, token, stopped }
}

/// Ends a `distlock exec` run: its command ignores SIGTERM, so it is
/// SIGKILLed, and distlock then releases the lock and exits; a distlock
/// still waiting for the lock (no command yet) is sent SIGTERM.
fn end(distlock: Option<Pid>) {
    let Some(distlock) = distlock else { return };
    let command = process_tree::descendants(distlock);
    if command.is_empty() {
        process_tree::signal_all(&[distlock], Signal::SIGTERM);
    } else {
        process_tree::signal_all(&command, Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holding_lasts_up_to_one_and_a_half_ttls() {
        assert_eq!(most_writes(Duration::from_secs(3)), 90);
        assert_eq!(most_writes(Duration::from_secs(2)), 60);
        assert_eq!(most_writes(Duration::from_millis(10)), 1);
    }
}
