//! Writing a contender key, in any mode, and taking it back: the write that
//! enters the queue and reads in the same transaction whether the lock is
//! ours, and the clean-up of every attempt that ends without a grant.

use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, KeyValue, PutOptions, SortOrder, Txn, TxnOp};
use lock_core::{ClientSession, LockError, LockKey, LockMode, LockOptions, LostReason};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tracing::debug;

use crate::cleanup::{Leftover, WriteOutcome, Written};
use crate::client::Session;
use crate::endpoints::{EndpointHealth, Replay};
use crate::queue::KeyRange;
use crate::reader_writer::Contention;
use crate::semaphore::{Places, Record};
use crate::{BACKEND, EtcdLock, error};

/// A contender key of ours that etcd has written.
#[derive(Debug)]
pub(crate) struct Entered {
    /// The lease the key is attached to.
    pub(crate) session: Arc<Session>,
    /// The key.
    pub(crate) contender: String,
    /// Its create revision: its place in the queue, and its fencing token.
    pub(crate) revision: i64,
    /// Where it stood when it was written.
    pub(crate) standing: Standing,
}

/// Where a contender key stood when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Nothing blocked it: it holds the lock.
    Holds,
    /// It waits for keys created before it.
    Waits,
    /// It may not contend: a semaphore of another limit uses the lock (the
    /// message says which).
    Conflict(String),
}

impl EtcdLock {
    /// Takes the session and writes our contender key, recording it in
    /// `attempt` for cleanup. A lease etcd no longer knows (it expired while
    /// we were cut off, before the keep-alive noticed) ends the session, and
    /// the write is retried once on a new lease.
    pub(crate) async fn enter(
        &self,
        key: &LockKey,
        options: &LockOptions,
        contention: &Contention,
        attempt: &mut Attempt<'_>,
        deadline: Option<Instant>,
    ) -> Result<Entered, LockError> {
        let started = Instant::now();
        let mut retried = false;
        loop {
            let session = self.session(key).await?;
            let contender = contention.contender(session.id());
            // A mutex key has one name per lease: an earlier attempt's
            // clean-up must be done before we write it again. (A reader's or
            // writer's name is new, so nothing cleans it up yet.)
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
                (self.client.clone(), self.health.clone()),
                key.clone(),
                contender.clone(),
                Queue { blockers: contention.blockers().to_vec(), places: contention.places().cloned() },
                stored_value(options.mode_value(), options.owner_value(), options.value_value()),
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
                Ok((revision, standing)) => {
                    attempt.leftover = Some(leftover(&session, contender.clone(), Written::At(revision)));
                    return Ok(Entered { session, contender, revision, standing });
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
    pub(crate) async fn withdraw(&self, key: &LockKey, contender: &str, revision: i64) -> Result<bool, LockError> {
        let txn = Txn::new()
            .when([Compare::create_revision(contender, CompareOp::Equal, revision)])
            .and_then([TxnOp::delete(contender, None)]);
        Ok(self.txn(key, "delete contender", Replay::IfNeverSent, txn).await?.succeeded())
    }

    /// Starts deleting a key of ours that holds no grant, in the background;
    /// the next attempt on that key waits until it is done.
    pub(crate) fn clean_up(&self, leftover: Leftover) {
        let connection = (self.client.clone(), self.health.clone());
        self.cleanups.start(connection, leftover, self.config.request_timeout_value());
    }
}

/// The value a contender key stores: a semaphore contender's record, or the
/// value the holder publishes (a leader's proposal, where etcd's election
/// keeps it), or else the owner string.
pub(crate) fn stored_value(mode: LockMode, owner: &str, value: Option<&str>) -> String {
    match Record::new(mode, owner, value) {
        Some(record) => record.encode(),
        None => value.unwrap_or(owner).to_owned(),
    }
}

/// What a contender waits for: keys of `blockers` created before its own,
/// and for a semaphore, its `places` once full.
struct Queue {
    blockers: Vec<KeyRange>,
    places: Option<Places>,
}

/// Writes a fresh contender key and reads, in the same transaction, the
/// first key of each range in the queue's blockers, and every key of its
/// places. Returns our key's create revision and where it stands: it holds
/// when no blocker was created before it and, for a semaphore, fewer than
/// its limit of places are taken; it may not contend when a place names
/// another limit.
///
/// A key of ours that already exists is stale (a holding whose release did
/// not land, or an attempt whose cleanup did not): it is deleted and written
/// anew, so every grant gets a revision of its own and tokens never repeat.
///
/// Each write is sent again only when it provably never left the client; a
/// write that may have reached etcd fails, and its attempt's clean-up deals
/// with the key it may have left.
async fn write_contender(
    (client, health): (Client, EndpointHealth),
    key: LockKey,
    mine: String,
    queue: Queue,
    value: String,
    lease: i64,
    limit: std::time::Duration,
) -> WriteOutcome {
    let Queue { blockers, places } = queue;
    let run = |txn: Txn| {
        let (client, health) = (&client, &health);
        async move {
            let send = || {
                let (mut kv, txn) = (client.kv_client(), txn.clone());
                async move { kv.txn(txn).await }
            };
            health.send(limit, Replay::IfNeverSent, send).await
        }
    };
    for _ in 0..3 {
        let mut writes = vec![TxnOp::put(mine.clone(), value.clone(), Some(PutOptions::new().with_lease(lease)))];
        writes.extend(blockers.iter().map(|range| range.first(SortOrder::Ascend, None)));
        writes.extend(places.iter().map(|places| places.range.all()));
        let txn = Txn::new()
            .when([Compare::create_revision(mine.clone(), CompareOp::Equal, 0)])
            .and_then(writes)
            .or_else([TxnOp::get(mine.clone(), None)]);
        let response = match run(txn).await {
            Ok(response) => response.map_err(|e| error::map(Some(&key), e))?,
            Err(_) => return Err(error::timed_out(Some(&key), "contend", limit)),
        };
        let responses = response.op_responses();
        if response.succeeded() {
            let revision =
                response.header().map(|h| h.revision()).ok_or_else(|| error::malformed(Some(&key), "txn header"))?;
            // Our own key is the only one at our revision.
            let free = (1..=blockers.len())
                .all(|index| first_kv(&responses, index).is_none_or(|first| first.create_revision() == revision));
            let room = match &places {
                Some(places) => {
                    let others = all_kvs(&responses, blockers.len() + 1);
                    match places.taken(others.iter().filter(|other| other.create_revision() != revision)) {
                        Ok(taken) => taken < usize::try_from(places.limit.get()).unwrap_or(usize::MAX),
                        Err(conflict) => return Ok((revision, Standing::Conflict(conflict))),
                    }
                }
                None => true,
            };
            let standing = if free && room { Standing::Holds } else { Standing::Waits };
            return Ok((revision, standing));
        }
        if let Some(stale) = first_kv(&responses, 0).map(KeyValue::create_revision) {
            debug!(%key, stale, "replacing a stale contender key of our lease");
            let delete = Txn::new()
                .when([Compare::create_revision(mine.clone(), CompareOp::Equal, stale)])
                .and_then([TxnOp::delete(mine.clone(), None)]);
            match run(delete).await {
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

/// Deletes an attempt's key if the attempt is dropped before it finished.
pub(crate) struct Attempt<'a> {
    lock: &'a EtcdLock,
    leftover: Option<Leftover>,
}

impl<'a> Attempt<'a> {
    /// An attempt that has written nothing yet.
    pub(crate) fn new(lock: &'a EtcdLock) -> Self {
        Self { lock, leftover: None }
    }

    /// The attempt's key holds a grant now, or is gone: nothing to clean up.
    pub(crate) fn done(&mut self) {
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

/// The first key a transaction's `index`th read found.
pub(crate) fn first_kv(responses: &[etcd_client::TxnOpResponse], index: usize) -> Option<&KeyValue> {
    all_kvs(responses, index).first()
}

/// Every key a transaction's `index`th read found.
pub(crate) fn all_kvs(responses: &[etcd_client::TxnOpResponse], index: usize) -> &[KeyValue] {
    match responses.get(index) {
        Some(etcd_client::TxnOpResponse::Get(get)) => get.kvs(),
        _ => &[],
    }
}

/// The lock on `key` is lost, for `reason`.
pub(crate) fn lost(key: &LockKey, reason: LostReason) -> LockError {
    LockError::lost(BACKEND, key, reason)
}

/// What to clean up of `contender`, written with `session`'s lease.
pub(crate) fn leftover(session: &Session, contender: String, written: Written) -> Leftover {
    Leftover { contender, written, lease: session.id(), lease_ended: session.ended().clone() }
}
