//! Mapping Consul API errors onto the core error kinds.

use lock_core::{LockError, LockKey};

use crate::BACKEND;
use crate::api::ApiError;

/// No answer or a server-side failure (no leader, overload) is
/// `Unavailable`; a TLS setup failure is `InvalidConfig`; everything else
/// (ACL denied, a request Consul refuses) is `Backend`.
/// A failed session creation, said in a user's words where it shows that
/// `address` is not a Consul agent: nothing listening, another kind of server
/// (no HTTP, or an HTTP server without Consul's API), or no answer.
pub(crate) fn unreachable(address: &str, key: Option<&LockKey>, error: ApiError) -> LockError {
    let failure = match &error {
        ApiError::Transport { .. } => lock_core::ConnectFailure::of(&error),
        ApiError::TimedOut { .. } => lock_core::ConnectFailure::NoAnswer,
        ApiError::Status { status, .. } if *status == http::StatusCode::NOT_FOUND => {
            return LockError::unavailable(
                BACKEND,
                key,
                format!(
                    "{address} is not a Consul agent: it has no session API ({error}); check the address \
                     (Consul's HTTP API listens on 8500 by default)"
                ),
            );
        }
        _ => return map(key, error),
    };
    LockError::unavailable(BACKEND, key, failure.error("Consul", address, 8500, error))
}

pub(crate) fn map(key: Option<&LockKey>, error: ApiError) -> LockError {
    match error {
        ApiError::Tls(message) => LockError::InvalidConfig { backend: BACKEND, message },
        error if error.is_transient() => LockError::unavailable(BACKEND, key, error),
        error => LockError::backend(BACKEND, key, error),
    }
}
