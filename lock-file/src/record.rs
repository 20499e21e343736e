//! What a lock file holds: its fencing counter, the holder's owner string
//! (empty when free), its key, and when the holder was granted it (Unix
//! seconds).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use lock_core::FencingToken;

/// The parsed contents of a lock file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) token: u64,
    pub(crate) owner: String,
    pub(crate) key: String,
    pub(crate) since: u64,
}

impl Record {
    /// Reads the record; an empty or foreign file reads as token 0.
    pub(crate) fn read(file: &mut File) -> std::io::Result<Self> {
        let mut text = String::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_string(&mut text)?;
        let mut lines = text.lines();
        let token = lines.next().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
        let owner = lines.next().unwrap_or_default().to_owned();
        let key = lines.next().unwrap_or_default().to_owned();
        let since = lines.next().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Ok(Self { token, owner, key, since })
    }

    /// Replaces the file's contents with this record and flushes it to disk,
    /// so a token is never handed out twice, even across a crash.
    pub(crate) fn write(&self, file: &mut File) -> std::io::Result<()> {
        let text = format!("{}\n{}\n{}\n{}\n", self.token, self.owner, self.key, self.since);
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(text.as_bytes())?;
        file.sync_data()
    }

    pub(crate) fn fencing_token(&self) -> FencingToken {
        FencingToken::new(self.token)
    }

    /// When the holder was granted the lock.
    pub(crate) fn held_since(&self) -> Option<std::time::SystemTime> {
        (self.since > 0).then(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.since))
    }

    /// Now, as Unix seconds.
    pub(crate) fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}
