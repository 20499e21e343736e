//! A `distlock exec` cut off from etcd stops its command, SIGKILL included,
//! before etcd can grant the lock to anyone else, even when the command
//! ignores SIGTERM; a `--grace` that cannot be honoured for the TTL is
//! refused up front.
//!
//! Against the local etcd that `scripts/services start etcd` runs, or the
//! first of `DISTLOCK_ETCD_ENDPOINTS`. The cut is a
//! [`StallProxy`](conformance_tests::proxy::StallProxy) between the holder
//! and etcd that stops forwarding: a partition, not a refused connection.

use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conformance_tests::proxy::StallProxy;

mod common;

use common::{distlock, run};

/// How long any one step may take before the test fails.
const STEP: Duration = Duration::from_secs(25);

/// The etcd the tests use, as an address a proxy can forward to.
fn etcd_address() -> SocketAddr {
    let endpoints = std::env::var("DISTLOCK_ETCD_ENDPOINTS").unwrap_or_else(|_| "http://127.0.0.1:2379".into());
    let first = endpoints.split(',').next().unwrap_or_default();
    let host_port = first.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/');
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .unwrap_or_else(|| panic!("cannot resolve the etcd endpoint {first:?} (DISTLOCK_ETCD_ENDPOINTS)"))
}

fn etcd_url(address: SocketAddr) -> String {
    format!("etcd://{address}/distlock-cli-test/")
}

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A name no earlier run used, for keys and scratch files.
fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), now_nanos())
}

/// Waits until `path` holds at least one line.
fn wait_for_line(path: &Path) {
    let deadline = Instant::now() + STEP;
    while std::fs::read_to_string(path).map_or(true, |text| !text.contains('\n')) {
        assert!(Instant::now() < deadline, "{} was not written within {STEP:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last timestamp (`date +%s%N`) in `path`.
fn last_timestamp(path: &Path) -> u128 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let last = text.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or_default();
    last.trim().parse().unwrap_or_else(|e| panic!("{} ends in {last:?}, not a timestamp: {e}", path.display()))
}

/// A running `distlock exec` whose command writes its process group id to
/// `pgid`: dropping it kills both, so a failed test leaves no command behind
/// (the command has a process group of its own, which killing distlock
/// does not reach).
struct Exec {
    distlock: Child,
    pgid: PathBuf,
}

impl Exec {
    /// Waits (at most [`STEP`]) for distlock to exit; its status and stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + STEP;
        let status = loop {
            match self.distlock.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => panic!("distlock exec did not exit within {STEP:?}"),
                Err(error) => panic!("cannot wait for distlock: {error}"),
            }
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.distlock.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        (status, stderr)
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        let pgid = std::fs::read_to_string(&self.pgid).ok().and_then(|text| text.trim().parse::<i32>().ok());
        if let Some(pgid) = pgid.filter(|&pgid| pgid > 1) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pgid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.distlock.kill();
        let _ = self.distlock.wait();
    }
}

/// What happened when a holder was cut off from etcd while a second client
/// waited for its lock.
struct CutOff {
    /// The holder's exit status and stderr.
    holder: (ExitStatus, String),
    /// When the holder's command last wrote (ns since the epoch).
    last_write: u128,
    /// When the waiter's command started, holding the lock.
    granted: u128,
    /// When the proxy stopped forwarding.
    cut: u128,
}

/// Runs `distlock exec --ttl 3s ARGS` through a proxy to etcd, with a
/// command that ignores SIGTERM and writes a timestamp every 50 ms; once it
/// runs, a second `distlock exec` (straight to etcd) waits for the same key,
/// and the proxy stops forwarding.
fn cut_off_holder(name: &str, args: &[&str]) -> CutOff {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a runtime for the proxy: {e}"));
    let upstream = etcd_address();
    let proxy = runtime
        .block_on(StallProxy::start(upstream))
        .unwrap_or_else(|e| panic!("cannot start a proxy to etcd at {upstream}: {e}"));
    let key = unique(&format!("cli/{name}"));
    let scratch = std::env::temp_dir().join(unique("distlock-cli-lost"));
    let (writes, pgid, granted) =
        (scratch.with_extension("writes"), scratch.with_extension("pgid"), scratch.with_extension("granted"));
    // `trap '' TERM` is inherited by `date` and `sleep`: the whole group
    // ignores SIGTERM, as a deploy script cleaning up on TERM would for a while.
    let stubborn = format!(
        "echo $$ > {pgid}; trap '' TERM; while :; do date +%s%N >> {writes}; sleep 0.05; done",
        pgid = pgid.display(),
        writes = writes.display()
    );
    let mut command = distlock(&etcd_url(proxy.address()), &["exec", "--key", &key, "--ttl", "3s"]);
    command.args(args).args(["--", "sh", "-c", &stubborn]).stderr(Stdio::piped());
    let holder =
        Exec { distlock: command.spawn().unwrap_or_else(|e| panic!("cannot run distlock: {e}")), pgid: pgid.clone() };
    wait_for_line(&writes);

    let waiter_pgid = scratch.with_extension("waiter-pgid");
    let record_grant = format!("date +%s%N > {}; echo $$ > {}", granted.display(), waiter_pgid.display());
    let scratch_files = [writes.clone(), pgid.clone(), granted.clone(), waiter_pgid.clone()];
    let waiter = Exec {
        distlock: distlock(
            &etcd_url(upstream),
            &["exec", "--key", &key, "--ttl", "3s", "--", "sh", "-c", &record_grant],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run distlock: {e}")),
        pgid: waiter_pgid,
    };
    let cut = now_nanos();
    proxy.stall();

    let (waited, waiter_stderr) = waiter.finish();
    assert!(
        waited.success(),
        "the waiter was not granted the lock after the holder was cut off: {waited:?}\n{waiter_stderr}"
    );
    let holder = holder.finish();
    let result = CutOff { holder, last_write: last_timestamp(&writes), granted: last_timestamp(&granted), cut };
    for file in scratch_files {
        let _ = std::fs::remove_file(file);
    }
    drop(proxy);
    result
}

fn millis_after(later: u128, earlier: u128) -> String {
    let nanos = i128::try_from(later).unwrap_or(i128::MAX) - i128::try_from(earlier).unwrap_or(0);
    format!("{:.0} ms", nanos as f64 / 1e6)
}

/// The user's report: a command that traps TERM kept running 8.8 s after
/// another `distlock exec` had been granted the lock, because the default
/// grace (10 s) was longer than the guard's safety margin.
#[test]
fn a_cut_off_command_that_ignores_term_is_killed_before_the_lock_is_granted_elsewhere() {
    let run = cut_off_holder("cut-off-term", &[]);
    let stderr = assert_stopped_before_regrant(&run);
    assert!(stderr.contains("not renewed in time") && stderr.contains("SIGTERM now"), "{stderr}");
}

/// The cut-off holder's command made its last write before the waiter was
/// granted the lock, and its `distlock exec` exited 74; returns its stderr.
fn assert_stopped_before_regrant(run: &CutOff) -> &str {
    let (status, stderr) = &run.holder;
    assert!(
        run.last_write < run.granted,
        "the cut-off holder's command still ran {} after the waiter was granted the lock \
         (cut at 0, waiter granted at {}, last write at {}); holder: {status:?}\n{stderr}",
        millis_after(run.last_write, run.granted),
        millis_after(run.granted, run.cut),
        millis_after(run.last_write, run.cut),
    );
    assert_eq!(status.code(), Some(74), "{stderr}");
    stderr
}

/// `--on-lost kill` kills the command when the lock can no longer be proven
/// held, before the service can grant it elsewhere.
#[test]
fn on_lost_kill_kills_a_cut_off_command_before_the_lock_is_granted_elsewhere() {
    let run = cut_off_holder("cut-off-kill", &["--on-lost", "kill"]);
    assert_stopped_before_regrant(&run);
}

/// A grace longer than the TTL leaves room for is refused before the lock
/// is taken, with the largest one that fits; one that fits runs.
#[test]
fn a_grace_that_does_not_fit_the_ttl_is_refused_with_the_largest_that_does() {
    let url = etcd_url(etcd_address());
    let key = unique("cli/grace");
    let refused = run(&url, &["exec", "--key", &key, "--ttl", "3s", "--grace", "5s", "--", "true"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(78), "{refused:?}");
    for part in ["--grace 5s", "TTL of 3s", "at most 800ms"] {
        assert!(stderr.contains(part), "the message does not say {part:?}: {stderr}");
    }
    let fits = run(&url, &["exec", "--key", &key, "--ttl", "3s", "--grace", "800ms", "--", "true"]);
    assert!(fits.status.success(), "is etcd running (`scripts/services start etcd`)? {fits:?}");
    // --on-lost kill has no grace to honour.
    let killed = run(&url, &["exec", "--key", &key, "--ttl", "3s", "--on-lost", "kill", "--grace", "5s", "--", "true"]);
    assert!(killed.status.success(), "{killed:?}");
}

/// The largest grace still leaves a lock that etcd keeps renewing alone:
/// the command is not stopped over several renewals (etcd's shortest TTL,
/// where the room left to renew is the smallest).
#[test]
fn the_largest_grace_leaves_a_renewed_lock_alone() {
    let url = etcd_url(etcd_address());
    let key = unique("cli/grace-renewed");
    let output = run(&url, &["exec", "--key", &key, "--ttl", "2s", "--grace", "500ms", "--", "sleep", "5"]);
    assert!(output.status.success(), "is etcd running (`scripts/services start etcd`)? {output:?}");
}

/// The file backend's locks never expire while their holder lives: any
/// grace can be honoured there.
#[test]
fn any_grace_fits_the_file_backend() {
    let dir = std::env::temp_dir().join(unique("distlock-cli-grace"));
    let url = format!("file://{}", dir.display());
    let output = run(&url, &["exec", "--key", "k", "--ttl", "1s", "--grace", "1h", "--", "true"]);
    assert!(output.status.success(), "{output:?}");
}
