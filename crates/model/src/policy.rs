//! DestinationRule traffic policy as the data path applies it to one cluster: load balancing,
//! connection-pool limits (circuit breakers) and outlier detection. Built by `snapshot` from the
//! merged DestinationRules (subset policy over top level, port-level over the policy it sits in);
//! enforced by the proxy's balancer.

use std::time::Duration;

use serde::Serialize;
use sluice_api::networking::{
    ConnectionPoolSettings, ConsistentHashLb, LoadBalancerSettings, OutlierDetection,
};

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
