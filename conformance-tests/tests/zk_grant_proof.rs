//! What proves a ZooKeeper grant, read from the backend's `granted` trace
//! event: the create's own reply for a lock free at once, a read of the node
//! otherwise.
//!
//! The only test of its binary: a subscriber set for one thread may miss the
//! events of call sites that tests on other threads reached first.
#![cfg(feature = "zk")]

use conformance_tests::zk::ZkHarness;
use conformance_tests::{Harness, Namespace};
use lock_zk::ZkConfig;

fn harness() -> ZkHarness {
    ZkHarness::from_env()
}

/// The `granted` trace events of the ZooKeeper backend: each one's fields.
#[derive(Clone, Default)]
struct Grants(std::sync::Arc<std::sync::Mutex<Vec<std::collections::BTreeMap<&'static str, String>>>>);

struct EventFields<'a>(&'a mut std::collections::BTreeMap<&'static str, String>);

impl tracing::field::Visit for EventFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Grants {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = std::collections::BTreeMap::new();
        event.record(&mut EventFields(&mut fields));
        if fields.get("message").map(String::as_str) == Some("granted") {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(fields);
        }
    }
}

impl Grants {
    /// How the grant of the node at `path` was proven (`create`: by the
    /// create's own reply; `read`: by a read of the node).
    fn proven_by(&self, path: &str) -> String {
        let grants = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let grant = grants.iter().rev().find(|fields| fields.get("path").map(String::as_str) == Some(path));
        let grant = grant.unwrap_or_else(|| panic!("no granted event for {path} among {grants:?}"));
        grant.get("proven_by").cloned().unwrap_or_default()
    }
}

/// A lock free at once is granted on the create's reply alone (the listing
/// rides in the same round trip and the reply's stat is the token): no read
/// of the node. Without a stat in the reply, and after a wait, the grant
/// reads the node. Told by the backend's `granted` trace event. On one
/// thread, so the subscriber set for it sees the client's tasks.
#[test]
fn a_free_lock_is_granted_on_the_creates_reply_without_a_read() {
    let grants = Grants::default();
    let subscriber = tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), grants.clone());
    let _traced = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let runtime = runtime.unwrap_or_else(|e| panic!("no runtime: {e}"));
    runtime.block_on(async {
        let h = harness();
        let ns = Namespace::new();
        let (plain, _) = h.client_with(ZkConfig::plain_creates_for_tests).await;
        let (current, other) = (h.client().await, h.client().await);
        for (client, expected) in [(&current, "create"), (&plain, "read")] {
            let key = ns.key(expected);
            let guard = client.locks.lock(key.as_str()).acquire().await;
            let guard = guard.unwrap_or_else(|e| panic!("acquire of a free key: {e}"));
            let node = h.contenders(&key).await.pop().unwrap_or_default();
            assert_eq!(grants.proven_by(&node), expected, "a free lock, the create's reply {expected}");
            let _ = guard.release().await;
        }
        // After a wait: read, to prove the node outlived the wait.
        let key = ns.key("after a wait");
        let guard = h.acquire_after_a_wait(&other, &current, &key, "the other client").await;
        let guard = guard.unwrap_or_else(|e| panic!("acquire after a wait: {e}"));
        let node = h.contenders(&key).await.pop().unwrap_or_default();
        assert_eq!(grants.proven_by(&node), "read", "a grant after a wait");
        let _ = guard.release().await;
    });
}
