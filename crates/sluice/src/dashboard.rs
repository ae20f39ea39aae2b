//! `sluice dashboard`: a service graph of the mesh, drawn like Kiali's versioned-app graph, from
//! a Prometheus server that scrapes the proxies' `:15090/stats/prometheus`.
//!
//! The server answers `GET /` with a page (HTML, JavaScript and CSS compiled into the binary: it
//! works offline, with no CDN and no web fonts) and `GET /api/graph?window=1m` with the graph as
//! JSON. Only this server talks to Prometheus (`/api/v1/query`), so the browser needs no CORS.
//!
//! The graph is built from instant queries over Istio's standard metrics:
//!
//! - `istio_requests_total` (rate by reporter, source and destination identity, destination
//!   service, response code and flags, connection security policy): HTTP edges, their request
//!   rate, error rate (5xx or response flags other than `-`) and mTLS share;
//! - `istio_request_duration_milliseconds_bucket` (rate by the same identity and `le`): the p99 of
//!   each edge, computed with Prometheus' own `histogram_quantile` interpolation over the bucket
//!   rates of the series that make up the edge (one query serves every edge, whatever it merges);
//! - `istio_tcp_sent_bytes_total` and `istio_tcp_connections_opened_total`: TCP edges;
//! - `sluice_egress_blocked_total{source_workload, destination_host, port, protocol}`: the blocked
//!   panel (what REGISTRY_ONLY refused, who asked, and the ServiceEntry that would allow it,
//!   rendered by `sluice suggest`'s [`suggest_cmd::render_service_entry`]).
//!
//! Nodes are workloads (`workload:<ns>/<app>-<version>`, Kiali's versioned app), Kubernetes
//! services (`service:<fqdn>`, hosts in `*.svc.cluster.local`), external hosts and other
//! ServiceEntry hosts (`external:<host>`), `PassthroughCluster` and `BlackHoleCluster`
//! (`passthrough:…`, `blackhole:…`) and the unknown caller (`unknown:source`). A request is drawn
//! as source workload → service → destination workload, or source workload → external host.
//!
//! Which reporter counts (Kiali's rule): a proxy's own report (`reporter="source"`) is used for
//! the traffic it sends; the server side's report (`reporter="destination"`) only for callers
//! without a proxy. sluice identifies callers on the server side by their address
//! (WorkloadEntry), so a caller without one shows as `unknown`; such a report is taken as traffic
//! the client proxies already reported when some proxy reports traffic to the same destination.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use crate::suggest_cmd;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// The window used when `/api/graph` names none.
pub const DEFAULT_WINDOW: &str = "1m";

/// Options of `sluice dashboard`.
#[derive(clap::Args, Debug, Clone)]
pub struct DashboardArgs {
    /// Base URL of the Prometheus server that scrapes the proxies (http only), e.g.
    /// `http://127.0.0.1:9090`; a path prefix (`http://host/prometheus`) is kept.
    #[arg(long, value_name = "URL")]
    pub prometheus: String,
    /// Address the dashboard listens on.
    #[arg(long, default_value = "127.0.0.1:20001")]
    pub listen: SocketAddr,
    /// How often the page reloads the graph, e.g. 5s, 1m.
    #[arg(long, default_value = "5s")]
    pub refresh: humantime::Duration,
}

/// Runs the dashboard until the process is stopped.
pub async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let prom = Prometheus::new(&args.prometheus)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "sluice dashboard: http://{addr}/ (Prometheus {}, refresh {})",
        prom.base,
        humantime::format_duration(*args.refresh)
    );
    serve(listener, prom, *args.refresh).await
}

/// Serves the page and the API on `listener` forever.
pub async fn serve(
    listener: TcpListener,
    prom: Prometheus,
    refresh: Duration,
) -> anyhow::Result<()> {
    let state = Arc::new(State { prom, refresh });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("dashboard accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

struct State {
    prom: Prometheus,
    refresh: Duration,
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_str(content_type)
            .unwrap_or(hyper::header::HeaderValue::from_static("text/plain")),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", v.to_string())
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/" | "/index.html" => {
            let html = INDEX_HTML.replace(
                "{{REFRESH_MS}}",
                &state.refresh.as_millis().max(200).to_string(),
            );
            respond(StatusCode::OK, "text/html; charset=utf-8", html)
        }
        "/app.js" => respond(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "/style.css" => respond(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS),
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/api/graph" => {
            let window = query_param(req.uri().query().unwrap_or(""), "window")
                .unwrap_or_else(|| DEFAULT_WINDOW.to_string());
            if !valid_window(&window) {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": format!("window {window:?} is not a Prometheus duration such as 30s, 1m, 1h")}),
                );
            }
            match fetch_graph(&state.prom, &window).await {
                Ok(graph) => json_response(StatusCode::OK, &graph.to_json(&window)),
                Err(e) => json_response(
                    StatusCode::BAD_GATEWAY,
                    &json!({"error": format!("{e:#}"), "prometheus": state.prom.base}),
                ),
            }
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| v.to_string())
    })
}

/// `30s`, `1m`, `2h`, `1d`: a single Prometheus duration (all this API accepts, so nothing else
/// reaches PromQL).
pub fn valid_window(w: &str) -> bool {
    let Some(unit) = w.chars().last() else {
        return false;
    };
    let digits = &w[..w.len() - unit.len_utf8()];
    matches!(unit, 's' | 'm' | 'h' | 'd')
        && !digits.is_empty()
        && digits.len() <= 6
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

// === Prometheus client ===

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A Prometheus server's HTTP API (`/api/v1/query`), over plain HTTP.
pub struct Prometheus {
    /// The base URL as given, without a trailing slash.
    pub base: String,
    authority: String,
    prefix: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Prometheus {
    /// `http://host:port[/prefix]`.
    pub fn new(url: &str) -> anyhow::Result<Prometheus> {
        let base = url.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .with_context(|| format!("--prometheus {url:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                bail!("--prometheus {url:?}: scheme {other} is not supported (http only)")
            }
            None => bail!("--prometheus {url:?}: expected http://HOST:PORT"),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("--prometheus {url:?} has no host"))?
            .to_string();
        let prefix = uri.path().trim_end_matches('/').to_string();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Prometheus {
            base,
            authority,
            prefix,
            client,
        })
    }

    /// Runs an instant query; returns the vector's samples.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<PromSample>> {
        let uri = format!(
            "http://{}{}/api/v1/query?query={}",
            self.authority,
            self.prefix,
            percent_encode(promql)
        );
        let req = Request::get(&uri)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .with_context(|| format!("cannot reach Prometheus at {}", self.base))?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| anyhow!("Prometheus at {} did not answer within 10 s", self.base))??;
        parse_query_response(&body).with_context(|| {
            format!(
                "Prometheus query {promql:?} ({status}): {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )
        })
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses an `/api/v1/query` answer whose result is an instant vector.
pub fn parse_query_response(body: &[u8]) -> anyhow::Result<Vec<PromSample>> {
    let v: Value = serde_json::from_slice(body).context("not JSON")?;
    if v["status"] != "success" {
        bail!(
            "status {}: {} {}",
            v["status"],
            v["errorType"].as_str().unwrap_or(""),
            v["error"].as_str().unwrap_or("")
        );
    }
    let data = &v["data"];
    if data["resultType"] != "vector" {
        bail!("result type {} (expected vector)", data["resultType"]);
    }
    let mut out = Vec::new();
    for r in data["result"].as_array().into_iter().flatten() {
        let labels = r["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let value = match r["value"][1].as_str() {
            Some("+Inf") => f64::INFINITY,
            Some("-Inf") => f64::NEG_INFINITY,
            Some(s) => s.parse().unwrap_or(f64::NAN),
            None => f64::NAN,
        };
        out.push(PromSample { labels, value });
    }
    Ok(out)
}

// === Queries ===

/// The identity labels every traffic query groups by.
pub const IDENTITY_LABELS: &str = "reporter, source_workload, source_workload_namespace, \
source_app, source_version, destination_service, destination_service_name, \
destination_service_namespace, destination_workload, destination_workload_namespace, \
destination_app, destination_version";

/// The PromQL of each input, for a window such as `1m`.
#[derive(Debug, Clone)]
pub struct Queries {
    pub requests: String,
    pub durations: String,
    pub tcp_bytes: String,
    pub tcp_connections: String,
    pub blocked: String,
}

impl Queries {
    pub fn new(window: &str) -> Queries {
        Queries {
            requests: format!(
                "sum by ({IDENTITY_LABELS}, response_code, grpc_response_status, response_flags, \
                 connection_security_policy) (rate(istio_requests_total[{window}]))"
            ),
            durations: format!(
                "sum by ({IDENTITY_LABELS}, le) \
                 (rate(istio_request_duration_milliseconds_bucket[{window}]))"
            ),
            tcp_bytes: format!(
                "sum by ({IDENTITY_LABELS}, response_flags, connection_security_policy) \
                 (rate(istio_tcp_sent_bytes_total[{window}]))"
            ),
            tcp_connections: format!(
                "sum by ({IDENTITY_LABELS}, response_flags, connection_security_policy) \
                 (rate(istio_tcp_connections_opened_total[{window}]))"
            ),
            // The counter's value (since each proxy started) as last seen in the window: a host
            // blocked once still shows, which a rate of a new series would not.
            blocked: format!(
                "sum by (source_workload, source_workload_namespace, destination_host, port, protocol) \
                 (max_over_time(sluice_egress_blocked_total[{window}]))"
            ),
        }
    }
}

/// What the graph is built from: one instant vector per query.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub requests: Vec<PromSample>,
    pub durations: Vec<PromSample>,
    pub tcp_bytes: Vec<PromSample>,
    pub tcp_connections: Vec<PromSample>,
    pub blocked: Vec<PromSample>,
}

/// Queries Prometheus (concurrently) and builds the graph.
pub async fn fetch_graph(prom: &Prometheus, window: &str) -> anyhow::Result<Graph> {
    let q = Queries::new(window);
    let (requests, durations, tcp_bytes, tcp_connections, blocked) = tokio::join!(
        prom.query(&q.requests),
        prom.query(&q.durations),
        prom.query(&q.tcp_bytes),
        prom.query(&q.tcp_connections),
        prom.query(&q.blocked),
    );
    Ok(build_graph(&Inputs {
        requests: requests?,
        durations: durations?,
        tcp_bytes: tcp_bytes?,
        tcp_connections: tcp_connections?,
        blocked: blocked?,
    }))
}

// === The graph ===

/// What a node stands for; also the prefix of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeKind {
    /// A workload (Kiali's versioned app): `workload:<ns>/<app>-<version>`.
    Workload,
    /// A Kubernetes service: `service:<name>.<ns>.svc.cluster.local`.
    Service,
    /// A ServiceEntry or other host outside the cluster domain: `external:<host>`.
    External,
    /// `PassthroughCluster` (ALLOW_ANY traffic to an unknown destination).
    Passthrough,
    /// `BlackHoleCluster` (REGISTRY_ONLY refused it).
    BlackHole,
    /// A caller without telemetry: `unknown:source`.
    Unknown,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Workload => "workload",
            NodeKind::Service => "service",
            NodeKind::External => "external",
            NodeKind::Passthrough => "passthrough",
            NodeKind::BlackHole => "blackhole",
            NodeKind::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    /// What the page writes under the shape.
    pub label: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    /// `*_workload` values seen for this node.
    pub workloads: BTreeSet<String>,
    /// The service host (services, external hosts, Passthrough/BlackHole).
    pub service: String,
    /// Whether a proxy reports for this workload.
    pub sidecar: bool,
    pub rps_in: f64,
    pub rps_out: f64,
}

impl Node {
    fn new(kind: NodeKind, key: &str, label: &str) -> Node {
        Node {
            id: format!("{}:{key}", kind.as_str()),
            kind,
            label: label.to_string(),
            namespace: String::new(),
            app: String::new(),
            version: String::new(),
            workloads: BTreeSet::new(),
            service: String::new(),
            sidecar: false,
            rps_in: 0.0,
            rps_out: 0.0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edge {
    pub id: String,
    pub source: String,
    pub target: String,
    /// HTTP requests per second.
    pub rps: f64,
    /// Requests per second that failed (5xx, or response flags other than `-`).
    pub error_rps: f64,
    /// Requests per second by response code.
    pub responses: BTreeMap<String, f64>,
    /// Requests per second by response flags.
    pub flags: BTreeMap<String, f64>,
    /// Duration bucket rates by `le`.
    buckets: BTreeMap<String, f64>,
    /// Whether any series of the edge says `connection_security_policy="mutual_tls"`.
    pub mtls: bool,
    mtls_rps: f64,
    /// Requests per second whose policy is known (`mutual_tls` or `none`).
    policy_known_rps: f64,
    pub tcp_bytes_per_sec: f64,
    pub tcp_connections_per_sec: f64,
    pub http: bool,
    pub tcp: bool,
    pub reporters: BTreeSet<String>,
}

impl Edge {
    /// Percentage of failed requests (0 without traffic).
    pub fn error_rate(&self) -> f64 {
        if self.rps > 0.0 {
            100.0 * self.error_rps / self.rps
        } else {
            0.0
        }
    }

    /// p99 of the request duration in ms (`None` without observations).
    pub fn p99_ms(&self) -> Option<f64> {
        let buckets: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .filter_map(|(le, v)| parse_le(le).map(|le| (le, *v)))
            .collect();
        let q = histogram_quantile(0.99, buckets);
        q.is_finite().then_some(q)
    }

    /// Share of requests over mTLS, in percent, among those whose policy is known.
    pub fn mtls_percent(&self) -> f64 {
        if self.policy_known_rps > 0.0 {
            100.0 * self.mtls_rps / self.policy_known_rps
        } else if self.mtls {
            100.0
        } else {
            0.0
        }
    }
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" | "inf" => Some(f64::INFINITY),
        s => s.parse().ok(),
    }
}

/// One blocked host: what `sluice_egress_blocked_total` counted for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub host: String,
    /// Port → protocol (`http`, `tls`, `tcp`) asked for; one protocol per port, the most
    /// specific one seen (as `sluice suggest` decides).
    pub ports: BTreeMap<u16, String>,
    /// Connections or requests blocked (the counters' values, summed).
    pub count: f64,
    /// `namespace/workload` (or the workload alone when the namespace is not known).
    pub workloads: BTreeSet<String>,
    /// The ServiceEntry that would allow it, rendered by `sluice suggest`.
    pub service_entry: String,
}

#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub nodes: BTreeMap<String, Node>,
    pub edges: BTreeMap<String, Edge>,
    pub blocked: Vec<Blocked>,
}

type Labels = BTreeMap<String, String>;

fn label<'a>(l: &'a Labels, k: &str) -> &'a str {
    l.get(k)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .unwrap_or("unknown")
}

fn known(v: &str) -> bool {
    !v.is_empty() && v != "unknown"
}

const CLUSTER_SUFFIX: &str = concat!(".", "svc.cluster.local");

fn workload_node(ns: &str, workload: &str, app: &str, version: &str) -> Option<Node> {
    if !known(app) && !known(workload) {
        return None;
    }
    let name = match (known(app), known(version)) {
        (true, true) => format!("{app}-{version}"),
        (true, false) => app.to_string(),
        _ => workload.to_string(),
    };
    let ns = if known(ns) { ns } else { "unknown" };
    let mut n = Node::new(NodeKind::Workload, &format!("{ns}/{name}"), &name);
    n.namespace = ns.to_string();
    n.app = if known(app) {
        app.into()
    } else {
        String::new()
    };
    n.version = if known(version) {
        version.into()
    } else {
        String::new()
    };
    if known(workload) {
        n.workloads.insert(workload.to_string());
    }
    Some(n)
}

fn source_node(l: &Labels) -> Node {
    workload_node(
        label(l, "source_workload_namespace"),
        label(l, "source_workload"),
        label(l, "source_app"),
        label(l, "source_version"),
    )
    .unwrap_or_else(|| Node::new(NodeKind::Unknown, "source", "unknown"))
}

fn dest_workload_node(l: &Labels) -> Option<Node> {
    let ns = match label(l, "destination_workload_namespace") {
        ns if known(ns) => ns,
        _ => label(l, "destination_service_namespace"),
    };
    workload_node(
        ns,
        label(l, "destination_workload"),
        label(l, "destination_app"),
        label(l, "destination_version"),
    )
}

fn service_node(l: &Labels) -> Option<Node> {
    let svc = label(l, "destination_service");
    let name = label(l, "destination_service_name");
    let special = |kind: NodeKind, cluster: &str| {
        let mut n = Node::new(kind, cluster, cluster);
        n.service = cluster.to_string();
        n
    };
    for (kind, cluster) in [
        (NodeKind::Passthrough, "PassthroughCluster"),
        (NodeKind::BlackHole, "BlackHoleCluster"),
    ] {
        if name == cluster || svc == cluster {
            return Some(special(kind, cluster));
        }
    }
    if name.starts_with("InboundPassthroughCluster") || svc.starts_with("InboundPassthroughCluster")
    {
        return Some(special(NodeKind::Passthrough, "InboundPassthroughCluster"));
    }
    if !known(svc) {
        return None;
    }
    let ns = label(l, "destination_service_namespace");
    if let Some(short) = svc.strip_suffix(CLUSTER_SUFFIX) {
        // name.namespace
        let (short_name, short_ns) = short.split_once('.').unwrap_or((short, ""));
        let mut n = Node::new(
            NodeKind::Service,
            svc,
            if known(name) { name } else { short_name },
        );
        n.namespace = if known(ns) { ns } else { short_ns }.to_string();
        n.service = svc.to_string();
        Some(n)
    } else {
        let mut n = Node::new(NodeKind::External, svc, svc);
        n.namespace = if known(ns) {
            ns.to_string()
        } else {
            String::new()
        };
        n.service = svc.to_string();
        Some(n)
    }
}

/// The nodes a series passes through: source → service → destination workload, or source →
/// external host / Passthrough / BlackHole, or source → workload when no service is known.
fn path_of(l: &Labels) -> Vec<Node> {
    let src = source_node(l);
    let svc = service_node(l);
    let dst = match &svc {
        Some(s) if matches!(s.kind, NodeKind::Passthrough | NodeKind::BlackHole) => None,
        _ => dest_workload_node(l),
    };
    let mut path = vec![src];
    path.extend(svc);
    path.extend(dst);
    if path.len() < 2 {
        path.clear();
    }
    path
}

fn reporter(l: &Labels) -> &str {
    label(l, "reporter")
}

fn is_client_report(l: &Labels) -> bool {
    matches!(reporter(l), "source" | "waypoint")
}

fn is_error(code: &str, flags: &str) -> bool {
    let code: u16 = code.parse().unwrap_or(0);
    code >= 500 || (!flags.is_empty() && flags != "-" && flags != "unknown")
}

fn edge_id(from: &str, to: &str) -> String {
    format!("{from}->{to}")
}

/// Decides which series count, by Kiali's rule (see the module documentation).
struct ReporterFilter {
    /// Source node ids that report their own traffic.
    proxied: BTreeSet<String>,
    /// Destination (service or workload) ids that some client proxy reports traffic to.
    covered: BTreeSet<String>,
}

impl ReporterFilter {
    fn new<'a>(series: impl Iterator<Item = &'a Labels>) -> ReporterFilter {
        let mut proxied = BTreeSet::new();
        let mut covered = BTreeSet::new();
        for l in series.filter(|l| is_client_report(l)) {
            let path = path_of(l);
            if path.is_empty() {
                continue;
            }
            proxied.insert(path[0].id.clone());
            covered.insert(path[path.len() - 1].id.clone());
        }
        ReporterFilter { proxied, covered }
    }

    fn keep(&self, l: &Labels, path: &[Node]) -> bool {
        if is_client_report(l) {
            return true;
        }
        let src = &path[0];
        if self.proxied.contains(&src.id) {
            return false;
        }
        !(src.kind == NodeKind::Unknown && self.covered.contains(&path[path.len() - 1].id))
    }
}

/// Builds the graph from the query results.
pub fn build_graph(inputs: &Inputs) -> Graph {
    let mut g = Graph::default();
    let filter = ReporterFilter::new(
        inputs
            .requests
            .iter()
            .chain(&inputs.tcp_bytes)
            .chain(&inputs.tcp_connections)
            .map(|s| &s.labels),
    );
    let mut reporting: BTreeSet<String> = filter.proxied.clone();

    // Requests, TCP: nodes and edges from the series that count.
    let mut add_series = |g: &mut Graph, s: &PromSample, what: Input| {
        let path = path_of(&s.labels);
        if path.is_empty() {
            return;
        }
        if reporter(&s.labels) == "destination" {
            if let Some(last) = path.last() {
                if last.kind == NodeKind::Workload {
                    reporting.insert(last.id.clone());
                }
            }
        }
        if !filter.keep(&s.labels, &path) {
            return;
        }
        let value = if s.value.is_finite() { s.value } else { 0.0 };
        for n in &path {
            let entry = g.nodes.entry(n.id.clone()).or_insert_with(|| n.clone());
            entry.workloads.extend(n.workloads.iter().cloned());
        }
        for pair in path.windows(2) {
            let id = edge_id(&pair[0].id, &pair[1].id);
            let e = g.edges.entry(id.clone()).or_insert_with(|| Edge {
                id,
                source: pair[0].id.clone(),
                target: pair[1].id.clone(),
                ..Edge::default()
            });
            e.reporters.insert(reporter(&s.labels).to_string());
            match what {
                Input::Requests => {
                    e.http = true;
                    e.rps += value;
                    let code = label(&s.labels, "response_code");
                    let flags = s
                        .labels
                        .get("response_flags")
                        .map(String::as_str)
                        .unwrap_or("-");
                    *e.responses.entry(code.to_string()).or_default() += value;
                    *e.flags.entry(flags.to_string()).or_default() += value;
                    // A gRPC call fails with HTTP 200 and its status in grpc_response_status,
                    // which Kiali counts as an error when it is not 0 (OK).
                    let grpc = s.labels.get("grpc_response_status").map(String::as_str);
                    let grpc_failed = grpc.is_some_and(|g| !g.is_empty() && g != "0");
                    if is_error(code, flags) || grpc_failed {
                        e.error_rps += value;
                    }
                }
                Input::TcpBytes => {
                    e.tcp = true;
                    e.tcp_bytes_per_sec += value;
                }
                Input::TcpConnections => {
                    e.tcp = true;
                    e.tcp_connections_per_sec += value;
                }
            }
        }
    };
    for s in &inputs.requests {
        add_series(&mut g, s, Input::Requests);
    }
    for s in &inputs.tcp_bytes {
        add_series(&mut g, s, Input::TcpBytes);
    }
    for s in &inputs.tcp_connections {
        add_series(&mut g, s, Input::TcpConnections);
    }

    // mTLS: every report that knows the policy (the server side's, usually) marks the edges it
    // passes through, whichever reporter drew them.
    for s in inputs
        .requests
        .iter()
        .chain(&inputs.tcp_bytes)
        .chain(&inputs.tcp_connections)
    {
        let policy = label(&s.labels, "connection_security_policy");
        if !known(policy) {
            continue;
        }
        let path = path_of(&s.labels);
        let value = if s.value.is_finite() { s.value } else { 0.0 };
        let is_request = s.labels.contains_key("response_code");
        for pair in path.windows(2) {
            if let Some(e) = g.edges.get_mut(&edge_id(&pair[0].id, &pair[1].id)) {
                if policy == "mutual_tls" {
                    e.mtls = true;
                    if is_request {
                        e.mtls_rps += value;
                    }
                }
                if is_request {
                    e.policy_known_rps += value;
                }
            }
        }
    }

    // Durations: the bucket rates of the series that count, summed per edge.
    for s in &inputs.durations {
        let path = path_of(&s.labels);
        if path.is_empty() || !filter.keep(&s.labels, &path) {
            continue;
        }
        let Some(le) = s.labels.get("le") else {
            continue;
        };
        let le = normalize_le(le);
        let value = if s.value.is_finite() { s.value } else { 0.0 };
        for pair in path.windows(2) {
            if let Some(e) = g.edges.get_mut(&edge_id(&pair[0].id, &pair[1].id)) {
                *e.buckets.entry(le.clone()).or_default() += value;
            }
        }
    }

    for e in g.edges.values() {
        if let Some(n) = g.nodes.get_mut(&e.source) {
            n.rps_out += e.rps;
        }
        if let Some(n) = g.nodes.get_mut(&e.target) {
            n.rps_in += e.rps;
        }
    }
    for n in g.nodes.values_mut() {
        n.sidecar = n.kind == NodeKind::Workload && reporting.contains(&n.id);
    }

    g.blocked = blocked_hosts(&inputs.blocked);
    g
}

#[derive(Clone, Copy)]
enum Input {
    Requests,
    TcpBytes,
    TcpConnections,
}

/// `le="5.0"` and `le="5"` are one bucket.
fn normalize_le(le: &str) -> String {
    match parse_le(le) {
        Some(v) if v.is_infinite() => "+Inf".into(),
        Some(v) => format!("{v}"),
        None => le.to_string(),
    }
}

fn blocked_hosts(samples: &[PromSample]) -> Vec<Blocked> {
    let mut counters = Vec::new();
    let mut workloads: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in samples {
        let l = &s.labels;
        let host = l.get("destination_host").cloned().unwrap_or_default();
        if host.is_empty() {
            continue;
        }
        let wl = label(l, "source_workload");
        let ns = label(l, "source_workload_namespace");
        if known(wl) {
            workloads
                .entry(host.clone())
                .or_default()
                .insert(if known(ns) {
                    format!("{ns}/{wl}")
                } else {
                    wl.to_string()
                });
        }
        counters.push(suggest_cmd::Blocked {
            source_workload: if known(wl) {
                wl.to_string()
            } else {
                String::new()
            },
            destination_host: host,
            port: l.get("port").and_then(|p| p.parse().ok()).unwrap_or(0),
            protocol: l.get("protocol").cloned().unwrap_or_default(),
            count: if s.value.is_finite() { s.value } else { 0.0 },
        });
    }
    let mut out: Vec<Blocked> = suggest_cmd::group(&counters)
        .into_iter()
        .map(|(host, suggestion)| Blocked {
            service_entry: suggest_cmd::render_service_entry(&host, &suggestion),
            count: suggestion.workloads.values().sum(),
            ports: suggestion.ports,
            workloads: workloads.remove(&host).unwrap_or_default(),
            host,
        })
        .collect();
    out.sort_by(|a, b| {
        b.count
            .total_cmp(&a.count)
            .then_with(|| a.host.cmp(&b.host))
    });
    out
}

/// Prometheus' `histogram_quantile` (promql `bucketQuantile`): `buckets` are (upper bound,
/// cumulative count) in any order; NaN when there is no `+Inf` bucket or no observation.
pub fn histogram_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Coalesce equal bounds and force monotonic counts, as Prometheus does.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (ub, c) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == ub => last.1 += c,
            _ => merged.push((ub, c)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 < max {
            b.1 = max;
        } else {
            max = b.1;
        }
    }
    let buckets = merged;
    let Some(last) = buckets.last() else {
        return f64::NAN;
    };
    if !last.0.is_infinite() || buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = last.1;
    if observations <= 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = buckets.partition_point(|x| x.1 < rank);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (mut start, end, mut count) = (0.0, buckets[b].0, buckets[b].1);
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

fn num(v: f64, decimals: i32) -> Value {
    if !v.is_finite() {
        return Value::Null;
    }
    let p = 10f64.powi(decimals);
    let r = (v * p).round() / p;
    serde_json::Number::from_f64(r).map_or(Value::Null, Value::Number)
}

impl Graph {
    /// The `/api/graph` answer.
    pub fn to_json(&self, window: &str) -> Value {
        let nodes: Vec<Value> = self
            .nodes
            .values()
            .map(|n| {
                json!({
                    "id": n.id,
                    "kind": n.kind.as_str(),
                    "label": n.label,
                    "namespace": n.namespace,
                    "app": n.app,
                    "version": n.version,
                    "workloads": n.workloads,
                    "service": n.service,
                    "sidecar": n.sidecar,
                    "rps_in": num(n.rps_in, 3),
                    "rps_out": num(n.rps_out, 3),
                })
            })
            .collect();
        let edges: Vec<Value> = self
            .edges
            .values()
            .map(|e| {
                let responses: Map<String, Value> = e
                    .responses
                    .iter()
                    .map(|(k, v)| (k.clone(), num(*v, 3)))
                    .collect();
                let flags: Map<String, Value> = e
                    .flags
                    .iter()
                    .map(|(k, v)| (k.clone(), num(*v, 3)))
                    .collect();
                json!({
                    "id": e.id,
                    "source": e.source,
                    "target": e.target,
                    "protocol": if e.http { "http" } else { "tcp" },
                    "rps": num(e.rps, 3),
                    "error_rate": num(e.error_rate(), 1),
                    "p99_ms": e.p99_ms().map_or(Value::Null, |v| num(v, 2)),
                    "mtls": e.mtls,
                    "mtls_percent": num(e.mtls_percent(), 1),
                    "tcp_bytes_per_sec": num(e.tcp_bytes_per_sec, 1),
                    "tcp_connections_per_sec": num(e.tcp_connections_per_sec, 3),
                    "idle": e.rps <= 0.0 && e.tcp_bytes_per_sec <= 0.0 && e.tcp_connections_per_sec <= 0.0,
                    "responses": responses,
                    "flags": flags,
                    "reporters": e.reporters,
                })
            })
            .collect();
        let blocked: Vec<Value> = self
            .blocked
            .iter()
            .map(|b| {
                let ports: Vec<Value> = b
                    .ports
                    .iter()
                    .map(|(port, protocol)| json!({"port": port, "protocol": protocol}))
                    .collect();
                json!({
                    "host": b.host,
                    "ports": ports,
                    "count": num(b.count, 0),
                    "workloads": b.workloads,
                    "service_entry": b.service_entry,
                })
            })
            .collect();
        json!({
            "nodes": nodes,
            "edges": edges,
            "blocked": blocked,
            "window": window,
            "generated_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
