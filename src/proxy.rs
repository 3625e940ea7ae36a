//! The reverse proxy: forwards a request whose caller is already checked to its upstream.
//!
//! Owns: choosing the upstream connection (plain-HTTP upstreams: this worker's HTTP/1.1
//! connections, see [`pool`]; `https` upstreams: hyper-util's pooled client, HTTP/2 when the
//! upstream offers it through ALPN, rustls), request and response header rewriting (see [`headers`]),
//! streaming bodies both ways without buffering, WebSocket upgrades, and the upstream timeout
//! (time to response headers). Must not: authenticate (see `access`) or decide routes (see
//! [`routes`]); it is given both.

pub mod headers;
mod pool;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{Either, FutureExt, TryFutureExt};
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::access::Principal;
use crate::body::{Body, BoxError};
use crate::forwarded::TrustedProxies;
use crate::identity::IdentityHeaders;
use crate::path::CanonicalPath;
use routes::Route;

/// How long a TCP (and TLS) connect to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled upstream connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

/// Why forwarding failed: both are the upstream's fault, never the client's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The upstream is unreachable or broke the connection; why (connect refused, DNS, TLS...).
    #[error("the upstream is unreachable or broke the connection: {0}")]
    BadGateway(String),
    #[error("the upstream did not answer in time")]
    Timeout,
}

/// The TLS client configuration for outbound connections: the system roots plus `extra_ca`.
pub fn client_tls(extra_ca: &[rustls::pki_types::CertificateDer<'static>]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    for cert in extra_ca {
        roots.add(cert.clone()).map_err(|e| format!("extra CA: {e}"))?;
    }
    tracing::debug!(system_roots = added, extra = extra_ca.len(), "outbound TLS roots loaded");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The pooled upstream client.
pub fn upstream_client(tls: rustls::ClientConfig) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

/// What the upstream gets in `Authorization`.
#[derive(Debug, Clone)]
pub enum UpstreamAuth {
    /// The client's header as it came (open routes; `forward_token: session`).
    Keep,
    /// None (`forward_token: false`).
    Remove,
    /// This value: the route's assertion token.
    Set(HeaderValue),
}

/// Forwards requests.
pub struct Proxy {
    /// Per worker thread (an upstream connection is used by the thread that opened it): the
    /// connections to `http` upstreams and the client for `https` ones.
    workers: Box<[(pool::Http1Pool, UpstreamClient)]>,
    /// `proxy.strip_request_headers`.
    strip: headers::StripList,
    /// `X-Forwarded-Proto` of the public listener.
    proto: &'static str,
    trusted: TrustedProxies,
}

impl Proxy {
    /// `clients`: one per worker.
    pub fn new(
        clients: Vec<UpstreamClient>,
        strip: Vec<String>,
        proto: &'static str,
        trusted: TrustedProxies,
    ) -> Proxy {
        let workers = clients.into_iter().map(|c| (pool::Http1Pool::new(CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT), c));
        Proxy { workers: workers.collect(), strip: headers::StripList::new(strip), proto, trusted }
    }

    /// Rewrites the request for `route` and streams it to the upstream. `path` is the request's
    /// canonical path: the one the route was chosen on is the one forwarded. `worker`: the
    /// thread serving the request, whose upstream connections are used.
    ///
    /// The rewriting is done when this is called; the future it returns holds only what is in
    /// flight (the upstream call, its timeout, what the answer needs). Not an `async fn`: one
    /// keeps its moved arguments beside their moved copies (`-Zprint-type-sizes`: 2,072 bytes,
    /// the request twice), and this future is boxed, that is copied, for every request.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<'a>(
        &'a self,
        worker: usize,
        route: &'a Route,
        principal: Option<&Principal>,
        ids: &IdentityHeaders,
        path: &CanonicalPath,
        req: Request<Incoming>,
        peer: SocketAddr,
        authorization: UpstreamAuth,
    ) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a {
        let (pool, client) = match self.workers.get(worker % self.workers.len().max(1)) {
            Some(conns) => conns,
            None => return Either::Right(std::future::ready(Err(ProxyError::BadGateway("no upstream client".into())))),
        };
        let Outgoing { req, client_upgrade, span, plain } =
            match self.outgoing(route, principal, ids, path, req, peer, authorization) {
                Ok(out) => out,
                Err(e) => return Either::Right(std::future::ready(Err(e))),
            };
        let sent = match plain {
            true => Either::Left(pool.send(&route.authority, req).map_err(|e| e.0)),
            false => Either::Right(client.request(req).map_err(|e| crate::outbound::error_chain(&e))),
        };
        let answered = tokio::time::timeout(route.timeout, sent);
        Either::Left(answered.map(move |answer| answered_by_upstream(answer, route, client_upgrade, span)))
    }

    /// The request as the upstream gets it: path, `Host`, hop-by-hop and spoofable headers
    /// removed, forwarding and identity headers and `Authorization` set.
    #[allow(clippy::too_many_arguments)]
    fn outgoing(
        &self,
        route: &Route,
        principal: Option<&Principal>,
        ids: &IdentityHeaders,
        path: &CanonicalPath,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        authorization: UpstreamAuth,
    ) -> Result<Outgoing, ProxyError> {
        let upgrade = headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        if parts.version == Version::HTTP_2 || !parts.headers.contains_key(header::HOST) {
            // HTTP/2 carries the host in `:authority`: that is the one the request was sent
            // to, whatever a `host` header beside it says (X-Forwarded-Host is made from it).
            match parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                Some(authority) => parts.headers.insert(header::HOST, authority),
                None => parts.headers.remove(header::HOST),
            };
        }
        let plain = route.scheme == http::uri::Scheme::HTTP;
        let uri = match plain {
            true => route.upstream_path(path, parts.uri.query()).map(http::Uri::from),
            false => route.upstream_uri(path, parts.uri.query()),
        };
        parts.uri = uri.map_err(|e| ProxyError::BadGateway(format!("upstream URI: {e}")))?;
        parts.version = Version::HTTP_11;
        let h = &mut parts.headers;
        ids.strip(h);
        headers::strip_named(h, &self.strip);
        headers::strip_hop_by_hop(h, upgrade);
        let trusted_peer = self.trusted.rewrite(h, peer.ip(), self.proto);
        let span = crate::telemetry::to_upstream(h, trusted_peer);
        match plain {
            // Sent as is: the upstream's own authority, as a client of it would send.
            true => h.insert(header::HOST, route.host_header.clone()),
            // hyper-util's client sets it from the URI.
            false => h.remove(header::HOST),
        };
        match authorization {
            UpstreamAuth::Keep => {}
            UpstreamAuth::Remove => {
                h.remove(header::AUTHORIZATION);
            }
            UpstreamAuth::Set(value) => {
                h.insert(header::AUTHORIZATION, value);
            }
        }
        if let Some(p) = principal {
            for (name, value) in &p.identity {
                h.insert(name.clone(), value.clone());
            }
        }
        Ok(Outgoing { req: Request::from_parts(parts, body), client_upgrade, span, plain })
    }
}

/// A rewritten request and what its answer needs.
struct Outgoing {
    req: Request<Incoming>,
    /// The client's side of a WebSocket upgrade, bridged after a 101.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The client span of the upstream call (traces on): ended when dropped, after the answer.
    span: Option<crate::telemetry::Span>,
    /// A plain-HTTP upstream (this worker's connections), else hyper-util's client.
    plain: bool,
}

/// The upstream's answer (or the timeout), as the client gets it.
fn answered_by_upstream(
    answer: Result<Result<Response<Incoming>, String>, tokio::time::error::Elapsed>,
    route: &Route,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    span: Option<crate::telemetry::Span>,
) -> Result<Response<Body>, ProxyError> {
    let mut resp = match answer {
        Err(_) => return Err(ProxyError::Timeout),
        Ok(Err(cause)) => return Err(ProxyError::BadGateway(cause)),
        Ok(Ok(resp)) => resp,
    };
    if let Some(span) = span {
        span.set(opentelemetry::KeyValue::new("server.address", route.authority.host().to_string()));
        span.set(opentelemetry::KeyValue::new("http.response.status_code", i64::from(resp.status().as_u16())));
    }
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_side)) = (switching, client_upgrade) {
        bridge_upgrade(client_side, hyper::upgrade::on(&mut resp));
    }
    headers::strip_hop_by_hop(resp.headers_mut(), switching);
    resp.headers_mut().entry(header::VIA).or_insert(HeaderValue::from_static("1.1 entra-gateway"));
    Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
}

/// After a 101, copies bytes both ways between the client and the upstream until either closes.
fn bridge_upgrade(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((c, u)) => {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    tracing::debug!(error = %e, "upgraded connection closed with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
}
