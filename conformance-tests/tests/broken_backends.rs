//! The suite must be able to fail: each deliberately broken backend here is
//! a memory backend with one fault, and the case that guards against that
//! fault must fail on it (by panicking, not by hanging).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use conformance_tests::memory::MemoryHarness;
use conformance_tests::{Harness, cases};
use lock_core::{
    Capabilities, DistributedLock, FencingToken, Lease, LockError, LockInfo, LockKey, LockOptions, LossSignal,
    MemoryLock,
};
use tokio::time::Instant;

/// A case must fail within this; a case that hangs instead is a bug too.
const LIMIT: Duration = Duration::from_secs(120);

async fn assert_caught<F, Fut>(fault: &str, wrap: conformance_tests::memory::Wrap, case: F)
where
    F: FnOnce(Arc<dyn Harness>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let harness: Arc<dyn Harness> = Arc::new(MemoryHarness::wrapping(wrap));
    match tokio::time::timeout(LIMIT, tokio::spawn(case(harness))).await {
        Ok(Err(error)) if error.is_panic() => {}
        Ok(Err(error)) => panic!("case for {fault} did not run: {error}"),
        Ok(Ok(())) => panic!("the suite passed a backend with the fault: {fault}"),
        Err(_) => panic!("the case for {fault} hung instead of failing"),
    }
}

/// Which fault a [`Faulty`] backend injects.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Grants every request without asking the service.
    NoExclusion,
    /// Hands out the same token every time.
    ConstantToken,
    /// Waits in a detached task, so a dropped acquire still queues and holds.
    GhostWaiter,
    /// Asks the service for a TTL a thousand times longer than requested.
    NoExpiry,
    /// Renews without asking and never fires the loss signal.
    LossNotReported,
    /// Releases by deleting the key, whoever holds it.
    StaleRelease,
}

/// A memory client with one fault.
#[derive(Debug)]
struct Faulty {
    inner: Arc<MemoryLock>,
    fault: Fault,
}

static FAKE_TOKENS: AtomicU64 = AtomicU64::new(1);

impl Faulty {
    fn wrap(inner: Arc<MemoryLock>, fault: Fault) -> Arc<dyn DistributedLock> {
        Arc::new(Self { inner, fault })
    }

    /// Re-issues `inner` under this backend, keeping it for renew and release.
    fn rewrap(&self, inner: Lease) -> Lease {
        let token = match self.fault {
            Fault::ConstantToken => FencingToken::new(1),
            _ => inner.token(),
        };
        let loss = match self.fault {
            Fault::LossNotReported => LossSignal::new(),
            _ => inner.loss_signal().clone(),
        };
        let ttl = match self.fault {
            Fault::NoExpiry => inner.ttl() / 1000,
            _ => inner.ttl(),
        };
        let (key, owner, confirmed_at) = (inner.key().clone(), inner.owner().to_owned(), inner.confirmed_at());
        Lease::new(key, token, owner, ttl, confirmed_at, loss, Arc::new(inner))
    }

    fn options(&self, options: &LockOptions) -> LockOptions {
        match self.fault {
            Fault::NoExpiry => {
                let ttl = options.effective_ttl(&self.inner.capabilities());
                options.clone().ttl(ttl * 1000)
            }
            _ => options.clone(),
        }
    }

    fn inner_lease(lease: &Lease) -> &Lease {
        lease.backend_data::<Lease>().unwrap_or(lease)
    }
}

#[async_trait]
impl DistributedLock for Faulty {
    fn backend(&self) -> &'static str {
        "faulty-memory"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
    ) -> Result<Lease, LockError> {
        match self.fault {
            Fault::NoExclusion => {
                self.try_acquire(key, options).await.map(|lease| lease.unwrap_or_else(|| unreachable!()))
            }
            Fault::GhostWaiter => {
                let (inner, key, options) = (Arc::clone(&self.inner), key.clone(), options.clone());
                let waiting = tokio::spawn(async move { inner.acquire(&key, &options, deadline).await });
                let lease = waiting.await.map_err(|e| LockError::backend("faulty-memory", None, e))??;
                Ok(self.rewrap(lease))
            }
            _ => Ok(self.rewrap(self.inner.acquire(key, &self.options(options), deadline).await?)),
        }
    }

    async fn try_acquire(&self, key: &LockKey, options: &LockOptions) -> Result<Option<Lease>, LockError> {
        if let Fault::NoExclusion = self.fault {
            let token = FencingToken::new(FAKE_TOKENS.fetch_add(1, Ordering::SeqCst));
            let ttl = options.effective_ttl(&self.capabilities());
            let owner = options.owner_value().to_owned();
            return Ok(Some(Lease::new(
                key.clone(),
                token,
                owner,
                ttl,
                Instant::now(),
                LossSignal::new(),
                Arc::new(()),
            )));
        }
        Ok(self.inner.try_acquire(key, &self.options(options)).await?.map(|lease| self.rewrap(lease)))
    }

    async fn renew(&self, lease: &Lease) -> Result<Instant, LockError> {
        match self.fault {
            Fault::NoExclusion | Fault::LossNotReported => Ok(Instant::now()),
            _ => self.inner.renew(Self::inner_lease(lease)).await,
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        match self.fault {
            Fault::NoExclusion => Ok(()),
            Fault::StaleRelease => {
                self.inner.store().delete(lease.key());
                Ok(())
            }
            _ => self.inner.release(Self::inner_lease(lease)).await,
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, LockError> {
        self.inner.inspect(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mutual_exclusion_is_caught() {
    assert_caught(
        "no mutual exclusion",
        |l| Faulty::wrap(l, Fault::NoExclusion),
        cases::mutual_exclusion_across_clients,
    )
    .await;
    assert_caught(
        "no mutual exclusion",
        |l| Faulty::wrap(l, Fault::NoExclusion),
        cases::try_acquire_on_held_key_fails_fast,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_not_increasing_is_caught() {
    assert_caught(
        "constant fencing token",
        |l| Faulty::wrap(l, Fault::ConstantToken),
        cases::fencing_tokens_strictly_increase,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghost_waiter_after_cancel_is_caught() {
    assert_caught(
        "ghost waiter after cancel",
        |l| Faulty::wrap(l, Fault::GhostWaiter),
        cases::cancelled_acquire_leaves_no_ghost,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_expiry_is_caught() {
    assert_caught("no expiry", |l| Faulty::wrap(l, Fault::NoExpiry), cases::unrenewed_lock_expires).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_not_reported_is_caught() {
    assert_caught(
        "loss not reported",
        |l| Faulty::wrap(l, Fault::LossNotReported),
        cases::lock_broken_from_outside_is_reported_lost,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_release_of_a_new_holder_is_caught() {
    assert_caught(
        "stale release frees the next holder",
        |l| Faulty::wrap(l, Fault::StaleRelease),
        cases::lock_broken_from_outside_is_reported_lost,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_cases_pass_without_faults() {
    let harness = || -> Arc<dyn Harness> { Arc::new(MemoryHarness::new()) };
    cases::mutual_exclusion_across_clients(harness()).await;
    cases::fencing_tokens_strictly_increase(harness()).await;
    cases::cancelled_acquire_leaves_no_ghost(harness()).await;
    cases::unrenewed_lock_expires(harness()).await;
    cases::lock_broken_from_outside_is_reported_lost(harness()).await;
}
