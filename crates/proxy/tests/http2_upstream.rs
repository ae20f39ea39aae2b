//! HTTP/2 towards upstreams through real sockets: a sidecar's captured-style outbound handling
//! (`outbound::dispatch` with a fixed original destination) and a gateway, in front of hyper
//! servers that speak only HTTP/2 (h2c) or both versions, recording what they saw.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_model::{compile, ProxyIdentity, ProxyKind, Snapshot};
use sluice_proxy::context::{Proxy, Target};
use sluice_proxy::gateway::listeners::ListenerSet;
use sluice_proxy::gateway::{gateway_proxy, Gateway};
use sluice_proxy::outbound::dispatch;
use sluice_proxy::telemetry::{AccessLogConfig, AccessLogEncoding, AccessLogger, Metrics};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

// === upstreams ===

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    /// The request URI's authority (`:authority` for HTTP/2).
    authority: Option<String>,
    host: Option<String>,
    te: Option<String>,
}

/// An upstream on loopback: counts accepted connections, records requests, and drops every open
/// connection on `drop_connections`.
struct Upstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    drop_all: Arc<Notify>,
}

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
    fn drop_connections(&self) {
        self.drop_all.notify_waiters();
    }
}

type TestBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// Answers 200 `ok` with the trailer `grpc-status: 0` after `delay`.
async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    delay: Duration,
) -> Result<Response<TestBody>, Infallible> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    seen.lock().unwrap().push(Seen {
        version: req.version(),
        authority: req.uri().authority().map(|a| a.to_string()),
        host: h("host"),
        te: h("te"),
    });
    let _ = req.into_body().collect().await;
    tokio::time::sleep(delay).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"ok"))),
        Ok(Frame::trailers(trailers)),
    ];
    let resp = Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    Ok(resp)
}

/// An upstream that speaks only HTTP/2 (prior knowledge) when `h2_only`, else HTTP/1.1 and h2c.
async fn upstream(h2_only: bool, delay: Duration) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let drop_all = Arc::new(Notify::new());
    let (a, s, d) = (accepts.clone(), seen.clone(), drop_all.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let (s, d) = (s.clone(), d.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(req, s.clone(), delay));
                let io = TokioIo::new(stream);
                if h2_only {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = d.notified() => {}
                    }
                } else {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(io, svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = d.notified() => {}
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        accepts,
        seen,
        drop_all,
    }
}

// === the sidecar under test ===

/// Where the captured-style listener pretends each connection was going.
const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

struct Sidecar {
    addr: SocketAddr,
    log: tempfile::NamedTempFile,
    access_log: AccessLogger,
    metrics: Arc<Metrics>,
}

impl Sidecar {
    fn log_lines(&self) -> String {
        self.access_log.flush(Duration::from_secs(2));
        std::fs::read_to_string(self.log.path()).unwrap()
    }
}

fn telemetry() -> (tempfile::NamedTempFile, AccessLogger, Arc<Metrics>) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let access_log = AccessLogger::new(AccessLogConfig {
        path: Some(log.path().to_path_buf()),
        encoding: AccessLogEncoding::Text,
        format: None,
    })
    .unwrap();
    (log, access_log, Arc::new(Metrics::new("test")))
}

fn decode(yaml: &str) -> Vec<sluice_api::Resource> {
    let loaded = sluice_api::decode_str(Path::new("test.yaml"), yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    loaded.resources
}

/// A ServiceEntry `grpc.example.com` on `port` (`port_fields`: the rest of the port's flow
/// mapping, e.g. `name: grpc, protocol: GRPC`) whose one endpoint is `upstream`, plus `extra`
/// YAML documents.
fn service_yaml(port: u16, port_fields: &str, port_name: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: grpc, namespace: default}}
spec:
  hosts: [grpc.example.com]
  ports: [{{number: {port}, {port_fields}}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.1
    ports: {{{port_name}: {up}}}
"#,
        up = upstream.port()
    )
}

/// A sidecar whose captured-style listener treats every connection as going to
/// `SERVICE_VIP:port`, configured by `yaml`.
async fn sidecar(yaml: &str, port: u16) -> Sidecar {
    let identity = ProxyIdentity {
        namespace: "default".into(),
        labels: Default::default(),
        service_account: None,
        kind: ProxyKind::Sidecar,
    };
    let snap = compile(&decode(yaml), &identity, 1);
    let (log, access_log, metrics) = telemetry();
    let proxy = Arc::new(Proxy::new(
        Arc::new(ArcSwap::from_pointee(snap)),
        access_log.clone(),
        metrics.clone(),
        "default",
        &Default::default(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dst = SocketAddr::new(IpAddr::V4(SERVICE_VIP), port);
    tokio::spawn(async move {
        while let Ok((stream, remote)) = listener.accept().await {
            let proxy = proxy.clone();
            let target = Target {
                addr: dst,
                host: None,
            };
            tokio::spawn(dispatch(proxy, stream, remote, dst, target));
        }
    });
    Sidecar {
        addr,
        log,
        access_log,
        metrics,
    }
}

// === clients ===

/// What a client got back.
#[derive(Debug)]
struct Got {
    status: u16,
    version: Version,
    headers: HeaderMap,
    body: String,
    trailers: Option<HeaderMap>,
}

fn grpc_request(host: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri(format!("http://{host}/pkg.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap()
}

async fn collect(resp: Response<Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Got {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailers,
    }
}

/// An h2c (prior knowledge) connection to `addr`.
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// One gRPC-style call over h2c on its own connection.
async fn h2_call(addr: SocketAddr, host: &str) -> Got {
    let mut send = h2_client(addr).await;
    let resp = send.send_request(grpc_request(host)).await.unwrap();
    collect(resp).await
}

/// One gRPC-style call over HTTP/1.1 on its own connection (origin-form, Host header).
async fn h1_call(addr: SocketAddr, host: &str) -> Got {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = grpc_request(host);
    *req.uri_mut() = "/pkg.Echo/Say".parse().unwrap();
    req.headers_mut()
        .insert("host", HeaderValue::from_str(host).unwrap());
    let resp = send.send_request(req).await.unwrap();
    collect(resp).await
}

fn grpc_status(got: &Got) -> Option<&str> {
    got.trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_port_speaks_h2_upstream_with_service_authority_and_trailers() {
    let up = upstream(true, Duration::ZERO).await;
    let yaml = service_yaml(7070, "name: grpc, protocol: GRPC", "grpc", up.addr);
    let sc = sidecar(&yaml, 7070).await;

    let got = h2_call(sc.addr, "grpc.example.com").await;
    assert_eq!(got.status, 200, "{got:?} {}", sc.log_lines());
    assert_eq!(got.version, Version::HTTP_2);
    assert_eq!(got.body, "ok");
    assert_eq!(grpc_status(&got), Some("0"), "trailers lost: {got:?}");
    assert!(got.headers.contains_key("x-envoy-upstream-service-time"));
    assert_eq!(got.headers["server"], "envoy");

    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(seen[0].authority.as_deref(), Some("grpc.example.com"));
    // The Host header became `:authority`; it is not sent twice.
    assert_eq!(seen[0].host, None, "{seen:?}");
    assert_eq!(seen[0].te.as_deref(), Some("trailers"));

    let log = sc.log_lines();
    assert!(
        log.contains("\"POST /pkg.Echo/Say HTTP/2\" 200 - via_upstream"),
        "{log}"
    );
    assert!(log.contains("outbound|7070||grpc.example.com"), "{log}");
    let metrics = sc.metrics.encode();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("request_protocol=\"grpc\"")
                && l.contains("response_code=\"200\"")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_port_upgrades_an_http1_client() {
    let up = upstream(true, Duration::ZERO).await;
    let yaml = service_yaml(
        7071,
        "name: http2-api, protocol: HTTP2",
        "http2-api",
        up.addr,
    );
    let sc = sidecar(&yaml, 7071).await;

    let got = h1_call(sc.addr, "grpc.example.com:7071").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.version, Version::HTTP_11);
    assert_eq!(got.body, "ok");
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(seen[0].authority.as_deref(), Some("grpc.example.com:7071"));
    assert_eq!(seen[0].host, None);
    let log = sc.log_lines();
    // %PROTOCOL% is the downstream's.
    assert!(
        log.contains("\"POST /pkg.Echo/Say HTTP/1.1\" 200 - via_upstream"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sniffed_port_follows_the_downstream_protocol() {
    let up = upstream(false, Duration::ZERO).await;
    let yaml = service_yaml(7072, "name: api", "api", up.addr);
    let sc = sidecar(&yaml, 7072).await;

    let got = h2_call(sc.addr, "grpc.example.com").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(grpc_status(&got), Some("0"), "{got:?}");
    let got = h1_call(sc.addr, "grpc.example.com").await;
    assert_eq!(got.status, 200, "{got:?}");

    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(seen[0].authority.as_deref(), Some("grpc.example.com"));
    assert_eq!(seen[1].version, Version::HTTP_11);
    assert_eq!(seen[1].host.as_deref(), Some("grpc.example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_port_follows_client_or_upgrades_by_destination_rule() {
    for (policy, h1_goes_as) in [
        ("useClientProtocol: true", Version::HTTP_11),
        ("h2UpgradePolicy: UPGRADE", Version::HTTP_2),
    ] {
        let up = upstream(false, Duration::ZERO).await;
        let yaml = format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: grpc, namespace: default}}\nspec:\n  host: grpc.example.com\n  \
             trafficPolicy:\n    connectionPool:\n      http: {{{policy}}}\n",
            service_yaml(7073, "name: http, protocol: HTTP", "http", up.addr)
        );
        let sc = sidecar(&yaml, 7073).await;
        assert_eq!(h1_call(sc.addr, "grpc.example.com").await.status, 200);
        assert_eq!(h2_call(sc.addr, "grpc.example.com").await.status, 200);
        let seen = up.seen();
        assert_eq!(seen.len(), 2, "{policy}: {seen:?}");
        assert_eq!(seen[0].version, h1_goes_as, "{policy}: {seen:?}");
        assert_eq!(seen[1].version, Version::HTTP_2, "{policy}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_port_stays_http1_for_h2_clients() {
    let up = upstream(false, Duration::ZERO).await;
    let yaml = service_yaml(7074, "name: http, protocol: HTTP", "http", up.addr);
    let sc = sidecar(&yaml, 7074).await;
    let got = h2_call(sc.addr, "grpc.example.com").await;
    assert_eq!(got.status, 200, "{got:?}");
    let seen = up.seen();
    assert_eq!(seen[0].version, Version::HTTP_11, "{seen:?}");
    assert_eq!(seen[0].host.as_deref(), Some("grpc.example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_h2_connection() {
    let up = upstream(true, Duration::from_millis(200)).await;
    let yaml = service_yaml(7075, "name: grpc, protocol: GRPC", "grpc", up.addr);
    let sc = sidecar(&yaml, 7075).await;

    let calls: Vec<_> = (0..6)
        .map(|_| tokio::spawn(h2_call(sc.addr, "grpc.example.com")))
        .collect();
    for c in calls {
        let got = c.await.unwrap();
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(grpc_status(&got), Some("0"));
    }
    // HTTP/1.1 clients too: one downstream connection each, one upstream connection for all.
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(h1_call(sc.addr, "grpc.example.com")))
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().status, 200);
    }
    assert_eq!(up.seen().len(), 10);
    assert_eq!(
        up.accepts(),
        1,
        "requests did not share the HTTP/2 connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_h2_connection_is_reopened() {
    let up = upstream(true, Duration::ZERO).await;
    let yaml = service_yaml(7076, "name: grpc, protocol: GRPC", "grpc", up.addr);
    let sc = sidecar(&yaml, 7076).await;

    assert_eq!(h2_call(sc.addr, "grpc.example.com").await.status, 200);
    assert_eq!(up.accepts(), 1);
    up.drop_connections();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = h2_call(sc.addr, "grpc.example.com").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(grpc_status(&got), Some("0"));
    assert_eq!(up.accepts(), 2);
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_retires_h2_connections() {
    let up = upstream(true, Duration::ZERO).await;
    let yaml = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: grpc, namespace: default}}\nspec:\n  host: grpc.example.com\n  \
         trafficPolicy:\n    connectionPool:\n      http: {{maxRequestsPerConnection: 2}}\n",
        service_yaml(7077, "name: grpc, protocol: GRPC", "grpc", up.addr)
    );
    let sc = sidecar(&yaml, 7077).await;
    for _ in 0..4 {
        assert_eq!(h2_call(sc.addr, "grpc.example.com").await.status, 200);
    }
    assert_eq!(up.accepts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_h2_upstream_is_uf_and_grpc_unavailable() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = service_yaml(7078, "name: grpc, protocol: GRPC", "grpc", closed);
    let sc = sidecar(&yaml, 7078).await;
    let got = h2_call(sc.addr, "grpc.example.com").await;
    // A gRPC request's 503 goes out as Envoy's trailers-only gRPC reply: 200, UNAVAILABLE.
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.headers["grpc-status"], "14", "{got:?}");
    assert!(
        got.headers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("connection failure"),
        "{got:?}"
    );
    let log = sc.log_lines();
    assert!(log.contains(" 200 UF"), "{log}");
}

// === gateway ===

fn gateway_labels() -> BTreeMap<String, String> {
    [("istio".to_string(), "ingressgateway".to_string())].into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_routes_to_a_grpc_port_over_h2() {
    let up = upstream(true, Duration::ZERO).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: grpc, namespace: default}}
spec:
  hosts: [api.example.com]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {{host: grpc.example.com, port: {{number: 9000}}}}
---{service}"#,
        service = service_yaml(9000, "name: grpc, protocol: GRPC", "grpc", up.addr)
    );
    let identity = ProxyIdentity {
        namespace: "istio-system".into(),
        labels: gateway_labels(),
        service_account: None,
        kind: ProxyKind::Gateway,
    };
    let snap: Snapshot = compile(&decode(&yaml), &identity, 1);
    let (log, access_log, metrics) = telemetry();
    let snapshots = Arc::new(ArcSwap::from_pointee(snap));
    let proxy = Arc::new(gateway_proxy(
        snapshots.clone(),
        access_log.clone(),
        metrics.clone(),
        "istio-system",
        &gateway_labels(),
    ));
    let gateway = Arc::new(Gateway::new(proxy, &metrics));
    let mut listeners = ListenerSet::new(IpAddr::V4(Ipv4Addr::LOCALHOST), gateway);
    listeners.reconcile(&snapshots.load_full()).await;
    let gw_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);

    let got = h2_call(gw_addr, "api.example.com").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(grpc_status(&got), Some("0"), "{got:?}");
    assert_eq!(got.headers["server"], "istio-envoy");
    let got = h1_call(gw_addr, "api.example.com").await;
    assert_eq!(got.status, 200, "{got:?}");

    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_2, "{seen:?}");
        // Envoy keeps the client's host unless a route rewrites it.
        assert_eq!(s.authority.as_deref(), Some("api.example.com"), "{seen:?}");
    }
    assert_eq!(up.accepts(), 1);
    access_log.flush(Duration::from_secs(2));
    let lines = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        lines.contains("\"POST /pkg.Echo/Say HTTP/2\" 200 - via_upstream"),
        "{lines}"
    );
    assert!(lines.contains("outbound|9000||grpc.example.com"), "{lines}");
}

// === TLS origination ===

/// A TLS upstream for `grpc.example.com` (self-signed, written to `dir/cert.pem`) that speaks
/// only HTTP/2 and records the ALPN protocol each handshake negotiated.
async fn tls_h2_upstream(dir: &Path) -> (Upstream, Arc<Mutex<Vec<Option<String>>>>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["grpc.example.com".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let alpn = Arc::new(Mutex::new(Vec::new()));
    let (a, s, p) = (accepts.clone(), seen.clone(), alpn.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let (s, p, acceptor) = (s.clone(), p.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let negotiated = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                p.lock().unwrap().push(negotiated);
                let svc = service_fn(move |req| answer(req, s.clone(), Duration::ZERO));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let up = Upstream {
        addr,
        accepts,
        seen,
        drop_all: Arc::new(Notify::new()),
    };
    (up, alpn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn originated_tls_to_a_grpc_port_negotiates_h2() {
    let dir = tempfile::tempdir().unwrap();
    let (up, alpn) = tls_h2_upstream(dir.path()).await;
    let yaml = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: grpc, namespace: default}}\nspec:\n  host: grpc.example.com\n  \
         trafficPolicy:\n    tls: {{mode: SIMPLE, caCertificates: {}}}\n",
        service_yaml(7079, "name: grpc, protocol: GRPC", "grpc", up.addr),
        dir.path().join("cert.pem").display()
    );
    let sc = sidecar(&yaml, 7079).await;

    let got = h1_call(sc.addr, "grpc.example.com").await;
    assert_eq!(got.status, 200, "{got:?} {}", sc.log_lines());
    let got = h2_call(sc.addr, "grpc.example.com").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(grpc_status(&got), Some("0"));
    assert_eq!(*alpn.lock().unwrap(), vec![Some("h2".to_string())]);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_2);
        assert_eq!(s.authority.as_deref(), Some("grpc.example.com"));
    }
    assert_eq!(up.accepts(), 1);
}
