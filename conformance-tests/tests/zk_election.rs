//! Leader election on ZooKeeper beside the real Apache Curator (Debian's,
//! compiled at run time): a Curator `LeaderSelector` participant and a
//! distlock candidate see one leader and wait for each other, both ways.
#![cfg(feature = "zk")]

use std::time::Duration;

use conformance_tests::zk::{BASE, CuratorProgram, JVM_LIMIT, ZkHarness, millis_now};
use conformance_tests::{Harness, Namespace};
use futures_util::StreamExt;
use lock_core::{LeaderStream, LockGuard, LockInfo, LockKey, Locks};
use tokio::time::{Instant, sleep, timeout};

/// How long a distlock candidate waits at most.
const WAIT: Duration = Duration::from_secs(30);

/// A Curator `LeaderSelector` participant with `id` in `key`'s election.
async fn participant(h: &ZkHarness, key: &LockKey, id: &str) -> CuratorProgram {
    let path = lock_zk::lock_path(BASE, key);
    let args = [h.upstream(), path.as_str(), "lead", id];
    CuratorProgram::start("CuratorLeader", &args, format!("Curator participant {id} of {key}")).await
}

/// The leader's id as Curator's `getLeader()` reads it (`None`: nobody leads).
async fn curator_leader(h: &ZkHarness, key: &LockKey) -> Option<String> {
    let path = lock_zk::lock_path(BASE, key);
    let mut look = CuratorProgram::start("CuratorLeader", &[h.upstream(), &path, "leader"], "Curator's look").await;
    let line = look.line().await;
    look.exited_with(0).await;
    match line.strip_prefix("leader ") {
        Some(id) => Some(id.to_owned()),
        None if line == "none" => None,
        None => panic!("Curator's look at the leader said {line:?}"),
    }
}

/// The value distlock reports as `key`'s leader's.
async fn leader_value(locks: &Locks, key: &LockKey) -> Option<String> {
    let leader = locks.leader(key.as_str()).await.unwrap_or_else(|e| panic!("leader: {e}"));
    leader.and_then(|leader| leader.value)
}

/// The next leader an observer reports other than nobody.
async fn next_leader(leaders: &mut LeaderStream) -> LockInfo {
    loop {
        match timeout(WAIT, leaders.next()).await {
            Ok(Some(Ok(Some(leader)))) => return leader,
            Ok(Some(Ok(None))) => {}
            other => panic!("the observer gave {other:?}"),
        }
    }
}

async fn await_clean(h: &ZkHarness, ns: &Namespace) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.leftover(ns.prefix()).await != 0 {
        assert!(Instant::now() < deadline, "nodes left under {}", ns.prefix());
        sleep(Duration::from_millis(20)).await;
    }
}

async fn release(guard: LockGuard) {
    guard.release().await.unwrap_or_else(|e| panic!("release: {e}"));
}

/// A Curator participant leads: distlock reports its id as the leader's
/// value, and a distlock candidate waits until it gives leadership up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distlock_sees_and_waits_for_a_curator_leader() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("led by curator");
    let (candidate, observer) = (h.client().await, h.client().await);
    let mut curator = participant(&h, &key, "curator-1").await;
    curator.reported("leading").await;
    assert_eq!(leader_value(&observer.locks, &key).await.as_deref(), Some("curator-1"));
    let mut leaders = observer.locks.observe(key.as_str()).unwrap_or_else(|e| panic!("observe: {e}"));
    assert_eq!(next_leader(&mut leaders).await.value.as_deref(), Some("curator-1"));
    let refused = candidate.locks.lock(key.as_str()).value("distlock-1").try_acquire().await;
    assert!(matches!(refused, Ok(None)), "distlock led beside Curator: {refused:?}");

    let (locks, waiting_key) = (candidate.locks.clone(), key.clone());
    let waiting = tokio::spawn(async move {
        let guard = locks.lock(waiting_key.as_str()).value("distlock-1").wait(WAIT).acquire().await;
        (guard.unwrap_or_else(|e| panic!("distlock's candidacy: {e}")), millis_now())
    });
    h.await_contenders(&key, 2, JVM_LIMIT, "the contenders").await;
    let released_at = curator.release().await;
    let (leading, led_at) = waiting.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(led_at >= released_at, "distlock led at {led_at}, before Curator gave up at {released_at}");
    let seen = next_leader(&mut leaders).await;
    assert_eq!((seen.token, seen.value.as_deref()), (leading.token(), Some("distlock-1")));
    assert_eq!(curator_leader(&h, &key).await.as_deref(), Some("distlock-1"));
    release(leading).await;
    drop(leaders);
    await_clean(&h, &ns).await;
}

/// A distlock candidate leads with a value: Curator's `getLeader()` reads
/// it (and a proclaimed one), and a Curator participant waits until distlock
/// resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_sees_and_waits_for_a_distlock_leader() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("led by distlock");
    let client = h.client().await;
    let leading = client.locks.lock(key.as_str()).value("10.0.0.7:8080").try_acquire().await;
    let leading = leading.ok().flatten().unwrap_or_else(|| panic!("distlock could not lead a free election"));
    assert_eq!(curator_leader(&h, &key).await.as_deref(), Some("10.0.0.7:8080"));
    leading.proclaim("10.0.0.7:8081").await.unwrap_or_else(|e| panic!("proclaim: {e}"));
    assert_eq!(curator_leader(&h, &key).await.as_deref(), Some("10.0.0.7:8081"));

    let mut curator = participant(&h, &key, "curator-2").await;
    h.await_contenders(&key, 2, JVM_LIMIT, "the contenders").await;
    let released_at = millis_now();
    release(leading).await;
    let led_at = curator.reported("leading").await;
    assert!(led_at >= released_at, "Curator led at {led_at}, before distlock resigned at {released_at}");
    assert_eq!(leader_value(&client.locks, &key).await.as_deref(), Some("curator-2"));
    curator.release().await;
    await_clean(&h, &ns).await;
}

/// The next leader an observer reports, skipping error items (an observer
/// cut off reports its failure and goes on).
async fn next_report(leaders: &mut LeaderStream, step: &str) -> Option<LockInfo> {
    loop {
        match timeout(WAIT, leaders.next()).await {
            Ok(Some(Ok(leader))) => return leader,
            Ok(Some(Err(error))) => tracing::debug!(%error, "the observer reported a failure"),
            Ok(None) => panic!("{step}: the observer's stream ended"),
            Err(_) => panic!("{step}: the observer reported nothing within {WAIT:?}"),
        }
    }
}

/// An observer whose connections are reset, and then whose session
/// ZooKeeper expires, goes on: it reports the leader that took over
/// meanwhile, on a new session, and then the end of its leadership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_outlives_lost_connections_and_sessions() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("observed");
    let (a, b, (observer, observer_lock)) = (h.client().await, h.client().await, h.client_with(|c| c).await);
    let mut leaders = observer.locks.observe(key.as_str()).unwrap_or_else(|e| panic!("observe: {e}"));
    assert_eq!(next_report(&mut leaders, "before anyone leads").await, None);
    let first_session = observer_lock.session_id().await;
    let first = a.locks.lock(key.as_str()).value("one").try_acquire().await.ok().flatten();
    let first = first.unwrap_or_else(|| panic!("could not lead a free election"));
    let seen = next_report(&mut leaders, "the first leader").await;
    assert_eq!(seen.and_then(|l| l.value).as_deref(), Some("one"));

    // Connections reset: the same session, its watches set again.
    observer.control.reset_connections().await;
    first.proclaim("one, again").await.unwrap_or_else(|e| panic!("proclaim: {e}"));
    let seen = next_report(&mut leaders, "after the connections were reset").await;
    assert_eq!(seen.and_then(|l| l.value).as_deref(), Some("one, again"));

    // The session expires while the leader changes.
    observer.control.cut_off().await;
    release(first).await;
    let second = b.locks.lock(key.as_str()).value("two").try_acquire().await.ok().flatten();
    let second = second.unwrap_or_else(|| panic!("could not lead a free election"));
    sleep(h.ttl() + Duration::from_secs(1)).await;
    observer.control.restore().await;
    let mut seen = next_report(&mut leaders, "after the session expired").await;
    if seen.is_none() {
        seen = next_report(&mut leaders, "the second leader").await;
    }
    assert_eq!(seen.map(|l| (l.token, l.value)), Some((second.token(), Some("two".to_owned()))));
    let session = observer_lock.session_id().await;
    assert!(session.is_some() && session != first_session, "the observer's session {first_session:?} went on");
    release(second).await;
    assert_eq!(next_report(&mut leaders, "after the last resigned").await, None);
    drop(leaders);
    await_clean(&h, &ns).await;
}
