//! Reading record families: whole (small families), one at a time (the audit log), by the
//! newest keys, or as raw JSON; what counts against the byte budget.

use redb::ReadableTable;

use super::record::{self, Record};
use super::{note_undecodable, Shared, Store, StoreError, Undecodable, RECORDS};

impl Store {
    /// Every decodable record of a family, by key. Undecodable ones are counted and logged
    /// (see [`record`]) and left in place.
    pub fn records<T: Record>(&self) -> Result<Vec<(String, T)>, StoreError> {
        let txn = self.begin_read()?;
        read_family(&txn.open_table(RECORDS)?, self.shared())
    }

    /// Decodes every record of a family one at a time, noting (see [`record`]) those that do
    /// not decode, without holding the family in memory; returns how many decoded.
    pub fn check_family<T: Record>(&self) -> Result<usize, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let end = family_end(T::FAMILY);
        let mut ok = 0;
        for item in table.range((T::FAMILY, "")..(end.as_str(), ""))? {
            let (k, v) = item?;
            match record::decode::<T>(v.value()) {
                Ok(_) => ok += 1,
                Err(e) => note_undecodable(self.shared(), T::FAMILY, k.value().1, &e),
            }
        }
        Ok(ok)
    }

    /// Every record of a family as its stored JSON, decodable or not (the audit log shows a
    /// tampered record as it is).
    pub fn records_json(&self, family: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let mut out = Vec::new();
        let end = family_end(family);
        for item in table.range((family, "")..(end.as_str(), ""))? {
            let (k, v) = item?;
            let (_, key) = k.value();
            let json = record::split(v.value())
                .map(|(_, j)| j.to_vec())
                .unwrap_or_else(|_| v.value().to_vec());
            out.push((key.to_owned(), json));
        }
        Ok(out)
    }

    /// Visits a family's records in key order as stored JSON, decodable or not, one at a time
    /// (for logs too long to hold: the audit log is verified this way); `visit` returns false
    /// to stop.
    pub fn scan_json(
        &self,
        family: &str,
        mut visit: impl FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let end = family_end(family);
        for item in table.range((family, "")..(end.as_str(), ""))? {
            let (k, v) = item?;
            let (_, key) = k.value();
            let json = record::split(v.value()).map_or(v.value(), |(_, j)| j);
            if !visit(key, json) {
                break;
            }
        }
        Ok(())
    }

    /// The `limit` records of a family with the greatest keys below `before` (all when None),
    /// in key order, as stored JSON.
    pub fn last_json(
        &self,
        family: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let end = family_end(family);
        let range = match before {
            Some(b) => table.range((family, "")..(family, b))?,
            None => table.range((family, "")..(end.as_str(), ""))?,
        };
        let mut out = Vec::new();
        for item in range.rev().take(limit) {
            let (k, v) = item?;
            let (_, key) = k.value();
            let json = record::split(v.value()).map_or(v.value(), |(_, j)| j);
            out.push((key.to_owned(), json.to_vec()));
        }
        out.reverse();
        Ok(out)
    }

    pub fn record<T: Record>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.begin_read()?;
        read_record(&txn.open_table(RECORDS)?, self.shared(), key)
    }

    /// Undecodable records seen so far, by family and key.
    pub fn undecodable(&self) -> Vec<Undecodable> {
        self.shared()
            .notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((family, key), error)| Undecodable {
                family: family.clone(),
                key: key.clone(),
                error: error.clone(),
            })
            .collect()
    }
}

/// One record of `records`, decoded; an undecodable one is noted and read as absent.
/// Shared by reads and by commit steps, whatever table handle they hold.
pub(crate) fn read_record<T: Record>(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    shared: &Shared,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let Some(v) = table.get((T::FAMILY, key))? else {
        return Ok(None);
    };
    match record::decode::<T>(v.value()) {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            note_undecodable(shared, T::FAMILY, key, &e);
            Ok(None)
        }
    }
}

/// Every decodable record of `T`'s family, by key; undecodable ones are noted and left alone.
pub(crate) fn read_family<T: Record>(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    shared: &Shared,
) -> Result<Vec<(String, T)>, StoreError> {
    let mut out = Vec::new();
    let end = family_end(T::FAMILY);
    for item in table.range((T::FAMILY, "")..(end.as_str(), ""))? {
        let (k, v) = item?;
        let (_, key) = k.value();
        match record::decode::<T>(v.value()) {
            Ok(r) => out.push((key.to_owned(), r)),
            Err(e) => note_undecodable(shared, T::FAMILY, key, &e),
        }
    }
    Ok(out)
}

/// The first family name after `family` in key order: `(family, any key)` sorts below
/// `(family_end(family), "")`, so the two bound one family's records.
/// Record families that count against `max_store_bytes` besides the outbox: the audit log,
/// which grows with every decision (DESIGN §2).
pub(crate) const BUDGETED: [&str; 1] = [<crate::audit::Record as Record>::FAMILY];

pub(crate) fn budgeted(family: &str) -> bool {
    BUDGETED.contains(&family)
}

pub(crate) fn family_end(family: &str) -> String {
    format!("{family}\0")
}
