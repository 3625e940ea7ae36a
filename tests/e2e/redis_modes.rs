//! The ways of reaching Redis, each against a real `redis-server`: an ACL user with a password
//! and a database number, TLS (`rediss://`) with a private CA, and a 3-node Redis Cluster
//! (whose feeds are sharded pub/sub: no Redis round trip per request, as with one node).

use std::time::{Duration, Instant};

use crate::support::redis::{RedisServer, free_port};
use crate::support::tls::TestCa;
use crate::support::*;
use entra_gateway::config::SigningAlgorithm;
use entra_gateway::mock::MockEntra;

/// Two replicas with `settings`: a user signed in on A is known on B without a second Graph
/// call, and a logout on A is refused on B.
async fn replicas_share_state(mock: &MockEntra, settings: &[(&str, String)]) {
    let pem = entra_gateway::keys::generate_pem(SigningAlgorithm::ES256).unwrap();
    let start = || {
        let mut b = GatewayBuilder::new(mock)
            .key("k1", SigningAlgorithm::ES256, Some(pem.clone()))
            .set("PROXY__FORWARD_AUTH__ORIGINAL_URI", "path");
        for (k, v) in settings {
            b = b.set(k, v.clone());
        }
        b.start()
    };
    let (a, b) = (start().await, start().await);
    let (status, _, body) = exchange(&a, &overage_token_for(mock, "bob")).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(exchange(&b, &overage_token_for(mock, "bob")).await.0, 200);
    assert_eq!(mock.state().group_calls(), 1, "B read A's answer from Redis");
    assert_eq!(client().post(a.url("/auth/logout")).bearer_auth(&token).send().await.unwrap().status(), 204);
    assert_eq!(client().get(b.url("/auth/verify/app")).bearer_auth(&token).send().await.unwrap().status(), 401);
    let r: serde_json::Value = client().get(b.admin_url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["status"], "ready", "{r}");
}

#[tokio::test]
async fn an_acl_user_with_a_password_and_a_database_number() {
    let mock = mock().await;
    let port = free_port();
    let acl = vec!["--user", "default", "off", "--user", "gateway", "on", ">s3cret-pw", "~entra-gateway:*", "+@all"];
    let url = format!("redis://gateway:s3cret-pw@127.0.0.1:{port}/3");
    let redis = RedisServer::start_with(port, acl.into_iter().map(String::from).collect(), url.clone(), None).await;
    replicas_share_state(&mock, &[("CACHE__REDIS_URL", url)]).await;
    let mut c = redis.connection().await;
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("entra-gateway:*").query_async(&mut c).await.unwrap();
    assert!(keys.iter().any(|k| k.starts_with("entra-gateway:groups:")), "database 3 holds the keys: {keys:?}");
    // A wrong password is a degraded (not broken) gateway.
    let gw = GatewayBuilder::new(&mock)
        .set("CACHE__REDIS_URL", format!("redis://gateway:wrong@127.0.0.1:{port}/3"))
        .start()
        .await;
    assert_eq!(exchange(&gw, &token_for(&mock, "alice")).await.0, 200);
    let r: serde_json::Value = client().get(gw.admin_url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["status"], "degraded", "{r}");
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let mock = mock().await;
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let (cert, key, ca_file) = (write("redis.crt", &cert), write("redis.key", &key), write("ca.pem", &ca.cert_pem));
    let port = free_port();
    let args = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        "no",
    ];
    let url = format!("rediss://127.0.0.1:{port}/0");
    let _redis = RedisServer::start_with(
        port,
        args.iter().map(|s| s.to_string()).collect(),
        url.clone(),
        Some(ca.cert_pem.clone().into_bytes()),
    )
    .await;
    replicas_share_state(&mock, &[("CACHE__REDIS_URL", url.clone()), ("CACHE__REDIS_CA_FILE", ca_file)]).await;
    // Without the CA the server's certificate is not trusted: degraded, never "ready via plain".
    let gw = GatewayBuilder::new(&mock).set("CACHE__REDIS_URL", url).start().await;
    assert_eq!(exchange(&gw, &token_for(&mock, "alice")).await.0, 200);
    let r: serde_json::Value = client().get(gw.admin_url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["status"], "degraded", "{r}");
}

#[tokio::test]
async fn tls_and_an_acl_user_whose_url_and_password_come_from_files() {
    let mock = mock().await;
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let (cert, key, ca_file) = (write("redis.crt", &cert), write("redis.key", &key), write("ca.pem", &ca.cert_pem));
    let port = free_port();
    let p = port.to_string();
    let args = [
        "--port",
        "0",
        "--tls-port",
        &p,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        "no",
        "--user",
        "default",
        "off",
        "--user",
        "gateway",
        "on",
        ">pw-from-a-file",
        "~entra-gateway:*",
        "&entra-gateway:*",
        "+@all",
    ];
    let redis = RedisServer::start_with(
        port,
        args.iter().map(|s| s.to_string()).collect(),
        format!("rediss://gateway:pw-from-a-file@127.0.0.1:{port}/0"),
        Some(ca.cert_pem.clone().into_bytes()),
    )
    .await;
    // The URL (no credentials in it) and the password in files, as mounted Secrets are.
    let url_file = write("redis-url", &format!("rediss://127.0.0.1:{port}/0\n"));
    let password_file = write("redis-password", "pw-from-a-file\n");
    replicas_share_state(
        &mock,
        &[
            ("CACHE__REDIS_URL_FILE", url_file.clone()),
            ("CACHE__REDIS_USERNAME", "gateway".into()),
            ("CACHE__REDIS_PASSWORD_FILE", password_file),
            ("CACHE__REDIS_CA_FILE", ca_file.clone()),
        ],
    )
    .await;
    let mut c = redis.connection().await;
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("entra-gateway:*").query_async(&mut c).await.unwrap();
    assert!(keys.iter().any(|k| k.starts_with("entra-gateway:groups:")), "{keys:?}");
    // A wrong password from the file: degraded, and the password is never printed.
    let wrong = write("wrong-password", "not-it");
    let gw = GatewayBuilder::new(&mock)
        .set("CACHE__REDIS_URL_FILE", url_file)
        .set("CACHE__REDIS_USERNAME", "gateway")
        .set("CACHE__REDIS_PASSWORD_FILE", wrong)
        .set("CACHE__REDIS_CA_FILE", ca_file)
        .start()
        .await;
    assert_eq!(exchange(&gw, &token_for(&mock, "alice")).await.0, 200);
    let r: serde_json::Value = client().get(gw.admin_url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["status"], "degraded", "{r}");
    assert!(!r.to_string().contains("not-it") && !r.to_string().contains("pw-from-a-file"), "{r}");
}

#[tokio::test]
async fn redis_cluster() {
    let mock = mock().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let args =
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"];
        let url = format!("redis://127.0.0.1:{port}");
        nodes.push(RedisServer::start_with(port, args.iter().map(|s| s.to_string()).collect(), url, None).await);
    }
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli (installed with redis-server)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // Wait (bounded) until every node agrees the cluster is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        loop {
            let mut c = node.connection().await;
            let info: String = ::redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await.unwrap();
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not form: {info}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let seeds = format!("[{}]", addrs.iter().map(|a| format!("\"redis://{a}\"")).collect::<Vec<_>>().join(", "));
    replicas_share_state(&mock, &[("CACHE__CLUSTER_URLS", seeds.clone())]).await;

    // The feeds are sharded pub/sub: a logout and a kill switch on A reach B without B asking
    // Redis per request.
    let pem = entra_gateway::keys::generate_pem(SigningAlgorithm::ES256).unwrap();
    let replica = || {
        GatewayBuilder::new(&mock)
            .key("k1", SigningAlgorithm::ES256, Some(pem.clone()))
            .set("PROXY__FORWARD_AUTH__ORIGINAL_URI", "path")
            .set("CACHE__CLUSTER_URLS", seeds.clone())
            .start()
    };
    let (a, b) = (replica().await, replica().await);
    let feed_up = "entra_gateway_revocation_feed_up";
    let asked = "entra_gateway_redis_command_duration_seconds_count{command=\"get_revocation\"}";
    until("both feeds are live on the cluster", || async {
        metric(&a, feed_up).await == 1.0 && metric(&b, feed_up).await == 1.0
    })
    .await;
    let login = |gw: &Gateway, who: &'static str| {
        let token = token_for(&mock, who);
        let url = gw.url("/auth/exchange");
        async move {
            let body: serde_json::Value =
                client().post(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
            body["access_token"].as_str().unwrap().to_string()
        }
    };
    let (bob, alice) = (login(&a, "bob").await, login(&a, "alice").await);
    let verify =
        |gw: &Gateway, token: &str| client().get(gw.url("/auth/verify/app")).bearer_auth(token.to_string()).send();
    for _ in 0..20 {
        assert_eq!(verify(&b, &bob).await.unwrap().status(), 200);
    }
    assert_eq!(metric(&b, asked).await, 0.0, "no Redis round trip per request");
    assert_eq!(client().post(a.url("/auth/logout")).bearer_auth(&bob).send().await.unwrap().status(), 204);
    until("B hears the logout", || async { verify(&b, &bob).await.unwrap().status() == 401 }).await;
    let tid = mock.settings().tenant_id.clone();
    let kill = client().post(a.admin_url(&format!("/admin/users/{tid}/{ALICE}/revoke"))).send().await.unwrap();
    assert_eq!(kill.status(), 204);
    let took = until("B hears the kill switch", || async { verify(&b, &alice).await.unwrap().status() == 401 }).await;
    assert!(took < Duration::from_secs(1), "the kill switch reached B in {} ms", took.as_millis());
    assert_eq!(metric(&b, asked).await, 0.0, "heard, never asked");
}
