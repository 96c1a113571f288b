//! ZenCore's side of the command channel for tests: its own mosquitto (TLS with openssl-made
//! certificates, MQTT over WebSocket with TLS, a password for everyone), a stand-in that
//! publishes signed commands and reads replies and status, and a small HTTP CONNECT proxy.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{free_port, make_certs, Broker, Peer};

pub const USER: &str = "edge-test";
pub const PASSWORD: &str = "channel-password-for-tests";
/// The topic prefix of the test controller (`zencore/<organization_id>/<controller_id>`).
pub const PREFIX: &str = "zencore/org-test/edge-test";

/// ZenCore's broker: `broker.port` speaks MQTT over TLS, `ws_port` MQTT over WebSocket over
/// TLS, `plain_port` plain MQTT on loopback for the stand-in. Everyone logs in as [`USER`].
pub struct ZenCoreBroker {
    pub broker: Broker,
    pub ca: PathBuf,
    pub ws_port: u16,
    pub plain_port: u16,
    /// MQTT over TLS for clients with a certificate signed by the test CA (no password).
    pub cert_port: u16,
    pub certs: PathBuf,
}

impl ZenCoreBroker {
    pub async fn start(dir: &Path) -> ZenCoreBroker {
        let dir = dir.join("zencore-broker");
        std::fs::create_dir_all(&dir).unwrap();
        let certs = make_certs(&dir);
        let passwd = dir.join("passwd");
        let status = std::process::Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([USER, PASSWORD])
            .status()
            .expect("mosquitto_passwd is installed by scripts/setup-test-deps");
        assert!(status.success());
        let tls = format!(
            "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n",
            certs.display()
        );
        let extra = || {
            let (ws_port, plain_port, cert_port) =
                (free_port().port(), free_port().port(), free_port().port());
            let lines = format!(
                "{tls}password_file {passwd}\n\
             listener {ws_port} 127.0.0.1\nprotocol websockets\n\
             certfile {c}/server.pem\nkeyfile {c}/server.key\n\
             listener {plain_port} 127.0.0.1\n\
             listener {cert_port} 127.0.0.1\n{tls}require_certificate true\n\
             use_identity_as_username true\n",
                passwd = passwd.display(),
                c = certs.display()
            );
            (lines, vec![ws_port, plain_port, cert_port])
        };
        let broker = Broker::start_listening(&dir, extra, false).await;
        let [ws_port, plain_port, cert_port] = broker.listeners[..] else {
            unreachable!("three listeners were asked for")
        };
        ZenCoreBroker {
            broker,
            ca: certs.join("ca.pem"),
            ws_port,
            plain_port,
            cert_port,
            certs,
        }
    }

    /// The `[commands]` section that reaches this broker at `url` (TLS with the test CA).
    pub fn commands(&self, transport: &str, url: &str, extra: &str) -> String {
        format!(
            "\n[commands]\ntransport = \"{transport}\"\nurl = \"{url}\"\nca_file = \"{ca}\"\n\
             username = \"{USER}\"\npassword = \"{PASSWORD}\"\n{extra}\n",
            ca = self.ca.display()
        )
    }

    /// The `[commands]` section that logs in with the test client certificate instead of a
    /// password.
    pub fn commands_with_certificate(&self) -> String {
        format!(
            "\n[commands]\ntransport = \"mqtt\"\nurl = \"mqtts://127.0.0.1:{port}\"\n\
             ca_file = \"{c}/ca.pem\"\nclient_cert_file = \"{c}/client.pem\"\n\
             client_key_file = \"{c}/client.key\"\n",
            port = self.cert_port,
            c = self.certs.display()
        )
    }

    pub fn mqtts(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.broker.port)
    }

    pub fn wss(&self) -> String {
        format!("wss://127.0.0.1:{}/mqtt", self.ws_port)
    }

    /// ZenCore's stand-in, subscribed to the controller's replies and status.
    pub async fn zencore(&self) -> ZenCore {
        let mut peer = Peer::connect_as(self.plain_port, "zencore", Some((USER, PASSWORD))).await;
        peer.subscribe(&format!("{PREFIX}/replies")).await;
        peer.subscribe(&format!("{PREFIX}/status")).await;
        ZenCore {
            peer,
            replies: Vec::new(),
            statuses: Vec::new(),
        }
    }
}

/// ZenCore on its broker: publishes commands, keeps every reply and status it reads.
pub struct ZenCore {
    pub peer: Peer,
    pub replies: Vec<Value>,
    /// Every `<prefix>/status` message, with whether it came retained.
    pub statuses: Vec<(Value, bool)>,
}

/// A command as the channel carries it, signed (hex scheme) with `secret` (None: unsigned).
pub fn message(body: &[u8], secret: Option<&str>) -> Vec<u8> {
    let mut headers = serde_json::Map::new();
    headers.insert("Content-Type".into(), json!("application/json"));
    if let Some(secret) = secret {
        let key = zenedge::signing::Key::from_secret(secret).unwrap();
        headers.insert("X-Webhook-Signature".into(), json!(key.sign_hex(body)));
    }
    serde_json::to_vec(&json!({
        "headers": headers,
        "body": String::from_utf8(body.to_vec()).unwrap(),
    }))
    .unwrap()
}

impl ZenCore {
    pub async fn publish(&self, payload: Vec<u8>) {
        self.peer
            .publish(&format!("{PREFIX}/commands"), payload, false)
            .await;
    }

    /// Reads what arrives until `done` holds for the replies and statuses seen so far.
    pub async fn until(&mut self, what: &str, done: impl Fn(&[Value], &[(Value, bool)]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done(&self.replies, &self.statuses) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; replies {:?}; statuses {:?}",
                self.replies,
                self.statuses
            );
            let Some((topic, payload, retained)) = self.peer.try_next(left).await else {
                continue;
            };
            let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
            if topic.ends_with("/replies") {
                self.replies.push(v);
            } else {
                self.statuses.push((v, retained));
            }
        }
    }

    /// Publishes `payload` and waits for the reply that names `request` (the body `id` when
    /// the test gives one); returns it.
    pub async fn ask(&mut self, payload: Vec<u8>, request: &Value) -> Value {
        let before = self.replies.len();
        self.publish(payload).await;
        self.until(&format!("the reply to {request}"), |r, _| {
            r[before..].iter().any(|x| &x["request"] == request)
        })
        .await;
        self.replies[before..]
            .iter()
            .find(|x| &x["request"] == request)
            .cloned()
            .unwrap()
    }

    /// The newest status whose `state` is `state`.
    pub async fn status(&mut self, state: &str) -> Value {
        let before = self.statuses.len();
        self.until(&format!("status {state}"), |_, s| {
            s[before..].iter().any(|(v, _)| v["state"] == state)
        })
        .await;
        self.statuses[before..]
            .iter()
            .rev()
            .find(|(v, _)| v["state"] == state)
            .map(|(v, _)| v.clone())
            .unwrap()
    }
}

/// An HTTP CONNECT proxy on loopback that counts the tunnels it opened.
pub struct Proxy {
    pub port: u16,
    pub tunnels: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tunnels = Arc::new(AtomicUsize::new(0));
        let counted = tunnels.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        if client.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let target = text
                        .strip_prefix("CONNECT ")
                        .and_then(|rest| rest.split_whitespace().next())
                        .map(str::to_owned);
                    let Some(target) = target else {
                        let _ = client.write_all(b"HTTP/1.1 405 CONNECT only\r\n\r\n").await;
                        return;
                    };
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        Proxy {
            port,
            tunnels,
            task,
        }
    }
}

/// The TCP ports process `pid` listens on (from /proc: its socket inodes in LISTEN state).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy().to_string();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(inode.to_owned());
                }
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode.
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                if let Some(port) = f[1].rsplit(':').next() {
                    ports.push(u16::from_str_radix(port, 16).unwrap());
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// A TLS front on loopback, as AWS IoT's port 443 is: it speaks TLS with the test server
/// certificate, records the ALPN protocol each client negotiated (it offers only `alpn`), and
/// passes the bytes on to plain MQTT at `upstream`.
pub async fn alpn_front(
    certs: &Path,
    upstream: u16,
    alpn: &str,
) -> (u16, Arc<std::sync::Mutex<Vec<Option<String>>>>) {
    let (chain, key) = super::server_certificate(certs);
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, record) = (acceptor.clone(), record.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let negotiated = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).to_string());
                record.lock().unwrap().push(negotiated);
                let Ok(mut broker) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    (port, seen)
}
