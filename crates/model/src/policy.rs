//! DestinationRule traffic policy as the data path applies it to one cluster: load balancing,
//! connection-pool limits (circuit breakers) and outlier detection. Built by `snapshot` from the
//! merged DestinationRules (subset policy over top level, port-level over the policy it sits in);
//! enforced by the proxy's balancer.

use std::time::Duration;

use serde::Serialize;
use sluice_api::networking::{
    ConnectionPoolSettings, ConsistentHashLb, Labels, LoadBalancerSettings, LocalityLbSetting,
    OutlierDetection,
};

use crate::registry::Endpoint;

/// How an endpoint is chosen for each request or connection (`loadBalancer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub enum LbPolicy {
    RoundRobin,
    /// Istio's default (`UNSPECIFIED` → Envoy `LEAST_REQUEST`): the less busy of two random picks.
    #[default]
    LeastRequest,
    Random,
    /// Forward to the address the client connected to (`PASSTHROUGH`, Envoy ORIGINAL_DST).
    Passthrough,
    /// `consistentHash`: the same key goes to the same endpoint while the endpoint set is stable.
    ConsistentHash(HashPolicy),
}

/// `consistentHash` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HashPolicy {
    pub key: HashKey,
    /// `ringHash.minimumRingSize` (default 1024), or `maglev.tableSize` (default 65537).
    pub table_size: u64,
    pub maglev: bool,
}

/// What a consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HashKey {
    /// `httpHeaderName` (lowercased).
    Header(String),
    /// `httpCookie`: hash the cookie; when absent and `ttl` is set, the proxy generates one and
    /// sets it on the response (Envoy's behaviour).
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
    },
    /// `useSourceIp`.
    SourceIp,
    /// `httpQueryParameterName`.
    QueryParameter(String),
}

/// `connectionPool` limits per cluster. Istio's defaults are all `u32::MAX` ("unlimited"), not
/// Envoy's 1024, so an unset field never trips a breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolLimits {
    /// `tcp.maxConnections`: open upstream connections.
    pub max_connections: u32,
    /// `tcp.connectTimeout` (default: the mesh's `connectTimeout`, 10 s).
    pub connect_timeout: Duration,
    /// `tcp.tcpKeepalive`; `None` = OS defaults.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `tcp.maxConnectionDuration`; `None` = unlimited.
    pub max_connection_duration: Option<Duration>,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`: requests in flight to the cluster.
    pub max_requests: u32,
    /// `http.maxRequestsPerConnection`; 0 = unlimited, 1 = no keep-alive.
    pub max_requests_per_connection: u32,
    /// `http.maxRetries`: retries in flight to the cluster.
    pub max_retries: u32,
    /// `http.idleTimeout` (default 1 h); `None` = never close idle connections (`0s`).
    pub idle_timeout: Option<Duration>,
    /// `http.h2UpgradePolicy`.
    pub h2_upgrade_policy: H2UpgradePolicy,
    /// `http.useClientProtocol`: speak the downstream request's HTTP version upstream.
    pub use_client_protocol: bool,
}

/// `http.h2UpgradePolicy`: whether HTTP/1.1 requests to an HTTP port go upstream as HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum H2UpgradePolicy {
    /// `DEFAULT` (or unset): the mesh-wide policy, which is "do not upgrade" unless the mesh
    /// config says `UPGRADE` (sluice does not read the mesh-wide setting yet).
    #[default]
    Default,
    /// `DO_NOT_UPGRADE`.
    DoNotUpgrade,
    /// `UPGRADE`.
    Upgrade,
}

impl H2UpgradePolicy {
    /// Parses the enum name case-insensitively; unknown names are `DEFAULT`.
    pub fn parse(s: &str) -> H2UpgradePolicy {
        match s.to_ascii_uppercase().as_str() {
            "UPGRADE" => H2UpgradePolicy::Upgrade,
            "DO_NOT_UPGRADE" => H2UpgradePolicy::DoNotUpgrade,
            _ => H2UpgradePolicy::Default,
        }
    }
}

impl PoolLimits {
    /// Istio's defaults with the mesh connect timeout.
    pub fn istio_default(connect_timeout: Duration) -> PoolLimits {
        PoolLimits {
            max_connections: u32::MAX,
            connect_timeout,
            tcp_keepalive: None,
            max_connection_duration: None,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_requests_per_connection: 0,
            max_retries: u32::MAX,
            idle_timeout: Some(Duration::from_secs(3600)),
            h2_upgrade_policy: H2UpgradePolicy::Default,
            use_client_protocol: false,
        }
    }
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits::istio_default(Duration::from_secs(10))
    }
}

/// `tcp.tcpKeepalive`; unset fields keep the OS defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct TcpKeepalive {
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
    pub probes: Option<u32>,
}

/// `outlierDetection`, with Istio's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlierPolicy {
    /// `consecutive5xxErrors` (default 5; `None` when set to 0 = disabled).
    pub consecutive_5xx: Option<u32>,
    /// `consecutiveGatewayErrors` (502/503/504; off unless set).
    pub consecutive_gateway: Option<u32>,
    /// `consecutiveLocalOriginFailures` when `splitExternalLocalOriginErrors` is set (default 5).
    pub consecutive_local_origin: Option<u32>,
    /// `interval` (default 10 s): how often ejections are reviewed.
    pub interval: Duration,
    /// `baseEjectionTime` (default 30 s); an endpoint stays out `base × times ejected`.
    pub base_ejection_time: Duration,
    /// `maxEjectionPercent` (default 10): at most this share of endpoints is out at once
    /// (at least one endpoint may always be ejected, as Envoy does).
    pub max_ejection_percent: u32,
    /// `minHealthPercent` (default 0): below this share of healthy endpoints, ejection is off.
    pub min_health_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            consecutive_local_origin: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

/// Default `ringHash.minimumRingSize` (Envoy's).
pub const DEFAULT_RING_SIZE: u64 = 1024;
/// Default `maglev.tableSize` (Envoy's).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;

impl LbPolicy {
    /// The policy a `loadBalancer` block asks for; `None` (unset) is Istio's default.
    ///
    /// `LEAST_CONN` (deprecated) and `UNSPECIFIED` are Envoy `LEAST_REQUEST`, as in Istio. A
    /// `consistentHash` without any key hashes nothing, so Envoy picks at random.
    pub fn from_settings(lb: Option<&LoadBalancerSettings>) -> LbPolicy {
        let Some(lb) = lb else {
            return LbPolicy::default();
        };
        if let Some(ch) = &lb.consistent_hash {
            return HashPolicy::from_settings(ch)
                .map_or(LbPolicy::Random, LbPolicy::ConsistentHash);
        }
        match lb
            .simple
            .as_deref()
            .unwrap_or("UNSPECIFIED")
            .to_ascii_uppercase()
            .as_str()
        {
            "ROUND_ROBIN" => LbPolicy::RoundRobin,
            "RANDOM" => LbPolicy::Random,
            "PASSTHROUGH" => LbPolicy::Passthrough,
            _ => LbPolicy::LeastRequest,
        }
    }
}

impl HashPolicy {
    /// `consistentHash` settings; `None` when no hash key is set.
    pub fn from_settings(ch: &ConsistentHashLb) -> Option<HashPolicy> {
        let key = if let Some(h) = ch.http_header_name.as_deref().filter(|h| !h.is_empty()) {
            HashKey::Header(h.to_ascii_lowercase())
        } else if let Some(c) = &ch.http_cookie {
            HashKey::Cookie {
                name: c.name.clone(),
                path: c.path.clone().filter(|p| !p.is_empty()),
                ttl: c.ttl.map(|d| d.0),
            }
        } else if ch.use_source_ip == Some(true) {
            HashKey::SourceIp
        } else if let Some(q) = ch
            .http_query_parameter_name
            .as_deref()
            .filter(|q| !q.is_empty())
        {
            HashKey::QueryParameter(q.to_string())
        } else {
            return None;
        };
        let (table_size, maglev) = match (&ch.maglev, &ch.ring_hash) {
            (Some(m), _) => (
                m.table_size
                    .filter(|n| *n != 0)
                    .unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
                true,
            ),
            (None, Some(r)) => (
                r.minimum_ring_size
                    .filter(|n| *n != 0)
                    .unwrap_or(DEFAULT_RING_SIZE),
                false,
            ),
            (None, None) => (
                ch.minimum_ring_size
                    .filter(|n| *n != 0)
                    .unwrap_or(DEFAULT_RING_SIZE),
                false,
            ),
        };
        Some(HashPolicy {
            key,
            table_size,
            maglev,
        })
    }
}

/// A positive `int32` limit, or "unlimited" when unset or not positive (Istio only passes
/// values > 0 to Envoy).
fn limit(v: Option<i32>) -> u32 {
    v.and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(u32::MAX)
}

impl PoolLimits {
    /// The limits a `connectionPool` block sets; unset fields keep Istio's defaults.
    pub fn from_settings(
        pool: Option<&ConnectionPoolSettings>,
        mesh_connect_timeout: Duration,
    ) -> PoolLimits {
        let mut out = PoolLimits::istio_default(mesh_connect_timeout);
        let Some(pool) = pool else {
            return out;
        };
        if let Some(tcp) = &pool.tcp {
            out.max_connections = limit(tcp.max_connections);
            if let Some(t) = tcp.connect_timeout {
                out.connect_timeout = t.0;
            }
            out.tcp_keepalive = tcp.tcp_keepalive.as_ref().map(|ka| TcpKeepalive {
                time: ka.time.map(|d| d.0),
                interval: ka.interval.map(|d| d.0),
                probes: ka.probes,
            });
            out.max_connection_duration = tcp
                .max_connection_duration
                .map(|d| d.0)
                .filter(|d| !d.is_zero());
        }
        let http_idle = pool.http.as_ref().and_then(|h| h.idle_timeout);
        let tcp_idle = pool.tcp.as_ref().and_then(|t| t.idle_timeout);
        if let Some(idle) = http_idle.or(tcp_idle) {
            out.idle_timeout = Some(idle.0).filter(|d| !d.is_zero());
        }
        if let Some(http) = &pool.http {
            out.max_pending_requests = limit(http.http1_max_pending_requests);
            out.max_requests = limit(http.http2_max_requests);
            out.max_requests_per_connection = http
                .max_requests_per_connection
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0);
            out.max_retries = limit(http.max_retries);
            out.h2_upgrade_policy = http
                .h2_upgrade_policy
                .as_deref()
                .map_or(H2UpgradePolicy::Default, H2UpgradePolicy::parse);
            out.use_client_protocol = http.use_client_protocol == Some(true);
        }
        out
    }
}

impl OutlierPolicy {
    /// `outlierDetection` with Istio's defaults for unset fields (`applyOutlierDetection`).
    pub fn from_settings(od: &OutlierDetection) -> OutlierPolicy {
        let d = OutlierPolicy::default();
        let consecutive_5xx = match od.consecutive_5xx_errors {
            Some(n) => Some(n).filter(|n| *n > 0),
            None => match od.consecutive_errors.and_then(|n| u32::try_from(n).ok()) {
                Some(n) if n > 0 => Some(n),
                _ => d.consecutive_5xx,
            },
        };
        let consecutive_local_origin = if od.split_external_local_origin_errors == Some(true) {
            Some(od.consecutive_local_origin_failures.unwrap_or(5)).filter(|n| *n > 0)
        } else {
            None
        };
        OutlierPolicy {
            consecutive_5xx,
            consecutive_gateway: od.consecutive_gateway_errors.filter(|n| *n > 0),
            consecutive_local_origin,
            interval: od.interval.map_or(d.interval, |i| i.0),
            base_ejection_time: od.base_ejection_time.map_or(d.base_ejection_time, |b| b.0),
            max_ejection_percent: od
                .max_ejection_percent
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0)
                .map_or(d.max_ejection_percent, |p| p.min(100)),
            min_health_percent: od
                .min_health_percent
                .and_then(|p| u32::try_from(p).ok())
                .map_or(d.min_health_percent, |p| p.min(100)),
        }
    }
}

/// The label Istio reads a workload's locality from (`region.zone.subzone`: label values
/// cannot hold `/`).
pub const LOCALITY_LABEL: &str = "istio-locality";
/// Kubernetes topology labels (Istio adds them to every endpoint from its locality).
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
const NETWORK_LABEL: &str = "topology.istio.io/network";

/// A locality `region/zone/subzone` (Envoy's `core.Locality`); missing parts are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// `region/zone/subzone` (Istio's `SplitLocalityLabel`: `/`, or `.` in a label value).
    pub fn parse(s: &str) -> Locality {
        let sep = if s.contains('/') { '/' } else { '.' };
        let mut parts = s.splitn(3, sep).map(str::to_string);
        Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    /// The locality workload `labels` declare: `istio-locality`, else the topology labels (a
    /// region is required); `None` when they declare none.
    pub fn from_labels(labels: &Labels) -> Option<Locality> {
        if let Some(l) = labels.get(LOCALITY_LABEL).filter(|l| !l.is_empty()) {
            return Some(Locality::parse(l));
        }
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let region = get(REGION_LABEL);
        (!region.is_empty()).then(|| Locality {
            region,
            zone: get(ZONE_LABEL),
            subzone: get(SUBZONE_LABEL),
        })
    }

    /// [`Locality::from_labels`] as `region/zone/subzone`.
    pub fn label_string(labels: &Labels) -> Option<std::sync::Arc<str>> {
        Locality::from_labels(labels).map(|l| l.to_string().into())
    }

    /// Istio's `LocalityMatch`: `rule` is `region[/zone[/subzone]]`, each part possibly `*`.
    pub fn matches(&self, rule: &str) -> bool {
        let r = Locality::parse(rule);
        (r.region == "*" || r.region == self.region)
            && (r.zone.is_empty() || r.zone == "*" || r.zone == self.zone)
            && (r.subzone.is_empty() || r.subzone == "*" || r.subzone == self.subzone)
    }

    /// Istio's `LbPriority`: 0 same subzone, 1 same zone, 2 same region, 3 elsewhere.
    fn lb_priority(&self, ep: &Locality) -> u32 {
        if self.region != ep.region {
            3
        } else if self.zone != ep.zone {
            2
        } else if self.subzone != ep.subzone {
            1
        } else {
            0
        }
    }

    /// The value of a topology label of this locality (Istio's `AugmentLabels`).
    fn label(&self, key: &str) -> Option<&str> {
        let v = match key {
            REGION_LABEL => &self.region,
            ZONE_LABEL => &self.zone,
            SUBZONE_LABEL => &self.subzone,
            _ => return None,
        };
        (!v.is_empty()).then_some(v.as_str())
    }
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.region)?;
        for part in [&self.zone, &self.subzone] {
            if part.is_empty() {
                break;
            }
            write!(f, "/{part}")?;
        }
        Ok(())
    }
}

/// What locality load balancing does to one cluster's endpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalityPlan {
    /// `distribute`: the endpoints with locality-weighted weights, those of localities it does
    /// not name removed. `None` = unchanged.
    pub endpoints: Option<Vec<Endpoint>>,
    /// Failover: the priority of each endpoint (0 = preferred), aligned with the endpoints.
    /// `None` = all 0.
    pub priorities: Option<Vec<u32>>,
}

/// Istio's `ApplyLocalityLoadBalancer` for a proxy with `proxy_labels` (its locality comes from
/// them, see [`Locality::from_labels`]). `setting` is the DestinationRule's `localityLbSetting`;
/// without one the mesh default applies (Istio's: enabled, no failover rules). `enabled: false`
/// turns it off; `distribute` reweights localities whatever the outlier detection; failover
/// (`failover`, `failoverPriority`, and the default region/zone/subzone order) only applies when
/// the cluster has outlier detection (`outlier`), as in Istio.
pub fn locality_plan(
    setting: Option<&LocalityLbSetting>,
    outlier: bool,
    proxy_labels: &Labels,
    endpoints: &[Endpoint],
) -> LocalityPlan {
    let default = LocalityLbSetting::default();
    let setting = setting.unwrap_or(&default);
    if setting.enabled == Some(false) || endpoints.is_empty() {
        return LocalityPlan::default();
    }
    // Endpoints without localities all share one priority (the common case: no cost per cluster).
    if setting.failover_priority.is_empty()
        && setting.distribute.is_empty()
        && endpoints.iter().all(|e| e.locality.is_none())
    {
        return LocalityPlan::default();
    }
    let proxy = Locality::from_labels(proxy_labels).unwrap_or_default();
    let ep_locality: Vec<Locality> = endpoints
        .iter()
        .map(|e| {
            e.locality
                .as_deref()
                .map(Locality::parse)
                .unwrap_or_default()
        })
        .collect();
    if !setting.distribute.is_empty() {
        let Some(d) = setting.distribute.iter().find(|d| proxy.matches(&d.from)) else {
            return LocalityPlan::default();
        };
        return LocalityPlan {
            endpoints: Some(distribute(&d.to, endpoints, &ep_locality)),
            priorities: None,
        };
    }
    if !outlier {
        return LocalityPlan::default();
    }
    let mut prio: Vec<u32> = vec![0; endpoints.len()];
    let labels = &setting.failover_priority;
    if !labels.is_empty() && !proxy_labels.is_empty() {
        for (i, ep) in endpoints.iter().enumerate() {
            prio[i] = failover_priority(labels, proxy_labels, ep, &ep_locality[i]);
        }
        dense(&mut prio);
    }
    if labels.is_empty() || !setting.failover.is_empty() {
        for (i, loc) in ep_locality.iter().enumerate() {
            let mut p = proxy.lb_priority(loc);
            if p == 3 {
                if let Some(f) = setting.failover.iter().find(|f| f.from == proxy.region) {
                    if loc.region != f.to {
                        p = 4;
                    }
                }
            }
            prio[i] = prio[i] * 5 + p;
        }
        dense(&mut prio);
    }
    LocalityPlan {
        endpoints: None,
        priorities: prio.iter().any(|p| *p != 0).then_some(prio),
    }
}

/// Renumbers priorities 0, 1, 2… keeping their order.
fn dense(prio: &mut [u32]) {
    let mut levels: Vec<u32> = prio.to_vec();
    levels.sort_unstable();
    levels.dedup();
    for p in prio.iter_mut() {
        *p = levels.partition_point(|l| l < p) as u32;
    }
}

/// Istio's `applyFailoverPriorityPerLocality`: 0 when the endpoint agrees with the proxy on every
/// label (`label=value` compares with that value instead), else the number of labels minus the
/// index of the first disagreeing one; a first `topology.istio.io/network` label only adds.
fn failover_priority(labels: &[String], proxy: &Labels, ep: &Endpoint, loc: &Locality) -> u32 {
    let n = labels.len() as u32;
    let includes_network = labels.first().is_some_and(|l| l == NETWORK_LABEL);
    let (mut priority, mut adjust) = (0, 0);
    for (j, spec) in labels.iter().enumerate() {
        let (key, wanted) = match spec.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (spec.as_str(), None),
        };
        let for_proxy = wanted.or_else(|| proxy.get(key).map(String::as_str));
        let for_ep = ep
            .labels
            .get(key)
            .map(String::as_str)
            .or_else(|| loc.label(key));
        if for_proxy.unwrap_or("") != for_ep.unwrap_or("") {
            if j == 0 && includes_network {
                adjust = n;
                continue;
            }
            priority = n - j as u32;
            break;
        }
    }
    priority + adjust
}

/// Istio's `applyLocalityWeights`: each locality matching a `to` entry (first entry wins) gets
/// that entry's weight, shared by the matching localities in proportion to their endpoints'
/// weights; endpoints of other localities get no traffic. Envoy picks a locality by weight,
/// then an endpoint inside it; one endpoint weight carries both here (locality weight × 100 ×
/// the endpoint's share of its locality).
fn distribute(
    to: &std::collections::BTreeMap<String, u32>,
    endpoints: &[Endpoint],
    loc: &[Locality],
) -> Vec<Endpoint> {
    use std::collections::HashMap;
    let mut group_weight: HashMap<&Locality, u64> = HashMap::new();
    for (ep, l) in endpoints.iter().zip(loc) {
        *group_weight.entry(l).or_default() += u64::from(ep.weight.max(1));
    }
    let mut locality_weight: HashMap<&Locality, u64> = HashMap::new();
    for (pattern, weight) in to {
        let matched: Vec<&Locality> = group_weight
            .keys()
            .copied()
            .filter(|l| !locality_weight.contains_key(l) && l.matches(pattern))
            .collect();
        let total: u64 = matched.iter().map(|l| group_weight[l]).sum();
        for l in matched {
            let w = (group_weight[l] * u64::from(*weight)).div_ceil(total.max(1));
            locality_weight.insert(l, w);
        }
    }
    endpoints
        .iter()
        .zip(loc)
        .filter_map(|(ep, l)| {
            let lw = *locality_weight.get(l).filter(|w| **w > 0)?;
            let share = (lw * 100 * u64::from(ep.weight.max(1))).div_ceil(group_weight[l]);
            let mut ep = ep.clone();
            ep.weight = u32::try_from(share).unwrap_or(u32::MAX).max(1);
            Some(ep)
        })
        .collect()
}
