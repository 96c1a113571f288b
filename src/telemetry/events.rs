//! Every observable happening of the daemon as a type (vector's "internal events"): its `emit`
//! writes the one log line and moves the metric that goes with it, so neither can be forgotten
//! and the two never disagree. A module that has something to say builds one of these; no other
//! module calls `tracing`'s macros (`logging` and the CLI's own output aside).
//!
//! Fields are written with their `Display` form; an error field is always `error`.

use std::fmt::Display;

use super::{inc, metrics};

/// A happening worth a log line (and maybe a counter).
pub trait InternalEvent: Sized {
    fn emit(self);
}

/// How a field goes into a log line: text as text (quoted on stderr, so a value with spaces
/// stays one value), numbers and flags as themselves, anything else by its `Display`.
pub trait LogValue {
    fn log_value(&self) -> Box<dyn tracing::Value + '_>;
}

impl LogValue for &str {
    fn log_value(&self) -> Box<dyn tracing::Value + '_> {
        Box::new(*self)
    }
}

impl LogValue for &dyn Display {
    fn log_value(&self) -> Box<dyn tracing::Value + '_> {
        Box::new(tracing::field::display(*self))
    }
}

macro_rules! plain_values {
    ($($t:ty),*) => {$(
        impl LogValue for $t {
            fn log_value(&self) -> Box<dyn tracing::Value + '_> {
                Box::new(*self as u64)
            }
        }
    )*};
}
plain_values!(u8, u16, u32, u64, usize);

impl LogValue for bool {
    fn log_value(&self) -> Box<dyn tracing::Value + '_> {
        Box::new(*self)
    }
}

/// Declares happenings: `Name { field: Type, .. } => LEVEL "message", counter;` gives a struct
/// with public fields whose `emit` logs `message` at `LEVEL` with every field, and adds one to
/// `Metrics::counter` when one is named.
macro_rules! happenings {
    ($(
        $(#[$meta:meta])*
        $name:ident $(<$lt:lifetime>)? { $($field:ident : $ty:ty),* $(,)? }
            => $level:ident $message:literal $(, $counter:ident)?;
    )*) => {$(
        $(#[$meta])*
        pub struct $name $(<$lt>)? { $(pub $field: $ty),* }

        impl $(<$lt>)? InternalEvent for $name $(<$lt>)? {
            fn emit(self) {
                $( inc(&metrics().$counter, 1); )?
                tracing::event!(
                    tracing::Level::$level,
                    message = $message
                    $(, $field = self.$field.log_value())*
                );
            }
        }
    )*};
}

// The daemon: start, stop, reload, supervision.
happenings! {
    RecordsUndecodable { count: usize }
        => ERROR "Some stored records cannot be decoded; they are kept and not used (zenedge status lists them).";
    EmbeddedBrokerStarted<'a> { host: &'a str, port: u16, anonymous: bool }
        => INFO "Embedded MQTT broker started.";
    EmbeddedBrokerStopped<'a> { error: &'a dyn Display }
        => ERROR "Embedded MQTT broker stopped.";
    /// A test hook is active (`ZENEDGE_FAULT`).
    FaultHook<'a> { hook: &'a str }
        => WARN "Fault hook active.";
    ConfigRejected<'a> { error: &'a dyn Display }
        => ERROR "New config rejected; the running one stays.";
    ConfigNeedsRestart {}
        => ERROR "controller.state_dir and mqtt.embedded change only with a restart; the running config stays.";
    ConfigReloading { devices: usize }
        => INFO "Reloading the config.";
    ConfigWarning<'a> { warning: &'a str }
        => WARN "Config warning.";
    Stopping {} => INFO "Stopping.";
    Stopped {} => INFO "Stopped.";
    Running<'a> {
        controller_id: &'a str,
        admin: &'a dyn Display,
        admin_socket: &'a dyn Display,
        inbound: &'a dyn Display,
        webhook_url: &'a dyn Display,
        last_sequence: u64,
    } => INFO "ZenEdge is running.";
    /// An adapter failed and is started again after `retry_in_ms`.
    AdapterRestarting<'a> { adapter: &'a str, error: &'a dyn Display, retry_in_ms: u64, restarts: u64 }
        => WARN "An adapter stopped; restarting it with backoff.", adapter_restarts;
    /// An adapter without which the daemon is useless stopped: the process ends non-zero so
    /// that systemd restarts it.
    EssentialStopped<'a> { adapter: &'a str, error: &'a dyn Display }
        => ERROR "An essential task stopped; exiting so that ZenEdge is restarted.";
    ShutdownError<'a> { adapter: &'a str, error: &'a dyn Display }
        => ERROR "A task ended on an error while stopping.";
    SignalHandlersMissing {}
        => ERROR "Cannot install signal handlers; stopping on Ctrl-C only.";
    DaemonFailed<'a> { error: &'a str }
        => ERROR "ZenEdge stopped on an error.";
    SystemdNotifyFailed<'a> { error: &'a dyn Display }
        => WARN "Cannot notify systemd.";
    WatchdogWithheld { delivery_alive: bool, devices_alive: bool }
        => ERROR "A critical task has stopped making progress; withholding the systemd watchdog.";
    DeliveredRemoved { count: u64 }
        => INFO "Delivered events past retention removed.";
}

// The store.
happenings! {
    StoreFailed<'a> { context: &'a str, error: &'a dyn Display }
        => ERROR "Store operation failed.";
    StoreNotClosedCleanly {}
        => WARN "The store was not closed cleanly; checking and repairing it.";
    SequenceFloorUnreadable<'a> { path: &'a dyn Display }
        => WARN "Sequence floor file is unreadable; ignoring it.";
    StateDirTightened<'a> { path: &'a dyn Display, mode: &'a str }
        => WARN "The state directory was readable by others; tightened to 0700.";
    RecordUndecodable<'a> { family: &'a str, key: &'a str, error: &'a dyn Display }
        => ERROR "A stored record cannot be decoded; it is kept as it is and not used.";
    RecordKeptAside<'a> { family: &'a str, key: &'a str, kept_as: &'a str }
        => WARN "An undecodable record was about to be replaced; its bytes are kept aside.";
    SledStoreMovedAside<'a> { path: &'a dyn Display, moved_to: &'a dyn Display }
        => WARN "Found a sled store from an earlier build; moving it aside (its events are not migrated).";
    StoreCorrupt<'a> { path: &'a dyn Display, moved_to: &'a dyn Display, error: &'a dyn Display }
        => ERROR "Store is corrupt; moving it aside and starting a fresh one.";
    EventUnreadable { sequence: u64 }
        => ERROR "Stored event is unreadable; moving it to dead letters.";
    GroupCommitFailed<'a> { error: &'a dyn Display }
        => WARN "A group commit failed; applying its commits one by one.";
    PresenceEventDropped<'a> { sequence: u64, event: &'a str }
        => WARN "Store is full; presence event dropped.";
    PresenceEventsReclaimed { from_sequence: u64, to_sequence: u64, count: u64 }
        => WARN "Store over its byte budget; oldest presence events dropped.";
    StoreFullOfUndroppable { live_bytes: u64, max_store_bytes: u64 }
        => ERROR "Store is full of events that may not be dropped; new presence events will be dropped.";
}

// Delivery to ZenCore.
happenings! {
    EventEnqueued<'a> { sequence: u64, event_id: &'a str, event: &'a str }
        => DEBUG "Event stored.", events_enqueued;
    DeadLettered<'a> { sequence: u64, reason: &'a str }
        => WARN "Event moved to dead letters.", dead_lettered;
    InFlightAtShutdown { in_flight: usize }
        => WARN "Requests still in flight at shutdown; they will be retried after restart.";
}

// The inbound endpoint.
happenings! {
    InboundAcceptFailed<'a> { error: &'a dyn Display }
        => WARN "Inbound accept failed.";
    InboundTlsFailed<'a> { peer: &'a dyn Display, error: &'a dyn Display }
        => DEBUG "Inbound TLS handshake failed.";
    InboundTlsTimedOut<'a> { peer: &'a dyn Display }
        => DEBUG "Inbound TLS handshake timed out.";
    InboundTimeLimit<'a> { peer: &'a dyn Display }
        => DEBUG "Inbound connection closed at its time limit.";
    /// An inbound connection that had sent no whole request was closed to make room for a new
    /// one (counted: a steady count means someone holds connections open).
    InboundEvicted<'a> { peer: &'a dyn Display }
        => DEBUG "Inbound connection without a request evicted for a new one.", inbound_evicted;
    InboundRefused<'a> { event: &'a str, status: u16, error: &'a dyn Display }
        => WARN "Inbound command refused.";
    InboundAccepted<'a> { event: &'a str, id: &'a str }
        => INFO "Inbound command accepted.";
    OsdpProvisioned { address: u8 }
        => INFO "OSDP reader on the default key given its Secure Channel key (osdp_KEYSET).";
    DoorOpened<'a> { door: &'a str, contact: &'a str }
        => INFO "Door opened.";
    DoorClosed<'a> { door: &'a str, contact: &'a str }
        => INFO "Door closed.";
    DoorForcedOpen<'a> { door: &'a str, contact: &'a str }
        => WARN "Door forced open: it opened with no unlock active.", doors_forced;
    DoorHeldOpen<'a> { door: &'a str, contact: &'a str }
        => WARN "Door held open past its threshold.", doors_held;
    RelockBlind<'a> { door: &'a str, contact: &'a str }
        => WARN "Relocking a door whose contact is offline or has never reported: it counts as closed.", relocks_blind;
    LockdownDenied<'a> { device: &'a str, lockdown_id: &'a str }
        => INFO "A credential was presented under a lockdown: denied uncompared.";
    LockdownBegan<'a> { lockdown_id: &'a str, scope: &'a str, doors: usize }
        => WARN "Lockdown: every door in scope locked, local credentials denied until it is lifted.";
    LockdownLifted<'a> { lockdown_id: &'a str, known: bool }
        => WARN "Lockdown lifted.";
    PassageChanged<'a> { door: &'a str, booking_id: &'a str, state: &'a str }
        => INFO "Passage mode changed a door.";
    OsdpNoInputStatus { address: u8, nak: u8 }
        => WARN "An OSDP reader refused osdp_ISTAT: it does not report its inputs, so its door contact is unknown.";
    PulseTimeZero<'a> { device: &'a str }
        => WARN "A Tasmota strike's PulseTime is 0: its relay would stay on after an unlock.";
    CardUnreadable<'a> { device: &'a str, error: &'a str }
        => WARN "A card read is not a card of the reader's format; denied.", card_unreadable;
    ChannelConnected<'a> { url: &'a str }
        => INFO "Command channel connected to ZenCore's broker.";
    ChannelConnectFailed<'a> { url: &'a str, error: &'a str, retry_in_ms: u64 }
        => WARN "Cannot connect the command channel to ZenCore's broker; retrying.";
    ChannelLost<'a> { error: &'a str, retry_in_ms: u64 }
        => WARN "Command channel lost; reconnecting.";
    ChannelMessageRefused<'a> { error: &'a str }
        => WARN "Command channel message is not a command; refused (400).";
    CommandNotCarriedOut {}
        => ERROR "Device task stopped; accepted command not carried out.";
}

// Devices, the hub and the MQTT link.
happenings! {
    DeviceMessageMalformed<'a> { topic: &'a str, error: &'a dyn Display }
        => WARN "Malformed device message ignored.";
    CredentialMalformed<'a> { device: &'a str }
        => WARN "Malformed credential message ignored.";
    PanelActionMalformed<'a> { device: &'a str, action: &'a str }
        => WARN "Malformed panel action ignored.";
    RoomStatus<'a> { booking_id: &'a str, status: &'a str, source: &'a str }
        => INFO "Room status.";
    SerialCommandFailed<'a> { device: &'a str, command: &'a str, error: &'a dyn Display }
        => WARN "Serial device command failed.";
    BridgeAsked<'a> { topic: &'a str }
        => INFO "Zigbee2MQTT bridge says offline; asking it before believing it.";
    BridgeOfflineIgnored<'a> { topic: &'a str, healthy: bool }
        => WARN "Zigbee2MQTT bridge answered its health check: its \"offline\" is ignored (published by another client, or stale; see SECURITY.md on broker ACLs).";
    BridgeUnanswered<'a> { topic: &'a str }
        => WARN "Zigbee2MQTT bridge did not answer its health check: its devices are offline.";
    ActionFinished<'a> { device: &'a str, action_id: &'a str, status: &'a str, error: &'a str }
        => INFO "Action completed.";
    UnlockExpiredAtRestart<'a> { action_id: &'a str }
        => WARN "Unlock accepted before a restart has expired.";
    UnlockResumed<'a> { action_id: &'a str }
        => INFO "Carrying out an unlock accepted before a restart.";
    MqttConnected<'a> { host: &'a str, port: u16 }
        => INFO "MQTT connected.";
    MqttLost<'a> { error: &'a str }
        => WARN "MQTT connection lost; reconnecting with backoff.";
    MqttConnectFailed<'a> { error: &'a str }
        => DEBUG "MQTT connect failed.";
    MqttTakeoverSuspected<'a> { client_id: &'a str }
        => WARN "The broker keeps closing ZenEdge's MQTT session right after it opens: another client is probably connecting with ZenEdge's client id (see SECURITY.md: broker ACLs, use_username_as_clientid).";
    MqttQos0Dropped { dropped_total: u64 }
        => WARN "MQTT messages arrive faster than they are handled; QoS 0 messages dropped.";
    MqttSubscribeFailed<'a> { error: &'a dyn Display }
        => ERROR "MQTT subscribe failed.";
    MqttOnlineFailed<'a> { error: &'a dyn Display }
        => ERROR "Cannot publish ZenEdge's online status.";
    MqttAckFailed<'a> { topic: &'a str, error: &'a dyn Display }
        => WARN "MQTT ack failed.";
    MqttPublishFailed<'a> { topic: &'a str, error: &'a dyn Display }
        => ERROR "MQTT publish failed.";
}

// Serial ports and the machines behind them.
happenings! {
    SerialOpenFailed<'a> { device: &'a str, port: &'a dyn Display, error: &'a dyn Display }
        => WARN "Serial port cannot be opened; retrying with backoff.";
    SerialOpened<'a> { device: &'a str, port: &'a dyn Display }
        => INFO "Serial port opened.";
    SerialLost<'a> { device: &'a str, port: &'a dyn Display, error: &'a dyn Display }
        => WARN "Serial port lost; reopening.";
    SerialThreadGone<'a> { device: &'a str }
        => ERROR "Serial device thread is gone.";
    OsdpReplyRefused<'a> { error: &'a dyn Display }
        => WARN "OSDP reply refused; restarting the link.";
    OsdpNak { command: u8, nak: u8 }
        => WARN "OSDP reader refused a command; restarting the link.";
    OsdpNoSecureChannel {}
        => ERROR "OSDP reader has no Secure Channel; set `insecure = true` only if that is acceptable.";
    OsdpHandshakeFailed<'a> { error: &'a dyn Display }
        => ERROR "OSDP Secure Channel handshake failed.";
    OsdpRmacMismatch {}
        => ERROR "OSDP Secure Channel: the reader's R-MAC does not match.";
}

// Access and the clock.
happenings! {
    /// A panel or reader was locked out after `failures` denied credentials.
    LockoutBegan<'a> { device: &'a str, failures: u32, until: &'a str, lockouts_in_a_row: u32 }
        => WARN "Too many denied credentials: locked out.", lockouts;
    /// A lockout ran out; `attempts` credentials were refused during it without being compared.
    LockoutEnded<'a> { device: &'a str, attempts: u64 }
        => INFO "Lockout ended.";
    /// The clock floor came down: a synchronised clock or an operator put right a clock that
    /// had once been ahead.
    ClockFloorLowered<'a> { from: &'a str, to: &'a str, by: &'a str }
        => WARN "Clock floor lowered.";
}

/// An access decision at a panel or reader: the one place decisions are logged and counted.
#[derive(Debug)]
pub struct AccessDecision<'a> {
    pub device: &'a str,
    pub granted: bool,
    /// Why it was denied (`None` when granted).
    pub reason: Option<&'a str>,
    pub credential_type: &'a str,
}

impl InternalEvent for AccessDecision<'_> {
    fn emit(self) {
        let m = metrics();
        if self.granted {
            inc(&m.access_granted, 1);
        } else if self.reason == Some("locked_out") {
            // Counted, not logged one by one: a flood of guesses must not flood the journal.
            // The lockout's own lines say when it began and how many attempts it refused.
            inc(&m.access_locked_out, 1);
            return;
        } else {
            inc(&m.access_denied, 1);
        }
        tracing::info!(
            message = "Access decision.",
            device = self.device,
            result = if self.granted { "granted" } else { "denied" },
            reason = self.reason.unwrap_or(""),
            credential_type = self.credential_type
        );
    }
}

/// A command got its answer (either transport): counted by transport and status. Accepted and
/// refused commands have their own lines; this one is only counted.
#[derive(Debug)]
pub struct CommandAnswered {
    pub transport: &'static str,
    pub status: u16,
}

impl InternalEvent for CommandAnswered {
    fn emit(self) {
        let mut counts = metrics().commands.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry((self.transport, self.status)).or_default() += 1;
    }
}

/// How a delivery attempt ended, as telemetry counts it (the shell maps the policy's verdict
/// to it, so telemetry depends on no machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    Delivered,
    Unreachable,
    Failed,
}

/// One delivery attempt finished: counted by how it ended, its duration in the histogram.
#[derive(Debug)]
pub struct AttemptFinished<'a> {
    pub sequence: u64,
    pub attempt: u32,
    pub status: Option<u16>,
    pub duration_ms: u64,
    pub error: Option<&'a str>,
    pub end: AttemptEnd,
}

impl InternalEvent for AttemptFinished<'_> {
    fn emit(self) {
        let m = metrics();
        inc(&m.attempts, 1);
        inc(&m.attempt_ms_total, self.duration_ms);
        let secs = self.duration_ms as f64 / 1000.0;
        if let Some(i) = super::LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            inc(&m.attempt_buckets[i], 1);
        }
        let (sequence, attempt, status, duration_ms) =
            (self.sequence, self.attempt, self.status, self.duration_ms);
        let error = self.error.unwrap_or("");
        match self.end {
            AttemptEnd::Delivered => {
                inc(&m.deliveries_succeeded, 1);
                tracing::debug!(
                    message = "Event delivered.",
                    sequence,
                    attempt,
                    status,
                    duration_ms
                );
            }
            AttemptEnd::Unreachable | AttemptEnd::Failed => {
                let (counter, message) = if self.end == AttemptEnd::Unreachable {
                    (&m.deliveries_unreachable, "ZenCore unreachable.")
                } else {
                    (&m.deliveries_failed, "Delivery failed.")
                };
                inc(counter, 1);
                tracing::warn!(message, sequence, attempt, status, duration_ms, error);
            }
        }
    }
}
