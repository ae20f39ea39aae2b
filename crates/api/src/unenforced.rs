//! Istio's kinds that sluice reads and validates but does not enforce: WorkloadGroup,
//! ProxyConfig, EnvoyFilter, WasmPlugin and TrafficExtension, as users write them; and Telemetry
//! and RequestAuthentication, which share their decoding and validation but are enforced (they
//! become [`Kind::Telemetry`](crate::Kind::Telemetry) and
//! [`Kind::RequestAuthentication`](crate::Kind::RequestAuthentication) resources).
//!
//! They are decoded and checked as Istio's admission webhook and CRD schemas do (see
//! `validate::other_kinds`), so a file that Istio would refuse is refused here too; what they ask
//! for does not happen, which a warning (SLU0003) says. They never become a
//! [`Resource`](crate::Resource), except a valid Telemetry, which becomes a
//! [`Kind::Telemetry`](crate::Kind::Telemetry) resource that proxies enforce (access logging,
//! metrics overrides, tracing) and `sluice analyze` checks.
//!
//! The conventions are those of [`crate::networking`]: camelCase field names with their protobuf
//! snake_case spelling as an alias, unknown fields rejected, enums kept as strings and checked by
//! validation. A string is an `Option` where Istio's CRD refuses `""` but accepts the field absent
//! (`minLength: 1`). `EnvoyFilter` patch values and `WasmPlugin` configs are free-form
//! (`google.protobuf.Struct`): any mapping.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::duration::Duration;
use crate::networking::{Labels, WorkloadEntry};
use crate::security::{PolicySelector, PolicyTargetReference};

/// One of the kinds sluice validates without enforcing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnenforcedKind {
    RequestAuthentication,
    Telemetry,
    WorkloadGroup,
    ProxyConfig,
    EnvoyFilter,
    WasmPlugin,
    TrafficExtension,
}

impl UnenforcedKind {
    /// Every such kind.
    pub const ALL: [UnenforcedKind; 7] = [
        UnenforcedKind::RequestAuthentication,
        UnenforcedKind::Telemetry,
        UnenforcedKind::WorkloadGroup,
        UnenforcedKind::ProxyConfig,
        UnenforcedKind::EnvoyFilter,
        UnenforcedKind::WasmPlugin,
        UnenforcedKind::TrafficExtension,
    ];

    /// The `kind:` string.
    pub fn as_str(self) -> &'static str {
        match self {
            UnenforcedKind::RequestAuthentication => "RequestAuthentication",
            UnenforcedKind::Telemetry => "Telemetry",
            UnenforcedKind::WorkloadGroup => "WorkloadGroup",
            UnenforcedKind::ProxyConfig => "ProxyConfig",
            UnenforcedKind::EnvoyFilter => "EnvoyFilter",
            UnenforcedKind::WasmPlugin => "WasmPlugin",
            UnenforcedKind::TrafficExtension => "TrafficExtension",
        }
    }

    /// The API group.
    pub fn group(self) -> &'static str {
        match self {
            UnenforcedKind::RequestAuthentication => "security.istio.io",
            UnenforcedKind::Telemetry => "telemetry.istio.io",
            UnenforcedKind::WorkloadGroup
            | UnenforcedKind::ProxyConfig
            | UnenforcedKind::EnvoyFilter => "networking.istio.io",
            UnenforcedKind::WasmPlugin | UnenforcedKind::TrafficExtension => "extensions.istio.io",
        }
    }

    /// The apiVersions Istio's CRDs serve for this kind.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            UnenforcedKind::RequestAuthentication => {
                &["security.istio.io/v1", "security.istio.io/v1beta1"]
            }
            UnenforcedKind::Telemetry => &["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"],
            UnenforcedKind::WorkloadGroup => &[
                "networking.istio.io/v1",
                "networking.istio.io/v1beta1",
                "networking.istio.io/v1alpha3",
            ],
            UnenforcedKind::ProxyConfig => &["networking.istio.io/v1beta1"],
            UnenforcedKind::EnvoyFilter => &["networking.istio.io/v1alpha3"],
            UnenforcedKind::WasmPlugin | UnenforcedKind::TrafficExtension => {
                &["extensions.istio.io/v1alpha1"]
            }
        }
    }

    /// Parses a `kind:` string.
    pub fn parse(s: &str) -> Option<UnenforcedKind> {
        UnenforcedKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The decoded spec of one of these kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum UnenforcedSpec {
    RequestAuthentication(RequestAuthentication),
    Telemetry(Box<Telemetry>),
    WorkloadGroup(Box<WorkloadGroup>),
    ProxyConfig(ProxyConfig),
    EnvoyFilter(EnvoyFilter),
    WasmPlugin(Box<WasmPlugin>),
    TrafficExtension(Box<TrafficExtension>),
}

// === RequestAuthentication ===

/// `RequestAuthentication` spec (`security.istio.io`): the JWTs a workload accepts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PolicySelector>,
    #[serde(default, alias = "target_ref", skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, alias = "target_refs")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, alias = "jwt_rules")]
    pub jwt_rules: Vec<JwtRule>,
}

/// `JWTRule`: one issuer, where its keys are and where the token is found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default, alias = "jwks_uri", skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Inline JSON Web Key Set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    #[serde(default, alias = "from_headers")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default, alias = "from_params")]
    pub from_params: Vec<String>,
    #[serde(default, alias = "from_cookies")]
    pub from_cookies: Vec<String>,
    #[serde(
        default,
        alias = "output_payload_to_header",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_payload_to_header: Option<String>,
    #[serde(
        default,
        alias = "forward_original_token",
        skip_serializing_if = "Option::is_none"
    )]
    pub forward_original_token: Option<bool>,
    #[serde(default, alias = "output_claim_to_headers")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, alias = "space_delimited_claims")]
    pub space_delimited_claims: Vec<String>,
    /// `OPTIONAL` or `REQUIRED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<String>,
}

/// `JWTHeader`: a header the token may be read from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// `ClaimToHeader`: copy a claim of the verified token into a request header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    #[serde(default)]
    pub header: String,
    #[serde(default)]
    pub claim: String,
}

/// The values of `JWTRule.presence`.
pub const JWT_PRESENCE: [&str; 2] = ["OPTIONAL", "REQUIRED"];

// === Telemetry ===

/// `Telemetry` spec (`telemetry.istio.io`): metrics, tracing and access logging settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Telemetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PolicySelector>,
    #[serde(default, alias = "target_ref", skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, alias = "target_refs")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default)]
    pub tracing: Vec<Tracing>,
    #[serde(default)]
    pub metrics: Vec<Metrics>,
    #[serde(default, alias = "access_logging")]
    pub access_logging: Vec<AccessLogging>,
}

/// `ProviderRef`: an extension provider of the mesh config, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    #[serde(default)]
    pub name: String,
}

/// `Tracing.TracingSelector` / `AccessLogging.LogSelector`: which side of the traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModeSelector {
    /// `CLIENT_AND_SERVER`, `CLIENT` or `SERVER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// The values of `WorkloadMode`.
pub const WORKLOAD_MODES: [&str; 3] = ["CLIENT_AND_SERVER", "CLIENT", "SERVER"];

/// `Tracing`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub selector: Option<ModeSelector>,
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    #[serde(
        default,
        alias = "random_sampling_percentage",
        skip_serializing_if = "Option::is_none"
    )]
    pub random_sampling_percentage: Option<f64>,
    #[serde(
        default,
        alias = "disable_span_reporting",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_span_reporting: Option<bool>,
    #[serde(default, alias = "custom_tags")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    #[serde(
        default,
        alias = "use_request_id_for_trace_sampling",
        skip_serializing_if = "Option::is_none"
    )]
    pub use_request_id_for_trace_sampling: Option<bool>,
    #[serde(
        default,
        alias = "enable_istio_tags",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_istio_tags: Option<bool>,
    #[serde(
        default,
        alias = "disable_context_propagation",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_context_propagation: Option<bool>,
}

/// `Tracing.CustomTag`: exactly one of its sources (checked by validation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<TagValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<TagSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<TagSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatter: Option<TagValue>,
}

/// `Tracing.Literal` / `Tracing.Formatter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagValue {
    #[serde(default)]
    pub value: String,
}

/// `Tracing.Environment` / `Tracing.RequestHeader`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagSource {
    #[serde(default)]
    pub name: String,
    #[serde(
        default,
        alias = "default_value",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_value: Option<String>,
}

/// `Metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    #[serde(default)]
    pub overrides: Vec<MetricsOverrides>,
    #[serde(
        default,
        alias = "reporting_interval",
        skip_serializing_if = "Option::is_none"
    )]
    pub reporting_interval: Option<Duration>,
}

/// `MetricsOverrides`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverrides {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub selector: Option<MetricSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, alias = "tag_overrides")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// `MetricSelector`: at most one of `metric` and `customMetric`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(
        default,
        alias = "custom_metric",
        skip_serializing_if = "Option::is_none"
    )]
    pub custom_metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// The values of `MetricSelector.IstioMetric`.
pub const ISTIO_METRICS: [&str; 11] = [
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
];

/// `MetricsOverrides.TagOverride`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    /// `UPSERT` (the enum default) or `REMOVE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// `None` when absent: a REMOVE may not have one at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `AccessLogging`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub selector: Option<ModeSelector>,
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
}

/// `AccessLogging.Filter`: a CEL expression.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogFilter {
    #[serde(default)]
    pub expression: String,
}

// === WorkloadGroup ===

/// `WorkloadGroup` spec (`networking.istio.io`): the template of the WorkloadEntries that VMs
/// register with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<WorkloadGroupMeta>,
    /// Required; `address` may be left out, the VM fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<WorkloadEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ReadinessProbe>,
}

/// `WorkloadGroup.ObjectMeta`: labels and annotations of the generated WorkloadEntries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroupMeta {
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// `ReadinessProbe`: exactly one health check method. Counts are signed so that a negative one
/// is reported by validation rather than as a type error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessProbe {
    #[serde(default, alias = "initial_delay_seconds")]
    pub initial_delay_seconds: i64,
    #[serde(default, alias = "timeout_seconds")]
    pub timeout_seconds: i64,
    #[serde(default, alias = "period_seconds")]
    pub period_seconds: i64,
    #[serde(default, alias = "success_threshold")]
    pub success_threshold: i64,
    #[serde(default, alias = "failure_threshold")]
    pub failure_threshold: i64,
    #[serde(default, alias = "http_get", skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpHealthCheck>,
    #[serde(default, alias = "tcp_socket", skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
}

/// `HTTPHealthCheckConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHealthCheck {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub port: u64,
    #[serde(default)]
    pub host: String,
    /// `HTTP` or `HTTPS` (empty: HTTP).
    #[serde(default)]
    pub scheme: String,
    #[serde(default, alias = "http_headers")]
    pub http_headers: Vec<ProbeHeader>,
}

/// `HTTPHeader` of a probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// `TCPHealthCheckConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpHealthCheck {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u64,
}

/// `ExecHealthCheckConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecHealthCheck {
    #[serde(default)]
    pub command: Vec<String>,
}

/// `GrpcHealthCheckConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcHealthCheck {
    #[serde(default)]
    pub port: u64,
    #[serde(default)]
    pub service: String,
}

// === ProxyConfig ===

/// `ProxyConfig` spec (`networking.istio.io/v1beta1`): per-workload proxy settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PolicySelector>,
    /// Worker threads; 0 means one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i64>,
    #[serde(default, alias = "environment_variables")]
    pub environment_variables: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ProxyImage>,
}

/// `ProxyImage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyImage {
    #[serde(default, alias = "image_type")]
    pub image_type: String,
}

// === EnvoyFilter ===

/// `EnvoyFilter` spec (`networking.istio.io/v1alpha3`): patches to the generated Envoy
/// configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyFilter {
    #[serde(
        default,
        alias = "workload_selector",
        skip_serializing_if = "Option::is_none"
    )]
    pub workload_selector: Option<EnvoyFilterSelector>,
    #[serde(default, alias = "target_refs")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, alias = "config_patches")]
    pub config_patches: Vec<EnvoyConfigObjectPatch>,
    #[serde(default)]
    pub priority: i64,
}

/// `WorkloadSelector` of `networking.istio.io` (`labels`, not `matchLabels`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyFilterSelector {
    #[serde(default)]
    pub labels: Labels,
}

/// `EnvoyConfigObjectPatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectPatch {
    #[serde(default, alias = "apply_to", skip_serializing_if = "Option::is_none")]
    pub apply_to: Option<String>,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub selector: Option<EnvoyConfigObjectMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<Patch>,
}

/// The values of `EnvoyFilter.ApplyTo`.
pub const APPLY_TO: [&str; 12] = [
    "INVALID",
    "LISTENER",
    "FILTER_CHAIN",
    "NETWORK_FILTER",
    "HTTP_FILTER",
    "ROUTE_CONFIGURATION",
    "VIRTUAL_HOST",
    "HTTP_ROUTE",
    "CLUSTER",
    "EXTENSION_CONFIG",
    "BOOTSTRAP",
    "LISTENER_FILTER",
];

/// `EnvoyConfigObjectMatch`: at most one of `listener`, `routeConfiguration`, `cluster`,
/// `waypoint`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<ListenerMatch>,
    #[serde(
        default,
        alias = "route_configuration",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_configuration: Option<RouteConfigurationMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointMatch>,
}

/// The values of `EnvoyFilter.PatchContext`.
pub const PATCH_CONTEXTS: [&str; 5] = [
    "ANY",
    "SIDECAR_INBOUND",
    "SIDECAR_OUTBOUND",
    "GATEWAY",
    "WAYPOINT",
];

/// `ProxyMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyMatch {
    /// A regular expression on the proxy's version.
    #[serde(default, alias = "proxy_version")]
    pub proxy_version: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `ListenerMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerMatch {
    #[serde(default, alias = "port_number")]
    pub port_number: u32,
    #[serde(default, alias = "port_name")]
    pub port_name: String,
    #[serde(
        default,
        alias = "filter_chain",
        skip_serializing_if = "Option::is_none"
    )]
    pub filter_chain: Option<FilterChainMatch>,
    #[serde(default, alias = "listener_filter")]
    pub listener_filter: String,
    #[serde(default)]
    pub name: String,
}

/// `ListenerMatch.FilterChainMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub sni: String,
    #[serde(default, alias = "transport_protocol")]
    pub transport_protocol: String,
    #[serde(default, alias = "application_protocols")]
    pub application_protocols: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterMatch>,
    #[serde(default, alias = "destination_port")]
    pub destination_port: u32,
    #[serde(default, alias = "transport_socket")]
    pub transport_socket: String,
}

/// `FilterMatch` (of a listener's filter chain, or of a waypoint).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default, alias = "sub_filter", skip_serializing_if = "Option::is_none")]
    pub sub_filter: Option<NameMatch>,
}

/// A match on a name only (`SubFilterMatch`, `WaypointMatch.RouteMatch`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameMatch {
    #[serde(default)]
    pub name: String,
}

/// `RouteConfigurationMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfigurationMatch {
    #[serde(default, alias = "port_number")]
    pub port_number: u32,
    #[serde(default, alias = "port_name")]
    pub port_name: String,
    #[serde(default)]
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<VirtualHostMatch>,
    #[serde(default)]
    pub name: String,
}

/// `RouteConfigurationMatch.VirtualHostMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHostMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default, alias = "domain_name")]
    pub domain_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteMatch>,
}

/// `RouteConfigurationMatch.RouteMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub name: String,
    /// `ANY`, `ROUTE`, `REDIRECT` or `DIRECT_RESPONSE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// The values of `RouteMatch.Action`.
pub const ROUTE_ACTIONS: [&str; 4] = ["ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE"];

/// `ClusterMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMatch {
    #[serde(default, alias = "port_number")]
    pub port_number: u32,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub subset: String,
    #[serde(default)]
    pub name: String,
}

/// `WaypointMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<NameMatch>,
    #[serde(
        default,
        alias = "port_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub port_number: Option<u64>,
}

/// `Patch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The Envoy configuration to merge, add or insert (free-form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Map<String, Value>>,
    #[serde(
        default,
        alias = "filter_class",
        skip_serializing_if = "Option::is_none"
    )]
    pub filter_class: Option<String>,
}

/// The values of `Patch.Operation`.
pub const PATCH_OPERATIONS: [&str; 9] = [
    "INVALID",
    "MERGE",
    "ADD",
    "REMOVE",
    "INSERT_BEFORE",
    "INSERT_AFTER",
    "INSERT_FIRST",
    "REPLACE",
    "MERGE_AND_REPLACE_LIST",
];

/// The values of `Patch.FilterClass`.
pub const FILTER_CLASSES: [&str; 4] = ["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"];

// === WasmPlugin ===

/// `WasmPlugin` spec (`extensions.istio.io/v1alpha1`): a Wasm module loaded into the proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmPlugin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PolicySelector>,
    #[serde(default, alias = "target_ref", skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, alias = "target_refs")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Required: `oci://`, `file://`, `http(s)://`, or a registry path without a scheme.
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub sha256: String,
    #[serde(
        default,
        alias = "image_pull_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_pull_policy: Option<String>,
    #[serde(
        default,
        alias = "image_pull_secret",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_pull_secret: Option<String>,
    #[serde(default, alias = "verification_key")]
    pub verification_key: String,
    /// The plugin's own configuration (free-form).
    #[serde(
        default,
        alias = "plugin_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub plugin_config: Option<Map<String, Value>>,
    #[serde(
        default,
        alias = "plugin_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub plugin_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(
        default,
        alias = "fail_strategy",
        skip_serializing_if = "Option::is_none"
    )]
    pub fail_strategy: Option<String>,
    #[serde(default, alias = "vm_config", skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<VmConfig>,
    #[serde(default, rename = "match")]
    pub selectors: Vec<TrafficSelector>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub plugin_type: Option<String>,
}

/// `VmConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmConfig {
    #[serde(default)]
    pub env: Vec<EnvVar>,
}

/// `EnvVar`: a variable of the Wasm VM, inline or from the proxy's own environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    #[serde(default)]
    pub name: String,
    /// `INLINE` (the enum default) or `HOST`.
    #[serde(default, alias = "value_from", skip_serializing_if = "Option::is_none")]
    pub value_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `WasmPlugin.TrafficSelector`, and TrafficExtension's identical `TrafficSelector`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSelector {
    /// `UNDEFINED`, `CLIENT`, `SERVER` or `CLIENT_AND_SERVER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default)]
    pub ports: Vec<WasmPort>,
}

/// `istio.type.v1beta1.PortSelector`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmPort {
    #[serde(default)]
    pub number: u64,
}

/// The values of `WasmPlugin.TrafficSelector.mode`.
pub const WASM_MODES: [&str; 4] = ["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"];
/// The values of `PluginPhase`.
pub const WASM_PHASES: [&str; 4] = ["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"];
/// The values of `PullPolicy`.
pub const WASM_PULL_POLICIES: [&str; 3] = ["UNSPECIFIED_POLICY", "IfNotPresent", "Always"];
/// The values of `FailStrategy`.
pub const WASM_FAIL_STRATEGIES: [&str; 3] = ["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"];
/// The values of `PluginType`.
pub const WASM_PLUGIN_TYPES: [&str; 3] = ["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"];
/// The values of `EnvValueSource`.
pub const WASM_ENV_SOURCES: [&str; 2] = ["INLINE", "HOST"];

// === TrafficExtension ===

/// `TrafficExtension` spec (`extensions.istio.io/v1alpha1`): a Wasm module or a Lua script run
/// by the proxy's filter chain. Exactly one of `wasm` and `lua` (checked by validation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficExtension {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PolicySelector>,
    /// Unlike WasmPlugin, there is no singular `targetRef`.
    #[serde(default, alias = "target_refs")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// `UNSPECIFIED`, `AUTHN`, `AUTHZ` or `STATS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, rename = "match")]
    pub selectors: Vec<TrafficSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lua: Option<LuaConfig>,
}

/// `WasmConfig`: the module fields of a [`WasmPlugin`], under `spec.wasm`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmConfig {
    /// Required, as [`WasmPlugin::url`].
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub sha256: String,
    #[serde(
        default,
        alias = "image_pull_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_pull_policy: Option<String>,
    #[serde(
        default,
        alias = "image_pull_secret",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_pull_secret: Option<String>,
    #[serde(default, alias = "verification_key")]
    pub verification_key: String,
    /// The plugin's own configuration (free-form).
    #[serde(
        default,
        alias = "plugin_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub plugin_config: Option<Map<String, Value>>,
    #[serde(
        default,
        alias = "plugin_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub plugin_name: Option<String>,
    #[serde(
        default,
        alias = "fail_strategy",
        skip_serializing_if = "Option::is_none"
    )]
    pub fail_strategy: Option<String>,
    #[serde(default, alias = "vm_config", skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<VmConfig>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub plugin_type: Option<String>,
}

/// `LuaConfig`: an inline Lua script.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LuaConfig {
    /// Required, at most 64 KiB.
    #[serde(default, alias = "inline_code")]
    pub inline_code: String,
}

/// The values of `TrafficExtension.ExecutionPhase`.
pub const TRAFFIC_EXTENSION_PHASES: [&str; 4] = ["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"];
/// The largest `lua.inlineCode` Istio accepts, in bytes.
pub const LUA_INLINE_CODE_MAX: usize = 65536;
