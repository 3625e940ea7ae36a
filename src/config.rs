//! Configuration: YAML file + `ENTRA_GATEWAY__SECTION__KEY` environment overrides → a typed
//! [`Config`] whose values are already parsed, checked and loaded.
//!
//! Owns: loading in three steps, each in its own file: `raw` (the serde form with its
//! defaults: what the file says), `env` (the overlay), and `build` (raw → typed, collecting
//! every problem with its key path instead of stopping at the first); `secret` holds the
//! values that are never printed. The typed config holds parsed addresses, URLs, durations,
//! header names, lowercased group ids and the loaded key material, so no later code parses
//! again or falls back. Must not: open sockets, or log or print a secret.

mod build;
#[cfg(test)]
pub(crate) use build::entra_settings;
mod env;
mod parse;
mod raw;
mod secret;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use rustls::pki_types::CertificateDer;

pub use env::{EnvSource, ProcessEnv};
pub use raw::*;
pub use secret::{ClientCredential, Secret, redact_url};

use crate::forwarded::TrustedProxies;
use crate::identity::IdentityHeaders;
use crate::keys::KeyRing;
use crate::tls::ReloadingCert;

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
    /// The problems grouped by section, in the order the sections appear in a config file;
    /// unknown keys first (a typo explains what follows it).
    fn sorted(mut problems: Vec<Problem>) -> Self {
        const ORDER: [&str; 10] = [
            "(file)",
            "server",
            "entra",
            "authorization",
            "issuer",
            "cache",
            "directory",
            "proxy",
            "logging",
            "telemetry",
        ];
        let rank = |p: &Problem| {
            let section = p.path.split(['.', '[']).next().unwrap_or_default();
            let unknown = !p.message.starts_with("unknown key");
            (unknown, ORDER.iter().position(|s| *s == section).unwrap_or(ORDER.len()))
        };
        problems.sort_by_key(rank);
        ConfigError { problems }
    }

    /// Names the file in file-level problems (`(file)`, and YAML errors' `<input>`).
    fn in_file(mut self, path: &Path) -> Self {
        let shown = path.display().to_string();
        for p in &mut self.problems {
            if p.path == "(file)" {
                p.path = shown.clone();
            }
            p.message = p.message.replace("<input>", &shown);
        }
        self
    }

    fn one(path: &str, message: impl Into<String>) -> Self {
        ConfigError { problems: vec![Problem { path: path.into(), message: message.into() }] }
    }
}

/// Whether the files the config names (keys, secrets, certificates) are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChecks {
    /// Read and check them: the gateway is about to use them.
    Read,
    /// Do not touch them (they exist only in the cluster): `check-config --syntax-only`.
    Skip,
}

// === The typed configuration ===

/// The configuration the gateway runs with: parsed, checked and loaded.
pub struct Config {
    /// The file's content with defaults applied: what `check-config` prints and what a reload
    /// compares (secrets by value).
    pub raw: RawConfig,
    pub server: ServerSettings,
    pub entra: EntraSettings,
    pub authorization: AuthorizationSettings,
    pub issuer: IssuerSettings,
    pub cache: CacheSettings,
    pub directory: DirectorySettings,
    pub proxy: ProxySettings,
    pub logging: LoggingConfig,
    pub telemetry: TelemetrySettings,
    /// SHA-256 of the file's bytes this was loaded from ([`Config::load`]; `None` from text):
    /// the live reload's first check compares the file against it, so an unchanged file is
    /// not parsed again (nor its keys loaded and self-tested) right after the start.
    pub source_sha256: Option<[u8; 32]>,
}

/// `entra.continuous_access`, parsed.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub enabled: bool,
    pub poll_interval: Duration,
    /// The tenant whose directory is followed (the home tenant).
    pub tenant: String,
}

/// `telemetry.*` with the standard `OTEL_*` variables applied.
#[derive(Debug, Clone, Default)]
pub struct TelemetrySettings {
    /// Where spans go; `None`: traces are off.
    pub exporter: Option<OtlpTarget>,
    /// `telemetry.sample_ratio`, unless `OTEL_TRACES_SAMPLER` is set (then `None`: the SDK
    /// reads the variables).
    pub sample_ratio: Option<f64>,
    /// `OTEL_SERVICE_NAME`, else `entra-gateway`.
    pub service_name: String,
}

/// An OTLP receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpTarget {
    pub protocol: OtlpProtocol,
    /// The full URL spans are sent to (`…/v1/traces` for HTTP); `None`: the exporter resolves
    /// it from `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` itself.
    pub endpoint: Option<String>,
}

/// `directory.*`, parsed.
#[derive(Debug, Clone, Default)]
pub struct DirectorySettings {
    /// The PostgreSQL user directory, when configured.
    pub postgres: Option<PostgresSettings>,
}

/// The PostgreSQL connection: URL parsed (its password stays inside `config`), CA loaded.
#[derive(Clone)]
pub struct PostgresSettings {
    pub config: tokio_postgres::Config,
    /// CA certificates trusted for PostgreSQL besides the system roots.
    pub ca: Vec<CertificateDer<'static>>,
    pub pool_size: usize,
    pub timeout: Duration,
}

impl fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("hosts", &self.config.get_hosts().len())
            .field("dbname", &self.config.get_dbname())
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// `server.*`, parsed; the listener certificate and extra CA loaded.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The public listener's certificate, when it serves HTTPS.
    pub listener_tls: Option<Arc<ReloadingCert>>,
    /// CA certificates trusted for outbound calls besides the system roots.
    pub extra_ca: Vec<CertificateDer<'static>>,
    pub shutdown_grace: Duration,
    pub max_exchange_body_bytes: usize,
    pub exchange_body_timeout: Duration,
    pub write_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Threads serving the public listener (at least 1).
    pub workers: usize,
    pub http2_max_concurrent_streams: u32,
    pub trusted_proxies: TrustedProxies,
    pub rate_limit: RateLimitConfig,
    /// `server.cors`, when set.
    pub cors: Option<Arc<crate::cors::CorsPolicy>>,
    /// `server.admin_token_file`'s token, when set.
    pub admin_token: Option<Secret>,
}

/// `entra.*`, parsed: hosts without a trailing `/`, ids lowercase, the credential loaded.
#[derive(Debug)]
pub struct EntraSettings {
    pub cloud: Cloud,
    pub authority: String,
    pub graph_url: String,
    /// Host of v1 token issuers (`https://{host}/{tid}/`).
    pub v1_issuer_host: &'static str,
    pub tenants: Vec<String>,
    pub client_id: String,
    pub audiences: Vec<String>,
    pub required_scopes: Vec<String>,
    pub accepted_token_versions: Vec<u8>,
    pub clock_skew: Duration,
    pub graph_mode: GraphMode,
    pub group_lookup: GroupLookup,
    pub request_timeout: Duration,
    pub graph_max_retries: u32,
    pub graph_max_retry_wait: Duration,
    /// How the gateway authenticates to Entra; `None` in `claims` mode (no Graph) without
    /// continuous access.
    pub credential: Option<ClientCredential>,
    /// `continuous_access`, for the home tenant.
    pub continuous_access: SyncSettings,
}

/// `authorization.*` with every group id lowercase, and the set of all configured groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationSettings {
    pub allowed_groups: BTreeSet<String>,
    pub group_roles: BTreeMap<String, Vec<String>>,
    pub allow_any_tenant_user: bool,
    /// Client ids lowercase.
    pub apps: AppsConfig,
    /// Every group id the config mentions (allowed, role and route groups): what Graph is
    /// asked about.
    pub configured_groups: BTreeSet<String>,
}

/// `issuer.*` with the signing keys loaded (the first signs).
pub struct IssuerSettings {
    pub issuer: String,
    pub audience: String,
    pub token_ttl: Duration,
    pub keys: KeyRing,
}

/// `cache.*` with the Redis CA, URL and password files loaded.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub redis: Option<RedisSettings>,
    /// `redis_integrity_key_file`'s key; `None`: derived from the signing keys.
    pub integrity_key: Option<Secret>,
    pub max_revocations: usize,
    pub l1_ttl: Duration,
    pub revocation_requires_redis: bool,
    pub key_prefix: String,
    pub group_ttl: Duration,
    pub negative_ttl: Duration,
    pub jwks_ttl: Duration,
    pub jwks_max_stale: Duration,
    pub profile_ttl: Duration,
}

/// Where Redis is, and how to reach it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub target: RedisTarget,
    /// PEM CA bundle for `rediss://` (besides the system roots).
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
    /// ACL user and password (`redis_username`, `redis_password_file`), put into the URL.
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl RedisSettings {
    /// `url` with the configured user and password in it (those already in it stay otherwise).
    pub fn with_credentials(&self, url: &Secret) -> Result<Secret, String> {
        if self.username.is_none() && self.password.is_none() {
            return Ok(url.clone());
        }
        let mut u = url::Url::parse(url.expose()).map_err(|_| "cache.redis_url: not a URL".to_string())?;
        if let Some(name) = &self.username {
            u.set_username(name).map_err(|_| "cache.redis_username: cannot be set on this URL".to_string())?;
        }
        if let Some(password) = &self.password {
            u.set_password(Some(password.expose()))
                .map_err(|_| "cache.redis_password_file: cannot be set on this URL".to_string())?;
        }
        Ok(Secret::new(u.to_string()))
    }
}

#[derive(Debug, Clone)]
pub enum RedisTarget {
    Single(Secret),
    Cluster(Vec<Secret>),
}

/// `proxy.*`: identity header names built, routes parsed.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub identity: IdentityHeaders,
    /// `strip_request_headers`, lowercase with `-`.
    pub strip_headers: Vec<String>,
    pub routes: Vec<RouteSpec>,
    pub original_uri: Option<OriginalUriSource>,
    pub unmatched: Unmatched,
}

/// One route, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The metrics/log label: `name`, or the path prefix.
    pub label: String,
    pub prefix: String,
    pub auth: RouteAuth,
    pub timeout: Duration,
    /// Lowercase group ids; `None` means any authenticated user.
    pub groups: Option<Vec<String>>,
    pub strip_prefix: bool,
    pub allow_empty_segments: bool,
    pub allow_apps: bool,
    /// `server.cors` applies to this route.
    pub cors: bool,
    /// `path_prefix` compared with the request's case as it is.
    pub case_sensitive: bool,
    /// What the upstream gets in `Authorization` (the route's, or the proxy's).
    pub forward_token: ForwardToken,
    /// The `aud` of this route's assertion tokens.
    pub audience: String,
    /// Authentication contexts the caller's token must carry (`c1`...).
    pub auth_context: Vec<String>,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `Host` of requests to the upstream: its authority (a default port left out).
    pub host_header: http::HeaderValue,
    /// The upstream URL's path without a trailing `/`.
    pub base_path: String,
}

// === Loading ===

impl Config {
    /// Reads, overlays, parses, checks and loads the config at `path` (every file it names;
    /// relative paths are relative to the config file's directory).
    pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let text = read(path)?;
        let (mut raw, problems, from_env) = parse(&text, env).map_err(|e| e.in_file(path))?;
        raw.resolve_paths(base_dir(path));
        let built = with_problems(problems, build::build(raw, FileChecks::Read, env), &from_env)
            .map_err(|e| e.in_file(path))?;
        let mut config = built.ok_or_else(|| ConfigError::one("<config>", "not built"))?;
        config.source_sha256 = Some(source_digest(text.as_bytes()));
        Ok(config)
    }

    /// [`Config::load`] from YAML text (relative paths: the working directory).
    pub fn from_yaml(text: &str, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let (raw, problems, from_env) = parse(text, env)?;
        let built = with_problems(problems, build::build(raw, FileChecks::Read, env), &from_env)?;
        built.ok_or_else(|| ConfigError::one("<config>", "not built"))
    }
}

/// `check-config`: every problem of the config at `path`, the files it names included unless
/// `files` is `Skip`; the effective raw config when there is none.
pub fn check(path: &Path, env: &dyn EnvSource, files: FileChecks) -> Result<RawConfig, ConfigError> {
    let text = configmap_config(read(path)?);
    let (mut raw, problems, from_env) = parse(&text, env).map_err(|e| e.in_file(path))?;
    raw.resolve_paths(base_dir(path));
    let effective = raw.clone().with_defaults();
    with_problems(problems, build::build(raw, files, env), &from_env).map_err(|e| e.in_file(path))?;
    Ok(effective)
}

/// The directory relative paths in the config at `path` are relative to.
fn base_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// [`check`] on YAML text.
pub fn check_yaml(text: &str, env: &dyn EnvSource, files: FileChecks) -> Result<RawConfig, ConfigError> {
    let (raw, problems, from_env) = parse(text, env)?;
    let effective = raw.clone().with_defaults();
    with_problems(problems, build::build(raw, files, env), &from_env)?;
    Ok(effective)
}

/// The problems found while parsing and building, in the file's order of sections; a problem
/// on a key an environment variable set names the variable; the follow-ons of a misspelt
/// section are dropped.
fn with_problems<T>(
    mut first: Vec<Problem>,
    built: Result<T, ConfigError>,
    from_env: &parse::FromEnv,
) -> Result<T, ConfigError> {
    match built {
        Ok(t) if first.is_empty() => Ok(t),
        Ok(_) => Err(ConfigError::sorted(first)),
        Err(e) => {
            let mut later = e.problems;
            parse::name_env_vars(&mut later, from_env);
            first.extend(later);
            let typos: Vec<String> = first
                .iter()
                .filter_map(|p| {
                    let s = p.message.strip_prefix("unknown key (did you mean `")?.split('`').next()?;
                    Some(match p.path.rsplit_once('.') {
                        Some((parent, _)) => format!("{parent}.{s}"),
                        None => s.to_string(),
                    })
                })
                .collect();
            first.retain(|p| {
                p.message.starts_with("unknown key")
                    || !typos.iter().any(|t| {
                        p.path == *t || p.path.starts_with(&format!("{t}.")) || p.path.starts_with(&format!("{t}["))
                    })
            });
            Err(ConfigError::sorted(first))
        }
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    /// Builds the typed config, reading the files it names; no environment beyond the process's.
    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        build::build(raw, FileChecks::Read, &ProcessEnv)?.ok_or_else(|| ConfigError::one("<config>", "not built"))
    }
}

/// The config file inside a Kubernetes ConfigMap manifest (`data["config.yaml"]`, as the chart
/// renders it), so that `helm template … --show-only templates/configmap.yaml > cm.yaml` can be
/// checked as it is; any other text is returned unchanged.
fn configmap_config(text: String) -> String {
    let Ok(serde_json::Value::Object(doc)) = serde_saphyr::from_str::<serde_json::Value>(&text) else { return text };
    if doc.get("kind").and_then(|k| k.as_str()) != Some("ConfigMap") {
        return text;
    }
    let data = doc.get("data").and_then(|d| d.as_object());
    let inner = data.and_then(|d| d.get("config.yaml").or_else(|| d.values().next())).and_then(|v| v.as_str());
    inner.map(str::to_string).unwrap_or(text)
}

/// SHA-256 of a config file's bytes: [`Config::source_sha256`], and what the live reload
/// compares it with.
pub fn source_digest(bytes: &[u8]) -> [u8; 32] {
    <sha2::Sha256 as sha2::Digest>::digest(bytes).into()
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one("<file>", format!("cannot read {}: {e}", path.display())))
}

/// YAML text + overrides → the raw config and the problems found so far (every type error,
/// unknown key and missing section); `Err` when the file could not be read as a config at all.
fn parse(text: &str, env: &dyn EnvSource) -> Result<(RawConfig, Vec<Problem>, parse::FromEnv), ConfigError> {
    match parse::parse_with_sources(text, env) {
        (Some(raw), problems, from_env) => Ok((raw, problems, from_env)),
        (None, problems, _) => Err(ConfigError::sorted(problems)),
    }
}

impl RouteSpec {
    /// `host:port` of the upstream (for logs).
    pub fn upstream_authority(&self) -> &str {
        self.authority.as_str()
    }
}

#[cfg(test)]
mod tests;
