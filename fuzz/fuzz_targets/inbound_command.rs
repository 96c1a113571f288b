//! ZenCore commands: the verifier with a valid signature over the bytes (so the parser sees
//! them) and without one (which must never pass), then the command parser.
#![no_main]

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use zenedge::access::ClockReading;
use zenedge::config::Config;
use zenedge::event::Millis;
use zenedge::inbound::{parse_command, verify};
use zenedge::signing::Key;

const CONFIG: &str = r#"
[controller]
id = "edge-1"
organization_id = "org"
meeting_space_id = "ms"
[zencore]
webhook_url = "http://127.0.0.1:9/hook"
secret = "s3cret-s3cret-s3cret-s3cret"
[[devices]]
id = "front"
type = "lock"
driver = "zigbee2mqtt"
topic = "front_door"
[[devices]]
id = "panel"
type = "panel"
driver = "zenedge-panel"
"#;

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config::from_toml(CONFIG, Path::new("fuzz.toml")).expect("fuzz config"))
}

fuzz_target!(|data: &[u8]| {
    let key = Key::from_secret("s3cret-s3cret-s3cret-s3cret").expect("key");
    let keys = [key.clone()];
    let clock: ClockReading =
        zenedge::access::read_clock(Millis(1_800_000_000_000), Millis(0), true, true);
    let unsigned: HashMap<&str, String> = HashMap::new();
    assert!(verify(
        &keys,
        |h| unsigned.get(h).map(String::as_str),
        data,
        clock,
        Duration::from_secs(300)
    )
    .is_err());
    let signed = HashMap::from([("x-webhook-signature", key.sign_hex(data))]);
    if let Ok(v) = verify(
        &keys,
        |h| signed.get(h).map(String::as_str),
        data,
        clock,
        Duration::from_secs(300),
    ) {
        let _ = parse_command(config(), &v.event, &v.data, clock.now);
    }
});
