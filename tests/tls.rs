//! HTTPS to ZenCore through rustls (ring): a private CA, a wrong CA (fails clearly, retried,
//! never downgraded), and mutual TLS with a client certificate.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{https_front, make_certs, Daemon, Receiver, Reply, SECRET};

const WAIT: Duration = Duration::from_secs(30);

async fn daemon(dir: &Path, url: &str, zencore_tls: &str) -> Daemon {
    let admin = common::free_port();
    let text = common::config_text(dir, url, admin, "").replace(
        "timeout = \"2s\"",
        &format!("timeout = \"2s\"\n{zencore_tls}"),
    );
    let config = common::write_config(dir, &text);
    Daemon::start(&config, admin).await
}

async fn queue_one(d: &Daemon) -> String {
    let v = d
        .post("/v1/test-webhook", serde_json::json!({"count": 1}))
        .await;
    v["events"][0]["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_delivers_and_a_wrong_ca_is_refused_and_retried() {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let front = https_front(&rx, &certs, false).await;
    let url = format!("https://127.0.0.1:{}/hook", front.port());

    let ok_dir = dir.path().join("ok");
    std::fs::create_dir_all(&ok_dir).unwrap();
    let d = daemon(
        &ok_dir,
        &url,
        &format!("ca_file = \"{}\"", certs.join("ca.pem").display()),
    )
    .await;
    let id = queue_one(&d).await;
    rx.wait_until(WAIT, "delivery over https", |_| {
        rx.delivered_ids().contains(&id)
    })
    .await;
    assert!(rx.requests().iter().all(|r| r.signatures_verify(SECRET)));
    drop(d);

    // The system roots do not know the test CA: refused, logged, retried, never sent in clear.
    let bad_dir = dir.path().join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let d = daemon(&bad_dir, &url, "").await;
    let id = queue_one(&d).await;
    let deadline = Instant::now() + WAIT;
    let log = loop {
        let (_, detail) = d.get(&format!("/v1/queue/{id}")).await;
        let log = detail["attempts_log"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if log.len() >= 2 {
            break log;
        }
        assert!(Instant::now() < deadline, "no retried attempts: {detail}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = log[0]["error"].as_str().unwrap_or("");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert!(!rx.delivered_ids().contains(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate() {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let front = https_front(&rx, &certs, true).await;
    let url = format!("https://127.0.0.1:{}/hook", front.port());
    let ca = format!("ca_file = \"{}\"", certs.join("ca.pem").display());

    let with = dir.path().join("with");
    std::fs::create_dir_all(&with).unwrap();
    let tls = format!(
        "{ca}\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        certs.join("client.pem").display(),
        certs.join("client.key").display()
    );
    let d = daemon(&with, &url, &tls).await;
    let id = queue_one(&d).await;
    rx.wait_until(WAIT, "delivery with a client certificate", |_| {
        rx.delivered_ids().contains(&id)
    })
    .await;
    drop(d);

    let without = dir.path().join("without");
    std::fs::create_dir_all(&without).unwrap();
    let d = daemon(&without, &url, &ca).await;
    let id = queue_one(&d).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, detail) = d.get(&format!("/v1/queue/{id}")).await;
        if detail["attempts_log"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
        {
            assert_ne!(detail["state"], "delivered", "{detail}");
            break;
        }
        assert!(Instant::now() < deadline, "no attempt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!rx.delivered_ids().contains(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_over_tls_takes_signed_commands_and_nothing_in_clear() {
    use std::os::unix::fs::PermissionsExt;
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let key = certs.join("server.key");
    // A key readable by others is refused (as every secret file is).
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let admin = common::free_port();
    let inbound = common::free_port();
    let tls = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        certs.join("server.pem").display(),
        key.display()
    );
    let text = common::config_text(dir.path(), &rx.url(), admin, "").replace(
        "[inbound]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[inbound]\nlisten = \"{inbound}\"\n{tls}"),
    );
    let config = common::write_config(dir.path(), &text);
    let (code, _, err) = common::zenedge(&config, &["check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("inbound.tls_key_file"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _daemon = Daemon::start(&config, admin).await;

    let body = common::command_body(
        "access.magic_link",
        serde_json::json!({"grant_id": "g-tls", "booking_id": "b-tls",
            "meeting_space_id": "ms-test", "token_sha256": common::sha("tok"),
            "pin_sha256": common::sha("123456"), "valid_from": common::at(-60),
            "valid_until": common::at(3600)}),
    );
    let sig = zenedge::signing::Key::from_secret(SECRET)
        .unwrap()
        .sign_hex(&body);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
    zenedge::delivery::install_crypto_provider();
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = https
        .post(format!("https://{inbound}/webhooks/zencore"))
        .header("content-type", "application/json")
        .header("x-webhook-signature", &sig)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    // The same request in clear gets no HTTP answer at all: the port speaks only TLS.
    let clear = common::client()
        .post(format!("http://{inbound}/webhooks/zencore"))
        .header("x-webhook-signature", &sig)
        .body(body)
        .timeout(WAIT)
        .send()
        .await;
    assert!(clear.is_err(), "{clear:?}");
}
