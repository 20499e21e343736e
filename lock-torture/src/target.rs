//! The backend under campaign: how a worker reaches it (through a proxy of
//! its own for a single server; every member directly for a cluster; one
//! shared store for the in-process memory backend), how the campaign
//! inspects it afterwards, and which server process it may pause or kill.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use conformance_tests::Harness;
use conformance_tests::cluster::{Cluster, Service};
use conformance_tests::proxy::StallProxy;
use lock_core::MemoryStore;

/// One backend and its service.
pub struct Target {
    /// `memory`, `file`, `etcd`, `zk` or `consul`.
    pub backend: String,
    /// The 3-member cluster the workers use, for a cluster campaign.
    pub cluster: Option<Cluster>,
    /// The memory backend's store, which its in-process workers share.
    pub store: Option<MemoryStore>,
    /// What the campaign inspects for leftovers, with the suite's namespace.
    pub harness: Arc<dyn Harness>,
    upstream: Option<SocketAddr>,
    file_dir: Option<PathBuf>,
    ttl: Duration,
}

impl Target {
    /// The target for `backend`, with locks of `ttl`; with `cluster`, its
    /// 3-member cluster (etcd, ZooKeeper, Consul).
    ///
    /// # Errors
    /// For an unknown backend, a backend without a cluster, or an unusable
    /// address.
    pub fn new(backend: &str, ttl: Duration, cluster: bool) -> Result<Self, String> {
        if cluster {
            return Self::cluster(backend, ttl);
        }
        let address = |text: &str| -> Result<Option<SocketAddr>, String> {
            let host_port = text.trim_start_matches("http://").split([',', '/']).next().unwrap_or_default();
            host_port
                .parse()
                .map(Some)
                .map_err(|e| format!("the campaign needs an ip:port endpoint, got {text:?}: {e}"))
        };
        let (harness, upstream, file_dir): (Arc<dyn Harness>, _, _) = match backend {
            "memory" => {
                let store = MemoryStore::new();
                let harness = Arc::new(conformance_tests::memory::MemoryHarness::with_store(store.clone()));
                return Ok(Self {
                    backend: backend.to_owned(),
                    cluster: None,
                    store: Some(store),
                    harness,
                    upstream: None,
                    file_dir: None,
                    ttl,
                });
            }
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
            other => return Err(format!("unknown backend {other:?}: memory, file, etcd, zk or consul")),
        };
        Ok(Self { backend: backend.to_owned(), cluster: None, store: None, harness, upstream, file_dir, ttl })
    }

    fn cluster(backend: &str, ttl: Duration) -> Result<Self, String> {
        let (cluster, harness): (Cluster, Arc<dyn Harness>) = match backend {
            "etcd" => {
                let cluster = Cluster::etcd();
                let endpoints = cluster.members.iter().map(|m| m.client.clone()).collect();
                (cluster, Arc::new(conformance_tests::etcd::EtcdHarness::with_endpoints(endpoints)))
            }
            "zk" => {
                let cluster = Cluster::zk();
                let harness = conformance_tests::zk::ZkHarness::with_hosts(&cluster.client_list());
                (cluster, Arc::new(harness))
            }
            "consul" => {
                let cluster = Cluster::consul();
                let first = cluster.members.first().map(|m| m.client.clone()).unwrap_or_default();
                (cluster, Arc::new(conformance_tests::consul::ConsulHarness::new(&first)))
            }
            other => return Err(format!("no cluster for {other:?}: etcd, zk or consul")),
        };
        Ok(Self {
            backend: backend.to_owned(),
            cluster: Some(cluster),
            store: None,
            harness,
            upstream: None,
            file_dir: None,
            ttl,
        })
    }

    /// The backend's name in tables: `etcd`, or `etcd cluster`.
    pub fn label(&self) -> String {
        if self.cluster.is_some() { format!("{} cluster", self.backend) } else { self.backend.clone() }
    }

    /// A proxy for one worker, for the server backends.
    ///
    /// # Errors
    /// When the proxy cannot listen.
    pub async fn proxy(&self) -> Result<Option<StallProxy>, String> {
        if self.cluster.is_some() {
            return Ok(None);
        }
        match self.upstream {
            Some(upstream) => StallProxy::start(upstream).await.map(Some).map_err(|e| format!("proxy: {e}")),
            None => Ok(None),
        }
    }

    /// The URL worker number `worker` uses, through `proxy` where there is
    /// one; keys live in the conformance suite's namespace so its harness can
    /// count them. In a cluster, etcd and ZooKeeper clients get every member,
    /// Consul clients one agent each, in turn, as services talk to the agent
    /// on their host.
    pub fn url(&self, proxy: Option<&StallProxy>, worker: usize) -> String {
        let via = match (&self.cluster, proxy) {
            (Some(cluster), _) if cluster.service == Service::Consul => cluster
                .members
                .get(worker % cluster.members.len().max(1))
                .map(|m| m.client.trim_start_matches("http://").to_owned())
                .unwrap_or_default(),
            (Some(cluster), _) => {
                cluster.members.iter().map(|m| m.client.trim_start_matches("http://")).collect::<Vec<_>>().join(",")
            }
            (None, proxy) => proxy.map(|p| p.address().to_string()).unwrap_or_default(),
        };
        match self.backend.as_str() {
            "memory" => "mem://".to_owned(),
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

    /// The PID of the service process `scripts/services` started, if any
    /// (in a cluster, the leader's): the only server process the campaign
    /// may pause.
    pub async fn server_pid(&self) -> Option<i32> {
        if let Some(cluster) = &self.cluster {
            return cluster.pid(cluster.leader().await?);
        }
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
