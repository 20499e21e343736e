//! Holds one lock until killed, for the suite's killed-holder case:
//! `conformance-holder BACKEND KEY TTL_SECS NAMESPACE` (for `file`, the
//! directory in place of the namespace) prints `held <token>`
//! once it holds KEY, then waits forever.

// Printing is this binary's interface with the test that runs it.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::Duration;

use lock_core::{LockError, Locks};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backend, key, ttl, namespace] = args.as_slice() else {
        eprintln!("usage: conformance-holder BACKEND KEY TTL_SECS NAMESPACE");
        return ExitCode::from(2);
    };
    let Ok(ttl) = ttl.parse::<u64>().map(Duration::from_secs) else {
        eprintln!("TTL_SECS must be a whole number");
        return ExitCode::from(2);
    };
    match hold(backend, key, ttl, namespace).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("conformance-holder: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn hold(backend: &str, key: &str, ttl: Duration, namespace: &str) -> Result<(), LockError> {
    let locks = connect(backend, ttl, namespace).await?;
    let guard = locks.lock(key).ttl(ttl).acquire().await?;
    println!("held {}", guard.token());
    let reason = guard.lost().await;
    Err(LockError::Lost { backend: "holder", key: guard.key().clone(), reason })
}

async fn connect(backend: &str, ttl: Duration, namespace: &str) -> Result<Locks, LockError> {
    let _ = (ttl, namespace);
    match backend {
        "file" => Ok(Locks::new(lock_file::FileLock::new(namespace)?)),
        #[cfg(feature = "etcd")]
        "etcd" => {
            let config = lock_etcd::EtcdConfig::from_env().namespace(namespace).lease_ttl(ttl);
            Ok(Locks::new(lock_etcd::EtcdLock::connect(config).await?))
        }
        #[cfg(feature = "zk")]
        "zk" => {
            let config = lock_zk::ZkConfig::from_env().base_path(namespace).session_timeout(ttl);
            Ok(Locks::new(lock_zk::ZkLock::connect(config).await?))
        }
        #[cfg(feature = "consul")]
        "consul" => {
            let config = lock_consul::ConsulConfig::from_env()
                .prefix(namespace)
                .session_ttl(ttl)
                .lock_delay(conformance_tests::consul::LOCK_DELAY);
            Ok(Locks::new(lock_consul::ConsulLock::connect(config).await?))
        }
        other => {
            Err(LockError::InvalidConfig { backend: "holder", message: format!("backend {other} is not built in") })
        }
    }
}
