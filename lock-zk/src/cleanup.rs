//! Deleting the nodes this client no longer wants (a withdrawn or cancelled
//! attempt's, a release's that went unanswered) until ZooKeeper confirms
//! they are gone.
//!
//! One try is not enough. A delete lost with its connection leaves the node
//! queued for as long as its session lives, which for a client that
//! reconnects means for good: every later contender of the key waits behind
//! it, this client's own next attempt included. So the delete is retried with
//! backoff until it succeeds, ZooKeeper answers NoNode, or the session has
//! ended (its ephemeral nodes end with it). A request sent while the client
//! is disconnected waits for the next connection, so the retry goes out as
//! soon as the client is back in its session.
//!
//! Until then the node is recorded as withdrawn in its session, and this
//! client's later attempts on the key do not queue behind it (see
//! [`Withdrawn`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lock_core::ClientSession;
use tracing::{debug, warn};
use zookeeper_client::Error;

use crate::client::Session;

/// The pause before the first retry; it doubles up to [`LAST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const LAST_PAUSE: Duration = Duration::from_secs(2);

/// What a cleanup deletes.
pub(crate) enum Leftover {
    /// The node at this path.
    Node(String),
    /// The node a create may have made though its answer was lost: found by
    /// its unique name.
    Unconfirmed,
    /// What a create still in flight leaves once it ends (`None`: nothing,
    /// the server refused it).
    Creating(Pin<Box<dyn Future<Output = Option<Leftover>> + Send>>),
}

/// The nodes a session is still deleting, as (lock directory, node name or
/// its unique prefix `_c_{guid}-{marker}`).
///
/// A later attempt of the same session skips them when it looks for its
/// turn. That is safe: they are this client's own nodes, given up for good
/// (never granted, or released) and on their way out; every other client
/// still queues behind them, so they only ever hold others back, never let
/// anyone in. Without it, a node whose
/// delete waits out a backoff would stand between this client and a lock no
/// one holds.
#[derive(Debug, Default)]
pub(crate) struct Withdrawn(Arc<Mutex<Vec<(String, String)>>>);

impl Withdrawn {
    /// Whether `child` of `dir` is a node this session is deleting.
    pub(crate) fn contains(&self, dir: &str, child: &str) -> bool {
        lock(&self.0).iter().any(|(withdrawn_dir, name)| withdrawn_dir == dir && child.starts_with(name.as_str()))
    }

    fn enter(&self, dir: &str, name: &str) -> Entry {
        let item = (dir.to_owned(), name.to_owned());
        lock(&self.0).push(item.clone());
        Entry { registry: Arc::clone(&self.0), item }
    }
}

fn lock(registry: &Mutex<Vec<(String, String)>>) -> MutexGuard<'_, Vec<(String, String)>> {
    // The list stays consistent whatever panicked while holding it.
    registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A node's place in [`Withdrawn`], given up when its cleanup ends.
struct Entry {
    registry: Arc<Mutex<Vec<(String, String)>>>,
    item: (String, String),
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut withdrawn = lock(&self.registry);
        if let Some(position) = withdrawn.iter().position(|item| *item == self.item) {
            withdrawn.swap_remove(position);
        }
    }
}

/// Deletes `leftover`, a node named `name` (or with that unique prefix) in
/// `dir`, until it is gone or the session has ended; to be spawned.
///
/// The node counts as withdrawn from the moment of the call, so an attempt
/// started right after it does not queue behind it. The cleanup holds no
/// strong reference to the session between tries: a session nobody else
/// uses any more is closed, and its nodes go with it.
pub(crate) fn delete_until_gone(
    session: &Arc<Session>,
    dir: String,
    name: String,
    leftover: Leftover,
) -> impl Future<Output = ()> + Send + 'static {
    let entry = session.withdrawn.enter(&dir, &name);
    let session = Arc::downgrade(session);
    async move {
        let _entry = entry;
        let mut leftover = leftover;
        let mut target = loop {
            leftover = match leftover {
                Leftover::Node(path) => break Some(path),
                Leftover::Unconfirmed => break None,
                Leftover::Creating(creating) => match creating.await {
                    Some(created) => created,
                    None => return,
                },
            };
        };
        let (mut pause, mut warned) = (FIRST_PAUSE, false);
        loop {
            let Some(session) = session.upgrade() else { return };
            let ended = session.ended().clone();
            if ended.is_fired() {
                return;
            }
            let step = match &target {
                Some(path) => session.client.delete(path, None).await.map(|()| None),
                // Unknown outcome: look for our unique name.
                None => session.client.list_children(&dir).await.map(|children| {
                    children.into_iter().find(|child| child.starts_with(&name)).map(|child| format!("{dir}/{child}"))
                }),
            };
            drop(session);
            match step {
                // Deleted, or nothing of ours there (NoNode: not even the directory).
                Ok(None) | Err(Error::NoNode) => return,
                Ok(Some(found)) => {
                    debug!(path = found, "deleting the node of an attempt whose create went unanswered");
                    target = Some(found);
                    continue;
                }
                // The session is over, and its ephemeral nodes with it.
                Err(Error::SessionExpired | Error::ClientClosed | Error::AuthFailed) => return,
                // Connection trouble (Custom carries the client's own "no
                // response from connection"), or the server shedding load.
                Err(
                    error @ (Error::ConnectionLoss
                    | Error::Timeout
                    | Error::NoHosts
                    | Error::SessionMoved
                    | Error::Throttled
                    | Error::Custom(_)),
                ) => debug!(dir, name, %error, "deleting our node failed; retrying"),
                Err(error) if warned => debug!(dir, name, %error, "deleting our node failed again; retrying"),
                Err(error) => {
                    warn!(dir, name, %error, "deleting our node failed; retrying while the session lives");
                    warned = true;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = ended.fired() => return,
            }
            pause = (pause * 2).min(LAST_PAUSE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawn_nodes_match_by_directory_and_name_until_their_cleanup_ends() {
        let withdrawn = Withdrawn::default();
        let entry = withdrawn.enter("/b/k", "_c_1-lock-");
        let again = withdrawn.enter("/b/k", "_c_1-lock-");
        assert!(withdrawn.contains("/b/k", "_c_1-lock-0000000003"));
        assert!(!withdrawn.contains("/b/k", "_c_2-lock-0000000004"));
        assert!(!withdrawn.contains("/b/other", "_c_1-lock-0000000003"));
        drop(entry);
        assert!(withdrawn.contains("/b/k", "_c_1-lock-0000000003"), "one cleanup ended, the other still runs");
        drop(again);
        assert!(!withdrawn.contains("/b/k", "_c_1-lock-0000000003"));
    }
}
