//! The errors every backend reports, in the same kinds.

use std::fmt;
use std::time::Duration;

use crate::{KeyError, LockKey};

/// A boxed error from a backend's client library or transport.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a held lock was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// The service reports the lock gone: its key was deleted, or it now
    /// belongs to someone else.
    Revoked,
    /// The lease or session the lock was attached to has ended.
    SessionEnded,
    /// No renewal was confirmed in time: the lock can no longer be proven
    /// held, so the guard gave it up by its own clock before the service could
    /// grant it to anyone else.
    NotConfirmed {
        /// How long ago the last confirmed renewal was sent.
        since: Duration,
    },
}

impl LostReason {
    /// The reason's stable short name, as in metrics (the `reason` label of
    /// `distlock_losses_total`): `revoked`, `session_ended`, `not_confirmed`.
    ///
    /// ```
    /// use lock_core::LostReason;
    ///
    /// assert_eq!(LostReason::SessionEnded.name(), "session_ended");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::SessionEnded => "session_ended",
            Self::NotConfirmed { .. } => "not_confirmed",
        }
    }
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Revoked => f.write_str("the service no longer holds it for us (deleted or taken over)"),
            Self::SessionEnded => f.write_str("its lease or session has ended"),
            Self::NotConfirmed { since } => {
                write!(f, "no renewal confirmed for {since:?}, so it can no longer be proven held")
            }
        }
    }
}

/// Everything that can go wrong with a lock.
///
/// Messages name the backend and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The key breaks the rules of [`LockKey`]; nothing was sent anywhere.
    #[error("invalid lock key {key:?}: {reason}")]
    InvalidKey {
        /// The rejected key.
        key: String,
        /// The rule it breaks.
        reason: KeyError,
    },
    /// An option is outside what the backend supports; nothing was sent.
    #[error("invalid options for the {backend} backend: {message}")]
    InvalidOptions {
        /// The backend's name.
        backend: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A backend's configuration (URL, endpoints, credentials) is malformed.
    #[error("invalid {backend} configuration: {message}")]
    InvalidConfig {
        /// The backend's name.
        backend: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The wait deadline passed before the lock was granted. Nothing was left
    /// behind: no holder and no waiter.
    #[error("timed out after {waited:?} waiting for lock {key:?} on the {backend} backend")]
    Timeout {
        /// The backend's name.
        backend: &'static str,
        /// The key waited for.
        key: LockKey,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The lock is not held by this handle (already released, or never held).
    #[error("lock {key:?} is not held by this handle on the {backend} backend")]
    NotHeld {
        /// The backend's name.
        backend: &'static str,
        /// The key.
        key: LockKey,
    },
    /// The lock was held, and is lost; see the reason. Work done under it
    /// since may overlap another holder's.
    #[error("lock {key:?} on the {backend} backend was lost: {reason}")]
    Lost {
        /// The backend's name.
        backend: &'static str,
        /// The key.
        key: LockKey,
        /// Why it was lost.
        reason: LostReason,
    },
    /// The key is in use in a way this request cannot share: a semaphore of
    /// another limit, or a kind of lock the service keeps apart (a Consul
    /// prefix used by `consul lock -n`, say). Nothing was taken or left.
    #[error("lock {key:?} on the {backend} backend is in use in another way: {message}")]
    Conflict {
        /// The backend's name.
        backend: &'static str,
        /// The key.
        key: LockKey,
        /// How the key is in use, and how that differs from the request.
        message: String,
    },
    /// The service could not be reached, or did not answer in time.
    #[error("the {backend} backend is unavailable{}: {source}", for_key(key))]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// The key being worked on, if any.
        key: Option<LockKey>,
        /// The transport or timeout error.
        #[source]
        source: BoxError,
    },
    /// Any other error the service or its client library reported.
    #[error("the {backend} backend failed{}: {source}", for_key(key))]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// The key being worked on, if any.
        key: Option<LockKey>,
        /// The service's error.
        #[source]
        source: BoxError,
    },
}

fn for_key(key: &Option<LockKey>) -> String {
    key.as_ref().map(|key| format!(" for lock {key:?}")).unwrap_or_default()
}

impl LockError {
    /// An [`LockError::Unavailable`] for `key`.
    pub fn unavailable(backend: &'static str, key: Option<&LockKey>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable { backend, key: key.cloned(), source: source.into() }
    }

    /// A [`LockError::Backend`] for `key`.
    pub fn backend(backend: &'static str, key: Option<&LockKey>, source: impl Into<BoxError>) -> Self {
        Self::Backend { backend, key: key.cloned(), source: source.into() }
    }

    /// A [`LockError::Timeout`] for `key`, having waited since `started`.
    pub fn timeout(backend: &'static str, key: &LockKey, started: tokio::time::Instant) -> Self {
        Self::Timeout { backend, key: key.clone(), waited: started.elapsed() }
    }

    /// A [`LockError::Conflict`] for `key`.
    pub fn conflict(backend: &'static str, key: &LockKey, message: impl Into<String>) -> Self {
        Self::Conflict { backend, key: key.clone(), message: message.into() }
    }

    /// A [`LockError::Lost`] for `key`.
    pub fn lost(backend: &'static str, key: &LockKey, reason: LostReason) -> Self {
        Self::Lost { backend, key: key.clone(), reason }
    }

    /// Whether trying the same call again may succeed: true for
    /// [`Unavailable`](Self::Unavailable) and [`Timeout`](Self::Timeout).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }

    /// Whether the error says the lock is gone for good.
    pub fn is_lost(&self) -> bool {
        matches!(self, Self::Lost { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_backend_and_key() {
        let key = LockKey::new("jobs/nightly").ok();
        let err = LockError::unavailable("etcd", key.as_ref(), "connection refused");
        assert_eq!(err.to_string(), "the etcd backend is unavailable for lock \"jobs/nightly\": connection refused");
        let err = LockError::unavailable("etcd", None, "connection refused");
        assert_eq!(err.to_string(), "the etcd backend is unavailable: connection refused");
        assert!(err.is_transient());
    }
}
