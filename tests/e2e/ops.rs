//! Operating the gateway: metrics (checked by promtool), logs, HTTPS with certificate rotation,
//! graceful shutdown, live reload and rate limits. Several tests run the real binary.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::tls::TestCa;
use crate::support::upstream::{self, Upstream};
use crate::support::*;
use serde_json::Value;

fn routes(up: &Upstream) -> String {
    format!(
        "\nproxy:\n  routes:\n    - {{ path_prefix: \"/api/\", upstream: \"{u}\", auth: required }}\n    - {{ path_prefix: \"/slow/\", upstream: \"{u}\", auth: required, timeout: 60s }}\n    - {{ path_prefix: \"/down/\", upstream: \"http://127.0.0.1:9\", auth: none }}\n",
        u = up.url()
    )
}

fn promtool() -> &'static str {
    for p in ["/usr/bin/promtool", "/usr/local/bin/promtool"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("promtool is not installed: run `bash .ci/test.sh`, which installs it (Debian package prometheus)");
}

#[tokio::test]
async fn metrics_pass_promtool_move_with_traffic_and_never_carry_tokens_ids_or_paths() {
    let mock = mock().await;
    let up = upstream::start().await;
    let gw = GatewayBuilder::new(&mock).yaml(&routes(&up)).start().await;
    let entra_token = token_for(&mock, "alice");
    let (_, _, body) = exchange(&gw, &entra_token).await;
    let token = body["access_token"].as_str().unwrap().to_string();
    let user_id = body["user"]["id"].as_str().unwrap().to_string();
    exchange(&gw, "not-a-token").await;
    exchange(&gw, &token_for(&mock, "carol")).await;
    for path in ["/api/orders/secret-path-4711?q=1", "/api/x"] {
        assert_eq!(client().get(gw.url(path)).bearer_auth(&token).send().await.unwrap().status(), 200);
    }
    client().get(gw.url("/api/x")).send().await.unwrap();
    client().get(gw.url("/nowhere/at/all")).send().await.unwrap();

    let text = client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    let mut check = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    for line in [
        "entra_gateway_exchange_total{outcome=\"success\"} 1",
        "entra_gateway_exchange_total{outcome=\"invalid_token\"} 1",
        "entra_gateway_exchange_total{outcome=\"denied\"} 1",
        "entra_gateway_proxy_requests_total{route=\"/api/\",status=\"200\"} 2",
        "entra_gateway_proxy_requests_total{route=\"/api/\",status=\"401\"} 1",
        "entra_gateway_proxy_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "entra_gateway_http_requests_total{endpoint=\"exchange\",status=\"200\"} 1",
        "entra_gateway_jwks_refresh_total{result=\"success\"} 1",
        "entra_gateway_exchange_duration_seconds_count 3",
    ] {
        assert!(text.contains(&format!("{line}\n")), "missing `{line}` in:\n{text}");
    }
    for family in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
        "entra_gateway_proxy_duration_seconds_bucket{route=\"/api/\",le=\"0.0005\"}",
    ] {
        assert!(text.contains(family), "missing {family}");
    }
    let signature = token.rsplit('.').next().unwrap();
    for secret in
        [signature, user_id.as_str(), "secret-path-4711", "/nowhere", ALICE, entra_token.rsplit('.').next().unwrap()]
    {
        assert!(!text.contains(secret), "metrics leak {secret}");
    }
}

#[tokio::test]
async fn json_logs_have_one_access_line_per_request_and_never_a_token() {
    let mock = mock().await;
    let up = upstream::start().await;
    let (mut gw, _, _dir) = GatewayBuilder::new(&mock).yaml(&routes(&up)).set("LOGGING__FORMAT", "json").spawn();
    let good = token_for(&mock, "alice");
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], parts[1], token_for(&mock, "carol").rsplit('.').next().unwrap());
    let r = client()
        .post(gw.url("/auth/exchange"))
        .bearer_auth(&good)
        .header("X-Request-Id", "req-12345")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-12345");
    let body: Value = r.json().await.unwrap();
    let internal = body["access_token"].as_str().unwrap().to_string();
    let r = client().post(gw.url("/auth/exchange")).bearer_auth(&forged).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let (prefix, counter) = generated.split_once('-').expect("<prefix>-<counter>");
    assert_eq!((prefix.len(), counter.len()), (12, 16), "a new id when the client sent none: {generated}");
    assert!(generated.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()), "{generated}");
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", good.as_str()),
        ("subject_token_type", "urn:x"),
    ];
    let r = client().post(gw.url("/auth/exchange")).header("X-Request-Id", "req-form").form(&form).send();
    assert_eq!(r.await.unwrap().status(), 400);
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&internal)
        .header("X-Request-Id", "req-proxied")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["x-request-id"], "req-proxied", "the request id reaches the upstream");
    let r = client().get(gw.url("/api/x")).header("X-Request-Id", "req-refused").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client().get(gw.url("/down/x")).header("X-Request-Id", "req-down").send().await.unwrap();
    assert_eq!(r.status(), 502);
    gw.signal("TERM");
    let (lines, status) = gw.collect_until_exit();
    assert!(status.success());
    let text = lines.join("\n");
    for (name, token) in [("Entra token", &good), ("forged token", &forged), ("internal token", &internal)] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "the log contains the {name}'s signature");
        assert!(!text.contains(&token[..40]), "the log contains the start of the {name}");
    }
    assert!(!text.contains("mock-client-secret"));
    let created: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "user created")
        .collect();
    assert_eq!(created.len(), 1, "one structured line per created user:\n{text}");
    assert_eq!(created[0]["user_id"], access_user(&lines, "req-12345"));
    assert!(!text.contains("Alice J"), "profile values are never logged");
    let mut access: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access" || v["message"] == "request")
        .collect();
    assert_eq!(access.len(), 6, "one access line per public request:\n{text}");
    // Each worker writes its own lines in batches: put them in the order they were sent.
    let order = ["req-12345", generated.as_str(), "req-form", "req-proxied", "req-refused", "req-down"];
    access.sort_by_key(|v| order.iter().position(|id| v["request_id"] == *id));
    let first = &access[0];
    assert_eq!(first["request_id"], "req-12345");
    assert_eq!(first["route"], "exchange");
    assert_eq!(first["status"], 200);
    assert_eq!(first["method"], "POST");
    assert_ne!(first["user_id"], "-");
    assert_eq!(access[1]["request_id"], generated.as_str());
    assert_eq!(access[1]["status"], 401);
    assert_eq!(access[1]["level"], "INFO", "a client's mistake is not a warning");
    assert_eq!(access[1]["error"], "invalid_token");
    assert_eq!(first["upstream"], "-", "the gateway's own endpoint");
    assert_eq!(access[4]["route"], "/api/");
    assert_eq!(access[4]["upstream"], "-", "refused by the gateway: no upstream saw it");
    assert!(access[1]["reason"].as_str().unwrap().contains("signature"), "{}", access[1]);
    // One line per failed request: nothing else carries its request id... and no other line
    // than the access line describes the failure.
    for id in [generated.as_str(), "req-down"] {
        let with_id = lines.iter().filter(|l| l.contains(id)).count();
        assert_eq!(with_id, 1, "one line for request {id}:\n{text}");
    }
    let down = &access[5];
    assert_eq!((down["status"].as_u64(), down["level"].as_str()), (Some(502), Some("WARN")));
    assert!(down["reason"].as_str().unwrap().contains("connect"), "the cause of a 502: {down}");
    let proxied = &access[3];
    assert_eq!(proxied["route"], "/api/");
    assert_eq!(proxied["upstream"], up.addr.to_string());
    assert!(proxied["duration_ms"].as_f64().is_some());
    let ms = proxied["duration_ms"].to_string();
    assert!(ms.split('.').nth(1).is_none_or(|f| f.len() <= 3), "microsecond precision, no float noise: {ms}");
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_refuses_new_connections_and_exits_0() {
    let mock = mock().await;
    let up = upstream::start().await;
    let (mut gw, _, _dir) = GatewayBuilder::new(&mock).yaml(&routes(&up)).set("SERVER__SHUTDOWN_GRACE", "20s").spawn();
    let r = client().post(gw.url("/auth/exchange")).bearer_auth(token_for(&mock, "alice")).send().await.unwrap();
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let url = gw.url("/slow/stall");
    let in_flight = tokio::spawn(async move { client().get(url).bearer_auth(token).send().await });
    up.state.stalled.notified().await;

    gw.signal("TERM");
    loop {
        let line = gw.wait_for_line("listener closed");
        assert!(!line.contains("Some("), "{line}");
        if line.contains(&gw.public.to_string()) {
            break;
        }
    }
    let refused = tokio::net::TcpStream::connect(gw.public).await;
    assert!(refused.is_err(), "the public listener still accepts connections");
    let ready = client().get(format!("http://{}/readyz", gw.admin)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while draining");
    assert!(ready.json::<Value>().await.unwrap()["failing"].as_array().unwrap().iter().any(|c| c == "shutdown"));

    up.state.unstall.notify_one();
    let resp = in_flight.await.unwrap().expect("the in-flight request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "late");
    let started = Instant::now();
    let (_, status) = gw.collect_until_exit();
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(20), "exited within the grace period");
}

/// The user id of the first access line.
/// The `user_id` of the access line of request `id` (workers write their lines in batches, so
/// lines of different connections may come in any order).
fn access_user(lines: &[String], id: &str) -> Value {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "request" && v["request_id"] == id)
        .map(|v| v["user_id"].clone())
        .unwrap_or_default()
}

/// The certificate a TLS server presents, and the protocol ALPN chose.
async fn handshake(addr: std::net::SocketAddr, ca_pem: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in entra_gateway::tls::read_certs_from_pem(ca_pem.as_bytes()).unwrap() {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.expect("handshake");
    let (_, conn) = tls.get_ref();
    let cert = conn.peer_certificates().unwrap()[0].as_ref().to_vec();
    (cert, conn.alpn_protocol().map(|p| p.to_vec()))
}

fn der_of(pem_text: &str) -> Vec<u8> {
    entra_gateway::tls::read_certs_from_pem(pem_text.as_bytes()).unwrap()[0].as_ref().to_vec()
}

#[tokio::test]
async fn https_listener_serves_h2_and_picks_up_a_replaced_certificate() {
    let mock = mock().await;
    let ca = TestCa::new();
    let (cert1, key1) = ca.issue(&["localhost", "127.0.0.1"]);
    let (gw, _, dir) = {
        let b = GatewayBuilder::new(&mock);
        let d = b.dir_path().to_path_buf();
        std::fs::write(d.join("tls.crt"), &cert1).unwrap();
        std::fs::write(d.join("tls.key"), &key1).unwrap();
        b.set("SERVER__TLS__CERT_FILE", d.join("tls.crt").display().to_string())
            .set("SERVER__TLS__KEY_FILE", d.join("tls.key").display().to_string())
            .spawn()
    };

    let (served, alpn) = handshake(gw.public, &ca.cert_pem).await;
    assert_eq!(served, der_of(&cert1));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let https = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = https.get(format!("https://localhost:{}/.well-known/jwks.json", gw.public.port())).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Rotate as Kubernetes does: new files appear; no restart.
    let (cert2, key2) = ca.issue(&["localhost", "127.0.0.1"]);
    for (name, body) in [("tls.key", &key2), ("tls.crt", &cert2)] {
        let tmp = dir.path().join(format!("{name}.new"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.path().join(name)).unwrap();
    }
    gw.wait_for_line("TLS certificate reloaded");
    let (served, _) = handshake(gw.public, &ca.cert_pem).await;
    assert_eq!(served, der_of(&cert2), "new connections see the new certificate");
    // A broken replacement is refused and the current certificate keeps serving.
    std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
    gw.wait_for_line("new TLS certificate refused");
    assert_eq!(handshake(gw.public, &ca.cert_pem).await.0, der_of(&cert2));
}

#[tokio::test]
async fn changing_allowed_groups_in_the_file_applies_without_restart_and_a_bad_edit_is_refused() {
    let mock = mock().await;
    let (gw, mut config, dir) = GatewayBuilder::new(&mock).spawn();
    let path = dir.path().join("gateway.yaml");
    let exchange_status = |login: &'static str| {
        let (url, token) = (gw.url("/auth/exchange"), token_for(&mock, login));
        async move { client().post(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(exchange_status("carol").await, 403);

    config.raw.authorization.allowed_groups.push(OTHER.to_string());
    // Written in place, in two pieces (as an editor or `cat > file` does): read once whole,
    // with no "refused" line for the half-written file.
    let new = serde_saphyr::to_string(&serde_json::to_value(&config.raw).unwrap()).unwrap();
    let (first, second) = new.split_at(new.len() / 2);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(first.as_bytes()).unwrap();
        f.sync_all().unwrap();
        // A slow writer (well within the watcher's settle time), not a wait for the gateway.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        f.write_all(second.as_bytes()).unwrap();
    }
    let line = gw.wait_for_line("configuration");
    assert!(line.contains("configuration reloaded"), "a half-written file was read: {line}");
    assert_eq!(exchange_status("carol").await, 200, "carol's group is allowed now");

    let text = std::fs::read_to_string(&path).unwrap().replace(OTHER, "not-a-group-id");
    std::fs::write(dir.path().join("edit.tmp"), text).unwrap();
    std::fs::rename(dir.path().join("edit.tmp"), &path).unwrap();
    let refused = gw.wait_for_line("new configuration refused");
    assert!(refused.contains("authorization.allowed_groups[1]"), "{refused}");
    assert_eq!(exchange_status("carol").await, 200, "the previous configuration keeps serving");
    assert_eq!(exchange_status("alice").await, 200);

    // SIGHUP re-reads too (here: a valid file again, with carol's group removed).
    config.raw.authorization.allowed_groups.pop();
    write_config(&config, &path);
    gw.wait_for_line("configuration reloaded");
    gw.signal("HUP");
    gw.wait_for_line("configuration reloaded");
    assert_eq!(exchange_status("carol").await, 403);
    let metrics = client().get(format!("http://{}/metrics", gw.admin)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("entra_gateway_config_reloads_total{result=\"error\"} 1"), "{metrics}");
    assert!(metrics.contains("entra_gateway_config_reloads_total{result=\"success\"} 3"), "{metrics}");
}

#[tokio::test]
async fn a_burst_above_the_rate_limit_gets_429_with_retry_after() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock)
        .set("SERVER__RATE_LIMIT__EXCHANGE_PER_IP", "{per_minute: 6, burst: 3}")
        .set("SERVER__RATE_LIMIT__EXCHANGE_PER_USER", "null")
        .start()
        .await;
    let token = token_for(&mock, "alice");
    for _ in 0..3 {
        assert_eq!(exchange(&gw, &token).await.0, 200);
    }
    let (status, headers, body) = exchange(&gw, &token).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"], "rate_limited");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&wait), "{wait}");

    let per_user = GatewayBuilder::new(&mock)
        .set("SERVER__RATE_LIMIT__EXCHANGE_PER_USER", "{per_minute: 1, burst: 2}")
        .start()
        .await;
    assert_eq!(exchange(&per_user, &token_for(&mock, "alice")).await.0, 200);
    assert_eq!(exchange(&per_user, &token_for(&mock, "alice")).await.0, 200);
    assert_eq!(exchange(&per_user, &token_for(&mock, "alice")).await.0, 429);
    assert_eq!(exchange(&per_user, &token_for(&mock, "bob")).await.0, 200, "budgets are per user");
    let metrics = client().get(per_user.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("entra_gateway_rate_limited_total{limit=\"user\"} 1"));
}

#[tokio::test]
async fn https_upstreams_are_trusted_through_extra_ca_file_and_spoken_to_over_h2() {
    let mock = mock().await;
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&["localhost"]);
    let up = upstream::start_tls(&cert, &key).await;
    let route = format!(
        "\nproxy:\n  routes:\n    - {{ path_prefix: \"/api/\", upstream: \"https://localhost:{}\", auth: none }}\n",
        up.addr.port()
    );
    let trusting = {
        let b = GatewayBuilder::new(&mock).yaml(&route);
        let ca_file = b.dir_path().join("extra-ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem).unwrap();
        b.set("SERVER__TLS__EXTRA_CA_FILE", ca_file.display().to_string()).start().await
    };
    let r = client().get(trusting.url("/api/x?y=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2, "HTTP/2 negotiated by ALPN");
    assert_eq!(seen.uri.rsplit('/').next(), Some("x?y=1"));
    // Without the CA the upstream's certificate is not trusted: 502, never plain text.
    let before = up.requests();
    let strict = GatewayBuilder::new(&mock).yaml(&route).start().await;
    assert_eq!(client().get(strict.url("/api/x")).send().await.unwrap().status(), 502);
    assert_eq!(up.requests(), before);
}

#[tokio::test]
async fn a_config_change_made_while_the_gateway_starts_is_not_lost() {
    let mock = mock().await;
    let (gw, mut config, dir) = GatewayBuilder::new(&mock).spawn();
    // Right after "listening": the reloader may not be watching yet.
    config.raw.authorization.allowed_groups.push(OTHER.to_string());
    write_config(&config, &dir.path().join("gateway.yaml"));
    gw.wait_for_line("configuration reloaded");
    let r = client().post(gw.url("/auth/exchange")).bearer_auth(token_for(&mock, "carol")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn entra_and_graph_over_https_are_trusted_through_extra_ca_file() {
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&["localhost"]);
    let mock = entra_gateway::mock::MockEntra::start_tls(Default::default(), &cert, &key).await.unwrap();
    seed(&mock);
    assert!(mock.authority_host().starts_with("https://localhost:"));
    let trusting = {
        let b = GatewayBuilder::new(&mock);
        let ca_file = b.dir_path().join("extra-ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem).unwrap();
        b.set("SERVER__TLS__EXTRA_CA_FILE", ca_file.display().to_string()).start().await
    };
    // JWKS, the token endpoint and Graph (checkMemberGroups, profile), all over TLS.
    let (status, _, body) = exchange(&trusting, &overage_token_for(&mock, "bob")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.state().calls("checkMemberGroups"), 1);
    // Without the CA, Entra's certificate is not trusted: fail closed.
    let strict = GatewayBuilder::new(&mock).start().await;
    let (status, _, _) = exchange(&strict, &overage_token_for(&mock, "bob")).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn access_log_off_drops_only_the_access_lines_and_the_last_lines_reach_stdout_at_exit() {
    let mock = mock().await;
    let up = upstream::start().await;
    let (mut gw, _, _dir) = GatewayBuilder::new(&mock)
        .yaml(&routes(&up))
        .set("LOGGING__FORMAT", "json")
        .set("LOGGING__ACCESS_LOG", "false")
        .spawn();
    let r = client().post(gw.url("/auth/exchange")).bearer_auth(token_for(&mock, "alice")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(client().get(gw.url("/down/x")).send().await.unwrap().status(), 502);
    gw.signal("TERM");
    let (lines, status) = gw.collect_until_exit();
    assert!(status.success());
    let messages: Vec<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["message"].as_str().map(String::from))
        .collect();
    assert!(!messages.iter().any(|m| m == "request"), "no access line: {messages:?}");
    assert!(messages.iter().any(|m| m == "user created"), "other lines stay: {messages:?}");
    assert_eq!(messages.last().map(String::as_str), Some("shutdown complete"), "flushed at exit: {messages:?}");
}

#[tokio::test]
async fn every_access_line_is_written_when_sigterm_comes_right_after_the_requests() {
    let mock = mock().await;
    let up = upstream::start().await;
    let public =
        format!("\nproxy:\n  routes:\n    - {{ path_prefix: \"/public/\", upstream: \"{}\", auth: none }}\n", up.url());
    let (mut gw, _, _dir) = GatewayBuilder::new(&mock).yaml(&public).set("LOGGING__FORMAT", "json").spawn();
    // Lines buffered by the workers (handed over every 200 ms or per 256 KiB) and the writer
    // thread's queue are all written before the process exits.
    const REQUESTS: usize = 600;
    let c = client();
    let sent: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let (c, url) = (c.clone(), gw.url(&format!("/public/line-{i}")));
            tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for s in sent {
        assert_eq!(s.await.unwrap().unwrap(), 200);
    }
    gw.signal("TERM");
    let (lines, status) = gw.collect_until_exit();
    assert_eq!(status.code(), Some(0));
    let access = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "request" && v["route"] == "/public/")
        .count();
    assert_eq!(access, REQUESTS, "access lines written before the exit");
}
