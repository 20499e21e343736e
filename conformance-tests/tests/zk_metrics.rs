//! The metrics of `lock_core::metrics` move as documented on a server
//! backend too (ZooKeeper, through the conformance harness): a grant and its
//! release, a timed-out acquire, a lock broken from outside, the session's
//! renewals. (Every case on the memory backend: `lock-core/tests/metrics.rs`.)
//!
//! The test runs on a current-thread runtime inside
//! `metrics::with_local_recorder`: the ZooKeeper client's tasks and the
//! guards' run on that thread, so the recorder sees all they record.
#![cfg(feature = "zk")]

use std::collections::BTreeMap;
use std::time::Duration;

use conformance_tests::Harness;
use conformance_tests::zk::ZkHarness;
use lock_core::metrics::{
    ACQUIRE_DURATION_SECONDS, ACQUIRE_TIMEOUTS_TOTAL, GRANTS_TOTAL, HELD_LOCKS, LOSSES_TOTAL, RELEASE_FAILURES_TOTAL,
    SESSION_RENEWALS_TOTAL,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The series that moved since the last look, as `name{label=value,...}`
/// (labels sorted): counts, gauge movements, histogram sample counts and sums.
fn moved(snapshotter: &Snapshotter) -> BTreeMap<String, (f64, usize)> {
    let mut moved = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        labels.sort();
        let series = format!("{}{{{}}}", key.name(), labels.join(","));
        let value = match value {
            DebugValue::Counter(count) => (count as f64, 1),
            DebugValue::Gauge(delta) => (delta.0, 1),
            DebugValue::Histogram(samples) => (samples.iter().map(|s| s.0).sum(), samples.len()),
        };
        if value.0 != 0.0 || value.1 > 1 {
            moved.insert(series, value);
        }
    }
    moved
}

fn value(moved: &BTreeMap<String, (f64, usize)>, series: &str) -> f64 {
    moved.get(series).map_or(0.0, |(value, _)| *value)
}

fn samples(moved: &BTreeMap<String, (f64, usize)>, series: &str) -> usize {
    moved.get(series).map_or(0, |(_, samples)| *samples)
}

#[test]
fn grant_timeout_loss_and_session_renewals_move_the_documented_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("runtime: {e}"));
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let harness = ZkHarness::from_env();
            let key = conformance_tests::Namespace::new().key("metrics");
            // Each client with its proxy: the client goes through it.
            let (holder_client, other_client) = (harness.client().await, harness.client().await);
            let (holder, other) = (&holder_client.locks, &other_client.locks);
            let lock = "backend=zk,mode=exclusive";
            moved(&snapshotter);

            // A grant, held past a quarter of the session timeout (2 s), then released.
            let guard = holder.lock(key.as_str()).acquire().await.unwrap_or_else(|e| panic!("acquire: {e}"));
            let granted = moved(&snapshotter);
            assert_eq!(value(&granted, &format!("{GRANTS_TOTAL}{{{lock}}}")), 1.0, "{granted:#?}");
            assert_eq!(value(&granted, &format!("{HELD_LOCKS}{{{lock}}}")), 1.0, "{granted:#?}");
            let acquired = format!("{ACQUIRE_DURATION_SECONDS}{{{lock},outcome=granted}}");
            assert_eq!(samples(&granted, &acquired), 1, "{granted:#?}");

            // Meanwhile another client's acquire times out.
            let timeout = other.lock(key.as_str()).wait(Duration::from_millis(300)).acquire().await;
            assert!(matches!(timeout, Err(lock_core::LockError::Timeout { .. })), "{timeout:?}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let waited = moved(&snapshotter);
            assert_eq!(value(&waited, &format!("{ACQUIRE_TIMEOUTS_TOTAL}{{{lock}}}")), 1.0, "{waited:#?}");
            let timed_out = format!("{ACQUIRE_DURATION_SECONDS}{{{lock},outcome=timeout}}");
            assert!(value(&waited, &timed_out) >= 0.3, "{waited:#?}");
            assert_eq!(value(&waited, &format!("{GRANTS_TOTAL}{{{lock}}}")), 0.0, "{waited:#?}");
            assert!(value(&waited, &format!("{SESSION_RENEWALS_TOTAL}{{backend=zk}}")) >= 1.0, "{waited:#?}");

            guard.release().await.unwrap_or_else(|e| panic!("release: {e}"));
            let released = moved(&snapshotter);
            assert_eq!(value(&released, &format!("{HELD_LOCKS}{{{lock}}}")), -1.0, "{released:#?}");
            assert!(!released.keys().any(|s| s.starts_with(RELEASE_FAILURES_TOTAL)), "{released:#?}");

            // A lock broken from outside is a loss, counted with its reason.
            let guard = holder.lock(key.as_str()).acquire().await.unwrap_or_else(|e| panic!("acquire: {e}"));
            moved(&snapshotter);
            harness.break_lock(&key).await;
            let reason = tokio::time::timeout(Duration::from_secs(5), guard.lost()).await;
            assert!(reason.is_ok(), "the broken lock was not reported lost");
            let lost = moved(&snapshotter);
            assert_eq!(value(&lost, &format!("{LOSSES_TOTAL}{{{lock},reason=revoked}}")), 1.0, "{lost:#?}");
            assert_eq!(value(&lost, &format!("{HELD_LOCKS}{{{lock}}}")), -1.0, "{lost:#?}");
            drop(guard);
        });
    });
}
