//! distlock: distributed locks with fencing tokens and pluggable backends.
//!
//! This facade re-exports the contract from `lock-core`; backends are added
//! by Cargo features as they land.
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

/// Compiles and runs the examples in README.md as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
