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

mod commands;
mod device;
mod inbound;
mod report;
mod secrets;

pub use commands::{Broker, CommandsConfig, Scheme, Transport as CommandTransport};
pub use device::{
    ha_default, Contact, DeviceConfig, DeviceType, Driver, DriverConfig, HaContact, HomeAssistant,
    ModbusRelay, OnOff, Osdp, Shelly, Tasmota, TasmotaSwitch, ZenedgePanel, Zigbee2mqtt,
    ZigbeeContact,
};
use device::{valid_topic, validate_buses, validate_device};
pub use inbound::{InboundConfig, Listen};
pub use secrets::MIN_KEY_BYTES;
use secrets::{one_secret, private_file, strong_secret};

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

/// Why a size does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("`{0}` is not a size (write e.g. \"512MiB\")")]
    NotASize(String),
    #[error("unknown size unit `{0}` (use B, KiB, MiB, GiB, KB, MB or GB)")]
    Unit(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
}

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, SizeError> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let number: u64 = digits
            .parse()
            .map_err(|_| SizeError::NotASize(text.to_owned()))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            other => return Err(SizeError::Unit(other.to_owned())),
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| SizeError::TooLarge(text.to_owned()))
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
    pub commands: CommandsConfig,
    /// Decoded apart from the rest (`device::decode`): each by its driver.
    #[serde(skip)]
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
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.message().to_owned() + &line_of(text, e.span()),
        })?;
        let devices = match table.remove("devices") {
            None => Vec::new(),
            Some(toml::Value::Array(devices)) => devices,
            Some(_) => {
                return Err(ConfigError::key(
                    "devices",
                    "must be a list of tables, one [[devices]] per device",
                ))
            }
        };
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                // toml's own wording ends with "\nin `key`": the key is named already.
                let message = e.into_inner().to_string();
                let message = message.lines().next().unwrap_or_default().trim().to_owned();
                ConfigError::key(
                    if key == "." {
                        "(top level)".into()
                    } else {
                        key
                    },
                    message,
                )
            })?;
        config.devices = devices
            .into_iter()
            .enumerate()
            .map(|(i, d)| device::decode(i, d))
            .collect::<Result<_, _>>()?;
        config.resolve_secrets()?;
        config.validate()?;
        config.commands.validate()?;
        if config.inbound.listen.0.is_none() && !config.commands.transport.channel() {
            return Err(ConfigError::key(
                "inbound.listen",
                "\"\" opens no endpoint, so with commands.transport \"http\" no command could \
                 arrive: set an address, or commands.transport = \"mqtt\"",
            ));
        }
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
        self.commands.resolve_secrets()?;
        for (i, d) in self.devices.iter_mut().enumerate() {
            match &mut d.settings {
                DriverConfig::Zigbee2mqtt(z) => {
                    z.pin_code = one_secret(
                        &format!("devices[{i}].pin_code_file"),
                        None,
                        z.pin_code_file.as_deref(),
                    )?;
                }
                DriverConfig::Osdp(o) if o.scbk.is_none() => {
                    o.scbk_from_file =
                        one_secret(&format!("devices[{i}].scbk"), None, o.scbk_file.as_deref())?;
                }
                _ => {}
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
        if self.mqtt.embedded && !crate::broker::AVAILABLE {
            return Err(ConfigError::key(
                "mqtt.embedded",
                "this build has no embedded broker (cargo feature `embedded-broker`): use an external broker",
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
        self.validate_contacts()?;
        validate_buses(&self.devices)
    }

    /// Each door's `contact` names a contact of this controller, and no two doors share one
    /// without saying so being the point (double doors share a contact: allowed).
    fn validate_contacts(&self) -> Result<(), ConfigError> {
        for (i, d) in self.devices.iter().enumerate() {
            let Some(contact) = &d.contact else {
                continue;
            };
            let found = self.devices.iter().find(|c| &c.id == contact);
            match found {
                Some(c) if c.reports_contact() => {}
                Some(c) => {
                    return Err(ConfigError::key(
                        format!("devices[{i}].contact"),
                        format!(
                            "`{contact}` is a {}, not a contact (nor a reader with \
                             contact_input)",
                            c.kind.as_str()
                        ),
                    ))
                }
                None => {
                    return Err(ConfigError::key(
                        format!("devices[{i}].contact"),
                        format!("no device `{contact}`: name a device of type \"contact\""),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The topics that identify a device (state in, commands out): (config key, what makes
    /// it the same topic, the topic as configured).
    fn device_topics(&self, d: &DeviceConfig) -> Vec<(&'static str, String, String)> {
        match &d.settings {
            DriverConfig::Zigbee2mqtt(z) => vec![(
                "topic",
                format!("{}/{}", z.base(&self.mqtt.zigbee2mqtt_base), z.topic),
                z.topic.clone(),
            )],
            // Two relays of one board are two devices on one topic.
            DriverConfig::Tasmota(t) => {
                vec![("topic", t.topic_for("cmnd", &t.power()), t.topic.clone())]
            }
            DriverConfig::Shelly(s) => vec![(
                "topic",
                format!("shelly:{}/switch:{}", s.topic, s.switch),
                s.topic.clone(),
            )],
            DriverConfig::Homeassistant(h) => vec![
                ("state_topic", h.state_topic.clone(), h.state_topic.clone()),
                (
                    "command_topic",
                    format!("command:{}", h.command_topic),
                    h.command_topic.clone(),
                ),
            ],
            DriverConfig::Contact(Contact::Zigbee2mqtt(z)) => vec![(
                "topic",
                format!("{}/{}", z.base(&self.mqtt.zigbee2mqtt_base), z.topic),
                z.topic.clone(),
            )],
            // A board's switch input sits beside its relays on one topic: its own identity.
            DriverConfig::Contact(Contact::Tasmota(t)) => {
                vec![("switch", t.topic_for("switch", &t.key()), t.topic.clone())]
            }
            DriverConfig::Contact(Contact::Homeassistant(h)) => {
                vec![("state_topic", h.state_topic.clone(), h.state_topic.clone())]
            }
            DriverConfig::ZenedgePanel(_)
            | DriverConfig::ModbusRelay(_)
            | DriverConfig::Osdp(_)
            | DriverConfig::Contact(Contact::ModbusInput(_)) => Vec::new(),
        }
    }

    /// The MQTT client id (`mqtt.client_id`, default `zenedge-<controller_id>`).
    pub fn mqtt_client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("zenedge-{}", self.controller.id))
    }
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
mod tests;

/// Configs for the machines' unit tests.
#[cfg(test)]
pub(crate) mod testing;
