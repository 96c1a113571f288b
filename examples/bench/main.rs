//! The spine benchmark (run by `scripts/bench`): durable enqueue rate, drain rate to a loopback
//! receiver, enqueue→acknowledged latency, peak RSS and disk bytes written per event.
//!
//! The receiver runs in a child process (this binary with `receiver <file>`), so the RSS and
//! disk numbers are ZenEdge's own. It writes one line `<event id> <arrival unix ns>` per
//! request to <file> when its stdin closes.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use zenedge::config::{Config, DeviceType};
use zenedge::delivery::{self, policy::Policy, DeliveryState, Sender};
use zenedge::event::{DeviceRef, Millis, Origin};
use zenedge::store::{Enqueued, Store};
use zenedge::wire::{Data, DeviceOffline, DeviceOnline, NewEvent, PresenceReason};

mod hostile;
mod idle;
mod mqtt;

fn main() -> anyhow::Result<()> {
    zenedge::limit_malloc_arenas();
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.get(1).map(String::as_str) == Some("receiver") {
        let out = PathBuf::from(
            args.get(2)
                .cloned()
                .unwrap_or_else(|| "arrivals.txt".into()),
        );
        return rt.block_on(receiver(out));
    }
    if args.get(1).map(String::as_str) == Some("mqtt") {
        let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50_000);
        let base = PathBuf::from(
            std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench-mqtt".into()),
        );
        return rt.block_on(async {
            zenedge::delivery::install_crypto_provider();
            if std::env::var("BENCH_TRACE").is_ok() {
                zenedge::logging::init("info");
            }
            mqtt::run(base, n).await
        });
    }
    if args.get(1).map(String::as_str) == Some("idle") {
        let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(60);
        let base = PathBuf::from(
            std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench-idle".into()),
        );
        zenedge::delivery::install_crypto_provider();
        return rt.block_on(idle::run(base, std::time::Duration::from_secs(secs)));
    }
    if args.get(1).map(String::as_str) == Some("hostile") {
        let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100_000);
        let base = PathBuf::from(
            std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench-hostile".into()),
        );
        zenedge::delivery::install_crypto_provider();
        return rt.block_on(hostile::run(base, n));
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    rt.block_on(bench(n))
}

/// User + system CPU time of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

async fn receiver(out: PathBuf) -> anyhow::Result<()> {
    // (event id, arrival ns, device id, event name)
    type Log = Vec<(String, u128, String, String)>;
    let log: Arc<Mutex<Log>> = Arc::default();
    let l2 = log.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let log = l2.clone();
                async move {
                    let t = now_ns();
                    let id = headers
                        .get("x-webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let device = v["data"]["device_id"].as_str().unwrap_or("-").to_string();
                    let event = v["event"].as_str().unwrap_or("-").to_string();
                    if let Ok(mut l) = log.lock() {
                        l.push((id, t, device, event));
                    }
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    // Run until the parent closes our stdin, then write what arrived.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().lock().read_line(&mut sink).unwrap_or(0) > 0 {}
    })
    .await?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(&out)?);
    for (id, t, device, event) in log.lock().map(|l| l.clone()).unwrap_or_default() {
        writeln!(f, "{id} {t} {device} {event}")?;
    }
    f.flush()?;
    Ok(())
}

fn proc_io_write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("write_bytes: ")
                    .map(|v| v.trim().to_string())
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn event(i: usize) -> NewEvent {
    let now = Millis::now();
    let reason = PresenceReason::Availability;
    let data = if i.is_multiple_of(2) {
        Data::DeviceOnline(DeviceOnline {
            reason,
            offline_since: None,
        })
    } else {
        Data::DeviceOffline(DeviceOffline {
            reason,
            last_seen: Some(now),
            detected_at: now,
        })
    };
    NewEvent::new(
        data,
        Some(DeviceRef {
            id: format!("device-{}", i % 200),
            kind: DeviceType::Lock,
            meeting_space_id: None,
        }),
        now,
    )
}

struct Child {
    child: std::process::Child,
    port: u16,
    out: PathBuf,
}

fn start_receiver(out: &Path) -> anyhow::Result<Child> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("receiver")
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .read_line(&mut line)?;
    Ok(Child {
        child,
        port: line.trim().parse()?,
        out: out.to_owned(),
    })
}

/// One request the receiver saw.
pub struct Arrival {
    pub id: String,
    pub at_ns: u128,
    pub device: String,
    pub event: String,
}

fn stop_receiver(mut c: Child) -> anyhow::Result<Vec<Arrival>> {
    drop(c.child.stdin.take());
    c.child.wait()?;
    let text = std::fs::read_to_string(&c.out)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            Some(Arrival {
                id: parts.next()?.to_string(),
                at_ns: parts.next()?.parse().ok()?,
                device: parts.next()?.to_string(),
                event: parts.next()?.to_string(),
            })
        })
        .collect())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn bench(n: usize) -> anyhow::Result<()> {
    zenedge::delivery::install_crypto_provider();
    let base = PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench".into()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let origin = Origin {
        controller_id: "edge-bench".into(),
        organization_id: "org".into(),
        meeting_space_id: "ms".into(),
    };
    eprintln!("start: VmHWM {} KiB", vm_hwm_kib());
    let store = Store::open(&base.join("state"), origin, 4 << 30)?;
    eprintln!("store open: VmHWM {} KiB", vm_hwm_kib());

    // 1. Durable enqueues from many concurrent producers (group commit shares flushes).
    let producers = 256;
    let io0 = proc_io_write_bytes();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < n {
                store.enqueue(event(i)).await?;
                i += producers;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let enqueue_secs = t0.elapsed().as_secs_f64();
    let enqueue_written = proc_io_write_bytes().saturating_sub(io0);
    eprintln!("after enqueue: VmHWM {} KiB", vm_hwm_kib());

    // 2. Drain the backlog to a loopback receiver in another process.
    let rx = start_receiver(&base.join("arrivals.txt"))?;
    let text = format!(
        r#"[controller]
id = "edge-bench"
organization_id = "org"
meeting_space_id = "ms"
[zencore]
webhook_url = "http://127.0.0.1:{}/hook"
secret = "bench-secret-of-thirty-two-bytes"
"#,
        rx.port
    );
    let config = Config::from_toml(&text, Path::new("bench.toml"))?;
    let sender = Arc::new(Sender::from_config(&config.zencore)?);
    let (_requeue_tx, requeue_rx) = mpsc::unbounded_channel();
    let (state_tx, mut state) = watch::channel(DeliveryState::default());
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let t1 = Instant::now();
    let io1 = proc_io_write_bytes();
    let worker = tokio::spawn(delivery::run(
        store.clone(),
        sender,
        Policy::from_config(&config.delivery),
        requeue_rx,
        state_tx,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
        Duration::from_secs(5),
    ));
    let last = store.last_sequence();
    state.wait_for(|s| s.pending > 0).await?;
    eprintln!("backlog loaded: VmHWM {} KiB", vm_hwm_kib());
    state.wait_for(|s| s.idle_through(last)).await?;
    let drain_secs = t1.elapsed().as_secs_f64();
    let cpu_used = cpu_seconds() - cpu0;
    let drain_written = proc_io_write_bytes().saturating_sub(io1);
    eprintln!("after drain: VmHWM {} KiB", vm_hwm_kib());

    // 3. Latency at a low rate: enqueue → acknowledged (arrival at the receiver).
    let samples = 2000usize;
    let mut sent_at: HashMap<String, u128> = HashMap::new();
    let mut last = 0;
    let io2 = proc_io_write_bytes();
    for i in 0..samples {
        let t = now_ns();
        if let Enqueued::Stored { id, seq } = store.enqueue(event(i)).await? {
            sent_at.insert(id, t);
            last = seq;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    state.wait_for(|s| s.idle_through(last)).await?;
    let low_rate_written = proc_io_write_bytes().saturating_sub(io2);

    // 4. A quiet room: one event a second, what an SD card sees per event (the durable
    // commit of the event, then its delivery record, made durable within half a second).
    let quiet = 10usize;
    let io3 = proc_io_write_bytes();
    for i in 0..quiet {
        if let Enqueued::Stored { seq, .. } = store.enqueue(event(i)).await? {
            state.wait_for(|s| s.idle_through(seq)).await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let quiet_written = proc_io_write_bytes().saturating_sub(io3);
    let _ = stop_tx.send(true);
    worker.await??;
    // Peak RSS of ZenEdge's own work, before this harness loads the receiver's arrival log.
    let rss_mib = vm_hwm_kib() as f64 / 1024.0;
    let arrivals: HashMap<String, u128> = stop_receiver(rx)?
        .into_iter()
        .map(|a| (a.id, a.at_ns))
        .collect();
    let mut lat: Vec<f64> = sent_at
        .iter()
        .filter_map(|(id, t)| arrivals.get(id).map(|a| (*a as f64 - *t as f64) / 1e6))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));

    let counters = store.counters();
    let disk = store.stats()?.disk_bytes;
    println!("| metric | value | target |");
    println!("|---|---|---|");
    println!(
        "| durable enqueues/s ({n} events, {producers} producers) | {:.0} | ≥ 20,000 |",
        n as f64 / enqueue_secs
    );
    println!(
        "| deliveries/s drained to loopback (concurrency {}) | {:.0} | ≥ 5,000 |",
        config.delivery.concurrency,
        n as f64 / drain_secs
    );
    println!(
        "| enqueue→acknowledged p50 / p99 ({} events at ~400/s) | {:.2} ms / {:.2} ms | — |",
        lat.len(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
    println!("| peak RSS (VmHWM) | {rss_mib:.1} MiB | ≤ 30 MB |");
    println!(
        "| CPU seconds per 1,000 events (durable enqueue + signed delivery, this process) | {:.3} s | — |",
        cpu_used / (n as f64 / 1000.0)
    );
    println!(
        "| disk bytes written per event: enqueue | {:.0} B | ≤ 4 KiB |",
        enqueue_written as f64 / n as f64
    );
    println!(
        "| disk bytes written per event: delivery bookkeeping | {:.0} B | — |",
        drain_written as f64 / n as f64
    );
    println!(
        "| disk bytes written per event at ~400/s, whole lifecycle (a flush per event) | {:.0} B | — |",
        low_rate_written as f64 / samples as f64
    );
    println!(
        "| disk bytes written per event at 1 event/s (its durable commit + its delivery record) | {:.0} B | — |",
        quiet_written as f64 / quiet as f64
    );
    println!(
        "| store size on disk after run | {:.1} MiB | — |",
        disk as f64 / 1048576.0
    );
    println!(
        "| delivered (counter) | {} of {} | all |",
        counters.delivered,
        n + samples + quiet
    );
    if counters.delivered < (n + samples + quiet) as u64 {
        anyhow::bail!("not every event was delivered");
    }
    Ok(())
}
