//! Consul-specific behaviour, against a real Consul agent: loss reported
//! within a second, and mutual exclusion with Consul's own `consul lock`,
//! for the mutex and for reader/writer locks.
#![cfg(feature = "consul")]

use std::time::Duration;

use conformance_tests::consul::{ConsulHarness, PREFIX};
use conformance_tests::process::NativeCommand;
use conformance_tests::{Harness, Namespace, cases};
use lock_consul::RW_FLAG;
use lock_core::{LockMode, LostReason};
use tokio::time::{Instant, timeout};

fn harness() -> ConsulHarness {
    ConsulHarness::from_env()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_destroyed_from_outside_reports_lost_within_one_second() {
    let h = harness();
    let ns = Namespace::new();
    let client = h.client().await;
    let first = client.locks.lock(ns.key("one").as_str()).try_acquire().await.ok().flatten();
    let second = client.locks.lock(ns.key("two").as_str()).try_acquire().await.ok().flatten();
    let (Some(first), Some(second)) = (first, second) else { panic!("could not take free keys") };
    client.control.end_session().await;
    let destroyed_at = Instant::now();
    let both = async { (first.lost().await, second.lost().await) };
    let reasons = timeout(Duration::from_secs(1), both).await;
    assert_eq!(
        reasons.ok(),
        Some((LostReason::SessionEnded, LostReason::SessionEnded)),
        "lost() did not complete within 1 s of the session's destruction, for every guard of the client"
    );
    assert!(destroyed_at.elapsed() <= Duration::from_secs(1));
    assert!(first.release().await.is_err());
    // The client creates a new session for new locks (once Consul's lock
    // delay for the destroyed session's keys has passed), and tokens go on rising.
    let again = client.locks.lock(ns.key("one").as_str()).wait(Duration::from_secs(10)).acquire().await;
    let again = again.unwrap_or_else(|e| panic!("no new session after the destroy: {e}"));
    assert!(again.token() > second.token(), "token did not increase on the new session");
    assert!(again.release().await.is_ok());
}

/// Lead 9 of the safety issue: Consul counts a session's TTL from its last
/// renewal, not from a lock write (an acquire does not renew the session).
/// A lock taken late in a renewal interval, whose client is then cut off,
/// must be reported lost within the TTL of the session's last proof, not of
/// the lock write: after that Consul may invalidate the session and, with no
/// lock delay, grant the key to another client at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_is_counted_from_the_sessions_last_renewal_not_from_the_lock_write() {
    let h = harness();
    let ns = Namespace::new();
    let client = h.client().await;
    let session_proven = Instant::now();
    let first = client.locks.lock(ns.key("first").as_str()).try_acquire().await.ok().flatten();
    let first = first.unwrap_or_else(|| panic!("could not take a free key"));
    // Before the session's first renewal (a third of the TTL after it was made).
    tokio::time::sleep(h.ttl() * 4 / 15).await;
    let late = client.locks.lock(ns.key("late").as_str()).try_acquire().await.ok().flatten();
    let late = late.unwrap_or_else(|| panic!("could not take a free key"));
    client.control.cut_off().await;
    let reason = timeout(h.ttl() * 2, late.lost()).await;
    let lost_after = session_proven.elapsed();
    assert!(reason.is_ok(), "a cut-off holder was not reported lost within twice the TTL");
    assert!(
        lost_after <= h.ttl(),
        "the lock was reported lost {lost_after:?} after the session's last proof, beyond its TTL {:?}",
        h.ttl()
    );
    client.control.restore().await;
    drop((first, late));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_deleted_from_outside_reports_lost_within_one_second() {
    cases::broken_lock_reported_within(&harness(), Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_deleted_beyond_the_per_key_watches_reports_lost_within_one_second() {
    let h = harness();
    let ns = Namespace::new();
    let client = h.client().await;
    let mut guards = Vec::new();
    // The first MAX_KEY_WATCHES locks watch their own key; the next one is
    // covered by the client's shared prefix watch.
    for index in 0..=lock_consul::MAX_KEY_WATCHES {
        let guard = client.locks.lock(ns.key(&format!("many-{index}")).as_str()).try_acquire().await;
        guards.push(guard.ok().flatten().unwrap_or_else(|| panic!("could not take free key {index}")));
    }
    let (last, watched_alone) = (guards.len() - 1, 3);
    for index in [watched_alone, last] {
        h.break_lock(guards[index].key()).await;
        let reason = timeout(Duration::from_secs(1), guards[index].lost()).await;
        assert_eq!(reason.ok(), Some(LostReason::Revoked), "lock {index}: the deletion was not reported within 1 s");
    }
    let lost = guards.iter().filter(|guard| guard.is_lost()).count();
    assert_eq!(lost, 2, "other locks were reported lost too");
    for guard in guards.into_iter().filter(|guard| !guard.is_lost()) {
        assert!(guard.release().await.is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_beyond_their_own_blocking_queries_are_woken_by_the_prefix_watch() {
    const KEYS: usize = lock_consul::MAX_BLOCKING_WAITS + 16;
    let h = harness();
    let ns = Namespace::new();
    let (holder, waiter) = (h.client().await, h.client().await);
    let mut held = Vec::new();
    for index in 0..KEYS {
        let guard = holder.locks.lock(ns.key(&format!("shard-{index}")).as_str()).try_acquire().await;
        held.push(guard.ok().flatten().unwrap_or_else(|| panic!("could not take free key {index}")));
    }
    let mut waiting = tokio::task::JoinSet::new();
    for index in 0..KEYS {
        let (locks, key) = (waiter.locks.clone(), ns.key(&format!("shard-{index}")));
        waiting.spawn(async move { (index, locks.lock(key.as_str()).wait(Duration::from_secs(30)).acquire().await) });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(waiting.try_join_next().is_none(), "a waiter was granted a held key");
    let tokens: Vec<u64> = held.iter().map(|guard| guard.token().get()).collect();
    for guard in held {
        assert!(guard.release().await.is_ok());
    }
    let mut granted = Vec::new();
    while let Some(joined) = timeout(Duration::from_secs(20), waiting.join_next()).await.ok().flatten() {
        let (index, guard) = joined.unwrap_or_else(|e| panic!("waiter panicked: {e}"));
        let guard = guard.unwrap_or_else(|e| panic!("waiter {index} was not granted after the release: {e}"));
        assert!(guard.token().get() > tokens[index], "waiter {index}: token did not increase");
        granted.push(guard);
    }
    assert_eq!(granted.len(), KEYS, "not every waiter was woken within 20 s of the release");
    for guard in granted {
        assert!(guard.release().await.is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acquire_reply_leaves_no_orphan_key() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("lost reply");
    let client = h.client().await;
    client.control.lose_replies().await;
    let attempt = client.locks.lock(key.as_str()).try_acquire().await;
    assert!(attempt.is_err(), "an acquisition whose reply was held back succeeded: {attempt:?}");
    assert_eq!(h.leftover(ns.prefix()).await, 1, "the acquisition did not reach Consul, so this test proves nothing");
    client.control.restore().await;
    // The client finds its own write (by its session and attempt id) and deletes it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.leftover(ns.prefix()).await != 0 {
        assert!(Instant::now() < deadline, "orphan key left by the unanswered acquisition");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = h.client().await;
    let next = other.locks.lock(key.as_str()).try_acquire().await;
    assert!(matches!(&next, Ok(Some(_))), "the key was not free after the cleanup: {next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_that_is_not_a_lock_is_left_alone() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("plain value");
    let kv_key = lock_consul::native_lock_key(PREFIX, &key).replace('%', "%25");
    let admin = h.admin().await;
    let put = rs_consul::CreateOrUpdateKeyRequest { key: &kv_key, ..Default::default() };
    admin.create_or_update_key(put, b"precious".to_vec()).await.unwrap_or_else(|e| panic!("cannot put: {e}"));
    let client = h.client().await;
    let attempt = client.locks.lock(key.as_str()).try_acquire().await;
    assert!(
        matches!(&attempt, Err(lock_core::LockError::Backend { source, .. }) if source.to_string().contains("not a lock")),
        "a plain KV value was taken as a lock: {attempt:?}"
    );
    let read = admin.read_key(rs_consul::ReadKeyRequest { key: &kv_key, ..Default::default() }).await;
    let value = read.ok().and_then(|r| r.response.into_iter().next()).and_then(|e| e.value);
    assert_eq!(value.as_deref(), Some("precious"), "the plain value was overwritten");
    let delete = rs_consul::DeleteKeyRequest { key: &kv_key, ..Default::default() };
    assert!(matches!(admin.delete_key(delete).await, Ok(true)));
}

/// The `consul` binary installed by `scripts/services install consul`, or
/// the one `DISTLOCK_CONSUL_BIN` names.
fn consul_binary() -> std::path::PathBuf {
    let path = std::env::var_os("DISTLOCK_CONSUL_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| conformance_tests::services_dir().join("bin/consul"));
    assert!(path.exists(), "no consul binary at {}: run `scripts/services install consul`", path.display());
    path
}

/// `consul lock [options] PREFIX sh -c SCRIPT`.
fn consul_lock(h: &ConsulHarness, options: &[&str], prefix: &str, script: &str) -> NativeCommand {
    let mut command = tokio::process::Command::new(consul_binary());
    command
        .arg("lock")
        .arg(format!("-http-addr={}", h.address()))
        .arg("-shell=false")
        .args(options)
        .args([prefix, "sh", "-c", script]);
    NativeCommand::spawn(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distlock_waits_while_consul_lock_holds() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("shared with consul lock");
    let prefix = lock_consul::native_lock_prefix(PREFIX, key.as_str());
    let client = h.client().await;
    // The command's last act prints the time; consul lock unlocks only after it.
    let mut native = consul_lock(&h, &[], &prefix, "echo held; sleep 3; date +%s%N");
    let line = timeout(Duration::from_secs(10), native.next_line()).await.ok().flatten();
    assert_eq!(line.as_deref(), Some("held"), "consul lock did not take the lock");
    let attempt = client.locks.lock(key.as_str()).try_acquire().await;
    assert!(matches!(attempt, Ok(None)), "distlock took a lock consul lock holds: {attempt:?}");
    let info = client.locks.inspect(key.as_str()).await;
    assert!(matches!(info, Ok(Some(_))), "inspect does not see consul lock's holder: {info:?}");
    let guard = client.locks.lock(key.as_str()).wait(Duration::from_secs(20)).acquire().await;
    let guard = guard.unwrap_or_else(|e| panic!("distlock never got the lock after consul lock: {e}"));
    let granted_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).ok();
    let finished_at = timeout(Duration::from_secs(5), native.next_line()).await.ok().flatten();
    let finished_at = finished_at.and_then(|line| line.parse::<u128>().ok());
    assert!(
        matches!((finished_at, granted_at), (Some(finished), Some(granted)) if finished <= granted),
        "distlock was granted the lock while consul lock's command still ran ({finished_at:?} vs {granted_at:?})"
    );
    assert!(guard.release().await.is_ok());
    let status = timeout(Duration::from_secs(10), native.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "consul lock failed: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_lock_waits_while_distlock_holds() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("held by distlock");
    let prefix = lock_consul::native_lock_prefix(PREFIX, key.as_str());
    let client = h.client().await;
    let guard = client.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let guard = guard.unwrap_or_else(|| panic!("could not take a free key"));
    // With a timeout, consul lock gives up on a lock distlock holds.
    let mut refused = consul_lock(&h, &["-timeout=1s"], &prefix, "echo wrongly-acquired");
    let status = timeout(Duration::from_secs(10), refused.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if !s.success()), "consul lock -timeout did not give up: {status:?}");
    assert_eq!(refused.next_line().await, None, "consul lock ran its command while distlock held the lock");
    // Without one, it waits until distlock releases.
    let mut native = consul_lock(&h, &[], &prefix, "echo acquired");
    let early = timeout(Duration::from_secs(2), native.next_line()).await;
    assert!(early.is_err(), "consul lock got a lock distlock holds: {early:?}");
    let info = client.locks.inspect(key.as_str()).await.ok().flatten().map(|i| i.token);
    assert_eq!(info, Some(guard.token()), "the waiting consul lock displaced the holder");
    assert!(guard.release().await.is_ok());
    let line = timeout(Duration::from_secs(10), native.next_line()).await.ok().flatten();
    assert_eq!(line.as_deref(), Some("acquired"), "consul lock did not get the lock after release");
    let status = timeout(Duration::from_secs(10), native.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "consul lock failed: {status:?}");
}

/// The keys under a lock's prefix (its `.lock` and, for a reader/writer
/// lock, its contender keys), as `(key, flags, session)`.
async fn keys_of(h: &ConsulHarness, lock_prefix: &str) -> Vec<(String, u64, Option<String>)> {
    let tree = format!("{lock_prefix}/").replace('%', "%25");
    let request = rs_consul::ReadKeyRequest { key: &tree, recurse: true, ..Default::default() };
    match h.admin().await.read_key(request).await {
        Ok(found) => {
            found.response.into_iter().map(|e| (e.key, e.flags, e.session.filter(|s| !s.is_empty()))).collect()
        }
        Err(rs_consul::ConsulError::UnexpectedResponseCode(status, _)) if status.as_u16() == 404 => Vec::new(),
        Err(error) => panic!("cannot read {tree}: {error}"),
    }
}

/// Waits (by reading the keys, as no event tells) until `check` holds for
/// the lock's keys, failing with `what` after 10 s.
async fn await_keys(
    h: &ConsulHarness,
    lock_prefix: &str,
    what: &str,
    check: impl Fn(&[(String, u64, Option<String>)]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = keys_of(h, lock_prefix).await;
        if check(&keys) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: the keys are {keys:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `.lock` is the gate of a reader/writer lock, locked by a session.
fn gate_locked(keys: &[(String, u64, Option<String>)]) -> bool {
    keys.iter().any(|(key, flags, session)| key.ends_with("/.lock") && *flags == RW_FLAG && session.is_some())
}

/// Runs `consul lock [options] PREFIX` and asserts it gives up without
/// running its command.
async fn assert_consul_lock_refused(h: &ConsulHarness, options: &[&str], prefix: &str, why: &str) {
    let mut refused = consul_lock(h, options, prefix, "echo wrongly-ran");
    let status = timeout(Duration::from_secs(20), refused.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if !s.success()), "consul lock {options:?} was not refused ({why}): {status:?}");
    assert_eq!(refused.next_line().await, None, "consul lock {options:?} ran its command while {why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_lock_is_refused_while_readers_or_a_writer_hold() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("shared with readers");
    let prefix = lock_consul::native_lock_prefix(PREFIX, key.as_str());
    let (first, second) = (h.client().await, h.client().await);
    let readers = [
        first.locks.read_lock(key.as_str()).try_acquire().await.ok().flatten(),
        second.locks.read_lock(key.as_str()).try_acquire().await.ok().flatten(),
    ];
    let [Some(reader), Some(other_reader)] = readers else { panic!("two readers could not share a free key") };
    for options in [&[][..], &["-n", "2"]] {
        assert_consul_lock_refused(&h, options, &prefix, "two readers hold the prefix").await;
    }
    assert!(reader.release().await.is_ok() && other_reader.release().await.is_ok());
    let writer = first.locks.write_lock(key.as_str()).try_acquire().await.ok().flatten();
    let writer = writer.unwrap_or_else(|| panic!("the writer could not take the key after the readers"));
    for options in [&[][..], &["-n", "2"]] {
        assert_consul_lock_refused(&h, options, &prefix, "a writer holds the prefix").await;
    }
    assert!(!writer.is_lost(), "a refused consul lock disturbed the writer");
    assert!(writer.release().await.is_ok());
    // `consul lock -n` leaves its contender key behind until its session
    // expires (Consul's semaphore does not delete it when refused); end
    // those sessions so the prefix is checked clean now.
    for (_, flags, session) in keys_of(&h, &prefix).await {
        if let Some(session) = session.filter(|_| flags != RW_FLAG) {
            h.destroy_session(&session).await;
        }
    }
    await_keys(&h, &prefix, "nothing left after the last reader and writer", <[_]>::is_empty).await;
    let mut native = consul_lock(&h, &[], &prefix, "echo acquired");
    let line = timeout(Duration::from_secs(10), native.next_line()).await.ok().flatten();
    assert_eq!(line.as_deref(), Some("acquired"), "consul lock could not take the prefix once the readers had gone");
    let status = timeout(Duration::from_secs(10), native.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "consul lock failed: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_wait_while_consul_lock_holds_and_leave_it_its_clean_up() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("held by consul lock");
    let prefix = lock_consul::native_lock_prefix(PREFIX, key.as_str());
    let client = h.client().await;
    let mut native = consul_lock(&h, &[], &prefix, "echo held; sleep 2; date +%s%N");
    let line = timeout(Duration::from_secs(10), native.next_line()).await.ok().flatten();
    assert_eq!(line.as_deref(), Some("held"), "consul lock did not take the lock");
    let attempt = client.locks.read_lock(key.as_str()).try_acquire().await;
    assert!(matches!(attempt, Ok(None)), "a reader got in beside consul lock: {attempt:?}");
    let guard = client.locks.read_lock(key.as_str()).wait(Duration::from_secs(20)).acquire().await;
    let guard = guard.unwrap_or_else(|e| panic!("the reader never got the lock after consul lock: {e}"));
    let granted_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).ok();
    let finished_at = timeout(Duration::from_secs(5), native.next_line()).await.ok().flatten();
    let finished_at = finished_at.and_then(|line| line.parse::<u128>().ok());
    assert!(
        matches!((finished_at, granted_at), (Some(finished), Some(granted)) if finished <= granted),
        "the reader was granted while consul lock's command still ran ({finished_at:?} vs {granted_at:?})"
    );
    // consul lock deletes its key after releasing it; a reader taking the
    // prefix over in between would make that clean-up, and the command, fail.
    let status = timeout(Duration::from_secs(10), native.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "consul lock failed its clean-up: {status:?}");
    assert!(guard.release().await.is_ok());
    await_keys(&h, &prefix, "nothing left after the reader", <[_]>::is_empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_and_reader_writer_locks_on_one_key_exclude_each_other() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("mutex and readers");
    let prefix = lock_consul::native_lock_prefix(PREFIX, key.as_str());
    let (mutex_client, reader_client, late) = (h.client().await, h.client().await, h.client().await);
    let mutex = mutex_client.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let mutex = mutex.unwrap_or_else(|| panic!("could not take a free key"));
    for mode in [LockMode::Read, LockMode::Write] {
        let attempt = reader_client.locks.lock(key.as_str()).mode(mode).try_acquire().await;
        assert!(matches!(attempt, Ok(None)), "{mode} got in beside the mutex: {attempt:?}");
    }
    let reader = tokio::spawn({
        let locks = reader_client.locks.clone();
        let key = key.clone();
        async move { locks.read_lock(key.as_str()).wait(Duration::from_secs(20)).acquire().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!reader.is_finished(), "a reader was granted while the mutex was held");
    let mutex_token = mutex.token();
    assert!(mutex.release().await.is_ok());
    let reader = timeout(Duration::from_secs(5), reader).await.ok().and_then(Result::ok).and_then(Result::ok);
    let reader = reader.unwrap_or_else(|| panic!("the reader was not granted after the mutex's release"));
    assert!(reader.token() > mutex_token, "read token not above the mutex's");
    // A mutex now queues behind the reader, and holds back later readers.
    let attempt = mutex_client.locks.lock(key.as_str()).try_acquire().await;
    assert!(matches!(attempt, Ok(None)), "the mutex got in beside a reader: {attempt:?}");
    let queued = tokio::spawn({
        let locks = mutex_client.locks.clone();
        let key = key.clone();
        async move { locks.lock(key.as_str()).wait(Duration::from_secs(20)).acquire().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempt = late.locks.read_lock(key.as_str()).try_acquire().await;
    assert!(matches!(attempt, Ok(None)), "a reader passed the waiting mutex: {attempt:?}");
    let reader_token = reader.token();
    assert!(reader.release().await.is_ok());
    let queued = timeout(Duration::from_secs(5), queued).await.ok().and_then(Result::ok).and_then(Result::ok);
    let queued = queued.unwrap_or_else(|| panic!("the queued mutex was not granted after the reader's release"));
    assert_eq!(queued.mode(), LockMode::Exclusive);
    assert!(queued.token() > reader_token, "the queued mutex's token is not above the reader's");
    let holders = late.locks.holders(key.as_str()).await.unwrap_or_else(|e| panic!("holders: {e}"));
    assert_eq!(holders.iter().map(|i| (i.token, i.mode)).collect::<Vec<_>>(), [(queued.token(), LockMode::Exclusive)]);
    let attempt = late.locks.read_lock(key.as_str()).try_acquire().await;
    assert!(matches!(attempt, Ok(None)), "a reader got in beside the queued mutex: {attempt:?}");
    assert_consul_lock_refused(&h, &["-timeout=1s"], &prefix, "a mutex holds the prefix in line").await;
    assert!(queued.release().await.is_ok());
    await_keys(&h, &prefix, "nothing left after the mutex", <[_]>::is_empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waiting_behind_a_plain_lock_goes_before_later_readers() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("writer first");
    let (holder, writer_client, reader_client) = (h.client().await, h.client().await, h.client().await);
    let mutex = holder.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
    let mutex = mutex.unwrap_or_else(|| panic!("could not take a free key"));
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = tokio::spawn({
        let (locks, key, order) = (writer_client.locks.clone(), key.clone(), std::sync::Arc::clone(&order));
        async move {
            let guard = locks.write_lock(key.as_str()).wait(Duration::from_secs(20)).acquire().await?;
            order.lock().unwrap_or_else(|p| p.into_inner()).push(("writer", guard.token()));
            tokio::time::sleep(Duration::from_millis(300)).await;
            guard.release().await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reader = tokio::spawn({
        let (locks, key, order) = (reader_client.locks.clone(), key.clone(), std::sync::Arc::clone(&order));
        async move {
            let guard = locks.read_lock(key.as_str()).wait(Duration::from_secs(20)).acquire().await?;
            order.lock().unwrap_or_else(|p| p.into_inner()).push(("reader", guard.token()));
            guard.release().await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(mutex.release().await.is_ok());
    for (who, task) in [("writer", writer), ("reader", reader)] {
        let outcome = timeout(Duration::from_secs(10), task).await;
        assert!(matches!(outcome, Ok(Ok(Ok(())))), "the {who}: {outcome:?}");
    }
    let order = order.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(order.iter().map(|(who, _)| *who).collect::<Vec<_>>(), ["writer", "reader"], "{order:?}");
    assert!(order[1].1 > order[0].1, "the reader's token does not follow the writer's: {order:?}");
    let prefix = lock_consul::native_lock_prefix(PREFIX, key.as_str());
    await_keys(&h, &prefix, "nothing left after the writer and the reader", <[_]>::is_empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_goes_with_the_last_contender_also_when_sessions_are_destroyed() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("destroyed readers");
    let prefix = lock_consul::native_lock_prefix(PREFIX, key.as_str());
    let (first, second) = (h.client().await, h.client().await);
    let gate_holder = first.locks.read_lock(key.as_str()).try_acquire().await.ok().flatten();
    let survivor = second.locks.read_lock(key.as_str()).try_acquire().await.ok().flatten();
    let (Some(gate_holder), Some(survivor)) = (gate_holder, survivor) else { panic!("two readers could not share") };
    // The first reader's session locks the gate; destroying it deletes the
    // gate with it, under a lock delay. The survivor writes it back at once
    // and locks it once the delay has passed; consul lock, started in the
    // gap, is refused by the lock delay and then by the gate.
    first.control.end_session().await;
    let mut refused = consul_lock(&h, &[], &prefix, "echo wrongly-ran");
    let reason = timeout(Duration::from_secs(1), gate_holder.lost()).await;
    assert_eq!(reason.ok(), Some(LostReason::SessionEnded), "the destroyed session's reader was not told");
    await_keys(&h, &prefix, "the survivor's session locks the gate", gate_locked).await;
    let status = timeout(Duration::from_secs(20), refused.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if !s.success()), "consul lock was not refused in the gap: {status:?}");
    assert_eq!(refused.next_line().await, None, "consul lock ran its command beside the surviving reader");
    assert!(!survivor.is_lost(), "the surviving reader lost its lock with the other reader's session");
    assert!(survivor.release().await.is_ok());
    await_keys(&h, &prefix, "nothing left after the survivor", <[_]>::is_empty).await;
    // The last contender's session destroyed from outside: its key and the
    // gate go with it.
    let alone = second.locks.write_lock(key.as_str()).wait(Duration::from_secs(10)).acquire().await;
    let alone = alone.unwrap_or_else(|e| panic!("could not take the key again: {e}"));
    second.control.end_session().await;
    assert_eq!(timeout(Duration::from_secs(1), alone.lost()).await.ok(), Some(LostReason::SessionEnded));
    await_keys(&h, &prefix, "nothing left after the last session was destroyed", <[_]>::is_empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_replies_are_lost_leaves_no_orphan_key_or_gate() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("lost reader reply");
    let client = h.client().await;
    client.control.lose_replies().await;
    let attempt = client.locks.read_lock(key.as_str()).try_acquire().await;
    assert!(attempt.is_err(), "an acquisition whose replies were held back succeeded: {attempt:?}");
    assert_eq!(h.leftover(ns.prefix()).await, 2, "the contender key and the gate did not reach Consul");
    client.control.restore().await;
    // The client knows its contender key by name and takes it out, with the gate.
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.leftover(ns.prefix()).await != 0 {
        assert!(Instant::now() < deadline, "the unanswered acquisition left its keys behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = h.client().await;
    let next = other.locks.write_lock(key.as_str()).try_acquire().await;
    assert!(matches!(&next, Ok(Some(_))), "the key was not free after the cleanup: {next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_key_is_deleted_from_outside_reports_lost_and_leaves_no_gate() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("broken reader");
    let prefix = lock_consul::native_lock_prefix(PREFIX, key.as_str());
    let client = h.client().await;
    let reader = client.locks.read_lock(key.as_str()).try_acquire().await.ok().flatten();
    let reader = reader.unwrap_or_else(|| panic!("could not take a free key"));
    h.break_lock(&key).await;
    let reason = timeout(Duration::from_secs(1), reader.lost()).await;
    assert_eq!(reason.ok(), Some(LostReason::Revoked), "the deletion was not reported within 1 s");
    // Its client takes the orphaned gate out at once, so consul lock is not
    // refused on a lock nobody holds.
    await_keys(&h, &prefix, "the gate outlived its last contender", <[_]>::is_empty).await;
    assert!(matches!(reader.release().await, Err(lock_core::LockError::Lost { .. })));
}
