//! The one TOML file (DESIGN section 5): types, loading, and validation.
//!
//! Loading never panics on input: every problem becomes a [`ConfigError`] that names the key
//! (as a dotted path such as `delivery.max_backoff` or `devices[2].topic`) or the file, so an
//! operator can fix it without reading source. The CLI maps every `ConfigError` to exit 78.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Where the config is looked for when neither `--config` nor `ZENEDGE_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/zenedge/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A secret value. Its `Debug` never shows the value, so a config can be logged safely.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A byte count written as an integer or as a string with a unit: `"512MiB"`, `"64 MB"`, `"4096"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let number: u64 = digits
            .parse()
            .map_err(|_| format!("`{text}` is not a size (write e.g. \"512MiB\")"))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` (use B, KiB, MiB, GiB, KB, MB or GB)"
                ))
            }
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub controller: ControllerConfig,
    pub zencore: ZencoreConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub inbound: InboundConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub presence: PresenceConfig,
    #[serde(default)]
    pub clock: ClockConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    #[serde(default)]
    pub access: AccessConfig,
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    pub id: String,
    pub organization_id: String,
    pub meeting_space_id: String,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/zenedge")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZencoreConfig {
    pub webhook_url: String,
    #[serde(default)]
    secret: Option<Secret>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub extra_secrets: Vec<Secret>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// The secret after `secret_file` has been read; filled by [`Config::from_toml`], which
    /// refuses a config without one, so it is never empty outside this module.
    #[serde(skip)]
    resolved: Secret,
}

impl ZencoreConfig {
    /// The primary signing secret. Always present on a validated config.
    pub fn secret(&self) -> &Secret {
        &self.resolved
    }

    /// Every active secret, the primary first (the order of the `webhook-signature` entries).
    pub fn signing_secrets(&self) -> Vec<Secret> {
        std::iter::once(self.secret().clone())
            .chain(self.extra_secrets.iter().cloned())
            .collect()
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_store_bytes: ByteSize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            concurrency: 4,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_store_bytes: ByteSize(512 << 20),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    pub listen: SocketAddr,
    secret: Option<Secret>,
    pub secret_file: Option<PathBuf>,
    pub extra_secrets: Vec<Secret>,
    #[serde(with = "humantime_serde")]
    pub tolerance: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Serve over HTTPS (rustls) with this certificate chain (PEM) and key.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    #[serde(skip)]
    resolved: Option<Secret>,
}

impl InboundConfig {
    /// Every secret an inbound command may be signed with, the primary first. The primary
    /// defaults to `zencore`'s secret when `[inbound]` sets none.
    pub fn verifying_secrets(&self) -> Vec<Secret> {
        self.resolved
            .iter()
            .cloned()
            .chain(self.extra_secrets.iter().cloned())
            .collect()
    }
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8787)),
            secret: None,
            secret_file: None,
            extra_secrets: Vec::new(),
            tolerance: Duration::from_secs(300),
            max_connections: 64,
            tls_cert_file: None,
            tls_key_file: None,
            resolved: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Read-only over TCP: `/healthz`, `/metrics`, `/v1/status`.
    pub listen: SocketAddr,
    /// The Unix socket the CLI uses for everything else; default `admin.sock` in `state_dir`.
    pub socket: Option<PathBuf>,
    /// The group that may use the socket (0660); default the daemon's own group.
    pub socket_group: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8788)),
            socket: None,
            socket_group: None,
        }
    }
}

impl Config {
    /// Where the admin socket is: `admin.socket`, else `admin.sock` in the state dir.
    pub fn admin_socket(&self) -> PathBuf {
        self.admin
            .socket
            .clone()
            .unwrap_or_else(|| self.controller.state_dir.join("admin.sock"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Run an embedded broker on `host:port` instead of using an external one.
    pub embedded: bool,
    pub client_id: Option<String>,
    pub username: Option<String>,
    password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub zigbee2mqtt_base: String,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    #[serde(skip)]
    resolved_password: Option<Secret>,
}

impl MqttConfig {
    pub fn password(&self) -> Option<&Secret> {
        self.resolved_password.as_ref()
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            embedded: false,
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            zigbee2mqtt_base: "zigbee2mqtt".into(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            resolved_password: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            debounce: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    pub require_sync: bool,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig { require_sync: true }
    }
}

/// `[access]`: how guessing is bounded, and how long the audit log is kept (DESIGN §2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Denied credentials at one panel or reader within `lockout_window` that lock it out;
    /// 0 disables the lockout.
    pub lockout_after: u32,
    #[serde(with = "humantime_serde")]
    pub lockout_window: Duration,
    /// The first lockout's length; it doubles per lockout in a row, up to `lockout_max`.
    #[serde(with = "humantime_serde")]
    pub lockout: Duration,
    #[serde(with = "humantime_serde")]
    pub lockout_max: Duration,
    #[serde(with = "humantime_serde")]
    pub audit_retention: Duration,
    /// An opening this soon after an unlock is not forced (door contacts).
    #[serde(with = "humantime_serde")]
    pub entry_grace: Duration,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            lockout_after: 5,
            lockout_window: Duration::from_secs(60),
            lockout: Duration::from_secs(60),
            lockout_max: Duration::from_secs(15 * 60),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            entry_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    #[serde(with = "humantime_serde")]
    pub no_show_release: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            no_show_release: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceType {
    Lock,
    Strike,
    Panel,
    Reader,
}

impl DeviceType {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Lock => "lock",
            DeviceType::Strike => "strike",
            DeviceType::Panel => "panel",
            DeviceType::Reader => "reader",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    Zigbee2mqtt,
    Tasmota,
    Homeassistant,
    ZenedgePanel,
    ModbusRelay,
    Osdp,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Zigbee2mqtt => "zigbee2mqtt",
            Driver::Tasmota => "tasmota",
            Driver::Homeassistant => "homeassistant",
            Driver::ZenedgePanel => "zenedge-panel",
            Driver::ModbusRelay => "modbus-relay",
            Driver::Osdp => "osdp",
        }
    }

    /// Drivers that speak over a serial port rather than MQTT.
    pub fn is_serial(self) -> bool {
        matches!(self, Driver::ModbusRelay | Driver::Osdp)
    }

    /// Device types this driver can drive.
    fn types(self) -> &'static [DeviceType] {
        match self {
            Driver::Zigbee2mqtt | Driver::Homeassistant => &[DeviceType::Lock],
            Driver::Tasmota | Driver::ModbusRelay => &[DeviceType::Strike, DeviceType::Lock],
            Driver::ZenedgePanel => &[DeviceType::Panel],
            Driver::Osdp => &[DeviceType::Reader],
        }
    }

    /// Driver-specific keys this driver reads; any other driver-specific key set on the
    /// device is a mistake worth naming (a `coil` on a Zigbee lock does nothing).
    fn keys(self) -> &'static [&'static str] {
        match self {
            Driver::Zigbee2mqtt => &["topic"],
            Driver::Tasmota => &["topic", "pulse"],
            Driver::Homeassistant => &["state_topic", "command_topic", "availability_topic"],
            Driver::ZenedgePanel => &[],
            Driver::ModbusRelay => &["port", "baud", "address", "coil", "pulse", "flash"],
            Driver::Osdp => &[
                "port",
                "baud",
                "address",
                "scbk",
                "scbk_file",
                "insecure",
                "pulse",
            ],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: DeviceType,
    pub driver: Driver,
    pub topic: Option<String>,
    pub state_topic: Option<String>,
    pub command_topic: Option<String>,
    pub availability_topic: Option<String>,
    pub port: Option<PathBuf>,
    pub baud: Option<u32>,
    pub address: Option<u8>,
    pub coil: Option<u16>,
    pub scbk: Option<Secret>,
    pub scbk_file: Option<PathBuf>,
    pub insecure: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub pulse: Option<Duration>,
    pub flash: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub offline_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub action_timeout: Option<Duration>,
    pub meeting_space_id: Option<String>,
    /// `scbk_file`'s contents, read at load.
    #[serde(skip)]
    pub scbk_from_file: Option<Secret>,
}

impl DeviceConfig {
    /// The OSDP Secure Channel key: `None` when the reader runs without Secure Channel.
    pub fn scbk_key(&self) -> Result<Option<[u8; 16]>, String> {
        let Some(text) = self.scbk.as_ref().or(self.scbk_from_file.as_ref()) else {
            return Ok(None);
        };
        let bytes = hex::decode(text.expose().trim())
            .map_err(|_| "scbk must be 32 hex digits".to_string())?;
        <[u8; 16]>::try_from(bytes.as_slice())
            .map(Some)
            .map_err(|_| "scbk must be 32 hex digits".to_string())
    }

    /// Whether this device is an OSDP reader with a strike on its output (a door).
    pub fn is_door(&self) -> bool {
        matches!(self.kind, DeviceType::Lock | DeviceType::Strike)
            || (self.driver == Driver::Osdp && self.pulse.is_some())
    }

    /// Names of the driver-specific keys this entry sets.
    fn set_driver_keys(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        let mut mark = |present: bool, name| {
            if present {
                set.push(name)
            }
        };
        mark(self.topic.is_some(), "topic");
        mark(self.state_topic.is_some(), "state_topic");
        mark(self.command_topic.is_some(), "command_topic");
        mark(self.availability_topic.is_some(), "availability_topic");
        mark(self.port.is_some(), "port");
        mark(self.baud.is_some(), "baud");
        mark(self.address.is_some(), "address");
        mark(self.coil.is_some(), "coil");
        mark(self.scbk.is_some(), "scbk");
        mark(self.scbk_file.is_some(), "scbk_file");
        mark(self.insecure.is_some(), "insecure");
        mark(self.pulse.is_some(), "pulse");
        mark(self.flash.is_some(), "flash");
        set
    }

    /// The time to wait for a device's confirming state report.
    pub fn action_timeout(&self) -> Duration {
        self.action_timeout.unwrap_or(Duration::from_secs(10))
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`, resolving `*_file` secrets.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates TOML text; `origin` names the file in errors and anchors
    /// relative `*_file` paths.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.message().to_owned() + &line_of(text, e.span()),
        })?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                let message = e.into_inner().to_string();
                ConfigError::key(
                    if key == "." {
                        "(top level)".into()
                    } else {
                        key
                    },
                    message,
                )
            })?;
        config.resolve_secrets()?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        let zencore = one_secret(
            "zencore.secret",
            self.zencore.secret.take(),
            self.zencore.secret_file.as_deref(),
        )?;
        self.zencore.resolved = zencore.ok_or_else(|| {
            ConfigError::key(
                "zencore.secret",
                "missing: set `secret` or `secret_file` in [zencore]",
            )
        })?;
        let inbound = one_secret(
            "inbound.secret",
            self.inbound.secret.take(),
            self.inbound.secret_file.as_deref(),
        )?;
        self.inbound.resolved = inbound.or_else(|| Some(self.zencore.resolved.clone()));
        self.mqtt.resolved_password = one_secret(
            "mqtt.password",
            self.mqtt.password.take(),
            self.mqtt.password_file.as_deref(),
        )?;
        for (i, d) in self.devices.iter_mut().enumerate() {
            if d.scbk.is_none() {
                d.scbk_from_file =
                    one_secret(&format!("devices[{i}].scbk"), None, d.scbk_file.as_deref())?;
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("controller.id", &self.controller.id),
            (
                "controller.organization_id",
                &self.controller.organization_id,
            ),
            (
                "controller.meeting_space_id",
                &self.controller.meeting_space_id,
            ),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::key(key, "must not be empty"));
            }
        }
        if !self
            .controller
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(ConfigError::key(
                "controller.id",
                "use only letters, digits, `-`, `_` and `.` (it is part of MQTT topics)",
            ));
        }
        let a = &self.access;
        if a.lockout_after > 0 {
            for (key, d) in [
                ("access.lockout_window", a.lockout_window),
                ("access.lockout", a.lockout),
            ] {
                if d.is_zero() {
                    return Err(ConfigError::key(
                        key,
                        "must be more than 0 (set access.lockout_after = 0 to disable the lockout)",
                    ));
                }
            }
            if a.lockout_max < a.lockout {
                return Err(ConfigError::key(
                    "access.lockout_max",
                    "must be at least access.lockout",
                ));
            }
        }
        if a.audit_retention < Duration::from_secs(24 * 3600) {
            return Err(ConfigError::key(
                "access.audit_retention",
                "must be at least 1 day",
            ));
        }
        if let Some(group) = &self.admin.socket_group {
            if crate::admin::group_id(group).is_none() {
                return Err(ConfigError::key(
                    "admin.socket_group",
                    format!("no group named {group:?} on this system"),
                ));
            }
        }
        match reqwest::Url::parse(&self.zencore.webhook_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => {
                return Err(ConfigError::key(
                    "zencore.webhook_url",
                    "must be an http:// or https:// URL with a host",
                ))
            }
            Err(e) => {
                return Err(ConfigError::key(
                    "zencore.webhook_url",
                    format!("not a URL: {e}"),
                ))
            }
        }
        for (i, secret) in std::iter::once(self.zencore.secret())
            .chain(self.zencore.extra_secrets.iter())
            .enumerate()
        {
            let key = if i == 0 {
                "zencore.secret".to_string()
            } else {
                format!("zencore.extra_secrets[{}]", i - 1)
            };
            strong_secret(key, secret)?;
        }
        for (i, secret) in self.inbound.verifying_secrets().iter().enumerate() {
            strong_secret(format!("inbound secret #{}", i + 1), secret)?;
        }
        if self.zencore.timeout.is_zero() {
            return Err(ConfigError::key("zencore.timeout", "must be above 0s"));
        }
        if self.zencore.client_key_file.is_some() != self.zencore.client_cert_file.is_some() {
            return Err(ConfigError::key(
                "zencore.client_cert_file",
                "client_cert_file and client_key_file go together",
            ));
        }
        let d = &self.delivery;
        if !(1..=64).contains(&d.concurrency) {
            return Err(ConfigError::key(
                "delivery.concurrency",
                "must be between 1 and 64",
            ));
        }
        if d.initial_backoff.is_zero() {
            return Err(ConfigError::key(
                "delivery.initial_backoff",
                "must be above 0s",
            ));
        }
        if d.max_backoff < d.initial_backoff {
            return Err(ConfigError::key(
                "delivery.max_backoff",
                "must not be below delivery.initial_backoff",
            ));
        }
        if d.max_age < Duration::from_secs(60) {
            return Err(ConfigError::key("delivery.max_age", "must be at least 1m"));
        }
        if d.max_store_bytes.0 < (1 << 20) {
            return Err(ConfigError::key(
                "delivery.max_store_bytes",
                "must be at least 1MiB",
            ));
        }
        if self.inbound.tolerance.is_zero() {
            return Err(ConfigError::key("inbound.tolerance", "must be above 0s"));
        }
        if !(1..=1024).contains(&self.inbound.max_connections) {
            return Err(ConfigError::key(
                "inbound.max_connections",
                "must be between 1 and 1024 (the unit allows 4096 open files in all)",
            ));
        }
        match (&self.inbound.tls_cert_file, &self.inbound.tls_key_file) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                private_file("inbound.tls_key_file", key)?;
                crate::serve::tls_acceptor(cert, key)
                    .map_err(|(k, e)| ConfigError::key(format!("inbound.{k}"), e))?;
            }
            _ => {
                return Err(ConfigError::key(
                    "inbound.tls_cert_file",
                    "tls_cert_file and tls_key_file go together",
                ))
            }
        }
        if self.mqtt.host.trim().is_empty() {
            return Err(ConfigError::key("mqtt.host", "must not be empty"));
        }
        if self.mqtt.client_key_file.is_some() != self.mqtt.client_cert_file.is_some() {
            return Err(ConfigError::key(
                "mqtt.client_cert_file",
                "client_cert_file and client_key_file go together",
            ));
        }
        if self.mqtt.embedded {
            if self.mqtt.ca_file.is_some() || self.mqtt.client_cert_file.is_some() {
                return Err(ConfigError::key(
                    "mqtt.embedded",
                    "the embedded broker has no TLS: remove ca_file/client_cert_file or use an external broker",
                ));
            }
            let Ok(ip) = self.mqtt.host.parse::<std::net::IpAddr>() else {
                return Err(ConfigError::key(
                    "mqtt.host",
                    "with embedded = true, host is the address to listen on: an IP address",
                ));
            };
            // An anonymous broker on the room network lets anyone read guests' credentials,
            // spoof a lock's state or present credentials as a panel.
            if !ip.is_loopback() && (self.mqtt.username.is_none() || self.mqtt.password().is_none())
            {
                return Err(ConfigError::key(
                    "mqtt.username",
                    format!(
                        "the embedded broker listens on {ip}, off loopback: set mqtt.username and \
                         mqtt.password (or password_file); devices log in with them"
                    ),
                ));
            }
        }
        if self.mqtt.password().is_some() && self.mqtt.username.is_none() {
            return Err(ConfigError::key(
                "mqtt.username",
                "a password needs a username",
            ));
        }
        if !valid_topic(&self.mqtt.zigbee2mqtt_base) {
            return Err(ConfigError::key(
                "mqtt.zigbee2mqtt_base",
                "must be a topic without wildcards (`+`, `#`) and without a leading or trailing `/`",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        // A topic a device listens or is commanded on, and who has it: two devices on one topic
        // would each take the other's reports as their own (an unlock of one "succeeds" when
        // the other answers).
        let mut topics: std::collections::HashMap<String, (usize, &'static str)> =
            std::collections::HashMap::new();
        for (i, device) in self.devices.iter().enumerate() {
            validate_device(i, device)?;
            if !seen.insert(device.id.as_str()) {
                return Err(ConfigError::key(
                    format!("devices[{i}].id"),
                    format!("`{}` is used by more than one device", device.id),
                ));
            }
            for (name, identity, topic) in self.device_topics(device) {
                if let Some((j, other)) = topics.insert(identity, (i, name)) {
                    return Err(ConfigError::key(
                        format!("devices[{i}].{name}"),
                        format!(
                            "`{topic}` is also the topic of device `{}` (devices[{j}].{other}); \
                             two devices on one topic would answer for each other",
                            self.devices[j].id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The topics that identify a device (state in, commands out): (config key, what makes
    /// it the same topic, the topic as configured).
    fn device_topics(&self, d: &DeviceConfig) -> Vec<(&'static str, String, String)> {
        let base = &self.mqtt.zigbee2mqtt_base;
        let keyed = |name: &'static str, t: &Option<String>, identity: &dyn Fn(&str) -> String| {
            t.iter()
                .map(|t| (name, identity(t), t.clone()))
                .collect::<Vec<_>>()
        };
        match d.driver {
            Driver::Zigbee2mqtt => keyed("topic", &d.topic, &|t| format!("{base}/{t}")),
            Driver::Tasmota => keyed("topic", &d.topic, &|t| format!("cmnd/{t}")),
            Driver::Homeassistant => {
                let mut v = keyed("state_topic", &d.state_topic, &|t| t.to_owned());
                v.extend(keyed("command_topic", &d.command_topic, &|t| {
                    format!("command:{t}")
                }));
                v
            }
            Driver::ZenedgePanel | Driver::ModbusRelay | Driver::Osdp => Vec::new(),
        }
    }

    /// What is allowed but probably a mistake, for `check-config` and the daemon's log.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let remote = |host: &str| {
            !(host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()))
        };
        if self.mqtt.password().is_some() && self.mqtt.ca_file.is_none() && remote(&self.mqtt.host)
        {
            out.push(format!(
                "mqtt.password is sent in clear to {} (no mqtt.ca_file): anyone on the network \
                 can read it; use TLS (mqtt.ca_file, port 8883)",
                self.mqtt.host
            ));
        }
        if self.inbound.tls_cert_file.is_none() && !self.inbound.listen.ip().is_loopback() {
            out.push(format!(
                "inbound.listen {} is plain HTTP off loopback: grants (with their PIN hashes) \
                 cross the room network in clear; set inbound.tls_cert_file and tls_key_file",
                self.inbound.listen
            ));
        }
        if let Ok(url) = reqwest::Url::parse(&self.zencore.webhook_url) {
            if url.scheme() == "http" && url.host_str().is_some_and(remote) {
                out.push(format!(
                    "zencore.webhook_url is plain http to {}: events (not the secret) cross the \
                     network in clear; use https://",
                    url.host_str().unwrap_or("?")
                ));
            }
        }
        out
    }

    /// The MQTT client id (`mqtt.client_id`, default `zenedge-<controller_id>`).
    pub fn mqtt_client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("zenedge-{}", self.controller.id))
    }

    /// A human summary for `zenedge check-config`; never shows a secret.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let secret_source = |file: &Option<PathBuf>| match file {
            Some(f) => format!("from {}", f.display()),
            None => "inline".to_string(),
        };
        let _ = writeln!(
            s,
            "controller   {} (organization {}, meeting space {})",
            self.controller.id, self.controller.organization_id, self.controller.meeting_space_id
        );
        let _ = writeln!(s, "state_dir    {}", self.controller.state_dir.display());
        let _ = writeln!(
            s,
            "zencore      {} (timeout {}, secret {}, {} extra secret(s))",
            self.zencore.webhook_url,
            humantime::format_duration(self.zencore.timeout),
            secret_source(&self.zencore.secret_file),
            self.zencore.extra_secrets.len()
        );
        let d = &self.delivery;
        let _ = writeln!(
            s,
            "delivery     concurrency {}, backoff {}..{}, max_age {}, max_store_bytes {}",
            d.concurrency,
            humantime::format_duration(d.initial_backoff),
            humantime::format_duration(d.max_backoff),
            humantime::format_duration(d.max_age),
            d.max_store_bytes.0
        );
        let _ = writeln!(
            s,
            "inbound      {} (tolerance {}, {} secret(s))",
            self.inbound.listen,
            humantime::format_duration(self.inbound.tolerance),
            self.inbound.verifying_secrets().len()
        );
        let _ = writeln!(s, "admin        {}", self.admin.listen);
        let _ = writeln!(
            s,
            "mqtt         {}:{} as {}",
            self.mqtt.host,
            self.mqtt.port,
            self.mqtt_client_id()
        );
        let _ = writeln!(s, "clock        require_sync = {}", self.clock.require_sync);
        let _ = writeln!(s, "devices      {}", self.devices.len());
        for d in &self.devices {
            let _ = writeln!(
                s,
                "  {:<20} {:<7} {}",
                d.id,
                d.kind.as_str(),
                d.driver.as_str()
            );
        }
        s
    }
}

/// Secrets a person types when told to fill one in; refused whatever their length.
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "secret",
    "password",
    "…",
    "...",
    "<secret>",
    "your-secret",
];

/// The shortest key a secret may give (DESIGN §5; Standard Webhooks' range is 24–64 bytes).
pub const MIN_KEY_BYTES: usize = 24;

/// A secret must give a key of at least [`MIN_KEY_BYTES`] and not be a placeholder: anyone who
/// knows the key opens the doors.
fn strong_secret(key: String, secret: &Secret) -> Result<(), ConfigError> {
    let text = secret.expose().trim();
    let hint = "generate one with `echo whsec_$(head -c 32 /dev/urandom | base64)`";
    if PLACEHOLDERS.iter().any(|p| text.eq_ignore_ascii_case(p)) {
        return Err(ConfigError::key(
            key,
            format!("is a placeholder, not a secret; {hint}"),
        ));
    }
    let k = crate::signing::Key::from_secret(secret.expose())
        .map_err(|e| ConfigError::key(key.clone(), e.to_string()))?;
    if k.len() < MIN_KEY_BYTES {
        return Err(ConfigError::key(
            key,
            format!(
                "gives a {}-byte key; at least {MIN_KEY_BYTES} bytes are needed; {hint}",
                k.len()
            ),
        ));
    }
    Ok(())
}

fn validate_device(i: usize, d: &DeviceConfig) -> Result<(), ConfigError> {
    let key = |name: &str| format!("devices[{i}].{name}");
    if d.id.trim().is_empty()
        || !d
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(ConfigError::key(
            key("id"),
            "must be non-empty and use only letters, digits, `-`, `_` and `.`",
        ));
    }
    if !d.driver.types().contains(&d.kind) {
        let allowed: Vec<_> = d.driver.types().iter().map(|t| t.as_str()).collect();
        return Err(ConfigError::key(
            key("type"),
            format!(
                "driver {} drives {}, not {}",
                d.driver.as_str(),
                allowed.join(" or "),
                d.kind.as_str()
            ),
        ));
    }
    for name in d.set_driver_keys() {
        if !d.driver.keys().contains(&name) {
            return Err(ConfigError::key(
                key(name),
                format!("not used by driver {}", d.driver.as_str()),
            ));
        }
    }
    let require = |present: bool, name: &str| {
        if present {
            Ok(())
        } else {
            Err(ConfigError::key(
                key(name),
                format!("required by driver {}", d.driver.as_str()),
            ))
        }
    };
    match d.driver {
        Driver::Zigbee2mqtt | Driver::Tasmota => {
            require(d.topic.as_deref().is_some_and(valid_topic), "topic")?
        }
        Driver::Homeassistant => {
            require(
                d.state_topic.as_deref().is_some_and(valid_topic),
                "state_topic",
            )?;
            require(
                d.command_topic.as_deref().is_some_and(valid_topic),
                "command_topic",
            )?;
            if let Some(t) = &d.availability_topic {
                require(valid_topic(t), "availability_topic")?;
            }
        }
        Driver::ZenedgePanel => {}
        Driver::ModbusRelay => {
            require(d.port.is_some(), "port")?;
            if let Some(a) = d.address {
                if !(1..=247).contains(&a) {
                    return Err(ConfigError::key(
                        key("address"),
                        "a Modbus slave address is 1..=247",
                    ));
                }
            }
        }
        Driver::Osdp => {
            require(d.port.is_some(), "port")?;
            if let Some(a) = d.address {
                if a > 126 {
                    return Err(ConfigError::key(
                        key("address"),
                        "an OSDP address is 0..=126",
                    ));
                }
            }
            let keyed = d.scbk.is_some() as u8 + d.scbk_file.is_some() as u8;
            let insecure = d.insecure == Some(true);
            if keyed > 1 {
                return Err(ConfigError::key(
                    key("scbk"),
                    "set scbk or scbk_file, not both",
                ));
            }
            if keyed == 0 && !insecure {
                return Err(ConfigError::key(
                    key("scbk"),
                    "Secure Channel needs scbk or scbk_file (or insecure = true)",
                ));
            }
            if keyed == 1 && insecure {
                return Err(ConfigError::key(
                    key("insecure"),
                    "insecure = true contradicts a Secure Channel key",
                ));
            }
            if let Err(e) = d.scbk_key() {
                let which = if d.scbk.is_some() {
                    "scbk"
                } else {
                    "scbk_file"
                };
                return Err(ConfigError::key(key(which), e));
            }
        }
    }
    if let Some(b) = d.baud {
        if !matches!(
            b,
            1200 | 2400 | 4800 | 9600 | 19200 | 38400 | 57600 | 115200
        ) {
            return Err(ConfigError::key(
                key("baud"),
                format!("{b} is not a standard baud rate"),
            ));
        }
    }
    if let Some(p) = d.pulse {
        if p.is_zero() || p > Duration::from_secs(60) {
            return Err(ConfigError::key(
                key("pulse"),
                "must be between 1ms and 60s",
            ));
        }
    }
    if d.offline_after.is_some_and(|t| t < Duration::from_secs(1)) {
        return Err(ConfigError::key(
            key("offline_after"),
            "must be at least 1s",
        ));
    }
    if d.action_timeout.is_some_and(|t| t.is_zero()) {
        return Err(ConfigError::key(key("action_timeout"), "must be above 0s"));
    }
    if d.meeting_space_id
        .as_deref()
        .is_some_and(|m| m.trim().is_empty())
    {
        return Err(ConfigError::key(
            key("meeting_space_id"),
            "must not be empty",
        ));
    }
    Ok(())
}

/// An MQTT topic a device may be configured with: no wildcards, no empty levels at the ends.
fn valid_topic(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#', '\0']) && !t.starts_with('/') && !t.ends_with('/')
}

/// Resolves a `secret` / `secret_file` pair: at most one may be set; a file's trailing newline
/// is removed (editors and `echo` add one).
fn one_secret(
    key: &str,
    inline: Option<Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::key(
            key,
            format!("set `{}` or `{}_file`, not both", leaf(key), leaf(key)),
        )),
        (Some(s), None) => Ok(Some(s)),
        (None, Some(path)) => {
            private_file(&format!("{key}_file"), path)?;
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::key(
                    format!("{key}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            Ok(Some(Secret::new(value)))
        }
        (None, None) => Ok(None),
    }
}

/// Refuses a secret file that is a symlink or that users other than its owner and group can
/// read or write (as OpenSSH does with a private key): a secret others can read is no secret,
/// and a symlink may point wherever whoever made it wanted.
fn private_file(key: &str, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| ConfigError::key(key, format!("cannot read {}: {e}", path.display())))?;
    if meta.file_type().is_symlink() {
        return Err(ConfigError::key(
            key,
            format!(
                "{} is a symlink; name the file itself (a secret file must be a plain file)",
                path.display()
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(ConfigError::key(
            key,
            format!(
                "{} is readable or writable by other users (mode {mode:04o}); \
                 `chmod 0640` it (or 0600)",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn leaf(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            // `get` rather than indexing: a span that is not on a char boundary gives no line
            // number instead of a panic.
            let before = text.get(..span.start.min(text.len())).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[controller]
id = "edge-4a"
organization_id = "org-123"
meeting_space_id = "ms-xyz789"
state_dir = "/tmp/zenedge-test"

[zencore]
webhook_url = "https://zencore.example.com/webhooks/zenedge"
secret = "s3cret-s3cret-s3cret-s3cret"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    fn key_of(err: ConfigError) -> String {
        match err {
            ConfigError::Key { key, .. } => key,
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.delivery.concurrency, 4);
        assert_eq!(c.delivery.initial_backoff, Duration::from_secs(1));
        assert_eq!(c.delivery.max_backoff, Duration::from_secs(300));
        assert_eq!(c.delivery.max_age, Duration::from_secs(7 * 86400));
        assert_eq!(c.delivery.max_store_bytes, ByteSize(512 * 1024 * 1024));
        assert_eq!(c.zencore.timeout, Duration::from_secs(30));
        assert_eq!(c.inbound.listen.to_string(), "0.0.0.0:8787");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8788");
        assert_eq!(c.presence.debounce, Duration::from_secs(5));
        assert!(c.clock.require_sync);
        assert_eq!(c.mqtt_client_id(), "zenedge-edge-4a");
        assert_eq!(
            c.inbound.verifying_secrets(),
            vec![Secret::new("s3cret-s3cret-s3cret-s3cret")]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[delivery]\nmax_backoff = \"soon\"\n", "delivery.max_backoff"),
            ("[delivery]\nconcurency = 4\n", "delivery.concurency"),
            ("[delivery]\nconcurrency = \"four\"\n", "delivery.concurrency"),
            ("[delivery]\nconcurrency = 0\n", "delivery.concurrency"),
            ("[delivery]\nmax_store_bytes = \"12 parsecs\"\n", "delivery.max_store_bytes"),
            (
                "[delivery]\ninitial_backoff = \"10s\"\nmax_backoff = \"1s\"\n",
                "delivery.max_backoff",
            ),
            ("[surprise]\nx = 1\n", "surprise"),
            (
                "[[devices]]\nid = \"d\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\n",
                "devices[0].topic",
            ),
            (
                "[[devices]]\nid = \"d\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\ntopic = \"t\"\ncoil = 1\n",
                "devices[0].coil",
            ),
            (
                "[[devices]]\nid = \"d\"\ntype = \"panel\"\ndriver = \"zigbee2mqtt\"\ntopic = \"t\"\n",
                "devices[0].type",
            ),
            (
                "[[devices]]\nid = \"r\"\ntype = \"reader\"\ndriver = \"osdp\"\nport = \"/dev/ttyUSB0\"\n",
                "devices[0].scbk",
            ),
            (
                "[[devices]]\nid = \"d\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\ntopic = \"a\"\n[[devices]]\nid = \"d\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\ntopic = \"b\"\n",
                "devices[1].id",
            ),
            (
                "[[devices]]\nid = \"d\"\ntype = \"lock\"\ndriver = \"zwave\"\n",
                "devices[0].driver",
            ),
        ];
        for (extra, want) in cases {
            let text = format!("{MINIMAL}{extra}");
            let err = parse(&text).expect_err(extra);
            assert_eq!(key_of(err), *want, "for {extra:?}");
        }
    }

    #[test]
    fn unknown_key_message_names_the_field() {
        let err = parse(&format!("{MINIMAL}[delivery]\nconcurency = 4\n")).unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
    }

    #[test]
    fn secret_or_secret_file_not_both_and_file_loses_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file-from-file-from-file\n").unwrap();
        private(&file);
        let text = MINIMAL.replace(
            "secret = \"s3cret-s3cret-s3cret-s3cret\"",
            &format!("secret_file = {:?}", file.display().to_string()),
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.zencore.secret().expose(), "from-file-from-file-from-file");

        let both = MINIMAL.replace(
            "secret = \"s3cret-s3cret-s3cret-s3cret\"",
            &format!(
                "secret = \"x\"\nsecret_file = {:?}",
                file.display().to_string()
            ),
        );
        assert_eq!(key_of(parse(&both).unwrap_err()), "zencore.secret");
        let none = MINIMAL.replace("secret = \"s3cret-s3cret-s3cret-s3cret\"", "");
        assert_eq!(key_of(parse(&none).unwrap_err()), "zencore.secret");
    }

    fn private(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640)).unwrap();
    }

    #[test]
    fn loose_or_symlinked_secret_files_are_refused_naming_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file-from-file-from-file\n").unwrap();
        let with = |path: &Path| {
            MINIMAL.replace(
                "secret = \"s3cret-s3cret-s3cret-s3cret\"",
                &format!("secret_file = {:?}", path.display().to_string()),
            )
        };
        for mode in [0o644, 0o666, 0o604, 0o602] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = parse(&with(&file)).unwrap_err();
            assert!(e.to_string().contains("other users"), "{mode:o}: {e}");
            assert_eq!(key_of(e), "zencore.secret_file");
        }
        private(&file);
        assert!(parse(&with(&file)).is_ok());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = parse(&with(&link)).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(key_of(e), "zencore.secret_file");
    }

    #[test]
    fn bad_whsec_secret_is_rejected() {
        let text = MINIMAL.replace("\"s3cret-s3cret-s3cret-s3cret\"", "\"whsec_not base64!\"");
        assert_eq!(key_of(parse(&text).unwrap_err()), "zencore.secret");
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let err = parse("[controller\nid=1").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("test.toml") && text.contains("line 1"),
            "{text}"
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("512MiB"), Ok(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("64 MB"), Ok(ByteSize(64_000_000)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("MiB").is_err());
        assert!(ByteSize::parse("99999999999999999999GiB").is_err());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = parse(MINIMAL).unwrap();
        assert!(!format!("{c:?}").contains("s3cret-s3cret-s3cret-s3cret"));
        assert!(!c.summary().contains("s3cret-s3cret-s3cret-s3cret"));
    }

    #[test]
    fn example_config_is_valid() {
        // The example names the secret file the Debian package writes; here, a file of ours.
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("zencore.secret");
        std::fs::write(
            &secret,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYqr\n",
        )
        .unwrap();
        private(&secret);
        let text = include_str!("../config.example.toml").replace(
            "\"/etc/zenedge/zencore.secret\"",
            &format!("{:?}", secret.display().to_string()),
        );
        // The group the Debian package creates; here, one every Debian system has.
        let text = text.replace("\"zenedge-operators\"", "\"root\"");
        assert_ne!(text, include_str!("../config.example.toml"));
        let c = parse(&text).unwrap();
        assert!(!c.devices.is_empty());
    }

    #[test]
    fn weak_and_placeholder_secrets_are_refused_naming_the_key() {
        for (secret, want) in [
            ("change-me", "placeholder"),
            ("x", "1-byte key"),
            ("whsec_YWJj", "3-byte key"),
            ("twenty-three-bytes-long", "23-byte key"),
        ] {
            let text = MINIMAL.replace("\"s3cret-s3cret-s3cret-s3cret\"", &format!("{secret:?}"));
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains("zencore.secret") && e.contains(want),
                "{secret}: {e}"
            );
        }
        let extra = MINIMAL.replace("[zencore]", "[zencore]\nextra_secrets = [\"old\"]");
        let e = parse(&extra).unwrap_err().to_string();
        assert!(e.contains("zencore.extra_secrets[0]"), "{e}");
        let inbound = format!("{MINIMAL}\n[inbound]\nsecret = \"secret\"\n");
        let e = parse(&inbound).unwrap_err().to_string();
        assert!(
            e.contains("inbound secret #1") && e.contains("placeholder"),
            "{e}"
        );
        let ok = MINIMAL.replace(
            "\"s3cret-s3cret-s3cret-s3cret\"",
            "\"twenty-four-bytes-long!!\"",
        );
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn two_devices_on_one_topic_and_wildcard_bases_are_refused() {
        let lock = |id: &str, room: &str, topic: &str| {
            format!(
                "[[devices]]\nid = \"{id}\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\n\
                 topic = \"{topic}\"\nmeeting_space_id = \"{room}\"\n"
            )
        };
        let text = format!(
            "{MINIMAL}{}{}",
            lock("front", "ms-a", "door"),
            lock("back", "ms-b", "door")
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("devices[1].topic") && e.contains("`front`") && e.contains("devices[0]"),
            "{e}"
        );
        let ha = |id: &str, state: &str, command: &str| {
            format!(
                "[[devices]]\nid = \"{id}\"\ntype = \"lock\"\ndriver = \"homeassistant\"\n\
                 state_topic = \"{state}\"\ncommand_topic = \"{command}\"\n"
            )
        };
        let text = format!(
            "{MINIMAL}{}{}",
            ha("a", "s/a", "c/x"),
            ha("b", "s/b", "c/x")
        );
        assert_eq!(
            key_of(parse(&text).unwrap_err()),
            "devices[1].command_topic"
        );
        // Two Home Assistant locks sharing one availability topic (one ESPHome board) are fine.
        let text = format!(
            "{MINIMAL}{}{}",
            ha("a", "s/a", "c/a"),
            ha("b", "s/b", "c/b")
        );
        assert!(parse(&text).is_ok());
        for base in ["+", "#", "zigbee2mqtt/+", "/z2m", "z2m/", ""] {
            let text = format!("{MINIMAL}\n[mqtt]\nzigbee2mqtt_base = {base:?}\n");
            assert_eq!(
                key_of(parse(&text).unwrap_err()),
                "mqtt.zigbee2mqtt_base",
                "{base}"
            );
        }
    }

    #[test]
    fn clear_text_credentials_to_remote_hosts_are_warned_about() {
        let with = |mqtt: &str, url: &str| {
            let text = MINIMAL.replace("https://zencore.example.com/webhooks/zenedge", url);
            parse(&format!(
                "{text}\n[inbound]\nlisten = \"127.0.0.1:8787\"\n[mqtt]\n{mqtt}\n"
            ))
            .unwrap()
            .warnings()
        };
        // The default inbound.listen (every address) without TLS.
        let w = parse(MINIMAL).unwrap().warnings();
        assert!(w.len() == 1 && w[0].contains("inbound.listen"), "{w:?}");
        let remote = "host = \"10.0.0.5\"\nusername = \"u\"\npassword = \"p\"";
        let w = with(remote, "https://zencore.example.com/h");
        assert!(
            w.len() == 1 && w[0].contains("mqtt.password") && w[0].contains("10.0.0.5"),
            "{w:?}"
        );
        let local = "host = \"127.0.0.1\"\nusername = \"u\"\npassword = \"p\"";
        assert!(with(local, "https://zencore.example.com/h").is_empty());
        let w = with("", "http://zencore.example.com/h");
        assert!(
            w.len() == 1 && w[0].contains("zencore.webhook_url"),
            "{w:?}"
        );
        assert!(with("", "http://127.0.0.1:9/h").is_empty());
    }
}
