use super::*;
use crate::access::ClockReading;
use serde_json::Map;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

const NOW: Millis = Millis(1_750_000_000_000);

fn config() -> Config {
    let text = r#"
[controller]
id = "edge-1"
organization_id = "org"
meeting_space_id = "ms-1"
[zencore]
webhook_url = "http://127.0.0.1:9/hook"
secret = "s3cret-s3cret-s3cret-s3cret"
[[devices]]
id = "front"
type = "lock"
driver = "zigbee2mqtt"
topic = "front_door"
[[devices]]
id = "panel"
type = "panel"
driver = "zenedge-panel"
"#;
    Config::from_toml(text, Path::new("t.toml")).unwrap()
}

fn keys() -> Vec<Key> {
    vec![
        Key::from_secret("s3cret-s3cret-s3cret-s3cret").unwrap(),
        Key::from_secret("old-old-old-old-old-old-old").unwrap(),
    ]
}

fn trusted() -> ClockReading {
    crate::access::read_clock(NOW, Millis(0), true, true)
}

/// The system clock at `system`, not synchronised, below or above `floor`.
fn untrusted(system: Millis, floor: Millis) -> ClockReading {
    let r = crate::access::read_clock(system, floor, false, true);
    assert!(!r.trusted);
    r
}

fn body(event: &str, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"event": event, "timestamp": NOW.rfc3339(), "data": data})).unwrap()
}

fn run(
    headers: &HashMap<&str, String>,
    body: &[u8],
    clock: ClockReading,
) -> Result<Verified, Rejection> {
    verify(
        &keys(),
        |h| headers.get(h).map(String::as_str),
        body,
        clock,
        Duration::from_secs(300),
    )
}

fn hex_headers(body: &[u8], secret: &str) -> HashMap<&'static str, String> {
    HashMap::from([(
        "x-webhook-signature",
        Key::from_secret(secret).unwrap().sign_hex(body),
    )])
}

#[test]
fn both_schemes_and_rotated_keys_are_accepted() {
    let b = body("access.revoke", json!({"grant_id": "g"}));
    assert!(run(
        &hex_headers(&b, "s3cret-s3cret-s3cret-s3cret"),
        &b,
        trusted()
    )
    .is_ok());
    assert!(run(
        &hex_headers(&b, "old-old-old-old-old-old-old"),
        &b,
        trusted()
    )
    .is_ok());
    let ts = NOW.unix_seconds();
    let sig = Key::from_secret("s3cret-s3cret-s3cret-s3cret")
        .unwrap()
        .sign_v1("msg_1", ts, &b);
    let h = HashMap::from([
        ("webhook-id", "msg_1".to_string()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", sig),
    ]);
    assert_eq!(run(&h, &b, trusted()).unwrap().key, "msg_1");
}

#[test]
fn more_than_eight_signature_entries_are_refused_before_any_is_checked() {
    let b = body("access.revoke", json!({"grant_id": "g"}));
    let ts = NOW.unix_seconds();
    let good = Key::from_secret("s3cret-s3cret-s3cret-s3cret")
        .unwrap()
        .sign_v1("msg_1", ts, &b);
    let headers = |n_forged: usize| {
        let mut entries =
            vec!["v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string(); n_forged];
        entries.push(good.clone());
        HashMap::from([
            ("webhook-id", "msg_1".to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", entries.join(" ")),
        ])
    };
    assert!(
        run(&headers(7), &b, trusted()).is_ok(),
        "8 entries, the last valid"
    );
    let r = run(&headers(8), &b, trusted()).unwrap_err();
    assert_eq!(r.status, 401, "{r:?}");
    let r = run(&headers(3000), &b, trusted()).unwrap_err();
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn the_dedup_key_comes_only_from_signed_bytes() {
    let b = body("access.revoke", json!({"grant_id": "g"}));
    let digest = hex::encode(Sha256::digest(&b));
    // Hex scheme: X-Webhook-Id is not signed, so whatever it says, the key is the body's.
    for id in ["evt_a", "evt_b"] {
        let mut h = hex_headers(&b, "s3cret-s3cret-s3cret-s3cret");
        h.insert("x-webhook-id", id.into());
        assert_eq!(run(&h, &b, trusted()).unwrap().key, digest);
    }
    // An unverified webhook-id beside a valid hex signature names nothing either.
    let mut h = hex_headers(&b, "s3cret-s3cret-s3cret-s3cret");
    h.insert("webhook-id", "msg_forged".into());
    h.insert("webhook-timestamp", NOW.unix_seconds().to_string());
    h.insert("webhook-signature", "v1,AAAA".into());
    assert_eq!(run(&h, &b, trusted()).unwrap().key, digest);
    // The body's own id is signed with it.
    let with_id = serde_json::to_vec(&json!({"id": "cmd_1", "event": "access.revoke",
            "timestamp": NOW.rfc3339(), "data": {"grant_id": "g"}}))
    .unwrap();
    let mut h = hex_headers(&with_id, "s3cret-s3cret-s3cret-s3cret");
    h.insert("x-webhook-id", "evt_other".into());
    assert_eq!(run(&h, &with_id, trusted()).unwrap().key, "cmd_1");
}

#[test]
fn the_order_of_refusals() {
    let b = body("access.revoke", json!({"grant_id": "g"}));
    // Bad signature wins over everything after it, even on an untrusted clock.
    let bad = hex_headers(&b, "wrong");
    let untrusted = untrusted(NOW, Millis(0));
    assert_eq!(run(&bad, &b, untrusted).unwrap_err().status, 401);
    assert_eq!(run(&HashMap::new(), &b, trusted()).unwrap_err().status, 401);
    // Signed but malformed: 400 naming what is missing.
    let nodata = serde_json::to_vec(&json!({"event": "x", "timestamp": NOW.rfc3339()})).unwrap();
    let r = run(
        &hex_headers(&nodata, "s3cret-s3cret-s3cret-s3cret"),
        &nodata,
        untrusted,
    )
    .unwrap_err();
    assert_eq!((r.status, r.error.as_str()), (400, "missing `data`"));
    // Well-formed on an untrusted clock: 503 clock, unless it only takes access away.
    let unlock = body("access.unlock", json!({"device_id": "front-door"}));
    let r = run(
        &hex_headers(&unlock, "s3cret-s3cret-s3cret-s3cret"),
        &unlock,
        untrusted,
    )
    .unwrap_err();
    assert_eq!((r.status, r.error.as_str()), (503, "clock"));
    assert!(run(
        &hex_headers(&b, "s3cret-s3cret-s3cret-s3cret"),
        &b,
        untrusted
    )
    .is_ok());
    // Stale.
    let old = serde_json::to_vec(&json!({"event": "access.revoke",
            "timestamp": Millis(NOW.0 - 301_000).rfc3339(), "data": {"grant_id": "g"}}))
    .unwrap();
    let r = run(
        &hex_headers(&old, "s3cret-s3cret-s3cret-s3cret"),
        &old,
        trusted(),
    )
    .unwrap_err();
    assert!(r.status == 401 && r.error.contains("stale"), "{r:?}");
    // Two different ids.
    let mut h = hex_headers(&b, "s3cret-s3cret-s3cret-s3cret");
    h.insert("webhook-id", "a".into());
    h.insert("x-webhook-id", "b".into());
    assert_eq!(run(&h, &b, trusted()).unwrap_err().status, 400);
}

#[test]
fn commands_that_take_access_away_pass_an_untrusted_clock_if_fresh_against_it_or_the_floor() {
    let day = Duration::from_secs(86_400);
    let signed = |event: &str, at: Millis| {
        let b = serde_json::to_vec(&json!({"event": event, "timestamp": at.rfc3339(),
                "data": {"grant_id": "g"}}))
        .unwrap();
        (hex_headers(&b, "s3cret-s3cret-s3cret-s3cret"), b)
    };
    // The floor a day ahead (a clock that was once wrong), the system clock right: a fresh
    // revoke is taken, an unlock is not.
    let ahead = untrusted(NOW, NOW.saturating_add(day));
    for event in TAKES_ACCESS_AWAY {
        let (h, b) = signed(event, NOW);
        assert!(run(&h, &b, ahead).is_ok(), "{event}");
    }
    let (h, b) = signed("access.unlock", NOW);
    assert_eq!(run(&h, &b, ahead).unwrap_err().status, 503);
    // A controller that booted in 1970 with a floor of yesterday: a revoke signed now is
    // not older than the floor, so it is taken.
    let booted = untrusted(Millis(1_000), Millis(NOW.0 - day.as_millis() as u64));
    let (h, b) = signed("access.revoke", NOW);
    assert!(run(&h, &b, booted).is_ok());
    // One signed two days ago (a replay) is fresh against neither: ZenCore may retry it.
    let (h, b) = signed("access.revoke", Millis(NOW.0 - 2 * day.as_millis() as u64));
    let r = run(&h, &b, booted).unwrap_err();
    assert_eq!((r.status, r.error.as_str()), (503, "clock"));
}

#[test]
fn idempotency_key_falls_back_to_the_body_id_then_its_hash() {
    let b = serde_json::to_vec(&json!({"id": "cmd-7", "event": "member.added",
            "timestamp": NOW.rfc3339(), "data": {}}))
    .unwrap();
    assert_eq!(
        run(
            &hex_headers(&b, "s3cret-s3cret-s3cret-s3cret"),
            &b,
            trusted()
        )
        .unwrap()
        .key,
        "cmd-7"
    );
    let b = body("member.added", json!({}));
    let key = run(
        &hex_headers(&b, "s3cret-s3cret-s3cret-s3cret"),
        &b,
        trusted(),
    )
    .unwrap()
    .key;
    assert_eq!(key, hex::encode(Sha256::digest(&b)));
}

#[test]
fn fields_are_checked_against_this_controller() {
    let c = config();
    let grant = json!({"grant_id": "g1", "booking_id": "b1", "meeting_space_id": "ms-1",
            "token_sha256": "ab".repeat(32), "valid_from": NOW.rfc3339(),
            "valid_until": Millis(NOW.0 + 3_600_000).rfc3339()});
    let data = |v: Value| v.as_object().unwrap().clone();
    assert!(matches!(
        parse_command(&c, "access.magic_link", &data(grant.clone()), NOW),
        Ok(Command::Accepted(_))
    ));
    let mut wrong_room = grant.clone();
    wrong_room["meeting_space_id"] = "ms-9".into();
    assert_eq!(
        parse_command(&c, "access.magic_link", &data(wrong_room), NOW)
            .unwrap_err()
            .status,
        422
    );
    let mut bad_hash = grant.clone();
    bad_hash["token_sha256"] = "xyz".into();
    let r = parse_command(&c, "access.magic_link", &data(bad_hash), NOW).unwrap_err();
    assert!(r.status == 400 && r.error.contains("token_sha256"), "{r:?}");
    let mut no_id = grant;
    no_id.as_object_mut().unwrap().remove("grant_id");
    assert_eq!(
        parse_command(&c, "access.magic_link", &data(no_id), NOW)
            .unwrap_err()
            .error,
        "missing data.grant_id"
    );

    let unlock = json!({"action_id": "a1", "device_id": "front", "booking_id": "b1",
            "not_after": Millis(NOW.0 + 60_000).rfc3339()});
    assert!(parse_command(&c, "access.unlock", &data(unlock.clone()), NOW).is_ok());
    for bad in [
        json!(0),
        json!(3601),
        json!(u64::MAX),
        json!(1.5),
        json!("5"),
    ] {
        let mut long = unlock.clone();
        long["duration_s"] = bad.clone();
        let r = parse_command(&c, "access.unlock", &data(long), NOW).unwrap_err();
        assert!(
            r.status == 400 && r.error.contains("duration_s"),
            "{bad}: {r:?}"
        );
    }
    let mut expired = unlock.clone();
    expired["not_after"] = Millis(NOW.0 - 1).rfc3339().into();
    let r = parse_command(&c, "access.unlock", &data(expired), NOW).unwrap_err();
    assert_eq!((r.status, r.error.starts_with("expired")), (422, true));
    let mut panel = unlock;
    panel["device_id"] = "panel".into();
    assert_eq!(
        parse_command(&c, "access.unlock", &data(panel), NOW)
            .unwrap_err()
            .status,
        422
    );

    let booking = json!({"booking_id": "b1", "meeting_space_id": "ms-1",
            "start_time": Millis(NOW.0 + 60_000).rfc3339(), "end_time": Millis(NOW.0 + 120_000).rfc3339()});
    match parse_command(&c, "booking.created", &data(booking.clone()), NOW) {
        Ok(Command::Accepted(e)) => {
            assert!(
                matches!(&e[..], [Effect::Booking(b)] if b.booking_id == "b1" && b.closed.is_none())
            )
        }
        other => panic!("{other:?}"),
    }
    let mut backwards = booking.clone();
    backwards["end_time"] = backwards["start_time"].clone();
    assert_eq!(
        parse_command(&c, "booking.confirmed", &data(backwards), NOW)
            .unwrap_err()
            .status,
        400
    );
    let mut phase = booking;
    phase["phase"] = "T-5".into();
    assert_eq!(
        parse_command(&c, "booking.start", &data(phase), NOW)
            .unwrap_err()
            .status,
        400
    );
    assert_eq!(
        parse_command(&c, "organization.updated", &Map::new(), NOW),
        Ok(Command::Ignored)
    );
    assert_eq!(
        parse_command(&c, "device.online", &Map::new(), NOW),
        Ok(Command::Ignored)
    );
    assert_eq!(
        parse_command(&c, "party.started", &Map::new(), NOW)
            .unwrap_err()
            .status,
        400
    );
}

#[test]
fn nothing_unsigned_is_ever_accepted_whatever_the_bytes() {
    // Random and mutated bodies: no panic; nothing passes without a valid signature.
    let good = body("access.revoke", json!({"grant_id": "g"}));
    let sig = Key::from_secret("s3cret-s3cret-s3cret-s3cret")
        .unwrap()
        .sign_hex(&good);
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000 {
        let mut b = good.clone();
        let flips = 1 + (next() % 4) as usize;
        for _ in 0..flips {
            let pos = (next() as usize) % b.len();
            b[pos] ^= (next() % 255 + 1) as u8;
        }
        if i % 3 == 0 {
            b = (0..(next() % 200)).map(|_| next() as u8).collect();
        }
        let h = HashMap::from([("x-webhook-signature", sig.clone())]);
        let r = run(&h, &b, trusted());
        assert!(
            r.is_err() || b == good,
            "mutated body accepted: {:?}",
            String::from_utf8_lossy(&b)
        );
        // And with its own valid signature, the parser must still never panic.
        let h = hex_headers(&b, "s3cret-s3cret-s3cret-s3cret");
        if let Ok(v) = run(&h, &b, trusted()) {
            let _ = parse_command(&config(), &v.event, &v.data, NOW);
        }
    }
}

#[test]
fn a_lockdown_names_its_id_and_room_and_is_kept_with_its_moment() {
    let c = config();
    let data = |v: Value| v.as_object().unwrap().clone();
    match parse_command(
        &c,
        "access.lockdown",
        &data(json!({"lockdown_id": "ld-1", "meeting_space_id": "ms-1", "reason": "fire"})),
        NOW,
    ) {
        Ok(Command::Accepted(e)) => {
            assert!(matches!(&e[..], [Effect::Lockdown(l)]
                if l.lockdown_id == "ld-1" && l.meeting_space_id.as_deref() == Some("ms-1")
                    && l.reason.as_deref() == Some("fire") && l.since == NOW));
            assert!(e.iter().all(Effect::takes_access_away));
        }
        other => panic!("{other:?}"),
    }
    let r =
        parse_command(&c, "access.lockdown", &data(json!({"reason": "fire"})), NOW).unwrap_err();
    assert_eq!(
        (r.status, r.error.as_str()),
        (400, "missing data.lockdown_id")
    );
    let r = parse_command(
        &c,
        "access.lockdown",
        &data(json!({"lockdown_id": "ld-1", "meeting_space_id": "ms-9"})),
        NOW,
    )
    .unwrap_err();
    assert_eq!(r.status, 422, "{r:?}");
    match parse_command(
        &c,
        "access.lockdown_lifted",
        &data(json!({"lockdown_id": "ld-1"})),
        NOW,
    ) {
        // A lift gives access back: it waits for a trusted clock and room in the store.
        Ok(Command::Accepted(e)) => assert!(
            matches!(&e[..], [Effect::LiftLockdown(id)] if id == "ld-1")
                && !e.iter().any(Effect::takes_access_away)
        ),
        other => panic!("{other:?}"),
    }
}
