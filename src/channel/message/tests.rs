use super::*;
use crate::event::Millis;
use serde_json::json;

#[test]
fn a_command_message_is_headers_and_the_exact_body() {
    let m = parse(br#"{"headers":{"Webhook-Id":"msg_1","X-Other":"x"},"body":"{\"event\":1}\n"}"#)
        .unwrap();
    assert_eq!(m.body, b"{\"event\":1}\n");
    assert_eq!(m.headers.get("webhook-id"), Some("msg_1"));
    assert_eq!(request_of(&m), json!("msg_1"));
}

#[test]
fn what_is_not_a_command_message_is_refused_with_the_reason() {
    let cases: [(&[u8], &str); 8] = [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "JSON object"),
        (br#"{"headers":{}}"#, "missing body"),
        (br#"{"body":"x"}"#, "missing headers"),
        (
            br#"{"headers":{},"body":{"event":"x"}}"#,
            "body must be a string",
        ),
        (
            br#"{"headers":{"webhook-id":7},"body":""}"#,
            "headers.webhook-id",
        ),
        (br#"{"headers":"x","body":""}"#, "headers must be an object"),
    ];
    for (payload, want) in cases {
        let e = parse(payload).unwrap_err().0;
        assert!(e.contains(want), "{payload:?}: {e}");
    }
}

#[test]
fn the_reply_names_the_request_by_signed_id_then_header_then_body_id() {
    let msg = |headers: Value, body: &str| {
        parse(&serde_json::to_vec(&json!({"headers": headers, "body": body})).unwrap()).unwrap()
    };
    let both = msg(
        json!({"webhook-id": "a", "x-webhook-id": "b"}),
        r#"{"id":"c"}"#,
    );
    assert_eq!(request_of(&both), json!("a"));
    assert_eq!(
        request_of(&msg(json!({"X-Webhook-Id": "b"}), r#"{"id":"c"}"#)),
        json!("b")
    );
    assert_eq!(request_of(&msg(json!({}), r#"{"id":"c"}"#)), json!("c"));
    assert_eq!(request_of(&msg(json!({}), "not json")), Value::Null);
    let r: Value = serde_json::from_slice(&reply(
        json!("a"),
        &Answer::new(401, json!({"error": "stale timestamp"})),
    ))
    .unwrap();
    assert_eq!(
        r,
        json!({"request": "a", "status": 401, "body": {"error": "stale timestamp"}})
    );
}

#[test]
fn the_grants_digest_is_over_sorted_lines_revoked_ones_included() {
    let grant = |id: &str, until: u64, revoked: bool| Grant {
        grant_id: id.into(),
        booking_id: "b".into(),
        meeting_space_id: "ms".into(),
        token_sha256: String::new(),
        pin_sha256: None,
        pin_hmac: None,
        card_sha256: None,
        card_hmac: None,
        valid_from: Millis(0),
        valid_until: Millis(until),
        device_ids: None,
        member_id: None,
        revoked_at: revoked.then_some(Millis(1)),
    };
    let grants = [
        grant("g2", 1_000, true),
        grant("g1", 1_750_000_000_123, false),
    ];
    let text = "g1:2025-06-15T15:06:40.123Z:false\ng2:1970-01-01T00:00:01.000Z:true\n";
    let want = hex::encode(Sha256::digest(text.as_bytes()));
    assert_eq!(grants_digest(&grants), (2, want.clone()));
    // The order grants are stored in does not matter.
    let reversed = [grants[1].clone(), grants[0].clone()];
    assert_eq!(grants_digest(&reversed).1, want);
    assert_eq!(
        grants_digest([]).1,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let online: Value = serde_json::from_slice(&online(42, grants_digest(&grants))).unwrap();
    assert_eq!(online["state"], "online");
    assert_eq!(online["last_sequence"], 42);
    assert_eq!(online["grants"]["count"], 2);
    assert_eq!(online["grants"]["digest"], want);
}

#[test]
fn reconnects_back_off_with_full_jitter_from_one_second_to_two_minutes() {
    let s = |d: Duration| d.as_secs_f64();
    let mut b = Backoff::new();
    // The least and the most each step allows.
    let ceilings: Vec<f64> = (0..10).map(|_| s(b.failed(0.999_999))).collect();
    assert_eq!(
        ceilings
            .iter()
            .map(|c| c.round() as u64)
            .collect::<Vec<_>>(),
        vec![1, 2, 4, 8, 16, 32, 64, 120, 120, 120]
    );
    assert_eq!(s(b.failed(0.0)), 1.0);
    b.connected();
    assert_eq!(s(b.failed(0.5)), 1.0);
    assert_eq!(s(b.failed(0.5)), 1.5);
}
