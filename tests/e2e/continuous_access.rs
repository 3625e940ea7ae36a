//! Access follows Entra: two replicas on a real Redis and the mock Graph's delta queries. Each
//! Entra action (disable, revoke sessions, delete, remove from the group) is enforced on both
//! replicas within `poll_interval` + 2 s, measured; one replica polls at a time; a 410 and a
//! `syncStateNotFound` start a full round; a 429 is waited out; the operator's kill switch
//! reaches both replicas within a second.

use std::time::{Duration, Instant};

use crate::support::redis::RedisServer;
use crate::support::*;
use entra_gateway::config::SigningAlgorithm;
use entra_gateway::mock::delta::ExpiredAs;
use entra_gateway::mock::{MockEntra, MockUser, TokenSpec};
use serde_json::Value;

/// What the issue allows: `poll_interval` + 2 s.
const WITHIN: Duration = Duration::from_secs(3);

const ERIN: &str = "e4140000-0000-4000-8000-000000000005";

async fn replica(mock: &MockEntra, redis: Option<&RedisServer>) -> Gateway {
    let mut b = GatewayBuilder::new(mock)
        .key("k1", SigningAlgorithm::ES256, Some(deployment_key()))
        .set("ENTRA__CONTINUOUS_ACCESS__ENABLED", "true")
        .set("ENTRA__CONTINUOUS_ACCESS__POLL_INTERVAL", "1s")
        .set("PROXY__FORWARD_AUTH__ORIGINAL_URI", "path")
        .set("SERVER__RATE_LIMIT__EXCHANGE_PER_USER", "null");
    if let Some(r) = redis {
        b = b.set("CACHE__REDIS_URL", r.url());
    }
    b.start().await
}

fn add_erin(mock: &MockEntra) {
    mock.state().add_user(MockUser {
        login: "erin".into(),
        oid: ERIN.into(),
        display_name: Some("Erin Example".into()),
        groups: vec![ALLOWED.into()],
        ..Default::default()
    });
}

async fn login(gw: &Gateway, mock: &MockEntra, user: &str) -> String {
    let (status, _, body) = exchange(gw, &token_for(mock, user)).await;
    assert_eq!(status, 200, "{user}: {body}");
    body["access_token"].as_str().unwrap().to_string()
}

async fn verify(gw: &Gateway, token: &str) -> u16 {
    client().get(gw.url("/auth/verify/app")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

async fn synced(gws: &[&Gateway]) {
    for gw in gws {
        until("the directory is synced", || async {
            check_detail(&readyz(gw).await, "directory_sync").starts_with("in sync")
        })
        .await;
    }
}

/// Measures from the Entra action until `token` is refused on both replicas.
async fn refused_on_both(what: &str, a: &Gateway, b: &Gateway, token: &str) -> Duration {
    let started = Instant::now();
    until(what, || async { verify(a, token).await == 401 && verify(b, token).await == 401 }).await;
    let took = started.elapsed();
    eprintln!("continuous access: {what}: refused on both replicas after {} ms", took.as_millis());
    assert!(took <= WITHIN, "{what}: {} ms > poll_interval + 2 s", took.as_millis());
    took
}

#[tokio::test]
async fn every_entra_action_is_enforced_on_both_replicas_within_the_poll_interval_plus_two_seconds() {
    let mock = mock().await;
    add_erin(&mock);
    let redis = RedisServer::start().await;
    let (a, b) = (replica(&mock, Some(&redis)).await, replica(&mock, Some(&redis)).await);
    synced(&[&a, &b]).await;
    let tokens: Vec<String> = {
        let mut v = Vec::new();
        for user in ["alice", "bob", "dave", "erin"] {
            v.push(login(&a, &mock, user).await);
        }
        v
    };
    for t in &tokens {
        assert_eq!(verify(&b, t).await, 200);
    }
    let tid = mock.settings().tenant_id.clone();

    // Disabled: every token refused, and the next exchange too, though its groups claim lists
    // the allowed group.
    let stale_alice = token_for(&mock, "alice");
    mock.state().disable_user(ALICE);
    refused_on_both("alice disabled", &a, &b, &tokens[0]).await;
    let (status, _, body) = exchange(&b, &stale_alice).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("disabled"), "{body}");

    // Sessions revoked: tokens from before refused; the old Entra token too, with a claims
    // challenge when the client is CAE-capable; a fresh sign-in works.
    let stale_bob = token_for(&mock, "bob");
    let cae_bob = mock.mint(&TokenSpec {
        user: Some("bob".into()),
        extra: Some(serde_json::from_value(serde_json::json!({"xms_cc": ["CP1"]})).unwrap()),
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_millis(1100)).await; // a revocation after those tokens' iat second
    let revoked_at = mock.state().revoke_sessions(BOB);
    refused_on_both("bob's sessions revoked", &a, &b, &tokens[1]).await;
    assert_eq!(exchange(&a, &stale_bob).await.0, 401);
    let (status, headers, body) = exchange(&a, &cae_bob).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "insufficient_claims", "{body}");
    let challenge = headers["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.starts_with("Bearer realm=\"\", error=\"insufficient_claims\", claims=\""), "{challenge}");
    use base64::Engine;
    let claims = base64::engine::general_purpose::STANDARD.decode(body["claims"].as_str().unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&claims).unwrap();
    assert_eq!(claims["access_token"]["nbf"]["essential"], true);
    assert_eq!(claims["access_token"]["nbf"]["value"], revoked_at.to_string());
    tokio::time::sleep(Duration::from_millis(1100)).await; // a sign-in in a later second
    let fresh = login(&b, &mock, "bob").await;
    assert_eq!(verify(&a, &fresh).await, 200, "signed in again after the revocation");

    // Removed from the allowed group (directly): refused; the claim still lists the group.
    let stale_dave = token_for(&mock, "dave");
    mock.state().remove_membership(DAVE, ALLOWED);
    refused_on_both("dave removed from the allowed group", &a, &b, &tokens[2]).await;
    assert_eq!(exchange(&a, &stale_dave).await.0, 403);

    // Deleted.
    mock.state().delete_user(ERIN, "changed");
    refused_on_both("erin deleted", &a, &b, &tokens[3]).await;

    // Re-enabled and added back: allowed again at the next exchange; older tokens stay refused.
    mock.state().enable_user(ALICE);
    mock.state().add_membership(DAVE, ALLOWED);
    until("alice is allowed again", || async { exchange(&a, &token_for(&mock, "alice")).await.0 == 200 }).await;
    until("dave is allowed again", || async { exchange(&b, &token_for(&mock, "dave")).await.0 == 200 }).await;
    assert_eq!(verify(&b, &tokens[0]).await, 401, "a token from before the disable stays refused");
    let alice = login(&b, &mock, "alice").await;
    assert_eq!(verify(&a, &alice).await, 200);

    // One replica polls at a time.
    let polled = |gw: &Gateway| {
        let gw = gw.admin_url("/metrics");
        async move {
            let text = client().get(gw).send().await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("entra_gateway_graph_requests_total{endpoint=\"users_delta\",status=\"200\"} ")
                })
                .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
        }
    };
    let (pa, pb) = (polled(&a).await, polled(&b).await);
    assert!((pa == 0.0) != (pb == 0.0), "exactly one replica polled: {pa} and {pb}");
    for (endpoint, reason) in [("disabled", "disabled"), ("removed", "removed"), ("deleted", "deleted")] {
        assert!(metric(&a, &format!("entra_gateway_directory_sync_changes_total{{kind=\"{endpoint}\"}}")).await >= 1.0);
        assert!(metric(&b, &format!("entra_gateway_access_revoked_total{{reason=\"{reason}\"}}")).await >= 1.0);
    }
    assert!(metric(&a, "entra_gateway_directory_sync_last_success_timestamp_seconds").await > 0.0);
    let _ = tid;
}

#[tokio::test]
async fn the_poller_hands_over_when_it_stops_and_graph_calls_per_poll_are_bounded() {
    let mock = mock().await;
    let redis = RedisServer::start().await;
    let a = replica(&mock, Some(&redis)).await;
    synced(&[&a]).await;
    let b = replica(&mock, Some(&redis)).await;
    synced(&[&b]).await;
    // Steady polls: one users-delta request and one groups-delta request (the allowed group and
    // the one nested in it, in one filter) per poll.
    let (u0, g0) = (mock.state().calls("users_delta"), mock.state().calls("groups_delta"));
    until("three more polls", || async { mock.state().calls("users_delta") >= u0 + 3 }).await;
    let (u1, g1) = (mock.state().calls("users_delta"), mock.state().calls("groups_delta"));
    let polls = u1 - u0;
    assert!(g1 - g0 <= polls + 1, "groups-delta requests per poll: {} over {polls} polls", g1 - g0);
    let bob = login(&b, &mock, "bob").await;
    // The poller stops; the other replica takes the lease within a few seconds and enforces.
    a.stop().await;
    let before = mock.state().calls("users_delta");
    let took = until("b polls", || async { mock.state().calls("users_delta") > before + 1 }).await;
    eprintln!("continuous access: lease taken over after {} ms", took.as_millis());
    mock.state().disable_user(BOB);
    until("b enforces", || async { verify(&b, &bob).await == 401 }).await;
}

#[tokio::test]
async fn an_expired_delta_link_starts_a_full_round_and_a_429_is_waited_out() {
    let mock = mock().await;
    add_erin(&mock);
    let gw = replica(&mock, None).await;
    synced(&[&gw]).await;
    let erin = login(&gw, &mock, "erin").await;
    let bob = login(&gw, &mock, "bob").await;

    // 410 Gone: a full round, then changes are still followed.
    mock.state().expire_delta_tokens(ExpiredAs::Gone);
    let errors = metric(&gw, "entra_gateway_directory_sync_errors_total").await;
    until("the 410 was seen", || async { metric(&gw, "entra_gateway_directory_sync_errors_total").await > errors })
        .await;
    mock.state().remove_membership(ERIN, ALLOWED);
    until("erin refused after the resync", || async { verify(&gw, &erin).await == 401 }).await;
    // 400 syncStateNotFound: the same.
    mock.state().expire_delta_tokens(ExpiredAs::SyncStateNotFound);
    let errors = metric(&gw, "entra_gateway_directory_sync_errors_total").await;
    until("the 400 was seen", || async { metric(&gw, "entra_gateway_directory_sync_errors_total").await > errors })
        .await;
    // The nested group's member: removed from the nested group, refused.
    mock.state().remove_membership(BOB, NESTED_CHILD);
    until("bob refused after the second resync", || async { verify(&gw, &bob).await == 401 }).await;

    // 429 with Retry-After: 2 (seconds): the next request waits that long.
    let start = mock.state().call_times("users_delta").len();
    mock.state().throttle_graph(1, 2);
    until("a throttled poll and the next one", || async { mock.state().call_times("users_delta").len() >= start + 2 })
        .await;
    let times = mock.state().call_times("users_delta");
    let gap = times[start + 1] - times[start];
    eprintln!("continuous access: after a 429 with Retry-After: 2 the next poll came {} ms later", gap.as_millis());
    assert!(gap >= Duration::from_millis(1900), "Retry-After not honoured: {} ms", gap.as_millis());
    let ready = readyz(&gw).await;
    assert_eq!(ready["status"], "ready", "the lag is a detail, never a failure: {ready}");
}

#[tokio::test]
async fn the_kill_switch_refuses_a_user_on_both_replicas_within_a_second() {
    let mock = mock().await;
    let redis = RedisServer::start().await;
    // Without continuous access: the kill switch needs only the shared store.
    let start = || {
        GatewayBuilder::new(&mock)
            .key("k1", SigningAlgorithm::ES256, Some(deployment_key()))
            .set("CACHE__REDIS_URL", redis.url())
            .set("PROXY__FORWARD_AUTH__ORIGINAL_URI", "path")
            .start()
    };
    let (a, b) = (start().await, start().await);
    // Both feeds live before the kill (a replica that subscribes later resyncs anyway).
    until("the feeds are live", || async {
        metric(&a, "entra_gateway_revocation_feed_up").await == 1.0
            && metric(&b, "entra_gateway_revocation_feed_up").await == 1.0
    })
    .await;
    let alice = login(&a, &mock, "alice").await;
    let bob = login(&a, &mock, "bob").await;
    let tid = mock.settings().tenant_id.clone();
    let held = token_for(&mock, "alice"); // the Entra token she holds when she is fired
    let started = Instant::now();
    let r = client().post(a.admin_url(&format!("/admin/users/{tid}/{ALICE}/revoke"))).send().await.unwrap();
    assert_eq!(r.status(), 204);
    until("alice refused on b", || async { verify(&b, &alice).await == 401 }).await;
    let took = started.elapsed();
    eprintln!("kill switch: refused on the other replica after {} ms", took.as_millis());
    assert!(took <= Duration::from_secs(1), "{} ms", took.as_millis());
    assert_eq!(verify(&a, &alice).await, 401);
    assert_eq!(verify(&b, &bob).await, 200, "only alice");
    assert_eq!(client().get(b.url("/auth/me")).bearer_auth(&alice).send().await.unwrap().status(), 401);
    // The Entra token she holds is from before: refused; a sign-in after it works.
    assert_eq!(exchange(&b, &held).await.0, 401);
    tokio::time::sleep(Duration::from_millis(1100)).await; // a sign-in in a later second
    let again = login(&b, &mock, "alice").await;
    assert_eq!(verify(&a, &again).await, 200);
    // A replica started later knows it too.
    let c = start().await;
    until("c resynced", || async { verify(&c, &alice).await == 401 }).await;
    assert_eq!(metric(&a, "entra_gateway_access_revoked_total{reason=\"kill_switch\"}").await, 1.0);
    // The CLI form, as `kubectl exec` runs it.
    let args = ["revoke-user", "--tenant", &tid, "--oid", BOB, "--admin-url", &format!("http://{}", b.admin)]
        .map(str::to_string);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-gateway")).args(args).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"));
    until("bob refused on a", || async { verify(&a, &bob).await == 401 }).await;
    // Bad input: a clear error, nothing revoked.
    let r = client().post(a.admin_url("/admin/users/not-a-guid/x/revoke")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = client().get(a.admin_url(&format!("/admin/users/{tid}/{ALICE}/revoke"))).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn with_an_admin_token_the_kill_switch_needs_it() {
    let mock = mock().await;
    let b = GatewayBuilder::new(&mock);
    let file = b.dir_path().join("admin-token");
    std::fs::write(&file, "a-long-admin-token-0123456789\n").unwrap();
    let gw = b.set("SERVER__ADMIN_TOKEN_FILE", file.display().to_string()).start().await;
    let tid = mock.settings().tenant_id.clone();
    let url = gw.admin_url(&format!("/admin/users/{tid}/{ALICE}/revoke"));
    assert_eq!(client().post(&url).bearer_auth("wrong").send().await.unwrap().status(), 403);
    assert_eq!(client().post(&url).bearer_auth("a-long-admin-token-0123456789").send().await.unwrap().status(), 204);
}

fn step_up_routes(up: &crate::support::upstream::Upstream) -> String {
    format!(
        r#"
proxy:
  forward_auth: {{ original_uri: x-original-uri }}
  routes:
    - {{ path_prefix: "/payments/", upstream: "{}", auth: required, auth_context: c1 }}
    - {{ path_prefix: "/api/", upstream: "{}", auth: required }}
"#,
        up.url(),
        up.url()
    )
}

#[tokio::test]
async fn a_route_with_an_auth_context_answers_a_claims_challenge_until_the_token_carries_it() {
    let mock = mock().await;
    let up = crate::support::upstream::start().await;
    let gw = GatewayBuilder::new(&mock)
        .yaml(&step_up_routes(&up))
        .set("SERVER__CORS__ALLOWED_ORIGINS", "[\"http://app.example\"]")
        .start()
        .await;
    let plain = login(&gw, &mock, "alice").await;
    assert_eq!(client().get(gw.url("/api/x")).bearer_auth(&plain).send().await.unwrap().status(), 200);
    let before = up.requests();
    let r = client().get(gw.url("/payments/1")).bearer_auth(&plain).header("Origin", "http://app.example").send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
    let expose = r.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(expose.contains("www-authenticate"), "{expose}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_claims");
    use base64::Engine;
    let claims = base64::engine::general_purpose::STANDARD.decode(body["claims"].as_str().unwrap()).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&claims).unwrap(),
        serde_json::json!({"access_token": {"acrs": {"essential": true, "value": "c1"}}})
    );
    assert_eq!(
        challenge,
        format!("Bearer realm=\"\", error=\"insufficient_claims\", claims=\"{}\"", body["claims"].as_str().unwrap())
    );
    // Forward-auth answers the same.
    let r =
        client().get(gw.url("/auth/verify")).bearer_auth(&plain).header("X-Original-URI", "/payments/1").send().await;
    assert_eq!(r.unwrap().status(), 401);
    assert_eq!(up.requests(), before);
    // A token that satisfied c1 (the mock's authorize honours `claims`): acrs is carried over.
    let stepped = mock.mint(&TokenSpec {
        user: Some("alice".into()),
        extra: Some(serde_json::from_value(serde_json::json!({"acrs": ["c1"]})).unwrap()),
        ..Default::default()
    });
    let (status, _, body) = exchange(&gw, &stepped).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token).unwrap();
    assert_eq!(claims["acrs"], serde_json::json!(["c1"]));
    assert_eq!(client().get(gw.url("/payments/1")).bearer_auth(token).send().await.unwrap().status(), 200);
}
