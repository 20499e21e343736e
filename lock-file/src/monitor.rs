//! Reports a held lock lost as soon as its lock file is deleted or
//! replaced: from that moment another client can lock the new file at the
//! path, so the holder must stop at once, not at its next renewal.
//!
//! One inotify watch on the lock directory per client (not one per lock:
//! a user has only 128 inotify instances by default) reports every deletion
//! and rename in it; the lock files named by an event are then checked
//! against their paths. Each lock is also checked once right after it is
//! registered (a deletion may have come before the registration), and all
//! are checked every second as a backstop against a missed or overflowed
//! event, or a directory the watch cannot see (a parent renamed, a network
//! file system). Checks run on the blocking pool; the task runs only while
//! the client holds a lock.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchMask};
use lock_core::{LockKey, LossSignal, LostReason};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::identity::FileId;

/// The longest a deletion or replacement goes unnoticed when no event
/// reports it.
pub(crate) const BACKSTOP: Duration = Duration::from_secs(1);

/// A held lock file under watch: its path, the file locked, and the signal
/// to fire when the path stops naming that file.
#[derive(Debug)]
pub(crate) struct Watched {
    key: LockKey,
    path: PathBuf,
    name: Option<OsString>,
    id: FileId,
    loss: LossSignal,
    retired: AtomicBool,
}

impl Watched {
    /// A lock of `key` on the file `id`, locked at `path`.
    pub(crate) fn new(key: LockKey, path: PathBuf, id: FileId) -> Self {
        let name = path.file_name().map(ToOwned::to_owned);
        Self { key, path, name, id, loss: LossSignal::new(), retired: AtomicBool::new(false) }
    }

    /// The signal fired when the lock is lost.
    pub(crate) fn loss(&self) -> &LossSignal {
        &self.loss
    }

    /// Whether the path still names the locked file. Blocks (a `stat`).
    pub(crate) fn is_at_path(&self) -> bool {
        self.id.is_at(&self.path)
    }

    /// Stops watching: the lock is being given up.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Fires the loss signal: the path names another file, or none.
    pub(crate) fn revoke(&self) {
        if !self.loss.is_fired() {
            warn!(backend = "file", key = %self.key, path = %self.path.display(), "lock file deleted or replaced: the lock is lost");
        }
        self.loss.fire(LostReason::Revoked);
    }

    fn active(&self) -> bool {
        !self.retired.load(Ordering::Acquire) && !self.loss.is_fired()
    }
}

/// The watch over one client's held lock files in one directory.
#[derive(Debug)]
pub(crate) struct Monitor {
    dir: PathBuf,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the task to check newly registered locks.
    registered: Notify,
}

#[derive(Debug, Default)]
struct State {
    watched: Vec<Weak<Watched>>,
    /// Registered since the task last looked.
    fresh: Vec<Weak<Watched>>,
    task: Option<JoinHandle<()>>,
}

/// Which watched locks an event concerns.
enum Scope {
    /// Those at this file name in the directory.
    Named(OsString),
    /// Every one (the backstop, a lost or overflowed event queue, the
    /// directory itself deleted or moved).
    All,
    /// Only those registered since the last check.
    Fresh,
}

impl Monitor {
    /// A monitor of lock files in `dir`; its task starts with the first lock.
    pub(crate) fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned(), shared: Arc::default() }
    }

    /// Watches a newly held lock until it is lost, retired or dropped.
    ///
    /// Starts the task on the current tokio runtime if it is not running;
    /// outside a runtime the lock is only checked when renewed.
    pub(crate) fn watch(&self, watched: &Arc<Watched>) {
        let mut state = lock(&self.shared.state);
        state.watched.push(Arc::downgrade(watched));
        state.fresh.push(Arc::downgrade(watched));
        // A task ends when it has nothing left to watch, or with its runtime.
        if state.task.as_ref().is_none_or(JoinHandle::is_finished) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    state.task = Some(runtime.spawn(run(self.dir.clone(), Arc::clone(&self.shared))));
                }
                Err(_) => debug!(dir = %self.dir.display(), "no tokio runtime: lock files checked on renewal only"),
            }
        }
        drop(state);
        self.shared.registered.notify_one();
    }
}

impl Shared {
    /// The live locks in `scope`, together with the fresh ones; `None` when
    /// nothing is left to watch, after which the task must end (a later
    /// registration starts another).
    fn targets(&self, scope: &Scope) -> Option<Vec<Arc<Watched>>> {
        let mut state = lock(&self.state);
        state.watched.retain(|weak| weak.upgrade().is_some_and(|watched| watched.active()));
        if state.watched.is_empty() {
            state.fresh.clear();
            state.task = None;
            return None;
        }
        let fresh: Vec<_> = state.fresh.drain(..).filter_map(|weak| weak.upgrade()).collect();
        let mut targets: Vec<Arc<Watched>> = match scope {
            Scope::All => state.watched.iter().filter_map(Weak::upgrade).collect(),
            Scope::Named(name) => state
                .watched
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|watched| watched.name.as_ref() == Some(name))
                .collect(),
            Scope::Fresh => Vec::new(),
        };
        if !matches!(scope, Scope::All) {
            targets.extend(fresh);
        }
        targets.retain(|watched| watched.active());
        Some(targets)
    }
}

async fn run(dir: PathBuf, shared: Arc<Shared>) {
    let mut events = directory_events(&dir)
        .await
        .inspect_err(
            |error| warn!(dir = %dir.display(), %error, "cannot watch the lock directory; checking every second"),
        )
        .ok();
    let mut backstop = tokio::time::interval(BACKSTOP);
    backstop.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let scope = tokio::select! {
            event = next_event(&mut events) => match event {
                Ok(scope) => scope,
                Err(error) => {
                    warn!(dir = %dir.display(), %error, "lost the watch on the lock directory; checking every second");
                    events = None;
                    Scope::All
                }
            },
            _ = backstop.tick() => {
                if events.is_none() {
                    // The directory may be back (recreated), or the limit on
                    // inotify instances no longer reached.
                    events = directory_events(&dir).await.ok();
                }
                Scope::All
            }
            () = shared.registered.notified() => Scope::Fresh,
        };
        let Some(targets) = shared.targets(&scope) else {
            return;
        };
        if targets.is_empty() {
            continue;
        }
        let checked = tokio::task::spawn_blocking(move || {
            targets.into_iter().filter(|watched| !watched.is_at_path()).collect::<Vec<_>>()
        })
        .await;
        match checked {
            Ok(moved) => moved.iter().for_each(|watched| watched.revoke()),
            Err(error) => warn!(dir = %dir.display(), %error, "checking the held lock files failed"),
        }
    }
}

/// Deletions and renames in `dir`, and the deletion or move of `dir`
/// itself.
async fn directory_events(dir: &Path) -> std::io::Result<EventStream<Vec<u8>>> {
    let mask = WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR;
    let dir = dir.to_owned();
    // Adding a watch looks the path up: file system work, kept off the runtime.
    let inotify = tokio::task::spawn_blocking(move || {
        let inotify = Inotify::init()?;
        inotify.watches().add(&dir, mask)?;
        Ok::<_, std::io::Error>(inotify)
    })
    .await
    .map_err(std::io::Error::other)??;
    inotify.into_event_stream(vec![0; 4096])
}

/// The scope of the next event; pending forever without a watch.
async fn next_event(events: &mut Option<EventStream<Vec<u8>>>) -> std::io::Result<Scope> {
    let Some(stream) = events else {
        return std::future::pending().await;
    };
    let event = match stream.next().await {
        Some(event) => event?,
        None => return Err(std::io::Error::other("the inotify stream ended")),
    };
    let everything =
        EventMask::Q_OVERFLOW | EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::UNMOUNT;
    if event.mask.intersects(everything) {
        if event.mask.contains(EventMask::IGNORED) {
            // The directory is gone and its watch with it.
            return Err(std::io::Error::other("the lock directory was removed"));
        }
        return Ok(Scope::All);
    }
    Ok(event.name.map_or(Scope::All, Scope::Named))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
