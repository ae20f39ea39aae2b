//! Bodies that account for themselves: request bytes counted as they pass, and a response body
//! that writes the access log line and records metrics when it ends. Shared by the outbound and
//! inbound HTTP paths.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::context::Proxy;
use crate::io::ByteCounter;
use crate::telemetry::accesslog::AccessLogRecord;
use crate::telemetry::metrics::HttpLabels;
use crate::upstream::{BoxError, ProxyBody};

/// How reading a request body from the client failed, if it did: a client's fault, which must
/// never be answered or counted as an upstream failure (outlier detection would eject a healthy
/// endpoint because of one bad client).
#[derive(Debug, Default, Clone)]
pub struct DownstreamBodyError(Arc<AtomicU8>);

/// What went wrong with the client's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownstreamFault {
    /// Malformed framing (bad chunk sizes, bare LF, more data than declared): Envoy's `DPE`.
    Protocol,
    /// The client went away mid-body: Envoy's `DC`.
    Disconnect,
}

impl DownstreamBodyError {
    /// The fault seen so far, if any.
    pub fn get(&self) -> Option<DownstreamFault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(DownstreamFault::Protocol),
            2 => Some(DownstreamFault::Disconnect),
            _ => None,
        }
    }

    fn record(&self, e: &hyper::Error) {
        let fault = match classify(e) {
            DownstreamFault::Protocol => 1,
            DownstreamFault::Disconnect => 2,
        };
        let _ = self
            .0
            .compare_exchange(0, fault, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// hyper reports a malformed HTTP/1.1 body (chunk framing) as a body error caused by an
/// `InvalidData`/`InvalidInput` I/O error; a client that goes away as an incomplete message or an
/// end-of-file. HTTP/2 stream errors are the client resetting its stream.
fn classify(e: &hyper::Error) -> DownstreamFault {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return DownstreamFault::Disconnect;
    }
    let malformed = std::iter::successors(std::error::Error::source(e), |s| s.source())
        .filter_map(|s| s.downcast_ref::<std::io::Error>())
        .any(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            )
        });
    if malformed || e.is_parse() {
        DownstreamFault::Protocol
    } else {
        DownstreamFault::Disconnect
    }
}

/// A request body that counts the bytes it passes (`%BYTES_RECEIVED%`) and remembers whether
/// the client broke it.
pub struct CountingBody {
    inner: Incoming,
    counter: ByteCounter,
    error: DownstreamBodyError,
}

impl CountingBody {
    pub fn new(inner: Incoming, counter: ByteCounter) -> Self {
        CountingBody {
            inner,
            counter,
            error: DownstreamBodyError::default(),
        }
    }

    /// The handle that says whether reading this body failed on the client's side.
    pub fn error(&self) -> DownstreamBodyError {
        self.error.clone()
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.counter.add(d.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.error.record(&e);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a [`LoggedBody`] records when it ends.
pub struct Finish {
    pub proxy: Arc<Proxy>,
    /// The access log line's record; `None` when no log is written.
    pub rec: Option<Box<AccessLogRecord>>,
    pub labels: HttpLabels,
    pub start: Instant,
    pub received: ByteCounter,
    /// The Telemetry API's access log filter and metric overrides for this request, with the
    /// request facts they read; `None` when its side has neither.
    pub telemetry_api: Option<Box<crate::telemetry::policy::RequestTelemetry>>,
    /// This hop's span, when its trace is sampled and a tracing backend is configured.
    pub span: Option<Box<crate::telemetry::spans::PendingSpan>>,
}

impl Finish {
    /// Records the request: metrics, and the access log line with its bytes and duration.
    /// `extra_received` counts request bytes beyond the body's (an upgraded tunnel's); a client
    /// that left before the end turns empty flags into `DC`.
    pub fn record(mut self, extra_received: u64, sent: u64, client_gone: bool) {
        let received = self.received.get() + extra_received;
        let duration = self.start.elapsed();
        let client_left = client_gone && self.labels.response_flags == "-";
        if client_left {
            self.labels.response_flags = Cow::Borrowed("DC");
        }
        if let Some(span) = self.span.take() {
            span.finish(
                &self.proxy,
                &self.labels.response_flags,
                received,
                sent,
                duration,
            );
        }
        let Some(api) = self.telemetry_api else {
            self.proxy
                .metrics
                .record_http(&self.labels, duration, received, sent);
            if let Some(mut rec) = self.rec {
                rec.bytes_sent = sent;
                rec.bytes_received = received;
                rec.duration = duration;
                if client_left {
                    rec.response_flags = Cow::Borrowed("DC");
                }
                self.proxy.access_log.log(*rec);
            }
            return;
        };
        let response = crate::telemetry::policy::ResponseFacts {
            code: self.labels.response_code,
            flags: &self.labels.response_flags,
            details: self
                .rec
                .as_ref()
                .and_then(|r| r.response_code_details.as_deref()),
            bytes_sent: sent,
            bytes_received: received,
            duration,
            mtls: self.labels.connection_security_policy
                == crate::telemetry::SecurityPolicy::MutualTls,
            requested_server_name: self
                .rec
                .as_ref()
                .and_then(|r| r.requested_server_name.as_deref()),
        };
        self.proxy.metrics.record_http_with(
            &self.labels,
            api.metrics(),
            |edits| api.tag_edits(edits, &response),
            duration,
            received,
            sent,
        );
        let passes = api.log_passes(&response);
        if let Some(mut rec) = self.rec.filter(|_| passes) {
            rec.bytes_sent = sent;
            rec.bytes_received = received;
            rec.duration = duration;
            if client_left {
                rec.response_flags = Cow::Borrowed("DC");
            }
            self.proxy.access_log.log(*rec);
        }
    }
}

/// A response body that writes the access log line and records metrics when it ends (or is dropped
/// because the client went away).
pub struct LoggedBody {
    inner: ProxyBody,
    sent: u64,
    finish: Option<Finish>,
}

impl LoggedBody {
    pub fn new(inner: ProxyBody, finish: Finish) -> Self {
        LoggedBody {
            inner,
            sent: 0,
            finish: Some(finish),
        }
    }

    fn complete(&mut self, client_gone: bool) {
        if let Some(f) = self.finish.take() {
            f.record(0, self.sent, client_gone);
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.sent += d.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    // A gRPC request's final status (the label is set for gRPC requests only).
                    if let Some(f) = self
                        .finish
                        .as_mut()
                        .filter(|f| f.labels.grpc_response_status.is_some())
                    {
                        if let Some(status) = crate::http_manager::grpc::grpc_status(trailers) {
                            f.labels.grpc_response_status = Some(status);
                        }
                    }
                }
                if self.inner.is_end_stream() {
                    self.complete(false);
                }
            }
            Poll::Ready(None) => self.complete(false),
            Poll::Ready(Some(Err(_))) => self.complete(true),
            Poll::Pending => {}
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

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // An empty body may never be polled; a body dropped mid-way means the client left.
        let ended = self.inner.is_end_stream();
        self.complete(!ended);
    }
}
