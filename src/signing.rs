//! Webhook signatures (DESIGN section 1 and 2), pure functions only.
//!
//! Two schemes share one key derivation:
//! - `X-Webhook-Signature`: lowercase hex of HMAC-SHA256(key, body).
//! - Standard Webhooks v1: `v1,` + base64(HMAC-SHA256(key, id + "." + timestamp + "." + body)),
//!   one space-separated entry per active secret so a receiver can rotate keys.
//!
//! The key is the secret's UTF-8 bytes, except that a secret written `whsec_<base64>` is
//! base64-decoded, as Standard Webhooks libraries do. Verification compares MACs in constant
//! time through `hmac`'s `verify_slice`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The most `webhook-signature` entries a request may carry (DESIGN §2: more → 401), so that a
/// forged header cannot make the daemon compare thousands of entries.
pub const MAX_SIGNATURE_ENTRIES: usize = 8;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the secret is empty")]
    Empty,
    #[error("a `whsec_` secret must be base64 after the prefix")]
    BadWhsec,
}

/// An HMAC key derived from a configured secret.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

impl Key {
    /// The key's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn from_secret(secret: &str) -> Result<Key, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::Empty);
        }
        match secret.strip_prefix("whsec_") {
            Some(encoded) => {
                let bytes = BASE64.decode(encoded).map_err(|_| KeyError::BadWhsec)?;
                if bytes.is_empty() {
                    return Err(KeyError::Empty);
                }
                Ok(Key(bytes))
            }
            None => Ok(Key(secret.as_bytes().to_vec())),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }

    fn mac_v1(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// `X-Webhook-Signature`: lowercase hex HMAC-SHA256 of the raw body.
    pub fn sign_hex(&self, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    /// A grant's `pin_hmac` / `card_hmac` (DESIGN §2): HMAC-SHA256 over `prefix` (`pin:` or
    /// `card:`) + the credential, raw.
    pub fn credential_hmac(&self, prefix: &str, credential: &str) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(prefix.as_bytes());
        mac.update(credential.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// One Standard Webhooks v1 entry: `v1,<base64>`.
    pub fn sign_v1(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let digest = self.mac_v1(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", BASE64.encode(digest))
    }

    /// Checks a hex signature in constant time. Upper- and lowercase hex are both accepted.
    pub fn verify_hex(&self, body: &[u8], signature_hex: &str) -> bool {
        let Ok(expected) = hex::decode(signature_hex.trim()) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    }

    /// Checks a `webhook-signature` header value (space-separated `v1,<base64>` entries); true
    /// if any of its first [`MAX_SIGNATURE_ENTRIES`] v1 entries matches. Entries of other
    /// versions are skipped, as the spec asks. The HMAC is computed once, however many entries
    /// there are, and each entry is compared in constant time.
    pub fn verify_v1(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        use subtle::ConstantTimeEq;
        let digest = self.mac_v1(id, timestamp, body).finalize().into_bytes();
        header
            .split_whitespace()
            .take(MAX_SIGNATURE_ENTRIES)
            .any(|entry| {
                let Some(encoded) = entry.strip_prefix("v1,") else {
                    return false;
                };
                let Ok(expected) = BASE64.decode(encoded) else {
                    return false;
                };
                bool::from(digest.as_slice().ct_eq(&expected))
            })
    }
}

/// The signature headers of one outbound attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `X-Webhook-Signature`, signed with the primary key.
    pub hex: String,
    /// `webhook-signature`: one `v1,` entry per key, primary first.
    pub v1: String,
}

/// Signs `body` with every key. `keys` is never empty on a validated config; the first key is
/// the primary one.
pub fn sign_all(keys: &[Key], id: &str, timestamp: i64, body: &[u8]) -> SignatureHeaders {
    let hex = keys.first().map(|k| k.sign_hex(body)).unwrap_or_default();
    let v1 = keys
        .iter()
        .map(|k| k.sign_v1(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ");
    SignatureHeaders { hex, v1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_published_example() {
        // The example every Standard Webhooks reference library tests against.
        let key = Key::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let sig = key.sign_v1(id, 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(key.verify_v1(id, 1614265330, body, &sig));
        assert!(key.verify_v1(id, 1614265330, body, &format!("v2,abc v1,Zm9v {sig}")));
        assert!(!key.verify_v1(id, 1614265331, body, &sig));
    }

    #[test]
    fn hex_scheme_matches_openssl() {
        // printf '%s' '{"id":"evt_1","event":"edge.test"}' |
        //   openssl dgst -sha256 -hmac 's3cret' -hex
        let key = Key::from_secret("s3cret").unwrap();
        let body = br#"{"id":"evt_1","event":"edge.test"}"#;
        assert_eq!(
            key.sign_hex(body),
            "0eedd43f8c6c5cb4431eb9dd2c6fbc13a58ca64c504a05700843e0388cb27080"
        );
    }

    #[test]
    fn hex_verification_is_exact() {
        let key = Key::from_secret("s3cret").unwrap();
        let body = b"{}";
        let sig = key.sign_hex(body);
        assert!(key.verify_hex(body, &sig));
        assert!(key.verify_hex(body, &sig.to_uppercase()));
        assert!(!key.verify_hex(b"{} ", &sig));
        assert!(!key.verify_hex(body, &sig[..62]));
        assert!(!key.verify_hex(body, "not hex"));
        assert!(!Key::from_secret("other").unwrap().verify_hex(body, &sig));
    }

    #[test]
    fn rotation_signs_with_every_key_primary_first() {
        let keys = vec![
            Key::from_secret("new").unwrap(),
            Key::from_secret("old").unwrap(),
        ];
        let h = sign_all(&keys, "evt_1", 1700000000, b"{}");
        let entries: Vec<_> = h.v1.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], keys[0].sign_v1("evt_1", 1700000000, b"{}"));
        assert_eq!(entries[1], keys[1].sign_v1("evt_1", 1700000000, b"{}"));
        assert_eq!(h.hex, keys[0].sign_hex(b"{}"));
        // A receiver that only knows the old key still verifies the header.
        assert!(keys[1].verify_v1("evt_1", 1700000000, b"{}", &h.v1));
    }

    #[test]
    fn key_derivation() {
        assert_eq!(Key::from_secret("").unwrap_err(), KeyError::Empty);
        assert_eq!(
            Key::from_secret("whsec_!!").unwrap_err(),
            KeyError::BadWhsec
        );
        assert_eq!(Key::from_secret("whsec_").unwrap_err(), KeyError::Empty);
        assert_eq!(Key::from_secret("plain").unwrap().0, b"plain");
        assert_eq!(Key::from_secret("whsec_AAEC").unwrap().0, vec![0, 1, 2]);
    }
}
