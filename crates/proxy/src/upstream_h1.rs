//! HTTP/1.1 to upstreams: keep-alive connections pooled per cluster (and TLS mode), driven by the
//! task of the request that uses them.
//!
//! hyper-util's pooled client spawns a task per connection and hands every request to it over a
//! channel: a task hop and a wake-up each way, a global pool behind a mutex, and a URI formatted
//! and parsed per try so the pool can key on it. The bench put that at about a sixth of the
//! request path. Here the connection belongs to the request while it is in use: the request's own
//! task polls hyper's connection future (the "driver") beside the response future and then beside
//! the response body, and the body hands the connection back to its pool once it has been read to
//! the end. An idle connection is polled again when it is checked out (a closed one is dropped
//! there, not used) and by a reaper that closes expired and dead idle connections.

use rustc_hash::FxHashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use sluice_model::policy::TcpKeepalive;

use crate::balancer::ClusterRuntime;
use crate::tls::TlsSetupError;
use crate::upstream::{
    ConnectionUseHandle, ExchangeError, ProxyBody, UpstreamConnInfo, UpstreamConnector,
    UpstreamStream,
};
use crate::upstream_security::UpstreamSecurity;

/// The settings a pool's connections are made and kept with: a cluster's `connectionPool`
/// (`connectTimeout`, `idleTimeout`, `tcpKeepalive`), or the passthrough defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    /// `None`: idle connections are kept until the upstream closes them (`idleTimeout: 0s`).
    pub idle_timeout: Option<Duration>,
    pub keepalive: Option<TcpKeepalive>,
}

/// The pools of one cluster (or of passthrough traffic), one per TLS mode and settings: a
/// DestinationRule SIMPLE without `sni` sends each request's host, so it has one per host.
pub struct Http1Pools {
    pools: ArcSwap<Vec<Arc<Http1Pool>>>,
    /// Serialises creation, so two first requests do not make two pools.
    creating: Mutex<()>,
}

/// More pools than this (auto SNI towards many hosts) drops the oldest.
const MAX_POOLS: usize = 64;

impl Default for Http1Pools {
    fn default() -> Self {
        Http1Pools {
            pools: ArcSwap::from_pointee(Vec::new()),
            creating: Mutex::new(()),
        }
    }
}

impl Http1Pools {
    /// The pool for `security` and `settings`, made on first use. `runtime` is the cluster whose
    /// connections it counts (`maxConnections`, `cx_active`).
    pub fn get(
        &self,
        security: &UpstreamSecurity,
        settings: &PoolSettings,
        runtime: Option<&Arc<ClusterRuntime>>,
    ) -> Result<Arc<Http1Pool>, TlsSetupError> {
        let find = |pools: &[Arc<Http1Pool>]| {
            pools
                .iter()
                .find(|p| p.security == *security && p.settings == *settings)
                .cloned()
        };
        if let Some(p) = find(&self.pools.load()) {
            return Ok(p);
        }
        let _creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.pools.load_full();
        if let Some(p) = find(&current) {
            return Ok(p);
        }
        let connector = UpstreamConnector::with_settings(
            security,
            settings.connect_timeout,
            settings.keepalive.clone(),
            runtime,
            false,
        )?;
        let pool = Arc::new(Http1Pool::new(security, settings, connector));
        let skip = (current.len() + 1).saturating_sub(MAX_POOLS);
        let mut next: Vec<_> = current.iter().skip(skip).cloned().collect();
        next.push(pool.clone());
        self.pools.store(Arc::new(next));
        Ok(pool)
    }
}

/// One open connection: hyper's request handle and the connection future that does its I/O.
/// Always boxed: it is ~900 bytes (hyper's connection state and buffers), and a response carries
/// it in its body through every layer of the request path, so a pointer moves instead of the
/// connection (the copies were the top user-space cost per request).
struct Conn {
    sender: http1::SendRequest<ProxyBody>,
    driver: http1::Connection<UpstreamStream, ProxyBody>,
    info: UpstreamConnInfo,
    usage: ConnectionUseHandle,
}

impl Conn {
    /// Polls the connection's I/O; true once it has ended (closed by either side, or failed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        match Pin::new(&mut self.driver).poll(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => {
                tracing::debug!("HTTP/1.1 connection to {} ended: {e}", self.info.remote);
                true
            }
            Poll::Pending => false,
        }
    }
}

struct IdleConn {
    conn: Box<Conn>,
    since: Instant,
}

/// Keep-alive HTTP/1.1 connections to the endpoints of one cluster, for one TLS mode.
pub struct Http1Pool {
    security: UpstreamSecurity,
    settings: PoolSettings,
    connector: UpstreamConnector,
    /// Idle connections by endpoint; the most recently used last (reused first).
    idle: Mutex<FxHashMap<SocketAddr, Vec<IdleConn>>>,
    /// Wakes a request waiting for a connection slot when a connection comes back instead.
    returned: tokio::sync::Notify,
    reaping: AtomicBool,
}

impl Http1Pool {
    fn new(
        security: &UpstreamSecurity,
        settings: &PoolSettings,
        connector: UpstreamConnector,
    ) -> Http1Pool {
        Http1Pool {
            security: security.clone(),
            settings: settings.clone(),
            connector,
            idle: Mutex::new(FxHashMap::default()),
            returned: tokio::sync::Notify::new(),
            reaping: AtomicBool::new(false),
        }
    }

    /// The inbound side's pool of plaintext connections to the local application (made from
    /// Istio's inbound source address), kept idle for `idle_timeout`.
    pub fn to_application(connect_timeout: Duration, idle_timeout: Duration) -> Http1Pool {
        let settings = PoolSettings {
            connect_timeout,
            idle_timeout: Some(idle_timeout),
            keepalive: None,
        };
        let connector = UpstreamConnector::to_application(connect_timeout);
        Http1Pool::new(&UpstreamSecurity::Plain, &settings, connector)
    }

    /// Sends `req` (whose URI is the origin-form path: it is written as given) to `addr` on an
    /// idle connection or a new one. The response carries [`UpstreamConnInfo`] and
    /// [`ConnectionUseHandle`] as extensions; its body drives the connection and returns it to
    /// the pool when read to the end, unless it has served `per_connection` requests
    /// (0 = unlimited) or is older than `max_duration`.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<ProxyBody>,
        per_connection: u32,
        max_duration: Option<Duration>,
    ) -> Result<Response<PoolBody>, ExchangeError> {
        loop {
            let (mut conn, reused) = match self.checkout(addr).await {
                Some(c) => (c, true),
                // Boxed: opening a connection (TCP, maybe TLS) is the largest state this
                // future would hold, and most requests reuse a connection; inline, every request
                // would move it (twice) on its way to an `await`.
                None => match Box::pin(self.connect(addr)).await? {
                    Some(c) => (c, false),
                    // A connection came back while this request waited for a slot.
                    None => continue,
                },
            };
            let mut ended = false;
            let sent = conn.sender.try_send_request(req);
            let mut sent = std::pin::pin!(sent);
            let result = poll_fn(|cx| {
                // The connection first: it writes the request and reads the response head that
                // the response future then finds.
                if !ended {
                    ended = conn.drive(cx);
                }
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(mut resp) => {
                    let reusable =
                        !ended && !conn.usage.0.count_request(per_connection, max_duration);
                    resp.extensions_mut().insert(conn.info);
                    resp.extensions_mut().insert(conn.usage.clone());
                    let pool = self.clone();
                    return Ok(resp.map(|body| PoolBody {
                        body,
                        conn: Some(conn),
                        pool,
                        ended,
                        finished: false,
                        reusable,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // A kept-alive connection the upstream closed as the request went out: the
                    // request was not sent, so it goes again on a new connection (as hyper's
                    // pooled client and Envoy do).
                    Some(unsent) if reused => {
                        tracing::debug!("idle connection to {addr} was closed: {}", e.error());
                        req = unsent;
                    }
                    _ => return Err(ExchangeError::Request(e.into_error())),
                },
            }
        }
    }

    /// An idle connection to `addr` that is still open and ready for a request.
    async fn checkout(&self, addr: SocketAddr) -> Option<Box<Conn>> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let list = idle.get_mut(&addr)?;
                let c = list.pop();
                if list.is_empty() {
                    idle.remove(&addr);
                }
                c?
            };
            if self.expired(&candidate) {
                continue;
            }
            let mut conn = candidate.conn;
            // One poll, with this task's waker: a connection that is closed, or not ready at
            // once (a request body still going out after an early response), is not used.
            let ready = poll_fn(|cx| {
                Poll::Ready(
                    !conn.drive(cx) && matches!(conn.sender.poll_ready(cx), Poll::Ready(Ok(()))),
                )
            })
            .await;
            if ready {
                return Some(conn);
            }
        }
    }

    fn expired(&self, idle: &IdleConn) -> bool {
        self.settings
            .idle_timeout
            .is_some_and(|t| idle.since.elapsed() >= t)
    }

    /// A new connection to `addr`, ready for its first request; `None` when, while this waited
    /// for one of the cluster's `maxConnections` slots, a connection was returned to the pool
    /// (the request is pending until one or the other).
    async fn connect(&self, addr: SocketAddr) -> Result<Option<Box<Conn>>, ExchangeError> {
        let guard = match self.connector.runtime() {
            Some(rt) => {
                if rt.connection_slots_full() {
                    // An idle connection to another endpoint gives its slot up rather than leave
                    // this request waiting for it to time out.
                    self.evict_one_idle();
                }
                let returned = self.returned.notified();
                tokio::select! {
                    guard = rt.acquire_connection(addr) => Some(guard),
                    () = returned => return Ok(None),
                }
            }
            None => None,
        };
        let stream = self
            .connector
            .open(addr, guard)
            .await
            .map_err(ExchangeError::Connect)?;
        let info = stream.info();
        let usage = stream.usage();
        let (sender, driver) = http1::handshake(stream).await.map_err(|e| {
            ExchangeError::Connect(io::Error::new(io::ErrorKind::ConnectionAborted, e))
        })?;
        let mut conn = Box::new(Conn {
            sender,
            driver,
            info,
            usage,
        });
        poll_fn(|cx| {
            if conn.drive(cx) {
                return Poll::Ready(Err(ExchangeError::Connect(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection closed before the first request",
                ))));
            }
            conn.sender.poll_ready(cx).map_err(ExchangeError::Request)
        })
        .await?;
        Ok(Some(conn))
    }

    fn evict_one_idle(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = idle
            .iter()
            .filter_map(|(addr, list)| list.first().map(|c| (*addr, c.since)))
            .min_by_key(|(_, since)| *since);
        if let Some((addr, _)) = oldest {
            if let Some(list) = idle.get_mut(&addr) {
                list.remove(0);
                if list.is_empty() {
                    idle.remove(&addr);
                }
            }
        }
    }

    /// Returns a connection whose exchange has completed.
    fn put_back(self: &Arc<Self>, conn: Box<Conn>) {
        let addr = conn.info.remote;
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr)
            .or_default()
            .push(IdleConn {
                conn,
                since: Instant::now(),
            });
        self.returned.notify_one();
        if !self.reaping.swap(true, Ordering::Relaxed) {
            self.spawn_reaper();
        }
    }

    /// Closes idle connections that expired or that the upstream closed, every few seconds
    /// while the pool exists.
    fn spawn_reaper(self: &Arc<Self>) {
        let period = self
            .settings
            .idle_timeout
            .map_or(REAP_PERIOD, |t| t.min(REAP_PERIOD))
            .max(Duration::from_millis(100));
        let pool = Arc::downgrade(self);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.reap();
            }
        });
    }

    fn reap(&self) {
        // A no-op waker: nothing waits on idle connections; this poll only reads a close (or
        // stray bytes, which end the connection) that arrived since.
        let mut cx = Context::from_waker(Waker::noop());
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain_mut(|c| !self.expired(c) && !c.conn.drive(&mut cx));
            !list.is_empty()
        });
    }

    /// Idle connections held (for tests and the admin page).
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// How often a pool looks for idle connections to close (sooner with a shorter `idleTimeout`).
const REAP_PERIOD: Duration = Duration::from_secs(5);

/// A response body from an [`Http1Pool`]: reading it drives the connection; dropping it after
/// the last byte returns the connection to the pool, dropping it earlier closes the connection.
pub struct PoolBody {
    body: Incoming,
    conn: Option<Box<Conn>>,
    pool: Arc<Http1Pool>,
    /// The connection future has completed: it is not polled again.
    ended: bool,
    /// The body has returned its last frame.
    finished: bool,
    /// Neither side asked to close, and `maxRequestsPerConnection` / `maxConnectionDuration`
    /// leave it open.
    reusable: bool,
}

impl Body for PoolBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if !this.ended {
            if let Some(conn) = this.conn.as_mut() {
                this.ended = conn.drive(cx);
            }
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.finished = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PoolBody {
    fn drop(&mut self) {
        let complete = self.finished || self.body.is_end_stream();
        if self.reusable && !self.ended && complete {
            if let Some(conn) = self.conn.take() {
                self.pool.put_back(conn);
            }
        }
    }
}
