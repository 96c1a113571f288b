//! The runtime: one loop that owns the device hub and carries out what it asks for.
//!
//! The adapters — the MQTT link (`mqtt`), the serial ports (`serial`), the inbound
//! endpoint and the admin API (through [`HubRequest`]s) — pass what happens to this loop, which
//! reads the clock once per input, feeds the hub (`Hub::handle`), makes the hub's effects that
//! must be kept durable in one commit, and only then acknowledges MQTT messages, publishes,
//! drives serial ports and answers whoever waits. It also carries out, at start, the ZenCore
//! unlocks accepted before a crash.
//!
//! Messages are taken in batches: each is fed to the hub, the batch's effects are stored with
//! one flush, and only then are its QoS 1 messages acknowledged, in the order they arrived. A
//! crash before the flush leaves them unacknowledged, and the broker delivers them again to the
//! persistent session.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::devices::actions::{Completed, PendingUnlock, Request};
use crate::devices::drivers::{status_topic, Routes};
use crate::devices::{Ctx, DeviceView, Effect, Effects, Hub, Input as HubInput};
use crate::event::Millis;
use crate::mqtt::{self, LinkEvent, MqttSetupError, MqttStatus, SessionWatch};
use crate::store::{Commit, Enqueued, Store, StoreError};
use crate::telemetry::{events as t, InternalEvent};

pub mod housekeeping;
pub mod supervise;

/// Why the runtime stopped before it was asked to (the daemon then exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The MQTT link's poll task ended: no device message can arrive any more.
    #[error("the MQTT link's poll task stopped: {0}")]
    LinkStopped(String),
}

/// Messages handled per flush.
const BATCH: usize = 512;

/// A request to the runtime from the admin API or the inbound endpoint.
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
    /// A lockdown began (already durable).
    Lockdown(crate::wire::Lockdown),
    /// A lockdown was lifted (its record already removed), by its id.
    LockdownLifted(String),
}

/// The handles other parts of the daemon hold.
#[derive(Clone)]
pub struct MqttHandle {
    pub requests: mpsc::Sender<HubRequest>,
    pub views: watch::Receiver<Vec<DeviceView>>,
    pub status: watch::Receiver<MqttStatus>,
}

/// What the adapters tell the runtime: one closed set of inputs, each handled in arrival order.
#[derive(Debug)]
pub enum Input {
    /// The MQTT link: connected, subscribed, a message, lost.
    Mqtt(LinkEvent),
    /// A serial port's thread.
    Serial(crate::serial::Report),
}

/// Starts the MQTT link, the serial ports and the hub. Returns the handles and a future that runs until
/// `shutdown`, then publishes ZenEdge's `offline` and disconnects.
pub async fn start(
    config: Arc<Config>,
    store: Store,
    clock: Arc<crate::clock::Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(MqttHandle, impl Future<Output = Result<(), RuntimeError>>), MqttSetupError> {
    let (input_tx, input_rx) = mpsc::unbounded_channel();
    let mqtt_tx = input_tx.clone();
    let link = mqtt::connect(&config, move |e| mqtt_tx.send(Input::Mqtt(e)).is_ok())?;
    let (requests_tx, requests_rx) = mpsc::channel(64);
    let (views_tx, views) = watch::channel(Vec::new());
    let (status_tx, status) = watch::channel(MqttStatus {
        needed: !Routes::new(&config).is_empty(),
        since: Some(Millis::now().rfc3339()),
        ..MqttStatus::default()
    });
    let serial_tx = input_tx;
    let ports =
        crate::serial::Ports::start(&config, move |r| serial_tx.send(Input::Serial(r)).is_ok())?;
    let (reported, grants, bookings, marks, lockouts, doors, passage) = store
        .read(|s| {
            Ok((
                s.records::<crate::devices::presence::Reported>()?,
                s.records::<crate::access::Grant>()?,
                s.records::<crate::schedule::Booking>()?,
                s.records::<crate::schedule::Marks>()?,
                s.records::<crate::access::lockout::Guard>()?,
                s.records::<crate::devices::doors::DoorRecord>()?,
                s.records::<crate::devices::doors::PassageHold>()?,
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
    hub.set_doors(doors);
    hub.set_passage(passage);
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
    let poll = link.poll;
    let runtime = Runtime {
        sessions: SessionWatch::default(),
        overload: link.overload,
        qos0_waiting: link.qos0_waiting,
        config,
        store,
        client: link.client,
        hub,
        views: views_tx,
        status: status_tx,
        attempts: link.attempts,
        waiters: HashMap::new(),
        clock,
        ports: Some(ports),
    };
    let run = runtime.run(input_rx, requests_rx, poll, shutdown);
    Ok((handle, run))
}

/// Splits a batch, in order, into runs in which each topic's acknowledged messages appear at
/// most once. A crash after a run's commit and before its acks makes the broker deliver the run
/// again; with one message per topic, each one finds its effect already stored (the device is
/// already in that state) and changes nothing. Two messages of one device in one run would be
/// replayed as a transition and its reverse, reported a second time.
fn one_per_topic(batch: Vec<Input>) -> Vec<Vec<Input>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut topics = std::collections::HashSet::new();
    for item in batch {
        if let Input::Mqtt(LinkEvent::Message(p)) = &item {
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

struct Runtime {
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

impl Runtime {
    async fn run(
        mut self,
        mut incoming: mpsc::UnboundedReceiver<Input>,
        mut requests: mpsc::Receiver<HubRequest>,
        mut poll: tokio::task::JoinHandle<()>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RuntimeError> {
        let result = self
            .serve(&mut incoming, &mut requests, &mut poll, shutdown)
            .await;
        poll.abort();
        result
    }

    async fn serve(
        &mut self,
        incoming: &mut mpsc::UnboundedReceiver<Input>,
        requests: &mut mpsc::Receiver<HubRequest>,
        poll: &mut tokio::task::JoinHandle<()>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RuntimeError> {
        tokio::pin!(shutdown);
        self.publish_views();
        if std::env::var("ZENEDGE_FAULT").as_deref() == Ok("device-task-ends") {
            // The fault hook: the device task ends as a store failure would end it.
            return Err(StoreError::WriterGone.into());
        }
        // ZenCore unlocks accepted before a crash and never completed: carry them out, or
        // report them expired.
        let (unlocks, lockdowns) = self
            .store
            .read(|s| {
                Ok((
                    s.records::<PendingUnlock>()?,
                    s.records::<crate::wire::Lockdown>()?,
                ))
            })
            .await?;
        for (_, u) in unlocks {
            let ctx = self.ctx();
            let input = if u.not_after <= ctx.now {
                t::UnlockExpiredAtRestart {
                    action_id: &u.action_id,
                }
                .emit();
                HubInput::Fail {
                    request: u.request(),
                    error: crate::wire::ActionError::Expired,
                }
            } else {
                t::UnlockResumed {
                    action_id: &u.action_id,
                }
                .emit();
                HubInput::Request(u.request())
            };
            let out = self.hub.handle(input, &ctx);
            self.apply(out, Vec::new()).await?;
        }
        // Lockdowns in force survive a restart: their locks are sent again (one accepted just
        // before a crash may never have reached its locks).
        for (_, l) in lockdowns {
            self.step(HubInput::Lockdown(l)).await?;
        }
        // The rooms' schedule as stored: moments due while ZenCore or ZenEdge was down, and
        // every panel's display right away.
        self.step(HubInput::Tick).await?;
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
                // The poll task ends only with the runtime; before it, it panicked, and no
                // device message can arrive any more: essential, so the process ends non-zero.
                r = &mut *poll => {
                    let why = match r {
                        Ok(()) => "it returned".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    return Err(RuntimeError::LinkStopped(why));
                }
                // A request first: a command ZenCore was answered 202 for (a revoke, a grant, a
                // booking, a lockdown) is in force before any device message that arrives
                // after that answer — a PIN typed after a revoke's 202 is denied.
                Some(request) = requests.recv() => {
                    match request {
                        HubRequest::Action { request, reply } => {
                            if let Some(reply) = reply {
                                self.waiters.insert(request.action_id.clone(), reply);
                            }
                            self.step(HubInput::Request(request)).await?;
                        }
                        HubRequest::Grants(grants) => self.hub.set_grants(grants),
                        HubRequest::Booking(b) => self.step(HubInput::Booking(b)).await?,
                        HubRequest::Explicit(e) => self.step(HubInput::Explicit(e)).await?,
                        HubRequest::Lockdown(l) => self.step(HubInput::Lockdown(l)).await?,
                        HubRequest::LockdownLifted(id) => {
                            self.step(HubInput::LockdownLifted(id)).await?
                        }
                    }
                }
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
                _ = tokio::time::sleep(sleep_for.unwrap_or_default()), if sleep_for.is_some() => {
                    self.step(HubInput::Tick).await?;
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

    /// One input that acknowledges nothing (a request, a tick): fed to the hub in a fresh
    /// context, its effects carried out.
    async fn step(&mut self, input: HubInput<'_>) -> Result<(), StoreError> {
        let out = self.hub.handle(input, &self.ctx());
        self.apply(out, Vec::new()).await
    }

    async fn handle_batch(&mut self, batch: Vec<Input>) -> Result<(), StoreError> {
        let mut out = Effects::default();
        let mut to_ack = Vec::new();
        for item in batch {
            match item {
                Input::Mqtt(LinkEvent::Connected) => {
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
                Input::Mqtt(LinkEvent::Subscribed) => self.set_status(|s| s.subscribed = true),
                Input::Mqtt(LinkEvent::Disconnected(error)) => {
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
                Input::Serial(r) => {
                    let input = HubInput::Serial {
                        device: &r.device,
                        happening: r.happening,
                    };
                    out.merge(self.hub.handle(input, &self.ctx()));
                }
                Input::Mqtt(LinkEvent::Message(p)) => {
                    if p.qos == QoS::AtMostOnce {
                        self.qos0_waiting.fetch_sub(1, Ordering::AcqRel);
                    }
                    let input = HubInput::Message {
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
        // Locks that report rarely are asked for their state, relays for their PulseTime.
        for d in &self.config.devices {
            for q in crate::devices::drivers::connect_queries(&self.config, d) {
                if let Err(e) = self
                    .client
                    .publish(q.topic, QoS::AtLeastOnce, false, q.payload)
                    .await
                {
                    t::MqttOnlineFailed { error: &e }.emit();
                }
            }
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
                        error: c.error.map_or("", |e| e.as_str()),
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
                | Effect::Lockout(..)
                | Effect::Door(..)
                | Effect::Passage(..) => {}
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
                Effect::Audit(entry) => crate::audit_log::append(&mut c, entry.clone()),
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
                Effect::Door(door, record) => {
                    c.put(door, record)?;
                }
                Effect::Passage(door, Some(hold)) => {
                    c.put(door, hold)?;
                }
                Effect::Passage(door, None) => {
                    c.remove::<crate::devices::doors::PassageHold>(door);
                }
                // A finished ZenCore unlock is forgotten in the commit that stores its result,
                // so a crash can neither lose the result nor carry the unlock out twice.
                Effect::Completed(done)
                    if done.request.source == crate::devices::actions::Source::Zencore =>
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
            ids: crate::devices::new_action_id,
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
