//! The wire: every message ZenEdge sends or receives, as types (DESIGN sections 1–3).
//!
//! Outbound events are one [`Data`] variant per event kind, each a struct whose serde
//! serialisation *is* the event's extra `data` fields in the documented order; [`render_body`]
//! renders the envelope once, when the store assigns the id and sequence. Inbound commands are
//! [`command::Command`], one variant per catalogued event, tagged on `event` with `data` as its
//! content. What panels are told over MQTT is [`panel`]. No other module assembles event or
//! command JSON, so DESIGN's tables and these types are the same thing.
//!
//! The vocabulary shared by the machines and the wire (presence reasons, action sources and
//! statuses, denial reasons) lives here too: the machines import it, the wire imports no machine.

pub mod command;
pub mod panel;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{DeviceRef, Millis, Origin};

/// Event names ZenEdge sends. Closed on purpose: a typo cannot reach ZenCore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    DeviceOnline,
    DeviceOffline,
    DeviceActionCompleted,
    AccessDenied,
    AccessLockout,
    EdgeDataGap,
    EdgeTest,
    MeetingStatusUpdate,
    DoorOpened,
    DoorClosed,
    DoorForcedOpen,
    DoorHeldOpen,
    AccessPassage,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        EventKind::DeviceOnline,
        EventKind::DeviceOffline,
        EventKind::DeviceActionCompleted,
        EventKind::AccessDenied,
        EventKind::AccessLockout,
        EventKind::EdgeDataGap,
        EventKind::EdgeTest,
        EventKind::MeetingStatusUpdate,
        EventKind::DoorOpened,
        EventKind::DoorClosed,
        EventKind::DoorForcedOpen,
        EventKind::DoorHeldOpen,
        EventKind::AccessPassage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DeviceOnline => "device.online",
            EventKind::DeviceOffline => "device.offline",
            EventKind::DeviceActionCompleted => "device.action_completed",
            EventKind::AccessDenied => "access.denied",
            EventKind::AccessLockout => "access.lockout",
            EventKind::EdgeDataGap => "edge.data_gap",
            EventKind::EdgeTest => "edge.test",
            EventKind::MeetingStatusUpdate => "meeting.status_update",
            EventKind::DoorOpened => "door.opened",
            EventKind::DoorClosed => "door.closed",
            EventKind::DoorForcedOpen => "door.forced_open",
            EventKind::DoorHeldOpen => "door.held_open",
            EventKind::AccessPassage => "access.passage",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Presence events are the only ones that may be dropped to keep the store inside its
    /// byte budget (DESIGN section 1); actions and access events never are.
    pub fn is_presence(self) -> bool {
        matches!(self, EventKind::DeviceOnline | EventKind::DeviceOffline)
    }
}

/// Why a device is believed online or offline; the presence events' `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceReason {
    Availability,
    StateReport,
    Lwt,
    HeartbeatTimeout,
    BridgeOffline,
    PortOpened,
    PortClosed,
    PollReply,
    PollTimeout,
}

impl PresenceReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceReason::Availability => "availability",
            PresenceReason::StateReport => "state_report",
            PresenceReason::Lwt => "lwt",
            PresenceReason::HeartbeatTimeout => "heartbeat_timeout",
            PresenceReason::BridgeOffline => "bridge_offline",
            PresenceReason::PortOpened => "port_opened",
            PresenceReason::PortClosed => "port_closed",
            PresenceReason::PollReply => "poll_reply",
            PresenceReason::PollTimeout => "poll_timeout",
        }
    }
}

/// What a door is asked to do (`action` of `device.action_completed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DoorAction {
    Unlock,
    Lock,
}

impl DoorAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DoorAction::Unlock => "unlock",
            DoorAction::Lock => "lock",
        }
    }
}

/// Who asked for an action (`source` of `device.action_completed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionSource {
    Zencore,
    LocalCredential,
    Operator,
    /// Passage mode: a booking's doors held unlocked for the meeting (DESIGN §3).
    Passage,
    /// A lockdown's locks (DESIGN §3).
    Lockdown,
}

impl ActionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionSource::Zencore => "zencore",
            ActionSource::LocalCredential => "local_credential",
            ActionSource::Operator => "operator",
            ActionSource::Passage => "passage",
            ActionSource::Lockdown => "lockdown",
        }
    }
}

/// How an action ended (`status` of `device.action_completed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Succeeded,
    Failed,
    TimedOut,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Succeeded => "succeeded",
            ActionStatus::Failed => "failed",
            ActionStatus::TimedOut => "timed_out",
        }
    }
}

/// Why an action failed (`error` of `device.action_completed`: DESIGN §1's short codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionError {
    /// The device is known to be offline (at the request, or it went offline meanwhile).
    DeviceOffline,
    /// The lock reported itself jammed.
    Jammed,
    /// A ZenCore unlock whose `not_after` passed before it could be carried out.
    Expired,
    /// The device has no way to carry out this command.
    Unsupported,
    /// A serial device did not answer the command.
    Timeout,
    /// The serial port closed with the command waiting.
    PortClosed,
    /// An OSDP reader refused the command.
    Nak,
    /// A serial device answered with an error (a Modbus exception, an unexpected reply).
    DeviceError,
}

impl ActionError {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionError::DeviceOffline => "device_offline",
            ActionError::Jammed => "jammed",
            ActionError::Expired => "expired",
            ActionError::Unsupported => "unsupported",
            ActionError::Timeout => "timeout",
            ActionError::PortClosed => "port_closed",
            ActionError::Nak => "nak",
            ActionError::DeviceError => "device_error",
        }
    }
}

/// Why a presented credential was denied (`reason` of `access.denied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    UnknownCredential,
    OutsideWindow,
    Revoked,
    WrongRoom,
    /// A lockdown is in force where the credential was presented (DESIGN §3).
    Lockdown,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::UnknownCredential => "unknown_credential",
            DenyReason::OutsideWindow => "outside_window",
            DenyReason::Revoked => "revoked",
            DenyReason::WrongRoom => "wrong_room",
            DenyReason::Lockdown => "lockdown",
        }
    }
}

/// What was presented at a panel or reader (`credential_type` of `access.denied` and of the
/// audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialType {
    MagicLink,
    Pin,
    Card,
    /// The audit record that closes a lockout: whatever was presented during it.
    Any,
}

impl CredentialType {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::MagicLink => "magic_link",
            CredentialType::Pin => "pin",
            CredentialType::Card => "card",
            CredentialType::Any => "any",
        }
    }
}

/// Who changed a booking's status (`source` of `meeting.status_update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusSource {
    Panel,
    Scheduler,
}

impl StatusSource {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusSource::Panel => "panel",
            StatusSource::Scheduler => "scheduler",
        }
    }
}

/// Why events are missing (`reason` of `edge.data_gap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    StoreFull,
    StoreCorrupt,
}

/// `device.online`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceOnline {
    pub reason: PresenceReason,
    pub offline_since: Option<Millis>,
}

/// `device.offline`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceOffline {
    pub reason: PresenceReason,
    pub last_seen: Option<Millis>,
    pub detected_at: Millis,
}

/// `device.action_completed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionCompleted {
    pub action_id: String,
    pub action: DoorAction,
    pub status: ActionStatus,
    pub source: ActionSource,
    pub requested_at: Millis,
    pub completed_at: Millis,
    pub duration_ms: u64,
    pub booking_id: Option<String>,
    pub grant_id: Option<String>,
    pub error: Option<ActionError>,
}

/// `access.denied`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessDenied {
    pub credential_type: CredentialType,
    pub reason: DenyReason,
    pub booking_id: Option<String>,
}

/// `access.lockout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessLockout {
    pub failures: u32,
    pub until: Millis,
    pub lockouts: u32,
}

/// `edge.data_gap`: the sequences ZenCore will never get. `from_sequence` and `count` are
/// unknown (null) when a corrupt store was moved aside; `quarantined_to` then says where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataGap {
    pub from_sequence: Option<u64>,
    pub to_sequence: u64,
    pub count: Option<u64>,
    pub reason: GapReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined_to: Option<String>,
}

/// `edge.test`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeTest {
    pub note: String,
}

/// `meeting.status_update` from the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeetingStatus {
    pub booking_id: String,
    pub status: &'static str,
    pub source: StatusSource,
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Millis>,
}

/// `door.opened`, `door.closed`, `door.forced_open`, `door.held_open`: about the lock or strike
/// (the event's device), from its contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoorEvent {
    pub contact_id: String,
    /// When this opening began.
    pub opened_at: Millis,
}

/// A lockdown in force (DESIGN §3): every lock in its scope locked, every local credential
/// there denied, until it is lifted. Kept in the store, so a restart does not lift it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lockdown {
    pub lockdown_id: String,
    /// The room it holds; the whole controller when `None`.
    pub meeting_space_id: Option<String>,
    pub reason: Option<String>,
    pub since: Millis,
}

impl crate::record::Record for Lockdown {
    const FAMILY: &'static str = "lockdown";
    const VERSION: u32 = 1;
}

impl Lockdown {
    /// Whether it holds `room`.
    pub fn covers(&self, room: &str) -> bool {
        self.meeting_space_id.as_deref().is_none_or(|r| r == room)
    }
}

/// Whether passage mode holds a door unlocked or let it lock (`state` of `access.passage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassageState {
    Unlocked,
    Locked,
}

/// `access.passage`: one door's change in passage mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Passage {
    pub booking_id: String,
    pub state: PassageState,
}

/// An outbound event's own `data` fields: one variant per event kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Data {
    DeviceOnline(DeviceOnline),
    DeviceOffline(DeviceOffline),
    ActionCompleted(ActionCompleted),
    AccessDenied(AccessDenied),
    AccessLockout(AccessLockout),
    DataGap(DataGap),
    EdgeTest(EdgeTest),
    MeetingStatus(MeetingStatus),
    DoorOpened(DoorEvent),
    DoorClosed(DoorEvent),
    DoorForcedOpen(DoorEvent),
    DoorHeldOpen(DoorEvent),
    Passage(Passage),
}

impl Data {
    pub fn kind(&self) -> EventKind {
        match self {
            Data::DeviceOnline(_) => EventKind::DeviceOnline,
            Data::DeviceOffline(_) => EventKind::DeviceOffline,
            Data::ActionCompleted(_) => EventKind::DeviceActionCompleted,
            Data::AccessDenied(_) => EventKind::AccessDenied,
            Data::AccessLockout(_) => EventKind::AccessLockout,
            Data::DataGap(_) => EventKind::EdgeDataGap,
            Data::EdgeTest(_) => EventKind::EdgeTest,
            Data::MeetingStatus(_) => EventKind::MeetingStatusUpdate,
            Data::DoorOpened(_) => EventKind::DoorOpened,
            Data::DoorClosed(_) => EventKind::DoorClosed,
            Data::DoorForcedOpen(_) => EventKind::DoorForcedOpen,
            Data::DoorHeldOpen(_) => EventKind::DoorHeldOpen,
            Data::Passage(_) => EventKind::AccessPassage,
        }
    }

    /// The fields as JSON, in their documented order.
    pub fn fields(&self) -> Map<String, Value> {
        // Serialising these structs (strings, numbers, RFC 3339 times) cannot fail.
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }
}

/// An event before it is stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub device: Option<DeviceRef>,
    /// When it happened (the envelope `timestamp`).
    pub at: Millis,
    pub data: Data,
    /// A preset id, for events whose id must be the same if they are ever made again
    /// (a schedule moment re-emitted after a torn flush). Else the store assigns a ULID.
    pub id: Option<String>,
    /// The room, when the event has no device (a booking's status); else the device's room.
    pub space: Option<String>,
}

impl NewEvent {
    pub fn new(data: Data, device: Option<DeviceRef>, at: Millis) -> NewEvent {
        NewEvent {
            device,
            at,
            data,
            id: None,
            space: None,
        }
    }

    /// An event about the controller itself (`edge.*`): no device fields.
    pub fn edge(data: Data, at: Millis) -> NewEvent {
        NewEvent::new(data, None, at)
    }

    pub fn kind(&self) -> EventKind {
        self.data.kind()
    }

    /// The event's own `data` fields as ZenCore will read them.
    pub fn fields(&self) -> Map<String, Value> {
        self.data.fields()
    }

    pub fn with_id(mut self, id: String) -> NewEvent {
        self.id = Some(id);
        self
    }

    pub fn in_space(mut self, meeting_space_id: &str) -> NewEvent {
        self.space = Some(meeting_space_id.to_owned());
        self
    }

    /// The ordering lane: events of one device are delivered in order; a booking's status
    /// updates are delivered in order whatever their source; other events without a device
    /// have no ordering constraint.
    pub fn lane(&self) -> Option<String> {
        let booking = match &self.data {
            Data::MeetingStatus(m) => Some(m.booking_id.as_str()),
            _ => None,
        };
        lane(
            Some(self.kind()),
            self.device.as_ref().map(|d| d.id.as_str()),
            booking,
        )
    }
}

fn lane(kind: Option<EventKind>, device: Option<&str>, booking: Option<&str>) -> Option<String> {
    match (kind, booking) {
        (Some(EventKind::MeetingStatusUpdate), Some(b)) => Some(format!("booking:{b}")),
        _ => device.map(str::to_owned),
    }
}

/// The exact body bytes of an event: compact JSON in the documented field order.
pub fn render_body(origin: &Origin, event: &NewEvent, id: &str, sequence: u64) -> Vec<u8> {
    let mut data = Map::new();
    data.insert("controller_id".into(), origin.controller_id.clone().into());
    data.insert(
        "organization_id".into(),
        origin.organization_id.clone().into(),
    );
    let space = event
        .space
        .clone()
        .or_else(|| {
            event
                .device
                .as_ref()
                .and_then(|d| d.meeting_space_id.clone())
        })
        .unwrap_or_else(|| origin.meeting_space_id.clone());
    data.insert("meeting_space_id".into(), space.into());
    if let Some(device) = &event.device {
        data.insert("device_id".into(), device.id.clone().into());
        data.insert("device_type".into(), device.kind.as_str().into());
    }
    data.insert("sequence".into(), sequence.into());
    for (k, v) in event.fields() {
        data.insert(k, v);
    }
    let mut envelope = Map::new();
    envelope.insert("id".into(), id.into());
    envelope.insert("event".into(), event.kind().as_str().into());
    envelope.insert("timestamp".into(), event.at.rfc3339().into());
    envelope.insert("data".into(), Value::Object(data));
    // Serialising a `Value` built from strings and numbers cannot fail.
    serde_json::to_vec(&Value::Object(envelope)).unwrap_or_default()
}

/// What the store and the CLI need to know about a stored body without keeping a parsed copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyInfo {
    pub id: String,
    pub kind: Option<EventKind>,
    pub lane: Option<String>,
    pub sequence: u64,
    pub at: Millis,
}

/// Reads the envelope fields back out of stored body bytes. `None` for bytes that are not an
/// envelope, which the store treats as corruption of that one record.
pub fn body_info(body: &[u8]) -> Option<BodyInfo> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        id: String,
        event: String,
        timestamp: String,
        data: EnvelopeData,
    }
    #[derive(serde::Deserialize)]
    struct EnvelopeData {
        sequence: u64,
        device_id: Option<String>,
        booking_id: Option<String>,
    }
    let env: Envelope = serde_json::from_slice(body).ok()?;
    let kind = EventKind::parse(&env.event);
    Some(BodyInfo {
        kind,
        lane: lane(
            kind,
            env.data.device_id.as_deref(),
            env.data.booking_id.as_deref(),
        ),
        sequence: env.data.sequence,
        at: Millis::parse_rfc3339(&env.timestamp)?,
        id: env.id,
    })
}

#[cfg(test)]
mod tests;
