//! VirtualService destinations: hosts the registry does not know (IST0101 `host`, `mirror host`,
//! `host:port`), subsets no DestinationRule defines (IST0101 `host+subset in destinationrule`),
//! multi-port services without a port (IST0112), and a portless HTTP route to a
//! single-port ServiceEntry whose port is not the usual one (SLU0001, seed 004).
//!
//! Hosts are found as Istio's analyzers find them ([`super::lookup`]): `exportTo` of the
//! ServiceEntry (or the Service's `networking.istio.io/exportTo` annotation) decides which
//! namespaces see a host, and a name under a wildcard ServiceEntry host is found.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_api::networking::{Destination, VirtualService};
use sluice_api::{Resource, Spec};

use super::lookup::ServiceHosts;
use super::{
    go_list, Message, DESTINATION_PORT_PINNED_TO_ONLY_SERVICE_PORT, REFERENCED_RESOURCE_NOT_FOUND,
    VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED,
};
use crate::host;
use crate::references::{
    surprising_single_port, usual_port, vs_destinations, DestinationRole as Role, SubsetIndex,
};
use crate::registry::{self, Service};

struct Context<'a> {
    /// Sluice's registry, for SLU0001.
    services: HashMap<Arc<str>, Arc<Service>>,
    /// Istio's view of hosts, for IST0101 and IST0112.
    hosts: ServiceHosts,
    rules: SubsetIndex<'a>,
}

pub(super) fn check(resources: &[Resource], out: &mut Vec<Message>) {
    let mut services = HashMap::new();
    for svc in registry::services_from(resources) {
        services.entry(svc.hostname.clone()).or_insert(svc);
    }
    let ctx = Context {
        services,
        hosts: ServiceHosts::new(resources),
        rules: SubsetIndex::new(resources),
    };
    for res in resources {
        let Spec::VirtualService(vs) = &res.spec else {
            continue;
        };
        for (field, dest, role) in vs_destinations(vs) {
            check_destination(&ctx, res, vs, &field, dest, role, out);
        }
    }
}

fn check_destination(
    ctx: &Context<'_>,
    res: &Resource,
    vs: &VirtualService,
    field: &str,
    dest: &Destination,
    role: Role,
    out: &mut Vec<Message>,
) {
    let written = dest.host_name();
    let fqdn = host::resolve_short_name(written, &res.meta.namespace);
    let host_field = format!("{field}.host");
    if let Some(subset) = dest.subset.as_deref().filter(|s| !s.is_empty()) {
        if ctx.rules.defined(&fqdn, subset).is_none() {
            let kind = if role == Role::Mirror {
                "mirror+subset in destinationrule"
            } else {
                "host+subset in destinationrule"
            };
            out.push(Message::at(
                &REFERENCED_RESOURCE_NOT_FOUND,
                res,
                &format!("{field}.subset"),
                format!(
                    "Referenced {kind} not found: {:?}",
                    format!("{written}+{subset}")
                ),
            ));
        }
    }
    let Some(found) = ctx.hosts.find(&res.meta.namespace, &vs.export_to, written) else {
        let kind = if role == Role::Mirror {
            "mirror host"
        } else {
            "host"
        };
        out.push(Message::at(
            &REFERENCED_RESOURCE_NOT_FOUND,
            res,
            &host_field,
            format!("Referenced {kind} not found: {written:?}"),
        ));
        return;
    };
    match &dest.port {
        Some(p) => {
            if !found.ports.contains(&p.number) {
                out.push(Message::at(
                    &REFERENCED_RESOURCE_NOT_FOUND,
                    res,
                    &format!("{field}.port"),
                    format!(
                        "Referenced host:port not found: {:?}",
                        format!("{written}:{}", p.number)
                    ),
                ));
            }
        }
        None => {
            // Istio asks for a port whatever binds the VirtualService: in a sidecar a portless
            // destination takes the port the client called, at a gateway the gateway's
            // listening port, which the service rarely has (503 NC).
            if found.ports.len() > 1 {
                // The list is Istio's message; past a few ports it only makes the output grow
                // with the service's size for every route that names it.
                let mut ports: Vec<String> =
                    found.ports.iter().take(16).map(u32::to_string).collect();
                if found.ports.len() > 16 {
                    ports.push(format!("\u{2026} ({} more)", found.ports.len() - 16));
                }
                out.push(Message::at(
                    &VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED,
                    res,
                    &host_field,
                    format!(
                        "This VirtualService routes to a service {written:?} that exposes multiple ports {}. Specifying a port in the destination is required to disambiguate.",
                        go_list(&ports)
                    ),
                ));
            }
            let svc = ctx.services.get(fqdn.as_str());
            if let (Role::HttpRoute, Some(svc)) = (role, svc) {
                if let Some(only) = surprising_single_port(svc) {
                    let usual = usual_port(svc.ports[0].protocol);
                    out.push(Message::at(
                        &DESTINATION_PORT_PINNED_TO_ONLY_SERVICE_PORT,
                        res,
                        &host_field,
                        format!(
                            "Destination {written:?} has no port: every request for this host goes to port {only}, the ServiceEntry's only port, whatever port the client called; clients calling port {usual} fail. Declare port {usual} in {} or set destination.port.",
                            svc.source
                        ),
                    ));
                }
            }
        }
    }
}
