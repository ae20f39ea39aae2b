//! VirtualService rules: several mesh VirtualServices for one host (IST0109), rules that can
//! never be used (IST0130) and match blocks an earlier one already covers (IST0131), as Istio's
//! `AnalyzeUnreachableHTTPRules`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::Value;
use sluice_api::networking::{HttpMatchRequest, HttpRoute, StringMatch, VirtualService};
use sluice_api::{Resource, Spec};

use super::{
    Message, CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS, VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
    VIRTUAL_SERVICE_UNREACHABLE_RULE,
};
use crate::host;
use crate::host::HostIndex;
use crate::snapshot::binds_to_mesh;

pub(super) fn check(resources: &[Resource], out: &mut Vec<Message>) {
    mesh_host_conflicts(resources, out);
    for res in resources {
        if let Spec::VirtualService(vs) = &res.spec {
            unreachable_rules(res, vs, out);
        }
    }
}

/// Istio's `ConvertHostToFQDN`: a name without a dot (and not a wildcard) is a Service of `ns`.
/// Unlike [`host::resolve_short_name`], `*` stays as written and case is kept.
pub(super) fn istio_fqdn(host: &str, ns: &str) -> String {
    if !host.starts_with('*') && !host.contains('.') {
        format!("{host}.{ns}.{}", host::CLUSTER_DOMAIN)
    } else {
        host.to_string()
    }
}

/// The namespaces a VirtualService or ServiceEntry is exported to: `*` alone when it is
/// exported everywhere (no `exportTo`, or `*` among them), else each namespace once (`.` is
/// its own).
pub(super) fn export_scopes(export_to: &[String], ns: &str) -> BTreeSet<String> {
    if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
        return BTreeSet::from(["*".to_string()]);
    }
    export_to
        .iter()
        .map(|e| if e == "." { ns.to_string() } else { e.clone() })
        .collect()
}

/// IST0109, as Istio's `ConflictingMeshGatewayHostsAnalyzer`: mesh VirtualServices are grouped
/// by (exportTo scope, host); a group of VirtualServices exported to some namespaces also
/// takes in those exported everywhere whose host overlaps (wildcards included). Each
/// VirtualService of a group of two or more is reported once, for the first such group.
fn mesh_host_conflicts(resources: &[Resource], out: &mut Vec<Message>) {
    // (scope, host) → VirtualServices, each once, in resource order.
    let mut groups: BTreeMap<(String, String), Vec<&Resource>> = BTreeMap::new();
    for res in resources {
        let Spec::VirtualService(vs) = &res.spec else {
            continue;
        };
        if !binds_to_mesh(&vs.gateways) {
            continue;
        }
        let ns = res.meta.namespace.as_str();
        for scope in export_scopes(&vs.export_to, ns) {
            for h in &vs.hosts {
                let group = groups
                    .entry((scope.clone(), istio_fqdn(h, ns)))
                    .or_default();
                if !group.last().is_some_and(|r| std::ptr::eq(*r, res)) {
                    group.push(res);
                }
            }
        }
    }
    let mut everywhere: HostIndex<usize> = HostIndex::default();
    let keys: Vec<&(String, String)> = groups.keys().collect();
    for (i, (scope, h)) in keys.iter().enumerate() {
        if scope == "*" {
            everywhere.insert(&h.to_ascii_lowercase(), i);
        }
    }
    let lists: Vec<&Vec<&Resource>> = groups.values().collect();
    let mut reported: HashSet<String> = HashSet::new();
    for (i, (scope, h)) in keys.iter().enumerate() {
        let mut members: Vec<&Resource> = lists[i].clone();
        if scope != "*" {
            let mut others: Vec<usize> = Vec::new();
            everywhere.visit_intersecting(&h.to_ascii_lowercase(), |&j| {
                others.push(j);
                true
            });
            others.sort_unstable();
            others.dedup();
            for j in others {
                members.extend(lists[j].iter().copied());
            }
        }
        if members.len() < 2 {
            continue;
        }
        let mut names: Vec<String> = members.iter().map(|r| r.key()).collect();
        names.sort_unstable();
        let names = super::listed(&names);
        for res in members {
            if !reported.insert(res.key()) {
                continue;
            }
            out.push(Message::at(
                &CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS,
                res,
                "metadata.name",
                format!(
                    "The VirtualServices {names} associated with mesh gateway define the same host {scope}/{h} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource."
                ),
            ));
        }
    }
}

/// `"name"` for a named HTTP rule, else `#index`.
fn rule_name(name: Option<&str>, index: usize) -> String {
    match name.filter(|n| !n.is_empty()) {
        Some(n) => format!("{n:?}"),
        None => format!("#{index}"),
    }
}

/// A match block's identity for duplicate detection: Istio compares their JSON without the
/// block's `name`, which only labels it.
fn as_json<T: serde::Serialize>(m: &T) -> String {
    match serde_json::to_value(m) {
        Ok(Value::Object(map)) => {
            // Sorted by key: removing a key from an order-preserving map moves another one.
            let fields: BTreeMap<String, Value> =
                map.into_iter().filter(|(k, _)| k != "name").collect();
            serde_json::to_string(&fields).unwrap_or_default()
        }
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// `exact:v` or `prefix:v`; empty for a regex, which Istio does not compare.
fn exact_or_prefix(m: Option<&StringMatch>) -> String {
    let Some(m) = m else {
        return String::new();
    };
    match (m.exact.as_deref(), m.prefix.as_deref()) {
        (Some(e), _) if !e.is_empty() => format!("exact:{e}"),
        (_, Some(p)) if !p.is_empty() => format!("prefix:{p}"),
        _ => String::new(),
    }
}

fn exact_or_prefix_map(m: &BTreeMap<String, StringMatch>) -> BTreeMap<&str, String> {
    m.iter()
        .map(|(k, v)| (k.as_str(), exact_or_prefix(Some(v))))
        .collect()
}

/// A match block with a `uri.prefix`, reduced to what Istio compares to find an earlier block
/// that covers it (`genMatchHTTPRoutes`): port, method (GET when unset), authority, headers,
/// query parameters and absent headers.
struct PrefixMatch<'a> {
    prefix: &'a str,
    port: u32,
    method: String,
    authority: String,
    headers: BTreeMap<&'a str, String>,
    query_params: BTreeMap<&'a str, String>,
    without_headers: BTreeMap<&'a str, String>,
    rule: String,
    matchno: String,
    rule_index: usize,
    match_index: usize,
}

impl<'a> PrefixMatch<'a> {
    fn new(
        m: &'a HttpMatchRequest,
        rule: &str,
        i: usize,
        j: usize,
        matchno: String,
    ) -> Option<Self> {
        let prefix = m
            .uri
            .as_ref()?
            .prefix
            .as_deref()
            .filter(|p| !p.is_empty())?;
        let mut method = exact_or_prefix(m.method.as_deref());
        if method.is_empty() {
            method = "exact:GET".to_string();
        }
        Some(PrefixMatch {
            prefix,
            port: m.port,
            method,
            authority: exact_or_prefix(m.authority.as_deref()),
            headers: exact_or_prefix_map(&m.headers),
            query_params: exact_or_prefix_map(&m.query_params),
            without_headers: exact_or_prefix_map(&m.without_headers),
            rule: rule.to_string(),
            matchno,
            rule_index: i,
            match_index: j,
        })
    }

    /// True when this (earlier) block takes the requests of `later`, as Istio's
    /// `coveredValidation` decides it (its prefix comparisons of the other conditions included).
    fn covers(&self, later: &PrefixMatch<'_>) -> bool {
        let value_covers = |a: &str, b: &str| a == b || a.starts_with(b);
        let map_covers = |a: &BTreeMap<&str, String>, b: &BTreeMap<&str, String>| {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| value_covers(v, w)))
        };
        later.prefix.starts_with(self.prefix)
            && later.port == self.port
            && value_covers(&self.method, &later.method)
            && value_covers(&self.authority, &later.authority)
            && map_covers(&self.headers, &later.headers)
            && map_covers(&self.query_params, &later.query_params)
            && map_covers(&self.without_headers, &later.without_headers)
    }
}

struct Reporter<'a> {
    res: &'a Resource,
    kind: &'static str,
    out: &'a mut Vec<Message>,
}

impl Reporter<'_> {
    fn unreachable(&mut self, i: usize, rule: &str, reason: &str) {
        self.out.push(Message::at(
            &VIRTUAL_SERVICE_UNREACHABLE_RULE,
            self.res,
            &format!("spec.{}[{i}]", self.kind),
            format!("VirtualService rule {rule} not used ({reason})."),
        ));
    }

    fn ineffective(&mut self, i: usize, j: usize, rule: &str, matchno: &str, dup: &str) {
        self.out.push(Message::at(
            &VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
            self.res,
            &format!("spec.{}[{i}].match[{j}]", self.kind),
            format!(
                "VirtualService rule {rule} match {matchno} is not used (duplicate/overlapping match in rule {dup})."
            ),
        ));
    }
}

fn unreachable_rules(res: &Resource, vs: &VirtualService, out: &mut Vec<Message>) {
    let mut r = Reporter {
        res,
        kind: "http",
        out,
    };
    http_rules(&vs.http, &mut r);
    let tcp: Vec<(Vec<String>, usize)> = vs
        .tcp
        .iter()
        .enumerate()
        .map(|(i, t)| (t.matches.iter().map(as_json).collect(), i))
        .collect();
    r.kind = "tcp";
    stream_rules(&tcp, &mut r);
    let tls: Vec<(Vec<String>, usize)> = vs
        .tls
        .iter()
        .enumerate()
        .map(|(i, t)| (t.matches.iter().map(as_json).collect(), i))
        .collect();
    r.kind = "tls";
    stream_rules(&tls, &mut r);
}

fn http_rules(routes: &[HttpRoute], r: &mut Reporter<'_>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut empty_seen = false;
    let mut prefixes: Vec<PrefixMatch<'_>> = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let name = rule_name(route.name.as_deref(), i);
        if route.matches.is_empty() {
            if empty_seen {
                r.unreachable(i, &name, "only the last rule can have no matches");
            }
            empty_seen = true;
            continue;
        }
        if empty_seen {
            r.unreachable(i, &name, "route without matches defined before");
            continue;
        }
        let mut duplicates = 0;
        for (j, m) in route.matches.iter().enumerate() {
            let matchno = rule_name(m.name.as_deref(), j);
            let key = as_json(m);
            if let Some(&dup) = seen.get(&key) {
                let dup_name = rule_name(routes[dup].name.as_deref(), dup);
                r.ineffective(i, j, &name, &matchno, &dup_name);
                duplicates += 1;
                continue;
            }
            seen.insert(key, i);
            prefixes.extend(PrefixMatch::new(m, &name, i, j, matchno));
        }
        if duplicates == route.matches.len() {
            r.unreachable(i, &name, "all matches used by prior rules");
        }
    }
    // An earlier prefix block covers a later one with a longer prefix: compared in pairs, as
    // Istio does, and only blocks with a prefix take part.
    for (a_idx, a) in prefixes.iter().enumerate() {
        for b in &prefixes[a_idx + 1..] {
            if a.prefix != b.prefix && a.covers(b) {
                let matchno = format!("{} of prefix {}", b.matchno, b.prefix);
                let dup = format!("{} of prefix {} on {}", a.matchno, a.prefix, a.rule);
                r.ineffective(b.rule_index, b.match_index, &b.rule, &matchno, &dup);
            }
        }
    }
}

/// TCP and TLS rules: the same analysis without names or prefixes.
fn stream_rules(rules: &[(Vec<String>, usize)], r: &mut Reporter<'_>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut empty_seen = false;
    for (matches, i) in rules {
        let name = format!("#{i}");
        if matches.is_empty() {
            if empty_seen {
                r.unreachable(*i, &name, "only the last rule can have no matches");
            }
            empty_seen = true;
            continue;
        }
        if empty_seen {
            r.unreachable(*i, &name, "route without matches defined before");
            continue;
        }
        let mut duplicates = 0;
        for (j, key) in matches.iter().enumerate() {
            if let Some(&dup) = seen.get(key.as_str()) {
                r.ineffective(*i, j, &name, &format!("#{j}"), &format!("#{dup}"));
                duplicates += 1;
            } else {
                seen.insert(key, *i);
            }
        }
        if duplicates == matches.len() {
            r.unreachable(*i, &name, "all matches used by prior rules");
        }
    }
}
