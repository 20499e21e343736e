//! Leader election and semaphores on etcd against etcd's own tools: an
//! `etcdctl elect` leader is ours too (and ours is `etcdctl elect -l`'s,
//! proclaimed values included), and `etcdctl lock` excludes our semaphore
//! holders of any limit, both ways.
#![cfg(feature = "etcd")]

use std::time::Duration;

use conformance_tests::etcd::{EtcdHarness, NAMESPACE, etcdctl};
use conformance_tests::process::NativeCommand;
use conformance_tests::{Harness, Namespace};
use futures_util::StreamExt;
use lock_core::{LeaderStream, LockInfo, LockKey};
use tokio::time::{Instant, sleep, timeout};

/// How long etcdctl gets to print what it must.
const PRINTED: Duration = Duration::from_secs(10);

fn harness() -> EtcdHarness {
    EtcdHarness::from_env()
}

/// `etcdctl ARGS...` against the harness's etcd, its output read by line.
fn etcdctl_run(h: &EtcdHarness, args: &[&str]) -> NativeCommand {
    let mut command = tokio::process::Command::new(etcdctl());
    command.arg(format!("--endpoints={}", h.endpoints().join(","))).args(args);
    NativeCommand::spawn(command)
}

/// Sends SIGINT, on which `etcdctl elect` resigns (deleting its key) and
/// exits 0.
fn interrupt(native: &NativeCommand) {
    let pid = native.child.id().unwrap_or_else(|| panic!("etcdctl has exited already")).to_string();
    let sent = std::process::Command::new("kill").args(["-INT", "--", pid.as_str()]).status();
    assert!(matches!(sent, Ok(status) if status.success()), "cannot interrupt etcdctl {pid}: {sent:?}");
}

/// The next line etcdctl prints, within [`PRINTED`].
async fn printed(native: &mut NativeCommand, step: &str) -> String {
    let line = timeout(PRINTED, native.next_line()).await.ok().flatten();
    line.unwrap_or_else(|| panic!("{step}: etcdctl printed nothing within {PRINTED:?}"))
}

/// The next two lines etcdctl prints for a leader: its key and its value.
async fn leader_lines(native: &mut NativeCommand, step: &str) -> (String, String) {
    (printed(native, step).await, printed(native, step).await)
}

/// Waits for etcdctl's exit and checks it succeeded.
async fn exits_cleanly(native: &mut NativeCommand, what: &str) {
    let status = timeout(PRINTED, native.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "{what} failed: {status:?}");
}

/// The next leader an observer reports that is not `None`.
async fn next_leader(leaders: &mut LeaderStream, step: &str) -> LockInfo {
    loop {
        match timeout(PRINTED, leaders.next()).await {
            Ok(Some(Ok(Some(leader)))) => return leader,
            Ok(Some(Ok(None))) => {}
            outcome => panic!("{step}: the observer reported {outcome:?}"),
        }
    }
}

/// The native election name of `key`.
fn name_of(key: &LockKey) -> String {
    lock_etcd::native_lock_name(NAMESPACE, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_leads_and_our_candidate_waits() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("elected by etcdctl");
    let name = name_of(&key);
    let (client, observer) = (h.client().await, h.client().await);
    let mut native = etcdctl_run(&h, &["elect", "--", &name, "etcdctl-proposal"]);
    let (elected, proposal) = leader_lines(&mut native, "etcdctl elect").await;
    assert!(elected.starts_with(&format!("{name}/")), "etcdctl's key {elected:?} is not under {name}/");
    assert_eq!(proposal, "etcdctl-proposal");

    let leader = client.locks.leader(key.as_str()).await.unwrap_or_else(|e| panic!("leader: {e}"));
    assert_eq!(leader.and_then(|l| l.value).as_deref(), Some("etcdctl-proposal"), "our view of etcdctl's leader");
    let mut leaders = observer.locks.observe(key.as_str()).unwrap_or_else(|e| panic!("observe: {e}"));
    let seen = next_leader(&mut leaders, "etcdctl leads").await;
    assert_eq!(seen.value.as_deref(), Some("etcdctl-proposal"), "the observer's first leader");

    let ours = client.locks.lock(key.as_str()).value("our-proposal").try_acquire().await;
    assert!(matches!(ours, Ok(None)), "our candidate led beside etcdctl's leader: {ours:?}");
    let candidate = async {
        let request = client.locks.lock(key.as_str()).value("our-proposal").wait(Duration::from_secs(20));
        let ours = request.acquire().await;
        (Instant::now(), ours)
    };
    let resign = async {
        sleep(Duration::from_secs(1)).await;
        let resigned_at = Instant::now();
        interrupt(&native);
        resigned_at
    };
    let ((led_at, ours), resigned_at) = tokio::join!(candidate, resign);
    let ours = ours.unwrap_or_else(|e| panic!("our candidate never led after etcdctl resigned: {e}"));
    assert!(led_at >= resigned_at, "our candidate led before etcdctl resigned");
    exits_cleanly(&mut native, "etcdctl elect").await;
    let seen = next_leader(&mut leaders, "our candidate leads").await;
    assert_eq!((seen.token, seen.value.as_deref()), (ours.token(), Some("our-proposal")), "the next leader");
    assert!(ours.release().await.is_ok());
    drop(leaders);
    assert_eq!(h.leftover(ns.prefix()).await, 0, "keys left after the election");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_listens_to_our_leader_and_its_proclaims() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("led by distlock");
    let name = name_of(&key);
    let client = h.client().await;
    let leading = client.locks.lock(key.as_str()).value("10.0.0.1:8080").try_acquire().await.ok().flatten();
    let leading = leading.unwrap_or_else(|| panic!("could not lead a free election"));
    let mut listen = etcdctl_run(&h, &["elect", "--listen", "--", &name]);
    let (leader, value) = leader_lines(&mut listen, "etcdctl elect -l, our leader").await;
    assert!(leader.starts_with(&format!("{name}/")), "the listener's leader {leader:?} is not under {name}/");
    assert_eq!(value, "10.0.0.1:8080", "the listener sees our proposal");

    leading.proclaim("10.0.0.2:8080").await.unwrap_or_else(|e| panic!("proclaim: {e}"));
    let (same, proclaimed) = leader_lines(&mut listen, "etcdctl elect -l, after our proclaim").await;
    assert_eq!((same.as_str(), proclaimed.as_str()), (leader.as_str(), "10.0.0.2:8080"), "the proclaimed value");

    // An etcdctl candidate waits for our leader, and leads once it resigns.
    let mut candidate = etcdctl_run(&h, &["elect", "--", &name, "etcdctl-proposal"]);
    let early = timeout(Duration::from_secs(2), candidate.next_line()).await;
    assert!(early.is_err(), "etcdctl elect led beside our leader: {early:?}");
    assert!(leading.release().await.is_ok());
    let (elected, proposal) = leader_lines(&mut candidate, "etcdctl elect after our leader resigned").await;
    assert_eq!(proposal, "etcdctl-proposal");
    assert_eq!(leader_lines(&mut listen, "etcdctl elect -l, the next leader").await, (elected, proposal));
    interrupt(&candidate);
    exits_cleanly(&mut candidate, "etcdctl elect").await;
    interrupt(&listen);
    exits_cleanly(&mut listen, "etcdctl elect -l").await;
    assert_eq!(h.leftover(ns.prefix()).await, 0, "keys left after the election");
}

/// The time now in nanoseconds since the epoch, as `date +%s%N` prints it.
fn now_nanos() -> Option<u128> {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_semaphores_wait_while_etcdctl_lock_holds() {
    let h = harness();
    let ns = Namespace::new();
    let client = h.client().await;
    for limit in [1, 3] {
        let key = ns.key(&format!("etcdctl holds, limit {limit}"));
        let mut native = etcdctl_run(&h, &["lock", "--", &name_of(&key), "sh", "-c", "echo held; sleep 2; date +%s%N"]);
        let line = timeout(PRINTED, native.next_line()).await.ok().flatten();
        assert_eq!(line.as_deref(), Some("held"), "etcdctl lock did not take the lock");
        let attempt = client.locks.semaphore(key.as_str(), limit).try_acquire().await;
        assert!(matches!(attempt, Ok(None)), "a limit-{limit} place was granted while etcdctl holds: {attempt:?}");
        let place = client.locks.semaphore(key.as_str(), limit).wait(Duration::from_secs(20)).acquire().await;
        let place = place.unwrap_or_else(|e| panic!("no limit-{limit} place after etcdctl: {e}"));
        let granted_at = now_nanos();
        let finished_at = timeout(PRINTED, native.next_line()).await.ok().flatten();
        let finished_at = finished_at.and_then(|line| line.parse::<u128>().ok());
        assert!(
            matches!((finished_at, granted_at), (Some(finished), Some(granted)) if finished <= granted),
            "a limit-{limit} place was granted while etcdctl lock's command ran ({finished_at:?} vs {granted_at:?})"
        );
        exits_cleanly(&mut native, "etcdctl lock").await;
        assert!(place.release().await.is_ok());
    }
    assert_eq!(h.leftover(ns.prefix()).await, 0, "keys left after etcdctl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_waits_while_our_semaphore_holds() {
    let h = harness();
    let ns = Namespace::new();
    let (client, other) = (h.client().await, h.client().await);
    for limit in [1, 3] {
        let key = ns.key(&format!("semaphore of {limit} held"));
        let place = client.locks.semaphore(key.as_str(), limit).try_acquire().await.ok().flatten();
        let place = place.unwrap_or_else(|| panic!("could not take a place of a free limit-{limit} semaphore"));
        let mut native = etcdctl_run(&h, &["lock", "--", &name_of(&key), "sh", "-c", "echo acquired"]);
        let early = timeout(Duration::from_secs(2), native.next_line()).await;
        assert!(early.is_err(), "etcdctl lock got a lock a limit-{limit} semaphore holds: {early:?}");
        // The waiting etcdctl holds back places asked for after it.
        let later = other.locks.semaphore(key.as_str(), limit).try_acquire().await;
        assert!(matches!(later, Ok(None)), "a limit-{limit} place passed the waiting etcdctl: {later:?}");
        let holders = client.locks.holders(key.as_str()).await.unwrap_or_else(|e| panic!("holders: {e}"));
        let listed: Vec<_> = holders.iter().map(|info| (info.token, info.mode)).collect();
        assert_eq!(listed, [(place.token(), place.mode())], "the waiting etcdctl is listed as a holder");
        assert!(place.release().await.is_ok());
        let line = timeout(PRINTED, native.next_line()).await.ok().flatten();
        assert_eq!(line.as_deref(), Some("acquired"), "etcdctl lock did not get the lock after the release");
        exits_cleanly(&mut native, "etcdctl lock").await;
    }
    assert_eq!(h.leftover(ns.prefix()).await, 0, "keys left after etcdctl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_and_proposals_are_stored_as_documented() {
    let h = harness();
    let ns = Namespace::new();
    let key = ns.key("layout");
    let name = name_of(&key);
    let client = h.client().await;
    let mut admin = h.admin().await;
    let stored = async |admin: &mut etcd_client::Client| {
        let found = admin.get(format!("{name}/"), Some(etcd_client::GetOptions::new().with_prefix())).await;
        let found = found.unwrap_or_else(|e| panic!("cannot read {name}/: {e}"));
        let kvs = found.kvs().iter();
        kvs.map(|kv| (kv.key_str().unwrap_or_default().to_owned(), kv.value_str().unwrap_or_default().to_owned()))
            .collect::<Vec<_>>()
    };

    let place = client.locks.semaphore(key.as_str(), 2).owner("worker \"7\"").try_acquire().await.ok().flatten();
    let place = place.unwrap_or_else(|| panic!("could not take a place of a free semaphore"));
    let found = stored(&mut admin).await;
    let [(place_key, record)] = found.as_slice() else { panic!("one key for one place: {found:?}") };
    let suffix = place_key.strip_prefix(&format!("{name}/semaphore/")).unwrap_or_else(|| panic!("{place_key}"));
    assert!(
        suffix
            .split_once('-')
            .is_some_and(|(lease, n)| i64::from_str_radix(lease, 16).is_ok() && n.parse::<u64>().is_ok())
    );
    assert_eq!(record, r#"{"semaphore":2,"owner":"worker \"7\""}"#);
    let holders = client.locks.holders(key.as_str()).await.unwrap_or_else(|e| panic!("holders: {e}"));
    assert_eq!(holders.iter().map(|h| h.owner.as_str()).collect::<Vec<_>>(), ["worker \"7\""]);
    assert!(place.release().await.is_ok());

    let leading = client.locks.lock(key.as_str()).value("10.0.0.9:80").try_acquire().await.ok().flatten();
    let leading = leading.unwrap_or_else(|| panic!("could not lead a free election"));
    let found = stored(&mut admin).await;
    let [(leader_key, proposal)] = found.as_slice() else { panic!("one key for one leader: {found:?}") };
    let lease = leader_key.strip_prefix(&format!("{name}/")).unwrap_or_else(|| panic!("{leader_key}"));
    assert!(i64::from_str_radix(lease, 16).is_ok(), "{leader_key} is not {name}/{{lease hex}}");
    assert_eq!(proposal, "10.0.0.9:80");
    assert!(leading.release().await.is_ok());
    assert_eq!(h.leftover(ns.prefix()).await, 0, "keys left after the layout check");
}
