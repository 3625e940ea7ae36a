//! Microsoft's own rules, against the mock Entra ID + Graph: token types, app callers,
//! signing-key issuers, guest tenants, `Retry-After` forms, and sign-ins during a key rotation.

use crate::support::upstream::{self, Upstream};
use crate::support::*;
use entra_gateway::mock::{MOCK_PARTNER_TENANT, MockEntra, MockUser, TokenSpec};
use serde_json::{Value, json};

/// The client id of a daemon calling through the gateway, and its service principal.
const DAEMON: &str = "d0d0d0d0-0000-4000-8000-00000000d0d0";
const DAEMON_SP: &str = "5e5e5e5e-0000-4000-8000-0000000005e5";
const REPORTER: &str = "d0d0d0d0-0000-4000-8000-00000000d0d1";
const STRANGER: &str = "d0d0d0d0-0000-4000-8000-00000000d0d2";
/// A user of the partner tenant.
const PAT: &str = "9a700000-0000-4000-8000-000000000006";

/// A client-credentials token of `client` (v2: `azp`; v1: `appid`) with app roles.
fn app_token(mock: &MockEntra, client: &str, roles: &[&str], version: u8) -> String {
    let client_claim = if version == 1 { "appid" } else { "azp" };
    let mut extra = serde_json::Map::new();
    extra.insert("scp".into(), Value::Null);
    extra.insert("sub".into(), json!(DAEMON_SP));
    extra.insert(client_claim.into(), json!(client));
    if !roles.is_empty() {
        extra.insert("roles".into(), json!(roles));
    }
    mock.mint(&TokenSpec {
        oid: Some(DAEMON_SP.into()),
        version: Some(version),
        extra: Some(extra),
        ..Default::default()
    })
}

async fn exchange_json(gw: &Gateway, token: &str) -> (u16, Value) {
    let (status, _, body) = exchange(gw, token).await;
    (status, body)
}

#[tokio::test]
async fn app_only_id_and_scopeless_tokens_are_refused_saying_what_to_request() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    let with = |extra: Value, oid: Option<&str>| {
        let extra = extra.as_object().unwrap().clone();
        mock.mint(&TokenSpec {
            user: Some("alice".into()),
            oid: oid.map(str::to_string),
            extra: Some(extra),
            ..Default::default()
        })
    };
    let cases = [
        ("client credentials (roles, no scp)", app_token(&mock, DAEMON, &["Orders.Read"], 2), "app-only"),
        ("client credentials, v1", app_token(&mock, DAEMON, &["Orders.Read"], 1), "app-only"),
        ("client credentials without roles", app_token(&mock, DAEMON, &[], 2), "app-only"),
        ("idtyp=app", with(json!({"idtyp": "app", "azp": DAEMON}), None), "app-only"),
        (
            "an ID token for the bare client id",
            with(json!({"nonce": "n-123", "scp": null, "aud": mock.settings().client_id}), None),
            "ID token",
        ),
        ("neither scp nor roles", with(json!({"scp": null}), None), "neither scp nor roles"),
    ];
    for (name, token, says) in cases {
        let r = client().post(gw.url("/auth/exchange")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 401, "{name}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token", "{name}");
        let d = body["error_description"].as_str().unwrap();
        assert!(d.contains(says), "{name}: {d}");
        assert!(d.contains(&format!("api://{}", mock.settings().client_id)), "{name} says what to request: {d}");
        assert!(!d.contains(&token), "{name}: the token is echoed");
    }
}

#[tokio::test]
async fn required_scopes_refuse_a_token_without_one_of_them() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).set("ENTRA__REQUIRED_SCOPES", "[access_as_user]").start().await;
    let other_scope = mock.mint(&TokenSpec {
        user: Some("alice".into()),
        extra: Some(json!({"scp": "Files.Read"}).as_object().unwrap().clone()),
        ..Default::default()
    });
    let (status, body) = exchange_json(&gw, &other_scope).await;
    assert_eq!(status, 401);
    assert!(body["error_description"].as_str().unwrap().contains("access_as_user"), "{body}");
    assert_eq!(exchange_json(&gw, &token_for(&mock, "alice")).await.0, 200);
}

fn app_routes(up: &Upstream) -> String {
    let u = up.url();
    format!(
        r#"
proxy:
  forward_auth: {{ original_uri: x-original-uri }}
  routes:
    - {{ path_prefix: "/svc/", upstream: "{u}", auth: required, allow_apps: true }}
    - {{ path_prefix: "/api/", upstream: "{u}", auth: required }}
"#
    )
}

#[tokio::test]
async fn app_callers_work_through_the_proxy_and_forward_auth_with_their_own_headers() {
    let mock = mock().await;
    let up = upstream::start().await;
    let apps = format!(r#"{{clients: {{"{DAEMON}": [svc]}}, app_roles: {{Reports.Read: [reports]}}}}"#);
    let gw = GatewayBuilder::new(&mock).yaml(&app_routes(&up)).set("AUTHORIZATION__APPS", apps).start().await;

    let (status, body) = exchange_json(&gw, &app_token(&mock, DAEMON, &["Orders.Read"], 2)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("user").is_none(), "no user for an app: {body}");
    assert_eq!(body["app"]["client_id"], DAEMON);
    assert_eq!(body["app"]["roles"], json!(["svc"]));
    let daemon = body["access_token"].as_str().unwrap().to_string();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&daemon).unwrap();
    assert_eq!(claims["idtyp"], "app");
    assert_eq!(claims["azp"], DAEMON);
    assert_eq!(claims["sub"], body["app"]["id"]);

    // Through the proxy: its own identity headers, on routes that allow apps only.
    let r = client().get(gw.url("/svc/jobs")).bearer_auth(&daemon).header("X-Auth-User-Id", "victim").send().await;
    assert_eq!(r.unwrap().status(), 200);
    let h = up.last().headers;
    assert_eq!(h["x-auth-principal-type"], "app");
    assert_eq!(h["x-auth-client-id"], DAEMON);
    assert_eq!(h["x-auth-oid"], DAEMON_SP);
    assert_eq!(h["x-auth-roles"], "svc");
    for absent in ["x-auth-user-id", "x-auth-email", "x-auth-name"] {
        assert!(h.get(absent).is_none(), "{absent} for an app");
    }
    let before = up.requests();
    let r = client().get(gw.url("/api/orders")).bearer_auth(&daemon).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(up.requests(), before);

    // Through forward-auth.
    let verify = |token: &str, original: &str| {
        client().get(gw.url("/auth/verify")).bearer_auth(token).header("X-Original-URI", original).send()
    };
    let r = verify(&daemon, "/svc/jobs").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-principal-type"], "app");
    assert_eq!(r.headers()["x-auth-client-id"], DAEMON);
    assert_eq!(verify(&daemon, "/api/orders").await.unwrap().status(), 403);
    assert_eq!(verify(&daemon, "/nowhere").await.unwrap().status(), 403);

    // Users are users on both routes.
    let (_, body) = exchange_json(&gw, &token_for(&mock, "alice")).await;
    let alice = body["access_token"].as_str().unwrap().to_string();
    let r = client().get(gw.url("/svc/jobs")).bearer_auth(&alice).header("X-Auth-Principal-Type", "app").send().await;
    assert_eq!(r.unwrap().status(), 200);
    assert_eq!(up.last().headers["x-auth-principal-type"], "user", "a spoofed principal type is stripped");
    assert!(up.last().headers.get("x-auth-client-id").is_none());

    // App roles map too; an app listed nowhere is denied; an app has no record or photo.
    let (status, body) = exchange_json(&gw, &app_token(&mock, REPORTER, &["Reports.Read"], 1)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app"]["roles"], json!(["reports"]));
    let (status, body) = exchange_json(&gw, &app_token(&mock, STRANGER, &["Orders.Read"], 2)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("authorization.apps"));
    assert_eq!(client().get(gw.url("/auth/me")).bearer_auth(&daemon).send().await.unwrap().status(), 404);
    assert_eq!(client().get(gw.url("/auth/me/photo")).bearer_auth(&daemon).send().await.unwrap().status(), 404);
}

/// An app token of the partner tenant (listed in `entra.tenants` for its users).
fn partner_app_token(mock: &MockEntra, client: &str, roles: &[&str]) -> String {
    let mut extra = serde_json::Map::new();
    extra.insert("scp".into(), Value::Null);
    extra.insert("sub".into(), json!(DAEMON_SP));
    extra.insert("azp".into(), json!(client));
    extra.insert("roles".into(), json!(roles));
    mock.mint(&TokenSpec {
        oid: Some(DAEMON_SP.into()),
        tid: Some(MOCK_PARTNER_TENANT.into()),
        extra: Some(extra),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_partner_tenants_admin_cannot_grant_our_app_roles_to_their_apps() {
    let mock = mock().await;
    let up = upstream::start().await;
    let apps = format!(r#"{{clients: {{"{DAEMON}": [svc]}}, app_roles: {{Reports.Read: [reports]}}}}"#);
    let start = |tenants_for_apps: Option<String>| {
        let mut b = GatewayBuilder::new(&mock)
            .yaml(&app_routes(&up))
            .set("ENTRA__TENANTS", two_tenants(&mock))
            .set("AUTHORIZATION__APPS", apps.clone());
        if let Some(t) = tenants_for_apps {
            b = b.set("AUTHORIZATION__APPS__TENANTS", t);
        }
        b.start()
    };
    let gw = start(None).await;
    // The partner's admin assigned our app role Reports.Read (and our client id's role) to
    // their own app: by default, rules are for the home tenant only.
    for token in [partner_app_token(&mock, STRANGER, &["Reports.Read"]), partner_app_token(&mock, DAEMON, &[])] {
        let (status, body) = exchange_json(&gw, &token).await;
        assert_eq!(status, 403, "{body}");
        assert!(body["error_description"].as_str().unwrap().contains("authorization.apps.tenants"), "{body}");
    }
    let (status, body) = exchange_json(&gw, &app_token(&mock, REPORTER, &["Reports.Read"], 2)).await;
    assert_eq!(status, 200, "the home tenant's grant holds: {body}");
    gw.stop().await;
    // Listed explicitly, the partner tenant's apps count.
    let gw = start(Some(two_tenants(&mock))).await;
    let (status, body) = exchange_json(&gw, &partner_app_token(&mock, STRANGER, &["Reports.Read"])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app"]["roles"], json!(["reports"]));
}

fn two_tenants(mock: &MockEntra) -> String {
    format!("[\"{}\", \"{MOCK_PARTNER_TENANT}\"]", mock.settings().tenant_id)
}

fn add_pat(mock: &MockEntra) {
    mock.state().add_user(MockUser {
        login: "pat".into(),
        oid: PAT.into(),
        display_name: Some("Pat Partner".into()),
        mail: Some("pat@partner.example".into()),
        user_principal_name: Some("pat@partner.example".into()),
        groups: vec![ALLOWED.into()],
        tenant: Some(MOCK_PARTNER_TENANT.into()),
        ..Default::default()
    });
}

#[tokio::test]
async fn a_key_published_for_one_tenant_cannot_sign_for_another() {
    let mock = mock().await;
    add_pat(&mock);
    let gw = GatewayBuilder::new(&mock).set("ENTRA__TENANTS", two_tenants(&mock)).start().await;
    let partner_kid = mock.state().publish_tenant_key(MOCK_PARTNER_TENANT);
    for version in [1, 2] {
        let forged = mock.mint(&TokenSpec {
            user: Some("alice".into()),
            version: Some(version),
            signing_kid: Some(partner_kid.clone()),
            ..Default::default()
        });
        let (status, body) = exchange_json(&gw, &forged).await;
        assert_eq!(status, 401, "v{version}: {body}");
        assert!(body["error_description"].as_str().unwrap().contains("another tenant"), "{body}");
    }
    // The partner's own users may use its key.
    let own = mock.mint(&TokenSpec { user: Some("pat".into()), signing_kid: Some(partner_kid), ..Default::default() });
    let (status, body) = exchange_json(&gw, &own).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["tenant_id"], MOCK_PARTNER_TENANT);
}

#[tokio::test]
async fn overage_users_of_a_second_tenant_are_looked_up_in_their_own_tenant_in_app_and_obo_modes() {
    for mode in ["app", "obo"] {
        let mock = mock().await;
        add_pat(&mock);
        let gw = GatewayBuilder::new(&mock)
            .set("ENTRA__TENANTS", two_tenants(&mock))
            .set("ENTRA__GRAPH_MODE", mode)
            .start()
            .await;
        let (status, body) = exchange_json(&gw, &overage_token_for(&mock, "pat")).await;
        assert_eq!(status, 200, "{mode}: {body}");
        assert_eq!(body["user"]["display_name"], "Pat Partner");
        assert_eq!(body["user"]["groups"], json!([ALLOWED]));
        let (status, body) = exchange_json(&gw, &overage_token_for(&mock, "bob")).await;
        assert_eq!(status, 200, "{mode}: {body}");
        let home = &mock.settings().tenant_id;
        let calls = |t: &str| mock.state().calls(&format!("token_{mode}:{t}"));
        assert_eq!((calls(MOCK_PARTNER_TENANT), calls(home)), (1, 1), "{mode}: one token at each user's own tenant");
        if mode == "app" {
            // The app token of each tenant is cached: a second partner user needs no new one.
            let mut carl = mock_user("carl", "ca410000-0000-4000-8000-000000000007");
            carl.tenant = Some(MOCK_PARTNER_TENANT.into());
            mock.state().add_user(carl);
            assert_eq!(exchange_json(&gw, &overage_token_for(&mock, "carl")).await.0, 200);
            assert_eq!(calls(MOCK_PARTNER_TENANT), 1);
        }
    }
}

fn mock_user(login: &str, oid: &str) -> MockUser {
    MockUser {
        login: login.into(),
        oid: oid.into(),
        display_name: Some(login.into()),
        groups: vec![ALLOWED.into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn graph_retry_after_as_an_http_date_or_a_fraction_is_honoured() {
    let mock = mock().await;
    // graph_max_retry_wait is 2s in the test base config: a longer Retry-After is not waited
    // out but passed on; one within it is waited out.
    let gw = GatewayBuilder::new(&mock).set("CACHE__NEGATIVE_TTL", "0s").start().await;
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(5));
    for (value, min_retry) in [(date.as_str(), 4), ("2.5", 3)] {
        mock.state().throttle_graph_with(1, value);
        let (status, headers, body) = exchange(&gw, &overage_token_for(&mock, "bob")).await;
        assert_eq!(status, 503, "Retry-After {value}: {body}");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= min_retry, "Retry-After {value} became {retry}");
    }
    let before = mock.state().calls("checkMemberGroups");
    mock.state().throttle_graph_with(1, "1.5");
    let (status, _, body) = exchange(&gw, &overage_token_for(&mock, "dave")).await;
    assert_eq!(status, 200, "1.5 s (2 s rounded up) is within the wait: {body}");
    assert_eq!(mock.state().calls("checkMemberGroups"), before + 2, "one throttled call, one retry");
}

#[tokio::test]
async fn twenty_concurrent_sign_ins_right_after_a_key_rotation_all_succeed_every_time() {
    for round in 0..5 {
        let mock = mock().await;
        let gw = GatewayBuilder::new(&mock).set("SERVER__RATE_LIMIT__EXCHANGE_PER_USER", "null").start().await;
        assert_eq!(exchange_json(&gw, &token_for(&mock, "alice")).await.0, 200);
        mock.state().rotate_signing_key();
        let tokens: Vec<String> = (0..20).map(|_| token_for(&mock, "alice")).collect();
        let results = futures_util::future::join_all(tokens.iter().map(|t| exchange_json(&gw, t))).await;
        for (i, (status, body)) in results.iter().enumerate() {
            assert_eq!(*status, 200, "round {round}, sign-in {i}: {body}");
        }
        assert_eq!(mock.state().calls("jwks"), 2, "round {round}: one refetch for all twenty");
    }
}
