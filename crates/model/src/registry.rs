//! The service registry: every destination host a proxy knows, from ServiceEntries (and, in later
//! releases, Kubernetes Services and WorkloadEntries), with ports, protocols, endpoints and visibility.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;
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
    pub endpoints: Vec<Endpoint>,
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

/// Builds the services declared by the given resources (one per ServiceEntry host, as Istio does).
pub fn services_from(resources: &[Resource]) -> Vec<Arc<Service>> {
    let mut out = Vec::new();
    for res in resources {
        if let (Kind::ServiceEntry, Spec::ServiceEntry(se)) = (res.kind, &res.spec) {
            out.extend(from_service_entry(res, se));
        }
    }
    out
}

fn from_service_entry(res: &Resource, se: &networking::ServiceEntry) -> Vec<Arc<Service>> {
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
    let endpoints: Vec<Endpoint> = se
        .endpoints
        .iter()
        .map(|we| Endpoint {
            address: match we.address.parse::<IpAddr>() {
                Ok(ip) => EndpointAddress::Ip(ip),
                Err(_) => EndpointAddress::Name(we.address.as_str().into()),
            },
            ports: we
                .ports
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), u16::try_from(*v).ok()?)))
                .collect(),
            labels: we.labels.clone(),
            weight: we.weight.unwrap_or(1).max(1),
        })
        .collect();
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

/// Parses `1.2.3.4` or `1.2.3.0/24`.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}
