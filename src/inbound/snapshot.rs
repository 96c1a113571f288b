//! `access.grants_snapshot` (DESIGN §2b) in the store: the stored grants of a room (or of the
//! controller) become exactly the listed ones, in one transaction. A snapshot in parts is kept
//! part by part (each part durable before it is acknowledged) and applied, atomically, in the
//! commit of its last part; parts left without the rest for [`PART_TTL`] are dropped.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::command::{Part, Snapshot};
use crate::access::Grant;
use crate::event::Millis;
use crate::store::{StoreError, Tx};

/// How long a part waits for the rest of its snapshot.
pub const PART_TTL: Duration = Duration::from_secs(5 * 60);

/// One stored part of a snapshot in parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPart {
    pub part: Part,
    pub room: Option<String>,
    pub grants: Vec<Grant>,
    pub received: Millis,
}

impl crate::record::Record for StoredPart {
    const FAMILY: &'static str = "snapshot.part";
    const VERSION: u32 = 1;
}

/// A commit step that drops parts older than [`PART_TTL`] (housekeeping).
pub fn gc_parts(commit: &mut crate::store::Commit, now: Millis) {
    commit.step(move |tx| stale_parts(tx, now));
}

fn stale_parts(tx: &mut Tx<'_>, now: Millis) -> Result<(), StoreError> {
    tx.retain::<StoredPart>(|_, p| now.saturating_sub(p.received) < PART_TTL)
        .map(|_| ())
}

/// Inside the command's transaction: stores a part, or applies a whole snapshot (a single one,
/// or the last missing part's).
pub fn apply(tx: &mut Tx<'_>, snapshot: Snapshot, now: Millis) -> Result<(), StoreError> {
    stale_parts(tx, now)?;
    let Some(part) = snapshot.part else {
        return replace(tx, snapshot.room.as_deref(), snapshot.grants, now);
    };
    let key = format!("{}:{:05}", part.snapshot_id, part.part);
    let parts = part.parts;
    let snapshot_id = part.snapshot_id.clone();
    let room = snapshot.room;
    tx.put(
        &key,
        &StoredPart {
            part,
            room: room.clone(),
            grants: snapshot.grants,
            received: now,
        },
    )?;
    let mine: Vec<(String, StoredPart)> = tx
        .all::<StoredPart>()?
        .into_iter()
        .filter(|(_, p)| p.part.snapshot_id == snapshot_id)
        .collect();
    // Parts that disagree on the whole (their count, their room) never complete it.
    let agree = mine
        .iter()
        .all(|(_, p)| p.part.parts == parts && p.room == room);
    let complete = (1..=parts).all(|n| mine.iter().any(|(_, p)| p.part.part == n));
    if !(agree && complete) {
        return Ok(());
    }
    let mut grants = Vec::new();
    for (key, p) in mine {
        tx.remove::<StoredPart>(&key)?;
        grants.extend(p.grants);
    }
    replace(tx, room.as_deref(), grants, now)
}

/// The grants of `room` (every grant when `None`) become `grants`: those listed are stored as
/// sent, the others revoked (kept until their `valid_until`, so a later attempt is `revoked`).
fn replace(
    tx: &mut Tx<'_>,
    room: Option<&str>,
    grants: Vec<Grant>,
    now: Millis,
) -> Result<(), StoreError> {
    let listed: HashSet<&str> = grants.iter().map(|g| g.grant_id.as_str()).collect();
    for (key, mut g) in tx.all::<Grant>()? {
        let in_scope = room.is_none_or(|r| g.meeting_space_id == r);
        if in_scope && g.revoked_at.is_none() && !listed.contains(g.grant_id.as_str()) {
            g.revoked_at = Some(now);
            tx.put(&key, &g)?;
        }
    }
    for g in &grants {
        tx.put(&g.grant_id, g)?;
    }
    Ok(())
}
