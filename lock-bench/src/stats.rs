//! Latency samples, their percentiles, and the report rows.

use std::time::Duration;

/// Latencies of one scenario.
#[derive(Debug, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Records one latency.
    pub fn push(&mut self, latency: Duration) {
        self.0.push(latency);
    }

    /// Records every latency of `other`.
    pub fn extend(&mut self, other: &Self) {
        self.0.extend_from_slice(&other.0);
    }

    /// How many latencies there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// How many are `limit` or more.
    pub fn at_least(&self, limit: Duration) -> usize {
        self.0.iter().filter(|&&latency| latency >= limit).count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`-th percentile (0..=100), nearest rank.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// Backend name.
    pub backend: String,
    /// Scenario name.
    pub scenario: String,
    /// Named values, in display order.
    pub values: Vec<(&'static str, f64)>,
}

impl Row {
    /// A row with no values yet.
    pub fn new(backend: &str, scenario: &str) -> Self {
        Self { backend: backend.to_owned(), scenario: scenario.to_owned(), values: Vec::new() }
    }

    /// Adds a latency in microseconds.
    pub fn micros(mut self, name: &'static str, value: Duration) -> Self {
        self.values.push((name, value.as_secs_f64() * 1e6));
        self
    }

    /// Adds a plain number.
    pub fn value(mut self, name: &'static str, value: f64) -> Self {
        self.values.push((name, value));
        self
    }

    /// The row as one JSON line.
    pub fn json(&self) -> String {
        let mut object = serde_json::Map::new();
        object.insert("backend".into(), self.backend.clone().into());
        object.insert("scenario".into(), self.scenario.clone().into());
        for (name, value) in &self.values {
            let rounded = (value * 1000.0).round() / 1000.0;
            object.insert((*name).into(), serde_json::Value::from(rounded));
        }
        serde_json::Value::Object(object).to_string()
    }

    /// The row as a table line.
    pub fn text(&self) -> String {
        let values: Vec<String> = self.values.iter().map(|(name, value)| format!("{name}={}", human(*value))).collect();
        format!("{:<7} {:<26} {}", self.backend, self.scenario, values.join("  "))
    }
}

fn human(value: f64) -> String {
    if value.abs() >= 100.0 { format!("{value:.0}") } else { format!("{value:.2}") }
}
