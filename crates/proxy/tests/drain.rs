//! Graceful drain through a real gateway listener on loopback: once draining starts, requests in
//! flight finish, HTTP/1.1 responses carry `connection: close` (and the connection closes after
//! them), HTTP/2 connections get a GOAWAY, and the open-connection count falls to zero.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_proxy::admin::DrainSignal;
use sluice_proxy::downstream::Lifecycle;
use sluice_proxy::gateway::listeners::ListenerSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers `/slow` after 800 ms and anything else at once.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    if req.uri().path() == "/slow" {
                        tokio::time::sleep(Duration::from_millis(800)).await;
                    }
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A gateway on a free loopback port routing everything to [`upstream`], draining on `drain`.
async fn gateway(drain: DrainSignal) -> (SocketAddr, Lifecycle, ListenerSet) {
    let up = upstream().await;
    let port = common::free_port();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc, namespace: istio-system}}
spec:
  hosts: [svc.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{{address: 127.0.0.1, ports: {{http: {up_port}}}}}]
---
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
metadata: {{name: vs, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: svc.example.com}}
"#,
        up_port = up.port()
    );
    let lifecycle = Lifecycle::new(Default::default(), drain, Default::default());
    let (_log, access_log) = common::file_access_log();
    let listeners = common::loopback_gateway(&yaml, access_log, lifecycle.clone()).await;
    (
        format!("127.0.0.1:{port}").parse().unwrap(),
        lifecycle,
        listeners,
    )
}

/// Reads one HTTP/1.1 response with a content-length body; returns its head (lower-cased).
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before a response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text[..end].to_string();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_keep_alive_gets_connection_close_once_draining() {
    let drain = DrainSignal::new();
    let (addr, lifecycle, _listeners) = gateway(drain.clone()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = b"GET /get HTTP/1.1\r\nhost: svc.example.com\r\n\r\n";
    s.write_all(req).await.unwrap();
    let head = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert_eq!(lifecycle.active_connections(), 1);

    // A request in flight when draining starts still completes.
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: svc.example.com\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drain.trigger();
    let head = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    // And the server closes the connection after it.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(lifecycle.drained(Duration::from_secs(3)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_gets_goaway_and_streams_in_flight_finish() {
    let drain = DrainSignal::new();
    let (addr, lifecycle, _listeners) = gateway(drain.clone()).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = || {
        hyper::Request::builder()
            .uri(format!("http://svc.example.com:{}/slow", addr.port()))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let in_flight = sender.send_request(req());
    let trigger = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drain.trigger();
    };
    let (resp, ()) = tokio::join!(in_flight, trigger);
    let resp = resp.expect("the stream in flight completes");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    // GOAWAY: the connection ends on its own, cleanly.
    let ended = tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the server ends the HTTP/2 connection after GOAWAY")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    assert_eq!(lifecycle.drained(Duration::from_secs(3)).await, 0);
}
