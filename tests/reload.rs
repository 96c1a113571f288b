//! SIGHUP: a valid new config (devices, rotated secret) replaces the running one without losing
//! queued events; a broken one is refused and the old one keeps running.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{rig, Reply, SECRET};

const WAIT: Duration = Duration::from_secs(30);
const NEW_SECRET: &str = "rotated-secret-of-thirty-two-byte";

const DEVICES: &str = r#"
[presence]
debounce = "0s"

[[devices]]
id = "strike"
type = "strike"
driver = "tasmota"
topic = "strike_1"
"#;

fn hup(pid: u32) {
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_devices_and_a_rotated_secret_and_refuses_a_broken_config() {
    let r = rig(DEVICES).await;
    // ZenCore has already rotated: it accepts only signatures made with the new secret.
    r.rx.set_script(|req| {
        if req.signatures_verify(NEW_SECRET) {
            Reply::Status(200)
        } else {
            Reply::Status(401)
        }
    });
    let queued = r
        .daemon
        .post("/v1/test-webhook", serde_json::json!({"count": 5}))
        .await;
    let ids: Vec<String> = queued["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    r.rx.wait_until(WAIT, "refused attempts", |log| log.len() >= 5)
        .await;
    assert!(r.rx.delivered_ids().is_empty());

    // Rotate: the new secret signs first, the old one still signs too; and a new device.
    let text = std::fs::read_to_string(&r.config).unwrap().replace(
        &format!("secret = \"{SECRET}\""),
        &format!("secret = \"{NEW_SECRET}\"\nextra_secrets = [\"{SECRET}\"]"),
    ) + "\n[[devices]]\nid = \"extra\"\ntype = \"strike\"\ndriver = \"tasmota\"\ntopic = \"strike_2\"\n";
    std::fs::write(&r.config, &text).unwrap();
    hup(r.daemon.child.id());
    r.rx.wait_until(
        WAIT,
        "the queued events, signed with the new secret",
        |_| {
            let got = r.rx.delivered_ids();
            ids.iter().all(|id| got.contains(id))
        },
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (code, devices) = r.daemon.get("/v1/devices").await;
        if code == 200
            && devices
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x["id"] == "extra"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new device never appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken config is refused: the daemon keeps serving with the config it has.
    std::fs::write(&r.config, "[controller\nthis is not toml").unwrap();
    hup(r.daemon.child.id());
    let log_file = r.config.with_extension("log");
    let deadline = std::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(&log_file)
        .unwrap()
        .contains("New config rejected")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken config was not refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let more = r
        .daemon
        .post("/v1/test-webhook", serde_json::json!({"count": 1}))
        .await;
    let id = more["events"][0]["id"].as_str().unwrap().to_string();
    r.rx.wait_until(WAIT, "delivery after the refused reload", |_| {
        r.rx.delivered_ids().contains(&id)
    })
    .await;
    let (code, devices) = r.daemon.get("/v1/devices").await;
    assert_eq!(code, 200);
    assert_eq!(
        devices.as_array().unwrap().len(),
        2,
        "the running config stayed"
    );
}
