//! What a lock file holds: the token of its latest grant, the holder's owner
//! string, its key, and when the holder was granted it (Unix seconds).
//!
//! The token here is a copy, for `inspect` and as a floor for the directory's
//! counter (see `counter.rs`), which is the authority: a record that was
//! deleted, emptied or torn by a crash can never make a token repeat. A
//! record is never truncated before it is written, so it is never empty
//! while a grant is being written to it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use lock_core::{FencingToken, LockInfo, LockMode};

/// The parsed contents of a lock file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) token: u64,
    pub(crate) owner: String,
    pub(crate) key: String,
    pub(crate) since: u64,
    /// `write` for the write side of a reader/writer lock; absent (the
    /// records of earlier versions) for the mutex.
    pub(crate) mode: LockMode,
    /// The value the holder publishes (leader election), if any.
    pub(crate) value: Option<String>,
}

impl Record {
    /// Reads the record; an empty or foreign file reads as token 0.
    pub(crate) fn read(mut file: &File) -> std::io::Result<Self> {
        let mut text = String::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_string(&mut text)?;
        let mut lines = text.lines();
        let token = lines.next().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
        let owner = lines.next().unwrap_or_default().to_owned();
        let key = lines.next().unwrap_or_default().to_owned();
        let since = lines.next().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let mode = match lines.next().map(str::trim) {
            Some("write") => LockMode::Write,
            Some("read") => LockMode::Read,
            Some(other) => other
                .strip_prefix("semaphore ")
                .and_then(|limit| limit.parse().ok())
                .and_then(LockMode::semaphore)
                .unwrap_or(LockMode::Exclusive),
            None => LockMode::Exclusive,
        };
        let value = lines.next().and_then(|line| line.strip_prefix('=')).map(unescape);
        Ok(Self { token, owner, key, since, mode, value })
    }

    /// Writes this record over the file's contents.
    ///
    /// Overwrites in place, then cuts off what is left of a longer old
    /// record. Not flushed to disk: the token was made durable by the counter
    /// before this is written, and the rest only informs `inspect`.
    pub(crate) fn write(&self, file: &File) -> std::io::Result<()> {
        let mode = match self.mode {
            LockMode::Semaphore { limit } => format!("semaphore {limit}"),
            LockMode::Exclusive => String::new(),
            other => other.name().to_owned(),
        };
        let value = self.value.as_deref().map(|value| format!("={}\n", escape(value))).unwrap_or_default();
        let text = format!("{}\n{}\n{}\n{}\n{mode}\n{value}", self.token, self.owner, self.key, self.since);
        file.write_all_at(text.as_bytes(), 0)?;
        file.set_len(text.len() as u64)
    }

    pub(crate) fn fencing_token(&self) -> FencingToken {
        FencingToken::new(self.token)
    }

    /// When the holder was granted the lock.
    /// What `holders` reports of this grant.
    pub(crate) fn info(&self) -> LockInfo {
        let mut info = LockInfo::new(self.owner.clone(), self.fencing_token()).with_mode(self.mode);
        if let Some(since) = self.held_since() {
            info = info.with_held_since(since);
        }
        match &self.value {
            Some(value) => info.with_value(value.clone()),
            None => info,
        }
    }

    pub(crate) fn held_since(&self) -> Option<std::time::SystemTime> {
        (self.since > 0).then(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.since))
    }

    /// Now, as Unix seconds.
    pub(crate) fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

/// A value on one line: `%`, line feeds and carriage returns as `%XX`.
fn escape(value: &str) -> String {
    value.replace('%', "%25").replace('\n', "%0A").replace('\r', "%0D")
}

fn unescape(line: &str) -> String {
    line.replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shorter_record_replaces_a_longer_one_whole() {
        let path = std::env::temp_dir().join(format!("lock-file-record-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        let long = Record {
            token: 123456,
            owner: "a long owner name".into(),
            key: "k".into(),
            since: 99,
            mode: LockMode::Exclusive,
            value: None,
        };
        let short = Record {
            token: 7,
            owner: "b".into(),
            key: "k".into(),
            since: 1,
            mode: LockMode::Semaphore { limit: std::num::NonZeroU32::MIN.saturating_add(2) },
            value: Some("10.0.0.1:80\n100% {\"a\":1}".into()),
        };
        long.write(&file).unwrap_or_else(|e| panic!("{e}"));
        short.write(&file).unwrap_or_else(|e| panic!("{e}"));
        let read = Record::read(&file).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_file(&path);
        assert_eq!(read, short);
    }
}
