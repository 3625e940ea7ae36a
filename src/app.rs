//! The application: every component built from the typed config, and the state handlers share.
//!
//! Owns: [`AppState`] (built once at start; the reloadable policy and routes are swapped in
//! place in [`Live`]), wiring each component from the config (whose keys, secrets and
//! certificates are already loaded, so nothing here reads a file), and the readiness checks.
//! Must not: serve sockets (see `server`), handle requests (see `http`), or keep a copy of the
//! config that a reload would make stale.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::access::Access;
use crate::cache::TtlCache;
use crate::cache::redis::RedisStore;
use crate::config::{Config, ProxySettings, ServerSettings};
use crate::directory::postgres::PostgresUserStore;
use crate::directory::{Directory, MemoryUserStore, RedisUserStore, UserStore};
use crate::entra::EntraValidator;
use crate::entra::jwks::JwksCache;
use crate::exchange::{ExchangeParts, ExchangeService};
use crate::graph::{GraphClient, GraphError, Photo};
use crate::issuer::Issuer;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::proxy::routes::RouteTable;
use crate::proxy::{Proxy, client_tls, upstream_client};
use crate::ratelimit::ExchangeLimits;
use crate::revocation::{MemoryRevocations, RedisRevocations, RevocationStore};
use crate::seal::Sealer;
use crate::sync::DirectorySync;
use crate::telemetry::Telemetry;
use crate::user_access::UserAccess;

/// Why the gateway could not start (the config itself was already checked).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("HTTP client: {0}")]
    HttpClient(String),
    #[error("redis: {0}")]
    Redis(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("OpenTelemetry: {0}")]
    Telemetry(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// One readiness check.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// A worker thread's own handle on the state: each request holds a reference to it, counted
/// on memory only that worker writes (an `Arc<AppState>` per request would be counted on the
/// one every worker shares).
pub struct WorkerState(Arc<AppState>);

impl WorkerState {
    pub fn new(state: Arc<AppState>) -> Arc<WorkerState> {
        Arc::new(WorkerState(state))
    }
}

impl std::ops::Deref for WorkerState {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.0
    }
}

/// What a config reload swaps in place. Each request loads the snapshot it starts with.
pub struct Live {
    /// Who may sign in and with which roles (`authorization`).
    pub policy: Arc<ArcSwap<Policy>>,
    /// The routes and forward-auth's settings (`proxy.routes`, `proxy.forward_auth`): one
    /// copy per worker thread, so that what a request takes from its route (a reference to
    /// it, the upstream's `Host` value, the route's tallies) is written by that worker only.
    routes: Box<[ArcSwap<RouteTable>]>,
}

impl Live {
    /// `workers` copies of the route table of `proxy`.
    pub fn new(policy: Arc<ArcSwap<Policy>>, proxy: &ProxySettings, metrics: &Metrics, workers: usize) -> Live {
        let routes = (0..workers.max(1)).map(|_| ArcSwap::from_pointee(RouteTable::new(proxy, metrics))).collect();
        Live { policy, routes }
    }

    /// The route table of the worker `worker`.
    pub fn routes(&self, worker: usize) -> arc_swap::Guard<Arc<RouteTable>> {
        self.routes[worker % self.routes.len()].load()
    }

    /// Swaps in the routes of `proxy` on every worker.
    pub fn set_routes(&self, proxy: &ProxySettings, metrics: &Metrics) {
        for routes in &self.routes {
            routes.store(Arc::new(RouteTable::new(proxy, metrics)));
        }
    }
}

/// The caller's Graph photo, cached per (tid, oid) for `profile_ttl`.
pub struct Photos {
    graph: Option<Arc<GraphClient>>,
    cache: TtlCache<Option<Arc<Photo>>>,
    ttl: Duration,
}

impl Photos {
    /// `Ok(None)`: the user has no photo. `Err(None)`: there is no Graph (`claims` mode).
    pub async fn get(&self, tid: &str, oid: &str) -> Result<Option<Arc<Photo>>, Option<GraphError>> {
        let Some(graph) = self.graph.clone() else { return Err(None) };
        let (t, o, ttl) = (tid.to_string(), oid.to_string(), self.ttl);
        let load = move || async move { graph.photo(&t, &o).await.map(|photo| (photo.map(Arc::new), ttl)) };
        self.cache.get_or_load(format!("{tid}:{oid}"), load).await.map_err(|e| Some((*e).clone()))
    }
}

/// Everything the request handlers share.
pub struct AppState {
    /// Listener, limit and timeout settings; they change only with a restart.
    pub(crate) server: ServerSettings,
    /// The reloadable policy and routes.
    pub(crate) live: Live,
    /// The token exchange: Entra validation, groups, profile, user record, minting.
    pub(crate) exchange: ExchangeService,
    /// The internal token issuer (`/.well-known/*`).
    pub(crate) issuer: Arc<Issuer>,
    /// User records (`/auth/me`).
    pub(crate) directory: Directory,
    /// Photos (`/auth/me/photo`).
    pub(crate) photos: Photos,
    /// The internal-token check of the hot path (verified-token cache, revocations).
    pub(crate) access: Access,
    /// The reverse proxy and its pooled upstream client.
    pub(crate) proxy: Proxy,
    /// Shared state, when Redis is configured (readiness pings it).
    pub(crate) redis: Option<Arc<RedisStore>>,
    /// Continuous access: the directory sync and the kill switch.
    pub(crate) sync: Arc<DirectorySync>,
    /// Exchange rate limits per client IP and per user.
    pub(crate) limits: ExchangeLimits,
    pub(crate) metrics: Metrics,
    /// OpenTelemetry traces (off unless configured).
    pub(crate) telemetry: Telemetry,
    /// New `X-Request-Id` values.
    pub(crate) request_ids: crate::request_id::RequestIds,
    /// A Redis outage makes the gateway not ready (`cache.revocation_requires_redis`).
    revocation_requires_redis: bool,
    shutting_down: AtomicBool,
}

impl AppState {
    /// Builds every component from a loaded config.
    pub fn build(config: Config) -> Result<Arc<AppState>, StartError> {
        let Config { server, entra, authorization, issuer, cache, directory, proxy, telemetry, .. } = config;
        let metrics = Metrics::new();
        let outbound_tls = client_tls(&server.extra_ca).map_err(StartError::Tls)?;
        let telemetry =
            Telemetry::start(&telemetry, outbound_tls.clone(), &server.extra_ca).map_err(StartError::Telemetry)?;
        let http = outbound_client(entra.request_timeout, outbound_tls.clone())?;
        let sealer = match &cache.integrity_key {
            Some(key) => Sealer::derive([key.expose().as_bytes()]),
            None => Sealer::derive(issuer.keys.iter().map(|k| k.secret_bytes())),
        }
        .ok_or_else(|| StartError::Redis("no key to seal shared values with".into()))?;
        let issuer = Arc::new(Issuer::new(issuer));
        let redis = RedisStore::connect(&cache, metrics.clone(), sealer).map_err(StartError::Redis)?;
        let jwks = JwksCache::new(
            http.clone(),
            &entra.authority,
            cache.jwks_ttl,
            cache.jwks_max_stale,
            metrics.clone(),
            redis.clone(),
        );
        let validator = EntraValidator::new(&entra, jwks);
        let graph = entra
            .credential
            .clone()
            .map(|credential| Arc::new(GraphClient::new(&entra, credential, http.clone(), metrics.clone())));
        let policy = Arc::new(ArcSwap::from_pointee(Policy::new(&authorization)));
        let local_revocations = MemoryRevocations::new(cache.max_revocations, &metrics);
        let (users, revocations): (Arc<dyn UserStore>, Arc<dyn RevocationStore>) = match &redis {
            Some(r) => (
                Arc::new(RedisUserStore::new(r.clone())),
                Arc::new(RedisRevocations::new(
                    r.clone(),
                    cache.revocation_requires_redis,
                    local_revocations,
                    metrics.revocation_feed_up.clone(),
                )),
            ),
            None => (Arc::new(MemoryUserStore::default()), Arc::new(local_revocations)),
        };
        let users: Arc<dyn UserStore> = match &directory.postgres {
            Some(pg) => {
                let mut roots = server.extra_ca.clone();
                roots.extend(pg.ca.iter().cloned());
                let tls = client_tls(&roots).map_err(StartError::Tls)?;
                Arc::new(PostgresUserStore::new(pg, tls, redis.clone(), metrics.clone()).map_err(StartError::Postgres)?)
            }
            None => users,
        };
        let directory = Directory::new(users);
        let user_access = UserAccess::new();
        let sync = DirectorySync::new(
            user_access.clone(),
            graph.clone().filter(|_| entra.continuous_access.enabled),
            redis.clone(),
            policy.clone(),
            entra.continuous_access.clone(),
            metrics.clone(),
            directory.clone(),
        );
        let exchange = ExchangeService::new(ExchangeParts {
            entra: validator,
            graph: graph.clone(),
            mode: entra.graph_mode,
            policy: policy.clone(),
            directory: directory.clone(),
            issuer: issuer.clone(),
            cache: cache.clone(),
            metrics: metrics.clone(),
            redis: redis.clone(),
            access: user_access.clone(),
        });
        let access = Access::new(issuer.clone(), revocations, proxy.identity.clone(), user_access, server.workers);
        let proto = if server.listener_tls.is_some() { "https" } else { "http" };
        let clients = (0..server.workers.max(1)).map(|_| upstream_client(outbound_tls.clone())).collect();
        let forwarder = Proxy::new(clients, proxy.strip_headers.clone(), proto, server.trusted_proxies.clone());
        Ok(Arc::new(AppState {
            live: Live::new(policy, &proxy, &metrics, server.workers),
            photos: Photos { graph, cache: TtlCache::new("photo", 10_000, metrics.clone()), ttl: cache.profile_ttl },
            limits: ExchangeLimits::new(&server.rate_limit, server.trusted_proxies.clone()),
            server,
            exchange,
            issuer,
            directory,
            access,
            proxy: forwarder,
            redis,
            sync,
            metrics,
            telemetry,
            request_ids: Default::default(),
            revocation_requires_redis: cache.revocation_requires_redis,
            shutting_down: AtomicBool::new(false),
        }))
    }

    /// Whether an admin action (the kill switch) may be taken: from a loopback peer, or with
    /// the bearer token of `server.admin_token_file` (compared in constant time).
    pub fn admin_allowed(&self, peer: std::net::IpAddr, token: Option<&str>) -> bool {
        let loopback = crate::forwarded::canonical_ip(peer).is_loopback();
        match (&self.server.admin_token, token) {
            (Some(expected), Some(given)) => {
                aws_lc_rs::constant_time::verify_slices_are_equal(expected.expose().as_bytes(), given.as_bytes())
                    .is_ok()
            }
            _ => loopback,
        }
    }

    /// Readiness turns 503 from now on (shutdown has begun).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Signing keys loaded (always, once built), each tenant's JWKS present, Redis answering (or
    /// degraded but safe), not shutting down.
    pub async fn readiness_checks(&self) -> Vec<Check> {
        let mut checks = vec![Check { name: "signing_keys".into(), ok: true, detail: "loaded".into() }];
        for tid in self.exchange.entra().tenants() {
            let (ok, detail) = self.exchange.entra().jwks().status(tid);
            checks.push(Check { name: format!("jwks:{tid}"), ok, detail });
        }
        if let Some(redis) = &self.redis {
            let up = redis.ping().await;
            self.metrics.user_store_up.with_label_values(&["redis"]).set(up.is_ok() as i64);
            checks.push(match up {
                Ok(()) => Check { name: "redis".into(), ok: true, detail: "reachable".into() },
                // Without Redis the gateway still decides safely from its in-process state,
                // unless revocations must be checked in Redis.
                Err(e) if self.revocation_requires_redis => Check {
                    name: "redis".into(),
                    ok: false,
                    detail: format!("unreachable ({e}); revocations cannot be checked"),
                },
                Err(e) => Check {
                    name: "redis".into(),
                    ok: true,
                    detail: format!("degraded: unreachable ({e}); serving from in-process caches"),
                },
            });
        } else {
            self.metrics.user_store_up.with_label_values(&["memory"]).set(1);
        }
        if let Some(store) = self.directory.check().await {
            // PostgreSQL down: users in the cache still sign in and every token still works;
            // only first sign-ins are refused, so the replica stays ready (degraded).
            checks.push(Check { name: store.store.into(), ok: true, detail: store.detail });
        }
        if let Some(detail) = self.sync.readiness_detail() {
            // The sync's lag is a detail (degraded), never a reason to fail readiness.
            checks.push(Check { name: "directory_sync".into(), ok: true, detail });
        }
        let stopping = self.shutting_down.load(Ordering::SeqCst);
        checks.push(Check {
            name: "shutdown".into(),
            ok: !stopping,
            detail: if stopping { "draining" } else { "serving" }.into(),
        });
        checks
    }
}

/// The client of every call to Entra and Graph.
fn outbound_client(timeout: Duration, tls: rustls::ClientConfig) -> Result<reqwest::Client, StartError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("entra-gateway/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| StartError::HttpClient(e.to_string()))
}
