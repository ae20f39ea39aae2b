//! Span export to real receivers (crates/proxy/tests/tracing_receiver.py: Python's HTTP server
//! for Zipkin JSON v2, PyPI's opentelemetry-proto + grpcio for OTLP over gRPC and OTLP/HTTP),
//! through two sidecar hops on loopback (outbound explicit proxy → inbound → application) and
//! through a gateway, with `curl` as the client. The tracing backend is configured as Istio
//! reads it (mesh `extensionProviders` + `defaultProviders.tracing`, `defaultConfig.tracing`) and
//! is a ServiceEntry host whose endpoint is the receiver's loopback port.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sluice_model::{compile, ProxyIdentity, ProxyKind, Snapshot};
use sluice_proxy::context::Proxy;
use sluice_proxy::inbound::serve_inbound;
use sluice_proxy::outbound::serve_forward_proxy;
use sluice_proxy::telemetry::{AccessLogger, Metrics};
use tokio::net::{TcpListener, TcpStream};

// === The receiver ===

fn venv_python() -> PathBuf {
    let venv = std::env::var_os("SLUICE_TEST_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "prerequisite missing: the test venv's Python at {} (run scripts/install-test-deps.sh, or set SLUICE_TEST_VENV)",
        python.display()
    );
    python
}

/// A span receiver process and the spans it recorded (one JSON object each).
struct Receiver {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    /// `mode`: `zipkin`, `otlp-grpc` or `otlp-http`; `extra`: e.g. `["--status", "500"]`.
    fn start(mode: &str, extra: &[&str]) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tracing_receiver.py");
        let mut child = Command::new(venv_python())
            .arg(&script)
            .arg(mode)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tracing_receiver.py");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let port: u16 = first
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("tracing_receiver.py {mode} did not start: {first:?} (is opentelemetry-proto in the venv? run scripts/install-test-deps.sh)"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Receiver { child, port, spans }
    }

    /// Waits until `n` spans arrived; returns them.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} spans, got {}: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The spans after giving the exporter time to flush (for asserting that none came).
    async fn settled(&self) -> Vec<Value> {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === The mesh ===

/// The mesh ConfigMap with `mesh` (MeshConfig YAML, indented under `data.mesh`).
fn mesh_configmap(mesh: &str) -> String {
    let indented: String = mesh.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n{indented}"
    )
}

/// A STATIC ServiceEntry `host:port` whose one endpoint is 127.0.0.1:`endpoint_port` (none when
/// `None`).
fn service_entry(name: &str, host: &str, port: u16, endpoint_port: Option<u16>) -> String {
    let endpoints = match endpoint_port {
        Some(p) => format!("[{{address: 127.0.0.1, ports: {{http: {p}}}}}]"),
        None => "[]".into(),
    };
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: {port}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  location: MESH_INTERNAL\n  endpoints: {endpoints}\n"
    )
}

/// A mesh whose default tracing provider is `provider` (an `extensionProviders` entry named
/// `backend`), sampling `sampling` percent.
fn tracing_mesh(provider: &str, sampling: f64) -> String {
    mesh_configmap(&format!(
        "defaultProviders:\n  tracing: [backend]\nextensionProviders:\n- name: backend\n  {provider}\ndefaultConfig:\n  tracing:\n    sampling: {sampling}\n    customTags:\n      tenant: {{header: {{name: x-tenant, defaultValue: none}}}}\n      env: {{literal: {{value: test}}}}\n"
    ))
}

fn snapshot(yaml: &str, app: &str, kind: ProxyKind, namespace: &str) -> Snapshot {
    let loaded = sluice_api::decode_str(Path::new("tracing.yaml"), yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let mut labels: BTreeMap<String, String> = [("app".to_string(), app.to_string())].into();
    if kind == ProxyKind::Gateway {
        labels.insert("istio".into(), "ingressgateway".into());
    }
    let identity = ProxyIdentity {
        namespace: namespace.into(),
        labels,
        service_account: None,
        kind,
    };
    let snap = compile(&loaded.resources, &identity, 1);
    assert!(snap.tracing.is_some(), "no tracing settings compiled");
    snap
}

fn proxy(snap: Snapshot, metrics: &Arc<Metrics>) -> Arc<Proxy> {
    let labels = snap.proxy.labels.clone();
    let ns = snap.proxy.namespace.clone();
    Arc::new(Proxy::new(
        Arc::new(ArcSwap::from_pointee(snap)),
        AccessLogger::disabled(),
        metrics.clone(),
        &ns,
        &labels,
    ))
}

/// An application that answers 200 with the `traceparent` and `x-b3-spanid` it received.
async fn app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let body = format!("traceparent={}\n", h("traceparent"));
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Two sidecar hops: `sleep`'s outbound (an explicit proxy) → `httpbin`'s inbound → the app.
/// `httpbin.test:80` is a ServiceEntry whose endpoint is the inbound listener.
struct TwoHops {
    outbound: SocketAddr,
    metrics: Arc<Metrics>,
    sleep: Arc<Proxy>,
}

async fn two_hops(config: &str) -> TwoHops {
    let app = app().await;
    let inbound_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound_addr = inbound_listener.local_addr().unwrap();
    let yaml = format!(
        "{config}{}",
        service_entry("httpbin", "httpbin.test", 80, Some(inbound_addr.port()))
    );
    let inbound_metrics = Arc::new(Metrics::new("test"));
    let httpbin = proxy(
        snapshot(&yaml, "httpbin", ProxyKind::Sidecar, "default"),
        &inbound_metrics,
    );
    tokio::spawn(serve_inbound(
        inbound_listener,
        httpbin,
        move |_: &TcpStream| Ok(app),
        std::future::pending(),
    ));
    let metrics = Arc::new(Metrics::new("test"));
    let sleep = proxy(
        snapshot(&yaml, "sleep", ProxyKind::Sidecar, "default"),
        &metrics,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound = listener.local_addr().unwrap();
    tokio::spawn(serve_forward_proxy(
        listener,
        sleep.clone(),
        std::future::pending(),
    ));
    TwoHops {
        outbound,
        metrics,
        sleep,
    }
}

/// `curl` through the outbound proxy to `http://httpbin.test/get`; returns status and body.
async fn curl(proxy: SocketAddr, headers: &[&str]) -> (u16, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .arg("-x")
        .arg(format!("http://{proxy}"));
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    let out = cmd
        .arg("http://httpbin.test/get")
        .output()
        .await
        .expect("prerequisite missing: curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn by_kind<'a>(spans: &'a [Value], kind: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span in {spans:#?}"))
}

fn tag<'a>(span: &'a Value, name: &str) -> &'a str {
    span["tags"][name].as_str().unwrap_or_else(|| {
        panic!("span has no tag {name}: {span:#?}");
    })
}

/// The span id of the `traceparent` the application received.
fn app_span_id(body: &str) -> String {
    let tp = body
        .lines()
        .find_map(|l| l.strip_prefix("traceparent="))
        .unwrap_or_else(|| panic!("no traceparent in {body:?}"));
    assert_eq!(tp.len(), 55, "{tp}");
    tp[36..52].to_string()
}

fn zipkin_provider(port_name: &str) -> String {
    format!("zipkin: {{service: zipkin.test, port: {port_name}}}")
}

// === Tests ===

/// A sampled request through two sidecars gives one CLIENT span (sleep's outbound) and one
/// SERVER span (httpbin's inbound), in one trace, the server span the child of the client span,
/// and the application sees the server span's id as its parent; Envoy's and Istio's tags.
#[tokio::test]
async fn zipkin_spans_for_two_sidecar_hops() {
    let receiver = Receiver::start("zipkin", &[]);
    let config = format!(
        "{}{}",
        tracing_mesh(&zipkin_provider("9411"), 100.0),
        service_entry("zipkin", "zipkin.test", 9411, Some(receiver.port))
    );
    let hops = two_hops(&config).await;
    let (code, body) = curl(
        hops.outbound,
        &[
            "x-request-id: req-1",
            "x-tenant: acme",
            "user-agent: curl-test",
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let spans = receiver.wait_for(2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = by_kind(&spans, "CLIENT");
    let server = by_kind(&spans, "SERVER");

    // One trace; parent/child across the hops; what the app saw is the server span.
    assert_eq!(client["traceId"], server["traceId"]);
    assert_eq!(client["traceId"].as_str().unwrap().len(), 32);
    assert!(client.get("parentId").is_none(), "{client:#?}");
    assert_eq!(server["parentId"], client["id"]);
    assert_eq!(app_span_id(&body), server["id"].as_str().unwrap());

    // Names and reporters.
    assert_eq!(client["name"], "httpbin.test:80/*");
    assert_eq!(client["serviceName"], "sleep.default");
    assert_eq!(server["serviceName"], "httpbin.default");
    assert_eq!(client["path"], "/api/v2/spans");
    assert_eq!(client["contentType"], "application/json");
    assert_eq!(client["authority"], "zipkin.test:9411");

    for span in [client, server] {
        assert_eq!(tag(span, "http.method"), "GET");
        assert_eq!(tag(span, "http.status_code"), "200");
        assert_eq!(tag(span, "http.protocol"), "HTTP/1.1");
        assert_eq!(tag(span, "component"), "proxy");
        assert_eq!(tag(span, "guid:x-request-id"), "req-1");
        assert_eq!(tag(span, "user_agent"), "curl-test");
        assert_eq!(tag(span, "response_flags"), "-");
        assert_eq!(tag(span, "peer.address"), "127.0.0.1");
        assert_eq!(tag(span, "istio.mesh_id"), "cluster.local");
        assert_eq!(tag(span, "istio.namespace"), "default");
        assert_eq!(tag(span, "istio.canonical_revision"), "latest");
        assert_eq!(tag(span, "tenant"), "acme");
        assert_eq!(tag(span, "env"), "test");
        assert!(tag(span, "node_id").starts_with("sidecar~"));
        assert!(tag(span, "response_size").parse::<u64>().unwrap() > 0);
        assert_eq!(tag(span, "request_size"), "0");
        assert!(span["tags"].get("error").is_none(), "{span:#?}");
        assert!(span["duration"].as_u64().unwrap() >= 1);
    }
    assert_eq!(tag(client, "http.url"), "http://httpbin.test/get");
    assert_eq!(tag(client, "upstream_cluster"), "outbound|80||httpbin.test");
    assert_eq!(tag(client, "istio.canonical_service"), "sleep");
    assert_eq!(tag(server, "istio.canonical_service"), "httpbin");
    // No Service selects the app: Envoy's inbound passthrough.
    assert_eq!(
        tag(server, "upstream_cluster"),
        "InboundPassthroughClusterIpv4"
    );

    // A caller's context is joined: its trace, its span as the client span's parent.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let (code, _) = curl(
        hops.outbound,
        &[&format!("traceparent: 00-{trace}-{caller}-01")],
    )
    .await;
    assert_eq!(code, 200);
    let spans = receiver.wait_for(4).await;
    let joined: Vec<&Value> = spans.iter().filter(|s| s["traceId"] == trace).collect();
    assert_eq!(joined.len(), 2, "{spans:#?}");
    let client = joined.iter().find(|s| s["kind"] == "CLIENT").unwrap();
    assert_eq!(client["parentId"], caller);
    assert!(hops.sleep.spans.sent() >= 2);
    assert_eq!(hops.sleep.spans.dropped(), 0);
    let exposition = hops.metrics.encode();
    assert!(
        exposition.contains("sluice_tracing_spans_sent_total 2"),
        "{exposition}"
    );
}

/// `defaultConfig.tracing.sampling`: 100% samples every new trace, a percentage Envoy rounds to
/// 0 samples none; `x-envoy-force-trace` forces one; an incoming decision is kept both ways.
#[tokio::test]
async fn sampling_percentage_forced_and_incoming_decisions() {
    let receiver = Receiver::start("zipkin", &[]);
    let receiver_entry = service_entry("zipkin", "zipkin.test", 9411, Some(receiver.port));

    // 0.001% is below Envoy's 0.01% resolution: never (Istio reads `sampling: 0` as unset,
    // i.e. its default 1%).
    let none = two_hops(&format!(
        "{}{receiver_entry}",
        tracing_mesh(&zipkin_provider("9411"), 0.001)
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(curl(none.outbound, &[]).await.0, 200);
    }
    let sampled_in = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert!(receiver.settled().await.is_empty());

    // Forced, and a caller's sampled=1, are reported even at 0%.
    assert_eq!(
        curl(none.outbound, &["x-envoy-force-trace: true"]).await.0,
        200
    );
    assert_eq!(curl(none.outbound, &[sampled_in]).await.0, 200);
    let spans = receiver.wait_for(4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_eq!(
        spans
            .iter()
            .filter(|s| s["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736")
            .count(),
        2
    );

    // 100%: every new trace; a caller's sampled=0 is kept.
    let all = two_hops(&format!(
        "{}{receiver_entry}",
        tracing_mesh(&zipkin_provider("9411"), 100.0)
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(curl(all.outbound, &[]).await.0, 200);
    }
    assert_eq!(receiver.wait_for(10).await.len(), 10);
    let sampled_out = "traceparent: 00-11111111111111111111111111111111-00f067aa0ba902b7-00";
    assert_eq!(curl(all.outbound, &[sampled_out]).await.0, 200);
    let spans = receiver.settled().await;
    assert_eq!(spans.len(), 10, "{spans:#?}");
}

/// OTLP over gRPC (the provider's default): the same two spans, as `TraceService/Export` with
/// the resource's `service.name`.
#[tokio::test]
async fn otlp_grpc_spans_for_two_sidecar_hops() {
    let receiver = Receiver::start("otlp-grpc", &[]);
    let config = format!(
        "{}{}",
        tracing_mesh(
            "opentelemetry: {service: otel.test, port: 4317, grpc: {initialMetadata: [{name: x-otel-tenant, value: t1}]}}",
            100.0
        ),
        service_entry("otel", "otel.test", 4317, Some(receiver.port))
    );
    let hops = two_hops(&config).await;
    let (code, body) = curl(hops.outbound, &[]).await;
    assert_eq!(code, 200);
    let spans = receiver.wait_for(2).await;
    let client = by_kind(&spans, "CLIENT");
    let server = by_kind(&spans, "SERVER");
    assert_eq!(client["traceId"], server["traceId"]);
    assert_eq!(server["parentId"], client["id"]);
    assert!(client.get("parentId").is_none());
    assert_eq!(app_span_id(&body), server["id"].as_str().unwrap());
    assert_eq!(client["serviceName"], "sleep.default");
    assert_eq!(server["serviceName"], "httpbin.default");
    assert_eq!(client["name"], "httpbin.test:80/*");
    assert_eq!(tag(client, "http.status_code"), "200");
    assert_eq!(tag(client, "upstream_cluster"), "outbound|80||httpbin.test");
    assert_eq!(client["headers"]["x-otel-tenant"], "t1");
    assert_eq!(client["statusCode"], 0);
}

/// OTLP/HTTP when the provider sets `http`: protobuf POSTed to its path, with its headers.
#[tokio::test]
async fn otlp_http_spans_and_error_status_on_5xx() {
    let receiver = Receiver::start("otlp-http", &[]);
    let config = format!(
        "{}{}",
        tracing_mesh(
            "opentelemetry: {service: otel.test, port: 4318, http: {path: /v1/traces, timeout: 2s, headers: [{name: x-otel-tenant, value: t2}]}}",
            100.0
        ),
        service_entry("otel", "otel.test", 4318, Some(receiver.port))
    );
    let hops = two_hops(&config).await;
    assert_eq!(curl(hops.outbound, &[]).await.0, 200);
    let spans = receiver.wait_for(2).await;
    let client = by_kind(&spans, "CLIENT");
    assert_eq!(client["path"], "/v1/traces");
    assert_eq!(client["contentType"], "application/x-protobuf");
    assert_eq!(client["headers"]["x-otel-tenant"], "t2");
    assert_eq!(by_kind(&spans, "SERVER")["parentId"], client["id"]);

    // A host with no endpoint: the outbound hop answers 503 itself, its span says error.
    let no_endpoint = format!("{config}{}", service_entry("empty", "empty.test", 80, None));
    let hops = two_hops(&no_endpoint).await;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x"])
        .arg(format!("http://{}", hops.outbound))
        .arg("http://empty.test/")
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "503");
    let spans = receiver.wait_for(3).await;
    let failed = spans
        .iter()
        .find(|s| s["tags"]["http.status_code"] == "503")
        .unwrap_or_else(|| panic!("no 503 span: {spans:#?}"));
    assert_eq!(tag(failed, "error"), "true");
    assert_eq!(tag(failed, "response_flags"), "UH");
    assert_eq!(failed["statusCode"], 2, "OTLP STATUS_CODE_ERROR");
}

/// A backend that refuses connections, one that never answers, one that answers 500 and one
/// with no endpoint: requests still succeed at their usual speed, spans are counted as dropped.
#[tokio::test]
async fn a_dead_backend_neither_fails_nor_slows_requests() {
    // Accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let failing = Receiver::start("zipkin", &["--status", "500"]);
    for (endpoint, reason) in [
        (Some(common::free_port()), "export_failed"),
        (Some(silent_port), "export_failed"),
        (Some(failing.port), "export_failed"),
        (None, "no_endpoint"),
    ] {
        let config = format!(
            "{}{}",
            tracing_mesh(
                "zipkin: {service: zipkin.test, port: 9411, timeout: 1s}",
                100.0
            ),
            service_entry("zipkin", "zipkin.test", 9411, endpoint)
        );
        let hops = two_hops(&config).await;
        let started = Instant::now();
        for _ in 0..20 {
            let (code, body) = curl(hops.outbound, &[]).await;
            assert_eq!(code, 200, "{body}");
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "20 requests took {took:?} with backend {endpoint:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while hops.sleep.spans.dropped() < 20 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(hops.sleep.spans.dropped(), 20, "backend {endpoint:?}");
        assert_eq!(hops.sleep.spans.sent(), 0);
        let exposition = hops.metrics.encode();
        assert!(
            exposition.contains(&format!(
                "sluice_tracing_spans_dropped_total{{reason=\"{reason}\"}} 20"
            )),
            "{exposition}"
        );
    }
    assert!(failing.spans.lock().unwrap().is_empty());
    drop(silent);
}

/// A gateway reports a SERVER span named by the route's decorator and a CLIENT child
/// `router <cluster> egress` whose id is the one sent upstream.
#[tokio::test]
async fn gateway_reports_a_server_span_and_an_upstream_child() {
    let receiver = Receiver::start("zipkin", &[]);
    let app = app().await;
    let gw_port = common::free_port();
    let yaml = format!(
        "{}{}{}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {gw_port}, name: http, protocol: HTTP}}\n    hosts: ['*']\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: default}}\nspec:\n  hosts: ['*']\n  gateways: [istio-system/gw]\n  http:\n  - route:\n    - destination: {{host: httpbin.test, port: {{number: 80}}}}\n",
        tracing_mesh(&zipkin_provider("9411"), 100.0),
        service_entry("zipkin", "zipkin.test", 9411, Some(receiver.port)),
        service_entry("httpbin", "httpbin.test", 80, Some(app.port())),
    );
    let (_log, access_log) = common::file_access_log();
    let _listeners = common::loopback_gateway(
        &yaml,
        access_log,
        sluice_proxy::downstream::Lifecycle::default(),
    )
    .await;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-H", "Host: shop.example.com"])
        .arg(format!("http://127.0.0.1:{gw_port}/get"))
        .output()
        .await
        .expect("prerequisite missing: curl");
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    let spans = receiver.wait_for(2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = by_kind(&spans, "SERVER");
    let child = by_kind(&spans, "CLIENT");
    assert_eq!(server["name"], "httpbin.test:80/*");
    assert_eq!(child["name"], "router outbound|80||httpbin.test egress");
    assert_eq!(child["parentId"], server["id"]);
    assert_eq!(child["traceId"], server["traceId"]);
    assert!(server.get("parentId").is_none());
    assert_eq!(app_span_id(&body), child["id"].as_str().unwrap());
    assert!(
        server["serviceName"]
            .as_str()
            .unwrap()
            .ends_with(".istio-system"),
        "{server:#?}"
    );
    assert!(tag(server, "node_id").starts_with("router~"));
    assert_eq!(tag(child, "upstream_cluster"), "outbound|80||httpbin.test");
    assert_eq!(tag(server, "http.url"), "http://shop.example.com/get");
}

/// The legacy form: `defaultConfig.tracing.zipkin.address` with `enableTracing` (default on)
/// reports to that address; `enableTracing: false` turns it off.
#[tokio::test]
async fn legacy_zipkin_address() {
    let receiver = Receiver::start("zipkin", &[]);
    let mesh = mesh_configmap(&format!(
        "defaultConfig:\n  tracing:\n    sampling: 100\n    zipkin: {{address: 127.0.0.1:{}}}\n",
        receiver.port
    ));
    let hops = two_hops(&mesh).await;
    assert_eq!(curl(hops.outbound, &[]).await.0, 200);
    let spans = receiver.wait_for(2).await;
    assert_eq!(
        by_kind(&spans, "SERVER")["parentId"],
        by_kind(&spans, "CLIENT")["id"]
    );

    let off = mesh_configmap(&format!(
        "enableTracing: false\ndefaultConfig:\n  tracing:\n    sampling: 100\n    zipkin: {{address: 127.0.0.1:{}}}\n",
        receiver.port
    ));
    let loaded = sluice_api::decode_str(Path::new("off.yaml"), &off);
    let snap = compile(&loaded.resources, &ProxyIdentity::default(), 1);
    assert!(snap.tracing.is_none());
}

/// A tracing provider Istio would refuse is refused with its file, line, resource and field.
#[test]
fn bad_provider_config_is_named() {
    let yaml = mesh_configmap(
        "defaultProviders:\n  tracing: [backend]\nextensionProviders:\n- name: backend\n  zipkin: {service: zipkin.test, port: 0}\n",
    );
    let loaded = sluice_api::decode_str(Path::new("mesh.yaml"), &yaml);
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let errors: Vec<String> = loaded
        .resources
        .iter()
        .flat_map(sluice_api::validate)
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    for want in [
        "mesh.yaml:",
        "ConfigMap istio-system/istio",
        "data.mesh",
        "extensionProviders[0].zipkin.port",
    ] {
        assert!(e.contains(want), "{want} not in {e}");
    }
}

/// The Telemetry API's `tracing` replaces the mesh's settings, side by side: a mesh-wide
/// `randomSamplingPercentage: 100` samples every trace although the mesh config says 0.001%,
/// and `disableSpanReporting` for `SERVER` keeps the inbound side quiet while the outbound side
/// still reports (the trace still propagates).
#[tokio::test]
async fn a_telemetry_tracing_section_overrides_sampling_and_reporting_per_side() {
    let receiver = Receiver::start("zipkin", &[]);
    let base = format!(
        "{}{}",
        tracing_mesh(&zipkin_provider("9411"), 0.001),
        service_entry("zipkin", "zipkin.test", 9411, Some(receiver.port))
    );
    let everything = "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  tracing:\n  - randomSamplingPercentage: 100\n";
    let hops = two_hops(&format!("{base}{everything}")).await;
    for _ in 0..3 {
        assert_eq!(curl(hops.outbound, &[]).await.0, 200);
    }
    let spans = receiver.wait_for(6).await;
    assert_eq!(spans.len(), 6, "{spans:#?}");
    assert_eq!(spans.iter().filter(|s| s["kind"] == "SERVER").count(), 3);

    let quiet_server = "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: quiet-inbound, namespace: default}\nspec:\n  tracing:\n  - match: {mode: SERVER}\n    disableSpanReporting: true\n";
    let hops = two_hops(&format!("{base}{everything}{quiet_server}")).await;
    for _ in 0..3 {
        let (status, body) = curl(hops.outbound, &[]).await;
        assert_eq!(status, 200);
        assert!(body.contains("traceparent=00-"), "{body}");
    }
    let spans = receiver.settled().await;
    assert_eq!(spans.len(), 9, "{spans:#?}");
    assert_eq!(
        spans.iter().filter(|s| s["kind"] == "CLIENT").count(),
        6,
        "{spans:#?}"
    );
}
