//! Server wiring: builds every component from the config, starts the listeners and the
//! background tasks, and shuts down gracefully.
//!
//! Owns: [`AppState`] (the one value every handler reads), the accept loops, connection limits
//! (header read timeout, header size), readiness, and the shutdown sequence (stop accepting,
//! report not-ready, let in-flight requests finish within `shutdown_grace`). Must not: contain
//! request logic (see `http`) or global mutable state.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ::http::{Request, Response};
use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::access::Access;
use crate::cache::TtlCache;
use crate::cache::redis::RedisStore;
use crate::config::{ClientCredentialKind, Config, GraphMode, Secret};
use crate::directory::{Directory, MemoryUserStore, RedisUserStore, UserStore};
use crate::entra::EntraValidator;
use crate::entra::jwks::JwksCache;
use crate::exchange::{ExchangeParts, ExchangeService};
use crate::graph::{ClientCredential, GraphClient, Photo};
use crate::http::{self, Body};
use crate::issuer::Issuer;
use crate::issuer::keys::{KeyError, KeyRing};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::proxy::headers::IdentityHeaders;
use crate::proxy::routes::RouteTable;
use crate::proxy::{Proxy, client_tls, upstream_client};
use crate::ratelimit::ExchangeLimits;
use crate::revocation::{MemoryRevocations, RedisRevocations, RevocationStore};
use crate::tls::ReloadingCert;

/// Largest request head (request line + headers) accepted.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("signing key: {0}")]
    Keys(#[from] KeyError),
    #[error("client credential: {0}")]
    Secret(String),
    #[error("HTTP client: {0}")]
    HttpClient(String),
    #[error("redis: {0}")]
    Redis(String),
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

/// Everything the request handlers share.
pub struct AppState {
    pub config: Arc<Config>,
    pub exchange: ExchangeService,
    pub issuer: Arc<Issuer>,
    pub directory: Directory,
    pub graph: Option<Arc<GraphClient>>,
    pub metrics: Metrics,
    pub policy: Arc<ArcSwap<Policy>>,
    pub access: Access,
    pub routes: ArcSwap<RouteTable>,
    pub proxy: Proxy,
    pub photos: TtlCache<Option<Arc<Photo>>>,
    pub redis: Option<Arc<RedisStore>>,
    pub limits: ExchangeLimits,
    /// The listener certificate, when the public listener serves HTTPS.
    pub listener_tls: Option<Arc<ReloadingCert>>,
    shutting_down: AtomicBool,
}

impl AppState {
    /// Builds every component; fails on a bad key or secret (fail at start, not at first use).
    pub fn build(config: Config) -> Result<Arc<AppState>, StartError> {
        let metrics = Metrics::new();
        let outbound_tls = outbound_tls(&config)?;
        let http = outbound_client(&config, outbound_tls.clone())?;
        let issuer = Arc::new(Issuer::new(&config.issuer, KeyRing::load(&config.issuer.signing_keys)?));
        let redis = RedisStore::connect(&config.cache, metrics.clone()).map_err(StartError::Redis)?;
        let jwks = JwksCache::new(
            http.clone(),
            &config.entra.authority_host,
            config.cache.jwks_ttl,
            config.cache.jwks_max_stale,
            metrics.clone(),
            redis.clone(),
        );
        let entra = EntraValidator::new(&config.entra, jwks);
        let graph = match config.entra.graph_mode {
            GraphMode::Claims => None,
            GraphMode::App | GraphMode::Obo => {
                let credential = client_credential(&config)?;
                Some(Arc::new(GraphClient::new(&config.entra, credential, http.clone(), metrics.clone())))
            }
        };
        let policy = Arc::new(ArcSwap::from_pointee(Policy::from_config(&config)));
        let (users, revocations): (Arc<dyn UserStore>, Arc<dyn RevocationStore>) = match &redis {
            Some(r) => (
                Arc::new(RedisUserStore::new(r.clone())),
                Arc::new(RedisRevocations::new(r.clone(), config.cache.revocation_requires_redis)),
            ),
            None => (Arc::new(MemoryUserStore::default()), Arc::new(MemoryRevocations::default())),
        };
        let directory = Directory::new(users);
        let exchange = ExchangeService::new(ExchangeParts {
            entra,
            graph: graph.clone(),
            mode: config.entra.graph_mode,
            policy: policy.clone(),
            directory: directory.clone(),
            issuer: issuer.clone(),
            cache: config.cache.clone(),
            metrics: metrics.clone(),
            redis: redis.clone(),
        });
        let access =
            Access::new(issuer.clone(), revocations, IdentityHeaders::new(&config.proxy.identity_header_prefix));
        let listener_tls = match config.server.tls.as_ref().and_then(|t| t.listener()) {
            Some((cert, key)) => Some(ReloadingCert::load(cert, key).map_err(StartError::Tls)?),
            None => None,
        };
        let proto = if listener_tls.is_some() { "https" } else { "http" };
        let trusted = crate::forwarded::TrustedProxies::new(config.server.trusted_proxies.clone());
        let proxy = Proxy::new(upstream_client(outbound_tls), config.proxy.forward_token, proto, trusted);
        let config_server = config.server.clone();
        Ok(Arc::new(AppState {
            routes: ArcSwap::from_pointee(RouteTable::from_config(&config.proxy)),
            photos: TtlCache::new("photo", 10_000, metrics.clone()),
            config: Arc::new(config),
            exchange,
            issuer,
            directory,
            graph,
            metrics,
            policy,
            access,
            proxy,
            redis,
            limits: ExchangeLimits::new(&config_server),
            listener_tls,
            shutting_down: AtomicBool::new(false),
        }))
    }

    /// Signing keys loaded (always, once built), each tenant's JWKS present, Redis answering (or
    /// degraded but safe), not shutting down.
    pub async fn readiness_checks(&self) -> Vec<Check> {
        let mut checks = vec![Check { name: "signing_keys".into(), ok: true, detail: "loaded".into() }];
        for tid in self.exchange.entra().tenants() {
            let ok = self.exchange.entra().jwks().has_keys(tid);
            let detail = if ok { "fetched" } else { "not fetched yet" };
            checks.push(Check { name: format!("jwks:{tid}"), ok, detail: detail.into() });
        }
        if let Some(redis) = &self.redis {
            checks.push(match redis.ping().await {
                Ok(()) => Check { name: "redis".into(), ok: true, detail: "reachable".into() },
                // Without Redis the gateway still decides safely from its in-process state,
                // unless revocations must be checked in Redis.
                Err(e) if self.config.cache.revocation_requires_redis => Check {
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

/// The TLS client configuration of every outbound call: system roots plus `extra_ca_file`.
fn outbound_tls(config: &Config) -> Result<rustls::ClientConfig, StartError> {
    let extra = match config.server.tls.as_ref().and_then(|t| t.extra_ca_file.as_deref()) {
        Some(path) => crate::tls::read_certs(path).map_err(StartError::Tls)?,
        None => Vec::new(),
    };
    client_tls(&extra).map_err(StartError::Tls)
}

fn outbound_client(config: &Config, tls: rustls::ClientConfig) -> Result<reqwest::Client, StartError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(config.entra.request_timeout)
        .connect_timeout(config.entra.request_timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("entra-gateway/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| StartError::HttpClient(e.to_string()))
}

/// The configured way of authenticating to Entra's token endpoint.
fn client_credential(config: &Config) -> Result<ClientCredential, StartError> {
    let e = &config.entra;
    match e.client_credential {
        ClientCredentialKind::Secret => client_secret(config).map(ClientCredential::Secret),
        ClientCredentialKind::WorkloadIdentity => {
            let path = e
                .federated_token_file
                .clone()
                .or_else(|| std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").map(Into::into))
                .ok_or_else(|| {
                    StartError::Secret(
                        "workload_identity needs entra.federated_token_file or AZURE_FEDERATED_TOKEN_FILE".into(),
                    )
                })?;
            Ok(ClientCredential::FederatedTokenFile(path))
        }
        ClientCredentialKind::Certificate => {
            let (Some(cert), Some(key)) = (&e.client_certificate_file, &e.client_certificate_key_file) else {
                return Err(StartError::Secret("certificate needs client_certificate_file and _key_file".into()));
            };
            ClientCredential::certificate(cert, key).map_err(StartError::Secret)
        }
    }
}

fn client_secret(config: &Config) -> Result<Secret, StartError> {
    if let Some(s) = &config.entra.client_secret {
        return Ok(s.clone());
    }
    let path = config.entra.client_secret_file.as_ref().ok_or_else(|| StartError::Secret("not configured".into()))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| StartError::Secret(format!("cannot read {}: {e}", path.display())))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(StartError::Secret(format!("{} is empty", path.display())));
    }
    Ok(Secret::new(secret))
}

/// The two bound listeners.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        Ok(Listeners { public: bind(&config.server.listen).await?, admin: bind(&config.server.admin_listen).await? })
    }
}

async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr: addr.to_string(), source })
}

/// Runs the gateway until `shutdown` completes, then drains within `shutdown_grace`. With
/// `config_path`, the config is reloaded on SIGHUP and when the file changes.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    config_path: Option<std::path::PathBuf>,
) -> Result<(), StartError> {
    let state = AppState::build(config)?;
    run_with_state(state, listeners, shutdown, config_path).await;
    Ok(())
}

/// Runs a built gateway (tests and `demo` build the state themselves).
///
/// Shutdown: readiness turns 503 at once; the public listener stops accepting and in-flight
/// requests get up to `shutdown_grace` to finish; then the admin listener closes.
pub async fn run_with_state(
    state: Arc<AppState>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    config_path: Option<std::path::PathBuf>,
) {
    let (public_stop, public_rx) = watch::channel(false);
    let (admin_stop, admin_rx) = watch::channel(false);
    let mut background = JoinSet::new();
    for tid in state.exchange.entra().tenants().to_vec() {
        let state = state.clone();
        background.spawn(async move { warm_jwks(&state, &tid).await });
    }
    if let Some(path) = config_path {
        background.spawn(crate::reload::config_reloader(state.clone(), path));
    }
    if let Some(cert) = state.listener_tls.clone() {
        background.spawn(crate::reload::tls_reloader(cert, state.metrics.clone()));
    }
    let limiter_state = state.clone();
    background.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            limiter_state.limits.retain_recent();
        }
    });
    let grace = state.config.server.shutdown_grace;
    let limits = ConnLimits::from_config(&state.config.server);
    let tls = match &state.listener_tls {
        Some(cert) => match cert.server_config() {
            Ok(cfg) => Some(tokio_rustls::TlsAcceptor::from(cfg)),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the TLS listener");
                return;
            }
        },
        None => None,
    };
    let public_state = state.clone();
    let events = ConnEvents::new(state.metrics.clone());
    let public = tokio::spawn(serve_with_events(listeners.public, tls, public_rx, limits, events, move |req, peer| {
        http::public(public_state.clone(), req, peer)
    }));
    let admin_state = state.clone();
    let admin = tokio::spawn(serve(listeners.admin, None, admin_rx, limits, move |req, _peer| {
        http::admin::handle(admin_state.clone(), req)
    }));
    shutdown.await;
    tracing::info!(grace_secs = grace.as_secs(), "shutting down: not ready, draining in-flight requests");
    state.shutting_down.store(true, Ordering::SeqCst);
    let _ = public_stop.send(true);
    let _ = public.await;
    background.abort_all();
    let _ = admin_stop.send(true);
    let _ = admin.await;
    tracing::info!("shutdown complete");
}

/// Fetches a tenant's JWKS at start-up, retrying with backoff until it works.
async fn warm_jwks(state: &AppState, tid: &str) {
    let mut delay = Duration::from_millis(500);
    loop {
        match state.exchange.entra().jwks().warm(tid).await {
            Ok(n) => {
                tracing::info!(tid, keys = n, "Entra signing keys loaded");
                return;
            }
            Err(e) => {
                tracing::warn!(tid, error = %e, retry_in_ms = delay.as_millis() as u64, "Entra signing keys not loaded yet")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Completes once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Per-listener connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections may finish this long after the listener stops.
    pub grace: Duration,
    /// How long a client may take to send a request head: the first one counts from the
    /// connection (after TLS), which also bounds protocol detection and an HTTP/2 preface;
    /// later ones from the previous response (an idle HTTP/1.1 keep-alive connection).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is shut down gracefully
    /// (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// Open connections at most; one more is closed at once.
    pub max_connections: usize,
    /// Concurrent streams per HTTP/2 connection (announced in SETTINGS).
    pub h2_max_streams: u32,
}

impl ConnLimits {
    /// The public listener's limits from `server.*`.
    pub fn from_config(s: &crate::config::ServerConfig) -> ConnLimits {
        ConnLimits {
            grace: s.shutdown_grace,
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            max_connections: s.max_connections,
            h2_max_streams: s.http2_max_concurrent_streams,
        }
    }

    /// Limits for the mock and test servers: short grace, the default timeouts.
    pub fn short() -> ConnLimits {
        ConnLimits {
            grace: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            h2_max_streams: 100,
        }
    }
}

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval, and how long the answer may take before the connection is closed.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts connection events (limit hit, timeouts) and open connections, when the listener has
/// metrics (the mock and test servers do not).
#[derive(Clone, Default)]
pub struct ConnEvents {
    metrics: Option<Metrics>,
    last_limit_log: Arc<std::sync::atomic::AtomicU64>,
}

impl ConnEvents {
    pub fn new(metrics: Metrics) -> ConnEvents {
        ConnEvents { metrics: Some(metrics), last_limit_log: Arc::default() }
    }

    fn event(&self, event: &'static str) {
        if let Some(m) = &self.metrics {
            m.connection_events_total.with_label_values(&[event]).inc();
        }
    }

    fn open(&self, delta: i64) {
        if let Some(m) = &self.metrics {
            m.open_connections.add(delta);
        }
    }

    /// One warn line per second at most while connections are being turned away.
    fn limit_hit(&self, max: usize) {
        self.event("rejected_limit");
        let now = crate::issuer::unix_now();
        if self.last_limit_log.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(max_connections = max, "connection limit reached; closing new connections");
        }
    }
}

/// What a connection's requests tell its watchdog: requests in flight and the last activity.
struct Activity {
    started: tokio::time::Instant,
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds after `started` of the last request start or end; `u64::MAX`: none yet.
    last_ms: std::sync::atomic::AtomicU64,
}

/// Why a watchdog ends a connection.
enum Expired {
    /// No complete request head since the connection was established: dropped.
    FirstRequest,
    /// Nothing in flight for `idle_timeout`: shut down gracefully.
    Idle,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: tokio::time::Instant::now(),
            in_flight: Default::default(),
            last_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
        })
    }

    fn touch(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    fn end(&self) {
        self.touch();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Completes when the connection has outlived its first-request or idle deadline.
    async fn expired(&self, limits: &ConnLimits) -> Expired {
        loop {
            let last = self.last_ms.load(Ordering::Relaxed);
            if last == u64::MAX {
                tokio::time::sleep_until(self.started + limits.header_read_timeout).await;
                if self.last_ms.load(Ordering::Relaxed) == u64::MAX {
                    return Expired::FirstRequest;
                }
                continue;
            }
            let deadline = self.started + Duration::from_millis(last) + limits.idle_timeout;
            if tokio::time::Instant::now() >= deadline && self.in_flight.load(Ordering::Relaxed) == 0 {
                return Expired::Idle;
            }
            let next = deadline.max(tokio::time::Instant::now() + Duration::from_millis(10));
            tokio::time::sleep_until(next).await;
        }
    }
}

/// Ends the in-flight count of a request when its handler completes (or is dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Accepts connections on `listener` (over TLS with `tls`) and serves them with `handler`
/// until `stop` turns true; then stops accepting, asks every connection to finish gracefully,
/// and waits up to `grace` for them.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
    limits: ConnLimits,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_with_events(listener, tls, stop, limits, ConnEvents::default(), handler).await
}

/// [`serve`], counting connection events in `events`.
pub async fn serve_with_events<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
    events: ConnEvents,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(limits.h2_max_streams)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let builder = Arc::new(builder);
    let local = listener.local_addr().ok();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            events.limit_hit(limits.max_connections);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn { builder: builder.clone(), limits, events: events.clone(), stop: stop.clone() };
        let (handler, tls) = (handler.clone(), tls.clone());
        tracker.spawn(async move {
            let _slot = slot;
            let events = conn.events.clone();
            events.open(1);
            match tls {
                None => conn.serve(stream, peer, handler).await,
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => conn.serve(tls_stream, peer, handler).await,
                    Ok(Err(e)) => {
                        events.event("tls_handshake_failed");
                        tracing::debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        events.event("tls_handshake_timeout");
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                },
            }
            events.open(-1);
        });
    }
    drop(listener);
    tracing::info!(addr = %local.map(|a| a.to_string()).unwrap_or_default(), "listener closed");
    tracker.close();
    if tokio::time::timeout(limits.grace, tracker.wait()).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// One accepted connection and what it needs to be served.
struct Conn {
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnLimits,
    events: ConnEvents,
    stop: watch::Receiver<bool>,
}

impl Conn {
    /// Serves HTTP/1.1 or HTTP/2 on `io` until the client leaves, a deadline passes, or the
    /// listener stops (then gracefully).
    async fn serve<S, H, F>(mut self, io: S, peer: SocketAddr, handler: H)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let activity = Activity::new();
        let svc_activity = activity.clone();
        let svc = service_fn(move |req| {
            svc_activity.begin();
            let guard = InFlight(svc_activity.clone());
            let fut = handler(req, peer);
            async move {
                let resp = fut.await;
                drop(guard);
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let expired = activity.expired(&self.limits);
        tokio::pin!(expired);
        let mut closing = false;
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                why = &mut expired, if !closing => match why {
                    Expired::FirstRequest => {
                        self.events.event("first_request_timeout");
                        tracing::debug!(%peer, "no request head in time; connection dropped");
                        return;
                    }
                    Expired::Idle => {
                        self.events.event("idle_timeout");
                        tracing::debug!(%peer, "idle connection closed");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                },
                () = stopped(&mut self.stop), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}
