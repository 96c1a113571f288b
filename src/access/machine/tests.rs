//! The access machine as a table: a credential or a tick at a time → its effects, in order.

use super::*;
use crate::wire::DenyReason;
use sha2::{Digest, Sha256};

fn config() -> Config {
    crate::config::testing::parse(
        r#"
[access]
lockout_after = 2
lockout_window = "1m"
lockout = "30s"
[[devices]]
id = "front"
type = "lock"
driver = "zigbee2mqtt"
topic = "front_door"
[[devices]]
id = "panel"
type = "panel"
driver = "zenedge-panel"
"#,
    )
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn grant() -> Grant {
    Grant {
        grant_id: "g1".into(),
        booking_id: "b1".into(),
        meeting_space_id: "ms".into(),
        token_sha256: sha("tok"),
        pin_sha256: Some(sha("4711")),
        pin_hmac: None,
        card_sha256: None,
        card_hmac: None,
        valid_from: Millis(0),
        valid_until: Millis(1_000_000),
        device_ids: None,
        member_id: None,
        revoked_at: None,
    }
}

/// Each effect in one line.
fn lines(out: &[Effect]) -> Vec<String> {
    out.iter()
        .map(|e| match e {
            Effect::Guard(r, g) => format!("guard {r} locked={}", g.locked.is_some()),
            Effect::Audit(a) => format!(
                "audit {} {} {} {}{}",
                a.reader,
                a.credential_type.as_str(),
                a.result,
                a.reason.as_deref().unwrap_or("-"),
                a.attempts
                    .map(|n| format!(" attempts={n}"))
                    .unwrap_or_default()
            ),
            Effect::Answer { reader, told, .. } => format!("answer {reader} {told:?}"),
            Effect::Open {
                doors, grant_id, ..
            } => format!("open {} for {grant_id}", doors.join(",")),
            Effect::Denied { reader, data } => {
                format!("denied {reader} {}", data.reason.as_str())
            }
            Effect::LockedOut { reader, data } => {
                format!("lockout {reader} failures={}", data.failures)
            }
        })
        .collect()
}

fn present(credential: Credential) -> Input {
    Input::Present {
        reader: "panel".into(),
        credential,
        answer: Answer::Panel(Value::Null),
    }
}

fn no_ids() -> String {
    String::new()
}

#[test]
fn the_access_machine_as_a_table_of_inputs_and_effects() {
    let mut machine = Machine::new(&config());
    machine.set_grants(vec![grant()]);
    let ctx = |t: u64| Ctx {
        now: Millis(t),
        clock_trusted: t != 7_000,
        ids: no_ids,
    };
    let pin = |p: &str| present(Credential::Pin(p.into()));
    let rows: Vec<(u64, Input, Vec<&str>)> = vec![
        (
            1_000,
            present(Credential::MagicLink("tok".into())),
            vec![
                "audit panel magic_link granted -",
                "answer panel None",
                "open front for g1",
            ],
        ),
        // A wrong PIN: audited with its reason, the panel told only `denied`, ZenCore told why.
        (
            2_000,
            pin("0000"),
            vec![
                "audit panel pin denied unknown_credential",
                "answer panel Some(Denied)",
                "denied panel unknown_credential",
                "guard panel locked=false",
            ],
        ),
        // The second denial within the window locks the panel out; the lockout's event
        // follows the denial's.
        (
            3_000,
            pin("0001"),
            vec![
                "audit panel pin denied unknown_credential",
                "answer panel Some(LockedOut)",
                "denied panel unknown_credential",
                "guard panel locked=true",
                "lockout panel failures=2",
            ],
        ),
        // Locked out: even the right PIN is not compared, nothing is opened or audited.
        (4_000, pin("4711"), vec!["answer panel Some(LockedOut)"]),
        (32_999, Input::Tick, vec![]),
        // The lockout runs out: one audit record with the attempts made during it.
        (
            33_000,
            Input::Tick,
            vec![
                "audit panel any locked_out locked out from 1970-01-01T00:00:03.000Z attempts=1",
                "guard panel locked=false",
            ],
        ),
        (
            34_000,
            pin("4711"),
            vec![
                "audit panel pin granted -",
                "answer panel None",
                "open front for g1",
                "guard panel locked=false",
            ],
        ),
    ];
    for (i, (t, input, want)) in rows.into_iter().enumerate() {
        let out = machine.handle(input, &ctx(t));
        assert_eq!(lines(&out), want, "row {i} at {t} ms");
    }
}

#[test]
fn an_untrusted_clock_is_written_into_the_audit_record() {
    let mut machine = Machine::new(&config());
    machine.set_grants(vec![Grant {
        revoked_at: Some(Millis(1)),
        ..grant()
    }]);
    let ctx = Ctx {
        now: Millis(5_000),
        clock_trusted: false,
        ids: no_ids,
    };
    let out = machine.handle(present(Credential::MagicLink("tok".into())), &ctx);
    let Some(Effect::Audit(entry)) = out.iter().find(|e| matches!(e, Effect::Audit(_))) else {
        panic!("no audit record in {out:?}");
    };
    assert!(entry.clock_untrusted);
    assert_eq!(entry.result, Outcome::Denied);
    assert_eq!(entry.grant_id.as_deref(), Some("g1"));
    assert!(out.iter().any(|e| matches!(
        e,
        Effect::Denied { data, .. } if data.reason == DenyReason::Revoked
    )));
    assert_eq!(machine.locked_until("panel"), None);
}
