//! Entra signing keys (JWKS) per tenant: fetch, cache, refresh.
//!
//! Owns: `{authority_host}/{tenant}/discovery/v2.0/keys`, the in-memory key snapshot per tenant
//! (`jwks_ttl`), collapsing concurrent fetches of one tenant into one request, the refetch on an
//! unknown `kid` (at most once per [`UNKNOWN_KID_REFETCH_INTERVAL`] per tenant), and serving
//! stale keys while a refresh fails. With Redis, a tenant's JWKS document is shared: a replica
//! reads it there before asking Entra, and an unknown `kid` that another replica already
//! fetched is found there. Must not: validate tokens (see `entra`), fetch keys for a
//! tenant that is not configured (the caller checks `tid` first), or fetch from a URL taken
//! from a token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};

use crate::cache::redis::RedisStore;
use crate::issuer::unix_now;
use crate::metrics::Metrics;

/// How often an unknown `kid` may trigger a refetch, per tenant.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(300);
/// After a failed refresh, stale keys are served this long without trying again, so that an
/// Entra outage does not make every request wait for a failing fetch.
pub const FAILED_REFRESH_BACKOFF: Duration = Duration::from_secs(30);

/// Why no key could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The keys could not be fetched and none are cached.
    #[error("the tenant's signing keys are unavailable: {0}")]
    Unavailable(String),
    /// The keys are known and none has this `kid`.
    #[error("the token's kid is not a signing key of the tenant")]
    UnknownKid,
}

/// One tenant's RS256 verification keys by `kid`.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, DecodingKey>,
}

impl KeySet {
    /// Parses a JWKS document, keeping the RSA signature keys.
    pub fn parse(body: &[u8]) -> Result<KeySet, String> {
        let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let list = doc.get("keys").and_then(|k| k.as_array()).ok_or("no `keys` array")?;
        let mut keys = HashMap::new();
        for k in list {
            let field = |name: &str| k.get(name).and_then(|v| v.as_str());
            let usable = field("kty") == Some("RSA") && matches!(field("use"), None | Some("sig"));
            if let (true, Some(kid), Some(n), Some(e)) = (usable, field("kid"), field("n"), field("e"))
                && let Ok(key) = DecodingKey::from_rsa_components(n, e)
            {
                keys.insert(kid.to_string(), key);
            }
        }
        if keys.is_empty() {
            return Err("no usable RSA signing key".into());
        }
        Ok(KeySet { keys })
    }

    pub fn get(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Clone)]
struct TenantKeys {
    set: Arc<KeySet>,
    fetched_at: Instant,
}

type Flight = Shared<BoxFuture<'static, Result<Arc<KeySet>, JwksError>>>;

/// A JWKS document as shared in Redis.
#[derive(Serialize, Deserialize)]
struct StoredJwks {
    fetched_at: u64,
    body: String,
}

/// The JWKS cache of every configured tenant.
pub struct JwksCache {
    http: reqwest::Client,
    authority: String,
    ttl: Duration,
    metrics: Metrics,
    redis: Option<Arc<RedisStore>>,
    // std locks: each critical section is a map look-up or insert, never held across an await.
    tenants: RwLock<HashMap<String, TenantKeys>>,
    last_forced: Mutex<HashMap<String, Instant>>,
    last_failed: Mutex<HashMap<String, Instant>>,
    inflight: Mutex<HashMap<String, Flight>>,
}

impl JwksCache {
    pub fn new(
        http: reqwest::Client,
        authority_host: &str,
        ttl: Duration,
        metrics: Metrics,
        redis: Option<Arc<RedisStore>>,
    ) -> JwksCache {
        JwksCache {
            http,
            authority: authority_host.trim_end_matches('/').to_string(),
            ttl,
            metrics,
            redis,
            tenants: RwLock::default(),
            last_forced: Mutex::default(),
            last_failed: Mutex::default(),
            inflight: Mutex::default(),
        }
    }

    /// The key `kid` of tenant `tid`, fetching or refreshing the tenant's keys as needed.
    pub async fn key(&self, tid: &str, kid: &str) -> Result<DecodingKey, JwksError> {
        let set = self.current(tid).await?;
        if let Some(k) = set.get(kid) {
            return Ok(k.clone());
        }
        if !self.may_force_refresh(tid) {
            return Err(JwksError::UnknownKid);
        }
        tracing::info!(tid, "unknown kid: refetching the tenant's signing keys");
        let set = self.refresh(tid, Some(kid)).await?;
        set.get(kid).cloned().ok_or(JwksError::UnknownKid)
    }

    /// Whether keys for `tid` are loaded (readiness).
    pub fn has_keys(&self, tid: &str) -> bool {
        self.tenants.read().map(|t| t.contains_key(tid)).unwrap_or(false)
    }

    /// Makes sure `tid`'s keys are loaded (start-up warm-up); no fetch when they already are.
    pub async fn warm(&self, tid: &str) -> Result<usize, JwksError> {
        self.current(tid).await.map(|s| s.len())
    }

    /// Fresh keys, or refreshed ones, or stale ones when the refresh fails.
    async fn current(&self, tid: &str) -> Result<Arc<KeySet>, JwksError> {
        let cached = self.tenants.read().ok().and_then(|t| t.get(tid).cloned());
        match cached {
            Some(t) if t.fetched_at.elapsed() < self.ttl => Ok(t.set),
            Some(stale) if self.failed_recently(tid) => Ok(stale.set),
            Some(stale) => match self.refresh(tid, None).await {
                Ok(set) => Ok(set),
                Err(e) => {
                    if let Ok(mut failed) = self.last_failed.lock() {
                        failed.insert(tid.to_string(), Instant::now());
                    }
                    tracing::warn!(tid, error = %e, "JWKS refresh failed; serving the previous keys");
                    Ok(stale.set)
                }
            },
            None => self.refresh(tid, None).await,
        }
    }

    fn failed_recently(&self, tid: &str) -> bool {
        self.last_failed
            .lock()
            .map(|f| f.get(tid).is_some_and(|t| t.elapsed() < FAILED_REFRESH_BACKOFF))
            .unwrap_or(false)
    }

    /// Records a forced refresh unless one happened within the interval.
    fn may_force_refresh(&self, tid: &str) -> bool {
        let Ok(mut last) = self.last_forced.lock() else {
            return false;
        };
        let now = Instant::now();
        match last.get(tid) {
            Some(t) if now.duration_since(*t) < UNKNOWN_KID_REFETCH_INTERVAL => false,
            _ => {
                last.insert(tid.to_string(), now);
                true
            }
        }
    }

    /// Fetches `tid`'s keys (from Redis when it has them fresh, or with `want_kid`; else from
    /// Entra); concurrent callers share one request.
    async fn refresh(&self, tid: &str, want_kid: Option<&str>) -> Result<Arc<KeySet>, JwksError> {
        let flight = {
            let mut inflight = self.inflight.lock().map_err(|_| JwksError::Unavailable("lock".into()))?;
            inflight
                .entry(tid.to_string())
                .or_insert_with(|| {
                    let source = Source {
                        http: self.http.clone(),
                        url: self.url(tid),
                        metrics: self.metrics.clone(),
                        redis: self.redis.clone().map(|r| (r.key(&format!("jwks:{tid}")), r)),
                        ttl: self.ttl,
                    };
                    source.fetch(want_kid.map(str::to_string)).boxed().shared()
                })
                .clone()
        };
        let result = flight.clone().await;
        // Publish the keys before releasing the flight, so that no caller in between starts a
        // second fetch.
        if let Ok(set) = &result
            && let Ok(mut tenants) = self.tenants.write()
        {
            let replace = tenants.get(tid).is_none_or(|t| !Arc::ptr_eq(&t.set, set));
            if replace {
                tenants.insert(tid.to_string(), TenantKeys { set: set.clone(), fetched_at: Instant::now() });
            }
        }
        if let Ok(mut inflight) = self.inflight.lock()
            && inflight.get(tid).is_some_and(|f| f.ptr_eq(&flight))
        {
            inflight.remove(tid);
        }
        result
    }

    fn url(&self, tid: &str) -> String {
        format!("{}/{}/discovery/v2.0/keys", self.authority, tid)
    }
}

/// Where a tenant's keys come from.
struct Source {
    http: reqwest::Client,
    url: String,
    metrics: Metrics,
    redis: Option<(String, Arc<RedisStore>)>,
    ttl: Duration,
}

impl Source {
    async fn fetch(self, want_kid: Option<String>) -> Result<Arc<KeySet>, JwksError> {
        if let Some(set) = self.shared_copy(want_kid.as_deref()).await {
            return Ok(Arc::new(set));
        }
        let result = fetch_once(&self.http, &self.url).await;
        let label = if result.is_ok() { "success" } else { "error" };
        self.metrics.jwks_refresh_total.with_label_values(&[label]).inc();
        let (set, body) = result.map_err(|e| {
            tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed");
            JwksError::Unavailable(e)
        })?;
        if let Some((key, redis)) = &self.redis {
            let stored = StoredJwks { fetched_at: unix_now(), body };
            let _ = redis.set_json("jwks", key, &stored, Some(self.ttl)).await;
        }
        Ok(Arc::new(set))
    }

    /// Keys another replica stored: fresh ones, or (for an unknown kid) ones that have it.
    async fn shared_copy(&self, want_kid: Option<&str>) -> Option<KeySet> {
        let (key, redis) = self.redis.as_ref()?;
        let stored: StoredJwks = redis.get_json("jwks", key).await.ok()??;
        let set = KeySet::parse(stored.body.as_bytes()).ok()?;
        let usable = match want_kid {
            Some(kid) => set.get(kid).is_some(),
            None => unix_now().saturating_sub(stored.fetched_at) < self.ttl.as_secs(),
        };
        usable.then_some(set)
    }
}

async fn fetch_once(http: &reqwest::Client, url: &str) -> Result<(KeySet, String), String> {
    let resp = http.get(url).send().await.map_err(|e| format!("request failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body = resp.text().await.map_err(|e| format!("body: {e}"))?;
    Ok((KeySet::parse(body.as_bytes())?, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{MockEntra, MockSettings};

    #[tokio::test]
    async fn stale_keys_keep_serving_during_an_outage_without_a_fetch_per_request() {
        let mock = MockEntra::start(MockSettings::default()).await.unwrap();
        let tid = mock.settings().tenant_id.clone();
        let kid = mock.state().signing_kid();
        // ttl 0: the keys are stale as soon as they are fetched.
        let cache =
            JwksCache::new(reqwest::Client::new(), &mock.authority_host(), Duration::ZERO, Metrics::new(), None);
        assert!(cache.key(&tid, &kid).await.is_ok());
        assert_eq!(mock.state().calls("jwks"), 1);
        mock.state().set_jwks_status(Some(503));
        assert!(cache.key(&tid, &kid).await.is_ok(), "stale keys serve while the refresh fails");
        assert_eq!(mock.state().calls("jwks"), 2);
        for _ in 0..5 {
            assert!(cache.key(&tid, &kid).await.is_ok());
        }
        assert_eq!(mock.state().calls("jwks"), 2, "no refetch within the back-off");
    }

    #[test]
    fn jwks_parsing_keeps_rsa_signature_keys_only() {
        let doc = br#"{"keys":[
            {"kty":"RSA","use":"enc","kid":"enc","n":"sXch","e":"AQAB"},
            {"kty":"EC","kid":"ec","crv":"P-256","x":"a","y":"b"},
            {"kty":"RSA","use":"sig","kid":"good","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}
        ]}"#;
        let set = KeySet::parse(doc).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.get("good").is_some());
        assert!(KeySet::parse(br#"{"keys":[]}"#).is_err());
        assert!(KeySet::parse(b"<html>").is_err());
    }
}
