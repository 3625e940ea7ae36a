//! The admin listener: `/metrics`, `/healthz`, `/readyz`.
//!
//! Owns: the readiness checks' JSON (`{"status", "checks": [{"name", "ok", "detail"}]}`).
//! Must not: be exposed on the public listener, or reveal secrets in check details.

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::{Body, full, json};
use crate::app::AppState;

pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
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
            &serde_json::json!({"error": "not_found", "error_description": "admin paths: /metrics, /healthz, /readyz"}),
        ),
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
