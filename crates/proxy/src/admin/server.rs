//! The admin API's HTTP/1.1 servers: the admin port, the readiness port and the Prometheus port,
//! their shared accept loop, and bounded responses.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::api::Admin;
use super::logging::LogLevels;
use super::{AdminControls, AdminSource, QuitSignal, JSON, TEXT};
use crate::telemetry::metrics::{Metrics, PROMETHEUS_CONTENT_TYPE};

/// How long a stopping server waits for in-flight requests before dropping connections. Admin clients
/// keep connections alive; shutdown must not wait on an idle one.
const GRACE: Duration = Duration::from_secs(1);

/// Admin clients are local tools; a client that does not send its headers within this time is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one request of an operator port from its head (these ports take no request bodies).
pub type Handler = Arc<dyn Fn(&Parts) -> Response<Full<Bytes>> + Send + Sync>;

/// Serves Envoy's admin API on `listener` until `shutdown` completes.
///
/// `POST /quitquitquit` fires `quit`; the caller decides what shutting down means (drain, exit).
pub async fn serve_admin(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    metrics: Arc<Metrics>,
    quit: QuitSignal,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_admin_with(
        listener,
        source,
        metrics,
        quit,
        AdminControls::default(),
        shutdown,
    )
    .await
}

/// [`serve_admin`] with the operator controls: `/logging`, `/drain_listeners`,
/// `/healthcheck/fail|ok` and `/certs` act on `controls`.
pub async fn serve_admin_with(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    metrics: Arc<Metrics>,
    quit: QuitSignal,
    controls: AdminControls,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let levels = LogLevels::parse(
        &controls
            .log
            .as_ref()
            .map_or_else(|| "info".to_string(), |l| l.initial()),
    );
    let admin = Arc::new(Admin {
        source,
        metrics,
        quit,
        started: Instant::now(),
        controls,
        levels: std::sync::Mutex::new(levels),
    });
    let handler: Handler = Arc::new(move |parts: &Parts| admin.handle(parts));
    serve_http(listener, handler, shutdown).await
}

/// Serves the readiness port (Istio's 15021): `GET /healthz/ready` is 200 when
/// [`AdminSource::is_ready`], else 503 with the reason.
pub async fn serve_status(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_status_with(listener, source, AdminControls::default(), shutdown).await
}

/// [`serve_status`] that also answers 503 while draining (`POST /drain_listeners`) or after
/// `POST /healthcheck/fail`.
pub async fn serve_status_with(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    controls: AdminControls,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let handler: Handler = Arc::new(move |parts: &Parts| {
        if parts.uri.path() != "/healthz/ready" {
            return respond(StatusCode::NOT_FOUND, TEXT, "not found\n");
        }
        if controls.drain.is_triggered() {
            return respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "DRAINING\n");
        }
        if controls.health.is_failing() {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "health check failed (POST /healthcheck/fail)\n",
            );
        }
        if source.is_ready() {
            respond(StatusCode::OK, TEXT, "")
        } else {
            let mut reason = source.not_ready_reason();
            reason.push('\n');
            respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, reason)
        }
    });
    serve_http(listener, handler, shutdown).await
}

/// Serves the Prometheus port (Istio's 15090): `GET /stats/prometheus` in text format 0.0.4.
pub async fn serve_stats(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let handler: Handler = Arc::new(move |parts: &Parts| {
        // Istio's 15090 listener routes the prefix `/stats/prometheus`.
        if parts.uri.path().starts_with("/stats/prometheus") {
            respond(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, metrics.encode())
        } else {
            respond(StatusCode::NOT_FOUND, TEXT, "not found\n")
        }
    });
    serve_http(listener, handler, shutdown).await
}

/// The shared HTTP/1.1 accept loop (also the control plane's monitoring port). Stops accepting when `shutdown` completes, then gives in-flight
/// requests [`GRACE`] to finish.
pub async fn serve_http(
    listener: TcpListener,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let h = handler.clone();
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let (parts, _body) = req.into_parts();
                    let resp = h(&parts);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "admin connection error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
    Ok(())
}

pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // As Envoy's admin: never cache, never sniff.
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0"),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// Largest admin response body: a pathological config must not make the admin port allocate
/// without bound (and take the proxy with it).
pub const MAX_ADMIN_RESPONSE: usize = 64 * 1024 * 1024;

/// A writer that refuses to grow past [`MAX_ADMIN_RESPONSE`].
struct BoundedBuffer(Vec<u8>);

impl std::io::Write for BoundedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > MAX_ADMIN_RESPONSE {
            return Err(io::Error::other("response too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn respond_json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut out = BoundedBuffer(Vec::new());
    match serde_json::to_writer_pretty(&mut out, value) {
        Ok(()) => {
            out.0.push(b'\n');
            respond(StatusCode::OK, JSON, out.0)
        }
        Err(e) if e.is_io() => respond(
            StatusCode::INSUFFICIENT_STORAGE,
            TEXT,
            format!(
                "the response would exceed {} MiB; not rendered (see the proxy's log for the config summary)\n",
                MAX_ADMIN_RESPONSE / (1024 * 1024)
            ),
        ),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("cannot serialize JSON: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_json_responses_are_bounded() {
        let small = respond_json(&serde_json::json!({"a": 1}));
        assert_eq!(small.status(), StatusCode::OK);
        let huge = serde_json::Value::String("x".repeat(MAX_ADMIN_RESPONSE + 1));
        let resp = respond_json(&huge);
        assert_eq!(resp.status(), StatusCode::INSUFFICIENT_STORAGE);
    }
}
