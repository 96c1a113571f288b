//! The durable store: the only module that touches redb.
//!
//! One file, `<state_dir>/store/zenedge.redb`, with these tables:
//! - `events`: sequence → the event's body bytes, written once at enqueue and never changed.
//! - `pending`: sequence → event kind, for every event delivery still has to work on.
//! - `status`: sequence → [`Status`], once an event has been tried, dead-lettered or delivered.
//! - `attempts`: (sequence, attempt number) → [`Attempt`], the log of every attempt.
//! - `records`: (family, key) → a typed [`Record`] of a domain module (grants, bookings and
//!   their marks, presence, dedup keys, pending unlocks, the audit log, the clock floor) and the
//!   store's own counters. The store knows their families, never their types.
//! - `kept`: the bytes of undecodable records that a write would otherwise have replaced.
//!
//! Writes: every change is a [`Commit`] applied by the one writer thread ([`writer`]), which
//! groups waiting commits into one durable redb commit. [`Store::commit`] returns once its
//! commit is durable; delivery learns of new events through [`Store::durable`] and never sees
//! one a crash could still take back. Reads open a redb read transaction on the caller's
//! thread: async code reads through [`Store::read`], which runs them on tokio's blocking pool.
//!
//! Sequences are never reused: the high-water mark is written in the commit of each event, and
//! a floor reserved ahead in a small file beside the store (`sequence.floor`) keeps numbering
//! above anything handed out even when a corrupt store has to be replaced by a fresh one.

mod files;
mod query;
/// Records are defined below the store (`crate::record`), so that domain types implement
/// `Record` without importing the store.
pub use crate::record;
mod records;
pub mod writer;

pub(crate) use files::write_floor;
use files::{free_name, open_redb, private_dir, private_file, read_floor, sync_dir};
pub(crate) use records::{budgeted, family_end, read_family, read_record, BUDGETED};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::event::{IdGenerator, Millis, Origin};
use crate::telemetry::{events as t, InternalEvent};
use crate::wire::{body_info, NewEvent};
pub use record::{Record, Undecodable};
pub use writer::{Commit, Committed, Step, Tx};

pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
pub(crate) const PENDING: TableDefinition<u64, &str> = TableDefinition::new("pending");
pub(crate) const STATUS: TableDefinition<u64, &[u8]> = TableDefinition::new("status");
pub(crate) const ATTEMPTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("attempts");
pub(crate) const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
pub(crate) const KEPT: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kept");

/// redb's page cache. A Pi 3 has 1 GiB shared with everything else; the outbox is written
/// once and read once per event (soon after), so a large cache buys nothing (BENCHMARKS.md).
const CACHE_SIZE: usize = 4 << 20;
const FLOOR_FILE: &str = "sequence.floor";
const STORE_DIR: &str = "store";
const STORE_FILE: &str = "zenedge.redb";
/// How long a delivered event and its attempt log stay readable.
pub const DELIVERED_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How many undecodable records `zenedge status` lists by name (all are counted).
const UNDECODABLE_SHOWN: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Redb(#[from] redb::Error),
    #[error("store file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the store's writer has stopped")]
    WriterGone,
    #[error("stored record {what} is unreadable: {error}")]
    Record {
        what: String,
        error: record::DecodeError,
    },
    #[error("{what} is corrupt: {reason}")]
    Corrupt { what: String, reason: String },
    #[error(transparent)]
    Encode(#[from] record::EncodeError),
    #[error("a {family} record with key {key} exists already")]
    Exists { family: &'static str, key: String },
    #[error("store task: {0}")]
    Task(String),
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
redb_errors!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::DatabaseError
);

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

impl Record for Status {
    const FAMILY: &'static str = "status";
    const VERSION: u32 = 1;
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

impl Record for Attempt {
    const FAMILY: &'static str = "attempt";
    const VERSION: u32 = 1;
}

/// An event that delivery has to work on (defined with the events, below the store and the
/// delivery policy alike).
pub use crate::event::PendingEvent;

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

/// What the store did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Durable and queued for delivery.
    Stored { seq: u64, id: String },
    /// A presence event refused because the store is full of events that may not be dropped.
    /// Its sequence is reported in the next `edge.data_gap`.
    Dropped { seq: u64 },
}

/// Sequences dropped and not yet reported to ZenCore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Gap {
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

/// The store's own counters, kept as records are written (in the same commit), so that
/// `/metrics` and `zenedge status` never walk the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// The highest sequence handed out.
    hwm: u64,
    pending: u64,
    dead: u64,
    delivered_retained: u64,
    /// Keys plus values of `events`, `status`, `attempts` and the [`BUDGETED`] record families:
    /// what the byte budget counts.
    live_bytes: u64,
    delivered_total: u64,
    dead_total: u64,
    dropped_total: u64,
    pending_by_kind: BTreeMap<String, u64>,
    gap: Option<Gap>,
}

impl Record for Meta {
    const FAMILY: &'static str = "store.meta";
    const VERSION: u32 = 1;
}

impl Meta {
    const KEY: &'static str = "outbox";
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
    /// Events whose body is on its way to ZenCore now.
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub pending_by_kind: BTreeMap<String, u64>,
    pub oldest_pending_at: Option<String>,
    pub last_sequence: u64,
    pub live_bytes: u64,
    pub max_store_bytes: u64,
    pub disk_bytes: u64,
    pub full: bool,
    pub counters: Counters,
    pub quarantined: Option<String>,
    /// Records that could not be decoded (kept in place, never skipped silently).
    #[serde(default)]
    pub undecodable_records: u64,
    /// The first of them, by family and key.
    #[serde(default)]
    pub undecodable: Vec<Undecodable>,
    /// Undecodable records copied aside before a write replaced them.
    #[serde(default)]
    pub kept_records: u64,
}

/// Events being sent, and events a commit in progress is dropping for space.
#[derive(Default)]
pub(crate) struct Sending {
    /// Sequence → sends in progress.
    sending: HashMap<u64, u32>,
    doomed: HashSet<u64>,
}

impl Sending {
    /// One send of `seq` is over (its attempt is recorded).
    fn end(&mut self, seq: u64) {
        if let Some(n) = self.sending.get_mut(&seq) {
            *n -= 1;
            if *n == 0 {
                self.sending.remove(&seq);
            }
        }
    }
}

/// What the handles and the writer thread share.
pub(crate) struct Shared {
    db: redb::Database,
    /// Undecodable records seen, by (family, key), with why.
    notes: Mutex<BTreeMap<(String, String), String>>,
    /// The counters as of the last commit.
    meta: Mutex<Meta>,
    sending: Mutex<Sending>,
    full: AtomicBool,
    max_bytes: AtomicU64,
    /// Attempts submitted and not yet applied (see [`Store::record_attempt`]).
    attempts_unapplied: AtomicU64,
}

/// Counts and logs (once) a record that cannot be decoded.
pub(crate) fn note_undecodable(
    shared: &Shared,
    family: &str,
    key: &str,
    error: &dyn std::fmt::Display,
) {
    let error = error.to_string();
    let mut notes = shared.notes.lock().unwrap_or_else(|p| p.into_inner());
    let fresh = notes
        .insert((family.to_owned(), key.to_owned()), error.clone())
        .is_none();
    if fresh {
        t::RecordUndecodable {
            family,
            key,
            error: &error,
        }
        .emit();
    }
}

struct Inner {
    shared: Arc<Shared>,
    jobs: Mutex<Option<std::sync::mpsc::Sender<writer::Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    durable: watch::Receiver<u64>,
    applied: watch::Receiver<u64>,
    file: PathBuf,
    quarantined: Option<PathBuf>,
}

impl Drop for Inner {
    /// Stops the writer (it finishes what is queued) and waits for it, so that the store's
    /// file is released when the last handle goes: a reopen in the same process must not find
    /// it still open.
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

enum OpenFailure {
    Corrupt(String),
    Other(StoreError),
}

impl Store {
    /// Opens (or creates) the store under `state_dir`. A store that redb cannot open because
    /// it is corrupt is renamed to `store.corrupt-<unix time>` and a fresh one is created, so
    /// the daemon comes up instead of crash-looping; the caller learns of it through
    /// [`Store::quarantined`] and reports it. A sled store left by an earlier build is moved
    /// aside as `store.sled-old` (no release with it was ever installed, so nothing migrates).
    pub fn open(state_dir: &Path, origin: Origin, max_bytes: u64) -> Result<Store, StoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::File { path, source }
        };
        std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
        private_dir(state_dir)?;
        let dir = state_dir.join(STORE_DIR);
        if dir.join("conf").is_file() && dir.join("db").is_file() {
            let aside = free_name(state_dir, &format!("{STORE_DIR}.sled-old"));
            t::SledStoreMovedAside {
                path: &dir.display(),
                moved_to: &aside.display(),
            }
            .emit();
            std::fs::rename(&dir, &aside).map_err(io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        private_dir(&dir)?;
        sync_dir(state_dir)?;
        let file = dir.join(STORE_FILE);
        private_file(&file)?;
        let (db, quarantined) = match open_redb(&file) {
            Ok(db) => (db, None),
            Err(OpenFailure::Corrupt(reason)) => {
                let aside = free_name(
                    state_dir,
                    &format!("{STORE_DIR}.corrupt-{}", Millis::now().unix_seconds()),
                );
                t::StoreCorrupt {
                    path: &dir.display(),
                    moved_to: &aside.display(),
                    error: &reason,
                }
                .emit();
                std::fs::rename(&dir, &aside).map_err(io(&dir))?;
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                private_dir(&dir)?;
                private_file(&file)?;
                sync_dir(state_dir)?;
                let db = open_redb(&file).map_err(|e| match e {
                    OpenFailure::Corrupt(reason) => StoreError::Corrupt {
                        what: "the fresh store".into(),
                        reason,
                    },
                    OpenFailure::Other(e) => e,
                })?;
                (db, Some(aside))
            }
            Err(OpenFailure::Other(e)) => return Err(e),
        };
        sync_dir(&dir)?;
        let shared = Arc::new(Shared {
            db,
            notes: Mutex::default(),
            meta: Mutex::default(),
            sending: Mutex::default(),
            full: AtomicBool::new(false),
            max_bytes: AtomicU64::new(max_bytes),
            attempts_unapplied: AtomicU64::new(0),
        });
        let mut meta = {
            let txn = shared.db.begin_read()?;
            let stored = txn
                .open_table(RECORDS)?
                .get((Meta::FAMILY, Meta::KEY))?
                .map(|v| record::decode::<Meta>(v.value()));
            match stored {
                Some(Ok(m)) => m,
                None => writer::recount(&txn)?,
                Some(Err(e)) => {
                    note_undecodable(&shared, Meta::FAMILY, Meta::KEY, &e);
                    writer::recount(&txn)?
                }
            }
        };
        let floor_path = state_dir.join(FLOOR_FILE);
        let floor = read_floor(&floor_path)?;
        // A fresh store after quarantine starts above everything the old one may have used.
        if quarantined.is_some() {
            meta.hwm = meta.hwm.max(floor);
        }
        *shared.meta.lock().unwrap_or_else(|p| p.into_inner()) = meta.clone();
        let (durable_tx, durable) = watch::channel(meta.hwm);
        let (applied_tx, applied) = watch::channel(0u64);
        let (jobs, rx) = std::sync::mpsc::channel();
        let w = writer::Writer {
            shared: shared.clone(),
            reserved: floor.max(meta.hwm),
            meta,
            origin,
            floor_path,
            ids: IdGenerator::default(),
            durable: durable_tx,
            applied: applied_tx,
            reclaim_failed_at: 0,
        };
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|source| StoreError::File {
                path: file.clone(),
                source,
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                jobs: Mutex::new(Some(jobs)),
                thread: Mutex::new(Some(thread)),
                durable,
                applied,
                file,
                quarantined,
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    fn meta(&self) -> Meta {
        self.shared()
            .meta
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn send(&self, commit: Commit, reply: writer::Reply) -> Result<(), StoreError> {
        let jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.as_ref()
            .ok_or(StoreError::WriterGone)?
            .send(writer::Job { commit, reply })
            .map_err(|_| StoreError::WriterGone)
    }

    /// Applies a commit; returns once it is durable (or, for [`Commit::lazy`], applied).
    pub async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(commit, writer::Reply::Async(tx))?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// [`Store::commit`] for threads that may block (never an async worker).
    pub fn commit_blocking(&self, commit: Commit) -> Result<Committed, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(commit, writer::Reply::Sync(tx))?;
        rx.recv().map_err(|_| StoreError::WriterGone)?
    }

    /// Queues a commit without waiting for it; a failure is logged.
    pub fn submit(&self, commit: Commit) {
        if let Err(e) = self.send(commit, writer::Reply::Detached) {
            t::StoreFailed {
                context: "queue a commit",
                error: &e,
            }
            .emit();
        }
    }

    /// Runs store reads on tokio's blocking pool, off the async workers.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Stores an event durably and returns its sequence and id.
    pub async fn enqueue(&self, event: NewEvent) -> Result<Enqueued, StoreError> {
        let mut c = Commit::new();
        c.event(event);
        self.commit(c)
            .await?
            .events
            .pop()
            .ok_or(StoreError::WriterGone)
    }

    /// Stores several events in one commit.
    pub async fn enqueue_many(&self, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, StoreError> {
        let mut c = Commit::new();
        for e in events {
            c.event(e);
        }
        Ok(self.commit(c).await?.events)
    }

    /// Makes everything committed so far durable.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.commit(Commit::new()).await.map(|_| ())
    }

    /// [`Store::sync`] for threads that may block.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.commit_blocking(Commit::new()).map(|_| ())
    }

    /// Logs one attempt and the event's new status, and ends its send ([`Store::begin_send`]).
    /// Lazy: a power cut may take it back, which re-sends the event.
    /// Not waited for: [`Store::attempts_unapplied`] counts it until the writer has applied it,
    /// and [`Store::attempts_applied`] changes then.
    pub fn record_attempt(&self, seq: u64, attempt: Attempt, status: Status) {
        let mut c = Commit::lazy();
        c.attempt(seq, attempt, status);
        self.shared()
            .attempts_unapplied
            .fetch_add(1, Ordering::AcqRel);
        self.submit(c);
    }

    /// Attempts handed to [`Store::record_attempt`] that the writer has not applied yet.
    pub fn attempts_unapplied(&self) -> u64 {
        self.shared().attempts_unapplied.load(Ordering::Acquire)
    }

    /// Changes whenever the writer has applied attempts.
    pub fn attempts_applied(&self) -> watch::Receiver<u64> {
        self.inner.applied.clone()
    }

    /// Moves an event to the dead letters without an attempt (e.g. older than `max_age`).
    pub fn set_dead(&self, seq: u64, reason: &str) {
        let mut c = Commit::lazy();
        c.set_dead(seq, reason);
        self.submit(c);
    }

    /// Puts a dead letter back in the queue; it keeps its id, bytes and attempt count.
    /// Returns the pending event, or `None` if `seq` is not a dead letter. Blocks.
    pub fn requeue(&self, seq: u64) -> Result<Option<PendingEvent>, StoreError> {
        let mut c = Commit::new();
        c.requeue(seq);
        Ok(self.commit_blocking(c)?.requeued.pop().flatten())
    }

    /// A commit step that deletes delivered events whose retention has passed.
    pub fn gc_delivered(commit: &mut Commit, now: Millis) {
        commit.gc_delivered(now.0.saturating_sub(DELIVERED_RETENTION.as_millis() as u64));
    }

    /// True while the store is over its byte budget with nothing left that may be dropped.
    pub fn is_full(&self) -> bool {
        self.shared().full.load(Ordering::Relaxed)
    }

    /// Where a corrupt store was moved to at open, if it was.
    pub fn quarantined(&self) -> Option<&Path> {
        self.inner.quarantined.as_deref()
    }

    /// The highest sequence handed out (after a quarantine: at least the floor).
    pub fn last_sequence(&self) -> u64 {
        self.meta().hwm
    }

    pub fn set_max_bytes(&self, max_bytes: u64) {
        self.shared().max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// A watch of the highest sequence known to be durable. Delivery scans up to it.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.inner.durable.clone()
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        Ok(self.shared().db.begin_read()?)
    }
}

#[cfg(test)]
mod tests;
