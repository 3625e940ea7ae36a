//! Caches: in-process TTL caches with single-flight loading, and the tiered cache that puts
//! Redis (shared by the replicas) behind them.
//!
//! Owns: expiry per entry (positive and negative answers live for different times), collapsing
//! concurrent loads of one key into one load (in process, and across replicas with a short
//! Redis lock), degrading to direct loads when Redis fails, and the `cache_requests_total`
//! counts. Must not: decide what is cached or for how long (callers pass the TTL with the
//! value), or cache errors (a failed load is retried by the next request).

pub mod redis;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::metrics::Metrics;
use redis::RedisStore;

/// A storage failure (Redis down or slow); the message names the operation, never a value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// How long a replica may hold the load lock of a key before others stop waiting for it.
const LOCK_TTL: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Timed<V> {
    value: V,
    ttl: Duration,
}

struct PerEntryTtl;

impl<V> Expiry<String, Timed<V>> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Timed<V>, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// A bounded in-process cache whose entries each carry their own TTL.
#[derive(Clone)]
pub struct TtlCache<V: Clone + Send + Sync + 'static> {
    name: &'static str,
    inner: moka::future::Cache<String, Timed<V>>,
    metrics: Metrics,
}

impl<V: Clone + Send + Sync + 'static> TtlCache<V> {
    /// `name` is the `cache` label of the metrics; `capacity` bounds the entry count.
    pub fn new(name: &'static str, capacity: u64, metrics: Metrics) -> Self {
        let inner = moka::future::Cache::builder().max_capacity(capacity).expire_after(PerEntryTtl).build();
        TtlCache { name, inner, metrics }
    }

    /// Returns the cached value, or runs `load` once for all concurrent callers of this key and
    /// caches its value for the TTL it returns. Errors are shared with the waiting callers and
    /// not cached. `load` makes the loading future only on a miss, and that future is boxed:
    /// a source's call (Graph, Redis) is a large future, which a hit neither builds nor moves.
    pub async fn get_or_load<E, F, L>(&self, key: String, load: L) -> Result<V, Arc<E>>
    where
        E: Send + Sync + 'static,
        L: FnOnce() -> F,
        F: Future<Output = Result<(V, Duration), E>>,
    {
        if let Some(hit) = self.inner.get(&key).await {
            self.metrics.cache(self.name, "hit");
            return Ok(hit.value);
        }
        Box::pin(self.load(key, load)).await
    }

    async fn load<E, F, L>(&self, key: String, load: L) -> Result<V, Arc<E>>
    where
        E: Send + Sync + 'static,
        L: FnOnce() -> F,
        F: Future<Output = Result<(V, Duration), E>>,
    {
        let entry = self
            .inner
            .entry(key)
            .or_try_insert_with(async move { load().await.map(|(value, ttl)| Timed { value, ttl }) })
            .await;
        match entry {
            Ok(e) => {
                self.metrics.cache(self.name, if e.is_fresh() { "miss" } else { "hit" });
                Ok(e.into_value().value)
            }
            Err(e) => {
                self.metrics.cache(self.name, "error");
                Err(e)
            }
        }
    }
}

/// An in-process cache in front of Redis: L1 (short TTL) -> Redis -> one loader per key across
/// the replicas -> the source. Without Redis it is the in-process cache alone.
pub struct TieredCache<V: Clone + Send + Sync + 'static> {
    name: &'static str,
    l1: TtlCache<V>,
    redis: Option<Arc<RedisStore>>,
    l1_ttl: Duration,
}

impl<V> TieredCache<V>
where
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    /// `name` is the metrics label and the Redis key namespace (`{prefix}{name}:{key}`).
    pub fn new(
        name: &'static str,
        capacity: u64,
        metrics: Metrics,
        redis: Option<Arc<RedisStore>>,
        l1_ttl: Duration,
    ) -> Self {
        TieredCache { name, l1: TtlCache::new(name, capacity, metrics), redis, l1_ttl }
    }

    /// The cached value, or `load`'s (run once per key in this process and, with Redis, once
    /// across the replicas while the others wait for its answer).
    pub async fn get_or_load<E, F, L>(&self, key: String, load: L) -> Result<V, Arc<E>>
    where
        E: Send + Sync + 'static,
        L: FnOnce() -> F,
        F: Future<Output = Result<(V, Duration), E>>,
    {
        let Some(redis) = self.redis.clone() else {
            return self.l1.get_or_load(key, load).await;
        };
        let rkey = redis.key(&format!("{}:{key}", self.name));
        let (name, l1_ttl) = (self.name, self.l1_ttl);
        self.l1
            .get_or_load(key, move || async move {
                match redis.get_json::<V>(name, &rkey).await {
                    Ok(Some(v)) => Ok((v, l1_ttl)),
                    Ok(None) => load_with_lock(&redis, name, &rkey, l1_ttl, load()).await,
                    // Redis is down: straight to the source, and keep the answer in process.
                    Err(_) => load().await,
                }
            })
            .await
    }
}

/// Loads under a Redis lock so that one replica asks the source; the others wait for its
/// answer, or load themselves when the holder's lock expires or Redis fails.
async fn load_with_lock<V, E, F>(
    redis: &RedisStore,
    name: &'static str,
    rkey: &str,
    l1_ttl: Duration,
    load: F,
) -> Result<(V, Duration), E>
where
    V: Serialize + DeserializeOwned,
    F: Future<Output = Result<(V, Duration), E>>,
{
    let lock_key = format!("{rkey}:lock");
    let token = uuid::Uuid::new_v4().to_string();
    match redis.set_nx(&lock_key, &token, LOCK_TTL).await {
        Ok(true) => {
            let result = load.await;
            if let Ok((v, ttl)) = &result
                && !ttl.is_zero()
            {
                let _ = redis.set_json(name, rkey, v, Some(*ttl)).await;
            }
            let _ = redis.del_if(&lock_key, &token).await;
            result.map(|(v, ttl)| (v, ttl.min(l1_ttl)))
        }
        Ok(false) => {
            let deadline = Instant::now() + LOCK_TTL;
            let mut delay = Duration::from_millis(5);
            while Instant::now() < deadline {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(100));
                match redis.get_json::<V>(name, rkey).await {
                    Ok(Some(v)) => return Ok((v, l1_ttl)),
                    Ok(None) if matches!(redis.exists(&lock_key).await, Ok(true)) => continue,
                    _ => break,
                }
            }
            tracing::debug!(key = rkey, "lock holder gave no answer; loading directly");
            load.await.map(|(v, ttl)| (v, ttl.min(l1_ttl)))
        }
        Err(_) => load.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_loads_of_one_key_run_the_loader_once() {
        let cache: TtlCache<u32> = TtlCache::new("t", 100, Metrics::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, calls, gate) = (cache.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load::<(), _, _>("k".into(), move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Ok((7, Duration::from_secs(60)))
                    })
                    .await
            }));
        }
        // Release the single loader once it is running; the others wait on it.
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failed_loads_are_not_cached() {
        let cache: TtlCache<u32> = TtlCache::new("t", 100, Metrics::new());
        assert!(cache.get_or_load("k".into(), || async { Err::<(u32, Duration), _>("down") }).await.is_err());
        let v = cache.get_or_load::<&str, _, _>("k".into(), || async { Ok((1, Duration::from_secs(60))) }).await;
        assert_eq!(v.unwrap(), 1);
    }
}
