//! A 3-server Consul cluster (`scripts/services start consul --cluster`)
//! loses its leader while a lock is held and others wait: never two holders
//! at once, tokens keep increasing, and grants resume after re-election
//! within [`RECOVERY_BOUND`].
#![cfg(feature = "consul")]
// The test reports the recovery time it measured.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use conformance_tests::cluster::Cluster;
use conformance_tests::{Namespace, failover};
use lock_consul::{ConsulConfig, ConsulLock};
use lock_core::Locks;

/// Raft election (1 s timeouts at raft_multiplier 1) plus a session TTL plus
/// the lock delay, with room for a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
const WORKERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_held_keeps_exclusion_and_recovers() {
    let cluster = Cluster::consul();
    let victim = cluster.await_leader(Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("{e}"));
    let followers: Vec<&str> =
        (0..cluster.members.len()).filter(|i| *i != victim).map(|i| cluster.members[i].client.as_str()).collect();
    let mut clients = Vec::new();
    for worker in 0..WORKERS {
        // Each client talks to a follower's agent, as services talk to their local agent.
        let config = ConsulConfig::new(followers[worker % followers.len()])
            .prefix(conformance_tests::consul::PREFIX)
            .session_ttl(Duration::from_secs(5))
            .lock_delay(Duration::from_secs(1))
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2));
        let lock = ConsulLock::connect(config).await.unwrap_or_else(|e| panic!("cannot connect: {e}"));
        clients.push(Locks::new(lock));
    }
    let key = Namespace::new().key("failover");
    // The kill leaves two members; restart all three afterwards.
    let _repair = failover::ClusterRepair::new("consul");
    let kill = || failover::kill_member("consul-cluster", &cluster.members[victim].name);
    let report = failover::contend_through_failover(clients, key, kill, RECOVERY_BOUND).await;
    println!("leader {} killed: {report:?}", cluster.members[victim].name);
}
