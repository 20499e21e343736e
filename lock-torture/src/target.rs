//! The backend under campaign: how a worker reaches it (through a proxy of
//! its own for the server backends), how the campaign inspects it afterwards,
//! and which server process it may pause.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use conformance_tests::Harness;
use conformance_tests::proxy::StallProxy;

/// One backend and its service.
pub struct Target {
    /// `file`, `etcd`, `zk` or `consul`.
    pub backend: String,
    /// What the campaign inspects for leftovers, with the suite's namespace.
    pub harness: Arc<dyn Harness>,
    upstream: Option<SocketAddr>,
    file_dir: Option<PathBuf>,
    ttl: Duration,
}

impl Target {
    /// The target for `backend`, with locks of `ttl`.
    ///
    /// # Errors
    /// For an unknown backend or an unusable address.
    pub fn new(backend: &str, ttl: Duration) -> Result<Self, String> {
        let address = |text: &str| -> Result<Option<SocketAddr>, String> {
            let host_port = text.trim_start_matches("http://").split([',', '/']).next().unwrap_or_default();
            host_port
                .parse()
                .map(Some)
                .map_err(|e| format!("the campaign needs an ip:port endpoint, got {text:?}: {e}"))
        };
        let (harness, upstream, file_dir): (Arc<dyn Harness>, _, _) = match backend {
            "file" => {
                let harness = conformance_tests::file::FileHarness::new();
                let dir = harness.dir().to_path_buf();
                (Arc::new(harness), None, Some(dir))
            }
            "etcd" => {
                let config = lock_etcd::EtcdConfig::from_env();
                let first = config.endpoints().first().cloned().unwrap_or_default();
                (Arc::new(conformance_tests::etcd::EtcdHarness::from_env()), address(&first)?, None)
            }
            "zk" => {
                let hosts = lock_zk::ZkConfig::from_env().hosts_value().to_owned();
                (Arc::new(conformance_tests::zk::ZkHarness::from_env()), address(&hosts)?, None)
            }
            "consul" => {
                let config = lock_consul::ConsulConfig::from_env();
                (Arc::new(conformance_tests::consul::ConsulHarness::from_env()), address(config.address_value())?, None)
            }
            other => return Err(format!("unknown backend {other:?}: file, etcd, zk or consul")),
        };
        Ok(Self { backend: backend.to_owned(), harness, upstream, file_dir, ttl })
    }

    /// A proxy for one worker, for the server backends.
    ///
    /// # Errors
    /// When the proxy cannot listen.
    pub async fn proxy(&self) -> Result<Option<StallProxy>, String> {
        match self.upstream {
            Some(upstream) => StallProxy::start(upstream).await.map(Some).map_err(|e| format!("proxy: {e}")),
            None => Ok(None),
        }
    }

    /// The URL a worker uses, through `proxy` where there is one; keys live
    /// in the conformance suite's namespace so its harness can count them.
    pub fn url(&self, proxy: Option<&StallProxy>) -> String {
        let via = proxy.map(|p| p.address().to_string()).unwrap_or_default();
        match self.backend.as_str() {
            "file" => format!("file://{}", self.file_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default()),
            "etcd" => format!("etcd://{via}/{}", conformance_tests::etcd::NAMESPACE),
            "zk" => format!("zk://{via}?base={}", conformance_tests::zk::BASE),
            // A short lock delay keeps recovery after a lost session quick.
            _ => format!("consul://{via}/{}?lock_delay=1s", conformance_tests::consul::PREFIX),
        }
    }

    /// The lock TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The PID of the service process `scripts/services` started, if any:
    /// the only server process the campaign may pause.
    pub fn server_pid(&self) -> Option<i32> {
        let (dir, name) = match self.backend.as_str() {
            "etcd" => ("etcd", "e0"),
            "zk" => ("zk", "z0"),
            "consul" => ("consul", "c0"),
            _ => return None,
        };
        let file = conformance_tests::services_dir().join("run").join(dir).join(format!("{name}.pid"));
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }
}
