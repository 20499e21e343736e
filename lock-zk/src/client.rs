//! The client's ZooKeeper session, shared by all its locks, replaced when
//! ZooKeeper expires it.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{ClientSession, LockError, LockKey, LossSignal, LostReason, SharedRenewal};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{Instrument, debug, info_span, warn};
use zookeeper_client::{Client, SessionState};

use crate::cleanup::Withdrawn;
use crate::{ZkConfig, connect, error};

/// One ZooKeeper session and the task that watches its state.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client: Client,
    ended: LossSignal,
    watcher: JoinHandle<()>,
    /// One renewal for every lock of the session.
    pub(crate) renewal: SharedRenewal,
    /// Nodes of the session being deleted; its attempts do not queue behind them.
    pub(crate) withdrawn: Withdrawn,
    /// How long each request may wait for its answer.
    request_timeout: Duration,
}

impl Session {
    pub(crate) async fn start(config: &ZkConfig, key: Option<&LockKey>) -> Result<Arc<Self>, LockError> {
        let client = connect::connect(config, key).await?;
        let ended = LossSignal::new();
        let mut states = client.state_watcher();
        let signal = ended.clone();
        let span = info_span!("zk_session", session = client.session().id().0);
        let watcher = tokio::spawn(
            async move {
                loop {
                    match states.changed().await {
                        SessionState::Disconnected => debug!("disconnected; the session may still be alive"),
                        SessionState::SyncConnected => debug!("reconnected"),
                        terminal => {
                            warn!(?terminal, "session ended");
                            signal.fire(LostReason::SessionEnded);
                            return;
                        }
                    }
                }
            }
            .instrument(span),
        );
        debug!(session = client.session().id().0, timeout = ?client.session_timeout(), "session started");
        // Any request the server answered restarts the session timeout, so a
        // recent one (within a quarter of the TTL) proves the session alive.
        let renewal = SharedRenewal::new(client.session_timeout() / 4);
        let request_timeout = config.request_timeout_value();
        Ok(Arc::new(Self { client, ended, watcher, renewal, withdrawn: Withdrawn::default(), request_timeout }))
    }

    /// The session timeout ZooKeeper negotiated: the TTL of every lock.
    pub(crate) fn ttl(&self) -> Duration {
        self.client.session_timeout()
    }

    /// Awaits `request` (`what`, for `key`) for at most the request timeout.
    pub(crate) async fn call<T>(
        &self,
        key: &LockKey,
        what: &str,
        request: impl Future<Output = Result<T, zookeeper_client::Error>>,
    ) -> Result<T, LockError> {
        match timeout(self.request_timeout, request).await {
            Ok(result) => result.map_err(|e| error::map(Some(key), e)),
            Err(_) => Err(error::timed_out(Some(key), what, self.request_timeout)),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl ClientSession for Session {
    fn ended(&self) -> &LossSignal {
        &self.ended
    }
}
