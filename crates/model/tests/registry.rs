//! The registry from Kubernetes Services, WorkloadEntries and Endpoints, and how Host headers,
//! VIPs and short names reach those services.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use sluice_model::cluster::UpstreamAddress;
use sluice_model::registry::{services_from, EndpointAddress, Resolution};
use sluice_model::route::HttpRequestFacts;
use sluice_model::{HttpDecision, Protocol, Snapshot, StreamDecision};

mod common;
use common::{resources, snapshot_in};

/// The cluster an HTTP request to `authority` on `port` is forwarded to, or a description of
/// the decision.
fn http_cluster(snap: &Snapshot, authority: &str, port: u16) -> String {
    let headers = HeaderMap::new();
    let d = snap.route_http(&HttpRequestFacts {
        method: "GET",
        scheme: "http",
        authority,
        path_and_query: "/",
        headers: &headers,
        port,
    });
    match d {
        HttpDecision::Route { rule, .. } => match &rule.action {
            sluice_model::RouteAction::Forward(t) => match t[0].cluster.resolve(port) {
                Ok(c) => c.name.to_string(),
                Err(m) => format!("MISSING {m}"),
            },
            other => format!("{other:?}"),
        },
        HttpDecision::NoRoute { .. } => "NoRoute".into(),
        HttpDecision::Passthrough => "Passthrough".into(),
        HttpDecision::Blocked => "Blocked".into(),
    }
}

fn tcp_cluster(snap: &Snapshot, dst: &str) -> String {
    let dst: SocketAddr = dst.parse().expect("socket address");
    match snap.route_tcp(dst) {
        StreamDecision::Cluster(c) => c.name.to_string(),
        StreamDecision::Rule(r) => format!("rule {}", r.source),
        StreamDecision::Passthrough => "Passthrough".into(),
        StreamDecision::Blocked => "Blocked".into(),
    }
}

const RECOMMENDATION: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: recommendation, namespace: tutorial}
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  selector: {app: recommendation}
  ports:
  - {name: http, port: 8080, targetPort: 8080}
  - {name: grpc-api, port: 9090, targetPort: grpc, protocol: TCP}
  - {name: metrics, port: 9100, appProtocol: http2}
  - {name: tcp-db, port: 5432}
  - {name: dns, port: 53, protocol: UDP}
  - {name: web, port: 8443, appProtocol: https}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: recommendation-v1, namespace: tutorial}
spec:
  address: 10.1.0.11
  labels: {app: recommendation, version: v1}
  ports: {grpc: 19090}
  serviceAccount: recommendation
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: recommendation-v2, namespace: tutorial}
spec:
  address: 10.1.0.12
  labels: {app: recommendation, version: v2}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: elsewhere, namespace: other}
spec:
  address: 10.1.0.13
  labels: {app: recommendation, version: v3}
"#;

#[test]
fn kube_service_hostname_addresses_ports_and_protocols() {
    let services = services_from(&resources(RECOMMENDATION));
    assert_eq!(services.len(), 1);
    let svc = &services[0];
    assert_eq!(&*svc.hostname, "recommendation.tutorial.svc.cluster.local");
    assert_eq!(&*svc.source, "Service tutorial/recommendation");
    assert!(!svc.mesh_external);
    assert_eq!(svc.resolution, Resolution::Static);
    assert!(svc.has_address("10.96.0.20".parse().unwrap()));
    assert_eq!(
        svc.addresses.len(),
        1,
        "clusterIP and clusterIPs are one address"
    );
    let ports: Vec<(u16, &str, Protocol, Option<u16>)> = svc
        .ports
        .iter()
        .map(|p| (p.number, &*p.name, p.protocol, p.target_port))
        .collect();
    assert_eq!(
        ports,
        vec![
            (8080, "http", Protocol::Http, Some(8080)),
            (9090, "grpc-api", Protocol::Grpc, None),
            (9100, "metrics", Protocol::Http2, None),
            (5432, "tcp-db", Protocol::Tcp, None),
            (8443, "web", Protocol::Https, None),
        ],
        "UDP ports are skipped; appProtocol wins over the name"
    );
}

#[test]
fn kube_service_unknown_port_names_are_sniffed() {
    let services = services_from(&resources(
        r#"
apiVersion: v1
kind: Service
metadata: {name: a}
spec:
  ports: [{name: web, port: 80}, {name: mysql-ro, port: 81}, {name: http2-x, port: 82}, {name: tls, port: 83}]
"#,
    ));
    let protos: Vec<Protocol> = services[0].ports.iter().map(|p| p.protocol).collect();
    assert_eq!(
        protos,
        [
            Protocol::Unknown,
            Protocol::Unknown,
            Protocol::Http2,
            Protocol::Tls
        ]
    );
}

#[test]
fn workload_entries_selected_by_the_service_selector_with_named_target_port() {
    let snap = snapshot_in("tutorial", &[("app", "sleep")], RECOMMENDATION);
    let cluster = &snap.clusters["outbound|9090||recommendation.tutorial.svc.cluster.local"];
    let UpstreamAddress::Endpoints(eps) = cluster.upstream() else {
        panic!("static endpoints expected");
    };
    let v1: IpAddr = "10.1.0.11".parse().unwrap();
    let v2: IpAddr = "10.1.0.12".parse().unwrap();
    assert_eq!(
        eps,
        vec![
            (EndpointAddress::Ip(v1), 19090, 1),
            // No port named `grpc` on this entry: the service port number is used.
            (EndpointAddress::Ip(v2), 9090, 1),
        ],
        "only the service's namespace is selected; the named targetPort is resolved per entry"
    );
    let http = &snap.clusters["outbound|8080||recommendation.tutorial.svc.cluster.local"];
    assert_eq!(http.endpoints.len(), 2);
    assert_eq!(http.endpoint_port(&http.endpoints[0]), 8080);
}

#[test]
fn endpoints_objects_give_addresses_and_ports_with_labels_from_workload_entries() {
    let snap = snapshot_in(
        "default",
        &[("app", "sleep")],
        r#"
apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec:
  clusterIP: 10.96.0.30
  ports: [{name: http, port: 8000, targetPort: web}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: httpbin}
subsets:
- addresses: [{ip: 10.1.0.21}, {ip: 10.1.0.22}]
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: httpbin-a}
spec:
  address: 10.1.0.21
  labels: {app: httpbin, version: a}
"#,
    );
    let cluster = &snap.clusters["outbound|8000||httpbin.default.svc.cluster.local"];
    let UpstreamAddress::Endpoints(eps) = cluster.upstream() else {
        panic!("static endpoints expected");
    };
    let ports: Vec<u16> = eps.iter().map(|e| e.1).collect();
    assert_eq!(ports, [80, 80]);
    assert_eq!(
        cluster.endpoints[0]
            .labels
            .get("version")
            .map(String::as_str),
        Some("a")
    );
    assert!(cluster.endpoints[1].labels.is_empty());
}

#[test]
fn short_names_route_from_the_proxy_namespace() {
    let snap = snapshot_in("tutorial", &[("app", "preference")], RECOMMENDATION);
    let fqdn = "outbound|8080||recommendation.tutorial.svc.cluster.local";
    for host in [
        "recommendation:8080",
        "recommendation",
        "recommendation.tutorial",
        "recommendation.tutorial:8080",
        "recommendation.tutorial.svc",
        "recommendation.tutorial.svc.cluster.local:8080",
        "Recommendation:8080",
    ] {
        assert_eq!(http_cluster(&snap, host, 8080), fqdn, "Host: {host}");
    }
}

#[test]
fn short_names_from_another_namespace_need_the_namespace() {
    let snap = snapshot_in("default", &[("app", "sleep")], RECOMMENDATION);
    assert_eq!(
        http_cluster(&snap, "recommendation:8080", 8080),
        "Passthrough"
    );
    assert_eq!(
        http_cluster(&snap, "recommendation.tutorial:8080", 8080),
        "outbound|8080||recommendation.tutorial.svc.cluster.local"
    );
    assert_eq!(
        http_cluster(&snap, "recommendation.tutorial.svc", 8080),
        "outbound|8080||recommendation.tutorial.svc.cluster.local"
    );
}

#[test]
fn short_names_reach_virtual_service_hosts() {
    let yaml = format!(
        "{RECOMMENDATION}---\n{}",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: recommendation, namespace: tutorial}
spec:
  host: recommendation
  subsets: [{name: version-v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: recommendation, namespace: tutorial}
spec:
  hosts: [recommendation]
  http:
  - route:
    - destination: {host: recommendation, subset: version-v2, port: {number: 8080}}
"#
    );
    let snap = snapshot_in("tutorial", &[("app", "preference")], &yaml);
    let v2 = "outbound|8080|version-v2|recommendation.tutorial.svc.cluster.local";
    assert_eq!(http_cluster(&snap, "recommendation:8080", 8080), v2);
    assert_eq!(http_cluster(&snap, "recommendation.tutorial", 8080), v2);
    let other = snapshot_in("default", &[("app", "sleep")], &yaml);
    assert_eq!(
        http_cluster(&other, "recommendation.tutorial:8080", 8080),
        v2
    );
}

#[test]
fn vip_routes_http_and_tcp() {
    let snap = snapshot_in("default", &[("app", "sleep")], RECOMMENDATION);
    assert_eq!(
        http_cluster(&snap, "10.96.0.20:8080", 8080),
        "outbound|8080||recommendation.tutorial.svc.cluster.local"
    );
    assert_eq!(
        tcp_cluster(&snap, "10.96.0.20:5432"),
        "outbound|5432||recommendation.tutorial.svc.cluster.local"
    );
    assert_eq!(tcp_cluster(&snap, "10.96.0.21:5432"), "Passthrough");
    assert_eq!(
        snap.declared_protocol("10.96.0.20:5432".parse().unwrap()),
        Some(Protocol::Tcp)
    );
}

#[test]
fn external_name_service_resolves_the_external_name() {
    let services = services_from(&resources(
        r#"
apiVersion: v1
kind: Service
metadata: {name: worldclock, namespace: tutorial}
spec:
  type: ExternalName
  externalName: worldclockapi.com
  ports: [{name: http, port: 80}]
"#,
    ));
    let svc = &services[0];
    assert_eq!(&*svc.hostname, "worldclock.tutorial.svc.cluster.local");
    assert_eq!(svc.resolution, Resolution::Dns);
    assert!(svc.addresses.is_empty());
    assert_eq!(svc.endpoints.len(), 1);
    assert_eq!(
        svc.endpoints[0].address,
        EndpointAddress::Name("worldclockapi.com".into())
    );
}

#[test]
fn headless_service_forwards_to_the_original_destination() {
    let services = services_from(&resources(
        r#"
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  ports: [{name: tcp, port: 5432}]
"#,
    ));
    assert_eq!(services[0].resolution, Resolution::None);
    assert!(services[0].addresses.is_empty());
}

#[test]
fn export_to_annotation_limits_kube_service_visibility() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  name: private
  namespace: team
  annotations: {networking.istio.io/exportTo: "."}
spec:
  clusterIP: 10.96.0.40
  ports: [{name: http, port: 80}]
"#;
    assert_eq!(snapshot_in("team", &[], yaml).services.len(), 1);
    assert_eq!(snapshot_in("default", &[], yaml).services.len(), 0);
}

#[test]
fn service_entry_workload_selector_selects_workload_entries() {
    let snap = snapshot_in(
        "default",
        &[("app", "sleep")],
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms, namespace: vm}
spec:
  hosts: [legacy.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: vm}
spec:
  address: 192.168.1.10
  labels: {app: legacy}
  ports: {http: 9080}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-2, namespace: vm}
spec:
  address: 192.168.1.11
  labels: {app: legacy}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-3, namespace: default}
spec:
  address: 192.168.1.12
  labels: {app: legacy}
"#,
    );
    let cluster = &snap.clusters["outbound|80||legacy.internal"];
    let UpstreamAddress::Endpoints(eps) = cluster.upstream() else {
        panic!("static endpoints expected");
    };
    let got: Vec<(String, u16)> = eps.iter().map(|e| (e.0.to_string(), e.1)).collect();
    assert_eq!(
        got,
        [
            ("192.168.1.10".to_string(), 9080),
            ("192.168.1.11".to_string(), 8080)
        ]
    );
}

#[test]
fn kube_service_wins_over_a_service_entry_for_the_same_host() {
    let services = services_from(&resources(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: decorate}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9999, name: http, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: http, port: 9080}]
"#,
    ));
    assert_eq!(services.len(), 1);
    assert_eq!(&*services[0].source, "Service default/reviews");
}
