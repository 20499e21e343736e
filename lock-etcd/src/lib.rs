//! The etcd backend of distlock.
//!
//! [`EtcdLock`] implements [`DistributedLock`](lock_core::DistributedLock) on
//! etcd v3 with the recipe and key layout of etcd's own lock (Go's
//! `clientv3/concurrency.Mutex`, the server's Lock RPC, `etcdctl lock`), so a
//! Rust service using distlock and a Go service or a shell script using
//! `etcdctl lock` exclude each other on the same lock. See [`native_lock_name`]
//! for how a distlock key maps to the native lock name.
//!
//! Reader/writer locks ([`LockMode::Read`](lock_core::LockMode::Read) and
//! [`LockMode::Write`](lock_core::LockMode::Write)) live beside the mutex under
//! the same name, with the prefixes of etcd's `recipes.RWMutex`
//! (`{name}/read/...`, `{name}/write/...`): readers share the lock with each
//! other only, writers and mutex holders (ours, Go's, `etcdctl lock`) exclude
//! everyone, and a waiting writer holds back the readers that come after it.
//!
//! Counting semaphores ([`LockMode::Semaphore`](lock_core::LockMode::Semaphore))
//! queue with them under `{name}/semaphore/...`, each key's value naming the
//! limit: the first `limit` contenders hold while only semaphore contenders of
//! that limit are before them, so `etcdctl lock` and a semaphore of any limit
//! exclude each other; a contender naming another limit gets
//! [`LockError::Conflict`](lock_core::LockError::Conflict). Leader election is
//! etcd's own (`concurrency.Election`, `etcdctl elect`): a mutex whose key's
//! value is the published proposal; [`proclaim`](lock_core::LockGuard::proclaim)
//! replaces it while leading, and
//! [`observe`](lock_core::Locks::observe) watches the first key under the name.
//!
//! * **One lease per client**, granted on first use and kept alive by one
//!   keep-alive stream for every lock of the client: holding 1,000 locks costs
//!   one keep-alive every third of the TTL. When etcd reports the lease gone,
//!   every guard of the client reports [`LostReason::SessionEnded`](lock_core::LostReason)
//!   and the next acquisition takes a new lease. The lock TTL is the lease
//!   TTL, set on the client ([`EtcdConfig::lease_ttl`]).
//! * **Fair**: contenders are served in create-revision order; each waiter
//!   watches only the deletion of the contender just before it, so a release
//!   wakes one waiter, not a herd (but for a full semaphore's waiters, for
//!   whom the end of any place before theirs may be their turn). All
//!   watches share one watch stream.
//! * **Fenced**: the token is the holder key's create revision, which etcd
//!   increases on every write; in every mode, a grant's token is above every
//!   earlier grant's it does not share the lock with, and above every grant
//!   made before its contender queued.
//! * **Safe release**: release deletes our key only if it still has our create
//!   revision, so a stale handle never frees someone else's grant; a deletion
//!   of our key by anyone else is reported as loss at once.
//! * **No leftovers**: a timed-out acquisition deletes its key before it
//!   returns; a cancelled one starts the deletion before its future is dropped.
//!
//! Why not etcd's Lock RPC: it blocks server-side with no way to take back a
//! cancelled request's key, and gives no fencing beyond the key it returns;
//! the client-side recipe it wraps is the same, so we run that directly.
//!
//! ```no_run
//! # async fn run() -> Result<(), lock_core::LockError> {
//! use std::time::Duration;
//! use lock_core::Locks;
//! use lock_etcd::{EtcdConfig, EtcdLock};
//!
//! let config = EtcdConfig::new(["http://127.0.0.1:2379"]).lease_ttl(Duration::from_secs(10));
//! let locks = Locks::new(EtcdLock::connect(config).await?);
//! let guard = locks.lock("deploy").acquire().await?;
//! println!("fencing token {}", guard.token());
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```

mod cleanup;
mod client;
mod config;
mod contender;
mod election;
mod endpoints;
mod error;
mod layout;
mod lock;
mod monitor;
mod queue;
mod reader_writer;
mod semaphore;
mod watch;

pub use config::{DEFAULT_ENDPOINT, ENDPOINTS_ENV, EtcdConfig, EtcdTls};
pub use layout::{native_lock_name, native_prefix};
pub use lock::EtcdLock;

/// The backend's name in errors and traces.
pub const BACKEND: &str = "etcd";
