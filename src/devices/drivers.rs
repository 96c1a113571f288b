//! MQTT drivers (DESIGN section 3): pure mappings from topic + payload to observations, and
//! from commands to topic + payload. No I/O; every payload sample in the tests is what the
//! real firmware sends.

use std::collections::HashMap;

use serde_json::Value;

use crate::config::{Config, DeviceConfig, Driver};

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
}

impl TopicKind {
    /// Every kind, for tests and fuzzing that must cover each payload mapper.
    pub const ALL: [TopicKind; 12] = [
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

/// Maps one payload to what it says. Total: any byte string gives an observation or an error.
pub fn parse(kind: TopicKind, payload: &[u8]) -> Result<Observation, PayloadError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(PayloadError::TooLarge(payload.len()));
    }
    let avail =
        |source| online_flag(payload).map(|online| Observation::Availability { online, source });
    match kind {
        TopicKind::Z2mAvailability | TopicKind::HaAvailability => avail(AvailSource::Availability),
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
            match m.get("POWER").or_else(|| m.get("POWER1")) {
                Some(v) => power(v.as_str().unwrap_or_default()),
                // RESULT also answers other commands (PulseTime, …).
                None => Ok(Observation::Heard),
            }
        }
        TopicKind::TasmotaPower => power(text(payload)?),
        TopicKind::HaState => match text(payload)?.to_ascii_uppercase().as_str() {
            "LOCKED" => Ok(Observation::State(LockState::Locked)),
            "UNLOCKED" | "OPEN" => Ok(Observation::State(LockState::Unlocked)),
            "JAMMED" => Ok(Observation::State(LockState::Jammed)),
            "LOCKING" | "UNLOCKING" | "OPENING" => Ok(Observation::Heard),
            other => Err(PayloadError::Unexpected(truncate(other))),
        },
        TopicKind::PanelCredential => {
            json_object(payload).map(|m| Observation::Credential(Value::Object(m)))
        }
        TopicKind::PanelAction => {
            json_object(payload).map(|m| Observation::PanelAction(Value::Object(m)))
        }
    }
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
/// (a panel has no lock; a Tasmota strike is closed by its own PulseTime).
pub fn command(config: &Config, device: &DeviceConfig, command: Command) -> Option<Outgoing> {
    let out = |topic: String, payload: &str| {
        Some(Outgoing {
            topic,
            payload: payload.as_bytes().to_vec(),
            retain: false,
        })
    };
    match (device.driver, command) {
        (Driver::Zigbee2mqtt, c) => out(
            format!(
                "{}/{}/set",
                config.mqtt.zigbee2mqtt_base,
                device.topic.as_deref()?
            ),
            match c {
                Command::Unlock => r#"{"state":"UNLOCK"}"#,
                Command::Lock => r#"{"state":"LOCK"}"#,
            },
        ),
        (Driver::Tasmota, Command::Unlock) => {
            out(format!("cmnd/{}/POWER", device.topic.as_deref()?), "ON")
        }
        (Driver::Tasmota, Command::Lock) => {
            out(format!("cmnd/{}/POWER", device.topic.as_deref()?), "OFF")
        }
        (Driver::Homeassistant, c) => out(
            device.command_topic.clone()?,
            match c {
                Command::Unlock => "UNLOCK",
                Command::Lock => "LOCK",
            },
        ),
        _ => None,
    }
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
        let base = &config.mqtt.zigbee2mqtt_base;
        let mut any_z2m = false;
        for (i, d) in config.devices.iter().enumerate() {
            let topic = d.topic.clone().unwrap_or_default();
            match d.driver {
                Driver::Zigbee2mqtt => {
                    any_z2m = true;
                    add(format!("{base}/{topic}"), Some(i), TopicKind::Z2mState);
                    add(
                        format!("{base}/{topic}/availability"),
                        Some(i),
                        TopicKind::Z2mAvailability,
                    );
                }
                Driver::Tasmota => {
                    add(format!("tele/{topic}/LWT"), Some(i), TopicKind::TasmotaLwt);
                    add(
                        format!("stat/{topic}/RESULT"),
                        Some(i),
                        TopicKind::TasmotaResult,
                    );
                    add(
                        format!("stat/{topic}/POWER"),
                        Some(i),
                        TopicKind::TasmotaPower,
                    );
                }
                Driver::Homeassistant => {
                    if let Some(t) = &d.state_topic {
                        add(t.clone(), Some(i), TopicKind::HaState);
                    }
                    if let Some(t) = &d.availability_topic {
                        add(t.clone(), Some(i), TopicKind::HaAvailability);
                    }
                }
                Driver::ZenedgePanel => {
                    let p = panel_prefix(config, &d.id);
                    add(format!("{p}/status"), Some(i), TopicKind::PanelStatus);
                    add(
                        format!("{p}/credential"),
                        Some(i),
                        TopicKind::PanelCredential,
                    );
                    add(format!("{p}/action"), Some(i), TopicKind::PanelAction);
                }
                Driver::ModbusRelay | Driver::Osdp => {}
            }
        }
        if any_z2m {
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
                &parse(*kind, payload),
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
                Ok(Heard),
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
                &parse(*kind, payload),
                want,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
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
                let r = parse(kind, g);
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
                let _ = parse(kind, &bytes);
            }
        }
    }
}
