//! The inbound listener (Istio's `virtualInbound`), without iptables: the original destination is
//! injected, and the "application" is a real server on 127.0.0.1 that reports the peer it sees.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_model::registry::{ExportTo, Protocol, Resolution, Service};
use sluice_model::{InboundPort, Snapshot, Workload};
use sluice_proxy::context::Proxy;
use sluice_proxy::inbound::serve_inbound;
use sluice_proxy::telemetry::{AccessLogConfig, AccessLogEncoding, AccessLogger, Metrics};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP application that answers with the peer address it sees and echoes a few request headers.
async fn http_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let echo = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let body = format!(
                        "peer={} version={:?} request-id={} proto={} host={}",
                        peer.ip(),
                        req.version(),
                        echo("x-request-id"),
                        echo("x-forwarded-proto"),
                        echo("host"),
                    );
                    let resp = Response::builder()
                        .header("server", "app/1.0")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TCP application: reads one line and answers `<peer ip> <line>`.
async fn tcp_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                if stream.read_line(&mut line).await.is_ok() {
                    let _ = stream
                        .get_mut()
                        .write_all(format!("{} {line}", peer.ip()).as_bytes())
                        .await;
                }
            });
        }
    });
    addr
}

/// A server-first application: sends a banner as soon as a client connects.
async fn banner_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(b"220 ready\n").await;
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    addr
}

/// An HTTP/1.0 application (like `python3 -m http.server`): one response per connection.
async fn http10_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                while stream.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let _ = stream
                    .get_mut()
                    .write_all(
                        b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\nContent-Length: 2\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    addr
}

/// A port nobody listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

struct Harness {
    /// The inbound listener.
    addr: SocketAddr,
    log: AccessLogger,
    log_path: PathBuf,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Starts the inbound listener; every connection's "original destination" is `dst`, or the
    /// listener itself when `dst` is `None`.
    async fn start(snap: Snapshot, dst: Option<SocketAddr>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("access.log");
        let log = AccessLogger::new(AccessLogConfig {
            path: Some(log_path.clone()),
            encoding: AccessLogEncoding::Text,
            format: None,
        })
        .unwrap();
        let metrics = Arc::new(Metrics::new("test"));
        let labels = [("app", "server"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let proxy = Arc::new(Proxy::new(
            Arc::new(ArcSwap::from_pointee(snap)),
            log.clone(),
            metrics.clone(),
            "default",
            &labels,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = dst.unwrap_or(addr);
        tokio::spawn(serve_inbound(
            listener,
            proxy,
            move |_: &TcpStream| Ok(target),
            std::future::pending(),
        ));
        Harness {
            addr,
            log,
            log_path,
            metrics,
            _dir: dir,
        }
    }

    /// Waits until the access log has `n` lines and returns them.
    async fn log_lines(&self, n: usize) -> Vec<String> {
        for _ in 0..100 {
            self.log.flush(Duration::from_secs(1));
            let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "expected {n} access log lines, got: {:?}",
            std::fs::read_to_string(&self.log_path)
        );
    }

    /// The value of the first series of `metric` whose labels contain every one of `labels`.
    async fn metric(&self, metric: &str, labels: &[&str]) -> Option<u64> {
        for _ in 0..50 {
            let out = self.metrics.encode();
            let found = out.lines().find(|l| {
                l.starts_with(&format!("{metric}{{")) && labels.iter().all(|want| l.contains(want))
            });
            if let Some(line) = found {
                return line.rsplit(' ').next().and_then(|v| v.parse().ok());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

/// A raw HTTP/1.1 exchange (`Connection: close`): status, lower-cased headers, body.
async fn http_get(
    addr: SocketAddr,
    path: &str,
    extra: &str,
) -> (u16, BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: server.default:8080\r\nUser-Agent: test/1\r\n{extra}Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn service() -> Arc<Service> {
    Arc::new(Service {
        hostname: "server.default.svc.cluster.local".into(),
        namespace: "default".into(),
        source: "Service default/server".into(),
        addresses: Vec::new(),
        ports: Vec::new(),
        mesh_external: false,
        resolution: Resolution::Static,
        endpoints: Vec::new().into(),
        export_to: ExportTo::All,
    })
}

/// A snapshot where a service targets `port` with `protocol`, and the client at 127.0.0.1 is a
/// known workload.
fn snapshot_with_service(port: u16, protocol: Protocol) -> Snapshot {
    let mut snap = Snapshot::default();
    snap.inbound_ports.insert(
        port,
        InboundPort {
            cluster_name: Arc::from(format!("inbound|{port}||")),
            protocol,
            service: Some(service()),
            endpoint: Default::default(),
        },
    );
    snap.workloads.insert(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        Arc::new(Workload {
            name: "client-v1".into(),
            namespace: "client-ns".into(),
            labels: [("app", "client"), ("version", "v1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: None,
        }),
    );
    snap
}

#[tokio::test]
async fn http_reaches_the_app_from_127_0_0_6_as_istio_envoy() {
    let app = http_app().await;
    let h = Harness::start(Snapshot::default(), Some(app)).await;

    let (status, headers, body) = http_get(h.addr, "/status", "x-request-id: req-1\r\n").await;
    assert_eq!(status, 200, "{headers:?} {body}");
    assert_eq!(
        headers.get("server").map(String::as_str),
        Some("istio-envoy")
    );
    assert!(
        headers.contains_key("x-envoy-upstream-service-time"),
        "{headers:?}"
    );
    assert!(body.contains("peer=127.0.0.6 "), "{body}");
    assert!(body.contains("version=HTTP/1.1 "), "{body}");
    assert!(body.contains("request-id=req-1 "), "{body}");
    assert!(body.contains("proto=http "), "{body}");
    assert!(body.contains("host=server.default:8080"), "{body}");

    // Without x-request-id, one is generated.
    let (status, _, body) = http_get(h.addr, "/", "").await;
    assert_eq!(status, 200);
    let id = body
        .split("request-id=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or("");
    assert_eq!(id.len(), 36, "{body}");

    let lines = h.log_lines(2).await;
    let line = lines
        .iter()
        .find(|l| l.contains("\"GET /status HTTP/1.1\" 200 - via_upstream"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(line.contains("\"req-1\""), "{line}");
    assert!(
        line.contains(&format!(
            "\"{app}\" InboundPassthroughClusterIpv4 127.0.0.6:"
        )),
        "{line}"
    );
    assert!(line.contains(&format!(" {app} 127.0.0.1:")), "{line}");
    assert!(line.ends_with(" - default"), "{line}");

    let n = h
        .metric(
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                "source_workload=\"unknown\"",
                "destination_workload=\"server\"",
                "destination_app=\"server\"",
                "destination_version=\"v1\"",
                "destination_service=\"unknown\"",
                "connection_security_policy=\"none\"",
                "response_code=\"200\"",
            ],
        )
        .await;
    assert_eq!(n, Some(2), "{}", h.metrics.encode());
}

#[tokio::test]
async fn declared_port_logs_inbound_cluster_and_peer_labels() {
    let app = http_app().await;
    let h = Harness::start(snapshot_with_service(app.port(), Protocol::Http), Some(app)).await;

    let (status, headers, _) = http_get(h.addr, "/x", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("server").map(String::as_str),
        Some("istio-envoy")
    );

    let lines = h.log_lines(1).await;
    let cluster = format!("inbound|{}||", app.port());
    assert!(
        lines[0].contains(&format!("\"{app}\" {cluster} 127.0.0.6:")),
        "{lines:?}"
    );
    assert!(lines[0].ends_with(" default"), "{lines:?}");

    let n = h
        .metric(
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                "source_workload=\"client-v1\"",
                "source_workload_namespace=\"client-ns\"",
                "source_app=\"client\"",
                "destination_workload=\"server\"",
                "destination_service=\"server.default.svc.cluster.local\"",
                "destination_service_name=\"server\"",
                "destination_service_namespace=\"default\"",
                "response_code=\"200\"",
            ],
        )
        .await;
    assert_eq!(n, Some(1), "{}", h.metrics.encode());
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_and_forwarded() {
    let app = http_app().await;
    let h = Harness::start(Snapshot::default(), Some(app)).await;

    let (status, headers, body) = h2_get(h.addr, "http://server.default:8080/h2").await;
    assert_eq!(status, 200);
    assert_eq!(headers["server"], "istio-envoy");
    assert!(body.contains("peer=127.0.0.6 "), "{body}");
    // Sniffed HTTP/2 goes to the app as HTTP/2 (Istio's `use_downstream_protocol`).
    assert!(body.contains("version=HTTP/2.0 "), "{body}");
    assert!(body.contains("host=server.default:8080"), "{body}");

    let lines = h.log_lines(1).await;
    assert!(lines[0].contains("\"GET /h2 HTTP/2\" 200"), "{lines:?}");
}

#[tokio::test]
async fn tcp_is_copied_and_logged() {
    let app = tcp_app().await;
    let h = Harness::start(
        snapshot_with_service(app.port(), Protocol::Unknown),
        Some(app),
    )
    .await;

    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"hello\n").await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply))
        .await
        .expect("reply in time")
        .unwrap();
    assert_eq!(reply, "127.0.0.6 hello\n");
    drop(s);

    let lines = h.log_lines(1).await;
    let cluster = format!("inbound|{}||", app.port());
    assert!(
        lines[0].contains("\"- - -\" 0 - - - \"-\" 6 16 "),
        "{lines:?}"
    );
    assert!(
        lines[0].contains(&format!("\"{app}\" {cluster} 127.0.0.6:")),
        "{lines:?}"
    );

    let labels = [
        "reporter=\"destination\"",
        "source_workload=\"client-v1\"",
        "destination_service_name=\"server\"",
        "request_protocol=\"tcp\"",
    ];
    assert_eq!(
        h.metric("istio_tcp_connections_closed_total", &labels)
            .await,
        Some(1)
    );
    assert_eq!(
        h.metric("istio_tcp_received_bytes_total", &labels).await,
        Some(6)
    );
    assert_eq!(
        h.metric("istio_tcp_sent_bytes_total", &labels).await,
        Some(16)
    );
}

#[tokio::test]
async fn app_not_listening_is_503_uf() {
    let dead = closed_port().await;
    let h = Harness::start(Snapshot::default(), Some(dead)).await;

    let (status, headers, body) = http_get(h.addr, "/", "").await;
    assert_eq!(status, 503);
    assert_eq!(
        headers.get("server").map(String::as_str),
        Some("istio-envoy")
    );
    assert!(body.contains("connection failure"), "{body}");

    let lines = h.log_lines(1).await;
    assert!(
        lines[0].contains(
            "\"GET / HTTP/1.1\" 503 UF upstream_reset_before_response_started{connection_failure}"
        ),
        "{lines:?}"
    );
    assert!(
        lines[0].contains(&format!("\"{dead}\" InboundPassthroughClusterIpv4 - ")),
        "{lines:?}"
    );
    let n = h
        .metric(
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                "response_flags=\"UF\"",
                "response_code=\"503\"",
            ],
        )
        .await;
    assert_eq!(n, Some(1), "{}", h.metrics.encode());
}

#[tokio::test]
async fn connection_to_the_inbound_port_itself_is_closed() {
    // The original destination is the listener itself: forwarding would loop.
    let h = Harness::start(Snapshot::default(), None).await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        read.is_err() || buf.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
}

/// Send an HTTP/2 prior-knowledge GET to `addr`; returns the response body.
async fn h2_get(addr: SocketAddr, uri: &str) -> (http::StatusCode, http::HeaderMap, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).to_string(),
    )
}

#[tokio::test]
async fn declared_http2_port_speaks_h2_to_the_app() {
    let app = http_app().await;
    let h = Harness::start(snapshot_with_service(app.port(), Protocol::Grpc), Some(app)).await;

    // An HTTP/1.1 client still works; the hop to the app is HTTP/2.
    let (status, headers, body) = http_get(h.addr, "/one", "").await;
    assert_eq!(status, 200, "{headers:?} {body}");
    assert!(body.contains("version=HTTP/2.0 "), "{body}");
    assert!(body.contains("peer=127.0.0.6 "), "{body}");

    let (status, headers, body) = h2_get(h.addr, "http://server.default:8080/two").await;
    assert_eq!(status, 200);
    assert_eq!(headers["server"], "istio-envoy");
    assert!(body.contains("version=HTTP/2.0 "), "{body}");
    assert!(body.contains("host=server.default:8080"), "{body}");
}

#[tokio::test]
async fn declared_tcp_port_is_not_sniffed() {
    // A server-first protocol: detection would wait for client bytes that never come.
    let app = banner_app().await;
    let h = Harness::start(snapshot_with_service(app.port(), Protocol::Tcp), Some(app)).await;

    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut banner = [0u8; 10];
    tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut banner))
        .await
        .expect("the banner arrives without waiting for protocol detection")
        .unwrap();
    assert_eq!(&banner, b"220 ready\n");
    drop(s);

    let lines = h.log_lines(1).await;
    assert!(
        lines[0].contains("\"- - -\" 0 - - - \"-\" 0 10 "),
        "{lines:?}"
    );
}

#[tokio::test]
async fn http10_app_is_answered_in_the_clients_version() {
    let app = http10_app().await;
    let h = Harness::start(Snapshot::default(), Some(app)).await;

    let mut s = TcpStream::connect(h.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: server\r\n\r\n")
            .await
            .unwrap();
        // The client's keep-alive connection survives the app's HTTP/1.0 one-shot.
        let mut buf = vec![0u8; 1024];
        let mut got = String::new();
        while !got.ends_with("ok") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("response in time")
                .unwrap();
            assert!(n > 0, "connection closed after {got:?}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(
            got.to_ascii_lowercase().contains("server: istio-envoy\r\n"),
            "{got}"
        );
        assert!(!got.contains("SimpleHTTP"), "{got}");
    }
}
