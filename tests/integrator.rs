//! The README's verification snippets (docs/examples/verify.{py,js}) verify what the daemon
//! really sends, and reject a tampered body: an integrator can copy them as they are.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Daemon, Receiver, Reply, SECRET};

fn run(program: &str, script: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(program)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is installed by scripts/setup-test-deps: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_snippets_verify_real_deliveries() {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port();
    // Rotation: the primary is a whsec_ key, and an old plain secret still signs.
    let text = common::config_text(dir.path(), &rx.url(), admin, "").replace(
        &format!("secret = \"{SECRET}\""),
        "secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nextra_secrets = [\"old-secret-rotated-out-recently\"]",
    );
    let config = common::write_config(dir.path(), &text);
    let daemon = Daemon::start(&config, admin).await;
    daemon
        .post("/v1/test-webhook", serde_json::json!({"count": 1}))
        .await;
    let log = rx
        .wait_until(Duration::from_secs(30), "one event", |r| !r.is_empty())
        .await;
    let r = &log[0];
    let body = dir.path().join("body.json");
    std::fs::write(&body, &r.body).unwrap();
    let tampered = dir.path().join("tampered.json");
    let mut t = r.body.clone();
    t.insert(1, b' ');
    std::fs::write(&tampered, &t).unwrap();
    let header = |h: &str| r.header(h).unwrap().to_string();
    let (hex, id, ts, v1) = (
        header("x-webhook-signature"),
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let root = env!("CARGO_MANIFEST_DIR");
    for (program, script) in [
        ("python3", format!("{root}/docs/examples/verify.py")),
        ("node", format!("{root}/docs/examples/verify.js")),
    ] {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let b = body.to_str().unwrap();
        assert_eq!(
            run(program, &script, &[secret, b, &hex, &id, &ts, &v1]),
            (0, "valid".into()),
            "{program}"
        );
        // The old secret verifies the Standard Webhooks header (not the hex one, which carries
        // the primary key only), so a receiver can rotate without downtime.
        let tb = tampered.to_str().unwrap();
        assert_eq!(
            run(program, &script, &[secret, tb, &hex, &id, &ts, &v1]),
            (1, "invalid".into()),
            "{program} tampered"
        );
    }
    let old = zenedge::signing::Key::from_secret("old-secret-rotated-out-recently").unwrap();
    assert!(old.verify_v1(&id, ts.parse().unwrap(), &r.body, &v1));

    // The snippets are the README's own text.
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    for f in ["verify.py", "verify.js"] {
        let src = std::fs::read_to_string(format!("{root}/docs/examples/{f}")).unwrap();
        assert!(
            readme.contains(src.trim()),
            "README must include docs/examples/{f} verbatim"
        );
    }
}
