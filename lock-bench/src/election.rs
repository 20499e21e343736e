//! 9-10: the semaphore and leader election: uncontended semaphore
//! acquire+release against the raw round trip, and how long observers take
//! to see the next leader after the leader resigns (a candidate waiting).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, timeout};

use crate::Options;
use crate::scenarios::{fail, namespace};
use crate::stats::{Row, Samples};
use crate::target::Target;

/// 9: uncontended acquire+release of one place of a limit-3 semaphore.
pub async fn semaphore_latency(target: &Target, options: &Options) -> Result<Vec<Row>, String> {
    let raw = target.raw_round_trips(options.iterations).await?;
    let raw_p50 = raw.percentile(50.0).max(Duration::from_nanos(1));
    let key = format!("{}semaphore", namespace());
    let locks = target.client().await.map_err(fail)?;
    let mut samples = Samples::default();
    for _ in 0..options.iterations {
        let started = Instant::now();
        let guard = locks.semaphore(&key, 3).acquire().await.map_err(fail)?;
        guard.release().await.map_err(fail)?;
        samples.push(started.elapsed());
    }
    let (p50, p99) = (samples.percentile(50.0), samples.percentile(99.0));
    Ok(vec![
        Row::new(target.name(), "9 semaphore acquire+release")
            .micros("p50_us", p50)
            .micros("p99_us", p99)
            .value("p50_ratio", p50.as_secs_f64() / raw_p50.as_secs_f64()),
    ])
}

/// 10: a leader resigns while a candidate waits; the time until an observer
/// (another client) reports the candidate as leader.
pub async fn leader_failover(target: &Target, options: &Options) -> Result<Vec<Row>, String> {
    let raw = target.raw_round_trips(options.iterations.min(50)).await?;
    let raw_p50 = raw.percentile(50.0).max(Duration::from_nanos(1));
    let key = format!("{}leader", namespace());
    let (leader, candidate, observer) = (
        target.client().await.map_err(fail)?,
        target.client().await.map_err(fail)?,
        target.client().await.map_err(fail)?,
    );
    let mut leaders = observer.observe(&key).map_err(fail)?;
    let mut samples = Samples::default();
    let mut current = leader.lock(&key).value("first").acquire().await.map_err(fail)?;
    let mut next_is = (candidate.clone(), leader.clone());
    for round in 0..options.iterations.min(50) {
        let (next_client, other) = next_is.clone();
        let value = format!("leader-{round}");
        let waiting = {
            let (next_client, key, value) = (next_client.clone(), key.clone(), value.clone());
            tokio::spawn(async move { next_client.lock(&key).value(value).acquire().await })
        };
        // Let the candidate's request reach the service first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let resigned = Instant::now();
        current.release().await.map_err(fail)?;
        let seen = timeout(Duration::from_secs(30), async {
            while let Some(next) = leaders.next().await {
                if next.map_err(fail)?.and_then(|l| l.value).as_deref() == Some(value.as_str()) {
                    return Ok::<_, String>(Instant::now());
                }
            }
            Err("the observer's stream ended".to_owned())
        })
        .await
        .map_err(|_| "the observer never saw the next leader".to_owned())??;
        samples.push(seen - resigned);
        current = waiting.await.map_err(fail)?.map_err(fail)?;
        next_is = (other, next_client);
    }
    current.release().await.map_err(fail)?;
    let (p50, p99) = (samples.percentile(50.0), samples.percentile(99.0));
    Ok(vec![
        Row::new(target.name(), "10 leader failover seen")
            .micros("p50_us", p50)
            .micros("p99_us", p99)
            .value("p50_ratio", p50.as_secs_f64() / raw_p50.as_secs_f64()),
    ])
}
