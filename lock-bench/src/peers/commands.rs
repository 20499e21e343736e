//! Per command: `distlock exec --backend URL --key K -- true` against
//! `etcdctl lock K true` and `consul lock PREFIX true`, each a whole process,
//! start-up included, timed from spawn to exit, taking turns.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

use super::contender::Measured;
use crate::stats::Samples;

/// One command to time, with its arguments.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// What the report calls it.
    pub label: String,
    /// The program and its arguments.
    pub command: Vec<String>,
}

/// The two commands compared on one server: distlock's, and the server's
/// own lock command if it has one (ZooKeeper has none).
#[derive(Debug, Clone)]
pub struct CommandPair {
    /// `distlock exec ... -- true`.
    pub distlock: Invocation,
    /// `etcdctl lock ...` or `consul lock ...`, or why it cannot run.
    pub peer: Option<Result<Invocation, (String, String)>>,
}

impl CommandPair {
    /// The pair for `server` at `address` (`host:port`).
    pub fn new(server: &str, address: &str, distlock: &Path) -> Self {
        let key = format!("distlock-bench-peers/cmd-{}", std::process::id());
        let url = format!("{server}://{address}");
        let distlock = Invocation {
            label: "distlock exec".to_owned(),
            command: [distlock.display().to_string(), "exec".into(), "--backend".into(), url]
                .into_iter()
                .chain(["--key".into(), format!("{key}-distlock"), "--".into(), "true".into()])
                .collect(),
        };
        let peer = match server {
            "etcd" => Some(tool("etcdctl lock", "etcdctl", |etcdctl| {
                vec![etcdctl, format!("--endpoints={address}"), "lock".into(), format!("{key}-etcdctl"), "true".into()]
            })),
            "consul" => Some(tool("consul lock", "consul", |consul| {
                vec![
                    consul,
                    "lock".into(),
                    format!("-http-addr=http://{address}"),
                    format!("{key}-consul"),
                    "true".into(),
                ]
            })),
            _ => None,
        };
        Self { distlock, peer }
    }
}

fn tool(label: &str, name: &str, command: impl FnOnce(String) -> Vec<String>) -> Result<Invocation, (String, String)> {
    match super::setup::service_tool(name) {
        Some(path) => Ok(Invocation { label: label.to_owned(), command: command(path.display().to_string()) }),
        None => Err((
            label.to_owned(),
            format!("{name} is not installed (`scripts/services install peers` unpacks it into .services/bin)"),
        )),
    }
}

/// Runs each command `count` times, taking turns, and returns their
/// latencies (or why one broke).
pub async fn time_pair(pair: &CommandPair, count: usize) -> (Measured, Option<Measured>) {
    let mut distlock = Ok(Samples::default());
    let mut peer = match &pair.peer {
        Some(Ok(_)) => Some(Ok(Samples::default())),
        Some(Err((_, reason))) => Some(Err(format!("not available: {reason}"))),
        None => None,
    };
    for _ in 0..count {
        if let Ok(samples) = &mut distlock {
            match time_command(&pair.distlock.command).await {
                Ok(took) => samples.push(took),
                Err(error) => distlock = Err(error),
            }
        }
        if let (Some(Ok(samples)), Some(Ok(invocation))) = (&mut peer, &pair.peer) {
            match time_command(&invocation.command).await {
                Ok(took) => samples.push(took),
                Err(error) => peer = Some(Err(error)),
            }
        }
    }
    let measured = |result: Result<Samples, String>| result.map_or_else(Measured::Broken, Measured::Latencies);
    (measured(distlock), peer.map(measured))
}

/// One whole process, from spawn to exit; an exit other than 0 is an error
/// with its standard error's first line.
async fn time_command(command: &[String]) -> Result<Duration, String> {
    let (program, args) = command.split_first().ok_or("empty command")?;
    let started = Instant::now();
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .map_err(|_| format!("`{}` did not finish within 60 s", command.join(" ")))?
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let took = started.elapsed();
    if output.status.success() {
        return Ok(took);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("`{}` failed ({}): {}", command.join(" "), output.status, stderr.lines().next().unwrap_or("")))
}

/// The workspace's `distlock` binary, built first under `cargo run`: one
/// file with lock-torture's exec mode, which needs the same.
#[path = "../../../lock-torture/src/distlock_binary.rs"]
mod shared_distlock_binary;

/// The workspace's `distlock` binary (lock-cli), next to this executable:
/// under `cargo run` built first with this executable's profile.
///
/// # Errors
/// When it cannot be built, or is not there.
pub async fn distlock_binary() -> Result<PathBuf, String> {
    shared_distlock_binary::locate().await
}
