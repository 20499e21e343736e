//! The metrics every client records (see `lock_core::metrics`), read back
//! through a recorder installed for one test at a time. (The `tracing`
//! spans are checked in `spans.rs`.)
//!
//! Each test runs on a current-thread runtime inside
//! `metrics::with_local_recorder`, so the recorder sees everything the
//! runtime's tasks record (the guards' background tasks included) and
//! tests running side by side do not see each other's metrics.
//!
//! The scenarios (`grant_then_release`, `timed_out`, `lost`) take any
//! `Locks` and check only what every backend must record, so a server
//! backend's test can run them on its own clients, in real time
//! (`recorded(false, ...)`), with a loss of its own making (a revoked lease,
//! a deleted key). A local recorder sees only what is recorded on its
//! thread: a backend that reports losses from a thread of its own (not a
//! task of the test's runtime) needs one global recorder instead, and its
//! tests run one at a time.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lock_core::metrics::{
    ACQUIRE_DURATION_SECONDS, ACQUIRE_TIMEOUTS_TOTAL, GRANTS_TOTAL, HELD_DURATION_SECONDS, HELD_LOCKS, LOSSES_TOTAL,
    RELEASE_FAILURES_TOTAL, RENEWAL_FAILURES_TOTAL, RENEWALS_TOTAL, SESSION_RENEWAL_FAILURES_TOTAL,
    SESSION_RENEWALS_TOTAL, WAIT_DURATION_SECONDS,
};
use lock_core::{LockError, LockKey, Locks, MemoryLock, MemoryStore};
use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The value of a call that must succeed.
fn ok<T, E: Debug>(what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|error| panic!("{what}: {error:?}"))
}

fn key(name: &str) -> LockKey {
    ok("key", LockKey::new(name))
}

/// Runs `test` on a fresh current-thread runtime (its clock paused when
/// `paused`: timers then fire at once, in order, when every task waits)
/// with a recorder of its own.
fn recorded<F, Fut>(paused: bool, test: F)
where
    F: FnOnce(Recorded) -> Fut,
    Fut: Future<Output = ()>,
{
    let recorder = DebuggingRecorder::new();
    let recorded = Recorded { snapshotter: recorder.snapshotter() };
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().start_paused(paused);
    let runtime = ok("runtime", builder.build());
    metrics::with_local_recorder(&recorder, || runtime.block_on(test(recorded)));
}

/// The metrics a test records.
struct Recorded {
    snapshotter: Snapshotter,
}

impl Recorded {
    /// What moved since the last call (the recorder hands out changes:
    /// counts, gauge movements and samples since its last snapshot).
    fn take(&self) -> Moved {
        let mut moved = Moved::default();
        for (key, unit, _description, value) in self.snapshotter.snapshot().into_vec() {
            let (_kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> =
                key.labels().map(|label| (label.key().to_owned(), label.value().to_owned())).collect();
            labels.sort();
            let series = series_name(key.name(), &labels);
            let value = match value {
                DebugValue::Counter(0) => continue,
                DebugValue::Counter(count) => Value::Counter(count),
                DebugValue::Gauge(delta) if delta.0 == 0.0 => continue,
                DebugValue::Gauge(delta) => Value::Gauge(delta.0),
                DebugValue::Histogram(samples) if samples.is_empty() => continue,
                DebugValue::Histogram(samples) => Value::Histogram(samples.into_iter().map(|s| s.0).collect()),
            };
            moved.units.insert(key.name().to_owned(), unit);
            moved.values.insert(series, value);
        }
        moved
    }
}

fn series_name(name: &str, labels: &[(String, String)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

#[derive(Debug)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

/// The series that moved, as `name{label=value,...}` (labels sorted).
#[derive(Debug, Default)]
struct Moved {
    values: BTreeMap<String, Value>,
    units: BTreeMap<String, Option<Unit>>,
}

impl Moved {
    fn counter(&self, series: &str) -> u64 {
        match self.values.get(series) {
            Some(Value::Counter(count)) => *count,
            None => 0,
            Some(other) => panic!("{series} is no counter: {other:?}"),
        }
    }

    fn gauge(&self, series: &str) -> f64 {
        match self.values.get(series) {
            Some(Value::Gauge(delta)) => *delta,
            None => 0.0,
            Some(other) => panic!("{series} is no gauge: {other:?}"),
        }
    }

    fn samples(&self, series: &str) -> &[f64] {
        match self.values.get(series) {
            Some(Value::Histogram(samples)) => samples,
            None => &[],
            Some(other) => panic!("{series} is no histogram: {other:?}"),
        }
    }

    /// Every series of a lock's metrics that moved (the sessions', which
    /// a backend records on its own schedule, left out).
    fn lock_series(&self) -> Vec<&str> {
        let session = |series: &&str| {
            series.starts_with(&format!("{SESSION_RENEWALS_TOTAL}{{"))
                || series.starts_with(&format!("{SESSION_RENEWAL_FAILURES_TOTAL}{{"))
        };
        self.values.keys().map(String::as_str).filter(|series| !session(series)).collect()
    }
}

/// The series of one lock's metrics.
struct Lock {
    labels: Vec<(String, String)>,
}

impl Lock {
    /// The lock `key` of `locks` in `mode` (labelled with its key where
    /// `locks` says so).
    fn new(locks: &Locks, mode: &str, key: &str) -> Self {
        let mut labels =
            vec![("backend".to_owned(), locks.backend_name().to_owned()), ("mode".to_owned(), mode.to_owned())];
        if locks.key_labels() {
            labels.push(("key".to_owned(), key.to_owned()));
        }
        Self { labels }
    }

    /// `name{backend=...,mode=...}` with `extra` labels.
    fn series(&self, name: &str, extra: &[(&str, &str)]) -> String {
        let mut labels = self.labels.clone();
        labels.extend(extra.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())));
        labels.sort();
        series_name(name, &labels)
    }
}

fn sorted(mut series: Vec<String>) -> Vec<String> {
    series.sort();
    series
}

const TTL: Duration = Duration::from_secs(30);

/// A grant moves the grants, the acquire histogram (`granted`) and the held
/// gauge (+1), and nothing else; its release brings the gauge back and
/// records the time held, with no release failure.
async fn grant_then_release(recorded: &Recorded, locks: &Locks, name: &str) {
    let lock = Lock::new(locks, "exclusive", name);
    recorded.take();
    let guard = ok("acquire", locks.lock(name).ttl(TTL).acquire().await);
    let moved = recorded.take();
    let granted = lock.series(ACQUIRE_DURATION_SECONDS, &[("outcome", "granted")]);
    let expected = sorted(vec![granted.clone(), lock.series(GRANTS_TOTAL, &[]), lock.series(HELD_LOCKS, &[])]);
    assert_eq!(moved.lock_series(), expected);
    assert_eq!(moved.counter(&lock.series(GRANTS_TOTAL, &[])), 1);
    assert_eq!(moved.gauge(&lock.series(HELD_LOCKS, &[])), 1.0);
    assert_eq!(moved.samples(&granted).len(), 1);

    ok("release", guard.release().await);
    let moved = recorded.take();
    let held_for = lock.series(HELD_DURATION_SECONDS, &[]);
    assert_eq!(moved.lock_series(), sorted(vec![held_for.clone(), lock.series(HELD_LOCKS, &[])]));
    assert_eq!(moved.gauge(&lock.series(HELD_LOCKS, &[])), -1.0);
    assert_eq!(moved.samples(&held_for).len(), 1);
}

/// An acquire that times out behind `holder` counts a timeout, its time
/// (`timeout`) and its wait, and no grant.
async fn timed_out(recorded: &Recorded, holder: &Locks, waiter: &Locks, name: &str, wait: Duration) -> Moved {
    let held = ok("holder's acquire", holder.lock(name).ttl(TTL).acquire().await);
    recorded.take();
    let result = waiter.lock(name).ttl(TTL).wait(wait).acquire().await;
    assert!(matches!(result, Err(LockError::Timeout { .. })), "{result:?}");
    let moved = recorded.take();
    let lock = Lock::new(waiter, "exclusive", name);
    let (took, waited) = (
        lock.series(ACQUIRE_DURATION_SECONDS, &[("outcome", "timeout")]),
        lock.series(WAIT_DURATION_SECONDS, &[("outcome", "timeout")]),
    );
    let timeouts = lock.series(ACQUIRE_TIMEOUTS_TOTAL, &[]);
    assert_eq!(moved.lock_series(), sorted(vec![took.clone(), timeouts.clone(), waited.clone()]));
    assert_eq!(moved.counter(&timeouts), 1);
    let ([took], [waited]) = (moved.samples(&took), moved.samples(&waited)) else {
        panic!("one sample each expected: {moved:?}");
    };
    assert!(*took >= wait.as_secs_f64() * 0.9, "acquire took {took} s, waiting {wait:?}");
    assert!(*waited > 0.0 && waited <= took, "waited {waited} s of {took} s");
    ok("holder's release", held.release().await);
    recorded.take();
    moved
}

/// A lock lost by `lose` counts one loss for `reason` and leaves the held
/// gauge once, by the time `lost()` completes; releasing it afterwards
/// counts a release failure (`lost`) and moves the gauge no further.
/// Returns what moved up to the loss.
async fn lost(
    recorded: &Recorded,
    locks: &Locks,
    name: &str,
    ttl: Duration,
    lose: impl FnOnce(),
    reason: &str,
) -> Moved {
    let lock = Lock::new(locks, "exclusive", name);
    let guard = ok("acquire", locks.lock(name).ttl(ttl).acquire().await);
    recorded.take();
    lose();
    assert_eq!(guard.lost().await.name(), reason);
    let moved = recorded.take();
    assert_eq!(moved.counter(&lock.series(LOSSES_TOTAL, &[("reason", reason)])), 1, "{moved:?}");
    assert_eq!(moved.gauge(&lock.series(HELD_LOCKS, &[])), -1.0, "{moved:?}");
    assert_eq!(moved.samples(&lock.series(HELD_DURATION_SECONDS, &[])).len(), 1);
    for unmoved in [GRANTS_TOTAL, RELEASE_FAILURES_TOTAL, ACQUIRE_DURATION_SECONDS] {
        assert!(!moved.lock_series().iter().any(|series| series.starts_with(unmoved)), "{unmoved}: {moved:?}");
    }

    let released = guard.release().await;
    assert!(matches!(released, Err(LockError::Lost { .. })), "{released:?}");
    let after = recorded.take();
    assert_eq!(after.lock_series(), vec![lock.series(RELEASE_FAILURES_TOTAL, &[("error", "lost")])]);
    assert_eq!(after.counter(&lock.series(RELEASE_FAILURES_TOTAL, &[("error", "lost")])), 1);
    moved
}

#[test]
fn a_grant_and_its_release_on_memory() {
    recorded(true, |recorded| async move {
        let locks = Locks::new(MemoryLock::new());
        grant_then_release(&recorded, &locks, "jobs/nightly").await;
    });
}

#[test]
fn histograms_are_in_seconds_and_counters_count() {
    recorded(true, |recorded| async move {
        let locks = Locks::new(MemoryLock::new());
        let guard = ok("acquire", locks.lock("units").acquire().await);
        let moved = recorded.take();
        assert_eq!(moved.units.get(ACQUIRE_DURATION_SECONDS), Some(&Some(Unit::Seconds)), "{:?}", moved.units);
        assert_eq!(moved.units.get(GRANTS_TOTAL), Some(&Some(Unit::Count)));
        assert_eq!(moved.units.get(HELD_LOCKS), Some(&Some(Unit::Count)));
        ok("release", guard.release().await);
        let moved = recorded.take();
        assert_eq!(moved.units.get(HELD_DURATION_SECONDS), Some(&Some(Unit::Seconds)), "{:?}", moved.units);
    });
}

#[test]
fn a_timed_out_acquire_on_memory() {
    recorded(true, |recorded| async move {
        let store = MemoryStore::new();
        let (holder, waiter) = (Locks::new(store.client()), Locks::new(store.client()));
        let wait = Duration::from_millis(50);
        let moved = timed_out(&recorded, &holder, &waiter, "reports", wait).await;
        // The clock is paused: the waiter queued at once and gave up exactly
        // at its deadline.
        let lock = Lock::new(&waiter, "exclusive", "reports");
        let took = moved.samples(&lock.series(ACQUIRE_DURATION_SECONDS, &[("outcome", "timeout")]));
        let waited = moved.samples(&lock.series(WAIT_DURATION_SECONDS, &[("outcome", "timeout")]));
        assert_eq!((took, waited), ([0.05].as_slice(), [0.05].as_slice()));
    });
}

#[test]
fn a_grant_after_waiting_records_the_wait() {
    recorded(true, |recorded| async move {
        let store = MemoryStore::new();
        let (holder, waiter) = (Locks::new(store.client()), Locks::new(store.client()));
        let held = ok("holder's acquire", holder.lock("shard/1").ttl(TTL).acquire().await);
        let waiting = tokio::spawn(async move { waiter.write_lock("shard/1").ttl(TTL).acquire().await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        recorded.take();
        ok("holder's release", held.release().await);
        let guard = ok("waiter's acquire", ok("waiter's task", waiting.await));
        let moved = recorded.take();
        let writer = Lock::new(&holder, "write", "shard/1");
        let waited = writer.series(WAIT_DURATION_SECONDS, &[("outcome", "granted")]);
        let took = writer.series(ACQUIRE_DURATION_SECONDS, &[("outcome", "granted")]);
        assert_eq!(moved.samples(&waited), [0.1]);
        assert_eq!(moved.samples(&took), [0.1]);
        assert_eq!(moved.counter(&writer.series(GRANTS_TOTAL, &[])), 1);
        assert_eq!(moved.gauge(&writer.series(HELD_LOCKS, &[])), 1.0);
        let holder_lock = Lock::new(&holder, "exclusive", "shard/1");
        assert_eq!(moved.gauge(&holder_lock.series(HELD_LOCKS, &[])), -1.0);
        ok("waiter's release", guard.release().await);
    });
}

/// Waiting behind another task of the same client is waiting too.
#[test]
fn waiting_behind_a_task_of_the_same_client_records_the_wait() {
    recorded(true, |recorded| async move {
        let locks = Locks::new(MemoryLock::new());
        let held = ok("first acquire", locks.lock("k").ttl(TTL).acquire().await);
        let second = locks.clone();
        let waiting = tokio::spawn(async move { second.lock("k").ttl(TTL).acquire().await });
        tokio::time::sleep(Duration::from_millis(40)).await;
        ok("first release", held.release().await);
        let guard = ok("second acquire", ok("task", waiting.await));
        let lock = Lock::new(&locks, "exclusive", "k");
        let moved = recorded.take();
        // The first grant waited for nothing: one wait sample, two grants.
        assert_eq!(moved.samples(&lock.series(WAIT_DURATION_SECONDS, &[("outcome", "granted")])), [0.04]);
        assert_eq!(moved.counter(&lock.series(GRANTS_TOTAL, &[])), 2);
        ok("second release", guard.release().await);
    });
}

#[test]
fn try_acquire_counts_grants_and_busy_attempts() {
    recorded(true, |recorded| async move {
        let store = MemoryStore::new();
        let (first, second) = (Locks::new(store.client()), Locks::new(store.client()));
        let guard = ok("try_acquire", first.lock("k").try_acquire().await);
        let guard = guard.unwrap_or_else(|| panic!("a free key was not granted"));
        let busy = ok("second try_acquire", second.lock("k").try_acquire().await);
        assert!(busy.is_none());
        let lock = Lock::new(&first, "exclusive", "k");
        let moved = recorded.take();
        let (granted, held_back) = (
            lock.series(ACQUIRE_DURATION_SECONDS, &[("outcome", "granted")]),
            lock.series(ACQUIRE_DURATION_SECONDS, &[("outcome", "busy")]),
        );
        assert_eq!(
            moved.lock_series(),
            sorted(vec![
                granted.clone(),
                held_back.clone(),
                lock.series(GRANTS_TOTAL, &[]),
                lock.series(HELD_LOCKS, &[])
            ])
        );
        assert_eq!(moved.counter(&lock.series(GRANTS_TOTAL, &[])), 1);
        assert_eq!((moved.samples(&granted).len(), moved.samples(&held_back).len()), (1, 1));
        ok("release", guard.release().await);
    });
}

/// An acquire the application gives up on (dropping the future) counts as
/// cancelled, not as a timeout.
#[test]
fn a_dropped_acquire_counts_as_cancelled() {
    recorded(true, |recorded| async move {
        let store = MemoryStore::new();
        let (holder, waiter) = (Locks::new(store.client()), Locks::new(store.client()));
        let held = ok("holder's acquire", holder.lock("k").ttl(TTL).acquire().await);
        recorded.take();
        let given_up = tokio::time::timeout(Duration::from_millis(20), waiter.lock("k").acquire()).await;
        assert!(given_up.is_err(), "{given_up:?}");
        let lock = Lock::new(&waiter, "exclusive", "k");
        let moved = recorded.take();
        let (took, waited) = (
            lock.series(ACQUIRE_DURATION_SECONDS, &[("outcome", "cancelled")]),
            lock.series(WAIT_DURATION_SECONDS, &[("outcome", "cancelled")]),
        );
        assert_eq!(moved.lock_series(), sorted(vec![took.clone(), waited.clone()]));
        assert_eq!((moved.samples(&took), moved.samples(&waited)), ([0.02].as_slice(), [0.02].as_slice()));
        ok("holder's release", held.release().await);
    });
}

#[test]
fn a_lock_deleted_by_an_operator_is_lost_revoked() {
    recorded(true, |recorded| async move {
        let store = MemoryStore::new();
        let locks = Locks::new(store.client());
        let moved = lost(&recorded, &locks, "k", TTL, || assert!(store.delete(&key("k"))), "revoked").await;
        let lock = Lock::new(&locks, "exclusive", "k");
        let expected = vec![
            lock.series(HELD_DURATION_SECONDS, &[]),
            lock.series(HELD_LOCKS, &[]),
            lock.series(LOSSES_TOTAL, &[("reason", "revoked")]),
        ];
        assert_eq!(moved.lock_series(), sorted(expected));
    });
}

#[test]
fn a_lock_whose_session_ended_is_lost_session_ended() {
    recorded(true, |recorded| async move {
        let client = Arc::new(MemoryLock::new());
        let locks = Locks::from_backend(Arc::clone(&client) as Arc<dyn lock_core::DistributedLock>);
        let moved = lost(&recorded, &locks, "k", TTL, || client.end_session(), "session_ended").await;
        let lock = Lock::new(&locks, "exclusive", "k");
        assert_eq!(moved.counter(&lock.series(LOSSES_TOTAL, &[("reason", "session_ended")])), 1);
        assert_eq!(moved.lock_series().len(), 3, "{moved:?}");
    });
}

/// Cut off, the guard gives the lock up by its own clock: its renewal fails
/// (`unavailable`), then the loss is `not_confirmed`, at the TTL less the
/// safety margin.
#[test]
fn a_lock_cut_off_from_its_service_is_lost_not_confirmed() {
    recorded(true, |recorded| async move {
        let client = Arc::new(MemoryLock::new());
        let locks = Locks::from_backend(Arc::clone(&client) as Arc<dyn lock_core::DistributedLock>);
        let ttl = Duration::from_secs(1);
        let moved = lost(&recorded, &locks, "k", ttl, || client.disconnect(), "not_confirmed").await;
        let lock = Lock::new(&locks, "exclusive", "k");
        let renewal_failed = lock.series(RENEWAL_FAILURES_TOTAL, &[("error", "unavailable")]);
        let expected = vec![
            lock.series(HELD_DURATION_SECONDS, &[]),
            lock.series(HELD_LOCKS, &[]),
            lock.series(LOSSES_TOTAL, &[("reason", "not_confirmed")]),
            renewal_failed.clone(),
        ];
        assert_eq!(moved.lock_series(), sorted(expected));
        assert_eq!(moved.counter(&renewal_failed), 1);
        assert_eq!(moved.samples(&lock.series(HELD_DURATION_SECONDS, &[])), [0.8]);
        client.reconnect();
    });
}

/// The loss is counted when the backend reports it, before anyone looks.
#[test]
fn a_loss_is_counted_as_it_happens() {
    recorded(true, |recorded| async move {
        let store = MemoryStore::new();
        let locks = Locks::new(store.client());
        let guard = ok("acquire", locks.lock("k").ttl(TTL).acquire().await);
        recorded.take();
        assert!(store.delete(&key("k")));
        let moved = recorded.take();
        let lock = Lock::new(&locks, "exclusive", "k");
        assert_eq!(moved.counter(&lock.series(LOSSES_TOTAL, &[("reason", "revoked")])), 1);
        assert_eq!(moved.gauge(&lock.series(HELD_LOCKS, &[])), -1.0);
        drop(guard);
    });
}

/// A guard dropped without a release leaves the gauge at once; its release
/// in the background succeeds, and counts nothing. Dropped after its loss,
/// it leaves the gauge only once, and its failed release counts.
#[test]
fn a_dropped_guard_leaves_the_gauge_once() {
    recorded(true, |recorded| async move {
        let store = MemoryStore::new();
        let (locks, other) = (Locks::new(store.client()), Locks::new(store.client()));
        let lock = Lock::new(&locks, "exclusive", "k");
        let guard = ok("acquire", locks.lock("k").ttl(TTL).acquire().await);
        recorded.take();
        drop(guard);
        let moved = recorded.take();
        assert_eq!(
            moved.lock_series(),
            sorted(vec![lock.series(HELD_DURATION_SECONDS, &[]), lock.series(HELD_LOCKS, &[])])
        );
        assert_eq!(moved.gauge(&lock.series(HELD_LOCKS, &[])), -1.0);
        // The background release frees the key for the other client.
        let next = ok("other's acquire", other.lock("k").ttl(TTL).wait(Duration::from_secs(1)).acquire().await);
        let moved = recorded.take();
        assert!(!moved.lock_series().iter().any(|s| s.starts_with(RELEASE_FAILURES_TOTAL)), "{moved:?}");
        ok("other's release", next.release().await);

        let guard = ok("acquire again", locks.lock("k").ttl(TTL).acquire().await);
        recorded.take();
        assert!(store.delete(&key("k")));
        drop(guard);
        tokio::time::sleep(Duration::from_millis(1)).await; // the background release
        let moved = recorded.take();
        assert_eq!(moved.gauge(&lock.series(HELD_LOCKS, &[])), -1.0, "{moved:?}");
        assert_eq!(moved.counter(&lock.series(LOSSES_TOTAL, &[("reason", "revoked")])), 1);
        assert_eq!(moved.counter(&lock.series(RELEASE_FAILURES_TOTAL, &[("error", "lost")])), 1);
    });
}

/// A release the service cannot be told of fails (`unavailable`); the guard
/// stops counting as held all the same.
#[test]
fn a_release_that_cannot_reach_the_service_counts_a_failure() {
    recorded(true, |recorded| async move {
        let client = Arc::new(MemoryLock::new().with_request_timeout(Duration::from_millis(100)));
        let locks = Locks::from_backend(Arc::clone(&client) as Arc<dyn lock_core::DistributedLock>);
        let guard = ok("acquire", locks.lock("k").ttl(TTL).acquire().await);
        recorded.take();
        client.disconnect();
        let released = guard.release().await;
        assert!(matches!(released, Err(LockError::Unavailable { .. })), "{released:?}");
        let lock = Lock::new(&locks, "exclusive", "k");
        let failed = lock.series(RELEASE_FAILURES_TOTAL, &[("error", "unavailable")]);
        let moved = recorded.take();
        let expected = vec![failed.clone(), lock.series(HELD_DURATION_SECONDS, &[]), lock.series(HELD_LOCKS, &[])];
        assert_eq!(moved.lock_series(), sorted(expected));
        assert_eq!((moved.counter(&failed), moved.gauge(&lock.series(HELD_LOCKS, &[]))), (1, -1.0));
        client.reconnect();
    });
}

/// A memory client whose releases answer as a server backend's may: that
/// the lock had been lost (which nothing reported before), or ok after its
/// watch saw the key go (its own deletion) and fired the loss signal.
#[derive(Debug)]
struct ReleaseAnswers {
    inner: MemoryLock,
    lost: bool,
}

#[async_trait::async_trait]
impl lock_core::DistributedLock for ReleaseAnswers {
    fn backend(&self) -> &'static str {
        "answers"
    }

    fn capabilities(&self) -> lock_core::Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(
        &self,
        key: &LockKey,
        options: &lock_core::LockOptions,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<lock_core::Lease, LockError> {
        self.inner.acquire(key, options, deadline).await
    }

    async fn try_acquire(
        &self,
        key: &LockKey,
        options: &lock_core::LockOptions,
    ) -> Result<Option<lock_core::Lease>, LockError> {
        self.inner.try_acquire(key, options).await
    }

    async fn renew(&self, lease: &lock_core::Lease) -> Result<tokio::time::Instant, LockError> {
        self.inner.renew(lease).await
    }

    async fn release(&self, lease: &lock_core::Lease) -> Result<(), LockError> {
        self.inner.release(lease).await?;
        if self.lost {
            return Err(LockError::lost("answers", lease.key(), lock_core::LostReason::Revoked));
        }
        lease.loss_signal().fire(lock_core::LostReason::Revoked);
        Ok(())
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<lock_core::LockInfo>, LockError> {
        self.inner.inspect(key).await
    }
}

/// The answer to a release decides: a loss it reports counts (once), and
/// a loss signal fired while releasing does not when the release succeeds.
#[test]
fn the_answer_to_a_release_decides_whether_it_was_lost() {
    recorded(true, |recorded| async move {
        let locks = Locks::new(ReleaseAnswers { inner: MemoryLock::new(), lost: true });
        let lock = Lock::new(&locks, "exclusive", "k");
        let guard = ok("acquire", locks.lock("k").ttl(TTL).acquire().await);
        recorded.take();
        let released = guard.release().await;
        assert!(matches!(released, Err(LockError::Lost { .. })), "{released:?}");
        let moved = recorded.take();
        let expected = vec![
            lock.series(HELD_DURATION_SECONDS, &[]),
            lock.series(HELD_LOCKS, &[]),
            lock.series(LOSSES_TOTAL, &[("reason", "revoked")]),
            lock.series(RELEASE_FAILURES_TOTAL, &[("error", "lost")]),
        ];
        assert_eq!(moved.lock_series(), sorted(expected));
        assert_eq!(moved.counter(&lock.series(LOSSES_TOTAL, &[("reason", "revoked")])), 1);
        assert_eq!(moved.gauge(&lock.series(HELD_LOCKS, &[])), -1.0);

        let locks = Locks::new(ReleaseAnswers { inner: MemoryLock::new(), lost: false });
        let guard = ok("acquire", locks.lock("k").ttl(TTL).acquire().await);
        recorded.take();
        ok("release", guard.release().await);
        let moved = recorded.take();
        assert_eq!(
            moved.lock_series(),
            sorted(vec![lock.series(HELD_DURATION_SECONDS, &[]), lock.series(HELD_LOCKS, &[])])
        );
    });
}

/// The background renewals at a third of the TTL, and `renew()`, count.
#[test]
fn renewals_are_counted() {
    recorded(true, |recorded| async move {
        let locks = Locks::new(MemoryLock::new());
        let guard = ok("acquire", locks.lock("k").ttl(Duration::from_millis(300)).acquire().await);
        recorded.take();
        // Renewed at 100 ms and 200 ms.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let lock = Lock::new(&locks, "exclusive", "k");
        let moved = recorded.take();
        assert_eq!(moved.lock_series(), vec![lock.series(RENEWALS_TOTAL, &[])]);
        assert_eq!(moved.counter(&lock.series(RENEWALS_TOTAL, &[])), 2);
        ok("renew", guard.renew().await);
        assert_eq!(recorded.take().counter(&lock.series(RENEWALS_TOTAL, &[])), 1);
        ok("release", guard.release().await);
    });
}

#[test]
fn keys_are_labels_only_when_asked_for() {
    recorded(true, |recorded| async move {
        let store = MemoryStore::new();
        let plain = Locks::new(store.client());
        grant_then_release(&recorded, &plain, "jobs/a").await;

        let labelled = Locks::new(store.client()).with_key_labels(true);
        grant_then_release(&recorded, &labelled, "jobs/a").await;
        // A clone made afterwards labels too, a loss and a release failure as well.
        let clone = labelled.clone();
        let moved = lost(&recorded, &clone, "jobs/b", TTL, || assert!(store.delete(&key("jobs/b"))), "revoked").await;
        assert!(moved.lock_series().iter().all(|series| series.contains(",key=jobs/b,")), "{moved:?}");
    });
}

#[test]
fn modes_are_labels() {
    recorded(true, |recorded| async move {
        let store = MemoryStore::new();
        let (a, b) = (Locks::new(store.client()), Locks::new(store.client()));
        let reading = ok("read", a.read_lock("k").acquire().await);
        let place = ok("semaphore", b.semaphore("s", 2).acquire().await);
        let moved = recorded.take();
        assert_eq!(moved.counter(&Lock::new(&a, "read", "k").series(GRANTS_TOTAL, &[])), 1);
        assert_eq!(moved.counter(&Lock::new(&b, "semaphore", "s").series(GRANTS_TOTAL, &[])), 1);
        ok("release", reading.release().await);
        ok("release", place.release().await);
    });
}

#[test]
fn session_renewals_count_by_backend() {
    recorded(true, |recorded| async move {
        lock_core::metrics::session_renewal("etcd", true);
        lock_core::metrics::session_renewal("etcd", true);
        lock_core::metrics::session_renewal("consul", false);
        let moved = recorded.take();
        assert_eq!(moved.counter(&format!("{SESSION_RENEWALS_TOTAL}{{backend=etcd}}")), 2);
        assert_eq!(moved.counter(&format!("{SESSION_RENEWAL_FAILURES_TOTAL}{{backend=consul}}")), 1);
        assert_eq!(moved.values.len(), 2, "{moved:?}");
    });
}
