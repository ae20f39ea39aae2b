//! The clusters of `compile`: one per service port and DestinationRule subset, with their
//! endpoints, traffic policy and TLS (DestinationRule TLS, or auto mTLS with the peers' expected
//! identities).

use super::*;

/// The label Istio's injector puts on workloads with a sidecar; auto mTLS sends ISTIO_MUTUAL
/// only to endpoints that carry it.
pub const TLS_MODE_LABEL: (&str, &str) = ("security.istio.io/tlsMode", "istio");

/// The trust domain of the SPIFFE identities sluice expects (Istio's default).
pub const TRUST_DOMAIN: &str = "cluster.local";

/// `enableAutoMtls` of the mesh config (default true).
fn auto_mtls_enabled(resources: &[Resource]) -> bool {
    resources
        .iter()
        .find_map(|r| match &r.spec {
            Spec::ConfigMap {
                mesh: Some(mesh), ..
            } if (r.meta.namespace.as_str(), r.meta.name.as_str())
                == crate::mesh::MESH_CONFIGMAP =>
            {
                mesh.enable_auto_mtls
            }
            _ => None,
        })
        .unwrap_or(true)
}

/// Service accounts of workloads by `(namespace, address)`: WorkloadEntries and ServiceEntry
/// endpoints that name one.
fn service_accounts(resources: &[Resource]) -> HashMap<(String, String), String> {
    let mut out = HashMap::new();
    for r in resources {
        let entries: Vec<&networking::WorkloadEntry> = match &r.spec {
            Spec::WorkloadEntry(we) => vec![we],
            Spec::ServiceEntry(se) => se.endpoints.iter().collect(),
            _ => continue,
        };
        for we in entries {
            if let Some(sa) = we.service_account.as_deref().filter(|s| !s.is_empty()) {
                out.entry((r.meta.namespace.clone(), we.address.clone()))
                    .or_insert_with(|| sa.to_string());
            }
        }
    }
    out
}

/// The identities ISTIO_MUTUAL expects from `endpoints` of `svc`: each endpoint's SPIFFE ID
/// (`spiffe://cluster.local/ns/NS/sa/SA`, service account `default` when none is known), plus
/// the ServiceEntry's `subjectAltNames`; sorted, without duplicates.
fn expected_identities(
    svc: &Service,
    endpoints: &[registry::Endpoint],
    accounts: &HashMap<(String, String), String>,
    se_sans: &[String],
) -> Vec<String> {
    let mut out: BTreeSet<String> = se_sans.iter().cloned().collect();
    for ep in endpoints {
        let key = (svc.namespace.to_string(), ep.address.to_string());
        let sa = accounts.get(&key).map_or("default", String::as_str);
        out.insert(format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{sa}",
            svc.namespace
        ));
    }
    out.into_iter().collect()
}

/// The DestinationRules visible to the proxy, by namespace and host pattern, indexed once per
/// compile (looking them up by scanning every resource for every service was quadratic).
struct DestinationRules<'a> {
    by_namespace: HashMap<&'a str, host::HostMap<(&'a Resource, &'a networking::DestinationRule)>>,
}

impl<'a> DestinationRules<'a> {
    fn new(resources: &'a [Resource], proxy: &ProxyIdentity) -> Self {
        let mut by_namespace: HashMap<&str, host::HostMap<_>> = HashMap::new();
        for r in resources {
            let Spec::DestinationRule(dr) = &r.spec else {
                continue;
            };
            let visible = ExportTo::parse(&dr.export_to, &r.meta.namespace)
                .visible_to(&proxy.namespace)
                && dr.workload_selector.as_ref().is_none_or(|sel| {
                    r.meta.namespace == proxy.namespace
                        && labels_subset(&sel.match_labels, &proxy.labels)
                });
            if visible {
                by_namespace
                    .entry(r.meta.namespace.as_str())
                    .or_default()
                    .insert(
                        &host::resolve_short_name(&dr.host, &r.meta.namespace),
                        (r, &**dr),
                    );
            }
        }
        DestinationRules { by_namespace }
    }

    /// The rules for `svc`: those of the most specific matching host, in the first namespace
    /// that has any (the proxy's, the service's, the root namespace), merged oldest first.
    fn for_service(
        &self,
        proxy: &ProxyIdentity,
        root_ns: &str,
        svc: &Service,
    ) -> (MergedRule<'a>, Option<&'a Resource>) {
        let namespaces = [proxy.namespace.as_str(), svc.namespace.as_ref(), root_ns];
        for ns in namespaces {
            let Some(rules) = self
                .by_namespace
                .get(ns)
                .and_then(|m| m.most_specific(&svc.hostname))
            else {
                continue;
            };
            let mut merged = MergedRule::default();
            for (r, dr) in rules {
                merged.merge(format!("DestinationRule {}", r.key()), dr);
            }
            return (merged, rules.first().map(|(r, _)| *r));
        }
        (MergedRule::default(), None)
    }
}

/// Most clusters one service gets: its ports × (1 + the subsets of its DestinationRule). Each
/// resource alone is linear, but a DestinationRule with thousands of subsets for a host with
/// thousands of ports would make millions of clusters; subsets past the bound are not served
/// (requests routed to them get 503 NC, as for an undefined subset) and a diagnostic says so.
pub const MAX_CLUSTERS_PER_SERVICE: usize = 16_384;

/// The endpoints of one service that each subset selects, computed once per distinct selector
/// through a label → endpoints index (a scan per subset per port was cubic).
struct SubsetEndpoints<'s> {
    all: &'s Arc<[registry::Endpoint]>,
    index: Option<HashMap<(&'s str, &'s str), Vec<usize>>>,
    selected: HashMap<&'s Labels, Arc<[registry::Endpoint]>>,
}

impl<'s> SubsetEndpoints<'s> {
    fn new(all: &'s Arc<[registry::Endpoint]>) -> Self {
        SubsetEndpoints {
            all,
            index: None,
            selected: HashMap::new(),
        }
    }

    fn select(&mut self, selector: &'s Labels) -> Arc<[registry::Endpoint]> {
        if selector.is_empty() {
            return self.all.clone();
        }
        let all = self.all;
        let index = self.index.get_or_insert_with(|| {
            let mut index: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
            for (i, ep) in all.iter().enumerate() {
                for (k, v) in &ep.labels {
                    index.entry((k.as_str(), v.as_str())).or_default().push(i);
                }
            }
            index
        });
        self.selected
            .entry(selector)
            .or_insert_with(|| {
                // The endpoints carrying the selector's rarest label are the only candidates.
                let rarest = selector
                    .iter()
                    .map(|(k, v)| {
                        index
                            .get(&(k.as_str(), v.as_str()))
                            .map_or(&[][..], Vec::as_slice)
                    })
                    .min_by_key(|list| list.len())
                    .unwrap_or(&[]);
                rarest
                    .iter()
                    .map(|&i| &all[i])
                    .filter(|ep| labels_subset(selector, &ep.labels))
                    .cloned()
                    .collect()
            })
            .clone()
    }
}

/// A workload's PeerAuthentication mode, and its port-level overrides.
type PeerAuthDecision = (
    crate::security::MtlsMode,
    HashMap<u16, crate::security::MtlsMode>,
);

/// PeerAuthentication decisions for endpoint labels, computed once per distinct label set.
struct PeerAuthCache<'r> {
    resources: &'r [Resource],
    root_ns: &'r str,
    by_labels: HashMap<(Arc<str>, Labels), PeerAuthDecision>,
}

impl<'r> PeerAuthCache<'r> {
    fn get(&mut self, namespace: &Arc<str>, labels: &Labels) -> &PeerAuthDecision {
        let (resources, root_ns) = (self.resources, self.root_ns);
        self.by_labels
            .entry((namespace.clone(), labels.clone()))
            .or_insert_with(|| {
                crate::security::peer_authentication(resources, namespace, labels, root_ns)
            })
    }
}

pub(super) fn build_clusters(snap: &mut Snapshot, resources: &[Resource]) {
    let root_ns = snap.mesh.root_namespace.clone();
    let auto_mtls = auto_mtls_enabled(resources);
    let accounts = service_accounts(resources);
    let rules = DestinationRules::new(resources, &snap.proxy);
    let se_sans: HashMap<String, &[String]> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::ServiceEntry(se) => Some((
                format!("ServiceEntry {}", r.key()),
                se.subject_alt_names.as_slice(),
            )),
            _ => None,
        })
        .rev()
        .collect();
    let peer_resources: Vec<Resource> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::PeerAuthentication(_)))
        .cloned()
        .collect();
    let mut peer_auth = PeerAuthCache {
        resources: &peer_resources,
        root_ns: &root_ns,
        by_labels: HashMap::new(),
    };
    let services = snap.services.clone();
    for svc in &services {
        let (rule, rule_resource) = rules.for_service(&snap.proxy, &root_ns, svc);
        let se_sans: &[String] = se_sans.get(svc.source.as_ref()).copied().unwrap_or(&[]);
        let policy_source: Option<Arc<str>> =
            (!rule.sources.is_empty()).then(|| rule.sources.join(", ").into());
        let mut selections = SubsetEndpoints::new(&svc.endpoints);
        let ports = svc.ports.len().max(1);
        let served_subsets = (MAX_CLUSTERS_PER_SERVICE / ports)
            .saturating_sub(1)
            .min(rule.subsets.len());
        if let Some(dr) = rule_resource.filter(|_| served_subsets < rule.subsets.len()) {
            snap.diagnostics.push(Diagnostic::at(
                dr,
                Severity::Warning,
                "spec.subsets",
                format!(
                    "{} subsets for the {} ports of {} make more than {MAX_CLUSTERS_PER_SERVICE} clusters; only the first {served_subsets} subsets are served",
                    rule.subsets.len(),
                    svc.ports.len(),
                    svc.hostname
                ),
            ));
        }
        let subsets =
            std::iter::once(None).chain(rule.subsets[..served_subsets].iter().map(|s| Some(*s)));
        for subset in subsets {
            let endpoints = match subset {
                Some(s) => selections.select(&s.labels),
                None => svc.endpoints.clone(),
            };
            let subset_name = subset.map(|s| s.name.as_str());
            let identities = std::cell::OnceCell::new();
            let identities = || {
                identities
                    .get_or_init(|| expected_identities(svc, &endpoints, &accounts, se_sans))
                    .clone()
            };
            let auto_mtls_ok = AutoMtls::of(auto_mtls, svc, &endpoints, &mut peer_auth);
            let tunnel_settings = rule.tunnel_for_subset(subset);
            if let (Some(t), Some(dr)) = (tunnel_settings, rule_resource) {
                if t.protocol.as_deref() == Some("POST") {
                    snap.diagnostics.push(Diagnostic::at(
                        dr,
                        Severity::Warning,
                        "spec.trafficPolicy.tunnel.protocol",
                        "SLU0004: tunnel protocol `POST` is valid Istio config, but sluice tunnels \
                         with CONNECT only: streams to this host are sent in a CONNECT request"
                            .to_string(),
                    ));
                }
            }
            let tunnel =
                tunnel_settings.map(|t| Arc::new(crate::cluster::Tunnel::from_settings(t)));
            for port in &svc.ports {
                let name: Arc<str> =
                    Cluster::name_for(port.number, subset_name, &svc.hostname).into();
                let policy = rule.policy_for_subset(port.number, subset);
                let tls = match policy.tls {
                    // The DestinationRule decides, DISABLE included. ISTIO_MUTUAL without
                    // `subjectAltNames` expects the endpoints' identities (Istio's
                    // `buildAutoMtlsSettings`: the user's SANs replace the service accounts).
                    Some(settings) => UpstreamTls::from_settings(settings).map(|mut t| {
                        if t.istio_mutual && t.subject_alt_names.is_empty() {
                            t.subject_alt_names = identities();
                        }
                        t
                    }),
                    None if auto_mtls_ok.applies(svc, port, &endpoints, &mut peer_auth) => {
                        Some(UpstreamTls::istio_mutual(identities()))
                    }
                    None => None,
                }
                .map(Arc::new);
                let limits =
                    PoolLimits::from_settings(policy.connection_pool, snap.mesh.connect_timeout);
                let upstream_protocol =
                    UpstreamProtocol::for_port(port.protocol, &limits, snap.proxy.kind);
                let outlier = policy.outlier_detection.map(OutlierPolicy::from_settings);
                // `zoneAwareLbSetting` replaces locality load balancing in Istio; sluice does
                // not implement it (SLU0004), so such a cluster keeps plain balancing.
                let lb_settings = policy.load_balancer;
                let plan = if lb_settings.is_some_and(|lb| lb.zone_aware_lb_setting.is_some()) {
                    crate::policy::LocalityPlan::default()
                } else {
                    crate::policy::locality_plan(
                        lb_settings.and_then(|lb| lb.locality_lb_setting.as_ref()),
                        outlier.is_some(),
                        &snap.proxy.labels,
                        &endpoints,
                    )
                };
                let cluster = Cluster {
                    name: name.clone(),
                    service: svc.clone(),
                    port: port.clone(),
                    subset: subset_name.map(Arc::from),
                    endpoints: plan.endpoints.map_or_else(|| endpoints.clone(), Arc::from),
                    priorities: plan.priorities.map(Arc::from),
                    tls,
                    connect_timeout: limits.connect_timeout,
                    lb: LbPolicy::from_settings(policy.load_balancer),
                    limits,
                    outlier,
                    policy_source: policy_source.clone(),
                    upstream_protocol,
                    tunnel: tunnel.clone(),
                };
                // The oldest service wins a duplicate host:port, as in Istio's registry merge.
                snap.clusters
                    .entry(name)
                    .or_insert_with(|| Arc::new(cluster));
            }
        }
    }
}

/// Whether auto mTLS applies to a cluster without DestinationRule TLS (Istio's
/// `buildAutoMtlsSettings`): a mesh-internal service whose endpoints all run a sidecar (the
/// `security.istio.io/tlsMode: istio` label), none of which disables mTLS with a
/// PeerAuthentication. Decided once per set of endpoints, unless a PeerAuthentication sets
/// port-level modes, which must then be looked up per port.
enum AutoMtls {
    Never,
    Always,
    PerPort,
}

impl AutoMtls {
    fn of(
        enabled: bool,
        svc: &Service,
        endpoints: &[registry::Endpoint],
        peer_auth: &mut PeerAuthCache<'_>,
    ) -> AutoMtls {
        let (key, value) = TLS_MODE_LABEL;
        if !enabled
            || svc.mesh_external
            || endpoints.is_empty()
            || !endpoints
                .iter()
                .all(|ep| ep.labels.get(key).is_some_and(|v| v == value))
        {
            return AutoMtls::Never;
        }
        let mut per_port = false;
        for ep in endpoints {
            let (mode, ports) = peer_auth.get(&svc.namespace, &ep.labels);
            if !ports.is_empty() {
                per_port = true;
            } else if *mode == crate::security::MtlsMode::Disable {
                return AutoMtls::Never;
            }
        }
        if per_port {
            AutoMtls::PerPort
        } else {
            AutoMtls::Always
        }
    }

    fn applies(
        &self,
        svc: &Service,
        port: &registry::ServicePort,
        endpoints: &[registry::Endpoint],
        peer_auth: &mut PeerAuthCache<'_>,
    ) -> bool {
        match self {
            AutoMtls::Never => false,
            AutoMtls::Always => true,
            AutoMtls::PerPort => endpoints.iter().all(|ep| {
                let (mode, ports) = peer_auth.get(&svc.namespace, &ep.labels);
                let target = ep
                    .ports
                    .get(port.name.as_ref())
                    .copied()
                    .or(port.target_port)
                    .unwrap_or(port.number);
                ports.get(&target).copied().unwrap_or(*mode) != crate::security::MtlsMode::Disable
            }),
        }
    }
}
