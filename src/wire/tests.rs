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
