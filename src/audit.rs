//! The access audit log: every decision, hash-chained so that an edited or deleted record is
//! detectable. Each record carries the hash of the one before it; `verify` recomputes the
//! chain. (The store keeps the records; this module defines and checks them.)
//!
//! Retention: records older than `access.audit_retention` are pruned from the oldest on; the
//! last pruned record's sequence and hash stay as a [`Checkpoint`], so the chain that remains
//! verifies from its first record and the next append still follows the last record ever
//! written. The log counts against `max_store_bytes` (the store's `BUDGETED` families).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What is recorded about one decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub at: String,
    pub credential_type: String,
    /// The panel or reader where it was presented.
    pub reader: String,
    pub doors: Vec<String>,
    pub grant_id: Option<String>,
    pub booking_id: Option<String>,
    /// `granted` or `denied`.
    pub result: String,
    pub reason: Option<String>,
    /// The decision used the clock floor because the system clock was not trusted.
    pub clock_untrusted: bool,
    /// For the record that closes a lockout (`result` `locked_out`): the credentials presented
    /// during it, refused without being compared and not recorded one by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    #[serde(flatten)]
    pub entry: Entry,
    pub prev: String,
    pub hash: String,
}

impl crate::record::Record for Record {
    const FAMILY: &'static str = "audit";
    const VERSION: u32 = 1;
}

impl Record {
    /// The record's key in the store: its sequence, zero-padded so keys sort in order.
    pub fn key(seq: u64) -> String {
        format!("{seq:020}")
    }
}

/// Where the chain that remains starts: the last record pruned by retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    /// Records pruned so far, in all.
    pub pruned: u64,
}

impl crate::record::Record for Checkpoint {
    const FAMILY: &'static str = "audit.checkpoint";
    const VERSION: u32 = 1;
}

impl Checkpoint {
    pub const KEY: &'static str = "pruned";
}

/// Appends an access decision to the chain, inside a store commit: the previous record and
/// the new one are read and written in one transaction, so two appends never fork the chain.
pub fn append(commit: &mut crate::store::Commit, entry: Entry) {
    commit.step(move |tx| {
        let prev = match tx.last::<Record>()? {
            Some((_, Ok(r))) => (r.seq, r.hash),
            Some((key, Err(error))) => {
                return Err(crate::store::StoreError::Record {
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
pub fn raw(store: &crate::store::Store) -> Result<Vec<(u64, Vec<u8>)>, crate::store::StoreError> {
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
pub fn prune(commit: &mut crate::store::Commit, cutoff: crate::event::Millis) {
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
            let chains = r.seq == at.seq + 1
                && r.prev == at.hash
                && digest(r.seq, &r.prev, &r.entry) == r.hash;
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

/// Checks the chain one record at a time (oldest first), from the checkpoint if there is one:
/// the log is never held in memory as a whole.
#[derive(Debug)]
pub struct Verifier {
    prev: String,
    expected: u64,
    checked: usize,
}

impl Verifier {
    pub fn new(checkpoint: Option<&Checkpoint>) -> Verifier {
        Verifier {
            prev: checkpoint.map_or(GENESIS.to_string(), |c| c.hash.clone()),
            expected: checkpoint.map_or(1, |c| c.seq + 1),
            checked: 0,
        }
    }

    /// The next stored record (its key's sequence and its JSON).
    pub fn check(&mut self, key: u64, bytes: &[u8]) -> Result<(), (u64, String)> {
        let r: Record =
            serde_json::from_slice(bytes).map_err(|e| (key, format!("unreadable record: {e}")))?;
        if r.seq != key || r.seq != self.expected {
            return Err((
                key,
                format!("expected record {}: a record is missing", self.expected),
            ));
        }
        if r.prev != self.prev {
            return Err((r.seq, "does not follow the record before it".into()));
        }
        if digest(r.seq, &r.prev, &r.entry) != r.hash {
            return Err((r.seq, "content does not match its hash (edited)".into()));
        }
        self.prev = r.hash;
        self.expected += 1;
        self.checked += 1;
        Ok(())
    }

    pub fn checked(&self) -> usize {
        self.checked
    }
}

/// The outcome of verifying the stored log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub valid: bool,
    /// Records checked (all of them when valid).
    pub records: usize,
    /// Records pruned by retention before the first one checked.
    pub pruned: u64,
    /// The first broken record and what is wrong with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Verifies the stored log from its checkpoint on, reading one record at a time.
pub fn verify_stored(
    store: &crate::store::Store,
) -> Result<Verification, crate::store::StoreError> {
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
    store: &crate::store::Store,
    limit: usize,
    before: Option<u64>,
) -> Result<Vec<(u64, Vec<u8>)>, crate::store::StoreError> {
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
pub fn overwrite(
    store: &crate::store::Store,
    seq: u64,
    json: &[u8],
) -> Result<(), crate::store::StoreError> {
    let mut c = crate::store::Commit::new();
    c.put_json::<Record>(&Record::key(seq), json);
    store.commit_blocking(c).map(|_| ())
}

fn digest(seq: u64, prev: &str, entry: &Entry) -> String {
    let mut h = Sha256::new();
    h.update(seq.to_be_bytes());
    h.update(prev.as_bytes());
    // Serialising a struct of strings and bools is deterministic and cannot fail.
    h.update(serde_json::to_vec(entry).unwrap_or_default());
    hex::encode(h.finalize())
}

impl Record {
    pub fn chain(seq: u64, prev: String, entry: Entry) -> Record {
        let hash = digest(seq, &prev, &entry);
        Record {
            seq,
            entry,
            prev,
            hash,
        }
    }
}

/// Checks records (sequence, raw bytes), oldest first, from the start of the chain. `Ok(n)`
/// when all `n` chain; else the first broken sequence and what is wrong with it.
pub fn verify(records: &[(u64, Vec<u8>)]) -> Result<usize, (u64, String)> {
    let mut v = Verifier::new(None);
    for (key, bytes) in records {
        v.check(*key, bytes)?;
    }
    Ok(v.checked())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(result: &str) -> Entry {
        Entry {
            at: "2026-01-01T00:00:00.000Z".into(),
            credential_type: "pin".into(),
            reader: "panel".into(),
            doors: vec!["front".into()],
            grant_id: Some("g1".into()),
            booking_id: Some("b1".into()),
            result: result.into(),
            reason: None,
            clock_untrusted: false,
            attempts: None,
        }
    }

    fn log(n: u64) -> Vec<(u64, Vec<u8>)> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let r = Record::chain(seq, prev.clone(), entry("granted"));
                prev = r.hash.clone();
                (seq, serde_json::to_vec(&r).unwrap())
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&log(5)), Ok(5));
        assert_eq!(verify(&[]), Ok(0));
    }

    #[test]
    fn an_edited_record_is_found() {
        let mut l = log(5);
        let text = String::from_utf8(l[2].1.clone())
            .unwrap()
            .replace("granted", "denied");
        l[2].1 = text.into_bytes();
        assert_eq!(verify(&l).unwrap_err().0, 3);
    }

    #[test]
    fn a_deleted_record_is_found() {
        let mut l = log(5);
        l.remove(1);
        assert_eq!(verify(&l).unwrap_err().0, 3);
        let mut l = log(5);
        l.pop();
        assert_eq!(
            verify(&l),
            Ok(4),
            "truncating the tail leaves a valid chain: the CLI shows the count"
        );
    }

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
            ..entry("denied")
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
