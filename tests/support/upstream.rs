//! A real upstream service for the proxy tests: counts requests, echoes what it received, and
//! can stream, stall, and speak WebSocket. Nothing about it is mocked: it is a hyper server on
//! a loopback socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

type Body = BoxBody<Bytes, Infallible>;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
}

#[derive(Default)]
pub struct UpstreamState {
    pub requests: AtomicU64,
    pub last: Mutex<Option<Seen>>,
    /// `/chunks`: each notification releases the next chunk.
    pub release_chunk: Notify,
    /// `/stall` waits on this forever (unless notified).
    pub unstall: Notify,
    /// Notified when a `/stall` request has arrived.
    pub stalled: Notify,
    /// `/download` responses whose reader went away before the end (the gateway dropped the
    /// upstream connection), and a notification for each.
    pub downloads_aborted: AtomicU64,
    pub download_aborted: Notify,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
    pub fn last(&self) -> Seen {
        self.state.last.lock().unwrap().clone().expect("the upstream saw a request")
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into()).boxed()
}

/// Starts the upstream on a free loopback port.
pub async fn start() -> Upstream {
    start_with(None).await
}

/// Starts an HTTPS upstream (ALPN h2 and http/1.1) with a certificate and key in PEM.
pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Upstream {
    use rustls::pki_types::pem::PemObject;
    let certs =
        rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
}

async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(UpstreamState::default());
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (st, tls) = (st.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(st.clone(), req));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else { return };
                        let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    Upstream { addr, state }
}

async fn handle(st: Arc<UpstreamState>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    *st.last.lock().unwrap() = Some(Seen {
        version: req.version(),
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_string();
    let resp = if path.ends_with("/ws") {
        websocket_echo(&mut req)
    } else if path.ends_with("/upload") {
        // Count the bytes as they stream in, never holding the whole body.
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map(|f| f.into_data()) {
                n += data.map(|d| d.len() as u64).unwrap_or(0);
            }
        }
        Response::new(full(n.to_string()))
    } else if path.ends_with("/download") {
        let size: usize =
            req.uri().query().and_then(|q| q.strip_prefix("size=")).and_then(|s| s.parse().ok()).unwrap_or(0);
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let st = st.clone();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len());
                if tx.send(Ok(Frame::data(chunk.slice(..n)))).await.is_err() {
                    st.downloads_aborted.fetch_add(1, Ordering::SeqCst);
                    st.download_aborted.notify_one();
                    return;
                }
                left -= n;
            }
        });
        Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))))
    } else if path.ends_with("/chunks") {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let st = st.clone();
        tokio::spawn(async move {
            for i in 0..3 {
                if tx.send(Ok(Frame::data(Bytes::from(format!("chunk-{i};"))))).await.is_err() {
                    return;
                }
                st.release_chunk.notified().await;
            }
        });
        Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))))
    } else if path.ends_with("/stall") {
        let release = st.unstall.notified();
        st.stalled.notify_one();
        release.await;
        Response::new(full("late"))
    } else if path.ends_with("/own-cors") {
        // An upstream that sets CORS headers of its own (and a Vary).
        let mut r = Response::new(full("ok"));
        r.headers_mut().insert("access-control-allow-origin", http::HeaderValue::from_static("*"));
        r.headers_mut().insert("access-control-allow-credentials", http::HeaderValue::from_static("true"));
        r.headers_mut().insert("vary", http::HeaderValue::from_static("Accept-Encoding"));
        r
    } else {
        Response::new(full("ok"))
    };
    Ok(resp)
}

fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn websocket_echo(req: &mut Request<Incoming>) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key").map(|k| derive_accept_key(k.as_bytes())) else {
        let mut r = Response::new(full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    return;
                }
            } else if msg.is_close() {
                return;
            }
        }
    });
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("sec-websocket-accept", key.parse().unwrap());
    r
}
