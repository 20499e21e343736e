//! `distlock exec --events`: one JSON line per event, in order, with the
//! fields the README documents, on the file backend (no service needed).

mod common;

use std::path::Path;

use serde_json::Value;

fn events(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("no events file {}: {e}", path.display()));
    text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))).collect()
}

fn names(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["event"].as_str().unwrap_or("?")).collect()
}

fn setup(name: &str) -> (std::path::PathBuf, String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("distlock-events-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("file://{}", dir.display());
    let file = dir.join("events.jsonl");
    (dir, url, file)
}

#[test]
fn a_run_writes_waiting_acquired_started_exited_released_in_order() {
    let (_dir, url, file) = setup("run");
    let file_arg = file.display().to_string();
    let output = common::run(&url, &["exec", "--key", "job", "--events", &file_arg, "--", "sh", "-c", "exit 3"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let events = events(&file);
    assert_eq!(names(&events), ["waiting", "acquired", "command-started", "command-exited", "released"]);
    for event in &events {
        assert_eq!(event["key"], "job");
        let ts = event["ts"].as_str().unwrap_or_default();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "not an RFC 3339 time: {ts:?}");
    }
    assert_eq!(events[0]["mode"], "exclusive");
    assert!(events[1]["token"].as_u64().is_some_and(|token| token > 0), "{}", events[1]);
    assert!(events[2]["command_pid"].as_u64().is_some(), "{}", events[2]);
    assert_eq!(events[3]["code"], 3);
    assert_eq!(events[4]["ok"], true);
}

#[test]
fn a_lost_lock_is_an_event_with_its_reason_and_the_release_is_not_ok() {
    let (dir, url, file) = setup("lost");
    let file_arg = file.display().to_string();
    // The command deletes the lock's file from under distlock: the lock is lost.
    let script = format!("rm {}; sleep 10", dir.join("job.lock").display());
    let output = common::run(&url, &["exec", "--key", "job", "--events", &file_arg, "--", "sh", "-c", &script]);
    assert_eq!(output.status.code(), Some(74), "{output:?}");
    let events = events(&file);
    assert_eq!(names(&events), ["waiting", "acquired", "command-started", "lost", "command-exited", "released"]);
    assert_eq!(events[3]["cause"], "revoked", "{}", events[3]);
    assert!(events[3]["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(events[4]["signal"], 15, "stopped by SIGTERM: {}", events[4]);
    assert_eq!(events[5]["ok"], false);
}

#[test]
fn a_held_lock_with_no_wait_is_not_acquired_and_appends_to_the_file() {
    let (dir, url, file) = setup("busy");
    let file_arg = file.display().to_string();
    let holder_ready = dir.join("holding");
    let hold = format!("touch {}; sleep 5", holder_ready.display());
    let mut holder = common::distlock(&url, &["exec", "--key", "job", "--", "sh", "-c", &hold])
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run distlock: {e}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !holder_ready.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::write(&file, "").unwrap_or_else(|e| panic!("{e}"));
    let output = common::run(&url, &["exec", "--key", "job", "--no-wait", "--events", &file_arg, "--", "true"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(output.status.code(), Some(75), "{output:?}");
    let events = events(&file);
    assert_eq!(names(&events), ["waiting", "not-acquired"]);
    assert!(events[1]["reason"].as_str().is_some_and(|r| r.starts_with("held")), "{}", events[1]);
}

#[test]
fn an_events_file_that_cannot_be_opened_is_refused_before_the_lock_is_taken() {
    let (dir, url, _) = setup("unopenable");
    let output = common::run(&url, &["exec", "--key", "job", "--events", "/nonexistent-dir/events", "--", "true"]);
    assert_eq!(output.status.code(), Some(78), "{output:?}");
    assert!(!dir.join("job.lock").exists(), "the lock was taken before the events file was refused");
}
