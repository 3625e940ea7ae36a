//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the operator's kill switch
//! `POST /admin/users/{tenant}/{oid}/revoke`.
//!
//! Owns: the readiness checks' JSON (`{"status", "checks": [{"name", "ok", "detail"}]}`), and
//! who may use the kill switch: a loopback peer (`kubectl exec` into the pod, the CLI's
//! `revoke-user`), or anyone with the bearer token of `server.admin_token_file` when it is set.
//! Must not: be exposed on the public listener, or reveal secrets in check details.

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::{Body, full, json};
use crate::app::AppState;

pub async fn handle(state: Arc<AppState>, req: Request<Incoming>, peer: std::net::SocketAddr) -> Response<Body> {
    if let Some(user) = req.uri().path().strip_prefix("/admin/users/") {
        let user = user.to_string();
        return revoke(&state, &req, peer, &user).await;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(full(state.metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/readyz" => readyz(&state).await,
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "error_description": "admin paths: /metrics, /healthz, /readyz, POST /admin/users/{tenant}/{oid}/revoke"}),
        ),
    }
}

fn error(status: StatusCode, code: &str, description: &str) -> Response<Body> {
    json(status, &serde_json::json!({"error": code, "error_description": description}))
}

/// `POST /admin/users/{tenant}/{oid}/revoke`: every token of the user refused on every
/// replica until they sign in again; 204.
async fn revoke(state: &AppState, req: &Request<Incoming>, peer: std::net::SocketAddr, rest: &str) -> Response<Body> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [tenant, oid, "revoke"] = parts.as_slice() else {
        return error(StatusCode::NOT_FOUND, "not_found", "POST /admin/users/{tenant}/{oid}/revoke");
    };
    if req.method() != http::Method::POST {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "use POST");
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return r;
    }
    if !state.admin_allowed(peer.ip(), super::bearer(req.headers())) {
        tracing::warn!(%peer, "kill switch refused: not from loopback and no valid admin token");
        return error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the kill switch answers loopback peers (kubectl exec) or the bearer token of server.admin_token_file",
        );
    }
    let guid = |s: &str| uuid::Uuid::parse_str(s).is_ok() && s.len() == 36;
    if !guid(tenant) || !guid(oid) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "tenant and oid are GUIDs (the user's tid and object id)",
        );
    }
    match state.sync.kill(tenant, oid).await {
        Ok(_) => {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "kill switch applied on this replica only: redis is unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "applied on this replica only: the shared store is unavailable; retry",
            )
        }
    }
}

async fn readyz(state: &AppState) -> Response<Body> {
    let checks = state.readiness_checks().await;
    let ready = checks.iter().all(|c| c.ok);
    let failing: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
    let degraded: Vec<&str> =
        checks.iter().filter(|c| c.detail.starts_with("degraded")).map(|c| c.name.as_str()).collect();
    let body = serde_json::json!({
        "status": if !ready { "not_ready" } else if degraded.is_empty() { "ready" } else { "degraded" },
        "degraded": degraded,
        "failing": failing,
        "checks": checks.iter().map(|c| serde_json::json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
    });
    json(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}
