use super::*;
use sha2::{Digest, Sha256};
use std::path::Path;

use crate::config::testing::HEAD;

const FRONT: &str = r#"
[[devices]]
id = "front"
type = "lock"
driver = "zigbee2mqtt"
topic = "front_door"
"#;

fn parse(sections: &str) -> Arc<Config> {
    let text = format!("{HEAD}{sections}{FRONT}");
    Arc::new(Config::from_toml(&text, Path::new("t.toml")).unwrap())
}

fn config() -> Arc<Config> {
    parse(
        r#"
[presence]
debounce = "0s"
[[devices]]
id = "strike"
type = "strike"
driver = "tasmota"
topic = "strike_1"
"#,
    )
}

/// The tests drive the hub through its one entry, [`Hub::handle`], each input at its own time.
impl Hub {
    fn at(&mut self, input: Input<'_>, now: Millis) -> Effects {
        let ctx = Ctx { now, ..self.ctx };
        self.handle(input, &ctx)
    }

    fn message(&mut self, topic: &str, payload: &[u8], retained: bool, now: Millis) -> Effects {
        self.at(
            Input::Message {
                topic,
                payload,
                retained,
            },
            now,
        )
    }

    fn request(&mut self, request: Request, now: Millis) -> Effects {
        self.at(Input::Request(request), now)
    }

    fn tick(&mut self, now: Millis) -> Effects {
        self.at(Input::Tick, now)
    }

    fn set_booking(&mut self, booking: crate::schedule::Booking, now: Millis) -> Effects {
        self.at(Input::Booking(booking), now)
    }

    fn set_explicit(&mut self, explicit: crate::wire::panel::Explicit, now: Millis) -> Effects {
        self.at(Input::Explicit(explicit), now)
    }
}

fn names(out: &Effects) -> Vec<String> {
    out.events()
        .iter()
        .map(|e| {
            let fields = e.fields();
            format!(
                "{} {} {}",
                e.kind().as_str(),
                e.device.as_ref().map(|d| d.id.as_str()).unwrap_or("-"),
                fields
                    .get("reason")
                    .or_else(|| fields.get("status"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
            )
        })
        .collect()
}

fn panel_hub() -> Hub {
    let config = parse(
        r#"
[access]
lockout_after = 3
[[devices]]
id = "panel"
type = "panel"
driver = "zenedge-panel"
"#,
    );
    let mut hub = Hub::new(config, HashMap::new(), Millis(0));
    hub.set_grants(vec![crate::access::Grant {
        grant_id: "g".into(),
        booking_id: "b".into(),
        meeting_space_id: "ms".into(),
        token_sha256: hex::encode(Sha256::digest(b"token")),
        pin_sha256: Some(hex::encode(Sha256::digest(b"4711"))),
        pin_hmac: None,
        card_sha256: None,
        card_hmac: None,
        valid_from: Millis(0),
        valid_until: Millis(u64::MAX / 4),
        device_ids: None,
        member_id: None,
        revoked_at: None,
    }]);
    hub
}

fn pin(hub: &mut Hub, pin: &str, at: u64) -> (Effects, Value) {
    let out = hub.message(
        "zenedge/edge-1/panels/panel/credential",
        format!(r#"{{"type":"pin","pin":"{pin}"}}"#).as_bytes(),
        false,
        Millis(at),
    );
    let feedback = out
        .publish()
        .iter()
        .find(|p| p.topic.ends_with("/feedback"))
        .map(|p| serde_json::from_slice(&p.payload).unwrap())
        .unwrap_or(Value::Null);
    (out, feedback)
}

#[test]
fn guesses_lock_the_panel_out_and_the_panel_is_told_only_denied_or_locked_out() {
    let mut hub = panel_hub();
    let t = 1_000_000;
    let (out, fb) = pin(&mut hub, "0000", t);
    assert_eq!(fb["reason"], "denied", "not unknown_credential: {fb}");
    assert_eq!(names(&out), vec!["access.denied panel unknown_credential"]);
    assert_eq!(
        out.lockouts().len(),
        1,
        "the guard is stored with the denial"
    );
    pin(&mut hub, "0001", t + 1000);
    let (out, fb) = pin(&mut hub, "0002", t + 2000);
    assert_eq!(fb["reason"], "locked_out");
    assert_eq!(
        names(&out),
        vec![
            "access.denied panel unknown_credential",
            "access.lockout panel "
        ]
    );
    let lockout = &out.events()[1];
    assert_eq!(lockout.fields()["failures"], 3);
    assert_eq!(lockout.fields()["lockouts"], 1);
    assert_eq!(
        lockout.fields()["until"],
        Millis(t + 2000 + 60_000).rfc3339().as_str()
    );
    // The right PIN during the lockout is not even compared: no unlock, nothing stored.
    for i in 0..50 {
        let (out, fb) = pin(&mut hub, "4711", t + 3000 + i);
        assert_eq!(
            (fb["result"].as_str(), fb["reason"].as_str()),
            (Some("denied"), Some("locked_out"))
        );
        assert!(out.events().is_empty() && out.audit().is_empty() && out.lockouts().is_empty());
        assert!(out
            .publish()
            .iter()
            .all(|p| !p.topic.contains("front_door")));
    }
    assert!(hub
        .views()
        .iter()
        .any(|v| v.id == "panel" && v.locked_out_until.is_some()));
    // When it ends: one audit record with the attempts, and the PIN works again.
    let out = hub.tick(Millis(t + 2000 + 60_000));
    assert_eq!(out.audit().len(), 1);
    assert_eq!(out.audit()[0].result, "locked_out");
    assert_eq!(out.audit()[0].attempts, Some(50));
    let (out, fb) = pin(&mut hub, "4711", t + 70_000);
    assert_eq!(fb["result"], "granted");
    assert!(out
        .publish()
        .iter()
        .any(|p| p.topic == "zigbee2mqtt/front_door/set"));
}

#[test]
fn retained_state_is_not_liveness_but_availability_is() {
    let mut hub = Hub::new(config(), HashMap::new(), Millis(0));
    let out = hub.message(
        "zigbee2mqtt/front_door",
        br#"{"lock_state":"locked"}"#,
        true,
        Millis(1),
    );
    assert!(out.events().is_empty());
    let out = hub.message(
        "zigbee2mqtt/front_door/availability",
        br#"{"state":"online"}"#,
        true,
        Millis(2),
    );
    assert_eq!(names(&out), vec!["device.online front availability"]);
    assert_eq!(out.presence().len(), 1);
}

/// A hub whose Zigbee lock has reported itself locked.
fn hub_with_the_zigbee_lock_heard() -> Hub {
    let mut hub = Hub::new(config(), HashMap::new(), Millis(0));
    hub.message(
        "zigbee2mqtt/front_door",
        br#"{"state":"LOCK"}"#,
        false,
        Millis(1),
    );
    hub
}

#[test]
fn bridge_offline_takes_every_zigbee_device_offline() {
    let mut hub = hub_with_the_zigbee_lock_heard();
    hub.message("tele/strike_1/LWT", b"Online", false, Millis(1));
    // The bridge is asked first: an "offline" anyone could have published is not believed
    // until the bridge has had its time to answer.
    let out = hub.message(
        "zigbee2mqtt/bridge/state",
        br#"{"state":"offline"}"#,
        false,
        Millis(2),
    );
    assert!(names(&out).is_empty());
    assert_eq!(
        out.publish()[0].topic,
        "zigbee2mqtt/bridge/request/health_check"
    );
    let asked = Millis(2);
    assert_eq!(
        hub.next_deadline(),
        Some(asked.saturating_add(BRIDGE_CHECK))
    );
    // A second "offline" while asking asks nothing more.
    let again = hub.message("zigbee2mqtt/bridge/state", b"offline", true, Millis(3));
    assert!(again.publish().is_empty());
    let out = hub.tick(asked.saturating_add(BRIDGE_CHECK));
    assert_eq!(names(&out), vec!["device.offline front bridge_offline"]);
}

#[test]
fn a_bridge_that_answers_its_health_check_is_not_offline() {
    let mut hub = hub_with_the_zigbee_lock_heard();
    // A retained "offline" from a stranger, replayed on subscribe.
    let out = hub.message("zigbee2mqtt/bridge/state", b"offline", true, Millis(2));
    assert_eq!(out.publish().len(), 1);
    let out = hub.message(
        "zigbee2mqtt/bridge/response/health_check",
        br#"{"data":{"healthy":true},"status":"ok"}"#,
        false,
        Millis(50),
    );
    assert!(names(&out).is_empty());
    let out = hub.tick(Millis(10_000));
    assert!(names(&out).is_empty(), "{:?}", names(&out));
    assert_eq!(
        hub.counters.bridge_offline_ignored.load(Ordering::Relaxed),
        1
    );
    // An answer nobody asked for changes nothing.
    hub.message(
        "zigbee2mqtt/bridge/response/health_check",
        br#"{"data":{"healthy":true},"status":"ok"}"#,
        false,
        Millis(10_001),
    );
    assert_eq!(
        hub.counters.bridge_offline_ignored.load(Ordering::Relaxed),
        1
    );
}

#[test]
fn unlock_publishes_the_command_and_completes_on_the_report() {
    let mut hub = Hub::new(config(), HashMap::new(), Millis(0));
    let req = Request {
        action_id: "a1".into(),
        device: "strike".into(),
        command: Command::Unlock,
        source: actions::Source::Operator,
        booking_id: None,
        grant_id: None,
        duration_s: None,
    };
    let out = hub.request(req, Millis(10));
    assert_eq!(out.publish().len(), 1);
    assert_eq!(out.publish()[0].topic, "cmnd/strike_1/POWER");
    assert_eq!(out.publish()[0].payload, b"ON");
    assert!(!out.publish()[0].retain);
    let out = hub.message("stat/strike_1/POWER", b"ON", false, Millis(40));
    assert_eq!(
        names(&out),
        vec![
            "device.online strike state_report",
            "device.action_completed strike succeeded"
        ]
    );
    let e = &out.events()[1];
    assert_eq!(e.fields()["duration_ms"], 30);
    assert_eq!(e.fields()["action_id"], "a1");
}

#[test]
fn an_unlock_with_duration_relocks_a_zigbee_lock_as_its_own_action() {
    let mut hub = Hub::new(config(), HashMap::new(), Millis(0));
    let req = Request {
        action_id: "z1".into(),
        device: "front".into(),
        command: Command::Unlock,
        source: actions::Source::Zencore,
        booking_id: Some("b1".into()),
        grant_id: None,
        duration_s: Some(5),
    };
    hub.request(req, Millis(0));
    let out = hub.message(
        "zigbee2mqtt/front_door",
        br#"{"lock_state":"unlocked"}"#,
        false,
        Millis(100),
    );
    assert_eq!(out.completed().len(), 1);
    assert_eq!(hub.next_deadline(), Some(Millis(5_100)));
    assert!(hub.tick(Millis(5_099)).publish().is_empty());
    let out = hub.tick(Millis(5_100));
    assert_eq!(out.publish()[0].payload, br#"{"state":"LOCK"}"#);
    let out = hub.message(
        "zigbee2mqtt/front_door",
        br#"{"lock_state":"locked"}"#,
        false,
        Millis(5_300),
    );
    let e = &out.events()[0];
    assert_eq!(e.fields()["action_id"], "z1:relock");
    assert_eq!(e.fields()["action"], "lock");
    assert_eq!(e.fields()["source"], "zencore");
    assert_eq!(e.fields()["status"], "succeeded");
}

#[test]
fn an_offline_device_fails_at_once_and_malformed_is_counted() {
    let mut hub = Hub::new(config(), HashMap::new(), Millis(0));
    hub.message("tele/strike_1/LWT", b"Offline", false, Millis(1));
    let req = Request {
        action_id: "a2".into(),
        device: "strike".into(),
        command: Command::Unlock,
        source: actions::Source::Operator,
        booking_id: None,
        grant_id: None,
        duration_s: None,
    };
    let out = hub.request(req, Millis(2));
    assert!(out.publish().is_empty());
    assert_eq!(
        out.completed()[0].error,
        Some(actions::ActionError::DeviceOffline)
    );
    let out = hub.message("stat/strike_1/RESULT", b"{not json", false, Millis(3));
    assert!(out.events().is_empty());
    assert_eq!(hub.counters.malformed.load(Ordering::Relaxed), 1);
}

fn shown(out: &Effects) -> Option<Value> {
    out.publish()
        .iter()
        .rfind(|p| p.topic == "zenedge/edge-1/panels/panel/display")
        .map(|p| serde_json::from_slice(&p.payload).unwrap())
}

#[test]
fn zencore_s_explicit_state_is_shown_by_the_one_writer_until_the_schedule_moves_on() {
    const MIN: u64 = 60_000;
    let mut hub = panel_hub();
    let first = shown(&hub.tick(Millis(0))).expect("a first display");
    assert_eq!(first["state"], "available");

    let explicit = crate::wire::panel::Explicit {
        meeting_space_id: "ms".into(),
        state: "reserved".into(),
        booking_id: Some("b-9".into()),
        message: Value::from("VIP visit"),
    };
    let v = shown(&hub.set_explicit(explicit.clone(), Millis(MIN))).expect("explicit shown");
    assert_eq!(v["state"], "reserved");
    assert_eq!(v["booking_id"], "b-9");
    assert_eq!(v["message"], "VIP visit");
    // Nothing in the schedule changed: the next tick does not take it back.
    assert_eq!(shown(&hub.tick(Millis(2 * MIN))), None);
    // The same state again publishes nothing new (the retained message is already right).
    assert_eq!(shown(&hub.set_explicit(explicit, Millis(3 * MIN))), None);

    // A booking that begins now changes the schedule's view: that view wins from then on.
    let booking = crate::schedule::Booking {
        booking_id: "b-1".into(),
        meeting_space_id: "ms".into(),
        start: Millis(4 * MIN),
        end: Millis(64 * MIN),
        title: None,
        closed: None,
        started: None,
        unlock_during_meeting: None,
    };
    let v = shown(&hub.set_booking(booking, Millis(5 * MIN))).expect("schedule shown");
    assert_eq!(v["state"], "in_use");
    assert_eq!(v["booking_id"], "b-1");
    assert_eq!(v["message"], Value::Null);
}

/// Each effect in one line, so a table row can say what an input must make.
fn effects(out: &Effects) -> Vec<String> {
    out.0
        .iter()
        .map(|e| match e {
            Effect::Event(e) => format!(
                "event {} {}",
                e.kind().as_str(),
                e.device.as_ref().map(|d| d.id.as_str()).unwrap_or("-")
            ),
            Effect::Presence(d, r) => format!("presence {d} online={}", r.online),
            Effect::Publish(p) => format!(
                "publish {} {}",
                p.topic,
                String::from_utf8_lossy(&p.payload)
            ),
            Effect::Completed(c) => {
                format!("completed {} {}", c.request.action_id, c.status.as_str())
            }
            Effect::Audit(a) => format!("audit {} {}", a.reader, a.result),
            Effect::Serial(d, c) => format!("serial {d} {c:?}"),
            Effect::Mark(id, _) => format!("mark {id}"),
            Effect::Forget(id) => format!("forget {id}"),
            Effect::Lockout(d, _) => format!("lockout {d}"),
            Effect::Door(d, r) => format!("door {d} closed={:?}", r.closed),
            Effect::Passage(d, h) => format!("passage {d} {h:?}"),
        })
        .collect()
}

fn counter_ids() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    format!("act_t{}", N.fetch_add(1, Ordering::Relaxed))
}

#[test]
fn the_devices_machine_as_a_table_of_inputs_and_effects() {
    let mut hub = Hub::new(config(), HashMap::new(), Millis(0));
    let ctx = |t: u64| Ctx {
        now: Millis(t),
        clock_trusted: true,
        ids: counter_ids,
    };
    let unlock = |id: &str, device: &str| {
        Input::Request(Request {
            action_id: id.into(),
            device: device.into(),
            command: Command::Unlock,
            source: actions::Source::Operator,
            booking_id: None,
            grant_id: None,
            duration_s: None,
        })
    };
    let message = |topic: &'static str, payload: &'static [u8]| Input::Message {
        topic,
        payload,
        retained: false,
    };
    let rows: Vec<(u64, Input<'_>, Vec<&str>)> = vec![
        (
            10,
            message(
                "zigbee2mqtt/front_door/availability",
                br#"{"state":"online"}"#,
            ),
            // Online: the lock is asked for its state (it may not say it on its own).
            vec![
                "presence front online=true",
                "event device.online front",
                r#"publish zigbee2mqtt/front_door/get {"state":""}"#,
            ],
        ),
        // A retained state is what was last published, not a sign of life.
        (
            20,
            Input::Message {
                topic: "stat/strike_1/POWER",
                payload: b"OFF",
                retained: true,
            },
            vec![],
        ),
        (
            30,
            unlock("a1", "strike"),
            vec!["publish cmnd/strike_1/POWER ON"],
        ),
        (
            60,
            message("stat/strike_1/POWER", b"ON"),
            // Online: the relay is asked for its PulseTime.
            vec![
                "presence strike online=true",
                "event device.online strike",
                "publish cmnd/strike_1/PulseTime1 ",
                "event device.action_completed strike",
                "completed a1 succeeded",
            ],
        ),
        // Garbage is counted, never an effect.
        (70, message("zigbee2mqtt/front_door", b"\xff{"), vec![]),
        (
            80,
            unlock("a2", "front"),
            vec![r#"publish zigbee2mqtt/front_door/set {"state":"UNLOCK"}"#],
        ),
        // Nothing heard within the lock's action timeout: asked once for its state (Zigbee2MQTT
        // `/get`), then, still nothing within the timeout again, `timed_out`, exactly once.
        (
            80 + 60_000,
            Input::Tick,
            vec![r#"publish zigbee2mqtt/front_door/get {"state":""}"#],
        ),
        (80 + 60_001, Input::Tick, vec![]),
        (
            80 + 120_000,
            Input::Tick,
            vec![
                "event device.action_completed front",
                "completed a2 timed_out",
            ],
        ),
        (80 + 120_001, Input::Tick, vec![]),
        // An action for a device this controller does not have does nothing.
        (80 + 120_002, unlock("a3", "nobody"), vec![]),
    ];
    for (i, (t, input, want)) in rows.into_iter().enumerate() {
        let out = hub.handle(input, &ctx(t));
        assert_eq!(effects(&out), want, "row {i} at {t} ms");
    }
    assert_eq!(hub.counters.malformed.load(Ordering::Relaxed), 1);
}

/// A Zigbee lock with a Zigbee door sensor, a Tasmota strike with its board's switch input and
/// a Home Assistant binary sensor on a Shelly strike: each contact as its device speaks.
fn doors_hub() -> Hub {
    let config = parse(
        r#"
[presence]
debounce = "0s"
[access]
entry_grace = "10s"
[[devices]]
id = "lock-z"
type = "lock"
driver = "zigbee2mqtt"
topic = "lock_z"
contact = "contact-z"
held_open_after = "30s"
[[devices]]
id = "contact-z"
type = "contact"
driver = "zigbee2mqtt"
topic = "door_sensor"
[[devices]]
id = "strike-t"
type = "strike"
driver = "tasmota"
topic = "board"
pulse = "3s"
contact = "contact-t"
[[devices]]
id = "contact-t"
type = "contact"
driver = "tasmota"
topic = "board"
switch = 1
[[devices]]
id = "strike-s"
type = "strike"
driver = "shelly"
topic = "shelly1"
pulse = "2s"
contact = "contact-h"
[[devices]]
id = "contact-h"
type = "contact"
driver = "homeassistant"
state_topic = "binary_sensor/door_h/state"
state_open = "open"
state_closed = "closed"
"#,
    );
    Hub::new(config, HashMap::new(), Millis(0))
}

fn door_events(out: &Effects) -> Vec<String> {
    out.events()
        .iter()
        .filter(|e| e.kind().as_str().starts_with("door."))
        .map(|e| {
            let f = e.fields();
            format!(
                "{} {} {} {}",
                e.kind().as_str(),
                e.device.as_ref().map(|d| d.id.as_str()).unwrap_or("-"),
                f["contact_id"].as_str().unwrap_or("-"),
                f["opened_at"].as_str().unwrap_or("-"),
            )
        })
        .collect()
}

#[test]
fn contacts_report_openings_forced_and_held_open_and_a_relock_waits_for_the_close() {
    let mut hub = doors_hub();
    let z = |closed: bool| format!(r#"{{"battery":100,"contact":{closed},"linkquality":87}}"#);
    // First words: what each door is, no news.
    let out = hub.message(
        "zigbee2mqtt/door_sensor",
        z(true).as_bytes(),
        false,
        Millis(0),
    );
    assert!(door_events(&out).is_empty());
    assert!(out
        .0
        .iter()
        .any(|e| matches!(e, Effect::Door(d, r) if d == "lock-z" && r.closed == Some(true))));
    hub.message(
        "stat/board/RESULT",
        br#"{"Switch1":{"Action":"OFF"}}"#,
        false,
        Millis(0),
    );
    hub.message("binary_sensor/door_h/state", b"closed", false, Millis(0));
    // Nobody unlocked: forced, within the second it opened.
    let out = hub.message(
        "zigbee2mqtt/door_sensor",
        z(false).as_bytes(),
        false,
        Millis(1_000),
    );
    assert_eq!(
        door_events(&out),
        [
            "door.opened lock-z contact-z 1970-01-01T00:00:01.000Z",
            "door.forced_open lock-z contact-z 1970-01-01T00:00:01.000Z"
        ]
    );
    // Held open 30 s after opening, once.
    assert_eq!(hub.next_deadline(), Some(Millis(31_000)));
    let out = hub.tick(Millis(31_000));
    assert_eq!(
        door_events(&out),
        ["door.held_open lock-z contact-z 1970-01-01T00:00:01.000Z"]
    );
    assert!(door_events(&hub.tick(Millis(90_000))).is_empty());
    let out = hub.message(
        "zigbee2mqtt/door_sensor",
        z(true).as_bytes(),
        false,
        Millis(95_000),
    );
    assert_eq!(
        door_events(&out),
        ["door.closed lock-z contact-z 1970-01-01T00:00:01.000Z"]
    );

    // A Tasmota strike unlocked: its board's switch opening within pulse + grace is not forced
    // (SENSOR's plain form), later it is (RESULT's form); a TOGGLE is no state.
    let unlock = |id: &str, device: &str, duration_s| Request {
        action_id: id.into(),
        device: device.into(),
        command: Command::Unlock,
        source: actions::Source::Zencore,
        booking_id: None,
        grant_id: None,
        duration_s,
    };
    hub.request(unlock("t1", "strike-t", None), Millis(100_000));
    let out = hub.message(
        "tele/board/SENSOR",
        br#"{"Time":"2026-12-04T10:00:00","Switch1":"ON"}"#,
        false,
        Millis(112_999),
    );
    assert_eq!(
        door_events(&out),
        ["door.opened strike-t contact-t 1970-01-01T00:01:52.999Z"]
    );
    hub.message(
        "stat/board/RESULT",
        br#"{"Switch1":{"Action":"OFF"}}"#,
        false,
        Millis(114_000),
    );
    let out = hub.message(
        "stat/board/RESULT",
        br#"{"Switch1":{"Action":"ON"}}"#,
        false,
        Millis(114_000),
    );
    assert_eq!(door_events(&out).len(), 2, "{:?}", door_events(&out));
    let before = hub.counters.malformed.load(Ordering::Relaxed);
    let out = hub.message(
        "stat/board/RESULT",
        br#"{"Switch1":{"Action":"TOGGLE"}}"#,
        false,
        Millis(115_000),
    );
    assert!(door_events(&out).is_empty());
    assert_eq!(hub.counters.malformed.load(Ordering::Relaxed), before + 1);
    // Another switch, a relay's RESULT: nothing about this contact.
    for payload in [&br#"{"Switch2":"ON"}"#[..], br#"{"POWER":"ON"}"#] {
        assert!(
            door_events(&hub.message("stat/board/RESULT", payload, false, Millis(115_000)))
                .is_empty()
        );
    }

    // A Zigbee lock unlocked for 5 s while the door is open: its relock waits for the close.
    hub.request(unlock("z1", "lock-z", Some(5)), Millis(200_000));
    hub.message(
        "zigbee2mqtt/lock_z",
        br#"{"lock_state":"unlocked"}"#,
        false,
        Millis(200_100),
    );
    let out = hub.message(
        "zigbee2mqtt/door_sensor",
        z(false).as_bytes(),
        false,
        Millis(201_000),
    );
    assert_eq!(
        door_events(&out),
        ["door.opened lock-z contact-z 1970-01-01T00:03:21.000Z"]
    );
    let out = hub.tick(Millis(205_100));
    assert!(
        out.publish().is_empty(),
        "relocked an open door: {:?}",
        effects(&out)
    );
    assert_eq!(
        hub.views()
            .iter()
            .find(|v| v.id == "lock-z")
            .and_then(|v| v.door.clone())
            .as_deref(),
        Some("open")
    );
    let out = hub.message(
        "zigbee2mqtt/door_sensor",
        z(true).as_bytes(),
        false,
        Millis(209_000),
    );
    assert_eq!(
        door_events(&out),
        ["door.closed lock-z contact-z 1970-01-01T00:03:21.000Z"]
    );
    assert_eq!(out.publish()[0].topic, "zigbee2mqtt/lock_z/set");
    assert_eq!(out.publish()[0].payload, br#"{"state":"LOCK"}"#);

    // Home Assistant's binary sensor with its own states; garbage is counted, never a state.
    let out = hub.message(
        "binary_sensor/door_h/state",
        b"open",
        false,
        Millis(300_000),
    );
    assert_eq!(door_events(&out).len(), 2);
    let before = hub.counters.malformed.load(Ordering::Relaxed);
    let out = hub.message(
        "binary_sensor/door_h/state",
        b"ajar\x00",
        false,
        Millis(300_001),
    );
    assert!(door_events(&out).is_empty());
    assert_eq!(hub.counters.malformed.load(Ordering::Relaxed), before + 1);
    assert_eq!(
        hub.views()
            .iter()
            .find(|v| v.id == "contact-h")
            .and_then(|v| v.door.clone())
            .as_deref(),
        Some("open")
    );
}

#[test]
fn a_lockdown_locks_every_door_denies_every_credential_uncompared_and_ends_when_lifted() {
    let mut hub = panel_hub();
    let t = 1_000_000;
    let lockdown = crate::wire::Lockdown {
        lockdown_id: "ld-1".into(),
        meeting_space_id: None,
        reason: Some("fire drill".into()),
        since: Millis(t),
    };
    let out = hub.at(Input::Lockdown(lockdown), Millis(t));
    assert_eq!(
        out.publish()
            .iter()
            .map(|p| (
                p.topic.as_str(),
                String::from_utf8_lossy(&p.payload).to_string()
            ))
            .filter(|(topic, _)| !topic.ends_with("/display"))
            .collect::<Vec<_>>(),
        [(
            "zigbee2mqtt/front_door/set",
            r#"{"state":"LOCK"}"#.to_owned()
        )]
    );
    let display = shown(&out).expect("the panel shows the lockdown");
    assert_eq!(display["state"], "lockdown");
    assert_eq!(display["message"], "fire drill");
    // The right PIN is denied as `lockdown` (the panel hears only `denied`), and however many
    // are tried, none is compared, so no lockout begins.
    for i in 0..10 {
        let (out, fb) = pin(&mut hub, "4711", t + 1_000 + i);
        assert_eq!(
            (fb["result"].as_str(), fb["reason"].as_str()),
            (Some("denied"), Some("denied"))
        );
        assert_eq!(names(&out), ["access.denied panel lockdown"]);
        assert_eq!(out.audit()[0].reason.as_deref(), Some("lockdown"));
        assert!(out.lockouts().is_empty());
        assert!(!out.publish().iter().any(|p| p.topic.contains("front_door")));
    }
    // ZenCore's own unlock (an administrator's override) still opens.
    let out = hub.request(
        Request {
            action_id: "override".into(),
            device: "front".into(),
            command: Command::Unlock,
            source: actions::Source::Zencore,
            booking_id: Some("b".into()),
            grant_id: None,
            duration_s: None,
        },
        Millis(t + 2_000),
    );
    assert_eq!(out.publish()[0].payload, br#"{"state":"UNLOCK"}"#);
    // Lifted: the panel shows the schedule again and the PIN opens.
    let out = hub.at(Input::LockdownLifted("ld-1".into()), Millis(t + 3_000));
    assert_eq!(shown(&out).expect("display")["state"], "available");
    let (_, fb) = pin(&mut hub, "4711", t + 4_000);
    assert_eq!(fb["result"], "granted");
    // A lockdown of another room leaves this one alone.
    let other = crate::wire::Lockdown {
        lockdown_id: "ld-2".into(),
        meeting_space_id: Some("elsewhere".into()),
        reason: None,
        since: Millis(t),
    };
    let out = hub.at(Input::Lockdown(other), Millis(t + 5_000));
    assert!(out.publish().is_empty(), "{:?}", effects(&out));
    assert_eq!(pin(&mut hub, "4711", t + 6_000).1["result"], "granted");
}

#[test]
fn passage_holds_the_room_s_doors_from_check_in_to_the_end_and_yields_to_a_lockdown() {
    let config = parse(
        r#"
[presence]
debounce = "0s"
[[devices]]
id = "panel"
type = "panel"
driver = "zenedge-panel"
[[devices]]
id = "relay"
type = "strike"
driver = "tasmota"
topic = "board"
[[devices]]
id = "side"
type = "strike"
driver = "shelly"
topic = "shelly1"
pulse = "3s"
"#,
    );
    let mut hub = Hub::new(config, HashMap::new(), Millis(0));
    let min = 60_000;
    let start = 10 * min;
    hub.set_booking(
        crate::schedule::Booking {
            booking_id: "b".into(),
            meeting_space_id: "ms".into(),
            start: Millis(start),
            end: Millis(start + 60 * min),
            title: None,
            closed: None,
            started: None,
            unlock_during_meeting: Some(true),
        },
        Millis(start - 5 * min),
    );
    let passage = |out: &Effects| -> Vec<String> {
        out.events()
            .iter()
            .filter(|e| e.kind().as_str() == "access.passage")
            .map(|e| {
                format!(
                    "{} {} {}",
                    e.device.as_ref().map(|d| d.id.as_str()).unwrap_or("-"),
                    e.fields()["state"].as_str().unwrap_or("-"),
                    e.fields()["booking_id"].as_str().unwrap_or("-")
                )
            })
            .collect()
    };
    let sent = |out: &Effects| -> Vec<String> {
        out.publish()
            .iter()
            // (A Zigbee lock that never answered here is asked for its state: no command.)
            .filter(|p| !p.topic.contains("/panels/") && !p.topic.ends_with("/get"))
            .map(|p| format!("{} {}", p.topic, String::from_utf8_lossy(&p.payload)))
            .collect()
    };
    // Check-in (a minute early): the Zigbee lock and the Shelly are held; the Tasmota relay
    // keeps its own PulseTime and cannot be.
    let out = hub.message(
        "zenedge/edge-1/panels/panel/action",
        br#"{"action":"check_in","booking_id":"b","request_id":"r1"}"#,
        false,
        Millis(start - min),
    );
    assert_eq!(passage(&out), ["side unlocked b", "front unlocked b"]);
    assert_eq!(
        sent(&out),
        [
            r#"shelly1/rpc {"id":1,"src":"zenedge-edge-1","method":"Switch.Set","params":{"id":0,"on":true}}"#.to_owned(),
            r#"zigbee2mqtt/front_door/set {"state":"UNLOCK"}"#.to_owned(),
        ]
    );
    assert!(out
        .0
        .iter()
        .any(|e| matches!(e, Effect::Passage(d, Some(_)) if d == "front")));
    // During the meeting: no relock, even of a ZenCore unlock with `duration_s` (it holds).
    let out = hub.request(
        Request {
            action_id: "z".into(),
            device: "side".into(),
            command: Command::Unlock,
            source: actions::Source::Zencore,
            booking_id: None,
            grant_id: None,
            duration_s: Some(5),
        },
        Millis(start + min),
    );
    assert!(!sent(&out)[0].contains("toggle_after"), "{:?}", sent(&out));
    for m in [2, 20, 40] {
        let out = hub.tick(Millis(start + m * min));
        assert!(sent(&out).is_empty(), "{:?}", sent(&out));
    }
    // A lockdown locks at once, with its own source; lifted, passage resumes.
    let lockdown = crate::wire::Lockdown {
        lockdown_id: "ld".into(),
        meeting_space_id: Some("ms".into()),
        reason: None,
        since: Millis(start + 41 * min),
    };
    let out = hub.at(Input::Lockdown(lockdown), Millis(start + 41 * min));
    assert_eq!(passage(&out), ["side locked b", "front locked b"]);
    assert_eq!(sent(&out).len(), 3, "{:?}", sent(&out));
    let out = hub.at(Input::LockdownLifted("ld".into()), Millis(start + 42 * min));
    assert_eq!(passage(&out), ["side unlocked b", "front unlocked b"]);
    // The Shelly drops off and comes back (a power cut resets its relay): held again, no new
    // passage event.
    hub.message("shelly1/online", b"false", false, Millis(start + 43 * min));
    let out = hub.message("shelly1/online", b"true", false, Millis(start + 44 * min));
    assert!(passage(&out).is_empty());
    assert_eq!(
        sent(&out),
        [
            r#"shelly1/rpc {"id":1,"src":"zenedge-edge-1","method":"Switch.Set","params":{"id":0,"on":true}}"#
        ]
    );
    // The end: both locked (no contact to wait for), each change one event.
    let out = hub.tick(Millis(start + 60 * min));
    assert_eq!(passage(&out), ["side locked b", "front locked b"]);
    assert_eq!(
        sent(&out),
        [
            r#"shelly1/rpc {"id":1,"src":"zenedge-edge-1","method":"Switch.Set","params":{"id":0,"on":false}}"#.to_owned(),
            r#"zigbee2mqtt/front_door/set {"state":"LOCK"}"#.to_owned(),
        ]
    );
    assert!(passage(&hub.tick(Millis(start + 61 * min))).is_empty());
}
