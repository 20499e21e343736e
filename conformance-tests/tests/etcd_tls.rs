//! etcd over TLS with client certificates required: a dedicated etcd that
//! this test starts on free loopback ports (certificates made with `openssl`
//! for it) and stops by PID, reached through the facade's `etcds://` URL.
#![cfg(feature = "etcd")]

use std::process::Command;
use std::time::{Duration, Instant};

use conformance_tests::process::{PrivateServer, free_port};

/// A private etcd, stopped when dropped.
struct PrivateEtcd {
    server: PrivateServer,
    port: u16,
}

fn start_etcd() -> PrivateEtcd {
    let binary = conformance_tests::etcd::etcd_binary("etcd");
    let (port, peer) = (free_port(), free_port());
    let dir = PrivateServer::scratch_dir("etcd-tls");
    conformance_tests::pki::make_test_pki(&dir);
    let file = |name: &str| dir.join(name);
    let client_url = format!("https://127.0.0.1:{port}");
    let mut command = Command::new(binary);
    command
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
        .arg("--client-cert-auth");
    PrivateEtcd { server: PrivateServer::spawn(command, dir), port }
}

fn url(etcd: &PrivateEtcd, ca: &str, client: bool) -> String {
    let path = |name: &str| etcd.server.dir().join(name).display().to_string();
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
