//! Contending clients across a leader failover: never two holders at once,
//! tokens in grant order, and grants again within a stated bound.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{LockKey, Locks};
use tokio::time::{Instant, sleep};

/// One holding: when it began, when it ended (release or loss), its token.
#[derive(Debug, Clone, Copy)]
pub struct Holding {
    /// When the holder got the lock.
    pub start: Instant,
    /// When it released it or learned it was lost.
    pub end: Instant,
    /// Its fencing token.
    pub token: u64,
}

/// What a failover run saw.
#[derive(Debug)]
pub struct Report {
    /// Grants before the kill.
    pub before: usize,
    /// Grants after it.
    pub after: usize,
    /// How long after the kill the first grant came.
    pub recovery: Option<Duration>,
}

/// Runs `clients` contending for `key`, calls `kill` after three seconds,
/// keeps contending for `bound` more, and checks exclusion, token order and
/// that a grant came within `bound` of the kill.
///
/// The clients wait for the lock without a deadline: a waiter that misses
/// its turn across the failover hangs, and the run fails when the workers
/// have not all finished within `bound` after contending stopped (a deadline
/// on each wait would hide such a hang behind a timeout and a retry).
///
/// # Panics
/// When any of those fails.
pub async fn contend_through_failover(
    clients: Vec<Locks>,
    key: LockKey,
    kill: impl FnOnce(),
    bound: Duration,
) -> Report {
    let log = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs(4) + bound;
    let mut workers = tokio::task::JoinSet::new();
    for locks in clients {
        workers.spawn(contend(locks, key.clone(), until, Arc::clone(&log)));
    }
    sleep(Duration::from_secs(3)).await;
    let before = log.lock().unwrap_or_else(|p| p.into_inner()).len();
    assert!(before > 0, "no grants before the leader was killed");
    kill();
    let killed_at = Instant::now();
    let finished = tokio::time::timeout_at(until + bound, async {
        while let Some(worker) = workers.join_next().await {
            if let Err(panicked) = worker {
                std::panic::resume_unwind(panicked.into_panic());
            }
        }
    })
    .await;
    assert!(
        finished.is_ok(),
        "a waiter hung: {} client(s) still waiting for the lock {bound:?} after contending stopped",
        workers.len()
    );

    let mut holdings = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    holdings.sort_by_key(|h: &Holding| h.start);
    for pair in holdings.windows(2) {
        assert!(pair[0].end <= pair[1].start, "two holders at once: {:?} and {:?}", pair[0], pair[1]);
        assert!(pair[0].token < pair[1].token, "token did not increase: {:?} then {:?}", pair[0], pair[1]);
    }
    let first_after = holdings.iter().find(|h| h.start > killed_at + Duration::from_millis(100));
    let recovery = first_after.map(|h| h.start - killed_at);
    assert!(
        recovery.is_some_and(|r| r <= bound),
        "no grant within {bound:?} of killing the leader (first: {recovery:?})"
    );
    Report { before, after: holdings.len() - before, recovery }
}

async fn contend(locks: Locks, key: LockKey, until: Instant, log: Arc<Mutex<Vec<Holding>>>) {
    while Instant::now() < until {
        // No deadline: see `contend_through_failover`.
        let Ok(guard) = locks.lock(key.as_str()).acquire().await else {
            // Unavailable while the cluster elects a leader: try again soon.
            sleep(Duration::from_millis(50)).await;
            continue;
        };
        let start = Instant::now();
        tokio::select! {
            _ = guard.lost() => {}
            () = sleep(Duration::from_millis(30)) => {}
        }
        let end = Instant::now();
        let token = guard.token().get();
        let _ = guard.release().await;
        log.lock().unwrap_or_else(|p| p.into_inner()).push(Holding { start, end, token });
    }
}

/// Restarts a cluster of `scripts/services` (`run/{service}-cluster`) when
/// dropped, after a test
/// killed one of its members: the next run (of this or another failover
/// test) then finds the whole cluster, not one that lost its quorum to the
/// second kill. Runs on panic too.
#[derive(Debug)]
pub struct ClusterRepair {
    service: &'static str,
}

impl ClusterRepair {
    /// Repairs the cluster of `service` (`etcd`, `zk` or `consul`) on drop.
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl Drop for ClusterRepair {
    fn drop(&mut self) {
        // Only a cluster this project's script runs (and the test could kill).
        let run_dir = crate::services_dir().join("run").join(format!("{}-cluster", self.service));
        if !run_dir.is_dir() {
            return;
        }
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services");
        let status = std::process::Command::new(&script)
            .args(["start", self.service, "--cluster"])
            .stdout(std::process::Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            tracing::warn!(service = self.service, ?status, "could not restart the cluster after the failover test");
        }
    }
}

/// Kills the service member whose PID file is `run/{dir}/{member}.pid` under
/// the services directory, with SIGKILL.
///
/// # Panics
/// When there is no such PID file or the kill fails.
pub fn kill_member(dir: &str, member: &str) {
    let pidfile = crate::services_dir().join("run").join(dir).join(format!("{member}.pid"));
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap_or_else(|e| panic!("no PID file {} (start the cluster with scripts/services): {e}", pidfile.display()));
    let status = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
    assert!(matches!(status, Ok(s) if s.success()), "could not kill {member} (pid {})", pid.trim());
}
