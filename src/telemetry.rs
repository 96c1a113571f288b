//! Everything the daemon says about itself, in one place: each observable happening is one
//! function that writes its log line and moves its metric together, so the two never disagree.
//! Log fields are key/value; the error field is always `error`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Process-wide counters. Read by the admin API (`/v1/status`, `/metrics`).
#[derive(Debug, Default)]
pub struct Metrics {
    pub events_enqueued: AtomicU64,
    pub deliveries_succeeded: AtomicU64,
    pub deliveries_failed: AtomicU64,
    pub deliveries_unreachable: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub attempts: AtomicU64,
    /// Sum of attempt durations in ms, for a mean.
    pub attempt_ms_total: AtomicU64,
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

fn inc(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

pub fn event_enqueued(seq: u64, id: &str, event: &str) {
    inc(&metrics().events_enqueued, 1);
    tracing::debug!(message = "Event stored.", sequence = seq, event_id = %id, event);
}

pub fn attempt_finished(
    seq: u64,
    attempt: u32,
    status: Option<u16>,
    duration_ms: u64,
    error: Option<&str>,
    outcome: &crate::delivery::policy::Outcome,
) {
    use crate::delivery::policy::Outcome;
    let m = metrics();
    inc(&m.attempts, 1);
    inc(&m.attempt_ms_total, duration_ms);
    match outcome {
        Outcome::Delivered => {
            inc(&m.deliveries_succeeded, 1);
            tracing::debug!(
                message = "Event delivered.",
                sequence = seq,
                attempt,
                status,
                duration_ms
            );
        }
        Outcome::Unreachable { .. } => {
            inc(&m.deliveries_unreachable, 1);
            tracing::warn!(
                message = "ZenCore unreachable.",
                sequence = seq,
                attempt,
                status,
                duration_ms,
                error = error.unwrap_or("")
            );
        }
        Outcome::Failed { .. } | Outcome::Gone => {
            inc(&m.deliveries_failed, 1);
            tracing::warn!(
                message = "Delivery failed.",
                sequence = seq,
                attempt,
                status,
                duration_ms,
                error = error.unwrap_or("")
            );
        }
    }
}

pub fn dead_lettered(seq: u64, reason: &str) {
    inc(&metrics().dead_lettered, 1);
    tracing::warn!(
        message = "Event moved to dead letters.",
        sequence = seq,
        reason
    );
}

pub fn store_error(context: &str, error: &dyn std::fmt::Display) {
    tracing::error!(message = "Store operation failed.", context, error = %error);
}

/// An error with its causes, `outer: cause: root cause`: the last part usually says what really
/// happened ("connection refused").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
