//! The `tracing` spans every client opens (see `lock_core::metrics`), read
//! back through a layer that keeps them.
//!
//! The only test of its binary: a subscriber set for one thread
//! (`with_default`) may miss the spans of call sites that tests on other
//! threads reached first.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{Locks, MemoryStore};

/// The value of a call that must succeed.
fn ok<T, E: Debug>(what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|error| panic!("{what}: {error:?}"))
}

/// A span as the capturing layer saw it.
#[derive(Debug, Clone)]
struct SeenSpan {
    name: &'static str,
    parent: Option<&'static str>,
    fields: BTreeMap<&'static str, String>,
}

/// Keeps every span opened, with its fields as recorded.
#[derive(Clone, Default)]
struct SpanLog(Arc<Mutex<Vec<(tracing::span::Id, SeenSpan)>>>);

struct Fields<'a>(&'a mut BTreeMap<&'static str, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanLog
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let parent = ctx.span(id).and_then(|span| span.parent()).map(|parent| parent.name());
        let mut seen = SeenSpan { name: attrs.metadata().name(), parent, fields: BTreeMap::new() };
        attrs.record(&mut Fields(&mut seen.fields));
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push((id.clone(), seen));
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut spans = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, seen)) = spans.iter_mut().rev().find(|(seen_id, _)| seen_id == id) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }
}

impl SpanLog {
    fn named(&self, name: &str) -> Vec<SeenSpan> {
        let spans = self.0.lock().unwrap_or_else(|p| p.into_inner());
        spans.iter().map(|(_, seen)| seen.clone()).filter(|seen| seen.name == name).collect()
    }
}

#[test]
fn spans_name_the_lock_and_its_token() {
    use tracing_subscriber::layer::SubscriberExt;

    let log = SpanLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build();
    let runtime = ok("runtime", runtime);
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let store = MemoryStore::new();
            let (holder, waiter) = (Locks::new(store.client()), Locks::new(store.client()));
            let held = ok("holder's acquire", holder.lock("jobs/x").ttl(Duration::from_millis(300)).acquire().await);
            let waiting = tokio::spawn(async move { waiter.lock("jobs/x").acquire().await });
            tokio::time::sleep(Duration::from_millis(150)).await; // one renewal, at 100 ms
            ok("holder's release", held.release().await);
            let guard = ok("waiter's acquire", ok("task", waiting.await));
            ok("waiter's release", guard.release().await);
        });
    });
    let acquired = log.named("distlock.acquire");
    assert_eq!(acquired.len(), 2, "{acquired:?}");
    for (seen, token) in acquired.iter().zip(["1", "2"]) {
        assert_eq!(seen.fields.get("key").map(String::as_str), Some("jobs/x"), "{seen:?}");
        assert_eq!(seen.fields.get("backend").map(String::as_str), Some("memory"));
        assert_eq!(seen.fields.get("mode").map(String::as_str), Some("exclusive"));
        assert_eq!(seen.fields.get("token").map(String::as_str), Some(token));
        assert_eq!(seen.fields.get("outcome").map(String::as_str), Some("granted"));
    }
    let waits = log.named("distlock.wait");
    assert_eq!(waits.len(), 1, "only the waiter waited: {waits:?}");
    assert_eq!(waits[0].parent, Some("distlock.acquire"));
    assert_eq!(waits[0].fields.get("waited").map(String::as_str), Some("150ms"));
    let renewals = log.named("distlock.renew");
    assert!(!renewals.is_empty());
    assert_eq!(renewals[0].fields.get("outcome").map(String::as_str), Some("ok"));
    assert_eq!(renewals[0].fields.get("token").map(String::as_str), Some("1"));
    let releases = log.named("distlock.release");
    assert_eq!(releases.len(), 2, "{releases:?}");
    assert!(releases.iter().all(|seen| seen.fields.get("outcome").map(String::as_str) == Some("ok")), "{releases:?}");
    assert_eq!(log.named("distlock.guard").len(), 2);
}
