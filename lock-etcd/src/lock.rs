//! The lock recipe: etcd's own mutex, with fencing, loss reporting and
//! cleanup of every cancelled or timed-out attempt.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use lock_core::{
    Capabilities, ClientSession, DistributedLock, FencingToken, Lease, LockError, LockInfo, LockKey, LockOptions,
    LossSignal, LostReason, SessionSlot,
};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::cleanup::{Cleanups, Leftover, WriteOutcome, Written};
use crate::client::{Session, connect};
use crate::layout::{contender_key, contenders_prefix};
use crate::monitor::{HeldKey, monitor};
use crate::watch::{WatchEnd, WatchHub};
use crate::{BACKEND, EtcdConfig, error};

/// A distributed lock on etcd, wire-compatible with etcd's own lock.
///
/// Each client holds one lease, kept alive by one keep-alive stream for all
/// its locks, and one watch stream for all its waits. A contender writes
/// `{lock name}/{lease hex}` attached to the lease; the lowest create revision
/// holds; each waiter watches only the contender just before it; the fencing
/// token is the holder key's create revision. See the [crate docs](crate) for
/// the key layout and the guarantees.
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
    client: Client,
    config: EtcdConfig,
    sessions: SessionSlot<Session>,
    hub: Arc<WatchHub>,
    /// Deletions of cancelled attempts' keys still in flight; a new attempt
    /// on the same key waits for them.
    cleanups: Arc<Cleanups>,
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
struct EtcdGrant {
    contender: String,
    revision: i64,
    session: Arc<Session>,
    stop_monitor: CancellationToken,
}

impl EtcdLock {
    /// Connects to etcd. The lease is granted with the first acquisition.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for a malformed configuration;
    /// [`LockError::Unavailable`] when no endpoint answers in time.
    pub async fn connect(config: EtcdConfig) -> Result<Self, LockError> {
        let client = connect(&config).await?;
        let sentinel = format!("{}\u{0}watch-sentinel", config.namespace_value()).into_bytes();
        let hub = WatchHub::start(client.clone(), sentinel);
        Ok(Self { client, config, sessions: SessionSlot::default(), hub, cleanups: Arc::default() })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The id of the client's current lease, once one was granted.
    pub async fn lease_id(&self) -> Option<i64> {
        self.sessions.current().await.map(|session| session.id())
    }

    async fn session(&self, key: &LockKey) -> Result<Arc<Session>, LockError> {
        let (ttl, limit) = (self.config.lease_ttl_value(), self.config.request_timeout_value());
        self.sessions.get_or_start(|| Session::start(&self.client, ttl, limit, Some(key))).await
    }

    /// Runs one request with the request timeout, mapping its error.
    async fn call<T>(
        &self,
        key: &LockKey,
        what: &str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, LockError> {
        let limit = self.config.request_timeout_value();
        match timeout(limit, request).await {
            Ok(result) => result.map_err(|e| error::map(Some(key), e)),
            Err(_) => Err(error::timed_out(Some(key), what, limit)),
        }
    }

    /// Takes the session and writes our contender key, recording it in
    /// `attempt` for cleanup. A lease etcd no longer knows (it expired while
    /// we were cut off, before the keep-alive noticed) ends the session, and
    /// the write is retried once on a new lease.
    async fn enter(
        &self,
        key: &LockKey,
        options: &LockOptions,
        attempt: &mut Attempt<'_>,
        deadline: Option<Instant>,
    ) -> Result<(Arc<Session>, String, i64, bool), LockError> {
        let started = Instant::now();
        let mut retried = false;
        loop {
            let session = self.session(key).await?;
            let namespace = self.config.namespace_value();
            let contender = contender_key(namespace, key, session.id());
            // Our key has one name per lease: an earlier attempt's clean-up
            // must be done before we write it again.
            let settled = self.cleanups.settled(&contender);
            let settled = match deadline {
                Some(deadline) => timeout_at(deadline, settled).await.is_ok(),
                None => {
                    settled.await;
                    true
                }
            };
            if !settled {
                return Err(LockError::timeout(BACKEND, key, started));
            }
            let write = tokio::spawn(write_contender(
                self.client.clone(),
                key.clone(),
                contender.clone(),
                contenders_prefix(namespace, key),
                options.owner_value().to_owned(),
                session.id(),
                self.config.request_timeout_value(),
            ));
            let mut in_flight = InFlight {
                lock: self,
                session: Arc::clone(&session),
                contender: contender.clone(),
                write: Some(write),
            };
            match in_flight.outcome(key).await {
                Ok((revision, holds)) => {
                    attempt.leftover = Some(leftover(&session, contender.clone(), Written::At(revision)));
                    return Ok((session, contender, revision, holds));
                }
                Err(error) if !retried && error::is_lease_not_found(&error) => {
                    debug!(%key, "etcd no longer knows our lease; taking a new one");
                    session.ended().fire(LostReason::SessionEnded);
                    retried = true;
                }
                // The write may have landed even though its reply was lost.
                Err(error) => {
                    attempt.leftover = Some(leftover(&session, contender, Written::Unknown));
                    return Err(error);
                }
            }
        }
    }

    /// Deletes our contender key if it is still the one we wrote.
    async fn withdraw(&self, key: &LockKey, contender: &str, revision: i64) -> Result<bool, LockError> {
        let txn = Txn::new()
            .when([Compare::create_revision(contender, CompareOp::Equal, revision)])
            .and_then([TxnOp::delete(contender, None)]);
        let mut kv = self.client.kv_client();
        Ok(self.call(key, "delete contender", kv.txn(txn)).await?.succeeded())
    }

    /// Starts deleting a key of ours that holds no grant, in the background;
    /// the next attempt on that key waits until it is done.
    fn clean_up(&self, leftover: Leftover) {
        self.cleanups.start(self.client.clone(), leftover, self.config.request_timeout_value());
    }

    /// Waits until no contender created before `revision` is left, and
    /// confirms in the same read that our own key is still there.
    async fn wait_for_turn(
        &self,
        key: &LockKey,
        session: &Session,
        contender: &str,
        revision: i64,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<(), LockError> {
        let prefix = contenders_prefix(self.config.namespace_value(), key);
        let mut own = self.hub.deletion(contender, revision + 1);
        // Set when the own-key watch could not be served (its history was
        // compacted): it is made again from the next read that finds our key.
        let mut own_broken = false;
        loop {
            let predecessor = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_max_create_revision(revision - 1)
                .with_limit(1)
                .with_keys_only();
            // One snapshot: the contender just before us, and our own key.
            let read = Txn::new().and_then([
                TxnOp::get(prefix.clone(), Some(predecessor)),
                TxnOp::get(contender, Some(GetOptions::new().with_keys_only())),
            ]);
            let mut kv = self.client.kv_client();
            let snapshot = self.call(key, "find predecessor", kv.txn(read)).await?;
            let responses = snapshot.op_responses();
            if first_kv(&responses, 1).map(KeyValue::create_revision) != Some(revision) {
                // Our key is gone: deleted from outside, or our lease ended.
                let reason = if session.ended().is_fired() { LostReason::SessionEnded } else { LostReason::Revoked };
                return Err(lost(key, reason));
            }
            let Some(before) = first_kv(&responses, 0) else { return Ok(()) };
            // The predecessor's end is not our turn by itself: our own key
            // may have gone meanwhile (our lease expired while we were cut
            // off, an operator deleted it) and its deletion event may come
            // after the predecessor's. So every wake-up reads again, and only
            // a read that finds our key and nothing before it grants the
            // lock, as etcd's own Mutex does. (The lock-torture campaign
            // found a grant of a deleted key, with a token below later
            // grants', when the shortcut trusted the predecessor's end.)
            let seen_at = snapshot.header().map(|h| h.revision()).unwrap_or(revision);
            if own_broken {
                // Our key existed at `seen_at`: any later deletion is seen.
                own = self.hub.deletion(contender, seen_at + 1);
                own_broken = false;
            }
            let (before_revision, before) = (before.create_revision(), before.key().to_vec());
            let mut turn = self.hub.deletion_from_now(before.clone());
            tokio::select! {
                // Our own key's end first, when both are known.
                biased;
                end = own.ended() => {
                    if end == Some(WatchEnd::Deleted) {
                        return Err(lost(key, LostReason::Revoked));
                    }
                    // Re-watching from our revision would be refused again
                    // as compacted: the next read checks our key and
                    // re-watches from there.
                    own_broken = true;
                }
                _ = session.ended().fired() => return Err(lost(key, LostReason::SessionEnded)),
                () = lock_core::deadline_passed(deadline) => {
                    return Err(LockError::timeout(BACKEND, key, started));
                }
                () = async {
                    // Created after writes we have not seen: the predecessor
                    // may be gone already, its deletion before the watch. Its
                    // key may even be back, written anew by the same lease
                    // (behind us now), so compare the incarnation, not the name.
                    if turn.created().await.is_some_and(|created| created > seen_at) {
                        match self.create_revision(key, &before).await {
                            Ok(Some(current)) if current == before_revision => {}
                            _ => return,
                        }
                    }
                    // Deleted, compacted or the hub stopping: read again.
                    let _ = turn.ended().await;
                } => {}
            }
        }
    }

    /// The create revision of `etcd_key` now, if it exists.
    async fn create_revision(&self, key: &LockKey, etcd_key: &[u8]) -> Result<Option<i64>, LockError> {
        let mut kv = self.client.kv_client();
        let options = GetOptions::new().with_keys_only();
        let found = self.call(key, "check predecessor", kv.get(etcd_key, Some(options))).await?;
        Ok(found.kvs().first().map(KeyValue::create_revision))
    }

    /// Turns our contender key into a lease, watching for its loss.
    fn grant(
        &self,
        key: &LockKey,
        options: &LockOptions,
        session: Arc<Session>,
        contender: String,
        revision: i64,
    ) -> Lease {
        let loss = LossSignal::new();
        let stop_monitor = CancellationToken::new();
        tokio::spawn(monitor(
            Arc::clone(&self.hub),
            self.client.clone(),
            Arc::clone(&session),
            HeldKey { contender: contender.clone(), revision },
            loss.clone(),
            stop_monitor.clone(),
            self.config.request_timeout_value(),
        ));
        let confirmed_at = session.confirmed_at();
        let grant = EtcdGrant { contender, revision, session: Arc::clone(&session), stop_monitor };
        debug!(%key, token = revision, "granted");
        Lease::new(
            key.clone(),
            FencingToken::new(u64::try_from(revision).unwrap_or_default()),
            options.owner_value().to_owned(),
            session.ttl(),
            confirmed_at,
            loss,
            Arc::new(grant),
        )
    }

    fn grant_of(lease: &Lease) -> Result<&EtcdGrant, LockError> {
        lease.backend_data_for::<EtcdGrant>(BACKEND)
    }
}

/// Writes a fresh contender key and reads the holder, as one transaction.
/// Returns our key's create revision and whether we hold the lock.
///
/// A key of ours that already exists is stale (a holding whose release did
/// not land, or an attempt whose cleanup did not): it is deleted and written
/// anew, so every grant gets a revision of its own and tokens never repeat.
async fn write_contender(
    client: Client,
    key: LockKey,
    mine: String,
    prefix: String,
    owner: String,
    lease: i64,
    limit: std::time::Duration,
) -> Result<(i64, bool), LockError> {
    let first = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
    let mut kv = client.kv_client();
    for _ in 0..3 {
        let txn = Txn::new()
            .when([Compare::create_revision(mine.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(mine.clone(), owner.clone(), Some(PutOptions::new().with_lease(lease))),
                TxnOp::get(prefix.clone(), Some(first.clone())),
            ])
            .or_else([TxnOp::get(mine.clone(), None)]);
        let response = match timeout(limit, kv.txn(txn)).await {
            Ok(response) => response.map_err(|e| error::map(Some(&key), e))?,
            Err(_) => return Err(error::timed_out(Some(&key), "contend", limit)),
        };
        let responses = response.op_responses();
        if response.succeeded() {
            let revision =
                response.header().map(|h| h.revision()).ok_or_else(|| error::malformed(Some(&key), "txn header"))?;
            let holder = first_kv(&responses, 1).map(KeyValue::create_revision);
            return Ok((revision, holder.is_none_or(|holder| holder == revision)));
        }
        if let Some(stale) = first_kv(&responses, 0).map(KeyValue::create_revision) {
            debug!(%key, stale, "replacing a stale contender key of our lease");
            let delete = Txn::new()
                .when([Compare::create_revision(mine.clone(), CompareOp::Equal, stale)])
                .and_then([TxnOp::delete(mine.clone(), None)]);
            match timeout(limit, kv.txn(delete)).await {
                Ok(deleted) => drop(deleted.map_err(|e| error::map(Some(&key), e))?),
                Err(_) => return Err(error::timed_out(Some(&key), "delete stale contender", limit)),
            }
        }
    }
    Err(LockError::backend(BACKEND, Some(&key), "our contender key kept reappearing"))
}

/// A contender write in flight. Dropped before it finished, it leaves the
/// write running and deletes the key once the write's revision is known, so a
/// write that lands late never becomes a ghost.
struct InFlight<'a> {
    lock: &'a EtcdLock,
    session: Arc<Session>,
    contender: String,
    write: Option<JoinHandle<WriteOutcome>>,
}

impl InFlight<'_> {
    async fn outcome(&mut self, key: &LockKey) -> WriteOutcome {
        let Some(write) = self.write.as_mut() else {
            return Err(LockError::backend(BACKEND, Some(key), "contender write awaited twice"));
        };
        let outcome = write.await;
        self.write = None;
        outcome.map_err(|e| LockError::backend(BACKEND, Some(key), e))?
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(write) = self.write.take() {
            self.lock.clean_up(leftover(&self.session, self.contender.clone(), Written::Pending(write)));
        }
    }
}

fn first_kv(responses: &[etcd_client::TxnOpResponse], index: usize) -> Option<&KeyValue> {
    match responses.get(index)? {
        etcd_client::TxnOpResponse::Get(get) => get.kvs().first(),
        _ => None,
    }
}

fn lost(key: &LockKey, reason: LostReason) -> LockError {
    LockError::lost(BACKEND, key, reason)
}

/// What to clean up of `contender`, written with `session`'s lease.
fn leftover(session: &Session, contender: String, written: Written) -> Leftover {
    Leftover { contender, written, lease: session.id(), lease_ended: session.ended().clone() }
}

/// Deletes an attempt's key if the attempt is dropped before it finished.
struct Attempt<'a> {
    lock: &'a EtcdLock,
    leftover: Option<Leftover>,
}

impl Attempt<'_> {
    fn done(&mut self) {
        self.leftover = None;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(leftover) = self.leftover.take() {
            self.lock.clean_up(leftover);
        }
    }
}

#[async_trait]
impl DistributedLock for EtcdLock {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let ttl = self.config.lease_ttl_value();
        Capabilities::fixed_ttl(ttl).with_fifo(true).with_expiry_slack(std::time::Duration::from_secs(2))
    }

    async fn acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
    ) -> Result<Lease, LockError> {
        let started = Instant::now();
        let mut attempt = Attempt { lock: self, leftover: None };
        let (session, contender, revision, holds) = self.enter(key, options, &mut attempt, deadline).await?;
        if !holds {
            let waited = self.wait_for_turn(key, &session, &contender, revision, deadline, started).await;
            if let Err(error) = waited {
                // A lost key is gone already; otherwise withdraw it, and if
                // that is not answered (or we are dropped meanwhile), the
                // attempt's clean-up keeps trying in the background.
                if matches!(error, LockError::Lost { .. }) || self.withdraw(key, &contender, revision).await.is_ok() {
                    attempt.done();
                }
                return Err(error);
            }
        }
        attempt.done();
        Ok(self.grant(key, options, session, contender, revision))
    }

    async fn try_acquire(&self, key: &LockKey, options: &LockOptions) -> Result<Option<Lease>, LockError> {
        let mut attempt = Attempt { lock: self, leftover: None };
        let deadline = Instant::now() + self.config.request_timeout_value();
        let entered = self.enter(key, options, &mut attempt, Some(deadline)).await.map_err(|error| match error {
            LockError::Timeout { .. } => LockError::unavailable(
                BACKEND,
                Some(key),
                "an earlier attempt's contender key is still being removed; etcd does not answer",
            ),
            other => other,
        });
        let (session, contender, revision, holds) = entered?;
        if !holds {
            self.withdraw(key, &contender, revision).await?;
            attempt.done();
            return Ok(None);
        }
        attempt.done();
        Ok(Some(self.grant(key, options, session, contender, revision)))
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
        let prefix = contenders_prefix(self.config.namespace_value(), key);
        let first = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
        let mut kv = self.client.kv_client();
        let found = self.call(key, "inspect", kv.get(prefix, Some(first))).await?;
        Ok(found.kvs().first().map(|holder| {
            let owner = match holder.value_str() {
                Ok(owner) if !owner.is_empty() => owner.to_owned(),
                // etcdctl and Go's Mutex store no owner string.
                _ => format!("etcd lease {:x}", holder.lease()),
            };
            LockInfo::new(owner, FencingToken::new(u64::try_from(holder.create_revision()).unwrap_or_default()))
        }))
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
