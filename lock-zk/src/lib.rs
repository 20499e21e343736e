//! The ZooKeeper backend of distlock.
//!
//! [`ZkLock`] implements [`DistributedLock`](lock_core::DistributedLock) on
//! ZooKeeper with the node layout of Apache Curator's `InterProcessMutex`,
//! so a Java service using Curator and a Rust service using distlock exclude
//! each other on the same lock path; see [`lock_path`] for how a key maps to
//! it. Contender nodes carry a GUID, so a create whose reply was lost is found
//! again and deleted rather than orphaned.
//!
//! * **One session per client**, shared by all its locks; the lock TTL is the
//!   negotiated session timeout. When ZooKeeper expires the session, every
//!   guard of the client reports lost and the next acquisition opens a new
//!   session. While only disconnected, guards keep their locks (Curator's
//!   SUSPENDED) until the guard's own clock gives them up.
//! * **Fenced** by the holder node's `czxid`, which increases across the
//!   whole ensemble, also when a lock directory is re-created.
//! * **Safe release**: only our own node is deleted; its deletion by anyone
//!   else is reported as loss at once through a node watch.

mod attempt;
mod client;
mod config;
mod error;
mod layout;
mod lock;

pub use config::{DEFAULT_HOSTS, HOSTS_ENV, ZkConfig};
pub use layout::{escaped_prefix, lock_path};
pub use lock::ZkLock;

/// The backend's name in errors and traces.
pub const BACKEND: &str = "zk";
