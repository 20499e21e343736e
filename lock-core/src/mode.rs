//! How an acquisition holds its key: alone, or shared with other readers.

use std::fmt;

/// How an acquisition holds its key.
///
/// One key can be taken in any mode by any client; the modes decide who may
/// hold it at the same time:
///
/// | holding \ asking | `Exclusive` | `Write` | `Read` |
/// |---|---|---|---|
/// | `Exclusive` | waits | waits | waits |
/// | `Write` | waits | waits | waits |
/// | `Read` | waits | waits | **shares** |
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
/// order, so one reader's token may be below an earlier reader's.
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
}

impl LockMode {
    /// Every mode.
    pub const ALL: &'static [LockMode] = &[LockMode::Exclusive, LockMode::Read, LockMode::Write];

    /// Whether a holder in this mode and one in `other` may hold one key at
    /// the same time: only two readers may.
    pub fn shares_with(self, other: LockMode) -> bool {
        self == LockMode::Read && other == LockMode::Read
    }

    /// Whether this mode shares the key with anyone (the read side).
    pub fn is_shared(self) -> bool {
        self == LockMode::Read
    }

    /// The mode's name in messages, traces and the CLI: `exclusive`, `read`,
    /// `write`.
    pub fn name(self) -> &'static str {
        match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Read => "read",
            LockMode::Write => "write",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
