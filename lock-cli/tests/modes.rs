//! `exec --shared`, `exec --limit N`, `exec --value V`, `status` listing every
//! holder, and `leader`, driven through the real binary on the file backend.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

mod common;

use common::{distlock, run};

/// A fresh file-backend directory and a log file for one test.
fn backend(name: &str) -> (String, PathBuf) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("distlock-modes-{name}-{}-{nanos}", std::process::id()));
    (format!("file://{}", dir.display()), dir.with_extension("log"))
}

/// `distlock exec FLAGS --key KEY` of a command that logs `start`, waits
/// until `release` exists, and logs `end`.
fn holder(url: &str, flags: &[&str], key: &str, log: &Path, release: &Path) -> Child {
    let script = format!(
        "echo start $DISTLOCK_FENCING_TOKEN >> {log}; while [ ! -e {release} ]; do sleep 0.02; done; echo end >> {log}",
        log = log.display(),
        release = release.display()
    );
    let mut args = vec!["exec"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--key", key, "--", "sh", "-c", &script]);
    distlock(url, &args).spawn().unwrap_or_else(|e| panic!("cannot run distlock: {e}"))
}

fn starts(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|line| line.starts_with("start")).count()
}

fn wait_for_starts(log: &Path, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while starts(log) < count {
        assert!(Instant::now() < deadline, "{count} commands never ran at once: {:?}", std::fs::read_to_string(log));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(children: Vec<Child>) {
    for mut child in children {
        let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success(), "a holder failed: {status}");
    }
}

fn status_json(url: &str, key: &str) -> serde_json::Value {
    let out = run(url, &["status", "--key", key, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}"))
}

#[test]
fn shared_execs_run_together_and_an_exclusive_one_waits_for_them() {
    let (url, log) = backend("shared");
    let release = log.with_extension("release");
    let readers: Vec<Child> = (0..2).map(|_| holder(&url, &["--shared"], "objects/cat", &log, &release)).collect();
    wait_for_starts(&log, 2);
    let status = status_json(&url, "objects/cat");
    assert_eq!(status["mode"], "read", "{status}");
    assert_eq!(status["holders"].as_array().map(Vec::len), Some(2), "both readers listed: {status}");
    let text = String::from_utf8_lossy(&run(&url, &["status", "--key", "objects/cat"]).stdout).into_owned();
    assert!(text.contains("read-shared by 2 holders"), "{text}");
    let writer = run(&url, &["exec", "--no-wait", "--key", "objects/cat", "--", "true"]);
    assert_eq!(writer.status.code(), Some(75), "an exclusive exec got in beside readers");
    std::fs::write(&release, b"").unwrap_or_else(|e| panic!("{e}"));
    finish(readers);
    let writer = run(&url, &["exec", "--no-wait", "--key", "objects/cat", "--", "true"]);
    assert!(writer.status.success(), "the key is free after the readers");
}

#[test]
fn limit_lets_n_commands_run_at_once_and_no_more() {
    let (url, log) = backend("limit");
    let release = log.with_extension("release");
    let first: Vec<Child> = (0..2).map(|_| holder(&url, &["--limit", "2"], "migrations", &log, &release)).collect();
    wait_for_starts(&log, 2);
    let third = run(&url, &["exec", "--limit", "2", "--no-wait", "--key", "migrations", "--", "true"]);
    assert_eq!(third.status.code(), Some(75), "a third command ran in a limit-2 semaphore");
    let other_limit = run(&url, &["exec", "--limit", "3", "--no-wait", "--key", "migrations", "--", "true"]);
    assert_eq!(other_limit.status.code(), Some(75), "another limit must be refused");
    let message = String::from_utf8_lossy(&other_limit.stderr);
    assert!(message.contains("semaphore of 2"), "the refusal names the limit in use: {message}");
    let status = status_json(&url, "migrations");
    assert_eq!((status["mode"].as_str(), status["limit"].as_u64()), (Some("semaphore"), Some(2)), "{status}");
    std::fs::write(&release, b"").unwrap_or_else(|e| panic!("{e}"));
    finish(first);
    let zero = run(&url, &["exec", "--limit", "0", "--key", "migrations", "--", "true"]);
    assert_eq!(zero.status.code(), Some(2), "a limit of 0 is a usage error");
}

#[test]
fn a_value_is_published_while_held_and_leader_prints_it() {
    let (url, log) = backend("leader");
    let release = log.with_extension("release");
    let none = run(&url, &["leader", "--key", "services/api"]);
    assert_eq!(String::from_utf8_lossy(&none.stdout).trim(), "services/api: none");
    let leading = holder(&url, &["--value", "10.0.0.7:8080"], "services/api", &log, &release);
    wait_for_starts(&log, 1);
    let out = run(&url, &["leader", "--key", "services/api", "--json"]);
    let leader: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("leader --json: {e}"));
    assert_eq!((leader["leader"].as_bool(), leader["value"].as_str()), (Some(true), Some("10.0.0.7:8080")), "{leader}");
    let text = String::from_utf8_lossy(&run(&url, &["leader", "--key", "services/api"]).stdout).into_owned();
    assert!(text.starts_with("services/api: 10.0.0.7:8080 (fencing token "), "{text}");
    std::fs::write(&release, b"").unwrap_or_else(|e| panic!("{e}"));
    finish(vec![leading]);
    let none = run(&url, &["leader", "--key", "services/api"]);
    assert_eq!(String::from_utf8_lossy(&none.stdout).trim(), "services/api: none", "a released leader is gone");
}

#[test]
fn leader_watch_prints_each_new_leader() {
    let (url, log) = backend("watch");
    let release = log.with_extension("release");
    let watch = distlock(&url, &["leader", "--key", "election", "--watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let leading = holder(&url, &["--value", "node-a"], "election", &log, &release);
    wait_for_starts(&log, 1);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&release, b"").unwrap_or_else(|e| panic!("{e}"));
    finish(vec![leading]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(watch.id()).unwrap_or(0)),
        nix::sys::signal::Signal::SIGINT,
    );
    let out = watch.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "leader --watch ends cleanly on SIGINT: {}", out.status);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let values: Vec<Option<&str>> = lines.iter().map(|line| line["value"].as_str()).collect();
    assert_eq!(values, [None, Some("node-a"), None], "none, the leader, none again: {lines:?}");
}
