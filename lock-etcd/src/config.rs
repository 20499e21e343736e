//! Connection and lease options.

use std::path::PathBuf;
use std::time::Duration;

use lock_core::{ClientTimeouts, LockError};

use crate::BACKEND;

/// Where the endpoints come from when none are configured.
pub const ENDPOINTS_ENV: &str = "DISTLOCK_ETCD_ENDPOINTS";

/// The endpoint used when neither the configuration nor the environment
/// names one.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";

/// How to reach etcd and how the client's lease behaves.
///
/// ```
/// use std::time::Duration;
/// use lock_etcd::EtcdConfig;
///
/// let config = EtcdConfig::new(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
///     .namespace("myapp/locks/")
///     .lease_ttl(Duration::from_secs(10))
///     .user("locker", "secret");
/// assert_eq!(config.endpoints().len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    endpoints: Vec<String>,
    namespace: String,
    lease_ttl: Duration,
    timeouts: ClientTimeouts,
    user: Option<(String, String)>,
    tls: Option<EtcdTls>,
}

/// TLS settings: the CA that signed the servers' certificates, and an
/// optional client certificate for mutual TLS.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// PEM file of the certificate authority.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// The server name to verify, when it differs from the endpoint's host.
    pub domain: Option<String>,
}

impl EtcdConfig {
    /// A configuration for `endpoints` with the defaults: namespace
    /// `distlock/`, lease TTL 15 s, connect and request timeouts 5 s.
    pub fn new<E: Into<String>>(endpoints: impl IntoIterator<Item = E>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            namespace: "distlock/".to_owned(),
            lease_ttl: Duration::from_secs(15),
            timeouts: ClientTimeouts::DEFAULT,
            user: None,
            tls: None,
        }
    }

    /// Endpoints from `DISTLOCK_ETCD_ENDPOINTS` (comma separated), else
    /// `http://127.0.0.1:2379`.
    pub fn from_env() -> Self {
        let endpoints = std::env::var(ENDPOINTS_ENV).unwrap_or_else(|_| DEFAULT_ENDPOINT.to_owned());
        Self::new(endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned))
    }

    /// The prefix of every etcd key this client writes (default `distlock/`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The TTL of the client's lease, in whole seconds, at least 2 s (etcd
    /// silently raises shorter TTLs to its minimum, so they are refused here).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
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

    /// Authenticates as `name` with `password`.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Connects over TLS.
    pub fn tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The key namespace.
    pub fn namespace_value(&self) -> &str {
        &self.namespace
    }

    /// The lease TTL.
    pub fn lease_ttl_value(&self) -> Duration {
        self.lease_ttl
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

    pub(crate) fn user_value(&self) -> Option<&(String, String)> {
        self.user.as_ref()
    }

    pub(crate) fn tls_value(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// Checks the configuration without connecting.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming what is wrong.
    pub fn validate(&self) -> Result<(), LockError> {
        let invalid = |message: String| Err(LockError::InvalidConfig { backend: BACKEND, message });
        if self.endpoints.is_empty() {
            return invalid("no endpoints".to_owned());
        }
        if let Some(bad) = self.endpoints.iter().find(|e| e.trim().is_empty() || e.contains(char::is_whitespace)) {
            return invalid(format!("malformed endpoint {bad:?}"));
        }
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl.subsec_nanos() != 0 {
            return invalid(format!("lease TTL must be whole seconds, at least 2 s; got {:?}", self.lease_ttl));
        }
        self.timeouts.validate(BACKEND)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_etcd_would_silently_change() {
        assert!(EtcdConfig::new(["http://127.0.0.1:2379"]).validate().is_ok());
        let short = EtcdConfig::new(["http://127.0.0.1:2379"]).lease_ttl(Duration::from_secs(1));
        assert!(matches!(short.validate(), Err(LockError::InvalidConfig { .. })));
        let fractional = EtcdConfig::new(["http://127.0.0.1:2379"]).lease_ttl(Duration::from_millis(2500));
        assert!(fractional.validate().is_err());
        assert!(EtcdConfig::new(Vec::<String>::new()).validate().is_err());
        assert!(EtcdConfig::new(["http://a b:1"]).validate().is_err());
    }
}
