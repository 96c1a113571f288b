//! Step 6 of the endpoint: a verified command's fields, against this controller's config, into
//! the effects it has. Pure.

use serde_json::{Map, Value};

use crate::wire::command::{self as wire, Text};
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
    /// `access.grants_snapshot`: the stored grants of a room (or all) become these, at once or
    /// once every part has arrived.
    Snapshot(Snapshot),
    /// `access.lockdown`: kept until lifted.
    Lockdown(crate::wire::Lockdown),
    /// `access.lockdown_lifted`, by its `lockdown_id`.
    LiftLockdown(String),
}

/// A grants snapshot, or one part of it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The room whose grants it replaces; every grant of the controller when `None`.
    pub room: Option<String>,
    pub grants: Vec<Grant>,
    pub part: Option<Part>,
}

/// Which part of a snapshot in parts this is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    pub snapshot_id: String,
    /// 1-based.
    pub part: u32,
    pub parts: u32,
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
                | Effect::Lockdown(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Catalogued, but needs nothing from this controller.
    Ignored,
    Accepted(Vec<Effect>),
}

fn room(config: &Config, room: Text) -> Result<String, Rejection> {
    let known = room.0 == config.controller.meeting_space_id
        || config
            .devices
            .iter()
            .any(|d| d.meeting_space_id.as_deref() == Some(room.0.as_str()));
    if known {
        Ok(room.0)
    } else {
        Err(reject(
            422,
            format!(
                "meeting_space_id `{}` is not a room of this controller",
                room.0
            ),
        ))
    }
}

fn door(config: &Config, id: Text) -> Result<String, Rejection> {
    let door = config.devices.iter().find(|d| d.id == id.0);
    if door.is_some_and(|d| d.is_door()) {
        Ok(id.0)
    } else {
        Err(reject(
            422,
            format!("device `{}` is not a door of this controller", id.0),
        ))
    }
}

/// A booking as ZenCore describes it. `started`: the moment its T-0 arrived.
fn booking(
    config: &Config,
    b: wire::BookingTimes,
    started: Option<Millis>,
) -> Result<crate::schedule::Booking, Rejection> {
    Ok(crate::schedule::Booking {
        booking_id: b.booking_id.into(),
        meeting_space_id: room(config, b.meeting_space_id)?,
        start: b.start_time.0,
        end: b.end_time.0,
        title: b.title.map(String::from),
        closed: None,
        started,
        unlock_during_meeting: b.unlock_during_meeting,
    })
}

fn hex(h: Option<wire::Hex64>) -> Option<String> {
    h.map(|h| h.0)
}

/// A grant as ZenCore sent it, against this controller's rooms and doors.
fn grant(config: &Config, g: wire::MagicLink) -> Result<Grant, Rejection> {
    let device_ids = match g.device_ids {
        None => None,
        Some(ids) => Some(
            ids.into_iter()
                .map(|id| door(config, id))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Grant {
        grant_id: g.grant_id.into(),
        booking_id: g.booking_id.into(),
        meeting_space_id: room(config, g.meeting_space_id)?,
        token_sha256: g.token_sha256.0,
        pin_sha256: hex(g.pin_sha256),
        pin_hmac: hex(g.pin_hmac),
        card_sha256: hex(g.card_sha256),
        card_hmac: hex(g.card_hmac),
        valid_from: g.valid_from.0,
        valid_until: g.valid_until.0,
        device_ids,
        member_id: g.member_id.map(String::from),
        revoked_at: None,
    })
}

/// Step 6: the event's fields (their shape checked by [`wire::decode`]), against this
/// controller's config: its rooms, its doors, and whether an unlock has already expired.
pub fn parse_command(
    config: &Config,
    event: &str,
    data: &Map<String, Value>,
    now: Millis,
) -> Result<Command, Rejection> {
    let command = match wire::decode(event, data) {
        Ok(wire::Decoded::Ignored) => return Ok(Command::Ignored),
        Ok(wire::Decoded::Command(c)) => *c,
        Err(e) => return Err(reject(400, e.0)),
    };
    let effects = match command {
        wire::Command::BookingCreated(b) | wire::Command::BookingConfirmed(b) => {
            vec![Effect::Booking(booking(config, b, None)?)]
        }
        // ZenCore's T-0 marks the booking started when it arrives, whatever `start_time` says
        // (DESIGN §2); each phase is also ZenCore's explicit state for the room's panels,
        // shown over the schedule's view until that view moves on.
        wire::Command::BookingStart(b) => {
            let started = (b.phase == wire::Phase::Started).then_some(now);
            let state = match b.phase {
                wire::Phase::Reserved => "reserved",
                wire::Phase::Started => "in_use",
            };
            let booking = booking(
                config,
                wire::BookingTimes {
                    booking_id: b.booking_id,
                    meeting_space_id: b.meeting_space_id,
                    start_time: b.start_time,
                    end_time: b.end_time,
                    title: b.title,
                    unlock_during_meeting: None,
                },
                started,
            )?;
            let explicit = Explicit {
                meeting_space_id: booking.meeting_space_id.clone(),
                state: state.to_owned(),
                booking_id: Some(booking.booking_id.clone()),
                message: Value::Null,
            };
            vec![Effect::Booking(booking), Effect::Display(explicit)]
        }
        wire::Command::MagicLink(g) => vec![Effect::StoreGrant(grant(config, g)?)],
        wire::Command::GrantsSnapshot(s) => {
            let part = match (s.snapshot_id, s.part, s.parts) {
                (Some(id), Some(part), Some(parts)) => Some(Part {
                    snapshot_id: id.into(),
                    part,
                    parts,
                }),
                _ => None,
            };
            vec![Effect::Snapshot(Snapshot {
                room: s.meeting_space_id.map(|r| room(config, r)).transpose()?,
                grants: s
                    .grants
                    .into_iter()
                    .map(|g| grant(config, g))
                    .collect::<Result<_, _>>()?,
                part,
            })]
        }
        wire::Command::Unlock(u) => {
            let device = door(config, u.device_id)?;
            if u.not_after.0 <= now {
                return Err(reject(422, "expired: not_after has passed"));
            }
            vec![Effect::Unlock {
                request: Request {
                    action_id: u.action_id.into(),
                    device,
                    command: DeviceCommand::Unlock,
                    source: Source::Zencore,
                    booking_id: Some(u.booking_id.into()),
                    grant_id: u.grant_id.map(String::from),
                    duration_s: u.duration_s.map(|d| d.0),
                },
                not_after: u.not_after.0,
            }]
        }
        wire::Command::Revoke(wire::Revoke::Grant(g)) => vec![Effect::RevokeGrant(g.into())],
        wire::Command::Revoke(wire::Revoke::Booking(b)) => vec![Effect::RevokeBooking(b.into())],
        wire::Command::MemberRemoved(m) => vec![Effect::RevokeMember(m.member_id.into())],
        wire::Command::BookingEnd(b) | wire::Command::BookingCancelled(b) => {
            let space = room(config, b.meeting_space_id)?;
            let booking_id: String = b.booking_id.into();
            vec![
                Effect::RevokeBooking(booking_id.clone()),
                Effect::CloseBooking {
                    booking_id,
                    meeting_space_id: space,
                },
            ]
        }
        wire::Command::Lockdown(l) => vec![Effect::Lockdown(crate::wire::Lockdown {
            lockdown_id: l.lockdown_id.into(),
            meeting_space_id: l.meeting_space_id.map(|r| room(config, r)).transpose()?,
            reason: l.reason.map(String::from),
            since: now,
        })],
        // A lift names its lockdown; its room, if given, must still be one of this controller.
        wire::Command::LockdownLifted(l) => {
            l.meeting_space_id.map(|r| room(config, r)).transpose()?;
            vec![Effect::LiftLockdown(l.lockdown_id.into())]
        }
        wire::Command::MeetingStatusUpdate(st) | wire::Command::SpaceAvailabilityChanged(st) => {
            vec![Effect::Display(Explicit {
                meeting_space_id: room(config, st.meeting_space_id)?,
                state: st.status.into(),
                booking_id: st.booking_id.map(String::from),
                message: st.message,
            })]
        }
    };
    Ok(Command::Accepted(effects))
}
