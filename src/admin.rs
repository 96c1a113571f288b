//! The admin API: health, status, the outbox and its dead letters, devices, grants, the audit
//! log, operator unlocks and `edge.test` events. The CLI's verbs are thin clients of it.
//!
//! Everything is served on the Unix socket `admin.socket` (0660, group `admin.socket_group`), so
//! file permissions decide who may unlock a door or read grants. The TCP port `admin.listen`
//! serves only the read-only `GET /healthz`, `/metrics` and `/v1/status` (for probes and
//! scrapers) and answers 404 to everything else: any local user, or a web page reaching loopback
//! by DNS rebinding, can open a TCP connection.
//!
//! Routes:
//! - `GET  /healthz`                 200 once the daemon is ready, else 503
//! - `GET  /v1/status`               store and delivery state
//! - `GET  /v1/queue?state=pending|dead|delivered&limit=N`
//! - `GET  /v1/queue/{id}`           one event (id or sequence) with its attempt log
//! - `POST /v1/queue/{id}/retry`     re-queue one dead letter
//! - `POST /v1/queue/retry-dead`     re-queue every dead letter
//! - `POST /v1/test-webhook`         `{"count":N}`: queue N `edge.test` events

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::delivery::DeliveryState;
use crate::event::Millis;
use crate::store::{Enqueued, PendingEvent, State, Store, StoreError};
use crate::telemetry::InternalEvent;
use crate::wire::{Data, EdgeTest, EventKind, NewEvent};

/// The most `edge.test` events one request may queue (DESIGN §6).
pub const MAX_TEST_EVENTS: u32 = 100;
/// The longest `edge.test` note, in bytes.
pub const MAX_TEST_NOTE_BYTES: usize = 1024;

#[derive(Clone)]
pub struct AdminState {
    pub mqtt: crate::runtime::MqttHandle,
    pub config: Arc<crate::config::Config>,
    pub store: Store,
    pub requeue: mpsc::UnboundedSender<PendingEvent>,
    pub delivery: watch::Receiver<DeliveryState>,
    pub ready: Arc<AtomicBool>,
    pub controller_id: String,
    pub started: Millis,
    pub clock: Arc<crate::clock::Clock>,
    /// The command channel, when `[commands]` uses it.
    pub channel: Option<watch::Receiver<crate::channel::ChannelStatus>>,
}

/// The read-only routes of the TCP port.
pub fn tcp_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(tcp_fallback)
        .with_state(state)
}

async fn tcp_fallback() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not served on admin.listen (only GET /healthz, /metrics, /v1/status); \
         the CLI uses the admin socket"
            .into(),
    )
}

/// Binds the admin socket at `path`: mode 0660, group `group` (by name) if given.
///
/// The socket is bound under a temporary name, given its mode and group, and only then renamed
/// into place, so it is never reachable with the umask's looser mode. A stale socket left by a
/// killed daemon is replaced; one a running daemon answers on, or a file that is not a socket,
/// is an error naming the path.
pub fn bind_socket(
    path: &std::path::Path,
    group: Option<&str>,
) -> anyhow::Result<tokio::net::UnixListener> {
    use anyhow::{bail, Context};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    let gid = match group {
        Some(name) => Some(
            group_id(name)
                .with_context(|| format!("admin.socket_group: no group named {:?}", name))?,
        ),
        None => None,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "admin.socket {} exists and is not a socket; remove it or choose another path",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "admin.socket {} is in use: another zenedge daemon is running",
                path.display()
            );
        }
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let file = path
        .file_name()
        .with_context(|| format!("admin.socket {} names no file", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)
        .with_context(|| format!("cannot create admin.socket {}", path.display()))?;
    let placed = (|| -> std::io::Result<()> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
        if gid.is_some() {
            std::os::unix::fs::chown(&tmp, None, gid)?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot set up admin.socket {}", path.display()));
    }
    Ok(listener)
}

/// The id of the group `name`, from the system's group database.
pub(crate) fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: `grp` and `buf` outlive the call; getgrnam_r writes only into them and sets
    // `result` to null or to `&mut grp`.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return None;
        }
        Some(grp.gr_gid)
    }
}

/// Every route, for the admin socket.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/status", get(status))
        .route("/v1/queue", get(list))
        .route("/v1/queue/retry-dead", post(retry_dead))
        .route("/v1/queue/{id}", get(show))
        .route("/v1/queue/{id}/retry", post(retry_one))
        .route("/v1/test-webhook", post(test_webhook))
        .route("/v1/devices", get(devices))
        .route("/v1/grants", get(grants))
        .route("/metrics", get(metrics))
        .route("/v1/audit", get(audit))
        .route("/v1/devices/{id}/{action}", post(device_action))
        .route("/v1/clock/reset-floor", post(reset_floor))
        .with_state(state)
}

/// An error answer: a status and a JSON body naming what went wrong.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

/// Runs a store call off the async workers: scans of a large outbox take a while.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

async fn healthz(AxState(s): AxState<AdminState>) -> Response {
    if !s.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting"})),
        )
            .into_response();
    }
    // DESIGN §3: not ready again while the MQTT link is down (or not yet resubscribed), since
    // no device message can arrive and no command can reach a device.
    let mqtt = s.mqtt.status.borrow().clone();
    if mqtt.down_and_needed() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "mqtt", "since": mqtt.since})),
        )
            .into_response();
    }
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub mqtt: crate::mqtt::MqttStatus,
    pub version: String,
    pub controller_id: String,
    pub started_at: String,
    pub ready: bool,
    pub store: crate::store::StoreStats,
    pub clock: crate::access::ClockStatus,
    pub delivery: DeliveryReport,
    /// Serial ports by device id.
    #[serde(default)]
    pub serial: std::collections::BTreeMap<String, crate::telemetry::SerialStats>,
    /// The command channel to ZenCore's broker, when `[commands]` uses it.
    #[serde(default)]
    pub channel: Option<crate::channel::ChannelStatus>,
    /// What an operator must fix on a device, as `<device>: <what>`.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Lockdowns in force (as stored: what survives a restart).
    #[serde(default)]
    pub lockdowns: Vec<crate::wire::Lockdown>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeliveryReport {
    pub pending: usize,
    pub in_flight: usize,
    pub zencore_reachable: bool,
    pub next_probe_at: Option<String>,
}

async fn status(AxState(s): AxState<AdminState>) -> Result<Json<StatusReport>, ApiError> {
    let store = s.store.clone();
    let (stats, lockdowns) = blocking(move || {
        let lockdowns = store.records::<crate::wire::Lockdown>()?;
        Ok((store.stats()?, lockdowns))
    })
    .await?;
    let d = s.delivery.borrow().clone();
    Ok(Json(StatusReport {
        mqtt: s.mqtt.status.borrow().clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        controller_id: s.controller_id.clone(),
        started_at: s.started.rfc3339(),
        ready: s.ready.load(Ordering::Acquire),
        store: stats,
        clock: s.clock.status(),
        serial: crate::telemetry::serial_snapshot(),
        channel: s.channel.as_ref().map(|c| c.borrow().clone()),
        warnings: s
            .mqtt
            .views
            .borrow()
            .iter()
            .filter_map(|v| v.warning.as_ref().map(|w| format!("{}: {w}", v.id)))
            .collect(),
        lockdowns: lockdowns.into_iter().map(|(_, l)| l).collect(),
        delivery: DeliveryReport {
            pending: d.pending,
            in_flight: d.in_flight,
            zencore_reachable: d.reachable,
            next_probe_at: d.next_probe.map(|m| m.rfc3339()),
        },
    }))
}

/// `zenedge clock --reset-floor`: the floor comes down to the current system clock.
async fn reset_floor(AxState(s): AxState<AdminState>) -> Result<Response, ApiError> {
    let (before, after) = s.clock.reset_floor().await?;
    Ok(Json(json!({
        "previous_floor": before.floor.rfc3339(),
        "floor": after.floor.rfc3339(),
        "trusted": after.trusted,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list(
    AxState(s): AxState<AdminState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let state = match q.state.as_deref().unwrap_or("pending") {
        "pending" => State::Pending,
        "dead" => State::Dead,
        "delivered" => State::Delivered,
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("state `{other}`: use pending, dead or delivered"),
            ))
        }
    };
    let limit = q.limit.unwrap_or(100).min(10_000);
    let store = s.store.clone();
    let rows = blocking(move || store.list(state, limit)).await?;
    Ok(Json(rows).into_response())
}

async fn show(
    AxState(s): AxState<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = s.store.clone();
    let key = id.clone();
    match blocking(move || store.find(&key)).await? {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no event `{id}`"))),
    }
}

async fn retry_one(
    AxState(s): AxState<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = s.store.clone();
    let key = id.clone();
    let requeued = blocking(move || match store.seq_of(&key)? {
        Some(seq) => Ok(Some(store.requeue(seq)?)),
        None => Ok(None),
    })
    .await?;
    match requeued {
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no event `{id}`"))),
        Some(None) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("event `{id}` is not a dead letter"),
        )),
        Some(Some(p)) => {
            let seq = p.seq;
            let _ = s.requeue.send(p);
            Ok(Json(json!({"requeued": [seq]})).into_response())
        }
    }
}

async fn retry_dead(AxState(s): AxState<AdminState>) -> Result<Response, ApiError> {
    let store = s.store.clone();
    let requeued = blocking(move || {
        let mut out = Vec::new();
        for seq in store.dead_sequences()? {
            out.extend(store.requeue(seq)?);
        }
        Ok(out)
    })
    .await?;
    let seqs: Vec<u64> = requeued.iter().map(|p| p.seq).collect();
    for p in requeued {
        let _ = s.requeue.send(p);
    }
    Ok(Json(json!({ "requeued": seqs })).into_response())
}

#[derive(Deserialize)]
struct TestWebhook {
    count: Option<u32>,
    note: Option<String>,
}

async fn test_webhook(
    AxState(s): AxState<AdminState>,
    body: Option<Json<TestWebhook>>,
) -> Result<Response, ApiError> {
    let (count, note) = match body {
        Some(Json(t)) => (t.count.unwrap_or(1), t.note),
        None => (1, None),
    };
    if count == 0 || count > MAX_TEST_EVENTS {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("count must be 1..={MAX_TEST_EVENTS}"),
        ));
    }
    if note.as_ref().is_some_and(|n| n.len() > MAX_TEST_NOTE_BYTES) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("note must be at most {MAX_TEST_NOTE_BYTES} bytes"),
        ));
    }
    let note = note.unwrap_or_else(|| "zenedge test-webhook".into());
    let events = (0..count)
        .map(|i| {
            NewEvent::edge(
                Data::EdgeTest(EdgeTest {
                    note: format!("{note} ({}/{count})", i + 1),
                }),
                Millis::now(),
            )
        })
        .collect();
    let stored = s.store.enqueue_many(events).await?;
    let events: Vec<_> = stored
        .into_iter()
        .filter_map(|e| match e {
            Enqueued::Stored { seq, id } => {
                crate::telemetry::events::EventEnqueued {
                    sequence: seq,
                    event_id: &id,
                    event: EventKind::EdgeTest.as_str(),
                }
                .emit();
                Some(json!({"id": id, "sequence": seq}))
            }
            Enqueued::Dropped { .. } => None,
        })
        .collect();
    Ok((StatusCode::ACCEPTED, Json(json!({ "events": events }))).into_response())
}

async fn devices(AxState(s): AxState<AdminState>) -> Response {
    let views = s.mqtt.views.borrow().clone();
    let mqtt = s.mqtt.status.borrow().clone();
    Json(unknown_while_mqtt_down(views, &mqtt, &s.config)).into_response()
}

/// While the MQTT link is down, what an MQTT device last said is no news: it is shown `unknown`
/// (DESIGN §3), with the reason and since when. Serial devices keep their own state.
fn unknown_while_mqtt_down(
    mut views: Vec<crate::devices::DeviceView>,
    mqtt: &crate::mqtt::MqttStatus,
    config: &crate::config::Config,
) -> Vec<crate::devices::DeviceView> {
    if !mqtt.down_and_needed() {
        return views;
    }
    for v in &mut views {
        let over_mqtt = config
            .devices
            .iter()
            .find(|d| d.id == v.id)
            .is_some_and(|d| !d.driver().is_serial());
        if over_mqtt {
            v.online = None;
            v.reason = Some("mqtt_down".into());
            v.since = mqtt.since.clone();
        }
    }
    views
}

#[derive(Deserialize, Default)]
struct ActionBody {
    duration_s: Option<u64>,
}

/// `POST /v1/devices/{id}/unlock|lock`: an operator action. Answers once it has finished
/// (succeeded, failed or timed out) and its `device.action_completed` event is stored.
async fn device_action(
    AxState(s): AxState<AdminState>,
    Path((id, action)): Path<(String, String)>,
    body: Option<Json<ActionBody>>,
) -> Result<Response, ApiError> {
    let Some(command) = crate::devices::command_from(&action) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no action `{action}`: use unlock or lock"),
        ));
    };
    let Some(device) = s.config.devices.iter().find(|d| d.id == id) else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no device `{id}`")));
    };
    let duration_s = body.unwrap_or_default().duration_s;
    // The same bound as ZenCore's unlocks (DESIGN §2): a huge value would overflow a relay's
    // timer or keep a door open for good.
    if duration_s.is_some_and(|d| !(1..=3600).contains(&d)) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "duration_s must be 1..=3600 seconds".into(),
        ));
    }
    let request = crate::devices::actions::Request {
        action_id: crate::devices::new_action_id(),
        device: id.clone(),
        command,
        source: crate::devices::actions::Source::Operator,
        booking_id: None,
        grant_id: None,
        duration_s,
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    s.mqtt
        .requests
        .send(crate::runtime::HubRequest::Action {
            request,
            reply: Some(reply),
        })
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "device task stopped".into(),
            )
        })?;
    let limit = device.action_timeout + std::time::Duration::from_secs(5);
    match tokio::time::timeout(limit, answer).await {
        Ok(Ok(done)) => Ok(Json(json!({
            "action_id": done.request.action_id,
            "device_id": done.request.device,
            "action": done.request.command.as_str(),
            "status": done.status.as_str(),
            "error": done.error,
            "duration_ms": done.duration_ms(),
        }))
        .into_response()),
        _ => Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            "no result from the device task".into(),
        )),
    }
}

/// Active and revoked grants, never the secrets (only their hashes are stored anyway, and
/// those are left out too).
async fn grants(AxState(s): AxState<AdminState>) -> Result<Response, ApiError> {
    let store = s.store.clone();
    let all = blocking(move || store.records::<crate::access::Grant>()).await?;
    let now = Millis::now();
    let rows: Vec<_> = all
        .into_iter()
        .map(|(_, g)| {
            let state = if g.revoked_at.is_some() {
                "revoked"
            } else if now < g.valid_from {
                "upcoming"
            } else if now >= g.valid_until {
                "expired"
            } else {
                "active"
            };
            json!({
                "grant_id": g.grant_id, "booking_id": g.booking_id,
                "meeting_space_id": g.meeting_space_id, "state": state,
                "valid_from": g.valid_from, "valid_until": g.valid_until,
                "device_ids": g.device_ids, "member_id": g.member_id,
                "has_pin": g.pin_sha256.is_some(), "revoked_at": g.revoked_at,
            })
        })
        .collect();
    Ok(Json(rows).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    verify: Option<bool>,
    /// The newest this many (default 100, at most 10,000).
    limit: Option<usize>,
    /// Only records before this sequence (the next page back).
    before: Option<u64>,
}

/// Records per page at most: the daemon never holds the whole log to answer.
pub const MAX_AUDIT_PAGE: usize = 10_000;

/// A page of the audit log (the newest `limit` before `before`), oldest first; with
/// `?verify=true` also the result of checking the whole chain, read one record at a time.
async fn audit(
    AxState(s): AxState<AdminState>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("limit {limit}: use 1..={MAX_AUDIT_PAGE}"),
        ));
    }
    let store = s.store.clone();
    let page = blocking(move || crate::audit_log::newest(&store, limit, q.before)).await?;
    let records: Vec<serde_json::Value> = page
        .iter()
        .map(|(seq, bytes)| {
            serde_json::from_slice(bytes)
                .unwrap_or_else(|_| json!({"seq": seq, "unreadable": true}))
        })
        .collect();
    let verification = if q.verify.unwrap_or(false) {
        let store = s.store.clone();
        Some(blocking(move || crate::audit_log::verify_stored(&store)).await?)
    } else {
        None
    };
    Ok(Json(json!({"records": records, "verification": verification})).into_response())
}

/// Prometheus text: counters from telemetry, gauges read now.
async fn metrics(AxState(s): AxState<AdminState>) -> Result<Response, ApiError> {
    let store = s.store.clone();
    let stats = blocking(move || store.stats()).await?;
    let d = s.delivery.borrow().clone();
    let mqtt = s.mqtt.status.borrow().clone();
    let views = s.mqtt.views.borrow().clone();
    let oldest = stats
        .oldest_pending_at
        .as_deref()
        .and_then(Millis::parse_rfc3339)
        .map(|t| Millis::now().saturating_sub(t).as_secs_f64())
        .unwrap_or(0.0);
    let g = crate::telemetry::Gauges {
        queue_pending: stats.pending,
        queue_dead: stats.dead,
        oldest_pending_age_seconds: oldest,
        delivered_total: stats.counters.delivered,
        dropped_total: stats.counters.dropped,
        store_live_bytes: stats.live_bytes,
        store_max_bytes: stats.max_store_bytes,
        store_disk_bytes: stats.disk_bytes,
        store_full: stats.full,
        store_undecodable_records: stats.undecodable_records,
        store_kept_records: stats.kept_records,
        store_in_flight: stats.in_flight,
        queue_pending_by_kind: stats
            .pending_by_kind
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect(),
        zencore_reachable: d.reachable,
        devices_total: views.len() as u64,
        devices_online: views.iter().filter(|v| v.online == Some(true)).count() as u64,
        mqtt_connected: mqtt.connected,
        mqtt_messages_total: mqtt.messages,
        mqtt_malformed_total: mqtt.malformed,
        mqtt_connect_attempts_total: mqtt.connect_attempts,
        written_bytes_total: crate::telemetry::process_written_bytes(),
        command_channel_up: s.channel.as_ref().map(|c| c.borrow().up()),
    };
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::prometheus(&g),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[tokio::test]
    async fn the_socket_is_0660_in_its_group_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        // A stale socket, as a SIGKILLed daemon leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let group = group_id("nogroup").map(|_| "nogroup");
        let listener = bind_socket(&path, group).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        if let (Some(name), true) = (group, meta.uid() == 0) {
            assert_eq!(Some(meta.gid()), group_id(name));
        }
        // Only the final name is left, and it answers.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        tokio::net::UnixStream::connect(&path).await.unwrap();
        accept.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_live_socket_a_plain_file_and_an_unknown_group_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.sock");
        let _held = bind_socket(&live, None).unwrap();
        let e = bind_socket(&live, None).unwrap_err().to_string();
        assert!(e.contains("another zenedge daemon"), "{e}");

        let file = dir.path().join("file.sock");
        std::fs::write(&file, "keep me").unwrap();
        let e = bind_socket(&file, None).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

        let other = dir.path().join("other.sock");
        let e = format!(
            "{:#}",
            bind_socket(&other, Some("no-such-group-zenedge")).unwrap_err()
        );
        assert!(e.contains("admin.socket_group"), "{e}");
        assert!(!other.exists());
    }
}
