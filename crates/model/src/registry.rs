//! The service registry: every destination host a proxy knows, from ServiceEntries and Kubernetes
//! Services, with ports, protocols, endpoints (ServiceEntry endpoints, WorkloadEntries selected by
//! a Service `selector` or a ServiceEntry `workloadSelector`, `Endpoints` objects) and visibility.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::host::CLUSTER_DOMAIN;
use sluice_api::kube::{EndpointSubset, IntOrString, ServiceSpec};
use sluice_api::networking::{self, Labels};
use sluice_api::{Kind, Resource, Spec};

/// Application protocol of a port, from its `protocol:` field or its name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Udp,
    /// Not declared: sniffed from the first bytes of each connection.
    Unknown,
}

impl Protocol {
    /// Parses a protocol name case-insensitively, as Istio's `protocol.Parse`.
    pub fn parse(s: &str) -> Protocol {
        match s.to_ascii_uppercase().as_str() {
            "HTTP" => Protocol::Http,
            "HTTP2" => Protocol::Http2,
            "GRPC" => Protocol::Grpc,
            "GRPC-WEB" => Protocol::GrpcWeb,
            "HTTPS" => Protocol::Https,
            "TLS" => Protocol::Tls,
            "TCP" => Protocol::Tcp,
            "MONGO" => Protocol::Mongo,
            "UDP" => Protocol::Udp,
            _ => Protocol::Unknown,
        }
    }

    /// The protocol of a port: the explicit `protocol` if given, else the name's prefix before `-`
    /// (`http-web` → HTTP), else unknown.
    pub fn of_port(protocol: Option<&str>, name: &str) -> Protocol {
        match protocol {
            Some(p) if !p.is_empty() => Protocol::parse(p),
            _ => Protocol::parse(name.split('-').next().unwrap_or("")),
        }
    }

    /// True for protocols routed as HTTP requests.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }

    /// True for protocols routed by SNI without terminating TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
}

/// How a service's endpoints are found (`ServiceEntry.resolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Resolution {
    /// Forward to the address the client connected to.
    None,
    /// The listed endpoint IPs.
    Static,
    /// Resolve the endpoints' names, or the host itself when there are none.
    Dns,
    /// As DNS, but only the first address is used for new connections.
    DnsRoundRobin,
    /// Resolve the request's Host/SNI at request time (wildcard hosts).
    DynamicDns,
}

impl Resolution {
    fn parse(s: Option<&str>) -> Resolution {
        match s.unwrap_or("NONE").to_ascii_uppercase().as_str() {
            "STATIC" => Resolution::Static,
            "DNS" => Resolution::Dns,
            "DNS_ROUND_ROBIN" => Resolution::DnsRoundRobin,
            "DYNAMIC_DNS" => Resolution::DynamicDns,
            _ => Resolution::None,
        }
    }
}

/// Which namespaces may see a resource (`exportTo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ExportTo {
    All,
    /// Only these namespaces (`.` already replaced by the owner's namespace); empty = nobody (`~`).
    Namespaces(Vec<String>),
}

impl ExportTo {
    /// Reads an `exportTo` list written in namespace `owner_ns`; empty means the mesh default `*`.
    pub fn parse(list: &[String], owner_ns: &str) -> ExportTo {
        if list.is_empty() || list.iter().any(|n| n == "*") {
            return ExportTo::All;
        }
        ExportTo::Namespaces(
            list.iter()
                .filter(|n| n.as_str() != "~")
                .map(|n| {
                    if n == "." {
                        owner_ns.to_string()
                    } else {
                        n.clone()
                    }
                })
                .collect(),
        )
    }

    /// True if a proxy in namespace `ns` may use the resource.
    pub fn visible_to(&self, ns: &str) -> bool {
        match self {
            ExportTo::All => true,
            ExportTo::Namespaces(list) => list.iter().any(|n| n == ns),
        }
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePort {
    pub number: u16,
    pub name: Arc<str>,
    pub protocol: Protocol,
    /// The endpoint port when it differs from `number`.
    pub target_port: Option<u16>,
}

/// Address of an endpoint: an IP, or a name resolved by DNS at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum EndpointAddress {
    Ip(IpAddr),
    Name(Arc<str>),
}

impl std::fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointAddress::Ip(ip) => write!(f, "{ip}"),
            EndpointAddress::Name(n) => f.write_str(n),
        }
    }
}

/// One endpoint of a service (a ServiceEntry endpoint or a WorkloadEntry).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub address: EndpointAddress,
    /// Port name → endpoint port, overriding the service's target port.
    pub ports: BTreeMap<String, u16>,
    pub labels: Labels,
    pub weight: u32,
    /// `region/zone/subzone`: the WorkloadEntry's `locality`, else its topology labels
    /// (`istio-locality`, `topology.kubernetes.io/region|zone`, `topology.istio.io/subzone`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<Arc<str>>,
}

/// A destination host with its ports and endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub hostname: Arc<str>,
    pub namespace: Arc<str>,
    /// `ServiceEntry ns/name`, for explanations and the config dump.
    pub source: Arc<str>,
    pub addresses: Vec<IpNet>,
    pub ports: Vec<ServicePort>,
    pub mesh_external: bool,
    pub resolution: Resolution,
    /// Shared by every host of a ServiceEntry (and by the clusters that take them all): a
    /// ServiceEntry with many hosts and many endpoints must not copy one list per host.
    pub endpoints: Arc<[Endpoint]>,
    pub export_to: ExportTo,
}

impl Service {
    /// The declared port `number`, if any.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// True if `ip` is one of the service's addresses.
    pub fn has_address(&self, ip: IpAddr) -> bool {
        self.addresses.iter().any(|net| net.contains(&ip))
    }
}

/// Builds the services declared by the given resources, oldest first: one per ServiceEntry host
/// (as Istio does) and one per Kubernetes Service (`name.ns.svc.cluster.local`).
///
/// A ServiceEntry host equal to a Kubernetes Service's host only decorates that Service in
/// Istio; here the Service is kept and the ServiceEntry's copy of the host is dropped.
pub fn services_from(resources: &[Resource]) -> Vec<Arc<Service>> {
    let workloads = workload_entries(resources);
    let index = Index::new(resources, &workloads);
    let mut out = Vec::new();
    let mut kube_hosts = HashSet::new();
    for res in resources {
        match &res.spec {
            Spec::ServiceEntry(se) if res.kind == Kind::ServiceEntry => {
                out.extend(from_service_entry(res, se, &index));
            }
            Spec::Service(spec) if res.kind == Kind::Service => {
                let svc = from_kube_service(res, spec, &index);
                kube_hosts.insert(svc.hostname.clone());
                out.push(svc);
            }
            _ => {}
        }
    }
    if !kube_hosts.is_empty() {
        out.retain(|s| {
            !(s.source.starts_with("ServiceEntry ") && kube_hosts.contains(&s.hostname))
        });
    }
    out
}

/// What building each service looks up, indexed once: scanning every resource for every
/// service made the registry quadratic in the number of resources.
struct Index<'r, 'w> {
    /// WorkloadEntries by namespace, in resource order.
    workloads_by_namespace: HashMap<&'r str, Vec<&'w WorkloadEntryRef<'r>>>,
    /// (namespace, label, value) → positions in `workloads_by_namespace`, so a selector looks
    /// only at the workloads with its rarest label.
    workloads_by_label: HashMap<(&'r str, &'w str, &'w str), Vec<usize>>,
    /// Labels of the first WorkloadEntry with each IP.
    labels_by_ip: HashMap<IpAddr, &'w Labels>,
    /// `Endpoints` objects by (namespace, name), in resource order.
    endpoints: HashMap<(&'r str, &'r str), Vec<&'r [EndpointSubset]>>,
}

impl<'r, 'w> Index<'r, 'w> {
    fn new(resources: &'r [Resource], workloads: &'w [WorkloadEntryRef<'r>]) -> Self {
        let mut workloads_by_namespace: HashMap<&str, Vec<&WorkloadEntryRef<'_>>> = HashMap::new();
        let mut workloads_by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        let mut labels_by_ip = HashMap::new();
        for w in workloads {
            let ns = w.resource.meta.namespace.as_str();
            let in_namespace = workloads_by_namespace.entry(ns).or_default();
            for (k, v) in &w.labels {
                workloads_by_label
                    .entry((ns, k, v))
                    .or_default()
                    .push(in_namespace.len());
            }
            in_namespace.push(w);
            if let Some(ip) = w.ip() {
                labels_by_ip.entry(ip).or_insert(&w.labels);
            }
        }
        let mut endpoints: HashMap<(&str, &str), Vec<&[EndpointSubset]>> = HashMap::new();
        for r in resources {
            if let Spec::Endpoints(subsets) = &r.spec {
                endpoints
                    .entry((r.meta.namespace.as_str(), r.meta.name.as_str()))
                    .or_default()
                    .push(subsets);
            }
        }
        Index {
            workloads_by_namespace,
            workloads_by_label,
            labels_by_ip,
            endpoints,
        }
    }

    fn workloads_in(&self, namespace: &str) -> &[&'w WorkloadEntryRef<'r>] {
        self.workloads_by_namespace
            .get(namespace)
            .map_or(&[], Vec::as_slice)
    }

    /// The WorkloadEntries of `namespace` whose labels include all of `selector`, in resource
    /// order.
    fn workloads_selected(
        &self,
        namespace: &str,
        selector: &Labels,
    ) -> Vec<&'w WorkloadEntryRef<'r>> {
        let all = self.workloads_in(namespace);
        let mut rarest: Option<&[usize]> = None;
        for (k, v) in selector {
            match self
                .workloads_by_label
                .get(&(namespace, k.as_str(), v.as_str()))
            {
                None => return Vec::new(),
                Some(p) if rarest.is_none_or(|r| p.len() < r.len()) => rarest = Some(p),
                Some(_) => {}
            }
        }
        match rarest {
            None => all.to_vec(),
            Some(candidates) => candidates
                .iter()
                .map(|&i| all[i])
                .filter(|w| labels_subset(selector, &w.labels))
                .collect(),
        }
    }
}

/// A standalone WorkloadEntry with its effective labels (metadata labels, overridden by the
/// spec's), as Service and ServiceEntry selectors see it.
#[derive(Debug, Clone)]
pub struct WorkloadEntryRef<'a> {
    pub resource: &'a Resource,
    pub entry: &'a networking::WorkloadEntry,
    pub labels: Labels,
}

impl WorkloadEntryRef<'_> {
    /// The entry's address as an IP, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.entry.address.parse().ok()
    }
}

/// Every standalone WorkloadEntry, in resource order.
pub fn workload_entries(resources: &[Resource]) -> Vec<WorkloadEntryRef<'_>> {
    resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::WorkloadEntry(we) => {
                let mut labels = r.meta.labels.clone();
                labels.extend(we.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                Some(WorkloadEntryRef {
                    resource: r,
                    entry: we,
                    labels,
                })
            }
            _ => None,
        })
        .collect()
}

/// True if every label of `selector` is in `labels` (an empty selector selects everything).
pub fn labels_subset(selector: &Labels, labels: &Labels) -> bool {
    crate::work_count(1);
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn endpoint_address(address: &str) -> EndpointAddress {
    match address.parse::<IpAddr>() {
        Ok(ip) => EndpointAddress::Ip(ip),
        Err(_) => EndpointAddress::Name(address.into()),
    }
}

fn u16_ports(ports: &BTreeMap<String, u32>) -> BTreeMap<String, u16> {
    ports
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), u16::try_from(*v).ok().filter(|p| *p != 0)?)))
        .collect()
}

fn endpoint_from_entry(we: &networking::WorkloadEntry, labels: Labels) -> Endpoint {
    Endpoint {
        address: endpoint_address(&we.address),
        ports: u16_ports(&we.ports),
        locality: we
            .locality
            .as_deref()
            .filter(|l| !l.is_empty())
            .map(Arc::from)
            .or_else(|| crate::policy::Locality::label_string(&labels)),
        labels,
        weight: we.weight.unwrap_or(1).max(1),
    }
}

fn from_service_entry(
    res: &Resource,
    se: &networking::ServiceEntry,
    index: &Index<'_, '_>,
) -> Vec<Arc<Service>> {
    let ns: Arc<str> = res.meta.namespace.as_str().into();
    let source: Arc<str> = format!("ServiceEntry {}", res.key()).into();
    let addresses: Vec<IpNet> = se.addresses.iter().filter_map(|a| parse_net(a)).collect();
    let ports: Vec<ServicePort> = se
        .ports
        .iter()
        .filter_map(|p| {
            Some(ServicePort {
                number: u16::try_from(p.number).ok()?,
                name: p.name.as_str().into(),
                protocol: Protocol::of_port(p.protocol.as_deref(), &p.name),
                target_port: p
                    .target_port
                    .and_then(|t| u16::try_from(t).ok())
                    .filter(|t| *t != 0),
            })
        })
        .collect();
    let mut endpoints: Vec<Endpoint> = se
        .endpoints
        .iter()
        .map(|we| endpoint_from_entry(we, we.labels.clone()))
        .collect();
    if let Some(sel) = &se.workload_selector {
        // WorkloadEntries of the same namespace; their `ports` are keyed by the SE port name.
        endpoints.extend(
            index
                .workloads_selected(&res.meta.namespace, &sel.labels)
                .into_iter()
                .map(|w| endpoint_from_entry(w.entry, w.labels.clone())),
        );
    }
    let endpoints: Arc<[Endpoint]> = endpoints.into();
    let export_to = ExportTo::parse(&se.export_to, &res.meta.namespace);
    se.hosts
        .iter()
        .map(|h| {
            Arc::new(Service {
                hostname: h.to_ascii_lowercase().into(),
                namespace: ns.clone(),
                source: source.clone(),
                addresses: addresses.clone(),
                ports: ports.clone(),
                mesh_external: !se
                    .location
                    .as_deref()
                    .is_some_and(|l| l.eq_ignore_ascii_case("MESH_INTERNAL")),
                resolution: Resolution::parse(se.resolution.as_deref()),
                endpoints: endpoints.clone(),
                export_to: export_to.clone(),
            })
        })
        .collect()
}

/// The protocol of a Kubernetes Service port: `appProtocol`, else the name's prefix
/// (`http-web` → HTTP, `grpc-web` → gRPC-Web), else unknown (sniffed).
pub fn kube_port_protocol(app_protocol: Option<&str>, name: &str) -> Protocol {
    if let Some(ap) = app_protocol.filter(|a| !a.is_empty()) {
        let p = match ap.to_ascii_lowercase().as_str() {
            "kubernetes.io/h2c" => Protocol::Http2,
            "kubernetes.io/ws" => Protocol::Http,
            "kubernetes.io/wss" => Protocol::Https,
            _ => Protocol::parse(ap),
        };
        if p != Protocol::Unknown {
            return p;
        }
    }
    let lower = name.to_ascii_lowercase();
    if lower == "grpc-web" || lower.starts_with("grpc-web-") {
        return Protocol::GrpcWeb;
    }
    Protocol::of_port(None, &lower)
}

/// A Service port's `targetPort`: a number, or the name of a container/endpoint port.
enum TargetPort {
    Number(u16),
    Name(String),
    Unset,
}

fn target_port(tp: Option<&IntOrString>) -> TargetPort {
    match tp {
        Some(IntOrString::Int(n)) => u16::try_from(*n)
            .ok()
            .filter(|n| *n != 0)
            .map_or(TargetPort::Unset, TargetPort::Number),
        Some(IntOrString::String(s)) if !s.is_empty() => match s.parse::<u16>() {
            Ok(n) if n != 0 => TargetPort::Number(n),
            _ => TargetPort::Name(s.clone()),
        },
        _ => TargetPort::Unset,
    }
}

fn from_kube_service(res: &Resource, spec: &ServiceSpec, index: &Index<'_, '_>) -> Arc<Service> {
    let ns = res.meta.namespace.as_str();
    let name = res.meta.name.as_str();
    let external_name = spec
        .service_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("ExternalName"))
        .then(|| spec.external_name.as_deref().unwrap_or(""))
        .filter(|n| !n.is_empty());
    let mut addresses: Vec<IpNet> = Vec::new();
    if external_name.is_none() {
        let mut seen = HashSet::new();
        for ip in spec.cluster_ip.iter().chain(spec.cluster_ips.iter()) {
            if let Ok(ip) = ip.trim().parse::<IpAddr>() {
                let net = IpNet::from(ip);
                if seen.insert(net) {
                    addresses.push(net);
                }
            }
        }
    }
    let headless = spec
        .cluster_ip
        .iter()
        .chain(spec.cluster_ips.iter())
        .any(|ip| ip.eq_ignore_ascii_case("None"));
    // (service port, named targetPort) for ports whose target is resolved per endpoint.
    let mut named_targets: Vec<(Arc<str>, String)> = Vec::new();
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .filter(|p| {
            p.protocol
                .as_deref()
                .is_none_or(|proto| proto.eq_ignore_ascii_case("TCP"))
        })
        .filter_map(|p| {
            let port_name: Arc<str> = p.name.as_deref().unwrap_or("").into();
            let target = match target_port(p.target_port.as_ref()) {
                TargetPort::Number(n) => Some(n),
                TargetPort::Name(t) => {
                    named_targets.push((port_name.clone(), t));
                    None
                }
                TargetPort::Unset => None,
            };
            Some(ServicePort {
                number: u16::try_from(p.port).ok().filter(|n| *n != 0)?,
                protocol: kube_port_protocol(p.app_protocol.as_deref(), &port_name),
                name: port_name,
                target_port: target,
            })
        })
        .collect();
    // The endpoint port of each service port that has a named target, looked up in `lookup`
    // by the target's name and then by the service port's name.
    let named_targets: HashMap<Arc<str>, String> = named_targets.into_iter().rev().collect();
    let resolve = |lookup: &dyn Fn(&str) -> Option<u16>| -> BTreeMap<String, u16> {
        ports
            .iter()
            .filter_map(|sp| {
                let target = named_targets.get(&sp.name).map(String::as_str);
                let found = target
                    .and_then(lookup)
                    .or_else(|| (!sp.name.is_empty()).then(|| lookup(&sp.name)).flatten())?;
                Some((sp.name.to_string(), found))
            })
            .collect()
    };

    let mut endpoints: Vec<Endpoint> = Vec::new();
    let resolution = if let Some(ext) = external_name {
        endpoints.push(Endpoint {
            address: EndpointAddress::Name(ext.to_ascii_lowercase().into()),
            ports: BTreeMap::new(),
            labels: Labels::new(),
            weight: 1,
            locality: None,
        });
        Resolution::Dns
    } else {
        let mut seen_ips: HashSet<IpAddr> = HashSet::new();
        if !spec.selector.is_empty() {
            for w in index.workloads_selected(ns, &spec.selector) {
                let mut ep = endpoint_from_entry(w.entry, w.labels.clone());
                let we_ports = &ep.ports;
                let resolved = resolve(&|n: &str| we_ports.get(n).copied());
                ep.ports.extend(resolved);
                if let EndpointAddress::Ip(ip) = ep.address {
                    seen_ips.insert(ip);
                }
                endpoints.push(ep);
            }
        }
        let objects = index
            .endpoints
            .get(&(ns, name))
            .map_or(&[][..], Vec::as_slice);
        for subset in objects.iter().flat_map(|subsets| subsets.iter()) {
            let single = (subset.ports.len() == 1).then(|| &subset.ports[0]);
            let mut named: HashMap<&str, Option<u16>> = HashMap::new();
            for p in &subset.ports {
                named
                    .entry(p.name.as_deref().unwrap_or(""))
                    .or_insert_with(|| u16::try_from(p.port).ok());
            }
            let by_name = |n: &str| named.get(n).copied().flatten();
            let mut port_map = resolve(&by_name);
            for sp in &ports {
                if port_map.contains_key(sp.name.as_ref()) {
                    continue;
                }
                let p = by_name(&sp.name).or_else(|| {
                    single
                        .filter(|_| ports.len() == 1)
                        .and_then(|p| u16::try_from(p.port).ok())
                });
                if let Some(p) = p.filter(|p| *p != 0) {
                    port_map.insert(sp.name.to_string(), p);
                }
            }
            for addr in &subset.addresses {
                let Ok(ip) = addr.ip.parse::<IpAddr>() else {
                    continue;
                };
                if !seen_ips.insert(ip) {
                    continue;
                }
                let labels = index
                    .labels_by_ip
                    .get(&ip)
                    .map(|l| (*l).clone())
                    .unwrap_or_default();
                endpoints.push(Endpoint {
                    address: EndpointAddress::Ip(ip),
                    ports: port_map.clone(),
                    locality: crate::policy::Locality::label_string(&labels),
                    labels,
                    weight: 1,
                });
            }
        }
        if headless && addresses.is_empty() {
            Resolution::None
        } else {
            Resolution::Static
        }
    };
    let export_to = service_export_to(res, ns);
    Arc::new(Service {
        hostname: format!("{name}.{ns}.{CLUSTER_DOMAIN}")
            .to_ascii_lowercase()
            .into(),
        namespace: ns.into(),
        source: format!("Service {}", res.key()).into(),
        addresses,
        ports,
        mesh_external: false,
        resolution,
        endpoints: endpoints.into(),
        export_to,
    })
}

/// Annotation that sets a Kubernetes Service's visibility, as `exportTo` does for Istio kinds.
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// A Kubernetes Service's visibility from its annotation (everyone without one).
fn service_export_to(res: &Resource, ns: &str) -> ExportTo {
    match res.meta.annotations.get(EXPORT_TO_ANNOTATION) {
        Some(list) => {
            let list: Vec<String> = list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            ExportTo::parse(&list, ns)
        }
        None => ExportTo::All,
    }
}

/// Which proxies may use `res`, for the kinds whose visibility Istio scopes (`exportTo` of
/// ServiceEntry, VirtualService and DestinationRule; a Service's exportTo annotation); `None`
/// for the others, which every proxy receives. A control plane sends a resource only to the
/// namespaces it is visible to: the proxies of other namespaces would ignore it anyway
/// (the compile applies the same rule).
pub fn visibility(res: &Resource) -> Option<ExportTo> {
    let ns = &res.meta.namespace;
    match &res.spec {
        Spec::ServiceEntry(se) => Some(ExportTo::parse(&se.export_to, ns)),
        Spec::VirtualService(vs) => Some(ExportTo::parse(&vs.export_to, ns)),
        Spec::DestinationRule(dr) => Some(ExportTo::parse(&dr.export_to, ns)),
        Spec::Service(_) => Some(service_export_to(res, ns)),
        _ => None,
    }
}

/// Parses `1.2.3.4` or `1.2.3.0/24`.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}
