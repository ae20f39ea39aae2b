//! The `Sidecar` resource's listeners, without iptables: ingress listeners (their port's
//! protocol and `defaultEndpoint`, on the captured inbound listener with an injected original
//! destination, and bound by the sidecar itself with `captureMode: NONE`), egress listeners split
//! by port (through the explicit proxy, which routes by the port the client names), and bound
//! egress listeners routing by Host. `curl` is the HTTP client; the applications are real
//! servers on loopback and on a unix socket.

mod common;

use std::future::pending;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::Telemetry;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_model::{ProxyIdentity, ProxyKind, Snapshot};
use sluice_proxy::context::Proxy;
use sluice_proxy::inbound::serve_inbound;
use sluice_proxy::outbound::serve_forward_proxy;
use sluice_proxy::sidecar_listeners::SidecarListenerSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};

const LOG_FORMAT: &str = "%UPSTREAM_CLUSTER% %UPSTREAM_HOST% %RESPONSE_CODE%";

/// Compiles `yaml` (which must be valid) for a sidecar in `default` at `generation`.
fn compile(yaml: &str, generation: u64) -> Snapshot {
    let loaded = sluice_api::decode_str(Path::new("sidecar.yaml"), yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let identity = ProxyIdentity {
        namespace: "default".into(),
        labels: [("app".to_string(), "web".to_string())]
            .into_iter()
            .collect(),
        service_account: None,
        kind: ProxyKind::Sidecar,
    };
    sluice_model::compile(&loaded.resources, &identity, generation)
}

/// An HTTP application on loopback answering `<name> saw <path>`.
async fn named_app(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            serve_named(TokioIo::new(stream), name);
        }
    });
    addr
}

fn serve_named<I>(io: I, name: &'static str)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req: Request<Incoming>| async move {
            let body = format!("{name} saw {}", req.uri().path());
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    });
}

/// `curl` with `args`; returns (exit code, body). Run off the runtime: curl blocks.
async fn curl(args: &[&str]) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .args(&args)
            .output()
            .expect("curl must be installed (apt-get install curl)");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// `curl -w '%{http_code}'` to `url`: (status, body).
async fn get(url: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["-w", "\n%{http_code}", url];
    args.extend_from_slice(extra);
    let (_, out) = curl(&args).await;
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.to_string(), body.to_string())
}

/// The captured inbound listener, with every connection's original destination `dst`.
async fn inbound_listener(proxy: Arc<Proxy>, dst: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_inbound(listener, proxy, move |_| Ok(dst), pending()));
    addr
}

#[tokio::test]
async fn an_ingress_port_goes_to_its_default_endpoint_with_inbound_cluster_naming() {
    let app = named_app("app").await;
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: web, namespace: default}}
spec:
  ingress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{}
"#,
        app.port()
    );
    let telemetry = Telemetry::new(LOG_FORMAT);
    let proxy = Arc::new(telemetry.proxy(compile(&yaml, 1), "default", None));

    // Captured for the workload's port 9080 (nothing listens there): delivered to the app's port.
    let on_9080 = inbound_listener(proxy.clone(), "127.0.0.1:9080".parse().unwrap()).await;
    let (code, body) = get(&format!("http://{on_9080}/hello"), &[]).await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "app saw /hello"));

    // A port no ingress listener lists is Istio's inbound passthrough: the original destination.
    let direct = inbound_listener(proxy.clone(), app).await;
    let (code, body) = get(&format!("http://{direct}/other"), &[]).await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "app saw /other"));

    let lines = telemetry.lines(2).await;
    assert_eq!(lines[0], format!("inbound|9080|| {app} 200"));
    assert_eq!(lines[1], format!("InboundPassthroughClusterIpv4 {app} 200"));
}

#[tokio::test]
async fn an_ingress_port_reaches_an_application_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    let unix = UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = unix.accept().await {
            serve_named(TokioIo::new(stream), "unix app");
        }
    });
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: web, namespace: default}}
spec:
  ingress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    defaultEndpoint: unix://{path}
  - port: {{number: 9081, protocol: TCP, name: tcp}}
    defaultEndpoint: unix://{path}
"#,
        path = socket.display()
    );
    let telemetry = Telemetry::new(LOG_FORMAT);
    let proxy = Arc::new(telemetry.proxy(compile(&yaml, 1), "default", None));

    // HTTP: requests forwarded over the socket, several on one client connection.
    let http = inbound_listener(proxy.clone(), "127.0.0.1:9080".parse().unwrap()).await;
    let (code, body) = get(
        &format!("http://{http}/one"),
        &[
            "--next",
            "-w",
            "\n%{http_code}",
            &format!("http://{http}/two"),
        ],
    )
    .await;
    assert_eq!(code, "200");
    assert!(body.starts_with("unix app saw /one"), "{body}");
    assert!(body.ends_with("unix app saw /two"), "{body}");

    // TCP: bytes copied to the socket as they are.
    let tcp = inbound_listener(proxy.clone(), "127.0.0.1:9081".parse().unwrap()).await;
    let mut conn = TcpStream::connect(tcp).await.unwrap();
    conn.write_all(b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with("unix app saw /raw"), "{raw}");
    drop(conn);

    let lines = telemetry.lines(3).await;
    // No TCP address for a unix socket: `%UPSTREAM_HOST%` is `-`.
    assert!(
        lines.contains(&"inbound|9080|| - 200".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"inbound|9081|| - 0".to_string()),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_capture_none_ingress_listener_is_bound_by_the_sidecar() {
    let app = named_app("app").await;
    let (port, loop_port) = (common::free_port(), common::free_port());
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: web, namespace: default}}
spec:
  ingress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: 127.0.0.1
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:{app_port}
  - port: {{number: {loop_port}, protocol: HTTP, name: http-loop}}
    bind: 127.0.0.1
    captureMode: NONE
"#,
        app_port = app.port()
    );
    let telemetry = Telemetry::new(LOG_FORMAT);
    let proxy = Arc::new(telemetry.proxy(compile(&yaml, 1), "default", None));
    let mut listeners = SidecarListenerSet::new(proxy.clone());
    listeners.reconcile(&proxy.snapshots.load_full()).await;
    let status = listeners.status().load_full();
    assert!(
        status
            .bound
            .iter()
            .any(|(name, _)| *name == format!("127.0.0.1_{port}")),
        "{status:?}"
    );

    let (code, body) = get(&format!("http://127.0.0.1:{port}/bound"), &[]).await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "app saw /bound"));
    let lines = telemetry.lines(1).await;
    assert_eq!(lines[0], format!("inbound|{port}|| {app} 200"));

    // Without defaultEndpoint the original destination is the listener itself: refused, not
    // looped back into it.
    let (exit, _) = curl(&[&format!("http://127.0.0.1:{loop_port}/")]).await;
    // 52: closed before curl's request was read; 56: reset after it was (unread data).
    assert!(
        exit == 52 || exit == 56,
        "curl should see the connection closed without a reply, got exit {exit}"
    );
}

/// Two ServiceEntries on loopback apps, each with ports 9080 and 9081.
fn two_services(a: SocketAddr, b: SocketAddr) -> String {
    let entry = |name: &str, app: SocketAddr| {
        format!(
            r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 9080, name: http-a, protocol: HTTP}}
  - {{number: 9081, name: http-b, protocol: HTTP}}
  endpoints:
  - address: 127.0.0.1
    ports: {{http-a: {port}, http-b: {port}}}
"#,
            port = app.port()
        )
    };
    format!("{}{}", entry("svc-a", a), entry("svc-b", b))
}

#[tokio::test]
async fn an_egress_listener_with_a_port_scopes_only_that_port() {
    let (a, b) = (named_app("a").await, named_app("b").await);
    let yaml = format!(
        r#"{}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: web, namespace: default}}
spec:
  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
  egress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    hosts: [./svc-a.test]
  - hosts: [./svc-b.test]
"#,
        two_services(a, b)
    );
    let telemetry = Telemetry::new(LOG_FORMAT);
    let proxy = Arc::new(telemetry.proxy(compile(&yaml, 1), "default", None));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forward = listener.local_addr().unwrap();
    tokio::spawn(serve_forward_proxy(listener, proxy, pending()));
    let via = format!("http://{forward}");

    // svc-a: imported by the 9080 listener only.
    let (code, body) = get("http://svc-a.test:9080/x", &["-x", &via]).await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "a saw /x"));
    let (code, _) = get("http://svc-a.test:9081/x", &["-x", &via]).await;
    assert_eq!(code, "502", "svc-a is not imported on port 9081");
    // svc-b: imported by the catch-all listener, which does not apply to port 9080.
    let (code, body) = get("http://svc-b.test:9081/y", &["-x", &via]).await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "b saw /y"));
    let (code, _) = get("http://svc-b.test:9080/y", &["-x", &via]).await;
    assert_eq!(
        code, "502",
        "port 9080 has a listener of its own without svc-b"
    );

    let lines = telemetry.lines(4).await;
    assert_eq!(lines[0], format!("outbound|9080||svc-a.test {a} 200"));
    // Refused as an unknown host is under REGISTRY_ONLY (route `block_all`, no cluster).
    assert_eq!(lines[1], "- - 502");
}

#[tokio::test]
async fn a_bound_egress_listener_routes_by_host_among_its_hosts() {
    let (a, b) = (named_app("a").await, named_app("b").await);
    let tcp_app = common::tcp_app().await;
    let (http_port, tcp_port) = (common::free_port(), common::free_port());
    let yaml = format!(
        r#"{services}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: default}}
spec:
  hosts: [db.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: {tcp_port}, name: tcp, protocol: TCP}}
  endpoints:
  - address: 127.0.0.1
    ports: {{tcp: {tcp_app_port}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: web, namespace: default}}
spec:
  egress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: [./svc-a.test, ./svc-b.test]
  - port: {{number: {tcp_port}, protocol: TCP, name: tcp}}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: [./db.test]
  - hosts: [./*]
"#,
        services = two_services(a, b).replace("9080", &http_port.to_string()),
        tcp_app_port = tcp_app.port(),
    )
    .replace(
        "number: 9080, protocol: HTTP",
        &format!("number: {http_port}, protocol: HTTP"),
    );
    let telemetry = Telemetry::new(LOG_FORMAT);
    let proxy = Arc::new(telemetry.proxy(compile(&yaml, 1), "default", None));
    let mut listeners = SidecarListenerSet::new(proxy.clone());
    listeners.reconcile(&proxy.snapshots.load_full()).await;

    let url = format!("http://127.0.0.1:{http_port}/p");
    let (code, body) = get(&url, &["-H", "Host: svc-a.test"]).await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "a saw /p"));
    let (code, body) = get(&url, &["-H", &format!("Host: svc-b.test:{http_port}")]).await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "b saw /p"));
    // A host the listener does not import is refused even under ALLOW_ANY: passing it through
    // would send it to the listener itself.
    let (code, _) = get(&url, &["-H", "Host: elsewhere.test"]).await;
    assert_eq!(code, "502");

    // TCP: the listener's one service.
    let mut conn = TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
    conn.write_all(b"ping\n").await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, "echo ping\n");
}

#[tokio::test]
async fn bound_listeners_open_and_close_with_the_sidecar_resource() {
    let app = named_app("app").await;
    let (first, second) = (common::free_port(), common::free_port());
    let sidecar = |port: u16| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: web, namespace: default}}
spec:
  ingress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: 127.0.0.1
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:{}
"#,
            app.port()
        )
    };
    let telemetry = Telemetry::new(LOG_FORMAT);
    let proxy = Arc::new(telemetry.proxy(compile(&sidecar(first), 1), "default", None));
    let listeners = SidecarListenerSet::new(proxy.clone());
    let status = listeners.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let following = tokio::spawn(listeners.follow(proxy.snapshots.clone(), async move {
        let _ = stopped.await;
    }));

    let reachable = |port: u16| async move {
        get(&format!("http://127.0.0.1:{port}/live"), &[]).await.0 == "200"
    };
    let eventually = |port: u16, want: bool| async move {
        for _ in 0..50 {
            if reachable(port).await == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(eventually(first, true).await, "first listener never opened");

    proxy
        .snapshots
        .store(Arc::new(compile(&sidecar(second), 2)));
    assert!(
        eventually(second, true).await,
        "second listener never opened"
    );
    assert!(
        eventually(first, false).await,
        "first listener never closed"
    );
    let names: Vec<String> = status.load().bound.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, vec![format!("127.0.0.1_{second}")]);

    // No Sidecar: nothing bound.
    proxy.snapshots.store(Arc::new(compile("", 3)));
    assert!(
        eventually(second, false).await,
        "second listener never closed"
    );
    drop(stop);
    following.await.unwrap();
}
