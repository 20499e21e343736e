//! The durable high-water mark of the fencing tokens a lock directory has
//! issued, kept apart from the lock files.
//!
//! A lock file can be deleted (by a tmp cleaner or an operator), replaced,
//! emptied, or left half-written by a crash, and a new one starts empty; a
//! token kept only there would start again at 1. So every token is first
//! recorded in `{dir}/.distlock-tokens/issued`, one mark for all keys of the
//! directory, and only then handed out. The next token is one more than the
//! larger of the mark and the token in the key's lock file, which carries
//! the count on where the directory was used before the mark existed, or
//! the mark was removed.
//!
//! Issuing a token, under an exclusive `flock` of the `.distlock-tokens`
//! directory: read the mark, write the new one to `issued.tmp`, fsync it,
//! rename it over `issued`, fsync the directory. The rename swaps the whole
//! mark in one step, so a crash leaves the old mark or the new one, never a
//! torn one, and the fsyncs put the new mark on disk before the token leaves.
//! The directory is the lock, not a file in it, because a file can be
//! deleted and created again while it is locked, letting a second issuer in
//! (the very fault this module exists for); a directory holding the mark
//! cannot be swapped for another without first removing the mark.
//!
//! One mark per directory rather than per key: grants of all keys of a
//! directory take turns for the two fsyncs, and tokens of one key then jump
//! by the grants of others in between, which fencing allows (they still
//! strictly increase). Within a client, grants that arrive while a mark is
//! being written share the next write (a group commit): it advances the mark
//! by their number and each gets one of the tokens it covers, so a thousand
//! concurrent grants cost a few fsyncs, not a thousand.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// The directory holding the mark, inside the lock directory. Lock file
/// names never start with a dot, so it cannot be taken for one.
const STATE_DIR: &str = ".distlock-tokens";
/// The mark: the last token issued, in decimal, and a newline.
const MARK: &str = "issued";
/// Where the next mark is written before it replaces the current one.
const NEXT: &str = "issued.tmp";

/// The high-water mark of one lock directory. Clones share their group
/// commits.
#[derive(Debug, Clone)]
pub(crate) struct TokenCounter {
    dir: PathBuf,
    group: Arc<Group>,
}

/// The issuers of one client waiting for a mark to be written.
#[derive(Debug, Default)]
struct Group {
    state: Mutex<GroupState>,
    written: Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    /// The batch new issuers join.
    open: Batch,
    /// Whether an issuer is writing a batch now.
    writing: bool,
}

/// Issuers served by one write of the mark.
#[derive(Debug, Default)]
struct Batch {
    members: u64,
    floor: u64,
    /// The token before the batch's first one, once written; an error's
    /// kind and message, since every member reports it.
    outcome: Arc<OnceLock<Result<u64, (ErrorKind, String)>>>,
}

impl TokenCounter {
    /// The counter of the lock directory `lock_dir`.
    pub(crate) fn new(lock_dir: &Path) -> Self {
        Self { dir: lock_dir.join(STATE_DIR), group: Arc::default() }
    }

    /// The file holding the mark, for error messages.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(MARK)
    }

    /// Creates the counter's directory if missing, durably.
    pub(crate) fn prepare(&self) -> std::io::Result<()> {
        match std::fs::create_dir(&self.dir) {
            Ok(()) => match self.dir.parent() {
                // Make the new directory's entry survive a crash too.
                Some(parent) => File::open(parent)?.sync_all(),
                None => Ok(()),
            },
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Issues a token greater than every token issued before from this
    /// directory and greater than `floor`, and records it on disk before
    /// returning it. Blocks: call it off the async runtime.
    ///
    /// # Errors
    /// Any I/O error, or a mark that is not a number (the counter refuses to
    /// guess: a guess could repeat a token).
    pub(crate) fn issue(&self, floor: u64) -> std::io::Result<u64> {
        let mut state = lock(&self.group.state);
        let index = state.open.members;
        state.open.members += 1;
        state.open.floor = state.open.floor.max(floor);
        let outcome = Arc::clone(&state.open.outcome);
        loop {
            if let Some(outcome) = outcome.get() {
                return match outcome {
                    Ok(before) => Ok(before + index + 1),
                    Err((kind, message)) => Err(std::io::Error::new(*kind, message.clone())),
                };
            }
            if !state.writing {
                // Our batch is still the open one: a batch is only closed by
                // the writer that then sets its outcome. Write it.
                state.writing = true;
                let batch = std::mem::take(&mut state.open);
                drop(state);
                let written = self.advance(batch.members, batch.floor).map_err(|e| (e.kind(), e.to_string()));
                let _ = batch.outcome.set(written);
                state = lock(&self.group.state);
                state.writing = false;
                self.group.written.notify_all();
                continue;
            }
            state = self.group.written.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Advances the mark by `count` tokens above `floor` and returns the mark
    /// before them.
    fn advance(&self, count: u64, floor: u64) -> std::io::Result<u64> {
        self.prepare()?;
        let state = File::open(&self.dir)?;
        // Released when `state` is closed, on every path out of here.
        state.lock()?;
        let before = self.read()?.max(floor);
        let mark = before
            .checked_add(count)
            .ok_or_else(|| std::io::Error::other(format!("{}: fencing tokens exhausted", self.path().display())))?;
        let next = self.dir.join(NEXT);
        let mut file = File::create(&next)?;
        file.write_all(format!("{mark}\n").as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&next, self.path())?;
        // The rename is durable only once the directory is.
        state.sync_all()?;
        Ok(before)
    }

    /// The mark; 0 when there is none yet.
    fn read(&self) -> std::io::Result<u64> {
        let text = match std::fs::read_to_string(self.path()) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        text.trim_end_matches('\n').parse().map_err(|_| {
            std::io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "{} holds {text:?}, not a token count; refusing to issue tokens that could repeat \
                     (restore it, or remove it to continue above the lock files' own tokens)",
                    self.path().display()
                ),
            )
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lock-file-counter-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn issue(counter: &TokenCounter, floor: u64) -> u64 {
        counter.issue(floor).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn issues_increasing_tokens_above_the_floor() {
        let dir = Dir::new("increasing");
        let counter = TokenCounter::new(&dir.0);
        assert_eq!((issue(&counter, 0), issue(&counter, 0)), (1, 2));
        assert_eq!(issue(&counter, 10), 11);
        assert_eq!(issue(&counter, 3), 12, "a lower floor must not lower the mark");
        assert_eq!(issue(&TokenCounter::new(&dir.0), 0), 13, "a second counter on the directory shares the mark");
    }

    #[test]
    fn a_crash_while_writing_the_next_mark_leaves_the_mark_alone() {
        let dir = Dir::new("crash");
        let counter = TokenCounter::new(&dir.0);
        assert_eq!(issue(&counter, 0), 1);
        // A crash before the rename leaves a partial `issued.tmp` behind.
        std::fs::write(counter.dir.join(NEXT), b"99").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(issue(&counter, 0), 2);
        assert!(!counter.dir.join(NEXT).exists(), "the next mark is never left beside the mark");
    }

    #[test]
    fn a_corrupt_mark_is_refused_not_restarted() {
        let dir = Dir::new("corrupt");
        let counter = TokenCounter::new(&dir.0);
        assert_eq!(issue(&counter, 0), 1);
        std::fs::write(counter.path(), b"").unwrap_or_else(|e| panic!("{e}"));
        let refused = counter.issue(0);
        assert!(refused.as_ref().is_err_and(|e| e.kind() == ErrorKind::InvalidData), "{refused:?}");
    }

    #[test]
    fn a_removed_counter_continues_above_the_floor() {
        let dir = Dir::new("removed");
        let counter = TokenCounter::new(&dir.0);
        assert_eq!(issue(&counter, 0), 1);
        std::fs::remove_dir_all(&counter.dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(issue(&counter, 7), 8);
    }

    #[test]
    fn concurrent_issuers_never_share_a_token() {
        let dir = Dir::new("concurrent");
        let issued = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    let counter = TokenCounter::new(&dir.0);
                    for _ in 0..25 {
                        let token = issue(&counter, 0);
                        issued.lock().unwrap_or_else(|p| p.into_inner()).push(token);
                    }
                });
            }
        });
        let mut issued = issued.into_inner().unwrap_or_else(|p| p.into_inner());
        issued.sort_unstable();
        assert_eq!(issued, (1..=100).collect::<Vec<_>>());
    }

    #[test]
    fn a_group_commit_issues_distinct_tokens_all_recorded() {
        let dir = Dir::new("group");
        let counter = TokenCounter::new(&dir.0);
        let issued = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for floor in 0..16 {
                let (counter, issued) = (counter.clone(), &issued);
                scope.spawn(move || {
                    for _ in 0..10 {
                        let token = issue(&counter, floor);
                        assert!(token > floor, "token {token} not above its floor {floor}");
                        let mark = counter.read().unwrap_or_else(|e| panic!("{e}"));
                        assert!(mark >= token, "token {token} handed out before the mark ({mark}) covered it");
                        issued.lock().unwrap_or_else(|p| p.into_inner()).push(token);
                    }
                });
            }
        });
        let mut issued = issued.into_inner().unwrap_or_else(|p| p.into_inner());
        let count = issued.len();
        issued.sort_unstable();
        issued.dedup();
        assert_eq!(issued.len(), count, "a token was issued twice");
    }
}
