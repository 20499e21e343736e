//! etcd with authentication on: a dedicated etcd that this test starts on
//! free loopback ports and stops by PID, with a user made and auth enabled
//! through the real `etcdctl`.
#![cfg(feature = "etcd")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conformance_tests::process::{PrivateServer, free_port};
use lock_core::LockError;

// The facade's URL parsing is what this test goes through, as users do.

/// A private etcd, stopped when dropped.
struct PrivateEtcd {
    _server: PrivateServer,
    endpoint: String,
}

fn tool(name: &str) -> std::path::PathBuf {
    let path = conformance_tests::services_dir().join("bin").join(name);
    assert!(path.exists(), "no {name} at {}: run `scripts/services install etcd`", path.display());
    path
}

fn start_etcd() -> PrivateEtcd {
    let (client, peer) = (free_port(), free_port());
    let dir = PrivateServer::scratch_dir("etcd-auth");
    let endpoint = format!("http://127.0.0.1:{client}");
    let mut command = Command::new(tool("etcd"));
    command
        .args(["--name", "auth", "--data-dir"])
        .arg(&dir)
        .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("auth=http://127.0.0.1:{peer}"), "--log-level", "error"]);
    let etcd = PrivateEtcd { _server: PrivateServer::spawn(command, dir), endpoint };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !etcdctl(&etcd, &["endpoint", "health"]) {
        assert!(Instant::now() < deadline, "the private etcd did not become healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    etcd
}

fn etcdctl(etcd: &PrivateEtcd, args: &[&str]) -> bool {
    Command::new(tool("etcdctl"))
        .arg(format!("--endpoints={}", etcd.endpoint))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_authenticate_and_bad_ones_are_refused() {
    let etcd = start_etcd();
    assert!(etcdctl(&etcd, &["user", "add", "root:s3cret"]), "cannot add the root user");
    assert!(etcdctl(&etcd, &["auth", "enable"]), "cannot enable auth");
    let host = etcd.endpoint.trim_start_matches("http://");

    let locks = distlock::connect(&format!("etcd://{host}/authed/?user=root&password=s3cret&ttl=5s")).await;
    let locks = locks.unwrap_or_else(|e| panic!("authenticated connect failed: {e}"));
    let guard = locks.lock("with auth").acquire().await.unwrap_or_else(|e| panic!("acquire with auth: {e}"));
    assert!(guard.release().await.is_ok());

    let wrong = distlock::connect(&format!("etcd://{host}/authed/?user=root&password=wrong")).await;
    let refused = match wrong {
        Err(error) => Err(error),
        Ok(locks) => locks.lock("with auth").try_acquire().await.map(|_| ()),
    };
    assert!(
        matches!(refused, Err(LockError::Backend { .. } | LockError::Unavailable { .. })),
        "a wrong password was not refused: {refused:?}"
    );
    let anonymous = distlock::connect(&format!("etcd://{host}/authed/")).await;
    let refused = match anonymous {
        Err(error) => Err(error),
        Ok(locks) => locks.lock("with auth").try_acquire().await.map(|_| ()),
    };
    assert!(refused.is_err(), "an anonymous client took a lock on an etcd with auth on");
}
