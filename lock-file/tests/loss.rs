//! A holder learns within a second that its lock file was deleted or
//! replaced: from then on another client can take the key, so the holder
//! must stop at once, not at its next renewal.

mod common;

use std::time::Duration;

use common::{LOSS_BOUND, STEP, TempDir, client, ok, take};
use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use lock_core::{LockError, LostReason};
use tokio::time::timeout;

/// A long TTL, so that only an event (not a scheduled renewal) can report
/// the loss within [`LOSS_BOUND`].
const TTL: Duration = Duration::from_secs(30);

#[tokio::test]
async fn deleted_lock_file_is_reported_lost_within_a_second() {
    let dir = TempDir::new("loss-deleted");
    let locks = client(dir.path());
    let guard = ok(locks.lock("deploy").ttl(TTL).acquire().await);
    ok(std::fs::remove_file(dir.lock_file("deploy")));
    let reason = timeout(LOSS_BOUND, guard.lost()).await;
    assert_eq!(reason.ok(), Some(LostReason::Revoked), "deleting the held lock file was not reported within 1 s");
    let released = guard.release().await;
    assert!(matches!(released, Err(LockError::Lost { .. })), "release after deletion: {released:?}");
}

#[tokio::test]
async fn replaced_lock_file_is_reported_lost_within_a_second() {
    let dir = TempDir::new("loss-replaced");
    let locks = client(dir.path());
    let guard = ok(locks.lock("deploy").ttl(TTL).acquire().await);
    let impostor = dir.path().join("impostor");
    ok(std::fs::write(&impostor, b"1\n\n\n0\n"));
    ok(std::fs::rename(&impostor, dir.lock_file("deploy")));
    let reason = timeout(LOSS_BOUND, guard.lost()).await;
    assert_eq!(
        reason.ok(),
        Some(LostReason::Revoked),
        "renaming a file over the held lock file was not reported within 1 s"
    );
}

#[tokio::test]
async fn removed_lock_directory_is_reported_lost_within_a_second() {
    let dir = TempDir::new("loss-rmdir");
    let locks = client(dir.path());
    let guard = ok(locks.lock("deploy").ttl(TTL).acquire().await);
    // What a tmp cleaner or a logout does to a runtime directory.
    ok(std::fs::remove_dir_all(dir.path()));
    let reason = timeout(LOSS_BOUND, guard.lost()).await;
    assert_eq!(reason.ok(), Some(LostReason::Revoked), "removing the lock directory was not reported within 1 s");
}

#[tokio::test]
async fn an_untouched_lock_is_not_reported_lost() {
    let dir = TempDir::new("loss-untouched");
    let (holder, other) = (client(dir.path()), client(dir.path()));
    let guard = ok(holder.lock("deploy").ttl(TTL).acquire().await);
    // Other keys come and go, and the lock directory changes around the
    // holder: none of it is a loss.
    for round in 0..20 {
        let key = format!("other{round}");
        let guard = take(&other, &key).await;
        ok(guard.release().await);
        ok(std::fs::remove_file(dir.lock_file(&key)));
    }
    assert!(other.lock("deploy").try_acquire().await.is_ok_and(|g| g.is_none()), "the key was free while held");
    // Two backstop periods: time enough for any check to run and misfire.
    let lost = timeout(2 * LOSS_BOUND, guard.lost()).await;
    assert!(lost.is_err(), "an untouched lock was reported lost: {lost:?}");
    ok(guard.release().await);
}

#[tokio::test]
async fn a_waiter_moves_on_from_a_deleted_lock_file() {
    let dir = TempDir::new("loss-waiter");
    let (holder, waiter) = (client(dir.path()), client(dir.path()));
    let held = ok(holder.lock("deploy").ttl(TTL).acquire().await);
    // The waiter opening the holder's file is the event to wait for: from
    // then on it waits on the file about to be deleted.
    let opens = ok(Inotify::init());
    ok(opens.watches().add(dir.lock_file("deploy"), WatchMask::OPEN));
    let mut opens = ok(opens.into_event_stream(vec![0; 1024]));
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.lock("deploy").wait(STEP).acquire().await }
    });
    let opened = timeout(STEP, opens.next()).await.map_err(|_| "the waiter never opened the lock file");
    ok(ok(ok(opened).ok_or("the inotify stream ended")));
    ok(std::fs::remove_file(dir.lock_file("deploy")));
    // The holder is lost; the waiter must not keep waiting on its old file.
    let granted = timeout(2 * LOSS_BOUND, waiting).await;
    let granted = ok(ok(ok(granted.map_err(|_| "the waiter was still waiting on the deleted lock file 2 s later"))));
    // No order between the two: whoever deleted the file told neither.
    let reason = timeout(LOSS_BOUND, held.lost()).await;
    assert_eq!(reason.ok(), Some(LostReason::Revoked), "the holder of the deleted file was not told within 1 s");
    assert!(granted.token() > held.token(), "token {} after {}", granted.token(), held.token());
}
