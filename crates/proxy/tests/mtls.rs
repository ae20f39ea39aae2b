//! Mesh mutual TLS between two proxies on loopback: a client sidecar (explicit proxy) that
//! originates ISTIO_MUTUAL from a DestinationRule, and a server sidecar's inbound listener under
//! PeerAuthentication STRICT / PERMISSIVE / DISABLE. Both identities come from one test mesh root
//! made with the identity module.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_model::security::MtlsMode;
use sluice_model::{compile, ProxyIdentity, ProxyKind, Snapshot};
use sluice_proxy::identity::{self, Identity};
use sluice_proxy::inbound::serve_inbound;
use sluice_proxy::outbound::serve_forward_proxy;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Log format with the security fields the default format leaves out.
const LOG_FORMAT: &str = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% \
%CONNECTION_TERMINATION_DETAILS% peer=%DOWNSTREAM_PEER_URI_SAN% sni=%REQUESTED_SERVER_NAME% \
cluster=%UPSTREAM_CLUSTER_RAW% tls=%UPSTREAM_TRANSPORT_FAILURE_REASON%\n";

const SERVER_ID: &str = "spiffe://cluster.local/ns/server/sa/server-sa";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/client/sa/client-sa";

mod common;
use common::{http_app, tcp_app, AnyCert, MeshCa, Telemetry};

/// A server sidecar's inbound listener: every connection's original destination is `app`.
struct Server {
    addr: std::net::SocketAddr,
    t: Telemetry,
}

async fn server(
    mode: MtlsMode,
    identity: Option<Arc<Identity>>,
    app: std::net::SocketAddr,
) -> Server {
    let mut snap = Snapshot::default();
    snap.generation = 1;
    snap.mtls_mode = mode;
    let t = Telemetry::new(LOG_FORMAT);
    let proxy = Arc::new(t.proxy(snap, "server", identity));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_inbound(
        listener,
        proxy,
        move |_: &TcpStream| Ok(app),
        std::future::pending(),
    ));
    Server { addr, t }
}

/// A client sidecar (explicit proxy) in namespace `client` whose config routes
/// `server.mesh.test:80` (HTTP) and `240.0.0.9:9000` (TCP) to `inbound`, with a
/// DestinationRule `tls` block `tls`.
struct Client {
    addr: std::net::SocketAddr,
    t: Telemetry,
}

async fn client(
    inbound: std::net::SocketAddr,
    tls: &str,
    identity: Option<Arc<Identity>>,
) -> Client {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server, namespace: client}}
spec:
  hosts: [server.mesh.test]
  addresses: [240.0.0.9]
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 9000, name: tcp, protocol: TCP}}
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {p}, tcp: {p}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: server, namespace: client}}
spec:
  host: server.mesh.test
  trafficPolicy:
    tls: {tls}
"#,
        p = inbound.port()
    );
    let loaded = sluice_api::decode_str(Path::new("client.yaml"), &yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let proxy_identity = ProxyIdentity {
        namespace: "client".into(),
        labels: Default::default(),
        service_account: Some("client-sa".into()),
        kind: ProxyKind::Sidecar,
    };
    let snap = compile(&loaded.resources, &proxy_identity, 1);
    let t = Telemetry::new(LOG_FORMAT);
    let proxy = Arc::new(t.proxy(snap, "client", identity));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_forward_proxy(listener, proxy, std::future::pending()));
    Client { addr, t }
}

fn istio_mutual(san: &str) -> String {
    format!("{{mode: ISTIO_MUTUAL, subjectAltNames: [\"{san}\"]}}")
}

/// `GET <url>` in absolute form to an explicit proxy: status and body.
async fn proxy_get(proxy: std::net::SocketAddr, url: &str) -> (u16, String) {
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    let req = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw_exchange(proxy, req.as_bytes()).await
}

/// Sends `req` and reads to the end: status (0 when no HTTP response came back) and body.
async fn raw_exchange(addr: std::net::SocketAddr, req: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the peer answers or closes in time");
    let raw = String::from_utf8_lossy(&raw).to_string();
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        return (0, raw);
    };
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

// === tests ===

#[tokio::test]
async fn istio_mutual_to_strict_inbound_names_the_client() {
    let ca = MeshCa::new();
    let app = http_app().await;
    let srv = server(
        MtlsMode::Strict,
        Some(ca.identity("server", "server-sa")),
        app,
    )
    .await;
    let cl = client(
        srv.addr,
        &istio_mutual(SERVER_ID),
        Some(ca.identity("client", "client-sa")),
    )
    .await;

    let (status, body) = proxy_get(cl.addr, "http://server.mesh.test/hello").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "app saw /hello");

    let server_lines = srv.t.lines(1).await;
    let line = &server_lines[0];
    assert!(line.starts_with("200 - via_upstream"), "{line}");
    assert!(line.contains(&format!("peer={CLIENT_ID} ")), "{line}");
    assert!(
        line.contains("sni=outbound_.80_._.server.mesh.test "),
        "{line}"
    );
    let server_metric = srv
        .t
        .metric_line(
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                &format!("source_principal=\"{CLIENT_ID}\""),
                "connection_security_policy=\"mutual_tls\"",
            ],
        )
        .await;
    assert!(server_metric.is_some(), "{}", srv.t.metrics.encode());

    let client_lines = cl.t.lines(1).await;
    assert!(
        client_lines[0].contains("cluster=outbound|80||server.mesh.test"),
        "{}",
        client_lines[0]
    );
    let client_metric =
        cl.t.metric_line(
            "istio_requests_total",
            &[
                "reporter=\"source\"",
                &format!("destination_principal=\"{SERVER_ID}\""),
                "connection_security_policy=\"unknown\"",
            ],
        )
        .await;
    assert!(client_metric.is_some(), "{}", cl.t.metrics.encode());
}

#[tokio::test]
async fn istio_mutual_tcp_stream_to_strict_inbound() {
    let ca = MeshCa::new();
    let app = tcp_app().await;
    let srv = server(
        MtlsMode::Strict,
        Some(ca.identity("server", "server-sa")),
        app,
    )
    .await;
    let cl = client(
        srv.addr,
        &istio_mutual(SERVER_ID),
        Some(ca.identity("client", "client-sa")),
    )
    .await;

    // CONNECT to the service's address: a TCP stream routed by the client sidecar.
    let mut s = TcpStream::connect(cl.addr).await.unwrap();
    s.write_all(b"CONNECT 240.0.0.9:9000 HTTP/1.1\r\nHost: 240.0.0.9:9000\r\n\r\n")
        .await
        .unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).await.unwrap();
    assert!(status.contains(" 200"), "{status}");
    loop {
        let mut l = String::new();
        reader.read_line(&mut l).await.unwrap();
        if l == "\r\n" {
            break;
        }
    }
    reader.get_mut().write_all(b"hello\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, "echo hello\n");
    drop(reader);

    let server_lines = srv.t.lines(1).await;
    assert!(
        server_lines[0].contains(&format!("peer={CLIENT_ID} ")),
        "{}",
        server_lines[0]
    );
    assert!(
        server_lines[0].contains("sni=outbound_.9000_._.server.mesh.test "),
        "{}",
        server_lines[0]
    );
    let opened = srv
        .t
        .metric_line(
            "istio_tcp_connections_opened_total",
            &[
                &format!("source_principal=\"{CLIENT_ID}\""),
                "connection_security_policy=\"mutual_tls\"",
            ],
        )
        .await;
    assert!(opened.is_some(), "{}", srv.t.metrics.encode());
}

#[tokio::test]
async fn plaintext_to_strict_is_refused() {
    let ca = MeshCa::new();
    let app = http_app().await;
    let srv = server(
        MtlsMode::Strict,
        Some(ca.identity("server", "server-sa")),
        app,
    )
    .await;

    let (status, body) = raw_exchange(
        srv.addr,
        b"GET /direct HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 0, "plaintext reached the app: {body}");
    let lines = srv.t.lines(1).await;
    assert!(
        lines[0].starts_with("0 NR filter_chain_not_found"),
        "{}",
        lines[0]
    );

    // A client sidecar without a mesh identity falls back to plaintext, which STRICT refuses.
    let cl = client(srv.addr, &istio_mutual(SERVER_ID), None).await;
    let (status, _) = proxy_get(cl.addr, "http://server.mesh.test/").await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn strict_without_an_identity_refuses_everything() {
    let app = http_app().await;
    let srv = server(MtlsMode::Strict, None, app).await;
    let (status, _) = raw_exchange(
        srv.addr,
        b"GET / HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 0);
    let lines = srv.t.lines(1).await;
    assert!(
        lines[0].starts_with("0 NR filter_chain_not_found"),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn permissive_accepts_mutual_tls_and_plaintext() {
    let ca = MeshCa::new();
    let app = http_app().await;
    let srv = server(
        MtlsMode::Permissive,
        Some(ca.identity("server", "server-sa")),
        app,
    )
    .await;
    let cl = client(
        srv.addr,
        &istio_mutual(SERVER_ID),
        Some(ca.identity("client", "client-sa")),
    )
    .await;

    let (status, body) = proxy_get(cl.addr, "http://server.mesh.test/mtls").await;
    assert_eq!((status, body.as_str()), (200, "app saw /mtls"));
    let (status, body) = raw_exchange(
        srv.addr,
        b"GET /plain HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "app saw /plain"));

    let lines = srv.t.lines(2).await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("200 ") && l.contains(&format!("peer={CLIENT_ID} "))),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("200 ") && l.contains("peer=- sni=- ")),
        "{lines:?}"
    );
    let plain = srv
        .t
        .metric_line(
            "istio_requests_total",
            &["connection_security_policy=\"none\""],
        )
        .await;
    assert!(plain.is_some(), "{}", srv.t.metrics.encode());
}

#[tokio::test]
async fn disable_never_terminates() {
    let ca = MeshCa::new();
    let app = http_app().await;
    let srv = server(
        MtlsMode::Disable,
        Some(ca.identity("server", "server-sa")),
        app,
    )
    .await;
    let cl = client(
        srv.addr,
        &istio_mutual(SERVER_ID),
        Some(ca.identity("client", "client-sa")),
    )
    .await;
    // The TLS bytes go to the (plaintext) application, which cannot answer them.
    let (status, _) = proxy_get(cl.addr, "http://server.mesh.test/").await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn wrong_server_identity_is_a_tls_connect_failure() {
    let ca = MeshCa::new();
    let app = http_app().await;
    let srv = server(
        MtlsMode::Strict,
        Some(ca.identity("server", "server-sa")),
        app,
    )
    .await;
    let cl = client(
        srv.addr,
        &istio_mutual("spiffe://cluster.local/ns/server/sa/someone-else"),
        Some(ca.identity("client", "client-sa")),
    )
    .await;
    let (status, _) = proxy_get(cl.addr, "http://server.mesh.test/").await;
    assert_eq!(status, 503);
    let lines = cl.t.lines(1).await;
    assert!(lines[0].starts_with("503 UF"), "{}", lines[0]);
    assert!(
        lines[0].contains("connection_failure,TLS_error:"),
        "{}",
        lines[0]
    );
}

// === egress gateway: mesh mTLS wrapping the application's TLS ===

/// An "external" TLS server: completes the handshake and writes the SNI it received.
async fn external_tls_server() -> std::net::SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let (root_cert, root_key) =
        identity::create_root("external.test", Duration::from_secs(86400)).unwrap();
    let (cert, key) = identity::issue_workload_cert(
        &root_cert,
        &root_key,
        "spiffe://external.test/ns/x/sa/y",
        Duration::from_secs(3600),
    )
    .unwrap();
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                    let _ = tls
                        .write_all(format!("external sni={sni}\n").as_bytes())
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn egress_gateway_routes_the_tls_inside_mesh_mtls_to_the_sni_host() {
    let ca = MeshCa::new();
    let external = external_tls_server().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Istio's egress pattern with mTLS to the gateway: a TLS server in ISTIO_MUTUAL mode, and
    // a `tcp` route bound to the gateway towards a wildcard external host of resolution NONE,
    // which the gateway reaches where the application's SNI resolves (`*.localhost` names are
    // loopback, RFC 6761).
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {port}, name: tls, protocol: TLS}}
    hosts: ["*"]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external, namespace: istio-system}}
spec:
  hosts: ["*.localhost"]
  ports: [{{number: {ext}, name: tls, protocol: TLS}}]
  resolution: NONE
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: external, namespace: istio-system}}
spec:
  hosts: ["*.localhost"]
  gateways: [egress]
  tcp:
  - match: [{{port: {port}}}]
    route:
    - destination: {{host: "*.localhost", port: {{number: {ext}}}}}
"#,
        ext = external.port()
    );
    let loaded = sluice_api::decode_str(Path::new("egress.yaml"), &yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let labels: std::collections::BTreeMap<String, String> =
        [("istio".to_string(), "egressgateway".to_string())].into();
    let snap = compile(
        &loaded.resources,
        &ProxyIdentity {
            namespace: "istio-system".into(),
            labels: labels.clone(),
            service_account: None,
            kind: ProxyKind::Gateway,
        },
        1,
    );
    assert!(!snap.gateway_ports().is_empty(), "{:?}", snap.diagnostics);
    let t = Telemetry::new(LOG_FORMAT);
    let mut proxy = sluice_proxy::gateway::gateway_proxy(
        Arc::new(ArcSwap::from_pointee(snap)),
        t.log.clone(),
        t.metrics.clone(),
        "istio-system",
        &labels,
    );
    proxy.identity = Some(ca.identity("istio-system", "egress-sa"));
    let snapshots = proxy.snapshots.clone();
    let gateway = Arc::new(sluice_proxy::gateway::Gateway::new(
        Arc::new(proxy),
        &t.metrics,
    ));
    let mut listeners = sluice_proxy::gateway::listeners::ListenerSet::new(
        std::net::IpAddr::from([127, 0, 0, 1]),
        gateway,
    );
    listeners.reconcile(&snapshots.load_full()).await;

    // The client sidecar's side: mesh mTLS to the gateway, the application's TLS inside.
    let client = ca.identity("client", "client-sa");
    let outer_config = client.client_config(
        &["spiffe://cluster.local/ns/istio-system/sa/egress-sa".to_string()],
        &[b"istio"],
    );
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let outer = tokio_rustls::TlsConnector::from(outer_config)
        .connect(
            rustls::pki_types::ServerName::try_from("outbound_.443_._.istio-egressgateway")
                .unwrap(),
            tcp,
        )
        .await
        .expect("mTLS to the egress gateway");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner_config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let inner = tokio_rustls::TlsConnector::from(Arc::new(inner_config))
        .connect(
            rustls::pki_types::ServerName::try_from("app.localhost").unwrap(),
            outer,
        )
        .await;
    let mut inner = match inner {
        Ok(i) => i,
        Err(e) => panic!(
            "the application's TLS through the gateway: {e}; log: {:?}",
            t.lines(1).await
        ),
    };
    let mut line = String::new();
    let mut buf = [0u8; 128];
    let n = tokio::time::timeout(Duration::from_secs(10), inner.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    line.push_str(&String::from_utf8_lossy(&buf[..n]));
    assert_eq!(line, "external sni=app.localhost\n");
    drop(inner);

    let lines = t.lines(1).await;
    assert!(
        lines[0].contains(&format!("peer={CLIENT_ID} ")),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("sni=app.localhost "), "{}", lines[0]);
    assert!(
        lines[0].contains(&format!(
            "cluster=outbound|{}||*.localhost",
            external.port()
        )),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn gateway_sends_a_wildcard_host_where_the_request_host_resolves() {
    let app = http_app().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*.localhost"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: wild, namespace: istio-system}}
spec:
  hosts: ["*.localhost"]
  ports: [{{number: {app}, name: http, protocol: HTTP}}]
  resolution: NONE
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: wild, namespace: istio-system}}
spec:
  hosts: ["*.localhost"]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: "*.localhost", port: {{number: {app}}}}}
"#,
        app = app.port()
    );
    let loaded = sluice_api::decode_str(Path::new("wild.yaml"), &yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let labels: std::collections::BTreeMap<String, String> =
        [("istio".to_string(), "ingressgateway".to_string())].into();
    let snap = compile(
        &loaded.resources,
        &ProxyIdentity {
            namespace: "istio-system".into(),
            labels: labels.clone(),
            service_account: None,
            kind: ProxyKind::Gateway,
        },
        1,
    );
    let t = Telemetry::new(LOG_FORMAT);
    let proxy = sluice_proxy::gateway::gateway_proxy(
        Arc::new(ArcSwap::from_pointee(snap)),
        t.log.clone(),
        t.metrics.clone(),
        "istio-system",
        &labels,
    );
    let snapshots = proxy.snapshots.clone();
    let gateway = Arc::new(sluice_proxy::gateway::Gateway::new(
        Arc::new(proxy),
        &t.metrics,
    ));
    let mut listeners = sluice_proxy::gateway::listeners::ListenerSet::new(
        std::net::IpAddr::from([127, 0, 0, 1]),
        gateway,
    );
    listeners.reconcile(&snapshots.load_full()).await;

    let (status, body) = raw_exchange(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        format!("GET /wild HTTP/1.1\r\nHost: api.localhost:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "app saw /wild"));
    let lines = t.lines(1).await;
    assert!(
        lines[0].contains(&format!("cluster=outbound|{}||*.localhost", app.port())),
        "{}",
        lines[0]
    );
}

/// An ISTIO_MUTUAL cluster's security (Istio's SNI, the expected SANs) is built once per
/// cluster version and reused by every request, and rebuilt when the cluster changes.
#[test]
fn istio_mutual_security_is_built_once_per_cluster_version() {
    use sluice_proxy::balancer::ClusterRuntime;
    use sluice_proxy::upstream::{cluster_security, UpstreamSecurity};
    let ca = MeshCa::new();
    let identity = ca.identity("default", "sleep");
    let yaml = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc, namespace: default}
spec:
  hosts: [svc.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints: [{address: 10.1.2.3}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc, namespace: default}
spec:
  host: svc.example.com
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/svc]}}
";
    let snap = common::compile_yaml(yaml, ProxyKind::Sidecar, "default");
    let cluster = snap.clusters["outbound|80||svc.example.com"].clone();
    let rt = ClusterRuntime::new(&cluster);
    let sni_of = |s: &UpstreamSecurity| match s {
        UpstreamSecurity::IstioMutual {
            sni, expected_sans, ..
        } => (sni.clone(), expected_sans.clone()),
        other => panic!("not ISTIO_MUTUAL: {other:?}"),
    };
    let (first, sans) = sni_of(&cluster_security(&rt, Some(&identity), &cluster, "a"));
    assert_eq!(&*first, "outbound_.80_._.svc.example.com");
    assert_eq!(
        &*sans,
        ["spiffe://cluster.local/ns/default/sa/svc".to_string()]
    );
    let (again, _) = sni_of(&cluster_security(&rt, Some(&identity), &cluster, "b"));
    assert!(
        Arc::ptr_eq(&first, &again),
        "the same cluster reuses its security"
    );

    // A new version of the cluster (a reload) gets its own.
    let changed = Arc::new((*cluster).clone());
    let (rebuilt, _) = sni_of(&cluster_security(&rt, Some(&identity), &changed, "a"));
    assert!(!Arc::ptr_eq(&first, &rebuilt));
    assert_eq!(rebuilt, first);

    // Without a mesh identity the cluster falls back to plaintext, as before.
    assert!(matches!(
        cluster_security(&rt, None, &cluster, "a"),
        UpstreamSecurity::Plain
    ));
}
