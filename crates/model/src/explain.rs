//! `sluice explain`: what a proxy does with one request or connection, and why.
//!
//! The decision comes from the same lookups the data path makes ([`Snapshot::route_http`],
//! [`Snapshot::route_tls`], [`Snapshot::route_tcp`] and the `route_gateway_*` family); this
//! module only describes their result: the listener, the VirtualService rule and the match that
//! hit, the clusters with their DestinationRule policy and endpoints, or why the request is
//! refused, blocked or passed through. [`Explanation`] serializes for `-o json`; [`render`] is
//! the text form.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use crate::cluster::{Cluster, UpstreamAddress, BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER};
use crate::policy::{LbPolicy, OutlierPolicy, PoolLimits};
use crate::route::{
    HttpRequestFacts, HttpRouteRule, RequestMatch, RouteAction, StrMatcher, WeightedTarget,
};
use crate::security::{AuthzDecision, AuthzRequest};
use crate::snapshot::{HttpDecision, ProxyKind, Snapshot, StreamDecision};

/// What to explain: an HTTP request, a TLS connection (by SNI) or a TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Http {
        /// `http` or `https`.
        scheme: String,
        method: String,
        host: String,
        port: u16,
        /// Path with query.
        path: String,
        headers: Vec<(String, String)>,
    },
    Tls {
        sni: String,
        port: u16,
    },
    Tcp {
        /// An IP, or a service host with an address.
        host: String,
        port: u16,
    },
}

impl Probe {
    /// Parses `http://host[:port]/path`, `https://…`, `tls://sni:port` or `tcp://ip:port`. An
    /// HTTP URL without a port uses 80 (https: 443).
    pub fn parse(url: &str, method: &str, headers: &[(String, String)]) -> Result<Probe, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?}: expected http://, https://, tls:// or tcp://"))?;
        let scheme = scheme.to_ascii_lowercase();
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = split_host_port(authority)?;
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let need_port = |p: Option<u16>| p.ok_or_else(|| format!("{url:?}: a port is required"));
        match scheme.as_str() {
            "http" | "https" => Ok(Probe::Http {
                port: port.unwrap_or(if scheme == "https" { 443 } else { 80 }),
                scheme,
                method: method.to_ascii_uppercase(),
                host: host.to_ascii_lowercase(),
                path: path.to_string(),
                headers: headers.to_vec(),
            }),
            "tls" => Ok(Probe::Tls {
                sni: host.to_ascii_lowercase(),
                port: need_port(port)?,
            }),
            "tcp" => Ok(Probe::Tcp {
                host: host.to_ascii_lowercase(),
                port: need_port(port)?,
            }),
            other => Err(format!(
                "{url:?}: unknown scheme {other:?} (http, https, tls, tcp)"
            )),
        }
    }

    fn port(&self) -> u16 {
        match self {
            Probe::Http { port, .. } | Probe::Tls { port, .. } | Probe::Tcp { port, .. } => *port,
        }
    }

    fn describe(&self) -> String {
        match self {
            Probe::Http {
                scheme,
                method,
                host,
                port,
                path,
                ..
            } => format!("{method} {scheme}://{host}:{port}{path}"),
            Probe::Tls { sni, port } => format!("TLS connection, SNI {sni}, port {port}"),
            Probe::Tcp { host, port } => format!("TCP connection to {host}:{port}"),
        }
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let bad = |p: &str| format!("{p:?} is not a port");
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| format!("{authority:?}: unclosed ["))?;
        let port = match rest[end + 1..].strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad(p))?),
            None => None,
        };
        return Ok((&rest[..end], port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((h, Some(p.parse().map_err(|_| bad(p))?))),
        None => Ok((authority, None)),
    }
}

/// How the request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Sent to a cluster with endpoints.
    Forward,
    /// A VirtualService owns the host but no rule matched: 404 NR.
    NoRoute,
    /// Unknown destination under ALLOW_ANY: PassthroughCluster.
    Passthrough,
    /// Unknown destination under REGISTRY_ONLY (502 `block_all`, or BlackHoleCluster), or no
    /// gateway route for a connection.
    Blocked,
    /// The route's cluster does not exist (undefined subset, unknown host): 503 NC.
    NoCluster,
    /// The cluster has no endpoint: 503 UH.
    NoHealthyUpstream,
    /// A `redirect` rule answers.
    Redirect,
    /// A `directResponse` rule answers.
    DirectResponse,
    /// An AuthorizationPolicy denies it: 403 (HTTP) or connection closed.
    Denied,
}

/// The chosen route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteExplanation {
    /// `VirtualService ns/name http[0]`, or the service for a default route.
    pub source: String,
    /// `%ROUTE_NAME%`.
    pub name: Option<String>,
    /// The match block that hit; `None` for a rule without matches.
    pub matched: Option<String>,
    pub timeout: Option<String>,
    pub retries: String,
    pub fault: Option<String>,
    pub mirrors: Vec<String>,
    pub rewrite: Option<String>,
}

/// One endpoint of a cluster.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointExplanation {
    pub address: String,
    pub port: u16,
    pub labels: String,
    pub weight: u32,
}

/// A cluster and the policy it carries.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterExplanation {
    pub name: String,
    /// `ServiceEntry ns/name` or `Service ns/name`.
    pub service: String,
    pub protocol: String,
    /// `DestinationRule ns/name` whose policy applies.
    pub policy_source: Option<String>,
    /// Where connections go: the endpoints, DNS, or the original destination.
    pub upstream: String,
    pub endpoints: Vec<EndpointExplanation>,
    pub load_balancer: String,
    pub connection_pool: String,
    pub outlier_detection: Option<String>,
    pub tls: Option<String>,
}

/// One weighted destination of the route.
#[derive(Debug, Clone, Serialize)]
pub struct TargetExplanation {
    pub weight: u32,
    pub cluster: String,
    /// `ok`, `503 NC …` or `503 UH …`.
    pub status: String,
    pub detail: Option<ClusterExplanation>,
}

/// Everything `sluice explain` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub proxy: String,
    pub request: String,
    pub listener: String,
    pub outcome: Outcome,
    /// One line: what happens.
    pub summary: String,
    /// The virtual host (VirtualService host or service) the request was matched against.
    pub virtual_host: Option<String>,
    pub route: Option<RouteExplanation>,
    pub targets: Vec<TargetExplanation>,
    pub authorization: Option<String>,
    /// The JWT rules (RequestAuthentication) requests are checked against.
    pub authentication: Option<String>,
    pub notes: Vec<String>,
}

fn labels_text(labels: &sluice_api::networking::Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn dur(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn matcher(m: &StrMatcher) -> String {
    match m {
        StrMatcher::Exact(e) => format!("exact {e:?}"),
        StrMatcher::Prefix(p) => format!("prefix {p:?}"),
        StrMatcher::PathSeparatedPrefix(p) => format!("path prefix {p:?}"),
        StrMatcher::Regex(r) => format!("regex {:?}", r.as_str()),
    }
}

/// A compiled match block in words: `uri prefix "/api", header x-user exact "bob"`.
pub fn describe_match(m: &RequestMatch) -> String {
    let mut parts = Vec::new();
    if let Some(u) = &m.uri {
        let case = if m.ignore_uri_case {
            " (ignoring case)"
        } else {
            ""
        };
        parts.push(format!("uri {}{case}", matcher(u)));
    }
    for (name, m) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(m) = m {
            parts.push(format!("{name} {}", matcher(m)));
        }
    }
    for (h, cond) in &m.headers {
        parts.push(match cond {
            Some(c) => format!("header {h} {}", matcher(c)),
            None => format!("header {h} present"),
        });
    }
    for (h, cond) in &m.without_headers {
        parts.push(match cond {
            Some(c) => format!("without header {h} {}", matcher(c)),
            None => format!("without header {h}"),
        });
    }
    for (k, c) in &m.query_params {
        parts.push(format!("query {k} {}", matcher(c)));
    }
    if let Some(p) = m.port {
        parts.push(format!("port {p}"));
    }
    if parts.is_empty() {
        "any request".to_string()
    } else {
        parts.join(", ")
    }
}

fn lb(p: &LbPolicy) -> String {
    match p {
        LbPolicy::RoundRobin => "ROUND_ROBIN".into(),
        LbPolicy::LeastRequest => "LEAST_REQUEST (default)".into(),
        LbPolicy::Random => "RANDOM".into(),
        LbPolicy::Passthrough => "PASSTHROUGH".into(),
        LbPolicy::ConsistentHash(h) => format!("consistent hash on {:?}", h.key),
    }
}

fn pool(l: &PoolLimits) -> String {
    if *l == PoolLimits::istio_default(l.connect_timeout) {
        return format!(
            "Istio defaults (unlimited), connect timeout {}",
            dur(l.connect_timeout)
        );
    }
    let n = |v: u32| {
        if v == u32::MAX {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    format!(
        "maxConnections {}, http1MaxPendingRequests {}, http2MaxRequests {}, maxRequestsPerConnection {}, maxRetries {}, connect timeout {}",
        n(l.max_connections),
        n(l.max_pending_requests),
        n(l.max_requests),
        l.max_requests_per_connection,
        n(l.max_retries),
        dur(l.connect_timeout)
    )
}

fn outlier(o: &OutlierPolicy) -> String {
    let mut s = String::new();
    if let Some(n) = o.consecutive_5xx {
        let _ = write!(s, "consecutive5xxErrors {n}, ");
    }
    if let Some(n) = o.consecutive_gateway {
        let _ = write!(s, "consecutiveGatewayErrors {n}, ");
    }
    let _ = write!(
        s,
        "interval {}, baseEjectionTime {}, maxEjectionPercent {}",
        dur(o.interval),
        dur(o.base_ejection_time),
        o.max_ejection_percent
    );
    s
}

/// A cluster in words, as a proxy of `kind` uses it.
pub fn describe_cluster(c: &Cluster, kind: ProxyKind) -> ClusterExplanation {
    let upstream = match c.upstream() {
        UpstreamAddress::OriginalDestination => match kind {
            ProxyKind::Sidecar => format!(
                "the original destination address, port {} (resolution NONE)",
                c.original_destination_port(kind)
            ),
            ProxyKind::Gateway => format!(
                "where the request's host resolves, port {} (resolution NONE)",
                c.original_destination_port(kind)
            ),
        },
        UpstreamAddress::Endpoints(eps) if eps.is_empty() => "no endpoints".to_string(),
        UpstreamAddress::Endpoints(eps) => eps
            .iter()
            .map(|(a, p, w)| format!("{a}:{p} (weight {w})"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let tls = c.tls.as_ref().map(|t| {
        if t.istio_mutual {
            format!(
                "ISTIO_MUTUAL (mesh certificate, SNI {}; expects {})",
                c.upstream_sni("").unwrap_or_default(),
                if t.subject_alt_names.is_empty() {
                    "any mesh identity".to_string()
                } else {
                    t.subject_alt_names.join(", ")
                }
            )
        } else {
            let mode = if t.mutual { "MUTUAL" } else { "SIMPLE" };
            let ca = if t.insecure_skip_verify {
                "none: insecureSkipVerify, the server's certificate is not checked".to_string()
            } else {
                t.ca_certificates
                    .as_ref()
                    .map_or_else(|| "system roots".to_string(), |p| p.display().to_string())
            };
            let sni = t.sni.as_deref().unwrap_or("the request's host");
            format!("{mode} origination, SNI {sni}, CA {ca}")
        }
    });
    ClusterExplanation {
        name: c.name.to_string(),
        service: c.service.source.to_string(),
        protocol: format!("{:?}", c.port.protocol).to_ascii_uppercase(),
        policy_source: c.policy_source.as_deref().map(str::to_string),
        upstream,
        endpoints: c
            .endpoints
            .iter()
            .map(|ep| EndpointExplanation {
                address: ep.address.to_string(),
                port: c.endpoint_port(ep),
                labels: labels_text(&ep.labels),
                weight: ep.weight,
            })
            .collect(),
        load_balancer: lb(&c.lb),
        connection_pool: pool(&c.limits),
        outlier_detection: c.outlier.as_ref().map(outlier),
        tls,
    }
}

/// The targets of a route for a request on `listener_port`, and the outcome they lead to.
fn targets(
    kind: ProxyKind,
    targets: &[WeightedTarget],
    listener_port: u16,
) -> (Vec<TargetExplanation>, Outcome) {
    let mut out = Vec::new();
    let mut first_failure = None;
    let mut any_ok = false;
    for t in targets {
        let (cluster, status, detail, outcome) = match t.cluster.resolve(listener_port) {
            Ok(c) => {
                let d = describe_cluster(c, kind);
                if matches!(c.upstream(), UpstreamAddress::Endpoints(e) if e.is_empty()) {
                    (
                        c.name.to_string(),
                        "503 UH: the cluster has no endpoints (no_healthy_upstream)".to_string(),
                        Some(d),
                        Outcome::NoHealthyUpstream,
                    )
                } else {
                    (
                        c.name.to_string(),
                        "ok".to_string(),
                        Some(d),
                        Outcome::Forward,
                    )
                }
            }
            Err(name) => (
                name.clone(),
                format!("503 NC: cluster {name} does not exist (unknown host, port or subset)"),
                None,
                Outcome::NoCluster,
            ),
        };
        if outcome == Outcome::Forward {
            any_ok = true;
        } else if first_failure.is_none() {
            first_failure = Some(outcome);
        }
        out.push(TargetExplanation {
            weight: t.weight,
            cluster,
            status,
            detail,
        });
    }
    let outcome = if any_ok {
        Outcome::Forward
    } else {
        first_failure.unwrap_or(Outcome::NoCluster)
    };
    (out, outcome)
}

/// A `tls`/`tcp` rule's match blocks as written (`sniHosts [a.com], port 443`, blocks joined by
/// "or"); `None` for a rule without match blocks, which takes every connection.
fn stream_matches(matches: &[crate::route::StreamMatch]) -> Option<String> {
    let blocks: Vec<String> = matches
        .iter()
        .map(|m| {
            let mut parts = Vec::new();
            if !m.sni_hosts.is_empty() {
                let hosts: Vec<&str> = m.sni_hosts.iter().map(|h| h.as_ref()).collect();
                parts.push(format!("sniHosts [{}]", hosts.join(", ")));
            }
            if !m.destination_subnets.is_empty() {
                let nets: Vec<String> = m
                    .destination_subnets
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                parts.push(format!("destinationSubnets [{}]", nets.join(", ")));
            }
            if let Some(p) = m.port {
                parts.push(format!("port {p}"));
            }
            parts.join(", ")
        })
        .filter(|b| !b.is_empty())
        .collect();
    (!blocks.is_empty()).then(|| blocks.join(" or "))
}

fn route_explanation(rule: &HttpRouteRule, matched: Option<&RequestMatch>) -> RouteExplanation {
    let retries = if rule.retry.attempts == 0 {
        "none".to_string()
    } else {
        let on = &rule.retry.retry_on;
        let mut conditions: Vec<String> = [
            (on.connect_failure, "connect-failure"),
            (on.refused_stream, "refused-stream"),
            (on.reset, "reset"),
            (on.five_xx, "5xx"),
            (on.gateway_error, "gateway-error"),
            (on.retriable_4xx, "retriable-4xx"),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| name.to_string())
        .collect();
        conditions.extend(on.status_codes.iter().map(u16::to_string));
        format!(
            "{} attempts{} on {}",
            rule.retry.attempts,
            rule.retry
                .per_try_timeout
                .map(|d| format!(", perTryTimeout {}", dur(d)))
                .unwrap_or_default(),
            conditions.join(",")
        )
    };
    let fault = rule.fault.as_ref().map(|f| {
        let mut parts = Vec::new();
        if let Some((d, pct)) = f.delay {
            parts.push(format!("delay {} for {pct}% of requests", dur(d)));
        }
        if let Some((status, pct)) = f.abort {
            parts.push(format!("abort {status} for {pct}% of requests (FI)"));
        }
        parts.join("; ")
    });
    let rewrite = rule.rewrite.as_ref().map(|r| {
        let mut parts = Vec::new();
        if let Some(u) = &r.uri {
            parts.push(format!("uri → {u}"));
        }
        if let Some((re, to)) = &r.uri_regex {
            parts.push(format!("uri regex {} → {to}", re.as_str()));
        }
        if let Some(a) = &r.authority {
            parts.push(format!("authority → {a}"));
        }
        parts.join(", ")
    });
    RouteExplanation {
        source: rule.source.to_string(),
        name: rule.name.as_deref().map(str::to_string),
        matched: if rule.matches.is_empty() {
            None
        } else {
            matched.map(describe_match)
        },
        timeout: rule.timeout.map(dur),
        retries,
        fault,
        mirrors: rule
            .mirrors
            .iter()
            .map(|m| {
                let name = match m.target.resolve(0) {
                    Ok(c) => c.name.to_string(),
                    Err(n) => format!("{n} (missing)"),
                };
                format!("{name} ({}%)", m.percent)
            })
            .collect(),
        rewrite,
    }
}

fn proxy_description(snap: &Snapshot) -> String {
    let kind = match snap.proxy.kind {
        ProxyKind::Sidecar => "sidecar",
        ProxyKind::Gateway => "gateway",
    };
    format!(
        "{kind} in namespace {} with labels {{{}}}",
        snap.proxy.namespace,
        labels_text(&snap.proxy.labels)
    )
}

fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.trim().to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(v.trim()),
        ) {
            map.append(k, v);
        }
    }
    map
}

/// A destination address for connection probes: the host itself when it is an IP, else the first
/// address of a service with that host, else 0.0.0.0 (noted).
fn destination_ip(snap: &Snapshot, host: &str, notes: &mut Vec<String>) -> IpAddr {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip;
    }
    let addr = snap
        .services
        .iter()
        .filter(|s| crate::host::matches(&s.hostname, host))
        .find_map(|s| s.addresses.first().map(|n| n.addr()));
    match addr {
        Some(ip) => {
            notes.push(format!(
                "destination address taken as {ip}, an address of {host} in the registry"
            ));
            ip
        }
        None => {
            notes.push(format!(
                "{host} has no address in the registry; the destination address is taken as 0.0.0.0, which matches no address-based rule"
            ));
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }
}

/// Explains what the proxy of `snap` does with `probe`.
pub fn explain(snap: &Snapshot, probe: &Probe) -> Explanation {
    let mut e = Explanation {
        proxy: proxy_description(snap),
        request: probe.describe(),
        listener: String::new(),
        outcome: Outcome::Blocked,
        summary: String::new(),
        virtual_host: None,
        route: None,
        targets: Vec::new(),
        authorization: None,
        authentication: None,
        notes: Vec::new(),
    };
    match snap.proxy.kind {
        ProxyKind::Sidecar => explain_sidecar(snap, probe, &mut e),
        ProxyKind::Gateway => explain_gateway(snap, probe, &mut e),
    }
    e
}

fn explain_sidecar(snap: &Snapshot, probe: &Probe, e: &mut Explanation) {
    let port = probe.port();
    e.listener = format!("captured outbound on port {port} (iptables → 15001)");
    match probe {
        Probe::Http {
            scheme,
            method,
            host,
            path,
            headers,
            ..
        } if scheme == "http" => {
            let headers = header_map(headers);
            let authority = format!("{host}:{port}");
            let facts = HttpRequestFacts {
                method,
                scheme,
                authority: &authority,
                path_and_query: path,
                headers: &headers,
                port,
            };
            let decision = snap.route_http(&facts);
            http_decision(snap.proxy.kind, decision, port, host, e);
        }
        Probe::Http { host, .. } | Probe::Tls { sni: host, .. } => {
            if matches!(probe, Probe::Http { .. }) {
                e.notes.push(
                    "https: the application speaks TLS, so the sidecar routes the connection by SNI"
                        .to_string(),
                );
            }
            let ip = destination_ip(snap, host, &mut e.notes);
            let decision = snap.route_tls(Some(host), SocketAddr::new(ip, port));
            stream_decision(snap, decision, port, &format!("{host}:{port}"), "tls", e);
        }
        Probe::Tcp { host, .. } => {
            let ip = destination_ip(snap, host, &mut e.notes);
            let decision = snap.route_tcp(SocketAddr::new(ip, port));
            stream_decision(snap, decision, port, &format!("{ip}:{port}"), "tcp", e);
        }
    }
}

fn http_decision(
    kind: ProxyKind,
    decision: HttpDecision<'_>,
    port: u16,
    host: &str,
    e: &mut Explanation,
) {
    match decision {
        HttpDecision::Route {
            rule,
            matched,
            vhost,
        } => {
            e.virtual_host = Some(vhost.to_string());
            e.route = Some(route_explanation(rule, matched));
            match &rule.action {
                RouteAction::Forward(ts) => {
                    let (ts, outcome) = targets(kind, ts, port);
                    e.outcome = outcome;
                    e.summary = match outcome {
                        Outcome::Forward => {
                            let ok: Vec<String> = ts
                                .iter()
                                .filter(|t| t.status == "ok")
                                .map(|t| format!("{} (weight {})", t.cluster, t.weight))
                                .collect();
                            format!("forwarded to {}", ok.join(", "))
                        }
                        _ => ts
                            .first()
                            .map(|t| t.status.clone())
                            .unwrap_or_else(|| "503 NC: route has no destination".into()),
                    };
                    e.targets = ts;
                }
                RouteAction::Redirect(r) => {
                    e.outcome = Outcome::Redirect;
                    e.summary = format!(
                        "{} redirect{}{}",
                        r.code,
                        r.authority
                            .as_deref()
                            .map(|a| format!(" to host {a}"))
                            .unwrap_or_default(),
                        r.uri
                            .as_deref()
                            .map(|u| format!(" with path {u}"))
                            .unwrap_or_default()
                    );
                }
                RouteAction::DirectResponse { status, .. } => {
                    e.outcome = Outcome::DirectResponse;
                    e.summary = format!("{status} direct response");
                }
            }
        }
        HttpDecision::NoRoute { vhost } => {
            e.virtual_host = Some(vhost.to_string());
            e.outcome = Outcome::NoRoute;
            e.summary =
                format!("404 NR: no rule of virtual host {vhost} matched (route_not_found)");
        }
        HttpDecision::Passthrough => {
            e.outcome = Outcome::Passthrough;
            e.summary = format!(
                "forwarded to the original destination {host}:{port} via {PASSTHROUGH_CLUSTER} (route allow_any): {host} is not in the service registry and outboundTrafficPolicy is ALLOW_ANY"
            );
        }
        HttpDecision::Blocked => {
            e.outcome = Outcome::Blocked;
            e.summary = format!(
                "502 via route block_all ({BLACKHOLE_CLUSTER}): {host}:{port} is not in the service registry and outboundTrafficPolicy is REGISTRY_ONLY; add a ServiceEntry for it"
            );
        }
    }
}

fn stream_decision(
    snap: &Snapshot,
    decision: StreamDecision<'_>,
    port: u16,
    dest: &str,
    kind: &str,
    e: &mut Explanation,
) {
    match decision {
        StreamDecision::Cluster(c) => {
            let (ts, outcome) = targets(
                snap.proxy.kind,
                &[WeightedTarget {
                    cluster: crate::route::ClusterRef::Found(c.clone()),
                    weight: 100,
                    request_headers: Default::default(),
                    response_headers: Default::default(),
                }],
                port,
            );
            e.virtual_host = Some(c.service.hostname.to_string());
            e.outcome = outcome;
            e.summary = if outcome == Outcome::Forward {
                format!(
                    "forwarded to {} (the service's own cluster; no VirtualService {kind} rule)",
                    c.name
                )
            } else {
                ts[0].status.clone()
            };
            e.targets = ts;
        }
        StreamDecision::Rule(rule) => {
            let (ts, outcome) = targets(snap.proxy.kind, &rule.targets, port);
            e.route = Some(RouteExplanation {
                source: rule.source.to_string(),
                name: None,
                matched: stream_matches(&rule.matches),
                timeout: None,
                retries: "none".to_string(),
                fault: None,
                mirrors: Vec::new(),
                rewrite: None,
            });
            e.outcome = outcome;
            e.summary = if outcome == Outcome::Forward {
                format!(
                    "forwarded by {} to {}",
                    rule.source,
                    ts.iter()
                        .filter(|t| t.status == "ok")
                        .map(|t| format!("{} (weight {})", t.cluster, t.weight))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                ts.first()
                    .map(|t| t.status.clone())
                    .unwrap_or_else(|| "503 NC: rule has no destination".into())
            };
            e.targets = ts;
        }
        StreamDecision::Passthrough => {
            e.outcome = Outcome::Passthrough;
            e.summary = format!(
                "forwarded to the original destination {dest} via {PASSTHROUGH_CLUSTER}: unknown destination, outboundTrafficPolicy ALLOW_ANY"
            );
        }
        StreamDecision::Blocked if snap.proxy.kind == ProxyKind::Gateway => {
            e.outcome = Outcome::Blocked;
            e.summary = format!(
                "connection closed: no {kind} route of a Gateway bound to port {port} matches"
            );
        }
        StreamDecision::Blocked => {
            e.outcome = Outcome::Blocked;
            e.summary = format!(
                "connection closed by {BLACKHOLE_CLUSTER} (UH): {dest} is not in the service registry and outboundTrafficPolicy is REGISTRY_ONLY (block_all)"
            );
        }
    }
}

fn explain_gateway(snap: &Snapshot, probe: &Probe, e: &mut Explanation) {
    let port = probe.port();
    let Some(gp) = snap.gateway_ports().iter().find(|p| p.number == port) else {
        e.listener = format!("gateway port {port}: not listening");
        e.outcome = Outcome::Blocked;
        let ports: Vec<String> = snap
            .gateway_ports()
            .iter()
            .map(|p| p.number.to_string())
            .collect();
        e.summary = format!(
            "connection refused: no Gateway selecting this proxy has a server on port {port} (ports: {})",
            if ports.is_empty() {
                "none".to_string()
            } else {
                ports.join(", ")
            }
        );
        return;
    };
    let servers: Vec<String> = gp.servers.iter().map(|s| s.source.to_string()).collect();
    e.listener = format!("gateway port {port} ({})", servers.join(", "));
    let http = |e: &mut Explanation,
                scheme: &str,
                method: &str,
                host: &str,
                path: &str,
                headers: &[(String, String)]| {
        let headers = header_map(headers);
        let authority = format!("{host}:{port}");
        if scheme == "http" && snap.gateway_https_redirect(port, &authority) {
            e.outcome = Outcome::Redirect;
            e.summary = format!("301 to https://{host}{path} (tls.httpsRedirect)");
            return;
        }
        let facts = HttpRequestFacts {
            method,
            scheme,
            authority: &authority,
            path_and_query: path,
            headers: &headers,
            port,
        };
        if !snap.request_authentication.is_empty() {
            e.authentication = Some(describe_request_authentication(
                &snap.request_authentication,
            ));
        }
        if !snap.authorization.is_empty() {
            if !snap.request_authentication.is_empty() {
                e.notes.push(
                    "authorization was evaluated without a JWT (no request principal or claims)"
                        .into(),
                );
            }
            let path_only = path.split_once('?').map_or(path, |(p, _)| p);
            let req = AuthzRequest {
                host: Some(host),
                port,
                method: Some(method),
                path: Some(path_only),
                headers: Some(&headers),
                ..AuthzRequest::default()
            };
            match snap.authorization.check(&req) {
                AuthzDecision::Allow => {
                    e.authorization = Some(format!(
                        "allowed by {} (without a peer identity)",
                        snap.authorization.policies.join(", ")
                    ));
                }
                AuthzDecision::Deny { policy } => {
                    e.authorization = Some(format!("denied: {policy}"));
                    e.outcome = Outcome::Denied;
                    e.summary = format!(
                        "403 RBAC: access denied (rbac_access_denied_matched_policy[{policy}])"
                    );
                    e.notes.push(
                        "the request was evaluated without a peer identity (no mTLS client)".into(),
                    );
                    return;
                }
            }
        }
        let decision = snap.route_gateway_http(port, &facts);
        http_decision(snap.proxy.kind, decision, port, host, e);
    };
    match probe {
        Probe::Http {
            scheme,
            method,
            host,
            path,
            headers,
            ..
        } if scheme == "http" => http(e, scheme, method, host, path, headers),
        Probe::Http {
            method,
            host,
            path,
            headers,
            ..
        } => match snap.gateway_server(port, Some(host)) {
            Some(server) if server.terminates_tls() => {
                e.notes.push(format!("TLS terminated by {}", server.source));
                http(e, "https", method, host, path, headers);
            }
            Some(server) => {
                e.notes
                    .push(format!("TLS passed through by {} (by SNI)", server.source));
                let d = snap.route_gateway_tls(port, Some(host));
                stream_decision(snap, d, port, &format!("{host}:{port}"), "tls", e);
            }
            None => {
                e.outcome = Outcome::Blocked;
                e.summary = format!("TLS handshake refused: no server on port {port} for {host}");
            }
        },
        Probe::Tls { sni, .. } => match snap.gateway_server(port, Some(sni)) {
            Some(server) if server.terminates_tls() => {
                e.outcome = Outcome::Forward;
                e.summary = format!(
                    "TLS terminated by {}; the HTTP requests inside are routed as https://{sni}:{port}/… (explain one with an https:// URL)",
                    server.source
                );
            }
            Some(_) => {
                let d = snap.route_gateway_tls(port, Some(sni));
                stream_decision(snap, d, port, &format!("{sni}:{port}"), "tls", e);
            }
            None => {
                e.outcome = Outcome::Blocked;
                e.summary = format!("TLS handshake refused: no server on port {port} for {sni}");
            }
        },
        Probe::Tcp { host, .. } => {
            let d = snap.route_gateway_tcp(port);
            stream_decision(snap, d, port, &format!("{host}:{port}"), "tcp", e);
        }
    }
}

/// The text form of an explanation.
pub fn render(e: &Explanation) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Request:   {}", e.request);
    let _ = writeln!(s, "Proxy:     {}", e.proxy);
    let _ = writeln!(s, "Listener:  {}", e.listener);
    if let Some(v) = &e.virtual_host {
        let _ = writeln!(s, "Host:      {v}");
    }
    if let Some(r) = &e.route {
        let _ = writeln!(s, "Rule:      {}", r.source);
        if let Some(n) = &r.name {
            let _ = writeln!(s, "Route:     {n}");
        }
        match &r.matched {
            Some(m) => {
                let _ = writeln!(s, "Matched:   {m}");
            }
            None => {
                let _ = writeln!(s, "Matched:   (rule without match: every request)");
            }
        }
        if let Some(t) = &r.timeout {
            let _ = writeln!(s, "Timeout:   {t} (504 UT after it)");
        }
        let _ = writeln!(s, "Retries:   {}", r.retries);
        if let Some(f) = &r.fault {
            let _ = writeln!(s, "Fault:     {f}");
        }
        for m in &r.mirrors {
            let _ = writeln!(s, "Mirror:    {m}");
        }
        if let Some(rw) = &r.rewrite {
            let _ = writeln!(s, "Rewrite:   {rw}");
        }
    }
    if let Some(a) = &e.authentication {
        let _ = writeln!(s, "AuthN:     {a}");
    }
    if let Some(a) = &e.authorization {
        let _ = writeln!(s, "AuthZ:     {a}");
    }
    for t in &e.targets {
        let _ = writeln!(
            s,
            "Cluster:   {} (weight {}): {}",
            t.cluster, t.weight, t.status
        );
        if let Some(d) = &t.detail {
            let _ = writeln!(s, "  service:     {} ({})", d.service, d.protocol);
            let _ = writeln!(
                s,
                "  policy:      {}",
                d.policy_source
                    .as_deref()
                    .unwrap_or("no DestinationRule (defaults)")
            );
            let _ = writeln!(s, "  upstream:    {}", d.upstream);
            for ep in &d.endpoints {
                let _ = writeln!(
                    s,
                    "  endpoint:    {}:{} weight {} labels {{{}}}",
                    ep.address, ep.port, ep.weight, ep.labels
                );
            }
            let _ = writeln!(s, "  lb:          {}", d.load_balancer);
            let _ = writeln!(s, "  pool:        {}", d.connection_pool);
            if let Some(o) = &d.outlier_detection {
                let _ = writeln!(s, "  outlier:     {o}");
            }
            if let Some(t) = &d.tls {
                let _ = writeln!(s, "  tls:         {t}");
            }
        }
    }
    for n in &e.notes {
        let _ = writeln!(s, "Note:      {n}");
    }
    let _ = writeln!(s, "Decision:  {}", e.summary);
    s
}

/// One line for the JWT rules of a proxy: each rule's issuer and where its keys come from.
fn describe_request_authentication(authn: &crate::jwt::RequestAuthentication) -> String {
    let rules: Vec<String> = authn
        .providers
        .iter()
        .map(|p| {
            let keys = match &p.jwks {
                crate::jwt::JwksSource::Inline(_) => "inline jwks".to_string(),
                crate::jwt::JwksSource::Uri(u) => format!("jwksUri {u}"),
            };
            format!("{} (issuer {}, {keys})", p.name, p.issuer)
        })
        .collect();
    format!(
        "JWT rules: {}; a request with an invalid token gets 401, one without a token passes \
         authentication",
        rules.join(", ")
    )
}
