//! Secrets and credentials: values that are never printed, and the client credential the
//! gateway presents to Entra's token endpoint, loaded once from its files.
//!
//! Owns: [`Secret`] (its `Debug` and `Serialize` print `<redacted>`; equality compares the
//! value, so a reload sees a changed secret), redacting a password in a URL, and
//! [`ClientCredential`] (a secret, a federated token file re-read at each use, or a certificate
//! key and thumbprint). Must not: log or print a secret, or read a file at request time other
//! than the federated token file (which AKS rotates).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret value (client secret, Redis password). Never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself: call only where it is sent to its one consumer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Replaces the password of a URL with `<redacted>`.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => "<redacted>".into(),
    }
}

/// How the gateway proves who it is to Entra's token endpoint.
#[derive(Clone)]
pub enum ClientCredential {
    /// `client_secret`.
    Secret(Secret),
    /// A federated token read from this file at every token request (AKS rotates it).
    FederatedTokenFile(std::path::PathBuf),
    /// A JWT signed with the certificate's key; `x5t#S256` names the certificate.
    Certificate { key: jsonwebtoken::EncodingKey, x5t_s256: String },
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCredential::Secret(_) => f.write_str("Secret(<redacted>)"),
            ClientCredential::FederatedTokenFile(p) => write!(f, "FederatedTokenFile({})", p.display()),
            ClientCredential::Certificate { x5t_s256, .. } => write!(f, "Certificate(x5t#S256={x5t_s256})"),
        }
    }
}

impl ClientCredential {
    /// Loads a certificate credential: the PEM certificate (its SHA-256 thumbprint is sent)
    /// and its RSA private key.
    pub fn certificate(cert_file: &std::path::Path, key_file: &std::path::Path) -> Result<ClientCredential, String> {
        use base64::Engine;
        use sha2::Digest;
        let cert = crate::tls::read_certs(cert_file)?.into_iter().next().ok_or("no certificate")?;
        let pem = std::fs::read(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| format!("{}: {e}", key_file.display()))?;
        let x5t_s256 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cert.as_ref()));
        Ok(ClientCredential::Certificate { key, x5t_s256 })
    }
}
