//! ZooKeeper-specific behaviour, against a real ZooKeeper: loss within one
//! session timeout, no orphan node when a create's reply is lost or an
//! attempt is withdrawn as its connection drops, locks of an authenticated
//! client that a client without its credentials cannot steal, and mutual
//! exclusion with Apache Curator's InterProcessMutex.
#![cfg(feature = "zk")]

use std::process::Stdio;
use std::time::Duration;

use conformance_tests::process::NativeCommand;
use conformance_tests::zk::{BASE, ZkHarness, curator_command};
use conformance_tests::{Harness, Namespace, cases};
use lock_core::{LockError, LockKey};
use lock_zk::ZkConfig;
use tokio::time::{Instant, sleep, timeout};
use zookeeper_client::{Acls, CreateMode};

fn harness() -> ZkHarness {
    ZkHarness::from_env()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_deleted_from_outside_reports_lost_within_one_session_timeout() {
    let h = harness();
    cases::broken_lock_reported_within(&h, h.ttl()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expired_reports_lost_within_one_session_timeout() {
    let h = harness();
    let ns = Namespace::new();
    let client = h.client().await;
    let guard = client.locks.lock(ns.key("expiring").as_str()).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("could not take a free key"));
    // Silenced: the server expires the session one timeout after it last heard from us.
    client.control.cut_off().await;
    let cut_at = Instant::now();
    let reason = timeout(h.ttl(), guard.lost()).await;
    assert!(reason.is_ok(), "lost() did not complete within the session timeout of going silent");
    assert!(cut_at.elapsed() <= h.ttl());
    sleep(h.ttl()).await;
    client.control.restore().await;
    assert!(guard.release().await.is_err(), "release of a lock whose session expired succeeded");
    // The client opens a new session for new locks.
    let again = client.locks.lock(ns.key("expiring").as_str()).wait(Duration::from_secs(20)).acquire().await;
    assert!(again.is_ok(), "no new session after expiry: {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_reply_leaves_no_orphan_node() {
    let h = harness();
    let key = Namespace::new().key("lost reply");
    // A holder, so the lock directory exists and the create is the only
    // request whose reply matters.
    let holder = h.client().await;
    let held = holder.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let _held = held.unwrap_or_else(|| panic!("could not take a free key"));
    let client = h.client().await;
    client.control.lose_replies().await;
    let attempt = client.locks.lock(key.as_str()).try_acquire().await;
    assert!(attempt.is_err(), "a create whose reply was held back succeeded: {attempt:?}");
    let created = h.contenders(&key).await;
    assert_eq!(created.len(), 2, "the create did not reach ZooKeeper, so this test proves nothing: {created:?}");
    client.control.restore().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.contenders(&key).await.len() != 1 {
        assert!(Instant::now() < deadline, "orphan node left: {:?}", h.contenders(&key).await);
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_withdrawn_as_their_connection_drops_leave_no_orphan() {
    let h = harness();
    let ns = Namespace::new();
    let (timed_out, cancelled) = (ns.key("timed out"), ns.key("cancelled"));
    let holder = h.client().await;
    let mut held = Vec::new();
    for key in [&timed_out, &cancelled] {
        let guard = holder.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
        held.push(guard.unwrap_or_else(|| panic!("could not take the free key {key}")));
    }
    // A session far longer than every bound below, so a node that goes in
    // time did not go with the session; and a connection timeout long enough
    // that the client still trusts its stalled connection when the attempts
    // are withdrawn, so their deletes are sent on it (and lost with it)
    // rather than queued for the next connection.
    let session_timeout = Duration::from_secs(30);
    let (waiter, waiter_lock) =
        h.client_with(|config| config.session_timeout(session_timeout).connect_timeout(Duration::from_secs(8))).await;
    let locks = waiter.locks.clone();
    let key = timed_out.clone();
    let timing_out = tokio::spawn(async move { locks.lock(key.as_str()).wait(Duration::from_secs(3)).acquire().await });
    let locks = waiter.locks.clone();
    let key = cancelled.clone();
    let to_cancel = tokio::spawn(async move { locks.lock(key.as_str()).acquire().await });
    for key in [&timed_out, &cancelled] {
        h.await_contenders(key, 2, Duration::from_secs(10), "the waiter queued").await;
    }

    waiter.control.cut_off().await;
    to_cancel.abort();
    let _ = to_cancel.await;
    // Its deadline passes within the connection timeout of the cut, while
    // the client still trusts the connection, so its withdrawal sends the
    // delete on it; the attempt returns once the withdrawal stops waiting
    // for the answer. The cancelled attempt's delete, sent at once, is out
    // by then too.
    let outcome = timeout(Duration::from_secs(15), timing_out).await;
    assert!(
        matches!(outcome, Ok(Ok(Err(LockError::Timeout { .. })))),
        "the attempt with a deadline did not time out: {outcome:?}"
    );
    // The connection dies with both deletes unanswered and never applied.
    h.move_session_away(&waiter_lock).await;
    waiter.control.restore().await;

    // Back in the same session: the nodes must go now, not when the session
    // ends (which, for a client that stays connected, is never).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queued = [h.contenders(&timed_out).await, h.contenders(&cancelled).await];
        if queued.iter().all(|nodes| nodes.len() == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "withdrawn attempts' nodes still queued 10 s after reconnecting (session timeout {session_timeout:?}), \
             behind the holder's: {queued:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
    for guard in held {
        assert!(guard.release().await.is_ok(), "the holder could not release");
    }
    let third = h.client().await;
    for key in [&timed_out, &cancelled] {
        let granted = third.locks.lock(key.as_str()).wait(Duration::from_secs(5)).acquire().await;
        let guard = granted.unwrap_or_else(|e| panic!("a third client did not get the released {key}: {e}"));
        assert!(guard.release().await.is_ok());
        // The waiter's own next attempt is not held up by its past one.
        let again = waiter.locks.lock(key.as_str()).try_acquire().await;
        let guard = again.ok().flatten().unwrap_or_else(|| panic!("the waiter could not take the free {key} again"));
        assert!(guard.release().await.is_ok());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.leftover(ns.prefix()).await != 0 {
        assert!(Instant::now() < deadline, "nodes left under {}", ns.prefix());
        sleep(Duration::from_millis(20)).await;
    }
}

/// The digest identity of the authenticated clients below.
const USER: &str = "distlock-test";
const PASSWORD: &str = "not-a-secret";

/// A base path of its own: the authenticated client creates it, so it gets
/// the client's ACL; the suite's shared base must stay open to the other
/// tests' clients without credentials.
fn private_base() -> String {
    format!("{BASE}-auth-{}/locks", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_credentials_cannot_steal_an_authenticated_lock() {
    let h = harness();
    let base = private_base();
    let key = Namespace::new().key("guarded");
    let dir = lock_zk::lock_path(&base, &key);
    let (owner, _) = h.client_with(|config| config.base_path(&base).digest(USER, PASSWORD)).await;
    let guard = owner.locks.lock(key.as_str()).try_acquire().await;
    let guard = guard.ok().flatten().unwrap_or_else(|| panic!("the authenticated client could not take a free key"));
    let authenticated = h.admin_as(USER, PASSWORD).await;
    let nodes = authenticated.list_children(&dir).await.unwrap_or_default();
    let [holder_node] = nodes.as_slice() else { panic!("expected the holder's node alone in {dir}: {nodes:?}") };
    let holder_node = format!("{dir}/{holder_node}");

    let anonymous = h.admin().await;
    let mut stolen = Vec::new();
    let queued = format!("{dir}/_c_{}-lock-", uuid::Uuid::new_v4());
    let ephemeral = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    if let Ok((_, sequence)) = anonymous.create(&queued, b"", &ephemeral).await {
        stolen.push(format!("queued {queued}{sequence}"));
    }
    let (intruder, _) = h.client_with(|config| config.base_path(&base)).await;
    match intruder.locks.lock(key.as_str()).wait(Duration::from_secs(1)).acquire().await {
        Ok(_) => stolen.push("was granted the lock through distlock".to_owned()),
        Err(error) => assert!(!error.is_lost(), "the intruder's attempt failed oddly: {error}"),
    }
    if anonymous.delete(&holder_node, None).await.is_ok() {
        stolen.push(format!("deleted the holder's node {holder_node}"));
    }
    // A directory for another key, open to all: the base is the client's too.
    let squatted = format!("{base}/squatted");
    if anonymous.create(&squatted, b"", &CreateMode::Persistent.with_acls(Acls::anyone_all())).await.is_ok() {
        stolen.push(format!("created {squatted}"));
        let _ = anonymous.delete(&squatted, None).await;
    }
    assert!(stolen.is_empty(), "a client without credentials {}", stolen.join("; "));
    assert!(!guard.is_lost(), "the holder lost its lock");
    assert!(guard.release().await.is_ok(), "the holder could not release");
    let left = authenticated.list_children(&dir).await.unwrap_or_default();
    assert!(left.is_empty(), "nodes left in {dir}: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_client_refuses_a_lock_directory_anyone_may_write() {
    let h = harness();
    let base = private_base();
    let key = Namespace::new().key("left open");
    let dir = lock_zk::lock_path(&base, &key);
    // A client without credentials made the directory first, open to all,
    // and holds the lock in it.
    let (anonymous, _) = h.client_with(|config| config.base_path(&base)).await;
    let open = anonymous.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let open = open.unwrap_or_else(|| panic!("the client without credentials could not take a free key"));
    let (owner, _) = h.client_with(|config| config.base_path(&base).digest(USER, PASSWORD)).await;
    let refused = owner.locks.lock(key.as_str()).try_acquire().await;
    let unprotected = match &refused {
        Err(LockError::Backend { source, .. }) => source.downcast_ref::<lock_zk::UnprotectedDirectory>(),
        _ => None,
    };
    assert!(
        unprotected.is_some_and(|error| error.path() == dir),
        "an authenticated client queued in a lock directory anyone may write: {refused:?}"
    );
    // Nothing of the refused attempt stays queued.
    let admin = h.admin().await;
    let nodes = admin.list_children(&dir).await.unwrap_or_default();
    assert_eq!(nodes.len(), 1, "the refused attempt left a node in {dir}: {nodes:?}");
    drop(refused);

    // The remedy the error names: once the open directory is gone, the
    // authenticated client makes it again, with its own ACL.
    assert!(open.release().await.is_ok());
    match admin.delete(&dir, None).await {
        Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
        Err(error) => panic!("cannot delete {dir}: {error}"),
    }
    let guard = owner.locks.lock(key.as_str()).try_acquire().await;
    let guard = guard.ok().flatten().unwrap_or_else(|| panic!("the authenticated client could not take the key"));
    let acl = h.admin_as(USER, PASSWORD).await.get_acl(&dir).await.map(|(acl, _)| acl);
    assert!(
        acl.as_ref().is_ok_and(|acl| !acl.is_empty() && acl.iter().all(|entry| entry.scheme() == "digest")),
        "the re-created directory is not the authenticated client's alone: {acl:?}"
    );
    assert!(guard.release().await.is_ok());
}

/// Runs CuratorLock on `path`, holding for `hold`.
async fn curator(h: &ZkHarness, path: &str, hold: Duration) -> NativeCommand {
    let mut command = curator_command("CuratorLock", &[h.upstream(), path, &hold.as_millis().to_string()]).await;
    command.stderr(Stdio::null());
    NativeCommand::spawn(command)
}

/// The session timeout of the clients in the interop and reaping tests,
/// which are about who holds, not about expiry: long enough that a stall of
/// a loaded machine (seen in CI with two test lanes beside each other) does
/// not end the session and so, rightly, the lock.
const LONG_SESSION: Duration = Duration::from_secs(10);

fn millis_now() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distlock_waits_while_curator_holds() {
    let h = harness();
    let key = Namespace::new().key("shared with curator");
    let (client, _) = h.client_with(|config| config.session_timeout(LONG_SESSION)).await;
    let mut java = curator(&h, &lock_zk::lock_path(BASE, &key), Duration::from_secs(3)).await;
    let held = timeout(Duration::from_secs(60), java.next_line()).await.ok().flatten();
    assert!(held.as_deref().is_some_and(|l| l.starts_with("held")), "Curator did not take the lock: {held:?}");
    let attempt = client.locks.lock(key.as_str()).try_acquire().await;
    assert!(matches!(attempt, Ok(None)), "distlock took a lock Curator holds: {attempt:?}");
    let guard = client.locks.lock(key.as_str()).wait(Duration::from_secs(30)).acquire().await;
    let guard = guard.unwrap_or_else(|e| panic!("distlock never got the lock after Curator: {e}"));
    let granted_at = millis_now();
    let released = timeout(Duration::from_secs(10), java.next_line()).await.ok().flatten();
    let released_at = released.and_then(|l| l.strip_prefix("released ").and_then(|t| t.parse::<u128>().ok()));
    assert!(
        released_at.is_some_and(|r| r <= granted_at),
        "distlock was granted before Curator released ({released_at:?})"
    );
    assert!(guard.release().await.is_ok());
    let _ = java.child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_waits_while_distlock_holds() {
    let h = harness();
    let key = Namespace::new().key("held by distlock");
    let (client, _) = h.client_with(|config| config.session_timeout(LONG_SESSION)).await;
    let guard = client.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("could not take a free key"));
    let mut java = curator(&h, &lock_zk::lock_path(BASE, &key), Duration::from_millis(10)).await;
    let early = timeout(Duration::from_secs(5), java.next_line()).await;
    // Two holders unless ours was told it lost the lock (its session ended:
    // then Curator rightly took it, but this run proves nothing).
    let lost = guard.is_lost();
    assert!(
        early.is_err(),
        "Curator got a lock distlock holds ({}): {early:?}",
        if lost { "ours was told it lost the lock: the session ended" } else { "and ours holds it: two holders" }
    );
    let released_at = millis_now();
    assert!(guard.release().await.is_ok());
    let held = timeout(Duration::from_secs(20), java.next_line()).await.ok().flatten();
    let held_at = held.and_then(|l| l.strip_prefix("held ").and_then(|t| t.parse::<u128>().ok()));
    assert!(held_at.is_some_and(|t| t >= released_at), "Curator did not get the lock after release: {held_at:?}");
    let status = timeout(Duration::from_secs(20), java.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "Curator failed: {status:?}");
}

/// A chroot in the connection string that does not exist yet is created (as
/// Curator creates its namespace) instead of every acquire failing with "node
/// not exists"; locks then live under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_chroot_is_created() {
    let h = harness();
    let chroot = format!("/distlock-test-chroot-{}/app", uuid::Uuid::new_v4().simple());
    let config = h.config(&format!("{}{chroot}", h.upstream()));
    let lock = lock_zk::ZkLock::connect(config).await.unwrap_or_else(|e| panic!("connect with a new chroot: {e}"));
    let locks = lock_core::Locks::new(lock);
    let guard = locks.lock("under the chroot").try_acquire().await;
    let guard = guard.unwrap_or_else(|e| panic!("acquire under a new chroot: {e}")).unwrap_or_else(|| {
        panic!("a key under a new chroot was held");
    });
    let admin = h.admin().await;
    let under = admin.list_children(&format!("{chroot}{BASE}")).await;
    assert!(under.is_ok_and(|children| !children.is_empty()), "the lock directory is not under the chroot {chroot}");
    guard.release().await.unwrap_or_else(|e| panic!("release: {e}"));
}

/// ZooKeeper reaps an empty container node that has had a child, and a
/// lock's directory (and a base path distlock created) is one: between a
/// release and the next acquire either may vanish, also between the request
/// that finds the directory there and the one that creates the contender
/// node in it. A stand-in reaper that never rests (the real one runs every
/// 100 ms in `scripts/services`, every minute by default) deletes them while
/// one client takes and releases a lock in a loop: every acquire must
/// succeed. Before the fix acquire failed with a backend error, "node not
/// exists" (seen once in 2,500 cycles of `lock-bench --peers`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquires_survive_their_directories_being_reaped_at_any_moment() {
    let h = harness();
    let base = format!("{BASE}-reaped-{}/locks", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let key = Namespace::new().key("reaped");
    let dir = lock_zk::lock_path(&base, &key);
    let (client, _) = h.client_with(|config| config.base_path(&base).session_timeout(LONG_SESSION)).await;
    let admin = h.admin().await;
    let reaping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reaper = tokio::spawn({
        let (reaping, dir, base) = (std::sync::Arc::clone(&reaping), dir.clone(), base.clone());
        async move {
            let parent = base.rsplit_once('/').map_or(base.clone(), |(parent, _)| parent.to_owned());
            let mut deleted = 0_u32;
            while reaping.load(std::sync::atomic::Ordering::Relaxed) {
                // As ZooKeeper's reaper: an empty container that has had a
                // child (a fresh one is left alone). A child created between
                // the look and the delete makes the delete fail: fine.
                for path in [&dir, &base, &parent] {
                    let reapable = matches!(admin.check_stat(path).await, Ok(Some(stat)) if stat.cversion > 0 && stat.num_children == 0);
                    if reapable && admin.delete(path, None).await.is_ok() {
                        deleted += 1;
                    }
                }
            }
            deleted
        }
    });
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for cycle in 0..600 {
        if Instant::now() >= deadline {
            break;
        }
        let acquired = timeout(Duration::from_secs(10), client.locks.lock(key.as_str()).acquire()).await;
        match acquired {
            Ok(Ok(guard)) => {
                if let Err(error) = guard.release().await {
                    failures.push(format!("cycle {cycle}: release: {error}"));
                }
            }
            Ok(Err(error)) => failures.push(format!("cycle {cycle}: acquire: {error}")),
            Err(_) => failures.push(format!("cycle {cycle}: acquire hung for 10 s")),
        }
    }
    reaping.store(false, std::sync::atomic::Ordering::Relaxed);
    let deleted = reaper.await.unwrap_or(0);
    assert!(deleted > 10, "the stand-in reaper deleted only {deleted} directories: the test proves nothing");
    assert!(
        failures.is_empty(),
        "{} of the cycles failed ({deleted} directories reaped): {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// ZooKeeper (3.5 and later) answers a create with the new node's stat,
/// whose `czxid` is the token, so a lock free at once needs no read; a reply
/// without a stat (a plain create, as servers before 3.5 answer every one)
/// makes the grant read the node instead. Either way the token is the node's
/// `czxid`: for `try_acquire`, for an `acquire` granted at once and for one
/// granted after a wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_the_nodes_czxid_with_or_without_the_creates_stat() {
    let h = harness();
    let ns = Namespace::new();
    let (plain, _) = h.client_with(ZkConfig::plain_creates_for_tests).await;
    let (current, other) = (h.client().await, h.client().await);
    for (path, client) in [("create2", &current), ("plain create", &plain)] {
        let key = ns.key(path);
        let guard = client.locks.lock(key.as_str()).try_acquire().await;
        let guard = guard.ok().flatten().unwrap_or_else(|| panic!("{path}: try_acquire of a free key failed"));
        assert_token_is_czxid(&h, &key, &guard, "try_acquire").await;
        let _ = guard.release().await;

        let guard = client.locks.lock(key.as_str()).acquire().await;
        let guard = guard.unwrap_or_else(|e| panic!("{path}: acquire of a free key: {e}"));
        assert_token_is_czxid(&h, &key, &guard, "acquire at once").await;
        let _ = guard.release().await;

        let guard = h.acquire_after_a_wait(&other, client, &key, &format!("{path}: the other client")).await;
        let guard = guard.unwrap_or_else(|e| panic!("{path}: acquire after a wait: {e}"));
        assert_token_is_czxid(&h, &key, &guard, "acquire after a wait").await;
        let _ = guard.release().await;
    }
}

/// `guard`'s token is the `czxid` of `key`'s one contender node.
async fn assert_token_is_czxid(h: &ZkHarness, key: &LockKey, guard: &lock_core::LockGuard, how: &str) {
    let nodes = h.contenders(key).await;
    assert_eq!(nodes.len(), 1, "{how} on {key}: expected the holder's node alone, found {nodes:?}");
    let stat = h.admin().await.check_stat(&nodes[0]).await;
    let czxid = match stat {
        Ok(Some(stat)) => stat.czxid,
        other => panic!("{how} on {key}: cannot read {}: {other:?}", nodes[0]),
    };
    assert_eq!(
        guard.token().get(),
        u64::try_from(czxid).unwrap_or_default(),
        "{how} on {key}: token is not the node's czxid"
    );
}
