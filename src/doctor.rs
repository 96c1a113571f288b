//! `zenedge doctor`: one line per check, so that an operator (or a fleet script) sees at once
//! what is wrong on a controller. Exit 0 when every check passes, 1 otherwise.
//!
//! Checks: the config loads; the daemon answers (and its store is open, nothing quarantined, not
//! full) — or, when it is not running, the store opens; the clock is trusted; the MQTT broker
//! accepts a connection with the configured credentials; ZenCore accepts a signed `edge.test`
//! (through the daemon's outbox when it runs, else sent directly); each serial port opens
//! read-write.

use std::time::Duration;

use serde_json::Value;

use crate::access::ClockStatus;
use crate::config::Config;
use crate::event::Millis;

/// One check's verdict.
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok,
        detail: detail.into(),
    }
}

pub async fn run(config: &Config) -> Vec<Check> {
    let mut out = vec![check(
        "config",
        true,
        format!("{} devices", config.devices.len()),
    )];
    // The daemon is asked over the admin socket, as every CLI verb does (the host part of the
    // URL is not used for a Unix socket).
    let admin = "http://zenedge".to_string();
    let http = reqwest::Client::builder()
        .unix_socket(config.admin_socket().as_path())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let status: Option<Value> = match http.get(format!("{admin}/v1/status")).send().await {
        Ok(r) => r.json().await.ok(),
        Err(_) => None,
    };
    match &status {
        Some(s) => {
            let store = &s["store"];
            let quarantined = store["quarantined"].as_str();
            let full = store["full"] == true;
            let undecodable = store["undecodable_records"].as_u64().unwrap_or(0);
            out.push(check(
                "daemon",
                true,
                format!("running, version {}", s["version"].as_str().unwrap_or("?")),
            ));
            out.push(check(
                "store",
                quarantined.is_none() && !full && undecodable == 0,
                match (quarantined, full) {
                    (Some(q), _) => format!("a corrupt store was moved aside to {q}"),
                    (None, _) if undecodable > 0 => format!(
                        "{undecodable} stored record(s) cannot be decoded (zenedge status names them)"
                    ),
                    (None, true) => {
                        "FULL: new presence events are dropped, commands get 507".into()
                    }
                    (None, false) => format!(
                        "{} pending, {} dead, {} of {} bytes",
                        store["pending"],
                        store["dead"],
                        store["live_bytes"],
                        store["max_store_bytes"]
                    ),
                },
            ));
        }
        None => {
            out.push(check(
                "daemon",
                true,
                "not running (checks run on their own)",
            ));
            let dir = config.controller.state_dir.clone();
            let origin = crate::event::Origin::from_config(config);
            let opened = tokio::task::spawn_blocking(move || {
                let s = crate::store::Store::open(&dir, origin, u64::MAX)?;
                crate::daemon::check_records(&s)?;
                Ok::<_, crate::store::StoreError>((
                    s.quarantined().map(|p| p.display().to_string()),
                    s.undecodable(),
                ))
            })
            .await;
            out.push(match opened {
                Ok(Ok((None, bad))) if bad.is_empty() => check(
                    "store",
                    true,
                    format!("opens in {}", config.controller.state_dir.display()),
                ),
                Ok(Ok((None, bad))) => check(
                    "store",
                    false,
                    format!(
                        "{} record(s) cannot be decoded: {}",
                        bad.len(),
                        bad.iter()
                            .take(5)
                            .map(|u| format!("{} {} ({})", u.family, u.key, u.error))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                ),
                Ok(Ok((Some(q), _))) => {
                    check("store", false, format!("was corrupt; moved aside to {q}"))
                }
                Ok(Err(e)) => check("store", false, e.to_string()),
                Err(e) => check("store", false, e.to_string()),
            });
        }
    }
    let clock = match status
        .as_ref()
        .and_then(|s| serde_json::from_value::<ClockStatus>(s["clock"].clone()).ok())
    {
        Some(c) => Ok(c),
        None => {
            let dir = config.controller.state_dir.clone();
            let origin = crate::event::Origin::from_config(config);
            let require_sync = config.clock.require_sync;
            tokio::task::spawn_blocking(move || {
                let s = crate::store::Store::open(&dir, origin, u64::MAX)?;
                crate::clock::status_from_store(&s, require_sync)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        }
    };
    out.push(match clock {
        Ok(c) if !c.trusted && !c.synchronised && c.require_sync && c.behind_floor_ms == 0 => {
            check(
                "clock",
                false,
                format!(
                    "{}: inbound commands get 503 clock (install systemd-timesyncd)",
                    crate::cli::clock_line(&c)
                ),
            )
        }
        Ok(c) => check("clock", c.trusted, crate::cli::clock_line(&c)),
        Err(e) => check("clock", false, format!("cannot read the floor: {e}")),
    });
    for w in status
        .as_ref()
        .and_then(|s| s["warnings"].as_array())
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        out.push(check("device", false, w.to_owned()));
    }
    out.push(mqtt(config).await);
    if config.commands.transport.channel() {
        out.push(channel_seen(status.as_ref()));
        out.push(channel(config).await);
    }
    out.push(zencore(config, &http, &admin, status.is_some()).await);
    for d in &config.devices {
        let Some((port, _)) = d.serial_port() else {
            continue;
        };
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(port);
        out.push(match opened {
            Ok(_) => check(
                "serial",
                true,
                format!("{}: {} opens read-write", d.id, port.display()),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => check(
                "serial",
                false,
                format!(
                    "{}: {}: permission denied (add the user to dialout)",
                    d.id,
                    port.display()
                ),
            ),
            Err(e) => check(
                "serial",
                false,
                format!("{}: {}: {e}", d.id, port.display()),
            ),
        });
    }
    out
}

/// The command channel as the running daemon sees it.
fn channel_seen(status: Option<&Value>) -> Check {
    let Some(c) = status.map(|s| &s["channel"]).filter(|c| c.is_object()) else {
        return check("channel", false, "the daemon is not running: state unknown");
    };
    let since = c["since"].as_str().unwrap_or("-");
    if c["connected"] == true && c["subscribed"] == true {
        return check(
            "channel",
            true,
            format!("the daemon is connected to ZenCore's broker since {since}"),
        );
    }
    check(
        "channel",
        false,
        format!(
            "the daemon is not connected to ZenCore's broker (since {since}): {}",
            c["last_error"].as_str().unwrap_or("no error yet")
        ),
    )
}

/// Connects to ZenCore's broker with the channel's settings (a separate client id and a clean
/// session, so the daemon's session is left alone) and waits for its answer.
async fn channel(config: &Config) -> Check {
    let id = format!("{}-doctor", crate::channel::client_id(config));
    let o = match crate::channel::options(config, id, false) {
        Ok(o) => o,
        Err(e) => return check("channel", false, e.to_string()),
    };
    let target = config.commands.url.clone().unwrap_or_default();
    probe("channel", o, &target, crate::channel::describe).await
}

/// Connects with `o`, waits up to 5 s for the broker's answer, disconnects: the check `name`.
async fn probe(
    name: &'static str,
    o: rumqttc::MqttOptions,
    target: &str,
    describe: fn(&(dyn std::error::Error + 'static)) -> String,
) -> Check {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 10);
    let answer = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await;
    // Send the DISCONNECT before dropping the connection.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    match answer {
        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => {
            check(name, true, format!("{target} accepted the connection"))
        }
        Ok(Ok(other)) => check(name, false, format!("{target}: unexpected {other:?}")),
        Ok(Err(e)) => check(name, false, format!("{target}: {}", describe(&e))),
        Err(_) => check(name, false, format!("{target}: no answer within 5 s")),
    }
}

/// Connects with the configured client settings (a separate client id, so the daemon's session
/// is left alone) and waits for the broker's answer.
async fn mqtt(config: &Config) -> Check {
    let o = match crate::mqtt::options(config, format!("{}-doctor", config.mqtt_client_id()), false)
    {
        Ok(o) => o,
        Err(e) => return check("mqtt", false, e.to_string()),
    };
    let target = format!("{}:{}", config.mqtt.host, config.mqtt.port);
    probe("mqtt", o, &target, crate::telemetry::error_chain).await
}

async fn zencore(config: &Config, http: &reqwest::Client, admin: &str, daemon: bool) -> Check {
    let url = &config.zencore.webhook_url;
    if daemon {
        // Through the outbox: proves the daemon's own path, signatures included.
        let queued: Option<Value> = match http
            .post(format!("{admin}/v1/test-webhook"))
            .json(&serde_json::json!({"count": 1, "note": "zenedge doctor"}))
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let Some(id) = queued
            .as_ref()
            .and_then(|q| q["events"][0]["id"].as_str())
            .map(String::from)
        else {
            return check("zencore", false, "the daemon did not queue the test event");
        };
        let deadline = std::time::Instant::now() + config.zencore.timeout + Duration::from_secs(5);
        loop {
            let detail: Option<Value> =
                match http.get(format!("{admin}/v1/queue/{id}")).send().await {
                    Ok(r) => r.json().await.ok(),
                    Err(_) => None,
                };
            if let Some(d) = &detail {
                if d["state"] == "delivered" {
                    return check(
                        "zencore",
                        true,
                        format!("{url} accepted signed edge.test {id}"),
                    );
                }
                if std::time::Instant::now() >= deadline {
                    let last = d["attempts_log"].as_array().and_then(|a| a.last()).cloned();
                    return check(
                        "zencore",
                        false,
                        format!(
                            "{url}: not delivered yet ({})",
                            last.map(|l| l["error"].as_str().unwrap_or("?").to_string())
                                .unwrap_or_else(|| "no attempt yet".into())
                        ),
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // No daemon: a signed edge.test sent directly, outside the outbox (sequence 0).
    let sender = match crate::delivery::Sender::from_config(&config.zencore) {
        Ok(s) => s,
        Err(e) => return check("zencore", false, e.to_string()),
    };
    let id = format!("evt_doctor_{}", Millis::now().0);
    use crate::wire::{Data, EdgeTest, NewEvent};
    let note = "zenedge doctor".to_owned();
    let event = NewEvent::edge(Data::EdgeTest(EdgeTest { note }), Millis::now());
    let body = crate::wire::render_body(&crate::event::Origin::from_config(config), &event, &id, 0);
    let result = sender.send(&id, 1, body).await;
    match (result.status, result.error) {
        (Some(s), None) => check(
            "zencore",
            true,
            format!("{url} accepted signed edge.test (HTTP {s})"),
        ),
        (_, Some(e)) => check("zencore", false, format!("{url}: {e}")),
        (None, None) => check("zencore", false, format!("{url}: no answer")),
    }
}
