//! The mutex's lock write, run in a task of its own so that an acquisition
//! dropped mid-write (or whose answer is lost) still gives back what it got.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::sleep;
use tracing::debug;

use crate::api::{Api, ApiError, TxnKv, TxnOutcome};
use crate::claims::Claims;
use crate::lock::{Holder, LOCK_FLAG};

/// A lock transaction running in its own task. If the caller stops waiting
/// for it (dropped, or the answer was lost), whatever it acquired is given
/// back in the background: a granted key is deleted, and after an unanswered
/// request the key is deleted if it holds this attempt's write.
pub(crate) struct InFlight {
    task: Option<tokio::task::JoinHandle<Result<TxnOutcome, ApiError>>>,
    api: Api,
    kv_key: String,
    session: String,
    attempt: Attempt,
}

/// How a late write of one attempt is recognised: a plain lock key locked
/// by our session, while no acquisition or lease of this client has the
/// key's claim (a lock key of our session is then a leftover, since no
/// mutex of ours uses it), whose value is this attempt's: distlock's holder
/// record with its attempt id, or the value an election publishes.
#[derive(Clone)]
pub(crate) struct Attempt {
    pub(crate) claims: Arc<Claims>,
    pub(crate) written: Written,
}

/// What one attempt writes as the key's value.
#[derive(Clone)]
pub(crate) enum Written {
    /// Distlock's holder record, with this attempt id.
    Record(String),
    /// A published value.
    Value(Vec<u8>),
}

impl InFlight {
    pub(crate) fn start(api: Api, kv_key: String, session: String, attempt: Attempt, operations: Vec<TxnKv>) -> Self {
        let runner = api.clone();
        let task = tokio::spawn(async move { runner.txn(operations).await });
        Self { task: Some(task), api, kv_key, session, attempt }
    }

    pub(crate) async fn finish(mut self) -> Result<TxnOutcome, ApiError> {
        let Some(task) = self.task.as_mut() else {
            return Err(ApiError::Decode { what: "transaction", message: "already finished".to_owned() });
        };
        let joined = task.await;
        self.task = None;
        let outcome =
            joined.unwrap_or_else(|e| Err(ApiError::Transport { what: "transaction", source: e.to_string().into() }));
        if outcome.as_ref().is_err_and(ApiError::is_transient) {
            // The request may still be applied: check for our write.
            tokio::spawn(forget_attempt(
                self.api.clone(),
                self.kv_key.clone(),
                self.session.clone(),
                self.attempt.clone(),
            ));
        }
        outcome
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        let (api, kv_key, session, attempt) =
            (self.api.clone(), self.kv_key.clone(), self.session.clone(), self.attempt.clone());
        tokio::spawn(async move {
            match task.await {
                Ok(Ok(TxnOutcome::RolledBack(_))) => {}
                Ok(Ok(TxnOutcome::Applied(entries))) => {
                    if let Some(entry) = entries.into_iter().last().map(|keyed| keyed.entry) {
                        debug!(kv_key, "an abandoned acquisition got the lock; deleting it");
                        if api.delete_if_unchanged(&kv_key, entry.modify_index).await.is_err() {
                            forget_attempt(api, kv_key, session, attempt).await;
                        }
                    }
                }
                _ => forget_attempt(api, kv_key, session, attempt).await,
            }
        });
    }
}

/// Deletes the key if it holds the write of `attempt` by `session`, checking
/// again a few times since an unanswered request may be applied late. A
/// round in which another acquisition (or a lease) of this client has the
/// key's claim is skipped: that one takes a leftover of ours over.
async fn forget_attempt(api: Api, kv_key: String, session: String, attempt: Attempt) {
    for pause in [Duration::ZERO, Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(15)] {
        sleep(pause).await;
        let Some(_claim) = attempt.claims.try_claim(&kv_key) else { continue };
        let Ok((Some(entry), _)) = api.read_key(&kv_key, 0, Duration::ZERO).await else { continue };
        let value = entry.value_bytes();
        let ours = entry.holder() == Some(session.as_str())
            && entry.flags == LOCK_FLAG
            && match &attempt.written {
                Written::Record(id) => Holder::parse(&value).is_some_and(|h| &h.attempt == id),
                Written::Value(written) => &value == written,
            };
        if ours {
            debug!(kv_key, "an unanswered acquisition was applied; deleting its key");
            if api.delete_if_unchanged(&kv_key, entry.modify_index).await.unwrap_or(false) {
                return;
            }
        }
    }
}
