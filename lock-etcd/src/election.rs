//! Leader election on etcd: the layout of etcd's own election
//! (`clientv3/concurrency.Election`, `etcdctl elect`), publishing a new
//! value while leading, and observing who leads.
//!
//! # Layout
//!
//! An election is a mutex whose contenders publish a value: a candidate
//! writes `{name}/{lease hex}` on its client's lease with its proposal as the
//! key's value, as Go's `Campaign` does, and the key with the lowest create
//! revision under `{name}/` leads. So our candidates and `etcdctl elect NAME
//! PROPOSAL` queue together and `etcdctl elect -l NAME` shows our leader and
//! its value; an `etcdctl lock` holder (value `""`) leads with no value.
//!
//! # Proclaim
//!
//! Go's `Proclaim`: one transaction puts the new value on the leader's key,
//! with its lease, only while the key still has the create revision of our
//! grant. A key deleted or written anew since is never overwritten: the
//! lock is reported lost.
//!
//! # Observe
//!
//! Like Go's `Observe`, but through the client's one watch stream and never
//! ending on its own: read the first key under `{name}/` (`None` when there
//! is none) and report it when it differs from the last report (another
//! key, another incarnation, another value); then watch the prefix from
//! that read on, and read again when the leader's key changes or, while
//! nobody leads, when any key is written. A watch etcd cannot serve
//! (compacted history, a cancelled watch) is made anew from the next read; a
//! read that fails is reported as an error item and retried.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use lock_core::{ClientSession, LeaderStream, Lease, LockError, LockInfo, LockKey, LostReason, MAX_VALUE_BYTES};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::sleep;
use tracing::{Instrument, debug, info_span};

use crate::contender::{lost, stored_value};
use crate::endpoints::{EndpointHealth, Replay};
use crate::layout::{contenders_prefix, mode_of};
use crate::queue::KeyRange;
use crate::reader_writer::holder_info;
use crate::watch::{ChangeWatch, Changes, WatchHub};
use crate::{BACKEND, EtcdLock, error};

impl EtcdLock {
    /// Replaces the value `lease`'s key publishes, only while the key is
    /// still our grant's.
    pub(crate) async fn publish(&self, lease: &Lease, value: &str) -> Result<(), LockError> {
        let grant = Self::grant_of(lease)?;
        lease.ensure_held(BACKEND, Some(grant.session.ended()))?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(LockError::InvalidOptions {
                backend: BACKEND,
                message: format!("a published value may hold at most {MAX_VALUE_BYTES} bytes, got {}", value.len()),
            });
        }
        let stored = stored_value(lease.mode(), lease.owner(), Some(value));
        let put = TxnOp::put(grant.contender.as_str(), stored, Some(PutOptions::new().with_lease(grant.session.id())));
        let txn = Txn::new()
            .when([Compare::create_revision(grant.contender.as_str(), CompareOp::Equal, grant.revision)])
            .and_then([put]);
        let done = self.txn(lease.key(), "proclaim", Replay::IfNeverSent, txn).await?;
        if done.succeeded() {
            debug!(key = %lease.key(), token = grant.revision, "proclaimed");
            return Ok(());
        }
        let reason = if grant.session.ended().is_fired() { LostReason::SessionEnded } else { LostReason::Revoked };
        lease.loss_signal().fire(reason.clone());
        Err(lost(lease.key(), lease.loss_signal().reason().unwrap_or(reason)))
    }

    /// A stream of `key`'s leader, pushed by etcd's watches; `None` outside
    /// a tokio runtime.
    pub(crate) fn leaders(&self, key: &LockKey) -> Option<LeaderStream> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let observer = Observer {
            client: self.client.clone(),
            health: self.health.clone(),
            hub: Arc::clone(&self.hub),
            key: key.clone(),
            prefix: contenders_prefix(self.config.namespace_value(), key),
            request_timeout: self.config.request_timeout_value(),
        };
        let (sender, receiver) = mpsc::channel(1);
        let span = info_span!("etcd_observe", backend = BACKEND, %key);
        let task = runtime.spawn(observer.run(sender).instrument(span));
        Some(Box::pin(Leaders { receiver, task }))
    }
}

/// What an observer reports, as it reaches the stream.
type Report = Result<Option<LockInfo>, LockError>;

/// The stream [`EtcdLock::leaders`] returns; dropping it stops its observer.
struct Leaders {
    receiver: mpsc::Receiver<Report>,
    task: JoinHandle<()>,
}

impl futures_core::Stream for Leaders {
    type Item = Report;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Report>> {
        self.get_mut().receiver.poll_recv(cx)
    }
}

impl Drop for Leaders {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What tells one leader report from the next: the key, its incarnation
/// and its value.
type Identity = Option<(Vec<u8>, i64, Vec<u8>)>;

/// Watches one election for its observer.
struct Observer {
    client: Client,
    health: EndpointHealth,
    hub: Arc<WatchHub>,
    key: LockKey,
    prefix: String,
    request_timeout: Duration,
}

impl Observer {
    /// Reports the leader, then every change of leader or value, until the
    /// stream is dropped.
    async fn run(self, reports: mpsc::Sender<Report>) {
        let range = KeyRange::prefix(&self.prefix);
        let mut reported: Option<Identity> = None;
        let mut changes: Option<ChangeWatch> = None;
        let mut pause = RETRY_FIRST;
        loop {
            let leader = match self.leader().await {
                Ok((leader, revision)) => {
                    pause = RETRY_FIRST;
                    let identity =
                        leader.as_ref().map(|kv| (kv.key().to_vec(), kv.create_revision(), kv.value().to_vec()));
                    if reported.as_ref() != Some(&identity) {
                        let info =
                            leader.as_ref().map(|kv| holder_info(kv, mode_of(&self.prefix, kv.key(), kv.value())));
                        if reports.send(Ok(info)).await.is_err() {
                            return;
                        }
                        reported = Some(identity);
                    }
                    if changes.is_none() {
                        // Every change after the read is seen.
                        changes = Some(self.hub.changes(range.bounds(), revision + 1, false));
                    }
                    leader.map(|kv| kv.key().to_vec())
                }
                Err(error) => {
                    debug!(%error, "cannot read the leader; retrying");
                    reported = None;
                    if reports.send(Err(error)).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        () = sleep(pause) => {}
                        () = reports.closed() => return,
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                    continue;
                }
            };
            // Until a change that may change the report: the leader's key
            // written or deleted, or while nobody leads, any key written.
            while let Some(watch) = changes.as_mut() {
                let next = tokio::select! {
                    next = watch.next() => next,
                    () = reports.closed() => return,
                };
                match next {
                    Some(Changes::Events(events)) => {
                        let relevant = |change: &crate::watch::Change| match &leader {
                            Some(leader) => change.key == *leader,
                            None => !change.deleted,
                        };
                        if events.iter().any(relevant) {
                            break;
                        }
                    }
                    // Compacted, cancelled or the hub stopping: read again
                    // and watch anew from there.
                    Some(Changes::Broken) | None => changes = None,
                }
            }
        }
    }

    /// The first key under the election's prefix, if any, and the revision
    /// of the read.
    async fn leader(&self) -> Result<(Option<KeyValue>, i64), LockError> {
        let first = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
        let read = || {
            let (mut kv, prefix, first) = (self.client.kv_client(), self.prefix.clone(), first.clone());
            async move { kv.get(prefix, Some(first)).await }
        };
        let found = match self.health.send(self.request_timeout, Replay::Idempotent, read).await {
            Ok(found) => found.map_err(|e| error::map(Some(&self.key), e))?,
            Err(_) => return Err(error::timed_out(Some(&self.key), "read the leader", self.request_timeout)),
        };
        let revision =
            found.header().map(|h| h.revision()).ok_or_else(|| error::malformed(Some(&self.key), "get header"))?;
        Ok((found.kvs().first().cloned(), revision))
    }
}

const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
