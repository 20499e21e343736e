//! The in-memory "service": keys, holders, FIFO wait queues, sessions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::{FencingToken, LockInfo, LockKey, LockMode, LossSignal, LostReason};

/// What a waiter receives: its grant, or why it will never get one.
pub(super) type Delivery = Result<Grant, LostReason>;

/// A grant as the store records it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grant {
    pub(super) token: FencingToken,
    pub(super) granted_at: Instant,
}

/// One contender: who asks, for how long, and the signal to fire on loss.
#[derive(Debug, Clone)]
pub(super) struct Contender {
    pub(super) lease_id: u64,
    pub(super) session: u64,
    pub(super) owner: String,
    pub(super) ttl: Duration,
    pub(super) mode: LockMode,
    pub(super) value: Option<String>,
    pub(super) loss: LossSignal,
}

/// The outcome of asking for a key.
pub(super) enum Enqueued {
    /// A semaphore of another limit holds or waits for the key.
    Conflict(LockMode),
    Granted(Grant),
    Waiting(oneshot::Receiver<Delivery>),
}

/// The shared state behind every [`MemoryLock`](super::MemoryLock) client of
/// one store: the stand-in for a lock server.
///
/// Clients made by [`MemoryStore::client`] share the store and exclude each
/// other like clients of one etcd cluster would.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<LockKey, KeyState>,
    last_token: u64,
    last_id: u64,
    /// Sessions opened and not yet ended or closed; any other is ended.
    live_sessions: HashSet<u64>,
}

#[derive(Debug, Default)]
struct KeyState {
    /// Several only while readers share the key.
    holders: Vec<Holder>,
    waiters: VecDeque<(Contender, oneshot::Sender<Delivery>)>,
}

#[derive(Debug)]
struct Holder {
    contender: Contender,
    token: FencingToken,
    expires_at: Instant,
    since: std::time::SystemTime,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new client of this store, with its own session.
    pub fn client(&self) -> super::MemoryLock {
        super::MemoryLock::with_store(self.clone())
    }

    /// Deletes the holder of `key` from outside, as an operator would; the
    /// holder's guard reports [`LostReason::Revoked`]. Returns whether the
    /// key was held.
    pub fn delete(&self, key: &LockKey) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        let Some(entry) = state.keys.get_mut(key) else { return false };
        let removed = std::mem::take(&mut entry.holders);
        for holder in &removed {
            holder.contender.loss.fire(LostReason::Revoked);
        }
        state.settle(key, now);
        !removed.is_empty()
    }

    /// Ends `session` from outside: its holders lose their locks and its
    /// waiters fail with [`LostReason::SessionEnded`].
    pub fn end_session(&self, session: u64) {
        let mut state = self.lock();
        state.live_sessions.remove(&session);
        let now = Instant::now();
        let keys: Vec<LockKey> = state.keys.keys().cloned().collect();
        for key in keys {
            if let Some(entry) = state.keys.get_mut(&key) {
                let (ended, kept): (Vec<_>, Vec<_>) =
                    entry.holders.drain(..).partition(|h| h.contender.session == session);
                entry.holders = kept;
                for holder in ended {
                    holder.contender.loss.fire(LostReason::SessionEnded);
                }
                let (ended, kept): (VecDeque<_>, VecDeque<_>) =
                    entry.waiters.drain(..).partition(|(contender, _)| contender.session == session);
                entry.waiters = kept;
                for (_, delivery) in ended {
                    let _ = delivery.send(Err(LostReason::SessionEnded));
                }
            }
            state.settle(&key, now);
        }
    }

    /// How many holders and waiters the store keeps for keys starting with
    /// `prefix`.
    pub fn count_under(&self, prefix: &str) -> usize {
        let mut state = self.lock();
        let now = Instant::now();
        let keys: Vec<LockKey> = state.keys.keys().filter(|key| key.as_str().starts_with(prefix)).cloned().collect();
        keys.iter().for_each(|key| state.settle(key, now));
        keys.iter().filter_map(|key| state.keys.get(key)).map(|entry| entry.holders.len() + entry.waiters.len()).sum()
    }

    /// How many sessions the store keeps a record of: the live ones only,
    /// so ending sessions over and over costs no memory.
    pub fn session_records(&self) -> usize {
        self.lock().live_sessions.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn next_id(&self) -> u64 {
        let mut state = self.lock();
        state.last_id += 1;
        state.last_id
    }

    /// Opens a session; it lives until ended or closed.
    pub(super) fn open_session(&self) -> u64 {
        let mut state = self.lock();
        state.last_id += 1;
        let session = state.last_id;
        state.live_sessions.insert(session);
        session
    }

    /// Forgets a session whose client is gone (it can hold nothing: every
    /// lease keeps its client alive).
    pub(super) fn close_session(&self, session: u64) {
        self.lock().live_sessions.remove(&session);
    }

    pub(super) fn is_ended(&self, session: u64) -> bool {
        !self.lock().live_sessions.contains(&session)
    }

    /// Grants `key` when it is free and nobody queues for it.
    /// The grant when the key admits the contender now; `Err` with the
    /// other limit when a semaphore of another limit uses the key.
    pub(super) fn try_grant(&self, key: &LockKey, contender: Contender) -> Result<Option<Grant>, LockMode> {
        let mut state = self.lock();
        let now = Instant::now();
        state.settle(key, now);
        if let Some(other) = state.keys.get(key).and_then(|entry| entry.conflicting_limit(contender.mode)) {
            return Err(other);
        }
        let free = state.keys.get(key).is_none_or(|entry| entry.waiters.is_empty() && entry.admits(contender.mode));
        Ok(free.then(|| state.grant(key, contender, now)))
    }

    /// Grants `key` at once when possible, else queues the contender last.
    pub(super) fn enqueue(&self, key: &LockKey, contender: Contender) -> Enqueued {
        let mut state = self.lock();
        let now = Instant::now();
        state.settle(key, now);
        let entry = state.keys.entry(key.clone()).or_default();
        if let Some(other) = entry.conflicting_limit(contender.mode) {
            return Enqueued::Conflict(other);
        }
        if entry.waiters.is_empty() && entry.admits(contender.mode) {
            return Enqueued::Granted(state.grant(key, contender, now));
        }
        let (sender, receiver) = oneshot::channel();
        entry.waiters.push_back((contender, sender));
        Enqueued::Waiting(receiver)
    }

    /// When the current holder of `key` expires unless renewed.
    pub(super) fn holder_expiry(&self, key: &LockKey) -> Option<Instant> {
        let mut state = self.lock();
        state.settle(key, Instant::now());
        state.keys.get(key)?.holders.iter().map(|holder| holder.expires_at).min()
    }

    /// Expires what is due on `key` and hands it to the next waiter.
    pub(super) fn settle(&self, key: &LockKey) {
        self.lock().settle(key, Instant::now());
    }

    /// Removes a waiter that gave up; if the key had already been granted to
    /// it but not yet delivered, gives it back so no ghost holder remains.
    pub(super) fn withdraw(&self, key: &LockKey, lease_id: u64) {
        let mut state = self.lock();
        let Some(entry) = state.keys.get_mut(key) else { return };
        entry.waiters.retain(|(contender, _)| contender.lease_id != lease_id);
        entry.holders.retain(|holder| holder.contender.lease_id != lease_id);
        state.settle(key, Instant::now());
    }

    /// Extends the holder's expiry; false when `lease_id` does not hold `key`.
    /// Replaces the value a holder publishes; false if it no longer holds.
    pub(super) fn proclaim(&self, key: &LockKey, lease_id: u64, value: &str) -> bool {
        let mut state = self.lock();
        state.settle(key, Instant::now());
        let holder = state
            .keys
            .get_mut(key)
            .and_then(|entry| entry.holders.iter_mut().find(|holder| holder.contender.lease_id == lease_id));
        match holder {
            Some(holder) => {
                holder.contender.value = Some(value.to_owned());
                true
            }
            None => false,
        }
    }

    pub(super) fn renew(&self, key: &LockKey, lease_id: u64) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        state.settle(key, now);
        let holder = state
            .keys
            .get_mut(key)
            .and_then(|entry| entry.holders.iter_mut().find(|holder| holder.contender.lease_id == lease_id));
        match holder {
            Some(holder) => {
                holder.expires_at = now + holder.contender.ttl;
                true
            }
            None => false,
        }
    }

    /// Frees `key` if `lease_id` holds it; false otherwise.
    pub(super) fn release(&self, key: &LockKey, lease_id: u64) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        state.settle(key, now);
        let Some(entry) = state.keys.get_mut(key) else { return false };
        if !entry.held_by(lease_id) {
            return false;
        }
        entry.holders.retain(|holder| holder.contender.lease_id != lease_id);
        state.settle(key, now);
        true
    }

    /// Every holder of `key`, in token order.
    pub(super) fn holders(&self, key: &LockKey) -> Vec<LockInfo> {
        let mut state = self.lock();
        state.settle(key, Instant::now());
        let Some(entry) = state.keys.get(key) else { return Vec::new() };
        let mut holders: Vec<LockInfo> = entry
            .holders
            .iter()
            .map(|holder| {
                let info = LockInfo::new(holder.contender.owner.clone(), holder.token)
                    .with_held_since(holder.since)
                    .with_mode(holder.contender.mode);
                match &holder.contender.value {
                    Some(value) => info.with_value(value.clone()),
                    None => info,
                }
            })
            .collect();
        holders.sort_by_key(|info| info.token);
        holders
    }
}

impl KeyState {
    fn held_by(&self, lease_id: u64) -> bool {
        self.holders.iter().any(|holder| holder.contender.lease_id == lease_id)
    }

    /// Whether a contender in `mode` may hold the key beside its holders.
    fn admits(&self, mode: LockMode) -> bool {
        let room = mode.limit().is_none_or(|limit| self.holders.len() < limit as usize);
        room && self.holders.iter().all(|holder| holder.contender.mode.shares_with(mode))
    }

    /// A semaphore of another limit among the holders and waiters, if any.
    fn conflicting_limit(&self, mode: LockMode) -> Option<LockMode> {
        let LockMode::Semaphore { .. } = mode else { return None };
        let holders = self.holders.iter().map(|holder| holder.contender.mode);
        let waiters = self.waiters.iter().map(|(waiter, _)| waiter.mode);
        holders.chain(waiters).find(|other| matches!(other, LockMode::Semaphore { .. }) && *other != mode)
    }
}

impl State {
    fn grant(&mut self, key: &LockKey, contender: Contender, now: Instant) -> Grant {
        self.last_token += 1;
        let token = FencingToken::new(self.last_token);
        let expires_at = now + contender.ttl;
        let entry = self.keys.entry(key.clone()).or_default();
        entry.holders.push(Holder { contender, token, expires_at, since: std::time::SystemTime::now() });
        Grant { token, granted_at: now }
    }

    /// Expires an overdue holder and grants the key to waiters in order,
    /// skipping those that are gone; drops the entry once unused.
    fn settle(&mut self, key: &LockKey, now: Instant) {
        let Some(entry) = self.keys.get_mut(key) else { return };
        let (expired, live): (Vec<_>, Vec<_>) = entry.holders.drain(..).partition(|holder| holder.expires_at <= now);
        entry.holders = live;
        for holder in expired {
            holder.contender.loss.fire(LostReason::Revoked);
        }
        // First come, first served: the front waiter is granted once the
        // holders admit it, and nobody behind it passes it.
        while self
            .keys
            .get(key)
            .and_then(|entry| entry.waiters.front().map(|(next, _)| entry.admits(next.mode)))
            .unwrap_or(false)
        {
            let Some((contender, delivery)) = self.keys.get_mut(key).and_then(|entry| entry.waiters.pop_front()) else {
                break;
            };
            if !self.live_sessions.contains(&contender.session) {
                let _ = delivery.send(Err(LostReason::SessionEnded));
                continue;
            }
            let lease_id = contender.lease_id;
            let grant = self.grant(key, contender, now);
            if delivery.send(Ok(grant)).is_err() {
                // The waiter is gone: take the grant back and try the next one.
                if let Some(entry) = self.keys.get_mut(key) {
                    entry.holders.retain(|holder| holder.contender.lease_id != lease_id);
                }
            }
        }
        if self.keys.get(key).is_some_and(|entry| entry.holders.is_empty() && entry.waiters.is_empty()) {
            self.keys.remove(key);
        }
    }
}
