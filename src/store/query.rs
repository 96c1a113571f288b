//! Reading the outbox: pending events for delivery, listings and details for the admin API,
//! and the store's statistics.

use super::*;

impl Store {
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
    /// to the end, else the sequence `f` stopped at. An event whose body cannot be read is
    /// moved to the dead letters (`unreadable`), where an operator sees it.
    pub fn visit_pending(
        &self,
        after: u64,
        upto: u64,
        mut f: impl FnMut(PendingEvent) -> bool,
    ) -> Result<u64, StoreError> {
        if after >= upto {
            return Ok(after);
        }
        let txn = self.begin_read()?;
        let pending = txn.open_table(PENDING)?;
        let events = txn.open_table(EVENTS)?;
        let status = txn.open_table(STATUS)?;
        for item in pending.range(after + 1..=upto)? {
            let (k, _) = item?;
            let seq = k.value();
            let st = match status.get(seq)? {
                Some(v) => match record::decode::<Status>(v.value()) {
                    Ok(s) => s,
                    Err(e) => {
                        note_undecodable(self.shared(), "status", &seq.to_string(), &e);
                        Status::untried()
                    }
                },
                None => Status::untried(),
            };
            let info = events.get(seq)?.and_then(|b| body_info(b.value()));
            let Some(info) = info else {
                t::EventUnreadable { sequence: seq }.emit();
                self.set_dead(seq, "unreadable");
                continue;
            };
            let more = f(PendingEvent {
                seq,
                lane: info.lane,
                kind: info.kind,
                at: info.at,
                attempts: st.attempts,
                next_attempt: st.next_attempt_ms.map(Millis),
            });
            if !more {
                return Ok(seq);
            }
        }
        Ok(upto)
    }

    /// The body of an event about to be sent, marked as sending until its attempt is recorded
    /// ([`Store::record_attempt`]), so it cannot be dropped for space meanwhile. `None` when it
    /// was dropped already.
    pub fn begin_send(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut s = self
            .shared()
            .sending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if s.doomed.contains(&seq) {
            return Ok(None);
        }
        let body = self.body(seq)?;
        if body.is_some() {
            *s.sending.entry(seq).or_default() += 1;
        }
        Ok(body)
    }

    pub fn body(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        Ok(events.get(seq)?.map(|v| v.value().to_vec()))
    }

    pub fn status(&self, seq: u64) -> Result<Option<Status>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(STATUS)?;
        let Some(v) = table.get(seq)? else {
            return Ok(None);
        };
        record::decode::<Status>(v.value())
            .map(Some)
            .map_err(|error| StoreError::Record {
                what: format!("status of sequence {seq}"),
                error,
            })
    }

    /// Every dead letter's sequence, oldest first.
    pub fn dead_sequences(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .list(State::Dead, usize::MAX)?
            .into_iter()
            .map(|s| s.sequence)
            .collect())
    }

    fn summary(seq: u64, body: &[u8], status: Option<Status>) -> EventSummary {
        let status = status.unwrap_or_else(Status::untried);
        let info = body_info(body);
        EventSummary {
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
        }
    }

    /// Events in `state`, oldest first, at most `limit`.
    pub fn list(&self, state: State, limit: usize) -> Result<Vec<EventSummary>, StoreError> {
        let txn = self.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let status = txn.open_table(STATUS)?;
        let decode = |seq: u64, v: &[u8]| {
            record::decode::<Status>(v)
                .map_err(|e| note_undecodable(self.shared(), "status", &seq.to_string(), &e))
                .ok()
        };
        let mut out = Vec::new();
        if state == State::Pending {
            let pending = txn.open_table(PENDING)?;
            for item in pending.iter()? {
                if out.len() >= limit {
                    break;
                }
                let (k, _) = item?;
                let seq = k.value();
                let Some(body) = events.get(seq)? else {
                    continue;
                };
                let st = status.get(seq)?.and_then(|v| decode(seq, v.value()));
                out.push(Self::summary(seq, body.value(), st));
            }
            return Ok(out);
        }
        for item in status.iter()? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let seq = k.value();
            let Some(st) = decode(seq, v.value()) else {
                continue;
            };
            if st.state != state {
                continue;
            }
            let Some(body) = events.get(seq)? else {
                continue;
            };
            out.push(Self::summary(seq, body.value(), Some(st)));
        }
        Ok(out)
    }

    /// Finds an event by id (`evt_…`) or sequence number.
    pub fn find(&self, key: &str) -> Result<Option<EventDetail>, StoreError> {
        let Some(seq) = self.seq_of(key)? else {
            return Ok(None);
        };
        let Some(body) = self.body(seq)? else {
            return Ok(None);
        };
        let status = self.status(seq)?;
        let summary = Self::summary(seq, &body, status);
        let txn = self.begin_read()?;
        let attempts = txn.open_table(ATTEMPTS)?;
        let mut attempts_log = Vec::new();
        for item in attempts.range((seq, 0)..=(seq, u32::MAX))? {
            let (_, v) = item?;
            attempts_log.push(record::decode::<Attempt>(v.value()).map_err(|error| {
                StoreError::Record {
                    what: format!("attempt of sequence {seq}"),
                    error,
                }
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

    /// Resolves an event id or a sequence number to a stored event's sequence.
    pub fn seq_of(&self, key: &str) -> Result<Option<u64>, StoreError> {
        if let Ok(seq) = key.parse::<u64>() {
            return Ok(self.body(seq)?.map(|_| seq));
        }
        // Bodies start with `{"id":"<id>"`, so a prefix test finds the event without parsing.
        let prefix = format!("{{\"id\":\"{key}\"");
        let txn = self.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        for item in events.iter()? {
            let (k, body) = item?;
            if body.value().starts_with(prefix.as_bytes()) {
                return Ok(Some(k.value()));
            }
        }
        Ok(None)
    }

    pub fn counters(&self) -> Counters {
        let m = self.meta();
        Counters {
            delivered: m.delivered_total,
            dead: m.dead_total,
            dropped: m.dropped_total,
        }
    }

    /// The store's numbers. Costs O(log n): the counters are kept as records are written.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let m = self.meta();
        let txn = self.begin_read()?;
        let first = txn.open_table(PENDING)?.first()?.map(|(k, _)| k.value());
        let oldest_pending_at = match first {
            Some(seq) => txn
                .open_table(EVENTS)?
                .get(seq)?
                .and_then(|b| body_info(b.value()))
                .map(|i| i.at.rfc3339()),
            None => None,
        };
        let kept_records = txn.open_table(KEPT)?.len()?;
        let in_flight = self
            .shared()
            .sending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sending
            .len() as u64;
        let undecodable = self.undecodable();
        Ok(StoreStats {
            pending: m.pending,
            dead: m.dead,
            delivered_retained: m.delivered_retained,
            in_flight,
            pending_by_kind: m.pending_by_kind.clone(),
            oldest_pending_at,
            last_sequence: m.hwm,
            live_bytes: m.live_bytes,
            max_store_bytes: self.shared().max_bytes.load(Ordering::Relaxed),
            disk_bytes: std::fs::metadata(&self.inner.file)
                .map(|md| md.len())
                .unwrap_or(0),
            full: self.is_full(),
            counters: Counters {
                delivered: m.delivered_total,
                dead: m.dead_total,
                dropped: m.dropped_total,
            },
            quarantined: self
                .inner
                .quarantined
                .as_ref()
                .map(|p| p.display().to_string()),
            undecodable_records: undecodable.len() as u64,
            undecodable: undecodable.into_iter().take(UNDECODABLE_SHOWN).collect(),
            kept_records,
        })
    }
}
