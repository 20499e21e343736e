//! The campaign: worker processes contend on a few keys with fenced writes,
//! the nemesis injects one fault at a time and heals it, and afterwards the
//! checker reads the history and the service is inspected for leftovers.
//! A worker holds its locks through the library, or (exec mode) through
//! `distlock exec` processes guarding a command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use conformance_tests::proxy::StallProxy;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use crate::checker::{self, Findings};
use crate::history::{Kind, Recorder};
use crate::nemesis::{Fault, Random};
use crate::process_tree;
use crate::register::Register;
use crate::target::Target;

/// How the workers hold their locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Through the library (`lock-torture worker`).
    Library,
    /// Through the CLI: `lock-torture exec-worker` runs `distlock exec` with
    /// a command that traps SIGTERM and writes until it is killed.
    Exec,
}

/// `lock-torture run`: one campaign against one backend.
#[derive(Debug, Args, Clone)]
pub struct CampaignArgs {
    /// `file`, `etcd`, `zk` or `consul`.
    #[arg(long)]
    pub backend: String,
    /// How the workers hold their locks.
    #[arg(long, value_enum, default_value_t = Mode::Library)]
    pub mode: Mode,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Keys they contend on.
    #[arg(long, default_value_t = 2)]
    pub keys: usize,
    /// Faults to inject, in order (default: every fault the backend allows).
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<Fault>,
    /// Run the fault list again, in an order drawn from the seed, until this
    /// long has passed (default: once through).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// The seed of the schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The lock TTL.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub ttl: Duration,
    /// Where histories and the report go.
    #[arg(long, default_value = "target/torture")]
    pub out: PathBuf,
}

/// What one campaign found.
#[derive(Debug)]
pub struct Outcome {
    /// The backend, and the mode unless it is the library's: `etcd (exec)`.
    pub backend: String,
    /// The findings per fault (and `calm`).
    pub faults: Vec<(String, Findings)>,
    /// Faults skipped, with why.
    pub skipped: Vec<(Fault, &'static str)>,
    /// Records of the campaign the service still keeps at the end.
    pub leftovers: usize,
    /// How long the campaign ran.
    pub ran: Duration,
}

struct Worker {
    name: String,
    incarnation: usize,
    child: Child,
    proxy: Option<StallProxy>,
}

impl Drop for Worker {
    /// A campaign ended by an error leaves nothing running: the worker is
    /// killed on drop, and what it started (in exec mode) with it.
    fn drop(&mut self) {
        if let Ok(pid) = worker_pid(self) {
            // Stopped first, so that it starts nothing new before its kill.
            signal(pid, Signal::SIGSTOP);
            process_tree::signal_all(&process_tree::descendants(pid), Signal::SIGKILL);
        }
    }
}

/// Runs one campaign.
///
/// # Errors
/// When the campaign cannot be set up (the service unreachable, no room for
/// histories); violations are findings, not errors.
pub async fn run(args: &CampaignArgs) -> Result<Outcome, String> {
    let target = Target::new(&args.backend, args.ttl)?;
    // One per campaign of a smoke run, which runs both modes in one process.
    let mode = match args.mode {
        Mode::Library => String::new(),
        Mode::Exec => "exec-".to_owned(),
    };
    let run_id = format!("{}-{mode}{}-{}", args.backend, args.seed, std::process::id());
    let dir = args.out.join(&run_id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let register = Register::start(&dir.join("register.jsonl")).await.map_err(|e| format!("register: {e}"))?;
    let mut nemesis = Recorder::open(&dir.join("nemesis.jsonl"), "nemesis").map_err(|e| format!("history: {e}"))?;
    let prefix = format!("distlock-torture/{run_id}/");
    let keys: Vec<String> = (0..args.keys.max(1)).map(|k| format!("{prefix}k{k}")).collect();
    let slack = expiry_slack(&target).await?;
    let distlock = match args.mode {
        Mode::Library => None,
        Mode::Exec => Some(exec_ready(&target, &format!("{prefix}probe")).await?),
    };
    // After distlock's build, if there was one.
    let started = Instant::now();
    let spawn = Spawner {
        target: &target,
        dir: &dir,
        keys: &keys,
        register: register.address().to_string(),
        seed: args.seed,
        distlock,
    };

    let mut workers = Vec::new();
    for index in 0..args.workers.max(2) {
        workers.push(spawn.worker(format!("w{index}"), 0).await?);
    }
    let (faults, skipped) = plan(args, &target.backend);
    let mut random = Random::new(args.seed);
    let ttl = target.ttl();
    sleep(ttl).await; // calm: contention without faults first
    let mut round = 0;
    loop {
        let order: Vec<Fault> = if round == 0 {
            faults.clone()
        } else {
            let mut shuffled = faults.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, random.below(i + 1));
            }
            shuffled
        };
        for fault in order {
            inject(fault, &mut workers, &spawn, &target, &mut nemesis, &mut random).await?;
            // Room for the service to free what the fault left and grant again.
            sleep(ttl + slack + Duration::from_secs(1)).await;
        }
        round += 1;
        if args.duration.is_none_or(|total| started.elapsed() >= total) || faults.is_empty() {
            break;
        }
    }
    stop(&mut workers, &mut nemesis).await;
    let leftovers = leftovers(&target, &prefix, ttl + slack + Duration::from_secs(10)).await;
    let events = crate::history::read_dir(&dir).map_err(|e| format!("reading the histories: {e}"))?;
    let bound = recovery_bound(ttl, slack);
    let windows = checker::check(&events, u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX));
    Ok(Outcome {
        backend: match args.mode {
            Mode::Library => args.backend.clone(),
            Mode::Exec => format!("{} (exec)", args.backend),
        },
        faults: checker::by_fault(&windows),
        skipped,
        leftovers,
        ran: started.elapsed(),
    })
}

/// How long after a fault heals a grant must come: the TTL, the backend's
/// expiry slack, and room for the fault's own aftermath (a reconnect, a
/// killed worker's replacement starting).
pub fn recovery_bound(ttl: Duration, slack: Duration) -> Duration {
    ttl + slack + Duration::from_secs(5)
}

async fn expiry_slack(target: &Target) -> Result<Duration, String> {
    let proxy = target.proxy().await?;
    let url = target.url(proxy.as_ref());
    let locks = distlock::connect_with_ttl(&url, target.ttl()).await.map_err(|e| format!("{}: {e}", target.backend))?;
    Ok(locks.capabilities().expiry_slack)
}

/// The `distlock` binary, built and seen to run against the backend.
async fn exec_ready(target: &Target, probe_key: &str) -> Result<PathBuf, String> {
    let distlock = crate::distlock_binary::locate().await?;
    let proxy = target.proxy().await?;
    crate::distlock_binary::probe(&distlock, &target.url(proxy.as_ref()), probe_key, target.ttl()).await?;
    Ok(distlock)
}

fn plan(args: &CampaignArgs, backend: &str) -> (Vec<Fault>, Vec<(Fault, &'static str)>) {
    let wanted: Vec<Fault> = if args.faults.is_empty() { Fault::ALL.to_vec() } else { args.faults.clone() };
    let mut faults = Vec::new();
    let mut skipped = Vec::new();
    for fault in wanted {
        match fault.not_applicable(backend) {
            Some(why) => skipped.push((fault, why)),
            None => faults.push(fault),
        }
    }
    (faults, skipped)
}

struct Spawner<'a> {
    target: &'a Target,
    dir: &'a Path,
    keys: &'a [String],
    register: String,
    seed: u64,
    /// In exec mode, the `distlock` binary.
    distlock: Option<PathBuf>,
}

impl Spawner<'_> {
    async fn worker(&self, name: String, incarnation: usize) -> Result<Worker, String> {
        let proxy = self.target.proxy().await?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find the campaign's executable: {e}"))?;
        let mut command = Command::new(exe);
        let seed = worker_seed(self.seed, &name, incarnation);
        match &self.distlock {
            None => command.arg("worker"),
            Some(distlock) => command
                .arg("exec-worker")
                .arg("--distlock")
                .arg(distlock)
                .arg("--log")
                .arg(self.dir.join(format!("{name}-{incarnation}.distlock.log"))),
        };
        command
            .args(["--name", &name, "--url", &self.target.url(proxy.as_ref())])
            .args(["--keys", &self.keys.join(","), "--register", &self.register])
            .arg("--history")
            .arg(self.dir.join(format!("{name}-{incarnation}.jsonl")))
            .args(["--ttl", &humantime::format_duration(self.target.ttl()).to_string()])
            .args(["--seed", &seed.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn().map_err(|e| format!("cannot start a worker: {e}"))?;
        Ok(Worker { name, incarnation, child, proxy })
    }
}

/// The seed of one worker incarnation: the campaign's, mixed with the
/// worker's name, so that workers draw different keys and holdings.
fn worker_seed(campaign: u64, name: &str, incarnation: usize) -> u64 {
    // FNV-1a of the name: stable across runs and platforms.
    let name = name
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    campaign.wrapping_mul(1_000).wrapping_add(u64::try_from(incarnation).unwrap_or(0)) ^ name
}

async fn inject(
    fault: Fault,
    workers: &mut [Worker],
    spawn: &Spawner<'_>,
    target: &Target,
    nemesis: &mut Recorder,
    random: &mut Random,
) -> Result<(), String> {
    let index = random.below(workers.len());
    let ttl = target.ttl();
    let past_ttl = ttl + Duration::from_secs(1);
    let name = workers[index].name.clone();
    let record = |nemesis: &mut Recorder, target: &str| {
        nemesis.record(Kind::Fault { fault: fault.name().to_owned(), target: target.to_owned() });
    };
    match fault {
        Fault::Kill => {
            record(nemesis, &name);
            let worker = &mut workers[index];
            // In exec mode its `distlock exec` too, not the command: that one
            // must die because its supervisor did.
            let supervisors = worker_pid(worker).map(process_tree::kill_with_children).unwrap_or_default();
            let _ = worker.child.wait().await;
            process_tree::wait_gone(&supervisors, Duration::from_secs(5)).await;
            nemesis.record(Kind::Died { worker: name.clone() });
            let next = worker.incarnation + 1;
            *worker = spawn.worker(name, next).await?;
        }
        Fault::Pause => {
            let pid = worker_pid(&workers[index])?;
            record(nemesis, &name);
            // In exec mode the whole tree: the worker, its `distlock exec`
            // and the command, as a stalled machine would be.
            let stopped = process_tree::stop_tree(pid);
            sleep(past_ttl).await;
            process_tree::signal_all(&stopped, Signal::SIGCONT);
        }
        Fault::Cut | Fault::Reset | Fault::Latency | Fault::LostReplies => {
            let Some(proxy) = workers[index].proxy.as_ref() else { return Ok(()) };
            record(nemesis, &name);
            match fault {
                Fault::Cut => {
                    proxy.stall();
                    sleep(past_ttl).await;
                }
                Fault::Reset => proxy.reset(),
                Fault::Latency => {
                    proxy.add_latency(Duration::from_millis(200), Duration::from_millis(200));
                    sleep(Duration::from_secs(2)).await;
                }
                _ => {
                    proxy.drop_replies();
                    sleep(Duration::from_secs(1)).await;
                }
            }
            proxy.resume();
        }
        Fault::ServerPause => {
            let Some(pid) = target.server_pid() else {
                return Err(format!(
                    "server-pause needs the {} that `scripts/services start` runs (no PID file found)",
                    target.backend
                ));
            };
            record(nemesis, &format!("{} server", target.backend));
            signal(Pid::from_raw(pid), Signal::SIGSTOP);
            sleep(past_ttl).await;
            signal(Pid::from_raw(pid), Signal::SIGCONT);
        }
        Fault::Compact => {
            record(nemesis, "etcd history");
            conformance_tests::etcd::EtcdHarness::from_env().compact().await;
        }
    }
    nemesis.record(Kind::Healed { fault: fault.name().to_owned() });
    Ok(())
}

fn worker_pid(worker: &Worker) -> Result<Pid, String> {
    let pid = worker.child.id().ok_or_else(|| format!("worker {} has exited", worker.name))?;
    Ok(Pid::from_raw(i32::try_from(pid).map_err(|e| e.to_string())?))
}

fn signal(pid: Pid, signal: Signal) {
    let _ = kill(pid, signal);
}

/// Ends every worker: SIGCONT (in case), SIGTERM, then SIGKILL after 10 s
/// (with everything it started).
async fn stop(workers: &mut [Worker], nemesis: &mut Recorder) {
    for worker in workers.iter() {
        if let Ok(pid) = worker_pid(worker) {
            signal(pid, Signal::SIGCONT);
            signal(pid, Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for worker in workers.iter_mut() {
        if tokio::time::timeout_at(deadline, worker.child.wait()).await.is_err() {
            if let Ok(pid) = worker_pid(worker) {
                process_tree::signal_all(&process_tree::descendants(pid), Signal::SIGKILL);
            }
            let _ = worker.child.start_kill();
            let _ = worker.child.wait().await;
            nemesis.record(Kind::Died { worker: worker.name.clone() });
        }
    }
}

/// Waits up to `limit` for the service to hold nothing of the campaign;
/// returns what is left.
async fn leftovers(target: &Target, prefix: &str, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let left = target.harness.leftover(prefix).await;
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_and_incarnations_draw_different_seeds() {
        let seeds: Vec<u64> = ["w0", "w1", "w2", "w3"]
            .iter()
            .flat_map(|name| (0..3).map(move |incarnation| worker_seed(3, name, incarnation)))
            .collect();
        let mut distinct = seeds.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), seeds.len(), "{seeds:?}");
        assert_eq!(worker_seed(3, "w1", 0), worker_seed(3, "w1", 0));
    }
}
