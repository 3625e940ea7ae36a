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
use hyper_util::server::graceful::GracefulShutdown;
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
        let proxy = Proxy::new(upstream_client(outbound_tls), config.proxy.forward_token, proto);
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
    let limits = ConnLimits { grace, header_read_timeout: state.config.server.header_read_timeout };
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
    let public = tokio::spawn(serve(listeners.public, tls, public_rx, limits, move |req, peer| {
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
    /// How long a client may take to send a request head (and an idle keep-alive lasts).
    pub header_read_timeout: Duration,
}

impl ConnLimits {
    /// Limits for the mock and test servers: short grace, the default header timeout.
    pub fn short() -> ConnLimits {
        ConnLimits { grace: Duration::from_secs(1), header_read_timeout: Duration::from_secs(10) }
    }
}

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` (over TLS with `tls`) and serves them with `handler`
/// until `stop` turns true; then stops accepting and waits up to `grace` for open connections.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let grace = limits.grace;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEADER_BYTES as u32);
    let builder = Arc::new(builder);
    let local = listener.local_addr().ok();
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let svc = service_fn(move |req| {
            let fut = handler(req, peer);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned()).await
                }
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), svc).into_owned();
                        watcher.watch(conn).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                },
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(addr = ?local, "listener closed");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
}
