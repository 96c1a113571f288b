//! Doors that know whether they are shut (DESIGN §3), end to end: the real binary and a real
//! mosquitto, each contact simulated as its device speaks — a Zigbee door sensor
//! (`{"contact":true}`), a Tasmota board's switch input (`RESULT`/`SENSOR`), a Home Assistant
//! binary sensor.

mod common;

use std::time::Duration;

use common::{command_body, device_events, rig, zigbee_lock, Peer, Rig, SECRET};
use serde_json::{json, Value};
use zenedge::event::Millis;

const DOORS: &str = r#"
[presence]
debounce = "0s"

[access]
entry_grace = "2s"

[[devices]]
id = "front"
type = "lock"
driver = "zigbee2mqtt"
topic = "front_door"
contact = "front-contact"
held_open_after = "3s"

[[devices]]
id = "front-contact"
type = "contact"
driver = "zigbee2mqtt"
topic = "front_sensor"

[[devices]]
id = "strike"
type = "strike"
driver = "tasmota"
topic = "board"
pulse = "1s"
contact = "board-contact"
held_open_after = "1h"

[[devices]]
id = "board-contact"
type = "contact"
driver = "tasmota"
topic = "board"
switch = 1

[[devices]]
id = "side"
type = "strike"
driver = "shelly"
topic = "shellyplus1-side"
pulse = "1s"
contact = "side-contact"

[[devices]]
id = "side-contact"
type = "contact"
driver = "homeassistant"
state_topic = "homeassistant/binary_sensor/side_door/state"
availability_topic = "homeassistant/binary_sensor/side_door/availability"
"#;

fn sensor(closed: bool) -> String {
    json!({"battery": 97, "contact": closed, "linkquality": 120, "voltage": 3005}).to_string()
}

/// The door events of `door` delivered so far, as (event, opened_at).
fn door_events(rig: &Rig, door: &str) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    rig.rx
        .requests()
        .iter()
        .filter(|r| seen.insert(r.id.clone()))
        .map(|r| r.json())
        .filter(|j| j["data"]["device_id"] == door)
        .filter(|j| j["event"].as_str().is_some_and(|e| e.starts_with("door.")))
        .map(|j| {
            (
                j["event"].as_str().unwrap_or("").to_owned(),
                j["data"]["opened_at"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn count(rig: &Rig, door: &str, event: &str) -> usize {
    door_events(rig, door)
        .iter()
        .filter(|(e, _)| e == event)
        .count()
}

/// A Tasmota board: `cmnd/board/POWER` switches its relay and reports it (RESULT and
/// stat/…/POWER); its switch input is published by the test.
async fn tasmota_board(port: u16) -> tokio::sync::watch::Receiver<Vec<String>> {
    let mut peer = Peer::connect(port, "sim-board").await;
    peer.subscribe("cmnd/board/+").await;
    peer.publish("tele/board/LWT", "Online", true).await;
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(async move {
        loop {
            let (topic, payload, _) = peer.next(Duration::from_secs(3600)).await;
            let name = topic.rsplit('/').next().unwrap_or("").to_owned();
            let word = String::from_utf8_lossy(&payload).to_string();
            if name.starts_with("PulseTime") {
                peer.publish(
                    "stat/board/RESULT",
                    json!({ &name: {"Set": 10} }).to_string(),
                    false,
                )
                .await;
                continue;
            }
            tx.send_modify(|v| v.push(format!("{name} {word}")));
            peer.publish(
                "stat/board/RESULT",
                json!({ &name: word }).to_string(),
                false,
            )
            .await;
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread")]
async fn contacts_report_forced_and_held_open_doors_and_a_relock_waits_for_the_close() {
    let mut rig = rig(DOORS).await;
    let port = rig.broker.port;
    let (_lock, lock_commands) = zigbee_lock(port).await;
    let board = tasmota_board(port).await;
    let sensors = Peer::connect(port, "sim-sensors").await;
    // Every contact's first word: the doors are shut (no news, nothing forced).
    sensors
        .publish("zigbee2mqtt/front_sensor", sensor(true), false)
        .await;
    sensors
        .publish(
            "stat/board/RESULT",
            r#"{"Switch1":{"Action":"OFF"}}"#,
            false,
        )
        .await;
    sensors
        .publish(
            "homeassistant/binary_sensor/side_door/availability",
            "online",
            true,
        )
        .await;
    sensors
        .publish("homeassistant/binary_sensor/side_door/state", "OFF", false)
        .await;
    wait_devices(&rig, "every door closed", |v| {
        let doors: Vec<&str> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["door"].as_str())
            .collect();
        doors.len() == 6 && doors.iter().all(|d| *d == "closed")
    })
    .await;

    // Nobody unlocked the front door: it is forced, and the event carries the moment of the
    // contact's report (not of some later poll).
    let before = Millis::now();
    sensors
        .publish("zigbee2mqtt/front_sensor", sensor(false), false)
        .await;
    rig.wait_event("front", "door.forced_open", "").await;
    let forced = door_events(&rig, "front");
    assert_eq!(forced[0].0, "door.opened");
    assert_eq!(forced[1].0, "door.forced_open");
    let opened_at = Millis::parse_rfc3339(&forced[1].1).expect("opened_at is RFC 3339");
    assert!(
        opened_at.0 >= before.0 && opened_at.0 - before.0 < 1_000,
        "forced open at {} for a contact that opened at {}",
        opened_at.rfc3339(),
        before.rfc3339()
    );
    let body = rig.first("door.forced_open");
    assert_eq!(body["data"]["contact_id"], "front-contact");
    assert_eq!(body["data"]["device_type"], "lock");
    // Open past its 3 s: held open, once; then shut.
    rig.wait_event("front", "door.held_open", "").await;
    sensors
        .publish("zigbee2mqtt/front_sensor", sensor(true), false)
        .await;
    rig.wait_event("front", "door.closed", "").await;
    assert_eq!(count(&rig, "front", "door.held_open"), 1);
    let (code, out, _) = rig.cli(&["devices"]).await;
    assert_eq!(code, 0);
    let line = out.lines().find(|l| l.starts_with("front ")).unwrap_or("");
    assert!(line.contains("closed"), "{out}");

    // The strike unlocked by an operator, its relay reporting ON: the opening is no force. (The
    // pulse-plus-grace window alone is what excuses an OSDP reader's door: tests/serial.rs.)
    let (code, _, err) = rig.cli(&["unlock", "strike"]).await;
    assert_eq!(code, 0, "{err}");
    sensors
        .publish(
            "tele/board/SENSOR",
            r#"{"Time":"2026-12-04T10:00:00","Switch1":"ON"}"#,
            false,
        )
        .await;
    rig.wait_event("strike", "door.opened", "").await;
    assert!(board.borrow().contains(&"POWER ON".to_owned()));
    // Shut again: once its door.closed is delivered, so is anything the opening made before it
    // (one device's events arrive in order) — and that was no forced_open.
    sensors
        .publish(
            "stat/board/RESULT",
            r#"{"Switch1":{"Action":"OFF"}}"#,
            false,
        )
        .await;
    rig.wait_event("strike", "door.closed", "").await;
    assert_eq!(
        count(&rig, "strike", "door.forced_open"),
        0,
        "an opening after the operator's unlock was called forced"
    );

    // Garbage on a contact's topics is counted, never a door event.
    let malformed_before = malformed(&rig).await;
    for junk in [
        &b"{\"contact\":\"yes\"}"[..],
        b"\xff\xfe",
        b"[1,2]",
        b"{\"contact\":",
    ] {
        sensors
            .publish("zigbee2mqtt/front_sensor", junk.to_vec(), false)
            .await;
    }
    sensors
        .publish("homeassistant/binary_sensor/side_door/state", "ajar", false)
        .await;
    rig.daemon
        .wait_status("five malformed contact messages", |s| {
            s["mqtt"]["malformed"].as_u64().unwrap_or(0) >= malformed_before + 5
        })
        .await;
    assert_eq!(
        door_events(&rig, "front").len(),
        4,
        "garbage made a door event"
    );

    // ZenCore opens the front door for 1 s; the guest holds it open: the relock waits for the
    // close (the held-open 3 s after opening proves the 1 s passed with no LOCK sent).
    let locks_before = *lock_commands.borrow();
    let (code, answer) = rig
        .command(
            &command_body(
                "access.unlock",
                json!({"action_id": "act-relock", "device_id": "front", "booking_id": "b-1",
                       "not_after": common::at(60), "duration_s": 1}),
            ),
            Some(SECRET),
            &[],
        )
        .await;
    assert_eq!(code, 202, "{answer}");
    rig.wait_event("front", "device.action_completed", "succeeded")
        .await;
    sensors
        .publish("zigbee2mqtt/front_sensor", sensor(false), false)
        .await;
    rig.rx
        .wait_until(Duration::from_secs(30), "a second held-open", |r| {
            count_in(r, "front", "door.held_open") == 2
        })
        .await;
    assert_eq!(
        count(&rig, "front", "door.forced_open"),
        1,
        "an opening during the unlock was called forced"
    );
    assert_eq!(
        *lock_commands.borrow(),
        locks_before + 1,
        "a LOCK was sent to an open door"
    );
    sensors
        .publish("zigbee2mqtt/front_sensor", sensor(true), false)
        .await;
    rig.rx
        .wait_until(Duration::from_secs(30), "the relock after the close", |r| {
            r.iter().any(|x| {
                let j = x.json();
                j["data"]["action_id"] == "act-relock:relock" && j["data"]["status"] == "succeeded"
            })
        })
        .await;
    assert_eq!(*lock_commands.borrow(), locks_before + 2);

    // A SIGKILL while the side door stands open: the restart does not report it again, and
    // its later close is reported with the opening's time.
    sensors
        .publish("homeassistant/binary_sensor/side_door/state", "ON", false)
        .await;
    rig.wait_event("side", "door.forced_open", "").await;
    let metrics = rig.metrics().await;
    assert!(
        metrics.contains("zenedge_door_events_total{event=\"forced_open\"} 2"),
        "{metrics}"
    );
    rig.restart().await;
    sensors
        .publish("homeassistant/binary_sensor/side_door/state", "ON", false)
        .await;
    sensors
        .publish("homeassistant/binary_sensor/side_door/state", "OFF", false)
        .await;
    rig.wait_event("side", "door.closed", "").await;
    let side = door_events(&rig, "side");
    assert_eq!(
        side.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
        ["door.opened", "door.forced_open", "door.closed"]
    );
    assert_eq!(side[0].1, side[2].1, "door.closed names its opening");
}

/// Polls `/v1/devices` (it has no push channel) until `done` holds; panics with the last
/// answer after 30 s.
async fn wait_devices(rig: &Rig, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, devices) = rig.daemon.get("/v1/devices").await;
        if done(&devices) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {devices}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count_in(log: &[common::Recorded], door: &str, event: &str) -> usize {
    device_events(log, door)
        .iter()
        .filter(|(e, _)| e == event)
        .count()
}

async fn malformed(rig: &Rig) -> u64 {
    let (_, status): (u16, Value) = rig.daemon.get("/v1/status").await;
    status["mqtt"]["malformed"].as_u64().unwrap_or(0)
}

const PANEL: &str = r#"
[[devices]]
id = "panel"
type = "panel"
driver = "zenedge-panel"
"#;

/// Waits for a message on `peer` whose topic and payload satisfy `want`.
async fn wait_message(peer: &mut Peer, what: &str, want: impl Fn(&str, &str) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some((topic, payload, _)) = peer.try_next(left).await else {
            panic!("timed out waiting for {what}");
        };
        if want(&topic, &String::from_utf8_lossy(&payload)) {
            return;
        }
    }
}

/// Waits until each of the three doors was sent its lock.
async fn every_door_locked(watch: &mut Peer) {
    let mut seen = [false; 3];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.contains(&false) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some((topic, payload, _)) = watch.try_next(left).await else {
            panic!("not every door was locked: {seen:?} (front, strike, side)");
        };
        let text = String::from_utf8_lossy(&payload).to_string();
        match topic.as_str() {
            "zigbee2mqtt/front_door/set" if text.contains("\"LOCK\"") => seen[0] = true,
            "cmnd/board/POWER" if text == "OFF" => seen[1] = true,
            "shellyplus1-side/rpc" => {
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if v["params"]["on"] == false {
                    seen[2] = true;
                }
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lockdown_with_zencore_down_locks_every_door_denies_credentials_and_survives_a_sigkill() {
    let mut rig = rig(&format!("{DOORS}{PANEL}")).await;
    let port = rig.broker.port;
    let _lock = zigbee_lock(port).await;
    let _board = tasmota_board(port).await;
    let mut watch = Peer::connect(port, "sim-watch").await;
    for t in [
        "zigbee2mqtt/front_door/set",
        "cmnd/board/POWER",
        "shellyplus1-side/rpc",
    ] {
        watch.subscribe(t).await;
    }
    let mut display = Peer::connect(port, "sim-display").await;
    display
        .subscribe("zenedge/edge-test/panels/panel/display")
        .await;
    let (code, answer) = rig
        .command(
            &common::grant("g-1", "tok-1", Some("482916"), -60, 3600),
            Some(SECRET),
            &[],
        )
        .await;
    assert_eq!(code, 202, "{answer}");
    let mut panel = common::panel_peer(port, "sim-panel").await;
    assert_eq!(common::try_pin(&mut panel, "482916", 1).await.0, "granted");

    // ZenCore goes down; its lockdown arrives (the last command it got through).
    rig.rx.set_script(|_| common::Reply::Status(503));
    let (code, answer) = rig
        .command(
            &command_body(
                "access.lockdown",
                json!({"lockdown_id": "ld-1", "reason": "intruder reported"}),
            ),
            Some(SECRET),
            &[],
        )
        .await;
    assert_eq!(code, 202, "{answer}");
    every_door_locked(&mut watch).await;
    let (code, status, _) = rig.cli(&["status"]).await;
    assert_eq!(code, 0);
    assert!(
        status.contains("LOCKDOWN     ld-1 of the whole controller since")
            && status.contains("(intruder reported)"),
        "{status}"
    );
    wait_message(&mut display, "the panel's lockdown display", |_, p| {
        p.contains(r#""state":"lockdown""#) && p.contains("intruder reported")
    })
    .await;
    // A valid magic link and PIN: denied, and the panel hears only `denied`.
    let link = json!({"type": "magic_link", "token": "tok-1"});
    assert_eq!(
        common::present(&mut panel, link.clone(), 2).await,
        ("denied".into(), "denied".into())
    );
    assert_eq!(
        common::try_pin(&mut panel, "482916", 3).await,
        ("denied".into(), "denied".into())
    );

    // A SIGKILL does not lift it: still denied, the panel still shows it, the locks locked.
    rig.restart().await;
    every_door_locked(&mut watch).await;
    assert_eq!(
        common::try_pin(&mut panel, "482916", 4).await,
        ("denied".into(), "denied".into())
    );
    let mut display = Peer::connect(port, "sim-display-2").await;
    display
        .subscribe("zenedge/edge-test/panels/panel/display")
        .await;
    wait_message(&mut display, "the retained lockdown display", |_, p| {
        p.contains(r#""state":"lockdown""#)
    })
    .await;

    // ZenCore's own unlock (an administrator's override) still opens the front door.
    let (code, answer) = rig
        .command(
            &command_body(
                "access.unlock",
                json!({"action_id": "override-1", "device_id": "front", "booking_id": "b-g-1",
                       "not_after": common::at(60)}),
            ),
            Some(SECRET),
            &[],
        )
        .await;
    assert_eq!(code, 202, "{answer}");
    wait_message(&mut watch, "the override's UNLOCK", |t, p| {
        t == "zigbee2mqtt/front_door/set" && p.contains("\"UNLOCK\"")
    })
    .await;

    // A stranger on the room network forges a lift (unsigned, then signed with a key of its
    // own): refused, and the lockdown holds.
    let lift = command_body("access.lockdown_lifted", json!({"lockdown_id": "ld-1"}));
    for key in [None, Some("a-key-of-the-attacker-s-own-32b")] {
        let (code, _) = rig.command(&lift, key, &[]).await;
        assert_eq!(code, 401, "a forged lift with {key:?}");
    }
    assert_eq!(
        common::try_pin(&mut panel, "482916", 40).await,
        ("denied".into(), "denied".into())
    );

    // Lifted: the PIN opens again, the panel leaves the lockdown.
    let (code, answer) = rig
        .command(
            &command_body("access.lockdown_lifted", json!({"lockdown_id": "ld-1"})),
            Some(SECRET),
            &[],
        )
        .await;
    assert_eq!(code, 202, "{answer}");
    wait_message(&mut display, "the display after the lift", |_, p| {
        !p.contains(r#""state":"lockdown""#)
    })
    .await;
    assert_eq!(common::try_pin(&mut panel, "482916", 5).await.0, "granted");
    let (_, status, _) = rig.cli(&["status"]).await;
    assert!(!status.contains("LOCKDOWN"), "{status}");

    // ZenCore back: it hears each denial as `lockdown`, and each door's lock as `lockdown`'s.
    rig.rx.set_script(|_| common::Reply::Status(200));
    rig.rx
        .wait_until(Duration::from_secs(30), "the lockdown's events", |log| {
            let bodies: Vec<Value> = log.iter().map(|r| r.json()).collect();
            let denied = bodies
                .iter()
                .filter(|j| j["event"] == "access.denied" && j["data"]["reason"] == "lockdown")
                .map(|j| j["id"].clone())
                .collect::<std::collections::HashSet<_>>()
                .len();
            let locked: std::collections::HashSet<_> = bodies
                .iter()
                .filter(|j| {
                    j["event"] == "device.action_completed"
                        && j["data"]["source"] == "lockdown"
                        && j["data"]["action"] == "lock"
                })
                .filter_map(|j| j["data"]["device_id"].as_str().map(String::from))
                .collect();
            let overridden = bodies.iter().any(|j| {
                j["data"]["action_id"] == "override-1" && j["data"]["status"] == "succeeded"
            });
            denied == 4 && locked.contains("front") && overridden
        })
        .await;
}

/// Passage mode end to end: a booking that asked for it holds the front door unlocked from
/// the panel's check-in; nothing relocks it during the meeting; a lockdown locks it at once and
/// its lift holds it again; at the end it locks only once the door is shut.
#[tokio::test(flavor = "multi_thread")]
async fn passage_holds_the_door_for_the_meeting_and_locks_it_once_shut_after_the_end() {
    let rig = rig(&format!("{DOORS}{PANEL}")).await;
    let port = rig.broker.port;
    let _lock = zigbee_lock(port).await;
    let mut watch = Peer::connect(port, "sim-watch").await;
    watch.subscribe("zigbee2mqtt/front_door/set").await;
    let sensors = Peer::connect(port, "sim-sensors").await;
    sensors
        .publish("zigbee2mqtt/front_sensor", sensor(true), false)
        .await;
    wait_devices(&rig, "the front door closed", |v| {
        v.as_array()
            .into_iter()
            .flatten()
            .any(|d| d["id"] == "front" && d["door"] == "closed")
    })
    .await;
    let mut display = Peer::connect(port, "sim-display").await;
    display
        .subscribe("zenedge/edge-test/panels/panel/display")
        .await;
    let now = Millis::now().0;
    let (start, end) = (Millis(now + 2_000), Millis(now + 15_000));
    let (code, answer) = rig
        .command(
            &command_body(
                "booking.created",
                json!({"booking_id": "b-pass", "meeting_space_id": "ms-test",
                       "start_time": start.rfc3339(), "end_time": end.rfc3339(),
                       "unlock_during_meeting": true}),
            ),
            Some(SECRET),
            &[],
        )
        .await;
    assert_eq!(code, 202, "{answer}");
    // The panel shows the booking (the room's schedule has it) before anyone checks in.
    wait_message(&mut display, "the booking on the panel", |_, p| {
        p.contains("b-pass")
    })
    .await;
    let mut panel = common::panel_peer(port, "sim-panel").await;
    panel
        .publish(
            "zenedge/edge-test/panels/panel/action",
            json!({"action": "check_in", "booking_id": "b-pass", "request_id": "c1"}).to_string(),
            false,
        )
        .await;
    let (_, answer, _) = panel.next(Duration::from_secs(30)).await;
    let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    assert_eq!(answer["result"], "ok", "check-in refused: {answer}");
    wait_message(&mut watch, "the passage UNLOCK", |_, p| {
        p.contains("\"UNLOCK\"")
    })
    .await;
    let passage = |log: &[common::Recorded], state: &str| {
        log.iter()
            .map(|r| r.json())
            .filter(|j| {
                j["event"] == "access.passage"
                    && j["data"]["device_id"] == "front"
                    && j["data"]["state"] == state
                    && j["data"]["booking_id"] == "b-pass"
            })
            .map(|j| j["id"].clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    rig.rx
        .wait_until(Duration::from_secs(30), "access.passage unlocked", |log| {
            passage(log, "unlocked") == 1
        })
        .await;
    // The meeting begins (its `in_use`); the door opens: no force, and no LOCK was sent.
    rig.rx
        .wait_until(Duration::from_secs(30), "the meeting's in_use", |log| {
            log.iter().any(|r| {
                let j = r.json();
                j["event"] == "meeting.status_update" && j["data"]["status"] == "in_use"
            })
        })
        .await;
    sensors
        .publish("zigbee2mqtt/front_sensor", sensor(false), false)
        .await;
    rig.wait_event("front", "door.opened", "").await;

    // A lockdown during the meeting: locked at once, open or not; lifted: held again.
    let (code, _) = rig
        .command(
            &command_body(
                "access.lockdown",
                json!({"lockdown_id": "ld-p", "meeting_space_id": "ms-test"}),
            ),
            Some(SECRET),
            &[],
        )
        .await;
    assert_eq!(code, 202);
    wait_message(&mut watch, "the lockdown's LOCK", |_, p| {
        p.contains("\"LOCK\"")
    })
    .await;
    let (code, _) = rig
        .command(
            &command_body("access.lockdown_lifted", json!({"lockdown_id": "ld-p"})),
            Some(SECRET),
            &[],
        )
        .await;
    assert_eq!(code, 202);
    wait_message(&mut watch, "passage's UNLOCK after the lift", |_, p| {
        p.contains("\"UNLOCK\"")
    })
    .await;

    // The end passes with the door still open: nothing is sent until it shuts.
    rig.rx
        .wait_until(Duration::from_secs(30), "the meeting's end", |log| {
            log.iter().any(|r| {
                let j = r.json();
                j["event"] == "meeting.status_update" && j["data"]["status"] == "available"
            })
        })
        .await;
    // A marker through the daemon's own MQTT link, published after anything the end made:
    // the panel's answer to a credential arrives after any LOCK sent before it.
    watch
        .subscribe("zenedge/edge-test/panels/panel/feedback")
        .await;
    panel
        .publish(
            "zenedge/edge-test/panels/panel/credential",
            json!({"type": "pin", "pin": "000000", "request_id": "marker"}).to_string(),
            false,
        )
        .await;
    let (topic, payload, _) = watch.next(Duration::from_secs(30)).await;
    assert!(
        topic.ends_with("/feedback"),
        "a command reached an open door at the end of passage: {topic} {}",
        String::from_utf8_lossy(&payload)
    );
    assert_eq!(
        passage(&rig.rx.requests(), "locked"),
        1,
        "only the lockdown's"
    );
    sensors
        .publish("zigbee2mqtt/front_sensor", sensor(true), false)
        .await;
    wait_message(&mut watch, "the LOCK once shut", |_, p| {
        p.contains("\"LOCK\"")
    })
    .await;
    rig.rx
        .wait_until(Duration::from_secs(30), "passage's lock reported", |log| {
            passage(log, "locked") == 2
                && log.iter().any(|r| {
                    let j = r.json();
                    j["event"] == "device.action_completed"
                        && j["data"]["source"] == "passage"
                        && j["data"]["action"] == "lock"
                        && j["data"]["status"] == "succeeded"
                })
        })
        .await;
    assert_eq!(passage(&rig.rx.requests(), "unlocked"), 2);
    // Every earlier event of the front door arrived before that lock's (one device's events
    // arrive in order): the opening during passage was not forced.
    assert_eq!(count(&rig, "front", "door.forced_open"), 0);
}
