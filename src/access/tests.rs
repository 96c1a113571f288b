use super::*;

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn places() -> Vec<Place> {
    let p = |id: &str, kind, room: &str| Place {
        id: id.into(),
        kind,
        meeting_space_id: room.into(),
        door: matches!(kind, DeviceType::Lock | DeviceType::Strike),
    };
    vec![
        p("front", DeviceType::Lock, "ms-1"),
        p("strike", DeviceType::Strike, "ms-1"),
        p("panel", DeviceType::Panel, "ms-1"),
        p("other-panel", DeviceType::Panel, "ms-2"),
        p("other-lock", DeviceType::Lock, "ms-2"),
    ]
}

fn grant() -> Grant {
    Grant {
        grant_id: "g1".into(),
        booking_id: "b1".into(),
        meeting_space_id: "ms-1".into(),
        token_sha256: sha("tok-123"),
        pin_sha256: Some(sha("4711")),
        pin_hmac: None,
        card_sha256: None,
        card_hmac: None,
        valid_from: Millis(1000),
        valid_until: Millis(2000),
        device_ids: None,
        member_id: None,
        revoked_at: None,
    }
}

fn reason(d: &Decision) -> Option<DenyReason> {
    match d {
        Decision::Denied { reason, .. } => Some(*reason),
        Decision::Granted { .. } => None,
    }
}

#[test]
fn the_decision_table() {
    let tok = Credential::MagicLink("tok-123".into());
    let pin = Credential::Pin("4711".into());
    let wrong = Credential::MagicLink("tok-124".into());
    let pin_as_token = Credential::MagicLink("4711".into());
    let token_as_pin = Credential::Pin("tok-123".into());
    let g = vec![grant()];
    let revoked = vec![Grant {
        revoked_at: Some(Millis(1500)),
        ..grant()
    }];
    let door_list = vec![Grant {
        device_ids: Some(vec!["strike".into()]),
        ..grant()
    }];
    // (name, grants, credential, reader, now, expected denial)
    type Case<'a> = (
        &'a str,
        &'a [Grant],
        &'a Credential,
        &'a str,
        u64,
        Option<DenyReason>,
    );
    let cases: Vec<Case> = vec![
        ("token inside window", &g, &tok, "panel", 1500, None),
        ("pin inside window", &g, &pin, "panel", 1500, None),
        ("first millisecond", &g, &tok, "panel", 1000, None),
        (
            "one before the window",
            &g,
            &tok,
            "panel",
            999,
            Some(DenyReason::OutsideWindow),
        ),
        (
            "valid_until is exclusive",
            &g,
            &tok,
            "panel",
            2000,
            Some(DenyReason::OutsideWindow),
        ),
        (
            "wrong token",
            &g,
            &wrong,
            "panel",
            1500,
            Some(DenyReason::UnknownCredential),
        ),
        (
            "pin as token",
            &g,
            &pin_as_token,
            "panel",
            1500,
            Some(DenyReason::UnknownCredential),
        ),
        (
            "token as pin",
            &g,
            &token_as_pin,
            "panel",
            1500,
            Some(DenyReason::UnknownCredential),
        ),
        (
            "revoked",
            &revoked,
            &tok,
            "panel",
            1500,
            Some(DenyReason::Revoked),
        ),
        (
            "other room's panel",
            &g,
            &tok,
            "other-panel",
            1500,
            Some(DenyReason::WrongRoom),
        ),
        (
            "unknown reader",
            &g,
            &tok,
            "ghost",
            1500,
            Some(DenyReason::WrongRoom),
        ),
        ("door list", &door_list, &tok, "panel", 1500, None),
        (
            "no grants",
            &[],
            &tok,
            "panel",
            1500,
            Some(DenyReason::UnknownCredential),
        ),
    ];
    for (name, grants, cred, reader, now, want) in cases {
        let d = decide(
            grants,
            &Presented::new(cred.clone(), &[]),
            reader,
            &places(),
            Millis(now),
        );
        assert_eq!(reason(&d), want, "{name}: {d:?}");
    }
}

#[test]
fn granted_opens_the_grants_doors_or_every_lock_and_strike_of_its_room() {
    let d = decide(
        &[grant()],
        &Presented::new(Credential::Pin("4711".into()), &[]),
        "panel",
        &places(),
        Millis(1500),
    );
    assert_eq!(
        d,
        Decision::Granted {
            grant_id: "g1".into(),
            booking_id: "b1".into(),
            doors: vec!["front".into(), "strike".into()]
        }
    );
    let g = Grant {
        device_ids: Some(vec!["strike".into()]),
        ..grant()
    };
    match decide(
        &[g],
        &Presented::new(Credential::Pin("4711".into()), &[]),
        "panel",
        &places(),
        Millis(1500),
    ) {
        Decision::Granted { doors, .. } => assert_eq!(doors, vec!["strike".to_string()]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_valid_grant_wins_over_a_revoked_one_with_the_same_pin() {
    let old = Grant {
        grant_id: "old".into(),
        revoked_at: Some(Millis(1)),
        ..grant()
    };
    let d = decide(
        &[old, grant()],
        &Presented::new(Credential::Pin("4711".into()), &[]),
        "panel",
        &places(),
        Millis(1500),
    );
    assert!(matches!(d, Decision::Granted { ref grant_id, .. } if grant_id == "g1"));
}

#[test]
fn a_malformed_stored_hash_never_matches() {
    let g = Grant {
        token_sha256: "zz".into(),
        ..grant()
    };
    let d = decide(
        &[g],
        &Presented::new(Credential::MagicLink("tok-123".into()), &[]),
        "panel",
        &places(),
        Millis(1500),
    );
    assert_eq!(reason(&d), Some(DenyReason::UnknownCredential));
}

#[test]
fn a_pin_matches_its_hmac_under_any_inbound_key_and_nothing_else() {
    let primary = crate::signing::Key::from_secret("primary-secret-primary-secret").unwrap();
    let old = crate::signing::Key::from_secret("old-secret-old-secret-old-secret").unwrap();
    let hmac_of = |k: &crate::signing::Key, pin: &str| hex::encode(k.credential_hmac("pin:", pin));
    let by_hmac = |h: String| Grant {
        pin_sha256: None,
        pin_hmac: Some(h),
        ..grant()
    };
    let keys = [primary.clone(), old.clone()];
    let at = |pin: &str, g: &Grant| {
        decide(
            std::slice::from_ref(g),
            &Presented::new(Credential::Pin(pin.into()), &keys),
            "panel",
            &places(),
            Millis(1500),
        )
    };
    for k in [&primary, &old] {
        let g = by_hmac(hmac_of(k, "4711"));
        assert!(matches!(at("4711", &g), Decision::Granted { .. }));
        assert_eq!(reason(&at("4712", &g)), Some(DenyReason::UnknownCredential));
    }
    // Signed with a key this controller does not have: no match.
    let stranger = crate::signing::Key::from_secret("someone-elses-secret-1234").unwrap();
    let g = by_hmac(hmac_of(&stranger, "4711"));
    assert_eq!(reason(&at("4711", &g)), Some(DenyReason::UnknownCredential));
    // A PIN's HMAC is not its SHA-256, nor a token's.
    let g = by_hmac(sha("4711"));
    assert_eq!(reason(&at("4711", &g)), Some(DenyReason::UnknownCredential));
    let token = decide(
        &[by_hmac(hmac_of(&primary, "tok-123"))],
        &Presented::new(Credential::MagicLink("nope".into()), &keys),
        "panel",
        &places(),
        Millis(1500),
    );
    assert_eq!(reason(&token), Some(DenyReason::UnknownCredential));
}

#[test]
fn clock_trust() {
    let floor = Millis(10_000);
    let r = read_clock(Millis(20_000), floor, true, true);
    assert_eq!((r.now, r.floor, r.trusted), (Millis(20_000), floor, true));
    // Behind the floor, not synchronised: the floor is used, and the clock is not trusted.
    let r = read_clock(Millis(5_000), floor, false, false);
    assert_eq!((r.now, r.floor, r.trusted), (floor, floor, false));
    assert_eq!(r.behind_floor(), std::time::Duration::from_secs(5));
    // Behind the floor but synchronised: the synchronised clock wins, the floor comes down.
    let r = read_clock(Millis(5_000), floor, true, true);
    assert_eq!(
        (r.now, r.floor, r.trusted),
        (Millis(5_000), Millis(5_000), true)
    );
    assert_eq!(r.behind_floor(), std::time::Duration::ZERO);
    assert!(!read_clock(Millis(20_000), floor, false, true).trusted);
    assert!(read_clock(Millis(20_000), floor, false, false).trusted);
}
