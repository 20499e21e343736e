//! `connect(url)`: a backend chosen at run time by URL scheme.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use lock_core::{LockError, Locks, MemoryLock, MemoryStore};

/// Connects to the backend `url` names.
///
/// | URL | backend |
/// |---|---|
/// | `mem://` | a new in-memory store of this client's own |
/// | `mem://NAME` | the process-wide in-memory store `NAME`, shared by every `connect` to it |
/// | `file:///some/dir` | [`lock_file::FileLock`] in that directory |
/// | `etcd://host:2379[,host:2379...][/namespace/]?ttl=15s` | etcd (feature `etcd`); `etcds://` for TLS |
/// | `zk://host:2181[,host:2181...][/chroot]?session_timeout=10s` | ZooKeeper (feature `zk`) |
/// | `consul://host:8500[/prefix/]?ttl=15s` | Consul (feature `consul`); `consuls://` for HTTPS |
///
/// etcd parameters: `ttl` (lease TTL, whole seconds), `connect_timeout`,
/// `request_timeout` (durations like `15s`, `500ms`), `user` and `password`,
/// and for `etcds://` `ca`, `cert`, `key` (PEM file paths) and `domain`. The
/// path is the key namespace (default `distlock/`): `/app` and `/app/` both
/// mean `app/`, as for Consul.
///
/// ZooKeeper parameters: `session_timeout` (the locks' TTL), `base` (the path
/// lock directories live under, default `/distlock`), `connect_timeout`,
/// `request_timeout`, and `user` + `password` for digest authentication (lock
/// nodes then get an ACL only that identity may delete). The path is the chroot.
///
/// Consul parameters: `ttl` (the session TTL, which is the locks' TTL; a
/// stock Consul refuses less than 10 s), `lock_delay`, `token` (ACL token),
/// `dc` (datacenter), `connect_timeout`, `request_timeout`, and for
/// `consuls://` `ca` (a PEM file of trusted CAs). The path is the KV prefix
/// (default `distlock/`): `/app` and `/app/` both mean `app/`.
///
/// # Errors
/// [`LockError::InvalidConfig`] for a malformed URL, an unknown scheme or
/// parameter (naming which part is wrong), or a scheme whose feature is off
/// (naming the feature); otherwise what connecting to the backend returns.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), distlock::LockError> {
/// let locks = distlock::connect("mem://").await?;
/// let guard = locks.lock("jobs/nightly").acquire().await?;
/// guard.release().await?;
/// assert!(distlock::connect("nosuch://x").await.is_err());
/// # Ok(())
/// # }
/// ```
pub async fn connect(url: &str) -> Result<Locks, LockError> {
    connect_parsed(BackendUrl::parse(url)?).await
}

/// Like [`connect`], for a client whose locks should live `ttl` without
/// renewal. The backends whose locks all take the TTL of the client's lease
/// or session (etcd, ZooKeeper, Consul) get `ttl` as that TTL, unless the URL
/// sets one itself (`ttl`, or ZooKeeper's `session_timeout`); the backends
/// where each request chooses (`mem`, `file`) are connected as they are.
/// Either way, requests with `.ttl(ttl)` then fit
/// [`Capabilities::ttl_range`](lock_core::Capabilities).
///
/// # Errors
/// As [`connect`]; a TTL the backend cannot apply (etcd: whole seconds, at
/// least 2 s) is [`LockError::InvalidConfig`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), distlock::LockError> {
/// use std::time::Duration;
///
/// let ttl = Duration::from_secs(5);
/// let locks = distlock::connect_with_ttl("mem://", ttl).await?;
/// let guard = locks.lock("jobs/nightly").ttl(ttl).acquire().await?;
/// assert_eq!(guard.ttl(), ttl);
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
pub async fn connect_with_ttl(url: &str, ttl: Duration) -> Result<Locks, LockError> {
    let mut parsed = BackendUrl::parse(url)?;
    let client_ttl = matches!(parsed.scheme.as_str(), "etcd" | "etcds" | "zk" | "consul" | "consuls");
    let url_sets_ttl = parsed.params.iter().any(|(name, _)| name == "ttl" || name == "session_timeout");
    if client_ttl && !url_sets_ttl {
        parsed.params.push(("ttl".to_owned(), humantime::format_duration(ttl).to_string()));
    }
    connect_parsed(parsed).await
}

async fn connect_parsed(parsed: BackendUrl) -> Result<Locks, LockError> {
    match parsed.scheme.as_str() {
        "mem" => {
            parsed.no_params("mem")?;
            Ok(Locks::new(memory_client(&parsed.authority)))
        }
        "file" => {
            parsed.no_params("file")?;
            if !parsed.authority.is_empty() {
                return Err(invalid("file", format!("expected file:///absolute/dir, got host {:?}", parsed.authority)));
            }
            let dir = PathBuf::from(if parsed.path.is_empty() { "/" } else { parsed.path.as_str() });
            Ok(Locks::new(lock_file::FileLock::new(dir)?))
        }
        "etcd" | "etcds" => etcd(&parsed).await,
        "zk" => zk(&parsed).await,
        "consul" | "consuls" => consul(&parsed).await,
        other => Err(invalid("connect", format!("unknown scheme {other:?} (expected mem, file, etcd, zk or consul)"))),
    }
}

fn invalid(backend: &'static str, message: String) -> LockError {
    LockError::InvalidConfig { backend, message }
}

fn memory_client(name: &str) -> MemoryLock {
    if name.is_empty() {
        return MemoryLock::new();
    }
    static STORES: OnceLock<Mutex<HashMap<String, MemoryStore>>> = OnceLock::new();
    let mut stores = STORES.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
    stores.entry(name.to_owned()).or_default().client()
}

#[cfg(feature = "etcd")]
async fn etcd(url: &BackendUrl) -> Result<Locks, LockError> {
    let tls = url.scheme == "etcds";
    let http = if tls { "https" } else { "http" };
    if url.authority.is_empty() {
        return Err(invalid("etcd", "no host: expected etcd://host:port[,host:port...]".to_owned()));
    }
    let endpoints = url.authority.split(',').map(|host| format!("{http}://{host}"));
    let mut config = lock_etcd::EtcdConfig::new(endpoints);
    if let Some(namespace) = namespace_of(&url.path) {
        config = config.namespace(namespace);
    }
    let mut tls_options = lock_etcd::EtcdTls::default();
    let mut user = None;
    let mut password = None;
    for (name, value) in &url.params {
        match name.as_str() {
            "ttl" => config = config.lease_ttl(duration("etcd", name, value)?),
            "connect_timeout" => config = config.connect_timeout(duration("etcd", name, value)?),
            "request_timeout" => config = config.request_timeout(duration("etcd", name, value)?),
            "user" => user = Some(value.clone()),
            "password" => password = Some(value.clone()),
            "ca" if tls => tls_options.ca_file = Some(value.into()),
            "cert" if tls => tls_options.cert_file = Some(value.into()),
            "key" if tls => tls_options.key_file = Some(value.into()),
            "domain" if tls => tls_options.domain = Some(value.clone()),
            "ca" | "cert" | "key" | "domain" => {
                return Err(invalid("etcd", format!("parameter {name:?} needs etcds:// (TLS)")));
            }
            other => return Err(invalid("etcd", format!("unknown parameter {other:?}"))),
        }
    }
    match (user, password) {
        (Some(user), Some(password)) => config = config.user(user, password),
        (None, None) => {}
        _ => return Err(invalid("etcd", "user and password go together".to_owned())),
    }
    if tls {
        config = config.tls(tls_options);
    }
    Ok(Locks::new(lock_etcd::EtcdLock::connect(config).await?))
}

#[cfg(not(feature = "etcd"))]
async fn etcd(_: &BackendUrl) -> Result<Locks, LockError> {
    Err(invalid("etcd", "the etcd backend is not built in: enable the `etcd` feature of distlock".to_owned()))
}

#[cfg(feature = "zk")]
async fn zk(url: &BackendUrl) -> Result<Locks, LockError> {
    if url.authority.is_empty() {
        return Err(invalid("zk", "no host: expected zk://host:port[,host:port...][/chroot]".to_owned()));
    }
    let mut config = lock_zk::ZkConfig::new(format!("{}{}", url.authority, url.path.trim_end_matches('/')));
    let (mut user, mut password) = (None, None);
    for (name, value) in &url.params {
        match name.as_str() {
            "session_timeout" | "ttl" => config = config.session_timeout(duration("zk", name, value)?),
            "connect_timeout" => config = config.connect_timeout(duration("zk", name, value)?),
            "request_timeout" => config = config.request_timeout(duration("zk", name, value)?),
            "base" => config = config.base_path(value.clone()),
            "user" => user = Some(value.clone()),
            "password" => password = Some(value.clone()),
            other => return Err(invalid("zk", format!("unknown parameter {other:?}"))),
        }
    }
    match (user, password) {
        (Some(user), Some(password)) => config = config.digest(user, password),
        (None, None) => {}
        _ => return Err(invalid("zk", "user and password go together".to_owned())),
    }
    Ok(Locks::new(lock_zk::ZkLock::connect(config).await?))
}

#[cfg(not(feature = "zk"))]
async fn zk(_: &BackendUrl) -> Result<Locks, LockError> {
    Err(invalid("zk", "the ZooKeeper backend is not built in: enable the `zk` feature of distlock".to_owned()))
}

#[cfg(feature = "consul")]
async fn consul(url: &BackendUrl) -> Result<Locks, LockError> {
    let tls = url.scheme == "consuls";
    if url.authority.is_empty() || url.authority.contains(',') {
        return Err(invalid("consul", "expected one agent: consul://host:port[/prefix/]".to_owned()));
    }
    let mut config =
        lock_consul::ConsulConfig::new(format!("{}://{}", if tls { "https" } else { "http" }, url.authority));
    if let Some(prefix) = namespace_of(&url.path) {
        config = config.prefix(prefix);
    }
    if let Ok(token) = std::env::var(lock_consul::TOKEN_ENV)
        && !token.is_empty()
    {
        config = config.token(token);
    }
    for (name, value) in &url.params {
        match name.as_str() {
            "ttl" => config = config.session_ttl(duration("consul", name, value)?),
            "lock_delay" => config = config.lock_delay(duration("consul", name, value)?),
            "connect_timeout" => config = config.connect_timeout(duration("consul", name, value)?),
            "request_timeout" => config = config.request_timeout(duration("consul", name, value)?),
            "token" => config = config.token(value.clone()),
            "dc" => config = config.datacenter(value.clone()),
            "ca" if tls => config = config.ca_file(value),
            "ca" => return Err(invalid("consul", "parameter \"ca\" needs consuls:// (HTTPS)".to_owned())),
            other => return Err(invalid("consul", format!("unknown parameter {other:?}"))),
        }
    }
    Ok(Locks::new(lock_consul::ConsulLock::connect(config).await?))
}

#[cfg(not(feature = "consul"))]
async fn consul(_: &BackendUrl) -> Result<Locks, LockError> {
    Err(invalid("consul", "the Consul backend is not built in: enable the `consul` feature of distlock".to_owned()))
}

#[cfg_attr(not(any(feature = "etcd", feature = "zk", feature = "consul")), allow(dead_code))]
fn duration(backend: &'static str, name: &str, value: &str) -> Result<Duration, LockError> {
    humantime::parse_duration(value).map_err(|e| invalid(backend, format!("parameter {name}={value:?}: {e}")))
}

/// `scheme://authority/path?query`, split without interpreting the parts.
#[derive(Debug, PartialEq, Eq)]
struct BackendUrl {
    scheme: String,
    authority: String,
    path: String,
    params: Vec<(String, String)>,
}

impl BackendUrl {
    fn parse(url: &str) -> Result<Self, LockError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("connect", format!("{url:?} is not a URL: expected scheme://...")))?;
        if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(invalid("connect", format!("malformed scheme {scheme:?} in {url:?}")));
        }
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match location.find('/') {
            Some(slash) => location.split_at(slash),
            None => (location, ""),
        };
        let mut params = Vec::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if params.iter().any(|(seen, _)| *seen == name) {
                return Err(invalid("connect", format!("parameter {name:?} given twice")));
            }
            params.push((name.into_owned(), value.into_owned()));
        }
        Ok(Self { scheme: scheme.to_ascii_lowercase(), authority: authority.to_owned(), path: path.to_owned(), params })
    }

    fn no_params(&self, backend: &'static str) -> Result<(), LockError> {
        match self.params.first() {
            Some((name, _)) => Err(invalid(backend, format!("unknown parameter {name:?}"))),
            None => Ok(()),
        }
    }
}

/// The key namespace a URL path names, alike for etcd and Consul: `/app`
/// and `/app/` both put every key under `app/`; no path (or `/`) keeps the
/// backend's default.
#[cfg(any(feature = "etcd", feature = "consul"))]
fn namespace_of(path: &str) -> Option<String> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    (!trimmed.is_empty()).then(|| format!("{trimmed}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(feature = "etcd", feature = "consul"))]
    fn a_path_names_the_same_namespace_with_or_without_its_slash() {
        assert_eq!(namespace_of(""), None);
        assert_eq!(namespace_of("/"), None);
        assert_eq!(namespace_of("/app"), Some("app/".to_owned()));
        assert_eq!(namespace_of("/app/"), Some("app/".to_owned()));
        assert_eq!(namespace_of("/app/locks"), Some("app/locks/".to_owned()));
    }

    #[test]
    fn splits_every_part() {
        let url = BackendUrl::parse("etcd://a:2379,b:2379/app/locks/?ttl=15s&user=me").ok();
        assert_eq!(
            url,
            Some(BackendUrl {
                scheme: "etcd".into(),
                authority: "a:2379,b:2379".into(),
                path: "/app/locks/".into(),
                params: vec![("ttl".into(), "15s".into()), ("user".into(), "me".into())],
            })
        );
    }

    #[tokio::test]
    async fn errors_name_the_wrong_part() {
        let mut cases = vec![
            ("nourl", "not a URL"),
            ("nosuch://x", "unknown scheme"),
            ("mem://?x=1", "unknown parameter \\\"x\\\""),
            ("file://host/dir", "got host"),
            ("etcd://h:1?ttl=1s&ttl=2s", "given twice"),
        ];
        if cfg!(feature = "zk") {
            cases.extend([("zk://h:1?bogus=1", "unknown parameter"), ("zk://?ttl=1s", "no host")]);
        } else {
            cases.push(("zk://h:1", "enable the `zk` feature"));
        }
        if cfg!(feature = "consul") {
            cases.extend([
                ("consul://h:1?bogus=1", "unknown parameter"),
                ("consul://h:1?ttl=soon", "ttl"),
                ("consul://h:1?ca=x.pem", "consuls://"),
                ("consul://a:1,b:1", "one agent"),
                ("consul://h:1?ttl=100ms", "session TTL"),
            ]);
        } else {
            cases.push(("consul://h:1", "enable the `consul` feature"));
        }
        if cfg!(feature = "etcd") {
            cases.extend([
                ("etcd://h:1?bogus=1", "unknown parameter"),
                ("etcd://h:1?ttl=soon", "ttl"),
                ("etcd://h:1?user=me", "together"),
                ("etcd://h:1?ca=x.pem", "etcds://"),
                ("etcd://", "no host"),
            ]);
        } else {
            cases.push(("etcd://h:1", "enable the `etcd` feature"));
        }
        for (url, part) in cases {
            let error = connect(url).await.err().map(|e| format!("{e:?}")).unwrap_or_default();
            assert!(error.contains("InvalidConfig") && error.contains(part), "{url}: {error}");
        }
    }

    #[tokio::test]
    async fn named_memory_stores_are_shared() {
        let (a, b) = (connect("mem://shared").await, connect("mem://shared").await);
        let (Ok(a), Ok(b)) = (a, b) else { panic!("mem:// failed") };
        let held = a.lock("k").try_acquire().await.ok().flatten();
        assert!(held.is_some());
        assert!(matches!(b.lock("k").try_acquire().await, Ok(None)));
    }
}
