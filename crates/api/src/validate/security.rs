//! PeerAuthentication (`ValidatePeerAuthentication`) and AuthorizationPolicy
//! (`ValidateAuthorizationPolicy`, with the attribute checks of `pkg/config/security`).
//!
//! Istio prefixes every AuthorizationPolicy error with `invalid policy NAME.NS:`; here each
//! message sits on its own field instead, with Istio's wording after the prefix.

use crate::networking::Labels;
use crate::security::{
    AuthorizationPolicy, Condition, Operation, PeerAuthentication, PolicySelector,
    PolicyTargetReference, Source, AUTHZ_ACTIONS, PEER_MTLS_MODES,
};

use crate::security::DRY_RUN_ANNOTATION;

use super::Report;

pub(super) fn peer_authentication(r: &mut Report<'_>, pa: &PeerAuthentication) {
    selector(r, pa.selector.as_ref());
    if let Some(mtls) = &pa.mtls {
        mtls_mode(r, "spec.mtls.mode", mtls.mode.as_deref());
    }
    let empty_selector = pa
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty());
    let Some(ports) = &pa.port_level_mtls else {
        return;
    };
    if ports.is_empty() {
        r.error(
            "spec.portLevelMtls",
            "port level mTLS, if defined, must have at least one element",
        );
        return;
    }
    if empty_selector {
        r.error(
            "spec.portLevelMtls",
            "mesh/namespace peer authentication cannot have port level mTLS",
        );
    }
    for (port, mtls) in ports {
        let path = format!("spec.portLevelMtls.{port}");
        match port.trim().parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => {}
            Ok(_) => r.error(path.clone(), "port must be in range 1..65535"),
            Err(_) => r.error(
                path.clone(),
                format!("invalid port {port:?}: portLevelMtls keys are port numbers"),
            ),
        }
        mtls_mode(r, &format!("{path}.mode"), mtls.mode.as_deref());
    }
}

fn mtls_mode(r: &mut Report<'_>, path: &str, mode: Option<&str>) {
    let Some(mode) = mode.filter(|m| !m.is_empty()) else {
        return;
    };
    if !PEER_MTLS_MODES.contains(&mode) {
        r.error(
            path,
            format!(
                "invalid mTLS mode {mode}; expected one of {}",
                PEER_MTLS_MODES.join(", ")
            ),
        );
    }
}

/// `validateWorkloadSelector` for `selector.matchLabels`.
fn selector(r: &mut Report<'_>, sel: Option<&PolicySelector>) {
    let Some(sel) = sel else {
        return;
    };
    selector_labels(r, "spec.selector.matchLabels", &sel.match_labels);
    if sel.match_labels.is_empty() {
        r.warn(
            "spec.selector",
            "workload selector specified without labels",
        );
    }
}

fn selector_labels(r: &mut Report<'_>, path: &str, labels: &Labels) {
    for (k, v) in labels {
        if k.is_empty() {
            r.error(
                path,
                format!("empty key is not supported in selector: \"{k}={v}\""),
            );
        }
        if k.contains('*') || v.contains('*') {
            r.error(
                format!("{path}.{k}"),
                format!("wildcard is not supported in selector: \"{k}={v}\""),
            );
        }
    }
}

/// The kinds a `targetRef` may name, as `group/kind` (`core` for the empty group).
const TARGET_REF_KINDS: [(&str, &str); 3] = [
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
];

fn target_ref(r: &mut Report<'_>, path: &str, t: &PolicyTargetReference) {
    if t.name.is_empty() {
        r.error(path, "targetRef name must be set");
    }
    if !t.namespace.is_empty() {
        r.error(
            format!("{path}.namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    let group = if t.group.is_empty() {
        "core"
    } else {
        t.group.as_str()
    };
    if !TARGET_REF_KINDS
        .iter()
        .any(|(g, k)| *g == group && *k == t.kind)
    {
        let allowed: Vec<String> = TARGET_REF_KINDS
            .iter()
            .map(|(g, k)| format!("{g}/{k}"))
            .collect();
        r.error(
            format!("{path}.kind"),
            format!(
                "targetRef must be to one of {} but was {}/{}",
                allowed.join(", "),
                t.group,
                t.kind
            ),
        );
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

pub(super) fn authorization_policy(r: &mut Report<'_>, ap: &AuthorizationPolicy) {
    let set = usize::from(ap.selector.is_some())
        + usize::from(ap.target_ref.is_some())
        + usize::from(!ap.target_refs.is_empty());
    if set > 1 {
        r.error(
            "spec",
            "only one of targetRefs or workloadSelector can be set",
        );
    }
    selector(r, ap.selector.as_ref());
    if let Some(t) = &ap.target_ref {
        target_ref(r, "spec.targetRef", t);
    }
    for (i, t) in ap.target_refs.iter().enumerate() {
        target_ref(r, &format!("spec.targetRefs[{i}]"), t);
    }

    let action = ap.action();
    if !AUTHZ_ACTIONS.contains(&action.as_str()) {
        r.error(
            "spec.action",
            format!(
                "invalid action {action}; expected one of {}",
                AUTHZ_ACTIONS.join(", ")
            ),
        );
        return;
    }
    if let Some(value) = r.res.meta.annotations.get(DRY_RUN_ANNOTATION) {
        let (ns, name) = (&r.res.meta.namespace, &r.res.meta.name);
        if action == "ALLOW" || action == "DENY" {
            if parse_go_bool(value).is_none() {
                r.error(
                    format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
                    format!(
                        "{ns}/{name} has annotation {DRY_RUN_ANNOTATION} with invalid value ({value}): \
                         expected true or false"
                    ),
                );
            }
        } else {
            r.error(
                format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
                format!(
                    "the annotation {DRY_RUN_ANNOTATION} currently only supports action ALLOW/DENY, \
                     found action {action} in {ns}/{name}"
                ),
            );
        }
    }

    if action == "CUSTOM" {
        custom(r, ap);
    }
    if ap.provider.is_some() && action != "CUSTOM" {
        r.error(
            "spec.provider",
            format!("`provider` must not be with non CUSTOM action, found {action}"),
        );
    }
    if action == "DENY" && ap.rules.is_none() {
        r.error(
            "spec",
            "DENY action without `rules` is meaningless as it will never be triggered, add an \
             empty rule `{}` if you want it be triggered for every request",
        );
    }

    for (i, rule) in ap.rules.iter().flatten().enumerate() {
        let base = format!("spec.rules[{i}]");
        let mut tcp_in_from = false;
        let mut tcp_in_to = false;
        let mut from_exists = false;
        let mut to_exists = false;
        if rule.from.as_ref().is_some_and(Vec::is_empty) {
            r.error(
                format!("{base}.from"),
                format!("`from` must not be empty, found at rule {i}"),
            );
        }
        for (j, from) in rule.from.iter().flatten().enumerate() {
            let path = format!("{base}.from[{j}]");
            let Some(src) = &from.source else {
                r.error(
                    path,
                    format!("`from.source` must not be nil, found at rule {i}"),
                );
                continue;
            };
            from_exists = true;
            tcp_in_from |= source(r, &format!("{path}.source"), src, i);
        }
        if rule.to.as_ref().is_some_and(Vec::is_empty) {
            r.error(
                format!("{base}.to"),
                format!("`to` must not be empty, found at rule {i}"),
            );
        }
        for (j, to) in rule.to.iter().flatten().enumerate() {
            let path = format!("{base}.to[{j}]");
            let Some(op) = &to.operation else {
                r.error(
                    path,
                    format!("`to.operation` must not be nil, found at rule {i}"),
                );
                continue;
            };
            to_exists = true;
            tcp_in_to |= operation(r, &format!("{path}.operation"), op, i);
        }
        for (j, cond) in rule.when.iter().enumerate() {
            condition(r, &format!("{base}.when[{j}]"), cond);
        }
        if action == "DENY"
            && ((from_exists && !to_exists && !tcp_in_from) || (to_exists && !tcp_in_to))
        {
            r.warn(
                base,
                "configured AuthorizationPolicy will deny all traffic to TCP ports under its \
                 scope due to the use of only HTTP attributes in a DENY rule; it is recommended \
                 to explicitly specify the port",
            );
        }
    }
}

/// The CUSTOM-only checks: rules present, a provider, and no identity-based matching (the
/// external authorizer sees the request, not the RBAC filter's identities).
fn custom(r: &mut Report<'_>, ap: &AuthorizationPolicy) {
    let Some(rules) = &ap.rules else {
        r.error(
            "spec",
            "CUSTOM action without `rules` is meaningless as it will never be triggered, add an \
             empty rule `{}` if you want it be triggered for every request",
        );
        return;
    };
    if ap.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
        r.error("spec.provider", "`provider.name` must not be empty");
    }
    for (i, rule) in rules.iter().enumerate() {
        for (j, from) in rule.from.iter().flatten().enumerate() {
            let Some(src) = &from.source else {
                continue;
            };
            let path = format!("spec.rules[{i}].from[{j}].source");
            for (set, name, field) in [
                (!src.namespaces.is_empty(), "From.Namespaces", "namespaces"),
                (
                    !src.not_namespaces.is_empty(),
                    "From.NotNamespaces",
                    "notNamespaces",
                ),
                (!src.principals.is_empty(), "From.Principals", "principals"),
                (
                    !src.not_principals.is_empty(),
                    "From.NotPrincipals",
                    "notPrincipals",
                ),
                (
                    !src.request_principals.is_empty(),
                    "From.RequestPrincipals",
                    "requestPrincipals",
                ),
                (
                    !src.not_request_principals.is_empty(),
                    "From.NotRequestPrincipals",
                    "notRequestPrincipals",
                ),
            ] {
                if set {
                    r.error(
                        format!("{path}.{field}"),
                        format!("{name} is currently not supported with CUSTOM action"),
                    );
                }
            }
        }
        for (j, cond) in rule.when.iter().enumerate() {
            let k = cond.key.as_str();
            if k == "source.namespace" || k == "source.principal" || k.starts_with("request.auth.")
            {
                r.error(
                    format!("spec.rules[{i}].when[{j}].key"),
                    format!("{k} is currently not supported with CUSTOM action"),
                );
            }
        }
    }
}

/// Checks one `source`; returns whether it uses attributes a TCP connection has.
fn source(r: &mut Report<'_>, path: &str, src: &Source, rule: usize) -> bool {
    let lists: [(&str, &str, &Vec<String>); 12] = [
        ("principals", "Principals", &src.principals),
        (
            "requestPrincipals",
            "RequestPrincipals",
            &src.request_principals,
        ),
        ("namespaces", "Namespaces", &src.namespaces),
        ("ipBlocks", "IpBlocks", &src.ip_blocks),
        ("remoteIpBlocks", "RemoteIpBlocks", &src.remote_ip_blocks),
        ("notPrincipals", "NotPrincipals", &src.not_principals),
        (
            "notRequestPrincipals",
            "NotRequestPrincipals",
            &src.not_request_principals,
        ),
        ("notNamespaces", "NotNamespaces", &src.not_namespaces),
        ("notIpBlocks", "NotIpBlocks", &src.not_ip_blocks),
        (
            "notRemoteIpBlocks",
            "NotRemoteIpBlocks",
            &src.not_remote_ip_blocks,
        ),
        ("serviceAccounts", "ServiceAccounts", &src.service_accounts),
        (
            "notServiceAccounts",
            "NotServiceAccounts",
            &src.not_service_accounts,
        ),
    ];
    if lists.iter().all(|(_, _, l)| l.is_empty()) {
        r.error(
            path,
            format!("`from.source` must not be empty, found at rule {rule}"),
        );
    }
    for (field, list) in [
        ("ipBlocks", &src.ip_blocks),
        ("notIpBlocks", &src.not_ip_blocks),
        ("remoteIpBlocks", &src.remote_ip_blocks),
        ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
    ] {
        for (k, v) in list.iter().enumerate() {
            if let Err(e) = ip_or_cidr(v) {
                r.error(format!("{path}.{field}[{k}]"), e);
            }
        }
    }
    empty_values(r, path, &lists);
    for (field, list) in [
        ("serviceAccounts", &src.service_accounts),
        ("notServiceAccounts", &src.not_service_accounts),
    ] {
        for (k, v) in list.iter().enumerate() {
            if v.contains('*') || v.split('/').count() > 2 {
                r.error(
                    format!("{path}.{field}[{k}]"),
                    format!(
                        "invalid service account {v:?}: use NAME or NAMESPACE/NAME, without wildcards"
                    ),
                );
            }
        }
    }
    !src.principals.is_empty()
        || !src.not_principals.is_empty()
        || !src.ip_blocks.is_empty()
        || !src.not_ip_blocks.is_empty()
        || !src.namespaces.is_empty()
        || !src.not_namespaces.is_empty()
        || !src.remote_ip_blocks.is_empty()
        || !src.not_remote_ip_blocks.is_empty()
        || !src.service_accounts.is_empty()
        || !src.not_service_accounts.is_empty()
}

/// Checks one `operation`; returns whether it uses ports (the only TCP attribute).
fn operation(r: &mut Report<'_>, path: &str, op: &Operation, rule: usize) -> bool {
    let lists: [(&str, &str, &Vec<String>); 8] = [
        ("ports", "Ports", &op.ports),
        ("methods", "Methods", &op.methods),
        ("paths", "Paths", &op.paths),
        ("hosts", "Hosts", &op.hosts),
        ("notPorts", "NotPorts", &op.not_ports),
        ("notMethods", "NotMethods", &op.not_methods),
        ("notPaths", "NotPaths", &op.not_paths),
        ("notHosts", "NotHosts", &op.not_hosts),
    ];
    if lists.iter().all(|(_, _, l)| l.is_empty()) {
        r.error(
            path,
            format!("`to.operation` must not be empty, found at rule {rule}"),
        );
    }
    for (field, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
        for (k, v) in list.iter().enumerate() {
            if let Err(e) = port_string(v) {
                r.error(format!("{path}.{field}[{k}]"), e);
            }
        }
    }
    empty_values(r, path, &lists);
    for (field, name, list) in [
        ("paths", "Paths", &op.paths),
        ("notPaths", "NotPaths", &op.not_paths),
    ] {
        if let Some(k) = list.iter().position(|p| !valid_path_template(p)) {
            r.error(
                format!("{path}.{field}[{k}]"),
                format!("invalid or unsupported path template, found in {name}"),
            );
        }
    }
    !op.ports.is_empty() || !op.not_ports.is_empty()
}

/// `CheckEmptyValues`: the first empty string of each list.
fn empty_values(r: &mut Report<'_>, path: &str, lists: &[(&str, &str, &Vec<String>)]) {
    for (field, name, list) in lists {
        if let Some(k) = list.iter().position(String::is_empty) {
            r.error(
                format!("{path}.{field}[{k}]"),
                format!("empty value not allowed, found in {name}"),
            );
        }
    }
}

/// `ValidateIPs` for one value.
fn ip_or_cidr(v: &str) -> Result<(), String> {
    if v.contains('/') {
        v.parse::<ipnet::IpNet>()
            .map(|_| ())
            .map_err(|_| format!("bad CIDR range ({v})"))
    } else {
        v.parse::<std::net::IpAddr>()
            .map(|_| ())
            .map_err(|_| format!("bad IP address ({v})"))
    }
}

/// `ValidatePorts` for one value: digits, at most 65535.
fn port_string(v: &str) -> Result<(), String> {
    match v.parse::<u64>() {
        Ok(p) if p <= 65535 => Ok(()),
        Ok(_) => Err(format!("bad port ({v}): must be at most 65535")),
        Err(_) => Err(format!(
            "bad port ({v}): ports are written as strings of digits, e.g. \"8080\""
        )),
    }
}

/// `CheckValidPathTemplate`: a path using `{*}`/`{**}` must not also use named variables,
/// empty braces or bare `*`/`**` segments.
fn valid_path_template(path: &str) -> bool {
    if !(path.contains("{*}") || path.contains("{**}")) {
        return true;
    }
    // Istio's `\/{\w+\=\*[*]?\}|{\w*\}|\/\*[*]?|\*[*]?\/`, without a regex.
    let b = path.as_bytes();
    for (i, c) in b.iter().enumerate() {
        match c {
            b'{' => {
                let Some(end) = path[i..].find('}') else {
                    continue;
                };
                let inner = &path[i + 1..i + end];
                let word = |s: &str| s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
                if word(inner) {
                    return false;
                }
                if let Some((name, rest)) = inner.split_once('=') {
                    if !name.is_empty() && word(name) && (rest == "*" || rest == "**") {
                        return false;
                    }
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => return false,
            b'*' if b.get(i + 1) == Some(&b'/')
                || (b.get(i + 1) == Some(&b'*') && b.get(i + 2) == Some(&b'/')) =>
            {
                return false
            }
            _ => {}
        }
    }
    true
}

/// The attribute keys of `when`, as `ValidateAttribute` accepts them.
fn attribute(key: &str, values: &[String]) -> Result<(), String> {
    if values.iter().any(String::is_empty) {
        return Err(format!("empty value not allowed, found in {key}"));
    }
    let map_key = || -> Result<(), String> {
        let open = key.find('[');
        match open {
            Some(open) if key.ends_with(']') && open > 0 && open < key.len() - 2 => Ok(()),
            _ => Err(format!("bad key ({key}): should have format a[b]")),
        }
    };
    let ips = || -> Result<(), String> { values.iter().try_for_each(|v| ip_or_cidr(v)) };
    match key {
        _ if key.starts_with("request.headers") => map_key(),
        "source.ip" | "remote.ip" | "destination.ip" => ips(),
        "source.namespace"
        | "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Ok(()),
        _ if key.starts_with("request.auth.claims") => map_key(),
        "destination.port" => values.iter().try_for_each(|v| port_string(v)),
        _ if key.starts_with("experimental.envoy.filters.") => map_key(),
        "destination.namespace" => Err(format!(
            "attribute {key} is replaced by the metadata.namespace"
        )),
        _ if key.starts_with("destination.labels") => Err(format!(
            "attribute {key} is replaced by the workload selector"
        )),
        "destination.name" | "destination.user" => Err(format!(
            "deprecated attribute {key}: only supported in v1alpha1"
        )),
        _ => Err(format!("unknown attribute: {key}")),
    }
}

fn condition(r: &mut Report<'_>, path: &str, cond: &Condition) {
    let key = cond.key.as_str();
    if key.is_empty() {
        r.error(format!("{path}.key"), "`key` must not be empty");
        return;
    }
    if cond.values.is_empty() && cond.not_values.is_empty() {
        r.error(
            path,
            format!("at least one of `values` or `notValues` must be set for key {key}"),
        );
        return;
    }
    // Istio checks the key against both lists, even an empty one, and reports it twice; once
    // per list actually written is enough to find it.
    if let Some(Err(e)) = (!cond.values.is_empty()).then(|| attribute(key, &cond.values)) {
        r.error(
            format!("{path}.values"),
            format!("invalid `value` for `key` {key}: {e}"),
        );
    }
    if let Some(Err(e)) = (!cond.not_values.is_empty()).then(|| attribute(key, &cond.not_values)) {
        r.error(
            format!("{path}.notValues"),
            format!("invalid `notValue` for `key` {key}: {e}"),
        );
    }
}
