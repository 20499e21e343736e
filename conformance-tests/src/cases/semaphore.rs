//! Counting semaphores: at most `limit` holders across clients, a place
//! freed by a release, an expiry or a cancelled wait goes to the next
//! contender, contenders that disagree on the limit are refused, and nothing
//! is left behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lock_core::{LockError, LockKey, LockMode, LockOptions, Locks};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use super::support::{
    GRACE, STEP, acquire, assert_clean, let_abandoned_requests_land, ok, options, release, take, within,
};
use crate::{Harness, Namespace};

fn places(h: &dyn Harness, owner: &str, limit: u32) -> LockOptions {
    let mode = LockMode::semaphore(limit).unwrap_or_else(|| panic!("a limit of {limit} is not a semaphore"));
    options(h, owner).mode(mode)
}

/// Fails the case unless the backend grants semaphores.
fn require_semaphore(h: &dyn Harness, locks: &Locks) {
    let caps = locks.capabilities();
    assert!(
        caps.grants(LockMode::Semaphore { limit: std::num::NonZeroU32::MIN }),
        "[{}] the backend does not grant semaphores (it grants {:?})",
        h.name(),
        caps.modes
    );
}

async fn assert_full(h: &dyn Harness, locks: &Locks, key: &LockKey, limit: u32, why: &str) {
    let step = format!("try_acquire a place of {key} ({why})");
    if let Some(guard) = ok(h, &step, locks.try_acquire(key, &places(h, "extra", limit)).await) {
        let token = guard.token();
        release(h, guard).await;
        panic!("[{}] {step}: granted with token {token}", h.name());
    }
}

/// Semaphore case 1: three of four clients hold a limit-3 semaphore at once;
/// the fourth is refused, then granted within the grace of a release, with
/// a token above every earlier grant's; `holders` lists the holders.
pub async fn semaphore_admits_up_to_its_limit(h: Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("places");
    let clients = [h.client().await, h.client().await, h.client().await, h.client().await];
    require_semaphore(h, &clients[0].locks);
    let mut held = Vec::new();
    for (index, client) in clients[..3].iter().enumerate() {
        held.push(take(h, &client.locks, &key, &places(h, &format!("holder-{index}"), 3)).await);
    }
    let holders = ok(h, "holders", clients[3].locks.holders(key.as_str()).await);
    assert_eq!(holders.len(), 3, "[{}] three holders listed: {holders:?}", h.name());
    assert!(
        holders.iter().all(|info| matches!(info.mode, LockMode::Semaphore { .. })),
        "[{}] holders' modes: {holders:?}",
        h.name()
    );
    assert_full(h, &clients[3].locks, &key, 3, "three places taken").await;
    assert_full(h, &clients[3].locks, &key, 3, "still").await;
    let highest = held.iter().map(|g| g.token()).max();
    let fourth_options = places(h, "fourth", 3);
    let fourth = async {
        let guard = acquire(h, &clients[3].locks, &key, &fourth_options).await;
        (Instant::now(), guard)
    };
    let first = held.remove(0);
    let free_one = async {
        // Room for the waiter's request to reach the service; had it not,
        // the release would still have to let it in at once.
        sleep(GRACE / 4).await;
        let released_at = Instant::now();
        release(h, first).await;
        released_at
    };
    let ((granted_at, fourth), released_at) = tokio::join!(within(h, "the fourth", STEP, fourth), free_one);
    let after = granted_at.saturating_duration_since(released_at);
    assert!(after <= GRACE, "[{}] the waiting contender was granted {after:?} after a release", h.name());
    assert!(Some(fourth.token()) > highest, "[{}] the fourth's token follows the others'", h.name());
    for guard in held {
        release(h, guard).await;
    }
    release(h, fourth).await;
    assert_clean(h, ns.prefix(), "after the semaphore").await;
}

/// Semaphore case 2: 6 clients x 10 rounds on a limit-2 semaphore: never
/// more than two inside, every grant's token distinct.
pub async fn semaphore_limit_holds_under_contention(h: Arc<dyn Harness>) {
    const CLIENTS: usize = 6;
    const ROUNDS: usize = 10;
    let ns = Namespace::new();
    let key = ns.key("contended");
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = JoinSet::new();
    for _ in 0..CLIENTS {
        let client = h.client().await;
        require_semaphore(&*h, &client.locks);
        let (h, key, inside, most, tokens) =
            (Arc::clone(&h), key.clone(), Arc::clone(&inside), Arc::clone(&most), Arc::clone(&tokens));
        workers.spawn(async move {
            let client = client;
            let opts = places(&*h, "worker", 2);
            for _ in 0..ROUNDS {
                let guard = acquire(&*h, &client.locks, &key, &opts).await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokens.lock().unwrap_or_else(|p| p.into_inner()).push(guard.token().get());
                sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                release(&*h, guard).await;
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        if let Err(error) = joined {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 2, "[{}] {most} holders inside a limit-2 semaphore at once", h.name());
    let mut tokens = tokens.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let all = tokens.len();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), all, "[{}] two grants shared a token", h.name());
    assert_clean(&*h, ns.prefix(), "after contention").await;
}

/// Semaphore case 3: a contender naming another limit than the holders' is
/// refused with [`LockError::Conflict`], waiting or not, and leaves nothing.
pub async fn semaphore_limits_must_agree(h: Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("agreed");
    let (holder, other) = (h.client().await, h.client().await);
    require_semaphore(h, &holder.locks);
    let guard = take(h, &holder.locks, &key, &places(h, "two", 2)).await;
    let tried = other.locks.try_acquire(&key, &places(h, "three", 3)).await;
    assert!(matches!(tried, Err(LockError::Conflict { .. })), "[{}] try_acquire with limit 3: {tried:?}", h.name());
    let waited = within(
        h,
        "acquire with another limit",
        STEP,
        other.locks.acquire(&key, &places(h, "three", 3), Some(Instant::now() + GRACE)),
    )
    .await;
    assert!(matches!(waited, Err(LockError::Conflict { .. })), "[{}] acquire with limit 3: {waited:?}", h.name());
    let same = take(h, &other.locks, &key, &places(h, "two-again", 2)).await;
    release(h, same).await;
    release(h, guard).await;
    assert_clean(h, ns.prefix(), "after a conflict").await;
}

/// Semaphore case 4: a holder whose client falls silent gives its place up
/// within TTL + expiry slack, learning of it before the place is granted
/// elsewhere; an abandoned wait leaves nothing.
pub async fn semaphore_places_come_back(h: Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("silent");
    let (silent, steady, next) = (h.client().await, h.client().await, h.client().await);
    require_semaphore(h, &silent.locks);
    let kept = take(h, &steady.locks, &key, &places(h, "steady", 2)).await;
    let quiet = take(h, &silent.locks, &key, &places(h, "silent", 2)).await;
    // A wait given up while both places are taken leaves nothing.
    let dropped = tokio::time::timeout(GRACE / 2, next.locks.acquire(&key, &places(h, "dropped", 2), None)).await;
    assert!(dropped.is_err(), "[{}] a third holder got into a limit-2 semaphore", h.name());
    let_abandoned_requests_land().await;
    let caps = silent.locks.capabilities();
    if caps.expires {
        silent.control.cut_off().await;
        let bound = h.ttl() + caps.expiry_slack + GRACE;
        let next_options = places(h, "next", 2);
        let (told, granted) = within(h, "a place after a silent holder", bound, async {
            let granted = acquire(h, &next.locks, &key, &next_options).await;
            (quiet.is_lost(), granted)
        })
        .await;
        assert!(told, "[{}] the silent holder was not told before its place was granted", h.name());
        silent.control.restore().await;
        assert!(quiet.release().await.is_err(), "[{}] releasing a lost place is an error", h.name());
        release(h, granted).await;
    } else {
        release(h, quiet).await;
    }
    release(h, kept).await;
    assert_clean(h, ns.prefix(), "after places came back").await;
}
