//! The connect and request timeouts every network backend's client has.

use std::time::Duration;

use crate::LockError;

/// How long a client waits for a connection, and for each request, before it
/// reports [`LockError::Unavailable`]. Each network backend's configuration
/// holds one (its builders' `connect_timeout` and `request_timeout` set it).
///
/// ```
/// use std::time::Duration;
/// use lock_core::ClientTimeouts;
///
/// let timeouts = ClientTimeouts::default();
/// assert_eq!(timeouts.connect, Duration::from_secs(5));
/// assert!(timeouts.validate("etcd").is_ok());
/// assert!(ClientTimeouts { request: Duration::ZERO, ..timeouts }.validate("etcd").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// How long to wait for a connection.
    pub connect: Duration,
    /// How long to wait for each request (where a request waits on purpose,
    /// such as a Consul blocking query, its wait comes on top).
    pub request: Duration,
}

impl ClientTimeouts {
    /// The defaults: 5 s for each.
    pub const DEFAULT: Self = Self { connect: Duration::from_secs(5), request: Duration::from_secs(5) };

    /// Checks that both are positive.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for `backend`, naming the zero timeout.
    pub fn validate(&self, backend: &'static str) -> Result<(), LockError> {
        for (name, value) in [("connect", self.connect), ("request", self.request)] {
            if value.is_zero() {
                return Err(LockError::InvalidConfig {
                    backend,
                    message: format!("the {name} timeout must be positive"),
                });
            }
        }
        Ok(())
    }
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}
