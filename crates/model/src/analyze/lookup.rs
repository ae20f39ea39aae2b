//! How Istio's analyzers find the service a host names (`util.InitServiceEntryHostMap` and
//! `util.GetDestinationHost`), so that IST0101 `host`, IST0112 and IST0174 are given where
//! istioctl gives them.
//!
//! Every ServiceEntry host and Kubernetes Service is known under (scope, FQDN): the scope is a
//! namespace the entry is exported to, or `*`. ServiceEntries are exported by `exportTo`,
//! Services by the `networking.istio.io/exportTo` annotation. A reference from namespace `ns`
//! finds a host exported to `*`, else to the namespaces the referring resource is itself
//! exported to (`ns` when it has no `exportTo`), else a wildcard host exported to `*` or `ns`
//! whose suffix the host ends with.

use std::collections::HashMap;

use sluice_api::{Resource, Spec};

use super::routes::istio_fqdn;
use crate::host::HostIndex;

/// The annotation that exports a Kubernetes Service to some namespaces only.
const SERVICE_EXPORT_TO: &str = "networking.istio.io/exportTo";

/// What the analyzers need of a service: its port numbers, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    pub ports: Vec<u32>,
}

/// Every service host, by (scope, FQDN).
#[derive(Default)]
pub(super) struct ServiceHosts {
    by_scope: HashMap<(String, String), Found>,
    /// Wildcard hosts (`*.example.com`, `*`) with their scope, for the suffix search.
    wildcards: HostIndex<(String, String)>,
}

impl ServiceHosts {
    pub(super) fn new(resources: &[Resource]) -> Self {
        let mut out = ServiceHosts::default();
        // ServiceEntries first, then Services: a Service replaces a ServiceEntry entry of the
        // same scope and name, as in Istio's map.
        for res in resources {
            let Spec::ServiceEntry(se) = &res.spec else {
                continue;
            };
            let ns = res.meta.namespace.as_str();
            let ports: Vec<u32> = se.ports.iter().map(|p| p.number).collect();
            let scopes: Vec<String> =
                if se.export_to.is_empty() || se.export_to.iter().any(|e| e == "*") {
                    vec!["*".to_string()]
                } else {
                    se.export_to
                        .iter()
                        .map(|e| if e == "." { ns.to_string() } else { e.clone() })
                        .collect()
                };
            for h in &se.hosts {
                for scope in &scopes {
                    out.add(scope, istio_fqdn(h, ns), ports.clone());
                }
            }
        }
        for res in resources {
            let Spec::Service(svc) = &res.spec else {
                continue;
            };
            let ns = res.meta.namespace.as_str();
            let ports: Vec<u32> = svc.ports.iter().map(|p| p.port).collect();
            let fqdn = istio_fqdn(&res.meta.name, ns);
            let scopes: Vec<String> = match res.meta.annotations.get(SERVICE_EXPORT_TO) {
                None => vec!["*".to_string()],
                Some(list) if list.is_empty() => vec!["*".to_string()],
                Some(list) => list
                    .split(',')
                    .map(str::trim)
                    .map(|e| {
                        if e == "." {
                            ns.to_string()
                        } else {
                            e.to_string()
                        }
                    })
                    .collect(),
            };
            for scope in scopes {
                out.add(&scope, fqdn.clone(), ports.clone());
            }
        }
        out
    }

    fn add(&mut self, scope: &str, fqdn: String, ports: Vec<u32>) {
        if fqdn.starts_with('*') {
            self.wildcards
                .insert(&fqdn, (scope.to_string(), fqdn.clone()));
        }
        self.by_scope
            .insert((scope.to_string(), fqdn), Found { ports });
    }

    /// The service `host` names for a resource in `ns` exported to `export_to`, as Istio's
    /// `GetDestinationHost` finds it.
    pub(super) fn find(&self, ns: &str, export_to: &[String], host: &str) -> Option<&Found> {
        let fqdn = istio_fqdn(host, ns);
        let get = |scope: &str| self.by_scope.get(&(scope.to_string(), fqdn.clone()));
        if let Some(found) = get("*") {
            return Some(found);
        }
        if export_to.is_empty() {
            if let Some(found) = get(ns) {
                return Some(found);
            }
        } else {
            for e in export_to {
                let scope = if e == "." { ns } else { e.as_str() };
                if let Some(found) = get(scope) {
                    return Some(found);
                }
            }
        }
        // A wildcard host exported everywhere or to `ns` whose suffix the written host (less
        // a leading `*`) ends with.
        let written = host.strip_prefix('*').unwrap_or(host);
        let mut hit = None;
        self.wildcards
            .visit_intersecting(&host.to_ascii_lowercase(), |(scope, pattern)| {
                let suffix = pattern.strip_prefix('*').unwrap_or(pattern);
                if (scope == "*" || scope == ns) && written.ends_with(suffix) {
                    hit = self.by_scope.get(&(scope.clone(), pattern.clone()));
                }
                hit.is_none()
            });
        // `*` takes every name, also one the index cannot compare (an empty one).
        hit.or_else(|| {
            ["*", ns]
                .into_iter()
                .find_map(|scope| self.by_scope.get(&(scope.to_string(), "*".to_string())))
        })
    }
}
