//! A 3-server ZooKeeper ensemble (`scripts/services start zk --cluster`)
//! loses its leader while a lock is held and others wait: never two holders
//! at once, tokens keep increasing, and grants resume after re-election
//! within [`RECOVERY_BOUND`].
#![cfg(feature = "zk")]
// The test reports the recovery time it measured.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use conformance_tests::{Namespace, failover};
use lock_core::Locks;
use lock_zk::{ZkConfig, ZkLock};

const DEFAULT_ENSEMBLE: &str = "127.0.0.1:22181,127.0.0.1:22182,127.0.0.1:22183";
/// The server names `scripts/services` gives the ensemble, in host order.
const MEMBERS: [&str; 3] = ["z1", "z2", "z3"];
/// Election (a few ticks of 200 ms) plus a session timeout plus slack, with
/// room for a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
const WORKERS: usize = 4;

fn hosts() -> String {
    std::env::var("DISTLOCK_ZK_CLUSTER_HOSTS").unwrap_or_else(|_| DEFAULT_ENSEMBLE.to_owned())
}

/// The index of the leader among the hosts, asked with `srvr`.
async fn leader(hosts: &str) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (index, host) in hosts.split(',').enumerate() {
        let Ok(mut stream) = tokio::net::TcpStream::connect(host).await else { continue };
        let mut reply = String::new();
        if stream.write_all(b"srvr").await.is_ok()
            && stream.read_to_string(&mut reply).await.is_ok()
            && reply.contains("Mode: leader")
        {
            return index;
        }
    }
    panic!("no leader among {hosts}: start the ensemble with `scripts/services start zk --cluster`")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_held_keeps_exclusion_and_recovers() {
    let hosts = hosts();
    let victim = leader(&hosts).await;
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
    let kill = || failover::kill_member("zk-cluster", MEMBERS[victim]);
    let report = failover::contend_through_failover(clients, key, kill, RECOVERY_BOUND).await;
    println!("leader {} killed: {report:?}", MEMBERS[victim]);
}
