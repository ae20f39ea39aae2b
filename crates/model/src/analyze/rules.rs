//! DestinationRules: TLS origination without a CA to verify the server (IST0128, IST0129), hosts
//! no service declares (IST0174), and subsets that select no workload (IST0173).
//!
//! Istio matches subsets against Pods; sluice matches them against the endpoints the registry
//! lists for the host (WorkloadEntries, ServiceEntry endpoints, Endpoints addresses), which are
//! what a subset cluster is built from.

use sluice_api::networking::{ClientTlsSettings, DestinationRule};
use sluice_api::{Resource, Spec};

use super::{
    Message, DESTINATION_RULE_SUBSET_NOT_SELECT_PODS,
    NO_SERVER_CERTIFICATE_VERIFICATION_DESTINATION_LEVEL,
    NO_SERVER_CERTIFICATE_VERIFICATION_PORT_LEVEL, UNKNOWN_DESTINATION_RULE_HOST,
};
use std::collections::HashMap;

use crate::host::{self, HostIndex};
use crate::references::EndpointLabels;
use crate::registry;

/// Services are found by host through an index, and subsets matched against each service's
/// endpoints by label: comparing every rule with every service, and every subset with every
/// endpoint, was quadratic.
pub(super) fn check(resources: &[Resource], out: &mut Vec<Message>) {
    let services = registry::services_from(resources);
    let mut by_host = HostIndex::default();
    for (i, svc) in services.iter().enumerate() {
        by_host.insert(&svc.hostname, i);
    }
    let mut endpoint_labels: HashMap<usize, EndpointLabels<'_>> = HashMap::new();
    for res in resources {
        let Spec::DestinationRule(dr) = &res.spec else {
            continue;
        };
        ca_certificates(res, dr, out);
        let fqdn = host::resolve_short_name(&dr.host, &res.meta.namespace);
        let mut matching: Vec<usize> = by_host.intersecting(&fqdn).into_iter().copied().collect();
        matching.sort_unstable();
        if matching.is_empty() {
            out.push(Message::at(
                &UNKNOWN_DESTINATION_RULE_HOST,
                res,
                "spec.host",
                format!(
                    "The host {} defined in the DestinationRule does not match any services in the mesh.",
                    dr.host
                ),
            ));
            continue;
        }
        for (i, subset) in dr.subsets.iter().enumerate() {
            let selects_nothing = matching.iter().all(|&i| {
                endpoint_labels
                    .entry(i)
                    .or_insert_with(|| EndpointLabels::new(&services[i]))
                    .selects_nothing(&subset.labels)
            });
            if selects_nothing {
                out.push(Message::at(
                    &DESTINATION_RULE_SUBSET_NOT_SELECT_PODS,
                    res,
                    &format!("spec.subsets[{i}]"),
                    format!(
                        "The Subset {} defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream).",
                        subset.name
                    ),
                ));
            }
        }
    }
}

/// The mode when it originates TLS that should verify the server but has no CA to do it with.
fn unverified_mode(tls: &ClientTlsSettings) -> Option<String> {
    let mode = tls.mode.as_deref()?.to_ascii_uppercase();
    let unset = |v: &Option<String>| v.as_deref().is_none_or(str::is_empty);
    (matches!(mode.as_str(), "SIMPLE" | "MUTUAL")
        && unset(&tls.ca_certificates)
        && unset(&tls.credential_name))
    .then_some(mode)
}

/// IST0128 (top-level `tls`) and IST0129 (`portLevelSettings[].tls`).
fn ca_certificates(res: &Resource, dr: &DestinationRule, out: &mut Vec<Message>) {
    let Some(tp) = &dr.traffic_policy else {
        return;
    };
    let (name, ns) = (&res.meta.name, &res.meta.namespace);
    if let Some(mode) = tp.tls.as_ref().and_then(unverified_mode) {
        out.push(Message::at(
            &NO_SERVER_CERTIFICATE_VERIFICATION_DESTINATION_LEVEL,
            res,
            "spec.trafficPolicy.tls.mode",
            format!(
                "DestinationRule {name} in namespace {ns} has TLS mode set to {mode} but no caCertificates are set to validate server identity for host: {}",
                dr.host
            ),
        ));
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let Some(mode) = pl.tls.as_ref().and_then(unverified_mode) else {
            continue;
        };
        let port = pl.port.as_ref().map_or(0, |p| p.number);
        out.push(Message::at(
            &NO_SERVER_CERTIFICATE_VERIFICATION_PORT_LEVEL,
            res,
            &format!("spec.trafficPolicy.portLevelSettings[{i}].tls.mode"),
            format!(
                "DestinationRule {name} in namespace {ns} has TLS mode set to {mode} but no caCertificates are set to validate server identity for host: {} at port {port}",
                dr.host
            ),
        ));
    }
}
