//! `distlock exec --events FILE|-`: one JSON line per event of the run, for
//! log pipelines. Each line has `ts` (RFC 3339, UTC, milliseconds), `event`,
//! `key`, `pid` (distlock's) and the event's own fields:
//!
//! | event | fields | when |
//! |---|---|---|
//! | `waiting` | `mode` | distlock asks for the lock (and waits unless `--no-wait`) |
//! | `acquired` | `token`, `waited_ms` | the lock is held; the command starts next |
//! | `not-acquired` | `reason` | `--no-wait` found it held, `--wait` ran out, or acquiring failed |
//! | `command-started` | `command_pid` | the command runs |
//! | `lost` | `reason`, `cause` | the lock was lost while the command ran (`cause`: `revoked`, `session_ended`, `not_confirmed`), or is about to be (`expiring`: not renewed in time, the command is being stopped) |
//! | `command-exited` | `code` or `signal` | the command ended |
//! | `released` | `ok`, `held_ms` | distlock released the lock (`ok` false: it was lost or the release failed) |
//!
//! A line is written and flushed in one piece as the event happens; a write
//! that fails (a full disk, a closed pipe) is reported once on stderr and
//! never stops the command.

use std::io::Write;
use std::time::{Instant, SystemTime};

use serde_json::Value;

/// Where events go: nowhere, stdout, or a file (appended).
pub struct Events {
    sink: Option<Box<dyn Write + Send>>,
    key: String,
    failed: bool,
}

impl Events {
    /// Events for `key` into `target` (`-` is stdout; `None`, nowhere).
    ///
    /// # Errors
    /// When the file cannot be opened for appending.
    pub fn open(target: Option<&str>, key: &str) -> std::io::Result<Self> {
        let sink: Option<Box<dyn Write + Send>> = match target {
            None => None,
            Some("-") => Some(Box::new(std::io::stdout())),
            Some(path) => Some(Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)),
        };
        Ok(Self { sink, key: key.to_owned(), failed: false })
    }

    /// Writes `event` with `fields` (an object) as one line.
    pub fn emit(&mut self, event: &str, fields: Value) {
        let Some(sink) = self.sink.as_mut() else { return };
        // By hand, so that every line starts with its time and event.
        let mut text = format!(
            "{{\"ts\":{},\"event\":{},\"key\":{},\"pid\":{}",
            Value::String(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
            Value::String(event.to_owned()),
            Value::String(self.key.clone()),
            std::process::id()
        );
        if let Value::Object(fields) = fields {
            for (name, value) in fields {
                text.push_str(&format!(",{}:{value}", Value::String(name)));
            }
        }
        text.push_str("}\n");
        if let Err(error) = sink.write_all(text.as_bytes()).and_then(|()| sink.flush())
            && !self.failed
        {
            self.failed = true;
            eprintln!("distlock: cannot write events: {error}");
        }
    }
}

/// Milliseconds since `since`, for `waited_ms` and `held_ms`.
pub fn millis_since(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
