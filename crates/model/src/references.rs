//! References between resources that cannot work, found without compiling for a proxy: a route
//! to a host the registry does not know, to a subset no DestinationRule defines, to a subset
//! whose labels select no endpoint, or to a portless destination whose ServiceEntry declares a
//! single port. `sluice validate` prints these as warnings; `compile` reports the same ones (with
//! exportTo and sourceLabels applied) for the proxy it compiles for.
//!
//! Security settings that are accepted but have no effect are reported here too: AUDIT and
//! CUSTOM AuthorizationPolicies, and certificate fields on an ISTIO_MUTUAL DestinationRule.
//!
//! Visibility (`exportTo`) and `sourceLabels` are ignored here: a reference is reported only
//! when it fails for every proxy.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sluice_api::networking::{
    ClientTlsSettings, Destination, DestinationRule, Subset, VirtualService,
};
use sluice_api::{Diagnostic, Kind, Resource, Severity, Spec};

use crate::gateway;
use crate::host;
use crate::registry::{self, labels_subset, Protocol, Resolution, Service};

/// Warning for a destination host that no ServiceEntry or Service declares.
pub(crate) fn unknown_host_message(host: &str) -> String {
    format!(
        "destination host {host} is not in the service registry (no ServiceEntry or Service); requests routed to it get 503 NC"
    )
}

/// Warning for a VirtualService `gateways` entry naming no Gateway.
fn unknown_gateway_message(gateway: &str) -> String {
    format!("Gateway {gateway} does not exist; this VirtualService's routes for it are not applied")
}

/// Warning for a subset that no DestinationRule for the host defines.
pub(crate) fn undefined_subset_message(host: &str, subset: &str) -> String {
    format!(
        "subset {subset} of destination {host} is not defined in any DestinationRule for this host; requests routed to it get 503 NC"
    )
}

/// Warning for a subset whose labels select none of the service's endpoints.
pub(crate) fn empty_subset_message(host: &str, subset: &str) -> String {
    format!(
        "subset {subset} of destination {host} selects no endpoint of the service; requests routed to it get 503 UH"
    )
}

/// Warning for a portless destination of a single-port ServiceEntry (seed 004).
pub(crate) fn single_port_message(host: &str, port: u16) -> String {
    format!(
        "destination {host} has no port: every request for this host goes to port {port}, the ServiceEntry's only port, whatever port the client called"
    )
}

/// The endpoints of one service indexed by label, so that whether a subset selects any of them
/// is decided by looking only at the endpoints that carry its rarest label: every subset
/// against every endpoint was quadratic.
pub(crate) struct EndpointLabels<'s> {
    svc: &'s Service,
    by_label: HashMap<(&'s str, &'s str), Vec<usize>>,
}

impl<'s> EndpointLabels<'s> {
    pub(crate) fn new(svc: &'s Service) -> Self {
        let mut by_label: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, ep) in svc.endpoints.iter().enumerate() {
            crate::work_count(ep.labels.len() as u64);
            for (k, v) in &ep.labels {
                by_label.entry((k, v)).or_default().push(i);
            }
        }
        EndpointLabels { svc, by_label }
    }

    /// True when a subset cluster of the service with these labels can never pick an endpoint
    /// (503 UH): the service's endpoints are listed (STATIC, or DNS with endpoints or a
    /// subset) and none has all of `labels`.
    pub(crate) fn selects_nothing(&self, labels: &sluice_api::networking::Labels) -> bool {
        if !matches!(
            self.svc.resolution,
            Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin
        ) {
            return false;
        }
        let mut rarest: Option<&[usize]> = None;
        for (k, v) in labels {
            match self.by_label.get(&(k.as_str(), v.as_str())) {
                None => return true,
                Some(p) if rarest.is_none_or(|r| p.len() < r.len()) => rarest = Some(p),
                Some(_) => {}
            }
        }
        match rarest {
            // No labels: every endpoint is selected.
            None => self.svc.endpoints.is_empty(),
            Some(candidates) => !candidates
                .iter()
                .any(|&i| labels_subset(labels, &self.svc.endpoints[i].labels)),
        }
    }
}

/// The port every request goes to when a route names `svc` without a port: the only port of a
/// ServiceEntry, unless it is the one clients call by default for its protocol (80 for HTTP,
/// 443 for HTTPS/TLS), where nothing surprising happens.
pub(crate) fn surprising_single_port(svc: &Service) -> Option<u16> {
    if !svc.source.starts_with("ServiceEntry ") || svc.ports.len() != 1 {
        return None;
    }
    let p = &svc.ports[0];
    (p.number != usual_port(p.protocol)).then_some(p.number)
}

/// The port clients call by default for `protocol`: 443 for HTTPS/TLS, else 80.
pub(crate) fn usual_port(protocol: Protocol) -> u16 {
    match protocol {
        Protocol::Https | Protocol::Tls => 443,
        _ => 80,
    }
}

/// Which kind of reference a VirtualService destination is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum DestinationRole {
    /// An HTTP route destination (the single-port warning applies).
    HttpRoute,
    /// A TLS or TCP route destination.
    StreamRoute,
    Mirror,
}

/// Every destination of a VirtualService with its field path, in document order: HTTP routes,
/// mirror and mirrors of each HTTP rule, then TLS and TCP routes.
pub(crate) fn vs_destinations(vs: &VirtualService) -> Vec<(String, &Destination, DestinationRole)> {
    let mut out = Vec::new();
    for (i, r) in vs.http.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push((
                format!("spec.http[{i}].route[{j}].destination"),
                &d.destination,
                DestinationRole::HttpRoute,
            ));
        }
        if let Some(m) = &r.mirror {
            out.push((format!("spec.http[{i}].mirror"), m, DestinationRole::Mirror));
        }
        for (k, m) in r.mirrors.iter().enumerate() {
            out.push((
                format!("spec.http[{i}].mirrors[{k}].destination"),
                &m.destination,
                DestinationRole::Mirror,
            ));
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push((
                format!("spec.tls[{i}].route[{j}].destination"),
                &d.destination,
                DestinationRole::StreamRoute,
            ));
        }
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push((
                format!("spec.tcp[{i}].route[{j}].destination"),
                &d.destination,
                DestinationRole::StreamRoute,
            ));
        }
    }
    out
}

/// Every DestinationRule with its host expanded to an FQDN, in resource order.
pub(crate) fn destination_rule_hosts(
    resources: &[Resource],
) -> Vec<(&Resource, &DestinationRule, String)> {
    resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::DestinationRule(dr) => Some((
                r,
                &**dr,
                host::resolve_short_name(&dr.host, &r.meta.namespace),
            )),
            _ => None,
        })
        .collect()
}

/// Every subset the DestinationRules define, by host pattern: which rule first defines a subset
/// for a host is found in time linear in the host's length (scanning every rule's subsets for
/// every destination was quadratic).
pub(crate) struct SubsetIndex<'a> {
    patterns: host::HostMap<usize>,
    /// Per distinct host pattern: subset name → (resource order of its first definition, subset).
    subsets: Vec<HashMap<&'a str, (usize, &'a Subset)>>,
}

impl<'a> SubsetIndex<'a> {
    pub(crate) fn new(resources: &'a [Resource]) -> Self {
        let mut patterns = host::HostMap::default();
        let mut subsets: Vec<HashMap<&str, (usize, &Subset)>> = Vec::new();
        let mut by_pattern: HashMap<String, usize> = HashMap::new();
        for (order, (_, dr, h)) in destination_rule_hosts(resources).into_iter().enumerate() {
            let slot = *by_pattern.entry(h.to_ascii_lowercase()).or_insert_with(|| {
                patterns.insert(&h, subsets.len());
                subsets.push(HashMap::new());
                subsets.len() - 1
            });
            for s in &dr.subsets {
                subsets[slot].entry(s.name.as_str()).or_insert((order, s));
            }
        }
        SubsetIndex { patterns, subsets }
    }

    /// The first subset named `subset` that a DestinationRule whose host matches `fqdn` defines.
    pub(crate) fn defined(&self, fqdn: &str, subset: &str) -> Option<&'a Subset> {
        self.patterns
            .matching(fqdn)
            .flatten()
            .filter_map(|&slot| self.subsets[slot].get(subset))
            .min_by_key(|(order, _)| *order)
            .map(|(_, s)| *s)
    }
}

/// Every reference problem in `resources`, independent of any proxy.
pub fn check(resources: &[Resource]) -> Vec<Diagnostic> {
    let services = registry::services_from(resources);
    let rules = SubsetIndex::new(resources);
    let mut by_host: HashMap<&str, &Arc<Service>> = HashMap::new();
    for svc in &services {
        by_host.entry(&svc.hostname).or_insert(svc);
    }
    let mut empty_subsets = HashMap::new();
    let mut endpoint_labels = HashMap::new();
    let mut out = Vec::new();
    check_gateways(resources, &mut out);
    check_security(resources, &mut out);
    out.extend(fields_not_acted_on(resources));
    for res in resources {
        let Spec::VirtualService(vs) = &res.spec else {
            continue;
        };
        for (field, dest, role) in vs_destinations(vs) {
            let http = role == DestinationRole::HttpRoute;
            let refs = Refs {
                services: &by_host,
                rules: &rules,
                empty_subsets: &mut empty_subsets,
                endpoint_labels: &mut endpoint_labels,
            };
            check_destination(refs, res, field, dest, http, &mut out);
        }
    }
    out
}

/// The namespace `sluice gateway` runs in unless told otherwise, where `credentialName` Secrets
/// are looked up.
pub const DEFAULT_GATEWAY_NAMESPACE: &str = "istio-system";

/// `ns/name` of every Gateway in `resources`.
pub(crate) fn known_gateways(resources: &[Resource]) -> BTreeSet<String> {
    resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::Gateway(_)))
        .map(Resource::key)
        .collect()
}

/// A warning for each top-level `gateways` entry of VirtualService `res` naming no Gateway in
/// `known`.
pub(crate) fn check_unknown_gateways(
    res: &Resource,
    vs: &VirtualService,
    known: &BTreeSet<String>,
    out: &mut Vec<Diagnostic>,
) {
    for (i, g) in vs.gateways.iter().enumerate() {
        let Some(n) = gateway::resolve_gateway_name(g, &res.meta.namespace) else {
            continue;
        };
        if !known.contains(&n) {
            out.push(Diagnostic::at(
                res,
                Severity::Warning,
                format!("spec.gateways[{i}]"),
                unknown_gateway_message(&n),
            ));
        }
    }
}

/// VirtualService `gateways` entries naming no Gateway, and Gateway `credentialName`s whose
/// Secret is not in the default gateway namespace.
fn check_gateways(resources: &[Resource], out: &mut Vec<Diagnostic>) {
    let known = known_gateways(resources);
    let secrets = gateway::Secrets::new(resources);
    for res in resources {
        match &res.spec {
            Spec::VirtualService(vs) => check_unknown_gateways(res, vs, &known, out),
            Spec::Gateway(gw) => {
                for (i, server) in gw.servers.iter().enumerate() {
                    let Some(tls) = &server.tls else {
                        continue;
                    };
                    let name = tls
                        .credential_name
                        .as_deref()
                        .or(tls.credential_names.first().map(String::as_str))
                        .filter(|n| !n.is_empty());
                    let Some(name) = name else {
                        continue;
                    };
                    if let Err(reason) =
                        gateway::resolve_credential(&secrets, DEFAULT_GATEWAY_NAMESPACE, name)
                    {
                        out.push(Diagnostic::at(
                            res,
                            Severity::Warning,
                            format!("spec.servers[{i}].tls.credentialName"),
                            format!(
                                "{reason}; {DEFAULT_GATEWAY_NAMESPACE} is the namespace of `sluice gateway` unless --namespace says otherwise"
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
}

/// What [`check_destination`] looks destinations up in.
struct Refs<'r, 'a> {
    services: &'r HashMap<&'a str, &'a Arc<Service>>,
    rules: &'r SubsetIndex<'a>,
    /// (host, subset) → whether the subset selects no endpoint, decided once.
    empty_subsets: &'r mut HashMap<(Arc<str>, String), bool>,
    /// Each service's endpoints by label, built when a subset of it is first checked.
    endpoint_labels: &'r mut HashMap<Arc<str>, EndpointLabels<'a>>,
}

fn check_destination<'a>(
    refs: Refs<'_, 'a>,
    res: &Resource,
    field: String,
    dest: &Destination,
    http: bool,
    out: &mut Vec<Diagnostic>,
) {
    let host = host::resolve_short_name(dest.host_name(), &res.meta.namespace);
    // Destinations name a service exactly, as in Istio: a concrete name under a wildcard
    // ServiceEntry host has no cluster either.
    let Some(svc) = refs.services.get(host.as_str()) else {
        out.push(Diagnostic::at(
            res,
            Severity::Warning,
            format!("{field}.host"),
            unknown_host_message(&host),
        ));
        return;
    };
    let explicit_port = dest.port.as_ref().is_some_and(|p| p.number != 0);
    if http && !explicit_port {
        if let Some(port) = surprising_single_port(svc) {
            out.push(Diagnostic::at(
                res,
                Severity::Warning,
                format!("{field}.host"),
                single_port_message(&host, port),
            ));
        }
    }
    let Some(subset) = dest.subset.as_deref().filter(|s| !s.is_empty()) else {
        return;
    };
    let defined = refs.rules.defined(&svc.hostname, subset);
    let field = format!("{field}.subset");
    let endpoint_labels = &mut *refs.endpoint_labels;
    let mut selects_nothing = |s: &Subset| {
        *refs
            .empty_subsets
            .entry((svc.hostname.clone(), subset.to_string()))
            .or_insert_with(|| {
                endpoint_labels
                    .entry(svc.hostname.clone())
                    .or_insert_with(|| EndpointLabels::new(svc))
                    .selects_nothing(&s.labels)
            })
    };
    match defined {
        None => out.push(Diagnostic::at(
            res,
            Severity::Warning,
            field,
            undefined_subset_message(&host, subset),
        )),
        Some(s) if selects_nothing(s) => out.push(Diagnostic::at(
            res,
            Severity::Warning,
            field,
            empty_subset_message(&host, subset),
        )),
        Some(_) => {}
    }
}

/// Warning for an AuthorizationPolicy whose action sluice does not enforce.
pub(crate) fn unenforced_action_message(action: &str) -> String {
    format!("{action} policies are not enforced by sluice; this policy is ignored")
}

/// Warning for ISTIO_MUTUAL settings that carry certificate fields, which Istio ignores.
pub(crate) fn istio_mutual_fields_message(fields: &[&str]) -> String {
    format!(
        "{} ignored with ISTIO_MUTUAL, which uses the proxy's mesh certificate; use MUTUAL to \
         present your own certificate",
        fields.join(", ")
    )
}

/// The certificate fields set on an ISTIO_MUTUAL `tls`, which "should be empty" in that mode.
fn istio_mutual_extra_fields(tls: &ClientTlsSettings) -> Vec<&'static str> {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    let mut fields = Vec::new();
    if !tls
        .mode
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("ISTIO_MUTUAL"))
    {
        return fields;
    }
    for (name, value) in [
        ("clientCertificate", &tls.client_certificate),
        ("privateKey", &tls.private_key),
        ("caCertificates", &tls.ca_certificates),
        ("caCrl", &tls.ca_crl),
        ("credentialName", &tls.credential_name),
    ] {
        if set(value) {
            fields.push(name);
        }
    }
    if tls.insecure_skip_verify == Some(true) {
        fields.push("insecureSkipVerify");
    }
    fields
}

/// Fields of Istio's API that sluice accepts (Istio does, so valid config must load) but does not
/// act on, by kind and the end of their path without list indices. Each is said once per resource,
/// so that no setting an operator relies on is silently ignored.
const FIELDS_NOT_ACTED_ON: &[(Kind, &str)] = &[
    (Kind::DestinationRule, "loadBalancer.zoneAwareLbSetting"),
    (Kind::DestinationRule, "loadBalancer.backendUtilization"),
    (Kind::DestinationRule, "loadBalancer.warmup"),
    (Kind::DestinationRule, "httpCookie.attributes"),
    (Kind::DestinationRule, "http.http2KeepAlive"),
    (
        Kind::DestinationRule,
        "outlierDetection.outlierDetectionHttpErrorCodes",
    ),
    (Kind::DestinationRule, "trafficPolicy.proxyProtocol"),
    (Kind::DestinationRule, "trafficPolicy.retryBudget"),
    (Kind::Gateway, "tls.ecdhCurves"),
    (Kind::Gateway, "tls.insecureSkipVerify"),
    // Istio itself applies ingress `tls` only with ENABLE_TLS_ON_SIDECAR_INGRESS (off by default).
    (Kind::Sidecar, "ingress.tls"),
    (Kind::Sidecar, "ingress.connectionPool"),
    (Kind::Sidecar, "spec.inboundConnectionPool"),
    (Kind::Sidecar, "outboundTrafficPolicy.egressProxy"),
    (Kind::VirtualService, "corsPolicy"),
    // Prometheus is scraped: there is no reporting to pace (Istio uses it for push providers).
    (Kind::Telemetry, "metrics.reportingInterval"),
];

/// A warning (SLU0004) for each field of [`FIELDS_NOT_ACTED_ON`] a resource sets.
pub fn fields_not_acted_on(resources: &[Resource]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for res in resources {
        if !FIELDS_NOT_ACTED_ON.iter().any(|(k, _)| *k == res.kind) {
            continue;
        }
        let mut said: Vec<&str> = Vec::new();
        let mut entries = res.origin.positions.iter();
        while let Some((path, _)) = entries.next_entry() {
            let plain = without_indices(path);
            let Some((_, field)) = FIELDS_NOT_ACTED_ON.iter().find(|(k, f)| {
                *k == res.kind
                    && plain.ends_with(f)
                    && (plain.len() == f.len() || plain[..plain.len() - f.len()].ends_with('.'))
            }) else {
                continue;
            };
            if said.contains(field) {
                continue;
            }
            said.push(field);
            let path = path.to_string();
            let name = field.rsplit('.').next().unwrap_or(field);
            out.push(Diagnostic::at(
                res,
                Severity::Warning,
                path,
                format!(
                    "SLU0004: `{name}` is valid Istio config, but sluice does not act on it yet: \
                     the proxy behaves as if it were not set"
                ),
            ));
        }
    }
    out
}

/// `spec.subsets[0].trafficPolicy` → `spec.subsets.trafficPolicy`.
fn without_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// AuthorizationPolicies sluice does not enforce (AUDIT, CUSTOM), and DestinationRule
/// ISTIO_MUTUAL settings with certificate fields that have no effect.
fn check_security(resources: &[Resource], out: &mut Vec<Diagnostic>) {
    for res in resources {
        match &res.spec {
            Spec::AuthorizationPolicy(ap) => {
                let action = ap.action();
                if action == "AUDIT" || action == "CUSTOM" {
                    out.push(Diagnostic::at(
                        res,
                        Severity::Warning,
                        "spec.action",
                        unenforced_action_message(&action),
                    ));
                }
            }
            Spec::DestinationRule(dr) => {
                let mut policies = Vec::new();
                if let Some(tp) = &dr.traffic_policy {
                    policies.push(("spec.trafficPolicy".to_string(), tp));
                }
                for (i, s) in dr.subsets.iter().enumerate() {
                    if let Some(tp) = &s.traffic_policy {
                        policies.push((format!("spec.subsets[{i}].trafficPolicy"), tp));
                    }
                }
                for (base, tp) in policies {
                    let mut tls = vec![(format!("{base}.tls"), tp.tls.as_ref())];
                    for (j, pl) in tp.port_level_settings.iter().enumerate() {
                        tls.push((
                            format!("{base}.portLevelSettings[{j}].tls"),
                            pl.tls.as_ref(),
                        ));
                    }
                    for (field, t) in tls {
                        let Some(t) = t else {
                            continue;
                        };
                        let extra = istio_mutual_extra_fields(t);
                        if !extra.is_empty() {
                            out.push(Diagnostic::at(
                                res,
                                Severity::Warning,
                                field,
                                istio_mutual_fields_message(&extra),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
