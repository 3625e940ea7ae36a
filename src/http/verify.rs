//! `/auth/verify` (any method): forward-auth for ingress-nginx (`auth-url`), Traefik
//! ForwardAuth, Caddy `forward_auth`, nginx `auth_request` and Envoy ext_authz (HTTP).
//!
//! Owns: reading the original URI from the one source the operator configured
//! (`proxy.forward_auth.original_uri`: one header, or the path after `/auth/verify` for Envoy;
//! every other original-URI header is ignored), canonicalising its path exactly as the proxy
//! does, applying that route's policy (no route: `proxy.forward_auth.unmatched`), and answering
//! 200 with the identity headers, or 400/401/403. Must not: forward anything (the ingress
//! does), fall back to a weaker policy when the original URI is missing or unreadable, or let
//! a request pass that carries a client's identity header (403 `spoofed_identity_header`).

use http::{Request, Response};
use hyper::body::Incoming;

use super::{AccessInfo, Body, Rejection, bearer_bytes, full};
use crate::app::AppState;
use crate::config::{OriginalUriSource, RouteAuth, Unmatched};
use crate::path::{CanonicalPath, original_uri_path};

/// The canonical path of the request the ingress is asking about.
fn original_path<B>(
    source: OriginalUriSource,
    req: &Request<B>,
    own_path: &CanonicalPath,
) -> Result<CanonicalPath, Rejection> {
    let bad = |e: crate::path::PathError| Rejection::InvalidRequest(format!("original URI: {e}"));
    let Some(name) = source.header() else {
        // Envoy: `/auth/verify/<original path>`.
        let rest = own_path.as_str().strip_prefix("/auth/verify").filter(|p| p.starts_with('/')).ok_or_else(|| {
            Rejection::InvalidRequest("forward-auth reads the original path from /auth/verify/<path>".into())
        })?;
        return CanonicalPath::parse(rest).map_err(bad);
    };
    let mut values = req.headers().get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Rejection::InvalidRequest(format!("forward-auth needs exactly one {name} header")));
    };
    let raw =
        value.to_str().map_err(|_| Rejection::InvalidRequest(format!("the {name} header is not readable ASCII")))?;
    CanonicalPath::parse(original_uri_path(raw).map_err(bad)?).map_err(bad)
}

/// Refuses a request that carries a header that could pass for an identity header: Traefik,
/// Caddy and nginx `auth_request` copy the client's headers into the check, and pass on to the
/// application every one the gateway does not answer with (Traefik replaces only its
/// `authResponseHeaders`, Go passes `X_Auth_User_Id` on as it is). Checked once the request
/// would pass: a refusal for another reason keeps its status (401 stays 401).
fn no_spoofed_identity<B>(state: &AppState, req: &Request<B>) -> Result<(), Rejection> {
    match state.access.identity_headers().find_spoofed(req.headers()) {
        Some(name) => Err(Rejection::SpoofedIdentityHeader(name.as_str().to_string())),
        None => Ok(()),
    }
}

pub async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    own_path: &CanonicalPath,
    info: &mut AccessInfo,
) -> Result<Response<Body>, Rejection> {
    let routes = state.live.routes(info.worker);
    let Some(source) = routes.original_uri else {
        return Err(Rejection::NotFound(
            "forward-auth is off: set proxy.forward_auth.original_uri for the ingress in front",
        ));
    };
    let path = original_path(source, &req, own_path)?;
    let found = routes.find(&path);
    if let Some(found) = &found {
        for r in found.policies() {
            r.check_empty_segments(&path).map_err(|e| Rejection::InvalidRequest(format!("original URI: {e}")))?;
        }
    }
    if found.as_ref().is_some_and(|f| !f.requires_auth()) {
        no_spoofed_identity(state, &req)?;
        return Ok(Response::new(full("")));
    }
    let principal = state.access.authenticate(bearer_bytes(req.headers()), info.worker).await?;
    info.set_principal(&principal);
    match &found {
        Some(found) => {
            for r in found.policies().filter(|r| r.auth == RouteAuth::Required) {
                state.access.authorize(&principal, r.groups.as_deref(), r.allow_apps)?;
                state.access.require_contexts(&principal, &r.auth_context)?;
            }
        }
        // Unmatched paths are for users only: app callers need a route with allow_apps.
        None if routes.unmatched == Unmatched::Authenticated => state.access.authorize(&principal, None, false)?,
        None => return Err(Rejection::AccessDenied("no route matches the original path".into())),
    }
    no_spoofed_identity(state, &req)?;
    let mut resp = Response::new(full(""));
    for (name, value) in &principal.identity {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/auth/verify");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn own(p: &str) -> CanonicalPath {
        CanonicalPath::parse(p).unwrap()
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let r = req(&[("x-original-uri", "/public/x"), ("x-forwarded-uri", "/admin/x?y=1")]);
        let p = original_path(OriginalUriSource::XForwardedUri, &r, &own("/auth/verify")).unwrap();
        assert_eq!(p.as_str(), "/admin/x");
        let r = req(&[("x-original-url", "https://app.example/%61dmin/x?next=https://e.example/public/")]);
        let p = original_path(OriginalUriSource::XOriginalUrl, &r, &own("/auth/verify")).unwrap();
        assert_eq!(p.as_str(), "/admin/x");
        let r = req(&[("x-original-uri", "/public/x")]);
        assert!(original_path(OriginalUriSource::XOriginalUrl, &r, &own("/auth/verify")).is_err(), "absent");
    }

    #[test]
    fn two_values_or_a_relative_uri_are_refused() {
        let r = req(&[("x-forwarded-uri", "/public/x"), ("x-forwarded-uri", "/admin/x")]);
        assert!(original_path(OriginalUriSource::XForwardedUri, &r, &own("/auth/verify")).is_err());
        let r = req(&[("x-forwarded-uri", "public/x")]);
        assert!(original_path(OriginalUriSource::XForwardedUri, &r, &own("/auth/verify")).is_err());
    }

    #[test]
    fn envoy_reads_the_path_after_auth_verify() {
        let r = req(&[("x-original-uri", "/public/x")]);
        let p = original_path(OriginalUriSource::Path, &r, &own("/auth/verify/admin/x")).unwrap();
        assert_eq!(p.as_str(), "/admin/x");
        assert!(original_path(OriginalUriSource::Path, &r, &own("/auth/verify")).is_err());
    }
}
