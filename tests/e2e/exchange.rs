//! End-to-end tests of `POST /auth/exchange` against the mock Entra ID + Graph, over real sockets.

use crate::support::*;
use base64::Engine;
use entra_gateway::config::SigningAlgorithm;
use entra_gateway::mock::TokenSpec;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Verifies an internal token against the gateway's published JWKS, as an upstream would.
async fn verify_with_published_jwks(gw: &Gateway, token: &str) -> Value {
    let jwks: JwkSet = client().get(gw.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("kid published");
    let mut v = Validation::new(header.alg);
    v.set_audience(&["internal-services"]);
    v.set_issuer(&["https://gateway.test"]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v).expect("verifies").claims
}

#[tokio::test]
async fn v1_and_v2_tokens_exchange_to_a_verifiable_internal_jwt_with_the_contract_claims() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    let mut ids = Vec::new();
    for version in [1u8, 2] {
        let token = mock.mint(&TokenSpec { user: Some("alice".into()), version: Some(version), ..Default::default() });
        let (status, headers, body) = exchange(&gw, &token).await;
        assert_eq!(status, 200, "v{version}: {body}");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:jwt");
        assert_eq!(body["expires_in"], 900);
        let user = &body["user"];
        ids.push(user["id"].clone());
        assert_eq!(user["oid"], ALICE);
        assert_eq!(user["tenant_id"], mock.settings().tenant_id);
        assert_eq!(user["email"], "alice@contoso.example");
        assert_eq!(user["display_name"], "Alice Jørgensen");
        assert_eq!(user["user_principal_name"], "alice@contoso.example");
        assert_eq!(user["groups"], json!([ALLOWED, ADMINS].iter().copied().collect::<std::collections::BTreeSet<_>>()));
        assert_eq!(user["roles"], json!(["admin", "reader"]));
        let claims = verify_with_published_jwks(&gw, body["access_token"].as_str().unwrap()).await;
        assert_eq!(claims["sub"], user["id"]);
        for key in [
            "iss",
            "aud",
            "sub",
            "oid",
            "tid",
            "email",
            "name",
            "preferred_username",
            "groups",
            "roles",
            "iat",
            "nbf",
            "exp",
            "jti",
        ] {
            assert!(claims.get(key).is_some(), "claim {key} missing: {claims}");
        }
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 900);
        assert_eq!(claims["oid"], ALICE);
    }
    // Both versions map to one user: identity is (tid, oid).
    assert_eq!(ids[0], ids[1]);
    // The groups claim was complete: Graph was never asked.
    assert_eq!(mock.state().group_calls(), 0);
}

#[tokio::test]
async fn the_rfc8693_form_gives_the_same_result_as_the_bearer_header() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    let token = token_for(&mock, "alice");
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", token.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
    ];
    let r = client().post(gw.url("/auth/exchange")).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user"]["oid"], ALICE);
    // An empty JSON object body is accepted with the Bearer form.
    let r = client().post(gw.url("/auth/exchange")).bearer_auth(&token).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn malformed_requests_get_400_invalid_request_and_oversized_bodies_413() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    let token = token_for(&mock, "alice");
    let c = client();
    let url = gw.url("/auth/exchange");
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no token", c.post(&url)),
        ("basic auth", c.post(&url).header("authorization", "Basic dXNlcjpwYXNz")),
        ("bearer with a body", c.post(&url).bearer_auth(&token).body("{\"x\":1}")),
        (
            "unsupported grant",
            c.post(&url).form(&[
                ("grant_type", "password"),
                ("subject_token", token.as_str()),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ]),
        ),
        (
            "unsupported token type",
            c.post(&url).form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", token.as_str()),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:saml2"),
            ]),
        ),
        (
            "missing subject_token",
            c.post(&url).form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ]),
        ),
        (
            "both forms",
            c.post(&url).bearer_auth(&token).form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", token.as_str()),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ]),
        ),
    ];
    for (name, req) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 400, "{name}");
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"], "invalid_request", "{name}");
        assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{name}");
        assert!(!text.contains(&token), "{name}: token echoed");
    }
    let r = c
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
}

#[tokio::test]
async fn a_client_still_sending_an_oversized_body_reads_the_413_not_a_connection_reset() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    let head = "POST /auth/exchange HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded";
    for _ in 0..3 {
        let (status, sent) = send_large_body(gw.addr, head, 3 << 20).await;
        assert_eq!(status, 413);
        sent.expect("the gateway read (and discarded) the rest instead of resetting the connection");
    }
}

#[tokio::test]
async fn every_bad_token_gets_401_invalid_token_without_echoing_it() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    let s = mock.settings().clone();
    let good = token_for(&mock, "alice");
    let parts: Vec<&str> = good.split('.').collect();
    let other = mock.mint(&TokenSpec { user: Some("carol".into()), ..Default::default() });
    let wrong_signature = format!("{}.{}.{}", parts[0], parts[1], other.split('.').nth(2).unwrap());
    let payload = parts[1];
    let alg_none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    // HS256 "signed" with the tenant's public key material: the classic algorithm-confusion attack.
    let jwks: Value = client()
        .get(format!("{}/{}/discovery/v2.0/keys", mock.authority_host(), s.tenant_id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public_n = jwks["keys"][0]["n"].as_str().unwrap().to_string();
    let hs256 = jsonwebtoken::encode(
        &{
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            h.kid = Some(mock.state().signing_kid());
            h
        },
        &serde_json::from_slice::<Value>(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
            .unwrap(),
        &jsonwebtoken::EncodingKey::from_secret(public_n.as_bytes()),
    )
    .unwrap();
    let spec = |f: &dyn Fn(&mut TokenSpec)| {
        let mut t = TokenSpec { user: Some("alice".into()), ..Default::default() };
        f(&mut t);
        mock.mint(&t)
    };
    let other_tenant = "99999999-9999-4999-8999-999999999999";
    let cases: Vec<(&str, String, &str)> = vec![
        ("wrong signature", wrong_signature, "signature"),
        ("alg none", alg_none, "RS256"),
        ("HS256 with the RSA public key", hs256, "RS256"),
        ("unknown kid", spec(&|t| t.kid = Some("no-such-kid".into())), "key"),
        ("wrong issuer", spec(&|t| t.iss = Some("https://evil.example/v2.0".into())), "issuer"),
        (
            "issuer of another tenant",
            spec(&|t| t.iss = Some(format!("{}/{other_tenant}/v2.0", mock.authority_host()))),
            "issuer",
        ),
        ("tenant not listed", spec(&|t| t.tid = Some(other_tenant.into())), "tenant"),
        ("wrong audience", spec(&|t| t.aud = Some("api://someone-else".into())), "audience"),
        ("expired", spec(&|t| t.expires_in = Some(-3600)), "expired"),
        ("not yet valid", spec(&|t| t.not_before_in = Some(3600)), "not valid yet"),
        ("malformed", "not-a-jwt".into(), "well-formed"),
        ("three garbage parts", "a.b.c".into(), "well-formed"),
        ("graph token", spec(&|t| t.aud = Some("https://graph.microsoft.com".into())), "API scope"),
    ];
    for (name, token, description) in cases {
        let r = client().post(gw.url("/auth/exchange")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 401, "{name}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"invalid_token\"", "{name}");
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"], "invalid_token", "{name}");
        let d = body["error_description"].as_str().unwrap();
        assert!(d.contains(description), "{name}: {d}");
        assert!(!text.contains(&token), "{name}: token echoed");
    }
    // Within the clock skew an expired token still passes (default skew 60s).
    let (status, _, _) = exchange(&gw, &spec(&|t| t.expires_in = Some(-30))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_unknown_kid_triggers_one_refetch_that_finds_the_rotated_key_and_no_more() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    assert_eq!(exchange(&gw, &token_for(&mock, "alice")).await.0, 200);
    assert_eq!(mock.state().calls("jwks"), 1);
    mock.state().rotate_signing_key();
    let (status, _, body) = exchange(&gw, &token_for(&mock, "alice")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.state().calls("jwks"), 2, "one refetch on the unknown kid");
    // Another unknown kid within 5 minutes: refused without hammering Entra.
    mock.state().rotate_signing_key();
    let (status, _, _) = exchange(&gw, &token_for(&mock, "alice")).await;
    assert_eq!(status, 401);
    assert_eq!(mock.state().calls("jwks"), 2);
    let metrics = client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("entra_gateway_jwks_refresh_total{result=\"success\"} 2"), "{metrics}");
}

#[tokio::test]
async fn overage_asks_graph_in_app_mode_with_check_member_groups_including_nested_groups() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    let (status, _, body) = exchange(&gw, &overage_token_for(&mock, "bob")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["groups"], json!([ALLOWED]));
    assert_eq!(body["user"]["roles"], json!(["reader"]));
    assert_eq!(body["user"]["display_name"], "Bob Builder");
    assert_eq!(mock.state().calls("checkMemberGroups"), 1);
    assert_eq!(mock.state().calls("token_app"), 1);
    // hasgroups (implicit-flow overage) and a missing claim both go to Graph too; the app token
    // and the answer for bob are reused.
    let has = mock.mint(&TokenSpec { user: Some("bob".into()), hasgroups: true, ..Default::default() });
    assert_eq!(exchange(&gw, &has).await.0, 200);
    assert_eq!(mock.state().calls("checkMemberGroups"), 1, "second exchange within group_ttl: no Graph call");
    let absent = mock.mint(&TokenSpec { oid: Some(DAVE.into()), ..Default::default() });
    assert_eq!(exchange(&gw, &absent).await.0, 200);
    assert_eq!(mock.state().calls("checkMemberGroups"), 2);
    assert_eq!(mock.state().calls("token_app"), 1, "app token cached");
}

#[tokio::test]
async fn obo_mode_reads_groups_and_profile_from_me_on_behalf_of_the_user() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).set("ENTRA__GRAPH_MODE", "obo").start().await;
    let (status, _, body) = exchange(&gw, &overage_token_for(&mock, "bob")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["groups"], json!([ALLOWED]));
    assert_eq!(body["user"]["email"], "bob@contoso.example");
    assert_eq!(mock.state().calls("token_obo"), 1, "one OBO token for groups and profile");
    assert_eq!(mock.state().calls("token_app"), 0);
}

#[tokio::test]
async fn transitive_member_of_is_followed_across_pages() {
    let mock = mock().await;
    mock.state().set_page_size(3);
    let gw = GatewayBuilder::new(&mock).set("ENTRA__GROUP_LOOKUP", "transitive_member_of").start().await;
    // dave is in 8 groups; ALLOWED sorts last, on the third page.
    let (status, _, body) = exchange(&gw, &overage_token_for(&mock, "dave")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["groups"], json!([ALLOWED]));
    assert_eq!(mock.state().calls("transitiveMemberOf"), 3);
}

#[tokio::test]
async fn a_failed_page_fails_closed_with_503_never_as_no_groups() {
    let mock = mock().await;
    mock.state().set_page_size(3);
    mock.state().fail_page(Some(1));
    let gw = GatewayBuilder::new(&mock).set("ENTRA__GROUP_LOOKUP", "transitive_member_of").start().await;
    let (status, headers, body) = exchange(&gw, &overage_token_for(&mock, "dave")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn a_user_in_no_allowed_group_gets_403_via_claim_and_via_graph() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    let (status, _, body) = exchange(&gw, &token_for(&mock, "carol")).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "access_denied");
    let (status, _, _) = exchange(&gw, &overage_token_for(&mock, "carol")).await;
    assert_eq!(status, 403);
    // The negative answer is cached too (negative_ttl).
    assert_eq!(exchange(&gw, &overage_token_for(&mock, "carol")).await.0, 403);
    assert_eq!(mock.state().calls("checkMemberGroups"), 1);
    // A denied user gets no record: the profile (read before the record is written) never was.
    assert_eq!(mock.state().calls("profile"), 0);
}

#[tokio::test]
async fn graph_throttling_is_waited_out_and_graph_down_is_503_never_200() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    mock.state().throttle_graph(1, 1);
    let (status, _, body) = exchange(&gw, &overage_token_for(&mock, "bob")).await;
    assert_eq!(status, 200, "429 then success: {body}");
    assert_eq!(mock.state().calls("checkMemberGroups"), 2);

    // A Retry-After longer than the gateway will wait: 503 passing Graph's Retry-After on.
    mock.state().throttle_graph(5, 120);
    let (status, headers, _) = exchange(&gw, &overage_token_for(&mock, "dave")).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "120");

    mock.state().throttle_graph(0, 0);
    mock.state().set_graph_status(Some(503));
    let (status, headers, body) = exchange(&gw, &overage_token_for(&mock, "dave")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(headers.contains_key("retry-after"));
    // Graph comes back: the failure was not cached.
    mock.state().set_graph_status(None);
    assert_eq!(exchange(&gw, &overage_token_for(&mock, "dave")).await.0, 200);
}

#[tokio::test]
async fn a_user_graph_no_longer_knows_is_denied_not_told_to_retry() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    let deleted = mock.mint(&TokenSpec {
        oid: Some("de1e7ed0-0000-4000-8000-000000000099".into()),
        overage: true,
        ..Default::default()
    });
    let (status, headers, body) = exchange(&gw, &deleted).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "access_denied");
    assert!(body["error_description"].as_str().unwrap().contains("no longer exists"));
    assert!(!headers.contains_key("retry-after"));
}

#[tokio::test]
async fn graph_unreachable_and_a_wrong_client_secret_fail_closed() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).set("ENTRA__GRAPH_URL", "http://127.0.0.1:9/graph/v1.0").start().await;
    let (status, _, _) = exchange(&gw, &overage_token_for(&mock, "bob")).await;
    assert_eq!(status, 503);
    let mut builder = GatewayBuilder::new(&mock);
    let wrong = builder.dir_path().join("wrong-secret");
    std::fs::write(&wrong, "not-the-secret").unwrap();
    builder = builder.set("ENTRA__CLIENT_SECRET_FILE", wrong.display().to_string());
    let gw = builder.start().await;
    let (status, _, body) = exchange(&gw, &overage_token_for(&mock, "bob")).await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.to_string().contains("not-the-secret"));
}

#[tokio::test]
async fn claims_mode_never_calls_graph_and_refuses_overage_with_a_reason() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).set("ENTRA__GRAPH_MODE", "claims").start().await;
    let (status, _, body) = exchange(&gw, &token_for(&mock, "alice")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["display_name"], "Alice Jørgensen", "profile from the token");
    let (status, _, body) = exchange(&gw, &overage_token_for(&mock, "bob")).await;
    assert_eq!(status, 403);
    assert!(body["error_description"].as_str().unwrap().contains("overage"));
    assert_eq!(mock.state().group_calls() + mock.state().calls("profile") + mock.state().calls("token_app"), 0);
}

#[tokio::test]
async fn first_exchange_creates_the_user_a_changed_name_updates_it_and_an_unchanged_one_does_not() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).set("CACHE__PROFILE_TTL", "0s").start().await;
    let tid = mock.settings().tenant_id.clone();
    // The record as `/auth/me` shows it, with the token of that sign-in.
    let record = |body: Value| {
        let token = body["access_token"].as_str().unwrap().to_string();
        let url = gw.url("/auth/me");
        async move { client().get(url).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let (_, _, first) = exchange(&gw, &overage_token_for(&mock, "bob")).await;
    let created = record(first.clone()).await;
    assert_eq!(first["user"]["id"], created["id"]);
    assert_eq!(created["tenant_id"], tid);
    assert_eq!(created["created_at"], created["updated_at"]);

    let (_, _, again) = exchange(&gw, &overage_token_for(&mock, "bob")).await;
    let unchanged = record(again.clone()).await;
    assert_eq!(again["user"]["id"], created["id"], "stable internal id");
    assert_eq!(unchanged["updated_at"], created["updated_at"], "no change, no update");

    mock.state().set_display_name(BOB, "Robert Builder");
    let (_, _, renamed) = exchange(&gw, &overage_token_for(&mock, "bob")).await;
    assert_eq!(renamed["user"]["display_name"], "Robert Builder");
    let updated = record(renamed).await;
    assert_eq!(updated["display_name"], "Robert Builder");
    assert_eq!(updated["created_at"], created["created_at"]);
    assert_eq!(updated["id"], created["id"]);
    assert_eq!(mock.state().calls("profile"), 3);
}

#[tokio::test]
async fn entra_keys_unavailable_is_503_and_not_ready() {
    let mock = mock().await;
    mock.state().set_jwks_status(Some(500));
    let gw = GatewayBuilder::new(&mock).start().await;
    let (status, headers, body) = exchange(&gw, &token_for(&mock, "alice")).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let ready: Value = r.json().await.unwrap();
    let failing = ready["failing"].as_array().unwrap();
    assert!(failing.iter().any(|c| c.as_str().unwrap().starts_with("jwks:")), "{ready}");
    let jwks = ready["checks"].as_array().unwrap().iter().find(|c| c["name"].as_str().unwrap().starts_with("jwks:"));
    let detail = jwks.unwrap()["detail"].as_str().unwrap();
    assert!(detail.starts_with("not fetched yet; last error at "), "readiness says why: {detail}");
    assert!(detail.contains("HTTP 500"), "{detail}");
    // An Entra that cannot be reached at all: readiness names the connection failure.
    let unreachable = GatewayBuilder::new(&mock).set("ENTRA__AUTHORITY_HOST", "http://127.0.0.1:9").start().await;
    assert_eq!(exchange(&unreachable, &token_for(&mock, "alice")).await.0, 503);
    let ready: Value = client().get(unreachable.admin_url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert!(ready.to_string().contains("connect failed"), "the cause, not just a failure: {ready}");
    // Entra comes back: the next exchange fetches the keys and readiness follows.
    mock.state().set_jwks_status(None);
    assert_eq!(exchange(&gw, &token_for(&mock, "alice")).await.0, 200);
    assert_eq!(client().get(gw.admin_url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(client().get(gw.admin_url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn internal_key_rotation_publishes_both_keys_and_old_tokens_still_verify() {
    let mock = mock().await;
    let old_pem = entra_gateway::keys::generate_pem(SigningAlgorithm::ES256).unwrap();
    let old = GatewayBuilder::new(&mock).key("k1", SigningAlgorithm::ES256, Some(old_pem.clone())).start().await;
    let (_, _, body) = exchange(&old, &token_for(&mock, "alice")).await;
    let old_token = body["access_token"].as_str().unwrap().to_string();
    let rotated = GatewayBuilder::new(&mock)
        .key("k2", SigningAlgorithm::EdDSA, None)
        .key("k1", SigningAlgorithm::ES256, Some(old_pem))
        .start()
        .await;
    let jwks: Value = client().get(rotated.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, vec!["k2", "k1"]);
    assert!(jwks["keys"].as_array().unwrap().iter().all(|k| k.get("d").is_none()), "no private parts");
    let claims = verify_with_published_jwks(&rotated, &old_token).await;
    assert_eq!(claims["oid"], ALICE);
    let r = client().get(rotated.url("/auth/verify/any")).bearer_auth(&old_token).send().await.unwrap();
    assert_ne!(r.status(), 401, "the rotated gateway still accepts the old key's token");
    let (_, _, body) = exchange(&rotated, &token_for(&mock, "alice")).await;
    let fresh = body["access_token"].as_str().unwrap();
    assert_eq!(jsonwebtoken::decode_header(fresh).unwrap().kid.as_deref(), Some("k2"));
    verify_with_published_jwks(&rotated, fresh).await;
    let discovery: Value =
        client().get(rotated.url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(discovery["issuer"], "https://gateway.test");
    assert_eq!(discovery["jwks_uri"], "https://gateway.test/.well-known/jwks.json");
    assert_eq!(discovery["token_endpoint"], "https://gateway.test/auth/exchange");
}

#[tokio::test]
async fn concurrent_exchanges_of_one_new_user_make_one_graph_group_call() {
    let mock = mock().await;
    let gw = std::sync::Arc::new(
        GatewayBuilder::new(&mock).set("SERVER__RATE_LIMIT__EXCHANGE_PER_USER", "null").start().await,
    );
    let token = overage_token_for(&mock, "bob");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (gw, token) = (gw.clone(), token.clone());
        tasks.push(tokio::spawn(async move { exchange(&gw, &token).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(mock.state().calls("checkMemberGroups"), 1);
    assert_eq!(mock.state().calls("profile"), 1);
}
