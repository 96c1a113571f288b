use super::*;
use crate::config::DeviceType;

fn origin() -> Origin {
    Origin {
        controller_id: "edge-4a".into(),
        organization_id: "org-123".into(),
        meeting_space_id: "ms-xyz789".into(),
    }
}

#[test]
fn body_has_the_documented_shape_and_order() {
    let at = Millis::parse_rfc3339("2025-01-15T09:45:00.000Z").unwrap();
    let event = NewEvent::new(
        Data::DeviceOffline(DeviceOffline {
            reason: PresenceReason::HeartbeatTimeout,
            last_seen: Millis::parse_rfc3339("2025-01-15T09:44:00.000Z"),
            detected_at: at,
        }),
        Some(DeviceRef {
            id: "front-door".into(),
            kind: DeviceType::Lock,
            meeting_space_id: None,
        }),
        at,
    );
    let body = render_body(&origin(), &event, "evt_01JH", 1042);
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        r#"{"id":"evt_01JH","event":"device.offline","timestamp":"2025-01-15T09:45:00.000Z","data":{"controller_id":"edge-4a","organization_id":"org-123","meeting_space_id":"ms-xyz789","device_id":"front-door","device_type":"lock","sequence":1042,"reason":"heartbeat_timeout","last_seen":"2025-01-15T09:44:00.000Z","detected_at":"2025-01-15T09:45:00.000Z"}}"#
    );
    let info = body_info(&body).unwrap();
    assert_eq!(info.id, "evt_01JH");
    assert_eq!(info.kind, Some(EventKind::DeviceOffline));
    assert_eq!(info.lane.as_deref(), Some("front-door"));
    assert_eq!(info.sequence, 1042);
    assert_eq!(info.at, at);
}

#[test]
fn edge_events_have_no_device_fields_and_device_room_overrides() {
    let body = render_body(
        &origin(),
        &NewEvent::edge(Data::EdgeTest(EdgeTest { note: "hi".into() }), Millis(0)),
        "evt_x",
        1,
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["data"].get("device_id").is_none());
    assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");

    let dev = DeviceRef {
        id: "p".into(),
        kind: DeviceType::Panel,
        meeting_space_id: Some("ms-other".into()),
    };
    let body = render_body(
        &origin(),
        &NewEvent::new(
            Data::DeviceOnline(DeviceOnline {
                reason: PresenceReason::Availability,
                offline_since: None,
            }),
            Some(dev),
            Millis(1),
        ),
        "evt_y",
        2,
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"]["meeting_space_id"], "ms-other");
}

#[test]
fn garbage_is_not_an_envelope() {
    assert!(body_info(b"").is_none());
    assert!(body_info(b"{\"id\":1}").is_none());
    assert!(body_info(&[0xff, 0x00]).is_none());
}

#[test]
fn both_kinds_of_data_gap_have_the_documented_fields_and_one_shape() {
    let full = Data::DataGap(DataGap {
        from_sequence: Some(3),
        to_sequence: 9,
        count: Some(7),
        reason: GapReason::StoreFull,
        quarantined_to: None,
    });
    assert_eq!(
        serde_json::to_string(&full).unwrap(),
        r#"{"from_sequence":3,"to_sequence":9,"count":7,"reason":"store_full"}"#
    );
    let corrupt = Data::DataGap(DataGap {
        from_sequence: None,
        to_sequence: 41,
        count: None,
        reason: GapReason::StoreCorrupt,
        quarantined_to: Some("/var/lib/zenedge/store.redb.corrupt".into()),
    });
    assert_eq!(
        serde_json::to_string(&corrupt).unwrap(),
        r#"{"from_sequence":null,"to_sequence":41,"count":null,"reason":"store_corrupt","quarantined_to":"/var/lib/zenedge/store.redb.corrupt"}"#
    );
    assert_eq!(full.kind(), EventKind::EdgeDataGap);
}

#[test]
fn a_room_s_status_updates_share_one_lane_whatever_their_device() {
    let status = |device: Option<DeviceRef>| {
        NewEvent::new(
            Data::MeetingStatus(MeetingStatus {
                booking_id: "bk-1".into(),
                status: "checked_in",
                source: StatusSource::Panel,
                device_id: device.as_ref().map(|d| d.id.clone()),
                end_time: None,
            }),
            device,
            Millis(5),
        )
    };
    let panel = DeviceRef {
        id: "panel-1".into(),
        kind: DeviceType::Panel,
        meeting_space_id: None,
    };
    assert_eq!(status(Some(panel)).lane().as_deref(), Some("booking:bk-1"));
    assert_eq!(status(None).lane().as_deref(), Some("booking:bk-1"));
    let body = render_body(&origin(), &status(None), "evt_z", 3);
    assert_eq!(
        body_info(&body).unwrap().lane.as_deref(),
        Some("booking:bk-1")
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["data"].get("end_time").is_none());
    assert_eq!(v["data"]["device_id"], Value::Null);
}

mod commands {
    use crate::wire::command::*;
    use serde_json::{json, Map, Value};

    fn data(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn grant() -> Value {
        json!({"grant_id": "g1", "booking_id": "b1", "meeting_space_id": "ms-1",
            "token_sha256": "AB".repeat(32), "valid_from": "2026-01-01T10:00:00Z",
            "valid_until": "2026-01-01T11:00:00Z"})
    }

    fn error(event: &str, v: Value) -> String {
        match decode(event, &data(v)) {
            Err(FieldError(e)) => e,
            Ok(d) => panic!("{event} decoded: {d:?}"),
        }
    }

    #[test]
    fn a_grants_snapshot_is_checked_grant_by_grant_and_part_by_part() {
        let snapshot = |extra: Value| {
            let mut v = json!({"meeting_space_id": "ms-1", "grants": [grant()]});
            for (k, x) in extra.as_object().cloned().unwrap_or_default() {
                v[k] = x;
            }
            v
        };
        let ok = decode("access.grants_snapshot", &data(snapshot(json!({})))).unwrap();
        assert!(matches!(ok, Decoded::Command(c) if matches!(*c, Command::GrantsSnapshot(_))));
        let mut late = grant();
        late["valid_until"] = json!("2026-01-01T09:00:00Z");
        let mut elsewhere = grant();
        elsewhere["meeting_space_id"] = json!("ms-2");
        for (extra, says) in [
            (
                json!({"grants": [grant(), grant()]}),
                "data.grants[1].grant_id `g1` is listed twice",
            ),
            (
                json!({"grants": [late]}),
                "data.grants[0].valid_until must be after data.grants[0].valid_from",
            ),
            (
                json!({"grants": [elsewhere]}),
                "data.grants[0].meeting_space_id is not the snapshot's data.meeting_space_id",
            ),
            (
                json!({"grants": [{"grant_id": "g"}]}),
                "missing data.grants[0].booking_id",
            ),
            (
                json!({"snapshot_id": "s1", "part": 1}),
                "data.snapshot_id, data.part and data.parts go together",
            ),
            (
                json!({"snapshot_id": "s1", "part": 3, "parts": 2}),
                "data.part must be between 1 and data.parts",
            ),
            (
                json!({"snapshot_id": "s1", "part": 0, "parts": 2}),
                "data.part must be between 1 and data.parts",
            ),
            (
                json!({"snapshot_id": "s1", "part": 1, "parts": 100_000}),
                "data.parts must be between 1 and 1000",
            ),
            (
                json!({"grants": "all"}),
                "data.grants invalid type: string \"all\", expected a sequence",
            ),
        ] {
            assert_eq!(error("access.grants_snapshot", snapshot(extra)), says);
        }
    }

    #[test]
    fn each_refusal_names_the_field_that_failed() {
        let mut g = grant();
        g.as_object_mut().unwrap().remove("grant_id");
        assert_eq!(error("access.magic_link", g), "missing data.grant_id");
        for (field, bad, says) in [
            (
                "grant_id",
                json!(""),
                "data.grant_id must be a non-empty string",
            ),
            (
                "booking_id",
                json!(7),
                "data.booking_id must be a non-empty string",
            ),
            (
                "valid_from",
                json!("tomorrow"),
                "data.valid_from is not an RFC 3339 time",
            ),
            (
                "valid_from",
                json!(1_700_000_000),
                "data.valid_from must be a non-empty string",
            ),
            (
                "token_sha256",
                json!("xyz"),
                "data.token_sha256 must be 64 hex digits (SHA-256 / HMAC-SHA256)",
            ),
            (
                "pin_sha256",
                json!("ab".repeat(31)),
                "data.pin_sha256 must be 64 hex digits (SHA-256 / HMAC-SHA256)",
            ),
            (
                "valid_until",
                json!("2026-01-01T09:00:00Z"),
                "data.valid_until must be after data.valid_from",
            ),
        ] {
            let mut g = grant();
            g[field] = bad;
            assert_eq!(error("access.magic_link", g), says, "{field}");
        }
        let mut both = grant();
        both["pin_sha256"] = json!("ab".repeat(32));
        both["pin_hmac"] = json!("cd".repeat(32));
        assert_eq!(
            error("access.magic_link", both),
            "data.pin_sha256 and data.pin_hmac: send one of them"
        );
        let mut ids = grant();
        ids["device_ids"] = json!(["front", 3]);
        assert_eq!(
            error("access.magic_link", ids),
            "data.device_ids[1] must be a non-empty string"
        );
        assert_eq!(
            error("access.revoke", json!({})),
            "missing data.grant_id or data.booking_id"
        );
        assert_eq!(
            error("party.started", json!({})),
            "unknown event `party.started`"
        );
        let start = json!({"booking_id": "b1", "meeting_space_id": "ms-1",
            "start_time": "2026-01-01T10:00:00Z", "end_time": "2026-01-01T11:00:00Z",
            "phase": "T-5"});
        let e = error("booking.start", start);
        assert!(e.starts_with("data.phase ") && e.contains("T-5"), "{e}");
        for d in [
            json!(0),
            json!(3601),
            json!(1.5),
            json!("5"),
            json!(u64::MAX),
        ] {
            let unlock = json!({"action_id": "a", "device_id": "front", "booking_id": "b",
                "not_after": "2026-01-01T10:00:00Z", "duration_s": d});
            assert_eq!(
                error("access.unlock", unlock),
                "data.duration_s must be a whole number of seconds, 1..=3600"
            );
        }
    }

    #[test]
    fn a_command_decodes_to_its_type_and_renders_back_to_the_same_data() {
        let Ok(Decoded::Command(c)) = decode("access.magic_link", &data(grant())) else {
            panic!("grant not decoded");
        };
        let Command::MagicLink(g) = *c else {
            panic!("not a grant: {c:?}");
        };
        // Hashes are kept lowercase, so a comparison later is one of bytes.
        assert_eq!(g.token_sha256.0, "ab".repeat(32));
        assert_eq!(g.valid_until.0.rfc3339(), "2026-01-01T11:00:00.000Z");
        let back = serde_json::to_value(Command::MagicLink(g.clone())).unwrap();
        assert_eq!(back["event"], "access.magic_link");
        let Ok(Decoded::Command(again)) = decode("access.magic_link", &data(back["data"].clone()))
        else {
            panic!("rendered grant not decoded");
        };
        assert_eq!(*again, Command::MagicLink(g));

        // The grant wins when a revoke names both.
        assert_eq!(
            decode(
                "access.revoke",
                &data(json!({"grant_id": "g", "booking_id": "b"}))
            ),
            Ok(Decoded::Command(Box::new(Command::Revoke(Revoke::Grant(
                "g".into()
            )))))
        );
        for ignored in ["organization.updated", "member.added", "device.online"] {
            assert_eq!(decode(ignored, &Map::new()), Ok(Decoded::Ignored));
        }
        // Fields the contract does not name are not refused: ZenCore may add some.
        let mut more = grant();
        more["colour"] = json!("teal");
        assert!(matches!(
            decode("access.magic_link", &data(more)),
            Ok(Decoded::Command(_))
        ));
    }
}
