//! Mapping etcd and transport errors onto the core error kinds.

use lock_core::{ConnectFailure, LockError, LockKey};
use tonic::Code;

use crate::BACKEND;

/// Classifies an etcd client error: transport trouble and gRPC codes that
/// mean "not reachable or not answering" become `Unavailable`, the rest
/// `Backend`.
pub(crate) fn map(key: Option<&LockKey>, error: etcd_client::Error) -> LockError {
    use etcd_client::Error as E;
    let transient = match &error {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => true,
        E::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::ResourceExhausted
        ),
        _ => false,
    };
    if transient { LockError::unavailable(BACKEND, key, error) } else { LockError::backend(BACKEND, key, error) }
}

/// Whether a request failed at the transport or went unanswered, as
/// opposed to etcd answering it with a refusal: the member it went to may be
/// dead.
pub(crate) fn is_transport(error: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match error {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => true,
        E::GRpcStatus(status) => {
            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
        }
        _ => false,
    }
}

/// Whether a request provably never left the client: no connection to a
/// member could be made for it (tonic reports a connection failure, never a
/// failure after the request was written, as a [`tonic::ConnectError`]).
/// Only such a write may be sent again without knowing its outcome.
pub(crate) fn never_sent(error: &etcd_client::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match error {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        etcd_client::Error::TransportError(transport) => Some(transport),
        _ => None,
    };
    while let Some(current) = cause {
        if current.is::<tonic::ConnectError>() {
            return true;
        }
        cause = current.source();
    }
    false
}

/// The first request to `endpoints` failed: transport failures say what the
/// user should check (nothing listening, another kind of server, no answer);
/// etcd's own refusals (authentication, say) are kept as they are.
pub(crate) fn unreachable(endpoints: &str, error: etcd_client::Error) -> LockError {
    let failure = match &error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => ConnectFailure::of(&error),
        // A server that is not etcd may close the connection mid-request:
        // the request is then reported cancelled.
        etcd_client::Error::GRpcStatus(status)
            if matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled) =>
        {
            ConnectFailure::of(&error)
        }
        _ => return map(None, error),
    };
    LockError::unavailable(BACKEND, None, failure.error("etcd", endpoints, 2379, error))
}

/// A request that got no answer within the request timeout.
pub(crate) fn timed_out(key: Option<&LockKey>, what: &str, limit: std::time::Duration) -> LockError {
    LockError::unavailable(BACKEND, key, format!("{what}: no answer within {limit:?}"))
}

/// A reply that lacks what etcd always sends.
pub(crate) fn malformed(key: Option<&LockKey>, what: &str) -> LockError {
    LockError::backend(BACKEND, key, format!("malformed etcd reply: {what}"))
}

/// Whether etcd refused a request because the lease it names does not exist.
pub(crate) fn is_lease_not_found(error: &LockError) -> bool {
    let LockError::Backend { source, .. } = error else { return false };
    match source.downcast_ref::<etcd_client::Error>() {
        Some(etcd_client::Error::GRpcStatus(status)) => {
            status.code() == Code::NotFound && status.message().contains("lease not found")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_a_request_never_sent() {
        // Nothing listens on port 1: the connection is refused.
        let options = etcd_client::ConnectOptions::new().with_timeout(std::time::Duration::from_secs(2));
        let connected = etcd_client::Client::connect(["http://127.0.0.1:1"], Some(options)).await;
        let mut client = connected.unwrap_or_else(|e| panic!("connecting is lazy, yet: {e}"));
        match client.status().await {
            Ok(_) => panic!("something answers on 127.0.0.1:1"),
            Err(failure) => {
                assert!(is_transport(&failure), "{failure:?}");
                assert!(never_sent(&failure), "{failure:?}");
            }
        }
    }

    #[test]
    fn an_answer_or_a_reset_is_not_a_request_never_sent() {
        let refused = etcd_client::Error::GRpcStatus(tonic::Status::permission_denied("no"));
        assert!(!is_transport(&refused) && !never_sent(&refused));
        let reset = etcd_client::Error::GRpcStatus(tonic::Status::unknown("transport error"));
        assert!(is_transport(&reset) && !never_sent(&reset));
    }
}
