//! Webhook delivery: the I/O shell around [`policy::Scheduler`].
//!
//! The worker learns of new events from the store's durable watch (so it never sends an event
//! a crash could take back), asks the scheduler what to send, POSTs with one reused HTTP
//! client, logs every attempt in the store and feeds the outcome back. Shutdown is a future
//! passed in: on it the worker stops sending, lets requests in flight finish within a grace
//! period, records them and flushes the store.

pub mod policy;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::ZencoreConfig;
use crate::event::Millis;
use crate::signing::{sign_all, Key};
use crate::store::{Attempt, PendingEvent, State, Status, Store, StoreError};
use crate::telemetry::{self, events as t, AttemptEnd, InternalEvent};
use crate::wire::body_info;
use policy::{classify, Action, Decision, Outcome, Policy, Scheduler};

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("zencore.{key}: {message}")]
    Setup { key: &'static str, message: String },
}

/// Installs rustls' ring provider as the process default. ZenEdge never uses aws-lc-rs, which
/// does not build for 32-bit ARM. Calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The outcome of one HTTP attempt, before it is judged.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub started: Millis,
    pub duration_ms: u64,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub error: Option<String>,
}

/// Signs and POSTs event bodies to ZenCore with one reused client (keep-alive, TLS sessions).
pub struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    keys: Vec<Key>,
    user_agent: String,
}

impl Sender {
    pub fn from_config(zencore: &ZencoreConfig) -> Result<Sender, DeliveryError> {
        install_crypto_provider();
        let setup = |key, message: String| DeliveryError::Setup { key, message };
        let url = reqwest::Url::parse(&zencore.webhook_url)
            .map_err(|e| setup("webhook_url", e.to_string()))?;
        let keys = zencore
            .signing_secrets()
            .iter()
            .map(|s| Key::from_secret(s.expose()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| setup("secret", e.to_string()))?;
        let mut builder = reqwest::Client::builder()
            .timeout(zencore.timeout)
            .connect_timeout(zencore.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &zencore.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| setup("ca_file", format!("cannot read {}: {e}", ca.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup("ca_file", format!("{}: {e}", ca.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&zencore.client_cert_file, &zencore.client_key_file) {
            let mut pem = std::fs::read(cert).map_err(|e| {
                setup(
                    "client_cert_file",
                    format!("cannot read {}: {e}", cert.display()),
                )
            })?;
            pem.extend(std::fs::read(key).map_err(|e| {
                setup(
                    "client_key_file",
                    format!("cannot read {}: {e}", key.display()),
                )
            })?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| setup("client_cert_file", e.to_string()))?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| setup("webhook_url", format!("cannot build HTTP client: {e}")))?;
        Ok(Sender {
            client,
            url,
            keys,
            user_agent: format!("zenedge/{}", env!("CARGO_PKG_VERSION")),
        })
    }

    /// One attempt: sign with every key at this moment's timestamp and POST the exact bytes.
    pub async fn send(&self, id: &str, attempt: u32, body: Vec<u8>) -> AttemptResult {
        let started = Millis::now();
        let clock = Instant::now();
        let sigs = sign_all(&self.keys, id, started.unix_seconds(), &body);
        let request = self
            .client
            .post(self.url.clone())
            .header("Content-Type", "application/json")
            .header("User-Agent", &self.user_agent)
            .header("X-Webhook-Signature", sigs.hex)
            .header("X-Webhook-Id", id)
            .header("X-Webhook-Attempt", attempt.to_string())
            .header("webhook-id", id)
            .header("webhook-timestamp", started.unix_seconds().to_string())
            .header("webhook-signature", sigs.v1)
            .body(body);
        let (status, retry_after, error) = match request.send().await {
            Ok(mut response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                // Read (a bounded part of) the answer so the connection can be reused; a
                // body that fails to arrive within the timeout makes the attempt fail.
                let mut read = 0usize;
                let mut body_error = None;
                loop {
                    match response.chunk().await {
                        Ok(Some(chunk)) => {
                            read += chunk.len();
                            if read > 64 * 1024 {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            body_error = Some(error_text(&e));
                            break;
                        }
                    }
                }
                match (status.is_success(), body_error) {
                    (true, Some(e)) => (None, None, Some(e)),
                    (true, None) => (Some(status.as_u16()), None, None),
                    (false, _) => (
                        Some(status.as_u16()),
                        retry_after,
                        Some(format!("HTTP {}", status.as_u16())),
                    ),
                }
            }
            Err(e) => (None, None, Some(error_text(&e))),
        };
        AttemptResult {
            started,
            duration_ms: clock.elapsed().as_millis() as u64,
            status,
            retry_after,
            error,
        }
    }
}

/// A reqwest error with its causes, which say what really happened ("connection refused").
fn error_text(e: &reqwest::Error) -> String {
    let chain = crate::telemetry::error_chain(e);
    let first = e.to_string();
    let rest = chain.strip_prefix(&first).unwrap_or(&chain);
    let head = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else {
        first.as_str()
    };
    format!("{head}{rest}")
}

/// What the worker tells the rest of the daemon (status line, health).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryState {
    /// Events the scheduler holds (at most [`WINDOW`] plus re-queued ones).
    pub pending: usize,
    pub in_flight: usize,
    pub reachable: bool,
    pub next_probe: Option<Millis>,
    /// Every durable event up to this sequence has been taken into the scheduler.
    pub scanned_upto: u64,
}

impl DeliveryState {
    /// True once everything up to `seq` was taken in and nothing is left to send.
    pub fn idle_through(&self, seq: u64) -> bool {
        self.scanned_upto >= seq && self.pending == 0 && self.in_flight == 0
    }
}

/// The most events the scheduler holds in memory; the rest of a backlog stays in the store
/// and is read as the window drains, so memory does not grow with an outage's length.
pub const WINDOW: usize = 8192;
/// The most events of one device in the window, so that one device whose events ZenCore keeps
/// refusing cannot fill the window and stall every other device.
pub const LANE_CAP: usize = 1024;

/// Reads the backlog from the store into the scheduler, a window at a time, in sequence order.
#[derive(Debug, Default)]
struct Loader {
    /// Highest sequence read from the store.
    loaded_upto: u64,
    /// Highest sequence known durable.
    durable_upto: u64,
    /// Devices at their cap: the first sequence of theirs not yet taken in. Every later event
    /// of such a device waits here too, so its order holds.
    overflow: HashMap<String, u64>,
}

impl Loader {
    /// Reads more of the backlog when the window has room. The reads run on the blocking pool.
    async fn refill(&mut self, store: &Store, scheduler: &mut Scheduler) -> Result<(), StoreError> {
        self.rescan_overflow(store, scheduler).await?;
        if scheduler.pending() >= WINDOW / 2 {
            return Ok(());
        }
        let room = WINDOW - scheduler.pending();
        let mut added = 0;
        while added < room && self.loaded_upto < self.durable_upto {
            let (after, upto, limit) = (self.loaded_upto, self.durable_upto, room - added);
            let (batch, end) = store
                .read(move |s| {
                    let mut batch = Vec::new();
                    let end = s.visit_pending(after, upto, |p| {
                        batch.push(p);
                        batch.len() < limit
                    })?;
                    Ok((batch, end))
                })
                .await?;
            for p in batch {
                if let Some(lane) = &p.lane {
                    if self.overflow.contains_key(lane) || scheduler.lane_len(lane) >= LANE_CAP {
                        self.overflow.entry(lane.clone()).or_insert(p.seq);
                        continue;
                    }
                }
                scheduler.add(p);
                added += 1;
            }
            self.loaded_upto = end;
        }
        Ok(())
    }

    /// Takes in more events of capped devices once their share of the window has drained.
    async fn rescan_overflow(
        &mut self,
        store: &Store,
        scheduler: &mut Scheduler,
    ) -> Result<(), StoreError> {
        let ready: Vec<(String, u64)> = self
            .overflow
            .iter()
            .filter(|(lane, _)| scheduler.lane_len(lane) < LANE_CAP / 2)
            .map(|(l, s)| (l.clone(), *s))
            .collect();
        for (lane, from) in ready {
            let want = LANE_CAP - scheduler.lane_len(&lane);
            let upto = self.loaded_upto;
            let wanted = lane.clone();
            let batch = store
                .read(move |s| {
                    let mut batch = Vec::new();
                    s.visit_pending(from.saturating_sub(1), upto, |p| {
                        if p.lane.as_deref() == Some(wanted.as_str()) {
                            batch.push(p);
                        }
                        batch.len() <= want
                    })?;
                    Ok(batch)
                })
                .await?;
            let next_skipped = batch.get(want).map(|p| p.seq);
            for p in batch.into_iter().take(want) {
                scheduler.add(p);
            }
            match next_skipped {
                Some(seq) => self.overflow.insert(lane, seq),
                None => self.overflow.remove(&lane),
            };
        }
        Ok(())
    }
}

/// Runs delivery until `shutdown` resolves. `requeued` carries dead letters put back by the
/// operator. `grace` bounds how long requests in flight may take after shutdown.
pub async fn run(
    store: Store,
    sender: Arc<Sender>,
    policy: Policy,
    mut requeued: mpsc::UnboundedReceiver<PendingEvent>,
    state: tokio::sync::watch::Sender<DeliveryState>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), StoreError> {
    let mut scheduler = Scheduler::new(policy);
    let mut durable = store.durable();
    let mut loader = Loader {
        durable_upto: *durable.borrow_and_update(),
        ..Loader::default()
    };
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut in_flight: JoinSet<(u64, u32, AttemptResult)> = JoinSet::new();
    // Attempts handed to the store count as in flight until the writer has applied them, so
    // that an idle state means the store shows every outcome.
    let mut applied = store.attempts_applied();
    tokio::pin!(shutdown);
    let mut heartbeat = tokio::time::interval(Duration::from_millis(500));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let live = telemetry::liveness();
        if live
            .wedge_delivery
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // The fault hook: stop going round (only a stop gets through).
            (&mut shutdown).await;
            break;
        }
        live.delivery
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        loader.refill(&store, &mut scheduler).await?;
        let now = Millis::now();
        for action in scheduler.poll(now) {
            match action {
                Action::Send { seq, attempt } => match store.read(move |s| s.begin_send(seq)).await
                {
                    Ok(Some(body)) => {
                        let id = body_info(&body).map(|i| i.id).unwrap_or_default();
                        let sender = sender.clone();
                        in_flight.spawn(async move {
                            let result = sender.send(&id, attempt, body).await;
                            (seq, attempt, result)
                        });
                    }
                    Ok(None) => scheduler.remove(seq),
                    Err(e) => {
                        t::StoreFailed {
                            context: "read event body",
                            error: &e,
                        }
                        .emit();
                        scheduler.complete(
                            seq,
                            Outcome::Failed { retry_after: None },
                            now,
                            rng.random(),
                        );
                    }
                },
                Action::Expire { seq } => {
                    store.set_dead(seq, "max_age");
                    t::DeadLettered {
                        sequence: seq,
                        reason: "max_age",
                    }
                    .emit();
                }
            }
        }
        state.send_if_modified(|s| {
            let new = DeliveryState {
                pending: scheduler.pending(),
                in_flight: scheduler.in_flight() + store.attempts_unapplied() as usize,
                reachable: scheduler.is_reachable(),
                next_probe: scheduler.next_probe(),
                scanned_upto: loader.loaded_upto,
            };
            let changed = *s != new;
            *s = new;
            changed
        });
        let sleep_for = scheduler
            .next_wakeup()
            .map(|at| at.saturating_sub(Millis::now()));
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(joined) = in_flight.join_next() => {
                if let Ok((seq, attempt, result)) = joined {
                    finish(&store, &mut scheduler, seq, attempt, result, rng.random());
                }
            }
            _ = applied.changed() => {}
            changed = durable.changed() => {
                if changed.is_err() {
                    break;
                }
                loader.durable_upto = loader.durable_upto.max(*durable.borrow_and_update());
            }
            Some(p) = requeued.recv() => scheduler.add(p),
            _ = heartbeat.tick() => {}
            _ = tokio::time::sleep(sleep_for.unwrap_or_default()), if sleep_for.is_some() => {}
        }
    }
    // Stop taking work; let what is in flight finish within the grace period.
    let drained = tokio::time::timeout(grace, async {
        while let Some(joined) = in_flight.join_next().await {
            if let Ok((seq, attempt, result)) = joined {
                finish(&store, &mut scheduler, seq, attempt, result, 0.5);
            }
        }
        Ok::<(), StoreError>(())
    })
    .await;
    match drained {
        Ok(result) => result?,
        Err(_) => {
            t::InFlightAtShutdown {
                in_flight: in_flight.len(),
            }
            .emit();
            in_flight.abort_all();
        }
    }
    store.sync().await?;
    Ok(())
}

/// Judges a finished attempt, tells the scheduler, and logs it in the store (which also ends
/// the event's send, so from then on it may be dropped for space).
fn finish(
    store: &Store,
    scheduler: &mut Scheduler,
    seq: u64,
    attempt: u32,
    result: AttemptResult,
    unit: f64,
) {
    let outcome = classify(result.status, result.retry_after);
    let now = Millis::now();
    t::AttemptFinished {
        sequence: seq,
        attempt,
        status: result.status,
        duration_ms: result.duration_ms,
        error: result.error.as_deref(),
        end: match outcome {
            Outcome::Delivered => AttemptEnd::Delivered,
            Outcome::Unreachable { .. } => AttemptEnd::Unreachable,
            Outcome::Failed { .. } | Outcome::Gone => AttemptEnd::Failed,
        },
    }
    .emit();
    let decision = scheduler.complete(seq, outcome, now, unit);
    // The store keeps the larger attempt count of this and what it has.
    let mut status = Status::untried();
    status.attempts = attempt;
    status.last_error = result.error.clone();
    match decision {
        Decision::Delivered => {
            status.state = State::Delivered;
            status.delivered_ms = Some(now.0);
            status.next_attempt_ms = None;
        }
        Decision::Dead { reason } => {
            status.state = State::Dead;
            status.dead_reason = Some(reason.to_owned());
            status.next_attempt_ms = None;
            t::DeadLettered {
                sequence: seq,
                reason,
            }
            .emit();
        }
        Decision::Retry { at } => {
            status.state = State::Pending;
            status.next_attempt_ms = Some(at.0);
        }
        Decision::Waiting => {
            status.state = State::Pending;
            status.next_attempt_ms = scheduler.next_probe().map(|m| m.0);
        }
    }
    let logged = Attempt {
        attempt,
        started_at: result.started.rfc3339(),
        duration_ms: result.duration_ms,
        status: result.status,
        error: result.error,
    };
    store.record_attempt(seq, logged, status);
}
