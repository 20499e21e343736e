//! One contender node's life before it holds the lock: created in a task of
//! its own, so that an attempt dropped at any point still learns what was
//! created and deletes it.

use std::time::Duration;

use lock_core::{LockError, LockKey};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::debug;
use zookeeper_client::{Acls, Client, CreateMode, Error};

use crate::error;

/// Curator's lock name for `InterProcessMutex`.
pub(crate) const LOCK_NAME: &str = "lock-";
/// Digits of a ZooKeeper sequence suffix.
pub(crate) const SEQUENCE_DIGITS: usize = 10;

/// Our contender node in `dir`, until it holds the lock or is withdrawn.
pub(crate) struct Attempt {
    client: Client,
    pub(crate) dir: String,
    /// `_c_{guid}-lock-`: the name without its sequence, unique to this attempt.
    name: String,
    state: State,
}

enum State {
    Idle,
    Creating(JoinHandle<Result<String, Error>>),
    Created(String),
    Done,
}

impl Attempt {
    pub(crate) fn new(client: Client, dir: String) -> Self {
        let name = format!("_c_{}-{LOCK_NAME}", uuid::Uuid::new_v4());
        Self { client, dir, name, state: State::Idle }
    }

    /// Creates the node (and any missing lock directory, as container nodes)
    /// and returns its path.
    pub(crate) async fn create(
        &mut self,
        key: &LockKey,
        data: Vec<u8>,
        acls: Acls<'static>,
        limit: Duration,
    ) -> Result<String, LockError> {
        let (client, dir, prefix) = (self.client.clone(), self.dir.clone(), format!("{}/{}", self.dir, self.name));
        self.state = State::Creating(tokio::spawn(async move {
            let create = CreateMode::EphemeralSequential.with_acls(acls);
            match client.create(&prefix, &data, &create).await {
                Err(Error::NoNode) => {
                    make_directories(&client, &dir).await?;
                    client.create(&prefix, &data, &create).await
                }
                created => created,
            }
            .map(|(_, sequence)| format!("{prefix}{sequence}"))
        }));
        let State::Creating(creating) = &mut self.state else {
            return Err(LockError::backend(crate::BACKEND, Some(key), "attempt state changed under us"));
        };
        let created = match timeout(limit, creating).await {
            Ok(Ok(created)) => created,
            Ok(Err(panicked)) => return Err(LockError::backend(crate::BACKEND, Some(key), panicked)),
            // Still in flight: dropping us deletes whatever it creates.
            Err(_) => return Err(error::timed_out(Some(key), "create lock node", limit)),
        };
        match created {
            Ok(path) => {
                self.state = State::Created(path.clone());
                Ok(path)
            }
            Err(failure) => {
                // The create may have landed though its reply was lost: the
                // drop path finds our node by its unique name.
                self.state = State::Created(String::new());
                Err(error::map(Some(key), failure))
            }
        }
    }

    /// The node now belongs to a grant (or vanished with the session).
    pub(crate) fn disarm(&mut self) {
        self.state = State::Done;
    }

    /// Deletes our node before returning.
    pub(crate) async fn withdraw(&mut self, limit: Duration) {
        let state = std::mem::replace(&mut self.state, State::Done);
        let _ = timeout(limit, cleanup(self.client.clone(), self.dir.clone(), self.name.clone(), state)).await;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Done);
        if matches!(state, State::Idle | State::Done) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(cleanup(self.client.clone(), self.dir.clone(), self.name.clone(), state));
    }
}

/// Deletes the node an attempt created, waiting for an in-flight create.
async fn cleanup(client: Client, dir: String, name: String, state: State) {
    let path = match state {
        State::Creating(creating) => creating.await.ok().and_then(Result::ok),
        State::Created(path) if !path.is_empty() => Some(path),
        _ => None,
    };
    match path {
        Some(path) => {
            let _ = client.delete(&path, None).await;
        }
        // Unknown outcome: look for our unique name.
        None => {
            if let Ok(children) = client.list_children(&dir).await {
                for child in children.iter().filter(|child| child.starts_with(&name)) {
                    debug!(child, "deleting the node of an attempt whose create reply was lost");
                    let _ = client.delete(&format!("{dir}/{child}"), None).await;
                }
            }
        }
    }
}

/// Creates `dir` and its missing ancestors as container nodes.
async fn make_directories(client: &Client, dir: &str) -> Result<(), Error> {
    let options = CreateMode::Container.with_acls(Acls::anyone_all());
    let mut path = String::new();
    for part in dir.trim_start_matches('/').split('/') {
        path.push('/');
        path.push_str(part);
        match client.create(&path, &[], &options).await {
            Ok(_) | Err(Error::NodeExists) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
