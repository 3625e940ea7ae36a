//! Revoked internal tokens (logout).
//!
//! Owns: remembering a revoked `jti` until the token would have expired anyway, behind
//! [`RevocationStore`] (in-process here; Redis shares it between replicas). Must not: verify
//! tokens (see `access`) or keep an entry longer than the token's remaining life.

use std::time::{Duration, Instant};

use moka::Expiry;

use crate::directory::StoreError;

/// Where revoked token ids live.
#[async_trait::async_trait]
pub trait RevocationStore: Send + Sync {
    /// Revokes `jti` for `ttl` (the token's remaining life).
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<(), StoreError>;
    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError>;
}

struct UntilExpiry;

impl Expiry<String, Duration> for UntilExpiry {
    fn expire_after_create(&self, _key: &String, ttl: &Duration, _now: Instant) -> Option<Duration> {
        Some(*ttl)
    }
}

/// In-process revocations, bounded and self-expiring.
pub struct MemoryRevocations {
    revoked: moka::sync::Cache<String, Duration>,
}

impl Default for MemoryRevocations {
    fn default() -> Self {
        MemoryRevocations {
            revoked: moka::sync::Cache::builder().max_capacity(1_000_000).expire_after(UntilExpiry).build(),
        }
    }
}

#[async_trait::async_trait]
impl RevocationStore for MemoryRevocations {
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<(), StoreError> {
        if !ttl.is_zero() {
            self.revoked.insert(jti.to_string(), ttl);
        }
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        Ok(self.revoked.contains_key(jti))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_revoked_jti_is_remembered_and_others_are_not() {
        let r = MemoryRevocations::default();
        r.revoke("a", Duration::from_secs(60)).await.unwrap();
        assert!(r.is_revoked("a").await.unwrap());
        assert!(!r.is_revoked("b").await.unwrap());
    }
}
