//! Reader/writer locks on ZooKeeper beside the real Apache Curator (Debian's,
//! compiled at run time): Curator's `InterProcessReadWriteLock` and
//! distlock's share as readers and exclude as writers, both ways; and
//! distlock's mutex and reader/writer lock exclude each other on one key.
#![cfg(feature = "zk")]

use std::process::Stdio;
use std::time::Duration;

use conformance_tests::process::NativeCommand;
use conformance_tests::zk::{BASE, ZkHarness, curator_command};
use conformance_tests::{Harness, Namespace};
use lock_core::{LockGuard, LockKey, LockMode, Locks};
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::time::{Instant, sleep, timeout};

/// How long a JVM may take to start, connect and answer.
const JVM: Duration = Duration::from_secs(60);

/// How long a distlock waiter waits at most.
const WAIT: Duration = Duration::from_secs(30);

/// One side of a Curator `InterProcessReadWriteLock`, asked for by a JVM of
/// its own (`tests/curator/CuratorReadWriteLock.java`).
struct Curator {
    java: NativeCommand,
    stdin: Option<ChildStdin>,
    what: String,
}

impl Curator {
    /// Asks for `side` (`read` or `write`) of `key`, waiting at most `wait`
    /// (zero: one look).
    async fn start(h: &ZkHarness, key: &LockKey, side: &str, wait: Duration) -> Self {
        let path = lock_zk::lock_path(BASE, key);
        let wait = wait.as_millis().to_string();
        let mut command = curator_command("CuratorReadWriteLock", &[h.upstream(), &path, side, &wait]).await;
        command.stdin(Stdio::piped()).stderr(Stdio::null());
        let mut java = NativeCommand::spawn(command);
        let stdin = java.child.stdin.take();
        Self { java, stdin, what: format!("Curator's {side} lock on {key}") }
    }

    /// When it got the lock (its clock, in ms), or `None` when it was refused.
    async fn outcome(&mut self) -> Option<u128> {
        let line = timeout(JVM, self.java.next_line()).await.ok().flatten();
        match line.as_deref() {
            Some("timeout") => None,
            Some(line) => Some(millis_after(line, "held ").unwrap_or_else(|| panic!("{}: said {line:?}", self.what))),
            None => panic!("{}: no answer within {JVM:?}", self.what),
        }
    }

    /// When it got the lock; fails the test if it was refused.
    async fn held(&mut self) -> u128 {
        self.outcome().await.unwrap_or_else(|| panic!("{} was refused", self.what))
    }

    /// Fails the test unless it was refused; waits for the JVM to end.
    async fn refused(mut self) {
        if let Some(at) = self.outcome().await {
            panic!("{} was granted at {at}", self.what);
        }
        let _ = timeout(JVM, self.java.child.wait()).await;
    }

    /// Releases the lock; returns the time (its clock) just before it did.
    async fn release(mut self) -> u128 {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"release\n").await;
        }
        let line = timeout(JVM, self.java.next_line()).await.ok().flatten().unwrap_or_default();
        let released = millis_after(&line, "released ").unwrap_or_else(|| panic!("{}: said {line:?}", self.what));
        let status = timeout(JVM, self.java.child.wait()).await;
        assert!(matches!(status, Ok(Ok(s)) if s.success()), "{} failed: {status:?}", self.what);
        released
    }
}

fn millis_after(line: &str, prefix: &str) -> Option<u128> {
    line.strip_prefix(prefix)?.trim().parse().ok()
}

fn millis_now() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// Takes the free (or read-shared) `key` in `mode` at once.
async fn take(locks: &Locks, key: &LockKey, mode: LockMode) -> LockGuard {
    match locks.lock(key.as_str()).mode(mode).try_acquire().await {
        Ok(Some(guard)) => guard,
        other => panic!("distlock could not take {key} in {mode} mode: {other:?}"),
    }
}

/// Fails the test if `key` can be taken in `mode` at once.
async fn refused(locks: &Locks, key: &LockKey, mode: LockMode, why: &str) {
    match locks.lock(key.as_str()).mode(mode).try_acquire().await {
        Ok(None) => {}
        other => panic!("distlock's {mode} attempt on {key} ({why}): {other:?}"),
    }
}

/// Waits in `mode` for `key` in a task of its own; yields the guard and
/// when it was granted.
fn wait_for(locks: &Locks, key: &LockKey, mode: LockMode) -> tokio::task::JoinHandle<(LockGuard, u128)> {
    let (locks, key) = (locks.clone(), key.clone());
    tokio::spawn(async move {
        let guard = locks.lock(key.as_str()).mode(mode).wait(WAIT).acquire().await;
        let guard = guard.unwrap_or_else(|e| panic!("distlock's {mode} wait for {key}: {e}"));
        (guard, millis_now())
    })
}

async fn granted(waiting: tokio::task::JoinHandle<(LockGuard, u128)>) -> (LockGuard, u128) {
    waiting.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Waits until nothing is left under the namespace.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_and_distlock_readers_share() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("read by both");
    let (client, other) = (h.client().await, h.client().await);
    let mut curator = Curator::start(&h, &key, "read", JVM).await;
    curator.held().await;
    let ours = take(&client.locks, &key, LockMode::Read).await;
    let holders = client.locks.holders(key.as_str()).await.unwrap_or_else(|e| panic!("holders: {e}"));
    assert_eq!(holders.len(), 2, "Curator's reader and ours both hold: {holders:?}");
    assert!(holders.iter().all(|holder| holder.mode == LockMode::Read), "{holders:?}");
    refused(&other.locks, &key, LockMode::Write, "Curator and distlock read it").await;
    refused(&other.locks, &key, LockMode::Exclusive, "Curator and distlock read it").await;
    // A Curator reader coming while both read shares with them too.
    let mut second = Curator::start(&h, &key, "read", Duration::ZERO).await;
    second.held().await;
    second.release().await;
    curator.release().await;
    refused(&other.locks, &key, LockMode::Write, "distlock still reads it").await;
    release(ours).await;
    release(take(&other.locks, &key, LockMode::Write).await).await;
    await_clean(&h, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_writer_excludes_distlock_readers_and_writers() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("written by curator");
    let client = h.client().await;
    let mut curator = Curator::start(&h, &key, "write", JVM).await;
    curator.held().await;
    let holder = client.locks.inspect(key.as_str()).await.ok().flatten();
    let holder = holder.unwrap_or_else(|| panic!("inspect does not see Curator's writer"));
    assert_eq!(holder.mode, LockMode::Write, "{holder:?}");
    for mode in [LockMode::Read, LockMode::Write, LockMode::Exclusive] {
        refused(&client.locks, &key, mode, "Curator writes it").await;
    }
    let reader = wait_for(&client.locks, &key, LockMode::Read);
    h.await_contenders(&key, 2, JVM, "the contenders").await;
    let released_at = curator.release().await;
    let (reader, granted_at) = granted(reader).await;
    assert!(granted_at >= released_at, "distlock read at {granted_at}, before Curator released at {released_at}");
    assert!(reader.token() > holder.token, "read token {} after write token {}", reader.token(), holder.token);
    release(reader).await;
    await_clean(&h, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distlock_writer_excludes_curator_readers_and_writers() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("written by distlock");
    let client = h.client().await;
    let writer = take(&client.locks, &key, LockMode::Write).await;
    Curator::start(&h, &key, "read", Duration::ZERO).await.refused().await;
    Curator::start(&h, &key, "write", Duration::ZERO).await.refused().await;
    let mut reader = Curator::start(&h, &key, "read", JVM).await;
    h.await_contenders(&key, 2, JVM, "the contenders").await;
    let released_at = millis_now();
    release(writer).await;
    let held_at = reader.held().await;
    assert!(held_at >= released_at, "Curator read at {held_at}, before distlock released at {released_at}");
    reader.release().await;
    await_clean(&h, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distlock_reader_shares_with_curator_readers_and_excludes_curator_writers() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("read by distlock");
    let (client, late) = (h.client().await, h.client().await);
    let ours = take(&client.locks, &key, LockMode::Read).await;
    let mut reader = Curator::start(&h, &key, "read", Duration::ZERO).await;
    reader.held().await;
    reader.release().await;
    Curator::start(&h, &key, "write", Duration::ZERO).await.refused().await;
    let mut writer = Curator::start(&h, &key, "write", JVM).await;
    h.await_contenders(&key, 2, JVM, "the contenders").await;
    // A waiting Curator writer holds back distlock readers that come later.
    refused(&late.locks, &key, LockMode::Read, "a Curator writer waits ahead").await;
    let released_at = millis_now();
    release(ours).await;
    let held_at = writer.held().await;
    assert!(held_at >= released_at, "Curator wrote at {held_at}, before distlock released at {released_at}");
    let later = wait_for(&late.locks, &key, LockMode::Read);
    h.await_contenders(&key, 2, JVM, "the contenders").await;
    let write_released = writer.release().await;
    let (later, granted_at) = granted(later).await;
    assert!(granted_at >= write_released, "distlock read at {granted_at}, before Curator released");
    release(later).await;
    await_clean(&h, &ns).await;
}

/// Our mutex queues behind read and write nodes, and our readers treat a
/// mutex node as a writer: on one key they exclude each other, and a waiting
/// mutex contender holds back later readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_and_reader_writer_exclude_each_other() {
    let h = ZkHarness::from_env();
    let ns = Namespace::new();
    let key = ns.key("mixed");
    let (a, b, c) = (h.client().await, h.client().await, h.client().await);
    let mutex = take(&a.locks, &key, LockMode::Exclusive).await;
    refused(&b.locks, &key, LockMode::Read, "the mutex holds it").await;
    refused(&b.locks, &key, LockMode::Write, "the mutex holds it").await;
    release(mutex).await;
    let writer = take(&a.locks, &key, LockMode::Write).await;
    refused(&b.locks, &key, LockMode::Exclusive, "a writer holds it").await;
    release(writer).await;

    let reader = take(&a.locks, &key, LockMode::Read).await;
    refused(&b.locks, &key, LockMode::Exclusive, "a reader holds it").await;
    let waiting_mutex = wait_for(&b.locks, &key, LockMode::Exclusive);
    h.await_contenders(&key, 2, JVM, "the contenders").await;
    refused(&c.locks, &key, LockMode::Read, "a mutex contender waits ahead").await;
    let read_token = reader.token();
    release(reader).await;
    let (mutex, _) = granted(waiting_mutex).await;
    assert!(mutex.token() > read_token, "mutex token {} after read token {read_token}", mutex.token());
    let waiting_reader = wait_for(&c.locks, &key, LockMode::Read);
    h.await_contenders(&key, 2, JVM, "the contenders").await;
    let mutex_token = mutex.token();
    release(mutex).await;
    let (reader, _) = granted(waiting_reader).await;
    assert!(reader.token() > mutex_token, "read token {} after mutex token {mutex_token}", reader.token());
    release(reader).await;
    await_clean(&h, &ns).await;
}
