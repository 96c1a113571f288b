//! What ZenEdge tells a room panel over MQTT (DESIGN section 3, the `zenedge-panel` topics):
//! its retained `display` and its `feedback` answers.

use serde::Serialize;
use serde_json::Value;

use crate::event::Millis;

/// A booking as a panel shows it (`next` of the display).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Brief {
    pub booking_id: String,
    pub start_time: Millis,
    pub end_time: Millis,
    pub title: Option<String>,
}

/// The retained `<prefix>/display` of a panel: what the room shows now and what comes next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Display {
    /// `available` | `reserved` | `in_use`, or a state ZenCore sent (passed through).
    pub state: String,
    pub booking_id: Option<String>,
    pub start_time: Option<Millis>,
    pub end_time: Option<Millis>,
    pub title: Option<String>,
    pub checked_in: bool,
    /// ZenCore's message with an explicit state, else null.
    pub message: Value,
    pub next: Option<Brief>,
}

impl Display {
    /// What a panel shows under a lockdown (DESIGN §3): `lockdown`, with its reason as the
    /// message; nothing of the bookings.
    pub fn lockdown(reason: Option<&str>) -> Display {
        Display {
            state: "lockdown".to_owned(),
            booking_id: None,
            start_time: None,
            end_time: None,
            title: None,
            checked_in: false,
            message: reason.map_or(Value::Null, |r| Value::String(r.to_owned())),
            next: None,
        }
    }

    /// This view with ZenCore's explicit state on top (`meeting.status_update`,
    /// `space.availability_changed`). The booking's times and title stay only when ZenCore
    /// speaks of the booking shown; `next` stays, it is the schedule's.
    pub fn with_explicit(&self, explicit: &Explicit) -> Display {
        let same = explicit.booking_id.is_some() && explicit.booking_id == self.booking_id;
        Display {
            state: explicit.state.clone(),
            booking_id: explicit.booking_id.clone(),
            start_time: self.start_time.filter(|_| same),
            end_time: self.end_time.filter(|_| same),
            title: self.title.clone().filter(|_| same),
            checked_in: same && self.checked_in,
            message: explicit.message.clone(),
            next: self.next.clone(),
        }
    }
}

/// A state ZenCore set for a room's panels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explicit {
    pub meeting_space_id: String,
    pub state: String,
    pub booking_id: Option<String>,
    pub message: Value,
}

/// `granted` / `denied` on a panel's `feedback`, with the request's own id. The precise reason
/// of a denial is never here (DESIGN section 2: the panel is no oracle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessFeedback {
    pub request_id: Value,
    pub result: Verdict,
    pub reason: Option<Told>,
}

/// `result` of a panel's access feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Granted,
    Denied,
}

/// `reason` of a denial as a panel is told it: only that it was denied, or that the panel is
/// locked out (DESIGN section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Told {
    Denied,
    LockedOut,
}

/// The answer to a panel's `check_in` / `end_meeting` / `extend` on its `feedback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionAnswer {
    pub request_id: Value,
    pub action: String,
    pub result: ActionResult,
    /// Why it was refused (the schedule's refusal, or `malformed`).
    pub reason: Option<&'static str>,
}

/// `result` of a panel action's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionResult {
    Ok,
    Refused,
}

/// A panel message as the bytes to publish.
pub fn to_bytes(message: &impl Serialize) -> Vec<u8> {
    // Strings, times and JSON values: serialising cannot fail.
    serde_json::to_vec(message).unwrap_or_default()
}
