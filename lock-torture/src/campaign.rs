//! The campaign: worker processes contend on a few keys with fenced writes,
//! the nemesis injects one fault at a time and heals it, and afterwards the
//! checker reads the history and the service is inspected for leftovers.
//! A worker holds its locks through the library, or (exec mode) through
//! `distlock exec` processes guarding a command; the memory backend's
//! workers are tasks of the campaign (see [`crate::task_worker`]). With
//! `--cluster`, the workers use the service's 3-member cluster and the
//! nemesis kills and pauses its leader.

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
use crate::task_worker::{TaskSpec, TaskWorker};

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
    /// `memory`, `file`, `etcd`, `zk` or `consul`.
    #[arg(long)]
    pub backend: String,
    /// Use the service's 3-member cluster (`scripts/services start X
    /// --cluster`): the nemesis then kills and pauses its leader.
    #[arg(long)]
    pub cluster: bool,
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
    body: Body,
}

/// What a worker is: a process (with its proxy, for a single server), or a
/// task of the campaign (the memory backend).
enum Body {
    Process {
        child: Child,
        proxy: Option<StallProxy>,
    },
    /// `None` once killed or stopped.
    Task(Option<TaskWorker>),
}

impl Drop for Worker {
    /// A campaign ended by an error leaves nothing running: the worker is
    /// killed on drop, and what it started (in exec mode) with it (a task
    /// worker is aborted with the campaign's runtime).
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
    let target = Target::new(&args.backend, args.ttl, args.cluster)?;
    if target.store.is_some() && args.mode == Mode::Exec {
        return Err("exec mode needs a backend its processes share; the memory backend lives in one".to_owned());
    }
    if let Some(cluster) = &target.cluster {
        all_members_serve(cluster).await?;
    }
    // One per campaign of a smoke run, which runs both modes in one process.
    let mode = match (args.mode, args.cluster) {
        (Mode::Library, false) => String::new(),
        (Mode::Library, true) => "cluster-".to_owned(),
        (Mode::Exec, false) => "exec-".to_owned(),
        (Mode::Exec, true) => "exec-cluster-".to_owned(),
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
        graveyard: std::sync::Mutex::new(Vec::new()),
    };

    let mut workers = Vec::new();
    for index in 0..args.workers.max(2) {
        workers.push(spawn.worker(index, 0).await?);
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
    let clustered = target.cluster.is_some();
    let windows = checker::check(&events, |fault| {
        let bound = recovery_bound(ttl, slack, fault, clustered);
        u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX)
    });
    Ok(Outcome {
        backend: match args.mode {
            Mode::Library => target.label(),
            Mode::Exec => format!("{} (exec)", target.label()),
        },
        faults: checker::by_fault(&windows),
        skipped,
        leftovers,
        ran: started.elapsed(),
    })
}

/// How long after a fault heals a grant must come: the TTL, the backend's
/// expiry slack, and room for the fault's own aftermath (a reconnect, a
/// killed worker's replacement starting); in a cluster, after the leader
/// was killed or paused, 10 s more for an election and for clients to find
/// the new leader (the failover tests' bound is 20 s in all).
pub fn recovery_bound(ttl: Duration, slack: Duration, fault: &str, cluster: bool) -> Duration {
    let election = cluster && [Fault::LeaderKill.name(), Fault::ServerPause.name()].contains(&fault);
    ttl + slack + Duration::from_secs(if election { 15 } else { 5 })
}

/// Every member of `cluster` serves, and one leads: a campaign never starts
/// on a cluster a previous run left short of a member.
async fn all_members_serve(cluster: &conformance_tests::cluster::Cluster) -> Result<(), String> {
    for (index, member) in cluster.members.iter().enumerate() {
        if !cluster.serving(index).await {
            return Err(format!(
                "cluster member {} ({}) does not serve: start the cluster with `scripts/services start {} --cluster`",
                member.name,
                member.client,
                cluster.service.name()
            ));
        }
    }
    cluster.await_leader(Duration::from_secs(10)).await.map(|_| ())
}

async fn expiry_slack(target: &Target) -> Result<Duration, String> {
    let proxy = target.proxy().await?;
    let url = target.url(proxy.as_ref(), 0);
    let locks = distlock::connect_with_ttl(&url, target.ttl()).await.map_err(|e| format!("{}: {e}", target.backend))?;
    Ok(locks.capabilities().expiry_slack)
}

/// The `distlock` binary, built and seen to run against the backend.
async fn exec_ready(target: &Target, probe_key: &str) -> Result<PathBuf, String> {
    let distlock = crate::distlock_binary::locate().await?;
    let proxy = target.proxy().await?;
    probe(&distlock, &target.url(proxy.as_ref(), 0), probe_key, target.ttl()).await?;
    Ok(distlock)
}

fn plan(args: &CampaignArgs, backend: &str) -> (Vec<Fault>, Vec<(Fault, &'static str)>) {
    let wanted: Vec<Fault> = if args.faults.is_empty() { Fault::ALL.to_vec() } else { args.faults.clone() };
    let mut faults = Vec::new();
    let mut skipped = Vec::new();
    for fault in wanted {
        match fault.not_applicable(backend, args.cluster) {
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
    /// The memory clients of killed task workers, cut off and kept open
    /// until the campaign ends (see [`TaskWorker::kill`]).
    graveyard: std::sync::Mutex<Vec<std::sync::Arc<lock_core::MemoryLock>>>,
}

impl Spawner<'_> {
    /// Worker number `index`, incarnation `incarnation`.
    async fn worker(&self, index: usize, incarnation: usize) -> Result<Worker, String> {
        let name = format!("w{index}");
        let seed = worker_seed(self.seed, &name, incarnation);
        let history = self.dir.join(format!("{name}-{incarnation}.jsonl"));
        if let Some(store) = &self.target.store {
            let spec = TaskSpec {
                store,
                name: &name,
                incarnation,
                history: &history,
                keys: self.keys,
                register: &self.register,
                ttl: self.target.ttl(),
                seed,
            };
            let task = TaskWorker::start(spec).await?;
            return Ok(Worker { name, incarnation, body: Body::Task(Some(task)) });
        }
        let proxy = self.target.proxy().await?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find the campaign's executable: {e}"))?;
        let mut command = Command::new(exe);
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
            .args(["--name", &name, "--incarnation", &incarnation.to_string()])
            .args(["--url", &self.target.url(proxy.as_ref(), index)])
            .args(["--keys", &self.keys.join(","), "--register", &self.register])
            .arg("--history")
            .arg(history)
            .args(["--ttl", &humantime::format_duration(self.target.ttl()).to_string()])
            .args(["--seed", &seed.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn().map_err(|e| format!("cannot start a worker: {e}"))?;
        Ok(Worker { name, incarnation, body: Body::Process { child, proxy } })
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
            let next = workers[index].incarnation + 1;
            kill_worker(&mut workers[index], spawn).await;
            nemesis.record(Kind::Died { worker: name, incarnation: next - 1 });
            workers[index] = spawn.worker(index, next).await?;
        }
        Fault::Pause => {
            record(nemesis, &name);
            match &workers[index].body {
                Body::Task(task) => {
                    if let Some(task) = task {
                        task.pause(past_ttl).await;
                    }
                }
                Body::Process { .. } => {
                    let pid = worker_pid(&workers[index])?;
                    // In exec mode the whole tree: the worker, its `distlock
                    // exec` and the command, as a stalled machine would be.
                    let stopped = process_tree::stop_tree(pid);
                    sleep(past_ttl).await;
                    process_tree::signal_all(&stopped, Signal::SIGCONT);
                }
            }
        }
        Fault::Cut if matches!(workers[index].body, Body::Task(_)) => {
            record(nemesis, &name);
            if let Body::Task(Some(task)) = &workers[index].body {
                task.cut(past_ttl).await;
            }
        }
        Fault::Cut | Fault::Reset | Fault::Latency | Fault::LostReplies => {
            let Body::Process { proxy: Some(proxy), .. } = &workers[index].body else { return Ok(()) };
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
            let Some(pid) = target.server_pid().await else {
                return Err(format!(
                    "server-pause needs the {} that `scripts/services start` runs (no PID file found)",
                    target.label()
                ));
            };
            record(nemesis, &format!("{} server (pid {pid})", target.label()));
            signal(Pid::from_raw(pid), Signal::SIGSTOP);
            sleep(past_ttl).await;
            signal(Pid::from_raw(pid), Signal::SIGCONT);
        }
        Fault::LeaderKill => {
            let cluster = target.cluster.as_ref().ok_or("leader-kill needs a cluster campaign (--cluster)")?;
            let leader = cluster.await_leader(Duration::from_secs(20)).await?;
            record(nemesis, &format!("{} leader {}", target.label(), cluster.members[leader].name));
            let killed = cluster.kill(leader)?;
            // Away past the TTL: the others elect a leader and go on without it.
            sleep(past_ttl).await;
            cluster.start_again(&killed, Duration::from_secs(60)).await?;
        }
        Fault::Compact => {
            record(nemesis, "etcd history");
            let harness = match &target.cluster {
                Some(cluster) => conformance_tests::etcd::EtcdHarness::with_endpoints(
                    cluster.members.iter().map(|m| m.client.clone()).collect(),
                ),
                None => conformance_tests::etcd::EtcdHarness::from_env(),
            };
            harness.compact().await;
        }
    }
    nemesis.record(Kind::Healed { fault: fault.name().to_owned() });
    Ok(())
}

/// Kills a worker: a process with SIGKILL, in exec mode its `distlock exec`
/// too but not the command, which must die because its supervisor did; a
/// task worker by cutting its client off for good and dropping it.
async fn kill_worker(worker: &mut Worker, spawn: &Spawner<'_>) {
    let supervisors = worker_pid(worker).map(process_tree::kill_with_children).unwrap_or_default();
    match &mut worker.body {
        Body::Process { child, .. } => {
            let _ = child.wait().await;
            process_tree::wait_gone(&supervisors, Duration::from_secs(5)).await;
        }
        Body::Task(task) => {
            if let Some(task) = task.take() {
                let client = task.kill().await;
                spawn.graveyard.lock().unwrap_or_else(|p| p.into_inner()).push(client);
            }
        }
    }
}

fn worker_pid(worker: &Worker) -> Result<Pid, String> {
    let Body::Process { child, .. } = &worker.body else {
        return Err(format!("worker {} is a task, not a process", worker.name));
    };
    let pid = child.id().ok_or_else(|| format!("worker {} has exited", worker.name))?;
    Ok(Pid::from_raw(i32::try_from(pid).map_err(|e| e.to_string())?))
}

fn signal(pid: Pid, signal: Signal) {
    let _ = kill(pid, signal);
}

/// Ends every worker: SIGCONT (in case), SIGTERM, then SIGKILL after 10 s
/// (with everything it started); a task worker is told to stop, then
/// aborted.
async fn stop(workers: &mut [Worker], nemesis: &mut Recorder) {
    for worker in workers.iter() {
        if let Ok(pid) = worker_pid(worker) {
            signal(pid, Signal::SIGCONT);
            signal(pid, Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for worker in workers.iter_mut() {
        let stopped = match &mut worker.body {
            Body::Task(task) => match task.take() {
                Some(task) => task.stop(deadline.saturating_duration_since(Instant::now())).await,
                None => true,
            },
            Body::Process { child, .. } => {
                let exited = tokio::time::timeout_at(deadline, child.wait()).await.is_ok();
                if !exited {
                    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                        process_tree::signal_all(&process_tree::descendants(Pid::from_raw(pid)), Signal::SIGKILL);
                    }
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                exited
            }
        };
        if !stopped {
            nemesis.record(Kind::Died { worker: worker.name.clone(), incarnation: worker.incarnation });
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

/// Runs `distlock exec -- true` once on `key`, so that a `distlock` that
/// cannot work against the backend stops the campaign with its own message
/// rather than showing as workers that never hold a lock.
///
/// # Errors
/// When it does not exit 0.
async fn probe(distlock: &Path, url: &str, key: &str, ttl: std::time::Duration) -> Result<(), String> {
    let ttl = humantime::format_duration(ttl).to_string();
    let output = Command::new(distlock)
        .args(["exec", "--backend", url, "--key", key, "--ttl", &ttl, "--", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", distlock.display()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`distlock exec` does not run against {url} ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    ))
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
