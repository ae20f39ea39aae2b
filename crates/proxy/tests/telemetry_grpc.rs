//! `grpc_response_status` in the Istio HTTP metrics, through real sockets: a sidecar's
//! captured-style outbound handling in front of an HTTP/2 (h2c) gRPC-style upstream. The status
//! comes from the `grpc-status` trailer, else the trailers-only header; a local reply to a gRPC
//! request is sent as Envoy sends it (trailers-only, HTTP 200, the HTTP status mapped to a gRPC
//! status). Non-gRPC requests keep `grpc_response_status=""`.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_model::{compile, ProxyIdentity, ProxyKind};
use sluice_proxy::context::{Proxy, Target};
use sluice_proxy::outbound::dispatch;
use sluice_proxy::telemetry::{AccessLogConfig, AccessLogEncoding, AccessLogger, Metrics};
use tokio::net::{TcpListener, TcpStream};

type TestBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// `/pkg.Echo/Ok`: a message and the trailer `grpc-status: 0`. `/pkg.Echo/Unavailable`: a
/// trailers-only response with `grpc-status: 14`. Anything else: a plain HTTP 200 `ok`.
async fn answer(req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    let _ = req.into_body().collect().await;
    let resp = Response::builder();
    let (resp, frames) = match path.as_str() {
        "/pkg.Echo/Ok" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames = vec![
                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02ok"))),
                Ok(Frame::trailers(trailers)),
            ];
            (resp.header("content-type", "application/grpc"), frames)
        }
        "/pkg.Echo/Unavailable" => (
            resp.header("content-type", "application/grpc")
                .header("grpc-status", "14")
                .header("grpc-message", "down"),
            vec![],
        ),
        _ => (
            resp.header("content-type", "text/plain"),
            vec![Ok(Frame::data(Bytes::from_static(b"ok")))],
        ),
    };
    Ok(resp
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap())
}

/// An HTTP/2-only (prior knowledge) upstream on loopback.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
    addr
}

/// A loopback port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const PORT: u16 = 7070;

/// ServiceEntries `grpc.example.com` (endpoint `up`) and `down.example.com` (endpoint `down`)
/// on a GRPC port, and a VirtualService that routes only `/pkg.Echo/Routed` of
/// `routed.example.com` (a ServiceEntry of its own), so that other paths have no route.
fn config(up: SocketAddr, down: SocketAddr) -> String {
    let entry = |name: &str, addr: SocketAddr| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example.com]
  ports: [{{number: {PORT}, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.1
    ports: {{grpc: {port}}}
"#,
            port = addr.port()
        )
    };
    format!(
        r#"{}---{}---{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: routed, namespace: default}}
spec:
  hosts: [routed.example.com]
  http:
  - match: [{{uri: {{exact: /pkg.Echo/Routed}}}}]
    route: [{{destination: {{host: routed.example.com}}}}]
"#,
        entry("grpc", up),
        entry("down", down),
        entry("routed", up)
    )
}

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

async fn sidecar(yaml: &str) -> Sidecar {
    let loaded = sluice_api::decode_str(Path::new("test.yaml"), yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let identity = ProxyIdentity {
        namespace: "default".into(),
        labels: Default::default(),
        service_account: None,
        kind: ProxyKind::Sidecar,
    };
    let snap = compile(&loaded.resources, &identity, 1);
    let log = tempfile::NamedTempFile::new().unwrap();
    let access_log = AccessLogger::new(AccessLogConfig {
        path: Some(log.path().to_path_buf()),
        encoding: AccessLogEncoding::Text,
        format: None,
    })
    .unwrap();
    let metrics = Arc::new(Metrics::new("test"));
    let proxy = Arc::new(Proxy::new(
        Arc::new(ArcSwap::from_pointee(snap)),
        access_log.clone(),
        metrics.clone(),
        "default",
        &Default::default(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dst = SocketAddr::new(IpAddr::V4(SERVICE_VIP), PORT);
    tokio::spawn(async move {
        while let Ok((stream, remote)) = listener.accept().await {
            let target = Target {
                addr: dst,
                host: None,
            };
            tokio::spawn(dispatch(proxy.clone(), stream, remote, dst, target));
        }
    });
    Sidecar {
        addr,
        log,
        access_log,
        metrics,
    }
}

/// What the client got.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: HeaderMap,
    trailers: Option<HeaderMap>,
}

/// One call over h2c on its own connection; gRPC when `content_type` says so.
async fn call(addr: SocketAddr, host: &str, path: &str, content_type: &str) -> Got {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{host}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
    }
}

/// The `istio_requests_total` lines of `destination_service="{service}"`, from
/// `request_protocol` on.
fn requests_total(metrics: &str, service: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains(&format!("destination_service=\"{service}\""))
        })
        .map(|l| l[l.find("request_protocol=").unwrap()..].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_comes_from_trailers_or_a_trailers_only_head() {
    let up = upstream().await;
    let sc = sidecar(&config(up, closed_port().await)).await;

    let ok = call(
        sc.addr,
        "grpc.example.com",
        "/pkg.Echo/Ok",
        "application/grpc",
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?} {}", sc.log_lines());
    let trailer = ok.trailers.as_ref().and_then(|t| t.get("grpc-status"));
    assert_eq!(trailer.map(|v| v.as_bytes()), Some(&b"0"[..]), "{ok:?}");

    let unavailable = call(
        sc.addr,
        "grpc.example.com",
        "/pkg.Echo/Unavailable",
        "application/grpc+proto",
    )
    .await;
    assert_eq!(unavailable.status, 200, "{unavailable:?}");
    assert_eq!(unavailable.headers["grpc-status"], "14");

    let plain = call(sc.addr, "grpc.example.com", "/plain", "text/plain").await;
    assert_eq!(plain.status, 200, "{plain:?}");
    // gRPC-Web is not gRPC (Envoy's `isGrpcRequestHeaders`).
    let web = call(sc.addr, "grpc.example.com", "/web", "application/grpc-web").await;
    assert_eq!(web.status, 200, "{web:?}");

    let metrics = sc.metrics.encode();
    let mut got = requests_total(&metrics, "grpc.example.com");
    got.sort();
    assert_eq!(
        got,
        [
            r#"request_protocol="grpc",response_flags="-",connection_security_policy="unknown",response_code="200",grpc_response_status="0"} 1"#,
            r#"request_protocol="grpc",response_flags="-",connection_security_policy="unknown",response_code="200",grpc_response_status="14"} 1"#,
            r#"request_protocol="http",response_flags="-",connection_security_policy="unknown",response_code="200",grpc_response_status=""} 2"#,
        ],
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_reply_to_a_grpc_request_is_trailers_only_with_the_mapped_status() {
    let up = upstream().await;
    let sc = sidecar(&config(up, closed_port().await)).await;

    // The upstream is down: 503 UF becomes 200 with grpc-status 14 UNAVAILABLE.
    let down = call(
        sc.addr,
        "down.example.com",
        "/pkg.Echo/Ok",
        "application/grpc",
    )
    .await;
    assert_eq!(down.status, 200, "{down:?} {}", sc.log_lines());
    assert_eq!(down.headers["content-type"], "application/grpc");
    assert_eq!(down.headers["grpc-status"], "14");
    let message = down.headers["grpc-message"].to_str().unwrap();
    assert!(
        message.starts_with("upstream connect error or disconnect/reset before headers."),
        "{message}"
    );
    assert!(down.trailers.is_none(), "trailers-only: {down:?}");

    // No route: 404 NR becomes 200 with grpc-status 12 UNIMPLEMENTED, no message (empty body).
    let nr = call(
        sc.addr,
        "routed.example.com",
        "/pkg.Echo/Other",
        "application/grpc",
    )
    .await;
    assert_eq!(nr.status, 200, "{nr:?} {}", sc.log_lines());
    assert_eq!(nr.headers["grpc-status"], "12");
    assert!(!nr.headers.contains_key("grpc-message"), "{nr:?}");

    // The same failures on a plain request stay HTTP errors.
    let plain = call(sc.addr, "routed.example.com", "/other", "text/plain").await;
    assert_eq!(plain.status, 404, "{plain:?}");
    assert!(!plain.headers.contains_key("grpc-status"));

    let metrics = sc.metrics.encode();
    let down_lines = requests_total(&metrics, "down.example.com");
    assert_eq!(down_lines.len(), 1, "{metrics}");
    assert!(
        down_lines[0].starts_with(r#"request_protocol="grpc",response_flags="UF"#)
            && down_lines[0].ends_with(
                r#"connection_security_policy="unknown",response_code="200",grpc_response_status="14"} 1"#
            ),
        "{metrics}"
    );
    // No route, no destination service.
    let mut routed = requests_total(&metrics, "unknown");
    routed.sort();
    assert_eq!(
        routed,
        [
            r#"request_protocol="grpc",response_flags="NR",connection_security_policy="unknown",response_code="200",grpc_response_status="12"} 1"#,
            r#"request_protocol="http",response_flags="NR",connection_security_policy="unknown",response_code="404",grpc_response_status=""} 1"#,
        ],
        "{metrics}"
    );

    // The access log shows what the client got, as Envoy's does.
    let log = sc.log_lines();
    assert!(
        log.contains("\"POST /pkg.Echo/Other HTTP/2\" 200 NR route_not_found"),
        "{log}"
    );
}
