//! HTTP/2 to upstreams: one multiplexed connection per endpoint (Envoy's default for HTTP/2
//! clusters), made with [`UpstreamConnector`] so connect timeout, TCP keepalive, TLS origination
//! and the cluster's connection accounting are the same as for HTTP/1.1.
//!
//! hyper-util's pooled client is not used for HTTP/2: it derives `:authority` from the request URI,
//! which for the pooled client has to be the endpoint's `ip:port`. Here the endpoint is fixed per
//! [`Http2Endpoint`], so request URIs carry the service host (`http://svc.example.com/path`) and
//! the upstream sees it as `:authority`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::upstream::{
    ConnectionUseHandle, ExchangeError, ProxyBody, UpstreamConnInfo, UpstreamConnector,
};

/// One upstream endpoint's HTTP/2 connection, opened on first use and reopened once closed.
pub struct Http2Endpoint {
    connector: UpstreamConnector,
    addr: SocketAddr,
    /// Held while connecting, so concurrent first requests share one new connection.
    conn: tokio::sync::Mutex<Option<Http2Conn>>,
}

#[derive(Clone)]
struct Http2Conn {
    send: SendRequest<ProxyBody>,
    info: UpstreamConnInfo,
    usage: ConnectionUseHandle,
}

impl Http2Endpoint {
    pub(crate) fn new(connector: UpstreamConnector, addr: SocketAddr) -> Http2Endpoint {
        Http2Endpoint {
            connector,
            addr,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// The open connection, or a new one.
    async fn connection(&self) -> Result<Http2Conn, ExchangeError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.send.is_closed()) {
            return Ok(c.clone());
        }
        *slot = None;
        let stream = self
            .connector
            .connect(self.addr)
            .await
            .map_err(ExchangeError::Connect)?;
        let info = stream.info();
        let usage = stream.usage();
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(stream)
            .await
            .map_err(|e| {
                ExchangeError::Connect(io::Error::new(io::ErrorKind::ConnectionAborted, e))
            })?;
        let addr = self.addr;
        // The connection (and with it the cluster's connection slot) lives until the upstream
        // closes it, or every handle is gone and its last stream has finished.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("HTTP/2 connection to {addr} ended: {e}");
            }
        });
        let c = Http2Conn { send, info, usage };
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Stops handing out `conn` to new requests; its streams in flight finish on it.
    async fn retire(&self, conn: &Http2Conn) {
        let mut slot = self.conn.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.usage.0, &conn.usage.0))
        {
            *slot = None;
        }
    }

    /// Sends `req` (whose URI names the service host, not the endpoint) on the endpoint's
    /// connection. The response carries [`UpstreamConnInfo`] and [`ConnectionUseHandle`] as
    /// extensions, as the HTTP/1.1 client's do. A connection that has served `per_connection`
    /// requests (0 = unlimited) or is older than `max_duration` is retired.
    pub async fn send(
        &self,
        req: Request<ProxyBody>,
        per_connection: u32,
        max_duration: Option<Duration>,
    ) -> Result<Response<Incoming>, ExchangeError> {
        let mut conn = self.connection().await?;
        if conn.send.ready().await.is_err() {
            // Closed between the check and now (GOAWAY, upstream gone): one fresh connection.
            self.retire(&conn).await;
            conn = self.connection().await?;
            conn.send.ready().await.map_err(ExchangeError::Request)?;
        }
        if conn.usage.0.count_request(per_connection, max_duration) {
            self.retire(&conn).await;
        }
        let mut resp = conn
            .send
            .send_request(req)
            .await
            .map_err(ExchangeError::Request)?;
        resp.extensions_mut().insert(conn.info);
        resp.extensions_mut().insert(conn.usage.clone());
        Ok(resp)
    }
}
