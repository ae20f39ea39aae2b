//! MeshConfig: the `mesh` key of the `istio` ConfigMap in `istio-system`.

use serde::{Deserialize, Serialize};

use crate::networking::OutboundTrafficPolicy;

pub mod tracing;
pub use self::tracing::{DefaultProviders, ExtensionProvider, ProxyTracing};

/// The MeshConfig fields sluice acts on. Decoded leniently: a real mesh config carries dozens of
/// fields for istiod, and operators paste the whole ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    #[serde(
        default,
        alias = "outbound_traffic_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    #[serde(
        default,
        alias = "access_log_file",
        skip_serializing_if = "Option::is_none"
    )]
    pub access_log_file: Option<String>,
    #[serde(
        default,
        alias = "access_log_encoding",
        skip_serializing_if = "Option::is_none"
    )]
    pub access_log_encoding: Option<String>,
    #[serde(
        default,
        alias = "access_log_format",
        skip_serializing_if = "Option::is_none"
    )]
    pub access_log_format: Option<String>,
    #[serde(
        default,
        alias = "root_namespace",
        skip_serializing_if = "Option::is_none"
    )]
    pub root_namespace: Option<String>,
    #[serde(
        default,
        alias = "ingress_class",
        skip_serializing_if = "Option::is_none"
    )]
    pub ingress_class: Option<String>,
    #[serde(
        default,
        alias = "ingress_selector",
        skip_serializing_if = "Option::is_none"
    )]
    pub ingress_selector: Option<String>,
    #[serde(
        default,
        alias = "ingress_service",
        skip_serializing_if = "Option::is_none"
    )]
    pub ingress_service: Option<String>,
    #[serde(
        default,
        alias = "ingress_controller_mode",
        skip_serializing_if = "Option::is_none"
    )]
    pub ingress_controller_mode: Option<String>,
    #[serde(
        default,
        alias = "connect_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<crate::duration::Duration>,
    #[serde(
        default,
        alias = "default_http_retry_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_http_retry_policy: Option<crate::networking::HttpRetry>,
    /// Auto mutual TLS: ISTIO_MUTUAL towards workloads with a sidecar when no DestinationRule
    /// sets `tls` (default true).
    #[serde(
        default,
        alias = "enable_auto_mtls",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_auto_mtls: Option<bool>,
    /// `defaultConfig`: the proxies' defaults. sluice reads `proxyMetadata` (for the
    /// analyzers: DNS address auto-allocation), `tracing` and `meshId`.
    #[serde(
        default,
        alias = "default_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_config: Option<ProxyDefaults>,
    /// `enableTracing` (default true): the legacy switch for `defaultConfig.tracing`.
    #[serde(
        default,
        alias = "enable_tracing",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_tracing: Option<bool>,
    /// `extensionProviders`: sluice acts on the tracing ones (`zipkin`, `opentelemetry`).
    #[serde(
        default,
        alias = "extension_providers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub extension_providers: Vec<ExtensionProvider>,
    /// `defaultProviders`: sluice acts on `tracing`.
    #[serde(
        default,
        alias = "default_providers",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_providers: Option<DefaultProviders>,
}

/// `MeshConfig.defaultConfig` (Istio's ProxyConfig), the part sluice reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyDefaults {
    #[serde(
        default,
        alias = "proxy_metadata",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub proxy_metadata: std::collections::BTreeMap<String, String>,
    /// `defaultConfig.tracing`: sampling, custom tags and the legacy Zipkin address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<ProxyTracing>,
    /// `defaultConfig.meshId`: the `istio.mesh_id` span tag (Istio's default: the trust domain).
    #[serde(default, alias = "mesh_id", skip_serializing_if = "Option::is_none")]
    pub mesh_id: Option<String>,
}

impl MeshConfig {
    /// The mesh config as the control plane sends it: the same meaning in what proto3 can say.
    /// `enableTracing: false` cannot be sent (false is proto3's default), so the legacy Zipkin
    /// address it switches off is left out instead.
    pub fn for_wire(&self) -> MeshConfig {
        let mut mesh = self.clone();
        if mesh.enable_tracing == Some(false) {
            if let Some(t) = mesh
                .default_config
                .as_mut()
                .and_then(|d| d.tracing.as_mut())
            {
                t.zipkin = None;
            }
            mesh.enable_tracing = None;
        }
        mesh
    }

    /// Whether proxies allocate addresses to ServiceEntry hosts themselves (DNS capture with
    /// `ISTIO_META_DNS_AUTO_ALLOCATE` or `PILOT_ENABLE_IP_AUTOALLOCATE`), as Istio's
    /// ServiceEntry analyzer reads it.
    pub fn dns_auto_allocates(&self) -> bool {
        let Some(meta) = self.default_config.as_ref().map(|d| &d.proxy_metadata) else {
            return false;
        };
        let on = |k: &str| meta.get(k).is_some_and(|v| v == "true");
        on("ISTIO_META_DNS_CAPTURE")
            && (on("ISTIO_META_DNS_AUTO_ALLOCATE") || on("PILOT_ENABLE_IP_AUTOALLOCATE"))
    }
}
