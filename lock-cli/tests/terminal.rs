//! `distlock exec` run from a terminal: the command gets the terminal, and
//! job control (Ctrl-Z, `fg`) stops and resumes distlock and the command
//! together. The terminal is a real pseudo-terminal made by util-linux
//! `script`; keystrokes are written to it as a user would type them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const DISTLOCK: &str = env!("CARGO_BIN_EXE_distlock");

/// How long any one step may take before the test fails.
const STEP: Duration = Duration::from_secs(20);

/// A shell line running on a pseudo-terminal, as its foreground job.
struct Terminal {
    script: Child,
}

impl Terminal {
    /// Runs `line` with `/bin/sh` on a new pseudo-terminal.
    fn run(line: &str) -> Self {
        let script = Command::new("script")
            .args(["--quiet", "--return", "--command", line, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run util-linux `script` (package bsdutils) for a pseudo-terminal: {e}"));
        Self { script }
    }

    /// Types `keys` on the terminal.
    fn type_keys(&mut self, keys: &[u8]) {
        let stdin = self.script.stdin.as_mut().unwrap_or_else(|| panic!("no terminal input"));
        stdin.write_all(keys).and_then(|()| stdin.flush()).unwrap_or_else(|e| panic!("cannot type: {e}"));
    }

    /// Waits for the shell line to finish.
    fn finish(mut self) -> ExitStatus {
        let deadline = Instant::now() + STEP;
        loop {
            match self.script.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => panic!("the terminal session did not finish within {STEP:?}"),
                Err(error) => panic!("cannot wait for the terminal session: {error}"),
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // Hanging up the terminal ends everything that runs on it.
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}

/// A fresh directory for one test, and the file backend inside it.
fn workspace(name: &str) -> (PathBuf, String) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("distlock-tty-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let url = format!("file://{}", dir.join("locks").display());
    (dir, url)
}

/// The non-empty, trimmed contents of `path`, once it has some.
fn wait_for_contents(path: &Path, what: &str) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if !text.trim().is_empty() {
            return text.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "{what}: nothing in {} after {STEP:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The command's part: says it is ready, reads one line from the terminal
/// and writes what it read.
fn reading_command(ready: &Path, read: &Path) -> String {
    format!("sh -c 'echo ready > {}; read line; echo \"got $line\" > {}'", ready.display(), read.display())
}

#[test]
fn the_command_can_read_the_terminal() {
    let (dir, url) = workspace("read");
    let (ready, read) = (dir.join("ready"), dir.join("read"));
    let line = format!("{DISTLOCK} exec --backend {url} --key tty -- {}", reading_command(&ready, &read));
    let mut terminal = Terminal::run(&line);
    wait_for_contents(&ready, "the command did not start");
    terminal.type_keys(b"hello\n");
    // A command left in a background process group is stopped by SIGTTIN
    // at `read` and never gets here.
    assert_eq!(wait_for_contents(&read, "the command could not read the terminal"), "got hello");
    assert!(terminal.finish().success());
}

#[test]
fn the_command_can_prompt_on_dev_tty_with_stdin_redirected() {
    let (dir, url) = workspace("devtty");
    let (ready, read) = (dir.join("ready"), dir.join("read"));
    // As ssh and sudo do: the prompt goes to the controlling terminal, not
    // to standard input, which here is /dev/null.
    let command = format!(
        "sh -c 'echo ready > {}; read line < /dev/tty; echo \"got $line\" > {}'",
        ready.display(),
        read.display()
    );
    let line = format!("{DISTLOCK} exec --backend {url} --key tty -- {command} < /dev/null");
    let mut terminal = Terminal::run(&line);
    wait_for_contents(&ready, "the command did not start");
    terminal.type_keys(b"hello\n");
    assert_eq!(wait_for_contents(&read, "the command could not read /dev/tty"), "got hello");
    assert!(terminal.finish().success());
}

#[test]
fn ctrl_z_suspends_distlock_with_the_command_and_fg_resumes_both() {
    let (dir, url) = workspace("suspend");
    let (ready, read, job) = (dir.join("ready"), dir.join("read"), dir.join("job"));
    // `set -m`: job control, as in an interactive shell. The shell records
    // how the job came back to it, then brings it back to the foreground.
    let line = format!(
        "set -m; {DISTLOCK} exec --backend {url} --key tty -- {}; echo $? > {}; fg",
        reading_command(&ready, &read),
        job.display()
    );
    let mut terminal = Terminal::run(&line);
    wait_for_contents(&ready, "the command did not start");
    terminal.type_keys(b"\x1a");
    // 128 + SIGTSTP: the shell saw distlock's job stop, not exit.
    assert_eq!(wait_for_contents(&job, "the shell never got the terminal back after Ctrl-Z"), "148");
    assert!(!read.exists(), "the command went on while suspended");
    // `fg` continued distlock, which handed the terminal back to the command.
    terminal.type_keys(b"hello\n");
    assert_eq!(wait_for_contents(&read, "the resumed command could not read the terminal"), "got hello");
    assert!(terminal.finish().success(), "distlock did not exit 0 after `fg`");
}

/// A job stopped for longer than the lock's TTL has lost the lock: after
/// `fg`, distlock reports it and stops the command (exit 74) instead of
/// letting it go on unprotected. Needs a backend with a TTL: the local etcd
/// (`DISTLOCK_ETCD_ENDPOINTS`, default `http://127.0.0.1:2379`; start it
/// with `scripts/services start etcd`).
#[test]
fn a_job_suspended_past_the_ttl_loses_the_lock_when_resumed() {
    let endpoints = std::env::var("DISTLOCK_ETCD_ENDPOINTS").unwrap_or_else(|_| "http://127.0.0.1:2379".into());
    let endpoint = endpoints.split(',').next().unwrap_or_default();
    let address = endpoint.trim().trim_start_matches("http://");
    let url = format!("etcd://{address}/distlock-cli-tty/?ttl=2s");
    let (dir, _) = workspace("expire");
    let (ready, read, job) = (dir.join("ready"), dir.join("read"), dir.join("job"));
    let line = format!(
        "set -m; {DISTLOCK} exec --backend '{url}' --key tty-expire -- {}; echo $? > {job}; sleep 5; fg; echo $? >> {job}",
        reading_command(&ready, &read),
        job = job.display()
    );
    let mut terminal = Terminal::run(&line);
    wait_for_contents(
        &ready,
        &format!("the command did not start; is etcd running at {address} (`scripts/services start etcd`)?"),
    );
    terminal.type_keys(b"\x1a");
    assert_eq!(wait_for_contents(&job, "the shell never got the terminal back after Ctrl-Z"), "148");
    terminal.type_keys(b"hello\n");
    let status = terminal.finish();
    let codes = std::fs::read_to_string(&job).unwrap_or_default();
    assert_eq!(codes.split_whitespace().collect::<Vec<_>>(), ["148", "74"], "exit codes before and after `fg`");
    assert!(!read.exists(), "the command went on after the lock expired");
    assert_eq!(status.code(), Some(0), "the terminal session itself failed");
}
