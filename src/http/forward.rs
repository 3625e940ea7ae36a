//! Every path that is not a gateway endpoint: route, check the caller, forward.
//!
//! Owns: the order of the proxy steps (route match on the canonical path, the route's
//! empty-segment rule, authentication and route groups for `auth: required`, forwarding that
//! same canonical path); the proxy metrics are recorded by `super::public` from the route it
//! leaves in `AccessInfo`. Must not: forward anything the checks refused;
//! the upstream sees nothing of a refused request.

use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::Incoming;

use super::{AccessInfo, Body, Rejection, bearer_bytes};
use crate::app::AppState;
use crate::config::{ForwardToken, RouteAuth};
use crate::path::CanonicalPath;
use crate::proxy::UpstreamAuth;
use crate::proxy::routes::RouteMatch;

/// An `async move` block rather than an `async fn`: see `super::public`.
#[allow(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice in its future (see `public`)")]
pub fn handle<'a>(
    state: &'a AppState,
    req: Request<Incoming>,
    path: CanonicalPath,
    peer: SocketAddr,
    info: &'a mut AccessInfo,
) -> impl Future<Output = Result<Response<Body>, Rejection>> + Send + 'a {
    async move {
        let routes = state.live.routes(info.worker);
        let Some(found) = routes.find(&path) else {
            state.metrics.proxy_requests_total.with_label_values(&["unmatched", "404"]).inc();
            return Err(Rejection::NotFound("no route for this path"));
        };
        drop(routes);
        info.skip_cors = !found.cors;
        let result = forward(state, &found, req, &path, peer, info).await;
        // Counted and timed by the caller with the request's own clock (`AccessInfo::route`).
        info.route = Some(found.into_route());
        result
    }
}

#[allow(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice in its future (see `public`)")]
fn forward<'a>(
    state: &'a AppState,
    found: &'a RouteMatch,
    req: Request<Incoming>,
    path: &'a CanonicalPath,
    peer: SocketAddr,
    info: &'a mut AccessInfo,
) -> impl Future<Output = Result<Response<Body>, Rejection>> + Send + 'a {
    async move {
        let principal = match admit(state, found, &req, path, info).await {
            Ok(principal) => principal,
            Err(refused) => {
                crate::body::linger(req.into_body());
                return Err(refused);
            }
        };
        let ids = state.access.identity_headers();
        let authorization = upstream_auth(state, found, principal.as_deref())?;
        info.forwarded = true;
        // Boxed: the forwarding future (the upstream request in flight) is the largest part of a
        // request's state; on the heap it is built once instead of being moved with every future
        // that contains it (public, route_public, this one).
        let forwarding =
            state.proxy.forward(info.worker, found.route(), principal.as_deref(), ids, path, req, peer, authorization);
        Ok(Box::pin(forwarding).await?)
    }
}

/// `Authorization` for the upstream: for a signed-in caller, the route's assertion, the
/// session token, or nothing (`forward_token`); an open route's request keeps its own.
fn upstream_auth(
    state: &AppState,
    found: &RouteMatch,
    principal: Option<&crate::access::Principal>,
) -> Result<UpstreamAuth, Rejection> {
    let Some(p) = principal else { return Ok(UpstreamAuth::Keep) };
    Ok(match found.forward_token {
        ForwardToken::Session => UpstreamAuth::Keep,
        ForwardToken::Off => UpstreamAuth::Remove,
        ForwardToken::Assertion => UpstreamAuth::Set(
            state.access.assertion(p, &found.audience).map_err(|e| Rejection::Internal { cause: e.to_string() })?,
        ),
    })
}

/// The checks of every policy the path reaches (see [`RouteMatch`]): the path's empty segments,
/// then, when any of them is `auth: required`, the caller and each one's groups. `Ok(None)`: an
/// open route.
pub(super) async fn admit(
    state: &AppState,
    found: &RouteMatch,
    req: &Request<Incoming>,
    path: &CanonicalPath,
    info: &mut AccessInfo,
) -> Result<Option<std::sync::Arc<crate::access::Principal>>, Rejection> {
    for route in found.policies() {
        route.check_empty_segments(path).map_err(|e| Rejection::InvalidRequest(e.to_string()))?;
    }
    if !found.requires_auth() {
        return Ok(None);
    }
    let p = state.access.authenticate(bearer_bytes(req.headers()), info.worker).await?;
    info.set_principal(&p);
    for route in found.policies().filter(|r| r.auth == RouteAuth::Required) {
        state.access.authorize(&p, route.groups.as_deref(), route.allow_apps)?;
        state.access.require_contexts(&p, &route.auth_context)?;
    }
    Ok(Some(p))
}
