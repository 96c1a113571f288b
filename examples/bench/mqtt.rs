//! MQTT benchmark: availability change published → webhook received, at a low rate with
//! debounce 0 (p50/p99), and sustained events/s with 200 simulated devices. Needs mosquitto
//! (installed by scripts/setup-test-deps); the daemon runs in this process on its real code
//! path, the receiver in a child process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{oneshot, watch};

use crate::{now_ns, percentile, start_receiver, stop_receiver};

const DEVICES: usize = 200;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub struct Mosquitto(std::process::Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn mosquitto(dir: &Path, port: u16) -> anyhow::Result<Mosquitto> {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\nmax_queued_messages 1000000\nlog_dest none\nset_tcp_nodelay true\n"
        ),
    )?;
    let bin = if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("mosquitto (scripts/setup-test-deps installs it): {e}"))?;
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "mosquitto did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Mosquitto(child))
}

async fn publisher(port: u16) -> anyhow::Result<AsyncClient> {
    publisher_named(port, "bench-devices", 200).await
}

async fn delivered(admin: std::net::SocketAddr) -> anyhow::Result<u64> {
    let v: serde_json::Value = reqwest::get(format!("http://{admin}/v1/status"))
        .await?
        .json()
        .await?;
    Ok(v["store"]["counters"]["delivered"].as_u64().unwrap_or(0))
}

async fn wait_delivered(
    admin: std::net::SocketAddr,
    n: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while delivered(admin).await? < n {
        anyhow::ensure!(
            start.elapsed() < limit,
            "only {} of {n} delivered",
            delivered(admin).await?
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Waits until nothing is pending delivery (two reads in a row, 50 ms apart).
async fn wait_drained(admin: std::net::SocketAddr) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut quiet = 0;
    while quiet < 2 {
        let v: serde_json::Value = reqwest::get(format!("http://{admin}/v1/status"))
            .await?
            .json()
            .await?;
        quiet = if v["store"]["pending"].as_u64() == Some(0) {
            quiet + 1
        } else {
            0
        };
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "the queue never drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub async fn run(base: PathBuf, sustained: usize) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let port = free_port()?;
    let _broker = mosquitto(&base, port).await?;
    let rx = start_receiver(&base.join("arrivals.txt"))?;
    let mut text = format!(
        r#"[controller]
id = "edge-bench"
organization_id = "org"
meeting_space_id = "ms"
state_dir = "{}"
[zencore]
webhook_url = "http://127.0.0.1:{}/hook"
secret = "bench-secret-of-thirty-two-bytes"
[admin]
listen = "127.0.0.1:0"
[inbound]
listen = "127.0.0.1:0"
[mqtt]
port = {port}
[commands]
transport = "both"
url = "mqtt://127.0.0.1:{port}"
[presence]
debounce = "0s"
[clock]
require_sync = false
"#,
        base.join("state").display(),
        rx.port
    );
    text.push_str(
        "[[devices]]\nid = \"door\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\ntopic = \"door\"\n[[devices]]\nid = \"panel\"\ntype = \"panel\"\ndriver = \"zenedge-panel\"\n",
    );
    for i in 0..DEVICES {
        text.push_str(&format!(
            "[[devices]]\nid = \"dev-{i}\"\ntype = \"lock\"\ndriver = \"homeassistant\"\nstate_topic = \"bench/dev-{i}/state\"\ncommand_topic = \"bench/dev-{i}/set\"\navailability_topic = \"bench/dev-{i}/availability\"\n"
        ));
    }
    let config = zenedge::config::Config::from_toml(&text, Path::new("bench.toml"))?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = oneshot::channel();
    let daemon = tokio::spawn(zenedge::daemon::run(
        config,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
        move |bound| {
            let _ = ready_tx.send(bound);
        },
    ));
    let bound = tokio::time::timeout(Duration::from_secs(30), ready_rx).await??;
    let client = publisher(port).await?;

    // 1. Low rate: one device, each publish a transition, one every 10 ms.
    let samples = 500;
    let mut published = Vec::with_capacity(samples);
    for i in 0..samples {
        let word = if i % 2 == 0 { "online" } else { "offline" };
        published.push(now_ns());
        client
            .publish("bench/dev-0/availability", QoS::AtLeastOnce, false, word)
            .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_delivered(bound.admin, samples as u64, Duration::from_secs(60)).await?;
    let inbound = bound
        .inbound
        .ok_or_else(|| anyhow::anyhow!("the bench config serves inbound"))?;
    let access = access_latency(port, inbound, 1000).await?;
    let channel = access.2;
    // The access phases' events (thousands of action results) are all delivered before the
    // sustained phase counts its own.
    wait_drained(bound.admin).await?;
    let base_delivered = delivered(bound.admin).await?;

    // 2. Sustained: 200 devices, every message a transition, as fast as the publisher goes.
    let t0 = Instant::now();
    for i in 0..sustained {
        let device = i % DEVICES;
        // Every device starts offline or unknown here (dev-0's 500 changes ended on
        // offline), so alternating from online makes every message a transition.
        let online = (i / DEVICES).is_multiple_of(2);
        let word = if online { "online" } else { "offline" };
        client
            .publish(
                format!("bench/dev-{device}/availability"),
                QoS::AtLeastOnce,
                false,
                word,
            )
            .await?;
    }
    let publish_secs = t0.elapsed().as_secs_f64();
    wait_delivered(
        bound.admin,
        base_delivered + sustained as u64,
        Duration::from_secs(300),
    )
    .await?;
    let sustained_secs = t0.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    daemon.await??;
    let arrivals = stop_receiver(rx)?;

    let dev0: Vec<u128> = arrivals
        .iter()
        .filter(|a| a.device == "dev-0")
        .map(|a| a.at_ns)
        .take(samples)
        .collect();
    let mut lat: Vec<f64> = dev0
        .iter()
        .zip(&published)
        .map(|(a, p)| (*a as f64 - *p as f64) / 1e6)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let distinct: std::collections::HashSet<&str> =
        arrivals.iter().map(|a| a.id.as_str()).collect();
    println!(
        "| MQTT availability → webhook p50 / p99 ({} changes at 100/s, debounce 0) | {:.2} ms / {:.2} ms | p99 ≤ 20 ms |",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!(
        "| MQTT sustained, {DEVICES} devices: transitions published → all delivered | {:.0} events/s ({} in {:.1} s; publisher alone {:.0}/s) | ≥ 5,000 |",
        sustained as f64 / sustained_secs,
        sustained,
        sustained_secs,
        sustained as f64 / publish_secs
    );
    println!(
        "| MQTT events lost | {} of {} | 0 |",
        (samples + sustained).saturating_sub(distinct.len()),
        samples + sustained
    );
    println!(
        "| signed access.unlock POST → UNLOCK published, p50 / p99 ({} commands) | {:.2} ms / {:.2} ms | p99 ≤ 10 ms |",
        access.0.len(),
        percentile(&access.0, 0.5),
        percentile(&access.0, 0.99)
    );
    println!(
        "| panel credential → UNLOCK published, p50 / p99 ({} presentations) | {:.2} ms / {:.2} ms | p99 ≤ 10 ms |",
        access.1.len(),
        percentile(&access.1, 0.5),
        percentile(&access.1, 0.99)
    );
    println!(
        "| command channel: signed access.unlock published on ZenCore's broker → UNLOCK published, p50 / p99 ({} commands, loopback) | {:.2} ms / {:.2} ms | p99 ≤ 10 ms |",
        channel.unlock_ms.len(),
        percentile(&channel.unlock_ms, 0.5),
        percentile(&channel.unlock_ms, 0.99)
    );
    println!(
        "| command channel: {} commands published in a row → replied | {} replied (202) in {:.2} s ({:.0} commands/s) | all |",
        channel.burst,
        channel.replied,
        channel.burst_secs,
        channel.replied as f64 / channel.burst_secs
    );
    Ok(())
}

/// What the command channel's benchmark measured.
struct ChannelNumbers {
    unlock_ms: Vec<f64>,
    burst: usize,
    replied: usize,
    burst_secs: f64,
}

/// ZenCore on the broker: publishes signed commands as the channel carries them, counts the
/// replies with status 202.
async fn channel_latency(
    port: u16,
    key: &zenedge::signing::Key,
    commands: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    n: usize,
) -> anyhow::Result<ChannelNumbers> {
    let (replies_tx, mut replies) = tokio::sync::mpsc::unbounded_channel();
    let client = subscriber(
        port,
        "bench-zencore",
        "zencore/org/edge-bench/replies",
        move |_, p| {
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
            let _ = replies_tx.send(v["status"].as_u64().unwrap_or(0));
        },
    )
    .await?;
    let message = |i: usize, tag: &str| -> anyhow::Result<Vec<u8>> {
        let now = zenedge::event::Millis::now();
        let body = serde_json::to_vec(&serde_json::json!({"event": "access.unlock",
            "timestamp": now.rfc3339(),
            "data": {"action_id": format!("bench-{tag}-{i}"), "device_id": "door",
                     "booking_id": "b-bench",
                     "not_after": zenedge::event::Millis(now.0 + 60_000).rfc3339()}}))?;
        Ok(serde_json::to_vec(&serde_json::json!({
            "headers": {"x-webhook-signature": key.sign_hex(&body)},
            "body": String::from_utf8(body)?,
        }))?)
    };
    let topic = "zencore/org/edge-bench/commands";
    let mut unlock_ms = Vec::with_capacity(n);
    for i in 0..n {
        let payload = message(i, "one")?;
        let t = Instant::now();
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
        tokio::time::timeout(Duration::from_secs(10), commands.recv()).await?;
        unlock_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let status = tokio::time::timeout(Duration::from_secs(10), replies.recv()).await?;
        anyhow::ensure!(status == Some(202), "channel unlock answered {status:?}");
    }
    unlock_ms.sort_by(|a, b| a.total_cmp(b));
    let payloads = (0..n)
        .map(|i| message(i, "burst"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let t = Instant::now();
    for payload in payloads {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
    }
    let mut replied = 0;
    while replied < n {
        match tokio::time::timeout(Duration::from_secs(30), replies.recv()).await {
            Ok(Some(202)) => replied += 1,
            Ok(Some(other)) => anyhow::bail!("a command in the burst was answered {other}"),
            Ok(None) | Err(_) => break,
        }
    }
    let burst_secs = t.elapsed().as_secs_f64();
    while commands.try_recv().is_ok() {}
    Ok(ChannelNumbers {
        unlock_ms,
        burst: n,
        replied,
        burst_secs,
    })
}

/// A simulated lock answering every command, and a panel presenting a token: the time from a
/// signed `access.unlock` POST, and from a credential publish, to the lock's UNLOCK arriving.
async fn access_latency(
    port: u16,
    inbound: std::net::SocketAddr,
    n: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, ChannelNumbers)> {
    use sha2::Digest;
    let lock = lock_sim(port).await?;
    let (client, mut commands) = lock;
    let panel = publisher_named(port, "bench-panel", 100).await?;
    let http = reqwest::Client::new();
    let key = zenedge::signing::Key::from_secret("bench-secret-of-thirty-two-bytes")?;
    let post = |body: Vec<u8>| {
        let sig = key.sign_hex(&body);
        http.post(format!("http://{inbound}/webhooks/zencore"))
            .header("x-webhook-signature", sig)
            .body(body)
            .send()
    };
    let now = zenedge::event::Millis::now();
    let grant = serde_json::json!({"event": "access.magic_link", "timestamp": now.rfc3339(), "data": {
        "grant_id": "g-bench", "booking_id": "b-bench", "meeting_space_id": "ms",
        // Only the bench door: the 200 simulated locks share the room and would all open.
        "device_ids": ["door"],
        "token_sha256": hex::encode(sha2::Sha256::digest(b"bench-token")),
        "valid_from": zenedge::event::Millis(now.0 - 60_000).rfc3339(),
        "valid_until": zenedge::event::Millis(now.0 + 3_600_000).rfc3339()}});
    let status = post(serde_json::to_vec(&grant)?).await?.status();
    anyhow::ensure!(status.as_u16() == 202, "grant refused: {status}");
    let mut unlock_ms = Vec::with_capacity(n);
    for i in 0..n {
        let body = serde_json::json!({"event": "access.unlock",
            "timestamp": zenedge::event::Millis::now().rfc3339(),
            "data": {"action_id": format!("bench-{i}"), "device_id": "door", "booking_id": "b-bench",
                     "not_after": zenedge::event::Millis(zenedge::event::Millis::now().0 + 60_000).rfc3339()}});
        let body = serde_json::to_vec(&body)?;
        let t = Instant::now();
        let status = post(body).await?.status();
        anyhow::ensure!(status.as_u16() == 202, "unlock refused: {status}");
        tokio::time::timeout(Duration::from_secs(10), commands.recv()).await?;
        unlock_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut credential_ms = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        if std::env::var("BENCH_TRACE").is_ok() {
            eprintln!("{} publish credential", zenedge::event::Millis::now().0);
        }
        panel
            .publish(
                "zenedge/edge-bench/panels/panel/credential",
                QoS::AtLeastOnce,
                false,
                r#"{"type":"magic_link","token":"bench-token"}"#,
            )
            .await?;
        tokio::time::timeout(Duration::from_secs(10), commands.recv()).await?;
        credential_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let channel = channel_latency(port, &key, &mut commands, n).await?;
    drop(client);
    unlock_ms.sort_by(|a, b| a.total_cmp(b));
    credential_ms.sort_by(|a, b| a.total_cmp(b));
    Ok((unlock_ms, credential_ms, channel))
}

pub async fn publisher_named(port: u16, id: &str, inflight: u16) -> anyhow::Result<AsyncClient> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(inflight);
    let (client, mut eventloop) = AsyncClient::new(o, 10_000);
    // A panel that sends at once (with Nagle, every press would wait ~40 ms for a TCP ACK).
    eventloop.network_options.set_tcp_nodelay(true);
    let (tx, rx) = oneshot::channel();
    let mut tx = Some(tx);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx).await??;
    Ok(client)
}

/// A client subscribed to `topic` (the subscription acknowledged) that hands every message to
/// `on_publish`, with the client to answer on.
async fn subscriber(
    port: u16,
    id: &str,
    topic: &str,
    mut on_publish: impl FnMut(&AsyncClient, rumqttc::Publish) + Send + 'static,
) -> anyhow::Result<AsyncClient> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(200)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(o, 10_000);
    eventloop.network_options.set_tcp_nodelay(true);
    let (sub_tx, sub_rx) = oneshot::channel();
    let mut sub_tx = Some(sub_tx);
    client.subscribe(topic, QoS::AtLeastOnce).await?;
    let answer = client.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = sub_tx.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&answer, p),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), sub_rx).await??;
    Ok(client)
}

/// A Zigbee lock that reports `unlocked` for every command and tells the benchmark when a
/// command arrived.
async fn lock_sim(
    port: u16,
) -> anyhow::Result<(AsyncClient, tokio::sync::mpsc::UnboundedReceiver<()>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = subscriber(
        port,
        "bench-lock",
        "zigbee2mqtt/door/set",
        move |client, _| {
            let _ = tx.send(());
            let _ = client.try_publish(
                "zigbee2mqtt/door",
                QoS::AtMostOnce,
                false,
                r#"{"lock_state":"unlocked"}"#,
            );
        },
    )
    .await?;
    Ok((client, rx))
}
