//! HTTP proxying: route each request with the snapshot it arrived under, carry out the decision
//! (forward with timeouts and retries, fault, redirect, direct response, block), and account for it
//! in the access log and metrics once the response body has been sent.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use sluice_model::route::{
    pick_weighted, HttpRequestFacts, Operation, RequestMatch, WeightedTarget,
};
use sluice_model::security::{AuthzDecision, AuthzRequest};
use sluice_model::{Cluster, HttpDecision, HttpRouteRule, RouteAction, Snapshot};

use crate::balancer::{
    request_hash, CallResult, ClusterRuntime, EndpointGuard, EndpointState, HashInput, RequestHash,
    RetryPermit,
};
use crate::body::{CountingBody, DownstreamBodyError, DownstreamFault, Finish, LoggedBody};
use crate::context::{Downstream, Proxy};
use crate::gateway::edge::{self, GatewayConn};
use crate::io::ByteCounter;
use crate::stream::{rbac_denied_details, with_principal};
use crate::telemetry::accesslog::AccessLogRecord;
use crate::telemetry::metrics::{
    HttpLabels, Reporter, RequestProtocol, SecurityPolicy, ServiceLabels,
};
use crate::upstream::{
    cluster_security, security_for, tls_failure_reason, BoxError, ExchangeError, ProxyBody,
    TlsSetupError, UpstreamConnInfo, UpstreamSecurity,
};

/// Largest request body buffered so it can be retried or mirrored; larger bodies are streamed once.
const MAX_BUFFERED_BODY: u64 = 64 * 1024;

static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_DECORATOR_OPERATION: HeaderName =
    HeaderName::from_static("x-envoy-decorator-operation");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1). `te: trailers` is
/// kept: gRPC needs it end to end (and HTTP/2 allows no other `te`).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first: most messages carry none of these, or only `connection`,
    // and removing an absent name still hashes it.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    if present[0] {
        // Headers named in `Connection` are hop-by-hop too.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    let te_trailers = present[1]
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The hop-by-hop headers [`strip_hop_by_hop`] removes (`connection` first, `te` second).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
];

/// A locally generated response and how the access log describes it.
struct LocalReply {
    status: StatusCode,
    body: Bytes,
    flags: &'static str,
    details: Cow<'static, str>,
    extra_headers: Vec<(HeaderName, HeaderValue)>,
}

impl LocalReply {
    fn new(
        status: StatusCode,
        body: &'static str,
        flags: &'static str,
        details: &'static str,
    ) -> Self {
        LocalReply {
            status,
            body: Bytes::from_static(body.as_bytes()),
            flags,
            details: Cow::Borrowed(details),
            extra_headers: Vec::new(),
        }
    }
}

/// Why forwarding failed, mapped to Envoy's local replies.
enum UpstreamFailure {
    NoCluster,
    NoHealthyUpstream,
    ConnectFailure {
        tls_error: Option<String>,
    },
    Reset,
    Timeout {
        per_try: bool,
    },
    BadRequest,
    /// A circuit breaker (`connectionPool` limit) tripped.
    Overflow,
    /// The client broke its own request (malformed body framing) or went away mid-body: its
    /// fault, never counted against the upstream.
    Downstream(DownstreamFault),
    /// The upstream's host name did not resolve within the connect timeout: Envoy's `DF`
    /// (`dns_resolution_failure{…}` in the details).
    DnsResolution {
        details: &'static str,
    },
}

impl UpstreamFailure {
    /// A connection failure from the connect error's `message`; a TLS failure (`TLS_error: …`)
    /// keeps its reason for the response details.
    fn connect_failure(message: &str) -> Self {
        UpstreamFailure::ConnectFailure {
            tls_error: tls_failure_reason(message).map(|tls| format!("TLS_error:{tls}")),
        }
    }

    /// TLS origination that could not be set up (unreadable or invalid certificates, bad SNI).
    fn tls_setup(e: &TlsSetupError) -> Self {
        UpstreamFailure::ConnectFailure {
            tls_error: Some(format!("TLS_error:{e}")),
        }
    }

    fn dns(e: &crate::resolve::ResolveError) -> Self {
        tracing::debug!("{e}");
        UpstreamFailure::DnsResolution {
            details: e.details(),
        }
    }

    fn reply(&self, retries_exhausted: bool) -> LocalReply {
        let mut r = match self {
            UpstreamFailure::NoCluster => LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "", "NC", "cluster_not_found"),
            UpstreamFailure::NoHealthyUpstream => LocalReply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                "UH",
                "no_healthy_upstream",
            ),
            UpstreamFailure::ConnectFailure { tls_error } => {
                let mut r = LocalReply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                    "UF",
                    "upstream_reset_before_response_started{connection_failure}",
                );
                if let Some(e) = tls_error {
                    r.details = Cow::Owned(format!(
                        "upstream_reset_before_response_started{{connection_failure,{}}}",
                        e.replace(' ', "_")
                    ));
                }
                r
            }
            UpstreamFailure::Reset => LocalReply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                "UC",
                "upstream_reset_before_response_started{connection_termination}",
            ),
            UpstreamFailure::Timeout { per_try } => LocalReply::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                "UT",
                if *per_try { "upstream_per_try_timeout" } else { "upstream_response_timeout" },
            ),
            UpstreamFailure::BadRequest => LocalReply::new(StatusCode::BAD_REQUEST, "Bad Request", "-", "invalid_request"),
            UpstreamFailure::Overflow => {
                let mut r = LocalReply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                    "UO",
                    "upstream_reset_before_response_started{overflow}",
                );
                r.extra_headers.push((X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true")));
                r
            }
            UpstreamFailure::Downstream(DownstreamFault::Protocol) => LocalReply::new(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                "DPE",
                "http1.codec_error",
            ),
            UpstreamFailure::Downstream(DownstreamFault::Disconnect) => LocalReply::new(
                StatusCode::BAD_REQUEST,
                "",
                "DC",
                "downstream_remote_disconnect",
            ),
            UpstreamFailure::DnsResolution { details } => LocalReply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "DNS resolution failure",
                "DF",
                details,
            ),
        };
        if retries_exhausted {
            r.flags = match r.flags {
                "UF" => "UF,URX",
                "UC" => "UC,URX",
                "UH" => "UH,URX",
                "UT" => "UT,URX",
                other => other,
            };
        }
        r
    }
}

/// What the access log and metrics need to know about how a request was handled.
struct Outcome {
    flags: Cow<'static, str>,
    details: Cow<'static, str>,
    route_name: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
    service: Arc<ServiceLabels>,
    upstream: Option<UpstreamConnInfo>,
    upstream_service_time: Option<u64>,
    /// The identity the upstream had to prove (ISTIO_MUTUAL with one expected SAN):
    /// `destination_principal`.
    upstream_principal: Option<Arc<str>>,
}

/// Everything known about the request being handled.
struct RequestCtx {
    authority: String,
    port: u16,
    downstream: Arc<Downstream>,
    /// Explicit-proxy target parsed from an absolute URI: host and port.
    uri_target: Option<(String, u16)>,
    /// Set on gateway listeners: route by the listener's port and its Gateway servers.
    gateway: Option<Arc<GatewayConn>>,
    /// Whether reading the request body failed on the client's side.
    body_error: DownstreamBodyError,
}

/// Handles one request arriving on the outbound side of a sidecar.
pub async fn handle(
    proxy: Arc<Proxy>,
    downstream: Arc<Downstream>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    handle_routed(proxy, downstream, None, req).await
}

/// Handles one request arriving on a gateway listener: edge headers (`x-forwarded-for`,
/// `x-forwarded-proto`, `x-envoy-external-address`), `httpsRedirect`, 421 for misdirected
/// HTTP/2 requests, then routing with the VirtualServices bound to the gateway on `gw.port`.
pub async fn handle_gateway(
    proxy: Arc<Proxy>,
    downstream: Arc<Downstream>,
    gw: Arc<GatewayConn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    handle_routed(proxy, downstream, Some(gw), req).await
}

async fn handle_routed(
    proxy: Arc<Proxy>,
    downstream: Arc<Downstream>,
    gateway: Option<Arc<GatewayConn>>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let start_time = SystemTime::now();
    let snap = proxy.snapshots.load_full();
    let (mut parts, body) = req.into_parts();

    // Absolute-form (explicit proxy) names the target in the URI; otherwise Host/:authority does.
    // A gateway routes by its listener port only, and a captured connection (or a CONNECT
    // tunnel) by its original destination's port: HTTP/2 requests carry a full URI there too.
    let explicit = gateway.is_none() && downstream.target.is_none();
    let uri_target = parts.uri.host().filter(|_| explicit).map(|h| {
        let port = parts
            .uri
            .port_u16()
            .unwrap_or(if parts.uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        (h.to_string(), port)
    });
    let authority = match (parts.uri.authority(), parts.headers.get(header::HOST)) {
        (Some(a), _) => a.as_str().to_string(),
        (None, Some(h)) => h.to_str().unwrap_or("").to_string(),
        (None, None) => String::new(),
    };
    let port = match (&gateway, &uri_target, &downstream.target) {
        (Some(gw), _, _) => gw.port,
        (None, Some((_, p)), _) => *p,
        (None, None, Some(t)) => t.addr.port(),
        (None, None, None) => downstream.local.port(),
    };
    if let Some(gw) = &gateway {
        edge::apply_edge_headers(&mut parts.headers, downstream.remote.ip(), gw.is_tls());
    }
    crate::trace::ensure_request_id(&mut parts.headers);
    // Join the caller's trace (W3C / B3) with a new span for this hop, or start one.
    crate::trace::propagate(&mut parts.headers);

    let mut rec = AccessLogRecord::new(start_time);
    let peer = gateway.as_ref().and_then(|g| g.peer.clone());
    // The request's side of the log line, only when a log is written (metrics need none of it).
    if proxy.access_log.is_enabled() {
        rec.set_request(&parts, proxy.access_log.needs_request_headers());
        rec.authority = HeaderValue::from_str(&authority).ok();
        rec.downstream_remote_address = Some(downstream.remote);
        rec.requested_server_name = gateway.as_ref().and_then(|g| g.sni.clone());
        rec.downstream_peer_uri_san = peer.as_ref().and_then(|p| p.spiffe_id.clone());
        rec.downstream_local_address = Some(match (&downstream.target, &uri_target) {
            (Some(t), _) => t.addr,
            _ => downstream.local,
        });
    }
    let grpc = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));

    let received = ByteCounter::default();
    let body = CountingBody::new(body, received.clone());
    let ctx = RequestCtx {
        authority,
        port,
        downstream,
        uri_target,
        gateway,
        body_error: body.error(),
    };
    let mut delayed = false;
    let (response, mut outcome) =
        route_and_forward(&proxy, &snap, &ctx, parts, body, &mut delayed).await;
    if delayed {
        outcome.flags = with_flag(&outcome.flags, "DI");
    }

    rec.response_code = response.status().as_u16();
    rec.response_flags = outcome.flags.clone();
    rec.response_code_details = Some(outcome.details.clone());
    rec.route_name = outcome.route_name.clone();
    rec.upstream_cluster = outcome.cluster.clone();
    rec.upstream_host = outcome.upstream.map(|u| u.remote);
    rec.upstream_local_address = outcome.upstream.map(|u| u.local).filter(|a| a.port() != 0);
    rec.upstream_service_time = outcome.upstream_service_time;
    if proxy.access_log.needs_response_headers() {
        rec.response_headers = Some(response.headers().clone());
    }
    let mut destination = outcome.upstream.map_or_else(
        || proxy.unknown_peer.clone(),
        |u| proxy.peer_at(&snap, u.remote.ip()),
    );
    if let Some(p) = &outcome.upstream_principal {
        destination = with_principal(&destination, p);
    }
    // A gateway that terminated mesh mTLS names its caller (as the inbound side does).
    let (source, security) = match &peer {
        Some(p) => (p.labels(&proxy.workload), SecurityPolicy::MutualTls),
        None => (proxy.workload.clone(), SecurityPolicy::Unknown),
    };
    let labels = HttpLabels {
        reporter: Reporter::Source,
        source,
        destination,
        destination_service: outcome.service.clone(),
        request_protocol: if grpc {
            RequestProtocol::Grpc
        } else {
            RequestProtocol::Http
        },
        response_flags: outcome.flags.clone(),
        connection_security_policy: security,
        response_code: response.status().as_u16(),
        grpc_response_status: None,
    };
    let (parts, body) = response.into_parts();
    let logged = LoggedBody::new(
        body,
        Finish {
            proxy: proxy.clone(),
            rec,
            labels,
            start,
            received,
        },
    );
    Ok(Response::from_parts(parts, logged.boxed_unsync()))
}

fn local_response(proxy: &Proxy, reply: &LocalReply) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(reply.body.clone())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    if !reply.body.is_empty() {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(reply.body.len()));
    h.insert(header::DATE, date_header());
    h.insert(header::SERVER, proxy.server_header.clone());
    for (k, v) in &reply.extra_headers {
        h.insert(k.clone(), v.clone());
    }
    resp
}

pub(crate) fn date_header() -> HeaderValue {
    HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now()))
        .unwrap_or(HeaderValue::from_static(""))
}

/// A local reply that reaches no service, and its outcome.
fn local_reply(
    proxy: &Proxy,
    reply: &LocalReply,
    route_name: Option<Arc<str>>,
) -> (Response<ProxyBody>, Outcome) {
    let service = proxy.unknown_service.clone();
    (
        local_response(proxy, reply),
        outcome_local(reply, route_name, service),
    )
}

fn outcome_local(
    reply: &LocalReply,
    route_name: Option<Arc<str>>,
    service: Arc<ServiceLabels>,
) -> Outcome {
    Outcome {
        flags: Cow::Borrowed(reply.flags),
        details: reply.details.clone(),
        route_name,
        cluster: None,
        service,
        upstream: None,
        upstream_service_time: None,
        upstream_principal: None,
    }
}

/// Envoy's RBAC filter on a gateway listener: checks the request against the
/// AuthorizationPolicies that apply to the gateway; a denial is answered with 403
/// `RBAC: access denied` before routing.
fn gateway_authz(
    proxy: &Proxy,
    snap: &Snapshot,
    gw: &GatewayConn,
    ctx: &RequestCtx,
    parts: &http::request::Parts,
) -> Option<(Response<ProxyBody>, Outcome)> {
    if snap.authorization.is_empty() {
        return None;
    }
    let host = sluice_model::host::strip_port(&ctx.authority);
    let peer = gw.peer.as_ref();
    let req = AuthzRequest {
        source_principal: peer.and_then(|p| p.principal()),
        source_namespace: peer.and_then(|p| p.namespace()),
        source_ip: Some(ctx.downstream.remote.ip()),
        host: Some(host).filter(|h| !h.is_empty()),
        port: gw.port,
        method: Some(parts.method.as_str()),
        path: Some(parts.uri.path()),
        sni: gw.sni.as_deref(),
        headers: Some(&parts.headers),
    };
    let AuthzDecision::Deny { policy } = snap.authorization.check(&req) else {
        return None;
    };
    tracing::debug!(
        "request from {} for {}{} denied by {policy}",
        ctx.downstream.remote,
        ctx.authority,
        parts.uri.path()
    );
    let mut reply = LocalReply::new(StatusCode::FORBIDDEN, "RBAC: access denied", "-", "");
    reply.details = Cow::Owned(rbac_denied_details(&policy));
    Some(local_reply(proxy, &reply, None))
}

async fn route_and_forward(
    proxy: &Arc<Proxy>,
    snap: &Arc<Snapshot>,
    ctx: &RequestCtx,
    parts: http::request::Parts,
    body: CountingBody,
    delayed: &mut bool,
) -> (Response<ProxyBody>, Outcome) {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let default_scheme = match &ctx.gateway {
        Some(gw) if gw.is_tls() => "https",
        _ => "http",
    };
    let scheme = parts.uri.scheme_str().unwrap_or(default_scheme).to_string();
    if let Some(reply) = invalid_request_head(&parts) {
        return local_reply(proxy, &reply, None);
    }
    if let Some(gw) = &ctx.gateway {
        if let Some(denied) = gateway_authz(proxy, snap, gw, ctx, &parts) {
            return denied;
        }
        if let Some(early) = gateway_local_reply(proxy, snap, gw, ctx, &parts, &path_and_query) {
            return early;
        }
    }
    let facts = HttpRequestFacts {
        method: parts.method.as_str(),
        scheme: &scheme,
        authority: &ctx.authority,
        path_and_query: &path_and_query,
        headers: &parts.headers,
        port: ctx.port,
    };
    let decision = match &ctx.gateway {
        Some(gw) => snap.route_gateway_http(gw.port, &facts),
        None => snap.route_http(&facts),
    };
    match decision {
        HttpDecision::Blocked => {
            count_blocked(proxy, ctx);
            let reply = LocalReply::new(StatusCode::BAD_GATEWAY, "", "-", "direct_response");
            let resp = local_response(proxy, &reply);
            (
                resp,
                outcome_local(
                    &reply,
                    Some("block_all".into()),
                    proxy.blackhole_labels.clone(),
                ),
            )
        }
        HttpDecision::NoRoute { .. } => {
            if ctx.gateway.is_some() {
                // A gateway with no route for the host refuses it (404 NR).
                count_blocked(proxy, ctx);
            }
            let reply = LocalReply::new(StatusCode::NOT_FOUND, "", "NR", "route_not_found");
            local_reply(proxy, &reply, None)
        }
        HttpDecision::Passthrough => {
            let passthrough = Forward {
                cluster: None,
                route_name: Some("allow_any".into()),
                operation: None,
                timeout: None,
                retry: sluice_model::route::RetryPolicy::default(),
                target: None,
                rule: None,
                matched: None,
            };
            forward(proxy, ctx, parts, body, passthrough).await
        }
        HttpDecision::Route { rule, matched, .. } => {
            let route_name = rule.name.clone();
            if let Some(fault) = &rule.fault {
                if let Some((delay, pct)) = fault.delay {
                    if roll_percent(pct) {
                        tokio::time::sleep(delay).await;
                        *delayed = true;
                    }
                }
                if let Some((status, pct)) = fault.abort {
                    if roll_percent(pct) {
                        let reply = LocalReply::new(
                            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                            "fault filter abort",
                            "FI",
                            "fault_filter_abort",
                        );
                        return local_reply(proxy, &reply, route_name);
                    }
                }
            }
            match &rule.action {
                RouteAction::DirectResponse {
                    status,
                    body: content,
                } => {
                    let mut reply = LocalReply::new(
                        StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
                        "",
                        "-",
                        "direct_response",
                    );
                    reply.body = Bytes::copy_from_slice(content);
                    let (mut resp, outcome) = local_reply(proxy, &reply, route_name);
                    rule.response_headers.apply(resp.headers_mut());
                    (resp, outcome)
                }
                RouteAction::Redirect(rd) => {
                    let location = redirect_location(
                        rd,
                        &scheme,
                        &ctx.authority,
                        ctx.port,
                        &path_and_query,
                        matched,
                    );
                    let mut reply = LocalReply::new(
                        StatusCode::from_u16(rd.code).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                        "",
                        "-",
                        "direct_response",
                    );
                    if let Ok(v) = HeaderValue::from_str(&location) {
                        reply.extra_headers.push((header::LOCATION, v));
                    }
                    local_reply(proxy, &reply, route_name)
                }
                RouteAction::Forward(targets) => {
                    let Some(target) = pick_weighted(targets, rand::random::<f64>()) else {
                        let reply = UpstreamFailure::NoCluster.reply(false);
                        return local_reply(proxy, &reply, route_name);
                    };
                    let cluster = match target.cluster.resolve(ctx.port) {
                        Ok(c) => c.clone(),
                        Err(missing) => {
                            tracing::debug!(
                                "route {} points at missing cluster {missing}",
                                rule.source
                            );
                            let reply = UpstreamFailure::NoCluster.reply(false);
                            let (resp, mut o) = local_reply(proxy, &reply, route_name);
                            o.cluster = Some(missing.into());
                            return (resp, o);
                        }
                    };
                    let fwd = Forward {
                        operation: Some(&rule.operation),
                        timeout: rule.timeout,
                        retry: rule.retry.clone(),
                        cluster: Some(cluster),
                        route_name,
                        target: Some(target),
                        rule: Some(rule),
                        matched,
                    };
                    forward(proxy, ctx, parts, body, fwd).await
                }
            }
        }
    }
}

/// A request head Envoy refuses before routing: 400 for an HTTP/1.1 request without `Host` (and
/// no absolute URI) or with several `Host` headers — forwarding either would let the proxy and
/// the upstream disagree on the host the policy was checked for — and 431 for more headers than
/// the listener allows (HTTP/1.1 is limited while reading; HTTP/2 here). Returns status, body,
/// response flags and details.
pub(crate) fn request_head_problem(
    parts: &http::request::Parts,
) -> Option<(StatusCode, &'static str, &'static str, &'static str)> {
    let hosts = parts.headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Some((
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "DPE",
            "http1.codec_error",
        ));
    }
    if hosts == 0 && parts.version == Version::HTTP_11 && parts.uri.authority().is_none() {
        return Some((
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "DPE",
            "missing_host_header",
        ));
    }
    if parts.headers.len() > crate::downstream::MAX_REQUEST_HEADERS {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request Header Fields Too Large",
            "DPE",
            "http2.too_many_headers",
        ));
    }
    None
}

fn invalid_request_head(parts: &http::request::Parts) -> Option<LocalReply> {
    request_head_problem(parts)
        .map(|(status, body, flags, details)| LocalReply::new(status, body, flags, details))
}

/// Counts a refused HTTP call in `sluice_egress_blocked_total`, named by its Host without port.
fn count_blocked(proxy: &Proxy, ctx: &RequestCtx) {
    let host = match &ctx.uri_target {
        Some((h, _)) => h.as_str(),
        None => sluice_model::host::strip_port(&ctx.authority),
    };
    proxy.metrics.record_blocked(
        &proxy.workload.workload,
        host,
        ctx.port,
        crate::telemetry::metrics::BlockedProtocol::Http,
    );
}

/// Answers a gateway request before routing when the edge rules say so: 421 for a request on a
/// TLS-terminated HTTP/2 connection whose host the handshake's server does not cover, and 301
/// to HTTPS for hosts of a plain server with `httpsRedirect`.
fn gateway_local_reply(
    proxy: &Proxy,
    snap: &Snapshot,
    gw: &GatewayConn,
    ctx: &RequestCtx,
    parts: &http::request::Parts,
    path_and_query: &str,
) -> Option<(Response<ProxyBody>, Outcome)> {
    if let Some(server) = &gw.tls_server {
        if parts.version == http::Version::HTTP_2 && edge::is_misdirected(server, &ctx.authority) {
            tracing::debug!(
                "misdirected request for {} on a connection for {} (port {})",
                ctx.authority,
                server.source,
                gw.port
            );
            let reply = LocalReply::new(
                StatusCode::MISDIRECTED_REQUEST,
                "Misdirected Request",
                "-",
                "misdirected_request",
            );
            return Some(local_reply(proxy, &reply, None));
        }
        return None;
    }
    let port = snap.gateway_ports().iter().find(|p| p.number == gw.port)?;
    if !edge::requires_https_redirect(port, &edge::request_host(&ctx.authority)) {
        return None;
    }
    let mut reply = LocalReply::new(StatusCode::MOVED_PERMANENTLY, "", "-", "direct_response");
    let location = edge::https_redirect_location(&ctx.authority, path_and_query);
    if let Ok(v) = HeaderValue::from_str(&location) {
        reply.extra_headers.push((header::LOCATION, v));
    }
    Some(local_reply(proxy, &reply, None))
}

/// Envoy prints response flags in this order, comma-joined.
const FLAG_ORDER: [&str; 17] = [
    "UH", "UF", "UO", "NR", "URX", "NC", "DT", "DC", "LH", "UT", "LR", "UR", "UC", "DI", "FI",
    "RL", "DPE",
];

/// `flags` with `add` included, in Envoy's order.
fn with_flag(flags: &str, add: &'static str) -> Cow<'static, str> {
    let mut all: Vec<&str> = flags
        .split(',')
        .filter(|f| !f.is_empty() && *f != "-")
        .collect();
    all.push(add);
    all.sort_by_key(|f| {
        FLAG_ORDER
            .iter()
            .position(|o| o == f)
            .unwrap_or(FLAG_ORDER.len())
    });
    all.dedup();
    Cow::Owned(all.join(","))
}

fn roll_percent(pct: f64) -> bool {
    pct >= 100.0 || (pct > 0.0 && rand::random::<f64>() * 100.0 < pct)
}

fn redirect_location(
    rd: &sluice_model::route::Redirect,
    scheme: &str,
    authority: &str,
    request_port: u16,
    path_and_query: &str,
    matched: Option<&RequestMatch>,
) -> String {
    let scheme = rd.scheme.as_deref().unwrap_or(scheme);
    let host = rd
        .authority
        .clone()
        .unwrap_or_else(|| sluice_model::host::strip_port(authority).to_string());
    let port = if let Some(p) = rd.port {
        Some(p)
    } else if rd.port_from_request {
        Some(request_port)
    } else if rd.port_from_protocol {
        None
    } else {
        // Keep an explicit port from the request's authority.
        authority
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
    };
    let port =
        port.filter(|p| !((scheme == "http" && *p == 80) || (scheme == "https" && *p == 443)));
    let path = if let Some(uri) = &rd.uri {
        uri.clone()
    } else if let (Some(prefix), Some(sluice_model::route::StrMatcher::Prefix(p))) =
        (&rd.prefix_rewrite, matched.and_then(|m| m.uri.as_ref()))
    {
        let rest = path_and_query.get(p.len()..).unwrap_or("");
        format!("{prefix}{rest}")
    } else {
        path_and_query.to_string()
    };
    match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}"),
        None => format!("{scheme}://{host}{path}"),
    }
}

/// A forwarding decision: the cluster (None = passthrough to the original destination) and the
/// route settings that shape the upstream call.
struct Forward<'a> {
    cluster: Option<Arc<Cluster>>,
    route_name: Option<Arc<str>>,
    operation: Option<&'a Operation>,
    timeout: Option<Duration>,
    retry: sluice_model::route::RetryPolicy,
    target: Option<&'a WeightedTarget>,
    rule: Option<&'a Arc<HttpRouteRule>>,
    matched: Option<&'a RequestMatch>,
}

/// The request body, either buffered (retryable, mirrorable) or streamed once.
enum RequestBody {
    Buffered(Bytes),
    Streaming(Option<CountingBody>),
}

impl RequestBody {
    fn take(&mut self) -> Option<ProxyBody> {
        match self {
            RequestBody::Buffered(b) => {
                Some(Full::new(b.clone()).map_err(|e| match e {}).boxed_unsync())
            }
            RequestBody::Streaming(s) => s.take().map(|b| b.boxed_unsync()),
        }
    }
}

async fn buffer_body(body: CountingBody) -> Result<RequestBody, BoxError> {
    if body.is_end_stream() {
        return Ok(RequestBody::Buffered(Bytes::new()));
    }
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= MAX_BUFFERED_BODY);
    if small {
        Ok(RequestBody::Buffered(body.collect().await?.to_bytes()))
    } else {
        Ok(RequestBody::Streaming(Some(body)))
    }
}

/// Picks an endpoint address for one try: the cluster's balancer over its healthy endpoints (a
/// retry moves on to an endpoint not tried yet, like `retry_ignore_previous_hosts`), or the
/// original destination. The guard counts the try as active on the endpoint.
async fn endpoint_addr(
    proxy: &Proxy,
    ctx: &RequestCtx,
    runtime: Option<&Arc<ClusterRuntime>>,
    hash: Option<u64>,
    tried: &[Arc<EndpointState>],
    attempt: u32,
) -> Result<(SocketAddr, Option<EndpointGuard>), UpstreamFailure> {
    let original = || -> Option<(Option<String>, SocketAddr)> {
        if let Some((host, port)) = &ctx.uri_target {
            return Some((
                Some(host.clone()),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *port),
            ));
        }
        let t = ctx.downstream.target.as_ref()?;
        Some((t.host.as_deref().map(str::to_string), t.addr))
    };
    match runtime.filter(|rt| !rt.is_original_destination()) {
        // A gateway has no original destination (the client connected to the gateway): an
        // original-destination cluster (a wildcard or `resolution: NONE`/`DYNAMIC_DNS`
        // ServiceEntry) is reached where the request's host resolves, on the service port's
        // target, as Envoy's dynamic forward proxy would.
        None if ctx.gateway.is_some() => {
            let cluster = runtime.ok_or(UpstreamFailure::NoHealthyUpstream)?.cluster();
            let port = cluster.port.target_port.unwrap_or(cluster.port.number);
            let host = sluice_model::host::strip_port(&ctx.authority);
            if host.is_empty() {
                return Err(UpstreamFailure::NoHealthyUpstream);
            }
            let addrs = proxy
                .resolver
                .resolve(host, cluster.connect_timeout)
                .await
                .map_err(|e| UpstreamFailure::dns(&e))?;
            Ok((addrs.socket(attempt as usize, port), None))
        }
        None => {
            let (host, addr) = original().ok_or(UpstreamFailure::NoHealthyUpstream)?;
            // A route to a `resolution: NONE` service goes to the address the client called, on
            // the cluster's port: a virtual host spans every port, so a route whose destination
            // names no port sends a call made on :80 to the service's only port (seed 004's
            // ServiceEntry on 81 breaks the call exactly this way).
            let port = runtime.map_or(addr.port(), |rt| rt.cluster().port.number);
            match host {
                // Explicit proxy: the client named a host; resolve it ourselves.
                Some(h) => {
                    let deadline = runtime.map_or(PASSTHROUGH_CONNECT_TIMEOUT, |rt| {
                        rt.cluster().connect_timeout
                    });
                    let addrs = proxy
                        .resolver
                        .resolve(&h, deadline)
                        .await
                        .map_err(|e| UpstreamFailure::dns(&e))?;
                    Ok((addrs.socket(attempt as usize, port), None))
                }
                None => Ok((SocketAddr::new(addr.ip(), port), None)),
            }
        }
        Some(rt) => {
            let guard = rt
                .pick(hash, tried)
                .ok_or(UpstreamFailure::NoHealthyUpstream)?;
            let ep = guard.endpoint();
            let addr = proxy
                .endpoint_socket(
                    &ep.address,
                    ep.port,
                    attempt as usize,
                    rt.cluster().connect_timeout,
                )
                .await
                .map_err(|e| UpstreamFailure::dns(&e))?;
            Ok((addr, Some(guard)))
        }
    }
}

/// Envoy's failure for an exchange that got no response: a connection that could not be made
/// (its TLS failure named) or one that broke.
fn upstream_failure(e: ExchangeError) -> UpstreamFailure {
    match e {
        ExchangeError::Connect(e) => UpstreamFailure::connect_failure(&e.to_string()),
        ExchangeError::Request(_) => UpstreamFailure::Reset,
    }
}

/// Connect timeout for upstreams without a cluster (passthrough): Istio's default.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `req` over the HTTP/2 connection to `addr` (opened on first use) and maps failures to
/// Envoy's: connection failures (TLS ones named) or resets. `limits` is
/// (`maxRequestsPerConnection`, `maxConnectionDuration`).
async fn send_http2(
    proxy: &Proxy,
    runtime: Option<&Arc<ClusterRuntime>>,
    security: &UpstreamSecurity,
    addr: SocketAddr,
    req: Request<ProxyBody>,
    limits: (u32, Option<Duration>),
) -> Result<Response<Incoming>, UpstreamFailure> {
    let endpoint = proxy
        .clients
        .http2(runtime, security, PASSTHROUGH_CONNECT_TIMEOUT, addr)
        .map_err(|e| {
            tracing::warn!("TLS origination towards {addr} is misconfigured: {e}");
            UpstreamFailure::tls_setup(&e)
        })?;
    endpoint.send(req, limits.0, limits.1).await.map_err(|e| {
        tracing::debug!("HTTP/2 to {addr}: {e}");
        upstream_failure(e)
    })
}

async fn forward(
    proxy: &Arc<Proxy>,
    ctx: &RequestCtx,
    mut parts: http::request::Parts,
    body: CountingBody,
    fwd: Forward<'_>,
) -> (Response<ProxyBody>, Outcome) {
    let cluster_name: Arc<str> = fwd.cluster.as_ref().map_or_else(
        || Arc::from(sluice_model::PASSTHROUGH_CLUSTER),
        |c| c.name.clone(),
    );
    let runtime = fwd.cluster.as_ref().map(|c| proxy.cluster_runtime(c));
    let service = match (&fwd.cluster, &runtime) {
        (Some(c), Some(rt)) => rt.service_labels(c),
        _ => proxy.passthrough_labels.clone(),
    };
    let fail = |failure: UpstreamFailure, exhausted: bool, tried: Option<SocketAddr>| {
        let reply = failure.reply(exhausted);
        let resp = local_response(proxy, &reply);
        let mut o = outcome_local(&reply, fwd.route_name.clone(), service.clone());
        o.cluster = Some(cluster_name.clone());
        // `%UPSTREAM_HOST%` names the endpoint that failed, as Envoy's log does.
        o.upstream = tried.map(|remote| UpstreamConnInfo {
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            remote,
        });
        (resp, o)
    };

    // Build the upstream request head once; each try clones it.
    let request_path = parts.uri.path_and_query().cloned();
    let path_and_query = request_path.as_ref().map_or("/", |p| p.as_str());
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    if !headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&ctx.authority) {
            headers.insert(header::HOST, v);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if let Some(op) = fwd.operation {
        if let Some(v) = op.header_value(ctx.port) {
            headers.insert(X_ENVOY_DECORATOR_OPERATION.clone(), v);
        }
    }
    let mut upstream_path = Cow::Borrowed(path_and_query);
    if let Some(rule) = fwd.rule {
        if let Some(new_path) = rule.rewritten_path(fwd.matched, path_and_query) {
            if let Ok(v) = HeaderValue::from_str(path_and_query) {
                headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
            }
            upstream_path = Cow::Owned(new_path);
        }
        if let Some(auth) = rule.rewrite.as_ref().and_then(|r| r.authority.as_deref()) {
            if let Ok(v) = HeaderValue::from_str(auth) {
                headers.insert(header::HOST, v);
            }
        }
        rule.request_headers.apply(&mut headers);
    }
    if let Some(t) = fwd.target {
        t.request_headers.apply(&mut headers);
    }

    // Circuit breakers: the request counts as active (and maybe pending) until its response
    // body has been sent.
    let request_permit = match runtime.as_ref().map(|rt| rt.admit_request()).transpose() {
        Ok(p) => p,
        Err(overflow) => {
            tracing::debug!("{cluster_name}: circuit breaker {overflow:?} overflowed");
            return fail(UpstreamFailure::Overflow, false, None);
        }
    };
    let hash = match runtime.as_ref().and_then(|rt| rt.hash_policy()) {
        Some(policy) => request_hash(
            &policy.key,
            &HashInput {
                headers: &headers,
                path_and_query,
                source: ctx.downstream.remote,
            },
        ),
        None => RequestHash::None,
    };

    // SIMPLE/MUTUAL (SNI: the DestinationRule's, else the request's host, Envoy's auto SNI),
    // ISTIO_MUTUAL with the mesh identity, or plaintext.
    let security = match (&fwd.cluster, &runtime) {
        (Some(c), Some(rt)) => cluster_security(rt, proxy.identity.as_ref(), c, &ctx.authority),
        _ => UpstreamSecurity::Plain,
    };
    let upstream_principal: Option<Arc<str>> = security.expected_principal().map(Arc::from);
    // The cluster's protocol (declared `http2`/`grpc`, `h2UpgradePolicy`, `useClientProtocol`,
    // sniffed ports following the client); passthrough follows the client.
    let downstream_version = parts.version;
    let downstream_h2 = downstream_version == Version::HTTP_2;
    let http2 = fwd.cluster.as_ref().map_or(downstream_h2, |c| {
        c.upstream_protocol.is_http2(downstream_h2)
    });
    let pool = if http2 {
        // HTTP/2 connections are per endpoint, picked in each try.
        None
    } else {
        match proxy
            .clients
            .http1(runtime.as_ref(), &security, PASSTHROUGH_CONNECT_TIMEOUT)
        {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("TLS origination for {cluster_name} is misconfigured: {e}");
                return fail(UpstreamFailure::tls_setup(&e), false, None);
            }
        }
    };
    let limits = fwd.cluster.as_ref().map(|c| &c.limits);
    let per_connection = limits.map_or(0, |l| l.max_requests_per_connection);
    let max_duration = limits.and_then(|l| l.max_connection_duration);

    let mut body = match buffer_body(body).await {
        Ok(b) => b,
        Err(_) => {
            let fault = ctx.body_error.get().unwrap_or(DownstreamFault::Protocol);
            return fail(UpstreamFailure::Downstream(fault), false, None);
        }
    };
    let retryable = matches!(body, RequestBody::Buffered(_));
    // The HTTP/1.1 request line's path, parsed once (not per try or per mirror); the request's own when not
    // rewritten.
    let upstream_pq = match (&upstream_path, &request_path) {
        (Cow::Borrowed(_), Some(pq)) => Ok(pq.clone()),
        _ => PathAndQuery::try_from(upstream_path.as_ref()),
    };
    let Ok(upstream_pq) = upstream_pq else {
        return fail(UpstreamFailure::BadRequest, false, None);
    };
    if let (Some(rule), RequestBody::Buffered(bytes)) = (fwd.rule, &body) {
        for m in &rule.mirrors {
            if roll_percent(m.percent) {
                spawn_mirror(
                    proxy,
                    ctx,
                    m,
                    (&parts.method, &upstream_pq, downstream_h2),
                    &headers,
                    bytes.clone(),
                );
            }
        }
    }

    // HTTP/2 requests name the service, not the endpoint: hyper turns the URI's authority into
    // `:authority`, so the Host header (already in the URI) is not sent as well.
    let h2_uri = if http2 {
        let authority = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|a| !a.is_empty())
            .unwrap_or(&ctx.authority);
        match h2_uri(&security, authority, &upstream_path) {
            Ok(u) if u.authority().is_some() => {
                headers.remove(header::HOST);
                Some(u)
            }
            _ => return fail(UpstreamFailure::BadRequest, false, None),
        }
    } else {
        None
    };

    let deadline = fwd.timeout.map(|t| tokio::time::Instant::now() + t);
    let max_tries = if retryable { 1 + fwd.retry.attempts } else { 1 };
    let mut last_failure = UpstreamFailure::NoHealthyUpstream;
    let mut tried = None;
    // Endpoints tried so far, so retries move on (only kept when there can be retries).
    let mut tried_endpoints: Vec<Arc<EndpointState>> = Vec::new();
    let mut retry_permit: Option<RetryPermit> = None;
    // `maxRetries`: a retry is only made while the cluster has room for one more.
    let may_retry = |runtime: &Option<Arc<ClusterRuntime>>| -> Result<Option<RetryPermit>, ()> {
        match runtime {
            Some(rt) => rt.try_retry().map(Some).map_err(|_| ()),
            None => Ok(None),
        }
    };
    for attempt in 0..max_tries {
        let (addr, endpoint) = match endpoint_addr(
            proxy,
            ctx,
            runtime.as_ref(),
            hash.value(),
            &tried_endpoints,
            attempt,
        )
        .await
        {
            Ok(a) => a,
            Err(f) => return fail(f, false, tried),
        };
        if max_tries > 1 {
            if let Some(g) = &endpoint {
                tried_endpoints.push(g.endpoint().clone());
            }
        }
        tried = Some(addr);
        // HTTP/1.1: the connection is to the endpoint already, and the request line carries
        // the path as given.
        let uri: Uri = match &h2_uri {
            Some(u) => u.clone(),
            None => Uri::from(upstream_pq.clone()),
        };
        let Some(req_body) = body.take() else {
            break;
        };
        let mut req = Request::new(req_body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        // The last try takes the head; earlier ones copy it.
        *req.headers_mut() = if attempt + 1 == max_tries {
            std::mem::take(&mut headers)
        } else {
            headers.clone()
        };
        req.headers_mut().insert(
            X_ENVOY_ATTEMPT_COUNT.clone(),
            HeaderValue::from(attempt + 1),
        );
        let try_start = Instant::now();
        let call = async {
            match &pool {
                Some(pool) => pool
                    .send(addr, req, per_connection, max_duration)
                    .await
                    .map(|resp| resp.map(Either::Left))
                    .map_err(|e| {
                        tracing::debug!("upstream {addr} for {cluster_name} failed: {e}");
                        upstream_failure(e)
                    }),
                None => {
                    *req.version_mut() = Version::HTTP_2;
                    send_http2(
                        proxy,
                        runtime.as_ref(),
                        &security,
                        addr,
                        req,
                        (per_connection, max_duration),
                    )
                    .await
                    .map(|resp| resp.map(Either::Right))
                }
            }
        };
        let per_try = fwd.retry.per_try_timeout;
        let result = match (deadline, per_try) {
            (None, None) => Ok(call.await),
            (d, p) => {
                let now = tokio::time::Instant::now();
                let per_try_deadline = p.map(|p| now + p);
                let effective = match (d, per_try_deadline) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) => a,
                    (None, Some(b)) => b,
                    (None, None) => unreachable!("handled above"),
                };
                let per_try_fired = per_try_deadline.is_some_and(|p| d.is_none_or(|d| p < d));
                tokio::time::timeout_at(effective, call)
                    .await
                    .map_err(|_| per_try_fired)
            }
        };
        match result {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                if let Some(g) = &endpoint {
                    g.report(CallResult::Status(status));
                }
                let more = attempt + 1 < max_tries;
                if more && fwd.retry.retry_on.retries_status(status) {
                    if let Ok(permit) = may_retry(&runtime) {
                        retry_permit = permit;
                        last_failure = UpstreamFailure::Reset;
                        continue;
                    }
                }
                let service_time = try_start.elapsed().as_millis() as u64;
                let info = resp.extensions().get::<UpstreamConnInfo>().copied();
                let (mut rparts, rbody) = resp.into_parts();
                // Answer in the client's HTTP version, whatever the upstream spoke.
                rparts.version = downstream_version;
                strip_hop_by_hop(&mut rparts.headers);
                rparts
                    .headers
                    .insert(header::SERVER, proxy.server_header.clone());
                rparts.headers.insert(
                    X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                    HeaderValue::from(service_time),
                );
                if let RequestHash::NewCookie { set_cookie, .. } = &hash {
                    if let Ok(v) = HeaderValue::from_str(set_cookie) {
                        rparts.headers.append(header::SET_COOKIE, v);
                    }
                }
                if let Some(rule) = fwd.rule {
                    rule.response_headers.apply(&mut rparts.headers);
                }
                if let Some(t) = fwd.target {
                    t.response_headers.apply(&mut rparts.headers);
                }
                let rbody = if request_permit.is_some() || endpoint.is_some() {
                    HeldBody {
                        inner: rbody,
                        _held: (request_permit, endpoint, retry_permit),
                    }
                    .boxed_unsync()
                } else {
                    rbody.boxed_unsync()
                };
                let resp = Response::from_parts(rparts, rbody);
                // The last try still failed in a retriable way: Envoy's UpstreamRetryLimitExceeded.
                let exhausted = max_tries > 1 && fwd.retry.retry_on.retries_status(status);
                let outcome = Outcome {
                    flags: Cow::Borrowed(if exhausted { "URX" } else { "-" }),
                    details: Cow::Borrowed("via_upstream"),
                    route_name: fwd.route_name.clone(),
                    cluster: Some(cluster_name.clone()),
                    service: service.clone(),
                    upstream: info,
                    upstream_service_time: Some(service_time),
                    upstream_principal: upstream_principal.clone(),
                };
                return (resp, outcome);
            }
            Ok(Err(failure)) => {
                // The client broke its request body: answer it, and leave the endpoint's
                // health alone (no outlier input, no retry).
                if let Some(fault) = ctx.body_error.get() {
                    tracing::debug!(
                        "request body from {} failed: {fault:?}",
                        ctx.downstream.remote
                    );
                    return fail(UpstreamFailure::Downstream(fault), false, None);
                }
                if let Some(g) = &endpoint {
                    g.report(match failure {
                        UpstreamFailure::ConnectFailure { .. } => CallResult::ConnectFailed,
                        _ => CallResult::Reset,
                    });
                }
                let retry = match failure {
                    UpstreamFailure::ConnectFailure { .. } => fwd.retry.retry_on.connect_failure,
                    UpstreamFailure::Reset => fwd.retry.retry_on.reset,
                    _ => false,
                };
                if !retry || attempt + 1 >= max_tries {
                    if retry {
                        last_failure = failure;
                        continue;
                    }
                    return fail(failure, false, tried);
                }
                match may_retry(&runtime) {
                    Ok(permit) => retry_permit = permit,
                    Err(()) => return fail(failure, false, tried),
                }
                last_failure = failure;
            }
            Err(per_try_fired) => {
                if let Some(g) = &endpoint {
                    g.report(CallResult::Timeout);
                }
                if !per_try_fired {
                    return fail(UpstreamFailure::Timeout { per_try: false }, false, tried);
                }
                let timeout = UpstreamFailure::Timeout { per_try: true };
                if attempt + 1 < max_tries {
                    match may_retry(&runtime) {
                        Ok(permit) => retry_permit = permit,
                        Err(()) => return fail(timeout, false, tried),
                    }
                }
                last_failure = timeout;
            }
        }
    }
    fail(last_failure, max_tries > 1, tried)
}

/// The URI of an HTTP/2 request: it names the service (`authority`), which hyper sends as
/// `:authority`; `https` when TLS is originated.
fn h2_uri(
    security: &UpstreamSecurity,
    authority: &str,
    path: &str,
) -> Result<Uri, http::uri::InvalidUri> {
    let scheme = match security {
        UpstreamSecurity::Plain => "http",
        _ => "https",
    };
    format!("{scheme}://{authority}{path}").parse()
}

/// A response body that keeps the request's circuit-breaker permits and endpoint guard until it
/// has been sent, so `rq_active` (and LEAST_REQUEST) see the whole exchange.
struct HeldBody<B, H> {
    inner: B,
    _held: H,
}

impl<B: Body + Unpin, H: Unpin> Body for HeldBody<B, H> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn spawn_mirror(
    proxy: &Arc<Proxy>,
    ctx: &RequestCtx,
    mirror: &sluice_model::route::Mirror,
    (method, path, downstream_h2): (&Method, &PathAndQuery, bool),
    headers: &HeaderMap,
    body: Bytes,
) {
    let Ok(cluster) = mirror.target.resolve(ctx.port) else {
        return;
    };
    let cluster = cluster.clone();
    let proxy = proxy.clone();
    let authority = ctx.authority.clone();
    let method = method.clone();
    let path = path.clone();
    let headers = headers.clone();
    tokio::spawn(async move {
        let runtime = proxy.cluster_runtime(&cluster);
        if runtime.is_original_destination() {
            return;
        }
        let Some(endpoint) = runtime.pick(None, &[]) else {
            return;
        };
        let ep = endpoint.endpoint();
        let deadline = cluster.connect_timeout;
        let Ok(addr) = proxy
            .endpoint_socket(&ep.address, ep.port, 0, deadline)
            .await
        else {
            return;
        };
        let security = security_for(proxy.identity.as_ref(), &cluster, &authority);
        let mut req = Request::new(Full::new(body).map_err(|e| match e {}).boxed_unsync());
        *req.method_mut() = method;
        *req.headers_mut() = headers;
        let sent = if cluster.upstream_protocol.is_http2(downstream_h2) {
            let host = req
                .headers_mut()
                .remove(header::HOST)
                .and_then(|h| h.to_str().ok().map(str::to_string))
                .unwrap_or(authority);
            let Ok(uri) = h2_uri(&security, &host, path.as_str()) else {
                return;
            };
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_2;
            let Ok(endpoint) =
                proxy
                    .clients
                    .http2(Some(&runtime), &security, PASSTHROUGH_CONNECT_TIMEOUT, addr)
            else {
                return;
            };
            endpoint
                .send(req, 0, None)
                .await
                .ok()
                .map(|r| r.map(Either::Right))
        } else {
            let Ok(pool) =
                proxy
                    .clients
                    .http1(Some(&runtime), &security, PASSTHROUGH_CONNECT_TIMEOUT)
            else {
                return;
            };
            *req.uri_mut() = Uri::from(path);
            pool.send(addr, req, 0, None)
                .await
                .ok()
                .map(|r| r.map(Either::Left))
        };
        // The shadow's response is ignored; only drain it so the connection can be reused.
        if let Some(resp) = sent {
            endpoint.report(CallResult::Status(resp.status().as_u16()));
            let _ = resp.into_body().collect().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_stripped() {
        let mut h = headers(&[
            ("host", "a"),
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("trailer", "x-sum"),
            ("te", "gzip, trailers"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["host", "te", "x-end-to-end"]);
        assert_eq!(h[header::TE], "trailers", "only `te: trailers` goes on");

        let mut h = headers(&[("te", "gzip"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-a"]);

        let mut clean = headers(&[("host", "a"), ("content-length", "2")]);
        strip_hop_by_hop(&mut clean);
        assert_eq!(names(&clean), ["content-length", "host"]);
    }
}
