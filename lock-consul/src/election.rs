//! Leader election on Consul: Consul's documented pattern ("Application
//! leader election": the lock key holds the leader's value, observed with
//! blocking queries), on the mutex's own key, so it stays compatible with
//! `consul lock` on the same prefix.
//!
//! An election is a mutex acquisition with a value
//! ([`LockOptions::value`](lock_core::LockOptions::value)): the value is
//! written as `PREFIX/.lock`'s value (what `consul kv get PREFIX/.lock`
//! shows) instead of distlock's holder record. [`proclaim`] rewrites it
//! with the leader's session (`?acquire=` again, which keeps the key's
//! `CreateIndex` and `LockIndex`), only while that session holds the key.
//!
//! Every distlock grant creates the key anew (a leftover key is deleted in
//! the granting transaction), so a grant's token, the index of its write,
//! is also the key's `CreateIndex`, which stays while the value changes:
//! [`grant_index`] reads it back. [`watch`] follows the lock's keys with
//! blocking queries and reports the first holder after each change.

use std::time::{Duration, UNIX_EPOCH};

use lock_core::{
    FencingToken, LeaderIdentity, LeaderStream, LockError, LockInfo, LockKey, MAX_VALUE_BYTES, leader_identity,
};
use tokio::time::sleep;
use tracing::debug;

use crate::api::{Api, KeyedEntry, KvEntry, MAX_BLOCKING_WAIT, TxnKv, TxnOutcome};
use crate::lock::{Holder, LOCK_FLAG};
use crate::scene::{RW_FLAG, Scene, gate_key, tree};
use crate::semaphore_record::{Places, SEMAPHORE_FLAG};
use crate::session::Session;
use crate::{BACKEND, error};

/// The pause before reading again after a failed read; it doubles up to
/// [`LAST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LAST_PAUSE: Duration = Duration::from_secs(2);

/// The token of the grant a plain lock key's holder holds: its
/// `CreateIndex` for a key a lock created (`LockIndex` 1, or 0 after a
/// value was rewritten in place), which every distlock grant is, and which
/// a new value does not change; its `ModifyIndex` for a key that was
/// locked again after its creation (a Go `api.Lock` that kept its key),
/// whose last lock write is then its grant.
pub(crate) fn grant_index(entry: &KvEntry) -> u64 {
    if entry.lock_index <= 1 && entry.create_index > 0 { entry.create_index } else { entry.modify_index }
}

/// The holder of a plain lock key (a mutex, an election), if it is held:
/// distlock's holder record names the owner; any other value is the
/// leader's published value (and, short enough, its owner); a holder that
/// wrote none (`consul lock`) is named by its session.
pub(crate) fn plain_holder(entry: &KvEntry) -> Option<LockInfo> {
    let session = entry.holder()?;
    let value = entry.value_bytes();
    let token = FencingToken::new(grant_index(entry));
    if let Some(holder) = Holder::parse(&value) {
        return Some(
            LockInfo::new(holder.owner, token).with_held_since(UNIX_EPOCH + Duration::from_millis(holder.since_ms)),
        );
    }
    let Some(text) = String::from_utf8(value).ok().filter(|v| !v.is_empty()) else {
        return Some(LockInfo::new(format!("consul session {session}"), token));
    };
    let owner = Some(text.as_str())
        .filter(|v| v.len() <= lock_core::MAX_OWNER_BYTES && !v.chars().any(char::is_control))
        .map_or_else(|| format!("consul session {session}"), str::to_owned);
    Some(LockInfo::new(owner, token).with_value(text))
}

/// Every holder of the lock at `lock_prefix` in `entries` (a read of its
/// keys), in token order, whichever recipe holds it.
pub(crate) fn holders_in_tree(lock_prefix: &str, entries: Vec<KeyedEntry>, index: u64) -> Vec<LockInfo> {
    let gate = gate_key(lock_prefix);
    let lock = entries.iter().rfind(|e| e.key == gate).map(|e| e.entry.clone());
    match lock {
        Some(lock) if lock.flags == SEMAPHORE_FLAG => Places::parse(lock_prefix, entries, index).holders(),
        Some(lock) if lock.flags == RW_FLAG => Scene::parse(lock_prefix, entries, index).holders(),
        Some(lock) => plain_holder(&lock).into_iter().collect(),
        // Between a reader/writer gate's end and its renewal, granted
        // contenders still hold.
        None => Scene::parse(lock_prefix, entries, index).holders(),
    }
}

/// Writes `value` as the held key's value with the holder's `session`,
/// only while that session holds the key: the key's new `ModifyIndex`.
///
/// # Errors
/// [`LockError::Lost`] (reason `Revoked`) when the session no longer holds
/// the key; [`LockError::InvalidOptions`] for a value that is too long;
/// [`LockError::Unavailable`] when Consul does not answer (the value may or
/// may not have been written).
pub(crate) async fn proclaim(
    api: &Api,
    key: &LockKey,
    kv_key: &str,
    session: &Session,
    value: &str,
) -> Result<u64, LockError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(LockError::InvalidOptions {
            backend: BACKEND,
            message: format!("a published value may hold at most {MAX_VALUE_BYTES} bytes, got {}", value.len()),
        });
    }
    let operations =
        vec![TxnKv::check_session(kv_key, &session.id), TxnKv::lock(kv_key, value.as_bytes(), LOCK_FLAG, &session.id)];
    match api.txn(operations).await.map_err(|e| error::map(Some(key), e))? {
        TxnOutcome::Applied(entries) => {
            let index = entries.iter().rfind(|e| e.key == kv_key).map(|e| e.entry.modify_index);
            debug!(%key, ?index, "proclaimed a new value");
            index.ok_or_else(|| LockError::backend(BACKEND, Some(key), "the proclaim returned no entry"))
        }
        TxnOutcome::RolledBack(errors) => {
            debug!(%key, ?errors, "proclaim refused: the key is no longer ours");
            Err(LockError::lost(BACKEND, key, lock_core::LostReason::Revoked))
        }
    }
}

/// The leaders of the lock at `lock_prefix` (`key`'s), pushed by blocking
/// queries on its keys: the current one first, then each change of leader
/// or value. A failed read is reported once as an error item and retried
/// after a pause; the next answer is then reported whatever it is. The
/// stream never ends by itself.
pub(crate) fn watch(api: Api, key: LockKey, lock_prefix: String) -> LeaderStream {
    let observer = Observer { api, key, lock_prefix, index: 0, reported: None, pause: None, failing: false };
    Box::pin(futures_util::stream::unfold(observer, |mut observer| async move {
        let next = observer.next().await;
        Some((next, observer))
    }))
}

/// One observer's state between items.
struct Observer {
    api: Api,
    key: LockKey,
    lock_prefix: String,
    /// The index to block on; 0 for a plain read (first, and after errors).
    index: u64,
    /// The last leader reported; `None` before the first and after an error.
    reported: Option<LeaderIdentity>,
    /// The pause before the next read, after a failed one.
    pause: Option<Duration>,
    /// Whether the failure of the last read was reported.
    failing: bool,
}

impl Observer {
    async fn next(&mut self) -> Result<Option<LockInfo>, LockError> {
        loop {
            if let Some(pause) = self.pause {
                sleep(pause).await;
            }
            match self.api.read_prefix(&tree(&self.lock_prefix), self.index, MAX_BLOCKING_WAIT).await {
                Ok((entries, next)) => {
                    (self.index, self.pause, self.failing) = (next, None, false);
                    let leader = holders_in_tree(&self.lock_prefix, entries, next).into_iter().next();
                    let seen = leader_identity(&leader);
                    if self.reported.as_ref() != Some(&seen) {
                        self.reported = Some(seen);
                        return Ok(leader);
                    }
                }
                Err(error) => {
                    self.pause = Some(self.pause.map_or(FIRST_PAUSE, |pause| (pause * 2).min(LAST_PAUSE)));
                    (self.index, self.reported) = (0, None);
                    if !self.failing {
                        self.failing = true;
                        return Err(error::map(Some(&self.key), error));
                    }
                    debug!(key = %self.key, %error, "observing the leader failed again; retrying");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lock_index: u64, create_index: u64, modify_index: u64, value: &[u8]) -> KvEntry {
        use base64::Engine as _;
        KvEntry {
            flags: LOCK_FLAG,
            value: Some(base64::engine::general_purpose::STANDARD.encode(value)),
            session: Some("s".to_owned()),
            create_index,
            lock_index,
            modify_index,
        }
    }

    #[test]
    fn a_leaders_token_survives_a_new_value() {
        // Granted at 10 (created by the lock), value rewritten at 14.
        let proclaimed = plain_holder(&entry(1, 10, 14, b"10.0.0.1:8080"));
        let proclaimed = proclaimed.unwrap_or_else(|| panic!("held"));
        assert_eq!((proclaimed.token.get(), proclaimed.value.as_deref()), (10, Some("10.0.0.1:8080")));
        // An api.Lock that locked its kept key again: the last lock write.
        assert_eq!(grant_index(&entry(3, 10, 20, b"")), 20);
        // consul lock writes no value: no value, named by its session.
        let native = plain_holder(&entry(1, 7, 7, b"")).unwrap_or_else(|| panic!("held"));
        assert_eq!((native.owner.as_str(), native.value), ("consul session s", None));
    }
}
