//! The faults the campaign injects, and the seeded choice of when and where.

use std::fmt;
use std::str::FromStr;

/// One kind of fault, injected and then healed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of a worker process (a new one takes its place).
    Kill,
    /// SIGSTOP of a worker past its TTL, then SIGCONT: the classic GC pause.
    Pause,
    /// A worker's connection to the service stalled past its TTL.
    Cut,
    /// A worker's connections to the service reset.
    Reset,
    /// 200 ms added each way between a worker and the service.
    Latency,
    /// A worker's requests applied, their replies thrown away, for a second.
    LostReplies,
    /// The service's process paused (SIGSTOP) past the TTL, then resumed;
    /// in a cluster, the leader's.
    ServerPause,
    /// The cluster's leader killed (SIGKILL), then started again with its
    /// data once the others have elected a new one.
    LeaderKill,
    /// etcd's history compacted to its current revision.
    Compact,
}

impl Fault {
    /// Every fault, in the order a campaign injects them.
    pub const ALL: [Fault; 9] = [
        Fault::Kill,
        Fault::Pause,
        Fault::Cut,
        Fault::Reset,
        Fault::Latency,
        Fault::LostReplies,
        Fault::ServerPause,
        Fault::LeaderKill,
        Fault::Compact,
    ];

    /// The fault's name in histories, tables and `--faults`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Cut => "cut",
            Fault::Reset => "reset",
            Fault::Latency => "latency",
            Fault::LostReplies => "lost-replies",
            Fault::ServerPause => "server-pause",
            Fault::LeaderKill => "leader-kill",
            Fault::Compact => "compact",
        }
    }

    /// Why the fault cannot be injected on `backend` (`memory`, `file`,
    /// `etcd`, `zk`, `consul`; `cluster` when the workers use the 3-member
    /// cluster), if it cannot.
    pub fn not_applicable(self, backend: &str, cluster: bool) -> Option<&'static str> {
        let network = matches!(self, Fault::Cut | Fault::Reset | Fault::Latency | Fault::LostReplies);
        match (self, backend) {
            (Fault::Kill | Fault::Pause, _) => None,
            (Fault::Cut, "memory") => None,
            (_, "memory") => Some("in-process backend: no connection to reset, slow or lose replies on, no server"),
            (_, "file") => Some("no network and no server: the kernel is the lock service"),
            (Fault::Compact, backend) if backend != "etcd" => Some("only etcd keeps a history to compact"),
            _ if network && cluster => {
                Some("workers dial the members directly here; the single-server campaign injects network faults")
            }
            (Fault::LeaderKill, _) if !cluster => Some("one server: the cluster campaign (`--cluster`) kills leaders"),
            _ => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Fault::ALL.into_iter().find(|fault| fault.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
            format!("unknown fault {name:?}; known: {}", known.join(", "))
        })
    }
}

/// A small seeded generator (xorshift64*), so a campaign's schedule is the
/// same for the same seed.
#[derive(Debug, Clone)]
pub struct Random(u64);

impl Random {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: usize) -> usize {
        let bound = u64::try_from(bound).unwrap_or(u64::MAX);
        if bound == 0 { 0 } else { usize::try_from(self.next() % bound).unwrap_or(0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let (mut a, mut b) = (Random::new(7), Random::new(7));
        let first: Vec<usize> = (0..20).map(|_| a.below(5)).collect();
        assert_eq!(first, (0..20).map(|_| b.below(5)).collect::<Vec<_>>());
        assert!(first.iter().any(|n| *n != first[0]), "a constant schedule");
    }

    #[test]
    fn fault_names_round_trip() {
        for fault in Fault::ALL {
            assert_eq!(fault.name().parse::<Fault>(), Ok(fault));
        }
        assert!("melt".parse::<Fault>().is_err());
    }
}
