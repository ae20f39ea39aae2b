//! The TLS and TCP routes of `compile`: VirtualService `tls` and `tcp` rules, matched by SNI,
//! port, destination subnet and source, for sidecars and gateways.

use super::*;

/// A VirtualService's `tls` rules for this proxy. Gateways ignore `destinationSubnets`
/// (`with_subnets: false`): a gateway routes by SNI and port only.
pub(super) fn tls_stream_rules(
    snap: &mut Snapshot,
    res: &Resource,
    source: &str,
    hosts: &[Arc<str>],
    vs: &networking::VirtualService,
    scope: Scope<'_>,
    with_subnets: bool,
) -> Vec<StreamRule> {
    let mut out = Vec::new();
    for (i, r) in vs.tls.iter().enumerate() {
        let matches = r
            .matches
            .iter()
            .map(|m| L4Match {
                sni_hosts: &m.sni_hosts,
                destination_subnets: if with_subnets {
                    &m.destination_subnets
                } else {
                    &[]
                },
                port: m.port,
                source_labels: &m.source_labels,
                source_namespace: m.source_namespace.as_deref(),
                gateways: &m.gateways,
            })
            .collect();
        out.extend(compile_stream_rule(
            snap,
            res,
            source,
            hosts,
            format!("tls[{i}]"),
            matches,
            &r.route,
            scope,
        ));
    }
    out
}

/// A VirtualService's `tcp` rules for this proxy (see [`tls_stream_rules`] for `with_subnets`).
pub(super) fn tcp_stream_rules(
    snap: &mut Snapshot,
    res: &Resource,
    source: &str,
    hosts: &[Arc<str>],
    vs: &networking::VirtualService,
    scope: Scope<'_>,
    with_subnets: bool,
) -> Vec<StreamRule> {
    let mut out = Vec::new();
    for (i, r) in vs.tcp.iter().enumerate() {
        let matches = r
            .matches
            .iter()
            .map(|m| L4Match {
                sni_hosts: &[],
                destination_subnets: if with_subnets {
                    &m.destination_subnets
                } else {
                    &[]
                },
                port: m.port,
                source_labels: &m.source_labels,
                source_namespace: m.source_namespace.as_deref(),
                gateways: &m.gateways,
            })
            .collect();
        out.extend(compile_stream_rule(
            snap,
            res,
            source,
            hosts,
            format!("tcp[{i}]"),
            matches,
            &r.route,
            scope,
        ));
    }
    out
}

/// The fields TLS and TCP match blocks share.
struct L4Match<'a> {
    sni_hosts: &'a [String],
    destination_subnets: &'a [String],
    port: u32,
    source_labels: &'a Labels,
    source_namespace: Option<&'a str>,
    gateways: &'a [String],
}

/// Compiles a `tls` or `tcp` rule; `None` when every match block is for other proxies. A TCP rule
/// without match blocks matches every connection.
#[allow(clippy::too_many_arguments)]
fn compile_stream_rule(
    snap: &mut Snapshot,
    res: &Resource,
    vs_source: &str,
    hosts: &[Arc<str>],
    index: String,
    matches: Vec<L4Match<'_>>,
    route: &[networking::RouteDestination],
    scope: Scope<'_>,
) -> Option<StreamRule> {
    let had_matches = !matches.is_empty();
    let compiled: Vec<StreamMatch> = matches
        .into_iter()
        .filter(|m| scope.keeps(snap, m.gateways, m.source_labels, m.source_namespace))
        .map(|m| StreamMatch {
            sni_hosts: m
                .sni_hosts
                .iter()
                .map(|s| Arc::from(s.to_ascii_lowercase()))
                .collect(),
            destination_subnets: m
                .destination_subnets
                .iter()
                .filter_map(|s| registry::parse_net(s))
                .collect(),
            port: port_u16(m.port),
        })
        .collect();
    let compiled = match (had_matches, compiled.is_empty()) {
        (true, true) => return None,
        (false, _) => vec![StreamMatch::default()],
        (true, false) => compiled,
    };
    let targets = route
        .iter()
        .enumerate()
        .map(|(j, d)| {
            let field = format!("spec.{index}.route[{j}].destination");
            stream_target(snap, res, &field, &d.destination, d.weight)
        })
        .collect();
    Some(StreamRule {
        source: format!("{vs_source} {index}").into(),
        vs_hosts: hosts.to_vec(),
        matches: compiled,
        targets,
    })
}

pub(super) fn port_u16(p: u32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

pub(super) fn applies_to_proxy(
    snap: &Snapshot,
    source_labels: &Labels,
    source_ns: Option<&str>,
) -> bool {
    labels_subset(source_labels, &snap.proxy.labels)
        && source_ns.is_none_or(|ns| ns.is_empty() || ns == snap.proxy.namespace)
}

fn stream_target(
    snap: &mut Snapshot,
    res: &Resource,
    field: &str,
    dest: &Destination,
    weight: Option<i32>,
) -> WeightedTarget {
    let (cluster, _) = cluster_ref(snap, res, field, dest);
    WeightedTarget {
        cluster,
        weight: weight.map_or(100, |w| w.max(0) as u32),
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }
}
