//! Envoy's HTTP connection manager, once for every side of the proxy.
//!
//! A request goes through the same lifecycle whether it arrived on the outbound side of a
//! sidecar, on a gateway listener or on the inbound side: request id and trace context, the
//! request's side of the access log line, refusal of a malformed head, authorization, then the
//! side's own work (routing and forwarding, or forwarding to the application), and finally the
//! access log line and the Istio metrics once the response body has been sent. What differs
//! between the sides is small and lives in their [`HttpSide`]: the `server` header, the edge
//! headers a gateway adds, who the peer is for authorization, the reporter and the peers in the
//! metrics.
//!
//! Every locally generated failure is a [`ProxyError`]: who failed, whether a retry policy covers
//! it, what it means for outlier detection, and its Envoy response (status, body, response flags,
//! details) in one table, [`ProxyError::reply`].

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use sluice_model::jwt::RequestAuth;
use sluice_model::route::RetryOn;
use sluice_model::security::{AuthzDecision, AuthzRequest};
use sluice_model::Snapshot;

use crate::balancer::CallResult;
use crate::body::{CountingBody, DownstreamFault, Finish, LoggedBody};
use crate::context::Proxy;
use crate::io::ByteCounter;
use crate::stream::{rbac_denied_details, DownstreamPeer};
use crate::telemetry::accesslog::AccessLogRecord;
use crate::telemetry::metrics::{
    HttpLabels, PeerLabels, Reporter, RequestProtocol, SecurityPolicy, ServiceLabels,
};
use crate::telemetry::spans::SpanSide;
use crate::upstream::UpstreamConnInfo;
use crate::upstream::{tls_failure_reason, ExchangeError, ProxyBody, TlsSetupError};

pub(crate) mod grpc;
pub(crate) mod upgrade;
use upgrade::UpgradeRequest;

pub(crate) static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");

// === The side policies ===

/// What differs between the outbound, gateway and inbound sides of the one request lifecycle.
pub(crate) trait HttpSide: Send + Sync + 'static {
    /// `reporter` in the metrics.
    const REPORTER: Reporter;

    fn proxy(&self) -> &Arc<Proxy>;

    /// The `server` header of this side's answers (Envoy's `server_name`).
    fn server_header(&self) -> HeaderValue;

    /// Rewrites the request head before anything reads it (a gateway's edge headers).
    fn on_request_head(&self, _headers: &mut HeaderMap) {}

    /// The downstream connection's fields of the access log line.
    fn log_downstream(&self, rec: &mut AccessLogRecord);

    /// Who is asking, for the AuthorizationPolicies; `None` where Envoy has no RBAC filter (the
    /// outbound side of a sidecar).
    fn authz_subject(&self) -> Option<AuthzSubject<'_>>;

    /// The side's own work: route and forward, answer locally, or forward to the application.
    fn respond(
        &self,
        call: Call<'_>,
    ) -> impl Future<Output = (Response<ProxyBody>, Outcome)> + Send;

    /// `source_*`, `destination_*`, `destination_service*` and the connection's security policy
    /// for the metrics of a request that ended with `outcome`.
    fn peers(&self, snap: &Snapshot, outcome: &Outcome) -> Peers;

    /// The span kind(s) of this side's hop and what it knows for the span's tags.
    fn span_side(&self, snap: &Snapshot) -> SpanSide;
}

/// The downstream side of an authorization check.
pub(crate) struct AuthzSubject<'a> {
    pub peer: Option<&'a DownstreamPeer>,
    pub remote: SocketAddr,
    /// The port the request arrived for (the gateway port, the application port).
    pub port: u16,
    pub sni: Option<&'a str>,
}

/// A request handed to [`HttpSide::respond`] once the shared checks passed.
pub(crate) struct Call<'a> {
    pub snap: &'a Arc<Snapshot>,
    pub parts: http::request::Parts,
    pub body: CountingBody,
    /// `:authority`, else `Host`.
    pub authority: Option<HeaderValue>,
    /// The `Upgrade` value of a WebSocket upgrade request, which is forwarded with it (over
    /// HTTP/1.1, once: no retry, no mirror); its 101 answer carries an [`Outcome::tunnel`].
    pub upgrade: Option<HeaderValue>,
}

/// The peers of a request in the metrics.
pub(crate) struct Peers {
    pub source: Arc<PeerLabels>,
    pub destination: Arc<PeerLabels>,
    pub service: Arc<ServiceLabels>,
    pub security: SecurityPolicy,
}

/// How a request was handled, for the access log and the metrics.
pub(crate) struct Outcome {
    pub flags: Cow<'static, str>,
    pub details: Cow<'static, str>,
    pub route_name: Option<Arc<str>>,
    pub cluster: Option<Arc<str>>,
    /// `destination_service*`, when the side knows it from the route.
    pub service: Option<Arc<ServiceLabels>>,
    /// The upstream connection (`%UPSTREAM_HOST%`, `%UPSTREAM_LOCAL_ADDRESS%`); for a failure,
    /// the endpoint that failed with an unspecified local address.
    pub upstream: Option<UpstreamConnInfo>,
    pub upstream_service_time: Option<u64>,
    /// The identity the upstream had to prove (ISTIO_MUTUAL with one expected SAN):
    /// `destination_principal`.
    pub upstream_principal: Option<Arc<str>>,
    /// The upstream half of an accepted (101) upgrade.
    pub tunnel: Option<upgrade::Tunnel>,
    /// The route's decorator (`<host>:<port>/*`), the span's name; set only when a tracing
    /// backend is configured.
    pub operation: Option<String>,
}

impl Outcome {
    /// The outcome of a local reply that reached no upstream.
    pub fn local(reply: &LocalReply, route_name: Option<Arc<str>>) -> Self {
        Outcome {
            flags: Cow::Borrowed(reply.flags),
            details: reply.details.clone(),
            route_name,
            cluster: None,
            service: None,
            upstream: None,
            upstream_service_time: None,
            upstream_principal: None,
            tunnel: None,
            operation: None,
        }
    }

    /// A response the upstream sent.
    pub fn via_upstream(upstream: Option<UpstreamConnInfo>, service_time: u64) -> Self {
        Outcome {
            flags: Cow::Borrowed("-"),
            details: Cow::Borrowed("via_upstream"),
            route_name: None,
            cluster: None,
            service: None,
            upstream,
            upstream_service_time: Some(service_time),
            upstream_principal: None,
            tunnel: None,
            operation: None,
        }
    }

    /// Names the endpoint a failed exchange went to: `%UPSTREAM_HOST%`, as Envoy's log does.
    pub fn tried(mut self, remote: Option<SocketAddr>) -> Self {
        self.upstream = remote.map(|remote| UpstreamConnInfo {
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            remote,
        });
        self
    }
}

// === The lifecycle ===

/// Serves one request on `side`: the lifecycle every HTTP request of the proxy goes through.
pub(crate) async fn serve<S: HttpSide>(
    side: S,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let proxy = side.proxy().clone();
    let snap = proxy.snapshots.load_full();
    let (mut parts, body) = req.into_parts();
    // Read before the edge rewrites the head, as Envoy's codec does.
    let upgrade = upgrade::classify(&parts);
    let downstream_upgrade = match upgrade {
        UpgradeRequest::WebSocket(_) => parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
        _ => None,
    };
    side.on_request_head(&mut parts.headers);
    crate::trace::ensure_request_id(&mut parts.headers);
    // Join the caller's trace (W3C / B3) with a new span for this hop, or start one; a sampled
    // hop with a tracing backend reports its span when the response ends.
    let mut span = crate::telemetry::spans::start_hop(&snap, side.span_side(&snap), &mut parts);
    let authority = request_authority(&parts);

    // The log line's record exists only when a log is written (metrics need none of it), and is
    // boxed: it is ~800 bytes that would otherwise be copied at every move of the response body.
    // The Telemetry API of this side: whether a line is written at all, and the request facts
    // its filter and metric overrides read (`None`, nothing captured, when it has neither).
    let mode = crate::telemetry::policy::mode_of(S::REPORTER);
    let telemetry_api = crate::telemetry::policy::RequestTelemetry::for_request(
        &snap.telemetry,
        mode,
        &parts,
        authority.as_ref(),
    );
    let logs = crate::telemetry::policy::logs(&snap.telemetry, mode);
    let mut rec = (logs && proxy.access_log.is_enabled()).then(|| {
        let mut rec = Box::new(AccessLogRecord::new(SystemTime::now()));
        rec.set_request(&parts, proxy.access_log.needs_request_headers());
        rec.authority = authority.clone();
        side.log_downstream(&mut rec);
        rec
    });
    let grpc = grpc::is_grpc_content_type(parts.headers.get(header::CONTENT_TYPE));

    let received = ByteCounter::default();
    let body = CountingBody::new(body, received.clone());
    let body_error = body.error();
    let refused = match request_head_problem(&parts) {
        Some(problem) => Some(ProxyError::Head(problem)),
        // Envoy's jwt_authn then RBAC filters, where there is an RBAC filter (not on the
        // outbound side of a sidecar).
        None if side.authz_subject().is_some() => {
            match authenticate(&snap, &proxy, &mut parts, authority.as_ref()).await {
                Err(err) => Some(err),
                Ok(request_auth) => side.authz_subject().and_then(|who| {
                    authorize(
                        &snap,
                        &who,
                        &parts,
                        authority.as_ref(),
                        request_auth.as_ref(),
                    )
                }),
            }
        }
        None => None,
    };
    let (refused, upgrade) = match (refused, upgrade) {
        (Some(err), _) => (Some(err), None),
        (None, UpgradeRequest::Refused) => (Some(ProxyError::UpgradeFailed), None),
        (None, UpgradeRequest::WebSocket(value)) => (None, Some(value)),
        (None, UpgradeRequest::None) => (None, None),
    };
    let (response, mut outcome) = match refused {
        Some(err) => local_reply(side.server_header(), &err, None),
        None => {
            let call = Call {
                snap: &snap,
                parts,
                body,
                authority,
                upgrade,
            };
            side.respond(call).await
        }
    };
    // The client broke its own request body and no upstream answered: its fault, answered as
    // such (never as an upstream failure).
    let (response, mut outcome) = match body_error.get() {
        Some(fault) if outcome.upstream_service_time.is_none() => {
            let err = ProxyError::Downstream(fault);
            let reply = err.reply(false);
            outcome.flags = Cow::Borrowed(reply.flags);
            outcome.details = reply.details.clone();
            (local_response(side.server_header(), &reply), outcome)
        }
        _ => (response, outcome),
    };
    // Envoy answers a gRPC request's local reply in gRPC: trailers-only, HTTP 200.
    let response = if grpc && outcome.upstream_service_time.is_none() {
        grpc::trailers_only(response).await
    } else {
        response
    };

    let tunnel = outcome.tunnel.take();
    let status = response.status().as_u16();
    if let Some(span) = span.as_deref_mut() {
        span.set_outcome(
            outcome.operation.take(),
            outcome.cluster.clone(),
            outcome.upstream.map(|u| u.remote).filter(|a| a.port() != 0),
            status,
        );
    }
    let peers = side.peers(&snap, &outcome);
    if let Some(rec) = rec.as_deref_mut() {
        rec.response_code = status;
        rec.response_flags = outcome.flags.clone();
        rec.response_code_details = Some(outcome.details);
        rec.route_name = outcome.route_name;
        rec.upstream_cluster = outcome.cluster;
        rec.upstream_host = outcome.upstream.map(|u| u.remote);
        rec.upstream_local_address = outcome.upstream.map(|u| u.local).filter(|a| a.port() != 0);
        rec.upstream_service_time = outcome.upstream_service_time;
        if proxy.access_log.needs_response_headers() {
            rec.response_headers = Some(response.headers().clone());
        }
    }
    let mut labels = HttpLabels {
        reporter: S::REPORTER,
        source: peers.source,
        destination: peers.destination,
        destination_service: peers.service,
        request_protocol: if grpc {
            RequestProtocol::Grpc
        } else {
            RequestProtocol::Http
        },
        response_flags: outcome.flags,
        connection_security_policy: peers.security,
        response_code: status,
        // For gRPC: what the response head says (trailers-only, else the HTTP status), replaced
        // by the `grpc-status` trailer when one comes (`LoggedBody`).
        grpc_response_status: None,
        tags: None,
    };
    let (parts, body) = response.into_parts();
    if grpc {
        labels.grpc_response_status = Some(grpc::initial_status(&parts));
    }
    let finish = Finish {
        proxy,
        rec,
        labels,
        start,
        received,
        telemetry_api,
        span,
    };
    if let (Some(tunnel), Some(downstream)) = (tunnel, downstream_upgrade) {
        if upgrade::accepted(parts.status) {
            // The line is written when the tunnel ends, with its bytes.
            upgrade::splice(downstream, tunnel, finish);
            return Ok(Response::from_parts(parts, upgrade::empty_body()));
        }
    }
    let logged = LoggedBody::new(body, finish);
    Ok(Response::from_parts(parts, logged.boxed_unsync()))
}

/// The request's authority: `:authority` (or an absolute URI's), else `Host`.
fn request_authority(parts: &http::request::Parts) -> Option<HeaderValue> {
    match (parts.uri.authority(), parts.headers.get(header::HOST)) {
        (Some(a), _) => HeaderValue::from_str(a.as_str()).ok(),
        (None, Some(h)) => Some(h.clone()),
        (None, None) => None,
    }
}

/// Envoy's `jwt_authn` filter: the RequestAuthentications that apply, checked before
/// authorization; a token no rule verifies is answered with 401 (see [`crate::jwt`]).
async fn authenticate(
    snap: &Snapshot,
    proxy: &Proxy,
    parts: &mut http::request::Parts,
    authority: Option<&HeaderValue>,
) -> Result<Option<RequestAuth>, ProxyError> {
    let authn = &snap.request_authentication;
    if authn.is_empty() {
        return Ok(None);
    }
    let query = parts.uri.query();
    match crate::jwt::authenticate(authn, &proxy.jwks, &mut parts.headers, query).await {
        Ok(auth) => Ok(auth),
        Err(failure) => {
            let scheme = parts
                .headers
                .get(&X_FORWARDED_PROTO)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(if parts.uri.scheme_str() == Some("https") {
                    "https"
                } else {
                    "http"
                });
            let host = authority.and_then(|a| a.to_str().ok()).unwrap_or("");
            tracing::debug!(
                "request for {host}{} refused by RequestAuthentication: {}",
                parts.uri.path(),
                failure.message()
            );
            Err(ProxyError::JwtDenied {
                www_authenticate: crate::jwt::www_authenticate(
                    failure,
                    scheme,
                    host,
                    parts.uri.path(),
                ),
                failure,
            })
        }
    }
}

/// Envoy's HTTP RBAC filter: the AuthorizationPolicies that apply, checked before routing; a
/// denial is answered with 403 `RBAC: access denied`.
fn authorize(
    snap: &Snapshot,
    who: &AuthzSubject<'_>,
    parts: &http::request::Parts,
    authority: Option<&HeaderValue>,
    request_auth: Option<&RequestAuth>,
) -> Option<ProxyError> {
    if snap.authorization.is_empty() {
        return None;
    }
    let host = authority
        .and_then(|a| a.to_str().ok())
        .map(sluice_model::host::strip_port)
        .filter(|h| !h.is_empty());
    let req = AuthzRequest {
        source_principal: who.peer.and_then(DownstreamPeer::principal),
        source_namespace: who.peer.and_then(DownstreamPeer::namespace),
        source_ip: Some(who.remote.ip()),
        host,
        port: who.port,
        method: Some(parts.method.as_str()),
        path: Some(parts.uri.path()),
        sni: who.sni,
        headers: Some(&parts.headers),
        request_auth,
    };
    let AuthzDecision::Deny { policy } = snap.authorization.check(&req) else {
        return None;
    };
    tracing::debug!(
        "request from {} for {}{} (port {}) denied by {policy}",
        who.remote,
        host.unwrap_or("-"),
        parts.uri.path(),
        who.port
    );
    Some(ProxyError::RbacDenied(policy))
}

// === The upstream exchange, shared by the sides that forward ===

/// The request head for the upstream: hop-by-hop headers removed, `Host` from the request's
/// authority when the client sent only `:authority`, and `x-forwarded-proto` when the client set
/// none (a gateway sets it from the connection).
pub(crate) fn upstream_request_headers(headers: &mut HeaderMap, authority: Option<&HeaderValue>) {
    strip_hop_by_hop(headers);
    if !headers.contains_key(header::HOST) {
        if let Some(a) = authority {
            headers.insert(header::HOST, a.clone());
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
}

/// The upstream's response head as the client gets it: in the client's HTTP version whatever the
/// upstream spoke (an HTTP/1.0 upstream would otherwise turn the client's keep-alive connection
/// into a one-shot), without hop-by-hop headers, with this side's `server` header and
/// `x-envoy-upstream-service-time`.
pub(crate) fn downstream_response_head(
    head: &mut http::response::Parts,
    version: Version,
    server: HeaderValue,
    service_time: u64,
) {
    head.version = version;
    // An accepted upgrade keeps its `Upgrade`: only the proxy's own upgrade path gets a 101.
    let upgrade = upgrade::accepted(head.status)
        .then(|| head.headers.get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(&mut head.headers);
    if let Some(u) = upgrade {
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers.insert(header::UPGRADE, u);
    }
    head.headers.insert(header::SERVER, server);
    head.headers.insert(
        X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
        HeaderValue::from(service_time),
    );
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1). `te: trailers` is
/// kept: gRPC needs it end to end (and HTTP/2 allows no other `te`).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first: most messages carry none of these, or only `connection`,
    // and removing an absent name still hashes it.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        // By length first: most names (host, user-agent, x-request-id, the trace headers) have
        // a length no hop-by-hop name has, and the comparisons cost more than the check.
        if !matches!(name.as_str().len(), 2 | 7 | 10 | 16 | 17 | 19) {
            continue;
        }
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

/// The hop-by-hop headers [`strip_hop_by_hop`] removes (`connection` first, `te` second). Their
/// lengths (2, 7, 10, 16, 17, 19) are checked first there: keep the two lists together.
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

// === Failures and local replies ===

/// A request head Envoy refuses before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadProblem {
    /// Several `Host` headers: forwarding them would let the proxy and the upstream disagree on
    /// the host the policy was checked for.
    SeveralHosts,
    /// An HTTP/1.1 request without `Host` (and no absolute URI).
    MissingHost,
    /// More headers than the listener allows (HTTP/1.1 is limited while reading; HTTP/2 here).
    TooManyHeaders,
}

/// The problem with a request head Envoy refuses before routing, if any.
pub(crate) fn request_head_problem(parts: &http::request::Parts) -> Option<HeadProblem> {
    let hosts = parts.headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Some(HeadProblem::SeveralHosts);
    }
    if hosts == 0 && parts.version == Version::HTTP_11 && parts.uri.authority().is_none() {
        return Some(HeadProblem::MissingHost);
    }
    if parts.headers.len() > crate::downstream::MAX_REQUEST_HEADERS {
        return Some(HeadProblem::TooManyHeaders);
    }
    None
}

/// Who a failure is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Party {
    /// The client: a malformed or abandoned request. Never counted against an upstream.
    Downstream,
    /// The proxy's configuration or policy answered (no route, denied, circuit breaker, fault).
    Proxy,
    /// The upstream (or the way to it) failed.
    Upstream,
}

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// The request head is refused before routing.
    Head(HeadProblem),
    /// An AuthorizationPolicy denied the request (the policy's name).
    RbacDenied(Arc<str>),
    /// A RequestAuthentication refused the request's JWT: 401 with Envoy's message and
    /// `www-authenticate`.
    JwtDenied {
        failure: crate::jwt::JwtFailure,
        www_authenticate: HeaderValue,
    },
    /// No route matched the request's host and path.
    NoRoute,
    /// The route names a cluster that does not exist.
    NoCluster,
    /// The cluster has no endpoint to send to (none, or all ejected).
    NoHealthyUpstream,
    /// The connection could not be made; a TLS failure keeps its reason.
    ConnectFailure { tls_error: Option<String> },
    /// The connection broke before the response started.
    Reset,
    /// No response in time: the route's timeout or, with `per_try`, a try's.
    Timeout { per_try: bool },
    /// The upstream request could not be built from this request (an unusable path or host).
    BadRequest,
    /// A circuit breaker (`connectionPool` limit) tripped.
    Overflow,
    /// The client broke its own request (malformed body framing) or went away mid-body.
    Downstream(DownstreamFault),
    /// The upstream's host name did not resolve within the connect timeout (Envoy's `DF`).
    DnsResolution { details: &'static str },
    /// A request on a TLS-terminated HTTP/2 connection for a host the handshake's server does
    /// not cover.
    Misdirected,
    /// A fault injection abort with this status.
    FaultAbort(StatusCode),
    /// An HTTP/1.1 upgrade of a type no `upgrade_config` enables (Istio enables `websocket`
    /// only): Envoy's 403 `upgrade_failed`, closing the connection.
    UpgradeFailed,
}

impl ProxyError {
    /// A connection failure from the connect error's `message`; a TLS failure (`TLS_error: …`)
    /// keeps its reason for the response details.
    pub fn connect_failure(message: &str) -> Self {
        ProxyError::ConnectFailure {
            tls_error: tls_failure_reason(message).map(|tls| format!("TLS_error:{tls}")),
        }
    }

    /// TLS origination that could not be set up (unreadable or invalid certificates, bad SNI).
    pub fn tls_setup(e: &TlsSetupError) -> Self {
        ProxyError::ConnectFailure {
            tls_error: Some(format!("TLS_error:{e}")),
        }
    }

    pub fn dns(e: &crate::resolve::ResolveError) -> Self {
        tracing::debug!("{e}");
        ProxyError::DnsResolution {
            details: e.details(),
        }
    }

    /// Envoy's failure for an exchange that got no response: a connection that could not be
    /// made (its TLS failure named) or one that broke.
    pub fn exchange(e: &ExchangeError) -> Self {
        match e {
            ExchangeError::Connect(e) => ProxyError::connect_failure(&e.to_string()),
            ExchangeError::Request(_) => ProxyError::Reset,
        }
    }

    /// Who the failure is charged to.
    pub fn party(&self) -> Party {
        match self {
            ProxyError::Head(_) | ProxyError::Downstream(_) => Party::Downstream,
            ProxyError::RbacDenied(_)
            | ProxyError::JwtDenied { .. }
            | ProxyError::NoRoute
            | ProxyError::NoCluster
            | ProxyError::Overflow
            | ProxyError::BadRequest
            | ProxyError::Misdirected
            | ProxyError::FaultAbort(_)
            | ProxyError::UpgradeFailed => Party::Proxy,
            ProxyError::NoHealthyUpstream
            | ProxyError::ConnectFailure { .. }
            | ProxyError::Reset
            | ProxyError::Timeout { .. }
            | ProxyError::DnsResolution { .. } => Party::Upstream,
        }
    }

    /// Whether a route's `retryOn` retries this failure, as Envoy's retry state does: `5xx` and
    /// `gateway-error` count every reset, connect failure and per-try timeout as a 5xx; `reset`
    /// covers resets and per-try timeouts (no response at all); `connect-failure` only
    /// connection failures. Nothing else is retried: an overflow never is, and the route's
    /// overall timeout ends the request.
    pub fn is_retried_by(&self, on: &RetryOn) -> bool {
        let as_5xx = on.five_xx || on.gateway_error;
        match self {
            ProxyError::ConnectFailure { .. } => as_5xx || on.connect_failure || on.reset,
            ProxyError::Reset => as_5xx || on.reset,
            ProxyError::Timeout { per_try: true } => as_5xx || on.reset,
            _ => false,
        }
    }

    /// What the failure tells outlier detection about the endpoint, if anything.
    pub fn outlier_result(&self) -> Option<CallResult> {
        if self.party() != Party::Upstream {
            return None;
        }
        match self {
            ProxyError::ConnectFailure { .. } => Some(CallResult::ConnectFailed),
            ProxyError::Reset => Some(CallResult::Reset),
            ProxyError::Timeout { .. } => Some(CallResult::Timeout),
            _ => None,
        }
    }

    /// Envoy's local reply for the failure: status, body, response flags and details. With
    /// `retries_exhausted` (the last allowed try failed in a retriable way) the flags gain `URX`.
    pub fn reply(&self, retries_exhausted: bool) -> LocalReply {
        use StatusCode as S;
        let mut r = match self {
            ProxyError::Head(HeadProblem::SeveralHosts) => {
                LocalReply::new(S::BAD_REQUEST, "Bad Request", "DPE", "http1.codec_error")
            }
            ProxyError::Head(HeadProblem::MissingHost) => {
                LocalReply::new(S::BAD_REQUEST, "Bad Request", "DPE", "missing_host_header")
            }
            ProxyError::Head(HeadProblem::TooManyHeaders) => LocalReply::new(
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request Header Fields Too Large",
                "DPE",
                "http2.too_many_headers",
            ),
            ProxyError::RbacDenied(policy) => {
                let mut r = LocalReply::new(S::FORBIDDEN, "RBAC: access denied", "-", "");
                r.details = Cow::Owned(rbac_denied_details(policy));
                r
            }
            ProxyError::JwtDenied {
                failure,
                www_authenticate,
            } => {
                let mut r = LocalReply::new(S::UNAUTHORIZED, failure.message(), "-", "");
                r.details = Cow::Owned(failure.details());
                r.extra_headers
                    .push((header::WWW_AUTHENTICATE, www_authenticate.clone()));
                r
            }
            ProxyError::NoRoute => LocalReply::new(S::NOT_FOUND, "", "NR", "route_not_found"),
            ProxyError::NoCluster => {
                LocalReply::new(S::SERVICE_UNAVAILABLE, "", "NC", "cluster_not_found")
            }
            ProxyError::NoHealthyUpstream => LocalReply::new(
                S::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                "UH",
                "no_healthy_upstream",
            ),
            ProxyError::ConnectFailure { tls_error } => {
                let mut r = LocalReply::new(
                    S::SERVICE_UNAVAILABLE,
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
            ProxyError::Reset => LocalReply::new(
                S::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                "UC",
                "upstream_reset_before_response_started{connection_termination}",
            ),
            ProxyError::Timeout { per_try } => LocalReply::new(
                S::GATEWAY_TIMEOUT,
                "upstream request timeout",
                "UT",
                if *per_try {
                    "upstream_per_try_timeout"
                } else {
                    "upstream_response_timeout"
                },
            ),
            ProxyError::BadRequest => {
                LocalReply::new(S::BAD_REQUEST, "Bad Request", "-", "invalid_request")
            }
            ProxyError::Overflow => {
                let mut r = LocalReply::new(
                    S::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                    "UO",
                    "upstream_reset_before_response_started{overflow}",
                );
                r.extra_headers
                    .push((X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true")));
                r
            }
            ProxyError::Downstream(DownstreamFault::Protocol) => {
                LocalReply::new(S::BAD_REQUEST, "Bad Request", "DPE", "http1.codec_error")
            }
            ProxyError::Downstream(DownstreamFault::Disconnect) => {
                LocalReply::new(S::BAD_REQUEST, "", "DC", "downstream_remote_disconnect")
            }
            ProxyError::DnsResolution { details } => LocalReply::new(
                S::SERVICE_UNAVAILABLE,
                "DNS resolution failure",
                "DF",
                details,
            ),
            ProxyError::Misdirected => LocalReply::new(
                S::MISDIRECTED_REQUEST,
                "Misdirected Request",
                "-",
                "misdirected_request",
            ),
            ProxyError::FaultAbort(status) => {
                LocalReply::new(*status, "fault filter abort", "FI", "fault_filter_abort")
            }
            ProxyError::UpgradeFailed => {
                let mut r = LocalReply::new(S::FORBIDDEN, "", "-", "upgrade_failed");
                // The client may already be sending the protocol it asked for: no further
                // request is read from this connection (HTTP/1.1 smuggling).
                r.extra_headers
                    .push((header::CONNECTION, HeaderValue::from_static("close")));
                r
            }
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

/// A locally generated response and how the access log describes it.
pub(crate) struct LocalReply {
    pub status: StatusCode,
    pub body: Bytes,
    pub flags: &'static str,
    pub details: Cow<'static, str>,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
}

impl LocalReply {
    pub fn new(
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

    /// A response the route configured (direct response, redirect): no failure.
    pub fn direct(status: StatusCode) -> Self {
        LocalReply::new(status, "", "-", "direct_response")
    }
}

/// The response for a local reply, with `server`.
pub(crate) fn local_response(server: HeaderValue, reply: &LocalReply) -> Response<ProxyBody> {
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
    h.insert(header::SERVER, server);
    for (k, v) in &reply.extra_headers {
        h.insert(k.clone(), v.clone());
    }
    resp
}

/// The local reply for `err` and its outcome, reaching no upstream.
pub(crate) fn local_reply(
    server: HeaderValue,
    err: &ProxyError,
    route_name: Option<Arc<str>>,
) -> (Response<ProxyBody>, Outcome) {
    let reply = err.reply(false);
    (
        local_response(server, &reply),
        Outcome::local(&reply, route_name),
    )
}

pub(crate) fn date_header() -> HeaderValue {
    HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now()))
        .unwrap_or(HeaderValue::from_static(""))
}

/// Envoy prints response flags in this order, comma-joined.
const FLAG_ORDER: [&str; 17] = [
    "UH", "UF", "UO", "NR", "URX", "NC", "DT", "DC", "LH", "UT", "LR", "UR", "UC", "DI", "FI",
    "RL", "DPE",
];

/// `flags` with `add` included, in Envoy's order.
pub(crate) fn with_flag(flags: &str, add: &'static str) -> Cow<'static, str> {
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

    #[test]
    fn a_switching_response_keeps_its_upgrade_and_others_lose_it() {
        let head = |status: u16| {
            let mut resp = Response::builder().status(status);
            for (k, v) in [("connection", "Upgrade"), ("upgrade", "websocket")] {
                resp = resp.header(k, v);
            }
            let mut parts = resp.body(()).unwrap().into_parts().0;
            downstream_response_head(
                &mut parts,
                Version::HTTP_11,
                HeaderValue::from_static("envoy"),
                3,
            );
            parts
        };
        let switched = head(101);
        assert_eq!(switched.headers[header::UPGRADE], "websocket");
        assert_eq!(switched.headers[header::CONNECTION], "upgrade");
        let refused = head(200);
        assert!(!refused.headers.contains_key(header::UPGRADE));
        assert!(!refused.headers.contains_key(header::CONNECTION));

        let reply = ProxyError::UpgradeFailed.reply(false);
        assert_eq!((reply.status.as_u16(), reply.flags), (403, "-"));
        assert_eq!(reply.details, "upgrade_failed");
        assert!(!ProxyError::UpgradeFailed.is_retried_by(&retry_on("5xx,reset")));
    }

    fn retry_on(tokens: &str) -> RetryOn {
        RetryOn::parse(tokens)
    }

    #[test]
    fn retry_conditions_follow_envoys_retry_state() {
        let connect = ProxyError::ConnectFailure { tls_error: None };
        let per_try = ProxyError::Timeout { per_try: true };
        let overall = ProxyError::Timeout { per_try: false };
        // Istio's default retryOn retries connection failures only.
        let istio =
            retry_on("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
        assert!(connect.is_retried_by(&istio));
        assert!(!ProxyError::Reset.is_retried_by(&istio));
        assert!(!per_try.is_retried_by(&istio));
        // 5xx and gateway-error count every failure without a response as a 5xx.
        for on in ["5xx", "gateway-error"] {
            let on = retry_on(on);
            assert!(connect.is_retried_by(&on));
            assert!(ProxyError::Reset.is_retried_by(&on));
            assert!(per_try.is_retried_by(&on));
            assert!(
                !overall.is_retried_by(&on),
                "the route's timeout ends the request"
            );
        }
        let reset = retry_on("reset");
        assert!(ProxyError::Reset.is_retried_by(&reset));
        assert!(per_try.is_retried_by(&reset));
        // Never retried, whatever the policy.
        let all = retry_on("5xx,gateway-error,reset,connect-failure,retriable-4xx");
        for never in [
            ProxyError::Overflow,
            ProxyError::NoCluster,
            ProxyError::NoHealthyUpstream,
            ProxyError::Downstream(DownstreamFault::Disconnect),
            ProxyError::RbacDenied("ns/p".into()),
        ] {
            assert!(!never.is_retried_by(&all), "{never:?}");
        }
    }

    #[test]
    fn failures_are_charged_to_the_right_party_and_map_to_envoys_flags() {
        let cases: [(ProxyError, Party, u16, &str); 8] = [
            (
                ProxyError::Head(HeadProblem::MissingHost),
                Party::Downstream,
                400,
                "DPE",
            ),
            (
                ProxyError::Downstream(DownstreamFault::Disconnect),
                Party::Downstream,
                400,
                "DC",
            ),
            (ProxyError::NoRoute, Party::Proxy, 404, "NR"),
            (ProxyError::NoCluster, Party::Proxy, 503, "NC"),
            (ProxyError::Overflow, Party::Proxy, 503, "UO"),
            (ProxyError::NoHealthyUpstream, Party::Upstream, 503, "UH"),
            (ProxyError::Reset, Party::Upstream, 503, "UC"),
            (
                ProxyError::Timeout { per_try: false },
                Party::Upstream,
                504,
                "UT",
            ),
        ];
        for (err, party, status, flags) in cases {
            assert_eq!(err.party(), party, "{err:?}");
            let reply = err.reply(false);
            assert_eq!(
                (reply.status.as_u16(), reply.flags),
                (status, flags),
                "{err:?}"
            );
            // Only upstream failures are input for outlier detection.
            assert_eq!(
                err.outlier_result().is_some(),
                party == Party::Upstream && err != ProxyError::NoHealthyUpstream,
                "{err:?}"
            );
        }
        assert_eq!(ProxyError::Reset.reply(true).flags, "UC,URX");
        assert_eq!(ProxyError::NoRoute.reply(true).flags, "NR");
        let tls = ProxyError::connect_failure("invalid peer certificate: UnknownIssuer");
        assert_eq!(tls.reply(false).flags, "UF");
        let overflow = ProxyError::Overflow.reply(false);
        assert!(overflow
            .extra_headers
            .iter()
            .any(|(k, v)| k == "x-envoy-overloaded" && v == "true"));
    }

    #[test]
    fn flags_are_joined_in_envoys_order() {
        assert_eq!(with_flag("-", "DI"), "DI");
        assert_eq!(with_flag("UT,URX", "DI"), "URX,UT,DI");
        assert_eq!(with_flag("FI", "DI"), "DI,FI");
    }
}
