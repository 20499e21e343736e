//! Connection and session options.

use std::time::Duration;

use lock_core::{ClientTimeouts, LockError};

use crate::BACKEND;

/// Where the hosts come from when none are configured.
pub const HOSTS_ENV: &str = "DISTLOCK_ZK_HOSTS";

/// The hosts used when neither the configuration nor the environment names any.
pub const DEFAULT_HOSTS: &str = "127.0.0.1:2181";

/// How to reach ZooKeeper and how the client's session behaves.
///
/// ```
/// use std::time::Duration;
/// use lock_zk::ZkConfig;
///
/// let config = ZkConfig::new("10.0.0.1:2181,10.0.0.2:2181/myapp")
///     .base_path("/locks")
///     .session_timeout(Duration::from_secs(10));
/// assert_eq!(config.hosts_value(), "10.0.0.1:2181,10.0.0.2:2181/myapp");
/// ```
#[derive(Debug, Clone)]
pub struct ZkConfig {
    hosts: String,
    base_path: String,
    session_timeout: Duration,
    timeouts: ClientTimeouts,
    digest: Option<(String, String)>,
    plain_creates: bool,
}

impl ZkConfig {
    /// A configuration for `hosts` (`host:port[,host:port...][/chroot]`) with
    /// the defaults: base path `/distlock`, session timeout 15 s, connect and
    /// request timeouts 5 s.
    pub fn new(hosts: impl Into<String>) -> Self {
        Self {
            hosts: hosts.into(),
            base_path: "/distlock".to_owned(),
            session_timeout: Duration::from_secs(15),
            timeouts: ClientTimeouts::DEFAULT,
            digest: None,
            plain_creates: false,
        }
    }

    /// Hosts from `DISTLOCK_ZK_HOSTS`, else `127.0.0.1:2181`.
    pub fn from_env() -> Self {
        Self::new(std::env::var(HOSTS_ENV).unwrap_or_else(|_| DEFAULT_HOSTS.to_owned()))
    }

    /// Makes the client send plain `create` requests, whose replies carry no
    /// stat, as a server before 3.5 answers every create: the token then
    /// comes from a read of the node. For tests of that path on a newer
    /// server; every supported server (3.5 and later) answers `create2`.
    #[doc(hidden)]
    pub fn plain_creates_for_tests(mut self) -> Self {
        self.plain_creates = true;
        self
    }

    pub(crate) fn plain_creates_value(&self) -> bool {
        self.plain_creates
    }

    /// The path under which lock directories live (default `/distlock`).
    pub fn base_path(mut self, path: impl Into<String>) -> Self {
        self.base_path = path.into();
        self
    }

    /// The session timeout, which is the locks' TTL. ZooKeeper must be able
    /// to grant it (between 2 and 20 ticks by default).
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// How long to wait for a connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connect = timeout;
        self
    }

    /// How long to wait for each request.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.request = timeout;
        self
    }

    /// Both timeouts at once.
    pub fn timeouts(mut self, timeouts: ClientTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Authenticates with the digest scheme as `user`. Lock nodes, lock
    /// directories and the base path's missing ancestors that the client
    /// creates then carry an ACL that gives this identity alone all
    /// permissions, and the client refuses to queue in a lock directory open
    /// to clients without credentials (see the [crate docs](crate)).
    pub fn digest(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.digest = Some((user.into(), password.into()));
        self
    }

    /// The hosts.
    pub fn hosts_value(&self) -> &str {
        &self.hosts
    }

    /// The base path.
    pub fn base_path_value(&self) -> &str {
        &self.base_path
    }

    /// The session timeout asked for.
    pub fn session_timeout_value(&self) -> Duration {
        self.session_timeout
    }

    /// The connect timeout.
    pub fn connect_timeout_value(&self) -> Duration {
        self.timeouts.connect
    }

    /// The request timeout.
    pub fn request_timeout_value(&self) -> Duration {
        self.timeouts.request
    }

    /// Both timeouts.
    pub fn timeouts_value(&self) -> ClientTimeouts {
        self.timeouts
    }

    pub(crate) fn digest_value(&self) -> Option<&(String, String)> {
        self.digest.as_ref()
    }

    /// Checks the configuration without connecting.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming what is wrong.
    pub fn validate(&self) -> Result<(), LockError> {
        let invalid = |message: String| Err(LockError::InvalidConfig { backend: BACKEND, message });
        if self.hosts.trim().is_empty() || self.hosts.contains(char::is_whitespace) {
            return invalid(format!("malformed hosts {:?}", self.hosts));
        }
        if !self.base_path.starts_with('/') || self.base_path.len() < 2 || self.base_path.ends_with('/') {
            return invalid(format!("base path must be absolute with no trailing /, got {:?}", self.base_path));
        }
        if self.session_timeout < Duration::from_millis(100) {
            return invalid(format!("session timeout {:?} is too short", self.session_timeout));
        }
        self.timeouts.validate(BACKEND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_timeouts_and_bad_paths() {
        assert!(ZkConfig::new("127.0.0.1:2181").validate().is_ok());
        let zero = ZkConfig::new("127.0.0.1:2181").request_timeout(Duration::ZERO);
        assert!(matches!(zero.validate(), Err(LockError::InvalidConfig { .. })));
        assert!(ZkConfig::new("127.0.0.1:2181").base_path("relative").validate().is_err());
        assert!(ZkConfig::new("").validate().is_err());
    }
}
