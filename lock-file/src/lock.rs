//! The file lock recipe: the `DistributedLock` operations, with every file
//! operation on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use inotify::EventStream;
use lock_core::{
    Capabilities, DistributedLock, Lease, LockError, LockInfo, LockKey, LockMode, LockOptions, LostReason,
};
use tokio::time::{Instant, sleep};
use tracing::debug;

use crate::counter::TokenCounter;
use crate::held::{Held, OpenLock, Session, Slot, lock};
use crate::layout::{gate_path, lock_path};
use crate::monitor::{BACKSTOP, Monitor, Watched};
use crate::record::Record;
use crate::take::{Attempt, BACKEND, Grant, Target, holders, unavailable, watch_frees};

/// Locks on one machine with no server: one file per key in a directory,
/// locked with the OS's advisory file lock (`flock`).
///
/// Works across processes and across clients of one process; the kernel
/// releases a lock when its holder dies, so there is no TTL (the TTL option
/// only sets how often a guard renews, which checks that its file is still
/// the one at the key's path).
///
/// A holder whose lock file is deleted or replaced (by a tmp cleaner, an
/// operator) is reported lost within a second: an inotify watch on the
/// directory reports it at once, and every held file is checked every second
/// besides.
///
/// The fencing token of each grant is first recorded durably in the
/// directory's token counter (`.distlock-tokens/issued`, replaced atomically
/// and flushed to disk), then copied into the lock file, so tokens keep
/// increasing across restarts, crashes, and lock files deleted, replaced or
/// emptied. They restart only if the whole directory is lost: keep it on
/// persistent storage (see the crate documentation).
///
/// Waiters are woken by inotify events on the lock file (its close, deletion
/// or replacement; a dying holder's descriptor is closed by the kernel, which
/// raises one too), with a one-second backstop against a missed event.
///
/// ```no_run
/// # async fn run() -> Result<(), lock_core::LockError> {
/// use lock_core::Locks;
/// use lock_file::FileLock;
///
/// let locks = Locks::new(FileLock::new("/var/lib/myapp/locks")?);
/// let guard = locks.lock("deploy").acquire().await?;
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FileLock {
    dir: PathBuf,
    tokens: TokenCounter,
    monitor: Monitor,
    session: Mutex<Arc<Session>>,
}

impl FileLock {
    /// A client keeping its lock files in `dir`, created if missing.
    ///
    /// # Errors
    /// [`LockError::Unavailable`] when the directory cannot be created or is
    /// not a writable directory.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, LockError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| unavailable(None, &dir, e))?;
        let probe = dir.join(".distlock-probe");
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&probe)
            .map_err(|e| unavailable(None, &dir, e))?;
        let tokens = TokenCounter::new(&dir);
        tokens.prepare().map_err(|e| unavailable(None, &tokens.path(), e))?;
        Ok(Self { monitor: Monitor::new(&dir), dir, tokens, session: Mutex::default() })
    }

    /// The directory holding the lock files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes every lock file this client holds and fails its waiters, as
    /// if its process had died; their guards report the loss at once. Later
    /// requests start afresh.
    pub fn end_session(&self) {
        let ended = std::mem::take(&mut *lock(&self.session));
        ended.end();
    }

    fn session(&self) -> Arc<Session> {
        Arc::clone(&lock(&self.session))
    }

    fn target(&self, key: &LockKey, options: &LockOptions) -> Arc<Target> {
        Arc::new(Target {
            key: key.clone(),
            path: lock_path(&self.dir, key),
            owner: options.owner_value().to_owned(),
            mode: options.mode_value(),
            value: options.value_value().map(str::to_owned),
            dir: self.dir.clone(),
            tokens: self.tokens.clone(),
        })
    }

    /// One attempt on `file`, on the blocking pool. A dropped call still
    /// completes there; a grant nobody receives is dropped, which unlocks it.
    async fn attempt(target: &Arc<Target>, file: std::fs::File) -> Result<Attempt, LockError> {
        let target_for_pool = Arc::clone(target);
        blocking(&target.key, move || target_for_pool.attempt(file)).await
    }

    /// Wraps a grant in a lease watched for the deletion of its file, held
    /// in `session`: the one the request started in, so a grant that lands
    /// after that session ended is closed at once rather than kept by the next.
    fn lease(
        &self,
        session: Arc<Session>,
        target: &Target,
        options: &LockOptions,
        grant: Grant,
        confirmed_at: Instant,
    ) -> Lease {
        let Grant { file, id, record, reader } = grant;
        let watched = Arc::new(Watched::new(target.key.clone(), target.path.clone(), id));
        let loss = watched.loss().clone();
        let held = Held::register(OpenLock { file, reader }, Arc::clone(&watched), session);
        self.monitor.watch(&watched);
        let ttl = options.effective_ttl(&self.capabilities());
        debug!(backend = BACKEND, key = %target.key, token = record.token, mode = %target.mode, "granted");
        Lease::new(target.key.clone(), record.fencing_token(), record.owner, ttl, confirmed_at, loss, held)
            .with_mode(target.mode)
    }

    fn held(lease: &Lease) -> Result<&Held, LockError> {
        lease.backend_data_for::<Held>(BACKEND)
    }

    /// What the client knows without touching the file: `NotHeld` once
    /// released, `Lost` once closed with its session or reported lost.
    fn ensure_held(lease: &Lease, held: &Held) -> Result<(), LockError> {
        match &*held.slot() {
            Slot::Released => {
                // A release whose future was dropped still finished.
                lease.mark_released();
                return Err(LockError::NotHeld { backend: BACKEND, key: lease.key().clone() });
            }
            Slot::Closed => lease.loss_signal().fire(LostReason::SessionEnded),
            Slot::Open(_) => {}
        }
        lease.ensure_held(BACKEND, Some(&held.session.ended))
    }
}

#[async_trait]
impl DistributedLock for FileLock {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(Duration::from_millis(1), Duration::from_secs(365 * 24 * 3600))
            .with_expires(false)
            .with_modes(LockMode::WITH_SEMAPHORE)
            .with_values(true)
    }

    async fn acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
    ) -> Result<Lease, LockError> {
        let started = Instant::now();
        let session = self.session();
        let target = self.target(key, options);
        let wait = Wait { session: &session, deadline, started };
        let gate = gate_path(&self.dir, key);
        // A writer's mark at the gate while it waits (see `gate.rs`).
        let mut holding_back_readers = None;
        let mut replaced = Replacements::default();
        loop {
            replaced.next(&target)?;
            // Watch before trying, so a release between the two is not missed.
            let opened = Arc::clone(&target);
            let (mut file, frees) = blocking(key, move || Ok((opened.open()?, opened.watch_frees()))).await?;
            let mut frees = frees.and_then(|frees| frees.into_event_stream(vec![0; 1024]).ok());
            loop {
                if target.mode.is_shared() {
                    wait.until_no_writer_waits(&gate, key).await?;
                }
                let confirmed_at = Instant::now();
                match Self::attempt(&target, file).await? {
                    Attempt::Granted(grant) => {
                        drop(holding_back_readers);
                        return Ok(self.lease(Arc::clone(&session), &target, options, grant, confirmed_at));
                    }
                    Attempt::Replaced => break,
                    Attempt::Busy(busy) => {
                        // Waiting on a file that stays put is no spin.
                        replaced = Replacements::default();
                        file = busy;
                        if !target.mode.is_shared() && holding_back_readers.is_none() {
                            let (owned, path) = (key.clone(), gate.clone());
                            holding_back_readers =
                                blocking(key, move || crate::gate::hold_back_readers(&owned, &path)).await?;
                        }
                    }
                }
                tokio::select! {
                    () = freed(&mut frees) => {}
                    () = sleep(BACKSTOP) => {}
                    _ = session.ended.fired() => {
                        return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded));
                    }
                    () = lock_core::deadline_passed(deadline) => {
                        return Err(LockError::timeout(BACKEND, key, started));
                    }
                }
            }
        }
    }

    async fn try_acquire(&self, key: &LockKey, options: &LockOptions) -> Result<Option<Lease>, LockError> {
        let session = self.session();
        let target = self.target(key, options);
        let mut replaced = Replacements::default();
        loop {
            replaced.next(&target)?;
            let confirmed_at = Instant::now();
            let attempt = Arc::clone(&target);
            let gate = gate_path(&self.dir, key);
            let tried = blocking(key, move || {
                // A reader does not pass a writer waiting at the gate.
                if attempt.mode.is_shared() && !crate::gate::no_writer_waits(&attempt.key, &gate)? {
                    return Ok(Attempt::Busy(attempt.open()?));
                }
                attempt.attempt(attempt.open()?)
            });
            match tried.await? {
                Attempt::Granted(grant) => {
                    return Ok(Some(self.lease(Arc::clone(&session), &target, options, grant, confirmed_at)));
                }
                Attempt::Busy(_) => return Ok(None),
                Attempt::Replaced => {}
            }
        }
    }

    async fn renew(&self, lease: &Lease) -> Result<Instant, LockError> {
        let held = Self::held(lease)?;
        let checked = Instant::now();
        Self::ensure_held(lease, held)?;
        let watched = Arc::clone(&held.watched);
        if !blocking(lease.key(), move || Ok(watched.is_at_path())).await? {
            held.watched.revoke();
            return Err(LockError::lost(BACKEND, lease.key(), LostReason::Revoked));
        }
        // A loss reported while the file was being checked wins.
        Self::ensure_held(lease, held)?;
        Ok(checked)
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let held = Self::held(lease)?;
        Self::ensure_held(lease, held).or_else(|error| match error {
            // A lost lock is still closed below, so what is ours is freed.
            LockError::Lost { .. } => Ok(()),
            other => Err(other),
        })?;
        // Take the file out before anything can be cancelled: from here on,
        // the lock is closed by the blocking task below even if this future
        // is dropped, and later calls find it released.
        let file = {
            let mut slot = held.slot();
            match std::mem::replace(&mut *slot, Slot::Released) {
                Slot::Open(open) => open,
                Slot::Closed => {
                    *slot = Slot::Closed;
                    return Err(LockError::lost(BACKEND, lease.key(), LostReason::SessionEnded));
                }
                Slot::Released => {
                    lease.mark_released();
                    return Err(LockError::NotHeld { backend: BACKEND, key: lease.key().clone() });
                }
            }
        };
        held.watched.retire();
        let watched = Arc::clone(&held.watched);
        // Closing the file unlocks it; the record keeps the last grant's token
        // and owner, which `inspect` ignores once the file is unlocked.
        let was_ours = blocking(lease.key(), move || {
            let was_ours = watched.is_at_path();
            drop(file);
            Ok(was_ours)
        })
        .await?;
        if !was_ours {
            held.watched.revoke();
        }
        match lease.loss_signal().reason() {
            Some(reason) => Err(LockError::lost(BACKEND, lease.key(), reason)),
            None => {
                lease.mark_released();
                Ok(())
            }
        }
    }

    async fn proclaim(&self, lease: &Lease, value: &str) -> Result<(), LockError> {
        let held = Self::held(lease)?;
        Self::ensure_held(lease, held)?;
        if lease.mode().is_shared() {
            return Err(LockError::InvalidOptions {
                backend: BACKEND,
                message: format!("a {} holder shares the key and publishes no value", lease.mode()),
            });
        }
        let file = match &*held.slot() {
            Slot::Open(open) => open.file.try_clone().map_err(|e| unavailable(Some(lease.key()), &self.dir, e))?,
            _ => return Self::ensure_held(lease, held),
        };
        let (watched, value, path) = (Arc::clone(&held.watched), value.to_owned(), lock_path(&self.dir, lease.key()));
        let still_ours = blocking(lease.key(), move || {
            if !watched.is_at_path() {
                return Ok(false);
            }
            let on_file = |e: std::io::Error| LockError::backend(BACKEND, None, format!("{}: {e}", path.display()));
            let mut record = Record::read(&file).map_err(on_file)?;
            record.value = Some(value);
            record.write(&file).map_err(on_file)?;
            Ok(true)
        })
        .await?;
        if !still_ours {
            held.watched.revoke();
            return Err(LockError::lost(BACKEND, lease.key(), LostReason::Revoked));
        }
        Self::ensure_held(lease, held)
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, LockError> {
        Ok(self.holders(key).await?.into_iter().next())
    }

    async fn holders(&self, key: &LockKey) -> Result<Vec<LockInfo>, LockError> {
        let (owned, dir, path) = (key.clone(), self.dir.clone(), lock_path(&self.dir, key));
        blocking(key, move || holders(&dir, &owned, &path)).await
    }
}

/// What ends a wait: the session, the deadline.
struct Wait<'a> {
    session: &'a Session,
    deadline: Option<Instant>,
    started: Instant,
}

impl Wait<'_> {
    /// Waits until no writer waits at the key's gate `path` (see `gate.rs`).
    async fn until_no_writer_waits(&self, path: &Path, key: &LockKey) -> Result<(), LockError> {
        let (owned, watched) = (key.clone(), path.to_path_buf());
        let frees = blocking(key, move || Ok(watch_frees(&owned, &watched))).await?;
        let mut frees = frees.and_then(|frees| frees.into_event_stream(vec![0; 1024]).ok());
        loop {
            let (owned, path) = (key.clone(), path.to_path_buf());
            if blocking(key, move || crate::gate::no_writer_waits(&owned, &path)).await? {
                return Ok(());
            }
            tokio::select! {
                () = freed(&mut frees) => {}
                () = sleep(BACKSTOP) => {}
                _ = self.session.ended.fired() => {
                    return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded));
                }
                () = lock_core::deadline_passed(self.deadline) => {
                    return Err(LockError::timeout(BACKEND, key, self.started));
                }
            }
        }
    }
}

/// Completes on the next event that may have freed the lock file; never
/// without a watch, which a failed watch falls back to (else a watch that
/// fails at once would spin the waiter).
async fn freed(frees: &mut Option<EventStream<Vec<u8>>>) {
    let Some(stream) = frees else {
        return std::future::pending().await;
    };
    if !matches!(stream.next().await, Some(Ok(_))) {
        *frees = None;
    }
}

/// Counts the times in a row a request opens a key's lock file, so that a
/// path that never keeps naming the file just opened (replaced over and
/// over, or one that cannot be looked up) fails the request instead of
/// spinning.
#[derive(Default)]
struct Replacements(u32);

impl Replacements {
    const LIMIT: u32 = 100;

    fn next(&mut self, target: &Target) -> Result<(), LockError> {
        self.0 += 1;
        if self.0 > Self::LIMIT {
            let error = std::io::Error::other(format!("replaced {} times while being locked", Self::LIMIT));
            return Err(unavailable(Some(&target.key), &target.path, error));
        }
        Ok(())
    }
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    key: &LockKey,
    work: impl FnOnce() -> Result<T, LockError> + Send + 'static,
) -> Result<T, LockError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| LockError::backend(BACKEND, Some(key), e))?
}
