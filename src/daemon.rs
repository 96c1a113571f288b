//! Wiring: opens the store, starts delivery and the admin API, and stops them in order.
//!
//! Shutdown is a future passed in (SIGTERM in production, anything in tests): on it the admin
//! API stops accepting, delivery stops taking work and lets requests in flight finish within
//! [`SHUTDOWN_GRACE`], and the store is flushed before `run` returns.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::delivery::{self, policy::Policy, DeliveryState, Sender};
use crate::devices;
use crate::event::{Millis, Origin};
use crate::runtime::supervise::{supervise, Restarts};
use crate::store::Store;
use crate::telemetry::{events as t, InternalEvent};
use crate::wire::{Data, DataGap, GapReason, NewEvent};

/// How long requests in flight may run on after a stop was asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Addresses the daemon listens on, known once it is up (useful when a test binds port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub admin: SocketAddr,
    /// `None` when no inbound endpoint is served (commands come over the channel only).
    pub inbound: Option<SocketAddr>,
}

/// Runs the daemon on `config` until `shutdown` resolves (no reload: used by the demo,
/// benchmarks and in-process tests). `on_ready` is called once everything listens.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(Bound) + Send,
) -> anyhow::Result<()> {
    run_inner(config, None, shutdown, on_ready).await
}

/// Runs the daemon from the config file at `path`, re-reading it on SIGHUP: a valid new config
/// replaces the running one (devices, secrets, delivery settings, listeners) without touching
/// the store, so nothing queued is lost; an invalid one is logged and the old one keeps running.
pub async fn run_reloadable(
    path: PathBuf,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_inner(config, Some(path), shutdown, |_| {}).await
}

async fn run_inner(
    config: Config,
    path: Option<PathBuf>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(Bound) + Send,
) -> anyhow::Result<()> {
    let origin = Origin::from_config(&config);
    let state_dir = config.controller.state_dir.clone();
    let store = {
        let origin = origin.clone();
        let max = config.delivery.max_store_bytes.0;
        tokio::task::spawn_blocking(move || Store::open(&state_dir, origin, max))
            .await
            .context("store open task")?
            .with_context(|| {
                format!(
                    "cannot open the store in {}",
                    config.controller.state_dir.display()
                )
            })?
    };
    let undecodable = store.read(check_records).await?;
    if undecodable > 0 {
        t::RecordsUndecodable { count: undecodable }.emit();
    }
    if let Some(aside) = store.quarantined() {
        // The old store's undelivered events are lost to us; say so to ZenCore, with the
        // sequences that may be missing (everything after the last one we can vouch for).
        let event = NewEvent::edge(
            Data::DataGap(DataGap {
                from_sequence: None,
                to_sequence: store.last_sequence(),
                count: None,
                reason: GapReason::StoreCorrupt,
                quarantined_to: Some(aside.display().to_string()),
            }),
            Millis::now(),
        );
        store.enqueue(event).await?;
    }
    if config.mqtt.embedded {
        let ip: std::net::IpAddr = config
            .mqtt
            .host
            .parse()
            .context("mqtt.host must be an IP address with embedded = true")?;
        let login = match (&config.mqtt.username, config.mqtt.password()) {
            (Some(user), Some(password)) => Some((user.clone(), password.expose().to_owned())),
            _ => None,
        };
        let anonymous = login.is_none();
        crate::broker::start(SocketAddr::new(ip, config.mqtt.port), login)?;
        t::EmbeddedBrokerStarted {
            host: &config.mqtt.host,
            port: config.mqtt.port,
            anonymous,
        }
        .emit();
    }
    if std::env::var("ZENEDGE_FAULT").as_deref() == Ok("wedge-delivery") {
        t::FaultHook {
            hook: "wedge-delivery: the delivery loop will stop going round",
        }
        .emit();
        crate::telemetry::liveness()
            .wedge_delivery
            .store(true, Ordering::Relaxed);
    }
    let mut hangup = match &path {
        Some(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot install the SIGHUP handler")?,
        ),
        None => None,
    };
    tokio::pin!(shutdown);
    let mut on_ready = Some(on_ready);
    let mut config = Arc::new(config);
    loop {
        let (stop_tx, stop_rx) = watch::channel(false);
        let serving = serve(config.clone(), store.clone(), stop_rx, &mut on_ready);
        tokio::pin!(serving);
        // Wait for a stop, or a reload with a config that is valid.
        let next = loop {
            let reload = async {
                match hangup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                result = &mut serving => return result.and(Ok(store.sync().await?)),
                _ = &mut shutdown => break None,
                _ = reload => {
                    let Some(p) = &path else { continue };
                    match Config::load(p) {
                        Err(e) => t::ConfigRejected { error: &e }.emit(),
                        Ok(new) if new.controller.state_dir != config.controller.state_dir
                            || new.mqtt.embedded != config.mqtt.embedded =>
                        {
                            t::ConfigNeedsRestart {}.emit();
                        }
                        Ok(new) => break Some(new),
                    }
                }
            }
        };
        match next {
            None => {
                t::Stopping {}.emit();
                crate::systemd::stopping();
                let _ = stop_tx.send(true);
                serving.await?;
                store.sync().await?;
                t::Stopped {}.emit();
                return Ok(());
            }
            Some(new) => {
                t::ConfigReloading {
                    devices: new.devices.len(),
                }
                .emit();
                crate::systemd::reloading();
                let _ = stop_tx.send(true);
                serving.await?;
                store.set_max_bytes(new.delivery.max_store_bytes.0);
                config = Arc::new(new);
            }
        }
    }
}

/// Runs every component on `config` until `stop` turns true: the device hub and MQTT client,
/// delivery, the inbound endpoint, the admin API. The store outlives it (reloads).
async fn serve(
    config: Arc<Config>,
    store: Store,
    shutdown_rx: watch::Receiver<bool>,
    on_ready: &mut Option<impl FnOnce(Bound) + Send>,
) -> anyhow::Result<()> {
    let sender = Arc::new(Sender::from_config(&config.zencore)?);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let clock = {
        let require_sync = config.clock.require_sync;
        Arc::new(
            store
                .read(move |s| crate::clock::Clock::new(s.clone(), require_sync))
                .await?,
        )
    };
    let needs_mqtt = !devices::drivers::Routes::new(&config).is_empty();
    let (mqtt, mqtt_run) = crate::runtime::start(
        config.clone(),
        store.clone(),
        clock.clone(),
        stopped(shutdown_rx.clone()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("MQTT setup: {e}"))?;
    let mut mqtt_task = tokio::spawn(mqtt_run);

    let (requeue_tx, requeue_rx) = mpsc::unbounded_channel();
    let (delivery_tx, delivery_rx) = watch::channel(DeliveryState::default());
    let delivery_state = delivery_rx.clone();
    let mqtt_views = mqtt.views.clone();
    let ready = Arc::new(AtomicBool::new(false));

    // With commands.transport "mqtt" (or inbound.listen = "") no socket is opened on the room
    // network: commands come only over the channel, which connects out.
    let inbound_listener = match config
        .inbound
        .listen
        .0
        .filter(|_| config.commands.transport.http())
    {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on inbound.listen {addr}"))?,
        ),
        None => None,
    };
    let inbound_keys = config
        .inbound
        .verifying_secrets()
        .iter()
        .map(|s| crate::signing::Key::from_secret(s.expose()))
        .collect::<Result<Vec<_>, _>>()?;
    let inbound_state = crate::inbound::InboundState {
        config: config.clone(),
        keys: Arc::new(inbound_keys),
        store: store.clone(),
        clock: clock.clone(),
        hub: mqtt.requests.clone(),
    };
    // The command channel (DESIGN §2b): supervised, not essential — doors work without it, and
    // it reconnects on its own; a setup failure (a certificate file) is retried with backoff.
    let (channel_tx, channel_rx) = watch::channel(crate::channel::ChannelStatus::default());
    let channel_task = config.commands.transport.channel().then(|| {
        let (config, inbound_state) = (config.clone(), inbound_state.clone());
        tokio::spawn(supervise(
            "command channel",
            shutdown_rx.clone(),
            Restarts::default(),
            move |stop| {
                crate::channel::run(
                    config.clone(),
                    inbound_state.clone(),
                    channel_tx.clone(),
                    stop,
                )
            },
        ))
    });
    let inbound_addr = inbound_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let inbound_tls = match (&config.inbound.tls_cert_file, &config.inbound.tls_key_file) {
        (Some(cert), Some(key)) => Some(
            crate::serve::tls_acceptor(cert, key)
                .map_err(|(k, e)| anyhow::anyhow!("inbound.{k}: {e}"))?,
        ),
        _ => None,
    };
    let max_connections = config.inbound.max_connections;
    // The listeners are supervised: one that ends on its own is bound again on the address it
    // had (the first run uses the socket bound above, so a port 0 keeps its number).
    let inbound_task = inbound_addr.map(|inbound_addr| {
        let mut first = inbound_listener;
        let router = crate::inbound::router(inbound_state.clone());
        tokio::spawn(supervise(
            "inbound",
            shutdown_rx.clone(),
            Restarts::default(),
            move |stop| {
                let listener = first.take();
                let (router, tls) = (router.clone(), inbound_tls.clone());
                async move {
                    let listener = listener_again(listener, inbound_addr).await?;
                    crate::serve::serve(listener, router, max_connections, tls, stopped(stop))
                        .await;
                    Ok(())
                }
            },
        ))
    });

    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on admin.listen {}", config.admin.listen))?;
    let bound = Bound {
        admin: admin_listener.local_addr()?,
        inbound: inbound_addr,
    };
    let admin_state = AdminState {
        store: store.clone(),
        requeue: requeue_tx,
        delivery: delivery_rx,
        ready: ready.clone(),
        controller_id: config.controller.id.clone(),
        started: Millis::now(),
        clock: clock.clone(),
        mqtt: mqtt.clone(),
        config: config.clone(),
        channel: config.commands.transport.channel().then_some(channel_rx),
    };
    let socket_path = config.admin_socket();
    let socket_listener = admin::bind_socket(&socket_path, config.admin.socket_group.as_deref())?;
    let admin_task = {
        let mut first = Some(admin_listener);
        let router = admin::tcp_router(admin_state.clone());
        let addr = bound.admin;
        tokio::spawn(supervise(
            "admin",
            shutdown_rx.clone(),
            Restarts::default(),
            move |stop| {
                let listener = first.take();
                let router = router.clone();
                async move {
                    let listener = listener_again(listener, addr).await?;
                    axum::serve(listener, router)
                        .with_graceful_shutdown(stopped(stop))
                        .await?;
                    Ok(())
                }
            },
        ))
    };
    let socket_task = {
        let mut first = Some(socket_listener);
        let router = admin::router(admin_state);
        let (path, group) = (socket_path.clone(), config.admin.socket_group.clone());
        tokio::spawn(supervise(
            "admin socket",
            shutdown_rx.clone(),
            Restarts::default(),
            move |stop| {
                let listener = match first.take() {
                    Some(l) => Ok(l),
                    None => admin::bind_socket(&path, group.as_deref()),
                };
                let router = router.clone();
                async move {
                    axum::serve(listener?, router)
                        .with_graceful_shutdown(stopped(stop))
                        .await?;
                    Ok(())
                }
            },
        ))
    };

    let mut delivery_task = tokio::spawn(delivery::run(
        store.clone(),
        sender,
        Policy::from_config(&config.delivery),
        requeue_rx,
        delivery_tx,
        stopped(shutdown_rx.clone()),
        SHUTDOWN_GRACE,
    ));

    let gc_task = {
        let (store, clock) = (store.clone(), clock.clone());
        let audit_retention = config.access.audit_retention;
        tokio::spawn(supervise(
            "housekeeping",
            shutdown_rx.clone(),
            Restarts::default(),
            move |stop| {
                crate::runtime::housekeeping::run(
                    store.clone(),
                    clock.clone(),
                    audit_retention,
                    stop,
                )
            },
        ))
    };

    // Ready once the listeners are up and, when devices talk MQTT, the broker has acknowledged
    // the subscriptions.
    let mut stopping = false;
    if needs_mqtt {
        let mut status = mqtt.status.clone();
        let mut stop = shutdown_rx.clone();
        tokio::select! {
            _ = status.wait_for(|s| s.subscribed) => {}
            _ = stop.wait_for(|s| *s) => stopping = true,
        }
    }
    ready.store(!stopping, Ordering::Release);
    let status_line = {
        let mqtt = mqtt.status.clone();
        let views = mqtt_views.clone();
        let delivery = delivery_state.clone();
        // Each watch is read once and its guard dropped at once: a watch's lock prefers
        // writers, so a second borrow taken while the first is held waits behind a writer that
        // waits for the first — a deadlock (it happened: two `delivery.borrow()`s in one
        // `format!` hung the daemon at start while delivery published its state).
        move || {
            let (online, devices) = {
                let v = views.borrow();
                let online = v.iter().filter(|d| d.online == Some(true)).count();
                (online, v.len())
            };
            let connected = mqtt.borrow().connected;
            let (pending, reachable) = {
                let d = delivery.borrow();
                (d.pending, d.reachable)
            };
            format!(
                "mqtt {}, {online}/{devices} devices online, {pending} queued, zencore {}",
                if connected {
                    "connected"
                } else {
                    "disconnected"
                },
                if reachable {
                    "reachable"
                } else {
                    "unreachable"
                },
            )
        }
    };
    if !stopping {
        crate::systemd::ready(&status_line());
    }
    let watchdog_task = tokio::spawn(crate::systemd::watchdog(shutdown_rx.clone()));
    let status_task = {
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => crate::systemd::status(&status_line()),
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        })
    };
    t::Running {
        controller_id: &config.controller.id,
        admin: &bound.admin,
        admin_socket: &socket_path.display(),
        inbound: &crate::config::Listen(bound.inbound),
        webhook_url: &config.zencore.webhook_url,
        last_sequence: store.last_sequence(),
    }
    .emit();
    for warning in config.warnings() {
        t::ConfigWarning { warning: &warning }.emit();
    }
    if !stopping {
        if let Some(f) = on_ready.take() {
            f(bound);
        }
        // The device task and delivery are essential: if either ends before a stop was asked
        // for, the daemon is no longer doing its job. Say so (`/healthz` 503) and exit non-zero,
        // so that systemd restarts it, instead of answering 202 to commands nobody carries out.
        // Biased, the stop first: the runtime and delivery end *because* of a stop, and when
        // both are ready at once a random pick would call a clean stop a crash (exit 70).
        let ended = tokio::select! {
            biased;
            _ = stopped(shutdown_rx.clone()) => None,
            r = &mut mqtt_task => Some(("device", r.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())))),
            r = &mut delivery_task => Some(("delivery", r.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())))),
        };
        if let Some((task, result)) = ended {
            ready.store(false, Ordering::Release);
            let why = match result {
                Ok(()) => "it returned".to_string(),
                Err(e) => e,
            };
            t::EssentialStopped {
                adapter: task,
                error: &why,
            }
            .emit();
            let _ = store.sync().await;
            anyhow::bail!("the {task} task stopped: {why}");
        }
    }
    ready.store(false, Ordering::Release);
    let delivery_result = delivery_task.await;
    let _ = admin_task.await;
    let _ = socket_task.await;
    // The next daemon (or this one after a reload) binds a fresh socket; a CLI finding none
    // says the daemon is not running rather than hanging on a dead file.
    let _ = std::fs::remove_file(&socket_path);
    for task in [inbound_task, channel_task].into_iter().flatten() {
        let _ = task.await;
    }
    let _ = gc_task.await;
    let _ = watchdog_task.await;
    let _ = status_task.await;
    match mqtt_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => t::ShutdownError {
            adapter: "device",
            error: &e,
        }
        .emit(),
        Err(e) => t::ShutdownError {
            adapter: "device",
            error: &e,
        }
        .emit(),
    }
    store.sync().await?;
    match delivery_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("delivery stopped on a store error"),
        Err(e) => Err(e).context("delivery task failed"),
    }
}

/// A supervised listener's socket: the one bound at start on its first run, bound again on the
/// address it got (so a port 0 keeps its number) when the listener is started again.
async fn listener_again(
    first: Option<TcpListener>,
    addr: SocketAddr,
) -> anyhow::Result<TcpListener> {
    match first {
        Some(l) => Ok(l),
        None => TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}")),
    }
}

/// Decodes every stored record family once, so that a record this build cannot read is
/// counted and shown from the start, not only when it is first needed. Returns how many are
/// undecodable.
pub fn check_records(store: &Store) -> Result<usize, crate::store::StoreError> {
    store.records::<crate::access::Grant>()?;
    store.records::<crate::access::ClockFloor>()?;
    store.records::<crate::schedule::Booking>()?;
    store.records::<crate::schedule::Marks>()?;
    store.records::<crate::devices::presence::Reported>()?;
    store.records::<crate::devices::actions::PendingUnlock>()?;
    store.records::<crate::inbound::DedupKey>()?;
    store.records::<crate::inbound::ActionKey>()?;
    store.records::<crate::inbound::snapshot::StoredPart>()?;
    // The audit log may be long: decoded one record at a time.
    store.check_family::<crate::audit::Record>()?;
    store.records::<crate::audit::Checkpoint>()?;
    store.records::<crate::access::lockout::Guard>()?;
    Ok(store.undecodable().len())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            t::SignalHandlersMissing {}.emit();
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
