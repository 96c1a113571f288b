//! The store's one writer: a thread that applies [`Commit`]s, several at a time.
//!
//! redb allows one write transaction at a time, and a durable commit costs an fsync. So every
//! change to the store is a `Commit` sent to this thread, which takes every commit waiting when
//! it wakes, applies them all in one redb transaction and makes that transaction durable once
//! (group commit): a burst of N producers costs one fsync, not N. A commit whose writes fail is
//! never half-applied: the group's transaction is dropped and its commits are applied again one
//! by one, so a bad commit fails alone.
//!
//! Commits that only record delivery progress (attempts, dead letters) are *lazy*: they are
//! applied at once but made durable by the next durable commit, or within [`LAZY_SYNC`]. A
//! power cut can take such a record back, which re-sends an event (at least once), never loses
//! one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redb::{Durability, ReadableTable, WriteTransaction};
use tokio::sync::{oneshot, watch};

use super::record::{self, Record};
use super::{
    note_undecodable, Attempt, Enqueued, Gap, Meta, PendingEvent, Shared, State, Status,
    StoreError, ATTEMPTS, EVENTS, KEPT, PENDING, RECORDS, STATUS,
};
use crate::event::{IdGenerator, Millis, Origin};
use crate::telemetry::{events as t, InternalEvent};
use crate::wire::{body_info, render_body, Data, DataGap, GapReason, NewEvent};

mod budget;
mod commit;

use commit::{put_record, Op};
pub use commit::{Commit, Committed, Decoded, Step, Tx};

/// The longest a lazy commit waits for a durable one.
pub const LAZY_SYNC: Duration = Duration::from_millis(500);
/// The most commits applied in one transaction.
const MAX_GROUP: usize = 4096;
/// How far ahead of use the sequence floor file is written.
const SEQUENCE_RESERVATION: u64 = 100_000;

/// How a commit's caller hears of it.
pub(super) enum Reply {
    Async(oneshot::Sender<Result<Committed, StoreError>>),
    Sync(std::sync::mpsc::SyncSender<Result<Committed, StoreError>>),
    /// Nobody waits; a failure is logged.
    Detached,
}

pub(super) struct Job {
    pub commit: Commit,
    pub reply: Reply,
}

impl Reply {
    fn send(self, result: Result<Committed, StoreError>) {
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
            Reply::Sync(tx) => {
                let _ = tx.send(result);
            }
            Reply::Detached => {
                if let Err(e) = result {
                    t::StoreFailed {
                        context: "background commit",
                        error: &e,
                    }
                    .emit();
                }
            }
        }
    }
}

pub(super) struct Writer {
    pub shared: Arc<Shared>,
    pub meta: Meta,
    pub origin: Origin,
    pub floor_path: PathBuf,
    /// Sequences up to this are covered by the floor file.
    pub reserved: u64,
    pub ids: IdGenerator,
    pub durable: watch::Sender<u64>,
    /// Bumped after a group that held attempts (delivery waits on it to call itself idle).
    pub applied: watch::Sender<u64>,
    /// When a reclamation last found nothing to drop (ms): while full, the next scan waits a
    /// second instead of running on every insert.
    pub reclaim_failed_at: u64,
}

impl Writer {
    pub fn run(mut self, rx: Receiver<Job>) {
        let mut unsynced_since: Option<Instant> = None;
        loop {
            let first = match unsynced_since {
                Some(since) => {
                    let left = LAZY_SYNC.saturating_sub(since.elapsed());
                    match rx.recv_timeout(left) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => {
                            if self.sync() {
                                unsynced_since = None;
                            }
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let overdue = unsynced_since.is_some_and(|s| s.elapsed() >= LAZY_SYNC);
            let durable = overdue || jobs.iter().any(|j| j.commit.durable);
            let results = self.apply(&jobs, durable);
            let all_ok = results.iter().all(|r| r.is_ok());
            if durable && all_ok {
                unsynced_since = None;
            } else if unsynced_since.is_none() {
                unsynced_since = Some(Instant::now());
            }
            let attempts: u64 = jobs
                .iter()
                .map(|j| {
                    j.commit
                        .ops
                        .iter()
                        .filter(|o| matches!(o, Op::Attempt { .. }))
                        .count() as u64
                })
                .sum();
            for (job, result) in jobs.into_iter().zip(results) {
                job.reply.send(result);
            }
            if attempts > 0 {
                // Applied or failed (and logged): either way no longer waiting.
                let _ = self.shared.attempts_unapplied.fetch_update(
                    std::sync::atomic::Ordering::AcqRel,
                    std::sync::atomic::Ordering::Acquire,
                    |n| Some(n.saturating_sub(attempts)),
                );
                self.applied.send_modify(|n| *n += attempts);
            }
        }
        if unsynced_since.is_some() {
            self.sync();
        }
    }

    /// One empty durable commit: makes every lazy commit before it durable.
    fn sync(&mut self) -> bool {
        match self.group(&[], true) {
            Ok(_) => true,
            Err(e) => {
                t::StoreFailed {
                    context: "durable commit",
                    error: &e,
                }
                .emit();
                false
            }
        }
    }

    fn apply(&mut self, jobs: &[Job], durable: bool) -> Vec<Result<Committed, StoreError>> {
        let commits: Vec<&Commit> = jobs.iter().map(|j| &j.commit).collect();
        match self.group(&commits, durable) {
            Ok(results) => results,
            Err(e) if commits.len() <= 1 => vec![Err(e)],
            Err(e) => {
                t::GroupCommitFailed { error: &e }.emit();
                commits
                    .iter()
                    .map(|c| {
                        self.group(std::slice::from_ref(c), durable)
                            .and_then(|mut v| v.pop().unwrap_or(Err(StoreError::WriterGone)))
                    })
                    .collect()
            }
        }
    }

    /// Applies commits in one transaction. The outer error fails them all (and changes
    /// nothing); an inner error is one commit refused without writing.
    fn group(
        &mut self,
        commits: &[&Commit],
        durable: bool,
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        let saved = (self.meta.clone(), self.reserved);
        let result = self.group_in_txn(commits, durable);
        let doomed_seen = {
            let mut s = self
                .shared
                .sending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut s.doomed)
        };
        match result {
            Ok(results) => {
                *self.shared.meta.lock().unwrap_or_else(|p| p.into_inner()) = self.meta.clone();
                if durable {
                    let hwm = self.meta.hwm;
                    self.durable.send_if_modified(|v| {
                        let changed = hwm > *v;
                        *v = (*v).max(hwm);
                        changed
                    });
                }
                Ok(results)
            }
            Err(e) => {
                // Nothing was written: the events marked doomed are still there.
                drop(doomed_seen);
                (self.meta, self.reserved) = saved;
                Err(e)
            }
        }
    }

    fn group_in_txn(
        &mut self,
        commits: &[&Commit],
        durable: bool,
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        let mut txn = self.shared.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        let before = self.meta.clone();
        let mut out = Vec::with_capacity(commits.len());
        for c in commits {
            out.push(self.commit(&txn, c)?);
        }
        if self.meta != before {
            let bytes = record::encode(&self.meta)?;
            txn.open_table(RECORDS)?
                .insert((Meta::FAMILY, Meta::KEY), bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(out)
    }

    fn commit(
        &mut self,
        txn: &WriteTransaction,
        c: &Commit,
    ) -> Result<Result<Committed, StoreError>, StoreError> {
        // Guards first, so a refused commit writes nothing.
        {
            let records = txn.open_table(RECORDS)?;
            for op in &c.ops {
                if let Op::InsertNew { family, key, .. } = op {
                    if records.get((*family, key.as_str()))?.is_some() {
                        return Ok(Err(StoreError::Exists {
                            family,
                            key: key.clone(),
                        }));
                    }
                }
            }
        }
        let mut done = Committed::default();
        for op in &c.ops {
            match op {
                Op::Event(e) => done.events.push(self.event(txn, e)?),
                Op::Put {
                    family,
                    key,
                    bytes,
                    check,
                } => put_record(
                    txn,
                    &self.shared,
                    &mut self.meta.live_bytes,
                    family,
                    key,
                    Some(bytes),
                    *check,
                )?,
                Op::Remove { family, key, check } => put_record(
                    txn,
                    &self.shared,
                    &mut self.meta.live_bytes,
                    family,
                    key,
                    None,
                    *check,
                )?,
                Op::InsertNew { family, key, bytes } => {
                    txn.open_table(RECORDS)?
                        .insert((*family, key.as_str()), bytes.as_slice())?;
                }
                Op::Attempt {
                    seq,
                    attempt,
                    status,
                } => self.attempt(txn, *seq, attempt, status)?,
                Op::SetDead { seq, reason } => self.set_dead(txn, *seq, reason)?,
                Op::Requeue { seq } => done.requeued.push(self.requeue(txn, *seq)?),
                Op::GcDelivered { cutoff_ms } => {
                    done.removed += self.gc_delivered(txn, *cutoff_ms)?
                }
                Op::Step(f) => f(&mut Tx {
                    txn,
                    shared: &self.shared,
                    live_bytes: &mut self.meta.live_bytes,
                })?,
            }
        }
        Ok(Ok(done))
    }

    fn over_budget(&self) -> bool {
        self.meta.live_bytes > self.shared.max_bytes.load(Ordering::Relaxed)
    }

    fn event(&mut self, txn: &WriteTransaction, event: &NewEvent) -> Result<Enqueued, StoreError> {
        self.report_gap_if_room(txn)?;
        if self.over_budget() {
            self.reclaim(txn)?;
            if event.kind().is_presence() && self.over_budget() {
                let seq = self.allocate()?;
                self.note_gap(Gap {
                    from: seq,
                    to: seq,
                    count: 1,
                });
                t::PresenceEventDropped {
                    sequence: seq,
                    event: event.kind().as_str(),
                }
                .emit();
                return Ok(Enqueued::Dropped { seq });
            }
        }
        self.insert_event(txn, event)
    }

    fn allocate(&mut self) -> Result<u64, StoreError> {
        let seq = self.meta.hwm + 1;
        if seq > self.reserved {
            let upto = seq + SEQUENCE_RESERVATION;
            super::write_floor(&self.floor_path, upto)?;
            self.reserved = upto;
        }
        self.meta.hwm = seq;
        Ok(seq)
    }

    fn insert_event(
        &mut self,
        txn: &WriteTransaction,
        event: &NewEvent,
    ) -> Result<Enqueued, StoreError> {
        let seq = self.allocate()?;
        let id = match &event.id {
            Some(id) => id.clone(),
            None => self.ids.next(SystemTime::now()),
        };
        let body = render_body(&self.origin, event, &id, seq);
        txn.open_table(EVENTS)?.insert(seq, body.as_slice())?;
        txn.open_table(PENDING)?
            .insert(seq, event.kind().as_str())?;
        self.meta.live_bytes += 8 + body.len() as u64;
        self.count_pending(event.kind().as_str(), 1);
        Ok(Enqueued::Stored { seq, id })
    }

    fn count_pending(&mut self, kind: &str, up: i64) {
        let m = &mut self.meta;
        if up > 0 {
            m.pending += 1;
            *m.pending_by_kind.entry(kind.to_owned()).or_default() += 1;
        } else {
            m.pending = m.pending.saturating_sub(1);
            if let Some(n) = m.pending_by_kind.get_mut(kind) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.pending_by_kind.remove(kind);
                }
            }
        }
    }

    /// Deletes an event with its status and attempt log, keeping the counters right.
    fn remove_event(&mut self, txn: &WriteTransaction, seq: u64) -> Result<(), StoreError> {
        let mut freed = 0u64;
        if let Some(v) = txn.open_table(EVENTS)?.remove(seq)? {
            freed += 8 + v.value().len() as u64;
        }
        let old_state = match txn.open_table(STATUS)?.remove(seq)? {
            Some(v) => {
                freed += 8 + v.value().len() as u64;
                record::decode::<Status>(v.value()).ok().map(|s| s.state)
            }
            None => None,
        };
        {
            let mut attempts = txn.open_table(ATTEMPTS)?;
            let keys: Vec<(u64, u32)> = attempts
                .range((seq, 0)..=(seq, u32::MAX))?
                .filter_map(|i| i.ok().map(|(k, v)| (k.value(), v.value().len())))
                .map(|(k, len)| {
                    freed += 12 + len as u64;
                    k
                })
                .collect();
            for k in keys {
                attempts.remove(k)?;
            }
        }
        let pending_kind = txn
            .open_table(PENDING)?
            .remove(seq)?
            .map(|v| v.value().to_owned());
        match (pending_kind, old_state) {
            (Some(kind), _) => self.count_pending(&kind, -1),
            (None, Some(State::Dead)) => self.meta.dead = self.meta.dead.saturating_sub(1),
            (None, Some(State::Delivered)) => {
                self.meta.delivered_retained = self.meta.delivered_retained.saturating_sub(1)
            }
            (None, _) => {}
        }
        self.meta.live_bytes = self.meta.live_bytes.saturating_sub(freed);
        Ok(())
    }

    /// The status stored for `seq` (untried when none, or when it cannot be read: an
    /// unreadable status re-sends its event rather than lose it).
    fn old_status(&self, txn: &WriteTransaction, seq: u64) -> Result<(Status, u64), StoreError> {
        let table = txn.open_table(STATUS)?;
        let Some(v) = table.get(seq)? else {
            return Ok((Status::untried(), 0));
        };
        let len = v.value().len() as u64;
        match record::decode::<Status>(v.value()) {
            Ok(s) => Ok((s, len)),
            Err(e) => {
                note_undecodable(&self.shared, "status", &seq.to_string(), &e);
                Ok((Status::untried(), len))
            }
        }
    }

    fn put_status(
        &mut self,
        txn: &WriteTransaction,
        seq: u64,
        old: (Status, u64),
        new: &Status,
    ) -> Result<(), StoreError> {
        let (old, old_len) = old;
        let bytes = record::encode(new)?;
        txn.open_table(STATUS)?.insert(seq, bytes.as_slice())?;
        let new_len = bytes.len() as u64;
        self.meta.live_bytes = if old_len > 0 {
            (self.meta.live_bytes + new_len).saturating_sub(old_len)
        } else {
            self.meta.live_bytes + 8 + new_len
        };
        let was_pending = txn.open_table(PENDING)?.get(seq)?.is_some();
        let from = if was_pending {
            State::Pending
        } else {
            old.state
        };
        if from == new.state {
            return Ok(());
        }
        match from {
            State::Pending => {
                if let Some(kind) = txn.open_table(PENDING)?.remove(seq)? {
                    let kind = kind.value().to_owned();
                    self.count_pending(&kind, -1);
                }
            }
            State::Dead => self.meta.dead = self.meta.dead.saturating_sub(1),
            State::Delivered => {
                self.meta.delivered_retained = self.meta.delivered_retained.saturating_sub(1)
            }
        }
        match new.state {
            State::Pending => {
                let kind = txn
                    .open_table(EVENTS)?
                    .get(seq)?
                    .and_then(|b| body_info(b.value()))
                    .and_then(|i| i.kind)
                    .map_or("unknown", |k| k.as_str());
                txn.open_table(PENDING)?.insert(seq, kind)?;
                self.count_pending(kind, 1);
            }
            State::Dead => {
                self.meta.dead += 1;
                self.meta.dead_total += 1;
            }
            State::Delivered => {
                self.meta.delivered_retained += 1;
                self.meta.delivered_total += 1;
            }
        }
        Ok(())
    }

    fn event_exists(txn: &WriteTransaction, seq: u64) -> Result<bool, StoreError> {
        Ok(txn.open_table(EVENTS)?.get(seq)?.is_some())
    }

    fn attempt(
        &mut self,
        txn: &WriteTransaction,
        seq: u64,
        attempt: &Attempt,
        status: &Status,
    ) -> Result<(), StoreError> {
        // The attempt is over: from the next commit on, the event may be dropped for space.
        self.shared
            .sending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .end(seq);
        if !Self::event_exists(txn, seq)? {
            return Ok(());
        }
        let bytes = record::encode(attempt)?;
        let old_attempt = txn
            .open_table(ATTEMPTS)?
            .insert((seq, attempt.attempt), bytes.as_slice())?
            .map(|v| v.value().len() as u64);
        self.meta.live_bytes = match old_attempt {
            Some(old) => (self.meta.live_bytes + bytes.len() as u64).saturating_sub(old),
            None => self.meta.live_bytes + 12 + bytes.len() as u64,
        };
        let old = self.old_status(txn, seq)?;
        let mut new = status.clone();
        new.attempts = new.attempts.max(old.0.attempts);
        self.put_status(txn, seq, old, &new)?;
        Ok(())
    }

    fn set_dead(
        &mut self,
        txn: &WriteTransaction,
        seq: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        if !Self::event_exists(txn, seq)? {
            return Ok(());
        }
        let old = self.old_status(txn, seq)?;
        let mut new = old.0.clone();
        new.state = State::Dead;
        new.dead_reason = Some(reason.to_owned());
        new.next_attempt_ms = None;
        self.put_status(txn, seq, old, &new)
    }

    fn requeue(
        &mut self,
        txn: &WriteTransaction,
        seq: u64,
    ) -> Result<Option<PendingEvent>, StoreError> {
        let body = match txn.open_table(EVENTS)?.get(seq)? {
            Some(b) => b.value().to_vec(),
            None => return Ok(None),
        };
        let old = self.old_status(txn, seq)?;
        if old.0.state != State::Dead || old.1 == 0 {
            return Ok(None);
        }
        let mut new = old.0.clone();
        new.state = State::Pending;
        new.dead_reason = None;
        new.next_attempt_ms = None;
        let attempts = new.attempts;
        self.put_status(txn, seq, old, &new)?;
        let info = body_info(&body);
        Ok(Some(PendingEvent {
            seq,
            lane: info.as_ref().and_then(|i| i.lane.clone()),
            kind: info.as_ref().and_then(|i| i.kind),
            at: info.map(|i| i.at).unwrap_or_default(),
            attempts,
            next_attempt: None,
        }))
    }

    fn gc_delivered(
        &mut self,
        txn: &WriteTransaction,
        cutoff_ms: u64,
    ) -> Result<usize, StoreError> {
        let doomed: Vec<u64> = {
            let status = txn.open_table(STATUS)?;
            let mut out = Vec::new();
            for item in status.iter()? {
                let (k, v) = item?;
                if let Ok(s) = record::decode::<Status>(v.value()) {
                    if s.state == State::Delivered && s.delivered_ms.unwrap_or(0) < cutoff_ms {
                        out.push(k.value());
                    }
                }
            }
            out
        };
        for seq in &doomed {
            self.remove_event(txn, *seq)?;
        }
        Ok(doomed.len())
    }
}

/// The counters rebuilt from the tables, for a store whose counter record is missing or
/// unreadable.
pub(super) fn recount(txn: &redb::ReadTransaction) -> Result<Meta, StoreError> {
    let mut m = Meta::default();
    let events = txn.open_table(EVENTS)?;
    for item in events.iter()? {
        let (k, v) = item?;
        m.live_bytes += 8 + v.value().len() as u64;
        m.hwm = m.hwm.max(k.value());
    }
    let pending = txn.open_table(PENDING)?;
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for item in pending.iter()? {
        let (_, v) = item?;
        m.pending += 1;
        *by_kind.entry(v.value().to_owned()).or_default() += 1;
    }
    m.pending_by_kind = by_kind;
    let status = txn.open_table(STATUS)?;
    for item in status.iter()? {
        let (k, v) = item?;
        m.live_bytes += 8 + v.value().len() as u64;
        if pending.get(k.value())?.is_some() {
            continue;
        }
        match record::decode::<Status>(v.value()).map(|s| s.state) {
            Ok(State::Dead) => m.dead += 1,
            Ok(State::Delivered) => m.delivered_retained += 1,
            _ => {}
        }
    }
    let attempts = txn.open_table(ATTEMPTS)?;
    for item in attempts.iter()? {
        let (_, v) = item?;
        m.live_bytes += 12 + v.value().len() as u64;
    }
    let records = txn.open_table(RECORDS)?;
    for family in super::BUDGETED {
        let end = super::family_end(family);
        for item in records.range((family, "")..(end.as_str(), ""))? {
            let (k, v) = item?;
            m.live_bytes += (k.value().1.len() + v.value().len()) as u64;
        }
    }
    Ok(m)
}
