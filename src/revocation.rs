//! Revoked internal tokens (logout).
//!
//! Owns: remembering a revoked `jti` until the token would have expired anyway, behind
//! [`RevocationStore`]: in-process, or in Redis so that a logout on one replica is honoured by
//! all. With Redis (single node), every replica follows a feed: a logout is written to
//! `{prefix}revoked:{jti}` and published on `{prefix}revocations`; each replica subscribes,
//! copies what it hears into its in-process set, re-reads every `revoked:*` key when it
//! (re)subscribes and every [`RESYNC_EVERY`], and checks its subscription with a PING every
//! [`FEED_PING_EVERY`]; on a Redis Cluster the channel is sharded (`SSUBSCRIBE`/`SPUBLISH`).
//! While the feed is live a proxied request costs no Redis round trip. When it is lost the
//! replica asks Redis per request, as before: with Redis down it still honours the revocations it made or heard, and
//! refuses (503) what it cannot check only when `revocation_requires_redis` is set. Must not:
//! verify tokens (see `access`) or keep an entry longer than the token's remaining life.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::cache::redis::RedisStore;

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use crate::cache::StoreError;

/// Where revoked token ids live.
#[async_trait::async_trait]
pub trait RevocationStore: Send + Sync {
    /// Revokes `jti` for `ttl` (the token's remaining life).
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<(), StoreError>;
    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError>;
    /// The answer of [`RevocationStore::is_revoked`] when it needs no I/O (the local set, a
    /// live feed), without a boxed future; `None`: ask `is_revoked`. The proxy path asks this
    /// first on every request.
    fn is_revoked_locally(&self, _jti: &str) -> Option<bool> {
        None
    }
    /// Follows the revocations of other replicas until the task is dropped (a no-op for
    /// stores that have no feed).
    async fn follow(&self) {}
}

/// How often a replica re-reads every revocation while its feed is live (a message it missed,
/// or a logout whose publish failed, is picked up at the latest then).
pub const RESYNC_EVERY: Duration = Duration::from_secs(5);
/// How often the subscription is checked with a PING; no answer within the Redis timeout and
/// the feed counts as lost.
pub const FEED_PING_EVERY: Duration = Duration::from_secs(5);
/// Waits before the second and third attempt to publish a logout.
const PUBLISH_RETRIES: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(200)];

/// The revoked ids and when each stops mattering (the token's expiry), ordered both ways.
#[derive(Default)]
struct Revoked {
    by_jti: HashMap<String, tokio::time::Instant>,
    by_deadline: BTreeSet<(tokio::time::Instant, String)>,
}

/// In-process revocations, bounded: past `cap`, the soonest-expiring entries go first (they
/// would have stopped mattering soonest), each counted. Entries carry their deadline
/// (`tokio::time`, so tests can advance it) and are dropped once it has passed.
pub struct MemoryRevocations {
    revoked: RwLock<Revoked>,
    /// How many entries `revoked` holds, readable without the lock: while there are none (most
    /// of the time on most gateways), a check takes no lock, whose word every worker thread
    /// would write.
    len: std::sync::atomic::AtomicUsize,
    cap: usize,
    size: prometheus::IntGauge,
    evicted: prometheus::IntCounter,
}

impl MemoryRevocations {
    /// A set of at most `cap` entries, reported in `metrics`.
    pub fn new(cap: usize, metrics: &crate::metrics::Metrics) -> MemoryRevocations {
        MemoryRevocations {
            revoked: RwLock::default(),
            len: Default::default(),
            cap: cap.max(1),
            size: metrics.revocations_local.clone(),
            evicted: metrics.revocations_evicted_total.clone(),
        }
    }

    fn insert(&self, jti: &str, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = tokio::time::Instant::now();
        let deadline = now + ttl;
        let mut r = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        while let Some((d, _)) = r.by_deadline.first()
            && *d <= now
        {
            if let Some((_, gone)) = r.by_deadline.pop_first() {
                r.by_jti.remove(&gone);
            }
        }
        match r.by_jti.get(jti).copied() {
            Some(known) if known >= deadline => {}
            known => {
                if let Some(known) = known {
                    r.by_deadline.remove(&(known, jti.to_string()));
                }
                r.by_jti.insert(jti.to_string(), deadline);
                r.by_deadline.insert((deadline, jti.to_string()));
            }
        }
        while r.by_jti.len() > self.cap {
            let Some((_, gone)) = r.by_deadline.pop_first() else { break };
            r.by_jti.remove(&gone);
            self.evicted.inc();
        }
        self.size.set(r.by_jti.len() as i64);
        self.len.store(r.by_jti.len(), std::sync::atomic::Ordering::Release);
    }

    fn contains(&self, jti: &str) -> bool {
        if self.len.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return false;
        }
        let r = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        r.by_jti.get(jti).is_some_and(|until| tokio::time::Instant::now() < *until)
    }
}

#[async_trait::async_trait]
impl RevocationStore for MemoryRevocations {
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<(), StoreError> {
        self.insert(jti, ttl);
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        Ok(self.contains(jti))
    }

    fn is_revoked_locally(&self, jti: &str) -> Option<bool> {
        Some(self.contains(jti))
    }
}

/// Revocations shared through Redis (`{prefix}revoked:{jti}` holding the token's expiry in Unix
/// milliseconds, sealed and expiring with it), followed through the `{prefix}revocations`
/// channel (sealed messages: a planted one is ignored).
pub struct RedisRevocations {
    redis: Arc<RedisStore>,
    local: MemoryRevocations,
    requires_redis: bool,
    /// Subscribed and resynced: the local set is complete, Redis need not be asked.
    live: AtomicBool,
    feed_up: prometheus::IntGauge,
}

impl RedisRevocations {
    pub fn new(
        redis: Arc<RedisStore>,
        requires_redis: bool,
        local: MemoryRevocations,
        feed_up: prometheus::IntGauge,
    ) -> RedisRevocations {
        feed_up.set(0);
        RedisRevocations { redis, local, requires_redis, live: AtomicBool::new(false), feed_up }
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
        let entries = self.redis.scan_sealed("revocations", &format!("{prefix}*")).await?;
        let mut n = 0;
        for (key, until) in entries {
            let (Some(jti), Some(until)) = (key.strip_prefix(&prefix), parse_until(&until)) else {
                continue;
            };
            self.remember(jti, until);
            n += 1;
        }
        Ok(n)
    }

    /// Publishes a logout, trying up to three times; stored either way, so a replica that
    /// misses it finds it at its next resync (within [`RESYNC_EVERY`]).
    async fn publish(&self, message: &str) {
        let mut last = None;
        for wait in std::iter::once(Duration::ZERO).chain(PUBLISH_RETRIES) {
            tokio::time::sleep(wait).await;
            match self.redis.publish_sealed(&self.channel(), message.as_bytes()).await {
                Ok(()) => return,
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            tracing::warn!(error = %e, "logout stored but not published; other replicas resync within 5s");
        }
    }

    /// One subscription: subscribe, resync, then apply messages until the connection fails.
    async fn follow_once(&self) -> Result<(), String> {
        let t = self.redis.timeout().max(Duration::from_secs(1));
        let mut feed = self.redis.subscribe(&self.channel()).await?;
        let heard = self.resync().await.map_err(|e| e.to_string())?;
        tracing::debug!(revocations = heard, "revocations resynced");
        self.set_live(true);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + FEED_PING_EVERY, FEED_PING_EVERY);
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC_EVERY, RESYNC_EVERY);
        loop {
            tokio::select! {
                msg = feed.next() => {
                    let Some(payload) = msg else { return Err("connection closed".into()) };
                    let opened = self.redis.open_message("revocations", &self.channel(), &payload);
                    match opened.as_deref().and_then(parse_message) {
                        Some((jti, until)) => self.remember(jti, until),
                        None => tracing::debug!("ignored a malformed or unsealed revocation message"),
                    }
                }
                _ = ping.tick() => feed.ping(t).await?,
                _ = resync.tick() => {
                    self.resync().await.map_err(|e| e.to_string())?;
                }
            }
        }
    }
}

/// A stored expiry: Unix milliseconds as text.
fn parse_until(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
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
        let stored = self.redis.set_sealed(&self.key(jti), until.as_bytes(), Some(ttl)).await;
        if stored.is_ok() {
            self.publish(&format!("{jti} {until}")).await;
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

    fn is_revoked_locally(&self, jti: &str) -> Option<bool> {
        if self.local.contains(jti) {
            return Some(true);
        }
        self.live.load(Ordering::Relaxed).then_some(false)
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        if let Some(known) = self.is_revoked_locally(jti) {
            return Ok(known);
        }
        match self.redis.get_sealed_as("get_revocation", "revocations", &self.key(jti)).await {
            Ok(until) => Ok(until.and_then(|u| parse_until(&u)).is_some_and(|u| u > crate::clock::unix_now_ms())),
            Err(e) if self.requires_redis => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// Subscribes again after a failure (backing off to 10 s); the feed is not live meanwhile.
    async fn follow(&self) {
        if !self.redis.has_feed() {
            return;
        }
        let mut delay = Duration::from_millis(200);
        loop {
            let started = tokio::time::Instant::now();
            let why = self.follow_once().await.err().unwrap_or_default();
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
    async fn the_local_set_is_capped_dropping_the_soonest_expiring_first() {
        let metrics = crate::metrics::Metrics::new();
        let r = MemoryRevocations::new(3, &metrics);
        for (jti, secs) in [("a", 50), ("b", 10), ("c", 30), ("d", 40)] {
            r.revoke(jti, Duration::from_secs(secs)).await.unwrap();
        }
        assert!(!r.is_revoked("b").await.unwrap(), "the soonest-expiring went first");
        for jti in ["a", "c", "d"] {
            assert!(r.is_revoked(jti).await.unwrap(), "{jti}");
        }
        assert_eq!(metrics.revocations_evicted_total.get(), 1);
        assert_eq!(metrics.revocations_local.get(), 3);
        // Expired entries make room before anything is evicted.
        tokio::time::advance(Duration::from_secs(31)).await;
        r.revoke("e", Duration::from_secs(60)).await.unwrap();
        assert_eq!(metrics.revocations_evicted_total.get(), 1);
        assert_eq!(metrics.revocations_local.get(), 3, "c expired: a, d, e");
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_jti_is_remembered_until_its_deadline_and_others_are_not() {
        let r = MemoryRevocations::new(100, &crate::metrics::Metrics::new());
        r.revoke("a", Duration::from_secs(60)).await.unwrap();
        assert!(r.is_revoked("a").await.unwrap());
        assert!(!r.is_revoked("b").await.unwrap());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(r.is_revoked("a").await.unwrap(), "one second before the deadline");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!r.is_revoked("a").await.unwrap(), "at the deadline the token has expired anyway");
    }
}
