//! The connection, and the one lease per client that every lock of the
//! client is attached to, kept alive by one keep-alive stream. Which members
//! the connection's balancer uses is kept in
//! [`endpoints`](crate::endpoints).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper};
use lock_core::{ClientSession, ConnectFailure, LockError, LockKey, LossSignal, LostReason};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tracing::{Instrument, debug, info_span, warn};

use crate::endpoints::{EndpointHealth, Replay};
use crate::{EtcdConfig, error};

/// Connects with the configured endpoints, credentials, TLS and timeouts;
/// with several endpoints, the returned health keeps the client's balancer
/// on the members that answer.
pub(crate) async fn connect(config: &EtcdConfig) -> Result<(Client, EndpointHealth), LockError> {
    config.validate()?;
    let tls = config.tls_value().map(tls_options).transpose()?;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout_value())
        .with_timeout(config.request_timeout_value())
        .with_keep_alive(Duration::from_secs(10), config.request_timeout_value())
        .with_keep_alive_while_idle(true);
    // A probe asks one member for its status: no credentials needed.
    let mut probe = ConnectOptions::new();
    if let Some((name, password)) = config.user_value() {
        options = options.with_user(name.clone(), password.clone());
    }
    if let Some(tls) = &tls {
        options = options.with_tls(tls.clone());
        probe = probe.with_tls(tls.clone());
    }
    let limit = config.connect_timeout_value() + config.request_timeout_value();
    let connecting = async {
        let client = Client::connect(config.endpoints(), Some(options)).await?;
        let health =
            EndpointHealth::new(&client, config.endpoints(), tls.is_some(), probe, config.connect_timeout_value());
        // The connection is made lazily: one small request proves that an
        // etcd answers, so a wrong endpoint is reported here, in its words.
        let status = || {
            let mut maintenance = client.maintenance_client();
            async move { maintenance.status().await }
        };
        let answered = health.send(limit, Replay::Idempotent, status).await;
        Ok::<_, etcd_client::Error>((answered, client, health))
    };
    let endpoints = config.endpoints().join(",");
    match timeout(limit, connecting).await {
        Ok(Ok((Ok(Ok(_)), client, health))) => Ok((client, health)),
        Ok(Ok((Ok(Err(failure)), ..)) | Err(failure)) => Err(error::unreachable(&endpoints, failure)),
        Ok(Ok((Err(_), ..))) | Err(_) => Err(LockError::unavailable(
            crate::BACKEND,
            None,
            format!("{} (no answer within {limit:?})", ConnectFailure::NoAnswer.explain("etcd", &endpoints, 2379)),
        )),
    }
}

fn tls_options(tls: &crate::EtcdTls) -> Result<etcd_client::TlsOptions, LockError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| LockError::InvalidConfig {
            backend: crate::BACKEND,
            message: format!("cannot read {}: {e}", path.display()),
        })
    };
    let mut options = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca_file {
        options = options.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(LockError::InvalidConfig {
                backend: crate::BACKEND,
                message: "a client certificate needs both cert_file and key_file".to_owned(),
            });
        }
    }
    if let Some(domain) = &tls.domain {
        options = options.domain_name(domain.clone());
    }
    Ok(options)
}

/// One etcd lease and its keep-alive loop.
#[derive(Debug)]
pub(crate) struct Session {
    id: i64,
    ttl: Duration,
    /// Fired when etcd reports the lease gone.
    ended: LossSignal,
    /// When the last keep-alive that etcd confirmed was sent.
    confirmed: watch::Receiver<Instant>,
    keeper: JoinHandle<()>,
}

impl Session {
    /// Grants a lease of `ttl` and starts keeping it alive. `key`: the lock
    /// the lease is first wanted for, named in errors.
    pub(crate) async fn start(
        client: &Client,
        health: &EndpointHealth,
        ttl: Duration,
        request_timeout: Duration,
        key: Option<&LockKey>,
    ) -> Result<Arc<Self>, LockError> {
        let sent = Instant::now();
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let grant = || {
            let mut lease = client.lease_client();
            async move { lease.grant(ttl_secs, None).await }
        };
        let granted = health
            .send(request_timeout, Replay::IfNeverSent, grant)
            .await
            .map_err(|_| error::timed_out(key, "lease grant", request_timeout))?
            .map_err(|e| error::map(key, e))?;
        if granted.ttl() != ttl_secs {
            // etcd raises TTLs below its minimum without saying so.
            let _ = client.lease_client().revoke(granted.id()).await;
            return Err(LockError::InvalidOptions {
                backend: crate::BACKEND,
                message: format!("etcd granted a {} s lease for a {ttl_secs} s request", granted.ttl()),
            });
        }
        let id = granted.id();
        let ended = LossSignal::new();
        let (confirm, confirmed) = watch::channel(sent);
        let span = info_span!("etcd_lease", lease = format_args!("{id:x}"));
        let connection = (client.clone(), health.clone());
        let keeper =
            tokio::spawn(keep_alive(connection, id, ttl, request_timeout, confirm, ended.clone()).instrument(span));
        debug!(lease = format_args!("{id:x}"), ?ttl, "lease granted");
        Ok(Arc::new(Self { id, ttl, ended, confirmed, keeper }))
    }

    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the last confirmed keep-alive was sent.
    pub(crate) fn confirmed_at(&self) -> Instant {
        *self.confirmed.borrow()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Sends a keep-alive every third of the TTL on one stream and records each
/// confirmation; reopens the stream after transport errors; fires `ended`
/// when etcd answers that the lease is gone.
///
/// A failure may mean that the member carrying the stream died: the members
/// are checked (and a dead one leaves the balancer) before the lease is
/// looked up and the stream reopened, at once if a member was removed, so
/// the guard's clock loses no more than the failover takes.
async fn keep_alive(
    (client, health): (Client, EndpointHealth),
    id: i64,
    ttl: Duration,
    request_timeout: Duration,
    confirm: watch::Sender<Instant>,
    ended: LossSignal,
) {
    let interval = ttl / 3;
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    // When the stream was (last tried to be) opened: a member removed since
    // may have carried it.
    let mut opened = Instant::now();
    let mut next = Instant::now() + interval;
    loop {
        sleep(next.saturating_duration_since(Instant::now())).await;
        next = Instant::now() + interval;
        let sent = Instant::now();
        let answer = async {
            match &mut stream {
                Some((keeper, responses)) => {
                    keeper.keep_alive().await?;
                    Ok(responses.message().await?.map(|response| response.ttl() > 0))
                }
                // Opening the stream sends the first keep-alive and reads its
                // answer itself: success means the lease is alive.
                None => {
                    opened = sent;
                    stream = Some(client.lease_client().keep_alive(id).await?);
                    Ok(Some(true))
                }
            }
        };
        let outcome: Result<Result<Option<bool>, etcd_client::Error>, _> =
            timeout(request_timeout.min(interval), answer).await;
        lock_core::metrics::session_renewal(crate::BACKEND, matches!(outcome, Ok(Ok(Some(true)))));
        match outcome {
            Ok(Ok(Some(true))) => {
                confirm.send_replace(sent);
            }
            Ok(Ok(Some(false))) => return end(&ended),
            outcome => {
                debug!(?outcome, "keep-alive failed; reopening the stream");
                stream = None;
                let moved = health.failed(opened).await;
                if lease_gone(&client, &health, id, request_timeout).await {
                    return end(&ended);
                }
                // Retry sooner than the regular interval: at once when a dead
                // member left the balancer since, so the new stream reaches
                // another one.
                let pause = if moved { Duration::ZERO } else { (interval / 4).max(Duration::from_millis(50)) };
                next = Instant::now() + pause;
            }
        }
    }
}

fn end(ended: &LossSignal) {
    warn!("etcd reports the lease gone");
    ended.fire(LostReason::SessionEnded);
}

/// Whether etcd answers that the lease no longer exists (as opposed to not
/// answering at all).
async fn lease_gone(client: &Client, health: &EndpointHealth, id: i64, limit: Duration) -> bool {
    let ask = || {
        let mut lease = client.lease_client();
        async move { lease.time_to_live(id, None).await }
    };
    matches!(health.send(limit, Replay::Idempotent, ask).await, Ok(Ok(lease)) if lease.ttl() <= 0)
}

impl ClientSession for Session {
    fn ended(&self) -> &LossSignal {
        &self.ended
    }
}
