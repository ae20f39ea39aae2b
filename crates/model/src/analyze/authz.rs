//! AuthorizationPolicies: a `source.namespaces` or `source.notNamespaces` entry that names no
//! Namespace (IST0101 `namespace`), as Istio's `AuthorizationPoliciesAnalyzer` finds it.
//!
//! Only when the input declares Namespace objects: sluice's config folders hold none, and an
//! input without them says nothing about which namespaces exist (istioctl, reading files alone,
//! would report every entry).

use sluice_api::{Resource, Spec};

use super::{Message, REFERENCED_RESOURCE_NOT_FOUND};

pub(super) fn check(resources: &[Resource], out: &mut Vec<Message>) {
    let namespaces: Vec<&str> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::Namespace))
        .map(|r| r.meta.name.as_str())
        .collect();
    if namespaces.is_empty() {
        return;
    }
    for res in resources {
        let Spec::AuthorizationPolicy(ap) = &res.spec else {
            continue;
        };
        for (i, rule) in ap.rules.iter().flatten().enumerate() {
            for (j, from) in rule.from.iter().flatten().enumerate() {
                let Some(source) = &from.source else {
                    continue;
                };
                let lists = [
                    ("namespaces", &source.namespaces),
                    ("notNamespaces", &source.not_namespaces),
                ];
                for (field, list) in lists {
                    for (k, written) in list.iter().enumerate() {
                        if namespaces.iter().any(|ns| namespace_match(ns, written)) {
                            continue;
                        }
                        out.push(Message::at(
                            &REFERENCED_RESOURCE_NOT_FOUND,
                            res,
                            &format!("spec.rules[{i}].from[{j}].source.{field}[{k}]"),
                            format!("Referenced namespace not found: {written:?}"),
                        ));
                    }
                }
            }
        }
    }
}

/// True when the namespace `ns` is one `pattern` names: `*`, a `*suffix`, a `prefix*`, or the
/// name itself (in any case), as Istio's `namespaceMatch`.
fn namespace_match(ns: &str, pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return ns.ends_with(suffix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return ns.starts_with(prefix);
    }
    ns.eq_ignore_ascii_case(pattern)
}
