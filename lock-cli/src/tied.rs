//! What the command's own process does before it becomes the command, in
//! either trampoline (see [`crate::trampoline`]): the small
//! `distlock-command` program installed beside `distlock`, or `distlock
//! __command` where that is missing. One file for both programs: the helper
//! includes it with `#[path]`.
//!
//! - It asks the kernel to SIGKILL it when distlock dies
//!   (`PR_SET_PDEATHSIG`, which the exec keeps), then checks that distlock
//!   did not die before that request: the command must never run unguarded.
//! - With `--foreground`, it makes its process group the terminal's
//!   foreground group and unblocks SIGTTOU again (distlock blocked it before
//!   starting the trampoline, see `terminal`).
//! - Then it execs the command: same pid, same process group.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::unistd::{getpgrp, getppid, tcsetpgrp};

/// Exit code: usage error (from clap; from the trampoline, arguments
/// distlock never passes).
pub const USAGE: u8 = 2;
/// Exit code: the lock was lost while the command ran, and the command was
/// terminated; from the trampoline, distlock died before the command could
/// be tied to it, so the command did not run.
pub const LOST: u8 = 74;
/// Exit code: the command could not be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// Exit code: the command was not found.
pub const NOT_FOUND: u8 = 127;

/// What distlock passes to its trampoline: `--parent PID [--foreground]
/// -- CMD [ARGS...]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Tie {
    /// The distlock that started it: if it is gone already, CMD does not run.
    pub parent: i32,
    /// Take the terminal's foreground for CMD's process group.
    pub foreground: bool,
    /// The command and its arguments (at least the command).
    pub command: Vec<OsString>,
}

impl Tie {
    /// The arguments distlock passes, in the order it passes them.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = vec![OsString::from("--parent"), OsString::from(self.parent.to_string())];
        if self.foreground {
            args.push(OsString::from("--foreground"));
        }
        args.push(OsString::from("--"));
        args.extend(self.command.iter().cloned());
        args
    }

    /// Reads what [`to_args`](Self::to_args) wrote; `None` for anything else.
    pub fn from_args(args: impl IntoIterator<Item = OsString>) -> Option<Self> {
        let mut args = args.into_iter();
        if args.next()? != "--parent" {
            return None;
        }
        let parent = args.next()?.to_str()?.parse().ok()?;
        let mut next = args.next()?;
        let foreground = next == "--foreground";
        if foreground {
            next = args.next()?;
        }
        if next != "--" {
            return None;
        }
        let command: Vec<OsString> = args.collect();
        (!command.is_empty()).then_some(Self { parent, foreground, command })
    }
}

/// Ties this process to its parent's life, takes the terminal if asked,
/// then becomes the command. Returns only when the command cannot be run,
/// with the exit code to use.
pub fn become_command(tie: &Tie) -> u8 {
    let Some((program, arguments)) = tie.command.split_first() else { return USAGE };
    let shown = program.to_string_lossy();
    if let Err(error) = die_with_parent() {
        report(&format!("cannot tie {shown} to distlock's life, so it does not run: {error}"));
        return CANNOT_EXECUTE;
    }
    // A distlock that died before the request above was made sends no
    // signal: the command must not start unguarded.
    if getppid().as_raw() != tie.parent {
        return LOST;
    }
    if tie.foreground {
        enter_foreground();
    }
    let error = std::process::Command::new(program).args(arguments).exec();
    report(&format!("cannot run {shown}: {error}"));
    if error.kind() == std::io::ErrorKind::NotFound { NOT_FOUND } else { CANNOT_EXECUTE }
}

/// One line on standard error, as distlock's own messages read.
fn report(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "distlock: {message}");
}

/// Asks the kernel for SIGKILL when the parent dies.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn die_with_parent() -> nix::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
}

/// No parent-death signal on this system: the command survives a killed
/// distlock.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn die_with_parent() -> nix::Result<()> {
    Ok(())
}

/// Blocks (`SIG_BLOCK`) or unblocks (`SIG_UNBLOCK`) SIGTTOU in the calling
/// thread; threads and processes started afterwards inherit the mask.
/// Failing, it changes nothing: a stop on SIGTTOU is what follows.
pub fn mask_terminal_stops(how: SigmaskHow) {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTTOU);
    let _ = pthread_sigmask(how, Some(&set), None);
}

/// The controlling terminal, if the process has one.
pub fn controlling_terminal() -> Option<File> {
    File::options().read(true).write(true).open("/dev/tty").ok()
}

/// Makes this process's group the terminal's foreground group (when there
/// is a terminal; otherwise the command runs without it, as in the
/// background), and unblocks SIGTTOU again.
fn enter_foreground() {
    if let Some(tty) = controlling_terminal() {
        let _ = tcsetpgrp(tty.as_fd(), getpgrp());
    }
    // The command gets the signal mask distlock itself was started with.
    mask_terminal_stops(SigmaskHow::SIG_UNBLOCK);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arguments_read_back_as_written() {
        for foreground in [false, true] {
            let tie = Tie { parent: 42, foreground, command: vec!["sh".into(), "-c".into(), "--".into()] };
            assert_eq!(Tie::from_args(tie.to_args()), Some(tie));
        }
    }

    #[test]
    fn anything_else_is_refused() {
        let read = |args: &[&str]| Tie::from_args(args.iter().map(OsString::from));
        assert_eq!(read(&["--parent", "1", "--"]), None, "no command");
        assert_eq!(read(&["--parent", "x", "--", "true"]), None, "no pid");
        assert_eq!(read(&["--parent", "1", "true"]), None, "no --");
        assert_eq!(read(&["--foreground", "--parent", "1", "--", "true"]), None, "another order");
        assert!(read(&["--parent", "1", "--", "true"]).is_some());
    }
}
