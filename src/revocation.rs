//! Revoked internal tokens (logout).
//!
//! Owns: remembering a revoked `jti` until the token would have expired anyway, behind
//! [`RevocationStore`]: in-process, or in Redis so that a logout on one replica is honoured by
//! all. With Redis (single node), every replica follows a feed: a logout is written to
//! `{prefix}revoked:{jti}` and published on `{prefix}revocations`; each replica subscribes,
//! copies what it hears into its in-process set, re-reads every `revoked:*` key when it
//! (re)subscribes and every [`RESYNC_EVERY`], and checks its subscription with a PING every
//! [`FEED_PING_EVERY`]. While the feed is live a proxied request costs no Redis round trip.
//! When it is lost (or with a Redis Cluster, which has no feed here) the replica asks Redis per
//! request, as before: with Redis down it still honours the revocations it made or heard, and
//! refuses (503) what it cannot check only when `revocation_requires_redis` is set. Must not:
//! verify tokens (see `access`) or keep an entry longer than the token's remaining life.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::cache::redis::RedisStore;

use moka::Expiry;

use crate::cache::StoreError;

/// Where revoked token ids live.
#[async_trait::async_trait]
pub trait RevocationStore: Send + Sync {
    /// Revokes `jti` for `ttl` (the token's remaining life).
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<(), StoreError>;
    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError>;
    /// Follows the revocations of other replicas until the task is dropped (a no-op for
    /// stores that have no feed).
    async fn follow(&self) {}
}

/// How often a replica re-reads every revocation while its feed is live (a message it could
/// have missed is picked up at the latest then).
pub const RESYNC_EVERY: Duration = Duration::from_secs(60);
/// How often the subscription is checked with a PING; no answer within the Redis timeout and
/// the feed counts as lost.
pub const FEED_PING_EVERY: Duration = Duration::from_secs(5);

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

impl MemoryRevocations {
    fn insert(&self, jti: &str, ttl: Duration) {
        if !ttl.is_zero() {
            self.revoked.insert(jti.to_string(), tokio::time::Instant::now() + ttl);
        }
    }
}

#[async_trait::async_trait]
impl RevocationStore for MemoryRevocations {
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<(), StoreError> {
        self.insert(jti, ttl);
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        Ok(self.revoked.get(jti).is_some_and(|until| tokio::time::Instant::now() < until))
    }
}

/// Revocations shared through Redis (`{prefix}revoked:{jti}` holding the token's expiry in Unix
/// milliseconds, expiring with it), followed through the `{prefix}revocations` channel.
pub struct RedisRevocations {
    redis: Arc<RedisStore>,
    local: MemoryRevocations,
    requires_redis: bool,
    /// Subscribed and resynced: the local set is complete, Redis need not be asked.
    live: AtomicBool,
    feed_up: prometheus::IntGauge,
}

impl RedisRevocations {
    pub fn new(redis: Arc<RedisStore>, requires_redis: bool, feed_up: prometheus::IntGauge) -> RedisRevocations {
        feed_up.set(0);
        RedisRevocations {
            redis,
            local: MemoryRevocations::default(),
            requires_redis,
            live: AtomicBool::new(false),
            feed_up,
        }
    }

    fn key(&self, jti: &str) -> String {
        self.redis.key(&format!("revoked:{jti}"))
    }

    fn channel(&self) -> String {
        self.redis.key("revocations")
    }

    fn set_live(&self, live: bool) {
        if self.live.swap(live, Ordering::Relaxed) != live {
            self.feed_up.set(live as i64);
            if live {
                tracing::info!(
                    "revocation feed live: logouts on other replicas are followed without a Redis call per request"
                );
            } else {
                tracing::warn!("revocation feed lost: asking Redis per request until it is back");
            }
        }
    }

    /// Remembers `jti` until `until_ms` (Unix milliseconds).
    fn remember(&self, jti: &str, until_ms: u64) {
        let left = until_ms.saturating_sub(crate::clock::unix_now_ms());
        self.local.insert(jti, Duration::from_millis(left));
    }

    /// Copies every revocation in Redis into the local set.
    async fn resync(&self) -> Result<usize, StoreError> {
        let prefix = self.key("");
        let entries = self.redis.scan_values(&format!("{prefix}*")).await?;
        let mut n = 0;
        for (key, until) in entries {
            let (Some(jti), Some(until)) = (key.strip_prefix(&prefix), until.and_then(|u| u.parse::<u64>().ok()))
            else {
                continue;
            };
            self.remember(jti, until);
            n += 1;
        }
        Ok(n)
    }

    /// One subscription: subscribe, resync, then apply messages until the connection fails.
    async fn follow_once(&self, client: &redis::Client) -> Result<(), String> {
        let t = self.redis.timeout().max(Duration::from_secs(1));
        let within = |what: &'static str| move |_| format!("{what}: timed out");
        let mut pubsub = tokio::time::timeout(t, client.get_async_pubsub())
            .await
            .map_err(within("connect"))?
            .map_err(|e| format!("connect: {e}"))?;
        tokio::time::timeout(t, pubsub.subscribe(self.channel()))
            .await
            .map_err(within("subscribe"))?
            .map_err(|e| format!("subscribe: {e}"))?;
        let (mut sink, mut messages) = pubsub.split();
        let heard = self.resync().await.map_err(|e| e.to_string())?;
        tracing::debug!(revocations = heard, "revocations resynced");
        self.set_live(true);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + FEED_PING_EVERY, FEED_PING_EVERY);
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC_EVERY, RESYNC_EVERY);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { return Err("connection closed".into()) };
                    match parse_message(msg.get_payload_bytes()) {
                        Some((jti, until)) => self.remember(jti, until),
                        None => tracing::debug!("ignored a malformed revocation message"),
                    }
                }
                _ = ping.tick() => {
                    tokio::time::timeout(t, sink.ping::<redis::Value>())
                        .await
                        .map_err(within("ping"))?
                        .map_err(|e| format!("ping: {e}"))?;
                }
                _ = resync.tick() => {
                    self.resync().await.map_err(|e| e.to_string())?;
                }
            }
        }
    }
}

/// `"{jti} {until_unix_ms}"`.
fn parse_message(payload: &[u8]) -> Option<(&str, u64)> {
    let (jti, until) = std::str::from_utf8(payload).ok()?.split_once(' ')?;
    Some((jti, until.parse().ok()?)).filter(|(j, _)| !j.is_empty())
}

#[async_trait::async_trait]
impl RevocationStore for RedisRevocations {
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<(), StoreError> {
        self.local.revoke(jti, ttl).await?;
        let until = (crate::clock::unix_now_ms() + ttl.as_millis() as u64).to_string();
        let stored = self.redis.set_raw(&self.key(jti), until.as_bytes(), Some(ttl)).await;
        if stored.is_ok()
            && let Err(e) = self.redis.publish(&self.channel(), &format!("{jti} {until}")).await
        {
            // Stored: the other replicas find it at their next resync, or per request.
            tracing::warn!(error = %e, "logout stored but not published");
        }
        match stored {
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
        if self.live.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match self.redis.exists(&self.key(jti)).await {
            Ok(revoked) => Ok(revoked),
            Err(e) if self.requires_redis => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// Subscribes again after a failure (backing off to 10 s); the feed is not live meanwhile.
    async fn follow(&self) {
        let Some(client) = self.redis.pubsub_client().cloned() else { return };
        let mut delay = Duration::from_millis(200);
        loop {
            let started = tokio::time::Instant::now();
            let why = self.follow_once(&client).await.err().unwrap_or_default();
            self.set_live(false);
            if started.elapsed() > Duration::from_secs(30) {
                delay = Duration::from_millis(200);
            }
            tracing::debug!(error = %why, retry_in_ms = delay.as_millis() as u64, "revocation feed down");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_messages_are_a_jti_and_an_expiry_and_anything_else_is_ignored() {
        assert_eq!(parse_message(b"abc 1700000000000"), Some(("abc", 1_700_000_000_000)));
        for bad in [&b"abc"[..], b" 17", b"abc x", b"abc -1", b"\xff 1", b""] {
            assert_eq!(parse_message(bad), None, "{bad:?}");
        }
    }

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
