//! Every MQTT driver's payload mapper on arbitrary bytes: with no device, and for devices whose
//! settings change the parsing (a Tasmota relay 2, a Home Assistant lock reading numeric states
//! through `value_json`, custom availability payloads, a Tasmota switch input and a binary
//! sensor as door contacts).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zenedge::config::Config;
use zenedge::devices::drivers::{parse, TopicKind};

const CONFIG: &str = r#"
[controller]
id = "edge-1"
organization_id = "org"
meeting_space_id = "ms"
[zencore]
webhook_url = "http://127.0.0.1:9/hook"
secret = "s3cret-s3cret-s3cret-s3cret"
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
value_json = "state"
state_locked = "1"
state_unlocked = "3"
payload_available = "yes"
payload_not_available = "no"
[[devices]]
id = "switch-3"
type = "contact"
driver = "tasmota"
topic = "board"
switch = 3
closed = "ON"
[[devices]]
id = "binary-sensor"
type = "contact"
driver = "homeassistant"
state_topic = "binary_sensor/door/state"
value_json = "contact"
state_open = "true"
state_closed = "false"
"#;

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config::from_toml(CONFIG, Path::new("fuzz.toml")).expect("fuzz config"))
}

fuzz_target!(|data: &[u8]| {
    for kind in TopicKind::ALL {
        let _ = parse(kind, data, None);
        for device in &config().devices {
            let _ = parse(kind, data, Some(device));
        }
    }
});
