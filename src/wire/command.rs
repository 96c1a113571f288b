//! What ZenCore sends: one [`Command`] variant per catalogued inbound event (DESIGN §2), tagged on
//! `event` with `data` as its content, each field typed so that decoding *is* the check of
//! step 6's shape ("a missing or ill-typed field → 400 naming it"). What the fields mean for this
//! controller (which rooms and doors it has, whether `not_after` has passed) is the inbound
//! module's business; this one knows only the contract.
//!
//! The field types ([`Text`], [`Time`], [`Hex64`], [`Seconds`]) carry their own error texts, and
//! [`decode`] puts the field's path in front, so every refusal names what failed:
//! `missing data.grant_id`, `data.valid_from is not an RFC 3339 time`.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::Millis;

/// A command's body that is not what the contract says (always answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldError(pub String);

/// A non-empty string. (An empty id or room would match nothing and name nothing.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) if !s.is_empty() => Ok(Text(s)),
            _ => Err(de::Error::custom("must be a non-empty string")),
        }
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.0
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(s.to_owned())
    }
}

/// An RFC 3339 time (a number is refused: ZenCore sends times as text, and a bare number could
/// be seconds or milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub Millis);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Text(t) = Text::deserialize(d)?;
        Millis::parse_rfc3339(&t)
            .map(Time)
            .ok_or_else(|| de::Error::custom("is not an RFC 3339 time"))
    }
}

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.rfc3339())
    }
}

/// 64 hex digits (a SHA-256 or HMAC-SHA256), kept lowercase so that comparing is comparing bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Hex64(pub String);

impl<'de> Deserialize<'de> for Hex64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Text(h) = Text::deserialize(d)?;
        if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Hex64(h.to_ascii_lowercase()))
        } else {
            Err(de::Error::custom(
                "must be 64 hex digits (SHA-256 / HMAC-SHA256)",
            ))
        }
    }
}

/// `duration_s`: whole seconds, 1..=3600. An hour bounds what a door may be held open for, and
/// keeps a hostile or mistaken value from overflowing a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Seconds(pub u64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)?.as_u64() {
            Some(s) if (1..=3600).contains(&s) => Ok(Seconds(s)),
            _ => Err(de::Error::custom(
                "must be a whole number of seconds, 1..=3600",
            )),
        }
    }
}

/// `booking.start`'s moment, as ZenCore sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    #[serde(rename = "T-15")]
    Reserved,
    #[serde(rename = "T-0")]
    Started,
}

/// `booking.created`, `booking.confirmed`, and the booking part of `booking.start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookingTimes {
    pub booking_id: Text,
    pub meeting_space_id: Text,
    pub start_time: Time,
    pub end_time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<Text>,
    /// Passage mode (DESIGN §3): read so that a booking carrying it is not refused; what it
    /// does is the doors' business.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_during_meeting: Option<bool>,
}

/// `booking.start`. (Its own fields rather than a flattened [`BookingTimes`]: serde's flatten
/// buffers the content and a bad field would lose its name.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookingStart {
    pub booking_id: Text,
    pub meeting_space_id: Text,
    pub start_time: Time,
    pub end_time: Time,
    pub phase: Phase,
    /// Not in DESIGN's row for `booking.start`, but read as `booking.created` reads it, so a
    /// T-0 that carries the title keeps it on the panel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<Text>,
}

/// `booking.end`, `booking.cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookingClosed {
    pub booking_id: Text,
    pub meeting_space_id: Text,
}

/// `access.magic_link`: a grant, as ZenCore sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MagicLink {
    pub grant_id: Text,
    pub booking_id: Text,
    pub meeting_space_id: Text,
    pub token_sha256: Hex64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_sha256: Option<Hex64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_hmac: Option<Hex64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_sha256: Option<Hex64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_hmac: Option<Hex64>,
    pub valid_from: Time,
    pub valid_until: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ids: Option<Vec<Text>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<Text>,
}

/// `access.unlock`: ZenCore has checked the guest; the door opens now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unlock {
    pub action_id: Text,
    pub device_id: Text,
    pub booking_id: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<Text>,
    pub not_after: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<Seconds>,
}

/// `access.revoke`: by grant, or every grant of a booking.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Revoke {
    #[serde(rename = "grant_id")]
    Grant(Text),
    #[serde(rename = "booking_id")]
    Booking(Text),
}

/// `member.removed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRemoved {
    pub member_id: Text,
    pub organization_id: Text,
}

/// `meeting.status_update`, `space.availability_changed`: ZenCore's state for a room's panels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpaceStatus {
    pub meeting_space_id: Text,
    /// `available` | `reserved` | `in_use`; others are passed through to the panels.
    pub status: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking_id: Option<Text>,
    #[serde(default)]
    pub message: Value,
}

/// `access.grants_snapshot` (DESIGN §2b): the stored grants of a room (or of the whole
/// controller) become exactly these. A snapshot larger than one body comes in parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantsSnapshot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meeting_space_id: Option<Text>,
    pub grants: Vec<MagicLink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<Text>,
    /// 1-based.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
}

/// `access.lockdown`, `access.lockdown_lifted` (DESIGN §3): the whole controller, or one room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lockdown {
    pub lockdown_id: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meeting_space_id: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Text>,
}

/// The most parts one snapshot may come in (each at most one 64 KiB body: ~200 grants).
pub const MAX_SNAPSHOT_PARTS: u32 = 1000;

/// Every inbound command this controller acts on (DESIGN §2's table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data")]
pub enum Command {
    #[serde(rename = "booking.created")]
    BookingCreated(BookingTimes),
    #[serde(rename = "booking.confirmed")]
    BookingConfirmed(BookingTimes),
    #[serde(rename = "booking.start")]
    BookingStart(BookingStart),
    #[serde(rename = "booking.end")]
    BookingEnd(BookingClosed),
    #[serde(rename = "booking.cancelled")]
    BookingCancelled(BookingClosed),
    #[serde(rename = "access.magic_link")]
    MagicLink(MagicLink),
    #[serde(rename = "access.unlock")]
    Unlock(Unlock),
    #[serde(rename = "access.revoke")]
    Revoke(Revoke),
    #[serde(rename = "access.grants_snapshot")]
    GrantsSnapshot(GrantsSnapshot),
    #[serde(rename = "member.removed")]
    MemberRemoved(MemberRemoved),
    #[serde(rename = "meeting.status_update")]
    MeetingStatusUpdate(SpaceStatus),
    #[serde(rename = "space.availability_changed")]
    SpaceAvailabilityChanged(SpaceStatus),
    #[serde(rename = "access.lockdown")]
    Lockdown(Lockdown),
    #[serde(rename = "access.lockdown_lifted")]
    LockdownLifted(Lockdown),
}

/// What [`decode`] makes of a verified command.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// In the catalogue, but needs nothing from this controller (DESIGN §2: answered
    /// `202 ignored`).
    Ignored,
    Command(Box<Command>),
}

/// Catalogued events that need nothing from a room controller.
fn needs_nothing(event: &str) -> bool {
    matches!(event, "organization.updated" | "member.added") || event.starts_with("device.")
}

/// A verified command's `event` and `data`, into its type; shape checks that span two fields
/// (an end after its start, one of a hash and its HMAC) are made here too.
pub fn decode(event: &str, data: &Map<String, Value>) -> Result<Decoded, FieldError> {
    if needs_nothing(event) {
        return Ok(Decoded::Ignored);
    }
    // The tag first, so the content is read with its variant's type and a field's error keeps
    // its path (`data.grant_id`), rather than being buffered and losing it.
    let mut envelope = Map::new();
    envelope.insert("event".into(), Value::String(event.to_owned()));
    envelope.insert("data".into(), Value::Object(data.clone()));
    let command: Command = serde_path_to_error::deserialize(Value::Object(envelope))
        .map_err(|e| field_error(event, e))?;
    check(&command)?;
    Ok(Decoded::Command(Box::new(command)))
}

fn field_error(event: &str, e: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    if path == "event" || inner.starts_with("unknown variant") && path == "." {
        return FieldError(format!("unknown event `{event}`"));
    }
    // serde names a missing field at the struct that lacks it: `missing field `x`` at `data`.
    if let Some(field) = inner
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        return FieldError(format!("missing {path}.{field}"));
    }
    if inner.starts_with("missing data.") {
        return FieldError(inner);
    }
    FieldError(format!("{path} {inner}"))
}

fn check(command: &Command) -> Result<(), FieldError> {
    let fail = |s: &str| Err(FieldError(s.to_owned()));
    match command {
        Command::BookingCreated(BookingTimes {
            start_time,
            end_time,
            ..
        })
        | Command::BookingConfirmed(BookingTimes {
            start_time,
            end_time,
            ..
        })
        | Command::BookingStart(BookingStart {
            start_time,
            end_time,
            ..
        }) if end_time <= start_time => fail("data.end_time must be after data.start_time"),
        Command::MagicLink(g) => check_grant("data", g),
        Command::GrantsSnapshot(s) => check_snapshot(s),
        _ => Ok(()),
    }
}

fn check_grant(at: &str, g: &MagicLink) -> Result<(), FieldError> {
    let fail = |s: String| Err(FieldError(s));
    if g.valid_until <= g.valid_from {
        return fail(format!("{at}.valid_until must be after {at}.valid_from"));
    }
    if g.pin_sha256.is_some() && g.pin_hmac.is_some() {
        return fail(format!(
            "{at}.pin_sha256 and {at}.pin_hmac: send one of them"
        ));
    }
    if g.card_sha256.is_some() && g.card_hmac.is_some() {
        return fail(format!(
            "{at}.card_sha256 and {at}.card_hmac: send one of them"
        ));
    }
    Ok(())
}

fn check_snapshot(s: &GrantsSnapshot) -> Result<(), FieldError> {
    let fail = |s: String| Err(FieldError(s));
    match (&s.snapshot_id, s.part, s.parts) {
        (None, None, None) => {}
        (Some(_), Some(part), Some(parts)) => {
            if !(1..=MAX_SNAPSHOT_PARTS).contains(&parts) {
                return fail(format!(
                    "data.parts must be between 1 and {MAX_SNAPSHOT_PARTS}"
                ));
            }
            if !(1..=parts).contains(&part) {
                return fail("data.part must be between 1 and data.parts".into());
            }
        }
        _ => return fail("data.snapshot_id, data.part and data.parts go together".into()),
    }
    let mut seen = std::collections::HashSet::new();
    for (i, g) in s.grants.iter().enumerate() {
        let at = format!("data.grants[{i}]");
        check_grant(&at, g)?;
        if !seen.insert(&g.grant_id.0) {
            return fail(format!("{at}.grant_id `{}` is listed twice", g.grant_id.0));
        }
        if s.meeting_space_id
            .as_ref()
            .is_some_and(|room| *room != g.meeting_space_id)
        {
            return fail(format!(
                "{at}.meeting_space_id is not the snapshot's data.meeting_space_id"
            ));
        }
    }
    Ok(())
}

/// `access.revoke` names a grant or a booking; the grant wins when both are given.
fn revoke<'de, D: Deserializer<'de>>(d: D) -> Result<Revoke, D::Error> {
    #[derive(Deserialize)]
    struct Fields {
        #[serde(default)]
        grant_id: Option<Text>,
        #[serde(default)]
        booking_id: Option<Text>,
    }
    let f = Fields::deserialize(d)?;
    match (f.grant_id, f.booking_id) {
        (Some(g), _) => Ok(Revoke::Grant(g)),
        (None, Some(b)) => Ok(Revoke::Booking(b)),
        (None, None) => Err(de::Error::custom(
            "missing data.grant_id or data.booking_id",
        )),
    }
}

impl<'de> Deserialize<'de> for Revoke {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        revoke(d)
    }
}
