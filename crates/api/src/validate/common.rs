//! Checks shared by several kinds: metadata, `exportTo`, gateway references, string matches,
//! header operations, workload selectors.

use std::collections::BTreeSet;

use crate::networking::{HeaderOperations, Headers, Labels, StringMatch};
use crate::resource::Kind;

use super::names::{fqdn, is_dns1123_label, is_dns1123_subdomain};
use super::Report;

/// Longest regex Istio accepts (Envoy's RE2 program-size limit, approximated by length).
const MAX_REGEX_LEN: usize = 1024;

/// Object name and namespace, as the Kubernetes API server would check them.
pub(super) fn metadata(r: &mut Report<'_>) {
    let res = r.res;
    let name = res.meta.name.as_str();
    if res.kind == Kind::Gateway {
        // Istio requires a DNS label (no dots) so `ns/name` references are unambiguous.
        if !is_dns1123_label(name) {
            r.error("metadata.name", format!("invalid gateway name: {name:?}"));
            return;
        }
    }
    if !is_dns1123_subdomain(name) {
        r.error(
            "metadata.name",
            format!(
                "invalid name {name:?}: use lower-case letters, digits, '-' and '.', starting and \
                 ending with a letter or digit"
            ),
        );
    }
    let ns = res.meta.namespace.as_str();
    if !is_dns1123_label(ns) || ns.bytes().any(|c| c.is_ascii_uppercase()) {
        r.error(
            "metadata.namespace",
            format!("invalid namespace {ns:?}: use lower-case letters, digits and '-'"),
        );
    }
}

/// `exportTo` (VirtualService, DestinationRule, ServiceEntry).
pub(super) fn export_to(
    r: &mut Report<'_>,
    export_to: &[String],
    is_service_entry: bool,
    dr_with_selector: bool,
) {
    if export_to.is_empty() {
        return;
    }
    let ns = r.namespace().to_string();
    let has_dot = export_to.iter().any(|x| x == ".");
    let mut seen = BTreeSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let path = format!("spec.exportTo[{i}]");
        // `.` is this namespace, so `[., <this namespace>]` is a duplicate.
        let key = if e == "." { ns.clone() } else { e.clone() };
        if seen.contains(&key) {
            if key != *e || has_dot && *e == ns {
                r.error(
                    path,
                    format!("duplicate entries in exportTo: . and current namespace {ns}"),
                );
            } else {
                r.error(path, format!("duplicate entries in exportTo for entry {e}"));
            }
            continue;
        }
        match e.as_str() {
            "." | "*" => {}
            "~" if is_service_entry => {}
            "~" => {
                r.error(
                    path,
                    "exportTo ~ (none) is not allowed for Istio configuration objects",
                );
                continue;
            }
            _ if !is_dns1123_label(e) => {
                r.error(
                    path,
                    "only .,*, or a valid DNS 1123 label is allowed as exportTo entry",
                );
                continue;
            }
            _ => {}
        }
        seen.insert(key);
    }
    if dr_with_selector && !seen.is_empty() {
        if seen.contains(&ns) {
            if seen.len() > 1 {
                r.error(
                    "spec.exportTo",
                    "destination rule with workload selector cannot have multiple entries in exportTo",
                );
            }
        } else {
            r.error(
                "spec.exportTo",
                "destination rule with workload selector cannot have exportTo beyond current namespace",
            );
        }
    }
    if seen.contains("*") && export_to.len() > 1 {
        r.error(
            "spec.exportTo",
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if seen.contains("~") && export_to.len() > 1 {
        r.error(
            "spec.exportTo",
            "cannot export service entry to no one (~) and someone",
        );
    }
}

/// Gateway references: `mesh`, `name`, or `namespace/name`.
pub(super) fn gateway_names(r: &mut Report<'_>, names: &[String], base: &str) {
    for (i, name) in names.iter().enumerate() {
        let path = format!("{base}[{i}]");
        match name.split_once('/') {
            None => {
                if let Some((gw, ns)) = name.split_once('.') {
                    let ns = ns.split('.').next().unwrap_or(ns);
                    r.warn(
                        path.clone(),
                        format!(
                            "using legacy gatewayName format {name:?}; prefer the \
                             <namespace>/<name> format: \"{ns}/{gw}\""
                        ),
                    );
                }
                r.check(path, fqdn(name));
            }
            Some((ns, gw)) => {
                if ns.is_empty() || gw.is_empty() {
                    r.error(path, "config namespace and gateway name cannot be empty");
                    continue;
                }
                if !is_dns1123_label(ns) {
                    r.error(path.clone(), format!("invalid value for namespace: {ns:?}"));
                }
                if !is_dns1123_label(gw) {
                    r.error(path, format!("invalid value for gateway name: {gw:?}"));
                }
            }
        }
    }
}

/// A `StringMatch` named `what` (`"uri"`, `"headers"`…) at `path`. `presence_ok`: an empty match
/// means "present" (headers) rather than nothing.
pub(super) fn string_match(
    r: &mut Report<'_>,
    path: &str,
    what: &str,
    sm: &StringMatch,
    presence_ok: bool,
) {
    let set = [&sm.exact, &sm.prefix, &sm.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        r.error(
            path,
            format!("{what:?}: only one of exact, prefix or regex may be set"),
        );
    } else if set == 0 && !presence_ok {
        r.warn(
            path,
            format!(
                "{what:?}: empty string match has no effect; set one of exact, prefix or regex"
            ),
        );
    }
    if sm.prefix.as_deref() == Some("") {
        r.error(
            format!("{path}.prefix"),
            format!("{what:?}: prefix string match should not be empty"),
        );
    }
    if let Some(re) = &sm.regex {
        if re.is_empty() {
            r.error(
                format!("{path}.regex"),
                format!("{what:?}: regex string match should not be empty"),
            );
        } else {
            r.check(format!("{path}.regex"), regex(re, what));
        }
    }
}

/// An RE2-style regex, as Envoy's `safe_regex` takes it.
pub(super) fn regex(re: &str, what: &str) -> Result<(), String> {
    if re.len() > MAX_REGEX_LEN {
        return Err(format!(
            "{what:?}: regex is too large, max length allowed is {MAX_REGEX_LEN}"
        ));
    }
    // Compiled anchored, as the routes use it, so that what validation accepts always compiles.
    match super::bounded_regex(&format!("^(?:{re})$")) {
        Ok(_) => Ok(()),
        Err(e) => {
            // The crate's message spans several lines with a caret diagram; keep the cause.
            let text = e.to_string();
            let cause = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .unwrap_or(text.lines().last().unwrap_or(""))
                .to_string();
            Err(format!(
                "{what:?}: invalid regex {re:?}: {cause}; Istio uses RE2 style regex-based match \
                 (https://github.com/google/re2/wiki/Syntax)"
            ))
        }
    }
}

/// HTTP/2 pseudo-headers Istio accepts as header match names.
const PSEUDO_HEADERS: [&str; 5] = [":method", ":scheme", ":authority", ":path", ":status"];

/// An HTTP token (RFC 9110 `tchar`s), which is what Istio accepts as a header name.
pub(super) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// Istio's JWT claim routing header, `@request.auth.claims.a.b` or `@request.auth.claims[a][b]`
/// (Istio's `jwt.ToRoutingClaim`).
fn is_jwt_claim_route(name: &str) -> bool {
    const PREFIX: &str = "@request.auth.claims";
    if name.len() < PREFIX.len() || !name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return false;
    }
    let rest = &name[PREFIX.len()..];
    (rest.starts_with('.') && rest.len() > 1)
        || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

/// A header name in a match (`headers`, `withoutHeaders`).
pub(super) fn header_match_name(r: &mut Report<'_>, path: &str, name: &str) {
    if name.is_empty() {
        r.error(path, "header name cannot be empty");
        return;
    }
    if is_jwt_claim_route(name) {
        // Valid for Istio, which matches it against the request's validated JWT; sluice
        // validates JWTs (RequestAuthentication) but does not route on their claims, so the
        // match never holds and its route is never taken (and `withoutHeaders` on it always
        // holds).
        r.warn(
            path,
            format!(
                "SLU0004: `{name}` is valid Istio config, but sluice does not route on JWT \
                 claims, so this claim never matches"
            ),
        );
        return;
    }
    if PSEUDO_HEADERS.contains(&name) {
        return;
    }
    if !is_token(name) {
        r.error(
            path,
            format!("header name {name} is not a valid header name"),
        );
        return;
    }
    if name.bytes().any(|c| c.is_ascii_uppercase()) {
        // Envoy compares header names case-insensitively, but Istio documents lower case and
        // other tools (analyzers, dashboards) compare them literally.
        r.warn(
            path,
            format!(
                "header name {name} should be lower-case: {}",
                name.to_ascii_lowercase()
            ),
        );
    }
    if matches!(name, "uri" | "scheme" | "method" | "authority") {
        r.warn(
            path,
            format!("header {name:?} is ignored in a header match; use the match's `{name}` field"),
        );
    }
}

/// Request/response header manipulation on a route or a destination.
pub(super) fn headers(r: &mut Report<'_>, path: &str, headers: Option<&Headers>) {
    let Some(h) = headers else {
        return;
    };
    if let Some(req) = &h.request {
        header_ops(r, &format!("{path}.request"), req, true);
    }
    if let Some(resp) = &h.response {
        header_ops(r, &format!("{path}.response"), resp, false);
    }
}

fn header_ops(r: &mut Report<'_>, path: &str, ops: &HeaderOperations, request: bool) {
    let is_pseudo = |n: &str| n.starts_with(':') || n.eq_ignore_ascii_case("host");
    let is_authority =
        |n: &str| n.eq_ignore_ascii_case(":authority") || n.eq_ignore_ascii_case("host");
    for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (name, value) in map {
            let field = format!("{path}.{op}.{name}");
            if name.is_empty() {
                r.error(field, "header name cannot be empty");
                continue;
            }
            // Requests may rewrite the authority this way; nothing else that is pseudo.
            let allowed = request && is_authority(name);
            if !allowed && name.eq_ignore_ascii_case("host") {
                r.error(
                    field.clone(),
                    format!("invalid header {name:?}: cannot set Host header"),
                );
            } else if !allowed && is_pseudo(name) {
                r.error(
                    field.clone(),
                    format!("invalid header {name:?}: header cannot have \":\" prefix"),
                );
            }
            if value.chars().any(|c| c.is_control() && c != '\t') {
                r.error(
                    field,
                    format!("header value configuration {value} is invalid"),
                );
            }
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        let field = format!("{path}.remove[{i}]");
        if name.is_empty() {
            r.error(field, "header name cannot be empty");
        } else if name.eq_ignore_ascii_case("host") {
            r.error(
                field,
                format!("invalid header {name:?}: cannot set Host header"),
            );
        } else if name.starts_with(':') {
            r.error(
                field,
                format!("invalid header {name:?}: header cannot have \":\" prefix"),
            );
        }
    }
}

/// A `workloadSelector.labels`; `who` prefixes the warning (`sidecar`, `service entry`).
pub(super) fn workload_selector(r: &mut Report<'_>, path: &str, labels: &Labels, who: &str) {
    for (k, v) in labels {
        if k.is_empty() {
            r.error(
                path,
                format!("empty key is not supported in selector: \"{k}={v}\""),
            );
        }
        if k.contains('*') || v.contains('*') {
            r.error(
                format!("{path}.labels.{k}"),
                format!("wildcard is not supported in selector: \"{k}={v}\""),
            );
        }
    }
    if labels.is_empty() {
        r.warn(
            path,
            format!(
                "{who}: workload selector specified without labels, will be applied to all \
                 services in namespace"
            ),
        );
    }
}
