//! Telemetries (Istio's `telemetry.SelectorAnalyzer`): a selector that picks no workload of its
//! namespace (IST0101 `selector`), and several Telemetries whose selectors pick the same
//! workload (IST0159), which Istio resolves in no defined order. Telemetries without a
//! selector, or with one without labels, apply to the whole namespace and are not checked here.
//!
//! Proxies enforce Telemetry (`crate::telemetry_policy`) with the same selection, so these are
//! the mistakes that change what a workload logs and reports. Workloads are matched as for Sidecars (see [`super::sidecars`]): the
//! Pods and WorkloadEntries of the Telemetry's namespace (Istio's analyzer looks at Pods only),
//! and without Pods in the input, a Service of the namespace that selects workloads with the
//! selector's labels stands for them, for IST0101 only.

use std::collections::BTreeMap;

use sluice_api::networking::Labels;
use sluice_api::{Resource, Spec};

use super::workloads::{conflicting_selectors, namespace_workloads, selects_nothing, Pods};
use super::{selector_not_found, Message, CONFLICTING_TELEMETRY_WORKLOAD_SELECTORS};
use crate::registry::workload_entries;

pub(super) fn check(resources: &[Resource], pods: &Pods<'_>, out: &mut Vec<Message>) {
    // Telemetries with selector labels, by namespace.
    let mut by_ns: BTreeMap<&str, Vec<(&Resource, &Labels)>> = BTreeMap::new();
    for res in resources {
        let Spec::Telemetry(t) = &res.spec else {
            continue;
        };
        let Some(labels) = t
            .selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
        else {
            continue;
        };
        by_ns
            .entry(&res.meta.namespace)
            .or_default()
            .push((res, labels));
    }
    if by_ns.is_empty() {
        return;
    }
    let entries = workload_entries(resources);
    for (ns, selecting) in &by_ns {
        let workloads = namespace_workloads(pods, &entries, ns);
        for (r, labels) in selecting {
            if selects_nothing(resources, pods, &workloads, labels, ns) {
                out.push(selector_not_found(r, "spec.selector.matchLabels", labels));
            }
        }
        for (w, conflicting) in conflicting_selectors(&workloads, selecting) {
            // Names alone, sorted, as Istio lists them.
            let mut names: Vec<&str> = conflicting.iter().map(|r| r.meta.name.as_str()).collect();
            names.sort_unstable();
            let names = super::go_list(&names);
            for r in &conflicting {
                out.push(Message::at(
                    &CONFLICTING_TELEMETRY_WORKLOAD_SELECTORS,
                    r,
                    "metadata.name",
                    format!(
                        "The Telemetries {names} in namespace {ns:?} select the same workload pod {:?}, which can lead to undefined behavior.",
                        w.name
                    ),
                ));
            }
        }
    }
}
