//! Gateways and the VirtualServices bound to them: unknown `gateways` entries (IST0101
//! `gateway`), selectors that pick no workload (IST0101 `selector`), missing or unusable
//! `credentialName` Secrets (IST0101 `credentialName`, IST0161), VirtualService hosts no server
//! of the Gateway admits (IST0132), Gateways that claim the same selector, port and hosts
//! (IST0145), and server ports the gateway workload's Service does not expose (IST0162).
//!
//! A Gateway's workload is the Pods its selector picks ([`super::workloads`]), in any
//! namespace: their namespace is where its `credentialName` Secrets are, and the Services of
//! that namespace that select them expose its ports. A VirtualService may also name a Gateway
//! API Gateway (`gateway.networking.k8s.io`), whose listeners' hostnames admit its hosts.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sluice_api::kube::{IntOrString, KubernetesGatewaySpec, SecretData, ServiceSpec};
use sluice_api::networking::{Gateway, Labels};
use sluice_api::{Resource, Spec};

use super::pem::certificate_problem;
use super::workloads::{
    default_ingress_labels, same_workload, standing_services, Pod, Pods, DEFAULT_INGRESS_PORTS,
    DEFAULT_INGRESS_SERVICE,
};
use super::{
    go_list, selector_not_found, selector_string, Message, CONFLICTING_GATEWAYS,
    GATEWAY_PORT_NOT_DEFINED_ON_SERVICE, INVALID_GATEWAY_CREDENTIAL, REFERENCED_RESOURCE_NOT_FOUND,
    VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY,
};
use crate::gateway::{credential_secret, resolve_gateway_name, GatewayHost, Secrets};
use crate::host::{self, HostIndex};
use crate::references::DEFAULT_GATEWAY_NAMESPACE;
use crate::registry::labels_subset;

/// Gateway API Gateways by `ns/name`.
type KubernetesGateways<'a> = HashMap<String, &'a KubernetesGatewaySpec>;

pub(super) fn check(resources: &[Resource], pods: &Pods<'_>, out: &mut Vec<Message>) {
    let gateways: BTreeMap<String, (&Resource, &Gateway)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Gateway(gw) => Some((r.key(), (r, gw))),
            _ => None,
        })
        .collect();
    let kubernetes_gateways: KubernetesGateways<'_> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::KubernetesGateway(gw) => Some((r.key(), gw)),
            _ => None,
        })
        .collect();
    virtual_service_gateways(resources, &gateways, &kubernetes_gateways, out);
    let secrets = Secrets::new(resources);
    let default_labels = default_ingress_labels();
    let services = KubeServices::new(resources);
    for (res, gw) in gateways.values() {
        let Some(workload) = workload(resources, pods, &services, &default_labels, gw) else {
            out.push(selector_not_found(res, "spec.selector", &gw.selector));
            continue;
        };
        credentials(&secrets, res, gw, workload.namespace, out);
        service_ports(res, gw, &workload.ports, out);
    }
    conflicts(&gateways, pods, out);
}

/// IST0101 `gateway` and IST0132.
fn virtual_service_gateways(
    resources: &[Resource],
    gateways: &BTreeMap<String, (&Resource, &Gateway)>,
    kubernetes_gateways: &KubernetesGateways<'_>,
    out: &mut Vec<Message>,
) {
    let mut server_hosts: HashMap<String, GatewayHostIndex> = HashMap::new();
    for res in resources {
        let Spec::VirtualService(vs) = &res.spec else {
            continue;
        };
        let ns = res.meta.namespace.as_str();
        let mut entries: Vec<(String, &String)> = vs
            .gateways
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("spec.gateways[{i}]"), g))
            .collect();
        for (i, r) in vs.http.iter().enumerate() {
            for (j, m) in r.matches.iter().enumerate() {
                for (k, g) in m.gateways.iter().enumerate() {
                    entries.push((format!("spec.http[{i}].match[{j}].gateways[{k}]"), g));
                }
            }
        }
        let mut seen = BTreeSet::new();
        for (field, written) in entries {
            // A Gateway the control plane makes of a Kubernetes Gateway: istioctl reports it as
            // IST0166, which sluice does not claim.
            if is_internal_gateway_reference(written) {
                continue;
            }
            let Some(name) = resolve_gateway_name(written, ns) else {
                continue;
            };
            let gw = gateways.get(&name).map(|(_, gw)| *gw);
            let kubernetes_gw = gw
                .is_none()
                .then(|| kubernetes_gateways.get(&name).copied())
                .flatten();
            if gw.is_none() && kubernetes_gw.is_none() {
                out.push(Message::at(
                    &REFERENCED_RESOURCE_NOT_FOUND,
                    res,
                    &field,
                    format!("Referenced gateway not found: {written:?}"),
                ));
            }
            if !field.starts_with("spec.gateways") || !seen.insert(name.clone()) {
                continue;
            }
            // A Gateway that does not exist admits no host either (Istio reports both).
            let admitted = match (gw, kubernetes_gw) {
                (Some(gw), _) => {
                    let server_hosts = server_hosts
                        .entry(name.clone())
                        .or_insert_with(|| GatewayHostIndex::new(&name, gw));
                    vs.hosts.iter().any(|h| server_hosts.admit(h, ns))
                }
                (None, Some(gw)) => listeners_admit(gw, &vs.hosts),
                (None, None) => false,
            };
            if !admitted {
                out.push(Message::at(
                    &VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY,
                    res,
                    &field,
                    format!(
                        "one or more host {} defined in VirtualService {} not found in Gateway {name}.",
                        go_list(&vs.hosts),
                        res.key()
                    ),
                ));
            }
        }
    }
}

/// True when a listener of a Gateway API Gateway admits one of `hosts`, as Istio's analyzer
/// decides it: a listener without a hostname admits every host, else its hostname must
/// overlap one (`namespace/` prefixes and the routes' own hostnames are not looked at).
fn listeners_admit(gw: &KubernetesGatewaySpec, hosts: &[String]) -> bool {
    gw.listeners.iter().any(|l| match l.hostname.as_deref() {
        None | Some("") => true,
        Some(name) => hosts.iter().any(|h| host::intersects(name, h)),
    })
}

/// The server hosts of one Gateway, indexed: those open to every namespace, and those of each
/// namespace (`ns/host`). Comparing each VirtualService host with every server host made a
/// Gateway with thousands of servers quadratic.
struct GatewayHostIndex {
    any_namespace: HostIndex<()>,
    by_namespace: HashMap<String, HostIndex<()>>,
}

impl GatewayHostIndex {
    fn new(name: &str, gw: &Gateway) -> Self {
        let gw_ns = name.split('/').next().unwrap_or_default();
        let mut hosts = GatewayHostIndex {
            any_namespace: HostIndex::default(),
            by_namespace: HashMap::new(),
        };
        for server in &gw.servers {
            let written: Vec<&str> = if server.hosts.is_empty() {
                vec!["*"]
            } else {
                server.hosts.iter().map(String::as_str).collect()
            };
            for h in written {
                let gh = GatewayHost::parse(h, gw_ns);
                let index = match &gh.namespace {
                    None => &mut hosts.any_namespace,
                    Some(ns) => hosts.by_namespace.entry(ns.to_string()).or_default(),
                };
                index.insert(&gh.host, ());
            }
        }
        hosts
    }

    /// True when a server host admits `vs_host` of a VirtualService in `vs_ns`
    /// ([`GatewayHost::admits`]).
    fn admit(&self, vs_host: &str, vs_ns: &str) -> bool {
        let h = vs_host.to_ascii_lowercase();
        self.any_namespace.any_intersecting(&h)
            || self
                .by_namespace
                .get(vs_ns)
                .is_some_and(|index| index.any_intersecting(&h))
    }
}

/// IST0101 `credentialName` (no such Secret) and IST0161 (the Secret holds no certificate and
/// key, or its certificate cannot be served: not PEM, not X.509, expired or not yet valid).
/// Secrets are looked up in `gw_ns`, the namespace of the gateway's workload.
fn credentials(
    secrets: &Secrets<'_>,
    res: &Resource,
    gw: &Gateway,
    gw_ns: &str,
    out: &mut Vec<Message>,
) {
    for (i, server) in gw.servers.iter().enumerate() {
        let Some(name) = server
            .tls
            .as_ref()
            .and_then(|t| t.credential_name.as_deref())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        let (ns, secret) = credential_secret(name, gw_ns);
        let field = format!("spec.servers[{i}].tls.credentialName");
        let Some(data) = secrets.get(ns, secret) else {
            out.push(Message::at(
                &REFERENCED_RESOURCE_NOT_FOUND,
                res,
                &field,
                format!("Referenced credentialName not found: {name:?}"),
            ));
            continue;
        };
        if !servable_credential(data) {
            out.push(Message::at(
                &INVALID_GATEWAY_CREDENTIAL,
                res,
                &field,
                format!(
                    "The credential referenced by the Gateway {} in namespace {gw_ns} is invalid, which can cause the traffic not to work as expected.",
                    res.meta.name
                ),
            ));
        }
    }
}

/// True when the Secret has a certificate and key (`cert`/`key`, else `tls.crt`/`tls.key`,
/// both non-empty) and the certificate can be served now (Istio's `ExtractCertInfo` and
/// `ValidateCertificate`).
fn servable_credential(data: &SecretData) -> bool {
    let pair = |cert: &str, key: &str| {
        let value = |k: &str| data.get(k).filter(|v| !v.is_empty());
        value(cert).filter(|_| value(key).is_some())
    };
    let Some(cert) = pair("cert", "key").or_else(|| pair("tls.crt", "tls.key")) else {
        return false;
    };
    certificate_problem(cert).is_none()
}

/// True for a reference to a Gateway made of a Kubernetes Gateway
/// (`ns/name~istio-autogenerated-k8s-gateway~listener`).
fn is_internal_gateway_reference(written: &str) -> bool {
    let name = written.split_once('/').map_or(written, |(_, n)| n);
    name.contains("~istio-autogenerated-k8s-gateway~")
}

/// The Kubernetes Services by namespace, and whether the files define the ingress gateway's
/// Service istioctl otherwise assumes.
struct KubeServices<'r> {
    by_namespace: HashMap<&'r str, Vec<&'r ServiceSpec>>,
    default_defined: bool,
}

impl<'r> KubeServices<'r> {
    fn new(resources: &'r [Resource]) -> Self {
        let mut by_namespace: HashMap<&str, Vec<&ServiceSpec>> = HashMap::new();
        let mut default_defined = false;
        for r in resources {
            if let Spec::Service(svc) = &r.spec {
                by_namespace.entry(&r.meta.namespace).or_default().push(svc);
                default_defined |= r.meta.namespace == DEFAULT_GATEWAY_NAMESPACE
                    && r.meta.name == DEFAULT_INGRESS_SERVICE;
            }
        }
        KubeServices {
            by_namespace,
            default_defined,
        }
    }
}

/// A Gateway's workload: the namespace of its Pods, and the ports their Services expose.
struct Workload<'a> {
    namespace: &'a str,
    ports: WorkloadPorts,
}

/// The workload a Gateway's selector picks, as Istio's `IngressGatewayPortAnalyzer` and
/// `SecretAnalyzer` find it: the Pods it selects (the first one's namespace is the
/// workload's) and, for each, the Services of the Pod's namespace that select it. Without Pods
/// in the input, also the Services that stand for them ([`standing_services`]). `None` when
/// nothing is found (IST0101 `selector`).
fn workload<'a>(
    resources: &'a [Resource],
    pods: &Pods<'a>,
    services: &KubeServices<'a>,
    default_labels: &Labels,
    gw: &'a Gateway,
) -> Option<Workload<'a>> {
    let mut ports = WorkloadPorts::default();
    let mut namespace = None;
    // Replicas share their labels: their Services need looking up once.
    let mut seen: HashSet<(&str, &Labels)> = HashSet::new();
    let mut picked: Vec<&Pod<'_>> = pods.selected(&gw.selector).collect();
    if picked.is_empty() && !pods.declared() {
        // The ingress gateway Pod istioctl assumes stands for a real one, which has more
        // labels: a selector that contains its labels may pick it.
        picked.extend(
            pods.in_namespace(DEFAULT_GATEWAY_NAMESPACE)
                .filter(|p| same_workload(p.labels, &gw.selector)),
        );
    }
    for pod in picked {
        namespace.get_or_insert(pod.namespace);
        if !seen.insert((pod.namespace, pod.labels)) {
            continue;
        }
        let in_namespace = services.by_namespace.get(pod.namespace);
        for svc in in_namespace.into_iter().flatten() {
            if labels_subset(&svc.selector, pod.labels) {
                for p in &svc.ports {
                    ports.add(p.port, p.target_port.as_ref(), p.protocol.as_deref());
                }
            }
        }
        if !services.default_defined
            && pod.namespace == DEFAULT_GATEWAY_NAMESPACE
            && labels_subset(default_labels, pod.labels)
        {
            for p in DEFAULT_INGRESS_PORTS {
                ports.add(p, Some(&IntOrString::Int(p)), Some("TCP"));
            }
        }
    }
    // Without Pods in the input, the assumed one may not be labelled as the gateway really is.
    if !pods.declared() {
        for (r, svc) in standing_services(resources, &gw.selector, None) {
            namespace.get_or_insert(r.meta.namespace.as_str());
            for p in &svc.ports {
                ports.add(p.port, p.target_port.as_ref(), p.protocol.as_deref());
            }
        }
    }
    Some(Workload {
        namespace: namespace?,
        ports,
    })
}

/// The ports through which a gateway workload's Services reach it, as Istio's
/// `IngressGatewayPortAnalyzer` collects them: every TCP port's target port (its port when it
/// has none or a named one), and each port that has a target port (a server listening on the
/// Service port is reached through it).
#[derive(Default)]
struct WorkloadPorts {
    targets: BTreeSet<u32>,
    mapped: BTreeSet<u32>,
}

impl WorkloadPorts {
    fn add(&mut self, port: u32, target: Option<&IntOrString>, protocol: Option<&str>) {
        // Kubernetes makes an unset protocol TCP; Istio compares the set value exactly.
        if protocol.is_some_and(|p| p != "TCP") {
            return;
        }
        let target = match target {
            Some(IntOrString::Int(n)) => *n,
            Some(IntOrString::String(s)) => s.parse().unwrap_or(0),
            None => 0,
        };
        if target != 0 {
            self.targets.insert(target);
            self.mapped.insert(port);
        } else {
            self.targets.insert(port);
        }
    }

    fn reach(&self, port: u32) -> bool {
        self.targets.contains(&port) || self.mapped.contains(&port)
    }
}

/// IST0162: a server port no Service of the gateway's workload reaches.
fn service_ports(res: &Resource, gw: &Gateway, ports: &WorkloadPorts, out: &mut Vec<Message>) {
    for (i, server) in gw.servers.iter().enumerate() {
        let number = server.port.number;
        if number != 0 && !ports.reach(number) {
            out.push(Message::at(
                &GATEWAY_PORT_NOT_DEFINED_ON_SERVICE,
                res,
                &format!("spec.servers[{i}].port.number"),
                format!(
                    "The gateway is listening on a target port (port {number}) that is not defined in the Service associated with its workload instances (Pod selector {}). If you need to access the gateway port through the gateway Service, it will not be available.",
                    selector_string(&gw.selector)
                ),
            ));
        }
    }
}

/// True when two Gateways' selectors pick the same workload: the same selector, or one Pod
/// that both select. Without Pods in the input, one selector containing the other.
fn same_gateway_workload(pods: &Pods<'_>, a: &Labels, b: &Labels) -> bool {
    if a == b {
        return true;
    }
    if !pods.declared() {
        return same_workload(a, b);
    }
    if b.iter().any(|(k, v)| a.get(k).is_some_and(|w| w != v)) {
        return false;
    }
    let mut both = a.clone();
    both.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
    let found = pods.selected(&both).next().is_some();
    found
}

/// IST0145, as Istio's `ConflictingGatewayAnalyzer`: a server of a Gateway conflicts with the
/// servers of other Gateways for the same workload on the same port that list one of its hosts,
/// written the same, with the same `bind`. One message per such server.
fn conflicts(
    gateways: &BTreeMap<String, (&Resource, &Gateway)>,
    pods: &Pods<'_>,
    out: &mut Vec<Message>,
) {
    // (port, host, bind) → the Gateways with such a server, each once.
    let mut servers: HashMap<(u32, &str, &str), Vec<&str>> = HashMap::new();
    for (key, (_, gw)) in gateways {
        for server in &gw.servers {
            let bind = server.bind.as_deref().unwrap_or("");
            for h in &server.hosts {
                let list = servers.entry((server.port.number, h, bind)).or_default();
                if list.last() != Some(&key.as_str()) {
                    list.push(key);
                }
            }
        }
    }
    for (key, (res, gw)) in gateways {
        for server in &gw.servers {
            let port = server.port.number;
            let bind = server.bind.as_deref().unwrap_or("");
            let mut others = BTreeSet::new();
            for h in &server.hosts {
                let Some(list) = servers.get(&(port, h.as_str(), bind)) else {
                    continue;
                };
                for other in list {
                    if *other != key
                        && same_gateway_workload(pods, &gw.selector, &gateways[*other].1.selector)
                    {
                        others.insert(other.to_string());
                    }
                }
            }
            if others.is_empty() {
                continue;
            }
            out.push(Message::at(
                &CONFLICTING_GATEWAYS,
                res,
                "spec.servers",
                format!(
                    "Conflict with gateways {} (workload selector {}, port {port}, hosts {}).",
                    super::listed(&others),
                    selector_string(&gw.selector),
                    server.hosts.join(",")
                ),
            ));
        }
    }
}
