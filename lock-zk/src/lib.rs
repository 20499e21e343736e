//! The ZooKeeper backend of distlock.
//!
//! [`ZkLock`] implements [`DistributedLock`](lock_core::DistributedLock) on
//! ZooKeeper with the node layout of Apache Curator's `InterProcessMutex`
//! (the mutex), `InterProcessReadWriteLock` (the read and write modes),
//! `InterProcessSemaphoreV2` (the semaphore) and `LeaderSelector` (the mutex
//! with a published value), so a Java service using Curator and a Rust
//! service using distlock share the same lock path; see [`lock_path`] for how
//! a key maps to it. Contender nodes carry a GUID, so a create whose reply was
//! lost is found again and deleted rather than orphaned.
//!
//! * **Semaphores** ([`LockMode::Semaphore`](lock_core::LockMode::Semaphore)):
//!   `{dir}/locks` is a mutex taken while counting, `{dir}/leases` holds one
//!   ephemeral sequential node per place, and a contender holds once at most
//!   `limit` lease nodes exist. Fenced by the lease node's `czxid` (the mutex
//!   serialises lease creation and grants). Our lease nodes carry their limit,
//!   so distlock contenders that disagree on it get
//!   [`LockError::Conflict`](lock_core::LockError::Conflict); Curator stores
//!   no limit, so a disagreeing Curator contender goes unnoticed.
//! * **Leader election**: a mutex acquisition with a value writes the value
//!   as the node's data, Curator's participant id; `inspect` reports the
//!   first node's data as the leader's value (and owner), `proclaim` replaces
//!   it, and `observe` follows it with watches.
//!
//! * **Reader/writer locks**: readers share a key with readers only; a
//!   waiting writer (or mutex contender) holds back readers that queue after
//!   it. Our mutex and our reader/writer lock exclude each other on one key;
//!   a Curator `InterProcessMutex` and a reader/writer lock on one path do
//!   not (Curator's mutex ignores reader and writer nodes), as in Curator.
//! * **One session per client**, shared by all its locks; the lock TTL is the
//!   negotiated session timeout. When ZooKeeper expires the session, every
//!   guard of the client reports lost and the next acquisition opens a new
//!   session. While only disconnected, guards keep their locks (Curator's
//!   SUSPENDED) until the guard's own clock gives them up.
//! * **Fenced** by the holder node's `czxid`, which increases across the
//!   whole ensemble, also when a lock directory is re-created: a write grant's
//!   token exceeds every earlier grant's, a read grant's every earlier write
//!   grant's.
//! * **Safe release**: only our own node is deleted; its deletion by anyone
//!   else is reported as loss at once through a node watch (set by the
//!   grant's read of its node, or, for a lock free at once, one round trip
//!   after the grant, by a look that also catches a deletion before it).
//! * **Nothing left behind**: the node of an attempt that timed out, was
//!   cancelled or failed, and of a release that went unanswered, is deleted
//!   in the background, retried with backoff until ZooKeeper confirms it is
//!   gone or the session has ended (which removes it too). A delete lost with
//!   its connection would otherwise leave the node queued for as long as the
//!   session lives, holding back every later contender of the key. Until it
//!   is gone, this client's own later attempts on the key do not queue behind
//!   it; everyone else still does.
//! * **Credentials** ([`ZkConfig::digest`]; `user` and `password` in a `zk://`
//!   URL): everything the client creates (lock nodes, lock directories, the
//!   base path's missing ancestors) gets the client's identity as its ACL
//!   (`creator_all`), so a client without the credentials can neither
//!   delete a held lock's node nor queue in its directory: ZooKeeper checks
//!   both against the directory's ACL, not the node's. A directory that
//!   already exists keeps its ACL, so one made earlier by a client without
//!   credentials (or by Curator with its default ACL) stays open to all. An
//!   authenticated client therefore reads the directory's ACL with every
//!   create (in the same round trip) and refuses to queue in a directory
//!   that lets clients without credentials create or delete nodes, failing
//!   with [`UnprotectedDirectory`] (as the source of
//!   [`LockError::Backend`](lock_core::LockError::Backend)), which names the
//!   directory and the fix: give it the client's ACL, or delete it while it
//!   is empty (ZooKeeper also reaps an empty lock directory by itself) so the
//!   next acquire makes it again. Refusing rather than waiting or taking the
//!   directory over: a grant there would not exclude clients without
//!   credentials, and changing a shared directory's ACL unasked would leave
//!   such clients unable to delete their own nodes. All clients of a base
//!   path should use the same identity (or the base path an ACL that lets
//!   each create there); a Curator client sharing the locks needs the same
//!   credentials and an `ACLProvider` that gives `CREATOR_ALL_ACL`.

mod attempt;
mod cleanup;
mod client;
mod config;
mod connect;
mod election;
mod error;
mod grant;
mod layout;
mod lock;
mod queue;
mod reader_writer;
mod semaphore;
mod wait;

pub use config::{DEFAULT_HOSTS, HOSTS_ENV, ZkConfig};
pub use error::UnprotectedDirectory;
pub use layout::{escaped_prefix, lock_path};
pub use lock::ZkLock;

/// The backend's name in errors and traces.
pub const BACKEND: &str = "zk";
