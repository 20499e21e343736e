//! The raw grant a backend hands out, and the signal that reports its loss.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{FencingToken, LockError, LockKey, LockMode, LostReason};

/// A one-shot signal that a held lock is lost, carrying the first reason given.
///
/// Backends fire it when they learn of a loss (a lease revoked, a session
/// expired, a watched key deleted); the guard's watchdog fires it when no
/// renewal was confirmed in time. Clones share one signal.
///
/// ```
/// # tokio_test_shim::block_on(async {
/// use lock_core::{LossSignal, LostReason};
///
/// let signal = LossSignal::new();
/// signal.fire(LostReason::SessionEnded);
/// signal.fire(LostReason::Revoked); // ignored: the first reason stands
/// assert_eq!(signal.fired().await, LostReason::SessionEnded);
/// # });
/// # mod tokio_test_shim { pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f) } }
/// ```
#[derive(Clone, Default)]
pub struct LossSignal {
    token: CancellationToken,
    reason: Arc<OnceLock<LostReason>>,
    /// Called once with the reason, before anyone waiting hears of it: the
    /// guard counts its loss there.
    hook: Arc<Mutex<Option<LossHook>>>,
}

type LossHook = Box<dyn Fn(&LostReason) + Send + Sync>;

impl LossSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal; only the first call's reason is kept.
    pub fn fire(&self, reason: LostReason) {
        if self.reason.set(reason).is_ok() {
            if let (Some(hook), Some(reason)) = (self.hook().as_ref(), self.reason.get()) {
                hook(reason);
            }
            self.token.cancel();
        }
    }

    /// Calls `hook` with the reason when the signal fires, or now if it has
    /// fired already (the only hook: a later call replaces it). A hook may
    /// run in any task or thread that fires the signal, so it must not block.
    pub(crate) fn on_fire(&self, hook: impl Fn(&LostReason) + Send + Sync + 'static) {
        let mut slot = self.hook();
        // Under the slot's lock, so a concurrent `fire` either sees the hook
        // or has set its reason before this looks.
        if let Some(reason) = self.reason.get() {
            hook(reason);
        }
        *slot = Some(Box::new(hook));
    }

    fn hook(&self) -> std::sync::MutexGuard<'_, Option<LossHook>> {
        self.hook.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the signal has fired.
    pub fn is_fired(&self) -> bool {
        self.reason.get().is_some()
    }

    /// The reason, once fired.
    pub fn reason(&self) -> Option<LostReason> {
        self.reason.get().cloned()
    }

    /// Completes when the signal fires, with its reason.
    ///
    /// Cancel safe: dropping the future has no effect on the signal.
    pub async fn fired(&self) -> LostReason {
        self.token.cancelled().await;
        // Set before the token is cancelled, so always present here.
        self.reason.get().cloned().unwrap_or(LostReason::Revoked)
    }

    /// A token cancelled when the signal fires, for `select!`-free code such
    /// as [`CancellationToken::run_until_cancelled`].
    pub fn token(&self) -> CancellationToken {
        self.token.child_token()
    }
}

impl fmt::Debug for LossSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossSignal").field("reason", &self.reason.get()).finish()
    }
}

/// One grant of one key, as a backend hands it out.
///
/// Most code never sees a `Lease`: [`Locks`](crate::Locks) wraps it in a
/// [`LockGuard`](crate::LockGuard). Backends build it with [`Lease::new`] and
/// keep whatever they need to renew and release it (a lease id, a session id,
/// a create revision) as backend data.
pub struct Lease {
    key: LockKey,
    token: FencingToken,
    owner: String,
    ttl: Duration,
    confirmed_at: Instant,
    loss: LossSignal,
    released: AtomicBool,
    backend_data: Arc<dyn Any + Send + Sync>,
    mode: LockMode,
}

impl Lease {
    /// A lease for `key` with `token`, held by `owner` for `ttl`.
    ///
    /// `confirmed_at` must be no later than the moment the service started
    /// counting this grant's TTL (typically: when the granting request, or the
    /// last keep-alive of the session it belongs to, was sent); the guard's
    /// watchdog counts from it. `loss` is the signal the backend fires when it
    /// learns the grant is gone.
    pub fn new(
        key: LockKey,
        token: FencingToken,
        owner: String,
        ttl: Duration,
        confirmed_at: Instant,
        loss: LossSignal,
        backend_data: Arc<dyn Any + Send + Sync>,
    ) -> Self {
        Self {
            key,
            token,
            owner,
            ttl,
            confirmed_at,
            loss,
            released: AtomicBool::new(false),
            backend_data,
            mode: LockMode::Exclusive,
        }
    }

    /// The key.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The fencing token of this grant.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// The owner string stored with the grant.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The TTL the service applies to this grant.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Marks the grant as made in `mode` (a new lease is
    /// [`LockMode::Exclusive`]).
    #[must_use]
    pub fn with_mode(mut self, mode: LockMode) -> Self {
        self.mode = mode;
        self
    }

    /// The mode the key is held in.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// When the grant was last confirmed alive by the service, see [`Lease::new`].
    pub fn confirmed_at(&self) -> Instant {
        self.confirmed_at
    }

    /// The loss signal of this grant.
    pub fn loss_signal(&self) -> &LossSignal {
        &self.loss
    }

    /// The backend's own data, if it is of type `T`.
    pub fn backend_data<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.backend_data.downcast_ref()
    }

    /// The backend's own data of type `T`, or the error for a lease handed
    /// to a backend other than the one that granted it.
    ///
    /// # Errors
    /// [`LockError::Backend`] naming `backend` when the data is of another type.
    pub fn backend_data_for<T: Any + Send + Sync>(&self, backend: &'static str) -> Result<&T, LockError> {
        self.backend_data()
            .ok_or_else(|| LockError::backend(backend, Some(&self.key), "the lease belongs to another backend"))
    }

    /// Whether this lease was released through its backend.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Checks what the client knows locally before asking the service:
    /// `NotHeld` after a release; `Lost` once this lease's loss signal, or
    /// the signal of the `session` it belongs to, has fired (which then
    /// fires this lease's too).
    ///
    /// # Errors
    /// [`LockError::NotHeld`] or [`LockError::Lost`], naming `backend`.
    pub fn ensure_held(&self, backend: &'static str, session: Option<&LossSignal>) -> Result<(), LockError> {
        if self.is_released() {
            return Err(LockError::NotHeld { backend, key: self.key.clone() });
        }
        if let Some(reason) = session.and_then(LossSignal::reason) {
            self.loss.fire(reason);
        }
        match self.loss.reason() {
            Some(reason) => Err(LockError::lost(backend, &self.key, reason)),
            None => Ok(()),
        }
    }

    /// Records a successful release; backends call it so that a second
    /// release or a renew after it is answered with `NotHeld`.
    pub fn mark_released(&self) {
        self.released.store(true, Ordering::Release);
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("owner", &self.owner)
            .field("mode", &self.mode)
            .field("ttl", &self.ttl)
            .field("lost", &self.loss.reason())
            .field("released", &self.is_released())
            .finish_non_exhaustive()
    }
}

/// Who holds a key, as [`inspect`](crate::DistributedLock::inspect) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The holder's owner string.
    pub owner: String,
    /// The holder's fencing token.
    pub token: FencingToken,
    /// When the holder was granted the lock, where the backend records it.
    pub held_since: Option<std::time::SystemTime>,
    /// The mode the holder holds the key in.
    pub mode: LockMode,
    /// The value the holder publishes (leader election), if any.
    pub value: Option<String>,
}

impl LockInfo {
    /// Holder information.
    pub fn new(owner: impl Into<String>, token: FencingToken) -> Self {
        Self { owner: owner.into(), token, held_since: None, mode: LockMode::Exclusive, value: None }
    }

    /// Marks the holder as holding the key in `mode`.
    #[must_use]
    pub fn with_mode(mut self, mode: LockMode) -> Self {
        self.mode = mode;
        self
    }

    /// Adds the value the holder publishes.
    #[must_use]
    pub fn with_value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Adds when the holder was granted the lock.
    pub fn with_held_since(mut self, since: std::time::SystemTime) -> Self {
        self.held_since = Some(since);
        self
    }
}
