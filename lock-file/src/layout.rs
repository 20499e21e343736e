//! How keys map onto file names, injectively.
//!
//! Every byte outside `[A-Za-z0-9_-]` is written as `%XX`, so `a/b`, `a%2Fb`
//! and `..` become `a%2Fb`, `a%252Fb` and `%2E%2E`: distinct, and never a
//! path separator or a special name. A name that would exceed the file
//! system's limit is replaced by `sha256-{hex}`; the file records its key, so
//! a hash collision is detected instead of shared.

use std::path::{Path, PathBuf};

use lock_core::LockKey;
use sha2::{Digest, Sha256};

/// The longest encoded name used as is (file systems allow 255 bytes).
const MAX_NAME: usize = 200;

/// The file that locks `key` in `dir`.
pub(crate) fn lock_path(dir: &Path, key: &LockKey) -> PathBuf {
    dir.join(format!("{}.lock", file_stem(key)))
}

/// The key's gate: held by each acquisition while it waits for the lock
/// file, by readers only to get past it, so a waiting writer holds back
/// readers that come after it (see `gate.rs`).
pub(crate) fn gate_path(dir: &Path, key: &LockKey) -> PathBuf {
    dir.join(format!("{}.gate", file_stem(key)))
}

/// The record of one reader of the key, locked by it while it reads: the
/// lock file itself records only the latest exclusive grant, and readers
/// hold it at once.
pub(crate) fn reader_path(dir: &Path, key: &LockKey, token: u64) -> PathBuf {
    dir.join(format!("{}{token}{READER_SUFFIX}", reader_prefix(key)))
}

/// What every reader record of the key starts with (stems never hold a dot).
pub(crate) fn reader_prefix(key: &LockKey) -> String {
    format!("{}.", file_stem(key))
}

/// Place `index` of the key's semaphore (see `slots.rs`).
pub(crate) fn slot_path(dir: &Path, key: &LockKey, index: u32) -> PathBuf {
    dir.join(format!("{}.slot{index}", file_stem(key)))
}

/// What every reader record's name ends with.
pub(crate) const READER_SUFFIX: &str = ".reader";

fn file_stem(key: &LockKey) -> String {
    let mut name = String::with_capacity(key.as_str().len());
    for byte in key.as_str().bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    if name.len() <= MAX_NAME {
        return name;
    }
    let digest = Sha256::digest(key.as_str().as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stem(key: &str) -> String {
        file_stem(&LockKey::new(key).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn distinct_keys_get_distinct_safe_names() {
        let keys = ["a", "a/", "a/b", "a%2Fb", "..", ".", "锁", "a b", "A"];
        let names: std::collections::HashSet<String> = keys.iter().map(|k| stem(k)).collect();
        assert_eq!(names.len(), keys.len());
        assert!(names.iter().all(|n| !n.contains('/') && !n.starts_with('.')));
        assert_eq!(stem("a/b"), "a%2Fb");
        assert!(stem(&"x".repeat(300)).starts_with("sha256-"));
    }
}
