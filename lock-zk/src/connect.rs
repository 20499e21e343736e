//! Opening a session: the connection string split into hosts and chroot, a
//! missing chroot created (as Curator creates its namespace), and a failure
//! to connect said in a user's words.

use std::time::Duration;

use lock_core::{ConnectFailure, LockError, LockKey};
use tokio::net::TcpStream;
use tokio::time::timeout;
use zookeeper_client::{Acls, Client, CreateMode};

use crate::{BACKEND, ZkConfig, error};

/// Connects to the configured hosts and, when the connection string names a
/// chroot, creates it if missing (with the client's ACL) and moves there.
pub(crate) async fn connect(config: &ZkConfig, key: Option<&LockKey>) -> Result<Client, LockError> {
    let (hosts, chroot) = split_chroot(config.hosts_value());
    let mut connector = Client::connector()
        .with_session_timeout(config.session_timeout_value())
        .with_connection_timeout(config.connect_timeout_value())
        .with_fail_eagerly();
    if let Some((user, password)) = config.digest_value() {
        connector = connector.with_auth("digest", format!("{user}:{password}").as_bytes());
    }
    if config.plain_creates_value() {
        // The client sends `create2` only to servers it takes for 3.5 or later.
        connector = connector.with_server_version(3, 4, 14);
    }
    let limit = config.connect_timeout_value() + config.request_timeout_value();
    let client = match timeout(limit, connector.connect(hosts)).await {
        Ok(Ok(client)) => client,
        Ok(Err(failure)) => return Err(unreachable(hosts, key, failure.to_string()).await),
        Err(_) => return Err(unreachable(hosts, key, format!("no session within {limit:?}")).await),
    };
    if client.session_timeout() != config.session_timeout_value() {
        // The guard would count the right TTL, but everything planned from
        // the configured one (distlock exec's --grace) would be wrong.
        return Err(LockError::InvalidOptions {
            backend: BACKEND,
            message: format!(
                "ZooKeeper granted a {:?} session for a {:?} request: choose a session timeout within the \
                 server's minSessionTimeout..maxSessionTimeout",
                client.session_timeout(),
                config.session_timeout_value()
            ),
        });
    }
    let Some(chroot) = chroot else { return Ok(client) };
    // An existing chroot is used as it is: creating it anew would need the
    // right to create in its parent, which a client given only the chroot
    // may lack.
    match timeout(config.request_timeout_value(), client.check_stat(chroot)).await {
        Ok(Ok(Some(_))) => return client_at(client, chroot),
        Ok(_) => {}
        Err(_) => return Err(error::timed_out(key, "find the chroot", config.request_timeout_value())),
    }
    let acls = if config.digest_value().is_some() { Acls::creator_all() } else { Acls::anyone_all() };
    let options = CreateMode::Persistent.with_acls(acls);
    match timeout(config.request_timeout_value(), client.mkdir(chroot, &options)).await {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => {
            return Err(LockError::InvalidConfig {
                backend: BACKEND,
                message: format!("cannot create the chroot {chroot} on {hosts}: {failure}"),
            });
        }
        Err(_) => return Err(error::timed_out(key, "create the chroot", config.request_timeout_value())),
    }
    client_at(client, chroot)
}

fn client_at(client: Client, chroot: &str) -> Result<Client, LockError> {
    client.chroot(chroot.to_owned()).map_err(|_| LockError::InvalidConfig {
        backend: BACKEND,
        message: format!("{chroot:?} is not a valid chroot: expected an absolute path such as /app"),
    })
}

/// `host:port,host:port/chroot` as the hosts and the chroot (none for `/`).
pub(crate) fn split_chroot(connection: &str) -> (&str, Option<&str>) {
    match connection.find('/') {
        Some(at) => {
            let chroot = connection[at..].trim_end_matches('/');
            (&connection[..at], (!chroot.is_empty()).then_some(chroot))
        }
        None => (connection, None),
    }
}

/// A connection to `hosts` that gave no session: finds out whether nothing
/// listens on the first host, something that is not ZooKeeper does, or
/// nothing answers, and says so (the client library reports all three as
/// "no available hosts").
async fn unreachable(hosts: &str, key: Option<&LockKey>, cause: String) -> LockError {
    let first = hosts.split(',').next().unwrap_or(hosts);
    let failure = match timeout(PROBE_LIMIT, TcpStream::connect(first)).await {
        Ok(Ok(_)) => ConnectFailure::OtherService,
        Ok(Err(refused)) if refused.kind() == std::io::ErrorKind::ConnectionRefused => ConnectFailure::NothingListens,
        Ok(Err(_)) => ConnectFailure::Other,
        Err(_) => ConnectFailure::NoAnswer,
    };
    let failure = if failure == ConnectFailure::OtherService && hosts.contains(',') {
        // Several hosts: the first accepting connections says little about the rest.
        ConnectFailure::Other
    } else {
        failure
    };
    LockError::unavailable(BACKEND, key, failure.error("ZooKeeper", hosts, 2181, cause))
}

/// How long the diagnosis of a failed connection waits for a TCP connection.
const PROBE_LIMIT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chroot_is_split_off_the_hosts() {
        assert_eq!(split_chroot("a:1,b:2"), ("a:1,b:2", None));
        assert_eq!(split_chroot("a:1,b:2/app"), ("a:1,b:2", Some("/app")));
        assert_eq!(split_chroot("a:1/app/locks/"), ("a:1", Some("/app/locks")));
        assert_eq!(split_chroot("a:1/"), ("a:1", None));
    }
}
