//! etcd under faults the conformance suite does not inject on every backend:
//! its history compacted while a client's watch stream was down, and a
//! release that happens while a waiter's (or a semaphore waiter's, or a
//! leader observer's) stream is down.
//!
//! The tests in this file compact the shared etcd's history, which would
//! break watches of other tests running at the same time (etcdctl's own lock
//! among them), so they live in a binary of their own and run one at a time.
#![cfg(feature = "etcd")]

use std::time::Duration;

use conformance_tests::etcd::EtcdHarness;
use conformance_tests::{Harness, Namespace};
use futures_util::StreamExt;
use lock_core::{LockError, LostReason};
use tokio::sync::Mutex;
use tokio::time::{Instant, sleep, timeout};

/// One compaction at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Lead 3 of the safety issue: after its watch stream was reset and etcd's
/// history compacted past the held key's revision, the client re-created its
/// loss watch from that revision, was refused as compacted, and tried again
/// forever; the key's later deletion was never reported while the lease's
/// keep-alive went on proving the lock held: two holders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_after_compaction_and_reconnect_is_reported() {
    let _serial = SERIAL.lock().await;
    let h = EtcdHarness::from_env();
    let key = Namespace::new().key("compacted");
    let client = h.client().await;
    let guard = client.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("could not take a free key"));
    // The stream goes down, the history it needs is compacted, and it comes
    // back: the loss watch must be made again past the compaction.
    client.control.cut_off().await;
    h.compact().await;
    client.control.reset_connections().await;
    client.control.restore().await;
    sleep(Duration::from_millis(500)).await;
    assert!(!guard.is_lost(), "the lock was reported lost, though its key is still there");
    h.break_lock(&key).await;
    let deleted_at = Instant::now();
    let reason = timeout(Duration::from_secs(1), guard.lost()).await;
    assert_eq!(
        reason.ok(),
        Some(LostReason::Revoked),
        "the held key's deletion after a compaction was not reported within 1 s (lost: {}, {:?} since)",
        guard.is_lost(),
        deleted_at.elapsed()
    );
}

/// Lead 4 of the safety issue: a waiter's watch on its predecessor, made
/// "from now", was made again from a new "now" after a reconnect, so a
/// release while the stream was down was never seen: the waiter, and every
/// waiter behind it, waited forever (without a deadline) although the lock
/// was free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_sees_a_release_made_while_its_stream_was_down() {
    let _serial = SERIAL.lock().await;
    let h = EtcdHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("released while down");
    let (holder, waiter) = (h.client().await, h.client().await);
    let guard = holder.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("could not take a free key"));
    let waiting = {
        let (locks, key) = (waiter.locks.clone(), key.clone());
        // No deadline: a waiter that misses the release must hang, and the
        // test's own bound below catches it.
        tokio::spawn(async move { locks.lock(key.as_str()).acquire().await })
    };
    let queued = async {
        while h.leftover(ns.prefix()).await < 2 {
            sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(Duration::from_secs(10), queued).await.unwrap_or_else(|_| panic!("the waiter never queued"));
    // Let its watch on the holder's key be made (no event tells).
    sleep(Duration::from_millis(500)).await;
    waiter.control.cut_off().await;
    guard.release().await.unwrap_or_else(|e| panic!("release: {e}"));
    sleep(Duration::from_millis(200)).await;
    waiter.control.reset_connections().await;
    waiter.control.restore().await;
    let granted = timeout(Duration::from_secs(5), waiting).await;
    let granted =
        granted.unwrap_or_else(|_| panic!("the waiter was not granted a free lock within 5 s of reconnecting"));
    let granted = granted.unwrap_or_else(|e| panic!("the waiting task failed: {e}"));
    let guard = granted.unwrap_or_else(|e| panic!("the waiter's acquire failed: {e}"));
    // The first request after the reset may meet the dead connection; a
    // release that is not answered is finished in the background.
    let released = guard.release().await;
    assert!(matches!(released, Ok(()) | Err(LockError::Unavailable { .. })), "release: {released:?}");
    let freed = async {
        while h.leftover(ns.prefix()).await > 0 {
            sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(Duration::from_secs(10), freed).await.unwrap_or_else(|_| panic!("the released key was left behind"));
}

/// A semaphore waiter watches every deletion among its places: a place
/// freed while its watch stream was down, with etcd's history compacted
/// past the watch's revision meanwhile, is still its turn once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_waiter_sees_a_place_freed_while_its_stream_was_down() {
    let _serial = SERIAL.lock().await;
    let h = EtcdHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("place freed while down");
    let (holders, waiter) = (h.client().await, h.client().await);
    let mut places = Vec::new();
    for _ in 0..2 {
        let place = holders.locks.semaphore(key.as_str(), 2).try_acquire().await.ok().flatten();
        places.push(place.unwrap_or_else(|| panic!("could not take a place of a free semaphore")));
    }
    let waiting = {
        let (locks, key) = (waiter.locks.clone(), key.clone());
        tokio::spawn(async move { locks.semaphore(key.as_str(), 2).acquire().await })
    };
    let queued = async {
        while h.leftover(ns.prefix()).await < 3 {
            sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(Duration::from_secs(10), queued).await.unwrap_or_else(|_| panic!("the waiter never queued"));
    // Let its watch of the places be made (no event tells).
    sleep(Duration::from_millis(500)).await;
    waiter.control.cut_off().await;
    let freed = places.pop().unwrap_or_else(|| panic!("two places"));
    freed.release().await.unwrap_or_else(|e| panic!("release: {e}"));
    h.compact().await;
    waiter.control.reset_connections().await;
    waiter.control.restore().await;
    let granted = timeout(Duration::from_secs(5), waiting).await;
    let granted = granted.unwrap_or_else(|_| panic!("the waiter was not granted a freed place within 5 s"));
    let granted = granted.unwrap_or_else(|e| panic!("the waiting task failed: {e}"));
    let place = granted.unwrap_or_else(|e| panic!("the waiter's acquire failed: {e}"));
    let released = place.release().await;
    assert!(matches!(released, Ok(()) | Err(LockError::Unavailable { .. })), "release: {released:?}");
    for place in places {
        place.release().await.unwrap_or_else(|e| panic!("release: {e}"));
    }
    let freed = async {
        while h.leftover(ns.prefix()).await > 0 {
            sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(Duration::from_secs(10), freed).await.unwrap_or_else(|_| panic!("a place was left behind"));
}

/// The next leader an observer reports within 5 s, skipping errors (reads
/// that met the broken connection).
async fn next_leader(leaders: &mut lock_core::LeaderStream, step: &str) -> Option<lock_core::LockInfo> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, leaders.next()).await {
            Ok(Some(Ok(leader))) => return leader,
            Ok(Some(Err(_))) => {}
            Ok(None) => panic!("{step}: the observer's stream ended"),
            Err(_) => panic!("{step}: the observer reported nothing within 5 s"),
        }
    }
}

/// An observer's watch stream goes down, the leader proclaims a new value
/// and etcd's history is compacted past the observer's watch: once back,
/// the observer reads the leader again (the new value), and goes on
/// watching from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_survives_compaction_and_reconnect() {
    let _serial = SERIAL.lock().await;
    let h = EtcdHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("observed across compaction");
    let (leader, observer) = (h.client().await, h.client().await);
    let leading = leader.locks.lock(key.as_str()).value("v1").try_acquire().await.ok().flatten();
    let leading = leading.unwrap_or_else(|| panic!("could not lead a free election"));
    let mut leaders = observer.locks.observe(key.as_str()).unwrap_or_else(|e| panic!("observe: {e}"));
    let seen = next_leader(&mut leaders, "the leader").await;
    assert_eq!(seen.and_then(|l| l.value).as_deref(), Some("v1"));
    observer.control.cut_off().await;
    leading.proclaim("v2").await.unwrap_or_else(|e| panic!("proclaim: {e}"));
    h.compact().await;
    observer.control.reset_connections().await;
    observer.control.restore().await;
    let seen = next_leader(&mut leaders, "after the compaction").await;
    assert_eq!(
        seen.map(|l| (l.token, l.value)),
        Some((leading.token(), Some("v2".to_owned()))),
        "the value proclaimed while the observer was cut off"
    );
    leading.release().await.unwrap_or_else(|e| panic!("release: {e}"));
    assert_eq!(next_leader(&mut leaders, "after the release").await, None, "nobody leads");
}

/// The server itself paused (SIGSTOP) past the TTL, then resumed: the
/// holder, which can no longer renew, reports its loss by its own clock
/// during the pause, before anyone can be granted the lock after it; once the
/// server is back, a waiter gets the lock with a greater token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_paused_past_the_ttl_the_holder_learns_first() {
    let (etcd, endpoint) = conformance_tests::etcd::start_private_etcd("etcd-paused");
    let h = EtcdHarness::from_env();
    let config = h.config(&endpoint).connect_timeout(Duration::from_secs(1)).request_timeout(Duration::from_secs(1));
    let connect = || async {
        // etcd-client connects lazily; the private etcd may still be starting.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = match lock_etcd::EtcdLock::connect(config.clone()).await {
                Ok(lock) => {
                    let locks = lock_core::Locks::new(lock);
                    locks.inspect("probe").await.map(|_| locks)
                }
                Err(error) => Err(error),
            };
            match attempt {
                Ok(locks) => return locks,
                Err(error) if Instant::now() > deadline => panic!("the private etcd never answered: {error}"),
                Err(_) => sleep(Duration::from_millis(200)).await,
            }
        }
    };
    let (holder, waiter) = (connect().await, connect().await);
    let key = "paused server";
    let guard = holder.lock(key).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("could not take a free key"));
    let waiting = tokio::spawn(async move {
        // A waiter whose own lease expired in the pause starts again.
        loop {
            match waiter.lock(key).acquire().await {
                Ok(granted) => return (Instant::now(), granted),
                Err(_) => sleep(Duration::from_millis(100)).await,
            }
        }
    });
    sleep(Duration::from_millis(500)).await;
    etcd.pause();
    let paused_at = Instant::now();
    let lost = timeout(h.ttl() * 2, guard.lost()).await;
    let lost_at = Instant::now();
    assert!(lost.is_ok(), "the holder was not told within twice the TTL that it can no longer prove its lock");
    sleep(Duration::from_millis(500)).await;
    etcd.resume();
    let (granted_at, next) = timeout(Duration::from_secs(30), waiting)
        .await
        .unwrap_or_else(|_| panic!("no grant within 30 s of the server's resumption"))
        .unwrap_or_else(|e| panic!("the waiter failed: {e}"));
    assert!(lost_at < granted_at, "granted to the waiter before the holder learned of its loss");
    assert!(lost_at - paused_at <= h.ttl(), "loss reported {:?} into the pause", lost_at - paused_at);
    assert!(next.token() > guard.token(), "the token did not increase across the pause");
    let _ = next.release().await;
    drop(etcd);
}
