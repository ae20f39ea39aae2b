//! HTTP/1.1 Upgrade as Istio configures Envoy: `upgrade_configs: [{upgrade_type: websocket}]` on
//! every HTTP connection manager.
//!
//! - A request is an upgrade when it is HTTP/1.1 with `Connection: upgrade` and an `Upgrade`
//!   header (Envoy's `Utility::isUpgrade`). `Upgrade: websocket` (any case) is routed like any
//!   request and forwarded with its `Upgrade`/`Connection` headers, always over HTTP/1.1 on a
//!   connection of its own, never retried nor mirrored. Any other upgrade type is refused with
//!   403 `upgrade_failed` and the connection closed, as Envoy does for an upgrade no
//!   `upgrade_config` names. `Upgrade: h2c` is dropped (Envoy's HTTP/1 codec removes it and the
//!   request goes on as a plain one), as is an `Upgrade` header without `Connection: upgrade`.
//! - When the upstream answers 101, both connections are taken from hyper and spliced; the
//!   route's timeout covers only the wait for the upgrade response. The access log line and the
//!   metrics (response code 101, bytes both ways) are written when the tunnel ends. Any other
//!   answer is relayed as a normal response.
//! - HTTP/2 (RFC 8441 extended CONNECT) is not supported.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::Finish;
use crate::io::CountingStream;
use crate::upstream::{ExchangeError, ProxyBody, UpstreamConnector};

/// What the proxy does with a request's `Upgrade` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpgradeRequest {
    /// Not an upgrade (or `h2c`): hop-by-hop headers are stripped as for any request.
    None,
    /// A WebSocket upgrade: forwarded with this `Upgrade` value.
    WebSocket(HeaderValue),
    /// An upgrade type Istio does not enable: 403 `upgrade_failed`.
    Refused,
}

/// Classifies the request head (Envoy's `isUpgrade`, then the `upgrade_configs` lookup).
pub(crate) fn classify(parts: &http::request::Parts) -> UpgradeRequest {
    if parts.version != Version::HTTP_11 {
        return UpgradeRequest::None;
    }
    let Some(upgrade) = parts.headers.get(header::UPGRADE) else {
        return UpgradeRequest::None;
    };
    let wants_upgrade = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !wants_upgrade {
        return UpgradeRequest::None;
    }
    let value = upgrade.as_bytes();
    if value.eq_ignore_ascii_case(b"websocket") {
        UpgradeRequest::WebSocket(upgrade.clone())
    } else if value.eq_ignore_ascii_case(b"h2c") {
        UpgradeRequest::None
    } else {
        UpgradeRequest::Refused
    }
}

/// Puts the upgrade headers back on a request head whose hop-by-hop headers were stripped.
pub(crate) fn restore_request_headers(headers: &mut HeaderMap, upgrade: &HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade.clone());
}

/// The upstream half of an accepted upgrade: its connection, once hyper hands it over, and what
/// must live as long as the tunnel (circuit-breaker permits, the endpoint's active count).
pub(crate) struct Tunnel {
    upstream: OnUpgrade,
    held: Box<dyn Send + Sync>,
}

impl Tunnel {
    /// The tunnel of a 101 `resp`; `held` is dropped when it ends.
    pub fn new<B>(resp: &mut Response<B>, held: Box<dyn Send + Sync>) -> Self {
        Tunnel {
            upstream: hyper::upgrade::on(resp),
            held,
        }
    }
}

/// Sends an upgrade request to `addr` on a new HTTP/1.1 connection of `connector` (a pooled one
/// would be lost to the tunnel). The connection is driven by its own task, with upgrades.
pub(crate) async fn send(
    connector: &UpstreamConnector,
    addr: SocketAddr,
    mut req: Request<ProxyBody>,
) -> Result<Response<Incoming>, ExchangeError> {
    let stream = connector
        .connect(addr)
        .await
        .map_err(ExchangeError::Connect)?;
    let info = stream.info();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(stream)
        .await
        .map_err(|e| {
            ExchangeError::Connect(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                e,
            ))
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upgrade connection to {addr} ended: {e}");
        }
    });
    *req.version_mut() = Version::HTTP_11;
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(ExchangeError::Request)?;
    resp.extensions_mut().insert(info);
    Ok(resp)
}

/// Whether `status` accepts the upgrade.
pub(crate) fn accepted(status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS
}

/// Splices the client's connection and the upstream's once hyper hands both over (after the 101
/// has been written), then records the exchange: `finish` gets the tunnel's bytes on top of the
/// request body's.
pub(crate) fn splice(downstream: OnUpgrade, tunnel: Tunnel, finish: Finish) {
    tokio::spawn(async move {
        let Tunnel { upstream, held } = tunnel;
        let (down, up) = tokio::join!(downstream, upstream);
        let (received, sent) = match (down, up) {
            (Ok(down), Ok(up)) => {
                let mut down = CountingStream::new(TokioIo::new(down));
                let mut up = TokioIo::new(up);
                if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    tracing::debug!("upgraded connection ended: {e}");
                }
                (down.read, down.written)
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!("upgrade could not complete: {e}");
                (0, 0)
            }
        };
        drop(held);
        finish.record(received, sent, false);
    });
}

/// The empty body of a 101 response (the tunnel carries the data).
pub(crate) fn empty_body() -> ProxyBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = Request::builder().version(version).uri("/ws");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_websocket_upgrades_pass_like_istios_upgrade_configs() {
        let ws = parts(
            Version::HTTP_11,
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "WebSocket"),
            ],
        );
        assert_eq!(
            classify(&ws),
            UpgradeRequest::WebSocket(HeaderValue::from_static("WebSocket"))
        );
        let other = parts(
            Version::HTTP_11,
            &[("connection", "upgrade"), ("upgrade", "foo/2")],
        );
        assert_eq!(classify(&other), UpgradeRequest::Refused);
        let h2c = parts(
            Version::HTTP_11,
            &[
                ("connection", "upgrade, http2-settings"),
                ("upgrade", "h2c"),
            ],
        );
        assert_eq!(classify(&h2c), UpgradeRequest::None);
        let no_connection = parts(Version::HTTP_11, &[("upgrade", "websocket")]);
        assert_eq!(classify(&no_connection), UpgradeRequest::None);
        let http10 = parts(
            Version::HTTP_10,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        );
        assert_eq!(classify(&http10), UpgradeRequest::None);
    }
}
