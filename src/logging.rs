//! Process logging: the `tracing` subscriber, its format and filter, and the writer that keeps
//! log output off the request path.
//!
//! Owns: the filter (`logging.level`, `RUST_LOG` wins; `logging.access_log: false` turns the
//! per-request `access` lines off at their call site, so they cost nothing), JSON or pretty
//! output, and how lines reach stdout. Like nginx's `access_log … buffer=256k flush=200ms`, a
//! worker thread of the public listener ([`buffer_this_thread`]) formats each line into a
//! buffer of its own and hands the buffer over whole, once it holds [`BATCH`] bytes or every
//! [`FLUSH_EVERY`] ([`flush_this_thread`], from the worker's own timer), and when the worker
//! ends: no line crosses threads on its own. Other threads hand each line over as it comes
//! (they log rarely). One writer thread writes the batches to stdout every [`WRITE_EVERY`],
//! waking on its own: a hand-over wakes it early only when half the queue is taken (a burst),
//! so that under steady load no request causes a context switch, even with every thread on
//! one core. When more than [`QUEUE_BYTES`] wait (stdout blocked, a slow log collector), a
//! batch is dropped and its lines counted (`entra_gateway_log_lines_dropped_total`) rather
//! than making a request wait. Dropping [`Logging`] writes everything queued. With JSON output
//! a caller may also write a line it formats itself ([`write_json_line`]: the access line,
//! written by `http` straight into the worker's buffer, without `tracing`'s per-event
//! formatting); the line takes the same way. Must not: decide what a request logs (see
//! `http`), or spin or yield waiting for lines (the writer sleeps on a condition variable).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// A worker hands its lines over once its buffer holds this much.
pub const BATCH: usize = 256 * 1024;
/// ... or this often (its own timer), whichever comes first.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Bytes waiting for the writer thread at most; more are dropped and counted.
const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// The writer thread writes what is queued this often; it is woken earlier only when more than
/// half of [`QUEUE_BYTES`] wait, or at the end.
pub const WRITE_EVERY: Duration = Duration::from_millis(20);

/// Batches on their way to stdout.
#[derive(Default)]
struct Queue {
    batches: VecDeque<Vec<u8>>,
    bytes: usize,
    closed: bool,
}

/// What the threads that log share with the writer thread.
#[derive(Default)]
struct Shared {
    // std Mutex: each critical section is a queue push or pop, never held across a write.
    queue: Mutex<Queue>,
    ready: Condvar,
    dropped: AtomicU64,
}

impl Shared {
    /// Queues a batch of whole lines (or counts them as dropped when too much waits).
    fn push(&self, batch: Vec<u8>) {
        if batch.is_empty() {
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.bytes + batch.len() > QUEUE_BYTES || q.closed {
            drop(q);
            let lines = batch.iter().filter(|b| **b == b'\n').count().max(1);
            self.dropped.fetch_add(lines as u64, Ordering::Relaxed);
            return;
        }
        q.bytes += batch.len();
        q.batches.push_back(batch);
        let burst = q.bytes > QUEUE_BYTES / 2;
        drop(q);
        if burst {
            self.ready.notify_one();
        }
    }

    /// The writer thread: writes batches to `out` until closed and drained, looking every
    /// [`WRITE_EVERY`] (or when woken: a burst, the end).
    fn write_until_closed(&self, out: &mut impl Write) {
        loop {
            let batch = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if let Some(batch) = q.batches.pop_front() {
                        q.bytes -= batch.len();
                        break batch;
                    }
                    if q.closed {
                        return;
                    }
                    q = self.ready.wait_timeout(q, WRITE_EVERY).unwrap_or_else(|p| p.into_inner()).0;
                }
            };
            // A failed write (stdout closed) loses the batch; there is nowhere to report it.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
        }
    }

    fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.ready.notify_all();
    }
}

/// A buffering thread's lines not handed over yet.
struct Local {
    bytes: Vec<u8>,
    shared: Option<Arc<Shared>>,
}

impl Local {
    fn hand_over(&mut self) {
        if let Some(shared) = &self.shared
            && !self.bytes.is_empty()
        {
            shared.push(std::mem::replace(&mut self.bytes, Vec::with_capacity(BATCH + 1024)));
        }
    }
}

impl Drop for Local {
    /// A worker thread that ends hands over what it holds.
    fn drop(&mut self) {
        self.hand_over();
    }
}

thread_local! {
    /// `Some` on a thread that buffers its lines ([`buffer_this_thread`]).
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// The queue of the process's subscriber when it writes JSON: set once by [`init`], with the
/// subscriber (itself process-wide), never changed; unset, [`write_json_line`] declines.
static JSON_QUEUE: OnceLock<Arc<Shared>> = OnceLock::new();

/// Writes one line that `build` appends (JSON, ending in `\n`) the way the subscriber's lines
/// go: into this thread's buffer, or to the queue on a thread that does not buffer. Returns
/// false, writing nothing, when the process does not log JSON through [`init`] (the caller
/// logs through `tracing` instead).
pub fn write_json_line(build: impl FnOnce(&mut Vec<u8>)) -> bool {
    match JSON_QUEUE.get() {
        Some(shared) => {
            append_line(shared, build);
            true
        }
        None => false,
    }
}

/// Appends the line `build` writes to this thread's buffer (handing the buffer over once it
/// holds [`BATCH`] bytes), or queues it alone on a thread that does not buffer.
fn append_line(shared: &Arc<Shared>, build: impl FnOnce(&mut Vec<u8>)) {
    let unbuffered = LOCAL.with(|l| match l.borrow_mut().as_mut() {
        Some(local) => {
            build(&mut local.bytes);
            if local.shared.is_none() {
                local.shared = Some(shared.clone());
            }
            if local.bytes.len() >= BATCH {
                local.hand_over();
            }
            None
        }
        None => Some(build),
    });
    if let Some(build) = unbuffered {
        let mut line = Vec::new();
        build(&mut line);
        shared.push(line);
    }
}

/// From now on this thread buffers its log lines (a worker of the public listener; it must
/// call [`flush_this_thread`] every [`FLUSH_EVERY`] and before it ends).
pub fn buffer_this_thread() {
    LOCAL.with(|l| *l.borrow_mut() = Some(Local { bytes: Vec::with_capacity(BATCH + 1024), shared: None }));
}

/// Hands this thread's buffered lines to the writer thread.
pub fn flush_this_thread() {
    LOCAL.with(|l| {
        if let Some(local) = l.borrow_mut().as_mut() {
            local.hand_over();
        }
    });
}

/// The subscriber's writer: each event's line goes to this thread's buffer, or straight to the
/// queue on a thread that does not buffer.
#[derive(Clone)]
struct LogWriter(Arc<Shared>);

/// One line being written (the formatter writes a whole line per event).
struct LineSink<'a>(&'a Arc<Shared>);

impl Write for LineSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        append_line(self.0, |out| out.extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineSink<'a>;
    fn make_writer(&'a self) -> LineSink<'a> {
        LineSink(&self.0)
    }
}

/// Keeps the writer thread; dropping it writes what is queued and ends the thread.
pub struct Logging {
    shared: Option<Arc<Shared>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Logging {
    /// How many lines were dropped because the writer could not keep up.
    pub fn dropped_lines(&self) -> DroppedLines {
        DroppedLines(self.shared.clone())
    }
}

impl Drop for Logging {
    fn drop(&mut self) {
        flush_this_thread();
        if let Some(shared) = &self.shared {
            shared.close();
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// A reader of the dropped-lines count, for the metrics.
#[derive(Clone, Default)]
pub struct DroppedLines(Option<Arc<Shared>>);

impl DroppedLines {
    pub fn get(&self) -> u64 {
        self.0.as_ref().map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }
}

/// Installs the process's subscriber (once; later calls keep the first one).
pub fn init(level: &str, format: LogFormat, access_log: bool) -> Logging {
    use std::io::IsTerminal;
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    if !access_log && let Ok(off) = "access=off".parse() {
        filter = filter.add_directive(off);
    }
    let terminal = std::io::stdout().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !terminal,
    };
    let shared = Arc::new(Shared::default());
    let writer = LogWriter(shared.clone());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(terminal).with_writer(writer);
    let installed = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
    if installed.is_err() {
        return Logging { shared: None, writer: None };
    }
    if json {
        let _ = JSON_QUEUE.set(shared.clone());
    }
    let for_thread = shared.clone();
    let thread = std::thread::Builder::new()
        .name("entra-gateway-log".into())
        .spawn(move || for_thread.write_until_closed(&mut std::io::stdout()))
        .ok();
    Logging { shared: Some(shared), writer: thread }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink_write(shared: &Arc<Shared>, line: &str) {
        LineSink(shared).write_all(line.as_bytes()).unwrap();
    }

    fn queued(shared: &Shared) -> Vec<Vec<u8>> {
        shared.queue.lock().unwrap().batches.iter().cloned().collect()
    }

    #[test]
    fn a_buffering_thread_hands_over_whole_batches_and_others_each_line() {
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        std::thread::spawn(move || {
            let shared = worker;
            {
                buffer_this_thread();
                sink_write(&shared, "a\n");
                sink_write(&shared, "b\n");
                assert!(queued(&shared).is_empty(), "nothing crosses threads per line");
                flush_this_thread();
                assert_eq!(queued(&shared), [b"a\nb\n".to_vec()]);
                let long = "x".repeat(BATCH) + "\n";
                sink_write(&shared, &long);
                assert_eq!(queued(&shared).len(), 2, "a full buffer is handed over at once");
                sink_write(&shared, "last\n");
                // The thread ends: what it holds is handed over.
            }
        })
        .join()
        .unwrap();
        assert_eq!(queued(&shared).last().unwrap(), b"last\n");
        sink_write(&shared, "unbuffered\n");
        assert_eq!(queued(&shared).last().unwrap(), b"unbuffered\n");
    }

    #[test]
    fn beyond_the_queue_limit_batches_are_dropped_and_their_lines_counted() {
        let shared = Shared::default();
        let batch = vec![b'\n'; 1024 * 1024];
        for _ in 0..8 {
            shared.push(batch.clone());
        }
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 0);
        shared.push(b"one\ntwo\n".to_vec());
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 2);
        shared.close();
        shared.push(b"late\n".to_vec());
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 3, "after close nothing is queued");
    }

    /// A `Write` the test can read while the writer thread holds it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_writer_drains_small_batches_on_its_own_and_everything_at_the_end() {
        let shared = Arc::new(Shared::default());
        let sink = Sink::default();
        let (for_thread, mut out) = (shared.clone(), sink.clone());
        let writer = std::thread::spawn(move || for_thread.write_until_closed(&mut out));
        // Below half the queue: no wake-up; the writer's own round writes it.
        shared.push(b"quiet\n".to_vec());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the writer never wrote the batch");
            std::thread::yield_now();
        }
        assert_eq!(*sink.0.lock().unwrap(), b"quiet\n");
        shared.push(b"last\n".to_vec());
        shared.close();
        writer.join().unwrap();
        assert_eq!(*sink.0.lock().unwrap(), b"quiet\nlast\n", "closing writes what is queued");
    }
}
