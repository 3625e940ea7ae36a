//! Hard limits for slow readers: a client that stops reading loses its connection (HTTP/1.1)
//! or its stream (HTTP/2) after `server.write_timeout` without progress, and with it the
//! upstream connection its response was streaming from.
//!
//! Owns: [`Deadlined`], the connection's socket with a deadline on every write that makes no
//! progress (the kernel buffers are full because the client does not read: the write fails,
//! the connection closes); and, for HTTP/2, where one stream can sit at a zero flow-control
//! window while the connection itself is read fine, [`StreamExec`] (hyper's executor for
//! HTTP/2 streams: each stream runs as a task that is dropped, sending `RST_STREAM(CANCEL)`,
//! once its response has been waiting for window longer than the limit) with [`watch_body`]
//! (marks when a response body is waiting for hyper to take its next frame). Both are counted
//! in `entra_gateway_connection_events_total` (`write_timeout`, `stream_write_timeout`).
//! Must not: look at requests, or cut a response that waits on its upstream (that is the
//! route's `timeout`), not on the client.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::conn::ConnEvents;
use crate::body::{Body, BoxError};

// === impl Deadlined ===

/// A connection's I/O whose writes fail with `TimedOut` when one makes no progress for
/// `timeout`.
pub struct Deadlined<S> {
    io: S,
    timeout: Duration,
    /// Armed while a write is pending; allocated at the first pending write.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    events: ConnEvents,
}

impl<S> Deadlined<S> {
    pub fn new(io: S, timeout: Duration, events: ConnEvents) -> Deadlined<S> {
        Deadlined { io, timeout, sleep: None, armed: false, events }
    }

    /// After a pending write: arms the deadline (once per stall) and fails when it has passed.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let deadline = Instant::now() + self.timeout;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        ready!(sleep.as_mut().poll(cx));
        self.events.event("write_timeout");
        tracing::debug!("a client read nothing for server.write_timeout; connection closed");
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")))
    }

    fn progressed<T>(&mut self, r: Poll<T>) -> Poll<T> {
        if r.is_ready() {
            self.armed = false;
        }
        r
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlined<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlined<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => this.stalled(cx).map(|r| r.map(|()| 0)),
            ready => this.progressed(ready),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.stalled(cx).map(|r| r.map(|()| 0)),
            ready => this.progressed(ready),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.stalled(cx),
            ready => this.progressed(ready),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Pending => this.stalled(cx),
            ready => this.progressed(ready),
        }
    }
}

// === HTTP/2 streams ===

/// Whether (and since when) a stream's response body waits for hyper to take a frame: hyper
/// takes the next one only when the client's flow-control window has room.
struct Waiting {
    base: Instant,
    /// Milliseconds after `base`, plus one; 0: not waiting.
    since: AtomicU64,
}

impl Waiting {
    fn mark(&self) {
        self.since.store(self.base.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }

    fn clear(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    fn since(&self) -> Option<Instant> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.base + Duration::from_millis(ms - 1)),
        }
    }
}

tokio::task_local! {
    /// The current HTTP/2 stream's waiting mark (set by [`StreamExec`] around each stream task).
    static STREAM: Arc<Waiting>;
}

/// hyper's executor for HTTP/2 streams: each stream is a task on the current runtime, dropped
/// (and so reset) once its response has waited for window longer than `timeout`.
#[derive(Clone)]
pub struct StreamExec {
    timeout: Duration,
    events: ConnEvents,
}

impl StreamExec {
    pub fn new(timeout: Duration, events: ConnEvents) -> StreamExec {
        StreamExec { timeout, events }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let waiting = Arc::new(Waiting { base: Instant::now(), since: AtomicU64::new(0) });
        let stream = Box::pin(STREAM.scope(waiting.clone(), fut));
        tokio::spawn(Guarded { stream, waiting, sleep: None, timeout: self.timeout, events: self.events.clone() });
    }
}

/// A stream task with its deadline: checked after every poll of the stream (which is when its
/// body marks or clears its waiting), and woken by the deadline's timer.
struct Guarded<F> {
    stream: Pin<Box<F>>,
    waiting: Arc<Waiting>,
    sleep: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    events: ConnEvents,
}

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.stream.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let Some(since) = this.waiting.since() else { return Poll::Pending };
        let deadline = since + this.timeout;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        ready!(sleep.as_mut().poll(cx));
        this.events.event("stream_write_timeout");
        tracing::debug!("an HTTP/2 stream had no flow-control window for server.write_timeout; reset");
        // Dropping the stream task resets the stream (RST_STREAM CANCEL) and drops its body,
        // and with it the upstream response it was streaming.
        Poll::Ready(())
    }
}

/// Wraps the response body of an HTTP/2 stream so that its waiting for window is seen; other
/// responses (HTTP/1.1: the socket's deadline covers them) are returned as they are.
pub fn watch_body(resp: http::Response<Body>) -> http::Response<Body> {
    let Ok(waiting) = STREAM.try_with(Arc::clone) else { return resp };
    waiting.mark();
    resp.map(|inner| http_body_util::BodyExt::boxed(Watched { inner, waiting }))
}

/// A response body that marks its stream as waiting from each frame it hands over until hyper
/// asks for the next.
struct Watched {
    inner: Body,
    waiting: Arc<Waiting>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.waiting.clear();
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
        {
            self.waiting.mark();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
