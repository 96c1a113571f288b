//! The command line as an operator uses it: exit codes, config errors, sign/verify, and the
//! query verbs against a running daemon.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{zenedge, Daemon, Receiver, Reply, SECRET};

fn valid_config(dir: &std::path::Path) -> std::path::PathBuf {
    common::write_config(
        dir,
        &common::config_text(dir, "http://127.0.0.1:9/hook", common::free_port(), ""),
    )
}

#[test]
fn check_config_summarises_a_good_file_and_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_config(dir.path());
    let (code, out, _) = zenedge(&good, &["check-config"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("edge-test") && out.contains("is valid"),
        "{out}"
    );
    assert!(!out.contains(SECRET), "secrets never printed");

    let text = std::fs::read_to_string(&good).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        text.replace("initial_backoff = \"20ms\"", "initial_backoff = \"soon\""),
    )
    .unwrap();
    let (code, _, err) = zenedge(&bad, &["check-config"]);
    assert_eq!(code, 78);
    assert!(err.contains("delivery.initial_backoff"), "{err}");

    std::fs::write(&bad, text.replace("[delivery]", "[delivery]\nretries = 3")).unwrap();
    let (code, _, err) = zenedge(&bad, &["check-config"]);
    assert_eq!(code, 78);
    assert!(err.contains("retries"), "{err}");

    let (code, _, err) = zenedge(&dir.path().join("missing.toml"), &["check-config"]);
    assert_eq!(code, 78);
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn check_config_refuses_two_devices_on_one_topic_and_warns_of_clear_text_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let lock = |id: &str, room: &str| {
        format!(
            "\n[[devices]]\nid = \"{id}\"\ntype = \"lock\"\ndriver = \"zigbee2mqtt\"\n\
             topic = \"door\"\nmeeting_space_id = \"{room}\"\n"
        )
    };
    let text = common::config_text(
        dir.path(),
        "http://127.0.0.1:9/hook",
        common::free_port(),
        &format!("{}{}", lock("front", "ms-a"), lock("back", "ms-b")),
    );
    let config = common::write_config(dir.path(), &text);
    let (code, _, err) = zenedge(&config, &["check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("devices[1].topic") && err.contains("`front`"),
        "{err}"
    );
    // A wildcard Zigbee2MQTT base would route every device's messages to every lock.
    let text = common::config_text(
        dir.path(),
        "http://127.0.0.1:9/hook",
        common::free_port(),
        "\n[mqtt]\nzigbee2mqtt_base = \"+\"\n",
    );
    let config = common::write_config(dir.path(), &text);
    let (code, _, err) = zenedge(&config, &["check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("mqtt.zigbee2mqtt_base"), "{err}");
    // A password in clear to a remote broker: valid, with a warning that says so.
    let text = common::config_text(
        dir.path(),
        "http://127.0.0.1:9/hook",
        common::free_port(),
        "\n[mqtt]\nhost = \"192.0.2.10\"\nusername = \"zenedge\"\npassword = \"hunter2-hunter2\"\n",
    );
    let config = common::write_config(dir.path(), &text);
    let (code, out, err) = zenedge(&config, &["check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("WARNING")
            && l.contains("mqtt.password")
            && l.contains("192.0.2.10")),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
}

#[test]
fn config_comes_from_the_environment_and_flags_go_before_or_after_the_verb() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_config(dir.path());
    let out = Command::new(common::bin())
        .arg("check-config")
        .env("ZENEDGE_CONFIG", &good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = Command::new(common::bin())
        .args(["check-config", "--config"])
        .arg(&good)
        .env_remove("ZENEDGE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn usage_errors_exit_64() {
    let out = Command::new(common::bin())
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(common::bin())
        .args(["queue", "retry"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(common::bin()).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    // The bounds of DESIGN §6, refused before any daemon is asked.
    let long_note = "n".repeat(1025);
    for args in [
        &["test-webhook", "--count", "0"][..],
        &["test-webhook", "--count", "101"],
        &["test-webhook", "--note", &long_note],
        &["unlock", "door", "--duration-s", "0"],
        &["unlock", "door", "--duration-s", "3601"],
    ] {
        let out = Command::new(common::bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{:?}", &args[..2]);
    }
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new(common::bin())
        .args(args)
        .env_remove("ZENEDGE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn sign_matches_openssl_and_verify_answers_valid_or_invalid() {
    let body = br#"{"id":"evt_1","event":"edge.test"}"#;
    let (code, out) = run_with_stdin(&["sign", "--secret", "s3cret"], body);
    assert_eq!(code, 0);
    // Computed independently of this code base.
    let openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", "s3cret", "-hex"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(body)?;
            c.wait_with_output()
        })
        .expect("openssl is installed by scripts/test");
    let expected = String::from_utf8_lossy(&openssl.stdout)
        .rsplit(' ')
        .next()
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(out.trim(), format!("X-Webhook-Signature: {expected}"));

    let (code, out) = run_with_stdin(
        &["verify", "--secret", "s3cret", "--signature", &expected],
        body,
    );
    assert_eq!((code, out.trim()), (0, "valid"));
    let (code, out) = run_with_stdin(
        &["verify", "--secret", "other", "--signature", &expected],
        body,
    );
    assert_eq!((code, out.trim()), (1, "invalid"));

    // The Standard Webhooks form, with the spec's published example.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, br#"{"test": 2432232314}"#).unwrap();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let f = file.to_str().unwrap();
    let (code, out) = run_with_stdin(
        &[
            "sign",
            "--secret",
            secret,
            "--id",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "--timestamp",
            "1614265330",
            f,
        ],
        b"",
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("webhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
        "{out}"
    );
    let (code, out) = run_with_stdin(
        &[
            "verify",
            "--secret",
            secret,
            "--id",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "--timestamp",
            "1614265330",
            "--signature",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            f,
        ],
        b"",
    );
    assert_eq!((code, out.trim()), (0, "valid"));
}

#[test]
fn sign_without_a_secret_option_uses_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = valid_config(dir.path());
    let body = dir.path().join("b");
    std::fs::write(&body, b"{}").unwrap();
    let (code, out, _) = zenedge(&cfg, &["sign", body.to_str().unwrap()]);
    assert_eq!(code, 0);
    let key = zenedge::signing::Key::from_secret(SECRET).unwrap();
    assert_eq!(
        out.trim(),
        format!("X-Webhook-Signature: {}", key.sign_hex(b"{}"))
    );
}

#[test]
fn query_verbs_without_a_daemon_exit_69() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = valid_config(dir.path());
    for args in [&["status"][..], &["queue", "list"], &["test-webhook"]] {
        let (code, _, err) = zenedge(&cfg, args);
        assert_eq!(code, 69, "{args:?}: {err}");
        assert!(err.contains("not reachable"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_workflow_against_a_running_daemon() {
    let rx = Receiver::start(|r| {
        if r.json()["data"]["note"]
            .as_str()
            .unwrap_or("")
            .contains("(1/")
        {
            Reply::Status(410)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port();
    let cfg = common::write_config(
        dir.path(),
        &common::config_text(dir.path(), &rx.url(), admin, ""),
    );
    let mut daemon = Daemon::start(&cfg, admin).await;
    let cfg2 = cfg.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || zenedge(&cfg2, &["test-webhook", "--count", "3"]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("queued evt_")).count(),
        3
    );
    let first_id = out
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    rx.wait_until(Duration::from_secs(30), "3 events", |r| r.len() >= 3)
        .await;
    assert!(rx.requests().iter().all(|r| r.signatures_verify(SECRET)));

    let run = |args: Vec<String>| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            zenedge(&cfg, &a)
        })
    };
    // The first event was answered 410: it is a dead letter, with its attempt log.
    let mut dead = String::new();
    for _ in 0..100 {
        let (code, out, _) = run(vec!["queue".into(), "list".into(), "--dead".into()])
            .await
            .unwrap();
        assert_eq!(code, 0);
        if out.contains(&first_id) {
            dead = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dead.contains("dead: gone"), "{dead}");
    let (code, out, _) = run(vec!["queue".into(), "show".into(), first_id.clone()])
        .await
        .unwrap();
    assert_eq!(code, 0);
    let detail: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(detail["attempts_log"][0]["status"], 410);
    assert_eq!(detail["state"], "dead");

    let (code, _, err) = run(vec!["queue".into(), "show".into(), "evt_unknown".into()])
        .await
        .unwrap();
    assert_eq!(code, 1, "{err}");

    rx.set_script(|_| Reply::Status(200));
    let (code, out, _) = run(vec!["queue".into(), "retry".into(), "--all-dead".into()])
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("re-queued 1"), "{out}");
    let log = rx
        .wait_until(Duration::from_secs(30), "the re-queued event", |r| {
            r.iter().filter(|r| r.id == first_id).count() == 2
        })
        .await;
    let again = log.iter().rfind(|r| r.id == first_id).unwrap();
    assert_eq!(again.attempt, 2);

    let (code, out, _) = run(vec!["status".into()]).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("zencore      reachable"), "{out}");

    let status = daemon.sigterm();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
}
