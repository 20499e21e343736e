//! A 3-server Consul cluster (`scripts/services start consul --cluster`)
//! loses its leader while a lock is held and others wait: never two holders
//! at once, tokens keep increasing, and grants resume after re-election
//! within [`RECOVERY_BOUND`].
#![cfg(feature = "consul")]
// The test reports the recovery time it measured.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use conformance_tests::consul::admin_request;
use conformance_tests::{Namespace, failover};
use lock_consul::{ConsulConfig, ConsulLock};
use lock_core::Locks;

/// The servers `scripts/services` starts: name, HTTP port, server (raft) port.
const MEMBERS: [(&str, u16, u16); 3] = [("c1", 28500, 28300), ("c2", 28510, 28310), ("c3", 28520, 28320)];
/// Raft election (1 s timeouts at raft_multiplier 1) plus a session TTL plus
/// the lock delay, with room for a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
const WORKERS: usize = 4;

/// The index of the leader among [`MEMBERS`], asked of the first that answers.
async fn leader() -> usize {
    for (_, http, _) in MEMBERS {
        let agent = std::net::SocketAddr::from(([127, 0, 0, 1], http));
        let Ok(reply) = admin_request(agent, "GET", "/v1/status/leader").await else { continue };
        if let Some(index) = MEMBERS.iter().position(|(_, _, raft)| reply.contains(&format!(":{raft}\""))) {
            return index;
        }
    }
    panic!("no leader in the Consul cluster: start it with `scripts/services start consul --cluster`")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_held_keeps_exclusion_and_recovers() {
    let victim = leader().await;
    let followers: Vec<u16> = (0..MEMBERS.len()).filter(|i| *i != victim).map(|i| MEMBERS[i].1).collect();
    let mut clients = Vec::new();
    for worker in 0..WORKERS {
        // Each client talks to a follower's agent, as services talk to their local agent.
        let port = followers[worker % followers.len()];
        let config = ConsulConfig::new(format!("http://127.0.0.1:{port}"))
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
    let kill = || failover::kill_member("consul-cluster", MEMBERS[victim].0);
    let report = failover::contend_through_failover(clients, key, kill, RECOVERY_BOUND).await;
    println!("leader {} killed: {report:?}", MEMBERS[victim].0);
}
