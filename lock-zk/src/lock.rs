//! The recipes: Curator's InterProcessMutex, InterProcessReadWriteLock,
//! InterProcessSemaphoreV2 and LeaderSelector, through zookeeper-client.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{
    Capabilities, ClientSession, DistributedLock, LeaderStream, Lease, LockError, LockInfo, LockKey, LockMode,
    LockOptions, LostReason, MAX_VALUE_BYTES, SessionSlot,
};
use tokio::time::Instant;
use tracing::debug;
use zookeeper_client::{Acls, Stat};

use crate::attempt::{Attempt, CreatedNode};
use crate::cleanup::{self, Leftover};
use crate::client::Session;
use crate::grant::{self, Proof, grant_of};
use crate::layout::{NodeKind, SEMAPHORE_LEASES, lock_path};
use crate::queue::Queue;
use crate::semaphore::{self, Wait};
use crate::wait::{Waited, first_in_line, wait_for_turn};
use crate::{BACKEND, ZkConfig, election};

/// A distributed lock on ZooKeeper, node for node Apache Curator's
/// `InterProcessMutex` ([`LockMode::Exclusive`]),
/// `InterProcessReadWriteLock` ([`LockMode::Read`], [`LockMode::Write`]),
/// `InterProcessSemaphoreV2` ([`LockMode::Semaphore`]) and `LeaderSelector`
/// (the mutex with a published value, [`LockOptions::value`]).
///
/// Under the key's lock directory (a container node, reaped by the server
/// when empty), each contender creates an ephemeral sequential node:
/// `_c_{guid}-lock-{sequence}` for the mutex, `_c_{guid}-__READ__{sequence}`
/// and `_c_{guid}-__WRIT__{sequence}` for the two sides of the
/// reader/writer lock. All of them queue by sequence number: a mutex or
/// write node holds when it is the first, a read node when no write or
/// mutex node is before it; each waiter watches only the one node in its
/// way. The fencing token is the holder node's `czxid`. See the
/// [crate docs](crate).
///
/// A semaphore keeps Curator's `{dir}/locks` mutex and `{dir}/leases` lease
/// nodes instead (see the [crate docs](crate)). A mutex contender's node
/// carries its published value as data when it has one (Curator's
/// `LeaderSelector` participant id), else its owner string.
///
/// Our mutex and our reader/writer lock exclude each other on one key.
/// Curator's do not: its `InterProcessMutex` sorts the reader/writer nodes
/// after its own and so ignores them (and its reader/writer lock ignores
/// `lock-` nodes), so a Curator mutex and a reader/writer lock on one path
/// are not safe together, as in Curator itself.
///
/// The recipe is run here rather than through `zookeeper-client`'s own
/// `Client::lock`, because a `lock` future dropped during its create leaves
/// the node behind (the conformance suite's cancellation case found 18 of 20);
/// here a dropped attempt always deletes its node.
///
/// ```no_run
/// # async fn run() -> Result<(), lock_core::LockError> {
/// use lock_core::Locks;
/// use lock_zk::{ZkConfig, ZkLock};
///
/// let locks = Locks::new(ZkLock::connect(ZkConfig::from_env()).await?);
/// let guard = locks.lock("jobs/nightly").acquire().await?;
/// guard.release().await?;
/// let reading = locks.read_lock("reports/daily").acquire().await?;
/// reading.release().await?;
/// let place = locks.semaphore("exports", 4).acquire().await?;
/// place.release().await?;
/// let leading = locks.lock("services/api/leader").value("10.0.0.7:8080").acquire().await?;
/// leading.proclaim("10.0.0.7:8081").await?;
/// leading.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ZkLock {
    config: ZkConfig,
    sessions: Arc<SessionSlot<Session>>,
}

impl ZkLock {
    /// Connects to ZooKeeper (the session is opened now, so an unreachable
    /// ensemble is reported here).
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for a malformed configuration;
    /// [`LockError::Unavailable`] when no host answers in time.
    pub async fn connect(config: ZkConfig) -> Result<Self, LockError> {
        config.validate()?;
        let lock = Self { config, sessions: Arc::default() };
        lock.session(None).await?;
        Ok(lock)
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ZkConfig {
        &self.config
    }

    /// The id of the client's current session.
    pub async fn session_id(&self) -> Option<i64> {
        self.sessions.current().await.map(|session| session.client.session().id().0)
    }

    /// The current session's id and password, for tests that end it from
    /// outside by attaching to it.
    pub async fn session_info(&self) -> Option<zookeeper_client::SessionInfo> {
        self.sessions.current().await.map(|session| session.client.session().clone())
    }

    /// The client's live session, opening a new one when ZooKeeper has
    /// expired the last (or there was none).
    async fn session(&self, key: Option<&LockKey>) -> Result<Arc<Session>, LockError> {
        self.sessions.get_or_start(|| Session::start(&self.config, key)).await
    }

    /// The slot of the client's session and its configuration, for what
    /// outlives a borrow of the client (an observer's stream).
    pub(crate) fn session_source(&self) -> (Arc<SessionSlot<Session>>, ZkConfig) {
        (Arc::clone(&self.sessions), self.config.clone())
    }

    /// The ACL of everything the client creates: its lock nodes, its lock
    /// directories and the base path's missing ancestors. With credentials,
    /// only this identity may touch them.
    pub(crate) fn acls(&self) -> Acls<'static> {
        if self.authenticated() { Acls::creator_all() } else { Acls::anyone_all() }
    }

    pub(crate) fn authenticated(&self) -> bool {
        self.config.digest_value().is_some()
    }

    /// Takes the session and creates our contender node named by `marker`
    /// in `dir`, with `data`, listing `dir` in the same round trip. A session
    /// that ZooKeeper already expired (while we were cut off, before the
    /// client noticed) is ended and the create retried once on a new session.
    pub(crate) async fn enter(
        &self,
        key: &LockKey,
        dir: String,
        marker: &str,
        data: &[u8],
    ) -> Result<(Arc<Session>, Attempt, CreatedNode), LockError> {
        let mut retried = false;
        loop {
            let session = self.session(Some(key)).await?;
            let mut attempt = Attempt::new(Arc::clone(&session), dir.clone(), marker);
            let (acls, protected, limit) = (self.acls(), self.authenticated(), self.config.request_timeout_value());
            match attempt.create(key, data.to_vec(), acls, protected, true, limit).await {
                Ok(node) => return Ok((session, attempt, node)),
                Err(LockError::Lost { .. }) if !retried => {
                    debug!(%key, "the session had expired; opening a new one");
                    session.ended().fire(LostReason::SessionEnded);
                    attempt.disarm();
                    retried = true;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// What proves a grant made at the first look, the listing sent with the
/// create: the create's reply itself (its stat is the token, no request of
/// its own), unless it had no stat or took so long to come (a quarter of the
/// TTL: a server busy with a burst of creates) that the proof it gives, which
/// starts when the create was sent, would leave the lease little time; then
/// a read of the node, whose proof starts now.
async fn first_look_proof(session: &Session, key: &LockKey, node: &CreatedNode) -> Result<Proof, LockError> {
    match node.czxid {
        Some(czxid) if node.sent.elapsed() < session.ttl() / 4 => Ok(Proof::Created { czxid, sent: node.sent }),
        _ => read_node(session, key, &node.path).await,
    }
}

/// Reads our node at `path` and sets its loss watch: the token when the
/// create's reply had none, and proof that the node outlived a wait.
async fn read_node(session: &Session, key: &LockKey, path: &str) -> Result<Proof, LockError> {
    let sent = Instant::now();
    let read = session.call(key, "read lock node", session.client.check_and_watch_stat(path)).await?;
    Ok(Proof::Read(read, sent))
}

/// The node kind `options` ask for.
fn kind_of(options: &LockOptions) -> Result<NodeKind, LockError> {
    NodeKind::of(options.mode_value()).ok_or_else(|| LockError::InvalidOptions {
        backend: BACKEND,
        message: format!("the {} mode is not available on this backend", options.mode_value()),
    })
}

/// The data of a node held in `mode` by `owner`, publishing `value`: see
/// [`election`] for the mutex layout's and [`semaphore::LeaseData`] for a
/// lease's.
fn node_data(mode: LockMode, owner: &str, value: Option<&str>) -> Vec<u8> {
    match mode {
        LockMode::Semaphore { limit } => semaphore::LeaseData::encode(limit, owner, value),
        _ => election::node_data(owner, value),
    }
}

/// The name of the node at `path` in its directory.
pub(crate) fn node_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}

/// Whether `error` carries ZooKeeper's `expected` error.
pub(crate) fn is(error: &LockError, expected: &zookeeper_client::Error) -> bool {
    match error {
        LockError::Backend { source, .. } => source.downcast_ref::<zookeeper_client::Error>() == Some(expected),
        _ => false,
    }
}

#[async_trait]
impl DistributedLock for ZkLock {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        // The lock TTL is the session timeout ZooKeeper negotiated.
        let ttl = self.config.session_timeout_value();
        Capabilities::fixed_ttl(ttl)
            .with_fifo(true)
            .with_expiry_slack(Duration::from_secs(2))
            .with_modes(LockMode::WITH_SEMAPHORE)
            .with_values(true)
    }

    async fn acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
    ) -> Result<Lease, LockError> {
        if let LockMode::Semaphore { limit } = options.mode_value() {
            let granted = semaphore::acquire(self, key, options, limit, Wait::Until(deadline)).await?;
            // An attempt that may wait ends with a grant or an error.
            return granted.ok_or_else(|| LockError::backend(BACKEND, Some(key), "a waiting attempt gave up"));
        }
        let started = Instant::now();
        let kind = kind_of(options)?;
        let dir = lock_path(self.config.base_path_value(), key);
        let data = node_data(options.mode_value(), options.owner_value(), options.value_value());
        let (session, mut attempt, mut node) = self.enter(key, dir, kind.marker(), &data).await?;
        let (path, listed) = (node.path.clone(), node.listing.take());
        match wait_for_turn(&session, key, (&attempt.dir, node_name(&path)), deadline, started, listed).await {
            Ok(waited) => {
                let proof = match waited {
                    Waited::AtOnce => first_look_proof(&session, key, &node).await?,
                    // After a wait, read our node: also proof that it
                    // outlived the wait.
                    Waited::AfterWaiting => read_node(&session, key, &path).await?,
                };
                // Disarmed only once the lease exists: dropped during the
                // grant's read, the attempt still deletes its node.
                let lease = grant::lease(key, options.owner_value(), kind.mode(), session, path, proof)?;
                attempt.disarm();
                Ok(lease)
            }
            Err(error @ LockError::Lost { .. }) => {
                attempt.disarm();
                Err(error)
            }
            Err(error) => {
                // Timed out or failed: our node goes before we return.
                attempt.withdraw(self.config.request_timeout_value()).await;
                Err(error)
            }
        }
    }

    async fn try_acquire(&self, key: &LockKey, options: &LockOptions) -> Result<Option<Lease>, LockError> {
        if let LockMode::Semaphore { limit } = options.mode_value() {
            return semaphore::acquire(self, key, options, limit, Wait::Once).await;
        }
        let kind = kind_of(options)?;
        let dir = lock_path(self.config.base_path_value(), key);
        let data = node_data(options.mode_value(), options.owner_value(), options.value_value());
        let (session, mut attempt, mut node) = self.enter(key, dir, kind.marker(), &data).await?;
        let listed = node.listing.take();
        if first_in_line(&session, key, &attempt.dir, node_name(&node.path), listed).await? {
            let proof = first_look_proof(&session, key, &node).await?;
            let lease = grant::lease(key, options.owner_value(), kind.mode(), session, node.path, proof)?;
            attempt.disarm();
            return Ok(Some(lease));
        }
        attempt.withdraw(self.config.request_timeout_value()).await;
        Ok(None)
    }

    async fn renew(&self, lease: &Lease) -> Result<Instant, LockError> {
        let grant = grant_of(lease)?;
        lease.ensure_held(BACKEND, Some(grant.session.ended()))?;
        // A recent answer on the session proves every lock of it (each node's
        // deletion is watched); otherwise ask, about once a quarter TTL per
        // session, not once per lock.
        let check = || async {
            let answer = grant.session.call(lease.key(), "renew", grant.session.client.check_stat(&grant.path)).await;
            // The session proved alive (or not) for all its locks.
            lock_core::metrics::session_renewal(BACKEND, answer.is_ok());
            let stat: Option<Stat> = answer?;
            match stat {
                Some(stat) if stat.czxid == grant.czxid => Ok(()),
                _ => {
                    lease.loss_signal().fire(LostReason::Revoked);
                    Err(LockError::lost(BACKEND, lease.key(), LostReason::Revoked))
                }
            }
        };
        grant.session.renewal.renew(check).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let grant = grant_of(lease)?;
        if lease.is_released() {
            return Err(LockError::NotHeld { backend: BACKEND, key: lease.key().clone() });
        }
        grant.stop_monitor.cancel();
        let deleted = grant.session.call(lease.key(), "release", grant.session.client.delete(&grant.path, None)).await;
        match deleted {
            Ok(()) => {
                lease.mark_released();
                Ok(())
            }
            Err(error) if is(&error, &zookeeper_client::Error::NoNode) || error.is_lost() => {
                let reason = lease.loss_signal().reason().unwrap_or(LostReason::Revoked);
                lease.loss_signal().fire(reason.clone());
                Err(LockError::lost(BACKEND, lease.key(), reason))
            }
            Err(error) => {
                // Unanswered: while the session lives (it may reconnect to
                // another server), our node would hold the lock for good.
                let (dir, name) = grant.path.rsplit_once('/').unwrap_or_default();
                let leftover = Leftover::Node(grant.path.clone());
                tokio::spawn(cleanup::delete_until_gone(&grant.session, dir.to_owned(), name.to_owned(), leftover));
                Err(error)
            }
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, LockError> {
        Ok(self.holders(key).await?.into_iter().next())
    }

    async fn holders(&self, key: &LockKey) -> Result<Vec<LockInfo>, LockError> {
        let session = self.session(Some(key)).await?;
        let dir = lock_path(self.config.base_path_value(), key);
        let children = match session.call(key, "list contenders", session.client.list_children(&dir)).await {
            Ok(children) => children,
            Err(error) if is(&error, &zookeeper_client::Error::NoNode) => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let queue = Queue::new(&children);
        // Every read is sent before the first answer is awaited: one round
        // trip for all readers.
        let reads: Vec<_> = queue
            .holders()
            .iter()
            .map(|holder| (*holder, session.client.get_data(&format!("{dir}/{}", holder.name))))
            .collect();
        let mut holders = Vec::with_capacity(reads.len());
        for (holder, read) in reads {
            match session.call(key, "read holder", read).await {
                Ok((data, stat)) => holders.push(election::holder_info(holder.name, holder.kind, &data, stat.czxid)),
                // Released since the listing.
                Err(error) if is(&error, &zookeeper_client::Error::NoNode) => {}
                Err(error) => return Err(error),
            }
        }
        if children.iter().any(|child| child == SEMAPHORE_LEASES) {
            holders.extend(semaphore::holders(&session, key, &dir).await?);
        }
        holders.sort_by_key(|holder| holder.token);
        Ok(holders)
    }

    async fn proclaim(&self, lease: &Lease, value: &str) -> Result<(), LockError> {
        let grant = grant_of(lease)?;
        lease.ensure_held(BACKEND, Some(grant.session.ended()))?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(LockError::InvalidOptions {
                backend: BACKEND,
                message: format!("a published value may hold at most {MAX_VALUE_BYTES} bytes, got {}", value.len()),
            });
        }
        let data = node_data(lease.mode(), lease.owner(), Some(value));
        // The node's path is unique to this grant (its name carries a GUID
        // and a sequence number never reused in its directory), so a node
        // found there is ours: no version is needed to be sure of it.
        let set = grant.session.client.set_data(&grant.path, &data, None);
        match grant.session.call(lease.key(), "proclaim", set).await {
            Ok(_) => {
                debug!(key = %lease.key(), token = %lease.token(), "proclaimed a new value");
                Ok(())
            }
            Err(error) if is(&error, &zookeeper_client::Error::NoNode) || error.is_lost() => {
                let reason = lease.loss_signal().reason().unwrap_or(LostReason::Revoked);
                lease.loss_signal().fire(reason.clone());
                Err(LockError::lost(BACKEND, lease.key(), reason))
            }
            Err(error) => Err(error),
        }
    }

    fn watch_leader(&self, key: &LockKey) -> Option<LeaderStream> {
        let (sessions, config) = self.session_source();
        Some(election::watch(sessions, config, key.clone()))
    }
}
