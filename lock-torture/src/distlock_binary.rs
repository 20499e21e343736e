//! The workspace's own `distlock` binary (lock-cli), which lock-torture's
//! exec mode and lock-bench's per-command comparison run: found next to this
//! executable, since cargo builds both into the same directory. Under `cargo
//! run` (which sets `CARGO`), it is first built with that cargo and this
//! executable's profile, so that it is neither missing on a fresh checkout
//! nor older than its sources; run directly, it must have been built
//! already.
//!
//! One file for both programs: lock-bench includes it with `#[path]`, and
//! `CARGO_PKG_NAME` names whichever package compiled it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// The package this file is compiled into: `lock-torture` or `lock-bench`.
const PACKAGE: &str = env!("CARGO_PKG_NAME");

/// The workspace's manifest.
fn workspace_manifest() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    package.parent().unwrap_or(package).join("Cargo.toml")
}

/// The `distlock` binary to run, built first when running under cargo;
/// once per process, however many callers ask at once.
///
/// # Errors
/// When it cannot be built, or is not there.
pub async fn locate() -> Result<PathBuf, String> {
    static LOCATED: tokio::sync::OnceCell<Result<PathBuf, String>> = tokio::sync::OnceCell::const_new();
    LOCATED.get_or_init(locate_once).await.clone()
}

async fn locate_once() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find {PACKAGE}'s executable: {e}"))?;
    let distlock = exe.with_file_name("distlock");
    if let Some(cargo) = std::env::var_os("CARGO") {
        build(&cargo, &exe).await?;
    }
    if !distlock.is_file() {
        return Err(format!(
            "{PACKAGE} runs {}, which is not there: build it with {PACKAGE}'s profile and target directory \
             (`cargo build --release -p {PACKAGE} -p lock-cli` for a release run), or start {PACKAGE} with \
             `cargo run`, which builds it",
            distlock.display()
        ));
    }
    Ok(distlock)
}

/// `cargo build --bin distlock --bin distlock-command` (its trampoline,
/// which it uses when it finds it beside itself) with the profile `exe` was built with (the
/// name of its directory: `debug` is the `dev` profile). With this package
/// selected too, cargo resolves the features `cargo run -p PACKAGE`
/// did, so distlock reuses its dependency builds.
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
        .args(["-p", PACKAGE, "-p", "lock-cli", "--bin", "distlock", "--bin", "distlock-command"])
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(|e| format!("cannot run cargo to build distlock: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("building distlock (lock-cli) failed: {status}")) }
}
