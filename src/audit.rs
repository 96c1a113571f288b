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
    pub credential_type: crate::wire::CredentialType,
    /// The panel or reader where it was presented.
    pub reader: String,
    pub doors: Vec<String>,
    pub grant_id: Option<String>,
    pub booking_id: Option<String>,
    pub result: Outcome,
    pub reason: Option<String>,
    /// The decision used the clock floor because the system clock was not trusted.
    pub clock_untrusted: bool,
    /// For the record that closes a lockout (`result` `locked_out`): the credentials presented
    /// during it, refused without being compared and not recorded one by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u64>,
}

/// `result` of an audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Granted,
    Denied,
    /// The record that closes a lockout (its `attempts` were refused uncompared).
    LockedOut,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Denied => "denied",
            Outcome::LockedOut => "locked_out",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Outcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
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

fn digest(seq: u64, prev: &str, entry: &Entry) -> String {
    let mut h = Sha256::new();
    h.update(seq.to_be_bytes());
    h.update(prev.as_bytes());
    // Serialising a struct of strings and bools is deterministic and cannot fail.
    h.update(serde_json::to_vec(entry).unwrap_or_default());
    hex::encode(h.finalize())
}

impl Record {
    /// Whether its hash is the hash of its content and its link to the record before it.
    pub fn intact(&self) -> bool {
        digest(self.seq, &self.prev, &self.entry) == self.hash
    }

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
pub(crate) mod tests {
    use super::*;

    pub(crate) fn entry(result: Outcome) -> Entry {
        Entry {
            at: "2026-01-01T00:00:00.000Z".into(),
            credential_type: crate::wire::CredentialType::Pin,
            reader: "panel".into(),
            doors: vec!["front".into()],
            grant_id: Some("g1".into()),
            booking_id: Some("b1".into()),
            result,
            reason: None,
            clock_untrusted: false,
            attempts: None,
        }
    }

    fn log(n: u64) -> Vec<(u64, Vec<u8>)> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let r = Record::chain(seq, prev.clone(), entry(Outcome::Granted));
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
