//! distlock's metrics in the Prometheus text format: the application
//! installs a recorder of the `metrics` facade (here
//! `metrics-exporter-prometheus`), and every client records into it,
//! whatever the backend.
//!
//! ```sh
//! cargo run --example metrics_prometheus
//! ```
//!
//! One client takes a lock and holds it while a second one waits for it in
//! vain (a timeout), then releases it; the example prints what a scrape
//! would see. A service would serve `handle.render()` on its `/metrics`
//! endpoint instead (or let the exporter's own HTTP listener do it). The
//! metrics, their labels and when they move are listed in the README's
//! "Metrics and tracing" and in `distlock::metrics`.

// An example shows what happens by printing it.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use distlock::LockError;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Buckets make the `*_seconds` histograms Prometheus histograms;
    // without them the exporter renders summaries.
    let buckets = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &buckets)?
        .install_recorder()?;

    // Clients built after the recorder describe the metrics to it (their
    // `# HELP` lines). Both share the in-memory store named `example`.
    // `.with_key_labels(true)` would add each lock's key as a label: only
    // for a few, known keys.
    let holder = distlock::connect("mem://example").await?;
    let waiter = distlock::connect("mem://example").await?;

    let guard = holder.lock("jobs/nightly").ttl(Duration::from_secs(15)).acquire().await?;
    println!("holder: granted token {}", guard.token());
    match waiter.lock("jobs/nightly").wait(Duration::from_millis(50)).acquire().await {
        Err(LockError::Timeout { waited, .. }) => println!("waiter: timed out after {waited:?}"),
        Ok(_) => return Err("the waiter was granted a lock that is held".into()),
        Err(other) => return Err(other.into()),
    }
    guard.release().await?;
    println!("holder: released\n");

    print!("{}", handle.render());
    Ok(())
}
