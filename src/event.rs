//! The outbound event envelope (DESIGN section 1): kinds, ids, timestamps and body rendering.
//!
//! A [`NewEvent`] is what a source (a device driver, the access path, the operator) hands to the
//! store. The store gives it an id and a sequence number and renders the body bytes once, with
//! [`render_body`]; those bytes are what every delivery attempt sends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Config, DeviceType};

/// The context of one input to a machine (the devices hub, access, rooms): read once by the
/// runtime, passed in, never read by a machine itself.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub now: Millis,
    /// Whether `now` comes from a trusted clock (else it is the floor, and access decisions
    /// say so in the audit log).
    pub clock_trusted: bool,
    /// Mints new action ids (local-credential unlocks): `devices::new_action_id` in the daemon,
    /// a counter in tests.
    pub ids: fn() -> String,
}

/// Who the event is about, when it is about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRef {
    pub id: String,
    pub kind: DeviceType,
    /// The device's own room when its config entry sets one.
    pub meeting_space_id: Option<String>,
}

impl DeviceRef {
    pub fn of(d: &crate::config::DeviceConfig) -> DeviceRef {
        DeviceRef {
            id: d.id.clone(),
            kind: d.kind,
            meeting_space_id: d.meeting_space_id.clone(),
        }
    }
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

/// An event that delivery has to work on: its place in the outbox, its lane (device), and its
/// attempts so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    pub seq: u64,
    pub lane: Option<String>,
    pub kind: Option<crate::wire::EventKind>,
    pub at: Millis,
    pub attempts: u32,
    pub next_attempt: Option<Millis>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
