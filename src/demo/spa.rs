//! The sample single-page app (`examples/spa/`), served by `entra-gateway demo` on its own
//! origin so that the browser exercises CORS, with a `config.json` pointing MSAL.js at the mock.
//!
//! Owns: the app's files (compiled in), its generated `config.json`, and the response headers
//! of a static app (no caching of the redirect bridge, a content security policy). Must not:
//! serve anything but the app's files.

use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::{Body, full};
use crate::mock::MockEntra;

/// The authority MSAL.js is given. MSAL refuses an `http://` authority, so the demo names an
/// `https` one on a reserved test domain and hands MSAL its documents (`authorityMetadata`,
/// `cloudDiscoveryMetadata`, `knownAuthorities`): nothing is fetched from that host; the
/// endpoints inside the metadata are the mock's loopback URLs.
pub const AUTHORITY_HOST: &str = "login.entra-mock.test";

const FILES: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("../../examples/spa/index.html")),
    ("/index.html", "text/html; charset=utf-8", include_str!("../../examples/spa/index.html")),
    ("/redirect.html", "text/html; charset=utf-8", include_str!("../../examples/spa/redirect.html")),
    ("/redirect.js", "text/javascript; charset=utf-8", include_str!("../../examples/spa/redirect.js")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("../../examples/spa/app.js")),
    ("/app.css", "text/css; charset=utf-8", include_str!("../../examples/spa/app.css")),
    (
        "/vendor/msal-browser.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../examples/spa/vendor/msal-browser.min.js"),
    ),
    (
        "/vendor/msal-redirect-bridge.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../examples/spa/vendor/msal-redirect-bridge.min.js"),
    ),
];

/// What the app needs to know, as `config.json`.
pub fn config_json(mock: &MockEntra, gateway: SocketAddr) -> serde_json::Value {
    let s = mock.settings();
    let tenant = &s.tenant_id;
    let host = AUTHORITY_HOST;
    serde_json::json!({
        "clientId": s.client_id,
        "authority": format!("https://{host}/{tenant}"),
        "knownAuthorities": [host],
        "authorityMetadata": mock.state().openid_document(tenant),
        "cloudDiscoveryMetadata": {
            "tenant_discovery_endpoint": format!("https://{host}/{tenant}/v2.0/.well-known/openid-configuration"),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        },
        "apiScope": format!("api://{}/access_as_user", s.client_id),
        "gatewayUrl": format!("http://{gateway}"),
        "users": [
            {"login": "alice", "label": "Alice (allowed: Engineering, admin)"},
            {"login": "bob", "label": "Bob (allowed through a nested group)"},
            {"login": "carol", "label": "Carol (not in an allowed group)"},
        ],
    })
}

/// Serves the app; `config` is the generated `config.json`.
pub async fn serve(
    req: Request<Incoming>,
    config: std::sync::Arc<String>,
    gateway: SocketAddr,
    mock: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path();
    let (content_type, body) = match (path, FILES.iter().find(|(p, ..)| *p == path)) {
        ("/config.json", _) => ("application/json", config.as_str().to_string()),
        (_, Some((_, ct, body))) => (*ct, (*body).to_string()),
        ("/favicon.ico", _) => {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::NO_CONTENT;
            return r;
        }
        _ => {
            let mut r = Response::new(full("not found"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
    };
    let mut r = Response::new(full(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let csp = format!(
        "default-src 'self'; connect-src 'self' http://{gateway} http://{mock}; img-src 'self' blob:; \
         form-action http://{mock}; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}
