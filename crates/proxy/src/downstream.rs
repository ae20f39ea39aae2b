//! What every data-plane listener shares about its clients: whether it may carry traffic at all
//! (the config gate), the limits on what one client may send (so one client cannot hurt the
//! others), and graceful drain.
//!
//! Limits, as Envoy's defaults for Istio's listeners:
//! - request headers: at most [`MAX_REQUEST_HEADER_BYTES`] (Envoy's `max_request_headers_kb` 60)
//!   and [`MAX_REQUEST_HEADERS`] headers (`max_headers_count` 100), enforced while reading: more
//!   is answered `431` and the connection closed, so a connection never holds more than that;
//! - the time to receive request headers is bounded ([`REQUEST_HEADERS_TIMEOUT`]): a client that
//!   trickles its headers is disconnected. hyper runs this timer from the moment the connection
//!   waits for a request, so it also ends keep-alive connections idle that long.
//!
//! Drain (SIGTERM, `POST /drain_listeners`): HTTP/1.1 responses carry `connection: close` (the
//! client reconnects elsewhere after this response, with no race), HTTP/2 connections get a GOAWAY
//! and finish their streams; the process exits when every connection is done or the drain
//! duration is over. A listener that stops ([`Acceptor`]) first takes the connections the kernel
//! has already completed, which would otherwise be reset when it closes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::admin::DrainSignal;
use crate::store::ConfigGate;
use crate::upstream::ProxyBody;

/// Largest request head (request line and headers) a client may send, in bytes.
pub const MAX_REQUEST_HEADER_BYTES: usize = 60 * 1024;
/// Most request headers a client may send.
pub const MAX_REQUEST_HEADERS: usize = 100;
/// Longest a client may take to send a request's headers, by default.
pub const REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a terminating proxy lets in-flight requests finish, by default (Istio's
/// `terminationDrainDuration`).
pub const DRAIN_DURATION: Duration = Duration::from_secs(5);

/// The operator's settings for client connections (`--request-headers-timeout`,
/// `--termination-drain-duration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamSettings {
    pub request_headers_timeout: Duration,
    pub drain_duration: Duration,
}

impl Default for DownstreamSettings {
    fn default() -> Self {
        DownstreamSettings {
            request_headers_timeout: REQUEST_HEADERS_TIMEOUT,
            drain_duration: DRAIN_DURATION,
        }
    }
}
/// How often a draining connection whose protocol is not known yet looks again.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Process-wide state every data listener consults: the config gate, drain, and how many
/// downstream connections are open (so shutdown knows when draining is done).
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    pub gate: Arc<ConfigGate>,
    pub drain: DrainSignal,
    pub settings: DownstreamSettings,
    active: Arc<AtomicUsize>,
}

impl Lifecycle {
    /// Traffic allowed by `gate`, drained by `drain`.
    pub fn new(
        gate: Arc<ConfigGate>,
        drain: DrainSignal,
        settings: DownstreamSettings,
    ) -> Lifecycle {
        Lifecycle {
            gate,
            drain,
            settings,
            active: Arc::default(),
        }
    }

    /// Admits one accepted connection: `None` while the config gate is closed (the connection
    /// is to be dropped), else a guard that counts it as open until dropped.
    pub fn admit(&self) -> Option<ConnectionGuard> {
        if !self.gate.is_open() {
            return None;
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        Some(ConnectionGuard {
            active: self.active.clone(),
        })
    }

    /// Downstream connections open now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no downstream connection is open, or `limit` has passed. Returns the number
    /// still open.
    pub async fn drained(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let open = self.active_connections();
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Counts one downstream connection as open while it lives.
#[derive(Debug)]
pub struct ConnectionGuard {
    active: Arc<AtomicUsize>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The HTTP server settings of every data-plane listener (HTTP/1.1 and HTTP/2 by preface).
pub fn server_builder(settings: &DownstreamSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.request_headers_timeout)
        .max_headers(MAX_REQUEST_HEADERS)
        // hyper answers 431 when the head does not fit its read buffer: the buffer limit is the
        // header limit (bodies are streamed through it in pieces).
        .max_buf_size(MAX_REQUEST_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_REQUEST_HEADER_BYTES as u32);
    builder
}

/// The HTTP/1.1-only settings (the explicit proxy, whose CONNECT needs upgrades).
pub fn http1_builder(settings: &DownstreamSettings) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.request_headers_timeout)
        .max_headers(MAX_REQUEST_HEADERS)
        .max_header_size(MAX_REQUEST_HEADER_BYTES)
        .max_buf_size(MAX_REQUEST_HEADER_BYTES.max(8192));
    builder
}

/// A data-plane listener's accept loop, until `stop` resolves.
///
/// A client connected just before the stop sits complete in the kernel's accept queue: closing the
/// listener then would reset it (a failed request in a rolling restart, where the Service moves
/// to the new replica while the old one is told to stop). So after `stop`, the queue is emptied
/// first; those connections are served like the others (drained: `connection: close`, GOAWAY).
pub struct Acceptor<S> {
    listener: TcpListener,
    stop: Pin<Box<S>>,
    stopping: bool,
    /// Names the listener in log lines ("outbound", "gateway port 443").
    what: String,
}

impl<S: Future<Output = ()>> Acceptor<S> {
    pub fn new(listener: TcpListener, stop: S, what: impl Into<String>) -> Self {
        Acceptor {
            listener,
            stop: Box::pin(stop),
            stopping: false,
            what: what.into(),
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The next connection, or `None` once stopped and the accept queue is empty. Accept errors
    /// (such as running out of file descriptors) are logged and retried after a pause instead
    /// of spinning.
    pub async fn next(&mut self) -> Option<(TcpStream, SocketAddr)> {
        while !self.stopping {
            tokio::select! {
                () = self.stop.as_mut() => self.stopping = true,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => return Some(a),
                    Err(e) => {
                        tracing::warn!("accept on the {} listener failed: {e}", self.what);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        self.queued()
    }

    /// One connection already in the accept queue, without waiting: a plain non-blocking
    /// accept(2), because the reactor may not have seen the queue's readiness yet.
    fn queued(&self) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted =
                socket2::SockRef::from(&self.listener)
                    .accept()
                    .and_then(|(socket, addr)| {
                        let addr = addr.as_socket().ok_or_else(|| {
                            std::io::Error::other("accepted a connection without an IP address")
                        })?;
                        let stream = std::net::TcpStream::from(socket);
                        stream.set_nonblocking(true)?;
                        Ok((TcpStream::from_std(stream)?, addr))
                    });
            match accepted {
                Ok(a) => return Some(a),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        tracing::warn!("accept on the stopping {} listener failed: {e}", self.what);
                    }
                    return None;
                }
            }
        }
    }
}

/// Marks an HTTP/1.x response of a draining proxy `connection: close`.
pub fn close_if_draining(drain: &DrainSignal, version: Version, resp: &mut Response<ProxyBody>) {
    if version != Version::HTTP_2 && drain.is_triggered() {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Serves HTTP on `io` with `handler` until the client is done, following drain: HTTP/1.1
/// responses get `connection: close`, HTTP/2 connections a GOAWAY once draining starts.
pub async fn serve_http<I, H, F>(io: I, lifecycle: &Lifecycle, handler: H) -> Result<(), String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let drain = lifecycle.drain.clone();
    let saw_h2 = Arc::new(AtomicBool::new(false));
    let svc = {
        let saw_h2 = saw_h2.clone();
        let drain = drain.clone();
        service_fn(move |req: Request<Incoming>| {
            let version = req.version();
            if version == Version::HTTP_2 {
                saw_h2.store(true, Ordering::Relaxed);
            }
            // Boxed: the request's future is several KiB, and hyper moves the one it is given
            // (each move a memcpy that showed in the profile); a box moves as a pointer.
            let response = Box::pin(handler(req));
            let drain = drain.clone();
            async move {
                let mut resp = response.await?;
                close_if_draining(&drain, version, &mut resp);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let builder = server_builder(&lifecycle.settings);
    // With upgrades: a WebSocket handshake that the upstream accepts (101) becomes a tunnel
    // (`http_manager::upgrade`).
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done.map_err(|e| e.to_string()),
        () = drain.triggered() => {}
    }
    // An HTTP/1.1 connection closes after its next response; an idle one is left to the end of
    // the drain (closing it now could race with a request the client is sending). An HTTP/2
    // connection is told to go away as soon as it is known to be one.
    loop {
        if saw_h2.load(Ordering::Relaxed) {
            conn.as_mut().graceful_shutdown();
            break;
        }
        tokio::select! {
            done = conn.as_mut() => return done.map_err(|e| e.to_string()),
            () = tokio::time::sleep(DRAIN_POLL) => {}
        }
    }
    conn.await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use tokio::io::AsyncWriteExt as _;

    /// Clients whose connections completed before the listener stopped are served, not reset.
    #[tokio::test]
    async fn a_stopping_listener_takes_the_connections_already_queued() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The kernel completes these handshakes on its own: they wait in the accept queue.
        let clients: Vec<std::net::TcpStream> = (0..16)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut acceptor = Acceptor::new(listener, std::future::ready(()), "test");
        let mut accepted = Vec::new();
        while let Some((stream, _)) = acceptor.next().await {
            accepted.push(stream);
        }
        assert_eq!(
            accepted.len(),
            clients.len(),
            "every queued connection is taken"
        );
        for stream in &mut accepted {
            stream.write_all(b"served").await.unwrap();
        }
        for mut client in clients {
            let mut buf = [0u8; 6];
            client.read_exact(&mut buf).expect("served, not reset");
            assert_eq!(&buf, b"served");
        }
        // Stopped and empty: no waiting.
        assert!(acceptor.next().await.is_none());
    }
}
