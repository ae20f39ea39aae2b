//! VirtualService rules: several mesh VirtualServices for one host (IST0109), rules that can
//! never be used (IST0130) and match blocks an earlier one already covers (IST0131), as Istio's
//! `AnalyzeUnreachableHTTPRules`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::Value;
use sluice_api::networking::{HttpMatchRequest, HttpRoute, VirtualService};
use sluice_api::{Resource, Spec};

use super::{
    Message, CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS, VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
    VIRTUAL_SERVICE_UNREACHABLE_RULE,
};
use crate::host;
use crate::registry::ExportTo;
use crate::snapshot::binds_to_mesh;

pub(super) fn check(resources: &[Resource], out: &mut Vec<Message>) {
    mesh_host_conflicts(resources, out);
    for res in resources {
        if let Spec::VirtualService(vs) = &res.spec {
            unreachable_rules(res, vs, out);
        }
    }
}

/// The VirtualServices that define one host, with what IST0109 needs to list the ones each
/// conflicts with (those whose `exportTo` overlaps its own) without comparing every pair: with
/// thousands of VirtualServices for one host, pairwise comparison and complete lists made the
/// analysis and its output grow with the square of their number.
#[derive(Default)]
struct HostDefinitions<'r> {
    /// (resource, key, scope), each VirtualService once.
    entries: Vec<(&'r Resource, String, ExportTo)>,
    keys: HashSet<String>,
}

impl HostDefinitions<'_> {
    fn report(self, host: &str, out: &mut Vec<Message>) {
        let entries = self.entries;
        // Keys exported everywhere; keys of every entry exported somewhere; namespace →
        // entries exported there. All sorted by key.
        let mut everywhere: Vec<&str> = Vec::new();
        let mut somewhere: Vec<&str> = Vec::new();
        let mut by_namespace: HashMap<&str, Vec<&str>> = HashMap::new();
        for (_, key, scope) in &entries {
            match scope {
                ExportTo::All => {
                    everywhere.push(key);
                    somewhere.push(key);
                }
                ExportTo::Namespaces(list) if !list.is_empty() => {
                    somewhere.push(key);
                    let unique: BTreeSet<&str> = list.iter().map(String::as_str).collect();
                    for ns in unique {
                        by_namespace.entry(ns).or_default().push(key);
                    }
                }
                ExportTo::Namespaces(_) => {}
            }
        }
        everywhere.sort_unstable();
        somewhere.sort_unstable();
        for list in by_namespace.values_mut() {
            list.sort_unstable();
        }
        // Those exported to several namespaces: the union, once per distinct set.
        let mut unions: HashMap<&[String], Vec<&str>> = HashMap::new();
        for (res, _, scope) in &entries {
            // The VirtualServices this one conflicts with, and itself: exported everywhere it
            // is, or (exported everywhere) to at least one of the namespaces it is exported to.
            let (first, second): (&[&str], &[&str]) = match scope {
                ExportTo::All => (&somewhere, &[]),
                ExportTo::Namespaces(list) if list.is_empty() => continue,
                ExportTo::Namespaces(list) => {
                    let unique: BTreeSet<&str> = list.iter().map(String::as_str).collect();
                    if unique.len() == 1 {
                        let ns = unique.first().copied().unwrap_or_default();
                        let posting = by_namespace.get(ns).map_or(&[][..], Vec::as_slice);
                        (&everywhere, posting)
                    } else {
                        let union = unions.entry(list).or_insert_with(|| {
                            let mut keys: Vec<&str> = unique
                                .iter()
                                .filter_map(|ns| by_namespace.get(ns))
                                .flatten()
                                .copied()
                                .collect();
                            keys.sort_unstable();
                            keys.dedup();
                            keys
                        });
                        (&everywhere, union.as_slice())
                    }
                }
            };
            let total = first.len() + second.len();
            if total < 2 {
                continue;
            }
            let names = merge_sorted(first, second, super::MAX_LISTED);
            let mut names = names.join(",");
            if total > super::MAX_LISTED {
                names.push_str(&format!(" and {} more", total - super::MAX_LISTED));
            }
            out.push(Message::at(
                &CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS,
                res,
                "spec.hosts",
                format!(
                    "The VirtualServices {names} associated with mesh gateway define the same host {host} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource."
                ),
            ));
        }
    }
}

/// The first `n` of two sorted, disjoint lists, in order.
fn merge_sorted<'a>(a: &[&'a str], b: &[&'a str], n: usize) -> Vec<&'a str> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x <= y => {
                i += 1;
                x
            }
            (_, Some(y)) => {
                j += 1;
                y
            }
            (Some(x), None) => {
                i += 1;
                x
            }
            (None, None) => break,
        };
        out.push(*next);
    }
    out
}

/// IST0109. Sidecars do not merge VirtualServices: only the oldest one's `http` rules for a host
/// are used, so only VirtualServices with `http` rules are compared.
fn mesh_host_conflicts(resources: &[Resource], out: &mut Vec<Message>) {
    let mut by_host: BTreeMap<String, HostDefinitions<'_>> = BTreeMap::new();
    for res in resources {
        let Spec::VirtualService(vs) = &res.spec else {
            continue;
        };
        if !binds_to_mesh(&vs.gateways) || vs.http.is_empty() {
            continue;
        }
        let scope = ExportTo::parse(&vs.export_to, &res.meta.namespace);
        let key = res.key();
        for h in &vs.hosts {
            let fqdn = host::resolve_short_name(h, &res.meta.namespace);
            let defs = by_host.entry(fqdn).or_default();
            if defs.keys.insert(key.clone()) {
                defs.entries.push((res, key.clone(), scope.clone()));
            }
        }
    }
    for (host, defs) in by_host {
        defs.report(&host, out);
    }
}

/// `"name"` for a named HTTP rule, else `#index`.
fn rule_name(name: Option<&str>, index: usize) -> String {
    match name.filter(|n| !n.is_empty()) {
        Some(n) => format!("{n:?}"),
        None => format!("#{index}"),
    }
}

/// A match block's identity for duplicate detection (Istio compares their JSON).
fn as_json<T: serde::Serialize>(m: &T) -> String {
    serde_json::to_string(m).unwrap_or_default()
}

/// A prefix-only-different match: its `uri.prefix` and the rest of the block, for overlap checks.
struct PrefixMatch {
    prefix: String,
    rest: Value,
    rule: String,
    matchno: String,
    rule_index: usize,
    match_index: usize,
}

fn prefix_match(
    m: &HttpMatchRequest,
    rule: &str,
    i: usize,
    j: usize,
    matchno: String,
) -> Option<PrefixMatch> {
    let prefix = m.uri.as_ref()?.prefix.clone()?;
    let mut rest = serde_json::to_value(m).ok()?;
    if let Value::Object(map) = &mut rest {
        map.remove("uri");
        map.remove("name");
    }
    Some(PrefixMatch {
        prefix,
        rest,
        rule: rule.to_string(),
        matchno,
        rule_index: i,
        match_index: j,
    })
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
    let mut prefixes: Vec<PrefixMatch> = Vec::new();
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
            prefixes.extend(prefix_match(m, &name, i, j, matchno));
        }
        if duplicates == route.matches.len() {
            r.unreachable(i, &name, "all matches used by prior rules");
        }
    }
    // An earlier prefix covers a later, longer one with otherwise identical conditions.
    for (a_idx, a) in prefixes.iter().enumerate() {
        for b in &prefixes[a_idx + 1..] {
            if a.prefix != b.prefix && b.prefix.starts_with(&a.prefix) && a.rest == b.rest {
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
