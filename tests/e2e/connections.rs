//! Slow and greedy clients: every connection-level limit fires, is counted, and frees what the
//! client held. Real sockets against a real gateway; deadlines are short settings, never sleeps.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until the server closes the connection; panics if it stays open for 20 s.
async fn closed_by_server(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the gateway kept the connection open");
    buf
}

async fn metric(gw: &Gateway, line_prefix: &str) -> f64 {
    let text = client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(line_prefix).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

const FIRST_REQUEST: &str = "entra_gateway_connection_events_total{event=\"first_request_timeout\"}";
const IDLE: &str = "entra_gateway_connection_events_total{event=\"idle_timeout\"}";
const LIMIT: &str = "entra_gateway_connection_events_total{event=\"rejected_limit\"}";

#[tokio::test]
async fn a_connection_that_sends_nothing_or_half_an_http2_preface_is_closed_and_counted() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).set("SERVER__HEADER_READ_TIMEOUT", "1s").start().await;
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(closed_by_server(&mut silent).await.is_empty());
    assert!(closed_by_server(&mut half).await.is_empty());
    assert_eq!(metric(&gw, FIRST_REQUEST).await, 2.0);
}

#[tokio::test]
async fn a_tls_client_that_goes_quiet_after_the_handshake_is_closed() {
    let mock = mock().await;
    let ca = crate::support::tls::TestCa::new();
    let (cert, key) = ca.issue(&["localhost"]);
    let b = GatewayBuilder::new(&mock).set("SERVER__HEADER_READ_TIMEOUT", "1s");
    let d = b.dir_path().to_path_buf();
    std::fs::write(d.join("tls.crt"), cert).unwrap();
    std::fs::write(d.join("tls.key"), key).unwrap();
    let gw = b
        .set("SERVER__TLS__CERT_FILE", d.join("tls.crt").display().to_string())
        .set("SERVER__TLS__KEY_FILE", d.join("tls.key").display().to_string())
        .start()
        .await;
    let mut roots = rustls::RootCertStore::empty();
    for c in entra_gateway::tls::read_certs_from_pem(ca.cert_pem.as_bytes()).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.expect("handshake");
    assert!(closed_by_server(&mut tls).await.is_empty());
    assert_eq!(metric(&gw, FIRST_REQUEST).await, 1.0);
}

#[tokio::test]
async fn an_idle_http2_connection_gets_a_goaway_and_the_announced_stream_limit_is_the_configured_one() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock)
        .set("SERVER__IDLE_TIMEOUT", "1s")
        .set("SERVER__HTTP2_MAX_CONCURRENT_STREAMS", "7")
        .start()
        .await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::get(format!("http://{}/.well-known/jwks.json", gw.addr)).body(()).unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(h2.current_max_send_streams(), 7);
    drop(resp);
    // No further request: the server ends the connection gracefully.
    let ended = tokio::time::timeout(Duration::from_secs(20), conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection stayed open");
    assert_eq!(metric(&gw, IDLE).await, 1.0);
}

#[tokio::test]
async fn an_exchange_body_that_arrives_too_slowly_is_408() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).set("SERVER__EXCHANGE_BODY_TIMEOUT", "1s").start().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = "POST /auth/exchange HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                Content-Length: 100\r\n\r\ngrant_type=urn";
    s.write_all(head.as_bytes()).await.unwrap();
    let resp = String::from_utf8(closed_or_answered(&mut s).await).unwrap();
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("invalid_request"));
}

/// Reads the first response (or until close).
async fn closed_or_answered(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await.expect("an answer").unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once_and_a_freed_slot_is_reused() {
    let mock = mock().await;
    let gw = GatewayBuilder::new(&mock).set("SERVER__MAX_CONNECTIONS", "2").start().await;
    let mut first = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // Both are served (a full request each keeps them open as keep-alive).
    for s in [&mut first, &mut second] {
        s.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: gw\r\n\r\n").await.unwrap();
        assert!(String::from_utf8_lossy(&closed_or_answered(s).await).starts_with("HTTP/1.1 200"));
    }
    let mut third = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let _ = third.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), third.read_to_end(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the third connection was served: {buf:?}");
    assert_eq!(metric(&gw, LIMIT).await, 1.0);
    // Freeing a slot lets a new connection in (bounded retry: the server sees the close soon).
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) =
            tokio::time::timeout(Duration::from_secs(5), async { try_get(gw.addr).await }).await.unwrap_or((0, ()));
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot was never freed");
        tokio::task::yield_now().await;
    }
}

async fn try_get(addr: std::net::SocketAddr) -> (u16, ()) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return (0, ()) };
    if s.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").await.is_err() {
        return (0, ());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let status = String::from_utf8_lossy(&buf).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, ())
}

const WRITE_TIMEOUT: &str = "entra_gateway_connection_events_total{event=\"write_timeout\"}";
const STREAM_WRITE_TIMEOUT: &str = "entra_gateway_connection_events_total{event=\"stream_write_timeout\"}";

/// A gateway with `server.write_timeout: 1s` in front of an upstream that serves large
/// downloads on an open route; and the upstream.
async fn slow_reader_setup() -> (Gateway, crate::support::upstream::Upstream, entra_gateway::mock::MockEntra) {
    let mock = mock().await;
    let up = crate::support::upstream::start().await;
    let gw = GatewayBuilder::new(&mock)
        .set("SERVER__WRITE_TIMEOUT", "1s")
        .yaml(&format!(
            "\nproxy:\n  routes:\n    - {{ path_prefix: /files/, upstream: \"{}\", auth: none }}\n",
            up.url()
        ))
        .start()
        .await;
    (gw, up, mock)
}

/// Waits (bounded) until the upstream saw its download's reader go away.
async fn upstream_released(up: &crate::support::upstream::Upstream) {
    let aborted = up.state.download_aborted.notified();
    if up.state.downloads_aborted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::timeout(Duration::from_secs(20), aborted).await.expect("the upstream connection was released");
    }
}

#[tokio::test]
async fn an_http1_client_that_stops_reading_a_large_response_is_cut_off_and_its_upstream_released() {
    let (gw, up, _mock) = slow_reader_setup().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /files/download?size=268435456 HTTP/1.1\r\nHost: gw\r\n\r\n").await.unwrap();
    // Read the head and a little of the body, then stop reading.
    let mut first = [0u8; 4096];
    let n = s.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    upstream_released(&up).await;
    assert_eq!(metric(&gw, WRITE_TIMEOUT).await, 1.0);
    // The gateway closed the connection: what is left in the buffers ends in EOF (or a reset).
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the connection stayed open");
    assert!(rest.len() < 256 * 1024 * 1024, "the whole response was never written");
}

#[tokio::test]
async fn an_http2_client_that_never_opens_its_window_has_its_stream_reset_and_its_upstream_released() {
    let (gw, up, _mock) = slow_reader_setup().await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (h2, connection) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, bytes::Bytes>(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::get(format!("http://{}/files/download?size=268435456", gw.addr)).body(()).unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = resp.await.expect("response headers need no window");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Never release capacity: the stream stays at a zero window until the gateway resets it.
    let next = tokio::time::timeout(Duration::from_secs(20), body.data()).await.expect("the stream was reset");
    let err = next.expect("an error, not the end of the body").expect_err("no data through a zero window");
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err}");
    upstream_released(&up).await;
    assert_eq!(metric(&gw, STREAM_WRITE_TIMEOUT).await, 1.0);
    // The connection itself still serves.
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::get(format!("http://{}/files/small", gw.addr)).body(()).unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
}
