//! `Locks`: the handle applications share between tasks.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, timeout_at};
use tracing::{Instrument, debug, info_span};

use crate::local::LocalLocks;
use crate::metrics::{Acquisition, Labels, Outcome};
use crate::{Capabilities, DistributedLock, LockError, LockGuard, LockInfo, LockKey, LockMode, LockOptions};

/// One client of a lock service, shared by all tasks of a process.
///
/// `Locks` wraps any [`DistributedLock`] and adds what every backend needs
/// once: options validated before anything is sent, exclusion between tasks
/// of this client on the same key (so it never depends on how the service
/// treats a repeated acquire by the same session), and [`LockGuard`]s that
/// renew and report loss. Clones share the client; two `Locks` built from two
/// backend instances are two independent clients. Every client reports the
/// [`metrics`](crate::metrics) and `tracing` spans listed there.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// use std::time::Duration;
/// use lock_core::{Locks, MemoryLock};
///
/// let locks = Locks::new(MemoryLock::new());
/// let guard = locks
///     .lock("jobs/nightly")
///     .ttl(Duration::from_secs(10))
///     .wait(Duration::from_secs(30))
///     .acquire()
///     .await?;
/// println!("running with fencing token {}", guard.token());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Locks {
    backend: Arc<dyn DistributedLock>,
    local: Arc<LocalLocks>,
    key_labels: bool,
}

impl Locks {
    /// A client on `backend`.
    pub fn new(backend: impl DistributedLock) -> Self {
        Self::from_backend(Arc::new(backend))
    }

    /// A client on a backend chosen at run time.
    ///
    /// Each call makes a separate client: build it once and clone the `Locks`.
    /// It describes the [`metrics`](crate::metrics) to the recorder installed
    /// now, if any.
    pub fn from_backend(backend: Arc<dyn DistributedLock>) -> Self {
        crate::metrics::describe();
        Self { backend, local: Arc::default(), key_labels: false }
    }

    /// Whether the [`metrics`](crate::metrics) of this client's locks carry
    /// their key as a `key` label (default off).
    ///
    /// Turn it on only where the keys are few and known (a handful of jobs,
    /// say): every key makes series of its own, and a client that locks
    /// per-user or per-object keys would make them without bound. It applies
    /// to the locks this `Locks` (and clones made from it afterwards)
    /// acquires.
    ///
    /// ```
    /// use lock_core::{Locks, MemoryLock};
    ///
    /// let locks = Locks::new(MemoryLock::new()).with_key_labels(true);
    /// # let _ = locks;
    /// ```
    #[must_use]
    pub fn with_key_labels(mut self, key_labels: bool) -> Self {
        self.key_labels = key_labels;
        self
    }

    /// Whether this client's metrics carry keys; see
    /// [`with_key_labels`](Self::with_key_labels).
    pub fn key_labels(&self) -> bool {
        self.key_labels
    }

    /// The backend underneath, for raw [`Lease`](crate::Lease) access.
    pub fn backend(&self) -> &Arc<dyn DistributedLock> {
        &self.backend
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.backend()
    }

    /// What the backend guarantees.
    pub fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    /// Starts a request for `key`; set options on it, then `acquire` or
    /// `try_acquire`. An invalid key is reported by those, before anything is
    /// sent.
    pub fn lock(&self, key: impl AsRef<str>) -> LockRequest {
        LockRequest {
            locks: self.clone(),
            key: LockKey::new(key.as_ref()),
            options: LockOptions::new(),
            deadline: None,
        }
    }

    /// Starts a request for the read side of `key`'s reader/writer lock:
    /// readers share the key, with each other only. Curator's
    /// `readLock()`, tokio's `RwLock::read`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use lock_core::{Locks, MemoryStore};
    ///
    /// let store = MemoryStore::new();
    /// let (a, b) = (Locks::new(store.client()), Locks::new(store.client()));
    /// let first = a.read_lock("objects/photo.jpg").acquire().await?;
    /// let second = b.read_lock("objects/photo.jpg").acquire().await?; // shares
    /// assert!(b.write_lock("objects/photo.jpg").try_acquire().await?.is_none());
    /// assert_eq!(a.holders("objects/photo.jpg").await?.len(), 2);
    /// first.release().await?;
    /// second.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_lock(&self, key: impl AsRef<str>) -> LockRequest {
        self.lock(key).mode(LockMode::Read)
    }

    /// Starts a request for one of `limit` places of `key`'s counting
    /// semaphore (Curator's `InterProcessSemaphoreV2`, Consul's
    /// `consul lock -n`). A `limit` of 0 is refused when the request is made.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use lock_core::{Locks, MemoryStore};
    ///
    /// let store = MemoryStore::new();
    /// let (a, b, c) = (Locks::new(store.client()), Locks::new(store.client()), Locks::new(store.client()));
    /// let first = a.semaphore("migrations", 2).acquire().await?;
    /// let second = b.semaphore("migrations", 2).acquire().await?;
    /// assert!(c.semaphore("migrations", 2).try_acquire().await?.is_none()); // both places taken
    /// assert!(c.semaphore("migrations", 3).try_acquire().await.is_err()); // another limit: a conflict
    /// first.release().await?;
    /// second.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn semaphore(&self, key: impl AsRef<str>, limit: u32) -> LockRequest {
        let mut request = self.lock(key);
        match LockMode::semaphore(limit) {
            Some(mode) => request = request.mode(mode),
            None => {
                request.key = Err(LockError::InvalidOptions {
                    backend: self.backend_name(),
                    message: "a semaphore's limit must be at least 1".to_owned(),
                });
            }
        }
        request
    }

    /// Starts a request for the write side of `key`'s reader/writer lock: the
    /// key alone, once every earlier reader and writer is done. Curator's
    /// `writeLock()`, tokio's `RwLock::write`.
    pub fn write_lock(&self, key: impl AsRef<str>) -> LockRequest {
        self.lock(key).mode(LockMode::Write)
    }

    /// Waits for `key` until `deadline` (`None`: forever).
    ///
    /// # Errors
    /// [`LockError::InvalidOptions`] before anything is sent;
    /// [`LockError::Timeout`] when the deadline passes (nothing is left
    /// behind); otherwise as [`DistributedLock::acquire`].
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped acquire leaves no holder and no waiter.
    pub async fn acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
    ) -> Result<LockGuard, LockError> {
        let capabilities = self.capabilities();
        options.validate(self.backend_name(), &capabilities)?;
        let span = info_span!(
            "distlock.acquire",
            backend = self.backend_name(),
            key = %key,
            mode = %options.mode_value(),
            token = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let acquisition = Acquisition::start(self.labels(key, options), span.clone());
        let result = acquisition
            .timing_waits(self.wait_and_acquire(key, options, deadline, acquisition.labels()))
            .instrument(span)
            .await;
        acquisition.finish(result.as_ref().map_or_else(Outcome::of_error, |_| Outcome::Granted));
        result
    }

    async fn wait_and_acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
        labels: &Labels,
    ) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        let mut local = std::pin::pin!(self.local.acquire(key, options.mode_value()));
        let permit = match std::future::poll_fn(|cx| Poll::Ready(local.as_mut().poll(cx))).await {
            Poll::Ready(permit) => permit,
            Poll::Pending => {
                // Another task of this client holds the key.
                let _waiting = crate::metrics::waiting();
                match deadline {
                    Some(deadline) => timeout_at(deadline, local).await.map_err(|_| LockError::Timeout {
                        backend: self.backend_name(),
                        key: key.clone(),
                        waited: started.elapsed(),
                    })?,
                    None => local.await,
                }
            }
        };
        let lease = self.backend.acquire(key, options, deadline).await?;
        tracing::Span::current().record("token", lease.token().get());
        debug!(waited = ?started.elapsed(), "acquired");
        let margin = options.effective_safety_margin(lease.ttl());
        self.refuse_if_unprovable(&lease, margin).await?;
        let auto_renew = options.auto_renew_value();
        Ok(LockGuard::start(Arc::clone(&self.backend), lease, margin, auto_renew, permit, labels.clone()))
    }

    fn labels(&self, key: &LockKey, options: &LockOptions) -> Labels {
        Labels::new(self.backend_name(), key, options.mode_value(), self.key_labels)
    }

    /// One attempt at `key`: `None` when another client, or another task of
    /// this client, holds it.
    ///
    /// # Errors
    /// [`LockError::InvalidOptions`] before anything is sent; otherwise as
    /// [`DistributedLock::try_acquire`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn try_acquire(&self, key: &LockKey, options: &LockOptions) -> Result<Option<LockGuard>, LockError> {
        options.validate(self.backend_name(), &self.capabilities())?;
        let span = info_span!(
            "distlock.try_acquire",
            backend = self.backend_name(),
            key = %key,
            mode = %options.mode_value(),
            token = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let acquisition = Acquisition::start(self.labels(key, options), span.clone());
        let result = self.try_once(key, options, acquisition.labels()).instrument(span).await;
        acquisition.finish(match &result {
            Ok(Some(_)) => Outcome::Granted,
            Ok(None) => Outcome::Busy,
            Err(error) => Outcome::of_error(error),
        });
        result
    }

    async fn try_once(
        &self,
        key: &LockKey,
        options: &LockOptions,
        labels: &Labels,
    ) -> Result<Option<LockGuard>, LockError> {
        let Some(permit) = self.local.try_acquire(key, options.mode_value()) else {
            return Ok(None);
        };
        let Some(lease) = self.backend.try_acquire(key, options).await? else { return Ok(None) };
        tracing::Span::current().record("token", lease.token().get());
        let margin = options.effective_safety_margin(lease.ttl());
        self.refuse_if_unprovable(&lease, margin).await?;
        let auto_renew = options.auto_renew_value();
        Ok(Some(LockGuard::start(Arc::clone(&self.backend), lease, margin, auto_renew, permit, labels.clone())))
    }

    /// A grant that can no longer be proven held when it reaches us (the
    /// lease or session it rests on ran out while the client was cut off,
    /// and the grant's news came late) is not handed out: the guard would be
    /// lost from its first moment, and its token may be below grants made
    /// since. What the service may still hold of it is released.
    async fn refuse_if_unprovable(&self, lease: &crate::Lease, margin: Duration) -> Result<(), LockError> {
        let proven_until = lease.confirmed_at() + lease.ttl().saturating_sub(margin);
        if Instant::now() < proven_until {
            return Ok(());
        }
        let since = lease.confirmed_at().elapsed();
        debug!(key = %lease.key(), ?since, "the grant came after it could be proven held; giving it back");
        let _ = self.backend.release(lease).await;
        Err(LockError::lost(self.backend_name(), lease.key(), crate::LostReason::NotConfirmed { since }))
    }

    /// The current holder of `key`, or `None` when free.
    ///
    /// # Errors
    /// [`LockError::InvalidKey`] before anything is sent; otherwise as
    /// [`DistributedLock::inspect`].
    pub async fn inspect(&self, key: impl AsRef<str>) -> Result<Option<LockInfo>, LockError> {
        let key = LockKey::new(key.as_ref())?;
        self.backend.inspect(&key).await
    }

    /// The leader of election `key`: its first holder, with the value it
    /// publishes and its token; `None` while nobody holds it.
    ///
    /// # Errors
    /// As [`inspect`](Self::inspect).
    pub async fn leader(&self, key: impl AsRef<str>) -> Result<Option<LockInfo>, LockError> {
        self.inspect(key).await
    }

    /// The leaders of election `key` as they change: the current one first
    /// (`None` while nobody leads), then every new leader and every new value
    /// a leader publishes. Backends with watches push the changes; the others
    /// are polled every 100 ms. The stream ends only when dropped; errors are
    /// items, and it goes on after them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_core::LockError> {
    /// use futures_util::StreamExt;
    /// use lock_core::{Locks, MemoryStore};
    ///
    /// let store = MemoryStore::new();
    /// let (node, observer) = (Locks::new(store.client()), Locks::new(store.client()));
    /// let mut leaders = observer.observe("services/api/leader")?;
    /// assert_eq!(leaders.next().await.transpose()?.flatten(), None); // nobody leads yet
    /// let leading = node.lock("services/api/leader").value("10.0.0.7:8080").acquire().await?;
    /// let leader = leaders.next().await.transpose()?.flatten();
    /// assert_eq!(leader.and_then(|l| l.value).as_deref(), Some("10.0.0.7:8080"));
    /// leading.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`LockError::InvalidKey`] before anything is sent.
    pub fn observe(&self, key: impl AsRef<str>) -> Result<crate::LeaderStream, LockError> {
        let key = LockKey::new(key.as_ref())?;
        if let Some(stream) = self.backend.watch_leader(&key) {
            return Ok(stream);
        }
        Ok(crate::observe::polled(Arc::clone(&self.backend), key))
    }

    /// Every current holder of `key` (several while readers share it), in
    /// token order.
    ///
    /// # Errors
    /// As [`inspect`](Self::inspect).
    pub async fn holders(&self, key: impl AsRef<str>) -> Result<Vec<LockInfo>, LockError> {
        let key = LockKey::new(key.as_ref())?;
        self.backend.holders(&key).await
    }
}

impl fmt::Debug for Locks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locks")
            .field("backend", &self.backend)
            .field("key_labels", &self.key_labels)
            .finish_non_exhaustive()
    }
}

/// A lock request being built by [`Locks::lock`].
#[derive(Debug)]
#[must_use = "a lock request does nothing until acquired"]
pub struct LockRequest {
    locks: Locks,
    key: Result<LockKey, LockError>,
    options: LockOptions,
    deadline: Option<Instant>,
}

impl LockRequest {
    /// How long the lock survives a holder that stops renewing.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options = self.options.ttl(ttl);
        self
    }

    /// The owner string other clients see through `inspect`.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.options = self.options.owner(owner);
        self
    }

    /// How the key is held (default [`LockMode::Exclusive`]; see
    /// [`Locks::read_lock`] and [`Locks::write_lock`]).
    pub fn mode(mut self, mode: LockMode) -> Self {
        self.options = self.options.mode(mode);
        self
    }

    /// A value to publish while holding (leader election; see
    /// [`LockOptions::value`]).
    pub fn value(mut self, value: impl Into<String>) -> Self {
        self.options = self.options.value(value);
        self
    }

    /// Whether the guard renews in the background (default on).
    pub fn auto_renew(mut self, auto_renew: bool) -> Self {
        self.options = self.options.auto_renew(auto_renew);
        self
    }

    /// Replaces all options at once.
    pub fn options(mut self, options: LockOptions) -> Self {
        self.options = options;
        self
    }

    /// Waits at most `wait` in [`acquire`](Self::acquire) (default: forever).
    /// A wait too long to be represented as an instant (`Duration::MAX`)
    /// means forever.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.deadline = Instant::now().checked_add(wait);
        self
    }

    /// Waits until `deadline` at most in [`acquire`](Self::acquire).
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Waits for the lock; see [`Locks::acquire`].
    ///
    /// # Errors
    /// [`LockError::InvalidKey`] before anything is sent; otherwise as
    /// [`Locks::acquire`].
    pub async fn acquire(self) -> Result<LockGuard, LockError> {
        let key = self.key?;
        self.locks.acquire(&key, &self.options, self.deadline).await
    }

    /// Makes one attempt; see [`Locks::try_acquire`].
    ///
    /// # Errors
    /// [`LockError::InvalidKey`] before anything is sent; otherwise as
    /// [`Locks::try_acquire`].
    pub async fn try_acquire(self) -> Result<Option<LockGuard>, LockError> {
        let key = self.key?;
        self.locks.try_acquire(&key, &self.options).await
    }
}
