//! Exclusion and fencing under contention, and many locks on one client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use lock_core::{FencingToken, LockKey, Locks};
use tokio::task::JoinSet;
use tokio::time::sleep;

use super::support::{GRACE, STEP, acquire, assert_clean, ok, options, release, take, within};
use crate::{Harness, Namespace};

const WORKERS: usize = 8;
const ROUNDS: usize = 50;

/// Runs `ROUNDS` guarded read-sleep-write increments on every client in
/// `clients` at once, and checks the count and that no two were ever inside.
async fn guarded_counter(h: &Arc<dyn Harness>, clients: Vec<Locks>, key: LockKey) {
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let last_token = Arc::new(AtomicU64::new(0));
    let longest_wait = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for (worker, locks) in clients.into_iter().enumerate() {
        let (h, key) = (Arc::clone(h), key.clone());
        let (counter, inside, overlaps, last_token, longest_wait) = (
            Arc::clone(&counter),
            Arc::clone(&inside),
            Arc::clone(&overlaps),
            Arc::clone(&last_token),
            Arc::clone(&longest_wait),
        );
        workers.spawn(async move {
            let opts = options(&*h, &format!("worker-{worker}"));
            for _ in 0..ROUNDS {
                let asked = tokio::time::Instant::now();
                let guard = acquire(&*h, &locks, &key, &opts).await;
                let waited = u64::try_from(asked.elapsed().as_millis()).unwrap_or(u64::MAX);
                longest_wait.fetch_max(waited, Ordering::SeqCst);
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let previous = last_token.swap(guard.token().get(), Ordering::SeqCst);
                assert!(guard.token().get() > previous, "[{}] token {} after {previous}", h.name(), guard.token());
                // Unsynchronised on purpose: only the lock keeps this exact.
                let seen = counter.load(Ordering::SeqCst);
                sleep(Duration::from_millis(1)).await;
                counter.store(seen + 1, Ordering::SeqCst);
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
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "[{}] two holders were inside at once", h.name());
    // Holders keep the lock for milliseconds: a wait of more than two TTLs
    // means a release did not wake the next waiter.
    let longest = Duration::from_millis(longest_wait.load(Ordering::SeqCst));
    let bound = h.ttl() * 2 + GRACE;
    assert!(longest <= bound, "[{}] a waiter waited {longest:?}: a release did not wake it", h.name());
    let expected = (WORKERS * ROUNDS) as u64;
    assert_eq!(counter.load(Ordering::SeqCst), expected, "[{}] lost updates: the lock did not exclude", h.name());
}

/// Case 2a: 8 clients x 50 acquisitions of one key guard an unsynchronised
/// read-sleep-write counter: the count is exact, never two are inside.
pub async fn mutual_exclusion_across_clients(h: Arc<dyn Harness>) {
    let ns = Namespace::new();
    let mut clients = Vec::new();
    let mut controls = Vec::new();
    for _ in 0..WORKERS {
        let client = h.client().await;
        clients.push(client.locks);
        controls.push(client.control);
    }
    guarded_counter(&h, clients, ns.key("counter")).await;
    assert_clean(&*h, ns.prefix(), "after contention").await;
}

/// Case 2b: The same with 8 tasks sharing one client: exclusion between tasks of
/// one client never depends on the service.
pub async fn mutual_exclusion_within_one_client(h: Arc<dyn Harness>) {
    let ns = Namespace::new();
    let client = h.client().await;
    guarded_counter(&h, vec![client.locks.clone(); WORKERS], ns.key("counter")).await;
    assert_clean(&*h, ns.prefix(), "after contention").await;
}

/// Case 7: Fencing tokens strictly increase over 100 grants across 3 clients, then
/// across an expiry and across a brand-new client.
pub async fn fencing_tokens_strictly_increase(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    let ns = Namespace::new();
    let key = ns.key("fenced");
    let clients = [h.client().await, h.client().await, h.client().await];
    let mut last = FencingToken::new(0);
    let mut check = |token: FencingToken, when: &str| {
        assert!(token > last, "[{}] {when}: token {token} does not exceed {last}", h.name());
        last = token;
    };
    for grant in 0..100 {
        let client = &clients[grant % clients.len()];
        let guard = acquire(h, &client.locks, &key, &options(h, "fenced")).await;
        check(guard.token(), &format!("grant {grant}"));
        release(h, guard).await;
    }
    // A grant that is never renewed nor released, left to expire.
    let abandoned =
        ok(h, "raw try_acquire", clients[0].locks.backend().try_acquire(&key, &options(h, "abandoned")).await)
            .unwrap_or_else(|| panic!("[{}] raw try_acquire of a free key returned None", h.name()));
    check(abandoned.token(), "abandoned grant");
    if clients[0].locks.capabilities().expires {
        // Its client falls silent too, as a paused or dead holder would.
        clients[0].control.cut_off().await;
        let bound = h.ttl() * 3 + clients[0].locks.capabilities().expiry_slack + STEP;
        let after_expiry =
            within(h, "acquire after expiry", bound, acquire(h, &clients[1].locks, &key, &options(h, "next"))).await;
        check(after_expiry.token(), "grant after expiry");
        release(h, after_expiry).await;
        clients[0].control.restore().await;
    } else {
        ok(h, "release abandoned grant", clients[0].locks.backend().release(&abandoned).await);
    }
    let restarted = h.client().await;
    let guard = take(h, &restarted.locks, &key, &options(h, "restarted")).await;
    check(guard.token(), "grant to a new client");
    release(h, guard).await;
    assert_clean(h, ns.prefix(), "after fencing").await;
}

/// Case 17: One client holds 1,000 locks at once, keeps them all past 2 x TTL,
/// releases them all, and nothing is left on the service.
pub async fn one_client_holds_many_locks(h: std::sync::Arc<dyn Harness>) {
    let h = &*h;
    const LOCKS: usize = 1_000;
    let ns = Namespace::new();
    let client = h.client().await;
    let mut acquiring = JoinSet::new();
    for index in 0..LOCKS {
        let (locks, key, opts) = (client.locks.clone(), ns.key(&format!("lock-{index}")), options(h, "many"));
        acquiring.spawn(async move { (index, locks.try_acquire(&key, &opts).await) });
    }
    let mut guards = Vec::with_capacity(LOCKS);
    while let Some(joined) = within(h, "acquire 1,000 locks", STEP * 2, acquiring.join_next()).await {
        let (index, result) = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let guard = ok(h, "try_acquire one of many", result)
            .unwrap_or_else(|| panic!("[{}] free key lock-{index} was not granted", h.name()));
        guards.push(guard);
    }
    assert_eq!(h.leftover(ns.prefix()).await, LOCKS, "[{}] records while holding", h.name());
    sleep(h.ttl() * 2 + h.ttl() / 2).await;
    let lost = guards.iter().filter(|guard| guard.is_lost()).count();
    assert_eq!(lost, 0, "[{}] {lost} of {LOCKS} locks were lost while renewed", h.name());
    let other = h.client().await;
    for guard in guards.iter().step_by(97) {
        let info = ok(h, "inspect held key", other.locks.inspect(guard.key()).await);
        assert_eq!(info.map(|i| i.token), Some(guard.token()), "[{}] {} after 2 x TTL", h.name(), guard.key());
    }
    let mut releasing = JoinSet::new();
    for guard in guards {
        releasing.spawn(guard.release());
    }
    while let Some(joined) = within(h, "release 1,000 locks", STEP * 2, releasing.join_next()).await {
        let result = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        ok(h, "release one of many", result);
    }
    assert_clean(h, ns.prefix(), "after releasing 1,000 locks").await;
}
