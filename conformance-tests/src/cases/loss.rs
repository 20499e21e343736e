//! Loss: broken from outside, a waiter's own session ending, a holder cut
//! off from the service.

use std::time::Duration;

use lock_core::{LockError, LostReason};
use tokio::time::{Instant, timeout};

use super::support::{GRACE, STEP, acquire, assert_clean, await_waiters, ok, options, release, take, within};
use crate::{Harness, Namespace};

/// Case 11: A lock broken from outside: `lost()` completes within the TTL, then
/// `renew()` and `release()` return `Lost`, and another client can take it.
pub async fn lock_broken_from_outside_is_reported_lost(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("broken");
    let (holder, other) = (h.client().await, h.client().await);
    let guard = take(h, &holder.locks, &key, &options(h, "holder")).await;
    h.break_lock(&key).await;
    within(h, "lost() after the lock was broken", h.ttl() + GRACE, guard.lost()).await;
    assert!(guard.is_lost());
    let renewed = guard.renew().await;
    assert!(matches!(renewed, Err(LockError::Lost { .. })), "[{}] renew of a broken lock: {renewed:?}", h.name());
    let next = take(h, &other.locks, &key, &options(h, "other")).await;
    let released = guard.release().await;
    assert!(matches!(released, Err(LockError::Lost { .. })), "[{}] release of a broken lock: {released:?}", h.name());
    let info = ok(h, "inspect", other.locks.inspect(&key).await);
    assert_eq!(info.map(|i| i.token), Some(next.token()), "[{}] the stale release freed the new holder", h.name());
    release(h, next).await;
    assert_clean(h, ns.prefix(), "after broken lock").await;
}

/// Not a suite case: for backends that watch each held key (etcd,
/// ZooKeeper, Consul), a lock broken from outside ([`Harness::break_lock`])
/// is reported lost, as `Revoked`, within `bound`, far sooner than case 11's
/// TTL. Their backend-specific tests call it with their own bound.
pub async fn broken_lock_reported_within(h: &dyn Harness, bound: Duration) {
    let key = Namespace::new().key("deleted");
    let client = h.client().await;
    let guard = client.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("[{}] could not take a free key", h.name()));
    h.break_lock(&key).await;
    let reason = timeout(bound, guard.lost()).await;
    assert_eq!(
        reason.ok(),
        Some(LostReason::Revoked),
        "[{}] lost() did not report the deletion within {bound:?}",
        h.name()
    );
}

/// Case 12: A waiter whose own lease or session ends while it waits fails
/// promptly with `Lost`, not when the holder lets go, and never with a grant.
pub async fn waiter_with_ended_session_fails_with_lost(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("waiting");
    let (holder, waiter) = (h.client().await, h.client().await);
    let guard = take(h, &holder.locks, &key, &options(h, "holder")).await;
    let waiting = {
        let (locks, key, opts) = (waiter.locks.clone(), key.clone(), options(h, "waiter"));
        tokio::spawn(async move { locks.acquire(&key, &opts, None).await })
    };
    await_waiters(h, &waiter.locks, ns.prefix(), 2).await;
    waiter.control.end_session().await;
    let outcome = within(h, "waiter fails after its session ended", h.ttl() + GRACE, waiting).await;
    let outcome = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(matches!(outcome, Err(LockError::Lost { .. })), "[{}] waiter with an ended session: {outcome:?}", h.name());
    assert!(!guard.is_lost(), "[{}] ending the waiter's session broke the holder", h.name());
    await_leftover_one(h, ns.prefix()).await;
    release(h, guard).await;
    // The client recovers with a new session for new locks.
    let again = acquire(h, &waiter.locks, &key, &options(h, "waiter")).await;
    release(h, again).await;
    assert_clean(h, ns.prefix(), "after ended session").await;
}

async fn await_leftover_one(h: &dyn Harness, prefix: &str) {
    super::support::await_leftover(h, prefix, 1, "only the holder remains").await;
}

/// Case 13: A holder cut off from the service reports `lost()` within the TTL and
/// before anyone else is granted the lock; another client acquires once the
/// service frees it.
pub async fn cut_off_holder_reports_loss_before_regrant(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("partitioned");
    let (holder, waiter) = (h.client().await, h.client().await);
    let caps = holder.locks.capabilities();
    if !caps.expires {
        tracing::info!(backend = h.name(), "no TTL: a partitioned holder keeps its lock; case not applicable");
        return;
    }
    let guard = take(h, &holder.locks, &key, &options(h, "holder")).await;
    let waiting = {
        let (locks, key, opts) = (waiter.locks.clone(), key.clone(), options(h, "waiter"));
        tokio::spawn(async move {
            let guard = locks.acquire(&key, &opts, Some(Instant::now() + STEP)).await;
            (Instant::now(), guard)
        })
    };
    await_waiters(h, &waiter.locks, ns.prefix(), 2).await;
    holder.control.cut_off().await;
    let cut_at = Instant::now();
    within(h, "lost() after the holder was cut off", h.ttl() + GRACE, guard.lost()).await;
    let lost_at = Instant::now();
    let bound = h.ttl() + caps.expiry_slack + STEP;
    let (granted_at, next) = within(h, "waiter acquires", bound, waiting)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let next = ok(h, "waiter's acquire", next);
    assert!(lost_at <= granted_at, "[{}] the waiter held the lock before the cut-off holder was told", h.name());
    assert!(lost_at - cut_at <= h.ttl(), "[{}] loss reported {:?} after the cut", h.name(), lost_at - cut_at);
    holder.control.restore().await;
    let released = guard.release().await;
    assert!(matches!(released, Err(LockError::Lost { .. })), "[{}] release after partition: {released:?}", h.name());
    let info = ok(h, "inspect", waiter.locks.inspect(&key).await);
    assert_eq!(info.map(|i| i.token), Some(next.token()), "[{}] the partitioned holder freed the new holder", h.name());
    release(h, next).await;
    assert_clean(h, ns.prefix(), "after partition").await;
}
