//! Safety of the guard and the request builder on the reference backend:
//! what a holder sees after its process was paused, and deadlines that
//! cannot be represented.

use std::time::Duration;

use lock_core::{Locks, MemoryLock, MemoryStore};

/// A holder whose whole process was paused (SIGSTOP, a long GC) past its TTL
/// must see the loss on the first look after it resumes, before the
/// watchdog task has had a chance to run: its next write may already be
/// another holder's turn.
#[test]
fn is_lost_counts_the_own_clock_after_a_pause() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let runtime = runtime.unwrap_or_else(|e| panic!("no runtime: {e}"));
    runtime.block_on(async {
        let locks = Locks::new(MemoryLock::new());
        let guard = locks.lock("paused").ttl(Duration::from_millis(100)).acquire().await;
        let guard = guard.unwrap_or_else(|e| panic!("acquire: {e}"));
        assert!(!guard.is_lost());
        // Blocks the only runtime thread: neither the renewal nor the
        // watchdog can run, as in a paused process.
        std::thread::sleep(Duration::from_millis(250));
        assert!(guard.is_lost(), "a guard past its TTL without renewal still says it holds the lock");
        assert_eq!(guard.remaining(), Duration::ZERO);
    });
}

/// `wait(Duration::MAX)` means "wait as long as it takes", never a panic.
#[tokio::test]
async fn an_unrepresentable_wait_means_forever() {
    let locks = Locks::new(MemoryLock::new());
    let guard = locks.lock("forever").wait(Duration::MAX).acquire().await;
    assert!(guard.is_ok(), "{guard:?}");
    let other = Locks::new(MemoryLock::new());
    let request = other.lock("forever").wait(Duration::MAX);
    drop(request);
}

/// Ending sessions over and over keeps the store's memory bounded.
#[test]
fn ended_sessions_are_not_remembered_forever() {
    let store = MemoryStore::new();
    let client = store.client();
    for _ in 0..1_000 {
        client.end_session();
        drop(store.client());
    }
    assert!(store.session_records() <= 2, "the store keeps {} session records", store.session_records());
}
