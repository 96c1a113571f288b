//! The ZenCore command endpoint, `POST /webhooks/zencore` on `inbound.listen` (DESIGN
//! section 2).
//!
//! [`verify`] and [`parse_command`] are pure and run the checks in the documented order:
//! size (the handler), signature, shape, freshness, then (in the handler, against the store)
//! idempotency, then fields. A request that fails any step changes nothing. An accepted
//! command is durable before the 202.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::access::{ClockReading, Grant};
use crate::config::{Config, DeviceType};
use crate::devices::actions::{PendingUnlock, Request, Source};
use crate::devices::drivers::{panel_prefix, Command as DeviceCommand, Outgoing};
use crate::devices::mqtt::HubRequest;
use crate::event::Millis;
use crate::signing::Key;
use crate::store::{Commit, Store, StoreError};

/// Bodies above this are refused with 413 before anything else is looked at.
pub const MAX_BODY: usize = 65_536;
/// Idempotency keys are remembered at least this long.
pub const DEDUP_KEEP: Duration = Duration::from_secs(72 * 3600);

/// A refusal: the status and the reason, sent as `{"error": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub error: String,
}

fn reject(status: u16, error: impl Into<String>) -> Rejection {
    Rejection {
        status,
        error: error.into(),
    }
}

/// A request that passed signature, shape and freshness.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The idempotency key.
    pub key: String,
    pub event: String,
    pub data: Map<String, Value>,
}

/// Steps 2–4 of DESIGN section 2, plus the idempotency key. `header` looks a header up by its
/// lowercase name.
/// Commands that only take access away: accepted on an untrusted clock and into a full store
/// (DESIGN section 2).
pub const TAKES_ACCESS_AWAY: [&str; 5] = [
    "access.revoke",
    "member.removed",
    "booking.end",
    "booking.cancelled",
    "access.lockdown",
];

pub fn verify<'a>(
    keys: &[Key],
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    clock: ClockReading,
    tolerance: Duration,
) -> Result<Verified, Rejection> {
    // 2. Authenticity: either scheme, any active key.
    let std_ok = || {
        let (Some(id), Some(ts), Some(sig)) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        ) else {
            return false;
        };
        let Ok(ts) = ts.trim().parse::<i64>() else {
            return false;
        };
        keys.iter().any(|k| k.verify_v1(id, ts, body, sig))
    };
    if header("webhook-signature")
        .is_some_and(|s| s.split_whitespace().count() > crate::signing::MAX_SIGNATURE_ENTRIES)
    {
        return Err(reject(401, "more than 8 webhook-signature entries"));
    }
    let std_verified = std_ok();
    let hex_ok = || {
        header("x-webhook-signature")
            .is_some_and(|sig| keys.iter().any(|k| k.verify_hex(body, sig)))
    };
    if !std_verified && !hex_ok() {
        return Err(reject(401, "signature missing or invalid"));
    }
    // 3. Shape.
    let value: Value =
        serde_json::from_slice(body).map_err(|e| reject(400, format!("body is not JSON: {e}")))?;
    let Value::Object(mut envelope) = value else {
        return Err(reject(400, "body must be a JSON object"));
    };
    let event = match envelope.get("event") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(reject(400, "`event` must be a string")),
        None => return Err(reject(400, "missing `event`")),
    };
    let timestamp = match envelope.get("timestamp") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(reject(400, "`timestamp` must be a string")),
        None => return Err(reject(400, "missing `timestamp`")),
    };
    let data = match envelope.remove("data") {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(reject(400, "`data` must be an object")),
        None => return Err(reject(400, "missing `data`")),
    };
    let (std_id, x_id) = (header("webhook-id"), header("x-webhook-id"));
    if let (Some(a), Some(b)) = (std_id, x_id) {
        if a != b {
            return Err(reject(400, "webhook-id and X-Webhook-Id differ"));
        }
    }
    // 4. Freshness, on a clock we trust. On a clock we do not trust, only commands that take
    // access away are taken (a clock that was once ahead must not keep a revoke out); they are
    // fresh if near the system clock or not older than the floor, else ZenCore retries them.
    let takes_away = TAKES_ACCESS_AWAY.contains(&event.as_str());
    if !clock.trusted && !takes_away {
        return Err(reject(503, "clock"));
    }
    let off = |a: Millis, b: Millis| a.max(b).saturating_sub(a.min(b));
    let fresh = |t: Millis, what: &str| -> Result<(), Rejection> {
        if clock.trusted {
            if off(t, clock.now) > tolerance {
                return Err(reject(
                    401,
                    format!("stale: {what} is outside the tolerance"),
                ));
            }
            return Ok(());
        }
        let near_system = off(t, clock.system) <= tolerance;
        let after_floor = t.saturating_add(tolerance) >= clock.floor;
        if near_system || after_floor {
            Ok(())
        } else {
            Err(reject(503, "clock"))
        }
    };
    let at = Millis::parse_rfc3339(&timestamp)
        .ok_or_else(|| reject(400, "`timestamp` is not an RFC 3339 time"))?;
    fresh(at, "`timestamp`")?;
    if let Some(ts) = header("webhook-timestamp") {
        let secs: u64 = ts
            .trim()
            .parse()
            .map_err(|_| reject(401, "stale: webhook-timestamp is not unix seconds"))?;
        fresh(Millis(secs.saturating_mul(1000)), "webhook-timestamp")?;
    }
    // 5. The idempotency key (checked against the store by the caller), from signed bytes only:
    // `webhook-id` is signed by the Standard Webhooks scheme, `X-Webhook-Id` by nothing, so a
    // captured hex-signed request resent under a new `X-Webhook-Id` is the same command.
    let key = std_id
        .filter(|_| std_verified)
        .map(str::to_owned)
        .or_else(|| {
            envelope
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| hex::encode(Sha256::digest(body)));
    Ok(Verified { key, event, data })
}

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
    /// Publish to the `display` of every panel in the room (retained: it is state).
    Display {
        meeting_space_id: String,
        payload: Value,
    },
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
            accepted(vec![Effect::Display {
                meeting_space_id: space,
                payload: json!({"state": status, "booking_id": booking_id, "message": message}),
            }])
        }
        other => Err(reject(400, format!("unknown event `{other}`"))),
    }
}

/// Queues `payload` for the `display` of every panel in `room`.
fn publish_display(config: &Config, room: &str, payload: &Value, after: &mut Vec<HubRequest>) {
    for panel in config.devices.iter().filter(|d| {
        d.kind == DeviceType::Panel
            && d.meeting_space_id
                .as_deref()
                .unwrap_or(&config.controller.meeting_space_id)
                == room
    }) {
        after.push(HubRequest::Publish(Outgoing {
            topic: format!("{}/display", panel_prefix(config, &panel.id)),
            payload: payload.to_string().into_bytes(),
            retain: true,
        }));
    }
}

#[derive(Clone)]
pub struct InboundState {
    pub config: Arc<Config>,
    pub keys: Arc<Vec<Key>>,
    pub store: Store,
    pub clock: Arc<crate::access::Clock>,
    pub hub: mpsc::Sender<HubRequest>,
}

pub fn router(state: InboundState) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/zencore", axum::routing::post(handle))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

fn answer(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

impl From<Rejection> for Response {
    fn from(r: Rejection) -> Response {
        answer(r.status, json!({ "error": r.error }))
    }
}

/// An accepted command's idempotency key, kept for [`DEDUP_KEEP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupKey {
    pub accepted: Millis,
}

impl crate::store::Record for DedupKey {
    const FAMILY: &'static str = "dedup";
    const VERSION: u32 = 1;
}

/// An accepted `access.unlock`'s `action_id`, kept for [`DEDUP_KEEP`] (DESIGN §2 step 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionKey {
    pub accepted: Millis,
}

impl crate::store::Record for ActionKey {
    const FAMILY: &'static str = "dedup.action";
    const VERSION: u32 = 1;
}

/// A commit step that forgets idempotency keys and action ids older than [`DEDUP_KEEP`].
pub fn gc_dedup(commit: &mut Commit, now: Millis) {
    let cutoff = Millis(now.0.saturating_sub(DEDUP_KEEP.as_millis() as u64));
    commit.step(move |tx| {
        tx.retain::<DedupKey>(|_, d| d.accepted >= cutoff)?;
        tx.retain::<ActionKey>(|_, d| d.accepted >= cutoff)?;
        Ok(())
    });
}

fn duplicate(key: &str) -> Response {
    answer(200, json!({"status": "duplicate", "id": key}))
}

/// What the device hub is told once the command is durable. A booking's final form is known
/// only inside the commit (it merges with what is stored), so it comes back through a slot.
enum Later {
    Now(HubRequest),
    Booking(Slot),
    Close {
        slot: Slot,
        meeting_space_id: String,
    },
    Display {
        meeting_space_id: String,
        payload: Value,
    },
}

type Slot = Arc<std::sync::Mutex<Option<crate::schedule::Booking>>>;

fn take(slot: &Slot) -> Option<crate::schedule::Booking> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Adds an effect's writes to the command's commit. Returns whether grants changed and what
/// to tell the device hub afterwards.
fn apply(
    commit: &mut Commit,
    effect: Effect,
    now: Millis,
) -> Result<(bool, Vec<Later>), StoreError> {
    let revoke = |commit: &mut Commit, which: Box<dyn Fn(&Grant) -> bool + Send>| {
        commit.step(move |tx| {
            for (key, mut g) in tx.all::<Grant>()? {
                if g.revoked_at.is_none() && which(&g) {
                    g.revoked_at = Some(now);
                    tx.put(&key, &g)?;
                }
            }
            Ok(())
        });
    };
    Ok(match effect {
        Effect::StoreGrant(g) => {
            commit.put(&g.grant_id, &g)?;
            (true, Vec::new())
        }
        Effect::RevokeGrant(id) => {
            revoke(commit, Box::new(move |g| g.grant_id == id));
            (true, Vec::new())
        }
        Effect::RevokeBooking(id) => {
            revoke(commit, Box::new(move |g| g.booking_id == id));
            (true, Vec::new())
        }
        Effect::RevokeMember(id) => {
            revoke(
                commit,
                Box::new(move |g| g.member_id.as_deref() == Some(id.as_str())),
            );
            (true, Vec::new())
        }
        Effect::Unlock { request, not_after } => {
            let pending = PendingUnlock {
                action_id: request.action_id.clone(),
                device: request.device.clone(),
                booking_id: request.booking_id.clone(),
                grant_id: request.grant_id.clone(),
                duration_s: request.duration_s,
                not_after,
            };
            // An action_id is carried out at most once, whatever command carries it.
            commit.insert_new(&pending.action_id, &ActionKey { accepted: now })?;
            commit.put(&pending.action_id, &pending)?;
            (
                false,
                vec![Later::Now(HubRequest::Action {
                    request,
                    reply: None,
                })],
            )
        }
        Effect::Booking(b) => {
            let slot = Slot::default();
            let out = slot.clone();
            commit.step(move |tx| {
                let mut b = b.clone();
                // Another command may already have told more (a title, a cancellation).
                if let Some(old) = tx.get::<crate::schedule::Booking>(&b.booking_id)? {
                    b.title = b.title.or(old.title);
                    b.closed = old.closed;
                }
                tx.put(&b.booking_id, &b)?;
                *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
                Ok(())
            });
            (false, vec![Later::Booking(slot)])
        }
        Effect::CloseBooking {
            booking_id,
            meeting_space_id,
        } => {
            let slot = Slot::default();
            let out = slot.clone();
            commit.step(move |tx| {
                let found = tx.get::<crate::schedule::Booking>(&booking_id)?;
                let closed = match found {
                    Some(mut b) => {
                        b.closed = b.closed.or(Some(now));
                        tx.put(&booking_id, &b)?;
                        Some(b)
                    }
                    None => None,
                };
                *out.lock().unwrap_or_else(|p| p.into_inner()) = closed;
                Ok(())
            });
            (
                false,
                vec![Later::Close {
                    slot,
                    meeting_space_id,
                }],
            )
        }
        Effect::Display {
            meeting_space_id,
            payload,
        } => (
            false,
            vec![Later::Display {
                meeting_space_id,
                payload,
            }],
        ),
    })
}

fn store_failure(e: StoreError) -> Response {
    crate::telemetry::store_error("inbound command", &e);
    answer(500, json!({"error": "store"}))
}

async fn handle(State(s): State<InboundState>, headers: HeaderMap, body: Body) -> Response {
    // 1. Size, before anything else is looked at: a declared length over the limit is refused
    // at once, without waiting for a body that may never come.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return answer(413, json!({"error": "body larger than 65536 bytes"}));
    }
    let body = match tokio::time::timeout(
        crate::serve::BODY_TIMEOUT,
        axum::body::to_bytes(body, MAX_BODY),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return answer(413, json!({"error": "body larger than 65536 bytes"})),
        Err(_) => return answer(408, json!({"error": "body not received within 30 s"})),
    };
    let clock = s.clock.read();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verified = match verify(&s.keys, header, &body, clock, s.config.inbound.tolerance) {
        Ok(v) => v,
        Err(r) => {
            tracing::warn!(message = "Inbound command refused.", status = r.status, error = %r.error);
            return r.into();
        }
    };
    let seen = {
        let key = verified.key.clone();
        s.store.read(move |st| st.record::<DedupKey>(&key)).await
    };
    match seen {
        Ok(Some(_)) => return duplicate(&verified.key),
        Ok(None) => {}
        Err(e) => return store_failure(e),
    }
    let command = match parse_command(&s.config, &verified.event, &verified.data, clock.now) {
        Ok(c) => c,
        Err(r) => {
            tracing::warn!(message = "Inbound command refused.", event = %verified.event, status = r.status, error = %r.error);
            return r.into();
        }
    };
    let effects = match command {
        Command::Ignored => Vec::new(),
        Command::Accepted(e) => e,
    };
    // DESIGN: a full store takes no new commands (doors keep working on the stored grants),
    // except those that only take access away.
    let takes_away = effects.iter().all(Effect::takes_access_away);
    if !clock.trusted && !takes_away {
        return answer(503, json!({"error": "clock"}));
    }
    if !effects.is_empty() && !takes_away && s.store.is_full() {
        return answer(507, json!({"error": "store_full"}));
    }
    // The command's writes and its idempotency key are one commit, and the key goes in only if
    // it is new: of two copies racing past the check above, exactly one is accepted.
    let mut commit = Commit::new();
    if let Err(e) = commit.insert_new(
        &verified.key,
        &DedupKey {
            accepted: clock.now,
        },
    ) {
        return store_failure(e);
    }
    let mut grants_changed = false;
    let mut later = Vec::new();
    for effect in effects {
        match apply(&mut commit, effect, clock.now) {
            Ok((changed, l)) => {
                grants_changed |= changed;
                later.extend(l);
            }
            Err(e) => return store_failure(e),
        }
    }
    match s.store.commit(commit).await {
        Ok(_) => {}
        Err(StoreError::Exists { .. }) => return duplicate(&verified.key),
        Err(e) => return store_failure(e),
    }
    let mut after = Vec::new();
    for l in later {
        match l {
            Later::Now(r) => after.push(r),
            Later::Display {
                meeting_space_id,
                payload,
            } => publish_display(&s.config, &meeting_space_id, &payload, &mut after),
            Later::Booking(slot) => {
                if let Some(b) = take(&slot) {
                    after.push(HubRequest::Booking(b));
                }
            }
            Later::Close {
                slot,
                meeting_space_id,
            } => match take(&slot) {
                Some(b) => after.push(HubRequest::Booking(b)),
                None => {
                    // Unknown here: the panels still learn the room is free.
                    publish_display(
                        &s.config,
                        &meeting_space_id,
                        &json!({"state": "available", "booking_id": null, "message": null}),
                        &mut after,
                    );
                }
            },
        }
    }
    if grants_changed {
        match s.store.read(|st| st.records::<Grant>()).await {
            Ok(all) => after.push(HubRequest::Grants(
                all.into_iter().map(|(_, g)| g).collect(),
            )),
            Err(e) => return store_failure(e),
        }
    }
    let ignored = after.is_empty() && !grants_changed;
    for r in after {
        if s.hub.send(r).await.is_err() {
            tracing::error!(message = "Device task stopped; accepted command not carried out.");
        }
    }
    tracing::info!(message = "Inbound command accepted.", event = %verified.event, id = %verified.key);
    if ignored {
        answer(202, json!({"status": "ignored", "id": verified.key}))
    } else {
        answer(202, json!({"status": "accepted", "id": verified.key}))
    }
}

#[cfg(test)]
mod tests;
