//! A worker process: acquire a key, make several fenced writes while it is
//! held (checking for loss before each), release, again, until told to stop.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use lock_core::Locks;

use crate::history::{Kind, Recorder};
use crate::register::{WriteRequest, Writer};

/// `lock-torture worker`: one contending process (started by the campaign).
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// What every worker process is told.
    #[command(flatten)]
    pub worker: WorkerIdentity,
    /// Writes per holding.
    #[arg(long, default_value_t = 5)]
    pub writes: u32,
}

/// What the campaign tells every worker process, of either mode: who it is,
/// where the lock, the register and its history are.
#[derive(Debug, Args)]
pub struct WorkerIdentity {
    /// The worker's name in the history.
    #[arg(long)]
    pub name: String,
    /// Which incarnation of the worker this process is (0 for the first,
    /// one more for each replacement of a killed one): its writes carry
    /// `{name}#{incarnation}`, so the checker tells a dead incarnation's
    /// writes from its successor's.
    #[arg(long, default_value_t = 0)]
    pub incarnation: usize,
    /// The backend URL (through this worker's proxy, where there is one).
    #[arg(long)]
    pub url: String,
    /// The keys to contend on.
    #[arg(long, value_delimiter = ',')]
    pub keys: Vec<String>,
    /// The register's address.
    #[arg(long)]
    pub register: String,
    /// The history file to append to (in exec mode the guarded commands
    /// append to it too).
    #[arg(long)]
    pub history: PathBuf,
    /// The lock TTL.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The worker's seed, for its choice of keys (and in exec mode of
    /// holding lengths).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs until killed (the campaign ends workers with SIGTERM, then SIGKILL).
pub async fn run(WorkerArgs { worker: args, writes }: WorkerArgs) -> u8 {
    let Ok(mut history) = Recorder::open(&args.history, &args.name) else { return 1 };
    history.record(Kind::Started { pid: std::process::id() });
    let locks = match distlock::connect_with_ttl(&args.url, args.ttl).await {
        Ok(locks) => locks,
        Err(error) => {
            history.record(Kind::AcquireFailed { key: String::new(), error: error.to_string() });
            return 69;
        }
    };
    let Ok(register) = Writer::connect(&args.register).await else { return 1 };
    let Ok(mut stop) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return 1 };
    let holder = Holder {
        name: writer_id(&args.name, args.incarnation),
        keys: args.keys,
        writes,
        ttl: None,
        random: crate::nemesis::Random::new(args.seed),
        history,
        register,
    };
    let stopped = async move {
        stop.recv().await;
    };
    holder.contend(&locks, Gate::open(), stopped).await
}

/// How one incarnation of a worker signs its writes: `w1#2`.
pub fn writer_id(name: &str, incarnation: usize) -> String {
    format!("{name}#{incarnation}")
}

/// What one worker holds its locks with: its keys and seed, its history and
/// its connection to the register. A worker process runs one; the memory
/// campaign runs one per task.
pub struct Holder {
    /// The incarnation's [`writer_id`], as its writes carry it.
    pub name: String,
    /// The keys to contend on.
    pub keys: Vec<String>,
    /// Writes per holding.
    pub writes: u32,
    /// A TTL to ask for with each lock (the memory backend's; the server
    /// backends' clients carry theirs).
    pub ttl: Option<Duration>,
    /// Its choice of keys.
    pub random: crate::nemesis::Random,
    /// Its history.
    pub history: Recorder,
    /// Its connection to the register.
    pub register: Writer,
}

/// Holds a worker still before its next write while the campaign pauses it:
/// in-process workers cannot be sent SIGSTOP.
pub struct Gate(Option<tokio::sync::watch::Receiver<bool>>);

impl Gate {
    /// A gate that never closes (a worker process is paused by signal).
    pub fn open() -> Self {
        Self(None)
    }

    /// A gate closed while `paused` holds true.
    pub fn controlled(paused: tokio::sync::watch::Receiver<bool>) -> Self {
        Self(Some(paused))
    }

    async fn pass(&mut self) {
        if let Some(paused) = self.0.as_mut() {
            let _ = paused.wait_for(|paused| !*paused).await;
        }
    }
}

impl Holder {
    /// Acquire a key, several fenced writes while it is held (looking for
    /// loss before each), release; again, until `stop` completes. Returns
    /// the process's exit code: 0 when stopped, 1 when the register is gone.
    pub async fn contend(mut self, locks: &Locks, mut gate: Gate, stop: impl Future<Output = ()>) -> u8 {
        let mut stop = std::pin::pin!(stop);
        loop {
            let key = self.keys[self.random.below(self.keys.len())].clone();
            let mut request = locks.lock(&key);
            if let Some(ttl) = self.ttl {
                request = request.ttl(ttl);
            }
            let acquired = tokio::select! {
                () = &mut stop => return 0,
                // No deadline: a wait that never ends shows as a missing
                // recovery in the checker, not as a hidden retry.
                acquired = request.acquire() => acquired,
            };
            let guard = match acquired {
                Ok(guard) => guard,
                Err(error) => {
                    self.history.record(Kind::AcquireFailed { key, error: error.to_string() });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let token = guard.token().get();
            self.history.record(Kind::Granted { key: key.clone(), token });
            let mut lost = false;
            for _ in 0..self.writes {
                gate.pass().await;
                // The last look before each write: a holder resumed after a
                // pause sees its loss here, by its own clock.
                if guard.is_lost() {
                    let reason = guard.lost().await.to_string();
                    self.history.record(Kind::Lost { key: key.clone(), token, reason });
                    lost = true;
                    break;
                }
                let request = WriteRequest { key: key.clone(), token, worker: self.name.clone() };
                if self.register.write(&request).await.is_err() {
                    return 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let released = guard.release().await;
            if !lost {
                self.history.record(Kind::Released { key, token, ok: released.is_ok() });
            }
        }
    }
}
