//! `distlock exec`: run a command while holding a lock.

use std::io::ErrorKind;
use std::os::unix::process::ExitStatusExt;

use distlock::{LockGuard, LockOptions, Locks};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use crate::cli::{ExecArgs, backend_url};
use crate::events::{Events, millis_since};
use crate::grace::{OnLoss, Stop};
use crate::terminal::ForegroundTerminal;
use crate::{exit, indicator, trampoline};

/// Signals forwarded to the command.
const FORWARDED: [Signal; 6] =
    [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

/// Runs `distlock exec`; returns the process exit code. With `terminal`
/// (distlock runs in the foreground of a terminal), the command gets the
/// terminal while it runs.
pub async fn run(args: ExecArgs, terminal: Option<ForegroundTerminal>) -> u8 {
    let key = &args.target.key;
    let mut events = match Events::open(args.events.as_deref(), key) {
        Ok(events) => events,
        Err(error) => {
            eprintln!("distlock: cannot open the events file {:?}: {error}", args.events.as_deref().unwrap_or(""));
            return exit::CONFIG;
        }
    };
    let url = backend_url(&args.target);
    let connected = match args.ttl {
        Some(ttl) => distlock::connect_with_ttl(&url, ttl).await,
        None => distlock::connect(&url).await,
    };
    let locks = match connected {
        Ok(locks) => locks,
        Err(error) => return fail(&error),
    };
    // The TTL in force is known only now, from the backend (it may come from
    // --ttl, the URL or the backend's default); the grace must fit it, and
    // is checked before the lock is taken, not when it is about to be lost.
    let capabilities = locks.capabilities();
    let options = lock_options(&args);
    if let Err(error) = options.validate(locks.backend_name(), &capabilities) {
        return fail(&error);
    }
    let ttl = options.effective_ttl(&capabilities);
    let stop = match Stop::plan(args.on_lost, args.grace, &capabilities, ttl) {
        Ok(stop) => stop,
        Err(too_long) => {
            eprintln!("distlock: {too_long}");
            return exit::CONFIG;
        }
    };
    debug!(?ttl, ?stop, "how the command is stopped if the lock is lost");
    events.emit("waiting", json!({ "mode": options.mode_value().to_string() }));
    let asked = std::time::Instant::now();
    let guard = match acquire(&locks, &args, options).await {
        Ok(Some(guard)) => guard,
        Ok(None) => {
            let holder = locks.inspect(key).await.ok().flatten();
            let by = holder.map(|h| format!(" by {} (token {})", h.owner, h.token)).unwrap_or_default();
            eprintln!("distlock: {key} is held{by}");
            events.emit("not-acquired", json!({ "reason": format!("held{by}") }));
            return exit::NOT_ACQUIRED;
        }
        Err(error) => {
            events.emit("not-acquired", json!({ "reason": error.to_string() }));
            return fail(&error);
        }
    };
    info!(key, token = guard.token().get(), "acquired");
    events.emit("acquired", json!({ "token": guard.token().get(), "waited_ms": millis_since(asked) }));
    let held_since = std::time::Instant::now();
    let Some((program, arguments)) = args.command.split_first() else { return exit::USAGE };
    // Spawned from this thread, which runs `main`: the command's death signal
    // comes when the thread that started it ends (see `trampoline`).
    let token = guard.token().to_string();
    let spawned = trampoline::spawn(program, arguments, terminal.is_some(), |command| {
        // Its own process group, so that a lost lock stops the whole command,
        // grandchildren included, and a forwarded signal reaches all of it once.
        command.env("DISTLOCK_KEY", key).env("DISTLOCK_FENCING_TOKEN", &token).process_group(0);
    });
    let child = match spawned {
        Ok(child) => child,
        Err(error) => {
            eprintln!("distlock: cannot run {program}: {error}");
            let released = guard.release().await;
            events.emit("released", json!({ "ok": released.is_ok(), "held_ms": millis_since(held_since) }));
            return if error.kind() == ErrorKind::NotFound { exit::NOT_FOUND } else { exit::CANNOT_EXECUTE };
        }
    };
    events.emit("command-started", json!({ "command_pid": child.id() }));
    let code = supervise(child, guard, stop, terminal.as_ref(), &mut events, held_since).await;
    if let Some(terminal) = &terminal {
        terminal.take_back();
    }
    code
}

/// The options `args` ask for.
fn lock_options(args: &ExecArgs) -> LockOptions {
    let mut options = LockOptions::new();
    if let Some(ttl) = args.ttl {
        options = options.ttl(ttl);
    }
    if let Some(owner) = &args.owner {
        options = options.owner(owner.clone());
    }
    if args.shared {
        options = options.mode(distlock::LockMode::Read);
    }
    if let Some(mode) = args.limit.and_then(distlock::LockMode::semaphore) {
        options = options.mode(mode);
    }
    if let Some(value) = &args.value {
        options = options.value(value.clone());
    }
    options
}

async fn acquire(
    locks: &Locks,
    args: &ExecArgs,
    options: LockOptions,
) -> Result<Option<LockGuard>, distlock::LockError> {
    let mut request = locks.lock(&args.target.key).options(options);
    if args.no_wait {
        return request.try_acquire().await;
    }
    if let Some(wait) = args.wait {
        request = request.wait(wait);
    }
    let acquired = tokio::select! {
        acquired = request.acquire() => acquired,
        () = indicator::show_waiting(locks, &args.target.key) => unreachable_pending(),
    };
    indicator::clear();
    acquired.map(Some)
}

fn unreachable_pending() -> Result<LockGuard, distlock::LockError> {
    Err(distlock::LockError::backend("distlock", None, "the waiting indicator stopped"))
}

/// Waits for the command, forwarding signals to it and stopping it as
/// `stop` says when the lock is lost or about to be; releases the lock when
/// it exits.
/// With a terminal, it also follows the command's stops (see
/// [`ForegroundTerminal::stop_with_command`]).
async fn supervise(
    mut child: Child,
    guard: LockGuard,
    stop: Stop,
    terminal: Option<&ForegroundTerminal>,
    events: &mut Events,
    held_since: std::time::Instant,
) -> u8 {
    let pid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    let mut child_changes = match terminal.map(|_| signal(SignalKind::child())) {
        Some(Ok(stream)) => Some(stream),
        Some(Err(error)) => {
            warn!(%error, "cannot watch the command for stops");
            None
        }
        None => None,
    };
    let mut streams = Vec::new();
    for sig in FORWARDED {
        match signal(SignalKind::from_raw(sig as i32)) {
            Ok(stream) => streams.push((sig, stream)),
            Err(error) => warn!(%error, ?sig, "cannot forward signal"),
        }
    }
    let mut lost = false;
    // Whether the command has been told to stop.
    let mut stopping = false;
    let mut kill_at: Option<Instant> = None;
    // With an expiring lock: when it will be provably held for no longer
    // than the grace, unless renewed meanwhile; SIGTERM is due then.
    let mut term_check_at = match stop {
        Stop::BeforeExpiry { grace } => Some(Instant::now() + guard.remaining().saturating_sub(grace)),
        Stop::Kill | Stop::AfterLoss { .. } => None,
    };
    // With an expiring lock: its deadline by distlock's clock, as last
    // learnt (at each check above; renewals move it on). Running, distlock
    // looks again before it passes; a loss reported after it means distlock
    // was suspended or starved meanwhile, and the lock may be held elsewhere
    // already, whatever reason the guard saw first.
    let mut proven_until = match stop {
        Stop::BeforeExpiry { .. } => Some(Instant::now() + guard.remaining()),
        Stop::Kill | Stop::AfterLoss { .. } => None,
    };
    let status = loop {
        let forwarded = async {
            let waits =
                streams.iter_mut().map(|(sig, stream)| Box::pin(async move { stream.recv().await.map(|_| *sig) }));
            futures_select_all(waits).await
        };
        tokio::select! {
            status = child.wait() => break status,
            () = at(term_check_at) => {
                term_check_at = None;
                let Stop::BeforeExpiry { grace } = stop else { continue };
                let remaining = guard.remaining();
                if !remaining.is_zero() {
                    proven_until = Some(Instant::now() + remaining);
                }
                if remaining > grace {
                    // Renewed since the check was set: the lock is fine.
                    term_check_at = Some(Instant::now() + (remaining - grace));
                } else if !remaining.is_zero() {
                    // (Zero: the guard reports the loss at once; see below.)
                    stopping = true;
                    let left = humantime::format_duration(round_to_millis(remaining));
                    eprintln!(
                        "distlock: lock {} not renewed in time: it may be lost in {left}; stopping the command \
                         (SIGTERM now, SIGKILL in {left})",
                        guard.key()
                    );
                    stop_command(pid, Signal::SIGTERM, terminal);
                    events.emit(
                        "lost",
                        json!({ "reason": format!("not renewed in time: it may be lost in {left}"), "cause": "expiring" }),
                    );
                    // When the guard gives the lock up, still before the
                    // service can grant it elsewhere.
                    kill_at = Some(Instant::now() + remaining);
                }
            }
            reason = guard.lost(), if !lost => {
                lost = true;
                term_check_at = None;
                let key = guard.key();
                if !stopping {
                    events.emit("lost", json!({ "reason": reason.to_string(), "cause": reason.name() }));
                }
                let expired = proven_until.is_some_and(|until| Instant::now() >= until);
                match stop.on_loss(&reason, expired, stopping) {
                    OnLoss::Kill => {
                        eprintln!("distlock: lock {key} lost ({reason}); killing the command");
                        kill_at = None;
                        stop_command(pid, Signal::SIGKILL, terminal);
                    }
                    OnLoss::AsPlanned => eprintln!("distlock: lock {key} lost ({reason})"),
                    OnLoss::Terminate { grace } => {
                        eprintln!("distlock: lock {key} lost ({reason}); stopping the command");
                        stop_command(pid, Signal::SIGTERM, terminal);
                        kill_at = Some(Instant::now() + grace);
                    }
                }
                stopping = true;
            }
            () = at(kill_at) => {
                kill_at = None;
                send(pid, Signal::SIGKILL);
            }
            Some(sig) = forwarded => send(pid, sig),
            Some(()) = async { child_changes.as_mut()?.recv().await }, if child_changes.is_some() => {
                if let (Some(terminal), Some(pid)) = (terminal, pid)
                    && terminal.stop_with_command(pid)
                {
                    // Continued. A lock that expired meanwhile no longer
                    // protects the command: it stays stopped, and the loss,
                    // reported next, ends it.
                    if guard.remaining().is_zero() {
                        info!("the lock expired while the job was stopped; the command is not continued");
                    } else {
                        terminal.continue_command(pid);
                    }
                }
            }
        }
    };
    match &status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => events.emit("command-exited", json!({ "code": code })),
            (None, signal) => events.emit("command-exited", json!({ "signal": signal })),
        },
        Err(error) => events.emit("command-exited", json!({ "error": error.to_string() })),
    }
    let released = guard.release().await;
    events.emit("released", json!({ "ok": released.is_ok(), "held_ms": millis_since(held_since) }));
    if stopping || matches!(released, Err(distlock::LockError::Lost { .. })) {
        if !stopping {
            eprintln!("distlock: the lock was lost before the command finished");
        }
        return exit::LOST;
    }
    if let Err(error) = released {
        warn!(%error, "release failed; the lock's TTL frees it");
    }
    match status {
        Ok(status) => status
            .code()
            .map(|code| u8::try_from(code).unwrap_or(1))
            .or_else(|| status.signal().map(|signal| 128u8.saturating_add(u8::try_from(signal).unwrap_or(0))))
            .unwrap_or(1),
        Err(error) => {
            eprintln!("distlock: lost track of the command: {error}");
            exit::UNAVAILABLE
        }
    }
}

/// Completes at `deadline`; never without one.
async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// For messages: whole milliseconds.
fn round_to_millis(duration: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// Sends `sig` to the command's process group, and continues it if it is
/// stopped, since a stopped command takes the signal only once continued.
fn stop_command(pid: Option<Pid>, sig: Signal, terminal: Option<&ForegroundTerminal>) {
    send(pid, sig);
    match (terminal, pid) {
        (Some(terminal), Some(pid)) => terminal.continue_command(pid),
        _ => send(pid, Signal::SIGCONT),
    }
}

/// The first of several futures to complete.
async fn futures_select_all<F: std::future::Future + Unpin>(futures: impl IntoIterator<Item = F>) -> F::Output {
    let mut futures: Vec<F> = futures.into_iter().collect();
    if futures.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(move |cx| {
        for future in &mut futures {
            if let std::task::Poll::Ready(output) = std::pin::Pin::new(future).poll(cx) {
                return std::task::Poll::Ready(output);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Signals the command's whole process group.
fn send(pid: Option<Pid>, sig: Signal) {
    if let Some(pid) = pid
        && let Err(error) = kill(Pid::from_raw(-pid.as_raw()), sig)
    {
        warn!(%error, ?sig, "cannot signal the command");
    }
}

fn fail(error: &distlock::LockError) -> u8 {
    indicator::clear();
    eprintln!("distlock: {error}");
    exit::for_error(error)
}
