//! Picking an endpoint: Envoy's ROUND_ROBIN (plain and smooth weighted), LEAST_REQUEST (power
//! of two choices), RANDOM and ring hash, and the consistent-hash keys a request offers (header,
//! cookie, source IP, query parameter).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::HeaderMap;
use sluice_model::policy::{HashKey, HashPolicy, LbPolicy};

use super::{CallResult, ClusterRuntime, ClusterState, EndpointState};

/// Largest consistent-hash ring built, whatever the table size asks for (Envoy's maximum).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// Ring hash with at least `table_size` points, each endpoint owning a share proportional to its
/// weight. Maglev tables are served by the same ring: both give the same key the same endpoint
/// while the endpoint set is stable and move few keys when it changes, which is what users rely on.
pub(super) fn build_ring(endpoints: &[Arc<EndpointState>], policy: &HashPolicy) -> Vec<(u64, u32)> {
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

impl ClusterRuntime {
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
        // Locality failover: this request's priority first; any healthy endpoint if it has no
        // fresh one left (retries that used it up).
        let level = (state.levels > 1).then(|| priority_level(&state, &healthy));
        let at_level = |i: usize| level.is_none_or(|l| state.priorities[i] == l);
        let idx = level
            .and_then(|_| self.choose(&state, hash, &|i| at_level(i) && fresh(i)))
            .or_else(|| self.choose(&state, hash, &fresh))
            .or_else(|| (!avoid.is_empty()).then(|| self.choose(&state, hash, &healthy))?)?;
        let ep = state.endpoints[idx].clone();
        ep.rq_active.fetch_add(1, Ordering::Relaxed);
        ep.rq_total.fetch_add(1, Ordering::Relaxed);
        Some(EndpointGuard {
            runtime: self.clone(),
            endpoint: ep,
        })
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
}

/// Envoy's overprovisioning factor (1.4, in percent): a priority takes all traffic while at
/// least 1/1.4 ≈ 71% of its endpoints are healthy.
const OVERPROVISIONING: u64 = 140;

/// The priority one request goes to, as Envoy spreads load over priorities: each takes
/// `min(100, healthy% × 1.4)` of what the better ones left; when all together take less than
/// 100, their shares are scaled up to 100; when no endpoint is healthy anywhere, priority 0.
fn priority_level(state: &ClusterState, healthy: &dyn Fn(usize) -> bool) -> u32 {
    let levels = state.levels as usize;
    let mut total = vec![0u64; levels];
    let mut up = vec![0u64; levels];
    for (i, &p) in state.priorities.iter().enumerate() {
        total[p as usize] += 1;
        if healthy(i) {
            up[p as usize] += 1;
        }
    }
    let health: Vec<u64> = (0..levels)
        .map(|p| (up[p] * OVERPROVISIONING / total[p].max(1)).min(100))
        .collect();
    let sum: u64 = health.iter().sum();
    if sum == 0 {
        return 0;
    }
    let mut load = Vec::with_capacity(levels);
    let mut left = 100u64;
    for h in &health {
        let l = if sum >= 100 {
            (*h).min(left)
        } else {
            h * 100 / sum
        };
        left = left.saturating_sub(l);
        load.push(l);
    }
    if load.iter().all(|l| *l == 0) {
        return 0;
    }
    let mut point = rand::random::<u64>() % load.iter().sum::<u64>();
    for (p, l) in load.iter().enumerate() {
        if point < *l {
            return p as u32;
        }
        point -= l;
    }
    0
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
