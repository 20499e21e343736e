//! Consul over HTTPS with ACLs on: a dedicated Consul agent that this test
//! starts on free loopback ports (certificates made with `openssl` for it,
//! default-deny ACLs with a known management token) and stops by PID, reached
//! through the facade's `consuls://` URL as users do.
#![cfg(feature = "consul")]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use conformance_tests::process::{PrivateServer, free_port};
use lock_core::LockError;

const MANAGEMENT_TOKEN: &str = "6f3c2a4e-9b1d-4c7e-8a2f-0d5e1b3c7a90";

/// A private Consul agent, stopped when dropped.
struct PrivateConsul {
    server: PrivateServer,
    https_port: u16,
}

fn start_consul() -> PrivateConsul {
    let binary = conformance_tests::services_dir().join("bin/consul");
    assert!(binary.exists(), "no consul at {}: run `scripts/services install consul`", binary.display());
    let https_port = free_port();
    let dir = PrivateServer::scratch_dir("consul-tls");
    std::fs::create_dir_all(dir.join("data")).unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
    conformance_tests::pki::make_test_pki(&dir);
    let config = agent_config(&dir, https_port);
    std::fs::write(dir.join("agent.json"), config).unwrap_or_else(|e| panic!("cannot write the config: {e}"));
    let mut command = Command::new(binary);
    command.args(["agent", "-config-file"]).arg(dir.join("agent.json"));
    PrivateConsul { server: PrivateServer::spawn(command, dir), https_port }
}

/// The agent's configuration: HTTPS only, default-deny ACLs.
fn agent_config(dir: &Path, https: u16) -> String {
    let (server, lan, wan) = (free_port(), free_port(), free_port());
    let path = |name: &str| dir.join(name).display().to_string();
    format!(
        r#"{{
  "node_name": "tls", "datacenter": "dc1", "server": true, "bootstrap_expect": 1,
  "data_dir": "{data}", "bind_addr": "127.0.0.1", "client_addr": "127.0.0.1",
  "ports": {{ "http": -1, "https": {https}, "dns": -1, "grpc": -1, "server": {server}, "serf_lan": {lan}, "serf_wan": {wan} }},
  "cert_file": "{cert}", "key_file": "{key}", "ca_file": "{ca}",
  "session_ttl_min": "1s", "disable_update_check": true, "log_level": "ERR",
  "acl": {{ "enabled": true, "default_policy": "deny", "tokens": {{ "master": "{MANAGEMENT_TOKEN}" }} }}
}}"#,
        data = path("data"),
        cert = path("server.pem"),
        key = path("server.key"),
        ca = path("ca.pem"),
    )
}

fn url(consul: &PrivateConsul, ca: &str, token: Option<&str>) -> String {
    let ca = consul.server.dir().join(ca).display().to_string();
    let token = token.map(|t| format!("&token={t}")).unwrap_or_default();
    format!(
        "consuls://127.0.0.1:{}/tls-test/?ttl=2s&lock_delay=1s&request_timeout=2s&dc=dc1&ca={ca}{token}",
        consul.https_port
    )
}

/// A client with the management token, once the agent is ready (it answers
/// and can make a session).
async fn connect_when_ready(consul: &PrivateConsul) -> lock_core::Locks {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match distlock::connect(&url(consul, "ca.pem", Some(MANAGEMENT_TOKEN))).await {
            Ok(locks) => return locks,
            Err(error) => {
                assert!(Instant::now() < deadline, "the private Consul never accepted the token over HTTPS: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_ca_file_and_an_acl_token() {
    let consul = start_consul();
    let locks = connect_when_ready(&consul).await;
    let guard = locks.lock("secured/job").try_acquire().await;
    let guard = guard.ok().flatten().unwrap_or_else(|| panic!("could not take a free key over HTTPS"));
    assert!(guard.token().get() > 0);
    assert!(guard.release().await.is_ok());

    // Without the token, default-deny refuses the session: a typed error, not a hang.
    let anonymous = distlock::connect(&url(&consul, "ca.pem", None)).await;
    assert!(
        matches!(&anonymous, Err(LockError::Backend { source, .. }) if source.to_string().contains("ermission denied")),
        "an anonymous client was not refused: {:?}",
        anonymous.err()
    );
    // A CA that did not sign the server's certificate is refused.
    let untrusted = distlock::connect(&url(&consul, "other-ca.pem", Some(MANAGEMENT_TOKEN))).await;
    let error = untrusted.err().map(|e| format!("{e:?}")).unwrap_or_default();
    assert!(
        error.contains("Unavailable") && error.to_lowercase().contains("certificate"),
        "an untrusted server was accepted: {error}"
    );
    // A CA file that is not one is a configuration error.
    let bogus = distlock::connect(&url(&consul, "agent.json", Some(MANAGEMENT_TOKEN))).await;
    assert!(matches!(bogus, Err(LockError::InvalidConfig { .. })), "a bogus CA file was accepted: {:?}", bogus.err());
}

/// `curl` against the private agent with the management token: returns the
/// HTTP status and the body.
fn consul_api(consul: &PrivateConsul, method: &str, path: &str, token: &str, body: Option<&str>) -> (u16, String) {
    let ca = consul.server.dir().join("ca.pem");
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(&ca)
        .args(["-X", method, "-H", &format!("X-Consul-Token: {token}")])
        .arg(format!("https://127.0.0.1:{}{path}", consul.https_port));
    if let Some(body) = body {
        command.args(["--data-binary", body]);
    }
    let output = command.output().unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or((text.as_str(), "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// Lead 8 of the safety issue, on Consul: a token that may read the lock
/// prefix (and make sessions) but not write it can neither take a lock
/// there nor delete the holder's key; the holder keeps its lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_write_on_the_prefix_cannot_steal_a_lock() {
    let consul = start_consul();
    let holder = connect_when_ready(&consul).await;
    let rules = r#"key_prefix \"tls-test/\" { policy = \"read\" }\nsession_prefix \"\" { policy = \"write\" }\nnode_prefix \"\" { policy = \"read\" }"#;
    let policy = format!(r#"{{"Name":"read-only-locks","Rules":"{rules}"}}"#);
    let (status, body) = consul_api(&consul, "PUT", "/v1/acl/policy", MANAGEMENT_TOKEN, Some(&policy));
    assert_eq!(status, 200, "cannot create the policy: {body}");
    let token = r#"{"Policies":[{"Name":"read-only-locks"}]}"#;
    let (status, body) = consul_api(&consul, "PUT", "/v1/acl/token", MANAGEMENT_TOKEN, Some(token));
    assert_eq!(status, 200, "cannot create the token: {body}");
    let secret = body
        .split("\"SecretID\":")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .unwrap_or_else(|| panic!("no SecretID in {body}"))
        .to_owned();

    // The fresh agent may still be settling after the ACL writes (a
    // transient error under load): try again, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let guard = loop {
        match holder.lock("secured/job").try_acquire().await {
            Ok(Some(guard)) => break guard,
            outcome => {
                assert!(Instant::now() < deadline, "could not take a free key: {outcome:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let reader = distlock::connect(&url(&consul, "ca.pem", Some(&secret))).await;
    if let Ok(reader) = reader {
        let attempt = reader.lock("secured/job").wait(Duration::from_secs(2)).acquire().await;
        assert!(
            matches!(attempt, Err(LockError::Backend { .. })),
            "a token without write on the prefix was not refused: {attempt:?}"
        );
        let free = reader.lock("secured/other").try_acquire().await;
        assert!(free.is_err(), "a token without write on the prefix took a free key: {free:?}");
    }
    let key = lock_consul::native_lock_key(
        "tls-test/",
        &lock_core::LockKey::new("secured/job").unwrap_or_else(|e| panic!("{e}")),
    );
    let (status, body) = consul_api(&consul, "DELETE", &format!("/v1/kv/{key}"), &secret, None);
    assert_eq!(status, 403, "a token without write deleted the holder's key: {status} {body}");
    assert!(!guard.is_lost(), "the holder lost its lock to a token without write");
    assert!(guard.release().await.is_ok());
}
