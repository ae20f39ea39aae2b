//! The operator-facing HTTP servers: Envoy's admin API (15000), the readiness port (15021) and the
//! Prometheus port (15090).
//!
//! The admin API mirrors the Envoy endpoints that `istioctl proxy-config`, operators' scripts and
//! Prometheus use (`/config_dump`, `/clusters`, `/listeners`, `/stats`, `/stats/prometheus`, `/ready`,
//! `/server_info`, `/certs`, `/logging`, `POST /quitquitquit`, `POST /drain_listeners`,
//! `POST /healthcheck/fail|ok`). As in Envoy, endpoints that change the server must be POSTed; a
//! GET on them answers 400. What operators can change at run time (log levels, draining, the
//! health override) lives in [`AdminControls`], shared with the health port. What the proxy knows (config, clusters, readiness) comes from an
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

use crate::identity::{describe_der, Identity};
use crate::telemetry::accesslog::format_start_time;
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

// === Operator controls ===

/// Changes sluice's own log filter (the process's `tracing` subscriber). The binary installs one
/// (a `tracing_subscriber` reload handle); `POST /logging` drives it.
pub trait LogControl: Send + Sync + 'static {
    /// The filter the process started with, in `EnvFilter` syntax (`info`,
    /// `info,sluice_proxy=debug`).
    fn initial(&self) -> String;
    /// Replaces the filter. Errors say why the directives were refused.
    fn apply(&self, directives: &str) -> Result<(), String>;
}

/// Why a proxy whose configuration has not been accepted is not ready, for `/healthz/ready`.
pub fn config_not_ready_reason(status: &crate::store::StoreStatus) -> String {
    if status.not_ready.is_empty() {
        return "configuration not loaded yet".to_string();
    }
    status.not_ready.join("\n")
}

/// Fired by `POST /drain_listeners`: the data-plane listeners stop accepting (open connections
/// are served to their end), `/ready` and `/healthz/ready` answer 503. Sticky, like [`QuitSignal`].
#[derive(Clone, Debug, Default)]
pub struct DrainSignal(QuitSignal);

impl DrainSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }
    /// Starts draining.
    pub fn trigger(&self) {
        self.0.trigger();
    }
    /// True once draining.
    pub fn is_triggered(&self) -> bool {
        self.0.is_triggered()
    }
    /// Completes when draining starts (at once if it has).
    pub async fn triggered(&self) {
        self.0.triggered().await;
    }
}

/// Set by `POST /healthcheck/fail`, cleared by `POST /healthcheck/ok`: `/healthz/ready` answers
/// 503 while set, without touching traffic (Envoy's health-check filter override).
#[derive(Clone, Debug, Default)]
pub struct HealthOverride(Arc<AtomicBool>);

impl HealthOverride {
    /// Marks the proxy as failing (`true`) or healthy again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.0.store(failing, Ordering::SeqCst);
    }
    /// True after `POST /healthcheck/fail`.
    pub fn is_failing(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What operators can change or inspect at run time beyond [`AdminSource`]. The default has no
/// log control (so `POST /logging` answers 501) and no identity (`/certs` lists none).
#[derive(Clone, Default)]
pub struct AdminControls {
    pub drain: DrainSignal,
    pub health: HealthOverride,
    pub log: Option<Arc<dyn LogControl>>,
    /// The mesh identity shown by `/certs`.
    pub identity: Option<Arc<Identity>>,
}

impl std::fmt::Debug for AdminControls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminControls")
            .field("drain", &self.drain)
            .field("health", &self.health)
            .field("log", &self.log.is_some())
            .field("identity", &self.identity.as_ref().map(|i| i.spiffe_id()))
            .finish()
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

fn respond_json(value: &serde_json::Value) -> Response<Full<Bytes>> {
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

// === Admin API ===

struct Admin {
    source: Arc<dyn AdminSource>,
    metrics: Arc<Metrics>,
    quit: QuitSignal,
    started: Instant,
    controls: AdminControls,
    /// What `/logging` reports and last applied.
    levels: std::sync::Mutex<LogLevels>,
}

/// (path, mutates server state, help text), in Envoy's help order.
const ENDPOINTS: &[(&str, bool, &str)] = &[
    ("/", false, "Admin home page"),
    ("/certs", false, "print certs on machine (the mesh identity, JSON)"),
    ("/clusters", false, "upstream cluster status (?format=json)"),
    ("/config_dump", false, "dump current configuration"),
    (
        "/drain_listeners",
        true,
        "stop accepting on the data-plane listeners; open connections are served to their end, /ready and /healthz/ready answer 503",
    ),
    (
        "/healthcheck/fail",
        true,
        "cause /healthz/ready to answer 503 (traffic is not affected)",
    ),
    ("/healthcheck/ok", true, "cause /healthz/ready to answer normally again"),
    ("/help", false, "print out list of admin commands"),
    ("/listeners", false, "print listener info (?format=json)"),
    (
        "/logging",
        false,
        "list log levels (GET); POST ?level=<level> sets all, ?<logger>=<level> or ?paths=<logger>:<level>,... sets some",
    ),
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
                    // Envoy's `--concurrency`: the data-plane worker threads actually running.
                    "command_line_options": {
                        "concurrency": tokio::runtime::Handle::try_current()
                            .map_or(0, |h| h.metrics().num_workers()),
                    },
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
            "/drain_listeners" => {
                if !self.controls.drain.is_triggered() {
                    tracing::info!("draining listeners (POST /drain_listeners)");
                }
                self.controls.drain.trigger();
                respond(StatusCode::OK, TEXT, "OK\n")
            }
            "/healthcheck/fail" => {
                self.controls.health.set_failing(true);
                respond(StatusCode::OK, TEXT, "OK\n")
            }
            "/healthcheck/ok" => {
                self.controls.health.set_failing(false);
                respond(StatusCode::OK, TEXT, "OK\n")
            }
            "/logging" => self.logging(parts, &query),
            "/certs" => respond_json(&certs_json(self.controls.identity.as_deref())),
            _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n"),
        }
    }

    /// Envoy's server state names.
    fn state(&self) -> &'static str {
        if self.quit.is_triggered() || self.controls.drain.is_triggered() {
            "DRAINING"
        } else if self.source.is_ready() {
            "LIVE"
        } else {
            "INITIALIZING"
        }
    }

    /// Envoy's `/logging`: lists loggers; a POST with `level=`, `<logger>=` or `paths=` changes
    /// them and answers with the new list.
    fn logging(&self, parts: &Parts, query: &HashMap<String, String>) -> Response<Full<Bytes>> {
        let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        if query.is_empty() {
            return respond(StatusCode::OK, TEXT, levels.render());
        }
        if parts.method != Method::POST {
            return respond(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("Method {} not allowed, POST required.\n", parts.method),
            );
        }
        let Some(control) = &self.controls.log else {
            return respond(
                StatusCode::NOT_IMPLEMENTED,
                TEXT,
                "this process's log filter cannot be changed\n",
            );
        };
        let mut next = levels.clone();
        if let Err(e) = next.update(query) {
            return respond(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("error: {e}\n{}", LogLevels::USAGE),
            );
        }
        let directives = next.directives();
        if let Err(e) = control.apply(&directives) {
            return respond(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("error: log filter {directives:?} refused: {e}\n"),
            );
        }
        tracing::info!("log levels changed: {directives}");
        *levels = next;
        respond(StatusCode::OK, TEXT, levels.render())
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

// === Config dump helpers ===

/// A cluster as `/config_dump` shows it: its model fields plus what `sluice proxy-config cluster`
/// prints (`service` FQDN, `direction`, Envoy cluster `type`).
pub fn cluster_config(c: &sluice_model::Cluster) -> serde_json::Value {
    use sluice_model::registry::Resolution;
    let mut v = serde_json::to_value(c).unwrap_or_else(|_| serde_json::json!({}));
    let ty = match c.service.resolution {
        Resolution::Static => "EDS",
        Resolution::Dns => "STRICT_DNS",
        Resolution::DnsRoundRobin => "LOGICAL_DNS",
        Resolution::None => "ORIGINAL_DST",
        Resolution::DynamicDns => "DYNAMIC_DNS",
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("service".into(), c.service.hostname.as_ref().into());
        obj.insert("direction".into(), "outbound".into());
        obj.insert("type".into(), ty.into());
    }
    v
}

/// The request matches of a route rule in `istioctl proxy-config route` notation: `/prefix*`,
/// an exact path, `PathPrefix:/x`, `regex <re>`; `/*` for a rule that matches everything.
pub fn route_matches(rule: &sluice_model::HttpRouteRule) -> Vec<String> {
    use sluice_model::route::StrMatcher;
    if rule.matches.is_empty() {
        return vec!["/*".to_string()];
    }
    rule.matches
        .iter()
        .map(|m| match &m.uri {
            None => "/*".to_string(),
            Some(StrMatcher::Prefix(p)) => format!("{p}*"),
            Some(StrMatcher::Exact(p)) => p.clone(),
            Some(StrMatcher::PathSeparatedPrefix(p)) => format!("PathPrefix:{p}"),
            Some(StrMatcher::Regex(re)) => format!("regex {}", re.as_str()),
        })
        .collect()
}

// === /logging ===

/// Envoy's level names, and the `tracing` level each sets.
const LEVELS: &[(&str, &str)] = &[
    ("trace", "trace"),
    ("debug", "debug"),
    ("info", "info"),
    ("warning", "warn"),
    ("warn", "warn"),
    ("error", "error"),
    ("critical", "error"),
    ("off", "off"),
];

/// Loggers `/logging` always lists: sluice's crates and the libraries whose logs matter most.
const KNOWN_LOGGERS: &[&str] = &[
    "sluice",
    "sluice_api",
    "sluice_model",
    "sluice_proxy",
    "h2",
    "hickory_resolver",
    "hyper",
    "rustls",
];

/// The log filter as levels: a default and per-logger (tracing target prefix) overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogLevels {
    default: String,
    overrides: std::collections::BTreeMap<String, String>,
    /// Directives `/logging` does not model (span or field filters): kept as they are.
    other: Vec<String>,
}

impl LogLevels {
    const USAGE: &'static str = "usage: POST /logging?level=<level> (all loggers), /logging?<logger>=<level>, /logging?paths=<logger>:<level>,<logger>:<level>\n  levels: trace, debug, info, warning, error, critical, off\n";

    /// Reads an `EnvFilter` directive string such as `info,sluice_proxy=debug`.
    fn parse(directives: &str) -> LogLevels {
        let mut levels = LogLevels {
            default: "info".to_string(),
            overrides: Default::default(),
            other: Vec::new(),
        };
        for d in directives
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            match d.split_once('=') {
                None if tracing_level(d).is_some() => {
                    levels.default = tracing_level(d).unwrap_or("info").to_string()
                }
                Some((target, level))
                    if is_logger_name(target) && tracing_level(level).is_some() =>
                {
                    levels.overrides.insert(
                        target.to_string(),
                        tracing_level(level).unwrap_or("info").to_string(),
                    );
                }
                _ => levels.other.push(d.to_string()),
            }
        }
        levels
    }

    /// Applies `level=`, `paths=` and `<logger>=` parameters.
    fn update(&mut self, query: &HashMap<String, String>) -> Result<(), String> {
        for (key, value) in query {
            match key.as_str() {
                "level" => {
                    let level =
                        tracing_level(value).ok_or_else(|| format!("unknown level {value:?}"))?;
                    // Envoy: every logger at this level.
                    self.default = level.to_string();
                    self.overrides.clear();
                }
                "paths" => {
                    for pair in value.split(',').filter(|p| !p.is_empty()) {
                        let (logger, level) = pair
                            .split_once(':')
                            .ok_or_else(|| format!("{pair:?} is not <logger>:<level>"))?;
                        self.set_one(logger, level)?;
                    }
                }
                logger => self.set_one(logger, value)?,
            }
        }
        Ok(())
    }

    fn set_one(&mut self, logger: &str, level: &str) -> Result<(), String> {
        if !is_logger_name(logger) {
            return Err(format!("invalid logger name {logger:?}"));
        }
        let level = tracing_level(level).ok_or_else(|| format!("unknown level {level:?}"))?;
        self.overrides.insert(logger.to_string(), level.to_string());
        Ok(())
    }

    /// The `EnvFilter` directives for these levels.
    fn directives(&self) -> String {
        let mut d = vec![self.default.clone()];
        d.extend(self.overrides.iter().map(|(t, l)| format!("{t}={l}")));
        d.extend(self.other.iter().cloned());
        d.join(",")
    }

    /// Envoy's listing: `active loggers:` then `  <name>: <level>` (Envoy's level names).
    fn render(&self) -> String {
        let mut names: std::collections::BTreeSet<&str> = KNOWN_LOGGERS.iter().copied().collect();
        names.extend(self.overrides.keys().map(String::as_str));
        let mut out = String::from("active loggers:\n");
        out.push_str(&format!("  default: {}\n", envoy_level(&self.default)));
        for name in names {
            let level = self.overrides.get(name).unwrap_or(&self.default);
            out.push_str(&format!("  {name}: {}\n", envoy_level(level)));
        }
        out
    }
}

/// The `tracing` level for an Envoy or tracing level name.
fn tracing_level(name: &str) -> Option<&'static str> {
    let name = name.trim().to_ascii_lowercase();
    LEVELS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

fn envoy_level(tracing: &str) -> &str {
    if tracing == "warn" {
        "warning"
    } else {
        tracing
    }
}

/// A tracing target: a Rust path such as `sluice_proxy` or `sluice_proxy::http_proxy`.
fn is_logger_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
}

// === /certs ===

/// Envoy's `/certs` shape for the mesh identity: `{"certificates":[{"ca_cert":[],
/// "cert_chain":[{serial_number, subject_alt_names[{uri}|{dns}], valid_from, expiration_time,
/// days_until_expiration}]}]}`; `{"certificates":[]}` without an identity.
pub fn certs_json(identity: Option<&Identity>) -> serde_json::Value {
    let Some(identity) = identity else {
        return serde_json::json!({ "certificates": [] });
    };
    let certified = identity.certificate();
    let now = std::time::SystemTime::now();
    let chain: Vec<serde_json::Value> = certified
        .cert
        .iter()
        .filter_map(|der| describe_der(der).ok())
        .map(|c| {
            let mut sans: Vec<serde_json::Value> = c
                .uri_sans
                .iter()
                .map(|u| serde_json::json!({ "uri": u }))
                .collect();
            sans.extend(c.dns_sans.iter().map(|d| serde_json::json!({ "dns": d })));
            let days = c
                .not_after
                .duration_since(now)
                .map_or(0, |d| d.as_secs() / 86_400);
            serde_json::json!({
                "path": "<inline>",
                "serial_number": c.serial.replace(':', "").to_ascii_lowercase(),
                "subject_alt_names": sans,
                // uint64 fields are strings in proto3 JSON, as Envoy prints them.
                "days_until_expiration": days.to_string(),
                "valid_from": rfc3339(c.not_before),
                "expiration_time": rfc3339(c.not_after),
            })
        })
        .collect();
    serde_json::json!({
        "certificates": [{ "ca_cert": [], "cert_chain": chain }]
    })
}

/// `2023-05-15T01:30:52Z`.
fn rfc3339(t: std::time::SystemTime) -> String {
    let s = format_start_time(t);
    // `…:52.409Z` → `…:52Z`
    match s.rsplit_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => s,
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

/// Envoy's `/listeners` text: `<name>::<address>` lines.
pub fn listeners_text(listeners: &[(String, std::net::SocketAddr)]) -> String {
    listeners
        .iter()
        .map(|(name, addr)| format!("{name}::{addr}\n"))
        .collect()
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

    #[test]
    fn admin_json_responses_are_bounded() {
        let small = respond_json(&serde_json::json!({"a": 1}));
        assert_eq!(small.status(), StatusCode::OK);
        let huge = serde_json::Value::String("x".repeat(MAX_ADMIN_RESPONSE + 1));
        let resp = respond_json(&huge);
        assert_eq!(resp.status(), StatusCode::INSUFFICIENT_STORAGE);
    }
    use super::*;

    #[test]
    fn log_levels_parse_update_and_render() {
        let mut l = LogLevels::parse("info,sluice_proxy=debug,hyper[conn]=trace");
        assert_eq!(l.default, "info");
        assert_eq!(l.overrides["sluice_proxy"], "debug");
        assert_eq!(l.other, vec!["hyper[conn]=trace".to_string()]);
        let mut q = HashMap::new();
        q.insert("sluice_model".to_string(), "warning".to_string());
        l.update(&q).unwrap();
        assert_eq!(
            l.directives(),
            "info,sluice_model=warn,sluice_proxy=debug,hyper[conn]=trace"
        );
        let out = l.render();
        assert!(
            out.starts_with("active loggers:\n  default: info\n"),
            "{out}"
        );
        assert!(out.contains("  sluice_model: warning\n"), "{out}");
        assert!(out.contains("  hyper: info\n"), "{out}");

        let mut q = HashMap::new();
        q.insert("level".to_string(), "critical".to_string());
        l.update(&q).unwrap();
        assert_eq!(l.directives(), "error,hyper[conn]=trace");

        let mut q = HashMap::new();
        q.insert("paths".to_string(), "a:debug,b:trace".to_string());
        l.update(&q).unwrap();
        assert_eq!(l.overrides["a"], "debug");
        assert_eq!(l.overrides["b"], "trace");

        for (k, v) in [
            ("level", "loud"),
            ("paths", "nocolon"),
            ("bad name", "info"),
        ] {
            let mut q = HashMap::new();
            q.insert(k.to_string(), v.to_string());
            assert!(l.clone().update(&q).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn rfc3339_drops_milliseconds() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_606_339_578_409);
        assert_eq!(rfc3339(t), "2020-11-25T21:26:18Z");
    }

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
