//! Revoked internal tokens (logout).
//!
//! Owns: remembering a revoked `jti` until the token would have expired anyway, behind
//! [`RevocationStore`]: in-process, or in Redis so that a logout on one replica is honoured by
//! all. With Redis down, a replica still honours the revocations it made itself, and refuses
//! (503) what it cannot check only when `revocation_requires_redis` is set. Must not: verify
//! tokens (see `access`) or keep an entry longer than the token's remaining life.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::redis::RedisStore;

use moka::Expiry;

use crate::cache::StoreError;

/// Where revoked token ids live.
#[async_trait::async_trait]
pub trait RevocationStore: Send + Sync {
    /// Revokes `jti` for `ttl` (the token's remaining life).
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<(), StoreError>;
    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError>;
}

/// Entries carry their deadline (`tokio::time`, so tests can advance it); moka's own expiry,
/// a little later, only frees the memory.
struct UntilExpiry;

impl Expiry<String, tokio::time::Instant> for UntilExpiry {
    fn expire_after_create(&self, _key: &String, until: &tokio::time::Instant, _now: Instant) -> Option<Duration> {
        Some(until.saturating_duration_since(tokio::time::Instant::now()) + Duration::from_secs(1))
    }
}

/// In-process revocations, bounded and self-expiring.
pub struct MemoryRevocations {
    revoked: moka::sync::Cache<String, tokio::time::Instant>,
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
            self.revoked.insert(jti.to_string(), tokio::time::Instant::now() + ttl);
        }
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        Ok(self.revoked.get(jti).is_some_and(|until| tokio::time::Instant::now() < until))
    }
}

/// Revocations shared through Redis (`{prefix}revoked:{jti}`, expiring with the token).
pub struct RedisRevocations {
    redis: Arc<RedisStore>,
    local: MemoryRevocations,
    requires_redis: bool,
}

impl RedisRevocations {
    pub fn new(redis: Arc<RedisStore>, requires_redis: bool) -> RedisRevocations {
        RedisRevocations { redis, local: MemoryRevocations::default(), requires_redis }
    }

    fn key(&self, jti: &str) -> String {
        self.redis.key(&format!("revoked:{jti}"))
    }
}

#[async_trait::async_trait]
impl RevocationStore for RedisRevocations {
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<(), StoreError> {
        self.local.revoke(jti, ttl).await?;
        match self.redis.set_raw(&self.key(jti), b"1", Some(ttl)).await {
            Ok(()) => Ok(()),
            Err(e) if self.requires_redis => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "logout recorded on this replica only (redis unavailable)");
                Ok(())
            }
        }
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        if self.local.is_revoked(jti).await? {
            return Ok(true);
        }
        match self.redis.exists(&self.key(jti)).await {
            Ok(revoked) => Ok(revoked),
            Err(e) if self.requires_redis => Err(e),
            Err(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_revoked_jti_is_remembered_until_its_deadline_and_others_are_not() {
        let r = MemoryRevocations::default();
        r.revoke("a", Duration::from_secs(60)).await.unwrap();
        assert!(r.is_revoked("a").await.unwrap());
        assert!(!r.is_revoked("b").await.unwrap());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(r.is_revoked("a").await.unwrap(), "one second before the deadline");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!r.is_revoked("a").await.unwrap(), "at the deadline the token has expired anyway");
    }
}
