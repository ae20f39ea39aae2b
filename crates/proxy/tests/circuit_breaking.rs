//! Upstream connection pools, circuit breakers (DestinationRule `connectionPool`) and retries
//! (VirtualService `retries`) through the real data path: a sluice forward proxy on loopback in
//! front of HTTP/1.1 upstreams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_model::{compile, ProxyIdentity};
use sluice_proxy::context::Proxy;
use sluice_proxy::outbound::serve_forward_proxy;
use sluice_proxy::telemetry::metrics::Metrics;
use sluice_proxy::telemetry::{AccessLogConfig, AccessLogEncoding, AccessLogger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.1 upstream that answers every request after `delay`, counting accepted connections.
async fn slow_upstream(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    upstream(delay, 200).await
}

/// An HTTP/1.1 upstream that answers `status` after `delay`, counting accepted connections.
async fn upstream(delay: Duration, status: u16) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepts)
}

struct Harness {
    proxy_addr: SocketAddr,
    log: tempfile::NamedTempFile,
    access_log: AccessLogger,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A forward proxy whose `svc.example.com:80` goes to `upstream` with `pool` as the
/// DestinationRule's `connectionPool`.
async fn harness(upstream: SocketAddr, pool: &str) -> Harness {
    harness_with(&[upstream], &format!("    connectionPool:\n{pool}")).await
}

/// A forward proxy whose `svc.example.com:80` goes to `upstreams` with `policy` (indented lines)
/// as the DestinationRule's `trafficPolicy`.
async fn harness_with(upstreams: &[SocketAddr], policy: &str) -> Harness {
    harness_yaml(upstreams, policy, "").await
}

/// [`harness_with`] plus `more` (YAML documents, e.g. a VirtualService for the host).
async fn harness_yaml(upstreams: &[SocketAddr], policy: &str, more: &str) -> Harness {
    let endpoints: String = upstreams
        .iter()
        .map(|u| {
            format!(
                "  - address: 127.0.0.1\n    ports: {{http: {}}}\n",
                u.port()
            )
        })
        .collect();
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
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc, namespace: default}}
spec:
  host: svc.example.com
  trafficPolicy:
{policy}
{more}"#
    );
    let loaded = sluice_api::decode_str(Path::new("test.yaml"), &yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let identity = ProxyIdentity {
        namespace: "default".into(),
        labels: Default::default(),
        service_account: None,
        kind: sluice_model::ProxyKind::Sidecar,
    };
    let snap = compile(&loaded.resources, &identity, 1);
    let log = tempfile::NamedTempFile::new().unwrap();
    let access_log = AccessLogger::new(AccessLogConfig {
        path: Some(log.path().to_path_buf()),
        encoding: AccessLogEncoding::Text,
        format: None,
    })
    .unwrap();
    let proxy = Arc::new(Proxy::new(
        Arc::new(ArcSwap::from_pointee(snap)),
        access_log.clone(),
        Arc::new(Metrics::new("test")),
        "default",
        &Default::default(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_forward_proxy(listener, proxy, async move {
        let _ = stopped.await;
    }));
    Harness {
        proxy_addr,
        log,
        access_log,
        _stop: stop,
    }
}

/// One request through the proxy on its own connection: the status and the response head.
async fn get(proxy: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        b"GET http://svc.example.com/ HTTP/1.1\r\nhost: svc.example.com\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text.to_ascii_lowercase())
}

async fn concurrent(proxy: SocketAddr, n: usize) -> Vec<(u16, String)> {
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(get(proxy))).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn overloaded(responses: &[(u16, String)]) -> usize {
    responses
        .iter()
        .filter(|(s, head)| {
            *s == 503
                && head.contains("x-envoy-overloaded: true")
                && head.contains("reset reason: overflow")
        })
        .count()
}

fn ok(responses: &[(u16, String)]) -> usize {
    responses.iter().filter(|(s, _)| *s == 200).count()
}

fn log_lines(h: &Harness) -> String {
    h.access_log.flush(Duration::from_secs(2));
    std::fs::read_to_string(h.log.path()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_overflow_is_503_uo() {
    let (upstream, _) = slow_upstream(Duration::from_millis(400)).await;
    let h = harness(upstream, "      http: {http2MaxRequests: 1}").await;
    let responses = concurrent(h.proxy_addr, 4).await;
    assert_eq!(ok(&responses), 1, "{responses:?}");
    assert_eq!(overloaded(&responses), 3, "{responses:?}");
    let log = log_lines(&h);
    assert_eq!(
        log.matches(" 503 UO upstream_reset_before_response_started{overflow} ")
            .count(),
        3,
        "{log}"
    );
    // The breaker closes again once the request is done.
    assert_eq!(get(h.proxy_addr).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_wait_for_the_connection_then_overflow() {
    let (upstream, accepts) = slow_upstream(Duration::from_millis(300)).await;
    let h = harness(
        upstream,
        "      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}",
    )
    .await;
    let responses = concurrent(h.proxy_addr, 4).await;
    // One request on the connection, one pending for it; the rest overflow.
    assert_eq!(ok(&responses), 2, "{responses:?}");
    assert_eq!(overloaded(&responses), 2, "{responses:?}");
    assert_eq!(accepts.load(Ordering::SeqCst), 1, "one upstream connection");
    assert!(log_lines(&h).contains(" 503 UO "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_one_disables_keepalive() {
    let (upstream, accepts) = slow_upstream(Duration::ZERO).await;
    let h = harness(upstream, "      http: {maxRequestsPerConnection: 1}").await;
    for _ in 0..3 {
        assert_eq!(get(h.proxy_addr).await.0, 200);
    }
    assert_eq!(accepts.load(Ordering::SeqCst), 3);

    // Without the limit the connection is reused.
    let (upstream, accepts) = slow_upstream(Duration::ZERO).await;
    let h = harness(upstream, "      http: {maxRequestsPerConnection: 0}").await;
    for _ in 0..3 {
        assert_eq!(get(h.proxy_addr).await.0, 200);
    }
    assert_eq!(accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_n_rotates_connections() {
    let (upstream, accepts) = slow_upstream(Duration::ZERO).await;
    let h = harness(upstream, "      http: {maxRequestsPerConnection: 2}").await;
    for _ in 0..4 {
        assert_eq!(get(h.proxy_addr).await.0, 200);
    }
    assert_eq!(accepts.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_the_failing_endpoint() {
    let (good, _) = upstream(Duration::ZERO, 200).await;
    let (bad, bad_accepts) = upstream(Duration::ZERO, 503).await;
    let h = harness_with(
        &[good, bad],
        "    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}",
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(h.proxy_addr).await.0);
    }
    let failures = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(failures, 2, "ejected after two 5xx: {statuses:?}");
    assert!(statuses[6..].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(bad_accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_ejected_is_503_uh() {
    let (bad, _) = upstream(Duration::ZERO, 500).await;
    let h = harness_with(
        &[bad],
        "    outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 30s}",
    )
    .await;
    assert_eq!(get(h.proxy_addr).await.0, 500);
    let (status, head) = get(h.proxy_addr).await;
    assert_eq!(status, 503);
    assert!(head.ends_with("no healthy upstream"), "{head}");
    assert!(log_lines(&h).contains(" 503 UH no_healthy_upstream "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_hash_sets_the_cookie_when_missing() {
    let (up, _) = upstream(Duration::ZERO, 200).await;
    let h = harness_with(
        &[up],
        "    loadBalancer:\n      consistentHash:\n        httpCookie: {name: user, path: /, ttl: 60s}",
    )
    .await;
    let (status, head) = get(h.proxy_addr).await;
    assert_eq!(status, 200);
    let line = head
        .lines()
        .find(|l| l.starts_with("set-cookie: "))
        .unwrap_or_else(|| panic!("no set-cookie: {head}"));
    assert!(line.starts_with("set-cookie: user=\""), "{line}");
    assert!(line.ends_with("\"; max-age=60; path=/; httponly"), "{line}");
}

/// A raw HTTP/1.1 upstream: every connection is handed to `serve` (counted in the returned
/// accepts), which reads requests and writes responses itself.
async fn raw_upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    (addr, accepts)
}

/// Reads one request head (these tests send no request bodies); false at end of stream.
async fn read_head(s: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// A keep-alive client of the proxy: `n` requests on one connection, each response read whole.
async fn keepalive_gets(proxy: SocketAddr, n: usize) -> Vec<(u16, Bytes)> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut out = Vec::new();
    for _ in 0..n {
        let req = hyper::Request::get("http://svc.example.com/")
            .header("host", "svc.example.com")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        send.ready().await.unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        out.push((status, body));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_upstream_closed_is_not_used() {
    // Answers one request with keep-alive, then closes the connection while it is idle.
    let (up, accepts) = raw_upstream(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let h = harness(up, "      http: {idleTimeout: 60s}").await;
    for _ in 0..3 {
        assert_eq!(get(h.proxy_addr).await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepts.load(Ordering::SeqCst), 3);
    assert!(!log_lines(&h).contains(" 503 "), "{}", log_lines(&h));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_read_to_the_end_returns_its_connection() {
    let (up, accepts) = raw_upstream(|mut s| async move {
        while read_head(&mut s).await {
            let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                            3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n";
            if s.write_all(chunked).await.is_err() {
                return;
            }
        }
    })
    .await;
    let h = harness(up, "      http: {idleTimeout: 60s}").await;
    let responses = keepalive_gets(h.proxy_addr, 4).await;
    assert!(
        responses.iter().all(|(s, b)| *s == 200 && b == "abcdef"),
        "{responses:?}"
    );
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        1,
        "one kept-alive connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_the_client_left_half_read_closes_its_connection() {
    // Answers that pause after their first bytes: a client that leaves after the head leaves
    // the rest unread upstream.
    let (up, accepts) = raw_upstream(|mut s| async move {
        while read_head(&mut s).await {
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789";
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(&[b'x'; 990]).await.is_err() {
                return;
            }
        }
    })
    .await;
    let h = harness(up, "      http: {idleTimeout: 60s}").await;
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(b"GET http://svc.example.com/ HTTP/1.1\r\nhost: svc.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let _ = s.read(&mut first).await.unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"));
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The next request does not find the rest of the old body on a reused connection.
    let responses = keepalive_gets(h.proxy_addr, 2).await;
    assert!(
        responses.iter().all(|(s, b)| *s == 200 && b.len() == 1000),
        "{:?}",
        responses
            .iter()
            .map(|(s, b)| (s, b.len()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        2,
        "the half-read one was closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_from_the_upstream_is_honoured() {
    let (up, accepts) = raw_upstream(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let h = harness(up, "      http: {idleTimeout: 60s}").await;
    let responses = keepalive_gets(h.proxy_addr, 3).await;
    assert!(
        responses.iter().all(|(s, b)| *s == 200 && b == "ok"),
        "{responses:?}"
    );
    assert_eq!(accepts.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_keepalive_clients_get_every_body_whole() {
    // Slow and fast answers interleaved, so connections are opened, returned and reused while
    // others are busy.
    let (up, _) = raw_upstream(|mut s| async move {
        let mut n = 0u32;
        while read_head(&mut s).await {
            n += 1;
            if n.is_multiple_of(3) {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            let body = format!("answer {n}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let h = harness(up, "      http: {idleTimeout: 60s}").await;
    let clients: Vec<_> = (0..6)
        .map(|_| tokio::spawn(keepalive_gets(h.proxy_addr, 12)))
        .collect();
    for c in clients {
        for (status, body) in c.await.unwrap() {
            assert_eq!(status, 200);
            assert!(body.starts_with(b"answer "), "{body:?}");
        }
    }
    let log = log_lines(&h);
    assert_eq!(log.matches(" 200 - via_upstream ").count(), 72, "{log}");
}

/// A VirtualService for `svc.example.com` with `retries` as given (flow mapping).
fn retries_vs(retries: &str) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc, namespace: default}}
spec:
  hosts: [svc.example.com]
  http:
  - route:
    - destination: {{host: svc.example.com}}
    retries: {retries}
"#
    )
}

/// An upstream whose first connection misbehaves with `first` (then closes) and whose later
/// connections answer 200 `ok`.
async fn fails_once<F, Fut>(first: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let first = Arc::new(first);
    let seen = Arc::new(AtomicUsize::new(0));
    raw_upstream(move |mut s| {
        let first = first.clone();
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                first(s).await;
                return;
            }
            while read_head(&mut s).await {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if s.write_all(ok).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// The first request hangs past the per-try timeout.
async fn hangs_once() -> (SocketAddr, Arc<AtomicUsize>) {
    fails_once(|mut s| async move {
        read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await
}

/// The first request's connection is closed before any response.
async fn resets_once() -> (SocketAddr, Arc<AtomicUsize>) {
    fails_once(|mut s| async move {
        read_head(&mut s).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_is_retried_when_retry_on_covers_it() {
    for retry_on in ["5xx", "gateway-error", "reset"] {
        let (upstream, accepts) = hangs_once().await;
        let vs = retries_vs(&format!(
            "{{attempts: 2, perTryTimeout: 200ms, retryOn: \"{retry_on}\"}}"
        ));
        let h = harness_yaml(&[upstream], "    {}", &vs).await;
        let (status, head) = get(h.proxy_addr).await;
        assert_eq!(status, 200, "retryOn {retry_on}: {head}");
        assert_eq!(accepts.load(Ordering::SeqCst), 2, "retryOn {retry_on}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_is_not_retried_under_istios_default_retry_on() {
    // Istio's default retryOn (connect-failure, refused-stream, retriable-status-codes, …) does
    // not cover a try that timed out: Envoy answers 504 UT at once.
    let (upstream, accepts) = hangs_once().await;
    let vs = retries_vs("{attempts: 2, perTryTimeout: 200ms}");
    let h = harness_yaml(&[upstream], "    {}", &vs).await;
    let (status, head) = get(h.proxy_addr).await;
    assert_eq!(status, 504, "{head}");
    assert!(head.contains("upstream request timeout"), "{head}");
    assert_eq!(accepts.load(Ordering::SeqCst), 1);
    let log = log_lines(&h);
    assert!(log.contains(" 504 UT upstream_per_try_timeout "), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_retried_under_5xx_but_not_under_connect_failure() {
    let (upstream, accepts) = resets_once().await;
    let h = harness_yaml(
        &[upstream],
        "    {}",
        &retries_vs("{attempts: 1, retryOn: 5xx}"),
    )
    .await;
    let (status, head) = get(h.proxy_addr).await;
    assert_eq!(status, 200, "5xx counts a reset as a 5xx: {head}");
    assert_eq!(accepts.load(Ordering::SeqCst), 2);

    let (upstream, accepts) = resets_once().await;
    let vs = retries_vs("{attempts: 1, retryOn: connect-failure}");
    let h = harness_yaml(&[upstream], "    {}", &vs).await;
    let (status, head) = get(h.proxy_addr).await;
    assert_eq!(status, 503, "{head}");
    assert!(
        head.contains("reset reason: connection termination"),
        "{head}"
    );
    assert_eq!(accepts.load(Ordering::SeqCst), 1);
    let log = log_lines(&h);
    assert!(
        log.contains(" 503 UC upstream_reset_before_response_started{connection_termination} "),
        "{log}"
    );
}
