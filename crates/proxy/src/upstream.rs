//! Connections to upstreams: plain TCP with a connect timeout, TLS origination from DestinationRule
//! settings (SIMPLE/MUTUAL with files, ISTIO_MUTUAL with the proxy's mesh identity), and where
//! the HTTP/1.1 pools (`upstream_h1`) and HTTP/2 endpoints (`upstream_h2`) are found.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sluice_model::policy::{PoolLimits, TcpKeepalive};
use sluice_model::Cluster;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::balancer::{ClusterRuntime, ConnectionGuard};
use crate::identity::Identity;
use crate::tls::{client_config, ISTIO_ALPN};
use crate::upstream_h1::{Http1Pool, Http1Pools, PoolSettings};
use crate::upstream_h2::Http2Endpoint;

// The request path names these through this module.
pub use crate::tls::TlsSetupError;
pub use crate::upstream_security::{security_for, UpstreamSecurity};

/// ALPN offered with ISTIO_MUTUAL to clusters spoken to in HTTP/2 (Istio's `ALPNInMeshH2`).
const MESH_ALPN_H2: &[&[u8]] = &[ISTIO_ALPN, b"h2"];
/// ALPN offered with ISTIO_MUTUAL otherwise (Istio's `ALPNInMesh`).
const MESH_ALPN: &[&[u8]] = &[ISTIO_ALPN];

/// How the message of a connect error that failed in TLS begins (SNI refused, handshake failed).
pub(crate) const TLS_ERROR_PREFIX: &str = "TLS_error: ";

/// A connect error for a TLS failure: its message is `TLS_error: <detail>`.
fn tls_error(kind: io::ErrorKind, detail: impl std::fmt::Display) -> io::Error {
    io::Error::new(kind, format!("{TLS_ERROR_PREFIX}{detail}"))
}

/// The reason of a TLS failure from a connect error's message, `None` when it was not one.
pub(crate) fn tls_failure_reason(message: &str) -> Option<&str> {
    message.strip_prefix(TLS_ERROR_PREFIX)
}

/// Error type carried by request and response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type sent upstream and back to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why an exchange with an upstream (HTTP/1.1 or HTTP/2) got no response.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No connection could be made (TCP, TLS or the HTTP handshake).
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The connection failed, or the stream was reset, before a response arrived.
    #[error("request: {0}")]
    Request(hyper::Error),
}

/// [`security_for`] through `runtime`'s cache: an ISTIO_MUTUAL cluster's security (its SNI
/// formatted, its SANs copied) is built once per cluster version, not for every request.
pub fn cluster_security(
    runtime: &ClusterRuntime,
    identity: Option<&Arc<Identity>>,
    cluster: &Arc<Cluster>,
    authority: &str,
) -> UpstreamSecurity {
    let mesh = identity.is_some() && cluster.tls.as_ref().is_some_and(|t| t.istio_mutual);
    if !mesh {
        return security_for(identity, cluster, authority);
    }
    if let Some(cached) = runtime.mesh_security.load().as_deref() {
        if Arc::ptr_eq(&cached.0, cluster) {
            return cached.1.clone();
        }
    }
    let security = security_for(identity, cluster, authority);
    runtime
        .mesh_security
        .store(Some(Arc::new((cluster.clone(), security.clone()))));
    security
}

/// Completes an ISTIO_MUTUAL handshake on `tcp`: presents this proxy's workload certificate,
/// offers ALPN `istio`, sends `sni` and checks the peer's SPIFFE ID against `expected_sans`.
/// The error text starts with `TLS_error: ` as for SIMPLE origination.
pub async fn istio_mutual_connect(
    identity: &Identity,
    expected_sans: &[String],
    sni: &str,
    tcp: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    istio_mutual_connect_alpn(identity, expected_sans, sni, MESH_ALPN, tcp).await
}

/// [`istio_mutual_connect`] offering `alpn`.
async fn istio_mutual_connect_alpn(
    identity: &Identity,
    expected_sans: &[String],
    sni: &str,
    alpn: &[&[u8]],
    tcp: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| tls_error(io::ErrorKind::InvalidInput, format_args!("SNI {sni}: {e}")))?;
    let config = identity.client_config(expected_sans, alpn);
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| tls_error(io::ErrorKind::ConnectionAborted, e))
}

/// A TCP/TLS stream's upstream: plain TCP, or TLS the proxy originated (ISTIO_MUTUAL).
pub enum StreamUpstream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl StreamUpstream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            StreamUpstream::Plain(s) => s,
            StreamUpstream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for StreamUpstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamUpstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            StreamUpstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for StreamUpstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            StreamUpstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            StreamUpstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamUpstream::Plain(s) => Pin::new(s).poll_flush(cx),
            StreamUpstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamUpstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            StreamUpstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens a TCP connection with a deadline and `TCP_NODELAY`.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Addresses of an upstream connection, for `%UPSTREAM_LOCAL_ADDRESS%` and `%UPSTREAM_HOST%`.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamConnInfo {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

enum Transport {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

/// A connection made by [`UpstreamConnector`].
pub struct UpstreamStream {
    transport: Transport,
    info: UpstreamConnInfo,
    usage: ConnectionUseHandle,
    /// Counts the connection in its cluster while it is open.
    _guard: Option<ConnectionGuard>,
}

impl UpstreamStream {
    /// The connection's addresses.
    pub(crate) fn info(&self) -> UpstreamConnInfo {
        self.info
    }

    /// The connection's use counters.
    pub(crate) fn usage(&self) -> ConnectionUseHandle {
        self.usage.clone()
    }
}

impl Read for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Per-connection use, shared with every response served on the connection (as a response
/// extension), so the proxy can retire a connection after `maxRequestsPerConnection` requests or
/// once it is older than `maxConnectionDuration`.
#[derive(Debug)]
pub struct ConnectionUse {
    pub requests: AtomicU32,
    pub opened: std::time::Instant,
}

impl ConnectionUse {
    /// Counts one more request on the connection. True when the connection should be retired:
    /// it has served `per_connection` requests (0 = unlimited) or is older than `max_duration`.
    pub(crate) fn count_request(
        &self,
        per_connection: u32,
        max_duration: Option<Duration>,
    ) -> bool {
        let served = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let too_old = max_duration.is_some_and(|d| self.opened.elapsed() >= d);
        (per_connection > 0 && served >= per_connection) || too_old
    }
}

/// Response extension carrying the [`ConnectionUse`] of the connection that served it.
#[derive(Debug, Clone)]
pub struct ConnectionUseHandle(pub Arc<ConnectionUse>);

/// Connects to the `ip:port` in a request URI, originating TLS when configured. The pool of the
/// client it belongs to is keyed by that `ip:port`, so keep-alive connections are per endpoint.
/// With a cluster runtime, connections count against its `maxConnections` (waiting for a free
/// slot) and in `cx_active`.
#[derive(Clone)]
pub struct UpstreamConnector {
    tls: Option<TlsOrigin>,
    connect_timeout: Duration,
    keepalive: Option<TcpKeepalive>,
    /// Weak: the cluster's runtime owns the pools that own connectors.
    runtime: Option<Weak<ClusterRuntime>>,
    /// Connections to the local application (the inbound side): made from Istio's inbound
    /// source address, so iptables does not capture them again.
    to_application: bool,
}

/// TLS an [`UpstreamConnector`] originates.
#[derive(Clone)]
enum TlsOrigin {
    /// DestinationRule SIMPLE / MUTUAL: one configuration built from its files.
    Fixed(TlsConnector, ServerName<'static>),
    /// ISTIO_MUTUAL: the configuration comes from the identity at each connect, so a rotated
    /// workload certificate is used by the next connection.
    Mesh {
        identity: Arc<Identity>,
        expected_sans: Arc<[String]>,
        sni: String,
        alpn: &'static [&'static [u8]],
    },
}

/// Applies `tcp.tcpKeepalive` to an upstream socket.
pub fn set_keepalive(tcp: &TcpStream, keepalive: &TcpKeepalive) -> io::Result<()> {
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = keepalive.time {
        ka = ka.with_time(t);
    }
    if let Some(i) = keepalive.interval {
        ka = ka.with_interval(i);
    }
    if let Some(p) = keepalive.probes {
        ka = ka.with_retries(p);
    }
    socket2::SockRef::from(tcp).set_tcp_keepalive(&ka)
}

impl UpstreamConnector {
    /// A connector for `security`; with a cluster runtime, its `connectionPool` settings
    /// (connect timeout, TCP keepalive, `maxConnections`) apply. `http2` offers ALPN `h2` when
    /// TLS is originated.
    pub(crate) fn new(
        security: &UpstreamSecurity,
        connect_timeout: Duration,
        runtime: Option<&Arc<ClusterRuntime>>,
        http2: bool,
    ) -> Result<UpstreamConnector, TlsSetupError> {
        let cluster = runtime.map(|rt| rt.cluster());
        let limits = cluster.as_ref().map(|c| &c.limits);
        UpstreamConnector::with_settings(
            security,
            limits.map_or(connect_timeout, |l| l.connect_timeout),
            limits.and_then(|l| l.tcp_keepalive.clone()),
            runtime,
            http2,
        )
    }

    /// A plaintext connector to the local application (the inbound side), from Istio's inbound
    /// source address.
    pub(crate) fn to_application(connect_timeout: Duration) -> UpstreamConnector {
        UpstreamConnector {
            tls: None,
            connect_timeout,
            keepalive: None,
            runtime: None,
            to_application: true,
        }
    }

    /// A connector for `security` with these settings; with a cluster runtime, connections count
    /// against its `maxConnections`.
    pub(crate) fn with_settings(
        security: &UpstreamSecurity,
        connect_timeout: Duration,
        keepalive: Option<TcpKeepalive>,
        runtime: Option<&Arc<ClusterRuntime>>,
        http2: bool,
    ) -> Result<UpstreamConnector, TlsSetupError> {
        let tls = match security {
            UpstreamSecurity::Plain => None,
            UpstreamSecurity::Tls { settings, sni } => {
                let mut config = client_config(settings)?;
                if http2 {
                    // Envoy's ALPNH2Only for clusters that speak HTTP/2.
                    config.alpn_protocols = vec![b"h2".to_vec()];
                }
                let name =
                    ServerName::try_from(sni.to_string()).map_err(|e| TlsSetupError::Invalid {
                        path: "sni".into(),
                        message: e.to_string(),
                    })?;
                Some(TlsOrigin::Fixed(TlsConnector::from(Arc::new(config)), name))
            }
            UpstreamSecurity::IstioMutual {
                identity,
                sni,
                expected_sans,
            } => Some(TlsOrigin::Mesh {
                identity: identity.0.clone(),
                expected_sans: expected_sans.clone(),
                sni: sni.to_string(),
                alpn: if http2 { MESH_ALPN_H2 } else { MESH_ALPN },
            }),
        };
        Ok(UpstreamConnector {
            tls,
            connect_timeout,
            keepalive,
            runtime: runtime.map(Arc::downgrade),
            to_application: false,
        })
    }

    /// The cluster whose connection slots this connector's connections hold, while it exists.
    pub(crate) fn runtime(&self) -> Option<Arc<ClusterRuntime>> {
        self.runtime.as_ref().and_then(Weak::upgrade)
    }

    /// Connects to `addr`: waits for a connection slot of the cluster (`maxConnections`),
    /// connects with the deadline, sets TCP keepalive and originates TLS.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> io::Result<UpstreamStream> {
        // Waiting here for a free slot is what makes a request "pending".
        let guard = match self.runtime() {
            Some(rt) => Some(rt.acquire_connection(addr).await),
            None => None,
        };
        self.open(addr, guard).await
    }

    /// Connects to `addr` holding `guard`, the cluster's connection slot (if any): connects with
    /// the deadline, sets TCP keepalive and originates TLS.
    pub(crate) async fn open(
        &self,
        addr: SocketAddr,
        guard: Option<ConnectionGuard>,
    ) -> io::Result<UpstreamStream> {
        let tcp = if self.to_application {
            crate::inbound::connect_app(addr, self.connect_timeout).await?
        } else {
            connect_tcp(addr, self.connect_timeout).await?
        };
        if let Some(ka) = &self.keepalive {
            if let Err(e) = set_keepalive(&tcp, ka) {
                tracing::debug!("cannot set TCP keepalive towards {addr}: {e}");
            }
        }
        let info = UpstreamConnInfo {
            local: tcp.local_addr()?,
            remote: addr,
        };
        let transport = match &self.tls {
            None => Transport::Plain(TokioIo::new(tcp)),
            Some(TlsOrigin::Fixed(connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| tls_error(io::ErrorKind::ConnectionAborted, e))?;
                Transport::Tls(Box::new(TokioIo::new(tls)))
            }
            Some(TlsOrigin::Mesh {
                identity,
                expected_sans,
                sni,
                alpn,
            }) => {
                let tls =
                    istio_mutual_connect_alpn(identity, expected_sans, sni, alpn, tcp).await?;
                Transport::Tls(Box::new(TokioIo::new(tls)))
            }
        };
        Ok(UpstreamStream {
            transport,
            info,
            usage: ConnectionUseHandle(Arc::new(ConnectionUse {
                requests: AtomicU32::new(0),
                opened: std::time::Instant::now(),
            })),
            _guard: guard,
        })
    }
}

type KeepaliveKey = (Option<Duration>, Option<Duration>, Option<u32>);

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    /// Plaintext, DestinationRule TLS, or ISTIO_MUTUAL: never share a connection across modes.
    security: UpstreamSecurity,
    connect_timeout: Duration,
    /// The cluster runtime (by address) whose limits the connection applies, and its settings.
    cluster: Option<(usize, Option<Duration>, Option<KeepaliveKey>)>,
}

/// Upstream HTTP connections that do not belong to one cluster's HTTP/1.1 pools: HTTP/2
/// endpoints (by TLS mode, settings and address) and the passthrough HTTP/1.1 pool.
#[derive(Default)]
pub struct HttpClients {
    /// HTTP/1.1 to original destinations (PassthroughCluster, `resolution: NONE` without a
    /// cluster runtime).
    passthrough: Http1Pools,
    /// HTTP/2 endpoints by the same key and the endpoint address.
    http2: Mutex<HashMap<(ClientKey, SocketAddr), Http2Entry>>,
}

/// A cached HTTP/2 endpoint and the cluster runtime it belongs to (dropped with it).
type Http2Entry = (Arc<Http2Endpoint>, Option<Weak<ClusterRuntime>>);

/// Idle HTTP/1.1 connections to original destinations close after this long (hyper's default).
const PASSTHROUGH_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

impl HttpClients {
    /// The HTTP/1.1 pool for `security`: the cluster's, whose `connectionPool` settings
    /// (connect timeout, `maxConnections`, idle timeout, TCP keepalive) apply, or with no
    /// cluster the passthrough one with `connect_timeout`.
    pub fn http1(
        &self,
        runtime: Option<&Arc<ClusterRuntime>>,
        security: &UpstreamSecurity,
        connect_timeout: Duration,
    ) -> Result<Arc<Http1Pool>, TlsSetupError> {
        match runtime {
            Some(rt) => {
                let cluster = rt.cluster();
                let l = &cluster.limits;
                let settings = PoolSettings {
                    connect_timeout: l.connect_timeout,
                    idle_timeout: l.idle_timeout,
                    keepalive: l.tcp_keepalive.clone(),
                };
                rt.http1.get(security, &settings, Some(rt))
            }
            None => {
                let settings = PoolSettings {
                    connect_timeout,
                    idle_timeout: Some(PASSTHROUGH_IDLE_TIMEOUT),
                    keepalive: None,
                };
                self.passthrough.get(security, &settings, None)
            }
        }
    }

    /// The HTTP/2 connection to `addr` for `security`: with a cluster runtime (whose
    /// `connectionPool` settings apply and which counts the connection), else with a fixed
    /// connect timeout.
    pub fn http2(
        &self,
        runtime: Option<&Arc<ClusterRuntime>>,
        security: &UpstreamSecurity,
        connect_timeout: Duration,
        addr: SocketAddr,
    ) -> Result<Arc<Http2Endpoint>, TlsSetupError> {
        let cluster = runtime.map(|rt| rt.cluster());
        let key = (
            client_key(
                security,
                connect_timeout,
                runtime,
                cluster.as_ref().map(|c| &c.limits),
            ),
            addr,
        );
        let mut endpoints = self.http2.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((e, _)) = endpoints.get(&key) {
            return Ok(e.clone());
        }
        let connector = UpstreamConnector::new(security, connect_timeout, runtime, true)?;
        let endpoint = Arc::new(Http2Endpoint::new(connector, addr));
        endpoints.retain(|_, (_, rt)| rt.as_ref().is_none_or(|w| w.strong_count() > 0));
        endpoints.insert(key, (endpoint.clone(), runtime.map(Arc::downgrade)));
        Ok(endpoint)
    }
}

/// The pool key for `security` and, with a runtime, the cluster's pool settings (`limits`, the
/// runtime's current ones).
fn client_key(
    security: &UpstreamSecurity,
    connect_timeout: Duration,
    runtime: Option<&Arc<ClusterRuntime>>,
    limits: Option<&PoolLimits>,
) -> ClientKey {
    ClientKey {
        security: security.clone(),
        connect_timeout: limits.map_or(connect_timeout, |l| l.connect_timeout),
        cluster: runtime.zip(limits).map(|(rt, l)| {
            (
                Arc::as_ptr(rt) as usize,
                l.idle_timeout,
                l.tcp_keepalive
                    .as_ref()
                    .map(|k| (k.time, k.interval, k.probes)),
            )
        }),
    }
}
