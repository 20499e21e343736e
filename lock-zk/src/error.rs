//! Mapping ZooKeeper errors onto the core error kinds.

use lock_core::{LockError, LockKey, LostReason};
use zookeeper_client::{Acl, Error};

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

/// Why an authenticated client refused to queue in a lock directory: the
/// directory lets clients without credentials create or delete nodes, so
/// they could delete this client's lock node or queue before it, whatever
/// ACL the node itself carries. Carried as the source of
/// [`LockError::Backend`].
///
/// Such a directory was made by a client without credentials (or with an
/// open ACL by hand) before this one first used the key. Give it the
/// client's identity as its ACL, or delete it while it is empty (ZooKeeper
/// also reaps an empty lock directory by itself); the next acquire then makes
/// it again with the client's ACL.
#[derive(Debug, thiserror::Error)]
#[error(
    "lock directory {path} lets clients without credentials create or delete its nodes ({acl}), so they could \
     steal this lock: refusing to queue in it. Give it this client's ACL (zkCli: `addauth digest USER:PASSWORD`, \
     then `setAcl {path} auth::cdrwa`), or delete it while it is empty, and the next acquire makes it again with \
     this client's ACL"
)]
pub struct UnprotectedDirectory {
    path: String,
    acl: String,
}

impl UnprotectedDirectory {
    pub(crate) fn new(path: &str, acl: &[Acl]) -> Self {
        let acl = acl.iter().map(|entry| format!("{}:{}={}", entry.scheme(), entry.id(), entry.permission()));
        Self { path: path.to_owned(), acl: acl.collect::<Vec<_>>().join(", ") }
    }

    /// The lock directory's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The directory's ACL, as `scheme:id=PERMISSIONS` entries.
    pub fn acl(&self) -> &str {
        &self.acl
    }
}

/// A request that got no answer within the request timeout.
pub(crate) fn timed_out(key: Option<&LockKey>, what: &str, limit: std::time::Duration) -> LockError {
    LockError::unavailable(BACKEND, key, format!("{what}: no answer within {limit:?}"))
}
