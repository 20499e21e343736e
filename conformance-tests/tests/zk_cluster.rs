//! A 3-server ZooKeeper ensemble (`scripts/services start zk --cluster`)
//! loses its leader while a lock is held and others wait: never two holders
//! at once, tokens keep increasing, and grants resume after re-election
//! within [`RECOVERY_BOUND`].
#![cfg(feature = "zk")]
// The test reports the recovery time it measured.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use conformance_tests::cluster::Cluster;
use conformance_tests::{Namespace, failover};
use lock_core::Locks;
use lock_zk::{ZkConfig, ZkLock};

/// Election (a few ticks of 200 ms) plus a session timeout plus slack, with
/// room for a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
const WORKERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_held_keeps_exclusion_and_recovers() {
    let cluster = Cluster::zk();
    let hosts = cluster.client_list();
    let victim = cluster.await_leader(Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("{e}"));
    let mut clients = Vec::new();
    for _ in 0..WORKERS {
        let config = ZkConfig::new(hosts.clone())
            .base_path(conformance_tests::zk::BASE)
            .session_timeout(Duration::from_secs(4))
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2));
        let lock = ZkLock::connect(config).await.unwrap_or_else(|e| panic!("cannot connect: {e}"));
        clients.push(Locks::new(lock));
    }
    let key = Namespace::new().key("failover");
    // The kill leaves two members; restart all three afterwards.
    let _repair = failover::ClusterRepair::new("zk");
    let kill = || failover::kill_member("zk-cluster", &cluster.members[victim].name);
    let report = failover::contend_through_failover(clients, key, kill, RECOVERY_BOUND).await;
    println!("leader {} killed: {report:?}", cluster.members[victim].name);
}
