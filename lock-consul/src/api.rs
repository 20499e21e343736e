//! The Consul HTTP calls the lock needs, on one pooled hyper client shared
//! with `rs-consul`.
//!
//! `rs-consul` (exposed as [`ConsulLock::consul`](crate::ConsulLock::consul))
//! covers plain KV and catalog calls; what the lock needs beyond it is added
//! here with typed responses: sessions (create, renew, destroy, blocking
//! info), blocking KV reads that keep `X-Consul-Index` on a 404 and return
//! raw values, check-and-set deletes with 64-bit indexes, and transactions
//! (which return the `ModifyIndex` of a write).

use std::convert::Infallible;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rs_consul::{Consul, ConsulBuilder, HttpsClient};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

use crate::ConsulConfig;
use crate::layout::url_path;

/// What went wrong talking to Consul.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request could not be sent or its answer not read.
    #[error("{what}: {source}")]
    Transport {
        /// The call.
        what: &'static str,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer within the limit.
    #[error("{what}: no answer within {limit:?}")]
    TimedOut {
        /// The call.
        what: &'static str,
        /// The limit.
        limit: Duration,
    },
    /// Consul answered with an error status.
    #[error("{what}: Consul answered {status}: {body}")]
    Status {
        /// The call.
        what: &'static str,
        /// The HTTP status.
        status: StatusCode,
        /// Consul's message.
        body: String,
    },
    /// Consul's answer was not what its API documents.
    #[error("{what}: unexpected answer: {message}")]
    Decode {
        /// The call.
        what: &'static str,
        /// What did not parse.
        message: String,
    },
    /// The TLS setup failed (CA file unreadable or invalid).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Keys kept changing under a check-and-set write; later may succeed.
    #[error("{what}: the keys kept changing; gave up after {attempts} attempts")]
    Contended {
        /// The call.
        what: &'static str,
        /// How many writes were tried.
        attempts: u32,
    },
}

impl ApiError {
    /// Whether retrying later may succeed (no answer, or a server-side 5xx
    /// such as "No cluster leader").
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::TimedOut { .. } | Self::Contended { .. } => true,
            Self::Status { status, .. } => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
            Self::Decode { .. } | Self::Tls(_) => false,
        }
    }
}

/// One KV entry as Consul returns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KvEntry {
    #[serde(default)]
    pub(crate) flags: u64,
    #[serde(default)]
    pub(crate) value: Option<String>,
    #[serde(default)]
    pub(crate) session: Option<String>,
    /// The raft index of the key's creation; immutable while it exists.
    #[serde(default)]
    pub(crate) create_index: u64,
    /// How many times a session acquired the key since it was created
    /// (1 for a key a lock created; reset by plain writes).
    #[serde(default)]
    pub(crate) lock_index: u64,
    pub(crate) modify_index: u64,
}

impl KvEntry {
    /// The session holding the key, if any.
    pub(crate) fn holder(&self) -> Option<&str> {
        self.session.as_deref().filter(|s| !s.is_empty())
    }

    /// The decoded value (empty when none).
    pub(crate) fn value_bytes(&self) -> Vec<u8> {
        self.value.as_deref().and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok()).unwrap_or_default()
    }
}

/// A KV entry with its key, as prefix reads return them.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KeyedEntry {
    pub(crate) key: String,
    #[serde(flatten)]
    pub(crate) entry: KvEntry,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SessionEntry {
    #[serde(rename = "ID")]
    id: String,
}

/// A KV operation inside a transaction.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TxnKv {
    verb: &'static str,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
}

impl TxnKv {
    fn bare(verb: &'static str, key: &str) -> Self {
        Self { verb, key: key.to_owned(), value: None, flags: None, index: None, session: None }
    }

    fn write(verb: &'static str, key: &str, value: &[u8], flags: u64) -> Self {
        let value = Some(base64::engine::general_purpose::STANDARD.encode(value));
        Self { value, flags: Some(flags), ..Self::bare(verb, key) }
    }

    /// Fails the transaction when `key` exists.
    pub(crate) fn check_not_exists(key: &str) -> Self {
        Self::bare("check-not-exists", key)
    }

    /// Fails the transaction unless `key`'s `ModifyIndex` is `index`.
    pub(crate) fn check_index(key: &str, index: u64) -> Self {
        Self { index: Some(index), ..Self::bare("check-index", key) }
    }

    /// Fails the transaction unless `key` is locked by `session`.
    pub(crate) fn check_session(key: &str, session: &str) -> Self {
        Self { session: Some(session.to_owned()), ..Self::bare("check-session", key) }
    }

    /// Locks `key` with `session`, writing `value` and `flags`.
    pub(crate) fn lock(key: &str, value: &[u8], flags: u64, session: &str) -> Self {
        Self { session: Some(session.to_owned()), ..Self::write("lock", key, value, flags) }
    }

    /// Unlocks `key`, locked by `session`, writing `value` and `flags`.
    pub(crate) fn unlock(key: &str, value: &[u8], flags: u64, session: &str) -> Self {
        Self { session: Some(session.to_owned()), ..Self::write("unlock", key, value, flags) }
    }

    /// Writes `key` without touching its lock (a lock delay does not apply).
    pub(crate) fn set(key: &str, value: &[u8], flags: u64) -> Self {
        Self::write("set", key, value, flags)
    }

    /// Writes `key` if its `ModifyIndex` is still `index` (0: if absent),
    /// keeping its lock.
    pub(crate) fn cas(key: &str, value: &[u8], flags: u64, index: u64) -> Self {
        Self { index: Some(index), ..Self::write("cas", key, value, flags) }
    }

    /// Deletes `key` (nothing when absent).
    pub(crate) fn delete(key: &str) -> Self {
        Self::bare("delete", key)
    }

    /// Deletes `key` if its `ModifyIndex` is still `index`.
    pub(crate) fn delete_cas(key: &str, index: u64) -> Self {
        Self { index: Some(index), ..Self::bare("delete-cas", key) }
    }

    /// Returns every key under `prefix`, as the transaction left them.
    pub(crate) fn get_tree(prefix: &str) -> Self {
        Self::bare("get-tree", prefix)
    }
}

#[derive(Serialize)]
struct TxnOp {
    #[serde(rename = "KV")]
    kv: TxnKv,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnReply {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: Option<KeyedEntry>,
}

/// Why Consul rolled a transaction back.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TxnError {
    /// The operation that failed.
    pub(crate) op_index: usize,
    /// Consul's description.
    pub(crate) what: String,
}

/// A transaction's outcome.
#[derive(Debug)]
pub(crate) enum TxnOutcome {
    /// Applied; the entries of the operations that return one (writes,
    /// index and session checks, trees; not existence checks or deletes),
    /// in operation order. Writes return no value.
    Applied(Vec<KeyedEntry>),
    /// Rolled back.
    RolledBack(Vec<TxnError>),
}

/// A reply: status, `X-Consul-Index`, body.
struct Reply {
    status: StatusCode,
    index: Option<u64>,
    body: Bytes,
}

/// The HTTP side of one client: the pooled connection, `rs-consul` on it,
/// and the calls `rs-consul` lacks.
#[derive(Clone)]
pub(crate) struct Api {
    http: HttpsClient,
    consul: std::sync::Arc<Consul>,
    address: String,
    token: Option<String>,
    datacenter: Option<String>,
    request_timeout: Duration,
    /// Bounds the short (non-blocking) requests in flight, so a burst of
    /// acquisitions queues here instead of opening a connection each.
    short_requests: std::sync::Arc<tokio::sync::Semaphore>,
}

/// How many short requests one client has in flight at most, besides its
/// session renewal (which never waits behind them). Consul limits the
/// connections of one client address (200 by default), and each request in
/// flight takes one.
pub const MAX_CONCURRENT_REQUESTS: usize = 32;

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("address", &self.address).field("datacenter", &self.datacenter).finish()
    }
}

/// HTTP requests sent by every client of this crate in this process.
static REQUESTS_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many HTTP requests the Consul clients of this process have sent in
/// all (blocking queries count once each), for diagnostics and benchmarks:
/// e.g. to check that keep-alive traffic does not grow with the locks held.
pub fn requests_sent() -> u64 {
    REQUESTS_SENT.load(std::sync::atomic::Ordering::Relaxed)
}

/// The longest wait asked of one blocking query; a waiter simply asks again.
pub(crate) const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(60);

impl Api {
    /// Builds the client; no request is sent.
    pub(crate) fn new(config: &ConsulConfig) -> Result<Self, ApiError> {
        let http = build_client(config)?;
        let consul_config = rs_consul::Config {
            address: config.address_value().to_owned(),
            token: config.token_value().map(str::to_owned),
            ..Default::default()
        };
        let consul = ConsulBuilder::new(consul_config).with_https_client(http.clone()).build();
        Ok(Self {
            http,
            consul: std::sync::Arc::new(consul),
            address: config.address_value().to_owned(),
            token: config.token_value().map(str::to_owned),
            datacenter: config.datacenter_value().map(str::to_owned),
            request_timeout: config.request_timeout_value(),
            short_requests: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS)),
        })
    }

    /// The `rs-consul` client on the same connection pool.
    pub(crate) fn consul(&self) -> &Consul {
        &self.consul
    }

    async fn send(
        &self,
        what: &'static str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<Reply, ApiError> {
        // A blocking query is bounded by its callers (waiters, watches).
        let queued = limit <= self.request_timeout;
        self.exchange(what, method, path, body, limit, queued).await
    }

    /// Sends one request; `queued` requests wait for one of the
    /// [`MAX_CONCURRENT_REQUESTS`] places first.
    async fn exchange(
        &self,
        what: &'static str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
        queued: bool,
    ) -> Result<Reply, ApiError> {
        let mut uri = format!("{}{path}", self.address);
        if let Some(dc) = &self.datacenter {
            uri.push(if path.contains('?') { '&' } else { '?' });
            uri.push_str("dc=");
            uri.push_str(dc);
        }
        let mut request = hyper::Request::builder().method(method).uri(uri);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        let body: BoxBody<Bytes, Infallible> = match body {
            Some(bytes) => BoxBody::new(Full::new(Bytes::from(bytes))),
            None => BoxBody::new(Empty::new()),
        };
        let request = request.body(body).map_err(|e| ApiError::Transport { what, source: e.into() })?;
        let _permit = if queued { self.short_requests.acquire().await.ok() } else { None };
        REQUESTS_SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let round_trip = async {
            let response =
                self.http.request(request).await.map_err(|e| ApiError::Transport { what, source: e.into() })?;
            let status = response.status();
            let index = response
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body =
                response.into_body().collect().await.map_err(|e| ApiError::Transport { what, source: e.into() })?;
            Ok(Reply { status, index, body: body.to_bytes() })
        };
        match timeout(limit, round_trip).await {
            Ok(reply) => reply,
            Err(_) => Err(ApiError::TimedOut { what, limit }),
        }
    }

    fn fail(what: &'static str, reply: &Reply) -> ApiError {
        ApiError::Status { what, status: reply.status, body: String::from_utf8_lossy(&reply.body).trim().to_owned() }
    }

    fn decode<T: serde::de::DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, ApiError> {
        serde_json::from_slice(body).map_err(|e| ApiError::Decode { what, message: e.to_string() })
    }

    /// Creates a session with `ttl`, Behavior `delete` (a dead holder's keys
    /// go with it) and `lock_delay` (Consul's default if `None`).
    pub(crate) async fn create_session(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Option<Duration>,
    ) -> Result<String, ApiError> {
        let mut spec = serde_json::json!({
            "Name": name,
            "TTL": format!("{}ms", ttl.as_millis()),
            "Behavior": "delete",
        });
        if let Some(delay) = lock_delay {
            spec["LockDelay"] = serde_json::Value::String(format!("{}ms", delay.as_millis()));
        }
        let body = serde_json::to_vec(&spec)
            .map_err(|e| ApiError::Decode { what: "create session", message: e.to_string() })?;
        let reply =
            self.send("create session", Method::PUT, "/v1/session/create", Some(body), self.request_timeout).await?;
        if reply.status != StatusCode::OK {
            return Err(Self::fail("create session", &reply));
        }
        Ok(Self::decode::<SessionEntry>("create session", &reply.body)?.id)
    }

    /// Renews a session: `false` when Consul no longer knows it.
    pub(crate) async fn renew_session(&self, id: &str) -> Result<bool, ApiError> {
        let path = format!("/v1/session/renew/{id}");
        // Never behind a burst of lock writes: the renewal keeps every lock
        // of the client, and a session has at most one in flight.
        let reply = self.exchange("renew session", Method::PUT, &path, None, self.request_timeout, false).await?;
        match reply.status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(Self::fail("renew session", &reply)),
        }
    }

    /// Destroys a session, releasing (here: deleting) every key it holds.
    pub(crate) async fn destroy_session(&self, id: &str) -> Result<(), ApiError> {
        let path = format!("/v1/session/destroy/{id}");
        let reply = self.send("destroy session", Method::PUT, &path, None, self.request_timeout).await?;
        if reply.status != StatusCode::OK {
            return Err(Self::fail("destroy session", &reply));
        }
        Ok(())
    }

    /// Whether the session exists, as a blocking query from `index`: answers
    /// when the session changes or after `wait`, with the new index.
    pub(crate) async fn session_exists(&self, id: &str, index: u64, wait: Duration) -> Result<(bool, u64), ApiError> {
        let path = format!("/v1/session/info/{id}?index={index}&wait={}ms", wait.as_millis());
        let reply = self.send("watch session", Method::GET, &path, None, self.blocking_limit(wait)).await?;
        if reply.status != StatusCode::OK {
            return Err(Self::fail("watch session", &reply));
        }
        let found: Option<Vec<SessionEntry>> = Self::decode("watch session", &reply.body)?;
        Ok((found.is_some_and(|s| s.iter().any(|s| s.id == id)), next_index(index, reply.index)))
    }

    /// Reads one key; with `index` > 0 a blocking query that answers when the
    /// key changes or after `wait`. Returns the entry and the index to block on next.
    pub(crate) async fn read_key(
        &self,
        key: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Option<KvEntry>, u64), ApiError> {
        let mut path = format!("/v1/kv/{}", url_path(key));
        let limit = if index > 0 {
            path.push_str(&format!("?index={index}&wait={}ms", wait.as_millis()));
            self.blocking_limit(wait)
        } else {
            self.request_timeout
        };
        let reply = self.send("read key", Method::GET, &path, None, limit).await?;
        let next = next_index(index, reply.index);
        match reply.status {
            StatusCode::OK => {
                let entries: Vec<KvEntry> = Self::decode("read key", &reply.body)?;
                Ok((entries.into_iter().next(), next))
            }
            StatusCode::NOT_FOUND => Ok((None, next)),
            _ => Err(Self::fail("read key", &reply)),
        }
    }

    /// Reads every key under `prefix`, blocking from `index` like [`Self::read_key`].
    pub(crate) async fn read_prefix(
        &self,
        prefix: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<KeyedEntry>, u64), ApiError> {
        let mut path = format!("/v1/kv/{}?recurse", url_path(prefix));
        let limit = if index > 0 {
            path.push_str(&format!("&index={index}&wait={}ms", wait.as_millis()));
            self.blocking_limit(wait)
        } else {
            self.request_timeout
        };
        let reply = self.send("read prefix", Method::GET, &path, None, limit).await?;
        let next = next_index(index, reply.index);
        match reply.status {
            StatusCode::OK => Ok((Self::decode("read prefix", &reply.body)?, next)),
            StatusCode::NOT_FOUND => Ok((Vec::new(), next)),
            _ => Err(Self::fail("read prefix", &reply)),
        }
    }

    /// Runs a transaction of KV operations.
    pub(crate) async fn txn(&self, operations: Vec<TxnKv>) -> Result<TxnOutcome, ApiError> {
        let ops: Vec<TxnOp> = operations.into_iter().map(|kv| TxnOp { kv }).collect();
        let body =
            serde_json::to_vec(&ops).map_err(|e| ApiError::Decode { what: "transaction", message: e.to_string() })?;
        let reply = self.send("transaction", Method::PUT, "/v1/txn", Some(body), self.request_timeout).await?;
        match reply.status {
            StatusCode::OK => {
                let parsed: TxnReply = Self::decode("transaction", &reply.body)?;
                Ok(TxnOutcome::Applied(parsed.results.unwrap_or_default().into_iter().filter_map(|r| r.kv).collect()))
            }
            StatusCode::CONFLICT => {
                let parsed: TxnReply = Self::decode("transaction", &reply.body)?;
                Ok(TxnOutcome::RolledBack(parsed.errors.unwrap_or_default()))
            }
            _ => Err(Self::fail("transaction", &reply)),
        }
    }

    /// Deletes `key` if its `ModifyIndex` is still `index`. (`rs-consul`'s
    /// delete takes the index as a `u32`, which raft indexes outgrow.)
    pub(crate) async fn delete_if_unchanged(&self, key: &str, index: u64) -> Result<bool, ApiError> {
        let path = format!("/v1/kv/{}?cas={index}", url_path(key));
        let reply = self.send("delete key", Method::DELETE, &path, None, self.request_timeout).await?;
        if reply.status != StatusCode::OK {
            return Err(Self::fail("delete key", &reply));
        }
        Self::decode("delete key", &reply.body)
    }

    /// How long a blocking query of `wait` may take: Consul adds up to
    /// wait/16 of jitter, then the answer travels.
    fn blocking_limit(&self, wait: Duration) -> Duration {
        wait + wait / 16 + self.request_timeout
    }
}

/// The index for the next blocking query: Consul's, reset to 1 when it goes
/// backwards or is missing (as Consul's documentation asks).
fn next_index(previous: u64, returned: Option<u64>) -> u64 {
    match returned {
        Some(index) if index >= previous && index > 0 => index,
        _ => 1,
    }
}

fn build_client(config: &ConsulConfig) -> Result<HttpsClient, ApiError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout_value()));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let tls = match config.ca_file_value() {
        Some(path) => builder.with_tls_config(tls_config(path)?),
        None => builder.with_webpki_roots(),
    };
    let connector = tls.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build(connector))
}

fn tls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, ApiError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| ApiError::Tls(format!("cannot read CA file {}: {e}", ca_file.display())))?;
    for certificate in certificates {
        let certificate =
            certificate.map_err(|e| ApiError::Tls(format!("bad certificate in {}: {e}", ca_file.display())))?;
        roots
            .add(certificate)
            .map_err(|e| ApiError::Tls(format!("unusable certificate in {}: {e}", ca_file.display())))?;
    }
    if roots.is_empty() {
        return Err(ApiError::Tls(format!("no certificate in CA file {}", ca_file.display())));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_index_never_goes_backwards_or_to_zero() {
        assert_eq!(next_index(5, Some(9)), 9);
        assert_eq!(next_index(9, Some(5)), 1);
        assert_eq!(next_index(0, Some(0)), 1);
        assert_eq!(next_index(3, None), 1);
    }

    #[test]
    fn entries_parse_as_consul_sends_them() {
        let body = br#"[{"LockIndex":1,"Key":"t/a","Flags":3304740253564472344,"Value":"aGk=","Session":"abc","CreateIndex":14,"ModifyIndex":15}]"#;
        let entries: Vec<KeyedEntry> = Api::decode("test", body).unwrap_or_else(|e| panic!("{e}"));
        let entry = &entries[0].entry;
        assert_eq!((entries[0].key.as_str(), entry.holder(), entry.modify_index), ("t/a", Some("abc"), 15));
        assert_eq!(entry.value_bytes(), b"hi");
        let rolled: TxnReply = Api::decode("test", br#"{"Results":null,"Errors":[{"OpIndex":1,"What":"x"}]}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rolled.errors.map(|e| e[0].op_index), Some(1));
    }
}
