//! Typed records: how a domain type is kept in the store's generic `records` table.
//!
//! Every stored value is a 4-byte big-endian schema version followed by the type's JSON. A
//! value whose version is not the type's current one, or whose JSON does not decode, is
//! *undecodable*: it is counted, logged once with its family and key, shown by `zenedge
//! status`, `/metrics` and `doctor`, and left in place. It is never skipped silently and never
//! overwritten: a write over it first copies it, byte for byte, into the `kept` table.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A family of records kept in the store. The type lives with its domain module; the store
/// only knows the family's name and schema version.
pub trait Record: Serialize + DeserializeOwned {
    /// The family's name, unique among record types (`grant`, `booking`, …).
    const FAMILY: &'static str;
    /// The schema version written with every record. Raise it when the stored shape changes in
    /// a way older code could not read; records of any other version are undecodable.
    const VERSION: u32;
}

/// The stored bytes of a record.
pub fn encode<T: Record>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = T::VERSION.to_be_bytes().to_vec();
    serde_json::to_writer(&mut out, value).map_err(|e| EncodeError {
        family: T::FAMILY,
        error: e.to_string(),
    })?;
    Ok(out)
}

/// A value that does not serialise (a map with non-string keys, say): a bug, reported with its
/// family.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode a {family} record: {error}")]
pub struct EncodeError {
    pub family: &'static str,
    pub error: String,
}

/// Why stored bytes are not a record of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} bytes, too short for a record")]
    TooShort(usize),
    #[error("schema version {found}, this build reads version {reads}")]
    Version { found: u32, reads: u32 },
    #[error("{0}")]
    Json(String),
}

/// The record in `bytes`, or why it cannot be read.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (version, json) = split(bytes)?;
    if version != T::VERSION {
        return Err(DecodeError::Version {
            found: version,
            reads: T::VERSION,
        });
    }
    serde_json::from_slice(json).map_err(|e| DecodeError::Json(e.to_string()))
}

/// Whether `bytes` decode as `T` (the check a write runs on the value it replaces).
pub fn decodes<T: Record>(bytes: &[u8]) -> bool {
    decode::<T>(bytes).is_ok()
}

/// The version and the JSON of stored bytes.
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    let Some((head, json)) = bytes.split_first_chunk::<4>() else {
        return Err(DecodeError::TooShort(bytes.len()));
    };
    Ok((u32::from_be_bytes(*head), json))
}

/// A record that could not be decoded, as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Undecodable {
    pub family: String,
    pub key: String,
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct V1 {
        a: u32,
    }
    impl Record for V1 {
        const FAMILY: &'static str = "test";
        const VERSION: u32 = 1;
    }
    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct V2 {
        b: u32,
    }
    impl Record for V2 {
        const FAMILY: &'static str = "test";
        const VERSION: u32 = 2;
    }

    #[test]
    fn round_trip_and_every_kind_of_bad_bytes_is_an_error() {
        let bytes = encode(&V1 { a: 7 }).unwrap();
        assert_eq!(&bytes[..4], &[0, 0, 0, 1]);
        assert_eq!(decode::<V1>(&bytes).unwrap(), V1 { a: 7 });
        let err = decode::<V2>(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::Version { found: 1, reads: 2 });
        assert!(err.to_string().contains("schema version 1"), "{err}");
        assert_eq!(decode::<V1>(b"").unwrap_err(), DecodeError::TooShort(0));
        assert!(decode::<V1>(&[0, 0, 0, 1, b'{']).is_err());
        // A field renamed without a version bump is caught too.
        let renamed = [&[0u8, 0, 0, 1][..], br#"{"b":1}"#].concat();
        assert!(!decodes::<V1>(&renamed));
    }
}
