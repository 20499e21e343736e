//! Semaphores on ZooKeeper beside the real Apache Curator (Debian's,
//! compiled at run time): Curator's `InterProcessSemaphoreV2` and distlock's
//! semaphore share one set of places, both ways; and only distlock's lease
//! nodes tell their limit.
#![cfg(feature = "zk")]

use std::time::Duration;

use conformance_tests::zk::{BASE, CuratorProgram, JVM_LIMIT, ZkHarness, millis_now};
use conformance_tests::{Harness, Namespace};
use lock_core::{LockError, LockGuard, LockKey, LockMode, Locks};
use tokio::time::{Instant, sleep};
use zookeeper_client::{Acls, CreateMode};

/// How long a distlock waiter waits at most.
const WAIT: Duration = Duration::from_secs(30);

/// A Curator `InterProcessSemaphoreV2` of `limit` asking for a lease of
/// `key`, waiting at most `wait` (zero: one look).
async fn curator(h: &ZkHarness, key: &LockKey, limit: u32, wait: Duration) -> CuratorProgram {
    let path = lock_zk::lock_path(BASE, key);
    let args = [h.upstream(), path.as_str(), &limit.to_string(), &wait.as_millis().to_string()];
    CuratorProgram::start("CuratorSemaphore", &args, format!("Curator's semaphore of {limit} on {key}")).await
}

/// Takes a place of `key`'s semaphore of `limit` at once.
async fn take(locks: &Locks, key: &LockKey, limit: u32) -> LockGuard {
    match locks.semaphore(key.as_str(), limit).try_acquire().await {
        Ok(Some(guard)) => guard,
        other => panic!("distlock could not take a place of {key}: {other:?}"),
    }
}

/// Waits for a place of `key`'s semaphore of `limit` in a task of its own;
/// yields the guard and when it was granted.
fn wait_for(locks: &Locks, key: &LockKey, limit: u32) -> tokio::task::JoinHandle<(LockGuard, u128)> {
    let (locks, key) = (locks.clone(), key.clone());
    tokio::spawn(async move {
        let guard = locks.semaphore(key.as_str(), limit).wait(WAIT).acquire().await;
        let guard = guard.unwrap_or_else(|e| panic!("distlock's wait for a place of {key}: {e}"));
        (guard, millis_now())
    })
}

async fn granted(waiting: tokio::task::JoinHandle<(LockGuard, u128)>) -> (LockGuard, u128) {
    waiting.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Waits until `key`'s semaphore has `expected` lease nodes. Polls: no event
/// tells that another process's request has reached ZooKeeper.
async fn await_leases(h: &ZkHarness, key: &LockKey, expected: usize) {
    let deadline = Instant::now() + JVM_LIMIT;
    loop {
        let found = h.leases(key).await;
        if found.len() == expected {
            return;
        }
        assert!(Instant::now() < deadline, "expected {expected} lease nodes of {key}, found {found:?}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until nothing is left under the namespace, then removes the
/// directories Curator made persistent.
async fn await_clean(h: &ZkHarness, ns: &Namespace, key: &LockKey) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.leftover(ns.prefix()).await != 0 {
        assert!(Instant::now() < deadline, "nodes left under {}", ns.prefix());
        sleep(Duration::from_millis(20)).await;
    }
    h.remove_directory(key).await;
}

async fn release(guard: LockGuard) {
    guard.release().await.unwrap_or_else(|e| panic!("release: {e}"));
}

/// A Curator lease and a distlock place fill a semaphore of two; a third
/// contender waits on either side, and gets the place the other side frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_and_distlock_share_a_semaphore() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("shared places");
    let (client, other) = (h.client().await, h.client().await);
    let mut first = curator(&h, &key, 2, JVM_LIMIT).await;
    first.reported("held").await;
    let ours = take(&client.locks, &key, 2).await;
    let holders = client.locks.holders(key.as_str()).await.unwrap_or_else(|e| panic!("holders: {e}"));
    assert_eq!(holders.len(), 2, "Curator's lease and ours both hold: {holders:?}");
    let two = LockMode::semaphore(2);
    assert!(holders.iter().all(|holder| Some(holder.mode) == two), "{holders:?}");
    // Full, for distlock and for Curator.
    let refused = other.locks.semaphore(key.as_str(), 2).try_acquire().await;
    assert!(matches!(refused, Ok(None)), "a third distlock place: {refused:?}");
    let mut once = curator(&h, &key, 2, Duration::ZERO).await;
    assert_eq!(once.line().await, "timeout", "a third Curator lease");
    once.exited_with(3).await;

    // A distlock waiter gets the place Curator frees.
    let waiting = wait_for(&other.locks, &key, 2);
    await_leases(&h, &key, 3).await;
    let released_at = first.release().await;
    let (waited, granted_at) = granted(waiting).await;
    assert!(
        granted_at >= released_at,
        "distlock got a place at {granted_at}, before Curator freed one at {released_at}"
    );
    let highest = holders.iter().map(|holder| holder.token).max();
    assert!(Some(waited.token()) > highest, "token {} after {highest:?}", waited.token());

    // A Curator waiter gets the place distlock frees.
    let mut third = curator(&h, &key, 2, JVM_LIMIT).await;
    await_leases(&h, &key, 3).await;
    let released_at = millis_now();
    release(ours).await;
    let held_at = third.reported("held").await;
    assert!(held_at >= released_at, "Curator got a place at {held_at}, before distlock freed one at {released_at}");
    third.release().await;
    release(waited).await;
    await_clean(&h, &ns, &key).await;
}

/// Curator's lease nodes carry no limit, so a distlock contender with
/// another limit than Curator's is not refused; distlock's own lease nodes
/// carry theirs, so a distlock contender disagreeing with one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_distlock_leases_tell_their_limit() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("limits");
    let (client, other) = (h.client().await, h.client().await);
    let mut java = curator(&h, &key, 2, JVM_LIMIT).await;
    java.reported("held").await;
    let three = take(&client.locks, &key, 3).await;
    // The taker's mutex node goes in the background: a try that finds it
    // still there counts two leases, a semaphore of 2 full, and reports it
    // so before it reads their limits.
    await_nodes(&h, &ns, 2, WAIT, "the two lease nodes alone").await;
    let conflict = other.locks.semaphore(key.as_str(), 2).try_acquire().await;
    assert!(matches!(conflict, Err(LockError::Conflict { .. })), "limit 2 beside distlock's 3: {conflict:?}");
    assert_eq!(h.leases(&key).await.len(), 2, "the refused contender left its lease node");
    java.release().await;
    release(three).await;
    await_clean(&h, &ns, &key).await;
}

/// Waits until the namespace holds `expected` contender nodes (lease and
/// mutex nodes alike), failing with `what` after `limit`.
async fn await_nodes(h: &ZkHarness, ns: &Namespace, expected: usize, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let found = h.leftover(ns.prefix()).await;
        if found == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: expected {expected} nodes within {limit:?}, found {found}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Replaces the directory of `key`'s semaphore mutex nodes (`{dir}/locks`)
/// by a fresh container that never had a child. ZooKeeper reaps a container
/// emptied of its children (every 100 ms on the test service), so the
/// holder's directory may be gone by the time an attempt creates its mutex
/// node there: that create would be refused, reach nothing, and a test of
/// its lost reply would prove nothing. A container that never had a child
/// is not reaped.
async fn fresh_mutex_directory(h: &ZkHarness, key: &LockKey) {
    let admin = h.admin().await;
    let dir = format!("{}/locks", lock_zk::lock_path(BASE, key));
    // Gone already if the reaper came first.
    let _ = admin.delete(&dir, None).await;
    let options = CreateMode::Container.with_acls(Acls::anyone_all());
    if let Err(error) = admin.create(&dir, &[], &options).await {
        panic!("could not make a fresh {dir}: {error}");
    }
}

/// An attempt whose mutex node's create goes unanswered, and a waiting
/// attempt (its mutex node and lease node in place) cancelled while no
/// reply gets through, leave neither node behind once the client is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_attempts_lost_with_their_replies_leave_nothing() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("lost replies");
    let (holder, client) = (h.client().await, h.client().await);
    let held = take(&holder.locks, &key, 1).await;
    await_nodes(&h, &ns, 1, WAIT, "the holder's lease").await;

    fresh_mutex_directory(&h, &key).await;
    client.control.lose_replies().await;
    let attempt = client.locks.semaphore(key.as_str(), 1).try_acquire().await;
    assert!(attempt.is_err(), "an attempt whose replies were held back succeeded: {attempt:?}");
    assert_eq!(h.leftover(ns.prefix()).await, 2, "the create did not reach ZooKeeper, so this proves nothing");
    client.control.restore().await;
    await_nodes(&h, &ns, 1, WAIT, "after the unanswered create").await;

    let (locks, waiting_key) = (client.locks.clone(), key.clone());
    let waiting = tokio::spawn(async move { locks.semaphore(waiting_key.as_str(), 1).acquire().await });
    await_leases(&h, &key, 2).await;
    await_nodes(&h, &ns, 3, WAIT, "the waiter's mutex and lease nodes").await;
    client.control.drop_replies().await;
    waiting.abort();
    let _ = waiting.await;
    client.control.restore().await;
    await_nodes(&h, &ns, 1, WAIT, "after the cancelled wait").await;

    // The place and the client are as good as new.
    release(held).await;
    let again = take(&client.locks, &key, 1).await;
    release(again).await;
    await_clean(&h, &ns, &key).await;
}

/// A try that finds the counting mutex taken by a contender that is only
/// counting (here a node of the test's own standing in for it) waits for
/// it and takes the free place, rather than reporting a semaphore with free
/// places busy. (Seen in CI: a try met a granted contender's mutex node
/// still being deleted in the background and was refused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_waits_for_a_mutex_held_only_to_count() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("counting");
    let (client, _) = h.client_with(|config| config.request_timeout(Duration::from_secs(20))).await;
    let admin = h.admin().await;
    let dir = lock_zk::lock_path(BASE, &key);
    let locks_dir = format!("{dir}/locks");
    // The directories are containers, which ZooKeeper reaps once emptied:
    // make them again until our node is in.
    let container = CreateMode::Container.with_acls(Acls::anyone_all());
    let ephemeral = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let counting = format!("{locks_dir}/_c_{}-lock-", uuid::Uuid::new_v4());
    let mut made = None;
    for _ in 0..20 {
        let _ = admin.mkdir(&locks_dir, &container).await;
        match admin.create(&counting, b"", &ephemeral).await {
            Ok((_, sequence)) => {
                made = Some(sequence);
                break;
            }
            Err(zookeeper_client::Error::NoNode) => {}
            Err(error) => panic!("cannot make {counting}: {error}"),
        }
    }
    let sequence = made.unwrap_or_else(|| panic!("{dir} was reaped under every try to make {counting}"));
    let (locks, tried_key) = (client.locks.clone(), key.clone());
    let trying = tokio::spawn(async move { locks.semaphore(tried_key.as_str(), 2).try_acquire().await });
    // Only once the try's mutex node is queued behind ours (or the try has
    // ended, which fails below) is ours deleted.
    while !trying.is_finished() && admin.list_children(&locks_dir).await.unwrap_or_default().len() < 2 {
        sleep(Duration::from_millis(10)).await;
    }
    let counted = format!("{counting}{sequence}");
    admin.delete(&counted, None).await.unwrap_or_else(|e| panic!("cannot delete {counted}: {e}"));
    let tried = trying.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let guard = match tried {
        Ok(Some(guard)) => guard,
        other => panic!("a try behind a contender that was only counting, with both places free: {other:?}"),
    };
    release(guard).await;
    await_clean(&h, &ns, &key).await;
}

/// A try on a full semaphore reports it full at once, even while a waiter
/// holds the counting mutex for as long as it waits for a place (as
/// Curator's waiters do), and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_does_not_wait_behind_a_waiter_for_a_place() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("full");
    let (holder, waiter) = (h.client().await, h.client().await);
    // A request timeout far beyond the test's patience: a try that waits
    // for the waiter's mutex would take all of it.
    let (tries, _) = h.client_with(|config| config.request_timeout(Duration::from_secs(120))).await;
    let held = take(&holder.locks, &key, 1).await;
    // The waiter outwaits every try, so it is still waiting, holding the
    // mutex, when a try that waits for the mutex gives up.
    let waiting = {
        let (locks, key) = (waiter.locks.clone(), key.clone());
        tokio::spawn(async move { locks.semaphore(key.as_str(), 1).wait(4 * WAIT).acquire().await })
    };
    await_nodes(&h, &ns, 3, WAIT, "the holder's lease, the waiter's mutex and lease nodes").await;
    for attempt in 1..=3 {
        let tried = tokio::time::timeout(WAIT, tries.locks.semaphore(key.as_str(), 1).try_acquire()).await;
        match tried {
            Ok(Ok(None)) => {}
            Ok(other) => panic!("try {attempt} on a full semaphore: {other:?}"),
            Err(_) => panic!("try {attempt} on a full semaphore still waited after {WAIT:?}, behind the waiter"),
        }
        await_nodes(&h, &ns, 3, WAIT, "after a try on a full semaphore").await;
    }
    release(held).await;
    let waited = waiting.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    release(waited.unwrap_or_else(|e| panic!("the waiter, once the place was given back: {e}"))).await;
    await_clean(&h, &ns, &key).await;
}
