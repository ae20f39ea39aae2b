//! Sidecars: more than one without a workload selector in a namespace (IST0111), several whose
//! selectors pick the same workload (IST0110), and a selector that picks no workload of its
//! namespace (IST0101 `selector`). Only the oldest applies in the first two cases (see
//! `sidecar_scope`), which is rarely what the author meant; in the last, none does.
//!
//! Workloads are the Pods ([`super::workloads`]) and WorkloadEntries of the Sidecar's
//! namespace (Istio's analyzer looks at Pods only, but a Sidecar applies to WorkloadEntries as
//! well). Without Pods in the input, a Service of the namespace that selects workloads with the
//! selector's labels stands for them, for IST0101 only.

use std::collections::BTreeMap;

use sluice_api::networking::{Labels, Sidecar};
use sluice_api::{Resource, Spec};

use super::workloads::{conflicting_selectors, namespace_workloads, selects_nothing, Pods};
use super::{
    selector_not_found, Message, CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
    MULTIPLE_SIDECARS_WITHOUT_SELECTORS,
};
use crate::registry::workload_entries;

pub(super) fn check(resources: &[Resource], pods: &Pods<'_>, out: &mut Vec<Message>) {
    let mut by_ns: BTreeMap<&str, Vec<(&Resource, &Sidecar)>> = BTreeMap::new();
    for res in resources {
        if let Spec::Sidecar(sc) = &res.spec {
            by_ns
                .entry(&res.meta.namespace)
                .or_default()
                .push((res, sc));
        }
    }
    if by_ns.is_empty() {
        return;
    }
    let entries = workload_entries(resources);
    for (ns, sidecars) in &by_ns {
        let unselected: Vec<&Resource> = sidecars
            .iter()
            .filter(|(_, sc)| selector(sc).is_none())
            .map(|(r, _)| *r)
            .collect();
        if unselected.len() > 1 {
            let names = name_list(&unselected);
            for r in &unselected {
                out.push(Message::at(
                    &MULTIPLE_SIDECARS_WITHOUT_SELECTORS,
                    r,
                    "spec",
                    format!(
                        "The Sidecars {names} in namespace {ns:?} have no workload selector, which can lead to undefined behavior."
                    ),
                ));
            }
        }
        let selecting: Vec<(&Resource, &Labels)> = sidecars
            .iter()
            .filter_map(|(r, sc)| Some((*r, selector(sc)?)))
            .collect();
        if selecting.is_empty() {
            continue;
        }
        let workloads = namespace_workloads(pods, &entries, ns);
        for (r, labels) in &selecting {
            if selects_nothing(resources, pods, &workloads, labels, ns) {
                out.push(selector_not_found(
                    r,
                    "spec.workloadSelector.labels",
                    labels,
                ));
            }
        }
        for (w, conflicting) in conflicting_selectors(&workloads, &selecting) {
            let names = name_list(&conflicting);
            for r in &conflicting {
                out.push(Message::at(
                    &CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
                    r,
                    "spec.workloadSelector",
                    format!(
                        "The Sidecars {names} in namespace {ns:?} select the same workload pod {:?}, which can lead to undefined behavior.",
                        w.name
                    ),
                ));
            }
        }
    }
}

/// The labels a Sidecar selects workloads with; `None` (the whole namespace) when it has none.
fn selector(sc: &Sidecar) -> Option<&Labels> {
    sc.workload_selector
        .as_ref()
        .map(|s| &s.labels)
        .filter(|l| !l.is_empty())
}

/// `[ns/a ns/b]`, as Istio prints a Go slice of names.
fn name_list(resources: &[&Resource]) -> String {
    let names: Vec<String> = resources.iter().map(|r| r.key()).collect();
    format!("[{}]", names.join(" "))
}
