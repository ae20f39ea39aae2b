//! VirtualService (`ValidateVirtualService`, `validateHTTPRoute` and friends).

use base64::Engine as _;

use crate::networking::{
    CorsPolicy, Destination, HttpFaultInjection, HttpMatchRequest, HttpRedirect, HttpRetry,
    HttpRewrite, HttpRoute, HttpRouteDestination, RouteDestination, VirtualService,
};

use super::common::{
    export_to, gateway_names, header_match_name, headers, is_token, regex, string_match,
};
use super::host_index::HostIndex;
use super::names::{self, is_dns1123_label, is_ip};
use super::Report;

/// The reserved gateway name for sidecars.
const MESH: &str = "mesh";

/// Direct response bodies above this are refused; above a tenth of it, a warning.
const MAX_DIRECT_RESPONSE_BODY: usize = 1024 * 1024;

/// Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` policies.
const RETRY_ON_POLICIES: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status names accepted by fault injection.
const GRPC_STATUSES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

pub(super) fn check(r: &mut Report<'_>, vs: &VirtualService) {
    // A VirtualService without hosts can only be used as the delegate of another one.
    let delegate = vs.hosts.is_empty();
    if delegate {
        if !vs.gateways.is_empty() {
            r.error(
                "spec.gateways",
                "delegate virtual service must have no gateways specified",
            );
        }
        if !vs.tls.is_empty() {
            r.error(
                "spec.tls",
                "delegate virtual service must have no tls route specified",
            );
        }
        if !vs.tcp.is_empty() {
            r.error(
                "spec.tcp",
                "delegate virtual service must have no tcp route specified",
            );
        }
        if vs.gateways.is_empty() && vs.tls.is_empty() && vs.tcp.is_empty() {
            r.warn(
                "spec.hosts",
                "virtual service has no hosts, so it only takes effect as the delegate of another \
                 virtual service; add hosts to route traffic with it",
            );
        }
    }

    // No `gateways` means sidecars only; a list without `mesh` means gateways only.
    let applies_to_gateway = !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g == MESH);
    let applies_to_mesh = !applies_to_gateway;
    gateway_names(r, &vs.gateways, "spec.gateways");

    let sni = vs
        .tls
        .iter()
        .any(|t| t.matches.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_hosts_valid = true;
    for (i, host) in vs.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        let result = if applies_to_gateway {
            names::wildcard_domain_for_gateway(sni, host)
        } else {
            names::wildcard_domain(host)
        };
        match result {
            Err(e) if !is_ip(host) => {
                r.error(path, e);
                all_hosts_valid = false;
            }
            Ok(()) if applies_to_mesh && host == "*" => {
                r.error(
                    path,
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_hosts_valid = false;
            }
            _ => {}
        }
    }
    // Istio reports every overlapping pair; one error per host that overlaps an earlier one
    // (naming the first) says the same in linear time and output.
    let mut hosts = HostIndex::new();
    for (j, b) in vs.hosts.iter().enumerate() {
        if let Some(i) = hosts.first_overlapping(b).filter(|_| all_hosts_valid) {
            let a = &vs.hosts[i];
            r.error(
                format!("spec.hosts[{j}]"),
                format!("duplicate hosts in virtual service: {a} & {b}"),
            );
        }
        hosts.insert(b);
    }

    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        r.error(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    for (i, route) in vs.http.iter().enumerate() {
        http_route(r, route, &format!("spec.http[{i}]"), delegate);
    }
    unreachable_http_rules(r, &vs.http);
    for (i, tls) in vs.tls.iter().enumerate() {
        let base = format!("spec.tls[{i}]");
        if tls.matches.is_empty() {
            r.error(
                base.clone(),
                "TLS route must have at least one match condition",
            );
        }
        for (j, m) in tls.matches.iter().enumerate() {
            let mbase = format!("{base}.match[{j}]");
            if m.sni_hosts.is_empty() {
                r.error(mbase.clone(), "TLS match must have at least one SNI host");
            }
            for (k, sni_host) in m.sni_hosts.iter().enumerate() {
                sni_host_check(
                    r,
                    &format!("{mbase}.sniHosts[{k}]"),
                    sni_host,
                    vs,
                    &hosts,
                    applies_to_gateway,
                );
            }
            subnets(
                r,
                &m.destination_subnets,
                &format!("{mbase}.destinationSubnets"),
            );
            if m.port != 0 {
                r.check(format!("{mbase}.port"), names::port(m.port));
            }
            gateway_names(r, &m.gateways, &format!("{mbase}.gateways"));
        }
        if tls.route.is_empty() {
            r.error(format!("{base}.route"), "TLS route is required");
        }
        route_destinations(r, &tls.route, &base);
    }
    for (i, tcp) in vs.tcp.iter().enumerate() {
        let base = format!("spec.tcp[{i}]");
        for (j, m) in tcp.matches.iter().enumerate() {
            let mbase = format!("{base}.match[{j}]");
            subnets(
                r,
                &m.destination_subnets,
                &format!("{mbase}.destinationSubnets"),
            );
            if let Some(s) = &m.source_subnet {
                r.check(format!("{mbase}.sourceSubnet"), names::ip_subnet(s));
            }
            if m.port != 0 {
                r.check(format!("{mbase}.port"), names::port(m.port));
            }
            gateway_names(r, &m.gateways, &format!("{mbase}.gateways"));
        }
        if tcp.route.is_empty() {
            r.error(format!("{base}.route"), "TCP route is required");
        }
        route_destinations(r, &tcp.route, &base);
    }

    export_to(r, &vs.export_to, false, false);
}

fn subnets(r: &mut Report<'_>, subnets: &[String], base: &str) {
    for (i, s) in subnets.iter().enumerate() {
        r.check(format!("{base}[{i}]"), names::ip_subnet(s));
    }
}

/// Each SNI host must be a name the VirtualService's hosts cover, or the rule can never match.
fn sni_host_check(
    r: &mut Report<'_>,
    path: &str,
    sni: &str,
    vs: &VirtualService,
    hosts: &HostIndex,
    gateway: bool,
) {
    let valid = if gateway || vs.gateways.is_empty() {
        names::wildcard_domain_for_gateway(true, sni)
    } else {
        names::wildcard_domain(sni)
    };
    if let Err(e) = valid {
        if is_ip(sni) {
            r.warn(
                path,
                format!("using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"),
            );
        } else {
            r.error(path, e);
        }
        return;
    }
    if !hosts.covers(sni) {
        r.error(
            path,
            format!(
                "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                some_of(&vs.hosts)
            ),
        );
    }
}

/// The first few of `items`, comma-separated, and how many more: a message must not grow with
/// the size of the resource.
fn some_of(items: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut out = items
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        out.push_str(&format!(", \u{2026} ({} more)", items.len() - SHOWN));
    }
    out
}

/// The route's name as Istio's messages print it: `"name"` or `#index`.
fn route_name(route: &HttpRoute, index: usize) -> String {
    match &route.name {
        Some(n) if !n.is_empty() => format!("{n:?}"),
        _ => format!("#{index}"),
    }
}

/// A second rule without matches can never be reached: the first one takes everything.
fn unreachable_http_rules(r: &mut Report<'_>, routes: &[HttpRoute]) {
    let mut catch_all_seen = false;
    for (i, route) in routes.iter().enumerate() {
        if route.matches.is_empty() {
            if catch_all_seen {
                r.warn(
                    format!("spec.http[{i}]"),
                    format!(
                        "virtualService rule {} not used (only the last rule can have no matches)",
                        route_name(route, i)
                    ),
                );
            }
            catch_all_seen = true;
        }
    }
}

fn http_route(r: &mut Report<'_>, h: &HttpRoute, base: &str, in_delegate: bool) {
    actions(r, h, base, in_delegate);
    for (j, m) in h.matches.iter().enumerate() {
        match_request(r, m, &format!("{base}.match[{j}]"), in_delegate);
    }
    headers(r, &format!("{base}.headers"), h.headers.as_deref());
    if let Some(f) = &h.fault {
        fault(r, f, &format!("{base}.fault"));
    }
    if let Some(c) = &h.cors_policy {
        cors_policy(r, c, &format!("{base}.corsPolicy"));
    }
    mirrors(r, h, base);
    if let Some(redirect) = &h.redirect {
        http_redirect(r, redirect, h, &format!("{base}.redirect"));
    }
    if let Some(retries) = &h.retries {
        http_retry(r, retries, &format!("{base}.retries"));
    }
    if let Some(rewrite) = &h.rewrite {
        http_rewrite(r, rewrite, &format!("{base}.rewrite"));
    }
    http_route_destinations(r, &h.route, base);
    if let Some(t) = &h.timeout {
        r.check(format!("{base}.timeout"), names::duration(t));
    }
    if let Some(d) = &h.direct_response {
        let path = format!("{base}.directResponse");
        r.check(format!("{path}.status"), http_status(d.status));
        if let Some(body) = &d.body {
            let size = match (&body.string, &body.bytes) {
                (Some(_), Some(_)) => {
                    r.error(
                        format!("{path}.body"),
                        "body may only contain one of string or bytes",
                    );
                    0
                }
                (Some(s), None) => s.len(),
                (None, Some(b)) => match base64::engine::general_purpose::STANDARD.decode(b) {
                    Ok(bytes) => bytes.len(),
                    Err(e) => {
                        r.error(
                            format!("{path}.body.bytes"),
                            format!("body.bytes must be base64: {e}"),
                        );
                        0
                    }
                },
                (None, None) => 0,
            };
            if size > MAX_DIRECT_RESPONSE_BODY {
                r.error(
                    format!("{path}.body"),
                    "large direct_responses may impact control plane performance, must be less than 1MB",
                );
            } else if size > MAX_DIRECT_RESPONSE_BODY / 10 {
                r.warn(
                    format!("{path}.body"),
                    "large direct_responses may impact control plane performance",
                );
            }
        }
    }
}

/// Exactly one action: `route`, `redirect`, `directResponse` or `delegate`, with the
/// combinations Istio refuses.
fn actions(r: &mut Report<'_>, h: &HttpRoute, base: &str, in_delegate: bool) {
    if let Some(d) = &h.delegate {
        if in_delegate {
            r.error(
                format!("{base}.delegate"),
                "delegate HTTP route cannot contain delegate",
            );
        }
        let name = h
            .name
            .as_deref()
            .map(|n| format!(" {n}"))
            .unwrap_or_default();
        if h.redirect.is_some() {
            r.error(
                format!("{base}.redirect"),
                format!("root HTTP route{name} must not specify redirect"),
            );
        }
        if !h.route.is_empty() {
            r.error(
                format!("{base}.route"),
                format!("root HTTP route{name} must not specify route"),
            );
        }
        if h.direct_response.is_some() {
            r.error(
                format!("{base}.directResponse"),
                format!("root HTTP route{name} must not specify directResponse"),
            );
        }
        if d.name.is_empty() {
            r.error(format!("{base}.delegate.name"), "delegate name is required");
        } else if !names::is_dns1123_subdomain(&d.name) {
            r.error(
                format!("{base}.delegate.name"),
                format!("invalid delegate name {:?}", d.name),
            );
        }
        if let Some(ns) = d.namespace.as_deref().filter(|ns| !ns.is_empty()) {
            if !is_dns1123_label(ns) {
                r.error(
                    format!("{base}.delegate.namespace"),
                    format!("invalid delegate namespace {ns:?}"),
                );
            }
        }
    } else if h.redirect.is_some() {
        let path = format!("{base}.redirect");
        if !h.route.is_empty() {
            r.error(
                path.clone(),
                "HTTP route cannot contain both route and redirect",
            );
        }
        if h.fault.is_some() {
            r.error(
                path.clone(),
                "HTTP route cannot contain both fault and redirect",
            );
        }
        if h.rewrite.is_some() {
            r.error(
                path.clone(),
                "HTTP route rule cannot contain both rewrite and redirect",
            );
        }
        if h.direct_response.is_some() {
            r.error(
                path,
                "HTTP route cannot contain both directResponse and redirect",
            );
        }
    } else if h.direct_response.is_some() {
        let path = format!("{base}.directResponse");
        if !h.route.is_empty() {
            r.error(
                path.clone(),
                "HTTP route cannot contain both route and directResponse",
            );
        }
        if h.fault.is_some() {
            r.error(
                path.clone(),
                "HTTP route cannot contain both fault and directResponse",
            );
        }
        if h.rewrite.is_some() {
            r.error(
                path,
                "HTTP route rule cannot contain both rewrite and directResponse",
            );
        }
    } else if h.route.is_empty() {
        r.error(base, "HTTP route, redirect or directResponse is required");
    }
    if h.mirror.is_some() && !h.mirrors.is_empty() {
        r.error(
            format!("{base}.mirrors"),
            "HTTP route cannot contain both mirror and mirrors",
        );
    }
}

fn match_request(r: &mut Report<'_>, m: &HttpMatchRequest, base: &str, in_delegate: bool) {
    for (what, sm) in [
        ("uri", m.uri.as_ref()),
        ("scheme", m.scheme.as_deref()),
        ("method", m.method.as_deref()),
        ("authority", m.authority.as_deref()),
    ] {
        if let Some(sm) = sm {
            let path = format!("{base}.{what}");
            string_match(r, &path, what, sm, false);
            if in_delegate && sm.regex.is_some() {
                r.error(
                    path,
                    format!("{what} match does not support regex match for delegating"),
                );
            }
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, sm) in map {
            let path = format!("{base}.{field}.{name}");
            header_match_name(r, &path, name);
            string_match(r, &path, field, sm, true);
            if in_delegate && sm.regex.is_some() {
                r.error(
                    path,
                    format!("{field} match {name} does not support regex match for delegating"),
                );
            }
        }
    }
    for (name, sm) in &m.query_params {
        let path = format!("{base}.queryParams.{name}");
        string_match(r, &path, "queryParams", sm, true);
        if in_delegate && sm.regex.is_some() {
            r.error(
                path,
                format!("query param match {name} does not support regex match for delegating"),
            );
        }
    }
    if m.port != 0 {
        r.check(format!("{base}.port"), names::port(m.port));
    }
    gateway_names(r, &m.gateways, &format!("{base}.gateways"));
    if let Some(ns) = m.source_namespace.as_deref().filter(|ns| !ns.is_empty()) {
        if !is_dns1123_label(ns) {
            r.error(
                format!("{base}.sourceNamespace"),
                format!("sourceNamespace match {ns} is invalid"),
            );
        }
    }
}

/// `HTTP status N is not in range 200-599` (fault aborts and direct responses).
fn http_status(status: impl Into<i64>) -> Result<(), String> {
    let status = status.into();
    if (200..=599).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP status {status} is not in range 200-599"))
    }
}

/// A `Percent`: 0, or between 0.0001 and 100.
fn percentage(value: f64) -> Result<(), String> {
    if !(0.0..=100.0).contains(&value) || (value > 0.0 && value < 0.0001) {
        Err(format!(
            "percentage {value} is neither 0.0, nor in range [0.0001, 100.0]"
        ))
    } else {
        Ok(())
    }
}

/// The methods a CORS policy may allow.
const CORS_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

/// An HTTP token (RFC 9110 `tchar`s), as CORS header lists take it.
/// `validateCORSPolicy`.
fn cors_policy(r: &mut Report<'_>, c: &CorsPolicy, base: &str) {
    for (i, origin) in c.allow_origins.iter().enumerate() {
        let path = format!("{base}.allowOrigins[{i}]");
        let set = [&origin.exact, &origin.prefix, &origin.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set > 1 {
            r.error(
                path.clone(),
                "only one of exact, prefix or regex may be set",
            );
        }
        let value = origin
            .exact
            .as_deref()
            .or(origin.prefix.as_deref())
            .or(origin.regex.as_deref())
            .unwrap_or("");
        if value.is_empty() {
            r.error(
                path,
                "an allowed origin must set a non-empty exact, prefix or regex",
            );
        } else if let Some(re) = &origin.regex {
            r.check(
                format!("{path}.regex"),
                regex(re, "corsPolicy.allowOrigins"),
            );
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            r.error(
                format!("{base}.allowMethods[{i}]"),
                format!("{m:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, name) in list.iter().enumerate() {
            let path = format!("{base}.{field}[{i}]");
            if name.is_empty() {
                r.error(path, "header name cannot be empty");
            } else if name != "*" && !is_token(name) {
                r.error(
                    path,
                    format!("header name {name} is not a valid header name"),
                );
            }
        }
    }
    if let Some(age) = &c.max_age {
        let path = format!("{base}.maxAge");
        r.check(path.clone(), names::duration(age));
        if age.0.subsec_nanos() > 0 {
            r.error(
                path,
                "max_age duration is accurate only to seconds precision",
            );
        }
    }
    if let Some(p) = c
        .unmatched_preflights
        .as_deref()
        .filter(|p| !["UNSPECIFIED", "FORWARD", "IGNORE"].contains(p))
    {
        r.error(
            format!("{base}.unmatchedPreflights"),
            format!(
                "invalid unmatchedPreflights {p}; expected one of UNSPECIFIED, FORWARD, IGNORE"
            ),
        );
    }
}

fn fault(r: &mut Report<'_>, f: &HttpFaultInjection, base: &str) {
    if f.abort.is_none() && f.delay.is_none() {
        r.error(
            base,
            "HTTP fault injection must have an abort and/or a delay",
        );
    }
    if let Some(abort) = &f.abort {
        let path = format!("{base}.abort");
        if let Some(p) = &abort.percentage {
            r.check(format!("{path}.percentage.value"), percentage(p.value));
        }
        match (&abort.http_status, &abort.grpc_status, &abort.http2_error) {
            (Some(s), None, None) => r.check(format!("{path}.httpStatus"), http_status(*s)),
            (None, Some(g), None) => {
                if !GRPC_STATUSES.contains(&g.as_str()) {
                    r.error(
                        format!("{path}.grpcStatus"),
                        format!(
                            "gRPC status {g:?} is not supported. See \
                             https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a \
                             list of supported codes, for example 'NOT_FOUND'"
                        ),
                    );
                }
            }
            (None, None, Some(_)) => {
                r.error(
                    format!("{path}.http2Error"),
                    "HTTP/2 abort fault injection not supported yet",
                );
            }
            (None, None, None) => r.warn(path, "abort configured, but error type not set"),
            _ => r.error(
                path,
                "abort may only contain one of httpStatus, grpcStatus or http2Error",
            ),
        }
    }
    if let Some(delay) = &f.delay {
        let path = format!("{base}.delay");
        if let Some(p) = &delay.percentage {
            r.check(format!("{path}.percentage.value"), percentage(p.value));
        }
        if let Some(p) = delay.percent {
            r.warn(
                format!("{path}.percent"),
                "percent is deprecated; use percentage",
            );
            if !(0..=100).contains(&p) {
                r.error(
                    format!("{path}.percent"),
                    format!("percentage {p} is not in range 0..100"),
                );
            }
        }
        match (&delay.fixed_delay, &delay.exponential_delay) {
            (Some(d), None) => r.check(format!("{path}.fixedDelay"), names::duration(d)),
            (None, Some(d)) => {
                r.check(format!("{path}.exponentialDelay"), names::duration(d));
                r.error(
                    format!("{path}.exponentialDelay"),
                    "exponentialDelay not supported yet",
                );
            }
            (Some(_), Some(_)) => r.error(
                path,
                "delay may only contain one of fixedDelay or exponentialDelay",
            ),
            (None, None) => r.warn(
                path,
                "delay configured without fixedDelay; nothing is delayed",
            ),
        }
    }
}

fn mirrors(r: &mut Report<'_>, h: &HttpRoute, base: &str) {
    if let Some(v) = h.mirror_percent {
        let path = format!("{base}.mirrorPercent");
        if v > 100 {
            r.error(
                path.clone(),
                format!("mirror_percent must have a max value of 100 (it has {v})"),
            );
        }
        r.warn(
            path,
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(p) = &h.mirror_percentage {
        let path = format!("{base}.mirrorPercentage.value");
        if p.value > 100.0 {
            r.error(
                path,
                format!(
                    "mirror_percentage must have a max value of 100 (it has {:.6})",
                    p.value
                ),
            );
        } else if p.value < 0.0 {
            r.error(
                path,
                format!(
                    "mirror_percentage must have a min value of 0 (it has {:.6})",
                    p.value
                ),
            );
        }
    }
    if let Some(m) = &h.mirror {
        destination(r, m, &format!("{base}.mirror"));
    }
    for (i, m) in h.mirrors.iter().enumerate() {
        let path = format!("{base}.mirrors[{i}]");
        required_destination(
            r,
            &m.destination,
            &path,
            "destination is required for mirrors",
        );
        if let Some(p) = &m.percentage {
            if p.value > 100.0 {
                r.error(
                    format!("{path}.percentage.value"),
                    format!(
                        "mirror percentage must have a max value of 100 (it has {:.6})",
                        p.value
                    ),
                );
            } else if p.value < 0.0 {
                r.error(
                    format!("{path}.percentage.value"),
                    format!(
                        "mirror percentage must have a min value of 0 (it has {:.6})",
                        p.value
                    ),
                );
            }
        }
    }
}

fn http_redirect(r: &mut Report<'_>, redirect: &HttpRedirect, route: &HttpRoute, base: &str) {
    if redirect.uri.is_none()
        && redirect.prefix_rewrite.is_none()
        && redirect.authority.is_none()
        && redirect.port.is_none()
        && redirect.derive_port.is_none()
        && redirect.scheme.is_none()
    {
        r.error(
            base,
            "redirect must specify URI, authority, scheme, or port",
        );
    }
    if let Some(code) = redirect.redirect_code.filter(|c| *c != 0) {
        if !(300..=399).contains(&code) {
            r.error(
                format!("{base}.redirectCode"),
                format!("{code} is not a valid redirect code, must be 3xx"),
            );
        }
    }
    if let Some(s) = redirect.scheme.as_deref() {
        if s != "http" && s != "https" {
            r.error(
                format!("{base}.scheme"),
                "invalid redirect scheme, must be \"http\" or \"https\"",
            );
        }
    }
    if let Some(p) = redirect.port.filter(|p| *p > 0) {
        r.check(format!("{base}.port"), names::port(p));
    }
    if redirect.port.is_some() && redirect.derive_port.is_some() {
        r.error(
            format!("{base}.derivePort"),
            "redirect may only contain one of port or derivePort",
        );
    }
    if let Some(d) = redirect.derive_port.as_deref() {
        if d != "FROM_PROTOCOL_DEFAULT" && d != "FROM_REQUEST_PORT" {
            r.error(
                format!("{base}.derivePort"),
                format!(
                    "invalid derivePort {d:?}; expected FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"
                ),
            );
        }
    }
    if redirect.uri.is_some() && redirect.prefix_rewrite.is_some() {
        r.error(
            format!("{base}.prefixRewrite"),
            "redirect may only contain one of uri or prefixRewrite",
        );
    }
    if redirect.prefix_rewrite.is_some() {
        let all_prefix = !route.matches.is_empty()
            && route
                .matches
                .iter()
                .all(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_some()));
        if !all_prefix {
            r.warn(
                format!("{base}.prefixRewrite"),
                "prefixRewrite replaces the matched uri prefix; without a uri prefix match it \
                 replaces nothing",
            );
        }
    }
}

fn http_retry(r: &mut Report<'_>, retries: &HttpRetry, base: &str) {
    if retries.attempts < 0 {
        r.error(format!("{base}.attempts"), "attempts cannot be negative");
    }
    if retries.attempts == 0
        && (retries.per_try_timeout.is_some()
            || retries.retry_on.is_some()
            || retries.retry_remote_localities.is_some())
    {
        r.error(
            format!("{base}.attempts"),
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    if let Some(t) = &retries.per_try_timeout {
        r.check(format!("{base}.perTryTimeout"), names::duration(t));
    }
    if let Some(b) = &retries.backoff {
        r.check(format!("{base}.backoff"), names::duration(b));
    }
    if let Some(on) = &retries.retry_on {
        for policy in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let status = policy
                .parse::<u16>()
                .is_ok_and(|c| (100..=599).contains(&c));
            if !status && !RETRY_ON_POLICIES.contains(&policy) {
                r.error(
                    format!("{base}.retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
}

fn http_rewrite(r: &mut Report<'_>, rewrite: &HttpRewrite, base: &str) {
    if rewrite.uri.is_some() && rewrite.uri_regex_rewrite.is_some() {
        r.error(
            base,
            "rewrite may only contain one of URI or UriRegexRewrite",
        );
        return;
    }
    if rewrite.uri.is_none() && rewrite.uri_regex_rewrite.is_none() && rewrite.authority.is_none() {
        r.error(
            base,
            "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of \
             URI or UriRegexRewrite may be specified",
        );
        return;
    }
    if let Some(re) = &rewrite.uri_regex_rewrite {
        let path = format!("{base}.uriRegexRewrite");
        if re.pattern.is_empty() || re.rewrite.is_empty() {
            r.error(
                path,
                "UriRegexRewrite requires both Rewrite and Match fields to be specified",
            );
        } else {
            r.check(
                format!("{path}.match"),
                regex(&re.pattern, "HTTPRewrite.UriRegexRewrite.Match"),
            );
        }
    }
}

fn http_route_destinations(r: &mut Report<'_>, routes: &[HttpRouteDestination], base: &str) {
    let mut total: i64 = 0;
    for (j, d) in routes.iter().enumerate() {
        let path = format!("{base}.route[{j}]");
        headers(r, &format!("{path}.headers"), d.headers.as_deref());
        required_destination(r, &d.destination, &path, "destination is required");
        total += weight(r, d.weight, &path);
    }
    if routes.len() > 1 && total == 0 {
        r.error(format!("{base}.route"), "total destination weight = 0");
    }
}

fn route_destinations(r: &mut Report<'_>, routes: &[RouteDestination], base: &str) {
    let mut total: i64 = 0;
    for (j, d) in routes.iter().enumerate() {
        let path = format!("{base}.route[{j}]");
        required_destination(r, &d.destination, &path, "destination is required");
        total += weight(r, d.weight, &path);
    }
    if routes.len() > 1 && total == 0 {
        r.error(format!("{base}.route"), "total destination weight = 0");
    }
}

fn weight(r: &mut Report<'_>, weight: Option<i32>, path: &str) -> i64 {
    let w = weight.unwrap_or(0);
    if w < 0 {
        r.error(format!("{path}.weight"), format!("weight {w} < 0"));
        return 0;
    }
    i64::from(w)
}

/// The `destination` of a route or mirror at `path`: the webhook's `message` when it is left
/// out, else the checks of [`destination`]. Decoding cannot tell a left-out destination from
/// `destination: {}` (both are `Destination::default()`); Istio refuses both, the latter for
/// its empty host, and one message for the two says what is missing.
fn required_destination(r: &mut Report<'_>, d: &Destination, path: &str, message: &str) {
    if *d == Destination::default() {
        r.error(format!("{path}.destination"), message);
    } else {
        destination(r, d, &format!("{path}.destination"));
    }
}

pub(super) fn destination(r: &mut Report<'_>, d: &Destination, base: &str) {
    let host = d.host_name();
    if host.is_empty() {
        r.error(format!("{base}.host"), "destination host is required");
    } else if host == "*" {
        r.error(
            format!("{base}.host"),
            format!("invalid destination host {host}"),
        );
    } else {
        r.check(format!("{base}.host"), names::wildcard_domain(host));
    }
    if let Some(subset) = &d.subset {
        if subset.is_empty() {
            r.error(format!("{base}.subset"), "subset name cannot be empty");
        } else if !is_dns1123_label(subset) {
            r.error(
                format!("{base}.subset"),
                format!("subset name is invalid: {subset}"),
            );
        }
    }
    if let Some(port) = &d.port {
        r.check(format!("{base}.port.number"), names::port(port.number));
    }
}
