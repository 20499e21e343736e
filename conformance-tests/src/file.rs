//! The harness for the local file backend, on a fresh directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{LockError, LockKey, Locks};
use lock_file::FileLock;

use crate::{ClientControl, Harness, TestClient};

/// Runs the suite on [`FileLock`] clients sharing one directory.
#[derive(Debug)]
pub struct FileHarness {
    dir: PathBuf,
    holder_binary: Option<PathBuf>,
}

impl FileHarness {
    /// A harness on a new directory under the system's temporary directory.
    pub fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self { dir: std::env::temp_dir().join(format!("distlock-file-suite-{}", &id[..12])), holder_binary: None }
    }

    /// The directory the harness's clients share.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The `conformance-holder` binary, for the killed-holder case.
    pub fn with_holder_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.holder_binary = Some(path.into());
        self
    }

    fn lock(&self) -> FileLock {
        FileLock::new(&self.dir).unwrap_or_else(|e| panic!("cannot use {}: {e}", self.dir.display()))
    }

    /// Whether the file at `path` is locked by anyone, and for which key.
    fn locked_key(path: &std::path::Path) -> Option<String> {
        let file = std::fs::File::open(path).ok()?;
        if file.try_lock_shared().is_ok() {
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().nth(2).map(str::to_owned)
    }
}

impl Default for FileHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FileHarness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // Left by `unreachable_client`.
        let _ = std::fs::remove_file(self.dir.with_extension("not-a-directory"));
    }
}

/// No network to cut: the file backend has nothing to partition.
struct FileControl(Arc<FileLock>);

#[async_trait]
impl ClientControl for FileControl {
    async fn end_session(&self) {
        self.0.end_session();
    }
    async fn cut_off(&self) {}
    async fn restore(&self) {}
}

#[async_trait]
impl Harness for FileHarness {
    fn name(&self) -> &'static str {
        "file"
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn client(&self) -> TestClient {
        let lock = Arc::new(self.lock());
        TestClient { locks: Locks::from_backend(Arc::clone(&lock) as _), control: Box::new(FileControl(lock)) }
    }

    async fn break_lock(&self, key: &LockKey) {
        // Unlinking the file is the only way to take a file lock away.
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if Self::locked_key(&entry.path()).as_deref() == Some(key.as_str()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    async fn leftover(&self, prefix: &str) -> usize {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| Self::locked_key(&entry.path()).is_some_and(|key| key.starts_with(prefix)))
            .count()
    }

    async fn unreachable_client(&self) -> (Duration, Result<Locks, LockError>) {
        // A directory that cannot exist: its parent is a regular file.
        let blocked = self.dir.with_extension("not-a-directory");
        let _ = std::fs::write(&blocked, b"");
        (Duration::from_secs(1), FileLock::new(blocked.join("locks")).map(Locks::new))
    }

    fn holder_process(&self, key: &LockKey, ttl: Duration) -> Option<tokio::process::Command> {
        let mut command = tokio::process::Command::new(self.holder_binary.as_ref()?);
        command.args(["file", key.as_str(), &ttl.as_secs().max(1).to_string()]).arg(&self.dir);
        Some(command)
    }
}
