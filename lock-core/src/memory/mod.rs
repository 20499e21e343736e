//! The in-memory reference backend.

mod link;
mod store;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

pub use store::MemoryStore;
use store::{Contender, Enqueued, Grant};

use crate::{
    Capabilities, DistributedLock, Lease, LockError, LockInfo, LockKey, LockMode, LockOptions, LossSignal, LostReason,
};
use link::Link;

const BACKEND: &str = "memory";

/// The in-memory reference backend: FIFO-fair, fenced, expiring on tokio time.
///
/// It is the embedded default for tests and single-process use, and the
/// reference the conformance suite is proven on. Each `MemoryLock` is one
/// client with its own session; clients made from one [`MemoryStore`] share
/// its locks. Fault injection for tests: [`disconnect`](Self::disconnect)
/// simulates a partition between this client and the store, and
/// [`end_session`](Self::end_session) ends its session as an operator would.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// use lock_core::{Locks, MemoryStore};
///
/// let store = MemoryStore::new();
/// let (alice, bob) = (Locks::new(store.client()), Locks::new(store.client()));
/// let held = alice.lock("shard/7").acquire().await?;
/// assert!(bob.lock("shard/7").try_acquire().await?.is_none());
/// held.release().await?;
/// assert!(bob.lock("shard/7").try_acquire().await?.is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryLock {
    store: MemoryStore,
    session: Mutex<u64>,
    link: Link,
    request_timeout: Duration,
}

/// What a memory lease remembers about its grant.
#[derive(Debug)]
struct MemoryLease {
    lease_id: u64,
}

impl Default for MemoryLock {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLock {
    /// A client on a store of its own.
    pub fn new() -> Self {
        Self::with_store(MemoryStore::new())
    }

    /// A client on `store`.
    pub fn with_store(store: MemoryStore) -> Self {
        let session = store.open_session();
        Self { store, session: Mutex::new(session), link: Link::new(true), request_timeout: Duration::from_secs(5) }
    }

    /// How long a request waits for a disconnected link before failing with
    /// [`LockError::Unavailable`] (default 5 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The store this client talks to.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Simulates a network partition: requests stall until
    /// [`reconnect`](Self::reconnect) or their timeout, and the store stops
    /// seeing renewals, so held locks expire.
    pub fn disconnect(&self) {
        self.link.set_up(false);
    }

    /// Ends a simulated partition.
    pub fn reconnect(&self) {
        self.link.set_up(true);
    }

    /// Ends this client's session from outside; its locks are lost and its
    /// waiters fail. New requests open a new session.
    pub fn end_session(&self) {
        self.store.end_session(self.session());
    }

    /// The current session, opening a new one if the store ended it.
    fn session(&self) -> u64 {
        let mut session = self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.store.is_ended(*session) {
            *session = self.store.open_session();
        }
        *session
    }

    async fn send(&self, key: Option<&LockKey>) -> Result<(), LockError> {
        if self.link.ready(self.request_timeout).await {
            Ok(())
        } else {
            Err(LockError::unavailable(BACKEND, key, format!("no answer within {:?}", self.request_timeout)))
        }
    }

    fn contender(&self, options: &LockOptions) -> Contender {
        Contender {
            lease_id: self.store.next_id(),
            session: self.session(),
            owner: options.owner_value().to_owned(),
            ttl: options.effective_ttl(&self.capabilities()),
            mode: options.mode_value(),
            value: options.value_value().map(str::to_owned),
            loss: LossSignal::new(),
        }
    }

    fn lease(key: &LockKey, contender: Contender, grant: Grant) -> Lease {
        Lease::new(
            key.clone(),
            grant.token,
            contender.owner,
            contender.ttl,
            grant.granted_at,
            contender.loss,
            Arc::new(MemoryLease { lease_id: contender.lease_id }),
        )
        .with_mode(contender.mode)
    }

    fn conflict(key: &LockKey, asked: LockMode, other: LockMode) -> LockError {
        LockError::conflict(BACKEND, key, format!("asked for a {asked}, but it is used as a {other}"))
    }

    fn lease_id(lease: &Lease) -> Result<u64, LockError> {
        lease.backend_data_for::<MemoryLease>(BACKEND).map(|data| data.lease_id)
    }

    /// The answer for a lease the store no longer holds for us.
    fn gone(lease: &Lease) -> LockError {
        if lease.is_released() {
            LockError::NotHeld { backend: BACKEND, key: lease.key().clone() }
        } else {
            let reason = lease.loss_signal().reason().unwrap_or(LostReason::Revoked);
            lease.loss_signal().fire(reason.clone());
            LockError::Lost { backend: BACKEND, key: lease.key().clone(), reason }
        }
    }
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        let session = *self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.store.close_session(session);
    }
}

/// Withdraws a waiter from the queue unless its grant was taken.
struct Withdrawal<'a> {
    store: &'a MemoryStore,
    key: &'a LockKey,
    lease_id: u64,
    armed: bool,
}

impl Drop for Withdrawal<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store.withdraw(self.key, self.lease_id);
        }
    }
}

#[async_trait]
impl DistributedLock for MemoryLock {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(Duration::from_millis(10), Duration::from_secs(24 * 3600))
            .with_fifo(true)
            .with_shared_across_processes(false)
            .with_modes(LockMode::WITH_SEMAPHORE)
            .with_values(true)
    }

    async fn acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
    ) -> Result<Lease, LockError> {
        let started = Instant::now();
        self.send(Some(key)).await?;
        let contender = self.contender(options);
        let lease_id = contender.lease_id;
        let mut delivery = match self.store.enqueue(key, contender.clone()) {
            Enqueued::Granted(grant) => return Ok(Self::lease(key, contender, grant)),
            Enqueued::Conflict(other) => return Err(Self::conflict(key, contender.mode, other)),
            Enqueued::Waiting(delivery) => delivery,
        };
        let mut withdrawal = Withdrawal { store: &self.store, key, lease_id, armed: true };
        loop {
            let expiry = self.store.holder_expiry(key);
            tokio::select! {
                delivered = &mut delivery => {
                    withdrawal.armed = false;
                    return match delivered {
                        Ok(Ok(grant)) => Ok(Self::lease(key, contender, grant)),
                        Ok(Err(reason)) => Err(LockError::Lost { backend: BACKEND, key: key.clone(), reason }),
                        Err(_) => Err(LockError::backend(BACKEND, Some(key), "the store dropped the wait queue")),
                    };
                }
                () = crate::deadline_passed(expiry) => {
                    self.store.settle(key);
                }
                () = crate::deadline_passed(deadline) => {
                    drop(withdrawal);
                    return Err(LockError::timeout(BACKEND, key, started));
                }
            }
        }
    }

    async fn try_acquire(&self, key: &LockKey, options: &LockOptions) -> Result<Option<Lease>, LockError> {
        self.send(Some(key)).await?;
        let contender = self.contender(options);
        match self.store.try_grant(key, contender.clone()) {
            Ok(grant) => Ok(grant.map(|grant| Self::lease(key, contender, grant))),
            Err(other) => Err(Self::conflict(key, contender.mode, other)),
        }
    }

    async fn renew(&self, lease: &Lease) -> Result<Instant, LockError> {
        let lease_id = Self::lease_id(lease)?;
        if lease.is_released() {
            return Err(Self::gone(lease));
        }
        let sent = Instant::now();
        self.send(Some(lease.key())).await?;
        if self.store.renew(lease.key(), lease_id) { Ok(sent) } else { Err(Self::gone(lease)) }
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let lease_id = Self::lease_id(lease)?;
        if lease.is_released() {
            return Err(Self::gone(lease));
        }
        self.send(Some(lease.key())).await?;
        if self.store.release(lease.key(), lease_id) {
            lease.mark_released();
            Ok(())
        } else {
            Err(Self::gone(lease))
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, LockError> {
        self.send(Some(key)).await?;
        Ok(self.store.holders(key).into_iter().next())
    }

    async fn proclaim(&self, lease: &Lease, value: &str) -> Result<(), LockError> {
        let lease_id = Self::lease_id(lease)?;
        if lease.is_released() {
            return Err(Self::gone(lease));
        }
        self.send(Some(lease.key())).await?;
        if self.store.proclaim(lease.key(), lease_id, value) { Ok(()) } else { Err(Self::gone(lease)) }
    }

    async fn holders(&self, key: &LockKey) -> Result<Vec<LockInfo>, LockError> {
        self.send(Some(key)).await?;
        Ok(self.store.holders(key))
    }
}
