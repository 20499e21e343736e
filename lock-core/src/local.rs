//! Exclusion between tasks that share one client, kept in core so it never
//! depends on how a service treats a repeated acquire by the same session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard};

use crate::{LockKey, LockMode};

/// Per key: readers of this client share it, anything else holds it alone;
/// tokio's lock is fair, so a waiting writer holds back later readers here
/// as the services do.
type KeyMutex = Arc<tokio::sync::RwLock<()>>;

/// Per-key FIFO mutexes of one client; entries exist only while in use.
#[derive(Debug, Default)]
pub(crate) struct LocalLocks {
    table: Mutex<HashMap<LockKey, KeyMutex>>,
}

/// The right to hold `key` through this client; dropping it lets the next
/// local task in.
#[derive(Debug)]
pub(crate) struct LocalPermit {
    // Field order matters: the guard drops before the entry checks whether
    // anyone else still uses it.
    _guard: Held,
    _entry: EntryRef,
}

#[derive(Debug)]
enum Held {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Alone(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

/// A counted reference to one table entry that removes the entry when it is
/// the last user, whether the wait for the mutex finished or was cancelled.
#[derive(Debug)]
struct EntryRef {
    table: Arc<LocalLocks>,
    key: LockKey,
    mutex: KeyMutex,
}

impl LocalLocks {
    fn entry(self: &Arc<Self>, key: &LockKey) -> EntryRef {
        let mut table = self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mutex = table.entry(key.clone()).or_default().clone();
        EntryRef { table: Arc::clone(self), key: key.clone(), mutex }
    }

    /// Waits for the key in `mode` (readers share it, anything else holds it
    /// alone); FIFO among this client's tasks. Cancel safe.
    pub(crate) async fn acquire(self: &Arc<Self>, key: &LockKey, mode: LockMode) -> LocalPermit {
        let entry = self.entry(key);
        let lock = Arc::clone(&entry.mutex);
        let guard = if mode.is_shared() {
            Held::Shared(lock.read_owned().await)
        } else {
            Held::Alone(lock.write_owned().await)
        };
        LocalPermit { _guard: guard, _entry: entry }
    }

    /// The key in `mode` if this client's other tasks allow it now (a reader
    /// does not pass a waiting writer).
    pub(crate) fn try_acquire(self: &Arc<Self>, key: &LockKey, mode: LockMode) -> Option<LocalPermit> {
        let entry = self.entry(key);
        let lock = Arc::clone(&entry.mutex);
        let guard = if mode.is_shared() {
            Held::Shared(lock.try_read_owned().ok()?)
        } else {
            Held::Alone(lock.try_write_owned().ok()?)
        };
        Some(LocalPermit { _guard: guard, _entry: entry })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or_default()
    }
}

impl Drop for EntryRef {
    fn drop(&mut self) {
        let mut table = self.table.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // The table's own reference plus ours: nobody else holds or waits.
        if Arc::strong_count(&self.mutex) == 2 {
            table.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> LockKey {
        LockKey::new(name).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn second_task_waits_and_table_empties() {
        let locks = Arc::new(LocalLocks::default());
        let first = locks.acquire(&key("k"), LockMode::Exclusive).await;
        assert!(locks.try_acquire(&key("k"), LockMode::Exclusive).is_none());
        assert!(locks.try_acquire(&key("k"), LockMode::Read).is_none());
        assert!(locks.try_acquire(&key("other"), LockMode::Exclusive).is_some());
        drop(first);
        let again = locks.try_acquire(&key("k"), LockMode::Write);
        assert!(again.is_some());
        drop(again);
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn cancelled_wait_leaves_no_entry() {
        let locks = Arc::new(LocalLocks::default());
        let held = locks.acquire(&key("k"), LockMode::Exclusive).await;
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(10), locks.acquire(&key("k"), LockMode::Read)).await;
        assert!(waited.is_err());
        drop(held);
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn readers_share_and_a_waiting_writer_holds_back_later_readers() {
        let locks = Arc::new(LocalLocks::default());
        let first = locks.acquire(&key("k"), LockMode::Read).await;
        let second = locks.try_acquire(&key("k"), LockMode::Read);
        assert!(second.is_some(), "two readers of one client share the key");
        assert!(locks.try_acquire(&key("k"), LockMode::Write).is_none());
        let writer = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move { locks.acquire(&key("k"), LockMode::Write).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(locks.try_acquire(&key("k"), LockMode::Read).is_none(), "a reader after a waiting writer waits");
        drop((first, second));
        let writer = writer.await.unwrap_or_else(|e| panic!("{e}"));
        drop(writer);
        assert_eq!(locks.len(), 0);
    }
}
