//! etcd-specific behaviour, against a real etcd: loss reported within a
//! second, mutual exclusion with etcd's own `etcdctl lock` in every mode,
//! the key layout of etcd's reader/writer recipe, and a reader's clean-up
//! when its write's reply is lost.
#![cfg(feature = "etcd")]

use std::time::Duration;

use conformance_tests::etcd::{EtcdHarness, NAMESPACE, etcdctl};
use conformance_tests::process::NativeCommand;
use conformance_tests::{Harness, Namespace, cases};
use etcd_client::{GetOptions, PutOptions, SortOrder, SortTarget};
use lock_core::{LockMode, Locks};
use tokio::time::{Instant, sleep, timeout};

fn harness() -> EtcdHarness {
    EtcdHarness::from_env()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_revoked_from_outside_reports_lost_within_one_second() {
    let h = harness();
    let ns = Namespace::new();
    let client = h.client().await;
    let guard = client.locks.lock(ns.key("revoked").as_str()).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("could not take a free key"));
    client.control.end_session().await;
    let revoked_at = Instant::now();
    let reason = timeout(Duration::from_secs(1), guard.lost()).await;
    assert!(reason.is_ok(), "lost() did not complete within 1 s of the lease revoke");
    assert!(revoked_at.elapsed() <= Duration::from_secs(1));
    assert!(guard.release().await.is_err());
    // The client takes a new lease for new locks.
    let again = client.locks.lock(ns.key("revoked").as_str()).try_acquire().await;
    assert!(matches!(again, Ok(Some(_))), "no new lease after the revoke: {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_deleted_from_outside_reports_lost_within_one_second() {
    cases::broken_lock_reported_within(&harness(), Duration::from_secs(1)).await;
}

/// `etcdctl lock NAME sh -c SCRIPT`.
fn etcdctl_lock(h: &EtcdHarness, name: &str, script: &str) -> NativeCommand {
    let mut command = tokio::process::Command::new(etcdctl());
    command.arg(format!("--endpoints={}", h.endpoints().join(","))).args(["lock", "--", name, "sh", "-c", script]);
    NativeCommand::spawn(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distlock_waits_while_etcdctl_lock_holds() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("shared with etcdctl");
    let name = lock_etcd::native_lock_name(conformance_tests::etcd::NAMESPACE, &key);
    let client = h.client().await;
    // The command's last act prints the time; etcdctl unlocks only after it.
    let mut native = etcdctl_lock(&h, &name, "echo held; sleep 3; date +%s%N");
    let line = timeout(Duration::from_secs(10), native.next_line()).await.ok().flatten();
    assert_eq!(line.as_deref(), Some("held"), "etcdctl lock did not take the lock");
    let attempt = client.locks.lock(key.as_str()).try_acquire().await;
    assert!(matches!(attempt, Ok(None)), "distlock took a lock etcdctl holds: {attempt:?}");
    let guard = client.locks.lock(key.as_str()).wait(Duration::from_secs(20)).acquire().await;
    let guard = guard.unwrap_or_else(|e| panic!("distlock never got the lock after etcdctl: {e}"));
    let granted_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).ok();
    let finished_at = timeout(Duration::from_secs(5), native.next_line()).await.ok().flatten();
    let finished_at = finished_at.and_then(|line| line.parse::<u128>().ok());
    assert!(
        matches!((finished_at, granted_at), (Some(finished), Some(granted)) if finished <= granted),
        "distlock was granted the lock while etcdctl lock's command still ran ({finished_at:?} vs {granted_at:?})"
    );
    assert!(guard.release().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_waits_while_distlock_holds() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("held by distlock");
    let name = lock_etcd::native_lock_name(conformance_tests::etcd::NAMESPACE, &key);
    let client = h.client().await;
    let guard = client.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("could not take a free key"));
    let mut native = etcdctl_lock(&h, &name, "echo acquired");
    let early = timeout(Duration::from_secs(2), native.next_line()).await;
    assert!(early.is_err(), "etcdctl lock got a lock distlock holds: {early:?}");
    let info = client.locks.inspect(key.as_str()).await.ok().flatten().map(|i| i.token);
    assert_eq!(info, Some(guard.token()), "the waiting etcdctl displaced the holder");
    assert!(guard.release().await.is_ok());
    let line = timeout(Duration::from_secs(10), native.next_line()).await.ok().flatten();
    assert_eq!(line.as_deref(), Some("acquired"), "etcdctl lock did not get the lock after release");
    let status = timeout(Duration::from_secs(10), native.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "etcdctl lock failed: {status:?}");
}

/// The time now in nanoseconds since the epoch, as `date +%s%N` prints it.
fn now_nanos() -> Option<u128> {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_and_writers_wait_while_etcdctl_lock_holds() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("etcdctl holds");
    let name = lock_etcd::native_lock_name(NAMESPACE, &key);
    let client = h.client().await;
    let mut native = etcdctl_lock(&h, &name, "echo held; sleep 3; date +%s%N");
    let line = timeout(Duration::from_secs(10), native.next_line()).await.ok().flatten();
    assert_eq!(line.as_deref(), Some("held"), "etcdctl lock did not take the lock");
    for mode in [LockMode::Read, LockMode::Write] {
        let attempt = client.locks.lock(key.as_str()).mode(mode).try_acquire().await;
        assert!(matches!(attempt, Ok(None)), "a {mode} lock was granted while etcdctl holds: {attempt:?}");
    }
    let reader = client.locks.read_lock(key.as_str()).wait(Duration::from_secs(20)).acquire().await;
    let reader = reader.unwrap_or_else(|e| panic!("the reader never got the lock after etcdctl: {e}"));
    let granted_at = now_nanos();
    let finished_at = timeout(Duration::from_secs(5), native.next_line()).await.ok().flatten();
    let finished_at = finished_at.and_then(|line| line.parse::<u128>().ok());
    assert!(
        matches!((finished_at, granted_at), (Some(finished), Some(granted)) if finished <= granted),
        "a reader was granted while etcdctl lock's command still ran ({finished_at:?} vs {granted_at:?})"
    );
    assert!(reader.release().await.is_ok());
    assert_eq!(h.leftover(ns.prefix()).await, 0, "keys left after the reader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_waits_while_a_reader_or_writer_holds() {
    let h = harness();
    let ns = Namespace::new();
    let client = h.client().await;
    for mode in [LockMode::Read, LockMode::Write] {
        let key = ns.key(&format!("{mode} held by distlock"));
        let name = lock_etcd::native_lock_name(NAMESPACE, &key);
        let guard = client.locks.lock(key.as_str()).mode(mode).try_acquire().await.ok().flatten();
        let guard = guard.unwrap_or_else(|| panic!("could not take a free key for {mode}"));
        let mut native = etcdctl_lock(&h, &name, "echo acquired");
        let early = timeout(Duration::from_secs(2), native.next_line()).await;
        assert!(early.is_err(), "etcdctl lock got a lock a {mode} holder holds: {early:?}");
        let holders = client.locks.holders(key.as_str()).await.unwrap_or_else(|e| panic!("holders: {e}"));
        let listed: Vec<_> = holders.iter().map(|info| (info.token, info.mode)).collect();
        assert_eq!(listed, [(guard.token(), mode)], "the waiting etcdctl is listed as a holder");
        assert!(guard.release().await.is_ok());
        let line = timeout(Duration::from_secs(10), native.next_line()).await.ok().flatten();
        assert_eq!(line.as_deref(), Some("acquired"), "etcdctl lock did not get the lock after the {mode} release");
        let status = timeout(Duration::from_secs(10), native.child.wait()).await;
        assert!(matches!(status, Ok(Ok(s)) if s.success()), "etcdctl lock failed: {status:?}");
    }
    assert_eq!(h.leftover(ns.prefix()).await, 0, "keys left after etcdctl");
}

/// Writes a key as etcd's Go `recipes.RWMutex` does (`{name}/read/{unix
/// nanos}` or `{name}/write/{unix nanos}` on its session's lease) and
/// returns it with its revision.
async fn recipe_key(admin: &mut etcd_client::Client, name: &str, side: &str, lease: i64) -> (String, i64) {
    let nanos = now_nanos().unwrap_or_default();
    let key = format!("{name}/{side}/{nanos}");
    let put = admin.put(key.as_str(), "", Some(PutOptions::new().with_lease(lease))).await;
    let put = put.unwrap_or_else(|e| panic!("cannot write {key}: {e}"));
    (key, put.header().map(|h| h.revision()).unwrap_or_else(|| panic!("a put without a header")))
}

/// What the Go recipe's `waitOnLastRev(prefix)` reads for a key written at
/// `revision`: the last key under `prefix` with a lower mod revision.
async fn recipe_blocker(admin: &mut etcd_client::Client, prefix: &str, revision: i64) -> Option<String> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Mod, SortOrder::Descend)
        .with_limit(1)
        .with_max_mod_revision(revision - 1);
    let found = admin.get(prefix, Some(options)).await.unwrap_or_else(|e| panic!("cannot read {prefix}: {e}"));
    found.kvs().first().map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
}

/// Our readers and writers use the recipe's prefixes, so a Go recipe
/// reader waits for our writer and a Go recipe writer for our reader; and
/// ours wait for the recipe's keys as the recipe's own would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_and_writers_share_the_go_recipes_layout() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("recipe");
    let name = lock_etcd::native_lock_name(NAMESPACE, &key);
    let client = h.client().await;
    let mut admin = h.admin().await;
    let lease = admin.lease_client().grant(10, None).await.unwrap_or_else(|e| panic!("cannot grant a lease: {e}"));
    let lease = lease.id();

    // Our writer: a Go reader arriving now waits for exactly its key.
    let writer = client.locks.write_lock(key.as_str()).try_acquire().await.ok().flatten();
    let writer = writer.unwrap_or_else(|| panic!("could not take a free key"));
    let (go_reader, revision) = recipe_key(&mut admin, &name, "read", lease).await;
    let blocker = recipe_blocker(&mut admin, &format!("{name}/write"), revision).await;
    let blocker = blocker.unwrap_or_else(|| panic!("a Go recipe reader would not see our writer"));
    assert!(blocker.starts_with(&format!("{name}/write/")), "our writer's key {blocker} is not under {name}/write/");
    assert!(writer.release().await.is_ok());
    // The Go reader holds now: our readers share with it, our writers wait.
    let reader = client.locks.read_lock(key.as_str()).try_acquire().await.ok().flatten();
    let reader = reader.unwrap_or_else(|| panic!("our reader did not share with a Go recipe reader"));
    let holders = client.locks.holders(key.as_str()).await.unwrap_or_else(|e| panic!("holders: {e}"));
    assert_eq!(holders.len(), 2, "the Go reader and ours hold: {holders:?}");
    assert!(holders.iter().all(|info| info.mode == LockMode::Read), "{holders:?}");
    let refused = client.locks.write_lock(key.as_str()).try_acquire().await;
    assert!(matches!(refused, Ok(None)), "our writer got in beside a Go reader: {refused:?}");
    // A Go writer arriving now waits for our reader's key.
    let (go_writer, revision) = recipe_key(&mut admin, &name, "write", lease).await;
    let blocker = recipe_blocker(&mut admin, &format!("{name}/"), revision).await;
    let blocker = blocker.unwrap_or_else(|| panic!("a Go recipe writer would see no one"));
    assert!(blocker.starts_with(&format!("{name}/read/")), "a Go writer waits for {blocker}, not our reader");
    assert!(reader.release().await.is_ok());
    admin.delete(go_reader, None).await.unwrap_or_else(|e| panic!("cannot delete the Go reader: {e}"));
    // The Go writer holds now: ours wait in both modes.
    for mode in [LockMode::Read, LockMode::Write] {
        let refused = client.locks.lock(key.as_str()).mode(mode).try_acquire().await;
        assert!(matches!(refused, Ok(None)), "our {mode} lock got in beside a Go writer: {refused:?}");
    }
    let holders = client.locks.holders(key.as_str()).await.unwrap_or_else(|e| panic!("holders: {e}"));
    assert_eq!(holders.iter().map(|info| info.mode).collect::<Vec<_>>(), [LockMode::Write], "{holders:?}");
    admin.delete(go_writer, None).await.unwrap_or_else(|e| panic!("cannot delete the Go writer: {e}"));
    let _ = admin.lease_client().revoke(lease).await;
    assert_eq!(h.leftover(ns.prefix()).await, 0, "keys left after the recipe's");
}

/// A reader whose contender write reaches etcd but whose reply is lost, and
/// which is dropped meanwhile, leaves no key behind (its key's name is known
/// before the write, so its clean-up finds it), and its clean-up never takes
/// the client's next grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_dropped_while_its_write_reply_is_lost_leaves_nothing() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("lost reply");
    let (holder, reader) = (h.client().await, h.client().await);
    let writer = holder.locks.write_lock(key.as_str()).try_acquire().await.ok().flatten();
    let writer = writer.unwrap_or_else(|| panic!("could not take a free key"));
    // A lease first, so that the reader's contender write is among the
    // requests whose replies are lost.
    let warm_up = reader.locks.read_lock(ns.key("warm-up").as_str()).try_acquire().await.ok().flatten();
    assert!(warm_up.unwrap_or_else(|| panic!("could not take a free key")).release().await.is_ok());
    reader.control.drop_replies().await;
    let waiting = {
        let (locks, key) = (reader.locks.clone(), key.clone());
        tokio::spawn(async move { Locks::read_lock(&locks, key.as_str()).acquire().await })
    };
    // The write reaches etcd; its reply never comes.
    sleep(Duration::from_millis(500)).await;
    waiting.abort();
    let _ = waiting.await;
    sleep(Duration::from_millis(300)).await;
    // The write landed (its clean-up waits for the write's outcome, which
    // no reply tells): the writer's key and the reader's.
    assert_eq!(h.leftover(ns.prefix()).await, 2, "the reader's write did not reach etcd");
    reader.control.restore().await;
    assert!(writer.release().await.is_ok());
    let bound = Instant::now() + h.ttl() + Duration::from_secs(10);
    while h.leftover(ns.prefix()).await != 0 {
        assert!(Instant::now() < bound, "the dropped reader's key is still there");
        sleep(Duration::from_millis(50)).await;
    }
    let again = reader.locks.read_lock(key.as_str()).wait(Duration::from_secs(10)).acquire().await;
    let again = again.unwrap_or_else(|e| panic!("the reader's next acquire failed: {e}"));
    // Longer than any retried clean-up of the dropped attempt takes.
    sleep(Duration::from_secs(5)).await;
    assert!(!again.is_lost(), "the reader's next grant was taken away by its own clean-up");
    let holders = reader.locks.holders(key.as_str()).await.unwrap_or_else(|e| panic!("holders: {e}"));
    assert_eq!(holders.iter().map(|info| info.token).collect::<Vec<_>>(), [again.token()], "{holders:?}");
    assert!(again.release().await.is_ok());
    assert_eq!(h.leftover(ns.prefix()).await, 0, "keys left after the reader");
}
