//! A 3-member etcd cluster (`scripts/services start etcd --cluster`) loses
//! its leader while a lock is held and others wait: never two holders at
//! once, tokens keep increasing, and grants resume after re-election within
//! [`RECOVERY_BOUND`]. And a member killed (leader or follower) costs the
//! clients of all three endpoints no lock and no more than [`PROMPT`] of
//! delay (after the election), as with Go's client.
#![cfg(feature = "etcd")]
// The test reports the recovery time it measured.
#![allow(clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance_tests::cluster::{Cluster, Stopped};
use conformance_tests::etcd::NAMESPACE;
use conformance_tests::{Namespace, failover};
use lock_core::{LockError, Locks};
use lock_etcd::{EtcdConfig, EtcdLock};
use tokio::time::{Instant, sleep};

/// Election (1 s in the test cluster) plus a lease TTL plus expiry slack,
/// with room for a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
const WORKERS: usize = 4;

/// The tests of this file kill members of the one cluster: they take turns
/// (the test harness runs a file's tests side by side), or two kills at once
/// would take the cluster's quorum.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(endpoints: &[String]) -> EtcdConfig {
    EtcdConfig::new(endpoints.iter().cloned())
        .namespace(NAMESPACE)
        .lease_ttl(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_held_keeps_exclusion_and_recovers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::etcd();
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.client.clone()).collect();
    // The last resort should the member not come back: restart the cluster.
    let _repair = failover::ClusterRepair::new("etcd");
    let victim = whole(&cluster).await;
    let mut clients = Vec::new();
    for _ in 0..WORKERS {
        let lock = EtcdLock::connect(config(&endpoints)).await.unwrap_or_else(|e| panic!("cannot connect: {e}"));
        clients.push(Locks::new(lock));
    }
    let key = Namespace::new().key("failover");
    // The member is started again with its data whatever the outcome, so
    // the next test finds three (a member this process started and another
    // test killed would be its zombie, which the repair takes for running).
    let stopped: Arc<Mutex<Option<Stopped>>> = Arc::default();
    let (killer, slot) = (cluster.clone(), Arc::clone(&stopped));
    let kill = move || {
        let killed = killer.kill(victim).unwrap_or_else(|e| panic!("{e}"));
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(killed);
    };
    let report = tokio::spawn(failover::contend_through_failover(clients, key, kill, RECOVERY_BOUND)).await;
    let killed = stopped.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(killed) = killed {
        cluster.start_again(&killed, RESTART_LIMIT).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let report = report.unwrap_or_else(|panicked| std::panic::resume_unwind(panicked.into_panic()));
    println!("leader {} killed: {report:?}", cluster.members[victim].name);
}

/// Waits until every member serves and one leads, and returns the leader.
///
/// # Panics
/// When that takes longer than [`RESTART_LIMIT`], with how to repair the
/// cluster.
async fn whole(cluster: &Cluster) -> usize {
    let deadline = Instant::now() + RESTART_LIMIT;
    loop {
        let mut serving = 0;
        for member in 0..cluster.members.len() {
            serving += usize::from(cluster.serving(member).await);
        }
        if serving == cluster.members.len()
            && let Some(leader) = cluster.leader().await
        {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "{serving} of the {} members of {} serve: restart the cluster with \
             `scripts/services stop etcd --cluster; scripts/services start etcd --cluster`",
            cluster.members.len(),
            cluster.client_list()
        );
        sleep(Duration::from_millis(200)).await;
    }
}

/// etcd's shortest lease TTL: a stall of a couple of seconds costs a holder
/// its lock.
const SHORT_TTL: Duration = Duration::from_secs(2);
/// How long the work after a kill may take in all (after the election, when
/// the leader was killed): Go's client fails over to the other endpoints at
/// once, so a dead member should cost a few milliseconds, not a request
/// timeout.
const PROMPT: Duration = Duration::from_millis(1500);
/// Acquisitions and releases of free keys after a kill: each request the
/// balancer sends to the dead member fails, so with one in three going there
/// a client that keeps it in the balancer is all but sure to meet it.
const ROUNDS: usize = 5;
/// A bound on the rounds tried to get [`ROUNDS`] through, so that a client
/// failing fast fails the test instead of spinning.
const MAX_ROUNDS: usize = 100;
/// A request sent this soon after the kill may have gone out on the dying
/// connection before the client could know: its outcome is unknown, so the
/// client rightly reports it unavailable (once) instead of sending it again.
const RACING_THE_KILL: Duration = Duration::from_millis(100);
/// How long a killed member may take to serve again.
const RESTART_LIMIT: Duration = Duration::from_secs(60);

/// Kills each follower in turn while a client of all three endpoints holds a
/// lock and another works: which member carries a client's keep-alive and
/// watch streams is not ours to choose, so killing each gives the kill its
/// chance to hit them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_follower_does_not_cost_a_holder_its_lock() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::etcd();
    // The last resort should a member not come back: restart the cluster.
    let _repair = failover::ClusterRepair::new("etcd");
    let mut killed = Vec::new();
    for _ in 0..cluster.members.len() - 1 {
        let leader = whole(&cluster).await;
        let victim = (0..cluster.members.len())
            .find(|m| *m != leader && !killed.contains(m))
            .unwrap_or_else(|| panic!("no follower left to kill"));
        killed.push(victim);
        kill_while_held(&cluster, victim, false).await;
    }
}

/// Kills the leader while a client of all three endpoints holds a lock and
/// another works: the survivors elect a new one within a second or two, and
/// the clients must go on through them as soon as they have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_does_not_cost_a_holder_its_lock() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::etcd();
    let _repair = failover::ClusterRepair::new("etcd");
    let leader = whole(&cluster).await;
    kill_while_held(&cluster, leader, true).await;
}

/// What one kill cost, measured from the kill.
#[derive(Debug)]
struct Costs {
    /// How long the holder's lock was still provably held when the member
    /// was killed.
    remaining: Duration,
    /// When a new leader was seen (the leader was killed).
    elected: Option<Duration>,
    /// When the holder's guard reported its lock lost, and why.
    lost: Option<(Duration, String)>,
    /// The other client's acquisitions and releases of free keys: when each
    /// ended, and how.
    work: Vec<(Duration, Result<(), LockError>)>,
    /// How long the holder's release took, and its outcome.
    released: (Duration, Result<(), String>),
}

/// One client holds a lock and another has a lease and streams of its own;
/// `victim` is killed. The holder must keep its lock for three TTLs and then
/// release it within [`PROMPT`]; the other client must acquire and release
/// [`ROUNDS`] free keys within [`PROMPT`] of the kill (of the election, if
/// the leader was killed), failing no round but for the reasons
/// [`excused`] names. The member is started again with its data whatever
/// the outcome.
async fn kill_while_held(cluster: &Cluster, victim: usize, leader: bool) {
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.client.clone()).collect();
    let connect = || async {
        let config = config(&endpoints).lease_ttl(SHORT_TTL);
        Locks::new(EtcdLock::connect(config).await.unwrap_or_else(|e| panic!("cannot connect: {e}")))
    };
    let (holder, other) = (connect().await, connect().await);
    let names = Namespace::new();
    let guard = holder.lock(names.key("held").as_str()).acquire().await.unwrap_or_else(|e| panic!("{e}"));
    // The other client's lease and streams exist before the kill, as a
    // waiter's would.
    let warm = other.lock(names.key("warm-up").as_str()).acquire().await.unwrap_or_else(|e| panic!("{e}"));
    warm.release().await.unwrap_or_else(|e| panic!("{e}"));

    let remaining = guard.remaining();
    let stopped = cluster.kill(victim).unwrap_or_else(|e| panic!("{e}"));
    let killed_at = Instant::now();
    let watched = cluster.clone();
    // In a task of its own, so that the member is started again even when
    // this panics.
    let costs = tokio::spawn(async move {
        let work = async {
            if leader {
                watched.await_leader(RESTART_LIMIT).await.unwrap_or_else(|e| panic!("{e}"));
            }
            let elected = leader.then(|| killed_at.elapsed());
            let mut work = Vec::new();
            let mut granted = 0;
            while granted < ROUNDS && work.len() < MAX_ROUNDS {
                // The key is free: the deadline only bounds a hang.
                let request = other.lock(names.key(&format!("free-{}", work.len())).as_str()).wait(PROMPT * 4);
                let outcome = match request.acquire().await {
                    Ok(guard) => guard.release().await,
                    Err(error) => Err(error),
                };
                granted += usize::from(outcome.is_ok());
                let failed = outcome.is_err();
                work.push((killed_at.elapsed(), outcome));
                if failed {
                    // Paced, so the rounds outlast a renewal after an election.
                    sleep(Duration::from_millis(50)).await;
                }
            }
            (elected, work)
        };
        let kept = async {
            tokio::select! {
                reason = guard.lost() => Some((killed_at.elapsed(), reason.to_string())),
                () = sleep(SHORT_TTL * 3) => None,
            }
        };
        let ((elected, work), lost) = tokio::join!(work, kept);
        let releasing = Instant::now();
        let outcome = guard.release().await.map_err(|e| e.to_string());
        Costs { remaining, elected, lost, work, released: (releasing.elapsed(), outcome) }
    })
    .await;
    let restarted = cluster.start_again(&stopped, RESTART_LIMIT).await;
    let costs = costs.unwrap_or_else(|panicked| std::panic::resume_unwind(panicked.into_panic()));
    restarted.unwrap_or_else(|e| panic!("{e}"));

    let name = &cluster.members[victim].name;
    let role = if leader { "leader" } else { "follower" };
    println!("{role} {name} killed: {costs:?}");
    // With the leader gone nobody renews a lease until the survivors elect
    // another, and the holder's next keep-alive comes up to one keep-alive
    // period (a third of the TTL) after the election: a lock whose proof runs
    // out before then is rightly given up by the guard's clock (seen in CI:
    // elected 1.02 s after the kill, proof out at 1.57 s, lost). Any other
    // loss is the client's doing.
    let election_outlasted_the_lock = costs.elected.is_some_and(|elected| elected + SHORT_TTL / 3 >= costs.remaining);
    assert!(
        costs.lost.is_none() || election_outlasted_the_lock,
        "{role} {name} killed: the holder lost its lock: {costs:?}"
    );
    let (took, outcome) = &costs.released;
    assert!(
        *took <= PROMPT && (outcome.is_ok() || election_outlasted_the_lock),
        "{role} {name} killed: the holder's release was slow or failed: {costs:?}"
    );
    let failures = costs.work.iter().enumerate().filter(|(_, (_, outcome))| outcome.is_err());
    assert!(
        failures.clone().all(|(_, (at, outcome))| excused(*at, outcome, election_outlasted_the_lock)),
        "{role} {name} killed: the other client's work failed: {costs:?}"
    );
    let granted = costs.work.len() - failures.count();
    let started = costs.elected.unwrap_or_default();
    let done = costs.work.last().map_or(Duration::MAX, |(at, _)| *at);
    // After an election that outlasted the proof of its lease, the other
    // client too needs a renewal (one keep-alive period) before it grants
    // again.
    let limit = if election_outlasted_the_lock { PROMPT + SHORT_TTL } else { PROMPT };
    assert!(
        granted == ROUNDS && done.saturating_sub(started) <= limit,
        "{role} {name} killed: the other client's work was slow: {costs:?}"
    );
}

/// Whether a round of the other client's work, ended `at` after the
/// kill, may have failed as it did.
fn excused(at: Duration, outcome: &Result<(), LockError>, election_outlasted_the_lock: bool) -> bool {
    match outcome {
        Ok(()) => true,
        // Requests sent just after the kill may have met the dying
        // connection before the client could know (several rounds fit in
        // that time): their outcome is unknown, so they are rightly
        // reported, not sent again.
        Err(LockError::Unavailable { .. }) => at <= RACING_THE_KILL,
        // Granted on a lease whose renewals the election held up past the
        // time it is proven for: the guard's clock gives it up at once.
        Err(error) => error.is_lost() && election_outlasted_the_lock,
    }
}
