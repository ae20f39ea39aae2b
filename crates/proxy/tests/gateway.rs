//! `sluice gateway` through real sockets on loopback: gateway listeners opened from a snapshot,
//! hyper clients (HTTP/1.1, HTTP/2 over TLS), raw TLS clients, and upstream servers that echo
//! what they received.
//!
//! Two kinds of snapshots: hand-built ones (gateway ports and servers written out) for what the
//! data path decides on its own (listeners, 404, httpsRedirect, 421, TLS handshakes), and ones
//! compiled from Gateway + VirtualService + ServiceEntry YAML for routing.

mod common;
use common::AnyCert;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sluice_model::gateway::{
    Credential, GatewayHost, GatewayPort, GatewayServer, ServerTls, ServerTlsMode,
};
use sluice_model::{compile, Protocol, ProxyIdentity, ProxyKind, Snapshot};
use sluice_proxy::gateway::listeners::ListenerSet;
use sluice_proxy::gateway::{gateway_proxy, Gateway};
use sluice_proxy::telemetry::{AccessLogConfig, AccessLogEncoding, AccessLogger, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// === fixtures ===

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP upstream (HTTP/1.1 and h2c) that answers 200 with the request line and the headers
/// a gateway sets, one per line.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let body = format!(
                        "path={}\nhost={}\nx-forwarded-for={}\nx-forwarded-proto={}\nx-request-id={}\nx-envoy-external-address={}\n",
                        req.uri().path(),
                        h("host"),
                        h("x-forwarded-for"),
                        h("x-forwarded-proto"),
                        h("x-request-id"),
                        h("x-envoy-external-address"),
                    );
                    let resp = Response::builder()
                        .header("server", "upstream/1.0")
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

/// A self-signed certificate for `names` (the first is the CN), made with `openssl`.
struct TestCert {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl_cert(names: &[&str]) -> TestCert {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={}", names[0]))
        .arg("-addext")
        .arg(format!("subjectAltName={}", san.join(",")))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("prerequisite missing: the `openssl` command (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TestCert {
        _dir: dir,
        cert,
        key,
    }
}

/// A TLS upstream: completes the handshake with `cert` and writes one line naming the SNI it
/// received.
async fn tls_upstream(cert: &TestCert) -> SocketAddr {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&cert.key).unwrap();
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
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                    let _ = tls
                        .write_all(format!("tls-upstream sni={sni}\n").as_bytes())
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

fn tls_client(alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    port: u16,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tls_client(alpn).connect(name, tcp).await
}

// === the gateway under test ===

struct Gw {
    snapshots: Arc<ArcSwap<Snapshot>>,
    listeners: ListenerSet,
    log: tempfile::NamedTempFile,
    access_log: AccessLogger,
    metrics: Arc<Metrics>,
}

impl Gw {
    async fn start(snap: Snapshot) -> Gw {
        let log = tempfile::NamedTempFile::new().unwrap();
        let access_log = AccessLogger::new(AccessLogConfig {
            path: Some(log.path().to_path_buf()),
            encoding: AccessLogEncoding::Text,
            format: None,
        })
        .unwrap();
        let metrics = Arc::new(Metrics::new("test"));
        let snapshots = Arc::new(ArcSwap::from_pointee(snap));
        let proxy = Arc::new(gateway_proxy(
            snapshots.clone(),
            access_log.clone(),
            metrics.clone(),
            "istio-system",
            &gateway_labels(),
        ));
        let gateway = Arc::new(Gateway::new(proxy, &metrics));
        let mut listeners = ListenerSet::new(IpAddr::V4(Ipv4Addr::LOCALHOST), gateway);
        listeners.reconcile(&snapshots.load_full()).await;
        Gw {
            snapshots,
            listeners,
            log,
            access_log,
            metrics,
        }
    }

    async fn apply(&mut self, snap: Snapshot) {
        self.snapshots.store(Arc::new(snap));
        self.listeners.reconcile(&self.snapshots.load_full()).await;
    }

    fn log_lines(&self) -> String {
        self.access_log.flush(Duration::from_secs(2));
        std::fs::read_to_string(self.log.path()).unwrap()
    }
}

fn gateway_labels() -> BTreeMap<String, String> {
    [("istio".to_string(), "ingressgateway".to_string())].into()
}

fn server(protocol: Protocol, hosts: &[&str], tls: Option<ServerTls>) -> Arc<GatewayServer> {
    Arc::new(GatewayServer {
        source: Arc::from("Gateway istio-system/gw servers[0]"),
        gateway: Arc::from("istio-system/gw"),
        name: None,
        protocol,
        hosts: hosts
            .iter()
            .map(|h| GatewayHost {
                namespace: None,
                host: Arc::from(*h),
            })
            .collect(),
        tls,
    })
}

fn server_tls(mode: ServerTlsMode, credential: Credential) -> ServerTls {
    ServerTls {
        mode,
        https_redirect: mode == ServerTlsMode::HttpsRedirectOnly,
        credential,
        min_version: None,
        max_version: None,
        cipher_suites: Vec::new(),
        subject_alt_names: Vec::new(),
    }
}

fn hand_built(generation: u64, ports: Vec<GatewayPort>) -> Snapshot {
    let mut snap = Snapshot::default();
    snap.generation = generation;
    snap.gateway_ports = ports;
    snap
}

fn http_port(number: u16, hosts: &[&str]) -> GatewayPort {
    GatewayPort {
        number,
        servers: vec![server(Protocol::Http, hosts, None)],
    }
}

/// Compiles YAML for a gateway labelled `istio: ingressgateway` in `istio-system`.
fn compile_gateway(yaml: &str, generation: u64) -> Snapshot {
    let loaded = sluice_api::decode_str(Path::new("gateway.yaml"), yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let identity = ProxyIdentity {
        namespace: "istio-system".into(),
        labels: gateway_labels(),
        service_account: None,
        kind: ProxyKind::Gateway,
    };
    let snap = compile(&loaded.resources, &identity, generation);
    assert!(
        !snap.gateway_ports().is_empty(),
        "the model compiled no gateway ports from a Gateway selecting istio=ingressgateway (gateway compile not landed yet?): {:?}",
        snap.diagnostics
    );
    snap
}

/// A Gateway with one server on `port`, a VirtualService routing `app.example.com` to a
/// STATIC ServiceEntry whose endpoint is `upstream`, and `extra_server` (YAML lines of a second
/// server, indented for `servers:`).
fn routed_config(port: u16, server_block: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: web, {server_block}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: app, namespace: default}}
spec:
  hosts: [app.internal]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {up}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: default}}
spec:
  hosts: [app.example.com]
  gateways: [istio-system/gw]
  http:
  - match: [{{uri: {{prefix: /app}}}}]
    route:
    - destination: {{host: app.internal, port: {{number: 80}}}}
"#,
        up = upstream.port()
    )
}

/// One HTTP/1.1 request on a fresh connection; returns the response and its body.
async fn get_h1(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, String) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().uri(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts, String::from_utf8_lossy(&body).into_owned())
}

fn header<'a>(parts: &'a http::response::Parts, name: &str) -> &'a str {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

// === listeners (hand-built snapshots) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_set_follows_config_changes() {
    let (a, b) = (free_port(), free_port());
    let mut gw = Gw::start(hand_built(1, vec![http_port(a, &["*"])])).await;
    assert!(TcpStream::connect(("127.0.0.1", a)).await.is_ok());
    let status = gw.listeners.status().load_full();
    assert_eq!(
        status.listeners_text(),
        format!("127.0.0.1_{a}::127.0.0.1:{a}\n")
    );
    assert!(status.is_ready());

    gw.apply(hand_built(2, vec![http_port(b, &["*"])])).await;
    assert!(
        TcpStream::connect(("127.0.0.1", a)).await.is_err(),
        "port {a} was removed from the config but still accepts"
    );
    assert!(TcpStream::connect(("127.0.0.1", b)).await.is_ok());
    assert_eq!(
        gw.listeners.status().load().listeners_text(),
        format!("127.0.0.1_{b}::127.0.0.1:{b}\n")
    );

    gw.apply(hand_built(
        3,
        vec![http_port(a, &["*"]), http_port(b, &["*"])],
    ))
    .await;
    assert!(TcpStream::connect(("127.0.0.1", a)).await.is_ok());
    assert!(TcpStream::connect(("127.0.0.1", b)).await.is_ok());
    assert_eq!(gw.listeners.bound().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_cannot_be_bound_is_reported_and_retried() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let ok = free_port();
    let mut gw = Gw::start(hand_built(
        1,
        vec![http_port(busy, &["*"]), http_port(ok, &["*"])],
    ))
    .await;
    let status = gw.listeners.status().load_full();
    assert_eq!(status.failed.len(), 1, "{status:?}");
    assert_eq!(status.failed[0].0, busy);
    assert!(!status.is_ready());
    assert!(
        status.not_ready_reason().contains(&busy.to_string()),
        "{}",
        status.not_ready_reason()
    );
    // The other port serves meanwhile.
    let (parts, _) = get_h1(ok, "x.example.com", "/", &[]).await;
    assert_eq!(parts.status, 404);

    drop(taken);
    gw.apply(hand_built(
        2,
        vec![http_port(busy, &["*"]), http_port(ok, &["*"])],
    ))
    .await;
    let status = gw.listeners.status().load_full();
    assert!(status.failed.is_empty(), "{status:?}");
    assert!(status.is_ready());
    assert!(TcpStream::connect(("127.0.0.1", busy)).await.is_ok());
}

// === HTTP decisions the gateway makes itself (hand-built snapshots) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_nr_with_istio_envoy_server() {
    let port = free_port();
    let gw = Gw::start(hand_built(1, vec![http_port(port, &["*"])])).await;
    let (parts, body) = get_h1(port, "nobody.example.com", "/x", &[]).await;
    assert_eq!(parts.status, 404);
    assert_eq!(body, "");
    assert_eq!(header(&parts, "server"), "istio-envoy");
    let log = gw.log_lines();
    assert!(
        log.contains("\"GET /x HTTP/1.1\" 404 NR route_not_found"),
        "{log}"
    );
    // use_remote_address: the log shows the client appended to x-forwarded-for.
    assert!(log.contains("\"127.0.0.1\""), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_answers_301_to_https() {
    let port = free_port();
    let redirect = server(
        Protocol::Http,
        &["secure.example.com"],
        Some(server_tls(
            ServerTlsMode::HttpsRedirectOnly,
            Credential::None,
        )),
    );
    let open = server(Protocol::Http, &["*"], None);
    let gw = Gw::start(hand_built(
        1,
        vec![GatewayPort {
            number: port,
            servers: vec![open, redirect],
        }],
    ))
    .await;
    let (parts, body) = get_h1(port, &format!("secure.example.com:{port}"), "/a?b=1", &[]).await;
    assert_eq!(parts.status, 301);
    assert_eq!(body, "");
    assert_eq!(
        header(&parts, "location"),
        "https://secure.example.com/a?b=1"
    );
    assert_eq!(header(&parts, "server"), "istio-envoy");
    // Hosts of other servers on the port are not redirected.
    let (parts, _) = get_h1(port, "other.example.com", "/a", &[]).await;
    assert_eq!(parts.status, 404);
    let log = gw.log_lines();
    assert!(
        log.contains("\"GET /a?b=1 HTTP/1.1\" 301 - direct_response"),
        "{log}"
    );
}

// === TLS (hand-built snapshots; needs TLS termination from tls_server) ===

fn simple_tls_port(port: u16, hosts: &[&str], cert: &TestCert) -> GatewayPort {
    GatewayPort {
        number: port,
        servers: vec![server(
            Protocol::Https,
            hosts,
            Some(server_tls(
                ServerTlsMode::Simple,
                Credential::Files {
                    cert: cert.cert.clone(),
                    key: cert.key.clone(),
                    ca: None,
                },
            )),
        )],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_request_for_a_host_the_handshake_did_not_cover_is_421() {
    let cert = openssl_cert(&["a.example.com", "b.example.com"]);
    let port = free_port();
    let gw = Gw::start(hand_built(
        1,
        vec![simple_tls_port(port, &["a.example.com"], &cert)],
    ))
    .await;
    let tls = tls_connect(port, "a.example.com", &[b"h2"])
        .await
        .expect("TLS handshake with the gateway (TLS termination in tls_server.rs)");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Connection coalescing: same connection, another name of the certificate.
    let req = Request::builder()
        .uri("https://b.example.com/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 421);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"Misdirected Request");
    // The covered name on the same connection is routed (no VirtualService here: 404).
    let req = Request::builder()
        .uri("https://a.example.com/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 404);
    let log = gw.log_lines();
    assert!(log.contains(" 421 - misdirected_request "), "{log}");
    assert!(log.contains(" a.example.com "), "SNI logged: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_port_closes_connections_that_are_not_tls() {
    let cert = openssl_cert(&["a.example.com"]);
    let port = free_port();
    let gw = Gw::start(hand_built(
        1,
        vec![simple_tls_port(port, &["a.example.com"], &cert)],
    ))
    .await;
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("the gateway should close the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
    let log = gw.log_lines();
    assert!(
        log.contains("\"- - -\" 0 NR filter_chain_not_found"),
        "{log}"
    );
    let metrics = gw.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "sluice_gateway_tls_errors_total{{port=\"{port}\",reason=\"not_tls\"}} 1"
        )),
        "{metrics}"
    );
}

// === routing (compiled snapshots; need the gateway model) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_request_reaches_upstream_with_edge_headers() {
    let upstream = echo_upstream().await;
    let port = free_port();
    let yaml = routed_config(port, "protocol: HTTP}\n    hosts: [\"*\"]", upstream);
    let gw = Gw::start(compile_gateway(&yaml, 1)).await;

    let (parts, body) = get_h1(
        port,
        "app.example.com",
        "/app/x",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(header(&parts, "server"), "istio-envoy");
    assert!(!header(&parts, "x-envoy-upstream-service-time").is_empty());
    assert!(body.contains("path=/app/x\n"), "{body}");
    assert!(
        body.contains("x-forwarded-for=203.0.113.9, 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto=http\n"), "{body}");
    assert!(
        body.contains("x-envoy-external-address=127.0.0.1\n"),
        "{body}"
    );
    assert!(!body.contains("x-request-id=\n"), "{body}");

    // Known host, unknown path; unknown host.
    let (parts, _) = get_h1(port, "app.example.com", "/other", &[]).await;
    assert_eq!(parts.status, 404);
    let (parts, _) = get_h1(port, "nobody.example.com", "/app", &[]).await;
    assert_eq!(parts.status, 404);

    let log = gw.log_lines();
    assert!(
        log.contains("\"GET /app/x HTTP/1.1\" 200 - via_upstream"),
        "{log}"
    );
    assert!(log.contains("\"203.0.113.9, 127.0.0.1\""), "{log}");
    assert!(log.contains("outbound|80||app.internal"), "{log}");
    assert!(
        log.contains("\"GET /other HTTP/1.1\" 404 NR route_not_found"),
        "{log}"
    );

    // Reported by the gateway itself, named as Istio names its ingress gateway.
    let metrics = gw.metrics.encode();
    let ok = metrics
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
        .unwrap_or_else(|| panic!("no 200 series in:\n{metrics}"));
    for label in [
        "reporter=\"source\"",
        "source_workload=\"istio-ingressgateway\"",
        "source_workload_namespace=\"istio-system\"",
        "source_app=\"istio-ingressgateway\"",
        "destination_service=\"app.internal\"",
    ] {
        assert!(ok.contains(label), "{label} missing from {ok}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_tls_sets_x_forwarded_proto_https() {
    let upstream = echo_upstream().await;
    let cert = openssl_cert(&["app.example.com"]);
    let port = free_port();
    let server_block = format!(
        "protocol: HTTPS}}\n    hosts: [app.example.com]\n    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}",
        cert.cert.display(),
        cert.key.display()
    );
    let yaml = routed_config(port, &server_block, upstream);
    let gw = Gw::start(compile_gateway(&yaml, 1)).await;

    let tls = tls_connect(port, "app.example.com", &[b"http/1.1"])
        .await
        .expect("TLS handshake with the gateway");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/app/secure")
        .header("host", "app.example.com")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("x-forwarded-proto=https\n"), "{body}");
    let log = gw.log_lines();
    assert!(log.contains(" app.example.com "), "SNI in the log: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_by_sni_to_a_tls_upstream() {
    let cert = openssl_cert(&["db.example.com"]);
    let upstream = tls_upstream(&cert).await;
    let port = free_port();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: tls, protocol: TLS}}
    hosts: ["*.example.com"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: default}}
spec:
  hosts: [db.internal]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.1
    ports: {{tls: {up}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: default}}
spec:
  hosts: [db.example.com]
  gateways: [istio-system/gw]
  tls:
  - match: [{{sniHosts: [db.example.com]}}]
    route:
    - destination: {{host: db.internal, port: {{number: 443}}}}
"#,
        up = upstream.port()
    );
    let gw = Gw::start(compile_gateway(&yaml, 1)).await;
    let mut tls = tls_connect(port, "db.example.com", &[])
        .await
        .expect("TLS handshake with the upstream, through the gateway");
    let mut line = String::new();
    tls.read_to_string(&mut line).await.ok();
    assert_eq!(line, "tls-upstream sni=db.example.com\n");
    drop(tls);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = gw.log_lines();
    assert!(log.contains("\"- - -\" 0 - "), "{log}");
    assert!(log.contains(" db.example.com "), "SNI in the log: {log}");
    assert!(log.contains("outbound|443||db.internal"), "{log}");

    // A name the server covers but no `tls` route claims, and a name no server covers: both
    // closed without a handshake, logged as no filter chain.
    for sni in ["cache.example.com", "db.other.test"] {
        let r = tls_connect(port, sni, &[]).await;
        assert!(r.is_err(), "{sni}: the handshake should fail");
    }
    let log = gw.log_lines();
    for sni in ["cache.example.com", "db.other.test"] {
        assert!(
            log.lines()
                .any(|l| l.contains("\"- - -\" 0 NR filter_chain_not_found")
                    && l.contains(&format!(" {sni} "))),
            "{sni}: {log}"
        );
    }
}
