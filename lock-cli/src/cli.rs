//! The command line.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Run commands under a distributed lock.
#[derive(Debug, Parser)]
#[command(name = "distlock", version, about, after_help = crate::exit::HELP)]
pub struct Cli {
    /// More diagnostics on stderr (-v: info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Acquire KEY, run CMD while renewing it, release it when CMD exits,
    /// and exit with CMD's exit code. CMD sees DISTLOCK_KEY and
    /// DISTLOCK_FENCING_TOKEN in its environment. CMD runs in a process group
    /// of its own: signals sent to distlock (INT, TERM, HUP, QUIT, USR1, USR2)
    /// are forwarded to the whole group, and a lost lock stops the whole group.
    /// If distlock itself is killed, CMD is killed with it (on Linux).
    /// Run from a terminal's foreground, CMD gets the terminal (it can read
    /// it; Ctrl-C and Ctrl-Z reach it, and suspend distlock's job with it).
    #[command(after_help = crate::exit::HELP)]
    Exec(ExecArgs),
    /// Show who holds KEY: the mode, and every holder (each reader or
    /// semaphore holder) with its fencing token and for how long, or "free".
    #[command(after_help = crate::exit::HELP)]
    Status(StatusArgs),
    /// Print the leader of election KEY (the holder's published value and
    /// token), or "none"; with --watch, every change until interrupted.
    #[command(after_help = crate::exit::HELP)]
    Leader(LeaderArgs),
}

/// Where the lock lives.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The lock's key.
    #[arg(long)]
    pub key: String,
    /// Backend URL; default: a file backend in the per-user runtime directory.
    #[arg(long, env = "DISTLOCK_URL")]
    pub backend: Option<String>,
}

/// `distlock exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub target: Target,
    /// How long the lock outlives this process if it stops renewing (e.g.
    /// 15s). With etcd, ZooKeeper and Consul it is the TTL of distlock's
    /// lease or session, unless the backend URL sets one.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// Wait at most this long for the lock (default: forever).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "no_wait")]
    pub wait: Option<Duration>,
    /// Do not wait: exit 75 at once if the lock is held.
    #[arg(long)]
    pub no_wait: bool,
    /// What to do with CMD when the lock is lost.
    #[arg(long, value_enum, default_value_t = OnLost::Terminate)]
    pub on_lost: OnLost,
    /// With --on-lost terminate: how long CMD has between SIGTERM and
    /// SIGKILL. With etcd, ZooKeeper and Consul, whose locks expire, CMD is
    /// killed before the lock can be granted elsewhere: SIGTERM comes as soon
    /// as the lock is provably held for only this long (no renewal confirmed
    /// in time, e.g. cut off from the service), so the grace must fit in the
    /// TTL: at most TTL - TTL/5 - TTL/3 - 2 renewal retries (TTL/10, at most
    /// 1s each), e.g. 800ms for a 3s TTL, 5s for 15s, 26s for 60s; a longer
    /// one is refused (exit 78). Default: 10s, or the most that fits the TTL
    /// if less. With the file backend any grace fits (default 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub grace: Option<Duration>,
    /// The owner string other clients see (default: host:pid:random).
    #[arg(long)]
    pub owner: Option<String>,
    /// Hold the read side of KEY's reader/writer lock, shared with other
    /// readers (as `flock -s`); without it KEY is held alone.
    #[arg(long, conflicts_with = "limit")]
    pub shared: bool,
    /// Hold one of N places of KEY's counting semaphore (as `consul lock -n
    /// N`): at most N commands run at once. Every holder must name the same N.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Publish VALUE while holding KEY, as the leader of election KEY (its
    /// address, say): `distlock leader --key KEY` prints it.
    #[arg(long, value_name = "VALUE", conflicts_with_all = ["shared", "limit"])]
    pub value: Option<String>,
    /// Write one JSON line per event (waiting, acquired with its token,
    /// lost with its reason, command-exited, released) to FILE (appended),
    /// or to stdout with `-`, for log pipelines.
    #[arg(long, value_name = "FILE|-")]
    pub events: Option<String>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What happens to the command when the lock is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnLost {
    /// SIGTERM, then SIGKILL after --grace.
    Terminate,
    /// SIGKILL as soon as the lock is lost.
    Kill,
}

/// `distlock status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    /// One JSON object on stdout, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `distlock leader`.
#[derive(Debug, clap::Args)]
pub struct LeaderArgs {
    #[command(flatten)]
    pub target: Target,
    /// One JSON object per line on stdout, for scripts.
    #[arg(long)]
    pub json: bool,
    /// Print every change of leader or value until interrupted.
    #[arg(long)]
    pub watch: bool,
}

/// The backend URL to use: the flag or DISTLOCK_URL, else the per-user file
/// backend.
pub fn backend_url(target: &Target) -> String {
    target.backend.clone().unwrap_or_else(|| {
        let dir = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|dir| !dir.is_empty())
            .map(|dir| std::path::PathBuf::from(dir).join("distlock"))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("distlock-{}", nix::unistd::getuid())));
        format!("file://{}", dir.display())
    })
}
