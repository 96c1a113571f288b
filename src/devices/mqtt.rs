//! The MQTT shell: rumqttc's event loop in one task, the [`Hub`] in another.
//!
//! The poll task owns the connection. rumqttc reconnects in a tight loop on its own, so after
//! every connection error this task sleeps with exponential backoff and jitter before polling
//! again; after every ConnAck it resubscribes (a broker that lost the session would otherwise
//! send nothing) and publishes ZenEdge's retained `online`.
//!
//! The hub task takes messages in batches: it feeds each to the hub, stages the resulting
//! events and presence records, flushes once, and only then acknowledges the batch's QoS 1
//! messages, in the order they arrived. A crash before the flush leaves them unacknowledged,
//! and the broker delivers them again to the persistent session.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::actions::PendingUnlock;
use super::actions::{Completed, Request};
use super::drivers::{status_topic, Routes};
use super::{Ctx, DeviceView, Effect, Effects, Hub, Input};
use crate::config::Config;
use crate::event::Millis;
use crate::store::{Commit, Enqueued, Store, StoreError};
use crate::telemetry::{events as t, InternalEvent};

/// First reconnect delay; doubles per failed attempt up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Zigbee2MQTT's bridge messages exceed rumqttc's 10 KiB default.
const MAX_PACKET: usize = 256 * 1024;
/// Messages handled per flush.
const BATCH: usize = 512;

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

/// A request to the hub from the admin API.
pub enum HubRequest {
    /// Start an action; answer (when asked) once it has finished and its event is durable.
    Action {
        request: Request,
        reply: Option<oneshot::Sender<Completed>>,
    },
    /// The grants changed: here is the whole set.
    Grants(Vec<crate::access::Grant>),
    /// ZenCore's state for a room's panels.
    Explicit(crate::wire::panel::Explicit),
    /// A booking as ZenCore now describes it (already durable).
    Booking(crate::schedule::Booking),
}

/// The handles other parts of the daemon hold.
#[derive(Clone)]
pub struct MqttHandle {
    pub requests: mpsc::Sender<HubRequest>,
    pub views: watch::Receiver<Vec<DeviceView>>,
    pub status: watch::Receiver<MqttStatus>,
}

enum Incoming {
    Connected,
    Subscribed,
    Message(Publish),
    Disconnected(String),
    /// From a serial port's thread.
    Serial(crate::serial::Report),
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

/// Starts the MQTT client and the hub. Returns the handles and a future that runs until
/// `shutdown`, then publishes ZenEdge's `offline` and disconnects.
pub async fn start(
    config: Arc<Config>,
    store: Store,
    clock: Arc<crate::clock::Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(MqttHandle, impl Future<Output = Result<(), StoreError>>), MqttSetupError> {
    let opts = options(&config, config.mqtt_client_id(), true)?;
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    // Without TCP_NODELAY a command published right after an ack waits for the broker's
    // delayed ACK (Nagle): 40 ms added to a door opening, measured in BENCHMARKS.md.
    eventloop.network_options.set_tcp_nodelay(true);
    // The poll task must never wait on the hub: it alone sends the acks and publishes the hub
    // queues, so a poll task waiting on a hub that waits on rumqttc's request channel would
    // deadlock (it did, in `bench mqtt`). Memory stays bounded all the same: QoS 1 and 2 are
    // held to the broker's inflight window (ZenEdge acks only what is durable), and QoS 0 —
    // which has no flow control — is dropped and counted beyond QOS0_WAITING.
    let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
    let qos0_waiting = Arc::new(AtomicUsize::new(0));
    let (requests_tx, requests_rx) = mpsc::channel(64);
    let (views_tx, views) = watch::channel(Vec::new());
    let (status_tx, status) = watch::channel(MqttStatus {
        needed: !Routes::new(&config).is_empty(),
        since: Some(Millis::now().rfc3339()),
        ..MqttStatus::default()
    });
    let attempts = Arc::new(AtomicU64::new(0));
    let serial_tx = incoming_tx.clone();
    let ports = crate::serial::Ports::start(&config, move |r| {
        serial_tx.send(Incoming::Serial(r)).is_ok()
    })?;
    let overload = Arc::new(AtomicU64::new(0));
    let poll = tokio::spawn(poll_loop(
        eventloop,
        incoming_tx,
        attempts.clone(),
        overload.clone(),
        qos0_waiting.clone(),
    ));
    let (reported, grants, bookings, marks, lockouts) = store
        .read(|s| {
            Ok((
                s.records::<crate::devices::presence::Reported>()?,
                s.records::<crate::access::Grant>()?,
                s.records::<crate::schedule::Booking>()?,
                s.records::<crate::schedule::Marks>()?,
                s.records::<crate::access::lockout::Guard>()?,
            ))
        })
        .await?;
    let mut hub = Hub::new(
        config.clone(),
        reported.into_iter().collect(),
        Millis::now(),
    );
    hub.set_grants(grants.into_iter().map(|(_, g)| g).collect());
    hub.set_lockouts(lockouts);
    hub.set_schedule(crate::schedule::Schedule::new(
        bookings.into_iter().map(|(_, b)| b),
        marks,
        config.scheduler.no_show_release,
    ));
    let handle = MqttHandle {
        requests: requests_tx,
        views,
        status,
    };
    let shell = Shell {
        sessions: SessionWatch::default(),
        overload,
        qos0_waiting,
        config,
        store,
        client,
        hub,
        views: views_tx,
        status: status_tx,
        attempts,
        waiters: HashMap::new(),
        clock,
        ports: Some(ports),
    };
    let run = async move {
        let result = shell.run(incoming_rx, requests_rx, shutdown).await;
        poll.abort();
        result
    };
    Ok((handle, run))
}

/// QoS 0 messages waiting for the hub at most; 64 of at most 256 KiB each bound the memory
/// a flood can take.
const QOS0_WAITING: usize = 64;

async fn poll_loop(
    mut eventloop: EventLoop,
    incoming: mpsc::UnboundedSender<Incoming>,
    attempts: Arc<AtomicU64>,
    overload: Arc<AtomicU64>,
    qos0_waiting: Arc<AtomicUsize>,
) {
    let mut last_warned: Option<std::time::Instant> = None;
    let mut backoff = INITIAL_BACKOFF;
    let mut connecting = true;
    loop {
        if connecting {
            attempts.fetch_add(1, Ordering::Relaxed);
            connecting = false;
        }
        let event = eventloop.poll().await;
        let sent = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = INITIAL_BACKOFF;
                incoming.send(Incoming::Connected).map_err(drop)
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                incoming.send(Incoming::Subscribed).map_err(drop)
            }
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
                    Ok(())
                } else {
                    incoming.send(Incoming::Message(p)).map_err(drop)
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                incoming.send(Incoming::Message(p)).map_err(drop)
            }
            Ok(_) => Ok(()),
            Err(e) => {
                let text = describe(&e);
                let _ = incoming.send(Incoming::Disconnected(text));
                // Full jitter over an exponential ceiling: a fleet of controllers whose
                // broker restarts does not reconnect in lockstep.
                let delay = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
                tokio::time::sleep(delay).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                connecting = true;
                Ok(())
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Splits a batch, in order, into runs in which each topic's acknowledged messages appear at
/// most once. A crash after a run's commit and before its acks makes the broker deliver the run
/// again; with one message per topic, each one finds its effect already stored (the device is
/// already in that state) and changes nothing. Two messages of one device in one run would be
/// replayed as a transition and its reverse, reported a second time.
fn one_per_topic(batch: Vec<Incoming>) -> Vec<Vec<Incoming>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut topics = std::collections::HashSet::new();
    for item in batch {
        if let Incoming::Message(p) = &item {
            if p.qos != QoS::AtMostOnce && !topics.insert(p.topic.clone()) {
                runs.push(std::mem::take(&mut run));
                topics.clear();
                topics.insert(p.topic.clone());
            }
        }
        run.push(item);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

fn describe(e: &ConnectionError) -> String {
    crate::telemetry::error_chain(e)
}

/// Notices sessions that the broker closes right after they open, again and again: what a
/// broker does when another client connects with ZenEdge's client id (MQTT 3.1.1 gives no
/// reason). Pure: times are passed in.
#[derive(Debug, Default)]
struct SessionWatch {
    opened: Option<Millis>,
    short: std::collections::VecDeque<Millis>,
}

impl SessionWatch {
    /// A session shorter than this counts as closed right after it opened.
    const SHORT: Duration = Duration::from_secs(5);
    /// This many short sessions within [`SessionWatch::WINDOW`] raise the suspicion.
    const COUNT: usize = 3;
    const WINDOW: Duration = Duration::from_secs(60);

    fn opened(&mut self, now: Millis) {
        self.opened = Some(now);
    }

    /// The session ended; true when the pattern says another client holds the client id.
    fn closed(&mut self, now: Millis) -> bool {
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

struct Shell {
    sessions: SessionWatch,
    overload: Arc<AtomicU64>,
    /// QoS 0 messages the poll task has passed on and the hub has not yet taken.
    qos0_waiting: Arc<AtomicUsize>,
    config: Arc<Config>,
    store: Store,
    client: AsyncClient,
    hub: Hub,
    views: watch::Sender<Vec<DeviceView>>,
    status: watch::Sender<MqttStatus>,
    attempts: Arc<AtomicU64>,
    waiters: HashMap<String, oneshot::Sender<Completed>>,
    clock: Arc<crate::clock::Clock>,
    ports: Option<crate::serial::Ports>,
}

impl Shell {
    async fn run(
        mut self,
        mut incoming: mpsc::UnboundedReceiver<Incoming>,
        mut requests: mpsc::Receiver<HubRequest>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StoreError> {
        tokio::pin!(shutdown);
        self.publish_views();
        if std::env::var("ZENEDGE_FAULT").as_deref() == Ok("device-task-ends") {
            // The fault hook: the device task ends as a store failure would end it.
            return Err(StoreError::WriterGone);
        }
        // ZenCore unlocks accepted before a crash and never completed: carry them out, or
        // report them expired.
        let unlocks = self.store.read(|s| s.records::<PendingUnlock>()).await?;
        for (_, u) in unlocks {
            let ctx = self.ctx();
            let input = if u.not_after <= ctx.now {
                t::UnlockExpiredAtRestart {
                    action_id: &u.action_id,
                }
                .emit();
                Input::Fail {
                    request: u.request(),
                    error: "expired",
                }
            } else {
                t::UnlockResumed {
                    action_id: &u.action_id,
                }
                .emit();
                Input::Request(u.request())
            };
            let out = self.hub.handle(input, &ctx);
            self.apply(out, Vec::new()).await?;
        }
        // The rooms' schedule as stored: moments due while ZenCore or ZenEdge was down, and
        // every panel's display right away.
        let out = self.hub.handle(Input::Tick, &self.ctx());
        self.apply(out, Vec::new()).await?;
        let mut heartbeat = tokio::time::interval(Duration::from_millis(500));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            crate::telemetry::liveness()
                .devices
                .fetch_add(1, Ordering::Relaxed);
            let sleep_for = self
                .hub
                .next_deadline()
                .map(|at| at.saturating_sub(Millis::now()));
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(first) = incoming.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match incoming.try_recv() {
                            Ok(i) => batch.push(i),
                            Err(_) => break,
                        }
                    }
                    for run in one_per_topic(batch) {
                        self.handle_batch(run).await?;
                    }
                }
                _ = heartbeat.tick() => {}
                Some(request) = requests.recv() => {
                    match request {
                        HubRequest::Action { request, reply } => {
                            if let Some(reply) = reply {
                                self.waiters.insert(request.action_id.clone(), reply);
                            }
                            let out = self.hub.handle(Input::Request(request), &self.ctx());
                            self.apply(out, Vec::new()).await?;
                        }
                        HubRequest::Grants(grants) => self.hub.set_grants(grants),
                        HubRequest::Booking(b) => {
                            let out = self.hub.handle(Input::Booking(b), &self.ctx());
                            self.apply(out, Vec::new()).await?;
                        }
                        HubRequest::Explicit(e) => {
                            let out = self.hub.handle(Input::Explicit(e), &self.ctx());
                            self.apply(out, Vec::new()).await?;
                        }
                    }
                }
                _ = tokio::time::sleep(sleep_for.unwrap_or_default()), if sleep_for.is_some() => {
                    let out = self.hub.handle(Input::Tick, &self.ctx());
                    self.apply(out, Vec::new()).await?;
                }
            }
        }
        // Serial threads switch off what they drive and close their ports.
        if let Some(ports) = self.ports.take() {
            let _ = tokio::task::spawn_blocking(move || ports.stop()).await;
        }
        // A clean stop says so itself rather than leaving it to the Last Will.
        let _ = self
            .client
            .publish(
                status_topic(&self.config),
                QoS::AtLeastOnce,
                true,
                "offline",
            )
            .await;
        let _ = self.client.disconnect().await;
        // Give the event loop a moment to send both.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }

    async fn handle_batch(&mut self, batch: Vec<Incoming>) -> Result<(), StoreError> {
        let mut out = Effects::default();
        let mut to_ack = Vec::new();
        for item in batch {
            match item {
                Incoming::Connected => {
                    self.sessions.opened(Millis::now());
                    self.set_status(|s| {
                        s.connected = true;
                        s.subscribed = false;
                        s.last_error = None;
                    });
                    t::MqttConnected {
                        host: &self.config.mqtt.host,
                        port: self.config.mqtt.port,
                    }
                    .emit();
                    self.on_connect().await;
                }
                Incoming::Subscribed => self.set_status(|s| s.subscribed = true),
                Incoming::Disconnected(error) => {
                    if self.sessions.closed(Millis::now()) {
                        t::MqttTakeoverSuspected {
                            client_id: &self.config.mqtt_client_id(),
                        }
                        .emit();
                        self.set_status(|s| s.takeover_suspected += 1);
                    }
                    let was = self.status.borrow().connected;
                    if was {
                        t::MqttLost { error: &error }.emit();
                    } else {
                        t::MqttConnectFailed { error: &error }.emit();
                    }
                    self.set_status(|s| {
                        s.connected = false;
                        s.subscribed = false;
                        s.last_error = Some(error);
                    });
                }
                Incoming::Serial(r) => {
                    let input = Input::Serial {
                        device: &r.device,
                        happening: r.happening,
                    };
                    out.merge(self.hub.handle(input, &self.ctx()));
                }
                Incoming::Message(p) => {
                    if p.qos == QoS::AtMostOnce {
                        self.qos0_waiting.fetch_sub(1, Ordering::AcqRel);
                    }
                    let input = Input::Message {
                        topic: &p.topic,
                        payload: &p.payload,
                        retained: p.retain,
                    };
                    out.merge(self.hub.handle(input, &self.ctx()));
                    if p.qos != QoS::AtMostOnce {
                        to_ack.push(p);
                    }
                }
            }
        }
        self.apply(out, to_ack).await
    }

    async fn on_connect(&mut self) {
        let topics: Vec<rumqttc::SubscribeFilter> = self
            .hub
            .routes()
            .topics()
            .map(|t| rumqttc::SubscribeFilter::new(t.to_owned(), QoS::AtLeastOnce))
            .collect();
        if topics.is_empty() {
            self.set_status(|s| s.subscribed = true);
        } else if let Err(e) = self.client.subscribe_many(topics).await {
            t::MqttSubscribeFailed { error: &e }.emit();
        }
        if let Err(e) = self
            .client
            .publish(status_topic(&self.config), QoS::AtLeastOnce, true, "online")
            .await
        {
            t::MqttOnlineFailed { error: &e }.emit();
        }
    }

    /// Stores what the hub produced, flushes, then acknowledges, publishes and answers.
    async fn apply(&mut self, out: Effects, to_ack: Vec<Publish>) -> Result<(), StoreError> {
        let durable = if out.needs_commit() {
            self.stage_and_flush(&out).await
        } else {
            Ok(())
        };
        if let Err(e) = durable {
            // Nothing is acknowledged: the broker redelivers after a reconnect, and the
            // events are made again then.
            t::StoreFailed {
                context: "store device events",
                error: &e,
            }
            .emit();
            return Err(e);
        }
        for p in &to_ack {
            if let Err(e) = self.client.ack(p).await {
                t::MqttAckFailed {
                    topic: &p.topic,
                    error: &e,
                }
                .emit();
            }
        }
        // What is not stored, in the order the hub asked for it.
        for effect in out {
            match effect {
                Effect::Publish(o) => {
                    if let Err(e) = self
                        .client
                        .publish(o.topic.clone(), QoS::AtLeastOnce, o.retain, o.payload)
                        .await
                    {
                        t::MqttPublishFailed {
                            topic: &o.topic,
                            error: &e,
                        }
                        .emit();
                    }
                }
                Effect::Serial(device, cmd) => {
                    if !self.ports.as_ref().is_some_and(|p| p.send(&device, cmd)) {
                        t::SerialThreadGone { device: &device }.emit();
                    }
                }
                Effect::Completed(c) => {
                    t::ActionFinished {
                        device: &c.request.device,
                        action_id: &c.request.action_id,
                        status: c.status.as_str(),
                        error: c.error.unwrap_or(""),
                    }
                    .emit();
                    if let Some(w) = self.waiters.remove(&c.request.action_id) {
                        let _ = w.send(c);
                    }
                }
                Effect::Event(_)
                | Effect::Presence(..)
                | Effect::Audit(_)
                | Effect::Mark(..)
                | Effect::Forget(_)
                | Effect::Lockout(..) => {}
            }
        }
        self.publish_views();
        let counters = self.hub.counters.clone();
        let overload = self.overload.load(Ordering::Relaxed);
        self.set_status(|s| {
            s.messages = counters.messages.load(Ordering::Relaxed);
            s.malformed = counters.malformed.load(Ordering::Relaxed);
            s.bridge_offline_ignored = counters.bridge_offline_ignored.load(Ordering::Relaxed);
            s.dropped_overload = overload;
        });
        Ok(())
    }

    /// Everything the hub's output asks to keep, as one commit: the events first, then what
    /// records them (presence, marks, audit, finished unlocks). One commit means a crash keeps
    /// all of it or none; ordered this way, a torn commit could only re-make events, never
    /// lose them (the same ids are re-derived for schedule moments).
    async fn stage_and_flush(&self, out: &Effects) -> Result<(), StoreError> {
        let mut c = Commit::new();
        let events = out.events();
        for e in &events {
            c.event((*e).clone());
        }
        for effect in &out.0 {
            match effect {
                Effect::Presence(device, reported) => {
                    c.put(device, reported)?;
                }
                Effect::Audit(entry) => crate::audit::append(&mut c, entry.clone()),
                Effect::Mark(id, marks) => {
                    c.put(id, marks)?;
                }
                Effect::Forget(id) => {
                    c.remove::<crate::schedule::Booking>(id);
                    c.remove::<crate::schedule::Marks>(id);
                }
                Effect::Lockout(reader, guard) => {
                    c.put(reader, guard)?;
                }
                // A finished ZenCore unlock is forgotten in the commit that stores its result,
                // so a crash can neither lose the result nor carry the unlock out twice.
                Effect::Completed(done)
                    if done.request.source == super::actions::Source::Zencore =>
                {
                    c.remove::<PendingUnlock>(&done.request.action_id);
                }
                Effect::Completed(_)
                | Effect::Event(_)
                | Effect::Publish(_)
                | Effect::Serial(..) => {}
            }
        }
        let committed = self.store.commit(c).await?;
        for (e, stored) in events.iter().zip(&committed.events) {
            if let Enqueued::Stored { seq, id } = stored {
                t::EventEnqueued {
                    sequence: *seq,
                    event_id: id,
                    event: e.kind().as_str(),
                }
                .emit();
            }
        }
        Ok(())
    }

    /// The context of one input: the clock read once, trusted or not, and the id source.
    fn ctx(&self) -> Ctx {
        let clock = self.clock.read();
        Ctx {
            now: clock.now,
            clock_trusted: clock.trusted,
            ids: super::new_action_id,
        }
    }

    fn publish_views(&self) {
        self.views.send_replace(self.hub.views());
    }

    fn set_status(&self, f: impl FnOnce(&mut MqttStatus)) {
        let attempts = self.attempts.load(Ordering::Relaxed);
        self.status.send_modify(|s| {
            let was_up = s.up();
            f(s);
            s.connect_attempts = attempts;
            if s.up() != was_up {
                s.since = Some(Millis::now().rfc3339());
            }
        });
    }
}

#[cfg(test)]
mod tests;
