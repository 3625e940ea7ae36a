//! OpenTelemetry traces exported over OTLP/HTTP protobuf to a receiver that decodes them with
//! the official protobuf definitions: the spans of an exchange and of a proxied request with
//! their parent links, W3C trace context from trusted proxies only and always passed on to
//! the upstream, sampling, the standard `OTEL_*` variables, trace ids in log lines, and no
//! token or name in any span.

use crate::support::otlp::{OtlpReceiver, Received};
use crate::support::postgres::PostgresServer;
use crate::support::redis::RedisServer;
use crate::support::upstream::{self, Upstream};
use crate::support::*;
use entra_gateway::mock::MockEntra;

/// A client's own trace context (a trace the gateway must not join unless the peer is trusted).
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_PARENT: &str = "00f067aa0ba902b7";

fn traceparent(flags: &str) -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-{flags}")
}

fn builder<'a>(mock: &'a MockEntra, up: &Upstream, receiver: &OtlpReceiver) -> GatewayBuilder<'a> {
    GatewayBuilder::new(mock)
        .yaml(&format!(
            "proxy:\n  routes:\n    - {{ path_prefix: \"/api/\", upstream: \"{}\", auth: required }}\n",
            up.url()
        ))
        .set("TELEMETRY__OTLP_ENDPOINT", receiver.url())
        .set("SERVER__RATE_LIMIT__EXCHANGE_PER_USER", "null")
}

fn named<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    spans
        .iter()
        .find(|s| s.span.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {:?}", spans.iter().map(|s| &s.span.name).collect::<Vec<_>>()))
}

/// The upstream's `traceparent`: (trace id, parent span id, flags).
fn seen_traceparent(up: &Upstream) -> (String, String, String) {
    let tp =
        up.last().headers.get("traceparent").expect("the upstream got a traceparent").to_str().unwrap().to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test]
async fn an_exchange_and_a_proxied_request_are_traced_with_parent_links_and_no_token_or_name() {
    let (mock, up, receiver, redis) =
        (mock().await, upstream::start().await, OtlpReceiver::start().await, RedisServer::start().await);
    let pg = PostgresServer::start().await;
    let gw = builder(&mock, &up, &receiver)
        .set("CACHE__REDIS_URL", redis.url())
        .set("DIRECTORY__POSTGRES_URL", pg.create_db("traced").await)
        .start()
        .await;
    until("the user directory is migrated", || async {
        check_detail(&readyz(&gw).await, "postgres").starts_with("reachable")
    })
    .await;
    // Overage: the groups come from Graph (token, checkMemberGroups), the profile too.
    let entra_token = overage_token_for(&mock, "alice");
    let (status, _, body) = exchange(&gw, &entra_token).await;
    assert_eq!(status, 200, "{body}");
    let internal = body["access_token"].as_str().unwrap().to_string();
    // The client sends its own trace context from an untrusted address.
    let r = client()
        .get(gw.url("/api/orders?id=7"))
        .bearer_auth(&internal)
        .header("traceparent", traceparent("01"))
        .header("tracestate", "vendor=client")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await; // flushes the exporter
    assert!(receiver.bad.lock().unwrap().is_empty(), "{:?}", receiver.bad.lock().unwrap());
    let spans = receiver.spans();
    assert!(spans.iter().all(|s| s.service == "entra-gateway"), "service.name");

    // The exchange: one trace, the server span at its root, each step under it.
    let server = named(&spans, "POST exchange");
    assert_eq!(server.span.kind, 2, "SERVER");
    assert!(server.parent_id().is_empty(), "a new trace");
    assert_eq!(server.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(server.attr("entra_gateway.principal_type").as_deref(), Some("user"));
    let trace = receiver.trace(&server.trace_id());
    for step in ["entra validate_token", "exchange groups", "exchange profile", "directory sync_login", "issuer mint"] {
        assert_eq!(named(&trace, step).parent_id(), server.span_id(), "{step} is a child of the request");
    }
    let groups = named(&trace, "exchange groups");
    let graph = named(&trace, "graph checkMemberGroups");
    assert_eq!(graph.parent_id(), groups.span_id(), "the Graph call is a child of its step");
    assert_eq!(graph.span.kind, 3, "CLIENT");
    assert_eq!(named(&trace, "entra token").parent_id(), groups.span_id());
    assert_eq!(named(&trace, "graph profile").parent_id(), named(&trace, "exchange profile").span_id());
    assert!(trace.iter().any(|s| s.span.name == "redis" && s.attr("db.system.name").as_deref() == Some("redis")));
    let upsert = trace
        .iter()
        .find(|s| s.span.name == "postgresql" && s.attr("db.operation.name").as_deref() == Some("upsert user"))
        .expect("a PostgreSQL span");
    assert_eq!(upsert.parent_id(), named(&trace, "directory sync_login").span_id());

    // The proxied request: a new trace (the client is not a trusted proxy), the upstream call
    // a child, and the upstream joined our trace, not the client's.
    let proxied = named(&spans, "GET /api/");
    assert_ne!(proxied.trace_id(), CLIENT_TRACE);
    assert!(proxied.parent_id().is_empty());
    let call = spans.iter().find(|s| s.span.name == "upstream").expect("an upstream span");
    assert_eq!((call.trace_id(), call.parent_id()), (proxied.trace_id(), proxied.span_id()));
    assert_eq!(call.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(seen_traceparent(&up), (proxied.trace_id(), call.span_id(), "01".into()));
    let state = up.last().headers.get("tracestate").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(!state.contains("vendor=client"), "the client's tracestate is not passed on: {state:?}");

    // Nothing in any span is a token, a name, an address or a query.
    for s in &spans {
        for v in s.all_values() {
            for secret in [entra_token.as_str(), internal.as_str()] {
                assert!(!v.contains(&secret[..40]), "{}: a token in {v:?}", s.span.name);
            }
            for personal in ["alice", "Alice", "Jørgensen", "id=7", "orders"] {
                assert!(!v.contains(personal), "{}: {personal:?} in {v:?}", s.span.name);
            }
        }
    }
}

#[tokio::test]
async fn a_trusted_proxys_trace_context_is_continued_and_its_sampling_decision_followed() {
    let (mock, up, receiver) = (mock().await, upstream::start().await, OtlpReceiver::start().await);
    let gw = builder(&mock, &up, &receiver).set("SERVER__TRUSTED_PROXIES", "[127.0.0.1/32]").start().await;
    let internal = {
        let (_, _, body) = exchange(&gw, &token_for(&mock, "bob")).await;
        body["access_token"].as_str().unwrap().to_string()
    };
    let send = |flags: &'static str| {
        client().get(gw.url("/api/x")).bearer_auth(&internal).header("traceparent", traceparent(flags)).send()
    };
    assert_eq!(send("01").await.unwrap().status(), 200);
    let sampled = seen_traceparent(&up);
    assert_eq!((sampled.0.as_str(), sampled.2.as_str()), (CLIENT_TRACE, "01"), "the proxy's trace goes on");
    // Not sampled upstream of the gateway: nothing recorded, the decision passed on.
    assert_eq!(send("00").await.unwrap().status(), 200);
    let (trace, _, flags) = seen_traceparent(&up);
    assert_eq!((trace.as_str(), flags.as_str()), (CLIENT_TRACE, "00"));
    gw.stop().await;
    let trace = receiver.trace(CLIENT_TRACE);
    let servers: Vec<&Received> = trace.iter().filter(|s| s.span.kind == 2).collect();
    assert_eq!(servers.len(), 1, "only the sampled request was recorded");
    assert_eq!(servers[0].parent_id(), CLIENT_PARENT, "the server span's parent is the proxy's span");
    assert_eq!(sampled.1, named(&trace, "upstream").span_id());
}

#[tokio::test]
async fn with_sample_ratio_zero_nothing_is_recorded_but_the_upstream_still_joins_a_trace() {
    let (mock, up, receiver) = (mock().await, upstream::start().await, OtlpReceiver::start().await);
    let gw = builder(&mock, &up, &receiver).set("TELEMETRY__SAMPLE_RATIO", "0.0").start().await;
    let (_, _, body) = exchange(&gw, &token_for(&mock, "bob")).await;
    let internal = body["access_token"].as_str().unwrap().to_string();
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&internal)
        .header("traceparent", traceparent("01"))
        .header("Traceparent", traceparent("01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers.get_all("traceparent").iter().count(), 1, "exactly the gateway's");
    let (trace, _, flags) = seen_traceparent(&up);
    assert_ne!(trace, CLIENT_TRACE);
    assert_eq!((trace.len(), flags.as_str()), (32, "00"));
    gw.stop().await;
    assert!(receiver.spans().is_empty(), "{:?}", receiver.spans());
}

#[tokio::test]
async fn with_traces_off_an_untrusted_clients_trace_context_never_reaches_the_upstream() {
    let (mock, up) = (mock().await, upstream::start().await);
    let yaml =
        format!("proxy:\n  routes:\n    - {{ path_prefix: \"/api/\", upstream: \"{}\", auth: none }}\n", up.url());
    let untrusted = GatewayBuilder::new(&mock).yaml(&yaml).start().await;
    // Any case, and two of them: none reaches the upstream.
    let r = client()
        .get(untrusted.url("/api/x"))
        .header("TraceParent", traceparent("01"))
        .header("traceparent", traceparent("00"))
        .header("TRACESTATE", "vendor=client")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last().headers;
    assert!(seen.get("traceparent").is_none() && seen.get("tracestate").is_none(), "{seen:?}");
    let trusted = GatewayBuilder::new(&mock).yaml(&yaml).set("SERVER__TRUSTED_PROXIES", "[127.0.0.1/32]").start().await;
    client().get(trusted.url("/api/x")).header("traceparent", traceparent("01")).send().await.unwrap();
    assert_eq!(seen_traceparent(&up).0, CLIENT_TRACE, "a trusted proxy's context passes");
}

#[tokio::test]
async fn the_standard_otel_variables_are_honoured_and_access_lines_carry_the_trace_id() {
    let (mock, up, receiver) = (mock().await, upstream::start().await, OtlpReceiver::start().await);
    // The binary, configured only through OTEL_* variables (no telemetry section).
    let (config, dir) = GatewayBuilder::new(&mock)
        .yaml(&format!(
            "proxy:\n  routes:\n    - {{ path_prefix: \"/api/\", upstream: \"{}\", auth: none }}\n",
            up.url()
        ))
        .set("LOGGING__FORMAT", "json")
        .set("LOGGING__LEVEL", "info")
        .config();
    let path = dir.path().join("gateway.yaml");
    write_config(&config, &path);
    let gw = process::GatewayProcess::spawn_with_env(
        &path,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url().as_str()),
            ("OTEL_SERVICE_NAME", "checkout-gateway"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
    );
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let line = gw.wait_for_line("\"request_id\"");
    let logged: serde_json::Value = serde_json::from_str(&line).unwrap();
    let trace_id = logged["trace_id"].as_str().unwrap().to_string();
    assert_eq!(trace_id.len(), 32, "{line}");
    assert_eq!(seen_traceparent(&up).0, trace_id);
    until("the span arrives (OTEL_BSP_SCHEDULE_DELAY=100)", || async { !receiver.trace(&trace_id).is_empty() }).await;
    let spans = receiver.trace(&trace_id);
    assert_eq!(named(&spans, "GET /api/").service, "checkout-gateway");
}

#[tokio::test]
async fn spans_go_over_otlp_grpc_when_asked() {
    let (mock, up, receiver) = (mock().await, upstream::start().await, OtlpReceiver::start().await);
    let gw = builder(&mock, &up, &receiver).set("TELEMETRY__OTLP_PROTOCOL", "grpc").start().await;
    let (status, _, _) = exchange(&gw, &token_for(&mock, "bob")).await;
    assert_eq!(status, 200);
    gw.stop().await;
    assert!(receiver.bad.lock().unwrap().is_empty(), "{:?}", receiver.bad.lock().unwrap());
    let spans = receiver.spans();
    let server = named(&spans, "POST exchange");
    assert_eq!(named(&receiver.trace(&server.trace_id()), "issuer mint").parent_id(), server.span_id());
}
