//! Housekeeping, once an hour: dedup keys and grants past their use, audit records past
//! retention (only on a trusted clock), delivered events past retention. One lazy commit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::access::Grant;
use crate::event::Millis;
use crate::store::{Commit, Store};
use crate::telemetry::{events as t, InternalEvent};

/// How often delivered events past their retention are deleted.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// A commit step that deletes grants whose window ended more than a day ago (a revoked or
/// expired grant is kept that long so a late attempt is denied with the right reason).
pub fn gc_grants(commit: &mut Commit, now: Millis) {
    commit.step(move |tx| {
        tx.retain::<Grant>(|_, g| g.valid_until.saturating_add(Duration::from_secs(86_400)) >= now)
            .map(|_| ())
    });
}

/// Runs housekeeping now and every [`INTERVAL`] until `stop` turns true.
pub async fn run(
    store: Store,
    clock: Arc<crate::clock::Clock>,
    audit_retention: Duration,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let now = Millis::now();
        let mut c = Commit::lazy();
        crate::inbound::gc_dedup(&mut c, now);
        gc_grants(&mut c, now);
        crate::inbound::snapshot::gc_parts(&mut c, now);
        // Audit records are pruned only on a clock we trust: a clock wrongly ahead must not age
        // the log away.
        let reading = clock.read();
        if reading.trusted {
            let cutoff = reading
                .now
                .0
                .saturating_sub(audit_retention.as_millis() as u64);
            crate::audit_log::prune(&mut c, Millis(cutoff));
        }
        Store::gc_delivered(&mut c, now);
        match store.commit(c).await {
            Ok(done) if done.removed > 0 => t::DeliveredRemoved {
                count: done.removed as u64,
            }
            .emit(),
            Ok(_) => {}
            Err(e) => t::StoreFailed {
                context: "gc",
                error: &e,
            }
            .emit(),
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}
