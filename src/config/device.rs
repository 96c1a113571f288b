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
    /// Shelly Gen2+ relays (Plus, Pro) over MQTT: the relay times the strike's pulse itself.
    Shelly,
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
            Driver::Shelly => "shelly",
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
            Driver::Tasmota | Driver::ModbusRelay | Driver::Shelly => {
                &[DeviceType::Strike, DeviceType::Lock]
            }
            Driver::ZenedgePanel => &[DeviceType::Panel],
            Driver::Osdp => &[DeviceType::Reader],
        }
    }

    /// Driver-specific keys this driver reads; any other driver-specific key set on the
    /// device is a mistake worth naming (a `coil` on a Zigbee lock does nothing).
    fn keys(self) -> &'static [&'static str] {
        match self {
            Driver::Zigbee2mqtt => &["topic", "base", "pin_code_file"],
            Driver::Tasmota => &["topic", "pulse", "relay", "full_topic"],
            Driver::Shelly => &["topic", "pulse", "switch"],
            Driver::Homeassistant => &[
                "state_topic",
                "command_topic",
                "availability_topic",
                "payload_lock",
                "payload_unlock",
                "payload_open",
                "state_locked",
                "state_unlocked",
                "state_jammed",
                "state_locking",
                "state_unlocking",
                "payload_available",
                "payload_not_available",
                "value_json",
            ],
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
                "card_format",
                "install_scbk",
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
    /// zigbee2mqtt: this device's Zigbee2MQTT base topic, over `mqtt.zigbee2mqtt_base` (a
    /// second Zigbee network on the broker).
    pub base: Option<String>,
    /// tasmota: which relay of a multi-relay board (1..=8; `POWER<N>`).
    pub relay: Option<u8>,
    /// tasmota: the device's FullTopic setting when changed from `%prefix%/%topic%/`.
    pub full_topic: Option<String>,
    /// shelly: which switch of the device (0..).
    pub switch: Option<u8>,
    /// zigbee2mqtt: a file holding the PIN code the lock demands for remote operation (sent
    /// as `code`); private like every secret file.
    pub pin_code_file: Option<PathBuf>,
    /// `pin_code_file`'s contents, read at load.
    #[serde(skip)]
    pub pin_code: Option<Secret>,
    /// osdp: give a new reader still on the default key (SCBK-D) this `scbk`, once.
    pub install_scbk: Option<bool>,
    /// osdp: how the reader's card reads are decoded (default `wiegand26`).
    pub card_format: Option<crate::serial::cards::CardFormat>,
    /// homeassistant: the payloads and states of the lock (Home Assistant's MQTT lock keys:
    /// enough for ESPHome, Nuki's MQTT API and Zigbee2MQTT's Home Assistant topics). Unset:
    /// Home Assistant's defaults.
    pub payload_lock: Option<String>,
    pub payload_unlock: Option<String>,
    /// Unlatch: sent for an unlock when set.
    pub payload_open: Option<String>,
    pub state_locked: Option<String>,
    pub state_unlocked: Option<String>,
    pub state_jammed: Option<String>,
    pub state_locking: Option<String>,
    pub state_unlocking: Option<String>,
    pub payload_available: Option<String>,
    pub payload_not_available: Option<String>,
    /// Read the state from this key of a JSON state message.
    pub value_json: Option<String>,
    /// `scbk_file`'s contents, read at load.
    #[serde(skip)]
    pub scbk_from_file: Option<Secret>,
}

impl DeviceConfig {
    /// The Zigbee2MQTT base topic of this device: its own `base`, else `default`.
    pub fn zigbee2mqtt_base<'a>(&'a self, default: &'a str) -> &'a str {
        self.base.as_deref().unwrap_or(default)
    }

    /// The Home Assistant keys, by name.
    fn ha_values(&self) -> [(&'static str, Option<&String>); 11] {
        [
            ("payload_lock", self.payload_lock.as_ref()),
            ("payload_unlock", self.payload_unlock.as_ref()),
            ("payload_open", self.payload_open.as_ref()),
            ("state_locked", self.state_locked.as_ref()),
            ("state_unlocked", self.state_unlocked.as_ref()),
            ("state_jammed", self.state_jammed.as_ref()),
            ("state_locking", self.state_locking.as_ref()),
            ("state_unlocking", self.state_unlocking.as_ref()),
            ("payload_available", self.payload_available.as_ref()),
            ("payload_not_available", self.payload_not_available.as_ref()),
            ("value_json", self.value_json.as_ref()),
        ]
    }

    /// A Tasmota topic: the device's FullTopic with `%prefix%` (`cmnd`, `stat`, `tele`) and
    /// `%topic%` filled in, then `last` (`POWER2`, `RESULT`, `LWT`).
    pub fn tasmota_topic(&self, prefix: &str, last: &str) -> Option<String> {
        let full = self.full_topic.as_deref().unwrap_or("%prefix%/%topic%/");
        let full = full
            .replace("%prefix%", prefix)
            .replace("%topic%", self.topic.as_deref()?);
        let sep = if full.ends_with('/') { "" } else { "/" };
        Some(format!("{full}{sep}{last}"))
    }

    /// The Tasmota relay number (1 when unset).
    pub fn relay(&self) -> u8 {
        self.relay.unwrap_or(1)
    }

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
        mark(self.base.is_some(), "base");
        mark(self.relay.is_some(), "relay");
        mark(self.full_topic.is_some(), "full_topic");
        mark(self.switch.is_some(), "switch");
        mark(self.card_format.is_some(), "card_format");
        mark(self.install_scbk.is_some(), "install_scbk");
        mark(self.pin_code_file.is_some(), "pin_code_file");
        for (name, value) in self.ha_values() {
            mark(value.is_some(), name);
        }
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
            require(d.topic.as_deref().is_some_and(valid_topic), "topic")?;
            if let Some(base) = &d.base {
                require(valid_topic(base), "base")?;
            }
            if let Some(full) = &d.full_topic {
                let tokens_ok = full.contains("%prefix%")
                    && full.contains("%topic%")
                    && full.matches('%').count() == 4;
                if !tokens_ok || full.contains(['+', '#']) || full.starts_with('/') {
                    return Err(ConfigError::key(
                        key("full_topic"),
                        "must hold %prefix% and %topic% (and no other % token or wildcard), as \
                         Tasmota's FullTopic setting, e.g. \"%prefix%/%topic%/\"",
                    ));
                }
            }
            if d.relay.is_some_and(|r| !(1..=8).contains(&r)) {
                return Err(ConfigError::key(
                    key("relay"),
                    "a Tasmota relay is 1..=8 (POWER1..POWER8)",
                ));
            }
        }
        Driver::Shelly => {
            require(d.topic.as_deref().is_some_and(valid_topic), "topic")?;
            // The relay times the pulse itself (`toggle_after`): without one it would stay on.
            require(d.pulse.is_some(), "pulse")?;
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
            for (name, value) in d.ha_values() {
                if value.is_some_and(|v| v.trim().is_empty()) {
                    return Err(ConfigError::key(key(name), "must not be empty"));
                }
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
            if d.install_scbk == Some(true) && keyed == 0 {
                return Err(ConfigError::key(
                    key("install_scbk"),
                    "needs the key to install: set scbk or scbk_file",
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

/// Devices that name one serial port share its bus (DESIGN section 4): one protocol, one baud,
/// and distinct addresses (OSDP) or (address, coil) pairs (Modbus). A conflict names both.
pub(super) fn validate_buses(devices: &[DeviceConfig]) -> Result<(), ConfigError> {
    for (i, d) in devices.iter().enumerate() {
        let Some(port) = d.port.as_ref().filter(|_| d.driver.is_serial()) else {
            continue;
        };
        for (j, e) in devices.iter().enumerate().take(i) {
            if !e.driver.is_serial() || e.port.as_ref() != Some(port) {
                continue;
            }
            let clash = |what: String| {
                Err(ConfigError::key(
                    format!("devices[{i}].port"),
                    format!(
                        "`{}` shares {} with `{}` (devices[{j}]), but {what}",
                        d.id,
                        port.display(),
                        e.id
                    ),
                ))
            };
            if d.driver != e.driver {
                return clash(format!(
                    "one bus speaks one protocol ({} and {})",
                    d.driver.as_str(),
                    e.driver.as_str()
                ));
            }
            let (baud_d, baud_e) = (d.baud.unwrap_or(9600), e.baud.unwrap_or(9600));
            if baud_d != baud_e {
                return clash(format!("one bus has one baud rate ({baud_d} and {baud_e})"));
            }
            let (a, b) = (d.address.unwrap_or(1), e.address.unwrap_or(1));
            match d.driver {
                Driver::Osdp if a == b => {
                    return clash(format!("both are at OSDP address {a}"));
                }
                Driver::ModbusRelay if a == b && d.coil.unwrap_or(0) == e.coil.unwrap_or(0) => {
                    return clash(format!(
                        "both drive coil {} of board {a}",
                        d.coil.unwrap_or(0)
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// An MQTT topic a device may be configured with: no wildcards, no empty levels at the ends.
pub(super) fn valid_topic(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#', '\0']) && !t.starts_with('/') && !t.ends_with('/')
}
