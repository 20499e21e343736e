//! The harness for the Consul backend, against a real Consul agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_consul::{ConsulConfig, ConsulLock, native_lock_prefix, native_prefix};
use lock_core::{LockError, LockKey, Locks};
use rs_consul::{Consul, DeleteKeyRequest, ReadKeyRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use crate::proxy::{BlackHoles, StallProxy, UNREACHABLE_BOUND, UNREACHABLE_TIMEOUTS};
use crate::{ClientControl, Harness, TestClient};

/// The KV prefix the suite writes under.
pub const PREFIX: &str = "distlock-test/";

/// The lock delay the suite's sessions use, so expiry cases stay fast.
pub const LOCK_DELAY: Duration = Duration::from_secs(1);

/// Runs the suite against the Consul agent named by `DISTLOCK_CONSUL_ADDR`
/// (default `http://127.0.0.1:8500`), each client through its own stall
/// proxy. The agent must allow short session TTLs (`session_ttl_min`, as
/// `scripts/services` configures it).
pub struct ConsulHarness {
    address: String,
    ttl: Duration,
    admin: OnceCell<Arc<Consul>>,
    holder_binary: Option<PathBuf>,
    black_holes: BlackHoles,
    /// Every client's proxy, kept as long as the harness: a client's
    /// `Locks` may outlive its `TestClient` (a case that moves only the
    /// `Locks` into a task), and must not lose its connection path then.
    proxies: std::sync::Mutex<Vec<Arc<StallProxy>>>,
}

impl std::fmt::Debug for ConsulHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulHarness").field("address", &self.address).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl ConsulHarness {
    /// A harness for the agent the environment names.
    pub fn from_env() -> Self {
        Self::new(ConsulConfig::from_env().address_value())
    }

    /// A harness for the agent at `address` (`http://ip:port`).
    pub fn new(address: &str) -> Self {
        Self {
            address: address.to_owned(),
            ttl: Duration::from_secs(3),
            admin: OnceCell::new(),
            holder_binary: None,
            black_holes: BlackHoles::default(),
            proxies: std::sync::Mutex::default(),
        }
    }

    /// The `conformance-holder` binary, for the killed-holder case.
    pub fn with_holder_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.holder_binary = Some(path.into());
        self
    }

    /// The agent address under test.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// An `rs-consul` client for acting from outside; panics with
    /// instructions when the agent cannot be reached.
    pub async fn admin(&self) -> Arc<Consul> {
        let admin = self
            .admin
            .get_or_init(|| async {
                let reached = admin_request(self.upstream(), "GET", "/v1/status/leader").await;
                match reached {
                    Ok(body) if body.trim().len() > 2 => {}
                    outcome => panic!(
                        "Consul is not reachable at {} or has no leader ({outcome:?}). Start it with \
                         `scripts/services start consul`, or point {} at a running agent.",
                        self.address,
                        lock_consul::ADDRESS_ENV
                    ),
                }
                Arc::new(Consul::new(rs_consul::Config { address: self.address.clone(), ..Default::default() }))
            })
            .await;
        Arc::clone(admin)
    }

    /// A client configuration for this harness through `address`.
    pub fn config(&self, address: &str) -> ConsulConfig {
        ConsulConfig::new(address)
            .prefix(PREFIX)
            .session_ttl(self.ttl)
            .lock_delay(LOCK_DELAY)
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
    }

    /// The agent's `ip:port`.
    pub fn upstream(&self) -> SocketAddr {
        let host_port = self.address.trim_start_matches("http://");
        host_port
            .parse()
            .unwrap_or_else(|e| panic!("the suite needs an http://ip:port address, got {:?}: {e}", self.address))
    }

    /// Destroys session `id` from outside, as an operator would.
    pub async fn destroy_session(&self, id: &str) {
        let path = format!("/v1/session/destroy/{id}");
        let reply = admin_request(self.upstream(), "PUT", &path).await;
        assert!(matches!(&reply, Ok(body) if body.trim() == "true"), "cannot destroy session {id}: {reply:?}");
    }
}

/// One plain HTTP/1.1 request to the agent, for the calls `rs-consul` lacks;
/// returns the body of a 200 answer.
pub async fn admin_request(agent: SocketAddr, method: &str, path: &str) -> Result<String, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(agent).await.map_err(|e| e.to_string())?;
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {agent}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.map_err(|e| e.to_string())?;
        match reply.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
            _ => Err(reply),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.unwrap_or_else(|_| Err("timed out".to_owned()))
}

struct ConsulControl {
    lock: Arc<ConsulLock>,
    proxy: Arc<StallProxy>,
    agent: SocketAddr,
}

#[async_trait]
impl ClientControl for ConsulControl {
    fn proxy(&self) -> Option<&StallProxy> {
        Some(&self.proxy)
    }

    async fn end_session(&self) {
        let id = self.lock.session_id().await.unwrap_or_else(|| panic!("the client has no session to end"));
        let path = format!("/v1/session/destroy/{id}");
        let reply = admin_request(self.agent, "PUT", &path).await;
        assert!(reply.is_ok(), "cannot destroy session {id}: {reply:?}");
    }
}

#[async_trait]
impl Harness for ConsulHarness {
    fn name(&self) -> &'static str {
        "consul"
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn client(&self) -> TestClient {
        self.admin().await;
        let proxy = StallProxy::start(self.upstream()).await.unwrap_or_else(|e| panic!("cannot start a proxy: {e}"));
        let proxy = Arc::new(proxy);
        self.proxies.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::clone(&proxy));
        let lock = ConsulLock::connect(self.config(&format!("http://{}", proxy.address()))).await;
        let lock = Arc::new(lock.unwrap_or_else(|e| panic!("cannot connect: {e}")));
        let locks = Locks::from_backend(Arc::clone(&lock) as _);
        TestClient { locks, control: Box::new(ConsulControl { lock, proxy, agent: self.upstream() }) }
    }

    /// Deletes the lock key (`.lock`) of a mutex, or every contender key of a
    /// reader/writer lock (whose `.lock` is its gate, not a holder).
    async fn break_lock(&self, key: &LockKey) {
        let lock_prefix = native_lock_prefix(PREFIX, key.as_str());
        let gate = format!("{lock_prefix}/.lock");
        let request = ReadKeyRequest { key: &lock_prefix.replace('%', "%25"), recurse: true, ..Default::default() };
        let found = self.admin().await.read_key(request).await.map(|found| found.response).unwrap_or_default();
        let rw_gate = found.iter().any(|entry| entry.key == gate && entry.flags == lock_consul::RW_FLAG);
        let doomed: Vec<String> = if rw_gate {
            found
                .iter()
                .filter(|entry| entry.flags == lock_consul::RW_FLAG && entry.key != gate)
                .filter(|entry| {
                    entry.key.strip_prefix(&format!("{lock_prefix}/")).is_some_and(|name| !name.contains('/'))
                })
                .map(|entry| entry.key.clone())
                .collect()
        } else {
            vec![gate]
        };
        for kv_key in doomed {
            let kv_key = kv_key.replace('%', "%25");
            let deleted = self.admin().await.delete_key(DeleteKeyRequest { key: &kv_key, ..Default::default() }).await;
            assert!(matches!(deleted, Ok(true)), "cannot delete the lock key {kv_key} of {key}: {deleted:?}");
        }
    }

    /// Counts every key under the prefix: plain lock keys, and a
    /// reader/writer lock's contender keys and its gate.
    async fn leftover(&self, prefix: &str) -> usize {
        let kv_prefix = native_prefix(PREFIX, prefix).replace('%', "%25");
        let request = ReadKeyRequest { key: &kv_prefix, recurse: true, ..Default::default() };
        match self.admin().await.read_key(request).await {
            Ok(found) => found.response.len(),
            Err(rs_consul::ConsulError::UnexpectedResponseCode(status, _)) if status.as_u16() == 404 => 0,
            Err(error) => panic!("cannot count keys under {kv_prefix}: {error}"),
        }
    }

    async fn unreachable_client(&self) -> (Duration, Result<Locks, LockError>) {
        let address = self.black_holes.open().await;
        let config = self.config(&format!("http://{address}")).timeouts(UNREACHABLE_TIMEOUTS);
        (UNREACHABLE_BOUND, ConsulLock::connect(config).await.map(Locks::new))
    }

    fn holder_process(&self, key: &LockKey, ttl: Duration) -> Option<tokio::process::Command> {
        let mut command = tokio::process::Command::new(self.holder_binary.as_ref()?);
        command
            .args(["consul", key.as_str(), &ttl.as_secs().to_string(), PREFIX])
            .env(lock_consul::ADDRESS_ENV, &self.address);
        Some(command)
    }
}
