//! Gateways and the VirtualServices bound to them: unknown `gateways` entries (IST0101
//! `gateway`), missing or unusable `credentialName` Secrets (IST0101 `credentialName`, IST0161),
//! VirtualService hosts no server of the Gateway admits (IST0132), Gateways that claim the same
//! selector, port and hosts (IST0145), and server ports the gateway workload's Service does not
//! expose (IST0162).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sluice_api::kube::IntOrString;
use sluice_api::networking::{Gateway, Labels};
use sluice_api::{Resource, Spec};

use super::{
    go_list, selector_string, Message, CONFLICTING_GATEWAYS, GATEWAY_PORT_NOT_DEFINED_ON_SERVICE,
    INVALID_GATEWAY_CREDENTIAL, REFERENCED_RESOURCE_NOT_FOUND,
    VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY,
};
use crate::gateway::{
    credential_secret, resolve_credential, resolve_gateway_name, GatewayHost, Secrets,
};
use crate::host::HostIndex;
use crate::references::DEFAULT_GATEWAY_NAMESPACE;
use crate::registry::labels_subset;

pub(super) fn check(resources: &[Resource], out: &mut Vec<Message>) {
    let gateways: BTreeMap<String, (&Resource, &Gateway)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Gateway(gw) => Some((r.key(), (r, gw))),
            _ => None,
        })
        .collect();
    virtual_service_gateways(resources, &gateways, out);
    let secrets = Secrets::new(resources);
    for (res, gw) in gateways.values() {
        credentials(&secrets, res, gw, out);
        service_ports(resources, res, gw, out);
    }
    conflicts(&gateways, out);
}

/// IST0101 `gateway` and IST0132.
fn virtual_service_gateways(
    resources: &[Resource],
    gateways: &BTreeMap<String, (&Resource, &Gateway)>,
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
            let Some(name) = resolve_gateway_name(written, ns) else {
                continue;
            };
            let Some((_, gw)) = gateways.get(&name) else {
                out.push(Message::at(
                    &REFERENCED_RESOURCE_NOT_FOUND,
                    res,
                    &field,
                    format!("Referenced gateway not found: {written:?}"),
                ));
                continue;
            };
            if !field.starts_with("spec.gateways") || !seen.insert(name.clone()) {
                continue;
            }
            let server_hosts = server_hosts
                .entry(name.clone())
                .or_insert_with(|| GatewayHostIndex::new(&name, gw));
            let admitted = vs.hosts.iter().any(|h| server_hosts.admit(h, ns));
            if !admitted && !vs.hosts.is_empty() {
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

/// IST0101 `credentialName` (no such Secret) and IST0161 (the Secret has no usable key pair).
/// Secrets are looked up where `sluice gateway` runs by default, istio-system.
fn credentials(secrets: &Secrets<'_>, res: &Resource, gw: &Gateway, out: &mut Vec<Message>) {
    for (i, server) in gw.servers.iter().enumerate() {
        let Some(name) = server
            .tls
            .as_ref()
            .and_then(|t| t.credential_name.as_deref())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        let (ns, secret) = credential_secret(name, DEFAULT_GATEWAY_NAMESPACE);
        let exists = secrets.get(ns, secret).is_some();
        let field = format!("spec.servers[{i}].tls.credentialName");
        if !exists {
            out.push(Message::at(
                &REFERENCED_RESOURCE_NOT_FOUND,
                res,
                &field,
                format!("Referenced credentialName not found: {name:?}"),
            ));
        } else if resolve_credential(secrets, DEFAULT_GATEWAY_NAMESPACE, name).is_err() {
            out.push(Message::at(
                &INVALID_GATEWAY_CREDENTIAL,
                res,
                &field,
                format!(
                    "The credential referenced by the Gateway {} in namespace {} is invalid, which can cause the traffic not to work as expected.",
                    res.meta.name, res.meta.namespace
                ),
            ));
        }
    }
}

/// True when a Service with `service` selector and a Gateway with `gateway` selector can pick
/// the same workload: one selector contains the other.
fn same_workload(service: &Labels, gateway: &Labels) -> bool {
    !service.is_empty()
        && !gateway.is_empty()
        && (labels_subset(service, gateway) || labels_subset(gateway, service))
}

/// IST0162: only when a Service of the gateway workload is in the config.
fn service_ports(resources: &[Resource], res: &Resource, gw: &Gateway, out: &mut Vec<Message>) {
    let mut found = false;
    let mut targets = BTreeSet::new();
    for r in resources {
        let Spec::Service(svc) = &r.spec else {
            continue;
        };
        if !same_workload(&svc.selector, &gw.selector) {
            continue;
        }
        found = true;
        for p in &svc.ports {
            if p.protocol
                .as_deref()
                .is_some_and(|proto| !proto.eq_ignore_ascii_case("TCP"))
            {
                continue;
            }
            let target = match &p.target_port {
                Some(IntOrString::Int(n)) if *n != 0 => *n,
                Some(IntOrString::String(s)) => s.parse().unwrap_or(p.port),
                _ => p.port,
            };
            targets.insert(target);
        }
    }
    if !found {
        return;
    }
    for (i, server) in gw.servers.iter().enumerate() {
        if !targets.contains(&server.port.number) {
            out.push(Message::at(
                &GATEWAY_PORT_NOT_DEFINED_ON_SERVICE,
                res,
                &format!("spec.servers[{i}].port.number"),
                format!(
                    "The gateway is listening on a target port (port {}) that is not defined in the Service associated with its workload instances (Pod selector {}). If you need to access the gateway port through the gateway Service, it will not be available.",
                    server.port.number,
                    selector_string(&gw.selector)
                ),
            ));
        }
    }
}

/// A Gateway (`ns/name`) and the hosts of one of its servers.
type ServerHosts = (String, Vec<String>);

/// IST0145: Gateways with the same selector and port whose server hosts overlap.
fn conflicts(gateways: &BTreeMap<String, (&Resource, &Gateway)>, out: &mut Vec<Message>) {
    // (selector, port) → [(gateway key, hosts)]
    let mut by_port: BTreeMap<(String, u32), Vec<ServerHosts>> = BTreeMap::new();
    for (key, (res, gw)) in gateways {
        for server in &gw.servers {
            let hosts: Vec<String> = if server.hosts.is_empty() {
                vec!["*".to_string()]
            } else {
                server
                    .hosts
                    .iter()
                    .map(|h| GatewayHost::parse(h, &res.meta.namespace).host.to_string())
                    .collect()
            };
            by_port
                .entry((selector_string(&gw.selector), server.port.number))
                .or_default()
                .push((key.clone(), hosts));
        }
    }
    for ((selector, port), servers) in by_port {
        let mut index = HostIndex::default();
        for (j, (_, hosts)) in servers.iter().enumerate() {
            for h in hosts {
                index.insert(h, j);
            }
        }
        for (i, (a, hosts_a)) in servers.iter().enumerate() {
            let mut others = BTreeSet::new();
            let mut shared = BTreeSet::new();
            for ha in hosts_a {
                index.visit_intersecting(ha, |&j| {
                    let b = &servers[j].0;
                    if j != i && b != a {
                        others.insert(b.clone());
                        shared.insert(ha.clone());
                    }
                    true
                });
            }
            if others.is_empty() {
                continue;
            }
            let (res, _) = gateways[a];
            let others = super::listed(&others);
            let shared: Vec<String> = shared.into_iter().collect();
            out.push(Message::at(
                &CONFLICTING_GATEWAYS,
                res,
                "spec.servers",
                format!(
                    "Conflict with gateways {} (workload selector {selector}, port {port}, hosts {}).",
                    others,
                    shared.join(",")
                ),
            ));
        }
    }
}
