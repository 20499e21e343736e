//! What the lock-file tests share: a private directory per test and clients on it.

#![allow(dead_code)] // each test file uses a different part

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_core::{LockGuard, Locks};
use lock_file::FileLock;

/// How long a step that should succeed at once may take on a loaded machine.
pub const STEP: Duration = Duration::from_secs(10);

/// The bound the file backend promises for reporting a deleted or replaced
/// lock file.
pub const LOSS_BOUND: Duration = Duration::from_secs(1);

/// A fresh directory, removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system's temporary directory.
    pub fn new(test: &str) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lock-file-{test}-{}-{nanos}-{seq}", std::process::id()));
        ok(std::fs::create_dir_all(&dir));
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The lock file of a key made only of letters and digits.
    pub fn lock_file(&self, key: &str) -> PathBuf {
        self.0.join(format!("{key}.lock"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Unwraps a result, panicking with its error.
pub fn ok<T, E: Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|error| panic!("unexpected error: {error}"))
}

/// A new client on `dir`.
pub fn client(dir: &Path) -> Locks {
    Locks::new(ok(FileLock::new(dir)))
}

/// Takes `key` at once, failing the test when it is held.
pub async fn take(locks: &Locks, key: &str) -> LockGuard {
    match ok(locks.lock(key).try_acquire().await) {
        Some(guard) => guard,
        None => panic!("{key} is held, but should be free"),
    }
}

/// Takes and releases `key`, returning the token it was granted.
pub async fn take_and_release(locks: &Locks, key: &str) -> u64 {
    let guard = take(locks, key).await;
    let token = guard.token().get();
    ok(guard.release().await);
    token
}
