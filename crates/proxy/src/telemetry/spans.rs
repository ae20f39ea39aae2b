//! Span reporting: every sampled HTTP hop sends one span (a gateway two) to the tracing backend
//! the mesh config names ([`sluice_model::tracing::TracingSettings`], in the snapshot), in the
//! shape Envoy gives them for Istio.
//!
//! - Sidecar outbound: one `CLIENT` span (Envoy's egress operation).
//! - Sidecar inbound: one `SERVER` span.
//! - Gateway: a `SERVER` span (a gateway listener has no traffic direction: Envoy's ingress
//!   operation), and a `CLIENT` child `router <cluster> egress` for the upstream call
//!   (`start_child_span`, which Istio sets for routers); the child's id is the one sent upstream.
//!
//! The span name is the route's decorator (`<host>:<port>/*`), else the request's authority.
//! Tags are Envoy's (`http.method`, `http.url`, `http.status_code`, `http.protocol`,
//! `response_flags`, `upstream_cluster`, `user_agent`, `guid:x-request-id`, `node_id`,
//! `component`, `peer.address`, `request_size`, `response_size`, `error` on 5xx) plus Istio's
//! custom tags (`istio.*`, `defaultConfig.tracing.customTags`).
//!
//! Export never touches the request path beyond building the record: finished spans go into a
//! bounded queue ([`QUEUE_CAPACITY`]); one background task batches them and sends them
//! ([`zipkin`] JSON v2, or [`otlp`] over gRPC or HTTP). A full queue, an unresolvable or dead
//! backend, or a slow one (the provider's timeout) drops the batch and counts it in
//! `sluice_tracing_spans_dropped_total{reason}`; sent spans are counted in
//! `sluice_tracing_spans_sent_total`.

pub mod otlp;
pub mod zipkin;

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_model::tracing::{CustomTagValue, ExportProtocol, TracingProvider};
use sluice_model::Snapshot;
use tokio::sync::mpsc;

use crate::context::Proxy;
use crate::telemetry::metrics::Metrics;
use crate::trace::{SamplingPolicy, TraceContext};

/// Finished spans waiting for export; past this they are dropped (`reason="queue_full"`).
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans per export call.
const MAX_BATCH: usize = 256;
/// How long a span may wait for others to fill its batch (Envoy's Zipkin flush is 5 s).
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Zipkin / OTel span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Client,
    Server,
}

/// How a side of the proxy reports its hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopShape {
    /// Sidecar outbound: one CLIENT span.
    Client,
    /// Sidecar inbound: one SERVER span.
    Server,
    /// Gateway: a SERVER span and a CLIENT child for the upstream call.
    ServerWithUpstreamChild,
}

/// What a side knows about its hop, for the span.
pub struct SpanSide {
    pub shape: HopShape,
    /// The downstream client (`peer.address`).
    pub peer: Option<SocketAddr>,
    /// The decorator of a side that has no route (inbound: `<service host>:<port>/*`).
    pub operation: Option<String>,
}

/// A finished span, ready to encode.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    pub trace_id: u128,
    pub trace_id_64: bool,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub duration: Duration,
    /// Sorted by name.
    pub tags: Vec<(Cow<'static, str>, String)>,
}

impl FinishedSpan {
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A sampled hop's span while its request is in flight.
pub struct PendingSpan {
    /// This hop's span (the gateway's SERVER span).
    hop: TraceContext,
    /// The gateway's upstream child span.
    child: Option<TraceContext>,
    kind: SpanKind,
    start: SystemTime,
    operation: Option<String>,
    authority: String,
    tags: Vec<(Cow<'static, str>, String)>,
    cluster: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    status: u16,
}

/// The tracing settings of a side: a sidecar's inbound side may have its own (a Telemetry's
/// `SERVER` tracing); gateways and outbound sides share the proxy's.
pub fn settings_for(
    snap: &Snapshot,
    shape: HopShape,
) -> Option<&Arc<sluice_model::tracing::TracingSettings>> {
    match shape {
        HopShape::Server => snap.tracing_inbound.as_ref(),
        HopShape::Client | HopShape::ServerWithUpstreamChild => snap.tracing.as_ref(),
    }
}

/// The sampling policy of a side's tracing settings (only forced traces without a backend).
pub fn sampling_policy(snap: &Snapshot, shape: HopShape) -> SamplingPolicy {
    match settings_for(snap, shape) {
        Some(t) => SamplingPolicy::from_percent(
            t.sampling_percent,
            t.provider.protocol.new_traces_are_64_bit(),
        ),
        None => SamplingPolicy::default(),
    }
}

/// Joins or starts the request's trace (rewriting its headers for the next hop, see
/// [`crate::trace`]) and, when the trace is sampled and a backend is configured, starts this
/// hop's span.
pub fn start_hop(
    snap: &Snapshot,
    side: SpanSide,
    parts: &mut http::request::Parts,
) -> Option<Box<PendingSpan>> {
    let policy = sampling_policy(snap, side.shape);
    let hop = crate::trace::propagate_with(&mut parts.headers, &policy);
    let child = (side.shape == HopShape::ServerWithUpstreamChild)
        .then(|| crate::trace::propagate_with(&mut parts.headers, &policy));
    let settings = settings_for(snap, side.shape)?;
    if !hop.sampled || settings.disable_reporting {
        return None;
    }
    let headers = &parts.headers;
    let get = |n: &header::HeaderName| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| get(&header::HOST));
    let scheme = parts.uri.scheme_str().unwrap_or("http");
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut url = format!("{scheme}://{authority}{path}");
    truncate(&mut url, settings.max_path_tag_length);
    let mut tags: Vec<(Cow<'static, str>, String)> = vec![
        ("component".into(), "proxy".into()),
        (
            "downstream_cluster".into(),
            get(&X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER),
        ),
        ("guid:x-request-id".into(), get(&X_REQUEST_ID)),
        ("http.method".into(), parts.method.as_str().to_string()),
        ("http.protocol".into(), protocol_name(parts.version).into()),
        ("http.url".into(), url),
        ("node_id".into(), node_id(snap)),
        ("user_agent".into(), get(&header::USER_AGENT)),
    ];
    if let Some(peer) = side.peer {
        tags.push(("peer.address".into(), peer.ip().to_string()));
    }
    for (name, value) in &settings.custom_tags {
        let value = match value {
            CustomTagValue::Literal(v) => v.clone(),
            CustomTagValue::Environment { name, default } => {
                std::env::var(name).unwrap_or_else(|_| default.clone())
            }
            CustomTagValue::RequestHeader { name, default } => headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| default.clone(), str::to_string),
        };
        tags.push((Cow::Owned(name.to_string()), value));
    }
    Some(Box::new(PendingSpan {
        hop,
        child,
        kind: match side.shape {
            HopShape::Client => SpanKind::Client,
            HopShape::Server | HopShape::ServerWithUpstreamChild => SpanKind::Server,
        },
        start: SystemTime::now(),
        operation: side.operation,
        authority,
        tags,
        cluster: None,
        upstream: None,
        status: 0,
    }))
}

static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
static X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER: header::HeaderName =
    header::HeaderName::from_static("x-envoy-downstream-service-cluster");

fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Envoy's node id as Istio's agent builds it: `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`,
/// from the injected `INSTANCE_IP` and `POD_NAME` when present.
fn node_id(snap: &Snapshot) -> String {
    static IDS: OnceLock<(String, String)> = OnceLock::new();
    let (ip, pod) = IDS.get_or_init(|| {
        (
            std::env::var("INSTANCE_IP").unwrap_or_else(|_| "0.0.0.0".into()),
            std::env::var("POD_NAME").unwrap_or_default(),
        )
    });
    let ns = &snap.proxy.namespace;
    let kind = match snap.proxy.kind {
        sluice_model::ProxyKind::Sidecar => "sidecar",
        sluice_model::ProxyKind::Gateway => "router",
    };
    let pod = if pod.is_empty() {
        snap.tracing
            .as_ref()
            .or(snap.tracing_inbound.as_ref())
            .and_then(|t| t.service_name.split('.').next().map(str::to_string))
            .unwrap_or_else(|| "istio-proxy".into())
    } else {
        pod.clone()
    };
    format!("{kind}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local")
}

impl PendingSpan {
    /// What the request's handling decided: the route's decorator, cluster, upstream, status.
    pub fn set_outcome(
        &mut self,
        operation: Option<String>,
        cluster: Option<Arc<str>>,
        upstream: Option<SocketAddr>,
        status: u16,
    ) {
        if operation.is_some() {
            self.operation = operation;
        }
        self.cluster = cluster;
        self.upstream = upstream;
        self.status = status;
    }

    /// The finished span(s) of this hop, sent to the exporter.
    pub fn finish(
        self: Box<Self>,
        proxy: &Arc<Proxy>,
        flags: &str,
        received: u64,
        sent: u64,
        duration: Duration,
    ) {
        let p = *self;
        let cluster = p.cluster.as_deref().unwrap_or("-").to_string();
        let error = p.status >= 500 || p.status == 0;
        let mut tags = p.tags;
        let status = if p.status == 0 {
            "0".to_string()
        } else {
            p.status.to_string()
        };
        let outcome_tags = |tags: &mut Vec<(Cow<'static, str>, String)>| {
            tags.push(("http.status_code".into(), status.clone()));
            tags.push(("response_flags".into(), flags.to_string()));
            tags.push(("upstream_cluster".into(), cluster.clone()));
            tags.push(("upstream_cluster.name".into(), cluster.clone()));
            if let Some(u) = p.upstream {
                tags.push(("upstream_address".into(), u.to_string()));
            }
            if error {
                tags.push(("error".into(), "true".into()));
            }
        };
        let child_tags = p.child.map(|_| {
            let mut t: Vec<(Cow<'static, str>, String)> = tags
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        &**k,
                        "component" | "node_id" | "http.protocol" | "guid:x-request-id"
                    ) || k.starts_with("istio.")
                })
                .cloned()
                .collect();
            outcome_tags(&mut t);
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t
        });
        outcome_tags(&mut tags);
        tags.push(("request_size".into(), received.to_string()));
        tags.push(("response_size".into(), sent.to_string()));
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        let name = p.operation.unwrap_or(p.authority);
        let hop = FinishedSpan {
            trace_id: p.hop.trace_id,
            trace_id_64: p.hop.trace_id_64,
            span_id: p.hop.span_id,
            parent_id: p.hop.parent_span_id,
            name,
            kind: p.kind,
            start: p.start,
            duration,
            tags,
        };
        let exporter = &proxy.spans;
        exporter.submit(proxy, hop);
        if let (Some(child), Some(tags)) = (p.child, child_tags) {
            exporter.submit(
                proxy,
                FinishedSpan {
                    trace_id: child.trace_id,
                    trace_id_64: child.trace_id_64,
                    span_id: child.span_id,
                    parent_id: child.parent_span_id,
                    name: format!("router {cluster} egress"),
                    kind: SpanKind::Client,
                    start: p.start,
                    duration,
                    tags,
                },
            );
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// Why spans were dropped.
#[derive(Debug, Clone, Copy)]
enum DropReason {
    /// The export queue was full (the backend is slower than the traffic).
    QueueFull,
    /// The provider's host could not be resolved, or has no endpoint.
    NoEndpoint,
    /// The backend refused, failed or timed out.
    ExportFailed,
    /// The configuration changed and no longer names a backend.
    NoBackend,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::ExportFailed => "export_failed",
            DropReason::NoBackend => "no_backend",
        }
    }
}

/// The proxy's span queue and export counters.
pub struct SpanExporter {
    queue: OnceLock<Option<mpsc::Sender<FinishedSpan>>>,
    sent: Counter,
    dropped: Family<DropLabels, Counter>,
}

impl SpanExporter {
    /// Registers `sluice_tracing_spans_sent_total` and `sluice_tracing_spans_dropped_total`.
    pub fn new(metrics: &Metrics) -> Self {
        let e = SpanExporter {
            queue: OnceLock::new(),
            sent: Counter::default(),
            dropped: Family::default(),
        };
        metrics.register(
            "sluice_tracing_spans_sent",
            "Spans accepted by the tracing backend",
            e.sent.clone(),
        );
        metrics.register(
            "sluice_tracing_spans_dropped",
            "Spans not reported, by reason: queue_full (export fell behind), no_endpoint (the provider's host did not resolve), export_failed (the backend refused, failed or timed out), no_backend (the configuration no longer names one)",
            e.dropped.clone(),
        );
        e
    }

    /// Spans the backend accepted so far.
    pub fn sent(&self) -> u64 {
        self.sent.get()
    }

    /// Spans dropped so far, all reasons.
    pub fn dropped(&self) -> u64 {
        [
            DropReason::QueueFull,
            DropReason::NoEndpoint,
            DropReason::ExportFailed,
            DropReason::NoBackend,
        ]
        .iter()
        .map(|r| self.dropped_counter(*r).get())
        .sum()
    }

    fn dropped_counter(&self, reason: DropReason) -> Counter {
        self.dropped
            .get_or_create(&DropLabels {
                reason: reason.label(),
            })
            .clone()
    }

    fn drop_spans(&self, reason: DropReason, n: usize) {
        if n > 0 {
            tracing::debug!("dropped {n} spans: {}", reason.label());
        }
        self.dropped_counter(reason).inc_by(n as u64);
    }

    /// Queues `span`, starting the export task on first use; never waits.
    pub fn submit(&self, proxy: &Arc<Proxy>, span: FinishedSpan) {
        let queue = self.queue.get_or_init(|| {
            let handle = tokio::runtime::Handle::try_current().ok()?;
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            handle.spawn(export_loop(Arc::downgrade(proxy), rx));
            Some(tx)
        });
        match queue {
            Some(tx) => {
                if tx.try_send(span).is_err() {
                    self.drop_spans(DropReason::QueueFull, 1);
                }
            }
            None => self.drop_spans(DropReason::ExportFailed, 1),
        }
    }
}

/// Batches queued spans and sends each batch to the current snapshot's backend; ends when the
/// proxy is gone.
async fn export_loop(proxy: Weak<Proxy>, mut rx: mpsc::Receiver<FinishedSpan>) {
    let mut senders = Senders::default();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let Some(proxy) = proxy.upgrade() else {
            return;
        };
        let n = batch.len();
        match export(&proxy, &mut senders, batch).await {
            Ok(()) => {
                proxy.spans.sent.inc_by(n as u64);
            }
            Err(reason) => proxy.spans.drop_spans(reason, n),
        }
    }
}

/// Connections kept between batches.
#[derive(Default)]
struct Senders {
    http: Option<otlp::HttpSender>,
    grpc: Option<otlp::GrpcSender>,
}

async fn export(
    proxy: &Arc<Proxy>,
    senders: &mut Senders,
    batch: Vec<FinishedSpan>,
) -> Result<(), DropReason> {
    let snap = proxy.snapshots.load_full();
    // One backend per proxy: the outbound side's, else the inbound side's (a Telemetry naming
    // different providers for CLIENT and SERVER sends both sides' spans to the first).
    let Some(settings) = snap
        .tracing
        .clone()
        .or_else(|| snap.tracing_inbound.clone())
    else {
        return Err(DropReason::NoBackend);
    };
    let provider = &settings.provider;
    let addr = match tokio::time::timeout(provider.timeout, backend_address(proxy, &snap, provider))
        .await
    {
        Ok(Some(addr)) => addr,
        _ => return Err(DropReason::NoEndpoint),
    };
    let local_ip = std::env::var("INSTANCE_IP")
        .ok()
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let sending = async {
        match &provider.protocol {
            ExportProtocol::ZipkinJson { path, .. } => {
                let body = zipkin::encode(&batch, &settings.service_name, local_ip);
                senders
                    .http
                    .get_or_insert_with(otlp::HttpSender::new)
                    .post(addr, provider, path, "application/json", body)
                    .await
            }
            ExportProtocol::OtlpHttp { path } => {
                let body = otlp::encode(&batch, &settings.service_name);
                senders
                    .http
                    .get_or_insert_with(otlp::HttpSender::new)
                    .post(addr, provider, path, "application/x-protobuf", body)
                    .await
            }
            ExportProtocol::OtlpGrpc => {
                let request = otlp::request(&batch, &settings.service_name);
                let grpc = senders.grpc.get_or_insert_with(otlp::GrpcSender::default);
                grpc.export(addr, provider, request).await
            }
        }
    };
    match tokio::time::timeout(provider.timeout, sending).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::debug!(
                "span export to {}:{} ({addr}) failed: {e}",
                provider.host,
                provider.port
            );
            Err(DropReason::ExportFailed)
        }
        Err(_) => Err(DropReason::ExportFailed),
    }
}

/// Where the provider's host is: an endpoint of its registry cluster (`outbound|port||host`),
/// picked by the cluster's balancer, as any upstream request; else the host through the
/// proxy's DNS resolver. Istio also accepts `namespace/host`.
async fn backend_address(
    proxy: &Proxy,
    snap: &Snapshot,
    provider: &TracingProvider,
) -> Option<SocketAddr> {
    let host = provider
        .host
        .split_once('/')
        .map_or(&*provider.host, |(_, h)| h);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, provider.port));
    }
    let cluster_name = format!("outbound|{}||{host}", provider.port);
    if let Some(cluster) = snap.clusters.get(cluster_name.as_str()) {
        let runtime = proxy.cluster_runtime(cluster);
        if !runtime.is_original_destination() {
            let picked = runtime.pick(None, &[])?;
            let ep = picked.endpoint();
            return proxy
                .endpoint_socket(&ep.address, ep.port, 0, cluster.connect_timeout)
                .await
                .ok();
        }
    }
    proxy
        .resolver
        .resolve(host, provider.timeout)
        .await
        .ok()
        .map(|a| a.socket(0, provider.port))
}

/// The value of a provider header: literal, or the proxy's environment variable.
fn header_value(source: &sluice_model::tracing::HeaderSource) -> String {
    match source {
        sluice_model::tracing::HeaderSource::Value(v) => v.clone(),
        sluice_model::tracing::HeaderSource::Env(name) => std::env::var(name).unwrap_or_default(),
    }
}

/// Export headers as a header map; invalid names or values are skipped.
fn provider_headers(provider: &TracingProvider) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, source) in &provider.headers {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
            header::HeaderValue::from_str(&header_value(source)),
        ) {
            map.insert(n, v);
        }
    }
    map
}

/// Hex of a trace id: 16 digits for a 64-bit trace, else 32.
pub fn trace_id_hex(id: u128, is_64: bool) -> String {
    if is_64 {
        format!("{:016x}", id as u64)
    } else {
        format!("{id:032x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_char_boundaries() {
        let mut s = "http://h/é".to_string();
        truncate(&mut s, 10);
        assert_eq!(s, "http://h/");
        let mut s = "short".to_string();
        truncate(&mut s, 256);
        assert_eq!(s, "short");
    }

    #[test]
    fn trace_ids_keep_their_width() {
        assert_eq!(trace_id_hex(0xab, true), "00000000000000ab");
        assert_eq!(trace_id_hex(0xab, false).len(), 32);
    }
}
