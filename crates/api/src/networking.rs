//! Istio `networking.istio.io` resource specs, as users write them.
//!
//! Field names follow the protobuf JSON mapping (camelCase); every multi-word field also accepts its
//! protobuf (snake_case) spelling through `alias`, because Istio's own decoder accepts both and
//! seed 000 writes `sni_hosts`. Unknown fields are rejected so typos are caught at load time; every
//! field of Istio's schema is declared even where sluice does not act on it yet, so valid Istio YAML
//! is never refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// A map of label or header names to values, ordered so output is deterministic.
pub type Labels = BTreeMap<String, String>;

/// `StringMatch`: exactly one of `exact`, `prefix` or `regex` (checked by validation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// `Percent`: a double between 0 and 100.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// `PortSelector`: the port of a destination service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default)]
    pub number: u32,
    /// Removed from Istio's API long ago; kept so old YAML decodes, ignored with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

// === VirtualService ===

/// `VirtualService` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    #[serde(default, alias = "export_to")]
    pub export_to: Vec<String>,
}

/// `HTTPRoute`: one ordered rule of a VirtualService. The rarely set blocks are boxed: inline
/// they made every route ~1 KiB, held for each VirtualService the proxy keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Box<HttpRedirect>>,
    #[serde(
        default,
        alias = "direct_response",
        skip_serializing_if = "Option::is_none"
    )]
    pub direct_response: Option<Box<HttpDirectResponse>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Box<Delegate>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Box<HttpRewrite>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Box<HttpFaultInjection>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Box<Destination>>,
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    #[serde(
        default,
        alias = "mirror_percentage",
        skip_serializing_if = "Option::is_none"
    )]
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`.
    #[serde(
        default,
        alias = "mirror_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub mirror_percent: Option<u32>,
    #[serde(
        default,
        alias = "cors_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub cors_policy: Option<Box<CorsPolicy>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Box<Headers>>,
    /// Pre-1.0 forms (`appendHeaders`, `removeResponseHeaders`, …) are not accepted; see validation.
    #[serde(
        default,
        alias = "websocket_upgrade",
        skip_serializing_if = "Option::is_none"
    )]
    pub websocket_upgrade: Option<bool>,
}

/// `HTTPMatchRequest`: conditions ANDed inside one block; blocks are ORed. The rarely used string
/// matches are boxed (an inline `StringMatch` is 72 bytes; `uri` is the common one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Box<StringMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Box<StringMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<Box<StringMatch>>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub port: u32,
    #[serde(default, alias = "source_labels")]
    pub source_labels: Labels,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default, alias = "query_params")]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default, alias = "ignore_uri_case")]
    pub ignore_uri_case: bool,
    #[serde(default, alias = "without_headers")]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(
        default,
        alias = "source_namespace",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_namespace: Option<String>,
    #[serde(
        default,
        alias = "stat_prefix",
        skip_serializing_if = "Option::is_none"
    )]
    pub stat_prefix: Option<String>,
}

/// `Destination`: a registry host, optional subset and port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    #[serde(default)]
    pub host: String,
    /// Pre-1.0 spelling of `host` (seed 003). Accepted with a deprecation warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

impl Destination {
    /// The destination host, taking the deprecated `name` form into account.
    pub fn host_name(&self) -> &str {
        if self.host.is_empty() {
            self.name.as_deref().unwrap_or("")
        } else {
            &self.host
        }
    }
}

/// `HTTPRouteDestination`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Required, but decoded when absent (as Istio's protobuf decoding leaves it unset), so
    /// validation can refuse it by name and `sluice analyze` still reports the route: absent
    /// reads as `Destination::default()`, with an empty host.
    #[serde(default)]
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Box<Headers>>,
}

/// `RouteDestination` (TLS and TCP routes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Required; absent decodes as `Destination::default()` (see
    /// [`HttpRouteDestination::destination`]).
    #[serde(default)]
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// `HTTPRedirect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(
        default,
        alias = "prefix_rewrite",
        skip_serializing_if = "Option::is_none"
    )]
    pub prefix_rewrite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(
        default,
        alias = "derive_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub derive_port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(
        default,
        alias = "redirect_code",
        skip_serializing_if = "Option::is_none"
    )]
    pub redirect_code: Option<u32>,
}

/// `HTTPDirectResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    pub status: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

/// `HTTPBody`: `string` or base64 `bytes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

/// `Delegate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `HTTPRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(
        default,
        alias = "uri_regex_rewrite",
        skip_serializing_if = "Option::is_none"
    )]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `RegexRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(default, rename = "match")]
    pub pattern: String,
    #[serde(default)]
    pub rewrite: String,
}

/// `HTTPRetry`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    #[serde(default)]
    pub attempts: i32,
    #[serde(
        default,
        alias = "per_try_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, alias = "retry_on", skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    #[serde(
        default,
        alias = "retry_remote_localities",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_remote_localities: Option<bool>,
    #[serde(
        default,
        alias = "retry_ignore_previous_hosts",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_ignore_previous_hosts: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
}

/// `CorsPolicy`. Decoded and validated; sluice does not answer CORS preflights yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Deprecated exact-match form of `allowOrigins`.
    #[serde(default, alias = "allow_origin", skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    #[serde(
        default,
        alias = "allow_origins",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allow_origins: Vec<StringMatch>,
    #[serde(
        default,
        alias = "allow_methods",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allow_methods: Vec<String>,
    #[serde(
        default,
        alias = "allow_headers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allow_headers: Vec<String>,
    #[serde(
        default,
        alias = "expose_headers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub expose_headers: Vec<String>,
    #[serde(default, alias = "max_age", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    #[serde(
        default,
        alias = "allow_credentials",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_credentials: Option<bool>,
    /// `UNSPECIFIED`, `FORWARD` or `IGNORE`.
    #[serde(
        default,
        alias = "unmatched_preflights",
        skip_serializing_if = "Option::is_none"
    )]
    pub unmatched_preflights: Option<String>,
}

/// `HTTPFaultInjection`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// `HTTPFaultInjection.Delay`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(
        default,
        alias = "fixed_delay",
        skip_serializing_if = "Option::is_none"
    )]
    pub fixed_delay: Option<Duration>,
    #[serde(
        default,
        alias = "exponential_delay",
        skip_serializing_if = "Option::is_none"
    )]
    pub exponential_delay: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
}

/// `HTTPFaultInjection.Abort`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    #[serde(
        default,
        alias = "http_status",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_status: Option<i32>,
    #[serde(
        default,
        alias = "grpc_status",
        skip_serializing_if = "Option::is_none"
    )]
    pub grpc_status: Option<String>,
    #[serde(
        default,
        alias = "http2_error",
        skip_serializing_if = "Option::is_none"
    )]
    pub http2_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// `HTTPMirrorPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Required; absent decodes as `Destination::default()` (see
    /// [`HttpRouteDestination::destination`]).
    #[serde(default)]
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// `Headers`: request and response manipulation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: Labels,
    #[serde(default)]
    pub add: Labels,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `TLSRoute`: SNI routing without terminating TLS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `TLSMatchAttributes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    #[serde(default, alias = "sni_hosts")]
    pub sni_hosts: Vec<String>,
    #[serde(default, alias = "destination_subnets")]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: u32,
    #[serde(default, alias = "source_labels")]
    pub source_labels: Labels,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(
        default,
        alias = "source_namespace",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_namespace: Option<String>,
}

/// `TCPRoute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `L4MatchAttributes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    #[serde(default, alias = "destination_subnets")]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: u32,
    #[serde(
        default,
        alias = "source_subnet",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_subnet: Option<String>,
    #[serde(default, alias = "source_labels")]
    pub source_labels: Labels,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(
        default,
        alias = "source_namespace",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_namespace: Option<String>,
}

// === ServiceEntry ===

/// `ServiceEntry` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(
        default,
        alias = "workload_selector",
        skip_serializing_if = "Option::is_none"
    )]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default, alias = "export_to")]
    pub export_to: Vec<String>,
    #[serde(default, alias = "subject_alt_names")]
    pub subject_alt_names: Vec<String>,
    /// The addresses istiod allocated to the hosts (`status.addresses[].value`), as
    /// `kubectl get -o yaml` prints them: read for analysis only (IST0134 is not due when Istio
    /// gave the ServiceEntry an address), never sent or served.
    #[serde(skip)]
    pub allocated_addresses: Vec<String>,
}

/// `ServiceEntry.status`, the part sluice reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryStatus {
    #[serde(default)]
    pub addresses: Vec<ServiceEntryAddress>,
}

/// One of `ServiceEntryStatus.addresses`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryAddress {
    #[serde(default)]
    pub value: String,
}

/// `ServicePort` (ServiceEntry and Gateway servers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(
        default,
        alias = "target_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_port: Option<u32>,
}

/// `WorkloadSelector`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: Labels,
}

// === WorkloadEntry ===

/// `WorkloadEntry` spec (also a ServiceEntry endpoint).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(
        default,
        alias = "service_account",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_account: Option<String>,
}

// === DestinationRule ===

/// `DestinationRule` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    #[serde(default)]
    pub host: String,
    #[serde(
        default,
        alias = "traffic_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default, alias = "export_to")]
    pub export_to: Vec<String>,
    /// `istio.type.v1beta1.WorkloadSelector` (`matchLabels`), unlike the Sidecar's and
    /// ServiceEntry's `labels`.
    #[serde(
        default,
        alias = "workload_selector",
        skip_serializing_if = "Option::is_none"
    )]
    pub workload_selector: Option<crate::security::PolicySelector>,
}

/// `Subset`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(
        default,
        alias = "traffic_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `TrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(
        default,
        alias = "load_balancer",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(
        default,
        alias = "connection_pool",
        skip_serializing_if = "Option::is_none"
    )]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(
        default,
        alias = "outlier_detection",
        skip_serializing_if = "Option::is_none"
    )]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default, alias = "port_level_settings")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,
    #[serde(
        default,
        alias = "proxy_protocol",
        skip_serializing_if = "Option::is_none"
    )]
    pub proxy_protocol: Option<ProxyProtocol>,
    #[serde(
        default,
        alias = "retry_budget",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_budget: Option<RetryBudget>,
}

/// `TrafficPolicy.TunnelSettings`: tunnel TCP to the upstream through an HTTP CONNECT/POST proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` (the default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, alias = "target_host")]
    pub target_host: String,
    #[serde(default, alias = "target_port")]
    pub target_port: u32,
}

/// `TrafficPolicy.ProxyProtocol`: send a PROXY protocol header to the upstream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    /// `V1` (the default) or `V2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `TrafficPolicy.RetryBudget`: retries allowed as a share of active requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(
        default,
        alias = "min_retry_concurrency",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_retry_concurrency: Option<u32>,
    #[serde(
        default,
        alias = "budget_interval",
        skip_serializing_if = "Option::is_none"
    )]
    pub budget_interval: Option<Duration>,
}

/// `TrafficPolicy.PortTrafficPolicy`: replaces the policy it sits in for one port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    #[serde(
        default,
        alias = "load_balancer",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(
        default,
        alias = "connection_pool",
        skip_serializing_if = "Option::is_none"
    )]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(
        default,
        alias = "outlier_detection",
        skip_serializing_if = "Option::is_none"
    )]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// `LoadBalancerSettings`: `simple` or `consistentHash`, plus locality and warm-up settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// `UNSPECIFIED`, `ROUND_ROBIN`, `LEAST_REQUEST`, `LEAST_CONN`, `RANDOM` or `PASSTHROUGH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<String>,
    #[serde(
        default,
        alias = "consistent_hash",
        skip_serializing_if = "Option::is_none"
    )]
    pub consistent_hash: Option<ConsistentHashLb>,
    #[serde(
        default,
        alias = "locality_lb_setting",
        skip_serializing_if = "Option::is_none"
    )]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    #[serde(
        default,
        alias = "zone_aware_lb_setting",
        skip_serializing_if = "Option::is_none"
    )]
    pub zone_aware_lb_setting: Option<ZoneAwareLbSetting>,
    #[serde(
        default,
        alias = "backend_utilization",
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_utilization: Option<BackendUtilization>,
    #[serde(
        default,
        alias = "warmup_duration_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub warmup_duration_secs: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfiguration>,
}

/// `WarmupConfiguration`: slow start for new endpoints. `duration` is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    #[serde(
        default,
        alias = "minimum_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub minimum_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
}

/// `LocalityLoadBalancerSetting`: `distribute` or `failover` (with `failoverPriority`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    #[serde(
        default,
        alias = "failover_priority",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub failover_priority: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// `LocalityLoadBalancerSetting.Distribute`: traffic from `from` split over `to` (weights sum to 100).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// `LocalityLoadBalancerSetting.Failover` (and the zone-aware one): region `from` fails over to `to`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
}

/// `ZoneAwareLoadBalancerSetting`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneAwareLbSetting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    #[serde(
        default,
        alias = "failover_priority",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub failover_priority: Vec<String>,
    #[serde(
        default,
        alias = "min_cluster_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_cluster_size: Option<u64>,
}

/// `LoadBalancerSettings.BackendUtilization`: weights from the endpoints' reported load (ORCA).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendUtilization {
    #[serde(
        default,
        alias = "error_utilization_penalty_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub error_utilization_penalty_percent: Option<u32>,
    #[serde(
        default,
        alias = "metric_names_for_computing_utilization",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub metric_names_for_computing_utilization: Vec<String>,
    #[serde(
        default,
        alias = "weight_expiration_period",
        skip_serializing_if = "Option::is_none"
    )]
    pub weight_expiration_period: Option<Duration>,
    #[serde(
        default,
        alias = "weight_stabilization_period",
        skip_serializing_if = "Option::is_none"
    )]
    pub weight_stabilization_period: Option<Duration>,
    #[serde(
        default,
        alias = "weight_update_period",
        skip_serializing_if = "Option::is_none"
    )]
    pub weight_update_period: Option<Duration>,
}

/// `LoadBalancerSettings.ConsistentHashLB`: one hash key, and the ring-hash or Maglev table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    #[serde(
        default,
        alias = "http_header_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_header_name: Option<String>,
    #[serde(
        default,
        alias = "http_cookie",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_cookie: Option<HttpCookie>,
    #[serde(
        default,
        alias = "use_source_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub use_source_ip: Option<bool>,
    #[serde(
        default,
        alias = "http_query_parameter_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_query_parameter_name: Option<String>,
    #[serde(default, alias = "ring_hash", skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MagLev>,
    /// Deprecated: use `ringHash.minimumRingSize`.
    #[serde(
        default,
        alias = "minimum_ring_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub minimum_ring_size: Option<u64>,
}

/// `ConsistentHashLB.HTTPCookie`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<CookieAttribute>,
}

/// `HTTPCookie.Attribute`: an extra attribute of the generated cookie (`SameSite=Strict`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `ConsistentHashLB.RingHash`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    #[serde(
        default,
        alias = "minimum_ring_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub minimum_ring_size: Option<u64>,
}

/// `ConsistentHashLB.MagLev`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MagLev {
    #[serde(default, alias = "table_size", skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

/// `ConnectionPoolSettings`: per-upstream-host limits (circuit breakers). Counts are `int32` in
/// Istio's schema, so negative values decode and are refused by validation with Istio's message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

/// `ConnectionPoolSettings.TCPSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    #[serde(
        default,
        alias = "max_connections",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connections: Option<i32>,
    #[serde(
        default,
        alias = "connect_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    #[serde(
        default,
        alias = "tcp_keepalive",
        skip_serializing_if = "Option::is_none"
    )]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(
        default,
        alias = "max_connection_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connection_duration: Option<Duration>,
    #[serde(
        default,
        alias = "idle_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
}

/// `TCPSettings.TcpKeepalive`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

/// `ConnectionPoolSettings.HTTPSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(
        default,
        rename = "http1MaxPendingRequests",
        alias = "http1_max_pending_requests",
        skip_serializing_if = "Option::is_none"
    )]
    pub http1_max_pending_requests: Option<i32>,
    #[serde(
        default,
        rename = "http2MaxRequests",
        alias = "http2_max_requests",
        skip_serializing_if = "Option::is_none"
    )]
    pub http2_max_requests: Option<i32>,
    #[serde(
        default,
        alias = "max_requests_per_connection",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_requests_per_connection: Option<i32>,
    #[serde(
        default,
        alias = "max_retries",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_retries: Option<i32>,
    #[serde(
        default,
        alias = "idle_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// `DEFAULT`, `DO_NOT_UPGRADE` or `UPGRADE`.
    #[serde(
        default,
        rename = "h2UpgradePolicy",
        alias = "h2_upgrade_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub h2_upgrade_policy: Option<String>,
    #[serde(
        default,
        alias = "use_client_protocol",
        skip_serializing_if = "Option::is_none"
    )]
    pub use_client_protocol: Option<bool>,
    #[serde(
        default,
        alias = "max_concurrent_streams",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_concurrent_streams: Option<i32>,
    /// HTTP/2 PING keep-alive towards the upstream.
    #[serde(
        default,
        rename = "http2KeepAlive",
        alias = "http2_keep_alive",
        skip_serializing_if = "Option::is_none"
    )]
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

/// `HTTPSettings.ConnectionKeepalive`: both fields are required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionKeepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// `OutlierDetection`: passive health checking.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(
        default,
        alias = "split_external_local_origin_errors",
        skip_serializing_if = "Option::is_none"
    )]
    pub split_external_local_origin_errors: Option<bool>,
    #[serde(
        default,
        alias = "consecutive_local_origin_failures",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_local_origin_failures: Option<u32>,
    #[serde(
        default,
        alias = "consecutive_gateway_errors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(
        default,
        rename = "consecutive5xxErrors",
        alias = "consecutive_5xx_errors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    /// Deprecated: use `consecutive5xxErrors` or `consecutiveGatewayErrors`.
    #[serde(
        default,
        alias = "consecutive_errors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_errors: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(
        default,
        alias = "base_ejection_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub base_ejection_time: Option<Duration>,
    #[serde(
        default,
        alias = "max_ejection_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ejection_percent: Option<i32>,
    #[serde(
        default,
        alias = "min_health_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_health_percent: Option<i32>,
    /// HTTP status codes (100..599) counted as errors, in place of 5xx.
    #[serde(
        default,
        alias = "outlier_detection_http_error_codes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

/// `ClientTLSSettings`: TLS origination towards the upstream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(
        default,
        alias = "client_certificate",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_certificate: Option<String>,
    #[serde(
        default,
        alias = "private_key",
        skip_serializing_if = "Option::is_none"
    )]
    pub private_key: Option<String>,
    #[serde(
        default,
        alias = "ca_certificates",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca_certificates: Option<String>,
    #[serde(default, alias = "ca_crl", skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    #[serde(
        default,
        alias = "credential_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub credential_name: Option<String>,
    #[serde(default, alias = "subject_alt_names")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(
        default,
        alias = "insecure_skip_verify",
        skip_serializing_if = "Option::is_none"
    )]
    pub insecure_skip_verify: Option<bool>,
}

// === Gateway ===

/// `Gateway` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub selector: Labels,
}

/// `Server`: one listening port of a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    #[serde(default)]
    pub port: ServicePort,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// Pre-1.0 Gateways (seed 003) have no `hosts`; accepted as `*` with a deprecation warning.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    #[serde(
        default,
        alias = "default_endpoint",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `ServerTLSSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    #[serde(default, alias = "https_redirect")]
    pub https_redirect: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(
        default,
        alias = "server_certificate",
        skip_serializing_if = "Option::is_none"
    )]
    pub server_certificate: Option<String>,
    #[serde(
        default,
        alias = "private_key",
        skip_serializing_if = "Option::is_none"
    )]
    pub private_key: Option<String>,
    #[serde(
        default,
        alias = "ca_certificates",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca_certificates: Option<String>,
    #[serde(default, alias = "ca_crl", skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    #[serde(
        default,
        alias = "credential_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub credential_name: Option<String>,
    #[serde(default, alias = "credential_names")]
    pub credential_names: Vec<String>,
    #[serde(default, alias = "tls_certificates")]
    pub tls_certificates: Vec<TlsCertificate>,
    #[serde(
        default,
        alias = "ca_cert_credential_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca_cert_credential_name: Option<String>,
    #[serde(default, alias = "subject_alt_names")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, alias = "verify_certificate_spki")]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default, alias = "verify_certificate_hash")]
    pub verify_certificate_hash: Vec<String>,
    #[serde(
        default,
        alias = "min_protocol_version",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_protocol_version: Option<String>,
    #[serde(
        default,
        alias = "max_protocol_version",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_protocol_version: Option<String>,
    #[serde(default, alias = "cipher_suites")]
    pub cipher_suites: Vec<String>,
    #[serde(default, alias = "ecdh_curves", skip_serializing_if = "Vec::is_empty")]
    pub ecdh_curves: Vec<String>,
    #[serde(
        default,
        alias = "insecure_skip_verify",
        skip_serializing_if = "Option::is_none"
    )]
    pub insecure_skip_verify: Option<bool>,
}

/// `ServerTLSSettings.TLSCertificate`: one of up to two server certificates (RSA and ECDSA).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    #[serde(
        default,
        alias = "server_certificate",
        skip_serializing_if = "Option::is_none"
    )]
    pub server_certificate: Option<String>,
    #[serde(
        default,
        alias = "private_key",
        skip_serializing_if = "Option::is_none"
    )]
    pub private_key: Option<String>,
    #[serde(
        default,
        alias = "ca_certificates",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca_certificates: Option<String>,
}

// === Sidecar ===

/// `Sidecar` spec. Enforced for sidecar proxies: `outboundTrafficPolicy`, `egress[].hosts` imports
/// (see `sluice_model::sidecar_scope`), egress and ingress listeners (`sluice_model::sidecar_listeners`);
/// ingress `tls`/`connectionPool` and `inboundConnectionPool` are decoded and validated only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    #[serde(
        default,
        alias = "workload_selector",
        skip_serializing_if = "Option::is_none"
    )]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub ingress: Vec<IstioIngressListener>,
    #[serde(default)]
    pub egress: Vec<IstioEgressListener>,
    #[serde(
        default,
        alias = "inbound_connection_pool",
        skip_serializing_if = "Option::is_none"
    )]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    #[serde(
        default,
        alias = "outbound_traffic_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// `IstioIngressListener`: a port of the workload, with its own TLS and connection pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    /// Required; `None` is refused by validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<ServicePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(
        default,
        alias = "capture_mode",
        skip_serializing_if = "Option::is_none"
    )]
    pub capture_mode: Option<String>,
    #[serde(
        default,
        alias = "default_endpoint",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    #[serde(
        default,
        alias = "connection_pool",
        skip_serializing_if = "Option::is_none"
    )]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// `IstioEgressListener`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<ServicePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(
        default,
        alias = "capture_mode",
        skip_serializing_if = "Option::is_none"
    )]
    pub capture_mode: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// `OutboundTrafficPolicy` (Sidecar and MeshConfig).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(
        default,
        alias = "egress_proxy",
        skip_serializing_if = "Option::is_none"
    )]
    pub egress_proxy: Option<Destination>,
}
