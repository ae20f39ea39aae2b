//! Per-cluster runtime state that outlives config reloads: endpoint load (active requests and
//! connections), outlier-detection counters and ejections, circuit-breaker counters, and the load
//! balancers (Envoy's ROUND_ROBIN, LEAST_REQUEST, RANDOM and ring hash) that pick from it.
//!
//! The snapshot says *what* the cluster is (endpoints, policy); a [`ClusterRuntime`] remembers
//! *how it has been behaving*. When a new snapshot generation is seen, runtimes are reconciled
//! with it: endpoints that still exist keep their counters and ejections, new ones start fresh,
//! clusters that disappeared are dropped.
//!
//! Hot path cost: one lock-free map lookup, atomics for counters, and a short per-cluster mutex
//! only for weighted round robin and ejection decisions.

mod lb;
mod limits;
mod outlier;
mod status;

use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use sluice_model::policy::{LbPolicy, PoolLimits};
use sluice_model::registry::EndpointAddress;
use sluice_model::{Cluster, Snapshot, UpstreamAddress};
use tokio::sync::Semaphore;

use crate::telemetry::metrics::{service_labels, ServiceLabels};
use crate::upstream_security::UpstreamSecurity;

pub use lb::{hash_bytes, request_hash, source_ip_hash, EndpointGuard, HashInput, RequestHash};
pub use limits::{ConnectionGuard, Overflow, RequestPermit, RetryPermit};
pub use outlier::CallResult;
pub use status::{clusters_json, clusters_text};

use lb::build_ring;
use limits::semaphore;

/// Runtime state of every cluster of the current snapshot, by cluster name.
pub struct Balancers {
    /// By cluster name, looked up per request (FxHash: the names come from config).
    clusters: ArcSwap<FxHashMap<Arc<str>, Arc<ClusterRuntime>>>,
    /// Generation and address of the snapshot last reconciled with, so an unchanged snapshot
    /// costs two atomic loads per request.
    seen_generation: AtomicU64,
    seen_snapshot: AtomicUsize,
    reconciling: Mutex<()>,
}

impl Default for Balancers {
    fn default() -> Self {
        Balancers {
            clusters: ArcSwap::from_pointee(FxHashMap::default()),
            seen_generation: AtomicU64::new(u64::MAX),
            seen_snapshot: AtomicUsize::new(0),
            reconciling: Mutex::new(()),
        }
    }
}

impl Balancers {
    /// Reconciles with `snap` unless it is the snapshot seen last. Cheap when nothing changed
    /// (two atomic loads); after a reload, the first requests wait for the short rebuild so that
    /// every request counts against the same breakers.
    pub fn sync(&self, snap: &Snapshot) {
        let ptr = snap as *const Snapshot as usize;
        let seen = || {
            self.seen_generation.load(Ordering::Acquire) == snap.generation
                && self.seen_snapshot.load(Ordering::Acquire) == ptr
        };
        if seen() {
            return;
        }
        let _guard = self.reconciling.lock().unwrap_or_else(|p| p.into_inner());
        if seen() {
            return;
        }
        let old = self.clusters.load_full();
        let mut next = FxHashMap::with_capacity_and_hasher(snap.clusters.len(), Default::default());
        for (name, cluster) in &snap.clusters {
            let rt = match old.get(name) {
                Some(rt) => {
                    rt.reconcile(cluster);
                    rt.clone()
                }
                None => Arc::new(ClusterRuntime::new(cluster)),
            };
            next.insert(name.clone(), rt);
        }
        self.clusters.store(Arc::new(next));
        self.seen_snapshot.store(ptr, Ordering::Release);
        self.seen_generation
            .store(snap.generation, Ordering::Release);
    }

    /// The runtime of `cluster`. A cluster the current snapshot does not know (a request still
    /// running on an older snapshot) gets a transient runtime that nothing else shares.
    pub fn runtime(&self, cluster: &Arc<Cluster>) -> Arc<ClusterRuntime> {
        match self.clusters.load().get(&cluster.name) {
            Some(rt) => rt.clone(),
            None => Arc::new(ClusterRuntime::new(cluster)),
        }
    }

    /// The runtime of the cluster named `name`, if the current snapshot has it.
    pub fn get(&self, name: &str) -> Option<Arc<ClusterRuntime>> {
        self.clusters.load().get(name).cloned()
    }

    /// Every runtime, sorted by cluster name (for the admin API).
    pub fn all(&self) -> Vec<Arc<ClusterRuntime>> {
        let mut all: Vec<_> = self.clusters.load().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// Counters of one cluster.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub rq_active: AtomicU64,
    pub cx_active: AtomicU64,
    pub retries_active: AtomicU64,
    pub rq_pending_overflow: AtomicU64,
    pub rq_overflow: AtomicU64,
    pub cx_overflow: AtomicU64,
    pub retry_overflow: AtomicU64,
    pub ejections_total: AtomicU64,
}

/// One endpoint of a cluster and what is known about its behaviour.
#[derive(Debug)]
pub struct EndpointState {
    pub address: EndpointAddress,
    pub port: u16,
    weight: AtomicU32,
    rq_active: AtomicU64,
    cx_active: AtomicU64,
    rq_total: AtomicU64,
    rq_error: AtomicU64,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// Nanoseconds since the runtime's epoch until which the endpoint is ejected; 0 = never was.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
}

impl EndpointState {
    fn new(address: EndpointAddress, port: u16, weight: u32) -> Self {
        EndpointState {
            address,
            port,
            weight: AtomicU32::new(weight.max(1)),
            rq_active: AtomicU64::new(0),
            cx_active: AtomicU64::new(0),
            rq_total: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_local: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
        }
    }

    /// `ip:port`, or `name:port` for an endpoint resolved by DNS.
    pub fn host(&self) -> String {
        match &self.address {
            EndpointAddress::Ip(ip) => SocketAddr::new(*ip, self.port).to_string(),
            EndpointAddress::Name(n) => format!("{n}:{}", self.port),
        }
    }
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }
    /// Requests (or TCP connections) in flight to this endpoint.
    pub fn rq_active(&self) -> u64 {
        self.rq_active.load(Ordering::Relaxed)
    }
    /// Open upstream connections to this endpoint.
    pub fn cx_active(&self) -> u64 {
        self.cx_active.load(Ordering::Relaxed)
    }
    pub fn rq_total(&self) -> u64 {
        self.rq_total.load(Ordering::Relaxed)
    }
    pub fn rq_error(&self) -> u64 {
        self.rq_error.load(Ordering::Relaxed)
    }
    /// How often outlier detection has ejected this endpoint.
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }
    fn ejected_at(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }
    fn reset_counters(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
    }
}

/// What a cluster is in one snapshot generation, with the structures its balancer needs.
struct ClusterState {
    cluster: Arc<Cluster>,
    endpoints: Vec<Arc<EndpointState>>,
    weights_equal: bool,
    /// Ring hash: (point, endpoint index), sorted by point.
    ring: Vec<(u64, u32)>,
    /// `maxConnections` permits; `None` = unlimited.
    connections: Option<Arc<Semaphore>>,
    /// PASSTHROUGH, or a service without endpoints of its own (`resolution: NONE`).
    original_dst: bool,
    /// `destination_service*` labels of the cluster's service, built once per generation.
    service_labels: Arc<ServiceLabels>,
    /// Locality failover: the priority of each endpoint, and how many priorities there are
    /// (1 = no failover: `priorities` is empty).
    priorities: Vec<u32>,
    levels: u32,
}

impl ClusterState {
    fn build(cluster: &Arc<Cluster>, endpoints: Vec<Arc<EndpointState>>) -> ClusterState {
        let weights_equal = endpoints.windows(2).all(|w| w[0].weight() == w[1].weight());
        let ring = match &cluster.lb {
            LbPolicy::ConsistentHash(h) => build_ring(&endpoints, h),
            _ => Vec::new(),
        };
        let priorities: Vec<u32> = (0..endpoints.len())
            .map(|i| cluster.endpoint_priority(i))
            .collect();
        let levels = priorities.iter().max().map_or(1, |m| m + 1);
        ClusterState {
            priorities: if levels > 1 { priorities } else { Vec::new() },
            levels,
            cluster: cluster.clone(),
            endpoints,
            weights_equal,
            ring,
            connections: semaphore(cluster.limits.max_connections),
            original_dst: cluster.lb == LbPolicy::Passthrough
                || matches!(cluster.upstream(), UpstreamAddress::OriginalDestination),
            service_labels: Arc::new(service_labels(&cluster.service)),
        }
    }
}

fn endpoint_list(cluster: &Cluster) -> Vec<(EndpointAddress, u16, u32)> {
    match cluster.upstream() {
        UpstreamAddress::Endpoints(eps) => eps,
        UpstreamAddress::OriginalDestination => Vec::new(),
    }
}

/// The runtime state of one cluster.
pub struct ClusterRuntime {
    pub name: Arc<str>,
    state: ArcSwap<ClusterState>,
    cursor: AtomicUsize,
    /// Smooth weighted round robin: the current weight of each endpoint.
    wrr: Mutex<Vec<i64>>,
    ejecting: Mutex<()>,
    epoch: Instant,
    pub stats: ClusterStats,
    /// Keep-alive HTTP/1.1 connections to this cluster's endpoints: they live and go with it.
    pub http1: crate::upstream_h1::Http1Pools,
    /// The ISTIO_MUTUAL security of the cluster version last seen (see `cluster_security`).
    pub mesh_security: arc_swap::ArcSwapOption<(Arc<Cluster>, UpstreamSecurity)>,
}

impl ClusterRuntime {
    /// Fresh state for `cluster`.
    pub fn new(cluster: &Arc<Cluster>) -> ClusterRuntime {
        let endpoints = endpoint_list(cluster)
            .into_iter()
            .map(|(a, p, w)| Arc::new(EndpointState::new(a, p, w)))
            .collect();
        ClusterRuntime {
            name: cluster.name.clone(),
            state: ArcSwap::from_pointee(ClusterState::build(cluster, endpoints)),
            cursor: AtomicUsize::new(0),
            wrr: Mutex::new(Vec::new()),
            ejecting: Mutex::new(()),
            epoch: Instant::now(),
            stats: ClusterStats::default(),
            http1: Default::default(),
            mesh_security: Default::default(),
        }
    }

    /// Adopts the endpoints and policy of `cluster`, keeping the state of endpoints that remain.
    fn reconcile(&self, cluster: &Arc<Cluster>) {
        let old = self.state.load();
        if Arc::ptr_eq(&old.cluster, cluster) {
            return;
        }
        let wanted = endpoint_list(cluster);
        let endpoints: Vec<_> = wanted
            .into_iter()
            .map(
                |(a, p, w)| match old.endpoints.iter().find(|e| e.address == a && e.port == p) {
                    Some(e) => {
                        e.weight.store(w.max(1), Ordering::Relaxed);
                        e.clone()
                    }
                    None => Arc::new(EndpointState::new(a, p, w)),
                },
            )
            .collect();
        let mut next = ClusterState::build(cluster, endpoints);
        if old.cluster.limits.max_connections == cluster.limits.max_connections {
            // Open connections hold permits of the current semaphore.
            next.connections = old.connections.clone();
        }
        self.state.store(Arc::new(next));
        self.wrr.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The cluster this runtime currently follows.
    pub fn cluster(&self) -> Arc<Cluster> {
        self.state.load().cluster.clone()
    }

    /// `destination_service*` labels for `cluster`: the ones built with this runtime's state when
    /// it follows the same service (the usual case), else computed for `cluster` (a request still
    /// running on an older snapshot).
    pub fn service_labels(&self, cluster: &Cluster) -> Arc<ServiceLabels> {
        let state = self.state.load();
        let (own, svc) = (&state.cluster.service, &cluster.service);
        if own.hostname == svc.hostname && own.namespace == svc.namespace {
            state.service_labels.clone()
        } else {
            Arc::new(service_labels(svc))
        }
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> Vec<Arc<EndpointState>> {
        self.state.load().endpoints.clone()
    }

    /// The current connection-pool limits.
    pub fn limits(&self) -> PoolLimits {
        self.state.load().cluster.limits.clone()
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Whether this cluster forwards to the original destination instead of its endpoints.
    pub fn is_original_destination(&self) -> bool {
        self.state.load().original_dst
    }
}
