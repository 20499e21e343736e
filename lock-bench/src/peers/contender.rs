//! One side of a comparison: distlock's own backend in this process, or a
//! peer program; each runs the same scenarios and reports what it measured,
//! or why it could not.

use std::time::Duration;

use serde_json::Value;

use super::process::PeerProcess;
use crate::scenarios;
use crate::stats::Samples;
use crate::target::Target;

/// The scenarios both sides run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// One raw round trip of the side's own client library.
    Raw,
    /// Uncontended acquire+release.
    Uncontended,
    /// From the holder's release call until a blocked waiter holds the lock.
    Handoff,
    /// This many clients on one key: grants per second.
    Contention(usize),
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Self; 5] = [Self::Raw, Self::Uncontended, Self::Handoff, Self::Contention(4), Self::Contention(16)];

    /// The report's name for it.
    pub fn name(self) -> String {
        match self {
            Self::Raw => "raw round trip".to_owned(),
            Self::Uncontended => "acquire+release".to_owned(),
            Self::Handoff => "hand-off".to_owned(),
            Self::Contention(clients) => format!("{clients} clients"),
        }
    }
}

/// How much each scenario does in one round.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Raw round trips and acquire+release samples.
    pub samples: usize,
    /// Hand-off samples (each holds the lock 10 ms first).
    pub handoffs: usize,
    /// Length of each contended run.
    pub contention: Duration,
}

/// What one run of a scenario gave.
#[derive(Debug)]
pub enum Measured {
    /// Latencies.
    Latencies(Samples),
    /// Grants before the deadline of a contended run of this length, and
    /// anything worth noting that did not break it.
    Grants {
        /// Grants counted.
        grants: u64,
        /// The same, per client.
        per_client: Vec<u64>,
        /// The run's length.
        seconds: f64,
        /// Acquires that waited [`LONG_WAIT`](crate::scenarios::LONG_WAIT)
        /// or more, granted or not.
        long_waits: u64,
        /// Acquires that timed out or failed.
        failed: u64,
        /// The first failure's message, where the side gives one.
        first_failure: Option<String>,
    },
    /// The side broke: an exception, a lost thread, two holders at once, no
    /// answer.
    Broken(String),
}

/// A side of the comparison.
pub enum Contender {
    /// distlock's backend for the server, in this process.
    Distlock(Target),
    /// A peer program.
    Peer {
        /// The report's name for it.
        label: String,
        /// The running program.
        process: Box<PeerProcess>,
    },
    /// A peer that could not start here.
    Unavailable {
        /// The report's name for it.
        label: String,
        /// Why.
        reason: String,
    },
}

impl Contender {
    /// The report's name for it.
    pub fn label(&self) -> &str {
        match self {
            Self::Distlock(_) => "distlock",
            Self::Peer { label, .. } | Self::Unavailable { label, .. } => label,
        }
    }

    /// Runs `scenario` once on a key named by `key` (a fresh one per run).
    pub async fn measure(&mut self, scenario: Scenario, key: &str, sizes: Sizes) -> Measured {
        match self {
            Self::Distlock(target) => distlock(target, scenario, key, sizes).await,
            Self::Peer { process, .. } => peer(process, scenario, key, sizes).await,
            Self::Unavailable { reason, .. } => Measured::Broken(format!("not available: {reason}")),
        }
    }

    /// Stops a peer program.
    pub async fn stop(self) {
        if let Self::Peer { process, .. } = self {
            process.stop().await;
        }
    }
}

async fn distlock(target: &Target, scenario: Scenario, key: &str, sizes: Sizes) -> Measured {
    let key = format!("{}{key}", scenarios::namespace());
    let latencies = match scenario {
        Scenario::Raw => target.raw_round_trips(sizes.samples).await,
        Scenario::Uncontended => scenarios::uncontended(target, &key, sizes.samples).await,
        Scenario::Handoff => scenarios::handoff(target, &key, sizes.handoffs).await,
        Scenario::Contention(clients) => {
            return match scenarios::contend(target, &key, clients, sizes.contention).await {
                Err(error) => Measured::Broken(error),
                Ok(run) if run.overlaps > 0 => {
                    Measured::Broken(format!("exclusion violated: {} grants while another held the key", run.overlaps))
                }
                Ok(run) => Measured::Grants {
                    grants: run.grants,
                    per_client: run.per_client,
                    seconds: sizes.contention.as_secs_f64(),
                    long_waits: run.long_waits,
                    failed: run.failures,
                    first_failure: run.first_failure,
                },
            };
        }
    };
    latencies.map_or_else(Measured::Broken, Measured::Latencies)
}

async fn peer(process: &mut PeerProcess, scenario: Scenario, key: &str, sizes: Sizes) -> Measured {
    // Generous limits: a broken peer is expected to say so (protocol.py
    // gives up on a waiter after 30 s, on a contending thread 20 s after the
    // end); these only catch one that hangs outright.
    let (command, limit) = match scenario {
        Scenario::Raw => (format!("raw {} {key}", sizes.samples), Duration::from_secs(120)),
        Scenario::Uncontended => (format!("uncontended {} {key}", sizes.samples), Duration::from_secs(300)),
        Scenario::Handoff => (format!("handoff {} {key}", sizes.handoffs), Duration::from_secs(300)),
        Scenario::Contention(clients) => (
            format!("contend {clients} {} {key}", sizes.contention.as_secs_f64()),
            sizes.contention + Duration::from_secs(120),
        ),
    };
    let answer = match process.ask(&command, limit).await {
        Ok(answer) => answer,
        Err(error) => return Measured::Broken(error),
    };
    if let Scenario::Contention(clients) = scenario {
        return contended(&answer, clients);
    }
    let Some(values) = answer.get("samples_us").and_then(Value::as_array) else {
        return Measured::Broken(format!("an answer without samples: {answer}"));
    };
    let mut samples = Samples::default();
    for micros in values.iter().filter_map(Value::as_f64) {
        samples.push(Duration::from_secs_f64(micros.max(0.0) / 1e6));
    }
    Measured::Latencies(samples)
}

/// A peer's contended run: broken when a thread raised, was lost or saw
/// another holder inside.
fn contended(answer: &Value, clients: usize) -> Measured {
    let count = |name: &str| answer.get(name).and_then(Value::as_u64).unwrap_or(0);
    let (overlaps, lost, errors, timeouts) =
        (count("overlaps"), count("lost"), count("error_count"), count("timeouts"));
    if overlaps > 0 {
        return Measured::Broken(format!("exclusion violated: {overlaps} grants while another held the key"));
    }
    let first_error = || {
        answer
            .get("errors")
            .and_then(Value::as_array)
            .and_then(|errors| errors.first())
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    if errors > 0 {
        return Measured::Broken(format!("{errors} of {clients} threads died of an exception: {}", first_error()));
    }
    if lost > 0 {
        return Measured::Broken(format!(
            "{lost} of {clients} threads lost (still blocked in acquire 20 s after the end)"
        ));
    }
    let per_client =
        answer.get("per_client").and_then(Value::as_array).map(|all| all.iter().filter_map(Value::as_u64).collect());
    Measured::Grants {
        grants: count("grants"),
        per_client: per_client.unwrap_or_default(),
        seconds: answer.get("seconds").and_then(Value::as_f64).unwrap_or(0.0),
        long_waits: count("long_waits"),
        failed: timeouts,
        first_failure: (timeouts > 0).then(|| "timed out".to_owned()),
    }
}
