//! `sluice explain`: one table row per decision kind, through the data path's routing functions.

mod common;

use common::{gateway_snapshot, snapshot_in};
use sluice_model::explain::{explain, render, Outcome, Probe};

const CONFIG: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin.org
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 10}}
  subsets:
  - name: v1
    labels: {version: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  http:
  - name: get
    match: [{uri: {prefix: /get}, headers: {end-user: {exact: jason}}}]
    timeout: 3s
    route:
    - destination: {host: httpbin.org}
  - match: [{uri: {prefix: /missing-subset}}]
    route:
    - destination: {host: httpbin.org, subset: v9}
  - match: [{uri: {prefix: /empty-subset}}]
    route:
    - destination: {host: httpbin.org, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: empty}
spec:
  hosts: [empty.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  tls:
  - match: [{sniHosts: [api.example.com], port: 443}]
    route:
    - destination: {host: api.example.com, port: {number: 443}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com]
  addresses: [10.1.2.3]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.9.9.9, labels: {role: primary}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db.example.com]
  tcp:
  - match: [{port: 5432}]
    route:
    - destination: {host: db.example.com, port: {number: 5432}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: istio-system}
spec:
  hosts: [front.example.com]
  gateways: [gw]
  http:
  - route:
    - destination: {host: httpbin.org, port: {number: 80}}
";

const REGISTRY_ONLY: &str = "
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
";

fn http(url: &str, headers: &[(&str, &str)]) -> Probe {
    let h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Probe::parse(url, "GET", &h).unwrap()
}

#[test]
fn decisions() {
    let allow = snapshot_in("default", &[("app", "sleep")], CONFIG);
    let registry_only = snapshot_in(
        "default",
        &[("app", "sleep")],
        &format!("{CONFIG}{REGISTRY_ONLY}"),
    );
    let gateway = gateway_snapshot("istio-system", &[("istio", "ingressgateway")], CONFIG);
    let cases: Vec<(&str, &sluice_model::Snapshot, Probe, Outcome, &str)> = vec![
        (
            "route hit",
            &allow,
            http("http://httpbin.org/get", &[("end-user", "jason")]),
            Outcome::Forward,
            "forwarded to outbound|80||httpbin.org",
        ),
        (
            "no route",
            &allow,
            http("http://httpbin.org/other", &[]),
            Outcome::NoRoute,
            "404 NR",
        ),
        (
            "passthrough",
            &allow,
            http("http://example.org/", &[]),
            Outcome::Passthrough,
            "PassthroughCluster",
        ),
        (
            "blocked",
            &registry_only,
            http("http://example.org/", &[]),
            Outcome::Blocked,
            "502 via route block_all",
        ),
        (
            "blocked tcp",
            &registry_only,
            Probe::parse("tcp://192.0.2.1:9999", "GET", &[]).unwrap(),
            Outcome::Blocked,
            "BlackHoleCluster",
        ),
        (
            "tls rule",
            &allow,
            Probe::parse("tls://api.example.com:443", "GET", &[]).unwrap(),
            Outcome::Forward,
            "forwarded by VirtualService default/api tls[0] to outbound|443||api.example.com",
        ),
        (
            "tcp rule",
            &allow,
            Probe::parse("tcp://10.1.2.3:5432", "GET", &[]).unwrap(),
            Outcome::Forward,
            "forwarded by VirtualService default/db tcp[0] to outbound|5432||db.example.com",
        ),
        (
            "subset missing",
            &allow,
            http("http://httpbin.org/missing-subset", &[]),
            Outcome::NoCluster,
            "503 NC: cluster outbound|80|v9|httpbin.org does not exist",
        ),
        (
            "subset without endpoints",
            &allow,
            http("http://httpbin.org/empty-subset", &[]),
            Outcome::NoHealthyUpstream,
            "503 UH",
        ),
        (
            "service without endpoints",
            &allow,
            http("http://empty.example.com/", &[]),
            Outcome::NoHealthyUpstream,
            "503 UH",
        ),
        (
            "gateway route",
            &gateway,
            http("http://front.example.com:8080/", &[]),
            Outcome::Forward,
            "forwarded to outbound|80||httpbin.org",
        ),
        (
            "gateway unknown host",
            &gateway,
            http("http://nobody.example.com:8080/", &[]),
            Outcome::NoRoute,
            "404 NR",
        ),
        (
            "gateway port not served",
            &gateway,
            http("http://front.example.com:9999/", &[]),
            Outcome::Blocked,
            "no Gateway selecting this proxy has a server on port 9999",
        ),
    ];
    for (name, snap, probe, outcome, summary) in cases {
        let e = explain(snap, &probe);
        assert_eq!(e.outcome, outcome, "{name}: {}", render(&e));
        assert!(e.summary.contains(summary), "{name}: {}", render(&e));
    }
}

#[test]
fn route_hit_shows_rule_match_policy_and_endpoints() {
    let snap = snapshot_in("default", &[("app", "sleep")], CONFIG);
    let e = explain(
        &snap,
        &http("http://httpbin.org/get", &[("end-user", "jason")]),
    );
    let text = render(&e);
    assert!(
        text.contains("Listener:  captured outbound on port 80"),
        "{text}"
    );
    assert!(
        text.contains("Rule:      VirtualService default/httpbin http[0]"),
        "{text}"
    );
    assert!(text.contains("Route:     get"), "{text}");
    assert!(
        text.contains(r#"Matched:   uri prefix "/get", header end-user exact "jason""#),
        "{text}"
    );
    assert!(text.contains("Timeout:   3s"), "{text}");
    assert!(
        text.contains("policy:      DestinationRule default/httpbin"),
        "{text}"
    );
    assert!(text.contains("lb:          ROUND_ROBIN"), "{text}");
    assert!(text.contains("maxConnections 10"), "{text}");
    assert!(text.contains("upstream:    httpbin.org:80"), "{text}");

    let tcp = explain(
        &snap,
        &Probe::parse("tcp://10.1.2.3:5432", "GET", &[]).unwrap(),
    );
    let text = render(&tcp);
    assert!(
        text.contains("endpoint:    10.9.9.9:5432 weight 1 labels {role=primary}"),
        "{text}"
    );
    let json = serde_json::to_value(&tcp).unwrap();
    assert_eq!(json["outcome"], "forward");
    assert_eq!(
        json["targets"][0]["cluster"],
        "outbound|5432||db.example.com"
    );
}

#[test]
fn urls() {
    assert_eq!(
        Probe::parse("http://Example.com/x?y=1", "post", &[]).unwrap(),
        Probe::Http {
            scheme: "http".into(),
            method: "POST".into(),
            host: "example.com".into(),
            port: 80,
            path: "/x?y=1".into(),
            headers: vec![],
        }
    );
    assert!(matches!(
        Probe::parse("https://example.com", "GET", &[]).unwrap(),
        Probe::Http { port: 443, .. }
    ));
    assert!(Probe::parse("tls://example.com", "GET", &[]).is_err());
    assert!(Probe::parse("ftp://example.com:21", "GET", &[]).is_err());
    assert!(matches!(
        Probe::parse("tcp://[::1]:5432", "GET", &[]).unwrap(),
        Probe::Tcp { port: 5432, .. }
    ));
}

/// An original-destination service (resolution NONE) is reached differently by the two kinds of
/// proxy, and explain says what the data path does (`Cluster::original_destination_port`).
#[test]
fn original_destination_clusters_name_the_port_each_proxy_kind_uses() {
    let yaml = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: istio-system}
spec:
  hosts: ['*.wild.example']
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*.wild.example']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild, namespace: istio-system}
spec:
  hosts: ['*.wild.example']
  gateways: [gw, mesh]
  http:
  - route:
    - destination: {host: '*.wild.example'}
";
    let probe = http("http://a.wild.example/", &[]);
    let sidecar = render(&explain(&snapshot_in("istio-system", &[], yaml), &probe));
    assert!(
        sidecar.contains("the original destination address, port 80 (resolution NONE)"),
        "{sidecar}"
    );
    let gateway = gateway_snapshot("istio-system", &[("istio", "ingressgateway")], yaml);
    let gateway = render(&explain(&gateway, &probe));
    assert!(
        gateway.contains("where the request's host resolves, port 8080 (resolution NONE)"),
        "{gateway}"
    );
}

#[test]
fn tls_rules_show_their_match_and_skipped_verification_is_not_called_system_roots() {
    let snap = snapshot_in("default", &[("app", "sleep")], CONFIG);
    // A `tls` rule with sniHosts and port is matched by them, not "a rule without match".
    let e = explain(
        &snap,
        &Probe::parse("tls://api.example.com:443", "GET", &[]).unwrap(),
    );
    let text = render(&e);
    assert!(
        text.contains("Matched:   sniHosts [api.example.com], port 443"),
        "{text}"
    );
    assert!(!text.contains("rule without match"), "{text}");

    // Origination with insecureSkipVerify checks no CA at all.
    let config = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [ext.example.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext}
spec:
  host: ext.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, insecureSkipVerify: true}
";
    let snap = snapshot_in("default", &[("app", "sleep")], config);
    let text = render(&explain(&snap, &http("http://ext.example.com/", &[])));
    assert!(
        text.contains("CA none: insecureSkipVerify, the server's certificate is not checked"),
        "{text}"
    );
    assert!(!text.contains("system roots"), "{text}");
}
