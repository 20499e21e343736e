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
    conformance_tests::etcd::etcd_binary(name)
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

/// Lead 8 of the safety issue, on etcd: a user without a role on the lock
/// namespace can neither take a lock there, nor delete the holder's key, nor
/// queue a key of its own, nor revoke the holder's lease; the holder keeps
/// its lock throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_a_role_on_the_namespace_cannot_steal_a_lock() {
    let etcd = start_etcd();
    let setup: [&[&str]; 9] = [
        &["user", "add", "root:s3cret"],
        &["role", "add", "app-locks"],
        &["role", "grant-permission", "app-locks", "--prefix=true", "readwrite", "app/"],
        &["user", "add", "app:app-pw"],
        &["user", "grant-role", "app", "app-locks"],
        &["role", "add", "other-locks"],
        &["role", "grant-permission", "other-locks", "--prefix=true", "readwrite", "other/"],
        &["user", "add", "other:other-pw"],
        &["user", "grant-role", "other", "other-locks"],
    ];
    for args in setup {
        assert!(etcdctl(&etcd, args), "etcdctl {args:?} failed");
    }
    assert!(etcdctl(&etcd, &["auth", "enable"]), "cannot enable auth");
    let host = etcd.endpoint.trim_start_matches("http://");

    let app = distlock::connect(&format!("etcd://{host}/app/?user=app&password=app-pw&ttl=5s")).await;
    let app = app.unwrap_or_else(|e| panic!("the app user cannot connect: {e}"));
    let guard = app.lock("job").try_acquire().await.unwrap_or_else(|e| panic!("the app user's acquire: {e}"));
    let guard = guard.unwrap_or_else(|| panic!("a free key was held"));

    // Through distlock: refused, never granted or queued.
    let other = distlock::connect(&format!("etcd://{host}/app/?user=other&password=other-pw&ttl=5s")).await;
    if let Ok(other) = other {
        let attempt = other.lock("job").wait(Duration::from_secs(2)).acquire().await;
        assert!(
            matches!(attempt, Err(LockError::Backend { .. } | LockError::Unavailable { .. })),
            "a user without a role on app/ was not refused: {attempt:?}"
        );
    }
    // Directly: no delete of the holder's key, no key of its own, no revoke.
    let options = etcd_client::ConnectOptions::new().with_user("other", "other-pw");
    let mut raw = etcd_client::Client::connect([etcd.endpoint.as_str()], Some(options))
        .await
        .unwrap_or_else(|e| panic!("the other user cannot connect: {e}"));
    let holder = lock_etcd::native_lock_name("app/", &lock_core::LockKey::new("job").unwrap_or_else(|e| panic!("{e}")));
    let deleted = raw.delete(format!("{holder}/"), Some(etcd_client::DeleteOptions::new().with_prefix())).await;
    assert!(deleted.is_err(), "a user without a role deleted the holder's key: {deleted:?}");
    let queued = raw.put(format!("{holder}/ffff"), "", None).await;
    assert!(queued.is_err(), "a user without a role queued a key: {queued:?}");
    let root = etcd_client::ConnectOptions::new().with_user("root", "s3cret");
    let mut root = etcd_client::Client::connect([etcd.endpoint.as_str()], Some(root))
        .await
        .unwrap_or_else(|e| panic!("root cannot connect: {e}"));
    let lease = app_lease(&mut root, &holder).await.unwrap_or_else(|| panic!("the holder's key has no lease"));
    let revoked = raw.lease_client().revoke(lease).await;
    assert!(revoked.is_err(), "a user without a role revoked the holder's lease: {revoked:?}");
    assert!(!guard.is_lost(), "the holder lost its lock to a user without a role");
    assert!(guard.release().await.is_ok());
}

/// The lease of the holder's key (a lease id is no secret: another user
/// could guess it).
async fn app_lease(raw: &mut etcd_client::Client, holder: &str) -> Option<i64> {
    let found = raw.get(format!("{holder}/"), Some(etcd_client::GetOptions::new().with_prefix())).await.ok()?;
    found.kvs().first().map(etcd_client::KeyValue::lease)
}
