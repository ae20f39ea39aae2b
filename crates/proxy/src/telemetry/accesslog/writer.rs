//! The access log's handle and its writer threads: lines rendered on the caller's thread, queued
//! to a thread per destination, dropped and counted when the writer falls behind.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;

use super::{
    AccessLogConfig, AccessLogError, AccessLogFormat, AccessLogRecord, STDERR_PATH, STDOUT_PATH,
};

/// How many rendered lines may wait for the writer before new ones are dropped.
const CHANNEL_CAPACITY: usize = 8192;

/// How long the writer lets lines gather after the first one arrives. At 8,192 queued lines it
/// holds up to 8 million lines a second, far more than one proxy serves.
const BATCH_WINDOW: Duration = Duration::from_millis(1);

/// A cheap-to-clone handle to the access log. [`log`](Self::log) renders the line on the caller's thread
/// and queues it for a writer thread; it never blocks. The format and destination can be swapped at any
/// time with [`reconfigure`](Self::reconfigure) (mesh config edits); records logged concurrently use
/// either the old or the new configuration, never a mix.
#[derive(Clone, Debug)]
pub struct AccessLogger {
    inner: Arc<LoggerInner>,
}

#[derive(Debug)]
struct LoggerInner {
    state: ArcSwap<LoggerState>,
    dropped: Counter,
}

#[derive(Debug)]
struct LoggerState {
    config: AccessLogConfig,
    format: AccessLogFormat,
    /// `None` = logging off.
    sink: Option<Arc<Sink>>,
}

/// One destination and its writer thread. The thread exits after draining its queue once the last
/// `Sink` (and so the last sender) is dropped, e.g. after a reconfigure to another path.
#[derive(Debug)]
struct Sink {
    path: PathBuf,
    tx: SyncSender<Msg>,
}

enum Msg {
    Line(String),
    Flush(mpsc::Sender<()>),
}

impl AccessLogger {
    /// Starts a logger. Fails if the format does not compile or the file cannot be opened for appending.
    pub fn new(config: AccessLogConfig) -> Result<Self, AccessLogError> {
        Self::with_drop_counter(config, Counter::default())
    }

    /// Like [`new`](Self::new), counting dropped lines in `dropped` (e.g.
    /// [`Metrics::accesslog_dropped`](crate::telemetry::Metrics::accesslog_dropped)).
    pub fn with_drop_counter(
        config: AccessLogConfig,
        dropped: Counter,
    ) -> Result<Self, AccessLogError> {
        let state = build_state(config, None, &dropped)?;
        Ok(AccessLogger {
            inner: Arc::new(LoggerInner {
                state: ArcSwap::from_pointee(state),
                dropped,
            }),
        })
    }

    /// A logger that writes nothing.
    pub fn disabled() -> Self {
        let dropped = Counter::default();
        let state = LoggerState {
            config: AccessLogConfig::off(),
            format: AccessLogFormat::istio_default_text(),
            sink: None,
        };
        AccessLogger {
            inner: Arc::new(LoggerInner {
                state: ArcSwap::from_pointee(state),
                dropped,
            }),
        }
    }

    /// Applies a new configuration. On error the previous configuration stays in effect, so the caller
    /// can report the problem and keep logging. An unchanged path keeps the same open file and thread.
    pub fn reconfigure(&self, config: AccessLogConfig) -> Result<(), AccessLogError> {
        let current = self.inner.state.load();
        if current.config == config {
            return Ok(());
        }
        let state = build_state(config, current.sink.as_ref(), &self.inner.dropped)?;
        self.inner.state.store(Arc::new(state));
        Ok(())
    }

    /// The configuration in effect.
    pub fn config(&self) -> AccessLogConfig {
        self.inner.state.load().config.clone()
    }

    /// False when logging is off: the data path can skip building records.
    pub fn is_enabled(&self) -> bool {
        self.inner.state.load().sink.is_some()
    }

    /// Whether records must carry [`AccessLogRecord::request_headers`] for the current format.
    pub fn needs_request_headers(&self) -> bool {
        self.inner.state.load().format.needs_request_headers()
    }

    /// Whether records must carry [`AccessLogRecord::response_headers`] for the current format.
    pub fn needs_response_headers(&self) -> bool {
        self.inner.state.load().format.needs_response_headers()
    }

    /// Renders and queues one line. Never blocks; if the writer is behind, the line is dropped and counted.
    pub fn log(&self, rec: AccessLogRecord) {
        let state = self.inner.state.load();
        let Some(sink) = &state.sink else { return };
        let mut line = String::with_capacity(384);
        state.format.render(&rec, &mut line);
        match sink.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.inner.dropped.inc();
            }
        }
    }

    /// Lines dropped so far (queue full or write errors).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.get()
    }

    /// The counter behind [`dropped`](Self::dropped), to expose as a metric.
    pub fn dropped_counter(&self) -> Counter {
        self.inner.dropped.clone()
    }

    /// Waits (blocking the calling thread, at most `timeout`) until every line queued so far to the
    /// current destination has been written and flushed. For shutdown and tests; never call it on the
    /// data path. Returns false on timeout.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let state = self.inner.state.load_full();
        let Some(sink) = &state.sink else { return true };
        let (ack_tx, ack_rx) = mpsc::channel();
        // The marker must queue behind the lines it waits for, so retry while the queue is full rather
        // than dropping it; a writer stuck on a blocked pipe must not hang the caller past the deadline.
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match sink.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        ack_rx.recv_timeout(remaining).is_ok()
    }
}

fn build_state(
    config: AccessLogConfig,
    current_sink: Option<&Arc<Sink>>,
    dropped: &Counter,
) -> Result<LoggerState, AccessLogError> {
    let format = AccessLogFormat::parse(config.format.as_deref(), config.encoding)?;
    let sink = match &config.path {
        None => None,
        Some(path) => match current_sink {
            Some(s) if s.path == *path => Some(s.clone()),
            _ => Some(Arc::new(open_sink(path, dropped.clone())?)),
        },
    };
    Ok(LoggerState {
        config,
        format,
        sink,
    })
}

fn open_sink(path: &Path, dropped: Counter) -> Result<Sink, AccessLogError> {
    // stdout/stderr may be sockets or ttys that cannot be re-opened through /dev; use the streams.
    let writer: Box<dyn io::Write + Send> = if path == Path::new(STDOUT_PATH) {
        Box::new(io::stdout())
    } else if path == Path::new(STDERR_PATH) {
        Box::new(io::stderr())
    } else {
        Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| AccessLogError::Open {
                    path: path.to_path_buf(),
                    source,
                })?,
        )
    };
    let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
    let thread_path = path.to_path_buf();
    std::thread::Builder::new()
        .name("sluice-accesslog".into())
        .spawn(move || run_writer(rx, writer, &thread_path, &dropped))
        .map_err(AccessLogError::Thread)?;
    Ok(Sink {
        path: path.to_path_buf(),
        tx,
    })
}

fn run_writer(
    rx: Receiver<Msg>,
    writer: Box<dyn io::Write + Send>,
    path: &Path,
    dropped: &Counter,
) {
    let mut w = BufWriter::with_capacity(64 * 1024, writer);
    let mut warned = false;
    let mut report = |e: io::Error, lines: u64| {
        dropped.inc_by(lines);
        // Warn once per sink: a full disk would otherwise flood the proxy's own log.
        if !warned {
            warned = true;
            tracing::warn!(path = %path.display(), error = %e, "access log write failed; dropping lines");
        }
    };
    let mut pending_acks = Vec::new();
    while let Ok(first) = rx.recv() {
        // Let a busy proxy's lines gather for a moment: one wake-up and one write per batch, not
        // per line (Envoy flushes its access log files once a second; this is far shorter).
        std::thread::sleep(BATCH_WINDOW);
        let mut msg = Some(first);
        // Take everything already queued before flushing, so a busy proxy writes in large batches.
        while let Some(m) = msg.take().or_else(|| rx.try_recv().ok()) {
            match m {
                Msg::Line(line) => {
                    if let Err(e) = w.write_all(line.as_bytes()) {
                        report(e, 1);
                    }
                }
                Msg::Flush(ack) => pending_acks.push(ack),
            }
        }
        if let Err(e) = w.flush() {
            report(e, 0);
        }
        for ack in pending_acks.drain(..) {
            let _ = ack.send(());
        }
    }
    let _ = w.flush();
}
