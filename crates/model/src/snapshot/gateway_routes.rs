//! The gateway half of `compile`: the servers of the Gateways this proxy serves, grouped by port,
//! and the VirtualService routes bound to them (merged across VirtualServices, catch-all routes
//! last), plus Kubernetes Ingresses translated into the same form.

use std::collections::HashSet;

use super::*;

/// The routes of one gateway port: virtual hosts of the HTTP servers (merged across
/// VirtualServices), and the `tls` / `tcp` rules of the others.
#[derive(Debug, Default)]
pub(super) struct GatewayRoutes {
    pub(super) vhosts_exact: FxHashMap<Arc<str>, Arc<VirtualHost>>,
    /// Wildcard virtual hosts, most specific first (`*` last).
    pub(super) vhosts_wildcard: Vec<Arc<VirtualHost>>,
    /// Short VirtualService hosts as written (`httpbin`) → the vhost domain they resolved to:
    /// clients outside the mesh reach a gateway with such names.
    pub(super) aliases: HashMap<Arc<str>, Arc<str>>,
    pub(super) tls_rules: Vec<StreamRule>,
    pub(super) tcp_rules: Vec<StreamRule>,
    /// `blackhole:<port>`: the virtual host name of a port no VirtualService binds to.
    pub(super) blackhole: Arc<str>,
}

impl GatewayRoutes {
    pub(super) fn vhost_for(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        let host = self.aliases.get(host).map_or(host, |d| d);
        self.vhosts_exact.get(host).or_else(|| {
            self.vhosts_wildcard
                .iter()
                .find(|v| host::matches(&v.domain, host))
        })
    }
}

/// A gateway virtual host being merged from several VirtualServices.
#[derive(Default)]
struct MergedVhost {
    domain: Arc<str>,
    sources: Vec<Arc<str>>,
    merged: HashSet<Arc<str>>,
    rules: Vec<Arc<HttpRouteRule>>,
}

/// A VirtualService visible to this gateway proxy, with what every port needs of it worked
/// out once.
struct GatewayVs<'r> {
    res: &'r Resource,
    vs: &'r networking::VirtualService,
    /// Every Gateway it names, as `ns/name`.
    names: BTreeSet<String>,
    /// Its hosts as written (lowercase) and as FQDNs.
    hosts: Vec<(String, Arc<str>)>,
    source: Arc<str>,
}

/// A VirtualService host that a server host admits, on one port: indexes of the
/// VirtualService (in resource order), of its host, of the server on the port and of the
/// server's host. Sorted, they give the order in which hosts, servers and server hosts were
/// compared pairwise before.
type Admitted = (usize, usize, usize, usize);

/// The narrower of two intersecting host patterns (server `*` + VS `a.com` → `a.com`).
fn narrower<'a>(a: &'a str, b: &'a str) -> &'a str {
    if host::specificity(a, b) == std::cmp::Ordering::Greater {
        b
    } else {
        a
    }
}

/// Every Gateway a VirtualService names (top level and match blocks), as `ns/name`.
fn vs_gateway_names(vs: &networking::VirtualService, ns: &str) -> BTreeSet<String> {
    vs.gateways
        .iter()
        .chain(
            vs.http
                .iter()
                .flat_map(|h| h.matches.iter())
                .flat_map(|m| &m.gateways),
        )
        .chain(
            vs.tls
                .iter()
                .flat_map(|t| t.matches.iter())
                .flat_map(|m| &m.gateways),
        )
        .chain(
            vs.tcp
                .iter()
                .flat_map(|t| t.matches.iter())
                .flat_map(|m| &m.gateways),
        )
        .filter_map(|g| gateway::resolve_gateway_name(g, ns))
        .collect()
}

/// Moves catch-all routes (every path, no other condition) after the others, keeping their
/// order, as Istio's `SortVHostRoutes` does for merged gateway virtual hosts. A rule with both
/// kinds of match blocks is split, as Envoy has one route per block.
fn catch_alls_last(rules: Vec<Arc<HttpRouteRule>>) -> Vec<Arc<HttpRouteRule>> {
    let mut head = Vec::with_capacity(rules.len());
    let mut tail = Vec::new();
    for rule in rules {
        if rule.matches.is_empty() || rule.matches.iter().all(RequestMatch::is_catch_all) {
            tail.push(rule);
        } else if rule.matches.iter().any(RequestMatch::is_catch_all) {
            let (all, some): (Vec<_>, Vec<_>) = rule
                .matches
                .iter()
                .cloned()
                .partition(RequestMatch::is_catch_all);
            let mut specific = (*rule).clone();
            specific.matches = some;
            let mut catch_all = (*rule).clone();
            catch_all.matches = all;
            head.push(Arc::new(specific));
            tail.push(Arc::new(catch_all));
        } else {
            head.push(rule);
        }
    }
    head.extend(tail);
    head
}

/// Gateway proxies: servers by port, then per port the VirtualServices bound to its servers.
pub(super) fn build_gateway(snap: &mut Snapshot, resources: &[Resource]) {
    let first_diagnostic = snap.diagnostics.len();
    let (proxy_ns, labels) = (snap.proxy.namespace.clone(), snap.proxy.labels.clone());
    snap.gateway_ports = gateway::build_ports(resources, &proxy_ns, &labels, &mut snap.diagnostics);
    let known = references::known_gateways(resources);
    let served: BTreeSet<&str> = snap
        .gateway_ports
        .iter()
        .flat_map(|p| p.servers.iter())
        .map(|s| s.gateway.as_ref())
        .collect();
    let mut vss = Vec::new();
    for res in resources {
        let Spec::VirtualService(vs) = &res.spec else {
            continue;
        };
        let ns = res.meta.namespace.as_str();
        let names = vs_gateway_names(vs, ns);
        // A VirtualService naming a Gateway that does not exist, reported by the proxies it
        // would otherwise concern (those serving one of its other Gateways).
        if names.iter().any(|n| served.contains(n.as_str())) {
            references::check_unknown_gateways(res, vs, &known, &mut snap.diagnostics);
        }
        if !ExportTo::parse(&vs.export_to, ns).visible_to(&snap.proxy.namespace) {
            continue;
        }
        let hosts = vs
            .hosts
            .iter()
            .map(|h| {
                (
                    h.to_ascii_lowercase(),
                    Arc::from(host::resolve_short_name(h, ns)),
                )
            })
            .collect();
        vss.push(GatewayVs {
            res,
            vs,
            names,
            hosts,
            source: format!("VirtualService {}", res.key()).into(),
        });
    }
    let ports = snap.gateway_ports.clone();
    let admitted = admitted_hosts(&ports, &vss);
    for (port, admitted) in ports.iter().zip(&admitted) {
        let routes = build_gateway_port(snap, port, &vss, admitted);
        snap.gateway_routes.insert(port.number, routes);
    }
    // Rules bound on several ports are compiled once per port; report their problems once.
    let mut seen = HashSet::new();
    let mut i = 0;
    snap.diagnostics.retain(|d| {
        i += 1;
        i <= first_diagnostic || seen.insert(d.to_string())
    });
}

/// Per port, every VirtualService host that one of its servers admits ([`GatewayHost::admits`]):
/// the server hosts are indexed by Gateway and namespace restriction, so each VirtualService
/// host is compared only with the server hosts that admit it.
fn admitted_hosts(ports: &[GatewayPort], vss: &[GatewayVs<'_>]) -> Vec<Vec<Admitted>> {
    // (Gateway, namespace a server host is restricted to) → server hosts: (port, server, host).
    type ServerHosts = host::HostIndex<(usize, usize, usize)>;
    let mut index: HashMap<(&str, Option<&str>), ServerHosts> = HashMap::new();
    for (p, port) in ports.iter().enumerate() {
        for (s, server) in port.servers.iter().enumerate() {
            for (h, gh) in server.hosts.iter().enumerate() {
                index
                    .entry((&server.gateway, gh.namespace.as_deref()))
                    .or_default()
                    .insert(&gh.host, (p, s, h));
            }
        }
    }
    let mut out = vec![Vec::new(); ports.len()];
    for (v, gvs) in vss.iter().enumerate() {
        let ns = gvs.res.meta.namespace.as_str();
        for name in &gvs.names {
            for key in [(name.as_str(), None), (name.as_str(), Some(ns))] {
                let Some(servers) = index.get(&key) else {
                    continue;
                };
                for (h, (_, fqdn)) in gvs.hosts.iter().enumerate() {
                    servers.visit_intersecting(fqdn, |&(p, s, gh)| {
                        out[p].push((v, h, s, gh));
                        true
                    });
                }
            }
        }
    }
    for list in &mut out {
        list.sort_unstable();
        list.dedup();
    }
    out
}

fn build_gateway_port(
    snap: &mut Snapshot,
    port: &GatewayPort,
    vss: &[GatewayVs<'_>],
    admitted: &[Admitted],
) -> GatewayRoutes {
    let mut routes = GatewayRoutes {
        blackhole: format!("blackhole:{}", port.number).into(),
        ..GatewayRoutes::default()
    };
    let port_gateways: HashSet<&str> = port.servers.iter().map(|s| &*s.gateway).collect();
    // Virtual hosts in the order their domains first appear.
    let mut vhosts: Vec<MergedVhost> = Vec::new();
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    for pairs in admitted.chunk_by(|a, b| a.0 == b.0) {
        let Some(&(v, ..)) = pairs.first() else {
            continue;
        };
        let GatewayVs {
            res,
            vs,
            names,
            hosts,
            source,
        } = &vss[v];
        let ns = res.meta.namespace.as_str();
        let scope_names: BTreeSet<String> = names
            .iter()
            .filter(|n| port_gateways.contains(n.as_str()))
            .cloned()
            .collect();
        let scope = Scope::Gateways {
            names: &scope_names,
            vs_namespace: ns,
            ingress: res
                .meta
                .annotations
                .get(crate::ingress::ROUTE_SEMANTICS_ANNOTATION)
                .is_some_and(|v| v == "ingress"),
        };
        let resolved: Vec<Arc<str>> = hosts.iter().map(|(_, h)| h.clone()).collect();

        if !vs.http.is_empty() {
            let mut domains: Vec<(Arc<str>, Option<&str>)> = Vec::new();
            let mut seen: HashSet<Arc<str>> = HashSet::new();
            for &(_, h, s, g) in pairs {
                let server = &port.servers[s];
                if !server.serves_http() {
                    continue;
                }
                let (written, fqdn) = &hosts[h];
                let domain: Arc<str> = Arc::from(narrower(&server.hosts[g].host, fqdn));
                let alias =
                    (domain == *fqdn && written.as_str() != &**fqdn).then_some(written.as_str());
                if seen.insert(domain.clone()) {
                    domains.push((domain, alias));
                }
            }
            if !domains.is_empty() {
                let rules: Vec<Arc<HttpRouteRule>> = vs
                    .http
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| compile_http_rule(snap, res, source, i, r, scope))
                    .map(Arc::new)
                    .collect();
                for (domain, alias) in domains {
                    let at = *index.entry(domain.clone()).or_insert_with(|| {
                        vhosts.push(MergedVhost {
                            domain: domain.clone(),
                            ..MergedVhost::default()
                        });
                        vhosts.len() - 1
                    });
                    let entry = &mut vhosts[at];
                    if entry.merged.insert(source.clone()) {
                        entry.sources.push(source.clone());
                        entry.rules.extend(rules.iter().cloned());
                    }
                    if let Some(a) = alias {
                        routes
                            .aliases
                            .entry(Arc::from(a))
                            .or_insert_with(|| domain.clone());
                    }
                }
            }
        }

        let server_of = |&(_, _, s, _): &Admitted| &port.servers[s];
        if pairs.iter().any(|a| server_of(a).passes_tls_through()) {
            let rules = tls_stream_rules(snap, res, source, &resolved, vs, scope, false);
            routes.tls_rules.extend(rules);
        }
        if pairs.iter().any(|a| {
            let s = server_of(a);
            !s.serves_http() && !s.passes_tls_through()
        }) {
            let rules = tcp_stream_rules(snap, res, source, &resolved, vs, scope, false);
            routes.tcp_rules.extend(rules);
        }
    }
    for MergedVhost {
        domain,
        sources,
        rules,
        ..
    } in vhosts
    {
        let vhost = Arc::new(VirtualHost {
            domain: domain.clone(),
            source: sources.join(", ").into(),
            rules: catch_alls_last(rules),
        });
        if domain.starts_with('*') {
            routes.vhosts_wildcard.push(vhost);
        } else {
            routes.vhosts_exact.insert(domain, vhost);
        }
    }
    routes
        .vhosts_wildcard
        .sort_by(|a, b| host::specificity(&a.domain, &b.domain));
    let exact = &routes.vhosts_exact;
    routes.aliases.retain(|alias, _| !exact.contains_key(alias));
    routes
}
