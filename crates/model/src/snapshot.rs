//! `compile(resources, proxy) → Snapshot`: everything one proxy obeys, built once per config change,
//! and the lookups the data path makes against it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use sluice_api::networking::{self, Destination, HttpRoute, Labels};
use sluice_api::{Diagnostic, Resource, Severity, Spec};

use crate::cluster::{Cluster, MergedRule, UpstreamAddress, UpstreamProtocol, UpstreamTls};
use crate::gateway::{self, GatewayPort, GatewayServer};

mod gateway_routes;
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
    vhosts_exact: HashMap<Arc<str>, Arc<VirtualHost>>,
    /// Wildcard virtual hosts, most specific first.
    vhosts_wildcard: Vec<Arc<VirtualHost>>,
    /// Services by exact host, and wildcard services most specific first (indexes into `services`).
    services_exact: HashMap<Arc<str>, Vec<usize>>,
    services_wildcard: Vec<usize>,
    default_routes: HashMap<(usize, u16), Arc<HttpRouteRule>>,
    /// Short names and VIPs a Host header may use for a service or virtual host, to its FQDN.
    host_aliases: HashMap<Arc<str>, Arc<str>>,
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
    /// PeerAuthentication for this workload: the mode for ports without a port-level setting.
    pub mtls_mode: crate::security::MtlsMode,
    /// PeerAuthentication `portLevelMtls`, by the workload's port.
    pub mtls_ports: HashMap<u16, crate::security::MtlsMode>,
    /// Gateway proxies: the routes of each port.
    gateway_routes: HashMap<u16, GatewayRoutes>,
    /// Sidecar proxies: the `Sidecar` resource that scopes this proxy, if any.
    pub sidecar_scope: Option<crate::sidecar_scope::SidecarScope>,
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
        ..Snapshot::default()
    };
    let (sidecar_scope, sidecar_diagnostics) =
        crate::sidecar_scope::select(resources, proxy, &snap.mesh.root_namespace);
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
    build_default_routes(&mut snap);
    match proxy.kind {
        ProxyKind::Sidecar => build_virtual_services(&mut snap, resources),
        ProxyKind::Gateway => {
            build_gateway(&mut snap, resources);
            crate::ingress::attribute_diagnostics(resources, &mut snap.diagnostics);
        }
    }
    build_host_aliases(&mut snap);
    build_workloads(&mut snap, resources);
    build_inbound_ports(&mut snap, resources, &all_services);
    build_security(&mut snap, resources);
    snap
}

/// AuthorizationPolicies for this proxy (sidecars and gateways alike: a gateway is a workload
/// of its namespace), and PeerAuthentication for sidecars (Istio does not apply it to gateways,
/// which stay PERMISSIVE).
fn build_security(snap: &mut Snapshot, resources: &[Resource]) {
    let root = snap.mesh.root_namespace.clone();
    let (authz, diags) = crate::security::Authorization::compile(
        resources,
        &snap.proxy.namespace,
        &snap.proxy.labels,
        &root,
    );
    snap.authorization = authz;
    snap.diagnostics.extend(diags);
    if snap.proxy.kind == ProxyKind::Sidecar {
        let (mode, ports) = crate::security::peer_authentication(
            resources,
            &snap.proxy.namespace,
            &snap.proxy.labels,
            &root,
        );
        snap.mtls_mode = mode;
        snap.mtls_ports = ports;
    }
}

/// The label Istio's injector puts on workloads with a sidecar; auto mTLS sends ISTIO_MUTUAL
/// only to endpoints that carry it.
pub const TLS_MODE_LABEL: (&str, &str) = ("security.istio.io/tlsMode", "istio");

/// The trust domain of the SPIFFE identities sluice expects (Istio's default).
pub const TRUST_DOMAIN: &str = "cluster.local";

/// `enableAutoMtls` of the mesh config (default true).
fn auto_mtls_enabled(resources: &[Resource]) -> bool {
    resources
        .iter()
        .find_map(|r| match &r.spec {
            Spec::ConfigMap {
                mesh: Some(mesh), ..
            } if (r.meta.namespace.as_str(), r.meta.name.as_str())
                == crate::mesh::MESH_CONFIGMAP =>
            {
                mesh.enable_auto_mtls
            }
            _ => None,
        })
        .unwrap_or(true)
}

/// Service accounts of workloads by `(namespace, address)`: WorkloadEntries and ServiceEntry
/// endpoints that name one.
fn service_accounts(resources: &[Resource]) -> HashMap<(String, String), String> {
    let mut out = HashMap::new();
    for r in resources {
        let entries: Vec<&networking::WorkloadEntry> = match &r.spec {
            Spec::WorkloadEntry(we) => vec![we],
            Spec::ServiceEntry(se) => se.endpoints.iter().collect(),
            _ => continue,
        };
        for we in entries {
            if let Some(sa) = we.service_account.as_deref().filter(|s| !s.is_empty()) {
                out.entry((r.meta.namespace.clone(), we.address.clone()))
                    .or_insert_with(|| sa.to_string());
            }
        }
    }
    out
}

/// The identities ISTIO_MUTUAL expects from `endpoints` of `svc`: each endpoint's SPIFFE ID
/// (`spiffe://cluster.local/ns/NS/sa/SA`, service account `default` when none is known), plus
/// the ServiceEntry's `subjectAltNames`; sorted, without duplicates.
fn expected_identities(
    svc: &Service,
    endpoints: &[registry::Endpoint],
    accounts: &HashMap<(String, String), String>,
    se_sans: &[String],
) -> Vec<String> {
    let mut out: BTreeSet<String> = se_sans.iter().cloned().collect();
    for ep in endpoints {
        let key = (svc.namespace.to_string(), ep.address.to_string());
        let sa = accounts.get(&key).map_or("default", String::as_str);
        out.insert(format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{sa}",
            svc.namespace
        ));
    }
    out.into_iter().collect()
}

/// Other names Envoy's virtual hosts carry for a service (Istio's `generateVirtualHostDomains`):
/// for `name.ns.svc.cluster.local`, `name.ns.svc` and `name.ns` everywhere and `name` in the
/// proxy's own namespace; and each single-IP address (VIP) of a service.
fn build_host_aliases(snap: &mut Snapshot) {
    let suffix = format!(".{}", host::CLUSTER_DOMAIN);
    let mut aliases: HashMap<Arc<str>, Arc<str>> = HashMap::new();
    let names = snap
        .services
        .iter()
        .map(|s| &s.hostname)
        .chain(snap.vhosts_exact.keys());
    for fqdn in names {
        let Some(short) = fqdn.strip_suffix(suffix.as_str()) else {
            continue;
        };
        let Some((name, ns)) = short.split_once('.') else {
            continue;
        };
        if name.is_empty() || ns.is_empty() || ns.contains('.') {
            continue;
        }
        let mut add = |alias: String| {
            aliases.entry(alias.into()).or_insert_with(|| fqdn.clone());
        };
        add(format!("{short}.svc"));
        add(short.to_string());
        if ns == snap.proxy.namespace {
            add(name.to_string());
        }
    }
    for svc in &snap.services {
        for net in &svc.addresses {
            if net.prefix_len() != net.max_prefix_len() {
                continue;
            }
            let alias = match net.addr() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            aliases
                .entry(alias.into())
                .or_insert_with(|| svc.hostname.clone());
        }
    }
    // A name that is itself a host keeps its own meaning.
    aliases.retain(|alias, _| {
        !snap.vhosts_exact.contains_key(alias) && !snap.services_exact.contains_key(alias)
    });
    snap.host_aliases = aliases;
}

/// Workloads by IP: every WorkloadEntry (any namespace), then `Endpoints` addresses and
/// ServiceEntry endpoints with labels, so telemetry can name a peer.
fn build_workloads(snap: &mut Snapshot, resources: &[Resource]) {
    let entries = registry::workload_entries(resources);
    for w in &entries {
        let Some(ip) = w.ip() else {
            continue;
        };
        let workload = Workload {
            name: w.resource.meta.name.as_str().into(),
            namespace: w.resource.meta.namespace.as_str().into(),
            labels: w.labels.clone(),
            service_account: w
                .entry
                .service_account
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(Arc::from),
        };
        snap.workloads
            .entry(ip)
            .or_insert_with(|| Arc::new(workload));
    }
    let named = |labels: &Labels, ip: IpAddr| -> Arc<str> {
        labels
            .get("app")
            .map_or_else(|| Arc::from(ip.to_string()), |a| Arc::from(a.as_str()))
    };
    for r in resources {
        match &r.spec {
            Spec::Endpoints(subsets) => {
                for addr in subsets.iter().flat_map(|s| s.addresses.iter()) {
                    let Ok(ip) = addr.ip.parse::<IpAddr>() else {
                        continue;
                    };
                    snap.workloads.entry(ip).or_insert_with(|| {
                        let labels = Labels::new();
                        Arc::new(Workload {
                            name: named(&labels, ip),
                            namespace: r.meta.namespace.as_str().into(),
                            labels,
                            service_account: None,
                        })
                    });
                }
            }
            Spec::ServiceEntry(se) => {
                for ep in se.endpoints.iter().filter(|e| !e.labels.is_empty()) {
                    let Ok(ip) = ep.address.parse::<IpAddr>() else {
                        continue;
                    };
                    snap.workloads.entry(ip).or_insert_with(|| {
                        Arc::new(Workload {
                            name: named(&ep.labels, ip),
                            namespace: r.meta.namespace.as_str().into(),
                            labels: ep.labels.clone(),
                            service_account: ep.service_account.as_deref().map(Arc::from),
                        })
                    });
                }
            }
            _ => {}
        }
    }
}

/// The ports of this workload that services selecting it target: Kubernetes Services in the
/// proxy's namespace whose `selector` matches the proxy's labels, and MESH_INTERNAL
/// ServiceEntries in the proxy's namespace whose `workloadSelector` does.
fn build_inbound_ports(snap: &mut Snapshot, resources: &[Resource], services: &[Arc<Service>]) {
    let proxy = &snap.proxy;
    for r in resources {
        if r.meta.namespace != proxy.namespace {
            continue;
        }
        let (source, selects) = match &r.spec {
            Spec::Service(spec) => (
                format!("Service {}", r.key()),
                !spec.selector.is_empty() && labels_subset(&spec.selector, &proxy.labels),
            ),
            Spec::ServiceEntry(se) => (
                format!("ServiceEntry {}", r.key()),
                se.workload_selector
                    .as_ref()
                    .is_some_and(|sel| labels_subset(&sel.labels, &proxy.labels))
                    && se
                        .location
                        .as_deref()
                        .is_some_and(|l| l.eq_ignore_ascii_case("MESH_INTERNAL")),
            ),
            _ => continue,
        };
        if !selects {
            continue;
        }
        for svc in services.iter().filter(|s| *s.source == *source) {
            for port in &svc.ports {
                let target = port.target_port.unwrap_or(port.number);
                snap.inbound_ports
                    .entry(target)
                    .or_insert_with(|| InboundPort {
                        cluster_name: format!("inbound|{target}||").into(),
                        protocol: port.protocol,
                        service: Some(svc.clone()),
                    });
            }
        }
    }
}

/// The DestinationRules visible to the proxy, by namespace and host pattern, indexed once per
/// compile (looking them up by scanning every resource for every service was quadratic).
struct DestinationRules<'a> {
    by_namespace: HashMap<&'a str, host::HostMap<(&'a Resource, &'a networking::DestinationRule)>>,
}

impl<'a> DestinationRules<'a> {
    fn new(resources: &'a [Resource], proxy: &ProxyIdentity) -> Self {
        let mut by_namespace: HashMap<&str, host::HostMap<_>> = HashMap::new();
        for r in resources {
            let Spec::DestinationRule(dr) = &r.spec else {
                continue;
            };
            let visible = ExportTo::parse(&dr.export_to, &r.meta.namespace)
                .visible_to(&proxy.namespace)
                && dr.workload_selector.as_ref().is_none_or(|sel| {
                    r.meta.namespace == proxy.namespace && labels_subset(&sel.labels, &proxy.labels)
                });
            if visible {
                by_namespace
                    .entry(r.meta.namespace.as_str())
                    .or_default()
                    .insert(
                        &host::resolve_short_name(&dr.host, &r.meta.namespace),
                        (r, &**dr),
                    );
            }
        }
        DestinationRules { by_namespace }
    }

    /// The rules for `svc`: those of the most specific matching host, in the first namespace
    /// that has any (the proxy's, the service's, the root namespace), merged oldest first.
    fn for_service(
        &self,
        proxy: &ProxyIdentity,
        root_ns: &str,
        svc: &Service,
    ) -> (MergedRule<'a>, Option<&'a Resource>) {
        let namespaces = [proxy.namespace.as_str(), svc.namespace.as_ref(), root_ns];
        for ns in namespaces {
            let Some(rules) = self
                .by_namespace
                .get(ns)
                .and_then(|m| m.most_specific(&svc.hostname))
            else {
                continue;
            };
            let mut merged = MergedRule::default();
            for (r, dr) in rules {
                merged.merge(format!("DestinationRule {}", r.key()), dr);
            }
            return (merged, rules.first().map(|(r, _)| *r));
        }
        (MergedRule::default(), None)
    }
}

/// Most clusters one service gets: its ports × (1 + the subsets of its DestinationRule). Each
/// resource alone is linear, but a DestinationRule with thousands of subsets for a host with
/// thousands of ports would make millions of clusters; subsets past the bound are not served
/// (requests routed to them get 503 NC, as for an undefined subset) and a diagnostic says so.
pub const MAX_CLUSTERS_PER_SERVICE: usize = 16_384;

/// The endpoints of one service that each subset selects, computed once per distinct selector
/// through a label → endpoints index (a scan per subset per port was cubic).
struct SubsetEndpoints<'s> {
    all: &'s Arc<[registry::Endpoint]>,
    index: Option<HashMap<(&'s str, &'s str), Vec<usize>>>,
    selected: HashMap<&'s Labels, Arc<[registry::Endpoint]>>,
}

impl<'s> SubsetEndpoints<'s> {
    fn new(all: &'s Arc<[registry::Endpoint]>) -> Self {
        SubsetEndpoints {
            all,
            index: None,
            selected: HashMap::new(),
        }
    }

    fn select(&mut self, selector: &'s Labels) -> Arc<[registry::Endpoint]> {
        if selector.is_empty() {
            return self.all.clone();
        }
        let all = self.all;
        let index = self.index.get_or_insert_with(|| {
            let mut index: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
            for (i, ep) in all.iter().enumerate() {
                for (k, v) in &ep.labels {
                    index.entry((k.as_str(), v.as_str())).or_default().push(i);
                }
            }
            index
        });
        self.selected
            .entry(selector)
            .or_insert_with(|| {
                // The endpoints carrying the selector's rarest label are the only candidates.
                let rarest = selector
                    .iter()
                    .map(|(k, v)| {
                        index
                            .get(&(k.as_str(), v.as_str()))
                            .map_or(&[][..], Vec::as_slice)
                    })
                    .min_by_key(|list| list.len())
                    .unwrap_or(&[]);
                rarest
                    .iter()
                    .map(|&i| &all[i])
                    .filter(|ep| labels_subset(selector, &ep.labels))
                    .cloned()
                    .collect()
            })
            .clone()
    }
}

/// A workload's PeerAuthentication mode, and its port-level overrides.
type PeerAuthDecision = (
    crate::security::MtlsMode,
    HashMap<u16, crate::security::MtlsMode>,
);

/// PeerAuthentication decisions for endpoint labels, computed once per distinct label set.
struct PeerAuthCache<'r> {
    resources: &'r [Resource],
    root_ns: &'r str,
    by_labels: HashMap<(Arc<str>, Labels), PeerAuthDecision>,
}

impl<'r> PeerAuthCache<'r> {
    fn get(&mut self, namespace: &Arc<str>, labels: &Labels) -> &PeerAuthDecision {
        let (resources, root_ns) = (self.resources, self.root_ns);
        self.by_labels
            .entry((namespace.clone(), labels.clone()))
            .or_insert_with(|| {
                crate::security::peer_authentication(resources, namespace, labels, root_ns)
            })
    }
}

fn build_clusters(snap: &mut Snapshot, resources: &[Resource]) {
    let root_ns = snap.mesh.root_namespace.clone();
    let auto_mtls = auto_mtls_enabled(resources);
    let accounts = service_accounts(resources);
    let rules = DestinationRules::new(resources, &snap.proxy);
    let se_sans: HashMap<String, &[String]> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::ServiceEntry(se) => Some((
                format!("ServiceEntry {}", r.key()),
                se.subject_alt_names.as_slice(),
            )),
            _ => None,
        })
        .rev()
        .collect();
    let peer_resources: Vec<Resource> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::PeerAuthentication(_)))
        .cloned()
        .collect();
    let mut peer_auth = PeerAuthCache {
        resources: &peer_resources,
        root_ns: &root_ns,
        by_labels: HashMap::new(),
    };
    let services = snap.services.clone();
    for svc in &services {
        let (rule, rule_resource) = rules.for_service(&snap.proxy, &root_ns, svc);
        let se_sans: &[String] = se_sans.get(svc.source.as_ref()).copied().unwrap_or(&[]);
        let policy_source: Option<Arc<str>> =
            (!rule.sources.is_empty()).then(|| rule.sources.join(", ").into());
        let mut selections = SubsetEndpoints::new(&svc.endpoints);
        let ports = svc.ports.len().max(1);
        let served_subsets = (MAX_CLUSTERS_PER_SERVICE / ports)
            .saturating_sub(1)
            .min(rule.subsets.len());
        if let Some(dr) = rule_resource.filter(|_| served_subsets < rule.subsets.len()) {
            snap.diagnostics.push(Diagnostic::at(
                dr,
                Severity::Warning,
                "spec.subsets",
                format!(
                    "{} subsets for the {} ports of {} make more than {MAX_CLUSTERS_PER_SERVICE} clusters; only the first {served_subsets} subsets are served",
                    rule.subsets.len(),
                    svc.ports.len(),
                    svc.hostname
                ),
            ));
        }
        let subsets =
            std::iter::once(None).chain(rule.subsets[..served_subsets].iter().map(|s| Some(*s)));
        for subset in subsets {
            let endpoints = match subset {
                Some(s) => selections.select(&s.labels),
                None => svc.endpoints.clone(),
            };
            let subset_name = subset.map(|s| s.name.as_str());
            let identities = std::cell::OnceCell::new();
            let identities = || {
                identities
                    .get_or_init(|| expected_identities(svc, &endpoints, &accounts, se_sans))
                    .clone()
            };
            let auto_mtls_ok = AutoMtls::of(auto_mtls, svc, &endpoints, &mut peer_auth);
            for port in &svc.ports {
                let name: Arc<str> =
                    Cluster::name_for(port.number, subset_name, &svc.hostname).into();
                let policy = rule.policy_for_subset(port.number, subset);
                let tls = match policy.tls {
                    // The DestinationRule decides, DISABLE included. ISTIO_MUTUAL without
                    // `subjectAltNames` expects the endpoints' identities (Istio's
                    // `buildAutoMtlsSettings`: the user's SANs replace the service accounts).
                    Some(settings) => UpstreamTls::from_settings(settings).map(|mut t| {
                        if t.istio_mutual && t.subject_alt_names.is_empty() {
                            t.subject_alt_names = identities();
                        }
                        t
                    }),
                    None if auto_mtls_ok.applies(svc, port, &endpoints, &mut peer_auth) => {
                        Some(UpstreamTls::istio_mutual(identities()))
                    }
                    None => None,
                }
                .map(Arc::new);
                let limits =
                    PoolLimits::from_settings(policy.connection_pool, snap.mesh.connect_timeout);
                let upstream_protocol =
                    UpstreamProtocol::for_port(port.protocol, &limits, snap.proxy.kind);
                let cluster = Cluster {
                    name: name.clone(),
                    service: svc.clone(),
                    port: port.clone(),
                    subset: subset_name.map(Arc::from),
                    endpoints: endpoints.clone(),
                    tls,
                    connect_timeout: limits.connect_timeout,
                    lb: LbPolicy::from_settings(policy.load_balancer),
                    limits,
                    outlier: policy.outlier_detection.map(OutlierPolicy::from_settings),
                    policy_source: policy_source.clone(),
                    upstream_protocol,
                };
                // The oldest service wins a duplicate host:port, as in Istio's registry merge.
                snap.clusters
                    .entry(name)
                    .or_insert_with(|| Arc::new(cluster));
            }
        }
    }
}

/// Whether auto mTLS applies to a cluster without DestinationRule TLS (Istio's
/// `buildAutoMtlsSettings`): a mesh-internal service whose endpoints all run a sidecar (the
/// `security.istio.io/tlsMode: istio` label), none of which disables mTLS with a
/// PeerAuthentication. Decided once per set of endpoints, unless a PeerAuthentication sets
/// port-level modes, which must then be looked up per port.
enum AutoMtls {
    Never,
    Always,
    PerPort,
}

impl AutoMtls {
    fn of(
        enabled: bool,
        svc: &Service,
        endpoints: &[registry::Endpoint],
        peer_auth: &mut PeerAuthCache<'_>,
    ) -> AutoMtls {
        let (key, value) = TLS_MODE_LABEL;
        if !enabled
            || svc.mesh_external
            || endpoints.is_empty()
            || !endpoints
                .iter()
                .all(|ep| ep.labels.get(key).is_some_and(|v| v == value))
        {
            return AutoMtls::Never;
        }
        let mut per_port = false;
        for ep in endpoints {
            let (mode, ports) = peer_auth.get(&svc.namespace, &ep.labels);
            if !ports.is_empty() {
                per_port = true;
            } else if *mode == crate::security::MtlsMode::Disable {
                return AutoMtls::Never;
            }
        }
        if per_port {
            AutoMtls::PerPort
        } else {
            AutoMtls::Always
        }
    }

    fn applies(
        &self,
        svc: &Service,
        port: &registry::ServicePort,
        endpoints: &[registry::Endpoint],
        peer_auth: &mut PeerAuthCache<'_>,
    ) -> bool {
        match self {
            AutoMtls::Never => false,
            AutoMtls::Always => true,
            AutoMtls::PerPort => endpoints.iter().all(|ep| {
                let (mode, ports) = peer_auth.get(&svc.namespace, &ep.labels);
                let target = ep
                    .ports
                    .get(port.name.as_ref())
                    .copied()
                    .or(port.target_port)
                    .unwrap_or(port.number);
                ports.get(&target).copied().unwrap_or(*mode) != crate::security::MtlsMode::Disable
            }),
        }
    }
}

fn build_default_routes(snap: &mut Snapshot) {
    for (i, svc) in snap.services.iter().enumerate() {
        for port in &svc.ports {
            let name = Cluster::name_for(port.number, None, &svc.hostname);
            let Some(cluster) = snap.clusters.get(name.as_str()) else {
                continue;
            };
            let rule = HttpRouteRule {
                name: Some("default".into()),
                source: svc.source.clone(),
                matches: Vec::new(),
                action: RouteAction::Forward(vec![WeightedTarget {
                    cluster: ClusterRef::Found(cluster.clone()),
                    weight: 100,
                    request_headers: HeaderOps::default(),
                    response_headers: HeaderOps::default(),
                }]),
                timeout: None,
                retry: RetryPolicy::default(),
                fault: None,
                mirrors: Vec::new(),
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
                rewrite: None,
                operation: crate::route::Operation::Fixed(
                    format!("{}:{}/*", svc.hostname, port.number).into(),
                ),
            };
            snap.default_routes.insert((i, port.number), Arc::new(rule));
        }
    }
}

/// True if a VirtualService (or one of its match blocks, via `gateways`) applies to sidecars.
pub(crate) fn binds_to_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

/// Which proxy a VirtualService's match blocks are compiled for.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// Sidecars: blocks whose `gateways` are empty or include `mesh`, and whose `sourceLabels` /
    /// `sourceNamespace` select this proxy.
    Mesh,
    /// A gateway proxy, for these Gateways (`ns/name`): blocks that name one of them, or that
    /// name none and whose source selectors fit (Istio's `sourceMatchHTTP`).
    Gateways {
        names: &'a BTreeSet<String>,
        vs_namespace: &'a str,
        /// The VirtualService was generated from an Ingress (`route-semantics: ingress`).
        ingress: bool,
    },
}

impl Scope<'_> {
    fn keeps(
        &self,
        snap: &Snapshot,
        gateways: &[String],
        source_labels: &Labels,
        source_ns: Option<&str>,
    ) -> bool {
        match self {
            Scope::Mesh => {
                binds_to_mesh(gateways) && applies_to_proxy(snap, source_labels, source_ns)
            }
            Scope::Gateways {
                names,
                vs_namespace,
                ..
            } => {
                if gateways.is_empty() {
                    applies_to_proxy(snap, source_labels, source_ns)
                } else {
                    gateways.iter().any(|g| {
                        gateway::resolve_gateway_name(g, vs_namespace)
                            .is_some_and(|n| names.contains(&n))
                    })
                }
            }
        }
    }

    fn ingress_semantics(&self) -> bool {
        matches!(self, Scope::Gateways { ingress: true, .. })
    }
}

fn build_virtual_services(snap: &mut Snapshot, resources: &[Resource]) {
    for res in resources {
        let Spec::VirtualService(vs) = &res.spec else {
            continue;
        };
        if !binds_to_mesh(&vs.gateways)
            || !ExportTo::parse(&vs.export_to, &res.meta.namespace)
                .visible_to(&snap.proxy.namespace)
        {
            continue;
        }
        let ns = res.meta.namespace.as_str();
        let source: Arc<str> = format!("VirtualService {}", res.key()).into();
        let hosts: Vec<Arc<str>> = vs
            .hosts
            .iter()
            .map(|h| Arc::from(host::resolve_short_name(h, ns)))
            .collect();
        if snap
            .sidecar_scope
            .as_ref()
            .is_some_and(|sc| !sc.imports_virtual_service(ns, &hosts))
        {
            continue;
        }

        if !vs.http.is_empty() {
            let rules: Vec<Arc<HttpRouteRule>> = vs
                .http
                .iter()
                .enumerate()
                .filter_map(|(i, r)| compile_http_rule(snap, res, &source, i, r, Scope::Mesh))
                .map(Arc::new)
                .collect();
            for h in &hosts {
                let vhost = Arc::new(VirtualHost {
                    domain: h.clone(),
                    source: source.clone(),
                    rules: rules.clone(),
                });
                let existing = if h.starts_with('*') {
                    snap.vhosts_wildcard
                        .iter()
                        .find(|v| v.domain == *h)
                        .map(|v| v.source.clone())
                } else {
                    snap.vhosts_exact.get(h).map(|v| v.source.clone())
                };
                if let Some(owner) = existing {
                    // Sidecars do not merge hosts: the oldest VirtualService keeps it (IST0109).
                    snap.diagnostics.push(Diagnostic::at(
                        res,
                        Severity::Warning,
                        "spec.hosts",
                        format!("host {h} is already defined by {owner}, which is older; this VirtualService's http rules for it are ignored"),
                    ));
                    continue;
                }
                if h.starts_with('*') {
                    snap.vhosts_wildcard.push(vhost);
                } else {
                    snap.vhosts_exact.insert(h.clone(), vhost);
                }
            }
        }
        let tls = tls_stream_rules(snap, res, &source, &hosts, vs, Scope::Mesh, true);
        snap.tls_rules.extend(tls);
        let tcp = tcp_stream_rules(snap, res, &source, &hosts, vs, Scope::Mesh, true);
        snap.tcp_rules.extend(tcp);
    }
    snap.vhosts_wildcard
        .sort_by(|a, b| host::specificity(&a.domain, &b.domain));
}

/// A VirtualService's `tls` rules for this proxy. Gateways ignore `destinationSubnets`
/// (`with_subnets: false`): a gateway routes by SNI and port only.
fn tls_stream_rules(
    snap: &mut Snapshot,
    res: &Resource,
    source: &str,
    hosts: &[Arc<str>],
    vs: &networking::VirtualService,
    scope: Scope<'_>,
    with_subnets: bool,
) -> Vec<StreamRule> {
    let mut out = Vec::new();
    for (i, r) in vs.tls.iter().enumerate() {
        let matches = r
            .matches
            .iter()
            .map(|m| L4Match {
                sni_hosts: &m.sni_hosts,
                destination_subnets: if with_subnets {
                    &m.destination_subnets
                } else {
                    &[]
                },
                port: m.port,
                source_labels: &m.source_labels,
                source_namespace: m.source_namespace.as_deref(),
                gateways: &m.gateways,
            })
            .collect();
        out.extend(compile_stream_rule(
            snap,
            res,
            source,
            hosts,
            format!("tls[{i}]"),
            matches,
            &r.route,
            scope,
        ));
    }
    out
}

/// A VirtualService's `tcp` rules for this proxy (see [`tls_stream_rules`] for `with_subnets`).
fn tcp_stream_rules(
    snap: &mut Snapshot,
    res: &Resource,
    source: &str,
    hosts: &[Arc<str>],
    vs: &networking::VirtualService,
    scope: Scope<'_>,
    with_subnets: bool,
) -> Vec<StreamRule> {
    let mut out = Vec::new();
    for (i, r) in vs.tcp.iter().enumerate() {
        let matches = r
            .matches
            .iter()
            .map(|m| L4Match {
                sni_hosts: &[],
                destination_subnets: if with_subnets {
                    &m.destination_subnets
                } else {
                    &[]
                },
                port: m.port,
                source_labels: &m.source_labels,
                source_namespace: m.source_namespace.as_deref(),
                gateways: &m.gateways,
            })
            .collect();
        out.extend(compile_stream_rule(
            snap,
            res,
            source,
            hosts,
            format!("tcp[{i}]"),
            matches,
            &r.route,
            scope,
        ));
    }
    out
}

/// The fields TLS and TCP match blocks share.
struct L4Match<'a> {
    sni_hosts: &'a [String],
    destination_subnets: &'a [String],
    port: u32,
    source_labels: &'a Labels,
    source_namespace: Option<&'a str>,
    gateways: &'a [String],
}

/// Compiles a `tls` or `tcp` rule; `None` when every match block is for other proxies. A TCP rule
/// without match blocks matches every connection.
#[allow(clippy::too_many_arguments)]
fn compile_stream_rule(
    snap: &mut Snapshot,
    res: &Resource,
    vs_source: &str,
    hosts: &[Arc<str>],
    index: String,
    matches: Vec<L4Match<'_>>,
    route: &[networking::RouteDestination],
    scope: Scope<'_>,
) -> Option<StreamRule> {
    let had_matches = !matches.is_empty();
    let compiled: Vec<StreamMatch> = matches
        .into_iter()
        .filter(|m| scope.keeps(snap, m.gateways, m.source_labels, m.source_namespace))
        .map(|m| StreamMatch {
            sni_hosts: m
                .sni_hosts
                .iter()
                .map(|s| Arc::from(s.to_ascii_lowercase()))
                .collect(),
            destination_subnets: m
                .destination_subnets
                .iter()
                .filter_map(|s| registry::parse_net(s))
                .collect(),
            port: port_u16(m.port),
        })
        .collect();
    let compiled = match (had_matches, compiled.is_empty()) {
        (true, true) => return None,
        (false, _) => vec![StreamMatch::default()],
        (true, false) => compiled,
    };
    let targets = route
        .iter()
        .enumerate()
        .map(|(j, d)| {
            let field = format!("spec.{index}.route[{j}].destination");
            stream_target(snap, res, &field, &d.destination, d.weight)
        })
        .collect();
    Some(StreamRule {
        source: format!("{vs_source} {index}").into(),
        vs_hosts: hosts.to_vec(),
        matches: compiled,
        targets,
    })
}

fn port_u16(p: u32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

fn applies_to_proxy(snap: &Snapshot, source_labels: &Labels, source_ns: Option<&str>) -> bool {
    labels_subset(source_labels, &snap.proxy.labels)
        && source_ns.is_none_or(|ns| ns.is_empty() || ns == snap.proxy.namespace)
}

/// Resolves a route destination to a cluster reference, as Istio's `GetDestinationCluster`: an
/// explicit port, else the service's only port, else the port the request arrived on.
///
/// References that cannot work are reported as warnings on `field` (the destination's path):
/// an unknown host, a subset no DestinationRule defines (503 NC), a subset that selects no
/// endpoint (503 UH).
fn cluster_ref(
    snap: &mut Snapshot,
    res: &Resource,
    field: &str,
    dest: &Destination,
) -> (ClusterRef, Option<(String, u16)>) {
    let host = host::resolve_short_name(dest.host_name(), &res.meta.namespace);
    let subset = dest.subset.as_deref().filter(|s| !s.is_empty());
    if crate::ingress::unresolved_port(res, dest) {
        let port = dest
            .port
            .as_ref()
            .and_then(|p| p.name.as_deref())
            .unwrap_or("");
        let name = format!("outbound|{port}|{}|{host}", subset.unwrap_or(""));
        return (ClusterRef::Missing(name.into()), None);
    }
    let explicit_port = dest.port.as_ref().and_then(|p| port_u16(p.number));
    let svc = snap
        .services_exact
        .get(host.as_str())
        .and_then(|v| v.first())
        .map(|i| snap.services[*i].clone())
        .or_else(|| snap.services.iter().find(|s| *s.hostname == *host).cloned());
    let port = explicit_port.or_else(|| {
        svc.as_ref()
            .filter(|s| s.ports.len() == 1)
            .map(|s| s.ports[0].number)
    });
    let Some(svc) = svc else {
        let name = Cluster::name_for(port.unwrap_or(0), subset, &host);
        snap.diagnostics.push(Diagnostic::at(
            res,
            Severity::Warning,
            format!("{field}.host"),
            references::unknown_host_message(&host),
        ));
        return (ClusterRef::Missing(name.into()), port.map(|p| (host, p)));
    };
    if let Some(subset) = subset {
        let clusters: Vec<&Arc<Cluster>> = svc
            .ports
            .iter()
            .filter_map(|p| {
                snap.clusters
                    .get(Cluster::name_for(p.number, Some(subset), &host).as_str())
            })
            .collect();
        let message = match clusters.first() {
            None => Some(references::undefined_subset_message(&host, subset)),
            Some(c) if matches!(c.upstream(), UpstreamAddress::Endpoints(e) if e.is_empty()) => {
                Some(references::empty_subset_message(&host, subset))
            }
            Some(_) => None,
        };
        if let Some(message) = message {
            snap.diagnostics.push(Diagnostic::at(
                res,
                Severity::Warning,
                format!("{field}.subset"),
                message,
            ));
        }
    }
    match port {
        Some(p) => {
            let name = Cluster::name_for(p, subset, &host);
            match snap.clusters.get(name.as_str()) {
                Some(c) => (ClusterRef::Found(c.clone()), Some((host, p))),
                None => (ClusterRef::Missing(name.into()), Some((host, p))),
            }
        }
        None => {
            let map = svc
                .ports
                .iter()
                .filter_map(|p| {
                    let name = Cluster::name_for(p.number, subset, &host);
                    snap.clusters
                        .get(name.as_str())
                        .map(|c| (p.number, c.clone()))
                })
                .collect();
            (ClusterRef::ByListenerPort(map, host.into()), None)
        }
    }
}

fn stream_target(
    snap: &mut Snapshot,
    res: &Resource,
    field: &str,
    dest: &Destination,
    weight: Option<i32>,
) -> WeightedTarget {
    let (cluster, _) = cluster_ref(snap, res, field, dest);
    WeightedTarget {
        cluster,
        weight: weight.map_or(100, |w| w.max(0) as u32),
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }
}

fn compile_match(m: &networking::HttpMatchRequest) -> RequestMatch {
    let hdrs = |map: &BTreeMap<String, networking::StringMatch>| {
        map.iter()
            .filter_map(|(k, v)| {
                let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?;
                Some((name, StrMatcher::compile(v)))
            })
            .collect()
    };
    RequestMatch {
        uri: m.uri.as_ref().and_then(StrMatcher::compile),
        ignore_uri_case: m.ignore_uri_case,
        scheme: m.scheme.as_ref().and_then(StrMatcher::compile),
        method: m.method.as_ref().and_then(StrMatcher::compile),
        authority: m.authority.as_ref().and_then(StrMatcher::compile),
        headers: hdrs(&m.headers),
        without_headers: hdrs(&m.without_headers),
        query_params: m
            .query_params
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), StrMatcher::compile(v)?)))
            .collect(),
        port: port_u16(m.port),
    }
}

fn percent(p: Option<&networking::Percent>) -> f64 {
    p.map_or(0.0, |p| p.value.clamp(0.0, 100.0))
}

fn compile_http_rule(
    snap: &mut Snapshot,
    res: &Resource,
    vs_source: &Arc<str>,
    index: usize,
    r: &HttpRoute,
    scope: Scope<'_>,
) -> Option<HttpRouteRule> {
    let mut matches = Vec::new();
    for m in &r.matches {
        if scope.keeps(
            snap,
            &m.gateways,
            &m.source_labels,
            m.source_namespace.as_deref(),
        ) {
            let mut compiled = compile_match(m);
            if scope.ingress_semantics() {
                // Ingress prefixes are element-wise (Envoy `path_separated_prefix`), `/` aside.
                if let Some(StrMatcher::Prefix(p)) = &compiled.uri {
                    if p != "/" {
                        let trimmed = p.trim_end_matches('/').to_string();
                        compiled.uri = Some(StrMatcher::PathSeparatedPrefix(trimmed));
                    }
                }
            }
            matches.push(compiled);
        }
    }
    if !r.matches.is_empty() && matches.is_empty() {
        // Every match block is for other proxies.
        return None;
    }
    let mut single = None;
    let action = if let Some(d) = &r.direct_response {
        let body: Arc<[u8]> = match &d.body {
            Some(b) => match (&b.string, &b.bytes) {
                (Some(s), _) => s.as_bytes().into(),
                (None, Some(b64)) => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap_or_default()
                        .into()
                }
                _ => Arc::from(&[][..]),
            },
            None => Arc::from(&[][..]),
        };
        RouteAction::DirectResponse {
            status: u16::try_from(d.status).unwrap_or(500),
            body,
        }
    } else if let Some(rd) = &r.redirect {
        let derive = rd.derive_port.as_deref().unwrap_or("");
        RouteAction::Redirect(Redirect {
            uri: rd.uri.clone(),
            prefix_rewrite: rd.prefix_rewrite.clone(),
            authority: rd.authority.clone(),
            scheme: rd.scheme.clone(),
            port: rd.port.and_then(port_u16),
            port_from_request: derive.eq_ignore_ascii_case("FROM_REQUEST_PORT"),
            port_from_protocol: derive.eq_ignore_ascii_case("FROM_PROTOCOL_DEFAULT"),
            code: rd
                .redirect_code
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(301),
        })
    } else {
        let mut targets = Vec::new();
        for (j, d) in r.route.iter().enumerate() {
            let field = format!("spec.http[{index}].route[{j}].destination");
            let (cluster, host_port) = cluster_ref(snap, res, &field, &d.destination);
            if r.route.len() == 1 {
                single = host_port;
            }
            let headers = d.headers.as_ref();
            targets.push(WeightedTarget {
                cluster,
                // A single destination gets everything whatever its weight says.
                weight: if r.route.len() == 1 {
                    100
                } else {
                    d.weight.unwrap_or(0).max(0) as u32
                },
                request_headers: HeaderOps::compile(headers.and_then(|h| h.request.as_ref())),
                response_headers: HeaderOps::compile(headers.and_then(|h| h.response.as_ref())),
            });
        }
        RouteAction::Forward(targets)
    };
    let retry = match &r.retries {
        None => RetryPolicy::default(),
        Some(rt) => RetryPolicy {
            attempts: rt.attempts.max(0) as u32,
            per_try_timeout: rt.per_try_timeout.map(|d| d.0),
            retry_on: RetryOn::parse(rt.retry_on.as_deref().unwrap_or(
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            )),
        },
    };
    let fault = r.fault.as_ref().map(|f| Fault {
        delay: f.delay.as_ref().and_then(|d| {
            let pct = d
                .percentage
                .as_ref()
                .map(|p| p.value.clamp(0.0, 100.0))
                .or(d.percent.map(|p| f64::from(p.clamp(0, 100))));
            Some((d.fixed_delay?.0, pct.unwrap_or(0.0)))
        }),
        abort: f.abort.as_ref().and_then(|a| {
            Some((
                u16::try_from(a.http_status?).ok()?,
                percent(a.percentage.as_ref()),
            ))
        }),
    });
    let mut mirrors = Vec::new();
    if let Some(m) = &r.mirror {
        let pct = r
            .mirror_percentage
            .as_ref()
            .map(|p| p.value.clamp(0.0, 100.0))
            .or(r.mirror_percent.map(|p| f64::from(p.min(100))))
            .unwrap_or(100.0);
        mirrors.push(Mirror {
            target: cluster_ref(snap, res, &format!("spec.http[{index}].mirror"), m).0,
            percent: pct,
        });
    }
    for (k, m) in r.mirrors.iter().enumerate() {
        let pct = m
            .percentage
            .as_ref()
            .map_or(100.0, |p| p.value.clamp(0.0, 100.0));
        mirrors.push(Mirror {
            target: cluster_ref(
                snap,
                res,
                &format!("spec.http[{index}].mirrors[{k}].destination"),
                &m.destination,
            )
            .0,
            percent: pct,
        });
    }
    let rewrite = r.rewrite.as_ref().map(|rw| Rewrite {
        uri: rw.uri.clone(),
        authority: rw.authority.clone(),
        uri_regex: rw.uri_regex_rewrite.as_ref().and_then(|rr| {
            Some((
                sluice_api::validate::bounded_regex(&rr.pattern).ok()?,
                rr.rewrite.clone(),
            ))
        }),
    });
    let headers = r.headers.as_ref();
    let operation = operation_for(
        matches.first(),
        single.as_ref().map(|(h, p)| (h.as_str(), *p)),
        &res.meta.name,
    );
    Some(HttpRouteRule {
        name: r.name.as_deref().map(Arc::from),
        source: format!("{vs_source} http[{index}]").into(),
        matches,
        action,
        timeout: r.timeout.map(|d| d.0).filter(|d| !d.is_zero()),
        retry,
        fault,
        mirrors,
        request_headers: HeaderOps::compile(headers.and_then(|h| h.request.as_ref())),
        response_headers: HeaderOps::compile(headers.and_then(|h| h.response.as_ref())),
        rewrite,
        operation,
    })
}

impl Snapshot {
    /// The most specific virtual host for `host` (lowercase, no port).
    fn vhost_for(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        self.vhosts_exact.get(host).or_else(|| {
            self.vhosts_wildcard
                .iter()
                .find(|v| host::matches(&v.domain, host))
        })
    }

    /// The FQDN a Host header names: itself when it is a known host, else the service or virtual
    /// host it is a short name or VIP of (`reviews` from the proxy's namespace, `reviews.ns`,
    /// `reviews.ns.svc`, `10.96.0.12`), else itself. No allocation.
    pub fn canonical_host<'s>(&'s self, host: &'s str) -> &'s str {
        if self.vhosts_exact.contains_key(host) || self.services_exact.contains_key(host) {
            return host;
        }
        self.host_aliases.get(host).map_or(host, |fqdn| fqdn)
    }

    /// The most specific service for `host` that declares `port`.
    pub fn service_for(&self, host: &str, port: u16) -> Option<(usize, &Arc<Service>)> {
        let exact = self
            .services_exact
            .get(host)
            .into_iter()
            .flatten()
            .find(|i| self.services[**i].port(port).is_some());
        let idx = exact.or_else(|| {
            self.services_wildcard.iter().find(|i| {
                let s = &self.services[**i];
                host::matches(&s.hostname, host) && s.port(port).is_some()
            })
        })?;
        Some((*idx, &self.services[*idx]))
    }

    /// Routes an HTTP request by Host/:authority (port ignored) and the port the client addressed.
    pub fn route_http<'a>(&'a self, req: &HttpRequestFacts<'_>) -> HttpDecision<'a> {
        let raw = host::strip_port(req.authority);
        let lowered;
        let host = if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = raw.to_ascii_lowercase();
            lowered.as_str()
        } else {
            raw
        };
        let host = self.canonical_host(host);
        let vhost = self.vhost_for(host);
        let service = self.service_for(host, req.port);
        // Envoy picks the most specific domain; a VirtualService wins a tie with its service.
        let use_vhost = match (vhost, service) {
            (Some(v), Some((_, s))) => {
                host::specificity(&v.domain, &s.hostname) != std::cmp::Ordering::Greater
            }
            (Some(_), None) => true,
            _ => false,
        };
        if let (true, Some(v)) = (use_vhost, vhost) {
            for rule in &v.rules {
                if let Some(i) = rule.matched(req) {
                    return HttpDecision::Route {
                        rule,
                        matched: rule.matches.get(i),
                        vhost: &v.domain,
                    };
                }
            }
            return HttpDecision::NoRoute { vhost: &v.domain };
        }
        if let Some((i, s)) = service {
            if let Some(rule) = self.default_routes.get(&(i, req.port)) {
                return HttpDecision::Route {
                    rule,
                    matched: None,
                    vhost: &s.hostname,
                };
            }
        }
        self.unknown_http()
    }

    fn unknown_http(&self) -> HttpDecision<'_> {
        match self.mesh.outbound_policy {
            OutboundPolicy::AllowAny => HttpDecision::Passthrough,
            OutboundPolicy::RegistryOnly => HttpDecision::Blocked,
        }
    }

    fn unknown_stream(&self) -> StreamDecision<'_> {
        match self.mesh.outbound_policy {
            OutboundPolicy::AllowAny => StreamDecision::Passthrough,
            OutboundPolicy::RegistryOnly => StreamDecision::Blocked,
        }
    }

    fn cluster_of(&self, svc: &Service, port: u16) -> Option<&Arc<Cluster>> {
        self.clusters
            .get(Cluster::name_for(port, None, &svc.hostname).as_str())
    }

    /// A service whose `addresses` contain `ip` and that declares `port`.
    fn service_by_address(&self, ip: IpAddr, port: u16) -> Option<&Arc<Service>> {
        self.services
            .iter()
            .find(|s| s.has_address(ip) && s.port(port).is_some())
    }

    /// Routes a TLS connection by SNI (when the client sent one) and destination.
    pub fn route_tls(&self, sni: Option<&str>, dst: SocketAddr) -> StreamDecision<'_> {
        let sni = sni.map(str::to_ascii_lowercase);
        if let Some(sni) = sni.as_deref() {
            for rule in &self.tls_rules {
                let hit = rule.matches.iter().any(|m| {
                    m.sni_hosts.iter().any(|p| host::matches(p, sni))
                        && m.port.is_none_or(|p| p == dst.port())
                        && (m.destination_subnets.is_empty()
                            || m.destination_subnets.iter().any(|n| n.contains(&dst.ip())))
                });
                if hit {
                    return StreamDecision::Rule(rule);
                }
            }
            if let Some((_, svc)) = self.service_for(sni, dst.port()) {
                let declared = svc.port(dst.port()).map(|p| p.protocol);
                if !declared.is_some_and(Protocol::is_http) {
                    if let Some(c) = self.cluster_of(svc, dst.port()) {
                        return StreamDecision::Cluster(c);
                    }
                }
            }
        }
        if let Some(svc) = self.service_by_address(dst.ip(), dst.port()) {
            if let Some(c) = self.cluster_of(svc, dst.port()) {
                return StreamDecision::Cluster(c);
            }
        }
        self.unknown_stream()
    }

    /// Routes an opaque TCP connection by destination address and port.
    pub fn route_tcp(&self, dst: SocketAddr) -> StreamDecision<'_> {
        for rule in &self.tcp_rules {
            let owns = rule.vs_hosts.iter().any(|h| {
                self.services.iter().any(|s| {
                    host::matches(h, &s.hostname)
                        && s.port(dst.port()).is_some()
                        && (s.addresses.is_empty() || s.has_address(dst.ip()))
                })
            });
            let hit = owns
                && rule.matches.iter().any(|m| {
                    m.port.is_none_or(|p| p == dst.port())
                        && (m.destination_subnets.is_empty()
                            || m.destination_subnets.iter().any(|n| n.contains(&dst.ip())))
                });
            if hit {
                return StreamDecision::Rule(rule);
            }
        }
        if let Some(svc) = self.service_by_address(dst.ip(), dst.port()) {
            if let Some(c) = self.cluster_of(svc, dst.port()) {
                return StreamDecision::Cluster(c);
            }
        }
        // A service without addresses owns its TCP port on every IP (Istio's 0.0.0.0:port listener).
        let by_port = self.services.iter().find(|s| {
            s.addresses.is_empty()
                && s.port(dst.port()).is_some_and(|p| {
                    !p.protocol.is_http() && !p.protocol.is_tls() && p.protocol != Protocol::Unknown
                })
        });
        if let Some(svc) = by_port {
            if let Some(c) = self.cluster_of(svc, dst.port()) {
                return StreamDecision::Cluster(c);
            }
        }
        self.unknown_stream()
    }

    /// The protocol declared for a destination, when declaration (not sniffing) decides it: a
    /// service that owns the address, or services without addresses that all declare the port as
    /// opaque TCP. Server-first protocols need this, since they send nothing to sniff.
    pub fn declared_protocol(&self, dst: SocketAddr) -> Option<Protocol> {
        if let Some(p) = self
            .service_by_address(dst.ip(), dst.port())
            .and_then(|s| s.port(dst.port()))
            .map(|p| p.protocol)
            .filter(|p| *p != Protocol::Unknown)
        {
            return Some(p);
        }
        let mut declared = self
            .services
            .iter()
            .filter(|s| s.addresses.is_empty())
            .filter_map(|s| s.port(dst.port()))
            .map(|p| p.protocol);
        let first = declared.next()?;
        let opaque = |p: Protocol| !p.is_http() && !p.is_tls() && p != Protocol::Unknown;
        (opaque(first) && declared.all(opaque)).then_some(Protocol::Tcp)
    }

    /// Gateway proxies: every port to listen on, with its servers.
    pub fn gateway_ports(&self) -> &[GatewayPort] {
        &self.gateway_ports
    }

    /// Gateway proxies: the server on `port` that handles a connection with this SNI (TLS): the
    /// server with the most specific host matching it; without SNI or without a match, the first
    /// server with host `*`, else the port's only server; `None` when the port has several
    /// servers and none fits (the handshake is refused).
    pub fn gateway_server(&self, port: u16, sni: Option<&str>) -> Option<&Arc<GatewayServer>> {
        let p = self.gateway_ports.iter().find(|p| p.number == port)?;
        if let Some(sni) = sni.filter(|s| !s.is_empty()) {
            let sni = sni.to_ascii_lowercase();
            let best = p
                .servers
                .iter()
                .filter_map(|s| s.best_host_for(&sni).map(|h| (h, s)))
                .min_by(|a, b| host::specificity(a.0, b.0));
            if let Some((_, s)) = best {
                return Some(s);
            }
        }
        p.servers
            .iter()
            .find(|s| s.hosts.iter().any(|h| &*h.host == "*"))
            .or_else(|| (p.servers.len() == 1).then(|| &p.servers[0]))
    }

    /// Gateway proxies: true if a plain HTTP request for `authority` on `port` must be answered
    /// with a 301 to https (`tls.httpsRedirect` on the server whose hosts cover it best; a host
    /// no server covers is not redirected). The gateway's data path and `explain` both ask this.
    pub fn gateway_https_redirect(&self, port: u16, authority: &str) -> bool {
        let host = host::strip_port(authority).to_ascii_lowercase();
        self.gateway_ports
            .iter()
            .find(|p| p.number == port)
            .is_some_and(|p| p.requires_https_redirect(&host))
    }

    /// Gateway proxies: routes an HTTP request that arrived on `port` (Host port ignored). Never
    /// Passthrough/Blocked: an unknown host or unmatched path is `NoRoute` (404 NR).
    pub fn route_gateway_http<'a>(
        &'a self,
        port: u16,
        req: &HttpRequestFacts<'_>,
    ) -> HttpDecision<'a> {
        let Some(routes) = self.gateway_routes.get(&port) else {
            return HttpDecision::NoRoute { vhost: "blackhole" };
        };
        let raw = host::strip_port(req.authority);
        let lowered;
        let host = if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = raw.to_ascii_lowercase();
            lowered.as_str()
        } else {
            raw
        };
        let Some(v) = routes.vhost_for(host) else {
            return HttpDecision::NoRoute {
                vhost: &routes.blackhole,
            };
        };
        for rule in &v.rules {
            if let Some(i) = rule.matched(req) {
                return HttpDecision::Route {
                    rule,
                    matched: rule.matches.get(i),
                    vhost: &v.domain,
                };
            }
        }
        HttpDecision::NoRoute { vhost: &v.domain }
    }

    /// Gateway proxies: the virtual hosts of `port`, most specific first, for the config dump.
    pub fn gateway_virtual_hosts(&self, port: u16) -> Vec<&Arc<VirtualHost>> {
        let Some(routes) = self.gateway_routes.get(&port) else {
            return Vec::new();
        };
        let mut v: Vec<&Arc<VirtualHost>> = routes.vhosts_exact.values().collect();
        v.sort_by(|a, b| a.domain.cmp(&b.domain));
        v.extend(routes.vhosts_wildcard.iter());
        v
    }

    /// Gateway proxies: routes a PASSTHROUGH TLS connection on `port` by SNI with VirtualService
    /// `tls` routes bound to the gateway; `Blocked` when nothing matches.
    pub fn route_gateway_tls(&self, port: u16, sni: Option<&str>) -> StreamDecision<'_> {
        let (Some(routes), Some(sni)) = (self.gateway_routes.get(&port), sni) else {
            return StreamDecision::Blocked;
        };
        let sni = sni.to_ascii_lowercase();
        let served = self
            .gateway_ports
            .iter()
            .filter(|p| p.number == port)
            .flat_map(|p| p.servers.iter())
            .any(|s| s.passes_tls_through() && s.covers_host(&sni));
        if !served {
            return StreamDecision::Blocked;
        }
        routes
            .tls_rules
            .iter()
            .find(|rule| {
                rule.matches.iter().any(|m| {
                    m.sni_hosts.iter().any(|p| host::matches(p, &sni))
                        && m.port.is_none_or(|p| p == port)
                })
            })
            .map_or(StreamDecision::Blocked, StreamDecision::Rule)
    }

    /// Gateway proxies: routes a TCP connection on `port` with VirtualService `tcp` routes bound
    /// to the gateway; `Blocked` when nothing matches.
    pub fn route_gateway_tcp(&self, port: u16) -> StreamDecision<'_> {
        self.gateway_routes
            .get(&port)
            .and_then(|routes| {
                routes.tcp_rules.iter().find(|rule| {
                    rule.matches
                        .iter()
                        .any(|m| m.port.is_none_or(|p| p == port))
                })
            })
            .map_or(StreamDecision::Blocked, StreamDecision::Rule)
    }

    /// The inbound mutual-TLS mode for the workload's `port` (PeerAuthentication).
    pub fn inbound_mtls(&self, port: u16) -> crate::security::MtlsMode {
        self.mtls_ports
            .get(&port)
            .copied()
            .unwrap_or(self.mtls_mode)
    }

    /// The workload at `ip`, if the registry knows one.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.get(&ip)
    }

    /// How inbound traffic to `port` (the workload's own port) is handled.
    pub fn inbound_port(&self, port: u16) -> InboundPort {
        self.inbound_ports
            .get(&port)
            .cloned()
            .unwrap_or_else(|| InboundPort {
                cluster_name: Arc::from(INBOUND_PASSTHROUGH_CLUSTER),
                protocol: Protocol::Unknown,
                service: None,
            })
    }

    /// All virtual hosts, for the config dump.
    pub fn virtual_hosts(&self) -> impl Iterator<Item = &Arc<VirtualHost>> {
        self.vhosts_exact
            .values()
            .chain(self.vhosts_wildcard.iter())
    }

    /// Counts resources compiled in, for logs.
    pub fn summary(&self) -> String {
        if self.proxy.kind == ProxyKind::Gateway {
            let ports: Vec<String> = self
                .gateway_ports
                .iter()
                .map(|p| {
                    let vhosts = self
                        .gateway_routes
                        .get(&p.number)
                        .map_or(0, |r| r.vhosts_exact.len() + r.vhosts_wildcard.len());
                    format!(
                        "{} ({} servers, {vhosts} virtual hosts)",
                        p.number,
                        p.servers.len()
                    )
                })
                .collect();
            return format!(
                "{} services, {} clusters, gateway ports: {}",
                self.services.len(),
                self.clusters.len(),
                if ports.is_empty() {
                    "none (no Gateway selects this proxy's labels)".to_string()
                } else {
                    ports.join(", ")
                }
            );
        }
        format!(
            "{} services, {} clusters, {} virtual hosts, {} tls rules, {} tcp rules, outbound policy {:?}{}",
            self.services.len(),
            self.clusters.len(),
            self.vhosts_exact.len() + self.vhosts_wildcard.len(),
            self.tls_rules.len(),
            self.tcp_rules.len(),
            self.mesh.outbound_policy,
            self.sidecar_scope
                .as_ref()
                .map_or(String::new(), |sc| format!(", scoped by {}", sc.source))
        )
    }
}

/// Re-exported so callers can sort resources for [`compile`].
pub fn creation_order(a: &Resource, b: &Resource) -> std::cmp::Ordering {
    a.meta
        .creation_timestamp
        .is_none()
        .cmp(&b.meta.creation_timestamp.is_none())
        .then_with(|| a.meta.creation_timestamp.cmp(&b.meta.creation_timestamp))
}
