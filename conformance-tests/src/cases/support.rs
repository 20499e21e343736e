//! What the cases share: bounds derived from capabilities, and assertions
//! that say which backend and which step failed.

use std::future::Future;
use std::time::Duration;

use lock_core::{LockError, LockGuard, LockKey, LockOptions, Locks};
use tokio::time::{Instant, sleep, timeout};

use crate::Harness;

/// Room for scheduling and one round trip on a loaded two-core machine.
/// Bounds check behaviour (woken by an event rather than by expiry), not speed.
pub(crate) const GRACE: Duration = Duration::from_secs(2);

/// How long a step that should succeed may wait before the case fails.
pub(crate) const STEP: Duration = Duration::from_secs(30);

/// Options with the harness's TTL and the given owner.
pub(crate) fn options(harness: &dyn Harness, owner: &str) -> LockOptions {
    LockOptions::new().ttl(harness.ttl()).owner(owner)
}

/// Unwraps `result`, naming the backend and the step on failure.
pub(crate) fn ok<T>(harness: &dyn Harness, step: &str, result: Result<T, LockError>) -> T {
    result.unwrap_or_else(|error| panic!("[{}] {step}: unexpected error: {error}", harness.name()))
}

/// Runs `future`, failing the case when it takes longer than `limit`.
pub(crate) async fn within<F: Future>(harness: &dyn Harness, step: &str, limit: Duration, future: F) -> F::Output {
    match timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("[{}] {step}: did not finish within {limit:?}", harness.name()),
    }
}

/// Acquires `key`, failing the case when it is not granted within [`STEP`].
pub(crate) async fn acquire(harness: &dyn Harness, locks: &Locks, key: &LockKey, options: &LockOptions) -> LockGuard {
    let deadline = Some(Instant::now() + STEP);
    ok(harness, &format!("acquire {key}"), locks.acquire(key, options, deadline).await)
}

/// Takes `key` at once, failing the case when it is not free.
pub(crate) async fn take(harness: &dyn Harness, locks: &Locks, key: &LockKey, options: &LockOptions) -> LockGuard {
    let step = format!("try_acquire free key {key}");
    match ok(harness, &step, locks.try_acquire(key, options).await) {
        Some(guard) => guard,
        None => panic!("[{}] {step}: the key is held, but should be free", harness.name()),
    }
}

/// Releases `guard`, failing the case on error.
pub(crate) async fn release(harness: &dyn Harness, guard: LockGuard) {
    let step = format!("release {}", guard.key());
    ok(harness, &step, guard.release().await);
}

/// Waits until the service keeps exactly `expected` records under `prefix`.
///
/// Used where no event tells that a request has reached the service (a
/// waiter registering, a cancelled waiter's cleanup landing).
pub(crate) async fn await_leftover(harness: &dyn Harness, prefix: &str, expected: usize, step: &str) {
    let deadline = Instant::now() + STEP;
    loop {
        let found = harness.leftover(prefix).await;
        if found == expected {
            return;
        }
        if Instant::now() >= deadline {
            panic!("[{}] {step}: expected {expected} records under {prefix:?}, found {found}", harness.name());
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a waiter has reached the service: by counting records where
/// the backend queues waiters, else by giving its request time to land.
pub(crate) async fn await_waiters(harness: &dyn Harness, locks: &Locks, prefix: &str, records: usize) {
    if locks.capabilities().fifo {
        await_leftover(harness, prefix, records, "waiter registered").await;
    } else {
        sleep(Duration::from_millis(300)).await;
    }
}

/// Waits for requests of dropped futures to land: a network service may
/// still apply a request whose client gave up on it, and the backend then
/// removes what it wrote. Counting records before that would miss them.
pub(crate) async fn let_abandoned_requests_land() {
    sleep(GRACE / 10).await;
}

/// Asserts that nothing is left under `prefix` once cleanup has landed.
pub(crate) async fn assert_clean(harness: &dyn Harness, prefix: &str, step: &str) {
    await_leftover(harness, prefix, 0, step).await;
}
