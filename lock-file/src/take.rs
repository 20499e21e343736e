//! Taking a lock file, as blocking steps for the blocking pool: open it,
//! try its `flock`, make sure the path still names it, issue the grant's
//! token and record the grant in it.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use inotify::{Inotify, WatchMask};
use lock_core::{LockError, LockInfo, LockKey, LockMode};
use tracing::warn;

use crate::counter::TokenCounter;
use crate::identity::{FileId, same_file};
use crate::readers::{ReaderRecord, live_readers};
use crate::record::Record;

pub(crate) const BACKEND: &str = "file";

/// What one attempt at a lock file came to.
pub(crate) enum Attempt {
    /// Locked, with the grant recorded.
    Granted(Grant),
    /// Locked by another holder; the file, to try again.
    Busy(File),
    /// The path names another file now (or none): open it afresh.
    Replaced,
}

/// A lock file locked and recorded for a grant.
pub(crate) struct Grant {
    pub(crate) file: File,
    pub(crate) id: FileId,
    pub(crate) record: Record,
    /// A reader's own record, removed when it is dropped.
    pub(crate) reader: Option<ReaderRecord>,
}

/// One request's view of a key's lock file.
pub(crate) struct Target {
    pub(crate) key: LockKey,
    pub(crate) path: PathBuf,
    pub(crate) owner: String,
    pub(crate) mode: LockMode,
    pub(crate) value: Option<String>,
    pub(crate) dir: PathBuf,
    pub(crate) tokens: TokenCounter,
}

impl Target {
    /// Opens the lock file, creating it if missing.
    pub(crate) fn open(&self) -> Result<File, LockError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(|e| unavailable(Some(&self.key), &self.path, e))
    }

    /// Watches the lock file for what may free it: a close (a dying holder's
    /// descriptor is closed by the kernel too), its deletion or replacement
    /// (`ATTRIB`: its link count drops at once, even while a holder keeps it
    /// open). `None` when it cannot be watched (a user has 128 inotify
    /// instances by default): the waiter then tries once a second.
    pub(crate) fn watch_frees(&self) -> Option<Inotify> {
        watch_frees(&self.key, &self.path)
    }

    /// Tries the lock on `file` once and, if taken and still the file at the
    /// path (an unlinked file would be a lock nobody else can see), records a
    /// grant in it with a freshly issued token.
    pub(crate) fn attempt(&self, file: File) -> Result<Attempt, LockError> {
        let locked = if self.mode.is_shared() { file.try_lock_shared() } else { file.try_lock() };
        match locked {
            Ok(()) if same_file(&file, &self.path) => match self.mode {
                LockMode::Semaphore { limit } => match crate::slots::take_unless_shared_otherwise(self, limit)? {
                    Some(slot) => self.grant(file, Some(slot)).map(Attempt::Granted),
                    None => {
                        // Every place is taken: wait without holding anything.
                        let _ = file.unlock();
                        Ok(Attempt::Busy(file))
                    }
                },
                _ => self.grant(file, None).map(Attempt::Granted),
            },
            // Dropping the file unlocks it.
            Ok(()) => Ok(Attempt::Replaced),
            // A holder of a deleted file keeps it locked; waiting on it would
            // wait for nothing.
            Err(TryLockError::WouldBlock) if !same_file(&file, &self.path) => Ok(Attempt::Replaced),
            Err(TryLockError::WouldBlock) => Ok(Attempt::Busy(file)),
            Err(TryLockError::Error(e)) => Err(unavailable(Some(&self.key), &self.path, e)),
        }
    }

    /// Issues the token (durably, before anyone sees it) and writes the
    /// record. On error the file is dropped, which unlocks it.
    fn grant(&self, file: File, slot: Option<File>) -> Result<Grant, LockError> {
        let failed = |error: String| LockError::backend(BACKEND, Some(&self.key), error);
        let on_file = |e: std::io::Error| failed(format!("{}: {e}", self.path.display()));
        let id = FileId::of(&file).map_err(on_file)?;
        let previous = Record::read(&file).map_err(on_file)?;
        if !previous.key.is_empty() && previous.key != self.key.as_str() {
            return Err(failed(format!("{}: lock file belongs to key {:?}", self.path.display(), previous.key)));
        }
        let token = self.tokens.issue(previous.token).map_err(|e| failed(e.to_string()))?;
        let record = Record {
            token,
            owner: self.owner.clone(),
            key: self.key.as_str().to_owned(),
            since: Record::now(),
            mode: self.mode,
            value: self.value.clone(),
        };
        if self.mode.is_shared() {
            // Readers and semaphore holders hold the file at once: each
            // records itself beside it, and the file keeps the latest
            // exclusive grant's record.
            crate::slots::refuse_other_sharers(&self.dir, &self.key, self.mode)?;
            let reader = ReaderRecord::create(&self.dir, &self.key, &record, slot).map_err(on_file)?;
            // Two contenders of different limits that both looked before
            // either had recorded itself: the later one sees the other now.
            crate::slots::refuse_other_sharers(&self.dir, &self.key, self.mode)?;
            return Ok(Grant { file, id, record, reader: Some(reader) });
        }
        record.write(&file).map_err(on_file)?;
        Ok(Grant { file, id, record, reader: None })
    }
}

/// The holder of the lock file at `path`, if it is held.
/// Every holder of `key` (the lock file at `path` in `dir`): its exclusive
/// holder, or its readers, in token order.
pub(crate) fn holders(dir: &Path, key: &LockKey, path: &Path) -> Result<Vec<LockInfo>, LockError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(unavailable(Some(key), path, e)),
    };
    match file.try_lock_shared() {
        // Nobody holds it alone: readers may share it.
        Ok(()) => live_readers(dir, key).map_err(|e| unavailable(Some(key), dir, e)),
        Err(TryLockError::WouldBlock) => {
            let record = Record::read(&file).map_err(|e| unavailable(Some(key), path, e))?;
            Ok(vec![record.info()])
        }
        Err(TryLockError::Error(e)) => Err(unavailable(Some(key), path, e)),
    }
}

/// An inotify watch that wakes a waiter when the file at `path` may have
/// been unlocked (closed, removed or replaced); `None` (polling once a
/// second instead) when inotify cannot watch it.
pub(crate) fn watch_frees(key: &LockKey, path: &Path) -> Option<Inotify> {
    let watch = || {
        let inotify = Inotify::init()?;
        let mask = WatchMask::CLOSE | WatchMask::ATTRIB | WatchMask::DELETE_SELF | WatchMask::MOVE_SELF;
        inotify.watches().add(path, mask)?;
        Ok::<_, std::io::Error>(inotify)
    };
    watch()
        .inspect_err(|error| {
            warn!(backend = BACKEND, key = %key, path = %path.display(), %error, "cannot watch the file; trying it once a second");
        })
        .ok()
}

pub(crate) fn unavailable(key: Option<&LockKey>, path: &Path, error: std::io::Error) -> LockError {
    LockError::unavailable(BACKEND, key, format!("{}: {error}", path.display()))
}
