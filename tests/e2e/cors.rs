//! CORS: preflights answered by the gateway (never forwarded, never 401), allowed origins get
//! their origin back, everything else gets no CORS header, `Vary: Origin` always, identity
//! headers never exposed.

use crate::support::upstream::{self, Upstream};
use crate::support::*;
use reqwest::Method;

const APP: &str = "http://app.example.test:3000";

fn yaml(up: &Upstream) -> String {
    let u = up.url();
    format!(
        r#"
proxy:
  routes:
    - {{ path_prefix: "/api/", upstream: "{u}", auth: required }}
    - {{ path_prefix: "/public/", upstream: "{u}", auth: none }}
    - {{ path_prefix: "/internal/", upstream: "{u}", auth: none, cors: false }}
"#
    )
}

async fn setup(with_cors: bool) -> (entra_gateway::mock::MockEntra, Upstream, Gateway) {
    let mock = mock().await;
    let up = upstream::start().await;
    let mut b = GatewayBuilder::new(&mock).yaml(&yaml(&up));
    if with_cors {
        b = b.set("SERVER__CORS__ALLOWED_ORIGINS", format!(r#"["{APP}", "https://*.example.test"]"#));
    }
    let gw = b.start().await;
    (mock, up, gw)
}

async fn preflight(
    gw: &Gateway,
    path: &str,
    origins: &[&str],
    method: &str,
    headers: Option<&str>,
) -> reqwest::Response {
    let mut r = client().request(Method::OPTIONS, gw.url(path)).header("Access-Control-Request-Method", method);
    for o in origins {
        r = r.header("Origin", *o);
    }
    if let Some(h) = headers {
        r = r.header("Access-Control-Request-Headers", h);
    }
    r.send().await.unwrap()
}

fn cors_headers(r: &reqwest::Response) -> Vec<String> {
    r.headers().keys().map(|k| k.as_str().to_string()).filter(|k| k.starts_with("access-control-")).collect()
}

fn vary(r: &reqwest::Response) -> String {
    r.headers().get_all("vary").iter().map(|v| v.to_str().unwrap().to_ascii_lowercase()).collect::<Vec<_>>().join(",")
}

#[tokio::test]
async fn a_preflight_of_an_auth_required_route_is_answered_by_the_gateway_and_never_forwarded() {
    let (_mock, up, gw) = setup(true).await;
    let r = preflight(&gw, "/api/items", &[APP], "PUT", Some("authorization,content-type")).await;
    assert_eq!(r.status(), 204, "not 401: a preflight carries no token");
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-methods"], "GET, HEAD, POST, PUT, PATCH, DELETE");
    assert_eq!(h["access-control-allow-headers"], "authorization, content-type");
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h.get("access-control-allow-credentials").is_none(), "credentials are off unless asked");
    assert!(vary(&r).contains("origin") && vary(&r).contains("access-control-request-headers"), "{}", vary(&r));
    for path in ["/auth/exchange", "/auth/me", "/public/x"] {
        assert_eq!(
            preflight(&gw, path, &["https://a.example.test"], "POST", Some("authorization")).await.status(),
            204
        );
    }
    assert_eq!(up.requests(), 0, "the upstream saw no preflight");
}

#[tokio::test]
async fn refused_preflights_get_no_cors_header_in_every_spelling() {
    let (_mock, up, gw) = setup(true).await;
    let cases: &[(&str, &[&str], &str, Option<&str>)] = &[
        ("/api/x", &["http://evil.test"], "GET", None),
        ("/api/x", &["http://app.example.test:3001"], "GET", None),
        ("/api/x", &["http://app.example.test:3000/"], "GET", None),
        ("/api/x", &["http://app.example.test:3000.evil.test"], "GET", None),
        ("/api/x", &["https://a.b.example.test"], "GET", None),
        ("/api/x", &["https://example.test"], "GET", None),
        ("/api/x", &["null"], "GET", None),
        ("/api/x", &[APP, APP], "GET", None),
        ("/api/x", &[APP, "http://evil.test"], "GET", None),
        ("/api/x", &[APP], "CONNECT", None),
        ("/api/x", &[APP], "put", None),
        ("/api/x", &[APP], "GET", Some("x-auth-user-id")),
        ("/api/x", &[APP], "GET", Some("authorization, x_auth_groups")),
        ("/internal/x", &[APP], "GET", None),
        ("/nowhere", &[APP], "GET", None),
    ];
    for (path, origins, method, headers) in cases {
        let r = preflight(&gw, path, origins, method, *headers).await;
        let what = format!("{path} {origins:?} {method} {headers:?}");
        assert_eq!(r.status(), 403, "{what}");
        assert!(cors_headers(&r).is_empty(), "{what}: {:?}", cors_headers(&r));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "cors_denied", "{what}");
    }
    // A path with no safe canonical form is refused before anything else.
    let r = preflight(&gw, "/api%2Fx", &[APP], "GET", None).await;
    assert_eq!(r.status(), 400);
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn actual_responses_carry_the_origin_for_allowed_callers_and_errors_are_readable() {
    let (mock, up, gw) = setup(true).await;
    let r = client().post(gw.url("/auth/exchange")).bearer_auth(token_for(&mock, "alice")).header("Origin", APP);
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], APP);
    assert_eq!(r.headers()["access-control-expose-headers"], "x-request-id, www-authenticate");
    assert!(vary(&r).contains("origin"));
    let token = r.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();

    // A 401 is readable by the page (so it can show why), and says nothing more.
    let r = client().get(gw.url("/api/x")).header("Origin", APP).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], APP);

    // The upstream's own CORS headers are replaced by the gateway's decision.
    let r = client().get(gw.url("/api/own-cors")).bearer_auth(&token).header("Origin", APP).send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], APP);
    assert!(r.headers().get("access-control-allow-credentials").is_none());
    assert_eq!(vary(&r), "accept-encoding,origin");
    assert!(up.last().headers.get("origin").is_some(), "the upstream still sees the Origin");
    let r = client()
        .get(gw.url("/api/own-cors"))
        .bearer_auth(&token)
        .header("Origin", "http://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "CORS is the browser's business: the request itself is not refused");
    assert!(cors_headers(&r).is_empty(), "not the upstream's `*` either: {:?}", cors_headers(&r));

    // Identity headers are never exposed, whatever the route.
    let exposed = r.headers().get("access-control-expose-headers").map(|v| v.to_str().unwrap().to_string());
    assert!(exposed.is_none_or(|e| !e.contains("x-auth")));

    // `cors: false` leaves the route's headers alone.
    let r = client().get(gw.url("/internal/own-cors")).header("Origin", APP).send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(vary(&r), "accept-encoding");
}

#[tokio::test]
async fn without_server_cors_preflights_are_refused_and_responses_are_untouched() {
    let (_mock, up, gw) = setup(false).await;
    let r = preflight(&gw, "/api/x", &[APP], "GET", None).await;
    assert_eq!(r.status(), 403);
    assert!(cors_headers(&r).is_empty());
    let r = preflight(&gw, "/public/x", &[APP], "GET", None).await;
    assert_eq!(r.status(), 403, "never forwarded, even on auth: none");
    assert_eq!(up.requests(), 0);
    let r = client().get(gw.url("/public/own-cors")).header("Origin", APP).send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*", "the upstream's own headers pass");
    // A plain OPTIONS (not a preflight) is an ordinary request.
    let r = client().request(Method::OPTIONS, gw.url("/public/x")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), up.last().method.as_str()), (200, "OPTIONS"));
}

#[tokio::test]
async fn a_preflight_sent_to_forward_auth_is_a_forward_auth_question_never_a_cors_answer() {
    let mock = mock().await;
    let up = upstream::start().await;
    let gw = GatewayBuilder::new(&mock)
        .yaml(&yaml(&up))
        .set("SERVER__CORS__ALLOWED_ORIGINS", format!(r#"["{APP}"]"#))
        .set("PROXY__FORWARD_AUTH__ORIGINAL_URI", "x-original-uri")
        .start()
        .await;
    // An ingress that sends the browser's OPTIONS (method and headers) to /auth/verify reads a
    // 2xx as "let it through": a CORS 204 here would open the route to anyone.
    for path in ["/auth/verify", "/auth/%76erify", "/auth/verify?x=1", "/auth/verify/api/items"] {
        let r = client()
            .request(Method::OPTIONS, gw.url(path))
            .header("Origin", APP)
            .header("Access-Control-Request-Method", "DELETE")
            .header("Access-Control-Request-Headers", "authorization")
            .header("X-Original-URI", "/api/items")
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 204, "{path}: answered as a preflight");
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        assert!(r.headers().get("access-control-allow-methods").is_none(), "{path}");
    }
    let r = client()
        .request(Method::OPTIONS, gw.url("/auth/verify"))
        .header("Origin", APP)
        .header("Access-Control-Request-Method", "DELETE")
        .header("X-Original-URI", "/api/items")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "forward-auth asks for a token, preflight or not");
    let (status, _, body) = exchange(&gw, &token_for(&mock, "alice")).await;
    assert_eq!(status, 200);
    let token = body["access_token"].as_str().unwrap().to_string();
    let r = client()
        .request(Method::OPTIONS, gw.url("/auth/verify"))
        .header("Origin", APP)
        .header("Access-Control-Request-Method", "DELETE")
        .header("X-Original-URI", "/api/items")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "an authenticated OPTIONS is judged like any request");
    assert_eq!(up.requests(), 0);
}
