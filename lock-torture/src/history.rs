//! What happened, one JSON line per event, one file per writer: each worker
//! incarnation, the fenced register and the nemesis.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One recorded event, stamped with [`crate::clock::now`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic nanoseconds.
    pub at: u64,
    /// Who recorded it: `w3`, `register`, `nemesis`.
    pub by: String,
    /// What.
    #[serde(flatten)]
    pub kind: Kind,
}

/// The kinds of event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Kind {
    /// A worker process started (its pid, for the nemesis).
    Started { pid: u32 },
    /// A worker was granted `key` with `token`.
    Granted { key: String, token: u64 },
    /// A worker learned that its lock is lost, before its next write.
    Lost { key: String, token: u64, reason: String },
    /// A worker released `key`; `ok` is false when release said it was lost.
    Released { key: String, token: u64, ok: bool },
    /// An acquire failed (timeout, unavailable): the worker tries again.
    AcquireFailed { key: String, error: String },
    /// The register received a write (accepted or rejected as stale);
    /// `worker` is the writing incarnation's `w1#2`.
    Write { key: String, token: u64, worker: String, accepted: bool },
    /// The nemesis injected a fault.
    Fault { fault: String, target: String },
    /// The nemesis healed the fault it last injected.
    Healed { fault: String },
    /// A worker process died or was killed (recorded by the campaign once
    /// it, and in exec mode its `distlock exec`, are gone).
    Died {
        worker: String,
        /// Which incarnation of the worker died.
        #[serde(default)]
        incarnation: usize,
    },
}

/// Appends events to one file, flushing each so a killed process loses none
/// it had recorded.
pub struct Recorder {
    by: String,
    file: std::fs::File,
}

impl Recorder {
    /// Records as `by` into `path` (appended).
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path, by: &str) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { by: by.to_owned(), file })
    }

    /// Records `kind` now.
    pub fn record(&mut self, kind: Kind) {
        self.record_at(crate::clock::now(), kind);
    }

    /// Records `kind` at `at`.
    pub fn record_at(&mut self, at: u64, kind: Kind) {
        let event = Event { at, by: self.by.clone(), kind };
        if let Ok(mut line) = serde_json::to_vec(&event) {
            line.push(b'\n');
            // One write per line: lines of one file never interleave.
            let _ = self.file.write_all(&line);
        }
    }
}

/// Reads every `*.jsonl` file in `dir`, merged and sorted by time.
///
/// # Errors
/// When the directory or a file cannot be read.
pub fn read_dir(dir: &Path) -> std::io::Result<Vec<Event>> {
    let mut events = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            let reader = std::io::BufReader::new(std::fs::File::open(&path)?);
            // A line cut short by a kill is skipped.
            events.extend(reader.lines().map_while(Result::ok).filter_map(|l| serde_json::from_str::<Event>(&l).ok()));
        }
    }
    events.sort_by_key(|e| e.at);
    Ok(events)
}
