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

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderMap;
use sluice_model::policy::{HashKey, HashPolicy, LbPolicy, OutlierPolicy, PoolLimits};
use sluice_model::registry::EndpointAddress;
use sluice_model::{Cluster, Snapshot, UpstreamAddress};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::metrics::{service_labels, ServiceLabels};
use crate::upstream_security::UpstreamSecurity;

/// Largest consistent-hash ring built, whatever the table size asks for (Envoy's maximum).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// Runtime state of every cluster of the current snapshot, by cluster name.
pub struct Balancers {
    clusters: ArcSwap<HashMap<Arc<str>, Arc<ClusterRuntime>>>,
    /// Generation and address of the snapshot last reconciled with, so an unchanged snapshot
    /// costs two atomic loads per request.
    seen_generation: AtomicU64,
    seen_snapshot: AtomicUsize,
    reconciling: Mutex<()>,
}

impl Default for Balancers {
    fn default() -> Self {
        Balancers {
            clusters: ArcSwap::from_pointee(HashMap::new()),
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
        let mut next = HashMap::with_capacity(snap.clusters.len());
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

/// Which circuit breaker tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `http2MaxRequests`: too many requests in flight.
    Requests,
    /// `http1MaxPendingRequests`: too many requests waiting for a connection.
    Pending,
    /// `maxConnections` (TCP proxying): too many open connections.
    Connections,
    /// `maxRetries`: too many retries in flight.
    Retries,
}

/// The result of one call to an endpoint, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// The upstream answered with this status.
    Status(u16),
    /// A TCP-proxied connection was established (the final success for a stream).
    Connected,
    /// The connection could not be made (refused, unreachable, TLS handshake failure).
    ConnectFailed,
    /// No response in time.
    Timeout,
    /// The connection was reset before the response started.
    Reset,
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
}

impl ClusterState {
    fn build(cluster: &Arc<Cluster>, endpoints: Vec<Arc<EndpointState>>) -> ClusterState {
        let weights_equal = endpoints.windows(2).all(|w| w[0].weight() == w[1].weight());
        let ring = match &cluster.lb {
            LbPolicy::ConsistentHash(h) => build_ring(&endpoints, h),
            _ => Vec::new(),
        };
        ClusterState {
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

fn semaphore(max: u32) -> Option<Arc<Semaphore>> {
    (max != u32::MAX).then(|| Arc::new(Semaphore::new(max as usize)))
}

fn endpoint_list(cluster: &Cluster) -> Vec<(EndpointAddress, u16, u32)> {
    match cluster.upstream() {
        UpstreamAddress::Endpoints(eps) => eps,
        UpstreamAddress::OriginalDestination => Vec::new(),
    }
}

/// Ring hash with at least `table_size` points, each endpoint owning a share proportional to its
/// weight. Maglev tables are served by the same ring: both give the same key the same endpoint
/// while the endpoint set is stable and move few keys when it changes, which is what users rely on.
fn build_ring(endpoints: &[Arc<EndpointState>], policy: &HashPolicy) -> Vec<(u64, u32)> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let size = policy.table_size.clamp(1, MAX_RING_SIZE);
    let total: u64 = endpoints
        .iter()
        .map(|e| u64::from(e.weight()))
        .sum::<u64>()
        .max(1);
    let mut ring = Vec::with_capacity(size as usize + endpoints.len());
    for (i, ep) in endpoints.iter().enumerate() {
        let host = ep.host();
        let replicas = (size * u64::from(ep.weight())).div_ceil(total).max(1);
        for r in 0..replicas {
            let mut h = DefaultHasher::new();
            host.hash(&mut h);
            r.hash(&mut h);
            ring.push((h.finish(), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// The 64-bit hash of a consistent-hash key.
pub fn hash_bytes(key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// What a request offers for consistent hashing.
pub struct HashInput<'a> {
    pub headers: &'a HeaderMap,
    pub path_and_query: &'a str,
    /// The downstream client's address.
    pub source: SocketAddr,
}

/// The consistent-hash key of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestHash {
    /// No key: the balancer picks at random.
    None,
    Hash(u64),
    /// The cookie was missing and has a TTL: the proxy made one up; `set_cookie` goes on the
    /// response so the client sticks to the same endpoint (Envoy's behaviour).
    NewCookie {
        hash: u64,
        set_cookie: String,
    },
}

impl RequestHash {
    pub fn value(&self) -> Option<u64> {
        match self {
            RequestHash::None => None,
            RequestHash::Hash(h) | RequestHash::NewCookie { hash: h, .. } => Some(*h),
        }
    }
}

/// Computes the hash `key` asks for from a request.
pub fn request_hash(key: &HashKey, input: &HashInput<'_>) -> RequestHash {
    match key {
        HashKey::Header(name) => {
            let mut values = input.headers.get_all(name.as_str()).iter().peekable();
            if values.peek().is_none() {
                return RequestHash::None;
            }
            let mut h = DefaultHasher::new();
            for v in values {
                v.as_bytes().hash(&mut h);
            }
            RequestHash::Hash(h.finish())
        }
        HashKey::SourceIp => RequestHash::Hash(source_ip_hash(input.source.ip())),
        HashKey::QueryParameter(name) => {
            let query = input.path_and_query.split_once('?').map_or("", |(_, q)| q);
            query
                .split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                .find(|(k, _)| *k == name)
                .map_or(RequestHash::None, |(_, v)| {
                    RequestHash::Hash(hash_bytes(v.as_bytes()))
                })
        }
        HashKey::Cookie { name, path, ttl } => {
            if let Some(v) = cookie_value(input.headers, name) {
                return RequestHash::Hash(hash_bytes(v.as_bytes()));
            }
            let Some(ttl) = ttl else {
                return RequestHash::None;
            };
            // Envoy derives the new value from the downstream address.
            let value = format!("{:016x}", hash_bytes(input.source.to_string().as_bytes()));
            let hash = hash_bytes(value.as_bytes());
            let mut set_cookie = format!("{name}=\"{value}\"; Max-Age={}", ttl.as_secs());
            if let Some(p) = path.as_deref().filter(|p| !p.is_empty()) {
                set_cookie.push_str("; Path=");
                set_cookie.push_str(p);
            }
            set_cookie.push_str("; HttpOnly");
            RequestHash::NewCookie { hash, set_cookie }
        }
    }
}

/// The hash `useSourceIp` uses, for TCP connections as for HTTP requests.
pub fn source_ip_hash(ip: IpAddr) -> u64 {
    hash_bytes(ip.to_string().as_bytes())
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
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

    /// Whether outlier detection has `ep` out right now.
    pub fn is_ejected(&self, ep: &EndpointState) -> bool {
        ep.ejected_at(self.now())
    }

    /// Starts a request against the circuit breakers: `maxRequests` (requests in flight) and
    /// `http1MaxPendingRequests`. With HTTP/1.1 each busy connection carries one request, so once
    /// `maxConnections` requests are in flight, further requests wait for a connection (pending).
    pub fn admit_request(self: &Arc<Self>) -> Result<RequestPermit, Overflow> {
        let limits = &self.state.load().cluster.limits;
        let active = self.stats.rq_active.fetch_add(1, Ordering::AcqRel);
        let permit = RequestPermit {
            runtime: self.clone(),
        };
        if active >= u64::from(limits.max_requests) {
            self.stats.rq_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::Requests);
        }
        let max_cx = u64::from(limits.max_connections);
        if limits.max_connections != u32::MAX && active >= max_cx {
            let pending = active - max_cx;
            if pending >= u64::from(limits.max_pending_requests) {
                self.stats
                    .rq_pending_overflow
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Overflow::Pending);
            }
        }
        Ok(permit)
    }

    /// Starts a retry, unless `maxRetries` retries are already in flight.
    pub fn try_retry(self: &Arc<Self>) -> Result<RetryPermit, Overflow> {
        let max = u64::from(self.state.load().cluster.limits.max_retries);
        let active = self.stats.retries_active.fetch_add(1, Ordering::AcqRel);
        let permit = RetryPermit {
            runtime: self.clone(),
        };
        if active >= max {
            self.stats.retry_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::Retries);
        }
        Ok(permit)
    }

    /// Opens a connection slot for `addr`, waiting while `maxConnections` are open (HTTP: the
    /// request is pending meanwhile).
    pub async fn acquire_connection(self: &Arc<Self>, addr: SocketAddr) -> ConnectionGuard {
        let sem = self.state.load().connections.clone();
        let permit = match sem {
            Some(s) => s.acquire_owned().await.ok(),
            None => None,
        };
        self.connection_guard(addr, permit)
    }

    /// Whether `maxConnections` connections are open: a new one would wait.
    pub fn connection_slots_full(&self) -> bool {
        self.state
            .load()
            .connections
            .as_ref()
            .is_some_and(|s| s.available_permits() == 0)
    }

    /// Opens a connection slot for `addr`, or fails at once when `maxConnections` are open
    /// (TCP proxying refuses the connection).
    pub fn try_acquire_connection(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<ConnectionGuard, Overflow> {
        let sem = self.state.load().connections.clone();
        let permit = match sem {
            Some(s) => match s.try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.stats.cx_overflow.fetch_add(1, Ordering::Relaxed);
                    return Err(Overflow::Connections);
                }
            },
            None => None,
        };
        Ok(self.connection_guard(addr, permit))
    }

    fn connection_guard(
        self: &Arc<Self>,
        addr: SocketAddr,
        permit: Option<OwnedSemaphorePermit>,
    ) -> ConnectionGuard {
        let endpoint = self
            .state
            .load()
            .endpoints
            .iter()
            .find(|e| e.address == EndpointAddress::Ip(addr.ip()) && e.port == addr.port())
            .cloned();
        self.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = &endpoint {
            e.cx_active.fetch_add(1, Ordering::Relaxed);
        }
        ConnectionGuard {
            runtime: Arc::downgrade(self),
            endpoint,
            _permit: permit,
        }
    }

    /// Whether this cluster forwards to the original destination instead of its endpoints.
    pub fn is_original_destination(&self) -> bool {
        self.state.load().original_dst
    }

    /// The consistent-hash policy, if the cluster balances by hash.
    pub fn hash_policy(&self) -> Option<HashPolicy> {
        match &self.state.load().cluster.lb {
            LbPolicy::ConsistentHash(h) => Some(h.clone()),
            _ => None,
        }
    }

    /// Picks an endpoint for one try. `hash` is the request's consistent-hash key (ignored by
    /// other balancers); `avoid` are endpoints already tried, skipped while another is available.
    /// `None` when every endpoint is ejected (or there are none): 503 UH.
    pub fn pick(
        self: &Arc<Self>,
        hash: Option<u64>,
        avoid: &[Arc<EndpointState>],
    ) -> Option<EndpointGuard> {
        let state = self.state.load();
        let n = state.endpoints.len();
        if n == 0 {
            return None;
        }
        let now = self.now();
        let panic = self.panic_mode(&state, now);
        let healthy = |i: usize| panic || !state.endpoints[i].ejected_at(now);
        let fresh =
            |i: usize| healthy(i) && !avoid.iter().any(|a| Arc::ptr_eq(a, &state.endpoints[i]));
        let idx = self
            .choose(&state, hash, &fresh)
            .or_else(|| (!avoid.is_empty()).then(|| self.choose(&state, hash, &healthy))?)?;
        let ep = state.endpoints[idx].clone();
        ep.rq_active.fetch_add(1, Ordering::Relaxed);
        ep.rq_total.fetch_add(1, Ordering::Relaxed);
        Some(EndpointGuard {
            runtime: self.clone(),
            endpoint: ep,
        })
    }

    /// Istio maps `minHealthPercent` to Envoy's panic threshold: below it, ejections are ignored.
    fn panic_mode(&self, state: &ClusterState, now: u64) -> bool {
        let Some(o) = &state.cluster.outlier else {
            return false;
        };
        if o.min_health_percent == 0 {
            return false;
        }
        let total = state.endpoints.len() as u64;
        let healthy = state
            .endpoints
            .iter()
            .filter(|e| !e.ejected_at(now))
            .count() as u64;
        healthy * 100 < u64::from(o.min_health_percent) * total
    }

    fn choose(
        &self,
        state: &ClusterState,
        hash: Option<u64>,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = state.endpoints.len();
        match &state.cluster.lb {
            LbPolicy::RoundRobin if state.weights_equal => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|i| ok(*i))
            }
            LbPolicy::RoundRobin => self.smooth_wrr(state, ok),
            LbPolicy::LeastRequest if state.weights_equal => {
                let load = |i: usize| state.endpoints[i].rq_active();
                // Power of two choices (Envoy's default choice_count); usually both are eligible.
                let (a, b) = (random_below(n), random_below(n));
                if ok(a) && ok(b) {
                    return Some(if load(b) < load(a) { b } else { a });
                }
                let eligible: Vec<usize> = (0..n).filter(|i| ok(*i)).collect();
                if eligible.is_empty() {
                    return None;
                }
                let a = eligible[random_below(eligible.len())];
                let b = eligible[random_below(eligible.len())];
                Some(if load(b) < load(a) { b } else { a })
            }
            LbPolicy::LeastRequest => weighted_random(n, ok, |i| {
                let e = &state.endpoints[i];
                f64::from(e.weight()) / (e.rq_active() as f64 + 1.0)
            }),
            LbPolicy::ConsistentHash(_) if hash.is_some() && !state.ring.is_empty() => {
                let h = hash.unwrap_or_default();
                let ring = &state.ring;
                let start = ring.partition_point(|(p, _)| *p < h);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1 as usize)
                    .find(|i| ok(*i))
            }
            // RANDOM, a hash policy without a key, and PASSTHROUGH asked for an endpoint anyway.
            _ => weighted_random(n, ok, |i| f64::from(state.endpoints[i].weight())),
        }
    }

    fn smooth_wrr(&self, state: &ClusterState, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = state.endpoints.len();
        let mut current = self.wrr.lock().unwrap_or_else(|p| p.into_inner());
        if current.len() != n {
            *current = vec![0; n];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in (0..n).filter(|i| ok(*i)) {
            let w = i64::from(state.endpoints[i].weight());
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }

    fn report(&self, ep: &EndpointState, result: CallResult) {
        let state = self.state.load();
        let error = match result {
            CallResult::Status(s) => s >= 500,
            CallResult::Connected => false,
            _ => true,
        };
        if error {
            ep.rq_error.fetch_add(1, Ordering::Relaxed);
        }
        let Some(policy) = &state.cluster.outlier else {
            return;
        };
        let split = policy.consecutive_local_origin.is_some();
        let bump = |c: &AtomicU32| c.fetch_add(1, Ordering::Relaxed) + 1;
        let reset = |c: &AtomicU32| c.store(0, Ordering::Relaxed);
        let mut tripped = false;
        let over = |count: u32, limit: Option<u32>| limit.is_some_and(|l| l > 0 && count >= l);
        match result {
            CallResult::Status(s) => {
                if s >= 500 {
                    tripped |= over(bump(&ep.consecutive_5xx), policy.consecutive_5xx);
                    if (502..=504).contains(&s) {
                        tripped |= over(bump(&ep.consecutive_gateway), policy.consecutive_gateway);
                    } else {
                        reset(&ep.consecutive_gateway);
                    }
                } else {
                    reset(&ep.consecutive_5xx);
                    reset(&ep.consecutive_gateway);
                }
                if split {
                    reset(&ep.consecutive_local);
                }
            }
            CallResult::Connected => {
                // The final success of a TCP-proxied connection.
                reset(&ep.consecutive_local);
                if !split {
                    reset(&ep.consecutive_5xx);
                    reset(&ep.consecutive_gateway);
                }
            }
            CallResult::ConnectFailed | CallResult::Timeout | CallResult::Reset => {
                if split {
                    tripped |= over(bump(&ep.consecutive_local), policy.consecutive_local_origin);
                } else {
                    // Without the split, Envoy counts local-origin failures as 503/504s.
                    tripped |= over(bump(&ep.consecutive_5xx), policy.consecutive_5xx);
                    tripped |= over(bump(&ep.consecutive_gateway), policy.consecutive_gateway);
                }
            }
        }
        if tripped {
            self.eject(&state, ep, policy);
        }
    }

    /// Ejects `ep` for `baseEjectionTime × times ejected`, unless `maxEjectionPercent` of the
    /// cluster is already out. Like Envoy, the share is checked before ejecting, so one ejection
    /// is always allowed.
    fn eject(&self, state: &ClusterState, ep: &EndpointState, policy: &OutlierPolicy) {
        let _lock = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.now();
        if ep.ejected_at(now) {
            return;
        }
        let total = state.endpoints.len() as u64;
        let ejected = state.endpoints.iter().filter(|e| e.ejected_at(now)).count() as u64;
        if ejected > 0 && ejected * 100 >= u64::from(policy.max_ejection_percent) * total {
            ep.reset_counters();
            return;
        }
        let times = ep.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let out = policy.base_ejection_time.saturating_mul(times);
        let until = now.saturating_add(out.as_nanos().min(u128::from(u64::MAX)) as u64);
        ep.ejected_until.store(until.max(1), Ordering::Relaxed);
        ep.reset_counters();
        self.stats.ejections_total.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "outlier detection ejected {} from {} for {:?}",
            ep.host(),
            self.name,
            out
        );
    }

    /// How long `ep` stays ejected from now (zero when it is not ejected).
    pub fn ejected_for(&self, ep: &EndpointState) -> Duration {
        let until = ep.ejected_until.load(Ordering::Relaxed);
        Duration::from_nanos(until.saturating_sub(self.now()))
    }
}

fn random_below(n: usize) -> usize {
    (rand::random::<u64>() % n.max(1) as u64) as usize
}

fn weighted_random(
    n: usize,
    ok: &dyn Fn(usize) -> bool,
    weight: impl Fn(usize) -> f64,
) -> Option<usize> {
    let total: f64 = (0..n).filter(|i| ok(*i)).map(&weight).sum();
    if total <= 0.0 {
        return None;
    }
    let mut point = rand::random::<f64>() * total;
    let mut last = None;
    for i in (0..n).filter(|i| ok(*i)) {
        last = Some(i);
        point -= weight(i);
        if point < 0.0 {
            return Some(i);
        }
    }
    last
}

/// A request in flight to a cluster (`rq_active`); released when dropped.
pub struct RequestPermit {
    runtime: Arc<ClusterRuntime>,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.runtime.stats.rq_active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A retry in flight to a cluster; released when dropped.
pub struct RetryPermit {
    runtime: Arc<ClusterRuntime>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.runtime
            .stats
            .retries_active
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open upstream connection (`cx_active`, a `maxConnections` permit); released when dropped.
pub struct ConnectionGuard {
    /// Weak: idle pooled connections must not keep a removed cluster's runtime (which owns
    /// their pool) alive.
    runtime: Weak<ClusterRuntime>,
    endpoint: Option<Arc<EndpointState>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.upgrade() {
            rt.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(e) = &self.endpoint {
            e.cx_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The endpoint picked for one try; counts as an active request on it until dropped.
pub struct EndpointGuard {
    runtime: Arc<ClusterRuntime>,
    endpoint: Arc<EndpointState>,
}

impl EndpointGuard {
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }
    /// Records how the try went, for `rq_error` and outlier detection.
    pub fn report(&self, result: CallResult) {
        self.runtime.report(&self.endpoint, result);
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.endpoint.rq_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Envoy's `/clusters` text for the clusters of `snap`, with the runtime state of `balancers`.
pub fn clusters_text(snap: &Snapshot, balancers: &Balancers) -> String {
    use std::fmt::Write as _;
    balancers.sync(snap);
    let mut out = String::new();
    for name in [
        sluice_model::PASSTHROUGH_CLUSTER,
        sluice_model::BLACKHOLE_CLUSTER,
    ] {
        let _ = writeln!(out, "{name}::added_via_api::false");
    }
    for c in snap.clusters.values() {
        let name = &c.name;
        let rt = balancers.get(name);
        let l = &c.limits;
        let _ = writeln!(out, "{name}::added_via_api::true");
        for (what, v) in [
            ("max_connections", l.max_connections),
            ("max_pending_requests", l.max_pending_requests),
            ("max_requests", l.max_requests),
            ("max_retries", l.max_retries),
        ] {
            let _ = writeln!(out, "{name}::default_priority::{what}::{v}");
        }
        if let Some(rt) = &rt {
            for ep in rt.endpoints() {
                let host = ep.host();
                let _ = writeln!(out, "{name}::{host}::cx_active::{}", ep.cx_active());
                let _ = writeln!(out, "{name}::{host}::rq_active::{}", ep.rq_active());
                let _ = writeln!(out, "{name}::{host}::rq_error::{}", ep.rq_error());
                let _ = writeln!(out, "{name}::{host}::rq_total::{}", ep.rq_total());
                let flags = if rt.is_ejected(&ep) {
                    "/failed_outlier_check"
                } else {
                    "healthy"
                };
                let _ = writeln!(out, "{name}::{host}::health_flags::{flags}");
                let _ = writeln!(out, "{name}::{host}::weight::{}", ep.weight());
            }
        }
    }
    out
}

/// Envoy's `/clusters?format=json` for the clusters of `snap`.
pub fn clusters_json(snap: &Snapshot, balancers: &Balancers) -> serde_json::Value {
    balancers.sync(snap);
    let statuses: Vec<_> = snap
        .clusters
        .values()
        .map(|c| {
            let l = &c.limits;
            let hosts: Vec<_> = balancers
                .get(&c.name)
                .map(|rt| {
                    rt.endpoints()
                        .iter()
                        .map(|ep| {
                            let address = match &ep.address {
                                EndpointAddress::Ip(ip) => ip.to_string(),
                                EndpointAddress::Name(n) => n.to_string(),
                            };
                            let mut health = serde_json::json!({ "eds_health_status": "HEALTHY" });
                            if rt.is_ejected(ep) {
                                health["failed_outlier_check"] = true.into();
                            }
                            serde_json::json!({
                                "address": { "socket_address": {
                                    "address": address, "port_value": ep.port } },
                                "stats": [
                                    { "name": "cx_active", "type": "GAUGE", "value": ep.cx_active() },
                                    { "name": "rq_active", "type": "GAUGE", "value": ep.rq_active() },
                                    { "name": "rq_error", "value": ep.rq_error() },
                                    { "name": "rq_total", "value": ep.rq_total() },
                                ],
                                "health_status": health,
                                "weight": ep.weight(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({
                "name": c.name.as_ref(),
                "added_via_api": true,
                "circuit_breakers": { "thresholds": [{
                    "max_connections": l.max_connections,
                    "max_pending_requests": l.max_pending_requests,
                    "max_requests": l.max_requests,
                    "max_retries": l.max_retries,
                }]},
                "host_statuses": hosts,
            })
        })
        .collect();
    serde_json::json!({ "cluster_statuses": statuses })
}
