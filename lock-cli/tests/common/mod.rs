//! Running the real `distlock` binary, for the CLI's test files.

use std::process::{Command, Output};

/// The binary under test.
const DISTLOCK: &str = env!("CARGO_BIN_EXE_distlock");

/// `distlock ARGS` with `DISTLOCK_URL` set to `url` and no
/// `XDG_RUNTIME_DIR`, so nothing of the user's environment leaks in.
pub fn distlock(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(DISTLOCK);
    command.env("DISTLOCK_URL", url).env_remove("XDG_RUNTIME_DIR").args(args);
    command
}

/// Runs [`distlock`] to completion.
pub fn run(url: &str, args: &[&str]) -> Output {
    distlock(url, args).output().unwrap_or_else(|e| panic!("cannot run distlock: {e}"))
}
