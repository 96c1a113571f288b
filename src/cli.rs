//! The command line (DESIGN section 6). `main` parses with [`Cli`] and calls [`dispatch`],
//! which returns the process exit code.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};

mod print;

use crate::signing::Key;
pub use print::clock_line;
use print::{print_json, print_status};

/// Exit codes of DESIGN section 6 (sysexits.h values).
pub mod exit {
    pub const OK: u8 = 0;
    /// A negative answer: invalid signature, unknown id.
    pub const NEGATIVE: u8 = 1;
    pub const USAGE: u8 = 64;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const CONFIG: u8 = 78;
}

#[derive(Debug, Parser)]
#[command(
    name = "zenedge",
    version,
    about = "Edge agent for meeting-room door hardware"
)]
pub struct Cli {
    /// Config file [default: $ZENEDGE_CONFIG, else /etc/zenedge/config.toml]
    #[arg(long, global = true, env = "ZENEDGE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run,
    /// Everything on this machine: embedded broker, simulated devices, a ZenCore stand-in
    /// that verifies signatures, and the real daemon, playing a short story.
    Demo {
        /// Play the story and exit: 0 only if every step was verified.
        #[arg(long)]
        once: bool,
    },
    /// Validate the config and summarise what was loaded.
    CheckConfig,
    /// Sign a body the way ZenEdge signs webhooks.
    Sign(SignArgs),
    /// Verify a webhook signature; prints `valid` (exit 0) or `invalid` (exit 1).
    Verify(VerifyArgs),
    /// Show the running daemon's store and delivery state.
    Status(JsonFlag),
    /// Inspect and re-queue the outbox.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// List devices: driver, online/offline, last seen, last state, pending actions.
    Devices(JsonFlag),
    /// Unlock a door now (an operator action); waits for the device's answer.
    Unlock {
        device: String,
        /// Relock after this many seconds (locks) or pulse length (relays), 1..=3600.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
        duration_s: Option<u64>,
    },
    /// Lock a door now (an operator action); waits for the device's answer.
    Lock { device: String },
    /// List access grants (never their secrets).
    Grants(JsonFlag),
    /// List the newest records of the access audit log; --verify checks its whole hash chain
    /// (exit 1 if broken).
    Audit {
        #[arg(long)]
        verify: bool,
        /// How many of the newest records, 1..=10000.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=crate::admin::MAX_AUDIT_PAGE as i64))]
        limit: u32,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Check config, store, clock, MQTT, ZenCore and serial ports; one line each, exit 1 if any
    /// fails.
    Doctor,
    /// The controller clock; --reset-floor lowers its persisted floor to the current clock (a
    /// repair after the clock was once wrongly ahead).
    Clock {
        #[arg(long)]
        reset_floor: bool,
    },
    /// Queue `edge.test` events through the normal outbox.
    TestWebhook {
        /// How many events, 1..=100.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=crate::admin::MAX_TEST_EVENTS as i64))]
        count: u32,
        /// A note carried in each event's data, at most 1 KiB.
        #[arg(long, value_parser = note_arg)]
        note: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List pending events (or dead letters with --dead).
    List {
        #[arg(long)]
        dead: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show one event (id or sequence) with its attempt log.
    Show { id: String },
    /// Re-queue a dead letter, or all of them.
    Retry {
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<String>,
        #[arg(long)]
        all_dead: bool,
    },
}

#[derive(Debug, Args)]
pub struct SecretArgs {
    /// The secret (default: zencore.secret from the config).
    #[arg(long, conflicts_with = "secret_file")]
    pub secret: Option<String>,
    /// A file holding the secret (trailing newline removed).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Message id for the Standard Webhooks signature.
    #[arg(long, requires = "timestamp")]
    pub id: Option<String>,
    /// Unix seconds for the Standard Webhooks signature.
    #[arg(long, requires = "id")]
    pub timestamp: Option<i64>,
    /// Print the `pin_hmac` of this PIN for a grant (keyed with the inbound secret) instead of
    /// signing a body.
    #[arg(long, conflicts_with_all = ["id", "timestamp", "file"])]
    pub pin: Option<String>,
    /// Body file; stdin when absent.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub secret: SecretArgs,
    /// The hex signature, or the `v1,<base64>` form (which needs --id and --timestamp).
    #[arg(long)]
    pub signature: String,
    #[arg(long, requires = "timestamp")]
    pub id: Option<String>,
    #[arg(long, requires = "id")]
    pub timestamp: Option<i64>,
    /// Body file; stdin when absent.
    pub file: Option<PathBuf>,
}

/// The config path from `--config` / `ZENEDGE_CONFIG` (clap reads both), else the default.
pub fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

fn load_config(cli: &Cli) -> Result<Config, ExitCode> {
    Config::load(&config_path(cli)).map_err(|e| {
        eprintln!("zenedge: {e}");
        ExitCode::from(exit::CONFIG)
    })
}

/// Parses arguments; usage errors exit 64 (clap's own default would be 2).
pub fn parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        let _ = e.print();
        match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                ExitCode::from(exit::OK)
            }
            _ => ExitCode::from(exit::USAGE),
        }
    })
}

/// Runs every verb except `run`, which `main` owns because it sets up signals and logging.
pub async fn dispatch(cli: &Cli) -> ExitCode {
    match run_verb(cli).await {
        Ok(code) => code,
        Err(code) => code,
    }
}

async fn run_verb(cli: &Cli) -> Result<ExitCode, ExitCode> {
    match &cli.command {
        Command::Run | Command::Demo { .. } => unreachable!("main handles run and demo"),
        Command::CheckConfig => {
            let config = load_config(cli)?;
            println!("config {} is valid", config_path(cli).display());
            print!("{}", config.summary());
            for w in config.warnings() {
                println!("WARNING      {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign(args) => {
            if let Some(pin) = &args.pin {
                // A grant's pin_hmac is keyed with the inbound secret (which defaults to
                // zencore's), the key ZenEdge verifies commands with.
                let key = match (&args.secret.secret, &args.secret.secret_file) {
                    (None, None) => {
                        let config = load_config(cli)?;
                        let primary = config.inbound.verifying_secrets();
                        let Some(secret) = primary.first() else {
                            eprintln!("zenedge: no inbound secret in the config");
                            return Err(ExitCode::from(exit::CONFIG));
                        };
                        Key::from_secret(secret.expose()).map_err(|e| {
                            eprintln!("zenedge: bad inbound secret: {e}");
                            ExitCode::from(exit::CONFIG)
                        })?
                    }
                    _ => key_for(cli, &args.secret)?,
                };
                println!(
                    "pin_hmac: {}",
                    hex::encode(key.credential_hmac("pin:", pin))
                );
                return Ok(ExitCode::SUCCESS);
            }
            let key = key_for(cli, &args.secret)?;
            let body = read_body(args.file.as_deref())?;
            println!("X-Webhook-Signature: {}", key.sign_hex(&body));
            if let (Some(id), Some(ts)) = (&args.id, args.timestamp) {
                println!("webhook-signature: {}", key.sign_v1(id, ts, &body));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => {
            let key = key_for(cli, &args.secret)?;
            let body = read_body(args.file.as_deref())?;
            let sig = args.signature.trim();
            let valid = if sig.starts_with("v1,") {
                let (Some(id), Some(ts)) = (&args.id, args.timestamp) else {
                    eprintln!("zenedge: a v1 signature needs --id and --timestamp");
                    return Err(ExitCode::from(exit::USAGE));
                };
                key.verify_v1(id, ts, &body, sig)
            } else {
                key.verify_hex(&body, sig)
            };
            println!("{}", if valid { "valid" } else { "invalid" });
            Ok(ExitCode::from(if valid {
                exit::OK
            } else {
                exit::NEGATIVE
            }))
        }
        Command::Status(flag) => {
            let client = AdminClient::new(&load_config(cli)?);
            let report: crate::admin::StatusReport = client.get_json("/v1/status").await?;
            if flag.json {
                print_json(&report);
            } else {
                print_status(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue(q) => queue(cli, q).await,
        Command::Doctor => {
            let config = load_config(cli)?;
            let checks = crate::doctor::run(&config).await;
            let mut failed = 0;
            for c in &checks {
                println!(
                    "{:<4} {:<8} {}",
                    if c.ok { "ok" } else { "FAIL" },
                    c.name,
                    c.detail
                );
                failed += usize::from(!c.ok);
            }
            Ok(ExitCode::from(if failed == 0 {
                exit::OK
            } else {
                exit::NEGATIVE
            }))
        }
        Command::Devices(flag) => {
            let client = AdminClient::new(&load_config(cli)?);
            let rows: Vec<crate::devices::DeviceView> = client.get_json("/v1/devices").await?;
            if flag.json {
                print_json(&rows);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<20} {:<7} {:<14} {:<8} {:<26} {:<9} {:<7} PENDING",
                "DEVICE", "TYPE", "DRIVER", "STATUS", "LAST SEEN", "STATE", "DOOR"
            );
            for d in &rows {
                let status = match d.online {
                    Some(true) => "online",
                    Some(false) => "offline",
                    None => "unknown",
                };
                println!(
                    "{:<20} {:<7} {:<14} {:<8} {:<26} {:<9} {:<7} {}",
                    d.id,
                    d.kind,
                    d.driver,
                    status,
                    d.last_seen.as_deref().unwrap_or("-"),
                    d.last_state.as_deref().unwrap_or("-"),
                    d.door.as_deref().unwrap_or("-"),
                    match &d.locked_out_until {
                        // A panel or reader refusing every credential: say so first.
                        Some(until) => format!(
                            "LOCKED OUT until {until} (too many denied credentials) {}",
                            d.pending_actions.join(", ")
                        ),
                        None => d.pending_actions.join(", "),
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Unlock { device, duration_s } => {
            let body = serde_json::json!({ "duration_s": duration_s });
            device_action(cli, device, "unlock", body).await
        }
        Command::Lock { device } => device_action(cli, device, "lock", serde_json::json!({})).await,
        Command::Clock { reset_floor } => {
            let client = AdminClient::new(&load_config(cli)?);
            if *reset_floor {
                let answer: serde_json::Value = client
                    .post_json("/v1/clock/reset-floor", serde_json::json!({}))
                    .await?;
                println!(
                    "floor lowered from {} to {}; clock {}",
                    answer["previous_floor"].as_str().unwrap_or("-"),
                    answer["floor"].as_str().unwrap_or("-"),
                    if answer["trusted"] == true {
                        "trusted"
                    } else {
                        "still NOT trusted (not synchronised)"
                    }
                );
            } else {
                let report: crate::admin::StatusReport = client.get_json("/v1/status").await?;
                println!("{}", clock_line(&report.clock));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Grants(flag) => {
            let client = AdminClient::new(&load_config(cli)?);
            let rows: Vec<serde_json::Value> = client.get_json("/v1/grants").await?;
            if flag.json {
                print_json(&rows);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<20} {:<16} {:<9} {:<26} {:<26} DOORS",
                "GRANT", "BOOKING", "STATE", "VALID FROM", "VALID UNTIL"
            );
            for g in &rows {
                let s = |k: &str| g[k].as_str().unwrap_or("-").to_string();
                let doors = g["device_ids"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|d| d.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_else(|| "(room)".into());
                println!(
                    "{:<20} {:<16} {:<9} {:<26} {:<26} {doors}",
                    s("grant_id"),
                    s("booking_id"),
                    s("state"),
                    s("valid_from"),
                    s("valid_until")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            verify,
            limit,
            json,
        } => {
            let client = AdminClient::new(&load_config(cli)?);
            let answer: serde_json::Value = client
                .get_json(&format!("/v1/audit?verify={verify}&limit={limit}"))
                .await?;
            if json.json {
                print_json(&answer);
            } else {
                for r in answer["records"].as_array().cloned().unwrap_or_default() {
                    let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
                    println!(
                        "{:>6}  {}  {:<10} {:<7} {:<18} {:<16} grant {} booking {}{}",
                        r["seq"],
                        s("at"),
                        s("credential_type"),
                        s("result"),
                        s("reason"),
                        s("reader"),
                        s("grant_id"),
                        s("booking_id"),
                        if r["clock_untrusted"] == true {
                            " (clock untrusted)"
                        } else {
                            ""
                        }
                    );
                }
            }
            if *verify {
                let v = &answer["verification"];
                if v["valid"] == true {
                    let pruned = v["pruned"].as_u64().unwrap_or(0);
                    println!(
                        "audit chain valid: {} record(s){}",
                        v["records"],
                        if pruned > 0 {
                            format!(" after {pruned} pruned by access.audit_retention")
                        } else {
                            String::new()
                        }
                    );
                } else {
                    println!(
                        "audit chain BROKEN at record {}: {}",
                        v["record"],
                        v["problem"].as_str().unwrap_or("?")
                    );
                    return Ok(ExitCode::from(exit::NEGATIVE));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::TestWebhook { count, note } => {
            let client = AdminClient::new(&load_config(cli)?);
            let answer: serde_json::Value = client
                .post_json(
                    "/v1/test-webhook",
                    serde_json::json!({ "count": count, "note": note }),
                )
                .await?;
            let events = answer["events"].as_array().cloned().unwrap_or_default();
            for e in &events {
                println!(
                    "queued {} (sequence {})",
                    e["id"].as_str().unwrap_or("?"),
                    e["sequence"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn device_action(
    cli: &Cli,
    device: &str,
    action: &str,
    body: serde_json::Value,
) -> Result<ExitCode, ExitCode> {
    let client = AdminClient::new(&load_config(cli)?);
    let answer: serde_json::Value = client
        .post_json(&format!("/v1/devices/{device}/{action}"), body)
        .await?;
    let status = answer["status"].as_str().unwrap_or("unknown");
    println!(
        "{action} {device}: {status}{} ({} ms, action {})",
        answer["error"]
            .as_str()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default(),
        answer["duration_ms"],
        answer["action_id"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::from(if status == "succeeded" {
        exit::OK
    } else {
        exit::NEGATIVE
    }))
}

async fn queue(cli: &Cli, q: &QueueCommand) -> Result<ExitCode, ExitCode> {
    let client = AdminClient::new(&load_config(cli)?);
    match q {
        QueueCommand::List { dead, limit, json } => {
            let state = if *dead { "dead" } else { "pending" };
            let rows: Vec<crate::store::EventSummary> = client
                .get_json(&format!("/v1/queue?state={state}&limit={limit}"))
                .await?;
            if json.json {
                print_json(&rows);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:>8}  {:<30}  {:<24}  {:<16}  {:>8}  LAST ERROR / NEXT",
                "SEQ", "ID", "EVENT", "DEVICE", "ATTEMPTS"
            );
            for r in &rows {
                let tail = match (&r.dead_reason, &r.last_error, &r.next_attempt_at) {
                    (Some(reason), err, _) => {
                        format!(
                            "dead: {reason}{}",
                            err.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
                        )
                    }
                    (None, Some(err), Some(next)) => format!("{err}; next {next}"),
                    (None, Some(err), None) => err.clone(),
                    (None, None, _) => String::new(),
                };
                println!(
                    "{:>8}  {:<30}  {:<24}  {:<16}  {:>8}  {}",
                    r.sequence,
                    r.id,
                    r.event,
                    r.device_id.as_deref().unwrap_or("-"),
                    r.attempts,
                    // The last error carries ZenCore's answer: outside text.
                    crate::logging::escaped(&tail)
                );
            }
            println!("{} {state} event(s) shown", rows.len());
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Show { id } => {
            let detail: serde_json::Value = client.get_json(&format!("/v1/queue/{id}")).await?;
            print_json(&detail);
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Retry { id, all_dead } => {
            let path = match (id, all_dead) {
                (_, true) => "/v1/queue/retry-dead".to_string(),
                (Some(id), false) => format!("/v1/queue/{id}/retry"),
                (None, false) => return Err(ExitCode::from(exit::USAGE)),
            };
            let answer: serde_json::Value = client.post_json(&path, serde_json::json!({})).await?;
            let n = answer["requeued"].as_array().map(|a| a.len()).unwrap_or(0);
            println!("re-queued {n} event(s)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn key_for(cli: &Cli, args: &SecretArgs) -> Result<Key, ExitCode> {
    let secret = match (&args.secret, &args.secret_file) {
        (Some(s), _) => s.clone(),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).map_err(|e| {
                eprintln!("zenedge: cannot read --secret-file {}: {e}", file.display());
                ExitCode::from(exit::USAGE)
            })?;
            let t = text.strip_suffix('\n').unwrap_or(&text);
            t.strip_suffix('\r').unwrap_or(t).to_owned()
        }
        (None, None) => load_config(cli)?.zencore.secret().expose().to_owned(),
    };
    Key::from_secret(&secret).map_err(|e| {
        eprintln!("zenedge: bad secret: {e}");
        ExitCode::from(exit::USAGE)
    })
}

fn read_body(file: Option<&Path>) -> Result<Vec<u8>, ExitCode> {
    let result = match file {
        Some(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display())),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map(|_| buf)
                .map_err(|e| format!("stdin: {e}"))
        }
    };
    result.map_err(|e| {
        eprintln!("zenedge: cannot read body from {e}");
        ExitCode::from(exit::USAGE)
    })
}

/// An `edge.test` note longer than the admin API takes.
#[derive(Debug, thiserror::Error)]
#[error("at most {max} bytes (this one has {len})", max = crate::admin::MAX_TEST_NOTE_BYTES)]
struct NoteTooLong {
    len: usize,
}

fn note_arg(s: &str) -> Result<String, NoteTooLong> {
    if s.len() > crate::admin::MAX_TEST_NOTE_BYTES {
        return Err(NoteTooLong { len: s.len() });
    }
    Ok(s.to_string())
}

/// A client of the running daemon's admin API, over the admin socket.
struct AdminClient {
    socket: PathBuf,
    http: reqwest::Client,
}

impl AdminClient {
    fn new(config: &Config) -> AdminClient {
        let socket = config.admin_socket();
        AdminClient {
            http: reqwest::Client::builder()
                .unix_socket(socket.as_path())
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .unwrap_or_default(),
            socket,
        }
    }

    fn url(&self, path: &str) -> String {
        // The host is not used for a Unix socket; reqwest still needs one in the URL.
        format!("http://zenedge{path}")
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ExitCode> {
        self.answer(self.http.get(self.url(path)).send().await)
            .await
    }

    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, ExitCode> {
        self.answer(self.http.post(self.url(path)).json(&body).send().await)
            .await
    }

    async fn answer<T: serde::de::DeserializeOwned>(
        &self,
        sent: reqwest::Result<reqwest::Response>,
    ) -> Result<T, ExitCode> {
        let response = sent.map_err(|e| {
            let why = if e.is_timeout() {
                "timeout".to_string()
            } else {
                // Permission denied is the answer for users outside `admin.socket_group`.
                let mut source: Option<&dyn std::error::Error> = Some(&e);
                let mut why = "connection failed".to_string();
                while let Some(err) = source {
                    if let Some(io) = err.downcast_ref::<std::io::Error>() {
                        why = io.to_string();
                    }
                    source = err.source();
                }
                why
            };
            eprintln!(
                "zenedge: the daemon is not reachable at {} ({why}); is `zenedge run` running, \
                 and may this user use admin.socket?",
                self.socket.display(),
            );
            ExitCode::from(exit::UNAVAILABLE)
        })?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(|e| {
            eprintln!("zenedge: unreadable answer from the daemon: {e}");
            ExitCode::from(exit::SOFTWARE)
        })?;
        if !status.is_success() {
            eprintln!(
                "zenedge: {}",
                body["error"].as_str().unwrap_or(status.as_str())
            );
            return Err(ExitCode::from(match status.as_u16() {
                404 | 409 => exit::NEGATIVE,
                400 => exit::USAGE,
                _ => exit::SOFTWARE,
            }));
        }
        serde_json::from_value(body).map_err(|e| {
            eprintln!("zenedge: unexpected answer from the daemon: {e}");
            ExitCode::from(exit::SOFTWARE)
        })
    }
}

/// Turns a config error into the documented exit code; used by `main` for `run`.
pub fn config_exit(e: &ConfigError) -> ExitCode {
    eprintln!("zenedge: {e}");
    ExitCode::from(exit::CONFIG)
}
