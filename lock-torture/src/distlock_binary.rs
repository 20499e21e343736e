//! The `distlock` binary exec mode runs: the workspace's own (lock-cli),
//! found next to this executable, since cargo builds both into the same
//! directory. Under `cargo run` (which sets `CARGO`), the campaign first
//! builds it with that cargo and this executable's profile, so that it is
//! neither missing on a fresh checkout nor older than its sources; run
//! directly, it must have been built already.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// The workspace's manifest.
fn workspace_manifest() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    package.parent().unwrap_or(package).join("Cargo.toml")
}

/// The `distlock` binary to run, built first when running under cargo;
/// once per process, however many campaigns ask at once.
///
/// # Errors
/// When it cannot be built, or is not there.
pub async fn locate() -> Result<PathBuf, String> {
    static LOCATED: tokio::sync::OnceCell<Result<PathBuf, String>> = tokio::sync::OnceCell::const_new();
    LOCATED.get_or_init(locate_once).await.clone()
}

async fn locate_once() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the campaign's executable: {e}"))?;
    let distlock = exe.with_file_name("distlock");
    if let Some(cargo) = std::env::var_os("CARGO") {
        build(&cargo, &exe).await?;
    }
    if !distlock.is_file() {
        return Err(format!(
            "exec mode runs {}, which is not there: build it with the campaign's profile and target \
             directory (`cargo build --release -p lock-torture -p lock-cli` for a release campaign), or start \
             the campaign with `cargo run`, which builds it",
            distlock.display()
        ));
    }
    Ok(distlock)
}

/// `cargo build --bin distlock` with the profile `exe` was built with (the
/// name of its directory: `debug` is the `dev` profile). With lock-torture
/// selected too, cargo resolves the features `cargo run -p lock-torture`
/// did, so distlock reuses the campaign's dependency builds.
async fn build(cargo: &std::ffi::OsStr, exe: &Path) -> Result<(), String> {
    let directory = exe.parent().and_then(Path::file_name).and_then(|name| name.to_str()).unwrap_or("debug");
    let profile = if directory == "debug" { "dev" } else { directory };
    let mut command = Command::new(cargo);
    // What `cargo run` set for this program only: a build script that
    // watches one of them (ring watches CARGO_MANIFEST_DIR) would see it
    // changed, and the build, and the next `cargo run`, would each rebuild
    // half the dependencies.
    for (name, _) in std::env::vars_os() {
        let set_by_cargo_run = name.to_str().is_some_and(|name| {
            name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || ["CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&name)
        });
        if set_by_cargo_run {
            command.env_remove(name);
        }
    }
    let status = command
        .args(["build", "--quiet", "--profile", profile, "--manifest-path"])
        .arg(workspace_manifest())
        .args(["-p", "lock-torture", "-p", "lock-cli", "--bin", "distlock"])
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(|e| format!("cannot run cargo to build distlock: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("building distlock (lock-cli) failed: {status}")) }
}

/// Runs `distlock exec -- true` once on `key`, so that a `distlock` that
/// cannot work against the backend stops the campaign with its own message
/// rather than showing as workers that never hold a lock.
///
/// # Errors
/// When it does not exit 0.
pub async fn probe(distlock: &Path, url: &str, key: &str, ttl: std::time::Duration) -> Result<(), String> {
    let ttl = humantime::format_duration(ttl).to_string();
    let output = Command::new(distlock)
        .args(["exec", "--backend", url, "--key", key, "--ttl", &ttl, "--", "true"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", distlock.display()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`distlock exec` does not run against {url} ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}
