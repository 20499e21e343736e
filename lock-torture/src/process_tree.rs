//! A worker's processes, for the faults that hit a whole worker: in exec
//! mode a worker is a tree (`lock-torture exec-worker`, the `distlock exec`
//! it runs, that one's command). Linux lists a process's parent, not its
//! children, so the tree is read from `/proc/*/stat`.

use std::collections::HashMap;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

/// One process's parent and state, from `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(i32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (name) state ppid ...`; the name may hold spaces and parentheses.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((parent, state))
}

/// Every running process's children, by parent.
fn children_by_parent() -> HashMap<i32, Vec<i32>> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
            if let Some((parent, _)) = stat(pid) {
                children.entry(parent).or_default().push(pid);
            }
        }
    }
    children
}

/// The children of `parent`.
pub fn children(parent: Pid) -> Vec<Pid> {
    children_by_parent().remove(&parent.as_raw()).unwrap_or_default().into_iter().map(Pid::from_raw).collect()
}

/// Every process below `root` (children, their children, ...), parents
/// before their children.
pub fn descendants(root: Pid) -> Vec<Pid> {
    let children = children_by_parent();
    let mut found = Vec::new();
    let mut next = vec![root.as_raw()];
    while let Some(pid) = next.pop() {
        for &child in children.get(&pid).map_or(&[][..], Vec::as_slice) {
            found.push(Pid::from_raw(child));
            next.push(child);
        }
    }
    found
}

/// Whether `pid` still runs (a zombie no longer does).
pub fn running(pid: Pid) -> bool {
    stat(pid.as_raw()).is_some_and(|(_, state)| !matches!(state, 'Z' | 'X' | 'x'))
}

/// Stops `root` and everything below it with SIGSTOP; returns what was
/// stopped, `root` first. A stopped process starts no other, so the tree
/// is read again until it shows nothing new.
pub fn stop_tree(root: Pid) -> Vec<Pid> {
    let _ = kill(root, Signal::SIGSTOP);
    let mut stopped = vec![root];
    loop {
        let new: Vec<Pid> = descendants(root).into_iter().filter(|pid| !stopped.contains(pid)).collect();
        if new.is_empty() {
            return stopped;
        }
        for pid in new {
            let _ = kill(pid, Signal::SIGSTOP);
            stopped.push(pid);
        }
    }
}

/// Sends `signal` to each of `pids`, in order.
pub fn signal_all(pids: &[Pid], signal: Signal) {
    for &pid in pids {
        let _ = kill(pid, signal);
    }
}

/// SIGKILLs `root` and its children, not their children: in exec mode the
/// worker and its `distlock exec`, whose command must die because its
/// supervisor did. Returns the children killed (`root` is the caller's to
/// reap).
pub fn kill_with_children(root: Pid) -> Vec<Pid> {
    // Stopped first, so that it starts no child between the look and the kill.
    let _ = kill(root, Signal::SIGSTOP);
    let children = children(root);
    let _ = kill(root, Signal::SIGKILL);
    signal_all(&children, Signal::SIGKILL);
    children
}

/// Waits until none of `pids` runs, or `limit` has passed. They are not the
/// caller's children, so there is nothing to wait on: `/proc` is read every
/// 10 ms.
pub async fn wait_gone(pids: &[Pid], limit: Duration) {
    let deadline = Instant::now() + limit;
    while pids.iter().any(|&pid| running(pid)) && Instant::now() < deadline {
        sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tree_is_found_stopped_continued_and_its_top_killed() {
        // sh, with a child sleep: a worker and its `distlock exec`, say.
        let mut top = match tokio::process::Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn() {
            Ok(child) => child,
            Err(error) => panic!("cannot run sh: {error}"),
        };
        let pid = Pid::from_raw(top.id().and_then(|id| i32::try_from(id).ok()).unwrap_or_default());
        let deadline = Instant::now() + Duration::from_secs(10);
        while descendants(pid).is_empty() {
            assert!(Instant::now() < deadline, "sh started no child");
            sleep(Duration::from_millis(10)).await;
        }
        let stopped = stop_tree(pid);
        assert_eq!(stopped.len(), 2, "{stopped:?}");
        let is_stopped = |p: &Pid| stat(p.as_raw()).is_some_and(|(_, state)| state == 'T');
        while !stopped.iter().all(is_stopped) {
            assert!(Instant::now() < deadline, "{stopped:?} not all stopped");
            sleep(Duration::from_millis(10)).await;
        }
        signal_all(&stopped, Signal::SIGCONT);
        let children = kill_with_children(pid);
        assert_eq!(children, stopped[1..].to_vec());
        let _ = top.wait().await;
        wait_gone(&children, Duration::from_secs(5)).await;
        assert!(!children.iter().any(|&child| running(child)), "{children:?} still run");
    }
}
