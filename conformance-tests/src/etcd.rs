//! The harness for the etcd backend, against a real etcd.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, GetOptions, SortOrder, SortTarget};
use lock_core::{LockError, LockKey, Locks};
use lock_etcd::{EtcdConfig, EtcdLock, native_lock_name, native_prefix};
use tokio::sync::OnceCell;

use crate::proxy::{BlackHoles, StallProxy, UNREACHABLE_BOUND, UNREACHABLE_TIMEOUTS};
use crate::{ClientControl, Harness, TestClient};

/// The etcd key namespace the suite writes under.
pub const NAMESPACE: &str = "distlock-test/";

/// Runs the suite against the etcd named by `DISTLOCK_ETCD_ENDPOINTS`
/// (default `http://127.0.0.1:2379`), each client through its own stall proxy.
pub struct EtcdHarness {
    endpoints: Vec<String>,
    ttl: Duration,
    admin: OnceCell<Client>,
    holder_binary: Option<PathBuf>,
    black_holes: BlackHoles,
}

impl EtcdHarness {
    /// A harness for the etcd the environment names.
    pub fn from_env() -> Self {
        Self::with_endpoints(EtcdConfig::from_env().endpoints().to_vec())
    }

    /// A harness for the etcd at `endpoints` (a cluster's members, say).
    pub fn with_endpoints(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            ttl: Duration::from_secs(3),
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

    /// The endpoints under test.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A plain etcd client for acting from outside; panics with instructions
    /// when etcd cannot be reached.
    pub async fn admin(&self) -> Client {
        self.admin
            .get_or_init(|| async {
                let reached = async {
                    let mut client = Client::connect(&self.endpoints, None).await?;
                    client.status().await?;
                    Ok::<_, etcd_client::Error>(client)
                };
                match tokio::time::timeout(Duration::from_secs(5), reached).await {
                    Ok(Ok(client)) => client,
                    outcome => panic!(
                        "etcd is not reachable at {:?} ({}). Start it with `scripts/services start etcd`, \
                         or point {} at a running etcd.",
                        self.endpoints,
                        outcome.map_or_else(
                            |_| "timed out".to_owned(),
                            |r| r.err().map(|e| e.to_string()).unwrap_or_default()
                        ),
                        lock_etcd::ENDPOINTS_ENV
                    ),
                }
            })
            .await
            .clone()
    }

    /// Writes a key twice (so the revision moves past every watched one) and
    /// compacts etcd's history up to the current revision, as an operator's
    /// `etcdctl compact` or etcd's auto-compaction would; returns that
    /// revision. Watches that start at an older revision are refused from
    /// then on.
    pub async fn compact(&self) -> i64 {
        let mut admin = self.admin().await;
        let marker = format!("{NAMESPACE}compaction-marker");
        // Two writes: etcd keeps the compaction revision itself, so a watch
        // from the revision just after the newest watched one must fall
        // below it to be refused.
        let mut revision = 0;
        for _ in 0..2 {
            let put = admin.put(marker.as_str(), "", None).await;
            let put = put.unwrap_or_else(|e| panic!("cannot write before compacting: {e}"));
            revision = put.header().map(|h| h.revision()).unwrap_or_else(|| panic!("a put without a header"));
        }
        let options = etcd_client::CompactionOptions::new().with_physical();
        admin.compact(revision, Some(options)).await.unwrap_or_else(|e| panic!("cannot compact at {revision}: {e}"));
        revision
    }

    /// A client configuration for this harness through `endpoint`.
    pub fn config(&self, endpoint: &str) -> EtcdConfig {
        EtcdConfig::new([endpoint])
            .namespace(NAMESPACE)
            .lease_ttl(self.ttl)
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
    }

    fn upstream(&self) -> SocketAddr {
        let first = self.endpoints.first().map(String::as_str).unwrap_or(lock_etcd::DEFAULT_ENDPOINT);
        let host_port = first.trim_start_matches("http://").trim_start_matches("https://");
        host_port.parse().unwrap_or_else(|e| panic!("the suite needs an ip:port endpoint, got {first:?}: {e}"))
    }
}

/// The etcd program `name` (`etcd` or `etcdctl`) the tests run: from the
/// directory `DISTLOCK_ETCD_BIN_DIR` names (another etcd version, as
/// `scripts/services install etcd@3.4` installs it), else the default one
/// `scripts/services install etcd` installs.
///
/// # Panics
/// When there is none.
pub fn etcd_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("DISTLOCK_ETCD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::services_dir().join("bin"))
        .join(name);
    assert!(path.exists(), "no {name} at {}: run `scripts/services install etcd`", path.display());
    path
}

/// The `etcdctl` the interop tests run: the one `DISTLOCK_ETCDCTL` names,
/// else [`etcd_binary`]`("etcdctl")`.
///
/// # Panics
/// When there is none.
pub fn etcdctl() -> PathBuf {
    match std::env::var_os("DISTLOCK_ETCDCTL") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(path.exists(), "no etcdctl at {} (DISTLOCK_ETCDCTL)", path.display());
            path
        }
        None => etcd_binary("etcdctl"),
    }
}

/// Starts an etcd of the test's own on free loopback ports (plain HTTP), for
/// faults that must not reach other tests' service, such as pausing it;
/// returns it with its client URL. Stopped when the server is dropped.
///
/// # Panics
/// When etcd is not installed or cannot be started.
pub fn start_private_etcd(name: &str) -> (crate::process::PrivateServer, String) {
    use crate::process::{PrivateServer, free_port};
    let binary = etcd_binary("etcd");
    let (port, peer) = (free_port(), free_port());
    let dir = PrivateServer::scratch_dir(name);
    let client_url = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut command = std::process::Command::new(binary);
    command
        .args(["--name", name, "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("{name}={peer_url}"), "--log-level", "error"]);
    (PrivateServer::spawn(command, dir), client_url)
}

impl std::fmt::Debug for EtcdHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdHarness")
            .field("endpoints", &self.endpoints)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

struct EtcdControl {
    lock: Arc<EtcdLock>,
    proxy: StallProxy,
    admin: Client,
}

#[async_trait]
impl ClientControl for EtcdControl {
    fn proxy(&self) -> Option<&StallProxy> {
        Some(&self.proxy)
    }

    async fn end_session(&self) {
        let id = self.lock.lease_id().await.unwrap_or_else(|| panic!("the client has no lease to end"));
        self.admin.lease_client().revoke(id).await.unwrap_or_else(|e| panic!("cannot revoke lease {id:x}: {e}"));
    }
}

#[async_trait]
impl Harness for EtcdHarness {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn client(&self) -> TestClient {
        let admin = self.admin().await;
        let proxy = StallProxy::start(self.upstream()).await.unwrap_or_else(|e| panic!("cannot start a proxy: {e}"));
        let config = self.config(&format!("http://{}", proxy.address()));
        let lock = Arc::new(EtcdLock::connect(config).await.unwrap_or_else(|e| panic!("cannot connect: {e}")));
        let locks = Locks::from_backend(Arc::clone(&lock) as _);
        TestClient { locks, control: Box::new(EtcdControl { lock, proxy, admin }) }
    }

    async fn break_lock(&self, key: &LockKey) {
        let mut admin = self.admin().await;
        let contenders = format!("{}/", native_lock_name(NAMESPACE, key));
        let first = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
        let found = admin.get(contenders, Some(first)).await.unwrap_or_else(|e| panic!("cannot read the holder: {e}"));
        let holder = found.kvs().first().unwrap_or_else(|| panic!("{key} has no holder to break"));
        admin.delete(holder.key(), None).await.unwrap_or_else(|e| panic!("cannot delete the holder: {e}"));
    }

    /// Every key under the prefix counts: the mutex's `{name}/{lease}`, and
    /// the readers' and writers' `{name}/read/...` and `{name}/write/...`.
    async fn leftover(&self, prefix: &str) -> usize {
        let mut admin = self.admin().await;
        let options = GetOptions::new().with_prefix().with_count_only();
        let found = admin.get(native_prefix(NAMESPACE, prefix), Some(options)).await;
        usize::try_from(found.unwrap_or_else(|e| panic!("cannot count keys: {e}")).count()).unwrap_or(usize::MAX)
    }

    async fn unreachable_client(&self) -> (Duration, Result<Locks, LockError>) {
        let address = self.black_holes.open().await;
        let config = self.config(&format!("http://{address}")).timeouts(UNREACHABLE_TIMEOUTS);
        (UNREACHABLE_BOUND, EtcdLock::connect(config).await.map(Locks::new))
    }

    fn holder_process(&self, key: &LockKey, ttl: Duration) -> Option<tokio::process::Command> {
        let binary = self.holder_binary.as_ref()?;
        let mut command = tokio::process::Command::new(binary);
        command
            .args(["etcd", key.as_str(), &ttl.as_secs().to_string(), NAMESPACE])
            .env(lock_etcd::ENDPOINTS_ENV, self.endpoints.join(","));
        Some(command)
    }
}
