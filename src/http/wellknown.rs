//! `/.well-known/jwks.json` and `/.well-known/openid-configuration`: how upstreams verify the
//! internal token themselves.
//!
//! Owns: the caching headers of these public documents. Must not: publish private key parts
//! (the issuer renders only public JWKs).

use http::{Request, Response, StatusCode, header};

use super::{Body, Rejection, full, json, only_get};
use crate::app::AppState;

pub fn jwks<B>(state: &AppState, req: &Request<B>) -> Result<Response<Body>, Rejection> {
    only_get(req)?;
    let mut resp = Response::new(full(state.issuer.jwks_json()));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/jwk-set+json"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("public, max-age=300"));
    Ok(resp)
}

pub fn discovery<B>(state: &AppState, req: &Request<B>) -> Result<Response<Body>, Rejection> {
    only_get(req)?;
    let base = state.issuer.issuer().trim_end_matches('/');
    let mut resp = json(StatusCode::OK, &state.issuer.discovery_document(base));
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("public, max-age=300"));
    Ok(resp)
}
