//! Processes the backend-specific tests run themselves: private servers
//! (started on free loopback ports, stopped by PID) and native lock clients
//! whose output they read line by line.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

/// A TCP port on 127.0.0.1 that nothing listens on right now.
///
/// # Panics
/// When no port can be bound.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("no free port: {e}"));
    listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"))
}

/// A server process of a test's own and its scratch directory: the process
/// is killed (by PID) and the directory removed when this is dropped.
#[derive(Debug)]
pub struct PrivateServer {
    child: Child,
    dir: PathBuf,
}

impl PrivateServer {
    /// A new, empty scratch directory for a server named `name`.
    ///
    /// # Panics
    /// When the directory cannot be made.
    pub fn scratch_dir(name: &str) -> PathBuf {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("distlock-{name}-{}-{}", std::process::id(), &unique[..8]));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
        dir
    }

    /// Starts `command` with its output discarded; `dir` goes with it.
    ///
    /// # Panics
    /// When the command cannot be started.
    pub fn spawn(mut command: Command, dir: PathBuf) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Self { child, dir }
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pauses the server (SIGSTOP): it keeps its connections and answers
    /// nothing, as a server stuck in a long GC or a frozen VM would, until
    /// [`resume`](Self::resume).
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a paused server (SIGCONT).
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args([format!("-{name}").as_str(), "--", pid.as_str()]).status();
        assert!(matches!(sent, Ok(status) if status.success()), "cannot send SIG{name} to server {pid}: {sent:?}");
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running command whose stdout the test reads line by line (`etcdctl
/// lock`, `consul lock`, a Curator program); killed when dropped.
#[derive(Debug)]
pub struct NativeCommand {
    /// The process, to wait for its exit.
    pub child: tokio::process::Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NativeCommand {
    /// Starts `command` with its stdout piped to the test.
    ///
    /// # Panics
    /// When the command cannot be started.
    pub fn spawn(mut command: tokio::process::Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("{command:?} has no stdout"));
        Self { child, lines: BufReader::new(stdout).lines() }
    }

    /// The next line it printed, trimmed; `None` once its output ends.
    pub async fn next_line(&mut self) -> Option<String> {
        self.lines.next_line().await.ok().flatten().map(|line| line.trim().to_owned())
    }
}
