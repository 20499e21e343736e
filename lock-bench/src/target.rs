//! The backends under test: how to make a client, how to measure one raw
//! round trip of the service with the same client crate, and how to count the
//! requests the service receives.

use std::time::Duration;

use lock_core::{LockError, Locks, MemoryStore};
#[cfg(any(feature = "etcd", feature = "zk"))]
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// One backend to benchmark.
pub enum Target {
    /// The in-memory reference backend (its raw round trip is an `inspect`).
    Memory(MemoryStore),
    /// The file backend in this directory (its raw round trip is a small
    /// write and `fdatasync`, what each grant costs to persist its token).
    File(std::path::PathBuf),
    /// etcd at these endpoints.
    #[cfg(feature = "etcd")]
    Etcd {
        /// Client endpoints.
        endpoints: Vec<String>,
        /// Lease TTL of the benchmark's clients.
        ttl: Duration,
    },
    /// ZooKeeper at these hosts (its raw round trip is an `exists`).
    #[cfg(feature = "zk")]
    Zk {
        /// `host:port[,host:port...]`.
        hosts: String,
        /// Session timeout of the benchmark's clients.
        ttl: Duration,
    },
    /// Consul at this agent (its raw round trip is a KV put through the
    /// `rs-consul` client inside a Consul backend client of its own).
    #[cfg(feature = "consul")]
    Consul {
        /// `http://host:port`.
        address: String,
        /// Session TTL of the benchmark's clients.
        ttl: Duration,
    },
}

impl Target {
    /// The target named `name` (`mem`, `file`, `etcd`, `zk` or `consul`, the
    /// last three when built in), with `ttl` for its leases.
    pub fn named(name: &str, ttl: Duration) -> Result<Self, String> {
        match name {
            "mem" | "memory" => Ok(Self::Memory(MemoryStore::new())),
            "file" => Ok(Self::File(std::env::temp_dir().join(format!("distlock-bench-{}", std::process::id())))),
            #[cfg(feature = "etcd")]
            "etcd" => Ok(Self::Etcd { endpoints: lock_etcd::EtcdConfig::from_env().endpoints().to_vec(), ttl }),
            #[cfg(feature = "zk")]
            "zk" => Ok(Self::Zk { hosts: lock_zk::ZkConfig::from_env().hosts_value().to_owned(), ttl }),
            #[cfg(feature = "consul")]
            "consul" => {
                Ok(Self::Consul { address: lock_consul::ConsulConfig::from_env().address_value().to_owned(), ttl })
            }
            other => Err(format!("unknown or disabled backend {other:?}")),
        }
    }

    /// The short name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Memory(_) => "mem",
            Self::File(_) => "file",
            #[cfg(feature = "etcd")]
            Self::Etcd { .. } => "etcd",
            #[cfg(feature = "zk")]
            Self::Zk { .. } => "zk",
            #[cfg(feature = "consul")]
            Self::Consul { .. } => "consul",
        }
    }

    /// The server's `host:port` (the first one of a cluster), for other
    /// clients of the same server; none for the memory and file backends.
    pub fn address(&self) -> Option<String> {
        let strip = |url: &str| url.trim_start_matches("http://").trim_start_matches("https://").to_owned();
        match self {
            Self::Memory(_) | Self::File(_) => None,
            #[cfg(feature = "etcd")]
            Self::Etcd { endpoints, .. } => endpoints.first().map(|endpoint| strip(endpoint)),
            #[cfg(feature = "zk")]
            Self::Zk { hosts, .. } => {
                hosts.split(',').next().map(|host| host.split('/').next().unwrap_or(host).to_owned())
            }
            #[cfg(feature = "consul")]
            Self::Consul { address, .. } => Some(strip(address)),
        }
    }

    /// A new independent client.
    pub async fn client(&self) -> Result<Locks, LockError> {
        match self {
            Self::Memory(store) => Ok(Locks::new(store.client())),
            Self::File(dir) => Ok(Locks::new(lock_file::FileLock::new(dir)?)),
            #[cfg(feature = "etcd")]
            Self::Etcd { endpoints, ttl } => {
                let config =
                    lock_etcd::EtcdConfig::new(endpoints.iter().cloned()).namespace("distlock-bench/").lease_ttl(*ttl);
                Ok(Locks::new(lock_etcd::EtcdLock::connect(config).await?))
            }
            #[cfg(feature = "zk")]
            Self::Zk { hosts, ttl } => {
                let config = lock_zk::ZkConfig::new(hosts.clone()).base_path("/distlock-bench").session_timeout(*ttl);
                Ok(Locks::new(lock_zk::ZkLock::connect(config).await?))
            }
            #[cfg(feature = "consul")]
            Self::Consul { .. } => Ok(Locks::new(self.consul_client().await?)),
        }
    }

    #[cfg(feature = "consul")]
    async fn consul_client(&self) -> Result<lock_consul::ConsulLock, LockError> {
        let Self::Consul { address, ttl } = self else {
            return Err(LockError::InvalidConfig { backend: "bench", message: "not a Consul target".to_owned() });
        };
        let config = lock_consul::ConsulConfig::new(address.clone()).prefix("distlock-bench/").session_ttl(*ttl);
        lock_consul::ConsulLock::connect(config).await
    }

    /// A client of its own for raw round trips (see [`RawClient`]).
    pub async fn raw_client(&self) -> Result<RawClient, String> {
        Ok(match self {
            Self::Memory(store) => RawClient::Memory(Locks::new(store.client())),
            Self::File(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                RawClient::File(std::fs::File::create(dir.join("raw")).map_err(|e| e.to_string())?)
            }
            #[cfg(feature = "etcd")]
            Self::Etcd { endpoints, .. } => RawClient::Etcd(Box::new(
                etcd_client::Client::connect(endpoints, None).await.map_err(|e| e.to_string())?,
            )),
            #[cfg(feature = "zk")]
            Self::Zk { hosts, .. } => {
                RawClient::Zk(zookeeper_client::Client::connect(hosts).await.map_err(|e| e.to_string())?)
            }
            #[cfg(feature = "consul")]
            Self::Consul { .. } => RawClient::Consul(Box::new(self.consul_client().await.map_err(|e| e.to_string())?)),
        })
    }

    /// Measures `count` raw round trips back to back.
    pub async fn raw_round_trips(&self, count: usize) -> Result<crate::stats::Samples, String> {
        let mut raw = self.raw_client().await?;
        let mut samples = crate::stats::Samples::default();
        for _ in 0..count {
            samples.push(raw.round_trip().await?);
        }
        Ok(samples)
    }

    /// How many requests the service has received in all, where it exposes
    /// that (etcd's `/metrics`, ZooKeeper's `mntr`); for Consul, the HTTP
    /// requests this process's Consul clients sent.
    pub async fn server_requests(&self) -> Option<f64> {
        match self {
            Self::Memory(_) | Self::File(_) => None,
            #[cfg(feature = "etcd")]
            Self::Etcd { endpoints, .. } => {
                let host = endpoints.first()?.trim_start_matches("http://").to_owned();
                let mut stream = tokio::net::TcpStream::connect(&host).await.ok()?;
                let request = format!("GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n");
                stream.write_all(request.as_bytes()).await.ok()?;
                let mut body = String::new();
                stream.read_to_string(&mut body).await.ok()?;
                Some(
                    body.lines()
                        .filter(|line| line.starts_with("grpc_server_msg_received_total"))
                        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum(),
                )
            }
            // ZooKeeper's `mntr` counts every packet it received.
            #[cfg(feature = "zk")]
            Self::Zk { hosts, .. } => {
                let host = hosts.split(',').next()?;
                let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
                stream.write_all(b"mntr").await.ok()?;
                let mut body = String::new();
                stream.read_to_string(&mut body).await.ok()?;
                body.lines().find_map(|line| line.strip_prefix("zk_packets_received")?.trim().parse().ok())
            }
            #[cfg(feature = "consul")]
            #[allow(clippy::cast_precision_loss)] // counts far below 2^52
            Self::Consul { .. } => Some(lock_consul::requests_sent() as f64),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Self::File(dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One client of a target's service, for its raw round trip: an etcd `put`,
/// a ZooKeeper `exists`, a Consul KV `put`, a 32-byte file write and
/// `fdatasync`, a memory `inspect`.
pub enum RawClient {
    /// The memory store's client.
    Memory(Locks),
    /// The file written and synced.
    File(std::fs::File),
    /// An etcd client of its own.
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::Client>),
    /// A ZooKeeper client of its own.
    #[cfg(feature = "zk")]
    Zk(zookeeper_client::Client),
    /// A Consul backend client of its own (its session too), for its
    /// `rs-consul` client.
    #[cfg(feature = "consul")]
    Consul(Box<lock_consul::ConsulLock>),
}

impl RawClient {
    /// One raw round trip, timed.
    pub async fn round_trip(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        match self {
            Self::Memory(locks) => {
                let _ = locks.inspect("bench/raw").await.map_err(|e| e.to_string())?;
            }
            Self::File(file) => {
                use std::io::Write;
                file.write_all(b"0123456789abcdef0123456789abcdef").map_err(|e| e.to_string())?;
                file.sync_data().map_err(|e| e.to_string())?;
            }
            #[cfg(feature = "etcd")]
            Self::Etcd(client) => {
                let _ = client.put("distlock-bench/raw", "x", None).await.map_err(|e| e.to_string())?;
            }
            #[cfg(feature = "zk")]
            Self::Zk(client) => {
                let _ = client.check_stat("/distlock-bench").await.map_err(|e| e.to_string())?;
            }
            #[cfg(feature = "consul")]
            Self::Consul(lock) => {
                let request = rs_consul::CreateOrUpdateKeyRequest { key: "distlock-bench/raw", ..Default::default() };
                let _ = lock.consul().create_or_update_key(request, b"x".to_vec()).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(started.elapsed())
    }
}
