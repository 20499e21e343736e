//! The comparison's results, pooled over the rounds: a table of distlock
//! against each peer (ratios distlock / peer), the raw round trips of every
//! round (the machine's noise), the targets met or missed, and one
//! JSON line per result.

use std::time::Duration;

use super::contender::{Measured, Scenario};
use crate::stats::Samples;

/// Where a result belongs: a library scenario, or the per-command one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A scenario run by a library (or distlock's backend in this process).
    Library(Scenario),
    /// A whole command, start-up included.
    Command,
}

impl What {
    fn name(self) -> String {
        match self {
            Self::Library(scenario) => scenario.name(),
            Self::Command => "per command (whole process)".to_owned(),
        }
    }
}

/// Everything measured for one side in one scenario, over all rounds.
#[derive(Debug, Default)]
struct Cell {
    samples: Samples,
    round_p50s: Vec<Duration>,
    grants: u64,
    seconds: f64,
    /// The fewest and the most grants one client had in one run.
    per_client: Option<(u64, u64)>,
    /// Latencies, or contended acquires' waits, of 2 s or more.
    long: u64,
    /// Contended acquires that timed out or failed, and the first reason.
    failed: u64,
    first_failure: Option<String>,
    broken: Option<String>,
}

/// A cell's summary.
#[derive(Debug, Clone)]
enum Summary {
    Latency { p50: Duration, p99: Duration },
    Rate(f64),
    Broken(String),
}

impl Cell {
    fn add(&mut self, round: usize, measured: Measured) {
        if self.broken.is_some() {
            return;
        }
        match measured {
            Measured::Latencies(samples) if samples.is_empty() => {
                self.broken = Some(format!("round {round}: no samples"));
            }
            Measured::Latencies(samples) => {
                // A wait of seconds where the p50 is milliseconds: a missed
                // wake-up, worth naming beside the percentiles.
                self.long += samples.at_least(crate::scenarios::LONG_WAIT) as u64;
                self.round_p50s.push(samples.percentile(50.0));
                self.samples.extend(&samples);
            }
            Measured::Grants { grants, per_client, seconds, long_waits, failed, first_failure } => {
                self.grants += grants;
                self.seconds += seconds;
                if let (Some(&least), Some(&most)) = (per_client.iter().min(), per_client.iter().max()) {
                    let (old_least, old_most) = self.per_client.unwrap_or((least, most));
                    self.per_client = Some((old_least.min(least), old_most.max(most)));
                }
                self.long += long_waits;
                self.failed += failed;
                if self.first_failure.is_none() {
                    self.first_failure = first_failure;
                }
            }
            Measured::Broken(reason) if round > 1 => self.broken = Some(format!("in round {round}: {reason}")),
            Measured::Broken(reason) => self.broken = Some(reason),
        }
    }

    fn summary(&self) -> Summary {
        if let Some(reason) = &self.broken {
            Summary::Broken(reason.clone())
        } else if self.seconds > 0.0 {
            Summary::Rate(self.grants as f64 / self.seconds)
        } else {
            Summary::Latency { p50: self.samples.percentile(50.0), p99: self.samples.percentile(99.0) }
        }
    }
}

#[derive(Debug)]
struct Entry {
    server: &'static str,
    what: What,
    side: String,
    cell: Cell,
}

/// The results, in the order first seen (server, scenario, distlock first).
#[derive(Debug, Default)]
pub struct Report {
    entries: Vec<Entry>,
    packages: Vec<(String, String)>,
}

impl Report {
    /// Records one run's result.
    pub fn add(&mut self, server: &'static str, what: What, side: &str, round: usize, measured: Measured) {
        let index = match self.entries.iter().position(|e| e.server == server && e.what == what && e.side == side) {
            Some(index) => index,
            None => {
                self.entries.push(Entry { server, what, side: side.to_owned(), cell: Cell::default() });
                self.entries.len() - 1
            }
        };
        self.entries[index].cell.add(round, measured);
    }

    /// Names the Debian package (and version) a side comes from.
    pub fn package(&mut self, side: &str, package: &str) {
        if !self.packages.iter().any(|(known, _)| known == side) {
            self.packages.push((side.to_owned(), package.to_owned()));
        }
    }

    /// Whether any of distlock's own results broke.
    pub fn distlock_broke(&self) -> bool {
        self.entries.iter().any(|e| is_distlock(&e.side) && e.cell.broken.is_some())
    }

    /// Whether any side broke (a peer's log is worth keeping then).
    pub fn anything_broke(&self) -> bool {
        self.entries.iter().any(|e| e.cell.broken.is_some())
    }

    fn distlock_of(&self, server: &str, what: What) -> Option<&Entry> {
        self.entries.iter().find(|e| e.server == server && e.what == what && is_distlock(&e.side))
    }

    fn find(&self, server: &str, what: What, side: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.server == server && e.what == what && e.side == side)
    }

    /// The report as markdown tables and target lines, then JSON lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("| server | scenario | distlock | peer | peer's | distlock / peer |\n|---|---|---|---|---|---|\n");
        for entry in self.entries.iter().filter(|e| is_distlock(&e.side)) {
            let ours = entry.cell.summary();
            let peers: Vec<&Entry> = self
                .entries
                .iter()
                .filter(|e| e.server == entry.server && e.what == entry.what && !is_distlock(&e.side))
                .collect();
            if peers.is_empty() {
                out.push_str(&format!(
                    "| {} | {} | {} | (none) | | |\n",
                    server_name(entry.server),
                    entry.what.name(),
                    show(&ours, &entry.cell)
                ));
            }
            for peer in peers {
                let theirs = peer.cell.summary();
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    server_name(entry.server),
                    entry.what.name(),
                    show(&ours, &entry.cell),
                    peer.side,
                    show(&theirs, &peer.cell),
                    ratio(&ours, &theirs),
                ));
            }
        }
        out.push_str("\nRaw round trip p50 of each round (the machine's noise), ms:\n\n");
        for entry in self.entries.iter().filter(|e| e.what == What::Library(Scenario::Raw)) {
            let rounds: Vec<String> = entry.cell.round_p50s.iter().map(|d| format!("{:.3}", millis(*d))).collect();
            out.push_str(&format!("- {} {}: {}\n", server_name(entry.server), entry.side, rounds.join(", ")));
        }
        out.push_str("\nPeers:\n\n");
        for (side, package) in &self.packages {
            out.push_str(&format!("- {side}: {package}\n"));
        }
        out.push_str(
            "\nTargets (speed-up: how many times faster distlock is; for latencies peer p50 / distlock p50):\n\n",
        );
        for line in self.targets() {
            out.push_str(&format!("- {line}\n"));
        }
        out.push('\n');
        for entry in &self.entries {
            out.push_str(&self.json(entry));
            out.push('\n');
        }
        out
    }

    /// The targets, each met, missed or not measurable.
    fn targets(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let curator = "Curator InterProcessMutex";
        lines.push(self.target("zk", What::Library(Scenario::Uncontended), curator, 1.0));
        lines.push(self.target("zk", What::Library(Scenario::Contention(4)), curator, 1.2));
        for server in ["etcd", "consul"] {
            let peers: Vec<&str> = self
                .entries
                .iter()
                .filter(|e| e.server == server && !is_distlock(&e.side) && matches!(e.what, What::Library(_)))
                .map(|e| e.side.as_str())
                .fold(Vec::new(), |mut seen, side| {
                    if !seen.contains(&side) {
                        seen.push(side);
                    }
                    seen
                });
            for peer in peers {
                for scenario in &Scenario::ALL[1..] {
                    lines.push(self.target(server, What::Library(*scenario), peer, 1.3));
                }
            }
        }
        for (server, peer) in [("etcd", "etcdctl lock"), ("consul", "consul lock")] {
            lines.push(self.target(server, What::Command, peer, 2.0));
        }
        lines.retain(|line| !line.is_empty());
        lines
    }

    fn target(&self, server: &str, what: What, peer: &str, at_least: f64) -> String {
        let (Some(ours), Some(theirs)) = (self.distlock_of(server, what), self.find(server, what, peer)) else {
            return String::new();
        };
        let name = format!("{} {}, distlock ≥{at_least}x {peer}", server_name(server), what.name());
        let speedup = match (ours.cell.summary(), theirs.cell.summary()) {
            (Summary::Latency { p50: ours, .. }, Summary::Latency { p50: theirs, .. }) => {
                theirs.as_secs_f64() / ours.as_secs_f64().max(1e-9)
            }
            (Summary::Rate(ours), Summary::Rate(theirs)) => ours / theirs.max(1e-9),
            (Summary::Broken(reason), _) => return format!("{name}: not measured, distlock broke: {reason}"),
            (_, Summary::Broken(reason)) => return format!("{name}: not measurable, the peer broke: {reason}"),
            _ => return format!("{name}: not comparable"),
        };
        let verdict = if speedup >= at_least { "met" } else { "MISSED" };
        format!(
            "{name}: {verdict} at {speedup:.3}x (distlock {}, peer {})",
            show(&ours.cell.summary(), &ours.cell),
            show(&theirs.cell.summary(), &theirs.cell)
        )
    }

    fn json(&self, entry: &Entry) -> String {
        let mut object = serde_json::Map::new();
        object.insert("peers_server".into(), entry.server.into());
        object.insert("scenario".into(), entry.what.name().into());
        object.insert("side".into(), entry.side.clone().into());
        let ours = self.distlock_of(entry.server, entry.what).map(|e| e.cell.summary());
        let round3 = |value: f64| serde_json::Value::from((value * 1000.0).round() / 1000.0);
        match entry.cell.summary() {
            Summary::Latency { p50, p99 } => {
                object.insert("p50_us".into(), round3(p50.as_secs_f64() * 1e6));
                object.insert("p99_us".into(), round3(p99.as_secs_f64() * 1e6));
                object.insert("samples".into(), entry.cell.samples.len().into());
                let rounds: Vec<serde_json::Value> =
                    entry.cell.round_p50s.iter().map(|d| round3(d.as_secs_f64() * 1e6)).collect();
                object.insert("round_p50_us".into(), rounds.into());
                if let (false, Some(Summary::Latency { p50: d50, p99: d99 })) = (is_distlock(&entry.side), ours) {
                    object.insert("ratio_p50".into(), round3(d50.as_secs_f64() / p50.as_secs_f64().max(1e-9)));
                    object.insert("ratio_p99".into(), round3(d99.as_secs_f64() / p99.as_secs_f64().max(1e-9)));
                }
            }
            Summary::Rate(rate) => {
                object.insert("grants_per_s".into(), round3(rate));
                if let Some((least, most)) = entry.cell.per_client {
                    object.insert("least_per_client".into(), least.into());
                    object.insert("most_per_client".into(), most.into());
                }
                if let (false, Some(Summary::Rate(ours))) = (is_distlock(&entry.side), ours) {
                    object.insert("ratio".into(), round3(ours / rate.max(1e-9)));
                }
            }
            Summary::Broken(reason) => {
                object.insert("broken".into(), reason.into());
            }
        }
        if entry.cell.long > 0 {
            object.insert("two_seconds_or_more".into(), entry.cell.long.into());
        }
        if entry.cell.failed > 0 {
            object.insert("failed_acquires".into(), entry.cell.failed.into());
            object.insert("first_failure".into(), entry.cell.first_failure.clone().unwrap_or_default().into());
        }
        serde_json::Value::Object(object).to_string()
    }
}

fn is_distlock(side: &str) -> bool {
    side == "distlock" || side == "distlock exec"
}

fn server_name(server: &str) -> &str {
    match server {
        "zk" => "ZooKeeper",
        "etcd" => "etcd",
        "consul" => "Consul",
        other => other,
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn show(summary: &Summary, cell: &Cell) -> String {
    let mut shown = match summary {
        Summary::Latency { p50, p99 } => format!("{} / {} ms", short(millis(*p50)), short(millis(*p99))),
        Summary::Rate(rate) => match cell.per_client {
            Some((least, most)) => format!("{rate:.0} grants/s, {least}–{most} per client"),
            None => format!("{rate:.0} grants/s"),
        },
        Summary::Broken(reason) => return format!("broken: {}", reason.replace('|', "/")),
    };
    let waited = if cell.seconds > 0.0 { "acquires waited" } else { "took" };
    if cell.long > 0 {
        shown.push_str(&format!(" ({} {waited} ≥2 s)", cell.long));
    }
    if cell.failed > 0 {
        let first = cell.first_failure.as_deref().unwrap_or("").replace('|', "/");
        shown.push_str(&format!(" ({} acquires failed: {first})", cell.failed));
    }
    shown
}

fn short(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// distlock / peer: p50 and p99 of latencies (below 1: distlock is faster),
/// or of grants per second (above 1: distlock is faster).
fn ratio(ours: &Summary, theirs: &Summary) -> String {
    match (ours, theirs) {
        (Summary::Latency { p50: d50, p99: d99 }, Summary::Latency { p50, p99 }) => format!(
            "{:.2} / {:.2}",
            d50.as_secs_f64() / p50.as_secs_f64().max(1e-9),
            d99.as_secs_f64() / p99.as_secs_f64().max(1e-9)
        ),
        (Summary::Rate(ours), Summary::Rate(theirs)) => format!("{:.2}", ours / theirs.max(1e-9)),
        _ => "—".to_owned(),
    }
}
