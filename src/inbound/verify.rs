//! Steps 2–4 of the endpoint (DESIGN section 2): the signature under either scheme and any
//! active key, the envelope's shape, freshness on the controller clock, and the idempotency key
//! from signed bytes only. Pure.

use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{reject, Rejection};
use crate::access::ClockReading;
use crate::event::Millis;
use crate::signing::Key;

/// A request that passed signature, shape and freshness.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The idempotency key.
    pub key: String,
    pub event: String,
    pub data: Map<String, Value>,
}

/// Commands that only take access away: accepted on an untrusted clock and into a full store
/// (DESIGN section 2).
pub const TAKES_ACCESS_AWAY: [&str; 5] = [
    "access.revoke",
    "member.removed",
    "booking.end",
    "booking.cancelled",
    "access.lockdown",
];

/// Steps 2–4 of DESIGN section 2, plus the idempotency key. `header` looks a header up by its
/// lowercase name.
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
