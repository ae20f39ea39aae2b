//! istiod's metrics, under istiod's names, for the control plane's monitoring port (15014):
//! `pilot_xds` (connected proxies), `pilot_xds_pushes{type}`, `pilot_total_xds_rejects{type}`,
//! `pilot_xds_push_time{type}` and `pilot_proxy_convergence_time`, with istiod's buckets.
//!
//! istiod's counters have no `_total` suffix (`pilot_xds_pushes`), which OpenMetrics requires
//! of a counter; they are exposed as gauges that only go up, so the names dashboards and alerts
//! use for istiod are the names here. `type` is the collection's type URL, as istiod labels a
//! type it has no short name for. `pilot_xds_config_size_bytes{type}` is istiod's too; sluice's
//! own `sluice_xds_scoped_resources_total{type}` and `sluice_xds_scoped_bytes_total{type}`
//! count what scoping (`exportTo`, Secrets' namespaces) kept from proxies, i.e. what it saves.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_xds::server::ServerEvents;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

type Count = Gauge<u64, AtomicU64>;

/// The control plane's metrics.
pub struct ControlMetrics {
    registry: Mutex<Registry>,
    connected: Family<VersionLabel, Gauge>,
    pushes: Family<TypeLabel, Count>,
    rejects: Family<TypeLabel, Count>,
    push_time: Family<TypeLabel, Histogram>,
    config_size: Family<TypeLabel, Histogram>,
    convergence: Histogram,
    scoped_resources: Family<TypeLabel, Counter>,
    scoped_bytes: Family<TypeLabel, Counter>,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        ControlMetrics::new()
    }
}

impl ControlMetrics {
    pub fn new() -> ControlMetrics {
        let mut registry = Registry::default();
        let connected = Family::<VersionLabel, Gauge>::default();
        let pushes = Family::<TypeLabel, Count>::default();
        let rejects = Family::<TypeLabel, Count>::default();
        // istiod's buckets (pilot/pkg/xds/monitoring.go).
        let push_time = Family::<TypeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.1, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0])
        });
        let convergence = Histogram::new([0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0]);
        let config_size = Family::<TypeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([1.0, 10000.0, 1000000.0, 4000000.0, 10000000.0, 40000000.0])
        });
        let scoped_resources = Family::<TypeLabel, Counter>::default();
        let scoped_bytes = Family::<TypeLabel, Counter>::default();
        registry.register(
            "pilot_xds",
            "Number of endpoints connected to this pilot using XDS",
            connected.clone(),
        );
        registry.register(
            "pilot_xds_pushes",
            "Pilot build and send errors for lds, rds, cds and eds",
            pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "Total number of XDS responses from pilot rejected by proxy",
            rejects.clone(),
        );
        registry.register(
            "pilot_xds_push_time",
            "Total time in seconds Pilot takes to push lds, rds, cds and eds",
            push_time.clone(),
        );
        registry.register(
            "pilot_xds_config_size_bytes",
            "Distribution of configuration sizes pushed to clients",
            config_size.clone(),
        );
        registry.register(
            "sluice_xds_scoped_resources",
            "Resources not sent to a proxy because they are not visible to it (exportTo, a Secret of another namespace or over plaintext)",
            scoped_resources.clone(),
        );
        registry.register(
            "sluice_xds_scoped_bytes",
            "Bytes of resources not sent to a proxy because they are not visible to it",
            scoped_bytes.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required configuration",
            convergence.clone(),
        );
        ControlMetrics {
            registry: Mutex::new(registry),
            connected,
            pushes,
            rejects,
            push_time,
            config_size,
            convergence,
            scoped_resources,
            scoped_bytes,
        }
    }

    /// Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        let mut open_metrics = String::new();
        {
            let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            let _ =
                prometheus_client::encoding::text::encode_registry(&mut open_metrics, &registry);
        }
        sluice_proxy::telemetry::metrics::openmetrics_to_prometheus(&open_metrics)
    }

    fn version() -> VersionLabel {
        VersionLabel {
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

fn type_label(type_url: &str) -> TypeLabel {
    TypeLabel {
        r#type: type_url.to_string(),
    }
}

impl ServerEvents for ControlMetrics {
    fn connection(&self, _node_id: &str, connected: bool) {
        let gauge = self.connected.get_or_create(&ControlMetrics::version());
        if connected {
            gauge.inc();
        } else {
            gauge.dec();
        }
    }

    fn pushed(&self, type_url: &str, since_publish: Duration, bytes: usize) {
        let label = type_label(type_url);
        self.config_size.get_or_create(&label).observe(bytes as f64);
        self.pushes.get_or_create(&label).inc();
        self.push_time
            .get_or_create(&label)
            .observe(since_publish.as_secs_f64());
    }

    fn acked(&self, _type_url: &str, since_publish: Duration) {
        self.convergence.observe(since_publish.as_secs_f64());
    }

    fn rejected(&self, _node_id: &str, type_url: &str, _message: &str) {
        self.rejects.get_or_create(&type_label(type_url)).inc();
    }

    fn scoped(&self, type_url: &str, withheld: usize, bytes: usize) {
        let label = type_label(type_url);
        self.scoped_resources
            .get_or_create(&label)
            .inc_by(withheld as u64);
        self.scoped_bytes.get_or_create(&label).inc_by(bytes as u64);
    }
}
