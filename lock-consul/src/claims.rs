//! One attempt or holder per key inside one client.
//!
//! Consul lets a session lock a key it already holds, so two tasks of one
//! client (one session) would both "acquire" the same key. A claim taken
//! before any request keeps them apart; it is held until the lease's release
//! is done, including a release that finishes in the background.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;

/// A held claim on one key; dropping it lets the next task of this client in.
pub(crate) type Claim = OwnedMutexGuard<()>;

/// The claims of one client.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    keys: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Claims {
    fn slot(&self, kv_key: &str) -> Arc<Mutex<()>> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        // Forget slots nobody holds or waits for, now and then, so a client
        // that touched many keys does not keep them all.
        if keys.len() >= 1024 && keys.len().is_power_of_two() {
            keys.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        Arc::clone(keys.entry(kv_key.to_owned()).or_default())
    }

    /// Claims `kv_key`, waiting for this client's current claimant until
    /// `deadline`; `None` when it passed.
    pub(crate) async fn claim(&self, kv_key: &str, deadline: Option<Instant>) -> Option<Claim> {
        let slot = self.slot(kv_key);
        match deadline {
            None => Some(slot.lock_owned().await),
            Some(deadline) => tokio::time::timeout_at(deadline, slot.lock_owned()).await.ok(),
        }
    }

    /// Claims `kv_key` if no task of this client has it.
    pub(crate) fn try_claim(&self, kv_key: &str) -> Option<Claim> {
        self.slot(kv_key).try_lock_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_claimant_per_key() {
        let claims = Claims::default();
        let first = claims.try_claim("a");
        assert!(first.is_some());
        assert!(claims.try_claim("a").is_none());
        assert!(claims.try_claim("b").is_some());
        let soon = Some(Instant::now() + std::time::Duration::from_millis(20));
        assert!(claims.claim("a", soon).await.is_none());
        drop(first);
        assert!(claims.claim("a", soon).await.is_some());
    }
}
