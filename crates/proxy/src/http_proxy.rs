//! HTTP proxying on the outbound side of a sidecar and on gateway listeners: route each request
//! with the snapshot it arrived under and carry out the decision (forward with timeouts and
//! retries, fault, redirect, direct response, block). The request lifecycle around it (access
//! log, metrics, authorization) is `http_manager`'s.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
use sluice_model::{Cluster, HttpDecision, HttpRouteRule, ProxyKind, RouteAction, Snapshot};

use crate::balancer::{
    request_hash, CallResult, ClusterRuntime, EndpointGuard, EndpointState, HashInput, RequestHash,
    RetryPermit,
};
use crate::body::{CountingBody, DownstreamBodyError, DownstreamFault};
use crate::context::{Downstream, Proxy};
use crate::gateway::edge::{self, GatewayConn};
use crate::http_manager::upgrade::{self, Tunnel};
use crate::http_manager::{
    downstream_response_head, local_reply, local_response, upstream_request_headers, with_flag,
    AuthzSubject, Call, HttpSide, LocalReply, Outcome, Peers, ProxyError,
};
use crate::telemetry::accesslog::AccessLogRecord;
use crate::telemetry::metrics::{Reporter, SecurityPolicy};
use crate::telemetry::spans::{HopShape, SpanSide};
use crate::upstream::{
    cluster_security, security_for, BoxError, ProxyBody, UpstreamConnInfo, UpstreamConnector,
    UpstreamSecurity,
};

/// Largest request body buffered so it can be retried or mirrored; larger bodies are streamed once.
const MAX_BUFFERED_BODY: u64 = 64 * 1024;

static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_DECORATOR_OPERATION: HeaderName =
    HeaderName::from_static("x-envoy-decorator-operation");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

/// Names Istio gives the routes and cluster of requests no VirtualService routes (allocated once,
/// not per request).
static ALLOW_ANY_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("allow_any"));
static BLOCK_ALL_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("block_all"));
static PASSTHROUGH_CLUSTER: LazyLock<Arc<str>> =
    LazyLock::new(|| Arc::from(sluice_model::PASSTHROUGH_CLUSTER));

/// The side of the proxy whose requests are routed by VirtualServices: the outbound side of a
/// sidecar (captured or explicit-proxy connections) and gateway listeners.
pub(crate) struct Routed {
    proxy: Arc<Proxy>,
    downstream: Arc<Downstream>,
    /// Set on gateway listeners: route by the listener's port and its Gateway servers.
    gateway: Option<Arc<GatewayConn>>,
    /// Set on a Sidecar egress listener the sidecar bound itself: its address, which names its
    /// scope in the snapshot.
    bound_egress: Option<SocketAddr>,
}

impl HttpSide for Routed {
    const REPORTER: Reporter = Reporter::Source;

    fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    fn server_header(&self) -> HeaderValue {
        self.proxy.server_header.clone()
    }

    fn on_request_head(&self, headers: &mut HeaderMap) {
        if let Some(gw) = &self.gateway {
            edge::apply_edge_headers(headers, self.downstream.remote.ip(), gw.is_tls());
        }
    }

    fn log_downstream(&self, rec: &mut AccessLogRecord) {
        let gw = self.gateway.as_deref();
        rec.downstream_remote_address = Some(self.downstream.remote);
        rec.requested_server_name = gw.and_then(|g| g.sni.clone());
        rec.downstream_peer_uri_san = gw
            .and_then(|g| g.peer.as_ref())
            .and_then(|p| p.spiffe_id.clone());
        rec.downstream_local_address = Some(match &self.downstream.target {
            Some(t) => t.addr,
            None => self.downstream.local,
        });
    }

    /// Envoy's RBAC filter runs on gateway listeners only (a sidecar checks policies on its
    /// inbound side).
    fn authz_subject(&self) -> Option<AuthzSubject<'_>> {
        let gw = self.gateway.as_deref()?;
        Some(AuthzSubject {
            peer: gw.peer.as_ref(),
            remote: self.downstream.remote,
            port: gw.port,
            sni: gw.sni.as_deref(),
        })
    }

    async fn respond(&self, call: Call<'_>) -> (Response<ProxyBody>, Outcome) {
        let Call {
            snap,
            parts,
            body,
            authority,
            upgrade,
        } = call;
        let mut ctx = RequestCtx::new(self, &parts, authority, body.error());
        ctx.upgrade = upgrade;
        // A Sidecar that scopes egress per port (or a bound egress listener): route with the
        // scope of the listener this request arrived on.
        let scoped = match (&self.gateway, self.bound_egress) {
            (Some(_), _) => None,
            (None, Some(listen)) => match snap.sidecar_listeners.bound_egress.get(&listen) {
                Some((_, scope)) => Some(scope.clone()),
                // The listener was removed from the configuration while this connection lived.
                None => {
                    return ctx.direct(
                        &LocalReply::direct(StatusCode::BAD_GATEWAY),
                        Some(BLOCK_ALL_ROUTE.clone()),
                    )
                }
            },
            (None, None) => {
                let ip = self
                    .downstream
                    .target
                    .as_ref()
                    .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |t| t.addr.ip());
                snap.outbound_scope(SocketAddr::new(ip, ctx.port)).cloned()
            }
        };
        let snap = scoped.as_ref().unwrap_or(snap);
        let mut delayed = false;
        let (response, mut outcome) =
            route_and_forward(&self.proxy, snap, &ctx, parts, body, &mut delayed).await;
        if delayed {
            outcome.flags = with_flag(&outcome.flags, "DI");
        }
        (response, outcome)
    }

    fn peers(&self, snap: &Snapshot, outcome: &Outcome) -> Peers {
        let proxy = &self.proxy;
        let destination = outcome.upstream.map_or_else(
            || proxy.unknown_peer.clone(),
            |u| proxy.peer_with_principal(snap, u.remote.ip(), outcome.upstream_principal.as_ref()),
        );
        // Reported as the source, like Istio's gateways: `source_*` is this proxy's own workload
        // even when a gateway terminated its caller's mesh mTLS (the caller's identity is in the
        // access log's %DOWNSTREAM_PEER_URI_SAN%), and a source cannot know the destination's
        // policy, so `connection_security_policy` is `unknown`. Naming the caller here put the
        // caller → gateway edge's mTLS lock on the gateway → service edge of a service graph.
        Peers {
            source: proxy.workload.clone(),
            destination,
            service: outcome
                .service
                .clone()
                .unwrap_or_else(|| proxy.unknown_service.clone()),
            security: SecurityPolicy::Unknown,
        }
    }

    /// A sidecar's outbound hop is Envoy's egress operation (CLIENT); a gateway listener has no
    /// traffic direction, so Envoy traces it as ingress (SERVER) with a child for the upstream.
    fn span_side(&self, _snap: &Snapshot) -> SpanSide {
        SpanSide {
            shape: if self.gateway.is_some() {
                HopShape::ServerWithUpstreamChild
            } else {
                HopShape::Client
            },
            peer: Some(self.downstream.remote),
            operation: None,
        }
    }
}

/// Everything known about the request being handled.
struct RequestCtx<'a> {
    proxy: &'a Proxy,
    /// The request's authority as the client sent it (`:authority`, else `Host`).
    authority_header: Option<HeaderValue>,
    port: u16,
    downstream: &'a Downstream,
    /// Explicit-proxy target parsed from an absolute URI: host and port.
    uri_target: Option<(String, u16)>,
    gateway: Option<&'a GatewayConn>,
    /// Whether reading the request body failed on the client's side.
    body_error: DownstreamBodyError,
    /// The `Upgrade` value of a WebSocket upgrade request.
    upgrade: Option<HeaderValue>,
}

impl<'a> RequestCtx<'a> {
    fn new(
        side: &'a Routed,
        parts: &http::request::Parts,
        authority_header: Option<HeaderValue>,
        body_error: DownstreamBodyError,
    ) -> Self {
        let downstream = &*side.downstream;
        let gateway = side.gateway.as_deref();
        // Absolute-form (explicit proxy) names the target in the URI; otherwise Host/:authority
        // does. A gateway routes by its listener port only, and a captured connection (or a
        // CONNECT tunnel) by its original destination's port: HTTP/2 requests carry a full URI
        // there too.
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
        let port = match (gateway, &uri_target, &downstream.target) {
            (Some(gw), _, _) => gw.port,
            (None, Some((_, p)), _) => *p,
            (None, None, Some(t)) => t.addr.port(),
            (None, None, None) => downstream.local.port(),
        };
        RequestCtx {
            proxy: &side.proxy,
            authority_header,
            port,
            downstream,
            uri_target,
            gateway,
            body_error,
            upgrade: None,
        }
    }

    fn server_header(&self) -> HeaderValue {
        self.proxy.server_header.clone()
    }

    /// The request's authority, `""` when it has none (or it is not text).
    fn authority(&self) -> &str {
        self.authority_header
            .as_ref()
            .and_then(|a| a.to_str().ok())
            .unwrap_or("")
    }

    /// The local reply for `err`, reaching no service.
    fn fail(
        &self,
        err: &ProxyError,
        route_name: Option<Arc<str>>,
    ) -> (Response<ProxyBody>, Outcome) {
        local_reply(self.server_header(), err, route_name)
    }

    /// A reply the route configured (direct response, redirect).
    fn direct(
        &self,
        reply: &LocalReply,
        route_name: Option<Arc<str>>,
    ) -> (Response<ProxyBody>, Outcome) {
        (
            local_response(self.server_header(), reply),
            Outcome::local(reply, route_name),
        )
    }
}

/// Handles one request arriving on the outbound side of a sidecar.
pub async fn handle(
    proxy: Arc<Proxy>,
    downstream: Arc<Downstream>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let side = Routed {
        proxy,
        downstream,
        gateway: None,
        bound_egress: None,
    };
    crate::http_manager::serve(side, req).await
}

/// Handles one request arriving on the Sidecar egress listener the sidecar bound at `listen`
/// (`captureMode: NONE`): routed by Host among that listener's hosts.
pub async fn handle_bound_egress(
    proxy: Arc<Proxy>,
    downstream: Arc<Downstream>,
    listen: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let side = Routed {
        proxy,
        downstream,
        gateway: None,
        bound_egress: Some(listen),
    };
    crate::http_manager::serve(side, req).await
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
    let side = Routed {
        proxy,
        downstream,
        gateway: Some(gw),
        bound_egress: None,
    };
    crate::http_manager::serve(side, req).await
}

async fn route_and_forward(
    proxy: &Arc<Proxy>,
    snap: &Arc<Snapshot>,
    ctx: &RequestCtx<'_>,
    parts: http::request::Parts,
    body: CountingBody,
    delayed: &mut bool,
) -> (Response<ProxyBody>, Outcome) {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let default_scheme = match ctx.gateway {
        Some(gw) if gw.is_tls() => "https",
        _ => "http",
    };
    let scheme = parts.uri.scheme_str().unwrap_or(default_scheme).to_string();
    if let Some(gw) = ctx.gateway {
        if let Some(early) = gateway_local_reply(snap, gw, ctx, &parts, &path_and_query) {
            return early;
        }
    }
    let facts = HttpRequestFacts {
        method: parts.method.as_str(),
        scheme: &scheme,
        authority: ctx.authority(),
        path_and_query: &path_and_query,
        headers: &parts.headers,
        port: ctx.port,
    };
    let decision = match ctx.gateway {
        Some(gw) => snap.route_gateway_http(gw.port, &facts),
        None => snap.route_http(&facts),
    };
    match decision {
        HttpDecision::Blocked => {
            count_blocked(proxy, ctx);
            let (resp, mut outcome) = ctx.direct(
                &LocalReply::direct(StatusCode::BAD_GATEWAY),
                Some(BLOCK_ALL_ROUTE.clone()),
            );
            outcome.service = Some(proxy.blackhole_labels.clone());
            (resp, outcome)
        }
        HttpDecision::NoRoute { .. } => {
            if ctx.gateway.is_some() {
                // A gateway with no route for the host refuses it (404 NR).
                count_blocked(proxy, ctx);
            }
            ctx.fail(&ProxyError::NoRoute, None)
        }
        HttpDecision::Passthrough => {
            let passthrough = Forward {
                cluster: None,
                route_name: Some(ALLOW_ANY_ROUTE.clone()),
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
                        let status =
                            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                        return ctx.fail(&ProxyError::FaultAbort(status), route_name);
                    }
                }
            }
            match &rule.action {
                RouteAction::DirectResponse {
                    status,
                    body: content,
                } => {
                    let mut reply =
                        LocalReply::direct(StatusCode::from_u16(*status).unwrap_or(StatusCode::OK));
                    reply.body = Bytes::copy_from_slice(content);
                    let (mut resp, outcome) = ctx.direct(&reply, route_name);
                    rule.response_headers.apply(resp.headers_mut());
                    (resp, outcome)
                }
                RouteAction::Redirect(rd) => {
                    let location = redirect_location(
                        rd,
                        &scheme,
                        ctx.authority(),
                        ctx.port,
                        &path_and_query,
                        matched,
                    );
                    let mut reply = LocalReply::direct(
                        StatusCode::from_u16(rd.code).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                    );
                    if let Ok(v) = HeaderValue::from_str(&location) {
                        reply.extra_headers.push((header::LOCATION, v));
                    }
                    ctx.direct(&reply, route_name)
                }
                RouteAction::Forward(targets) => {
                    let Some(target) = pick_weighted(targets, rand::random::<f64>()) else {
                        return ctx.fail(&ProxyError::NoCluster, route_name);
                    };
                    let cluster = match target.cluster.resolve(ctx.port) {
                        Ok(c) => c.clone(),
                        Err(missing) => {
                            tracing::debug!(
                                "route {} points at missing cluster {missing}",
                                rule.source
                            );
                            let (resp, mut o) = ctx.fail(&ProxyError::NoCluster, route_name);
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
                    // The span's name; rendered only for a proxy that reports spans.
                    let operation = snap
                        .tracing
                        .is_some()
                        .then(|| rule.operation.render(ctx.port));
                    let (resp, mut outcome) = forward(proxy, ctx, parts, body, fwd).await;
                    outcome.operation = operation;
                    (resp, outcome)
                }
            }
        }
    }
}

/// Counts a refused HTTP call in `sluice_egress_blocked_total`, named by its Host without port.
fn count_blocked(proxy: &Proxy, ctx: &RequestCtx<'_>) {
    let host = match &ctx.uri_target {
        Some((h, _)) => h.as_str(),
        None => sluice_model::host::strip_port(ctx.authority()),
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
    snap: &Snapshot,
    gw: &GatewayConn,
    ctx: &RequestCtx<'_>,
    parts: &http::request::Parts,
    path_and_query: &str,
) -> Option<(Response<ProxyBody>, Outcome)> {
    if let Some(server) = &gw.tls_server {
        if parts.version == http::Version::HTTP_2 && edge::is_misdirected(server, ctx.authority()) {
            tracing::debug!(
                "misdirected request for {} on a connection for {} (port {})",
                ctx.authority(),
                server.source,
                gw.port
            );
            return Some(ctx.fail(&ProxyError::Misdirected, None));
        }
        return None;
    }
    if !snap.gateway_https_redirect(gw.port, ctx.authority()) {
        return None;
    }
    let mut reply = LocalReply::direct(StatusCode::MOVED_PERMANENTLY);
    let location = edge::https_redirect_location(ctx.authority(), path_and_query);
    if let Ok(v) = HeaderValue::from_str(&location) {
        reply.extra_headers.push((header::LOCATION, v));
    }
    Some(ctx.direct(&reply, None))
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
    ctx: &RequestCtx<'_>,
    runtime: Option<&Arc<ClusterRuntime>>,
    hash: Option<u64>,
    tried: &[Arc<EndpointState>],
    attempt: u32,
) -> Result<(SocketAddr, Option<EndpointGuard>), ProxyError> {
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
            let cluster = runtime.ok_or(ProxyError::NoHealthyUpstream)?.cluster();
            let port = cluster.original_destination_port(ProxyKind::Gateway);
            let host = sluice_model::host::strip_port(ctx.authority());
            if host.is_empty() {
                return Err(ProxyError::NoHealthyUpstream);
            }
            let addrs = proxy
                .resolver
                .resolve(host, cluster.connect_timeout)
                .await
                .map_err(|e| ProxyError::dns(&e))?;
            Ok((addrs.socket(attempt as usize, port), None))
        }
        None => {
            let (host, addr) = original().ok_or(ProxyError::NoHealthyUpstream)?;
            // A route to a `resolution: NONE` service goes to the address the client called, on
            // the port the model gives (passthrough: the port called).
            let port = runtime.map_or(addr.port(), |rt| {
                rt.cluster().original_destination_port(ProxyKind::Sidecar)
            });
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
                        .map_err(|e| ProxyError::dns(&e))?;
                    Ok((addrs.socket(attempt as usize, port), None))
                }
                None => Ok((SocketAddr::new(addr.ip(), port), None)),
            }
        }
        Some(rt) => {
            let guard = rt.pick(hash, tried).ok_or(ProxyError::NoHealthyUpstream)?;
            let ep = guard.endpoint();
            let addr = proxy
                .endpoint_socket(
                    &ep.address,
                    ep.port,
                    attempt as usize,
                    rt.cluster().connect_timeout,
                )
                .await
                .map_err(|e| ProxyError::dns(&e))?;
            Ok((addr, Some(guard)))
        }
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
) -> Result<Response<Incoming>, ProxyError> {
    let endpoint = proxy
        .clients
        .http2(runtime, security, PASSTHROUGH_CONNECT_TIMEOUT, addr)
        .map_err(|e| {
            tracing::warn!("TLS origination towards {addr} is misconfigured: {e}");
            ProxyError::tls_setup(&e)
        })?;
    endpoint.send(req, limits.0, limits.1).await.map_err(|e| {
        tracing::debug!("HTTP/2 to {addr}: {e}");
        ProxyError::exchange(&e)
    })
}

async fn forward(
    proxy: &Arc<Proxy>,
    ctx: &RequestCtx<'_>,
    mut parts: http::request::Parts,
    body: CountingBody,
    fwd: Forward<'_>,
) -> (Response<ProxyBody>, Outcome) {
    let cluster_name: Arc<str> = fwd
        .cluster
        .as_ref()
        .map_or_else(|| PASSTHROUGH_CLUSTER.clone(), |c| c.name.clone());
    let runtime = fwd.cluster.as_ref().map(|c| proxy.cluster_runtime(c));
    let service = match (&fwd.cluster, &runtime) {
        (Some(c), Some(rt)) => rt.service_labels(c),
        _ => proxy.passthrough_labels.clone(),
    };
    let fail = |failure: ProxyError, exhausted: bool, tried: Option<SocketAddr>| {
        let reply = failure.reply(exhausted);
        let resp = local_response(ctx.server_header(), &reply);
        let mut o = Outcome::local(&reply, fwd.route_name.clone()).tried(tried);
        o.cluster = Some(cluster_name.clone());
        o.service = Some(service.clone());
        (resp, o)
    };

    // Build the upstream request head once; each try clones it.
    let request_path = parts.uri.path_and_query().cloned();
    let path_and_query = request_path.as_ref().map_or("/", |p| p.as_str());
    let mut headers = std::mem::take(&mut parts.headers);
    upstream_request_headers(&mut headers, ctx.authority_header.as_ref());
    if let Some(u) = &ctx.upgrade {
        upgrade::restore_request_headers(&mut headers, u);
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
            return fail(ProxyError::Overflow, false, None);
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
        (Some(c), Some(rt)) => cluster_security(rt, proxy.identity.as_ref(), c, ctx.authority()),
        _ => UpstreamSecurity::Plain,
    };
    let upstream_principal: Option<Arc<str>> = security.expected_principal().map(Arc::from);
    // The cluster's protocol (declared `http2`/`grpc`, `h2UpgradePolicy`, `useClientProtocol`,
    // sniffed ports following the client); passthrough follows the client.
    let downstream_version = parts.version;
    let downstream_h2 = downstream_version == Version::HTTP_2;
    // An upgrade goes over HTTP/1.1 whatever the cluster's protocol (RFC 8441 is not
    // supported), on a connection of its own.
    let http2 = ctx.upgrade.is_none()
        && fwd.cluster.as_ref().map_or(downstream_h2, |c| {
            c.upstream_protocol.is_http2(downstream_h2)
        });
    let upgrade_connector = if ctx.upgrade.is_some() {
        match UpstreamConnector::new(
            &security,
            PASSTHROUGH_CONNECT_TIMEOUT,
            runtime.as_ref(),
            false,
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("TLS origination for {cluster_name} is misconfigured: {e}");
                return fail(ProxyError::tls_setup(&e), false, None);
            }
        }
    } else {
        None
    };
    let pool = if http2 || upgrade_connector.is_some() {
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
                return fail(ProxyError::tls_setup(&e), false, None);
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
            return fail(ProxyError::Downstream(fault), false, None);
        }
    };
    // An upgrade request is never retried nor mirrored (Envoy's router).
    let retryable = matches!(body, RequestBody::Buffered(_)) && ctx.upgrade.is_none();
    // The HTTP/1.1 request line's path, parsed once (not per try or per mirror); the request's own when not
    // rewritten.
    let upstream_pq = match (&upstream_path, &request_path) {
        (Cow::Borrowed(_), Some(pq)) => Ok(pq.clone()),
        _ => PathAndQuery::try_from(upstream_path.as_ref()),
    };
    let Ok(upstream_pq) = upstream_pq else {
        return fail(ProxyError::BadRequest, false, None);
    };
    let mirrored = fwd.rule.filter(|_| retryable);
    if let (Some(rule), RequestBody::Buffered(bytes)) = (mirrored, &body) {
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
            .unwrap_or(ctx.authority());
        match h2_uri(&security, authority, &upstream_path) {
            Ok(u) if u.authority().is_some() => {
                headers.remove(header::HOST);
                Some(u)
            }
            _ => return fail(ProxyError::BadRequest, false, None),
        }
    } else {
        None
    };

    let deadline = fwd.timeout.map(|t| tokio::time::Instant::now() + t);
    let max_tries = if retryable { 1 + fwd.retry.attempts } else { 1 };
    let mut last_failure = ProxyError::NoHealthyUpstream;
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
            if let Some(connector) = &upgrade_connector {
                return upgrade::send(connector, addr, req)
                    .await
                    .map(|resp| resp.map(Either::Right))
                    .map_err(|e| {
                        tracing::debug!("upgrade to {addr} for {cluster_name} failed: {e}");
                        ProxyError::exchange(&e)
                    });
            }
            match &pool {
                Some(pool) => pool
                    .send(addr, req, per_connection, max_duration)
                    .await
                    .map(|resp| resp.map(Either::Left))
                    .map_err(|e| {
                        tracing::debug!("upstream {addr} for {cluster_name} failed: {e}");
                        ProxyError::exchange(&e)
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
        let failure = match result {
            Ok(Ok(mut resp)) => {
                let status = resp.status().as_u16();
                if let Some(g) = &endpoint {
                    g.report(CallResult::Status(status));
                }
                let more = attempt + 1 < max_tries;
                if more && fwd.retry.retry_on.retries_status(status) {
                    if let Ok(permit) = may_retry(&runtime) {
                        retry_permit = permit;
                        last_failure = ProxyError::Reset;
                        continue;
                    }
                }
                let service_time = try_start.elapsed().as_millis() as u64;
                // An accepted upgrade's permits and endpoint count last as long as its tunnel.
                let held = (request_permit, endpoint, retry_permit);
                let (tunnel, held) = if ctx.upgrade.is_some() && upgrade::accepted(resp.status()) {
                    (Some(Tunnel::new(&mut resp, Box::new(held))), None)
                } else {
                    (None, Some(held))
                };
                let info = resp.extensions().get::<UpstreamConnInfo>().copied();
                let (mut rparts, rbody) = resp.into_parts();
                downstream_response_head(
                    &mut rparts,
                    downstream_version,
                    ctx.server_header(),
                    service_time,
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
                let rbody = match held {
                    Some(held) if held.0.is_some() || held.1.is_some() => HeldBody {
                        inner: rbody,
                        _held: held,
                    }
                    .boxed_unsync(),
                    _ => rbody.boxed_unsync(),
                };
                let resp = Response::from_parts(rparts, rbody);
                // The last try still failed in a retriable way: Envoy's UpstreamRetryLimitExceeded.
                let exhausted = max_tries > 1 && fwd.retry.retry_on.retries_status(status);
                let mut outcome = Outcome::via_upstream(info, service_time);
                if exhausted {
                    outcome.flags = Cow::Borrowed("URX");
                }
                outcome.route_name = fwd.route_name.clone();
                outcome.cluster = Some(cluster_name.clone());
                outcome.service = Some(service.clone());
                outcome.upstream_principal = upstream_principal.clone();
                outcome.tunnel = tunnel;
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
                    return fail(ProxyError::Downstream(fault), false, None);
                }
                failure
            }
            Err(per_try_fired) => ProxyError::Timeout {
                per_try: per_try_fired,
            },
        };
        if let (Some(g), Some(result)) = (&endpoint, failure.outlier_result()) {
            g.report(result);
        }
        if !failure.is_retried_by(&fwd.retry.retry_on) {
            return fail(failure, false, tried);
        }
        if attempt + 1 < max_tries {
            // `maxRetries`: a retry is only made while the cluster has room for one more.
            match may_retry(&runtime) {
                Ok(permit) => retry_permit = permit,
                Err(()) => return fail(failure, false, tried),
            }
        }
        last_failure = failure;
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
    let authority = ctx.authority().to_string();
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
