//! State shared by every connection of one proxy, and the small conversions from routing results
//! to telemetry labels.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_api::networking::Labels;
use sluice_model::registry::EndpointAddress;
use sluice_model::{Cluster, Snapshot, Workload, BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER};

use crate::balancer::{Balancers, ClusterRuntime};
use crate::resolve::{ResolveError, Resolver};
use crate::telemetry::accesslog::AccessLogger;
use crate::telemetry::metrics::{Metrics, PeerLabels, ServiceLabels};
use crate::upstream::HttpClients;

// The request path names it through this module.
pub use crate::telemetry::metrics::service_labels;

/// Everything the data path shares: the current snapshot, DNS, upstream pools and telemetry.
pub struct Proxy {
    pub snapshots: Arc<ArcSwap<Snapshot>>,
    pub resolver: Resolver,
    pub clients: HttpClients,
    /// Per-cluster load-balancing, circuit-breaker and outlier state, kept across reloads.
    pub balancers: Arc<Balancers>,
    pub access_log: AccessLogger,
    pub metrics: Arc<Metrics>,
    /// The span export queue and its counters.
    pub spans: crate::telemetry::spans::SpanExporter,
    /// This workload's identity labels (`source_*` in metrics).
    pub workload: Arc<PeerLabels>,
    /// Labels for destinations sluice cannot identify.
    pub unknown_peer: Arc<PeerLabels>,
    pub passthrough_labels: Arc<ServiceLabels>,
    pub blackhole_labels: Arc<ServiceLabels>,
    /// `destination_service*` labels of local replies that reach no service: all `unknown`.
    pub unknown_service: Arc<ServiceLabels>,
    /// `server` header on responses: `envoy` for a sidecar's outbound side.
    pub server_header: http::HeaderValue,
    /// This proxy's mesh identity, when it was given one (`--mesh-ca`): needed for ISTIO_MUTUAL
    /// and for mutual TLS on the inbound side.
    pub identity: Option<Arc<crate::identity::Identity>>,
    /// The config gate, drain and open-connection count every data listener consults.
    pub lifecycle: crate::downstream::Lifecycle,
    /// JWT key sets of the RequestAuthentications, kept across reloads.
    pub(crate) jwks: crate::jwt::JwksCache,
    /// Telemetry labels of the known workloads this proxy talks to, built once per snapshot
    /// and peer instead of for every request.
    peers: RwLock<PeerCache>,
}

/// [`Proxy::peer_at`]'s labels by (workload IP, expected principal), for one snapshot
/// generation.
#[derive(Default)]
struct PeerCache {
    generation: u64,
    labels: HashMap<(IpAddr, Option<Arc<str>>), Arc<PeerLabels>>,
}

/// Most (IP, principal) pairs [`PeerCache`] keeps; past it labels are built per call.
const PEER_CACHE_LIMIT: usize = 4096;

impl Proxy {
    /// Builds the shared state for a workload in `namespace` with `labels`.
    pub fn new(
        snapshots: Arc<ArcSwap<Snapshot>>,
        access_log: AccessLogger,
        metrics: Arc<Metrics>,
        namespace: &str,
        labels: &Labels,
    ) -> Proxy {
        Proxy {
            snapshots,
            resolver: Resolver::from_system(),
            clients: HttpClients::default(),
            balancers: Arc::new(Balancers::default()),
            access_log,
            spans: crate::telemetry::spans::SpanExporter::new(&metrics),
            metrics,
            workload: Arc::new(workload_labels(namespace, labels)),
            unknown_peer: Arc::new(PeerLabels::unknown()),
            passthrough_labels: Arc::new(ServiceLabels::special_cluster(PASSTHROUGH_CLUSTER)),
            blackhole_labels: Arc::new(ServiceLabels::special_cluster(BLACKHOLE_CLUSTER)),
            unknown_service: Arc::new(ServiceLabels::unknown()),
            server_header: http::HeaderValue::from_static("envoy"),
            identity: None,
            lifecycle: crate::downstream::Lifecycle::default(),
            jwks: crate::jwt::JwksCache::default(),
            peers: RwLock::default(),
        }
    }

    /// The socket address of an endpoint: an IP as is, a name through the DNS cache (the
    /// `pick`-th address, so retries move on to another one). A name seen for the first time
    /// is waited for at most `deadline` (the cluster's connect timeout).
    pub async fn endpoint_socket(
        &self,
        address: &EndpointAddress,
        port: u16,
        pick: usize,
        deadline: Duration,
    ) -> Result<SocketAddr, ResolveError> {
        match address {
            EndpointAddress::Ip(ip) => Ok(SocketAddr::new(*ip, port)),
            EndpointAddress::Name(name) => Ok(self
                .resolver
                .resolve(name, deadline)
                .await?
                .socket(pick, port)),
        }
    }

    /// Writes a TCP/TLS connection's access log line unless the Telemetry API turned the
    /// access log of that side (`mode`) off. (HTTP lines go through `body::Finish`, which also
    /// applies the filter.)
    pub fn log_connection(
        &self,
        rec: crate::telemetry::accesslog::AccessLogRecord,
        mode: sluice_model::telemetry_policy::WorkloadMode,
    ) {
        if crate::telemetry::policy::logs(&self.snapshots.load().telemetry, mode) {
            self.access_log.log(rec);
        }
    }

    /// The runtime state of `cluster`, reconciled with the current snapshot first.
    pub fn cluster_runtime(&self, cluster: &Arc<Cluster>) -> Arc<ClusterRuntime> {
        self.balancers.sync(&self.snapshots.load());
        self.balancers.runtime(cluster)
    }

    /// `destination_service*` labels for a cluster, kept with its runtime (built once per
    /// config generation, not per request).
    pub fn service_labels(&self, cluster: &Arc<Cluster>) -> Arc<ServiceLabels> {
        self.cluster_runtime(cluster).service_labels(cluster)
    }

    /// Labels for the workload at `ip` when the registry knows it (a WorkloadEntry), else
    /// `unknown`: the peer of a connection, as Istio's metadata exchange would name it.
    pub fn peer_at(&self, snap: &Snapshot, ip: IpAddr) -> Arc<PeerLabels> {
        self.peer_with_principal(snap, ip, None)
    }

    /// [`peer_at`](Self::peer_at) with `*_principal` set to `principal` when given (the identity
    /// an ISTIO_MUTUAL upstream had to prove). Built once per snapshot and (IP, principal).
    pub fn peer_with_principal(
        &self,
        snap: &Snapshot,
        ip: IpAddr,
        principal: Option<&Arc<str>>,
    ) -> Arc<PeerLabels> {
        let workload = snap.workload_by_ip(ip);
        if workload.is_none() && principal.is_none() {
            return self.unknown_peer.clone();
        }
        let key = (ip, principal.cloned());
        {
            let cache = self.peers.read().unwrap_or_else(|p| p.into_inner());
            if cache.generation == snap.generation {
                if let Some(labels) = cache.labels.get(&key) {
                    return labels.clone();
                }
            }
        }
        let mut labels =
            workload.map_or_else(|| self.unknown_peer.clone(), |w| Arc::new(peer_labels(w)));
        if let Some(p) = principal {
            labels = crate::stream::with_principal(&labels, p);
        }
        let mut cache = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if cache.generation != snap.generation {
            cache.labels.clear();
            cache.generation = snap.generation;
        }
        if cache.labels.len() < PEER_CACHE_LIMIT {
            cache.labels.insert(key, labels.clone());
        }
        labels
    }
}

/// `source_*`/`destination_*` labels for a workload the registry knows.
pub fn peer_labels(w: &Workload) -> PeerLabels {
    let mut p = workload_labels(&w.namespace, &w.labels);
    p.workload = w.name.clone();
    p
}

/// `source_*` labels for this workload, from its Kubernetes-style labels.
pub fn workload_labels(namespace: &str, labels: &Labels) -> PeerLabels {
    let get = |k: &str| labels.get(k).map(String::as_str);
    let app = get("app").or(get("app.kubernetes.io/name"));
    let version = get("version").or(get("app.kubernetes.io/version"));
    let canonical = get("service.istio.io/canonical-name").or(app);
    let revision = get("service.istio.io/canonical-revision")
        .or(version)
        .unwrap_or("latest");
    let unknown = "unknown";
    PeerLabels {
        workload: Arc::from(app.unwrap_or(unknown)),
        workload_namespace: Arc::from(namespace),
        principal: Arc::from(unknown),
        app: Arc::from(app.unwrap_or(unknown)),
        version: Arc::from(version.unwrap_or(unknown)),
        canonical_service: Arc::from(canonical.unwrap_or(unknown)),
        canonical_revision: Arc::from(revision),
        cluster: Arc::from("Kubernetes"),
    }
}

/// Where a downstream connection was going.
#[derive(Debug, Clone)]
pub struct Target {
    /// The original destination (captured), or the resolved address of the requested host
    /// (explicit proxy; unspecified when resolution failed).
    pub addr: SocketAddr,
    /// The host the client named to the explicit proxy (CONNECT authority), if any.
    pub host: Option<Arc<str>>,
}

/// Addresses of a downstream connection.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub remote: SocketAddr,
    /// Captured: where the client was going. Explicit proxy: the proxy's own listener address.
    pub local: SocketAddr,
    /// Set for captured connections and CONNECT tunnels; `None` for explicit-proxy HTTP, where each
    /// request names its own target.
    pub target: Option<Target>,
}
