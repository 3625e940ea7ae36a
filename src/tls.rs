//! TLS with rustls: the public listener's certificate (re-read when its files change, as
//! Kubernetes rotates secrets), ALPN (h2, http/1.1), and the extra CA bundle trusted for
//! outbound calls.
//!
//! Owns: reading PEM certificates and keys, swapping the served certificate atomically (new
//! handshakes see the new one, open connections keep theirs), and refusing a broken new pair
//! while the old one keeps serving. Must not: log key material.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// Certificates of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

/// Certificates of PEM text.
pub fn read_certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = read_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signing = aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| format!("{} does not match {}: {e}", key.display(), cert.display()))?;
    Ok(pair)
}

fn fingerprint(cert: &Path, key: &Path) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(std::fs::read(cert).ok()?);
    h.update(std::fs::read(key).ok()?);
    Some(h.finalize().into())
}

/// The listener's current certificate; swapped in place on reload.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
    loaded: ArcSwap<Option<[u8; 32]>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ReloadingCert {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<ReloadingCert>, String> {
        let pair = load_pair(cert_file, key_file)?;
        Ok(Arc::new(ReloadingCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: ArcSwap::from_pointee(pair),
            loaded: ArcSwap::from_pointee(fingerprint(cert_file, key_file)),
        }))
    }

    /// The files to watch.
    pub fn files(&self) -> [&Path; 2] {
        [&self.cert_file, &self.key_file]
    }

    /// Re-reads the files; `Ok(true)` when a new certificate now serves, `Ok(false)` when the
    /// files did not change, `Err` (old certificate kept) when the new pair is unusable.
    pub fn reload(&self) -> Result<bool, String> {
        let now = fingerprint(&self.cert_file, &self.key_file);
        if now.is_none() || **self.loaded.load() == now {
            return Ok(false);
        }
        let pair = load_pair(&self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(pair));
        self.loaded.store(Arc::new(now));
        Ok(true)
    }

    /// The server configuration of the listener (TLS 1.2/1.3, ALPN h2 and http/1.1).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_mismatched_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "not a cert").unwrap();
        assert!(ReloadingCert::load(&cert, &dir.path().join("k.pem")).is_err());
    }
}
