//! The command's trampoline: `distlock exec` starts the command as
//! `distlock __command --parent PID [--foreground] -- CMD`, a new copy of
//! itself that prepares the new process and then becomes CMD (exec: same
//! pid, same process group), so that CMD never runs a moment unprepared:
//!
//! - it asks the kernel to SIGKILL it when distlock dies
//!   (`PR_SET_PDEATHSIG`, which the exec keeps). A `distlock exec` killed
//!   outright (SIGKILL, the OOM killer, a crash) can neither stop its
//!   command nor renew its lock: a file lock frees at once, an expiring one
//!   at the end of its TTL, and the lock is granted elsewhere while an
//!   orphaned command would go on writing;
//! - with `--foreground`, it makes its process group the terminal's
//!   foreground group (see [`crate::terminal`]).
//!
//! The kernel sends the death signal when the *thread* that started the
//! process ends, not the whole process: distlock starts the command from
//! the thread that runs `main` (`exec::run` is awaited there, not on a
//! runtime thread), which ends only with the process.
//!
//! Only the command itself is tied to distlock: processes it started
//! itself are orphaned, not killed, when it is killed this way.

use std::os::unix::process::CommandExt;

use nix::unistd::getppid;
use tokio::process::Command;
use tracing::warn;

use crate::cli::TrampolineArgs;
use crate::{exit, terminal};

/// The hidden subcommand.
pub const SUBCOMMAND: &str = "__command";

/// The process to spawn for `program` with `arguments`: the trampoline,
/// which becomes the command. When distlock's own executable cannot be
/// found, the command itself, with a warning: it then neither dies with
/// distlock nor gets the terminal.
pub fn command(program: &str, arguments: &[String], to_foreground: bool) -> Command {
    let mut command = match std::env::current_exe() {
        Ok(exe) => {
            let mut command = Command::new(exe);
            command.args([SUBCOMMAND, "--parent", &std::process::id().to_string()]);
            if to_foreground {
                command.arg("--foreground");
            }
            command.arg("--").arg(program);
            command
        }
        Err(error) => {
            warn!(
                %error,
                "cannot find distlock's executable; the command runs without being tied to distlock's life \
                 (it survives a killed distlock) and without the terminal"
            );
            Command::new(program)
        }
    };
    command.args(arguments);
    command
}

/// `distlock __command`: ties this process to its parent's life, takes the
/// terminal if asked, then becomes the command. Returns only when the
/// command cannot be run, with the exit code to use.
pub fn become_command(args: &TrampolineArgs) -> u8 {
    let Some((program, arguments)) = args.command.split_first() else { return exit::USAGE };
    if let Err(error) = die_with_parent() {
        eprintln!("distlock: cannot tie {program} to distlock's life, so it does not run: {error}");
        return exit::CANNOT_EXECUTE;
    }
    // A distlock that died before the request above was made sends no
    // signal: the command must not start unguarded.
    if getppid().as_raw() != args.parent {
        return exit::LOST;
    }
    if args.foreground {
        terminal::enter_foreground();
    }
    let error = std::process::Command::new(program).args(arguments).exec();
    eprintln!("distlock: cannot run {program}: {error}");
    if error.kind() == std::io::ErrorKind::NotFound { exit::NOT_FOUND } else { exit::CANNOT_EXECUTE }
}

/// Asks the kernel for SIGKILL when the parent dies.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn die_with_parent() -> nix::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
}

/// No parent-death signal on this system: the command survives a killed
/// distlock.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn die_with_parent() -> nix::Result<()> {
    Ok(())
}
