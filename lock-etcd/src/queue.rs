//! Waiting for one's turn in a lock's queue, in any mode: until no key that
//! blocks ours and was created before it is left (and, for a semaphore,
//! fewer than its limit of its places are taken before ours). Each wake-up
//! is the deletion of the blocker just before ours (or of any place), seen
//! on the client's one watch stream, and is followed by a fresh read.

use etcd_client::{GetOptions, KeyValue, SortOrder, SortTarget, Txn, TxnOp};
use lock_core::{ClientSession, LockError, LockKey, LostReason};
use tokio::time::{Duration, Instant, sleep};
use tracing::debug;

use crate::contender::{Entered, all_kvs, first_kv, lost};
use crate::endpoints::Replay;
use crate::reader_writer::Contention;
use crate::watch::{ChangeWatch, Changes, WatchEnd};
use crate::{BACKEND, EtcdLock};

/// A range of etcd keys, `start..end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRange {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl KeyRange {
    /// The keys from `start` up to, not including, `end`.
    pub(crate) fn new(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self { start: start.into(), end: end.into() }
    }

    /// Every key that starts with `prefix`.
    pub(crate) fn prefix(prefix: &str) -> Self {
        Self::new(prefix, crate::layout::prefix_end(prefix.as_bytes()))
    }

    /// Whether `key` lies in the range.
    #[cfg(test)]
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && key < self.end.as_slice()
    }

    /// A read of the range: its first key (by create revision, in `order`),
    /// with no value, created no later than `max_create_revision` if given.
    pub(crate) fn first(&self, order: SortOrder, max_create_revision: Option<i64>) -> TxnOp {
        let mut options = GetOptions::new()
            .with_range(self.end.clone())
            .with_sort(SortTarget::Create, order)
            .with_limit(1)
            .with_keys_only();
        if let Some(revision) = max_create_revision {
            options = options.with_max_create_revision(revision);
        }
        TxnOp::get(self.start.clone(), Some(options))
    }

    /// A read of every key of the range, with values, in create order.
    pub(crate) fn all(&self) -> TxnOp {
        let options = GetOptions::new().with_range(self.end.clone()).with_sort(SortTarget::Create, SortOrder::Ascend);
        TxnOp::get(self.start.clone(), Some(options))
    }

    /// A read of the first `limit` keys of the range created before
    /// `revision`, with no value. (Not a count: etcd counts before it
    /// filters by revision.)
    pub(crate) fn first_before(&self, revision: i64, limit: u32) -> TxnOp {
        let options = GetOptions::new()
            .with_range(self.end.clone())
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_keys_only()
            .with_max_create_revision(revision - 1)
            .with_limit(i64::from(limit));
        TxnOp::get(self.start.clone(), Some(options))
    }

    /// The range's bounds, for a watch.
    pub(crate) fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        (self.start.clone(), self.end.clone())
    }
}

/// The pause before a failed read of our place is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

impl EtcdLock {
    /// Waits until no key in the contention's blockers created before ours
    /// is left and, for a semaphore, fewer than its limit in its places; and
    /// confirms in the same read that our own key is still there.
    pub(crate) async fn wait_for_turn(
        &self,
        key: &LockKey,
        entered: &Entered,
        contention: &Contention,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<(), LockError> {
        let (blockers, places) = (contention.blockers(), contention.places());
        let (session, contender, revision) = (&entered.session, entered.contender.as_str(), entered.revision);
        let mut own = self.hub.deletion(contender, revision + 1);
        // Set when the own-key watch could not be served (its history was
        // compacted): it is made again from the next read that finds our key.
        let mut own_broken = false;
        // A semaphore's watch of deletions among its places, kept from the
        // first read that finds them full until it breaks.
        let mut freed: Option<ChangeWatch> = None;
        let mut retried = false;
        loop {
            // One snapshot: the blocker just before us in each range, our own
            // key, and the places taken before ours.
            let mut reads: Vec<TxnOp> =
                blockers.iter().map(|range| range.first(SortOrder::Descend, Some(revision - 1))).collect();
            reads.push(TxnOp::get(contender, Some(GetOptions::new().with_keys_only())));
            if let Some(places) = places {
                reads.push(places.range.first_before(revision, places.limit.get()));
            }
            let snapshot = match self.txn(key, "find predecessor", Replay::Idempotent, Txn::new().and_then(reads)).await
            {
                Ok(snapshot) => snapshot,
                // The first request after the connection was reset (what
                // woke us may be the watch stream coming back) can meet the
                // dead connection: one more try, after a pause.
                Err(error @ LockError::Unavailable { .. }) if !retried => {
                    debug!(%key, %error, "reading our place failed; trying once more");
                    retried = true;
                    tokio::select! {
                        () = sleep(RETRY_PAUSE) => continue,
                        () = lock_core::deadline_passed(deadline) => {
                            return Err(LockError::timeout(BACKEND, key, started));
                        }
                    }
                }
                Err(error) => return Err(error),
            };
            retried = false;
            let responses = snapshot.op_responses();
            if first_kv(&responses, blockers.len()).map(KeyValue::create_revision) != Some(revision) {
                // Our key is gone: deleted from outside, or our lease ended.
                let reason = if session.ended().is_fired() { LostReason::SessionEnded } else { LostReason::Revoked };
                return Err(lost(key, reason));
            }
            let before = (0..blockers.len())
                .filter_map(|index| first_kv(&responses, index))
                .max_by_key(|found| found.create_revision());
            let full = places.is_some_and(|places| {
                all_kvs(&responses, blockers.len() + 1).len() >= usize::try_from(places.limit.get()).unwrap_or(0)
            });
            if before.is_none() && !full {
                return Ok(());
            }
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
            let before = before.map(|before| (before.create_revision(), before.key().to_vec()));
            if let (None, Some(places), None) = (&before, places, &freed) {
                freed = Some(self.hub.changes(places.range.bounds(), seen_at + 1, true));
            }
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
                    match before {
                        Some((before_revision, before)) => {
                            self.predecessor_gone(key, before_revision, before, seen_at).await;
                        }
                        // Any place freed may be ours: read again. A broken
                        // watch is made anew from that read.
                        None => {
                            let next = match freed.as_mut() {
                                Some(watch) => watch.next().await,
                                None => None,
                            };
                            if !matches!(next, Some(Changes::Events(_))) {
                                freed = None;
                            }
                        }
                    }
                } => {}
            }
        }
    }

    /// Completes when the key `before`, created at `before_revision` and
    /// seen at `seen_at`, may be gone (deleted, or its watch broken).
    async fn predecessor_gone(&self, key: &LockKey, before_revision: i64, before: Vec<u8>, seen_at: i64) {
        let mut turn = self.hub.deletion_from_now(before.clone());
        // Created after writes we have not seen: the predecessor may be gone
        // already, its deletion before the watch. Its key may even be back,
        // written anew by the same lease (behind us now), so compare the
        // incarnation, not the name.
        if turn.created().await.is_some_and(|created| created > seen_at) {
            match self.create_revision(key, &before).await {
                Ok(Some(current)) if current == before_revision => {}
                _ => return,
            }
        }
        // Deleted, compacted or the hub stopping: read again.
        let _ = turn.ended().await;
    }

    /// The create revision of `etcd_key` now, if it exists.
    async fn create_revision(&self, key: &LockKey, etcd_key: &[u8]) -> Result<Option<i64>, LockError> {
        let found = self.get(key, "check predecessor", etcd_key, GetOptions::new().with_keys_only()).await?;
        Ok(found.kvs().first().map(KeyValue::create_revision))
    }
}
