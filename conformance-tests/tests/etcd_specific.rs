//! etcd-specific behaviour, against a real etcd: loss reported within a
//! second, and mutual exclusion with etcd's own `etcdctl lock`.
#![cfg(feature = "etcd")]

use std::time::Duration;

use conformance_tests::etcd::EtcdHarness;
use conformance_tests::process::NativeCommand;
use conformance_tests::{Harness, Namespace, cases};
use tokio::time::{Instant, timeout};

fn harness() -> EtcdHarness {
    EtcdHarness::from_env()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_revoked_from_outside_reports_lost_within_one_second() {
    let h = harness();
    let ns = Namespace::new();
    let client = h.client().await;
    let guard = client.locks.lock(ns.key("revoked").as_str()).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("could not take a free key"));
    client.control.end_session().await;
    let revoked_at = Instant::now();
    let reason = timeout(Duration::from_secs(1), guard.lost()).await;
    assert!(reason.is_ok(), "lost() did not complete within 1 s of the lease revoke");
    assert!(revoked_at.elapsed() <= Duration::from_secs(1));
    assert!(guard.release().await.is_err());
    // The client takes a new lease for new locks.
    let again = client.locks.lock(ns.key("revoked").as_str()).try_acquire().await;
    assert!(matches!(again, Ok(Some(_))), "no new lease after the revoke: {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_deleted_from_outside_reports_lost_within_one_second() {
    cases::broken_lock_reported_within(&harness(), Duration::from_secs(1)).await;
}

/// The `etcdctl` installed by `scripts/services install etcd`, or the one
/// `DISTLOCK_ETCDCTL` names.
fn etcdctl() -> std::path::PathBuf {
    let path = std::env::var_os("DISTLOCK_ETCDCTL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| conformance_tests::services_dir().join("bin/etcdctl"));
    assert!(path.exists(), "no etcdctl at {}: run `scripts/services install etcd`", path.display());
    path
}

/// `etcdctl lock NAME sh -c SCRIPT`.
fn etcdctl_lock(h: &EtcdHarness, name: &str, script: &str) -> NativeCommand {
    let mut command = tokio::process::Command::new(etcdctl());
    command.arg(format!("--endpoints={}", h.endpoints().join(","))).args(["lock", "--", name, "sh", "-c", script]);
    NativeCommand::spawn(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distlock_waits_while_etcdctl_lock_holds() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("shared with etcdctl");
    let name = lock_etcd::native_lock_name(conformance_tests::etcd::NAMESPACE, &key);
    let client = h.client().await;
    // The command's last act prints the time; etcdctl unlocks only after it.
    let mut native = etcdctl_lock(&h, &name, "echo held; sleep 3; date +%s%N");
    let line = timeout(Duration::from_secs(10), native.next_line()).await.ok().flatten();
    assert_eq!(line.as_deref(), Some("held"), "etcdctl lock did not take the lock");
    let attempt = client.locks.lock(key.as_str()).try_acquire().await;
    assert!(matches!(attempt, Ok(None)), "distlock took a lock etcdctl holds: {attempt:?}");
    let guard = client.locks.lock(key.as_str()).wait(Duration::from_secs(20)).acquire().await;
    let guard = guard.unwrap_or_else(|e| panic!("distlock never got the lock after etcdctl: {e}"));
    let granted_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).ok();
    let finished_at = timeout(Duration::from_secs(5), native.next_line()).await.ok().flatten();
    let finished_at = finished_at.and_then(|line| line.parse::<u128>().ok());
    assert!(
        matches!((finished_at, granted_at), (Some(finished), Some(granted)) if finished <= granted),
        "distlock was granted the lock while etcdctl lock's command still ran ({finished_at:?} vs {granted_at:?})"
    );
    assert!(guard.release().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_waits_while_distlock_holds() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("held by distlock");
    let name = lock_etcd::native_lock_name(conformance_tests::etcd::NAMESPACE, &key);
    let client = h.client().await;
    let guard = client.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("could not take a free key"));
    let mut native = etcdctl_lock(&h, &name, "echo acquired");
    let early = timeout(Duration::from_secs(2), native.next_line()).await;
    assert!(early.is_err(), "etcdctl lock got a lock distlock holds: {early:?}");
    let info = client.locks.inspect(key.as_str()).await.ok().flatten().map(|i| i.token);
    assert_eq!(info, Some(guard.token()), "the waiting etcdctl displaced the holder");
    assert!(guard.release().await.is_ok());
    let line = timeout(Duration::from_secs(10), native.next_line()).await.ok().flatten();
    assert_eq!(line.as_deref(), Some("acquired"), "etcdctl lock did not get the lock after release");
    let status = timeout(Duration::from_secs(10), native.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "etcdctl lock failed: {status:?}");
}
