//! Real ingresses in front of the gateway (forward-auth) and an echo app, set up as README
//! shows: Traefik 3 (ForwardAuth) and Caddy 2 (`forward_auth`). What a client sends through them
//! is what an attacker can send: identity headers in any spelling, a forged `X-Forwarded-Uri`,
//! bare and case-varied paths.

use crate::support::ingress::{self, Ingress};
use crate::support::upstream::{self, Upstream};
use crate::support::*;
use entra_gateway::mock::MockEntra;

/// A catch-all public route, `/admin/` for ADMINS (alice, not bob), `/orders/` for anyone
/// signed in. The ingresses send the original URI in `X-Forwarded-Uri`.
fn routes() -> String {
    format!(
        r#"
proxy:
  forward_auth: {{ original_uri: x-forwarded-uri }}
  routes:
    - {{ path_prefix: "/", upstream: "http://127.0.0.1:9", auth: none }}
    - {{ path_prefix: "/admin/", upstream: "http://127.0.0.1:9", auth: required, allowed_groups: ["{ADMINS}"] }}
    - {{ path_prefix: "/orders/", upstream: "http://127.0.0.1:9", auth: required }}
"#
    )
}

struct Setup {
    mock: MockEntra,
    app: Upstream,
    _gw: Gateway,
    ingress: Ingress,
}

async fn setup(which: &str) -> Setup {
    let mock = mock().await;
    let app = upstream::start().await;
    let gw = GatewayBuilder::new(&mock).yaml(&routes()).start().await;
    let ingress = match which {
        "traefik" => ingress::traefik(gw.addr, app.addr).await,
        _ => ingress::caddy(gw.addr, app.addr).await,
    };
    Setup { mock, app, _gw: gw, ingress }
}

impl Setup {
    /// Signs `user` in through the ingress; the gateway's token.
    async fn login(&self, user: &str) -> String {
        let r = client()
            .post(self.ingress.url("/auth/exchange"))
            .bearer_auth(token_for(&self.mock, user))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
    }

    /// GET through the ingress with extra headers (sent exactly as named, on a raw socket).
    async fn get(&self, target: &str, token: Option<&str>, headers: &[(&str, &str)]) -> (u16, String) {
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: app.example");
        if let Some(t) = token {
            head.push_str(&format!("\r\nAuthorization: Bearer {t}"));
        }
        for (k, v) in headers {
            head.push_str(&format!("\r\n{k}: {v}"));
        }
        raw_request(self.ingress.addr(), head.as_bytes()).await
    }
}

/// Every spelling of a client's identity header an ingress passes on.
const SPOOFS: [&str; 6] =
    ["X-Auth-User-Id", "X_Auth_User_Id", "x-auth-roles", "X-Auth-Extra", "X_AUTH_GROUPS", "X-Auth_Tenant-Id"];

async fn identity_headers_hold(which: &str) {
    let s = setup(which).await;
    let alice = s.login("alice").await;
    let bob = s.login("bob").await;

    // A signed-in request gets the gateway's identity headers.
    let (status, text) = s.get("/orders/1", Some(&bob), &[]).await;
    assert_eq!(status, 200, "{text}");
    let seen = s.app.last();
    assert_eq!(seen.headers["x-auth-oid"], BOB);
    assert_eq!(seen.headers["x-auth-principal-type"], "user");

    // A client's identity header, in any spelling, never reaches the app: with or without a
    // token, on protected and public routes. The gateway refuses what the ingress passes on
    // (403; refused anyway: 401 stays 401); a spelling the ingress drops itself (Caddy drops
    // names with `_`) passes as if it had not been sent, and the app never sees it.
    for spoof in SPOOFS {
        for (target, token, want, unspoofed) in [
            ("/orders/1", Some(bob.as_str()), 403, 200),
            ("/orders/1", None, 401, 401),
            ("/index.html", None, 403, 200),
            ("/index.html", Some(alice.as_str()), 403, 200),
        ] {
            let before = s.app.requests();
            let (status, text) = s.get(target, token, &[(spoof, "victim")]).await;
            let what = format!("{which}: {spoof} on {target} (token: {})", token.is_some());
            if status == want {
                assert_eq!(s.app.requests(), before, "{what}: refused, yet the app saw it");
                if want == 403 {
                    assert!(text.contains("spoofed_identity_header"), "{text}");
                    assert!(!text.contains("victim"), "the value is never echoed: {text}");
                }
            } else {
                assert_eq!(status, unspoofed, "{what}: {text}");
                assert!(spoof.contains('_'), "{what}: only a spelling the ingress drops may pass");
                let seen = s.app.last().headers;
                assert!(!seen.values().any(|v| v == "victim"), "{what}: the app saw the spoofed value: {seen:?}");
            }
        }
    }
    let before = s.app.requests();

    // A client-sent X-Forwarded-Uri does not choose the policy: the ingress overwrites it.
    let (status, _) = s.get("/admin/settings", Some(&bob), &[("X-Forwarded-Uri", "/index.html")]).await;
    assert_eq!(status, 403, "{which}: bob is not an admin");
    let (status, _) = s.get("/admin/settings", None, &[("X-Forwarded-Uri", "/index.html")]).await;
    assert_eq!(status, 401);
    // The protected route's groups hold for its bare path and any case.
    for target in ["/admin", "/admin?x=1", "/ADMIN/settings", "/Admin"] {
        assert_eq!(s.get(target, None, &[]).await.0, 401, "{which}: {target}");
        assert_eq!(s.get(target, Some(&bob), &[]).await.0, 403, "{which}: {target}");
    }
    assert_eq!(s.app.requests(), before, "{which}: a refused request reached the app");
    assert_eq!(s.get("/admin/settings", Some(&alice), &[]).await.0, 200);
    assert_eq!(s.app.last().headers["x-auth-oid"], ALICE);
    assert_eq!(s.get("/index.html", None, &[]).await.0, 200, "the public route needs nothing");
}

#[tokio::test]
async fn through_a_real_traefik_no_client_identity_header_reaches_the_app() {
    identity_headers_hold("traefik").await;
}

#[tokio::test]
async fn through_a_real_caddy_no_client_identity_header_reaches_the_app() {
    identity_headers_hold("caddy").await;
}
