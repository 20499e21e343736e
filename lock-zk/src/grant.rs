//! A contender node that holds its key, as a lease: its token, and the task
//! that reports its loss when the node is deleted or its session ends.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{ClientSession, FencingToken, Lease, LockError, LockKey, LockMode, LossSignal, LostReason};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use zookeeper_client::{EventType, OneshotWatcher, Stat};

use crate::BACKEND;
use crate::client::Session;

/// What a ZooKeeper lease remembers about its grant.
#[derive(Debug)]
pub(crate) struct ZkGrant {
    /// The holding node.
    pub(crate) path: String,
    /// Its `czxid`: the fencing token, and proof that a node found at `path`
    /// is still ours.
    pub(crate) czxid: i64,
    pub(crate) session: Arc<Session>,
    pub(crate) stop_monitor: CancellationToken,
}

/// A node's stat (`None`: no such node) and the watch set on it.
pub(crate) type NodeRead = (Option<Stat>, OneshotWatcher);

/// The grant of `lease`, or the error for a lease of another backend.
pub(crate) fn grant_of(lease: &Lease) -> Result<&ZkGrant, LockError> {
    lease.backend_data_for::<ZkGrant>(BACKEND)
}

/// The fencing token of a node created at `czxid`.
pub(crate) fn token(czxid: i64) -> FencingToken {
    FencingToken::new(u64::try_from(czxid).unwrap_or_default())
}

/// What a grant knows of its node: its `czxid` (the token), and since when
/// the session is proven alive.
pub(crate) enum Proof {
    /// The node read, with its loss watch set, by a request sent at the
    /// instant given.
    Read(NodeRead, Instant),
    /// The create's own reply: the node was made at `czxid` by a request sent
    /// at `sent`. The loss watch is set by the lease's monitor, whose first
    /// look also catches a node deleted in between.
    Created { czxid: i64, sent: Instant },
}

/// Turns the granted node at `path` into a lease held in `mode` by `owner`,
/// with `proof` of its token and of the session's liveness.
pub(crate) fn lease(
    key: &LockKey,
    owner: &str,
    mode: LockMode,
    session: Arc<Session>,
    path: String,
    proof: Proof,
) -> Result<Lease, LockError> {
    let (czxid, watcher, sent, proven_by) = match proof {
        Proof::Read((Some(stat), watcher), sent) => (stat.czxid, Some(watcher), sent, "read"),
        Proof::Read((None, _), _) => return Err(LockError::lost(BACKEND, key, LostReason::Revoked)),
        Proof::Created { czxid, sent } => (czxid, None, sent, "create"),
    };
    let loss = LossSignal::new();
    let stop = CancellationToken::new();
    tokio::spawn(monitor(Arc::clone(&session), path.clone(), watcher, loss.clone(), stop.clone()));
    debug!(%key, %mode, path, czxid, proven_by, "granted");
    let ttl = session.ttl();
    let grant = ZkGrant { path, czxid, session, stop_monitor: stop };
    let lease = Lease::new(key.clone(), token(czxid), owner.to_owned(), ttl, sent, loss, Arc::new(grant));
    Ok(lease.with_mode(mode))
}

/// Reports the held lock lost when its node is deleted or its session ends;
/// `first`: the node's loss watch, when the grant already set it.
async fn monitor(
    session: Arc<Session>,
    path: String,
    first: Option<OneshotWatcher>,
    loss: LossSignal,
    stop: CancellationToken,
) {
    let mut next = first;
    loop {
        let watched = match next.take() {
            Some(watcher) => Ok((true, watcher)),
            // Released meanwhile: the release stops us before it deletes
            // the node, so a node found gone after that is no loss. The
            // request is sent only when its future is first polled (the
            // client sends on the call), never after the stop.
            None => tokio::select! {
                biased;
                () = stop.cancelled() => return,
                read = async { session.client.check_and_watch_stat(&path).await } => {
                    read.map(|(stat, watcher)| (stat.is_some(), watcher))
                }
            },
        };
        let watcher = match watched {
            Ok((true, watcher)) => watcher,
            Ok((false, _)) => return loss.fire(LostReason::Revoked),
            Err(_) => {
                // Session trouble: the session watcher or the guard's clock decides.
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    _ = session.ended().fired() => return loss.fire(LostReason::SessionEnded),
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
        };
        tokio::select! {
            biased;
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
