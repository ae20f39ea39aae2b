//! Istio's standard Prometheus metrics, plus sluice's own counters.
//!
//! Series carry Istio's full label set in the order of the Istio stats filter's `all_tags_`
//! (`reporter, source_workload, …, response_code, grpc_response_status`; TCP metrics stop after
//! `connection_security_policy`), so dashboards and queries written for Istio work unchanged.
//!
//! Storage is a `prometheus_client` [`Registry`]. Its text encoder speaks OpenMetrics, while Envoy (and
//! so every Istio scrape config) serves Prometheus text format 0.0.4; [`Metrics::encode`] converts:
//! counter families are declared under their sample name (`istio_requests_total`), `le` goes last in
//! bucket labels and loses a trailing `.0`, and `# EOF` / `# UNIT` lines are dropped.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};
use sluice_model::Service;

/// Envoy's default histogram buckets (`histogram_impl.cc` `defaultBuckets()`), which Istio uses for
/// `istio_request_duration_milliseconds` (ms) and for the byte-size histograms alike.
pub const ENVOY_DEFAULT_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The `Content-Type` of Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const UNKNOWN: &str = "unknown";

// === Label values ===

/// Which side of the connection reports the metric (`reporter` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client side: an outbound sidecar or a gateway.
    Source,
    /// The server side: an inbound sidecar.
    Destination,
    /// An ambient waypoint.
    Waypoint,
}

impl Reporter {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
            Reporter::Waypoint => "waypoint",
        }
    }
}

/// The `request_protocol` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    /// HTTP/1.x or HTTP/2 (not gRPC).
    Http,
    /// gRPC (content-type `application/grpc…`).
    Grpc,
    /// Raw TCP or TLS passthrough.
    Tcp,
}

impl RequestProtocol {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
            RequestProtocol::Tcp => "tcp",
        }
    }
}

/// The `connection_security_policy` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// The server saw a peer certificate and presented its own (mTLS).
    MutualTls,
    /// Plaintext (or one-way TLS) at the server.
    None,
    /// What the source side reports: it cannot know the server's view.
    Unknown,
}

impl SecurityPolicy {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::None => "none",
            SecurityPolicy::Unknown => UNKNOWN,
        }
    }
}

/// The identity labels of one workload (source or destination peer). Build one per peer and share it
/// behind an `Arc`: per-request label sets then cost a few reference-count increments.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerLabels {
    /// `*_workload`, e.g. `productpage-v1`.
    pub workload: Arc<str>,
    /// `*_workload_namespace`.
    pub workload_namespace: Arc<str>,
    /// `*_principal`, e.g. `spiffe://cluster.local/ns/default/sa/bookinfo-productpage`.
    pub principal: Arc<str>,
    /// `*_app` (the `app` label).
    pub app: Arc<str>,
    /// `*_version` (the `version` label).
    pub version: Arc<str>,
    /// `*_canonical_service`.
    pub canonical_service: Arc<str>,
    /// `*_canonical_revision`.
    pub canonical_revision: Arc<str>,
    /// `*_cluster`.
    pub cluster: Arc<str>,
}

impl PeerLabels {
    /// Every value `unknown`: what Istio reports for a peer it has no metadata for.
    pub fn unknown() -> Self {
        let u: Arc<str> = Arc::from(UNKNOWN);
        PeerLabels {
            workload: u.clone(),
            workload_namespace: u.clone(),
            principal: u.clone(),
            app: u.clone(),
            version: u.clone(),
            canonical_service: u.clone(),
            canonical_revision: u.clone(),
            cluster: u,
        }
    }
}

impl Default for PeerLabels {
    fn default() -> Self {
        Self::unknown()
    }
}

/// The destination service labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceLabels {
    /// `destination_service`: the FQDN host, e.g. `details.default.svc.cluster.local`.
    pub service: Arc<str>,
    /// `destination_service_name`: the short name, or `PassthroughCluster` / `BlackHoleCluster`.
    pub service_name: Arc<str>,
    /// `destination_service_namespace`.
    pub service_namespace: Arc<str>,
}

impl ServiceLabels {
    /// Labels for a known service.
    pub fn new(
        service: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        namespace: impl Into<Arc<str>>,
    ) -> Self {
        ServiceLabels {
            service: service.into(),
            service_name: name.into(),
            service_namespace: namespace.into(),
        }
    }

    /// All `unknown`.
    pub fn unknown() -> Self {
        Self::new(UNKNOWN, UNKNOWN, UNKNOWN)
    }

    /// Istio's labels for a special cluster (`PassthroughCluster`, `BlackHoleCluster`, …): the cluster
    /// name as both service and service name, namespace unknown.
    pub fn special_cluster(name: &str) -> Self {
        Self::new(name, name, UNKNOWN)
    }
}

impl Default for ServiceLabels {
    fn default() -> Self {
        Self::unknown()
    }
}

/// `destination_service*` labels for a service: Istio names a ServiceEntry destination by its
/// host and a Kubernetes service by its short name.
pub fn service_labels(svc: &Service) -> ServiceLabels {
    let suffix = format!(".{}.{}", svc.namespace, sluice_model::host::CLUSTER_DOMAIN);
    let name = svc
        .hostname
        .strip_suffix(suffix.as_str())
        .unwrap_or(&svc.hostname)
        .to_string();
    ServiceLabels::new(svc.hostname.clone(), name, svc.namespace.clone())
}

/// Labels of the HTTP metrics (`istio_requests_total`, `istio_request_*`, `istio_response_bytes`).
///
/// `Hash` covers the small fields and the most selective names only (workloads, their namespaces,
/// the service); `Eq` compares everything, starting with `Arc` pointers, so equal shared label
/// parts cost no string comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLabels {
    /// `reporter`.
    pub reporter: Reporter,
    /// `source_*`.
    pub source: Arc<PeerLabels>,
    /// `destination_*` workload labels.
    pub destination: Arc<PeerLabels>,
    /// `destination_service*`.
    pub destination_service: Arc<ServiceLabels>,
    /// `request_protocol` (`http` or `grpc`).
    pub request_protocol: RequestProtocol,
    /// `response_flags`: Envoy short flags, comma-joined; empty means `-`.
    pub response_flags: Cow<'static, str>,
    /// `connection_security_policy`.
    pub connection_security_policy: SecurityPolicy,
    /// `response_code`; 0 when no response was sent.
    pub response_code: u16,
    /// `grpc_response_status`; `None` prints the empty string (non-gRPC).
    pub grpc_response_status: Option<u32>,
}

/// Labels of the TCP metrics (`istio_tcp_*`): the HTTP set without `response_code` and
/// `grpc_response_status`; `request_protocol` is always `tcp`. `Hash` is partial, as for
/// [`HttpLabels`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpLabels {
    /// `reporter`.
    pub reporter: Reporter,
    /// `source_*`.
    pub source: Arc<PeerLabels>,
    /// `destination_*` workload labels.
    pub destination: Arc<PeerLabels>,
    /// `destination_service*`.
    pub destination_service: Arc<ServiceLabels>,
    /// `response_flags`; empty means `-`.
    pub response_flags: Cow<'static, str>,
    /// `connection_security_policy`.
    pub connection_security_policy: SecurityPolicy,
}

/// Hashes the names that tell label sets apart in practice (workloads, namespaces, service), not all
/// 19 identity strings: hashing a subset of what `Eq` compares keeps equal sets hashing alike, and
/// sets that differ only elsewhere (version, cluster, …) merely share a bucket. Label values come
/// from configuration and the registry, so a fast unkeyed hasher is fine for the series cache.
fn hash_identity<H: Hasher>(src: &PeerLabels, dst: &PeerLabels, svc: &ServiceLabels, h: &mut H) {
    src.workload.hash(h);
    src.workload_namespace.hash(h);
    dst.workload.hash(h);
    dst.workload_namespace.hash(h);
    svc.service.hash(h);
}

/// The enum labels packed into one word (each fits in two bits).
fn small_labels(reporter: Reporter, protocol: RequestProtocol, policy: SecurityPolicy) -> u64 {
    reporter as u64 | (protocol as u64) << 2 | (policy as u64) << 4
}

impl Hash for HttpLabels {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let grpc = self.grpc_response_status.map_or(0, |s| u64::from(s) + 1);
        h.write_u64(
            small_labels(
                self.reporter,
                self.request_protocol,
                self.connection_security_policy,
            ) | u64::from(self.response_code) << 8
                | grpc << 24,
        );
        self.response_flags.hash(h);
        hash_identity(
            &self.source,
            &self.destination,
            &self.destination_service,
            h,
        );
    }
}

impl Hash for TcpLabels {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(small_labels(
            self.reporter,
            RequestProtocol::Tcp,
            self.connection_security_policy,
        ));
        self.response_flags.hash(h);
        hash_identity(
            &self.source,
            &self.destination,
            &self.destination_service,
            h,
        );
    }
}

/// Encodes one label with Prometheus escaping (prometheus-client writes values verbatim, and a quote or
/// backslash in, say, a workload name would otherwise corrupt the whole exposition).
fn label(enc: &mut LabelSetEncoder<'_>, key: &str, value: &str) -> fmt::Result {
    let mut l = enc.encode_label();
    let mut k = l.encode_label_key()?;
    k.write_str(key)?;
    let mut v = k.encode_label_value()?;
    let mut last = 0;
    for (i, c) in value.char_indices() {
        let esc = match c {
            '\\' => "\\\\",
            '"' => "\\\"",
            '\n' => "\\n",
            _ => continue,
        };
        v.write_str(&value[last..i])?;
        v.write_str(esc)?;
        last = i + 1;
    }
    v.write_str(&value[last..])?;
    v.finish()
}

/// The 23 labels HTTP and TCP share, borrowed from either label struct.
struct CommonLabels<'a> {
    reporter: Reporter,
    src: &'a PeerLabels,
    dst: &'a PeerLabels,
    svc: &'a ServiceLabels,
    protocol: RequestProtocol,
    flags: &'a str,
    policy: SecurityPolicy,
}

impl CommonLabels<'_> {
    /// Writes the labels in Istio's order.
    fn encode(&self, enc: &mut LabelSetEncoder<'_>) -> fmt::Result {
        let (src, dst, svc) = (self.src, self.dst, self.svc);
        label(enc, "reporter", self.reporter.as_str())?;
        label(enc, "source_workload", &src.workload)?;
        label(enc, "source_workload_namespace", &src.workload_namespace)?;
        label(enc, "source_principal", &src.principal)?;
        label(enc, "source_app", &src.app)?;
        label(enc, "source_version", &src.version)?;
        label(enc, "source_canonical_service", &src.canonical_service)?;
        label(enc, "source_canonical_revision", &src.canonical_revision)?;
        label(enc, "source_cluster", &src.cluster)?;
        label(enc, "destination_workload", &dst.workload)?;
        label(
            enc,
            "destination_workload_namespace",
            &dst.workload_namespace,
        )?;
        label(enc, "destination_principal", &dst.principal)?;
        label(enc, "destination_app", &dst.app)?;
        label(enc, "destination_version", &dst.version)?;
        label(enc, "destination_service", &svc.service)?;
        label(enc, "destination_service_name", &svc.service_name)?;
        label(enc, "destination_service_namespace", &svc.service_namespace)?;
        label(enc, "destination_canonical_service", &dst.canonical_service)?;
        label(
            enc,
            "destination_canonical_revision",
            &dst.canonical_revision,
        )?;
        label(enc, "destination_cluster", &dst.cluster)?;
        label(enc, "request_protocol", self.protocol.as_str())?;
        let flags = if self.flags.is_empty() {
            "-"
        } else {
            self.flags
        };
        label(enc, "response_flags", flags)?;
        label(enc, "connection_security_policy", self.policy.as_str())
    }
}

impl EncodeLabelSet for HttpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        CommonLabels {
            reporter: self.reporter,
            src: &self.source,
            dst: &self.destination,
            svc: &self.destination_service,
            protocol: self.request_protocol,
            flags: &self.response_flags,
            policy: self.connection_security_policy,
        }
        .encode(encoder)?;
        let mut code = itoa_u32(u32::from(self.response_code));
        label(encoder, "response_code", code.as_str())?;
        match self.grpc_response_status {
            Some(s) => {
                code = itoa_u32(s);
                label(encoder, "grpc_response_status", code.as_str())
            }
            None => label(encoder, "grpc_response_status", ""),
        }
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        CommonLabels {
            reporter: self.reporter,
            src: &self.source,
            dst: &self.destination,
            svc: &self.destination_service,
            protocol: RequestProtocol::Tcp,
            flags: &self.response_flags,
            policy: self.connection_security_policy,
        }
        .encode(encoder)
    }
}

/// A small stack string for numeric label values.
struct NumBuf {
    buf: [u8; 10],
    len: usize,
}

impl NumBuf {
    fn as_str(&self) -> &str {
        // Only ASCII digits are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("0")
    }
}

fn itoa_u32(mut n: u32) -> NumBuf {
    let mut tmp = [0u8; 10];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    let mut buf = [0u8; 10];
    buf[..len].copy_from_slice(&tmp[i..]);
    NumBuf { buf, len }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BuildLabels {
    tag: Arc<str>,
}

impl EncodeLabelSet for BuildLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        label(encoder, "component", "proxy")?;
        label(encoder, "tag", &self.tag)
    }
}

/// The `protocol` label of `sluice_egress_blocked_total`: how the refused call was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockedProtocol {
    /// Plain HTTP (REGISTRY_ONLY `block_all` 502, gateway 404 for a host with no route).
    Http,
    /// TLS, named by its SNI (BlackHoleCluster, gateway without a filter chain for the SNI).
    Tls,
    /// Any other TCP (BlackHoleCluster), named by destination IP.
    Tcp,
}

impl BlockedProtocol {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockedProtocol::Http => "http",
            BlockedProtocol::Tls => "tls",
            BlockedProtocol::Tcp => "tcp",
        }
    }
}

/// Distinct label sets `sluice_egress_blocked_total` keeps before folding new destinations into
/// `destination_host="other"`: one series per refused host must not let a client that calls
/// random names grow the exposition without bound.
pub const BLOCKED_SERIES_LIMIT: usize = 1000;

/// The folded `destination_host` once [`BLOCKED_SERIES_LIMIT`] is reached.
pub const BLOCKED_OTHER_HOST: &str = "other";

/// Labels of `sluice_egress_blocked_total`, in this order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockedLabels {
    /// This proxy's workload (`source_workload` of Istio's metrics).
    pub source_workload: Arc<str>,
    /// The refused host: HTTP Host without port, TLS SNI, or the destination IP.
    pub destination_host: Arc<str>,
    /// The destination port the client called.
    pub port: u16,
    pub protocol: BlockedProtocol,
}

impl EncodeLabelSet for BlockedLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        label(encoder, "source_workload", &self.source_workload)?;
        label(encoder, "destination_host", &self.destination_host)?;
        let port = itoa_u32(u32::from(self.port));
        label(encoder, "port", port.as_str())?;
        label(encoder, "protocol", self.protocol.as_str())
    }
}

// === Metrics ===

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Label sets each series cache keeps before it is emptied and refilled. The label cardinality is
/// bounded by configuration; the cap only keeps a pathological mix (an upstream answering with
/// every status code) from growing the cache without end.
pub const SERIES_CACHE_LIMIT: usize = 4096;

/// The handles of one HTTP label set in the four HTTP families. prometheus-client's metrics are
/// `Arc`-backed, so these are the very series the families expose.
#[derive(Clone, Debug)]
struct HttpSeries {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// The handles of one TCP label set, each filled when first used, so that the families hold
/// exactly the series they held before the cache existed (`tcp_opened` alone creates no byte
/// series).
#[derive(Debug, Default)]
struct TcpSeries {
    sent: OnceLock<Counter>,
    received: OnceLock<Counter>,
    opened: OnceLock<Counter>,
    closed: OnceLock<Counter>,
}

/// Label set → metric handles, so recording costs one lookup with a fast hash instead of a SipHash
/// lookup over the full label set in each family. Keyed by content (cheap: see [`hash_identity`],
/// and `Eq` stops at equal `Arc` pointers), so peers built afresh per request still hit, and a
/// freed label `Arc` whose address is reused cannot select a wrong series. Correct only because the
/// families never drop a series: a cached handle always is the family's.
#[derive(Debug)]
struct SeriesCache<L, S> {
    map: RwLock<HashMap<L, S, rustc_hash::FxBuildHasher>>,
    limit: usize,
}

impl<L: Hash + Eq + Clone, S> SeriesCache<L, S> {
    fn new(limit: usize) -> Self {
        SeriesCache {
            map: RwLock::new(HashMap::default()),
            limit,
        }
    }

    /// Runs `f` on the series of `labels`, creating them with `make` on first use.
    fn with<R>(&self, labels: &L, make: impl FnOnce() -> S, f: impl FnOnce(&S) -> R) -> R {
        {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if let Some(series) = map.get(labels) {
                return f(series);
            }
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.limit && !map.contains_key(labels) {
            map.clear();
        }
        f(map.entry(labels.clone()).or_insert_with(make))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn envoy_histogram() -> Histogram {
    Histogram::new(ENVOY_DEFAULT_BUCKETS)
}

/// All metrics of one proxy process. Share it behind an `Arc`; every recording method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    build_tag: Arc<str>,
    requests_total: Family<HttpLabels, Counter>,
    request_duration: HistogramFamily<HttpLabels>,
    request_bytes: HistogramFamily<HttpLabels>,
    response_bytes: HistogramFamily<HttpLabels>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    http_series: SeriesCache<HttpLabels, HttpSeries>,
    tcp_series: SeriesCache<TcpLabels, TcpSeries>,
    config_reloads: Counter,
    config_errors: Gauge,
    accesslog_dropped: Counter,
    egress_blocked: Family<BlockedLabels, Counter>,
    /// Label sets of `egress_blocked` created so far (the cap's bookkeeping; only refused calls
    /// take this lock).
    egress_blocked_series: Mutex<usize>,
}

impl Metrics {
    /// Registers Istio's standard metrics, `istio_build{component="proxy",tag=<build_tag>} 1` and sluice's
    /// own counters.
    pub fn new(build_tag: &str) -> Self {
        let hist = || {
            HistogramFamily::<HttpLabels>::new_with_constructor(
                envoy_histogram as fn() -> Histogram,
            )
        };
        let mut m = Metrics {
            registry: Mutex::new(Registry::default()),
            build_tag: Arc::from(build_tag),
            requests_total: Family::default(),
            request_duration: hist(),
            request_bytes: hist(),
            response_bytes: hist(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            http_series: SeriesCache::new(SERIES_CACHE_LIMIT),
            tcp_series: SeriesCache::new(SERIES_CACHE_LIMIT),
            config_reloads: Counter::default(),
            config_errors: Gauge::default(),
            accesslog_dropped: Counter::default(),
            egress_blocked: Family::default(),
            egress_blocked_series: Mutex::new(0),
        };
        let registry = m.registry.get_mut().unwrap_or_else(|p| p.into_inner());
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "istio_requests",
            "Requests handled, by Istio's standard labels",
            m.requests_total.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds",
            m.request_duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body size in bytes",
            m.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body size in bytes",
            m.response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the client on TCP connections (response direction)",
            m.tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client on TCP connections (request direction)",
            m.tcp_received.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            m.tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            m.tcp_closed.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                tag: m.build_tag.clone(),
            })
            .set(1);
        registry.register("istio_build", "Proxy build information", build);
        registry.register(
            "sluice_config_reloads",
            "Configuration snapshots applied",
            m.config_reloads.clone(),
        );
        registry.register(
            "sluice_config_errors",
            "Configuration problems in the last load (invalid files or resources)",
            m.config_errors.clone(),
        );
        registry.register(
            "sluice_accesslog_dropped",
            "Access log lines dropped because the writer fell behind or failed",
            m.accesslog_dropped.clone(),
        );
        registry.register(
            "sluice_egress_blocked",
            format!(
                "Outbound calls the proxy refused (REGISTRY_ONLY block_all 502, BlackHoleCluster, gateway 404 or no filter chain), by source_workload, destination_host (HTTP Host without port, TLS SNI, else destination IP), port and protocol (http, tls, tcp). At most {BLOCKED_SERIES_LIMIT} label sets are kept; further destinations are counted under destination_host={BLOCKED_OTHER_HOST}"
            ),
            m.egress_blocked.clone(),
        );
        m
    }

    /// The build tag given to [`new`](Self::new).
    pub fn build_tag(&self) -> &str {
        &self.build_tag
    }

    /// Records one finished HTTP request: `istio_requests_total` and the three histograms. Durations are
    /// recorded in whole milliseconds, as Envoy does.
    pub fn record_http(
        &self,
        labels: &HttpLabels,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.http_series.with(
            labels,
            || HttpSeries {
                requests: self.requests_total.get_or_create_owned(labels),
                duration: self.request_duration.get_or_create_owned(labels),
                request_bytes: self.request_bytes.get_or_create_owned(labels),
                response_bytes: self.response_bytes.get_or_create_owned(labels),
            },
            |s| {
                s.requests.inc();
                s.duration.observe(ms as f64);
                s.request_bytes.observe(request_bytes as f64);
                s.response_bytes.observe(response_bytes as f64);
            },
        );
    }

    /// Runs `f` on the cached TCP handles of `labels`.
    fn tcp_series<R>(&self, labels: &TcpLabels, f: impl FnOnce(&TcpSeries) -> R) -> R {
        self.tcp_series.with(labels, TcpSeries::default, f)
    }

    /// A TCP/TLS connection was accepted and routed: `istio_tcp_connections_opened_total`.
    pub fn tcp_opened(&self, labels: &TcpLabels) {
        self.tcp_series(labels, |s| {
            s.opened
                .get_or_init(|| self.tcp_opened.get_or_create_owned(labels))
                .inc();
        });
    }

    /// Adds transferred bytes on a still-open connection (long-lived connections report as they go).
    /// `sent` is toward the client, `received` from the client.
    pub fn tcp_bytes(&self, labels: &TcpLabels, sent: u64, received: u64) {
        if sent == 0 && received == 0 {
            return;
        }
        self.tcp_series(labels, |s| {
            if sent > 0 {
                s.sent
                    .get_or_init(|| self.tcp_sent.get_or_create_owned(labels))
                    .inc_by(sent);
            }
            if received > 0 {
                s.received
                    .get_or_init(|| self.tcp_received.get_or_create_owned(labels))
                    .inc_by(received);
            }
        });
    }

    /// A TCP/TLS connection closed: `istio_tcp_connections_closed_total`, plus its bytes not yet reported
    /// with [`tcp_bytes`](Self::tcp_bytes).
    pub fn tcp_closed(&self, labels: &TcpLabels, sent: u64, received: u64) {
        // Istio creates both byte series together with the connection series, even at zero.
        self.tcp_series(labels, |s| {
            s.sent
                .get_or_init(|| self.tcp_sent.get_or_create_owned(labels))
                .inc_by(sent);
            s.received
                .get_or_init(|| self.tcp_received.get_or_create_owned(labels))
                .inc_by(received);
            s.closed
                .get_or_init(|| self.tcp_closed.get_or_create_owned(labels))
                .inc();
        });
    }

    /// Counts one refused outbound call in `sluice_egress_blocked_total`. Once
    /// [`BLOCKED_SERIES_LIMIT`] label sets exist, a new destination is counted under
    /// `destination_host="other"` (same source, port and protocol).
    pub fn record_blocked(
        &self,
        source_workload: &Arc<str>,
        destination_host: &str,
        port: u16,
        protocol: BlockedProtocol,
    ) {
        let mut labels = BlockedLabels {
            source_workload: source_workload.clone(),
            destination_host: Arc::from(if destination_host.is_empty() {
                "-"
            } else {
                destination_host
            }),
            port,
            protocol,
        };
        if self.egress_blocked.get(&labels).is_none() {
            let mut series = self
                .egress_blocked_series
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if self.egress_blocked.get(&labels).is_none() {
                if *series >= BLOCKED_SERIES_LIMIT {
                    labels.destination_host = Arc::from(BLOCKED_OTHER_HOST);
                    if self.egress_blocked.get(&labels).is_none() {
                        *series += 1;
                    }
                } else {
                    *series += 1;
                }
            }
        }
        self.egress_blocked.get_or_create(&labels).inc();
    }

    /// `sluice_config_reloads_total`: increment once per applied snapshot.
    pub fn config_reloads(&self) -> &Counter {
        &self.config_reloads
    }

    /// `sluice_config_errors`: set to the number of problems in the last load.
    pub fn config_errors(&self) -> &Gauge {
        &self.config_errors
    }

    /// `sluice_accesslog_dropped_total`; pass a clone to
    /// [`AccessLogger::with_drop_counter`](crate::telemetry::AccessLogger::with_drop_counter).
    pub fn accesslog_dropped(&self) -> Counter {
        self.accesslog_dropped.clone()
    }

    /// Registers an extra metric. Name counters without `_total` (it is appended on output; a trailing
    /// `_total` given here is removed so the series is not exposed as `…_total_total`).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        let name = match EncodeMetric::metric_type(&metric) {
            MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
    }

    /// The whole registry in Prometheus text format 0.0.4 (serve it with [`PROMETHEUS_CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut open_metrics = String::with_capacity(16 * 1024);
        {
            let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            // Writing into a String cannot fail.
            let _ =
                prometheus_client::encoding::text::encode_registry(&mut open_metrics, &registry);
        }
        openmetrics_to_prometheus(&open_metrics)
    }
}

// === OpenMetrics → Prometheus 0.0.4 ===

/// Rewrites prometheus-client's OpenMetrics text into Prometheus text format 0.0.4 as Envoy serves it.
fn openmetrics_to_prometheus(src: &str) -> String {
    let mut out = String::with_capacity(src.len() + 256);
    let mut pending_help: Option<(&str, &str)> = None;
    let mut in_histogram = false;
    for line in src.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            pending_help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            // 0.0.4 declares a family by its sample name; OpenMetrics by the name without suffix.
            let (suffix, ty) = match ty {
                "counter" => ("_total", "counter"),
                "gauge" => ("", "gauge"),
                "histogram" => ("", "histogram"),
                "info" => ("_info", "gauge"),
                _ => ("", "untyped"),
            };
            in_histogram = ty == "histogram";
            if let Some((help_name, help)) = pending_help.take() {
                if help_name == name {
                    let _ = writeln!(out, "# HELP {name}{suffix} {help}");
                }
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {ty}");
            continue;
        }
        if line.starts_with('#') {
            // `# EOF`, `# UNIT`: OpenMetrics-only.
            continue;
        }
        if in_histogram {
            if let Some(rewritten) = move_le_last(line) {
                out.push_str(&rewritten);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `x_bucket{le="1.0",a="b"} 3` → `x_bucket{a="b",le="1"} 3`. Returns `None` for lines that are not
/// bucket samples with a leading `le`.
fn move_le_last(line: &str) -> Option<String> {
    let open = line.find("_bucket{le=\"")? + "_bucket{".len();
    let value_start = open + "le=\"".len();
    let value_len = line[value_start..].find('"')?;
    let le = &line[value_start..value_start + value_len];
    let le = le.strip_suffix(".0").unwrap_or(le);
    let after_le = value_start + value_len + 1;
    let rest = &line[after_le..];
    // The remaining labels run to the `}` that is outside any quoted value.
    let (labels, tail) = if let Some(stripped) = rest.strip_prefix(',') {
        let end = closing_brace(stripped)?;
        (&stripped[..end], &stripped[end + 1..])
    } else {
        ("", rest.strip_prefix('}')?)
    };
    let mut s = String::with_capacity(line.len() + 2);
    s.push_str(&line[..open]);
    if !labels.is_empty() {
        s.push_str(labels);
        s.push(',');
    }
    let _ = write!(s, "le=\"{le}\"}}{tail}");
    Some(s)
}

fn closing_brace(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_moves_last() {
        assert_eq!(
            move_le_last(r#"h_bucket{le="1.0",a="x}\"y",b="z"} 3"#).as_deref(),
            Some(r#"h_bucket{a="x}\"y",b="z",le="1"} 3"#)
        );
        assert_eq!(
            move_le_last(r#"h_bucket{le="+Inf"} 3"#).as_deref(),
            Some(r#"h_bucket{le="+Inf"} 3"#)
        );
        assert_eq!(move_le_last("h_sum 3.0"), None);
    }

    fn peer(workload: &str) -> Arc<PeerLabels> {
        Arc::new(PeerLabels {
            workload: workload.into(),
            workload_namespace: "default".into(),
            ..PeerLabels::unknown()
        })
    }

    /// Built afresh on each call: equal content, distinct `Arc`s.
    fn http(code: u16, flags: &'static str) -> HttpLabels {
        HttpLabels {
            reporter: Reporter::Source,
            source: peer("productpage-v1"),
            destination: Arc::new(PeerLabels::unknown()),
            destination_service: Arc::new(ServiceLabels::new(
                "details.default.svc.cluster.local",
                "details",
                "default",
            )),
            request_protocol: RequestProtocol::Http,
            response_flags: Cow::Borrowed(flags),
            connection_security_policy: SecurityPolicy::Unknown,
            response_code: code,
            grpc_response_status: None,
        }
    }

    fn tcp(flags: &'static str) -> TcpLabels {
        TcpLabels {
            reporter: Reporter::Destination,
            source: peer("productpage-v1"),
            destination: peer("details-v1"),
            destination_service: Arc::new(ServiceLabels::special_cluster("PassthroughCluster")),
            response_flags: Cow::Borrowed(flags),
            connection_security_policy: SecurityPolicy::MutualTls,
        }
    }

    fn requests(m: &Metrics, labels: &HttpLabels) -> Option<u64> {
        m.requests_total.get(labels).map(|c| c.get())
    }

    /// The recording code as it was before the series cache: straight into the families.
    fn record_uncached(m: &Metrics, l: &HttpLabels, ms: u64, req: u64, resp: u64) {
        m.requests_total.get_or_create(l).inc();
        m.request_duration.get_or_create(l).observe(ms as f64);
        m.request_bytes.get_or_create(l).observe(req as f64);
        m.response_bytes.get_or_create(l).observe(resp as f64);
    }

    #[test]
    fn series_cache_shares_equal_label_sets_only() {
        let m = Metrics::new("test");
        let ms = Duration::from_millis(3);
        m.record_http(&http(200, ""), ms, 1, 2);
        m.record_http(&http(200, ""), ms, 1, 2);
        assert_eq!(m.http_series.len(), 1);
        assert_eq!(requests(&m, &http(200, "")), Some(2));

        m.record_http(&http(503, ""), ms, 1, 2);
        m.record_http(&http(200, "DC"), ms, 1, 2);
        let mut grpc = http(200, "");
        grpc.request_protocol = RequestProtocol::Grpc;
        grpc.grpc_response_status = Some(0);
        m.record_http(&grpc, ms, 1, 2);
        // Same hashed names, different unhashed label: a bucket collision, still its own series.
        let mut other_version = http(200, "");
        other_version.source = Arc::new(PeerLabels {
            version: "v2".into(),
            ..(*other_version.source).clone()
        });
        m.record_http(&other_version, ms, 1, 2);
        assert_eq!(m.http_series.len(), 5);
        assert_eq!(requests(&m, &http(200, "")), Some(2));
        assert_eq!(requests(&m, &http(503, "")), Some(1));
        assert_eq!(requests(&m, &http(200, "DC")), Some(1));
        assert_eq!(requests(&m, &grpc), Some(1));
        assert_eq!(requests(&m, &other_version), Some(1));

        // Peers built and freed per request (an address may come back for another peer): each
        // selects the series of its content.
        for name in ["a", "b", "c", "a"] {
            let mut l = http(200, "");
            l.destination = peer(name);
            m.record_http(&l, ms, 1, 2);
        }
        let mut a = http(200, "");
        a.destination = peer("a");
        assert_eq!(requests(&m, &a), Some(2));
        assert_eq!(m.http_series.len(), 8);
        let out = m.encode();
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .count(),
            8
        );

        m.tcp_opened(&tcp("-"));
        m.tcp_closed(&tcp("-"), 5, 6);
        m.tcp_opened(&tcp("-"));
        m.tcp_opened(&tcp("UF"));
        assert_eq!(m.tcp_series.len(), 2);
        assert_eq!(m.tcp_opened.get(&tcp("-")).map(|c| c.get()), Some(2));
        assert_eq!(m.tcp_sent.get(&tcp("-")).map(|c| c.get()), Some(5));
        assert_eq!(m.tcp_opened.get(&tcp("UF")).map(|c| c.get()), Some(1));
        // Only opened: no byte or close series yet, as without the cache.
        assert!(m.tcp_sent.get(&tcp("UF")).is_none());
        assert!(m.tcp_closed.get(&tcp("UF")).is_none());
    }

    #[test]
    fn series_cache_clears_when_full_and_keeps_counting() {
        let mut m = Metrics::new("test");
        m.http_series = SeriesCache::new(2);
        let ms = Duration::from_millis(1);
        for code in [200, 201, 202, 200, 200] {
            m.record_http(&http(code, ""), ms, 0, 0);
            assert!(m.http_series.len() <= 2);
        }
        assert_eq!(requests(&m, &http(200, "")), Some(3));
        assert_eq!(requests(&m, &http(201, "")), Some(1));
        assert_eq!(requests(&m, &http(202, "")), Some(1));
    }

    #[test]
    fn cached_exposition_equals_uncached() {
        let cached = Metrics::new("t");
        let plain = Metrics::new("t");
        let cases = [
            (http(200, ""), 4, 10, 135),
            (http(200, ""), 700, 0, 1 << 20),
            (http(404, "NR"), 0, 0, 0),
            (http(200, "DC"), 12, 3, 0),
        ];
        for (l, ms, req, resp) in &cases {
            cached.record_http(l, Duration::from_millis(*ms), *req, *resp);
            record_uncached(&plain, l, *ms, *req, *resp);
        }
        cached.tcp_opened(&tcp("-"));
        cached.tcp_bytes(&tcp("-"), 100, 0);
        cached.tcp_closed(&tcp("-"), 1, 2);
        cached.tcp_opened(&tcp("UH"));
        plain.tcp_opened.get_or_create(&tcp("-")).inc();
        plain.tcp_sent.get_or_create(&tcp("-")).inc_by(100);
        plain.tcp_sent.get_or_create(&tcp("-")).inc_by(1);
        plain.tcp_received.get_or_create(&tcp("-")).inc_by(2);
        plain.tcp_closed.get_or_create(&tcp("-")).inc();
        plain.tcp_opened.get_or_create(&tcp("UH")).inc();
        // Series order within a family follows a per-map random hash seed.
        let sorted = |m: &Metrics| {
            let out = m.encode();
            let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(&cached), sorted(&plain));
    }

    #[test]
    fn itoa() {
        for n in [0, 7, 200, 65535, u32::MAX] {
            assert_eq!(itoa_u32(n).as_str(), n.to_string());
        }
    }
}
