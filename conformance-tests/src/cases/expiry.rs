//! TTLs: renewal keeps a lock, its absence frees it, a killed holder's lock
//! frees after the TTL.

use std::process::Stdio;

use lock_core::LockError;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::{Instant, sleep};

use super::support::{GRACE, STEP, acquire, assert_clean, ok, options, release, take, within};
use crate::{Harness, Namespace};

/// Case 8: Auto-renewal keeps the lock past several TTLs while another client
/// waits for it in vain.
pub async fn renewal_keeps_lock_past_ttl(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("renewed");
    let (holder, waiter) = (h.client().await, h.client().await);
    let guard = take(h, &holder.locks, &key, &options(h, "holder")).await;
    let wait = h.ttl() * 3;
    let attempt = within(
        h,
        "waiter",
        wait + GRACE,
        waiter.locks.acquire(&key, &options(h, "waiter"), Some(Instant::now() + wait)),
    )
    .await;
    assert!(
        matches!(attempt, Err(LockError::Timeout { .. })),
        "[{}] a renewed lock was granted: {attempt:?}",
        h.name()
    );
    assert!(!guard.is_lost(), "[{}] a renewed lock was reported lost", h.name());
    let info = ok(h, "inspect", waiter.locks.inspect(&key).await);
    assert_eq!(info.map(|i| i.token), Some(guard.token()), "[{}] holder after 3 x TTL", h.name());
    release(h, guard).await;
    assert_clean(h, ns.prefix(), "after renewal").await;
}

/// Case 9: Without renewal the lock frees within TTL + expiry slack and not
/// before the TTL: first for a holder that falls silent (cut off from the
/// service, as a paused process would be), then for a guard with auto-renew
/// off, which must report the loss before anyone else is granted the lock.
pub async fn unrenewed_lock_expires(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let (holder, waiter) = (h.client().await, h.client().await);
    let caps = holder.locks.capabilities();
    if !caps.expires {
        tracing::info!(backend = h.name(), "backend frees locks on holder death, not by TTL: case not applicable");
        return;
    }
    let ttl = h.ttl();
    let bound = ttl + caps.expiry_slack + GRACE;

    let silent_key = ns.key("silent");
    let sent = Instant::now();
    let raw = ok(h, "raw try_acquire", holder.locks.backend().try_acquire(&silent_key, &options(h, "silent")).await)
        .unwrap_or_else(|| panic!("[{}] raw try_acquire of a free key returned None", h.name()));
    holder.control.cut_off().await;
    let next = within(
        h,
        "acquire after the holder fell silent",
        bound,
        acquire(h, &waiter.locks, &silent_key, &options(h, "next")),
    )
    .await;
    let freed_after = sent.elapsed();
    assert!(freed_after >= ttl * 9 / 10, "[{}] freed {freed_after:?} after acquire, before the TTL {ttl:?}", h.name());
    assert!(next.token() > raw.token(), "[{}] token did not increase across expiry", h.name());
    release(h, next).await;
    holder.control.restore().await;

    let key = ns.key("unrenewed");
    let guard = take(h, &holder.locks, &key, &options(h, "holder").auto_renew(false)).await;
    let next_options = options(h, "next");
    // Whether the holder had been told is read the moment the grant arrives.
    // (Comparing instants taken by the test as each future completes cannot
    // tell: the two are observed in whatever order the futures are polled.)
    let next = within(h, "acquire after expiry", bound, async {
        let next = acquire(h, &waiter.locks, &key, &next_options).await;
        (guard.is_lost(), next)
    });
    let (_, (told_before_grant, next)) = tokio::join!(within(h, "loss reported", bound, guard.lost()), next);
    assert!(told_before_grant, "[{}] the lock was granted again before its holder was told", h.name());
    let released = guard.release().await;
    assert!(matches!(released, Err(LockError::Lost { .. })), "[{}] release of an expired lock: {released:?}", h.name());
    release(h, next).await;
    assert_clean(h, ns.prefix(), "after expiry").await;
}

/// Case 10: A holder process killed with SIGKILL frees the lock within TTL +
/// slack, and for TTL backends not immediately.
pub async fn killed_holder_process_frees_lock(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("killed");
    let client = h.client().await;
    let caps = client.locks.capabilities();
    if !caps.shared_across_processes {
        tracing::info!(backend = h.name(), "backend is in-process only: case not applicable");
        return;
    }
    let ttl = h.ttl();
    let mut command = h.holder_process(&key, ttl).unwrap_or_else(|| {
        panic!("[{}] the backend is shared across processes, so its harness must run a holder process", h.name())
    });
    let mut child = command
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("[{}] cannot start the holder process: {e}", h.name()));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("[{}] holder process has no stdout", h.name()));
    let mut lines = BufReader::new(stdout).lines();
    let line = within(h, "holder process reports the lock held", STEP, lines.next_line()).await;
    let token = match line {
        Ok(Some(line)) => line.strip_prefix("held ").and_then(|t| t.trim().parse::<u64>().ok()),
        _ => None,
    };
    let token = token.unwrap_or_else(|| panic!("[{}] holder process did not print `held <token>`", h.name()));
    let info = ok(h, "inspect", client.locks.inspect(&key).await);
    assert_eq!(info.map(|i| i.token.get()), Some(token), "[{}] the holder process holds the key", h.name());
    // Let at least one renewal happen so the kill lands mid-lease.
    sleep(ttl / 2).await;
    child.start_kill().unwrap_or_else(|e| panic!("[{}] cannot kill the holder process: {e}", h.name()));
    let killed_at = Instant::now();
    let _ = child.wait().await;
    let bound = ttl + caps.expiry_slack + GRACE;
    let guard = within(
        h,
        "acquire after the holder was killed",
        bound,
        acquire(h, &client.locks, &key, &options(h, "survivor")),
    )
    .await;
    let freed_after = killed_at.elapsed();
    assert!(guard.token().get() > token, "[{}] token did not increase after the kill", h.name());
    if caps.expires {
        assert!(freed_after >= ttl / 2, "[{}] freed {freed_after:?} after the kill: before the TTL", h.name());
    }
    release(h, guard).await;
    assert_clean(h, ns.prefix(), "after the killed holder").await;
}
