//! Integrity of the values the replicas share through Redis: Redis is a cache, never an
//! authority.
//!
//! Owns: sealing a value with an HMAC-SHA256 bound to its Redis key name (or pub/sub channel),
//! and opening it again. The MAC keys are derived with HKDF-SHA256 under a fixed label from the
//! signing key ring every replica already shares (no new secret to distribute): the first key
//! seals, any key of the ring opens, so a key rotation turns older values into misses, never
//! into errors. `cache.redis_integrity_key_file` may name an explicit key instead. A sealed
//! value is text: `eg1.<key tag>.<MAC, base64url>.<payload>`. Must not: do I/O, log a value or a
//! key, or accept a value whose MAC does not verify (the caller treats it as a miss).
//!
//! Anyone who can write to Redis can still delete values (a miss) or replay a value sealed for
//! the same key name earlier (the values carry their own expiry where that matters); they can
//! no longer plant one: no JWKS key, group decision, user record or revocation of their own.

use aws_lc_rs::{hkdf, hmac};
use base64::Engine;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// The HKDF salt: fixed, so that every replica derives the same keys.
const SALT: &[u8] = b"entra-gateway/redis-integrity";
/// The HKDF info: what the derived key is for.
const INFO: &[u8] = b"entra-gateway redis value MAC v1";
const VERSION: &str = "eg1";
/// Length of the base64url text of a 32-byte MAC.
const MAC_LEN: usize = 43;

/// Why a value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not a sealed value at all (garbage, an older format, or planted).
    #[error("not a sealed value")]
    Malformed,
    /// Sealed with a key this replica does not hold (a rotated-out key): a plain miss.
    #[error("sealed with a key no longer in the ring")]
    UnknownKey,
    /// The MAC does not verify: the value, or the key it was stored under, was tampered with.
    #[error("the integrity check failed")]
    BadMac,
}

impl SealError {
    /// Whether this is a tampering sign (counted and logged), rather than an ordinary miss.
    pub fn is_integrity_failure(self) -> bool {
        !matches!(self, SealError::UnknownKey)
    }
}

struct MacKey {
    /// Short public id of the key: which key of the ring sealed a value.
    tag: String,
    key: hmac::Key,
}

/// Seals and opens shared values.
pub struct Sealer {
    /// The first seals; every one opens.
    keys: Vec<MacKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("keys", &self.keys.len()).finish()
    }
}

impl Sealer {
    /// MAC keys derived from each secret in `secrets` (the signing keys' private key bytes, or
    /// the explicit integrity key); the first seals. `None` without any secret.
    pub fn derive<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Option<Sealer> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT);
        let keys: Vec<MacKey> = secrets
            .into_iter()
            .filter_map(|secret| {
                let key: hmac::Key = salt.extract(secret).expand(&[INFO], hmac::HMAC_SHA256).ok()?.into();
                let tag = hmac::sign(&key, b"key tag");
                Some(MacKey { tag: hex(&tag.as_ref()[..4]), key })
            })
            .collect();
        (!keys.is_empty()).then_some(Sealer { keys })
    }

    /// `payload` sealed for the Redis key (or channel) `name`.
    pub fn seal(&self, name: &str, payload: &[u8]) -> Vec<u8> {
        let first = &self.keys[0];
        let mac = mac(&first.key, name, payload);
        let mut out = Vec::with_capacity(VERSION.len() + first.tag.len() + MAC_LEN + payload.len() + 3);
        out.extend_from_slice(VERSION.as_bytes());
        out.push(b'.');
        out.extend_from_slice(first.tag.as_bytes());
        out.push(b'.');
        out.extend_from_slice(B64.encode(mac.as_ref()).as_bytes());
        out.push(b'.');
        out.extend_from_slice(payload);
        out
    }

    /// The payload of a value sealed for `name`, when its MAC verifies with a key of the ring.
    pub fn open<'a>(&self, name: &str, sealed: &'a [u8]) -> Result<&'a [u8], SealError> {
        let mut parts = sealed.splitn(4, |&b| b == b'.');
        let (Some(version), Some(tag), Some(mac_b64), Some(payload)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Malformed);
        };
        if version != VERSION.as_bytes() || mac_b64.len() != MAC_LEN {
            return Err(SealError::Malformed);
        }
        let Ok(given) = B64.decode(mac_b64) else { return Err(SealError::Malformed) };
        let key = self.keys.iter().find(|k| k.tag.as_bytes() == tag).ok_or(SealError::UnknownKey)?;
        hmac::verify(&key.key, &mac_input(name, payload), &given).map_err(|_| SealError::BadMac)?;
        Ok(payload)
    }
}

/// What the MAC covers: a label, the key name and the payload, unambiguously separated.
fn mac_input(name: &str, payload: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(16 + name.len() + payload.len());
    input.extend_from_slice(b"eg1\0");
    input.extend_from_slice(&(name.len() as u64).to_be_bytes());
    input.extend_from_slice(name.as_bytes());
    input.extend_from_slice(payload);
    input
}

fn mac(key: &hmac::Key, name: &str, payload: &[u8]) -> hmac::Tag {
    hmac::sign(key, &mac_input(name, payload))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(secrets: &[&[u8]]) -> Sealer {
        Sealer::derive(secrets.iter().copied()).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_under_its_own_name_only() {
        let s = sealer(&[b"key-one-material"]);
        let sealed = s.seal("p:jwks:t1", br#"{"keys":[]}"#);
        assert_eq!(s.open("p:jwks:t1", &sealed), Ok(&br#"{"keys":[]}"#[..]));
        assert_eq!(s.open("p:jwks:t2", &sealed), Err(SealError::BadMac), "bound to the key name");
        let text = String::from_utf8(sealed.clone()).unwrap();
        assert!(text.starts_with("eg1.") && text.ends_with(r#".{"keys":[]}"#), "{text}");
    }

    #[test]
    fn tampered_planted_or_foreign_values_do_not_open() {
        let s = sealer(&[b"key-one-material"]);
        let mut sealed = s.seal("k", b"payload");
        let n = sealed.len();
        sealed[n - 1] ^= 1;
        assert_eq!(s.open("k", &sealed), Err(SealError::BadMac));
        assert_eq!(s.open("k", b"{\"v\":1,\"d\":\"planted\"}"), Err(SealError::Malformed));
        assert_eq!(s.open("k", b""), Err(SealError::Malformed));
        let other = sealer(&[b"another replica set"]);
        assert_eq!(s.open("k", &other.seal("k", b"payload")), Err(SealError::UnknownKey));
        // An attacker who copies the tag of a real key still needs the key for the MAC.
        let forged = format!("eg1.{}.{}.payload", s.keys[0].tag, "A".repeat(MAC_LEN));
        assert_eq!(s.open("k", forged.as_bytes()), Err(SealError::BadMac));
        assert!(SealError::BadMac.is_integrity_failure() && !SealError::UnknownKey.is_integrity_failure());
    }

    #[test]
    fn after_a_rotation_the_new_first_key_seals_and_the_old_one_still_opens() {
        let old = sealer(&[b"old"]);
        let rotated = sealer(&[b"new", b"old"]);
        let before = old.seal("k", b"v");
        assert_eq!(rotated.open("k", &before), Ok(&b"v"[..]));
        let after = rotated.seal("k", b"v");
        assert_eq!(old.open("k", &after), Err(SealError::UnknownKey), "a miss, not an error");
        assert!(Sealer::derive(std::iter::empty()).is_none());
    }
}
