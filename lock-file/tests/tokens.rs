//! A key's fencing token never repeats and never goes back, whatever
//! happens to its lock file: deleted or replaced while held or while free,
//! emptied, or left half-written by a crash.

mod common;

use common::{TempDir, client, ok, take, take_and_release};

#[tokio::test]
async fn deleting_a_held_lock_file_does_not_repeat_its_token() {
    let dir = TempDir::new("tokens-deleted-held");
    let (holder, other) = (client(dir.path()), client(dir.path()));
    let first = take(&holder, "deploy").await;
    ok(std::fs::remove_file(dir.lock_file("deploy")));
    let second = take(&other, "deploy").await;
    assert_second_above_first(&first, &second);
}

#[tokio::test]
async fn replacing_a_held_lock_file_does_not_repeat_its_token() {
    let dir = TempDir::new("tokens-replaced-held");
    let (holder, other) = (client(dir.path()), client(dir.path()));
    let first = take(&holder, "deploy").await;
    let impostor = dir.path().join("impostor");
    ok(std::fs::write(&impostor, b""));
    ok(std::fs::rename(&impostor, dir.lock_file("deploy")));
    let second = take(&other, "deploy").await;
    assert_second_above_first(&first, &second);
}

#[tokio::test]
async fn deleting_a_free_lock_file_does_not_restart_tokens() {
    let dir = TempDir::new("tokens-deleted-free");
    let locks = client(dir.path());
    let before = take_and_release(&locks, "deploy").await;
    ok(std::fs::remove_file(dir.lock_file("deploy")));
    let after = take_and_release(&locks, "deploy").await;
    assert!(after > before, "token {after} after deleting the lock file, {before} before");
}

#[tokio::test]
async fn an_emptied_lock_file_does_not_restart_tokens() {
    // What a crash between truncating the file and writing it leaves.
    let dir = TempDir::new("tokens-emptied");
    let locks = client(dir.path());
    let before = take_and_release(&locks, "deploy").await;
    ok(std::fs::write(dir.lock_file("deploy"), b""));
    let after = take_and_release(&locks, "deploy").await;
    assert!(after > before, "token {after} after the lock file was emptied, {before} before");
}

#[tokio::test]
async fn a_half_written_lock_file_does_not_lower_tokens() {
    // A crash part-way through writing "10\n...": only its first digit landed.
    let dir = TempDir::new("tokens-torn");
    let locks = client(dir.path());
    let mut before = 0;
    while before < 10 {
        before = take_and_release(&locks, "deploy").await;
    }
    ok(std::fs::write(dir.lock_file("deploy"), b"1"));
    let after = take_and_release(&locks, "deploy").await;
    assert!(after > before, "token {after} after a torn lock file, {before} before");
}

#[tokio::test]
async fn tokens_increase_across_clients_and_keys() {
    let dir = TempDir::new("tokens-increase");
    let (a, b) = (client(dir.path()), client(dir.path()));
    let mut last = 0;
    for round in 0..6 {
        let locks = if round % 2 == 0 { &a } else { &b };
        let token = take_and_release(locks, "deploy").await;
        assert!(token > last, "round {round}: token {token} after {last}");
        last = token;
        take_and_release(locks, "other").await;
    }
}

/// The second holder's token is above the first holder's.
fn assert_second_above_first(first: &lock_core::LockGuard, second: &lock_core::LockGuard) {
    assert!(
        second.token() > first.token(),
        "the second holder got token {} after the first holder's {}",
        second.token(),
        first.token()
    );
}
