//! The HTTP routes of `compile`: default routes per service port, the VirtualService `http`
//! rules that apply to this proxy, route destinations resolved to clusters, and the other names a
//! Host header may use for a service.

use super::*;

/// Other names Envoy's virtual hosts carry for a service (Istio's `generateVirtualHostDomains`):
/// for `name.ns.svc.cluster.local`, `name.ns.svc` and `name.ns` everywhere and `name` in the
/// proxy's own namespace; and each single-IP address (VIP) of a service.
pub(super) fn build_host_aliases(snap: &mut Snapshot) {
    let suffix = format!(".{}", host::CLUSTER_DOMAIN);
    let mut aliases: FxHashMap<Arc<str>, Arc<str>> = Default::default();
    let names = snap
        .services
        .iter()
        .map(|s| &s.hostname)
        .chain(snap.vhosts_exact.keys());
    for fqdn in names {
        let Some(short) = fqdn.strip_suffix(suffix.as_str()) else {
            continue;
        };
        let Some((name, ns)) = short.split_once('.') else {
            continue;
        };
        if name.is_empty() || ns.is_empty() || ns.contains('.') {
            continue;
        }
        let mut add = |alias: String| {
            aliases.entry(alias.into()).or_insert_with(|| fqdn.clone());
        };
        add(format!("{short}.svc"));
        add(short.to_string());
        if ns == snap.proxy.namespace {
            add(name.to_string());
        }
    }
    for svc in &snap.services {
        for net in &svc.addresses {
            if net.prefix_len() != net.max_prefix_len() {
                continue;
            }
            let alias = match net.addr() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            aliases
                .entry(alias.into())
                .or_insert_with(|| svc.hostname.clone());
        }
    }
    // A name that is itself a host keeps its own meaning.
    aliases.retain(|alias, _| {
        !snap.vhosts_exact.contains_key(alias) && !snap.services_exact.contains_key(alias)
    });
    snap.host_aliases = aliases;
}

pub(super) fn build_default_routes(snap: &mut Snapshot) {
    for (i, svc) in snap.services.iter().enumerate() {
        // `route_http` prefers a virtual host at least as specific as the service, and one
        // for the service's own host always is: the default route would never be used (Istio
        // builds none for a host with a VirtualService either). Skipping it keeps ~0.6 KiB
        // per routed service out of the snapshot.
        let shadowed = snap.vhosts_exact.contains_key(&svc.hostname)
            || snap
                .vhosts_wildcard
                .iter()
                .any(|v| v.domain == svc.hostname);
        if shadowed {
            continue;
        }
        for port in &svc.ports {
            let name = Cluster::name_for(port.number, None, &svc.hostname);
            let Some(cluster) = snap.clusters.get(name.as_str()) else {
                continue;
            };
            let rule = HttpRouteRule {
                name: Some("default".into()),
                source: svc.source.clone(),
                matches: Vec::new(),
                action: RouteAction::Forward(vec![WeightedTarget {
                    cluster: ClusterRef::Found(cluster.clone()),
                    weight: 100,
                    request_headers: HeaderOps::default(),
                    response_headers: HeaderOps::default(),
                }]),
                timeout: None,
                retry: RetryPolicy::default(),
                fault: None,
                mirrors: Vec::new(),
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
                rewrite: None,
                operation: crate::route::Operation::Fixed(
                    format!("{}:{}/*", svc.hostname, port.number).into(),
                ),
            };
            snap.default_routes.insert((i, port.number), Arc::new(rule));
        }
    }
}

/// True if a VirtualService (or one of its match blocks, via `gateways`) applies to sidecars.
pub(crate) fn binds_to_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

/// Which proxy a VirtualService's match blocks are compiled for.
#[derive(Clone, Copy)]
pub(super) enum Scope<'a> {
    /// Sidecars: blocks whose `gateways` are empty or include `mesh`, and whose `sourceLabels` /
    /// `sourceNamespace` select this proxy.
    Mesh,
    /// A gateway proxy, for these Gateways (`ns/name`): blocks that name one of them, or that
    /// name none and whose source selectors fit (Istio's `sourceMatchHTTP`).
    Gateways {
        names: &'a BTreeSet<String>,
        vs_namespace: &'a str,
        /// The VirtualService was generated from an Ingress (`route-semantics: ingress`).
        ingress: bool,
    },
}

impl Scope<'_> {
    pub(super) fn keeps(
        &self,
        snap: &Snapshot,
        gateways: &[String],
        source_labels: &Labels,
        source_ns: Option<&str>,
    ) -> bool {
        match self {
            Scope::Mesh => {
                binds_to_mesh(gateways) && applies_to_proxy(snap, source_labels, source_ns)
            }
            Scope::Gateways {
                names,
                vs_namespace,
                ..
            } => {
                if gateways.is_empty() {
                    applies_to_proxy(snap, source_labels, source_ns)
                } else {
                    gateways.iter().any(|g| {
                        gateway::resolve_gateway_name(g, vs_namespace)
                            .is_some_and(|n| names.contains(&n))
                    })
                }
            }
        }
    }

    fn ingress_semantics(&self) -> bool {
        matches!(self, Scope::Gateways { ingress: true, .. })
    }
}

pub(super) fn build_virtual_services(snap: &mut Snapshot, resources: &[Resource]) {
    for res in resources {
        let Spec::VirtualService(vs) = &res.spec else {
            continue;
        };
        if !binds_to_mesh(&vs.gateways)
            || !ExportTo::parse(&vs.export_to, &res.meta.namespace)
                .visible_to(&snap.proxy.namespace)
        {
            continue;
        }
        let ns = res.meta.namespace.as_str();
        let source: Arc<str> = format!("VirtualService {}", res.key()).into();
        let hosts: Vec<Arc<str>> = vs
            .hosts
            .iter()
            .map(|h| Arc::from(host::resolve_short_name(h, ns)))
            .collect();
        if snap
            .sidecar_scope
            .as_ref()
            .is_some_and(|sc| !sc.imports_virtual_service(ns, &hosts))
        {
            continue;
        }

        if !vs.http.is_empty() {
            let rules: Vec<Arc<HttpRouteRule>> = vs
                .http
                .iter()
                .enumerate()
                .filter_map(|(i, r)| compile_http_rule(snap, res, &source, i, r, Scope::Mesh))
                .map(Arc::new)
                .collect();
            for h in &hosts {
                let vhost = Arc::new(VirtualHost {
                    domain: h.clone(),
                    source: source.clone(),
                    rules: rules.clone(),
                });
                let existing = if h.starts_with('*') {
                    snap.vhosts_wildcard
                        .iter()
                        .find(|v| v.domain == *h)
                        .map(|v| v.source.clone())
                } else {
                    snap.vhosts_exact.get(h).map(|v| v.source.clone())
                };
                if let Some(owner) = existing {
                    // Sidecars do not merge hosts: the oldest VirtualService keeps it (IST0109).
                    snap.diagnostics.push(Diagnostic::at(
                        res,
                        Severity::Warning,
                        "spec.hosts",
                        format!("host {h} is already defined by {owner}, which is older; this VirtualService's http rules for it are ignored"),
                    ));
                    continue;
                }
                if h.starts_with('*') {
                    snap.vhosts_wildcard.push(vhost);
                } else {
                    snap.vhosts_exact.insert(h.clone(), vhost);
                }
            }
        }
        let tls = tls_stream_rules(snap, res, &source, &hosts, vs, Scope::Mesh, true);
        snap.tls_rules.extend(tls);
        let tcp = tcp_stream_rules(snap, res, &source, &hosts, vs, Scope::Mesh, true);
        snap.tcp_rules.extend(tcp);
    }
    snap.vhosts_wildcard
        .sort_by(|a, b| host::specificity(&a.domain, &b.domain));
}

/// Resolves a route destination to a cluster reference, as Istio's `GetDestinationCluster`: an
/// explicit port, else the service's only port, else the port the request arrived on.
///
/// References that cannot work are reported as warnings on `field` (the destination's path):
/// an unknown host, a subset no DestinationRule defines (503 NC), a subset that selects no
/// endpoint (503 UH).
pub(super) fn cluster_ref(
    snap: &mut Snapshot,
    res: &Resource,
    field: &str,
    dest: &Destination,
) -> (ClusterRef, Option<(String, u16)>) {
    let host = host::resolve_short_name(dest.host_name(), &res.meta.namespace);
    let subset = dest.subset.as_deref().filter(|s| !s.is_empty());
    if crate::ingress::unresolved_port(res, dest) {
        let port = dest
            .port
            .as_ref()
            .and_then(|p| p.name.as_deref())
            .unwrap_or("");
        let name = format!("outbound|{port}|{}|{host}", subset.unwrap_or(""));
        return (ClusterRef::Missing(name.into()), None);
    }
    let explicit_port = dest.port.as_ref().and_then(|p| port_u16(p.number));
    let svc = snap
        .services_exact
        .get(host.as_str())
        .and_then(|v| v.first())
        .map(|i| snap.services[*i].clone())
        .or_else(|| snap.services.iter().find(|s| *s.hostname == *host).cloned());
    let port = explicit_port.or_else(|| {
        svc.as_ref()
            .filter(|s| s.ports.len() == 1)
            .map(|s| s.ports[0].number)
    });
    let Some(svc) = svc else {
        let name = Cluster::name_for(port.unwrap_or(0), subset, &host);
        snap.diagnostics.push(Diagnostic::at(
            res,
            Severity::Warning,
            format!("{field}.host"),
            references::unknown_host_message(&host),
        ));
        return (ClusterRef::Missing(name.into()), port.map(|p| (host, p)));
    };
    if let Some(subset) = subset {
        let clusters: Vec<&Arc<Cluster>> = svc
            .ports
            .iter()
            .filter_map(|p| {
                snap.clusters
                    .get(Cluster::name_for(p.number, Some(subset), &host).as_str())
            })
            .collect();
        let message = match clusters.first() {
            None => Some(references::undefined_subset_message(&host, subset)),
            Some(c) if matches!(c.upstream(), UpstreamAddress::Endpoints(e) if e.is_empty()) => {
                Some(references::empty_subset_message(&host, subset))
            }
            Some(_) => None,
        };
        if let Some(message) = message {
            snap.diagnostics.push(Diagnostic::at(
                res,
                Severity::Warning,
                format!("{field}.subset"),
                message,
            ));
        }
    }
    match port {
        Some(p) => {
            let name = Cluster::name_for(p, subset, &host);
            match snap.clusters.get(name.as_str()) {
                Some(c) => (ClusterRef::Found(c.clone()), Some((host, p))),
                None => (ClusterRef::Missing(name.into()), Some((host, p))),
            }
        }
        None => {
            let map = svc
                .ports
                .iter()
                .filter_map(|p| {
                    let name = Cluster::name_for(p.number, subset, &host);
                    snap.clusters
                        .get(name.as_str())
                        .map(|c| (p.number, c.clone()))
                })
                .collect();
            (ClusterRef::ByListenerPort(map, host.into()), None)
        }
    }
}

fn compile_match(m: &networking::HttpMatchRequest) -> RequestMatch {
    let hdrs = |map: &BTreeMap<String, networking::StringMatch>| {
        map.iter()
            .filter_map(|(k, v)| {
                let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?;
                Some((name, StrMatcher::compile(v)))
            })
            .collect()
    };
    RequestMatch {
        uri: m.uri.as_ref().and_then(StrMatcher::compile),
        ignore_uri_case: m.ignore_uri_case,
        scheme: m.scheme.as_deref().and_then(StrMatcher::compile),
        method: m.method.as_deref().and_then(StrMatcher::compile),
        authority: m.authority.as_deref().and_then(StrMatcher::compile),
        headers: hdrs(&m.headers),
        without_headers: hdrs(&m.without_headers),
        query_params: m
            .query_params
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), StrMatcher::compile(v)?)))
            .collect(),
        port: port_u16(m.port),
    }
}

fn percent(p: Option<&networking::Percent>) -> f64 {
    p.map_or(0.0, |p| p.value.clamp(0.0, 100.0))
}

pub(super) fn compile_http_rule(
    snap: &mut Snapshot,
    res: &Resource,
    vs_source: &Arc<str>,
    index: usize,
    r: &HttpRoute,
    scope: Scope<'_>,
) -> Option<HttpRouteRule> {
    // Sized exactly: a Vec grows to four elements on its first push, and a snapshot holds one
    // of these per rule for as long as it serves (most rules have one match and one target).
    let mut matches = Vec::with_capacity(r.matches.len());
    for m in &r.matches {
        if scope.keeps(
            snap,
            &m.gateways,
            &m.source_labels,
            m.source_namespace.as_deref(),
        ) {
            let mut compiled = compile_match(m);
            if scope.ingress_semantics() {
                // Ingress prefixes are element-wise (Envoy `path_separated_prefix`), `/` aside.
                if let Some(StrMatcher::Prefix(p)) = &compiled.uri {
                    if p != "/" {
                        let trimmed = p.trim_end_matches('/').to_string();
                        compiled.uri = Some(StrMatcher::PathSeparatedPrefix(trimmed));
                    }
                }
            }
            matches.push(compiled);
        }
    }
    if !r.matches.is_empty() && matches.is_empty() {
        // Every match block is for other proxies.
        return None;
    }
    let mut single = None;
    let action = if let Some(d) = &r.direct_response {
        let body: Arc<[u8]> = match &d.body {
            Some(b) => match (&b.string, &b.bytes) {
                (Some(s), _) => s.as_bytes().into(),
                (None, Some(b64)) => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap_or_default()
                        .into()
                }
                _ => Arc::from(&[][..]),
            },
            None => Arc::from(&[][..]),
        };
        RouteAction::DirectResponse {
            status: u16::try_from(d.status).unwrap_or(500),
            body,
        }
    } else if let Some(rd) = &r.redirect {
        let derive = rd.derive_port.as_deref().unwrap_or("");
        RouteAction::Redirect(Box::new(Redirect {
            uri: rd.uri.clone(),
            prefix_rewrite: rd.prefix_rewrite.clone(),
            authority: rd.authority.clone(),
            scheme: rd.scheme.clone(),
            port: rd.port.and_then(port_u16),
            port_from_request: derive.eq_ignore_ascii_case("FROM_REQUEST_PORT"),
            port_from_protocol: derive.eq_ignore_ascii_case("FROM_PROTOCOL_DEFAULT"),
            code: rd
                .redirect_code
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(301),
        }))
    } else {
        let mut targets = Vec::with_capacity(r.route.len());
        for (j, d) in r.route.iter().enumerate() {
            let field = format!("spec.http[{index}].route[{j}].destination");
            let (cluster, host_port) = cluster_ref(snap, res, &field, &d.destination);
            if r.route.len() == 1 {
                single = host_port;
            }
            let headers = d.headers.as_ref();
            targets.push(WeightedTarget {
                cluster,
                // A single destination gets everything whatever its weight says.
                weight: if r.route.len() == 1 {
                    100
                } else {
                    d.weight.unwrap_or(0).max(0) as u32
                },
                request_headers: HeaderOps::compile(headers.and_then(|h| h.request.as_ref())),
                response_headers: HeaderOps::compile(headers.and_then(|h| h.response.as_ref())),
            });
        }
        RouteAction::Forward(targets)
    };
    let retry = match &r.retries {
        None => RetryPolicy::default(),
        Some(rt) => RetryPolicy {
            attempts: rt.attempts.max(0) as u32,
            per_try_timeout: rt.per_try_timeout.map(|d| d.0),
            retry_on: RetryOn::parse(rt.retry_on.as_deref().unwrap_or(
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            )),
        },
    };
    let fault = r.fault.as_ref().map(|f| Fault {
        delay: f.delay.as_ref().and_then(|d| {
            let pct = d
                .percentage
                .as_ref()
                .map(|p| p.value.clamp(0.0, 100.0))
                .or(d.percent.map(|p| f64::from(p.clamp(0, 100))));
            Some((d.fixed_delay?.0, pct.unwrap_or(0.0)))
        }),
        abort: f.abort.as_ref().and_then(|a| {
            Some((
                u16::try_from(a.http_status?).ok()?,
                percent(a.percentage.as_ref()),
            ))
        }),
    });
    let mut mirrors = Vec::new();
    if let Some(m) = &r.mirror {
        let pct = r
            .mirror_percentage
            .as_ref()
            .map(|p| p.value.clamp(0.0, 100.0))
            .or(r.mirror_percent.map(|p| f64::from(p.min(100))))
            .unwrap_or(100.0);
        mirrors.push(Mirror {
            target: cluster_ref(snap, res, &format!("spec.http[{index}].mirror"), m).0,
            percent: pct,
        });
    }
    for (k, m) in r.mirrors.iter().enumerate() {
        let pct = m
            .percentage
            .as_ref()
            .map_or(100.0, |p| p.value.clamp(0.0, 100.0));
        mirrors.push(Mirror {
            target: cluster_ref(
                snap,
                res,
                &format!("spec.http[{index}].mirrors[{k}].destination"),
                &m.destination,
            )
            .0,
            percent: pct,
        });
    }
    let rewrite = r.rewrite.as_ref().map(|rw| Rewrite {
        uri: rw.uri.clone(),
        authority: rw.authority.clone(),
        uri_regex: rw.uri_regex_rewrite.as_ref().and_then(|rr| {
            Some((
                sluice_api::validate::bounded_regex(&rr.pattern).ok()?,
                rr.rewrite.clone(),
            ))
        }),
    });
    let headers = r.headers.as_ref();
    let operation = operation_for(
        matches.first(),
        single.as_ref().map(|(h, p)| (h.as_str(), *p)),
        &res.meta.name,
    );
    Some(HttpRouteRule {
        name: r.name.as_deref().map(Arc::from),
        source: format!("{vs_source} http[{index}]").into(),
        matches,
        action,
        timeout: r.timeout.map(|d| d.0).filter(|d| !d.is_zero()),
        retry,
        fault: fault.map(Box::new),
        mirrors,
        request_headers: HeaderOps::compile(headers.and_then(|h| h.request.as_ref())),
        response_headers: HeaderOps::compile(headers.and_then(|h| h.response.as_ref())),
        rewrite: rewrite.map(Box::new),
        operation,
    })
}
