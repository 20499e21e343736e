//! The live "waiting for the lock" line on a terminal.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use distlock::Locks;
use tokio::time::{Instant, interval_at};

/// Redraws one status line on stderr every second while the future it is
/// raced against runs, when stderr is a terminal; does nothing otherwise.
pub async fn show_waiting(locks: &Locks, key: &str) {
    let mut stderr = std::io::stderr();
    if !stderr.is_terminal() {
        return std::future::pending().await;
    }
    let started = Instant::now();
    // The first line after a second, so that a lock granted at once draws
    // nothing.
    let mut tick = interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tick.tick().await;
        let holder = match locks.inspect(key).await {
            Ok(Some(info)) => format!("held by {} (token {})", info.owner, info.token),
            Ok(None) => "free, being handed over".to_owned(),
            Err(_) => "holder unknown".to_owned(),
        };
        let waited = started.elapsed().as_secs();
        let _ = write!(stderr, "\r\x1b[2Kdistlock: waiting for {key}: {holder}, {waited}s");
        let _ = stderr.flush();
    }
}

/// Clears the status line, if one was drawn.
pub fn clear() {
    let mut stderr = std::io::stderr();
    if stderr.is_terminal() {
        let _ = write!(stderr, "\r\x1b[2K");
        let _ = stderr.flush();
    }
}
