//! Leader election, node for node Apache Curator 5.x's `LeaderSelector`: an
//! `InterProcessMutex` whose contender nodes carry the participant id as
//! their data, the leader being the first node by sequence.
//!
//! Our mutex is that mutex, so an election is a mutex acquisition with a
//! value ([`LockOptions::value`](lock_core::LockOptions::value)): the value
//! is written as the node's data, where Curator's `getLeader().getId()` and
//! `getParticipants()` read it, and a Curator participant's id is what
//! [`inspect`](lock_core::DistributedLock::inspect) reports as the leader's
//! value. A node holds one string, so without a value the node's data is
//! the owner string (Curator's default is the client's IP address), and
//! `inspect` reports a node's data as both its owner and its value.
//! `proclaim` replaces the data of the leader's own node.
//!
//! [`watch`] follows the leader with ZooKeeper watches: a children watch on
//! the lock directory (or an existence watch while there is none) and a
//! data watch on the first node, set again on every look.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    ClientSession, LeaderIdentity, LeaderStream, LockError, LockInfo, LockKey, LostReason, SessionSlot, leader_identity,
};
use tracing::debug;
use zookeeper_client::{Error, OneshotWatcher};

use crate::client::Session;
use crate::grant;
use crate::layout::{NodeKind, lock_path};
use crate::lock::is;
use crate::queue::Queue;
use crate::{BACKEND, ZkConfig};

/// The pause before looking again after a failed look; it doubles up to
/// [`LAST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LAST_PAUSE: Duration = Duration::from_secs(2);

/// The data of a mutex-layout node (mutex, read or write): the published
/// value when there is one (Curator's participant id), else the owner.
pub(crate) fn node_data(owner: &str, value: Option<&str>) -> Vec<u8> {
    value.unwrap_or(owner).as_bytes().to_vec()
}

/// Who holds the mutex-layout node `name` of `kind`, created at `czxid`,
/// from its data.
/// Its data (a text one) is both its owner and its value; a node without
/// text data is named by its node name.
pub(crate) fn holder_info(name: &str, kind: NodeKind, data: &[u8], czxid: i64) -> LockInfo {
    let text = std::str::from_utf8(data).ok().filter(|text| !text.is_empty());
    let info = LockInfo::new(text.unwrap_or(name), grant::token(czxid)).with_mode(kind.mode());
    with_value(info, text.map(str::to_owned))
}

/// `info` with `value`, if there is one.
pub(crate) fn with_value(info: LockInfo, value: Option<String>) -> LockInfo {
    match value {
        Some(value) => info.with_value(value),
        None => info,
    }
}

/// The leaders of `key`, pushed by ZooKeeper watches on the client's
/// session (taken from `sessions`, opened with `config` when ZooKeeper has
/// ended the last): the current one first, then each change of leader or
/// value. A failed look is reported once as an error item, and looked at
/// again after a pause; the next answer is then reported whatever it is.
/// The stream never ends by itself.
pub(crate) fn watch(sessions: Arc<SessionSlot<Session>>, config: ZkConfig, key: LockKey) -> LeaderStream {
    let dir = lock_path(config.base_path_value(), &key);
    let observer = Observer { sessions, config, key, dir, reported: None, pending: None, pause: None, failing: false };
    Box::pin(futures_util::stream::unfold(observer, |mut observer| async move {
        let next = observer.next().await;
        Some((next, observer))
    }))
}

/// One observer's state between items.
struct Observer {
    sessions: Arc<SessionSlot<Session>>,
    config: ZkConfig,
    key: LockKey,
    dir: String,
    /// The last leader reported; `None` before the first and after an error.
    reported: Option<LeaderIdentity>,
    /// The watches the last look set, to wait on before the next.
    pending: Option<Watches>,
    /// The pause before the next look, after a failed one.
    pause: Option<Duration>,
    /// Whether the failure of the last look was reported.
    failing: bool,
}

/// The watches of one look, and the session they live on.
struct Watches {
    session: Arc<Session>,
    /// On the directory's children, or on its creation while it is missing.
    directory: OneshotWatcher,
    /// On the leader's data (and deletion).
    leader: Option<OneshotWatcher>,
}

impl Observer {
    /// The next item: a changed leader, or an error.
    async fn next(&mut self) -> Result<Option<LockInfo>, LockError> {
        loop {
            self.settle().await;
            match self.look().await {
                Ok((leader, watches)) => {
                    self.pending = Some(watches);
                    (self.pause, self.failing) = (None, false);
                    let seen = leader_identity(&leader);
                    if self.reported.as_ref() != Some(&seen) {
                        self.reported = Some(seen);
                        return Ok(leader);
                    }
                }
                Err(error) => {
                    self.pause = Some(self.pause.map_or(FIRST_PAUSE, |pause| (pause * 2).min(LAST_PAUSE)));
                    self.reported = None;
                    if !self.failing {
                        self.failing = true;
                        return Err(error);
                    }
                    debug!(key = %self.key, %error, "observing the leader failed again; retrying");
                }
            }
        }
    }

    /// Waits for what comes before the next look: the pause after a
    /// failure, or a change the last look's watches report (or the end of
    /// their session).
    async fn settle(&mut self) {
        if let Some(pause) = self.pause {
            tokio::time::sleep(pause).await;
            return;
        }
        let Some(Watches { session, directory, leader }) = self.pending.take() else { return };
        let leader = async {
            match leader {
                Some(leader) => drop(leader.changed().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = directory.changed() => {}
            () = leader => {}
            _ = session.ended().fired() => {}
        }
    }

    /// The current leader and the watches that report its change.
    async fn look(&self) -> Result<(Option<LockInfo>, Watches), LockError> {
        let key = &self.key;
        let session = self.sessions.get_or_start(|| Session::start(&self.config, Some(key))).await?;
        let looked = self.look_on(&session).await;
        if let Err(error) = &looked
            && error.is_lost()
        {
            // ZooKeeper ended the session before the client noticed: the
            // next look opens a new one.
            session.ended().fire(LostReason::SessionEnded);
        }
        looked
    }

    async fn look_on(&self, session: &Arc<Session>) -> Result<(Option<LockInfo>, Watches), LockError> {
        let (key, dir) = (&self.key, self.dir.as_str());
        loop {
            let listing = session.client.list_and_watch_children(dir);
            let (children, directory) = match session.call(key, "list contenders", listing).await {
                Ok(listed) => listed,
                Err(error) if is(&error, &Error::NoNode) => {
                    let exists = session.client.check_and_watch_stat(dir);
                    match session.call(key, "watch for the lock directory", exists).await? {
                        // Made since the listing: look again.
                        (Some(_), _) => continue,
                        (None, created) => {
                            return Ok((
                                None,
                                Watches { session: Arc::clone(session), directory: created, leader: None },
                            ));
                        }
                    }
                }
                Err(error) => return Err(error),
            };
            let queue = Queue::new(&children);
            let Some(first) = queue.holders().first().copied() else {
                return Ok((None, Watches { session: Arc::clone(session), directory, leader: None }));
            };
            let read = session.client.get_and_watch_data(&format!("{dir}/{}", first.name));
            match session.call(key, "read the leader", read).await {
                Ok((data, stat, leader)) => {
                    let info = holder_info(first.name, first.kind, &data, stat.czxid);
                    let watches = Watches { session: Arc::clone(session), directory, leader: Some(leader) };
                    return Ok((Some(info), watches));
                }
                // The leader left since the listing: look again.
                Err(error) if is(&error, &Error::NoNode) => continue,
                Err(error) => return Err(error),
            }
        }
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").field("backend", &BACKEND).field("key", &self.key).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_carries_its_value_or_else_its_owner() {
        assert_eq!(node_data("host:1:abc", Some("10.0.0.7:8080")), b"10.0.0.7:8080");
        assert_eq!(node_data("host:1:abc", None), b"host:1:abc");
    }

    #[test]
    fn a_node_reports_its_data_as_owner_and_value() {
        let info = holder_info("_c_x-lock-0000000001", NodeKind::Mutex, b"10.0.0.7", 42);
        assert_eq!((info.owner.as_str(), info.value.as_deref(), info.token.get()), ("10.0.0.7", Some("10.0.0.7"), 42));
        let empty = holder_info("_c_x-lock-0000000001", NodeKind::Mutex, b"", 42);
        assert_eq!((empty.owner.as_str(), empty.value), ("_c_x-lock-0000000001", None));
    }
}
