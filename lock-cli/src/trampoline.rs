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
use tokio::process::Command;
use tracing::{debug, warn};

use crate::tied::{self, Tie};

/// The hidden subcommand: `distlock __command` as the trampoline.
pub const SUBCOMMAND: &str = "__command";

/// The trampoline program's name, beside distlock's executable.
pub const HELPER: &str = "distlock-command";

/// The process to spawn for `program` with `arguments`: the trampoline,
/// which becomes the command. When distlock's own executable cannot be
/// found, the command itself, with a warning: it then neither dies with
/// distlock nor gets the terminal.
pub fn command(program: &str, arguments: &[String], to_foreground: bool) -> Command {
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
            return command;
        }
    };
    let helper = exe.with_file_name(HELPER);
    let mut command = if helper.is_file() {
        Command::new(helper)
    } else {
        debug!(helper = %helper.display(), "no trampoline program beside distlock; distlock itself is the trampoline");
        let mut command = Command::new(exe);
        command.arg(SUBCOMMAND);
        command
    };
    let mut run = vec![OsString::from(program)];
    run.extend(arguments.iter().map(OsString::from));
    command.args(Tie { parent: getpid().as_raw(), foreground: to_foreground, command: run }.to_args());
    command
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
