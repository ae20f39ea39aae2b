//! Where a proxy reports its spans and how: one [`TracingSettings`] per proxy, computed from the
//! mesh config by [`settings_for_proxy`], as istiod's `configureTracing` does for Envoy.
//!
//! Istio reads the mesh config in one of two ways, and never mixes them:
//! - **`defaultProviders.tracing` is set** (the Telemetry API's default): the first name is
//!   looked up in `extensionProviders`; a missing or non-tracing provider means no reporting.
//!   `enableTracing` is not consulted, and `defaultConfig.tracing.zipkin` is ignored.
//! - **Otherwise (legacy)**: spans are reported only when `enableTracing` (default true) and
//!   `defaultConfig.tracing.zipkin.address` are both set; the address is a Zipkin collector.
//!
//! Either way the sampling percentage is `defaultConfig.tracing.sampling` when it is not 0
//! (proto3 cannot tell 0 from unset), else `PILOT_TRACE_SAMPLING`'s default 1.0; a value above
//! 100 becomes 1.0. Custom tags are `defaultConfig.tracing.customTags` plus Istio's own
//! `istio.*` tags.
//!
//! The Telemetry API's `tracing` section, when one applies to the proxy, replaces this per side
//! ([`with_telemetry`]): its provider (else `defaultProviders.tracing`), its
//! `randomSamplingPercentage` (else `defaultConfig.tracing.sampling`, else 1%), its custom tags
//! (plus Istio's unless `enableIstioTags: false`) and `disableSpanReporting`, as istiod's
//! `configureTracingFromTelemetry` does.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sluice_api::mesh::tracing::{split_host_port, CustomTag, ProviderHeader, ProxyTracing};
use sluice_api::mesh::{ExtensionProvider, MeshConfig};

use crate::snapshot::{ProxyIdentity, ProxyKind};

/// `PILOT_TRACE_SAMPLING`'s default.
pub const DEFAULT_SAMPLING_PERCENT: f64 = 1.0;
/// Envoy's default `max_path_tag_length` (`http.url` is cut to it).
pub const DEFAULT_MAX_PATH_TAG_LENGTH: usize = 256;
/// The Zipkin collector path Istio configures when the provider names none.
pub const ZIPKIN_DEFAULT_PATH: &str = "/api/v2/spans";
/// Istio's default export timeout for Zipkin (Envoy requires one).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How one proxy traces: the single place the exporter reads its settings from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingSettings {
    pub provider: TracingProvider,
    /// Percent (0–100) of new traces sampled; Envoy's resolution is 0.01%.
    pub sampling_percent: f64,
    /// Tags added to every span, sorted by name (Istio's `istio.*` tags included).
    pub custom_tags: Vec<(Arc<str>, CustomTagValue)>,
    /// Sampled requests still propagate their context, but no span is sent (Telemetry's
    /// `disableSpanReporting`).
    pub disable_reporting: bool,
    /// `http.url` is cut to this many bytes.
    pub max_path_tag_length: usize,
    /// Zipkin `localEndpoint.serviceName` / OTel `service.name`: Envoy's node cluster,
    /// `<app>.<namespace>`.
    pub service_name: Arc<str>,
}

/// A tracing backend: what protocol, and the host and port to resolve like any upstream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingProvider {
    /// The `extensionProviders` name (`zipkin` for the legacy address).
    pub name: Arc<str>,
    /// A registry host (Kubernetes service FQDN, ServiceEntry host) or a DNS name.
    pub host: Arc<str>,
    pub port: u16,
    pub protocol: ExportProtocol,
    pub timeout: Duration,
    /// Headers (gRPC metadata) sent with every export.
    pub headers: Vec<(String, HeaderSource)>,
}

/// The wire format of a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ExportProtocol {
    /// Zipkin JSON v2 (`POST <path>`); `trace_id_128` is false with `enable64bitTraceId`.
    ZipkinJson { path: String, trace_id_128: bool },
    /// OTLP `TraceService/Export` over gRPC.
    OtlpGrpc,
    /// OTLP/HTTP with protobuf bodies (`POST <path>`).
    OtlpHttp { path: String },
}

impl ExportProtocol {
    /// New traces started by this proxy get 64-bit ids (Zipkin `enable64bitTraceId`).
    pub fn new_traces_are_64_bit(&self) -> bool {
        matches!(
            self,
            ExportProtocol::ZipkinJson {
                trace_id_128: false,
                ..
            }
        )
    }
}

/// A header value: literal, or read from the proxy's environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HeaderSource {
    Value(String),
    Env(String),
}

/// Where a custom tag's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CustomTagValue {
    Literal(String),
    /// The proxy's environment variable, else `default`.
    Environment {
        name: String,
        default: String,
    },
    /// The request header, else `default`.
    RequestHeader {
        name: String,
        default: String,
    },
}

/// The tracing settings of `proxy` from the mesh config (see the module docs); `None` when
/// the proxy reports no spans.
pub fn settings_for_proxy(mesh: &MeshConfig, proxy: &ProxyIdentity) -> Option<TracingSettings> {
    let proxy_tracing = mesh
        .default_config
        .as_ref()
        .and_then(|d| d.tracing.as_ref());
    let default_provider = mesh
        .default_providers
        .as_ref()
        .and_then(|d| d.tracing.first());
    let (provider, provider_max_tag, istio_tags) = match default_provider {
        Some(name) => {
            let p = mesh.extension_providers.iter().find(|p| &p.name == name)?;
            let (provider, max_tag) = from_extension_provider(p)?;
            // The Telemetry path's default: Istio tags on.
            (provider, max_tag, true)
        }
        None => {
            if mesh.enable_tracing == Some(false) {
                return None;
            }
            let address = proxy_tracing?.zipkin.as_ref()?.address.as_str();
            let (host, port) = split_host_port(address)?;
            let provider = TracingProvider {
                name: Arc::from("zipkin"),
                host: Arc::from(host),
                port,
                protocol: ExportProtocol::ZipkinJson {
                    path: ZIPKIN_DEFAULT_PATH.into(),
                    trace_id_128: true,
                },
                timeout: DEFAULT_EXPORT_TIMEOUT,
                headers: Vec::new(),
            };
            let istio_tags = proxy_tracing
                .and_then(|t| t.enable_istio_tags)
                .unwrap_or(true);
            (provider, 0, istio_tags)
        }
    };
    let sampling_percent = match proxy_tracing.and_then(|t| t.sampling) {
        Some(s) if s > 100.0 => DEFAULT_SAMPLING_PERCENT,
        Some(s) if s > 0.0 => s,
        _ => DEFAULT_SAMPLING_PERCENT,
    };
    let max_path_tag_length = max_path_tag_length(provider_max_tag, proxy_tracing);
    let custom_tags: Vec<(Arc<str>, CustomTagValue)> = proxy_tracing
        .map(|t| {
            t.custom_tags
                .iter()
                .filter_map(|(name, tag)| Some((Arc::from(name.as_str()), custom_tag(tag)?)))
                .collect()
        })
        .unwrap_or_default();
    Some(TracingSettings {
        provider,
        sampling_percent,
        custom_tags: with_istio_tags(custom_tags, istio_tags, mesh, proxy),
        disable_reporting: false,
        max_path_tag_length,
        service_name: Arc::from(service_cluster(proxy)),
    })
}

/// The tracing settings of one side of `proxy` when a Telemetry `tracing` section applies to it
/// (see the module docs); `None` when that side reports no spans (no provider, or one sluice does
/// not report to).
pub fn with_telemetry(
    mesh: &MeshConfig,
    proxy: &ProxyIdentity,
    policy: &crate::telemetry_policy::TracingPolicy,
) -> Option<TracingSettings> {
    let name = policy.provider.as_deref().or_else(|| {
        mesh.default_providers
            .as_ref()
            .and_then(|d| d.tracing.first())
            .map(String::as_str)
    })?;
    let p = mesh.extension_providers.iter().find(|p| p.name == name)?;
    let (provider, provider_max_tag) = from_extension_provider(p)?;
    let proxy_tracing = mesh
        .default_config
        .as_ref()
        .and_then(|d| d.tracing.as_ref());
    let sampling_percent = match policy
        .random_sampling_percentage
        .or_else(|| proxy_tracing.and_then(|t| t.sampling).filter(|s| *s > 0.0))
    {
        Some(s) if (0.0..=100.0).contains(&s) => s,
        _ => DEFAULT_SAMPLING_PERCENT,
    };
    let max_path_tag_length = max_path_tag_length(provider_max_tag, proxy_tracing);
    let custom_tags: Vec<(Arc<str>, CustomTagValue)> = policy
        .custom_tags
        .iter()
        .filter_map(|(name, tag)| Some((Arc::from(name.as_str()), telemetry_tag(tag)?)))
        .collect();
    Some(TracingSettings {
        provider,
        sampling_percent,
        custom_tags: with_istio_tags(custom_tags, policy.enable_istio_tags, mesh, proxy),
        disable_reporting: policy.disabled,
        max_path_tag_length,
        service_name: Arc::from(service_cluster(proxy)),
    })
}

/// The path tag's length limit: the provider's `maxTagLength`, else ProxyConfig's
/// `maxPathTagLength`, else Envoy's default.
fn max_path_tag_length(provider_max_tag: u32, proxy_tracing: Option<&ProxyTracing>) -> usize {
    match (
        provider_max_tag,
        proxy_tracing.and_then(|t| t.max_path_tag_length),
    ) {
        (n, _) if n > 0 => n as usize,
        (_, Some(n)) if n > 0 => n as usize,
        _ => DEFAULT_MAX_PATH_TAG_LENGTH,
    }
}

/// Custom tags sorted with one value per name (the first given), Istio's service tags added
/// when `istio_tags`.
fn with_istio_tags(
    mut custom_tags: Vec<(Arc<str>, CustomTagValue)>,
    istio_tags: bool,
    mesh: &MeshConfig,
    proxy: &ProxyIdentity,
) -> Vec<(Arc<str>, CustomTagValue)> {
    if istio_tags {
        custom_tags.extend(istio_service_tags(mesh, proxy));
    }
    custom_tags.sort_by(|a, b| a.0.cmp(&b.0));
    custom_tags.dedup_by(|a, b| a.0 == b.0);
    custom_tags
}

/// A Telemetry `customTags` entry (`formatter` has no value sluice can compute: left out).
fn telemetry_tag(tag: &sluice_api::unenforced::CustomTag) -> Option<CustomTagValue> {
    if let Some(l) = &tag.literal {
        return Some(CustomTagValue::Literal(l.value.clone()));
    }
    if let Some(e) = &tag.environment {
        return Some(CustomTagValue::Environment {
            name: e.name.clone(),
            default: e.default_value.clone().unwrap_or_default(),
        });
    }
    tag.header.as_ref().map(|h| CustomTagValue::RequestHeader {
        name: h.name.to_ascii_lowercase(),
        default: h.default_value.clone().unwrap_or_default(),
    })
}

/// A tracing provider from an `extensionProviders` entry, with its `maxTagLength`; `None` for
/// kinds sluice does not report to.
fn from_extension_provider(p: &ExtensionProvider) -> Option<(TracingProvider, u32)> {
    if let Some(z) = &p.zipkin {
        let provider = TracingProvider {
            name: Arc::from(p.name.as_str()),
            host: Arc::from(z.service.as_str()),
            port: u16::try_from(z.port).ok()?,
            protocol: ExportProtocol::ZipkinJson {
                path: z
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| ZIPKIN_DEFAULT_PATH.into()),
                trace_id_128: !z.enable_64bit_trace_id.unwrap_or(false),
            },
            timeout: z.timeout.map_or(DEFAULT_EXPORT_TIMEOUT, |t| t.0),
            headers: headers(&z.headers),
        };
        return Some((provider, z.max_tag_length.unwrap_or(0)));
    }
    let o = p.opentelemetry.as_ref()?;
    let (protocol, timeout, hdrs) = match (&o.http, &o.grpc) {
        (Some(http), _) => (
            ExportProtocol::OtlpHttp {
                path: join_path(&http.path),
            },
            http.timeout,
            headers(&http.headers),
        ),
        (None, grpc) => (
            ExportProtocol::OtlpGrpc,
            grpc.as_ref().and_then(|g| g.timeout),
            grpc.as_ref()
                .map(|g| headers(&g.initial_metadata))
                .unwrap_or_default(),
        ),
    };
    let provider = TracingProvider {
        name: Arc::from(p.name.as_str()),
        host: Arc::from(o.service.as_str()),
        port: u16::try_from(o.port).ok()?,
        protocol,
        timeout: timeout
            .map(|t| t.0)
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_EXPORT_TIMEOUT),
        headers: hdrs,
    };
    Some((provider, o.max_tag_length.unwrap_or(0)))
}

/// `url.JoinPath(hostname, path)`: the path with exactly one leading `/`.
fn join_path(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/'))
}

fn headers(list: &[ProviderHeader]) -> Vec<(String, HeaderSource)> {
    list.iter()
        .filter(|h| !h.name.is_empty())
        .map(|h| {
            let source = match (&h.value, &h.env_name) {
                (Some(v), _) => HeaderSource::Value(v.clone()),
                (None, Some(env)) => HeaderSource::Env(env.clone()),
                (None, None) => HeaderSource::Value(String::new()),
            };
            (h.name.clone(), source)
        })
        .collect()
}

fn custom_tag(tag: &CustomTag) -> Option<CustomTagValue> {
    if let Some(l) = &tag.literal {
        return Some(CustomTagValue::Literal(l.value.clone()));
    }
    if let Some(e) = &tag.environment {
        return Some(CustomTagValue::Environment {
            name: e.name.clone(),
            default: e.default_value.clone(),
        });
    }
    tag.header.as_ref().map(|h| CustomTagValue::RequestHeader {
        name: h.name.to_ascii_lowercase(),
        default: h.default_value.clone(),
    })
}

/// Istio's `buildServiceTags`: canonical service and revision, mesh id, namespace, cluster id.
fn istio_service_tags(
    mesh: &MeshConfig,
    proxy: &ProxyIdentity,
) -> impl Iterator<Item = (Arc<str>, CustomTagValue)> {
    let label = |k: &str| proxy.labels.get(k).filter(|v| !v.is_empty()).cloned();
    // The injector sets the canonical labels from `app` / `version` when a pod has none.
    let service = label("service.istio.io/canonical-name")
        .or_else(|| app_label(proxy))
        .unwrap_or_else(|| "unknown".into());
    let revision = label("service.istio.io/canonical-revision")
        .or_else(|| label("version"))
        .unwrap_or_else(|| "latest".into());
    let mesh_id = mesh
        .default_config
        .as_ref()
        .and_then(|d| d.mesh_id.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "cluster.local".into());
    let namespace = if proxy.namespace.is_empty() {
        "default".to_string()
    } else {
        proxy.namespace.clone()
    };
    [
        ("istio.canonical_revision", revision),
        ("istio.canonical_service", service),
        ("istio.cluster_id", "Kubernetes".to_string()),
        ("istio.mesh_id", mesh_id),
        ("istio.namespace", namespace),
    ]
    .into_iter()
    .map(|(k, v)| (Arc::from(k), CustomTagValue::Literal(v)))
}

/// Istio's `labels.GetApp`: `app`, else `app.kubernetes.io/name`.
fn app_label(proxy: &ProxyIdentity) -> Option<String> {
    ["app", "app.kubernetes.io/name"]
        .iter()
        .find_map(|k| proxy.labels.get(*k).filter(|v| !v.is_empty()).cloned())
}

/// Envoy's node cluster as Istio's bootstrap sets it (`serviceClusterOrDefault`):
/// `<app>.<namespace>`, else `istio-proxy.<namespace>`. A gateway's `app` label is usually
/// `istio-ingressgateway`.
pub fn service_cluster(proxy: &ProxyIdentity) -> String {
    let app = app_label(proxy).or_else(|| {
        (proxy.kind == ProxyKind::Gateway)
            .then(|| proxy.labels.get("istio").map(|i| format!("istio-{i}")))
            .flatten()
    });
    match (app, proxy.namespace.is_empty()) {
        (Some(app), false) => format!("{app}.{}", proxy.namespace),
        (None, false) => format!("istio-proxy.{}", proxy.namespace),
        (Some(app), true) => app,
        (None, true) => "istio-proxy".into(),
    }
}

/// The mesh config among `resources` (the `istio` ConfigMap in `istio-system`).
pub fn mesh_config(resources: &[sluice_api::Resource]) -> Option<&MeshConfig> {
    resources.iter().find_map(|r| match &r.spec {
        sluice_api::Spec::ConfigMap {
            mesh: Some(mesh), ..
        } if (r.meta.namespace.as_str(), r.meta.name.as_str()) == crate::mesh::MESH_CONFIGMAP => {
            Some(&**mesh)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(json: serde_json::Value) -> MeshConfig {
        serde_json::from_value(json).unwrap()
    }

    fn sidecar() -> ProxyIdentity {
        ProxyIdentity {
            namespace: "shop".into(),
            labels: [("app", "cart"), ("version", "v2")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: None,
            kind: ProxyKind::Sidecar,
        }
    }

    fn zipkin_provider() -> serde_json::Value {
        serde_json::json!({"name": "zipkin", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}})
    }

    #[test]
    fn nothing_is_reported_without_a_backend() {
        assert_eq!(settings_for_proxy(&MeshConfig::default(), &sidecar()), None);
        // enableTracing alone names no backend (Istio 1.22 dropped the default zipkin address).
        let m = mesh(serde_json::json!({"enableTracing": true}));
        assert_eq!(settings_for_proxy(&m, &sidecar()), None);
        // A provider defined but not made the default is not used.
        let m = mesh(serde_json::json!({"extensionProviders": [zipkin_provider()]}));
        assert_eq!(settings_for_proxy(&m, &sidecar()), None);
    }

    #[test]
    fn default_provider_wins_over_the_legacy_address_and_ignores_enable_tracing() {
        let m = mesh(serde_json::json!({
            "enableTracing": false,
            "defaultProviders": {"tracing": ["zipkin"]},
            "extensionProviders": [zipkin_provider()],
            "defaultConfig": {"tracing": {"sampling": 25.5, "zipkin": {"address": "legacy:9411"}}}
        }));
        let s = settings_for_proxy(&m, &sidecar()).unwrap();
        assert_eq!(&*s.provider.host, "zipkin.istio-system.svc.cluster.local");
        assert_eq!(s.provider.port, 9411);
        assert_eq!(
            s.provider.protocol,
            ExportProtocol::ZipkinJson {
                path: "/api/v2/spans".into(),
                trace_id_128: true
            }
        );
        assert_eq!(s.sampling_percent, 25.5);
        assert_eq!(&*s.service_name, "cart.shop");
    }

    #[test]
    fn legacy_zipkin_address_needs_enable_tracing() {
        let legacy = serde_json::json!({"tracing": {"zipkin": {"address": "zipkin.example:9411"}}});
        let m = mesh(serde_json::json!({"defaultConfig": legacy}));
        let s = settings_for_proxy(&m, &sidecar()).unwrap();
        assert_eq!(
            (&*s.provider.host, s.provider.port),
            ("zipkin.example", 9411)
        );
        assert_eq!(s.sampling_percent, 1.0);
        let m = mesh(serde_json::json!({"enableTracing": false, "defaultConfig": legacy}));
        assert_eq!(settings_for_proxy(&m, &sidecar()), None);
    }

    #[test]
    fn sampling_zero_or_above_100_is_istios_default() {
        for (given, want) in [(0.0, 1.0), (150.0, 1.0), (100.0, 100.0), (0.01, 0.01)] {
            let m = mesh(serde_json::json!({
                "defaultProviders": {"tracing": ["zipkin"]},
                "extensionProviders": [zipkin_provider()],
                "defaultConfig": {"tracing": {"sampling": given}}
            }));
            assert_eq!(
                settings_for_proxy(&m, &sidecar()).unwrap().sampling_percent,
                want,
                "{given}"
            );
        }
    }

    #[test]
    fn opentelemetry_grpc_by_default_http_when_set() {
        let m = mesh(serde_json::json!({
            "defaultProviders": {"tracing": ["otel"]},
            "extensionProviders": [
                {"name": "otel", "opentelemetry": {"service": "otel.obs.svc.cluster.local", "port": 4317, "maxTagLength": 99}},
                {"name": "otel-http", "opentelemetry": {"service": "otel.obs.svc.cluster.local", "port": 4318,
                    "http": {"path": "v1/traces", "timeout": "3s", "headers": [{"name": "x-tenant", "value": "a"}]}}}
            ]
        }));
        let s = settings_for_proxy(&m, &sidecar()).unwrap();
        assert_eq!(s.provider.protocol, ExportProtocol::OtlpGrpc);
        assert_eq!(s.max_path_tag_length, 99);
        let mut m = m;
        m.default_providers.as_mut().unwrap().tracing = vec!["otel-http".into()];
        let s = settings_for_proxy(&m, &sidecar()).unwrap();
        assert_eq!(
            s.provider.protocol,
            ExportProtocol::OtlpHttp {
                path: "/v1/traces".into()
            }
        );
        assert_eq!(s.provider.timeout, Duration::from_secs(3));
        assert_eq!(
            s.provider.headers,
            vec![("x-tenant".into(), HeaderSource::Value("a".into()))]
        );
        assert_eq!(s.max_path_tag_length, DEFAULT_MAX_PATH_TAG_LENGTH);
    }

    #[test]
    fn istio_tags_and_custom_tags_are_sorted_together() {
        let m = mesh(serde_json::json!({
            "defaultProviders": {"tracing": ["zipkin"]},
            "extensionProviders": [zipkin_provider()],
            "defaultConfig": {"meshId": "mesh1", "tracing": {"customTags": {
                "env": {"literal": {"value": "prod"}},
                "tenant": {"header": {"name": "X-Tenant", "defaultValue": "none"}}
            }}}
        }));
        let s = settings_for_proxy(&m, &sidecar()).unwrap();
        let names: Vec<&str> = s.custom_tags.iter().map(|(n, _)| &**n).collect();
        assert_eq!(
            names,
            [
                "env",
                "istio.canonical_revision",
                "istio.canonical_service",
                "istio.cluster_id",
                "istio.mesh_id",
                "istio.namespace",
                "tenant"
            ]
        );
        let get = |n: &str| {
            s.custom_tags
                .iter()
                .find(|(k, _)| &**k == n)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(
            get("istio.canonical_service"),
            CustomTagValue::Literal("cart".into())
        );
        assert_eq!(
            get("istio.canonical_revision"),
            CustomTagValue::Literal("v2".into())
        );
        assert_eq!(
            get("istio.mesh_id"),
            CustomTagValue::Literal("mesh1".into())
        );
        assert_eq!(
            get("tenant"),
            CustomTagValue::RequestHeader {
                name: "x-tenant".into(),
                default: "none".into()
            }
        );
    }

    #[test]
    fn service_cluster_follows_istios_bootstrap() {
        assert_eq!(service_cluster(&sidecar()), "cart.shop");
        let gw = ProxyIdentity {
            namespace: "istio-system".into(),
            labels: [("istio".to_string(), "ingressgateway".to_string())]
                .into_iter()
                .collect(),
            service_account: None,
            kind: ProxyKind::Gateway,
        };
        assert_eq!(service_cluster(&gw), "istio-ingressgateway.istio-system");
        let bare = ProxyIdentity {
            namespace: "ns".into(),
            ..ProxyIdentity::default()
        };
        assert_eq!(service_cluster(&bare), "istio-proxy.ns");
    }
}
