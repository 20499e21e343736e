//! The scenarios: each runs against one target and returns report rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use lock_core::Locks;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use crate::Options;
use crate::stats::{Row, Samples};
use crate::target::{RawClient, Target};

type Outcome = Result<Vec<Row>, String>;

/// A key prefix no other scenario or run uses.
pub fn namespace() -> String {
    static SCENARIO: AtomicU64 = AtomicU64::new(0);
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("bench/{}-{}-{}/", std::process::id(), since_epoch.as_nanos(), SCENARIO.fetch_add(1, Ordering::Relaxed))
}

/// An error as the message a scenario fails with.
pub fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// How long the hand-off scenario's holder waits before it releases: time
/// for the waiter's requests to reach the service (they go out at its
/// start; nothing is sent for the rest of it).
pub const HANDOFF_PAUSE: Duration = Duration::from_millis(10);

/// Rounds that scenarios 1 and 2 take turns in.
const LATENCY_ROUNDS: usize = 10;

/// 1-3: raw round trip, uncontended acquire+release, hand-off. 1 and 2 take
/// turns in [`LATENCY_ROUNDS`] rounds, each a block of back-to-back raw
/// round trips and then one of acquire+release, so drift in the machine's
/// speed during the run falls on both while each sample still follows one
/// of its own kind; each hand-off is followed by a raw round trip after the
/// same pause as the hand-off's release. 2 is given as ratios of the raw
/// p50 measured back to back, 3 of the raw p50 after the pause (and, as
/// `p50_ratio_back_to_back`, of the back-to-back one).
pub async fn latency(target: &Target, options: &Options) -> Outcome {
    let ns = namespace();
    let mut raw_client = target.raw_client().await?;
    let locks = target.client().await.map_err(fail)?;
    let key = format!("{ns}uncontended");
    let (mut raw, mut uncontended) = (Samples::default(), Samples::default());
    let rounds = LATENCY_ROUNDS.min(options.iterations.max(1));
    let per_round = options.iterations.div_ceil(rounds);
    for _ in 0..rounds {
        for _ in 0..per_round {
            raw.push(raw_client.round_trip().await?);
        }
        for _ in 0..per_round {
            uncontended.push(acquire_release(&locks, &key).await?);
        }
    }
    let (handoff, raw_after_pause) =
        handoff_beside_raw(target, &format!("{ns}handoff"), options.iterations.min(200), Some(&mut raw_client)).await?;
    let ratio_to = |d: Duration, base: Duration| d.as_secs_f64() / base.max(Duration::from_nanos(1)).as_secs_f64();
    let (raw_p50, idle_p50) = (raw.percentile(50.0), raw_after_pause.percentile(50.0));
    let name = target.name();
    let (u50, u99, h50, h99) = (
        uncontended.percentile(50.0),
        uncontended.percentile(99.0),
        handoff.percentile(50.0),
        handoff.percentile(99.0),
    );
    let pause_ms = HANDOFF_PAUSE.as_millis();
    Ok(vec![
        Row::new(name, "1 raw round trip").micros("p50_us", raw_p50).micros("p99_us", raw.percentile(99.0)),
        Row::new(name, &format!("1 raw after {pause_ms} ms idle"))
            .micros("p50_us", idle_p50)
            .micros("p99_us", raw_after_pause.percentile(99.0))
            .value("p50_ratio_back_to_back", ratio_to(idle_p50, raw_p50)),
        Row::new(name, "2 acquire+release")
            .micros("p50_us", u50)
            .micros("p99_us", u99)
            .value("p50_ratio", ratio_to(u50, raw_p50))
            .value("p99_ratio", ratio_to(u99, raw_p50)),
        Row::new(name, "3 hand-off")
            .micros("p50_us", h50)
            .micros("p99_us", h99)
            .value("p50_ratio", ratio_to(h50, idle_p50))
            .value("p99_ratio", ratio_to(h99, idle_p50))
            .value("p50_ratio_back_to_back", ratio_to(h50, raw_p50)),
    ])
}

/// One acquire+release of `key`, timed.
async fn acquire_release(locks: &Locks, key: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let guard = locks.lock(key).acquire().await.map_err(fail)?;
    guard.release().await.map_err(fail)?;
    Ok(started.elapsed())
}

/// `count` uncontended acquire+release of `key` by one new client.
pub async fn uncontended(target: &Target, key: &str, count: usize) -> Result<Samples, String> {
    let locks = target.client().await.map_err(fail)?;
    let mut samples = Samples::default();
    for _ in 0..count {
        samples.push(acquire_release(&locks, key).await?);
    }
    Ok(samples)
}

/// `count` hand-offs of `key` between two new clients: a waiter blocked on
/// the held key, timed from the holder's release call until the waiter holds
/// the lock.
pub async fn handoff(target: &Target, key: &str, count: usize) -> Result<Samples, String> {
    Ok(handoff_beside_raw(target, key, count, None).await?.0)
}

/// [`handoff`], and with `raw` a raw round trip after each hand-off, sent
/// after the same pause as the release: the hand-offs and those round trips.
async fn handoff_beside_raw(
    target: &Target,
    key: &str,
    count: usize,
    mut raw: Option<&mut RawClient>,
) -> Result<(Samples, Samples), String> {
    let holder = target.client().await.map_err(fail)?;
    let waiter = target.client().await.map_err(fail)?;
    let (mut samples, mut raw_samples) = (Samples::default(), Samples::default());
    for _ in 0..count {
        let guard = holder.lock(key).acquire().await.map_err(fail)?;
        let waiting = {
            let (waiter, key) = (waiter.clone(), key.to_owned());
            tokio::spawn(async move {
                let guard = waiter.lock(&key).acquire().await;
                (Instant::now(), guard)
            })
        };
        // Let the waiter's request reach the service before the release.
        sleep(HANDOFF_PAUSE).await;
        let released = Instant::now();
        guard.release().await.map_err(fail)?;
        let (granted, guard) = waiting.await.map_err(fail)?;
        guard.map_err(fail)?.release().await.map_err(fail)?;
        samples.push(granted - released);
        if let Some(raw) = raw.as_deref_mut() {
            sleep(HANDOFF_PAUSE).await;
            raw_samples.push(raw.round_trip().await?);
        }
    }
    Ok((samples, raw_samples))
}

/// 4: `clients` clients on one key; grants per second and overlaps seen.
pub async fn contention(target: &Target, options: &Options, clients: usize) -> Outcome {
    let key = format!("{}contended", namespace());
    let contended = contend(target, &key, clients, options.duration).await?;
    let scenario = format!("4 contention x{clients}");
    if contended.overlaps > 0 {
        return Err(format!("{scenario}: {} overlapping holders", contended.overlaps));
    }
    let rate = contended.grants as f64 / options.duration.as_secs_f64();
    Ok(vec![Row::new(target.name(), &scenario).value("grants_per_s", rate).value("overlaps", 0.0)])
}

/// What clients contending for one key achieved.
#[derive(Debug, Default)]
pub struct Contended {
    /// Grants made before the deadline.
    pub grants: u64,
    /// The same, per client.
    pub per_client: Vec<u64>,
    /// Grants made while another client held the key.
    pub overlaps: u64,
    /// Acquires that waited [`LONG_WAIT`] or more, granted or not.
    pub long_waits: u64,
    /// Acquires that failed (timed out, or an error).
    pub failures: u64,
    /// The first failure's message.
    pub first_failure: Option<String>,
}

/// A contended acquire that waits this long is counted: with a grant every
/// few milliseconds, only a waiter that missed its wake-up waits so long.
pub const LONG_WAIT: Duration = Duration::from_secs(2);

/// `clients` new clients, connected before the clock starts, acquire and
/// release `key` for `duration`, each acquire waiting up to 10 s but at most
/// until 2 s after the end (grants then no longer count). A shared counter
/// checks that no two ever hold it at once.
pub async fn contend(target: &Target, key: &str, clients: usize, duration: Duration) -> Result<Contended, String> {
    let (overlaps, long_waits, failures, inside) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let first_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut connected = Vec::with_capacity(clients);
    for _ in 0..clients {
        connected.push(target.client().await.map_err(fail)?);
    }
    let until = Instant::now() + duration;
    let mut workers = JoinSet::new();
    for locks in connected {
        let (key, overlaps, long_waits, failures, inside, first_failure) = (
            key.to_owned(),
            overlaps.clone(),
            long_waits.clone(),
            failures.clone(),
            inside.clone(),
            first_failure.clone(),
        );
        workers.spawn(async move {
            let mut grants = 0_u64;
            loop {
                let asked = Instant::now();
                if asked >= until {
                    break grants;
                }
                let wait = Duration::from_secs(10).min(until + Duration::from_secs(2) - asked);
                let acquired = locks.lock(&key).wait(wait).acquire().await;
                if asked.elapsed() >= LONG_WAIT {
                    long_waits.fetch_add(1, Ordering::SeqCst);
                }
                let guard = match acquired {
                    Ok(guard) => guard,
                    Err(error) => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut first) = first_failure.lock() {
                            first.get_or_insert_with(|| error.to_string());
                        }
                        continue;
                    }
                };
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                if Instant::now() < until {
                    grants += 1;
                }
                inside.fetch_sub(1, Ordering::SeqCst);
                let _ = guard.release().await;
            }
        });
    }
    let mut per_client = Vec::with_capacity(clients);
    while let Some(joined) = workers.join_next().await {
        per_client.push(joined.map_err(fail)?);
    }
    let first_failure = first_failure.lock().ok().and_then(|mut first| first.take());
    Ok(Contended {
        grants: per_client.iter().sum(),
        per_client,
        overlaps: overlaps.load(Ordering::SeqCst),
        long_waits: long_waits.load(Ordering::SeqCst),
        failures: failures.load(Ordering::SeqCst),
        first_failure,
    })
}

/// 5: 64 keys, one client each; grants per second in all.
pub async fn spread(target: &Target, options: &Options) -> Outcome {
    const KEYS: usize = 64;
    let ns = namespace();
    let grants = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + options.duration;
    let mut workers = JoinSet::new();
    for index in 0..KEYS {
        let locks = target.client().await.map_err(fail)?;
        let (key, grants) = (format!("{ns}key-{index}"), grants.clone());
        workers.spawn(async move {
            while Instant::now() < until {
                if let Ok(guard) = locks.lock(&key).acquire().await {
                    grants.fetch_add(1, Ordering::SeqCst);
                    let _ = guard.release().await;
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let rate = grants.load(Ordering::SeqCst) as f64 / options.duration.as_secs_f64();
    Ok(vec![Row::new(target.name(), "5 spread x64").value("grants_per_s", rate)])
}

/// 6: one client holding `options.locks` locks: time to acquire them, the
/// requests per second the service receives while they are held (against the
/// same measure with one lock held), and the client's resident memory.
pub async fn scale(target: &Target, options: &Options) -> Outcome {
    let ns = namespace();
    let one_lock_rate = {
        let locks = target.client().await.map_err(fail)?;
        let guard = locks.lock(format!("{ns}single")).acquire().await.map_err(fail)?;
        let rate = request_rate(target, options.hold).await;
        guard.release().await.map_err(fail)?;
        rate
    };
    let locks = target.client().await.map_err(fail)?;
    let started = Instant::now();
    let guards = acquire_many(&locks, &ns, options.locks).await?;
    let acquired_in = started.elapsed();
    // Let acquisition traffic drain (each lock's loss watch is registered on
    // the shared watch stream after its grant): the rate to report is the
    // steady one of keeping the locks.
    if one_lock_rate.is_some() {
        sleep(options.ttl).await;
    }
    let many_rate = request_rate(target, options.hold).await;
    let rss = resident_kib();
    let lost = guards.iter().filter(|guard| guard.is_lost()).count();
    let mut releasing = JoinSet::new();
    for guard in guards {
        releasing.spawn(guard.release());
    }
    while releasing.join_next().await.is_some() {}
    if lost > 0 {
        return Err(format!("6 scale: {lost} locks lost while held"));
    }
    let mut row = Row::new(target.name(), &format!("6 scale x{}", options.locks))
        .value("acquire_all_s", acquired_in.as_secs_f64())
        .value("locks_per_s", options.locks as f64 / acquired_in.as_secs_f64());
    if let (Some(one), Some(many)) = (one_lock_rate, many_rate) {
        row = row.value("req_per_s_1_lock", one).value("req_per_s_all_locks", many);
    }
    Ok(vec![row.value("rss_mib", rss.unwrap_or(0.0) / 1024.0)])
}

async fn acquire_many(locks: &Locks, ns: &str, count: usize) -> Result<Vec<lock_core::LockGuard>, String> {
    const IN_FLIGHT: usize = 128;
    let mut guards = Vec::with_capacity(count);
    let mut pending: JoinSet<Result<lock_core::LockGuard, lock_core::LockError>> = JoinSet::new();
    for index in 0..count {
        if pending.len() >= IN_FLIGHT
            && let Some(joined) = pending.join_next().await
        {
            guards.push(joined.map_err(fail)?.map_err(fail)?);
        }
        let (locks, key) = (locks.clone(), format!("{ns}many-{index}"));
        pending.spawn(async move { locks.lock(&key).acquire().await });
    }
    while let Some(joined) = pending.join_next().await {
        guards.push(joined.map_err(fail)?.map_err(fail)?);
    }
    Ok(guards)
}

/// Requests per second the service receives over `window`.
async fn request_rate(target: &Target, window: Duration) -> Option<f64> {
    let before = target.server_requests().await?;
    sleep(window).await;
    let after = target.server_requests().await?;
    Some((after - before) / window.as_secs_f64())
}

fn resident_kib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
