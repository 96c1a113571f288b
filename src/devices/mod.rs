//! Devices: drivers, presence, actions, and the hub that ties them together.
//!
//! [`Hub`] is the devices machine with no I/O of its own: an MQTT message, a serial report, an
//! action request or the passing of time goes in; what to store, what to publish and which
//! actions finished come out as [`Effects`]. It keeps presence, actions and relocks itself and
//! routes the rest to the machines below it: a presented credential to `access::machine`, a
//! panel's action, a booking and ZenCore's state to `rooms`. The runtime feeds it and carries
//! out its effects: it stores and flushes, then acknowledges the input.

pub mod actions;
mod bridge;
mod credentials;
pub mod doors;
pub mod drivers;
pub mod presence;
mod rooms;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::config::{Config, Driver, DriverConfig};
use crate::event::{DeviceRef, Millis};
use crate::serial::types::{Cmd as SerialCmd, CredentialKind, Happening, LinkReason};
use crate::telemetry::{events as t, InternalEvent};
use crate::wire::{ActionCompleted, Data, DeviceOffline, DeviceOnline, NewEvent};
use actions::{Completed, Request, Start};
use drivers::{AvailSource, Command, LockState, Observation, Outgoing, Routes, TopicKind};
use presence::{Reason, Reported, Transition};

/// One thing the shell must do after feeding the hub: a closed set, so a shell that forgets one
/// does not compile.
#[derive(Debug, Clone)]
pub enum Effect {
    /// An event to store (events are stored in the order of their effects).
    Event(NewEvent),
    /// A device's presence record, stored with its event.
    Presence(String, Reported),
    /// A message to publish (after the commit).
    Publish(Outgoing),
    /// An action finished; its event is an earlier `Event`. Stored (a ZenCore unlock's pending
    /// record is removed with it), then answered to whoever waits on it.
    Completed(Completed),
    /// An access decision for the audit log.
    Audit(crate::audit::Entry),
    /// A command for a serial device's port thread.
    Serial(String, SerialCmd),
    /// A booking's marks, stored with the events of the status moments they record.
    Mark(String, crate::schedule::Marks),
    /// A booking long over, to delete.
    Forget(String),
    /// A panel's or reader's lockout state to store (DESIGN §2, guessing is bounded).
    Lockout(String, crate::access::lockout::Guard),
    /// A door's contact state as reported, stored with its `door.*` events.
    Door(String, doors::DoorRecord),
    /// A door held by passage mode (or let go: `None`), stored with its `access.passage`.
    Passage(String, Option<doors::PassageHold>),
}

impl Effect {
    /// Whether the shell must store it (one durable commit) before the input is acknowledged.
    /// Publishes and serial commands are not stored; everything else is.
    pub fn is_stored(&self) -> bool {
        !matches!(self, Effect::Publish(_) | Effect::Serial(..))
    }
}

/// What one input to the hub made: its effects, in order.
#[derive(Debug, Default, Clone)]
pub struct Effects(pub Vec<Effect>);

impl Effects {
    fn push(&mut self, effect: Effect) {
        self.0.push(effect);
    }

    pub fn merge(&mut self, other: Effects) {
        self.0.extend(other.0);
    }

    /// Whether any of it must be stored before the input is acknowledged.
    pub fn needs_commit(&self) -> bool {
        self.0.iter().any(Effect::is_stored)
    }

    /// The effects `pick` selects, in order (for tests and the shell's commit).
    fn pick<'a, T>(&'a self, pick: impl Fn(&'a Effect) -> Option<T>) -> Vec<T> {
        self.0.iter().filter_map(pick).collect()
    }

    pub fn events(&self) -> Vec<&NewEvent> {
        self.pick(|e| {
            if let Effect::Event(x) = e {
                Some(x)
            } else {
                None
            }
        })
    }

    pub fn publish(&self) -> Vec<&Outgoing> {
        self.pick(|e| {
            if let Effect::Publish(x) = e {
                Some(x)
            } else {
                None
            }
        })
    }

    pub fn completed(&self) -> Vec<&Completed> {
        self.pick(|e| {
            if let Effect::Completed(x) = e {
                Some(x)
            } else {
                None
            }
        })
    }

    pub fn audit(&self) -> Vec<&crate::audit::Entry> {
        self.pick(|e| {
            if let Effect::Audit(x) = e {
                Some(x)
            } else {
                None
            }
        })
    }

    pub fn presence(&self) -> Vec<(&str, &Reported)> {
        self.pick(|e| {
            if let Effect::Presence(d, r) = e {
                Some((d.as_str(), r))
            } else {
                None
            }
        })
    }

    pub fn lockouts(&self) -> Vec<(&str, &crate::access::lockout::Guard)> {
        self.pick(|e| {
            if let Effect::Lockout(d, g) = e {
                Some((d.as_str(), g))
            } else {
                None
            }
        })
    }
}

impl IntoIterator for Effects {
    type Item = Effect;
    type IntoIter = std::vec::IntoIter<Effect>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Everything that can happen to the devices machine.
#[derive(Debug)]
pub enum Input<'a> {
    /// An MQTT message. `retained`: a retained message replayed on subscribe says what was
    /// last published, not that the device is alive now.
    Message {
        topic: &'a str,
        payload: &'a [u8],
        retained: bool,
    },
    /// What a serial device's port thread reports.
    Serial {
        device: &'a str,
        happening: Happening,
    },
    /// Start an action (operator, ZenCore, a relock).
    Request(Request),
    /// Complete an action without trying it (a ZenCore unlock whose `not_after` passed while
    /// ZenEdge was down).
    Fail {
        request: Request,
        error: actions::ActionError,
    },
    /// A booking as ZenCore now describes it (already durable).
    Booking(crate::schedule::Booking),
    /// ZenCore's state for a room's panels.
    Explicit(crate::wire::panel::Explicit),
    /// A lockdown began (already durable), or is in force at start.
    Lockdown(crate::wire::Lockdown),
    /// A lockdown was lifted, by its id.
    LockdownLifted(String),
    /// Time passed: presence silence, action timeouts, relocks, the schedule's moments.
    Tick,
}

pub use crate::event::Ctx;

/// Counters the hub keeps for `/v1/status` and metrics.
#[derive(Debug, Default)]
pub struct HubCounters {
    pub messages: AtomicU64,
    pub malformed: AtomicU64,
    /// `bridge/state` "offline" messages the bridge itself contradicted (spoofed or stale).
    pub bridge_offline_ignored: AtomicU64,
}

/// How long a Zigbee2MQTT bridge has to answer the health check that follows its "offline"
/// before the offline is believed.
pub const BRIDGE_CHECK: std::time::Duration = std::time::Duration::from_secs(3);

/// A Tasmota strike's pulse when its `pulse` is not configured (PulseTime 50 is 5 s).
pub const TASMOTA_PULSE: std::time::Duration = std::time::Duration::from_secs(5);

/// One device as `zenedge devices` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeviceView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub driver: String,
    pub online: Option<bool>,
    pub reason: Option<String>,
    pub since: Option<String>,
    pub last_seen: Option<String>,
    pub last_state: Option<String>,
    pub last_state_at: Option<String>,
    pub pending_actions: Vec<String>,
    /// A panel or reader locked out after too many denied credentials: until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_out_until: Option<String>,
    /// Something about the device an operator must fix (a strike relay without a pulse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// A door with a contact, or a contact: `open`, `closed` or `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub door: Option<String>,
}

pub struct Hub {
    config: Arc<Config>,
    routes: Routes,
    presence: presence::Tracker,
    actions: actions::Tracker,
    last_state: HashMap<String, (LockState, Millis)>,
    index: HashMap<String, usize>,
    /// The access decision and what follows it (grants, lockouts).
    access: crate::access::machine::Machine,
    /// Locks to send again after an unlock's `duration_s`: (when, the lock request).
    relocks: Vec<(Millis, Request)>,
    /// The context of the input being handled (time, trust in the clock, the id source).
    ctx: Ctx,
    /// The schedule, the panels' displays, the status moments.
    rooms: crate::rooms::Machine,
    pub counters: Arc<HubCounters>,
    /// Tasmota strikes whose relay reported PulseTime 0: an unlock would leave them open.
    pulse_time_zero: std::collections::HashSet<String>,
    /// Bridges whose `bridge/state` said offline, by that topic: when ZenEdge asked them.
    bridge_checks: HashMap<String, Millis>,
    /// Doors with contacts: openings, forced and held open, relocks that wait for the close.
    doors: doors::Doors,
    /// Lockdowns in force (DESIGN §3).
    lockdowns: Vec<crate::wire::Lockdown>,
    /// Doors passage mode holds unlocked, by door: the booking.
    held: HashMap<String, String>,
    /// Held doors whose hold is sent again (after a restart), without a new event.
    rehold: std::collections::HashSet<String>,
    /// The rooms machine was fed: passage may have changed.
    rooms_touched: bool,
}

impl Hub {
    pub fn new(config: Arc<Config>, reported: HashMap<String, Reported>, now: Millis) -> Hub {
        let routes = Routes::new(&config);
        let presence = presence::Tracker::new(
            config.presence.debounce,
            now,
            config
                .devices
                .iter()
                // A serial device's silence is judged by its port thread, which polls it.
                .map(|d| {
                    let silence = d.offline_after.filter(|_| !d.driver().is_serial());
                    (d.id.clone(), silence, reported.get(&d.id).copied())
                }),
        );
        let index = config
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone(), i))
            .collect();
        let mut hub = Hub {
            routes,
            presence,
            // Zigbee2MQTT locks answer `/get`: asked before an action times out.
            actions: actions::Tracker::askable(
                config
                    .devices
                    .iter()
                    .filter(|d| d.driver() == Driver::Zigbee2mqtt)
                    .map(|d| d.id.clone()),
            ),
            last_state: HashMap::new(),
            index,
            access: crate::access::machine::Machine::new(&config),
            relocks: Vec::new(),
            ctx: Ctx {
                now,
                clock_trusted: true,
                ids: new_action_id,
            },
            rooms: crate::rooms::Machine::new(&config, now),
            config,
            counters: Arc::default(),
            bridge_checks: HashMap::new(),
            pulse_time_zero: Default::default(),
            doors: doors::Doors::default(),
            lockdowns: Vec::new(),
            held: HashMap::new(),
            rehold: Default::default(),
            rooms_touched: false,
        };
        hub.set_doors([]);
        hub
    }

    /// The doors with contacts, and their states as stored.
    pub fn set_doors(&mut self, records: impl IntoIterator<Item = (String, doors::DoorRecord)>) {
        let specs: Vec<doors::DoorSpec> = self
            .config
            .devices
            .iter()
            .filter_map(|d| {
                let contact = d.contact.clone()?;
                let (pulse, fixed_pulse) = match &d.settings {
                    DriverConfig::ModbusRelay(m) => (m.pulse, false),
                    DriverConfig::Osdp(o) => (o.output_pulse(), false),
                    DriverConfig::Shelly(s) => (s.pulse, false),
                    // PulseTime is the relay's own; `pulse` says what it is set to.
                    DriverConfig::Tasmota(t) => (t.pulse.unwrap_or(TASMOTA_PULSE), true),
                    // A motor lock: until it says it is unlocked (then that holds).
                    _ => (d.action_timeout, false),
                };
                Some(doors::DoorSpec {
                    door: d.id.clone(),
                    contact,
                    held_open_after: d.held_open_after,
                    pulse,
                    fixed_pulse,
                })
            })
            .collect();
        self.doors = doors::Doors::new(specs, self.config.access.entry_grace, records);
    }

    /// The panels' and readers' lockout state as stored.
    pub fn set_lockouts(
        &mut self,
        guards: impl IntoIterator<Item = (String, crate::access::lockout::Guard)>,
    ) {
        self.access.set_lockouts(guards);
    }

    pub fn set_grants(&mut self, grants: Vec<crate::access::Grant>) {
        self.access.set_grants(grants);
    }

    /// The hub's one entry: an input, in its context, gives the effects the shell carries out.
    /// The time, whether the clock is trusted, and the source of new ids all come from `ctx`:
    /// the hub reads no clock and draws no randomness of its own.
    pub fn handle(&mut self, input: Input<'_>, ctx: &Ctx) -> Effects {
        self.ctx = *ctx;
        let now = ctx.now;
        let mut out = self.dispatch(input, now);
        if std::mem::take(&mut self.rooms_touched) {
            out.merge(self.passage(now));
        }
        out
    }

    fn dispatch(&mut self, input: Input<'_>, now: Millis) -> Effects {
        match input {
            Input::Message {
                topic,
                payload,
                retained,
            } => self.on_message(topic, payload, retained, now),
            Input::Serial { device, happening } => self.serial(device, happening, now),
            Input::Request(request) => self.start(request, now),
            Input::Fail { request, error } => self.fail(request, error, now),
            Input::Booking(booking) => {
                let mut out = self.devices_tick(now);
                out.merge(self.rooms(crate::rooms::Input::Booking(booking)));
                out
            }
            Input::Explicit(explicit) => self.rooms(crate::rooms::Input::Explicit(explicit)),
            Input::Lockdown(l) => self.lockdown(l, now),
            Input::LockdownLifted(id) => self.lift_lockdown(&id),
            Input::Tick => {
                let mut out = self.devices_tick(now);
                out.merge(self.rooms(crate::rooms::Input::Tick));
                out
            }
        }
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    fn device_ref(&self, id: &str) -> Option<DeviceRef> {
        let d = self.config.devices.get(*self.index.get(id)?)?;
        Some(DeviceRef {
            id: d.id.clone(),
            kind: d.kind,
            meeting_space_id: d.meeting_space_id.clone(),
        })
    }

    /// One MQTT message. `retained`: a retained message replayed on subscribe says what was
    /// last published, not that the device is alive now.
    fn on_message(&mut self, topic: &str, payload: &[u8], retained: bool, now: Millis) -> Effects {
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        let mut out = Effects::default();
        let routes: Vec<(Option<usize>, TopicKind)> = self.routes.lookup(topic).to_vec();
        for (device, kind) in routes {
            let settings = device.and_then(|i| self.config.devices.get(i));
            let observation = match drivers::parse(kind, payload, settings) {
                Ok(o) => o,
                Err(error) => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    t::DeviceMessageMalformed {
                        topic,
                        error: &error,
                    }
                    .emit();
                    continue;
                }
            };
            let Some(i) = device else {
                out.merge(self.bridge(topic, observation, now));
                continue;
            };
            let Some(id) = self.config.devices.get(i).map(|d| d.id.clone()) else {
                continue;
            };
            match observation {
                Observation::Availability { online, source } => {
                    // DESIGN: an availability, LWT or status message saying online is reason
                    // `availability`; saying offline, a Last Will is `lwt`.
                    let reason = match (online, source) {
                        (true, _) | (false, AvailSource::Availability) => Reason::Availability,
                        (false, AvailSource::Lwt) => Reason::Lwt,
                    };
                    let t = self.presence.observe(&id, online, reason, now);
                    out.merge(self.transitions(t, now));
                }
                Observation::Contact { closed } => {
                    if !retained {
                        let t = self.presence.heard(&id, now);
                        out.merge(self.transitions(t, now));
                    }
                    // A retained report is the state the door was last seen in: compared with
                    // the stored one like any other, so a restart repeats nothing.
                    let outs = self.doors.contact(&id, closed, now);
                    out.merge(self.door_effects(outs, now));
                }
                Observation::State(state) => {
                    self.doors
                        .lock_state(&id, state == LockState::Unlocked, now);
                    self.last_state.insert(id.clone(), (state, now));
                    if !retained {
                        let t = self.presence.heard(&id, now);
                        out.merge(self.transitions(t, now));
                        let done = self.actions.observe(&id, state, now);
                        out.merge(self.completions(done));
                    }
                }
                Observation::Credential(v) => {
                    // A retained credential would replay a guest's token to every restart.
                    if !retained {
                        let t = self.presence.heard(&id, now);
                        out.merge(self.transitions(t, now));
                        out.merge(self.credential(&id, &v, now));
                    }
                }
                Observation::PulseTime(set) => {
                    let stuck = set == 0 && self.config.devices.get(i).is_some_and(|d| d.is_door());
                    if stuck && self.pulse_time_zero.insert(id.clone()) {
                        t::PulseTimeZero { device: &id }.emit();
                    } else if !stuck {
                        self.pulse_time_zero.remove(&id);
                    }
                }
                Observation::Heard => {
                    if !retained {
                        let t = self.presence.heard(&id, now);
                        out.merge(self.transitions(t, now));
                    }
                }
                Observation::PanelAction(v) => {
                    // A retained action would be replayed at every restart.
                    if !retained {
                        let t = self.presence.heard(&id, now);
                        out.merge(self.transitions(t, now));
                        out.merge(self.rooms(crate::rooms::Input::PanelAction {
                            panel: &id,
                            message: &v,
                        }));
                    }
                }
                // Only the bridge's own topic carries it (routed without a device above).
                Observation::BridgeHealth { .. } => {}
            }
        }
        out
    }

    /// Starts an action; its result arrives later in an [`Output`]'s `completed`.
    fn start(&mut self, request: Request, now: Millis) -> Effects {
        let Some(device) = self
            .index
            .get(&request.device)
            .and_then(|i| self.config.devices.get(*i))
        else {
            return Effects::default();
        };
        // A door passage holds stays held: another unlock of it is a hold too (a pulse would
        // end the passage's hold when it runs out).
        let hold = request.holds()
            || (request.command == Command::Unlock && self.held.contains_key(&request.device));
        let outgoing = drivers::command(
            &self.config,
            device,
            request.command,
            request.duration_s,
            hold,
        );
        // A relay board always has a coil; a reader only opens a door wired to its output.
        let serial = match device.driver() {
            Driver::ModbusRelay => true,
            Driver::Osdp => device.is_door(),
            _ => false,
        };
        let serial_cmd = (
            request.device.clone(),
            match request.command {
                Command::Unlock if hold => SerialCmd::Hold,
                Command::Unlock => SerialCmd::Unlock {
                    pulse: request.duration_s.map(std::time::Duration::from_secs),
                },
                Command::Lock => SerialCmd::Lock,
            },
        );
        let timeout = device.action_timeout;
        let (command, duration_s, device_id) =
            (request.command, request.duration_s, request.device.clone());
        let online = self.presence.is_online(&request.device);
        match self
            .actions
            .request(request, online, outgoing.is_some() || serial, timeout, now)
        {
            Start::Send => {
                if command == Command::Unlock {
                    self.doors.unlock_sent(&device_id, duration_s, now);
                }
                let mut out = Effects::default();
                out.0.extend(outgoing.map(Effect::Publish));
                if serial {
                    out.push(Effect::Serial(serial_cmd.0, serial_cmd.1));
                }
                out
            }
            Start::Done(c) => self.completions(vec![c]),
        }
    }

    /// What a serial device's port thread reports.
    fn serial(&mut self, device: &str, happening: Happening, now: Millis) -> Effects {
        if !self.index.contains_key(device) {
            return Effects::default();
        }
        let reason = |r: LinkReason| match r {
            LinkReason::PortOpened => Reason::PortOpened,
            LinkReason::PortClosed => Reason::PortClosed,
            LinkReason::PollReply => Reason::PollReply,
            LinkReason::PollTimeout => Reason::PollTimeout,
        };
        match happening {
            Happening::Online(r) => {
                let t = self.presence.observe(device, true, reason(r), now);
                self.transitions(t, now)
            }
            Happening::Offline(r) => {
                let t = self.presence.observe(device, false, reason(r), now);
                let mut out = self.transitions(t, now);
                // Actions waiting on a device that is gone fail now, also while the offline
                // transition itself is still being debounced.
                let done = self.actions.offline(device, now);
                out.merge(self.completions(done));
                out
            }
            Happening::Contact { closed } => {
                let outs = self.doors.contact(device, closed, now);
                self.door_effects(outs, now)
            }
            Happening::Relay { on } => {
                self.doors.lock_state(device, on, now);
                let state = if on {
                    LockState::Unlocked
                } else {
                    LockState::Locked
                };
                self.last_state.insert(device.to_owned(), (state, now));
                Effects::default()
            }
            Happening::Done { cmd, result } => {
                let command = match cmd {
                    SerialCmd::Unlock { .. } | SerialCmd::Hold => Command::Unlock,
                    SerialCmd::Lock => Command::Lock,
                    SerialCmd::Feedback { .. } => return Effects::default(),
                };
                let done = match result {
                    Ok(()) => {
                        let state = match command {
                            Command::Unlock => LockState::Unlocked,
                            Command::Lock => LockState::Locked,
                        };
                        self.last_state.insert(device.to_owned(), (state, now));
                        self.actions.observe(device, state, now)
                    }
                    Err(error) => {
                        t::SerialCommandFailed {
                            device,
                            command: command.as_str(),
                            error: &error,
                        }
                        .emit();
                        self.actions
                            .failed(device, command, error.action_error(), now)
                    }
                };
                self.completions(done)
            }
            Happening::CardUnreadable { error } => {
                t::CardUnreadable {
                    device,
                    error: &error,
                }
                .emit();
                self.access(
                    crate::access::machine::Input::Unreadable {
                        reader: device.to_owned(),
                        answer: crate::access::machine::Answer::Reader,
                    },
                    now,
                )
            }
            Happening::Credential { kind, value } => {
                use crate::access::Credential;
                let credential = match kind {
                    CredentialKind::Pin => Credential::Pin(value),
                    CredentialKind::Card => Credential::Card(value),
                };
                self.access(
                    crate::access::machine::Input::Present {
                        reader: device.to_owned(),
                        credential,
                        answer: crate::access::machine::Answer::Reader,
                    },
                    now,
                )
            }
        }
    }

    pub fn knows(&self, device: &str) -> bool {
        self.index.contains_key(device)
    }

    /// Time passed for the devices: the bridge checks, presence, lockouts, action timeouts,
    /// relocks (the rooms' schedule follows it).
    fn devices_tick(&mut self, now: Millis) -> Effects {
        let unanswered: Vec<String> = self
            .bridge_checks
            .iter()
            .filter(|(_, asked)| asked.saturating_add(BRIDGE_CHECK) <= now)
            .map(|(t, _)| t.clone())
            .collect();
        let mut out = Effects::default();
        for topic in unanswered {
            self.bridge_checks.remove(&topic);
            t::BridgeUnanswered { topic: &topic }.emit();
            out.merge(self.bridge_offline(&topic, now));
        }
        let t = self.presence.tick(now);
        out.merge(self.transitions(t, now));
        out.merge(self.access(crate::access::machine::Input::Tick, now));
        let done = self.actions.tick(now);
        out.merge(self.completions(done));
        for device in self.actions.take_asks() {
            let query = self
                .index
                .get(&device)
                .and_then(|i| self.config.devices.get(*i))
                .and_then(|d| drivers::state_query(&self.config, d));
            out.0.extend(query.map(Effect::Publish));
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.relocks)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.relocks = later;
        for (_, request) in due {
            if self.held.contains_key(&request.device) {
                continue;
            }
            // A door is relocked once it is shut (DESIGN §3).
            let outs = self.doors.relock(request);
            out.merge(self.door_effects(outs, now));
        }
        let outs = self.doors.tick(now);
        out.merge(self.door_effects(outs, now));
        out
    }

    /// The room a device is in: its own, else the controller's.
    fn room_of<'a>(&'a self, d: &'a crate::config::DeviceConfig) -> &'a str {
        d.meeting_space_id
            .as_deref()
            .unwrap_or(&self.config.controller.meeting_space_id)
    }

    /// A lockdown: every door in its scope is locked at once (open or not: nothing waits for a
    /// contact), its panels show it, local credentials there are denied until it is lifted.
    fn lockdown(&mut self, l: crate::wire::Lockdown, now: Millis) -> Effects {
        self.lockdowns.retain(|x| x.lockdown_id != l.lockdown_id);
        self.lockdowns.push(l.clone());
        self.access.set_lockdowns(self.lockdowns.clone());
        let mut out = self.rooms(crate::rooms::Input::Lockdowns(self.lockdowns.clone()));
        let doors: Vec<String> = self
            .config
            .devices
            .iter()
            .filter(|d| d.is_door() && l.covers(self.room_of(d)))
            .map(|d| d.id.clone())
            .collect();
        t::LockdownBegan {
            lockdown_id: &l.lockdown_id,
            scope: l.meeting_space_id.as_deref().unwrap_or("controller"),
            doors: doors.len(),
        }
        .emit();
        for (i, door) in doors.into_iter().enumerate() {
            // Relocks that waited for the door to shut are moot: it locks now. A passage's
            // end that waited is reported with this lock.
            for r in self.doors.drop_waiting(&door) {
                out.0.extend(self.passage_ended(&r, now));
            }
            self.relocks.retain(|(_, r)| r.device != door);
            let request = Request {
                action_id: format!("{}:{i}", (self.ctx.ids)()),
                device: door,
                command: Command::Lock,
                source: actions::Source::Lockdown,
                booking_id: None,
                grant_id: None,
                duration_s: None,
            };
            out.merge(self.start(request, now));
        }
        out
    }

    fn lift_lockdown(&mut self, id: &str) -> Effects {
        let before = self.lockdowns.len();
        self.lockdowns.retain(|x| x.lockdown_id != id);
        t::LockdownLifted {
            lockdown_id: id,
            known: before != self.lockdowns.len(),
        }
        .emit();
        self.access.set_lockdowns(self.lockdowns.clone());
        self.rooms(crate::rooms::Input::Lockdowns(self.lockdowns.clone()))
    }

    /// The doors' outputs as the hub's effects.
    fn door_effects(&mut self, outs: Vec<doors::Out>, now: Millis) -> Effects {
        let mut out = Effects::default();
        for o in outs {
            match o {
                doors::Out::Event { door, data, at } => {
                    let Some(device) = self.device_ref(&door) else {
                        continue;
                    };
                    let door = door.as_str();
                    match &data {
                        Data::DoorOpened(e) => t::DoorOpened {
                            door,
                            contact: &e.contact_id,
                        }
                        .emit(),
                        Data::DoorClosed(e) => t::DoorClosed {
                            door,
                            contact: &e.contact_id,
                        }
                        .emit(),
                        Data::DoorForcedOpen(e) => t::DoorForcedOpen {
                            door,
                            contact: &e.contact_id,
                        }
                        .emit(),
                        Data::DoorHeldOpen(e) => t::DoorHeldOpen {
                            door,
                            contact: &e.contact_id,
                        }
                        .emit(),
                        _ => {}
                    }
                    out.push(Effect::Event(NewEvent::new(data, Some(device), at)));
                }
                doors::Out::Record(door, record) => out.push(Effect::Door(door, record)),
                doors::Out::Send(request) => {
                    // A passage's end: its lock goes now, and says so.
                    out.0.extend(self.passage_ended(&request, now));
                    out.merge(self.start(request, now))
                }
                doors::Out::RelockBlind { door, contact } => t::RelockBlind {
                    door: &door,
                    contact: &contact,
                }
                .emit(),
            }
        }
        out
    }

    pub fn next_deadline(&self) -> Option<Millis> {
        [
            self.presence.next_deadline(),
            self.actions.next_deadline(),
            self.relocks.iter().map(|(at, _)| *at).min(),
            self.rooms.next_deadline(),
            self.doors.next_deadline(),
            self.bridge_checks
                .values()
                .map(|asked| asked.saturating_add(BRIDGE_CHECK))
                .min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Completes an action without trying it (an accepted unlock whose `not_after` passed
    /// while ZenEdge was down).
    fn fail(&mut self, request: Request, error: actions::ActionError, now: Millis) -> Effects {
        self.completions(vec![Completed {
            request,
            status: actions::Status::Failed,
            requested_at: now,
            completed_at: now,
            error: Some(error),
        }])
    }

    fn transitions(&mut self, ts: Vec<Transition>, now: Millis) -> Effects {
        let mut out = Effects::default();
        for t in ts {
            let Some(device) = self.device_ref(t.device()) else {
                continue;
            };
            let last_seen = self.presence.last_seen(t.device());
            out.push(Effect::Presence(
                t.device().to_owned(),
                t.reported(last_seen),
            ));
            let event = match &t {
                Transition::Online {
                    reason,
                    at,
                    offline_since,
                    ..
                } => NewEvent::new(
                    Data::DeviceOnline(DeviceOnline {
                        reason: *reason,
                        offline_since: *offline_since,
                    }),
                    Some(device),
                    *at,
                ),
                Transition::Offline {
                    reason,
                    last_seen,
                    detected_at,
                    ..
                } => {
                    let id = t.device().to_owned();
                    // A door whose contact is gone relocks without waiting for it.
                    let outs = self.doors.contact_offline(&id);
                    let relocked = self.door_effects(outs, now);
                    let done = self.actions.offline(&id, now);
                    let completions = self.completions(done);
                    let data = Data::DeviceOffline(DeviceOffline {
                        reason: *reason,
                        last_seen: *last_seen,
                        detected_at: *detected_at,
                    });
                    let e = NewEvent::new(data, Some(device), *detected_at);
                    out.push(Effect::Event(e));
                    out.merge(completions);
                    out.merge(relocked);
                    continue;
                }
            };
            out.push(Effect::Event(event));
            // A door passage holds comes back unheld (a relay board switches its coil off when
            // its port opens; a hold sent while it was away failed): held again.
            if let Some(booking) = self.held.get(t.device()).cloned() {
                let request = self.passage_request(t.device(), &booking, Command::Unlock);
                out.merge(self.start(request, now));
            }
            // A device that comes (back) online is asked what it may not say on its own: a
            // Zigbee lock its state, a Tasmota relay its PulseTime (reset by a re-flash).
            if let Some(d) = self
                .index
                .get(t.device())
                .and_then(|i| self.config.devices.get(*i))
            {
                out.0.extend(
                    drivers::connect_queries(&self.config, d)
                        .into_iter()
                        .map(Effect::Publish),
                );
            }
        }
        out
    }

    fn completions(&mut self, done: Vec<Completed>) -> Effects {
        let mut out = Effects::default();
        for c in done {
            self.schedule_relock(&c);
            let Some(device) = self.device_ref(&c.request.device) else {
                continue;
            };
            let data = Data::ActionCompleted(ActionCompleted {
                action_id: c.request.action_id.clone(),
                action: c.request.command,
                status: c.status,
                source: c.request.source,
                requested_at: c.requested_at,
                completed_at: c.completed_at,
                duration_ms: c.duration_ms(),
                booking_id: c.request.booking_id.clone(),
                grant_id: c.request.grant_id.clone(),
                error: c.error,
            });
            out.push(Effect::Event(NewEvent::new(
                data,
                Some(device),
                c.completed_at,
            )));
            out.push(Effect::Completed(c));
        }
        out
    }

    /// DESIGN: for a `zigbee2mqtt` or `homeassistant` lock, an unlock with `duration_s` is
    /// followed by `LOCK` that many seconds later, reported as its own action
    /// (`<action_id>:relock`, same source). Relays time their own pulse.
    fn schedule_relock(&mut self, c: &Completed) {
        let Some(secs) = c.request.duration_s else {
            return;
        };
        if self.held.contains_key(&c.request.device) {
            // Passage holds the door: it locks at the booking's end, not now.
            return;
        }
        if c.request.command != Command::Unlock || c.status != actions::Status::Succeeded {
            return;
        }
        let relockable = self
            .index
            .get(&c.request.device)
            .and_then(|i| self.config.devices.get(*i))
            .is_some_and(|d| matches!(d.driver(), Driver::Zigbee2mqtt | Driver::Homeassistant));
        if !relockable {
            return;
        }
        let request = Request {
            action_id: format!("{}:relock", c.request.action_id),
            command: Command::Lock,
            duration_s: None,
            ..c.request.clone()
        };
        self.relocks.push((
            c.completed_at
                .saturating_add(std::time::Duration::from_secs(secs)),
            request,
        ));
    }

    pub fn views(&self) -> Vec<DeviceView> {
        self.config
            .devices
            .iter()
            .map(|d| {
                let p = self.presence.view(&d.id);
                let state = self.last_state.get(&d.id);
                DeviceView {
                    id: d.id.clone(),
                    kind: d.kind.as_str().into(),
                    driver: d.driver().as_str().into(),
                    online: p.as_ref().and_then(|p| p.online),
                    reason: p.as_ref().and_then(|p| p.reason.map(String::from)),
                    since: p.as_ref().and_then(|p| p.since.clone()),
                    last_seen: p.as_ref().and_then(|p| p.last_seen.clone()),
                    last_state: state.map(|(s, _)| s.as_str().into()),
                    last_state_at: state.map(|(_, t)| t.rfc3339()),
                    pending_actions: self
                        .actions
                        .pending_for(&d.id)
                        .iter()
                        .map(|r| format!("{} {}", r.command.as_str(), r.action_id))
                        .collect(),
                    locked_out_until: self.access.locked_until(&d.id).map(|t| t.rfc3339()),
                    warning: d
                        .tasmota()
                        .filter(|_| self.pulse_time_zero.contains(&d.id))
                        .map(|t| {
                            format!(
                                "PulseTime{0} is 0: the relay stays on after an unlock; set it \
                                 on the device (e.g. PulseTime{0} 50 for 5 s)",
                                t.relay
                            )
                        }),
                    door: self.doors.view(&d.id).map(String::from),
                }
            })
            .collect()
    }
}

/// A new action id for operator actions: `act_` + a ULID.
pub fn new_action_id() -> String {
    format!("act_{}", ulid::Ulid::new())
}

/// The command a panel or operator asks for.
pub fn command_from(name: &str) -> Option<Command> {
    match name {
        "unlock" => Some(Command::Unlock),
        "lock" => Some(Command::Lock),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
