//! Renewal shared by every lock of one session or lease.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The renewal of a session (or lease) that all the locks of one client
/// share: at most one renewal request is in flight, and an answer whose
/// request was sent recently enough is reused, so renewal traffic stays the
/// same whether the client holds one lock or ten thousand.
///
/// Backends whose locks all live and die with one session (ZooKeeper,
/// Consul) renew through it; [`SharedRenewal::renew`] returns when the proof
/// was *sent*, which is what [`DistributedLock::renew`](crate::DistributedLock::renew)
/// reports.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use lock_core::SharedRenewal;
///
/// let renewal = SharedRenewal::new(Duration::from_secs(1));
/// let sent = AtomicUsize::new(0);
/// for _ in 0..3 {
///     let request = || async { sent.fetch_add(1, Ordering::Relaxed); Ok::<(), ()>(()) };
///     renewal.renew(request).await.ok();
/// }
/// assert_eq!(sent.load(Ordering::Relaxed), 1); // the later two reused the first answer
/// # }
/// ```
#[derive(Debug)]
pub struct SharedRenewal {
    confirmed: std::sync::Mutex<Option<Instant>>,
    in_flight: tokio::sync::Mutex<()>,
    fresh_for: Duration,
}

impl SharedRenewal {
    /// A renewal that reuses an answer whose request was sent less than
    /// `fresh_for` ago (a quarter of the TTL is a good choice: guards renew
    /// every third).
    pub fn new(fresh_for: Duration) -> Self {
        Self { confirmed: std::sync::Mutex::new(None), in_flight: tokio::sync::Mutex::new(()), fresh_for }
    }

    /// Records that a request sent at `sent` proved the session alive (any
    /// answered request may count, where the service says so).
    pub fn confirm(&self, sent: Instant) {
        let mut confirmed = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        if confirmed.is_none_or(|at| at < sent) {
            *confirmed = Some(sent);
        }
    }

    /// The send time of the last confirmation, however old: the service
    /// counts the session's TTL from it.
    pub fn last_confirmed(&self) -> Option<Instant> {
        *self.confirmed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The send time of the last confirmation, if it is still fresh.
    pub fn recent(&self) -> Option<Instant> {
        let confirmed = *self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        confirmed.filter(|at| at.elapsed() < self.fresh_for)
    }

    /// A fresh confirmation, or runs `request` (one at a time; callers that
    /// queued behind it reuse its answer) and records it when it succeeds.
    /// Returns when the proof was sent.
    ///
    /// # Errors
    /// What `request` returns.
    pub async fn renew<F, Fut, E>(&self, request: F) -> Result<Instant, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        if let Some(at) = self.recent() {
            return Ok(at);
        }
        let _single_flight = self.in_flight.lock().await;
        if let Some(at) = self.recent() {
            return Ok(at);
        }
        let sent = Instant::now();
        request().await?;
        self.confirm(sent);
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn one_request_for_many_concurrent_renewals_and_again_once_stale() {
        let renewal = Arc::new(SharedRenewal::new(Duration::from_millis(250)));
        let sent = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let (renewal, sent) = (Arc::clone(&renewal), Arc::clone(&sent));
            tasks.spawn(async move {
                renewal
                    .renew(|| async {
                        sent.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Ok::<(), ()>(())
                    })
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            assert!(matches!(done, Ok(Ok(_))));
        }
        assert_eq!(sent.load(Ordering::Relaxed), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = renewal.renew(|| async { Ok::<(), ()>(()) }).await;
        assert!(again.is_ok_and(|at| at.elapsed() < Duration::from_millis(1)));
    }

    #[tokio::test]
    async fn a_failed_request_confirms_nothing() {
        let renewal = SharedRenewal::new(Duration::from_secs(1));
        assert_eq!(renewal.renew(|| async { Err::<(), _>("down") }).await, Err("down"));
        assert!(renewal.recent().is_none());
    }
}
