//! distlock: distributed locks with fencing tokens and pluggable backends.
//!
//! This facade re-exports the contract from `lock-core`, and each backend
//! enabled by its Cargo feature: `etcd` ([`etcd`]).
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

pub use lock_core::*;

/// The etcd backend (feature `etcd`).
#[cfg(feature = "etcd")]
pub use lock_etcd as etcd;

/// Compiles and runs the examples in README.md as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
