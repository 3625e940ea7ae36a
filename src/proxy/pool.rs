//! One worker's keep-alive connections to plain-HTTP (`http://`) upstreams, HTTP/1.1.
//!
//! Owns: opening connections (connect timeout, `TCP_NODELAY`), keeping them per upstream
//! authority, handing a ready one to the next request (most recently used first), and sending
//! a request again on a new connection when a kept one turned out closed before the request
//! was written. A connection goes back to the list as soon as its request is sent and is
//! chosen again once its response has ended (hyper says so through `is_ready`): no task per
//! request, unlike hyper-util's pooled client, which spawns one to wait for that moment. A
//! connection unused for the idle timeout is dropped at the next checkout for its upstream;
//! one the upstream closes (most close idle connections within a minute) is dropped there too.
//! Must not: rewrite requests (see [`super::headers`]) or speak TLS or HTTP/2 (`https://`
//! upstreams use hyper-util's client, which negotiates both).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// Kept connections per upstream and worker; one more is closed when its response ends.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// Why a request could not be sent (the text carries the cause chain).
#[derive(Debug)]
pub struct SendError(pub String);

/// A kept connection.
struct Kept {
    sender: SendRequest<Incoming>,
    /// When its last request was sent.
    used: Instant,
}

/// The connections to one upstream, least recently used first.
struct Conns {
    list: Vec<Kept>,
    /// When every connection of the list was last checked for closed or expired.
    swept: Instant,
}

/// How often a checkout looks at every connection of its upstream's list.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One worker's connections, by upstream authority.
pub struct Http1Pool {
    /// Keyed by the authority's text as the route spells it (one route, one spelling), with
    /// foldhash: `Authority` itself hashes byte by byte, lowercasing each, one hasher call per
    /// byte on every request.
    kept: Mutex<HashMap<Box<str>, Conns, foldhash::fast::RandomState>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Http1Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Http1Pool {
        Http1Pool { kept: Mutex::default(), connect_timeout, idle_timeout }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `authority`. A kept connection found closed
    /// before the request was written is dropped and the request goes out once more, on a new
    /// connection (so at most two attempts).
    pub async fn send(
        &self,
        authority: &Authority,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, SendError> {
        // One clock read per request: the checkout's idle check and the kept connection's time.
        let now = Instant::now();
        let mut reuse = true;
        loop {
            let checked_out = if reuse { self.checkout(authority, now) } else { None };
            let (mut sender, kept) = match checked_out {
                Some(sender) => (sender, true),
                // Boxed: connecting is rare, and its future (the TCP connect and hyper's
                // handshake) would otherwise make every request's future larger to move.
                None => (Box::pin(self.connect(authority)).await?, false),
            };
            let sent = sender.try_send_request(req);
            self.keep(authority, sender, now);
            match sent.await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(back) if kept => (req, reuse) = (back, false),
                    _ => return Err(SendError(crate::outbound::error_chain(&e.into_error()))),
                },
            }
        }
    }

    /// The most recently used ready connection to `authority`. Closed and expired ones met on
    /// the way are dropped; every connection of the list is looked at once a second
    /// ([`SWEEP_EVERY`]), not on every request (the list holds the connections in flight too).
    fn checkout(&self, authority: &Authority, now: Instant) -> Option<SendRequest<Incoming>> {
        let mut kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let conns = kept.get_mut(authority.as_str())?;
        let fresh = |k: &Kept| !k.sender.is_closed() && now.duration_since(k.used) < self.idle_timeout;
        if now.duration_since(conns.swept) >= SWEEP_EVERY {
            conns.list.retain(fresh);
            conns.swept = now;
        }
        while let Some(i) = conns.list.iter().rposition(|k| k.sender.is_ready() || k.sender.is_closed()) {
            let candidate = conns.list.remove(i);
            if fresh(&candidate) {
                return Some(candidate.sender);
            }
        }
        None
    }

    /// Puts a connection whose request was just sent (at `now`) back on the list.
    fn keep(&self, authority: &Authority, sender: SendRequest<Incoming>, now: Instant) {
        if sender.is_closed() {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let conns = match kept.get_mut(authority.as_str()) {
            Some(conns) => conns,
            None => kept.entry(authority.as_str().into()).or_insert_with(|| Conns { list: Vec::new(), swept: now }),
        };
        if conns.list.len() < MAX_IDLE_PER_UPSTREAM {
            conns.list.push(Kept { sender, used: now });
        }
    }

    /// A new connection; its I/O runs in a task of this worker until either side closes it.
    async fn connect(&self, authority: &Authority) -> Result<SendRequest<Incoming>, SendError> {
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let stream =
            match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect((host, port))).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(SendError(format!("connect to {authority}: {e}"))),
                Err(_) => return Err(SendError(format!("connect to {authority}: timed out"))),
            };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError(crate::outbound::error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection closed with an error");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that answers every request on a connection with the connection's number,
    /// closing each connection after `per_conn` answers.
    async fn numbered_upstream(per_conn: usize) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for n in 0.. {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    for _ in 0..per_conn {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let body = n.to_string();
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if s.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// A request with an empty `Incoming` body, as the gateway forwards a GET.
    async fn get(pool: &Http1Pool, authority: &Authority) -> String {
        use http_body_util::BodyExt;
        let body = empty_incoming().await;
        let req = Request::builder().uri("/x").header("host", authority.as_str()).body(body).unwrap();
        let resp = pool.send(authority, req).await.unwrap();
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    /// An `Incoming` body that is already complete (hyper builds them only for real requests).
    async fn empty_incoming() -> Incoming {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let tx = std::sync::Mutex::new(Some(tx));
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(req.into_body());
                }
                async { Ok::<_, std::convert::Infallible>(Response::new(String::new())) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), service).await;
        });
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        rx.await.unwrap()
    }

    fn pool() -> Http1Pool {
        Http1Pool::new(Duration::from_secs(5), Duration::from_secs(90))
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let addr = numbered_upstream(100).await;
        let authority: Authority = addr.to_string().parse().unwrap();
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(get(&pool, &authority).await, "0");
        }
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced_without_an_error() {
        let addr = numbered_upstream(1).await;
        let authority: Authority = addr.to_string().parse().unwrap();
        let pool = pool();
        for want in ["0", "1", "2"] {
            assert_eq!(get(&pool, &authority).await, want);
        }
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_an_error_naming_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        drop(listener);
        let req = Request::builder().uri("/").header("host", "x").body(empty_incoming().await).unwrap();
        let err = pool().send(&authority, req).await.unwrap_err();
        assert!(err.0.contains(&format!("connect to {authority}")), "{}", err.0);
    }
}
