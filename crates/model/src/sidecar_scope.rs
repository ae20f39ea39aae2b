//! The `Sidecar` resource, for sidecar proxies only (gateways ignore it): which one applies to a
//! workload, the outbound traffic policy it sets, and the egress hosts that limit which services
//! and VirtualServices the proxy imports (Istio's `SidecarScope`).
//!
//! Scoping is not blocking: a destination the Sidecar does not import is an unknown host, so it
//! follows the outbound policy (ALLOW_ANY passthrough, REGISTRY_ONLY blocked), as in Istio.
//!
//! An egress listener with a `port` imports only services that declare that port, and applies
//! only to traffic to that port; its `bind`/`captureMode` and the `ingress` listeners are turned
//! into listeners by [`crate::sidecar_listeners`].
//!
//! Not applied yet: `inboundConnectionPool`, ingress `tls` and `connectionPool`,
//! `outboundTrafficPolicy.egressProxy`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use sluice_api::networking::{self, Destination};
use sluice_api::{Diagnostic, Resource, Severity, Spec};

use crate::host::{self, HostIndex};
use crate::mesh::OutboundPolicy;
use crate::registry::{labels_subset, ExportTo, Service};
use crate::snapshot::{ProxyIdentity, ProxyKind};

/// Namespace part of an egress host meaning "any namespace".
const ANY_NAMESPACE: &str = "*";
/// Namespace part meaning "the proxy's own namespace".
const OWN_NAMESPACE: &str = ".";

/// The Sidecar that applies to one proxy, ready for import checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SidecarScope {
    /// `Sidecar ns/name`.
    pub source: Arc<str>,
    /// `outboundTrafficPolicy.mode`, overriding the mesh setting when present.
    pub outbound_policy: Option<OutboundPolicy>,
    /// One map per egress listener: namespace (`.` resolved to the proxy's, `*` for any, `~` for
    /// none) → lower-cased DNS names. A Sidecar without egress listeners imports `*/*`.
    listeners: Vec<BTreeMap<String, Vec<String>>>,
    /// Per egress listener (same order): the port a service must declare to be imported by
    /// it (Istio's `needsPortMatch`: the listener's port, unless it is `HTTP_PROXY`).
    port_match: Vec<Option<u16>>,
    /// The egress listeners as written (same order), for [`crate::sidecar_listeners`].
    #[serde(skip)]
    pub(crate) egress: Vec<networking::IstioEgressListener>,
    /// The ingress listeners as written.
    #[serde(skip)]
    pub(crate) ingress: Vec<networking::IstioIngressListener>,
    #[serde(skip)]
    index: ImportIndex,
}

/// `listeners`' hosts indexed per listener and namespace, so a service or VirtualService is
/// checked in time linear in its host names rather than in the number of egress hosts
/// (every service against every egress host made compile quadratic). Derived from
/// `listeners`, so neither compared nor printed.
#[derive(Clone, Default)]
struct ImportIndex(Arc<Vec<HashMap<String, HostIndex<()>>>>);

impl ImportIndex {
    fn new(listeners: &[BTreeMap<String, Vec<String>>]) -> Self {
        ImportIndex(Arc::new(
            listeners
                .iter()
                .map(|hosts| {
                    hosts
                        .iter()
                        .map(|(ns, names)| {
                            let mut index = HostIndex::default();
                            for name in names {
                                index.insert(name, ());
                            }
                            (ns.clone(), index)
                        })
                        .collect()
                })
                .collect(),
        ))
    }
}

impl PartialEq for ImportIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ImportIndex {}

impl std::fmt::Debug for ImportIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ImportIndex")
    }
}

impl SidecarScope {
    /// The scope Sidecar `res` gives proxies of namespace `proxy_ns` (its `.` hosts are
    /// theirs); `None` if `res` is not a Sidecar.
    pub fn of(res: &Resource, proxy_ns: &str) -> Option<SidecarScope> {
        match &res.spec {
            Spec::Sidecar(sc) => Some(SidecarScope::from_resource(res, sc, proxy_ns)),
            _ => None,
        }
    }

    fn from_resource(res: &Resource, sc: &networking::Sidecar, proxy_ns: &str) -> SidecarScope {
        let outbound_policy = sc.outbound_traffic_policy.as_ref().map(|p| {
            // The enum's zero value is REGISTRY_ONLY: `outboundTrafficPolicy: {}` blocks.
            match p.mode.as_deref() {
                Some(m) if m.eq_ignore_ascii_case("ALLOW_ANY") => OutboundPolicy::AllowAny,
                _ => OutboundPolicy::RegistryOnly,
            }
        });
        let mut listeners: Vec<BTreeMap<String, Vec<String>>> = sc
            .egress
            .iter()
            .map(|l| {
                let mut hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for h in &l.hosts {
                    // Validation refuses hosts without `/`; skip them if they get here anyway.
                    let Some((ns, name)) = h.split_once('/') else {
                        continue;
                    };
                    let ns = if ns == OWN_NAMESPACE { proxy_ns } else { ns };
                    hosts
                        .entry(ns.to_string())
                        .or_default()
                        .push(name.to_ascii_lowercase());
                }
                hosts
            })
            .collect();
        let mut port_match: Vec<Option<u16>> = sc.egress.iter().map(port_to_match).collect();
        if listeners.is_empty() {
            listeners.push(BTreeMap::from([(
                ANY_NAMESPACE.to_string(),
                vec!["*".to_string()],
            )]));
            port_match.push(None);
        }
        SidecarScope {
            source: format!("Sidecar {}", res.key()).into(),
            outbound_policy,
            index: ImportIndex::new(&listeners),
            listeners,
            port_match,
            egress: sc.egress.clone(),
            ingress: sc.ingress.clone(),
        }
    }

    /// The scope of egress listener `i` alone (Istio builds each listener from its own
    /// services and VirtualServices); `None` for no listener, which imports nothing.
    pub(crate) fn only_listener(&self, i: Option<usize>) -> SidecarScope {
        fn pick<T: Clone>(v: &[T], i: Option<usize>) -> Vec<T> {
            i.and_then(|i| v.get(i)).cloned().into_iter().collect()
        }
        let listeners: Vec<BTreeMap<String, Vec<String>>> = pick(&self.listeners, i);
        SidecarScope {
            source: self.source.clone(),
            outbound_policy: self.outbound_policy,
            index: ImportIndex::new(&listeners),
            port_match: pick(&self.port_match, i),
            listeners,
            egress: pick(&self.egress, i),
            ingress: Vec::new(),
        }
    }

    /// True if some egress listener imports `svc` (Istio's `selectServices`): hosts listed for
    /// the service's namespace decide when there are any, else hosts listed for `*`. The
    /// service's host must fall within an imported name (`*.example.com` imports
    /// `a.example.com` and `*.a.example.com`, not `example.com`).
    pub fn imports_service(&self, svc: &Service) -> bool {
        self.index
            .0
            .iter()
            .zip(&self.port_match)
            .any(|(hosts, port)| {
                if port.is_some_and(|p| svc.port(p).is_none()) {
                    return false;
                }
                let candidates = hosts
                    .get(svc.namespace.as_ref())
                    .or_else(|| hosts.get(ANY_NAMESPACE));
                candidates.is_some_and(|c| c.covers(&svc.hostname))
            })
    }

    /// True if some egress listener imports a VirtualService of namespace `vs_ns` with these
    /// (already fully qualified) hosts (Istio's `SelectVirtualServices`): one of its hosts
    /// intersects a name listed for `vs_ns` or for `*`.
    pub fn imports_virtual_service(&self, vs_ns: &str, vs_hosts: &[Arc<str>]) -> bool {
        self.index.0.iter().any(|hosts| {
            [vs_ns, ANY_NAMESPACE]
                .iter()
                .filter_map(|ns| hosts.get(*ns))
                .any(|index| vs_hosts.iter().any(|vh| index.any_intersecting(vh)))
        })
    }
}

/// The port a service must declare to be imported by egress listener `l`: its port, except
/// for `HTTP_PROXY` listeners (a generic HTTP proxy port) and unix sockets (port 0).
fn port_to_match(l: &networking::IstioEgressListener) -> Option<u16> {
    let port = l.port.as_ref()?;
    let http_proxy = port
        .protocol
        .as_deref()
        .is_some_and(|p| p.eq_ignore_ascii_case("HTTP_PROXY"));
    u16::try_from(port.number)
        .ok()
        .filter(|n| *n != 0 && !http_proxy)
}

/// The Sidecar that applies to `proxy`, with warnings about ambiguous ones. `resources` are in
/// creation order, so the first match is the oldest.
///
/// In the proxy's namespace, the oldest Sidecar whose `workloadSelector.labels` are all among the
/// proxy's labels; else the namespace's Sidecar without selector; else the one without selector
/// in the root namespace; else none. Gateways get none.
pub fn select(
    resources: &[Resource],
    proxy: &ProxyIdentity,
    root_ns: &str,
) -> (Option<SidecarScope>, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    if proxy.kind != ProxyKind::Sidecar {
        return (None, diagnostics);
    }
    let sidecars = || {
        resources.iter().filter_map(|r| match &r.spec {
            Spec::Sidecar(sc) => Some((r, sc)),
            _ => None,
        })
    };
    let mut chosen: Option<(&Resource, &networking::Sidecar)> = None;

    for (r, sc) in sidecars().filter(|(r, _)| r.meta.namespace == proxy.namespace) {
        let Some(sel) = &sc.workload_selector else {
            continue;
        };
        if !labels_subset(&sel.labels, &proxy.labels) {
            continue;
        }
        match chosen {
            None => chosen = Some((r, sc)),
            Some((older, _)) => diagnostics.push(Diagnostic::at(
                r,
                Severity::Warning,
                "spec.workloadSelector",
                format!(
                    "IST0110: this Sidecar and the older Sidecar {} both select the workload \
                     with labels {}; only the older one applies",
                    older.key(),
                    format_labels(&proxy.labels)
                ),
            )),
        }
    }

    let mut namespaces = vec![proxy.namespace.as_str()];
    if root_ns != proxy.namespace {
        namespaces.push(root_ns);
    }
    for ns in namespaces {
        let mut first: Option<(&Resource, &networking::Sidecar)> = None;
        for (r, sc) in
            sidecars().filter(|(r, sc)| r.meta.namespace == ns && sc.workload_selector.is_none())
        {
            match first {
                None => first = Some((r, sc)),
                Some((older, _)) => diagnostics.push(Diagnostic::at(
                    r,
                    Severity::Warning,
                    "spec",
                    format!(
                        "IST0111: namespace {ns} has more than one Sidecar without \
                         workloadSelector; the oldest, {}, applies and this one is ignored",
                        older.key()
                    ),
                )),
            }
        }
        if chosen.is_none() {
            chosen = first;
        }
    }

    let scope = chosen.map(|(r, sc)| SidecarScope::from_resource(r, sc, &proxy.namespace));
    (scope, diagnostics)
}

fn format_labels(labels: &networking::Labels) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

/// Services that the imported VirtualServices (bound to `mesh`, exported to the proxy's
/// namespace) route or mirror to, which Istio imports as well
/// (so a route never points at a service the Sidecar left out): a visible service of that host
/// in the proxy's namespace, else in the alphabetically first namespace that has one. Returns
/// `(hostname, namespace)` pairs.
pub fn virtual_service_destinations(
    scope: &SidecarScope,
    resources: &[Resource],
    visible: &[Arc<Service>],
    proxy_ns: &str,
) -> HashSet<(Arc<str>, Arc<str>)> {
    let mut by_host: HashMap<&str, Vec<&Arc<Service>>> = HashMap::new();
    for s in visible {
        by_host.entry(&s.hostname).or_default().push(s);
    }
    let mut out = HashSet::new();
    for h in imported_destination_hosts(scope, resources, proxy_ns) {
        let best = by_host
            .get(h.as_str())
            .into_iter()
            .flatten()
            .min_by_key(|s| (*s.namespace != *proxy_ns, s.namespace.clone()));
        if let Some(s) = best {
            out.insert((s.hostname.clone(), s.namespace.clone()));
        }
    }
    out
}

/// The VirtualServices a proxy of `proxy_ns` under `scope` imports: bound to `mesh`, exported
/// to its namespace, with a host its egress listeners import.
pub fn imported_virtual_services<'r>(
    scope: &'r SidecarScope,
    resources: &'r [Resource],
    proxy_ns: &'r str,
) -> impl Iterator<Item = (&'r Resource, &'r networking::VirtualService)> {
    resources.iter().filter_map(move |res| {
        let Spec::VirtualService(vs) = &res.spec else {
            return None;
        };
        let ns = res.meta.namespace.as_str();
        if !crate::snapshot::binds_to_mesh(&vs.gateways)
            || !ExportTo::parse(&vs.export_to, ns).visible_to(proxy_ns)
        {
            return None;
        }
        let hosts: Vec<Arc<str>> = vs
            .hosts
            .iter()
            .map(|h| Arc::from(host::resolve_short_name(h, ns)))
            .collect();
        scope
            .imports_virtual_service(ns, &hosts)
            .then_some((res, vs))
    })
}

/// The hosts (fully qualified) that the VirtualServices a proxy of `proxy_ns` under `scope`
/// imports route, mirror or forward to.
pub fn imported_destination_hosts(
    scope: &SidecarScope,
    resources: &[Resource],
    proxy_ns: &str,
) -> Vec<String> {
    imported_virtual_services(scope, resources, proxy_ns)
        .flat_map(|(res, vs)| {
            let ns = res.meta.namespace.as_str();
            destinations(vs).map(move |d| host::resolve_short_name(d.host_name(), ns))
        })
        .collect()
}

/// Every destination of a VirtualService: routes, mirrors, TLS and TCP routes.
fn destinations(vs: &networking::VirtualService) -> impl Iterator<Item = &Destination> {
    let http = vs.http.iter().flat_map(|r| {
        r.route
            .iter()
            .map(|d| &d.destination)
            .chain(r.mirror.as_deref())
            .chain(r.mirrors.iter().map(|m| &m.destination))
    });
    let tls = vs
        .tls
        .iter()
        .flat_map(|r| r.route.iter().map(|d| &d.destination));
    let tcp = vs
        .tcp
        .iter()
        .flat_map(|r| r.route.iter().map(|d| &d.destination));
    http.chain(tls).chain(tcp)
}

#[cfg(test)]
mod tests {
    use crate::host::HostIndex;

    /// Istio's `host.Name.SubsetOf`: every name `name` matches is matched by `pattern`. The
    /// pairwise form of [`HostIndex::covers`], which [`SidecarScope`] uses.
    fn subset_of(name: &str, pattern: &str) -> bool {
        match pattern.strip_prefix('*') {
            Some(suffix) => {
                let name = name.strip_prefix('*').unwrap_or(name);
                name.len() >= suffix.len()
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            None => !name.starts_with('*') && name.eq_ignore_ascii_case(pattern),
        }
    }

    #[test]
    fn the_index_covers_what_subset_of_accepts() {
        let names = [
            "a.example.com",
            "*.a.example.com",
            "*.example.com",
            "*",
            "example.com",
            "*.com",
            "HttpBin.org",
            "httpbin.org",
            "www.httpbin.org",
            "*foo.com",
            "foo.com",
        ];
        for pattern in names {
            let mut index = HostIndex::default();
            index.insert(&pattern.to_ascii_lowercase(), ());
            for name in names {
                assert_eq!(
                    index.covers(name),
                    subset_of(name, pattern),
                    "{name} in {pattern}"
                );
            }
        }
    }

    #[test]
    fn subset_of_follows_istio() {
        assert!(subset_of("a.example.com", "*.example.com"));
        assert!(subset_of("*.a.example.com", "*.example.com"));
        assert!(subset_of("*.example.com", "*.example.com"));
        assert!(subset_of("*.example.com", "*"));
        assert!(!subset_of("example.com", "*.example.com"));
        assert!(!subset_of("*.example.com", "a.example.com"));
        assert!(!subset_of("*.com", "*.example.com"));
        assert!(subset_of("HttpBin.org", "httpbin.org"));
    }
}
