//! Reader records: one small file per reader of a key, created under a
//! temporary name, locked, written and only then renamed into place, so a
//! record in place is locked for exactly as long as its reader holds the key.
//! A record found unlocked belongs to a reader that is gone (its process
//! died) and is removed by whoever lists the readers.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use lock_core::{LockInfo, LockKey};

use crate::layout::{READER_SUFFIX, reader_path, reader_prefix};
use crate::record::Record;

/// A reader's record, kept open and locked while it reads; dropping it
/// removes it.
#[derive(Debug)]
pub(crate) struct ReaderRecord {
    path: PathBuf,
    _file: File,
    /// A semaphore holder's place (see `slots.rs`), held while it holds.
    _slot: Option<File>,
}

impl ReaderRecord {
    /// Creates the record of `record`'s grant of `key` in `dir`.
    pub(crate) fn create(dir: &Path, key: &LockKey, record: &Record, slot: Option<File>) -> std::io::Result<Self> {
        let path = reader_path(dir, key, record.token);
        let writing = path.with_extension("reader-tmp");
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&writing)?;
        let placed = file
            .try_lock()
            .map_err(|error| match error {
                TryLockError::WouldBlock => std::io::Error::other("a reader record being written is locked"),
                TryLockError::Error(error) => error,
            })
            .and_then(|()| record.write(&file))
            .and_then(|()| std::fs::rename(&writing, &path));
        if let Err(error) = placed {
            let _ = std::fs::remove_file(&writing);
            return Err(error);
        }
        Ok(Self { path, _file: file, _slot: slot })
    }
}

impl Drop for ReaderRecord {
    fn drop(&mut self) {
        // Removed while still locked, so a lister never takes it for a dead
        // reader's and nobody else removes a file of that name.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The live readers of `key` in `dir`, in token order; records of readers
/// that are gone are removed on the way.
pub(crate) fn live_readers(dir: &Path, key: &LockKey) -> std::io::Result<Vec<LockInfo>> {
    let prefix = reader_prefix(key);
    let mut readers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_record = name.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(READER_SUFFIX));
        if !is_record.is_some_and(|token| token.bytes().all(|b| b.is_ascii_digit()) && !token.is_empty()) {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else { continue };
        match file.try_lock_shared() {
            Err(TryLockError::WouldBlock) => {
                readers.push(Record::read(&file)?.info());
            }
            Ok(()) => {
                let _ = std::fs::remove_file(entry.path());
            }
            Err(TryLockError::Error(error)) => return Err(error),
        }
    }
    readers.sort_by_key(|info| info.token);
    Ok(readers)
}

#[cfg(test)]
mod tests {
    use lock_core::LockMode;

    use super::*;

    fn key() -> LockKey {
        LockKey::new("objects/a").unwrap_or_else(|e| panic!("{e}"))
    }

    fn record(token: u64) -> Record {
        Record {
            token,
            owner: format!("reader-{token}"),
            key: "objects/a".into(),
            since: 1,
            mode: LockMode::Read,
            value: None,
        }
    }

    #[test]
    fn live_records_are_listed_in_token_order_and_a_dead_readers_record_is_removed() {
        let dir = std::env::temp_dir().join(format!("lock-file-readers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let second = ReaderRecord::create(&dir, &key(), &record(9), None).unwrap_or_else(|e| panic!("{e}"));
        let first = ReaderRecord::create(&dir, &key(), &record(4), None).unwrap_or_else(|e| panic!("{e}"));
        // A reader that died: its record is in place but nobody locks it.
        let dead = reader_path(&dir, &key(), 7);
        std::fs::write(&dead, "7\ndead\nobjects/a\n1\nread\n").unwrap_or_else(|e| panic!("{e}"));
        let listed = live_readers(&dir, &key()).unwrap_or_else(|e| panic!("{e}"));
        let tokens: Vec<u64> = listed.iter().map(|info| info.token.get()).collect();
        assert_eq!(tokens, [4, 9]);
        assert!(listed.iter().all(|info| info.mode == LockMode::Read));
        assert!(!dead.exists(), "the dead reader's record is removed");
        drop((first, second));
        assert!(live_readers(&dir, &key()).unwrap_or_else(|e| panic!("{e}")).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
