//! The caller's own session: `POST /auth/logout`, `GET /auth/me`, `GET /auth/me/photo`.
//!
//! Owns: revoking the presented token, showing the caller's user record, and serving the
//! caller's Graph photo (cached for `profile_ttl`), so a frontend needs no Graph token at all.
//! Must not: show another user's data: everything is keyed by the verified token's (tid, oid).

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::{AccessInfo, Body, Rejection, bearer_bytes, exchange::user_json, full, json, only_get};
use crate::access::AccessError;
use crate::app::AppState;

pub async fn logout(
    state: &AppState,
    req: Request<Incoming>,
    info: &mut AccessInfo,
) -> Result<Response<Body>, Rejection> {
    if req.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed("POST"));
    }
    let principal = match state.access.authenticate(bearer_bytes(req.headers()), info.worker).await {
        Ok(p) => p,
        // Logging out twice is fine.
        Err(AccessError::Revoked) => return Ok(no_content()),
        Err(e) => return Err(e.into()),
    };
    info.set_principal(&principal);
    state.access.revoke(&principal).await.map_err(AccessError::from)?;
    // The Entra token behind the session is verified again at the next exchange.
    state.exchange.forget(&principal.claims.tid, &principal.claims.oid);
    tracing::info!(user_id = %principal.claims.sub, "logout: token revoked");
    Ok(no_content())
}

fn no_content() -> Response<Body> {
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

pub async fn me(state: &AppState, req: Request<Incoming>, info: &mut AccessInfo) -> Result<Response<Body>, Rejection> {
    only_get(&req)?;
    let p = state.access.authenticate(bearer_bytes(req.headers()), info.worker).await?;
    info.set_principal(&p);
    let c = &p.claims;
    let record = state.directory.find(&c.tid, &c.oid).await?;
    let Some(user) = record else {
        if c.is_app() {
            return Err(Rejection::NotFound("app callers have no user record"));
        }
        return Err(Rejection::NotFound("no user record for this token; exchange an Entra token again"));
    };
    let mut body = user_json(&user, &c.groups, &c.roles);
    body["created_at"] = user.created_at.clone().into();
    body["updated_at"] = user.updated_at.clone().into();
    body["last_login_at"] = user.last_login_at.clone().into();
    Ok(json(StatusCode::OK, &body))
}

pub async fn photo(
    state: &AppState,
    req: Request<Incoming>,
    info: &mut AccessInfo,
) -> Result<Response<Body>, Rejection> {
    only_get(&req)?;
    let p = state.access.authenticate(bearer_bytes(req.headers()), info.worker).await?;
    info.set_principal(&p);
    if p.claims.is_app() {
        return Err(Rejection::NotFound("app callers have no photo"));
    }
    let photo = match state.photos.get(&p.claims.tid, &p.claims.oid).await {
        Ok(photo) => photo,
        Err(None) => return Err(Rejection::NotFound("photos need graph_mode app or obo")),
        Err(Some(e)) => return Err(e.into()),
    };
    let Some(photo) = photo else {
        return Err(Rejection::NotFound("the user has no photo"));
    };
    let mut r = Response::new(full(photo.bytes.clone()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_str(&photo.content_type)
            .unwrap_or(header::HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("private, max-age=300"));
    Ok(r)
}
