//! The machine's monotonic clock, shared by every process on it, so that the
//! histories of separate worker processes and the register can be merged.

use nix::time::{ClockId, clock_gettime};

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn now() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            let seconds = u64::try_from(t.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
            seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
        })
        .unwrap_or(0)
}
