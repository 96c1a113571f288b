//! The room's own schedule end to end: the real binary, a real mosquitto, a simulated panel and
//! a loopback ZenCore. Bookings start seconds from now and the no-show release is seconds long,
//! so every moment happens within the test.

mod common;

use std::time::Duration;

use common::{command_body, rig, Peer, Rig, SECRET};
use serde_json::{json, Value};
use zenedge::event::Millis;

const ROOM: &str = r#"
[presence]
debounce = "0s"

[scheduler]
no_show_release = "2s"

[[devices]]
id = "panel"
type = "panel"
driver = "zenedge-panel"
"#;

const PANEL: &str = "zenedge/edge-test/panels/panel";

fn in_ms(ms: i64) -> Millis {
    Millis((Millis::now().0 as i64 + ms) as u64)
}

async fn book(r: &Rig, event: &str, id: &str, start: Millis, end: Millis) {
    let body = command_body(
        event,
        json!({"booking_id": id, "meeting_space_id": "ms-test", "title": "Standup",
               "start_time": start.rfc3339(), "end_time": end.rfc3339()}),
    );
    let (status, answer) = r.command(&body, Some(SECRET), &[]).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("accepted")),
        "{answer}"
    );
}

/// The `meeting.status_update` events of a booking, as (status, source, event id).
fn statuses(r: &Rig, booking: &str) -> Vec<(String, String, String)> {
    let mut seen = std::collections::HashSet::new();
    r.rx.requests()
        .iter()
        .map(|x| x.json())
        .filter(|j| j["event"] == "meeting.status_update" && j["data"]["booking_id"] == booking)
        .filter(|j| seen.insert(j["id"].as_str().unwrap_or("").to_owned()))
        .map(|j| {
            (
                j["data"]["status"].as_str().unwrap_or("").to_owned(),
                j["data"]["source"].as_str().unwrap_or("").to_owned(),
                j["id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

async fn wait_status(r: &Rig, booking: &str, status: &str) -> Value {
    r.rx.wait_until(
        Duration::from_secs(30),
        &format!("{booking} {status}"),
        |log| {
            log.iter().any(|x| {
                let j = x.json();
                j["event"] == "meeting.status_update"
                    && j["data"]["booking_id"] == booking
                    && j["data"]["status"] == status
            })
        },
    )
    .await
    .iter()
    .map(|x| x.json())
    .find(|j| j["data"]["booking_id"] == booking && j["data"]["status"] == status)
    .unwrap()
}

/// Waits for the panel's display to satisfy `want`.
async fn display(panel: &mut Peer, want: impl Fn(&Value) -> bool) -> Value {
    loop {
        let (topic, payload, _) = panel.next(Duration::from_secs(30)).await;
        if topic != format!("{PANEL}/display") {
            continue;
        }
        let v: Value = serde_json::from_slice(&payload).unwrap();
        if want(&v) {
            return v;
        }
    }
}

/// Waits for the panel's feedback to `request_id`.
async fn feedback(panel: &mut Peer, request_id: &str) -> Value {
    loop {
        let (topic, payload, _) = panel.next(Duration::from_secs(30)).await;
        if topic != format!("{PANEL}/feedback") {
            continue;
        }
        let v: Value = serde_json::from_slice(&payload).unwrap();
        if v["request_id"] == request_id {
            return v;
        }
    }
}

async fn panel(r: &Rig) -> Peer {
    let mut p = Peer::connect(r.broker.port, "sim-panel").await;
    p.subscribe(&format!("{PANEL}/display")).await;
    p.subscribe(&format!("{PANEL}/feedback")).await;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_nobody_checks_into_is_released_as_no_show() {
    let r = rig(ROOM).await;
    let mut p = panel(&r).await;
    display(&mut p, |v| v["state"] == "available").await;

    book(&r, "booking.created", "b-1", in_ms(1_500), in_ms(60_000)).await;
    let v = display(&mut p, |v| v["next"]["booking_id"] == "b-1").await;
    assert_eq!(v["state"], "reserved", "{v}");
    assert_eq!(v["next"]["title"], "Standup");

    // At its start the display changes by itself and ZenCore hears `in_use`.
    display(&mut p, |v| {
        v["state"] == "in_use" && v["booking_id"] == "b-1"
    })
    .await;
    let e = wait_status(&r, "b-1", "in_use").await;
    assert_eq!(e["data"]["source"], "scheduler");
    assert_eq!(e["data"]["device_id"], Value::Null);
    assert_eq!(e["data"]["meeting_space_id"], "ms-test");

    // Nobody checks in: after the release, `no_show`, and the room is free.
    let e = wait_status(&r, "b-1", "no_show").await;
    assert_eq!(e["data"]["source"], "scheduler");
    display(&mut p, |v| v["state"] == "available").await;
    let s: Vec<String> = statuses(&r, "b-1").into_iter().map(|s| s.0).collect();
    assert_eq!(s, ["in_use", "no_show"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_in_extend_and_end_from_the_panel() {
    let r = rig(ROOM).await;
    let mut p = panel(&r).await;
    let start = in_ms(1_000);
    book(&r, "booking.confirmed", "b-2", start, in_ms(30 * 60_000)).await;
    book(
        &r,
        "booking.created",
        "b-3",
        in_ms(40 * 60_000),
        in_ms(50 * 60_000),
    )
    .await;

    // Check-in before T-0 is allowed.
    p.publish(
        &format!("{PANEL}/action"),
        r#"{"action":"check_in","request_id":"r1"}"#,
        false,
    )
    .await;
    let f = feedback(&mut p, "r1").await;
    assert_eq!(f["result"], "ok", "{f}");
    let e = wait_status(&r, "b-2", "checked_in").await;
    assert_eq!(e["data"]["source"], "panel");
    assert_eq!(e["data"]["device_id"], "panel");
    wait_status(&r, "b-2", "in_use").await;

    // Extending into the next booking is refused; a shorter extension is not.
    p.publish(
        &format!("{PANEL}/action"),
        r#"{"action":"extend","minutes":15,"request_id":"r2"}"#,
        false,
    )
    .await;
    let f = feedback(&mut p, "r2").await;
    assert_eq!(
        (f["result"].as_str(), f["reason"].as_str()),
        (Some("refused"), Some("conflicts_with_next_booking")),
        "{f}"
    );
    p.publish(
        &format!("{PANEL}/action"),
        r#"{"action":"extend","minutes":5,"request_id":"r3"}"#,
        false,
    )
    .await;
    assert_eq!(feedback(&mut p, "r3").await["result"], "ok");
    let e = wait_status(&r, "b-2", "extended").await;
    let want_end = Millis(start.0 - 1_000 + 35 * 60_000);
    let got_end = Millis::parse_rfc3339(e["data"]["end_time"].as_str().unwrap()).unwrap();
    assert!(got_end.0.abs_diff(want_end.0) < 5_000, "{e}");

    // Past the release: the check-in means no `no_show`.
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_millis(3_000)).await;
    p.publish(
        &format!("{PANEL}/action"),
        r#"{"action":"end_meeting","request_id":"r4"}"#,
        false,
    )
    .await;
    assert_eq!(feedback(&mut p, "r4").await["result"], "ok");
    wait_status(&r, "b-2", "available").await;
    display(&mut p, |v| {
        v["state"] == "available" && v["next"]["booking_id"] == "b-3"
    })
    .await;
    let s: Vec<(String, String)> = statuses(&r, "b-2")
        .into_iter()
        .map(|s| (s.0, s.1))
        .collect();
    let want: Vec<(String, String)> = [
        ("checked_in", "panel"),
        ("in_use", "scheduler"),
        ("extended", "panel"),
        ("ended_early", "panel"),
        ("available", "scheduler"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(s, want);

    // The rest of the seed catalogue: accepted and ignored, not errors.
    for event in ["organization.updated", "member.added", "device.online"] {
        let body = command_body(event, json!({"organization_id": "org-test"}));
        let (status, answer) = r.command(&body, Some(SECRET), &[]).await;
        assert_eq!(
            (status, answer["status"].as_str()),
            (202, Some("ignored")),
            "{event}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_booking_shows_it_again_and_repeats_nothing() {
    let mut r = rig(ROOM).await;
    let mut p = panel(&r).await;
    book(&r, "booking.created", "b-4", in_ms(500), in_ms(60_000)).await;
    wait_status(&r, "b-4", "in_use").await;
    display(&mut p, |v| v["state"] == "in_use").await;

    r.daemon.sigkill();
    // Wipe the retained display: what the panel sees next must come from the restarted daemon.
    p.publish(&format!("{PANEL}/display"), "", true).await;
    drop(p);
    let mut p = panel(&r).await;
    r.start_daemon().await;
    let v = display(&mut p, |v| v["state"] == "in_use").await;
    assert_eq!(v["booking_id"], "b-4");

    // The no-show still comes, once; nothing reported before the crash is reported again
    // under a new id.
    wait_status(&r, "b-4", "no_show").await;
    let s = statuses(&r, "b-4");
    let kinds: Vec<&str> = s.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(kinds, ["in_use", "no_show"], "{s:?}");
}

/// ZenCore's T-0 marks the booking started when it arrives, whatever `start_time` says on the
/// controller's clock (DESIGN §2): the panel shows `in_use` from then until its end, also
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zencore_s_t0_starts_a_booking_whose_start_is_still_fifteen_minutes_ahead() {
    let mut r = rig(ROOM).await;
    let mut p = panel(&r).await;
    display(&mut p, |v| v["state"] == "available").await;
    let (start, end) = (in_ms(15 * 60_000), in_ms(75 * 60_000));
    book(&r, "booking.created", "b-t0", start, end).await;
    display(&mut p, |v| {
        v["state"] == "reserved" && v["booking_id"] == "b-t0"
    })
    .await;
    let start_body = |phase: &str| {
        command_body(
            "booking.start",
            json!({"booking_id": "b-t0", "meeting_space_id": "ms-test",
                   "start_time": start.rfc3339(), "end_time": end.rfc3339(), "phase": phase}),
        )
    };
    let (status, answer) = r.command(&start_body("T-0"), Some(SECRET), &[]).await;
    assert_eq!(status, 202, "{answer}");
    let v = display(&mut p, |v| v["state"] == "in_use").await;
    assert_eq!(v["booking_id"], "b-t0", "{v}");
    assert_eq!(v["title"], "Standup", "{v}");
    assert_eq!(v["start_time"], start.rfc3339(), "{v}");
    // A check-in is taken now (the meeting has begun), not refused as not started.
    p.publish(
        &format!("{PANEL}/action"),
        json!({"action": "extend", "minutes": 15, "request_id": "x-1"}).to_string(),
        false,
    )
    .await;
    assert_eq!(feedback(&mut p, "x-1").await["result"], "ok");
    // A SIGKILL: the booking is still started.
    r.restart().await;
    let mut p = panel(&r).await;
    let v = display(&mut p, |v| v["booking_id"] == "b-t0").await;
    assert_eq!(v["state"], "in_use", "{v}");
    // Its end: the room is free.
    let body = command_body(
        "booking.end",
        json!({"booking_id": "b-t0", "meeting_space_id": "ms-test"}),
    );
    let (status, answer) = r.command(&body, Some(SECRET), &[]).await;
    assert_eq!(status, 202, "{answer}");
    display(&mut p, |v| v["state"] == "available").await;
}
