//! The real binary, SIGKILLed in the middle of a backlog and restarted on the same state_dir:
//! nothing queued before a kill is lost, bytes never change, sequences keep rising. And a
//! corrupt store is moved aside instead of stopping the daemon.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Daemon, Receiver, Reply, SECRET};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_three_times_mid_backlog_loses_nothing() {
    // Slow answers keep a backlog in flight when the kill comes.
    let rx = Receiver::start(|_| Reply::SlowOk(15)).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port();
    let config = common::write_config(
        dir.path(),
        &common::config_text(dir.path(), &rx.url(), admin, ""),
    );
    let mut queued: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_max = 0u64;
    for round in 0..3 {
        let mut daemon = Daemon::start(&config, admin).await;
        let seen_before = rx.requests().len();
        let answer = daemon
            .post("/v1/test-webhook", serde_json::json!({"count": 100}))
            .await;
        let events = answer["events"].as_array().unwrap().clone();
        assert_eq!(events.len(), 100);
        let seqs: Vec<u64> = events
            .iter()
            .map(|e| e["sequence"].as_u64().unwrap())
            .collect();
        assert!(
            seqs[0] > last_max,
            "round {round}: sequence {} not above {last_max}",
            seqs[0]
        );
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        last_max = *seqs.last().unwrap();
        for e in &events {
            queued.insert(
                e["id"].as_str().unwrap().to_string(),
                e["sequence"].as_u64().unwrap(),
            );
        }
        // Kill once part of this round's backlog went out.
        rx.wait_until(WAIT, "part of the backlog", |r| r.len() >= seen_before + 40)
            .await;
        daemon.sigkill();
        let delivered = rx.delivered_ids();
        assert!(
            queued.keys().any(|id| !delivered.contains(id)),
            "round {round}: the kill should leave a backlog"
        );
    }
    let _daemon = Daemon::start(&config, admin).await;
    rx.wait_until(WAIT, "every queued event", |_| {
        let d = rx.delivered_ids();
        queued.keys().all(|id| d.contains(id))
    })
    .await;

    // Every copy of an event carries the same bytes, and they verify.
    let mut bodies: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for r in rx.requests() {
        assert!(r.signatures_verify(SECRET));
        assert_eq!(r.sequence(), queued[&r.id], "sequence of {} changed", r.id);
        bodies
            .entry(r.id.clone())
            .or_default()
            .insert(r.body.clone());
    }
    for (id, b) in &bodies {
        assert_eq!(b.len(), 1, "{id} was sent with different bytes");
    }
    let duplicates = rx.requests().len() - bodies.len();
    eprintln!(
        "{} events, {} requests, {duplicates} redeliveries after kills",
        queued.len(),
        rx.requests().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_is_quarantined_and_the_daemon_comes_up() {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port();
    let config = common::write_config(
        dir.path(),
        &common::config_text(dir.path(), &rx.url(), admin, ""),
    );
    {
        let daemon = Daemon::start(&config, admin).await;
        daemon
            .post("/v1/test-webhook", serde_json::json!({"count": 3}))
            .await;
        rx.wait_until(WAIT, "3 events", |r| r.len() >= 3).await;
    }
    let store = dir.path().join("state").join("store");
    for entry in std::fs::read_dir(&store).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::write(&path, vec![0x5Au8; 8192]).unwrap();
        }
    }
    let daemon = Daemon::start(&config, admin).await;
    let log = rx
        .wait_until(WAIT, "the data gap report", |r| {
            r.iter().any(|r| r.json()["event"] == "edge.data_gap")
        })
        .await;
    let gap = log
        .iter()
        .find(|r| r.json()["event"] == "edge.data_gap")
        .unwrap()
        .json();
    assert_eq!(gap["data"]["reason"], "store_corrupt");
    assert!(
        gap["data"]["sequence"].as_u64().unwrap() > 3,
        "sequence reused"
    );
    let (code, status) = daemon.get("/v1/status").await;
    assert_eq!(code, 200);
    assert!(status["store"]["quarantined"]
        .as_str()
        .unwrap()
        .contains("store.corrupt-"));
    let moved: Vec<_> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("store.corrupt-")
        })
        .collect();
    assert_eq!(moved.len(), 1);
}
