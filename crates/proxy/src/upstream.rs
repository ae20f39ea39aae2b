//! Connections to upstreams: plain TCP with a connect timeout, TLS origination from DestinationRule
//! settings, and pooled keep-alive HTTP/1.1 clients.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use sluice_model::policy::TcpKeepalive;
use sluice_model::UpstreamTls;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::balancer::{ClusterRuntime, ConnectionGuard};
use crate::tls_server::{read_certs, read_key};

/// Error type carried by request and response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type sent upstream and back to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why TLS origination could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a rustls client configuration for TLS origination.
pub fn client_config(tls: &UpstreamTls) -> Result<ClientConfig, TlsSetupError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Invalid {
            path: String::new(),
            message: e.to_string(),
        })?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_certificates {
            Some(path) => {
                for cert in read_certs(path, "caCertificates")? {
                    roots.add(cert).map_err(|e| TlsSetupError::Invalid {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                }
            }
            None => {
                // Envoy (and so Istio) trusts the operating system's CAs when none are given.
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.client_certificate, &tls.private_key) {
        (Some(cert), Some(key)) if tls.mutual => {
            let chain = read_certs(cert, "clientCertificate")?;
            let key_der = read_key(key, "privateKey")?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsSetupError::Invalid {
                    path: cert.display().to_string(),
                    message: e.to_string(),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `insecureSkipVerify: true`: accept any server certificate.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.info).extra(self.usage.clone())
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

/// Response extension carrying the [`ConnectionUse`] of the connection that served it.
#[derive(Debug, Clone)]
pub struct ConnectionUseHandle(pub Arc<ConnectionUse>);

/// Connects to the `ip:port` in a request URI, originating TLS when configured. The pool of the
/// client it belongs to is keyed by that `ip:port`, so keep-alive connections are per endpoint.
/// With a cluster runtime, connections count against its `maxConnections` (waiting for a free
/// slot) and in `cx_active`.
#[derive(Clone)]
pub struct UpstreamConnector {
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    keepalive: Option<TcpKeepalive>,
    runtime: Option<Arc<ClusterRuntime>>,
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

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = UpstreamStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<UpstreamStream>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri.authority().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "upstream URI without authority",
                )
            })?;
            let addr: SocketAddr = authority.as_str().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "upstream URI authority is not ip:port",
                )
            })?;
            // Waiting here for a free slot is what makes a request "pending".
            let guard = match &this.runtime {
                Some(rt) => Some(rt.acquire_connection(addr).await),
                None => None,
            };
            let tcp = connect_tcp(addr, this.connect_timeout).await?;
            if let Some(ka) = &this.keepalive {
                if let Err(e) = set_keepalive(&tcp, ka) {
                    tracing::debug!("cannot set TCP keepalive towards {addr}: {e}");
                }
            }
            let info = UpstreamConnInfo {
                local: tcp.local_addr()?,
                remote: addr,
            };
            let transport = match this.tls {
                None => Transport::Plain(TokioIo::new(tcp)),
                Some((connector, name)) => {
                    let tls = connector.connect(name, tcp).await.map_err(|e| {
                        io::Error::new(io::ErrorKind::ConnectionAborted, format!("TLS_error: {e}"))
                    })?;
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
        })
    }
}

/// A pooled HTTP/1.1 client for one TLS identity (and, for clusters, one pool policy).
pub type HttpClient = Client<UpstreamConnector, ProxyBody>;

/// A cached client and the cluster runtime its pool belongs to (dropped with it).
type ClientEntry = (HttpClient, Option<Weak<ClusterRuntime>>);

type KeepaliveKey = (Option<Duration>, Option<Duration>, Option<u32>);

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    tls: Option<(Arc<UpstreamTls>, String)>,
    connect_timeout: Duration,
    /// The cluster runtime (by address) whose limits the pool applies, and its pool settings.
    cluster: Option<(usize, Option<Duration>, Option<KeepaliveKey>)>,
}

/// HTTP clients by TLS settings and connect timeout (and cluster, for per-cluster pools), created
/// on first use and kept for reuse.
#[derive(Default)]
pub struct HttpClients {
    clients: Mutex<HashMap<ClientKey, ClientEntry>>,
}

impl HttpClients {
    /// The client for plaintext (`tls: None`) or TLS with `sni`.
    pub fn get(
        &self,
        tls: Option<(&Arc<UpstreamTls>, &str)>,
        connect_timeout: Duration,
    ) -> Result<HttpClient, TlsSetupError> {
        self.client(tls, connect_timeout, None)
    }

    /// The client for one cluster: its pool applies the cluster's `connectionPool` settings
    /// (connect timeout, `maxConnections`, idle timeout, TCP keepalive) and counts connections in
    /// the cluster's runtime.
    pub fn for_cluster(
        &self,
        runtime: &Arc<ClusterRuntime>,
        tls: Option<(&Arc<UpstreamTls>, &str)>,
    ) -> Result<HttpClient, TlsSetupError> {
        self.client(tls, Duration::ZERO, Some(runtime))
    }

    fn client(
        &self,
        tls: Option<(&Arc<UpstreamTls>, &str)>,
        connect_timeout: Duration,
        runtime: Option<&Arc<ClusterRuntime>>,
    ) -> Result<HttpClient, TlsSetupError> {
        let limits = runtime.map(|rt| rt.limits());
        let connect_timeout = limits
            .as_ref()
            .map_or(connect_timeout, |l| l.connect_timeout);
        let key = ClientKey {
            tls: tls.map(|(t, sni)| (t.clone(), sni.to_string())),
            connect_timeout,
            cluster: runtime.zip(limits.as_ref()).map(|(rt, l)| {
                (
                    Arc::as_ptr(rt) as usize,
                    l.idle_timeout,
                    l.tcp_keepalive
                        .as_ref()
                        .map(|k| (k.time, k.interval, k.probes)),
                )
            }),
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, _)) = clients.get(&key) {
            return Ok(c.clone());
        }
        let tls = match tls {
            None => None,
            Some((settings, sni)) => {
                let config = client_config(settings)?;
                let name =
                    ServerName::try_from(sni.to_string()).map_err(|e| TlsSetupError::Invalid {
                        path: "sni".into(),
                        message: e.to_string(),
                    })?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
        };
        // Istio's `idleTimeout` default is 1 h; `0s` (None) keeps idle connections forever.
        let idle = match &limits {
            Some(l) => l.idle_timeout,
            None => Some(Duration::from_secs(90)),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .set_host(false)
            .build(UpstreamConnector {
                tls,
                connect_timeout,
                keepalive: limits.as_ref().and_then(|l| l.tcp_keepalive.clone()),
                runtime: runtime.cloned(),
            });
        // Clusters that went away take their pools with them.
        clients.retain(|_, (_, rt)| rt.as_ref().is_none_or(|w| w.strong_count() > 0));
        clients.insert(key, (client.clone(), runtime.map(Arc::downgrade)));
        Ok(client)
    }

    /// Forgets clients (and their pools) after a config change, so new TLS settings apply.
    pub fn clear(&self) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}
