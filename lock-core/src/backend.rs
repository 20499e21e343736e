//! The contract every backend implements.

use std::fmt::Debug;

use async_trait::async_trait;
use tokio::time::Instant;

#[cfg(doc)]
use crate::LockMode;
use crate::{Capabilities, Lease, LockError, LockInfo, LockKey, LockOptions};

/// A distributed lock service: the contract every backend implements.
///
/// The trait is object safe: `Arc<dyn DistributedLock>` picks a backend at run
/// time. Applications normally use it through [`Locks`](crate::Locks), which
/// validates options before anything is sent, serialises tasks of one client
/// on the same key, and turns each [`Lease`] into a
/// [`LockGuard`](crate::LockGuard) that renews it and reports its loss.
///
/// # The contract
///
/// Every backend, checked by the conformance suite against the real service:
///
/// * **Mutual exclusion.** At most one lease of a key is held at a time across
///   all clients of the service, as long as every holder stops when its lease
///   is reported lost; the only exception is [`LockMode::Read`] leases, which
///   share a key with each other (and with nothing else).
/// * **Writer preference.** Where [`Capabilities::writer_preference`] holds, a
///   read acquisition that starts after a write or exclusive acquisition of
///   the key began waiting is granted only after that one.
/// * **Fencing.** Each exclusive or write grant of a key carries a
///   [`FencingToken`](crate::FencingToken) greater than every earlier grant's
///   of the key, and each read grant one greater than every earlier exclusive
///   or write grant's, across expiry and client restarts. (Readers that
///   become free together may be granted in any order: their tokens are
///   never compared with each other.)
/// * **Expiry.** When a holder's client falls silent (its process paused,
///   killed or cut off from the service), the service frees its leases within
///   [`Capabilities::expiry_slack`] after the TTL, counted from the last
///   renewal it received. Backends that keep one session alive for all leases
///   of a client (etcd, Consul, ZooKeeper) keep an unrenewed lease for as long
///   as the client lives; a guard that gives its lock up releases it.
///   Backends that declare [`Capabilities::expires`] `false` free a lease when
///   the holder process dies.
/// * **No leftovers.** A cancelled, failed or timed-out acquisition leaves no
///   holder and no waiter behind; a released lease leaves no state behind.
/// * **One exclusive grant per key per client.** A backend may assume one
///   client never has an exclusive or write acquisition of a key in flight
///   beside any other acquisition of that key; `Locks` guarantees it, so
///   exclusion between tasks sharing a client never depends on the service.
///   Several read acquisitions of one key by one client may be in flight and
///   held at once: the backend keeps them apart (each its own contender).
/// * **Typed errors.** Unreachable endpoints give [`LockError::Unavailable`]
///   within the configured timeouts; nothing waits without a bound except
///   [`acquire`](Self::acquire) with no deadline.
#[async_trait]
pub trait DistributedLock: Send + Sync + Debug + 'static {
    /// The backend's short name (`"memory"`, `"etcd"`, ...) used in errors
    /// and traces.
    fn backend(&self) -> &'static str;

    /// What this backend guarantees.
    fn capabilities(&self) -> Capabilities;

    /// Waits until `key` is granted, or until `deadline` (`None`: forever).
    ///
    /// `options` have been validated against [`capabilities`](Self::capabilities).
    ///
    /// # Errors
    /// [`LockError::Timeout`] when the deadline passes, after the backend has
    /// removed its own waiter state; [`LockError::Lost`] when the client's own
    /// lease or session ends while it waits; [`LockError::Unavailable`] when
    /// the service cannot be reached.
    ///
    /// # Cancel safety
    /// Dropping the future at any point leaves no holder and no waiter behind;
    /// cleanup that needs the network is started before the drop returns and
    /// completes once the service has answered the request in flight (which
    /// the service may still apply after the drop).
    async fn acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
    ) -> Result<Lease, LockError>;

    /// Makes one attempt: the lease when `key` is free, `None` when it is
    /// held (or contended) elsewhere, without waiting for the holder.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), without `Timeout`.
    ///
    /// # Cancel safety
    /// As [`acquire`](Self::acquire).
    async fn try_acquire(&self, key: &LockKey, options: &LockOptions) -> Result<Option<Lease>, LockError>;

    /// Proves the lease still held and extends it by its TTL.
    ///
    /// Returns an instant no later than the moment the service started
    /// counting the extended TTL (typically when the request, or the shared
    /// keep-alive that proves it, was sent); the guard's watchdog counts from
    /// it. A backend that keeps one lease or session alive for all its locks
    /// may answer from its last confirmed keep-alive without a request per
    /// lock, as long as it learns of the lock's own deletion (a watch).
    ///
    /// # Errors
    /// [`LockError::Lost`] when the service no longer holds the lease for us;
    /// [`LockError::NotHeld`] after it was released; [`LockError::Unavailable`]
    /// when the service cannot be reached (the lease may still be held).
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped renew either extended the lease or did not.
    async fn renew(&self, lease: &Lease) -> Result<Instant, LockError>;

    /// Gives the lease up, only if the service still holds it for us: a stale
    /// lease never releases a later holder's grant.
    ///
    /// # Errors
    /// [`LockError::NotHeld`] when it was released already (a double release
    /// is an error, never a panic); [`LockError::Lost`] when the service had
    /// already taken it away; [`LockError::Unavailable`] when the service
    /// cannot be reached (the TTL then frees it).
    ///
    /// # Cancel safety
    /// Cancel safe; a dropped release leaves the lease to its TTL.
    async fn release(&self, lease: &Lease) -> Result<(), LockError>;

    /// The current holder of `key` and its fencing token, or `None` when free.
    /// While readers share the key, the reader with the lowest token.
    ///
    /// # Errors
    /// [`LockError::Unavailable`] or [`LockError::Backend`].
    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, LockError>;

    /// Every current holder of `key` (several while readers share it), in
    /// token order; empty when the key is free.
    ///
    /// The default answers from [`inspect`](Self::inspect), which is right
    /// for backends that grant only exclusive modes.
    ///
    /// # Errors
    /// As [`inspect`](Self::inspect).
    async fn holders(&self, key: &LockKey) -> Result<Vec<LockInfo>, LockError> {
        Ok(self.inspect(key).await?.into_iter().collect())
    }

    /// Replaces the value `lease`'s holder publishes (a leader's new
    /// proposal: etcd's `Proclaim`), only while the service still holds the
    /// lease for us.
    ///
    /// # Errors
    /// [`LockError::InvalidOptions`] where the backend publishes no values
    /// (the default); otherwise as [`renew`](Self::renew).
    async fn proclaim(&self, lease: &Lease, value: &str) -> Result<(), LockError> {
        let _ = value;
        Err(LockError::InvalidOptions {
            backend: self.backend(),
            message: format!("lock {:?}: this backend publishes no values", lease.key().as_str()),
        })
    }

    /// A stream of `key`'s first holder (the leader, with its value and
    /// token): the current one first, then each change of holder or value,
    /// `None` while the key is free. `None` here (the default) makes
    /// [`Locks::observe`](crate::Locks::observe) poll
    /// [`inspect`](Self::inspect) instead; backends with watches return
    /// their own.
    fn watch_leader(&self, key: &LockKey) -> Option<LeaderStream> {
        let _ = key;
        None
    }
}

/// What [`DistributedLock::watch_leader`] and
/// [`Locks::observe`](crate::Locks::observe) yield: the key's first holder
/// after each change, `None` while it is free.
pub type LeaderStream =
    std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<Option<LockInfo>, LockError>> + Send + 'static>>;

/// Completes at `deadline`; never when there is none. For the deadline arm of
/// a backend's wait loop.
///
/// While it is pending, the acquisition that [`Locks`](crate::Locks) runs in
/// this task counts as waiting (`distlock_wait_duration_seconds`, the
/// `distlock.wait` span; see [`metrics`](crate::metrics)): race it only with
/// what the acquisition waits for, not with the requests it makes.
pub async fn deadline_passed(deadline: Option<Instant>) {
    let _waiting = crate::metrics::waiting();
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
