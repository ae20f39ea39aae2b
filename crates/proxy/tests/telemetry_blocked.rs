//! `sluice_egress_blocked_total`: every refused outbound call is counted with the refused host,
//! through real sockets (a REGISTRY_ONLY sidecar's explicit proxy and captured dispatch, and a
//! gateway's listeners), and label sets are capped.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_model::{compile, ProxyIdentity, ProxyKind, Snapshot};
use sluice_proxy::context::{Proxy, Target};
use sluice_proxy::gateway::listeners::ListenerSet;
use sluice_proxy::gateway::{gateway_proxy, Gateway};
use sluice_proxy::outbound::{dispatch, serve_forward_proxy};
use sluice_proxy::telemetry::metrics::{BLOCKED_OTHER_HOST, BLOCKED_SERIES_LIMIT};
use sluice_proxy::telemetry::{AccessLogger, BlockedProtocol, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REGISTRY_ONLY: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: known, namespace: default}
spec:
  hosts: [known.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{address: 127.0.0.1}]
"#;

fn compile_yaml(yaml: &str, identity: &ProxyIdentity) -> Snapshot {
    let loaded = sluice_api::decode_str(Path::new("test.yaml"), yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    compile(&loaded.resources, identity, 1)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A REGISTRY_ONLY sidecar for workload `sleep`.
fn sidecar() -> (Arc<Proxy>, Arc<Metrics>) {
    let identity = ProxyIdentity {
        namespace: "default".into(),
        labels: labels(&[("app", "sleep")]),
        service_account: None,
        kind: ProxyKind::Sidecar,
    };
    let snap = compile_yaml(REGISTRY_ONLY, &identity);
    let metrics = Arc::new(Metrics::new("test"));
    let proxy = Proxy::new(
        Arc::new(ArcSwap::from_pointee(snap)),
        AccessLogger::disabled(),
        metrics.clone(),
        "default",
        &labels(&[("app", "sleep")]),
    );
    (Arc::new(proxy), metrics)
}

fn blocked_line(workload: &str, host: &str, port: u16, protocol: &str) -> String {
    format!(
        "sluice_egress_blocked_total{{source_workload=\"{workload}\",destination_host=\"{host}\",port=\"{port}\",protocol=\"{protocol}\"}}"
    )
}

/// The value of the series `series` in `out`, if present.
fn value_of(out: &str, series: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The bytes of a TLS ClientHello for `name` (a DNS name sends SNI, an IP does not).
fn client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// Feeds `bytes` to the sidecar as a captured connection to `original_dst`, then waits until
/// the proxy closes it.
async fn captured(proxy: &Arc<Proxy>, original_dst: SocketAddr, bytes: &[u8]) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = proxy.clone();
    let server = tokio::spawn(async move {
        let (stream, remote) = listener.accept().await.unwrap();
        let target = Target {
            addr: original_dst,
            host: None,
        };
        dispatch(proxy, stream, remote, original_dst, target).await;
    });
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut buf)).await;
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the proxy closes a blocked connection")
        .unwrap();
}

#[tokio::test]
async fn sidecar_counts_http_tls_and_tcp_refusals() {
    let (proxy, metrics) = sidecar();

    // HTTP through the explicit proxy: 502 block_all, host without port.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    tokio::spawn(serve_forward_proxy(
        listener,
        proxy.clone(),
        std::future::pending(),
    ));
    for _ in 0..2 {
        let mut c = TcpStream::connect(proxy_addr).await.unwrap();
        c.write_all(
            b"GET http://unknown.example.org/get HTTP/1.1\r\nHost: unknown.example.org\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    }
    // A captured request carrying a port in its Host is named without it.
    let req = b"GET / HTTP/1.1\r\nHost: other.example.org:8080\r\nConnection: close\r\n\r\n";
    captured(&proxy, "10.9.9.8:8080".parse().unwrap(), req).await;
    // The known host is not refused.
    let out = metrics.encode();
    assert!(
        out.contains("# TYPE sluice_egress_blocked_total counter\n"),
        "{out}"
    );
    assert!(
        out.contains("# HELP sluice_egress_blocked_total ") && out.contains("At most 1000"),
        "{out}"
    );
    assert_eq!(
        value_of(
            &out,
            &blocked_line("sleep", "unknown.example.org", 80, "http")
        ),
        Some(2),
        "{out}"
    );
    assert_eq!(
        value_of(
            &out,
            &blocked_line("sleep", "other.example.org", 8080, "http")
        ),
        Some(1),
        "{out}"
    );

    // TLS to BlackHoleCluster: named by SNI; without SNI, by destination IP.
    captured(
        &proxy,
        "10.9.9.9:443".parse().unwrap(),
        &client_hello("blocked.example.net"),
    )
    .await;
    captured(
        &proxy,
        "10.9.9.7:443".parse().unwrap(),
        &client_hello("10.9.9.7"),
    )
    .await;
    // TCP to BlackHoleCluster: by destination IP.
    captured(
        &proxy,
        "10.9.9.10:5432".parse().unwrap(),
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
    )
    .await;

    let out = metrics.encode();
    assert_eq!(
        value_of(
            &out,
            &blocked_line("sleep", "blocked.example.net", 443, "tls")
        ),
        Some(1),
        "{out}"
    );
    assert_eq!(
        value_of(&out, &blocked_line("sleep", "10.9.9.7", 443, "tls")),
        Some(1),
        "{out}"
    );
    assert_eq!(
        value_of(&out, &blocked_line("sleep", "10.9.9.10", 5432, "tcp")),
        Some(1),
        "{out}"
    );
    assert!(!out.contains("known.example.com"), "{out}");
}

#[tokio::test]
async fn gateway_counts_unrouted_hosts_and_unknown_sni() {
    let http_port = free_port();
    let tls_port = free_port();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {http_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: {tls_port}, name: tls, protocol: TLS}}
    hosts: [pass.example.com]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: app, namespace: default}}
spec:
  hosts: [app.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: default}}
spec:
  hosts: [app.example.com]
  gateways: [istio-system/gw]
  http:
  - route: [{{destination: {{host: app.example.com}}}}]
"#
    );
    let gw_labels = labels(&[("istio", "egressgateway")]);
    let identity = ProxyIdentity {
        namespace: "istio-system".into(),
        labels: gw_labels.clone(),
        service_account: None,
        kind: ProxyKind::Gateway,
    };
    let snap = compile_yaml(&yaml, &identity);
    let metrics = Arc::new(Metrics::new("test"));
    let snapshots = Arc::new(ArcSwap::from_pointee(snap));
    let proxy = Arc::new(gateway_proxy(
        snapshots.clone(),
        AccessLogger::disabled(),
        metrics.clone(),
        "istio-system",
        &gw_labels,
    ));
    let gateway = Arc::new(Gateway::new(proxy, &metrics));
    let mut listeners = ListenerSet::new(IpAddr::V4(Ipv4Addr::LOCALHOST), gateway);
    listeners.reconcile(&snapshots.load_full()).await;

    let mut c = TcpStream::connect(("127.0.0.1", http_port)).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: nope.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");

    let mut c = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    c.write_all(&client_hello("unknown.example.com"))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;

    let out = metrics.encode();
    assert_eq!(
        value_of(
            &out,
            &blocked_line("istio-egressgateway", "nope.example.com", http_port, "http")
        ),
        Some(1),
        "{out}"
    );
    assert_eq!(
        value_of(
            &out,
            &blocked_line(
                "istio-egressgateway",
                "unknown.example.com",
                tls_port,
                "tls"
            )
        ),
        Some(1),
        "{out}"
    );
    drop(listeners);
}

#[test]
fn label_sets_are_capped_and_folded_into_other() {
    let m = Metrics::new("test");
    let w: Arc<str> = Arc::from("sleep");
    for i in 0..BLOCKED_SERIES_LIMIT + 5 {
        m.record_blocked(&w, &format!("h{i}.example"), 443, BlockedProtocol::Tls);
    }
    // Known series keep counting after the cap.
    m.record_blocked(&w, "h0.example", 443, BlockedProtocol::Tls);
    let out = m.encode();
    let series = out
        .lines()
        .filter(|l| l.starts_with("sluice_egress_blocked_total{"))
        .count();
    assert_eq!(series, BLOCKED_SERIES_LIMIT + 1, "{out}");
    assert_eq!(
        value_of(&out, &blocked_line("sleep", BLOCKED_OTHER_HOST, 443, "tls")),
        Some(5)
    );
    assert_eq!(
        value_of(&out, &blocked_line("sleep", "h0.example", 443, "tls")),
        Some(2)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
