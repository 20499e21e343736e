//! Single-client behaviour: round trip, try-acquire, double release, keys,
//! input validation, unreachable endpoints.

use std::time::Duration;

use lock_core::{LockError, MAX_KEY_BYTES};
use tokio::time::Instant;

use super::support::{GRACE, acquire, assert_clean, ok, options, release, take, within};
use crate::{Harness, Namespace};

/// Case 1: Acquire and release; `inspect` shows the holder and its token while
/// held, nothing after.
pub async fn acquire_release_round_trip(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("job");
    let client = h.client().await;
    let opts = options(h, "round-trip-owner");
    assert_eq!(ok(h, "inspect free key", client.locks.inspect(&key).await), None, "[{}] fresh key", h.name());
    let guard = acquire(h, &client.locks, &key, &opts).await;
    assert_eq!(guard.key(), &key);
    assert_eq!(guard.owner(), "round-trip-owner");
    let info = ok(h, "inspect held key", client.locks.inspect(&key).await)
        .unwrap_or_else(|| panic!("[{}] inspect shows no holder while the lock is held", h.name()));
    assert_eq!(info.owner, "round-trip-owner", "[{}] inspect owner", h.name());
    assert_eq!(info.token, guard.token(), "[{}] inspect token", h.name());
    let other = h.client().await;
    let seen = ok(h, "inspect from another client", other.locks.inspect(&key).await);
    assert_eq!(seen.map(|i| i.token), Some(guard.token()), "[{}] another client's inspect", h.name());
    release(h, guard).await;
    assert_eq!(ok(h, "inspect after release", client.locks.inspect(&key).await), None, "[{}] after release", h.name());
    assert_clean(h, ns.prefix(), "after release").await;
}

/// Case 3: `try_acquire` on a held key returns `None` without waiting for the
/// holder and leaves no waiter behind.
pub async fn try_acquire_on_held_key_fails_fast(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("busy");
    let (holder, other) = (h.client().await, h.client().await);
    let guard = take(h, &holder.locks, &key, &options(h, "holder")).await;
    let started = Instant::now();
    let attempt = ok(h, "try_acquire held key", other.locks.try_acquire(&key, &options(h, "other")).await);
    assert!(attempt.is_none(), "[{}] try_acquire granted a held key", h.name());
    assert!(started.elapsed() < h.ttl(), "[{}] try_acquire waited {:?}", h.name(), started.elapsed());
    // The same client's second task is refused too, without reaching the service.
    let again = ok(h, "try_acquire from holder's client", holder.locks.try_acquire(&key, &options(h, "x")).await);
    assert!(again.is_none(), "[{}] a second task of the holding client got the key", h.name());
    assert_eq!(h.leftover(ns.prefix()).await, 1, "[{}] try_acquire left state behind", h.name());
    assert!(!guard.is_lost());
    release(h, guard).await;
    assert_clean(h, ns.prefix(), "after release").await;
}

/// Case 14: Releasing a lease twice is an error (`NotHeld`), not a panic, and so
/// is renewing a released lease.
pub async fn double_release_is_an_error(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("twice");
    let client = h.client().await;
    let backend = client.locks.backend();
    let lease = ok(h, "raw try_acquire", backend.try_acquire(&key, &options(h, "raw")).await)
        .unwrap_or_else(|| panic!("[{}] raw try_acquire of a free key returned None", h.name()));
    ok(h, "first release", backend.release(&lease).await);
    let second = backend.release(&lease).await;
    assert!(matches!(second, Err(LockError::NotHeld { .. })), "[{}] second release: {second:?}", h.name());
    let renewed = backend.renew(&lease).await;
    assert!(matches!(renewed, Err(LockError::NotHeld { .. })), "[{}] renew after release: {renewed:?}", h.name());
    assert_clean(h, ns.prefix(), "after double release").await;
}

/// Case 15: Keys that differ only in `/`, `%`, trailing or doubled separators,
/// spaces, dots or non-ASCII are independent locks; the longest valid key works.
pub async fn keys_are_independent(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let names = ["a", "a/b", "a%2Fb", "a/", "a//b", "/a", "a b", "..", "%", "锁/钥匙", "🔒", "a/.."];
    let mut keys: Vec<_> = names.iter().map(|name| ns.key(name)).collect();
    let longest = "x".repeat(MAX_KEY_BYTES - ns.prefix().len());
    keys.push(ns.key(&longest));
    let (holder, other) = (h.client().await, h.client().await);
    let mut guards = Vec::new();
    for key in &keys {
        guards.push(take(h, &holder.locks, key, &options(h, "holder")).await);
    }
    for (key, guard) in keys.iter().zip(&guards) {
        let attempt = ok(h, "try_acquire held key", other.locks.try_acquire(key, &options(h, "other")).await);
        assert!(attempt.is_none(), "[{}] {key:?} was granted twice", h.name());
        let info = ok(h, "inspect", other.locks.inspect(key).await);
        assert_eq!(info.map(|i| i.token), Some(guard.token()), "[{}] inspect {key:?}", h.name());
    }
    // Freeing `a` frees exactly `a`.
    let first = guards.remove(0);
    release(h, first).await;
    let a = take(h, &other.locks, &keys[0], &options(h, "other")).await;
    for key in &keys[1..] {
        let attempt = ok(h, "try_acquire", other.locks.try_acquire(key, &options(h, "other")).await);
        assert!(attempt.is_none(), "[{}] releasing {:?} freed {key:?}", h.name(), keys[0]);
    }
    release(h, a).await;
    for guard in guards {
        release(h, guard).await;
    }
    assert_clean(h, ns.prefix(), "after releasing every key").await;
}

/// Case 16: Invalid keys and options are rejected before any network call: the
/// client is cut off from the service, and the errors still come at once.
pub async fn invalid_input_rejected_before_network(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let client = h.client().await;
    let caps = client.locks.capabilities();
    client.control.cut_off().await;
    let too_long = format!("{}{}", ns.prefix(), "x".repeat(MAX_KEY_BYTES));
    for bad in ["", "nul\0inside", "line\nbreak", "\u{7f}", too_long.as_str()] {
        let acquired = within(h, "acquire invalid key", GRACE, client.locks.lock(bad).acquire()).await;
        assert!(matches!(acquired, Err(LockError::InvalidKey { .. })), "[{}] acquire {bad:?}: {acquired:?}", h.name());
        let tried = within(h, "try_acquire invalid key", GRACE, client.locks.lock(bad).try_acquire()).await;
        assert!(matches!(tried, Err(LockError::InvalidKey { .. })), "[{}] try_acquire {bad:?}: {tried:?}", h.name());
        let inspected = within(h, "inspect invalid key", GRACE, client.locks.inspect(bad)).await;
        assert!(matches!(inspected, Err(LockError::InvalidKey { .. })), "[{}] inspect {bad:?}", h.name());
    }
    let key = ns.key("k");
    let mut bad_ttls = vec![caps.min_ttl.saturating_sub(Duration::from_millis(1))];
    bad_ttls.extend(caps.max_ttl.checked_add(Duration::from_secs(1)));
    for ttl in bad_ttls.into_iter().filter(|ttl| !caps.ttl_in_range(*ttl)) {
        let result = within(h, "acquire with bad TTL", GRACE, client.locks.lock(key.as_str()).ttl(ttl).acquire()).await;
        assert!(matches!(result, Err(LockError::InvalidOptions { .. })), "[{}] TTL {ttl:?}: {result:?}", h.name());
    }
    let result = within(h, "acquire with bad owner", GRACE, client.locks.lock(key.as_str()).owner("").acquire()).await;
    assert!(matches!(result, Err(LockError::InvalidOptions { .. })), "[{}] empty owner: {result:?}", h.name());
    client.control.restore().await;
    assert_clean(h, ns.prefix(), "after rejected input").await;
}

/// Case 19: An endpoint nobody listens on gives `Unavailable` within the connect
/// timeout, instead of hanging.
pub async fn unreachable_endpoint_is_unavailable(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let started = Instant::now();
    let (connect_timeout, built) = h.unreachable_client().await;
    let bound = connect_timeout + GRACE;
    let result = match built {
        Err(error) => Err(error),
        Ok(locks) => {
            let attempt =
                within(h, "try_acquire on unreachable endpoint", bound, locks.lock(ns.key("k").as_str()).try_acquire())
                    .await;
            attempt.map(|_| ())
        }
    };
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(LockError::Unavailable { .. })),
        "[{}] unreachable endpoint gave {result:?}",
        h.name()
    );
    assert!(elapsed <= bound, "[{}] Unavailable took {elapsed:?}, connect timeout {connect_timeout:?}", h.name());
}
