//! ZooKeeper-specific behaviour, against a real ZooKeeper: loss within one
//! session timeout, no orphan node when a create's reply is lost, and mutual
//! exclusion with Apache Curator's InterProcessMutex.
#![cfg(feature = "zk")]

use std::process::Stdio;
use std::time::Duration;

use conformance_tests::process::NativeCommand;
use conformance_tests::zk::{BASE, ZkHarness};
use conformance_tests::{Harness, Namespace, cases};
use tokio::time::{Instant, sleep, timeout};

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

/// Compiles the Curator program with the machine's JDK against Debian's
/// Curator jars (`scripts/services install zk`), once per test binary.
async fn curator_program() -> std::path::PathBuf {
    let out = std::env::temp_dir().join(format!("distlock-curator-{}", std::process::id()));
    if out.join("CuratorLock.class").exists() {
        return out;
    }
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/curator/CuratorLock.java");
    let status = tokio::process::Command::new("javac")
        .args(["-cp", CURATOR_CLASSPATH, "-d"])
        .arg(&out)
        .arg(&source)
        .status()
        .await;
    assert!(
        matches!(status, Ok(s) if s.success()),
        "cannot compile the Curator program ({status:?}): run `scripts/services install zk` for Curator's jars"
    );
    out
}

const CURATOR_CLASSPATH: &str =
    "/usr/share/java/curator-recipes.jar:/usr/share/java/curator-framework.jar:/usr/share/java/curator-client.jar";

/// Runs CuratorLock on `path`, holding for `hold`.
async fn curator(h: &ZkHarness, path: &str, hold: Duration) -> NativeCommand {
    let classes = curator_program().await;
    let mut command = tokio::process::Command::new("java");
    command
        .arg("-cp")
        .arg(format!("{}:{CURATOR_CLASSPATH}", classes.display()))
        .args(["-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "CuratorLock"])
        .args([h.upstream(), path, &hold.as_millis().to_string()])
        .stderr(Stdio::null());
    NativeCommand::spawn(command)
}

fn millis_now() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distlock_waits_while_curator_holds() {
    let h = harness();
    let key = Namespace::new().key("shared with curator");
    let client = h.client().await;
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
    let client = h.client().await;
    let guard = client.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("could not take a free key"));
    let mut java = curator(&h, &lock_zk::lock_path(BASE, &key), Duration::from_millis(10)).await;
    let early = timeout(Duration::from_secs(5), java.next_line()).await;
    assert!(early.is_err(), "Curator got a lock distlock holds: {early:?}");
    let released_at = millis_now();
    assert!(guard.release().await.is_ok());
    let held = timeout(Duration::from_secs(20), java.next_line()).await.ok().flatten();
    let held_at = held.and_then(|l| l.strip_prefix("held ").and_then(|t| t.parse::<u128>().ok()));
    assert!(held_at.is_some_and(|t| t >= released_at), "Curator did not get the lock after release: {held_at:?}");
    let status = timeout(Duration::from_secs(20), java.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "Curator failed: {status:?}");
}
