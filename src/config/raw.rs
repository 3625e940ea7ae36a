//! The configuration file's raw form: serde structs, defaults, and the effective config as
//! `check-config` prints it.
//!
//! Owns: the shape of the file (one struct per section; every field's doc says its default),
//! defaults that depend on other keys (cloud hosts, audiences), and the redacted rendering.
//! Must not: hold parsed or loaded values (see the typed `Config`), or print a secret. This file
//! is over 500 lines because it is the schema: one place lists every key with its default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::secret::{Secret, redact_url};

/// The whole configuration file, as written (with defaults).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RawConfig {
    /// Listeners, TLS and shutdown. Defaults to the values of [`ServerConfig`].
    #[serde(default)]
    pub server: ServerConfig,
    /// The Entra ID app registration and tenants. Required.
    pub entra: EntraConfig,
    /// Who is allowed in and with which roles. Required.
    pub authorization: AuthorizationConfig,
    /// The internal token the gateway mints. Required.
    pub issuer: IssuerConfig,
    /// Cache TTLs and the optional Redis. Defaults to in-process only.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Where user records are kept durably. Defaults to Redis when configured, else in process.
    #[serde(default)]
    pub directory: DirectoryConfig,
    /// Reverse-proxy routes and identity headers. Defaults to no routes.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Log level and format.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// OpenTelemetry traces. Defaults to off.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ServerConfig {
    /// Public listener: exchange, logout, verify, well-known, proxy. Defaults to `0.0.0.0:8080`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Admin listener: /metrics, /healthz, /readyz. Defaults to `0.0.0.0:9090`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// TLS for the public listener. Defaults to none (plain HTTP).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long in-flight requests may finish after SIGTERM. Defaults to `20s`.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest request body `/auth/exchange` reads. Defaults to 64 KiB.
    #[serde(default = "default_max_exchange_body")]
    pub max_exchange_body_bytes: usize,
    /// How long a client may take to send a request head; also how long an idle keep-alive
    /// connection stays open. Defaults to `10s`.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Peers (IPs or CIDRs) whose `X-Forwarded-For` is believed when finding the client IP
    /// (rate limits). Defaults to none: the socket peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Token buckets on `/auth/exchange`. Defaults to the values of [`RateLimitConfig`].
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Browser origins allowed to call the gateway's endpoints and routes. Defaults to none
    /// (no CORS headers: only same-origin pages can call the gateway).
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Open connections on the public listener; one more is closed at once (and counted).
    /// Defaults to `10000`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a connection with no request in flight stays open (HTTP/2 gets a GOAWAY; an
    /// HTTP/1.1 keep-alive connection is also bounded by `header_read_timeout`). Defaults to `60s`.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Threads serving the public listener, each with its own event loop and upstream
    /// connection pool (like nginx's worker processes); `0`: one per CPU the process may use
    /// (its cgroup quota included). Defaults to `0`.
    #[serde(default)]
    pub workers: usize,
    /// Concurrent streams per HTTP/2 connection (announced in SETTINGS). Defaults to `100`.
    #[serde(default = "default_h2_streams")]
    pub http2_max_concurrent_streams: u32,
    /// How long `/auth/exchange` may take to receive its body; slower is 408. Defaults to `10s`.
    #[serde(default = "default_exchange_body_timeout", with = "humantime_serde")]
    pub exchange_body_timeout: Duration,
    /// File holding a bearer token that admin actions (the kill switch) accept from any peer.
    /// Defaults to none: admin actions are answered for loopback peers only (`kubectl exec`).
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// How long a response write may make no progress (a client that stops reading, an HTTP/2
    /// stream left at a zero flow-control window) before the connection is closed (HTTP/2: the
    /// stream is reset) and its upstream connection freed. Defaults to `30s`.
    #[serde(default = "default_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct TlsConfig {
    /// PEM certificate chain of the public listener (with `key_file`: serve HTTPS; both are
    /// re-read when they change). Defaults to none.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the public listener. Defaults to none.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle trusted, besides the system roots, for outbound calls (Entra, Graph,
    /// upstreams). Defaults to none.
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The listener's certificate and key, when HTTPS is configured.
    pub fn listener(&self) -> Option<(&Path, &Path)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }
}

/// A token bucket: `per_minute` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct BucketConfig {
    pub per_minute: u32,
    pub burst: u32,
}

/// `server.cors`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct CorsConfig {
    /// `scheme://host[:port]` exactly as the browser sends it (`https://app.example.com`,
    /// `http://localhost:3000`), `https://*.example.com` (one label), or `"*"` (any origin; not
    /// with credentials).
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for. Defaults to GET, HEAD, POST, PUT, PATCH, DELETE.
    #[serde(default = "default_cors_methods")]
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for. Defaults to authorization, content-type,
    /// x-request-id.
    #[serde(default = "default_cors_headers")]
    pub allowed_headers: Vec<String>,
    /// Response headers the page may read besides the safelisted ones. Defaults to
    /// x-request-id. Identity headers are refused here.
    #[serde(default = "default_cors_expose")]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer. Defaults to `10m`.
    #[serde(default = "default_cors_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// `Access-Control-Allow-Credentials: true` (cookies, client certificates). The gateway
    /// needs none (tokens travel in `Authorization`). Defaults to `false`.
    #[serde(default)]
    pub allow_credentials: bool,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].map(String::from).to_vec()
}
fn default_cors_headers() -> Vec<String> {
    ["authorization", "content-type", "x-request-id"].map(String::from).to_vec()
}
fn default_cors_expose() -> Vec<String> {
    vec!["x-request-id".into()]
}
fn default_cors_max_age() -> Duration {
    Duration::from_secs(600)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RateLimitConfig {
    /// Exchanges per client IP; `null` disables. Defaults to 300/min, burst 60 (offices share
    /// one address behind NAT).
    #[serde(default = "default_per_ip")]
    pub exchange_per_ip: Option<BucketConfig>,
    /// Exchanges per user (tid, oid); `null` disables. Defaults to 30/min, burst 10.
    #[serde(default = "default_per_user")]
    pub exchange_per_user: Option<BucketConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { exchange_per_ip: default_per_ip(), exchange_per_user: default_per_user() }
    }
}

fn default_per_ip() -> Option<BucketConfig> {
    Some(BucketConfig { per_minute: 300, burst: 60 })
}
fn default_per_user() -> Option<BucketConfig> {
    Some(BucketConfig { per_minute: 30, burst: 10 })
}

/// How group membership and profiles are read when the token does not carry the groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphMode {
    /// Client-credentials token of the gateway's app; `/users/{oid}/...`.
    App,
    /// On-Behalf-Of token for the signed-in user; `/me/...`.
    Obo,
    /// No Graph at all: groups only from the token, overage is a 403.
    Claims,
}

/// How the gateway authenticates to Entra's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCredentialKind {
    /// A client secret (`client_secret_file` or `ENTRA_GATEWAY__ENTRA__CLIENT_SECRET`).
    Secret,
    /// A federated token (Kubernetes service-account token) sent as `client_assertion`.
    WorkloadIdentity,
    /// A JWT signed with the app's certificate key, sent as `client_assertion`.
    Certificate,
}

/// Which Graph call answers "is this user in these groups".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupLookup {
    /// `POST .../checkMemberGroups` with the configured ids, 20 per call (transitive).
    CheckMemberGroups,
    /// `GET .../transitiveMemberOf?$select=id&$top=999`, following `@odata.nextLink`.
    TransitiveMemberOf,
}

/// Which Microsoft cloud the tenants live in: sets the authority and Graph hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// Global Azure: `login.microsoftonline.com`, `graph.microsoft.com`.
    Public,
    /// Azure US Government: `login.microsoftonline.us`, `graph.microsoft.us`.
    Usgov,
    /// Azure China (21Vianet): `login.chinacloudapi.cn`, `microsoftgraph.chinacloudapi.cn`.
    China,
}

impl Cloud {
    /// (authority host, Graph URL, host of v1 token issuers `https://{host}/{tid}/`).
    pub fn hosts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Cloud::Public => {
                ("https://login.microsoftonline.com", "https://graph.microsoft.com/v1.0", "sts.windows.net")
            }
            Cloud::Usgov => ("https://login.microsoftonline.us", "https://graph.microsoft.us/v1.0", "sts.windows.net"),
            Cloud::China => (
                "https://login.chinacloudapi.cn",
                "https://microsoftgraph.chinacloudapi.cn/v1.0",
                "sts.chinacloudapi.cn",
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct EntraConfig {
    /// `public`, `usgov` or `china`: sets `authority_host`, `graph_url` and the v1 issuer host.
    /// Defaults to `public`.
    #[serde(default = "default_cloud")]
    pub cloud: Cloud,
    /// Entra authority. Defaults to the cloud's (`https://login.microsoftonline.com`).
    #[serde(default)]
    pub authority_host: String,
    /// Microsoft Graph base URL. Defaults to the cloud's (`https://graph.microsoft.com/v1.0`).
    #[serde(default)]
    pub graph_url: String,
    /// Delegated scopes of which a user's token must carry at least one (`scp`), e.g.
    /// `["access_as_user"]`. Defaults to none (any delegated scope of the API).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Accepted tenant ids (`tid`); the first is the home tenant. Required, at least one.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// The gateway's app (client) id. Required.
    #[serde(default)]
    pub client_id: String,
    /// Accepted `aud` values. Defaults to `["api://{client_id}", "{client_id}"]`.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// File holding the client secret (app and obo modes). Defaults to none.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The client secret itself; only from `ENTRA_GATEWAY__ENTRA__CLIENT_SECRET`, never the YAML.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// How the gateway proves its identity to Entra (app and obo modes): `secret`,
    /// `workload_identity` (AKS: the federated token file) or `certificate`. Defaults to `secret`.
    #[serde(default = "default_client_credential")]
    pub client_credential: ClientCredentialKind,
    /// Federated token file for `workload_identity`. Defaults to the `AZURE_FEDERATED_TOKEN_FILE`
    /// environment variable that the AKS workload identity webhook sets.
    #[serde(default)]
    pub federated_token_file: Option<PathBuf>,
    /// PEM certificate registered on the app, for `certificate`. Defaults to none.
    #[serde(default)]
    pub client_certificate_file: Option<PathBuf>,
    /// PEM RSA private key of that certificate, for `certificate`. Defaults to none.
    #[serde(default)]
    pub client_certificate_key_file: Option<PathBuf>,
    /// Accepted Entra token versions. Defaults to `[1, 2]`.
    #[serde(default = "default_token_versions")]
    pub accepted_token_versions: Vec<u8>,
    /// Leeway on `exp`/`nbf`. Defaults to `60s`.
    #[serde(default = "default_clock_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
    /// `app`, `obo` or `claims`. Defaults to `app`.
    #[serde(default = "default_graph_mode")]
    pub graph_mode: GraphMode,
    /// `check_member_groups` or `transitive_member_of`. Defaults to `check_member_groups`.
    #[serde(default = "default_group_lookup")]
    pub group_lookup: GroupLookup,
    /// Timeout of each call to Entra or Graph. Defaults to `10s`.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Retries after a Graph 429/503. Defaults to `2`.
    #[serde(default = "default_graph_retries")]
    pub graph_max_retries: u32,
    /// Longest `Retry-After` the gateway waits out inside one exchange. Defaults to `5s`;
    /// a longer one fails the exchange with 503 and that `Retry-After`.
    #[serde(default = "default_max_retry_wait", with = "humantime_serde")]
    pub graph_max_retry_wait: Duration,
    /// Directory sync from Graph delta queries: disabled, deleted and removed users lose access
    /// within `poll_interval`. Defaults to off.
    #[serde(default)]
    pub continuous_access: ContinuousAccessConfig,
}

/// `entra.continuous_access`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ContinuousAccessConfig {
    /// Follow the home tenant's directory (application permissions `User.Read.All` and
    /// `GroupMember.Read.All`). Defaults to `false`.
    #[serde(default)]
    pub enabled: bool,
    /// How often Graph is asked for changes; at least `1s`. Defaults to `30s`.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for ContinuousAccessConfig {
    fn default() -> Self {
        ContinuousAccessConfig { enabled: false, poll_interval: default_poll_interval() }
    }
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct AuthorizationConfig {
    /// Group object ids; membership (transitive) in at least one lets the user in.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Group id -> roles granted to its members.
    #[serde(default)]
    pub group_roles: BTreeMap<String, Vec<String>>,
    /// Let in every user of an accepted tenant (required when `allowed_groups` is empty).
    /// Defaults to `false`.
    #[serde(default)]
    pub allow_any_tenant_user: bool,
    /// App callers (daemons, other services with client-credentials tokens). Defaults to none:
    /// app-only tokens are refused.
    #[serde(default)]
    pub apps: AppsConfig,
}

/// Which calling apps may exchange an app-only token, and with which internal roles. An app
/// is let in when its client id (`azp`/`appid`) is in `clients` or it holds an app role (the
/// token's `roles`) listed in `app_roles`; its roles are the union of what matched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct AppsConfig {
    /// Client id -> internal roles. Defaults to none.
    #[serde(default)]
    pub clients: BTreeMap<String, Vec<String>>,
    /// App role (as assigned in Entra) -> internal roles. Defaults to none.
    #[serde(default)]
    pub app_roles: BTreeMap<String, Vec<String>>,
    /// Tenants whose app tokens these rules apply to: an app role assigned in a partner tenant
    /// is that tenant admin's grant, not yours. Each must be in `entra.tenants`. Defaults to the
    /// home tenant (the first of `entra.tenants`) only.
    #[serde(default)]
    pub tenants: Vec<String>,
}

impl AppsConfig {
    pub fn enabled(&self) -> bool {
        !self.clients.is_empty() || !self.app_roles.is_empty()
    }
}

pub use crate::keys::SigningAlgorithm;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SigningKeyConfig {
    /// Key id published in the JWKS and set in the token header.
    pub kid: String,
    /// Defaults to `ES256`.
    #[serde(default = "default_signing_algorithm")]
    pub algorithm: SigningAlgorithm,
    /// PEM private key (PKCS#8, or PKCS#1/SEC1 for RSA/EC).
    pub private_key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct IssuerConfig {
    /// `iss` of the internal tokens. Required.
    #[serde(default)]
    pub issuer: String,
    /// `aud` of the internal tokens. Defaults to `internal-services`.
    #[serde(default = "default_internal_audience")]
    pub audience: String,
    /// Lifetime of the internal token. Defaults to `15m`.
    #[serde(default = "default_token_ttl", with = "humantime_serde")]
    pub token_ttl: Duration,
    /// First signs; all are published and accepted (rotation). Required, at least one.
    #[serde(default)]
    pub signing_keys: Vec<SigningKeyConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct CacheConfig {
    /// Redis URL (`redis://[user:password@]host:port/db`, `rediss://` for TLS); absent (and no
    /// `cluster_urls`) means in-process memory only. Its password is redacted when printed.
    #[serde(default)]
    pub redis_url: Option<Secret>,
    /// File holding the Redis URL (a mounted Secret), instead of `redis_url`: the URL with its
    /// password then never sits in an environment variable. Defaults to none.
    #[serde(default)]
    pub redis_url_file: Option<PathBuf>,
    /// Redis Cluster seed nodes (instead of `redis_url`). Defaults to none.
    #[serde(default)]
    pub cluster_urls: Vec<Secret>,
    /// ACL user name for Redis (`AUTH user password`), instead of one in the URL. Defaults to
    /// none (the URL's, or the `default` user).
    #[serde(default)]
    pub redis_username: Option<String>,
    /// File holding the Redis password (with `redis_username` for an ACL user), instead of one
    /// in the URL. Defaults to none.
    #[serde(default)]
    pub redis_password_file: Option<PathBuf>,
    /// File holding the key (at least 32 characters) that seals every value shared in Redis.
    /// Defaults to none: the key is derived from `issuer.signing_keys`, which every replica
    /// already shares (the first key seals, any opens), so nothing new needs distributing.
    #[serde(default)]
    pub redis_integrity_key_file: Option<PathBuf>,
    /// Most revoked tokens this replica holds in process; beyond it the soonest-expiring are
    /// dropped first (counted in `entra_gateway_revocations_evicted_total`). Defaults to `100000`.
    #[serde(default = "default_max_revocations")]
    pub max_revocations: usize,
    /// PEM CA bundle trusted for `rediss://` (besides the system roots). Defaults to none.
    #[serde(default)]
    pub redis_ca_file: Option<PathBuf>,
    /// Timeout of each Redis command; a slower Redis counts as down. Defaults to `250ms`.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// How long a value read from Redis is reused in process before Redis is asked again (so
    /// that other replicas' changes are seen quickly). Defaults to `10s`.
    #[serde(default = "default_l1_ttl", with = "humantime_serde")]
    pub l1_ttl: Duration,
    /// With Redis down, refuse (503) requests whose revocation cannot be checked, instead of
    /// trusting this replica's own revocations. Defaults to `false`.
    #[serde(default)]
    pub revocation_requires_redis: bool,
    /// Prefix of every Redis key. Defaults to `entra-gateway:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// How long a positive group decision is reused; `0s` disables that cache. Defaults to `5m`.
    #[serde(default = "default_group_ttl", with = "humantime_serde")]
    pub group_ttl: Duration,
    /// How long a "not in any allowed group" decision is reused; `0s` disables it. Defaults to `1m`.
    #[serde(default = "default_negative_ttl", with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// How long a tenant's JWKS is used before it is refetched. Defaults to `24h`.
    #[serde(default = "default_jwks_ttl", with = "humantime_serde")]
    pub jwks_ttl: Duration,
    /// How long past `jwks_ttl` the keys may still be used while Entra cannot be reached;
    /// older keys fail closed (503). Defaults to `72h`.
    #[serde(default = "default_jwks_max_stale", with = "humantime_serde")]
    pub jwks_max_stale: Duration,
    /// How long a Graph profile (and photo) is reused; `0s` reads Graph at every sign-in.
    /// Defaults to `1h`.
    #[serde(default = "default_profile_ttl", with = "humantime_serde")]
    pub profile_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct DirectoryConfig {
    /// PostgreSQL URL of the user directory (`postgres://user:password@host:5432/db?sslmode=require`).
    /// Set it with `ENTRA_GATEWAY__DIRECTORY__POSTGRES_URL` or use `postgres_url_file`: a URL
    /// with a password is refused in the YAML file. Defaults to none: user records live in
    /// Redis (when configured) or in process.
    #[serde(default)]
    pub postgres_url: Option<Secret>,
    /// File holding the PostgreSQL URL (a mounted Secret), instead of `postgres_url`. Defaults
    /// to none.
    #[serde(default)]
    pub postgres_url_file: Option<PathBuf>,
    /// PEM CA bundle trusted for PostgreSQL's certificate (besides the system roots and
    /// `server.tls.extra_ca_file`). Defaults to none.
    #[serde(default)]
    pub postgres_ca_file: Option<PathBuf>,
    /// Most PostgreSQL connections of one replica. Defaults to `8`.
    #[serde(default = "default_postgres_pool_size")]
    pub postgres_pool_size: usize,
    /// Timeout of each PostgreSQL call (connect, statement, pool wait); a slower PostgreSQL
    /// counts as down. Defaults to `2s`.
    #[serde(default = "default_postgres_timeout", with = "humantime_serde")]
    pub postgres_timeout: Duration,
}

/// Whether a route needs an internal token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteAuth {
    Required,
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RouteConfig {
    /// Request path prefix; the longest matching prefix wins. Compared case-insensitively unless
    /// `case_sensitive`; a prefix ending in `/` also covers its bare path (`/admin/` covers
    /// `/admin` and `/admin?x`).
    pub path_prefix: String,
    /// `http://` or `https://` base URL of the upstream.
    pub upstream: String,
    /// `required` or `none`. Defaults to `required`.
    #[serde(default = "default_route_auth")]
    pub auth: RouteAuth,
    /// Upstream response timeout. Defaults to `30s`.
    #[serde(default = "default_route_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Groups required on this route (any of them), on top of the global policy.
    #[serde(default)]
    pub allowed_groups: Option<Vec<String>>,
    /// Remove `path_prefix` before forwarding. Defaults to `false`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Route name used in metrics and logs. Defaults to the path prefix.
    #[serde(default)]
    pub name: Option<String>,
    /// Let app callers (`authorization.apps`) use this route. Defaults to `false`: users only.
    #[serde(default)]
    pub allow_apps: bool,
    /// Accept paths with empty segments (`//`) on this route and forward them as they are.
    /// The route is still chosen as if `//` were `/`. Defaults to `false` (400).
    #[serde(default)]
    pub allow_empty_segments: bool,
    /// Apply `server.cors` to this route (the gateway answers its preflights and sets the CORS
    /// headers of its responses, replacing the upstream's). `false`: browsers on other origins
    /// cannot call it. Defaults to `true`.
    #[serde(default = "default_true")]
    pub cors: bool,
    /// Compare `path_prefix` with the request path's case as it is. Defaults to `false`: matched
    /// case-insensitively (ASCII), because Express, ASP.NET Core and IIS serve `/Admin/x` from
    /// the `/admin/` handlers; set it only for an upstream that truly tells them apart.
    #[serde(default)]
    pub case_sensitive: bool,
    /// This route's `proxy.forward_token` (`assertion`, `session` or `false`). Defaults to the
    /// proxy's.
    #[serde(default)]
    pub forward_token: Option<ForwardToken>,
    /// The `aud` of the assertion tokens this route's upstream gets. Defaults to the
    /// upstream's origin (`http://orders.default.svc:8080`).
    #[serde(default)]
    pub audience: Option<String>,
    /// Conditional Access authentication contexts (`c1`…`c99`, one or a list) the caller's token
    /// must carry (step-up): without one, 401 with a claims challenge. Defaults to none.
    #[serde(default, deserialize_with = "one_or_many")]
    pub auth_context: Vec<String>,
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Form>::deserialize(d)? {
        None => Vec::new(),
        Some(Form::One(s)) => vec![s],
        Some(Form::Many(v)) => v,
    })
}

/// `proxy.forward_token`: `assertion`, `session`, `false` (or `true`, meaning `assertion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardToken {
    /// A token minted for the route (its own `aud`).
    #[default]
    Assertion,
    /// The caller's gateway token as it came.
    Session,
    /// No `Authorization` header.
    Off,
}

impl Serialize for ForwardToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ForwardToken::Assertion => s.serialize_str("assertion"),
            ForwardToken::Session => s.serialize_str("session"),
            ForwardToken::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for ForwardToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Bool(bool),
            Text(String),
        }
        match Form::deserialize(d)? {
            Form::Bool(true) => Ok(ForwardToken::Assertion),
            Form::Bool(false) => Ok(ForwardToken::Off),
            Form::Text(t) => match t.to_ascii_lowercase().as_str() {
                "assertion" | "true" => Ok(ForwardToken::Assertion),
                "session" => Ok(ForwardToken::Session),
                "false" | "off" | "none" => Ok(ForwardToken::Off),
                _ => Err(serde::de::Error::custom(format!("`{t}` is not one of assertion, session, false"))),
            },
        }
    }
}

fn default_strip_headers() -> Vec<String> {
    [
        "X-Original-URL",
        "X-Original-URI",
        "X-Rewrite-URL",
        "X-Forwarded-Prefix",
        "X-Forwarded-Port",
        "X-Forwarded-Ssl",
        "X-Forwarded-Scheme",
        "True-Client-IP",
        "X-Remote-User",
    ]
    .map(String::from)
    .to_vec()
}

impl RouteConfig {
    /// A route with every default: `auth: required`, 30 s timeout, no groups.
    pub fn new(path_prefix: &str, upstream: &str) -> RouteConfig {
        RouteConfig {
            path_prefix: path_prefix.into(),
            upstream: upstream.into(),
            auth: default_route_auth(),
            timeout: default_route_timeout(),
            allowed_groups: None,
            strip_prefix: false,
            name: None,
            allow_apps: false,
            allow_empty_segments: false,
            cors: true,
            case_sensitive: false,
            forward_token: None,
            audience: None,
            auth_context: Vec::new(),
        }
    }
}

/// Where forward-auth (`/auth/verify`) reads the original request's URI from: the one source
/// the ingress in front sets (and overwrites). Every other original-URI header is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum OriginalUriSource {
    /// `X-Original-URL` (a full URL): ingress-nginx `auth-url`.
    #[serde(rename = "x-original-url")]
    XOriginalUrl,
    /// `X-Forwarded-Uri`: Traefik ForwardAuth, Caddy `forward_auth`.
    #[serde(rename = "x-forwarded-uri")]
    XForwardedUri,
    /// `X-Original-URI`: nginx `auth_request` with `proxy_set_header X-Original-URI $request_uri`.
    #[serde(rename = "x-original-uri")]
    XOriginalUri,
    /// The path after `/auth/verify`: Envoy ext_authz HTTP with `path_prefix: /auth/verify`.
    #[serde(rename = "path")]
    Path,
}

impl OriginalUriSource {
    /// The header this source reads, if it is a header.
    pub fn header(self) -> Option<&'static str> {
        match self {
            OriginalUriSource::XOriginalUrl => Some("x-original-url"),
            OriginalUriSource::XForwardedUri => Some("x-forwarded-uri"),
            OriginalUriSource::XOriginalUri => Some("x-original-uri"),
            OriginalUriSource::Path => None,
        }
    }
}

/// What forward-auth answers for an original path that matches no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// 403.
    Deny,
    /// Any valid gateway token is enough.
    Authenticated,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct ForwardAuthConfig {
    /// `x-original-url` (ingress-nginx), `x-forwarded-uri` (Traefik, Caddy), `x-original-uri`
    /// (nginx `auth_request`) or `path` (Envoy, `/auth/verify/<path>`). Defaults to none:
    /// `/auth/verify` answers 404 until it is set.
    #[serde(default)]
    pub original_uri: Option<OriginalUriSource>,
    /// `deny` (403) or `authenticated` for a path no route matches. Defaults to `deny` when
    /// routes are configured and `authenticated` when there are none.
    #[serde(default)]
    pub unmatched: Option<Unmatched>,
}

impl ForwardAuthConfig {
    /// The policy for unmatched paths, with its default applied.
    pub fn unmatched(&self, routes: &[RouteConfig]) -> Unmatched {
        self.unmatched.unwrap_or(if routes.is_empty() { Unmatched::Authenticated } else { Unmatched::Deny })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ProxyConfig {
    /// Prefix of the identity headers; incoming headers with it are always stripped (and
    /// `X-Auth-*` too, whatever the prefix). Defaults to `X-Auth-`.
    #[serde(default = "default_identity_prefix")]
    pub identity_header_prefix: String,
    /// Which identity headers upstreams get: `x-auth` (the prefix's), `easy-auth` (App Service
    /// Authentication's `X-MS-CLIENT-PRINCIPAL*`, for apps moving off App Service) or `both`.
    /// Inbound `X-MS-CLIENT-PRINCIPAL*` and `X-MS-TOKEN-*` are stripped whatever it is.
    /// Defaults to `x-auth`.
    #[serde(default)]
    pub identity_headers: crate::identity::HeaderProfile,
    /// What upstreams of `auth: required` routes get in `Authorization`: `assertion` (a token
    /// minted for that route: `aud` is the route's `audience`, so a token one upstream saw is
    /// refused by the gateway and by every other upstream that checks `aud`), `session` (the
    /// caller's own gateway token: an upstream that receives it can replay it through the
    /// gateway as that user) or `false` (none). `true` means `assertion`. Each route may set its
    /// own. Defaults to `assertion`.
    #[serde(default)]
    pub forward_token: ForwardToken,
    /// Request headers removed before forwarding, in any case and with `_` read as `-`:
    /// frameworks re-route or re-authenticate on them (Spring, Symfony, Laravel, IIS).
    /// Defaults to X-Original-URL, X-Original-URI, X-Rewrite-URL, X-Forwarded-Prefix,
    /// X-Forwarded-Port, X-Forwarded-Ssl, X-Forwarded-Scheme, True-Client-IP, X-Remote-User.
    #[serde(default = "default_strip_headers")]
    pub strip_request_headers: Vec<String>,
    /// Routes; none by default.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Forward-auth (`/auth/verify`). Defaults to off until `original_uri` is set.
    #[serde(default)]
    pub forward_auth: ForwardAuthConfig,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, pretty otherwise.
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct LoggingConfig {
    /// `tracing` filter (e.g. `info,entra_gateway=debug`); `RUST_LOG` wins. Defaults to `info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `auto`, `json` or `pretty`. Defaults to `auto`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// One access line per request (method, route, status, duration, user, request id, and the
    /// reason of a failure). Defaults to `true`.
    #[serde(default = "default_true")]
    pub access_log: bool,
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies, to `{otlp_endpoint}/v1/traces`.
    #[default]
    Http,
    /// OTLP/gRPC, to `otlp_endpoint`.
    Grpc,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP receiver (`http://otel-collector.observability:4318`); spans go to
    /// `{otlp_endpoint}/v1/traces` (HTTP) or to it (gRPC). Defaults to none: traces are off
    /// unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `_TRACES_ENDPOINT`) is set.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `http` (protobuf) or `grpc`. Defaults to `http`, or `OTEL_EXPORTER_OTLP_PROTOCOL`.
    #[serde(default)]
    pub otlp_protocol: Option<OtlpProtocol>,
    /// Share of new traces recorded, 0.0 to 1.0; a trusted proxy's `traceparent` decides for
    /// its own traces. `OTEL_TRACES_SAMPLER` (and `_ARG`) win when set. Defaults to `1.0`.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { otlp_endpoint: None, otlp_protocol: None, sample_ratio: default_sample_ratio() }
    }
}

// === defaults ===

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_admin_listen() -> String {
    "0.0.0.0:9090".into()
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(20)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_h2_streams() -> u32 {
    100
}
fn default_exchange_body_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_exchange_body() -> usize {
    64 * 1024
}
fn default_cloud() -> Cloud {
    Cloud::Public
}
fn default_token_versions() -> Vec<u8> {
    vec![1, 2]
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_graph_mode() -> GraphMode {
    GraphMode::App
}
fn default_client_credential() -> ClientCredentialKind {
    ClientCredentialKind::Secret
}
fn default_group_lookup() -> GroupLookup {
    GroupLookup::CheckMemberGroups
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_graph_retries() -> u32 {
    2
}
fn default_max_retry_wait() -> Duration {
    Duration::from_secs(5)
}
fn default_signing_algorithm() -> SigningAlgorithm {
    SigningAlgorithm::ES256
}
fn default_internal_audience() -> String {
    "internal-services".into()
}
fn default_token_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_redis_timeout() -> Duration {
    Duration::from_millis(250)
}
fn default_postgres_pool_size() -> usize {
    8
}
fn default_postgres_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_l1_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_key_prefix() -> String {
    "entra-gateway:".into()
}
fn default_max_revocations() -> usize {
    100_000
}
fn default_group_ttl() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_jwks_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_jwks_max_stale() -> Duration {
    Duration::from_secs(72 * 3600)
}
fn default_profile_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_route_auth() -> RouteAuth {
    RouteAuth::Required
}
fn default_route_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_identity_prefix() -> String {
    "X-Auth-".into()
}
fn default_true() -> bool {
    true
}
fn default_log_level() -> String {
    "info".into()
}
fn default_log_format() -> LogFormat {
    LogFormat::Auto
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            tls: None,
            shutdown_grace: default_shutdown_grace(),
            max_exchange_body_bytes: default_max_exchange_body(),
            header_read_timeout: default_header_read_timeout(),
            trusted_proxies: Vec::new(),
            rate_limit: RateLimitConfig::default(),
            cors: None,
            max_connections: default_max_connections(),
            workers: 0,
            idle_timeout: default_idle_timeout(),
            http2_max_concurrent_streams: default_h2_streams(),
            exchange_body_timeout: default_exchange_body_timeout(),
            write_timeout: default_write_timeout(),
            admin_token_file: None,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            redis_url: None,
            redis_url_file: None,
            cluster_urls: Vec::new(),
            redis_username: None,
            redis_password_file: None,
            redis_integrity_key_file: None,
            max_revocations: default_max_revocations(),
            redis_ca_file: None,
            redis_timeout: default_redis_timeout(),
            l1_ttl: default_l1_ttl(),
            revocation_requires_redis: false,
            key_prefix: default_key_prefix(),
            group_ttl: default_group_ttl(),
            negative_ttl: default_negative_ttl(),
            jwks_ttl: default_jwks_ttl(),
            jwks_max_stale: default_jwks_max_stale(),
            profile_ttl: default_profile_ttl(),
        }
    }
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            postgres_url: None,
            postgres_url_file: None,
            postgres_ca_file: None,
            postgres_pool_size: default_postgres_pool_size(),
            postgres_timeout: default_postgres_timeout(),
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            identity_header_prefix: default_identity_prefix(),
            identity_headers: crate::identity::HeaderProfile::default(),
            forward_token: ForwardToken::default(),
            strip_request_headers: default_strip_headers(),
            routes: Vec::new(),
            forward_auth: ForwardAuthConfig::default(),
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig { level: default_log_level(), format: default_log_format(), access_log: true }
    }
}

impl RawConfig {
    /// Makes every relative file path relative to `base` (the config file's directory), so that
    /// a config works from any working directory.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.server.admin_token_file.iter_mut().for_each(fix);
        if let Some(tls) = &mut self.server.tls {
            tls.cert_file.iter_mut().chain(tls.key_file.iter_mut()).chain(tls.extra_ca_file.iter_mut()).for_each(fix);
        }
        let e = &mut self.entra;
        e.client_secret_file
            .iter_mut()
            .chain(e.federated_token_file.iter_mut())
            .chain(e.client_certificate_file.iter_mut())
            .chain(e.client_certificate_key_file.iter_mut())
            .for_each(fix);
        self.issuer.signing_keys.iter_mut().for_each(|k| fix(&mut k.private_key_file));
        let c = &mut self.cache;
        c.redis_ca_file
            .iter_mut()
            .chain(c.redis_url_file.iter_mut())
            .chain(c.redis_password_file.iter_mut())
            .chain(c.redis_integrity_key_file.iter_mut())
            .for_each(fix);
        let d = &mut self.directory;
        d.postgres_url_file.iter_mut().chain(d.postgres_ca_file.iter_mut()).for_each(fix);
    }

    /// Fills values whose default depends on other keys.
    pub(super) fn with_defaults(mut self) -> RawConfig {
        let (authority, graph, _) = self.entra.cloud.hosts();
        if self.entra.authority_host.is_empty() {
            self.entra.authority_host = authority.into();
        }
        if self.entra.graph_url.is_empty() {
            self.entra.graph_url = graph.into();
        }
        if self.entra.audiences.is_empty() && !self.entra.client_id.is_empty() {
            let id = &self.entra.client_id;
            self.entra.audiences = vec![format!("api://{id}"), id.clone()];
        }
        self
    }

    /// The effective config as YAML, secrets redacted.
    pub fn redacted_yaml(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(url) = &self.cache.redis_url
            && let Some(v) = value.pointer_mut("/cache/redis_url")
        {
            *v = Value::String(redact_url(url.expose()));
        }
        if let Some(url) = &self.directory.postgres_url
            && let Some(v) = value.pointer_mut("/directory/postgres_url")
        {
            *v = Value::String(redact_url(url.expose()));
        }
        for (i, url) in self.cache.cluster_urls.iter().enumerate() {
            if let Some(v) = value.pointer_mut(&format!("/cache/cluster_urls/{i}")) {
                *v = Value::String(redact_url(url.expose()));
            }
        }
        // Upstream URLs with credentials are refused, but a refused config is printed too.
        for (i, route) in self.proxy.routes.iter().enumerate() {
            if route.upstream.contains('@')
                && let Some(v) = value.pointer_mut(&format!("/proxy/routes/{i}/upstream"))
            {
                *v = Value::String(redact_url(&route.upstream));
            }
        }
        serde_saphyr::to_string(&value).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}
