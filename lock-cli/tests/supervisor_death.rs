//! A command whose `distlock exec` dies (SIGKILL, the OOM killer, a crash)
//! dies with it: a lock that frees when its holder dies must not leave the
//! command running unguarded while someone else holds the lock.
//!
//! With the file backend the kernel frees the lock the moment the holding
//! process dies, so a second `distlock exec` is granted it at once; the
//! first one's command must be gone by then.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod common;

use common::{distlock, run};

/// How long any one step may take before the test fails.
const STEP: Duration = Duration::from_secs(20);

/// A fresh file-backend directory for one test.
fn backend() -> (PathBuf, String) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("distlock-cli-death-{}-{nanos}", std::process::id()));
    let url = format!("file://{}", dir.display());
    (dir, url)
}

/// The pid written to `path`, once it is there.
fn wait_for_pid(path: &Path) -> Pid {
    let deadline = Instant::now() + STEP;
    loop {
        let pid = std::fs::read_to_string(path).ok().and_then(|text| text.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|&pid| pid > 1) {
            return Pid::from_raw(pid);
        }
        assert!(Instant::now() < deadline, "{} was not written within {STEP:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` still runs (a zombie has stopped running: it only waits
/// for its parent to collect it).
fn running(pid: Pid) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    state.is_some_and(|state| state != "Z" && state != "X")
}

/// Kills the orphan a failed run leaves behind.
struct Orphan(Option<Pid>);

impl Drop for Orphan {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

#[test]
fn a_command_dies_with_its_killed_distlock_before_the_lock_is_granted_elsewhere() {
    let (dir, url) = backend();
    let pid_file = dir.with_extension("pid");
    // `exec`: the command is this very process, and it ignores SIGTERM.
    let stubborn = format!("echo $$ > {}; trap '' TERM; exec sleep 600", pid_file.display());
    let mut holder = distlock(&url, &["exec", "--key", "orphan", "--", "sh", "-c", &stubborn])
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run distlock: {e}"));
    let command = wait_for_pid(&pid_file);
    let mut orphan = Orphan(Some(command));
    let _ = holder.kill();
    let _ = holder.wait();

    // Granted as soon as the kernel freed the dead holder's lock.
    let next = run(&url, &["exec", "--key", "orphan", "--wait", "10s", "--", "true"]);
    assert!(next.status.success(), "the lock was not granted after its holder died: {next:?}");
    let alive = running(command);
    if !alive {
        orphan.0 = None;
    }
    assert!(
        !alive,
        "the command of a SIGKILLed distlock exec (pid {command}) still runs after the lock was granted elsewhere"
    );
    let _ = std::fs::remove_file(pid_file);
}
