//! One reader/writer acquisition's contender key: written, and taken out
//! again when the acquisition gives up, is dropped mid-write, or its lease
//! is released, keeping the gate right as it goes.

use std::sync::Arc;
use std::time::Duration;

use lock_core::ClientSession;
use tokio::task::JoinHandle;
use tokio::time::sleep;
use tracing::debug;

use crate::api::{Api, ApiError, TxnKv, TxnOutcome};
use crate::scene::{Scene, Ticket, contender_key, tree};
use crate::session::Session;

/// How long giving up an acquisition waits for its clean-up before leaving
/// the rest to the background.
const WITHDRAW_WAIT: Duration = Duration::from_secs(2);

/// One acquisition's contender key, from the first write that may create it
/// until it is handed to a lease or taken out again. Dropped before that
/// (the caller gave up, or dropped the future mid-write), it takes the key
/// out in the background, checking again later after a write whose answer
/// was lost, which Consul may still apply.
pub(crate) struct Registration {
    api: Api,
    pub(crate) lock_prefix: String,
    pub(crate) key: String,
    pub(crate) session: Arc<Session>,
    pub(crate) ticket: Ticket,
    pending: Option<JoinHandle<Result<TxnOutcome, ApiError>>>,
    /// A write that may have created the key was applied, or went unanswered.
    written: bool,
    /// A write went unanswered: it may still be applied.
    uncertain: bool,
}

impl Registration {
    pub(crate) fn new(api: Api, lock_prefix: String, session: Arc<Session>, ticket: Ticket) -> Self {
        let key = contender_key(&lock_prefix, &session.id);
        Self { api, lock_prefix, key, session, ticket, pending: None, written: false, uncertain: false }
    }

    /// Runs a transaction in a task of its own, so that a caller dropped
    /// mid-write leaves its outcome to the clean-up.
    pub(crate) async fn txn(&mut self, operations: Vec<TxnKv>) -> Result<TxnOutcome, ApiError> {
        let api = self.api.clone();
        let task = self.pending.insert(tokio::spawn(async move { api.txn(operations).await }));
        let joined = task.await;
        self.pending = None;
        let outcome =
            joined.unwrap_or_else(|e| Err(ApiError::Transport { what: "transaction", source: e.to_string().into() }));
        match &outcome {
            Ok(TxnOutcome::Applied(_)) => self.written = true,
            Err(error) if error.is_transient() => {
                self.written = true;
                self.uncertain = true;
            }
            // Rolled back, or refused outright: nothing was written.
            _ => {}
        }
        outcome
    }

    /// The key now belongs to a lease.
    pub(crate) fn keep(mut self) {
        self.written = false;
    }

    /// Takes the key out, waiting a little; a clean-up that does not finish
    /// in time, or may be undone by a late write, goes on in the background.
    pub(crate) async fn withdraw(mut self) {
        if !self.written || self.session.ended().is_fired() {
            self.written = false;
            return;
        }
        let left = tokio::time::timeout(WITHDRAW_WAIT, leave(&self.api, &self.lock_prefix, &self.key, None)).await;
        match left {
            Ok(Ok(_)) if !self.uncertain => self.written = false,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => debug!(key = self.key, %error, "withdrawing failed; retrying in the background"),
            Err(_) => debug!(key = self.key, "withdrawing is slow; finishing in the background"),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A write still in flight may yet create the key.
        if !self.written && self.pending.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (api, lock_prefix, key, session) =
            (self.api.clone(), self.lock_prefix.clone(), self.key.clone(), Arc::clone(&self.session));
        runtime.spawn(forget(api, lock_prefix, key, session, self.pending.take(), self.uncertain));
    }
}

/// Takes out the key of an abandoned acquisition: after its write in flight
/// (if any) is answered, and again later when an answer was lost.
async fn forget(
    api: Api,
    lock_prefix: String,
    key: String,
    session: Arc<Session>,
    pending: Option<JoinHandle<Result<TxnOutcome, ApiError>>>,
    uncertain: bool,
) {
    let answered = match pending {
        Some(task) => task.await.is_ok_and(|outcome| !outcome.is_err_and(|e| e.is_transient())),
        None => true,
    };
    let certain = answered && !uncertain;
    for pause in [Duration::ZERO, Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(15)] {
        tokio::select! {
            () = sleep(pause) => {}
            // Its keys went with it.
            _ = session.ended().fired() => return,
        }
        match leave(&api, &lock_prefix, &key, None).await {
            Ok(Left::NotOurs) if !certain => {}
            Ok(left) => {
                debug!(key, ?left, "took out the key of an abandoned acquisition");
                if certain {
                    return;
                }
            }
            Err(error) => debug!(key, %error, "taking out an abandoned key failed; retrying"),
        }
    }
}

/// How taking a contender key out ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Left {
    /// Ours, as granted (or as registered, when no token was given), and deleted.
    Clean,
    /// Ours but written from outside since the grant; deleted anyway.
    Tampered,
    /// Gone already (its session ended, or it was deleted from outside).
    NotOurs,
}

/// Takes `key` out of the lock at `lock_prefix` ([`Scene::leave`]),
/// reading again when another change raced with the write.
pub(crate) async fn leave(api: &Api, lock_prefix: &str, key: &str, token: Option<u64>) -> Result<Left, ApiError> {
    const ATTEMPTS: u32 = 16;
    for _ in 0..ATTEMPTS {
        let (entries, index) = api.read_prefix(&tree(lock_prefix), 0, Duration::ZERO).await?;
        let scene = Scene::parse(lock_prefix, entries, index);
        let left = match scene.contender(key) {
            None => Left::NotOurs,
            Some(own) if token.is_some_and(|token| token != own.modify_index) => Left::Tampered,
            Some(_) => Left::Clean,
        };
        let operations = scene.leave(lock_prefix, key);
        if operations.is_empty() {
            return Ok(left);
        }
        match api.txn(operations).await? {
            TxnOutcome::Applied(_) => return Ok(left),
            TxnOutcome::RolledBack(errors) => debug!(key, ?errors, "leaving raced with another change; reading again"),
        }
    }
    Err(ApiError::Contended { what: "leave a reader/writer lock", attempts: ATTEMPTS })
}

/// Retries [`leave`] with backoff until it is answered or the session has
/// ended (which deletes the key too), for about a minute at most.
pub(crate) async fn leave_until_done(api: &Api, lock_prefix: &str, key: &str, session: &Session) {
    let mut pause = Duration::from_millis(100);
    for _ in 0..35 {
        tokio::select! {
            () = sleep(pause) => {}
            _ = session.ended().fired() => return,
        }
        match leave(api, lock_prefix, key, None).await {
            Ok(_) => return,
            Err(error) => debug!(key, %error, "releasing our key failed; retrying"),
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
