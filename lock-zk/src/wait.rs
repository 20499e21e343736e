//! Waiting for a queued node's turn, in every mode: list the queue, watch
//! only the node that stands in the way (no herd on release), look again
//! when it changes.

use std::time::Duration;

use lock_core::{ClientSession, LockError, LockKey, LostReason};
use tokio::time::Instant;
use zookeeper_client::EventType;

use crate::BACKEND;
use crate::client::Session;
use crate::queue::Queue;

/// Whether the key was free at the first look at the queue.
pub(crate) enum Waited {
    AtOnce,
    AfterWaiting,
}

/// What one look at the queue found.
enum Turn {
    /// Ours at this look: nothing stands in the way.
    Mine,
    /// Ours after waiting: the last node in the way has gone.
    Succeeded,
    /// Look again.
    NotYet,
}

/// Waits until our node `name` in `dir` holds `key` (see
/// [`reader_writer`](crate::reader_writer) for who waits on whom), or the
/// deadline passes, or the session ends. `listed`: the directory's children
/// as listed right behind our create, for the first look.
///
/// Cancel safe: it only reads and watches; the caller's
/// [`Attempt`](crate::attempt::Attempt) owns the node.
pub(crate) async fn wait_for_turn(
    session: &Session,
    key: &LockKey,
    (dir, name): (&str, &str),
    deadline: Option<Instant>,
    started: Instant,
    mut listed: Option<Vec<String>>,
) -> Result<Waited, LockError> {
    let mut waited = Waited::AtOnce;
    loop {
        match turn(session, key, (dir, name), listed.take(), (deadline, started)).await {
            // Disconnected, but the session may live on (Curator's
            // SUSPENDED): keep waiting until it is known ended or the
            // deadline passes.
            Err(LockError::Unavailable { .. }) => {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = session.ended().fired() => return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded)),
                    () = lock_core::deadline_passed(deadline) => return Err(LockError::timeout(BACKEND, key, started)),
                }
            }
            Ok(Turn::Mine) => return Ok(waited),
            Ok(Turn::Succeeded) => return Ok(Waited::AfterWaiting),
            Ok(Turn::NotYet) => {}
            Err(error) => return Err(error),
        }
        waited = Waited::AfterWaiting;
    }
}

/// One look at the queue (`listed`, or listed now): ours, or wait for the
/// node in the way to change.
async fn turn(
    session: &Session,
    key: &LockKey,
    (dir, name): (&str, &str),
    listed: Option<Vec<String>>,
    (deadline, started): (Option<Instant>, Instant),
) -> Result<Turn, LockError> {
    let children = match listed {
        Some(children) => children,
        None => session.call(key, "list contenders", session.client.list_children(dir)).await?,
    };
    let queue = Queue::seen_by(session, dir, &children);
    let Some(position) = queue.position(name) else {
        let reason = if session.ended().is_fired() { LostReason::SessionEnded } else { LostReason::Revoked };
        return Err(LockError::lost(BACKEND, key, reason));
    };
    let Some(blocker) = queue.blocker(position) else { return Ok(Turn::Mine) };
    // When the blocker is the last node in the way, its end is our turn
    // with no listing to confirm it. This is every hand-off from a holder to
    // the next waiter. The grant then reads our own node, which also proves
    // it still exists.
    let turn_when_gone = if blocker.last { Turn::Succeeded } else { Turn::NotYet };
    let watched = format!("{dir}/{}", blocker.name);
    let (stat, watcher) =
        session.call(key, "watch the node in the way", session.client.check_and_watch_stat(&watched)).await?;
    if stat.is_none() {
        return Ok(turn_when_gone);
    }
    tokio::select! {
        event = watcher.changed() => {
            Ok(if event.event_type == EventType::NodeDeleted { turn_when_gone } else { Turn::NotYet })
        }
        _ = session.ended().fired() => Err(LockError::lost(BACKEND, key, LostReason::SessionEnded)),
        () = lock_core::deadline_passed(deadline) => Err(LockError::timeout(BACKEND, key, started)),
    }
}

/// One look at the queue, without waiting: whether our node `name` in `dir`
/// holds now (see [`reader_writer`](crate::reader_writer)). `listed`: the
/// directory's children as listed right behind our create; listed now when
/// there is none.
pub(crate) async fn first_in_line(
    session: &Session,
    key: &LockKey,
    dir: &str,
    name: &str,
    listed: Option<Vec<String>>,
) -> Result<bool, LockError> {
    let children = match listed {
        Some(children) => children,
        None => session.call(key, "list contenders", session.client.list_children(dir)).await?,
    };
    let queue = Queue::seen_by(session, dir, &children);
    Ok(queue.position(name).is_some_and(|position| queue.blocker(position).is_none()))
}
