//! DestinationRule traffic policy as the data path applies it to one cluster: load balancing,
//! connection-pool limits (circuit breakers) and outlier detection. Built by `snapshot` from the
//! merged DestinationRules (subset policy over top level, port-level over the policy it sits in);
//! enforced by the proxy's balancer.

use std::time::Duration;

use serde::Serialize;

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
