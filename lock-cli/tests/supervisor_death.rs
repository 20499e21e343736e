//! A command whose `distlock exec` dies (SIGKILL, the OOM killer, a crash)
//! dies with it: a lock that frees when its holder dies must not leave the
//! command running unguarded while someone else holds the lock.
//!
//! With the file backend the kernel frees the lock the moment the holding
//! process dies, so a second `distlock exec` is granted it at once; the
//! first one's command must be gone by then.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod common;

use common::run;

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

/// Removes a test's file or directory when dropped, pass or fail.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `distlock` in a directory of its own (under cargo's scratch directory
/// for tests, on the target's file system, so a hard link will do), beside
/// `helper` as its `distlock-command` if given: without the program built
/// beside it, distlock is its own trampoline (`distlock __command`).
fn distlock_in_a_directory_of_its_own(name: &str, helper: Option<&[u8]>) -> (PathBuf, Scratch) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("distlock-{name}-{}", std::process::id()));
    let scratch = Scratch(dir.clone());
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let copy = dir.join("distlock");
    let original = Path::new(env!("CARGO_BIN_EXE_distlock"));
    if std::fs::hard_link(original, &copy).is_err() {
        std::fs::copy(original, &copy).unwrap_or_else(|e| panic!("cannot copy distlock to {}: {e}", copy.display()));
    }
    if let Some(helper) = helper {
        let path = dir.join("distlock-command");
        std::fs::write(&path, helper).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    (copy, scratch)
}

/// Whether `distlock_path` ran `exec` through itself as the trampoline, as
/// its debug log tells; the exec must succeed either way.
fn is_its_own_trampoline(distlock_path: &Path) -> bool {
    let (dir, url) = backend();
    let _scratch = Scratch(dir);
    let output = Command::new(distlock_path)
        .env("DISTLOCK_URL", &url)
        .env_remove("XDG_RUNTIME_DIR")
        // It would override -vv.
        .env_remove("RUST_LOG")
        .args(["-vv", "exec", "--key", "which", "--", "true"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", distlock_path.display()));
    assert!(output.status.success(), "{} exec failed: {output:?}", distlock_path.display());
    String::from_utf8_lossy(&output.stderr).contains("distlock itself is the trampoline")
}

/// Kills `distlock_path exec` while its command runs, and checks that the
/// command is gone by the time the lock is granted again.
fn dies_with_its_killed_distlock(distlock_path: &Path) {
    let (dir, url) = backend();
    let pid_file = dir.with_extension("pid");
    let _scratch = (Scratch(dir), Scratch(pid_file.clone()));
    // `exec`: the command is this very process, and it ignores SIGTERM.
    let stubborn = format!("echo $$ > {}; trap '' TERM; exec sleep 600", pid_file.display());
    let mut holder = Command::new(distlock_path)
        .env("DISTLOCK_URL", &url)
        .env_remove("XDG_RUNTIME_DIR")
        .args(["exec", "--key", "orphan", "--", "sh", "-c", &stubborn])
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", distlock_path.display()));
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
        "the command of a SIGKILLed distlock exec (pid {command}, run by {}) still runs after the lock was granted \
         elsewhere",
        distlock_path.display()
    );
}

#[test]
fn a_command_dies_with_its_killed_distlock_before_the_lock_is_granted_elsewhere() {
    dies_with_its_killed_distlock(Path::new(env!("CARGO_BIN_EXE_distlock")));
}

#[test]
fn without_its_trampoline_program_distlock_is_its_own_trampoline() {
    assert!(
        !is_its_own_trampoline(Path::new(env!("CARGO_BIN_EXE_distlock"))),
        "distlock beside distlock-command did not use it"
    );
    let (alone, _scratch) = distlock_in_a_directory_of_its_own("alone", None);
    assert!(is_its_own_trampoline(&alone), "distlock alone did not fall back to being its own trampoline");
    dies_with_its_killed_distlock(&alone);
}

/// A `distlock-command` that cannot start (here: not executable) does not
/// stop the command from running: distlock is its own trampoline then.
#[test]
fn a_trampoline_program_that_cannot_start_is_passed_over() {
    let (beside_a_broken_one, _scratch) = distlock_in_a_directory_of_its_own("broken", Some(b"not a program"));
    assert!(is_its_own_trampoline(&beside_a_broken_one), "distlock did not pass over a trampoline that cannot start");
}

/// The trampoline program on its own: it runs the command only while its
/// parent is the distlock named, so a distlock that died before the command
/// was tied to it leaves the command unstarted (exit 74, as a lost lock);
/// arguments distlock never passes are a usage error; the command's own
/// exit code, or 127 when it is missing, comes back.
#[test]
fn the_trampoline_program_runs_the_command_only_under_its_distlock() {
    let helper = env!("CARGO_BIN_EXE_distlock-command");
    let marker = backend().0.with_extension("ran");
    let _scratch = Scratch(marker.clone());
    let touch = format!("touch {}", marker.display());
    let status = |parent: &str, command: &[&str]| {
        let mut args = vec!["--parent", parent, "--"];
        args.extend(command);
        Command::new(helper).args(&args).stderr(Stdio::null()).status().map(|s| s.code())
    };
    let own = std::process::id().to_string();
    assert_eq!(status("1", &["sh", "-c", &touch]).ok().flatten(), Some(74), "run under a parent not named");
    assert!(!marker.exists(), "the command ran although its parent was not the distlock named");
    assert_eq!(status(&own, &["sh", "-c", "exit 3"]).ok().flatten(), Some(3));
    assert_eq!(status(&own, &["/nonexistent/command"]).ok().flatten(), Some(127));
    let usage = Command::new(helper).args(["--", "true"]).stderr(Stdio::null()).status().map(|s| s.code());
    assert_eq!(usage.ok().flatten(), Some(2));
}
