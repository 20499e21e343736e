//! Attempts that end while the network misbehaves: a waiter whose deadline
//! passes while it is cut off, an acquire cancelled while the service's
//! replies are lost. Neither may leave anything behind, and neither may touch
//! the same client's next grant of the key.
//!
//! These need a connection to break, so they apply to backends whose harness
//! talks to the service through a [`StallProxy`](crate::proxy::StallProxy).

use std::time::Duration;

use lock_core::{LockError, LockGuard};
use tokio::time::{Instant, sleep, sleep_until};

use super::support::{GRACE, STEP, acquire, assert_clean, await_waiters, ok, options, release, take, within};
use crate::{Harness, Namespace, TestClient};

/// Case 22: A waiter whose deadline passes while it is cut off from the
/// service (so its withdrawal is not answered) times out, and once the
/// network is back its waiter record goes: when the holder releases, a third
/// client is granted the key within the TTL, though the timed-out client is
/// alive and renewing. The timed-out client's next grant of the key holds.
pub async fn waiter_timing_out_while_cut_off_leaves_nothing(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let Some(Scene { ns, key, _holder, waiter, third, guard }) = scene(h, "timed out while cut off").await else {
        return;
    };
    let deadline = Instant::now() + Duration::from_millis(1500);
    let waiting = {
        let (locks, key, opts) = (waiter.locks.clone(), key.clone(), options(h, "waiter"));
        tokio::spawn(async move { locks.acquire(&key, &opts, Some(deadline)).await })
    };
    await_waiters(h, &waiter.locks, ns.prefix(), 2).await;
    sleep_until(deadline - Duration::from_millis(200)).await;
    waiter.control.cut_off().await;
    // The withdrawal leaves into the stalled connection, which then dies.
    sleep_until(deadline + Duration::from_millis(300)).await;
    waiter.control.reset_connections().await;
    waiter.control.restore().await;
    let outcome = within(h, "the cut-off waiter gives up", STEP, waiting).await;
    let outcome = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(
        matches!(outcome, Err(LockError::Timeout { .. } | LockError::Unavailable { .. })),
        "[{}] a waiter cut off at its deadline: {outcome:?}",
        h.name()
    );
    release(h, guard).await;
    next_grants_hold(h, &key, &third, &waiter).await;
    assert_clean(h, ns.prefix(), "after a waiter timed out while cut off").await;
}

/// Case 23: An acquire cancelled while the service applies its requests but
/// every reply is lost leaves nothing once the network is back: the holder's
/// release lets a third client in within the TTL, and the cancelled client's
/// next grant of the key holds.
pub async fn acquire_cancelled_while_replies_are_lost_leaves_nothing(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let Some(Scene { ns, key, _holder, waiter, third, guard }) = scene(h, "cancelled without replies").await else {
        return;
    };
    // A lease or session of its own first, so that its contender write is
    // among the requests whose replies are lost.
    let warm_up = take(h, &waiter.locks, &ns.key("warm-up"), &options(h, "waiter")).await;
    release(h, warm_up).await;
    waiter.control.drop_replies().await;
    let waiting = {
        let (locks, key, opts) = (waiter.locks.clone(), key.clone(), options(h, "waiter"));
        tokio::spawn(async move { locks.acquire(&key, &opts, None).await })
    };
    // Its requests reach the service; the replies never come.
    sleep(Duration::from_millis(500)).await;
    waiting.abort();
    let _ = waiting.await;
    sleep(Duration::from_millis(300)).await;
    waiter.control.restore().await;
    release(h, guard).await;
    next_grants_hold(h, &key, &third, &waiter).await;
    assert_clean(h, ns.prefix(), "after an acquire cancelled without replies").await;
}

/// Three clients on one key of a fresh namespace, the first holding it;
/// `None` (the case does not apply) when the harness has no connection to
/// break.
struct Scene {
    ns: Namespace,
    key: lock_core::LockKey,
    /// Kept so the holder's client lives as long as its guard.
    _holder: TestClient,
    waiter: TestClient,
    third: TestClient,
    guard: LockGuard,
}

async fn scene(h: &dyn Harness, name: &str) -> Option<Scene> {
    let ns = Namespace::new();
    let key = ns.key(name);
    let (holder, waiter, third) = (h.client().await, h.client().await, h.client().await);
    if waiter.control.proxy().is_none() {
        tracing::info!(backend = h.name(), "no connection to break: case not applicable");
        return None;
    }
    let guard = take(h, &holder.locks, &key, &options(h, "holder")).await;
    Some(Scene { ns, key, _holder: holder, waiter, third, guard })
}

/// The key, just released by its holder, is granted to `third` within the
/// TTL (nothing `earlier` left behind blocks it), and then to `earlier`,
/// whose grant is still held after every retried clean-up of its attempt
/// would have run.
async fn next_grants_hold(h: &dyn Harness, key: &lock_core::LockKey, third: &TestClient, earlier: &TestClient) {
    let bound = h.ttl() + GRACE;
    let granted = within(h, "a third client takes the released key", bound, async {
        ok(
            h,
            "third client's acquire",
            third.locks.acquire(key, &options(h, "third"), Some(Instant::now() + bound)).await,
        )
    })
    .await;
    release(h, granted).await;
    let again: LockGuard = acquire(h, &earlier.locks, key, &options(h, "again")).await;
    // Longer than any retried clean-up of the earlier attempt takes.
    sleep(GRACE * 2).await;
    assert!(!again.is_lost(), "[{}] the client's next grant was taken away by its own clean-up", h.name());
    let info = ok(h, "inspect", third.locks.inspect(key).await);
    assert_eq!(info.map(|i| i.token), Some(again.token()), "[{}] the client's next grant is gone", h.name());
    release(h, again).await;
}
