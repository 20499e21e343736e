//! The one session (or lease) that all the locks of a client share.

use std::future::Future;
use std::sync::Arc;

use crate::LossSignal;

/// A session (or lease) of a client with a service, ended by the service:
/// every lock of the client lives and dies with it.
pub trait ClientSession: Send + Sync {
    /// Fires when the service has ended the session.
    fn ended(&self) -> &LossSignal;
}

/// The client's current session, replaced by a new one once the service has
/// ended it. The etcd (lease), ZooKeeper and Consul backends keep theirs here.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
/// use lock_core::{ClientSession, LossSignal, LostReason, SessionSlot};
///
/// struct Session(LossSignal);
/// impl ClientSession for Session {
///     fn ended(&self) -> &LossSignal { &self.0 }
/// }
///
/// let slot = SessionSlot::default();
/// let open = || async { Ok::<_, ()>(Arc::new(Session(LossSignal::new()))) };
/// let first = slot.get_or_start(open).await.unwrap_or_else(|()| unreachable!());
/// let again = slot.get_or_start(open).await.unwrap_or_else(|()| unreachable!());
/// assert!(Arc::ptr_eq(&first, &again)); // shared while it lives
/// first.ended().fire(LostReason::SessionEnded);
/// let next = slot.get_or_start(open).await.unwrap_or_else(|()| unreachable!());
/// assert!(!Arc::ptr_eq(&first, &next)); // replaced once ended
/// # }
/// ```
#[derive(Debug)]
pub struct SessionSlot<S> {
    current: tokio::sync::Mutex<Option<Arc<S>>>,
}

impl<S> Default for SessionSlot<S> {
    fn default() -> Self {
        Self { current: tokio::sync::Mutex::new(None) }
    }
}

impl<S: ClientSession> SessionSlot<S> {
    /// The live session, or the one `start` opens when there is none or the
    /// service has ended it. One caller starts at a time; callers that
    /// queued behind it share its session.
    ///
    /// # Errors
    /// What `start` returns.
    pub async fn get_or_start<F, Fut, E>(&self, start: F) -> Result<Arc<S>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<S>, E>>,
    {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref().filter(|s| !s.ended().is_fired()) {
            return Ok(Arc::clone(session));
        }
        let session = start().await?;
        *current = Some(Arc::clone(&session));
        Ok(session)
    }

    /// The session, if one was opened (it may have ended since).
    pub async fn current(&self) -> Option<Arc<S>> {
        self.current.lock().await.clone()
    }

    /// The same without waiting: `None` also while a new session is being
    /// opened. For `Drop`, which cannot wait.
    pub fn current_now(&self) -> Option<Arc<S>> {
        self.current.try_lock().ok().and_then(|current| current.clone())
    }
}
