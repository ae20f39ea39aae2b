//! The workloads Istio's analyzers match selectors with: the Pods the input declares, and the
//! ingress gateway Pod istioctl assumes when it analyzes files (`pkg/config/analysis/local`), a
//! Pod labelled `istio: ingressgateway` in istio-system with its Service `istio-ingressgateway`
//! (ports 80, 443, 31400 and 15443) unless the files define that Service themselves.
//!
//! An input without Pods says nothing about which workloads run (sluice's own config folders
//! hold none: its proxies take their labels from the command line). The analyzers then let a
//! Service whose selector contains a Gateway's or Sidecar's selector, or is contained in it,
//! stand for the Pods it selects, rather than report every selector the assumed Pod does not
//! match.

use std::collections::HashMap;

use sluice_api::networking::Labels;
use sluice_api::{Resource, Spec};

use crate::references::DEFAULT_GATEWAY_NAMESPACE;
use crate::registry::labels_subset;

/// The label of the ingress gateway Pod istioctl assumes.
const DEFAULT_INGRESS_LABEL: (&str, &str) = ("istio", "ingressgateway");
/// Its Service, in [`DEFAULT_GATEWAY_NAMESPACE`].
pub(super) const DEFAULT_INGRESS_SERVICE: &str = "istio-ingressgateway";
/// The ports of that Service (each its own target port, TCP).
pub(super) const DEFAULT_INGRESS_PORTS: [u32; 4] = [80, 443, 31400, 15443];
/// The name istioctl gives the Pod.
const DEFAULT_INGRESS_POD: &str = "istio-ingressgateway-dummypod";

/// One Pod, as the analyzers see it.
#[derive(Debug, Clone)]
pub(super) struct Pod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a Labels,
}

/// The Pods of the input, then the ingress gateway Pod istioctl assumes.
pub(super) struct Pods<'a> {
    pods: Vec<Pod<'a>>,
    /// Positions in `pods` by namespace.
    by_namespace: HashMap<&'a str, Vec<usize>>,
    /// Whether the input itself declares a Pod.
    declared: bool,
}

impl<'a> Pods<'a> {
    pub(super) fn new(resources: &'a [Resource], default_labels: &'a Labels) -> Self {
        let mut pods: Vec<Pod<'a>> = resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::Pod(_) => Some(Pod {
                    namespace: &r.meta.namespace,
                    name: &r.meta.name,
                    labels: &r.meta.labels,
                }),
                _ => None,
            })
            .collect();
        let declared = !pods.is_empty();
        pods.push(Pod {
            namespace: DEFAULT_GATEWAY_NAMESPACE,
            name: DEFAULT_INGRESS_POD,
            labels: default_labels,
        });
        let mut by_namespace: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, p) in pods.iter().enumerate() {
            by_namespace.entry(p.namespace).or_default().push(i);
        }
        Pods {
            pods,
            by_namespace,
            declared,
        }
    }

    /// True when the input declares Pods: the analyzers then match selectors with them only.
    pub(super) fn declared(&self) -> bool {
        self.declared
    }

    /// The Pods of namespace `ns`, the input's first.
    pub(super) fn in_namespace<'s>(&'s self, ns: &str) -> impl Iterator<Item = &'s Pod<'a>> {
        let positions = self.by_namespace.get(ns).map_or(&[][..], Vec::as_slice);
        positions.iter().map(|&i| &self.pods[i])
    }

    /// The Pods, in any namespace, whose labels include all of `selector` (an empty selector
    /// selects every Pod, as Kubernetes' `SelectorFromSet`).
    pub(super) fn selected<'s>(
        &'s self,
        selector: &'s Labels,
    ) -> impl Iterator<Item = &'s Pod<'a>> {
        self.pods
            .iter()
            .filter(move |p| labels_subset(selector, p.labels))
    }
}

/// The labels of the ingress gateway Pod istioctl assumes.
pub(super) fn default_ingress_labels() -> Labels {
    Labels::from([(
        DEFAULT_INGRESS_LABEL.0.to_string(),
        DEFAULT_INGRESS_LABEL.1.to_string(),
    )])
}

/// True when a Service with `service` selector can stand for the Pods a Gateway or Sidecar
/// with `selector` picks: one selector contains the other.
pub(super) fn same_workload(service: &Labels, selector: &Labels) -> bool {
    !service.is_empty()
        && !selector.is_empty()
        && (labels_subset(service, selector) || labels_subset(selector, service))
}

/// The Services of the input that stand for the Pods `selector` picks ([`same_workload`]), in
/// namespace `ns` only when given.
pub(super) fn standing_services<'r>(
    resources: &'r [Resource],
    selector: &'r Labels,
    ns: Option<&'r str>,
) -> impl Iterator<Item = (&'r Resource, &'r sluice_api::kube::ServiceSpec)> {
    resources.iter().filter_map(move |r| match &r.spec {
        Spec::Service(svc)
            if ns.is_none_or(|ns| r.meta.namespace == ns)
                && same_workload(&svc.selector, selector) =>
        {
            Some((r, svc))
        }
        _ => None,
    })
}

/// A workload a namespace's selector may pick (a Pod or a WorkloadEntry): its name and labels.
pub(super) struct Workload<'a> {
    pub name: &'a str,
    pub labels: &'a Labels,
}

/// The workloads of namespace `ns`: its Pods (the input's, then the one istioctl assumes), then
/// its WorkloadEntries.
pub(super) fn namespace_workloads<'a>(
    pods: &'a Pods<'_>,
    entries: &'a [crate::registry::WorkloadEntryRef<'_>],
    ns: &str,
) -> Vec<Workload<'a>> {
    pods.in_namespace(ns)
        .map(|p| Workload {
            name: p.name,
            labels: p.labels,
        })
        .chain(
            entries
                .iter()
                .filter(|we| we.resource.meta.namespace == ns)
                .map(|we| Workload {
                    name: &we.resource.meta.name,
                    labels: &we.labels,
                }),
        )
        .collect()
}

/// Whether a selector of namespace `ns` picks no workload. When the input declares no Pods, a
/// Service of `ns` that selects such workloads stands for them (sluice's config folders hold
/// Services, not Pods).
pub(super) fn selects_nothing(
    resources: &[Resource],
    pods: &Pods<'_>,
    workloads: &[Workload<'_>],
    labels: &Labels,
    ns: &str,
) -> bool {
    !workloads.iter().any(|w| labels_subset(labels, w.labels))
        && (pods.declared()
            || standing_services(resources, labels, Some(ns))
                .next()
                .is_none())
}

/// For each workload picked by more than one of `selecting`, the workload and those resources.
pub(super) fn conflicting_selectors<'w, 'r>(
    workloads: &'w [Workload<'w>],
    selecting: &[(&'r Resource, &Labels)],
) -> Vec<(&'w Workload<'w>, Vec<&'r Resource>)> {
    workloads
        .iter()
        .filter_map(|w| {
            let picking: Vec<&'r Resource> = selecting
                .iter()
                .filter(|(_, labels)| labels_subset(labels, w.labels))
                .map(|(r, _)| *r)
                .collect();
            (picking.len() > 1).then_some((w, picking))
        })
        .collect()
}
