//! Learning that a reader/writer lock's keys changed, and watching a held
//! contender key until it is released or lost.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{ClientSession, LossSignal, LostReason};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::api::{Api, ApiError, KeyedEntry, MAX_BLOCKING_WAIT, TxnOutcome};
use crate::contender::leave;
use crate::monitor::{PrefixWatch, Snapshot};
use crate::reader_writer::mentions;
use crate::scene::{Gate, Scene};
use crate::session::Session;

/// How long after the grant a held lock's watch sends its first query (a
/// change in between answers it at once: it starts from the grant's index).
const FIRST_WATCH_DELAY: Duration = Duration::from_millis(100);

/// How a waiter or holder learns that its lock's keys changed: with a
/// blocking query of its own while the client has leave for one (see
/// [`MAX_KEY_WATCHES`](crate::MAX_KEY_WATCHES) and
/// [`MAX_BLOCKING_WAITS`](crate::MAX_BLOCKING_WAITS)), else woken by the
/// client's shared prefix watch and then reading the lock's keys once.
pub(crate) struct ChangeFeed {
    api: Api,
    tree: String,
    own_query: Option<OwnedSemaphorePermit>,
    shared: Arc<PrefixWatch>,
    snapshots: Option<watch::Receiver<Option<Snapshot>>>,
    /// The newest shared read already acted on.
    consumed: u64,
}

impl ChangeFeed {
    pub(crate) fn new(
        api: Api,
        tree: String,
        own_query: Option<OwnedSemaphorePermit>,
        shared: Arc<PrefixWatch>,
    ) -> Self {
        Self { api, tree, own_query, shared, snapshots: None, consumed: 0 }
    }

    /// The lock's keys once they changed after `index`, or after `wait`.
    pub(crate) async fn next(&mut self, index: u64, wait: Duration) -> Result<(Vec<KeyedEntry>, u64), ApiError> {
        if self.own_query.is_some() {
            return self.api.read_prefix(&self.tree, index.max(1), wait.max(Duration::from_millis(1))).await;
        }
        let until = Instant::now() + wait;
        let snapshots = self.snapshots.get_or_insert_with(|| self.shared.subscribe());
        loop {
            let newest = snapshots.borrow_and_update().as_deref().map(|(read_at, _)| *read_at);
            if let Some(read_at) = newest.filter(|read_at| *read_at > index.max(self.consumed)) {
                self.consumed = read_at;
                break;
            }
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() {
                    *snapshots = self.shared.subscribe();
                },
                () = sleep_until(until) => break,
            }
        }
        self.api.read_prefix(&self.tree, 0, Duration::ZERO).await
    }
}

/// A held contender key to watch.
pub(crate) struct HeldKey {
    pub(crate) api: Api,
    pub(crate) lock_prefix: String,
    pub(crate) kv_key: String,
    pub(crate) token: u64,
    pub(crate) session: Arc<Session>,
    pub(crate) loss: LossSignal,
    pub(crate) stop: CancellationToken,
}

impl HeldKey {
    fn report_lost(&self, why: &str) {
        let reason = if self.session.ended().is_fired() { LostReason::SessionEnded } else { LostReason::Revoked };
        warn!(key = self.kv_key, token = self.token, %reason, why, "held reader/writer lock lost");
        self.loss.fire(reason);
    }
}

/// Watches a held contender until it is released or lost: lost when its key
/// is gone or changed, its session ends, or `.lock` has become anything but
/// our gate (a plain lock may hold it beside us). When the gate's session
/// ended with the lock in use, makes the gate ours again, unlocked during
/// the lock delay (during which nobody can lock `.lock`), so that
/// `consul lock` goes on refusing the prefix.
pub(crate) async fn watch_held(held: HeldKey, mut feed: ChangeFeed) {
    tokio::select! {
        () = held.stop.cancelled() => return,
        _ = held.session.ended().fired() => return held.loss.fire(LostReason::SessionEnded),
        () = sleep(FIRST_WATCH_DELAY) => {}
    }
    let mut index = held.token;
    let mut pause = Duration::from_millis(100);
    let mut lock_delay_until: Option<Instant> = None;
    loop {
        let wait = lock_delay_until.map_or(MAX_BLOCKING_WAIT, |until| {
            until.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))
        });
        let read = tokio::select! {
            () = held.stop.cancelled() => return,
            _ = held.loss.fired() => return,
            _ = held.session.ended().fired() => return held.loss.fire(LostReason::SessionEnded),
            read = feed.next(index, wait) => read,
        };
        let (entries, next) = match read {
            Ok(read) => read,
            Err(error) => {
                // Consul unreachable: the session watch or the guard's own
                // clock decides; keep watching once it answers again.
                debug!(key = held.kv_key, %error, "watching a held key failed; retrying");
                tokio::select! {
                    () = held.stop.cancelled() => return,
                    () = sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        pause = Duration::from_millis(100);
        index = next;
        let scene = Scene::parse(&held.lock_prefix, entries, next);
        let ours = scene
            .contender(&held.kv_key)
            .is_some_and(|own| own.modify_index == held.token && own.session == held.session.id);
        if !ours {
            held.report_lost("its key is gone or was changed");
            // Deleted from outside while our session lives: keep the gate
            // right (hand it on, or delete it if nobody is left).
            if !held.session.ended().is_fired()
                && let Err(error) = leave(&held.api, &held.lock_prefix, &held.kv_key, None).await
            {
                debug!(key = held.kv_key, %error, "tidying after a lost key failed; its release will retry");
            }
            return;
        }
        if matches!(scene.gate, Gate::Native { .. } | Gate::Foreign { .. }) {
            return held.report_lost("another recipe took .lock");
        }
        if scene.gate_session().is_some() {
            lock_delay_until = None;
            continue;
        }
        let delayed = lock_delay_until.is_some_and(|until| Instant::now() < until);
        let Some(operations) = scene.regate(&held.lock_prefix, &held.session.id, delayed) else { continue };
        debug!(key = held.kv_key, "the gate's session ended with the lock in use; making the gate ours");
        match held.api.txn(operations).await {
            Ok(TxnOutcome::RolledBack(errors)) if mentions(&errors, "lock delay") => {
                lock_delay_until = Some(Instant::now() + Duration::from_millis(250));
            }
            Ok(TxnOutcome::Applied(_)) => lock_delay_until = lock_delay_until.filter(|_| delayed),
            // Raced, or unanswered: the next read shows.
            _ => {}
        }
    }
}
