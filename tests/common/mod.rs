//! Test harness: a scriptable ZenCore stand-in on 127.0.0.1:0, config files, and the real
//! binary as a child process.
#![allow(dead_code)]

pub mod channel;
pub mod serial;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

pub const SECRET: &str = "test-secret-of-thirty-two-bytes";

/// What the receiver answers to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Status(u16),
    /// A status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// Never answer (until the client gives up).
    Hang,
    /// Answer 200 after this many milliseconds.
    SlowOk(u64),
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: String,
    pub attempt: u32,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub at: Instant,
    pub reply: Reply,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }

    pub fn sequence(&self) -> u64 {
        self.json()["data"]["sequence"].as_u64().expect("sequence")
    }

    pub fn device(&self) -> Option<String> {
        self.json()["data"]["device_id"].as_str().map(String::from)
    }

    /// Checks both signature schemes against `secret`, as a ZenCore integrator would.
    pub fn signatures_verify(&self, secret: &str) -> bool {
        let key = zenedge::signing::Key::from_secret(secret).unwrap();
        let hex_ok = self
            .header("x-webhook-signature")
            .is_some_and(|s| key.verify_hex(&self.body, s));
        let ts: i64 = self
            .header("webhook-timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or(-1);
        let v1_ok = self.header("webhook-signature").is_some_and(|s| {
            key.verify_v1(self.header("webhook-id").unwrap_or(""), ts, &self.body, s)
        });
        hex_ok && v1_ok
    }
}

type Script = Box<dyn FnMut(&Recorded) -> Reply + Send>;

#[derive(Clone)]
struct Shared {
    log: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<Script>>,
    changed: watch::Sender<usize>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut rec = Recorded {
        id: find("x-webhook-id"),
        attempt: find("x-webhook-attempt").parse().unwrap_or(0),
        body: body.to_vec(),
        headers: headers.clone(),
        at: Instant::now(),
        reply: Reply::Status(200),
    };
    let reply = (s.script.lock().unwrap())(&rec);
    rec.reply = reply;
    {
        let mut log = s.log.lock().unwrap();
        log.push(rec);
        s.changed.send_replace(log.len());
    }
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::RetryAfter(code, secs) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Reply::SlowOk(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            StatusCode::OK.into_response()
        }
    }
}

impl Receiver {
    /// A receiver that answers every request with whatever `script` says.
    pub async fn start(script: impl FnMut(&Recorded) -> Reply + Send + 'static) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (changed, _) = watch::channel(0);
        let shared = Shared {
            log: Arc::default(),
            script: Arc::new(Mutex::new(Box::new(script))),
            changed,
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_script(&self, script: impl FnMut(&Recorded) -> Reply + Send + 'static) {
        *self.shared.script.lock().unwrap() = Box::new(script);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the requests so far; panics after `limit` with what arrived.
    pub async fn wait_until(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let log = self.requests();
            if done(&log) {
                return log;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                let summary: Vec<_> = log
                    .iter()
                    .map(|r| format!("{}#{}→{:?}", r.id, r.attempt, r.reply))
                    .collect();
                panic!(
                    "timed out after {limit:?} waiting for {what}; {} requests: {summary:?}",
                    log.len()
                );
            }
        }
    }

    /// Distinct event ids that were answered 2xx.
    pub fn delivered_ids(&self) -> std::collections::BTreeSet<String> {
        self.requests()
            .iter()
            .filter(|r| matches!(r.reply, Reply::Status(200..=299) | Reply::SlowOk(_)))
            .map(|r| r.id.clone())
            .collect()
    }
}

/// A config for tests: fast backoff, the receiver's URL, state in `dir`.
pub fn config_text(dir: &Path, webhook_url: &str, admin: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[controller]
id = "edge-test"
organization_id = "org-test"
meeting_space_id = "ms-test"
state_dir = "{state}"

[zencore]
webhook_url = "{webhook_url}"
secret = "{SECRET}"
timeout = "2s"

[delivery]
concurrency = 4
initial_backoff = "20ms"
max_backoff = "200ms"

[inbound]
listen = "127.0.0.1:0"

[admin]
listen = "{admin}"

[clock]
require_sync = false
{extra}
"#,
        state = dir.join("state").display()
    )
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A loopback port that was free a moment ago.
/// A loopback port nobody listens on, chosen below the kernel's ephemeral range: a port from
/// `bind(0)` comes from that range, and once released it can become the local port of any
/// outgoing connection on the machine before the broker or daemon given it binds it (which
/// then fails with "address in use" — one CI run lost a test to this).
pub fn free_port() -> SocketAddr {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|low| *low > 12_000)
        .unwrap_or(32_768);
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = rand::random_range(10_000..low);
        if given.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            given.push(port);
            return l.local_addr().unwrap();
        }
    }
}

/// An HTTP client for talking to the daemon (rustls needs its ring provider installed first).
pub fn client() -> reqwest::Client {
    zenedge::delivery::install_crypto_provider();
    reqwest::Client::new()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_zenedge")
}

/// Runs a CLI verb to completion: (exit code, stdout, stderr).
pub fn zenedge(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The daemon as a child process, killed on drop.
pub struct Daemon {
    pub child: Child,
    /// The read-only TCP port (`/healthz`, `/metrics`, `/v1/status`).
    pub admin: SocketAddr,
    /// The admin socket, where everything else is served.
    pub socket: PathBuf,
}

/// The admin socket of the config at `config` (its default when the config does not load).
pub fn admin_socket(config: &Path) -> PathBuf {
    match zenedge::config::Config::load(config) {
        Ok(c) => c.admin_socket(),
        Err(_) => config.parent().unwrap().join("state").join("admin.sock"),
    }
}

/// A client of the admin socket at `socket`; URLs are `http://zenedge/...`.
pub fn socket_client(socket: &Path) -> reqwest::Client {
    zenedge::delivery::install_crypto_provider();
    reqwest::Client::builder()
        .unix_socket(socket)
        .build()
        .unwrap()
}

impl Daemon {
    /// Starts `zenedge run` without waiting for it to become healthy (for configs that must
    /// not); killed on drop like any other.
    pub fn spawn(config: &Path, admin: SocketAddr) -> Daemon {
        let child = Command::new(bin())
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon {
            child,
            admin,
            socket: admin_socket(config),
        }
    }

    /// Waits until `/v1/status` satisfies `done`; returns that status.
    pub async fn wait_status(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = serde_json::Value::Null;
        loop {
            if let Ok(r) = client()
                .get(format!("http://{}/v1/status", self.admin))
                .send()
                .await
            {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if done(&v) {
                        return v;
                    }
                    last = v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {last}"
            );
            // The status has no push channel; poll it briefly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts `zenedge run` and waits until `/healthz` answers 200.
    pub async fn start(config: &Path, admin: SocketAddr) -> Daemon {
        match Daemon::try_start(config, admin).await {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Daemon::start`]; an early exit is an error carrying the daemon's log.
    pub async fn try_start(config: &Path, admin: SocketAddr) -> Result<Daemon, String> {
        Daemon::try_start_with(config, admin, &[]).await
    }

    /// Like [`Daemon::try_start`], with extra environment variables for the daemon.
    pub async fn try_start_with(
        config: &Path,
        admin: SocketAddr,
        env: &[(String, String)],
    ) -> Result<Daemon, String> {
        let log = config.with_extension("log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(bin())
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            admin,
            socket: admin_socket(config),
        };
        d.wait_healthy(&log).await?;
        Ok(d)
    }

    async fn wait_healthy(&mut self, log: &Path) -> Result<(), String> {
        let client = client();
        // Generous: a restart on LazyFS with a backlog to replay, on a loaded 2-core machine,
        // has been seen to take over 30 s (CI, with a build running beside it).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "daemon exited with {status} before it was healthy:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                ));
            }
            let url = format!("http://{}/healthz", self.admin);
            let mut last = String::from("no answer");
            if let Ok(r) = client.get(&url).send().await {
                if r.status() == 200 {
                    return Ok(());
                }
                last = format!("{} {}", r.status(), r.text().await.unwrap_or_default());
            }
            if Instant::now() >= deadline {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "daemon never became healthy (last /healthz: {last}); its log ends:\n{}",
                    tail.join("\n")
                );
            }
            // Readiness has no push channel to a child process; poll /healthz briefly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY-free: use the kill command to stay without a libc dependency.
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }

    /// A client of this daemon's admin socket; see [`Daemon::url`].
    pub fn admin_client(&self) -> reqwest::Client {
        socket_client(&self.socket)
    }

    /// The URL of `path` on the admin socket.
    pub fn url(&self, path: &str) -> String {
        format!("http://zenedge{path}")
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        self.admin_client()
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .admin_client()
            .get(self.url(path))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real mosquitto on a free loopback port, with persistence in its own folder.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// Extra mosquitto.conf lines (e.g. a password file).
    extra: String,
    /// The ports of the extra lines' own listeners, waited on like `port`.
    listeners: Vec<u16>,
    anonymous: bool,
}

fn mosquitto_bin() -> &'static str {
    if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

impl Broker {
    pub async fn start(dir: &Path) -> Broker {
        Broker::start_with(dir, "", true).await
    }

    /// A broker that only lets `user`/`password` in.
    pub async fn with_password(dir: &Path, user: &str, password: &str) -> Broker {
        let file = dir.join("mosquitto.passwd");
        let status = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&file)
            .args([user, password])
            .status()
            .unwrap();
        assert!(status.success());
        let extra = format!("password_file {}\n", file.display());
        Broker::start_with(dir, &extra, false).await
    }

    /// A broker that speaks only MQTT over TLS, with a server certificate for 127.0.0.1 signed by
    /// a CA made for the test ([`make_certs`]). Returns the broker and the CA's PEM path.
    pub async fn with_tls(dir: &Path) -> (Broker, PathBuf) {
        let certs = make_certs(dir);
        let extra = format!(
            "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n",
            certs.display()
        );
        (
            Broker::start_with(dir, &extra, true).await,
            certs.join("ca.pem"),
        )
    }

    /// A CA that signed nothing this broker presents (for the wrong-CA case).
    pub fn unrelated_ca(dir: &Path) -> PathBuf {
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "other.key",
                "-out",
                "other-ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Someone Else",
            ])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success());
        dir.join("other-ca.pem")
    }

    async fn start_with(dir: &Path, extra: &str, anonymous: bool) -> Broker {
        Broker::start_listening(dir, || (extra.to_string(), Vec::new()), anonymous).await
    }

    /// Starts mosquitto with `extra()`'s lines and listeners; if it ends before every listener
    /// is up (a port taken in the meantime), tries again on fresh ports.
    pub async fn start_listening(
        dir: &Path,
        extra: impl Fn() -> (String, Vec<u16>),
        anonymous: bool,
    ) -> Broker {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().port();
            let (extra, listeners) = extra();
            let dir = dir.join(format!("broker-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut b = Broker {
                child: None,
                port,
                dir,
                extra,
                listeners,
                anonymous,
            };
            match b.try_spawn().await {
                Ok(()) => return b,
                Err(log) => last = log,
            }
        }
        panic!("mosquitto did not start; its log:\n{last}");
    }

    async fn spawn(&mut self) {
        if let Err(log) = self.try_spawn().await {
            panic!("mosquitto did not start again; its log:\n{log}");
        }
    }

    /// Err: mosquitto's log, when it ended or did not listen on every port within 10 s.
    async fn try_spawn(&mut self) -> Result<(), String> {
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous {}\npersistence true\npersistence_location {}/\nautosave_interval 1\nuser root\nlog_dest file {}/mosquitto.log\nmax_queued_messages 100000\nset_tcp_nodelay true\n{}",
                self.port,
                self.anonymous,
                self.dir.display(),
                self.dir.display(),
                self.extra
            ),
        )
        .unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed by scripts/setup-test-deps");
        self.child = Some(child);
        let log_file = self.dir.join("mosquitto.log");
        let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(10);
        let ports: Vec<u16> = std::iter::once(self.port)
            .chain(self.listeners.iter().copied())
            .collect();
        for port in ports {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                let ended = self
                    .child
                    .as_mut()
                    .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
                if ended || Instant::now() >= deadline {
                    self.kill();
                    return Err(log());
                }
                // The broker has no readiness signal but its ports.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Mosquitto opens its listeners one after another and ends when one cannot be bound, so
        // a port that answered may have been someone else's: it must still be running now that
        // the last one is open.
        let ended = self
            .child
            .as_mut()
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
        if ended {
            self.kill();
            return Err(log());
        }
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn config(&self) -> String {
        format!("\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A simulated device (or any MQTT peer) on the test broker.
pub struct Peer {
    pub client: rumqttc::AsyncClient,
    messages: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>,
    subacks: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Peer {
    pub async fn connect(port: u16, id: &str) -> Peer {
        Peer::connect_as(port, id, None).await
    }

    /// Like [`Peer::connect`], logging in with `login` (username, password).
    pub async fn connect_as(port: u16, id: &str, login: Option<(&str, &str)>) -> Peer {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        if let Some((user, password)) = login {
            o.set_credentials(user, password);
        }
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 1024);
        eventloop.network_options.set_tcp_nodelay(true);
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let (sub_tx, subacks) = watch::channel(0usize);
        let (conn_tx, mut connected) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        conn_tx.send_replace(true);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        sub_tx.send_modify(|n| *n += 1);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.retain));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), connected.wait_for(|c| *c))
            .await
            .expect("peer connects")
            .unwrap();
        Peer {
            client,
            messages,
            subacks,
            task,
        }
    }

    pub async fn subscribe(&mut self, topic: &str) {
        let before = *self.subacks.borrow();
        self.client
            .subscribe(topic, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            self.subacks.wait_for(|n| *n > before),
        )
        .await
        .expect("suback")
        .unwrap();
    }

    /// Publishes at QoS 0: no acknowledgement, no redelivery (what a flood uses).
    pub async fn publish_qos0(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, rumqttc::QoS::AtMostOnce, false, payload.into())
            .await
            .unwrap();
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.into())
            .await
            .unwrap();
    }

    /// The next message on a subscribed topic, if one comes within `limit`.
    pub async fn try_next(&mut self, limit: Duration) -> Option<(String, Vec<u8>, bool)> {
        tokio::time::timeout(limit, self.messages.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message on a subscribed topic.
    pub async fn next(&mut self, limit: Duration) -> (String, Vec<u8>, bool) {
        tokio::time::timeout(limit, self.messages.recv())
            .await
            .expect("a message")
            .expect("peer running")
    }
}

/// A simulated Zigbee lock (`zigbee2mqtt/front_door`) that unlocks when told, counting the
/// commands it got.
pub async fn zigbee_lock(
    port: u16,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<usize>,
) {
    let mut peer = Peer::connect(port, "sim-lock").await;
    peer.subscribe("zigbee2mqtt/front_door/set").await;
    let (tx, rx) = tokio::sync::watch::channel(0usize);
    let task = tokio::spawn(async move {
        loop {
            let (_, payload, _) = peer.next(Duration::from_secs(3600)).await;
            tx.send_modify(|n| *n += 1);
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            let state = if v["state"] == "UNLOCK" {
                "unlocked"
            } else {
                "locked"
            };
            peer.publish(
                "zigbee2mqtt/front_door",
                format!(r#"{{"lock_state":"{state}"}}"#),
                false,
            )
            .await;
        }
    });
    (task, rx)
}

/// Events of one kind for one device, in arrival order, as (event, reason-or-status).
pub fn device_events(log: &[Recorded], device: &str) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    log.iter()
        .filter(|r| seen.insert(r.id.clone()))
        .map(|r| r.json())
        .filter(|j| j["data"]["device_id"] == device)
        .map(|j| {
            let detail = j["data"]["reason"]
                .as_str()
                .or(j["data"]["status"].as_str())
                .unwrap_or("")
                .to_string();
            (j["event"].as_str().unwrap_or("").to_string(), detail)
        })
        .collect()
}

/// A whole room: receiver, broker, the real daemon, and a known inbound address.
pub struct Rig {
    pub rx: Receiver,
    pub broker: Broker,
    pub daemon: Daemon,
    pub config: PathBuf,
    pub inbound: SocketAddr,
    pub dir: tempfile::TempDir,
    /// Extra environment of every daemon this rig starts.
    pub env: Vec<(String, String)>,
}

pub async fn rig(devices: &str) -> Rig {
    rig_with(devices, Vec::new()).await
}

/// A rig whose daemons run with `env` added to their environment.
pub async fn rig_with(devices: &str, env: Vec<(String, String)>) -> Rig {
    rig_edited(devices, env, |text| text).await
}

/// A rig whose config text goes through `edit` before the daemon starts.
pub async fn rig_edited(
    devices: &str,
    env: Vec<(String, String)>,
    edit: impl FnOnce(String) -> String,
) -> Rig {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path()).await;
    let extra = format!("{}{}", broker.config(), devices);
    // The ports are chosen (and chosen again if taken) by `start_on_fresh_ports`.
    let text = edit(config_text(dir.path(), &rx.url(), free_port(), &extra));
    let config = write_config(dir.path(), &text);
    let mut inbound = free_port();
    let daemon = start_on_fresh_ports(&config, &mut inbound, &env).await;
    Rig {
        rx,
        broker,
        daemon,
        config,
        inbound,
        dir,
        env,
    }
}

impl Rig {
    /// The first delivered event of this kind (its JSON body).
    pub fn first(&self, event: &str) -> serde_json::Value {
        self.rx
            .requests()
            .iter()
            .map(|x| x.json())
            .find(|j| j["event"] == event)
            .unwrap_or_else(|| panic!("no {event} delivered"))
    }

    /// Waits for `event` with `detail` from `device`; on timeout the panic shows the device's
    /// events and the daemon's status.
    pub async fn wait_event(&self, device: &str, event: &str, detail: &str) {
        let want = (event.to_string(), detail.to_string());
        let mut changed = self.rx.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if device_events(&self.rx.requests(), device).contains(&want) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                let (_, status) = self.daemon.get("/v1/status").await;
                let (_, devices) = self.daemon.get("/v1/devices").await;
                panic!(
                    "timed out waiting for {device} {event} {detail}; its events: {:?}; status: {status}; devices: {devices}",
                    device_events(&self.rx.requests(), device)
                );
            }
        }
    }

    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let cfg = self.config.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            zenedge(&cfg, &a)
        })
        .await
        .unwrap()
    }

    /// Replaces `from` with `to` in the config file (which must contain it); the daemon sees
    /// it at its next start.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "the config has no {from:?}");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    /// SIGKILLs the daemon and starts it again.
    pub async fn restart(&mut self) {
        self.daemon.sigkill();
        self.start_daemon().await;
    }

    /// Starts the daemon (after it was stopped or killed) on fresh admin and inbound ports: a
    /// port freed a moment ago may already be another test's, or an outgoing connection's.
    pub async fn start_daemon(&mut self) {
        self.daemon = start_on_fresh_ports(&self.config, &mut self.inbound, &self.env).await;
    }

    /// The daemon's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.daemon.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// POSTs a command to the inbound endpoint; `sign` chooses the secret (None: unsigned).
    pub async fn command(
        &self,
        body: &[u8],
        sign: Option<&str>,
        extra: &[(&str, String)],
    ) -> (u16, serde_json::Value) {
        let mut req = client()
            .post(format!("http://{}/webhooks/zencore", self.inbound))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(secret) = sign {
            let key = zenedge::signing::Key::from_secret(secret).unwrap();
            req = req.header("x-webhook-signature", key.sign_hex(body));
        }
        for (k, v) in extra {
            req = req.header(*k, v);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }
}

/// Starts the daemon of `config` on newly chosen admin and inbound ports. `free_port` only says
/// a port was free a moment ago; when a parallel test took it meanwhile ("already in use"),
/// try again with others.
async fn start_on_fresh_ports(
    config: &Path,
    inbound: &mut SocketAddr,
    env: &[(String, String)],
) -> Daemon {
    let mut last = String::new();
    for _ in 0..3 {
        let (admin, new_inbound) = (free_port(), free_port());
        let text = std::fs::read_to_string(config).unwrap();
        let text = set_listen(&text, "[admin]", admin);
        let text = set_listen(&text, "[inbound]", new_inbound);
        std::fs::write(config, text).unwrap();
        *inbound = new_inbound;
        match Daemon::try_start_with(config, admin, env).await {
            Ok(d) => return d,
            Err(e) if e.contains("already in use") => last = e,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free ports after three tries: {last}")
}

/// `text` with the `listen` line of `section` set to `addr`.
fn set_listen(text: &str, section: &str, addr: SocketAddr) -> String {
    let mut out = Vec::new();
    let mut in_section = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_section = line.trim() == section;
        }
        // `listen = ""` (no endpoint at all) stays as it is.
        if in_section && line.trim_start().starts_with("listen") && !line.contains("\"\"") {
            out.push(format!("listen = \"{addr}\""));
        } else {
            out.push(line.to_owned());
        }
    }
    out.join("\n") + "\n"
}

/// Lowercase hex SHA-256 of a token or PIN, as ZenCore sends it.
pub fn sha(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// RFC 3339 time `offset_s` seconds from now.
pub fn at(offset_s: i64) -> String {
    let now = zenedge::event::Millis::now().0 as i64;
    zenedge::event::Millis((now + offset_s * 1000) as u64).rfc3339()
}

/// An inbound command body stamped now.
pub fn command_body(event: &str, data: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "event": event,
        "timestamp": zenedge::event::Millis::now().rfc3339(),
        "data": data
    }))
    .unwrap()
}

/// Test certificates made with openssl: a CA, a server certificate for 127.0.0.1 and a client
/// certificate, all signed by the CA. Returns the folder holding ca.pem, server.pem/.key and
/// client.pem/.key.
pub fn make_certs(dir: &Path) -> PathBuf {
    let tls = dir.join("certs");
    std::fs::create_dir_all(&tls).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&tls)
            .output()
            .expect("openssl is installed by scripts/setup-test-deps");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ZenEdge Test CA",
    ]);
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"),
        ("client", "subjectAltName=DNS:edge-test\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(tls.join(format!("{name}.cnf")), ext).unwrap();
        run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={name}")]);
        run(&["x509", "-req", "-in", &format!("{name}.csr"), "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &format!("{name}.pem"), "-days", "2", "-extfile", &format!("{name}.cnf")]);
    }
    tls
}

/// The test server certificate's chain and key (from [`make_certs`]'s folder), with the ring
/// provider installed.
pub fn server_certificate(
    certs: &Path,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    zenedge::delivery::install_crypto_provider();
    let chain = CertificateDer::pem_file_iter(certs.join("server.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(certs.join("server.key")).unwrap();
    (chain, key)
}

/// The receiver behind HTTPS: TLS on 127.0.0.1 with `certs`' server certificate; with
/// `require_client`, only clients with a certificate signed by the test CA get through.
pub async fn https_front(receiver: &Receiver, certs: &Path, require_client: bool) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let (chain, key) = server_certificate(certs);
    let builder = rustls::ServerConfig::builder();
    let builder = if require_client {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
                .build()
                .unwrap(),
        )
    } else {
        builder.with_no_client_auth()
    };
    let config = std::sync::Arc::new(builder.with_single_cert(chain, key).unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = receiver.addr;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // Terminate TLS and pass the bytes on to the plain receiver.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// The LD_PRELOAD clock of `tests/shim/clock.c`, built into `dir`: the daemon's wall clock and
/// the kernel's "synchronised" flag as the returned control file says (see [`set_clock`]).
pub fn clock_shim(dir: &Path) -> (Vec<(String, String)>, PathBuf) {
    let so = dir.join("clock-shim.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/shim/clock.c");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("cc (gcc) builds the test clock shim");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let control = dir.join("clock-control");
    set_clock(&control, 0, false);
    let env = vec![
        ("LD_PRELOAD".to_string(), so.display().to_string()),
        (
            "ZENEDGE_TEST_CLOCK".to_string(),
            control.display().to_string(),
        ),
    ];
    (env, control)
}

/// Moves the shimmed clock: `offset_s` from the real time, synchronised or not. Atomic (by
/// rename), so the daemon never reads half a line.
pub fn set_clock(control: &Path, offset_s: i64, synced: bool) {
    let tmp = control.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset_s} {}\n", u8::from(synced))).unwrap();
    std::fs::rename(&tmp, control).unwrap();
}

/// What a broker answers an MQTT connect from `id` with `login`: Ok once it accepts, the error
/// (refused, …) otherwise.
pub async fn mqtt_connect_answer(
    port: u16,
    id: &str,
    login: Option<(&str, &str)>,
) -> Result<(), String> {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    if let Some((user, password)) = login {
        o.set_credentials(user, password);
    }
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(o, 10);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .expect("the broker answers a connect")
}

/// A signed `access.magic_link` for room `ms-test`: `token` (and `pin`) valid from `from_s` to
/// `until_s` seconds from now.
pub fn grant(id: &str, token: &str, pin: Option<&str>, from_s: i64, until_s: i64) -> Vec<u8> {
    command_body(
        "access.magic_link",
        serde_json::json!({"grant_id": id, "booking_id": format!("b-{id}"),
               "meeting_space_id": "ms-test", "token_sha256": sha(token),
               "pin_sha256": pin.map(sha), "valid_from": at(from_s), "valid_until": at(until_s)}),
    )
}

/// The panel `panel` of the test controller: a peer subscribed to its feedback.
pub async fn panel_peer(port: u16, id: &str) -> Peer {
    let mut panel = Peer::connect(port, id).await;
    panel
        .subscribe("zenedge/edge-test/panels/panel/feedback")
        .await;
    panel
}

/// Types `pin` at the panel (a peer subscribed to its feedback); returns (result, reason).
pub async fn try_pin(panel: &mut Peer, pin: &str, n: usize) -> (String, String) {
    present(panel, serde_json::json!({"type": "pin", "pin": pin}), n).await
}

/// Presents `credential` at the panel with request id `n`; returns (result, reason).
pub async fn present(
    panel: &mut Peer,
    mut credential: serde_json::Value,
    n: usize,
) -> (String, String) {
    credential["request_id"] = n.into();
    panel
        .publish(
            "zenedge/edge-test/panels/panel/credential",
            credential.to_string(),
            false,
        )
        .await;
    loop {
        let (_, payload, _) = panel.next(Duration::from_secs(30)).await;
        let fb: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        if fb["request_id"] == n {
            return (
                fb["result"].as_str().unwrap_or("").into(),
                fb["reason"].as_str().unwrap_or("").into(),
            );
        }
    }
}
