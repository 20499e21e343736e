//! Semaphores on `flock`: a key of limit `n` has `n` place files,
//! `{name}.slot0` .. `{name}.slot{n-1}` beside its lock file; a holder keeps
//! one of them locked (and the lock file shared, so a mutex or writer of the
//! key excludes semaphore holders). Holders record themselves as readers do
//! (`readers.rs`), with the limit, which is how contenders of another limit
//! are told apart and refused.

use std::fs::{File, OpenOptions, TryLockError};
use std::num::NonZeroU32;
use std::path::Path;

use lock_core::{LockError, LockKey, LockMode};

use crate::layout::slot_path;
use crate::readers::live_readers;
use crate::take::{BACKEND, Target, unavailable};

/// Locks a free place of `key`'s semaphore of `limit`, if one is free.
pub(crate) fn take(dir: &Path, key: &LockKey, limit: NonZeroU32) -> Result<Option<File>, LockError> {
    for index in 0..limit.get() {
        let path = slot_path(dir, key, index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| unavailable(Some(key), &path, e))?;
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(unavailable(Some(key), &path, e)),
        }
    }
    Ok(None)
}

/// A free place of the key's semaphore of `limit` for `target`, after
/// making sure the key is not shared in another way (a holder of another
/// limit may hold every place a smaller limit would look at).
pub(crate) fn take_unless_shared_otherwise(target: &Target, limit: NonZeroU32) -> Result<Option<File>, LockError> {
    refuse_other_sharers(&target.dir, &target.key, target.mode)?;
    take(&target.dir, &target.key, limit)
}

/// Refuses `mode` when the key is shared in another way: a semaphore of
/// another limit, or readers beside a semaphore (and the reverse).
pub(crate) fn refuse_other_sharers(dir: &Path, key: &LockKey, mode: LockMode) -> Result<(), LockError> {
    let sharers = live_readers(dir, key).map_err(|e| unavailable(Some(key), dir, e))?;
    match sharers.iter().find(|holder| holder.mode != mode) {
        Some(other) => {
            Err(LockError::conflict(BACKEND, key, format!("asked for a {mode}, but it is held as a {}", other.mode)))
        }
        None => Ok(()),
    }
}
