//! The application: every component built from the config, and the state handlers share.
//!
//! Owns: [`AppState`] (built once at start; the reloadable policy and routes are swapped in
//! place), building each component from the typed config and failing at start (not at first
//! use) on a bad key, secret or certificate, and the readiness checks. Must not: serve sockets
//! (see `server`) or handle requests (see `http`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::access::Access;
use crate::cache::TtlCache;
use crate::cache::redis::RedisStore;
use crate::config::{ClientCredentialKind, Config, GraphMode, Secret};
use crate::directory::{Directory, MemoryUserStore, RedisUserStore, UserStore};
use crate::entra::EntraValidator;
use crate::entra::jwks::JwksCache;
use crate::exchange::{ExchangeParts, ExchangeService};
use crate::graph::{ClientCredential, GraphClient, Photo};
use crate::identity::IdentityHeaders;
use crate::issuer::Issuer;
use crate::keys::{KeyError, KeyRing};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::proxy::routes::RouteTable;
use crate::proxy::{Proxy, client_tls, upstream_client};
use crate::ratelimit::ExchangeLimits;
use crate::revocation::{MemoryRevocations, RedisRevocations, RevocationStore};
use crate::tls::ReloadingCert;

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
        let keys = config
            .issuer
            .signing_keys
            .iter()
            .map(|k| crate::keys::SigningKey::load(&k.kid, k.algorithm, &k.private_key_file))
            .collect::<Result<Vec<_>, _>>()?;
        let issuer = Arc::new(Issuer::new(&config.issuer, KeyRing::from_keys(keys)));
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

impl AppState {
    /// Readiness turns 503 from now on (shutdown has begun).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
}
