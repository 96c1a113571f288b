//! Delivery against a real HTTP receiver on loopback: retries, dead letters, timeouts, outages
//! and per-device order. The store and worker are the library's own; only ZenCore is a stand-in.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Receiver, Reply, SECRET};
use tokio::sync::{mpsc, oneshot, watch};
use zenedge::config::{Config, DeviceType};
use zenedge::delivery::{self, policy::Policy, DeliveryState, Sender};
use zenedge::event::{DeviceRef, Millis, Origin};
use zenedge::store::{Enqueued, PendingEvent, State, Store};
use zenedge::wire::{Data, DeviceOnline, EdgeTest, NewEvent, PresenceReason};

const WAIT: Duration = Duration::from_secs(30);

struct Running {
    store: Store,
    state: watch::Receiver<DeliveryState>,
    requeue: mpsc::UnboundedSender<PendingEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(url: &str, timeout: &str) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let text = common::config_text(dir.path(), url, common::free_port(), "")
            .replace("timeout = \"2s\"", &format!("timeout = \"{timeout}\""));
        let config = Config::from_toml(&text, Path::new("test.toml")).unwrap();
        let store = Store::open(
            &dir.path().join("state"),
            Origin::from_config(&config),
            1 << 30,
        )
        .unwrap();
        let sender = Arc::new(Sender::from_config(&config.zencore).unwrap());
        let (requeue, requeue_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(DeliveryState::default());
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(delivery::run(
            store.clone(),
            sender,
            Policy::from_config(&config.delivery),
            requeue_rx,
            state_tx,
            async {
                let _ = stop_rx.await;
            },
            Duration::from_secs(5),
        ));
        let task = tokio::spawn(async move {
            task.await.unwrap().unwrap();
        });
        Running {
            store,
            state,
            requeue,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn enqueue(&self, device: Option<&str>) -> (u64, String) {
        let dev = device.map(|d| DeviceRef {
            id: d.into(),
            kind: DeviceType::Lock,
            meeting_space_id: None,
        });
        let data = if dev.is_some() {
            Data::DeviceOnline(DeviceOnline {
                reason: PresenceReason::Availability,
                offline_since: None,
            })
        } else {
            Data::EdgeTest(EdgeTest {
                note: "delivery test".into(),
            })
        };
        let e = NewEvent::new(data, dev, Millis::now());
        match self.store.enqueue(e).await.unwrap() {
            Enqueued::Stored { seq, id } => (seq, id),
            other => panic!("not stored: {other:?}"),
        }
    }

    async fn wait_state(&mut self, what: &str, f: impl Fn(&DeliveryState) -> bool) {
        tokio::time::timeout(WAIT, self.state.wait_for(|s| f(s)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn failures_are_retried_with_identical_bytes_until_2xx_then_never_again() {
    let mut n = 0;
    let rx = Receiver::start(move |_| {
        n += 1;
        if n <= 3 {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let mut d = Running::start(&rx.url(), "2s").await;
    let (seq, id) = d.enqueue(Some("front-door")).await;
    rx.wait_until(WAIT, "a 2xx", |r| {
        r.iter().any(|r| r.reply == Reply::Status(200))
    })
    .await;
    d.wait_state("an empty queue", |s| s.pending == 0 && s.in_flight == 0)
        .await;
    // A second event proves the worker is still sending, and the first is not among it.
    let (_, id2) = d.enqueue(None).await;
    rx.wait_until(WAIT, "the sentinel", |r| r.iter().any(|r| r.id == id2))
        .await;

    let first: Vec<_> = rx.requests().into_iter().filter(|r| r.id == id).collect();
    assert_eq!(
        first.len(),
        4,
        "3 failures and one success, then never again"
    );
    assert_eq!(
        first.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let stored = d.store.body(seq).unwrap().unwrap();
    for r in &first {
        assert_eq!(r.body, stored, "every attempt sends the stored bytes");
        assert!(
            r.signatures_verify(SECRET),
            "attempt {} signature",
            r.attempt
        );
        assert_eq!(r.header("webhook-id"), Some(id.as_str()));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("user-agent").unwrap().starts_with("zenedge/"));
    }
    let status = d.store.status(seq).unwrap().unwrap();
    assert_eq!(status.state, State::Delivered);
    let detail = d.store.find(&id).unwrap().unwrap();
    let codes: Vec<_> = detail.attempts_log.iter().map(|a| a.status).collect();
    assert_eq!(codes, vec![Some(500), Some(500), Some(500), Some(200)]);
    assert_eq!(detail.attempts_log[0].error.as_deref(), Some("HTTP 500"));
    d.stop().await;
}

#[tokio::test]
async fn gone_dead_letters_at_once_and_requeue_continues_attempts() {
    let gone = Arc::new(AtomicBool::new(true));
    let g = gone.clone();
    let rx = Receiver::start(move |_| {
        if g.load(Ordering::SeqCst) {
            Reply::Status(410)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let mut d = Running::start(&rx.url(), "2s").await;
    let (seq, id) = d.enqueue(Some("lock-a")).await;
    // A later event of the same device is not held back by the dead one.
    let (_, later) = d.enqueue(Some("lock-a")).await;
    rx.wait_until(WAIT, "the later event", |r| r.iter().any(|r| r.id == later))
        .await;
    d.wait_state("an empty queue", |s| s.pending == 0 && s.in_flight == 0)
        .await;
    assert_eq!(rx.requests().iter().filter(|r| r.id == id).count(), 1);
    let status = d.store.status(seq).unwrap().unwrap();
    assert_eq!(status.state, State::Dead);
    assert_eq!(status.dead_reason.as_deref(), Some("gone"));

    gone.store(false, Ordering::SeqCst);
    let p = d.store.requeue(seq).unwrap().expect("a dead letter");
    d.requeue.send(p).unwrap();
    let log = rx
        .wait_until(WAIT, "the re-queued event", |r| {
            r.iter()
                .any(|r| r.id == id && r.reply == Reply::Status(200))
        })
        .await;
    let again = log.iter().rfind(|r| r.id == id).unwrap();
    assert_eq!(again.attempt, 2, "attempt numbers continue after re-queue");
    assert_eq!(again.body, d.store.body(seq).unwrap().unwrap());
    d.stop().await;
}

#[tokio::test]
async fn a_hang_is_cut_at_the_timeout_and_retried() {
    let mut n = 0;
    let rx = Receiver::start(move |_| {
        n += 1;
        if n == 1 {
            Reply::Hang
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let mut d = Running::start(&rx.url(), "300ms").await;
    let (_, id) = d.enqueue(Some("d")).await;
    let log = rx
        .wait_until(WAIT, "the retry", |r| {
            r.iter().any(|r| r.reply == Reply::Status(200))
        })
        .await;
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| r.id == id));
    assert_eq!(log[1].attempt, 2);
    d.wait_state("an empty queue", |s| s.pending == 0).await;
    let detail = d.store.find(&id).unwrap().unwrap();
    let first = &detail.attempts_log[0];
    assert_eq!(first.status, None);
    assert!(
        first.error.as_deref().unwrap().starts_with("timeout"),
        "{first:?}"
    );
    assert!(first.duration_ms >= 300, "{first:?}");
    d.stop().await;
}

#[tokio::test]
async fn an_outage_is_probed_one_request_at_a_time_then_drains_in_device_order() {
    let down = Arc::new(AtomicBool::new(true));
    let dn = down.clone();
    let rx = Receiver::start(move |_| {
        if dn.load(Ordering::SeqCst) {
            Reply::Status(503)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let mut d = Running::start(&rx.url(), "2s").await;
    let mut ids = Vec::new();
    for i in 0..200 {
        let (_, id) = d.enqueue(Some(&format!("device-{}", i % 10))).await;
        ids.push(id);
    }
    rx.wait_until(WAIT, "several probes", |r| r.len() >= 8)
        .await;
    d.wait_state("ZenCore marked unreachable", |s| !s.reachable)
        .await;
    let during = rx.requests();
    // While down, probes go one at a time and are always the oldest pending event.
    let probe_ids: std::collections::HashSet<_> = during.iter().skip(4).map(|r| &r.id).collect();
    assert_eq!(
        probe_ids.len(),
        1,
        "one probe event, the oldest: {probe_ids:?}"
    );

    down.store(false, Ordering::SeqCst);
    rx.wait_until(WAIT, "all 200 events", |_| rx.delivered_ids().len() == 200)
        .await;
    let all = rx.requests();
    assert!(ids.iter().all(|id| rx.delivered_ids().contains(id)));
    // Per device, requests arrive in sequence order: a later event is never sent before an
    // earlier one was acknowledged.
    let mut per_device: HashMap<String, Vec<u64>> = HashMap::new();
    for r in &all {
        per_device
            .entry(r.device().unwrap())
            .or_default()
            .push(r.sequence());
    }
    assert_eq!(per_device.len(), 10);
    for (dev, seqs) in per_device {
        assert!(
            seqs.windows(2).all(|w| w[0] <= w[1]),
            "{dev} out of order: {seqs:?}"
        );
    }
    assert!(all.iter().all(|r| r.signatures_verify(SECRET)));
    d.stop().await;
}

#[tokio::test]
async fn retry_after_is_a_floor_on_the_next_probe() {
    let mut n = 0;
    let rx = Receiver::start(move |_| {
        n += 1;
        if n == 1 {
            Reply::RetryAfter(429, 1)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let d = Running::start(&rx.url(), "2s").await;
    d.enqueue(Some("d")).await;
    let log = rx.wait_until(WAIT, "the retry", |r| r.len() >= 2).await;
    let gap = log[1].at - log[0].at;
    // max_backoff is 200 ms here; only Retry-After explains a wait of a second.
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    d.stop().await;
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_and_records_them() {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let d = Running::start(&rx.url(), "2s").await;
    let mut seqs = Vec::new();
    for _ in 0..20 {
        seqs.push(d.enqueue(Some("x")).await.0);
    }
    let store = d.store.clone();
    rx.wait_until(WAIT, "a first delivery", |r| !r.is_empty())
        .await;
    d.stop().await;
    // Whatever was sent was recorded: no event is both acknowledged and still untried.
    for r in rx.requests() {
        let seq = r.sequence();
        let status = store.status(seq).unwrap();
        assert!(
            status.is_some_and(|s| s.attempts >= 1),
            "sent event {seq} has no recorded attempt"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_device_does_not_stall_others_beyond_the_window() {
    // More events than the scheduler's window, and one device with more than its cap that
    // ZenCore refuses: the other devices' events behind it must still flow.
    let bad_ok = Arc::new(AtomicBool::new(false));
    let ok = bad_ok.clone();
    let rx = Receiver::start(move |r| {
        if r.device().as_deref() == Some("bad") && !ok.load(Ordering::SeqCst) {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let mut d = Running::start(&rx.url(), "2s").await;
    // Without the per-device cap, the refused device alone would fill the window.
    let bad_n = delivery::WINDOW + 100;
    let good_n = 2000;
    let event = |dev: &str| {
        NewEvent::new(
            Data::DeviceOnline(DeviceOnline {
                reason: PresenceReason::Availability,
                offline_since: None,
            }),
            Some(DeviceRef {
                id: dev.into(),
                kind: DeviceType::Lock,
                meeting_space_id: None,
            }),
            Millis::now(),
        )
    };
    let bad: Vec<_> = (0..bad_n).map(|_| event("bad")).collect();
    d.store.enqueue_many(bad).await.unwrap();
    let good: Vec<_> = (0..good_n)
        .map(|i| event(&format!("good-{}", i % 5)))
        .collect();
    let stored = d.store.enqueue_many(good).await.unwrap();
    let good_ids: Vec<String> = stored
        .into_iter()
        .map(|e| match e {
            Enqueued::Stored { id, .. } => id,
            other => panic!("{other:?}"),
        })
        .collect();
    rx.wait_until(Duration::from_secs(120), "every good event", |_| {
        let got = rx.delivered_ids();
        good_ids.iter().all(|id| got.contains(id))
    })
    .await;
    bad_ok.store(true, Ordering::SeqCst);
    let last = d.store.last_sequence();
    d.wait_state("the whole backlog", |s| s.idle_through(last))
        .await;
    assert_eq!(rx.delivered_ids().len(), bad_n + good_n);
    let mut per_device: HashMap<String, Vec<u64>> = HashMap::new();
    for r in rx.requests() {
        per_device
            .entry(r.device().unwrap())
            .or_default()
            .push(r.sequence());
    }
    for (dev, seqs) in per_device {
        assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{dev} out of order");
    }
    d.stop().await;
}
