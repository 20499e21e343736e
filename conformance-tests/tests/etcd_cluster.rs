//! A 3-member etcd cluster (`scripts/services start etcd --cluster`) loses
//! its leader while a lock is held and others wait: never two holders at
//! once, tokens keep increasing, and grants resume after re-election within
//! [`RECOVERY_BOUND`].
#![cfg(feature = "etcd")]
// The test reports the recovery time it measured.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use conformance_tests::etcd::NAMESPACE;
use conformance_tests::{Namespace, failover};
use lock_core::Locks;
use lock_etcd::{EtcdConfig, EtcdLock};
use tokio::time::timeout;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_held_keeps_exclusion_and_recovers() {
    let endpoints = endpoints();
    let victim = leader(&endpoints).await;
    let mut clients = Vec::new();
    for _ in 0..WORKERS {
        let lock = EtcdLock::connect(config(&endpoints)).await.unwrap_or_else(|e| panic!("cannot connect: {e}"));
        clients.push(Locks::new(lock));
    }
    let key = Namespace::new().key("failover");
    // The kill leaves two members; restart all three afterwards.
    let _repair = failover::ClusterRepair::new("etcd");
    let kill = || failover::kill_member("etcd-cluster", MEMBERS[victim]);
    let report = failover::contend_through_failover(clients, key, kill, RECOVERY_BOUND).await;
    println!("leader {} killed: {report:?}", MEMBERS[victim]);
}
