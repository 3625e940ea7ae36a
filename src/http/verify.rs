//! `GET|HEAD /auth/verify`: forward-auth for ingress-nginx (`auth-url`), Traefik ForwardAuth and
//! Envoy ext_authz (HTTP).
//!
//! Owns: reading the original path from `X-Original-URI` / `X-Forwarded-Uri`, or from the
//! request path itself (`/auth/verify/<original path>`, what Envoy's ext_authz `path_prefix`
//! sends), applying that route's policy (no matching route: any valid token), and answering 200 with the identity
//! headers, or 401/403. Must not: forward anything; the ingress does.

use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{AccessInfo, Body, Rejection, bearer, full, only_get};
use crate::config::RouteAuth;
use crate::proxy::routes::check_path;
use crate::server::AppState;

/// The original path: from the ingress headers, else appended to `/auth/verify` (Envoy).
fn original_path(headers: &HeaderMap, own_path: &str) -> Option<String> {
    let Some(raw) = headers.get("x-original-uri").or_else(|| headers.get("x-forwarded-uri")) else {
        return own_path.strip_prefix("/auth/verify").filter(|p| p.starts_with('/')).map(str::to_string);
    };
    let raw = raw.to_str().ok()?;
    let path = match raw.find("://") {
        // A full URL: skip scheme and authority.
        Some(i) => raw[i + 3..].find('/').map(|j| &raw[i + 3 + j..]).unwrap_or("/"),
        None => raw,
    };
    Some(path.split(['?', '#']).next().unwrap_or("/").to_string())
}

pub async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    info: &mut AccessInfo,
) -> Result<Response<Body>, Rejection> {
    only_get(&req)?;
    let path = original_path(req.headers(), req.uri().path());
    if let Some(p) = &path {
        check_path(p).map_err(|e| Rejection::AccessDenied(e.to_string()))?;
    }
    let routes = state.routes.load();
    let route = path.as_deref().and_then(|p| routes.find(p));
    if route.is_some_and(|r| r.auth == RouteAuth::None) {
        return Ok(Response::new(full("")));
    }
    let principal = state.access.authenticate(bearer(req.headers())).await?;
    info.user_id = Some(principal.claims.sub.clone());
    state.access.authorize(&principal, route.and_then(|r| r.groups.as_deref()))?;
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::OK;
    for (name, value) in &principal.identity {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_path_comes_from_either_header_without_query() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-uri", "/admin/x?y=1".parse().unwrap());
        assert_eq!(original_path(&h, "/auth/verify").as_deref(), Some("/admin/x"));
        h.insert("x-original-uri", "https://app.example/api/a?b".parse().unwrap());
        assert_eq!(original_path(&h, "/auth/verify").as_deref(), Some("/api/a"));
        assert_eq!(original_path(&HeaderMap::new(), "/auth/verify"), None);
        assert_eq!(original_path(&HeaderMap::new(), "/auth/verify/admin/x").as_deref(), Some("/admin/x"));
        assert_eq!(original_path(&HeaderMap::new(), "/auth/verifyx"), None);
    }
}
