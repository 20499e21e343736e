//! Consul semaphores against Consul's own: distlock's semaphore and
//! `consul lock -n N` (Go's `api.Semaphore`) share the places of one prefix
//! both ways, refuse each other's limit, and keep apart from the mutex and
//! the reader/writer lock on the same key.
#![cfg(feature = "consul")]

use std::time::Duration;

use conformance_tests::consul::{ConsulHarness, NativeLock, PREFIX};
use conformance_tests::{Harness, Namespace};
use lock_consul::native_lock_prefix;
use lock_core::{LockError, LockGuard, LockKey, LockMode, Locks};
use tokio::time::timeout;

/// Room for a release to reach a waiter through Consul.
const GRACE: Duration = Duration::from_secs(5);

fn harness() -> ConsulHarness {
    ConsulHarness::from_env()
}

async fn take(locks: &Locks, key: &LockKey, limit: u32) -> LockGuard {
    let taken = locks.semaphore(key.as_str(), limit).try_acquire().await;
    match taken {
        Ok(Some(guard)) => guard,
        other => panic!("a free place of {key} (limit {limit}) was not granted: {other:?}"),
    }
}

/// Ends what `consul lock` leaves to its TTL (the session of a process
/// that exited before its renewal goroutine destroyed it, and the
/// contender key of a refused one), then checks nothing is left under the
/// namespace: no key, and no session named for it.
async fn assert_clean(h: &ConsulHarness, ns: &Namespace) {
    h.end_sessions_named_for(ns.prefix()).await;
    await_leftover(h, ns, 0, "nothing left").await;
}

/// Waits (by counting, as no event tells) until exactly `expected` keys and
/// sessions are left under the namespace, failing with `what` after 10 s.
async fn await_leftover(h: &ConsulHarness, ns: &Namespace, expected: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = h.leftover(ns.prefix()).await;
        if left == expected {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {left} keys and sessions left, not {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_lock_n_and_distlock_share_the_places() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("shared places");
    let prefix = native_lock_prefix(PREFIX, key.as_str());
    let (first, second) = (h.client().await, h.client().await);
    let mut native = NativeLock::start(h.address(), &["-n", "2"], &prefix);
    assert!(native.holds_within(GRACE * 2).await, "consul lock -n 2 did not take a place");
    let ours = take(&first.locks, &key, 2).await;
    let holders = first.locks.holders(key.as_str()).await.unwrap_or_else(|e| panic!("holders: {e}"));
    assert_eq!(holders.len(), 2, "both places are listed: {holders:?}");
    assert!(holders.iter().all(|h| matches!(h.mode, LockMode::Semaphore { limit } if limit.get() == 2)));
    // A third waits: for consul lock's place, not past it.
    let refused = second.locks.semaphore(key.as_str(), 2).try_acquire().await;
    assert!(matches!(refused, Ok(None)), "a third got into a limit-2 semaphore beside consul lock: {refused:?}");
    let waiter = second.locks.semaphore(key.as_str(), 2).wait(Duration::from_secs(30)).acquire();
    tokio::pin!(waiter);
    let early = timeout(Duration::from_secs(1), &mut waiter).await;
    assert!(early.is_err(), "a third was granted while consul lock and distlock held both places: {early:?}");
    let (released, said) = native.finish().await;
    assert!(released, "consul lock failed: {said}");
    let third = timeout(GRACE, waiter).await;
    let third = third.unwrap_or_else(|_| panic!("consul lock's release did not wake the waiter within {GRACE:?}"));
    let third = third.unwrap_or_else(|e| panic!("the waiter was not granted: {e}"));
    assert!(third.token() > ours.token(), "the later grant's token {} is not above {}", third.token(), ours.token());
    assert!(!ours.is_lost(), "consul lock's release disturbed our place");
    assert!(ours.release().await.is_ok() && third.release().await.is_ok());
    assert_clean(&h, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_lock_n_waits_while_distlock_holds_every_place() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("full");
    let prefix = native_lock_prefix(PREFIX, key.as_str());
    let (first, second) = (h.client().await, h.client().await);
    let one = take(&first.locks, &key, 2).await;
    let two = take(&second.locks, &key, 2).await;
    // With a timeout, consul lock gives up on a full semaphore.
    let (ran, said) = NativeLock::start(h.address(), &["-n", "2", "-timeout=1s"], &prefix).exit().await;
    assert!(!ran, "consul lock -n 2 -timeout did not give up on a full semaphore");
    assert!(said.contains("timeout"), "consul lock said: {said}");
    // Without one, it waits until a place is released.
    let mut native = NativeLock::start(h.address(), &["-n", "2"], &prefix);
    assert!(!native.holds_within(Duration::from_secs(2)).await, "consul lock -n 2 got into a full semaphore");
    assert!(one.release().await.is_ok());
    assert!(native.holds_within(GRACE).await, "consul lock -n 2 did not get the released place");
    assert!(!two.is_lost(), "consul lock's admission disturbed our place");
    let holders = first.locks.holders(key.as_str()).await.unwrap_or_else(|e| panic!("holders: {e}"));
    assert_eq!(holders.len(), 2, "our place and consul lock's are listed: {holders:?}");
    let (released, said) = native.finish().await;
    assert!(released, "consul lock failed: {said}");
    assert!(two.release().await.is_ok());
    assert_clean(&h, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_must_agree_with_consul_lock_n_both_ways() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("limits");
    let prefix = native_lock_prefix(PREFIX, key.as_str());
    let client = h.client().await;
    let ours = take(&client.locks, &key, 2).await;
    let (ran, said) = NativeLock::start(h.address(), &["-n", "3"], &prefix).exit().await;
    assert!(!ran, "consul lock -n 3 ran beside a limit-2 semaphore");
    assert!(said.contains("semaphore limit conflict (lock: 2, local: 3)"), "consul lock said: {said}");
    assert!(!ours.is_lost(), "a refused consul lock disturbed our place");
    assert!(ours.release().await.is_ok());
    assert_clean(&h, &ns).await;
    let mut native = NativeLock::start(h.address(), &["-n", "3"], &prefix);
    assert!(native.holds_within(GRACE * 2).await, "consul lock -n 3 did not take a place");
    let tried = client.locks.semaphore(key.as_str(), 2).try_acquire().await;
    assert!(
        matches!(&tried, Err(LockError::Conflict { message, .. }) if message.contains("lock: 3, local: 2")),
        "{tried:?}"
    );
    let waited = client.locks.semaphore(key.as_str(), 2).wait(Duration::from_secs(5)).acquire().await;
    assert!(matches!(waited, Err(LockError::Conflict { .. })), "a waiting limit-2 acquisition: {waited:?}");
    // Nothing of ours is left beside consul lock's record, contender key and session.
    await_leftover(&h, &ns, 3, "only consul lock's record, contender key and session").await;
    let (released, said) = native.finish().await;
    assert!(released, "consul lock failed: {said}");
    assert_clean(&h, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_and_the_other_recipes_on_one_key_are_a_conflict() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("one purpose");
    let prefix = native_lock_prefix(PREFIX, key.as_str());
    let (first, second) = (h.client().await, h.client().await);
    let place = take(&first.locks, &key, 2).await;
    let mutex = second.locks.lock(key.as_str()).try_acquire().await;
    assert!(matches!(mutex, Err(LockError::Conflict { .. })), "a mutex beside a semaphore: {mutex:?}");
    let reader = second.locks.read_lock(key.as_str()).try_acquire().await;
    assert!(matches!(reader, Err(LockError::Conflict { .. })), "a reader beside a semaphore: {reader:?}");
    let (ran, said) = NativeLock::start(h.address(), &[], &prefix).exit().await;
    assert!(!ran && said.contains("Existing key does not match lock use"), "consul lock said: {said}");
    assert!(!place.is_lost(), "the refused ones disturbed the place");
    assert!(place.release().await.is_ok());
    assert_clean(&h, &ns).await;
    // And the reverse: a semaphore beside a mutex or readers.
    let mutex = first.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let mutex = mutex.unwrap_or_else(|| panic!("the mutex could not take the free key"));
    let refused = second.locks.semaphore(key.as_str(), 2).wait(Duration::from_secs(5)).acquire().await;
    assert!(matches!(refused, Err(LockError::Conflict { .. })), "a semaphore beside a mutex: {refused:?}");
    assert!(mutex.release().await.is_ok());
    let reader = first.locks.read_lock(key.as_str()).try_acquire().await.ok().flatten();
    let reader = reader.unwrap_or_else(|| panic!("the reader could not take the free key"));
    let refused = second.locks.semaphore(key.as_str(), 2).try_acquire().await;
    assert!(matches!(refused, Err(LockError::Conflict { .. })), "a semaphore beside readers: {refused:?}");
    assert!(reader.release().await.is_ok());
    assert_clean(&h, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_one_client_take_several_places_each_on_its_own_session() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("one client");
    let client = h.client().await;
    let one = take(&client.locks, &key, 2).await;
    let two = take(&client.locks, &key, 2).await;
    assert_ne!(one.token(), two.token(), "two places share a token");
    let full = client.locks.semaphore(key.as_str(), 2).try_acquire().await;
    assert!(matches!(full, Ok(None)), "a third place of a limit-2 semaphore: {full:?}");
    let kv_prefix = lock_consul::native_prefix(PREFIX, ns.prefix());
    assert_eq!(h.sessions_named_for(&kv_prefix).await.len(), 2, "one session per place");
    // A place whose session is destroyed from outside is lost, not the other.
    let sessions = h.sessions_named_for(&kv_prefix).await;
    h.destroy_session(&sessions[0]).await;
    let lost = timeout(GRACE, async {
        tokio::select! {
            _ = one.lost() => 1,
            _ = two.lost() => 2,
        }
    })
    .await;
    let lost = lost.unwrap_or_else(|_| panic!("a place whose session was destroyed was not reported lost"));
    let (gone, kept) = if lost == 1 { (one, two) } else { (two, one) };
    assert!(!kept.is_lost(), "the other place was reported lost too");
    assert!(gone.release().await.is_err(), "releasing a lost place is an error");
    let again = client.locks.semaphore(key.as_str(), 2).wait(Duration::from_secs(10)).acquire().await;
    let again = again.unwrap_or_else(|e| panic!("the freed place was not granted again: {e}"));
    assert!(again.token() > kept.token(), "the new place's token is not above the older ones'");
    assert!(again.release().await.is_ok() && kept.release().await.is_ok());
    assert_clean(&h, &ns).await;
}
