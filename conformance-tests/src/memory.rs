//! The harness for the in-memory reference backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{DistributedLock, LockError, LockKey, Locks, MemoryLock, MemoryStore};

use crate::{ClientControl, Harness, TestClient};

/// Wraps a fresh memory client into the backend under test; the identity for
/// the real backend, a fault injector for the suite's own tests.
pub type Wrap = fn(Arc<MemoryLock>) -> Arc<dyn DistributedLock>;

/// Runs the suite on [`MemoryLock`] clients of one [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryHarness {
    store: MemoryStore,
    wrap: Wrap,
}

impl MemoryHarness {
    /// The harness for the real memory backend.
    pub fn new() -> Self {
        Self::wrapping(|lock| lock)
    }

    /// A harness whose clients are `wrap`ped memory clients.
    pub fn wrapping(wrap: Wrap) -> Self {
        Self { store: MemoryStore::new(), wrap }
    }

    /// The harness for memory clients of `store`, which others share (the
    /// fault campaign's in-process workers).
    pub fn with_store(store: MemoryStore) -> Self {
        Self { store, wrap: |lock| lock }
    }
}

impl Default for MemoryHarness {
    fn default() -> Self {
        Self::new()
    }
}

struct MemoryControl(Arc<MemoryLock>);

#[async_trait]
impl ClientControl for MemoryControl {
    async fn end_session(&self) {
        self.0.end_session();
    }
    async fn cut_off(&self) {
        self.0.disconnect();
    }
    async fn restore(&self) {
        self.0.reconnect();
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn client(&self) -> TestClient {
        let lock = Arc::new(self.store.client());
        let locks = Locks::from_backend((self.wrap)(Arc::clone(&lock)));
        TestClient { locks, control: Box::new(MemoryControl(lock)) }
    }

    async fn break_lock(&self, key: &LockKey) {
        self.store.delete(key);
    }

    async fn leftover(&self, prefix: &str) -> usize {
        self.store.count_under(prefix)
    }

    async fn unreachable_client(&self) -> (Duration, Result<Locks, LockError>) {
        let timeout = Duration::from_millis(500);
        let lock = self.store.client().with_request_timeout(timeout);
        lock.disconnect();
        (timeout, Ok(Locks::from_backend((self.wrap)(Arc::new(lock)))))
    }
}
