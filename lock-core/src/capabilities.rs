//! What a backend guarantees, declared once so callers and the conformance
//! suite can reason about it.

use std::time::Duration;

use crate::LockMode;

/// The guarantees and limits of one backend.
///
/// Options outside these limits are rejected with
/// [`LockError::InvalidOptions`](crate::LockError::InvalidOptions), never
/// clamped. The conformance suite derives every timing bound it checks from
/// these values.
///
/// ```
/// use std::time::Duration;
/// use lock_core::Capabilities;
///
/// let caps = Capabilities::new(Duration::from_secs(2), Duration::from_secs(3600))
///     .with_fifo(true)
///     .with_expiry_slack(Duration::from_millis(500));
/// assert!(caps.fifo);
/// assert!(caps.ttl_in_range(Duration::from_secs(15)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The shortest TTL the backend accepts.
    pub min_ttl: Duration,
    /// The longest TTL the backend accepts.
    pub max_ttl: Duration,
    /// The TTL used when the options name none.
    pub default_ttl: Duration,
    /// Whether waiters on one key are granted it in the order they asked.
    pub fifo: bool,
    /// How long after the TTL has run out the service guarantees to have freed
    /// a lock whose holder stopped renewing.
    pub expiry_slack: Duration,
    /// Whether an unrenewed lock frees itself when its TTL runs out. `false`
    /// for backends that free a lock only when its holder releases it or dies.
    pub expires: bool,
    /// Whether clients in different processes exclude each other.
    pub shared_across_processes: bool,
    /// The [`LockMode`]s the backend grants; others are refused as invalid
    /// options.
    pub modes: &'static [LockMode],
    /// Whether a waiting writer (or mutex contender) makes readers that
    /// arrive after it wait, so readers never starve it. `true` on every
    /// backend that grants [`LockMode::Read`].
    pub writer_preference: bool,
    /// Whether holders can publish a value ([`LockOptions::value`](crate::LockOptions::value),
    /// leader election); options with a value are refused where not.
    pub values: bool,
}

impl Capabilities {
    /// Capabilities with the given TTL range; the default TTL is 15 s clamped
    /// into the range; not FIFO, no expiry slack, expiring, shared across
    /// processes, the mutex only, writer-preferring, no published values.
    pub fn new(min_ttl: Duration, max_ttl: Duration) -> Self {
        Self {
            min_ttl,
            max_ttl,
            default_ttl: Duration::from_secs(15).clamp(min_ttl, max_ttl.max(min_ttl)),
            fifo: false,
            expiry_slack: Duration::ZERO,
            expires: true,
            shared_across_processes: true,
            modes: &[LockMode::Exclusive],
            writer_preference: true,
            values: false,
        }
    }

    /// Capabilities of a backend whose every lock has the one TTL of the
    /// client's lease or session: `ttl` is the minimum, maximum and default.
    pub fn fixed_ttl(ttl: Duration) -> Self {
        Self::new(ttl, ttl).with_default_ttl(ttl)
    }

    /// Sets the TTL used when the options name none.
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Declares whether waiters are served first come, first served.
    pub fn with_fifo(mut self, fifo: bool) -> Self {
        self.fifo = fifo;
        self
    }

    /// Declares how long after the TTL the service guarantees release.
    pub fn with_expiry_slack(mut self, slack: Duration) -> Self {
        self.expiry_slack = slack;
        self
    }

    /// Declares whether an unrenewed lock frees itself after its TTL.
    pub fn with_expires(mut self, expires: bool) -> Self {
        self.expires = expires;
        self
    }

    /// Declares whether clients in different processes exclude each other.
    pub fn with_shared_across_processes(mut self, shared: bool) -> Self {
        self.shared_across_processes = shared;
        self
    }

    /// Declares the modes the backend grants.
    pub fn with_modes(mut self, modes: &'static [LockMode]) -> Self {
        self.modes = modes;
        self
    }

    /// Declares whether waiting writers hold back later readers.
    pub fn with_writer_preference(mut self, writer_preference: bool) -> Self {
        self.writer_preference = writer_preference;
        self
    }

    /// Declares whether holders can publish values.
    pub fn with_values(mut self, values: bool) -> Self {
        self.values = values;
        self
    }

    /// Whether the backend grants `mode`.
    pub fn grants(&self, mode: LockMode) -> bool {
        self.modes.iter().any(|granted| granted.same_kind(mode))
    }

    /// Whether `ttl` lies within `min_ttl..=max_ttl`.
    pub fn ttl_in_range(&self, ttl: Duration) -> bool {
        (self.min_ttl..=self.max_ttl).contains(&ttl)
    }
}
