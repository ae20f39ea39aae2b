//! The outbound listeners: the captured listener (15001, iptables REDIRECT, `SO_ORIGINAL_DST`) and
//! the explicit forward proxy (15080, absolute-URI HTTP and CONNECT). Both feed connections into
//! the same dispatch: detect the protocol, then proxy HTTP requests or TCP/TLS streams.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::context::{Downstream, Proxy, Target};
use crate::detect::{detect, Detected};
use crate::downstream;
use crate::http_proxy;
use crate::io::{original_dst, PrefixedStream};
use crate::stream::{proxy_stream, StreamConn};
use crate::upstream::ProxyBody;

/// Accepts redirected connections until `shutdown` resolves.
pub async fn serve_captured(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) {
    let mut acceptor = downstream::Acceptor::new(listener, shutdown, "outbound");
    let local = acceptor.local_addr();
    while let Some((stream, remote)) = acceptor.next().await {
        let dst = match original_dst(&stream) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("cannot read the original destination of {remote}: {e}");
                continue;
            }
        };
        if Some(dst) == local
            || dst.port() == local.map_or(0, |l| l.port()) && dst.ip().is_loopback()
        {
            // Connected to the listener itself, not redirected: forwarding would loop.
            tracing::debug!("dropping direct connection from {remote} to the capture port");
            continue;
        }
        let Some(guard) = proxy.lifecycle.admit() else {
            refuse_unready(remote, "outbound");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let target = Target {
                addr: dst,
                host: None,
            };
            dispatch(proxy, stream, remote, dst, target).await;
        });
    }
}

/// Detects the protocol of a connection to `target` and proxies it.
pub async fn dispatch<S>(
    proxy: Arc<Proxy>,
    mut stream: S,
    remote: SocketAddr,
    local: SocketAddr,
    target: Target,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let snap = proxy.snapshots.load_full();
    // A Sidecar that splits egress by port: the listener of this port decides.
    let snap = snap.outbound_scope(target.addr).cloned().unwrap_or(snap);
    // A port declared as opaque TCP is never sniffed: server-first protocols send nothing first.
    let declared = snap.declared_protocol(target.addr);
    let (prefix, detected) = match declared {
        Some(p) if !p.is_http() && !p.is_tls() => (Bytes::new(), Detected::Tcp),
        _ => match detect(&mut stream).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("connection from {remote} failed during detection: {e}");
                return;
            }
        },
    };
    let stream = PrefixedStream::new(prefix, stream);
    match detected {
        Detected::Http1 | Detected::Http2 => {
            let downstream = Arc::new(Downstream {
                remote,
                local,
                target: Some(target),
            });
            serve_http(proxy, stream, downstream).await;
        }
        Detected::Tls { sni } => {
            let conn = StreamConn {
                remote,
                target,
                sni,
                tls: true,
            };
            proxy_stream(proxy, snap, stream, conn).await;
        }
        Detected::Tcp => {
            let conn = StreamConn {
                remote,
                target,
                sni: None,
                tls: false,
            };
            proxy_stream(proxy, snap, stream, conn).await;
        }
    }
}

async fn serve_http<S>(proxy: Arc<Proxy>, stream: S, downstream: Arc<Downstream>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let lifecycle = proxy.lifecycle.clone();
    let served = downstream::serve_http(stream, &lifecycle, move |req: Request<Incoming>| {
        http_proxy::handle(proxy.clone(), downstream.clone(), req)
    });
    if let Err(e) = served.await {
        tracing::debug!("downstream HTTP connection ended: {e}");
    }
}

/// Drops a connection that arrived while the configuration has not been accepted (the proxy is
/// not ready): carrying it could apply a more open policy than the operator wrote.
pub(crate) fn refuse_unready(remote: SocketAddr, listener: &str) {
    tracing::warn!(
        "refusing a connection from {remote} on the {listener} listener: the configuration has not been accepted (see /healthz/ready)"
    );
}

/// Serves the explicit forward proxy until `shutdown` resolves.
pub async fn serve_forward_proxy(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) {
    let mut acceptor = downstream::Acceptor::new(listener, shutdown, "explicit proxy");
    while let Some((stream, remote)) = acceptor.next().await {
        let Some(guard) = proxy.lifecycle.admit() else {
            refuse_unready(remote, "explicit proxy");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let downstream = Arc::new(Downstream {
                remote,
                local,
                target: None,
            });
            let drain = proxy.lifecycle.drain.clone();
            let settings = proxy.lifecycle.settings;
            let svc = service_fn(move |req: Request<Incoming>| {
                let version = req.version();
                // Boxed, as in `downstream::serve_http`: moved as a pointer, not as KiB.
                let response = Box::pin(forward_proxy_request(
                    proxy.clone(),
                    downstream.clone(),
                    req,
                ));
                let drain = drain.clone();
                async move {
                    let mut resp = response.await?;
                    downstream::close_if_draining(&drain, version, &mut resp);
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = downstream::http1_builder(&settings)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!("forward proxy connection from {remote} ended: {e}");
            }
        });
    }
}

fn plain(status: StatusCode, msg: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(msg.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

async fn forward_proxy_request(
    proxy: Arc<Proxy>,
    downstream: Arc<Downstream>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if req.method() != Method::CONNECT {
        if req.uri().host().is_none() {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "sluice forward proxy: send absolute-form requests (http://host/path) or CONNECT\n",
            ));
        }
        return http_proxy::handle(proxy, downstream, req).await;
    }
    // CONNECT host:port: tunnel, then treat the tunnel like a captured connection to host:port.
    let Some(authority) = req.uri().authority().cloned() else {
        return Ok(plain(StatusCode::BAD_REQUEST, "CONNECT needs host:port\n"));
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(443);
    let deadline = proxy.snapshots.load().mesh.connect_timeout;
    let addr = match proxy.resolver.resolve(&host, deadline).await {
        Ok(addrs) => addrs.socket(0, port),
        // Routing may still know the host (by SNI); passthrough will retry the lookup.
        Err(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
    };
    let target = Target {
        addr,
        host: Some(Arc::from(host.as_str())),
    };
    let remote = downstream.remote;
    let local = downstream.local;
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => dispatch(proxy, TokioIo::new(upgraded), remote, local, target).await,
            Err(e) => tracing::debug!("CONNECT upgrade from {remote} failed: {e}"),
        }
    });
    Ok(plain(StatusCode::OK, ""))
}
