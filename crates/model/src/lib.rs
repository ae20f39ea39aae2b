//! What proxies obey: the service registry, DestinationRule policy, compiled VirtualService routes,
//! and the routing decisions the data path asks for. Everything here is pure: no I/O, no clocks.

pub mod analyze;
pub mod cluster;
pub mod explain;
pub mod gateway;
pub mod host;
pub mod ingress;
pub mod jwt;
pub mod mesh;
pub mod policy;
pub mod references;
pub mod registry;
pub mod route;
pub mod security;
pub mod sidecar_listeners;
pub mod sidecar_scope;
pub mod snapshot;
pub mod telemetry_policy;
pub mod tracing;

/// Counts `n` steps of config processing (see [`sluice_api::work`]).
#[inline]
pub(crate) fn work_count(n: u64) {
    sluice_api::work::count(n);
}

pub use cluster::{
    Cluster, UpstreamAddress, UpstreamProtocol, UpstreamTls, BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER,
};
pub use gateway::{Credential, GatewayHost, GatewayPort, GatewayServer, ServerTls, ServerTlsMode};
pub use mesh::{AccessLogSettings, IngressMode, LogEncoding, MeshSettings, OutboundPolicy};
pub use registry::{Protocol, Service};
pub use route::{HttpRequestFacts, HttpRouteRule, RouteAction, StreamRule, WeightedTarget};
pub use snapshot::{
    compile, HttpDecision, InboundPort, ProxyIdentity, ProxyKind, Snapshot, StreamDecision,
    Workload, INBOUND_PASSTHROUGH_CLUSTER,
};
