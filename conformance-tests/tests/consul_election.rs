//! Consul leader election against Consul's own tools: the leader's value is
//! the lock key's value (`consul kv get PREFIX/.lock` shows it), and an
//! observer sees a `consul lock` holder lead.
#![cfg(feature = "consul")]

use std::time::Duration;

use conformance_tests::consul::{ConsulHarness, NativeLock, PREFIX, consul_binary};
use conformance_tests::{Harness, Namespace};
use futures_util::StreamExt;
use lock_consul::native_lock_prefix;
use lock_core::{LeaderStream, LockInfo};
use tokio::time::timeout;

/// Room for a change to reach an observer through Consul.
const GRACE: Duration = Duration::from_secs(5);

fn harness() -> ConsulHarness {
    ConsulHarness::from_env()
}

/// `consul kv get KEY`, trimmed.
async fn consul_kv_get(h: &ConsulHarness, kv_key: &str) -> String {
    let output = tokio::process::Command::new(consul_binary())
        .args(["kv", "get", &format!("-http-addr={}", h.address()), kv_key])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run consul kv get: {e}"));
    assert!(output.status.success(), "consul kv get {kv_key} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Ends the sessions `consul lock` leaves to their TTL, then checks that
/// nothing is left under the namespace: no key, and no session named for it.
async fn assert_clean(h: &ConsulHarness, ns: &Namespace) {
    h.end_sessions_named_for(ns.prefix()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.leftover(ns.prefix()).await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the election left something under {}", ns.prefix());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn next_leader(leaders: &mut LeaderStream, step: &str) -> Option<LockInfo> {
    match timeout(GRACE, leaders.next()).await {
        Ok(Some(Ok(leader))) => leader,
        other => panic!("{step}: the observer gave {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_value_is_the_lock_keys_value() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("leader");
    let kv_key = lock_consul::native_lock_key(PREFIX, &key);
    let client = h.client().await;
    let leading = client.locks.lock(key.as_str()).value("10.0.0.1:8080").try_acquire().await.ok().flatten();
    let leading = leading.unwrap_or_else(|| panic!("the candidate could not take the free key"));
    assert_eq!(consul_kv_get(&h, &kv_key).await, "10.0.0.1:8080", "consul kv get does not show the leader's value");
    assert!(leading.proclaim("10.0.0.1:9090").await.is_ok());
    assert_eq!(consul_kv_get(&h, &kv_key).await, "10.0.0.1:9090", "consul kv get does not show the proclaimed value");
    let leader = client.locks.leader(key.as_str()).await.unwrap_or_else(|e| panic!("leader: {e}"));
    assert_eq!(
        leader.map(|l| (l.token, l.value)),
        Some((leading.token(), Some("10.0.0.1:9090".to_owned()))),
        "the leader keeps its token across a new value"
    );
    // consul lock waits for our leader like for any holder of the key.
    let prefix = native_lock_prefix(PREFIX, key.as_str());
    let (ran, _) = NativeLock::start(h.address(), &["-timeout=1s"], &prefix).exit().await;
    assert!(!ran, "consul lock ran while our leader held the key");
    assert!(!leading.is_lost(), "consul lock disturbed the leader");
    assert!(leading.release().await.is_ok());
    assert_clean(&h, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_sees_a_consul_lock_holder_lead() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("native leader");
    let prefix = native_lock_prefix(PREFIX, key.as_str());
    let observer = h.client().await;
    let mut leaders = observer.locks.observe(key.as_str()).unwrap_or_else(|e| panic!("observe: {e}"));
    assert_eq!(next_leader(&mut leaders, "before anyone leads").await, None);
    let mut native = NativeLock::start(h.address(), &[], &prefix);
    assert!(native.holds_within(GRACE * 2).await, "consul lock did not take the lock");
    let leader = next_leader(&mut leaders, "consul lock leads").await;
    let leader = leader.unwrap_or_else(|| panic!("the observer did not see consul lock's holder lead"));
    assert!(leader.owner.starts_with("consul session "), "consul lock's holder is named by its session: {leader:?}");
    assert_eq!(leader.value, None, "consul lock publishes no value");
    let inspected = observer.locks.leader(key.as_str()).await.unwrap_or_else(|e| panic!("leader: {e}"));
    assert_eq!(inspected.map(|l| l.token), Some(leader.token), "leader and observe disagree on the token");
    let (released, said) = native.finish().await;
    assert!(released, "consul lock failed: {said}");
    assert_eq!(next_leader(&mut leaders, "consul lock released").await, None, "nobody leads after consul lock");
    // Then one of ours leads, with its value, seen by the same observer.
    let candidate = h.client().await;
    let leading = candidate.locks.lock(key.as_str()).value("ours").wait(Duration::from_secs(10)).acquire().await;
    let leading = leading.unwrap_or_else(|e| panic!("our candidate did not lead after consul lock: {e}"));
    let ours = next_leader(&mut leaders, "our leader").await;
    assert_eq!(ours.map(|l| (l.token, l.value)), Some((leading.token(), Some("ours".to_owned()))));
    assert!(leading.token() > leader.token, "our grant's token is not above consul lock's");
    assert!(leading.release().await.is_ok());
    drop(leaders);
    assert_clean(&h, &ns).await;
}
