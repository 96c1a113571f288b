//! Devices as configured: their types, drivers, driver keys, and the checks of each.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Secret};

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
    pub fn scbk_key(&self) -> Result<Option<[u8; 16]>, &'static str> {
        const BAD: &str = "scbk must be 32 hex digits";
        let Some(text) = self.scbk.as_ref().or(self.scbk_from_file.as_ref()) else {
            return Ok(None);
        };
        let bytes = hex::decode(text.expose().trim()).map_err(|_| BAD)?;
        <[u8; 16]>::try_from(bytes.as_slice())
            .map(Some)
            .map_err(|_| BAD)
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

pub(super) fn validate_device(i: usize, d: &DeviceConfig) -> Result<(), ConfigError> {
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
pub(super) fn valid_topic(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#', '\0']) && !t.starts_with('/') && !t.ends_with('/')
}
