//! The command channel end to end (DESIGN section 2b): the real binary connects out to a second
//! real mosquitto playing ZenCore's broker (TLS with openssl-made certificates, MQTT over
//! WebSocket, a password), receives signed commands there, replies, and keeps its status —
//! with no listening socket on the room network.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::channel::{listening_ports, message, Proxy, ZenCoreBroker};
use common::{at, rig_edited, sha, Peer, Rig, SECRET};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

const ROOM: &str = r#"
[presence]
debounce = "0s"

[[devices]]
id = "front"
type = "lock"
driver = "zigbee2mqtt"
topic = "front_door"
action_timeout = "3s"
"#;

/// The simulated Zigbee lock, online.
async fn lock(
    port: u16,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<usize>,
) {
    let online = Peer::connect(port, "z2m").await;
    online
        .publish("zigbee2mqtt/front_door/availability", "online", true)
        .await;
    let (task, count) = common::zigbee_lock(port).await;
    // The availability's publisher stays connected as long as the lock runs.
    let task = tokio::spawn(async move {
        let _online = online;
        let _ = task.await;
    });
    (task, count)
}

/// A command body with its own `id` (the reply names it).
fn body(id: &str, event: &str, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"id": id, "event": event, "timestamp": at(0), "data": data}))
        .unwrap()
}

fn grant(id: &str, token: &str) -> Vec<u8> {
    body(
        &format!("cmd-{id}"),
        "access.magic_link",
        json!({"grant_id": id, "booking_id": format!("b-{id}"), "meeting_space_id": "ms-test",
               "token_sha256": sha(token), "valid_from": at(-60), "valid_until": at(3600)}),
    )
}

fn unlock(id: &str) -> Vec<u8> {
    body(
        &format!("cmd-{id}"),
        "access.unlock",
        json!({"action_id": id, "device_id": "front", "booking_id": "b-g1", "not_after": at(60)}),
    )
}

/// The room with `[commands]` as `commands` and, when `no_inbound`, `inbound.listen = ""`.
async fn room(commands: String, no_inbound: bool) -> Rig {
    rig_edited(&format!("{ROOM}{commands}"), Vec::new(), move |text| {
        if no_inbound {
            text.replace("listen = \"127.0.0.1:0\"", "listen = \"\"")
        } else {
            text
        }
    })
    .await
}

async fn reaches(rx: &mut tokio::sync::watch::Receiver<usize>, n: usize) {
    tokio::time::timeout(WAIT, rx.wait_for(|c| *c >= n))
        .await
        .unwrap_or_else(|_| panic!("the lock never got command {n}"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_arrive_over_the_channel_with_no_listening_socket_and_every_bad_one_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let zc_broker = ZenCoreBroker::start(dir.path()).await;
    let mut zc = zc_broker.zencore().await;
    let r = room(zc_broker.commands("mqtt", &zc_broker.mqtts(), ""), true).await;
    let (_lock, mut commands) = lock(r.broker.port).await;
    r.wait_event("front", "device.online", "availability").await;

    // Connected: the retained `online` with the version and an empty grant set.
    let online = zc.status("online").await;
    assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(online["grants"]["count"], 0);
    // Nothing listens on the room network: the admin port on loopback is the one TCP socket.
    assert_eq!(
        listening_ports(r.daemon.pid()),
        vec![r.daemon.admin.port()],
        "the daemon listens on more than its admin port"
    );

    let reply = zc
        .ask(
            message(&grant("g1", "tok-1"), Some(SECRET)),
            &json!("cmd-g1"),
        )
        .await;
    assert_eq!(
        (reply["status"].as_u64(), reply["body"]["status"].as_str()),
        (Some(202), Some("accepted")),
        "{reply}"
    );
    let first = unlock("act-1");
    let reply = zc
        .ask(message(&first, Some(SECRET)), &json!("cmd-act-1"))
        .await;
    assert_eq!(reply["status"], 202, "{reply}");
    reaches(&mut commands, 1).await;
    r.wait_event("front", "device.action_completed", "succeeded")
        .await;
    assert_eq!(
        r.first("device.action_completed")["data"]["action_id"],
        "act-1"
    );

    // Each refusal: the answer HTTP would have given, in the reply; nothing done.
    let stale = serde_json::to_vec(&json!({"id": "cmd-stale", "event": "access.unlock",
        "timestamp": at(-600), "data": {"action_id": "act-4", "device_id": "front",
        "booking_id": "b", "not_after": at(60)}}))
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, Value, u64)> = vec![
        (
            "forged",
            message(&unlock("act-2"), Some("another-secret-of-32-bytes-long")),
            json!("cmd-act-2"),
            401,
        ),
        (
            "unsigned",
            message(&unlock("act-3"), None),
            json!("cmd-act-3"),
            401,
        ),
        (
            "stale",
            message(&stale, Some(SECRET)),
            json!("cmd-stale"),
            401,
        ),
        (
            "repeated",
            message(&first, Some(SECRET)),
            json!("cmd-act-1"),
            200,
        ),
        ("not JSON", b"\xff garbage".to_vec(), Value::Null, 400),
        ("no body", br#"{"headers":{}}"#.to_vec(), Value::Null, 400),
        (
            "oversized",
            serde_json::to_vec(&json!({"headers": {}, "body": " ".repeat(70_000)})).unwrap(),
            Value::Null,
            413,
        ),
    ];
    for (name, payload, request, want) in cases {
        let reply = zc.ask(payload, &request).await;
        assert_eq!(reply["status"].as_u64(), Some(want), "{name}: {reply}");
        if want == 200 {
            assert_eq!(reply["body"]["status"], "duplicate", "{name}");
        } else {
            assert!(reply["body"]["error"].is_string(), "{name}: {reply}");
        }
    }
    // The channel still works after all of that, and the lock got exactly the two unlocks.
    let reply = zc
        .ask(message(&unlock("act-5"), Some(SECRET)), &json!("cmd-act-5"))
        .await;
    assert_eq!(reply["status"], 202, "{reply}");
    reaches(&mut commands, 2).await;
    r.wait_event("front", "device.action_completed", "succeeded")
        .await;
    assert_eq!(*commands.borrow(), 2);

    let (_, status) = r.daemon.get("/v1/status").await;
    assert_eq!(status["channel"]["connected"], true, "{status}");
    assert_eq!(status["channel"]["subscribed"], true, "{status}");
    let text = r.metrics().await;
    assert!(text.contains("zenedge_command_channel_up 1"), "{text}");
    assert!(
        text.contains(r#"zenedge_commands_total{transport="mqtt",status="202"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"zenedge_commands_total{transport="mqtt",status="401"} 3"#),
        "{text}"
    );
    let (code, out, err) = r.cli(&["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("channel      connected since"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_over_both_transports_is_carried_out_once() {
    let dir = tempfile::tempdir().unwrap();
    let zc_broker = ZenCoreBroker::start(dir.path()).await;
    let mut zc = zc_broker.zencore().await;
    let r = room(zc_broker.commands("both", &zc_broker.mqtts(), ""), false).await;
    let (_lock, mut commands) = lock(r.broker.port).await;
    r.wait_event("front", "device.online", "availability").await;
    zc.status("online").await;
    let (status, answer) = r.command(&grant("g1", "tok-1"), Some(SECRET), &[]).await;
    assert_eq!(status, 202, "{answer}");

    let once = unlock("act-1");
    let (status, answer) = r.command(&once, Some(SECRET), &[]).await;
    assert_eq!(status, 202, "{answer}");
    let reply = zc
        .ask(message(&once, Some(SECRET)), &json!("cmd-act-1"))
        .await;
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(reply["body"]["status"], "duplicate", "{reply}");
    reaches(&mut commands, 1).await;
    r.wait_event("front", "device.action_completed", "succeeded")
        .await;
    // And the other way round.
    let twice = unlock("act-2");
    let reply = zc
        .ask(message(&twice, Some(SECRET)), &json!("cmd-act-2"))
        .await;
    assert_eq!(reply["status"], 202, "{reply}");
    let (status, answer) = r.command(&twice, Some(SECRET), &[]).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("duplicate")),
        "{answer}"
    );
    reaches(&mut commands, 2).await;
    let completed = || {
        r.rx.requests()
            .iter()
            .map(|x| x.json())
            .filter(|j| j["event"] == "device.action_completed")
            .map(|j| j["data"]["action_id"].as_str().unwrap_or("").to_owned())
            .collect::<std::collections::BTreeSet<_>>()
    };
    r.rx.wait_until(WAIT, "both unlocks completed", |_| completed().len() == 2)
        .await;
    assert_eq!(*commands.borrow(), 2, "each unlock reached the lock once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_while_zenedge_is_down_is_carried_out_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut zc_broker = ZenCoreBroker::start(dir.path()).await;
    let mut zc = zc_broker.zencore().await;
    let mut r = room(zc_broker.commands("mqtt", &zc_broker.mqtts(), ""), true).await;
    let (_lock, mut commands) = lock(r.broker.port).await;
    r.wait_event("front", "device.online", "availability").await;
    zc.status("online").await;
    let reply = zc
        .ask(
            message(&grant("g1", "tok-1"), Some(SECRET)),
            &json!("cmd-g1"),
        )
        .await;
    assert_eq!(reply["status"], 202, "{reply}");

    // SIGKILL: the broker publishes the Last Will.
    r.daemon.sigkill();
    zc.status("offline").await;
    // A command published while ZenEdge is down waits in its persistent session.
    zc.publish(message(&unlock("act-1"), Some(SECRET))).await;
    r.start_daemon().await;
    let online = zc.status("online").await;
    assert_eq!(online["grants"]["count"], 1);
    zc.until("the reply to the waiting command", |replies, _| {
        replies
            .iter()
            .any(|x| x["request"] == "cmd-act-1" && x["status"] == 202)
    })
    .await;
    reaches(&mut commands, 1).await;
    r.wait_event("front", "device.action_completed", "succeeded")
        .await;

    // The digest in `online` is the one computed from `zenedge grants`.
    let (code, out, err) = r.cli(&["grants", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let grants: Value = serde_json::from_str(&out).unwrap();
    let mut lines: Vec<String> = grants
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            format!(
                "{}:{}:{}\n",
                g["grant_id"].as_str().unwrap(),
                g["valid_until"].as_str().unwrap(),
                !g["revoked_at"].is_null()
            )
        })
        .collect();
    lines.sort();
    assert_eq!(online["grants"]["digest"], sha(&lines.concat()));

    // ZenCore's broker is SIGKILLed and comes back: the channel reconnects (within its backoff)
    // and the next command is carried out once.
    zc_broker.broker.kill();
    drop(zc);
    zc_broker.broker.restart().await;
    let mut zc = zc_broker.zencore().await;
    zc.status("online").await;
    let reply = zc
        .ask(message(&unlock("act-2"), Some(SECRET)), &json!("cmd-act-2"))
        .await;
    assert_eq!(reply["status"], 202, "{reply}");
    reaches(&mut commands, 2).await;
    r.wait_event("front", "device.action_completed", "succeeded")
        .await;
    assert_eq!(*commands.borrow(), 2, "nothing doubled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_wrong_ca_is_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let zc_broker = ZenCoreBroker::start(dir.path()).await;
    let other = common::Broker::unrelated_ca(dir.path());
    let commands = zc_broker.commands("mqtt", &zc_broker.mqtts(), "").replace(
        &zc_broker.ca.display().to_string(),
        &other.display().to_string(),
    );
    let r = room(commands, true).await;
    let status = r
        .daemon
        .wait_status("the channel's error", |s| {
            s["channel"]["last_error"].is_string()
        })
        .await;
    let error = status["channel"]["last_error"].as_str().unwrap();
    assert!(error.contains("certificate"), "{error}");
    assert_eq!(status["channel"]["connected"], false);
    let (code, out, _) = r.cli(&["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("certificate"), "{out}");
    assert!(r.metrics().await.contains("zenedge_command_channel_up 0"));
    let (code, out, _) = r.cli(&["doctor"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("channel") && l.contains("not signed by a CA ZenEdge trusts")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_the_channel_in_without_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let zc_broker = ZenCoreBroker::start(dir.path()).await;
    let mut zc = zc_broker.zencore().await;
    let r = room(zc_broker.commands_with_certificate(), true).await;
    let (_lock, mut commands) = lock(r.broker.port).await;
    zc.status("online").await;
    let reply = zc
        .ask(
            message(&unlock("act-cert"), Some(SECRET)),
            &json!("cmd-act-cert"),
        )
        .await;
    assert_eq!(reply["status"], 202, "{reply}");
    reaches(&mut commands, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_is_offered_as_configured_for_a_broker_on_port_443() {
    let dir = tempfile::tempdir().unwrap();
    let zc_broker = ZenCoreBroker::start(dir.path()).await;
    let mut zc = zc_broker.zencore().await;
    let (front, negotiated) =
        common::channel::alpn_front(&zc_broker.certs, zc_broker.plain_port, "x-amzn-mqtt-ca").await;
    let commands = zc_broker.commands(
        "mqtt",
        &format!("mqtts://127.0.0.1:{front}"),
        "alpn = [\"x-amzn-mqtt-ca\"]",
    );
    let r = room(commands, true).await;
    let (_lock, mut commands) = lock(r.broker.port).await;
    zc.status("online").await;
    let reply = zc
        .ask(
            message(&unlock("act-alpn"), Some(SECRET)),
            &json!("cmd-act-alpn"),
        )
        .await;
    assert_eq!(reply["status"], 202, "{reply}");
    reaches(&mut commands, 1).await;
    let seen = negotiated.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|p| p.as_deref() == Some("x-amzn-mqtt-ca")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_an_http_proxy_each_carry_an_unlock() {
    let dir = tempfile::tempdir().unwrap();
    let zc_broker = ZenCoreBroker::start(dir.path()).await;
    let mut zc = zc_broker.zencore().await;
    // MQTT over WebSocket over TLS, as on port 443.
    let mut r = room(zc_broker.commands("mqtt", &zc_broker.wss(), ""), true).await;
    let (_lock, mut commands) = lock(r.broker.port).await;
    r.wait_event("front", "device.online", "availability").await;
    zc.status("online").await;
    let reply = zc
        .ask(
            message(&unlock("act-ws"), Some(SECRET)),
            &json!("cmd-act-ws"),
        )
        .await;
    assert_eq!(reply["status"], 202, "{reply}");
    reaches(&mut commands, 1).await;

    // MQTT over TLS through an HTTP CONNECT proxy.
    let proxy = Proxy::start().await;
    assert!(r.daemon.sigterm().success());
    let text = std::fs::read_to_string(&r.config).unwrap();
    let text = text.replace(&zc_broker.wss(), &zc_broker.mqtts()).replace(
        "[commands]\n",
        &format!("[commands]\nproxy = \"http://127.0.0.1:{}\"\n", proxy.port),
    );
    std::fs::write(&r.config, text).unwrap();
    r.start_daemon().await;
    zc.status("online").await;
    let reply = zc
        .ask(
            message(&unlock("act-proxy"), Some(SECRET)),
            &json!("cmd-act-proxy"),
        )
        .await;
    assert_eq!(reply["status"], 202, "{reply}");
    reaches(&mut commands, 2).await;
    assert!(
        proxy.tunnels.load(Ordering::SeqCst) >= 1,
        "the proxy carried nothing"
    );
}

/// Each grant's state as `zenedge grants --json` shows it, by id.
async fn grant_states(r: &Rig) -> std::collections::BTreeMap<String, String> {
    let (code, out, err) = r.cli(&["grants", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    rows.iter()
        .map(|g| {
            (
                g["grant_id"].as_str().unwrap().to_owned(),
                g["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn states(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(g, s)| (g.to_string(), s.to_string()))
        .collect()
}

fn snapshot(id: &str, grants: &[&str], part: Option<(&str, u32, u32)>) -> Vec<u8> {
    let grants: Vec<Value> = grants
        .iter()
        .map(|g| {
            json!({"grant_id": g, "booking_id": format!("b-{g}"), "meeting_space_id": "ms-test",
                   "token_sha256": sha(&format!("tok-{g}")), "valid_from": at(-60),
                   "valid_until": at(3600)})
        })
        .collect();
    let mut data = json!({"meeting_space_id": "ms-test", "grants": grants});
    if let Some((snapshot_id, part, parts)) = part {
        data["snapshot_id"] = json!(snapshot_id);
        data["part"] = json!(part);
        data["parts"] = json!(parts);
    }
    body(id, "access.grants_snapshot", data)
}

/// The panel's answer to a token presented at it.
async fn present(panel: &mut Peer, token: &str) -> String {
    panel
        .publish(
            "zenedge/edge-test/panels/panel/credential",
            json!({"type": "magic_link", "token": token, "request_id": token}).to_string(),
            false,
        )
        .await;
    loop {
        let (topic, payload, _) = panel.next(WAIT).await;
        let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
        if topic.ends_with("/feedback") && v["request_id"] == token {
            return v["result"].as_str().unwrap_or("").to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grants_snapshot_replaces_the_rooms_grants_at_once_or_once_all_its_parts_are_in() {
    let dir = tempfile::tempdir().unwrap();
    let zc_broker = ZenCoreBroker::start(dir.path()).await;
    let mut zc = zc_broker.zencore().await;
    let panel_room = format!(
        "\n[[devices]]\nid = \"panel\"\ntype = \"panel\"\ndriver = \"zenedge-panel\"\n{}",
        zc_broker.commands("both", &zc_broker.mqtts(), "")
    );
    let mut r = room(panel_room, false).await;
    let (_lock, mut commands) = lock(r.broker.port).await;
    r.wait_event("front", "device.online", "availability").await;
    let mut panel = Peer::connect(r.broker.port, "panel-sim").await;
    panel
        .subscribe("zenedge/edge-test/panels/panel/feedback")
        .await;
    zc.status("online").await;

    for g in ["g1", "g2"] {
        let (status, answer) = r
            .command(&grant(g, &format!("tok-{g}")), Some(SECRET), &[])
            .await;
        assert_eq!(status, 202, "{answer}");
    }
    // Over the channel: the room's grants become exactly [g2, g3].
    let reply = zc
        .ask(
            message(&snapshot("snap-1", &["g2", "g3"], None), Some(SECRET)),
            &json!("snap-1"),
        )
        .await;
    assert_eq!(reply["status"], 202, "{reply}");
    let after = states(&[("g1", "revoked"), ("g2", "active"), ("g3", "active")]);
    assert_eq!(grant_states(&r).await, after);
    assert_eq!(present(&mut panel, "tok-g1").await, "denied");
    assert_eq!(present(&mut panel, "tok-g3").await, "granted");
    reaches(&mut commands, 1).await;
    r.rx.wait_until(WAIT, "g1 denied as revoked", |log| {
        log.iter().any(|x| {
            let j = x.json();
            j["event"] == "access.denied" && j["data"]["reason"] == "revoked"
        })
    })
    .await;

    // Also after a SIGKILL and a restart.
    r.daemon.sigkill();
    r.start_daemon().await;
    assert_eq!(grant_states(&r).await, after);
    assert_eq!(present(&mut panel, "tok-g1").await, "denied");
    assert_eq!(present(&mut panel, "tok-g2").await, "granted");

    // Over HTTP, in two parts: nothing changes until the second is in; then all at once.
    let (status, answer) = r
        .command(
            &snapshot("snap-2a", &["g4"], Some(("s2", 1, 2))),
            Some(SECRET),
            &[],
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(grant_states(&r).await, after);
    let (status, answer) = r
        .command(
            &snapshot("snap-2b", &["g2"], Some(("s2", 2, 2))),
            Some(SECRET),
            &[],
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        grant_states(&r).await,
        states(&[
            ("g1", "revoked"),
            ("g2", "active"),
            ("g3", "revoked"),
            ("g4", "active")
        ])
    );
    assert_eq!(present(&mut panel, "tok-g3").await, "denied");
    assert_eq!(present(&mut panel, "tok-g4").await, "granted");
}
