//! The outbound event envelope (DESIGN section 1): kinds, ids, timestamps and body rendering.
//!
//! A [`NewEvent`] is what a source (a device driver, the access path, the operator) hands to the
//! store. The store gives it an id and a sequence number and renders the body bytes once, with
//! [`render_body`]; those bytes are what every delivery attempt sends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::config::{Config, DeviceType};

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
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::DeviceOnline,
        EventKind::DeviceOffline,
        EventKind::DeviceActionCompleted,
        EventKind::AccessDenied,
        EventKind::AccessLockout,
        EventKind::EdgeDataGap,
        EventKind::EdgeTest,
        EventKind::MeetingStatusUpdate,
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

/// Who the event is about, when it is about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRef {
    pub id: String,
    pub kind: DeviceType,
    /// The device's own room when its config entry sets one.
    pub meeting_space_id: Option<String>,
}

/// The controller's identity, copied into every event's `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub controller_id: String,
    pub organization_id: String,
    pub meeting_space_id: String,
}

impl Origin {
    pub fn from_config(config: &Config) -> Origin {
        Origin {
            controller_id: config.controller.id.clone(),
            organization_id: config.controller.organization_id.clone(),
            meeting_space_id: config.controller.meeting_space_id.clone(),
        }
    }
}

/// An event before it is stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: EventKind,
    pub device: Option<DeviceRef>,
    /// When it happened (the envelope `timestamp`).
    pub at: Millis,
    /// The event's extra `data` fields, in the order they should appear.
    pub fields: Map<String, Value>,
    /// A preset id, for events whose id must be the same if they are ever made again
    /// (a schedule moment re-emitted after a torn flush). Else the store assigns a ULID.
    pub id: Option<String>,
    /// The room, when the event has no device (a booking's status); else the device's room.
    pub space: Option<String>,
}

impl NewEvent {
    pub fn new(kind: EventKind, device: Option<DeviceRef>, at: Millis) -> NewEvent {
        NewEvent {
            kind,
            device,
            at,
            fields: Map::new(),
            id: None,
            space: None,
        }
    }

    pub fn with_id(mut self, id: String) -> NewEvent {
        self.id = Some(id);
        self
    }

    pub fn in_space(mut self, meeting_space_id: &str) -> NewEvent {
        self.space = Some(meeting_space_id.to_owned());
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> NewEvent {
        self.fields.insert(key.to_owned(), value.into());
        self
    }

    /// The ordering lane: events of one device are delivered in order; a booking's status
    /// updates are delivered in order whatever their source; other events without a device
    /// have no ordering constraint.
    pub fn lane(&self) -> Option<String> {
        lane(
            Some(self.kind),
            self.device.as_ref().map(|d| d.id.as_str()),
            self.fields.get("booking_id").and_then(Value::as_str),
        )
    }
}

fn lane(kind: Option<EventKind>, device: Option<&str>, booking: Option<&str>) -> Option<String> {
    match (kind, booking) {
        (Some(EventKind::MeetingStatusUpdate), Some(b)) => Some(format!("booking:{b}")),
        _ => device.map(str::to_owned),
    }
}

/// A stable event id for one moment of one booking: `evt_` + a ULID whose time is the moment
/// and whose random part is a hash of the controller, booking and status.
pub fn moment_id(controller: &str, booking_id: &str, status: &str, at: Millis) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{controller}\n{booking_id}\n{status}").as_bytes());
    let mut r = [0u8; 16];
    r[6..].copy_from_slice(&h[..10]);
    let ulid = ulid::Ulid::from_parts(at.0, u128::from_be_bytes(r));
    format!("evt_{ulid}")
}

/// Milliseconds since the Unix epoch, UTC. The resolution of every timestamp ZenEdge writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write (four-digit years).
    pub const MAX: Millis = Millis(253_402_300_799_999);

    pub fn now() -> Millis {
        Millis::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Millis {
        Millis(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }

    /// Times past [`Millis::MAX`] (only arithmetic makes them: input is refused) are taken
    /// as `MAX`, so that neither this nor formatting can overflow or panic.
    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.min(Millis::MAX.0))
    }

    pub fn unix_seconds(self) -> i64 {
        (self.0 / 1000) as i64
    }

    /// RFC 3339, UTC, milliseconds, `Z`: `2025-01-15T09:45:00.000Z`.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_millis(self.to_system()).to_string()
    }

    /// A time from 1970 to 9999; an earlier one is refused (not taken as 1970).
    pub fn parse_rfc3339(text: &str) -> Option<Millis> {
        let t = humantime::parse_rfc3339_weak(text).ok()?;
        let since = t.duration_since(UNIX_EPOCH).ok()?;
        Some(Millis(since.as_millis() as u64))
    }

    pub fn saturating_add(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(d.as_millis() as u64))
    }

    pub fn saturating_sub(self, other: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(other.0))
    }
}

/// Written as RFC 3339 (what people and ZenCore read); read back from that or from a number
/// of milliseconds.
impl serde::Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> serde::Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Ms(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Ms(ms) if ms <= Millis::MAX.0 => Ok(Millis(ms)),
            Raw::Ms(ms) => Err(serde::de::Error::custom(format!(
                "{ms} ms is after 9999-12-31T23:59:59.999Z"
            ))),
            Raw::Text(t) => Millis::parse_rfc3339(&t)
                .ok_or_else(|| serde::de::Error::custom(format!("`{t}` is not an RFC 3339 time"))),
        }
    }
}

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

/// A new event id: `evt_` + a ULID from a monotonic generator, so ids sort by creation.
pub struct IdGenerator(ulid::Generator);

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator(ulid::Generator::new())
    }
}

impl IdGenerator {
    pub fn next(&mut self, now: SystemTime) -> String {
        // The generator fails only when 2^80 ids were made within one millisecond; fall back to
        // a fresh random ULID, which is still unique.
        let ulid = self
            .0
            .generate_from_datetime(now)
            .unwrap_or_else(|_| ulid::Ulid::from_datetime(now));
        format!("evt_{ulid}")
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
    for (k, v) in &event.fields {
        data.insert(k.clone(), v.clone());
    }
    let mut envelope = Map::new();
    envelope.insert("id".into(), id.into());
    envelope.insert("event".into(), event.kind.as_str().into());
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
        data: Data,
    }
    #[derive(serde::Deserialize)]
    struct Data {
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

/// An event that delivery has to work on: its place in the outbox, its lane (device), and its
/// attempts so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    pub seq: u64,
    pub lane: Option<String>,
    pub kind: Option<EventKind>,
    pub at: Millis,
    pub attempts: u32,
    pub next_attempt: Option<Millis>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_time_past_year_9999_formats_as_the_last_instant_instead_of_panicking() {
        assert_eq!(Millis(u64::MAX).rfc3339(), "9999-12-31T23:59:59.999Z");
        let end = Millis::parse_rfc3339("9999-12-31T23:00:00Z").unwrap();
        let extended = end.saturating_add(Duration::from_secs(240 * 60));
        assert_eq!(extended.rfc3339(), "9999-12-31T23:59:59.999Z");
        assert!(serde_json::from_str::<Millis>(&u64::MAX.to_string()).is_err());
        assert_eq!(Millis::parse_rfc3339("1969-12-31T23:59:59Z"), None);
        assert_eq!(
            Millis::parse_rfc3339("1970-01-01T00:00:00Z"),
            Some(Millis(0))
        );
        assert_eq!(
            serde_json::from_str::<Millis>("253402300799999").unwrap(),
            Millis::MAX
        );
    }

    use super::*;

    fn origin() -> Origin {
        Origin {
            controller_id: "edge-4a".into(),
            organization_id: "org-123".into(),
            meeting_space_id: "ms-xyz789".into(),
        }
    }

    #[test]
    fn body_has_the_documented_shape_and_order() {
        let at = Millis::parse_rfc3339("2025-01-15T09:45:00.000Z").unwrap();
        let event = NewEvent::new(
            EventKind::DeviceOffline,
            Some(DeviceRef {
                id: "front-door".into(),
                kind: DeviceType::Lock,
                meeting_space_id: None,
            }),
            at,
        )
        .with("reason", "heartbeat_timeout")
        .with("last_seen", "2025-01-15T09:44:00.000Z")
        .with("detected_at", at.rfc3339());
        let body = render_body(&origin(), &event, "evt_01JH", 1042);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"id":"evt_01JH","event":"device.offline","timestamp":"2025-01-15T09:45:00.000Z","data":{"controller_id":"edge-4a","organization_id":"org-123","meeting_space_id":"ms-xyz789","device_id":"front-door","device_type":"lock","sequence":1042,"reason":"heartbeat_timeout","last_seen":"2025-01-15T09:44:00.000Z","detected_at":"2025-01-15T09:45:00.000Z"}}"#
        );
        let info = body_info(&body).unwrap();
        assert_eq!(info.id, "evt_01JH");
        assert_eq!(info.kind, Some(EventKind::DeviceOffline));
        assert_eq!(info.lane.as_deref(), Some("front-door"));
        assert_eq!(info.sequence, 1042);
        assert_eq!(info.at, at);
    }

    #[test]
    fn edge_events_have_no_device_fields_and_device_room_overrides() {
        let body = render_body(
            &origin(),
            &NewEvent::new(EventKind::EdgeTest, None, Millis(0)).with("note", "hi"),
            "evt_x",
            1,
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["data"].get("device_id").is_none());
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");

        let dev = DeviceRef {
            id: "p".into(),
            kind: DeviceType::Panel,
            meeting_space_id: Some("ms-other".into()),
        };
        let body = render_body(
            &origin(),
            &NewEvent::new(EventKind::DeviceOnline, Some(dev), Millis(1)),
            "evt_y",
            2,
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["data"]["meeting_space_id"], "ms-other");
    }

    #[test]
    fn ids_are_unique_and_sorted() {
        let mut gen = IdGenerator::default();
        let now = SystemTime::now();
        let ids: Vec<_> = (0..1000).map(|_| gen.next(now)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted);
        assert!(ids[0].starts_with("evt_") && ids[0].len() == 30);
    }

    #[test]
    fn garbage_is_not_an_envelope() {
        assert!(body_info(b"").is_none());
        assert!(body_info(b"{\"id\":1}").is_none());
        assert!(body_info(&[0xff, 0x00]).is_none());
    }
}
