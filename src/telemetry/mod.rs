//! Everything the daemon says about itself, in one place: each observable happening is a type
//! ([`events`]) whose `emit` writes its log line and moves its metric together, so the two never
//! disagree; here are the counters, the gauges read at scrape time and the Prometheus text.
//! Log fields are key/value; the error field is always `error`.

pub mod events;

pub use events::{AttemptEnd, InternalEvent};

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
    /// Attempt durations: counts per bucket of [`LATENCY_BUCKETS`] (not cumulative).
    pub attempt_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    pub access_granted: AtomicU64,
    pub access_denied: AtomicU64,
    /// Credentials refused uncompared because their panel or reader was locked out.
    pub access_locked_out: AtomicU64,
    pub lockouts: AtomicU64,
    pub inbound_evicted: AtomicU64,
    /// Adapters (MQTT, serial ports, listeners) restarted after they failed.
    pub adapter_restarts: AtomicU64,
    /// Card reads refused as not a card of the reader's format (parity, length).
    pub card_unreadable: AtomicU64,
    /// Doors opened with no unlock active (`door.forced_open`).
    pub doors_forced: AtomicU64,
    /// Doors left open past their threshold (`door.held_open`).
    pub doors_held: AtomicU64,
    /// Relocks sent without knowing the door is shut (its contact offline or never heard).
    pub relocks_blind: AtomicU64,
    /// Commands answered, by (transport, status).
    pub commands: std::sync::Mutex<std::collections::BTreeMap<(&'static str, u16), u64>>,
}

/// Upper bounds (seconds) of the attempt latency histogram; the last bucket is +Inf.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

fn inc(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
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

/// Values read at scrape time from the store, delivery and MQTT.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub queue_pending: u64,
    pub queue_dead: u64,
    pub oldest_pending_age_seconds: f64,
    pub delivered_total: u64,
    pub dropped_total: u64,
    pub store_live_bytes: u64,
    pub store_max_bytes: u64,
    pub store_disk_bytes: u64,
    pub store_full: bool,
    pub store_undecodable_records: u64,
    pub store_kept_records: u64,
    pub store_in_flight: u64,
    /// Pending events by kind.
    pub queue_pending_by_kind: Vec<(String, u64)>,
    pub zencore_reachable: bool,
    pub devices_total: u64,
    pub devices_online: u64,
    pub mqtt_connected: bool,
    pub mqtt_messages_total: u64,
    pub mqtt_malformed_total: u64,
    pub mqtt_connect_attempts_total: u64,
    pub written_bytes_total: u64,
    /// The command channel's state, when `[commands]` uses it.
    pub command_channel_up: Option<bool>,
}

/// One metric in Prometheus text: its HELP, TYPE and samples (`labels` like `{outcome="x"}`).
fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// The Prometheus text exposition of every metric.
pub fn prometheus(g: &Gauges) -> String {
    use std::fmt::Write;
    let m = metrics();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::new();
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    metric(
        &mut out,
        "zenedge_queue_pending_events",
        "gauge",
        "Events waiting for delivery.",
        &[("", g.queue_pending as f64)],
    );
    metric(
        &mut out,
        "zenedge_queue_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest undelivered event.",
        &[("", g.oldest_pending_age_seconds)],
    );
    metric(
        &mut out,
        "zenedge_dead_letters",
        "gauge",
        "Events in the dead-letter list.",
        &[("", g.queue_dead as f64)],
    );
    metric(
        &mut out,
        "zenedge_deliveries_total",
        "counter",
        "Delivery attempts by outcome since start.",
        &[
            (
                "{outcome=\"delivered\"}",
                load(&m.deliveries_succeeded) as f64,
            ),
            ("{outcome=\"failed\"}", load(&m.deliveries_failed) as f64),
            (
                "{outcome=\"unreachable\"}",
                load(&m.deliveries_unreachable) as f64,
            ),
        ],
    );
    metric(
        &mut out,
        "zenedge_events_delivered_total",
        "counter",
        "Events delivered (kept across restarts).",
        &[("", g.delivered_total as f64)],
    );
    metric(
        &mut out,
        "zenedge_events_dropped_total",
        "counter",
        "Presence events dropped to stay inside the store budget.",
        &[("", g.dropped_total as f64)],
    );
    metric(
        &mut out,
        "zenedge_events_stored_total",
        "counter",
        "Events stored since start.",
        &[("", load(&m.events_enqueued) as f64)],
    );
    metric(
        &mut out,
        "zenedge_dead_lettered_total",
        "counter",
        "Events moved to the dead letters since start.",
        &[("", load(&m.dead_lettered) as f64)],
    );
    // The attempt latency histogram.
    let _ = writeln!(
        out,
        "# HELP zenedge_delivery_attempt_duration_seconds Duration of webhook delivery attempts."
    );
    let _ = writeln!(
        out,
        "# TYPE zenedge_delivery_attempt_duration_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += load(&m.attempt_buckets[i]);
        let _ = writeln!(
            out,
            "zenedge_delivery_attempt_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let count = load(&m.attempts);
    let _ = writeln!(
        out,
        "zenedge_delivery_attempt_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "zenedge_delivery_attempt_duration_seconds_sum {}",
        load(&m.attempt_ms_total) as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "zenedge_delivery_attempt_duration_seconds_count {count}"
    );
    metric(
        &mut out,
        "zenedge_zencore_reachable",
        "gauge",
        "1 while ZenCore answers, 0 while it is probed.",
        &[("", b(g.zencore_reachable))],
    );
    metric(
        &mut out,
        "zenedge_devices",
        "gauge",
        "Configured devices.",
        &[("", g.devices_total as f64)],
    );
    metric(
        &mut out,
        "zenedge_devices_online",
        "gauge",
        "Devices believed online.",
        &[("", g.devices_online as f64)],
    );
    metric(
        &mut out,
        "zenedge_mqtt_connected",
        "gauge",
        "1 while connected to the broker.",
        &[("", b(g.mqtt_connected))],
    );
    metric(
        &mut out,
        "zenedge_mqtt_messages_total",
        "counter",
        "Device messages received.",
        &[("", g.mqtt_messages_total as f64)],
    );
    metric(
        &mut out,
        "zenedge_mqtt_malformed_messages_total",
        "counter",
        "Device messages that could not be understood.",
        &[("", g.mqtt_malformed_total as f64)],
    );
    metric(
        &mut out,
        "zenedge_mqtt_connect_attempts_total",
        "counter",
        "Connection attempts to the broker.",
        &[("", g.mqtt_connect_attempts_total as f64)],
    );
    metric(
        &mut out,
        "zenedge_access_decisions_total",
        "counter",
        "Credentials decided at panels and readers, by result.",
        &[
            ("{result=\"granted\"}", load(&m.access_granted) as f64),
            ("{result=\"denied\"}", load(&m.access_denied) as f64),
            ("{result=\"locked_out\"}", load(&m.access_locked_out) as f64),
        ],
    );
    metric(
        &mut out,
        "zenedge_access_lockouts_total",
        "counter",
        "Lockouts of a panel or reader after too many denied credentials.",
        &[("", load(&m.lockouts) as f64)],
    );
    metric(
        &mut out,
        "zenedge_inbound_evicted_total",
        "counter",
        "Inbound connections closed before sending a whole request, to make room for new ones.",
        &[("", load(&m.inbound_evicted) as f64)],
    );
    metric(
        &mut out,
        "zenedge_card_reads_unreadable_total",
        "counter",
        "Card reads denied as not a card of the reader's format (parity error, wrong bit count).",
        &[("", load(&m.card_unreadable) as f64)],
    );
    metric(
        &mut out,
        "zenedge_door_events_total",
        "counter",
        "Doors forced open (no unlock active) and held open past their threshold.",
        &[
            ("{event=\"forced_open\"}", load(&m.doors_forced) as f64),
            ("{event=\"held_open\"}", load(&m.doors_held) as f64),
        ],
    );
    metric(
        &mut out,
        "zenedge_relocks_blind_total",
        "counter",
        "Relocks sent although the door's contact was offline or had never reported (it counts as closed).",
        &[("", load(&m.relocks_blind) as f64)],
    );
    let commands: Vec<(String, f64)> = m
        .commands
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|((transport, status), n)| {
            (
                format!("{{transport=\"{transport}\",status=\"{status}\"}}"),
                *n as f64,
            )
        })
        .collect();
    let commands: Vec<(&str, f64)> = commands.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(
        &mut out,
        "zenedge_commands_total",
        "counter",
        "Commands from ZenCore answered, by transport (http, mqtt) and HTTP status.",
        &commands,
    );
    if let Some(up) = g.command_channel_up {
        metric(
            &mut out,
            "zenedge_command_channel_up",
            "gauge",
            "1 while the command channel to ZenCore's broker is connected and subscribed.",
            &[("", b(up))],
        );
    }
    metric(
        &mut out,
        "zenedge_adapter_restarts_total",
        "counter",
        "Adapters (MQTT link, serial ports, listeners) restarted after they failed.",
        &[("", load(&m.adapter_restarts) as f64)],
    );
    metric(
        &mut out,
        "zenedge_store_data_bytes",
        "gauge",
        "Stored event data counted against max_store_bytes.",
        &[("", g.store_live_bytes as f64)],
    );
    metric(
        &mut out,
        "zenedge_store_max_bytes",
        "gauge",
        "delivery.max_store_bytes.",
        &[("", g.store_max_bytes as f64)],
    );
    metric(
        &mut out,
        "zenedge_store_disk_bytes",
        "gauge",
        "Size of the store's files.",
        &[("", g.store_disk_bytes as f64)],
    );
    metric(
        &mut out,
        "zenedge_store_full",
        "gauge",
        "1 while the store is full of events that may not be dropped.",
        &[("", b(g.store_full))],
    );
    metric(
        &mut out,
        "zenedge_store_undecodable_records",
        "gauge",
        "Stored records this build cannot decode (kept in place; zenedge status names them).",
        &[("", g.store_undecodable_records as f64)],
    );
    metric(
        &mut out,
        "zenedge_store_kept_records",
        "gauge",
        "Undecodable records whose bytes were kept aside before a write replaced them.",
        &[("", g.store_kept_records as f64)],
    );
    metric(
        &mut out,
        "zenedge_queue_in_flight",
        "gauge",
        "Events whose body is on its way to ZenCore.",
        &[("", g.store_in_flight as f64)],
    );
    let by_kind: Vec<(String, f64)> = g
        .queue_pending_by_kind
        .iter()
        .map(|(k, n)| (format!("{{event=\"{k}\"}}"), *n as f64))
        .collect();
    let by_kind: Vec<(&str, f64)> = by_kind.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(
        &mut out,
        "zenedge_queue_pending_by_event",
        "gauge",
        "Events waiting for delivery, by event kind.",
        &by_kind,
    );
    metric(
        &mut out,
        "zenedge_process_written_bytes_total",
        "counter",
        "Bytes this process caused to be written to storage (/proc/self/io).",
        &[("", g.written_bytes_total as f64)],
    );
    serial_metrics(&mut out);
    out
}

/// What one serial port's thread has seen (for `/metrics` and `/v1/status`).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SerialStats {
    pub open: bool,
    pub opens: u64,
    pub losses: u64,
    /// Valid frames from the device (OSDP).
    pub frames: u64,
    /// Frames with a bad CRC or an impossible length.
    pub crc_errors: u64,
    /// Bytes outside any frame.
    pub noise_bytes: u64,
    pub sc_failures: u64,
    pub naks: u64,
    pub last_error: Option<String>,
}

fn serial_table() -> &'static std::sync::Mutex<std::collections::BTreeMap<String, SerialStats>> {
    static TABLE: OnceLock<std::sync::Mutex<std::collections::BTreeMap<String, SerialStats>>> =
        OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// Updates the stats of a serial device's port.
pub fn serial_stats(device: &str, f: impl FnOnce(&mut SerialStats)) {
    let mut t = serial_table().lock().unwrap_or_else(|p| p.into_inner());
    f(t.entry(device.to_owned()).or_default());
}

/// A copy of every serial port's stats.
pub fn serial_snapshot() -> std::collections::BTreeMap<String, SerialStats> {
    serial_table()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn serial_metrics(out: &mut String) {
    let t = serial_snapshot();
    if t.is_empty() {
        return;
    }
    type Field = fn(&SerialStats) -> u64;
    let series: [(&str, &str, &str, Field); 7] = [
        (
            "zenedge_serial_port_open",
            "gauge",
            "1 while the device's serial port is open.",
            |s| s.open as u64,
        ),
        (
            "zenedge_serial_port_opens_total",
            "counter",
            "Times the serial port was opened.",
            |s| s.opens,
        ),
        (
            "zenedge_serial_port_losses_total",
            "counter",
            "Times an open serial port was lost (unplugged, EIO, hang-up).",
            |s| s.losses,
        ),
        (
            "zenedge_serial_frames_total",
            "counter",
            "Valid frames received from the device.",
            |s| s.frames,
        ),
        (
            "zenedge_serial_frame_errors_total",
            "counter",
            "Frames dropped for a bad CRC or length.",
            |s| s.crc_errors,
        ),
        (
            "zenedge_serial_noise_bytes_total",
            "counter",
            "Bytes received outside any frame.",
            |s| s.noise_bytes,
        ),
        (
            "zenedge_serial_secure_channel_failures_total",
            "counter",
            "OSDP Secure Channel handshakes or MACs that failed.",
            |s| s.sc_failures,
        ),
    ];
    for (name, kind, help, field) in series {
        let labels: Vec<(String, f64)> = t
            .iter()
            .map(|(d, s)| {
                (
                    format!("{{device=\"{}\"}}", d.replace('"', "")),
                    field(s) as f64,
                )
            })
            .collect();
        let samples: Vec<(&str, f64)> = labels.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(out, name, kind, help, &samples);
    }
}

/// `write_bytes` of /proc/self/io: what this process made the kernel write to storage.
pub fn process_written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("write_bytes: ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Heartbeats of the critical loops. Each loop bumps its counter every time round (at least twice
/// a second, from a timer of its own; so `WatchdogSec` must be 2 s or more), so a loop that stops going round stops its counter, and
/// the systemd watchdog is withheld.
#[derive(Debug, Default)]
pub struct Liveness {
    pub delivery: AtomicU64,
    pub devices: AtomicU64,
    /// Test hook (`ZENEDGE_FAULT=wedge-delivery`): the delivery loop stops going round.
    pub wedge_delivery: std::sync::atomic::AtomicBool,
}

pub fn liveness() -> &'static Liveness {
    static LIVENESS: OnceLock<Liveness> = OnceLock::new();
    LIVENESS.get_or_init(Liveness::default)
}

#[cfg(test)]
mod tests;
