//! Serving a router on a TCP port that strangers can reach (the inbound endpoint), with limits:
//! at most `max_connections` at once, request headers within [`HEADER_TIMEOUT`], one request
//! per connection, no connection older than [`CONNECTION_LIMIT`], and optionally TLS (rustls).
//! The body's own deadline is the handler's ([`BODY_TIMEOUT`]), so a slow body gets a 408
//! answer rather than a silent close.
//!
//! When every slot is taken, a new connection evicts the oldest one that has not yet sent a
//! whole request head: idle and dripping connections (an attacker's) go first, a request being
//! answered is never cut. So a flood of idle connections cannot keep ZenCore's command out for
//! long, and the daemon's descriptors stay bounded (axum's own `serve` has neither a limit nor
//! a header deadline: 1,100 idle connections took every descriptor the daemon had, issue #14
//! row 7).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Notify};

use crate::telemetry::{events as t, InternalEvent};

/// The whole request head must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The body must arrive within this once the head is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// No connection lives longer than this, whatever it does (head, body, answer).
const CONNECTION_LIMIT: Duration = Duration::from_secs(75);

/// The connections being served, oldest first.
#[derive(Default)]
struct Slots {
    open: Vec<Slot>,
    next_id: u64,
}

struct Slot {
    id: u64,
    /// Set once the request head is in: from then on the connection is not evicted.
    head: Arc<AtomicBool>,
    evict: Option<oneshot::Sender<()>>,
    peer: std::net::SocketAddr,
}

impl Slots {
    /// Room for one more: fewer than `max` open, or one that may be evicted.
    fn has_room(&self, max: usize) -> bool {
        self.open.len() < max || self.open.iter().any(|s| !s.head.load(Ordering::Acquire))
    }

    /// Makes room for one more by evicting the oldest connection still without a request head.
    fn make_room(&mut self, max: usize) {
        use crate::telemetry::InternalEvent;
        if self.open.len() < max {
            return;
        }
        if let Some(pos) = self
            .open
            .iter()
            .position(|s| !s.head.load(Ordering::Acquire))
        {
            let slot = self.open.remove(pos);
            if let Some(evict) = slot.evict {
                let _ = evict.send(());
            }
            crate::telemetry::events::InboundEvicted { peer: &slot.peer }.emit();
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting and lets the
/// requests in progress finish (each is bounded by [`CONNECTION_LIMIT`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let max = max_connections.max(1);
    let slots = Arc::new(Mutex::new(Slots::default()));
    let freed = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // Wait for room (a free slot, or one to evict), then accept: while every connection
        // is busy with a request, new ones wait in the kernel's backlog.
        loop {
            let room = lock(&slots).has_room(max);
            if room {
                break;
            }
            // Only a closing connection makes room (a completed head takes it away), and each
            // close notifies; a notification before this wait is kept as a permit.
            tokio::select! {
                _ = freed.notified() => {}
                _ = &mut shutdown => return finish(stop_tx, &slots, &freed).await,
            }
        }
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    t::InboundAcceptFailed { error: &e }.emit();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return finish(stop_tx, &slots, &freed).await,
        };
        let _ = stream.set_nodelay(true);
        let head = Arc::new(AtomicBool::new(false));
        let (evict_tx, evict_rx) = oneshot::channel();
        let id = {
            let mut s = lock(&slots);
            s.make_room(max);
            let id = s.next_id;
            s.next_id += 1;
            s.open.push(Slot {
                id,
                head: head.clone(),
                evict: Some(evict_tx),
                peer,
            });
            id
        };
        let router = router.clone();
        let tls = tls.clone();
        let mut stop = stop_rx.clone();
        let slots = slots.clone();
        let freed = freed.clone();
        tokio::spawn(async move {
            let work = async {
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => connection(TokioIo::new(s), router, head, &mut stop).await,
                            Ok(Err(e)) => t::InboundTlsFailed {
                                peer: &peer,
                                error: &e,
                            }
                            .emit(),
                            Err(_) => t::InboundTlsTimedOut { peer: &peer }.emit(),
                        }
                    }
                    None => connection(TokioIo::new(stream), router, head, &mut stop).await,
                }
            };
            tokio::select! {
                r = tokio::time::timeout(CONNECTION_LIMIT, work) => if r.is_err() {
                    t::InboundTimeLimit { peer: &peer }.emit();
                },
                // Logged and counted when it was chosen (`make_room`).
                _ = evict_rx => {}
            }
            lock(&slots).open.retain(|s| s.id != id);
            freed.notify_one();
        });
    }
}

fn lock(slots: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stop accepting, ask the open connections to finish, and wait for them up to their limit.
async fn finish(stop: watch::Sender<bool>, slots: &Mutex<Slots>, freed: &Notify) {
    let _ = stop.send(true);
    let _ = tokio::time::timeout(CONNECTION_LIMIT, async {
        while !lock(slots).open.is_empty() {
            freed.notified().await;
        }
    })
    .await;
}

async fn connection<I>(
    io: TokioIo<I>,
    router: Router,
    head: Arc<AtomicBool>,
    stop: &mut watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Called once the request head is in: from then on the connection is not evicted.
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        head.store(true, Ordering::Release);
        let router = router.clone();
        async move { tower::ServiceExt::oneshot(router, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        // (The `Ref` that `wait_for` returns is not `Send`: drop it inside.)
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A TLS acceptor from a PEM certificate chain and key (rustls with ring). Errors name the key
/// (`tls_cert_file` or `tls_key_file`) and say what is wrong.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, (&'static str, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ("tls_cert_file", format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err((
            "tls_cert_file",
            format!("{} holds no PEM certificate", cert.display()),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ("tls_key_file", format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls_cert_file", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            (
                "tls_key_file",
                format!("{} does not go with {}: {e}", key.display(), cert.display()),
            )
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
