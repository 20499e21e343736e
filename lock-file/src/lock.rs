//! The file lock recipe.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use lock_core::{
    Capabilities, DistributedLock, Lease, LockError, LockInfo, LockKey, LockOptions, LossSignal, LostReason,
};
use tokio::time::{Instant, sleep};

use crate::layout::lock_path;
use crate::record::Record;

const BACKEND: &str = "file";

/// A missed close event costs at most this long a wait.
const BACKSTOP: Duration = Duration::from_secs(1);

/// Locks on one machine with no server: one file per key in a directory,
/// locked with the OS's advisory file lock (`flock`).
///
/// Works across processes and across clients of one process; the kernel
/// releases a lock when its holder dies, so there is no TTL (the TTL option
/// only sets how often a guard checks that its file is still the one at the
/// key's path). The fencing token is kept in the lock file, incremented and
/// flushed to disk under the lock, so it keeps increasing across restarts.
/// Each file also records the holder's owner string for `inspect`. Lock files
/// are never deleted: they carry the key's fencing counter.
///
/// Waiters are woken by inotify close events on the lock file (a dying
/// holder's descriptor is closed by the kernel, which raises one too), with a
/// one-second backstop against a missed event.
///
/// ```no_run
/// # async fn run() -> Result<(), lock_core::LockError> {
/// use lock_core::Locks;
/// use lock_file::FileLock;
///
/// let locks = Locks::new(FileLock::new("/run/user/1000/distlock")?);
/// let guard = locks.lock("deploy").acquire().await?;
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FileLock {
    dir: PathBuf,
    session: Mutex<Arc<Session>>,
}

/// The client's open lock files; ending it closes them all, as the death of
/// the process would.
#[derive(Debug, Default)]
struct Session {
    ended: LossSignal,
    held: Mutex<Vec<Weak<Held>>>,
}

/// One held lock file; the lock is released when the file is closed.
#[derive(Debug)]
struct Held {
    file: Mutex<Option<File>>,
    path: PathBuf,
    session: Arc<Session>,
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
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&probe)
            .map_err(|e| unavailable(None, &dir, e))?;
        Ok(Self { dir, session: Mutex::default() })
    }

    /// The directory holding the lock files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes every lock file this client holds and fails its waiters, as
    /// if its process had died; later requests start afresh.
    pub fn end_session(&self) {
        let mut current = lock(&self.session);
        let ended = std::mem::take(&mut *current);
        ended.ended.fire(LostReason::SessionEnded);
        for held in lock(&ended.held).drain(..).filter_map(|held| held.upgrade()) {
            lock(&held.file).take();
        }
    }

    fn session(&self) -> Arc<Session> {
        Arc::clone(&lock(&self.session))
    }

    fn open(&self, key: &LockKey, path: &Path) -> Result<File, LockError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| unavailable(Some(key), path, e))
    }

    /// Takes the lock on an open file if it is free and still the file at
    /// `path` (an unlinked file would be a lock nobody else can see).
    fn try_take(&self, key: &LockKey, file: &File, path: &Path) -> Result<Taken, LockError> {
        match file.try_lock() {
            Ok(()) if same_file(file, path) => Ok(Taken::Yes),
            Ok(()) => {
                let _ = file.unlock();
                Ok(Taken::Replaced)
            }
            Err(TryLockError::WouldBlock) => Ok(Taken::No),
            Err(TryLockError::Error(e)) => Err(unavailable(Some(key), path, e)),
        }
    }

    /// Records the grant in the locked file and wraps it in a lease.
    async fn grant(
        &self,
        key: &LockKey,
        options: &LockOptions,
        mut file: File,
        path: PathBuf,
    ) -> Result<Lease, LockError> {
        let (owner, key_text) = (options.owner_value().to_owned(), key.as_str().to_owned());
        let confirmed_at = Instant::now();
        let written = tokio::task::spawn_blocking(move || {
            let mut record = Record::read(&mut file)?;
            if !record.key.is_empty() && record.key != key_text {
                return Err(std::io::Error::other(format!("lock file belongs to key {:?}", record.key)));
            }
            record.token += 1;
            record.owner = owner;
            record.key = key_text;
            record.since = Record::now();
            record.write(&mut file)?;
            Ok((file, record))
        })
        .await
        .map_err(|e| LockError::backend(BACKEND, Some(key), e))?;
        let (file, record) = written.map_err(|e| LockError::backend(BACKEND, Some(key), e))?;
        let session = self.session();
        let held = Arc::new(Held { file: Mutex::new(Some(file)), path, session: Arc::clone(&session) });
        lock(&session.held).push(Arc::downgrade(&held));
        let ttl = options.effective_ttl(&self.capabilities());
        Ok(Lease::new(key.clone(), record.fencing_token(), record.owner, ttl, confirmed_at, LossSignal::new(), held))
    }

    fn held(lease: &Lease) -> Result<&Held, LockError> {
        lease.backend_data_for::<Held>(BACKEND)
    }

    /// Why the lease is no longer ours, if it is not.
    fn check(lease: &Lease, held: &Held, file: Option<&File>) -> Result<(), LockError> {
        if lease.is_released() {
            return Err(LockError::NotHeld { backend: BACKEND, key: lease.key().clone() });
        }
        let reason = match file {
            None => Some(LostReason::SessionEnded),
            Some(_) if held.session.ended.is_fired() => Some(LostReason::SessionEnded),
            Some(file) if !same_file(file, &held.path) => Some(LostReason::Revoked),
            Some(_) => None,
        };
        match reason.or_else(|| lease.loss_signal().reason()) {
            Some(reason) => {
                lease.loss_signal().fire(reason.clone());
                Err(LockError::Lost { backend: BACKEND, key: lease.key().clone(), reason })
            }
            None => Ok(()),
        }
    }
}

enum Taken {
    Yes,
    No,
    Replaced,
}

#[async_trait]
impl DistributedLock for FileLock {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(Duration::from_millis(1), Duration::from_secs(365 * 24 * 3600)).with_expires(false)
    }

    async fn acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
    ) -> Result<Lease, LockError> {
        let started = Instant::now();
        let session = self.session();
        let path = lock_path(&self.dir, key);
        loop {
            let file = self.open(key, &path)?;
            // Watch before trying, so a release between the two is not missed.
            let mut closes = close_events(&path).map_err(|e| unavailable(Some(key), &path, e))?;
            loop {
                match self.try_take(key, &file, &path)? {
                    Taken::Yes => return self.grant(key, options, file, path).await,
                    Taken::Replaced => break,
                    Taken::No => {}
                }
                tokio::select! {
                    _ = closes.next() => {}
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
        let path = lock_path(&self.dir, key);
        loop {
            let file = self.open(key, &path)?;
            match self.try_take(key, &file, &path)? {
                Taken::Yes => return self.grant(key, options, file, path).await.map(Some),
                Taken::No => return Ok(None),
                Taken::Replaced => {}
            }
        }
    }

    async fn renew(&self, lease: &Lease) -> Result<Instant, LockError> {
        let held = Self::held(lease)?;
        let checked = Instant::now();
        Self::check(lease, held, lock(&held.file).as_ref())?;
        Ok(checked)
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let held = Self::held(lease)?;
        let mut slot = lock(&held.file);
        Self::check(lease, held, slot.as_ref())?;
        if let Some(mut file) = slot.take() {
            // Clear the owner but keep the counter; closing the file unlocks it.
            if let Ok(mut record) = Record::read(&mut file) {
                record.owner.clear();
                let _ = record.write(&mut file);
            }
        }
        lease.mark_released();
        Ok(())
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, LockError> {
        let path = lock_path(&self.dir, key);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unavailable(Some(key), &path, e)),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(None),
            Err(TryLockError::WouldBlock) => {
                let record = Record::read(&mut file).map_err(|e| unavailable(Some(key), &path, e))?;
                let info = LockInfo::new(record.owner.clone(), record.fencing_token());
                Ok(Some(match record.held_since() {
                    Some(since) => info.with_held_since(since),
                    None => info,
                }))
            }
            Err(TryLockError::Error(e)) => Err(unavailable(Some(key), &path, e)),
        }
    }
}

/// A stream of close (and delete or move) events of `path`.
fn close_events(path: &Path) -> std::io::Result<inotify::EventStream<Vec<u8>>> {
    let inotify = Inotify::init()?;
    inotify.watches().add(path, WatchMask::CLOSE | WatchMask::DELETE_SELF | WatchMask::MOVE_SELF)?;
    inotify.into_event_stream(vec![0; 1024])
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

fn unavailable(key: Option<&LockKey>, path: &Path, error: std::io::Error) -> LockError {
    LockError::unavailable(BACKEND, key, format!("{}: {error}", path.display()))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
