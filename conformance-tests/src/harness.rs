//! What a backend provides so the suite can drive it: clients, and ways to
//! break things from outside.

use std::time::Duration;

use async_trait::async_trait;
use lock_core::{LockError, LockKey, Locks};

use crate::proxy::StallProxy;

/// One backend under test, with a real service behind it.
///
/// Implementations panic with instructions for starting the service when it
/// cannot be reached: a conformance case never passes silently.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The backend's name, for messages.
    fn name(&self) -> &'static str;

    /// The TTL the suite uses; short so expiry cases stay fast, and within
    /// the backend's capabilities.
    fn ttl(&self) -> Duration;

    /// A new, independent client: its own connection and lease or session.
    async fn client(&self) -> TestClient;

    /// Breaks the current holder's grant of `key` from outside, as an
    /// operator would (delete its key or node, revoke its lease).
    async fn break_lock(&self, key: &LockKey);

    /// How many records (holders, waiters, lock directories) the service
    /// keeps under keys starting with `prefix`.
    async fn leftover(&self, prefix: &str) -> usize;

    /// A client configured with an endpoint nothing listens on, and the
    /// connect timeout it was given. Building it may fail already.
    async fn unreachable_client(&self) -> (Duration, Result<Locks, LockError>);

    /// A child process that holds `key` with `ttl` and prints `held <token>`
    /// once it does, for backends shared across processes.
    fn holder_process(&self, key: &LockKey, ttl: Duration) -> Option<tokio::process::Command> {
        let _ = (key, ttl);
        None
    }
}

/// A client under test and the controls to break it from outside.
pub struct TestClient {
    /// The client.
    pub locks: Locks,
    /// Its fault controls.
    pub control: Box<dyn ClientControl>,
}

/// Faults a test injects into one client.
#[async_trait]
pub trait ClientControl: Send + Sync {
    /// Ends the client's lease or session at the service, as an operator or a
    /// server-side expiry would.
    async fn end_session(&self);

    /// The stall proxy the client talks to its service through, if any: the
    /// faults below act on it unless the harness overrides them.
    fn proxy(&self) -> Option<&StallProxy> {
        None
    }

    /// Stalls all traffic between the client and the service (a blackholed
    /// connection, not a refused one).
    async fn cut_off(&self) {
        proxy_for(self, "cut the client off").stall();
    }

    /// Lets stalled traffic flow again.
    async fn restore(&self) {
        proxy_for(self, "restore the client").resume();
    }

    /// Lets requests reach the service but holds back its replies, as on a
    /// connection that dies right after a request left. Harnesses without a
    /// proxy cannot; only tests that need it call it.
    async fn lose_replies(&self) {
        proxy_for(self, "hold back replies alone").stall_replies();
    }

    /// Resets the client's connections to the service (an RST both ways);
    /// the client may connect again at once.
    async fn reset_connections(&self) {
        proxy_for(self, "reset the client's connections").reset();
    }

    /// Lets requests reach the service and throws its replies away until
    /// [`restore`](Self::restore), which then resets the connections.
    async fn drop_replies(&self) {
        proxy_for(self, "drop replies").drop_replies();
    }
}

fn proxy_for<'a, C: ClientControl + ?Sized>(control: &'a C, fault: &str) -> &'a StallProxy {
    control.proxy().unwrap_or_else(|| panic!("this harness has no proxy and cannot {fault}"))
}

/// A random key prefix of one case, so cases run in parallel on one service.
#[derive(Debug, Clone)]
pub struct Namespace {
    prefix: String,
}

impl Namespace {
    /// A fresh namespace.
    pub fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self { prefix: format!("distlock-conformance/{}/", &id[..12]) }
    }

    /// The prefix every key of this namespace starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key `name` inside this namespace.
    ///
    /// # Panics
    /// When the resulting key is invalid (a bug in the case).
    pub fn key(&self, name: &str) -> LockKey {
        LockKey::new(format!("{}{name}", self.prefix)).unwrap_or_else(|e| panic!("case built a bad key: {e}"))
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self::new()
    }
}
