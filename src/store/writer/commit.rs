//! What a commit is: its operations (events, record puts and removes, insert-if-absent guards,
//! steps that read and write records in the transaction) and the `Tx` those steps get.

use super::*;

/// A step of a commit that reads and writes records in the commit's transaction. It may run
/// more than once (a failed group is applied again commit by commit), so it must change
/// nothing but the store, through `tx`, and report results by overwriting, not appending.
pub type Step = Box<dyn Fn(&mut Tx<'_>) -> Result<(), StoreError> + Send>;

/// A batch of writes that land together or not at all.
pub struct Commit {
    pub(in crate::store) ops: Vec<Op>,
    pub(in crate::store) durable: bool,
}

pub(in crate::store) enum Op {
    Event(NewEvent),
    Put {
        family: &'static str,
        key: String,
        bytes: Vec<u8>,
        check: fn(&[u8]) -> bool,
    },
    Remove {
        family: &'static str,
        key: String,
        check: fn(&[u8]) -> bool,
    },
    InsertNew {
        family: &'static str,
        key: String,
        bytes: Vec<u8>,
    },
    Attempt {
        seq: u64,
        attempt: Attempt,
        status: Status,
    },
    SetDead {
        seq: u64,
        reason: String,
    },
    Requeue {
        seq: u64,
    },
    GcDelivered {
        cutoff_ms: u64,
    },
    Step(Step),
}

impl Default for Commit {
    fn default() -> Self {
        Commit::new()
    }
}

impl Commit {
    /// A commit that is durable when [`super::Store::commit`] returns.
    pub fn new() -> Commit {
        Commit {
            ops: Vec::new(),
            durable: true,
        }
    }

    /// A commit made durable by the next durable one, or within [`LAZY_SYNC`].
    pub fn lazy() -> Commit {
        Commit {
            ops: Vec::new(),
            durable: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Stores an event: it gets its sequence and id, its body is rendered once, and delivery
    /// learns of it once the commit is durable. Makes the commit durable.
    pub fn event(&mut self, event: NewEvent) -> &mut Commit {
        self.durable = true;
        self.ops.push(Op::Event(event));
        self
    }

    /// Writes a record (replacing one with the same key).
    pub fn put<T: Record>(&mut self, key: &str, value: &T) -> Result<&mut Commit, StoreError> {
        let bytes = record::encode(value)?;
        self.ops.push(Op::Put {
            family: T::FAMILY,
            key: key.to_owned(),
            bytes,
            check: record::decodes::<T>,
        });
        Ok(self)
    }

    /// Writes the JSON of a record as it is, with the current schema version (a test and
    /// repair hook: it can write what `put` never would).
    #[doc(hidden)]
    pub fn put_json<T: Record>(&mut self, key: &str, json: &[u8]) -> &mut Commit {
        let mut bytes = T::VERSION.to_be_bytes().to_vec();
        bytes.extend_from_slice(json);
        self.ops.push(Op::Put {
            family: T::FAMILY,
            key: key.to_owned(),
            bytes,
            check: |_| true,
        });
        self
    }

    pub fn remove<T: Record>(&mut self, key: &str) -> &mut Commit {
        self.ops.push(Op::Remove {
            family: T::FAMILY,
            key: key.to_owned(),
            check: record::decodes::<T>,
        });
        self
    }

    /// Writes a record that must not exist yet. If it does, the whole commit is refused with
    /// [`StoreError::Exists`] and writes nothing: the check and the insert are one step, so of
    /// two racing commits with the same key exactly one lands.
    pub fn insert_new<T: Record>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<&mut Commit, StoreError> {
        let bytes = record::encode(value)?;
        self.ops.push(Op::InsertNew {
            family: T::FAMILY,
            key: key.to_owned(),
            bytes,
        });
        Ok(self)
    }

    /// A read-modify-write step, run inside the commit's transaction (see [`Step`]).
    pub fn step(
        &mut self,
        f: impl Fn(&mut Tx<'_>) -> Result<(), StoreError> + Send + 'static,
    ) -> &mut Commit {
        self.ops.push(Op::Step(Box::new(f)));
        self
    }

    pub(in crate::store) fn attempt(
        &mut self,
        seq: u64,
        attempt: Attempt,
        status: Status,
    ) -> &mut Commit {
        self.ops.push(Op::Attempt {
            seq,
            attempt,
            status,
        });
        self
    }

    pub(in crate::store) fn set_dead(&mut self, seq: u64, reason: &str) -> &mut Commit {
        self.ops.push(Op::SetDead {
            seq,
            reason: reason.to_owned(),
        });
        self
    }

    pub(in crate::store) fn requeue(&mut self, seq: u64) -> &mut Commit {
        self.ops.push(Op::Requeue { seq });
        self
    }

    pub(in crate::store) fn gc_delivered(&mut self, cutoff_ms: u64) -> &mut Commit {
        self.ops.push(Op::GcDelivered { cutoff_ms });
        self
    }
}

/// What a commit did, in the order of its operations of each kind.
#[derive(Debug, Default)]
pub struct Committed {
    pub events: Vec<Enqueued>,
    pub requeued: Vec<Option<PendingEvent>>,
    /// Events removed by retention.
    pub removed: usize,
}

/// A record as decoded, or why it could not be.
pub type Decoded<T> = Result<T, record::DecodeError>;

/// Records, read and written inside a commit's transaction.
pub struct Tx<'a> {
    pub(in crate::store) txn: &'a WriteTransaction,
    pub(in crate::store) shared: &'a Shared,
    /// The byte budget's count, for the record families it covers.
    pub(in crate::store) live_bytes: &'a mut u64,
}

impl Tx<'_> {
    pub fn get<T: Record>(&self, key: &str) -> Result<Option<T>, StoreError> {
        crate::store::read_record(&self.txn.open_table(RECORDS)?, self.shared, key)
    }

    /// Every decodable record of the family (undecodable ones are noted and left alone).
    pub fn all<T: Record>(&self) -> Result<Vec<(String, T)>, StoreError> {
        crate::store::read_family(&self.txn.open_table(RECORDS)?, self.shared)
    }

    /// The family's record with the greatest key, decoded or not.
    pub fn last<T: Record>(&self) -> Result<Option<(String, Decoded<T>)>, StoreError> {
        let table = self.txn.open_table(RECORDS)?;
        let end = crate::store::family_end(T::FAMILY);
        let mut range = table.range((T::FAMILY, "")..(end.as_str(), ""))?;
        let Some(item) = range.next_back() else {
            return Ok(None);
        };
        let (k, v) = item?;
        let decoded = record::decode::<T>(v.value());
        Ok(Some((k.value().1.to_owned(), decoded)))
    }

    /// The family's first `limit` records in key order, decoded or not.
    pub fn first<T: Record>(&self, limit: usize) -> Result<Vec<(String, Decoded<T>)>, StoreError> {
        let table = self.txn.open_table(RECORDS)?;
        let end = crate::store::family_end(T::FAMILY);
        let mut out = Vec::new();
        for item in table
            .range((T::FAMILY, "")..(end.as_str(), ""))?
            .take(limit)
        {
            let (k, v) = item?;
            out.push((k.value().1.to_owned(), record::decode::<T>(v.value())));
        }
        Ok(out)
    }

    pub fn put<T: Record>(&mut self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = record::encode(value)?;
        put_record(
            self.txn,
            self.shared,
            self.live_bytes,
            T::FAMILY,
            key,
            Some(&bytes),
            record::decodes::<T>,
        )
    }

    pub fn remove<T: Record>(&mut self, key: &str) -> Result<(), StoreError> {
        put_record(
            self.txn,
            self.shared,
            self.live_bytes,
            T::FAMILY,
            key,
            None,
            record::decodes::<T>,
        )
    }

    /// Removes every decodable record of the family for which `keep` is false; returns how
    /// many went.
    pub fn retain<T: Record>(
        &mut self,
        keep: impl Fn(&str, &T) -> bool,
    ) -> Result<usize, StoreError> {
        let doomed: Vec<String> = self
            .all::<T>()?
            .into_iter()
            .filter(|(k, v)| !keep(k, v))
            .map(|(k, _)| k)
            .collect();
        for key in &doomed {
            self.remove::<T>(key)?;
        }
        Ok(doomed.len())
    }
}

/// Writes (`Some`) or removes (`None`) one record. A value that `check` cannot read is copied
/// into `kept` first, so an undecodable record is never overwritten or removed unseen.
#[allow(clippy::too_many_arguments)]
pub(in crate::store) fn put_record(
    txn: &WriteTransaction,
    shared: &Shared,
    live_bytes: &mut u64,
    family: &'static str,
    key: &str,
    bytes: Option<&[u8]>,
    check: fn(&[u8]) -> bool,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(RECORDS)?;
    let old = table.get((family, key))?.map(|v| v.value().to_vec());
    if crate::store::budgeted(family) {
        let size = |b: &[u8]| (key.len() + b.len()) as u64;
        let old_size = old.as_deref().map_or(0, size);
        let new_size = bytes.map_or(0, size);
        *live_bytes = (*live_bytes + new_size).saturating_sub(old_size);
    }
    if let Some(old) = old.filter(|o| !check(o)) {
        keep_aside(txn, shared, family, key, &old)?;
    }
    match bytes {
        Some(b) => {
            table.insert((family, key), b)?;
        }
        None => {
            table.remove((family, key))?;
        }
    }
    Ok(())
}

pub(in crate::store) fn keep_aside(
    txn: &WriteTransaction,
    shared: &Shared,
    family: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let mut kept = txn.open_table(KEPT)?;
    let mut name = key.to_owned();
    let mut n = 1;
    while kept.get((family, name.as_str()))?.is_some() {
        n += 1;
        name = format!("{key}#{n}");
    }
    kept.insert((family, name.as_str()), bytes)?;
    t::RecordKeptAside {
        family,
        key,
        kept_as: &name,
    }
    .emit();
    shared
        .notes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(family.to_owned(), key.to_owned()));
    Ok(())
}
