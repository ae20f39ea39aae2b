//! WebSocket (HTTP/1.1 Upgrade) through every proxy path, with real sockets: the sidecar's
//! captured outbound side (the dispatch behind 15001), the explicit proxy (absolute form), the
//! inbound side behind mesh mutual TLS, and gateway listeners (HTTP and HTTPS servers, an egress
//! gateway reached from a sidecar). The upstream is a minimal WebSocket server speaking the
//! handshake's bytes and then echoing; the Python `websockets` peers are in the e2e test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_model::security::MtlsMode;
use sluice_model::ProxyKind;
use sluice_proxy::context::Target;
use sluice_proxy::gateway::listeners::ListenerSet;
use sluice_proxy::gateway::{gateway_proxy, Gateway};
use sluice_proxy::identity::Identity;
use sluice_proxy::inbound::serve_inbound;
use sluice_proxy::outbound::{dispatch, serve_forward_proxy};
use sluice_proxy::telemetry::Metrics;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{compile_yaml, free_port, gateway_labels, AnyCert, MeshCa, Telemetry};

const LOG_FORMAT: &str = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% \
%BYTES_RECEIVED% %BYTES_SENT% cluster=%UPSTREAM_CLUSTER_RAW% peer=%DOWNSTREAM_PEER_URI_SAN%\n";

const CLIENT_ID: &str = "spiffe://cluster.local/ns/client/sa/client-sa";
const SERVER_ID: &str = "spiffe://cluster.local/ns/server/sa/server-sa";

// === the WebSocket upstream ===

/// A WebSocket server: records each request head, answers 101 (or, with `accept: false`, a
/// plain 200 `not upgraded`) and then echoes every byte.
#[derive(Clone, Default)]
struct Upstream {
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start(accept: bool) -> (SocketAddr, Upstream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Upstream::default();
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                state.connections.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                tokio::spawn(async move {
                    let Ok((head, rest)) = read_head(&mut s).await else {
                        return;
                    };
                    let key = header_value(&head, "sec-websocket-key").unwrap_or_default();
                    state.heads.lock().unwrap().push(head);
                    if !accept {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nnot upgraded")
                            .await;
                        return;
                    }
                    let resp = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Accept: accept-for-{key}\r\n\r\n"
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    let _ = s.write_all(&rest).await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, up)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// Reads an HTTP head (lowercased) and whatever followed it in the same reads.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            return Ok((head, buf[end + 4..].to_vec()));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_string())
}

// === the client ===

/// Sends a WebSocket handshake for `target` (a path, or an absolute URI for the explicit proxy)
/// and returns the response head (lowercased) and its status.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    target: &str,
    upgrade: &str,
) -> (u16, String, Vec<u8>) {
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: {upgrade}\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, rest) = tokio::time::timeout(Duration::from_secs(10), read_head(s))
        .await
        .expect("a response head in time")
        .expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, rest)
}

/// Sends `msg` through an established tunnel and expects it echoed.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("the echo in time")
        .expect("the echo");
    assert_eq!(back, msg);
}

/// A full WebSocket exchange: 101 with the upgrade headers, then two echoes.
async fn websocket_session<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, host: &str, target: &str) {
    let (status, head, rest) = handshake(s, host, target, "websocket").await;
    assert_eq!(status, 101, "{head}");
    assert!(rest.is_empty());
    assert_eq!(
        header_value(&head, "upgrade").as_deref(),
        Some("websocket"),
        "{head}"
    );
    assert_eq!(
        header_value(&head, "connection").as_deref(),
        Some("upgrade"),
        "{head}"
    );
    assert_eq!(
        header_value(&head, "sec-websocket-accept").as_deref(),
        Some("accept-for-dghlihnhbxbszsbub25jzq=="),
        "{head}"
    );
    echo(s, b"hello").await;
    echo(s, b"world").await;
}

fn assert_forwarded_upgrade(up: &Upstream, request_line: &str) {
    let heads = up.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = &heads[0];
    assert!(head.starts_with(request_line), "{head}");
    assert_eq!(
        header_value(head, "upgrade").as_deref(),
        Some("websocket"),
        "{head}"
    );
    assert_eq!(
        header_value(head, "connection").as_deref(),
        Some("upgrade"),
        "{head}"
    );
    assert_eq!(
        header_value(head, "sec-websocket-version").as_deref(),
        Some("13"),
        "{head}"
    );
}

// === the sidecar's outbound side ===

/// A sidecar in `default` whose registry has `ws.test` (240.0.0.10:80, endpoint `up`), routed
/// with a 300 ms timeout, retries on 5xx and a mirror to `mirror.test` (endpoint `mirror`).
fn sidecar_yaml(up: SocketAddr, mirror: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ws, namespace: default}}
spec:
  hosts: [ws.test]
  addresses: [240.0.0.10]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{{address: 127.0.0.1, ports: {{http: {up}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mirror, namespace: default}}
spec:
  hosts: [mirror.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{{address: 127.0.0.1, ports: {{http: {mirror}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ws, namespace: default}}
spec:
  hosts: [ws.test]
  http:
  - timeout: 300ms
    retries: {{attempts: 3, retryOn: 5xx}}
    mirror: {{host: mirror.test}}
    route: [{{destination: {{host: ws.test}}}}]
"#,
        up = up.port(),
        mirror = mirror.port()
    )
}

/// The captured outbound listener without iptables: every connection is dispatched as if its
/// original destination were `dst`.
async fn captured(t: &Telemetry, yaml: &str, dst: SocketAddr) -> SocketAddr {
    let snap = compile_yaml(yaml, ProxyKind::Sidecar, "default");
    let proxy = Arc::new(t.proxy(snap, "default", None));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, remote)) = listener.accept().await {
            let target = Target {
                addr: dst,
                host: None,
            };
            tokio::spawn(dispatch(proxy.clone(), stream, remote, dst, target));
        }
    });
    addr
}

fn ws_dst() -> SocketAddr {
    "240.0.0.10:80".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_outbound_splices_and_the_route_timeout_does_not_cut_the_tunnel() {
    let (up_addr, up) = Upstream::start(true).await;
    let (mirror_addr, mirror) = Upstream::start(true).await;
    let t = Telemetry::new(LOG_FORMAT);
    let proxy = captured(&t, &sidecar_yaml(up_addr, mirror_addr), ws_dst()).await;

    let mut s = TcpStream::connect(proxy).await.unwrap();
    websocket_session(&mut s, "ws.test", "/chat").await;
    // Past the route's 300 ms timeout: it covered the wait for the 101 only.
    tokio::time::sleep(Duration::from_millis(700)).await;
    echo(&mut s, b"still open").await;
    drop(s);

    assert_forwarded_upgrade(&up, "get /chat http/1.1");
    let lines = t.lines(1).await;
    // 5 + 5 + 10 bytes each way, logged when the tunnel ended.
    assert!(
        lines[0].starts_with("101 - via_upstream 20 20 cluster=outbound|80||ws.test "),
        "{lines:?}"
    );
    let metric = t
        .metric_line(
            "istio_requests_total",
            &["response_code=\"101\"", "reporter=\"source\""],
        )
        .await;
    assert!(metric.is_some(), "{}", t.metrics.encode());
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "never retried");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        mirror.connections.load(Ordering::SeqCst),
        0,
        "never mirrored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_does_not_switch_is_relayed_as_a_normal_response() {
    let (up_addr, up) = Upstream::start(false).await;
    let (mirror_addr, _mirror) = Upstream::start(true).await;
    let t = Telemetry::new(LOG_FORMAT);
    let proxy = captured(&t, &sidecar_yaml(up_addr, mirror_addr), ws_dst()).await;

    let mut s = TcpStream::connect(proxy).await.unwrap();
    let (status, head, mut rest) = handshake(&mut s, "ws.test", "/chat", "websocket").await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(header_value(&head, "upgrade"), None, "{head}");
    while rest.len() < 12 {
        let mut chunk = [0u8; 64];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "body cut short: {rest:?}");
        rest.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(rest, b"not upgraded");
    assert_forwarded_upgrade(&up, "get /chat http/1.1");
    let lines = t.lines(1).await;
    assert!(lines[0].starts_with("200 - via_upstream "), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_upgrades_are_refused_and_h2c_is_dropped() {
    let (up_addr, up) = Upstream::start(false).await;
    let (mirror_addr, _mirror) = Upstream::start(true).await;
    let t = Telemetry::new(LOG_FORMAT);
    let proxy = captured(&t, &sidecar_yaml(up_addr, mirror_addr), ws_dst()).await;

    // Istio enables `websocket` only: Envoy refuses any other upgrade and closes.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let (status, head, _) = handshake(&mut s, "ws.test", "/x", "foo/1").await;
    assert_eq!(status, 403, "{head}");
    assert_eq!(
        header_value(&head, "connection").as_deref(),
        Some("close"),
        "{head}"
    );
    assert!(up.heads().is_empty(), "never forwarded: {:?}", up.heads());
    let lines = t.lines(1).await;
    assert!(lines[0].starts_with("403 - upgrade_failed "), "{lines:?}");

    // `Upgrade: h2c` is dropped and the request goes on as a plain one.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let (status, head, _) = handshake(&mut s, "ws.test", "/h2c", "h2c").await;
    assert_eq!(status, 200, "{head}");
    let heads = up.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert_eq!(header_value(&heads[0], "upgrade"), None, "{heads:?}");
    assert_eq!(header_value(&heads[0], "connection"), None, "{heads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_proxy_forwards_an_absolute_form_upgrade() {
    let (up_addr, up) = Upstream::start(true).await;
    let (mirror_addr, _mirror) = Upstream::start(true).await;
    let t = Telemetry::new(LOG_FORMAT);
    let snap = compile_yaml(
        &sidecar_yaml(up_addr, mirror_addr),
        ProxyKind::Sidecar,
        "default",
    );
    let proxy = Arc::new(t.proxy(snap, "default", None));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_forward_proxy(listener, proxy, std::future::pending()));

    let mut s = TcpStream::connect(addr).await.unwrap();
    websocket_session(&mut s, "ws.test", "http://ws.test/chat?room=1").await;
    drop(s);
    assert_forwarded_upgrade(&up, "get /chat?room=1 http/1.1");
    let lines = t.lines(1).await;
    assert!(
        lines[0].starts_with("101 - via_upstream 10 10 "),
        "{lines:?}"
    );
}

// === the inbound side, behind mesh mTLS ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_behind_mutual_tls_splices_and_authorization_still_applies() {
    let ca = MeshCa::new();
    let (app, up) = Upstream::start(true).await;

    // The server sidecar: STRICT, and a policy denying `/denied`.
    let server_yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-path, namespace: server}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/denied]}}]}]
"#;
    let mut snap = compile_yaml(server_yaml, ProxyKind::Sidecar, "server");
    snap.mtls_mode = MtlsMode::Strict;
    let server_t = Telemetry::new(LOG_FORMAT);
    let server = Arc::new(server_t.proxy(snap, "server", Some(ca.identity("server", "server-sa"))));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound = listener.local_addr().unwrap();
    tokio::spawn(serve_inbound(
        listener,
        server,
        move |_: &TcpStream| Ok(app),
        std::future::pending(),
    ));

    // The client sidecar (explicit proxy) originating ISTIO_MUTUAL.
    let client_yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server, namespace: client}}
spec:
  hosts: [server.mesh.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints: [{{address: 127.0.0.1, ports: {{http: {p}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: server, namespace: client}}
spec:
  host: server.mesh.test
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: ["{SERVER_ID}"]}}
"#,
        p = inbound.port()
    );
    let client_t = Telemetry::new(LOG_FORMAT);
    let client = client_identity_proxy(&client_t, &client_yaml, ca.identity("client", "client-sa"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client_addr = listener.local_addr().unwrap();
    tokio::spawn(serve_forward_proxy(
        listener,
        client,
        std::future::pending(),
    ));

    let mut s = TcpStream::connect(client_addr).await.unwrap();
    websocket_session(&mut s, "server.mesh.test", "http://server.mesh.test/chat").await;
    drop(s);
    assert_forwarded_upgrade(&up, "get /chat http/1.1");
    let lines = server_t.lines(1).await;
    assert!(
        lines[0].starts_with("101 - via_upstream 10 10 ")
            && lines[0].ends_with(&format!("peer={CLIENT_ID}")),
        "{lines:?}"
    );
    let metric = server_t
        .metric_line(
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                "response_code=\"101\"",
                "connection_security_policy=\"mutual_tls\"",
            ],
        )
        .await;
    assert!(metric.is_some(), "{}", server_t.metrics.encode());

    // The upgrade request is an HTTP request: the RBAC filter sees it.
    let mut s = TcpStream::connect(client_addr).await.unwrap();
    let (status, head, _) = handshake(
        &mut s,
        "server.mesh.test",
        "http://server.mesh.test/denied",
        "websocket",
    )
    .await;
    assert_eq!(status, 403, "{head}");
    assert_eq!(
        up.heads().len(),
        1,
        "the denied upgrade never reached the app"
    );
}

fn client_identity_proxy(
    t: &Telemetry,
    yaml: &str,
    identity: Arc<Identity>,
) -> Arc<sluice_proxy::context::Proxy> {
    let loaded = sluice_api::decode_str(std::path::Path::new("client.yaml"), yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let who = sluice_model::ProxyIdentity {
        namespace: "client".into(),
        labels: Default::default(),
        service_account: Some("client-sa".into()),
        kind: ProxyKind::Sidecar,
    };
    let snap = sluice_model::compile(&loaded.resources, &who, 1);
    Arc::new(t.proxy(snap, "client", Some(identity)))
}

// === gateways ===

/// A gateway (`istio=ingressgateway` in `istio-system`) serving `yaml`.
async fn gateway(yaml: &str, t: &Telemetry) -> ListenerSet {
    let snap = compile_yaml(yaml, ProxyKind::Gateway, "istio-system");
    assert!(!snap.gateway_ports().is_empty(), "{:?}", snap.diagnostics);
    let snapshots = Arc::new(ArcSwap::from_pointee(snap));
    let proxy = gateway_proxy(
        snapshots.clone(),
        t.log.clone(),
        t.metrics.clone(),
        "istio-system",
        &gateway_labels(),
    );
    let metrics: &Arc<Metrics> = &t.metrics;
    let gw = Arc::new(Gateway::new(Arc::new(proxy), metrics));
    let mut listeners = ListenerSet::new("127.0.0.1".parse().unwrap(), gw);
    listeners.reconcile(&snapshots.load_full()).await;
    listeners
}

fn openssl_cert(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("prerequisite missing: the `openssl` command (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_gateway_http_and_https_servers_splice_and_authorize() {
    let (up_addr, up) = Upstream::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_cert(dir.path(), "ws.example.com");
    let (http_port, https_port) = (free_port(), free_port());
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {http_port}, name: http, protocol: HTTP}}
    hosts: [ws.example.com]
  - port: {{number: {https_port}, name: https, protocol: HTTPS}}
    hosts: [ws.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ws, namespace: default}}
spec:
  hosts: [ws.internal]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{{address: 127.0.0.1, ports: {{http: {up}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ws, namespace: default}}
spec:
  hosts: [ws.example.com]
  gateways: [istio-system/gw]
  http:
  - route: [{{destination: {{host: ws.internal, port: {{number: 80}}}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-path, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/denied]}}}}]}}]
"#,
        cert = cert.display(),
        key = key.display(),
        up = up_addr.port()
    );
    let t = Telemetry::new(LOG_FORMAT);
    let _listeners = gateway(&yaml, &t).await;

    let mut s = TcpStream::connect(("127.0.0.1", http_port)).await.unwrap();
    websocket_session(&mut s, "ws.example.com", "/plain").await;
    drop(s);

    let mut tls = tls_connect(https_port, "ws.example.com").await;
    websocket_session(&mut tls, "ws.example.com", "/secure").await;
    drop(tls);

    let heads = up.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads.iter().any(|h| h.starts_with("get /plain ")
        && header_value(h, "x-forwarded-proto").as_deref() == Some("http")));
    assert!(heads.iter().any(|h| h.starts_with("get /secure ")
        && header_value(h, "x-forwarded-proto").as_deref() == Some("https")));
    let lines = t.lines(2).await;
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("101 - via_upstream 10 10 cluster=outbound|80||ws.internal ")),
        "{lines:?}"
    );

    let mut s = TcpStream::connect(("127.0.0.1", http_port)).await.unwrap();
    let (status, head, _) = handshake(&mut s, "ws.example.com", "/denied", "websocket").await;
    assert_eq!(status, 403, "{head}");
    assert_eq!(
        up.heads().len(),
        2,
        "the denied upgrade never reached the service"
    );
}

async fn tls_connect(port: u16, sni: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the gateway")
}

/// A sidecar sends `ws.external` through an egress gateway (Istio's egress gateway pattern:
/// the mesh VirtualService to the gateway's Service, the gateway's VirtualService out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateway_carries_an_upgrade_from_a_sidecar() {
    let (up_addr, up) = Upstream::start(true).await;
    let gw_port = free_port();
    let gateway_yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_port}, name: http, protocol: HTTP}}
    hosts: [ws.external]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ws-external, namespace: istio-system}}
spec:
  hosts: [ws.external]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{{address: 127.0.0.1, ports: {{http: {up}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: out, namespace: istio-system}}
spec:
  hosts: [ws.external]
  gateways: [egress]
  http:
  - route: [{{destination: {{host: ws.external, port: {{number: 80}}}}}}]
"#,
        up = up_addr.port()
    );
    let gw_t = Telemetry::new(LOG_FORMAT);
    let _listeners = gateway(&gateway_yaml, &gw_t).await;

    let sidecar_yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ws-external, namespace: default}}
spec:
  hosts: [ws.external]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: egressgateway, namespace: default}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints: [{{address: 127.0.0.1, ports: {{http: {gw_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: via-egress, namespace: default}}
spec:
  hosts: [ws.external]
  http:
  - route: [{{destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 80}}}}}}]
"#
    );
    let sidecar_t = Telemetry::new(LOG_FORMAT);
    let snap = compile_yaml(&sidecar_yaml, ProxyKind::Sidecar, "default");
    let sidecar = Arc::new(sidecar_t.proxy(snap, "default", None));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sidecar_addr = listener.local_addr().unwrap();
    tokio::spawn(serve_forward_proxy(
        listener,
        sidecar,
        std::future::pending(),
    ));

    let mut s = TcpStream::connect(sidecar_addr).await.unwrap();
    websocket_session(&mut s, "ws.external", "http://ws.external/feed").await;
    drop(s);
    assert_forwarded_upgrade(&up, "get /feed http/1.1");
    let lines = sidecar_t.lines(1).await;
    assert!(
        lines[0].starts_with(
            "101 - via_upstream 10 10 cluster=outbound|80||istio-egressgateway.istio-system.svc.cluster.local "
        ),
        "{lines:?}"
    );
    let lines = gw_t.lines(1).await;
    assert!(
        lines[0].starts_with("101 - via_upstream 10 10 cluster=outbound|80||ws.external "),
        "{lines:?}"
    );
}
