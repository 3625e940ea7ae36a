//! End-to-end tests of the reverse proxy, forward-auth, logout and `/auth/me`: a real gateway in
//! front of a real upstream server, over loopback sockets.

use crate::support::upstream::{self, Upstream};
use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn routes_yaml(up: &Upstream) -> String {
    let u = up.url();
    format!(
        r#"
proxy:
  routes:
    - {{ path_prefix: "/api/", upstream: "{u}", auth: required, timeout: 5s }}
    - {{ path_prefix: "/public/", upstream: "{u}", auth: none }}
    - {{ path_prefix: "/admin/", upstream: "{u}", auth: required, allowed_groups: ["{ADMINS}"], name: admin }}
    - {{ path_prefix: "/strip/", upstream: "{u}/base/", auth: required, strip_prefix: true }}
    - {{ path_prefix: "/slow/", upstream: "{u}", auth: required, timeout: 1s }}
    - {{ path_prefix: "/down/", upstream: "http://127.0.0.1:9", auth: none }}
"#
    )
}

async fn setup() -> (entra_gateway::mock::MockEntra, Upstream, Gateway) {
    let mock = mock().await;
    let up = upstream::start().await;
    let gw = GatewayBuilder::new(&mock)
        .yaml(&routes_yaml(&up))
        .set("PROXY__FORWARD_AUTH__ORIGINAL_URI", "x-original-uri")
        .start()
        .await;
    (mock, up, gw)
}

/// Signs `login` in and returns the gateway's token.
async fn login(gw: &Gateway, mock: &entra_gateway::mock::MockEntra, user: &str) -> String {
    let (status, _, body) = exchange(gw, &overage_token_for(mock, user)).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = client().get(gw.url(path));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream_on_any_route() {
    let (mock, up, gw) = setup().await;
    let token = login(&gw, &mock, "alice").await;
    for (path, auth) in [("/api/x", Some(token.as_str())), ("/public/x", None)] {
        let mut r = client()
            .get(gw.url(path))
            .header("X-Auth-User-Id", "attacker")
            .header("x-auth-groups", "admins")
            .header("X-AUTH-ROLES", "admin")
            .header("X-Auth-Something-Else", "1")
            .header("Connection", "X-Drop-Me")
            .header("X-Drop-Me", "secret");
        if let Some(t) = auth {
            r = r.bearer_auth(t);
        }
        assert_eq!(r.send().await.unwrap().status(), 200, "{path}");
        let h = up.last().headers;
        assert!(h.get("x-auth-something-else").is_none(), "{path}");
        assert!(h.get("x-drop-me").is_none(), "{path}: header named in Connection forwarded");
        match auth {
            Some(_) => {
                assert_eq!(h["x-auth-oid"], ALICE, "{path}");
                assert_ne!(h["x-auth-user-id"], "attacker");
                assert_eq!(h["x-auth-roles"], "admin,reader");
                assert_eq!(h.get_all("x-auth-roles").iter().count(), 1);
            }
            None => {
                for name in ["x-auth-user-id", "x-auth-groups", "x-auth-roles"] {
                    assert!(h.get(name).is_none(), "{path}: {name} reached a public route");
                }
            }
        }
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], gw.addr.to_string());
    }
}

/// A custom identity prefix: each worker thread keeps its own copies of the names (and its own
/// verified-token cache); on both, the upstream gets each identity header once, the gateway's,
/// whatever spellings of it (cased, `_`, doubled, the default `X-Auth-` ones) the client sent.
#[tokio::test]
async fn a_custom_identity_prefix_is_sent_once_and_never_spoofed_on_either_worker() {
    let mock = mock().await;
    let up = upstream::start().await;
    let gw = GatewayBuilder::new(&mock)
        .yaml(&format!("{}  identity_header_prefix: \"X-Corp-Id-\"\n", routes_yaml(&up)))
        .set("SERVER__WORKERS", "2")
        .start()
        .await;
    let token = login(&gw, &mock, "alice").await;
    // Two connections open at once: the acceptor gives them to different workers.
    let (a, b) = (client(), client());
    let mut slots = Vec::new();
    let mut user_ids = Vec::new();
    for c in [&a, &b, &a, &b] {
        let r = c
            .get(gw.url("/api/x"))
            .bearer_auth(&token)
            .header("X-Corp-Id-User-Id", "attacker")
            .header("x_corp_id_groups", "admins")
            .header("X-CORP-ID-ROLES", "admin")
            .header("X-Corp-Id-Oid", "attacker-1")
            .header("X-Corp-Id-Oid", "attacker-2")
            .header("X-Auth-User-Id", "attacker")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        // `<12 hex digits>-<16 hex digits>`: the second part starts with the worker's slot.
        slots.push(id[13..15].to_string());
        let h = up.last().headers;
        for (name, want) in [("x-corp-id-oid", ALICE), ("x-corp-id-roles", "admin,reader")] {
            let values: Vec<_> = h.get_all(name).iter().collect();
            assert_eq!(values, [want], "{name}");
        }
        let ids: Vec<_> = h.get_all("x-corp-id-user-id").iter().collect();
        assert_eq!(ids.len(), 1);
        assert_ne!(ids[0], "attacker");
        user_ids.push(ids[0].clone());
        assert_ne!(h["x-corp-id-groups"], "admins");
        for spoofed in ["x_corp_id_groups", "x-auth-user-id"] {
            assert!(h.get(spoofed).is_none(), "{spoofed} reached the upstream");
        }
    }
    assert_ne!(slots[0], slots[1], "the two connections were served by different workers: {slots:?}");
    assert_eq!(slots[0], slots[2], "a connection stays on its worker: {slots:?}");
    assert!(user_ids.iter().all(|u| *u == user_ids[0]), "every worker sends the same user id");
}

#[tokio::test]
async fn refused_requests_get_401_or_403_and_never_reach_the_upstream() {
    let (mock, up, gw) = setup().await;
    let bob = login(&gw, &mock, "bob").await;
    let key_pem = std::fs::read(gw.dir.path().join("k1.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&key_pem).unwrap();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&bob).unwrap();
    let resign = |change: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        change(&mut c);
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &c, &key).unwrap()
    };
    let now = entra_gateway::clock::unix_now();
    let other_gw = GatewayBuilder::new(&mock).start().await;
    let foreign = login(&other_gw, &mock, "bob").await;
    let revoked = login(&gw, &mock, "bob").await;
    let r = client().post(gw.url("/auth/logout")).bearer_auth(&revoked).send().await.unwrap();
    assert_eq!(r.status(), 204);

    let before = up.requests();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("garbage token", Some("garbage".into())),
        ("an Entra token", Some(token_for(&mock, "bob"))),
        ("expired", Some(resign(&|c| c["exp"] = (now - 120).into()))),
        ("wrong audience", Some(resign(&|c| c["aud"] = "someone-else".into()))),
        ("another issuer, same key", Some(resign(&|c| c["iss"] = "https://evil.test".into()))),
        ("another gateway's token", Some(foreign)),
        ("revoked", Some(revoked)),
    ];
    for (name, token) in cases {
        let r = get(&gw, "/api/x", token.as_deref()).await;
        assert_eq!(r.status(), 401, "{name}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token", "{name}");
    }
    // bob is not in the admin route's group.
    let r = get(&gw, "/admin/x", Some(&bob)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "access_denied");
    assert_eq!(up.requests(), before, "the upstream saw a refused request");
    // The valid token still works, and alice gets into /admin/.
    assert_eq!(get(&gw, "/api/x", Some(&bob)).await.status(), 200);
    let alice = login(&gw, &mock, "alice").await;
    assert_eq!(get(&gw, "/admin/x", Some(&alice)).await.status(), 200);
}

#[tokio::test]
async fn an_upload_refused_before_forwarding_is_answered_not_reset_and_never_reaches_the_upstream() {
    let (mock, up, gw) = setup().await;
    let bob = login(&gw, &mock, "bob").await;
    let cases = [
        ("POST /api/upload HTTP/1.1\r\nHost: gw".to_string(), 401),
        (format!("PUT /admin/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {bob}"), 403),
        ("POST /public/%2e%2e/api/upload HTTP/1.1\r\nHost: gw".to_string(), 400),
    ];
    for (head, want) in cases {
        let (status, sent) = send_large_body(gw.addr, &head, 3 << 20).await;
        assert_eq!(status, want, "{}", head.lines().next().unwrap());
        sent.expect("the client could finish sending and read the answer");
    }
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn paths_and_queries_arrive_unchanged_and_strip_prefix_works() {
    let (mock, up, gw) = setup().await;
    let token = login(&gw, &mock, "alice").await;
    let path = "/api/files/a%3Ab%20c/d.txt?q=%C3%A9t%C3%A9&x=1+2&empty=&u=a%2Fb";
    assert_eq!(get(&gw, path, Some(&token)).await.status(), 200);
    assert_eq!(up.last().uri, path);
    let host: Vec<_> = up.last().headers.get_all("host").iter().cloned().collect();
    assert_eq!(host, [up.url().trim_start_matches("http://")], "one Host: the upstream's own authority");
    assert_eq!(get(&gw, "/strip/inner/x?y=1", Some(&token)).await.status(), 200);
    assert_eq!(up.last().uri, "/base/inner/x?y=1");
    // Dot segments (plain or encoded) and encoded slashes are refused before routing can be
    // fooled (tests/trust_boundary.rs has every other spelling).
    let before = up.requests();
    for p in ["/api/../admin/x", "/api/%2e%2e/admin/x", "/api/./x", "/api/..%2Fadmin/x", "/api/a%2Fb"] {
        assert_eq!(raw_get_status(gw.addr, p, &token).await, 400, "{p}");
    }
    assert_eq!(up.requests(), before);
    let r = get(&gw, "/nowhere", Some(&token)).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
}

#[tokio::test]
async fn non_ascii_identity_values_arrive_percent_encoded() {
    let (mock, up, gw) = setup().await;
    let token = login(&gw, &mock, "alice").await;
    get(&gw, "/api/x", Some(&token)).await;
    let h = up.last().headers;
    assert_eq!(h["x-auth-name"], "Alice J%C3%B8rgensen");
    assert_eq!(h["x-auth-email"], "alice@contoso.example");
    assert_eq!(h["x-auth-tenant-id"], mock.settings().tenant_id.as_str());
    let groups: Vec<&str> = h["x-auth-groups"].to_str().unwrap().split(',').collect();
    assert!(groups.contains(&ALLOWED) && groups.contains(&ADMINS));
}

/// Verifies `token` as an upstream does: the gateway's JWKS, its issuer, and `aud`.
async fn upstream_verifies(gw: &Gateway, token: &str, audience: &str) -> Result<Value, String> {
    let jwks: jsonwebtoken::jwk::JwkSet =
        client().get(gw.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let jwk = jwks.find(header.kid.as_deref().unwrap_or_default()).ok_or("unknown kid")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_issuer(&["https://gateway.test"]);
    v.set_audience(&[audience]);
    jsonwebtoken::decode::<Value>(token, &key, &v).map(|d| d.claims).map_err(|e| e.to_string())
}

#[tokio::test]
async fn an_upstream_gets_an_assertion_for_its_own_audience_which_the_gateway_refuses_as_a_session() {
    let mock = mock().await;
    let (orders, billing) = (upstream::start().await, upstream::start().await);
    let routes = format!(
        r#"
proxy:
  routes:
    - {{ path_prefix: "/orders/", upstream: "{}", auth: required }}
    - {{ path_prefix: "/billing/", upstream: "{}", auth: required, audience: "api://billing" }}
    - {{ path_prefix: "/legacy/", upstream: "{}", auth: required, forward_token: session }}
    - {{ path_prefix: "/quiet/", upstream: "{}", auth: required, forward_token: false }}
"#,
        orders.url(),
        billing.url(),
        orders.url(),
        orders.url()
    );
    let gw = GatewayBuilder::new(&mock).yaml(&routes).start().await;
    let session = login(&gw, &mock, "alice").await;
    let bearer = |up: &Upstream| {
        let v = up.last().headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
        v.map(|v| v.strip_prefix("Bearer ").unwrap().to_string())
    };

    assert_eq!(get(&gw, "/orders/1", Some(&session)).await.status(), 200);
    let seen = bearer(&orders).expect("an assertion");
    assert_ne!(seen, session, "the session token itself never reaches the upstream");
    let claims = upstream_verifies(&gw, &seen, &orders.url()).await.expect("the upstream verifies it with the JWKS");
    let session_claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&session).unwrap();
    for same in ["iss", "sub", "oid", "tid", "groups", "roles", "exp"] {
        assert_eq!(claims[same], session_claims[same], "{same}");
    }
    assert_eq!(claims["aud"], orders.url().as_str(), "the upstream's origin by default");
    // Kept with the session by the worker thread that verified it (each worker has its own
    // verified-token cache): two requests on one connection are served by one worker.
    let keep_alive = client();
    for n in 2..4 {
        let r = keep_alive.get(gw.url(&format!("/orders/{n}"))).bearer_auth(&session).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let kept = bearer(&orders).unwrap();
    assert_eq!(upstream_verifies(&gw, &kept, &orders.url()).await.unwrap()["sub"], session_claims["sub"]);
    let r = keep_alive.get(gw.url("/orders/4")).bearer_auth(&session).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(bearer(&orders).unwrap(), kept, "kept with the session: minted once per route (and worker)");

    // The upstream replays what it received: refused by the gateway on every route, and by
    // another upstream that checks aud.
    let before = (orders.requests(), billing.requests());
    for path in ["/orders/1", "/billing/1", "/legacy/1"] {
        assert_eq!(get(&gw, path, Some(&seen)).await.status(), 401, "{path}");
    }
    assert_eq!((orders.requests(), billing.requests()), before);
    assert!(upstream_verifies(&gw, &seen, "api://billing").await.is_err());
    assert_eq!(get(&gw, "/billing/1", Some(&session)).await.status(), 200);
    let billing_token = bearer(&billing).unwrap();
    assert_eq!(upstream_verifies(&gw, &billing_token, "api://billing").await.unwrap()["aud"], "api://billing");

    // session: the caller's own token (replayable, documented); false: nothing.
    assert_eq!(get(&gw, "/legacy/1", Some(&session)).await.status(), 200);
    assert_eq!(bearer(&orders).unwrap(), session);
    assert_eq!(get(&gw, "/quiet/1", Some(&session)).await.status(), 200);
    assert!(bearer(&orders).is_none());
}

#[tokio::test]
async fn large_uploads_and_downloads_stream_through_and_chunks_arrive_one_by_one() {
    let (mock, up, gw) = setup().await;
    let token = login(&gw, &mock, "alice").await;
    const SIZE: usize = 20 * 1024 * 1024;
    let r = client().post(gw.url("/api/upload")).bearer_auth(&token).body(vec![b'u'; SIZE]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), SIZE.to_string());
    assert_eq!(up.last().method, "POST");
    let r = get(&gw, &format!("/api/download?size={SIZE}"), Some(&token)).await;
    assert_eq!(r.bytes().await.unwrap().len(), SIZE);

    // The upstream sends the next chunk only after the test has read the previous one through
    // the gateway: a buffering proxy would deadlock here (bounded by the client timeout).
    let mut r = get(&gw, "/api/chunks", Some(&token)).await;
    let mut seen = String::new();
    for i in 0..3 {
        let chunk = r.chunk().await.unwrap().expect("a chunk");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
        assert!(seen.ends_with(&format!("chunk-{i};")), "{seen}");
        up.state.release_chunk.notify_one();
    }
}

#[tokio::test]
async fn a_websocket_echo_works_through_the_gateway() {
    let (mock, _up, gw) = setup().await;
    let token = login(&gw, &mock, "alice").await;
    let mut req = format!("ws://{}/api/ws", gw.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("handshake through the gateway");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello through the gateway")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello through the gateway");
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().as_ref(), &[1u8, 2, 3]);
    // Without a token there is no upgrade.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/api/ws", gw.addr)).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test]
async fn upstream_down_is_502_and_a_stalled_upstream_is_504() {
    let (mock, up, gw) = setup().await;
    let token = login(&gw, &mock, "alice").await;
    let r = get(&gw, "/down/x", None).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_gateway");
    let r = get(&gw, "/slow/stall", Some(&token)).await;
    assert_eq!(r.status(), 504);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "gateway_timeout");
    up.state.unstall.notify_waiters();
    let metrics = client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("entra_gateway_proxy_requests_total{route=\"/slow/\",status=\"504\"} 1"), "{metrics}");
    assert!(metrics.contains("entra_gateway_proxy_requests_total{route=\"/down/\",status=\"502\"} 1"), "{metrics}");
}

#[tokio::test]
async fn forward_auth_verify_answers_with_identity_headers_and_applies_route_groups() {
    let (mock, up, gw) = setup().await;
    let alice = login(&gw, &mock, "alice").await;
    let bob = login(&gw, &mock, "bob").await;
    let verify = |token: Option<&str>, original: Option<&str>, head: bool| {
        let mut r = if head { client().head(gw.url("/auth/verify")) } else { client().get(gw.url("/auth/verify")) };
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(o) = original {
            r = r.header("X-Original-URI", o);
        }
        r.send()
    };
    let r = verify(Some(&alice), Some("/api/orders?x=1"), false).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-oid"], ALICE);
    assert_eq!(r.headers()["x-auth-name"], "Alice J%C3%B8rgensen");
    assert_eq!(verify(Some(&alice), Some("/api/x"), true).await.unwrap().status(), 200);
    assert_eq!(verify(Some(&alice), None, false).await.unwrap().status(), 400, "no original URI: no fallback");
    assert_eq!(verify(None, Some("/api/x"), false).await.unwrap().status(), 401);
    assert_eq!(verify(Some("junk"), Some("/api/x"), false).await.unwrap().status(), 401);
    assert_eq!(verify(Some(&bob), Some("/admin/panel"), false).await.unwrap().status(), 403);
    assert_eq!(verify(Some(&alice), Some("/admin/panel"), false).await.unwrap().status(), 200);
    assert_eq!(verify(None, Some("/public/page"), false).await.unwrap().status(), 200);
    assert_eq!(verify(Some(&bob), Some("/api/x"), false).await.unwrap().status(), 200);
    let r = client().post(gw.url("/auth/logout")).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(verify(Some(&bob), Some("/api/x"), false).await.unwrap().status(), 401);
    assert_eq!(get(&gw, "/api/x", Some(&bob)).await.status(), 401);
    // Logging out twice is harmless.
    assert_eq!(client().post(gw.url("/auth/logout")).bearer_auth(&bob).send().await.unwrap().status(), 204);
    assert_eq!(up.requests(), 0, "forward-auth never forwards");
}

#[tokio::test]
async fn me_shows_the_callers_record_and_photo_comes_from_graph() {
    let mock = mock().await;
    let up = upstream::start().await;
    let gw = GatewayBuilder::new(&mock).yaml(&routes_yaml(&up)).start().await;
    let token = login(&gw, &mock, "bob").await;
    let r = get(&gw, "/auth/me", Some(&token)).await;
    assert_eq!(r.status(), 200);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["oid"], BOB);
    assert_eq!(me["display_name"], "Bob Builder");
    assert_eq!(me["groups"], serde_json::json!([ALLOWED]));
    for k in ["created_at", "updated_at", "last_login_at", "id", "tenant_id", "email", "user_principal_name", "roles"] {
        assert!(me.get(k).is_some(), "{k}");
    }
    assert_eq!(get(&gw, "/auth/me", None).await.status(), 401);

    let r = get(&gw, "/auth/me/photo", Some(&token)).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    let mut user = mock_user_with_photo();
    user.oid = ALICE.into();
    mock.state().add_user(user);
    let alice = login(&gw, &mock, "alice").await;
    for _ in 0..2 {
        let r = get(&gw, "/auth/me/photo", Some(&alice)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "image/png");
        assert_eq!(r.bytes().await.unwrap().as_ref(), b"\x89PNG fake");
    }
    assert_eq!(mock.state().calls("photo"), 2, "one for bob (none), one for alice; the second read is cached");
}

fn mock_user_with_photo() -> entra_gateway::mock::MockUser {
    entra_gateway::mock::MockUser {
        login: "alice".into(),
        display_name: Some("Alice Jørgensen".into()),
        mail: Some("alice@contoso.example".into()),
        user_principal_name: Some("alice@contoso.example".into()),
        groups: vec![ALLOWED.into(), ADMINS.into()],
        photo: Some(("image/png".into(), bytes::Bytes::from_static(b"\x89PNG fake"))),
        ..Default::default()
    }
}

#[tokio::test]
async fn gateway_memory_stays_bounded_while_20_mib_stream_each_way() {
    let mock = mock().await;
    let up = upstream::start().await;
    let (gw, _, _dir) = GatewayBuilder::new(&mock).yaml(&routes_yaml(&up)).set("LOGGING__FORMAT", "json").spawn();
    let (status, _, body) = {
        let r = client()
            .post(gw.url("/auth/exchange"))
            .bearer_auth(overage_token_for(&mock, "alice"))
            .send()
            .await
            .unwrap();
        (r.status(), (), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    let token = body["access_token"].as_str().unwrap().to_string();
    // Warm up the proxy path, then measure the peak around the big transfers.
    client().post(gw.url("/api/upload")).bearer_auth(&token).body(vec![b'w'; 1 << 20]).send().await.unwrap();
    let before = gw.peak_rss_kib();
    const SIZE: usize = 20 * 1024 * 1024;
    let r = client().post(gw.url("/api/upload")).bearer_auth(&token).body(vec![b'u'; SIZE]).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), SIZE.to_string());
    let mut r = client().get(gw.url(&format!("/api/download?size={SIZE}"))).bearer_auth(&token).send().await.unwrap();
    let mut n = 0;
    while let Some(chunk) = r.chunk().await.unwrap() {
        n += chunk.len();
    }
    assert_eq!(n, SIZE);
    let grown_kib = gw.peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS before {before} KiB, growth while streaming 2 x 20 MiB: {grown_kib} KiB");
    assert!(grown_kib < 8 * 1024, "peak RSS grew by {grown_kib} KiB while streaming 2 x 20 MiB");
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_before_reaching_the_upstream() {
    let (_mock, up, gw) = setup().await;
    let r = client().get(gw.url("/public/x")).header("x-padding", "a".repeat(100 * 1024)).send().await;
    match r {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    assert_eq!(up.requests(), 0);
    // The gateway still serves afterwards.
    assert_eq!(get(&gw, "/public/x", None).await.status(), 200);
}

#[tokio::test]
async fn slow_request_heads_and_idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).set("SERVER__HEADER_READ_TIMEOUT", "1s").start().await;
    // A client that never finishes its request head (slowloris).
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the gateway kept a half-sent request open");
    assert!(!String::from_utf8_lossy(&buf).contains(" 200 "), "{}", String::from_utf8_lossy(&buf));
    // A keep-alive connection that goes idle after one request.
    let mut idle = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = vec![0u8; 4096];
    let n = idle.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle keep-alive connection stayed open");
}

/// Decodes an `X-MS-CLIENT-PRINCIPAL` header: (claim type, value) pairs and the whole JSON.
fn principal(h: &http::HeaderMap) -> (Vec<(String, String)>, Value) {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.decode(h["x-ms-client-principal"].as_bytes()).unwrap();
    let json: Value = serde_json::from_slice(&raw).unwrap();
    let claims = json["claims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["typ"].as_str().unwrap().to_string(), c["val"].as_str().unwrap().to_string()))
        .collect();
    (claims, json)
}

#[tokio::test]
async fn the_easy_auth_profile_sends_app_services_headers_and_client_copies_never_pass() {
    let mock = mock().await;
    let up = upstream::start().await;
    let start = |profile: &str| {
        GatewayBuilder::new(&mock)
            .yaml(&routes_yaml(&up))
            .set("PROXY__IDENTITY_HEADERS", profile)
            .set("PROXY__FORWARD_AUTH__ORIGINAL_URI", "x-original-uri")
            .start()
    };
    let gw = start("easy-auth").await;
    let token = login(&gw, &mock, "alice").await;
    for (path, auth) in [("/api/x", Some(token.as_str())), ("/public/x", None)] {
        let mut r = client()
            .get(gw.url(path))
            .header("X-MS-CLIENT-PRINCIPAL", "ZXZpbA==")
            .header("X_MS_CLIENT_PRINCIPAL_ID", "victim")
            .header("X-MS-TOKEN-AAD-ACCESS-TOKEN", "stolen");
        if let Some(t) = auth {
            r = r.bearer_auth(t);
        }
        assert_eq!(r.send().await.unwrap().status(), 200);
        let h = up.last().headers;
        assert!(!h.keys().any(|k| k.as_str().starts_with("x-auth-")), "no X-Auth-* in this profile: {h:?}");
        assert!(!h.values().any(|v| v == "victim" || v == "stolen" || v == "ZXZpbA=="), "{h:?}");
        if auth.is_some() {
            assert_eq!(h["x-ms-client-principal-id"], ALICE);
            assert_eq!(h["x-ms-client-principal-name"], "alice@contoso.example");
            assert_eq!(h["x-ms-client-principal-idp"], "aad");
            let (claims, json) = principal(&h);
            assert_eq!(json["auth_typ"], "aad");
            assert_eq!(json["role_typ"], "http://schemas.microsoft.com/ws/2008/06/identity/claims/role");
            let oid = "http://schemas.microsoft.com/identity/claims/objectidentifier";
            assert!(claims.contains(&(oid.to_string(), ALICE.to_string())), "{claims:?}");
            assert!(claims.iter().any(|(t, v)| t == "name" && v == "Alice Jørgensen"), "{claims:?}");
            assert!(claims.iter().any(|(t, v)| t.ends_with("/role") && v == "admin"), "{claims:?}");
        } else {
            assert!(h.get("x-ms-client-principal").is_none(), "an open route: no principal");
        }
    }
    // Forward-auth refuses a check that carries one of them.
    let r = client()
        .get(gw.url("/auth/verify"))
        .bearer_auth(&token)
        .header("X-Original-URI", "/api/x")
        .header("x-ms-client-principal-name", "victim")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("x-ms-client-principal-name"));
    gw.stop().await;
    // `both`: the two sets.
    let gw = start("both").await;
    let token = login(&gw, &mock, "alice").await;
    assert_eq!(get(&gw, "/api/x", Some(&token)).await.status(), 200);
    let h = up.last().headers;
    assert_eq!(h["x-auth-oid"], ALICE);
    assert_eq!(h["x-ms-client-principal-id"], ALICE);
}
