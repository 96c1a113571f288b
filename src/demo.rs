//! `zenedge demo`: the whole system in one process on 127.0.0.1 — an embedded MQTT broker,
//! simulated devices that speak the real topics and payloads, a ZenCore stand-in that verifies
//! every signature, and the real daemon (`daemon::run`) wired to them with a temporary state
//! directory. It plays a short story, checking each step, then (without `--once`) keeps running
//! for the newcomer to try the CLI against it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::event::Millis;
use crate::signing::Key;

const SECRET: &str = "demo-secret-of-thirty-two-bytes!";
const CONTROLLER: &str = "edge-demo";
const ROOM: &str = "ms-demo";
/// Each step of the story must be verified within this.
const STEP: Duration = Duration::from_secs(20);

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The ZenCore stand-in: verifies both signature schemes, prints each event, and can be taken
/// "down" (503) and brought back.
#[derive(Clone)]
struct ZenCore {
    down: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<Value>,
    seen: Arc<Mutex<std::collections::HashSet<String>>>,
}

async fn zencore_hook(
    axum::extract::State(z): axum::extract::State<ZenCore>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if z.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let key = match Key::from_secret(SECRET) {
        Ok(k) => k,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR,
    };
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ts: i64 = h("webhook-timestamp").parse().unwrap_or(-1);
    let ok = key.verify_hex(&body, h("x-webhook-signature"))
        && key.verify_v1(h("webhook-id"), ts, &body, h("webhook-signature"));
    if !ok {
        println!("  ZenCore ✗ rejected a request with a bad signature");
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let fresh = z
        .seen
        .lock()
        .map(|mut s| s.insert(h("x-webhook-id").to_string()))
        .unwrap_or(true);
    if fresh {
        println!("  ZenCore ← {}  (signature ok)", describe(&v));
        let _ = z.events.send(v);
    }
    StatusCode::OK
}

/// One line for an event: its name, device and the fields a person cares about.
fn describe(v: &Value) -> String {
    let d = &v["data"];
    let mut s = format!("{:<24}", v["event"].as_str().unwrap_or("?"));
    if let Some(dev) = d["device_id"].as_str() {
        s.push_str(&format!(" {dev:<12}"));
    }
    for k in [
        "reason",
        "action",
        "status",
        "source",
        "credential_type",
        "note",
        "contact_id",
        "state",
    ] {
        if let Some(x) = d[k].as_str() {
            s.push_str(&format!(" {k}={x}"));
        }
    }
    s.push_str(&format!(" seq={}", d["sequence"]));
    s
}

/// An MQTT client for a simulated device; `on_message` answers what it receives.
async fn device(
    port: u16,
    id: &str,
    subscribe: &[&str],
    on_message: impl Fn(&str, &[u8]) -> Vec<(String, String, bool)> + Send + 'static,
    seen: Option<mpsc::UnboundedSender<(String, Value)>>,
) -> anyhow::Result<AsyncClient> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(o, 100);
    eventloop.network_options.set_tcp_nodelay(true);
    for t in subscribe {
        client.subscribe(*t, QoS::AtLeastOnce).await?;
    }
    let (ready_tx, ready) = oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let want_subacks = subscribe.len();
    let answer = client.clone();
    tokio::spawn(async move {
        let mut subacks = 0;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) if want_subacks == 0 => {
                    if let Some(t) = ready_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subacks += 1;
                    if subacks >= want_subacks {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(());
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(seen) = &seen {
                        let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let _ = seen.send((p.topic.clone(), v));
                    }
                    for (topic, payload, retain) in on_message(&p.topic, &p.payload) {
                        let _ = answer
                            .publish(topic, QoS::AtLeastOnce, retain, payload)
                            .await;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .context("simulated device could not reach the embedded broker")??;
    Ok(client)
}

fn config_text(dir: &std::path::Path, ports: &Ports) -> String {
    format!(
        r#"# Written by `zenedge demo`; everything on 127.0.0.1.
[controller]
id = "{CONTROLLER}"
organization_id = "org-demo"
meeting_space_id = "{ROOM}"
state_dir = "{state}"

[zencore]
webhook_url = "http://127.0.0.1:{zencore}/webhooks/zenedge"
secret = "{SECRET}"
timeout = "5s"

[delivery]
initial_backoff = "200ms"
max_backoff = "2s"

# No listening socket on the room network: ZenCore's commands come over the command channel,
# which ZenEdge opens itself (here to the embedded broker, standing in for ZenCore's).
[inbound]
listen = ""

[commands]
transport = "mqtt"
url = "mqtt://127.0.0.1:{mqtt}"

[admin]
listen = "127.0.0.1:{admin}"

[mqtt]
host = "127.0.0.1"
port = {mqtt}

[presence]
debounce = "0s"

[clock]
require_sync = false

[access]
# An opening this soon after an unlock is the guest walking in, not a break-in.
entry_grace = "2s"

[[devices]]
id = "front-door"
type = "lock"
driver = "zigbee2mqtt"
topic = "front_door"
action_timeout = "5s"
contact = "front-contact"

[[devices]]
id = "front-contact"
type = "contact"
driver = "zigbee2mqtt"
topic = "front_sensor"

[[devices]]
id = "side-strike"
type = "strike"
driver = "tasmota"
topic = "strike_1"
action_timeout = "5s"

[[devices]]
id = "room-panel"
type = "panel"
driver = "zenedge-panel"
"#,
        state = dir.join("state").display(),
        zencore = ports.zencore,
        admin = ports.admin,
        mqtt = ports.mqtt,
    )
}

struct Ports {
    mqtt: u16,
    zencore: u16,
    admin: u16,
}

/// The command channel's topics of the demo controller (DESIGN §2b's default prefix).
const CHANNEL: &str = "zencore/org-demo/edge-demo";

/// ZenCore's side of the command channel: publishes signed commands on the broker and reads
/// the controller's replies and status.
struct Commands<'a> {
    client: &'a AsyncClient,
    seen: &'a mut mpsc::UnboundedReceiver<(String, Value)>,
    next_id: usize,
}

/// Waits until an event matching `want` arrives at the stand-in.
async fn expect(
    events: &mut mpsc::UnboundedReceiver<Value>,
    backlog: &mut Vec<Value>,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    if let Some(i) = backlog.iter().position(&want) {
        return Ok(backlog.remove(i));
    }
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(v)) if want(&v) => return Ok(v),
            Ok(Some(v)) => backlog.push(v),
            Ok(None) => bail!("the ZenCore stand-in stopped"),
            Err(_) => bail!("not verified within {STEP:?}: {what}"),
        }
    }
}

async fn expect_mqtt(
    seen: &mut mpsc::UnboundedReceiver<(String, Value)>,
    what: &str,
    want: impl Fn(&str, &Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some((t, v))) if want(&t, &v) => return Ok(v),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the simulated panel stopped"),
            Err(_) => bail!("not verified within {STEP:?}: {what}"),
        }
    }
}

fn is(v: &Value, event: &str, device: &str) -> bool {
    v["event"] == event && v["data"]["device_id"] == device
}

impl Commands<'_> {
    /// Publishes a signed command on `<prefix>/commands` and waits for its reply: the HTTP
    /// status it carries.
    async fn send(&mut self, event: &str, data: Value) -> anyhow::Result<u16> {
        self.next_id += 1;
        let id = format!("cmd-{}", self.next_id);
        let body = serde_json::to_vec(&json!({"id": id, "event": event,
            "timestamp": Millis::now().rfc3339(), "data": data}))?;
        let sig = Key::from_secret(SECRET)?.sign_hex(&body);
        let message = json!({"headers": {"content-type": "application/json",
            "x-webhook-signature": sig}, "body": String::from_utf8(body)?});
        self.client
            .publish(
                format!("{CHANNEL}/commands"),
                QoS::AtLeastOnce,
                false,
                message.to_string(),
            )
            .await?;
        let reply = expect_mqtt(self.seen, &format!("the reply to {event}"), |t, v| {
            t.ends_with("/replies") && v["request"] == id.as_str()
        })
        .await?;
        Ok(reply["status"].as_u64().unwrap_or(0) as u16)
    }
}

/// The story's steps.
const STEPS: usize = 8;

fn step(n: usize, text: &str) {
    println!("\n[{n}/{STEPS}] {text}");
}

fn ok(text: &str) {
    println!("  ✓ {text}");
}

/// Runs the demo. With `once`, plays the story and returns whether every step was verified;
/// otherwise keeps running until `shutdown` resolves.
pub async fn run(
    once: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<bool> {
    crate::delivery::install_crypto_provider();
    // A fresh private directory (0700, unpredictable name, created exclusively): a predictable
    // path in /tmp could be pre-created by another user, e.g. with a symlink in it.
    let dir = tempfile::Builder::new()
        .prefix("zenedge-demo-")
        .tempdir()
        .context("cannot create the demo's temporary directory")?;
    play(once, dir.path(), shutdown).await
}

async fn play(
    once: bool,
    dir: &std::path::Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    let zencore_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ports = Ports {
        mqtt: free_port()?,
        zencore: zencore_listener.local_addr()?.port(),
        admin: free_port()?,
    };
    let config_path: PathBuf = dir.join("config.toml");
    let text = config_text(dir, &ports);
    std::fs::write(&config_path, &text)?;
    let config = crate::config::Config::from_toml(&text, &config_path)?;

    println!("ZenEdge demo — everything below runs in this process, on 127.0.0.1 only.");
    println!("  embedded MQTT broker   127.0.0.1:{}", ports.mqtt);
    println!(
        "  ZenCore stand-in       http://127.0.0.1:{}/webhooks/zenedge (checks every signature)",
        ports.zencore
    );
    println!(
        "  ZenCore's commands     over the embedded broker, topics {CHANNEL}/{{commands,replies,status}}: ZenEdge connects out and listens on no port (as behind NAT)"
    );
    println!(
        "  ZenEdge admin          http://127.0.0.1:{} (read-only), socket {}",
        ports.admin,
        config.admin_socket().display()
    );
    println!("  simulated devices      front-door (Zigbee2MQTT lock) with front-contact (Zigbee door sensor), side-strike (Tasmota relay), room-panel");

    // Loopback only, so anonymous: nothing off this machine can reach it.
    crate::broker::start(SocketAddr::from(([127, 0, 0, 1], ports.mqtt)), None)?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let zencore = ZenCore {
        down: Arc::new(AtomicBool::new(false)),
        events: events_tx,
        seen: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/webhooks/zenedge", axum::routing::post(zencore_hook))
        .with_state(zencore.clone());
    tokio::spawn(async move {
        let _ = axum::serve(zencore_listener, app).await;
    });

    // The simulated devices retry until the embedded broker listens.
    // Simulated devices, answering commands the way the real firmware does.
    let lock = device(ports.mqtt, "sim-front-door", &["zigbee2mqtt/front_door/set"], |_, payload| {
        let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let (state, lock_state) = if v["state"] == "UNLOCK" { ("UNLOCK", "unlocked") } else { ("LOCK", "locked") };
        vec![(
            "zigbee2mqtt/front_door".into(),
            json!({"battery": 87, "linkquality": 120, "lock_state": lock_state, "state": state}).to_string(),
            false,
        )]
    }, None)
    .await?;
    let strike = device(
        ports.mqtt,
        "sim-side-strike",
        &["cmnd/strike_1/POWER"],
        |_, payload| {
            let p = String::from_utf8_lossy(payload).to_string();
            vec![
                (
                    "stat/strike_1/RESULT".into(),
                    json!({"POWER": p}).to_string(),
                    false,
                ),
                ("stat/strike_1/POWER".into(), p, false),
            ]
        },
        None,
    )
    .await?;
    let (panel_seen_tx, mut panel_seen) = mpsc::unbounded_channel();
    let panel_prefix = format!("zenedge/{CONTROLLER}/panels/room-panel");
    let panel = device(
        ports.mqtt,
        "sim-room-panel",
        &[
            &format!("{panel_prefix}/display"),
            &format!("{panel_prefix}/feedback"),
        ],
        |_, _| Vec::new(),
        Some(panel_seen_tx),
    )
    .await?;

    // ZenCore on its broker: sends commands, reads the controller's replies and status.
    let (channel_seen_tx, mut channel_seen) = mpsc::unbounded_channel();
    let zencore_mqtt = device(
        ports.mqtt,
        "zencore-stand-in",
        &[&format!("{CHANNEL}/replies"), &format!("{CHANNEL}/status")],
        |_, _| Vec::new(),
        Some(channel_seen_tx),
    )
    .await?;

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = oneshot::channel();
    let daemon = tokio::spawn(crate::daemon::run(
        config,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
        move |b| {
            let _ = ready_tx.send(b);
        },
    ));
    tokio::time::timeout(Duration::from_secs(20), ready_rx)
        .await
        .context("ZenEdge did not become ready")??;

    let commands = Commands {
        client: &zencore_mqtt,
        seen: &mut channel_seen,
        next_id: 0,
    };
    let story = story(
        commands,
        &zencore,
        &mut events,
        &mut panel_seen,
        &lock,
        &strike,
        &panel,
    )
    .await;
    let verified = match story {
        Ok(()) => {
            println!(
                "\nEvery step verified in {:.1} s.",
                started.elapsed().as_secs_f64()
            );
            true
        }
        Err(e) => {
            println!("\nDEMO FAILED: {e:#}");
            false
        }
    };
    if !once && verified {
        let cfg = config_path.display();
        println!("\nZenEdge keeps running. Try, in another terminal:");
        println!("  zenedge --config {cfg} devices");
        println!("  zenedge --config {cfg} unlock front-door");
        println!("  zenedge --config {cfg} status");
        println!("  zenedge --config {cfg} audit --verify");
        println!(
            "  mosquitto_pub -p {} -t tele/strike_1/LWT -m Offline -r",
            ports.mqtt
        );
        println!("  mosquitto_pub -p {} -t {panel_prefix}/credential -m '{{\"type\":\"pin\",\"pin\":\"2468\"}}'", ports.mqtt);
        println!("Events keep arriving at the ZenCore stand-in below. Ctrl-C stops everything.");
        tokio::select! {
            _ = shutdown => {}
            _ = async { while let Some(v) = events.recv().await { drop(v); } } => {}
        }
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(15), daemon).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => println!("ZenEdge stopped with an error: {e:#}"),
        _ => println!("ZenEdge did not stop in time"),
    }
    Ok(verified)
}

async fn story(
    mut commands: Commands<'_>,
    zencore: &ZenCore,
    events: &mut mpsc::UnboundedReceiver<Value>,
    panel_seen: &mut mpsc::UnboundedReceiver<(String, Value)>,
    lock: &AsyncClient,
    strike: &AsyncClient,
    panel: &AsyncClient,
) -> anyhow::Result<()> {
    let mut backlog = Vec::new();
    let prefix = format!("zenedge/{CONTROLLER}/panels/room-panel");

    step(
        1,
        "ZenEdge connects out to ZenCore's broker; the room's devices come online",
    );
    let online = expect_mqtt(
        commands.seen,
        "the controller online on its status topic",
        |t, v| t.ends_with("/status") && v["state"] == "online",
    )
    .await?;
    let channel = format!(
        "the command channel is up ({CHANNEL}/status says online, {} grants, digest {}…) and no \
         port is open for ZenCore",
        online["grants"]["count"],
        online["grants"]["digest"]
            .as_str()
            .unwrap_or("")
            .get(..12)
            .unwrap_or("")
    );
    lock.publish(
        "zigbee2mqtt/front_door/availability",
        QoS::AtLeastOnce,
        true,
        r#"{"state":"online"}"#,
    )
    .await?;
    // The door sensor (published by the lock's simulator: one Zigbee network): shut.
    door_sensor(lock, true).await?;
    strike
        .publish("tele/strike_1/LWT", QoS::AtLeastOnce, true, "Online")
        .await?;
    panel
        .publish(format!("{prefix}/status"), QoS::AtLeastOnce, true, "online")
        .await?;
    for d in ["front-door", "front-contact", "side-strike", "room-panel"] {
        expect(events, &mut backlog, &format!("{d} online"), |v| {
            is(v, "device.online", d)
        })
        .await?;
    }
    ok(&format!(
        "four device.online events, signed and verified; {channel}"
    ));

    step(
        2,
        "A booking starts: ZenCore sends booking.start at T-15 and at T-0",
    );
    // The demo cannot wait fifteen minutes: both phases come now, for a booking that starts in
    // 15 minutes on the controller's clock. ZenCore's T-0 starts it whatever the clock says.
    let now = Millis::now();
    for (phase, shown) in [("T-15", "reserved"), ("T-0", "in_use")] {
        let start = now.saturating_add(Duration::from_secs(15 * 60));
        let end = start.saturating_add(Duration::from_secs(3600));
        let code = commands.send("booking.start", json!({"booking_id": "bk-42",
            "meeting_space_id": ROOM, "start_time": start.rfc3339(), "end_time": end.rfc3339(), "phase": phase})).await?;
        if code != 202 {
            bail!("booking.start {phase} answered {code}");
        }
        expect_mqtt(panel_seen, &format!("panel shows {shown}"), |t, v| {
            t.ends_with("/display") && v["state"] == shown
        })
        .await?;
        ok(&format!(
            "{phase}: sent over the command channel, replied 202; the panel shows `{shown}`"
        ));
    }

    step(
        3,
        "ZenCore sends the guest's magic-link grant (only its SHA-256 is stored)",
    );
    let token = "guest-magic-link-token";
    let code = commands
        .send(
        "access.magic_link",
        json!({"grant_id": "gr-7", "booking_id": "bk-42",
        "meeting_space_id": ROOM, "token_sha256": hex::encode(Sha256::digest(token.as_bytes())),
        "valid_from": now.rfc3339(), "valid_until": now.saturating_add(Duration::from_secs(3600)).rfc3339()}),
    )
    .await?;
    if code != 202 {
        bail!("access.magic_link answered {code}");
    }
    ok("grant stored (202 accepted, in its reply on the channel)");

    step(
        4,
        "ZenCore goes down: its webhook endpoint answers 503 from now on",
    );
    zencore.down.store(true, Ordering::SeqCst);
    ok("ZenCore stand-in is returning 503");

    step(5, "The guest opens the door at the panel anyway");
    panel
        .publish(
            format!("{prefix}/credential"),
            QoS::AtLeastOnce,
            false,
            json!({"type": "magic_link", "token": token, "request_id": "tap-1"}).to_string(),
        )
        .await?;
    expect_mqtt(panel_seen, "panel feedback granted", |t, v| {
        t.ends_with("/feedback") && v["result"] == "granted"
    })
    .await?;
    ok("panel: granted — the lock got UNLOCK and both doors of the room open, decided on the controller");

    step(6, "Someone types a wrong PIN");
    panel
        .publish(
            format!("{prefix}/credential"),
            QoS::AtLeastOnce,
            false,
            json!({"type": "pin", "pin": "0000", "request_id": "tap-2"}).to_string(),
        )
        .await?;
    expect_mqtt(panel_seen, "panel feedback denied", |t, v| {
        // The panel is told only `denied`; ZenCore gets the precise reason.
        t.ends_with("/feedback") && v["result"] == "denied" && v["reason"] == "denied"
    })
    .await?;
    ok("panel: denied (ZenCore will hear unknown_credential); the events wait in the outbox");

    step(
        7,
        "ZenCore comes back: the queued events arrive, in order per device",
    );
    zencore.down.store(false, Ordering::SeqCst);
    expect(
        events,
        &mut backlog,
        "the unlock's device.action_completed",
        |v| {
            is(v, "device.action_completed", "front-door")
                && v["data"]["status"] == "succeeded"
                && v["data"]["source"] == "local_credential"
        },
    )
    .await?;
    expect(events, &mut backlog, "access.denied", |v| {
        is(v, "access.denied", "room-panel")
    })
    .await?;
    ok("device.action_completed (local_credential, succeeded) and access.denied delivered after the outage");

    step(8, "Later, the front door is forced open");
    // The lock locks itself again (auto-relock, as Yale and Nuki locks do); the entry grace
    // (2 s here) passes; then the door sensor says open with no unlock active.
    lock.publish(
        "zigbee2mqtt/front_door",
        QoS::AtLeastOnce,
        false,
        json!({"battery": 87, "lock_state": "locked", "state": "LOCK"}).to_string(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    door_sensor(lock, false).await?;
    let forced = expect(events, &mut backlog, "door.forced_open", |v| {
        is(v, "door.forced_open", "front-door")
    })
    .await?;
    door_sensor(lock, true).await?;
    expect(events, &mut backlog, "door.closed", |v| {
        is(v, "door.closed", "front-door")
    })
    .await?;
    ok(&format!(
        "door.forced_open (contact {}, opened at {}) and door.closed delivered, signed and verified",
        forced["data"]["contact_id"].as_str().unwrap_or("?"),
        forced["data"]["opened_at"].as_str().unwrap_or("?")
    ));
    Ok(())
}

/// The front door's Zigbee sensor reports (`contact`: true = shut); published by the lock's
/// simulator, as both are on one Zigbee network.
async fn door_sensor(lock: &AsyncClient, closed: bool) -> anyhow::Result<()> {
    let state = json!({"battery": 100, "contact": closed, "linkquality": 96, "voltage": 3025});
    lock.publish(
        "zigbee2mqtt/front_sensor",
        QoS::AtLeastOnce,
        false,
        state.to_string(),
    )
    .await?;
    Ok(())
}
