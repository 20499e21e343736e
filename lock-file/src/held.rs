//! The state of the locks a client holds: one open lock file per lock, and
//! the session that closes them all when it ends.

use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use lock_core::{LossSignal, LostReason};

use crate::monitor::Watched;
use crate::readers::ReaderRecord;

/// The client's open lock files; ending it closes them all, as the death of
/// the process would.
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub(crate) ended: LossSignal,
    held: Mutex<Vec<Weak<Held>>>,
}

impl Session {
    /// Ends the session: every lock it holds is closed and reported lost.
    pub(crate) fn end(&self) {
        self.ended.fire(LostReason::SessionEnded);
        for held in lock(&self.held).drain(..).filter_map(|held| held.upgrade()) {
            let mut slot = lock(&held.slot);
            if let Slot::Open(_) = &*slot {
                // Dropping the file closes it, which unlocks it.
                *slot = Slot::Closed;
                held.watched.retire();
                held.watched.loss().fire(LostReason::SessionEnded);
            }
        }
    }
}

/// One held lock.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) slot: Mutex<Slot>,
    pub(crate) watched: Arc<Watched>,
    pub(crate) session: Arc<Session>,
}

/// Where a held lock's file is.
#[derive(Debug)]
pub(crate) enum Slot {
    /// Open and locked.
    Open(OpenLock),
    /// Given up by a release (which may still be closing it).
    Released,
    /// Closed because the session ended.
    Closed,
}

/// What a held lock keeps open: the locked file, and a reader's own record.
/// Neither is read: they are held for their locks, and dropping them
/// (the file first, then the record) gives the lock up.
#[derive(Debug)]
#[allow(dead_code)]
pub(crate) struct OpenLock {
    pub(crate) file: File,
    pub(crate) reader: Option<ReaderRecord>,
}

impl Held {
    /// A lock on the open `file`, in `session`, which closes it if it ends.
    pub(crate) fn register(file: OpenLock, watched: Arc<Watched>, session: Arc<Session>) -> Arc<Self> {
        let held = Arc::new(Self { slot: Mutex::new(Slot::Open(file)), watched, session: Arc::clone(&session) });
        let mut all = lock(&session.held);
        // Forget released locks now and then, so a long-lived client's list
        // stays as long as what it holds (amortised: at each doubling).
        if all.len() >= 64 && all.len().is_power_of_two() {
            all.retain(|held| held.strong_count() > 0);
        }
        all.push(Arc::downgrade(&held));
        drop(all);
        if session.ended.is_fired() {
            // Ended while this grant was being written: it ends with it.
            session.end();
        }
        held
    }

    /// The slot, locked.
    pub(crate) fn slot(&self) -> MutexGuard<'_, Slot> {
        lock(&self.slot)
    }
}

/// Locks a mutex; a panic elsewhere leaves the data consistent, so poison is
/// ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
