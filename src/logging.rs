//! Process logging: the `tracing` subscriber, its format and filter, and the writer that keeps
//! log output off the request path.
//!
//! Owns: the filter (`logging.level`, `RUST_LOG` wins; `logging.access_log: false` turns the
//! per-request `access` lines off at their call site, so they cost nothing), JSON or pretty
//! output, and a writer thread behind a bounded queue: a worker formats its line and hands it
//! over; when the queue is full the line is dropped and counted
//! (`entra_gateway_log_lines_dropped_total`) rather than making a request wait for stdout. The
//! thread writes whole lines in batches of at most [`WRITE_BATCH`] bytes. Must not: decide what
//! a request logs (see `http`).

use std::io::Write;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines waiting for the writer thread at most; more are dropped and counted.
const QUEUE_LINES: usize = 16 * 1024;
/// Largest single write to stdout: whole lines only, so that lines from concurrent writers
/// (and a pipe's atomic-write limit, 4 KiB) never interleave inside a line.
pub const WRITE_BATCH: usize = 4096;

/// Keeps the writer thread alive; dropping it flushes what is queued (at exit).
pub struct Logging {
    _guard: Option<WorkerGuard>,
    dropped: Option<ErrorCounter>,
}

impl Logging {
    /// How many lines were dropped because the writer could not keep up.
    pub fn dropped_lines(&self) -> DroppedLines {
        DroppedLines(self.dropped.clone())
    }
}

/// A reader of the dropped-lines count, for the metrics.
#[derive(Clone, Default)]
pub struct DroppedLines(Option<ErrorCounter>);

impl DroppedLines {
    pub fn get(&self) -> u64 {
        self.0.as_ref().map_or(0, |c| c.dropped_lines() as u64)
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
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUE_LINES)
        .lossy(true)
        .thread_name("entra-gateway-log")
        .finish(std::io::BufWriter::with_capacity(WRITE_BATCH, StdoutLines));
    let dropped = writer.error_counter();
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(terminal).with_writer(writer);
    let installed = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
    match installed {
        Ok(()) => Logging { _guard: Some(guard), dropped: Some(dropped) },
        Err(_) => Logging { _guard: None, dropped: None },
    }
}

/// Stdout without its own line buffering: the `BufWriter` in front of it hands over whole
/// lines, and the writer thread flushes after each batch it drains.
struct StdoutLines;

impl Write for StdoutLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}
