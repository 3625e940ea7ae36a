//! The gateway's signing keys: loading PEM files, the key ring used for rotation, and
//! `keys generate`.
//!
//! Owns: turning a `SigningKeyConfig` into a checked key pair (a test signature is made at load
//! time so that a bad key fails start-up, not the first exchange), its public JWK, and signing
//! compact JWS with the private key parsed once (jsonwebtoken re-parses it for every token,
//! which for ES256 includes a public-key computation as costly as the signature).
//! Must not: log key material, or accept a key whose algorithm differs from its config entry.

use std::collections::HashMap;
use std::path::Path;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// Algorithms the gateway signs its own tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum SigningAlgorithm {
    ES256,
    RS256,
    EdDSA,
}

/// Why a signing key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a valid {alg:?} private key in PEM form ({reason})")]
    Parse { path: String, alg: SigningAlgorithm, reason: String },
    #[error("cannot generate a key: {0}")]
    Generate(String),
    #[error("{path} exists: refusing to overwrite it (choose another --out)")]
    Exists { path: String },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// One loaded signing key.
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// Public JWK with `kid`, `alg` and `use: sig` set.
    pub jwk: Jwk,
    /// The private key, parsed once.
    signer: Signer,
    /// `base64url({"typ":"JWT","alg":...,"kid":...}).`: the same for every token of this key.
    header_b64: String,
}

/// A parsed private key.
enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Signer {
    fn parse(alg: SigningAlgorithm, der: &[u8]) -> Result<Signer, String> {
        let rejected = |e: aws_lc_rs::error::KeyRejected| e.to_string();
        Ok(match alg {
            SigningAlgorithm::ES256 => {
                Signer::Ec(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(rejected)?)
            }
            SigningAlgorithm::RS256 => Signer::Rsa(RsaKeyPair::from_der(der).map_err(rejected)?),
            SigningAlgorithm::EdDSA => Signer::Ed(Ed25519KeyPair::from_pkcs8(der).map_err(rejected)?),
        })
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let failed = |_| "signing failed".to_string();
        match self {
            Signer::Ec(k) => Ok(k.sign(&SystemRandom::new(), message).map_err(failed)?.as_ref().to_vec()),
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
                    .map_err(failed)?;
                Ok(sig)
            }
            Signer::Ed(k) => Ok(k.sign(message).as_ref().to_vec()),
        }
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("algorithm", &self.algorithm).finish()
    }
}

pub fn jwt_algorithm(alg: SigningAlgorithm) -> Algorithm {
    match alg {
        SigningAlgorithm::ES256 => Algorithm::ES256,
        SigningAlgorithm::RS256 => Algorithm::RS256,
        SigningAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

impl SigningKey {
    /// Reads and checks a PEM key file.
    pub fn load(kid: &str, algorithm: SigningAlgorithm, file: &Path) -> Result<SigningKey, KeyError> {
        let path = file.display().to_string();
        let pem = std::fs::read(file).map_err(|source| KeyError::Read { path: path.clone(), source })?;
        SigningKey::from_pem(kid, algorithm, &pem).map_err(|reason| KeyError::Parse { path, alg: algorithm, reason })
    }

    /// Builds a key from PEM bytes; the error is a reason without key material.
    pub fn from_pem(kid: &str, alg: SigningAlgorithm, pem: &[u8]) -> Result<SigningKey, String> {
        let algorithm = jwt_algorithm(alg);
        let encoding = match alg {
            SigningAlgorithm::ES256 => EncodingKey::from_ec_pem(pem),
            SigningAlgorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            SigningAlgorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        }
        .map_err(|e| e.to_string())?;
        let mut jwk = Jwk::from_encoding_key(&encoding, algorithm).map_err(|e| e.to_string())?;
        jwk.common.key_id = Some(kid.to_string());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
        let signer = Signer::parse(alg, encoding.as_bytes())?;
        let mut header = jsonwebtoken::Header::new(algorithm);
        header.kid = Some(kid.to_string());
        let header_json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
        let header_b64 = format!("{}.", B64.encode(header_json));
        let key = SigningKey { kid: kid.to_string(), algorithm, encoding, decoding, jwk, signer, header_b64 };
        key.self_test()?;
        Ok(key)
    }

    /// The private key's bytes (PKCS#8 / PKCS#1 DER): input key material for keys derived from
    /// it (the Redis integrity key, see `seal`). Never logged or sent.
    pub fn secret_bytes(&self) -> &[u8] {
        self.encoding.as_bytes()
    }

    /// A compact JWS of `claims` signed with this key (header: `typ`, `alg`, `kid`).
    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> Result<String, String> {
        let payload = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 400);
        token.push_str(&self.header_b64);
        B64.encode_string(payload, &mut token);
        let signature = self.signer.sign(token.as_bytes())?;
        token.push('.');
        B64.encode_string(signature, &mut token);
        Ok(token)
    }

    /// Signs and verifies a throwaway token so that a wrong curve or a broken key fails now
    /// (verified by jsonwebtoken, independently of this module's signing).
    fn self_test(&self) -> Result<(), String> {
        let claims = serde_json::json!({"exp": u64::MAX / 2, "sub": "self-test"});
        let token = self.sign(&claims)?;
        let mut v = jsonwebtoken::Validation::new(self.algorithm);
        v.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Value>(&token, &self.decoding, &v)
            .map(|_| ())
            .map_err(|e| format!("self-test signature failed: {e}"))
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// All configured keys: the first signs, every one verifies and is published.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
    by_kid: HashMap<String, usize>,
}

impl KeyRing {
    pub fn from_keys(keys: Vec<SigningKey>) -> KeyRing {
        let by_kid = keys.iter().enumerate().map(|(i, k)| (k.kid.clone(), i)).collect();
        KeyRing { keys, by_kid }
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> Option<&SigningKey> {
        self.keys.first()
    }

    pub fn get(&self, kid: &str) -> Option<&SigningKey> {
        self.by_kid.get(kid).map(|&i| &self.keys[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &SigningKey> {
        self.keys.iter()
    }

    pub fn into_keys(self) -> Vec<SigningKey> {
        self.keys
    }
}

/// A fresh private key in PKCS#8 PEM form (`keys generate`).
pub fn generate_pem(alg: SigningAlgorithm) -> Result<String, KeyError> {
    let gen_err = |e: aws_lc_rs::error::Unspecified| KeyError::Generate(e.to_string());
    let rng = SystemRandom::new();
    let der: Vec<u8> = match alg {
        SigningAlgorithm::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(gen_err)?.as_ref().to_vec()
        }
        SigningAlgorithm::EdDSA => Ed25519KeyPair::generate_pkcs8v1(&rng).map_err(gen_err)?.as_ref().to_vec(),
        SigningAlgorithm::RS256 => {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(gen_err)?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = kp.as_der().map_err(gen_err)?;
            der.as_ref().to_vec()
        }
    };
    Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", der)))
}

/// Writes a new key to `out` with mode 0600, refusing to overwrite an existing file.
pub fn generate_to_file(alg: SigningAlgorithm, out: &Path) -> Result<(), KeyError> {
    use std::io::Write;
    let pem = generate_pem(alg)?;
    let path = out.display().to_string();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(out).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::Exists { path: path.clone() },
        _ => KeyError::Write { path: path.clone(), source },
    })?;
    file.write_all(pem.as_bytes()).map_err(|source| KeyError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_of_every_algorithm_load_and_publish_a_public_jwk() {
        for alg in [SigningAlgorithm::ES256, SigningAlgorithm::EdDSA, SigningAlgorithm::RS256] {
            let pem = generate_pem(alg).unwrap();
            let key = SigningKey::from_pem("k", alg, pem.as_bytes()).unwrap();
            let jwk = serde_json::to_value(&key.jwk).unwrap();
            assert_eq!(jwk["kid"], "k");
            assert_eq!(jwk["use"], "sig");
            assert!(jwk.get("d").is_none(), "private part leaked: {jwk}");
            let token = key.sign(&serde_json::json!({"sub": "x", "exp": 4_000_000_000u64})).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(
                (header.alg, header.kid.as_deref(), header.typ.as_deref()),
                (jwt_algorithm(alg), Some("k"), Some("JWT"))
            );
            let mut v = jsonwebtoken::Validation::new(jwt_algorithm(alg));
            v.validate_aud = false;
            let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &key.decoding, &v).unwrap().claims;
            assert_eq!(claims["sub"], "x", "{alg:?}: signed once-parsed, verified by jsonwebtoken");
        }
    }

    #[test]
    fn a_key_of_the_wrong_algorithm_is_refused() {
        let pem = generate_pem(SigningAlgorithm::EdDSA).unwrap();
        assert!(SigningKey::from_pem("k", SigningAlgorithm::ES256, pem.as_bytes()).is_err());
        assert!(SigningKey::from_pem("k", SigningAlgorithm::RS256, b"garbage").is_err());
    }

    #[test]
    fn generate_to_file_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        generate_to_file(SigningAlgorithm::ES256, &path).unwrap();
        let err = generate_to_file(SigningAlgorithm::ES256, &path).unwrap_err().to_string();
        assert!(err.contains("exists: refusing to overwrite"), "{err}");
        let err = generate_to_file(SigningAlgorithm::ES256, &dir.path().join("no/such/dir/k.pem")).unwrap_err();
        assert!(err.to_string().starts_with("cannot write"), "{err}");
    }
}
