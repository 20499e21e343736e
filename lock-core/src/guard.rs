//! The held lock handed to applications: renews in the background, reports
//! loss, releases on request or on drop.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::local::LocalPermit;
use crate::metrics::{Holding, Labels};
use crate::{DistributedLock, FencingToken, Lease, LockError, LockKey, LostReason};

/// A span named `$name` with the fields of the lock `$shared` holds, and
/// `outcome` to record.
macro_rules! lock_span {
    ($name:literal, $shared:expr) => {
        info_span!(
            $name,
            backend = $shared.backend.backend(),
            key = %$shared.lease.key(),
            mode = %$shared.lease.mode(),
            token = $shared.lease.token().get(),
            outcome = tracing::field::Empty,
        )
    };
}

/// The `outcome` of a renewal or release, as its span records it.
fn outcome(result: &Result<(), LockError>) -> &'static str {
    result.as_ref().map_or_else(crate::metrics::error_kind, |()| "ok")
}

/// A held lock.
///
/// While the guard lives it renews the lock in the background at about a
/// third of the TTL (unless auto-renew is off) and watches for its loss:
///
/// * the backend reports the lease, session or key gone, or a renewal is
///   answered with "not yours": the lock is lost at once;
/// * no renewal has been confirmed within the TTL less the safety margin,
///   counted from when the last confirmed renewal was *sent*: the lock is lost
///   by the guard's own clock, even if the service cannot be reached, because
///   from then on the service may grant it to someone else.
///
/// [`lost`](Self::lost) completes at that moment; stop the guarded work then.
/// [`release`](Self::release) gives the lock back and reports
/// [`LockError::Lost`] if it had been lost. Dropping the guard without
/// releasing it starts a best-effort release on the current tokio runtime; with
/// no runtime running, the TTL frees the lock. The guard keeps the
/// [`metrics`](crate::metrics) of its lock (held, lost, renewed, released).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// use lock_core::{Locks, MemoryLock};
///
/// let locks = Locks::new(MemoryLock::new());
/// let guard = locks.lock("jobs/nightly").acquire().await?;
/// tokio::select! {
///     reason = guard.lost() => panic!("lock lost: {reason}"),
///     () = async { /* the guarded work, fenced with guard.token() */ } => {}
/// }
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
pub struct LockGuard {
    shared: Arc<Shared>,
    watchdog: Option<JoinHandle<()>>,
    permit: Option<LocalPermit>,
    finished: bool,
}

struct Shared {
    backend: Arc<dyn DistributedLock>,
    lease: Lease,
    margin: Duration,
    /// When the last renewal that the service confirmed was sent.
    confirmed_sent: Mutex<Instant>,
    stop: CancellationToken,
    /// Set by a release before it looks at `talking`, and read by the
    /// watchdog after it sets `talking`: of a release and a watchdog about
    /// to talk to the service, at least one sees the other (both `SeqCst`).
    releasing: AtomicBool,
    /// The watchdog is renewing, or freeing an expired lease: a release
    /// waits for it to stop rather than talk to the service beside it.
    talking: AtomicBool,
    holding: Arc<Holding>,
}

impl LockGuard {
    pub(crate) fn start(
        backend: Arc<dyn DistributedLock>,
        lease: Lease,
        margin: Duration,
        auto_renew: bool,
        permit: LocalPermit,
        labels: Labels,
    ) -> Self {
        let holding = Holding::grant(labels);
        let counted = Arc::clone(&holding);
        lease.loss_signal().on_fire(move |reason| counted.lost(reason));
        let shared = Arc::new(Shared {
            confirmed_sent: Mutex::new(lease.confirmed_at()),
            backend,
            lease,
            margin,
            stop: CancellationToken::new(),
            releasing: AtomicBool::new(false),
            talking: AtomicBool::new(false),
            holding,
        });
        let span = lock_span!("distlock.guard", shared);
        let watchdog = tokio::spawn(watch(Arc::clone(&shared), auto_renew).instrument(span));
        Self { shared, watchdog: Some(watchdog), permit: Some(permit), finished: false }
    }

    /// The key held.
    pub fn key(&self) -> &LockKey {
        self.shared.lease.key()
    }

    /// The fencing token of this grant: pass it with every write the lock
    /// protects.
    pub fn token(&self) -> FencingToken {
        self.shared.lease.token()
    }

    /// The mode the key is held in.
    pub fn mode(&self) -> crate::LockMode {
        self.shared.lease.mode()
    }

    /// Publishes `value` in place of the one the grant was made with (a
    /// leader's new proposal, etcd's `Proclaim`), while the lock is held.
    ///
    /// # Errors
    /// [`LockError::Lost`] or [`LockError::NotHeld`] when the lock is no
    /// longer held; [`LockError::InvalidOptions`] where the backend publishes
    /// no values; [`LockError::Unavailable`] when the service cannot be
    /// reached.
    pub async fn proclaim(&self, value: impl AsRef<str>) -> Result<(), LockError> {
        if self.is_lost() {
            let reason = self.shared.lease.loss_signal().reason().unwrap_or(LostReason::Revoked);
            return Err(LockError::lost(self.shared.backend.backend(), self.key(), reason));
        }
        let value = value.as_ref();
        if value.len() > crate::MAX_VALUE_BYTES {
            return Err(LockError::InvalidOptions {
                backend: self.shared.backend.backend(),
                message: format!(
                    "a published value may hold at most {} bytes, got {}",
                    crate::MAX_VALUE_BYTES,
                    value.len()
                ),
            });
        }
        self.shared.backend.proclaim(&self.shared.lease, value).await
    }

    /// The owner string stored with the grant.
    pub fn owner(&self) -> &str {
        self.shared.lease.owner()
    }

    /// The TTL the service applies.
    pub fn ttl(&self) -> Duration {
        self.shared.lease.ttl()
    }

    /// Whether the lock is known lost, by the service's word or because it
    /// can no longer be proven held.
    ///
    /// The guard's own clock is read here, not only by its background task:
    /// a holder whose process was paused past the TTL sees `true` on its
    /// first look after it resumes, before any task has run.
    pub fn is_lost(&self) -> bool {
        self.shared.check_deadline()
    }

    /// Completes with the reason as soon as the lock is lost or can no longer
    /// be proven held. Pending forever while the lock is held.
    ///
    /// Cancel safe.
    pub async fn lost(&self) -> LostReason {
        self.shared.check_deadline();
        self.shared.lease.loss_signal().fired().await
    }

    /// A token cancelled when the lock is lost, to hand to guarded work.
    pub fn lost_token(&self) -> CancellationToken {
        self.shared.lease.loss_signal().token()
    }

    /// How much longer the lock is provably held without a further confirmed
    /// renewal; zero once lost.
    pub fn remaining(&self) -> Duration {
        if self.is_lost() {
            return Duration::ZERO;
        }
        self.shared.proven_until().saturating_duration_since(Instant::now())
    }

    /// Renews the lock now (needed when auto-renew is off).
    ///
    /// # Errors
    /// [`LockError::Lost`] when the lock is lost (the guard then reports it
    /// through [`lost`](Self::lost) too); [`LockError::Unavailable`] when the
    /// service did not confirm in time; the lock may still be held and is
    /// lost by the guard's clock if no renewal succeeds before the deadline.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn renew(&self) -> Result<(), LockError> {
        self.shared.renew_once().await
    }

    /// Releases the lock.
    ///
    /// # Errors
    /// [`LockError::Lost`] when the lock had been lost before it was released
    /// (work done under it may have overlapped another holder's; the service
    /// state is still cleaned up where it is ours); [`LockError::Unavailable`]
    /// when the service could not be reached (the TTL frees the lock).
    ///
    /// # Cancel safety
    /// If the future is dropped the guard's drop path still runs, starting a
    /// best-effort release in the background.
    pub async fn release(mut self) -> Result<(), LockError> {
        let span = lock_span!("distlock.release", self.shared);
        let result = self.release_now().instrument(span).await;
        self.finished = true;
        result
    }

    async fn release_now(&mut self) -> Result<(), LockError> {
        let shared = Arc::clone(&self.shared);
        shared.releasing.store(true, Ordering::SeqCst);
        shared.stop.cancel();
        if let Some(watchdog) = self.watchdog.take() {
            // Never renew and release at the same time: a watchdog talking
            // to the service is waited for (it stops at once); one that is
            // not will not start, and is stopped without a round of task
            // wake-ups on every release.
            if shared.talking.load(Ordering::SeqCst) {
                let _ = watchdog.await;
            } else {
                watchdog.abort();
            }
        }
        shared.check_deadline();
        shared.holding.releasing();
        let result = match shared.lease.loss_signal().reason() {
            Some(reason) => {
                // Clean up whatever of it is still ours; the answer changes nothing.
                let _ = shared.backend.release(&shared.lease).await;
                Err(shared.lost_error(reason))
            }
            None => match shared.backend.release(&shared.lease).await {
                Err(LockError::Lost { reason, .. }) => {
                    shared.lease.loss_signal().fire(reason.clone());
                    Err(shared.lost_error(reason))
                }
                other => other,
            },
        };
        shared.holding.released(&result);
        tracing::Span::current().record("outcome", outcome(&result));
        debug!(ok = result.is_ok(), "released");
        result
    }
}

impl Shared {
    /// Marks the watchdog as talking to the service, unless a release has
    /// begun (then it must not).
    fn start_talking(&self) -> bool {
        self.talking.store(true, Ordering::SeqCst);
        !self.releasing.load(Ordering::SeqCst)
    }

    fn confirmed_sent(&self) -> Instant {
        *self.confirmed_sent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn proven_until(&self) -> Instant {
        self.confirmed_sent() + self.lease.ttl().saturating_sub(self.margin)
    }

    fn confirm(&self, sent: Instant) {
        let mut confirmed = self.confirmed_sent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if sent > *confirmed {
            *confirmed = sent;
        }
    }

    /// Fires the loss signal if the lock can no longer be proven held.
    fn check_deadline(&self) -> bool {
        let now = Instant::now();
        if now < self.proven_until() {
            return self.lease.loss_signal().is_fired();
        }
        let since = now.saturating_duration_since(self.confirmed_sent());
        if !self.lease.loss_signal().is_fired() {
            warn!(key = %self.lease.key(), ?since, "no renewal confirmed in time: reporting the lock lost");
        }
        self.lease.loss_signal().fire(LostReason::NotConfirmed { since });
        true
    }

    fn lost_error(&self, reason: LostReason) -> LockError {
        LockError::Lost { backend: self.backend.backend(), key: self.lease.key().clone(), reason }
    }

    async fn renew_once(&self) -> Result<(), LockError> {
        let span = lock_span!("distlock.renew", self);
        let result = self.renew_unrecorded().instrument(span.clone()).await;
        self.holding.renewed(&result);
        span.record("outcome", outcome(&result));
        result
    }

    async fn renew_unrecorded(&self) -> Result<(), LockError> {
        if self.check_deadline() {
            let reason = self.lease.loss_signal().reason().unwrap_or(LostReason::Revoked);
            return Err(self.lost_error(reason));
        }
        match timeout_at(self.proven_until(), self.backend.renew(&self.lease)).await {
            Ok(Ok(confirmed_at)) => {
                if !self.lease.loss_signal().is_fired() {
                    self.confirm(confirmed_at);
                }
                Ok(())
            }
            Ok(Err(LockError::Lost { reason, .. })) => {
                self.lease.loss_signal().fire(reason.clone());
                Err(self.lost_error(reason))
            }
            Ok(Err(other)) => Err(other),
            Err(_elapsed) => {
                self.check_deadline();
                Err(LockError::unavailable(
                    self.backend.backend(),
                    Some(self.lease.key()),
                    "renewal not confirmed before the lock stopped being provably held",
                ))
            }
        }
    }
}

/// Renews on schedule and turns a missed deadline into a loss report.
async fn watch(shared: Arc<Shared>, auto_renew: bool) {
    let ttl = shared.lease.ttl();
    let retry_interval = (ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut retry_at: Option<Instant> = None;
    loop {
        if shared.check_deadline() {
            if let Some(LostReason::NotConfirmed { .. }) = shared.lease.loss_signal().reason() {
                // Free what the service may still hold for us, so waiters need
                // not wait for the TTL; release only ever removes our own grant.
                if !shared.start_talking() {
                    return;
                }
                let span = lock_span!("distlock.release", shared);
                tokio::select! {
                    () = shared.stop.cancelled() => {}
                    released = shared.backend.release(&shared.lease).instrument(span.clone()) => {
                        span.record("outcome", outcome(&released));
                    }
                }
                shared.talking.store(false, Ordering::SeqCst);
            }
            return;
        }
        let next_renewal = retry_at.unwrap_or_else(|| shared.confirmed_sent() + ttl / 3);
        tokio::select! {
            () = shared.stop.cancelled() => return,
            _ = shared.lease.loss_signal().fired() => return,
            () = sleep_until(shared.proven_until()) => {}
            () = sleep_until(next_renewal), if auto_renew => {
                let before = shared.confirmed_sent();
                if !shared.start_talking() {
                    return;
                }
                let renewed = tokio::select! {
                    () = shared.stop.cancelled() => return,
                    renewed = shared.renew_once() => renewed,
                };
                shared.talking.store(false, Ordering::SeqCst);
                match renewed {
                    // A backend answering from a shared keep-alive may have no
                    // newer proof yet: ask again shortly rather than spin.
                    Ok(()) if shared.confirmed_sent() <= before => retry_at = Some(Instant::now() + retry_interval),
                    Ok(()) => retry_at = None,
                    Err(LockError::Lost { reason, .. }) => {
                        warn!(%reason, "lock lost");
                        return;
                    }
                    Err(error) => {
                        warn!(%error, "renewal failed; retrying until the lock can no longer be proven held");
                        retry_at = Some(Instant::now() + retry_interval);
                    }
                }
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.shared.stop.cancel();
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        self.shared.holding.dropped();
        let permit = self.permit.take();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            debug!(key = %self.shared.lease.key(), "guard dropped outside a runtime; the TTL frees the lock");
            return;
        };
        let shared = Arc::clone(&self.shared);
        let span = lock_span!("distlock.release", shared);
        let release = async move {
            let result = shared.backend.release(&shared.lease).await;
            if let Err(error) = &result {
                shared.holding.release_failed(error);
                debug!(%error, "best-effort release on drop failed; the TTL frees the lock");
            }
            tracing::Span::current().record("outcome", outcome(&result));
            // Other tasks of this client may take the key only now.
            drop(permit);
        };
        runtime.spawn(release.instrument(span));
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("backend", &self.shared.backend.backend())
            .field("lease", &self.shared.lease)
            .finish_non_exhaustive()
    }
}
