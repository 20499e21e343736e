//! When the command is stopped for a lock that is lost or about to be, and
//! how long `--grace` may be for a given TTL.
//!
//! A lock that expires (etcd, ZooKeeper, Consul) may be granted to someone
//! else once its TTL has run out since the last confirmed renewal was sent.
//! The guard gives it up a safety margin (a fifth of the TTL) before that,
//! even when the service cannot be reached. So that a command that ignores
//! SIGTERM is dead by then too, `distlock exec` sends SIGTERM as soon as the
//! lock is provably held for no more than the grace, and SIGKILL when the
//! guard gives it up. The grace therefore comes out of the time the guard
//! has to renew the lock, and only a grace that leaves enough of it can be
//! honoured: see [`max_for_ttl`]. A loss reported once that deadline has
//! passed (distlock was suspended or starved meanwhile) leaves no grace,
//! whatever reason is reported first: see [`Stop::on_loss`].
//!
//! A file lock never expires while its holder lives (the kernel frees it
//! when the holder dies), so any grace can be honoured there.

use std::fmt;
use std::time::Duration;

use distlock::{Capabilities, LostReason};

use crate::cli::OnLost;

/// The grace when the TTL leaves room for it.
pub const DEFAULT: Duration = Duration::from_secs(10);

/// How the command is stopped when its lock is lost or may soon be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL as soon as the lock is lost (`--on-lost kill`).
    Kill,
    /// SIGTERM when the lock is lost, SIGKILL `grace` later: for locks that
    /// do not expire while their holder lives.
    AfterLoss {
        /// Between SIGTERM and SIGKILL.
        grace: Duration,
    },
    /// SIGTERM as soon as the lock is provably held for no more than
    /// `grace`, SIGKILL when it no longer is, before the service can grant it
    /// elsewhere: for locks that expire.
    BeforeExpiry {
        /// Between SIGTERM and SIGKILL, at most.
        grace: Duration,
    },
}

impl Stop {
    /// The plan for `--on-lost` and `--grace` (`None`: not given) on a
    /// backend with `capabilities`, for a lock of `ttl`.
    ///
    /// # Errors
    /// [`GraceTooLong`] when `--grace` was given and cannot be honoured.
    pub fn plan(
        on_lost: OnLost,
        grace: Option<Duration>,
        capabilities: &Capabilities,
        ttl: Duration,
    ) -> Result<Self, GraceTooLong> {
        match on_lost {
            OnLost::Kill => Ok(Self::Kill),
            OnLost::Terminate if !capabilities.expires => Ok(Self::AfterLoss { grace: grace.unwrap_or(DEFAULT) }),
            OnLost::Terminate => {
                let max = max_for_ttl(ttl);
                match grace {
                    None => Ok(Self::BeforeExpiry { grace: DEFAULT.min(max) }),
                    Some(asked) if asked <= max => Ok(Self::BeforeExpiry { grace: asked }),
                    Some(asked) => Err(GraceTooLong { asked, ttl, max }),
                }
            }
        }
    }
}

/// What a reported loss of the lock does to the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLoss {
    /// SIGKILL now.
    Kill,
    /// SIGTERM was sent already; SIGKILL comes when planned.
    AsPlanned,
    /// SIGTERM now, SIGKILL `grace` later.
    Terminate {
        /// Between SIGTERM and SIGKILL.
        grace: Duration,
    },
}

impl Stop {
    /// What to do when the lock is reported lost for `reason`. `expired`:
    /// the lock's deadline by distlock's own clock (the latest it learnt)
    /// had passed when the loss was reported; `stopping`: the command was
    /// sent SIGTERM already.
    pub fn on_loss(self, reason: &LostReason, expired: bool, stopping: bool) -> OnLoss {
        match self {
            Stop::Kill => OnLoss::Kill,
            // Lost by the guard's clock: the service may grant the lock
            // elsewhere from now on, so whatever grace was left is over
            // (also when distlock itself was suspended or starved past the
            // SIGTERM it was due to send). Past the deadline, whatever the
            // reason: resumed after a suspension, the guard may hear that
            // the session ended before its own clock says the same.
            Stop::BeforeExpiry { .. } if expired || matches!(reason, LostReason::NotConfirmed { .. }) => OnLoss::Kill,
            Stop::BeforeExpiry { .. } if stopping => OnLoss::AsPlanned,
            // The service ended the lock without warning (an operator
            // revoked the lease or deleted the key): as when a file lock is
            // broken, the command gets its grace.
            Stop::BeforeExpiry { grace } | Stop::AfterLoss { grace } => OnLoss::Terminate { grace },
        }
    }
}

/// The longest grace that can be honoured for an expiring lock of `ttl`,
/// rounded down to 100 ms.
///
/// SIGKILL comes when the guard gives the lock up, TTL - TTL/5 after the last
/// confirmed renewal was sent, so SIGTERM comes `grace` earlier. By then the
/// guard must have had time to renew: it renews TTL/3 after the last
/// confirmed renewal and retries every TTL/10 (10 ms to 1 s; both as in
/// lock-core's guard). Two retries are left: a lock renewed by a shared
/// keep-alive (etcd) often has no newer proof at the first attempt, which
/// coincides with the keep-alive's own request, and the second absorbs an
/// answer that is merely slow. A shorter window would SIGTERM commands
/// whose lock is fine. A renewal whose reply is lost outright is retried
/// only after the backend's request timeout (5 s by default), which may not
/// fit in that window: the command is then sent SIGTERM though its lock may
/// still be held (the safe direction; a longer TTL avoids it). So grace <= TTL - TTL/5 - TTL/3 - 2 retries: 800 ms
/// for a TTL of 3 s, 5 s for 15 s, 26 s for 60 s.
pub fn max_for_ttl(ttl: Duration) -> Duration {
    let margin = ttl / 5;
    let renewal = ttl / 3;
    let retry = (ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let fits = ttl.saturating_sub(margin).saturating_sub(renewal).saturating_sub(retry * 2);
    let step = Duration::from_millis(100);
    step * u32::try_from(fits.as_nanos() / step.as_nanos()).unwrap_or(u32::MAX)
}

/// A `--grace` longer than the TTL leaves room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraceTooLong {
    /// The grace asked for.
    pub asked: Duration,
    /// The lock's TTL.
    pub ttl: Duration,
    /// The longest grace that can be honoured for this TTL.
    pub max: Duration,
}

impl fmt::Display for GraceTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = humantime::format_duration;
        write!(
            f,
            "--grace {} cannot be honoured with a TTL of {}: the command must be dead before the lock can \
             expire and be granted elsewhere, and the lock must have time to be renewed before SIGTERM, so the \
             grace can be at most {} for this TTL (use a shorter --grace, a longer --ttl, or --on-lost kill)",
            show(self.asked),
            show(self.ttl),
            show(self.max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn secs(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn expiring() -> Capabilities {
        Capabilities::new(secs(1), secs(3600))
    }

    #[test]
    fn the_largest_grace_grows_with_the_ttl() {
        let cases = [
            (secs(2), Duration::from_millis(500)),
            (secs(3), Duration::from_millis(800)),
            (secs(10), Duration::from_millis(2600)),
            (secs(15), secs(5)),
            (secs(30), secs(12)),
            (secs(60), secs(26)),
        ];
        for (ttl, max) in cases {
            assert_eq!(max_for_ttl(ttl), max, "TTL {ttl:?}");
        }
        assert_eq!(max_for_ttl(Duration::from_millis(10)), Duration::ZERO);
    }

    #[test]
    fn the_default_grace_is_ten_seconds_where_it_fits() {
        let plan = |ttl| Stop::plan(OnLost::Terminate, None, &expiring(), ttl);
        assert_eq!(plan(secs(3)), Ok(Stop::BeforeExpiry { grace: Duration::from_millis(800) }));
        assert_eq!(plan(secs(15)), Ok(Stop::BeforeExpiry { grace: secs(5) }));
        assert_eq!(plan(secs(60)), Ok(Stop::BeforeExpiry { grace: DEFAULT }));
    }

    #[test]
    fn a_grace_that_does_not_fit_is_refused_not_shortened() {
        let refused = Stop::plan(OnLost::Terminate, Some(secs(10)), &expiring(), secs(15));
        assert_eq!(refused, Err(GraceTooLong { asked: secs(10), ttl: secs(15), max: secs(5) }));
        let message = refused.map(|_| String::new()).unwrap_or_else(|error| error.to_string());
        assert!(message.starts_with("--grace 10s cannot be honoured with a TTL of 15s"), "{message}");
        assert!(message.contains("at most 5s for this TTL"), "{message}");
        let fits = Stop::plan(OnLost::Terminate, Some(secs(5)), &expiring(), secs(15));
        assert_eq!(fits, Ok(Stop::BeforeExpiry { grace: secs(5) }));
    }

    /// The fault campaign's finding (exec mode, ZooKeeper, pause): distlock
    /// and its command were stopped past the TTL; on resume the service's
    /// "session ended" beat the guard's own clock as the reported reason,
    /// and the command, which ignores SIGTERM, was given its grace and wrote
    /// on for 800 ms while another holder held the lock.
    #[test]
    fn a_loss_reported_after_the_deadline_kills_at_once_whatever_its_reason() {
        let stop = Stop::BeforeExpiry { grace: Duration::from_millis(800) };
        for reason in [LostReason::SessionEnded, LostReason::Revoked] {
            assert_eq!(stop.on_loss(&reason, true, false), OnLoss::Kill, "{reason}");
            assert_eq!(stop.on_loss(&reason, true, true), OnLoss::Kill, "{reason}");
        }
        let not_confirmed = LostReason::NotConfirmed { since: secs(3) };
        assert_eq!(stop.on_loss(&not_confirmed, true, false), OnLoss::Kill);
    }

    #[test]
    fn a_loss_reported_before_the_deadline_leaves_the_grace() {
        let grace = Duration::from_millis(800);
        let stop = Stop::BeforeExpiry { grace };
        assert_eq!(stop.on_loss(&LostReason::Revoked, false, false), OnLoss::Terminate { grace });
        assert_eq!(stop.on_loss(&LostReason::SessionEnded, false, true), OnLoss::AsPlanned);
        // A file lock has no deadline: broken from outside, it leaves the grace.
        let file = Stop::AfterLoss { grace: secs(10) };
        assert_eq!(file.on_loss(&LostReason::Revoked, true, false), OnLoss::Terminate { grace: secs(10) });
        assert_eq!(Stop::Kill.on_loss(&LostReason::Revoked, false, false), OnLoss::Kill);
    }

    #[test]
    fn kill_and_non_expiring_locks_take_any_grace() {
        assert_eq!(Stop::plan(OnLost::Kill, Some(secs(3600)), &expiring(), secs(3)), Ok(Stop::Kill));
        let file = expiring().with_expires(false);
        assert_eq!(
            Stop::plan(OnLost::Terminate, Some(secs(3600)), &file, secs(3)),
            Ok(Stop::AfterLoss { grace: secs(3600) })
        );
        assert_eq!(Stop::plan(OnLost::Terminate, None, &file, secs(3)), Ok(Stop::AfterLoss { grace: DEFAULT }));
    }
}
