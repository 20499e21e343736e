//! A backend URL that names the port of another service: `distlock` says
//! which endpoint answered and what to check, in its own words, without the
//! client libraries' log lines (those need `-v`).
//!
//! Uses the real services `scripts/services start` runs: etcd on 2379,
//! Consul on 8500.

use std::process::Command;

const DISTLOCK: &str = env!("CARGO_BIN_EXE_distlock");
const ETCD_PORT: &str = "127.0.0.1:2379";
const CONSUL_PORT: &str = "127.0.0.1:8500";

/// Runs `distlock exec` against `url`; returns its exit code and stderr.
fn exec_against(url: &str) -> (Option<i32>, String) {
    let output = Command::new(DISTLOCK)
        .args(["exec", "--key", "wrong-service", "--backend", url, "--", "true"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("cannot run distlock: {e}"));
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn assert_explained(url: &str, endpoint: &str, says: &str) {
    let (code, stderr) = exec_against(url);
    assert_eq!(code, Some(69), "{url}: exit code; stderr: {stderr}");
    assert!(stderr.contains(endpoint), "{url}: the message does not name {endpoint}: {stderr}");
    assert!(stderr.contains(says), "{url}: the message does not say {says:?}: {stderr}");
    assert!(
        !stderr.contains("WARN") && !stderr.lines().any(|line| !line.starts_with("distlock: ")),
        "{url}: lines other than distlock's own message without -v: {stderr}"
    );
}

#[test]
fn an_etcd_url_at_consuls_port_says_another_server_answered() {
    assert_explained(&format!("etcd://{CONSUL_PORT}"), CONSUL_PORT, "did not answer as etcd");
}

#[test]
fn a_consul_url_at_etcds_port_says_it_is_not_a_consul_agent() {
    assert_explained(&format!("consul://{ETCD_PORT}"), ETCD_PORT, "is not a Consul agent");
}

#[test]
fn a_zookeeper_url_at_etcds_port_says_another_server_answered() {
    assert_explained(&format!("zk://{ETCD_PORT}?connect_timeout=2s"), ETCD_PORT, "did not answer as ZooKeeper");
}

#[test]
fn a_url_where_nothing_listens_says_so() {
    let closed = format!("127.0.0.1:{}", free_port());
    for scheme in ["etcd", "consul", "zk"] {
        assert_explained(&format!("{scheme}://{closed}"), &closed, "nothing listens");
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("no free port: {e}"));
    listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"))
}
