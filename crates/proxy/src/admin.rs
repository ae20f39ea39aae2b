//! The operator-facing HTTP servers: Envoy's admin API (15000), the readiness port (15021) and the
//! Prometheus port (15090).
//!
//! The admin API mirrors the Envoy endpoints that `istioctl proxy-config`, operators' scripts and
//! Prometheus use (`/config_dump`, `/clusters`, `/listeners`, `/stats`, `/stats/prometheus`, `/ready`,
//! `/server_info`, `POST /quitquitquit`). As in Envoy, endpoints that change the server must be POSTed;
//! a GET on them answers 400. What the proxy knows (config, clusters, readiness) comes from an
//! [`AdminSource`] the data plane implements, so this module depends on no data-path type.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::telemetry::metrics::{Metrics, PROMETHEUS_CONTENT_TYPE};

const TEXT: &str = "text/plain; charset=UTF-8";
const JSON: &str = "application/json";

/// How long a stopping server waits for in-flight requests before dropping connections. Admin clients
/// keep connections alive; shutdown must not wait on an idle one.
const GRACE: Duration = Duration::from_secs(1);

/// Admin clients are local tools; a client that does not send its headers within this time is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin servers report about the proxy. Implemented by the data plane.
pub trait AdminSource: Send + Sync + 'static {
    /// `GET /config_dump`: Envoy's `ConfigDump` shape (`{"configs":[…]}`) or sluice's equivalent.
    fn config_dump(&self) -> serde_json::Value;
    /// `GET /clusters`: Envoy's `<cluster>::<host>::<stat>::<value>` lines.
    fn clusters_text(&self) -> String;
    /// `GET /clusters?format=json`: `{"cluster_statuses":[…]}`.
    fn clusters_json(&self) -> serde_json::Value;
    /// `GET /listeners`: `<name>::<address>` lines.
    fn listeners_text(&self) -> String;
    /// True once configuration has been loaded and listeners are serving.
    fn is_ready(&self) -> bool;
    /// Why the proxy is not ready, shown by `/healthz/ready` with its 503.
    fn not_ready_reason(&self) -> String {
        "configuration not loaded yet".to_string()
    }
}

// === QuitSignal ===

/// Fired by `POST /quitquitquit`. Clone it, give one clone to [`serve_admin`], and await
/// [`triggered`](Self::triggered) to start the proxy's shutdown. Firing is sticky: a waiter that starts
/// after the request still sees it.
#[derive(Clone, Debug, Default)]
pub struct QuitSignal {
    inner: Arc<QuitInner>,
}

#[derive(Debug, Default)]
struct QuitInner {
    fired: AtomicBool,
    notify: Notify,
}

impl QuitSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal (what `POST /quitquitquit` does).
    pub fn trigger(&self) {
        self.inner.fired.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// True once fired.
    pub fn is_triggered(&self) -> bool {
        self.inner.fired.load(Ordering::SeqCst)
    }

    /// Completes when the signal fires (at once if it already has).
    pub async fn triggered(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            // Register before checking the flag, so a trigger between the check and the await is not lost.
            notified.as_mut().enable();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

// === Servers ===

type Handler = Arc<dyn Fn(&Parts) -> Response<Full<Bytes>> + Send + Sync>;

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
    let admin = Arc::new(Admin {
        source,
        metrics,
        quit,
        started: Instant::now(),
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
    let handler: Handler = Arc::new(move |parts: &Parts| {
        if parts.uri.path() != "/healthz/ready" {
            return respond(StatusCode::NOT_FOUND, TEXT, "not found\n");
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

/// The shared HTTP/1.1 accept loop. Stops accepting when `shutdown` completes, then gives in-flight
/// requests [`GRACE`] to finish.
async fn serve_http(
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

fn respond(
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

fn respond_json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(mut s) => {
            s.push('\n');
            respond(StatusCode::OK, JSON, s)
        }
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("cannot serialize JSON: {e}\n"),
        ),
    }
}

// === Admin API ===

struct Admin {
    source: Arc<dyn AdminSource>,
    metrics: Arc<Metrics>,
    quit: QuitSignal,
    started: Instant,
}

/// (path, mutates server state, help text), in Envoy's help order.
const ENDPOINTS: &[(&str, bool, &str)] = &[
    ("/", false, "Admin home page"),
    ("/clusters", false, "upstream cluster status (?format=json)"),
    ("/config_dump", false, "dump current configuration"),
    ("/help", false, "print out list of admin commands"),
    ("/listeners", false, "print listener info (?format=json)"),
    ("/quitquitquit", true, "exit the server"),
    (
        "/ready",
        false,
        "print server state, return 200 if LIVE, otherwise return 503",
    ),
    (
        "/server_info",
        false,
        "print server version/status information",
    ),
    (
        "/stats",
        false,
        "print server stats (?format=json|prometheus, ?filter=<regex>, ?usedonly)",
    ),
    (
        "/stats/prometheus",
        false,
        "print server stats in prometheus format",
    ),
];

impl Admin {
    fn handle(&self, parts: &Parts) -> Response<Full<Bytes>> {
        let path = parts.uri.path();
        let query = parse_query(parts.uri.query());
        let Some(&(_, mutates, _)) = ENDPOINTS.iter().find(|(p, _, _)| *p == path) else {
            let mut body = String::from("invalid path. admin commands are:\n");
            body.push_str(&help_text());
            return respond(StatusCode::NOT_FOUND, TEXT, body);
        };
        if mutates && parts.method != Method::POST {
            return respond(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("Method {} not allowed, POST required.\n", parts.method),
            );
        }
        match path {
            "/" | "/help" => respond(StatusCode::OK, TEXT, help_text()),
            "/ready" => {
                let state = self.state();
                let status = if state == "LIVE" {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                respond(status, TEXT, format!("{state}\n"))
            }
            "/server_info" => {
                let uptime = format!("{}s", self.started.elapsed().as_secs());
                respond_json(&serde_json::json!({
                    "version": format!("sluice/{}", self.metrics.build_tag()),
                    "state": self.state(),
                    "hot_restart_version": "disabled",
                    "command_line_options": {},
                    "uptime_current_epoch": uptime,
                    "uptime_all_epochs": uptime,
                }))
            }
            "/config_dump" => respond_json(&self.source.config_dump()),
            "/clusters" => {
                if query.get("format").map(String::as_str) == Some("json") {
                    respond_json(&self.source.clusters_json())
                } else {
                    respond(StatusCode::OK, TEXT, self.source.clusters_text())
                }
            }
            "/listeners" => {
                let text = self.source.listeners_text();
                if query.get("format").map(String::as_str) == Some("json") {
                    respond_json(&listeners_json(&text))
                } else {
                    respond(StatusCode::OK, TEXT, text)
                }
            }
            "/stats/prometheus" => self.prometheus(),
            "/stats" => self.stats(&query),
            "/quitquitquit" => {
                self.quit.trigger();
                respond(StatusCode::OK, TEXT, "OK\n")
            }
            _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n"),
        }
    }

    /// Envoy's server state names.
    fn state(&self) -> &'static str {
        if self.quit.is_triggered() {
            "DRAINING"
        } else if self.source.is_ready() {
            "LIVE"
        } else {
            "INITIALIZING"
        }
    }

    fn prometheus(&self) -> Response<Full<Bytes>> {
        respond(
            StatusCode::OK,
            PROMETHEUS_CONTENT_TYPE,
            self.metrics.encode(),
        )
    }

    fn stats(&self, query: &HashMap<String, String>) -> Response<Full<Bytes>> {
        let format = query.get("format").map(String::as_str).unwrap_or("text");
        if format == "prometheus" {
            return self.prometheus();
        }
        let filter = match query.get("filter").filter(|f| !f.is_empty()) {
            None => None,
            Some(f) => match regex::Regex::new(f) {
                Ok(re) => Some(re),
                Err(e) => {
                    return respond(
                        StatusCode::BAD_REQUEST,
                        TEXT,
                        format!("Invalid re2 regex {f:?}: {e}\n"),
                    )
                }
            },
        };
        let used_only = query.contains_key("usedonly");
        let encoded = self.metrics.encode();
        let stats = stat_samples(&encoded).filter(|(name, value)| {
            filter.as_ref().is_none_or(|re| re.is_match(name))
                && !(used_only && value.parse::<f64>().is_ok_and(|v| v == 0.0))
        });
        match format {
            "json" => {
                let list: Vec<serde_json::Value> = stats
                    .map(|(name, value)| {
                        let value = value
                            .parse::<u64>()
                            .map(serde_json::Value::from)
                            .or_else(|_| value.parse::<f64>().map(serde_json::Value::from))
                            .unwrap_or_else(|_| serde_json::Value::from(value));
                        serde_json::json!({ "name": name, "value": value })
                    })
                    .collect();
                respond_json(&serde_json::json!({ "stats": list }))
            }
            "text" => {
                let mut body = String::with_capacity(encoded.len());
                for (name, value) in stats {
                    body.push_str(name);
                    body.push_str(": ");
                    body.push_str(value);
                    body.push('\n');
                }
                respond(StatusCode::OK, TEXT, body)
            }
            other => respond(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("usage: /stats?format=(text|json|prometheus); unknown format {other:?}\n"),
            ),
        }
    }
}

fn help_text() -> String {
    let mut s = String::from("admin commands are:\n");
    for (path, _, help) in ENDPOINTS {
        s.push_str("  ");
        s.push_str(path);
        s.push_str(": ");
        s.push_str(help);
        s.push('\n');
    }
    s
}

/// `(series, value)` pairs of a Prometheus exposition, skipping comments and histogram buckets (which
/// `/stats` in Envoy summarizes rather than lists).
fn stat_samples(encoded: &str) -> impl Iterator<Item = (&str, &str)> {
    encoded.lines().filter_map(|line| {
        if line.starts_with('#') || line.is_empty() {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let name_end = series.find('{').unwrap_or(series.len());
        if series[..name_end].ends_with("_bucket") {
            return None;
        }
        Some((series, value))
    })
}

/// Builds Envoy's `{"listener_statuses":[…]}` from `<name>::<address>` lines.
fn listeners_json(text: &str) -> serde_json::Value {
    let statuses: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| line.split_once("::"))
        .map(|(name, addr)| {
            let local_address = match addr.parse::<std::net::SocketAddr>() {
                Ok(sa) => serde_json::json!({
                    "socket_address": { "address": sa.ip().to_string(), "port_value": sa.port() }
                }),
                Err(_) => serde_json::json!({ "socket_address": { "address": addr } }),
            };
            serde_json::json!({ "name": name, "local_address": local_address })
        })
        .collect();
    serde_json::json!({ "listener_statuses": statuses })
}

/// Parses `a=1&b&c=x%20y` into a map (last value wins; keys without `=` map to "").
fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(percent_decode(k), percent_decode(v));
    }
    map
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query(Some(
            "format=json&usedonly&filter=istio_%5Brt%5D+x&bad=%zz&end=%4",
        ));
        assert_eq!(q["format"], "json");
        assert_eq!(q["usedonly"], "");
        assert_eq!(q["filter"], "istio_[rt] x");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }
}
