//! Leader election: a holder that publishes a value; `leader` and `observe`
//! show who leads, a proclaimed value replaces the old one, and a resigned or
//! lost leader is no longer reported.

use std::sync::Arc;

use futures_util::StreamExt;
use lock_core::{LeaderStream, LockInfo, Locks};
use tokio::time::timeout;

use super::support::{GRACE, STEP, acquire, assert_clean, ok, options, release, take, within};
use crate::{Harness, Namespace};

/// The next leader an observer reports, failing the case after `GRACE`.
async fn next_leader(h: &dyn Harness, leaders: &mut LeaderStream, step: &str) -> Option<LockInfo> {
    match timeout(GRACE, leaders.next()).await {
        Ok(Some(Ok(leader))) => leader,
        Ok(Some(Err(error))) => panic!("[{}] {step}: the observer failed: {error}", h.name()),
        Ok(None) => panic!("[{}] {step}: the observer's stream ended", h.name()),
        Err(_) => panic!("[{}] {step}: the observer saw no change within {GRACE:?}", h.name()),
    }
}

/// The value `locks` reports as `key`'s leader's.
async fn leader_value(h: &dyn Harness, locks: &Locks, key: &str) -> Option<String> {
    ok(h, "leader", locks.leader(key).await).and_then(|leader| leader.value)
}

/// Election case 1: the leader's value and token are what `leader` reports
/// and what an observer sees first; when the leader resigns the waiting
/// candidate leads, and observers see it within the grace.
pub async fn leader_is_published_and_observed(h: Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("leader");
    let (a, b, observer) = (h.client().await, h.client().await, h.client().await);
    let mut leaders = ok(h, "observe", observer.locks.observe(key.as_str()));
    assert_eq!(next_leader(h, &mut leaders, "before anyone leads").await, None, "[{}] nobody leads yet", h.name());
    let first = take(h, &a.locks, &key, &options(h, "a").value("10.0.0.1:8080")).await;
    let seen = next_leader(h, &mut leaders, "the first leader").await;
    assert_eq!(
        seen.as_ref().map(|l| (l.token, l.value.as_deref())),
        Some((first.token(), Some("10.0.0.1:8080"))),
        "[{}] the observer sees the first leader",
        h.name()
    );
    assert_eq!(leader_value(h, &observer.locks, key.as_str()).await.as_deref(), Some("10.0.0.1:8080"));
    let second_options = options(h, "b").value("10.0.0.2:8080");
    let candidate = within(h, "the candidate", STEP, acquire(h, &b.locks, &key, &second_options));
    let resign = async {
        tokio::time::sleep(GRACE / 4).await;
        release(h, first).await;
    };
    let (second, ()) = tokio::join!(candidate, resign);
    // The observer may or may not see the moment nobody led.
    let mut seen = next_leader(h, &mut leaders, "after the leader resigned").await;
    if seen.is_none() {
        seen = next_leader(h, &mut leaders, "the next leader").await;
    }
    assert_eq!(
        seen.as_ref().map(|l| (l.token, l.value.as_deref())),
        Some((second.token(), Some("10.0.0.2:8080"))),
        "[{}] the observer sees the next leader",
        h.name()
    );
    release(h, second).await;
    assert_eq!(next_leader(h, &mut leaders, "after the last resigned").await, None, "[{}] nobody leads", h.name());
    drop(leaders);
    assert_clean(h, ns.prefix(), "after the election").await;
}

/// Election case 2: a leader proclaims a new value: `leader` and observers
/// report it, with the same token; after the leader has lost its lock,
/// proclaiming fails and it is no longer reported as leader.
pub async fn proclaimed_value_replaces_the_old(h: Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("proclaimed");
    let (leader_client, observer) = (h.client().await, h.client().await);
    let leading = take(h, &leader_client.locks, &key, &options(h, "leader").value("v1")).await;
    let mut leaders = ok(h, "observe", observer.locks.observe(key.as_str()));
    let first = next_leader(h, &mut leaders, "the leader").await;
    assert_eq!(first.and_then(|l| l.value).as_deref(), Some("v1"));
    ok(h, "proclaim v2", leading.proclaim("v2").await);
    let changed = next_leader(h, &mut leaders, "after proclaiming").await;
    assert_eq!(
        changed.as_ref().map(|l| (l.token, l.value.as_deref())),
        Some((leading.token(), Some("v2"))),
        "[{}] the proclaimed value, same token",
        h.name()
    );
    assert_eq!(leader_value(h, &observer.locks, key.as_str()).await.as_deref(), Some("v2"));
    // The leader's lock is broken from outside: it is lost, and stays so.
    h.break_lock(&key).await;
    within(h, "the leader learns of its loss", GRACE, leading.lost()).await;
    assert!(leading.proclaim("v3").await.is_err(), "[{}] a lost leader proclaimed", h.name());
    let after = ok(h, "leader after the loss", observer.locks.leader(key.as_str()).await);
    assert!(
        after.as_ref().is_none_or(|l| l.token != leading.token()),
        "[{}] a lost leader is still reported: {after:?}",
        h.name()
    );
    let _ = leading.release().await;
    drop(leaders);
    assert_clean(h, ns.prefix(), "after the lost leader").await;
}
