//! MQTT devices end to end: a real mosquitto, simulated devices publishing the exact payloads
//! of DESIGN section 3, the real binary, and a loopback ZenCore that checks signatures.

mod common;

use std::time::{Duration, Instant};

use common::{client, device_events, rig, Broker, Daemon, Peer, Receiver, Reply, SECRET};

const WAIT: Duration = Duration::from_secs(30);

const DEVICES: &str = r#"
[presence]
debounce = "0s"

[[devices]]
id = "front"
type = "lock"
driver = "zigbee2mqtt"
topic = "front_door"
action_timeout = "3s"

[[devices]]
id = "strike"
type = "strike"
driver = "tasmota"
topic = "strike_1"
action_timeout = "3s"

[[devices]]
id = "back"
type = "lock"
driver = "homeassistant"
state_topic = "home/back/state"
command_topic = "home/back/set"
availability_topic = "home/back/availability"
action_timeout = "3s"

[[devices]]
id = "panel"
type = "panel"
driver = "zenedge-panel"
"#;

/// A simulated device: answers each command on `command_topic` with what `answer` returns.
fn simulate(
    mut peer: Peer,
    answer: impl Fn(&[u8]) -> Vec<(String, Vec<u8>)> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (_, payload, retained) = peer.next(Duration::from_secs(3600)).await;
            assert!(!retained, "commands are never retained");
            for (topic, reply) in answer(&payload) {
                peer.publish(&topic, reply, false).await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_driver_online_offline_and_actions_arrive_as_signed_webhooks() {
    let r = rig(DEVICES).await;
    let port = r.broker.port;

    // Simulated Zigbee lock, Tasmota strike and Home Assistant lock that obey commands.
    let mut z2m = Peer::connect(port, "sim-z2m").await;
    z2m.subscribe("zigbee2mqtt/front_door/set").await;
    let z2m_pub = Peer::connect(port, "sim-z2m-pub").await;
    z2m_pub
        .publish(
            "zigbee2mqtt/front_door/availability",
            r#"{"state":"online"}"#,
            true,
        )
        .await;
    let _z = simulate(z2m, |cmd| {
        let v: serde_json::Value = serde_json::from_slice(cmd).unwrap();
        let state = if v["state"] == "UNLOCK" {
            "unlocked"
        } else {
            "locked"
        };
        vec![(
            "zigbee2mqtt/front_door".into(),
            format!(
                r#"{{"battery":90,"lock_state":"{state}","state":"{}"}}"#,
                v["state"].as_str().unwrap()
            )
            .into_bytes(),
        )]
    });
    let mut tas = Peer::connect(port, "sim-tasmota").await;
    tas.subscribe("cmnd/strike_1/POWER").await;
    tas.publish("tele/strike_1/LWT", "Online", true).await;
    let _t = simulate(tas, |cmd| {
        let p = String::from_utf8_lossy(cmd).to_string();
        vec![
            (
                "stat/strike_1/RESULT".into(),
                format!(r#"{{"POWER":"{p}"}}"#).into_bytes(),
            ),
            ("stat/strike_1/POWER".into(), p.into_bytes()),
        ]
    });
    let mut ha = Peer::connect(port, "sim-ha").await;
    ha.subscribe("home/back/set").await;
    ha.publish("home/back/availability", "online", true).await;
    let _h = simulate(ha, |cmd| match cmd {
        b"UNLOCK" => vec![("home/back/state".into(), b"UNLOCKED".to_vec())],
        // This lock jams when asked to lock.
        _ => vec![("home/back/state".into(), b"JAMMED".to_vec())],
    });
    let panel = Peer::connect(port, "sim-panel").await;
    panel
        .publish("zenedge/edge-test/panels/panel/status", "online", true)
        .await;

    for d in ["front", "strike", "back", "panel"] {
        r.wait_event(d, "device.online", "availability").await;
    }

    // Operator unlocks through the CLI; each ends as device.action_completed.
    for d in ["front", "strike", "back"] {
        let (code, out, err) = r.cli(&["unlock", d]).await;
        assert_eq!(code, 0, "unlock {d}: {out} {err}");
        assert!(out.contains("succeeded"), "{out}");
        r.wait_event(d, "device.action_completed", "succeeded")
            .await;
    }
    let (code, out, _) = r.cli(&["lock", "back"]).await;
    assert_eq!(code, 1, "a jam is a negative answer: {out}");
    assert!(out.contains("failed (jammed)"), "{out}");
    r.wait_event("back", "device.action_completed", "failed")
        .await;

    // The action event carries what ZenCore needs.
    let log = r.rx.requests();
    let done = log
        .iter()
        .map(|x| x.json())
        .find(|j| j["event"] == "device.action_completed" && j["data"]["device_id"] == "front")
        .unwrap();
    let data = &done["data"];
    assert_eq!(data["action"], "unlock");
    assert_eq!(data["source"], "operator");
    assert!(data["action_id"].as_str().unwrap().starts_with("act_"));
    assert!(data["duration_ms"].as_u64().is_some());
    assert!(data["requested_at"].as_str().is_some() && data["completed_at"].as_str().is_some());
    assert_eq!(data["device_type"], "lock");

    // `zenedge devices` shows them.
    let (code, out, _) = r.cli(&["devices"]).await;
    assert_eq!(code, 0);
    for d in ["front", "strike", "back", "panel"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(d) && l.contains("online")),
            "{out}"
        );
    }

    // Offline paths, one per driver.
    z2m_pub
        .publish("zigbee2mqtt/front_door/availability", "offline", true)
        .await;
    r.wait_event("front", "device.offline", "availability")
        .await;
    let t2 = Peer::connect(port, "sim-tasmota-2").await;
    t2.publish("tele/strike_1/LWT", "Offline", true).await;
    r.wait_event("strike", "device.offline", "lwt").await;
    t2.publish("home/back/availability", "offline", true).await;
    r.wait_event("back", "device.offline", "availability").await;
    panel
        .publish("zenedge/edge-test/panels/panel/status", "offline", true)
        .await;
    r.wait_event("panel", "device.offline", "lwt").await;

    // An offline device fails an unlock at once.
    let (code, out, _) = r.cli(&["unlock", "strike"]).await;
    assert_eq!(code, 1);
    assert!(out.contains("device_offline"), "{out}");

    // Bridge offline takes the Zigbee lock offline again after it came back.
    z2m_pub
        .publish("zigbee2mqtt/front_door/availability", "online", true)
        .await;
    let online_twice = |r: &[common::Recorded]| {
        device_events(r, "front")
            .iter()
            .filter(|e| e.0 == "device.online")
            .count()
            == 2
    };
    r.rx.wait_until(WAIT, "front online again", online_twice)
        .await;
    z2m_pub
        .publish("zigbee2mqtt/bridge/state", r#"{"state":"offline"}"#, true)
        .await;
    r.wait_event("front", "device.offline", "bridge_offline")
        .await;

    assert!(r.rx.requests().iter().all(|x| x.signatures_verify(SECRET)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_unlock_times_out() {
    let r = rig(DEVICES).await;
    let p = Peer::connect(r.broker.port, "quiet").await;
    p.publish("tele/strike_1/LWT", "Online", true).await;
    r.wait_event("strike", "device.online", "availability")
        .await;
    let (code, out, _) = r.cli(&["unlock", "strike"]).await;
    assert_eq!(code, 1);
    assert!(out.contains("timed_out"), "{out}");
    r.wait_event("strike", "device.action_completed", "timed_out")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_restarting_is_survived_with_backoff_and_resubscription() {
    let mut r = rig(DEVICES).await;
    let p = Peer::connect(r.broker.port, "dev").await;
    p.publish("tele/strike_1/LWT", "Online", true).await;
    r.wait_event("strike", "device.online", "availability")
        .await;
    drop(p);

    r.broker.kill();
    // Not ready while the link is down, devices unknown rather than their last state, and the
    // status says since when.
    let health = || async {
        let r = client()
            .get(format!("http://{}/healthz", r.daemon.admin))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    r.daemon
        .wait_status("MQTT down", |s| s["mqtt"]["connected"] == false)
        .await;
    let (code, body) = health().await;
    assert_eq!(
        (code, body["status"].as_str()),
        (503, Some("mqtt")),
        "{body}"
    );
    let (code, out, _) = r.cli(&["devices"]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("strike ") && l.contains("unknown")),
        "{out}"
    );
    let (_, out, _) = r.cli(&["status"]).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("mqtt") && l.contains("DOWN since")),
        "{out}"
    );
    let attempts = |s: &serde_json::Value| s["mqtt"]["connect_attempts"].as_u64().unwrap();
    let down = Instant::now();
    let (_, s0) = r.daemon.get("/v1/status").await;
    let first = attempts(&s0);
    // Wait for four more connection attempts.
    let deadline = Instant::now() + WAIT;
    let mut last;
    loop {
        let (_, s) = r.daemon.get("/v1/status").await;
        last = attempts(&s);
        if last >= first + 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnect attempts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Backoff starts at 200 ms (jittered to at least half) and doubles: four attempts take at
    // least 100 + 200 + 400 ms. A tight loop would make thousands in that time.
    assert!(
        down.elapsed() >= Duration::from_millis(700),
        "{} attempts in {:?}",
        last - first,
        down.elapsed()
    );

    r.broker.restart().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, s) = r.daemon.get("/v1/status").await;
        if s["mqtt"]["subscribed"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "never resubscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health().await.0, 200);
    let (_, out, _) = r.cli(&["status"]).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("mqtt") && l.contains("connected and subscribed since")),
        "{out}"
    );
    // Resubscribed: a change after the restart is seen.
    let p = Peer::connect(r.broker.port, "dev2").await;
    p.publish("tele/strike_1/LWT", "Offline", true).await;
    r.wait_event("strike", "device.offline", "lwt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_faster_than_the_debounce_sends_nothing_and_a_real_outage_one_offline() {
    let devices = DEVICES.replace("debounce = \"0s\"", "debounce = \"1s\"");
    let r = rig(&devices).await;
    let p = Peer::connect(r.broker.port, "flappy").await;
    p.publish("home/back/availability", "online", true).await;
    r.wait_event("back", "device.online", "availability").await;
    for _ in 0..10 {
        p.publish("home/back/availability", "offline", true).await;
        p.publish("home/back/availability", "online", true).await;
    }
    p.publish("home/back/availability", "offline", true).await;
    r.wait_event("back", "device.offline", "availability").await;
    // Another device's event after the debounce, as a marker that everything before is in.
    p.publish("tele/strike_1/LWT", "Online", true).await;
    r.wait_event("strike", "device.online", "availability")
        .await;
    assert_eq!(
        device_events(&r.rx.requests(), "back"),
        vec![
            ("device.online".to_string(), "availability".to_string()),
            ("device.offline".to_string(), "availability".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_topic_is_counted_and_harms_nothing() {
    let r = rig(DEVICES).await;
    let p = Peer::connect(r.broker.port, "vandal").await;
    let topics = [
        "zigbee2mqtt/front_door",
        "zigbee2mqtt/front_door/availability",
        "zigbee2mqtt/bridge/state",
        "tele/strike_1/LWT",
        "stat/strike_1/RESULT",
        "stat/strike_1/POWER",
        "home/back/state",
        "home/back/availability",
        "zenedge/edge-test/panels/panel/status",
        "zenedge/edge-test/panels/panel/credential",
        "zenedge/edge-test/panels/panel/action",
    ];
    let huge = vec![b'x'; 200 * 1024];
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xff, 0x00, 0xfe],
        br#"{"lock_state":"#.to_vec(),
        br#"{"lock_state":42,"state":[1]}"#.to_vec(),
        b"[]".to_vec(),
        huge,
        // Text that would forge a log line and recolour the terminal, were it logged raw.
        br#"{"action":"x\u001b[32m\r\nINFO Door locked.","lock_state":"\u001b[2J"}"#.to_vec(),
    ];
    for t in topics {
        for g in &garbage {
            p.publish(t, g.clone(), false).await;
        }
    }
    // Garbage never says "online" or "offline", so the Home Assistant lock (whose topics
    // take plain words only) is still unknown; a valid message afterwards still works.
    p.publish("home/back/availability", "online", false).await;
    r.wait_event("back", "device.online", "availability").await;
    assert!(device_events(&r.rx.requests(), "back").len() == 1);
    let (code, status) = r.daemon.get("/v1/status").await;
    assert_eq!(code, 200);
    let malformed = status["mqtt"]["malformed"].as_u64().unwrap();
    // JSON objects with unknown keys on Tasmota RESULT and panel topics are valid messages
    // (alive, nothing we use); everything else here is counted.
    assert!(malformed >= 40, "malformed counted: {malformed}");
    let (code, _) = r.daemon.get("/healthz").await;
    assert_eq!(code, 200);
    // The hostile text reached the log only escaped: no raw ESC or CR, no forged line.
    let log = std::fs::read_to_string(r.config.with_extension("log")).unwrap();
    assert!(
        log.contains("x\\u{1b}[32m\\r\\nINFO Door locked."),
        "the action name is logged, escaped: {log}"
    );
    assert!(!log.contains('\u{1b}') && !log.contains('\r'), "{log:?}");
    assert!(
        !log.lines().any(|l| l.starts_with("INFO Door locked")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_a_device_message_loses_nothing() {
    let mut r = rig(DEVICES).await;
    let p = Peer::connect(r.broker.port, "dev").await;
    for round in 0..5 {
        let word = if round % 2 == 0 { "online" } else { "offline" };
        // Not retained: only the persistent session's redelivery or the outbox can carry it.
        p.publish("home/back/availability", word, false).await;
        r.restart().await;
        let want = round + 1;
        r.rx.wait_until(WAIT, &format!("event {want} of back"), |log| {
            device_events(log, "back").len() >= want
        })
        .await;
    }
    let events = device_events(&r.rx.requests(), "back");
    let kinds: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "device.online",
            "device.offline",
            "device.online",
            "device.offline",
            "device.online"
        ],
        "every transition once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zenedge_announces_itself_online_and_offline_on_clean_stop_and_crash() {
    let mut r = rig(DEVICES).await;
    let mut watcher = Peer::connect(r.broker.port, "watcher").await;
    watcher.subscribe("zenedge/edge-test/status").await;
    let (topic, payload, retained) = watcher.next(WAIT).await;
    assert_eq!(
        (topic.as_str(), payload.as_slice(), retained),
        ("zenedge/edge-test/status", &b"online"[..], true)
    );

    // A clean stop says offline itself.
    assert_eq!(r.daemon.sigterm().code(), Some(0));
    let (_, payload, _) = watcher.next(WAIT).await;
    assert_eq!(payload, b"offline");

    // A crash leaves it to the Last Will.
    r.start_daemon().await;
    let (_, payload, _) = watcher.next(WAIT).await;
    assert_eq!(payload, b"online");
    r.daemon.sigkill();
    let (_, payload, _) = watcher.next(WAIT).await;
    assert_eq!(payload, b"offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_credentials_from_a_password_file_and_a_clear_refusal() {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::with_password(dir.path(), "zenedge", "right-pass").await;
    let pass_file = dir.path().join("mqtt.password");
    std::fs::write(&pass_file, "right-pass\n").unwrap();
    std::fs::set_permissions(
        &pass_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let admin = common::free_port();
    let mqtt = format!(
        "\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"zenedge\"\npassword_file = \"{}\"\n{DEVICES}",
        broker.port,
        pass_file.display()
    );
    let config = common::write_config(
        dir.path(),
        &common::config_text(dir.path(), &rx.url(), admin, &mqtt),
    );
    // Healthy means the broker took the credentials and acknowledged the subscriptions.
    let mut daemon = Daemon::start(&config, admin).await;
    daemon.sigterm();

    // A wrong password: not ready, and the status says why.
    std::fs::write(&pass_file, "wrong\n").unwrap();
    let daemon = Daemon::spawn(&config, admin);
    let status = daemon
        .wait_status("an MQTT error", |v| v["mqtt"]["last_error"].is_string())
        .await;
    let error = status["mqtt"]["last_error"].as_str().unwrap().to_string();
    assert!(
        error.to_lowercase().contains("refused")
            || error.contains("NotAuthorized")
            || error.contains("BadUserNamePassword"),
        "{error}"
    );
    let (health, _) = daemon.get("/healthz").await;
    assert_eq!(health, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_broker_serves_a_room_without_mosquitto() {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().port();
    let admin = common::free_port();
    let extra =
        format!("\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nembedded = true\n{DEVICES}");
    let config = common::write_config(
        dir.path(),
        &common::config_text(dir.path(), &rx.url(), admin, &extra),
    );
    // Healthy means ZenEdge subscribed on its own broker.
    let _daemon = Daemon::start(&config, admin).await;
    let p = Peer::connect(port, "strike").await;
    p.publish("tele/strike_1/LWT", "Online", true).await;
    let want = ("device.online".to_string(), "availability".to_string());
    rx.wait_until(WAIT, "strike online via the embedded broker", |r| {
        device_events(r, "strike").contains(&want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_broker_off_loopback_needs_a_login_and_with_one_refuses_strangers() {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    // On every address, anonymous: refused before anything starts.
    let open = format!("\n[mqtt]\nhost = \"0.0.0.0\"\nport = 1883\nembedded = true\n{DEVICES}");
    let config = common::write_config(
        dir.path(),
        &common::config_text(dir.path(), &rx.url(), common::free_port(), &open),
    );
    let (code, _, err) = common::zenedge(&config, &["check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("mqtt.username") && err.contains("0.0.0.0"),
        "{err}"
    );

    // With a login (here on loopback, where the tests live): only that login gets in.
    let port = common::free_port().port();
    let admin = common::free_port();
    let login = format!(
        "\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nembedded = true\n\
         username = \"room-4a\"\npassword = \"correct-horse-battery\"\n{DEVICES}"
    );
    let config = common::write_config(
        dir.path(),
        &common::config_text(dir.path(), &rx.url(), admin, &login),
    );
    let _daemon = Daemon::start(&config, admin).await;
    for (who, creds) in [
        ("anonymous", None),
        ("wrong password", Some(("room-4a", "guess"))),
        ("unknown user", Some(("admin", "correct-horse-battery"))),
    ] {
        let answer = common::mqtt_connect_answer(port, "stranger", creds).await;
        assert!(answer.is_err(), "{who} got in");
    }
    let p = Peer::connect_as(port, "strike", Some(("room-4a", "correct-horse-battery"))).await;
    p.publish("tele/strike_1/LWT", "Online", true).await;
    let want = ("device.online".to_string(), "availability".to_string());
    rx.wait_until(WAIT, "strike online via the embedded broker", |r| {
        device_events(r, "strike").contains(&want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_text() {
    let r = rig(DEVICES).await;
    let p = Peer::connect(r.broker.port, "dev").await;
    p.publish("tele/strike_1/LWT", "Online", true).await;
    p.publish("stat/strike_1/RESULT", b"{broken".to_vec(), false)
        .await;
    r.wait_event("strike", "device.online", "availability")
        .await;
    // Wait until the delivery's attempt is counted (the webhook arrived, the count follows).
    let mut text = String::new();
    for _ in 0..100 {
        let resp = common::client()
            .get(format!("http://{}/metrics", r.daemon.admin))
            .send()
            .await
            .unwrap();
        assert!(resp
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        text = resp.text().await.unwrap();
        if text.contains("zenedge_delivery_attempt_duration_seconds_count 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a number"),
        }
    };
    assert_eq!(value("zenedge_devices", None), 4.0);
    assert_eq!(value("zenedge_devices_online", None), 1.0);
    assert_eq!(value("zenedge_mqtt_connected", None), 1.0);
    assert!(value("zenedge_mqtt_malformed_messages_total", None) >= 1.0);
    assert!(value("zenedge_deliveries_total", Some(("outcome", "delivered"))) >= 1.0);
    assert_eq!(value("zenedge_queue_pending_events", None), 0.0);
    assert!(value("zenedge_store_data_bytes", None) > 0.0);
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "zenedge_delivery_attempt_duration_seconds"
            && matches!(s.value, prometheus_parse::Value::Histogram(_))));
    // Names follow Prometheus conventions: prefixed, counters end in _total.
    for (name, doc) in &scrape.docs {
        assert!(name.starts_with("zenedge_"), "{name}: {doc}");
    }
    for line in text
        .lines()
        .filter(|l| l.starts_with("# TYPE") && l.ends_with("counter"))
    {
        assert!(
            line.split(' ').nth(2).unwrap().ends_with("_total"),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_healthy_controller_and_names_what_fails() {
    let mut r = rig(DEVICES).await;
    let (code, out, err) = r.cli(&["doctor"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for name in ["config", "daemon", "store", "clock", "mqtt", "zencore"] {
        assert!(
            out.lines().any(|l| l.starts_with("ok") && l.contains(name)),
            "{name} missing:\n{out}"
        );
    }
    assert!(out.contains("accepted signed edge.test"), "{out}");
    // The broker goes away: doctor says so and exits 1.
    r.broker.kill();
    let (code, out, _) = r.cli(&["doctor"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("mqtt")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_private_ca_and_a_wrong_ca_fails_clearly_and_retries() {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let (broker, ca) = Broker::with_tls(dir.path()).await;
    let admin = common::free_port();
    let mqtt = |ca: &std::path::Path| {
        format!(
            "\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nca_file = \"{}\"\n{DEVICES}",
            broker.port,
            ca.display()
        )
    };
    let config = common::write_config(
        dir.path(),
        &common::config_text(dir.path(), &rx.url(), admin, &mqtt(&ca)),
    );
    // Healthy: the TLS handshake against the private CA worked and the broker acknowledged the
    // subscriptions (the broker has no plaintext listener to fall back to).
    let mut daemon = Daemon::start(&config, admin).await;
    let (_, status) = daemon.get("/v1/status").await;
    assert_eq!(status["mqtt"]["connected"], true);
    daemon.sigterm();

    // A CA that did not sign the broker's certificate: a clear error, retried, never healthy.
    let other = Broker::unrelated_ca(dir.path());
    let config = common::write_config(
        dir.path(),
        &common::config_text(dir.path(), &rx.url(), admin, &mqtt(&other)),
    );
    let daemon = Daemon::spawn(&config, admin);
    let status = daemon
        .wait_status("a TLS error after three attempts", |v| {
            v["mqtt"]["last_error"].is_string()
                && v["mqtt"]["connect_attempts"].as_u64().unwrap_or(0) >= 3
        })
        .await;
    let error = status["mqtt"]["last_error"].as_str().unwrap().to_string();
    let attempts = status["mqtt"]["connect_attempts"].as_u64().unwrap();
    assert!(
        error.contains("certificate") || error.contains("UnknownIssuer") || error.contains("Tls"),
        "{error}"
    );
    assert!(attempts >= 3, "retried");
    let (health, _) = daemon.get("/healthz").await;
    assert_eq!(health, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_s_bridge_offline_does_not_take_the_zigbee_locks_away() {
    let mut r = rig(DEVICES).await;
    let port = r.broker.port;
    // A Zigbee2MQTT bridge that answers health checks, and its lock.
    let mut bridge = Peer::connect(port, "sim-z2m-bridge").await;
    bridge
        .subscribe("zigbee2mqtt/bridge/request/health_check")
        .await;
    bridge.subscribe("zigbee2mqtt/front_door/set").await;
    let (answering_tx, answering) = tokio::sync::watch::channel(true);
    let _bridge = tokio::spawn(async move {
        loop {
            let (topic, payload, _) = bridge.next(Duration::from_secs(3600)).await;
            if topic.ends_with("/health_check") {
                if *answering.borrow() {
                    bridge
                        .publish(
                            "zigbee2mqtt/bridge/response/health_check",
                            r#"{"data":{"healthy":true},"status":"ok"}"#,
                            false,
                        )
                        .await;
                }
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            let state = if v["state"] == "UNLOCK" {
                "unlocked"
            } else {
                "locked"
            };
            bridge
                .publish(
                    "zigbee2mqtt/front_door",
                    format!(r#"{{"lock_state":"{state}"}}"#),
                    false,
                )
                .await;
        }
    });
    let lock = Peer::connect(port, "sim-z2m-pub").await;
    lock.publish("zigbee2mqtt/front_door/availability", "online", true)
        .await;
    r.wait_event("front", "device.online", "availability").await;

    // Any client on the broker publishes a retained "offline" for the bridge; a restart replays
    // it to ZenEdge as well.
    let stranger = Peer::connect(port, "stranger").await;
    stranger
        .publish("zigbee2mqtt/bridge/state", "offline", true)
        .await;
    r.daemon
        .wait_status("the spoof contradicted", |s| {
            s["mqtt"]["bridge_offline_ignored"] == 1
        })
        .await;
    r.restart().await;
    r.daemon
        .wait_status("the replayed spoof contradicted", |s| {
            s["mqtt"]["bridge_offline_ignored"] == 1
        })
        .await;
    let (code, out, _) = r.cli(&["unlock", "front"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("succeeded"), "{out}");
    assert!(
        !device_events(&r.rx.requests(), "front")
            .iter()
            .any(|e| e.0 == "device.offline"),
        "{:?}",
        device_events(&r.rx.requests(), "front")
    );

    // A bridge that really stopped does not answer: its devices go offline.
    answering_tx.send_replace(false);
    stranger
        .publish("zigbee2mqtt/bridge/state", "online", true)
        .await;
    stranger
        .publish("zigbee2mqtt/bridge/state", "offline", true)
        .await;
    r.wait_event("front", "device.offline", "bridge_offline")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_client_with_zenedge_s_client_id_is_noticed_and_named() {
    let r = rig(DEVICES).await;
    // The default client id is predictable (`zenedge-<controller_id>`); an anonymous broker
    // lets anyone use it. Each connect takes ZenEdge's session; ZenEdge takes it back.
    let thief = Peer::connect(r.broker.port, "zenedge-edge-test").await;
    r.daemon
        .wait_status("the takeover noticed", |s| {
            s["mqtt"]["takeover_suspected"].as_u64() >= Some(1)
        })
        .await;
    drop(thief);
    r.daemon
        .wait_status("the session back", |s| s["mqtt"]["subscribed"] == true)
        .await;
    let log = std::fs::read_to_string(r.config.with_extension("log")).unwrap();
    assert!(
        log.contains("another client is probably connecting with ZenEdge's client id")
            && log.contains("zenedge-edge-test"),
        "{log}"
    );
}
