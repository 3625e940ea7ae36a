//! Raw config → typed [`Config`]: parse, check and load in one pass, every problem collected
//! with its key path.
//!
//! Owns: each section's rules (what `check-config` reports) and turning its raw values into
//! typed ones: addresses, URLs, GUIDs (lowercase), header names, routes, and, with
//! [`FileChecks::Read`], the key, secret and certificate files. Must not: stop at the first
//! problem, or return a half-built config. Over 500 lines because it is every rule
//! `check-config` enforces, one function per section; split up, they would be harder to audit.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};

use super::*;
use crate::forwarded::TrustedProxies;
use crate::identity::IdentityHeaders;
use crate::keys::{KeyRing, SigningKey};
use crate::tls::ReloadingCert;

/// Builds the typed config; `Ok(None)` when `files` is `Skip` and the raw config is valid.
pub(super) fn build(raw: RawConfig, files: FileChecks, env: &dyn EnvSource) -> Result<Option<Config>, ConfigError> {
    let raw = raw.with_defaults();
    let read = files == FileChecks::Read;
    let mut p = Problems::default();
    let server = server(&raw.server, read, &mut p);
    let entra = entra(&raw.entra, read, env, &mut p);
    let authorization = authorization(&raw, &mut p);
    let issuer = issuer(&raw.issuer, read, &mut p);
    let cache = cache(&raw.cache, read, &mut p);
    let directory = directory(&raw.directory, read, &mut p);
    let proxy = proxy(&raw.proxy, &mut p);
    let telemetry = telemetry(&raw.telemetry, env, &mut p);
    cors_exposes_no_identity(&raw, &mut p);
    assertion_audiences_differ(&raw, proxy.as_ref(), &mut p);
    if !p.0.is_empty() {
        return Err(ConfigError { problems: p.0 });
    }
    if !read {
        return Ok(None);
    }
    match (server, entra, authorization, issuer, cache, directory, proxy) {
        (Some(server), Some(entra), Some(authorization), Some(issuer), Some(cache), Some(directory), Some(proxy)) => {
            let logging = raw.logging.clone();
            Ok(Some(Config {
                raw,
                server,
                entra,
                authorization,
                issuer,
                cache,
                directory,
                proxy,
                logging,
                telemetry,
                source_sha256: None,
            }))
        }
        _ => Err(ConfigError::one("<config>", "incomplete configuration (a section could not be built)")),
    }
}

/// An assertion whose `aud` were the gateway's own would be accepted back as a session token:
/// every route's audience must differ from `issuer.audience`.
fn assertion_audiences_differ(raw: &RawConfig, proxy: Option<&ProxySettings>, p: &mut Problems) {
    let Some(proxy) = proxy else { return };
    for (i, r) in proxy.routes.iter().enumerate() {
        if r.forward_token == ForwardToken::Assertion && r.audience == raw.issuer.audience {
            p.push(
                &format!("proxy.routes[{i}].audience"),
                "must differ from issuer.audience: an assertion would be accepted back as a session token",
            );
        }
    }
}

/// The identity headers are for upstreams only: a browser page may never read them.
fn cors_exposes_no_identity(raw: &RawConfig, p: &mut Problems) {
    let Some(cors) = &raw.server.cors else { return };
    let prefix = raw.proxy.identity_header_prefix.to_ascii_lowercase().replace('_', "-");
    for (i, h) in cors.expose_headers.iter().enumerate() {
        if h.to_ascii_lowercase().replace('_', "-").starts_with(&prefix) {
            p.push(
                &format!("server.cors.expose_headers[{i}]"),
                format!("{h:?} is an identity header ({prefix}*): they are never exposed to browsers"),
            );
        }
    }
}

const TENANT: &str = "your tenant's ID (Entra admin center: Identity > Overview > Tenant ID)";
const CLIENT: &str = "the Application (client) ID of the gateway's app registration";
const GROUP: &str = "a security group's Object ID (Entra admin center: Groups > the group > Object ID)";

/// Collects problems; its helpers parse a value and note why when they cannot.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(Problem { path: path.into(), message: message.into() });
    }

    /// A GUID, lowercase; `what` says where to find the right one.
    fn guid(&mut self, path: &str, value: &str, what: &str) -> Option<String> {
        match uuid::Uuid::parse_str(value) {
            Ok(id) if value.len() == 36 && id.is_nil() => {
                self.push(path, format!("the all-zero placeholder: put {what} here"));
                None
            }
            Ok(_) if value.len() == 36 => Some(value.to_ascii_lowercase()),
            _ => {
                self.push(
                    path,
                    format!("`{value}` is not a GUID such as 8f2d1c4e-52a0-4b8e-9d6f-0a1b2c3d4e5f: put {what} here"),
                );
                None
            }
        }
    }

    fn socket_addr(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        let parsed = value.parse().ok();
        if parsed.is_none() {
            self.push(path, format!("`{value}` is not an address:port such as 0.0.0.0:8080"));
        }
        parsed
    }

    /// `https://`, or `http://` to a loopback host only; returned without a trailing `/`.
    fn outbound_url(&mut self, path: &str, value: &str) -> Option<String> {
        match url::Url::parse(value) {
            Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
            Ok(u) if u.scheme() == "http" && is_loopback_host(&u) => {}
            Ok(_) => {
                self.push(
                    path,
                    "must be https://, e.g. https://login.microsoftonline.com (http:// only for a loopback host)",
                );
                return None;
            }
            Err(e) => {
                self.push(path, format!("not a URL ({e}): write it like https://login.microsoftonline.com"));
                return None;
            }
        }
        Some(value.trim_end_matches('/').to_string())
    }

    /// The content of a file that must be readable and not empty.
    fn file(&mut self, path: &str, file: &Path) -> Option<Vec<u8>> {
        match std::fs::read(file) {
            Ok(b) if !b.iter().all(u8::is_ascii_whitespace) => Some(b),
            Ok(_) => {
                self.push(path, format!("{} is empty", file.display()));
                None
            }
            Err(e) => {
                self.push(path, format!("cannot read {}: {e}", file.display()));
                None
            }
        }
    }

    /// A file holding one secret value (trimmed): a password, a URL with a password, a key.
    fn secret_file(&mut self, path: &str, file: &Path) -> Option<Secret> {
        let bytes = self.file(path, file)?;
        match String::from_utf8(bytes) {
            Ok(text) => Some(Secret::new(text.trim())),
            Err(_) => {
                self.push(path, format!("{} is not UTF-8 text", file.display()));
                None
            }
        }
    }

    fn at_least(&mut self, path: &str, value: Duration, min: Duration, what: &str) {
        if value < min {
            self.push(path, what);
        }
    }

    fn role_names(&mut self, path: &str, roles: &[String]) {
        for (i, r) in roles.iter().enumerate() {
            if r.trim().is_empty() || r.contains(',') {
                self.push(&format!("{path}[{i}]"), "role names are non-empty and have no comma");
            }
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

// === sections ===

fn server(s: &ServerConfig, read: bool, p: &mut Problems) -> Option<ServerSettings> {
    let listen = p.socket_addr("server.listen", &s.listen);
    let admin_listen = p.socket_addr("server.admin_listen", &s.admin_listen);
    if s.max_exchange_body_bytes < 4096 {
        p.push("server.max_exchange_body_bytes", "must be at least 4096");
    }
    let ms100 = Duration::from_millis(100);
    p.at_least("server.header_read_timeout", s.header_read_timeout, ms100, "at least 100ms");
    p.at_least("server.idle_timeout", s.idle_timeout, ms100, "at least 100ms");
    p.at_least("server.exchange_body_timeout", s.exchange_body_timeout, ms100, "at least 100ms");
    p.at_least("server.write_timeout", s.write_timeout, Duration::from_secs(1), "at least 1s");
    if s.max_connections == 0 {
        p.push("server.max_connections", "at least 1");
    }
    for (i, net) in s.trusted_proxies.iter().enumerate() {
        if net.prefix_len() == 0 {
            p.push(
                &format!("server.trusted_proxies[{i}]"),
                format!(
                    "{net} trusts every client's X-Forwarded-For (and lets anyone pick their rate-limit \
                     bucket): list the ingress controller's pod addresses or their CIDR, e.g. 10.244.0.0/16"
                ),
            );
        }
    }
    if s.workers > 256 {
        p.push("server.workers", "at most 256 (0: one per CPU)");
    }
    if s.http2_max_concurrent_streams == 0 {
        p.push("server.http2_max_concurrent_streams", "at least 1");
    }
    for (name, b) in [
        ("server.rate_limit.exchange_per_ip", s.rate_limit.exchange_per_ip),
        ("server.rate_limit.exchange_per_user", s.rate_limit.exchange_per_user),
    ] {
        if let Some(b) = b
            && (b.per_minute == 0 || b.burst == 0)
        {
            p.push(name, "per_minute and burst must be at least 1 (use null to disable)");
        }
    }
    let cors = match &s.cors {
        None => Some(None),
        Some(c) => {
            let settings = crate::cors::CorsSettings {
                allowed_origins: &c.allowed_origins,
                allowed_methods: &c.allowed_methods,
                allowed_headers: &c.allowed_headers,
                expose_headers: &c.expose_headers,
                max_age: c.max_age,
                allow_credentials: c.allow_credentials,
            };
            match crate::cors::CorsPolicy::new(&settings) {
                Ok(policy) => Some(Some(Arc::new(policy))),
                Err(errors) => {
                    for (key, why) in errors {
                        p.push(&format!("server.cors.{key}"), why);
                    }
                    None
                }
            }
        }
    };
    let (mut listener_tls, mut extra_ca) = (None, Vec::new());
    if let Some(tls) = &s.tls {
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            p.push("server.tls", "cert_file and key_file go together");
        }
        if read {
            if let Some((cert, key)) = tls.listener() {
                match ReloadingCert::load(cert, key) {
                    Ok(c) => listener_tls = Some(c),
                    Err(e) => p.push("server.tls.cert_file", e),
                }
            }
            if let Some(ca) = &tls.extra_ca_file {
                match crate::tls::read_certs(ca) {
                    Ok(certs) => extra_ca = certs,
                    Err(e) => p.push("server.tls.extra_ca_file", e),
                }
            }
        }
    }
    let admin_token = match (&s.admin_token_file, read) {
        (Some(path), true) => {
            let token = p.secret_file("server.admin_token_file", path);
            if token.as_ref().is_some_and(|t| t.expose().len() < 16) {
                p.push("server.admin_token_file", "at least 16 characters (e.g. `openssl rand -hex 32`)");
            }
            token
        }
        _ => None,
    };
    Some(ServerSettings {
        admin_token,
        listen: listen?,
        admin_listen: admin_listen?,
        listener_tls,
        extra_ca,
        shutdown_grace: s.shutdown_grace,
        max_exchange_body_bytes: s.max_exchange_body_bytes,
        exchange_body_timeout: s.exchange_body_timeout,
        write_timeout: s.write_timeout,
        header_read_timeout: s.header_read_timeout,
        idle_timeout: s.idle_timeout,
        max_connections: s.max_connections,
        workers: resolve_workers(s.workers),
        http2_max_concurrent_streams: s.http2_max_concurrent_streams,
        trusted_proxies: TrustedProxies::new(s.trusted_proxies.clone()),
        rate_limit: s.rate_limit.clone(),
        cors: cors?,
    })
}

/// `server.workers`, `0` resolved to the CPUs this process may use.
fn resolve_workers(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The typed settings of an `entra` section alone (files not read), for unit tests of the
/// modules that take them.
#[cfg(test)]
pub(crate) fn entra_settings(e: &EntraConfig) -> Option<EntraSettings> {
    entra(e, false, &Vec::new(), &mut Problems(Vec::new()))
}

fn entra(e: &EntraConfig, read: bool, env: &dyn EnvSource, p: &mut Problems) -> Option<EntraSettings> {
    let authority = p.outbound_url("entra.authority_host", &e.authority_host);
    let graph_url = p.outbound_url("entra.graph_url", &e.graph_url);
    for (i, scope) in e.required_scopes.iter().enumerate() {
        if scope.trim().is_empty() || scope.contains(' ') || scope.contains("://") {
            p.push(
                &format!("entra.required_scopes[{i}]"),
                "a scope name as in `scp`, e.g. access_as_user (not the api:// URI)",
            );
        }
    }
    if e.tenants.is_empty() {
        p.push("entra.tenants", "at least one tenant id is required");
    }
    let tenants: Vec<Option<String>> =
        e.tenants.iter().enumerate().map(|(i, t)| p.guid(&format!("entra.tenants[{i}]"), t, TENANT)).collect();
    let client_id = if e.client_id.is_empty() {
        p.push("entra.client_id", "required: the app (client) id of the gateway's registration");
        None
    } else {
        p.guid("entra.client_id", &e.client_id, CLIENT)
    };
    for (i, a) in e.audiences.iter().enumerate() {
        if a.trim().is_empty() {
            p.push(&format!("entra.audiences[{i}]"), "must not be empty");
        }
    }
    if e.accepted_token_versions.is_empty() {
        p.push("entra.accepted_token_versions", "at least one of 1, 2");
    }
    for (i, ver) in e.accepted_token_versions.iter().enumerate() {
        if !matches!(ver, 1 | 2) {
            p.push(&format!("entra.accepted_token_versions[{i}]"), "must be 1 or 2");
        }
    }
    if e.clock_skew > Duration::from_secs(600) {
        p.push("entra.clock_skew", "at most 10m");
    }
    if e.request_timeout.is_zero() {
        p.push("entra.request_timeout", "must be greater than zero");
    }
    let credential = credential(e, read, env, p);
    if e.continuous_access.poll_interval < Duration::from_secs(1) {
        p.push("entra.continuous_access.poll_interval", "at least 1s");
    }
    let continuous_access = SyncSettings {
        enabled: e.continuous_access.enabled,
        poll_interval: e.continuous_access.poll_interval,
        tenant: tenants.first().cloned().flatten().unwrap_or_default(),
    };
    Some(EntraSettings {
        cloud: e.cloud,
        authority: authority?,
        graph_url: graph_url?,
        v1_issuer_host: e.cloud.hosts().2,
        tenants: tenants.into_iter().collect::<Option<Vec<_>>>()?,
        client_id: client_id?,
        audiences: e.audiences.clone(),
        required_scopes: e.required_scopes.clone(),
        accepted_token_versions: e.accepted_token_versions.clone(),
        clock_skew: e.clock_skew,
        graph_mode: e.graph_mode,
        group_lookup: e.group_lookup,
        request_timeout: e.request_timeout,
        graph_max_retries: e.graph_max_retries,
        graph_max_retry_wait: e.graph_max_retry_wait,
        credential,
        continuous_access,
    })
}

/// The client credential (app and obo modes), loaded once.
fn credential(e: &EntraConfig, read: bool, env: &dyn EnvSource, p: &mut Problems) -> Option<ClientCredential> {
    let uses_graph = e.graph_mode != GraphMode::Claims || e.continuous_access.enabled;
    match e.client_credential {
        ClientCredentialKind::Secret => match (&e.client_secret_file, &e.client_secret) {
            // The environment's secret wins when the file the YAML names is absent (the chart
            // and `init` write client_secret_file; a secret from the environment replaces it).
            (Some(path), Some(secret)) if uses_graph && read && !path.exists() => {
                Some(ClientCredential::Secret(secret.clone()))
            }
            (Some(_), Some(_)) if !read => None,
            (Some(path), Some(_)) => {
                p.push(
                    "entra.client_secret_file",
                    format!(
                        "{} exists and ENTRA_GATEWAY__ENTRA__CLIENT_SECRET is set too: keep one (the \
                         variable is used only while the file is absent)",
                        path.display()
                    ),
                );
                None
            }
            (None, None) if uses_graph => {
                p.push(
                    "entra.client_secret_file",
                    "graph_mode app/obo needs a client credential: set client_secret_file or \
                     ENTRA_GATEWAY__ENTRA__CLIENT_SECRET, or client_credential: workload_identity or \
                     certificate (or use graph_mode: claims)",
                );
                None
            }
            (None, Some(secret)) if uses_graph => Some(ClientCredential::Secret(secret.clone())),
            (Some(path), None) if uses_graph && read => {
                if !path.exists() {
                    p.push(
                        "entra.client_secret_file",
                        format!(
                            "{} does not exist: write the app registration's client secret into it \
                             (`umask 077; printf %s \"$SECRET\" > {}`), or set ENTRA_GATEWAY__ENTRA__CLIENT_SECRET",
                            path.display(),
                            path.display()
                        ),
                    );
                    return None;
                }
                let bytes = p.file("entra.client_secret_file", path)?;
                let text = String::from_utf8_lossy(&bytes);
                Some(ClientCredential::Secret(Secret::new(text.trim())))
            }
            _ => None,
        },
        ClientCredentialKind::WorkloadIdentity if uses_graph && read => {
            let path = e.federated_token_file.clone().or_else(|| env.var("AZURE_FEDERATED_TOKEN_FILE").map(Into::into));
            match path {
                Some(path) => Some(ClientCredential::FederatedTokenFile(path)),
                None => {
                    p.push(
                        "entra.federated_token_file",
                        "workload_identity needs entra.federated_token_file or the AZURE_FEDERATED_TOKEN_FILE \
                         variable (set by the AKS workload identity webhook)",
                    );
                    None
                }
            }
        }
        ClientCredentialKind::WorkloadIdentity => None,
        ClientCredentialKind::Certificate => {
            let files = [
                ("entra.client_certificate_file", &e.client_certificate_file),
                ("entra.client_certificate_key_file", &e.client_certificate_key_file),
            ];
            for (path, file) in files {
                if file.is_none() {
                    p.push(path, "required with client_credential: certificate");
                }
            }
            let (Some(cert), Some(key)) = (&e.client_certificate_file, &e.client_certificate_key_file) else {
                return None;
            };
            if !(uses_graph && read) {
                return None;
            }
            match ClientCredential::certificate(cert, key) {
                Ok(c) => Some(c),
                Err(why) => {
                    p.push("entra.client_certificate_file", why);
                    None
                }
            }
        }
    }
}

fn authorization(raw: &RawConfig, p: &mut Problems) -> Option<AuthorizationSettings> {
    let a = &raw.authorization;
    let mut ok = true;
    let mut clients = BTreeMap::new();
    for (client, roles) in &a.apps.clients {
        let path = format!("authorization.apps.clients.{client}");
        match p.guid(&path, client, "the calling app's Application (client) ID") {
            Some(id) => {
                clients.insert(id, roles.clone());
            }
            None => ok = false,
        }
        p.role_names(&path, roles);
    }
    for (role, roles) in &a.apps.app_roles {
        if role.trim().is_empty() {
            p.push("authorization.apps.app_roles", "app role names are non-empty");
        }
        p.role_names(&format!("authorization.apps.app_roles.{role}"), roles);
    }
    if a.allowed_groups.is_empty() && !a.allow_any_tenant_user {
        p.push(
            "authorization.allowed_groups",
            "empty: nobody could sign in; list group ids, or set allow_any_tenant_user: true",
        );
    }
    let mut allowed = BTreeSet::new();
    for (i, g) in a.allowed_groups.iter().enumerate() {
        match p.guid(&format!("authorization.allowed_groups[{i}]"), g, GROUP) {
            Some(g) => {
                allowed.insert(g);
            }
            None => ok = false,
        }
    }
    let mut group_roles = BTreeMap::new();
    for (g, roles) in &a.group_roles {
        let path = format!("authorization.group_roles.{g}");
        match p.guid(&path, g, GROUP) {
            Some(id) => {
                group_roles.insert(id, roles.clone());
            }
            None => ok = false,
        }
        p.role_names(&path, roles);
    }
    let known_tenants: Vec<String> = raw.entra.tenants.iter().map(|t| t.to_ascii_lowercase()).collect();
    let mut app_tenants = Vec::new();
    for (i, t) in a.apps.tenants.iter().enumerate() {
        let path = format!("authorization.apps.tenants[{i}]");
        match p.guid(&path, t, TENANT) {
            Some(t) if known_tenants.contains(&t) => app_tenants.push(t),
            Some(_) => {
                p.push(&path, "not in entra.tenants: tokens of that tenant are refused before any app rule");
                ok = false;
            }
            None => ok = false,
        }
    }
    if app_tenants.is_empty() {
        app_tenants.extend(known_tenants.first().cloned());
    }
    let mut configured: BTreeSet<String> = allowed.iter().cloned().collect();
    configured.extend(group_roles.keys().cloned());
    for r in &raw.proxy.routes {
        configured.extend(r.allowed_groups.iter().flatten().map(|g| g.to_ascii_lowercase()));
    }
    ok.then(|| AuthorizationSettings {
        allowed_groups: allowed,
        group_roles,
        allow_any_tenant_user: a.allow_any_tenant_user,
        apps: AppsConfig { clients, app_roles: a.apps.app_roles.clone(), tenants: app_tenants },
        configured_groups: configured,
    })
}

fn issuer(i: &IssuerConfig, read: bool, p: &mut Problems) -> Option<IssuerSettings> {
    if i.issuer.is_empty() {
        p.push("issuer.issuer", "required: the `iss` of the gateway's tokens (a URL)");
    } else if url::Url::parse(&i.issuer).is_err() {
        p.push("issuer.issuer", "must be an absolute URL");
    }
    if i.audience.trim().is_empty() {
        p.push("issuer.audience", "must not be empty");
    }
    if i.token_ttl < Duration::from_secs(30) || i.token_ttl > Duration::from_secs(24 * 3600) {
        p.push("issuer.token_ttl", "must be between 30s and 24h");
    }
    if i.signing_keys.is_empty() {
        p.push("issuer.signing_keys", "at least one key is required (the first signs)");
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut keys = Vec::new();
    for (n, k) in i.signing_keys.iter().enumerate() {
        let path = format!("issuer.signing_keys[{n}]");
        if k.kid.trim().is_empty() {
            p.push(&format!("{path}.kid"), "must not be empty");
        } else if let Some(other) = seen.get(&k.kid) {
            p.push(
                &format!("{path}.kid"),
                format!("duplicate kid `{}` (also {other}): every key needs its own", k.kid),
            );
        } else {
            seen.insert(k.kid.clone(), path.clone());
        }
        if read {
            match SigningKey::load(&k.kid, k.algorithm, &k.private_key_file) {
                Ok(key) => keys.push(key),
                Err(e) => p.push(&format!("{path}.private_key_file"), key_fix(&e, k)),
            }
        }
    }
    (keys.len() == i.signing_keys.len() && !keys.is_empty()).then(|| IssuerSettings {
        issuer: i.issuer.clone(),
        audience: i.audience.clone(),
        token_ttl: i.token_ttl,
        keys: KeyRing::from_keys(keys),
    })
}

/// A key problem with its fix: a missing file says how to make one, a key of another
/// algorithm says which it is.
fn key_fix(e: &crate::keys::KeyError, k: &SigningKeyConfig) -> String {
    use crate::keys::KeyError;
    match e {
        KeyError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => format!(
            "{e}: create it with `entra-gateway keys generate --algorithm {:?} --out {}`",
            k.algorithm,
            k.private_key_file.display()
        ),
        KeyError::Parse { .. } => {
            match std::fs::read(&k.private_key_file).ok().and_then(|pem| actual_algorithm(&pem)) {
                Some(actual) if actual != k.algorithm => format!(
                    "{} is an {actual:?} key, not {:?}: set `algorithm: {actual:?}` for it (or generate a {:?} key)",
                    k.private_key_file.display(),
                    k.algorithm,
                    k.algorithm
                ),
                _ => e.to_string(),
            }
        }
        _ => e.to_string(),
    }
}

/// Which algorithm a PEM private key is for, when it is one of the gateway's.
fn actual_algorithm(pem: &[u8]) -> Option<SigningAlgorithm> {
    [SigningAlgorithm::ES256, SigningAlgorithm::EdDSA, SigningAlgorithm::RS256]
        .into_iter()
        .find(|alg| SigningKey::from_pem("probe", *alg, pem).is_ok())
}

fn cache(c: &CacheConfig, read: bool, p: &mut Problems) -> Option<CacheSettings> {
    let mut redis_url = |path: &str, url: &Secret| match url::Url::parse(url.expose()) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host().is_some() => {}
        _ => p.push(path, "must be a redis:// or rediss:// URL, e.g. rediss://redis.cache.svc:6380/0"),
    };
    if let Some(url) = &c.redis_url {
        redis_url("cache.redis_url", url);
    }
    for (i, url) in c.cluster_urls.iter().enumerate() {
        redis_url(&format!("cache.cluster_urls[{i}]"), url);
    }
    let from_file = match (&c.redis_url_file, read) {
        (Some(path), true) => p.secret_file("cache.redis_url_file", path).inspect(|url| {
            if !url::Url::parse(url.expose()).is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss")) {
                p.push("cache.redis_url_file", "the file must hold a redis:// or rediss:// URL");
            }
        }),
        _ => None,
    };
    let configured = [c.redis_url.is_some(), c.redis_url_file.is_some(), !c.cluster_urls.is_empty()];
    if configured.iter().filter(|b| **b).count() > 1 {
        p.push("cache.redis_url", "set one of redis_url, redis_url_file and cluster_urls");
    }
    let any_redis = configured.iter().any(|b| *b);
    if c.revocation_requires_redis && !any_redis {
        p.push("cache.revocation_requires_redis", "needs redis_url, redis_url_file or cluster_urls");
    }
    if c.redis_timeout.is_zero() {
        p.push("cache.redis_timeout", "must be greater than zero");
    }
    if c.max_revocations < 1000 {
        p.push("cache.max_revocations", "at least 1000");
    }
    if c.redis_username.as_deref().is_some_and(|u| u.trim().is_empty() || u.contains([':', '@', '/'])) {
        p.push("cache.redis_username", "an ACL user name (no `:`, `@` or `/`)");
    }
    let password = match (&c.redis_password_file, read) {
        (Some(path), true) => p.secret_file("cache.redis_password_file", path),
        _ => None,
    };
    let integrity_key = match (&c.redis_integrity_key_file, read) {
        (Some(path), true) => p.secret_file("cache.redis_integrity_key_file", path).filter(|k| {
            let long_enough = k.expose().len() >= 32;
            if !long_enough {
                p.push(
                    "cache.redis_integrity_key_file",
                    "at least 32 characters (e.g. `openssl rand -base64 48 > integrity.key`)",
                );
            }
            long_enough
        }),
        _ => None,
    };
    let ca_pem = match (&c.redis_ca_file, read) {
        (Some(path), true) => p.file("cache.redis_ca_file", path),
        _ => None,
    };
    let files_missing = read
        && ((c.redis_ca_file.is_some() && ca_pem.is_none())
            || (c.redis_url_file.is_some() && from_file.is_none())
            || (c.redis_password_file.is_some() && password.is_none())
            || (c.redis_integrity_key_file.is_some() && integrity_key.is_none()));
    if c.jwks_ttl < Duration::from_secs(300) {
        p.push("cache.jwks_ttl", "at least 5m (Entra rotates keys over days)");
    }
    if c.jwks_max_stale > Duration::from_secs(30 * 86_400) {
        p.push("cache.jwks_max_stale", "at most 30d (older keys may have been revoked by Microsoft)");
    }
    let target = match (&c.redis_url, from_file, c.cluster_urls.is_empty()) {
        (Some(url), _, _) => Some(RedisTarget::Single(url.clone())),
        (None, Some(url), _) => Some(RedisTarget::Single(url)),
        (None, None, false) => Some(RedisTarget::Cluster(c.cluster_urls.clone())),
        (None, None, true) => None,
    };
    if files_missing {
        return None;
    }
    Some(CacheSettings {
        redis: target.map(|target| RedisSettings {
            target,
            ca_pem,
            timeout: c.redis_timeout,
            username: c.redis_username.clone(),
            password,
        }),
        integrity_key,
        max_revocations: c.max_revocations,
        l1_ttl: c.l1_ttl,
        revocation_requires_redis: c.revocation_requires_redis,
        key_prefix: c.key_prefix.clone(),
        group_ttl: c.group_ttl,
        negative_ttl: c.negative_ttl,
        jwks_ttl: c.jwks_ttl,
        jwks_max_stale: c.jwks_max_stale,
        profile_ttl: c.profile_ttl,
    })
}

/// [`telemetry`] for the unit tests, with problems as a plain list.
#[cfg(test)]
pub(super) fn telemetry_for_test(
    c: &TelemetryConfig,
    env: &dyn EnvSource,
    problems: &mut Vec<Problem>,
) -> TelemetrySettings {
    let mut p = Problems::default();
    let s = telemetry(c, env, &mut p);
    problems.extend(p.0);
    s
}

/// `telemetry.*`, with the standard variables: `OTEL_SDK_DISABLED=true` turns traces off;
/// `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` turns them on when the file sets no endpoint;
/// `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` picks the protocol when the file does not.
fn telemetry(c: &TelemetryConfig, env: &dyn EnvSource, p: &mut Problems) -> TelemetrySettings {
    if !(0.0..=1.0).contains(&c.sample_ratio) {
        p.push("telemetry.sample_ratio", "from 0.0 (none) to 1.0 (every new trace)");
    }
    let var = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
    let env_protocol = || match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
    {
        Some(v) if v == "grpc" => Some(OtlpProtocol::Grpc),
        Some(v) if v == "http/protobuf" => Some(OtlpProtocol::Http),
        Some(v) => {
            p.push("telemetry.otlp_protocol", format!("OTEL_EXPORTER_OTLP_PROTOCOL={v}: use grpc or http/protobuf"));
            None
        }
        None => None,
    };
    let protocol = c.otlp_protocol.or_else(env_protocol).unwrap_or_default();
    let endpoint = match &c.otlp_endpoint {
        Some(base) => match url::Url::parse(base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.query().is_none() => {
                let base = base.trim_end_matches('/');
                Some(Some(match protocol {
                    OtlpProtocol::Http => format!("{base}/v1/traces"),
                    OtlpProtocol::Grpc => base.to_string(),
                }))
            }
            _ => {
                p.push(
                    "telemetry.otlp_endpoint",
                    "the base URL of an OTLP receiver, e.g. http://otel-collector.observability:4318 (no query)",
                );
                None
            }
        },
        None if var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT")).is_some() => {
            Some(None)
        }
        None => None,
    };
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    TelemetrySettings {
        exporter: endpoint.filter(|_| !disabled).map(|endpoint| OtlpTarget { protocol, endpoint }),
        sample_ratio: var("OTEL_TRACES_SAMPLER").is_none().then_some(c.sample_ratio),
        service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| "entra-gateway".into()),
    }
}

fn directory(c: &DirectoryConfig, read: bool, p: &mut Problems) -> Option<DirectorySettings> {
    if c.postgres_url.is_some() && c.postgres_url_file.is_some() {
        p.push("directory.postgres_url", "set one of postgres_url and postgres_url_file");
    }
    if c.postgres_pool_size == 0 || c.postgres_pool_size > 100 {
        p.push("directory.postgres_pool_size", "from 1 to 100");
    }
    if c.postgres_timeout.is_zero() {
        p.push("directory.postgres_timeout", "must be greater than zero");
    }
    let configured = c.postgres_url.is_some() || c.postgres_url_file.is_some();
    if c.postgres_ca_file.is_some() && !configured {
        p.push("directory.postgres_ca_file", "needs postgres_url or postgres_url_file");
    }
    let url = match (&c.postgres_url, &c.postgres_url_file, read) {
        (Some(url), _, _) => Some(url.clone()),
        (None, Some(path), true) => p.secret_file("directory.postgres_url_file", path),
        _ => None,
    };
    let key = if c.postgres_url.is_some() { "directory.postgres_url" } else { "directory.postgres_url_file" };
    let config = url.and_then(|url| match postgres_config(url.expose()) {
        Ok(config) => Some(config),
        Err(why) => {
            p.push(key, why);
            None
        }
    });
    let ca = match (&c.postgres_ca_file, read) {
        (Some(path), true) => {
            match p.file("directory.postgres_ca_file", path).map(|pem| crate::tls::read_certs_from_pem(&pem)) {
                Some(Ok(certs)) => Some(certs),
                Some(Err(e)) => {
                    p.push("directory.postgres_ca_file", e);
                    None
                }
                None => None,
            }
        }
        _ => Some(Vec::new()),
    };
    if !read || !configured {
        return Some(DirectorySettings { postgres: None });
    }
    Some(DirectorySettings {
        postgres: Some(PostgresSettings {
            config: config?,
            ca: ca?,
            pool_size: c.postgres_pool_size,
            timeout: c.postgres_timeout,
        }),
    })
}

/// A PostgreSQL URL (or libpq key=value string) as tokio-postgres reads it. libpq's
/// `sslmode=verify-full` and `verify-ca` are read as `require`, which here always verifies the
/// certificate chain and the host name (rustls).
pub(super) fn postgres_config(raw: &str) -> Result<tokio_postgres::Config, String> {
    const EXAMPLE: &str = "e.g. postgres://gateway:PASSWORD@postgres.db.svc:5432/gateway?sslmode=require";
    let modes = ["disable", "prefer", "require", "verify-ca", "verify-full"];
    for (_, rest) in raw.match_indices("sslmode=").map(|(i, _)| raw.split_at(i + "sslmode=".len())) {
        let mode: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        if !modes.contains(&mode.as_str()) {
            return Err(format!("sslmode `{mode}` is not one of {}; {EXAMPLE}", modes.join(", ")));
        }
    }
    let text = raw.replace("sslmode=verify-full", "sslmode=require").replace("sslmode=verify-ca", "sslmode=require");
    let config: tokio_postgres::Config = text.parse().map_err(|e: tokio_postgres::Error| {
        // The error names the bad part, never the password.
        format!("not a PostgreSQL URL ({e}); {EXAMPLE}")
    })?;
    if config.get_hosts().is_empty() {
        return Err(format!("names no host; {EXAMPLE}"));
    }
    if config.get_user().is_none_or(str::is_empty) {
        return Err(format!("names no user; {EXAMPLE}"));
    }
    Ok(config)
}

fn proxy(c: &ProxyConfig, p: &mut Problems) -> Option<ProxySettings> {
    let identity = match IdentityHeaders::new(&c.identity_header_prefix) {
        Ok(h) => Some(h.with_profile(c.identity_headers)),
        Err(_) => {
            p.push("proxy.identity_header_prefix", "must be a valid header-name prefix such as X-Auth-");
            None
        }
    };
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut routes = Vec::new();
    for (n, r) in c.routes.iter().enumerate() {
        if let Some(route) = route(&format!("proxy.routes[{n}]"), r, c.forward_token, &mut seen, p) {
            routes.push(route);
        }
    }
    let mut strip_headers = Vec::new();
    for (i, h) in c.strip_request_headers.iter().enumerate() {
        match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(_) => strip_headers.push(h.to_ascii_lowercase().replace('_', "-")),
            Err(_) => p.push(&format!("proxy.strip_request_headers[{i}]"), "not a header name"),
        }
    }
    (routes.len() == c.routes.len()).then_some(())?;
    Some(ProxySettings {
        identity: identity?,
        strip_headers,
        routes,
        original_uri: c.forward_auth.original_uri,
        unmatched: c.forward_auth.unmatched(&c.routes),
    })
}

fn route(
    path: &str,
    r: &RouteConfig,
    forward_token: ForwardToken,
    seen: &mut BTreeMap<String, String>,
    p: &mut Problems,
) -> Option<RouteSpec> {
    let before = p.0.len();
    let bad = |p: &mut Problems, key: &str, why: &str| p.push(&format!("{path}.{key}"), why);
    if !r.path_prefix.starts_with('/') {
        bad(p, "path_prefix", "must start with /");
    } else if crate::path::CanonicalPath::parse(&r.path_prefix)
        .map(|c| c.as_str() != r.path_prefix || c.has_empty_segments())
        .unwrap_or(true)
    {
        bad(
            p,
            "path_prefix",
            "must be a canonical path (no `//`, `.`/`..` segments, `;`, `\\` or escapes of unreserved \
             characters; escapes in upper case)",
        );
    } else if let Some(other) = seen.get(&r.path_prefix.to_ascii_lowercase()) {
        let why = format!(
            "duplicate path_prefix `{}` (also {other}; prefixes are compared case-insensitively)",
            r.path_prefix
        );
        bad(p, "path_prefix", &why);
    } else {
        seen.insert(r.path_prefix.to_ascii_lowercase(), path.to_string());
    }
    if r.path_prefix.starts_with("/auth/") || r.path_prefix.starts_with("/.well-known/") {
        bad(p, "path_prefix", "/auth/ and /.well-known/ belong to the gateway");
    }
    if r.timeout.is_zero() {
        bad(p, "timeout", "must be greater than zero");
    }
    let groups: Vec<String> = r
        .allowed_groups
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, g)| p.guid(&format!("{path}.allowed_groups[{i}]"), g, GROUP))
        .collect();
    if r.auth == RouteAuth::None && r.allowed_groups.is_some() {
        bad(p, "allowed_groups", "needs auth: required");
    }
    if r.auth == RouteAuth::None && r.allow_apps {
        bad(p, "allow_apps", "needs auth: required (auth: none lets everyone in)");
    }
    let upstream = match upstream(&r.upstream) {
        Ok(u) => Some(u),
        Err(why) => {
            bad(p, "upstream", why);
            None
        }
    };
    for (i, c) in r.auth_context.iter().enumerate() {
        let n = c.strip_prefix('c').and_then(|n| n.parse::<u8>().ok());
        if !n.is_some_and(|n| (1..=99).contains(&n)) || c.len() > 3 {
            p.push(&format!("{path}.auth_context[{i}]"), "an authentication context id c1 … c99 (Entra admin center: Conditional Access > Authentication contexts)");
        }
    }
    if !r.auth_context.is_empty() && r.auth == RouteAuth::None {
        bad(p, "auth_context", "needs auth: required");
    }
    if r.audience.as_deref().is_some_and(|a| a.trim().is_empty()) {
        bad(p, "audience", "must not be empty (leave it out for the upstream's origin)");
    }
    let (scheme, authority, base_path) = upstream?;
    let host_header = http::HeaderValue::from_str(authority.as_str()).ok()?;
    let audience = r.audience.clone().unwrap_or_else(|| format!("{scheme}://{authority}"));
    (p.0.len() == before).then(|| RouteSpec {
        label: r.name.clone().unwrap_or_else(|| r.path_prefix.clone()),
        prefix: r.path_prefix.clone(),
        auth: r.auth,
        timeout: r.timeout,
        groups: r.allowed_groups.as_ref().map(|_| groups),
        strip_prefix: r.strip_prefix,
        allow_empty_segments: r.allow_empty_segments,
        allow_apps: r.allow_apps,
        cors: r.cors,
        case_sensitive: r.case_sensitive,
        forward_token: r.forward_token.unwrap_or(forward_token),
        audience,
        auth_context: r.auth_context.clone(),
        scheme,
        authority,
        host_header,
        base_path,
    })
}

/// An upstream URL's scheme, authority and path (without a trailing `/`). Credentials in the
/// URL would be sent to nobody (the gateway never forwards them) and printed by
/// `check-config`; a query or fragment would be silently dropped: both are refused.
fn upstream(raw: &str) -> Result<(Scheme, Authority, String), &'static str> {
    const FORM: &str =
        "must be an http:// or https:// URL such as http://orders.default.svc:8080 or https://api.internal/base";
    let url = url::Url::parse(raw).map_err(|_| FORM)?;
    let scheme = match url.scheme() {
        "https" => Scheme::HTTPS,
        "http" => Scheme::HTTP,
        _ => return Err(FORM),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry user:password@ (the gateway sends identity headers and its own token, never URL credentials)",
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a ?query or #fragment (only scheme, host, port and a base path)");
    }
    let host = url.host_str().ok_or(FORM)?;
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    Ok((scheme, authority.parse().map_err(|_| FORM)?, url.path().trim_end_matches('/').to_string()))
}

impl TryFrom<&ProxyConfig> for ProxySettings {
    type Error = ConfigError;

    /// The `proxy` section alone (it names no files).
    fn try_from(c: &ProxyConfig) -> Result<ProxySettings, ConfigError> {
        let mut p = Problems::default();
        match proxy(c, &mut p) {
            Some(s) if p.0.is_empty() => Ok(s),
            _ => Err(ConfigError { problems: p.0 }),
        }
    }
}
