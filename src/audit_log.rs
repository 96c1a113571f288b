//! The audit log as it is kept in the store: appending to the chain inside a commit, pruning by
//! retention to a checkpoint, paging, and verifying one record at a time. The chain itself — its
//! records, hashes and what "intact" means — is `audit`'s, which knows nothing of the store.

use crate::audit::{Checkpoint, Entry, Record, Verification, Verifier, GENESIS};
use crate::store::{Commit, Store, StoreError};

/// Appends an access decision to the chain, inside a store commit: the previous record and
/// the new one are read and written in one transaction, so two appends never fork the chain.
pub fn append(commit: &mut Commit, entry: Entry) {
    commit.step(move |tx| {
        let prev = match tx.last::<Record>()? {
            Some((_, Ok(r))) => (r.seq, r.hash),
            Some((key, Err(error))) => {
                return Err(StoreError::Record {
                    what: format!("last audit record {key}"),
                    error,
                })
            }
            // Empty: the very first record, or every record pruned.
            None => match tx.get::<Checkpoint>(Checkpoint::KEY)? {
                Some(c) => (c.seq, c.hash),
                None => (0, GENESIS.to_string()),
            },
        };
        let record = Record::chain(prev.0 + 1, prev.1, entry.clone());
        tx.put(&Record::key(record.seq), &record)
    });
}

/// Test hook: the whole log as stored, oldest first: (sequence, the record's JSON), unparsed
/// so that a tampered record still shows. The daemon never calls it (it pages, [`newest`], and
/// verifies one record at a time, [`verify_stored`]).
#[doc(hidden)]
pub fn raw(store: &Store) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    Ok(store
        .records_json(<Record as crate::record::Record>::FAMILY)?
        .into_iter()
        .map(|(k, v)| (k.parse().unwrap_or(0), v))
        .collect())
}

/// Records pruned per commit at most, so that one retention pass never holds the writer long.
pub const PRUNE_BATCH: usize = 10_000;

/// A commit step that prunes records made before `cutoff`, oldest first, up to
/// [`PRUNE_BATCH`], and moves the checkpoint to the last one pruned. A record that does not
/// decode or does not chain is left where it is (and everything after it), for `verify` to
/// report: retention never hides an edit.
pub fn prune(commit: &mut Commit, cutoff: crate::event::Millis) {
    commit.step(move |tx| {
        let start = tx.get::<Checkpoint>(Checkpoint::KEY)?;
        let mut at = start.clone().unwrap_or(Checkpoint {
            seq: 0,
            hash: GENESIS.to_string(),
            pruned: 0,
        });
        for (key, decoded) in tx.first::<Record>(PRUNE_BATCH)? {
            let Ok(r) = decoded else { break };
            let old = crate::event::Millis::parse_rfc3339(&r.entry.at).is_some_and(|t| t < cutoff);
            let chains = r.seq == at.seq + 1 && r.prev == at.hash && r.intact();
            if !old || !chains {
                break;
            }
            tx.remove::<Record>(&key)?;
            at = Checkpoint {
                seq: r.seq,
                hash: r.hash,
                pruned: at.pruned + 1,
            };
        }
        if Some(&at) != start.as_ref() && at.seq > 0 {
            tx.put(Checkpoint::KEY, &at)?;
        }
        Ok(())
    });
}

/// Verifies the stored log from its checkpoint on, reading one record at a time.
pub fn verify_stored(store: &Store) -> Result<Verification, StoreError> {
    let checkpoint = store.record::<Checkpoint>(Checkpoint::KEY)?;
    let mut v = Verifier::new(checkpoint.as_ref());
    let mut broken = None;
    store.scan_json(
        <Record as crate::record::Record>::FAMILY,
        |key, bytes| match v.check(key.parse().unwrap_or(0), bytes) {
            Ok(()) => true,
            Err(e) => {
                broken = Some(e);
                false
            }
        },
    )?;
    Ok(Verification {
        valid: broken.is_none(),
        records: v.checked(),
        pruned: checkpoint.map_or(0, |c| c.pruned),
        record: broken.as_ref().map(|b| b.0),
        problem: broken.map(|b| b.1),
    })
}

/// The newest `limit` records before sequence `before` (all when None), oldest first, as
/// stored JSON.
pub fn newest(
    store: &Store,
    limit: usize,
    before: Option<u64>,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let before = before.map(Record::key);
    Ok(store
        .last_json(
            <Record as crate::record::Record>::FAMILY,
            limit,
            before.as_deref(),
        )?
        .into_iter()
        .map(|(k, v)| (k.parse().unwrap_or(0), v))
        .collect())
}

/// Test and repair hook: overwrites one record's JSON.
#[doc(hidden)]
pub fn overwrite(store: &Store, seq: u64, json: &[u8]) -> Result<(), StoreError> {
    let mut c = Commit::new();
    c.put_json::<Record>(&Record::key(seq), json);
    store.commit_blocking(c).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::entry;

    fn store(dir: &std::path::Path) -> crate::store::Store {
        let origin = crate::event::Origin {
            controller_id: "edge-1".into(),
            organization_id: "org".into(),
            meeting_space_id: "ms".into(),
        };
        crate::store::Store::open(dir, origin, 1 << 30).unwrap()
    }

    fn at_day(day: u64) -> Entry {
        Entry {
            at: crate::event::Millis(day * 86_400_000).rfc3339(),
            ..entry(crate::audit::Outcome::Denied)
        }
    }

    fn add(store: &crate::store::Store, days: impl IntoIterator<Item = u64>) {
        let mut c = crate::store::Commit::new();
        for d in days {
            append(&mut c, at_day(d));
        }
        store.commit_blocking(c).unwrap();
    }

    #[test]
    fn retention_prunes_the_oldest_and_the_rest_still_verifies_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        add(&store, [1, 2, 3, 10, 11]);
        let before = store.stats().unwrap().live_bytes;
        let mut c = crate::store::Commit::new();
        prune(&mut c, crate::event::Millis(5 * 86_400_000));
        store.commit_blocking(c).unwrap();
        // The audit log counts against the budget, and pruning gives the bytes back.
        assert!(store.stats().unwrap().live_bytes < before);
        let v = verify_stored(&store).unwrap();
        assert_eq!((v.valid, v.records, v.pruned), (true, 2, 3), "{v:?}");
        let page = newest(&store, 10, None).unwrap();
        assert_eq!(page.iter().map(|p| p.0).collect::<Vec<_>>(), vec![4, 5]);
        // The next record follows the last one ever written, and the chain still verifies.
        add(&store, [12]);
        let v = verify_stored(&store).unwrap();
        assert_eq!((v.valid, v.records), (true, 3), "{v:?}");
        // Everything pruned: the chain continues from the checkpoint.
        let mut c = crate::store::Commit::new();
        prune(&mut c, crate::event::Millis(100 * 86_400_000));
        store.commit_blocking(c).unwrap();
        add(&store, [101]);
        let page = newest(&store, 10, None).unwrap();
        assert_eq!(page.iter().map(|p| p.0).collect::<Vec<_>>(), vec![7]);
        let v = verify_stored(&store).unwrap();
        assert_eq!((v.valid, v.records, v.pruned), (true, 1, 6), "{v:?}");
    }

    #[test]
    fn retention_never_prunes_an_edited_record_away() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        add(&store, [1, 2, 3, 4]);
        let raw = raw(&store).unwrap();
        let edited = String::from_utf8(raw[1].1.clone())
            .unwrap()
            .replace("\"denied\"", "\"granted\"");
        overwrite(&store, 2, edited.as_bytes()).unwrap();
        let mut c = crate::store::Commit::new();
        prune(&mut c, crate::event::Millis(50 * 86_400_000));
        store.commit_blocking(c).unwrap();
        // Record 1 went; the edited record 2 and all after it stay, and verify names it.
        let v = verify_stored(&store).unwrap();
        assert_eq!((v.valid, v.record, v.pruned), (false, Some(2), 1), "{v:?}");
    }

    #[test]
    fn a_page_is_the_newest_before_a_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        add(&store, 1..=25);
        let seqs = |p: Vec<(u64, Vec<u8>)>| p.into_iter().map(|r| r.0).collect::<Vec<_>>();
        assert_eq!(seqs(newest(&store, 3, None).unwrap()), vec![23, 24, 25]);
        assert_eq!(seqs(newest(&store, 3, Some(23)).unwrap()), vec![20, 21, 22]);
        assert_eq!(seqs(newest(&store, 5, Some(3)).unwrap()), vec![1, 2]);
    }
}
