//! The command channel (DESIGN section 2b): ZenEdge connects out to ZenCore's MQTT broker and
//! receives the same signed commands as `POST /webhooks/zencore`, for controllers behind NAT.
//!
//! Two tasks, as on the device link: the poll task owns rumqttc's event loop (it reconnects
//! with full jitter from 1 s to 2 min and never waits on the worker), and the worker handles one
//! command at a time through `inbound::accept` — the one verification chain of both transports
//! — then publishes the reply and only then acknowledges the message, so a command is durable
//! or refused before its PUBACK. After every ConnAck the worker subscribes again (a broker that
//! lost the session would otherwise send nothing) and publishes the retained `online`.

pub mod message;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS, TlsConfiguration,
    Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, Scheme};
use crate::event::Millis;
use crate::inbound::{Answer, InboundState, Via};
use crate::telemetry::{events as t, InternalEvent};

/// Commands (a snapshot's grants above all) may be far larger than rumqttc's 10 KiB default.
const MAX_PACKET: usize = 1024 * 1024;

/// The channel as `/v1/status` and `zenedge status` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStatus {
    /// `commands.url`.
    pub url: String,
    pub connected: bool,
    /// The subscription to `<prefix>/commands` is acknowledged: commands can arrive.
    pub subscribed: bool,
    /// When the channel last came up or went down.
    pub since: Option<String>,
    pub connect_attempts: u64,
    /// Commands answered over the channel since the start.
    pub commands: u64,
    pub last_error: Option<String>,
}

impl ChannelStatus {
    pub fn up(&self) -> bool {
        self.connected && self.subscribed
    }
}

/// The topics under `commands.topic_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub commands: String,
    pub replies: String,
    pub status: String,
}

impl Topics {
    pub fn of(config: &Config) -> Topics {
        let prefix = config.commands.topic_prefix.clone().unwrap_or_else(|| {
            format!(
                "zencore/{}/{}",
                config.controller.organization_id, config.controller.id
            )
        });
        Topics {
            commands: format!("{prefix}/commands"),
            replies: format!("{prefix}/replies"),
            status: format!("{prefix}/status"),
        }
    }
}

/// Why the channel could not be set up: a file or setting, named by its config key.
#[derive(Debug, thiserror::Error)]
pub enum ChannelSetupError {
    #[error("commands.url is not set")]
    NoBroker,
    #[error("commands.{key} {path}: {message}")]
    File {
        key: &'static str,
        path: std::path::PathBuf,
        message: String,
    },
    #[error("commands: TLS: {0}")]
    Tls(String),
}

/// The client id: `commands.client_id`, else `zenedge-<controller_id>-commands` (never the
/// device link's, so one broker can serve both without one evicting the other).
pub fn client_id(config: &Config) -> String {
    config
        .commands
        .client_id
        .clone()
        .unwrap_or_else(|| format!("zenedge-{}-commands", config.controller.id))
}

/// Client options from `[commands]`: broker and transport (TCP, TLS, WebSocket, through a
/// proxy), credentials, keep-alive 30 s; for the daemon (`daemon`) also its persistent session,
/// manual acks and the Last Will (doctor's own test connection gets none of them).
pub fn options(
    config: &Config,
    client_id: String,
    daemon: bool,
) -> Result<MqttOptions, ChannelSetupError> {
    let c = &config.commands;
    let broker = c.broker().ok_or(ChannelSetupError::NoBroker)?;
    let mut o = if broker.scheme.websocket() {
        MqttOptions::new(client_id, &broker.ws_url, broker.port)
    } else {
        MqttOptions::new(client_id, &broker.host, broker.port)
    };
    let tls = || tls_config(config).map(|c| TlsConfiguration::Rustls(Arc::new(c)));
    o.set_transport(match broker.scheme {
        Scheme::Mqtt => Transport::Tcp,
        Scheme::Mqtts => Transport::Tls(tls()?),
        Scheme::Ws => Transport::Ws,
        Scheme::Wss => Transport::Wss(tls()?),
    });
    if let Some((host, port)) = c.proxy_addr() {
        o.set_proxy(rumqttc::Proxy {
            ty: rumqttc::ProxyType::Http,
            auth: rumqttc::ProxyAuth::None,
            addr: host.clone(),
            port: *port,
        });
    }
    if let Some(user) = &c.username {
        o.set_credentials(
            user.clone(),
            c.password()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
        );
    }
    o.set_keep_alive(Duration::from_secs(30));
    if !daemon {
        return Ok(o);
    }
    o
        // A persistent session: commands published while ZenEdge was down or disconnected
        // arrive when it is back.
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_last_will(LastWill::new(
            Topics::of(config).status,
            message::OFFLINE,
            QoS::AtLeastOnce,
            true,
        ));
    Ok(o)
}

/// rustls with ring: the roots of `commands.ca_file`, else the system's; the client
/// certificate when set; `commands.alpn`. Never falls back to clear text.
fn tls_config(config: &Config) -> Result<rustls::ClientConfig, ChannelSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let c = &config.commands;
    // Every certificate of a PEM file, or the error that names its key and path.
    let pem_certs = |key: &'static str, path: &std::path::Path| {
        CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| file_error(key, path, e))
    };
    let mut roots = rustls::RootCertStore::empty();
    match &c.ca_file {
        Some(ca) => {
            for cert in pem_certs("ca_file", ca)? {
                roots.add(cert).map_err(|e| file_error("ca_file", ca, e))?;
            }
            if roots.is_empty() {
                return Err(ChannelSetupError::File {
                    key: "ca_file",
                    path: ca.clone(),
                    message: "no certificate in it".into(),
                });
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ChannelSetupError::Tls(
                    "no system CA certificates found; set commands.ca_file".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ChannelSetupError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut tls = match (&c.client_cert_file, &c.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = pem_certs("client_cert_file", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_error("client_key_file", key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ChannelSetupError::Tls(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = c.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(tls)
}

fn file_error(
    key: &'static str,
    path: &std::path::Path,
    e: impl std::fmt::Display,
) -> ChannelSetupError {
    ChannelSetupError::File {
        key,
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// What the poll task passes to the worker.
#[derive(Debug)]
enum LinkEvent {
    Connected,
    Subscribed,
    Message(Publish),
    /// The connection failed or was lost: why, and when the next attempt is.
    Disconnected(String, Duration),
}

/// Runs the channel until `stop` turns true: connects (and reconnects) to ZenCore's broker,
/// carries out every command, replies, keeps `<prefix>/status` true. Returns an error only when
/// it cannot be set up (the supervisor reports it and tries again).
pub async fn run(
    config: Arc<Config>,
    inbound: InboundState,
    status: watch::Sender<ChannelStatus>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let options = options(&config, client_id(&config), true)?;
    let topics = Topics::of(&config);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    eventloop.network_options.set_tcp_nodelay(true);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let poll = tokio::spawn(poll_loop(eventloop, tx));
    let _poll_guard = AbortOnDrop(poll);
    status.send_modify(|s| {
        s.url = config.commands.url.clone().unwrap_or_default();
        s.connect_attempts += 1;
        s.since.get_or_insert_with(|| Millis::now().rfc3339());
    });
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(event) = event else {
            anyhow::bail!("the command channel's poll task ended");
        };
        match event {
            LinkEvent::Connected => {
                status.send_modify(|s| {
                    s.connected = true;
                    s.subscribed = false;
                    s.last_error = None;
                });
                t::ChannelConnected {
                    url: config.commands.url.as_deref().unwrap_or_default(),
                }
                .emit();
                client.subscribe(&topics.commands, QoS::AtLeastOnce).await?;
                let online = online_message(&inbound).await;
                client
                    .publish(&topics.status, QoS::AtLeastOnce, true, online)
                    .await?;
            }
            LinkEvent::Subscribed => status.send_modify(|s| {
                s.subscribed = true;
                s.since = Some(Millis::now().rfc3339());
            }),
            LinkEvent::Disconnected(error, retry_in) => {
                let was_connected = status.borrow().connected;
                status.send_modify(|s| {
                    if s.connected {
                        s.since = Some(Millis::now().rfc3339());
                    }
                    s.connected = false;
                    s.subscribed = false;
                    s.connect_attempts += 1;
                    s.last_error = Some(error.clone());
                });
                let retry_in_ms = retry_in.as_millis() as u64;
                if was_connected {
                    t::ChannelLost {
                        error: &error,
                        retry_in_ms,
                    }
                    .emit();
                } else {
                    t::ChannelConnectFailed {
                        url: config.commands.url.as_deref().unwrap_or_default(),
                        error: &error,
                        retry_in_ms,
                    }
                    .emit();
                }
            }
            LinkEvent::Message(p) => {
                if p.topic != topics.commands {
                    // Only `<prefix>/commands` is subscribed; a broker that sends more is
                    // acknowledged and ignored.
                    client.ack(&p).await?;
                    continue;
                }
                let (request, answer) = command(&inbound, &p.payload).await;
                let reply = message::reply(request, &answer);
                client
                    .publish(&topics.replies, QoS::AtLeastOnce, false, reply)
                    .await?;
                // The PUBACK only now: the command is durable (or refused) and answered.
                client.ack(&p).await?;
                status.send_modify(|s| s.commands += 1);
            }
        }
    }
    // A clean stop says offline itself (the Last Will is for the unclean ones).
    let _ = client
        .publish(&topics.status, QoS::AtLeastOnce, true, message::OFFLINE)
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = client.disconnect().await;
        // The poll task sends both, then the link ends.
        while let Some(event) = rx.recv().await {
            if matches!(event, LinkEvent::Disconnected(..)) {
                break;
            }
        }
    })
    .await;
    Ok(())
}

/// One message from `<prefix>/commands`: its reply's request and the answer.
async fn command(inbound: &InboundState, payload: &[u8]) -> (serde_json::Value, Answer) {
    let message = match message::parse(payload) {
        Ok(m) => m,
        Err(error) => {
            t::ChannelMessageRefused { error: &error.0 }.emit();
            return (
                serde_json::Value::Null,
                crate::inbound::refused(Via::Mqtt, 400, &error.0),
            );
        }
    };
    let request = message::request_of(&message);
    let answer = crate::inbound::accept(inbound, &message.headers, &message.body, Via::Mqtt).await;
    (request, answer)
}

/// The retained `online`: the version, the last sequence and the digest of the stored grants.
async fn online_message(inbound: &InboundState) -> Vec<u8> {
    let last = inbound.store.last_sequence();
    let grants = inbound
        .store
        .read(|s| s.records::<crate::access::Grant>())
        .await
        .unwrap_or_default();
    message::online(last, message::grants_digest(grants.iter().map(|(_, g)| g)))
}

async fn poll_loop(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<LinkEvent>) {
    let mut backoff = message::Backoff::new();
    loop {
        let sent = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.connected();
                tx.send(LinkEvent::Connected)
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => tx.send(LinkEvent::Subscribed),
            Ok(Event::Incoming(Packet::Publish(p))) => tx.send(LinkEvent::Message(p)),
            Ok(_) => Ok(()),
            Err(e) => {
                let error = describe(&e);
                let delay = backoff.failed(rand::rng().random_range(0.0..1.0));
                let sent = tx.send(LinkEvent::Disconnected(error, delay));
                tokio::time::sleep(delay).await;
                sent
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// A connection error as an operator reads it: the chain without its repetitions, and for a
/// certificate the broker presented that is not accepted, what that means.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    let text = parts.join(": ");
    let hint = if text.contains("UnknownIssuer") {
        "the broker's certificate is not signed by a CA ZenEdge trusts (commands.ca_file, else \
         the system's CAs)"
    } else if text.contains("NotValidForName") {
        "the broker's certificate is not for the host name in commands.url"
    } else if text.contains("Expired") || text.contains("NotValidYet") {
        "the broker's certificate is out of its validity period (or the controller clock is wrong)"
    } else if text.contains("certificate") {
        "the broker's certificate was refused"
    } else {
        return text;
    };
    format!("{hint}: {text}")
}

/// Ends the poll task with the worker (on a stop, an error or a panic).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
