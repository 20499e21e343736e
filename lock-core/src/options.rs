//! Per-acquisition options.

use std::time::Duration;

use crate::{Capabilities, LockError, LockMode};

/// The longest owner string accepted, in bytes.
pub const MAX_OWNER_BYTES: usize = 256;

/// The longest value a holder may publish (leader election), in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Options for one acquisition: TTL, owner string, auto-renewal and the
/// safety margin of the loss watchdog.
///
/// ```
/// use std::time::Duration;
/// use lock_core::LockOptions;
///
/// let options = LockOptions::new()
///     .ttl(Duration::from_secs(10))
///     .owner("billing-worker-3")
///     .auto_renew(true);
/// assert_eq!(options.ttl_value(), Some(Duration::from_secs(10)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    ttl: Option<Duration>,
    owner: String,
    auto_renew: bool,
    safety_margin: Option<Duration>,
    mode: LockMode,
    value: Option<String>,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl LockOptions {
    /// Default options: the backend's default TTL, the default owner string
    /// (see [`default_owner`]), auto-renew on, a safety margin of a fifth of
    /// the TTL.
    pub fn new() -> Self {
        Self {
            ttl: None,
            owner: default_owner().to_owned(),
            auto_renew: true,
            safety_margin: None,
            mode: LockMode::Exclusive,
            value: None,
        }
    }

    /// How long the lock survives a holder that stops renewing.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The owner string other clients see through `inspect`.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Whether the guard renews the lock in the background (default on).
    ///
    /// With auto-renew off the holder must call
    /// [`LockGuard::renew`](crate::LockGuard::renew) itself within each TTL;
    /// the loss watchdog runs either way.
    pub fn auto_renew(mut self, auto_renew: bool) -> Self {
        self.auto_renew = auto_renew;
        self
    }

    /// How long before the TTL runs out, counted from the sending of the last
    /// confirmed renewal, the guard gives the lock up as lost. It covers clock
    /// rate differences and the time the holder needs to stop its work. The
    /// default is a fifth of the TTL.
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.safety_margin = Some(margin);
        self
    }

    /// How the key is held: [`LockMode::Exclusive`] (the mutex, the
    /// default), or a side of a reader/writer lock.
    pub fn mode(mut self, mode: LockMode) -> Self {
        self.mode = mode;
        self
    }

    /// A value the holder publishes while it holds the key, for everyone to
    /// read: a leader election's proposal (its address, say). Stored where
    /// each service's native election keeps it: the etcd key's value
    /// (`etcdctl elect`), the ZooKeeper node's data (Curator's
    /// `LeaderSelector` id), the Consul key's value.
    pub fn value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// The value to publish, if any.
    pub fn value_value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// The mode asked for.
    pub fn mode_value(&self) -> LockMode {
        self.mode
    }

    /// The TTL asked for, if any.
    pub fn ttl_value(&self) -> Option<Duration> {
        self.ttl
    }

    /// The owner string.
    pub fn owner_value(&self) -> &str {
        &self.owner
    }

    /// Whether auto-renew is on.
    pub fn auto_renew_value(&self) -> bool {
        self.auto_renew
    }

    /// The TTL in force: the one asked for, or the backend's default.
    pub fn effective_ttl(&self, capabilities: &Capabilities) -> Duration {
        self.ttl.unwrap_or(capabilities.default_ttl)
    }

    /// The safety margin in force for a lock of `ttl`.
    pub fn effective_safety_margin(&self, ttl: Duration) -> Duration {
        self.safety_margin.unwrap_or(ttl / 5)
    }

    /// Checks the options against a backend's capabilities.
    ///
    /// # Errors
    /// [`LockError::InvalidOptions`] when the TTL is outside the backend's
    /// range, the safety margin is not shorter than the TTL, or the owner
    /// string is empty, longer than [`MAX_OWNER_BYTES`] or holds a control
    /// character.
    pub fn validate(&self, backend: &'static str, capabilities: &Capabilities) -> Result<(), LockError> {
        let invalid = |message: String| Err(LockError::InvalidOptions { backend, message });
        if !capabilities.grants(self.mode) {
            let modes: Vec<&str> = capabilities.modes.iter().map(|mode| mode.name()).collect();
            return invalid(format!(
                "the {} mode is not available on this backend (it grants: {})",
                self.mode,
                modes.join(", ")
            ));
        }
        let ttl = self.effective_ttl(capabilities);
        if !capabilities.ttl_in_range(ttl) {
            return invalid(format!(
                "TTL {ttl:?} is outside the backend's range {:?}..={:?}",
                capabilities.min_ttl, capabilities.max_ttl
            ));
        }
        let margin = self.effective_safety_margin(ttl);
        if margin >= ttl {
            return invalid(format!("safety margin {margin:?} must be shorter than the TTL {ttl:?}"));
        }
        if self.owner.is_empty() || self.owner.len() > MAX_OWNER_BYTES {
            return invalid(format!("owner string must be 1 to {MAX_OWNER_BYTES} bytes, got {}", self.owner.len()));
        }
        if self.value.is_some() && !capabilities.values {
            return invalid("this backend cannot publish a holder's value (leader election)".to_owned());
        }
        if let Some(value) = &self.value
            && value.len() > MAX_VALUE_BYTES
        {
            return invalid(format!("a published value may hold at most {MAX_VALUE_BYTES} bytes, got {}", value.len()));
        }
        if self.owner.chars().any(char::is_control) {
            return invalid(format!("owner string {:?} holds a control character", self.owner));
        }
        Ok(())
    }
}

/// The owner string used when none is given: `host:pid:random`, unique per
/// process, so an operator reading `inspect` can tell which process holds a
/// lock.
pub fn default_owner() -> &'static str {
    static OWNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OWNER.get_or_init(|| {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let host: String = host.chars().filter(|c| !c.is_control()).take(128).collect();
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}:{}:{}", std::process::id(), &random[..12])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Capabilities {
        Capabilities::new(Duration::from_secs(1), Duration::from_secs(60))
    }

    #[test]
    fn out_of_range_ttl_is_rejected_not_clamped() {
        for ttl in [Duration::from_millis(999), Duration::from_secs(61)] {
            let err = LockOptions::new().ttl(ttl).validate("test", &caps());
            assert!(matches!(err, Err(LockError::InvalidOptions { .. })), "{ttl:?}: {err:?}");
        }
        assert!(LockOptions::new().ttl(Duration::from_secs(1)).validate("test", &caps()).is_ok());
    }

    #[test]
    fn margin_and_owner_are_checked() {
        let ttl = Duration::from_secs(2);
        let bad_margin = LockOptions::new().ttl(ttl).safety_margin(ttl);
        assert!(bad_margin.validate("test", &caps()).is_err());
        assert!(LockOptions::new().owner("").validate("test", &caps()).is_err());
        assert!(LockOptions::new().owner("a\nb").validate("test", &caps()).is_err());
        assert!(LockOptions::new().owner("x".repeat(257)).validate("test", &caps()).is_err());
    }

    #[test]
    fn a_mode_the_backend_does_not_grant_is_refused() {
        let err = LockOptions::new().mode(LockMode::Read).validate("test", &caps());
        assert!(
            matches!(&err, Err(LockError::InvalidOptions { message, .. }) if message.contains("read mode")),
            "{err:?}"
        );
        let rw = caps().with_modes(LockMode::ALL);
        assert!(LockOptions::new().mode(LockMode::Read).validate("test", &rw).is_ok());
    }

    #[test]
    fn default_owner_names_host_and_pid() {
        let owner = default_owner();
        assert!(owner.contains(&format!(":{}:", std::process::id())), "{owner}");
        assert!(LockOptions::new().validate("test", &caps()).is_ok());
    }
}
