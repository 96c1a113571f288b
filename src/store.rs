//! The durable store: the only module that touches sled.
//!
//! Trees:
//! - `events`: sequence (u64 big-endian) → the event's body bytes, fixed at enqueue.
//! - `status`: sequence → [`Status`] (JSON), written once an event has been tried, dead-lettered
//!   or delivered. An event without a status is pending and untried.
//! - `attempts`: sequence ++ attempt number (u32 big-endian) → [`Attempt`] (JSON).
//! - `meta`: the sequence high-water mark, counters, an unreported data gap.
//!
//! Durability: [`Store::enqueue`] returns only after a `flush` that covers the event. Concurrent
//! enqueues share one flush (group commit, [`GroupCommit`]), so a burst of N events costs one
//! fsync, not N. Delivery learns of new events through [`Store::durable`], a watch of the highest
//! sequence known durable, and never sees an event that a crash could still take back.
//!
//! Sequences are never reused: the high-water mark is written with every event, and a floor
//! reserved ahead in a small file beside the store (`sequence.floor`) keeps numbering above
//! anything handed out even when a corrupt store has to be replaced by a fresh one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::event::{body_info, render_body, EventKind, IdGenerator, Millis, NewEvent, Origin};

/// sled's page cache. A Pi 3 has 1 GiB shared with everything else; the outbox is written
/// once and read once per event (soon after), so a large cache buys nothing: 4 MiB drains as
/// fast as 16 MiB and keeps the daemon near 25 MiB resident (BENCHMARKS.md).
const CACHE_CAPACITY: u64 = 4 << 20;

/// sled's log segment, which is also its write buffer. Small on purpose: sled writes whole
/// segments during bursts, the kernel's page cache then holds the file in folios that large,
/// and every later small flush writes back a whole folio. With sled's default (512 KiB) one
/// quiet-time event cost 512 KiB of flash writes on a current kernel; with 16 KiB it costs
/// about 16 KiB (BENCHMARKS.md). 8 KiB costs a third of the enqueue rate.
/// sled persists it: a store made with another value refuses to open (and is not quarantined,
/// see `open_sled`), so changing it needs a migration.
const SEGMENT_SIZE: usize = 16 * 1024;
/// How far ahead of use the sequence floor file is written.
const SEQUENCE_RESERVATION: u64 = 100_000;
const FLOOR_FILE: &str = "sequence.floor";
const STORE_DIR: &str = "store";
/// How long a delivered event and its attempt log stay readable.
pub const DELIVERED_RETENTION: Duration = Duration::from_secs(24 * 3600);

const META_SEQ_HWM: &[u8] = b"seq_hwm";
const META_DELIVERED: &[u8] = b"count.delivered";
const META_DEAD: &[u8] = b"count.dead";
const META_DROPPED: &[u8] = b"count.dropped";
const META_GAP: &[u8] = b"gap.unreported";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Sled(#[from] sled::Error),
    #[error("store file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the store's flusher has stopped")]
    FlusherGone,
    #[error("stored record {what} is unreadable: {error}")]
    Record { what: String, error: String },
}

/// The delivery state of an event that has left the untried-pending state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Dead,
    Delivered,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Dead => "dead",
            State::Delivered => "delivered",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    /// Attempts made so far; the next attempt is number `attempts + 1`.
    pub attempts: u32,
    /// When a pending event may be tried again (ms since the epoch).
    #[serde(default)]
    pub next_attempt_ms: Option<u64>,
    #[serde(default)]
    pub dead_reason: Option<String>,
    #[serde(default)]
    pub delivered_ms: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
}

impl Status {
    /// The status of an event that has not been tried yet.
    pub fn untried() -> Status {
        Status {
            state: State::Pending,
            attempts: 0,
            next_attempt_ms: None,
            dead_reason: None,
            delivered_ms: None,
            last_error: None,
        }
    }
}

/// One delivery attempt, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    /// Start of the attempt, RFC 3339.
    pub started_at: String,
    pub duration_ms: u64,
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// What went wrong, when something did (connection error, timeout, non-2xx).
    pub error: Option<String>,
}

/// An event that delivery has to work on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    pub seq: u64,
    pub lane: Option<String>,
    pub kind: Option<EventKind>,
    pub at: Millis,
    pub attempts: u32,
    pub next_attempt: Option<Millis>,
}

/// One row of `zenedge queue list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventSummary {
    pub sequence: u64,
    pub id: String,
    pub event: String,
    pub device_id: Option<String>,
    pub timestamp: String,
    pub state: State,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub dead_reason: Option<String>,
    pub last_error: Option<String>,
}

/// `zenedge queue show`: the event, its body and its attempt log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventDetail {
    #[serde(flatten)]
    pub summary: EventSummary,
    pub body: serde_json::Value,
    pub attempts_log: Vec<Attempt>,
}

/// What [`Store::enqueue`] did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Durable and queued for delivery.
    Stored { seq: u64, id: String },
    /// A presence event refused because the store is full of events that may not be dropped.
    /// Its sequence is reported in the next `edge.data_gap`.
    Dropped { seq: u64 },
}

/// An accepted `access.unlock` not yet completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUnlock {
    pub action_id: String,
    pub device: String,
    pub booking_id: Option<String>,
    pub grant_id: Option<String>,
    pub duration_s: Option<u64>,
    pub not_after: Millis,
}

impl PendingUnlock {
    pub fn request(&self) -> crate::devices::actions::Request {
        crate::devices::actions::Request {
            action_id: self.action_id.clone(),
            device: self.device.clone(),
            command: crate::devices::drivers::Command::Unlock,
            source: crate::devices::actions::Source::Zencore,
            booking_id: self.booking_id.clone(),
            grant_id: self.grant_id.clone(),
            duration_s: self.duration_s,
        }
    }
}

/// Sequences dropped and not yet reported to ZenCore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Gap {
    from: u64,
    to: u64,
    count: u64,
}

impl Gap {
    fn merge(self, other: Gap) -> Gap {
        Gap {
            from: self.from.min(other.from),
            to: self.to.max(other.to),
            count: self.count + other.count,
        }
    }
}

/// Counters kept in the store, so they survive restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    pub delivered: u64,
    pub dead: u64,
    pub dropped: u64,
}

/// What `zenedge status` shows about the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreStats {
    pub pending: u64,
    pub dead: u64,
    pub delivered_retained: u64,
    pub oldest_pending_at: Option<String>,
    pub last_sequence: u64,
    pub live_bytes: u64,
    pub max_store_bytes: u64,
    pub disk_bytes: u64,
    pub full: bool,
    pub counters: Counters,
    pub quarantined: Option<String>,
}

struct Alloc {
    next_seq: u64,
    /// Sequences below this are covered by the floor file.
    reserved: u64,
    ids: IdGenerator,
}

struct Inner {
    db: sled::Db,
    events: sled::Tree,
    status: sled::Tree,
    attempts: sled::Tree,
    meta: sled::Tree,
    presence: sled::Tree,
    grants: sled::Tree,
    dedup: sled::Tree,
    audit: sled::Tree,
    unlocks: sled::Tree,
    bookings: sled::Tree,
    booking_marks: sled::Tree,
    audit_lock: Mutex<()>,
    origin: Origin,
    floor_path: PathBuf,
    alloc: Arc<Mutex<Alloc>>,
    flusher: GroupCommit,
    durable: watch::Receiver<u64>,
    max_bytes: AtomicU64,
    /// Keys plus values of `events`, `status` and `attempts`: what the byte budget counts.
    live_bytes: AtomicU64,
    full: AtomicBool,
    /// When a reclamation last found nothing to drop (ms); while full, the next scan waits a
    /// second instead of running on every insert.
    reclaim_failed_at: AtomicU64,
    /// Serialises space reclamation so two enqueues do not drop events twice.
    reclaim: Mutex<()>,
    /// Events whose body is on its way to ZenCore: reclaim leaves them alone, so a gap never
    /// names an event ZenCore receives.
    sending: Mutex<std::collections::HashSet<u64>>,
    quarantined: Option<PathBuf>,
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Every record of a JSON tree, keyed by its key as text; unreadable records are logged and
/// skipped (one bad record must not take the rest with it).
fn json_values<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    what: &str,
) -> Result<Vec<(String, T)>, StoreError> {
    let mut out = Vec::new();
    for item in tree.iter() {
        let (k, v) = item?;
        let key = String::from_utf8_lossy(&k).into_owned();
        match serde_json::from_slice(&v) {
            Ok(x) => out.push((key, x)),
            Err(e) => {
                tracing::error!(message = "Unreadable record ignored.", record = what, key = %key, error = %e)
            }
        }
    }
    Ok(out)
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn key_seq(key: &[u8]) -> Option<u64> {
    key.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

fn attempt_key(seq: u64, attempt: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&seq.to_be_bytes());
    k[8..].copy_from_slice(&attempt.to_be_bytes());
    k
}

fn read_u64(v: Option<sled::IVec>) -> u64 {
    v.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the store under `state_dir`. A store that sled cannot open because it
    /// is corrupt is renamed to `store.corrupt-<unix time>` and a fresh one is created, so the
    /// daemon comes up instead of crash-looping; the caller learns of it through
    /// [`Store::quarantined`] and reports it.
    pub fn open(state_dir: &Path, origin: Origin, max_bytes: u64) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::File {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(STORE_DIR);
        let (db, quarantined) = match open_sled(&path) {
            Ok(db) => (db, None),
            Err(OpenFailure::Corrupt(reason)) => {
                let aside = state_dir.join(format!(
                    "{STORE_DIR}.corrupt-{}",
                    Millis::now().unix_seconds()
                ));
                tracing::error!(
                    message = "Store is corrupt; moving it aside and starting a fresh one.",
                    path = %path.display(),
                    moved_to = %aside.display(),
                    error = %reason,
                );
                std::fs::rename(&path, &aside).map_err(|source| StoreError::File {
                    path: path.clone(),
                    source,
                })?;
                let db = open_sled(&path).map_err(|e| match e {
                    OpenFailure::Corrupt(reason) => StoreError::Record {
                        what: "fresh store".into(),
                        error: reason,
                    },
                    OpenFailure::Other(e) => e,
                })?;
                (db, Some(aside))
            }
            Err(OpenFailure::Other(e)) => return Err(e),
        };
        let events = db.open_tree("events")?;
        let status = db.open_tree("status")?;
        let attempts = db.open_tree("attempts")?;
        let meta = db.open_tree("meta")?;
        let presence = db.open_tree("presence")?;
        let grants = db.open_tree("grants")?;
        let dedup = db.open_tree("dedup")?;
        let audit = db.open_tree("audit")?;
        let unlocks = db.open_tree("unlocks")?;
        let bookings = db.open_tree("bookings")?;
        let booking_marks = db.open_tree("booking_marks")?;

        let floor_path = state_dir.join(FLOOR_FILE);
        let floor = read_floor(&floor_path)?;
        let hwm = read_u64(meta.get(META_SEQ_HWM)?);
        let last_event = match events.last()? {
            Some((k, _)) => key_seq(&k).unwrap_or(0),
            None => 0,
        };
        // A fresh store after quarantine starts above everything the old one may have used.
        let base = if quarantined.is_some() {
            hwm.max(last_event).max(floor)
        } else {
            hwm.max(last_event)
        };
        let mut live = 0u64;
        for tree in [&events, &status, &attempts] {
            for item in tree.iter() {
                let (k, v) = item?;
                live += (k.len() + v.len()) as u64;
            }
        }
        let alloc = Arc::new(Mutex::new(Alloc {
            next_seq: base + 1,
            reserved: floor.max(base),
            ids: IdGenerator::default(),
        }));
        let (durable_tx, durable) = watch::channel(base);
        let flusher = GroupCommit::start(db.clone(), alloc.clone(), durable_tx);
        let store = Store {
            inner: Arc::new(Inner {
                db,
                events,
                status,
                attempts,
                meta,
                presence,
                grants,
                dedup,
                audit,
                unlocks,
                bookings,
                booking_marks,
                audit_lock: Mutex::new(()),
                origin,
                floor_path,
                alloc,
                flusher,
                durable,
                max_bytes: AtomicU64::new(max_bytes),
                live_bytes: AtomicU64::new(live),
                full: AtomicBool::new(false),
                reclaim_failed_at: AtomicU64::new(0),
                reclaim: Mutex::new(()),
                sending: Mutex::default(),
                quarantined,
            }),
        };
        Ok(store)
    }

    /// True while the store is over its byte budget with nothing left that may be dropped.
    pub fn is_full(&self) -> bool {
        self.inner.full.load(Ordering::Relaxed)
    }

    /// Where a corrupt store was moved to at open, if it was.
    pub fn quarantined(&self) -> Option<&Path> {
        self.inner.quarantined.as_deref()
    }

    /// The last sequence handed out before this process started, or the floor after quarantine.
    pub fn last_sequence(&self) -> u64 {
        self.lock_alloc().next_seq - 1
    }

    pub fn set_max_bytes(&self, max_bytes: u64) {
        self.inner.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    fn lock_alloc(&self) -> std::sync::MutexGuard<'_, Alloc> {
        // A panic while holding the lock leaves plain integers behind, which stay valid.
        self.inner
            .alloc
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores an event durably and returns its sequence and id. Returns only after the event
    /// survives a crash (or with an error, in which case the event must be treated as not
    /// stored).
    pub async fn enqueue(&self, event: NewEvent) -> Result<Enqueued, StoreError> {
        let enqueued = self.insert(event)?;
        self.flush_async().await?;
        Ok(enqueued)
    }

    /// Writes an event without waiting for durability. It is not delivered, and its producer
    /// must not acknowledge anything, until a later [`Store::flush_async`] returns: delivery
    /// reads only what a completed flush covered. Lets a source stage a batch and pay one flush.
    pub fn stage(&self, event: NewEvent) -> Result<Enqueued, StoreError> {
        self.insert(event)
    }

    /// The presence state last reported to ZenCore, per device.
    pub fn presence_all(
        &self,
    ) -> Result<std::collections::HashMap<String, crate::devices::presence::Reported>, StoreError>
    {
        Ok(json_values(&self.inner.presence, "presence")?
            .into_iter()
            .collect())
    }

    /// Records what was reported for a device. Written like [`Store::stage`]: durable with the
    /// next flush, which is the flush that makes the transition's event durable.
    pub fn put_presence(
        &self,
        device: &str,
        reported: &crate::devices::presence::Reported,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(reported).unwrap_or_default();
        self.inner.presence.insert(device.as_bytes(), bytes)?;
        Ok(())
    }

    /// Writes a grant (not yet durable: flush before answering).
    pub fn put_grant(&self, grant: &crate::access::Grant) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(grant).unwrap_or_default();
        self.inner.grants.insert(grant.grant_id.as_bytes(), bytes)?;
        Ok(())
    }

    /// Every stored grant, revoked ones included (they are kept until `valid_until` so a late
    /// attempt is denied as `revoked`).
    pub fn grants(&self) -> Result<Vec<crate::access::Grant>, StoreError> {
        Ok(json_values(&self.inner.grants, "grant")?
            .into_iter()
            .map(|(_, g)| g)
            .collect())
    }

    /// Marks every grant matching `which` revoked at `now`; returns their ids.
    pub fn revoke_grants(
        &self,
        now: Millis,
        which: impl Fn(&crate::access::Grant) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let mut revoked = Vec::new();
        for mut g in self.grants()? {
            if g.revoked_at.is_none() && which(&g) {
                g.revoked_at = Some(now);
                self.put_grant(&g)?;
                revoked.push(g.grant_id);
            }
        }
        Ok(revoked)
    }

    /// Deletes grants whose window ended more than a day before `now`.
    pub fn gc_grants(&self, now: Millis) -> Result<usize, StoreError> {
        let mut n = 0;
        for g in self.grants()? {
            if g.valid_until.saturating_add(Duration::from_secs(86_400)) < now {
                self.inner.grants.remove(g.grant_id.as_bytes())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Writes a booking as ZenCore described it (flush before answering). Only the inbound
    /// endpoint writes these.
    pub fn put_booking(&self, b: &crate::schedule::Booking) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(b).unwrap_or_default();
        self.inner.bookings.insert(b.booking_id.as_bytes(), bytes)?;
        Ok(())
    }

    pub fn booking(&self, id: &str) -> Result<Option<crate::schedule::Booking>, StoreError> {
        Ok(match self.inner.bookings.get(id.as_bytes())? {
            Some(v) => serde_json::from_slice(&v).ok(),
            None => None,
        })
    }

    pub fn bookings(&self) -> Result<Vec<crate::schedule::Booking>, StoreError> {
        Ok(json_values(&self.inner.bookings, "booking")?
            .into_iter()
            .map(|(_, b)| b)
            .collect())
    }

    /// Writes a booking's marks, durable with the next flush — the one that stores the status
    /// events they record. Only the device hub writes these.
    pub fn put_booking_marks(
        &self,
        booking_id: &str,
        marks: &crate::schedule::Marks,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(marks).unwrap_or_default();
        self.inner
            .booking_marks
            .insert(booking_id.as_bytes(), bytes)?;
        Ok(())
    }

    pub fn booking_marks(&self) -> Result<Vec<(String, crate::schedule::Marks)>, StoreError> {
        json_values(&self.inner.booking_marks, "booking marks")
    }

    /// Forgets a booking long over.
    pub fn forget_booking(&self, booking_id: &str) -> Result<(), StoreError> {
        self.inner.bookings.remove(booking_id.as_bytes())?;
        self.inner.booking_marks.remove(booking_id.as_bytes())?;
        Ok(())
    }

    /// When an inbound command with this idempotency key was accepted, if it was.
    pub fn dedup_seen(&self, key: &str) -> Result<Option<Millis>, StoreError> {
        Ok(self
            .inner
            .dedup
            .get(key.as_bytes())?
            .map(|v| Millis(read_u64(Some(v)))))
    }

    /// Remembers an accepted command's key (durable with the next flush).
    pub fn dedup_put(&self, key: &str, now: Millis) -> Result<(), StoreError> {
        self.inner
            .dedup
            .insert(key.as_bytes(), &now.0.to_be_bytes())?;
        Ok(())
    }

    /// Forgets idempotency keys older than `keep` (DESIGN: at least 72 h).
    pub fn gc_dedup(&self, now: Millis, keep: Duration) -> Result<usize, StoreError> {
        let cutoff = now.0.saturating_sub(keep.as_millis() as u64);
        let mut n = 0;
        for item in self.inner.dedup.iter() {
            let (k, v) = item?;
            if read_u64(Some(v)) < cutoff {
                self.inner.dedup.remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The persisted clock floor (latest trusted time seen).
    pub fn clock_floor(&self) -> Result<Millis, StoreError> {
        Ok(Millis(read_u64(self.inner.meta.get(b"clock.floor")?)))
    }

    /// Raises the clock floor; never lowers it.
    pub fn raise_clock_floor(&self, to: Millis) -> Result<(), StoreError> {
        self.inner.meta.fetch_and_update(b"clock.floor", |old| {
            let cur = read_u64(old.map(sled::IVec::from));
            Some(cur.max(to.0).to_be_bytes().to_vec())
        })?;
        Ok(())
    }

    /// Appends an access decision to the hash-chained audit log (durable with the next flush).
    pub fn audit_append(
        &self,
        entry: crate::audit::Entry,
    ) -> Result<crate::audit::Record, StoreError> {
        let _guard = self
            .inner
            .audit_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let prev = match self.inner.audit.last()? {
            Some((_, v)) => serde_json::from_slice::<crate::audit::Record>(&v)
                .map(|r| (r.seq, r.hash))
                .map_err(|e| StoreError::Record {
                    what: "last audit record".into(),
                    error: e.to_string(),
                })?,
            None => (0, crate::audit::GENESIS.to_string()),
        };
        let record = crate::audit::Record::chain(prev.0 + 1, prev.1, entry);
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        self.inner.audit.insert(seq_key(record.seq), bytes)?;
        Ok(record)
    }

    /// The audit log, oldest first, as stored (unparsed, so a tampered record still shows).
    pub fn audit_raw(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.audit.iter() {
            let (k, v) = item?;
            out.push((key_seq(&k).unwrap_or(0), v.to_vec()));
        }
        Ok(out)
    }

    /// Remembers an accepted ZenCore unlock until it completes, so that one pending at a crash
    /// is carried out (or expired) after restart. Durable with the next flush.
    pub fn put_unlock(&self, unlock: &PendingUnlock) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(unlock).unwrap_or_default();
        self.inner
            .unlocks
            .insert(unlock.action_id.as_bytes(), bytes)?;
        Ok(())
    }

    /// Forgets a completed unlock (staged: durable with the flush of its completion event).
    pub fn remove_unlock(&self, action_id: &str) -> Result<(), StoreError> {
        self.inner.unlocks.remove(action_id.as_bytes())?;
        Ok(())
    }

    pub fn unlocks(&self) -> Result<Vec<PendingUnlock>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.unlocks.iter() {
            let (_, v) = item?;
            match serde_json::from_slice(&v) {
                Ok(u) => out.push(u),
                Err(e) => {
                    tracing::error!(message = "Unreadable pending unlock ignored.", error = %e)
                }
            }
        }
        Ok(out)
    }

    /// Test and repair hook: overwrites one audit record's bytes.
    #[doc(hidden)]
    pub fn audit_overwrite(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.inner.audit.insert(seq_key(seq), bytes)?;
        Ok(())
    }

    /// Stores several events with one flush.
    pub async fn enqueue_many(&self, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, StoreError> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(self.insert(e)?);
        }
        self.flush_async().await?;
        Ok(out)
    }

    /// Waits until everything written so far is durable.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.inner.flusher.flush().await
    }

    /// Flushes synchronously; used at shutdown.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    fn insert(&self, event: NewEvent) -> Result<Enqueued, StoreError> {
        self.report_gap_if_room()?;
        let presence = event.kind.is_presence();
        if self.over_budget() {
            self.reclaim()?;
            if presence && self.over_budget() {
                let seq = self.allocate_only()?;
                self.note_gap(Gap {
                    from: seq,
                    to: seq,
                    count: 1,
                })?;
                tracing::warn!(
                    message = "Store is full; presence event dropped.",
                    sequence = seq,
                    event = event.kind.as_str(),
                );
                return Ok(Enqueued::Dropped { seq });
            }
        }
        self.insert_unchecked(&event)
    }

    fn allocate_only(&self) -> Result<u64, StoreError> {
        let mut alloc = self.lock_alloc();
        let seq = alloc.next_seq;
        self.reserve(&mut alloc, seq)?;
        alloc.next_seq += 1;
        self.inner.meta.insert(META_SEQ_HWM, &seq_key(seq))?;
        Ok(seq)
    }

    fn reserve(&self, alloc: &mut Alloc, seq: u64) -> Result<(), StoreError> {
        if seq > alloc.reserved {
            let upto = seq + SEQUENCE_RESERVATION;
            write_floor(&self.inner.floor_path, upto)?;
            alloc.reserved = upto;
        }
        Ok(())
    }

    fn insert_unchecked(&self, event: &NewEvent) -> Result<Enqueued, StoreError> {
        let mut alloc = self.lock_alloc();
        let seq = alloc.next_seq;
        self.reserve(&mut alloc, seq)?;
        let id = match &event.id {
            Some(id) => id.clone(),
            None => alloc.ids.next(SystemTime::now()),
        };
        let body = render_body(&self.inner.origin, event, &id, seq);
        let size = 8 + body.len() as u64;
        self.inner.events.insert(seq_key(seq), body)?;
        self.inner.meta.insert(META_SEQ_HWM, &seq_key(seq))?;
        alloc.next_seq += 1;
        drop(alloc);
        self.inner.live_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(Enqueued::Stored { seq, id })
    }

    fn over_budget(&self) -> bool {
        self.inner.live_bytes.load(Ordering::Relaxed) > self.inner.max_bytes.load(Ordering::Relaxed)
    }

    /// Frees space: first delivered events kept only for their attempt log, then the oldest
    /// presence events (pending or dead), down to 90 % of the budget. Actions and access events
    /// are never dropped. Dropped sequences become one `edge.data_gap`.
    fn reclaim(&self) -> Result<(), StoreError> {
        let _guard = self
            .inner
            .reclaim
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let target = self.inner.max_bytes.load(Ordering::Relaxed) / 10 * 9;
        let under = |s: &Store| s.inner.live_bytes.load(Ordering::Relaxed) <= target;
        if under(self) {
            return Ok(());
        }
        let now = Millis::now().0;
        if self.inner.full.load(Ordering::Relaxed)
            && now.saturating_sub(self.inner.reclaim_failed_at.load(Ordering::Relaxed)) < 1000
        {
            return Ok(());
        }
        for item in self.inner.status.iter() {
            let (k, v) = item?;
            let Some(seq) = key_seq(&k) else { continue };
            if decode_status(&v).is_ok_and(|s| s.state == State::Delivered) {
                self.remove_event(seq)?;
                if under(self) {
                    return Ok(());
                }
            }
        }
        let mut gap: Option<Gap> = None;
        for item in self.inner.events.iter() {
            let (k, body) = item?;
            let Some(seq) = key_seq(&k) else { continue };
            let presence = body_info(&body)
                .and_then(|i| i.kind)
                .is_some_and(|k| k.is_presence());
            if !presence {
                continue;
            }
            // Checked and removed under the lock `begin_send` takes: either the event is on
            // its way (and kept) or it is gone before anyone reads it.
            let sending = self.inner.sending.lock().unwrap_or_else(|p| p.into_inner());
            if sending.contains(&seq) {
                continue;
            }
            self.remove_event(seq)?;
            drop(sending);
            let one = Gap {
                from: seq,
                to: seq,
                count: 1,
            };
            gap = Some(gap.map_or(one, |g| g.merge(one)));
            if under(self) {
                break;
            }
        }
        if let Some(gap) = gap {
            tracing::warn!(
                message = "Store over its byte budget; oldest presence events dropped.",
                from_sequence = gap.from,
                to_sequence = gap.to,
                count = gap.count,
            );
            self.note_gap(gap)?;
        }
        let full = !under(self);
        if full && !self.inner.full.swap(true, Ordering::Relaxed) {
            tracing::error!(
                message = "Store is full of events that may not be dropped; new presence events will be dropped.",
                live_bytes = self.inner.live_bytes.load(Ordering::Relaxed),
                max_store_bytes = self.inner.max_bytes.load(Ordering::Relaxed),
            );
        }
        if full {
            self.inner.reclaim_failed_at.store(now, Ordering::Relaxed);
        } else {
            self.inner.full.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    fn note_gap(&self, gap: Gap) -> Result<(), StoreError> {
        let merged = match self.inner.meta.get(META_GAP)? {
            Some(v) => serde_json::from_slice::<Gap>(&v)
                .map(|old| old.merge(gap))
                .unwrap_or(gap),
            None => gap,
        };
        let bytes = serde_json::to_vec(&merged).unwrap_or_default();
        self.inner.meta.insert(META_GAP, bytes)?;
        self.bump(META_DROPPED, gap.count)?;
        Ok(())
    }

    /// Turns an unreported gap into an `edge.data_gap` event once there is room for it.
    fn report_gap_if_room(&self) -> Result<(), StoreError> {
        let Some(v) = self.inner.meta.get(META_GAP)? else {
            return Ok(());
        };
        if self.over_budget() {
            return Ok(());
        }
        let Ok(gap) = serde_json::from_slice::<Gap>(&v) else {
            self.inner.meta.remove(META_GAP)?;
            return Ok(());
        };
        // Only the caller that removes the record reports it.
        if self
            .inner
            .meta
            .compare_and_swap(META_GAP, Some(v), None::<&[u8]>)?
            .is_err()
        {
            return Ok(());
        }
        let event = NewEvent::new(EventKind::EdgeDataGap, None, Millis::now())
            .with("from_sequence", gap.from)
            .with("to_sequence", gap.to)
            .with("count", gap.count)
            .with("reason", "store_full");
        self.insert_unchecked(&event)?;
        self.inner.full.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn remove_event(&self, seq: u64) -> Result<(), StoreError> {
        let mut freed = 0u64;
        if let Some(v) = self.inner.events.remove(seq_key(seq))? {
            freed += 8 + v.len() as u64;
        }
        if let Some(v) = self.inner.status.remove(seq_key(seq))? {
            freed += 8 + v.len() as u64;
        }
        for item in self.inner.attempts.scan_prefix(seq_key(seq)) {
            let (k, v) = item?;
            freed += (k.len() + v.len()) as u64;
            self.inner.attempts.remove(k)?;
        }
        self.inner.live_bytes.fetch_sub(
            freed.min(self.inner.live_bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// A watch of the highest sequence known to be durable. Delivery scans up to it.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.inner.durable.clone()
    }

    /// Every event delivery still has to work on, oldest first (used at start-up).
    pub fn load_pending(&self) -> Result<Vec<PendingEvent>, StoreError> {
        self.scan_pending(0, u64::MAX)
    }

    /// Pending events with `after < seq <= upto`, oldest first.
    pub fn scan_pending(&self, after: u64, upto: u64) -> Result<Vec<PendingEvent>, StoreError> {
        let mut out = Vec::new();
        self.visit_pending(after, upto, |p| {
            out.push(p);
            true
        })?;
        Ok(out)
    }

    /// Visits pending events with `after < seq <= upto`, oldest first, until `f` returns false,
    /// without collecting them. Returns the highest sequence visited: `upto` when the walk ran
    /// to the end, else the sequence `f` stopped at.
    pub fn visit_pending(
        &self,
        after: u64,
        upto: u64,
        mut f: impl FnMut(PendingEvent) -> bool,
    ) -> Result<u64, StoreError> {
        if after >= upto {
            return Ok(after);
        }
        for item in self.inner.events.range(seq_key(after + 1)..=seq_key(upto)) {
            let (k, body) = item?;
            let Some(seq) = key_seq(&k) else { continue };
            let status = self.status(seq)?.unwrap_or_else(Status::untried);
            if status.state != State::Pending {
                continue;
            }
            let Some(info) = body_info(&body) else {
                tracing::error!(
                    message = "Stored event is unreadable; moving it to dead letters.",
                    sequence = seq
                );
                self.set_dead(seq, status, "unreadable")?;
                continue;
            };
            let more = f(PendingEvent {
                seq,
                lane: info.lane,
                kind: info.kind,
                at: info.at,
                attempts: status.attempts,
                next_attempt: status.next_attempt_ms.map(Millis),
            });
            if !more {
                return Ok(seq);
            }
        }
        Ok(upto)
    }

    /// The body of an event about to be sent, marked as sending until [`Store::end_send`]
    /// (so it cannot be dropped for space meanwhile). `None` when it was dropped already.
    pub fn begin_send(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut sending = self.inner.sending.lock().unwrap_or_else(|p| p.into_inner());
        let body = self.body(seq)?;
        if body.is_some() {
            sending.insert(seq);
        }
        Ok(body)
    }

    pub fn end_send(&self, seq: u64) {
        self.inner
            .sending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq);
    }

    pub fn body(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.events.get(seq_key(seq))?.map(|v| v.to_vec()))
    }

    pub fn status(&self, seq: u64) -> Result<Option<Status>, StoreError> {
        match self.inner.status.get(seq_key(seq))? {
            Some(v) => decode_status(&v).map(Some),
            None => Ok(None),
        }
    }

    fn put_status(&self, seq: u64, status: &Status) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(status).unwrap_or_default();
        let new_len = bytes.len() as u64;
        let old = self.inner.status.insert(seq_key(seq), bytes)?;
        match old {
            Some(old) => {
                let old_len = old.len() as u64;
                if new_len >= old_len {
                    self.inner
                        .live_bytes
                        .fetch_add(new_len - old_len, Ordering::Relaxed);
                } else {
                    self.inner
                        .live_bytes
                        .fetch_sub(old_len - new_len, Ordering::Relaxed);
                }
            }
            None => {
                self.inner
                    .live_bytes
                    .fetch_add(8 + new_len, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Logs one attempt and the event's new status. Returns false (and writes nothing) when
    /// the event is no longer in the store (dropped for space while in flight).
    pub fn record_attempt(
        &self,
        seq: u64,
        attempt: &Attempt,
        status: &Status,
    ) -> Result<bool, StoreError> {
        if !self.inner.events.contains_key(seq_key(seq))? {
            return Ok(false);
        }
        let bytes = serde_json::to_vec(attempt).unwrap_or_default();
        self.inner
            .live_bytes
            .fetch_add(12 + bytes.len() as u64, Ordering::Relaxed);
        self.inner
            .attempts
            .insert(attempt_key(seq, attempt.attempt), bytes)?;
        self.put_status(seq, status)?;
        match status.state {
            State::Delivered => self.bump(META_DELIVERED, 1)?,
            State::Dead => self.bump(META_DEAD, 1)?,
            State::Pending => {}
        }
        Ok(true)
    }

    /// Moves an event to the dead letters without an attempt (e.g. older than `max_age`).
    pub fn set_dead(&self, seq: u64, mut status: Status, reason: &str) -> Result<(), StoreError> {
        status.state = State::Dead;
        status.dead_reason = Some(reason.to_owned());
        status.next_attempt_ms = None;
        self.put_status(seq, &status)?;
        self.bump(META_DEAD, 1)
    }

    /// Puts a dead letter back in the queue; it keeps its id, bytes and attempt count.
    /// Returns the pending event, or `None` if `seq` is not a dead letter.
    pub fn requeue(&self, seq: u64) -> Result<Option<PendingEvent>, StoreError> {
        let Some(mut status) = self.status(seq)? else {
            return Ok(None);
        };
        if status.state != State::Dead {
            return Ok(None);
        }
        let Some(body) = self.body(seq)? else {
            return Ok(None);
        };
        status.state = State::Pending;
        status.dead_reason = None;
        status.next_attempt_ms = None;
        self.put_status(seq, &status)?;
        let info = body_info(&body);
        Ok(Some(PendingEvent {
            seq,
            lane: info.as_ref().and_then(|i| i.lane.clone()),
            kind: info.as_ref().and_then(|i| i.kind),
            at: info.map(|i| i.at).unwrap_or_default(),
            attempts: status.attempts,
            next_attempt: None,
        }))
    }

    /// Every dead letter's sequence, oldest first.
    pub fn dead_sequences(&self) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.status.iter() {
            let (k, v) = item?;
            if decode_status(&v)?.state == State::Dead {
                out.extend(key_seq(&k));
            }
        }
        Ok(out)
    }

    /// Deletes delivered events whose retention has passed. Returns how many went.
    pub fn gc_delivered(&self, now: Millis) -> Result<usize, StoreError> {
        let cutoff = now.0.saturating_sub(DELIVERED_RETENTION.as_millis() as u64);
        let mut doomed = Vec::new();
        for item in self.inner.status.iter() {
            let (k, v) = item?;
            let s = decode_status(&v)?;
            if s.state == State::Delivered && s.delivered_ms.unwrap_or(0) < cutoff {
                doomed.extend(key_seq(&k));
            }
        }
        for seq in &doomed {
            self.remove_event(*seq)?;
        }
        Ok(doomed.len())
    }

    fn bump(&self, key: &[u8], by: u64) -> Result<(), StoreError> {
        self.inner.meta.fetch_and_update(key, |old| {
            let n = read_u64(old.map(sled::IVec::from)) + by;
            Some(n.to_be_bytes().to_vec())
        })?;
        Ok(())
    }

    pub fn counters(&self) -> Result<Counters, StoreError> {
        Ok(Counters {
            delivered: read_u64(self.inner.meta.get(META_DELIVERED)?),
            dead: read_u64(self.inner.meta.get(META_DEAD)?),
            dropped: read_u64(self.inner.meta.get(META_DROPPED)?),
        })
    }

    fn summary(&self, seq: u64, body: &[u8]) -> Result<EventSummary, StoreError> {
        let status = self.status(seq)?.unwrap_or_else(Status::untried);
        let info = body_info(body);
        Ok(EventSummary {
            sequence: seq,
            id: info.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
            event: info
                .as_ref()
                .and_then(|i| i.kind)
                .map(|k| k.as_str().to_owned())
                .unwrap_or_else(|| "unknown".into()),
            device_id: info.as_ref().and_then(|i| i.lane.clone()),
            timestamp: info.map(|i| i.at.rfc3339()).unwrap_or_default(),
            state: status.state,
            attempts: status.attempts,
            next_attempt_at: status.next_attempt_ms.map(|m| Millis(m).rfc3339()),
            dead_reason: status.dead_reason,
            last_error: status.last_error,
        })
    }

    /// Events in `state`, oldest first, at most `limit`.
    pub fn list(&self, state: State, limit: usize) -> Result<Vec<EventSummary>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.events.iter() {
            if out.len() >= limit {
                break;
            }
            let (k, body) = item?;
            let Some(seq) = key_seq(&k) else { continue };
            let summary = self.summary(seq, &body)?;
            if summary.state == state {
                out.push(summary);
            }
        }
        Ok(out)
    }

    /// Finds an event by id (`evt_…`) or sequence number.
    pub fn find(&self, key: &str) -> Result<Option<EventDetail>, StoreError> {
        let found = match key.parse::<u64>() {
            Ok(seq) => self.body(seq)?.map(|b| (seq, b)),
            Err(_) => self.find_by_id(key)?,
        };
        let Some((seq, body)) = found else {
            return Ok(None);
        };
        let summary = self.summary(seq, &body)?;
        let mut attempts_log = Vec::new();
        for item in self.inner.attempts.scan_prefix(seq_key(seq)) {
            let (_, v) = item?;
            attempts_log.push(serde_json::from_slice(&v).map_err(|e| StoreError::Record {
                what: format!("attempt of sequence {seq}"),
                error: e.to_string(),
            })?);
        }
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
        Ok(Some(EventDetail {
            summary,
            body,
            attempts_log,
        }))
    }

    /// Resolves an event id to its sequence.
    pub fn seq_of(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match key.parse::<u64>() {
            Ok(seq) => Ok(self.body(seq)?.map(|_| seq)),
            Err(_) => Ok(self.find_by_id(key)?.map(|(seq, _)| seq)),
        }
    }

    fn find_by_id(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        // Bodies start with `{"id":"<id>"`, so a prefix test finds the event without parsing.
        let prefix = format!("{{\"id\":\"{id}\"");
        for item in self.inner.events.iter() {
            let (k, body) = item?;
            if body.starts_with(prefix.as_bytes()) {
                return Ok(key_seq(&k).map(|seq| (seq, body.to_vec())));
            }
        }
        Ok(None)
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let (mut pending, mut dead, mut delivered) = (0u64, 0u64, 0u64);
        let mut oldest_pending: Option<Millis> = None;
        for item in self.inner.events.iter() {
            let (k, body) = item?;
            let Some(seq) = key_seq(&k) else { continue };
            match self.status(seq)?.map(|s| s.state).unwrap_or(State::Pending) {
                State::Pending => {
                    pending += 1;
                    if oldest_pending.is_none() {
                        oldest_pending = body_info(&body).map(|i| i.at);
                    }
                }
                State::Dead => dead += 1,
                State::Delivered => delivered += 1,
            }
        }
        Ok(StoreStats {
            pending,
            dead,
            delivered_retained: delivered,
            oldest_pending_at: oldest_pending.map(|m| m.rfc3339()),
            last_sequence: self.last_sequence(),
            live_bytes: self.inner.live_bytes.load(Ordering::Relaxed),
            max_store_bytes: self.inner.max_bytes.load(Ordering::Relaxed),
            disk_bytes: self.inner.db.size_on_disk().unwrap_or(0),
            full: self.inner.full.load(Ordering::Relaxed),
            counters: self.counters()?,
            quarantined: self
                .inner
                .quarantined
                .as_ref()
                .map(|p| p.display().to_string()),
        })
    }
}

fn decode_status(v: &[u8]) -> Result<Status, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Record {
        what: "status".into(),
        error: e.to_string(),
    })
}

enum OpenFailure {
    Corrupt(String),
    Other(StoreError),
}

fn open_sled(path: &Path) -> Result<sled::Db, OpenFailure> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY)
        .flush_every_ms(Some(500))
        .segment_size(SEGMENT_SIZE)
        .mode(sled::Mode::HighThroughput);
    // sled reports most corruption as an error, but some damaged files make it panic; both
    // mean the same thing here: this store cannot be read.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let db = config.open()?;
        // Touch every tree's first and last key so that damage in the index shows up now.
        for name in db.tree_names() {
            let tree = db.open_tree(name)?;
            tree.first()?;
            tree.last()?;
        }
        Ok::<_, sled::Error>(db)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(e))) if e.kind() != std::io::ErrorKind::InvalidData => {
            Err(OpenFailure::Other(StoreError::Sled(sled::Error::Io(e))))
        }
        // An intact store made with other settings or another sled version: moving it aside
        // would lose its events, so refuse loudly instead. (sled is pinned to 0.34.7, whose
        // messages these are; a garbled config file is also `Unsupported`, and is corrupt.)
        Ok(Err(sled::Error::Unsupported(msg)))
            if msg.starts_with("cannot change") || msg.contains("pagecache version") =>
        {
            Err(OpenFailure::Other(StoreError::Sled(
                sled::Error::Unsupported(msg),
            )))
        }
        Ok(Err(e)) => Err(OpenFailure::Corrupt(e.to_string())),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "sled panicked while opening".into());
            Err(OpenFailure::Corrupt(what))
        }
    }
}

fn read_floor(path: &Path) -> Result<u64, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(
                message = "Sequence floor file is unreadable; ignoring it.",
                path = %path.display()
            );
            0
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(StoreError::File {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the floor atomically (temp file, fsync, rename) so a crash leaves the old or the new.
fn write_floor(path: &Path, value: u64) -> Result<(), StoreError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let io = |source| StoreError::File {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(format!("{value}\n").as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// One flusher thread that turns many "make it durable" requests into few fsyncs.
///
/// Every request that arrives while a flush is running is answered by the next flush, and that
/// flush covers every write made before the request was sent, because sled's `flush` persists
/// everything written before it starts.
/// A request to the flusher: answered once a flush that started after it has finished.
type FlushWaiter = oneshot::Sender<Result<(), String>>;

struct GroupCommit {
    tx: Mutex<Option<std::sync::mpsc::Sender<FlushWaiter>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for GroupCommit {
    /// Stops the flusher and waits for it, so that the store's files are released when the
    /// last handle goes (a reopen in the same process must not find sled's lock still held).
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl GroupCommit {
    fn start(db: sled::Db, alloc: Arc<Mutex<Alloc>>, durable: watch::Sender<u64>) -> GroupCommit {
        let (tx, rx) = std::sync::mpsc::channel::<FlushWaiter>();
        let spawned = std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiters = vec![first];
                    waiters.extend(rx.try_iter());
                    // Every sequence below `next_seq` was inserted before this point.
                    let covered = alloc
                        .lock()
                        .map(|a| a.next_seq - 1)
                        .unwrap_or_else(|p| p.into_inner().next_seq - 1);
                    let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    if result.is_ok() {
                        durable.send_if_modified(|v| {
                            let changed = covered > *v;
                            *v = (*v).max(covered);
                            changed
                        });
                    }
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(message = "Cannot start the store flusher thread.", error = %e);
                None
            }
        };
        GroupCommit {
            tx: Mutex::new(Some(tx)),
            thread,
        }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .ok_or(StoreError::FlusherGone)?
            .send(tx)
            .map_err(|_| StoreError::FlusherGone)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Record {
                what: "flush".into(),
                error: e,
            }),
            Err(_) => Err(StoreError::FlusherGone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeviceType;
    use crate::event::DeviceRef;

    fn origin() -> Origin {
        Origin {
            controller_id: "edge-1".into(),
            organization_id: "org".into(),
            meeting_space_id: "ms".into(),
        }
    }

    fn presence(device: &str) -> NewEvent {
        NewEvent::new(
            EventKind::DeviceOnline,
            Some(DeviceRef {
                id: device.into(),
                kind: DeviceType::Lock,
                meeting_space_id: None,
            }),
            Millis::now(),
        )
        .with("reason", "availability")
        .with("offline_since", serde_json::Value::Null)
    }

    fn action(device: &str) -> NewEvent {
        NewEvent::new(
            EventKind::DeviceActionCompleted,
            Some(DeviceRef {
                id: device.into(),
                kind: DeviceType::Lock,
                meeting_space_id: None,
            }),
            Millis::now(),
        )
        .with("action_id", "a")
    }

    fn seq_of(e: &Enqueued) -> u64 {
        match e {
            Enqueued::Stored { seq, .. } | Enqueued::Dropped { seq } => *seq,
        }
    }

    #[tokio::test]
    async fn sequences_rise_across_reopen_and_pending_survives() {
        let dir = tempfile::tempdir().unwrap();
        let mut seqs = Vec::new();
        {
            let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
            for _ in 0..5 {
                seqs.push(seq_of(&store.enqueue(presence("d1")).await.unwrap()));
            }
            assert_eq!(*store.durable().borrow(), 5);
        }
        let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
        assert_eq!(store.load_pending().unwrap().len(), 5);
        seqs.push(seq_of(&store.enqueue(presence("d1")).await.unwrap()));
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn concurrent_enqueues_share_flushes_and_all_become_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.enqueue(presence(&format!("d{}", i % 7))).await.unwrap()
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(seq_of(&t.await.unwrap()));
        }
        seqs.sort();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        assert_eq!(*store.durable().borrow(), 200);
        let pending = store.scan_pending(0, 200).unwrap();
        assert_eq!(pending.len(), 200);
        assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    #[tokio::test]
    async fn attempts_dead_letters_and_requeue() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
        let Enqueued::Stored { seq, id } = store.enqueue(action("d")).await.unwrap() else {
            panic!()
        };
        let attempt = Attempt {
            attempt: 1,
            started_at: Millis::now().rfc3339(),
            duration_ms: 3,
            status: Some(410),
            error: Some("HTTP 410".into()),
        };
        let mut status = Status::untried();
        status.attempts = 1;
        status.state = State::Dead;
        status.dead_reason = Some("gone".into());
        assert!(store.record_attempt(seq, &attempt, &status).unwrap());
        assert_eq!(store.list(State::Dead, 10).unwrap().len(), 1);
        assert!(store.load_pending().unwrap().is_empty());
        let detail = store.find(&id).unwrap().unwrap();
        assert_eq!(detail.attempts_log, vec![attempt]);
        assert_eq!(detail.summary.sequence, seq);
        let back = store.requeue(seq).unwrap().unwrap();
        assert_eq!(back.attempts, 1);
        assert_eq!(store.load_pending().unwrap().len(), 1);
        assert!(store.requeue(seq).unwrap().is_none(), "not dead any more");
        assert!(store.find("evt_nope").unwrap().is_none());
    }

    #[tokio::test]
    async fn over_budget_drops_oldest_presence_first_and_reports_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
        let mut all = Vec::new();
        for i in 0..40 {
            let e = if i % 4 == 0 {
                action("d")
            } else {
                presence("d")
            };
            all.push(seq_of(&store.enqueue(e).await.unwrap()));
        }
        let live = store.stats().unwrap().live_bytes;
        // Shrink the budget to about half: presence events must go, actions must stay.
        store.set_max_bytes(live / 2);
        store.enqueue(action("d")).await.unwrap();
        store.enqueue(presence("d")).await.unwrap();
        let pending = store.load_pending().unwrap();
        let kinds: Vec<_> = pending.iter().map(|p| p.kind.unwrap()).collect();
        let actions = kinds
            .iter()
            .filter(|k| **k == EventKind::DeviceActionCompleted)
            .count();
        assert_eq!(actions, 11, "every action kept");
        let gap = pending
            .iter()
            .find(|p| p.kind == Some(EventKind::EdgeDataGap))
            .expect("a data gap event");
        let body: serde_json::Value =
            serde_json::from_slice(&store.body(gap.seq).unwrap().unwrap()).unwrap();
        assert_eq!(body["data"]["reason"], "store_full");
        assert_eq!(
            body["data"]["from_sequence"], 2,
            "the oldest presence event went first"
        );
        let count = body["data"]["count"].as_u64().unwrap();
        let survivors: Vec<_> = pending.iter().map(|p| p.seq).collect();
        let missing = all.iter().filter(|s| !survivors.contains(s)).count() as u64;
        assert_eq!(count, missing);
        assert!(store.stats().unwrap().live_bytes <= live / 2 + 400);
    }

    #[tokio::test]
    async fn corrupt_store_is_quarantined_and_numbering_continues_above_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
            store.enqueue(presence("d")).await.unwrap();
        }
        // Overwrite every file of the store with garbage.
        for entry in walk(&dir.path().join(STORE_DIR)) {
            std::fs::write(&entry, vec![0xA5u8; 4096]).unwrap();
        }
        let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
        let aside = store.quarantined().expect("quarantined").to_owned();
        assert!(aside.exists());
        let seq = seq_of(&store.enqueue(presence("d")).await.unwrap());
        assert!(seq > 1, "sequence {seq} reused after quarantine");
    }

    #[tokio::test]
    async fn delivered_events_keep_their_log_for_24h_then_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), origin(), 1 << 30).unwrap();
        let Enqueued::Stored { seq, id } = store.enqueue(action("d")).await.unwrap() else {
            panic!()
        };
        let delivered_at = Millis::now();
        let status = Status {
            state: State::Delivered,
            attempts: 1,
            delivered_ms: Some(delivered_at.0),
            ..Status::untried()
        };
        let attempt = Attempt {
            attempt: 1,
            started_at: delivered_at.rfc3339(),
            duration_ms: 1,
            status: Some(200),
            error: None,
        };
        store.record_attempt(seq, &attempt, &status).unwrap();
        let almost = delivered_at.saturating_add(DELIVERED_RETENTION - Duration::from_secs(1));
        assert_eq!(store.gc_delivered(almost).unwrap(), 0);
        assert_eq!(store.find(&id).unwrap().unwrap().attempts_log.len(), 1);
        let after = delivered_at.saturating_add(DELIVERED_RETENTION + Duration::from_secs(1));
        assert_eq!(store.gc_delivered(after).unwrap(), 1);
        assert!(store.find(&id).unwrap().is_none());
        assert_eq!(
            store.stats().unwrap().live_bytes,
            0,
            "budget accounting returns to zero"
        );
    }

    #[test]
    fn an_intact_store_with_other_settings_is_refused_not_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new()
                .path(dir.path().join(STORE_DIR))
                .segment_size(SEGMENT_SIZE * 2)
                .open()
                .unwrap();
            db.insert(b"k", b"v").unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(dir.path(), origin(), 1 << 30)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("io buffer size"), "{err}");
        assert!(dir.path().join(STORE_DIR).exists(), "left in place");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
