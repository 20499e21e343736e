//! Connection, session and key-layout options.

use std::path::PathBuf;
use std::time::Duration;

use lock_core::{ClientTimeouts, LockError};

use crate::BACKEND;
use crate::layout::check_prefix;

/// Where the agent address comes from when none is configured.
pub const ADDRESS_ENV: &str = "DISTLOCK_CONSUL_ADDR";

/// Where the ACL token comes from when none is configured.
pub const TOKEN_ENV: &str = "DISTLOCK_CONSUL_TOKEN";

/// The address used when neither the configuration nor the environment names one.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";

/// The KV prefix lock keys live under unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "distlock/";

/// The shortest session TTL Consul accepts; a stock server refuses anything
/// below 10 s unless its `session_ttl_min` is lowered.
pub const CONSUL_MIN_SESSION_TTL: Duration = Duration::from_secs(10);

/// The longest session TTL Consul accepts.
pub const CONSUL_MAX_SESSION_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Consul's lock delay when a session does not set one.
pub const CONSUL_DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

/// How to reach a Consul agent and how the client's session behaves.
///
/// ```
/// use std::time::Duration;
/// use lock_consul::ConsulConfig;
///
/// let config = ConsulConfig::new("https://consul.internal:8501")
///     .token("s3cr3t-acl-token")
///     .ca_file("/etc/consul/ca.pem")
///     .datacenter("eu-west")
///     .prefix("jobs/locks/")
///     .session_ttl(Duration::from_secs(15))
///     .lock_delay(Duration::from_secs(5));
/// assert_eq!(config.prefix_value(), "jobs/locks/");
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
pub struct ConsulConfig {
    address: String,
    token: Option<String>,
    ca_file: Option<PathBuf>,
    datacenter: Option<String>,
    prefix: String,
    session_ttl: Duration,
    lock_delay: Option<Duration>,
    timeouts: ClientTimeouts,
}

impl ConsulConfig {
    /// A configuration for the agent at `address` (`http://host:port` or
    /// `https://host:port`) with the defaults: prefix `distlock/`, session TTL
    /// 15 s (valid on a stock Consul), Consul's own lock delay (15 s), connect
    /// and request timeouts 5 s.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into().trim_end_matches('/').to_owned(),
            token: None,
            ca_file: None,
            datacenter: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            session_ttl: Duration::from_secs(15),
            lock_delay: None,
            timeouts: ClientTimeouts::DEFAULT,
        }
    }

    /// The address from `DISTLOCK_CONSUL_ADDR` (else `http://127.0.0.1:8500`)
    /// and the ACL token from `DISTLOCK_CONSUL_TOKEN`, if set.
    pub fn from_env() -> Self {
        let config = Self::new(std::env::var(ADDRESS_ENV).unwrap_or_else(|_| DEFAULT_ADDRESS.to_owned()));
        match std::env::var(TOKEN_ENV) {
            Ok(token) if !token.is_empty() => config.token(token),
            _ => config,
        }
    }

    /// The ACL token sent with every request (`X-Consul-Token`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A PEM file of CA certificates trusted for an `https` address, instead
    /// of the built-in web PKI roots.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// The datacenter to act in (`?dc=`); the agent's own by default.
    pub fn datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }

    /// The KV prefix lock keys live under: empty, or ending with `/`
    /// (default `distlock/`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The session TTL, which is the locks' TTL. Consul may keep an
    /// unrenewed session for up to twice this long, and refuses TTLs below
    /// its `session_ttl_min` (10 s on a stock server).
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// The lock delay: after a session is invalidated, how long Consul
    /// refuses to grant the locks it held (Consul's default is 15 s).
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = Some(delay);
        self
    }

    /// How long to wait for a connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connect = timeout;
        self
    }

    /// How long to wait for each request (blocking queries add their wait).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.request = timeout;
        self
    }

    /// Both timeouts at once.
    pub fn timeouts(mut self, timeouts: ClientTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The agent address.
    pub fn address_value(&self) -> &str {
        &self.address
    }

    /// The ACL token, if any.
    pub fn token_value(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The CA file, if any.
    pub fn ca_file_value(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    /// The datacenter, if set.
    pub fn datacenter_value(&self) -> Option<&str> {
        self.datacenter.as_deref()
    }

    /// The KV prefix.
    pub fn prefix_value(&self) -> &str {
        &self.prefix
    }

    /// The session TTL.
    pub fn session_ttl_value(&self) -> Duration {
        self.session_ttl
    }

    /// The lock delay asked for, if set.
    pub fn lock_delay_value(&self) -> Option<Duration> {
        self.lock_delay
    }

    /// The lock delay in effect: the one set, else Consul's default.
    pub fn effective_lock_delay(&self) -> Duration {
        self.lock_delay.unwrap_or(CONSUL_DEFAULT_LOCK_DELAY)
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

    /// Checks the configuration without connecting. The server's own TTL
    /// minimum is checked when the session is created.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming what is wrong.
    pub fn validate(&self) -> Result<(), LockError> {
        let invalid = |message: String| Err(LockError::InvalidConfig { backend: BACKEND, message });
        let Some((scheme, rest)) = self.address.split_once("://") else {
            return invalid(format!("address must be http://host:port or https://host:port, got {:?}", self.address));
        };
        if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
            return invalid(format!("address must be http://host:port or https://host:port, got {:?}", self.address));
        }
        if self.ca_file.is_some() && scheme != "https" {
            return invalid(format!("a CA file needs an https address, got {:?}", self.address));
        }
        if let Err(message) = check_prefix(&self.prefix) {
            return invalid(message);
        }
        if let Some(dc) = &self.datacenter
            && (dc.is_empty() || !dc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return invalid(format!("malformed datacenter {dc:?}"));
        }
        if self.session_ttl < Duration::from_secs(1) || self.session_ttl > CONSUL_MAX_SESSION_TTL {
            return invalid(format!(
                "session TTL {:?} is outside 1s..=24h (a stock Consul also refuses less than 10s)",
                self.session_ttl
            ));
        }
        if self.lock_delay.is_some_and(|d| d > Duration::from_secs(60)) {
            return invalid(format!("lock delay {:?} is over Consul's limit of 60s", self.lock_delay));
        }
        self.timeouts.validate(BACKEND)?;
        Ok(())
    }
}

impl std::fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("datacenter", &self.datacenter)
            .field("prefix", &self.prefix)
            .field("session_ttl", &self.session_ttl)
            .field("lock_delay", &self.lock_delay)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_consul_would_misread() {
        assert!(ConsulConfig::new("127.0.0.1:8500").validate().is_err());
        assert!(ConsulConfig::new("ftp://127.0.0.1:8500").validate().is_err());
        assert!(ConsulConfig::new("http://127.0.0.1:8500/v1").validate().is_err());
        assert!(ConsulConfig::new("http://h:1").ca_file("/ca.pem").validate().is_err());
        assert!(ConsulConfig::new("http://h:1").prefix("locks").validate().is_err());
        assert!(ConsulConfig::new("http://h:1").datacenter("a&b").validate().is_err());
        assert!(ConsulConfig::new("http://h:1").session_ttl(Duration::from_millis(500)).validate().is_err());
        assert!(ConsulConfig::new("http://h:1").lock_delay(Duration::from_secs(61)).validate().is_err());
        assert!(ConsulConfig::new("http://h:1/").prefix("").validate().is_ok());
        assert_eq!(ConsulConfig::new("http://h:1/").address_value(), "http://h:1");
    }

    #[test]
    fn debug_hides_the_token() {
        let shown = format!("{:?}", ConsulConfig::new("http://h:1").token("secret"));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
