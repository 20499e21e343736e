//! Sharing the controlling terminal with the command.
//!
//! The command runs in a process group of its own (so that a lost lock stops
//! all of it), and only the terminal's foreground process group may read the
//! terminal: a background reader is stopped by SIGTTIN. So when distlock runs
//! in the foreground of its controlling terminal (`/dev/tty`, whatever its
//! standard input is: a command may prompt on `/dev/tty` itself, as ssh and
//! sudo do), the command's group is made the foreground group for as long as
//! it runs, as a shell does for a job:
//!
//! - the command is started through its trampoline
//!   (`distlock-command --parent PID --foreground -- CMD`, see
//!   [`crate::trampoline`]),
//!   which makes its own (new) group the foreground group and then becomes
//!   CMD, so CMD never runs a moment in the background;
//! - Ctrl-C and Ctrl-Z then reach the command's group directly;
//! - when the command stops (Ctrl-Z, or SIGTTIN), distlock takes the
//!   terminal back and stops its own group, so the shell sees the job
//!   stopped; when the job is continued and the lock is still held,
//!   distlock continues the command, with the terminal if the job was
//!   continued in the foreground (a lock that expired meanwhile is reported
//!   lost, and the command is ended instead);
//! - when the command exits, distlock takes the terminal back.
//!
//! While it shares a terminal, distlock keeps SIGTTOU blocked (see
//! [`ForegroundTerminal::detect`]): changing the foreground group, or writing
//! a message, from the background must not stop it.

use std::fs::File;
use std::os::fd::AsFd;

use nix::sys::signal::{SigmaskHow, Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::{Pid, getpgrp, tcgetpgrp, tcsetpgrp};

use crate::tied::{controlling_terminal, mask_terminal_stops};
use tracing::{debug, warn};

/// The controlling terminal, while distlock's process group is its
/// foreground group.
#[derive(Debug)]
pub struct ForegroundTerminal {
    tty: File,
    own_group: Pid,
}

impl ForegroundTerminal {
    /// The controlling terminal, if distlock has one and is in its
    /// foreground; `None` otherwise (no terminal, as under CI or a service
    /// manager, or a background job).
    ///
    /// When there is one, SIGTTOU is blocked from then on, so that moving
    /// the foreground, or writing a message, from the background does not
    /// stop distlock. Call it before the runtime starts its threads, so
    /// that they all inherit the mask; the command's trampoline unblocks it
    /// again (see [`crate::tied`]). Without a terminal nothing is
    /// blocked, and the command is started directly.
    pub fn detect() -> Option<Self> {
        let tty = controlling_terminal()?;
        let own_group = getpgrp();
        match tcgetpgrp(tty.as_fd()) {
            Ok(foreground) if foreground == own_group => {
                mask_terminal_stops(SigmaskHow::SIG_BLOCK);
                Some(Self { tty, own_group })
            }
            _ => None,
        }
    }

    /// Whether distlock's own group is the foreground group right now.
    fn is_ours(&self) -> bool {
        tcgetpgrp(self.tty.as_fd()).is_ok_and(|group| group == self.own_group)
    }

    /// Makes distlock's own group the foreground group again.
    pub fn take_back(&self) {
        if let Err(error) = tcsetpgrp(self.tty.as_fd(), self.own_group) {
            warn!(%error, "cannot take the terminal back from the command");
        }
    }

    /// Called after a SIGCHLD. When the command (process group `command`)
    /// has stopped, takes the terminal back and stops distlock's job the
    /// same way, so the shell sees the job stopped; returns `true` once the
    /// job is continued. Returns `false` at once when the command has not
    /// stopped. The caller then decides whether the command may go on
    /// ([`continue_command`](Self::continue_command)).
    pub fn stop_with_command(&self, command: Pid) -> bool {
        let stopped = waitid(Id::Pid(command), WaitPidFlag::WSTOPPED | WaitPidFlag::WNOHANG);
        let Ok(WaitStatus::Stopped(_, signal)) = stopped else { return false };
        debug!(?signal, "the command stopped; stopping distlock's job too");
        self.take_back();
        // Stops this process (and whatever shares its job, such as the rest of
        // a pipeline) until the shell continues the job. The kernel discards
        // it when no shell could continue the job (an orphaned process group).
        let stop = if signal == Signal::SIGSTOP { Signal::SIGSTOP } else { Signal::SIGTSTP };
        if let Err(error) = kill(Pid::from_raw(0), stop) {
            warn!(%error, "cannot stop distlock's job");
        }
        true
    }

    /// Continues the command (process group `command`): in the foreground
    /// (distlock was continued by `fg`) it gets the terminal back; in the
    /// background (`bg`) it runs without it.
    pub fn continue_command(&self, command: Pid) {
        if self.is_ours()
            && let Err(error) = tcsetpgrp(self.tty.as_fd(), command)
        {
            warn!(%error, "cannot hand the terminal back to the command");
        }
        if let Err(error) = kill(Pid::from_raw(-command.as_raw()), Signal::SIGCONT) {
            warn!(%error, "cannot continue the command");
        }
    }
}
