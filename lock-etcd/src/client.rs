//! The connection, and the one lease per client that every lock of the
//! client is attached to, kept alive by one keep-alive stream.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper};
use lock_core::{ClientSession, ConnectFailure, LockError, LockKey, LossSignal, LostReason};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tracing::{Instrument, debug, info_span, warn};

use crate::{EtcdConfig, error};

/// Connects with the configured endpoints, credentials, TLS and timeouts.
pub(crate) async fn connect(config: &EtcdConfig) -> Result<Client, LockError> {
    config.validate()?;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout_value())
        .with_timeout(config.request_timeout_value())
        .with_keep_alive(Duration::from_secs(10), config.request_timeout_value())
        .with_keep_alive_while_idle(true);
    if let Some((name, password)) = config.user_value() {
        options = options.with_user(name.clone(), password.clone());
    }
    if let Some(tls) = config.tls_value() {
        options = options.with_tls(tls_options(tls)?);
    }
    let limit = config.connect_timeout_value() + config.request_timeout_value();
    let connecting = async {
        let mut client = Client::connect(config.endpoints(), Some(options)).await?;
        // The connection is made lazily: one small request proves that an
        // etcd answers, so a wrong endpoint is reported here, in its words.
        client.status().await?;
        Ok(client)
    };
    let endpoints = config.endpoints().join(",");
    match timeout(limit, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(failure)) => Err(error::unreachable(&endpoints, failure)),
        Err(_) => Err(LockError::unavailable(
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
        ttl: Duration,
        request_timeout: Duration,
        key: Option<&LockKey>,
    ) -> Result<Arc<Self>, LockError> {
        let sent = Instant::now();
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let granted = timeout(request_timeout, client.lease_client().grant(ttl_secs, None))
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
        let keeper =
            tokio::spawn(keep_alive(client.clone(), id, ttl, request_timeout, confirm, ended.clone()).instrument(span));
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
async fn keep_alive(
    client: Client,
    id: i64,
    ttl: Duration,
    request_timeout: Duration,
    confirm: watch::Sender<Instant>,
    ended: LossSignal,
) {
    let interval = ttl / 3;
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
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
                    stream = Some(client.lease_client().keep_alive(id).await?);
                    Ok(Some(true))
                }
            }
        };
        let outcome: Result<Result<Option<bool>, etcd_client::Error>, _> =
            timeout(request_timeout.min(interval), answer).await;
        match outcome {
            Ok(Ok(Some(true))) => {
                confirm.send_replace(sent);
            }
            Ok(Ok(Some(false))) => return end(&ended),
            outcome => {
                debug!(?outcome, "keep-alive failed; reopening the stream");
                stream = None;
                if lease_gone(&client, id, request_timeout).await {
                    return end(&ended);
                }
                // Retry sooner than the regular interval.
                next = Instant::now() + (interval / 4).max(Duration::from_millis(50));
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
async fn lease_gone(client: &Client, id: i64, limit: Duration) -> bool {
    matches!(timeout(limit, client.lease_client().time_to_live(id, None)).await, Ok(Ok(lease)) if lease.ttl() <= 0)
}

impl ClientSession for Session {
    fn ended(&self) -> &LossSignal {
        &self.ended
    }
}
