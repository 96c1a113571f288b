//! `zenedge demo`: the README's first command. `--once` plays the story and exits 0 only when
//! every step was verified; without it, the demo keeps running for the CLI to be tried against
//! it, and Ctrl-C (SIGINT) stops everything.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn demo_once_verifies_every_step() {
    let out = Command::new(common::bin())
        .args(["demo", "--once"])
        .env_remove("ZENEDGE_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in 1..=8 {
        assert!(
            stdout.contains(&format!("[{step}/8]")),
            "step {step} missing:\n{stdout}"
        );
    }
    assert_eq!(stdout.matches("  ✓ ").count(), 9, "{stdout}");
    assert!(stdout.contains("door.forced_open"), "{stdout}");
    assert!(stdout.contains("Every step verified"), "{stdout}");
    assert!(!stdout.contains("bad signature"), "{stdout}");
}

#[test]
fn demo_keeps_running_for_the_cli_and_stops_on_ctrl_c() {
    let mut child = Command::new(common::bin())
        .arg("demo")
        .env_remove("ZENEDGE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The demo prints the commands to try; take the config path from the first one.
    let mut config = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("zenedge --config ") {
            config = rest.split(' ').next().map(String::from);
            break;
        }
        assert!(!line.contains("DEMO FAILED"), "{line}");
    }
    let config = config.expect("the demo printed its commands");
    let out = Command::new(common::bin())
        .args(["--config", &config, "devices"])
        .output()
        .unwrap();
    let devices = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{devices}");
    assert!(
        devices.contains("front-door") && devices.contains("online"),
        "{devices}"
    );
    let out = Command::new(common::bin())
        .args(["--config", &config, "unlock", "front-door"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0), "Ctrl-C is a clean stop");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "demo did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !std::path::Path::new(&config).exists(),
        "the demo removes its temporary state"
    );
}
