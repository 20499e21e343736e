//! One peer program (`lock-bench/peers/`) as a long-lived child process
//! speaking the line protocol of `peers/protocol.py`: a `ready` line, then one
//! JSON line per command.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::timeout;

/// How long a peer may take to start and say it is ready (a JVM on a busy
/// two-core machine, or sixteen sessions' worth of Python imports).
const START_LIMIT: Duration = Duration::from_secs(180);

/// How to start one peer.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// What the report calls it: the library and its recipe.
    pub label: String,
    /// The Debian package it comes from, with its version.
    pub package: String,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// A running peer.
#[derive(Debug)]
pub struct PeerProcess {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Its standard error, kept for a broken peer's post-mortem.
    pub log: PathBuf,
    /// Why it stopped answering, once it has.
    dead: Option<String>,
}

impl PeerProcess {
    /// Starts the peer and waits for its `ready` line; the error says why it
    /// is not available (the library's import failed, it cannot connect).
    pub async fn start(spec: &PeerSpec, log_dir: &std::path::Path) -> Result<Self, String> {
        let (program, args) = spec.command.split_first().ok_or("empty peer command")?;
        let log = log_dir.join(format!("{}.log", spec.label.replace([' ', '/', '+'], "_")));
        let stderr = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut child = Command::new(program)
            .args(args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the peer's pipes are missing".to_owned());
        };
        let mut peer = Self { child, stdin, lines: BufReader::new(stdout).lines(), log, dead: None };
        let ready = peer.reply(START_LIMIT).await?;
        if ready.get("ready").and_then(Value::as_bool) == Some(true) {
            Ok(peer)
        } else {
            Err(ready.get("error").and_then(Value::as_str).unwrap_or("it did not say it was ready").to_owned())
        }
    }

    /// Sends one command and returns its answer, or why there is none: the
    /// peer said `ok: false`, or it exited or stayed silent for `limit` (then
    /// it is stopped, and every later command fails with the same reason).
    pub async fn ask(&mut self, command: &str, limit: Duration) -> Result<Value, String> {
        if let Some(reason) = &self.dead {
            return Err(format!("stopped answering earlier ({reason})"));
        }
        let sent = self.stdin.write_all(format!("{command}\n").as_bytes()).await;
        if let Err(error) = sent.and(self.stdin.flush().await) {
            return Err(self.died(format!("cannot send {command:?}: {error}")).await);
        }
        let answer = self.reply(limit).await.map_err(|e| format!("{command}: {e}"))?;
        if answer.get("ok").and_then(Value::as_bool) == Some(true) {
            Ok(answer)
        } else {
            Err(answer.get("error").and_then(Value::as_str).unwrap_or("failed without a reason").to_owned())
        }
    }

    async fn reply(&mut self, limit: Duration) -> Result<Value, String> {
        match timeout(limit, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => serde_json::from_str(&line).map_err(|e| format!("unreadable answer {line:?}: {e}")),
            Ok(Ok(None)) => {
                let status = self.child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                Err(self.died(format!("it exited ({status})")).await)
            }
            Ok(Err(error)) => Err(self.died(format!("cannot read its answer: {error}")).await),
            Err(_) => Err(self.died(format!("no answer within {} s", limit.as_secs())).await),
        }
    }

    async fn died(&mut self, reason: String) -> String {
        let _ = self.child.kill().await;
        let reason = format!("{reason}; its log: {}", self.log.display());
        self.dead = Some(reason.clone());
        reason
    }

    /// Asks it to quit, and stops it if it does not within a few seconds.
    pub async fn stop(mut self) {
        if self.dead.is_none() {
            let _ = self.stdin.write_all(b"quit\n").await;
            let _ = self.stdin.flush().await;
            if timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
                let _ = self.child.kill().await;
            }
        }
    }
}
