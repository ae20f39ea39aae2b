//! Locality load balancing (DestinationRule `localityLbSetting`) through a forward proxy with
//! real upstream sockets: priorities by region/zone/subzone, failover when outlier detection
//! ejects the local endpoints, `failover` from→to, `failoverPriority`, `distribute`, and no
//! failover without outlier detection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_model::{compile, ProxyIdentity, Snapshot};
use sluice_proxy::context::Proxy;
use sluice_proxy::outbound::serve_forward_proxy;
use sluice_proxy::telemetry::metrics::Metrics;
use sluice_proxy::telemetry::{AccessLogConfig, AccessLogEncoding, AccessLogger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "outbound|80||svc.example.com";

/// An HTTP/1.1 upstream answering its `name` with the status currently in the returned cell.
async fn upstream(name: &'static str) -> (SocketAddr, Arc<AtomicU16>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = Arc::new(AtomicU16::new(200));
    let cell = status.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let status = cell.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let code = status.load(Ordering::SeqCst);
                    async move {
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(name)));
                        *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, status)
}

/// The config: `svc.example.com` with one endpoint per (upstream, locality), the
/// DestinationRule `policy` (indented lines under `trafficPolicy`), for a proxy in
/// us-east/zone1 (Kubernetes topology labels plus `tier: a`).
fn snapshot(endpoints: &[(SocketAddr, &str, &str)], policy: &str) -> Snapshot {
    let eps: String = endpoints
        .iter()
        .map(|(a, locality, tier)| {
            format!(
                "  - {{address: 127.0.0.1, ports: {{http: {}}}, locality: \"{locality}\", labels: {{tier: {tier}}}}}\n",
                a.port()
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
{eps}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc, namespace: default}}
spec:
  host: svc.example.com
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
{policy}
"#
    );
    let loaded = sluice_api::decode_str(Path::new("test.yaml"), &yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let labels = [
        ("topology.kubernetes.io/region", "us-east"),
        ("topology.kubernetes.io/zone", "zone1"),
        ("tier", "a"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let identity = ProxyIdentity {
        namespace: "default".into(),
        labels,
        service_account: None,
        kind: sluice_model::ProxyKind::Sidecar,
    };
    compile(&loaded.resources, &identity, 1)
}

struct Harness {
    proxy_addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn harness(snap: Snapshot) -> Harness {
    let access_log = AccessLogger::new(AccessLogConfig {
        path: None,
        encoding: AccessLogEncoding::Text,
        format: None,
    })
    .unwrap();
    let proxy = Arc::new(Proxy::new(
        Arc::new(ArcSwap::from_pointee(snap)),
        access_log,
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
        _stop: stop,
    }
}

/// One request through the proxy: the status and the body (the upstream's name).
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
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// `n` requests: how many each upstream answered with 200 (others count under their status).
async fn spread(proxy: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (status, body) = get(proxy).await;
        let key = if status == 200 {
            body
        } else {
            status.to_string()
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

const OUTLIER: &str =
    "    outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 60s, maxEjectionPercent: 100}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_zone_first_then_region_then_elsewhere() {
    let (zone1, zone1_status) = upstream("zone1").await;
    let (zone2, zone2_status) = upstream("zone2").await;
    let (eu, _) = upstream("eu").await;
    let snap = snapshot(
        &[
            (eu, "eu-west/zone1", "a"),
            (zone2, "us-east/zone2", "a"),
            (zone1, "us-east/zone1", "a"),
        ],
        OUTLIER,
    );
    assert_eq!(
        snap.clusters[NAME].priorities.as_deref(),
        Some(&[2, 1, 0][..])
    );
    let h = harness(snap).await;
    assert_eq!(
        spread(h.proxy_addr, 6).await,
        HashMap::from([("zone1".into(), 6)])
    );

    // The local endpoint fails once: ejected, the same region's other zone takes over.
    zone1_status.store(503, Ordering::SeqCst);
    assert_eq!(get(h.proxy_addr).await.0, 503);
    assert_eq!(
        spread(h.proxy_addr, 6).await,
        HashMap::from([("zone2".into(), 6)])
    );

    // Then the region is out: another region.
    zone2_status.store(503, Ordering::SeqCst);
    assert_eq!(get(h.proxy_addr).await.0, 503);
    assert_eq!(
        spread(h.proxy_addr, 6).await,
        HashMap::from([("eu".into(), 6)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_healthy_priority_spills_over() {
    // Two local endpoints, one ejected: 50% healthy × 1.4 = 70% stays, 30% spills.
    let (a, a_status) = upstream("a").await;
    let (b, _) = upstream("b").await;
    let (far, _) = upstream("far").await;
    let snap = snapshot(
        &[
            (a, "us-east/zone1", "a"),
            (b, "us-east/zone1", "a"),
            (far, "eu-west/zone1", "a"),
        ],
        OUTLIER,
    );
    let h = harness(snap).await;
    a_status.store(503, Ordering::SeqCst);
    let first = spread(h.proxy_addr, 2).await;
    assert_eq!(first.get("503"), Some(&1), "{first:?}");
    let counts = spread(h.proxy_addr, 200).await;
    assert!(
        !counts.contains_key("a") && !counts.contains_key("503"),
        "{counts:?}"
    );
    let far = counts.get("far").copied().unwrap_or(0);
    assert!(
        (30..=100).contains(&far),
        "about 60 of 200 spill: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_goes_to_the_named_region() {
    let (local, local_status) = upstream("local").await;
    let (eu, _) = upstream("eu").await;
    let (ap, _) = upstream("ap").await;
    let snap = snapshot(
        &[
            (eu, "eu-west/zone1", "a"),
            (ap, "ap-south/zone1", "a"),
            (local, "us-east/zone1", "a"),
        ],
        &format!(
            "      localityLbSetting:\n        failover: [{{from: us-east, to: ap-south}}]\n{OUTLIER}"
        ),
    );
    // `failover` sends us-east to ap-south before any other region.
    assert_eq!(
        snap.clusters[NAME].priorities.as_deref(),
        Some(&[2, 1, 0][..])
    );
    let h = harness(snap).await;
    local_status.store(503, Ordering::SeqCst);
    assert_eq!(get(h.proxy_addr).await.0, 503);
    assert_eq!(
        spread(h.proxy_addr, 6).await,
        HashMap::from([("ap".into(), 6)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_outlier_detection_every_locality_is_used() {
    let (local, _) = upstream("local").await;
    let (eu, _) = upstream("eu").await;
    let eps = [(local, "us-east/zone1", "a"), (eu, "eu-west/zone1", "a")];
    let snap = snapshot(&eps, "");
    assert_eq!(snap.clusters[NAME].priorities, None);
    let h = harness(snap).await;
    let counts = spread(h.proxy_addr, 6).await;
    assert_eq!(
        counts,
        HashMap::from([("local".into(), 3), ("eu".into(), 3)])
    );

    // `enabled: false` turns it off even with outlier detection.
    let snap = snapshot(
        &eps,
        &format!("      localityLbSetting: {{enabled: false}}\n{OUTLIER}"),
    );
    assert_eq!(snap.clusters[NAME].priorities, None);
    let h = harness(snap).await;
    let counts = spread(h.proxy_addr, 6).await;
    assert_eq!(
        counts,
        HashMap::from([("local".into(), 3), ("eu".into(), 3)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribute_weights_localities() {
    let (z1, _) = upstream("zone1").await;
    let (z2a, _) = upstream("zone2a").await;
    let (z2b, _) = upstream("zone2b").await;
    let (eu, _) = upstream("eu").await;
    let snap = snapshot(
        &[
            (z1, "us-east/zone1", "a"),
            (z2a, "us-east/zone2", "a"),
            (z2b, "us-east/zone2", "a"),
            (eu, "eu-west/zone1", "a"),
        ],
        "      localityLbSetting:\n        distribute:\n        - from: us-east/zone1/*\n          to: {\"us-east/zone1/*\": 60, \"us-east/zone2/*\": 40}",
    );
    // eu-west is not named: it gets nothing; zone2's 40 is shared by its two endpoints.
    let weights: Vec<u32> = snap.clusters[NAME]
        .endpoints
        .iter()
        .map(|e| e.weight)
        .collect();
    assert_eq!(weights, [6000, 2000, 2000]);
    let h = harness(snap).await;
    let counts = spread(h.proxy_addr, 50).await;
    assert_eq!(
        counts,
        HashMap::from([
            ("zone1".into(), 30),
            ("zone2a".into(), 10),
            ("zone2b".into(), 10)
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_priority_orders_by_labels() {
    let (same, same_status) = upstream("same-tier").await;
    let (other, _) = upstream("other-tier").await;
    // The local zone's endpoint has another tier: the label decides before the locality.
    let snap = snapshot(
        &[(other, "us-east/zone1", "b"), (same, "eu-west/zone1", "a")],
        &format!("      localityLbSetting:\n        failoverPriority: [tier]\n{OUTLIER}"),
    );
    assert_eq!(snap.clusters[NAME].priorities.as_deref(), Some(&[1, 0][..]));
    let h = harness(snap).await;
    assert_eq!(
        spread(h.proxy_addr, 4).await,
        HashMap::from([("same-tier".into(), 4)])
    );
    same_status.store(503, Ordering::SeqCst);
    assert_eq!(get(h.proxy_addr).await.0, 503);
    assert_eq!(
        spread(h.proxy_addr, 4).await,
        HashMap::from([("other-tier".into(), 4)])
    );
}

#[test]
fn localities_from_fields_and_labels() {
    use sluice_model::policy::Locality;
    let l = Locality::parse("us-east/zone1/rack2");
    assert_eq!(
        (l.region.as_str(), l.zone.as_str(), l.subzone.as_str()),
        ("us-east", "zone1", "rack2")
    );
    assert_eq!(
        Locality::parse("us-east.zone1").to_string(),
        "us-east/zone1"
    );
    let labels = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<sluice_api::networking::Labels>()
    };
    let from = |kv: &[(&str, &str)]| Locality::label_string(&labels(kv)).map(|l| l.to_string());
    assert_eq!(
        from(&[("istio-locality", "eu.z2")]).as_deref(),
        Some("eu/z2")
    );
    assert_eq!(
        from(&[
            ("topology.kubernetes.io/region", "eu"),
            ("topology.kubernetes.io/zone", "z1")
        ])
        .as_deref(),
        Some("eu/z1")
    );
    assert_eq!(from(&[("app", "x")]), None);

    // localityLbSetting is acted on now (no SLU0004); zoneAwareLbSetting still is not.
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a, namespace: default}\nspec:\n  host: a\n  trafficPolicy:\n    loadBalancer:\n      localityLbSetting: {enabled: true}\n    outlierDetection: {consecutive5xxErrors: 1}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b, namespace: default}\nspec:\n  host: b\n  trafficPolicy:\n    loadBalancer:\n      zoneAwareLbSetting: {enabled: true}\n";
    let loaded = sluice_api::decode_str(Path::new("t.yaml"), yaml);
    let warnings: Vec<String> = sluice_model::references::fields_not_acted_on(&loaded.resources)
        .into_iter()
        .map(|d| d.message)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("zoneAwareLbSetting"), "{warnings:?}");
}

#[test]
fn workload_entry_and_label_localities_reach_the_cluster() {
    // A WorkloadEntry's `locality`, and topology labels on an entry without one.
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc, namespace: default}
spec:
  hosts: [svc.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {labels: {app: svc}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: far, namespace: default}
spec: {address: 10.0.0.1, labels: {app: svc}, locality: eu-west/zone1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: near, namespace: default}
spec:
  address: 10.0.0.2
  labels: {app: svc, topology.kubernetes.io/region: us-east, topology.kubernetes.io/zone: zone1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc, namespace: default}
spec:
  host: svc.example.com
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
"#;
    let loaded = sluice_api::decode_str(Path::new("t.yaml"), yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let identity = ProxyIdentity {
        namespace: "default".into(),
        labels: [("istio-locality".to_string(), "us-east.zone1".to_string())].into(),
        service_account: None,
        kind: sluice_model::ProxyKind::Sidecar,
    };
    let snap = compile(&loaded.resources, &identity, 1);
    let c = &snap.clusters[NAME];
    let got: Vec<(String, Option<String>, u32)> = c
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                e.address.to_string(),
                e.locality.as_deref().map(str::to_string),
                c.endpoint_priority(i),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("10.0.0.1".to_string(), Some("eu-west/zone1".to_string()), 1),
            ("10.0.0.2".to_string(), Some("us-east/zone1".to_string()), 0),
        ]
    );
}
