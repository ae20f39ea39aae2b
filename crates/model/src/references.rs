//! References between resources that cannot work, found without compiling for a proxy: a route
//! to a host the registry does not know, to a subset no DestinationRule defines, to a subset
//! whose labels select no endpoint, or to a portless destination whose ServiceEntry declares a
//! single port. `sluice validate` prints these as warnings; `compile` reports the same ones (with
//! exportTo and sourceLabels applied) for the proxy it compiles for.
//!
//! Visibility (`exportTo`) and `sourceLabels` are ignored here: a reference is reported only
//! when it fails for every proxy.

use std::sync::Arc;

use sluice_api::networking::{Destination, DestinationRule, Subset};
use sluice_api::{Diagnostic, Resource, Severity, Spec};

use crate::host;
use crate::registry::{self, labels_subset, Protocol, Resolution, Service};

/// Warning for a destination host that no ServiceEntry or Service declares.
pub(crate) fn unknown_host_message(host: &str) -> String {
    format!(
        "destination host {host} is not in the service registry (no ServiceEntry or Service); requests routed to it get 503 NC"
    )
}

/// Warning for a subset that no DestinationRule for the host defines.
pub(crate) fn undefined_subset_message(host: &str, subset: &str) -> String {
    format!(
        "subset {subset} of destination {host} is not defined in any DestinationRule for this host; requests routed to it get 503 NC"
    )
}

/// Warning for a subset whose labels select none of the service's endpoints.
pub(crate) fn empty_subset_message(host: &str, subset: &str) -> String {
    format!(
        "subset {subset} of destination {host} selects no endpoint of the service; requests routed to it get 503 UH"
    )
}

/// Warning for a portless destination of a single-port ServiceEntry (seed 004).
pub(crate) fn single_port_message(host: &str, port: u16) -> String {
    format!(
        "destination {host} has no port: every request for this host goes to port {port}, the ServiceEntry's only port, whatever port the client called"
    )
}

/// True when a subset cluster of `svc` with these endpoints can never pick one (503 UH): the
/// service's endpoints are listed (STATIC, or DNS with endpoints or a subset) and none match.
pub(crate) fn subset_selects_nothing(
    svc: &Service,
    labels: &sluice_api::networking::Labels,
) -> bool {
    matches!(
        svc.resolution,
        Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin
    ) && !svc
        .endpoints
        .iter()
        .any(|ep| labels_subset(labels, &ep.labels))
}

/// The port every request goes to when a route names `svc` without a port: the only port of a
/// ServiceEntry, unless it is the one clients call by default for its protocol (80 for HTTP,
/// 443 for HTTPS/TLS), where nothing surprising happens.
pub(crate) fn surprising_single_port(svc: &Service) -> Option<u16> {
    if !svc.source.starts_with("ServiceEntry ") || svc.ports.len() != 1 {
        return None;
    }
    let p = &svc.ports[0];
    let usual = match p.protocol {
        Protocol::Https | Protocol::Tls => 443,
        _ => 80,
    };
    (p.number != usual).then_some(p.number)
}

/// Every reference problem in `resources`, independent of any proxy.
pub fn check(resources: &[Resource]) -> Vec<Diagnostic> {
    let services = registry::services_from(resources);
    let rules: Vec<(&Resource, &DestinationRule, String)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::DestinationRule(dr) => {
                Some((r, dr, host::resolve_short_name(&dr.host, &r.meta.namespace)))
            }
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for res in resources {
        let Spec::VirtualService(vs) = &res.spec else {
            continue;
        };
        let mut check_dest = |field: String, dest: &Destination, http: bool| {
            check_destination(&services, &rules, res, field, dest, http, &mut out);
        };
        for (i, r) in vs.http.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                check_dest(
                    format!("spec.http[{i}].route[{j}].destination"),
                    &d.destination,
                    true,
                );
            }
            if let Some(m) = &r.mirror {
                check_dest(format!("spec.http[{i}].mirror"), m, false);
            }
            for (k, m) in r.mirrors.iter().enumerate() {
                check_dest(
                    format!("spec.http[{i}].mirrors[{k}].destination"),
                    &m.destination,
                    false,
                );
            }
        }
        for (i, r) in vs.tls.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                check_dest(
                    format!("spec.tls[{i}].route[{j}].destination"),
                    &d.destination,
                    false,
                );
            }
        }
        for (i, r) in vs.tcp.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                check_dest(
                    format!("spec.tcp[{i}].route[{j}].destination"),
                    &d.destination,
                    false,
                );
            }
        }
    }
    out
}

fn check_destination(
    services: &[Arc<Service>],
    rules: &[(&Resource, &DestinationRule, String)],
    res: &Resource,
    field: String,
    dest: &Destination,
    http: bool,
    out: &mut Vec<Diagnostic>,
) {
    let host = host::resolve_short_name(dest.host_name(), &res.meta.namespace);
    // Destinations name a service exactly, as in Istio: a concrete name under a wildcard
    // ServiceEntry host has no cluster either.
    let Some(svc) = services.iter().find(|s| *s.hostname == *host) else {
        out.push(Diagnostic::at(
            res,
            Severity::Warning,
            format!("{field}.host"),
            unknown_host_message(&host),
        ));
        return;
    };
    let explicit_port = dest.port.as_ref().is_some_and(|p| p.number != 0);
    if http && !explicit_port {
        if let Some(port) = surprising_single_port(svc) {
            out.push(Diagnostic::at(
                res,
                Severity::Warning,
                format!("{field}.host"),
                single_port_message(&host, port),
            ));
        }
    }
    let Some(subset) = dest.subset.as_deref().filter(|s| !s.is_empty()) else {
        return;
    };
    let defined: Option<&Subset> = rules
        .iter()
        .filter(|(_, _, h)| host::matches(h, &svc.hostname))
        .flat_map(|(_, dr, _)| dr.subsets.iter())
        .find(|s| s.name == subset);
    let field = format!("{field}.subset");
    match defined {
        None => out.push(Diagnostic::at(
            res,
            Severity::Warning,
            field,
            undefined_subset_message(&host, subset),
        )),
        Some(s) if subset_selects_nothing(svc, &s.labels) => out.push(Diagnostic::at(
            res,
            Severity::Warning,
            field,
            empty_subset_message(&host, subset),
        )),
        Some(_) => {}
    }
}
