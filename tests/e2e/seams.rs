//! The seams between the gateway and what stands around it, tried as an attacker would, with a
//! catch-all public route present (the setting in which a path that misses its protected
//! route is served openly): bare paths and case variants of protected prefixes, path-override
//! headers, methods that open tunnels, and the host an HTTP/2 request names.

use crate::support::upstream::{self, Upstream};
use crate::support::*;
use entra_gateway::mock::MockEntra;

fn routes(up: &Upstream) -> String {
    let u = up.url();
    format!(
        r#"
proxy:
  forward_auth: {{ original_uri: x-original-uri }}
  routes:
    - {{ path_prefix: "/", upstream: "{u}", auth: none }}
    - {{ path_prefix: "/admin/", upstream: "{u}", auth: required, allowed_groups: ["{ADMINS}"] }}
    - {{ path_prefix: "/reports", upstream: "{u}", auth: required }}
    - {{ path_prefix: "/CaseApp/", upstream: "{u}", auth: required, case_sensitive: true }}
"#
    )
}

struct Setup {
    mock: MockEntra,
    up: Upstream,
    gw: Gateway,
}

async fn setup() -> Setup {
    let mock = mock().await;
    let up = upstream::start().await;
    let gw = GatewayBuilder::new(&mock).yaml(&routes(&up)).start().await;
    Setup { mock, up, gw }
}

impl Setup {
    async fn login(&self, user: &str) -> String {
        let (status, _, body) = exchange(&self.gw, &token_for(&self.mock, user)).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    /// The status through the proxy and through forward-auth for `target` (a raw request
    /// target; its query is part of what forward-auth is given).
    async fn both(&self, target: &str, token: Option<&str>) -> (u16, u16) {
        let auth = token.map(|t| format!("\r\nAuthorization: Bearer {t}")).unwrap_or_default();
        let (proxy, _) =
            raw_request(self.gw.addr, format!("GET {target} HTTP/1.1\r\nHost: app{auth}").as_bytes()).await;
        let verify = format!("GET /auth/verify HTTP/1.1\r\nHost: gw\r\nX-Original-URI: {target}{auth}");
        let (verify, _) = raw_request(self.gw.addr, verify.as_bytes()).await;
        (proxy, verify)
    }
}

#[tokio::test]
async fn a_protected_prefix_holds_for_its_bare_path_and_every_case_even_with_a_public_catch_all() {
    let s = setup().await;
    let bob = s.login("bob").await;
    let alice = s.login("alice").await;
    let before = s.up.requests();
    for target in ["/admin", "/admin?x=1", "/ADMIN", "/Admin/settings", "/aDmIn/x?y=2", "/%61dmin", "/REPORTS/q"] {
        assert_eq!(s.both(target, None).await, (401, 401), "{target} without a token");
    }
    for target in ["/admin", "/admin?x=1", "/ADMIN/settings"] {
        assert_eq!(s.both(target, Some(&bob)).await, (403, 403), "{target}: bob is not an admin");
    }
    assert_eq!(s.up.requests(), before, "a protected path was served openly");
    // What the rule covers, and what it does not: the case is kept as sent.
    assert_eq!(s.both("/Admin/settings", Some(&alice)).await, (200, 200));
    assert_eq!(s.up.last().uri, "/Admin/settings");
    assert_eq!(s.both("/administrator", None).await, (200, 200), "another segment: the public route");
    assert_eq!(s.both("/reportsx", None).await, (200, 200), "`/reports` covers `/reports/...` only");
    // A route that opts out of folding is reached by its exact case only.
    assert_eq!(s.both("/CaseApp/x", None).await, (401, 401));
    assert_eq!(s.both("/caseapp/x", None).await, (200, 200), "case_sensitive: another path");
}

#[tokio::test]
async fn path_override_headers_never_reach_the_upstream() {
    let s = setup().await;
    let token = s.login("alice").await;
    let overrides = [
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Forwarded-Prefix",
        "X-Forwarded-Port",
        "X-Forwarded-Ssl",
        "X-Forwarded-Scheme",
        "True-Client-IP",
        "X-Remote-User",
        "X_Original_URL",
        "x_remote_user",
    ];
    for (target, token) in [("/admin/x", Some(token.as_str())), ("/index.html", None)] {
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: app");
        if let Some(t) = token {
            head.push_str(&format!("\r\nAuthorization: Bearer {t}"));
        }
        for h in overrides {
            head.push_str(&format!("\r\n{h}: /admin/secret"));
        }
        head.push_str("\r\nX-Custom: kept");
        assert_eq!(raw_request(s.gw.addr, head.as_bytes()).await.0, 200);
        let seen = s.up.last().headers;
        for h in overrides {
            assert!(seen.get(h.to_ascii_lowercase().as_str()).is_none(), "{h} reached the upstream on {target}");
        }
        assert_eq!(seen["x-custom"], "kept");
    }
}

#[tokio::test]
async fn connect_and_trace_are_405_and_never_forwarded() {
    let s = setup().await;
    let before = s.up.requests();
    for head in [
        "CONNECT /index.html HTTP/1.1\r\nHost: app",
        "CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443",
        "TRACE /index.html HTTP/1.1\r\nHost: app",
        "TRACE /admin/x HTTP/1.1\r\nHost: app",
    ] {
        let (status, text) = raw_request(s.gw.addr, head.as_bytes()).await;
        assert!(status == 405 || status == 400, "{head}: {text}");
        if head.contains("/index.html") {
            assert_eq!(status, 405, "{head}: {text}");
            assert!(text.to_ascii_lowercase().contains("\r\nallow: get"), "{text}");
        }
    }
    assert_eq!(s.up.requests(), before);
}

#[tokio::test]
async fn over_http2_the_forwarded_host_is_the_authority_not_a_host_header_beside_it() {
    let s = setup().await;
    let tcp = tokio::net::TcpStream::connect(s.gw.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::get("http://app.example/index.html").header("host", "evil.example").body(()).unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let seen = s.up.last().headers;
    assert_eq!(seen["x-forwarded-host"], "app.example");
    assert!(!seen.values().any(|v| v == "evil.example"), "{seen:?}");
}
