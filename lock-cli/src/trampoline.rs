//! The command's trampoline: `distlock exec` does not start the command
//! itself but a process that prepares it and then becomes it (exec: same
//! pid, same process group), so that the command never runs a moment
//! unprepared (see [`crate::tied`]): tied to distlock's life, and in the
//! terminal's foreground when distlock has it.
//!
//! Why tied: a `distlock exec` killed outright (SIGKILL, the OOM killer, a
//! crash) can neither stop its command nor renew its lock: a file lock frees
//! at once, an expiring one at the end of its TTL, and the lock is granted
//! elsewhere while an orphaned command would go on writing. Only the command
//! itself is tied: processes it started itself are orphaned, not killed,
//! when it is killed this way.
//!
//! The trampoline is `distlock-command`, a small program installed beside
//! `distlock` (`cargo install` installs both): it starts in about a third of
//! the time `distlock` itself takes (0.6 against 2.3 ms here), which every
//! `distlock exec` pays. Where it is missing, `distlock __command` does the
//! same.
//!
//! The kernel sends the death signal when the *thread* that started the
//! process ends, not the whole process: distlock starts the command from
//! the thread that runs `main` (`exec::run` is awaited there, not on a
//! runtime thread), which ends only with the process.

use std::ffi::OsString;

use nix::unistd::getpid;
use tokio::process::{Child, Command};
use tracing::{debug, warn};

use crate::tied::{self, Tie};

/// The hidden subcommand: `distlock __command` as the trampoline.
pub const SUBCOMMAND: &str = "__command";

/// The trampoline program's name, beside distlock's executable.
pub const HELPER: &str = "distlock-command";

/// Starts `program` with `arguments` through the trampoline, which becomes
/// the command; `prepare` sets up the process (environment, process group).
/// The trampoline is `distlock-command` when it is beside distlock and
/// starts; when it is missing or cannot start (not executable, being
/// rewritten by a build), `distlock __command`. When distlock's own
/// executable cannot be found, the command itself, with a warning: it then
/// neither dies with distlock nor gets the terminal.
///
/// # Errors
/// When the process cannot be started.
pub fn spawn(
    program: &str,
    arguments: &[String],
    to_foreground: bool,
    prepare: impl Fn(&mut Command),
) -> std::io::Result<Child> {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            warn!(
                %error,
                "cannot find distlock's executable; the command runs without being tied to distlock's life \
                 (it survives a killed distlock) and without the terminal"
            );
            let mut command = Command::new(program);
            command.args(arguments);
            prepare(&mut command);
            return command.spawn();
        }
    };
    let mut run = vec![OsString::from(program)];
    run.extend(arguments.iter().map(OsString::from));
    let tie = Tie { parent: getpid().as_raw(), foreground: to_foreground, command: run }.to_args();
    let helper = exe.with_file_name(HELPER);
    if helper.is_file() {
        let mut command = Command::new(&helper);
        command.args(&tie);
        prepare(&mut command);
        match command.spawn() {
            Ok(child) => return Ok(child),
            Err(error) => warn!(
                %error,
                helper = %helper.display(),
                "cannot start the trampoline program; distlock itself is the trampoline"
            ),
        }
    } else {
        debug!(helper = %helper.display(), "no trampoline program beside distlock; distlock itself is the trampoline");
    }
    let mut command = Command::new(exe);
    command.arg(SUBCOMMAND).args(&tie);
    prepare(&mut command);
    command.spawn()
}

/// `distlock __command ARGS`: becomes the command `ARGS` name (see
/// [`Tie`]). Returns only when the command cannot be run, with the exit code
/// to use.
pub fn run(args: impl IntoIterator<Item = OsString>) -> u8 {
    match Tie::from_args(args) {
        Some(tie) => tied::become_command(&tie),
        None => {
            eprintln!(
                "distlock: {SUBCOMMAND} is distlock exec's own: `{SUBCOMMAND} --parent PID [--foreground] -- CMD`"
            );
            tied::USAGE
        }
    }
}
