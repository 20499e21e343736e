//! The lock recipe: Curator's InterProcessMutex, through zookeeper-client.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{
    Capabilities, ClientSession, DistributedLock, FencingToken, Lease, LockError, LockInfo, LockKey, LockOptions,
    LossSignal, LostReason, SessionSlot,
};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use zookeeper_client::{Acls, EventType, Stat};

use crate::attempt::Attempt;
use crate::cleanup::{self, Leftover};
use crate::client::Session;
use crate::layout::lock_path;
use crate::{BACKEND, ZkConfig, error};

use crate::attempt::{LOCK_NAME, SEQUENCE_DIGITS};

/// A distributed lock on ZooKeeper, node for node Apache Curator's
/// `InterProcessMutex`: under the key's lock directory (a container node,
/// reaped by the server when empty), each contender creates the ephemeral
/// sequential node `_c_{guid}-lock-{sequence}`; the lowest sequence holds;
/// each waiter watches only its predecessor. The fencing token is the holder
/// node's `czxid`. See the [crate docs](crate).
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
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ZkLock {
    config: ZkConfig,
    sessions: SessionSlot<Session>,
}

/// What a ZooKeeper lease remembers about its grant.
#[derive(Debug)]
struct ZkGrant {
    path: String,
    czxid: i64,
    session: Arc<Session>,
    stop_monitor: CancellationToken,
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
        let lock = Self { config, sessions: SessionSlot::default() };
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

    /// The ACL of everything the client creates: its lock nodes, its lock
    /// directories and the base path's missing ancestors. With credentials,
    /// only this identity may touch them.
    fn acls(&self) -> Acls<'static> {
        if self.authenticated() { Acls::creator_all() } else { Acls::anyone_all() }
    }

    fn authenticated(&self) -> bool {
        self.config.digest_value().is_some()
    }

    /// Runs one request with the request timeout.
    async fn call<T>(
        &self,
        key: &LockKey,
        what: &str,
        request: impl std::future::Future<Output = Result<T, zookeeper_client::Error>>,
    ) -> Result<T, LockError> {
        let limit = self.config.request_timeout_value();
        match timeout(limit, request).await {
            Ok(result) => result.map_err(|e| error::map(Some(key), e)),
            Err(_) => Err(error::timed_out(Some(key), what, limit)),
        }
    }

    /// Takes the session and creates our contender node. A session that
    /// ZooKeeper already expired (while we were cut off, before the client
    /// noticed) is ended and the create retried once on a new session.
    async fn enter(&self, key: &LockKey, options: &LockOptions) -> Result<(Arc<Session>, Attempt, String), LockError> {
        let mut retried = false;
        loop {
            let session = self.session(Some(key)).await?;
            let dir = lock_path(self.config.base_path_value(), key);
            let mut attempt = Attempt::new(Arc::clone(&session), dir);
            let owner = options.owner_value().as_bytes().to_vec();
            let (acls, protected, limit) = (self.acls(), self.authenticated(), self.config.request_timeout_value());
            match attempt.create(key, owner, acls, protected, limit).await {
                Ok(path) => return Ok((session, attempt, path)),
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

    /// Waits until our node `name` is the lowest in `dir`, watching only the
    /// node just before it (no herd on release).
    async fn wait_for_turn(
        &self,
        key: &LockKey,
        session: &Session,
        dir: &str,
        name: &str,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<Waited, LockError> {
        let mut waited = Waited::AtOnce;
        loop {
            match self.turn(key, session, dir, name, deadline, started).await {
                // Disconnected, but the session may live on (Curator's
                // SUSPENDED): keep waiting until it is known ended or the
                // deadline passes.
                Err(LockError::Unavailable { .. }) => {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = session.ended().fired() => return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded)),
                        () = lock_core::deadline_passed(deadline) => return Err(LockError::timeout(BACKEND, key, started)),
                    }
                }
                Ok(Turn::Mine) => return Ok(waited),
                Ok(Turn::Succeeded) => return Ok(Waited::AfterWaiting),
                Ok(Turn::NotYet) => {}
                Err(error) => return Err(error),
            }
            waited = Waited::AfterWaiting;
        }
    }

    /// One look at the queue: ours, or wait for the predecessor to change.
    async fn turn(
        &self,
        key: &LockKey,
        session: &Session,
        dir: &str,
        name: &str,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<Turn, LockError> {
        let children = self.call(key, "list contenders", session.client.list_children(dir)).await?;
        let contenders = contenders(session, dir, &children);
        let Some(position) = contenders.iter().position(|child| *child == name) else {
            let reason = if session.ended().is_fired() { LostReason::SessionEnded } else { LostReason::Revoked };
            return Err(LockError::lost(BACKEND, key, reason));
        };
        let Some(before) = position.checked_sub(1).and_then(|i| contenders.get(i)) else { return Ok(Turn::Mine) };
        // With one contender before us, its end is our turn: nodes created
        // later get higher sequence numbers (the directory cannot be reaped
        // and re-created while our node is in it), so no listing is needed to
        // confirm it. This is every hand-off from a holder to the next
        // waiter. The grant then reads our own node, which also proves it
        // still exists.
        let next_in_line = position == 1;
        let turn_when_gone = if next_in_line { Turn::Succeeded } else { Turn::NotYet };
        let before = format!("{dir}/{before}");
        let (stat, watcher) = self.call(key, "watch predecessor", session.client.check_and_watch_stat(&before)).await?;
        if stat.is_none() {
            return Ok(turn_when_gone);
        }
        tokio::select! {
            event = watcher.changed() => {
                Ok(if event.event_type == EventType::NodeDeleted { turn_when_gone } else { Turn::NotYet })
            }
            _ = session.ended().fired() => Err(LockError::lost(BACKEND, key, LostReason::SessionEnded)),
            () = lock_core::deadline_passed(deadline) => Err(LockError::timeout(BACKEND, key, started)),
        }
    }

    /// Reads `path`'s stat and sets a watch on it, in one request; with the
    /// time the request was sent.
    async fn read_node(&self, key: &LockKey, session: &Session, path: &str) -> Result<(NodeRead, Instant), LockError> {
        let sent = Instant::now();
        Ok((self.call(key, "read lock node", session.client.check_and_watch_stat(path)).await?, sent))
    }

    /// Turns the granted node into a lease, with `read`: the node's stat (the
    /// token) and its loss watch, from one request. `sent`: when that request
    /// was sent.
    fn grant(
        &self,
        key: &LockKey,
        options: &LockOptions,
        session: Arc<Session>,
        path: String,
        (read, sent): (NodeRead, Instant),
    ) -> Result<Lease, LockError> {
        let (Some(stat), watcher) = read else { return Err(LockError::lost(BACKEND, key, LostReason::Revoked)) };
        let loss = LossSignal::new();
        let stop = CancellationToken::new();
        tokio::spawn(monitor(Arc::clone(&session), path.clone(), watcher, loss.clone(), stop.clone()));
        debug!(%key, path, czxid = stat.czxid, "granted");
        let ttl = session.ttl();
        let grant = ZkGrant { path, czxid: stat.czxid, session, stop_monitor: stop };
        Ok(Lease::new(
            key.clone(),
            FencingToken::new(u64::try_from(stat.czxid).unwrap_or_default()),
            options.owner_value().to_owned(),
            ttl,
            sent,
            loss,
            Arc::new(grant),
        ))
    }
}

/// Reports the held lock lost when its node is deleted or its session ends.
async fn monitor(
    session: Arc<Session>,
    path: String,
    first: zookeeper_client::OneshotWatcher,
    loss: LossSignal,
    stop: CancellationToken,
) {
    let mut next = Some(first);
    loop {
        let watched = match next.take() {
            Some(watcher) => Ok((true, watcher)),
            None => session.client.check_and_watch_stat(&path).await.map(|(stat, watcher)| (stat.is_some(), watcher)),
        };
        let watcher = match watched {
            Ok((true, watcher)) => watcher,
            Ok((false, _)) => return loss.fire(LostReason::Revoked),
            Err(_) => {
                // Session trouble: the session watcher or the guard's clock decides.
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = session.ended().fired() => return loss.fire(LostReason::SessionEnded),
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            _ = loss.fired() => return,
            _ = session.ended().fired() => return loss.fire(LostReason::SessionEnded),
            event = watcher.changed() => {
                if event.event_type == EventType::NodeDeleted {
                    return loss.fire(LostReason::Revoked);
                }
            }
        }
    }
}

/// What one look at the queue found.
enum Turn {
    /// Ours at this look: no contender before us.
    Mine,
    /// Ours after waiting: the only contender before us has gone.
    Succeeded,
    /// Look again.
    NotYet,
}

/// Whether the lock was free at the first look at the queue.
enum Waited {
    AtOnce,
    AfterWaiting,
}

/// A node's stat (`None`: no such node) and the watch set on it.
type NodeRead = (Option<Stat>, zookeeper_client::OneshotWatcher);

fn grant_of(lease: &Lease) -> Result<&ZkGrant, LockError> {
    lease.backend_data_for::<ZkGrant>(BACKEND)
}

fn is(error: &LockError, expected: &zookeeper_client::Error) -> bool {
    match error {
        LockError::Backend { source, .. } => source.downcast_ref::<zookeeper_client::Error>() == Some(expected),
        _ => false,
    }
}

/// The contender nodes among `children` of `dir`, lowest sequence first,
/// without the nodes `session` is deleting (see
/// [`Withdrawn`](crate::cleanup::Withdrawn)).
fn contenders<'a>(session: &Session, dir: &str, children: &'a [String]) -> Vec<&'a String> {
    let mut contenders: Vec<&String> =
        children.iter().filter(|child| sequence(child).is_some() && !session.withdrawn.contains(dir, child)).collect();
    contenders.sort_by_key(|child| sequence(child));
    contenders
}

/// The sequence suffix of a contender node name, if it is one.
fn sequence(name: &str) -> Option<&str> {
    let suffix = name.get(name.len().checked_sub(SEQUENCE_DIGITS)?..)?;
    (name.contains(LOCK_NAME) && suffix.bytes().all(|b| b.is_ascii_digit())).then_some(suffix)
}

#[async_trait]
impl DistributedLock for ZkLock {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        // The lock TTL is the session timeout ZooKeeper negotiated.
        let ttl = self.config.session_timeout_value();
        Capabilities::fixed_ttl(ttl).with_fifo(true).with_expiry_slack(Duration::from_secs(2))
    }

    async fn acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
    ) -> Result<Lease, LockError> {
        let started = Instant::now();
        let (session, mut attempt, path) = self.enter(key, options).await?;
        let name = path.rsplit('/').next().unwrap_or_default().to_owned();
        // Sent before the queue is listed and answered in the same round
        // trip: when the lock is free at once, the grant needs no request of
        // its own.
        let reader = Arc::clone(&session);
        let (sent, early_read) = (Instant::now(), reader.client.check_and_watch_stat(&path));
        match self.wait_for_turn(key, &session, &attempt.dir, &name, deadline, started).await {
            Ok(waited) => {
                let read = match waited {
                    Waited::AtOnce => (self.call(key, "read lock node", early_read).await?, sent),
                    // Read again after a wait: it also proves our node
                    // outlived the wait.
                    Waited::AfterWaiting => {
                        drop(early_read);
                        self.read_node(key, &session, &path).await?
                    }
                };
                // Disarmed only once the lease exists: dropped during the
                // grant's read, the attempt still deletes its node.
                let lease = self.grant(key, options, session, path, read)?;
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
        let (session, mut attempt, path) = self.enter(key, options).await?;
        let name = path.rsplit('/').next().unwrap_or_default();
        // Both requests in one round trip, as in `acquire`.
        let reader = Arc::clone(&session);
        let (sent, early_read) = (Instant::now(), reader.client.check_and_watch_stat(&path));
        let children = self.call(key, "list contenders", session.client.list_children(&attempt.dir)).await?;
        let lowest = contenders(&session, &attempt.dir, &children).first().and_then(|child| sequence(child));
        if lowest.is_some() && lowest == sequence(name) {
            let read = (self.call(key, "read lock node", early_read).await?, sent);
            let lease = self.grant(key, options, session, path, read)?;
            attempt.disarm();
            return Ok(Some(lease));
        }
        drop(early_read);
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
            let stat: Option<Stat> =
                self.call(lease.key(), "renew", grant.session.client.check_stat(&grant.path)).await?;
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
        let deleted = self.call(lease.key(), "release", grant.session.client.delete(&grant.path, None)).await;
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
        let session = self.session(Some(key)).await?;
        let dir = lock_path(self.config.base_path_value(), key);
        let children = match self.call(key, "list contenders", session.client.list_children(&dir)).await {
            Ok(children) => children,
            Err(error) if is(&error, &zookeeper_client::Error::NoNode) => return Ok(None),
            Err(error) => return Err(error),
        };
        let Some(holder) = children.iter().filter(|c| sequence(c).is_some()).min_by_key(|c| sequence(c)) else {
            return Ok(None);
        };
        let path = format!("{dir}/{holder}");
        match self.call(key, "read holder", session.client.get_data(&path)).await {
            Ok((data, stat)) => {
                let owner = String::from_utf8(data).ok().filter(|o| !o.is_empty()).unwrap_or_else(|| holder.clone());
                Ok(Some(LockInfo::new(owner, FencingToken::new(u64::try_from(stat.czxid).unwrap_or_default()))))
            }
            Err(error) if is(&error, &zookeeper_client::Error::NoNode) => Ok(None),
            Err(error) => Err(error),
        }
    }
}
