//! DestinationRules: TLS origination without a CA to verify the server (IST0128, IST0129), hosts
//! no service visible to the rule declares (IST0174, found as Istio finds them, see
//! [`super::lookup`]), and subsets that select no workload (IST0173).
//!
//! A subset selects a workload when one of the endpoints the registry lists for the host
//! (WorkloadEntries, ServiceEntry endpoints, Endpoints addresses: what a subset cluster is built
//! from) has its labels, or a Pod does that the host's Service (or ServiceEntry
//! `workloadSelector`) selects in its namespace. Istio looks at Pods only, in every namespace,
//! with the labels their Node adds; sluice reads no Nodes, so topology labels are left out of
//! the match.

use sluice_api::networking::{ClientTlsSettings, DestinationRule, Labels};
use sluice_api::{Resource, Spec};

use super::lookup::ServiceHosts;
use super::workloads::Pods;
use super::{
    Message, DESTINATION_RULE_SUBSET_NOT_SELECT_PODS,
    NO_SERVER_CERTIFICATE_VERIFICATION_DESTINATION_LEVEL,
    NO_SERVER_CERTIFICATE_VERIFICATION_PORT_LEVEL, UNKNOWN_DESTINATION_RULE_HOST,
};
use std::collections::HashMap;

use crate::host::{self, HostIndex};
use crate::references::EndpointLabels;
use crate::registry::{self, labels_subset, Service};

/// Services are found by host through an index, and subsets matched against each service's
/// endpoints by label: comparing every rule with every service, and every subset with every
/// endpoint, was quadratic.
pub(super) fn check(resources: &[Resource], pods: &Pods<'_>, out: &mut Vec<Message>) {
    let services = registry::services_from(resources);
    let pod_selectors = PodSelectors::new(resources);
    let mut by_host = HostIndex::default();
    for (i, svc) in services.iter().enumerate() {
        by_host.insert(&svc.hostname, i);
    }
    let mut endpoint_labels: HashMap<usize, EndpointLabels<'_>> = HashMap::new();
    let hosts = ServiceHosts::new(resources);
    for res in resources {
        let Spec::DestinationRule(dr) = &res.spec else {
            continue;
        };
        ca_certificates(res, dr, out);
        if hosts
            .find(&res.meta.namespace, &dr.export_to, &dr.host)
            .is_none()
        {
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
        let fqdn = host::resolve_short_name(&dr.host, &res.meta.namespace);
        let mut matching: Vec<usize> = by_host.intersecting(&fqdn).into_iter().copied().collect();
        matching.sort_unstable();
        for (i, subset) in dr.subsets.iter().enumerate() {
            let labels = without_topology(&subset.labels);
            let selects_nothing = !matching.is_empty()
                && matching.iter().all(|&i| {
                    endpoint_labels
                        .entry(i)
                        .or_insert_with(|| EndpointLabels::new(&services[i]))
                        .selects_nothing(&labels)
                        && !pod_selectors.selects_pod(pods, &services[i], &labels)
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

/// The Pod selector of each service that has one, by the registry's `source` of the service
/// (`Service ns/name`, `ServiceEntry ns/name`).
struct PodSelectors<'r> {
    by_source: HashMap<String, &'r Labels>,
}

impl<'r> PodSelectors<'r> {
    fn new(resources: &'r [Resource]) -> Self {
        let by_source = resources
            .iter()
            .filter_map(|r| {
                let selector = match &r.spec {
                    Spec::Service(svc) => &svc.selector,
                    Spec::ServiceEntry(se) => &se.workload_selector.as_ref()?.labels,
                    _ => return None,
                };
                // A Service without a selector selects no Pod.
                (!selector.is_empty()).then(|| (format!("{} {}", r.kind, r.key()), selector))
            })
            .collect();
        PodSelectors { by_source }
    }

    /// True when `svc` selects a Pod of its namespace that has all of `labels`.
    fn selects_pod(&self, pods: &Pods<'_>, svc: &Service, labels: &Labels) -> bool {
        let Some(selector) = self.by_source.get(&*svc.source) else {
            return false;
        };
        pods.in_namespace(&svc.namespace)
            .any(|p| labels_subset(selector, p.labels) && labels_subset(labels, p.labels))
    }
}

/// The labels a workload gets from its node (Istio's `AugmentLabels`): sluice does not know
/// nodes, so a subset is matched without them. One with an empty value is kept: Istio never
/// sets an empty one, so it matches nothing.
const TOPOLOGY_LABELS: [&str; 6] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
    "topology.istio.io/cluster",
    "topology.istio.io/network",
    "kubernetes.io/hostname",
];

fn without_topology(labels: &Labels) -> Labels {
    let mut out = labels.clone();
    out.retain(|k, v| v.is_empty() || !TOPOLOGY_LABELS.contains(&k.as_str()));
    out
}

/// The mode when it originates TLS that should verify the server but has no CA to do it
/// with. A `credentialName` supplies the CA only to the workloads a `workloadSelector` picks
/// (Istio reads it only then), so without one it does not count.
fn unverified_mode(tls: &ClientTlsSettings, has_selector: bool) -> Option<String> {
    let mode = tls.mode.as_deref()?.to_ascii_uppercase();
    let unset = |v: &Option<String>| v.as_deref().is_none_or(str::is_empty);
    let credential = !unset(&tls.credential_name) && has_selector;
    (matches!(mode.as_str(), "SIMPLE" | "MUTUAL") && unset(&tls.ca_certificates) && !credential)
        .then_some(mode)
}

/// IST0128 (top-level `tls`) and IST0129 (`portLevelSettings[].tls`), worded as Istio's:
/// the rule as `ns/name`, the port as its PortSelector prints (`number:443`).
fn ca_certificates(res: &Resource, dr: &DestinationRule, out: &mut Vec<Message>) {
    let Some(tp) = &dr.traffic_policy else {
        return;
    };
    let (name, ns) = (res.key(), &res.meta.namespace);
    let has_selector = dr.workload_selector.is_some();
    if let Some(mode) = tp
        .tls
        .as_ref()
        .and_then(|t| unverified_mode(t, has_selector))
    {
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
        let Some(mode) = pl
            .tls
            .as_ref()
            .and_then(|t| unverified_mode(t, has_selector))
        else {
            continue;
        };
        let port = pl
            .port
            .as_ref()
            .map_or(String::new(), |p| format!("number:{}", p.number));
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
