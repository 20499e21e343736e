//! Metrics through the [`metrics`](https://docs.rs/metrics) facade: their
//! names, and the recording that every backend shares.
//!
//! distlock records into whatever recorder the application installs
//! (`metrics-exporter-prometheus`, `metrics-exporter-statsd`, ...); with none
//! installed, recording does nothing and costs next to nothing. Everything is
//! recorded by [`Locks`](crate::Locks) and [`LockGuard`](crate::LockGuard),
//! so every backend reports the same metrics, under the same names.
//!
//! | name | type | unit | labels | moves when |
//! |---|---|---|---|---|
//! | `distlock_acquire_duration_seconds` | histogram | seconds | `backend`, `mode`, `outcome` | an `acquire` or `try_acquire` ends: one sample, from the call to its outcome (`granted`, `busy`, `timeout`, `error`, `cancelled`) |
//! | `distlock_wait_duration_seconds` | histogram | seconds | `backend`, `mode`, `outcome` | an `acquire` that had to wait ends: the time it spent waiting |
//! | `distlock_grants_total` | counter | count | `backend`, `mode` | a guard is handed out (`acquire` or `try_acquire`) |
//! | `distlock_acquire_timeouts_total` | counter | count | `backend`, `mode` | an `acquire` ends with [`LockError::Timeout`] |
//! | `distlock_held_locks` | gauge | count | `backend`, `mode` | +1 with every grant; −1 once per guard, when it stops holding: released (whatever the answer), lost, or dropped |
//! | `distlock_held_duration_seconds` | histogram | seconds | `backend`, `mode` | a guard stops holding: the time since its grant |
//! | `distlock_losses_total` | counter | count | `backend`, `mode`, `reason` | a held lock is lost, once per guard ([`LostReason::name`]) |
//! | `distlock_release_failures_total` | counter | count | `backend`, `mode`, `error` | [`LockGuard::release`](crate::LockGuard::release) returns an error, or a dropped guard's release fails |
//! | `distlock_renewals_total` | counter | count | `backend`, `mode` | a guard's renewal (in the background or by [`renew`](crate::LockGuard::renew)) succeeds |
//! | `distlock_renewal_failures_total` | counter | count | `backend`, `mode`, `error` | a guard's renewal fails |
//! | `distlock_session_renewals_total` | counter | count | `backend` | a backend's session or lease keep-alive is confirmed ([`session_renewal`]) |
//! | `distlock_session_renewal_failures_total` | counter | count | `backend` | a backend's session or lease keep-alive fails ([`session_renewal`]) |
//!
//! Labels:
//!
//! * `backend`: the backend's name, as [`Locks::backend_name`](crate::Locks::backend_name)
//!   gives it (`memory`, `file`, `etcd`, `zk`, `consul`).
//! * `mode`: [`LockMode::name`]: `exclusive`, `read`, `write`, `semaphore`.
//! * `outcome`: `granted`; `busy` (`try_acquire` found the key held);
//!   `timeout`; `error` (any other error, a grant that came too late to be
//!   proven held included); `cancelled` (the future was dropped).
//! * `reason`: `revoked`, `session_ended`, `not_confirmed`.
//! * `error`: `lost`, `not_held`, `unavailable`, `other`.
//! * `key`: the lock's key, on every metric but the session's, only on a
//!   client built with [`Locks::with_key_labels`](crate::Locks::with_key_labels):
//!   keys are unbounded in number, and so would be the series.
//!
//! A request refused before anything is sent (an invalid key or option) is
//! not counted. The wait of an `acquire` is the time it spent blocked: behind
//! another task of this client holding the key, and in the backend's wait
//! loop, behind another holder (or for a lock delay, or for the service to
//! come back). Every backend's wait loop races its deadline with
//! [`deadline_passed`](crate::deadline_passed), which tells the acquisition
//! of its task when it waits.
//!
//! A loss is counted, and the guard stops counting as held, as soon as it is
//! known: when the backend or the guard's clock reports it, before
//! [`LockGuard::lost`](crate::LockGuard::lost) completes. A loss that
//! [`release`](crate::LockGuard::release) finds counts too, and that release
//! then also counts as failed (`error="lost"`).
//!
//! # Tracing
//!
//! `tracing` spans, all at INFO; all but `distlock.wait` (which is inside
//! one) carry the fields `backend`, `key`, `mode` (as displayed: `semaphore
//! of 3`) and `token`:
//!
//! * `distlock.acquire`: one [`Locks::acquire`](crate::Locks::acquire),
//!   `token` recorded on grant, then `outcome` (as the metric's label);
//! * `distlock.try_acquire`: one [`Locks::try_acquire`](crate::Locks::try_acquire), likewise;
//! * `distlock.wait`: a child of `distlock.acquire`, from the first moment
//!   it waits until it ends, `waited` recorded then (the time spent blocked);
//! * `distlock.guard`: a guard's background task, while it renews and
//!   watches for loss;
//! * `distlock.renew`: one renewal, `outcome` recorded: `ok` or the `error`
//!   label's value;
//! * `distlock.release`: one release (by `release`, by a dropped guard, or
//!   a lost guard freeing what the service may still hold), `outcome` likewise.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lock_core::LockError> {
//! use lock_core::{Locks, MemoryLock};
//!
//! // Install a recorder first (metrics_exporter_prometheus::PrometheusBuilder,
//! // say), then build the clients, so the recorder learns each metric's unit
//! // and description.
//! let locks = Locks::new(MemoryLock::new()).with_key_labels(true); // few, known keys
//! locks.lock("jobs/nightly").acquire().await?.release().await?;
//! // distlock_grants_total{backend="memory",mode="exclusive",key="jobs/nightly"} 1
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::metrics::{
    Label, SharedString, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use tokio::time::Instant;
use tracing::{Span, info_span};

#[cfg(doc)]
use crate::LockMode;
use crate::{LockError, LockKey, LostReason};

/// Histogram: seconds from an `acquire` or `try_acquire` call to its outcome.
pub const ACQUIRE_DURATION_SECONDS: &str = "distlock_acquire_duration_seconds";
/// Histogram: seconds an `acquire` spent waiting for the key.
pub const WAIT_DURATION_SECONDS: &str = "distlock_wait_duration_seconds";
/// Counter: guards handed out.
pub const GRANTS_TOTAL: &str = "distlock_grants_total";
/// Counter: `acquire` calls that timed out.
pub const ACQUIRE_TIMEOUTS_TOTAL: &str = "distlock_acquire_timeouts_total";
/// Gauge: guards holding their lock.
pub const HELD_LOCKS: &str = "distlock_held_locks";
/// Histogram: seconds from a grant until its guard stopped holding.
pub const HELD_DURATION_SECONDS: &str = "distlock_held_duration_seconds";
/// Counter: held locks lost, by `reason`.
pub const LOSSES_TOTAL: &str = "distlock_losses_total";
/// Counter: releases that failed, by `error`.
pub const RELEASE_FAILURES_TOTAL: &str = "distlock_release_failures_total";
/// Counter: confirmed renewals of held locks.
pub const RENEWALS_TOTAL: &str = "distlock_renewals_total";
/// Counter: failed renewals of held locks, by `error`.
pub const RENEWAL_FAILURES_TOTAL: &str = "distlock_renewal_failures_total";
/// Counter: confirmed keep-alives of backends' sessions and leases.
pub const SESSION_RENEWALS_TOTAL: &str = "distlock_session_renewals_total";
/// Counter: failed keep-alives of backends' sessions and leases.
pub const SESSION_RENEWAL_FAILURES_TOTAL: &str = "distlock_session_renewal_failures_total";

/// Tells the recorder installed now every metric's unit and description.
///
/// [`Locks::new`](crate::Locks::new) and
/// [`Locks::from_backend`](crate::Locks::from_backend) call it; call it
/// yourself when the recorder is installed after the clients are built.
pub fn describe() {
    let seconds = [
        (ACQUIRE_DURATION_SECONDS, "Time from an acquire or try_acquire call to its outcome."),
        (WAIT_DURATION_SECONDS, "Time an acquire spent waiting for the key."),
        (HELD_DURATION_SECONDS, "Time from a grant until its guard stopped holding the lock."),
    ];
    for (name, description) in seconds {
        describe_histogram!(name, Unit::Seconds, description);
    }
    describe_gauge!(HELD_LOCKS, Unit::Count, "Guards holding their lock.");
    let counters = [
        (GRANTS_TOTAL, "Guards handed out."),
        (ACQUIRE_TIMEOUTS_TOTAL, "Acquire calls that timed out."),
        (LOSSES_TOTAL, "Held locks lost, by reason."),
        (RELEASE_FAILURES_TOTAL, "Releases that failed, by error."),
        (RENEWALS_TOTAL, "Confirmed renewals of held locks."),
        (RENEWAL_FAILURES_TOTAL, "Failed renewals of held locks, by error."),
        (SESSION_RENEWALS_TOTAL, "Confirmed keep-alives of sessions and leases."),
        (SESSION_RENEWAL_FAILURES_TOTAL, "Failed keep-alives of sessions and leases."),
    ];
    for (name, description) in counters {
        describe_counter!(name, Unit::Count, description);
    }
}

/// Counts one keep-alive of a backend's session or lease (the one all the
/// locks of a client share): confirmed when `ok`, failed otherwise.
///
/// For backends to call from their keep-alive loop; `backend` is their
/// [`DistributedLock::backend`](crate::DistributedLock::backend) name. etcd
/// counts each lease keep-alive, Consul each session renewal, ZooKeeper
/// each session proof (a read that proves the session and every lock of
/// it, about once a quarter of the session timeout; the client library's
/// own pings are not counted); the memory and file backends have no session.
pub fn session_renewal(backend: &'static str, ok: bool) {
    let name = if ok { SESSION_RENEWALS_TOTAL } else { SESSION_RENEWAL_FAILURES_TOTAL };
    counter!(name, "backend" => backend).increment(1);
}

/// The label value for an error: `lost`, `not_held`, `unavailable`, `other`.
pub(crate) fn error_kind(error: &LockError) -> &'static str {
    match error {
        LockError::Lost { .. } => "lost",
        LockError::NotHeld { .. } => "not_held",
        LockError::Unavailable { .. } => "unavailable",
        _ => "other",
    }
}

/// The labels of one lock's metrics.
#[derive(Debug, Clone)]
pub(crate) struct Labels {
    backend: &'static str,
    mode: &'static str,
    key: Option<Arc<str>>,
}

impl Labels {
    /// Labels for `key` held in `mode`; the key is one of them only `with_key`.
    pub(crate) fn new(backend: &'static str, key: &LockKey, mode: crate::LockMode, with_key: bool) -> Self {
        Self { backend, mode: mode.name(), key: with_key.then(|| Arc::from(key.as_str())) }
    }

    fn with(&self, extra: Option<(&'static str, &'static str)>) -> Vec<Label> {
        let mut labels = Vec::with_capacity(4);
        labels.push(Label::from_static_parts("backend", self.backend));
        labels.push(Label::from_static_parts("mode", self.mode));
        if let Some(key) = &self.key {
            labels.push(Label::new("key", SharedString::from(Arc::clone(key))));
        }
        labels.extend(extra.map(|(name, value)| Label::from_static_parts(name, value)));
        labels
    }
}

/// How an acquisition ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Granted,
    Busy,
    Timeout,
    Error,
    Cancelled,
}

impl Outcome {
    /// The outcome of an acquisition that failed with `error`.
    pub(crate) fn of_error(error: &LockError) -> Self {
        if matches!(error, LockError::Timeout { .. }) { Self::Timeout } else { Self::Error }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::Busy => "busy",
            Self::Timeout => "timeout",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }
}

tokio::task_local! {
    /// The wait clock of the acquisition this task is running, if any.
    static WAITS: Arc<WaitClock>;
}

/// One `acquire` or `try_acquire` being timed; dropped unfinished, it counts
/// as cancelled.
pub(crate) struct Acquisition {
    labels: Labels,
    started: Instant,
    waits: Arc<WaitClock>,
    span: Span,
    finished: bool,
}

impl Acquisition {
    /// Starts timing; `span` is the acquisition's, which gets its outcome.
    pub(crate) fn start(labels: Labels, span: Span) -> Self {
        let waits = Arc::new(WaitClock { parent: span.clone(), state: Mutex::default() });
        Self { labels, started: Instant::now(), waits, span, finished: false }
    }

    /// The labels of the lock asked for.
    pub(crate) fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Runs `future` with its waits (see [`waiting`]) counted as this
    /// acquisition's.
    pub(crate) async fn timing_waits<F: Future>(&self, future: F) -> F::Output {
        WAITS.scope(Arc::clone(&self.waits), future).await
    }

    /// Records the outcome.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        self.record(outcome);
    }

    fn record(&self, outcome: Outcome) {
        let labels = self.labels.with(Some(("outcome", outcome.name())));
        histogram!(ACQUIRE_DURATION_SECONDS, labels.clone()).record(self.started.elapsed().as_secs_f64());
        if let Some(waited) = self.waits.finish() {
            histogram!(WAIT_DURATION_SECONDS, labels).record(waited.as_secs_f64());
        }
        if outcome == Outcome::Timeout {
            counter!(ACQUIRE_TIMEOUTS_TOTAL, self.labels.with(None)).increment(1);
        }
        self.span.record("outcome", outcome.name());
    }
}

impl Drop for Acquisition {
    fn drop(&mut self) {
        if !self.finished {
            self.record(Outcome::Cancelled);
        }
    }
}

/// The time an acquisition spends blocked, summed over its waits (which may
/// overlap: a backend may race two of them).
struct WaitClock {
    parent: Span,
    state: Mutex<WaitState>,
}

#[derive(Default)]
struct WaitState {
    /// Waits going on now.
    active: usize,
    /// When the current stretch of waiting began.
    since: Option<Instant>,
    /// Earlier stretches.
    total: Duration,
    /// `distlock.wait`, from the first wait on.
    span: Option<Span>,
}

impl WaitClock {
    fn state(&self) -> std::sync::MutexGuard<'_, WaitState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn begin(&self) {
        let mut state = self.state();
        if state.active == 0 {
            state.since = Some(Instant::now());
        }
        if state.span.is_none() {
            state.span = Some(info_span!(parent: &self.parent, "distlock.wait", waited = tracing::field::Empty));
        }
        state.active += 1;
    }

    fn end(&self) {
        let mut state = self.state();
        state.active = state.active.saturating_sub(1);
        if state.active == 0
            && let Some(since) = state.since.take()
        {
            state.total += since.elapsed();
        }
    }

    /// The time spent waiting, closing the wait's span; `None` when the
    /// acquisition never waited.
    fn finish(&self) -> Option<Duration> {
        let mut state = self.state();
        let span = state.span.take()?;
        let waited = state.total + state.since.take().map_or(Duration::ZERO, |since| since.elapsed());
        span.record("waited", tracing::field::debug(waited));
        Some(waited)
    }
}

/// While it lives, the acquisition this task runs (if any) is waiting.
pub(crate) struct Waiting(Arc<WaitClock>);

/// Marks the acquisition this task runs, if any, as waiting until the
/// returned value is dropped.
pub(crate) fn waiting() -> Option<Waiting> {
    WAITS
        .try_with(|clock| {
            clock.begin();
            Waiting(Arc::clone(clock))
        })
        .ok()
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.end();
    }
}

const HELD: u8 = 0;
const RELEASING: u8 = 1;
const ENDED: u8 = 2;

/// The metrics of one guard, from its grant until it stops holding; the
/// held gauge goes down exactly once, whichever way the guard ends.
#[derive(Debug)]
pub(crate) struct Holding {
    labels: Labels,
    granted: Instant,
    state: AtomicU8,
}

impl Holding {
    /// Counts a grant, now held.
    pub(crate) fn grant(labels: Labels) -> Arc<Self> {
        counter!(GRANTS_TOTAL, labels.with(None)).increment(1);
        gauge!(HELD_LOCKS, labels.with(None)).increment(1.0);
        Arc::new(Self { labels, granted: Instant::now(), state: AtomicU8::new(HELD) })
    }

    /// The lock is lost, by the backend's word or the guard's clock. Ignored
    /// once the guard stopped holding, and while it releases: the answer to
    /// the release decides then (a backend may see its own deletion).
    pub(crate) fn lost(&self, reason: &LostReason) {
        if self.state.compare_exchange(HELD, ENDED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.count_loss(reason);
            self.end();
        }
    }

    /// A release starts.
    pub(crate) fn releasing(&self) {
        let _ = self.state.compare_exchange(HELD, RELEASING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// A release answered `result`.
    pub(crate) fn released(&self, result: &Result<(), LockError>) {
        if let Err(error) = result {
            self.release_failed(error);
        }
        if self.state.swap(ENDED, Ordering::AcqRel) == ENDED {
            return;
        }
        if let Err(LockError::Lost { reason, .. }) = result {
            self.count_loss(reason);
        }
        self.end();
    }

    /// The guard was dropped without a release.
    pub(crate) fn dropped(&self) {
        if self.state.swap(ENDED, Ordering::AcqRel) != ENDED {
            self.end();
        }
    }

    /// A release failed with `error` (a dropped guard's, in the background).
    pub(crate) fn release_failed(&self, error: &LockError) {
        counter!(RELEASE_FAILURES_TOTAL, self.labels.with(Some(("error", error_kind(error))))).increment(1);
    }

    /// A renewal answered `result`.
    pub(crate) fn renewed(&self, result: &Result<(), LockError>) {
        match result {
            Ok(()) => counter!(RENEWALS_TOTAL, self.labels.with(None)).increment(1),
            Err(error) => {
                counter!(RENEWAL_FAILURES_TOTAL, self.labels.with(Some(("error", error_kind(error))))).increment(1);
            }
        }
    }

    fn count_loss(&self, reason: &LostReason) {
        counter!(LOSSES_TOTAL, self.labels.with(Some(("reason", reason.name())))).increment(1);
    }

    fn end(&self) {
        gauge!(HELD_LOCKS, self.labels.with(None)).decrement(1.0);
        histogram!(HELD_DURATION_SECONDS, self.labels.with(None)).record(self.granted.elapsed().as_secs_f64());
    }
}
