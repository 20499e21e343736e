//! The real `distlock` binary, driven as an operator would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{distlock, run};

/// A fresh file-backend directory for one test.
fn backend() -> (PathBuf, String) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("distlock-cli-{}-{nanos}", std::process::id()));
    let url = format!("file://{}", dir.display());
    (dir, url)
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrent_execs_take_turns_with_increasing_tokens() {
    let (dir, url) = backend();
    let log = dir.with_extension("log");
    // Each run appends "start TOKEN", sleeps, appends "end TOKEN".
    let script = format!(
        "echo start $DISTLOCK_FENCING_TOKEN $DISTLOCK_KEY >> {0}; sleep 0.3; echo end $DISTLOCK_FENCING_TOKEN >> {0}",
        log.display()
    );
    let children: Vec<_> = (0..3)
        .map(|_| {
            distlock(&url, &["exec", "--key", "turns", "--", "sh", "-c", &script])
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run distlock: {e}"))
        })
        .collect();
    for mut child in children {
        assert!(child.wait().is_ok_and(|s| s.success()));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    let mut last = 0;
    for pair in lines.chunks(2) {
        let start: Vec<&str> = pair[0].split(' ').collect();
        let end: Vec<&str> = pair[1].split(' ').collect();
        assert_eq!((start[0], start[2], end[0]), ("start", "turns", "end"), "runs overlapped:\n{text}");
        assert_eq!(start[1], end[1], "runs overlapped:\n{text}");
        let token: u64 = start[1].parse().unwrap_or(0);
        assert!(token > last, "tokens did not increase:\n{text}");
        last = token;
    }
}

#[test]
fn no_wait_on_a_held_key_exits_75() {
    let (dir, url) = backend();
    let marker = dir.with_extension("held");
    let mut holder = distlock(&url, &["exec", "--key", "busy", "--", "sh", "-c"])
        .arg(format!("touch {}; sleep 5", marker.display()))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(&marker);
    let output = run(&url, &["exec", "--key", "busy", "--no-wait", "--", "true"]);
    assert_eq!(output.status.code(), Some(75), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("is held by"));
    let waited = run(&url, &["exec", "--key", "busy", "--wait", "300ms", "--", "true"]);
    assert_eq!(waited.status.code(), Some(75), "{waited:?}");
    let status = run(&url, &["status", "--key", "busy", "--json"]);
    let json = String::from_utf8_lossy(&status.stdout);
    assert!(json.contains("\"held\":true") && json.contains("\"token\":1"), "{json}");
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn exit_codes_propagate() {
    let (_, url) = backend();
    assert_eq!(run(&url, &["exec", "--key", "codes", "--", "sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(run(&url, &["exec", "--key", "codes", "--", "sh", "-c", "kill -9 $$"]).status.code(), Some(137));
    assert_eq!(run(&url, &["exec", "--key", "codes", "--", "/nonexistent/cmd"]).status.code(), Some(127));
    assert_eq!(run(&url, &["exec", "--key", "", "--", "true"]).status.code(), Some(78));
    assert_eq!(run("nosuch://x", &["exec", "--key", "k", "--", "true"]).status.code(), Some(78));
    let status = run(&url, &["status", "--key", "codes"]);
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "codes: free");
}

#[test]
fn lock_loss_terminates_the_command() {
    let (dir, url) = backend();
    let marker = dir.with_extension("running");
    let started = Instant::now();
    let child = distlock(&url, &["exec", "--key", "doomed", "--ttl", "1s", "--grace", "2s", "--", "sh", "-c"])
        .arg(format!("touch {}; sleep 60", marker.display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(&marker);
    // Taking the lock file away is how a file lock is broken from outside.
    std::fs::remove_file(dir.join("doomed.lock")).unwrap_or_else(|e| panic!("{e}"));
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(74), "{output:?}");
    // The output closes only when every process of the command is gone.
    assert!(started.elapsed() < Duration::from_secs(30), "the command's processes were not all stopped");
    assert!(String::from_utf8_lossy(&output.stderr).contains("lost"));
}

#[test]
fn signals_are_forwarded_to_the_command() {
    let (dir, url) = backend();
    let marker = dir.with_extension("trapping");
    let script = format!("trap 'exit 42' TERM; touch {}; sleep 30 & wait", marker.display());
    let child = distlock(&url, &["exec", "--key", "signals", "--", "sh", "-c", &script])
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(&marker);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().is_ok_and(|s| s.success()));
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(42), "SIGTERM did not reach the command: {output:?}");
}

/// Against etcd: `DISTLOCK_CLI_ETCD`, by default the local etcd that
/// `scripts/services start etcd` runs.
#[test]
fn exec_runs_against_etcd() {
    let url = std::env::var("DISTLOCK_CLI_ETCD").unwrap_or_else(|_| "etcd://127.0.0.1:2379/distlock-cli-test/".into());
    let output = run(&url, &["exec", "--key", "cli/etcd", "--", "sh", "-c", "echo token=$DISTLOCK_FENCING_TOKEN"]);
    assert!(
        output.status.success(),
        "distlock exec against {url} failed; is etcd running (`scripts/services start etcd`)? {output:?}"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let token: u64 = text.trim().trim_start_matches("token=").parse().unwrap_or(0);
    assert!(token > 0, "{text}");
    let status = run(&url, &["status", "--key", "cli/etcd"]);
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "cli/etcd: free");
}

/// `--ttl` against a backend whose locks take the client's lease TTL: it
/// becomes that TTL (before, any TTL but the default 15 s was refused with
/// exit 78), and one etcd cannot apply is refused with a clear message.
#[test]
fn ttl_flag_sets_the_etcd_lease_ttl() {
    let url = std::env::var("DISTLOCK_CLI_ETCD").unwrap_or_else(|_| "etcd://127.0.0.1:2379/distlock-cli-test/".into());
    let output = run(&url, &["exec", "--key", "cli/etcd-ttl", "--ttl", "3s", "--", "true"]);
    assert!(
        output.status.success(),
        "distlock exec --ttl 3s against {url} failed; is etcd running (`scripts/services start etcd`)? {output:?}"
    );
    let fractional = run(&url, &["exec", "--key", "cli/etcd-ttl", "--ttl", "2500ms", "--", "true"]);
    assert_eq!(fractional.status.code(), Some(78), "{fractional:?}");
    assert!(String::from_utf8_lossy(&fractional.stderr).contains("whole seconds"), "{fractional:?}");
}

/// Against ZooKeeper: `DISTLOCK_CLI_ZK`, by default the local ZooKeeper that
/// `scripts/services start zk` runs.
#[test]
fn exec_runs_against_zookeeper() {
    let url = std::env::var("DISTLOCK_CLI_ZK").unwrap_or_else(|_| "zk://127.0.0.1:2181?base=/distlock-cli-test".into());
    let output = run(&url, &["exec", "--key", "cli/zk", "--", "sh", "-c", "echo token=$DISTLOCK_FENCING_TOKEN"]);
    assert!(
        output.status.success(),
        "distlock exec against {url} failed; is ZooKeeper running (`scripts/services start zk`)? {output:?}"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let token: u64 = text.trim().trim_start_matches("token=").parse().unwrap_or(0);
    assert!(token > 0, "{text}");
}

/// Against Consul: `DISTLOCK_CLI_CONSUL`, by default the local agent that
/// `scripts/services start consul` runs (with a TTL a stock Consul accepts).
#[test]
fn exec_runs_against_consul() {
    let url = std::env::var("DISTLOCK_CLI_CONSUL")
        .unwrap_or_else(|_| "consul://127.0.0.1:8500/distlock-cli-test/?ttl=10s".into());
    let output = run(&url, &["exec", "--key", "cli/consul", "--", "sh", "-c", "echo token=$DISTLOCK_FENCING_TOKEN"]);
    assert!(
        output.status.success(),
        "distlock exec against {url} failed; is Consul running (`scripts/services start consul`)? {output:?}"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let token: u64 = text.trim().trim_start_matches("token=").parse().unwrap_or(0);
    assert!(token > 0, "{text}");
    let status = run(&url, &["status", "--key", "cli/consul"]);
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "cli/consul: free");
}
