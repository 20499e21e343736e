//! `lock-bench --peers`: distlock against the lock recipes other projects
//! ship, on the same servers and in the same run: Curator's
//! `InterProcessMutex` and kazoo's `Lock` on ZooKeeper, python-etcd3's `Lock`
//! on etcd, a python-consul session with KV acquire on Consul (each a
//! long-lived peer program from `lock-bench/peers/`, so a JVM's or Python's
//! start-up is not counted), and per command `etcdctl lock` and
//! `consul lock` against `distlock exec` (whole processes, start-up
//! included).
//!
//! The sides take turns: in each round, every scenario runs distlock first,
//! then each peer, so the machine's noise falls on all alike; results are
//! pooled over the rounds. A peer that breaks is reported as broken, with the
//! reason, and the run goes on; the run fails only when distlock's own side
//! breaks.

mod commands;
mod contender;
mod process;
mod report;
mod setup;

use std::process::ExitCode;
use std::time::Duration;

use contender::{Contender, Scenario, Sizes};
use process::PeerProcess;
use report::{Report, What};

use crate::Options;
use crate::target::Target;

/// The servers that have peers.
const SERVERS: [&str; 3] = ["zk", "etcd", "consul"];

/// One server and everything run against it.
struct Server {
    name: &'static str,
    contenders: Vec<Contender>,
    commands: Option<commands::CommandPair>,
}

/// Runs the comparison on the servers `options` selects (default: all
/// three) and prints the report.
pub async fn run(options: &Options) -> ExitCode {
    let names = match selected(options) {
        Ok(names) => names,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let rounds = options.rounds.max(1);
    let sizes = Sizes {
        samples: (options.iterations / rounds).max(1),
        handoffs: (options.iterations.min(200) / rounds).max(1),
        contention: options.duration,
    };
    let work = std::env::temp_dir().join(format!("distlock-bench-peers-{}", std::process::id()));
    if let Err(error) = std::fs::create_dir_all(&work) {
        eprintln!("cannot create {}: {error}", work.display());
        return ExitCode::FAILURE;
    }
    let mut report = Report::default();
    let mut servers = match prepare(&names, options, &work, &mut report).await {
        Ok(servers) => servers,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    if !options.smoke {
        warm_up(&mut servers, sizes).await;
    }
    for round in 1..=rounds {
        for server in &mut servers {
            progress(&format!("round {round}/{rounds}: {}", server.name));
            play(server, round, sizes, &mut report).await;
        }
    }
    for server in servers {
        for side in server.contenders {
            side.stop().await;
        }
    }
    println!("{}", report.render());
    if report.anything_broke() {
        progress(&format!("the peers' logs are in {}", work.display()));
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    if report.distlock_broke() {
        eprintln!("distlock's own side broke (see above)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The servers to compare on: those of `--backend`, or all three.
fn selected(options: &Options) -> Result<Vec<&'static str>, String> {
    if options.backends.is_empty() {
        return Ok(SERVERS.to_vec());
    }
    options
        .backends
        .iter()
        .map(|name| {
            SERVERS.iter().copied().find(|&known| known == name).ok_or_else(|| {
                format!("--peers compares distlock with other clients of zk, etcd and consul; {name:?} has none")
            })
        })
        .collect()
}

/// Installs what is missing, compiles the Curator peer, builds distlock, and
/// starts every server's sides. A peer that cannot start is kept as
/// unavailable; a server distlock cannot reach is an error.
async fn prepare(
    names: &[&'static str],
    options: &Options,
    work: &std::path::Path,
    report: &mut Report,
) -> Result<Vec<Server>, String> {
    progress("installing what the peers need (scripts/services install peers; only what is missing)");
    if let Err(error) = setup::install().await {
        progress(&format!("{error}; a peer that misses a part will say so"));
    }
    let curator_classes = if names.contains(&"zk") {
        progress("compiling the Curator peer against Debian's jars");
        let classes = work.join("curator-classes");
        setup::compile_curator(&classes).await.map(|()| classes)
    } else {
        Err("not needed".to_owned())
    };
    progress("building distlock (lock-cli) for the per-command comparison");
    let distlock = commands::distlock_binary().await;
    let mut servers = Vec::new();
    for &name in names {
        let target = Target::named(name, options.ttl)?;
        if let Err(error) = target.client().await {
            return Err(format!(
                "{name}: distlock cannot connect ({error}); start it with `scripts/services start {name}`"
            ));
        }
        let address = target.address().ok_or_else(|| format!("{name}: no address to give the peers"))?;
        progress(&format!("{name}: starting the peers against {address}"));
        let mut contenders = vec![Contender::Distlock(target)];
        let specs = setup::peers_of(name, &address, options.ttl.as_secs_f64(), &curator_classes).await;
        let started = futures_util::future::join_all(specs.iter().map(|spec| async {
            match spec {
                Ok(spec) => (spec.label.clone(), PeerProcess::start(spec, work).await),
                Err((label, reason)) => (label.clone(), Err(reason.clone())),
            }
        }))
        .await;
        for ((label, process), spec) in started.into_iter().zip(&specs) {
            if let Ok(spec) = spec {
                report.package(&label, &spec.package);
            }
            contenders.push(match process {
                Ok(process) => Contender::Peer { label, process: Box::new(process) },
                Err(reason) => {
                    progress(&format!("{name}: {label} not available: {reason}"));
                    Contender::Unavailable { label, reason }
                }
            });
        }
        let commands = match &distlock {
            Ok(binary) => Some(commands::CommandPair::new(name, &address, binary)),
            Err(error) => {
                report.add(name, What::Command, "distlock exec", 1, contender::Measured::Broken(error.clone()));
                None
            }
        };
        servers.push(Server { name, contenders, commands });
    }
    Ok(servers)
}

/// One uncounted pass of every side, so that a JVM's JIT and Python's caches
/// warm up here rather than in round 1.
async fn warm_up(servers: &mut [Server], sizes: Sizes) {
    progress("warming up every side (a pass of raw round trips, acquire+release and hand-offs, not counted)");
    for server in servers {
        for side in &mut server.contenders {
            let key = key_name(0, "warmup");
            let _ = side.measure(Scenario::Raw, &key, sizes).await;
            let _ = side.measure(Scenario::Uncontended, &key, sizes).await;
            let _ = side.measure(Scenario::Handoff, &key, Sizes { handoffs: 5, ..sizes }).await;
        }
    }
}

/// One round on one server: each scenario on distlock, then on each peer;
/// then the commands, taking turns.
async fn play(server: &mut Server, round: usize, sizes: Sizes, report: &mut Report) {
    for scenario in Scenario::ALL {
        for side in &mut server.contenders {
            let measured = side.measure(scenario, &key_name(round, &slug(scenario)), sizes).await;
            report.add(server.name, What::Library(scenario), side.label(), round, measured);
        }
    }
    if let Some(pair) = &server.commands {
        let (ours, theirs) = commands::time_pair(pair, (sizes.samples / 5).max(3)).await;
        report.add(server.name, What::Command, &pair.distlock.label, round, ours);
        if let (Some(theirs), Some(peer)) = (theirs, &pair.peer) {
            let label = match peer {
                Ok(invocation) => &invocation.label,
                Err((label, _)) => label,
            };
            report.add(server.name, What::Command, label, round, theirs);
        }
    }
}

/// A progress line on standard error, with the time since the run began.
fn progress(message: &str) {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let elapsed = STARTED.get_or_init(std::time::Instant::now).elapsed();
    eprintln!("[peers {:5.1}s] {message}", elapsed.as_secs_f64());
}

fn slug(scenario: Scenario) -> String {
    match scenario {
        Scenario::Raw => "raw".to_owned(),
        Scenario::Uncontended => "uncontended".to_owned(),
        Scenario::Handoff => "handoff".to_owned(),
        Scenario::Contention(clients) => format!("contended{clients}"),
    }
}

/// A key for one run that no other run, side or earlier invocation uses.
fn key_name(round: usize, scenario: &str) -> String {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    format!("r{round}-{scenario}-{}-{}", std::process::id(), since_epoch.as_nanos())
}
