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

    /// The ids of the sessions whose name mentions `kv_prefix` (a semaphore
    /// place's session is named `distlock semaphore at '<lock prefix>' ...`,
    /// `consul lock`'s `Consul lock for '<command>' at '<prefix>'`).
    pub async fn sessions_named_for(&self, kv_prefix: &str) -> Vec<String> {
        let listed = admin_request(self.upstream(), "GET", "/v1/session/list").await;
        let listed = listed.unwrap_or_else(|e| panic!("cannot list Consul's sessions: {e}"));
        // Each session is an object with "ID" before "Name"; names are
        // plain strings here (no escaped quotes in a KV prefix).
        listed
            .split("\"ID\":\"")
            .skip(1)
            .filter_map(|session| {
                let id = session.split('"').next()?;
                let name = session.split("\"Name\":\"").nth(1)?.split('"').next()?;
                name.contains(&format!("at '{kv_prefix}")).then(|| id.to_owned())
            })
            .collect()
    }

    /// Destroys every session named for a lock under the namespace `prefix`
    /// (see [`sessions_named_for`](Self::sessions_named_for)): what a
    /// `consul lock` leaves to its TTL when it exits before its renewal
    /// goroutine has destroyed its session, or when it was refused.
    pub async fn end_sessions_named_for(&self, prefix: &str) {
        for session in self.sessions_named_for(&native_prefix(PREFIX, prefix)).await {
            self.destroy_session(&session).await;
        }
    }

    /// Destroys session `id` from outside, as an operator would.
    pub async fn destroy_session(&self, id: &str) {
        let path = format!("/v1/session/destroy/{id}");
        let reply = admin_request(self.upstream(), "PUT", &path).await;
        assert!(matches!(&reply, Ok(body) if body.trim() == "true"), "cannot destroy session {id}: {reply:?}");
    }
}

/// The `consul` binary installed by `scripts/services install consul`, or
/// the one `DISTLOCK_CONSUL_BIN` names.
///
/// # Panics
/// When there is none.
pub fn consul_binary() -> PathBuf {
    let path = std::env::var_os("DISTLOCK_CONSUL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::services_dir().join("bin/consul"));
    assert!(path.exists(), "no consul binary at {}: run `scripts/services install consul`", path.display());
    path
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
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => {
                let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
                Ok(if chunked { dechunk(body) } else { body.to_owned() })
            }
            _ => Err(reply),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.unwrap_or_else(|_| Err("timed out".to_owned()))
}

/// The body of a chunked HTTP/1.1 answer (a longer one, such as the list
/// of every session), without its chunk framing.
fn dechunk(framed: &str) -> String {
    let (mut framed, mut body) = (framed.as_bytes(), Vec::new());
    while let Some(line_end) = framed.windows(2).position(|pair| pair == b"\r\n") {
        let size = String::from_utf8_lossy(&framed[..line_end]);
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16).unwrap_or(0);
        let rest = &framed[line_end + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        body.extend_from_slice(&rest[..size]);
        framed = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
    }
    String::from_utf8_lossy(&body).into_owned()
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
    /// reader/writer lock (whose `.lock` is its gate, not a holder) or of a
    /// semaphore (whose `.lock` is its record).
    async fn break_lock(&self, key: &LockKey) {
        let lock_prefix = native_lock_prefix(PREFIX, key.as_str());
        let gate = format!("{lock_prefix}/.lock");
        let request = ReadKeyRequest { key: &lock_prefix.replace('%', "%25"), recurse: true, ..Default::default() };
        let found = self.admin().await.read_key(request).await.map(|found| found.response).unwrap_or_default();
        let shared = found
            .iter()
            .find(|entry| entry.key == gate)
            .map(|entry| entry.flags)
            .filter(|flags| [lock_consul::RW_FLAG, lock_consul::SEMAPHORE_FLAG].contains(flags));
        let doomed: Vec<String> = if let Some(flags) = shared {
            found
                .iter()
                .filter(|entry| entry.flags == flags && entry.key != gate)
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

    /// Counts every key under the prefix (plain lock keys, a reader/writer
    /// lock's contender keys and its gate, a semaphore's contender keys and
    /// its record) and every session made for a lock under it (a semaphore
    /// place's, or `consul lock`'s, both named `... at '<prefix>'`).
    async fn leftover(&self, prefix: &str) -> usize {
        let kv_prefix = native_prefix(PREFIX, prefix);
        let url_prefix = kv_prefix.replace('%', "%25");
        let request = ReadKeyRequest { key: &url_prefix, recurse: true, ..Default::default() };
        let keys = match self.admin().await.read_key(request).await {
            Ok(found) => found.response.len(),
            Err(rs_consul::ConsulError::UnexpectedResponseCode(status, _)) if status.as_u16() == 404 => 0,
            Err(error) => panic!("cannot count keys under {url_prefix}: {error}"),
        };
        keys + self.sessions_named_for(&kv_prefix).await.len()
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

/// A `consul lock [options] PREFIX` whose command says `held` once it runs
/// and then holds the lock until [`NativeLock::finish`] closes its input:
/// Consul's own lock or semaphore (`-n N`) as a test drives it.
#[derive(Debug)]
pub struct NativeLock {
    child: tokio::process::Child,
    input: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    errors: Option<tokio::process::ChildStderr>,
}

impl NativeLock {
    /// Starts `consul lock` with `options` on `prefix`, against the agent at
    /// `address`.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn start(address: &str, options: &[&str], prefix: &str) -> Self {
        use std::process::Stdio;
        use tokio::io::AsyncBufReadExt;

        let mut command = tokio::process::Command::new(consul_binary());
        command
            .arg("lock")
            .arg(format!("-http-addr={address}"))
            .args(["-shell=false", "-pass-stdin"])
            .args(options)
            .args([prefix, "sh", "-c", "echo held; read line; echo done"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let input = child.stdin.take();
        let output = child.stdout.take().unwrap_or_else(|| panic!("{command:?} has no stdout"));
        let errors = child.stderr.take();
        Self { child, input, lines: tokio::io::BufReader::new(output).lines(), errors }
    }

    /// Whether its command runs (it holds the lock) within `limit`.
    pub async fn holds_within(&mut self, limit: Duration) -> bool {
        let line = tokio::time::timeout(limit, self.lines.next_line()).await;
        matches!(line, Ok(Ok(Some(line))) if line.trim() == "held")
    }

    /// Lets its command end (so `consul lock` releases), and waits for the
    /// exit: whether it succeeded, and what it said on stderr.
    ///
    /// # Panics
    /// When it does not exit within 20 s.
    pub async fn finish(mut self) -> (bool, String) {
        drop(self.input.take());
        self.exit().await
    }

    /// Waits for it to exit by itself (refused, or timed out): whether it
    /// succeeded, and what it said on stderr.
    ///
    /// # Panics
    /// When it does not exit within 20 s.
    pub async fn exit(mut self) -> (bool, String) {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        let status = status.unwrap_or_else(|_| panic!("consul lock did not exit within 20 s"));
        let mut said = String::new();
        if let Some(mut errors) = self.errors.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), errors.read_to_string(&mut said)).await;
        }
        (status.is_ok_and(|s| s.success()), said)
    }
}
