//! The half of `compile` about this workload and its peers: the security policies that apply to
//! it, its inbound ports, and the workloads the registry knows by address.

use super::*;

/// AuthorizationPolicies and RequestAuthentications for this proxy (sidecars and gateways alike:
/// a gateway is a workload of its namespace), and PeerAuthentication for sidecars (Istio does not apply it to gateways,
/// which stay PERMISSIVE).
pub(super) fn build_security(snap: &mut Snapshot, resources: &[Resource]) {
    let root = snap.mesh.root_namespace.clone();
    let (authz, diags) = crate::security::Authorization::compile(
        resources,
        &snap.proxy.namespace,
        &snap.proxy.labels,
        &root,
    );
    snap.authorization = authz;
    snap.diagnostics.extend(diags);
    let (authn, diags) = crate::jwt::RequestAuthentication::compile(
        resources,
        &snap.proxy.namespace,
        &snap.proxy.labels,
        &root,
    );
    snap.request_authentication = authn;
    snap.diagnostics.extend(diags);
    if snap.proxy.kind == ProxyKind::Sidecar {
        let (mode, ports) = crate::security::peer_authentication(
            resources,
            &snap.proxy.namespace,
            &snap.proxy.labels,
            &root,
        );
        snap.mtls_mode = mode;
        snap.mtls_ports = ports;
    }
}

/// Workloads by IP: every WorkloadEntry (any namespace), then `Endpoints` addresses and
/// ServiceEntry endpoints with labels, so telemetry can name a peer.
pub(super) fn build_workloads(snap: &mut Snapshot, resources: &[Resource]) {
    let entries = registry::workload_entries(resources);
    for w in &entries {
        let Some(ip) = w.ip() else {
            continue;
        };
        let workload = Workload {
            name: w.resource.meta.name.as_str().into(),
            namespace: w.resource.meta.namespace.as_str().into(),
            labels: w.labels.clone(),
            service_account: w
                .entry
                .service_account
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(Arc::from),
        };
        snap.workloads
            .entry(ip)
            .or_insert_with(|| Arc::new(workload));
    }
    let named = |labels: &Labels, ip: IpAddr| -> Arc<str> {
        labels
            .get("app")
            .map_or_else(|| Arc::from(ip.to_string()), |a| Arc::from(a.as_str()))
    };
    for r in resources {
        match &r.spec {
            Spec::Endpoints(subsets) => {
                for addr in subsets.iter().flat_map(|s| s.addresses.iter()) {
                    let Ok(ip) = addr.ip.parse::<IpAddr>() else {
                        continue;
                    };
                    snap.workloads.entry(ip).or_insert_with(|| {
                        let labels = Labels::new();
                        Arc::new(Workload {
                            name: named(&labels, ip),
                            namespace: r.meta.namespace.as_str().into(),
                            labels,
                            service_account: None,
                        })
                    });
                }
            }
            Spec::ServiceEntry(se) => {
                for ep in se.endpoints.iter().filter(|e| !e.labels.is_empty()) {
                    let Ok(ip) = ep.address.parse::<IpAddr>() else {
                        continue;
                    };
                    snap.workloads.entry(ip).or_insert_with(|| {
                        Arc::new(Workload {
                            name: named(&ep.labels, ip),
                            namespace: r.meta.namespace.as_str().into(),
                            labels: ep.labels.clone(),
                            service_account: ep.service_account.as_deref().map(Arc::from),
                        })
                    });
                }
            }
            _ => {}
        }
    }
}

/// The ports of this workload that services selecting it target: Kubernetes Services in the
/// proxy's namespace whose `selector` matches the proxy's labels, and MESH_INTERNAL
/// ServiceEntries in the proxy's namespace whose `workloadSelector` does.
pub(super) fn build_inbound_ports(
    snap: &mut Snapshot,
    resources: &[Resource],
    services: &[Arc<Service>],
) {
    let proxy = &snap.proxy;
    for r in resources {
        if r.meta.namespace != proxy.namespace {
            continue;
        }
        let (source, selects) = match &r.spec {
            Spec::Service(spec) => (
                format!("Service {}", r.key()),
                !spec.selector.is_empty() && labels_subset(&spec.selector, &proxy.labels),
            ),
            Spec::ServiceEntry(se) => (
                format!("ServiceEntry {}", r.key()),
                se.workload_selector
                    .as_ref()
                    .is_some_and(|sel| labels_subset(&sel.labels, &proxy.labels))
                    && se
                        .location
                        .as_deref()
                        .is_some_and(|l| l.eq_ignore_ascii_case("MESH_INTERNAL")),
            ),
            _ => continue,
        };
        if !selects {
            continue;
        }
        for svc in services.iter().filter(|s| *s.source == *source) {
            for port in &svc.ports {
                let target = port.target_port.unwrap_or(port.number);
                snap.inbound_ports
                    .entry(target)
                    .or_insert_with(|| InboundPort {
                        cluster_name: format!("inbound|{target}||").into(),
                        protocol: port.protocol,
                        service: Some(svc.clone()),
                        endpoint: Default::default(),
                    });
            }
        }
    }
}
