//! Observing a key's leader by polling, for backends without watches.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;

use crate::{DistributedLock, LeaderStream, LockInfo, LockKey};

/// How often a polled observer asks.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// What tells one reported leader from the next: its token (a new token is
/// a new grant) and its value (a proclaim); `None` while nobody leads.
pub type LeaderIdentity = Option<(u64, Option<String>)>;

/// The [`LeaderIdentity`] of `leader`: a [`LeaderStream`] yields an item
/// whenever it changes.
pub fn leader_identity(leader: &Option<LockInfo>) -> LeaderIdentity {
    leader.as_ref().map(|info| (info.token.get(), info.value.clone()))
}

/// A [`LeaderStream`] that asks `backend` every [`POLL`] and yields each
/// change (the first answer always, and the first after an error).
pub(crate) fn polled(backend: Arc<dyn DistributedLock>, key: LockKey) -> LeaderStream {
    struct State {
        backend: Arc<dyn DistributedLock>,
        key: LockKey,
        /// The last leader reported; `None` before the first answer and after
        /// an error, so the next answer is reported whatever it is.
        reported: Option<LeaderIdentity>,
        asked: bool,
    }
    let state = State { backend, key, reported: None, asked: false };
    Box::pin(stream::unfold(state, |mut state| async move {
        loop {
            if state.asked {
                tokio::time::sleep(POLL).await;
            }
            state.asked = true;
            match state.backend.inspect(&state.key).await {
                Ok(leader) => {
                    let seen = leader_identity(&leader);
                    if state.reported.as_ref() != Some(&seen) {
                        state.reported = Some(seen);
                        return Some((Ok(leader), state));
                    }
                }
                Err(error) => {
                    state.reported = None;
                    return Some((Err(error), state));
                }
            }
        }
    }))
}
