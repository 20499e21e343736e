//! A worker process: acquire a key, make several fenced writes while it is
//! held (checking for loss before each), release, again, until told to stop.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::history::{Kind, Recorder};
use crate::register::{WriteRequest, Writer};

/// `lock-torture worker`: one contending process (started by the campaign).
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The worker's name in the history.
    #[arg(long)]
    pub name: String,
    /// The backend URL (through this worker's proxy, where there is one).
    #[arg(long)]
    pub url: String,
    /// The keys to contend on.
    #[arg(long, value_delimiter = ',')]
    pub keys: Vec<String>,
    /// The register's address.
    #[arg(long)]
    pub register: String,
    /// The history file to append to.
    #[arg(long)]
    pub history: PathBuf,
    /// The lock TTL.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Writes per holding.
    #[arg(long, default_value_t = 5)]
    pub writes: u32,
    /// The worker's seed, for its choice of keys.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs until killed (the campaign ends workers with SIGTERM, then SIGKILL).
pub async fn run(args: WorkerArgs) -> u8 {
    let Ok(mut history) = Recorder::open(&args.history, &args.name) else { return 1 };
    history.record(Kind::Started { pid: std::process::id() });
    let locks = match distlock::connect_with_ttl(&args.url, args.ttl).await {
        Ok(locks) => locks,
        Err(error) => {
            history.record(Kind::AcquireFailed { key: String::new(), error: error.to_string() });
            return 69;
        }
    };
    let Ok(mut register) = Writer::connect(&args.register).await else { return 1 };
    let mut random = crate::nemesis::Random::new(args.seed);
    let mut stop = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(stop) => stop,
        Err(_) => return 1,
    };
    loop {
        let key = args.keys[random.below(args.keys.len())].clone();
        let acquired = tokio::select! {
            _ = stop.recv() => return 0,
            // No deadline: a wait that never ends shows as a missing
            // recovery in the checker, not as a hidden retry.
            acquired = locks.lock(&key).acquire() => acquired,
        };
        let guard = match acquired {
            Ok(guard) => guard,
            Err(error) => {
                history.record(Kind::AcquireFailed { key, error: error.to_string() });
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let token = guard.token().get();
        history.record(Kind::Granted { key: key.clone(), token });
        let mut lost = false;
        for _ in 0..args.writes {
            // The last look before each write: a holder resumed after a pause
            // sees its loss here, by its own clock.
            if guard.is_lost() {
                let reason = guard.lost().await.to_string();
                history.record(Kind::Lost { key: key.clone(), token, reason });
                lost = true;
                break;
            }
            let request = WriteRequest { key: key.clone(), token, worker: args.name.clone() };
            if register.write(&request).await.is_err() {
                return 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let released = guard.release().await;
        if !lost {
            history.record(Kind::Released { key, token, ok: released.is_ok() });
        }
    }
}
