//! Mapping ZooKeeper errors onto the core error kinds.

use lock_core::{LockError, LockKey, LostReason};
use zookeeper_client::Error;

use crate::BACKEND;

/// Connection trouble is `Unavailable`; an expired or closed session is
/// `Lost`; everything else is `Backend`.
pub(crate) fn map(key: Option<&LockKey>, error: Error) -> LockError {
    match (&error, key) {
        (Error::SessionExpired | Error::ClientClosed, Some(key)) => {
            LockError::lost(BACKEND, key, LostReason::SessionEnded)
        }
        // Custom carries the client's own connection errors ("no response
        // from connection"); Throttled is the server shedding load.
        (
            Error::ConnectionLoss
            | Error::Timeout
            | Error::NoHosts
            | Error::SessionMoved
            | Error::Throttled
            | Error::Custom(_),
            _,
        ) => LockError::unavailable(BACKEND, key, error),
        (Error::SessionExpired | Error::ClientClosed, None) => LockError::unavailable(BACKEND, key, error),
        _ => LockError::backend(BACKEND, key, error),
    }
}

/// A request that got no answer within the request timeout.
pub(crate) fn timed_out(key: Option<&LockKey>, what: &str, limit: std::time::Duration) -> LockError {
    LockError::unavailable(BACKEND, key, format!("{what}: no answer within {limit:?}"))
}
