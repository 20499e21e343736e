//! The loss monitor of a held lock: reports it lost when its key is deleted
//! or its lease ends, across reconnects of the watch stream and compactions
//! of etcd's history.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use lock_core::{ClientSession, LockError, LossSignal, LostReason};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::client::Session;
use crate::endpoints::{EndpointHealth, Replay};
use crate::error;
use crate::watch::{WatchEnd, WatchHub};

/// One held key to watch: its name and the create revision of our grant.
pub(crate) struct HeldKey {
    pub(crate) contender: String,
    pub(crate) revision: i64,
}

/// Fires `loss` when the held key is deleted or the session ends; returns
/// when `stop` is cancelled or the loss is known.
///
/// A watch etcd cannot serve because the revisions it needs were compacted
/// (after a reconnect, say) is not retried from the same revision, which
/// etcd would refuse forever: the key is read instead. If it is gone, or is
/// another incarnation, the lock is lost; if it is still ours, the watch goes
/// on from the revision of that read, so a deletion after it is seen.
///
/// One such task runs per held lock, so it keeps little: `connection` is
/// the client's one shared copy, and the rarely needed read is boxed, not
/// part of the task's own allocation (with a `Client` of its own and the
/// read inline, 10,000 held locks took about three times the memory).
pub(crate) async fn monitor(
    hub: Arc<WatchHub>,
    connection: Arc<(Client, EndpointHealth)>,
    session: Arc<Session>,
    held: HeldKey,
    loss: LossSignal,
    stop: CancellationToken,
    request_timeout: Duration,
) {
    let mut watch_from = held.revision + 1;
    let mut pause = RETRY_FIRST;
    loop {
        let mut watch = hub.deletion(held.contender.clone(), watch_from);
        tokio::select! {
            () = stop.cancelled() => return,
            _ = loss.fired() => return,
            _ = session.ended().fired() => {
                loss.fire(LostReason::SessionEnded);
                return;
            }
            end = watch.ended() => if end == Some(WatchEnd::Deleted) {
                loss.fire(LostReason::Revoked);
                return;
            },
        }
        // Compacted, or the hub stopped: ask etcd directly.
        match Box::pin(still_held(&connection, &held, request_timeout)).await {
            Ok(Some(seen_at)) => {
                watch_from = seen_at + 1;
                pause = RETRY_FIRST;
            }
            Ok(None) => {
                loss.fire(LostReason::Revoked);
                return;
            }
            Err(error) => {
                // Unanswered: the guard's clock covers the time until an
                // answer comes.
                debug!(contender = held.contender, %error, "cannot read our key after a broken watch; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = loss.fired() => return,
                    () = sleep(pause) => {}
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The revision at which etcd answered that the key is still our grant, or
/// `None` when it is gone or is another incarnation.
async fn still_held(
    (client, health): &(Client, EndpointHealth),
    held: &HeldKey,
    limit: Duration,
) -> Result<Option<i64>, LockError> {
    let read = || {
        let (mut kv, contender) = (client.kv_client(), held.contender.clone());
        async move { kv.get(contender, Some(GetOptions::new().with_keys_only())).await }
    };
    let found = match health.send(limit, Replay::Idempotent, read).await {
        Ok(found) => found.map_err(|e| error::map(None, e))?,
        Err(_) => return Err(error::timed_out(None, "read our key", limit)),
    };
    let ours = found.kvs().first().is_some_and(|kv| kv.create_revision() == held.revision);
    Ok(ours.then(|| found.header().map(|h| h.revision()).unwrap_or(held.revision)))
}

const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
