//! How an acquisition holds its key: alone, or shared with other readers.

use std::fmt;
use std::num::NonZeroU32;

/// How an acquisition holds its key.
///
/// One key can be taken in any mode by any client; the modes decide who may
/// hold it at the same time:
///
/// | holding \ asking | `Exclusive` | `Write` | `Read` | `Semaphore` |
/// |---|---|---|---|---|
/// | `Exclusive` | waits | waits | waits | waits |
/// | `Write` | waits | waits | waits | waits |
/// | `Read` | waits | waits | **shares** | waits |
/// | `Semaphore { limit: n }` | waits | waits | waits | **shares** while fewer than `n` hold (same `n`) |
///
/// A semaphore is a key held by at most `limit` holders at once, stored as
/// the service's native semaphore (Consul's `api.Semaphore` and `consul lock
/// -n`, Curator's `InterProcessSemaphoreV2`). Contenders that disagree on
/// the limit get [`LockError::Conflict`](crate::LockError::Conflict).
/// Where the service keeps a semaphore and a lock on one key apart (Consul:
/// the flags of `.lock`), asking one while the other holds is a `Conflict`
/// rather than a wait; and not every backend can tell every other mode
/// apart from a semaphore on the same key (Curator's layouts differ). Use a
/// key for one purpose.
///
/// `Exclusive` is the mutex, stored as each service's native lock is
/// (`etcdctl lock`, `consul lock`, Curator's `InterProcessMutex`).
/// `Read` and `Write` are the two sides of a reader/writer lock, stored as
/// the native reader/writer recipe is where one exists (Curator's
/// `InterProcessReadWriteLock`, etcd's `recipes.RWMutex`). A writer and a
/// mutex holder exclude each other like two writers; only readers share.
///
/// Waiting is ordered: a waiting writer (or mutex contender) makes readers
/// that arrive after it wait behind it, so a stream of readers never starves
/// a writer (see [`Capabilities::writer_preference`](crate::Capabilities::writer_preference)).
///
/// # Fencing
///
/// Tokens of a key follow its writes:
///
/// * a write (or mutex) grant's token is greater than every earlier grant's
///   of the key, readers' and writers';
/// * a read grant's token is greater than every earlier write grant's.
///
/// Readers that become free together (a writer leaves) may be granted in any
/// order, so one reader's token may be below an earlier reader's. The same
/// holds for semaphore holders let in by the same release: each token is
/// greater than those of every holder granted before that release, and
/// holders granted together are never compared.
/// A resource that accepts a write only with a token at least as high as the
/// highest it has seen, and a read only with a token above the last write
/// token it accepted, refuses every paused holder's late operation. Readers
/// holding at once have different tokens; a resource must not require a
/// reader's token to exceed another reader's.
///
/// ```
/// use lock_core::LockMode;
///
/// assert!(LockMode::Read.shares_with(LockMode::Read));
/// assert!(!LockMode::Read.shares_with(LockMode::Write));
/// assert!(!LockMode::Exclusive.shares_with(LockMode::Exclusive));
/// assert_eq!(LockMode::default(), LockMode::Exclusive);
/// let three = LockMode::semaphore(3).expect("3 > 0");
/// assert!(three.shares_with(three));
/// assert!(!three.shares_with(LockMode::semaphore(2).expect("2 > 0")));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LockMode {
    /// The mutex: one holder, stored as the service's native lock.
    #[default]
    Exclusive,
    /// The read side of a reader/writer lock: shares the key with readers.
    Read,
    /// The write side of a reader/writer lock: holds the key alone.
    Write,
    /// A counting semaphore: at most `limit` holders at once.
    Semaphore {
        /// The most holders at once; every contender must name the same.
        limit: NonZeroU32,
    },
}

impl LockMode {
    /// The mutex and both sides of the reader/writer lock: what a backend
    /// with reader/writer locks declares.
    pub const ALL: &'static [LockMode] = &[LockMode::Exclusive, LockMode::Read, LockMode::Write];

    /// Every kind of mode, the semaphore (of any limit) included.
    pub const WITH_SEMAPHORE: &'static [LockMode] =
        &[LockMode::Exclusive, LockMode::Read, LockMode::Write, LockMode::Semaphore { limit: NonZeroU32::MIN }];

    /// A semaphore of `limit` holders; `None` for 0.
    pub fn semaphore(limit: u32) -> Option<LockMode> {
        NonZeroU32::new(limit).map(|limit| LockMode::Semaphore { limit })
    }

    /// Whether a holder in this mode and one in `other` may hold one key at
    /// the same time: two readers may, and two semaphore holders of the same
    /// limit (up to the limit).
    pub fn shares_with(self, other: LockMode) -> bool {
        match (self, other) {
            (LockMode::Read, LockMode::Read) => true,
            (LockMode::Semaphore { limit }, LockMode::Semaphore { limit: other }) => limit == other,
            _ => false,
        }
    }

    /// Whether this mode may share the key with anyone: the read side and
    /// the semaphore.
    pub fn is_shared(self) -> bool {
        matches!(self, LockMode::Read | LockMode::Semaphore { .. })
    }

    /// The most holders this mode admits at once (unbounded for readers).
    pub fn limit(self) -> Option<u32> {
        match self {
            LockMode::Exclusive | LockMode::Write => Some(1),
            LockMode::Read => None,
            LockMode::Semaphore { limit } => Some(limit.get()),
        }
    }

    /// Whether `self` and `other` are the same kind of mode, whatever their
    /// limits: what [`Capabilities::grants`](crate::Capabilities::grants)
    /// compares.
    pub fn same_kind(self, other: LockMode) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }

    /// The mode's name in messages, traces and the CLI: `exclusive`, `read`,
    /// `write`, `semaphore`.
    pub fn name(self) -> &'static str {
        match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Read => "read",
            LockMode::Write => "write",
            LockMode::Semaphore { .. } => "semaphore",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockMode::Semaphore { limit } => write!(f, "semaphore of {limit}"),
            other => f.write_str(other.name()),
        }
    }
}
