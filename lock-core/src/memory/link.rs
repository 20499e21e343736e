//! A simulated network link between a memory client and its store, so the
//! fault cases of the conformance suite (a partitioned holder, an unreachable
//! service) run against the reference backend too.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::timeout;

/// Up or down; requests wait while it is down, up to a timeout.
#[derive(Debug)]
pub(super) struct Link {
    up: watch::Sender<bool>,
}

impl Link {
    pub(super) fn new(up: bool) -> Self {
        Self { up: watch::Sender::new(up) }
    }

    pub(super) fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    /// Waits until the link is up, at most `limit`; false when it stayed down.
    pub(super) async fn ready(&self, limit: Duration) -> bool {
        let mut up = self.up.subscribe();
        matches!(timeout(limit, up.wait_for(|up| *up)).await, Ok(Ok(_)))
    }
}
