//! Mesh-wide settings from the `istio` ConfigMap, with Istio's defaults.

use std::time::Duration;

use serde::Serialize;
use sluice_api::mesh::MeshConfig;
use sluice_api::{Resource, Spec};

/// Namespace and name of the ConfigMap holding the mesh config.
pub const MESH_CONFIGMAP: (&str, &str) = ("istio-system", "istio");

/// What to do with traffic to destinations the registry does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OutboundPolicy {
    /// Forward to the original destination (`PassthroughCluster`).
    AllowAny,
    /// Refuse: HTTP 502 (`block_all`), TLS/TCP closed (`BlackHoleCluster`).
    RegistryOnly,
}

/// Access log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LogEncoding {
    Text,
    Json,
}

/// Where and how access logs are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessLogSettings {
    /// `None` turns access logging off.
    pub file: Option<String>,
    pub encoding: LogEncoding,
    /// A custom Envoy format string (TEXT) or JSON object (JSON); `None` = Istio's default.
    pub format: Option<String>,
}

/// Mesh-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeshSettings {
    pub outbound_policy: OutboundPolicy,
    pub access_log: AccessLogSettings,
    pub connect_timeout: Duration,
    pub root_namespace: String,
    /// `ingressClass`: the `kubernetes.io/ingress.class` annotation value Ingresses must carry.
    pub ingress_class: String,
    /// The `istio` label value of the gateway that serves Kubernetes Ingresses
    /// (`ingressSelector`, else `ingressService` when it is not `istio-ingressgateway`).
    pub ingress_selector: String,
    /// `ingressControllerMode`.
    pub ingress_mode: IngressMode,
}

/// `ingressControllerMode`: which Kubernetes Ingresses the ingress gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IngressMode {
    /// None.
    Off,
    /// Ingresses of the mesh's class, and Ingresses without any class.
    Default,
    /// Only Ingresses of the mesh's class (annotation or IngressClass).
    Strict,
}

impl Default for MeshSettings {
    /// Istio's defaults, except that access logs go to stdout: a proxy whose decisions nobody can
    /// see is the most common complaint (#7669), so sluice logs unless told `accessLogFile: ""`.
    fn default() -> Self {
        MeshSettings {
            outbound_policy: OutboundPolicy::AllowAny,
            access_log: AccessLogSettings {
                file: Some("/dev/stdout".into()),
                encoding: LogEncoding::Text,
                format: None,
            },
            connect_timeout: Duration::from_secs(10),
            root_namespace: "istio-system".into(),
            ingress_class: "istio".into(),
            ingress_selector: "ingressgateway".into(),
            ingress_mode: IngressMode::Strict,
        }
    }
}

impl MeshSettings {
    /// Settings from a decoded MeshConfig, defaults for what it leaves out.
    pub fn from_config(cfg: &MeshConfig) -> MeshSettings {
        let mut m = MeshSettings::default();
        if let Some(mode) = cfg
            .outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode.as_deref())
        {
            if mode.eq_ignore_ascii_case("REGISTRY_ONLY") {
                m.outbound_policy = OutboundPolicy::RegistryOnly;
            }
        }
        if let Some(file) = &cfg.access_log_file {
            m.access_log.file = (!file.is_empty()).then(|| file.clone());
        }
        if cfg
            .access_log_encoding
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case("JSON"))
        {
            m.access_log.encoding = LogEncoding::Json;
        }
        m.access_log.format = cfg
            .access_log_format
            .clone()
            .filter(|f| !f.trim().is_empty());
        if let Some(t) = cfg.connect_timeout {
            m.connect_timeout = t.0;
        }
        if let Some(ns) = cfg.root_namespace.as_ref().filter(|n| !n.is_empty()) {
            m.root_namespace = ns.clone();
        }
        if let Some(c) = cfg.ingress_class.as_ref().filter(|c| !c.is_empty()) {
            m.ingress_class = c.clone();
        }
        if let Some(sel) = cfg.ingress_selector.as_ref().filter(|s| !s.is_empty()) {
            m.ingress_selector = sel.clone();
        } else if let Some(svc) = cfg
            .ingress_service
            .as_ref()
            .filter(|s| !s.is_empty() && *s != "istio-ingressgateway")
        {
            m.ingress_selector = svc.clone();
        }
        match cfg
            .ingress_controller_mode
            .as_deref()
            .map(str::to_ascii_uppercase)
        {
            Some(mode) if mode == "OFF" => m.ingress_mode = IngressMode::Off,
            Some(mode) if mode == "DEFAULT" => m.ingress_mode = IngressMode::Default,
            _ => {}
        }
        m
    }

    /// Settings from the `istio-system/istio` ConfigMap among `resources`, or the defaults.
    pub fn from_resources(resources: &[Resource]) -> MeshSettings {
        resources
            .iter()
            .find_map(|r| match &r.spec {
                Spec::ConfigMap {
                    mesh: Some(mesh), ..
                } if (r.meta.namespace.as_str(), r.meta.name.as_str()) == MESH_CONFIGMAP => {
                    Some(MeshSettings::from_config(mesh))
                }
                _ => None,
            })
            .unwrap_or_default()
    }
}
