//! The distlock contract: one [`DistributedLock`] trait every backend
//! implements, the types it speaks in, and the machinery every backend shares.
//!
//! * [`LockKey`] validates keys once, so every backend rejects the same inputs.
//! * [`FencingToken`] strictly increases across grants of one key.
//! * [`Locks`] is the client applications share between tasks; it hands out
//!   [`LockGuard`]s that renew in the background and report loss through
//!   [`LockGuard::lost`], by the service's word or by their own clock.
//! * [`MemoryLock`] is the in-memory reference backend.
//! * [`metrics`] names the metrics and `tracing` spans every client reports,
//!   whatever the backend.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lock_core::LockError> {
//! use std::time::Duration;
//! use lock_core::{Locks, MemoryLock};
//!
//! let locks = Locks::new(MemoryLock::new());
//! let guard = locks.lock("jobs/nightly").ttl(Duration::from_secs(15)).acquire().await?;
//! let token = guard.token(); // send with every write the lock protects
//! # let _ = token;
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```

mod backend;
mod capabilities;
mod client;
mod error;
mod guard;
mod key;
mod lease;
mod local;
mod memory;
pub mod metrics;
mod mode;
mod observe;
mod options;
mod renewal;
mod session_slot;
mod timeouts;
mod token;
mod unreachable;

pub use backend::{DistributedLock, LeaderStream, deadline_passed};
pub use capabilities::Capabilities;
pub use client::{LockRequest, Locks};
pub use error::{BoxError, LockError, LostReason};
pub use guard::LockGuard;
pub use key::{KeyError, LockKey, MAX_KEY_BYTES};
pub use lease::{Lease, LockInfo, LossSignal};
pub use memory::{MemoryLock, MemoryStore};
pub use mode::LockMode;
pub use observe::{LeaderIdentity, leader_identity};
pub use options::{LockOptions, MAX_OWNER_BYTES, MAX_VALUE_BYTES, default_owner};
pub use renewal::SharedRenewal;
pub use session_slot::{ClientSession, SessionSlot};
pub use timeouts::ClientTimeouts;
pub use token::FencingToken;
pub use unreachable::ConnectFailure;
