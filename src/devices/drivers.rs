//! MQTT drivers (DESIGN section 3): pure mappings from topic + payload to observations, and
//! from commands to topic + payload. No I/O; every payload sample in the tests is what the
//! real firmware sends.

use std::collections::HashMap;

use serde_json::Value;

use crate::config::{
    ha_default, Config, Contact, DeviceConfig, DriverConfig, HomeAssistant, OnOff,
};

/// What a message says about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// An availability / LWT / status message.
    Availability { online: bool, source: AvailSource },
    /// A state report with a lock or relay state.
    State(LockState),
    /// A message that shows the device alive but carries no state we use.
    Heard,
    /// A credential presented at a panel (handled by the access path).
    Credential(Value),
    /// A panel action (check-in, end, extend; handled by the scheduler).
    PanelAction(Value),
    /// The Zigbee2MQTT bridge's answer to a health check: it is running (and says whether it
    /// is healthy).
    BridgeHealth { healthy: bool },
    /// A Tasmota relay's PulseTime (0: no pulse, the relay stays on once switched on).
    PulseTime(u64),
    /// A door contact's state.
    Contact { closed: bool },
}

/// Which kind of availability message, for the event's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvailSource {
    /// Zigbee2MQTT or Home Assistant availability topic.
    Availability,
    /// A Last Will: Tasmota LWT or panel status.
    Lwt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    Locked,
    Unlocked,
    /// `not_fully_locked` (Zigbee2MQTT) or `JAMMED` (Home Assistant).
    Jammed,
}

impl LockState {
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::Locked => "locked",
            LockState::Unlocked => "unlocked",
            LockState::Jammed => "jammed",
        }
    }
}

/// What a subscribed topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Z2mState,
    Z2mAvailability,
    /// `<base>/bridge/state`: about every Zigbee2MQTT device at once.
    Z2mBridge,
    /// `<base>/bridge/response/health_check`: the bridge answering ZenEdge's question.
    Z2mHealth,
    TasmotaLwt,
    TasmotaResult,
    TasmotaPower,
    HaState,
    HaAvailability,
    PanelStatus,
    PanelCredential,
    PanelAction,
    /// `<topic>/status/switch:<S>`: a Shelly Gen2 switch's status (`output`).
    ShellyStatus,
    /// `<topic>/online`: a Shelly's `true`/`false` (its Last Will).
    ShellyOnline,
    /// A Zigbee door sensor's state (`contact`: true = closed).
    Z2mContact,
    /// A Tasmota switch input in `stat/<t>/RESULT` or `tele/<t>/SENSOR` (`Switch<N>`).
    TasmotaSwitch,
    /// A Home Assistant binary sensor's state.
    HaContact,
}

impl TopicKind {
    /// Every kind, for tests and fuzzing that must cover each payload mapper.
    pub const ALL: [TopicKind; 17] = [
        TopicKind::Z2mState,
        TopicKind::Z2mAvailability,
        TopicKind::Z2mBridge,
        TopicKind::Z2mHealth,
        TopicKind::TasmotaLwt,
        TopicKind::TasmotaResult,
        TopicKind::TasmotaPower,
        TopicKind::HaState,
        TopicKind::HaAvailability,
        TopicKind::PanelStatus,
        TopicKind::PanelCredential,
        TopicKind::PanelAction,
        TopicKind::ShellyStatus,
        TopicKind::ShellyOnline,
        TopicKind::Z2mContact,
        TopicKind::TasmotaSwitch,
        TopicKind::HaContact,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not UTF-8")]
    NotUtf8,
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("unexpected value `{0}`")]
    Unexpected(String),
    #[error("payload too large ({0} bytes)")]
    TooLarge(usize),
}

/// Payloads above this are refused before parsing (Zigbee2MQTT bridge messages are larger,
/// but ZenEdge only subscribes to `bridge/state`).
pub const MAX_PAYLOAD: usize = 64 * 1024;

fn text(payload: &[u8]) -> Result<&str, PayloadError> {
    std::str::from_utf8(payload)
        .map(str::trim)
        .map_err(|_| PayloadError::NotUtf8)
}

/// `online`/`offline`, plain or as `{"state":"online"}` (Zigbee2MQTT's two availability forms).
fn online_flag(payload: &[u8]) -> Result<bool, PayloadError> {
    let t = text(payload)?;
    let word = if t.starts_with('{') {
        let v: Value = serde_json::from_str(t).map_err(|e| PayloadError::NotJson(e.to_string()))?;
        v.get("state")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| PayloadError::Unexpected(truncate(t)))?
    } else {
        t.to_owned()
    };
    match word.to_ascii_lowercase().as_str() {
        "online" => Ok(true),
        "offline" => Ok(false),
        _ => Err(PayloadError::Unexpected(truncate(&word))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn json_object(payload: &[u8]) -> Result<serde_json::Map<String, Value>, PayloadError> {
    let t = text(payload)?;
    match serde_json::from_str::<Value>(t) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(PayloadError::Unexpected(truncate(&other.to_string()))),
        Err(e) => Err(PayloadError::NotJson(e.to_string())),
    }
}

/// Maps one payload to what it says, for `device` when the topic is one device's (its
/// driver's settings: a Tasmota relay number, a Home Assistant lock's payloads). Total: any byte
/// string gives an observation or an error.
pub fn parse(
    kind: TopicKind,
    payload: &[u8],
    device: Option<&DeviceConfig>,
) -> Result<Observation, PayloadError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(PayloadError::TooLarge(payload.len()));
    }
    let avail =
        |source| online_flag(payload).map(|online| Observation::Availability { online, source });
    match kind {
        TopicKind::Z2mAvailability => avail(AvailSource::Availability),
        TopicKind::HaAvailability => ha_availability(payload, device),
        TopicKind::Z2mBridge => avail(AvailSource::Availability),
        TopicKind::Z2mHealth => {
            // `{"data":{"healthy":true},"status":"ok"}`
            let m = json_object(payload)?;
            let healthy = m
                .get("data")
                .and_then(|d| d.get("healthy"))
                .and_then(Value::as_bool)
                .ok_or_else(|| {
                    PayloadError::Unexpected(truncate(&Value::Object(m.clone()).to_string()))
                })?;
            Ok(Observation::BridgeHealth {
                healthy: healthy && m.get("status").and_then(Value::as_str) == Some("ok"),
            })
        }
        TopicKind::TasmotaLwt | TopicKind::PanelStatus => avail(AvailSource::Lwt),
        TopicKind::Z2mState => {
            let m = json_object(payload)?;
            // `lock_state` is the precise one; `state` (LOCK/UNLOCK) is what older converters send.
            if let Some(ls) = m.get("lock_state").and_then(Value::as_str) {
                return match ls {
                    "locked" => Ok(Observation::State(LockState::Locked)),
                    "unlocked" => Ok(Observation::State(LockState::Unlocked)),
                    "not_fully_locked" => Ok(Observation::State(LockState::Jammed)),
                    other => Err(PayloadError::Unexpected(truncate(other))),
                };
            }
            match m.get("state").and_then(Value::as_str) {
                Some("LOCK") => Ok(Observation::State(LockState::Locked)),
                Some("UNLOCK") => Ok(Observation::State(LockState::Unlocked)),
                Some(other) => Err(PayloadError::Unexpected(truncate(other))),
                // Battery, linkquality, …: alive, nothing about the lock.
                None => Ok(Observation::Heard),
            }
        }
        TopicKind::TasmotaResult => {
            let m = json_object(payload)?;
            // Relay 1 is `POWER` (or `POWER1` with SetOption26); relay N is `POWER<N>`. A RESULT
            // about another relay, or another command (PulseTime, …), says nothing of this one.
            let relay = device
                .and_then(DeviceConfig::tasmota)
                .map_or(1, |t| t.relay);
            // `{"PulseTime1":{"Set":50,"Remaining":0}}` (Tasmota 9+) or `{"PulseTime1":50}`.
            if let Some(p) = m.get(&format!("PulseTime{relay}")) {
                let set = p.get("Set").unwrap_or(p);
                return set
                    .as_u64()
                    .map(Observation::PulseTime)
                    .ok_or_else(|| PayloadError::Unexpected(truncate(&p.to_string())));
            }
            let value = match relay {
                1 => m.get("POWER").or_else(|| m.get("POWER1")),
                n => m.get(&format!("POWER{n}")),
            };
            match value {
                Some(v) => power(v.as_str().unwrap_or_default()),
                None => Ok(Observation::Heard),
            }
        }
        TopicKind::TasmotaPower => power(text(payload)?),
        TopicKind::HaState => ha_state(payload, device),
        TopicKind::ShellyStatus => {
            // `{"id":0,"source":"MQTT","output":true,"timer_started_at":…}`
            let m = json_object(payload)?;
            match m.get("output") {
                Some(Value::Bool(true)) => Ok(Observation::State(LockState::Unlocked)),
                Some(Value::Bool(false)) => Ok(Observation::State(LockState::Locked)),
                Some(other) => Err(PayloadError::Unexpected(truncate(&other.to_string()))),
                None => Ok(Observation::Heard),
            }
        }
        TopicKind::ShellyOnline => match text(payload)? {
            "true" => Ok(Observation::Availability {
                online: true,
                source: AvailSource::Lwt,
            }),
            "false" => Ok(Observation::Availability {
                online: false,
                source: AvailSource::Lwt,
            }),
            other => Err(PayloadError::Unexpected(truncate(other))),
        },
        TopicKind::PanelCredential => {
            json_object(payload).map(|m| Observation::Credential(Value::Object(m)))
        }
        TopicKind::PanelAction => {
            json_object(payload).map(|m| Observation::PanelAction(Value::Object(m)))
        }
        TopicKind::Z2mContact => {
            // `{"battery":100,"contact":false,"linkquality":87,"voltage":3015}`
            let m = json_object(payload)?;
            match m.get("contact") {
                Some(Value::Bool(closed)) => Ok(Observation::Contact { closed: *closed }),
                Some(other) => Err(PayloadError::Unexpected(truncate(&other.to_string()))),
                None => Ok(Observation::Heard),
            }
        }
        TopicKind::TasmotaSwitch => tasmota_switch(payload, device),
        TopicKind::HaContact => ha_contact(payload, device),
    }
}

/// A Tasmota switch input: `{"Switch1":"ON"}` (`SENSOR`, `Status 10`) or
/// `{"Switch1":{"Action":"ON"}}` (`RESULT` with SetOption114 or a SwitchTopic), against the
/// contact's `closed` setting. A `TOGGLE` says no state: the switch must be SwitchMode 1.
fn tasmota_switch(
    payload: &[u8],
    device: Option<&DeviceConfig>,
) -> Result<Observation, PayloadError> {
    let m = json_object(payload)?;
    let Some(Contact::Tasmota(s)) = device.and_then(DeviceConfig::contact_settings) else {
        return Ok(Observation::Heard);
    };
    let Some(v) = m.get(&s.key()) else {
        // Another switch, a relay, the time: nothing about this contact.
        return Ok(Observation::Heard);
    };
    let word = match v {
        Value::String(w) => w.as_str(),
        Value::Object(o) => o.get("Action").and_then(Value::as_str).unwrap_or_default(),
        _ => "",
    };
    let on = match word.to_ascii_uppercase().as_str() {
        "ON" => OnOff::On,
        "OFF" => OnOff::Off,
        _ => return Err(PayloadError::Unexpected(truncate(&v.to_string()))),
    };
    Ok(Observation::Contact {
        closed: on == s.closed,
    })
}

/// A Home Assistant binary sensor: its `state_open` / `state_closed` (default `ON` / `OFF`),
/// from the payload or its `value_json` key.
fn ha_contact(payload: &[u8], device: Option<&DeviceConfig>) -> Result<Observation, PayloadError> {
    let Some(Contact::Homeassistant(h)) = device.and_then(DeviceConfig::contact_settings) else {
        return Ok(Observation::Heard);
    };
    let Some(raw) = ha_value(payload, h.value_json.as_deref())? else {
        return Ok(Observation::Heard);
    };
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case(&h.state_open) {
        Ok(Observation::Contact { closed: false })
    } else if raw.eq_ignore_ascii_case(&h.state_closed) {
        Ok(Observation::Contact { closed: true })
    } else {
        Err(PayloadError::Unexpected(truncate(raw)))
    }
}

/// A Home Assistant state: the payload, or with `value_json` that key of a JSON message (a
/// number, text or flag, as text); `None` when the message lacks the key (another attribute).
fn ha_value(payload: &[u8], value_json: Option<&str>) -> Result<Option<String>, PayloadError> {
    let Some(key) = value_json else {
        return text(payload).map(|t| Some(t.to_owned()));
    };
    match json_object(payload)?.get(key) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(other) => Err(PayloadError::Unexpected(truncate(&other.to_string()))),
        None => Ok(None),
    }
}

/// A Home Assistant lock's state: the payload, or with `value_json` that key of a JSON message
/// (a number or text), against the lock's configured states (Home Assistant's defaults unset).
fn ha_state(payload: &[u8], device: Option<&DeviceConfig>) -> Result<Observation, PayloadError> {
    let ha = device.and_then(DeviceConfig::homeassistant);
    // Other attributes of the device (battery, …): alive, nothing about the lock.
    let Some(raw) = ha_value(payload, ha.and_then(|h| h.value_json.as_deref()))? else {
        return Ok(Observation::Heard);
    };
    let raw = raw.trim();
    // The lock's states, else Home Assistant's (a state read for no configured lock).
    let is = |configured: fn(&HomeAssistant) -> &str, default: &str| {
        raw.eq_ignore_ascii_case(ha.map_or(default, configured))
    };
    if is(|h| &h.state_locked, ha_default::LOCKED) {
        Ok(Observation::State(LockState::Locked))
    } else if is(|h| &h.state_unlocked, ha_default::UNLOCKED) || raw.eq_ignore_ascii_case("OPEN") {
        Ok(Observation::State(LockState::Unlocked))
    } else if is(|h| &h.state_jammed, ha_default::JAMMED) {
        Ok(Observation::State(LockState::Jammed))
    } else if is(|h| &h.state_locking, ha_default::LOCKING)
        || is(|h| &h.state_unlocking, ha_default::UNLOCKING)
        || raw.eq_ignore_ascii_case("OPENING")
    {
        Ok(Observation::Heard)
    } else {
        Err(PayloadError::Unexpected(truncate(raw)))
    }
}

/// A Home Assistant availability message: the lock's `payload_available` /
/// `payload_not_available`, else `online`/`offline` (plain or as `{"state":…}`).
fn ha_availability(
    payload: &[u8],
    device: Option<&DeviceConfig>,
) -> Result<Observation, PayloadError> {
    // A lock's or a binary sensor's own availability payloads.
    let payloads = device.and_then(|d| match &d.settings {
        DriverConfig::Homeassistant(h) => Some((
            h.payload_available.as_deref(),
            h.payload_not_available.as_deref(),
        )),
        DriverConfig::Contact(Contact::Homeassistant(h)) => Some((
            h.payload_available.as_deref(),
            h.payload_not_available.as_deref(),
        )),
        _ => None,
    });
    let custom = payloads.filter(|(on, off)| on.is_some() || off.is_some());
    let online = match custom {
        Some((on, off)) => {
            let t = text(payload)?;
            if t == on.unwrap_or(ha_default::AVAILABLE) {
                true
            } else if t == off.unwrap_or(ha_default::NOT_AVAILABLE) {
                false
            } else {
                return Err(PayloadError::Unexpected(truncate(t)));
            }
        }
        None => online_flag(payload)?,
    };
    Ok(Observation::Availability {
        online,
        source: AvailSource::Availability,
    })
}

/// A Tasmota relay drives a strike: energised (ON) is open.
fn power(word: &str) -> Result<Observation, PayloadError> {
    match word.trim().to_ascii_uppercase().as_str() {
        "ON" => Ok(Observation::State(LockState::Unlocked)),
        "OFF" => Ok(Observation::State(LockState::Locked)),
        other => Err(PayloadError::Unexpected(truncate(other))),
    }
}

/// A command to a device.
pub use crate::wire::DoorAction as Command;

/// A message to publish. Commands are never retained (DESIGN section 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// The topic and payload that carry `command` to `device`, or `None` when its driver cannot
/// (a panel has no lock). `duration_s`: an unlock's own length, which a Shelly times itself;
/// `hold`: an unlock that lasts until a lock (passage mode), so the relay times nothing.
pub fn command(
    config: &Config,
    device: &DeviceConfig,
    command: Command,
    duration_s: Option<u64>,
    hold: bool,
) -> Option<Outgoing> {
    let out = |topic: String, payload: &str| {
        Some(Outgoing {
            topic,
            payload: payload.as_bytes().to_vec(),
            retain: false,
        })
    };
    match &device.settings {
        DriverConfig::Zigbee2mqtt(z) => out(
            format!("{}/{}/set", z.base(&config.mqtt.zigbee2mqtt_base), z.topic),
            &{
                let mut v = serde_json::json!({"state": match command {
                    Command::Unlock => "UNLOCK",
                    Command::Lock => "LOCK",
                }});
                // A lock that demands its PIN code for remote operation gets it.
                if let Some(code) = &z.pin_code {
                    v["code"] = Value::String(code.expose().to_owned());
                }
                v.to_string()
            },
        ),
        DriverConfig::Tasmota(t) => out(
            t.topic_for("cmnd", &t.power()),
            match command {
                Command::Unlock => "ON",
                Command::Lock => "OFF",
            },
        ),
        DriverConfig::Homeassistant(h) => out(
            h.command_topic.clone(),
            match command {
                // An unlatch where the lock has one (Nuki's `unlatch`, HA's `OPEN`).
                Command::Unlock => h.payload_open.as_deref().unwrap_or(&h.payload_unlock),
                Command::Lock => &h.payload_lock,
            },
        ),
        DriverConfig::Shelly(s) => {
            let switch = s.switch;
            let mut params = serde_json::json!({"id": switch, "on": command == Command::Unlock});
            if command == Command::Unlock && !hold {
                // The relay ends the pulse itself: no second message, no flash write.
                let secs = duration_s
                    .map(|s| s as f64)
                    .unwrap_or(s.pulse.as_secs_f64());
                params["toggle_after"] = serde_json::json!(secs);
            }
            let request = serde_json::json!({"id": 1, "src": shelly_source(config),
                "method": "Switch.Set", "params": params});
            out(format!("{}/rpc", s.topic), &request.to_string())
        }
        DriverConfig::ZenedgePanel(_)
        | DriverConfig::ModbusRelay(_)
        | DriverConfig::Osdp(_)
        | DriverConfig::Contact(_) => None,
    }
}

/// Asks a device for its state, where its driver can: Zigbee2MQTT's
/// `<base>/<topic>/get` `{"state":""}`.
pub fn state_query(config: &Config, device: &DeviceConfig) -> Option<Outgoing> {
    let z = device.zigbee2mqtt()?;
    Some(Outgoing {
        topic: format!("{}/{}/get", z.base(&config.mqtt.zigbee2mqtt_base), z.topic),
        payload: br#"{"state":""}"#.to_vec(),
        retain: false,
    })
}

/// What ZenEdge asks a device at every connect: a Zigbee lock its state (`/get`), a Tasmota
/// relay its PulseTime (a strike whose PulseTime is 0 would stay energised after an unlock).
pub fn connect_queries(config: &Config, device: &DeviceConfig) -> Vec<Outgoing> {
    let pulse_time = device.tasmota().map(|t| Outgoing {
        topic: t.topic_for("cmnd", &format!("PulseTime{}", t.relay)),
        payload: Vec::new(),
        retain: false,
    });
    state_query(config, device)
        .into_iter()
        .chain(pulse_time)
        .collect()
}

/// Where a Shelly sends its RPC answers: `zenedge-<controller_id>` (`…/rpc`).
pub fn shelly_source(config: &Config) -> String {
    format!("zenedge-{}", config.controller.id)
}

/// The panel topic prefix: `zenedge/<controller_id>/panels/<device_id>`.
pub fn panel_prefix(config: &Config, device_id: &str) -> String {
    format!("zenedge/{}/panels/{device_id}", config.controller.id)
}

/// The question that tells a real Zigbee2MQTT bridge from a `bridge/state` "offline" published
/// by anyone else: the bridge answers on `<base>/bridge/response/health_check`.
pub fn bridge_health_check(bridge_state_topic: &str) -> Option<Outgoing> {
    let base = bridge_state_topic.strip_suffix("/bridge/state")?;
    Some(Outgoing {
        topic: format!("{base}/bridge/request/health_check"),
        payload: b"{}".to_vec(),
        retain: false,
    })
}

/// ZenEdge's own presence topic.
pub fn status_topic(config: &Config) -> String {
    format!("zenedge/{}/status", config.controller.id)
}

/// Which topics to subscribe to and what each carries. The bridge topic names no device
/// (`None`): it concerns every Zigbee2MQTT device.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: HashMap<String, Vec<(Option<usize>, TopicKind)>>,
}

impl Routes {
    pub fn new(config: &Config) -> Routes {
        let mut r = Routes::default();
        let mut add = |topic: String, device: Option<usize>, kind| {
            r.routes.entry(topic).or_default().push((device, kind));
        };
        let mut bases = std::collections::BTreeSet::new();
        for (i, d) in config.devices.iter().enumerate() {
            match &d.settings {
                DriverConfig::Zigbee2mqtt(z) => {
                    let (base, topic) = (z.base(&config.mqtt.zigbee2mqtt_base), &z.topic);
                    bases.insert(base.to_owned());
                    add(format!("{base}/{topic}"), Some(i), TopicKind::Z2mState);
                    add(
                        format!("{base}/{topic}/availability"),
                        Some(i),
                        TopicKind::Z2mAvailability,
                    );
                }
                DriverConfig::Tasmota(t) => {
                    add(t.topic_for("tele", "LWT"), Some(i), TopicKind::TasmotaLwt);
                    add(
                        t.topic_for("stat", "RESULT"),
                        Some(i),
                        TopicKind::TasmotaResult,
                    );
                    add(
                        t.topic_for("stat", &t.power()),
                        Some(i),
                        TopicKind::TasmotaPower,
                    );
                }
                DriverConfig::Shelly(s) => {
                    add(
                        format!("{}/status/switch:{}", s.topic, s.switch),
                        Some(i),
                        TopicKind::ShellyStatus,
                    );
                    add(
                        format!("{}/online", s.topic),
                        Some(i),
                        TopicKind::ShellyOnline,
                    );
                }
                DriverConfig::Homeassistant(h) => {
                    add(h.state_topic.clone(), Some(i), TopicKind::HaState);
                    if let Some(t) = &h.availability_topic {
                        add(t.clone(), Some(i), TopicKind::HaAvailability);
                    }
                }
                DriverConfig::ZenedgePanel(_) => {
                    let p = panel_prefix(config, &d.id);
                    add(format!("{p}/status"), Some(i), TopicKind::PanelStatus);
                    add(
                        format!("{p}/credential"),
                        Some(i),
                        TopicKind::PanelCredential,
                    );
                    add(format!("{p}/action"), Some(i), TopicKind::PanelAction);
                }
                DriverConfig::Contact(Contact::Zigbee2mqtt(z)) => {
                    let (base, topic) = (z.base(&config.mqtt.zigbee2mqtt_base), &z.topic);
                    bases.insert(base.to_owned());
                    add(format!("{base}/{topic}"), Some(i), TopicKind::Z2mContact);
                    add(
                        format!("{base}/{topic}/availability"),
                        Some(i),
                        TopicKind::Z2mAvailability,
                    );
                }
                DriverConfig::Contact(Contact::Tasmota(t)) => {
                    add(t.topic_for("tele", "LWT"), Some(i), TopicKind::TasmotaLwt);
                    add(
                        t.topic_for("stat", "RESULT"),
                        Some(i),
                        TopicKind::TasmotaSwitch,
                    );
                    add(
                        t.topic_for("tele", "SENSOR"),
                        Some(i),
                        TopicKind::TasmotaSwitch,
                    );
                }
                DriverConfig::Contact(Contact::Homeassistant(h)) => {
                    add(h.state_topic.clone(), Some(i), TopicKind::HaContact);
                    if let Some(t) = &h.availability_topic {
                        add(t.clone(), Some(i), TopicKind::HaAvailability);
                    }
                }
                DriverConfig::ModbusRelay(_)
                | DriverConfig::Osdp(_)
                | DriverConfig::Contact(Contact::ModbusInput(_)) => {}
            }
        }
        // Each Zigbee2MQTT network's bridge: its state concerns only its own devices.
        for base in bases {
            add(format!("{base}/bridge/state"), None, TopicKind::Z2mBridge);
            add(
                format!("{base}/bridge/response/health_check"),
                None,
                TopicKind::Z2mHealth,
            );
        }
        r
    }

    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    pub fn lookup(&self, topic: &str) -> &[(Option<usize>, TopicKind)] {
        self.routes.get(topic).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockState::*;
    use Observation::*;

    fn avail(online: bool, source: AvailSource) -> Result<Observation, PayloadError> {
        Ok(Availability { online, source })
    }

    #[test]
    fn zigbee2mqtt_payloads() {
        use TopicKind::*;
        let cases: &[(TopicKind, &[u8], Result<Observation, PayloadError>)] = &[
            // A Yale/Danalock lock state as Zigbee2MQTT publishes it.
            (
                Z2mState,
                br#"{"battery":91,"linkquality":120,"lock_state":"locked","state":"LOCK"}"#,
                Ok(State(Locked)),
            ),
            (
                Z2mState,
                br#"{"lock_state":"unlocked","state":"UNLOCK"}"#,
                Ok(State(Unlocked)),
            ),
            (
                Z2mState,
                br#"{"lock_state":"not_fully_locked","state":"UNLOCK"}"#,
                Ok(State(Jammed)),
            ),
            (Z2mState, br#"{"state":"UNLOCK"}"#, Ok(State(Unlocked))),
            (Z2mState, br#"{"battery":80,"linkquality":54}"#, Ok(Heard)),
            (
                Z2mAvailability,
                br#"{"state":"online"}"#,
                avail(true, AvailSource::Availability),
            ),
            (
                Z2mAvailability,
                b"offline",
                avail(false, AvailSource::Availability),
            ),
            (
                Z2mBridge,
                br#"{"state":"offline"}"#,
                avail(false, AvailSource::Availability),
            ),
            (Z2mBridge, b"online", avail(true, AvailSource::Availability)),
            (
                Z2mHealth,
                br#"{"data":{"healthy":true},"status":"ok"}"#,
                Ok(Observation::BridgeHealth { healthy: true }),
            ),
            (
                Z2mHealth,
                br#"{"data":{"healthy":false},"status":"ok"}"#,
                Ok(Observation::BridgeHealth { healthy: false }),
            ),
            (
                Z2mHealth,
                br#"{"data":{},"status":"error"}"#,
                Err(PayloadError::Unexpected(
                    r#"{"data":{},"status":"error"}"#.into(),
                )),
            ),
        ];
        for (kind, payload, want) in cases {
            assert_eq!(
                &parse(*kind, payload, None),
                want,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn tasmota_homeassistant_and_panel_payloads() {
        use TopicKind::*;
        let cases: &[(TopicKind, &[u8], Result<Observation, PayloadError>)] = &[
            (TasmotaLwt, b"Online", avail(true, AvailSource::Lwt)),
            (TasmotaLwt, b"Offline", avail(false, AvailSource::Lwt)),
            (TasmotaResult, br#"{"POWER":"ON"}"#, Ok(State(Unlocked))),
            (TasmotaResult, br#"{"POWER1":"OFF"}"#, Ok(State(Locked))),
            (
                TasmotaResult,
                br#"{"PulseTime1":{"Set":50,"Remaining":0}}"#,
                Ok(PulseTime(50)),
            ),
            (TasmotaPower, b"ON", Ok(State(Unlocked))),
            (TasmotaPower, b"OFF", Ok(State(Locked))),
            (HaState, b"LOCKED", Ok(State(Locked))),
            (HaState, b"UNLOCKED", Ok(State(Unlocked))),
            (HaState, b"JAMMED", Ok(State(Jammed))),
            (HaState, b"UNLOCKING", Ok(Heard)),
            (
                HaAvailability,
                b"online",
                avail(true, AvailSource::Availability),
            ),
            (PanelStatus, b"offline", avail(false, AvailSource::Lwt)),
        ];
        for (kind, payload, want) in cases {
            assert_eq!(
                &parse(*kind, payload, None),
                want,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    /// Devices whose settings change how their payloads read and their commands look.
    fn installers_config() -> Config {
        crate::config::testing::parse(
            r#"
[[devices]]
id = "relay-2"
type = "strike"
driver = "tasmota"
topic = "board"
relay = 2
[[devices]]
id = "nuki"
type = "lock"
driver = "homeassistant"
state_topic = "nuki/state"
command_topic = "nuki/lockAction"
availability_topic = "nuki/connected"
value_json = "state"
state_locked = "1"
state_unlocked = "3"
state_unlocking = "2"
state_locking = "4"
state_jammed = "254"
payload_lock = "2"
payload_unlock = "1"
payload_open = "3"
payload_available = "true"
payload_not_available = "false"
[[devices]]
id = "strike-shelly"
type = "strike"
driver = "shelly"
topic = "shellyplus1-a8032ab1"
switch = 0
pulse = "3s"
[[devices]]
id = "upstairs"
type = "lock"
driver = "zigbee2mqtt"
topic = "door"
base = "z2m-floor2"
[[devices]]
id = "renamed"
type = "strike"
driver = "tasmota"
topic = "gate"
full_topic = "site7/%topic%/%prefix%/"
"#,
        )
    }

    #[test]
    fn drivers_as_installers_have_them_read_their_devices_payloads() {
        use TopicKind::*;
        let config = installers_config();
        let d = |id: &str| config.devices.iter().find(|d| d.id == id);
        type Case<'a> = (
            &'a str,
            TopicKind,
            &'a [u8],
            Result<Observation, PayloadError>,
        );
        let cases: &[Case] = &[
            // Relay 2 of a board: its own POWER2; relay 1's state is about another door.
            ("relay-2", TasmotaResult, br#"{"POWER2":"ON"}"#, Ok(State(Unlocked))),
            ("relay-2", TasmotaResult, br#"{"POWER1":"ON"}"#, Ok(Heard)),
            ("relay-2", TasmotaResult, br#"{"POWER":"OFF"}"#, Ok(Heard)),
            // Its PulseTime, as Tasmota 9+ and older versions answer the query.
            (
                "relay-2",
                TasmotaResult,
                br#"{"PulseTime2":{"Set":0,"Remaining":0}}"#,
                Ok(PulseTime(0)),
            ),
            ("relay-2", TasmotaResult, br#"{"PulseTime2":50}"#, Ok(PulseTime(50))),
            ("relay-2", TasmotaResult, br#"{"PulseTime1":{"Set":0}}"#, Ok(Heard)),
            // Nuki's MQTT API: numeric states in JSON, through `value_json`.
            ("nuki", HaState, br#"{"state":1,"batteryCritical":false}"#, Ok(State(Locked))),
            ("nuki", HaState, br#"{"state":3}"#, Ok(State(Unlocked))),
            ("nuki", HaState, br#"{"state":"2"}"#, Ok(Heard)),
            ("nuki", HaState, br#"{"state":254}"#, Ok(State(Jammed))),
            ("nuki", HaState, br#"{"batteryChargeState":80}"#, Ok(Heard)),
            ("nuki", HaState, br#"{"state":77}"#, Err(PayloadError::Unexpected("77".into()))),
            ("nuki", HaState, b"1", Err(PayloadError::Unexpected("1".into()))),
            ("nuki", HaAvailability, b"true", avail(true, AvailSource::Availability)),
            ("nuki", HaAvailability, b"false", avail(false, AvailSource::Availability)),
            ("nuki", HaAvailability, b"online", Err(PayloadError::Unexpected("online".into()))),
            // A Shelly Plus 1's switch status and its Last Will.
            (
                "strike-shelly",
                ShellyStatus,
                br#"{"id":0,"source":"MQTT","output":true,"timer_started_at":1700000000.5,"timer_duration":3.00,"temperature":{"tC":45.1}}"#,
                Ok(State(Unlocked)),
            ),
            ("strike-shelly", ShellyStatus, br#"{"id":0,"output":false}"#, Ok(State(Locked))),
            ("strike-shelly", ShellyStatus, br#"{"id":0,"apower":0}"#, Ok(Heard)),
            ("strike-shelly", ShellyOnline, b"true", avail(true, AvailSource::Lwt)),
            ("strike-shelly", ShellyOnline, b"false", avail(false, AvailSource::Lwt)),
        ];
        for (id, kind, payload, want) in cases {
            assert_eq!(
                &parse(*kind, payload, d(id)),
                want,
                "{id} {kind:?} {}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn drivers_as_installers_have_them_command_and_subscribe() {
        let config = installers_config();
        let d = |id: &str| config.devices.iter().find(|d| d.id == id).unwrap();
        let sent = |id: &str, c: Command, duration: Option<u64>| {
            let o = command(&config, d(id), c, duration, false).unwrap();
            (o.topic, String::from_utf8(o.payload).unwrap(), o.retain)
        };
        assert_eq!(
            sent("relay-2", Command::Unlock, None),
            ("cmnd/board/POWER2".into(), "ON".into(), false)
        );
        // The unlatch where the lock has one, its own lock payload.
        assert_eq!(sent("nuki", Command::Unlock, None).1, "3");
        assert_eq!(sent("nuki", Command::Lock, None).1, "2");
        assert_eq!(
            sent("upstairs", Command::Unlock, None).0,
            "z2m-floor2/door/set"
        );
        // At every connect: the Zigbee lock's state, the Tasmota relay's PulseTime.
        let asked = |id: &str| -> Vec<String> {
            connect_queries(&config, d(id))
                .into_iter()
                .map(|o| format!("{} {}", o.topic, String::from_utf8_lossy(&o.payload)))
                .collect()
        };
        assert_eq!(
            asked("upstairs"),
            vec![r#"z2m-floor2/door/get {"state":""}"#]
        );
        assert_eq!(asked("relay-2"), vec!["cmnd/board/PulseTime2 "]);
        assert!(asked("nuki").is_empty());
        // A changed FullTopic: every Tasmota topic follows it.
        assert_eq!(
            sent("renamed", Command::Unlock, None).0,
            "site7/gate/cmnd/POWER"
        );
        // A Shelly times its own pulse: `duration_s`, else the device's pulse.
        let (topic, payload, retain) = sent("strike-shelly", Command::Unlock, None);
        assert_eq!(
            (topic.as_str(), retain),
            ("shellyplus1-a8032ab1/rpc", false)
        );
        let rpc: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            rpc,
            serde_json::json!({"id": 1, "src": "zenedge-edge-1", "method": "Switch.Set",
                "params": {"id": 0, "on": true, "toggle_after": 3.0}})
        );
        let rpc: Value =
            serde_json::from_str(&sent("strike-shelly", Command::Unlock, Some(8)).1).unwrap();
        assert_eq!(rpc["params"]["toggle_after"], 8.0);
        let rpc: Value =
            serde_json::from_str(&sent("strike-shelly", Command::Lock, None).1).unwrap();
        assert_eq!(rpc["params"], serde_json::json!({"id": 0, "on": false}));
        // Held for passage mode: on, with no timer of the relay's own.
        let held = command(&config, d("strike-shelly"), Command::Unlock, None, true).unwrap();
        let rpc: Value = serde_json::from_slice(&held.payload).unwrap();
        assert_eq!(rpc["params"], serde_json::json!({"id": 0, "on": true}));

        let routes = Routes::new(&config);
        let mut topics: Vec<&str> = routes.topics().collect();
        topics.sort_unstable();
        for t in [
            "stat/board/POWER2",
            "shellyplus1-a8032ab1/status/switch:0",
            "shellyplus1-a8032ab1/online",
            "z2m-floor2/door",
            "z2m-floor2/bridge/state",
            "site7/gate/tele/LWT",
            "site7/gate/stat/RESULT",
            "site7/gate/stat/POWER",
        ] {
            assert!(topics.contains(&t), "{t} not in {topics:?}");
        }
        // Only the networks that have devices: no bridge of the default base here.
        assert!(!topics.contains(&"zigbee2mqtt/bridge/state"), "{topics:?}");
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let kinds = TopicKind::ALL;
        let huge = vec![b'{'; MAX_PAYLOAD + 1];
        let garbage: &[&[u8]] = &[
            b"",
            &[0xff, 0xfe, 0x00],
            b"{\"lock_state\":",
            b"[1,2,3]",
            b"{\"lock_state\":42}",
            b"{\"POWER\":{\"x\":1}}",
            b"null",
            b"\"online\"",
            &huge,
        ];
        for kind in kinds {
            for g in garbage {
                let r = parse(kind, g, None);
                assert!(
                    !matches!(r, Ok(State(_)) | Ok(Availability { .. })),
                    "{kind:?} took garbage {:?} as {r:?}",
                    String::from_utf8_lossy(&g[..g.len().min(20)])
                );
            }
        }
        // A random byte soup over every kind: total, no panic.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            for kind in kinds {
                let _ = parse(kind, &bytes, None);
            }
        }
    }
}
