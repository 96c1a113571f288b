//! The byte budget (`delivery.max_store_bytes`): reclaiming the oldest presence events when the
//! store is over it, and the `edge.data_gap` that names what was dropped.

use super::*;

impl Writer {
    pub(super) fn note_gap(&mut self, gap: Gap) {
        self.meta.gap = Some(match self.meta.gap {
            Some(old) => old.merge(gap),
            None => gap,
        });
        self.meta.dropped_total += gap.count;
    }

    /// Turns an unreported gap into an `edge.data_gap` event once there is room for it.
    pub(super) fn report_gap_if_room(&mut self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let Some(gap) = self.meta.gap else {
            return Ok(());
        };
        if self.over_budget() {
            return Ok(());
        }
        self.meta.gap = None;
        let event = NewEvent::edge(
            Data::DataGap(DataGap {
                from_sequence: Some(gap.from),
                to_sequence: gap.to,
                count: Some(gap.count),
                reason: GapReason::StoreFull,
                quarantined_to: None,
            }),
            Millis::now(),
        );
        self.insert_event(txn, &event)?;
        self.shared.full.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Frees space: first delivered events kept only for their attempt log, then the oldest
    /// presence events (pending or dead), down to 90 % of the budget. Actions and access events
    /// are never dropped. Dropped sequences become one `edge.data_gap`.
    pub(super) fn reclaim(&mut self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let target = self.shared.max_bytes.load(Ordering::Relaxed) / 10 * 9;
        if self.meta.live_bytes <= target {
            return Ok(());
        }
        let now = Millis::now().0;
        if self.shared.full.load(Ordering::Relaxed)
            && now.saturating_sub(self.reclaim_failed_at) < 1000
        {
            return Ok(());
        }
        let delivered: Vec<u64> = {
            let status = txn.open_table(STATUS)?;
            let mut out = Vec::new();
            for item in status.iter()? {
                let (k, v) = item?;
                if record::decode::<Status>(v.value()).is_ok_and(|s| s.state == State::Delivered) {
                    out.push(k.value());
                }
            }
            out
        };
        for seq in delivered {
            self.remove_event(txn, seq)?;
            if self.meta.live_bytes <= target {
                return Ok(());
            }
        }
        let candidates: Vec<u64> = {
            let events = txn.open_table(EVENTS)?;
            let mut out = Vec::new();
            for item in events.iter()? {
                let (k, body) = item?;
                let presence = body_info(body.value())
                    .and_then(|i| i.kind)
                    .is_some_and(|k| k.is_presence());
                if presence {
                    out.push(k.value());
                }
            }
            out
        };
        let mut gap: Option<Gap> = None;
        for seq in candidates {
            if self.meta.live_bytes <= target {
                break;
            }
            // Decided under the lock `begin_send` takes: either the event is on its way (and
            // kept) or it is doomed, and `begin_send` will not read it.
            {
                let mut s = self
                    .shared
                    .sending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if s.sending.contains_key(&seq) {
                    continue;
                }
                s.doomed.insert(seq);
            }
            self.remove_event(txn, seq)?;
            let one = Gap {
                from: seq,
                to: seq,
                count: 1,
            };
            gap = Some(gap.map_or(one, |g| g.merge(one)));
        }
        if let Some(gap) = gap {
            t::PresenceEventsReclaimed {
                from_sequence: gap.from,
                to_sequence: gap.to,
                count: gap.count,
            }
            .emit();
            self.note_gap(gap);
        }
        let full = self.meta.live_bytes > target;
        if full && !self.shared.full.swap(true, Ordering::Relaxed) {
            t::StoreFullOfUndroppable {
                live_bytes: self.meta.live_bytes,
                max_store_bytes: self.shared.max_bytes.load(Ordering::Relaxed),
            }
            .emit();
        }
        if full {
            self.reclaim_failed_at = now;
        } else {
            self.shared.full.store(false, Ordering::Relaxed);
        }
        Ok(())
    }
}
