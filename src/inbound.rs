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
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::access::Grant;
use crate::config::Config;
use crate::devices::actions::PendingUnlock;
use crate::event::Millis;
use crate::runtime::HubRequest;
use crate::signing::Key;
use crate::store::{Commit, Store, StoreError};
use crate::telemetry::{events as t, InternalEvent};
use crate::wire::panel::Explicit;

mod command;
pub mod snapshot;
mod verify;

pub use command::{parse_command, Command, Effect};
pub use verify::{verify, Verified, TAKES_ACCESS_AWAY};

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

#[derive(Clone)]
pub struct InboundState {
    pub config: Arc<Config>,
    pub keys: Arc<Vec<Key>>,
    pub store: Store,
    pub clock: Arc<crate::clock::Clock>,
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

/// An accepted command's idempotency key, kept for [`DEDUP_KEEP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupKey {
    pub accepted: Millis,
}

impl crate::record::Record for DedupKey {
    const FAMILY: &'static str = "dedup";
    const VERSION: u32 = 1;
}

/// An accepted `access.unlock`'s `action_id`, kept for [`DEDUP_KEEP`] (DESIGN §2 step 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionKey {
    pub accepted: Millis,
}

impl crate::record::Record for ActionKey {
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

fn duplicate(key: &str) -> Answer {
    Answer::new(200, json!({"status": "duplicate", "id": key}))
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
                    // The first T-0 is when it started; `booking.start` says nothing of
                    // passage mode, so what `booking.created` said stays.
                    b.started = old.started.or(b.started);
                    b.unlock_during_meeting = b.unlock_during_meeting.or(old.unlock_during_meeting);
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
        Effect::Display(explicit) => (false, vec![Later::Now(HubRequest::Explicit(explicit))]),
        Effect::Lockdown(l) => {
            commit.put(&l.lockdown_id, &l)?;
            (false, vec![Later::Now(HubRequest::Lockdown(l))])
        }
        Effect::LiftLockdown(id) => {
            commit.remove::<crate::wire::Lockdown>(&id);
            (false, vec![Later::Now(HubRequest::LockdownLifted(id))])
        }
        Effect::Snapshot(s) => {
            // A step may run twice (a group that failed is applied again commit by commit).
            commit.step(move |tx| snapshot::apply(tx, s.clone(), now));
            (true, Vec::new())
        }
    })
}

fn store_failure(e: StoreError) -> Answer {
    t::StoreFailed {
        context: "inbound command",
        error: &e,
    }
    .emit();
    Answer::new(500, json!({"error": "store"}))
}

/// The answer to a command, whichever transport carried it: the HTTP status it has (or would
/// have had) and its JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn new(status: u16, body: Value) -> Answer {
        Answer { status, body }
    }
}

impl From<Rejection> for Answer {
    fn from(r: Rejection) -> Answer {
        Answer::new(r.status, json!({ "error": r.error }))
    }
}

impl From<Answer> for Response {
    fn from(a: Answer) -> Response {
        answer(a.status, a.body)
    }
}

/// Which transport carried a command (the `transport` label of `zenedge_commands_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Http,
    Mqtt,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Mqtt => "mqtt",
        }
    }
}

/// A command's headers, names in lower case (HTTP's, or those a channel message carries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(std::collections::HashMap<String, String>);

impl Headers {
    /// From name/value pairs; names are matched case-insensitively, and of a name given twice
    /// the first value counts (as HTTP's header lookup does).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Headers {
        let mut map = std::collections::HashMap::new();
        for (name, value) in pairs {
            map.entry(name.to_ascii_lowercase())
                .or_insert_with(|| value.to_owned());
        }
        Headers(map)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

async fn handle(State(s): State<InboundState>, headers: HeaderMap, body: Body) -> Response {
    // 1. Size, before anything else is looked at: a declared length over the limit is refused
    // at once, without waiting for a body that may never come.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return refused(Via::Http, 413, "body larger than 65536 bytes").into();
    }
    let body = match tokio::time::timeout(
        crate::serve::BODY_TIMEOUT,
        axum::body::to_bytes(body, MAX_BODY),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return refused(Via::Http, 413, "body larger than 65536 bytes").into(),
        Err(_) => return refused(Via::Http, 408, "body not received within 30 s").into(),
    };
    let headers = Headers::from_pairs(
        headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
    );
    accept(&s, &headers, &body, Via::Http).await.into()
}

/// The one verification chain of both transports (DESIGN sections 2 and 2b), from a body that
/// is at most [`MAX_BODY`] bytes: signature, shape, freshness, idempotency, fields; an accepted
/// command is durable, and handed to the device hub, before its answer. Counted by transport
/// and status.
pub async fn accept(s: &InboundState, headers: &Headers, body: &[u8], via: Via) -> Answer {
    counted(via, verify_and_apply(s, headers, body).await)
}

/// A command refused before the chain could look at it (its transport's own limits, or a
/// channel message that is not one), counted like the others.
pub fn refused(via: Via, status: u16, error: &str) -> Answer {
    counted(via, Answer::new(status, json!({ "error": error })))
}

fn counted(via: Via, answer: Answer) -> Answer {
    t::CommandAnswered {
        transport: via.as_str(),
        status: answer.status,
    }
    .emit();
    answer
}

async fn verify_and_apply(s: &InboundState, headers: &Headers, body: &[u8]) -> Answer {
    if body.len() > MAX_BODY {
        return Answer::new(413, json!({"error": "body larger than 65536 bytes"}));
    }
    let clock = s.clock.read();
    let header = |name: &str| headers.get(name);
    let verified = match verify(&s.keys, header, body, clock, s.config.inbound.tolerance) {
        Ok(v) => v,
        Err(r) => {
            t::InboundRefused {
                event: "",
                status: r.status,
                error: &r.error,
            }
            .emit();
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
            t::InboundRefused {
                event: &verified.event,
                status: r.status,
                error: &r.error,
            }
            .emit();
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
        return Answer::new(503, json!({"error": "clock"}));
    }
    if !effects.is_empty() && !takes_away && s.store.is_full() {
        return Answer::new(507, json!({"error": "store_full"}));
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
                    after.push(HubRequest::Explicit(Explicit {
                        meeting_space_id,
                        state: "available".into(),
                        booking_id: None,
                        message: Value::Null,
                    }));
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
            t::CommandNotCarriedOut {}.emit();
        }
    }
    t::InboundAccepted {
        event: &verified.event,
        id: &verified.key,
    }
    .emit();
    if ignored {
        Answer::new(202, json!({"status": "ignored", "id": verified.key}))
    } else {
        Answer::new(202, json!({"status": "accepted", "id": verified.key}))
    }
}

#[cfg(test)]
mod tests;
