//! etcd-specific behaviour, against a real etcd: loss reported within a
//! second, and mutual exclusion with etcd's own `etcdctl lock`.
#![cfg(feature = "etcd")]

use std::time::Duration;

use conformance_tests::etcd::EtcdHarness;
use conformance_tests::{Harness, Namespace};
use lock_core::LostReason;
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
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("deleted");
    let client = h.client().await;
    let guard = client.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("could not take a free key"));
    h.break_lock(&key).await;
    let reason = timeout(Duration::from_secs(1), guard.lost()).await;
    assert_eq!(reason.ok(), Some(LostReason::Revoked), "lost() did not report the deletion within 1 s");
}
