//! `compile(resources, proxy) → Snapshot`: everything one proxy obeys, built once per config change,
//! and the lookups the data path makes against it.

mod clusters;
mod gateway_routes;
mod lookup;
mod routes;
mod stream_routes;
mod workload;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

// The maps a request is looked up in (its host, its service's port) hash with FxHash: their keys
// come from config, and SipHash's flooding resistance buys nothing for lookups.
use rustc_hash::FxHashMap;

use sluice_api::networking::{self, Destination, HttpRoute, Labels};
use sluice_api::{Diagnostic, Resource, Severity, Spec};

use crate::cluster::{Cluster, MergedRule, UpstreamAddress, UpstreamProtocol, UpstreamTls};
use crate::gateway::{self, GatewayPort, GatewayServer};
use crate::host;
use crate::mesh::{MeshSettings, OutboundPolicy};
use crate::policy::{LbPolicy, OutlierPolicy, PoolLimits};
use crate::references;
use crate::registry::{self, labels_subset, ExportTo, Protocol, Service};
use crate::route::{
    operation_for, ClusterRef, Fault, HeaderOps, HttpRequestFacts, HttpRouteRule, Mirror, Redirect,
    RequestMatch, RetryOn, RetryPolicy, Rewrite, RouteAction, StrMatcher, StreamMatch, StreamRule,
    VirtualHost, WeightedTarget,
};
use gateway_routes::{build_gateway, GatewayRoutes};

pub use clusters::{MAX_CLUSTERS_PER_SERVICE, TLS_MODE_LABEL, TRUST_DOMAIN};
pub(crate) use routes::binds_to_mesh;

use clusters::build_clusters;
use routes::{
    build_default_routes, build_host_aliases, build_virtual_services, cluster_ref,
    compile_http_rule, Scope,
};
use stream_routes::{applies_to_proxy, port_u16, tcp_stream_rules, tls_stream_rules};
use workload::{build_inbound_ports, build_security, build_workloads};

/// Which proxy a snapshot is compiled for.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProxyIdentity {
    pub namespace: String,
    pub labels: Labels,
    pub service_account: Option<String>,
    pub kind: ProxyKind,
}

/// A sidecar next to one workload, or a standalone gateway (Istio's "router").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub enum ProxyKind {
    #[default]
    Sidecar,
    /// `sluice gateway`: serves the Gateways whose selector matches its labels; VirtualServices
    /// bind through `gateways`, not `mesh`; `resolution: NONE` services have no endpoints.
    Gateway,
}

/// The result of routing an HTTP request.
#[derive(Debug)]
pub enum HttpDecision<'a> {
    /// A route was chosen.
    Route {
        rule: &'a Arc<HttpRouteRule>,
        matched: Option<&'a RequestMatch>,
        /// The virtual host's domain, e.g. `httpbin.org`.
        vhost: &'a str,
    },
    /// A VirtualService owns the host but none of its rules matched: 404 NR.
    NoRoute { vhost: &'a str },
    /// Unknown host under ALLOW_ANY: forward to the original destination (route `allow_any`).
    Passthrough,
    /// Unknown host under REGISTRY_ONLY: 502 (route `block_all`).
    Blocked,
}

/// The result of routing a TLS or TCP connection.
#[derive(Debug)]
pub enum StreamDecision<'a> {
    /// A service's own cluster (no VirtualService rule).
    Cluster(&'a Arc<Cluster>),
    /// A VirtualService `tls`/`tcp` rule; pick one of its weighted targets.
    Rule(&'a StreamRule),
    /// Unknown destination under ALLOW_ANY.
    Passthrough,
    /// Unknown destination under REGISTRY_ONLY.
    Blocked,
}

/// A workload the registry knows by address (a WorkloadEntry, an `Endpoints` address, a
/// ServiceEntry endpoint with labels), so telemetry can name the peer of a connection.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Workload {
    /// WorkloadEntry name, else the `app` label, else the address.
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub labels: Labels,
    pub service_account: Option<Arc<str>>,
}

/// Name of the inbound cluster for ports no service of this workload declares.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughClusterIpv4";

/// How the inbound side treats one port of this workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InboundPort {
    /// `inbound|8080||` for a port some service of this workload targets, else
    /// [`INBOUND_PASSTHROUGH_CLUSTER`].
    pub cluster_name: Arc<str>,
    /// Declared by the service port (name prefix or `appProtocol`); `Unknown` = sniff.
    pub protocol: Protocol,
    /// The service whose port targets this one (`destination_service*` labels), if any.
    #[serde(skip)]
    pub service: Option<Arc<Service>>,
    /// Where the traffic goes: the original destination, or a Sidecar ingress listener's
    /// `defaultEndpoint`.
    pub endpoint: crate::sidecar_listeners::InboundEndpoint,
}

/// Everything one proxy needs to route, compiled from one consistent set of resources.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every compile; shown in the config dump.
    pub generation: u64,
    pub proxy: ProxyIdentity,
    pub mesh: MeshSettings,
    /// Services visible to this proxy, oldest first.
    pub services: Vec<Arc<Service>>,
    /// Every cluster, by name.
    pub clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
    vhosts_exact: FxHashMap<Arc<str>, Arc<VirtualHost>>,
    /// Wildcard virtual hosts, most specific first.
    vhosts_wildcard: Vec<Arc<VirtualHost>>,
    /// Services by exact host, and wildcard services most specific first (indexes into `services`).
    services_exact: FxHashMap<Arc<str>, Vec<usize>>,
    services_wildcard: Vec<usize>,
    default_routes: FxHashMap<(usize, u16), Arc<HttpRouteRule>>,
    /// Short names and VIPs a Host header may use for a service or virtual host, to its FQDN.
    host_aliases: FxHashMap<Arc<str>, Arc<str>>,
    pub tls_rules: Vec<StreamRule>,
    pub tcp_rules: Vec<StreamRule>,
    /// Problems found while compiling (dropped duplicates, unknown references).
    pub diagnostics: Vec<Diagnostic>,
    /// Known workloads by IP, for telemetry peers.
    pub workloads: HashMap<IpAddr, Arc<Workload>>,
    /// Inbound ports of this workload declared by the services that select it, by target port.
    pub inbound_ports: HashMap<u16, InboundPort>,
    /// Gateway proxies: the ports to listen on and their servers (empty for sidecars).
    pub gateway_ports: Vec<GatewayPort>,
    /// AuthorizationPolicies that apply to this proxy.
    pub authorization: crate::security::Authorization,
    /// RequestAuthentications (JWT rules) that apply to this proxy.
    pub request_authentication: crate::jwt::RequestAuthentication,
    /// PeerAuthentication for this workload: the mode for ports without a port-level setting.
    pub mtls_mode: crate::security::MtlsMode,
    /// PeerAuthentication `portLevelMtls`, by the workload's port.
    pub mtls_ports: HashMap<u16, crate::security::MtlsMode>,
    /// Gateway proxies: the routes of each port.
    gateway_routes: HashMap<u16, GatewayRoutes>,
    /// Sidecar proxies: the `Sidecar` resource that scopes this proxy, if any.
    pub sidecar_scope: Option<crate::sidecar_scope::SidecarScope>,
    /// Sidecar proxies: the listeners the `Sidecar` resource declares (bound listeners and the
    /// per-port egress scopes).
    pub sidecar_listeners: crate::sidecar_listeners::SidecarListeners,
    /// The Telemetry API resolved for this proxy (access logging, metrics, tracing).
    pub telemetry: Arc<crate::telemetry_policy::TelemetryPolicy>,
    /// Where this proxy reports the spans of its outbound side and, for a gateway, of every hop
    /// ([`crate::tracing::settings_for_proxy`], or a Telemetry's `CLIENT` tracing); `None`:
    /// nowhere.
    pub tracing: Option<Arc<crate::tracing::TracingSettings>>,
    /// The same for a sidecar's inbound side (a Telemetry's `SERVER` tracing).
    pub tracing_inbound: Option<Arc<crate::tracing::TracingSettings>>,
}

/// Creation order for resources of one kind: `creationTimestamp`, then the order the store first
/// saw them, then name and namespace (Istio's `configCompareByCreationTime`). Callers pass
/// resources already sorted this way.
///
/// A gateway proxy whose labels carry `istio: <ingressSelector>` also serves the Kubernetes
/// Ingresses of the mesh's ingress class, translated by [`crate::ingress::to_gateway_config`].
///
/// A sidecar proxy obeys the `Sidecar` resource that applies to it
/// ([`crate::sidecar_scope::select`]): its `outboundTrafficPolicy` replaces the mesh's, and only
/// the services and VirtualServices its egress hosts import are compiled in (DestinationRules
/// follow the services they apply to).
pub fn compile(resources: &[Resource], proxy: &ProxyIdentity, generation: u64) -> Snapshot {
    let mut snap = compile_with(resources, proxy, generation, None);
    crate::sidecar_listeners::build(&mut snap, resources, proxy, generation);
    snap
}

/// [`compile`] under one egress listener's scope `scope` (no Sidecar selection, no diagnostics:
/// the whole snapshot reports those).
pub(crate) fn compile_scoped(
    resources: &[Resource],
    proxy: &ProxyIdentity,
    generation: u64,
    scope: crate::sidecar_scope::SidecarScope,
) -> Snapshot {
    let mut snap = compile_with(resources, proxy, generation, Some(scope));
    snap.diagnostics.clear();
    snap
}

fn compile_with(
    resources: &[Resource],
    proxy: &ProxyIdentity,
    generation: u64,
    scope: Option<crate::sidecar_scope::SidecarScope>,
) -> Snapshot {
    let mesh = MeshSettings::from_resources(resources);
    let mut ingress_diagnostics = Vec::new();
    let with_ingress: Vec<Resource>;
    let resources = if proxy.kind == ProxyKind::Gateway
        && proxy.labels.get("istio") == Some(&mesh.ingress_selector)
    {
        let (generated, diags) =
            crate::ingress::to_gateway_config(resources, &mesh, &proxy.namespace);
        ingress_diagnostics = diags;
        if generated.is_empty() {
            resources
        } else {
            with_ingress = resources.iter().cloned().chain(generated).collect();
            &with_ingress
        }
    } else {
        resources
    };
    let mut snap = Snapshot {
        generation,
        proxy: proxy.clone(),
        mesh,
        diagnostics: ingress_diagnostics,
        tracing: crate::tracing::mesh_config(resources)
            .and_then(|m| crate::tracing::settings_for_proxy(m, proxy))
            .map(Arc::new),
        ..Snapshot::default()
    };
    let (sidecar_scope, sidecar_diagnostics) = match scope {
        Some(scope) => (Some(scope), Vec::new()),
        None => crate::sidecar_scope::select(resources, proxy, &snap.mesh.root_namespace),
    };
    snap.diagnostics.extend(sidecar_diagnostics);
    if let Some(policy) = sidecar_scope.as_ref().and_then(|sc| sc.outbound_policy) {
        snap.mesh.outbound_policy = policy;
    }
    let all_services = registry::services_from(resources);
    let visible: Vec<Arc<Service>> = all_services
        .iter()
        .filter(|s| s.export_to.visible_to(&proxy.namespace))
        .cloned()
        .collect();
    // A Sidecar narrows what is visible to what its egress hosts import, plus the services the
    // VirtualServices it imports route to; the rest become unknown hosts.
    let imported = |s: &Arc<Service>| -> bool {
        sidecar_scope
            .as_ref()
            .is_none_or(|sc| sc.imports_service(s))
    };
    let vs_destinations = sidecar_scope
        .as_ref()
        .map(|sc| {
            crate::sidecar_scope::virtual_service_destinations(
                sc,
                resources,
                &visible,
                &proxy.namespace,
            )
        })
        .unwrap_or_default();
    snap.services = visible
        .iter()
        .filter(|s| {
            imported(s) || vs_destinations.contains(&(s.hostname.clone(), s.namespace.clone()))
        })
        .map(|s| match proxy.kind {
            // A gateway cannot forward to the original destination: Istio gives such a
            // service EDS instead, so it has only the endpoints the registry lists (503 UH).
            // A wildcard host is the exception: sluice resolves the request's own SNI/Host
            // there (the egress-gateway pattern for `*.example.com`), as DYNAMIC_DNS does.
            ProxyKind::Gateway
                if s.resolution == registry::Resolution::None && !s.hostname.starts_with('*') =>
            {
                Arc::new(Service {
                    resolution: registry::Resolution::Static,
                    ..(**s).clone()
                })
            }
            _ => s.clone(),
        })
        .collect();
    for (i, svc) in snap.services.iter().enumerate() {
        if svc.hostname.starts_with('*') {
            snap.services_wildcard.push(i);
        } else {
            snap.services_exact
                .entry(svc.hostname.clone())
                .or_default()
                .push(i);
        }
    }
    {
        let services = &snap.services;
        snap.services_wildcard
            .sort_by(|a, b| host::specificity(&services[*a].hostname, &services[*b].hostname));
    }
    snap.sidecar_scope = sidecar_scope;
    build_clusters(&mut snap, resources);
    match proxy.kind {
        ProxyKind::Sidecar => build_virtual_services(&mut snap, resources),
        ProxyKind::Gateway => {
            build_gateway(&mut snap, resources);
            crate::ingress::attribute_diagnostics(resources, &mut snap.diagnostics);
        }
    }
    // After the virtual hosts: a service whose host has one never uses its default route.
    build_default_routes(&mut snap);
    build_host_aliases(&mut snap);
    build_workloads(&mut snap, resources);
    build_inbound_ports(&mut snap, resources, &all_services);
    build_security(&mut snap, resources);
    let (telemetry, telemetry_diagnostics) = crate::telemetry_policy::TelemetryPolicy::compile(
        resources,
        &proxy.namespace,
        &proxy.labels,
        &snap.mesh.root_namespace,
    );
    snap.diagnostics.extend(telemetry_diagnostics);
    // A Telemetry tracing section replaces the mesh's tracing settings, side by side.
    match (&telemetry.tracing, crate::tracing::mesh_config(resources)) {
        (Some(by_mode), Some(mesh)) => {
            let side = |mode| crate::tracing::with_telemetry(mesh, proxy, by_mode.get(mode));
            snap.tracing = side(crate::telemetry_policy::WorkloadMode::Client).map(Arc::new);
            snap.tracing_inbound =
                side(crate::telemetry_policy::WorkloadMode::Server).map(Arc::new);
        }
        (Some(_), None) => {
            // No mesh config: no extension providers for a Telemetry to name.
            snap.tracing = None;
            snap.tracing_inbound = None;
        }
        (None, _) => snap.tracing_inbound = snap.tracing.clone(),
    }
    snap.telemetry = Arc::new(telemetry);
    snap
}

/// Re-exported so callers can sort resources for [`compile`].
pub fn creation_order(a: &Resource, b: &Resource) -> std::cmp::Ordering {
    a.meta
        .creation_timestamp
        .is_none()
        .cmp(&b.meta.creation_timestamp.is_none())
        .then_with(|| a.meta.creation_timestamp.cmp(&b.meta.creation_timestamp))
}
