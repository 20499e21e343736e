//! etcd over TLS with client certificates required: a dedicated etcd that
//! this test starts on free loopback ports (certificates made with `openssl`
//! for it) and stops by PID, reached through the facade's `etcds://` URL.
#![cfg(feature = "etcd")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private etcd process, killed when dropped.
struct PrivateEtcd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("no free port: {e}"));
    listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"))
}

fn start_etcd() -> PrivateEtcd {
    let binary = conformance_tests::services_dir().join("bin/etcd");
    assert!(binary.exists(), "no etcd at {}: run `scripts/services install etcd`", binary.display());
    let (port, peer) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("distlock-etcd-tls-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
    conformance_tests::pki::make_test_pki(&dir);
    let file = |name: &str| dir.join(name);
    let client_url = format!("https://127.0.0.1:{port}");
    let child = Command::new(binary)
        .args(["--name", "tls", "--data-dir"])
        .arg(file("data"))
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("tls=http://127.0.0.1:{peer}"), "--log-level", "error"])
        .arg("--cert-file")
        .arg(file("server.pem"))
        .arg("--key-file")
        .arg(file("server.key"))
        .arg("--trusted-ca-file")
        .arg(file("ca.pem"))
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start etcd: {e}"));
    PrivateEtcd { child, port, dir }
}

fn url(etcd: &PrivateEtcd, ca: &str, client: bool) -> String {
    let path = |name: &str| etcd.dir.join(name).display().to_string();
    let client =
        if client { format!("&cert={}&key={}", path("client.pem"), path("client.key")) } else { String::new() };
    format!("etcds://127.0.0.1:{}/tls/?ttl=5s&connect_timeout=2s&request_timeout=2s&ca={}{client}", etcd.port, path(ca))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_ca_file_and_a_client_certificate() {
    let etcd = start_etcd();
    // etcd-client connects lazily: ready once a lock can be taken.
    let deadline = Instant::now() + Duration::from_secs(30);
    let guard = loop {
        let attempt = match distlock::connect(&url(&etcd, "ca.pem", true)).await {
            Ok(locks) => locks.lock("secured/job").try_acquire().await,
            Err(error) => Err(error),
        };
        match attempt {
            Ok(Some(guard)) => break guard,
            Ok(None) => panic!("a free key was not granted over TLS"),
            Err(error) => {
                assert!(Instant::now() < deadline, "the private etcd never granted a lock over TLS: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(guard.token().get() > 0);
    assert!(guard.release().await.is_ok());

    // Without a client certificate nothing is granted. (With TLS 1.3 the
    // client learns of the refusal after its handshake: as a certificate
    // alert or as the server closing the stream.)
    let anonymous = match distlock::connect(&url(&etcd, "ca.pem", false)).await {
        Err(error) => Err(error),
        Ok(locks) => locks.lock("secured/job").try_acquire().await.map(|_| ()),
    };
    assert!(
        matches!(anonymous, Err(distlock::LockError::Unavailable { .. })),
        "a client without a certificate was not refused: {anonymous:?}"
    );
    // Trusting another CA, the client refuses the server.
    let untrusted = match distlock::connect(&url(&etcd, "other-ca.pem", true)).await {
        Err(error) => Err(error),
        Ok(locks) => locks.lock("secured/job").try_acquire().await.map(|_| ()),
    };
    let refusal = format!("{untrusted:?}");
    assert!(refusal.contains("UnknownIssuer"), "an untrusted server was not refused for its certificate: {refusal}");
}
