//! Entra signing keys (JWKS) per tenant: fetch, cache, refresh.
//!
//! Owns: `{authority_host}/{tenant}/discovery/v2.0/keys`, the key snapshot per tenant
//! (`jwks_ttl`) with each key's JWKS `issuer`, collapsing concurrent fetches of one tenant into
//! one request, the refetch on an unknown `kid`, and serving stale keys while a refresh fails
//! (for at most `jwks_max_stale` past their TTL, counted in `entra_gateway_jwks_stale`).
//!
//! An unknown `kid` is refused only after the newest key set was looked at: a refetch in flight
//! is joined, one that finished since this request read the keys is seen, and only then may this
//! miss start a refetch of its own, at most once per [`UNKNOWN_KID_COOLDOWN`] per tenant and for
//! at most [`MAX_UNKNOWN_KIDS`] distinct kids per [`UNKNOWN_KID_WINDOW`] (a kid already tried in
//! the window does not trigger again), so that unsigned tokens with random kids cannot keep
//! Entra busy nor hold a real rotation off for long. With Redis, a tenant's JWKS document is
//! shared: a replica reads it there before asking Entra, and an unknown `kid` that another
//! replica already fetched is found there. Time is `tokio::time`, so tests can pause it.
//! Must not: validate tokens (see `entra`), fetch keys for a tenant that is not configured (the
//! caller checks `tid` first), or fetch from a URL taken from a token.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cache::redis::RedisStore;
use crate::clock::unix_now;
use crate::metrics::Metrics;

/// Unknown-`kid` refetches of one tenant are at least this far apart.
pub const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(30);
/// The window in which at most [`MAX_UNKNOWN_KIDS`] distinct unknown kids may trigger a refetch.
pub const UNKNOWN_KID_WINDOW: Duration = Duration::from_secs(300);
/// Distinct unknown kids per tenant and window that may trigger a refetch.
pub const MAX_UNKNOWN_KIDS: usize = 4;
/// After a failed refresh, stale keys are served this long without trying again, so that an
/// Entra outage does not make every request wait for a failing fetch.
pub const FAILED_REFRESH_BACKOFF: Duration = Duration::from_secs(30);

/// Why no key could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The keys could not be fetched and none (young enough) are cached.
    #[error("the tenant's signing keys are unavailable: {0}")]
    Unavailable(String),
    /// The keys are known and none has this `kid`.
    #[error("the token's kid is not a signing key of the tenant")]
    UnknownKid,
}

/// One verification key, parsed once (RS256, 2048 to 8192 bits), and the issuer its JWKS entry
/// names (`{tenantid}` not yet replaced).
#[derive(Clone)]
pub struct Key {
    pub verifier: Arc<ParsedPublicKey>,
    pub issuer: Option<String>,
}

/// The RS256 verifier of a JWK's base64url `n` and `e`.
fn rsa_verifier(n: &str, e: &str) -> Option<ParsedPublicKey> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (n, e) = (b64.decode(n.trim_end_matches('=')).ok()?, b64.decode(e.trim_end_matches('=')).ok()?);
    RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }.to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256).ok()
}

/// One tenant's RS256 verification keys by `kid`.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, Key>,
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
                && let Some(verifier) = rsa_verifier(n, e)
            {
                let issuer = field("issuer").filter(|i| !i.trim().is_empty()).map(str::to_string);
                keys.insert(kid.to_string(), Key { verifier: Arc::new(verifier), issuer });
            }
        }
        if keys.is_empty() {
            return Err("no usable RSA signing key".into());
        }
        Ok(KeySet { keys })
    }

    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Where a tenant's keys come from (Entra over HTTP; a fake in unit tests).
#[async_trait::async_trait]
pub trait KeySource: Send + Sync {
    /// The tenant's JWKS; `want_kid` when a refetch looks for a key that was missing.
    async fn fetch(&self, tid: &str, want_kid: Option<&str>) -> Result<Arc<KeySet>, String>;
}

#[derive(Clone)]
struct TenantKeys {
    set: Arc<KeySet>,
    fetched_at: Instant,
}

type Flight = Shared<BoxFuture<'static, Result<Arc<KeySet>, JwksError>>>;

/// Per-tenant bookkeeping of refreshes.
#[derive(Default)]
struct TenantState {
    /// The refresh in flight, with its id.
    flight: Option<(u64, Flight)>,
    last_forced: Option<Instant>,
    last_failed: Option<Instant>,
    /// The last fetch error and when it happened (wall clock, for `/readyz`).
    last_error: Option<(String, std::time::SystemTime)>,
    window_start: Option<Instant>,
    /// Unknown kids that triggered a refetch in the current window.
    tried: HashSet<String>,
}

/// What a request does about a missing kid, decided under the state lock.
enum OnMiss {
    Join(Flight),
    Found,
    Refuse,
}

struct Inner {
    source: Arc<dyn KeySource>,
    ttl: Duration,
    max_stale: Duration,
    metrics: Metrics,
    // std locks: each critical section is a map look-up or insert, never held across an await.
    tenants: RwLock<HashMap<String, TenantKeys>>,
    state: Mutex<HashMap<String, TenantState>>,
    next_flight: std::sync::atomic::AtomicU64,
}

/// The JWKS cache of every configured tenant.
#[derive(Clone)]
pub struct JwksCache {
    inner: Arc<Inner>,
}

impl JwksCache {
    /// The production cache: keys from Entra (and Redis, when configured).
    pub fn new(
        http: reqwest::Client,
        authority_host: &str,
        ttl: Duration,
        max_stale: Duration,
        metrics: Metrics,
        redis: Option<Arc<RedisStore>>,
    ) -> JwksCache {
        let source = HttpSource {
            http,
            authority: authority_host.trim_end_matches('/').to_string(),
            metrics: metrics.clone(),
            redis,
            ttl,
        };
        JwksCache::with_source(Arc::new(source), ttl, max_stale, metrics)
    }

    /// A cache over any key source.
    pub fn with_source(source: Arc<dyn KeySource>, ttl: Duration, max_stale: Duration, metrics: Metrics) -> JwksCache {
        JwksCache {
            inner: Arc::new(Inner {
                source,
                ttl,
                max_stale,
                metrics,
                tenants: RwLock::default(),
                state: Mutex::default(),
                next_flight: Default::default(),
            }),
        }
    }

    /// The key `kid` of tenant `tid`, fetching or refreshing the tenant's keys as needed.
    pub async fn key(&self, tid: &str, kid: &str) -> Result<Key, JwksError> {
        let set = self.current(tid).await?;
        if let Some(k) = set.get(kid) {
            return Ok(k.clone());
        }
        // Join a refetch in flight or see one that just finished, then maybe start one. Twice at
        // most: a joined refresh that did not have the kid leaves one chance to force a refetch.
        for _ in 0..2 {
            let flight = match self.on_miss(tid, kid) {
                OnMiss::Found => break,
                OnMiss::Refuse => return Err(JwksError::UnknownKid),
                OnMiss::Join(f) => f,
            };
            if let Some(k) = flight.await?.get(kid) {
                return Ok(k.clone());
            }
        }
        self.snapshot(tid).and_then(|t| t.set.get(kid).cloned()).ok_or(JwksError::UnknownKid)
    }

    /// Whether usable keys for `tid` are loaded (readiness).
    pub fn has_keys(&self, tid: &str) -> bool {
        self.snapshot(tid).is_some_and(|t| t.fetched_at.elapsed() < self.inner.ttl + self.inner.max_stale)
    }

    /// Readiness of `tid`'s keys: usable or not, and a detail naming the last fetch error and
    /// when it happened, if there was one since the last success.
    pub fn status(&self, tid: &str) -> (bool, String) {
        let usable = self.has_keys(tid);
        let last_error = self.with_state(tid, |st| st.last_error.clone());
        let state = match (usable, self.snapshot(tid)) {
            (true, Some(t)) if t.fetched_at.elapsed() >= self.inner.ttl => "stale (serving the previous keys)",
            (true, _) => "fetched",
            (false, Some(_)) => "too old (older than jwks_ttl + jwks_max_stale)",
            (false, None) => "not fetched yet",
        };
        let detail = match last_error {
            Some((why, at)) => {
                format!("{state}; last error at {}: {why}", humantime::format_rfc3339_seconds(at))
            }
            None => state.to_string(),
        };
        (usable, detail)
    }

    /// Makes sure `tid`'s keys are loaded (start-up warm-up); no fetch when they already are.
    pub async fn warm(&self, tid: &str) -> Result<usize, JwksError> {
        self.current(tid).await.map(|s| s.len())
    }

    fn snapshot(&self, tid: &str) -> Option<TenantKeys> {
        self.inner.tenants.read().ok().and_then(|t| t.get(tid).cloned())
    }

    /// Fresh keys, or refreshed ones, or stale ones (within `max_stale`) when the refresh fails.
    async fn current(&self, tid: &str) -> Result<Arc<KeySet>, JwksError> {
        let Some(cached) = self.snapshot(tid) else {
            return self.refresh(tid).await;
        };
        let age = cached.fetched_at.elapsed();
        if age < self.inner.ttl {
            return Ok(cached.set);
        }
        let usable = age < self.inner.ttl + self.inner.max_stale;
        if usable && self.failed_recently(tid) {
            return Ok(cached.set);
        }
        match self.refresh(tid).await {
            Ok(set) => Ok(set),
            Err(e) => {
                self.with_state(tid, |st| st.last_failed = Some(Instant::now()));
                if !usable {
                    tracing::error!(tid, error = %e, "JWKS refresh failed and the cached keys are too old to use");
                    return Err(JwksError::Unavailable(format!(
                        "{e}; cached keys older than jwks_ttl + jwks_max_stale"
                    )));
                }
                self.inner.metrics.jwks_stale.with_label_values(&[tid]).set(1);
                tracing::warn!(tid, error = %e, age_secs = age.as_secs(), "JWKS refresh failed; serving the previous keys");
                Ok(cached.set)
            }
        }
    }

    fn failed_recently(&self, tid: &str) -> bool {
        self.with_state(tid, |st| st.last_failed.is_some_and(|t| t.elapsed() < FAILED_REFRESH_BACKOFF))
    }

    fn with_state<T>(&self, tid: &str, f: impl FnOnce(&mut TenantState) -> T) -> T {
        let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        f(state.entry(tid.to_string()).or_default())
    }

    /// Joins the tenant's refresh in flight, or starts one.
    async fn refresh(&self, tid: &str) -> Result<Arc<KeySet>, JwksError> {
        let flight = self.with_state(tid, |st| match &st.flight {
            Some((_, f)) => f.clone(),
            None => self.start_flight(tid, None, st),
        });
        flight.await
    }

    /// Decides, under the state lock, what a miss of `kid` does.
    fn on_miss(&self, tid: &str, kid: &str) -> OnMiss {
        self.with_state(tid, |st| {
            if let Some((_, f)) = &st.flight {
                return OnMiss::Join(f.clone());
            }
            // A refresh may have finished since this request read the keys: look at the newest.
            if self.snapshot(tid).is_some_and(|t| t.set.get(kid).is_some()) {
                return OnMiss::Found;
            }
            let now = Instant::now();
            if st.last_forced.is_some_and(|t| now.duration_since(t) < UNKNOWN_KID_COOLDOWN) {
                return OnMiss::Refuse;
            }
            if st.window_start.is_none_or(|t| now.duration_since(t) >= UNKNOWN_KID_WINDOW) {
                st.window_start = Some(now);
                st.tried.clear();
            }
            if st.tried.contains(kid) || st.tried.len() >= MAX_UNKNOWN_KIDS {
                return OnMiss::Refuse;
            }
            st.tried.insert(kid.to_string());
            st.last_forced = Some(now);
            tracing::info!(tid, "unknown kid: refetching the tenant's signing keys");
            OnMiss::Join(self.start_flight(tid, Some(kid), st))
        })
    }

    /// A shared fetch that publishes its keys and then removes itself, whoever drives it.
    fn start_flight(&self, tid: &str, want_kid: Option<&str>, st: &mut TenantState) -> Flight {
        let id = self.inner.next_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let inner = self.inner.clone();
        let (tid, want) = (tid.to_string(), want_kid.map(str::to_string));
        let flight = async move {
            let result = inner.source.fetch(&tid, want.as_deref()).await.map_err(JwksError::Unavailable);
            if let Ok(set) = &result {
                if let Ok(mut tenants) = inner.tenants.write() {
                    tenants.insert(tid.clone(), TenantKeys { set: set.clone(), fetched_at: Instant::now() });
                }
                inner.metrics.jwks_stale.with_label_values(&[&tid]).set(0);
            }
            let mut state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(st) = state.get_mut(&tid) {
                match &result {
                    Ok(_) => st.last_error = None,
                    Err(e) => st.last_error = Some((e.to_string(), std::time::SystemTime::now())),
                }
                if st.flight.as_ref().is_some_and(|(fid, _)| *fid == id) {
                    st.flight = None;
                    if result.is_ok() {
                        st.last_failed = None;
                    }
                }
            }
            result
        }
        .boxed()
        .shared();
        st.flight = Some((id, flight.clone()));
        flight
    }
}

/// A JWKS document as shared in Redis.
#[derive(Serialize, Deserialize)]
struct StoredJwks {
    fetched_at: u64,
    body: String,
}

/// Keys from Entra, shared through Redis when it is configured.
struct HttpSource {
    http: reqwest::Client,
    authority: String,
    metrics: Metrics,
    redis: Option<Arc<RedisStore>>,
    ttl: Duration,
}

#[async_trait::async_trait]
impl KeySource for HttpSource {
    async fn fetch(&self, tid: &str, want_kid: Option<&str>) -> Result<Arc<KeySet>, String> {
        let redis_key = self.redis.as_ref().map(|r| r.key(&format!("jwks:{tid}")));
        if let (Some(redis), Some(key)) = (&self.redis, &redis_key)
            && let Some(set) = shared_copy(redis, key, want_kid, self.ttl).await
        {
            return Ok(Arc::new(set));
        }
        let url = format!("{}/{}/discovery/v2.0/keys", self.authority, tid);
        let span = crate::telemetry::Span::child("entra jwks", opentelemetry::trace::SpanKind::Client);
        let result = fetch_once(&self.http, &url).await;
        if let (Some(span), Err(e)) = (&span, &result) {
            span.fail(e.clone());
        }
        drop(span);
        let label = if result.is_ok() { "success" } else { "error" };
        self.metrics.jwks_refresh_total.with_label_values(&[label]).inc();
        let (set, body) = result.inspect_err(|e| tracing::warn!(url = %url, error = %e, "JWKS fetch failed"))?;
        if let (Some(redis), Some(key)) = (&self.redis, &redis_key) {
            let stored = StoredJwks { fetched_at: unix_now(), body };
            let _ = redis.set_json("jwks", key, &stored, Some(self.ttl)).await;
        }
        Ok(Arc::new(set))
    }
}

/// Keys another replica stored: fresh ones, or (for an unknown kid) ones that have it.
async fn shared_copy(redis: &RedisStore, key: &str, want_kid: Option<&str>, ttl: Duration) -> Option<KeySet> {
    let stored: StoredJwks = redis.get_json("jwks", key).await.ok()??;
    let set = KeySet::parse(stored.body.as_bytes()).ok()?;
    let usable = match want_kid {
        Some(kid) => set.get(kid).is_some(),
        None => unix_now().saturating_sub(stored.fetched_at) < ttl.as_secs(),
    };
    usable.then_some(set)
}

async fn fetch_once(http: &reqwest::Client, url: &str) -> Result<(KeySet, String), String> {
    let resp =
        http.get(url).send().await.map_err(|e| format!("request failed: {}", crate::outbound::error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body = resp.text().await.map_err(|e| format!("body: {e}"))?;
    Ok((KeySet::parse(body.as_bytes())?, body))
}

#[cfg(test)]
mod tests;
