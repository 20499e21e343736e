//! Mapping Consul API errors onto the core error kinds.

use lock_core::{LockError, LockKey};

use crate::BACKEND;
use crate::api::ApiError;

/// No answer or a server-side failure (no leader, overload) is
/// `Unavailable`; a TLS setup failure is `InvalidConfig`; everything else
/// (ACL denied, a request Consul refuses) is `Backend`.
pub(crate) fn map(key: Option<&LockKey>, error: ApiError) -> LockError {
    match error {
        ApiError::Tls(message) => LockError::InvalidConfig { backend: BACKEND, message },
        error if error.is_transient() => LockError::unavailable(BACKEND, key, error),
        error => LockError::backend(BACKEND, key, error),
    }
}
