//! Step 6 of the endpoint: a verified command's fields, against this controller's config, into
//! the effects it has. Pure.

use serde_json::{Map, Value};

use crate::wire::panel::Explicit;

use super::{reject, Rejection};
use crate::access::Grant;
use crate::config::Config;
use crate::devices::actions::{Request, Source};
use crate::devices::drivers::Command as DeviceCommand;
use crate::event::Millis;

/// What an accepted command does.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    StoreGrant(Grant),
    RevokeGrant(String),
    RevokeBooking(String),
    RevokeMember(String),
    Unlock {
        request: Request,
        not_after: Millis,
    },
    /// A booking created, confirmed or started: into the room's schedule.
    Booking(crate::schedule::Booking),
    /// `booking.end` / `booking.cancelled`: the booking stops holding the room now.
    CloseBooking {
        booking_id: String,
        meeting_space_id: String,
    },
    /// ZenCore's state for the room's panels (the hub publishes their retained `display`).
    Display(Explicit),
}

impl Effect {
    /// Whether the effect only takes access away (DESIGN §2: such commands are accepted even
    /// while the store is full, so a revoked guest cannot keep opening the door by flooding it).
    pub fn takes_access_away(&self) -> bool {
        matches!(
            self,
            Effect::RevokeGrant(_)
                | Effect::RevokeBooking(_)
                | Effect::RevokeMember(_)
                | Effect::CloseBooking { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Catalogued, but needs nothing from this controller.
    Ignored,
    Accepted(Vec<Effect>),
}

fn text(data: &Map<String, Value>, field: &str) -> Result<String, Rejection> {
    match data.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(reject(
            400,
            format!("data.{field} must be a non-empty string"),
        )),
        None => Err(reject(400, format!("missing data.{field}"))),
    }
}

fn opt_text(data: &Map<String, Value>, field: &str) -> Result<Option<String>, Rejection> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => text(data, field).map(Some),
    }
}

fn time(data: &Map<String, Value>, field: &str) -> Result<Millis, Rejection> {
    let t = text(data, field)?;
    Millis::parse_rfc3339(&t)
        .ok_or_else(|| reject(400, format!("data.{field} is not an RFC 3339 time")))
}

fn sha_hex(data: &Map<String, Value>, field: &str) -> Result<Option<String>, Rejection> {
    match opt_text(data, field)? {
        None => Ok(None),
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Some(h.to_ascii_lowercase()))
        }
        Some(_) => Err(reject(
            400,
            format!("data.{field} must be 64 hex digits (SHA-256 / HMAC-SHA256)"),
        )),
    }
}

fn room(config: &Config, data: &Map<String, Value>) -> Result<String, Rejection> {
    let room = text(data, "meeting_space_id")?;
    let known = room == config.controller.meeting_space_id
        || config
            .devices
            .iter()
            .any(|d| d.meeting_space_id.as_deref() == Some(room.as_str()));
    if known {
        Ok(room)
    } else {
        Err(reject(
            422,
            format!("meeting_space_id `{room}` is not a room of this controller"),
        ))
    }
}

/// Step 6: the event's fields, against this controller's config.
pub fn parse_command(
    config: &Config,
    event: &str,
    data: &Map<String, Value>,
    now: Millis,
) -> Result<Command, Rejection> {
    let accepted = |effects| Ok(Command::Accepted(effects));
    match event {
        "organization.updated" | "member.added" => Ok(Command::Ignored),
        e if e.starts_with("device.") => Ok(Command::Ignored),
        "booking.created" | "booking.confirmed" | "booking.start" => {
            let booking_id = text(data, "booking_id")?;
            let space = room(config, data)?;
            let start = time(data, "start_time")?;
            let end = time(data, "end_time")?;
            if end <= start {
                return Err(reject(400, "data.end_time must be after data.start_time"));
            }
            if event == "booking.start" {
                // The phase is ZenCore's view of the moment; the schedule shows it from the
                // times (reserved from T-15, in use from T-0), so it is only checked.
                let phase = text(data, "phase")?;
                if phase != "T-15" && phase != "T-0" {
                    return Err(reject(
                        400,
                        format!("data.phase `{phase}`: use T-15 or T-0"),
                    ));
                }
            }
            accepted(vec![Effect::Booking(crate::schedule::Booking {
                booking_id,
                meeting_space_id: space,
                start,
                end,
                title: opt_text(data, "title")?,
                closed: None,
            })])
        }
        "access.magic_link" => {
            let grant_id = text(data, "grant_id")?;
            let booking_id = text(data, "booking_id")?;
            let space = room(config, data)?;
            let token = sha_hex(data, "token_sha256")?
                .ok_or_else(|| reject(400, "missing data.token_sha256"))?;
            let pin = sha_hex(data, "pin_sha256")?;
            let pin_hmac = sha_hex(data, "pin_hmac")?;
            let card = sha_hex(data, "card_sha256")?;
            let card_hmac = sha_hex(data, "card_hmac")?;
            for (a, b, what) in [
                (&pin, &pin_hmac, "data.pin_sha256 and data.pin_hmac"),
                (&card, &card_hmac, "data.card_sha256 and data.card_hmac"),
            ] {
                if a.is_some() && b.is_some() {
                    return Err(reject(400, format!("{what}: send one of them")));
                }
            }
            let valid_from = time(data, "valid_from")?;
            let valid_until = time(data, "valid_until")?;
            if valid_until <= valid_from {
                return Err(reject(
                    400,
                    "data.valid_until must be after data.valid_from",
                ));
            }
            let device_ids = match data.get("device_ids") {
                None | Some(Value::Null) => None,
                Some(Value::Array(ids)) => {
                    let mut out = Vec::new();
                    for id in ids {
                        let Some(id) = id.as_str() else {
                            return Err(reject(400, "data.device_ids must be strings"));
                        };
                        let door = config.devices.iter().find(|d| d.id == id);
                        if !door.is_some_and(|d| d.is_door()) {
                            return Err(reject(
                                422,
                                format!("device `{id}` is not a door of this controller"),
                            ));
                        }
                        out.push(id.to_owned());
                    }
                    Some(out)
                }
                Some(_) => return Err(reject(400, "data.device_ids must be an array")),
            };
            accepted(vec![Effect::StoreGrant(Grant {
                grant_id,
                booking_id,
                meeting_space_id: space,
                token_sha256: token,
                pin_sha256: pin,
                pin_hmac,
                card_sha256: card,
                card_hmac,
                valid_from,
                valid_until,
                device_ids,
                member_id: opt_text(data, "member_id")?,
                revoked_at: None,
            })])
        }
        "access.unlock" => {
            let action_id = text(data, "action_id")?;
            let device_id = text(data, "device_id")?;
            let booking_id = text(data, "booking_id")?;
            let grant_id = opt_text(data, "grant_id")?;
            let not_after = time(data, "not_after")?;
            if let Some(d) = data.get("duration_s") {
                // An hour bounds what a door may be held open for, and keeps a hostile or
                // mistaken value from overflowing a timer.
                if !d.is_null() && !d.as_u64().is_some_and(|s| (1..=3600).contains(&s)) {
                    return Err(reject(
                        400,
                        "data.duration_s must be a whole number of seconds, 1..=3600",
                    ));
                }
            }
            let door = config.devices.iter().find(|d| d.id == device_id);
            if !door.is_some_and(|d| d.is_door()) {
                return Err(reject(
                    422,
                    format!("device `{device_id}` is not a door of this controller"),
                ));
            }
            if not_after <= now {
                return Err(reject(422, "expired: not_after has passed"));
            }
            accepted(vec![Effect::Unlock {
                request: Request {
                    action_id,
                    device: device_id,
                    command: DeviceCommand::Unlock,
                    source: Source::Zencore,
                    booking_id: Some(booking_id),
                    grant_id,
                    duration_s: data.get("duration_s").and_then(Value::as_u64),
                },
                not_after,
            }])
        }
        "access.revoke" => match (opt_text(data, "grant_id")?, opt_text(data, "booking_id")?) {
            (Some(g), _) => accepted(vec![Effect::RevokeGrant(g)]),
            (None, Some(b)) => accepted(vec![Effect::RevokeBooking(b)]),
            (None, None) => Err(reject(400, "missing data.grant_id or data.booking_id")),
        },
        "member.removed" => {
            let member = text(data, "member_id")?;
            text(data, "organization_id")?;
            accepted(vec![Effect::RevokeMember(member)])
        }
        "booking.end" | "booking.cancelled" => {
            let booking_id = text(data, "booking_id")?;
            let space = room(config, data)?;
            accepted(vec![
                Effect::RevokeBooking(booking_id.clone()),
                Effect::CloseBooking {
                    booking_id,
                    meeting_space_id: space,
                },
            ])
        }
        "meeting.status_update" | "space.availability_changed" => {
            let space = room(config, data)?;
            let status = text(data, "status")?;
            let booking_id = opt_text(data, "booking_id")?;
            let message = data.get("message").cloned().unwrap_or(Value::Null);
            accepted(vec![Effect::Display(Explicit {
                meeting_space_id: space,
                state: status,
                booking_id,
                message,
            })])
        }
        other => Err(reject(400, format!("unknown event `{other}`"))),
    }
}
