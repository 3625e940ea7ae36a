//! The trust boundary, tried as an attacker would: every way of making the gateway check one
//! path (or caller) while the upstream serves another. Each case runs through the reverse proxy
//! and through forward-auth (`/auth/verify`), and asserts the status and that the upstream saw
//! nothing of a refused request.

use crate::support::upstream::{self, Upstream};
use crate::support::*;
use entra_gateway::mock::MockEntra;

/// `/admin/` needs ADMINS (alice is in it, bob is not); `/public/` is open; `/files/` accepts
/// `//`. Forward-auth reads `X-Original-URI` (nginx `auth_request`).
fn routes_yaml(up: &Upstream) -> String {
    let u = up.url();
    format!(
        r#"
proxy:
  forward_auth: {{ original_uri: x-original-uri }}
  routes:
    - {{ path_prefix: "/api/", upstream: "{u}", auth: required }}
    - {{ path_prefix: "/public/", upstream: "{u}", auth: none }}
    - {{ path_prefix: "/admin/", upstream: "{u}", auth: required, allowed_groups: ["{ADMINS}"] }}
    - {{ path_prefix: "/files/", upstream: "{u}", auth: required, allow_empty_segments: true }}
"#
    )
}

struct Setup {
    mock: MockEntra,
    up: Upstream,
    gw: Gateway,
}

async fn setup_with(extra: &[(&str, &str)]) -> Setup {
    let mock = mock().await;
    let up = upstream::start().await;
    let mut b = GatewayBuilder::new(&mock).yaml(&routes_yaml(&up));
    for (k, v) in extra {
        b = b.set(k, *v);
    }
    let gw = b.start().await;
    Setup { mock, up, gw }
}

async fn setup() -> Setup {
    setup_with(&[]).await
}

#[derive(Clone, Copy, Debug)]
enum Who {
    Nobody,
    Bob,
    Alice,
}

impl Setup {
    async fn token(&self, who: Who) -> Option<String> {
        let login = match who {
            Who::Nobody => return None,
            Who::Bob => "bob",
            Who::Alice => "alice",
        };
        let (status, _, body) = exchange(&self.gw, &overage_token_for(&self.mock, login)).await;
        assert_eq!(status, 200, "{body}");
        Some(body["access_token"].as_str().unwrap().to_string())
    }

    /// A raw request line and headers through the proxy.
    async fn proxy(&self, target: &[u8], token: Option<&str>, headers: &[&str]) -> (u16, String) {
        let mut head = b"GET ".to_vec();
        head.extend_from_slice(target);
        head.extend_from_slice(b" HTTP/1.1\r\nHost: app.example");
        if let Some(t) = token {
            head.extend_from_slice(format!("\r\nAuthorization: Bearer {t}").as_bytes());
        }
        for h in headers {
            head.extend_from_slice(format!("\r\n{h}").as_bytes());
        }
        raw_request(self.gw.addr, &head).await
    }

    /// Forward-auth for `original`, sent in `X-Original-URI` (bytes as given).
    async fn verify(&self, original: &[u8], token: Option<&str>) -> (u16, String) {
        let mut head = b"GET /auth/verify HTTP/1.1\r\nHost: gw\r\nX-Original-URI: ".to_vec();
        head.extend_from_slice(original);
        if let Some(t) = token {
            head.extend_from_slice(format!("\r\nAuthorization: Bearer {t}").as_bytes());
        }
        raw_request(self.gw.addr, &head).await
    }
}

/// One path case: the same target through the proxy and forward-auth, by `who`.
async fn path_case(target: &[u8], who: Who, proxy_status: u16, verify_status: u16) {
    let s = setup().await;
    let token = s.token(who).await;
    let before = s.up.requests();
    let (status, resp) = s.proxy(target, token.as_deref(), &[]).await;
    assert_eq!(status, proxy_status, "proxy {who:?} {}: {resp}", String::from_utf8_lossy(target));
    let (status, resp) = s.verify(target, token.as_deref()).await;
    assert_eq!(status, verify_status, "verify {who:?} {}: {resp}", String::from_utf8_lossy(target));
    assert_eq!(s.up.requests(), before, "the upstream saw a refused request");
}

macro_rules! path_cases {
    ($($name:ident: $target:expr, $who:ident => proxy $p:expr, verify $v:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            path_case($target, Who::$who, $p, $v).await;
        }
    )*};
}

path_cases! {
    a_url_in_the_query_does_not_choose_the_route:
        b"/admin/settings?next=https://x.example/public/", Nobody => proxy 401, verify 401;
    an_encoded_unreserved_character_is_the_same_path: b"/%61dmin/settings", Bob => proxy 403, verify 403;
    upper_case_reaches_the_same_route: b"/ADMIN/settings", Bob => proxy 403, verify 403;
    a_doubled_slash_is_refused: b"//admin/settings", Bob => proxy 400, verify 400;
    a_doubled_slash_inside_is_refused: b"/public//../admin/settings", Nobody => proxy 400, verify 400;
    a_path_parameter_is_refused: b"/admin;x/settings", Bob => proxy 400, verify 400;
    dot_dot_semicolon_is_refused: b"/public/..;/admin/settings", Nobody => proxy 400, verify 400;
    an_encoded_semicolon_is_refused: b"/public/..%3b/admin/settings", Nobody => proxy 400, verify 400;
    a_plain_dot_dot_is_refused: b"/public/../admin/settings", Nobody => proxy 400, verify 400;
    an_encoded_dot_dot_is_refused: b"/public/%2e%2E/admin/settings", Nobody => proxy 400, verify 400;
    a_half_encoded_dot_dot_is_refused: b"/public/.%2e/admin/settings", Nobody => proxy 400, verify 400;
    a_single_dot_is_refused: b"/public/./x", Nobody => proxy 400, verify 400;
    double_encoding_is_refused: b"/public/%252e%252e/admin/settings", Nobody => proxy 400, verify 400;
    an_escaped_percent_before_encoded_hex_is_refused:
        b"/public/%25%32%65%25%32%65/admin/settings", Nobody => proxy 400, verify 400;
    an_encoded_slash_is_refused: b"/public/..%2fadmin/settings", Nobody => proxy 400, verify 400;
    an_encoded_slash_in_a_name_is_refused: b"/api/a%2Fb", Bob => proxy 400, verify 400;
    an_encoded_backslash_is_refused: b"/public/..%5cadmin/settings", Nobody => proxy 400, verify 400;
    a_raw_backslash_is_refused: b"/public/..\\admin/settings", Nobody => proxy 400, verify 400;
    an_encoded_nul_is_refused: b"/public/a%00.txt", Nobody => proxy 400, verify 400;
    encoded_crlf_is_refused: b"/public/a%0d%0aX-Auth-User-Id:%20x", Nobody => proxy 400, verify 400;
    an_overlong_utf8_dot_is_refused: b"/public/%c0%ae%c0%ae/admin/settings", Nobody => proxy 400, verify 400;
    a_dot_dot_with_a_trailing_space_is_refused: b"/public/..%20/admin/settings", Nobody => proxy 400, verify 400;
    a_broken_escape_is_refused: b"/public/%zz", Nobody => proxy 400, verify 400;
    non_ascii_bytes_in_the_path_are_encoded_and_still_checked: "/admin/é".as_bytes(), Bob => proxy 403, verify 400;
    no_route_is_404_through_the_proxy_and_403_through_forward_auth: b"/nowhere", Alice => proxy 404, verify 403;
}

#[tokio::test]
async fn the_path_checked_is_the_path_forwarded() {
    let s = setup().await;
    let alice = s.token(Who::Alice).await.unwrap();
    let (status, _) = s.proxy(b"/%61dmin/%73ettings/a%20b%7e?x=%2F..%2F", Some(&alice), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(s.up.last().uri, "/admin/settings/a%20b~?x=%2F..%2F", "decoded once, query untouched");
    let (status, _) = s.proxy("/api/caf\u{e9}|x".as_bytes(), Some(&alice), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(s.up.last().uri, "/api/caf%C3%A9%7Cx");
}

#[tokio::test]
async fn a_route_that_allows_empty_segments_gets_them_and_others_do_not() {
    let s = setup().await;
    let alice = s.token(Who::Alice).await.unwrap();
    let (status, _) = s.proxy(b"/files//a//b", Some(&alice), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(s.up.last().uri, "/files//a//b");
    let before = s.up.requests();
    assert_eq!(s.proxy(b"/api//x", Some(&alice), &[]).await.0, 400);
    assert_eq!(s.verify(b"/api//x", Some(&alice)).await.0, 400);
    assert_eq!(s.verify(b"/files//a", Some(&alice)).await.0, 200);
    assert_eq!(s.up.requests(), before);
}

#[tokio::test]
async fn a_doubled_slash_is_matched_to_the_stricter_route_never_to_a_catch_all() {
    let mock = mock().await;
    let up = upstream::start().await;
    let u = up.url();
    let yaml = format!(
        r#"
proxy:
  forward_auth: {{ original_uri: x-forwarded-uri }}
  routes:
    - {{ path_prefix: "/", upstream: "{u}", auth: none, allow_empty_segments: true }}
    - {{ path_prefix: "/admin/", upstream: "{u}", auth: required, allowed_groups: ["{ADMINS}"] }}
"#
    );
    let gw = GatewayBuilder::new(&mock).yaml(&yaml).start().await;
    let (status, resp) = raw_request(gw.addr, b"GET //admin/settings HTTP/1.1\r\nHost: x").await;
    assert_eq!(status, 400, "{resp}");
    let (status, _) = raw_request(gw.addr, b"GET /auth/verify HTTP/1.1\r\nHost: x\r\nX-Forwarded-Uri: //admin/x").await;
    assert_eq!(status, 400);
    assert_eq!(up.requests(), 0);
    // The catch-all itself still takes its own `//` paths.
    assert_eq!(raw_request(gw.addr, b"GET /site//page HTTP/1.1\r\nHost: x").await.0, 200);
}

// === forward-auth: one configured source ===

#[tokio::test]
async fn forward_auth_ignores_every_original_uri_header_but_the_configured_one() {
    let s = setup_with(&[("PROXY__FORWARD_AUTH__ORIGINAL_URI", "x-forwarded-uri")]).await;
    let bob = s.token(Who::Bob).await.unwrap();
    let head = |extra: &str| format!("GET /auth/verify HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {bob}\r\n{extra}");
    // Traefik sets X-Forwarded-Uri; the client's X-Original-URI does not count.
    let (status, _) =
        raw_request(s.gw.addr, head("X-Forwarded-Uri: /admin/x\r\nX-Original-URI: /public/x").as_bytes()).await;
    assert_eq!(status, 403);
    let (status, _) = raw_request(s.gw.addr, head("X-Original-URI: /public/x").as_bytes()).await;
    assert_eq!(status, 400, "the configured header is missing: no fallback");
    let (status, _) =
        raw_request(s.gw.addr, head("X-Forwarded-Uri: /public/x\r\nX-Forwarded-Uri: /admin/x").as_bytes()).await;
    assert_eq!(status, 400, "two values of the configured header");
    let (status, _) = raw_request(s.gw.addr, head("X-Forwarded-Uri: public/x").as_bytes()).await;
    assert_eq!(status, 400, "neither origin-form nor absolute-form");
    assert_eq!(s.up.requests(), 0);
}

#[tokio::test]
async fn ingress_nginx_sends_a_full_url_in_x_original_url() {
    let s = setup_with(&[("PROXY__FORWARD_AUTH__ORIGINAL_URI", "x-original-url")]).await;
    let bob = s.token(Who::Bob).await.unwrap();
    let alice = s.token(Who::Alice).await.unwrap();
    let ask = |token: &str, url: &str, extra: &str| {
        format!(
            "GET /auth/verify HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nX-Original-URL: {url}{extra}"
        )
    };
    let url = "https://apps.example.com/admin/settings?next=https://x.example/public/";
    assert_eq!(raw_request(s.gw.addr, ask(&bob, url, "\r\nX-Original-URI: /public/x").as_bytes()).await.0, 403);
    assert_eq!(raw_request(s.gw.addr, ask(&alice, url, "").as_bytes()).await.0, 200);
    let (status, _) =
        raw_request(s.gw.addr, b"GET /auth/verify HTTP/1.1\r\nHost: gw\r\nX-Original-URI: /public/x").await;
    assert_eq!(status, 400, "a client-sent X-Original-URI never decides");
    let open = "GET /auth/verify HTTP/1.1\r\nHost: gw\r\nX-Original-URL: https://apps.example.com/public/x";
    assert_eq!(raw_request(s.gw.addr, open.as_bytes()).await.0, 200);
}

#[tokio::test]
async fn envoy_sends_the_original_method_and_the_path_after_auth_verify() {
    let s = setup_with(&[("PROXY__FORWARD_AUTH__ORIGINAL_URI", "path")]).await;
    let bob = s.token(Who::Bob).await.unwrap();
    let alice = s.token(Who::Alice).await.unwrap();
    for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let req =
            |t: &str| client().request(method.parse().unwrap(), s.gw.url("/auth/verify/admin/x?y=1")).bearer_auth(t);
        assert_eq!(req(&alice).send().await.unwrap().status(), 200, "{method}");
        assert_eq!(req(&bob).send().await.unwrap().status(), 403, "{method}");
    }
    let (status, _) =
        raw_request(s.gw.addr, b"GET /auth/verify HTTP/1.1\r\nHost: gw\r\nX-Original-URI: /public/").await;
    assert_eq!(status, 400, "with `path`, headers never decide");
    assert_eq!(s.verify(b"/public/x", None).await.0, 400);
    let (status, _) = raw_request(s.gw.addr, b"GET /auth/verify/public/..;/admin/x HTTP/1.1\r\nHost: gw").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn forward_auth_is_off_until_its_source_is_configured_and_unmatched_paths_can_be_opened() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    let (status, _, body) = exchange(&gw, &token_for(&mock, "alice")).await;
    assert_eq!(status, 200);
    let alice = body["access_token"].as_str().unwrap().to_string();
    let r = client().get(gw.url("/auth/verify")).bearer_auth(&alice).header("X-Original-URI", "/x").send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("proxy.forward_auth.original_uri"));
    let s = setup_with(&[("PROXY__FORWARD_AUTH__UNMATCHED", "authenticated")]).await;
    let bob = s.token(Who::Bob).await.unwrap();
    assert_eq!(s.verify(b"/nowhere", Some(&bob)).await.0, 200);
    assert_eq!(s.verify(b"/nowhere", None).await.0, 401);
    assert_eq!(s.verify(b"/admin/x", Some(&bob)).await.0, 403, "routes keep their groups");
}

// === headers ===

#[tokio::test]
async fn identity_headers_spelled_with_underscores_never_reach_the_upstream() {
    let s = setup().await;
    let bob = s.token(Who::Bob).await.unwrap();
    let spoof = ["X_Auth_User_Id: victim", "x_auth_groups: admins", "X-Auth_Roles: admin", "X_Forwarded_For: 6.6.6.6"];
    for (target, token) in [(&b"/api/x"[..], Some(bob.as_str())), (&b"/public/x"[..], None)] {
        let (status, _) = s.proxy(target, token, &spoof).await;
        assert_eq!(status, 200);
        let h = s.up.last().headers;
        for name in ["x_auth_user_id", "x_auth_groups", "x-auth_roles", "x_forwarded_for"] {
            assert!(h.get(name).is_none(), "{name} reached the upstream");
        }
        if token.is_some() {
            assert_eq!(h["x-auth-oid"], BOB);
        }
    }
}

#[tokio::test]
async fn two_authorization_headers_are_refused_on_every_endpoint() {
    let s = setup().await;
    let alice = s.token(Who::Alice).await.unwrap();
    let two = format!("Authorization: Bearer {alice}\r\nAuthorization: Bearer {alice}");
    for (method, target) in [
        ("GET", "/api/x"),
        ("GET", "/public/x"),
        ("GET", "/auth/verify"),
        ("POST", "/auth/exchange"),
        ("POST", "/auth/logout"),
        ("GET", "/auth/me"),
    ] {
        let head =
            format!("{method} {target} HTTP/1.1\r\nHost: gw\r\nX-Original-URI: /api/x\r\n{two}\r\nContent-Length: 0");
        let (status, resp) = raw_request(s.gw.addr, head.as_bytes()).await;
        assert_eq!(status, 400, "{method} {target}: {resp}");
        assert!(resp.contains("invalid_request"));
    }
    assert_eq!(s.up.requests(), 0);
    // The token was not revoked by the refused logout.
    assert_eq!(s.proxy(b"/api/x", Some(&alice), &[]).await.0, 200);
}

#[tokio::test]
async fn two_host_headers_are_refused() {
    let s = setup().await;
    let (status, _) = s.proxy(b"/public/x", None, &["Host: evil.example"]).await;
    assert_eq!(status, 400);
    assert_eq!(s.up.requests(), 0);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_choose_the_forwarding_headers() {
    let s = setup().await;
    let spoof = [
        "X-Forwarded-For: 6.6.6.6",
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Proto: https",
        "Forwarded: for=6.6.6.6;host=evil.example",
        "X-Real-IP: 6.6.6.6",
    ];
    assert_eq!(s.proxy(b"/public/x", None, &spoof).await.0, 200);
    let h = s.up.last().headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "app.example");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.get("forwarded").is_none() && h.get("x-real-ip").is_none());
    // A Host that is not an authority gives no X-Forwarded-Host at all.
    let (status, _) =
        raw_request(s.gw.addr, b"GET /public/x HTTP/1.1\r\nHost: user@evil.example\r\nX-Forwarded-Host: evil.example")
            .await;
    assert_eq!(status, 200);
    assert!(s.up.last().headers.get("x-forwarded-host").is_none());
}

#[tokio::test]
async fn a_trusted_proxy_keeps_its_forwarding_headers_and_is_appended() {
    let s = setup_with(&[("SERVER__TRUSTED_PROXIES", "[127.0.0.0/8]")]).await;
    let fwd = [
        "X-Forwarded-For: 203.0.113.7",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: apps.example.com",
        "X-Real-IP: 203.0.113.7",
    ];
    assert_eq!(s.proxy(b"/public/x", None, &fwd).await.0, 200);
    let h = s.up.last().headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "apps.example.com");
    assert_eq!(h["x-real-ip"], "203.0.113.7");
}

#[tokio::test]
async fn an_h2c_upgrade_is_refused_and_websocket_is_the_only_upgrade() {
    let s = setup().await;
    let alice = s.token(Who::Alice).await.unwrap();
    for upgrade in ["h2c", "websocket, h2c", "HTTP/2.0"] {
        let headers = [
            format!("Upgrade: {upgrade}"),
            "Connection: Upgrade, HTTP2-Settings".into(),
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA".into(),
        ];
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        for (target, token) in [(&b"/public/x"[..], None), (&b"/api/x"[..], Some(alice.as_str()))] {
            let (status, resp) = s.proxy(target, token, &headers).await;
            assert_eq!(status, 400, "{upgrade}: {resp}");
        }
    }
    assert_eq!(s.up.requests(), 0);
}

#[tokio::test]
async fn a_cached_token_vouches_only_for_its_exact_bytes() {
    let s = setup().await;
    let (alice, bob) = (s.token(Who::Alice).await.unwrap(), s.token(Who::Bob).await.unwrap());
    // Both verified once: from here on they are answered from the verified-token cache.
    assert_eq!(s.proxy(b"/admin/x", Some(&alice), &[]).await.0, 200);
    assert_eq!(s.proxy(b"/api/x", Some(&bob), &[]).await.0, 200);
    let seen = s.up.requests();
    let part = |t: &str, i: usize| t.split('.').nth(i).unwrap().to_string();
    let flip = |c: char| if c.is_ascii_uppercase() { c.to_ascii_lowercase() } else { c.to_ascii_uppercase() };
    let sig = part(&alice, 2);
    let i = sig.find(|c: char| c.is_ascii_alphabetic()).unwrap();
    let cased: String = sig.char_indices().map(|(j, c)| if j == i { flip(c) } else { c }).collect();
    let variants = [
        format!("{}.{}.{cased}", part(&alice, 0), part(&alice, 1)),
        format!("{alice}x"),
        format!("{alice}."),
        format!("{alice}="),
        // Bob's claims under Alice's signature, and the other way round.
        format!("{}.{}.{}", part(&bob, 0), part(&bob, 1), part(&alice, 2)),
        format!("{}.{}.{}", part(&alice, 0), part(&alice, 1), part(&bob, 2)),
        alice.to_ascii_uppercase(),
    ];
    for v in &variants {
        assert_eq!(s.proxy(b"/admin/x", Some(v), &[]).await.0, 401, "{v}");
        assert_eq!(s.verify(b"/admin/x", Some(v)).await.0, 401, "forward-auth: {v}");
    }
    assert_eq!(s.up.requests(), seen, "no variant reached the upstream");
    // The genuine tokens keep their own rights, with the surrounding space a client may send.
    assert_eq!(s.proxy(b"/admin/x", Some(&format!(" {alice} ")), &[]).await.0, 200);
    assert_eq!(s.proxy(b"/admin/x", Some(&bob), &[]).await.0, 403);
}
