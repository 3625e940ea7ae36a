//! The floor of the gateway's HTTP stack: a reverse proxy built from the same parts (hyper 1's
//! HTTP/1 server through hyper-util's auto builder with its header-read timer, one
//! single-threaded tokio runtime per worker thread, keep-alive HTTP/1 connections to the upstream
//! kept per worker, the route timeout around the upstream call, a boxed response body, mimalloc)
//! and none of its request logic: no token, no routing, no header rewriting, no access log, no
//! metrics.
//!
//! Owns: nothing of the gateway; `benches/compare.py` runs it beside nginx and the gateway so
//! that each run shows what hyper and tokio alone cost per request on that machine, and so how
//! much of the gateway's cost is its own work. Must not: be used as a proxy (it trusts every
//! request and forwards it as it came).
//!
//! `cargo build --release --example hyper_floor`, then
//! `hyper_floor <listen addr> <upstream host:port> [workers]`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// One worker's upstream connections (in flight ones too; a ready one is taken).
type Conns = Arc<Mutex<Vec<SendRequest<Incoming>>>>;

/// As the gateway's default route timeout.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: hyper_floor <listen addr> <upstream host:port> [workers]");
        return;
    };
    let workers: usize = args.get(3).and_then(|w| w.parse().ok()).unwrap_or(1);
    let listener = std::net::TcpListener::bind(listen).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let upstream: &'static str = Box::leak(upstream.clone().into_boxed_str());
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let listener = listener.try_clone().expect("listener");
            std::thread::spawn(move || worker(listener, upstream))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// One worker: its own runtime, accepting from the shared socket.
fn worker(listener: std::net::TcpListener, upstream: &'static str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
        let builder = Arc::new(builder);
        let conns = Conns::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let (builder, conns) = (builder.clone(), conns.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let forwarding = Box::pin(forward(conns.clone(), upstream, req));
                    async move { Ok::<_, std::convert::Infallible>(forwarding.await.unwrap_or_else(|_| bad_gateway())) }
                });
                let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
            });
        }
    });
}

/// The request, origin-form and with the upstream's `Host`, to the upstream.
async fn forward(
    conns: Conns,
    upstream: &'static str,
    req: Request<Incoming>,
) -> Result<Response<BoxBody<bytes::Bytes, BoxError>>, BoxError> {
    let (mut parts, body) = req.into_parts();
    parts.uri = parts.uri.path_and_query().map_or("/", |p| p.as_str()).parse()?;
    parts.headers.insert(header::HOST, HeaderValue::from_static(upstream));
    let sent = tokio::time::timeout(UPSTREAM_TIMEOUT, send(&conns, upstream, Request::from_parts(parts, body)));
    let resp = sent.await??;
    Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
}

fn bad_gateway() -> Response<BoxBody<bytes::Bytes, BoxError>> {
    let mut resp = Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
    resp
}

/// On a ready kept connection, or a new one.
async fn send(conns: &Conns, upstream: &'static str, req: Request<Incoming>) -> Result<Response<Incoming>, BoxError> {
    let ready = {
        let mut list = conns.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().rposition(|s| s.is_ready()).map(|i| list.swap_remove(i))
    };
    let mut sender = match ready {
        Some(sender) => sender,
        None => {
            let stream = tokio::net::TcpStream::connect(upstream).await?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn.with_upgrades());
            sender
        }
    };
    let response = sender.send_request(req);
    conns.lock().unwrap_or_else(|p| p.into_inner()).push(sender);
    Ok(response.await?)
}
