//! `distlock`: run a command while holding a distributed lock.
//!
//! ```text
//! distlock exec --key deploy -- ./deploy.sh
//! distlock status --key deploy --json
//! distlock exec --shared --key objects/cat.jpg -- ./serve.sh
//! distlock exec --limit 3 --key migrations -- ./migrate.sh
//! distlock exec --value 10.0.0.7:8080 --key services/api/leader -- ./serve.sh
//! distlock leader --key services/api/leader --watch
//! ```

// A command-line tool talks to its user on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;
mod events;
mod exec;
mod exit;
mod grace;
mod indicator;
mod leader;
mod status;
mod terminal;
mod tied;
mod trampoline;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The trampoline where its own program is missing (see `trampoline`):
    // it only prepares the command's process, so nothing else starts.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|first| first == trampoline::SUBCOMMAND) {
        return ExitCode::from(trampoline::run(args));
    }
    let cli = cli::Cli::parse();
    // Without -v only distlock's own warnings show: the libraries' log
    // lines (a client library's retry warnings, say) are diagnostics, and
    // every failure reaches the user as distlock's own message.
    let level = match cli.verbose {
        0 => "distlock=warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        // Colour codes only where a terminal shows them, not in logs.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Before the runtime starts its threads: see ForegroundTerminal::detect.
    let terminal = matches!(cli.command, cli::Command::Exec(_)).then(terminal::ForegroundTerminal::detect).flatten();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("distlock: cannot start: {error}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    // `exec::run` runs on this thread, and spawns the command from it: the
    // command's death signal is tied to this thread's life (see trampoline).
    let code = runtime.block_on(async {
        match cli.command {
            cli::Command::Exec(args) => exec::run(args, terminal).await,
            cli::Command::Status(args) => status::run(args).await,
            cli::Command::Leader(args) => leader::run(args).await,
        }
    });
    ExitCode::from(code)
}
