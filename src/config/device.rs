//! Devices as configured: their types, drivers, driver keys, and the checks of each.

use std::path::{Path, PathBuf};
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
    /// A door contact (DESIGN §3): says whether a door is shut.
    Contact,
}

impl DeviceType {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Lock => "lock",
            DeviceType::Strike => "strike",
            DeviceType::Panel => "panel",
            DeviceType::Reader => "reader",
            DeviceType::Contact => "contact",
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
    /// A discrete input (FC02) of a Modbus relay board: a door contact.
    ModbusInput,
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
            Driver::ModbusInput => "modbus-input",
        }
    }

    /// Drivers that speak over a serial port rather than MQTT.
    pub fn is_serial(self) -> bool {
        matches!(
            self,
            Driver::ModbusRelay | Driver::Osdp | Driver::ModbusInput
        )
    }

    /// The protocol on the wire: Modbus relays and inputs share a bus, OSDP readers another.
    pub fn protocol(self) -> &'static str {
        match self {
            Driver::ModbusRelay | Driver::ModbusInput => "Modbus RTU",
            Driver::Osdp => "OSDP",
            other => other.as_str(),
        }
    }

    /// Device types this driver can drive.
    fn types(self) -> &'static [DeviceType] {
        match self {
            Driver::Zigbee2mqtt | Driver::Homeassistant => &[DeviceType::Lock, DeviceType::Contact],
            Driver::Tasmota => &[DeviceType::Strike, DeviceType::Lock, DeviceType::Contact],
            Driver::ModbusRelay | Driver::Shelly => &[DeviceType::Strike, DeviceType::Lock],
            Driver::ZenedgePanel => &[DeviceType::Panel],
            Driver::ModbusInput => &[DeviceType::Contact],
            Driver::Osdp => &[DeviceType::Reader],
        }
    }
}

/// A device as configured: what every device has, and its driver's own settings, decoded by
/// `driver` into that driver's type with its defaults applied (so nothing downstream supplies
/// a default of its own, and a key another driver reads is an error naming it).
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub id: String,
    pub kind: DeviceType,
    pub offline_after: Option<Duration>,
    pub action_timeout: Duration,
    pub meeting_space_id: Option<String>,
    /// A lock or strike: the contact of its door (a `contact` device's id).
    pub contact: Option<String>,
    /// A door with a contact: open this long after opening is `door.held_open`.
    pub held_open_after: Duration,
    pub settings: DriverConfig,
}

/// How long a door may stand open before `door.held_open` (DESIGN §3's default).
pub const HELD_OPEN_AFTER: Duration = Duration::from_secs(60);

/// One driver's settings.
#[derive(Debug, Clone)]
pub enum DriverConfig {
    Zigbee2mqtt(Zigbee2mqtt),
    Tasmota(Tasmota),
    Homeassistant(Box<HomeAssistant>),
    ZenedgePanel(ZenedgePanel),
    ModbusRelay(ModbusRelay),
    Osdp(Osdp),
    Shelly(Shelly),
    /// A door contact, on one of the drivers that read one.
    Contact(Contact),
}

/// A door contact's settings, by driver (DESIGN §3, "Doors that know whether they are shut").
#[derive(Debug, Clone)]
pub enum Contact {
    /// `{"contact": true}` is closed (Aqara, Sonoff and the other Zigbee door sensors).
    Zigbee2mqtt(ZigbeeContact),
    /// A switch input of a Tasmota device: `SwitchN` in `RESULT` or `SENSOR`.
    Tasmota(TasmotaSwitch),
    /// A Home Assistant binary sensor (`state_open` / `state_closed`).
    Homeassistant(HaContact),
    /// A discrete input of a Modbus relay board, read with FC02.
    ModbusInput(ModbusInput),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusInput {
    pub port: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// The board's Modbus slave address.
    #[serde(default = "one")]
    pub address: u8,
    /// The discrete input (0-based, as FC02 addresses it).
    pub input: u16,
    /// The input's state when the door is shut: `ON` (a reed contact that closes the circuit,
    /// the common wiring) unless set.
    #[serde(default = "input_closed_default")]
    pub closed: OnOff,
}

fn input_closed_default() -> OnOff {
    OnOff::On
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZigbeeContact {
    pub topic: String,
    pub base: Option<String>,
}

impl ZigbeeContact {
    pub fn base<'a>(&'a self, default: &'a str) -> &'a str {
        self.base.as_deref().unwrap_or(default)
    }
}

/// What a Tasmota switch reads when the door is shut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OnOff {
    #[serde(rename = "ON")]
    On,
    #[serde(rename = "OFF")]
    Off,
}

impl OnOff {
    pub fn as_str(self) -> &'static str {
        match self {
            OnOff::On => "ON",
            OnOff::Off => "OFF",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasmotaSwitch {
    pub topic: String,
    /// Which switch input (1..=28: `Switch<N>`).
    pub switch: u8,
    /// The switch's state when the door is shut (a reed contact closes the circuit: `OFF`
    /// with Tasmota's default SwitchMode inverted wiring is the common case).
    #[serde(default = "closed_default")]
    pub closed: OnOff,
    #[serde(default = "default_full_topic")]
    pub full_topic: String,
}

fn closed_default() -> OnOff {
    OnOff::Off
}

impl TasmotaSwitch {
    /// The key of this switch in `RESULT` and `SENSOR`: `Switch<N>`.
    pub fn key(&self) -> String {
        format!("Switch{}", self.switch)
    }

    /// The same FullTopic rule as a Tasmota relay's.
    pub fn topic_for(&self, prefix: &str, last: &str) -> String {
        full_topic(&self.full_topic, &self.topic, prefix, last)
    }
}

/// A Home Assistant binary sensor's keys, with Home Assistant's defaults (`ON` = open).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaContact {
    pub state_topic: String,
    pub availability_topic: Option<String>,
    #[serde(default = "state_open_default")]
    pub state_open: String,
    #[serde(default = "state_closed_default")]
    pub state_closed: String,
    pub payload_available: Option<String>,
    pub payload_not_available: Option<String>,
    pub value_json: Option<String>,
}

fn state_open_default() -> String {
    "ON".to_owned()
}
fn state_closed_default() -> String {
    "OFF".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zigbee2mqtt {
    pub topic: String,
    /// This device's Zigbee2MQTT base topic, over `mqtt.zigbee2mqtt_base` (a second Zigbee
    /// network on the broker).
    pub base: Option<String>,
    /// A file holding the PIN code the lock demands for remote operation (sent as `code`);
    /// private like every secret file.
    pub pin_code_file: Option<PathBuf>,
    /// `pin_code_file`'s contents, read at load.
    #[serde(skip)]
    pub pin_code: Option<Secret>,
}

impl Zigbee2mqtt {
    /// The Zigbee2MQTT base topic of this device: its own `base`, else `default`.
    pub fn base<'a>(&'a self, default: &'a str) -> &'a str {
        self.base.as_deref().unwrap_or(default)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tasmota {
    pub topic: String,
    /// Which relay of a multi-relay board (1..=8; `POWER<N>`).
    #[serde(default = "one")]
    pub relay: u8,
    /// The device's FullTopic setting.
    #[serde(default = "default_full_topic")]
    pub full_topic: String,
    /// The strike's pulse as its PulseTime has it (informational: the relay times it).
    #[serde(default, with = "humantime_serde")]
    pub pulse: Option<Duration>,
}

impl Tasmota {
    /// The relay's command and state name: `POWER` for relay 1, `POWER<N>` for the others.
    pub fn power(&self) -> String {
        match self.relay {
            1 => "POWER".to_owned(),
            n => format!("POWER{n}"),
        }
    }

    /// A Tasmota topic: the FullTopic with `%prefix%` (`cmnd`, `stat`, `tele`) and `%topic%`
    /// filled in, then `last` (`POWER2`, `RESULT`, `LWT`).
    pub fn topic_for(&self, prefix: &str, last: &str) -> String {
        full_topic(&self.full_topic, &self.topic, prefix, last)
    }
}

/// A Tasmota topic: the FullTopic with `%prefix%` and `%topic%` filled in, then `last`.
fn full_topic(full: &str, topic: &str, prefix: &str, last: &str) -> String {
    let full = full.replace("%prefix%", prefix).replace("%topic%", topic);
    let sep = if full.ends_with('/') { "" } else { "/" };
    format!("{full}{sep}{last}")
}

/// Home Assistant's MQTT lock keys, with Home Assistant's defaults: enough for ESPHome, Nuki's
/// MQTT API and Zigbee2MQTT's Home Assistant topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistant {
    pub state_topic: String,
    pub command_topic: String,
    pub availability_topic: Option<String>,
    #[serde(default = "payload_lock_default")]
    pub payload_lock: String,
    #[serde(default = "payload_unlock_default")]
    pub payload_unlock: String,
    /// Unlatch: sent for an unlock when set.
    pub payload_open: Option<String>,
    #[serde(default = "state_locked_default")]
    pub state_locked: String,
    #[serde(default = "state_unlocked_default")]
    pub state_unlocked: String,
    #[serde(default = "state_jammed_default")]
    pub state_jammed: String,
    #[serde(default = "state_locking_default")]
    pub state_locking: String,
    #[serde(default = "state_unlocking_default")]
    pub state_unlocking: String,
    /// Unset (both): `online`/`offline`, plain or as `{"state":…}`.
    pub payload_available: Option<String>,
    pub payload_not_available: Option<String>,
    /// Read the state from this key of a JSON state message.
    pub value_json: Option<String>,
}

impl HomeAssistant {
    /// The keys that carry a payload or state, by name.
    fn values(&self) -> [(&'static str, Option<&String>); 11] {
        [
            ("payload_lock", Some(&self.payload_lock)),
            ("payload_unlock", Some(&self.payload_unlock)),
            ("payload_open", self.payload_open.as_ref()),
            ("state_locked", Some(&self.state_locked)),
            ("state_unlocked", Some(&self.state_unlocked)),
            ("state_jammed", Some(&self.state_jammed)),
            ("state_locking", Some(&self.state_locking)),
            ("state_unlocking", Some(&self.state_unlocking)),
            ("payload_available", self.payload_available.as_ref()),
            ("payload_not_available", self.payload_not_available.as_ref()),
            ("value_json", self.value_json.as_ref()),
        ]
    }
}

/// Home Assistant's default payloads and states (also for a state read with no device).
pub mod ha_default {
    pub const LOCK: &str = "LOCK";
    pub const UNLOCK: &str = "UNLOCK";
    pub const LOCKED: &str = "LOCKED";
    pub const UNLOCKED: &str = "UNLOCKED";
    pub const JAMMED: &str = "JAMMED";
    pub const LOCKING: &str = "LOCKING";
    pub const UNLOCKING: &str = "UNLOCKING";
    pub const AVAILABLE: &str = "online";
    pub const NOT_AVAILABLE: &str = "offline";
}

// serde's `default` takes a function.
fn payload_lock_default() -> String {
    ha_default::LOCK.to_owned()
}
fn payload_unlock_default() -> String {
    ha_default::UNLOCK.to_owned()
}
fn state_locked_default() -> String {
    ha_default::LOCKED.to_owned()
}
fn state_unlocked_default() -> String {
    ha_default::UNLOCKED.to_owned()
}
fn state_jammed_default() -> String {
    ha_default::JAMMED.to_owned()
}
fn state_locking_default() -> String {
    ha_default::LOCKING.to_owned()
}
fn state_unlocking_default() -> String {
    ha_default::UNLOCKING.to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZenedgePanel {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusRelay {
    pub port: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// The board's Modbus slave address.
    #[serde(default = "one")]
    pub address: u8,
    #[serde(default)]
    pub coil: u16,
    #[serde(default = "default_pulse", with = "humantime_serde")]
    pub pulse: Duration,
    /// The board times the pulse itself (Waveshare's flash-on).
    #[serde(default)]
    pub flash: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Osdp {
    pub port: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// The reader's OSDP address.
    #[serde(default = "one")]
    pub address: u8,
    pub scbk: Option<Secret>,
    pub scbk_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
    /// The pulse of a strike on the reader's output; set, the reader is also a door.
    #[serde(default, with = "humantime_serde")]
    pub pulse: Option<Duration>,
    /// How the reader's card reads are decoded.
    #[serde(default)]
    pub card_format: crate::serial::cards::CardFormat,
    /// Give a new reader still on the default key (SCBK-D) this `scbk`, once.
    #[serde(default)]
    pub install_scbk: bool,
    /// The reader's input (0-based) wired to a door contact: the reader is then a contact a
    /// lock or strike can name.
    pub contact_input: Option<u8>,
    /// `scbk_file`'s contents, read at load.
    #[serde(skip)]
    pub scbk_from_file: Option<Secret>,
}

impl Osdp {
    /// The Secure Channel key: `None` when the reader runs without Secure Channel.
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

    /// The pulse of the reader's output (5 s unless set).
    pub fn output_pulse(&self) -> Duration {
        self.pulse.unwrap_or_else(default_pulse)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shelly {
    /// The device's MQTT prefix.
    pub topic: String,
    /// Which switch of the device (0..).
    #[serde(default)]
    pub switch: u8,
    /// The relay times the pulse itself (`toggle_after`): without one it would stay on.
    #[serde(with = "humantime_serde")]
    pub pulse: Duration,
}

fn one() -> u8 {
    1
}

fn default_baud() -> u32 {
    9600
}

fn default_pulse() -> Duration {
    Duration::from_secs(5)
}

fn default_full_topic() -> String {
    "%prefix%/%topic%/".to_owned()
}

/// The keys every device has, whatever its driver, and the rest: its driver's.
#[derive(Deserialize)]
struct Common {
    id: String,
    #[serde(rename = "type")]
    kind: DeviceType,
    driver: Driver,
    #[serde(default, with = "humantime_serde")]
    offline_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    action_timeout: Option<Duration>,
    meeting_space_id: Option<String>,
    contact: Option<String>,
    #[serde(default, with = "humantime_serde")]
    held_open_after: Option<Duration>,
    #[serde(flatten)]
    rest: toml::Table,
}

/// Decodes `devices[i]`: the common keys, then the rest as the settings of its `driver`.
pub(super) fn decode(i: usize, value: toml::Value) -> Result<DeviceConfig, ConfigError> {
    let toml::Value::Table(table) = value else {
        return Err(ConfigError::key(
            format!("devices[{i}]"),
            "must be a table ([[devices]])",
        ));
    };
    let mut common: Common = decode_part(i, table, |e| e)?;
    let rest = std::mem::take(&mut common.rest);
    if common.held_open_after.is_some() && common.contact.is_none() {
        return Err(ConfigError::key(
            format!("devices[{i}].held_open_after"),
            "needs `contact`: only a door with a contact knows it is held open",
        ));
    }
    let driver = common.driver;
    let contact = common.kind == DeviceType::Contact;
    let d = if contact {
        format!("{} for a contact", driver.as_str())
    } else {
        driver.as_str().to_owned()
    };
    let settings = {
        let explain = |message: String| {
            if message.starts_with("missing field") {
                format!("required by driver {d}")
            } else if let Some(known) = message.strip_prefix("unknown field") {
                match known.split_once(", ") {
                    Some((_, "there are no fields")) | None => {
                        format!("not used by driver {d} (it takes no keys of its own)")
                    }
                    Some((_, expected)) => format!("not used by driver {d} ({expected})"),
                }
            } else {
                message
            }
        };
        match driver {
            Driver::Zigbee2mqtt if contact => {
                DriverConfig::Contact(Contact::Zigbee2mqtt(decode_part(i, rest, explain)?))
            }
            Driver::Tasmota if contact => {
                DriverConfig::Contact(Contact::Tasmota(decode_part(i, rest, explain)?))
            }
            Driver::Homeassistant if contact => {
                DriverConfig::Contact(Contact::Homeassistant(decode_part(i, rest, explain)?))
            }
            Driver::Zigbee2mqtt => DriverConfig::Zigbee2mqtt(decode_part(i, rest, explain)?),
            Driver::Tasmota => DriverConfig::Tasmota(decode_part(i, rest, explain)?),
            Driver::Homeassistant => {
                DriverConfig::Homeassistant(Box::new(decode_part(i, rest, explain)?))
            }
            Driver::ZenedgePanel => DriverConfig::ZenedgePanel(decode_part(i, rest, explain)?),
            Driver::ModbusRelay => DriverConfig::ModbusRelay(decode_part(i, rest, explain)?),
            Driver::Osdp => DriverConfig::Osdp(decode_part(i, rest, explain)?),
            Driver::Shelly => DriverConfig::Shelly(decode_part(i, rest, explain)?),
            Driver::ModbusInput => {
                DriverConfig::Contact(Contact::ModbusInput(decode_part(i, rest, explain)?))
            }
        }
    };
    Ok(DeviceConfig {
        id: common.id,
        kind: common.kind,
        offline_after: common.offline_after,
        action_timeout: common.action_timeout.unwrap_or(Duration::from_secs(10)),
        meeting_space_id: common.meeting_space_id,
        contact: common.contact,
        held_open_after: common.held_open_after.unwrap_or(HELD_OPEN_AFTER),
        settings,
    })
}

/// One part of `devices[i]` as `T`; an error names its key (`devices[i].<key>`; a missing
/// field's own name) with `explain`'s wording.
fn decode_part<T: serde::de::DeserializeOwned>(
    i: usize,
    table: toml::Table,
    explain: impl Fn(String) -> String,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        // toml's own wording ends with "\nin `key`": the key is named already.
        let message = e.into_inner().to_string();
        let message = message.lines().next().unwrap_or_default().trim().to_owned();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .map(str::to_owned);
        let key = match missing {
            Some(field) if path == "." => format!("devices[{i}].{field}"),
            _ if path == "." => format!("devices[{i}]"),
            _ => format!("devices[{i}].{path}"),
        };
        ConfigError::key(key, explain(message))
    })
}

impl DeviceConfig {
    pub fn driver(&self) -> Driver {
        match self.settings {
            DriverConfig::Zigbee2mqtt(_) => Driver::Zigbee2mqtt,
            DriverConfig::Tasmota(_) => Driver::Tasmota,
            DriverConfig::Homeassistant(_) => Driver::Homeassistant,
            DriverConfig::ZenedgePanel(_) => Driver::ZenedgePanel,
            DriverConfig::ModbusRelay(_) => Driver::ModbusRelay,
            DriverConfig::Osdp(_) => Driver::Osdp,
            DriverConfig::Shelly(_) => Driver::Shelly,
            DriverConfig::Contact(Contact::Zigbee2mqtt(_)) => Driver::Zigbee2mqtt,
            DriverConfig::Contact(Contact::Tasmota(_)) => Driver::Tasmota,
            DriverConfig::Contact(Contact::Homeassistant(_)) => Driver::Homeassistant,
            DriverConfig::Contact(Contact::ModbusInput(_)) => Driver::ModbusInput,
        }
    }

    /// Whether a door can name this device as its `contact`: a contact, or an OSDP reader
    /// with `contact_input`.
    pub fn reports_contact(&self) -> bool {
        match &self.settings {
            DriverConfig::Osdp(o) => o.contact_input.is_some(),
            _ => self.kind == DeviceType::Contact,
        }
    }

    /// A door contact's settings.
    pub fn contact_settings(&self) -> Option<&Contact> {
        match &self.settings {
            DriverConfig::Contact(c) => Some(c),
            _ => None,
        }
    }

    /// The serial port and its baud rate, for the serial drivers.
    pub fn serial_port(&self) -> Option<(&Path, u32)> {
        match &self.settings {
            DriverConfig::ModbusRelay(m) => Some((&m.port, m.baud)),
            DriverConfig::Osdp(o) => Some((&o.port, o.baud)),
            DriverConfig::Contact(Contact::ModbusInput(m)) => Some((&m.port, m.baud)),
            _ => None,
        }
    }

    pub fn zigbee2mqtt(&self) -> Option<&Zigbee2mqtt> {
        match &self.settings {
            DriverConfig::Zigbee2mqtt(z) => Some(z),
            _ => None,
        }
    }

    pub fn tasmota(&self) -> Option<&Tasmota> {
        match &self.settings {
            DriverConfig::Tasmota(t) => Some(t),
            _ => None,
        }
    }

    pub fn homeassistant(&self) -> Option<&HomeAssistant> {
        match &self.settings {
            DriverConfig::Homeassistant(h) => Some(h),
            _ => None,
        }
    }

    /// Whether passage mode can hold this door unlocked (DESIGN §3): a motor lock, or a
    /// relay ZenEdge times itself. A Tasmota relay keeps its own PulseTime, a flash board its
    /// own pulse: neither can be held.
    pub fn can_hold(&self) -> bool {
        self.is_door()
            && match &self.settings {
                DriverConfig::Tasmota(_) => false,
                DriverConfig::ModbusRelay(m) => !m.flash,
                _ => true,
            }
    }

    /// Whether this device is an OSDP reader with a strike on its output (a door).
    pub fn is_door(&self) -> bool {
        match &self.settings {
            DriverConfig::Osdp(o) => o.pulse.is_some(),
            _ => matches!(self.kind, DeviceType::Lock | DeviceType::Strike),
        }
    }
}

pub(super) fn validate_device(i: usize, d: &DeviceConfig) -> Result<(), ConfigError> {
    let key = |name: &str| format!("devices[{i}].{name}");
    let refuse = |name: &str, message: &str| Err(ConfigError::key(key(name), message));
    if d.id.trim().is_empty()
        || !d
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return refuse(
            "id",
            "must be non-empty and use only letters, digits, `-`, `_` and `.`",
        );
    }
    let driver = d.driver();
    if !driver.types().contains(&d.kind) {
        let allowed: Vec<_> = driver.types().iter().map(|t| t.as_str()).collect();
        return Err(ConfigError::key(
            key("type"),
            format!(
                "driver {} drives {}, not {}",
                driver.as_str(),
                allowed.join(" or "),
                d.kind.as_str()
            ),
        ));
    }
    let topic = |name: &str, t: &str| {
        if valid_topic(t) {
            Ok(())
        } else {
            refuse(
                name,
                "must be an MQTT topic without wildcards or a `/` at either end",
            )
        }
    };
    let pulse = |p: Duration| {
        if p.is_zero() || p > Duration::from_secs(60) {
            refuse("pulse", "must be between 1ms and 60s")
        } else {
            Ok(())
        }
    };
    let modbus_address = |a: u8| {
        if (1..=247).contains(&a) {
            Ok(())
        } else {
            refuse("address", "a Modbus slave address is 1..=247")
        }
    };
    let baud = |b: u32| {
        if matches!(
            b,
            1200 | 2400 | 4800 | 9600 | 19200 | 38400 | 57600 | 115200
        ) {
            Ok(())
        } else {
            Err(ConfigError::key(
                key("baud"),
                format!("{b} is not a standard baud rate"),
            ))
        }
    };
    match &d.settings {
        DriverConfig::Zigbee2mqtt(z) => {
            topic("topic", &z.topic)?;
            if let Some(base) = &z.base {
                topic("base", base)?;
            }
        }
        DriverConfig::Tasmota(t) => {
            topic("topic", &t.topic)?;
            full_topic_ok(&t.full_topic).or_else(|e| refuse("full_topic", e))?;
            if !(1..=8).contains(&t.relay) {
                return refuse("relay", "a Tasmota relay is 1..=8 (POWER1..POWER8)");
            }
            if let Some(p) = t.pulse {
                pulse(p)?;
            }
        }
        DriverConfig::Shelly(s) => {
            topic("topic", &s.topic)?;
            pulse(s.pulse)?;
        }
        DriverConfig::Homeassistant(h) => {
            topic("state_topic", &h.state_topic)?;
            topic("command_topic", &h.command_topic)?;
            if let Some(t) = &h.availability_topic {
                topic("availability_topic", t)?;
            }
            for (name, value) in h.values() {
                if value.is_some_and(|v| v.trim().is_empty()) {
                    return refuse(name, "must not be empty");
                }
            }
        }
        DriverConfig::ZenedgePanel(_) => {}
        DriverConfig::Contact(Contact::Zigbee2mqtt(z)) => {
            topic("topic", &z.topic)?;
            if let Some(base) = &z.base {
                topic("base", base)?;
            }
        }
        DriverConfig::Contact(Contact::Tasmota(t)) => {
            topic("topic", &t.topic)?;
            full_topic_ok(&t.full_topic).or_else(|e| refuse("full_topic", e))?;
            if !(1..=28).contains(&t.switch) {
                return refuse(
                    "switch",
                    "a Tasmota switch input is 1..=28 (Switch1..Switch28)",
                );
            }
        }
        DriverConfig::Contact(Contact::Homeassistant(h)) => {
            topic("state_topic", &h.state_topic)?;
            if let Some(t) = &h.availability_topic {
                topic("availability_topic", t)?;
            }
            let values = [
                ("state_open", Some(&h.state_open)),
                ("state_closed", Some(&h.state_closed)),
                ("payload_available", h.payload_available.as_ref()),
                ("payload_not_available", h.payload_not_available.as_ref()),
                ("value_json", h.value_json.as_ref()),
            ];
            for (name, value) in values {
                if value.is_some_and(|v| v.trim().is_empty()) {
                    return refuse(name, "must not be empty");
                }
            }
            if h.state_open.eq_ignore_ascii_case(&h.state_closed) {
                return refuse("state_closed", "must differ from state_open");
            }
        }
        DriverConfig::Contact(Contact::ModbusInput(m)) => {
            modbus_address(m.address)?;
            baud(m.baud)?;
        }
        DriverConfig::ModbusRelay(m) => {
            modbus_address(m.address)?;
            baud(m.baud)?;
            pulse(m.pulse)?;
        }
        DriverConfig::Osdp(o) => {
            if o.address > 126 {
                return refuse("address", "an OSDP address is 0..=126");
            }
            if o.contact_input.is_some_and(|n| n > 63) {
                return refuse("contact_input", "an OSDP input is 0..=63");
            }
            baud(o.baud)?;
            if let Some(p) = o.pulse {
                pulse(p)?;
            }
            let keyed = o.scbk.is_some() as u8 + o.scbk_file.is_some() as u8;
            if keyed > 1 {
                return refuse("scbk", "set scbk or scbk_file, not both");
            }
            if keyed == 0 && !o.insecure {
                return refuse(
                    "scbk",
                    "Secure Channel needs scbk or scbk_file (or insecure = true)",
                );
            }
            if o.install_scbk && keyed == 0 {
                return refuse(
                    "install_scbk",
                    "needs the key to install: set scbk or scbk_file",
                );
            }
            if keyed == 1 && o.insecure {
                return refuse(
                    "insecure",
                    "insecure = true contradicts a Secure Channel key",
                );
            }
            if let Err(e) = o.scbk_key() {
                return refuse(
                    if o.scbk.is_some() {
                        "scbk"
                    } else {
                        "scbk_file"
                    },
                    e,
                );
            }
        }
    }
    if d.contact.is_some() && !d.is_door() {
        return refuse(
            "contact",
            "only a door (a lock, a strike, a reader with a pulse) has a door contact",
        );
    }
    if d.held_open_after < Duration::from_secs(1) {
        return refuse("held_open_after", "must be at least 1s");
    }
    if d.offline_after.is_some_and(|t| t < Duration::from_secs(1)) {
        return refuse("offline_after", "must be at least 1s");
    }
    if d.action_timeout.is_zero() {
        return refuse("action_timeout", "must be above 0s");
    }
    if d.meeting_space_id
        .as_deref()
        .is_some_and(|m| m.trim().is_empty())
    {
        return refuse("meeting_space_id", "must not be empty");
    }
    Ok(())
}

/// A Tasmota FullTopic: `%prefix%` and `%topic%`, no other token, no wildcard.
fn full_topic_ok(full: &str) -> Result<(), &'static str> {
    let tokens_ok =
        full.contains("%prefix%") && full.contains("%topic%") && full.matches('%').count() == 4;
    if !tokens_ok || full.contains(['+', '#']) || full.starts_with('/') {
        return Err(
            "must hold %prefix% and %topic% (and no other % token or wildcard), as Tasmota's \
             FullTopic setting, e.g. \"%prefix%/%topic%/\"",
        );
    }
    Ok(())
}

/// Devices that name one serial port share its bus (DESIGN section 4): one protocol, one baud,
/// and distinct addresses (OSDP) or (address, coil) pairs (Modbus). A conflict names both.
pub(super) fn validate_buses(devices: &[DeviceConfig]) -> Result<(), ConfigError> {
    for (i, d) in devices.iter().enumerate() {
        let Some((port, baud_d)) = d.serial_port() else {
            continue;
        };
        for (j, e) in devices.iter().enumerate().take(i) {
            let Some((_, baud_e)) = e.serial_port().filter(|(p, _)| *p == port) else {
                continue;
            };
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
            if d.driver().protocol() != e.driver().protocol() {
                return clash(format!(
                    "one bus speaks one protocol ({} and {})",
                    d.driver().as_str(),
                    e.driver().as_str()
                ));
            }
            if baud_d != baud_e {
                return clash(format!("one bus has one baud rate ({baud_d} and {baud_e})"));
            }
            match (&d.settings, &e.settings) {
                (DriverConfig::Osdp(a), DriverConfig::Osdp(b)) if a.address == b.address => {
                    return clash(format!("both are at OSDP address {}", a.address));
                }
                (DriverConfig::ModbusRelay(a), DriverConfig::ModbusRelay(b))
                    if (a.address, a.coil) == (b.address, b.coil) =>
                {
                    return clash(format!("both drive coil {} of board {}", a.coil, a.address));
                }
                (
                    DriverConfig::Contact(Contact::ModbusInput(a)),
                    DriverConfig::Contact(Contact::ModbusInput(b)),
                ) if (a.address, a.input) == (b.address, b.input) => {
                    return clash(format!(
                        "both read input {} of board {}",
                        a.input, a.address
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
