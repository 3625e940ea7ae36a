//! The HTTP front: routing of the public and admin listeners, and the one place where typed
//! errors become responses ([`Rejection::into_response`]).
//!
//! Owns: the JSON error shape `{"error", "error_description"}`, status codes, `WWW-Authenticate`
//! and `Retry-After`, and the log level of each failure (client mistakes at debug/info,
//! internal failures at warn/error). Must not: put a token, secret or internal error detail
//! in a response body.

mod access_line;
pub mod admin;
pub mod exchange;
pub mod forward;
pub mod session;
pub mod verify;
pub mod wellknown;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::access::AccessError;
use crate::app::AppState;
use crate::cache::StoreError;
use crate::directory::DirectoryError;
use crate::entra::EntraError;
use crate::exchange::ExchangeError;
use crate::graph::GraphError;
use crate::path::CanonicalPath;
use crate::proxy::ProxyError;
use access_line::AccessLine;
use tracing::Instrument;

pub use crate::body::{Body, full, json};

/// Every way a request can be refused or fail, before or instead of an answer.
#[derive(Debug)]
pub enum Rejection {
    /// 400: malformed body, missing token, unsupported grant or token type, unsafe path.
    InvalidRequest(String),
    /// 413: body larger than the limit.
    PayloadTooLarge,
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 401 with `WWW-Authenticate: Bearer error="invalid_token"`.
    InvalidToken(String),
    /// 403.
    AccessDenied(String),
    /// 404 with a description.
    NotFound(&'static str),
    /// 405 with `Allow`.
    MethodNotAllowed(&'static str),
    /// 429 with `Retry-After`.
    RateLimited(Duration),
    /// 503 with `Retry-After`; `cause` goes to the log only.
    Unavailable { description: &'static str, retry_after: Duration, cause: String },
    /// 500: a bug or a broken key; `cause` goes to the log only.
    Internal { cause: String },
    /// 502: the upstream is unreachable or broke the connection; `cause` goes to the log only.
    BadGateway { cause: String },
    /// 504: the upstream did not answer within the route's timeout.
    GatewayTimeout,
    /// 403 to a CORS preflight the policy refuses (no CORS headers: the browser blocks the call).
    CorsDenied(&'static str),
    /// 401 with a claims challenge (`WWW-Authenticate: Bearer realm="", error="insufficient_claims",
    /// claims="…"`): the token lacks an authentication context the route needs (step-up), or the
    /// user's sessions were revoked and the client can fetch a fresh token (CAE).
    InsufficientClaims { claims: String, description: String },
    /// 403 from forward-auth: the request carries a header that could pass for an identity
    /// header (its name; never its value). The ingress would pass it on, so the request must
    /// not pass; 403 because nginx `auth_request` turns a 400 into a 500.
    SpoofedIdentityHeader(String),
}

/// How a failure is seen by the client, the log and the metrics: the one classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub status: StatusCode,
    /// The JSON `error` code.
    pub code: &'static str,
    /// The JSON `error_description`: for the client, never an internal detail.
    pub description: String,
    /// The level of the request's one log line: info for the client's mistakes, warn for
    /// outages, error for bugs.
    pub level: tracing::Level,
    /// The `outcome` label of `entra_gateway_exchange_total`.
    pub outcome: &'static str,
}

impl Rejection {
    /// The classification of this failure (exhaustive: a new variant must be classified).
    pub fn class(&self) -> Class {
        use tracing::Level;
        let c = |status, code, description: String, level, outcome| Class { status, code, description, level, outcome };
        match self {
            Rejection::InvalidRequest(d) => {
                c(StatusCode::BAD_REQUEST, "invalid_request", d.clone(), Level::INFO, "invalid_request")
            }
            Rejection::PayloadTooLarge => c(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "the request body is too large".into(),
                Level::INFO,
                "invalid_request",
            ),
            Rejection::RequestTimeout => c(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request",
                "the request body did not arrive in time".into(),
                Level::INFO,
                "invalid_request",
            ),
            Rejection::InvalidToken(d) => {
                c(StatusCode::UNAUTHORIZED, "invalid_token", d.clone(), Level::INFO, "invalid_token")
            }
            Rejection::AccessDenied(d) => c(StatusCode::FORBIDDEN, "access_denied", d.clone(), Level::INFO, "denied"),
            Rejection::NotFound(d) => {
                c(StatusCode::NOT_FOUND, "not_found", (*d).to_string(), Level::INFO, "invalid_request")
            }
            Rejection::MethodNotAllowed(allow) => c(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                format!("use {allow}"),
                Level::INFO,
                "invalid_request",
            ),
            Rejection::RateLimited(_) => c(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry later".into(),
                Level::INFO,
                "rate_limited",
            ),
            Rejection::Unavailable { description, .. } => c(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                (*description).to_string(),
                Level::WARN,
                "unavailable",
            ),
            Rejection::Internal { .. } => c(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error; see the gateway log".into(),
                Level::ERROR,
                "error",
            ),
            Rejection::BadGateway { .. } => c(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the upstream service is unavailable".into(),
                Level::WARN,
                "error",
            ),
            Rejection::GatewayTimeout => c(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                "the upstream service did not answer in time".into(),
                Level::WARN,
                "error",
            ),
            Rejection::InsufficientClaims { description, .. } => {
                c(StatusCode::UNAUTHORIZED, "insufficient_claims", description.clone(), Level::INFO, "invalid_token")
            }
            Rejection::SpoofedIdentityHeader(name) => c(
                StatusCode::FORBIDDEN,
                "spoofed_identity_header",
                format!(
                    "the request carries `{name}`, which only the gateway may set (identity headers are \
                     refused in any spelling: the ingress would pass it on to the application)"
                ),
                Level::INFO,
                "denied",
            ),
            Rejection::CorsDenied(why) => c(
                StatusCode::FORBIDDEN,
                "cors_denied",
                format!("CORS preflight refused: {why} (see server.cors)"),
                Level::INFO,
                "invalid_request",
            ),
        }
    }

    /// What the log line says about the failure: the internal cause, or the description.
    pub fn reason(&self) -> String {
        match self {
            Rejection::Unavailable { cause, .. } | Rejection::Internal { cause } | Rejection::BadGateway { cause } => {
                cause.clone()
            }
            other => other.class().description,
        }
    }

    /// The response: the JSON error body, `WWW-Authenticate`, `Retry-After`, `Allow`.
    pub fn into_response(self) -> Response<Body> {
        let class = self.class();
        let body = match &self {
            Rejection::InsufficientClaims { claims, .. } => serde_json::json!({
                "error": class.code, "error_description": class.description,
                "claims": claims, "message": class.description,
            }),
            _ => serde_json::json!({"error": class.code, "error_description": class.description}),
        };
        let mut resp = json(class.status, &body);
        let h = resp.headers_mut();
        match self {
            Rejection::InsufficientClaims { claims, .. } => {
                let value = format!("Bearer realm=\"\", error=\"insufficient_claims\", claims=\"{claims}\"");
                if let Ok(v) = HeaderValue::from_str(&value) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Rejection::InvalidToken(_) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
            }
            Rejection::MethodNotAllowed(allow) => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Rejection::RateLimited(after) | Rejection::Unavailable { retry_after: after, .. } => {
                // Whole seconds, rounded up: a client that waits this long is let in.
                let secs = after.as_millis().div_ceil(1000).max(1) as u64;
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        resp
    }
}

// Conversions only map; the one log line of a request is written where it ends (`public`).

impl From<ExchangeError> for Rejection {
    fn from(e: ExchangeError) -> Rejection {
        match e {
            ExchangeError::Token(EntraError::KeysUnavailable(why)) => Rejection::Unavailable {
                description: "Entra ID signing keys are unavailable; try again later",
                retry_after: Duration::from_secs(5),
                cause: why,
            },
            ExchangeError::Token(t) => Rejection::InvalidToken(t.to_string()),
            e @ (ExchangeError::NotInAllowedGroup
            | ExchangeError::GroupsNotInToken(_)
            | ExchangeError::UserMissing
            | ExchangeError::AppNotAllowed(_)
            | ExchangeError::AppTenantNotAllowed(_)
            | ExchangeError::AccessRevoked(_)) => Rejection::AccessDenied(e.to_string()),
            ExchangeError::SessionsRevoked { not_before, cae: true } => Rejection::InsufficientClaims {
                claims: claims_challenge("nbf", &not_before.to_string()),
                description: "access revoked: the user's sessions were revoked; get a new token (the claims \
                              challenge asks for one issued after the revocation)"
                    .into(),
            },
            e @ ExchangeError::SessionsRevoked { cae: false, .. } => Rejection::InvalidToken(e.to_string()),
            ExchangeError::Graph(g) => g.into(),
            ExchangeError::Directory(DirectoryError::FirstSignIn(e)) => Rejection::Unavailable {
                description: "the user directory is unavailable, so a first sign-in cannot be recorded (users who \
                              signed in before are not affected); try again later",
                retry_after: Duration::from_secs(5),
                cause: e.to_string(),
            },
            ExchangeError::Directory(DirectoryError::Store(e)) => e.into(),
            ExchangeError::Mint(m) => Rejection::Internal { cause: m.to_string() },
        }
    }
}

impl From<GraphError> for Rejection {
    fn from(g: GraphError) -> Rejection {
        Rejection::Unavailable {
            description: "Microsoft Graph is unavailable; try again later",
            retry_after: g.retry_after.unwrap_or(Duration::from_secs(5)),
            cause: format!("Microsoft Graph: {}", g.reason),
        }
    }
}

impl From<StoreError> for Rejection {
    fn from(e: StoreError) -> Rejection {
        Rejection::Unavailable {
            description: "the user store is unavailable; try again later",
            retry_after: Duration::from_secs(5),
            cause: e.to_string(),
        }
    }
}

/// A claims challenge: standard base64 (with padding) of
/// `{"access_token":{"<claim>":{"essential":true,"value":"<value>"}}}`. MSAL takes the decoded
/// JSON as its `claims` request parameter.
pub fn claims_challenge(claim: &str, value: &str) -> String {
    use base64::Engine;
    let json = serde_json::json!({"access_token": {claim: {"essential": true, "value": value}}});
    base64::engine::general_purpose::STANDARD.encode(json.to_string())
}

impl From<AccessError> for Rejection {
    fn from(e: AccessError) -> Rejection {
        match e {
            AccessError::MissingToken
            | AccessError::InvalidToken(_)
            | AccessError::Revoked
            | AccessError::AccessRevoked(_) => Rejection::InvalidToken(e.to_string()),
            AccessError::MissingAuthContext(ref context) => Rejection::InsufficientClaims {
                claims: claims_challenge("acrs", context),
                description: format!(
                    "this route needs the authentication context {context} (step-up): request a token with \
                     the claims challenge and exchange it again"
                ),
            },
            AccessError::RouteForbidden | AccessError::AppsNotAllowed => Rejection::AccessDenied(e.to_string()),
            AccessError::Unavailable(s) => Rejection::Unavailable {
                description: "the session store is unavailable; try again later",
                retry_after: Duration::from_secs(5),
                cause: format!("revocation store: {s}"),
            },
        }
    }
}

impl From<ProxyError> for Rejection {
    fn from(e: ProxyError) -> Rejection {
        match e {
            ProxyError::BadGateway(cause) => Rejection::BadGateway { cause },
            ProxyError::Timeout => Rejection::GatewayTimeout,
        }
    }
}

/// What the access log line says about a request beyond method, status and duration; filled in
/// by the handlers as they learn it. Also carries the worker thread serving the request.
#[derive(Debug, Default)]
pub struct AccessInfo {
    /// The worker thread serving the request: whose request-id counter, route table,
    /// verified-token cache and upstream connections it uses.
    pub worker: usize,
    /// The endpoint (bounded: names from code); see [`AccessInfo::endpoint`].
    pub endpoint: std::borrow::Cow<'static, str>,
    /// The proxy route that served the request: its label is the endpoint, its upstream and
    /// metric handles are used as they are (nothing copied per request); the request is
    /// counted and timed there (`entra_gateway_proxy_*`).
    pub route: Option<Arc<crate::proxy::routes::Route>>,
    /// The caller's internal user id, once known (shared with the verified token's principal:
    /// no copy per proxied request).
    pub user_id: Option<Arc<str>>,
    /// `user` or `app`, once known (a span attribute).
    pub principal: Option<&'static str>,
    /// The response leaves CORS alone: a preflight answer (already complete), or a route with
    /// `cors: false`.
    pub skip_cors: bool,
    /// The upstream answered (or failed to): the request was forwarded, not answered by the
    /// gateway itself.
    pub forwarded: bool,
}

impl AccessInfo {
    /// Records who the caller is (their internal id and kind).
    pub fn set_caller(&mut self, claims: &crate::issuer::InternalClaims) {
        self.record_caller(Arc::from(claims.sub.as_str()), claims.is_app());
    }

    /// Records a verified caller.
    pub fn set_principal(&mut self, principal: &crate::access::Principal) {
        self.record_caller(principal.user_id.clone(), principal.claims.is_app());
    }

    fn record_caller(&mut self, user_id: Arc<str>, is_app: bool) {
        self.user_id = Some(user_id);
        self.principal = Some(if is_app { "app" } else { "user" });
    }

    /// The endpoint, or the proxy route's label.
    pub fn endpoint(&self) -> &str {
        self.route.as_ref().map_or(&self.endpoint, |r| r.label.as_str())
    }

    /// `host:port` of the upstream, for forwarded requests; `-` for those the gateway answered
    /// itself (refused before forwarding, or one of its own endpoints).
    fn upstream(&self) -> &str {
        match (&self.route, self.forwarded) {
            (Some(r), true) => r.upstream_authority(),
            _ => "-",
        }
    }
}

use crate::request_id::X_REQUEST_ID;

/// Entry point of the public listener: request id, routing, and the request's one log line
/// (at the level of its classification, with the failure's reason).
/// `worker` is the thread serving the connection (its upstream connection pool).
/// `state`: the worker's own handle on the state.
///
/// The request-path functions (this, `route_public`, `forward::handle`, `forward::forward`)
/// return an `async move` block instead of being `async fn`s: an `async fn` moves each argument
/// into a local of its future, keeping the request (264 bytes) twice in every level's state and
/// copying it once more per level (`-Zprint-type-sizes`); a block uses what it captured in place.
#[allow(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice in its future (see `public`)")]
pub fn public(
    state: Arc<crate::app::WorkerState>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    worker: usize,
) -> impl Future<Output = Response<Body>> + Send {
    async move {
        let started = std::time::Instant::now();
        let id = state.request_ids.for_request(req.headers_mut(), worker);
        let method = req.method().clone();
        let cors = state.server.cors.as_deref();
        let origin = cors.and_then(|c| c.allowed_origin(req.headers()));
        let mut info = AccessInfo { worker, ..AccessInfo::default() };
        let trusted = || state.server.trusted_proxies.contains(peer.ip());
        let trace = state.telemetry.request(&method, req.headers(), trusted);
        // Boxed: built once on the heap instead of being moved into each await below.
        let handled = Box::pin(route_public(&state, req, peer, &mut info));
        let result = match &trace {
            // Every log line of a recorded request carries its trace id (the access line, of all).
            Some(span) if span.is_recording() => {
                span.run(handled).instrument(tracing::info_span!("request", trace_id = %span.trace_id())).await
            }
            Some(span) => span.run(handled).await,
            None => handled.await,
        };
        let (mut resp, failure) = match result {
            Ok(resp) => (resp, None),
            Err(rejection) => {
                let class = rejection.class();
                let failure = (class.level, class.code, rejection.reason());
                (rejection.into_response(), Some(failure))
            }
        };
        resp.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
        if let (Some(cors), false) = (cors, info.skip_cors) {
            cors.decorate(origin, resp.headers_mut());
        }
        let status = resp.status().as_u16();
        let elapsed = started.elapsed();
        match &info.route {
            Some(route) => {
                route.metrics.served(status, elapsed);
            }
            None => state
                .metrics
                .http_requests_total
                .with_label_values(&[&info.endpoint, crate::metrics::status_label(Some(status))])
                .inc(),
        }
        let (level, error, reason) = failure.unwrap_or((tracing::Level::INFO, "-", String::new()));
        let trace_id = trace.as_ref().map(|span| {
            describe_span(span, &method, &info, status, error);
            span.trace_id()
        });
        AccessLine {
            level,
            method: &method,
            route: info.endpoint(),
            status,
            duration: elapsed,
            upstream: info.upstream(),
            user_id: info.user_id.as_deref().unwrap_or("-"),
            request_id: id.to_str().unwrap_or("-"),
            trace_id: trace_id.as_deref().unwrap_or("-"),
            error,
            reason: &reason,
        }
        .emit();
        resp
    }
}

/// The request span's name and attributes (semantic conventions for HTTP servers), once the
/// route, status and caller are known; never a path, query, token or name.
fn describe_span(span: &crate::telemetry::Span, method: &http::Method, info: &AccessInfo, status: u16, error: &str) {
    use opentelemetry::KeyValue;
    if !span.is_recording() {
        return;
    }
    let route = info.endpoint().to_string();
    span.rename(format!("{method} {route}"));
    span.set(KeyValue::new("http.route", route));
    span.set(KeyValue::new("http.response.status_code", i64::from(status)));
    span.set(KeyValue::new("entra_gateway.principal_type", info.principal.unwrap_or("none")));
    if status >= 500 {
        span.set(KeyValue::new("error.type", error.to_string()));
        span.fail(error.to_string());
    }
}

/// What every request must pass before any endpoint sees it; returns its canonical path.
///
/// Refused with 405: `CONNECT` and `TRACE`. Refused with 400: two `Authorization` or `Host` headers (components behind the gateway may
/// read the other one), an upgrade to anything but WebSocket, and a path that has no safe
/// canonical form (see [`crate::path`]).
fn screen<B>(req: &Request<B>) -> Result<CanonicalPath, Rejection> {
    if matches!(*req.method(), http::Method::CONNECT | http::Method::TRACE) {
        // CONNECT would open a tunnel past routing; TRACE echoes the request (cookies and
        // tokens included) back to whoever can make a browser send it.
        return Err(Rejection::MethodNotAllowed("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
    }
    let h = req.headers();
    for (name, what) in [(header::AUTHORIZATION, "Authorization"), (header::HOST, "Host")] {
        if h.get_all(&name).iter().nth(1).is_some() {
            return Err(Rejection::InvalidRequest(format!("send one {what} header, not several")));
        }
    }
    crate::proxy::headers::check_upgrade(h).map_err(|e| Rejection::InvalidRequest(e.to_string()))?;
    CanonicalPath::parse(req.uri().path()).map_err(|e| Rejection::InvalidRequest(e.to_string()))
}

#[allow(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice in its future (see `public`)")]
fn route_public<'a>(
    state: &'a AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
    info: &'a mut AccessInfo,
) -> impl Future<Output = Result<Response<Body>, Rejection>> + Send + 'a {
    async move {
        let path = match screen(&req) {
            Ok(p) => p,
            Err(r) => {
                info.endpoint = "refused".into();
                crate::body::linger(req.into_body());
                return Err(r);
            }
        };
        // A preflight sent to /auth/verify is an ingress asking whether a browser's OPTIONS may
        // pass: that is forward-auth's decision (a token is needed), never a CORS answer, which the
        // ingress would read as "allowed" and pass on with the client's headers.
        if crate::cors::is_preflight(req.method(), req.headers()) && !is_verify_path(path.as_str()) {
            info.endpoint = "preflight".into();
            info.skip_cors = true;
            return preflight(state, &req, &path, info.worker);
        }
        let (endpoint, handler) = match path.as_str() {
            "/auth/exchange" => ("exchange", Endpoint::Exchange),
            "/auth/logout" => ("logout", Endpoint::Logout),
            "/auth/me" => ("me", Endpoint::Me),
            "/auth/me/photo" => ("me_photo", Endpoint::Photo),
            p if is_verify_path(p) => ("verify", Endpoint::Verify),
            "/.well-known/jwks.json" => ("jwks", Endpoint::Jwks),
            "/.well-known/openid-configuration" => ("openid_configuration", Endpoint::Discovery),
            p if p.starts_with("/auth/") || p.starts_with("/.well-known/") => {
                ("unknown_gateway_path", Endpoint::Unknown)
            }
            _ => ("unmatched", Endpoint::Proxy),
        };
        info.endpoint = endpoint.into();
        // The exchange and session futures are large and rare: boxed, so that the future of every
        // proxied request (moved on its first poll) stays small.
        match handler {
            Endpoint::Exchange => Box::pin(exchange::handle(state, req, peer, info)).await,
            Endpoint::Logout => Box::pin(session::logout(state, req, info)).await,
            Endpoint::Me => Box::pin(session::me(state, req, info)).await,
            Endpoint::Photo => Box::pin(session::photo(state, req, info)).await,
            Endpoint::Verify => verify::handle(state, req, &path, info).await,
            Endpoint::Jwks => wellknown::jwks(state, &req),
            Endpoint::Discovery => wellknown::discovery(state, &req),
            Endpoint::Unknown => Err(Rejection::NotFound("no such gateway endpoint")),
            Endpoint::Proxy => forward::handle(state, req, path, peer, info).await,
        }
    }
}

/// `/auth/verify` and its Envoy form `/auth/verify/<path>`.
fn is_verify_path(path: &str) -> bool {
    path.strip_prefix("/auth/verify").is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Answers a CORS preflight itself: never forwarded, never asked for a token. The gateway's
/// endpoints follow `server.cors`; a route follows it unless it has `cors: false`.
fn preflight<B>(
    state: &AppState,
    req: &Request<B>,
    path: &CanonicalPath,
    worker: usize,
) -> Result<Response<Body>, Rejection> {
    let Some(cors) = state.server.cors.as_deref() else {
        return Err(Rejection::CorsDenied("CORS is not enabled"));
    };
    let gateway_path = path.as_str().starts_with("/auth/") || path.as_str().starts_with("/.well-known/");
    if !gateway_path && !state.live.routes(worker).find(path).is_some_and(|r| r.cors) {
        return Err(Rejection::CorsDenied("no route with CORS for this path"));
    }
    match cors.preflight(req.headers()) {
        crate::cors::Preflight::Allowed(headers) => {
            let mut resp = Response::new(full(bytes::Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp.headers_mut().extend(headers);
            crate::cors::preflight_vary(resp.headers_mut());
            Ok(resp)
        }
        crate::cors::Preflight::Refused(why) => Err(Rejection::CorsDenied(why)),
    }
}

enum Endpoint {
    Exchange,
    Logout,
    Me,
    Photo,
    Verify,
    Jwks,
    Discovery,
    Unknown,
    Proxy,
}

/// GET and HEAD only.
pub fn only_get<B>(req: &Request<B>) -> Result<(), Rejection> {
    match *req.method() {
        http::Method::GET | http::Method::HEAD => Ok(()),
        _ => Err(Rejection::MethodNotAllowed("GET, HEAD")),
    }
}

/// The bearer token of an `Authorization` header, if it has one (printable ASCII, as
/// [`crate::access::token_text`] checks it).
pub fn bearer(req_headers: &http::HeaderMap) -> Option<&str> {
    bearer_bytes(req_headers).and_then(crate::access::token_text)
}

/// The bearer token as [`bearer`] finds it, as bytes not yet checked to be printable ASCII:
/// for `Access::authenticate`, whose verified-token cache holds only tokens that were, so a
/// token it finds needs no check (on every proxied request a 700-byte scan), and one it does
/// not find is checked before anything else reads it. After the scheme and its space, spaces
/// and tabs around the token are dropped (any other control character stays, and fails the check).
pub fn bearer_bytes(req_headers: &http::HeaderMap) -> Option<&[u8]> {
    let v = req_headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = v.iter().position(|&b| b == b' ')?;
    let mut token = &v[space + 1..];
    while let [b' ' | b'\t', rest @ ..] = token {
        token = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = token {
        token = rest;
    }
    (v[..space].eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(r: Response<Body>) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn invalid_token_is_401_with_www_authenticate() {
        let r = Rejection::InvalidToken("expired".into()).into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer error=\"invalid_token\"");
        assert_eq!(body_json(r).await, serde_json::json!({"error": "invalid_token", "error_description": "expired"}));
    }

    #[tokio::test]
    async fn unavailable_is_503_with_retry_after() {
        let r = Rejection::Unavailable {
            description: "x",
            retry_after: Duration::from_secs(7),
            cause: "redis get: timed out".into(),
        };
        assert_eq!(r.reason(), "redis get: timed out", "the cause is for the log");
        let r = r.into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        let body = body_json(r).await;
        assert_eq!(body["error"], "temporarily_unavailable");
        assert!(!body.to_string().contains("redis"), "no internal detail in the body: {body}");
    }

    #[test]
    fn every_failure_has_one_class_for_the_response_the_log_and_the_metrics() {
        use tracing::Level;
        let cases = [
            (Rejection::InvalidRequest("x".into()), 400, Level::INFO, "invalid_request"),
            (Rejection::InvalidToken("x".into()), 401, Level::INFO, "invalid_token"),
            (Rejection::AccessDenied("x".into()), 403, Level::INFO, "denied"),
            (Rejection::RateLimited(Duration::from_secs(1)), 429, Level::INFO, "rate_limited"),
            (Rejection::Internal { cause: "key".into() }, 500, Level::ERROR, "error"),
            (Rejection::BadGateway { cause: "refused".into() }, 502, Level::WARN, "error"),
            (Rejection::GatewayTimeout, 504, Level::WARN, "error"),
        ];
        for (r, status, level, outcome) in cases {
            let c = r.class();
            assert_eq!((c.status.as_u16(), c.level, c.outcome), (status, level, outcome), "{r:?}");
        }
    }

    #[test]
    fn bearer_parsing_is_case_insensitive_and_refuses_other_schemes() {
        let mut h = http::HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn bearer_bytes_finds_what_bearer_finds() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_bytes(&h), None);
        for value in
            ["bearer abc", "Bearer  abc\t", "BEARER a b", "Basic abc", "Bearer ", "Bearer", "Bearerabc", " Bearer abc"]
        {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            assert_eq!(bearer_bytes(&h), bearer(&h).map(str::as_bytes), "{value:?}");
        }
        h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(b"Bearer abc\xe9").unwrap());
        assert_eq!((bearer(&h), bearer_bytes(&h)), (None, Some(&b"abc\xe9"[..])), "checked by the cache's caller");
    }
}
