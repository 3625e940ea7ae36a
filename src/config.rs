//! Configuration: YAML file + `ENTRA_GATEWAY__SECTION__KEY` environment overrides, parsed into
//! typed structs and validated up front.
//!
//! Owns: the shape of the config file, defaults, env overlay, the list of problems that
//! `check-config` prints (each with its key path), and the redacted rendering of the effective
//! config. Must not: open sockets, read signing keys for use (the issuer does), or log secrets.
//! Secrets are wrapped in [`Secret`], whose `Debug` and `Serialize` print `<redacted>`.
//!
//! Loading is three steps: YAML text -> JSON value tree; environment overlay on that tree;
//! typed deserialization (unknown keys collected, not fatal one by one) followed by
//! [`Config::validate`], which collects every semantic problem instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "ENTRA_GATEWAY__";

/// A problem found in the configuration: where (`entra.tenants[0]`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem in a config, so that an operator fixes them in one round.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(path: &str, message: impl Into<String>) -> Self {
        ConfigError { problems: vec![Problem { path: path.into(), message: message.into() }] }
    }
}

/// A secret value (client secret, Redis password). Never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself: call only where it is sent to its one consumer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

// === Config structs ===

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Config {
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
    /// Reverse-proxy routes and identity headers. Defaults to no routes.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Log level and format.
    #[serde(default)]
    pub logging: LoggingConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Open connections on the public listener; one more is closed at once (and counted).
    /// Defaults to `10000`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a connection with no request in flight stays open (HTTP/2 gets a GOAWAY; an
    /// HTTP/1.1 keep-alive connection is also bounded by `header_read_timeout`). Defaults to `60s`.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection (announced in SETTINGS). Defaults to `100`.
    #[serde(default = "default_h2_streams")]
    pub http2_max_concurrent_streams: u32,
    /// How long `/auth/exchange` may take to receive its body; slower is 408. Defaults to `10s`.
    #[serde(default = "default_exchange_body_timeout", with = "humantime_serde")]
    pub exchange_body_timeout: Duration,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
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
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
}

impl AppsConfig {
    pub fn enabled(&self) -> bool {
        !self.clients.is_empty() || !self.app_roles.is_empty()
    }
}

pub use crate::keys::SigningAlgorithm;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SigningKeyConfig {
    /// Key id published in the JWKS and set in the token header.
    pub kid: String,
    /// Defaults to `ES256`.
    #[serde(default = "default_signing_algorithm")]
    pub algorithm: SigningAlgorithm,
    /// PEM private key (PKCS#8, or PKCS#1/SEC1 for RSA/EC).
    pub private_key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CacheConfig {
    /// Redis URL (`redis://[user:password@]host:port/db`, `rediss://` for TLS); absent (and no
    /// `cluster_urls`) means in-process memory only. Its password is redacted when printed.
    #[serde(default)]
    pub redis_url: Option<Secret>,
    /// Redis Cluster seed nodes (instead of `redis_url`). Defaults to none.
    #[serde(default)]
    pub cluster_urls: Vec<Secret>,
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

/// Whether a route needs an internal token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteAuth {
    Required,
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RouteConfig {
    /// Request path prefix; the longest matching prefix wins.
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

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ProxyConfig {
    /// Prefix of the identity headers; incoming headers with it are always stripped.
    /// Defaults to `X-Auth-`.
    #[serde(default = "default_identity_prefix")]
    pub identity_header_prefix: String,
    /// Forward the internal token to upstreams in `Authorization`. Defaults to `true`.
    #[serde(default = "default_true")]
    pub forward_token: bool,
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

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LoggingConfig {
    /// `tracing` filter (e.g. `info,entra_gateway=debug`); `RUST_LOG` wins. Defaults to `info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `auto`, `json` or `pretty`. Defaults to `auto`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
}

// === defaults ===

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
fn default_l1_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_key_prefix() -> String {
    "entra-gateway:".into()
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
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            http2_max_concurrent_streams: default_h2_streams(),
            exchange_body_timeout: default_exchange_body_timeout(),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            redis_url: None,
            cluster_urls: Vec::new(),
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

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            identity_header_prefix: default_identity_prefix(),
            forward_token: true,
            routes: Vec::new(),
            forward_auth: ForwardAuthConfig::default(),
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig { level: default_log_level(), format: default_log_format() }
    }
}

// === loading ===

/// Where `load` reads environment overrides from; tests pass a map instead of `set_var`.
pub trait EnvSource {
    /// Every `(name, value)` pair whose name starts with [`ENV_PREFIX`].
    fn overrides(&self) -> Vec<(String, String)>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn overrides(&self) -> Vec<(String, String)> {
        std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect()
    }
}

impl EnvSource for Vec<(String, String)> {
    fn overrides(&self) -> Vec<(String, String)> {
        self.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).cloned().collect()
    }
}

/// How strictly `check` looks at the files the config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChecks {
    /// Key and secret files must exist and be readable.
    Read,
    /// Do not touch key and secret files (they exist only in the cluster).
    Skip,
}

impl Config {
    /// Reads, overlays, parses and validates the config at `path`.
    pub fn load(path: &Path, env: &dyn EnvSource, files: FileChecks) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one("<file>", format!("cannot read {}: {e}", path.display())))?;
        Config::from_yaml(&text, env, files)
    }

    /// Parses and validates YAML text (with env overrides).
    pub fn from_yaml(text: &str, env: &dyn EnvSource, files: FileChecks) -> Result<Config, ConfigError> {
        let mut tree: Value = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::one("<yaml>", format!("not valid YAML: {e}")))?
        };
        let mut problems = Vec::new();
        if tree.pointer("/entra/client_secret").is_some_and(|v| !v.is_null()) {
            problems.push(Problem {
                path: "entra.client_secret".into(),
                message: "secrets never go in the YAML file: use entra.client_secret_file or \
                          the ENTRA_GATEWAY__ENTRA__CLIENT_SECRET environment variable"
                    .into(),
            });
        }
        apply_env(&mut tree, env, &mut problems);
        let mut unknown = Vec::new();
        let parsed: Result<Config, _> = {
            let mut record = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
            let de = serde_ignored::Deserializer::new(tree, &mut record);
            serde_path_to_error::deserialize(de)
        };
        for path in unknown {
            problems.push(Problem { path, message: "unknown key".into() });
        }
        let config = match parsed {
            Ok(c) => c,
            Err(e) => {
                let path = e.path().to_string();
                problems.push(Problem { path, message: e.into_inner().to_string() });
                return Err(ConfigError { problems });
            }
        };
        problems.extend(config.validate(files));
        if problems.is_empty() { Ok(config.with_defaults()) } else { Err(ConfigError { problems }) }
    }

    /// Fills values whose default depends on other keys.
    fn with_defaults(mut self) -> Config {
        let (authority, graph, _) = self.entra.cloud.hosts();
        if self.entra.authority_host.is_empty() {
            self.entra.authority_host = authority.into();
        }
        if self.entra.graph_url.is_empty() {
            self.entra.graph_url = graph.into();
        }
        if self.entra.audiences.is_empty() {
            let id = &self.entra.client_id;
            self.entra.audiences = vec![format!("api://{id}"), id.clone()];
        }
        self
    }

    /// Every group id the config mentions: the set Graph is asked about.
    pub fn configured_groups(&self) -> BTreeSet<String> {
        let a = &self.authorization;
        let mut set: BTreeSet<String> = a.allowed_groups.iter().map(|g| g.to_lowercase()).collect();
        set.extend(a.group_roles.keys().map(|g| g.to_lowercase()));
        for r in &self.proxy.routes {
            set.extend(r.allowed_groups.iter().flatten().map(|g| g.to_lowercase()));
        }
        set
    }

    /// The effective config as YAML, secrets redacted.
    pub fn redacted_yaml(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(url) = &self.cache.redis_url
            && let Some(v) = value.pointer_mut("/cache/redis_url")
        {
            *v = Value::String(redact_url(url.expose()));
        }
        for (i, url) in self.cache.cluster_urls.iter().enumerate() {
            if let Some(v) = value.pointer_mut(&format!("/cache/cluster_urls/{i}")) {
                *v = Value::String(redact_url(url.expose()));
            }
        }
        serde_saphyr::to_string(&value).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Every semantic problem, each with its key path.
    pub fn validate(&self, files: FileChecks) -> Vec<Problem> {
        let mut v = Validator::default();
        self.validate_server(&mut v, files);
        self.validate_entra(&mut v, files);
        self.validate_authorization(&mut v);
        self.validate_issuer(&mut v, files);
        self.validate_cache(&mut v, files);
        self.validate_proxy(&mut v);
        v.problems
    }

    fn validate_server(&self, v: &mut Validator, files: FileChecks) {
        let s = &self.server;
        v.socket_addr("server.listen", &s.listen);
        v.socket_addr("server.admin_listen", &s.admin_listen);
        if s.max_exchange_body_bytes < 4096 {
            v.push("server.max_exchange_body_bytes", "must be at least 4096");
        }
        if s.header_read_timeout < Duration::from_millis(100) {
            v.push("server.header_read_timeout", "at least 100ms");
        }
        if s.idle_timeout < Duration::from_millis(100) {
            v.push("server.idle_timeout", "at least 100ms");
        }
        if s.exchange_body_timeout < Duration::from_millis(100) {
            v.push("server.exchange_body_timeout", "at least 100ms");
        }
        if s.max_connections == 0 {
            v.push("server.max_connections", "at least 1");
        }
        if s.http2_max_concurrent_streams == 0 {
            v.push("server.http2_max_concurrent_streams", "at least 1");
        }
        if let Some(tls) = &s.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                v.push("server.tls", "cert_file and key_file go together");
            }
            if files == FileChecks::Read {
                for (path, file) in [
                    ("server.tls.cert_file", &tls.cert_file),
                    ("server.tls.key_file", &tls.key_file),
                    ("server.tls.extra_ca_file", &tls.extra_ca_file),
                ] {
                    if let Some(f) = file {
                        v.readable_nonempty(path, f);
                    }
                }
            }
        }
        for (name, b) in [
            ("server.rate_limit.exchange_per_ip", s.rate_limit.exchange_per_ip),
            ("server.rate_limit.exchange_per_user", s.rate_limit.exchange_per_user),
        ] {
            if let Some(b) = b
                && (b.per_minute == 0 || b.burst == 0)
            {
                v.push(name, "per_minute and burst must be at least 1 (use null to disable)");
            }
        }
    }

    fn validate_entra(&self, v: &mut Validator, files: FileChecks) {
        let e = &self.entra;
        if !e.authority_host.is_empty() {
            v.outbound_url("entra.authority_host", &e.authority_host);
        }
        if !e.graph_url.is_empty() {
            v.outbound_url("entra.graph_url", &e.graph_url);
        }
        for (i, scope) in e.required_scopes.iter().enumerate() {
            if scope.trim().is_empty() || scope.contains(' ') || scope.contains("://") {
                v.push(
                    &format!("entra.required_scopes[{i}]"),
                    "a scope name as in `scp`, e.g. access_as_user (not the api:// URI)",
                );
            }
        }
        if e.tenants.is_empty() {
            v.push("entra.tenants", "at least one tenant id is required");
        }
        for (i, t) in e.tenants.iter().enumerate() {
            v.guid(&format!("entra.tenants[{i}]"), t);
        }
        if e.client_id.is_empty() {
            v.push("entra.client_id", "required: the app (client) id of the gateway's registration");
        } else {
            v.guid("entra.client_id", &e.client_id);
        }
        for (i, a) in e.audiences.iter().enumerate() {
            if a.trim().is_empty() {
                v.push(&format!("entra.audiences[{i}]"), "must not be empty");
            }
        }
        if e.accepted_token_versions.is_empty() {
            v.push("entra.accepted_token_versions", "at least one of 1, 2");
        }
        for (i, ver) in e.accepted_token_versions.iter().enumerate() {
            if !matches!(ver, 1 | 2) {
                v.push(&format!("entra.accepted_token_versions[{i}]"), "must be 1 or 2");
            }
        }
        if e.clock_skew > Duration::from_secs(600) {
            v.push("entra.clock_skew", "at most 10m");
        }
        if e.request_timeout.is_zero() {
            v.push("entra.request_timeout", "must be greater than zero");
        }
        let uses_graph = e.graph_mode != GraphMode::Claims;
        match (e.client_credential, &e.client_secret_file, &e.client_secret) {
            (ClientCredentialKind::Secret, Some(_), Some(_)) => v.push(
                "entra.client_secret_file",
                "set either client_secret_file or ENTRA_GATEWAY__ENTRA__CLIENT_SECRET, not both",
            ),
            (ClientCredentialKind::Secret, None, None) if uses_graph => v.push(
                "entra.client_secret_file",
                "graph_mode app/obo needs a client credential: set client_secret_file or \
                 ENTRA_GATEWAY__ENTRA__CLIENT_SECRET, or client_credential: workload_identity or \
                 certificate (or use graph_mode: claims)",
            ),
            (ClientCredentialKind::Secret, Some(path), None) if files == FileChecks::Read => {
                v.readable_nonempty("entra.client_secret_file", path)
            }
            (ClientCredentialKind::Certificate, _, _) => {
                for (path, file) in [
                    ("entra.client_certificate_file", &e.client_certificate_file),
                    ("entra.client_certificate_key_file", &e.client_certificate_key_file),
                ] {
                    match file {
                        None => v.push(path, "required with client_credential: certificate"),
                        Some(f) if files == FileChecks::Read => v.readable_nonempty(path, f),
                        Some(_) => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn validate_authorization(&self, v: &mut Validator) {
        let a = &self.authorization;
        for (client, roles) in &a.apps.clients {
            v.guid(&format!("authorization.apps.clients.{client}"), client);
            v.role_names(&format!("authorization.apps.clients.{client}"), roles);
        }
        for (role, roles) in &a.apps.app_roles {
            if role.trim().is_empty() {
                v.push("authorization.apps.app_roles", "app role names are non-empty");
            }
            v.role_names(&format!("authorization.apps.app_roles.{role}"), roles);
        }
        if a.allowed_groups.is_empty() && !a.allow_any_tenant_user {
            v.push(
                "authorization.allowed_groups",
                "empty: nobody could sign in; list group ids, or set allow_any_tenant_user: true",
            );
        }
        for (i, g) in a.allowed_groups.iter().enumerate() {
            v.guid(&format!("authorization.allowed_groups[{i}]"), g);
        }
        for (g, roles) in &a.group_roles {
            v.guid(&format!("authorization.group_roles.{g}"), g);
            for (i, r) in roles.iter().enumerate() {
                if r.trim().is_empty() || r.contains(',') {
                    v.push(
                        &format!("authorization.group_roles.{g}[{i}]"),
                        "role names are non-empty and have no comma",
                    );
                }
            }
        }
    }

    fn validate_issuer(&self, v: &mut Validator, files: FileChecks) {
        let i = &self.issuer;
        if i.issuer.is_empty() {
            v.push("issuer.issuer", "required: the `iss` of the gateway's tokens (a URL)");
        } else if url::Url::parse(&i.issuer).is_err() {
            v.push("issuer.issuer", "must be an absolute URL");
        }
        if i.audience.trim().is_empty() {
            v.push("issuer.audience", "must not be empty");
        }
        if i.token_ttl < Duration::from_secs(30) || i.token_ttl > Duration::from_secs(24 * 3600) {
            v.push("issuer.token_ttl", "must be between 30s and 24h");
        }
        if i.signing_keys.is_empty() {
            v.push("issuer.signing_keys", "at least one key is required (the first signs)");
        }
        let mut seen = BTreeSet::new();
        for (n, k) in i.signing_keys.iter().enumerate() {
            let path = format!("issuer.signing_keys[{n}]");
            if k.kid.trim().is_empty() {
                v.push(&format!("{path}.kid"), "must not be empty");
            } else if !seen.insert(k.kid.clone()) {
                v.push(&format!("{path}.kid"), "duplicate kid");
            }
            if files == FileChecks::Read
                && let Err(e) = crate::keys::SigningKey::load(&k.kid, k.algorithm, &k.private_key_file)
            {
                v.push(&format!("{path}.private_key_file"), e.to_string());
            }
        }
    }

    fn validate_cache(&self, v: &mut Validator, files: FileChecks) {
        let c = &self.cache;
        let redis_url = |v: &mut Validator, path: &str, url: &Secret| match url::Url::parse(url.expose()) {
            Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host().is_some() => {}
            _ => v.push(path, "must be a redis:// or rediss:// URL"),
        };
        if let Some(url) = &c.redis_url {
            redis_url(v, "cache.redis_url", url);
        }
        for (i, url) in c.cluster_urls.iter().enumerate() {
            redis_url(v, &format!("cache.cluster_urls[{i}]"), url);
        }
        if c.redis_url.is_some() && !c.cluster_urls.is_empty() {
            v.push("cache.cluster_urls", "set either redis_url or cluster_urls, not both");
        }
        if c.revocation_requires_redis && c.redis_url.is_none() && c.cluster_urls.is_empty() {
            v.push("cache.revocation_requires_redis", "needs redis_url or cluster_urls");
        }
        if c.redis_timeout.is_zero() {
            v.push("cache.redis_timeout", "must be greater than zero");
        }
        if let (Some(path), FileChecks::Read) = (&c.redis_ca_file, files) {
            v.readable_nonempty("cache.redis_ca_file", path);
        }
        if c.jwks_ttl < Duration::from_secs(300) {
            v.push("cache.jwks_ttl", "at least 5m (Entra rotates keys over days)");
        }
        if c.jwks_max_stale > Duration::from_secs(30 * 86_400) {
            v.push("cache.jwks_max_stale", "at most 30d (older keys may have been revoked by Microsoft)");
        }
    }

    fn validate_proxy(&self, v: &mut Validator) {
        let p = &self.proxy;
        let prefix = &p.identity_header_prefix;
        if prefix.len() < 2 || http::HeaderName::from_bytes(format!("{prefix}x").as_bytes()).is_err() {
            v.push("proxy.identity_header_prefix", "must be a valid header-name prefix such as X-Auth-");
        }
        let mut seen = BTreeSet::new();
        for (n, r) in p.routes.iter().enumerate() {
            let path = format!("proxy.routes[{n}]");
            if !r.path_prefix.starts_with('/') {
                v.push(&format!("{path}.path_prefix"), "must start with /");
            } else if crate::path::CanonicalPath::parse(&r.path_prefix)
                .map(|c| c.as_str() != r.path_prefix || c.has_empty_segments())
                .unwrap_or(true)
            {
                v.push(
                    &format!("{path}.path_prefix"),
                    "must be a canonical path (no `//`, `.`/`..` segments, `;`, `\\` or escapes of \
                     unreserved characters; escapes in upper case)",
                );
            } else if !seen.insert(r.path_prefix.clone()) {
                v.push(&format!("{path}.path_prefix"), "duplicate path_prefix");
            }
            if r.path_prefix.starts_with("/auth/") || r.path_prefix.starts_with("/.well-known/") {
                v.push(&format!("{path}.path_prefix"), "/auth/ and /.well-known/ belong to the gateway");
            }
            match url::Url::parse(&r.upstream) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => v.push(&format!("{path}.upstream"), "must be an http:// or https:// URL"),
            }
            if r.timeout.is_zero() {
                v.push(&format!("{path}.timeout"), "must be greater than zero");
            }
            for (i, g) in r.allowed_groups.iter().flatten().enumerate() {
                v.guid(&format!("{path}.allowed_groups[{i}]"), g);
            }
            if r.auth == RouteAuth::None && r.allowed_groups.is_some() {
                v.push(&format!("{path}.allowed_groups"), "needs auth: required");
            }
            if r.auth == RouteAuth::None && r.allow_apps {
                v.push(&format!("{path}.allow_apps"), "needs auth: required (auth: none lets everyone in)");
            }
        }
    }
}

/// Collects problems.
#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn push(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }

    fn guid(&mut self, path: &str, value: &str) {
        if uuid::Uuid::parse_str(value).is_err() || value.len() != 36 {
            self.push(path, format!("`{value}` is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"));
        }
    }

    fn role_names(&mut self, path: &str, roles: &[String]) {
        for (i, r) in roles.iter().enumerate() {
            if r.trim().is_empty() || r.contains(',') {
                self.push(&format!("{path}[{i}]"), "role names are non-empty and have no comma");
            }
        }
    }

    fn socket_addr(&mut self, path: &str, value: &str) {
        if value.parse::<SocketAddr>().is_err() {
            self.push(path, format!("`{value}` is not an address:port such as 0.0.0.0:8080"));
        }
    }

    /// `https://`, or `http://` to a loopback host only.
    fn outbound_url(&mut self, path: &str, value: &str) {
        match url::Url::parse(value) {
            Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
            Ok(u) if u.scheme() == "http" && is_loopback_host(&u) => {}
            Ok(_) => self.push(path, "must be https:// (http:// only for a loopback host)"),
            Err(e) => self.push(path, format!("not a URL: {e}")),
        }
    }

    fn readable_nonempty(&mut self, path: &str, file: &Path) {
        match std::fs::read_to_string(file) {
            Ok(s) if !s.trim().is_empty() => {}
            Ok(_) => self.push(path, format!("{} is empty", file.display())),
            Err(e) => self.push(path, format!("cannot read {}: {e}", file.display())),
        }
    }
}

fn is_loopback_host(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// Replaces the password of a URL with `<redacted>`.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => "<redacted>".into(),
    }
}

/// Applies `ENTRA_GATEWAY__SECTION__KEY=value` overrides to the tree. Values are read as YAML
/// scalars or flow collections (`true`, `15m`, `[a, b]`); numeric indexes address list items
/// (`ENTRA_GATEWAY__PROXY__ROUTES__0__TIMEOUT=5s`).
fn apply_env(tree: &mut Value, env: &dyn EnvSource, problems: &mut Vec<Problem>) {
    let mut vars = env.overrides();
    vars.sort();
    for (name, raw) in vars {
        let segments: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
        if segments.iter().any(String::is_empty) {
            problems.push(Problem { path: name, message: "malformed override name".into() });
            continue;
        }
        let value = parse_env_value(&raw);
        if let Err(msg) = set_path(tree, &segments, value) {
            problems.push(Problem { path: name, message: msg });
        }
    }
}

fn parse_env_value(raw: &str) -> Value {
    let t = raw.trim();
    if t == "null" || t == "~" {
        return Value::Null;
    }
    let yaml_syntax = t.starts_with(['[', '{', '"', '\'']) || t == "true" || t == "false";
    if yaml_syntax && let Ok(v) = serde_saphyr::from_str::<Value>(t) {
        return v;
    }
    if let Ok(n) = t.parse::<u64>() {
        return Value::from(n);
    }
    Value::String(raw.to_string())
}

fn set_path(tree: &mut Value, segments: &[String], value: Value) -> Result<(), String> {
    let mut node = tree;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        node = match node {
            Value::Object(map) => {
                if last {
                    map.insert(seg.clone(), value);
                    return Ok(());
                }
                map.entry(seg.clone()).or_insert_with(|| Value::Object(Default::default()))
            }
            Value::Array(items) => {
                let idx: usize = seg.parse().map_err(|_| format!("`{seg}` is not a list index"))?;
                let len = items.len();
                let slot = items.get_mut(idx).ok_or(format!("index {idx} out of range (list has {len})"))?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            Value::Null => {
                *node = Value::Object(Default::default());
                return set_path(node, &segments[i..], value);
            }
            _ => return Err(format!("`{seg}` is inside a scalar")),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "11111111-1111-1111-1111-111111111111";
    const CLIENT: &str = "22222222-2222-2222-2222-222222222222";
    const GROUP: &str = "33333333-3333-3333-3333-333333333333";

    fn minimal() -> String {
        format!(
            "entra:\n  tenants: [\"{TENANT}\"]\n  client_id: \"{CLIENT}\"\n  graph_mode: claims\n\
             authorization:\n  allowed_groups: [\"{GROUP}\"]\n\
             issuer:\n  issuer: https://gw.example\n  signing_keys:\n    - {{ kid: k1, private_key_file: /nonexistent.pem }}\n"
        )
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_yaml(&minimal(), &no_env(), FileChecks::Skip).unwrap();
        assert_eq!(c.entra.audiences, vec![format!("api://{CLIENT}"), CLIENT.to_string()]);
        assert_eq!(c.issuer.token_ttl, Duration::from_secs(900));
        assert_eq!(c.cache.group_ttl, Duration::from_secs(300));
        assert_eq!(c.server.listen, "0.0.0.0:8080");
        assert_eq!(c.issuer.signing_keys[0].algorithm, SigningAlgorithm::ES256);
    }

    #[test]
    fn every_problem_is_listed_with_its_key_path() {
        let yaml = "entra:\n  tenants: [nope]\n  client_id: \"\"\n  authority_host: http://evil.example\n\
                    authorization: {}\nissuer:\n  issuer: \"\"\n  signing_keys: []\nbogus: 1\n";
        let err = Config::from_yaml(yaml, &no_env(), FileChecks::Skip).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "bogus",
            "entra.tenants[0]",
            "entra.client_id",
            "entra.authority_host",
            "authorization.allowed_groups",
            "issuer.issuer",
            "issuer.signing_keys",
            "entra.client_secret_file",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    #[test]
    fn unknown_nested_keys_are_errors() {
        let yaml = minimal() + "cache:\n  group_tll: 5m\n";
        let err = Config::from_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap_err();
        assert_eq!(err.problems[0].path, "cache.group_tll");
    }

    #[test]
    fn env_overrides_scalars_lists_and_list_items() {
        let yaml = minimal() + "proxy:\n  routes:\n    - { path_prefix: /api/, upstream: \"http://127.0.0.1:1\" }\n";
        let env = vec![
            ("ENTRA_GATEWAY__CACHE__GROUP_TTL".to_string(), "2m".to_string()),
            ("ENTRA_GATEWAY__ENTRA__ACCEPTED_TOKEN_VERSIONS".to_string(), "[2]".to_string()),
            ("ENTRA_GATEWAY__PROXY__ROUTES__0__TIMEOUT".to_string(), "5s".to_string()),
            ("ENTRA_GATEWAY__PROXY__FORWARD_TOKEN".to_string(), "false".to_string()),
            ("ENTRA_GATEWAY__SERVER__RATE_LIMIT__EXCHANGE_PER_USER".to_string(), "null".to_string()),
            ("ENTRA_GATEWAY__ISSUER__AUDIENCE".to_string(), "\"123\"".to_string()),
            ("ENTRA_GATEWAY_CONFIG".to_string(), "/ignored".to_string()),
        ];
        let c = Config::from_yaml(&yaml, &env, FileChecks::Skip).unwrap();
        assert_eq!(c.cache.group_ttl, Duration::from_secs(120));
        assert_eq!(c.entra.accepted_token_versions, vec![2]);
        assert_eq!(c.proxy.routes[0].timeout, Duration::from_secs(5));
        assert!(!c.proxy.forward_token);
        assert_eq!(c.server.rate_limit.exchange_per_user, None);
        assert_eq!(c.issuer.audience, "123", "a quoted value is a string, quotes removed");
    }

    #[test]
    fn client_secret_in_yaml_is_refused_but_accepted_from_env() {
        let yaml = minimal().replace("graph_mode: claims", "graph_mode: app\n  client_secret: s3cr3t");
        let err = Config::from_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap_err();
        assert!(err.problems.iter().any(|p| p.path == "entra.client_secret"));
        let yaml = minimal().replace("graph_mode: claims", "graph_mode: app");
        let env = vec![("ENTRA_GATEWAY__ENTRA__CLIENT_SECRET".to_string(), "s3cr3t".to_string())];
        let c = Config::from_yaml(&yaml, &env, FileChecks::Skip).unwrap();
        assert_eq!(c.entra.client_secret.as_ref().unwrap().expose(), "s3cr3t");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(!c.redacted_yaml().contains("s3cr3t"));
    }

    #[test]
    fn redis_password_is_redacted_when_printed() {
        let env =
            vec![("ENTRA_GATEWAY__CACHE__REDIS_URL".to_string(), "redis://user:hunter2@127.0.0.1:6379/0".to_string())];
        let c = Config::from_yaml(&minimal(), &env, FileChecks::Skip).unwrap();
        let shown = c.redacted_yaml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://user:redacted@127.0.0.1:6379/0"), "{shown}");
    }

    #[test]
    fn missing_key_file_is_reported_unless_syntax_only() {
        assert!(Config::from_yaml(&minimal(), &no_env(), FileChecks::Skip).is_ok());
        let err = Config::from_yaml(&minimal(), &no_env(), FileChecks::Read).unwrap_err();
        assert_eq!(err.problems[0].path, "issuer.signing_keys[0].private_key_file");
    }

    #[test]
    fn each_client_credential_names_what_it_needs() {
        let app = minimal().replace("graph_mode: claims", "graph_mode: app\n  client_credential: certificate");
        let err = Config::from_yaml(&app, &no_env(), FileChecks::Skip).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, vec!["entra.client_certificate_file", "entra.client_certificate_key_file"]);
        let wi = minimal().replace("graph_mode: claims", "graph_mode: obo\n  client_credential: workload_identity");
        assert!(Config::from_yaml(&wi, &no_env(), FileChecks::Skip).is_ok(), "no secret needed");
    }

    #[test]
    fn a_cloud_preset_sets_the_hosts_and_explicit_ones_win() {
        let c = Config::from_yaml(
            &minimal().replace("graph_mode: claims", "graph_mode: claims\n  cloud: usgov"),
            &no_env(),
            FileChecks::Skip,
        )
        .unwrap();
        assert_eq!(c.entra.authority_host, "https://login.microsoftonline.us");
        assert_eq!(c.entra.graph_url, "https://graph.microsoft.us/v1.0");
        let yaml = minimal()
            .replace("graph_mode: claims", "graph_mode: claims\n  cloud: china\n  graph_url: https://g.example/v1.0");
        let c = Config::from_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap();
        assert_eq!(c.entra.authority_host, "https://login.chinacloudapi.cn");
        assert_eq!(c.entra.graph_url, "https://g.example/v1.0");
        let c = Config::from_yaml(&minimal(), &no_env(), FileChecks::Skip).unwrap();
        assert_eq!(c.entra.authority_host, "https://login.microsoftonline.com");
    }

    #[test]
    fn empty_allowed_groups_needs_explicit_allow_any() {
        let yaml = minimal().replace(&format!("allowed_groups: [\"{GROUP}\"]"), "allow_any_tenant_user: true");
        assert!(Config::from_yaml(&yaml, &no_env(), FileChecks::Skip).is_ok());
    }
}
