//! AuthorizationPolicy enforcement on a sidecar's inbound listener and on gateway listeners, and
//! gateway servers with `tls.mode: ISTIO_MUTUAL`. Mesh clients are real ISTIO_MUTUAL clients
//! (the identity module's client configuration) with identities from one test mesh root.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sluice_model::gateway::{
    Credential, GatewayHost, GatewayPort, GatewayServer, ServerTls, ServerTlsMode,
};
use sluice_model::security::Authorization;
use sluice_model::{compile, Protocol, ProxyIdentity, ProxyKind, Snapshot};
use sluice_proxy::context::Proxy;
use sluice_proxy::gateway::listeners::ListenerSet;
use sluice_proxy::gateway::{gateway_proxy, Gateway};
use sluice_proxy::identity::Identity;
use sluice_proxy::inbound::serve_inbound;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOG_FORMAT: &str = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% \
%CONNECTION_TERMINATION_DETAILS% peer=%DOWNSTREAM_PEER_URI_SAN% path=%REQ(:PATH)%\n";

const SERVER_ID: &str = "spiffe://cluster.local/ns/server/sa/server-sa";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/gw-sa";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/client/sa/client-sa";

mod common;
use common::{http_app, tcp_app, MeshCa, Telemetry};

fn decode(yaml: &str) -> Vec<sluice_api::Resource> {
    let loaded = sluice_api::decode_str(Path::new("policy.yaml"), yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    loaded.resources
}

/// A server sidecar (namespace `server`, app=server) compiled from `yaml`, whose inbound
/// listener sends every connection to `app`.
struct Server {
    addr: SocketAddr,
    t: Telemetry,
}

async fn server(yaml: &str, identity: Option<Arc<Identity>>, app: SocketAddr) -> Server {
    let proxy_identity = ProxyIdentity {
        namespace: "server".into(),
        labels: [("app".to_string(), "server".to_string())].into(),
        service_account: Some("server-sa".into()),
        kind: ProxyKind::Sidecar,
    };
    let snap = compile(&decode(yaml), &proxy_identity, 1);
    assert!(
        !snap.authorization.is_empty(),
        "the policies compiled to nothing: {:?}",
        snap.diagnostics
    );
    let t = Telemetry::new(LOG_FORMAT);
    let mut proxy = Proxy::new(
        Arc::new(ArcSwap::from_pointee(snap)),
        t.log.clone(),
        t.metrics.clone(),
        "server",
        &Default::default(),
    );
    proxy.identity = identity;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_inbound(
        listener,
        Arc::new(proxy),
        move |_: &TcpStream| Ok(app),
        std::future::pending(),
    ));
    Server { addr, t }
}

/// Connects with ISTIO_MUTUAL as `client` would, expecting the server's identity `expected`.
async fn mesh_connect(
    addr: SocketAddr,
    client: &Identity,
    expected: &str,
    sni: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = client.client_config(&[expected.to_string()], &[b"istio"]);
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .expect("mesh mTLS handshake")
}

/// One HTTP/1.1 GET over `stream`: status and body.
async fn get_over<S>(stream: S, host: &str, path: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A plaintext GET: status (0 when the connection closed without an answer) and body.
async fn plain_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("answer or close in time");
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

// === sidecar inbound ===

#[tokio::test]
async fn http_deny_rule_answers_403_and_names_the_policy() {
    let app = http_app().await;
    let srv = server(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: server}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"#,
        None,
        app,
    )
    .await;

    let (status, body) = plain_get(srv.addr, "/admin/users?x=1").await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    let (status, body) = plain_get(srv.addr, "/public").await;
    assert_eq!((status, body.as_str()), (200, "app saw /public"));

    let lines = srv.t.lines(2).await;
    assert!(
        lines.iter().any(|l| l.starts_with(
            "403 - rbac_access_denied_matched_policy[ns[server]-policy[deny-admin]-rule[0]] "
        ) && l.contains("path=/admin/users?x=1")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("200 - via_upstream")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn allow_by_namespace_needs_a_mesh_peer_from_that_namespace() {
    let ca = MeshCa::new();
    let app = http_app().await;
    let srv = server(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-client, namespace: server}
spec:
  action: ALLOW
  rules:
  - from: [{source: {namespaces: [client]}}]
"#,
        Some(ca.identity("server", "server-sa")),
        app,
    )
    .await;

    let allowed = ca.identity("client", "client-sa");
    let tls = mesh_connect(srv.addr, &allowed, SERVER_ID, "outbound_.80_._.server").await;
    let (status, body) = get_over(tls, "server", "/ok").await;
    assert_eq!((status, body.as_str()), (200, "app saw /ok"));

    let other = ca.identity("other", "default");
    let tls = mesh_connect(srv.addr, &other, SERVER_ID, "outbound_.80_._.server").await;
    let (status, body) = get_over(tls, "server", "/ok").await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    let (status, _) = plain_get(srv.addr, "/ok").await;
    assert_eq!(status, 403);

    let lines = srv.t.lines(3).await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("200 ") && l.contains(&format!("peer={CLIENT_ID} "))),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(
            |l| l.starts_with("403 - rbac_access_denied_matched_policy[")
                && l.contains("peer=spiffe://cluster.local/ns/other/sa/default ")
        ),
        "{lines:?}"
    );
}

#[tokio::test]
async fn tcp_deny_closes_before_the_app() {
    let app = tcp_app().await;
    let srv = server(
        &format!(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-tcp, namespace: server}}
spec:
  action: DENY
  rules:
  - to: [{{operation: {{ports: ["{}"]}}}}]
"#,
            app.port()
        ),
        None,
        app,
    )
    .await;

    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"hello\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("closed in time");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    let lines = srv.t.lines(1).await;
    assert!(
        lines[0].starts_with(
            "0 - - rbac_access_denied_matched_policy[ns[server]-policy[deny-tcp]-rule[0]] "
        ),
        "{lines:?}"
    );
}

// === gateways ===

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn gateway_labels() -> BTreeMap<String, String> {
    [("istio".to_string(), "ingressgateway".to_string())].into()
}

/// A gateway port with one HTTPS server in ISTIO_MUTUAL mode for every host.
fn istio_mutual_port(number: u16) -> GatewayPort {
    GatewayPort {
        number,
        servers: vec![Arc::new(GatewayServer {
            source: Arc::from("Gateway istio-system/gw servers[0]"),
            gateway: Arc::from("istio-system/gw"),
            name: None,
            protocol: Protocol::Https,
            hosts: vec![GatewayHost {
                namespace: None,
                host: Arc::from("*"),
            }],
            tls: Some(ServerTls {
                mode: ServerTlsMode::IstioMutual,
                https_redirect: false,
                credential: Credential::None,
                min_version: None,
                max_version: None,
                cipher_suites: Vec::new(),
                subject_alt_names: Vec::new(),
            }),
        })],
    }
}

struct Gw {
    _listeners: ListenerSet,
    t: Telemetry,
}

async fn gateway(snap: Snapshot, identity: Option<Arc<Identity>>) -> Gw {
    let t = Telemetry::new(LOG_FORMAT);
    let snapshots = Arc::new(ArcSwap::from_pointee(snap));
    let mut proxy = gateway_proxy(
        snapshots.clone(),
        t.log.clone(),
        t.metrics.clone(),
        "istio-system",
        &gateway_labels(),
    );
    proxy.identity = identity;
    let gateway = Arc::new(Gateway::new(Arc::new(proxy), &t.metrics));
    let mut listeners = ListenerSet::new(IpAddr::V4(Ipv4Addr::LOCALHOST), gateway);
    listeners.reconcile(&snapshots.load_full()).await;
    Gw {
        _listeners: listeners,
        t,
    }
}

#[tokio::test]
async fn gateway_istio_mutual_accepts_a_mesh_client_and_refuses_plaintext() {
    let ca = MeshCa::new();
    let port = free_port();
    let mut snap = Snapshot::default();
    snap.generation = 1;
    snap.gateway_ports = vec![istio_mutual_port(port)];
    // Gateways enforce AuthorizationPolicies of their namespace too.
    let (authz, diags) = Authorization::compile(
        &decode(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-private, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/private"]}}]
"#,
        ),
        "istio-system",
        &gateway_labels(),
        "istio-system",
    );
    assert!(!authz.is_empty(), "{diags:?}");
    snap.authorization = authz;
    let gw = gateway(snap, Some(ca.identity("istio-system", "gw-sa"))).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let client = ca.identity("client", "client-sa");
    // No VirtualService is bound: the request reaches routing and gets 404 NR.
    let tls = mesh_connect(addr, &client, GATEWAY_ID, "app.example.com").await;
    let (status, _) = get_over(tls, "app.example.com", "/").await;
    assert_eq!(status, 404);
    let tls = mesh_connect(addr, &client, GATEWAY_ID, "app.example.com").await;
    let (status, body) = get_over(tls, "app.example.com", "/private").await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    let (status, _) = plain_get(addr, "/").await;
    assert_eq!(status, 0, "plaintext must not be served");

    let lines = gw.t.lines(3).await;
    assert!(
        lines.iter().any(|l| l.starts_with("404 NR route_not_found")
            && l.contains(&format!("peer={CLIENT_ID} "))),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(
            "403 - rbac_access_denied_matched_policy[ns[istio-system]-policy[no-private]-rule[0]]"
        )),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("0 NR filter_chain_not_found")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn gateway_istio_mutual_without_an_identity_refuses() {
    let ca = MeshCa::new();
    let port = free_port();
    let mut snap = Snapshot::default();
    snap.generation = 1;
    snap.gateway_ports = vec![istio_mutual_port(port)];
    let gw = gateway(snap, None).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let client = ca.identity("client", "client-sa");
    let config = client.client_config(&[GATEWAY_ID.to_string()], &[b"istio"]);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let handshake = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("app.example.com").unwrap(), tcp)
        .await;
    assert!(handshake.is_err(), "the handshake must fail");
    let lines = gw.t.lines(1).await;
    assert!(
        lines[0].starts_with("0 NR filter_chain_not_found"),
        "{lines:?}"
    );
}
