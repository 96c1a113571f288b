//! The command channel's messages (DESIGN section 2b), as bytes in and out. Pure.
//!
//! In: `{"headers":{…},"body":"<the exact body>"}` on `<prefix>/commands`. Out: one reply per
//! command on `<prefix>/replies`, and the controller's retained presence on `<prefix>/status`.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::access::Grant;
use crate::inbound::{Answer, Headers};

/// A command as the channel carries it: ZenCore's HTTP headers and the exact body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandMessage {
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// A message on `<prefix>/commands` that is not a command message: what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotACommand(pub String);

/// Reads a message from `<prefix>/commands`. Anything but `{"headers": {name: string, …},
/// "body": string}` is refused with the reason, answered 400.
pub fn parse(payload: &[u8]) -> Result<CommandMessage, NotACommand> {
    let no = |s: &str| Err(NotACommand(s.to_owned()));
    let v: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return no(&format!("message is not JSON: {e}")),
    };
    let Value::Object(map) = v else {
        return no("message must be a JSON object with headers and body");
    };
    let body = match map.get("body") {
        Some(Value::String(b)) => b.as_bytes().to_vec(),
        Some(_) => return no("body must be a string (the exact HTTP body)"),
        None => return no("missing body"),
    };
    let headers = match map.get("headers") {
        Some(Value::Object(h)) => {
            let mut pairs = Vec::with_capacity(h.len());
            for (name, value) in h {
                let Value::String(value) = value else {
                    return no(&format!("headers.{name} must be a string"));
                };
                pairs.push((name.as_str(), value.as_str()));
            }
            Headers::from_pairs(pairs)
        }
        Some(_) => return no("headers must be an object of strings"),
        None => return no("missing headers"),
    };
    Ok(CommandMessage { headers, body })
}

/// What a reply names as its request: `webhook-id`, else `X-Webhook-Id`, else the body's `id`,
/// as received; else null.
pub fn request_of(message: &CommandMessage) -> Value {
    if let Some(id) = message
        .headers
        .get("webhook-id")
        .or_else(|| message.headers.get("x-webhook-id"))
    {
        return Value::String(id.to_owned());
    }
    serde_json::from_slice::<Value>(&message.body)
        .ok()
        .and_then(|b| b.get("id").cloned())
        .unwrap_or(Value::Null)
}

/// The reply to one command: `{"request":…,"status":…,"body":…}`.
pub fn reply(request: Value, answer: &Answer) -> Vec<u8> {
    #[derive(Serialize)]
    struct Reply<'a> {
        request: Value,
        status: u16,
        body: &'a Value,
    }
    serde_json::to_vec(&Reply {
        request,
        status: answer.status,
        body: &answer.body,
    })
    .unwrap_or_default()
}

/// The count and digest of the stored grants (revoked ones included): lowercase hex SHA-256
/// over the lines `<grant_id>:<valid_until>:<revoked>\n`, sorted bytewise.
pub fn grants_digest<'a>(grants: impl IntoIterator<Item = &'a Grant>) -> (usize, String) {
    let mut lines: Vec<String> = grants
        .into_iter()
        .map(|g| {
            format!(
                "{}:{}:{}\n",
                g.grant_id,
                g.valid_until.rfc3339(),
                g.revoked_at.is_some()
            )
        })
        .collect();
    lines.sort_unstable();
    let mut h = Sha256::new();
    for l in &lines {
        h.update(l.as_bytes());
    }
    (lines.len(), hex::encode(h.finalize()))
}

/// The Last Will on `<prefix>/status`.
pub const OFFLINE: &[u8] = br#"{"state":"offline"}"#;

/// The retained `online` on `<prefix>/status`, after every connect.
pub fn online(last_sequence: u64, grants: (usize, String)) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "state": "online",
        "version": env!("CARGO_PKG_VERSION"),
        "last_sequence": last_sequence,
        "grants": {"count": grants.0, "digest": grants.1},
    }))
    .unwrap_or_default()
}

/// Reconnect delays: full jitter under a ceiling that doubles from 1 s to 2 min, so a fleet
/// whose broker restarts does not come back in lockstep. Pure: the random fraction is passed in.
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(120);

    pub fn new() -> Backoff {
        Backoff {
            ceiling: Self::FIRST,
        }
    }

    /// The delay after a failed attempt, `fraction` in [0, 1): between 1 s and the ceiling.
    pub fn failed(&mut self, fraction: f64) -> Duration {
        let spread = self.ceiling.saturating_sub(Self::FIRST);
        let delay = Self::FIRST + spread.mul_f64(fraction.clamp(0.0, 1.0));
        self.ceiling = (self.ceiling * 2).min(Self::MAX);
        delay
    }

    /// Connected: the next failure starts from 1 s again.
    pub fn connected(&mut self) {
        self.ceiling = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests;
