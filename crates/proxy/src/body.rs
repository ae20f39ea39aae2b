//! Bodies that account for themselves: request bytes counted as they pass, and a response body
//! that writes the access log line and records metrics when it ends. Shared by the outbound and
//! inbound HTTP paths.

use std::borrow::Cow;
use std::pin::Pin;
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

/// A request body that counts the bytes it passes (`%BYTES_RECEIVED%`).
pub struct CountingBody {
    inner: Incoming,
    counter: ByteCounter,
}

impl CountingBody {
    pub fn new(inner: Incoming, counter: ByteCounter) -> Self {
        CountingBody { inner, counter }
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
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
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
    pub rec: AccessLogRecord,
    pub labels: HttpLabels,
    pub start: Instant,
    pub received: ByteCounter,
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
        let Some(mut f) = self.finish.take() else {
            return;
        };
        f.rec.bytes_sent = self.sent;
        f.rec.bytes_received = f.received.get();
        f.rec.duration = f.start.elapsed();
        if client_gone && f.rec.response_flags == "-" {
            f.rec.response_flags = Cow::Borrowed("DC");
            f.labels.response_flags = Cow::Borrowed("DC");
        }
        f.proxy
            .metrics
            .record_http(&f.labels, f.rec.duration, f.rec.bytes_received, self.sent);
        f.proxy.access_log.log(f.rec);
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
