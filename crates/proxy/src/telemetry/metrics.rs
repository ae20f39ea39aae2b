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

mod blocked;
mod exposition;
pub mod histogram;
mod labels;

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};

pub use blocked::{BlockedLabels, BlockedProtocol, BLOCKED_OTHER_HOST, BLOCKED_SERIES_LIMIT};
pub use labels::{
    service_labels, HttpLabels, PeerLabels, Reporter, RequestProtocol, SecurityPolicy,
    ServiceLabels, TagValues, TcpLabels,
};
use sluice_model::telemetry_policy::{MetricName, MetricsPolicy, TagEdit};

pub use exposition::openmetrics_to_prometheus;
use histogram::EnvoyHistogram;
use labels::BuildLabels;

/// Envoy's default histogram buckets (`histogram_impl.cc` `defaultBuckets()`), which Istio uses for
/// `istio_request_duration_milliseconds` (ms) and for the byte-size histograms alike.
pub const ENVOY_DEFAULT_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The `Content-Type` of Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// === Metrics ===

type HistogramFamily<L> = Family<L, EnvoyHistogram>;

/// Label sets each series cache keeps before it is emptied and refilled. The label cardinality is
/// bounded by configuration; the cap only keeps a pathological mix (an upstream answering with
/// every status code) from growing the cache without end.
pub const SERIES_CACHE_LIMIT: usize = 4096;

/// The handles of one HTTP label set in the four HTTP families. prometheus-client's metrics are
/// `Arc`-backed, so these are the very series the families expose.
#[derive(Clone, Debug)]
struct HttpSeries {
    requests: Counter,
    duration: EnvoyHistogram,
    request_bytes: EnvoyHistogram,
    response_bytes: EnvoyHistogram,
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
/// lookup over the full label set in each family. Keyed by content (cheap: see `labels::hash_identity`,
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
        let hist = HistogramFamily::<HttpLabels>::default;
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
                s.duration.observe(ms);
                s.request_bytes.observe(request_bytes);
                s.response_bytes.observe(response_bytes);
            },
        );
    }

    /// Records one finished HTTP request under the Telemetry API's metric overrides of its
    /// side: a disabled metric is not recorded; a metric with tag overrides is recorded under
    /// its own label set, `edits` giving the evaluated edits (label, `None` = removed); the
    /// others share [`record_http`](Self::record_http)'s series.
    pub fn record_http_with(
        &self,
        labels: &HttpLabels,
        policy: &MetricsPolicy,
        edits: impl Fn(&BTreeMap<String, TagEdit>) -> Vec<(Arc<str>, Option<String>)>,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        if policy.is_default() {
            return self.record_http(labels, duration, request_bytes, response_bytes);
        }
        if policy.disabled {
            return;
        }
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let edited = |metric: &MetricName| -> Option<HttpLabels> {
            let tags = policy.tags(metric)?;
            Some(HttpLabels {
                tags: Some(Arc::new(TagValues::new(edits(tags)))),
                ..labels.clone()
            })
        };
        let record = |metric: MetricName, f: &dyn Fn(&HttpLabels)| {
            if !policy.reports(&metric) {
                return;
            }
            match edited(&metric) {
                Some(l) => f(&l),
                None => f(labels),
            }
        };
        record(MetricName::RequestCount, &|l| {
            self.requests_total.get_or_create(l).inc();
        });
        record(MetricName::RequestDuration, &|l| {
            self.request_duration.get_or_create(l).observe(ms);
        });
        record(MetricName::RequestSize, &|l| {
            self.request_bytes.get_or_create(l).observe(request_bytes);
        });
        record(MetricName::ResponseSize, &|l| {
            self.response_bytes.get_or_create(l).observe(response_bytes);
        });
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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

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
            tags: None,
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
        m.request_duration.get_or_create(l).observe(ms);
        m.request_bytes.get_or_create(l).observe(req);
        m.response_bytes.get_or_create(l).observe(resp);
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
}
