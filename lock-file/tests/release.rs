//! Release does its file I/O off the async runtime's threads, and a release
//! dropped part-way leaves neither the lock held nor half-done state.

mod common;

use common::{STEP, TempDir, client, ok};
use lock_core::{DistributedLock, LockError, LockKey, LockOptions};
use lock_file::FileLock;

/// Read and write system calls made so far by the calling thread.
fn thread_io() -> (u64, u64) {
    let text = ok(std::fs::read_to_string("/proc/thread-self/io"));
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/thread-self/io: {text}"))
    };
    (field("syscr:"), field("syscw:"))
}

#[test]
fn release_reads_and_writes_nothing_on_the_runtime_thread() {
    let dir = TempDir::new("release-off-thread");
    let backend = ok(FileLock::new(dir.path()));
    let (key, options) = (ok(LockKey::new("deploy")), LockOptions::new());
    // Acquire on a runtime of its own, whose worker threads then run the
    // backend's background tasks, so that nothing but the release runs on the
    // thread measured below.
    let acquiring = ok(tokio::runtime::Runtime::new());
    let lease = ok(acquiring.block_on(backend.try_acquire(&key, &options))).unwrap_or_else(|| panic!("deploy is held"));
    // A current-thread runtime: this thread is its only one, so every read or
    // write this thread makes during the release, the release made on the
    // runtime.
    let releasing = ok(tokio::runtime::Builder::new_current_thread().enable_all().build());
    let (reads, writes) = releasing.block_on(async {
        // What reading the counters costs by itself, to subtract.
        let (r0, w0) = thread_io();
        let (r1, w1) = thread_io();
        let (before_r, before_w) = thread_io();
        ok(backend.release(&lease).await);
        let (after_r, after_w) = thread_io();
        ((after_r - before_r).saturating_sub(r1 - r0), (after_w - before_w).saturating_sub(w1 - w0))
    });
    assert_eq!((reads, writes), (0, 0), "release made {reads} read and {writes} write calls on the runtime thread");
    drop(acquiring);
}

#[tokio::test]
async fn a_dropped_release_frees_the_lock_and_leaves_it_released() {
    let dir = TempDir::new("release-dropped");
    let backend = ok(FileLock::new(dir.path()));
    let (key, options) = (ok(LockKey::new("deploy")), LockOptions::new());
    let lease = ok(backend.try_acquire(&key, &options).await).unwrap_or_else(|| panic!("deploy is held"));
    {
        let mut release = std::pin::pin!(backend.release(&lease));
        // Poll it once, then drop it wherever it got to.
        tokio::select! {
            biased;
            _ = &mut release => {}
            () = std::future::ready(()) => {}
        }
    }
    let other = client(dir.path());
    let next = ok(other.lock("deploy").wait(STEP).acquire().await);
    assert!(next.token() > lease.token(), "token {} after {}", next.token(), lease.token());
    let again = backend.release(&lease).await;
    assert!(matches!(again, Err(LockError::NotHeld { .. })), "release after a dropped release: {again:?}");
    let renewed = backend.renew(&lease).await;
    assert!(matches!(renewed, Err(LockError::NotHeld { .. })), "renew after a dropped release: {renewed:?}");
    ok(next.release().await);
}
