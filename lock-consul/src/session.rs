//! The client's Consul session, shared by all its locks: renewed in the
//! background, watched with a blocking query so that its end (TTL lapsed,
//! node health failed, destroyed by an operator) is known at once, and
//! replaced by a new one for later acquisitions.

use std::sync::{Arc, Weak};
use std::time::Duration;

use lock_core::{ClientSession, LockError, LockKey, LossSignal, LostReason, SharedRenewal};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tracing::{Instrument, debug, info_span, warn};

use crate::api::{Api, ApiError, MAX_BLOCKING_WAIT};
use crate::{BACKEND, ConsulConfig, error};

/// One Consul session and the tasks that keep and watch it.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: String,
    ttl: Duration,
    ended: LossSignal,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// One renewal for every lock of the session.
    renewal: SharedRenewal,
}

impl Session {
    /// The client's session, shared by all its locks, watched with a
    /// blocking query so that its end is known at once.
    pub(crate) async fn start(api: &Api, config: &ConsulConfig, key: Option<&LockKey>) -> Result<Arc<Self>, LockError> {
        let name = format!("distlock {}", lock_core::default_owner());
        Self::open(api, config, key, &name, true).await
    }

    /// A session of one acquisition alone, named `name` (a semaphore place,
    /// as `api.Semaphore` makes one per semaphore): renewed, but not watched,
    /// since the acquisition watches the keys the session holds, which go
    /// with it (Behavior `delete`).
    pub(crate) async fn start_dedicated(
        api: &Api,
        config: &ConsulConfig,
        key: &LockKey,
        name: &str,
    ) -> Result<Arc<Self>, LockError> {
        Self::open(api, config, Some(key), name, false).await
    }

    async fn open(
        api: &Api,
        config: &ConsulConfig,
        key: Option<&LockKey>,
        name: &str,
        watched: bool,
    ) -> Result<Arc<Self>, LockError> {
        let sent = Instant::now();
        let id = match api.create_session(name, config.session_ttl_value(), config.lock_delay_value()).await {
            Ok(id) => id,
            Err(ApiError::Status { status, body, .. }) if status == http::StatusCode::BAD_REQUEST => {
                return Err(LockError::InvalidConfig {
                    backend: BACKEND,
                    message: format!("Consul refused the session (TTL {:?}): {body}", config.session_ttl_value()),
                });
            }
            Err(e) => return Err(error::unreachable(config.address_value(), key, e)),
        };
        let session = Arc::new(Self {
            id,
            ttl: config.session_ttl_value(),
            ended: LossSignal::new(),
            tasks: std::sync::Mutex::default(),
            renewal: SharedRenewal::new(config.session_ttl_value() / 4),
        });
        session.renewal.confirm(sent);
        let span = info_span!("consul_session", session = %session.id);
        let renewer = tokio::spawn(keep_alive(Arc::downgrade(&session), api.clone()).instrument(span.clone()));
        let mut tasks = vec![renewer];
        if watched {
            tasks.push(tokio::spawn(watch(Arc::downgrade(&session), api.clone()).instrument(span)));
        }
        session.tasks.lock().unwrap_or_else(|p| p.into_inner()).extend(tasks);
        debug!(session = %session.id, ttl = ?session.ttl, "session created");
        Ok(session)
    }

    /// Destroys the session (its keys go with it) and stops renewing it.
    pub(crate) async fn destroy(&self, api: &Api) -> Result<(), ApiError> {
        api.destroy_session(&self.id).await?;
        self.ended.fire(LostReason::SessionEnded);
        Ok(())
    }

    /// Whether a key whose lock `holder` names is held by another session
    /// than this one (`None`: the key is free).
    pub(crate) fn held_by_other(&self, holder: Option<&str>) -> bool {
        holder.is_some_and(|holder| holder != self.id)
    }

    /// The session TTL: the TTL of every lock.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the last renewal Consul confirmed (or the session's creation)
    /// was sent: Consul counts the session's TTL, and so every lock's, from
    /// there. A lock write does not renew the session.
    pub(crate) fn confirmed_at(&self) -> Option<Instant> {
        self.renewal.last_confirmed()
    }

    /// The instant a lock whose write was sent at `sent` counts its TTL
    /// from: the session's last confirmed renewal, if older.
    pub(crate) fn confirmed_before(&self, sent: Instant) -> Instant {
        self.confirmed_at().map_or(sent, |renewed| renewed.min(sent))
    }

    /// Renews the session, at most one request at a time and about once a
    /// quarter TTL however many locks ask: returns when the proof was sent.
    pub(crate) async fn renew(&self, api: &Api, key: &LockKey) -> Result<Instant, LockError> {
        if self.ended.is_fired() {
            return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded));
        }
        let request = || async {
            let renewed = api.renew_session(&self.id).await;
            lock_core::metrics::session_renewal(BACKEND, matches!(renewed, Ok(true)));
            match renewed {
                Ok(true) => Ok(()),
                Ok(false) => {
                    warn!(session = %self.id, "Consul no longer knows the session");
                    self.ended.fire(LostReason::SessionEnded);
                    Err(LockError::lost(BACKEND, key, LostReason::SessionEnded))
                }
                Err(e) => Err(error::map(Some(key), e)),
            }
        };
        self.renewal.renew(request).await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
    }
}

/// Renews the session every third of its TTL (sooner after a failure) until
/// it ends or nothing uses it any more.
async fn keep_alive(session: Weak<Session>, api: Api) {
    let renew_key = LockKey::new("session").ok();
    let mut pause = Duration::ZERO;
    loop {
        let Some(ttl) = session.upgrade().map(|s| s.ttl) else { return };
        sleep(if pause.is_zero() { ttl / 3 } else { pause }).await;
        let Some(live) = session.upgrade() else { return };
        let Some(key) = renew_key.as_ref() else { return };
        match live.renew(&api, key).await {
            Ok(_) => pause = Duration::ZERO,
            Err(LockError::Lost { .. }) => return,
            Err(e) => {
                debug!(error = %e, "session renewal failed; retrying");
                pause = (ttl / 10).max(Duration::from_millis(100));
            }
        }
    }
}

/// Watches the session with blocking queries and fires `ended` as soon as
/// Consul no longer has it.
async fn watch(session: Weak<Session>, api: Api) {
    let mut index = 1;
    let mut pause = Duration::from_millis(100);
    loop {
        let Some(id) = session.upgrade().map(|s| s.id.clone()) else { return };
        match api.session_exists(&id, index, MAX_BLOCKING_WAIT).await {
            Ok((true, next)) => {
                index = next;
                pause = Duration::from_millis(100);
            }
            Ok((false, _)) => {
                warn!(session = %id, "session invalidated by Consul");
                if let Some(live) = session.upgrade() {
                    live.ended.fire(LostReason::SessionEnded);
                }
                return;
            }
            Err(e) => {
                debug!(error = %e, "watching the session failed; retrying");
                sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

impl ClientSession for Session {
    /// Fires when Consul has invalidated the session.
    fn ended(&self) -> &LossSignal {
        &self.ended
    }
}
