//! Trace context through a real sidecar hop: a request with W3C or B3 context reaches the
//! upstream with the same trace id, a new span id and the caller's span as parent; a request
//! without one reaches it with a new trace in both formats.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_model::{compile, ProxyIdentity, ProxyKind};
use sluice_proxy::context::Proxy;
use sluice_proxy::outbound::serve_forward_proxy;
use sluice_proxy::telemetry::{AccessLogger, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TRACE_HEADERS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "b3",
    "x-request-id",
];

/// An upstream that answers with the trace headers it received, `name: value` per line.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let mut body = String::new();
                    for name in TRACE_HEADERS {
                        if let Some(v) = req.headers().get(name) {
                            body.push_str(&format!("{name}: {}\n", v.to_str().unwrap_or("")));
                        }
                    }
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

async fn sidecar(upstream: SocketAddr) -> SocketAddr {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc, namespace: default}}
spec:
  hosts: [svc.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
"#,
        upstream.port()
    );
    let loaded = sluice_api::decode_str(Path::new("test.yaml"), &yaml);
    assert!(loaded.diagnostics.iter().all(|d| !d.is_error()));
    let identity = ProxyIdentity {
        namespace: "default".into(),
        labels: Default::default(),
        service_account: None,
        kind: ProxyKind::Sidecar,
    };
    let snap = compile(&loaded.resources, &identity, 1);
    let proxy = Arc::new(Proxy::new(
        Arc::new(ArcSwap::from_pointee(snap)),
        AccessLogger::disabled(),
        Arc::new(Metrics::new("test")),
        "default",
        &Default::default(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_forward_proxy(listener, proxy, std::future::pending()));
    addr
}

/// Sends a request for svc.example.com through the proxy; returns the headers the upstream saw.
async fn through(proxy: SocketAddr, headers: &[(&str, &str)]) -> HashMap<String, String> {
    let mut req = String::from(
        "GET http://svc.example.com/ HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n",
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn w3c_context_is_continued_with_a_new_span() {
    let proxy = sidecar(echo_upstream().await).await;
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let seen = through(
        proxy,
        &[("traceparent", &tp), ("tracestate", "vendor=opaque")],
    )
    .await;
    let got = &seen["traceparent"];
    assert!(got.starts_with(&format!("00-{TRACE}-")), "{seen:?}");
    assert!(got.ends_with("-01"), "{seen:?}");
    let span = &got[36..52];
    assert_ne!(span, SPAN, "a new span for this hop: {seen:?}");
    assert_eq!(seen["tracestate"], "vendor=opaque");
    assert_eq!(seen["x-b3-traceid"], TRACE);
    assert_eq!(seen["x-b3-spanid"], span);
    assert_eq!(seen["x-b3-parentspanid"], SPAN);
    assert_eq!(seen["x-b3-sampled"], "1");
    assert!(!seen["x-request-id"].is_empty());
}

#[tokio::test]
async fn b3_context_is_continued_in_both_formats() {
    let proxy = sidecar(echo_upstream().await).await;
    let seen = through(
        proxy,
        &[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "0"),
            ("b3", &format!("{TRACE}-{SPAN}-0")),
            ("x-request-id", "keep-me"),
        ],
    )
    .await;
    assert_eq!(seen["x-request-id"], "keep-me");
    assert_eq!(seen["x-b3-traceid"], TRACE);
    assert_eq!(seen["x-b3-parentspanid"], SPAN);
    assert_eq!(seen["x-b3-sampled"], "0");
    let span = seen["x-b3-spanid"].clone();
    assert_ne!(span, SPAN);
    assert_eq!(seen["traceparent"], format!("00-{TRACE}-{span}-00"));
    assert_eq!(seen["b3"], format!("{TRACE}-{span}-0-{SPAN}"));
}

#[tokio::test]
async fn a_trace_is_started_when_none_arrives_or_it_is_invalid() {
    let proxy = sidecar(echo_upstream().await).await;
    for headers in [
        vec![],
        vec![("traceparent", "00-not-a-valid-context")],
        vec![("x-b3-traceid", "xyz"), ("x-b3-spanid", SPAN)],
    ] {
        let seen = through(proxy, &headers).await;
        let tp = &seen["traceparent"];
        assert_eq!(tp.len(), 55, "{seen:?}");
        assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{seen:?}");
        assert_eq!(seen["x-b3-traceid"], tp[3..35], "{seen:?}");
        assert_eq!(seen["x-b3-spanid"], tp[36..52], "{seen:?}");
        assert_eq!(seen["x-b3-sampled"], "0");
        assert!(!seen.contains_key("x-b3-parentspanid"), "{seen:?}");
    }
    // Two requests are two traces.
    let a = through(proxy, &[]).await;
    let b = through(proxy, &[]).await;
    assert_ne!(a["x-b3-traceid"], b["x-b3-traceid"]);
    // x-envoy-force-trace samples the new trace.
    let forced = through(proxy, &[("x-envoy-force-trace", "true")]).await;
    assert_eq!(forced["x-b3-sampled"], "1");
    assert!(forced["traceparent"].ends_with("-01"));
}
