//! Shared state in Redis: several gateway replicas against one real `redis-server`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis::RedisServer;
use crate::support::*;
use entra_gateway::config::SigningAlgorithm;
use entra_gateway::mock::MockEntra;
use serde_json::Value;

/// Replicas of one deployment share Redis and the signing key (one key per test process).
async fn replica(mock: &MockEntra, redis: &RedisServer) -> Gateway {
    GatewayBuilder::new(mock)
        .key("k1", SigningAlgorithm::ES256, Some(deployment_key()))
        .set("CACHE__REDIS_URL", redis.url())
        .set("PROXY__FORWARD_AUTH__ORIGINAL_URI", "path")
        .start()
        .await
}

/// Signs `user` in (group overage, so Graph is needed) and returns the gateway token.
async fn login(gw: &Gateway, mock: &MockEntra, user: &str) -> String {
    let (status, _, body) = exchange(gw, &overage_token_for(mock, user)).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

async fn keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let mut c = redis.connection().await;
    let mut keys: Vec<String> = ::redis::cmd("KEYS").arg(pattern).query_async(&mut c).await.unwrap();
    keys.sort();
    keys
}

async fn readyz(gw: &Gateway) -> (u16, Value) {
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn redis_check(ready: &Value) -> Value {
    ready["checks"].as_array().unwrap().iter().find(|c| c["name"] == "redis").cloned().expect("redis check")
}

#[tokio::test]
async fn two_replicas_share_group_answers_and_a_logout_on_one_is_honoured_by_the_other() {
    let mock = mock().await;
    let redis = RedisServer::start().await;
    let a = replica(&mock, &redis).await;
    let b = replica(&mock, &redis).await;
    let token_a = login(&a, &mock, "bob").await;
    let token_b = login(&b, &mock, "bob").await;
    assert_eq!(mock.state().group_calls(), 1, "B reused A's group answer from Redis");
    assert_eq!(mock.state().calls("profile"), 1, "and its profile");
    assert_eq!(keys(&redis, "entra-gateway:groups:*").await.len(), 1);

    // Logout on A: the token is refused on B, by /auth/verify and /auth/me alike.
    assert_eq!(client().get(b.url("/auth/verify/app")).bearer_auth(&token_a).send().await.unwrap().status(), 200);
    assert_eq!(client().post(a.url("/auth/logout")).bearer_auth(&token_a).send().await.unwrap().status(), 204);
    assert_eq!(client().get(b.url("/auth/verify/app")).bearer_auth(&token_a).send().await.unwrap().status(), 401);
    assert_eq!(client().get(b.url("/auth/me")).bearer_auth(&token_a).send().await.unwrap().status(), 401);
    // Bob's other session is untouched.
    assert_eq!(client().get(a.url("/auth/verify/app")).bearer_auth(&token_b).send().await.unwrap().status(), 200);
    let revoked = keys(&redis, "entra-gateway:revoked:*").await;
    assert_eq!(revoked.len(), 1);
    let mut c = redis.connection().await;
    let ttl: i64 = ::redis::cmd("TTL").arg(&revoked[0]).query_async(&mut c).await.unwrap();
    // The token's remaining life plus the verifier's 5 s leeway (and 1 s of rounding).
    assert!((902..=906).contains(&ttl), "revocation lives as long as the token is accepted: {ttl}");
}

#[tokio::test]
async fn jwks_is_fetched_once_for_two_replicas_and_a_rotation_seen_by_one_serves_the_other() {
    let mock = mock().await;
    let redis = RedisServer::start().await;
    let a = replica(&mock, &redis).await;
    assert_eq!(exchange(&a, &token_for(&mock, "alice")).await.0, 200);
    let b = replica(&mock, &redis).await;
    assert_eq!(exchange(&b, &token_for(&mock, "alice")).await.0, 200);
    assert_eq!(mock.state().calls("jwks"), 1, "B took the tenant's keys from Redis");

    mock.state().rotate_signing_key();
    assert_eq!(exchange(&a, &token_for(&mock, "alice")).await.0, 200);
    assert_eq!(mock.state().calls("jwks"), 2, "A refetched on the unknown kid");
    assert_eq!(exchange(&b, &token_for(&mock, "alice")).await.0, 200);
    assert_eq!(mock.state().calls("jwks"), 2, "B found the rotated key in Redis");
    assert_eq!(readyz(&b).await.0, 200);
}

#[tokio::test]
async fn fifty_concurrent_exchanges_of_one_new_user_across_two_replicas_make_one_graph_call() {
    let mock = mock().await;
    let redis = RedisServer::start().await;
    let start = || {
        GatewayBuilder::new(&mock)
            .key("k1", SigningAlgorithm::ES256, Some(deployment_key()))
            .set("CACHE__REDIS_URL", redis.url())
            .set("SERVER__RATE_LIMIT__EXCHANGE_PER_USER", "null")
            .start()
    };
    let (a, b) = (Arc::new(start().await), Arc::new(start().await));
    mock.state().set_graph_delay(Duration::from_millis(200));
    let token = overage_token_for(&mock, "dave");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let gw = if i % 2 == 0 { a.clone() } else { b.clone() };
        let token = token.clone();
        tasks.push(tokio::spawn(async move { exchange(&gw, &token).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(mock.state().group_calls(), 1);
    assert_eq!(mock.state().calls("profile"), 1);
}

#[tokio::test]
async fn the_user_record_survives_a_restart_of_every_replica() {
    let mock = mock().await;
    let redis = RedisServer::start().await;
    let tid = mock.settings().tenant_id.clone();
    let a = replica(&mock, &redis).await;
    let token = login(&a, &mock, "bob").await;
    let first: Value = client().get(a.url("/auth/me")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    a.stop().await;

    let c = replica(&mock, &redis).await;
    let token = login(&c, &mock, "bob").await;
    let me: Value = client().get(c.url("/auth/me")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["id"], first["id"]);
    assert_eq!(me["created_at"], first["created_at"], "not re-created");
    assert_eq!(keys(&redis, "entra-gateway:user:*").await, vec![format!("entra-gateway:user:{tid}:{BOB}")]);
}

#[tokio::test]
async fn garbage_under_a_gateway_key_is_a_miss_not_a_crash() {
    let mock = mock().await;
    let redis = RedisServer::start().await;
    let tid = mock.settings().tenant_id.clone();
    let mut c = redis.connection().await;
    // Unsealed values (garbage, or a format from the future): integrity failures, i.e. misses.
    let _: () = ::redis::cmd("SET")
        .arg(format!("entra-gateway:user:{tid}:{BOB}"))
        .arg("\u{0}not json")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = ::redis::cmd("SET")
        .arg(format!("entra-gateway:jwks:{tid}"))
        .arg(r#"{"v":99,"d":"future format"}"#)
        .query_async(&mut c)
        .await
        .unwrap();
    let gw = replica(&mock, &redis).await;
    let token = login(&gw, &mock, "bob").await;
    // Plant garbage where the group answer lives, after it was written: a fresh replica still works.
    for key in keys(&redis, "entra-gateway:groups:*").await {
        let _: () = ::redis::cmd("SET").arg(&key).arg("[[[").query_async(&mut c).await.unwrap();
    }
    let other = replica(&mock, &redis).await;
    assert_eq!(exchange(&other, &overage_token_for(&mock, "bob")).await.0, 200);
    assert_eq!(client().get(gw.url("/auth/me")).bearer_auth(&token).send().await.unwrap().status(), 200);
    let metrics = client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("entra_gateway_cache_integrity_failures_total{kind=\"users\"} 1"), "{metrics}");
}

#[tokio::test]
async fn with_redis_killed_exchanges_still_work_and_when_it_returns_the_gateway_writes_again() {
    let mock = mock().await;
    let mut redis = RedisServer::start().await;
    let gw = replica(&mock, &redis).await;
    login(&gw, &mock, "alice").await;
    assert_eq!(readyz(&gw).await.1["status"], "ready");

    redis.kill();
    let token = login(&gw, &mock, "bob").await;
    login(&gw, &mock, "dave").await;
    assert_eq!(client().get(gw.url("/auth/verify/app")).bearer_auth(&token).send().await.unwrap().status(), 200);
    // A logout during the outage is still honoured by this replica.
    assert_eq!(client().post(gw.url("/auth/logout")).bearer_auth(&token).send().await.unwrap().status(), 204);
    assert_eq!(client().get(gw.url("/auth/verify/app")).bearer_auth(&token).send().await.unwrap().status(), 401);
    let (status, ready) = readyz(&gw).await;
    assert_eq!(status, 200, "degraded but safe: {ready}");
    assert_eq!(ready["status"], "degraded");
    assert!(redis_check(&ready)["detail"].as_str().unwrap().starts_with("degraded"), "{ready}");
    let metrics = client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("cache=\"redis_groups\",result=\"error\""), "{metrics}");
    assert!(metrics.contains("entra_gateway_redis_command_duration_seconds_bucket"), "{metrics}");

    redis.restart().await;
    // The connection manager re-dials after a failure; readiness reports when it has.
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis_check(&readyz(&gw).await.1)["detail"] != "reachable" {
        assert!(Instant::now() < deadline, "the gateway did not reconnect to redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    const ERIN: &str = "e4140000-0000-4000-8000-000000000005";
    mock.state().add_user(entra_gateway::mock::MockUser {
        login: "erin".into(),
        oid: ERIN.into(),
        display_name: Some("Erin Example".into()),
        groups: vec![ALLOWED.into()],
        ..Default::default()
    });
    login(&gw, &mock, "erin").await;
    let tid = mock.settings().tenant_id.clone();
    assert_eq!(keys(&redis, &format!("entra-gateway:user:{tid}:{ERIN}")).await.len(), 1, "writes resumed");
    assert_eq!(keys(&redis, &format!("entra-gateway:groups:{tid}:{ERIN}:*")).await.len(), 1);
}

const FEED_UP: &str = "entra_gateway_revocation_feed_up";
const EXISTS_CALLS: &str = "entra_gateway_redis_command_duration_seconds_count{command=\"get_revocation\"}";

/// Waits (bounded) until `check` holds; the feed is asynchronous by nature.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn verify_status(gw: &Gateway, token: &str) -> u16 {
    client().get(gw.url("/auth/verify/app")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn with_the_feed_live_requests_cost_no_redis_call_and_a_logout_reaches_the_other_replica() {
    let mock = mock().await;
    let redis = RedisServer::start().await;
    let a = replica(&mock, &redis).await;
    let b = replica(&mock, &redis).await;
    eventually("both feeds are live", || async {
        metric(&a, FEED_UP).await == 1.0 && metric(&b, FEED_UP).await == 1.0
    })
    .await;
    let token = login(&a, &mock, "bob").await;
    for _ in 0..20 {
        assert_eq!(verify_status(&b, &token).await, 200);
    }
    assert_eq!(metric(&b, EXISTS_CALLS).await, 0.0, "no Redis round trip per request");

    assert_eq!(client().post(a.url("/auth/logout")).bearer_auth(&token).send().await.unwrap().status(), 204);
    assert_eq!(verify_status(&a, &token).await, 401, "at once on the replica that logged out");
    eventually("B heard the logout", || async { verify_status(&b, &token).await == 401 }).await;
    assert_eq!(metric(&b, EXISTS_CALLS).await, 0.0, "heard, not asked");
    let stored = keys(&redis, "entra-gateway:revoked:*").await;
    let mut c = redis.connection().await;
    let sealed: String = ::redis::cmd("GET").arg(&stored[0]).query_async(&mut c).await.unwrap();
    assert!(sealed.starts_with("eg1."), "stored sealed: {sealed}");
    let until: u64 = sealed.rsplit('.').next().unwrap().parse().unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(until > now_ms + 900_000 && until < now_ms + 910_000, "the key holds the token's end: {until}");
}

#[tokio::test]
async fn a_replica_started_after_a_logout_learns_it_from_the_resync_and_ignores_garbage() {
    let mock = mock().await;
    let redis = RedisServer::start().await;
    let a = replica(&mock, &redis).await;
    let token = login(&a, &mock, "bob").await;
    assert_eq!(client().post(a.url("/auth/logout")).bearer_auth(&token).send().await.unwrap().status(), 204);
    let mut c = redis.connection().await;
    let _: () =
        ::redis::cmd("SET").arg("entra-gateway:revoked:junk").arg("not a time").query_async(&mut c).await.unwrap();
    let _: i64 =
        ::redis::cmd("PUBLISH").arg("entra-gateway:revocations").arg("\u{0}garbage").query_async(&mut c).await.unwrap();

    let late = replica(&mock, &redis).await;
    eventually("the late replica's feed is live", || async { metric(&late, FEED_UP).await == 1.0 }).await;
    assert_eq!(verify_status(&late, &token).await, 401);
    assert_eq!(metric(&late, EXISTS_CALLS).await, 0.0, "known from the resync, not asked per request");
    let other = login(&a, &mock, "alice").await;
    assert_eq!(verify_status(&late, &other).await, 200);
}

#[tokio::test]
async fn when_the_feed_is_lost_revocation_requires_redis_refuses_and_the_feed_returns_with_redis() {
    let mock = mock().await;
    let mut redis = RedisServer::start().await;
    let strict = |mock| {
        GatewayBuilder::new(mock)
            .set("CACHE__REDIS_URL", redis.url())
            .set("CACHE__REVOCATION_REQUIRES_REDIS", "true")
            .set("PROXY__FORWARD_AUTH__ORIGINAL_URI", "path")
            .start()
    };
    let gw = strict(&mock).await;
    let lenient = replica(&mock, &redis).await;
    let token = login(&gw, &mock, "bob").await;
    let lenient_token = login(&lenient, &mock, "bob").await;
    eventually("the feed is live", || async { metric(&gw, FEED_UP).await == 1.0 }).await;
    assert_eq!(verify_status(&gw, &token).await, 200);

    redis.kill();
    eventually("the strict replica refuses what it cannot check", || async { verify_status(&gw, &token).await == 503 })
        .await;
    assert_eq!(metric(&gw, FEED_UP).await, 0.0);
    eventually("the lenient replica serves", || async { verify_status(&lenient, &lenient_token).await == 200 }).await;

    redis.restart().await;
    eventually("the feed is back", || async { metric(&gw, FEED_UP).await == 1.0 }).await;
    assert_eq!(verify_status(&gw, &token).await, 200);
    let calls = metric(&gw, EXISTS_CALLS).await;
    assert_eq!(verify_status(&gw, &token).await, 200);
    assert_eq!(metric(&gw, EXISTS_CALLS).await, calls, "live again: no call per request");
}

/// The payload of a sealed value as the test reads it from Redis (`eg1.<tag>.<mac>.<payload>`).
fn payload_of(sealed: &str) -> &str {
    sealed.splitn(4, '.').nth(3).expect("a sealed value")
}

#[tokio::test]
async fn values_planted_in_redis_sign_no_one_in_and_grant_nothing() {
    let mock = mock().await;
    let redis = RedisServer::start().await;
    let tid = mock.settings().tenant_id.clone();
    let mut c = redis.connection().await;
    // Whoever can write to Redis plants the JWKS of their own "Entra" (same tenant and client
    // ids, their own signing key) in the format the gateway stores.
    let evil = entra_gateway::mock::MockEntra::start(entra_gateway::mock::MockSettings::default()).await.unwrap();
    seed(&evil);
    let evil_jwks = client()
        .get(format!("{}/{tid}/discovery/v2.0/keys", evil.authority_host()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let planted = serde_json::json!({"v": 1, "d": {"fetched_at": now, "body": evil_jwks}}).to_string();
    let _: () =
        ::redis::cmd("SET").arg(format!("entra-gateway:jwks:{tid}")).arg(&planted).query_async(&mut c).await.unwrap();

    let a = replica(&mock, &redis).await;
    let (status, _, body) =
        exchange(&a, &evil.mint(&entra_gateway::mock::TokenSpec { user: Some("alice".into()), ..Default::default() }))
            .await;
    assert_eq!(status, 401, "a key planted in Redis signed someone in: {body}");
    assert_eq!(exchange(&a, &token_for(&mock, "alice")).await.0, 200, "Entra's own keys, fetched instead");
    assert_eq!(metric(&a, "entra_gateway_cache_integrity_failures_total{kind=\"jwks\"}").await, 1.0);

    // A group decision that lets carol in, and a user record that makes bob alice: planted
    // after the real ones were written, for a replica that starts afterwards.
    assert_eq!(exchange(&a, &overage_token_for(&mock, "carol")).await.0, 403);
    let alice_token = login(&a, &mock, "alice").await;
    let alice_record: String =
        ::redis::cmd("GET").arg(format!("entra-gateway:user:{tid}:{ALICE}")).query_async(&mut c).await.unwrap();
    let as_bob = payload_of(&alice_record).replace(ALICE, BOB);
    let _: () = ::redis::cmd("SET")
        .arg(format!("entra-gateway:user:{tid}:{BOB}"))
        .arg(&as_bob)
        .query_async(&mut c)
        .await
        .unwrap();
    for key in keys(&redis, &format!("entra-gateway:groups:{tid}:{CAROL}:*")).await {
        let granted = serde_json::json!({"v": 1, "d": [ALLOWED]}).to_string();
        let _: () = ::redis::cmd("SET").arg(&key).arg(granted).query_async(&mut c).await.unwrap();
    }
    let b = replica(&mock, &redis).await;
    assert_eq!(exchange(&b, &overage_token_for(&mock, "carol")).await.0, 403, "a planted group decision let carol in");
    let bob = login(&b, &mock, "bob").await;
    let me: Value = client().get(b.url("/auth/me")).bearer_auth(&bob).send().await.unwrap().json().await.unwrap();
    let alice_me: Value =
        client().get(a.url("/auth/me")).bearer_auth(&alice_token).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["oid"], BOB);
    assert_ne!(me["id"], alice_me["id"], "a planted record gave bob alice's internal id");
    assert!(metric(&b, "entra_gateway_cache_integrity_failures_total{kind=\"groups\"}").await >= 1.0);
    assert!(metric(&b, "entra_gateway_cache_integrity_failures_total{kind=\"users\"}").await >= 1.0);

    // A revocation message nobody sealed is ignored; a real logout after it is heard.
    eventually("b's feed is live", || async { metric(&b, FEED_UP).await == 1.0 }).await;
    let victim = login(&a, &mock, "dave").await;
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&victim).unwrap();
    let forged = format!("{} {}", claims["jti"].as_str().unwrap(), (now + 600) * 1000);
    let _: i64 =
        ::redis::cmd("PUBLISH").arg("entra-gateway:revocations").arg(forged).query_async(&mut c).await.unwrap();
    assert_eq!(client().post(a.url("/auth/logout")).bearer_auth(&bob).send().await.unwrap().status(), 204);
    eventually("b heard the real logout", || async { verify_status(&b, &bob).await == 401 }).await;
    assert_eq!(verify_status(&b, &victim).await, 200, "a forged revocation message was believed");
    assert!(metric(&b, "entra_gateway_cache_integrity_failures_total{kind=\"revocations\"}").await >= 1.0);
}
