//! The harness for the ZooKeeper backend, against a real ZooKeeper.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{LockError, LockGuard, LockKey, Locks};
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
        Self::with_hosts(&upstream)
    }

    /// A harness for the ZooKeeper at `hosts` (`host:port`, or several
    /// joined with commas for an ensemble, whose admin client fails over
    /// between them; test clients, each behind a proxy, need a single host).
    pub fn with_hosts(hosts: &str) -> Self {
        let upstream = hosts.to_owned();
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

    /// A plain client authenticated with the digest scheme as `user`, for
    /// reading what only that identity may read (lock directories it created).
    pub async fn admin_as(&self, user: &str, password: &str) -> Client {
        let connecting = Client::connector()
            .with_fail_eagerly()
            .with_auth("digest", format!("{user}:{password}").as_bytes())
            .connect(&self.upstream);
        match tokio::time::timeout(Duration::from_secs(5), connecting).await {
            Ok(Ok(client)) => client,
            outcome => panic!("cannot connect to ZooKeeper at {} as {user}: {outcome:?}", self.upstream),
        }
    }

    /// A client like [`Harness::client`]'s, with its configuration adjusted by
    /// `configure` (a longer session, credentials, another base path), and its
    /// backend, for faults only ZooKeeper has.
    pub async fn client_with(&self, configure: impl FnOnce(ZkConfig) -> ZkConfig) -> (TestClient, Arc<ZkLock>) {
        self.admin().await;
        let proxy =
            StallProxy::start(self.upstream_address()).await.unwrap_or_else(|e| panic!("cannot start a proxy: {e}"));
        let lock = ZkLock::connect(configure(self.config(&proxy.address().to_string()))).await;
        let lock = Arc::new(lock.unwrap_or_else(|e| panic!("cannot connect: {e}")));
        let locks = Locks::from_backend(Arc::clone(&lock) as _);
        (TestClient { locks, control: Box::new(ZkControl { lock: Arc::clone(&lock), proxy }) }, lock)
    }

    /// Takes `lock`'s session over on a connection of our own, straight to
    /// the server, then closes that connection without ending the session.
    /// The server closes the connection the client had, as one that lost the
    /// client would: requests a stalled proxy still holds back on it are
    /// never applied, and the client gets back into the same session once it
    /// can reach the server again.
    pub async fn move_session_away(&self, lock: &ZkLock) {
        let session = lock.session_info().await.unwrap_or_else(|| panic!("the client has no session to move"));
        let connecting = Client::connector()
            .with_session(session)
            // Asking for the client's own timeout, so the session lives on
            // as long as the client expects while it reconnects.
            .with_session_timeout(lock.config().session_timeout_value())
            // Dropped without closing the session.
            .with_detached()
            .with_fail_eagerly()
            .connect(&self.upstream);
        match tokio::time::timeout(Duration::from_secs(5), connecting).await {
            Ok(Ok(attached)) => drop(attached),
            outcome => panic!("cannot take the client's session over: {outcome:?}"),
        }
    }

    /// Waits until `key` has exactly `expected` contender nodes, failing with
    /// `what` after `limit`. Polls: no event tells that another client's or
    /// process's request has reached ZooKeeper.
    ///
    /// # Panics
    /// When `limit` passes first.
    pub async fn await_contenders(&self, key: &LockKey, expected: usize, limit: Duration, what: &str) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let found = self.contenders(key).await;
            if found.len() == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: expected {expected} contender nodes of {key} within {limit:?}, found {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `waiter`'s acquire of `key`, granted after a wait: `holder` takes the
    /// key, `waiter` queues behind it (its node seen in ZooKeeper), then
    /// `holder` releases. `what` names the holder in a failure.
    ///
    /// # Panics
    /// When the holder cannot take the key, or the waiter's node does not
    /// appear within 10 s.
    pub async fn acquire_after_a_wait(
        &self,
        holder: &TestClient,
        waiter: &TestClient,
        key: &LockKey,
        what: &str,
    ) -> Result<LockGuard, LockError> {
        let held = holder.locks.lock(key.as_str()).try_acquire().await.ok().flatten();
        let held = held.unwrap_or_else(|| panic!("{what} could not take the key"));
        let (locks, waiting_key) = (waiter.locks.clone(), key.clone());
        let waiting =
            tokio::spawn(async move { locks.lock(waiting_key.as_str()).wait(Duration::from_secs(20)).acquire().await });
        self.await_contenders(key, 2, Duration::from_secs(10), "the waiter's node").await;
        let _ = held.release().await;
        waiting.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// The contender nodes of `key` (mutex, read and write nodes), sorted by
    /// sequence.
    pub async fn contenders(&self, key: &LockKey) -> Vec<String> {
        let dir = lock_path(BASE, key);
        let mut children = self.admin().await.list_children(&dir).await.unwrap_or_default();
        children.sort_by(|a, b| a[a.len().saturating_sub(10)..].cmp(&b[b.len().saturating_sub(10)..]));
        children.into_iter().map(|child| format!("{dir}/{child}")).collect()
    }

    /// The lease nodes of `key`'s semaphore (in `{dir}/leases`), sorted by
    /// sequence.
    pub async fn leases(&self, key: &LockKey) -> Vec<String> {
        let dir = format!("{}/leases", lock_path(BASE, key));
        let mut children = self.admin().await.list_children(&dir).await.unwrap_or_default();
        children.sort_by(|a, b| a[a.len().saturating_sub(10)..].cmp(&b[b.len().saturating_sub(10)..]));
        children.into_iter().map(|child| format!("{dir}/{child}")).collect()
    }

    /// Deletes what is left of `key`'s lock directory once nothing is queued
    /// in it: Curator's semaphore makes `{dir}` and `{dir}/leases`
    /// persistent, so ZooKeeper never reaps them. Best effort.
    pub async fn remove_directory(&self, key: &LockKey) {
        let admin = self.admin().await;
        let dir = lock_path(BASE, key);
        for child in children(&admin, &dir).await {
            let _ = admin.delete(&format!("{dir}/{child}"), None).await;
        }
        let _ = admin.delete(&dir, None).await;
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
        self.client_with(|config| config).await.0
    }

    async fn break_lock(&self, key: &LockKey) {
        // A semaphore's first lease, else the first contender node.
        let leases = self.leases(key).await;
        let holder = leases.into_iter().next().or(self.contenders(key).await.into_iter().next());
        let holder = holder.unwrap_or_else(|| panic!("{key} has no holder to break"));
        self.admin().await.delete(&holder, None).await.unwrap_or_else(|e| panic!("cannot delete {holder}: {e}"));
    }

    async fn leftover(&self, prefix: &str) -> usize {
        let admin = self.admin().await;
        let escaped = escaped_prefix(prefix);
        let dirs = children(&admin, BASE).await;
        let mut count = 0;
        for dir in dirs.iter().filter(|dir| dir.starts_with(&escaped)) {
            // Every contender node: mutex, read and write nodes alike, and a
            // semaphore's lease and mutex nodes in its `leases` and `locks`.
            count += contender_nodes(&admin, format!("{BASE}/{dir}")).await;
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

/// The ephemeral nodes under `dir`, at any depth: every contender node,
/// without the container directories (`locks`, `leases`) a semaphore keeps
/// them in, which ZooKeeper reaps once empty in its own time.
fn contender_nodes(admin: &Client, dir: String) -> std::pin::Pin<Box<dyn Future<Output = usize> + Send + '_>> {
    Box::pin(async move {
        let mut count = 0;
        for child in children(admin, &dir).await {
            let path = format!("{dir}/{child}");
            match admin.check_stat(&path).await {
                Ok(Some(stat)) if stat.ephemeral_owner != 0 => count += 1,
                Ok(Some(_)) => count += contender_nodes(admin, path).await,
                Ok(None) => {}
                // Unknown: counted, so a check of no leftovers waits and looks again.
                Err(_) => count += 1,
            }
        }
        count
    })
}

/// The children of `path`, none when it does not exist. A listing that
/// fails is retried rather than counted as empty, which could pass a
/// leftover check that should fail.
async fn children(admin: &Client, path: &str) -> Vec<String> {
    let mut failures = 0;
    loop {
        match admin.list_children(path).await {
            Ok(children) => return children,
            Err(zookeeper_client::Error::NoNode) => return Vec::new(),
            Err(error) if failures < 20 => {
                tracing::debug!(path, %error, "listing failed; retrying");
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("cannot list {path}: {error}"),
        }
    }
}

/// Debian's Curator jars (`scripts/services install zk`).
pub const CURATOR_CLASSPATH: &str =
    "/usr/share/java/curator-recipes.jar:/usr/share/java/curator-framework.jar:/usr/share/java/curator-client.jar";

/// Compiles the Curator programs in `tests/curator` with the machine's JDK
/// against Debian's Curator jars, once per test binary, and returns the
/// directory of their classes.
///
/// # Panics
/// When they do not compile (no JDK, or no Curator jars).
pub async fn curator_classes() -> PathBuf {
    static CLASSES: OnceCell<PathBuf> = OnceCell::const_new();
    CLASSES
        .get_or_init(|| async {
            let out = std::env::temp_dir().join(format!("distlock-curator-{}", std::process::id()));
            let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/curator");
            let programs = std::fs::read_dir(&sources)
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", sources.display()))
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "java"));
            let status = tokio::process::Command::new("javac")
                .args(["-cp", CURATOR_CLASSPATH, "-d"])
                .arg(&out)
                .args(programs)
                .status()
                .await;
            assert!(
                matches!(status, Ok(s) if s.success()),
                "cannot compile the Curator programs ({status:?}): run `scripts/services install zk` for Curator's jars"
            );
            out
        })
        .await
        .clone()
}

/// A command that runs the Curator program `class` (from `tests/curator`)
/// with `args`, its log kept to warnings.
pub async fn curator_command(class: &str, args: &[&str]) -> tokio::process::Command {
    let classes = curator_classes().await;
    let mut command = tokio::process::Command::new("java");
    command
        .arg("-cp")
        .arg(format!("{}:{CURATOR_CLASSPATH}", classes.display()))
        .args(["-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", class])
        .args(args);
    command
}

/// How long a Curator program's JVM may take to start, connect and answer.
pub const JVM_LIMIT: Duration = Duration::from_secs(60);

/// A Curator program from `tests/curator` that reports in lines
/// (`held <millis>`, `leading <millis>`, `timeout`, ...) and gives up what it
/// holds when a line arrives on its standard input, printing
/// `released <millis>` with the time just before; killed when dropped.
#[derive(Debug)]
pub struct CuratorProgram {
    java: crate::process::NativeCommand,
    stdin: Option<tokio::process::ChildStdin>,
    what: String,
}

impl CuratorProgram {
    /// Runs `class` with `args`; `what` names it in failures.
    pub async fn start(class: &str, args: &[&str], what: impl Into<String>) -> Self {
        let mut command = curator_command(class, args).await;
        command.stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
        let mut java = crate::process::NativeCommand::spawn(command);
        let stdin = java.child.stdin.take();
        Self { java, stdin, what: what.into() }
    }

    /// Its next line; fails the test when none comes within [`JVM_LIMIT`].
    pub async fn line(&mut self) -> String {
        match tokio::time::timeout(JVM_LIMIT, self.java.next_line()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("{}: ended without a word", self.what),
            Err(_) => panic!("{}: no answer within {JVM_LIMIT:?}", self.what),
        }
    }

    /// The time (its clock, in ms) its next line reports after `word`
    /// (`held`, `leading`); fails the test when the line says anything else.
    pub async fn reported(&mut self, word: &str) -> u128 {
        let line = self.line().await;
        millis_after(&line, word).unwrap_or_else(|| panic!("{}: said {line:?}, expected {word:?}", self.what))
    }

    /// Gives up what it holds; returns the time (its clock) just before,
    /// after it exited successfully.
    pub async fn release(mut self) -> u128 {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stdin, b"release\n").await;
        }
        let released = self.reported("released").await;
        self.finish().await;
        released
    }

    /// Waits for it to exit; fails the test unless it exited with `code`
    /// (0 for success, 3 for Curator's timeout).
    pub async fn exited_with(mut self, code: i32) {
        let status = tokio::time::timeout(JVM_LIMIT, self.java.child.wait()).await;
        assert!(matches!(&status, Ok(Ok(s)) if s.code() == Some(code)), "{} exited with {status:?}", self.what);
    }

    async fn finish(self) {
        self.exited_with(0).await;
    }
}

/// The number after `word ` in `line`.
fn millis_after(line: &str, word: &str) -> Option<u128> {
    line.strip_prefix(word)?.trim().parse().ok()
}

/// The wall clock in ms, to compare with a Curator program's reports.
pub fn millis_now() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}
