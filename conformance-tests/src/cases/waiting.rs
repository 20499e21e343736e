//! Waiting: deadlines, cancellation, wake-up on release, FIFO order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::LockError;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

use super::support::{
    GRACE, STEP, assert_clean, await_leftover, await_waiters, let_abandoned_requests_land, ok, options, release, take,
    within,
};
use crate::{Harness, Namespace};

/// Case 4: `acquire` with a deadline on a held key returns `Timeout` at the
/// deadline and leaves nothing behind: no waiter, and no grant later.
pub async fn acquire_deadline_times_out_and_leaves_nothing(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("held");
    let (holder, waiter) = (h.client().await, h.client().await);
    let guard = take(h, &holder.locks, &key, &options(h, "holder")).await;
    let wait = h.ttl() / 2;
    let started = Instant::now();
    let attempt = within(
        h,
        "acquire with deadline",
        wait + GRACE,
        waiter.locks.acquire(&key, &options(h, "waiter"), Some(started + wait)),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(matches!(attempt, Err(LockError::Timeout { .. })), "[{}] expected Timeout, got {attempt:?}", h.name());
    assert!(elapsed >= wait, "[{}] Timeout after {elapsed:?}, before the {wait:?} deadline", h.name());
    assert_eq!(h.leftover(ns.prefix()).await, 1, "[{}] the timed-out waiter left state behind", h.name());
    release(h, guard).await;
    assert_eq!(
        ok(h, "inspect", holder.locks.inspect(&key).await),
        None,
        "[{}] a timed-out waiter got the lock",
        h.name()
    );
    assert_clean(h, ns.prefix(), "after timeout").await;
}

/// Case 5a: An acquire dropped while waiting, 20 times at varied moments, leaves
/// no ghost holder or waiter.
pub async fn cancelled_acquire_leaves_no_ghost(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("contended");
    let (holder, waiter) = (h.client().await, h.client().await);
    let guard = take(h, &holder.locks, &key, &options(h, "holder")).await;
    for attempt in 0..20u64 {
        let patience = Duration::from_millis(attempt * 7 % 40);
        let waited = timeout(patience, waiter.locks.acquire(&key, &options(h, "cancelled"), None)).await;
        assert!(waited.is_err(), "[{}] attempt {attempt}: a held key was granted: {waited:?}", h.name());
    }
    let_abandoned_requests_land().await;
    await_leftover(h, ns.prefix(), 1, "cancelled waiters cleaned up").await;
    release(h, guard).await;
    assert_eq!(
        ok(h, "inspect", waiter.locks.inspect(&key).await),
        None,
        "[{}] a cancelled acquire holds the lock",
        h.name()
    );
    let third = h.client().await;
    let free = take(h, &third.locks, &key, &options(h, "third")).await;
    release(h, free).await;
    assert_clean(h, ns.prefix(), "after cancelled acquires").await;
}

/// Case 5b: An acquire dropped just as the holder releases (the grant may already
/// be on its way) leaves no ghost holder either, 20 times.
pub async fn cancel_racing_release_leaves_no_ghost(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("race");
    let (holder, waiter, third) = (h.client().await, h.client().await, h.client().await);
    for attempt in 0..20u64 {
        let guard = take(h, &holder.locks, &key, &options(h, "holder")).await;
        let release_after = Duration::from_millis(attempt % 5 * 3);
        let give_up_after = Duration::from_millis(attempt * 2 % 17);
        let releasing = async {
            sleep(release_after).await;
            release(h, guard).await;
        };
        let racer_options = options(h, "racer");
        let waiting = timeout(give_up_after, waiter.locks.acquire(&key, &racer_options, None));
        let ((), waited) = tokio::join!(releasing, waiting);
        if let Ok(granted) = waited {
            release(h, ok(h, "racing acquire", granted)).await;
        }
        let_abandoned_requests_land().await;
        await_leftover(h, ns.prefix(), 0, &format!("attempt {attempt}: no ghost after the race")).await;
        let free = take(h, &third.locks, &key, &options(h, "third")).await;
        release(h, free).await;
    }
    assert_clean(h, ns.prefix(), "after racing cancels").await;
}

/// Case 6: Releasing wakes a waiting client at once: it holds the lock well
/// before any TTL could have run out.
pub async fn release_wakes_waiter(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("handoff");
    let (holder, waiter) = (h.client().await, h.client().await);
    let guard = take(h, &holder.locks, &key, &options(h, "holder")).await;
    let waiting = {
        let (locks, key, opts) = (waiter.locks.clone(), key.clone(), options(h, "waiter"));
        tokio::spawn(async move { locks.acquire(&key, &opts, Some(Instant::now() + STEP)).await })
    };
    await_waiters(h, &waiter.locks, ns.prefix(), 2).await;
    let released_at = Instant::now();
    release(h, guard).await;
    let granted = within(h, "waiter woken by release", h.ttl(), waiting).await;
    let granted = ok(h, "waiter's acquire", granted.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    let handoff = released_at.elapsed();
    assert!(handoff < h.ttl(), "[{}] hand-off took {handoff:?}: woken by expiry, not by the release", h.name());
    release(h, granted).await;
    assert_clean(h, ns.prefix(), "after hand-off").await;
}

/// Case 18: Backends that declare FIFO grant waiters in the order they asked;
/// others still serve every waiter.
pub async fn waiters_served_in_order(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    const WAITERS: usize = 3;
    let ns = Namespace::new();
    let key = ns.key("queue");
    let holder = h.client().await;
    let fifo = holder.locks.capabilities().fifo;
    let guard = take(h, &holder.locks, &key, &options(h, "holder")).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = JoinSet::new();
    for index in 0..WAITERS {
        let client = h.client().await;
        let (locks, key, opts, order) = (client.locks.clone(), key.clone(), options(h, "waiter"), Arc::clone(&order));
        waiters.spawn(async move {
            let guard = locks.acquire(&key, &opts, Some(Instant::now() + STEP)).await;
            if let Ok(guard) = &guard {
                order.lock().unwrap_or_else(|p| p.into_inner()).push((index, guard.token()));
            }
            (client, guard.map(|g| g.release()))
        });
        await_waiters(h, &holder.locks, ns.prefix(), index + 2).await;
    }
    release(h, guard).await;
    let mut results = Vec::new();
    while let Some(joined) = within(h, "waiters served", STEP, waiters.join_next()).await {
        let (client, result) = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        ok(h, "waiter released", ok(h, "waiter acquired", result).await);
        results.push(client);
    }
    let order = order.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(order.len(), WAITERS, "[{}] not every waiter was served: {order:?}", h.name());
    if fifo {
        let indices: Vec<usize> = order.iter().map(|(index, _)| *index).collect();
        assert_eq!(indices, (0..WAITERS).collect::<Vec<_>>(), "[{}] declares FIFO but served {order:?}", h.name());
    }
    assert_clean(h, ns.prefix(), "after the queue drained").await;
}

/// Case 20: A waiter that gives up while another waits behind it lets no one
/// in: the one behind is granted by the holder's release, not by the gap.
/// (A queue recipe that took "the contender before me is gone" for "my
/// turn" would grant it while the holder still holds.)
pub async fn waiter_giving_up_ahead_lets_no_one_in(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("gap");
    let (holder, ahead, behind) = (h.client().await, h.client().await, h.client().await);
    let fifo = holder.locks.capabilities().fifo;
    let guard = take(h, &holder.locks, &key, &options(h, "holder")).await;
    let waiter = |client: &crate::TestClient, owner: &str| {
        let (locks, key, opts) = (client.locks.clone(), key.clone(), options(h, owner));
        tokio::spawn(async move { locks.acquire(&key, &opts, Some(Instant::now() + STEP)).await })
    };
    let giving_up = waiter(&ahead, "ahead");
    await_waiters(h, &holder.locks, ns.prefix(), 2).await;
    let waiting = waiter(&behind, "behind");
    await_waiters(h, &holder.locks, ns.prefix(), 3).await;
    // Registered is not yet watching: give the one behind time to look at
    // who is ahead of it.
    sleep(GRACE / 10).await;
    giving_up.abort();
    assert!(giving_up.await.is_err_and(|e| e.is_cancelled()), "[{}] the waiter ahead was granted", h.name());
    let_abandoned_requests_land().await;
    if fifo {
        await_leftover(h, ns.prefix(), 2, "the waiter ahead withdrew").await;
    }
    // Time for a wrongly woken waiter to be granted.
    sleep(GRACE / 4).await;
    assert!(!waiting.is_finished(), "[{}] the waiter behind was granted while the lock was held", h.name());
    let holding = ok(h, "inspect", holder.locks.inspect(&key).await).map(|info| info.token);
    assert_eq!(holding, Some(guard.token()), "[{}] the holder no longer holds", h.name());
    release(h, guard).await;
    let granted = within(h, "waiter behind woken by release", h.ttl(), waiting).await;
    let granted = ok(h, "waiter's acquire", granted.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    release(h, granted).await;
    assert_clean(h, ns.prefix(), "after the gap closed").await;
}
