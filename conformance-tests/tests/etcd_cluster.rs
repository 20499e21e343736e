//! A 3-member etcd cluster (`scripts/services start etcd --cluster`) loses
//! its leader while a lock is held and others wait: never two holders at
//! once, tokens keep increasing, and grants resume after re-election within
//! [`RECOVERY_BOUND`].
#![cfg(feature = "etcd")]
// The test reports the recovery time it measured.
#![allow(clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance_tests::Namespace;
use conformance_tests::etcd::NAMESPACE;
use lock_core::{LockKey, Locks};
use lock_etcd::{EtcdConfig, EtcdLock};
use tokio::time::{Instant, sleep, timeout};

const DEFAULT_CLUSTER: &str = "http://127.0.0.1:22379,http://127.0.0.1:22479,http://127.0.0.1:22579";
/// The member names `scripts/services` gives the cluster, in endpoint order.
const MEMBERS: [&str; 3] = ["e1", "e2", "e3"];
/// Election (1 s in the test cluster) plus a lease TTL plus expiry slack,
/// with room for a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
const WORKERS: usize = 4;

fn endpoints() -> Vec<String> {
    std::env::var("DISTLOCK_ETCD_CLUSTER_ENDPOINTS")
        .unwrap_or_else(|_| DEFAULT_CLUSTER.to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn config(endpoints: &[String]) -> EtcdConfig {
    EtcdConfig::new(endpoints.iter().cloned())
        .namespace(NAMESPACE)
        .lease_ttl(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2))
}

/// The index of the current leader among `endpoints`.
async fn leader(endpoints: &[String]) -> usize {
    for (index, endpoint) in endpoints.iter().enumerate() {
        let status = async {
            let mut client = etcd_client::Client::connect([endpoint], None).await?;
            client.status().await
        };
        if let Ok(Ok(status)) = timeout(Duration::from_secs(3), status).await
            && status.header().map(|h| h.member_id()) == Some(status.leader())
        {
            return index;
        }
    }
    panic!(
        "no leader among {endpoints:?}: start the cluster with `scripts/services start etcd --cluster` \
         (or point DISTLOCK_ETCD_CLUSTER_ENDPOINTS at one)"
    )
}

fn kill_member(index: usize) {
    let pidfile = conformance_tests::services_dir().join("run/etcd-cluster").join(format!("{}.pid", MEMBERS[index]));
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap_or_else(|e| panic!("no PID file {} (start the cluster with scripts/services): {e}", pidfile.display()));
    let status = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
    assert!(matches!(status, Ok(s) if s.success()), "could not kill member {} (pid {})", MEMBERS[index], pid.trim());
}

/// One holding: when it began, when it ended (release or loss), its token.
#[derive(Debug, Clone, Copy)]
struct Holding {
    start: Instant,
    end: Instant,
    token: u64,
}

async fn contend(locks: Locks, key: LockKey, until: Instant, log: Arc<Mutex<Vec<Holding>>>) {
    while Instant::now() < until {
        let Ok(guard) = locks.lock(key.as_str()).wait(Duration::from_secs(5)).acquire().await else { continue };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_held_keeps_exclusion_and_recovers() {
    let endpoints = endpoints();
    let victim = leader(&endpoints).await;
    let key = Namespace::new().key("failover");
    let log = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let until = started + Duration::from_secs(4) + RECOVERY_BOUND;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let lock = EtcdLock::connect(config(&endpoints)).await.unwrap_or_else(|e| panic!("cannot connect: {e}"));
        workers.spawn(contend(Locks::new(lock), key.clone(), until, Arc::clone(&log)));
    }
    sleep(Duration::from_secs(3)).await;
    let before_kill = log.lock().unwrap_or_else(|p| p.into_inner()).len();
    assert!(before_kill > 0, "no grants before the leader was killed");
    kill_member(victim);
    let killed_at = Instant::now();
    while workers.join_next().await.is_some() {}

    let mut holdings = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    holdings.sort_by_key(|h| h.start);
    for pair in holdings.windows(2) {
        assert!(pair[0].end <= pair[1].start, "two holders at once: {:?} and {:?}", pair[0], pair[1]);
        assert!(pair[0].token < pair[1].token, "token did not increase: {:?} then {:?}", pair[0], pair[1]);
    }
    let first_after = holdings.iter().find(|h| h.start > killed_at + Duration::from_millis(100));
    let recovery = first_after.map(|h| h.start - killed_at);
    assert!(
        recovery.is_some_and(|r| r <= RECOVERY_BOUND),
        "no grant within {RECOVERY_BOUND:?} of killing the leader (first: {recovery:?})"
    );
    println!(
        "leader {} killed; {} grants before, {} after; first grant {:?} after the kill",
        MEMBERS[victim],
        before_kill,
        holdings.len() - before_kill,
        recovery
    );
}
