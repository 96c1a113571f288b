//! The MQTT adapter: rumqttc's event loop in its own task, passing what happens on the link to
//! the runtime (`crate::runtime`), which feeds the hub and acknowledges.
//!
//! The poll task owns the connection. rumqttc reconnects in a tight loop on its own, so after
//! every connection error this task sleeps with exponential backoff and jitter before polling
//! again; after every ConnAck the runtime resubscribes (a broker that lost the session would
//! otherwise send nothing) and publishes ZenEdge's retained `online`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::devices::drivers::status_topic;
use crate::event::Millis;
use crate::store::StoreError;
use crate::telemetry::{events as t, InternalEvent};

/// First reconnect delay; doubles per failed attempt up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Zigbee2MQTT's bridge messages exceed rumqttc's 10 KiB default.
const MAX_PACKET: usize = 256 * 1024;

/// What the MQTT side shows to `/v1/status` and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttStatus {
    /// Whether any device talks MQTT (else the link does not make the daemon unready).
    #[serde(default)]
    pub needed: bool,
    pub connected: bool,
    /// Subscriptions acknowledged by the broker since the last connect.
    pub subscribed: bool,
    /// When the link last went up (connected and subscribed) or down.
    #[serde(default)]
    pub since: Option<String>,
    pub connect_attempts: u64,
    pub messages: u64,
    pub malformed: u64,
    /// Zigbee2MQTT `bridge/state` "offline" messages the bridge itself contradicted.
    #[serde(default)]
    pub bridge_offline_ignored: u64,
    /// Times the broker kept closing ZenEdge's sessions right after they opened, as it does
    /// when another client connects with the same client id.
    #[serde(default)]
    pub takeover_suspected: u64,
    /// QoS 0 messages dropped because they came faster than the hub handles them.
    #[serde(default)]
    pub dropped_overload: u64,
    pub last_error: Option<String>,
}

impl MqttStatus {
    /// Connected with every subscription acknowledged: device messages can arrive.
    pub fn up(&self) -> bool {
        self.connected && self.subscribed
    }

    /// Down while devices need it: the daemon is not ready, device states are not known.
    pub fn down_and_needed(&self) -> bool {
        self.needed && !self.up()
    }
}

/// What happens on the link, as the runtime hears it.
#[derive(Debug)]
pub enum LinkEvent {
    Connected,
    /// The broker acknowledged the subscriptions.
    Subscribed,
    Message(Publish),
    Disconnected(String),
}

/// The MQTT link once started: the client to publish and ack with, the poll task, and what it
/// counts.
pub struct Link {
    pub client: AsyncClient,
    pub poll: tokio::task::JoinHandle<()>,
    pub attempts: Arc<AtomicU64>,
    /// QoS 0 messages dropped because they came faster than the hub handles them.
    pub overload: Arc<AtomicU64>,
    /// QoS 0 messages the poll task has passed on and the runtime has not yet taken.
    pub qos0_waiting: Arc<AtomicUsize>,
}

/// Connects to the broker of `[mqtt]` (in the background: the poll task connects, and keeps
/// reconnecting with backoff) and passes every [`LinkEvent`] to `send` until it returns false.
pub fn connect(
    config: &Config,
    send: impl Fn(LinkEvent) -> bool + Send + 'static,
) -> Result<Link, MqttSetupError> {
    let opts = options(config, config.mqtt_client_id(), true)?;
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    // Without TCP_NODELAY a command published right after an ack waits for the broker's
    // delayed ACK (Nagle): 40 ms added to a door opening, measured in BENCHMARKS.md.
    eventloop.network_options.set_tcp_nodelay(true);
    // The poll task must never wait on the runtime: it alone sends the acks and publishes the
    // runtime queues, so a poll task waiting on a runtime that waits on rumqttc's request
    // channel would deadlock (it did, in `bench mqtt`). Memory stays bounded all the same: QoS 1
    // and 2 are held to the broker's inflight window (ZenEdge acks only what is durable), and
    // QoS 0 — which has no flow control — is dropped and counted beyond QOS0_WAITING.
    let attempts = Arc::new(AtomicU64::new(0));
    let overload = Arc::new(AtomicU64::new(0));
    let qos0_waiting = Arc::new(AtomicUsize::new(0));
    let poll = tokio::spawn(poll_loop(
        eventloop,
        send,
        attempts.clone(),
        overload.clone(),
        qos0_waiting.clone(),
    ));
    Ok(Link {
        client,
        poll,
        attempts,
        overload,
        qos0_waiting,
    })
}

/// Why the MQTT client could not be set up: a file it needs, named by its config key.
#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    #[error("mqtt.{key} {path}: {source}")]
    File {
        key: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serial(#[from] crate::serial::SerialSetupError),
    #[error("reading the stored device state: {0}")]
    Store(#[from] StoreError),
}

fn read_file(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, MqttSetupError> {
    std::fs::read(path).map_err(|source| MqttSetupError::File {
        key,
        path: path.to_owned(),
        source,
    })
}

/// Client options from `[mqtt]`: credentials and TLS. The daemon's own client (`daemon`) also
/// gets its persistent session, manual acks and Last Will; others (doctor) get none of them.
pub fn options(
    config: &Config,
    client_id: String,
    daemon: bool,
) -> Result<MqttOptions, MqttSetupError> {
    let mut o = MqttOptions::new(client_id, &config.mqtt.host, config.mqtt.port);
    o.set_keep_alive(Duration::from_secs(30));
    if let Some(user) = &config.mqtt.username {
        o.set_credentials(
            user.clone(),
            config
                .mqtt
                .password()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
        );
    }
    if let Some(ca) = &config.mqtt.ca_file {
        let ca = read_file("ca_file", ca)?;
        let client_auth = match (&config.mqtt.client_cert_file, &config.mqtt.client_key_file) {
            (Some(c), Some(k)) => Some((
                read_file("client_cert_file", c)?,
                read_file("client_key_file", k)?,
            )),
            _ => None,
        };
        o.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    if !daemon {
        return Ok(o);
    }
    o
        // A persistent session: QoS 1 messages sent while ZenEdge was down arrive after it
        // restarts.
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_request_channel_capacity(1024)
        .set_last_will(LastWill::new(
            status_topic(config),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    Ok(o)
}

/// QoS 0 messages waiting for the hub at most; 64 of at most 256 KiB each bound the memory
/// a flood can take.
const QOS0_WAITING: usize = 64;

async fn poll_loop(
    mut eventloop: EventLoop,
    send: impl Fn(LinkEvent) -> bool + Send + 'static,
    attempts: Arc<AtomicU64>,
    overload: Arc<AtomicU64>,
    qos0_waiting: Arc<AtomicUsize>,
) {
    let mut last_warned: Option<std::time::Instant> = None;
    if std::env::var("ZENEDGE_FAULT").as_deref() == Ok("mqtt-poll-panics") {
        panic!("fault hook: the MQTT poll task panics");
    }
    let mut backoff = INITIAL_BACKOFF;
    let mut connecting = true;
    loop {
        if connecting {
            attempts.fetch_add(1, Ordering::Relaxed);
            connecting = false;
        }
        let event = eventloop.poll().await;
        // Whether the runtime still listens; when it is gone, so is the reason to poll.
        let listening = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = INITIAL_BACKOFF;
                send(LinkEvent::Connected)
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => send(LinkEvent::Subscribed),
            // QoS 0 has no redelivery and no flow control: while the hub is behind, it is
            // dropped (counted), so a flood cannot grow memory.
            Ok(Event::Incoming(Packet::Publish(p))) if p.qos == QoS::AtMostOnce => {
                if qos0_waiting.fetch_add(1, Ordering::AcqRel) >= QOS0_WAITING {
                    qos0_waiting.fetch_sub(1, Ordering::AcqRel);
                    let n = overload.fetch_add(1, Ordering::Relaxed) + 1;
                    if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        last_warned = Some(std::time::Instant::now());
                        t::MqttQos0Dropped { dropped_total: n }.emit();
                    }
                    true
                } else {
                    send(LinkEvent::Message(p))
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => send(LinkEvent::Message(p)),
            Ok(_) => true,
            Err(e) => {
                let text = describe(&e);
                let _ = send(LinkEvent::Disconnected(text));
                // Full jitter over an exponential ceiling: a fleet of controllers whose
                // broker restarts does not reconnect in lockstep.
                let delay = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
                tokio::time::sleep(delay).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                connecting = true;
                true
            }
        };
        if !listening {
            return;
        }
    }
}

fn describe(e: &ConnectionError) -> String {
    crate::telemetry::error_chain(e)
}

/// Notices sessions that the broker closes right after they open, again and again: what a
/// broker does when another client connects with ZenEdge's client id (MQTT 3.1.1 gives no
/// reason). Pure: times are passed in.
#[derive(Debug, Default)]
pub struct SessionWatch {
    opened: Option<Millis>,
    short: std::collections::VecDeque<Millis>,
}

impl SessionWatch {
    /// A session shorter than this counts as closed right after it opened.
    const SHORT: Duration = Duration::from_secs(5);
    /// This many short sessions within [`SessionWatch::WINDOW`] raise the suspicion.
    const COUNT: usize = 3;
    const WINDOW: Duration = Duration::from_secs(60);

    pub fn opened(&mut self, now: Millis) {
        self.opened = Some(now);
    }

    /// The session ended; true when the pattern says another client holds the client id.
    pub fn closed(&mut self, now: Millis) -> bool {
        let Some(opened) = self.opened.take() else {
            return false;
        };
        if now.saturating_sub(opened) >= Self::SHORT {
            self.short.clear();
            return false;
        }
        self.short.push_back(now);
        while self
            .short
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > Self::WINDOW)
        {
            self.short.pop_front();
        }
        if self.short.len() >= Self::COUNT {
            self.short.clear();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests;
