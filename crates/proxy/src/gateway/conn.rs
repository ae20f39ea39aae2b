//! One connection accepted on a gateway port. On a TLS port the ClientHello is peeked for its
//! SNI, which picks the Gateway server: PASSTHROUGH servers proxy the bytes by SNI, terminating
//! servers complete the handshake with the server's certificate and serve HTTP (HTTP/2 when the
//! client negotiated `h2`). On a plain port, HTTP servers serve HTTP/1.1 and HTTP/2 prior
//! knowledge, TCP servers proxy bytes.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Request;
use hyper::body::Incoming;
use sluice_model::gateway::{GatewayServer, ServerTlsMode};
use sluice_model::Protocol;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::edge::GatewayConn;
use super::Gateway;
use crate::context::{Downstream, Proxy, Target};
use crate::detect::{detect, Detected};
use crate::http_proxy;
use crate::identity::peer_spiffe_id;
use crate::io::PrefixedStream;
use crate::stream::{proxy_gateway_stream, proxy_gateway_stream_from, DownstreamPeer, StreamConn};
use crate::telemetry::accesslog::AccessLogRecord;
use crate::tls_server::istio_mutual_config;

/// Longest a client may take to complete a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection accepted on gateway `port`.
pub async fn serve_connection(
    gateway: Arc<Gateway>,
    mut stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    port: u16,
) {
    let proxy = gateway.proxy.clone();
    let snap = proxy.snapshots.load_full();
    let Some(gport) = snap.gateway_ports().iter().find(|p| p.number == port) else {
        // The port was removed between accept and now.
        tracing::debug!("connection from {remote} on gateway port {port}: no servers any more");
        log_no_filter_chain(&proxy, remote, local, None);
        return;
    };
    let target = Target {
        addr: local,
        host: None,
    };
    if !gport.expects_tls() {
        if gport.servers.iter().any(|s| s.protocol.is_http()) {
            let gw = Arc::new(GatewayConn {
                port,
                tls_server: None,
                sni: None,
                peer: None,
            });
            serve_http(proxy, stream, remote, local, gw).await;
        } else {
            let conn = StreamConn {
                remote,
                target,
                sni: None,
                tls: false,
            };
            proxy_gateway_stream(proxy, snap, stream, conn, port).await;
        }
        return;
    }

    let (prefix, detected) = match detect(&mut stream).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!("connection from {remote} on gateway port {port} failed: {e}");
            return;
        }
    };
    let Detected::Tls { sni } = detected else {
        tracing::debug!(
            "connection from {remote} on TLS gateway port {port} did not start with a ClientHello; closed (NR)"
        );
        log_no_filter_chain(&proxy, remote, local, None);
        gateway.count_tls_error(port, "not_tls");
        return;
    };
    let Some(server) = snap.gateway_server(port, sni.as_deref()).cloned() else {
        tracing::debug!(
            "no Gateway server on port {port} for SNI {:?} from {remote}; closed (NR filter_chain_not_found)",
            sni.as_deref().unwrap_or("-")
        );
        log_no_filter_chain(&proxy, remote, local, sni.as_deref());
        gateway.count_tls_error(port, "no_server");
        crate::stream::count_blocked(
            &proxy,
            &StreamConn {
                remote,
                target: target.clone(),
                sni: sni.clone(),
                tls: true,
            },
        );
        return;
    };
    let stream = PrefixedStream::new(prefix, stream);
    if !server.terminates_tls() {
        // PASSTHROUGH / AUTO_PASSTHROUGH: route on SNI, proxy the bytes untouched.
        let conn = StreamConn {
            remote,
            target,
            sni,
            tls: true,
        };
        proxy_gateway_stream(proxy, snap, stream, conn, port).await;
        return;
    }
    drop(snap);
    terminate(gateway, stream, remote, local, port, server, sni).await;
}

async fn terminate(
    gateway: Arc<Gateway>,
    stream: PrefixedStream<TcpStream>,
    remote: SocketAddr,
    local: SocketAddr,
    port: u16,
    server: Arc<GatewayServer>,
    sni: Option<String>,
) {
    let istio_mutual = server
        .tls
        .as_ref()
        .is_some_and(|t| t.mode == ServerTlsMode::IstioMutual);
    let config = if istio_mutual {
        // ISTIO_MUTUAL: the gateway's own mesh certificate, clients must present one from the
        // mesh root.
        let Some(identity) = &gateway.proxy.identity else {
            gateway.warn_once(
                &server.source,
                &format!(
                    "{}: tls.mode ISTIO_MUTUAL needs the gateway's mesh identity (start it with \
                     --mesh-ca); refusing connections on port {port}",
                    server.source
                ),
            );
            log_no_filter_chain(&gateway.proxy, remote, local, sni.as_deref());
            gateway.count_tls_error(port, "no_identity");
            return;
        };
        istio_mutual_config(identity, &server)
    } else {
        match gateway.tls.config_for(&server) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(
                    "cannot terminate TLS from {remote} on port {port} for {}: {e}",
                    server.source
                );
                gateway.count_tls_error(port, "no_certificate");
                return;
            }
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(
                "TLS handshake from {remote} on port {port} ({}) failed: {e}",
                server.source
            );
            gateway.count_tls_error(port, "handshake");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake from {remote} on port {port} timed out");
            gateway.count_tls_error(port, "handshake");
            return;
        }
    };
    // A verified client certificate (ISTIO_MUTUAL, MUTUAL): its SPIFFE ID names the caller.
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .filter(|certs| !certs.is_empty())
        .map(|certs| DownstreamPeer {
            spiffe_id: peer_spiffe_id(certs).map(Arc::from),
        });
    if istio_mutual && !server.protocol.is_http() && server.protocol != Protocol::Https {
        // TLS/TCP behind mesh mTLS (the egress-gateway pattern: the sidecar wraps the
        // application's own TLS): route the inner stream by its SNI and pass it through.
        serve_inner_stream(gateway, tls, remote, local, port, peer).await;
        return;
    }
    let gw = Arc::new(GatewayConn {
        port,
        tls_server: Some(server),
        sni: sni.map(Arc::from),
        peer,
    });
    serve_http(gateway.proxy.clone(), tls, remote, local, gw).await;
}

/// Proxies the stream inside a terminated ISTIO_MUTUAL connection: the inner ClientHello's SNI
/// (if the application speaks TLS) picks the gateway's `tls` route, else its `tcp` route.
async fn serve_inner_stream<S>(
    gateway: Arc<Gateway>,
    mut inner: S,
    remote: SocketAddr,
    local: SocketAddr,
    port: u16,
    peer: Option<DownstreamPeer>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (prefix, detected) = match detect(&mut inner).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!("mTLS connection from {remote} on gateway port {port} failed: {e}");
            return;
        }
    };
    let (sni, tls) = match detected {
        Detected::Tls { sni } => (sni, true),
        _ => (None, false),
    };
    let conn = StreamConn {
        remote,
        target: Target {
            addr: local,
            host: None,
        },
        sni,
        tls,
    };
    let proxy = gateway.proxy.clone();
    let snap = proxy.snapshots.load_full();
    let stream = PrefixedStream::new(prefix, inner);
    proxy_gateway_stream_from(proxy, snap, stream, conn, port, peer).await;
}

/// Serves HTTP/1.1 and HTTP/2 (by ALPN or prior knowledge) on a gateway connection.
async fn serve_http<S>(
    proxy: Arc<Proxy>,
    stream: S,
    remote: SocketAddr,
    local: SocketAddr,
    gw: Arc<GatewayConn>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let downstream = Arc::new(Downstream {
        remote,
        local,
        target: None,
    });
    let lifecycle = proxy.lifecycle.clone();
    let served =
        crate::downstream::serve_http(stream, &lifecycle, move |req: Request<Incoming>| {
            http_proxy::handle_gateway(proxy.clone(), downstream.clone(), gw.clone(), req)
        });
    if let Err(e) = served.await {
        tracing::debug!("gateway HTTP connection from {remote} ended: {e}");
    }
}

/// The listener access log line Istio writes when no filter chain matches a connection
/// (`NR`, `filter_chain_not_found`), with the SNI the client asked for.
fn log_no_filter_chain(proxy: &Proxy, remote: SocketAddr, local: SocketAddr, sni: Option<&str>) {
    let mut rec = AccessLogRecord::new(SystemTime::now());
    rec.downstream_remote_address = Some(remote);
    rec.downstream_local_address = Some(local);
    rec.requested_server_name = sni.map(Arc::from);
    rec.response_flags = Cow::Borrowed("NR");
    rec.response_code_details = Some(Cow::Borrowed("filter_chain_not_found"));
    proxy.access_log.log(rec);
}
