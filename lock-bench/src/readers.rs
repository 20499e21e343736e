//! 7-8: the read side of the reader/writer lock: uncontended read
//! acquire+release against the raw round trip, and 16 readers holding one
//! key, whose grants must scale with their number rather than serialise
//! (compared with 16 exclusive holders doing the same in the same run).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use lock_core::LockMode;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use crate::Options;
use crate::scenarios::{fail, namespace};
use crate::stats::{Row, Samples};
use crate::target::Target;

/// How long each holder keeps the key in scenario 8: long against a round
/// trip, so serialised holders and shared ones differ by their number.
const HOLD: Duration = Duration::from_millis(20);

/// Clients in scenario 8.
const CLIENTS: usize = 16;

/// 7: uncontended read acquire+release, as a ratio of the raw p50 measured
/// just before.
pub async fn read_latency(target: &Target, options: &Options) -> Result<Vec<Row>, String> {
    let raw = target.raw_round_trips(options.iterations).await?;
    let raw_p50 = raw.percentile(50.0).max(Duration::from_nanos(1));
    let key = format!("{}read", namespace());
    let locks = target.client().await.map_err(fail)?;
    let mut reads = Samples::default();
    for _ in 0..options.iterations {
        let started = Instant::now();
        let guard = locks.read_lock(&key).acquire().await.map_err(fail)?;
        guard.release().await.map_err(fail)?;
        reads.push(started.elapsed());
    }
    let (p50, p99) = (reads.percentile(50.0), reads.percentile(99.0));
    Ok(vec![
        Row::new(target.name(), "7 read acquire+release")
            .micros("p50_us", p50)
            .micros("p99_us", p99)
            .value("p50_ratio", p50.as_secs_f64() / raw_p50.as_secs_f64())
            .value("p99_ratio", p99.as_secs_f64() / raw_p50.as_secs_f64()),
    ])
}

/// 8: 16 clients on one key, each holding it for 20 ms at a time: grants per
/// second as readers against the same as exclusive holders, the most
/// readers seen inside at once, and any reader seen inside with a writer.
pub async fn shared_readers(target: &Target, options: &Options) -> Result<Vec<Row>, String> {
    let (exclusive_rate, _) = holders_on_one_key(target, options, LockMode::Exclusive).await?;
    let (read_rate, most_inside) = holders_on_one_key(target, options, LockMode::Read).await?;
    Ok(vec![
        Row::new(target.name(), &format!("8 readers x{CLIENTS} one key"))
            .value("grants_per_s", read_rate)
            .value("exclusive_grants_per_s", exclusive_rate)
            .value("speedup", read_rate / exclusive_rate.max(f64::MIN_POSITIVE))
            .value("most_inside", most_inside as f64),
    ])
}

async fn holders_on_one_key(target: &Target, options: &Options, mode: LockMode) -> Result<(f64, usize), String> {
    let key = format!("{}shared", namespace());
    let (grants, inside, most) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(target.client().await.map_err(fail)?);
    }
    let until = Instant::now() + options.duration;
    let mut workers = JoinSet::new();
    for locks in clients {
        let (key, grants, inside, most) = (key.clone(), grants.clone(), inside.clone(), most.clone());
        workers.spawn(async move {
            while Instant::now() < until {
                let request = locks.lock(&key).mode(mode).wait(Duration::from_secs(10));
                let Ok(guard) = request.acquire().await else { continue };
                grants.fetch_add(1, Ordering::SeqCst);
                let now_inside = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now_inside, Ordering::SeqCst);
                sleep(HOLD).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                let _ = guard.release().await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let most = most.load(Ordering::SeqCst);
    if mode != LockMode::Read && most > 1 {
        return Err(format!("8 readers: {most} exclusive holders inside at once"));
    }
    Ok((grants.load(Ordering::SeqCst) as f64 / options.duration.as_secs_f64(), most))
}
