//! Reporting a held lock lost as soon as its key changes hands.
//!
//! A held key stays ours while it exists, names our session and keeps the
//! `CreateIndex` of our acquiring write, which created it (a new value
//! published by the holder keeps it too).
//! The first [`MAX_KEY_WATCHES`] locks of a client each watch their own key
//! with a blocking query, as `api.Lock` does; beyond that, one blocking query
//! on the client's prefix covers them all, so a client holding thousands of
//! locks keeps a bounded number of connections (Consul limits them per
//! client, 200 by default) and sends nothing while nothing changes. Waiting
//! acquisitions do the same: the first [`MAX_BLOCKING_WAITS`] block on their
//! key, the others are woken by the prefix watch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lock_core::{ClientSession, LossSignal, LostReason};
use tokio::sync::{Semaphore, watch};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::api::{Api, MAX_BLOCKING_WAIT};
use crate::session::Session;

/// How many locks of one client watch their own key.
pub const MAX_KEY_WATCHES: usize = 64;

/// How many waiting acquisitions of one client wait with a blocking query of
/// their own; the others are woken by the shared prefix watch.
pub const MAX_BLOCKING_WAITS: usize = 64;

/// The shortest pause between two reads of the shared prefix watch, so a
/// busy prefix costs at most a few reads per second.
const PREFIX_READ_INTERVAL: Duration = Duration::from_millis(250);

/// How long after the grant a key watch sends its first blocking query.
/// Nothing is missed meanwhile: the query starts from the grant's index, so
/// a change in between answers it at once. A lock held only briefly (released
/// within this time) then costs no watch request at all.
const FIRST_WATCH_DELAY: Duration = Duration::from_millis(100);

/// One held key to watch.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) kv_key: String,
    /// The grant's token: the index of the write that created the key.
    pub(crate) token: u64,
    pub(crate) session: Arc<Session>,
    pub(crate) loss: LossSignal,
    pub(crate) stop: CancellationToken,
}

impl Held {
    /// Whether a key held by `holder`, created at `create_index`, is still
    /// our grant.
    fn is_ours(&self, holder: Option<&str>, create_index: u64) -> bool {
        holder == Some(self.session.id.as_str()) && create_index == self.token
    }

    fn report_lost(&self) {
        let reason = if self.session.ended().is_fired() { LostReason::SessionEnded } else { LostReason::Revoked };
        debug!(key = self.kv_key, ?reason, "held key changed hands");
        self.loss.fire(reason);
    }
}

/// What one shared prefix read saw of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeenKey {
    /// The session holding it, if any.
    pub(crate) holder: Option<String>,
    /// Its `ModifyIndex`.
    pub(crate) modify_index: u64,
    /// Its `CreateIndex`.
    pub(crate) create_index: u64,
    /// Its `Flags` (which recipe the key belongs to).
    pub(crate) flags: u64,
}

/// What one shared prefix read saw: its raft index, and each key.
pub(crate) type Snapshot = Arc<(u64, HashMap<String, SeenKey>)>;

/// The watches of one client.
#[derive(Debug)]
pub(crate) struct Monitors {
    api: Api,
    key_watches: Arc<Semaphore>,
    blocking_waits: Arc<Semaphore>,
    prefix_watch: Arc<PrefixWatch>,
}

/// The shared blocking query on the client's prefix: started on the first
/// subscription, stopped once nobody reads it, started again on the next.
#[derive(Debug)]
pub(crate) struct PrefixWatch {
    api: Api,
    prefix: String,
    reads: std::sync::Mutex<Option<watch::Receiver<Option<Snapshot>>>>,
}

impl PrefixWatch {
    pub(crate) fn new(api: Api, prefix: String) -> Self {
        Self { api, prefix, reads: std::sync::Mutex::default() }
    }

    /// A receiver of the shared prefix reads, starting the reader if none
    /// runs. A receiver whose reader stopped (it may stop just as a new
    /// watcher subscribes) sees its channel closed: subscribe again.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Snapshot>> {
        let mut shared = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(receiver) = shared.as_ref().filter(|r| r.has_changed().is_ok()) {
            return receiver.clone();
        }
        let (sender, receiver) = watch::channel(None);
        tokio::spawn(read_prefix(self.api.clone(), self.prefix.clone(), sender));
        *shared = Some(receiver.clone());
        receiver
    }
}

impl Monitors {
    pub(crate) fn new(api: Api, prefix: String) -> Self {
        Self {
            prefix_watch: Arc::new(PrefixWatch::new(api.clone(), prefix)),
            api,
            key_watches: Arc::new(Semaphore::new(MAX_KEY_WATCHES)),
            blocking_waits: Arc::new(Semaphore::new(MAX_BLOCKING_WAITS)),
        }
    }

    /// Starts watching `held` until its `stop` token is cancelled or it is lost.
    pub(crate) fn watch(&self, held: Held) {
        match Arc::clone(&self.key_watches).try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(watch_key(self.api.clone(), held, permit));
            }
            Err(_) => {
                let snapshots = self.prefix_snapshots();
                tokio::spawn(watch_in_prefix(held, snapshots, Arc::clone(&self.prefix_watch)));
            }
        }
    }

    /// Leave for one held lock to watch with a blocking query of its own,
    /// if fewer than [`MAX_KEY_WATCHES`] do.
    pub(crate) fn key_watch_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.key_watches).try_acquire_owned().ok()
    }

    /// Leave for one waiter to hold a blocking query of its own, if fewer
    /// than [`MAX_BLOCKING_WAITS`] do.
    pub(crate) fn blocking_wait_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.blocking_waits).try_acquire_owned().ok()
    }

    /// The client's shared prefix watch, for a task that outlives the borrow.
    pub(crate) fn prefix_watch(&self) -> Arc<PrefixWatch> {
        Arc::clone(&self.prefix_watch)
    }

    /// A receiver of the shared prefix reads; see [`PrefixWatch::subscribe`].
    pub(crate) fn prefix_snapshots(&self) -> watch::Receiver<Option<Snapshot>> {
        self.prefix_watch.subscribe()
    }
}

async fn watch_key(api: Api, held: Held, _permit: tokio::sync::OwnedSemaphorePermit) {
    let mut index = held.token;
    let mut pause = Duration::from_millis(100);
    tokio::select! {
        () = held.stop.cancelled() => return,
        _ = held.session.ended().fired() => return held.loss.fire(LostReason::SessionEnded),
        () = sleep(FIRST_WATCH_DELAY) => {}
    }
    loop {
        let read = tokio::select! {
            () = held.stop.cancelled() => return,
            _ = held.loss.fired() => return,
            _ = held.session.ended().fired() => return held.loss.fire(LostReason::SessionEnded),
            read = api.read_key(&held.kv_key, index, MAX_BLOCKING_WAIT) => read,
        };
        match read {
            Ok((Some(entry), next)) if held.is_ours(entry.holder(), entry.create_index) => {
                index = next;
                pause = Duration::from_millis(100);
            }
            Ok(_) => return held.report_lost(),
            Err(error) => {
                // Consul unreachable: the session watch or the guard's own
                // clock decides; keep watching once it answers again.
                debug!(key = held.kv_key, %error, "watching a held key failed; retrying");
                tokio::select! {
                    () = held.stop.cancelled() => return,
                    () = sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Watches `held` through the shared prefix reads. A subscription whose
/// reader stopped is replaced, never given up: the key would go unwatched.
async fn watch_in_prefix(held: Held, mut snapshots: watch::Receiver<Option<Snapshot>>, prefix_watch: Arc<PrefixWatch>) {
    loop {
        let current = snapshots.borrow_and_update().clone();
        // A read from before our grant does not show our key yet.
        if let Some((_, entries)) = current.as_deref().filter(|(index, _)| *index >= held.token) {
            let ours =
                entries.get(&held.kv_key).is_some_and(|seen| held.is_ours(seen.holder.as_deref(), seen.create_index));
            if !ours {
                return held.report_lost();
            }
        }
        tokio::select! {
            () = held.stop.cancelled() => return,
            _ = held.loss.fired() => return,
            _ = held.session.ended().fired() => return held.loss.fire(LostReason::SessionEnded),
            changed = snapshots.changed() => if changed.is_err() {
                snapshots = prefix_watch.subscribe();
            },
        }
    }
}

/// Reads the prefix with blocking queries while any lock watches it, and
/// publishes each read.
async fn read_prefix(api: Api, prefix: String, sender: watch::Sender<Option<Snapshot>>) {
    let mut index = 1;
    let mut pause = Duration::from_millis(100);
    while sender.receiver_count() > 1 {
        let read = tokio::select! {
            read = api.read_prefix(&prefix, index, MAX_BLOCKING_WAIT) => read,
            // Stop promptly once the last watcher is gone.
            () = until_alone(&sender) => return,
        };
        match read {
            Ok((entries, next)) => {
                index = next;
                pause = Duration::from_millis(100);
                let snapshot: HashMap<String, SeenKey> = entries
                    .into_iter()
                    .map(|e| {
                        let seen = SeenKey {
                            holder: e.entry.holder().map(str::to_owned),
                            modify_index: e.entry.modify_index,
                            create_index: e.entry.create_index,
                            flags: e.entry.flags,
                        };
                        (e.key, seen)
                    })
                    .collect();
                sender.send_replace(Some(Arc::new((next, snapshot))));
                sleep(PREFIX_READ_INTERVAL).await;
            }
            Err(error) => {
                debug!(prefix, %error, "reading the watched prefix failed; retrying");
                sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Completes once only the monitor's own receiver is left.
async fn until_alone(sender: &watch::Sender<Option<Snapshot>>) {
    while sender.receiver_count() > 1 {
        sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConsulConfig;

    /// Lead 10 of the safety issue: a held key watched through the shared
    /// prefix read whose subscription closes (its reader stopped just as the
    /// key subscribed) must subscribe again, not stop watching silently.
    /// Needs the Consul agent that `scripts/services start consul` runs (or
    /// `DISTLOCK_CONSUL_ADDR`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_key_whose_prefix_subscription_closes_is_watched_again() {
        let prefix = format!("distlock-unit/{}/", uuid::Uuid::new_v4().simple());
        let config = ConsulConfig::from_env().prefix(prefix.clone()).session_ttl(Duration::from_secs(10));
        let api = Api::new(&config).unwrap_or_else(|e| panic!("bad Consul configuration: {e}"));
        let session = Session::start(&api, &config, None)
            .await
            .unwrap_or_else(|e| panic!("Consul is not reachable ({e}): start it with `scripts/services start consul`"));
        let held = Held {
            // Never written: the first fresh read shows it gone.
            kv_key: format!("{prefix}gone/.lock"),
            token: 1,
            session,
            loss: LossSignal::new(),
            stop: CancellationToken::new(),
        };
        let (reader, closed) = watch::channel(None);
        drop(reader);
        let prefix_watch = Arc::new(PrefixWatch::new(api, prefix));
        tokio::spawn(watch_in_prefix(held.clone(), closed, prefix_watch));
        let reported = tokio::time::timeout(Duration::from_secs(5), held.loss.fired()).await;
        held.stop.cancel();
        assert_eq!(reported.ok(), Some(LostReason::Revoked), "a key whose subscription closed went unwatched");
    }
}
