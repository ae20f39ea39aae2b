//! The inbound side of a sidecar: Istio's `virtualInbound` listener (15006).
//!
//! istio-iptables REDIRECTs TCP arriving for the pod to this listener. For each connection the
//! original destination (`SO_ORIGINAL_DST`, the pod's own `ip:port`) names the application port; the
//! snapshot's [`InboundPort`](sluice_model::InboundPort) says which cluster (`inbound|8080||`, or
//! `InboundPassthroughClusterIpv4`) and protocol apply. HTTP (1.1 and h2c) is served with hyper and
//! each request forwarded to the application over pooled keep-alive connections; anything else is
//! copied as bytes. Upstream connections leave from `127.0.0.6`, which istio-iptables exempts from
//! capture, so the application's answers are not redirected back to the sidecar (Istio ≥ 1.10).
//!
//! A `Sidecar` with `ingress` listeners replaces the ports: each listed port has its protocol and
//! is delivered to its `defaultEndpoint` (another loopback or workload port, or a unix socket);
//! `captureMode: NONE` ones are listeners of their own ([`serve_bound_inbound`]).
//!
//! Telemetry is the server side's: `reporter="destination"`, this workload as `destination_*`, the
//! client's workload (when the registry knows its IP) as `source_*`.
//!
//! PeerAuthentication decides, per connection and application port, whether the proxy terminates
//! mesh mutual TLS first (with its `--mesh-ca` identity):
//! - STRICT: the connection must start with a TLS ClientHello, any ClientHello (Envoy's STRICT
//!   listener has a single TLS filter chain); the handshake requires a client certificate from
//!   the mesh root. Anything else is closed and logged as `NR filter_chain_not_found`. Without a
//!   mesh identity STRICT cannot be honoured, so every connection is refused (fail closed).
//! - PERMISSIVE: mesh mTLS is terminated when the ClientHello offers ALPN `istio` (or an
//!   `istio-*` protocol), Istio's marker for sidecar-originated mTLS; plaintext and the
//!   application's own TLS pass as before. With an identity every port is sniffed, declared
//!   opaque ones included (a server-first protocol then waits for the detection timeout, as
//!   behind Envoy's TLS inspector).
//! - DISABLE: never terminated.
//!
//! After termination the inner stream is served exactly like a plaintext one. The client's SPIFFE
//! ID is `%DOWNSTREAM_PEER_URI_SAN%` and `source_principal`, with
//! `connection_security_policy="mutual_tls"` (else `none`). AuthorizationPolicies, when any
//! apply, are checked per HTTP request (403 `RBAC: access denied`) or per TCP connection (closed
//! before connecting to the application).

use crate::telemetry::spans::{HopShape, SpanSide};
use sluice_model::telemetry_policy::WorkloadMode;
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use sluice_model::policy::PoolLimits;
use sluice_model::registry::Protocol;
use sluice_model::security::MtlsMode;
use sluice_model::sidecar_listeners::InboundEndpoint;
use sluice_model::{ProxyKind, Snapshot, UpstreamProtocol, INBOUND_PASSTHROUGH_CLUSTER};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::context::{service_labels, Proxy};
use crate::detect::{detect, with_client_hello, Detected};
use crate::http_manager::upgrade::{self, Tunnel};
use crate::http_manager::{
    downstream_response_head, local_reply, upstream_request_headers, AuthzSubject, Call, HttpSide,
    Outcome, Peers, ProxyError,
};
use crate::identity::peer_spiffe_id;
use crate::io::{original_dst, CountingStream, PrefixedStream};
use crate::stream::{
    authorize_connection, log_connection_denied, server_security_policy, DownstreamPeer,
};
use crate::telemetry::accesslog::AccessLogRecord;
use crate::telemetry::metrics::{PeerLabels, Reporter, SecurityPolicy, ServiceLabels, TcpLabels};
use crate::upstream::{ProxyBody, UpstreamConnInfo, UpstreamConnector};
use crate::upstream_h1::Http1Pool;
use crate::upstream_h2::Http2Endpoint;

/// The source address of the sidecar's connections to its own application (Istio's
/// `InboundPassthroughBindIpv4`). istio-iptables has `-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN`,
/// so these connections (and the application's replies) are not captured again.
pub const INBOUND_BIND_IPV4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// The IPv6 counterpart (`InboundPassthroughBindIpv6`); `sluice init` adds it to `lo`.
pub const INBOUND_BIND_IPV6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// Envoy's connect timeout for inbound clusters when the mesh does not set one.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// [`INBOUND_PASSTHROUGH_CLUSTER`]'s name for IPv6 destinations.
const INBOUND_PASSTHROUGH_CLUSTER_IPV6: &str = "InboundPassthroughClusterIpv6";

/// Istio's inbound HTTP route is always named `default`.
static ROUTE_NAME: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("default"));

/// Longest a client may take to complete the mesh mTLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN protocols the inbound side answers for mesh mTLS: Istio's markers, then the HTTP ones a
/// non-Istio mesh client might offer instead.
const MESH_ALPN: [&[u8]; 6] = [
    b"istio",
    b"istio-peer-exchange",
    b"istio-http/1.1",
    b"istio-h2",
    b"h2",
    b"http/1.1",
];

/// Inbound listeners and gateways answer as `istio-envoy` (outbound: `envoy`).
static SERVER_ISTIO_ENVOY: HeaderValue = HeaderValue::from_static("istio-envoy");

// === Accepting ===

/// The inbound listener's shared state: the proxy and the pooled clients to the application.
struct Inbound {
    proxy: Arc<Proxy>,
    /// HTTP/1.1 keep-alive connections to the application, pooled per `ip:port` (the same pool
    /// the outbound side uses for its clusters).
    http1: Arc<Http1Pool>,
    /// HTTP/2 (prior knowledge) for ports declared `http2`/`grpc` and sniffed HTTP/2: gRPC
    /// needs trailers.
    /// One connection per application address (Envoy's default for HTTP/2 clusters).
    http2: std::sync::Mutex<HashMap<SocketAddr, Arc<Http2Endpoint>>>,
    connect_timeout: Duration,
}

impl Inbound {
    /// The HTTP/2 connection to the application at `addr`, made on first use.
    fn http2_endpoint(&self, addr: SocketAddr) -> Arc<Http2Endpoint> {
        let mut endpoints = self.http2.lock().unwrap_or_else(|p| p.into_inner());
        endpoints
            .entry(addr)
            .or_insert_with(|| {
                let connector = UpstreamConnector::to_application(self.connect_timeout);
                Arc::new(Http2Endpoint::new(connector, addr))
            })
            .clone()
    }

    fn new(proxy: Arc<Proxy>) -> Self {
        // Pooled connections outlive snapshots; new ones use the timeout in force at startup.
        let connect_timeout = connect_timeout(&proxy.snapshots.load());
        let http1 = Arc::new(Http1Pool::to_application(
            connect_timeout,
            Duration::from_secs(90),
        ));
        Inbound {
            proxy,
            http1,
            http2: Default::default(),
            connect_timeout,
        }
    }
}

/// The mesh's `connectTimeout`, or Envoy's default when unset.
fn connect_timeout(snap: &Snapshot) -> Duration {
    if snap.mesh.connect_timeout.is_zero() {
        DEFAULT_CONNECT_TIMEOUT
    } else {
        snap.mesh.connect_timeout
    }
}

/// Accepts captured inbound connections until `shutdown` resolves, reading each one's original
/// destination with `SO_ORIGINAL_DST`.
pub async fn serve_captured_inbound(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) {
    serve_inbound(listener, proxy, original_dst, shutdown).await;
}

/// Accepts inbound connections until `shutdown` resolves; `original_dst` says where each one was
/// going (the application's `ip:port`). A connection whose destination cannot be read, or is the
/// inbound port itself (someone connected to 15006 directly, which would loop), is closed.
///
/// Tests pass their own `original_dst` to run without iptables.
pub async fn serve_inbound<F>(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    original_dst: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(&TcpStream) -> io::Result<SocketAddr>,
{
    let inbound = Arc::new(Inbound::new(proxy));
    let mut acceptor = crate::downstream::Acceptor::new(listener, shutdown, "inbound");
    let listen_port = acceptor.local_addr().map_or(0, |a| a.port());
    while let Some((stream, remote)) = acceptor.next().await {
        let dst = match original_dst(&stream) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("closing inbound connection from {remote}: cannot read its original destination: {e}");
                continue;
            }
        };
        if dst.port() == listen_port {
            tracing::debug!(
                "closing inbound connection from {remote} to {dst}: addressed to the inbound port itself"
            );
            continue;
        }
        let Some(guard) = inbound.proxy.lifecycle.admit() else {
            crate::outbound::refuse_unready(remote, "inbound");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let inbound = inbound.clone();
        tokio::spawn(async move {
            let _guard = guard;
            handle_connection(inbound, stream, remote, dst, None).await
        });
    }
}

/// Accepts connections on a Sidecar ingress listener the sidecar bound itself
/// (`captureMode: NONE`) at `listen`, until `shutdown` resolves. Each connection is inbound
/// traffic to that listener's port, handled as the current snapshot's listener at `listen` says
/// (closed if the listener is gone from it).
pub async fn serve_bound_inbound(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) {
    let inbound = Arc::new(Inbound::new(proxy));
    let what = format!("Sidecar ingress listener {listen}");
    let mut acceptor = crate::downstream::Acceptor::new(listener, shutdown, what.as_str());
    while let Some((stream, remote)) = acceptor.next().await {
        let Some(guard) = inbound.proxy.lifecycle.admit() else {
            crate::outbound::refuse_unready(remote, &what);
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let inbound = inbound.clone();
        tokio::spawn(async move {
            let _guard = guard;
            handle_connection(inbound, stream, remote, local, Some(listen)).await
        });
    }
}

/// Where the sidecar delivers an inbound connection: a TCP address, or a unix socket
/// (`defaultEndpoint: unix:///path`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum AppAddr {
    Tcp(SocketAddr),
    Unix(Arc<str>),
}

impl std::fmt::Display for AppAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppAddr::Tcp(a) => a.fmt(f),
            AppAddr::Unix(p) => write!(f, "unix://{p}"),
        }
    }
}

impl AppAddr {
    fn tcp(&self) -> Option<SocketAddr> {
        match self {
            AppAddr::Tcp(a) => Some(*a),
            AppAddr::Unix(_) => None,
        }
    }
}

/// What every request and stream of one inbound connection shares.
struct ConnCtx {
    /// The client.
    remote: SocketAddr,
    /// The original destination: the application's `ip:port` (`%DOWNSTREAM_LOCAL_ADDRESS%`).
    dst: SocketAddr,
    /// Where we connect: the original destination, or the Sidecar ingress listener's
    /// `defaultEndpoint`.
    upstream: AppAddr,
    cluster: Arc<str>,
    /// `destination_service*`.
    service: Arc<ServiceLabels>,
    /// `source_*`: the workload at the client's IP, if known.
    source: Arc<PeerLabels>,
    /// `destination_*`: this workload.
    destination: Arc<PeerLabels>,
    declared: Protocol,
    connect_timeout: Duration,
    /// The client's mesh identity when this proxy terminated its mutual TLS.
    peer: Option<DownstreamPeer>,
    /// The SNI of the terminated mTLS handshake (`outbound_.<port>_.<subset>_.<host>`).
    sni: Option<Arc<str>>,
}

impl ConnCtx {
    fn tcp_labels(&self, flags: &'static str) -> TcpLabels {
        TcpLabels {
            reporter: Reporter::Destination,
            source: self.source.clone(),
            destination: self.destination.clone(),
            destination_service: self.service.clone(),
            response_flags: Cow::Borrowed(flags),
            connection_security_policy: self.security_policy(),
        }
    }

    fn security_policy(&self) -> SecurityPolicy {
        server_security_policy(self.peer.as_ref())
    }

    /// The record every line of this connection starts from.
    fn record(&self, start_time: SystemTime) -> AccessLogRecord {
        let mut rec = AccessLogRecord::new(start_time);
        self.log_downstream(&mut rec);
        rec
    }

    /// The connection's fields of an access log line.
    fn log_downstream(&self, rec: &mut AccessLogRecord) {
        rec.downstream_remote_address = Some(self.remote);
        rec.downstream_local_address = Some(self.dst);
        rec.downstream_peer_uri_san = self.peer.as_ref().and_then(|p| p.spiffe_id.clone());
        rec.requested_server_name = self.sni.clone();
    }
}

async fn handle_connection(
    inbound: Arc<Inbound>,
    mut stream: TcpStream,
    remote: SocketAddr,
    dst: SocketAddr,
    bound: Option<SocketAddr>,
) {
    let snap = inbound.proxy.snapshots.load_full();
    let port = match bound {
        None => snap.inbound_port(dst.port()),
        Some(listen) => match snap.sidecar_listeners.bound_ingress.get(&listen) {
            Some(port) => port.clone(),
            None => {
                tracing::debug!(
                    "closing a connection from {remote}: listener {listen} was removed"
                );
                return;
            }
        },
    };
    let upstream = match &port.endpoint {
        InboundEndpoint::Unix(path) => AppAddr::Unix(path.clone()),
        // `tcp_addr` is `Some` for every other endpoint.
        endpoint => AppAddr::Tcp(endpoint.tcp_addr(dst).unwrap_or(dst)),
    };
    if bound.is_some() && upstream == AppAddr::Tcp(dst) {
        // A bound listener without `defaultEndpoint`: Envoy's ORIGINAL_DST is the listener
        // itself, which would loop; refused instead.
        tracing::warn!(
            "closing a connection from {remote} to {dst}: the Sidecar ingress listener on {dst} \
             has no defaultEndpoint, so its original destination is the listener itself"
        );
        return;
    }
    let mode = snap.inbound_mtls(dst.port());
    let source = inbound.proxy.peer_at(&snap, remote.ip());
    let service = port.service.as_deref().map_or_else(
        || Arc::new(ServiceLabels::unknown()),
        |s| Arc::new(service_labels(s)),
    );
    // Istio before 1.23 names the passthrough cluster per family.
    let cluster = if dst.is_ipv6() && &*port.cluster_name == INBOUND_PASSTHROUGH_CLUSTER {
        Arc::from(INBOUND_PASSTHROUGH_CLUSTER_IPV6)
    } else {
        port.cluster_name.clone()
    };
    let mut ctx = ConnCtx {
        remote,
        dst,
        upstream,
        cluster,
        service,
        source,
        destination: inbound.proxy.workload.clone(),
        declared: port.protocol,
        connect_timeout: connect_timeout(&snap),
        peer: None,
        sni: None,
    };
    drop(snap);

    let identity = inbound.proxy.identity.clone();
    let sniff_for_mtls = match (mode, &identity) {
        (MtlsMode::Disable, _) => false,
        (MtlsMode::Strict, None) => {
            warn_strict_without_identity(dst.port());
            log_no_filter_chain(&inbound.proxy, &ctx);
            return;
        }
        (MtlsMode::Strict, Some(_)) | (MtlsMode::Permissive, Some(_)) => true,
        (MtlsMode::Permissive, None) => false,
    };
    if !sniff_for_mtls {
        serve_stream(inbound, Arc::new(ctx), stream, None).await;
        return;
    }
    let (prefix, detected) = match detect(&mut stream).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!("inbound connection from {remote} failed during detection: {e}");
            return;
        }
    };
    let terminate = match (&detected, mode) {
        (Detected::Tls { .. }, MtlsMode::Strict) => true,
        (Detected::Tls { .. }, _) => offers_mesh_alpn(&prefix),
        (_, MtlsMode::Strict) => {
            tracing::debug!(
                "inbound connection from {remote} to port {} is not mutual TLS, which \
                 PeerAuthentication STRICT requires; closed",
                dst.port()
            );
            log_no_filter_chain(&inbound.proxy, &ctx);
            return;
        }
        _ => false,
    };
    let stream = PrefixedStream::new(prefix, stream);
    let Some(identity) = identity.filter(|_| terminate) else {
        // PERMISSIVE plaintext or application TLS: replay what detection read.
        let first = (Bytes::new(), detected);
        serve_stream(inbound, Arc::new(ctx), stream, Some(first)).await;
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config(&MESH_ALPN, false));
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(
                "inbound mTLS handshake from {remote} to port {} failed: {e}",
                dst.port()
            );
            return;
        }
        Err(_) => {
            tracing::debug!("inbound mTLS handshake from {remote} timed out");
            return;
        }
    };
    let conn = tls.get_ref().1;
    let peer = DownstreamPeer {
        spiffe_id: conn
            .peer_certificates()
            .and_then(peer_spiffe_id)
            .map(Arc::from),
    };
    ctx.sni = conn.server_name().map(Arc::from);
    ctx.source = peer.labels(&ctx.source);
    ctx.peer = Some(peer);
    serve_stream(inbound, Arc::new(ctx), tls, None).await;
}

/// Serves a connection's plaintext stream (or the inside of terminated mTLS): HTTP when the port
/// is declared HTTP or the first bytes say so, else bytes to the application. `first` is what
/// protocol detection already read from `stream` and its verdict, if it ran.
async fn serve_stream<S>(
    inbound: Arc<Inbound>,
    ctx: Arc<ConnCtx>,
    mut stream: S,
    first: Option<(Bytes, Detected)>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let declared = ctx.declared;
    // A declared opaque port is never sniffed: server-first protocols send nothing first.
    let (prefix, detected) = if declared.is_http() {
        (first.map(|f| f.0).unwrap_or_default(), Detected::Http1)
    } else if declared != Protocol::Unknown && !declared.is_tls() {
        (first.map(|f| f.0).unwrap_or_default(), Detected::Tcp)
    } else {
        let sniffed = match first {
            Some(f) => f,
            None => match detect(&mut stream).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(
                        "inbound connection from {} failed during detection: {e}",
                        ctx.remote
                    );
                    return;
                }
            },
        };
        match sniffed {
            // TLS to a port declared TLS or sniffed: opaque either way, but the SNI is logged.
            (p, Detected::Http1 | Detected::Http2) if declared.is_tls() => (p, Detected::Tcp),
            d => d,
        }
    };
    let stream = PrefixedStream::new(prefix, stream);
    match detected {
        Detected::Http1 | Detected::Http2 => serve_http(inbound, ctx, stream).await,
        Detected::Tls { sni } => copy_to_app(&inbound.proxy, &ctx, stream, sni).await,
        Detected::Tcp => copy_to_app(&inbound.proxy, &ctx, stream, None).await,
    }
}

/// True when a ClientHello offers one of Istio's mesh ALPN protocols (`istio`, `istio-*`): the
/// client is a sidecar originating mutual TLS, not an application speaking its own TLS.
pub fn offers_mesh_alpn(client_hello: &[u8]) -> bool {
    with_client_hello(client_hello, |hello| {
        hello.alpn().is_some_and(|mut protocols| {
            protocols.any(|p| p == b"istio" || p.starts_with(b"istio-"))
        })
    })
    .unwrap_or(false)
}

static STRICT_WITHOUT_IDENTITY_LOGGED: AtomicBool = AtomicBool::new(false);

fn warn_strict_without_identity(port: u16) {
    if !STRICT_WITHOUT_IDENTITY_LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "PeerAuthentication STRICT applies to inbound port {port} but this sidecar has no \
             mesh identity (start it with --mesh-ca): refusing inbound connections on STRICT ports"
        );
    }
}

/// The line Envoy writes when no inbound filter chain accepts a connection (plaintext to a
/// STRICT port): `NR filter_chain_not_found`.
fn log_no_filter_chain(proxy: &Proxy, ctx: &ConnCtx) {
    let mut rec = ctx.record(SystemTime::now());
    rec.response_flags = Cow::Borrowed("NR");
    rec.response_code_details = Some(Cow::Borrowed("filter_chain_not_found"));
    proxy.access_log.log(rec);
}

// === Opaque TCP / TLS ===

/// Copies a TCP/TLS connection to the application and logs one line when it closes.
async fn copy_to_app<S>(proxy: &Proxy, ctx: &ConnCtx, mut downstream: S, sni: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let mut rec = ctx.record(SystemTime::now());
    if let Some(sni) = sni.as_deref() {
        rec.requested_server_name = Some(Arc::from(sni));
    }
    let denied = authorize_connection(
        &proxy.snapshots.load(),
        ctx.peer.as_ref(),
        ctx.remote,
        ctx.dst.port(),
        rec.requested_server_name.as_deref(),
    );
    if let Some(details) = denied {
        rec.duration = start.elapsed();
        log_connection_denied(proxy, rec, details, WorkloadMode::Server);
        return;
    }
    rec.upstream_cluster = Some(ctx.cluster.clone());
    rec.upstream_host = ctx.upstream.tcp();
    let connected = match &ctx.upstream {
        AppAddr::Tcp(addr) => connect_app(*addr, ctx.connect_timeout)
            .await
            .map(AppStream::Tcp),
        AppAddr::Unix(path) => connect_unix(path, ctx.connect_timeout)
            .await
            .map(AppStream::Unix),
    };
    let mut upstream = match connected {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(
                "inbound: cannot connect to the application at {}: {e}",
                ctx.upstream
            );
            let labels = ctx.tcp_labels("UF");
            proxy.metrics.tcp_opened(&labels);
            proxy.metrics.tcp_closed(&labels, 0, 0);
            rec.response_flags = Cow::Borrowed("UF");
            rec.duration = start.elapsed();
            proxy.log_connection(rec, WorkloadMode::Server);
            return;
        }
    };
    if let AppStream::Tcp(tcp) = &upstream {
        rec.upstream_local_address = tcp.local_addr().ok();
    }
    let labels = ctx.tcp_labels("-");
    proxy.metrics.tcp_opened(&labels);
    let mut counted = CountingStream::new(&mut downstream);
    let copied = match &mut upstream {
        AppStream::Tcp(tcp) => tokio::io::copy_bidirectional(&mut counted, tcp).await,
        AppStream::Unix(unix) => tokio::io::copy_bidirectional(&mut counted, unix).await,
    };
    if let Err(e) = copied {
        tracing::debug!("inbound stream to {} ended: {e}", ctx.upstream);
    }
    let (received, sent) = (counted.read, counted.written);
    proxy.metrics.tcp_closed(&labels, sent, received);
    rec.bytes_received = received;
    rec.bytes_sent = sent;
    rec.duration = start.elapsed();
    proxy.log_connection(rec, WorkloadMode::Server);
}

// === Connecting to the application ===

/// A connection to the application.
enum AppStream {
    Tcp(TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Connects to the application's unix socket at `path`, with a deadline.
async fn connect_unix(path: &str, timeout: Duration) -> io::Result<tokio::net::UnixStream> {
    tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to unix://{path} timed out"),
            )
        })?
}

/// Sends one request to the application's unix socket on a connection of its own (the
/// keep-alive pools are keyed by TCP address; a local socket is cheap to open), with upgrades
/// allowed on it.
async fn send_unix(
    path: &str,
    timeout: Duration,
    mut req: Request<ProxyBody>,
) -> Result<Response<Incoming>, crate::upstream::ExchangeError> {
    use crate::upstream::ExchangeError;
    let stream = connect_unix(path, timeout)
        .await
        .map_err(ExchangeError::Connect)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| {
                ExchangeError::Connect(io::Error::new(io::ErrorKind::ConnectionAborted, e))
            })?;
    let path = path.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("connection to unix://{path} ended: {e}");
        }
    });
    *req.version_mut() = Version::HTTP_11;
    sender
        .send_request(req)
        .await
        .map_err(ExchangeError::Request)
}

static BIND_FAILURE_LOGGED: AtomicBool = AtomicBool::new(false);

/// Connects to the application at `addr` from [`INBOUND_BIND_IPV4`] (or [`INBOUND_BIND_IPV6`]),
/// with a deadline and `TCP_NODELAY`. If that address cannot be bound (say `::6` was never added
/// to `lo`), logs once and connects from the default address instead.
pub async fn connect_app(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let connect = async {
        let (socket, source) = if addr.is_ipv4() {
            (TcpSocket::new_v4()?, IpAddr::V4(INBOUND_BIND_IPV4))
        } else {
            (TcpSocket::new_v6()?, IpAddr::V6(INBOUND_BIND_IPV6))
        };
        if let Err(e) = socket.bind(SocketAddr::new(source, 0)) {
            if !BIND_FAILURE_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "cannot bind {source} for connections to the application ({e}); \
                     connecting from the default address, which iptables may capture again"
                );
            }
        }
        socket.connect(addr).await
    };
    let stream = tokio::time::timeout(timeout, connect).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out"),
        )
    })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

// === HTTP ===

async fn serve_http<S>(inbound: Arc<Inbound>, ctx: Arc<ConnCtx>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = ctx.remote;
    let lifecycle = inbound.proxy.lifecycle.clone();
    let served =
        crate::downstream::serve_http(stream, &lifecycle, move |req: Request<Incoming>| {
            let side = InboundHttp {
                inbound: inbound.clone(),
                conn: ctx.clone(),
            };
            crate::http_manager::serve(side, req)
        });
    if let Err(e) = served.await {
        tracing::debug!("inbound HTTP connection from {remote} ended: {e}");
    }
}

/// The inbound side in the shared request lifecycle: Envoy's `virtualInbound` HTTP connection
/// manager, with its RBAC filter and `reporter="destination"`.
struct InboundHttp {
    inbound: Arc<Inbound>,
    conn: Arc<ConnCtx>,
}

impl HttpSide for InboundHttp {
    const REPORTER: Reporter = Reporter::Destination;

    fn proxy(&self) -> &Arc<Proxy> {
        &self.inbound.proxy
    }

    /// Envoy answers as `istio-envoy` on the inbound side, overwriting the application's.
    fn server_header(&self) -> HeaderValue {
        SERVER_ISTIO_ENVOY.clone()
    }

    fn log_downstream(&self, rec: &mut AccessLogRecord) {
        self.conn.log_downstream(rec);
    }

    fn authz_subject(&self) -> Option<AuthzSubject<'_>> {
        Some(AuthzSubject {
            peer: self.conn.peer.as_ref(),
            remote: self.conn.remote,
            port: self.conn.dst.port(),
            sni: self.conn.sni.as_deref(),
        })
    }

    async fn respond(&self, call: Call<'_>) -> (Response<ProxyBody>, Outcome) {
        forward(
            &self.inbound,
            &self.conn,
            call.parts,
            call.body.boxed_unsync(),
            call.authority,
            call.upgrade,
        )
        .await
    }

    fn peers(&self, _snap: &Snapshot, _outcome: &Outcome) -> Peers {
        let conn = &self.conn;
        Peers {
            source: conn.source.clone(),
            destination: conn.destination.clone(),
            service: conn.service.clone(),
            security: conn.security_policy(),
        }
    }

    /// SERVER, named as Istio's inbound route decorator: `<service host>:<service port>/*` for
    /// a port a service targets (else the request's authority).
    fn span_side(&self, snap: &Snapshot) -> SpanSide {
        let port = self.conn.dst.port();
        let operation = snap
            .inbound_ports
            .get(&port)
            .and_then(|p| p.service.as_ref())
            .map(|svc| {
                let service_port = svc
                    .ports
                    .iter()
                    .find(|p| p.target_port.unwrap_or(p.number) == port)
                    .map_or(port, |p| p.number);
                format!("{}:{service_port}/*", svc.hostname)
            });
        SpanSide {
            shape: HopShape::Server,
            peer: Some(self.conn.remote),
            operation,
        }
    }
}

async fn forward(
    inbound: &Inbound,
    ctx: &ConnCtx,
    parts: http::request::Parts,
    body: ProxyBody,
    authority: Option<HeaderValue>,
    upgrade: Option<HeaderValue>,
) -> (Response<ProxyBody>, Outcome) {
    let downstream_version = parts.version;
    let mut headers = parts.headers;
    upstream_request_headers(&mut headers, authority.as_ref());
    if let Some(u) = &upgrade {
        upgrade::restore_request_headers(&mut headers, u);
    }
    // Inbound clusters follow the outbound rule without DestinationRule settings: HTTP/2 for
    // `http2`/`grpc` ports, the client's version for sniffed ports (`grpc-web` is forwarded as
    // is, so it keeps HTTP/1.1).
    // An upgrade goes over HTTP/1.1 on a connection of its own (a pooled one would be lost to
    // the tunnel).
    let h2 = upgrade.is_none()
        && ctx.upstream.tcp().is_some()
        && UpstreamProtocol::for_port(ctx.declared, &PoolLimits::default(), ProxyKind::Sidecar)
            .is_http2(downstream_version == Version::HTTP_2);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let route = || Some(ROUTE_NAME.clone());
    let fail = |err: ProxyError| {
        let (resp, outcome) = local_reply(SERVER_ISTIO_ENVOY.clone(), &err, route());
        let mut outcome = outcome.tried(ctx.upstream.tcp());
        outcome.cluster = Some(ctx.cluster.clone());
        (resp, outcome)
    };
    let app = match &ctx.upstream {
        AppAddr::Tcp(addr) => *addr,
        AppAddr::Unix(_) => ctx.dst,
    };
    // HTTP/1.1 writes the path as given on a connection to the application; HTTP/2 sends the
    // URI's authority as `:authority`.
    let uri: Uri = if h2 {
        match format!("http://{app}{path}").parse() {
            Ok(u) => u,
            Err(_) => return fail(ProxyError::BadRequest),
        }
    } else {
        Uri::from(path)
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method;
    *req.uri_mut() = uri;
    *req.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;

    let sent_at = Instant::now();
    let sent = if let AppAddr::Unix(path) = &ctx.upstream {
        let sent = send_unix(path, inbound.connect_timeout, req).await;
        sent.map(|r| r.map(Either::Right))
    } else if upgrade.is_some() {
        let connector = UpstreamConnector::to_application(inbound.connect_timeout);
        let sent = upgrade::send(&connector, app, req).await;
        sent.map(|r| r.map(Either::Right))
    } else if h2 {
        let sent = inbound.http2_endpoint(app).send(req, 0, None).await;
        sent.map(|r| r.map(Either::Right))
    } else {
        let sent = inbound.http1.send(app, req, 0, None).await;
        sent.map(|r| r.map(Either::Left))
    };
    match sent {
        Ok(mut resp) => {
            let tunnel = (upgrade.is_some() && upgrade::accepted(resp.status()))
                .then(|| Tunnel::new(&mut resp, Box::new(())));
            let upstream = resp.extensions().get::<UpstreamConnInfo>().copied();
            let service_time = u64::try_from(sent_at.elapsed().as_millis()).unwrap_or(u64::MAX);
            let (mut head, body) = resp.into_parts();
            downstream_response_head(
                &mut head,
                downstream_version,
                SERVER_ISTIO_ENVOY.clone(),
                service_time,
            );
            let mut outcome = Outcome::via_upstream(upstream, service_time);
            if outcome.upstream.is_none() {
                outcome = outcome.tried(ctx.upstream.tcp());
            }
            outcome.route_name = route();
            outcome.cluster = Some(ctx.cluster.clone());
            outcome.tunnel = tunnel;
            (Response::from_parts(head, body.boxed_unsync()), outcome)
        }
        Err(e) => {
            tracing::debug!("inbound: the application at {} failed: {e}", ctx.upstream);
            fail(ProxyError::exchange(&e))
        }
    }
}
