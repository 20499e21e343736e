//! Counting semaphores on etcd, beside the mutex and the reader/writer
//! lock: the key a contender writes, what its value says, and who holds.
//!
//! # Layout: a subtree of our own, queued with everyone else
//!
//! etcd has no semaphore recipe, so ours follows its lock's rule as closely
//! as it can: every contender of a lock, in any mode, writes one key under
//! `{name}/` on its client's lease, and keys are served in create-revision
//! order. A semaphore contender writes `{name}/semaphore/{lease hex}-{n}`
//! (`n` new for every attempt of the client, as for readers and writers, so
//! one client may hold several places), with a small JSON record as its
//! value: `{"semaphore":3,"owner":"host:pid:…"}` (and `"value"` when the
//! holder publishes one).
//!
//! A semaphore contender holds when fewer than `limit` keys under `{name}/`
//! were created before its own and every one of them is a semaphore
//! contender (of the same limit). So the `limit` lowest create revisions
//! hold while only semaphore contenders queue, and anything else before a
//! contender (a mutex holder, ours or `etcdctl lock`'s, a reader, a writer)
//! holds the lock alone: a semaphore of any limit and `etcdctl lock` on the
//! same name exclude each other, both ways, as etcd's lock waits for every
//! older key under `{name}/`. Readers, writers and our mutex wait for
//! semaphore contenders like for any other key.
//!
//! # Limits must agree
//!
//! etcd keeps no record of a semaphore's limit but its contenders' values.
//! The transaction that writes a contender's key also reads every key of the
//! semaphore subtree: a key naming another limit (or none) is a
//! [`LockError::Conflict`](lock_core::LockError::Conflict), and the
//! contender takes its key back at once. Two contenders with different
//! limits cannot both miss each other: transactions are serialised, so the
//! later one sees the earlier one's key.
//!
//! # Waiting, and fencing
//!
//! A waiter blocked by a key that is not a semaphore contender watches that
//! key's deletion (the last one before its own), as the mutex does. A waiter
//! blocked only by a full semaphore watches every deletion in the subtree
//! and counts again: any older contender's end, a holder's or a waiter's,
//! may be its turn, so watching one predecessor would miss turns.
//!
//! The token is the key's create revision. A place freed by a release goes
//! to the oldest waiter, whose key was created after every holder's, so its
//! token is above theirs; two waiters freed together may learn of it in
//! either order, as readers may.

use std::num::NonZeroU32;

use etcd_client::KeyValue;
use lock_core::LockMode;
use serde_json::Value;

use crate::queue::KeyRange;

/// The places of a semaphore: the subtree of its contenders, and how many
/// of them hold at once.
#[derive(Debug, Clone)]
pub(crate) struct Places {
    /// `{name}/semaphore/`.
    pub(crate) range: KeyRange,
    /// The most holders at once.
    pub(crate) limit: NonZeroU32,
}

impl Places {
    /// How many of `others` (every other key of the subtree when ours was
    /// written) hold or wait before us, or why we may not contend: one of
    /// them names another limit.
    pub(crate) fn taken<'a>(&self, others: impl IntoIterator<Item = &'a KeyValue>) -> Result<usize, String> {
        let mut taken = 0;
        for other in others {
            taken += 1;
            let found = Record::parse(other.value()).map(|record| record.limit);
            if found != Some(self.limit) {
                let key = String::from_utf8_lossy(other.key());
                let used = found.map_or_else(|| "something else".to_owned(), |n| format!("a semaphore of {n}"));
                return Err(format!("asked for a semaphore of {}, but {key} uses it as {used}", self.limit));
            }
        }
        Ok(taken)
    }
}

/// What a semaphore contender's key holds: the limit, the owner string and
/// the value it publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    limit: NonZeroU32,
    owner: String,
    value: Option<String>,
}

impl Record {
    /// The record of a contender in `mode`; `None` for modes other than the
    /// semaphore.
    pub(crate) fn new(mode: LockMode, owner: &str, value: Option<&str>) -> Option<Self> {
        let LockMode::Semaphore { limit } = mode else { return None };
        Some(Self { limit, owner: owner.to_owned(), value: value.map(str::to_owned) })
    }

    /// The record as stored: `{"semaphore":N,"owner":"…"[,"value":"…"]}`.
    pub(crate) fn encode(&self) -> String {
        // Written by hand for a fixed field order; `Value` escapes strings.
        let mut record = format!(r#"{{"{LIMIT}":{},"{OWNER}":{}"#, self.limit, Value::from(self.owner.as_str()));
        if let Some(value) = &self.value {
            record.push_str(&format!(r#","{VALUE}":{}"#, Value::from(value.as_str())));
        }
        record.push('}');
        record
    }

    /// The record a key's value holds; `None` when it holds none.
    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        let Value::Object(record) = serde_json::from_slice(value).ok()? else { return None };
        let limit = record.get(LIMIT)?.as_u64().and_then(|n| u32::try_from(n).ok()).and_then(NonZeroU32::new)?;
        let text = |field: &str| record.get(field).and_then(Value::as_str).map(str::to_owned);
        Some(Self { limit, owner: text(OWNER).unwrap_or_default(), value: text(VALUE) })
    }

    /// The mode the record's contender asks for.
    pub(crate) fn mode(&self) -> LockMode {
        LockMode::Semaphore { limit: self.limit }
    }

    /// The owner string.
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// The value the contender publishes, if any.
    pub(crate) fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

const LIMIT: &str = "semaphore";
const OWNER: &str = "owner";
const VALUE: &str = "value";

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(limit: u32) -> LockMode {
        LockMode::semaphore(limit).unwrap_or_else(|| panic!("{limit} is no limit"))
    }

    #[test]
    fn records_round_trip() {
        let plain = Record::new(mode(3), "host:1:ab\"c\\", None).unwrap_or_else(|| panic!("a semaphore"));
        assert_eq!(plain.encode(), r#"{"semaphore":3,"owner":"host:1:ab\"c\\"}"#);
        assert_eq!(Record::parse(plain.encode().as_bytes()), Some(plain.clone()));
        let valued = Record::new(mode(1), "o", Some("10.0.0.1:80")).unwrap_or_else(|| panic!("a semaphore"));
        let parsed = Record::parse(valued.encode().as_bytes()).unwrap_or_else(|| panic!("no record"));
        assert_eq!((parsed.mode(), parsed.owner(), parsed.value()), (mode(1), "o", Some("10.0.0.1:80")));
        assert_eq!(Record::new(LockMode::Exclusive, "o", None), None);
    }

    #[test]
    fn anything_else_is_no_record() {
        for value in ["", "owner", "{}", r#"{"semaphore":0}"#, r#"{"semaphore":-1}"#, r#"{"semaphore":"3"}"#, "[3]"] {
            assert_eq!(Record::parse(value.as_bytes()), None, "{value}");
        }
        assert_eq!(Record::parse(br#"{"semaphore":4294967296}"#), None);
        assert_eq!(Record::parse(br#"{"semaphore":2}"#).map(|r| r.mode()), Some(mode(2)));
    }
}
