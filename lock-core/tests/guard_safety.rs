//! Safety of the guard and the request builder on the reference backend:
//! what a holder sees after its process was paused, and deadlines that
//! cannot be represented.

use std::time::Duration;

use lock_core::{Locks, MemoryLock, MemoryStore};

/// A holder whose whole process was paused (SIGSTOP, a long GC) past its TTL
/// must see the loss on the first look after it resumes, before the
/// watchdog task has had a chance to run: its next write may already be
/// another holder's turn.
#[test]
fn is_lost_counts_the_own_clock_after_a_pause() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let runtime = runtime.unwrap_or_else(|e| panic!("no runtime: {e}"));
    runtime.block_on(async {
        let locks = Locks::new(MemoryLock::new());
        let guard = locks.lock("paused").ttl(Duration::from_millis(100)).acquire().await;
        let guard = guard.unwrap_or_else(|e| panic!("acquire: {e}"));
        assert!(!guard.is_lost());
        // Blocks the only runtime thread: neither the renewal nor the
        // watchdog can run, as in a paused process.
        std::thread::sleep(Duration::from_millis(250));
        assert!(guard.is_lost(), "a guard past its TTL without renewal still says it holds the lock");
        assert_eq!(guard.remaining(), Duration::ZERO);
    });
}

/// `wait(Duration::MAX)` means "wait as long as it takes", never a panic.
#[tokio::test]
async fn an_unrepresentable_wait_means_forever() {
    let locks = Locks::new(MemoryLock::new());
    let guard = locks.lock("forever").wait(Duration::MAX).acquire().await;
    assert!(guard.is_ok(), "{guard:?}");
    let other = Locks::new(MemoryLock::new());
    let request = other.lock("forever").wait(Duration::MAX);
    drop(request);
}

/// Ending sessions over and over keeps the store's memory bounded.
#[test]
fn ended_sessions_are_not_remembered_forever() {
    let store = MemoryStore::new();
    let client = store.client();
    for _ in 0..1_000 {
        client.end_session();
        drop(store.client());
    }
    assert!(store.session_records() <= 2, "the store keeps {} session records", store.session_records());
}

/// A backend that grants every key with proof of liveness from long ago, as
/// a waiter whose grant reached it only after its lease had run out would.
#[derive(Debug, Default)]
struct StaleGrants {
    released: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl lock_core::DistributedLock for StaleGrants {
    fn backend(&self) -> &'static str {
        "stale"
    }

    fn capabilities(&self) -> lock_core::Capabilities {
        lock_core::Capabilities::new(Duration::from_millis(10), Duration::from_secs(60))
    }

    async fn acquire(
        &self,
        key: &lock_core::LockKey,
        options: &lock_core::LockOptions,
        _deadline: Option<tokio::time::Instant>,
    ) -> Result<lock_core::Lease, lock_core::LockError> {
        let ttl = options.effective_ttl(&self.capabilities());
        let long_ago = tokio::time::Instant::now().checked_sub(ttl * 2).unwrap_or_else(tokio::time::Instant::now);
        Ok(lock_core::Lease::new(
            key.clone(),
            lock_core::FencingToken::new(1),
            options.owner_value().to_owned(),
            ttl,
            long_ago,
            lock_core::LossSignal::new(),
            std::sync::Arc::new(()),
        ))
    }

    async fn try_acquire(
        &self,
        key: &lock_core::LockKey,
        options: &lock_core::LockOptions,
    ) -> Result<Option<lock_core::Lease>, lock_core::LockError> {
        self.acquire(key, options, None).await.map(Some)
    }

    async fn renew(&self, lease: &lock_core::Lease) -> Result<tokio::time::Instant, lock_core::LockError> {
        Ok(lease.confirmed_at())
    }

    async fn release(&self, _lease: &lock_core::Lease) -> Result<(), lock_core::LockError> {
        self.released.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn inspect(&self, _key: &lock_core::LockKey) -> Result<Option<lock_core::LockInfo>, lock_core::LockError> {
        Ok(None)
    }
}

/// Found by the fault campaign on etcd: a grant that reaches the client only
/// after it can no longer be proven held (its lease ran out while the client
/// was cut off) is never handed out as a guard: acquire fails with `Lost`
/// and gives back what the service may still hold.
#[tokio::test]
async fn a_grant_that_can_no_longer_be_proven_held_is_not_handed_out() {
    let backend = std::sync::Arc::new(StaleGrants::default());
    let locks = Locks::from_backend(backend.clone());
    let acquired = locks.lock("stale").ttl(Duration::from_secs(1)).acquire().await;
    assert!(matches!(acquired, Err(lock_core::LockError::Lost { .. })), "{acquired:?}");
    let tried = locks.lock("stale").ttl(Duration::from_secs(1)).try_acquire().await;
    assert!(matches!(tried, Err(lock_core::LockError::Lost { .. })), "{tried:?}");
    assert_eq!(backend.released.load(std::sync::atomic::Ordering::Relaxed), 2, "the stale grants were not given back");
}

/// The reference backend, with renewals that take 300 ms and a record of
/// whether a release ever met one still in flight.
#[derive(Debug)]
struct SlowRenewals {
    inner: MemoryLock,
    renewing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    renewals_started: std::sync::atomic::AtomicUsize,
    releases_during_renewal: std::sync::atomic::AtomicUsize,
}

/// Clears the in-flight mark however the renewal ends (answered or dropped).
struct InFlight(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl lock_core::DistributedLock for SlowRenewals {
    fn backend(&self) -> &'static str {
        "slow-renewals"
    }

    fn capabilities(&self) -> lock_core::Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(
        &self,
        key: &lock_core::LockKey,
        options: &lock_core::LockOptions,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<lock_core::Lease, lock_core::LockError> {
        self.inner.acquire(key, options, deadline).await
    }

    async fn try_acquire(
        &self,
        key: &lock_core::LockKey,
        options: &lock_core::LockOptions,
    ) -> Result<Option<lock_core::Lease>, lock_core::LockError> {
        self.inner.try_acquire(key, options).await
    }

    async fn renew(&self, lease: &lock_core::Lease) -> Result<tokio::time::Instant, lock_core::LockError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.renewing.store(true, SeqCst);
        let _in_flight = InFlight(std::sync::Arc::clone(&self.renewing));
        self.renewals_started.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.inner.renew(lease).await
    }

    async fn release(&self, lease: &lock_core::Lease) -> Result<(), lock_core::LockError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.renewing.load(SeqCst) {
            self.releases_during_renewal.fetch_add(1, SeqCst);
        }
        self.inner.release(lease).await
    }

    async fn inspect(&self, key: &lock_core::LockKey) -> Result<Option<lock_core::LockInfo>, lock_core::LockError> {
        self.inner.inspect(key).await
    }
}

/// A release never talks to the service while the guard's own renewal is
/// still in flight: the renewal is stopped first. (Releases that meet no
/// renewal skip that wait; this is the case where it matters.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_never_overlaps_the_guards_own_renewal() {
    use std::sync::atomic::Ordering::SeqCst;
    let backend = std::sync::Arc::new(SlowRenewals {
        inner: MemoryLock::new(),
        renewing: std::sync::Arc::default(),
        renewals_started: std::sync::atomic::AtomicUsize::new(0),
        releases_during_renewal: std::sync::atomic::AtomicUsize::new(0),
    });
    let locks = Locks::from_backend(std::sync::Arc::clone(&backend) as _);
    for round in 0..20 {
        // Renewed every TTL / 3 = 100 ms; each renewal takes 300 ms.
        let started_before = backend.renewals_started.load(SeqCst);
        let guard = locks.lock(format!("renewing-{round}")).ttl(Duration::from_millis(300)).acquire().await;
        let guard = guard.unwrap_or_else(|e| panic!("acquire: {e}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while backend.renewals_started.load(SeqCst) == started_before {
            assert!(tokio::time::Instant::now() < deadline, "round {round}: no renewal started within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Released while the renewal is in flight (the lock may be lost by
        // now: the renewal is slower than the TTL; that is fine here).
        let _ = guard.release().await;
    }
    let overlaps = backend.releases_during_renewal.load(SeqCst);
    assert_eq!(overlaps, 0, "{overlaps} of 20 releases talked to the service beside a renewal");
}
