//! One contender node's life before it holds the lock: created in a task of
//! its own, so that an attempt dropped at any point still learns what was
//! created and deletes it.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockError, LockKey};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use zookeeper_client::{Acl, Acls, Client, CreateMode, Error, Permission, Stat};

use crate::cleanup::{self, Leftover};
use crate::client::Session;
use crate::error::{self, UnprotectedDirectory};

/// Our contender node in `dir`, until it holds the lock or is withdrawn.
pub(crate) struct Attempt {
    session: Arc<Session>,
    pub(crate) dir: String,
    /// `_c_{guid}-{marker}`: the name without its sequence, unique to this
    /// attempt.
    name: String,
    state: State,
}

enum State {
    Idle,
    /// The create's task, which returns the node's path.
    Creating(JoinHandle<Result<String, Error>>),
    Created(String),
    /// The create may have landed though its answer was lost.
    Unconfirmed,
    Done,
}

/// A node the create made, with its directory's ACL when it was asked for.
struct Created {
    path: String,
    stat: Stat,
    directory_acl: Option<Result<Vec<Acl>, Error>>,
}

/// Our node, as the create's reply told it.
pub(crate) struct CreatedNode {
    /// Its path.
    pub(crate) path: String,
    /// Its `czxid` (the token) from the create's own stat; `None` when the
    /// reply carried no stat (a plain `create`, as servers before 3.5 answer
    /// it), and the node must be read for it.
    pub(crate) czxid: Option<i64>,
    /// When the create was sent: a proof of the session's liveness taken
    /// from the create's reply starts here.
    pub(crate) sent: Instant,
    /// The directory's children, listed right behind the create (answered in
    /// order, so our node is among them), when asked for and answered.
    pub(crate) listing: Option<Vec<String>>,
}

impl Attempt {
    /// An attempt to queue a node named by Curator's `marker` (`lock-`,
    /// `__READ__`, `__WRIT__`, `lease-`) in `dir`; nothing is sent yet.
    pub(crate) fn new(session: Arc<Session>, dir: String, marker: &str) -> Self {
        let name = format!("_c_{}-{marker}", uuid::Uuid::new_v4());
        Self { session, dir, name, state: State::Idle }
    }

    /// Creates the node (and any missing lock directory and base path, as
    /// container nodes) with `acls`, and returns it; with `list`, the
    /// directory is listed in the same round trip.
    ///
    /// With `protected` (an authenticated client, whose `acls` keep others
    /// out), the lock directory must not let clients without credentials
    /// create or delete nodes: otherwise the node is withdrawn and the
    /// attempt fails with [`UnprotectedDirectory`].
    pub(crate) async fn create(
        &mut self,
        key: &LockKey,
        data: Vec<u8>,
        acls: Acls<'static>,
        protected: bool,
        list: bool,
        limit: Duration,
    ) -> Result<CreatedNode, LockError> {
        let (client, dir, prefix) =
            (self.session.client.clone(), self.dir.clone(), format!("{}/{}", self.dir, self.name));
        let sent = Instant::now();
        let (created_tx, created_rx) = oneshot::channel();
        let (listed_tx, listed_rx) = oneshot::channel();
        let requests = Requests { data, acls, check_directory: protected, list };
        self.state = State::Creating(tokio::spawn(async move {
            create_node(&client, &dir, &prefix, requests, (created_tx, listed_tx)).await
        }));
        let created = match timeout(limit, created_rx).await {
            Ok(Ok(created)) => created,
            // The task ended without a node: its result tells why.
            Ok(Err(_)) => {
                let State::Creating(creating) = std::mem::replace(&mut self.state, State::Unconfirmed) else {
                    return Err(LockError::backend(crate::BACKEND, Some(key), "attempt state changed under us"));
                };
                return Err(match creating.await {
                    Ok(Err(failure)) => {
                        // Refused by the server: nothing was created.
                        // Otherwise the create may have landed though its
                        // answer was lost, and the cleanup finds our node by
                        // its unique name.
                        if refused(&failure) {
                            self.state = State::Done;
                        }
                        error::map(Some(key), failure)
                    }
                    Ok(Ok(_)) => LockError::backend(crate::BACKEND, Some(key), "the create reported no node"),
                    Err(panicked) => LockError::backend(crate::BACKEND, Some(key), panicked),
                });
            }
            // Still in flight: dropping us deletes whatever it creates.
            Err(_) => return Err(error::timed_out(Some(key), "create lock node", limit)),
        };
        let Created { path, stat, directory_acl } = created;
        self.state = State::Created(path.clone());
        match directory_acl {
            Some(Ok(acl)) if open_to_anyone(&acl) => {
                self.withdraw(limit).await;
                let refused = UnprotectedDirectory::new(&self.dir, &acl);
                tracing::warn!(%key, %refused, "refusing an unprotected lock directory");
                Err(LockError::backend(crate::BACKEND, Some(key), refused))
            }
            // Unknown: dropping us deletes the node.
            Some(Err(failure)) => Err(error::map(Some(key), failure)),
            Some(Ok(_)) | None => {
                let czxid = (!stat.is_invalid()).then_some(stat.czxid);
                // The listing has a timeout of its own, not the create's; one
                // that failed or was not asked for is made by the caller.
                let listing = match timeout(limit, listed_rx).await {
                    Ok(Ok(Some(children))) => Some(children),
                    _ => None,
                };
                Ok(CreatedNode { path, czxid, sent, listing })
            }
        }
    }

    /// The node now belongs to a grant (or vanished with the session).
    pub(crate) fn disarm(&mut self) {
        self.state = State::Done;
    }

    /// Deletes our node; waits for that at most `limit`, after which the
    /// deletion goes on in the background until it succeeds or the session
    /// ends.
    pub(crate) async fn withdraw(&mut self, limit: Duration) {
        let state = std::mem::replace(&mut self.state, State::Done);
        if let Some(cleanup) = self.cleanup(state) {
            let _ = timeout(limit, tokio::spawn(cleanup)).await;
        }
    }

    /// The cleanup of what `state` may have created, if anything.
    fn cleanup(&self, state: State) -> Option<impl Future<Output = ()> + Send + 'static> {
        let leftover = match state {
            State::Idle | State::Done => return None,
            State::Creating(creating) => Leftover::Creating(Box::pin(async move {
                match creating.await {
                    Ok(Ok(path)) => Some(Leftover::Node(path)),
                    Ok(Err(failure)) if refused(&failure) => None,
                    // No answer, or the task panicked: look for our name.
                    _ => Some(Leftover::Unconfirmed),
                }
            })),
            State::Created(path) => Leftover::Node(path),
            State::Unconfirmed => Leftover::Unconfirmed,
        };
        Some(cleanup::delete_until_gone(&self.session, self.dir.clone(), self.name.clone(), leftover))
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Done);
        // Without a runtime, the session's end removes the node.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if let Some(cleanup) = self.cleanup(state) {
            runtime.spawn(cleanup);
        }
    }
}

/// What a contender node's create sends.
struct Requests {
    data: Vec<u8>,
    acls: Acls<'static>,
    /// Also read the directory's ACL.
    check_directory: bool,
    /// Also list the directory.
    list: bool,
}

/// Creates our node under `prefix` in `dir` and reports it on `created` as
/// soon as its reply (and the ACL read) is in, then the directory's listing
/// on `listed`; returns the node's path for the attempt's clean-up.
///
/// With `check_directory`, the directory's ACL is read, and with `list`, the
/// directory listed, both sent right behind the create so they cost no round
/// trip of their own. ZooKeeper answers a session's requests in order, so
/// the listing holds our node, and the ACL read is the directory's with our
/// node in it; a directory that holds a node cannot be reaped and made again
/// by anyone else, so the ACL stays what was read for as long as our node
/// lives, unless changed by an identity with ADMIN on it.
///
/// The directory may be missing, or reaped (an empty container that had a
/// child) between the requests: made again each time, at most
/// [`DIRECTORY_TRIES`] times (a refused create left nothing behind).
async fn create_node(
    client: &Client,
    dir: &str,
    prefix: &str,
    requests: Requests,
    (created, listed): (oneshot::Sender<Created>, oneshot::Sender<Option<Vec<String>>>),
) -> Result<String, Error> {
    let Requests { data, acls, check_directory, list } = requests;
    let options = CreateMode::EphemeralSequential.with_acls(acls);
    let mut tries = 0;
    loop {
        let creating = client.create(prefix, &data, &options);
        let reading = check_directory.then(|| client.get_acl(dir));
        let listing = list.then(|| client.list_children(dir));
        let (stat, sequence) = match creating.await {
            Err(Error::NoNode) if tries < DIRECTORY_TRIES => {
                tries += 1;
                make_directories(client, dir, acls).await?;
                continue;
            }
            answer => answer?,
        };
        let path = format!("{prefix}{sequence}");
        let directory_acl = match reading {
            Some(reading) => Some(reading.await.map(|(acl, _)| acl)),
            None => None,
        };
        let _ = created.send(Created { path: path.clone(), stat, directory_acl });
        if let Some(listing) = listing {
            let _ = listed.send(listing.await.ok());
        }
        return Ok(path);
    }
}

/// Creates `dir` and its missing ancestors as container nodes with `acls`,
/// the ACL of the lock nodes: with credentials, directories the client makes
/// are its own, so no client without them can create or delete nodes in
/// them (ZooKeeper checks both on the parent, whatever the node's own ACL).
/// Directories that exist keep the ACL they have.
///
/// An ancestor found there may be reaped before its child is made (an
/// empty container that has had a child): then it starts again from the
/// root, at most [`DIRECTORY_TRIES`] times.
async fn make_directories(client: &Client, dir: &str, acls: Acls<'static>) -> Result<(), Error> {
    let options = CreateMode::Container.with_acls(acls);
    let mut tries = 0;
    'from_the_root: loop {
        let mut path = String::new();
        for part in dir.trim_start_matches('/').split('/') {
            path.push('/');
            path.push_str(part);
            match client.create(&path, &[], &options).await {
                Ok(_) | Err(Error::NodeExists) => {}
                Err(Error::NoNode) if tries < DIRECTORY_TRIES => {
                    tries += 1;
                    continue 'from_the_root;
                }
                Err(error) => return Err(error),
            }
        }
        return Ok(());
    }
}

/// How often a contender's create, or the making of its directories, starts
/// again after ZooKeeper reaped a directory under it. A fresh container is
/// not reaped before its first child, so each try meets a reap of its own.
const DIRECTORY_TRIES: u32 = 8;

/// Whether `error` is the server's answer to a request it did not apply
/// (or the end of the session, which takes its nodes along), rather than a
/// request whose outcome is unknown.
fn refused(error: &Error) -> bool {
    matches!(
        error,
        Error::NoNode
            | Error::NoAuth
            | Error::NodeExists
            | Error::InvalidAcl
            | Error::BadArguments(_)
            | Error::NoChildrenForEphemerals
            | Error::QuotaExceeded
            | Error::Throttled
            | Error::SessionMoved
            | Error::NotReadOnly
            | Error::Unimplemented
            | Error::SessionExpired
            | Error::ClientClosed
            | Error::AuthFailed
    )
}

/// Whether `acl` lets a client without credentials (any client, or any
/// client at some address) create or delete nodes in the directory.
fn open_to_anyone(acl: &[Acl]) -> bool {
    acl.iter().any(|entry| {
        matches!(entry.scheme(), "world" | "ip")
            // ADMIN lets them set an open ACL first.
            && (entry.permission().has(Permission::CREATE)
                || entry.permission().has(Permission::DELETE)
                || entry.permission().has(Permission::ADMIN))
    })
}

#[cfg(test)]
mod tests {
    use zookeeper_client::AuthId;

    use super::*;

    #[test]
    fn a_directory_is_open_when_anyone_may_create_or_delete_in_it() {
        let entry = |permission, scheme, id| Acl::new(permission, AuthId::new(scheme, id));
        assert!(open_to_anyone(&Acls::anyone_all()));
        assert!(open_to_anyone(&[entry(Permission::DELETE, "world", "anyone")]));
        assert!(open_to_anyone(&[entry(Permission::CREATE, "ip", "10.0.0.0/8")]));
        assert!(open_to_anyone(&[entry(Permission::ADMIN, "world", "anyone")]));
        let digest = entry(Permission::ALL, "digest", "app:hash=");
        assert!(!open_to_anyone(std::slice::from_ref(&digest)));
        assert!(!open_to_anyone(&[digest, entry(Permission::READ, "world", "anyone")]));
    }
}
