//! The access audit log: every decision, hash-chained so that an edited or deleted record is
//! detectable. Each record carries the hash of the one before it; `verify` recomputes the
//! chain. (The store keeps the records; this module defines and checks them, without I/O.)

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

impl crate::store::Record for Record {
    const FAMILY: &'static str = "audit";
    const VERSION: u32 = 1;
}

impl Record {
    /// The record's key in the store: its sequence, zero-padded so keys sort in order.
    pub fn key(seq: u64) -> String {
        format!("{seq:020}")
    }
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
            None => (0, GENESIS.to_string()),
        };
        let record = Record::chain(prev.0 + 1, prev.1, entry.clone());
        tx.put(&Record::key(record.seq), &record)
    });
}

/// The log as stored, oldest first: (sequence, the record's JSON), unparsed so that a
/// tampered record still shows.
pub fn raw(store: &crate::store::Store) -> Result<Vec<(u64, Vec<u8>)>, crate::store::StoreError> {
    Ok(store
        .records_json(<Record as crate::store::Record>::FAMILY)?
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

/// Checks stored records (sequence, raw bytes), oldest first. `Ok(n)` when all `n` chain;
/// else the first broken sequence and what is wrong with it.
pub fn verify(records: &[(u64, Vec<u8>)]) -> Result<usize, (u64, String)> {
    let mut prev = GENESIS.to_string();
    for (expected_seq, (key, bytes)) in (1u64..).zip(records.iter()) {
        let r: Record =
            serde_json::from_slice(bytes).map_err(|e| (*key, format!("unreadable record: {e}")))?;
        if r.seq != *key || r.seq != expected_seq {
            return Err((
                *key,
                format!("expected record {expected_seq}: a record is missing"),
            ));
        }
        if r.prev != prev {
            return Err((r.seq, "does not follow the record before it".into()));
        }
        if digest(r.seq, &r.prev, &r.entry) != r.hash {
            return Err((r.seq, "content does not match its hash (edited)".into()));
        }
        prev = r.hash;
    }
    Ok(records.len())
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
}
