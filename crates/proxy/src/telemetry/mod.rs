//! Telemetry: what operators see of the data path.
//!
//! - [`accesslog`]: one Envoy-format line per HTTP request and per TCP/TLS connection, written off the
//!   data path by a background writer (Istio's default TEXT format, JSON encoding, custom formats).
//! - [`metrics`]: Istio's standard Prometheus metrics (`istio_requests_total`, `istio_tcp_*`, …) with the
//!   exact label set and order Istio's stats filter uses, exposed in Prometheus text format 0.0.4.
//!
//! - [`spans`]: one span per sampled HTTP hop, exported in batches to the mesh's tracing
//!   backend (Zipkin JSON v2, OTLP over gRPC or HTTP).
//!
//! All are built so that the request path only fills a record / bumps a counter; formatting of
//! exposition output happens on scrape, file I/O happens on a dedicated thread.

pub mod accesslog;
pub mod metrics;
pub mod policy;
pub mod spans;

pub use accesslog::{
    protocol_name, AccessLogConfig, AccessLogEncoding, AccessLogError, AccessLogFormat,
    AccessLogRecord, AccessLogger, FormatError,
};
pub use metrics::{
    BlockedLabels, BlockedProtocol, HttpLabels, Metrics, PeerLabels, Reporter, RequestProtocol,
    SecurityPolicy, ServiceLabels, TcpLabels,
};
