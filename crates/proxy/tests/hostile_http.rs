//! One client must not hurt others: malformed request bodies, oversized or trickled headers and
//! ambiguous hosts are the client's fault (400/431, or a closed connection), never an upstream
//! failure, never input to outlier detection. Real sockets on loopback: a sluice forward proxy
//! or gateway in front of a hyper upstream, and a raw TCP client that writes what curl will not.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_model::ProxyKind;
use sluice_proxy::context::Proxy;
use sluice_proxy::downstream::{DownstreamSettings, Lifecycle};
use sluice_proxy::outbound::serve_forward_proxy;
use sluice_proxy::telemetry::metrics::Metrics;
use sluice_proxy::telemetry::AccessLogger;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.1 upstream that reads the whole request body and answers 200, counting requests.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let hosts = req.headers().get_all("host").iter().count();
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                            "hosts={hosts}"
                        )))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

const SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc, namespace: default}
spec:
  hosts: [svc.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{address: 127.0.0.1, ports: {http: PORT}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc, namespace: default}
spec:
  host: svc.example.com
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
"#;

struct Harness {
    addr: SocketAddr,
    upstream_requests: Arc<AtomicUsize>,
    log: tempfile::NamedTempFile,
    access_log: AccessLogger,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Harness {
    fn log(&self) -> String {
        self.access_log.flush(Duration::from_secs(2));
        std::fs::read_to_string(self.log.path()).unwrap()
    }
}

/// A forward proxy in front of [`upstream`] with outlier detection on, whose clients get
/// `settings`.
async fn forward_proxy(settings: DownstreamSettings) -> Harness {
    let (up, upstream_requests) = upstream().await;
    let snap = common::compile_yaml(
        &SERVICE.replace("PORT", &up.port().to_string()),
        ProxyKind::Sidecar,
        "default",
    );
    let (log, access_log) = common::file_access_log();
    let mut proxy = Proxy::new(
        Arc::new(ArcSwap::from_pointee(snap)),
        access_log.clone(),
        Arc::new(Metrics::new("test")),
        "default",
        &Default::default(),
    );
    proxy.lifecycle = Lifecycle::new(Default::default(), Default::default(), settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_forward_proxy(listener, Arc::new(proxy), async move {
        let _ = stopped.await;
    }));
    Harness {
        addr,
        upstream_requests,
        log,
        access_log,
        _stop: stop,
    }
}

/// Writes `request` on a new connection and reads until the server closes it (or 5 s pass):
/// the status (0 when none) and the whole response.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    exchange_with(addr, request, false).await
}

/// [`exchange`]; with `hang_up`, the client closes its sending side after the request, as a
/// client that gives up mid-body does.
async fn exchange_with(addr: SocketAddr, request: &[u8], hang_up: bool) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // A server that refuses early may close before everything is written.
    let _ = s.write_all(request).await;
    if hang_up {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn chunked(body: &str) -> Vec<u8> {
    format!(
        "POST http://svc.example.com/post HTTP/1.1\r\nhost: svc.example.com\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{body}"
    )
    .into_bytes()
}

const GOOD: &[u8] =
    b"GET http://svc.example.com/get HTTP/1.1\r\nhost: svc.example.com\r\nconnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_are_400_and_never_eject_the_upstream() {
    let h = forward_proxy(DownstreamSettings::default()).await;
    assert_eq!(exchange(h.addr, GOOD).await.0, 200);
    let bad = [
        "zz\r\nhello\r\n0\r\n\r\n",                    // not a hex size
        "-5\r\nhello\r\n0\r\n\r\n",                    // negative size
        "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", // overflowing size
        "5\nhello\n0\n\n",                             // bare LF
        "3\r\nhello world\r\n0\r\n\r\n",               // more data than the size
        "5\r\nhel",                                    // truncated, then the client closes
    ];
    // Twice the consecutive-5xx threshold of the DestinationRule.
    for body in bad.iter().chain(bad.iter()) {
        let truncated = !body.ends_with("\n");
        let (status, text) = exchange_with(h.addr, &chunked(body), truncated).await;
        assert!(
            status == 400 || status == 0,
            "malformed body {body:?}: {status}\n{text}"
        );
        assert!(!text.contains("503"), "{body:?}: {text}");
    }
    // The upstream was not ejected: a good request still reaches it.
    let (status, text) = exchange(h.addr, GOOD).await;
    assert_eq!(status, 200, "{text}");
    let log = h.log();
    assert!(log.contains(" 400 DPE http1.codec_error "), "{log}");
    assert!(
        !log.contains(" UH "),
        "no request was refused for lack of a healthy upstream:\n{log}"
    );
    assert!(!log.contains(" 503 "), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_over_60_kib_or_100_fields_are_431() {
    let h = forward_proxy(DownstreamSettings::default()).await;
    let big = format!(
        "GET http://svc.example.com/get HTTP/1.1\r\nhost: svc.example.com\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let (status, text) = exchange(h.addr, big.as_bytes()).await;
    assert_eq!(status, 431, "{text}");

    let mut many =
        String::from("GET http://svc.example.com/get HTTP/1.1\r\nhost: svc.example.com\r\n");
    for i in 0..101 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (status, text) = exchange(h.addr, many.as_bytes()).await;
    assert_eq!(status, 431, "{text}");

    // Just under both limits is fine.
    let mut fits = String::from(
        "GET http://svc.example.com/get HTTP/1.1\r\nhost: svc.example.com\r\nconnection: close\r\n",
    );
    for i in 0..90 {
        fits.push_str(&format!("x-h{i}: {}\r\n", "b".repeat(500)));
    }
    fits.push_str("\r\n");
    let (status, text) = exchange(h.addr, fits.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(h.upstream_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_are_400_not_forwarded() {
    let h = forward_proxy(DownstreamSettings::default()).await;
    let (status, text) = exchange(
        h.addr,
        b"GET http://svc.example.com/get HTTP/1.1\r\nhost: svc.example.com\r\nhost: evil.example.com\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(h.upstream_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_are_cut_off_after_the_request_headers_timeout() {
    let h = forward_proxy(DownstreamSettings {
        request_headers_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET http://svc.example.com/get HTTP/1.1\r\nhost: svc.example.com\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // One header byte every 200 ms, never ending the head.
    let mut closed = false;
    for _ in 0..50 {
        if s.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the connection was still open after 10 s");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "closed after {took:?}, expected about 1 s"
    );
    assert_eq!(h.upstream_requests.load(Ordering::SeqCst), 0);
}

// === gateway ===

const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: GWPORT, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {host: svc.example.com}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_http11_without_host_and_with_two_hosts() {
    let (up, upstream_requests) = upstream().await;
    let port = common::free_port();
    let yaml = format!(
        "{}---{}",
        SERVICE
            .replace("PORT", &up.port().to_string())
            .replace("namespace: default", "namespace: istio-system"),
        GATEWAY.replace("GWPORT", &port.to_string())
    );
    let (_log, access_log) = common::file_access_log();
    let _listeners = common::loopback_gateway(&yaml, access_log, Default::default()).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let (status, text) = exchange(
        addr,
        b"GET /get HTTP/1.1\r\nhost: a.example.com\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("hosts=1"), "{text}");
    let (status, text) = exchange(addr, b"GET /get HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert_eq!(status, 400, "{text}");
    let (status, text) = exchange(
        addr,
        b"GET /get HTTP/1.1\r\nhost: a.example.com\r\nhost: b.example.com\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(upstream_requests.load(Ordering::SeqCst), 1);
}
