//! Connections of a listener: accept, limits, timeouts, graceful close.
//!
//! Owns: the accept loop, the cap on open connections, the TLS handshake deadline, HTTP/1.1
//! and HTTP/2 settings (header size, stream cap, PINGs), the write deadlines of `deadline`, a watchdog per connection (the first
//! request head within `header_read_timeout`, which also bounds protocol detection and a quiet
//! TLS client; graceful close after `idle_timeout` with nothing in flight), graceful close of
//! every connection when the listener stops, and counting each of these events. Must not: look
//! at requests (the handler does).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ::http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::deadline::{Deadlined, StreamExec, watch_body};
use crate::body::Body;
use crate::metrics::Metrics;

/// Largest request head (request line + headers) accepted.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Per-listener connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections may finish this long after the listener stops.
    pub grace: Duration,
    /// How long a client may take to send a request head: the first one counts from the
    /// connection (after TLS), which also bounds protocol detection and an HTTP/2 preface;
    /// later ones from the previous response (an idle HTTP/1.1 keep-alive connection).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is shut down gracefully
    /// (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// Open connections at most; one more is closed at once.
    pub max_connections: usize,
    /// Concurrent streams per HTTP/2 connection (announced in SETTINGS).
    pub h2_max_streams: u32,
    /// A response write (HTTP/1.1: the socket; HTTP/2: a stream waiting for window) that makes
    /// no progress for this long closes the connection or resets the stream.
    pub write_timeout: Duration,
}

impl ConnLimits {
    /// The public listener's limits from `server.*`.
    pub fn from_config(s: &crate::config::ServerSettings) -> ConnLimits {
        ConnLimits {
            grace: s.shutdown_grace,
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            max_connections: s.max_connections,
            h2_max_streams: s.http2_max_concurrent_streams,
            write_timeout: s.write_timeout,
        }
    }

    /// Limits for the mock and test servers: short grace, the default timeouts.
    pub fn short() -> ConnLimits {
        ConnLimits {
            grace: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            h2_max_streams: 100,
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval, and how long the answer may take before the connection is closed.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts connection events (limit hit, timeouts) and open connections, when the listener has
/// metrics (the mock and test servers do not).
#[derive(Clone, Default)]
pub struct ConnEvents {
    metrics: Option<Metrics>,
    last_limit_log: Arc<std::sync::atomic::AtomicU64>,
}

impl ConnEvents {
    pub fn new(metrics: Metrics) -> ConnEvents {
        ConnEvents { metrics: Some(metrics), last_limit_log: Arc::default() }
    }

    pub(super) fn event(&self, event: &'static str) {
        if let Some(m) = &self.metrics {
            m.connection_events_total.with_label_values(&[event]).inc();
        }
    }

    fn open(&self, delta: i64) {
        if let Some(m) = &self.metrics {
            m.open_connections.add(delta);
        }
    }

    /// One warn line per second at most while connections are being turned away.
    fn limit_hit(&self, max: usize) {
        self.event("rejected_limit");
        let now = crate::clock::unix_now();
        if self.last_limit_log.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(max_connections = max, "connection limit reached; closing new connections");
        }
    }
}

/// What a connection's requests tell its watchdog: requests in flight and the last activity.
struct Activity {
    started: tokio::time::Instant,
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds after `started` of the last request start or end; `u64::MAX`: none yet.
    last_ms: std::sync::atomic::AtomicU64,
}

/// Why a watchdog ends a connection.
enum Expired {
    /// No complete request head since the connection was established: dropped.
    FirstRequest,
    /// Nothing in flight for `idle_timeout`: shut down gracefully.
    Idle,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: tokio::time::Instant::now(),
            in_flight: Default::default(),
            last_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
        })
    }

    fn touch(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// A request started: while it is in flight the connection is not idle, so only the first
    /// one needs the time (it ends the first-request deadline).
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if self.last_ms.load(Ordering::Relaxed) == u64::MAX {
            self.touch();
        }
    }

    fn end(&self) {
        self.touch();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Completes when the connection has outlived its first-request or idle deadline.
    async fn expired(&self, limits: &ConnLimits) -> Expired {
        loop {
            let last = self.last_ms.load(Ordering::Relaxed);
            if last == u64::MAX {
                tokio::time::sleep_until(self.started + limits.header_read_timeout).await;
                if self.last_ms.load(Ordering::Relaxed) == u64::MAX {
                    return Expired::FirstRequest;
                }
                continue;
            }
            let deadline = self.started + Duration::from_millis(last) + limits.idle_timeout;
            if tokio::time::Instant::now() >= deadline && self.in_flight.load(Ordering::Relaxed) == 0 {
                return Expired::Idle;
            }
            let next = deadline.max(tokio::time::Instant::now() + Duration::from_millis(10));
            tokio::time::sleep_until(next).await;
        }
    }
}

/// Ends the in-flight count of a request when its handler completes (or is dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Accepts connections on `listener` (over TLS with `tls`) and serves them with `handler`
/// until `stop` turns true; then stops accepting, asks every connection to finish gracefully,
/// and waits up to `grace` for them.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
    limits: ConnLimits,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_with_events(listener, tls, stop, limits, ConnEvents::default(), handler).await
}

/// [`serve`], counting connection events in `events`.
pub async fn serve_with_events<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
    events: ConnEvents,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let worker = Worker::new(tls, stop.clone(), limits, events.clone(), handler);
    while let Some(accepted) = accept(&listener, &slots, &mut stop, &limits, &events).await {
        worker.spawn(accepted);
    }
    listener_closed(listener);
    worker.drain().await;
}

/// Serves `listener` on `workers` threads, each running its own single-threaded runtime, like
/// nginx's worker processes: a connection, the requests on it and the upstream connections
/// they use all stay on one thread, so no request wakes another thread. One acceptor hands each
/// new connection to the worker with the fewest open ones (connections are long-lived; a
/// kernel-chosen worker can end up with most of them). `handler_for(i)` makes worker `i`'s
/// handler; the connection limit is shared. Completes when every worker has drained (see
/// [`serve`]).
pub async fn serve_on_workers<M, H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
    events: ConnEvents,
    workers: usize,
    handler_for: M,
) where
    M: Fn(usize) -> H,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut queues = Vec::with_capacity(workers);
    let mut finished = Vec::with_capacity(workers);
    for i in 0..workers.max(1) {
        let (queue, mut incoming) = tokio::sync::mpsc::unbounded_channel::<Handoff>();
        let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
        let open = Arc::new(AtomicUsize::new(0));
        let (tls, stop, events, handler, counted) =
            (tls.clone(), stop.clone(), events.clone(), handler_for(i), open.clone());
        let run = move || {
            // Log lines stay on this thread until a batch is full, its timer fires, or it ends.
            crate::logging::buffer_this_thread();
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(async move {
                    tokio::spawn(async {
                        let mut every = tokio::time::interval(crate::logging::FLUSH_EVERY);
                        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            every.tick().await;
                            crate::logging::flush_this_thread();
                        }
                    });
                    let worker = Worker::new(tls, stop, limits, events, handler);
                    while let Some(handoff) = incoming.recv().await {
                        match tokio::net::TcpStream::from_std(handoff.stream) {
                            Ok(stream) => worker.spawn_counted((stream, handoff.peer, handoff.slot), counted.clone()),
                            Err(e) => tracing::warn!(error = %e, worker = i, "cannot take over a connection"),
                        }
                    }
                    worker.drain().await;
                }),
                Err(e) => tracing::error!(error = %e, worker = i, "cannot start a worker runtime"),
            }
            crate::logging::flush_this_thread();
            let _ = done.send(());
        };
        match std::thread::Builder::new().name(format!("entra-gateway-worker-{i}")).spawn(run) {
            Ok(_) => {
                queues.push((queue, open));
                finished.push(finished_rx);
            }
            Err(e) => tracing::error!(error = %e, worker = i, "cannot start a worker thread"),
        }
    }
    while let Some((stream, peer, slot)) = accept(&listener, &slots, &mut stop, &limits, &events).await {
        let Some((queue, open)) = queues.iter().min_by_key(|(_, open)| open.load(Ordering::Relaxed)) else { break };
        let Ok(stream) = stream.into_std() else { continue };
        open.fetch_add(1, Ordering::Relaxed);
        if queue.send(Handoff { stream, peer, slot }).is_err() {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
    listener_closed(listener);
    drop(queues);
    for worker in finished {
        let _ = worker.await;
    }
}

/// A connection on its way from the acceptor to a worker.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: tokio::sync::OwnedSemaphorePermit,
}

type Accepted = (tokio::net::TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit);

/// The next connection within the limit, or `None` once `stop` is set.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
    stop: &mut watch::Receiver<bool>,
    limits: &ConnLimits,
    events: &ConnEvents,
) -> Option<Accepted> {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(stop) => return None,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            events.limit_hit(limits.max_connections);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        return Some((stream, peer, slot));
    }
}

/// Closes the listening socket (new connections are refused from here on), then says so.
fn listener_closed(listener: TcpListener) {
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    drop(listener);
    tracing::info!(addr = %local, "listener closed");
}

/// Serves the connections given to it (on the runtime it runs on) and drains them at the end.
struct Worker<H> {
    builder: Arc<auto::Builder<StreamExec>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
    limits: ConnLimits,
    events: ConnEvents,
    handler: H,
    tracker: tokio_util::task::TaskTracker,
}

impl<H, F> Worker<H>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    fn new(
        tls: Option<tokio_rustls::TlsAcceptor>,
        stop: watch::Receiver<bool>,
        limits: ConnLimits,
        events: ConnEvents,
        handler: H,
    ) -> Worker<H> {
        let mut builder = auto::Builder::new(StreamExec::new(limits.write_timeout, events.clone()));
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(MAX_HEADER_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .max_concurrent_streams(limits.h2_max_streams)
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
        let tracker = tokio_util::task::TaskTracker::new();
        Worker { builder: Arc::new(builder), tls, stop, limits, events, handler, tracker }
    }

    fn spawn(&self, accepted: Accepted) {
        self.serve_counted(accepted, None);
    }

    fn spawn_counted(&self, accepted: Accepted, open: Arc<AtomicUsize>) {
        self.serve_counted(accepted, Some(open));
    }

    /// Serves one connection (TLS first, when configured); `open`, counted up by the acceptor,
    /// is counted down when it ends.
    fn serve_counted(&self, (stream, peer, slot): Accepted, open: Option<Arc<AtomicUsize>>) {
        let conn = Conn {
            builder: self.builder.clone(),
            limits: self.limits,
            events: self.events.clone(),
            stop: self.stop.clone(),
        };
        let (handler, tls) = (self.handler.clone(), self.tls.clone());
        self.tracker.spawn(async move {
            let _slot = slot;
            let events = conn.events.clone();
            events.open(1);
            let stream = Deadlined::new(stream, conn.limits.write_timeout, events.clone());
            match tls {
                None => conn.serve(stream, peer, handler).await,
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => conn.serve(tls_stream, peer, handler).await,
                    Ok(Err(e)) => {
                        events.event("tls_handshake_failed");
                        tracing::debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        events.event("tls_handshake_timeout");
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                },
            }
            events.open(-1);
            if let Some(open) = open {
                open.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }

    /// Waits up to the grace period for the open connections (asked to finish by `stop`).
    async fn drain(self) {
        self.tracker.close();
        if tokio::time::timeout(self.limits.grace, self.tracker.wait()).await.is_err() {
            tracing::warn!("grace period over; closing remaining connections");
        }
    }
}

/// One accepted connection and what it needs to be served.
struct Conn {
    builder: Arc<auto::Builder<StreamExec>>,
    limits: ConnLimits,
    events: ConnEvents,
    stop: watch::Receiver<bool>,
}

impl Conn {
    /// Serves HTTP/1.1 or HTTP/2 on `io` until the client leaves, a deadline passes, or the
    /// listener stops (then gracefully).
    async fn serve<S, H, F>(mut self, io: S, peer: SocketAddr, handler: H)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let activity = Activity::new();
        let svc_activity = activity.clone();
        let svc = service_fn(move |req| {
            svc_activity.begin();
            let guard = InFlight(svc_activity.clone());
            // Boxed: hyper keeps and moves the service's future, and a request future is
            // kilobytes (the handler's own, then this block with it twice); on the heap it is
            // a pointer (measured with `route_public`'s, boxed in `http::public`: about 3% of a
            // proxied request's CPU, in `memmove`).
            let fut = Box::pin(handler(req, peer));
            async move {
                let resp = watch_body(fut.await);
                drop(guard);
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let expired = activity.expired(&self.limits);
        tokio::pin!(expired);
        let mut closing = false;
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                why = &mut expired, if !closing => match why {
                    Expired::FirstRequest => {
                        self.events.event("first_request_timeout");
                        tracing::debug!(%peer, "no request head in time; connection dropped");
                        return;
                    }
                    Expired::Idle => {
                        self.events.event("idle_timeout");
                        tracing::debug!(%peer, "idle connection closed");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                },
                () = stopped(&mut self.stop), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Completes once the stop flag is set (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
