//! Admin (15000), status (15021) and stats (15090) servers over real sockets.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_proxy::admin::{serve_admin, serve_stats, serve_status, AdminSource, QuitSignal};
use sluice_proxy::telemetry::metrics::PROMETHEUS_CONTENT_TYPE;
use sluice_proxy::telemetry::{
    HttpLabels, Metrics, PeerLabels, Reporter, RequestProtocol, SecurityPolicy, ServiceLabels,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct FakeSource {
    ready: AtomicBool,
}

impl AdminSource for FakeSource {
    fn config_dump(&self) -> serde_json::Value {
        serde_json::json!({"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"}]})
    }
    fn clusters_text(&self) -> String {
        "outbound|80||httpbin.org::10.0.0.1:80::cx_active::0\n".into()
    }
    fn clusters_json(&self) -> serde_json::Value {
        serde_json::json!({"cluster_statuses": [{"name": "outbound|80||httpbin.org"}]})
    }
    fn listeners_text(&self) -> String {
        "virtualOutbound::0.0.0.0:15001\nvirtualInbound::0.0.0.0:15006\n".into()
    }
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    fn not_ready_reason(&self) -> String {
        "config not loaded from /etc/sluice".into()
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection, read until the server closes.
async fn request(addr: SocketAddr, method: &str, target: &str) -> Reply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response within 10s")
        .unwrap();
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body separator");
    let mut head_lines = head.split("\r\n");
    let status_line = head_lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers = head_lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

struct Servers {
    admin: SocketAddr,
    status: SocketAddr,
    stats: SocketAddr,
    source: Arc<FakeSource>,
    quit: QuitSignal,
    stop: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
}

fn labels() -> HttpLabels {
    HttpLabels {
        reporter: Reporter::Source,
        source: Arc::new(PeerLabels::unknown()),
        destination: Arc::new(PeerLabels::unknown()),
        destination_service: Arc::new(ServiceLabels::special_cluster("PassthroughCluster")),
        request_protocol: RequestProtocol::Http,
        response_flags: Cow::Borrowed("-"),
        connection_security_policy: SecurityPolicy::Unknown,
        response_code: 200,
        grpc_response_status: None,
        tags: None,
    }
}

async fn start() -> Servers {
    let source = Arc::new(FakeSource {
        ready: AtomicBool::new(true),
    });
    let metrics = Arc::new(Metrics::new("0.1.0-test"));
    metrics.record_http(&labels(), Duration::from_millis(3), 0, 10);
    let quit = QuitSignal::new();
    let mut stop = Vec::new();
    let mut tasks = Vec::new();

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    stop.push(tx);
    tasks.push(tokio::spawn(serve_admin(
        l,
        source.clone(),
        metrics.clone(),
        quit.clone(),
        async move {
            let _ = rx.await;
        },
    )));

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let status = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    stop.push(tx);
    tasks.push(tokio::spawn(serve_status(l, source.clone(), async move {
        let _ = rx.await;
    })));

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stats = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    stop.push(tx);
    tasks.push(tokio::spawn(serve_stats(l, metrics, async move {
        let _ = rx.await;
    })));

    Servers {
        admin,
        status,
        stats,
        source,
        quit,
        stop,
        tasks,
    }
}

impl Servers {
    async fn shutdown(self) {
        for tx in self.stop {
            let _ = tx.send(());
        }
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("server stops within 5s after shutdown")
                .unwrap()
                .unwrap();
        }
    }
}

#[tokio::test]
async fn admin_read_endpoints() {
    let s = start().await;

    let r = request(s.admin, "GET", "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));

    let r = request(s.admin, "GET", "/config_dump").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v["configs"][0]["@type"],
        "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"
    );

    let r = request(s.admin, "GET", "/clusters").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        "outbound|80||httpbin.org::10.0.0.1:80::cx_active::0\n"
    );
    let r = request(s.admin, "GET", "/clusters?format=json").await;
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["cluster_statuses"][0]["name"], "outbound|80||httpbin.org");

    let r = request(s.admin, "GET", "/listeners").await;
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("virtualOutbound::0.0.0.0:15001\n"));
    let r = request(s.admin, "GET", "/listeners?format=json").await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["listener_statuses"][1]["name"], "virtualInbound");
    assert_eq!(
        v["listener_statuses"][1]["local_address"]["socket_address"]["port_value"],
        15006
    );

    for target in ["/stats/prometheus", "/stats?format=prometheus"] {
        let r = request(s.admin, "GET", target).await;
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.header("content-type"), Some(PROMETHEUS_CONTENT_TYPE));
        assert!(
            r.body.contains("# TYPE istio_requests_total counter\n"),
            "{}",
            r.body
        );
        assert!(r
            .body
            .contains(r#"destination_service_name="PassthroughCluster""#));
    }

    let r = request(s.admin, "GET", "/stats").await;
    assert_eq!(r.status, 200);
    let line = r
        .body
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .expect("istio_requests_total in /stats");
    assert!(line.ends_with("}: 1"), "{line}");
    assert!(!r.body.contains("_bucket"), "{}", r.body);

    let r = request(s.admin, "GET", "/stats?filter=sluice_config&format=json").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let names: Vec<&str> = v["stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["sluice_config_reloads_total", "sluice_config_errors"]
    );
    assert_eq!(v["stats"][0]["value"], 0);

    let r = request(s.admin, "GET", "/stats?filter=%28bad").await;
    assert_eq!(r.status, 400);

    let r = request(s.admin, "GET", "/server_info").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["state"], "LIVE");
    assert_eq!(v["version"], "sluice/0.1.0-test");
    assert!(v["uptime_current_epoch"].as_str().unwrap().ends_with('s'));

    let r = request(s.admin, "GET", "/").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("/quitquitquit"));

    let r = request(s.admin, "GET", "/no/such/endpoint").await;
    assert_eq!(r.status, 404);

    s.source.ready.store(false, Ordering::SeqCst);
    let r = request(s.admin, "GET", "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "INITIALIZING\n"));

    s.shutdown().await;
}

#[tokio::test]
async fn quitquitquit_requires_post_and_fires() {
    let s = start().await;

    let r = request(s.admin, "GET", "/quitquitquit").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("POST required"), "{}", r.body);
    assert!(!s.quit.is_triggered());

    let waiter = {
        let quit = s.quit.clone();
        tokio::spawn(async move { quit.triggered().await })
    };
    let r = request(s.admin, "POST", "/quitquitquit").await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK\n"));
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("quit signal fires")
        .unwrap();
    // Sticky: a late waiter completes at once.
    tokio::time::timeout(Duration::from_secs(1), s.quit.triggered())
        .await
        .expect("late waiter");

    let r = request(s.admin, "GET", "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "DRAINING\n"));

    s.shutdown().await;
}

#[tokio::test]
async fn status_port_readiness() {
    let s = start().await;

    let r = request(s.status, "GET", "/healthz/ready").await;
    assert_eq!(r.status, 200);

    s.source.ready.store(false, Ordering::SeqCst);
    let r = request(s.status, "GET", "/healthz/ready").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "config not loaded from /etc/sluice\n");

    let r = request(s.status, "GET", "/stats/prometheus").await;
    assert_eq!(r.status, 404);

    s.shutdown().await;
}

#[tokio::test]
async fn stats_port_serves_prometheus() {
    let s = start().await;

    let r = request(s.stats, "GET", "/stats/prometheus").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(r.body.contains("istio_requests_total{reporter=\"source\""));
    assert!(r
        .body
        .contains("istio_build{component=\"proxy\",tag=\"0.1.0-test\"} 1"));
    assert!(!r.body.contains("# EOF"));

    let r = request(s.stats, "GET", "/ready").await;
    assert_eq!(r.status, 404);

    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_keepalive_clients() {
    let s = start().await;
    // An idle keep-alive connection that never sends a request.
    let _idle = TcpStream::connect(s.admin).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.shutdown().await;
}
