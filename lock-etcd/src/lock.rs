//! The lock: etcd's own mutex and election, and the reader/writer recipe and
//! semaphore beside them, with fencing, loss reporting and cleanup of every
//! cancelled or timed-out attempt. Writing and withdrawing contender keys is
//! in [`contender`](crate::contender), waiting in [`queue`](crate::queue),
//! who waits for whom in [`reader_writer`](crate::reader_writer) and
//! [`semaphore`](crate::semaphore), publishing and observing values in
//! [`election`](crate::election).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use etcd_client::{Client, GetOptions, GetResponse, SortOrder, SortTarget, Txn, TxnResponse};
use lock_core::{
    Capabilities, ClientSession, DistributedLock, FencingToken, LeaderStream, Lease, LockError, LockInfo, LockKey,
    LockMode, LockOptions, LossSignal, LostReason, SessionSlot,
};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::cleanup::{Cleanups, Written};
use crate::client::{Session, connect};
use crate::contender::{Attempt, Entered, Standing, leftover, lost};
use crate::endpoints::{EndpointHealth, Replay};
use crate::layout::{contenders_prefix, mode_of};
use crate::monitor::{HeldKey, monitor};
use crate::reader_writer::{Contention, holder_info, holders};
use crate::watch::WatchHub;
use crate::{BACKEND, EtcdConfig, error};

/// A distributed lock on etcd, wire-compatible with etcd's own lock,
/// election and reader/writer recipe.
///
/// Each client holds one lease, kept alive by one keep-alive stream for all
/// its locks, and one watch stream for all its waits. A contender writes
/// one key attached to the lease: `{lock name}/{lease hex}` for the mutex
/// (an election candidate's value is its proposal), `{lock name}/read/...`
/// or `{lock name}/write/...` for the two sides of a reader/writer lock,
/// `{lock name}/semaphore/...` for a semaphore's places. Keys are served in
/// create-revision order; each waiter watches only the key just before it
/// that it waits for (a semaphore waiter every place); the fencing token is
/// the key's create revision. See the [crate docs](crate) for the key
/// layout and the guarantees.
///
/// ```no_run
/// # async fn run() -> Result<(), lock_core::LockError> {
/// use lock_core::Locks;
/// use lock_etcd::{EtcdConfig, EtcdLock};
///
/// let locks = Locks::new(EtcdLock::connect(EtcdConfig::from_env()).await?);
/// let guard = locks.lock("jobs/nightly").acquire().await?;
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
pub struct EtcdLock {
    pub(crate) client: Client,
    /// Keeps the client's balancer on the members that answer.
    pub(crate) health: EndpointHealth,
    pub(crate) config: EtcdConfig,
    sessions: SessionSlot<Session>,
    pub(crate) hub: Arc<WatchHub>,
    /// `client` and `health` again, shared by the loss monitors of all held
    /// locks (a `Client` is kilobytes; see [`monitor`]).
    monitor_connection: Arc<(Client, EndpointHealth)>,
    /// Deletions of cancelled attempts' keys still in flight; a new attempt
    /// on the same key waits for them.
    pub(crate) cleanups: Arc<Cleanups>,
    /// Numbers the attempts to read or write, so each writes a key of its own.
    attempts: AtomicU64,
}

impl std::fmt::Debug for EtcdLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLock")
            .field("endpoints", &self.config.endpoints())
            .field("namespace", &self.config.namespace_value())
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

/// What an etcd lease remembers about its grant.
#[derive(Debug)]
pub(crate) struct EtcdGrant {
    /// Our key.
    pub(crate) contender: String,
    /// Its create revision: the token.
    pub(crate) revision: i64,
    /// The lease the key is attached to.
    pub(crate) session: Arc<Session>,
    stop_monitor: CancellationToken,
}

impl EtcdLock {
    /// Connects to etcd. The lease is granted with the first acquisition.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for a malformed configuration;
    /// [`LockError::Unavailable`] when no endpoint answers in time.
    pub async fn connect(config: EtcdConfig) -> Result<Self, LockError> {
        let (client, health) = connect(&config).await?;
        let sentinel = format!("{}\u{0}watch-sentinel", config.namespace_value()).into_bytes();
        let hub = WatchHub::start(client.clone(), health.clone(), sentinel);
        let monitor_connection = Arc::new((client.clone(), health.clone()));
        Ok(Self {
            client,
            health,
            config,
            sessions: SessionSlot::default(),
            hub,
            monitor_connection,
            cleanups: Arc::default(),
            attempts: AtomicU64::new(0),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The id of the client's current lease, once one was granted.
    pub async fn lease_id(&self) -> Option<i64> {
        self.sessions.current().await.map(|session| session.id())
    }

    pub(crate) async fn session(&self, key: &LockKey) -> Result<Arc<Session>, LockError> {
        let (ttl, limit) = (self.config.lease_ttl_value(), self.config.request_timeout_value());
        self.sessions.get_or_start(|| Session::start(&self.client, &self.health, ttl, limit, Some(key))).await
    }

    /// Runs one request with the request timeout, mapping its error; after a
    /// transport failure it is sent again on the remaining members as
    /// `replay` allows (see [`EndpointHealth::send`]).
    pub(crate) async fn call<T, Fut>(
        &self,
        key: &LockKey,
        what: &str,
        replay: Replay,
        request: impl FnMut() -> Fut,
    ) -> Result<T, LockError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let limit = self.config.request_timeout_value();
        match self.health.send(limit, replay, request).await {
            Ok(result) => result.map_err(|e| error::map(Some(key), e)),
            Err(_) => Err(error::timed_out(Some(key), what, limit)),
        }
    }

    /// Reads `range` with [`call`](Self::call); a read may always be sent
    /// again.
    pub(crate) async fn get(
        &self,
        key: &LockKey,
        what: &str,
        range: impl Into<Vec<u8>>,
        options: GetOptions,
    ) -> Result<GetResponse, LockError> {
        let range = range.into();
        let read = || {
            let (mut kv, range, options) = (self.client.kv_client(), range.clone(), options.clone());
            async move { kv.get(range, Some(options)).await }
        };
        self.call(key, what, Replay::Idempotent, read).await
    }

    /// Runs `txn` with [`call`](Self::call): `Replay::Idempotent` only for a
    /// transaction that writes nothing.
    pub(crate) async fn txn(
        &self,
        key: &LockKey,
        what: &str,
        replay: Replay,
        txn: Txn,
    ) -> Result<TxnResponse, LockError> {
        let run = || {
            let (mut kv, txn) = (self.client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        };
        self.call(key, what, replay, run).await
    }

    /// Where an attempt at `key` in `mode` queues.
    fn contention(&self, key: &LockKey, mode: LockMode) -> Contention {
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
        Contention::new(self.config.namespace_value(), key, mode, attempt)
    }

    /// Takes back a contender key that will not hold (a conflict); if that
    /// is not answered, the attempt's clean-up keeps trying in the
    /// background. Returns `error`.
    async fn give_up(
        &self,
        key: &LockKey,
        entered: &Entered,
        attempt: &mut Attempt<'_>,
        error: LockError,
    ) -> LockError {
        debug!(%key, %error, "withdrawing our contender key");
        if self.withdraw(key, &entered.contender, entered.revision).await.is_ok() {
            attempt.done();
        }
        error
    }

    /// Turns our contender key into a lease, watching for its loss.
    fn grant(&self, key: &LockKey, options: &LockOptions, entered: Entered) -> Lease {
        let Entered { session, contender, revision, .. } = entered;
        let mode = options.mode_value();
        let loss = LossSignal::new();
        let stop_monitor = CancellationToken::new();
        tokio::spawn(monitor(
            Arc::clone(&self.hub),
            Arc::clone(&self.monitor_connection),
            Arc::clone(&session),
            HeldKey { contender: contender.clone(), revision },
            loss.clone(),
            stop_monitor.clone(),
            self.config.request_timeout_value(),
        ));
        let confirmed_at = session.confirmed_at();
        let grant = EtcdGrant { contender, revision, session: Arc::clone(&session), stop_monitor };
        debug!(%key, %mode, token = revision, "granted");
        Lease::new(
            key.clone(),
            FencingToken::new(u64::try_from(revision).unwrap_or_default()),
            options.owner_value().to_owned(),
            session.ttl(),
            confirmed_at,
            loss,
            Arc::new(grant),
        )
        .with_mode(mode)
    }

    pub(crate) fn grant_of(lease: &Lease) -> Result<&EtcdGrant, LockError> {
        lease.backend_data_for::<EtcdGrant>(BACKEND)
    }
}

#[async_trait]
impl DistributedLock for EtcdLock {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let ttl = self.config.lease_ttl_value();
        Capabilities::fixed_ttl(ttl)
            .with_fifo(true)
            .with_expiry_slack(std::time::Duration::from_secs(2))
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
        let contention = self.contention(key, options.mode_value());
        let mut attempt = Attempt::new(self);
        let entered = self.enter(key, options, &contention, &mut attempt, deadline).await?;
        if let Standing::Conflict(message) = &entered.standing {
            let error = LockError::conflict(BACKEND, key, message.clone());
            return Err(self.give_up(key, &entered, &mut attempt, error).await);
        }
        if entered.standing == Standing::Waits {
            let waited = self.wait_for_turn(key, &entered, &contention, deadline, started).await;
            if let Err(error) = waited {
                // A lost key is gone already; otherwise withdraw it, and if
                // that is not answered (or we are dropped meanwhile), the
                // attempt's clean-up keeps trying in the background.
                if matches!(error, LockError::Lost { .. })
                    || self.withdraw(key, &entered.contender, entered.revision).await.is_ok()
                {
                    attempt.done();
                }
                return Err(error);
            }
        }
        attempt.done();
        Ok(self.grant(key, options, entered))
    }

    async fn try_acquire(&self, key: &LockKey, options: &LockOptions) -> Result<Option<Lease>, LockError> {
        let contention = self.contention(key, options.mode_value());
        let mut attempt = Attempt::new(self);
        let deadline = Instant::now() + self.config.request_timeout_value();
        let entered = self.enter(key, options, &contention, &mut attempt, Some(deadline)).await;
        let entered = entered.map_err(|error| match error {
            LockError::Timeout { .. } => LockError::unavailable(
                BACKEND,
                Some(key),
                "an earlier attempt's contender key is still being removed; etcd does not answer",
            ),
            other => other,
        })?;
        match &entered.standing {
            Standing::Holds => {
                attempt.done();
                Ok(Some(self.grant(key, options, entered)))
            }
            Standing::Waits => {
                self.withdraw(key, &entered.contender, entered.revision).await?;
                attempt.done();
                Ok(None)
            }
            Standing::Conflict(message) => {
                let error = LockError::conflict(BACKEND, key, message.clone());
                Err(self.give_up(key, &entered, &mut attempt, error).await)
            }
        }
    }

    async fn renew(&self, lease: &Lease) -> Result<Instant, LockError> {
        let grant = Self::grant_of(lease)?;
        lease.ensure_held(BACKEND, Some(grant.session.ended()))?;
        // The session's keep-alive extends every lock of the lease; the
        // monitor reports the key's own deletion.
        Ok(grant.session.confirmed_at())
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let grant = Self::grant_of(lease)?;
        if lease.is_released() {
            return Err(LockError::NotHeld { backend: BACKEND, key: lease.key().clone() });
        }
        // Stop watching first: our own delete is not a loss.
        grant.stop_monitor.cancel();
        let withdrawn = match self.withdraw(lease.key(), &grant.contender, grant.revision).await {
            Ok(withdrawn) => withdrawn,
            Err(error) => {
                // Unanswered: the key may still hold the lock for others.
                self.clean_up(leftover(&grant.session, grant.contender.clone(), Written::At(grant.revision)));
                return Err(error);
            }
        };
        if withdrawn {
            lease.mark_released();
            Ok(())
        } else {
            let reason = lease.loss_signal().reason().unwrap_or(LostReason::Revoked);
            lease.loss_signal().fire(reason.clone());
            Err(lost(lease.key(), reason))
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, LockError> {
        // The oldest key always holds: a writer alone, a reader first among
        // readers.
        let prefix = contenders_prefix(self.config.namespace_value(), key);
        let first = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
        let found = self.get(key, "inspect", prefix.as_str(), first).await?;
        Ok(found.kvs().first().map(|holder| holder_info(holder, mode_of(&prefix, holder.key(), holder.value()))))
    }

    async fn holders(&self, key: &LockKey) -> Result<Vec<LockInfo>, LockError> {
        let prefix = contenders_prefix(self.config.namespace_value(), key);
        let all = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend);
        let found = self.get(key, "list holders", prefix.as_str(), all).await?;
        Ok(holders(&prefix, found.kvs()))
    }

    async fn proclaim(&self, lease: &Lease, value: &str) -> Result<(), LockError> {
        self.publish(lease, value).await
    }

    fn watch_leader(&self, key: &LockKey) -> Option<LeaderStream> {
        self.leaders(key)
    }
}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        // Revoking the lease frees every lock of this client at once.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if let Some(session) = self.sessions.current_now() {
            let mut lease = self.client.lease_client();
            let (id, limit) = (session.id(), self.config.request_timeout_value());
            runtime.spawn(async move {
                let _ = timeout(limit, lease.revoke(id)).await;
            });
        }
    }
}
