//! The Consul backend of distlock.
//!
//! [`ConsulLock`] implements [`DistributedLock`](lock_core::DistributedLock)
//! on Consul's KV store and sessions, key for key like Consul's own lock
//! (`api.Lock` in Go, the `consul lock` command): a Rust service using
//! distlock and a Go service or a shell script using `consul lock` exclude
//! each other on the same lock. [`native_lock_key`] tells how a distlock key
//! maps to the Consul key (`consul lock PREFIX` uses `PREFIX/.lock`).
//!
//! * **Fenced** by the raft `ModifyIndex` of the acquiring write.
//! * **Reader/writer locks** ([`LockMode::Read`](lock_core::LockMode::Read),
//!   [`LockMode::Write`](lock_core::LockMode::Write)), which Consul lacks,
//!   on contender keys beside the mutex's: `.lock` becomes their gate
//!   (flags [`RW_FLAG`]), which `consul lock` refuses and a distlock mutex
//!   queues behind.
//! * **Semaphores** ([`LockMode::Semaphore`](lock_core::LockMode::Semaphore)),
//!   key for key Consul's `api.Semaphore` (`consul lock -n N`): contender
//!   keys `PREFIX/{session}` and the record `PREFIX/.lock` (flags
//!   [`SEMAPHORE_FLAG`]), each place on a session of its own.
//! * **Leader election**: a mutex with a value writes it as `.lock`'s value
//!   (Consul's leader-election pattern); `proclaim` rewrites it and
//!   `observe` follows the leader with blocking queries.
//! * **One session per client**, renewed in the background however many
//!   locks it holds; its invalidation makes every guard report lost at once.
//! * **Blocking queries** for waiting and for watching held keys.
//! * **Connection options**: address (http or https with a CA file), ACL
//!   token, datacenter, key prefix, session TTL and lock delay
//!   ([`ConsulConfig`]).
//! * **Bounded connections**: one pooled HTTP client per [`ConsulLock`], at
//!   most [`MAX_CONCURRENT_REQUESTS`] short requests in flight,
//!   [`MAX_KEY_WATCHES`] per-key watches of held locks and
//!   [`MAX_BLOCKING_WAITS`] per-key waits (one prefix watch covers the rest),
//!   so a client stays within Consul's limit of connections per client
//!   address (200 by default) however many locks it holds or waits for.
//!
//! Consul refuses session TTLs below its `session_ttl_min` (10 s on a stock
//! server); the default TTL here is 15 s.

mod api;
mod claims;
mod config;
mod contender;
mod election;
mod error;
mod in_flight;
mod layout;
mod lock;
mod monitor;
mod reader_writer;
mod rw_monitor;
mod scene;
mod semaphore;
mod semaphore_record;
mod session;
mod waiting;

pub use api::{ApiError, MAX_CONCURRENT_REQUESTS, requests_sent};
pub use config::{
    ADDRESS_ENV, CONSUL_DEFAULT_LOCK_DELAY, CONSUL_MAX_SESSION_TTL, CONSUL_MIN_SESSION_TTL, ConsulConfig,
    DEFAULT_ADDRESS, DEFAULT_PREFIX, TOKEN_ENV,
};
pub use layout::{NATIVE_LOCK_SUFFIX, native_lock_key, native_lock_prefix, native_prefix};
pub use lock::{ConsulLock, LOCK_FLAG};
pub use monitor::{MAX_BLOCKING_WAITS, MAX_KEY_WATCHES};
pub use scene::RW_FLAG;
pub use semaphore_record::SEMAPHORE_FLAG;

/// The backend's name in errors and traces.
pub const BACKEND: &str = "consul";
