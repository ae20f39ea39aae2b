//! Sidecars: more than one without a workload selector in a namespace (IST0111), and several
//! whose selectors pick the same workload (IST0110). Only the oldest applies in either case
//! (see `sidecar_scope`), which is rarely what the author meant.

use std::collections::BTreeMap;

use sluice_api::networking::Sidecar;
use sluice_api::{Resource, Spec};

use super::{Message, CONFLICTING_SIDECAR_WORKLOAD_SELECTORS, MULTIPLE_SIDECARS_WITHOUT_SELECTORS};
use crate::registry::{labels_subset, workload_entries};

pub(super) fn check(resources: &[Resource], out: &mut Vec<Message>) {
    let mut by_ns: BTreeMap<&str, Vec<(&Resource, &Sidecar)>> = BTreeMap::new();
    for res in resources {
        if let Spec::Sidecar(sc) = &res.spec {
            by_ns
                .entry(&res.meta.namespace)
                .or_default()
                .push((res, sc));
        }
    }
    for (ns, sidecars) in &by_ns {
        let unselected: Vec<&Resource> = sidecars
            .iter()
            .filter(|(_, sc)| sc.workload_selector.is_none())
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
        // Workloads are the WorkloadEntries the config declares in the namespace.
        for we in workload_entries(resources)
            .into_iter()
            .filter(|we| we.resource.meta.namespace == *ns)
        {
            let selecting: Vec<&Resource> = sidecars
                .iter()
                .filter(|(_, sc)| {
                    sc.workload_selector
                        .as_ref()
                        .is_some_and(|sel| labels_subset(&sel.labels, &we.labels))
                })
                .map(|(r, _)| *r)
                .collect();
            if selecting.len() > 1 {
                let names = name_list(&selecting);
                for r in &selecting {
                    out.push(Message::at(
                        &CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
                        r,
                        "spec.workloadSelector",
                        format!(
                            "The Sidecars {names} in namespace {ns:?} select the same workload pod {:?}, which can lead to undefined behavior.",
                            we.resource.meta.name
                        ),
                    ));
                }
            }
        }
    }
}

/// `[ns/a ns/b]`, as Istio prints a Go slice of names.
fn name_list(resources: &[&Resource]) -> String {
    let names: Vec<String> = resources.iter().map(|r| r.key()).collect();
    format!("[{}]", names.join(" "))
}
