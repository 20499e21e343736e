//! Waiting that the mutex and the reader/writer recipe share.

use std::time::Duration;

use lock_core::{ClientSession, LockError, LockKey, LostReason};
use tokio::time::{Instant, sleep};

use crate::BACKEND;
use crate::session::Session;

/// A backoff pause (during a lock delay or an outage), cut short by the
/// session's end or the deadline; doubles `pause` up to a second.
///
/// # Errors
/// [`LockError::Lost`] when the session ends, [`LockError::Timeout`] at the
/// deadline.
pub(crate) async fn pause_or_give_up(
    key: &LockKey,
    session: &Session,
    pause: &mut Duration,
    deadline: Option<Instant>,
    started: Instant,
) -> Result<(), LockError> {
    tokio::select! {
        () = sleep(*pause) => {}
        _ = session.ended().fired() => return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded)),
        () = lock_core::deadline_passed(deadline) => return Err(LockError::timeout(BACKEND, key, started)),
    }
    *pause = (*pause * 2).min(Duration::from_secs(1));
    Ok(())
}
