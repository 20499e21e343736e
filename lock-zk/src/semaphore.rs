//! Counting semaphores, node for node Apache Curator 5.x's
//! `InterProcessSemaphoreV2`.
//!
//! Key `K`'s directory `{dir}` holds two children: the mutex `{dir}/locks`
//! (our mutex recipe, `_c_{guid}-lock-{seq}` nodes) and `{dir}/leases`. A
//! contender
//!
//! 1. takes the `locks` mutex (waiting in line as any mutex contender does);
//! 2. creates its ephemeral sequential lease node
//!    `{dir}/leases/_c_{guid}-lease-{seq}`;
//! 3. lists `leases` with a children watch, and holds once at most `limit`
//!    nodes are there (its own included), else waits for the watch and
//!    counts again;
//! 4. gives the `locks` mutex up, held or not.
//!
//! So at most one contender counts at a time, and the others queue on the
//! mutex; a lease is released by deleting its node (or by the end of its
//! session). Curator does the same, so both share one semaphore.
//!
//! # Safety of the count
//!
//! At most `limit` contenders hold even without the mutex: each counts after
//! its node exists, so of any `limit + 1` holders alive together, the one
//! whose node was created last saw all of them when it counted (a ZooKeeper
//! server that has applied a create has applied every earlier one).
//!
//! # Fencing
//!
//! The token is the lease node's `czxid`. Lease nodes are created, and
//! grants are made, only by the holder of the `locks` mutex, one holder after
//! the other, so a later grant's node was created after every earlier
//! grant's: its token is greater. This rests on the mutex excluding: before
//! a grant is handed out, our mutex node is read again (after the count, on
//! the same session, so in order), and a grant whose mutex node was deleted
//! from outside meanwhile is given back and the whole attempt made again.
//!
//! # The limit
//!
//! Curator stores no limit: nothing stops one process from using 2 and
//! another 3 on one path. Our lease nodes carry theirs as data
//! ([`LeaseData`]); a contender reads every other lease node's data before it
//! may hold and fails with [`LockError::Conflict`] when a distlock node names
//! another limit. Curator's nodes carry the client's IP address (or what
//! `setNodeData` gave): their limit is unknown, and they never conflict.
//!
//! A semaphore and a mutex or reader/writer lock on one key do not exclude
//! each other (their nodes live in different directories), as in Curator:
//! use a key for one purpose.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use lock_core::{ClientSession, Lease, LockError, LockInfo, LockKey, LockMode, LockOptions, LostReason};
use tokio::time::Instant;
use tracing::debug;
use zookeeper_client::Error;

use crate::attempt::{Attempt, CreatedNode};
use crate::client::Session;
use crate::grant::{self, Proof};
use crate::layout::{LEASE_MARKER, NodeKind, SEMAPHORE_LEASES, SEMAPHORE_LOCKS, lease_sequence, lock_path};
use crate::lock::{ZkLock, is, node_name};
use crate::queue::Queue;
use crate::wait::wait_for_turn;
use crate::{BACKEND, election};

/// How long a semaphore attempt may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// No wait for a place (`try_acquire`): the semaphore full is `None`
    /// at once; a mutex held by a contender that counts is waited for, at
    /// most the request timeout (see [`Try`]).
    Once,
    /// Until the deadline (`None`: forever).
    Until(Option<Instant>),
}

/// What a lease node's data says. Ours:
/// `distlock-semaphore:{limit}\n{owner}` and, when the holder publishes a
/// value, `\n{value}` (the owner string holds no control character, so the
/// first two lines are unambiguous). Anything else is Curator's: the
/// client's address, or what `setNodeData` set; its limit is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct LeaseData {
    /// The limit of a distlock contender; `None` for Curator's.
    pub(crate) limit: Option<NonZeroU32>,
    /// The owner string (Curator's: its data, when it is text).
    pub(crate) owner: Option<String>,
    /// The published value.
    pub(crate) value: Option<String>,
}

/// The first line of our lease node's data, before the limit.
const DATA_MARKER: &str = "distlock-semaphore:";

impl LeaseData {
    /// Our lease node's data.
    pub(crate) fn encode(limit: NonZeroU32, owner: &str, value: Option<&str>) -> Vec<u8> {
        let mut data = format!("{DATA_MARKER}{limit}\n{owner}");
        if let Some(value) = value {
            data.push('\n');
            data.push_str(value);
        }
        data.into_bytes()
    }

    /// Reads a lease node's data, ours or Curator's.
    pub(crate) fn decode(data: &[u8]) -> Self {
        let Ok(text) = std::str::from_utf8(data) else { return Self::default() };
        let ours = text.strip_prefix(DATA_MARKER).and_then(|rest| {
            let (limit, rest) = rest.split_once('\n')?;
            let limit = limit.parse::<NonZeroU32>().ok()?;
            let (owner, value) = match rest.split_once('\n') {
                Some((owner, value)) => (owner, Some(value.to_owned())),
                None => (rest, None),
            };
            Some(Self { limit: Some(limit), owner: Some(owner.to_owned()), value })
        });
        ours.unwrap_or_else(|| Self { limit: None, owner: (!text.is_empty()).then(|| text.to_owned()), value: None })
    }
}

/// Takes one of `limit` places of `key`: the lease, `None` when a
/// [`Wait::Once`] attempt found the semaphore full (see [`Try`]).
///
/// Cancel safe: both nodes belong to [`Attempt`]s until the lease exists,
/// and a dropped attempt deletes its node.
pub(crate) async fn acquire(
    lock: &ZkLock,
    key: &LockKey,
    options: &LockOptions,
    limit: NonZeroU32,
    wait: Wait,
) -> Result<Option<Lease>, LockError> {
    let started = Instant::now();
    let dir = lock_path(lock.config().base_path_value(), key);
    let request_limit = lock.config().request_timeout_value();
    let owner = options.owner_value().as_bytes().to_vec();
    loop {
        // 1. The mutex that serialises counting.
        let locks_dir = format!("{dir}/{SEMAPHORE_LOCKS}");
        let (session, mut mutex, created) = lock.enter(key, locks_dir, NodeKind::Mutex.marker(), &owner).await?;
        let mutex_path = created.path;
        let node = (mutex.dir.as_str(), node_name(&mutex_path));
        let leases_dir = format!("{dir}/{SEMAPHORE_LEASES}");
        let ours = match wait {
            Wait::Once => {
                let tried = Try { session: &session, key, limit, leases_dir: &leases_dir };
                tried.mutex_turn(node, Instant::now() + request_limit, created.listing).await
            }
            Wait::Until(deadline) => {
                wait_for_turn(&session, key, node, deadline, started, created.listing).await.map(|_| true)
            }
        };
        match ours {
            Ok(true) => {}
            Ok(false) => {
                mutex.withdraw(request_limit).await;
                return Ok(None);
            }
            Err(error @ LockError::Lost { .. }) => {
                mutex.disarm();
                return Err(error);
            }
            Err(error) => {
                mutex.withdraw(request_limit).await;
                return Err(error);
            }
        }
        // 2. Our lease node, on the same session: its requests are answered
        // in order, so the count below follows the mutex grant.
        let mut lease = Attempt::new(Arc::clone(&session), leases_dir.clone(), LEASE_MARKER);
        let data = LeaseData::encode(limit, options.owner_value(), options.value_value());
        let created = lease.create(key, data, lock.acls(), lock.authenticated(), false, request_limit).await;
        let counted = match created {
            Ok(CreatedNode { path: lease_path, .. }) => {
                let count = Count { session: &session, key, limit, leases_dir: &leases_dir, started };
                count.run(&lease_path, &mutex_path, wait).await.map(|counted| (counted, lease_path))
            }
            Err(error) => Err(error),
        };
        // 3. The mutex goes whatever the count found.
        match counted {
            Ok((Counted::Granted(read), lease_path)) => {
                let mode = LockMode::Semaphore { limit };
                let granted = grant::lease(key, options.owner_value(), mode, Arc::clone(&session), lease_path, read);
                lease.disarm();
                // Deleted in the background: the grant does not wait for it,
                // and a delete that goes unanswered is retried.
                drop(mutex);
                let granted = granted?;
                debug!(%key, %limit, token = %granted.token(), "semaphore place granted");
                return Ok(Some(granted));
            }
            Ok((Counted::Full, _)) => {
                tokio::join!(lease.withdraw(request_limit), mutex.withdraw(request_limit));
                return Ok(None);
            }
            Ok((Counted::MutexLost, _)) => {
                debug!(%key, "the semaphore's mutex node was deleted while counting; counting again");
                tokio::join!(lease.withdraw(request_limit), mutex.withdraw(request_limit));
            }
            Err(error @ LockError::Lost { .. }) => {
                lease.disarm();
                mutex.disarm();
                return Err(error);
            }
            Err(error) => {
                tokio::join!(lease.withdraw(request_limit), mutex.withdraw(request_limit));
                return Err(error);
            }
        }
    }
}

/// A try's wait for the counting mutex. Another contender holds it while it
/// counts (a round trip or two), while its node is deleted in the
/// background after its grant, and, as in Curator, for as long as it waits
/// for a place. Only the last means the semaphore is full, and then more
/// than `limit` lease nodes exist (the waiter's own among them): a try that
/// finds the mutex taken counts the leases and reports the semaphore full at
/// once when at least `limit` exist; otherwise it waits for the mutex,
/// looking again whenever a mutex node comes or goes, at most until its
/// deadline (the request timeout), and is then reported busy. The wait is
/// short when every contender is alive and uses our limit; it lasts until
/// the deadline when the mutex holder waits for a place of a smaller limit
/// (a Curator contender's, unknown) or is cut off until its session expires.
struct Try<'a> {
    session: &'a Session,
    key: &'a LockKey,
    limit: NonZeroU32,
    leases_dir: &'a str,
}

impl Try<'_> {
    /// Whether our mutex node `name` in `dir` came to hold the mutex before
    /// `deadline` with the semaphore not full; `listed`: the mutex
    /// directory's children as listed behind our create.
    async fn mutex_turn(
        &self,
        (dir, name): (&str, &str),
        deadline: Instant,
        mut listed: Option<Vec<String>>,
    ) -> Result<bool, LockError> {
        let (session, key) = (self.session, self.key);
        loop {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            let (children, watcher) = match listed.take() {
                Some(children) => (children, None),
                None => {
                    let listing = session.client.list_and_watch_children(dir);
                    let (children, watcher) = session.call(key, "list contenders", listing).await?;
                    (children, Some(watcher))
                }
            };
            let queue = Queue::seen_by(session, dir, &children);
            // Our node gone (deleted from outside): not ours; withdrawn.
            let Some(position) = queue.position(name) else { return Ok(false) };
            if queue.blocker(position).is_none() {
                return Ok(true);
            }
            if self.leases_taken().await? >= self.limit.get() {
                debug!(%key, limit = self.limit, "semaphore full while its mutex is taken");
                return Ok(false);
            }
            // Listed without a watch (behind our create): list again with one.
            let Some(watcher) = watcher else { continue };
            tokio::select! {
                biased;
                _ = session.ended().fired() => return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded)),
                () = tokio::time::sleep_until(deadline) => {
                    debug!(%key, "the semaphore's mutex stayed taken for a request timeout; reporting it busy");
                    return Ok(false);
                }
                _ = watcher.changed() => {}
            }
        }
    }

    /// How many lease nodes the semaphore has, granted or waiting.
    async fn leases_taken(&self) -> Result<u32, LockError> {
        let (session, dir) = (self.session, self.leases_dir);
        match session.call(self.key, "list leases", session.client.list_children(dir)).await {
            Ok(children) => {
                let live = children.iter().filter(|child| !session.withdrawn.contains(dir, child)).count();
                Ok(u32::try_from(live).unwrap_or(u32::MAX))
            }
            Err(error) if is(&error, &Error::NoNode) => Ok(0),
            Err(error) => Err(error),
        }
    }
}

/// What counting the leases found.
enum Counted {
    /// Ours: the lease node's stat and loss watch, read after the count.
    Granted(Proof),
    /// More than `limit` leases, and no waiting.
    Full,
    /// Our mutex node was deleted from outside while we counted: the grant
    /// would not be fenced; start again.
    MutexLost,
}

/// Counting the leases of one semaphore for one contender.
struct Count<'a> {
    session: &'a Session,
    key: &'a LockKey,
    limit: NonZeroU32,
    leases_dir: &'a str,
    started: Instant,
}

impl Count<'_> {
    /// Counts until our lease node `lease_path` is within the limit, the
    /// wait ends or the session does; checks every other lease node's
    /// limit on the way.
    async fn run(&self, lease_path: &str, mutex_path: &str, wait: Wait) -> Result<Counted, LockError> {
        let session = self.session;
        let deadline = match wait {
            Wait::Once => None,
            Wait::Until(deadline) => deadline,
        };
        // Lease nodes whose limit was read already: node data never changes
        // a distlock limit (proclaiming keeps it).
        let mut checked = HashSet::new();
        loop {
            let looked = self.look(node_name(lease_path), &mut checked).await;
            let watcher = match looked {
                Ok(Look::Within) => return self.confirm(lease_path, mutex_path).await,
                Ok(Look::Over(_)) if matches!(wait, Wait::Once) => return Ok(Counted::Full),
                Ok(Look::Over(watcher)) => Some(watcher),
                // Disconnected, but the session may live on: wait on, as a
                // mutex contender does, until it is known ended or the
                // deadline passes.
                Err(LockError::Unavailable { .. }) if !matches!(wait, Wait::Once) => None,
                Err(error) => return Err(error),
            };
            let changed = async {
                match watcher {
                    Some(watcher) => drop(watcher.changed().await),
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            tokio::select! {
                () = changed => {}
                _ = session.ended().fired() => return Err(self.lost(LostReason::SessionEnded)),
                () = lock_core::deadline_passed(deadline) => {
                    return Err(LockError::timeout(BACKEND, self.key, self.started));
                }
            }
        }
    }

    /// One count, with a watch on the leases for the next.
    async fn look(&self, ours: &str, checked: &mut HashSet<String>) -> Result<Look, LockError> {
        let (session, key, dir) = (self.session, self.key, self.leases_dir);
        let listing = session.client.list_and_watch_children(dir);
        let (children, watcher) = session.call(key, "list leases", listing).await?;
        let children: Vec<&String> = children.iter().filter(|child| !session.withdrawn.contains(dir, child)).collect();
        if !children.iter().any(|child| child.as_str() == ours) {
            let reason = if session.ended().is_fired() { LostReason::SessionEnded } else { LostReason::Revoked };
            return Err(self.lost(reason));
        }
        // Every read is sent before the first answer is awaited.
        let reads: Vec<_> = children
            .iter()
            .filter(|child| child.as_str() != ours && !checked.contains(child.as_str()))
            .map(|child| (*child, session.client.get_data(&format!("{dir}/{child}"))))
            .collect();
        for (child, read) in reads {
            let data = match session.call(key, "read a lease", read).await {
                Ok((data, _)) => data,
                // Released since the listing.
                Err(error) if is(&error, &Error::NoNode) => continue,
                Err(error) => return Err(error),
            };
            if let Some(other) = LeaseData::decode(&data).limit.filter(|other| *other != self.limit) {
                return Err(LockError::conflict(
                    BACKEND,
                    key,
                    format!(
                        "asked for a semaphore of {}, but lease {dir}/{child} holds or waits for it as a semaphore of \
                         {other}",
                        self.limit
                    ),
                ));
            }
            checked.insert(child.clone());
        }
        let within = u32::try_from(children.len()).is_ok_and(|count| count <= self.limit.get());
        Ok(if within { Look::Within } else { Look::Over(watcher) })
    }

    /// Reads our lease node (its token and loss watch) and, behind it, our
    /// mutex node, which must have outlived the count.
    async fn confirm(&self, lease_path: &str, mutex_path: &str) -> Result<Counted, LockError> {
        let (session, key) = (self.session, self.key);
        let sent = Instant::now();
        let own = session.client.check_and_watch_stat(lease_path);
        let mutex = session.client.check_stat(mutex_path);
        let own = session.call(key, "read the lease node", own).await?;
        match session.call(key, "read the semaphore's mutex node", mutex).await? {
            Some(_) => Ok(Counted::Granted(Proof::Read(own, sent))),
            None => Ok(Counted::MutexLost),
        }
    }

    fn lost(&self, reason: LostReason) -> LockError {
        LockError::lost(BACKEND, self.key, reason)
    }
}

/// One count of the leases.
enum Look {
    /// At most `limit`, ours included.
    Within,
    /// More: the watch that fires when a lease comes or goes.
    Over(zookeeper_client::OneshotWatcher),
}

/// The holders of the semaphore in `dir`, lowest token first; none when it
/// has no leases.
///
/// The leases are granted in sequence order (only the mutex holder creates
/// one, and it is the only one that may wait), so with a limit `n` read from
/// a distlock lease node, the first `n` lease nodes hold and any later one
/// waits. When every lease node is Curator's, the limit is unknown: every
/// lease node is listed, and the mode reports their number as the limit.
pub(crate) async fn holders(session: &Session, key: &LockKey, dir: &str) -> Result<Vec<LockInfo>, LockError> {
    let leases = format!("{dir}/{SEMAPHORE_LEASES}");
    let children = match session.call(key, "list leases", session.client.list_children(&leases)).await {
        Ok(children) => children,
        Err(error) if is(&error, &Error::NoNode) => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut nodes: Vec<(&String, u64)> =
        children.iter().filter_map(|child| lease_sequence(child).map(|sequence| (child, sequence))).collect();
    nodes.sort_by_key(|(_, sequence)| *sequence);
    let reads: Vec<_> =
        nodes.iter().map(|(child, _)| (*child, session.client.get_data(&format!("{leases}/{child}")))).collect();
    let mut found = Vec::with_capacity(reads.len());
    for (child, read) in reads {
        match session.call(key, "read a lease", read).await {
            Ok((data, stat)) => found.push((child, LeaseData::decode(&data), stat.czxid)),
            Err(error) if is(&error, &Error::NoNode) => {}
            Err(error) => return Err(error),
        }
    }
    let known = found.iter().find_map(|(_, data, _)| data.limit);
    let counted = u32::try_from(found.len()).ok().and_then(NonZeroU32::new);
    let Some(limit) = known.or(counted) else { return Ok(Vec::new()) };
    found.truncate(usize::try_from(limit.get()).unwrap_or(usize::MAX));
    let mode = LockMode::Semaphore { limit };
    Ok(found
        .into_iter()
        .map(|(child, data, czxid)| {
            let info = LockInfo::new(data.owner.unwrap_or_else(|| child.clone()), grant::token(czxid)).with_mode(mode);
            election::with_value(info, data.value)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
    }

    #[test]
    fn our_lease_data_carries_limit_owner_and_value() {
        let data = LeaseData::encode(limit(3), "host:1:abc", None);
        assert_eq!(data, b"distlock-semaphore:3\nhost:1:abc");
        let read = LeaseData::decode(&data);
        assert_eq!(read, LeaseData { limit: Some(limit(3)), owner: Some("host:1:abc".to_owned()), value: None });
        let valued = LeaseData::decode(&LeaseData::encode(limit(2), "o", Some("a\nb")));
        assert_eq!(valued.value.as_deref(), Some("a\nb"));
        assert_eq!(valued.owner.as_deref(), Some("o"));
    }

    #[test]
    fn curator_lease_data_has_no_limit() {
        let read = LeaseData::decode(b"10.0.0.5");
        assert_eq!(read, LeaseData { limit: None, owner: Some("10.0.0.5".to_owned()), value: None });
        assert_eq!(LeaseData::decode(b""), LeaseData::default());
        assert_eq!(LeaseData::decode(b"distlock-semaphore:0\nx").limit, None);
        assert_eq!(LeaseData::decode(&[0xff, 0xfe]), LeaseData::default());
    }
}
