//! The mutual-TLS xDS port (istiod's 15012): every connection presents a workload certificate
//! from the mesh root, and its SPIFFE ID reaches the ADS server with each request (tonic
//! `ConnectInfo`), where it fixes the proxy's namespace and opens the Secrets of that
//! namespace to it.
//!
//! Handshakes run in tasks of their own with a deadline, so a client that stalls in the middle
//! of one holds up nobody else.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use sluice_xds::server::MtlsConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// Longest a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted, authenticated connection.
pub struct MtlsConn {
    stream: TlsStream<TcpStream>,
    info: MtlsConnectInfo,
}

impl sluice_xds::tonic::transport::server::Connected for MtlsConn {
    type ConnectInfo = MtlsConnectInfo;
    fn connect_info(&self) -> MtlsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for MtlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for MtlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts on `listener` and yields the connections whose handshake with `config` succeeded
/// (the config requires a client certificate from the mesh root). Failed handshakes are logged
/// and dropped; the stream never yields an error, which would end tonic's server.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<MtlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel::<MtlsConn>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("xDS (mTLS) accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::warn!(peer = %remote, "xDS (mTLS) handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(peer = %remote, "xDS (mTLS) handshake timed out");
                            return;
                        }
                    };
                let identity = match stream.get_ref().1.peer_certificates() {
                    // No certificate: a proxy asking the certificate service for its first one.
                    None => None,
                    Some(certs) => match sluice_proxy::identity::peer_spiffe_id(certs) {
                        Some(id) => Some(id),
                        None => {
                            tracing::warn!(peer = %remote, "xDS (mTLS) client certificate has no SPIFFE ID; closed");
                            return;
                        }
                    },
                };
                let info = MtlsConnectInfo { remote, identity };
                let _ = tx.send(MtlsConn { stream, info }).await;
            });
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|conn| (Ok(conn), rx))
    })
}
