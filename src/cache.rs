//! Caches: in-process TTL caches with single-flight loading.
//!
//! Owns: expiry per entry (positive and negative answers live for different times), collapsing
//! concurrent loads of one key into one load, and the `cache_requests_total` hit/miss counts.
//! Must not: decide what is cached or for how long (callers pass the TTL with the value), or
//! cache errors (a failed load is retried by the next request).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::metrics::Metrics;

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

    pub async fn get(&self, key: &str) -> Option<V> {
        let hit = self.inner.get(key).await.map(|t| t.value);
        self.metrics.cache(self.name, if hit.is_some() { "hit" } else { "miss" });
        hit
    }

    pub async fn insert(&self, key: String, value: V, ttl: Duration) {
        self.inner.insert(key, Timed { value, ttl }).await;
    }

    pub async fn remove(&self, key: &str) {
        self.inner.invalidate(key).await;
    }

    /// Returns the cached value, or runs `load` once for all concurrent callers of this key and
    /// caches its value for the TTL it returns. Errors are shared with the waiting callers and
    /// not cached.
    pub async fn get_or_load<E, F>(&self, key: String, load: F) -> Result<V, Arc<E>>
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<(V, Duration), E>>,
    {
        let entry = self
            .inner
            .entry(key)
            .or_try_insert_with(async move { load.await.map(|(value, ttl)| Timed { value, ttl }) })
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
                    .get_or_load::<(), _>("k".into(), async move {
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
        assert!(cache.get_or_load("k".into(), async { Err::<(u32, Duration), _>("down") }).await.is_err());
        let v = cache.get_or_load::<&str, _>("k".into(), async { Ok((1, Duration::from_secs(60))) }).await;
        assert_eq!(v.unwrap(), 1);
    }
}
