//! Writer preference on top of `flock`, which has none, through the key's
//! gate file: a writer (or mutex contender) that finds the lock file busy
//! holds the gate *shared* while it waits, and a reader first checks that it
//! could lock the gate *exclusively*, that is that no writer waits. Readers
//! that come after a waiting writer therefore wait behind it, while writers
//! among themselves contend for the lock file exactly as without a gate.
//!
//! The gate orders arrivals only: exclusion is the lock file's. A reader
//! that checked the gate just before a writer began waiting may still join
//! the readers ahead of it, once. A gate file removed by hand costs the
//! preference of the writers waiting on it, never the exclusion.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use lock_core::{LockError, LockKey};

use crate::take::unavailable;

fn open(key: &LockKey, path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| unavailable(Some(key), path, e))
}

/// Whether no writer waits at the gate at `path` (a reader may go on).
pub(crate) fn no_writer_waits(key: &LockKey, path: &Path) -> Result<bool, LockError> {
    match open(key, path)?.try_lock() {
        // Unlocked when the file closes, at once.
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(unavailable(Some(key), path, e)),
    }
}

/// Marks a writer as waiting at the gate at `path` for as long as the
/// returned file is open; `None` if a reader is checking the gate this very
/// moment (try again at the next wake-up).
pub(crate) fn hold_back_readers(key: &LockKey, path: &Path) -> Result<Option<File>, LockError> {
    let file = open(key, path)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(unavailable(Some(key), path, e)),
    }
}
