//! distlock: distributed locks with fencing tokens and pluggable backends.
//!
//! This facade re-exports the contract from `lock-core`, the always-built
//! backends (in-memory, and [`mod@file`] for one machine with no server), each
//! server backend enabled by its Cargo feature (`etcd`, `zk`, `consul`), and
//! [`connect`], which picks a backend at run time from a URL.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), distlock::LockError> {
//! use distlock::{Locks, MemoryLock};
//!
//! let locks = Locks::new(MemoryLock::new());
//! let guard = locks.lock("deploy").acquire().await?;
//! assert!(!guard.is_lost());
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```

mod connect;

pub use connect::{connect, connect_with_ttl};
pub use lock_core::*;

/// The local file backend, always built.
pub use lock_file as file;

/// The etcd backend (feature `etcd`).
#[cfg(feature = "etcd")]
pub use lock_etcd as etcd;

/// The ZooKeeper backend (feature `zk`).
#[cfg(feature = "zk")]
pub use lock_zk as zk;

/// The Consul backend (feature `consul`).
#[cfg(feature = "consul")]
pub use lock_consul as consul;

/// Compiles and runs the examples in README.md as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
