//! The tracing parts of MeshConfig: `extensionProviders` (`zipkin`, `opentelemetry`),
//! `defaultProviders.tracing`, and ProxyConfig's `tracing` (`defaultConfig.tracing`), as
//! istio/api's `mesh/v1alpha1/config.proto` and `proxy.proto` spell them. Other provider kinds
//! (ext-authz, access-log sinks, …) are accepted and left alone: the mesh config is decoded
//! leniently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// One `extensionProviders` entry. Only the tracing kinds sluice reports to are decoded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<ZipkinProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OpenTelemetryProvider>,
}

/// `extensionProviders[].zipkin`: spans as Zipkin JSON v2 over HTTP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZipkinProvider {
    /// The collector's host: a Kubernetes service FQDN or a ServiceEntry host.
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub port: u32,
    #[serde(
        default,
        alias = "max_tag_length",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_tag_length: Option<u32>,
    /// 64-bit trace ids for new traces (Istio's default is 128 bits).
    #[serde(
        default,
        rename = "enable64bitTraceId",
        alias = "enable_64bit_trace_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_64bit_trace_id: Option<bool>,
    /// Default `/api/v2/spans`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ProviderHeader>,
}

/// `extensionProviders[].opentelemetry`: OTLP over gRPC, or OTLP/HTTP (protobuf) when `http`
/// is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenTelemetryProvider {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub port: u32,
    #[serde(
        default,
        alias = "max_tag_length",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_tag_length: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<OtlpHttp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<OtlpGrpc>,
}

/// `opentelemetry.http`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtlpHttp {
    /// The traces path, e.g. `/v1/traces`.
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ProviderHeader>,
}

/// `opentelemetry.grpc`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtlpGrpc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(
        default,
        alias = "initial_metadata",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub initial_metadata: Vec<ProviderHeader>,
}

/// A header sent with every export: a literal `value`, or the proxy's environment variable
/// `envName`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, alias = "env_name", skip_serializing_if = "Option::is_none")]
    pub env_name: Option<String>,
}

/// `defaultProviders`: the part sluice acts on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultProviders {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<String>,
}

/// ProxyConfig's `tracing` (under `defaultConfig`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTracing {
    /// Percent of new traces sampled, 0.0–100.0 (0 or absent: Istio's default, 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    /// The legacy form of a Zipkin backend: `address: host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<LegacyZipkin>,
    #[serde(
        default,
        alias = "max_path_tag_length",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_path_tag_length: Option<u32>,
    #[serde(
        default,
        alias = "custom_tags",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// `enableIstioTags` (default true): the `istio.*` tags on every span.
    #[serde(
        default,
        alias = "enable_istio_tags",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_istio_tags: Option<bool>,
}

/// `defaultConfig.tracing.zipkin`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyZipkin {
    #[serde(default)]
    pub address: String,
}

/// A custom span tag: one of `literal`, `environment`, `header`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomTag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<LiteralTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<NamedTagSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedTagSource>,
}

/// `customTags.*.literal`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiteralTag {
    #[serde(default)]
    pub value: String,
}

/// `customTags.*.environment` / `.header`: a name and the value used when it is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedTagSource {
    #[serde(default)]
    pub name: String,
    #[serde(default, alias = "default_value")]
    pub default_value: String,
}

impl super::MeshConfig {
    /// Problems in the tracing fields, as `field: message` (Istio's `validateExtensionProvider`
    /// and the references sluice would otherwise silently ignore).
    pub fn tracing_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.extension_providers.iter().enumerate() {
            let at = format!("extensionProviders[{i}]");
            if p.name.is_empty() {
                problems.push(format!("{at}.name: empty extension provider name"));
            } else if !seen.insert(p.name.as_str()) {
                problems.push(format!(
                    "{at}.name: duplicate extension provider name {:?}",
                    p.name
                ));
            }
            if let Some(z) = &p.zipkin {
                check_service(&mut problems, &at, "zipkin", &z.service, z.port);
                if let Some(path) = z.path.as_deref().filter(|p| !p.is_empty()) {
                    if !path.starts_with('/') {
                        problems.push(format!("{at}.zipkin.path: {path:?} must start with /"));
                    }
                }
            }
            if let Some(o) = &p.opentelemetry {
                check_service(&mut problems, &at, "opentelemetry", &o.service, o.port);
            }
        }
        if let Some(t) = self
            .default_config
            .as_ref()
            .and_then(|d| d.tracing.as_ref())
        {
            if let Some(s) = t.sampling {
                if s < 0.0 || s.is_nan() {
                    problems.push(format!(
                        "defaultConfig.tracing.sampling: {s} must be between 0.0 and 100.0"
                    ));
                }
            }
            if let Some(z) = t.zipkin.as_ref().filter(|z| !z.address.is_empty()) {
                if split_host_port(&z.address).is_none() {
                    problems.push(format!(
                        "defaultConfig.tracing.zipkin.address: {:?} is not host:port",
                        z.address
                    ));
                }
            }
            for (name, tag) in &t.custom_tags {
                let kinds = [
                    tag.literal.is_some(),
                    tag.environment.is_some(),
                    tag.header.is_some(),
                ];
                if kinds.iter().filter(|k| **k).count() != 1 {
                    problems.push(format!(
                        "defaultConfig.tracing.customTags.{name}: exactly one of literal, environment, header is required"
                    ));
                }
            }
        }
        problems
    }

    /// Tracing settings Istio accepts but that leave spans unreported: a default provider that
    /// is not defined, or not a kind sluice reports to (Istio then disables tracing silently).
    pub fn tracing_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(s) = self
            .default_config
            .as_ref()
            .and_then(|d| d.tracing.as_ref())
            .and_then(|t| t.sampling)
            .filter(|s| *s > 100.0)
        {
            warnings.push(format!(
                "defaultConfig.tracing.sampling: {s} is above 100.0; Istio (and sluice) use 1.0 instead"
            ));
        }
        let Some(first) = self
            .default_providers
            .as_ref()
            .and_then(|d| d.tracing.first())
        else {
            return warnings;
        };
        match self.extension_providers.iter().find(|p| &p.name == first) {
            None => warnings.push(format!(
                "defaultProviders.tracing: provider {first:?} is not defined in extensionProviders; no spans are reported"
            )),
            Some(p) if p.zipkin.is_none() && p.opentelemetry.is_none() => warnings.push(format!(
                "defaultProviders.tracing: provider {first:?} is not a tracing provider sluice reports to (zipkin, opentelemetry); no spans are reported"
            )),
            Some(_) => {}
        }
        warnings
    }
}

/// Istio's `validateExtensionProviderService`: a host name and a port.
fn check_service(problems: &mut Vec<String>, at: &str, kind: &str, service: &str, port: u32) {
    if service.trim().is_empty() {
        problems.push(format!("{at}.{kind}.service: service is required"));
    } else if service.contains(' ') || service.matches('/').count() > 1 {
        problems.push(format!(
            "{at}.{kind}.service: {service:?} is not a host name"
        ));
    }
    if !(1..=65535).contains(&port) {
        problems.push(format!(
            "{at}.{kind}.port: port number {port} must be in the range 1..65535"
        ));
    }
}

/// `host:port` (an IPv6 host in brackets) → host and port.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::MeshConfig;

    fn mesh(yaml: serde_json::Value) -> MeshConfig {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn providers_decode_as_istio_spells_them() {
        let m = mesh(serde_json::json!({
            "enableTracing": true,
            "defaultProviders": {"tracing": ["zipkin"], "metrics": ["prometheus"]},
            "extensionProviders": [
                {"name": "zipkin", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local",
                    "port": 9411, "maxTagLength": 56, "enable64bitTraceId": true}},
                {"name": "otel", "opentelemetry": {"service": "otel.example", "port": 4318,
                    "http": {"path": "/v1/traces", "timeout": "2s", "headers": [{"name": "x-k", "value": "v"}]}}},
                {"name": "authz", "envoyExtAuthzHttp": {"service": "a", "port": 80}}
            ],
            "defaultConfig": {"tracing": {"sampling": 50, "zipkin": {"address": "z:9411"},
                "customTags": {"env": {"literal": {"value": "prod"}}}}}
        }));
        assert_eq!(m.extension_providers.len(), 3);
        let z = m.extension_providers[0].zipkin.as_ref().unwrap();
        assert_eq!(z.port, 9411);
        assert_eq!(z.enable_64bit_trace_id, Some(true));
        let o = m.extension_providers[1].opentelemetry.as_ref().unwrap();
        assert_eq!(o.http.as_ref().unwrap().path, "/v1/traces");
        let t = m.default_config.unwrap().tracing.unwrap();
        assert_eq!(t.sampling, Some(50.0));
        assert_eq!(t.zipkin.unwrap().address, "z:9411");
    }

    #[test]
    fn bad_tracing_config_is_named_by_field() {
        let m = mesh(serde_json::json!({
            "defaultProviders": {"tracing": ["missing"]},
            "extensionProviders": [
                {"name": "z", "zipkin": {"service": "", "port": 0}},
                {"name": "z", "opentelemetry": {"service": "o", "port": 70000}}
            ],
            "defaultConfig": {"tracing": {"sampling": -1, "zipkin": {"address": "nocolon"}}}
        }));
        let p = m.tracing_problems().join("\n");
        for want in [
            "extensionProviders[0].zipkin.service: service is required",
            "extensionProviders[0].zipkin.port: port number 0",
            "extensionProviders[1].name: duplicate",
            "extensionProviders[1].opentelemetry.port: port number 70000",
            "defaultConfig.tracing.sampling: -1",
            "defaultConfig.tracing.zipkin.address: \"nocolon\"",
        ] {
            assert!(p.contains(want), "{want} not in:\n{p}");
        }
        assert!(MeshConfig::default().tracing_problems().is_empty());
        assert!(m.tracing_warnings()[0]
            .contains("defaultProviders.tracing: provider \"missing\" is not defined"));
    }

    /// proto3 cannot send `enableTracing: false`; the wire form drops what it switches off.
    #[test]
    fn enable_tracing_false_travels_as_no_legacy_address() {
        let legacy =
            serde_json::json!({"tracing": {"sampling": 5, "zipkin": {"address": "z:9411"}}});
        let off = mesh(serde_json::json!({"enableTracing": false, "defaultConfig": legacy}));
        let wire = off.for_wire();
        assert_eq!(wire.enable_tracing, None);
        let t = wire.default_config.unwrap().tracing.unwrap();
        assert_eq!((t.zipkin, t.sampling), (None, Some(5.0)));
        let on = mesh(serde_json::json!({"enableTracing": true, "defaultConfig": legacy}));
        assert_eq!(on.for_wire(), on);
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("zipkin:9411"), Some(("zipkin", 9411)));
        assert_eq!(split_host_port("[::1]:9411"), Some(("::1", 9411)));
        assert_eq!(split_host_port("zipkin"), None);
        assert_eq!(split_host_port(":9411"), None);
    }
}
