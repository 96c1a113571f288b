//! Drivers as installers really have them (DESIGN section 3), end to end: the real binary and a
//! real mosquitto, each device simulated as its firmware speaks — a Tasmota board's second
//! relay, a Nuki lock through Home Assistant–style topics with numeric states, a Shelly Plus 1
//! answering Gen2 RPC, and two Zigbee2MQTT networks on one broker.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{device_events, rig, Peer, Rig};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

const ROOM: &str = r#"
[presence]
debounce = "0s"

[[devices]]
id = "strike-left"
type = "strike"
driver = "tasmota"
topic = "board"

[[devices]]
id = "strike-right"
type = "strike"
driver = "tasmota"
topic = "board"
relay = 2

[[devices]]
id = "nuki"
type = "lock"
driver = "homeassistant"
state_topic = "nuki/398172f4/state"
command_topic = "nuki/398172f4/lockAction"
availability_topic = "nuki/398172f4/connected"
value_json = "state"
state_locked = "1"
state_unlocking = "2"
state_unlocked = "3"
state_locking = "4"
state_jammed = "254"
payload_unlock = "1"
payload_lock = "2"
payload_open = "3"
payload_available = "true"
payload_not_available = "false"

[[devices]]
id = "strike-shelly"
type = "strike"
driver = "shelly"
topic = "shellyplus1-a8032ab12345"
pulse = "3s"

[[devices]]
id = "front"
type = "lock"
driver = "zigbee2mqtt"
topic = "front_door"

[[devices]]
id = "upstairs"
type = "lock"
driver = "zigbee2mqtt"
topic = "upstairs_door"
base = "z2m-floor2"
action_timeout = "2s"
"#;

/// A Zigbee lock that demands its PIN code for remote operation and never echoes its state
/// after a command: only Zigbee2MQTT's `/get` makes it tell.
const QUIET_LOCK: &str = r#"
[[devices]]
id = "quiet"
type = "lock"
driver = "zigbee2mqtt"
topic = "quiet_door"
action_timeout = "1s"
pin_code_file = "PIN_FILE"
"#;

/// A two-relay Tasmota board: `cmnd/board/POWER<N>` switches relay N and reports it as Tasmota
/// does (RESULT and stat/…/POWER<N>; relay 1 is plain `POWER`).
async fn tasmota_board(port: u16) -> Arc<Mutex<Vec<String>>> {
    let mut peer = Peer::connect(port, "sim-board").await;
    peer.subscribe("cmnd/board/+").await;
    peer.publish("tele/board/LWT", "Online", true).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (topic, payload, _) = peer.next(Duration::from_secs(3600)).await;
            let name = topic.rsplit('/').next().unwrap_or("").to_owned();
            let word = String::from_utf8_lossy(&payload).to_string();
            // A PulseTime query: relay 1 pulses 5 s, relay 2 was left at 0 (stays on).
            if let Some(relay) = name.strip_prefix("PulseTime") {
                let set = if relay == "1" { 50 } else { 0 };
                peer.publish(
                    "stat/board/RESULT",
                    json!({ &name: {"Set": set, "Remaining": 0} }).to_string(),
                    false,
                )
                .await;
                continue;
            }
            record.lock().unwrap().push(format!("{name} {word}"));
            peer.publish(
                "stat/board/RESULT",
                json!({ &name: word }).to_string(),
                false,
            )
            .await;
            peer.publish(&format!("stat/board/{name}"), word, false)
                .await;
        }
    });
    seen
}

/// A Nuki Smart Lock behind its MQTT API, as the Home Assistant topics carry it: lock actions
/// `1` unlock, `2` lock, `3` unlatch; state `{"state":N}` (1 locked, 3 unlocked, 5 unlatched).
async fn nuki(port: u16) -> Arc<Mutex<Vec<String>>> {
    let mut peer = Peer::connect(port, "sim-nuki").await;
    peer.subscribe("nuki/398172f4/lockAction").await;
    peer.publish("nuki/398172f4/connected", "true", true).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (_, payload, _) = peer.next(Duration::from_secs(3600)).await;
            let action = String::from_utf8_lossy(&payload).to_string();
            record.lock().unwrap().push(action.clone());
            let state = match action.as_str() {
                "2" => 1,
                _ => 3,
            };
            // Unlocking first (state 2), then the final state, with other attributes.
            peer.publish("nuki/398172f4/state", r#"{"state":2}"#, false)
                .await;
            peer.publish(
                "nuki/398172f4/state",
                json!({"state": state, "batteryCritical": false}).to_string(),
                false,
            )
            .await;
        }
    });
    seen
}

/// A Shelly Plus 1 on MQTT (Gen2 API): RPC on `<id>/rpc`, the answer to `<src>/rpc`, the
/// switch's status on `<id>/status/switch:0`, `<id>/online` as its Last Will.
async fn shelly(port: u16) -> Arc<Mutex<Vec<Value>>> {
    let id = "shellyplus1-a8032ab12345";
    let mut peer = Peer::connect(port, "sim-shelly").await;
    peer.subscribe(&format!("{id}/rpc")).await;
    peer.publish(&format!("{id}/online"), "true", true).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (_, payload, _) = peer.next(Duration::from_secs(3600)).await;
            let request: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
            record.lock().unwrap().push(request.clone());
            let src = request["src"].as_str().unwrap_or("nobody").to_owned();
            let on = request["params"]["on"] == true;
            peer.publish(
                &format!("{src}/rpc"),
                json!({"id": request["id"], "src": id, "dst": src,
                       "result": {"was_on": !on}})
                .to_string(),
                false,
            )
            .await;
            peer.publish(
                &format!("{id}/status/switch:0"),
                json!({"id": 0, "source": "MQTT", "output": on, "apower": 0.0,
                       "temperature": {"tC": 41.2, "tF": 106.2}})
                .to_string(),
                false,
            )
            .await;
        }
    });
    seen
}

/// The quiet lock: unlocks only with the code `4321`, reports its state only when asked.
async fn quiet_lock(port: u16) -> Arc<Mutex<Vec<Value>>> {
    let mut peer = Peer::connect(port, "sim-quiet").await;
    peer.subscribe("zigbee2mqtt/quiet_door/set").await;
    peer.subscribe("zigbee2mqtt/quiet_door/get").await;
    peer.publish(
        "zigbee2mqtt/quiet_door/availability",
        r#"{"state":"online"}"#,
        true,
    )
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut state = "locked";
        loop {
            let (topic, payload, _) = peer.next(Duration::from_secs(3600)).await;
            let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
            record
                .lock()
                .unwrap()
                .push(json!({"topic": topic, "payload": v}));
            if topic.ends_with("/set") {
                if v["state"] == "UNLOCK" && v["code"] == "4321" {
                    state = "unlocked";
                }
            } else {
                peer.publish(
                    "zigbee2mqtt/quiet_door",
                    json!({ "lock_state": state }).to_string(),
                    false,
                )
                .await;
            }
        }
    });
    seen
}

/// A Zigbee lock on `base` that echoes its state after a command.
async fn zigbee_lock(port: u16, base: &str, topic: &str) {
    let mut peer = Peer::connect(port, &format!("sim-{base}-{topic}")).await;
    peer.subscribe(&format!("{base}/{topic}/set")).await;
    peer.publish(
        &format!("{base}/{topic}/availability"),
        r#"{"state":"online"}"#,
        true,
    )
    .await;
    peer.publish(
        &format!("{base}/bridge/state"),
        r#"{"state":"online"}"#,
        true,
    )
    .await;
    let (base, topic) = (base.to_owned(), topic.to_owned());
    tokio::spawn(async move {
        loop {
            let (_, payload, _) = peer.next(Duration::from_secs(3600)).await;
            let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
            let state = if v["state"] == "UNLOCK" {
                "unlocked"
            } else {
                "locked"
            };
            peer.publish(
                &format!("{base}/{topic}"),
                json!({"lock_state": state}).to_string(),
                false,
            )
            .await;
        }
    });
}

async fn unlock_succeeds(r: &Rig, device: &str) {
    let (code, out, err) = r.cli(&["unlock", device]).await;
    assert_eq!(code, 0, "unlock {device}: {out}{err}");
    r.rx.wait_until(WAIT, &format!("{device} unlocked"), |log| {
        device_events(log, device)
            .iter()
            .any(|e| e.0 == "device.action_completed" && e.1 == "succeeded")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zigbee_lock_that_wants_its_code_and_only_answers_get_is_reported_as_it_is() {
    let secrets = tempfile::tempdir().unwrap();
    let pin = secrets.path().join("quiet.pin");
    std::fs::write(&pin, "4321\n").unwrap();
    std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let devices = format!(
        "[presence]\ndebounce = \"0s\"\n{}",
        QUIET_LOCK.replace("PIN_FILE", &pin.display().to_string())
    );
    let r = rig(&devices).await;
    let seen = quiet_lock(r.broker.port).await;
    r.wait_event("quiet", "device.online", "availability").await;
    unlock_succeeds(&r, "quiet").await;
    let seen = seen.lock().unwrap().clone();
    let set = seen
        .iter()
        .find(|m| m["topic"] == "zigbee2mqtt/quiet_door/set")
        .expect("the unlock");
    assert_eq!(set["payload"], json!({"state": "UNLOCK", "code": "4321"}));
    assert!(
        seen.iter()
            .any(|m| m["topic"] == "zigbee2mqtt/quiet_door/get"
                && m["payload"] == json!({"state": ""})),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_and_locks_as_installers_wire_them_open_their_own_doors() {
    let r = rig(ROOM).await;
    let port = r.broker.port;
    let board = tasmota_board(port).await;
    let nuki_actions = nuki(port).await;
    let shelly_requests = shelly(port).await;
    zigbee_lock(port, "zigbee2mqtt", "front_door").await;
    zigbee_lock(port, "z2m-floor2", "upstairs_door").await;
    // Online, each by its own availability message (a Last Will saying online is reported as
    // `availability`, DESIGN §3).
    for device in [
        "strike-left",
        "strike-right",
        "nuki",
        "strike-shelly",
        "front",
        "upstairs",
    ] {
        r.wait_event(device, "device.online", "availability").await;
    }

    // Its PulseTime was asked at connect: relay 2's is 0, and the operator is told.
    let status = r
        .daemon
        .wait_status("the PulseTime warning", |s| {
            s["warnings"].as_array().is_some_and(|w| !w.is_empty())
        })
        .await;
    let warnings = status["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("strike-right: PulseTime2 is 0"),
        "{warnings:?}"
    );
    let (_, out, _) = r.cli(&["status"]).await;
    assert!(
        out.contains("WARNING      strike-right: PulseTime2 is 0"),
        "{out}"
    );
    let (code, out, _) = r.cli(&["doctor"]).await;
    assert_ne!(code, 0);
    assert!(out.contains("strike-right: PulseTime2 is 0"), "{out}");

    // The second relay of the board: POWER2 only.
    unlock_succeeds(&r, "strike-right").await;
    assert_eq!(*board.lock().unwrap(), vec!["POWER2 ON".to_string()]);
    assert!(device_events(&r.rx.requests(), "strike-left")
        .iter()
        .all(|e| e.0 != "device.action_completed"));

    // The Nuki: the unlatch payload, its numeric states through value_json.
    unlock_succeeds(&r, "nuki").await;
    assert_eq!(*nuki_actions.lock().unwrap(), vec!["3".to_string()]);

    // The Shelly: one Switch.Set with the pulse as toggle_after, answered and confirmed.
    unlock_succeeds(&r, "strike-shelly").await;
    let requests = shelly_requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0]["method"], "Switch.Set");
    assert_eq!(requests[0]["src"], "zenedge-edge-test");
    assert_eq!(
        requests[0]["params"],
        json!({"id": 0, "on": true, "toggle_after": 3.0})
    );

    // Two Zigbee networks: each lock through its own base.
    unlock_succeeds(&r, "upstairs").await;
    unlock_succeeds(&r, "front").await;

    // The second network's bridge goes offline and does not answer its health check: only
    // its own lock goes offline.
    let bridge = Peer::connect(port, "z2m-floor2-bridge").await;
    bridge
        .publish("z2m-floor2/bridge/state", r#"{"state":"offline"}"#, true)
        .await;
    r.wait_event("upstairs", "device.offline", "bridge_offline")
        .await;
    assert!(
        device_events(&r.rx.requests(), "front")
            .iter()
            .all(|e| e.0 != "device.offline"),
        "the other network's lock went offline too"
    );
}
