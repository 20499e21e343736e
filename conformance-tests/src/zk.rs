//! The harness for the ZooKeeper backend, against a real ZooKeeper.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{LockError, LockKey, Locks};
use lock_zk::{ZkConfig, ZkLock, escaped_prefix, lock_path};
use tokio::sync::OnceCell;
use zookeeper_client::Client;

use crate::proxy::{BlackHoles, StallProxy, UNREACHABLE_BOUND, UNREACHABLE_TIMEOUTS};
use crate::{ClientControl, Harness, TestClient};

/// The ZooKeeper path the suite writes under.
pub const BASE: &str = "/distlock-test";

/// Runs the suite against the ZooKeeper named by `DISTLOCK_ZK_HOSTS`
/// (default `127.0.0.1:2181`), each client through its own stall proxy.
pub struct ZkHarness {
    upstream: String,
    ttl: Duration,
    admin: OnceCell<Client>,
    holder_binary: Option<PathBuf>,
    black_holes: BlackHoles,
}

impl std::fmt::Debug for ZkHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkHarness").field("upstream", &self.upstream).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl ZkHarness {
    /// A harness for the ZooKeeper the environment names.
    pub fn from_env() -> Self {
        let hosts = ZkConfig::from_env().hosts_value().to_owned();
        let upstream = hosts.split([',', '/']).next().unwrap_or(lock_zk::DEFAULT_HOSTS).to_owned();
        Self {
            upstream,
            ttl: Duration::from_secs(2),
            admin: OnceCell::new(),
            holder_binary: None,
            black_holes: BlackHoles::default(),
        }
    }

    /// The `conformance-holder` binary, for the killed-holder case.
    pub fn with_holder_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.holder_binary = Some(path.into());
        self
    }

    /// A plain client for acting from outside; panics with instructions when
    /// ZooKeeper cannot be reached.
    pub async fn admin(&self) -> Client {
        self.admin
            .get_or_init(|| async {
                let connecting = Client::connector().with_fail_eagerly().connect(&self.upstream);
                match tokio::time::timeout(Duration::from_secs(5), connecting).await {
                    Ok(Ok(client)) => client,
                    outcome => panic!(
                        "ZooKeeper is not reachable at {} ({}). Start it with `scripts/services start zk`, \\
                         or point {} at a running ZooKeeper.",
                        self.upstream,
                        outcome.map_or_else(
                            |_| "timed out".to_owned(),
                            |r| r.err().map(|e| e.to_string()).unwrap_or_default()
                        ),
                        lock_zk::HOSTS_ENV
                    ),
                }
            })
            .await
            .clone()
    }

    /// The ZooKeeper address under test.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// A client configuration for this harness through `hosts`.
    pub fn config(&self, hosts: &str) -> ZkConfig {
        ZkConfig::new(hosts)
            .base_path(BASE)
            .session_timeout(self.ttl)
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
    }

    fn upstream_address(&self) -> SocketAddr {
        self.upstream
            .parse()
            .unwrap_or_else(|e| panic!("the suite needs an ip:port host, got {:?}: {e}", self.upstream))
    }

    /// The contender nodes of `key`, sorted by sequence.
    pub async fn contenders(&self, key: &LockKey) -> Vec<String> {
        let dir = lock_path(BASE, key);
        let mut children = self.admin().await.list_children(&dir).await.unwrap_or_default();
        children.sort_by(|a, b| a[a.len().saturating_sub(10)..].cmp(&b[b.len().saturating_sub(10)..]));
        children.into_iter().map(|child| format!("{dir}/{child}")).collect()
    }
}

struct ZkControl {
    lock: Arc<ZkLock>,
    proxy: StallProxy,
}

impl ZkControl {
    fn lock_ttl(&self) -> Duration {
        lock_core::DistributedLock::capabilities(&*self.lock).default_ttl
    }
}

#[async_trait]
impl ClientControl for ZkControl {
    fn proxy(&self) -> Option<&StallProxy> {
        Some(&self.proxy)
    }

    async fn end_session(&self) {
        // Silence the client past its session timeout: ZooKeeper expires the
        // session, and the client learns it when it reconnects.
        self.proxy.stall();
        tokio::time::sleep(self.lock_ttl() + Duration::from_millis(500)).await;
        self.proxy.resume();
    }
}

#[async_trait]
impl Harness for ZkHarness {
    fn name(&self) -> &'static str {
        "zk"
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn client(&self) -> TestClient {
        self.admin().await;
        let proxy =
            StallProxy::start(self.upstream_address()).await.unwrap_or_else(|e| panic!("cannot start a proxy: {e}"));
        let lock = ZkLock::connect(self.config(&proxy.address().to_string())).await;
        let lock = Arc::new(lock.unwrap_or_else(|e| panic!("cannot connect: {e}")));
        let locks = Locks::from_backend(Arc::clone(&lock) as _);
        TestClient { locks, control: Box::new(ZkControl { lock, proxy }) }
    }

    async fn break_lock(&self, key: &LockKey) {
        let holder = self.contenders(key).await.into_iter().next();
        let holder = holder.unwrap_or_else(|| panic!("{key} has no holder to break"));
        self.admin().await.delete(&holder, None).await.unwrap_or_else(|e| panic!("cannot delete {holder}: {e}"));
    }

    async fn leftover(&self, prefix: &str) -> usize {
        let admin = self.admin().await;
        let escaped = escaped_prefix(prefix);
        let dirs = admin.list_children(BASE).await.unwrap_or_default();
        let mut count = 0;
        for dir in dirs.iter().filter(|dir| dir.starts_with(&escaped)) {
            count += admin.list_children(&format!("{BASE}/{dir}")).await.map(|c| c.len()).unwrap_or(0);
        }
        count
    }

    async fn unreachable_client(&self) -> (Duration, Result<Locks, LockError>) {
        let address = self.black_holes.open().await;
        let config = self.config(&address.to_string()).timeouts(UNREACHABLE_TIMEOUTS);
        (UNREACHABLE_BOUND, ZkLock::connect(config).await.map(Locks::new))
    }

    fn holder_process(&self, key: &LockKey, ttl: Duration) -> Option<tokio::process::Command> {
        let mut command = tokio::process::Command::new(self.holder_binary.as_ref()?);
        command.args(["zk", key.as_str(), &ttl.as_secs().to_string(), BASE]).env(lock_zk::HOSTS_ENV, &self.upstream);
        Some(command)
    }
}
