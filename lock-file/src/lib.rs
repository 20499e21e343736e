//! The local file backend of distlock: [`FileLock`], OS file locks in a
//! directory, for one machine and no server. It is the embedded default of
//! the `distlock` CLI.
//!
//! Key `K` is the file `{dir}/{K percent-encoded}.lock` (every byte outside
//! `[A-Za-z0-9_-]` as `%XX`; names too long for the file system become
//! `sha256-{hex}.lock`), so distinct keys never share a file.
//!
//! # Reader/writer locks
//!
//! [`LockMode::Read`](lock_core::LockMode::Read) takes the key's lock file
//! with a shared `flock` (as `flock -s`), [`LockMode::Write`](lock_core::LockMode::Write)
//! and the mutex with an exclusive one, so readers share a key with each
//! other only, and a mutex holder and a writer of one key exclude each other.
//! Each reader records itself in `{name}.{token}.reader` beside the lock
//! file, locked while it reads (the lock file keeps the latest exclusive
//! grant), which is how `holders` lists readers. `flock` has no writer
//! preference; the key's gate file `{name}.gate` adds it: a writer waiting
//! for the lock file marks the gate, and readers wait while it is marked.
//!
//! # Semaphores and leader election
//!
//! A semaphore of limit `n` holds the lock file shared (so a mutex or writer
//! of the key excludes it) and one of the place files `{name}.slot0` ..
//! `{name}.slot{n-1}` exclusively; holders record themselves with the limit
//! as readers do, so a contender of another limit is refused with
//! `LockError::Conflict`. A leader's published value is one more line of the
//! lock file's record (`=value`, with `%`, line feeds and carriage returns
//! as `%XX`), rewritten in place by `proclaim`; observers poll it.
//!
//! # Loss
//!
//! A lock is held while its holder keeps the lock file open and locked, and
//! the key's path still names that file. Deleting or replacing the file
//! (a tmp cleaner, an operator) lets another client lock a new file at the
//! path at once, so the holder is reported lost within a second: one inotify
//! watch on the directory per client reports it at once, and every held file
//! is checked against its path each second besides (on the tokio runtime
//! that took the lock). All file work runs on tokio's blocking pool, never on
//! the runtime's own threads.
//!
//! # Fencing tokens, and where to keep the directory
//!
//! Every grant's token is recorded on disk in the directory's token counter,
//! `{dir}/.distlock-tokens/issued`, before it is handed out, and the counter
//! is replaced atomically (written beside it, flushed, renamed over it), so a
//! crash can never tear it. Tokens of a key therefore never repeat or go back
//! while the directory survives, whatever happens to the lock files: deleted
//! or replaced while held or free, emptied, or half-written by a crash.
//!
//! Tokens survive exactly as long as the directory does. A directory under
//! `$XDG_RUNTIME_DIR` (the `distlock` CLI's default) is removed at the
//! user's last logout and at reboot, and one under `/tmp` (the CLI's
//! fallback) is emptied at reboot on many systems and aged out by tmp
//! cleaners: tokens then start again from 1. Use such a directory to
//! serialise jobs on one machine; when the tokens fence writes to a resource
//! that outlives a reboot, keep the locks in a persistent directory such as
//! `/var/lib/<app>/locks` (`file:///var/lib/<app>/locks`). Never remove
//! `.distlock-tokens` from a directory in use.
//!
//! ```no_run
//! # async fn run() -> Result<(), lock_core::LockError> {
//! use lock_core::Locks;
//! use lock_file::FileLock;
//!
//! let locks = Locks::new(FileLock::new("/var/lib/myapp/locks")?);
//! let guard = locks.lock("deploy").acquire().await?;
//! let token = guard.token(); // send with every write the lock protects
//! # let _ = token;
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```

mod counter;
mod gate;
mod held;
mod identity;
mod layout;
mod lock;
mod monitor;
mod readers;
mod record;
mod slots;
mod take;

pub use lock::FileLock;
