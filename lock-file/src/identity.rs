//! Which file a path names: a held lock is only worth anything while its
//! path still names the very file that is locked.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A file's identity on this machine (device and inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of an open file.
    pub(crate) fn of(file: &File) -> std::io::Result<Self> {
        file.metadata().map(|meta| Self { dev: meta.dev(), ino: meta.ino() })
    }

    /// The identity of the file `path` names now; `None` when it names none
    /// or cannot be looked up, which callers must treat as "not ours": a lock
    /// we cannot prove is still at its path is not a lock.
    pub(crate) fn at(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|meta| Self { dev: meta.dev(), ino: meta.ino() })
    }

    /// Whether `path` still names this file.
    pub(crate) fn is_at(self, path: &Path) -> bool {
        Self::at(path) == Some(self)
    }
}

/// Whether `path` names the open `file`.
pub(crate) fn same_file(file: &File, path: &Path) -> bool {
    FileId::of(file).is_ok_and(|id| id.is_at(path))
}
