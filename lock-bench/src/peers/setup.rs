//! What the peers need: installed through the project's own
//! `scripts/services install peers` (Debian packages: python3-kazoo,
//! python3-etcd3, python3-consul, the JDK and Curator, etcdctl and consul),
//! the Curator peer compiled at run time against Debian's jars, and the
//! command that starts each peer against a server.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::process::PeerSpec;

/// Debian's Curator jars, as the ZooKeeper interop tests use them.
const CURATOR_CLASSPATH: &str =
    "/usr/share/java/curator-recipes.jar:/usr/share/java/curator-framework.jar:/usr/share/java/curator-client.jar";

/// Debian's own interpreter: the python3-* packages live in its
/// dist-packages, which a pyenv or virtualenv `python3` on PATH does not see.
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// The checkout this lock-bench was built from.
pub fn repo_root() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    package.parent().unwrap_or(package).to_path_buf()
}

/// The peer programs.
fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// Runs `scripts/services install peers`, which installs only what is
/// missing (as root, through apt-get). A failure is not fatal: each peer
/// whose part is missing then reports itself not available.
pub async fn install() -> Result<(), String> {
    let script = repo_root().join("scripts/services");
    let status = Command::new("bash")
        .arg(&script)
        .args(["install", "peers"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if status.success() { Ok(()) } else { Err(format!("`{} install peers` failed: {status}", script.display())) }
}

/// A service's command-line tool: the one `scripts/services` unpacked
/// (under `$DISTLOCK_SERVICES_DIR/bin`, default `.services/bin`), else one on
/// PATH.
pub fn service_tool(name: &str) -> Option<PathBuf> {
    let services =
        std::env::var_os("DISTLOCK_SERVICES_DIR").map_or_else(|| repo_root().join(".services"), PathBuf::from);
    let unpacked = services.join("bin").join(name);
    if unpacked.is_file() {
        return Some(unpacked);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|path| path.is_file())
}

/// The installed version of a Debian package, for the report.
pub async fn debian_version(package: &str) -> String {
    let output =
        Command::new("dpkg-query").args(["-W", "-f", "${Version}", package]).stderr(Stdio::null()).output().await;
    match output {
        Ok(output) if output.status.success() && !output.stdout.is_empty() => {
            format!("{package} {}", String::from_utf8_lossy(&output.stdout))
        }
        _ => format!("{package} (not installed)"),
    }
}

/// Compiles `peers/CuratorPeer.java` with the machine's JDK against Debian's
/// Curator jars into `out`.
pub async fn compile_curator(out: &Path) -> Result<(), String> {
    let output = Command::new("javac")
        .args(["-cp", CURATOR_CLASSPATH, "-d"])
        .arg(out)
        .arg(peers_dir().join("CuratorPeer.java"))
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run javac: {e} (`scripts/services install peers` installs a JDK)"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("javac failed: {}", stderr.lines().next().unwrap_or("no message")))
}

/// The peers of one server, by its name (`zk`, `etcd`, `consul`), at
/// `address` (`host:port`), with `ttl` seconds for their sessions or leases.
/// `curator_classes` is where the Curator peer was compiled, or why it was
/// not.
pub async fn peers_of(
    server: &str,
    address: &str,
    ttl: f64,
    curator_classes: &Result<PathBuf, String>,
) -> Vec<Result<PeerSpec, (String, String)>> {
    let python = |script: &str, extra: &[&str]| {
        let mut command = vec![DEBIAN_PYTHON.to_owned(), peers_dir().join(script).display().to_string()];
        command.extend([address.to_owned(), format!("{ttl}")]);
        command.extend(extra.iter().map(|&arg| arg.to_owned()));
        command
    };
    let python_env = || {
        // Only passed on when set: Debian's protobuf (the C++ one) works as is.
        std::env::var("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")
            .map(|value| vec![("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION".to_owned(), value)])
            .unwrap_or_default()
    };
    let spec = |label: &str, package: String, command: Vec<String>| PeerSpec {
        label: label.to_owned(),
        package,
        command,
        env: python_env(),
    };
    match server {
        "zk" => {
            let curator = match curator_classes {
                Ok(classes) => Ok(PeerSpec {
                    label: "Curator InterProcessMutex".to_owned(),
                    package: debian_version("libcurator-recipes-java").await,
                    command: vec![
                        "java".to_owned(),
                        "-cp".to_owned(),
                        format!("{}:{CURATOR_CLASSPATH}", classes.display()),
                        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn".to_owned(),
                        "CuratorPeer".to_owned(),
                        address.to_owned(),
                        format!("{:.0}", ttl * 1000.0),
                    ],
                    env: Vec::new(),
                }),
                Err(reason) => Err(("Curator InterProcessMutex".to_owned(), reason.clone())),
            };
            vec![curator, Ok(spec("kazoo Lock", debian_version("python3-kazoo").await, python("kazoo_peer.py", &[])))]
        }
        "etcd" => {
            let package = debian_version("python3-etcd3").await;
            vec![
                Ok(spec("python-etcd3 Lock", package.clone(), python("etcd3_peer.py", &["as-is"]))),
                Ok(spec(
                    "python-etcd3 Lock, tenacity shim",
                    format!("{package}, with lock-bench's shim for {}", debian_version("python3-tenacity").await),
                    python("etcd3_peer.py", &["tenacity-shim"]),
                )),
            ]
        }
        "consul" => vec![Ok(spec(
            "python-consul session + KV acquire",
            debian_version("python3-consul").await,
            python("consul_peer.py", &[]),
        ))],
        _ => Vec::new(),
    }
}
