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

pub(super) fn selector_labels(r: &mut Report<'_>, path: &str, labels: &Labels) {
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
const TARGET_REF_KINDS: [(&str, &str); 4] = [
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
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
                (
                    !src.service_accounts.is_empty(),
                    "From.ServiceAccounts",
                    "serviceAccounts",
                ),
                (
                    !src.not_service_accounts.is_empty(),
                    "From.NotServiceAccounts",
                    "notServiceAccounts",
                ),
                (
                    !src.trust_domains.is_empty(),
                    "From.TrustDomains",
                    "trustDomains",
                ),
                (
                    !src.not_trust_domains.is_empty(),
                    "From.NotTrustDomains",
                    "notTrustDomains",
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
            if matches!(
                k,
                "source.namespace"
                    | "source.serviceAccount"
                    | "source.trustDomain"
                    | "source.principal"
            ) || k.starts_with("request.auth.")
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
    let lists: [(&str, &str, &Vec<String>); 14] = [
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
        ("trustDomains", "TrustDomains", &src.trust_domains),
        ("notTrustDomains", "NotTrustDomains", &src.not_trust_domains),
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
    let identities = src.principals.len()
        + src.not_principals.len()
        + src.namespaces.len()
        + src.not_namespaces.len();
    if identities > 0 && src.service_accounts.len() + src.not_service_accounts.len() > 0 {
        r.error(
            path,
            format!(
                "cannot set serviceAccounts with namespaces or principals, found at rule {rule}"
            ),
        );
    }
    for (field, list) in [
        ("serviceAccounts", &src.service_accounts),
        ("notServiceAccounts", &src.not_service_accounts),
    ] {
        if let Err((k, e)) = service_accounts(list) {
            let at = k.map_or(String::new(), |k| format!("[{k}]"));
            r.error(format!("{path}.{field}{at}"), e);
        }
    }
    for (field, list) in [
        ("trustDomains", &src.trust_domains),
        ("notTrustDomains", &src.not_trust_domains),
    ] {
        if let Err((k, e)) = trust_domains(list) {
            r.error(format!("{path}.{field}[{k}]"), e);
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
        if let Some((k, e)) = list
            .iter()
            .enumerate()
            .find_map(|(k, p)| path_template(p).err().map(|e| (k, e)))
        {
            r.error(
                format!("{path}.{field}[{k}]"),
                format!(
                    "invalid or unsupported path {}, found in {name}: {e}",
                    list[k]
                ),
            );
        }
    }
    !op.ports.is_empty() || !op.not_ports.is_empty()
}

/// The most service accounts one list may hold (Istio bounds the configuration size).
const MAX_SERVICE_ACCOUNTS: usize = 16;

/// `CheckServiceAccount`: at most 16 values, each `NAME` or `NAMESPACE/NAME`, no wildcard, at
/// most 320 characters. The error names the value's index when it is about one value.
fn service_accounts(list: &[String]) -> Result<(), (Option<usize>, String)> {
    if list.len() > MAX_SERVICE_ACCOUNTS {
        return Err((
            None,
            format!(
                "may not have more than {MAX_SERVICE_ACCOUNTS} values, found {}",
                list.len()
            ),
        ));
    }
    for (k, v) in list.iter().enumerate() {
        // Empty values are reported with the other lists.
        if v.is_empty() {
            continue;
        }
        let problem = if v.contains('*') {
            Some(format!("wildcard not allowed in service account {v:?}"))
        } else if v.len() > 320 {
            Some(format!(
                "service account cannot exceed 320 characters, found {}",
                v.len()
            ))
        } else {
            match v.split_once('/') {
                Some((ns, sa)) if ns.is_empty() || sa.is_empty() || sa.contains('/') => {
                    Some(format!(
                    "expected format 'serviceAccount' or 'namespace/serviceAccount', found {v:?}"
                ))
                }
                _ => None,
            }
        };
        if let Some(p) = problem {
            return Err((Some(k), p));
        }
    }
    Ok(())
}

/// `CheckWildcardValues`: at most one `*`, at the start or the end.
fn wildcard_value(v: &str) -> Result<(), String> {
    let stars = v.matches('*').count();
    if stars > 1 {
        return Err(format!("at most one wildcard is allowed, found {v:?}"));
    }
    if stars == 1 && v != "*" && !v.starts_with('*') && !v.ends_with('*') {
        return Err(format!(
            "wildcard is only allowed at the start or end, found {v:?}"
        ));
    }
    Ok(())
}

/// `CheckTrustDomainValues`: wildcard rules, and no `/`.
fn trust_domains(list: &[String]) -> Result<(), (usize, String)> {
    for (k, v) in list.iter().enumerate() {
        if v.is_empty() {
            continue;
        }
        wildcard_value(v).map_err(|e| (k, e))?;
        if v.contains('/') {
            return Err((k, format!("trust domain must not contain '/', found {v:?}")));
        }
    }
    Ok(())
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

/// `CheckValidPathTemplate`: `{*}` matches one segment and `{**}` the rest (last only); any
/// other brace is refused, and beside a template every segment must be a plain URI `pchar`
/// literal.
fn path_template(path: &str) -> Result<(), String> {
    let template = path.contains("{*}") || path.contains("{**}");
    let mut any_seen = false;
    for glob in path.trim_matches('/').split('/') {
        match glob {
            "{*}" | "{**}" if any_seen => return Err("{**} is not the last operator".into()),
            "{*}" => continue,
            "{**}" => {
                any_seen = true;
                continue;
            }
            _ => {}
        }
        if glob.contains(['{', '}']) {
            return Err("contains '{' or '}' beyond a supported path template".into());
        }
        let literal = !glob.is_empty()
            && glob
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&c));
        if template && !literal {
            return Err(format!(
                "contains segment {glob:?} with invalid string literal"
            ));
        }
    }
    Ok(())
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
        "source.serviceAccount" => service_accounts(values).map_err(|(_, e)| e),
        "source.trustDomain" => values.iter().try_for_each(|v| wildcard_value(v)),
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
