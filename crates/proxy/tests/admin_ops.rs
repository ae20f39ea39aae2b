//! The operator endpoints that change behaviour, through real sockets and the real runtime
//! wiring: `/logging`, `/drain_listeners`, `/healthcheck/fail|ok` and `/certs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_model::{ProxyIdentity, ProxyKind};
use sluice_proxy::admin::{
    certs_json, serve_admin_with, AdminControls, AdminSource, LogControl, QuitSignal,
};
use sluice_proxy::context::Proxy;
use sluice_proxy::identity::{create_root, write_root_files, Identity, IdentityOptions};
use sluice_proxy::outbound::serve_forward_proxy;
use sluice_proxy::runtime::{OperatorListeners, OperatorPorts, Runtime};
use sluice_proxy::telemetry::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Source;

impl AdminSource for Source {
    fn config_dump(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn clusters_text(&self) -> String {
        String::new()
    }
    fn clusters_json(&self) -> serde_json::Value {
        serde_json::json!({"cluster_statuses": []})
    }
    fn listeners_text(&self) -> String {
        String::new()
    }
    fn is_ready(&self) -> bool {
        true
    }
}

/// Records what `/logging` applied.
#[derive(Default)]
struct RecordingLog(Mutex<Vec<String>>);

impl LogControl for RecordingLog {
    fn initial(&self) -> String {
        "info".to_string()
    }
    fn apply(&self, directives: &str) -> Result<(), String> {
        if directives.contains("refuse") {
            return Err("refused by test".into());
        }
        self.0.lock().unwrap().push(directives.to_string());
        Ok(())
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).await.unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn logging_lists_and_changes_levels() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(RecordingLog::default());
    let controls = AdminControls {
        log: Some(log.clone()),
        ..Default::default()
    };
    tokio::spawn(serve_admin_with(
        listener,
        Arc::new(Source),
        Arc::new(Metrics::new("test")),
        QuitSignal::new(),
        controls,
        std::future::pending(),
    ));

    let (status, body) = request(addr, "GET", "/logging").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("active loggers:\n"), "{body}");
    assert!(body.contains("  sluice_proxy: info\n"), "{body}");

    let (status, body) = request(addr, "POST", "/logging?level=debug").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("  sluice_proxy: debug\n"), "{body}");
    let (status, body) = request(addr, "POST", "/logging?sluice_proxy=trace").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("  sluice_proxy: trace\n"), "{body}");
    assert!(body.contains("  hyper: debug\n"), "{body}");
    assert_eq!(
        *log.0.lock().unwrap(),
        vec!["debug".to_string(), "debug,sluice_proxy=trace".to_string()]
    );
    // GET shows the new levels.
    let (_, body) = request(addr, "GET", "/logging").await;
    assert!(body.contains("  sluice_proxy: trace\n"), "{body}");

    // Changes must be POSTed; bad levels are refused with usage.
    let (status, _) = request(addr, "GET", "/logging?level=trace").await;
    assert_eq!(status, 400);
    let (status, body) = request(addr, "POST", "/logging?level=loud").await;
    assert_eq!(status, 400);
    assert!(body.contains("usage:"), "{body}");
    let (status, _) = request(addr, "POST", "/logging?refuse=info").await;
    assert_eq!(status, 400);
    assert_eq!(log.0.lock().unwrap().len(), 2);

    // /certs without an identity.
    let (status, body) = request(addr, "GET", "/certs").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({"certificates": []}));
}

/// An upstream that answers `ok`.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
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

/// Sends a keep-alive request on `c` and reads one response (Content-Length framed).
async fn keepalive_get(c: &mut TcpStream) -> String {
    c.write_all(b"GET http://svc.example.com/ HTTP/1.1\r\nHost: svc.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn drain_and_healthcheck_change_what_the_proxy_does() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("se.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc, namespace: default}}\nspec:\n  hosts: [svc.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  location: MESH_EXTERNAL\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]\n",
            up.port()
        ),
    )
    .unwrap();
    let rt = Runtime::load(
        dir.path(),
        ProxyIdentity {
            namespace: "default".into(),
            labels: Default::default(),
            service_account: None,
            kind: ProxyKind::Sidecar,
        },
    )
    .await
    .unwrap();
    let proxy = Arc::new(Proxy::new(
        rt.snapshots.clone(),
        rt.access_log.clone(),
        rt.metrics.clone(),
        "default",
        &Default::default(),
    ));
    let ports = OperatorPorts {
        admin: free_port(),
        status: free_port(),
        stats: free_port(),
    };
    let operator = OperatorListeners::bind(ports).await.unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", ports.admin).parse().unwrap();
    let health: SocketAddr = format!("127.0.0.1:{}", ports.status).parse().unwrap();
    let data = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let data_addr = data.local_addr().unwrap();
    tokio::spawn(serve_forward_proxy(data, proxy, rt.listeners_stopped()));
    rt.spawn_operator(operator, Arc::new(Source));

    assert_eq!(request(health, "GET", "/healthz/ready").await.0, 200);
    assert_eq!(
        request(admin, "GET", "/ready").await,
        (200, "LIVE\n".into())
    );

    // Health check override: 15021 flips, traffic does not.
    assert_eq!(request(admin, "GET", "/healthcheck/fail").await.0, 400);
    assert_eq!(request(admin, "POST", "/healthcheck/fail").await.0, 200);
    assert_eq!(request(health, "GET", "/healthz/ready").await.0, 503);
    let mut open = TcpStream::connect(data_addr).await.unwrap();
    let resp = keepalive_get(&mut open).await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"),
        "{resp}"
    );
    assert_eq!(request(admin, "POST", "/healthcheck/ok").await.0, 200);
    assert_eq!(request(health, "GET", "/healthz/ready").await.0, 200);

    // Drain: no new connections, the open keep-alive connection keeps working.
    assert_eq!(
        request(admin, "POST", "/drain_listeners").await,
        (200, "OK\n".into())
    );
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(data_addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "the data listener still accepts after /drain_listeners"
    );
    let resp = keepalive_get(&mut open).await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"),
        "{resp}"
    );
    assert_eq!(
        request(admin, "GET", "/ready").await,
        (503, "DRAINING\n".into())
    );
    assert_eq!(request(health, "GET", "/healthz/ready").await.0, 503);
    let (_, info) = request(admin, "GET", "/server_info").await;
    assert!(info.contains("\"DRAINING\""), "{info}");
    rt.shutdown();
}

#[tokio::test]
async fn certs_show_the_mesh_identity() {
    let ca = tempfile::tempdir().unwrap();
    let (cert, key) = create_root("cluster.local", Duration::from_secs(3600)).unwrap();
    write_root_files(ca.path(), &cert, &key, false).unwrap();
    let identity: Arc<Identity> = Identity::load(&IdentityOptions {
        mesh_ca: ca.path().to_path_buf(),
        identity_dir: None,
        trust_domain: "cluster.local".into(),
        namespace: "default".into(),
        service_account: "sleep".into(),
        cert_ttl: Duration::from_secs(2 * 86_400 + 3600),
        ca: None,
    })
    .unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_admin_with(
        listener,
        Arc::new(Source),
        Arc::new(Metrics::new("test")),
        QuitSignal::new(),
        AdminControls {
            identity: Some(identity.clone()),
            ..Default::default()
        },
        std::future::pending(),
    ));
    let (status, body) = request(addr, "GET", "/certs").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let leaf = &v["certificates"][0]["cert_chain"][0];
    assert_eq!(
        leaf["subject_alt_names"][0]["uri"], "spiffe://cluster.local/ns/default/sa/sleep",
        "{body}"
    );
    assert_eq!(leaf["days_until_expiration"], "2", "{body}");
    let serial = leaf["serial_number"].as_str().unwrap();
    assert!(
        !serial.is_empty() && serial.chars().all(|c| c.is_ascii_hexdigit()),
        "{body}"
    );
    for key in ["valid_from", "expiration_time"] {
        let t = leaf[key].as_str().unwrap();
        assert!(t.ends_with('Z') && t.len() == 20, "{key}: {t}");
    }
    assert_eq!(certs_json(Some(&identity)), v);
}
