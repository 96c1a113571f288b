//! Access: grants, the access decision, and what to believe about the time (DESIGN section 2).
//! All pure; the clock's I/O shell (system time, the stored floor) is `crate::clock`.
//!
//! The decision is a pure function of (grants, presented credential, reader, devices, time):
//! only SHA-256 hashes of tokens and PINs are stored, and a presented credential is hashed and
//! compared in constant time.

pub mod lockout;
pub mod machine;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, DeviceType};
use crate::event::Millis;

/// A magic-link access grant as stored. Never holds the token or PIN itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    pub booking_id: String,
    pub meeting_space_id: String,
    /// Hex SHA-256 of the magic-link token.
    pub token_sha256: String,
    /// Hex SHA-256 of the PIN, when the grant has one.
    pub pin_sha256: Option<String>,
    /// Hex HMAC-SHA256 of `pin:` + the PIN, keyed with the inbound key: what a grant carries
    /// instead of `pin_sha256` when it crosses a network in clear (DESIGN §2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_hmac: Option<String>,
    /// Hex SHA-256 of the card string (DESIGN §4), or its HMAC (`card:` + the string): a card
    /// matches only these, never a PIN's hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_hmac: Option<String>,
    pub valid_from: Millis,
    pub valid_until: Millis,
    /// The doors it opens; every lock and strike of its room when absent.
    pub device_ids: Option<Vec<String>>,
    pub member_id: Option<String>,
    pub revoked_at: Option<Millis>,
}

impl crate::record::Record for Grant {
    const FAMILY: &'static str = "grant";
    const VERSION: u32 = 1;
}

/// The latest trusted time seen, persisted so that a clock that jumps back is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockFloor(pub Millis);

impl crate::record::Record for ClockFloor {
    const FAMILY: &'static str = "clock.floor";
    const VERSION: u32 = 1;
}

impl ClockFloor {
    pub const KEY: &'static str = "floor";
}

/// What was presented at a panel or reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    MagicLink(String),
    Pin(String),
    Card(String),
}

impl Credential {
    pub fn kind(&self) -> crate::wire::CredentialType {
        use crate::wire::CredentialType;
        match self {
            Credential::MagicLink(_) => CredentialType::MagicLink,
            Credential::Pin(_) => CredentialType::Pin,
            Credential::Card(_) => CredentialType::Card,
        }
    }

    fn digest(&self) -> [u8; 32] {
        let secret = match self {
            Credential::MagicLink(s) | Credential::Pin(s) | Credential::Card(s) => s,
        };
        Sha256::digest(secret.as_bytes()).into()
    }
}

pub use crate::wire::DenyReason;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Granted {
        grant_id: String,
        booking_id: String,
        doors: Vec<String>,
    },
    Denied {
        reason: DenyReason,
        /// The matching grant's booking, when a grant matched.
        booking_id: Option<String>,
        grant_id: Option<String>,
    },
}

/// A device as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub id: String,
    pub kind: DeviceType,
    pub meeting_space_id: String,
    /// A lock, a strike, or a reader with a strike on its output: what a grant opens.
    pub door: bool,
}

/// Every configured device with its room (its own, else the controller's).
pub fn places(config: &Config) -> Vec<Place> {
    config
        .devices
        .iter()
        .map(|d| Place {
            id: d.id.clone(),
            kind: d.kind,
            door: d.is_door(),
            meeting_space_id: d
                .meeting_space_id
                .clone()
                .unwrap_or_else(|| config.controller.meeting_space_id.clone()),
        })
        .collect()
}

fn hash_matches(stored_hex: &str, presented: &[u8; 32]) -> bool {
    match hex::decode(stored_hex) {
        Ok(stored) if stored.len() == 32 => stored.ct_eq(presented).into(),
        _ => false,
    }
}

/// What a presented credential is compared by: its SHA-256 and, for a PIN, its HMAC under each
/// inbound key (the primary and those kept for rotation), all computed once.
#[derive(Debug, Clone)]
pub struct Presented {
    pub credential: Credential,
    sha256: [u8; 32],
    hmacs: Vec<[u8; 32]>,
}

impl Presented {
    pub fn new(credential: Credential, keys: &[crate::signing::Key]) -> Presented {
        let hmacs = match &credential {
            Credential::Pin(p) => keys.iter().map(|k| k.credential_hmac("pin:", p)).collect(),
            Credential::Card(c) => keys.iter().map(|k| k.credential_hmac("card:", c)).collect(),
            Credential::MagicLink(_) => Vec::new(),
        };
        Presented {
            sha256: credential.digest(),
            credential,
            hmacs,
        }
    }

    fn matches(&self, g: &Grant) -> bool {
        let (sha, hmac) = match self.credential {
            Credential::MagicLink(_) => return hash_matches(&g.token_sha256, &self.sha256),
            Credential::Pin(_) => (&g.pin_sha256, &g.pin_hmac),
            Credential::Card(_) => (&g.card_sha256, &g.card_hmac),
        };
        let by_sha = sha
            .as_deref()
            .is_some_and(|h| hash_matches(h, &self.sha256));
        let by_hmac = hmac
            .as_deref()
            .is_some_and(|h| self.hmacs.iter().any(|m| hash_matches(h, m)));
        by_sha || by_hmac
    }
}

/// Decides a presented credential at `reader` (a panel or reader device id).
///
/// Order of checks for a matching grant: revoked, wrong room, outside the window. With several
/// matching grants (the same PIN in two bookings), any that grants wins; else the first
/// denial in that order is reported.
pub fn decide(
    grants: &[Grant],
    presented: &Presented,
    reader: &str,
    places: &[Place],
    now: Millis,
) -> Decision {
    let reader_room = places
        .iter()
        .find(|p| p.id == reader)
        .map(|p| p.meeting_space_id.as_str());
    let mut denial: Option<Decision> = None;
    for g in grants {
        if !presented.matches(g) {
            continue;
        }
        let deny = |reason| Decision::Denied {
            reason,
            booking_id: Some(g.booking_id.clone()),
            grant_id: Some(g.grant_id.clone()),
        };
        let verdict = if g.revoked_at.is_some() {
            deny(DenyReason::Revoked)
        } else if reader_room != Some(g.meeting_space_id.as_str()) {
            deny(DenyReason::WrongRoom)
        } else if now < g.valid_from || now >= g.valid_until {
            deny(DenyReason::OutsideWindow)
        } else {
            let doors = match &g.device_ids {
                Some(ids) => ids.clone(),
                None => places
                    .iter()
                    .filter(|p| p.meeting_space_id == g.meeting_space_id && p.door)
                    .map(|p| p.id.clone())
                    .collect(),
            };
            return Decision::Granted {
                grant_id: g.grant_id.clone(),
                booking_id: g.booking_id.clone(),
                doors,
            };
        };
        if denial.is_none() {
            denial = Some(verdict);
        }
    }
    denial.unwrap_or(Decision::Denied {
        reason: DenyReason::UnknownCredential,
        booking_id: None,
        grant_id: None,
    })
}

/// The controller clock as access decisions and inbound freshness checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    /// The later of the system clock and the floor: the time decisions use.
    pub now: Millis,
    /// What the system clock said.
    pub system: Millis,
    /// The floor after this reading (lowered to a synchronised clock below it).
    pub floor: Millis,
    /// Whether the system reports its clock synchronised.
    pub synchronised: bool,
    /// Synchronised (or not required) and not below the floor.
    pub trusted: bool,
}

impl ClockReading {
    /// How far the system clock is below the floor (zero when it is not).
    pub fn behind_floor(&self) -> std::time::Duration {
        self.floor.saturating_sub(self.system)
    }
}

/// Pure: what to believe about the time. The floor guards against a clock that is behind; a
/// clock the system reports synchronised wins over a floor above it (the floor was raised by a
/// clock that was once ahead, and must not lock the controller out for good).
pub fn read_clock(system: Millis, floor: Millis, synced: bool, require_sync: bool) -> ClockReading {
    let floor = if synced { floor.min(system) } else { floor };
    ClockReading {
        now: system.max(floor),
        system,
        floor,
        synchronised: synced,
        trusted: (synced || !require_sync) && system >= floor,
    }
}

/// The clock as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockStatus {
    pub trusted: bool,
    pub synchronised: bool,
    pub require_sync: bool,
    pub system: String,
    pub floor: String,
    /// Milliseconds the system clock is below the floor (0 when it is not).
    pub behind_floor_ms: u64,
}

impl ClockStatus {
    pub fn of(r: &ClockReading, require_sync: bool) -> ClockStatus {
        ClockStatus {
            trusted: r.trusted,
            synchronised: r.synchronised,
            require_sync,
            system: r.system.rfc3339(),
            floor: r.floor.rfc3339(),
            behind_floor_ms: r.behind_floor().as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests;
