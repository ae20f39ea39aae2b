//! Table tests: config (YAML as users write it) + request facts → routing decision.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::HeaderMap;
use sluice_model::route::{ClusterRef, HttpRequestFacts, Operation};
use sluice_model::{HttpDecision, OutboundPolicy, RouteAction, Snapshot, StreamDecision};

mod common;
use common::snapshot_in;

fn snapshot(yaml: &str) -> Snapshot {
    snapshot_in("default", &[("app", "sleep")], yaml)
}

struct Req<'a> {
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    port: u16,
    headers: HeaderMap,
}

fn get<'a>(authority: &'a str, path: &'a str, port: u16) -> Req<'a> {
    Req {
        method: "GET",
        authority,
        path,
        port,
        headers: HeaderMap::new(),
    }
}

fn route<'a>(snap: &'a Snapshot, r: &Req<'_>) -> HttpDecision<'a> {
    snap.route_http(&HttpRequestFacts {
        method: r.method,
        scheme: "http",
        authority: r.authority,
        path_and_query: r.path,
        headers: &r.headers,
        port: r.port,
    })
}

/// The cluster names a decision forwards to (empty for non-forwarding decisions).
fn clusters(d: &HttpDecision<'_>, port: u16) -> Vec<String> {
    match d {
        HttpDecision::Route { rule, .. } => match &rule.action {
            RouteAction::Forward(t) => t
                .iter()
                .map(|t| match t.cluster.resolve(port) {
                    Ok(c) => c.name.to_string(),
                    Err(missing) => format!("MISSING {missing}"),
                })
                .collect(),
            _ => vec![],
        },
        _ => vec![],
    }
}

const MESH_REGISTRY_ONLY: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
"#;

const HTTPBIN_SE: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.org
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
"#;

#[test]
fn unknown_host_follows_outbound_policy() {
    let allow = snapshot("");
    assert_eq!(allow.mesh.outbound_policy, OutboundPolicy::AllowAny);
    assert!(matches!(
        route(&allow, &get("example.com", "/", 80)),
        HttpDecision::Passthrough
    ));
    let dst: SocketAddr = "1.2.3.4:443".parse().unwrap();
    assert!(matches!(
        allow.route_tls(Some("www.google.com"), dst),
        StreamDecision::Passthrough
    ));
    assert!(matches!(allow.route_tcp(dst), StreamDecision::Passthrough));

    let block = snapshot(MESH_REGISTRY_ONLY);
    assert_eq!(block.mesh.outbound_policy, OutboundPolicy::RegistryOnly);
    assert!(matches!(
        route(&block, &get("example.com", "/", 80)),
        HttpDecision::Blocked
    ));
    assert!(matches!(
        block.route_tls(Some("www.google.com"), dst),
        StreamDecision::Blocked
    ));
    assert!(matches!(block.route_tcp(dst), StreamDecision::Blocked));
}

#[test]
fn service_entry_gives_default_route_with_decorator() {
    let snap = snapshot(&format!("{MESH_REGISTRY_ONLY}\n---\n{HTTPBIN_SE}"));
    // The port in the Host header is ignored when matching.
    for authority in ["httpbin.org", "httpbin.org:80", "HTTPBIN.org"] {
        let d = route(&snap, &get(authority, "/headers", 80));
        assert_eq!(
            clusters(&d, 80),
            ["outbound|80||httpbin.org"],
            "{authority}"
        );
        let HttpDecision::Route { rule, .. } = d else {
            panic!()
        };
        assert_eq!(rule.name.as_deref(), Some("default"));
        assert_eq!(rule.operation.render(80), "httpbin.org:80/*");
        assert_eq!(rule.operation.header_value(80).unwrap(), "httpbin.org:80/*");
        assert_eq!(rule.retry.attempts, 2, "Istio's default retry policy");
        assert!(rule.retry.retry_on.connect_failure);
        assert_eq!(rule.timeout, None);
    }
    // Same host, undeclared port: unknown → blocked.
    assert!(matches!(
        route(&snap, &get("httpbin.org", "/", 8080)),
        HttpDecision::Blocked
    ));
}

#[test]
fn virtual_service_timeout_and_removal() {
    let vs = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin-ext
spec:
  hosts:
    - httpbin.org
  http:
  - timeout: 3s
    route:
      - destination:
          host: httpbin.org
        weight: 100
"#;
    let snap = snapshot(&format!("{HTTPBIN_SE}\n---\n{vs}"));
    let d = route(&snap, &get("httpbin.org", "/delay/5", 80));
    assert_eq!(clusters(&d, 80), ["outbound|80||httpbin.org"]);
    let HttpDecision::Route { rule, .. } = d else {
        panic!()
    };
    assert_eq!(rule.timeout, Some(Duration::from_secs(3)));
    assert_eq!(rule.operation.render(80), "httpbin.org:80/*");

    // Seed 002's half-second timeout.
    let snap = snapshot(&format!("{HTTPBIN_SE}\n---\n{}", vs.replace("3s", "0.5s")));
    let HttpDecision::Route { rule, .. } = route(&snap, &get("httpbin.org", "/delay/1", 80)) else {
        panic!()
    };
    assert_eq!(rule.timeout, Some(Duration::from_millis(500)));
}

#[test]
fn http_matches_first_match_wins() {
    let snap = snapshot(&format!(
        "{HTTPBIN_SE}\n---\n{}",
        r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: rules}
spec:
  hosts: [httpbin.org]
  http:
  - name: exact
    match: [{uri: {exact: /status/200}}]
    directResponse: {status: 201, body: {string: exact}}
  - name: prefix
    match: [{uri: {prefix: /status}}]
    directResponse: {status: 202}
  - name: regex
    match: [{uri: {regex: "/delay/[0-9]+"}}]
    directResponse: {status: 203}
  - name: header
    match: [{headers: {x-test: {exact: yes}}}]
    directResponse: {status: 204}
  - name: header-present
    match: [{headers: {x-present: {}}}]
    directResponse: {status: 205}
  - name: query
    match: [{queryParams: {q: {prefix: ab}}}]
    directResponse: {status: 206}
  - name: method
    match: [{method: {exact: POST}}]
    directResponse: {status: 207}
  - name: without
    match: [{withoutHeaders: {x-skip: {}}, uri: {prefix: /w}}]
    directResponse: {status: 208}
  - name: port
    match: [{port: 8080}]
    directResponse: {status: 209}
  - name: authority
    match: [{authority: {prefix: httpbin}, uri: {prefix: /a}}]
    directResponse: {status: 210}
  - name: ignorecase
    match: [{uri: {exact: /case}, ignoreUriCase: true}]
    directResponse: {status: 211}
"#
    ));
    let status = |r: &Req<'_>| -> Option<(String, u16)> {
        match route(&snap, r) {
            HttpDecision::Route { rule, .. } => match &rule.action {
                RouteAction::DirectResponse { status, .. } => {
                    Some((rule.name.as_deref()?.to_string(), *status))
                }
                _ => None,
            },
            _ => None,
        }
    };
    let hdr = |k: &'static str, v: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(k, v.parse().unwrap());
        h
    };
    assert_eq!(
        status(&get("httpbin.org", "/status/200", 80)),
        Some(("exact".into(), 201))
    );
    assert_eq!(
        status(&get("httpbin.org", "/status/500", 80)),
        Some(("prefix".into(), 202))
    );
    assert_eq!(
        status(&get("httpbin.org", "/statusx", 80)),
        Some(("prefix".into(), 202)),
        "plain string prefix"
    );
    assert_eq!(
        status(&get("httpbin.org", "/delay/12", 80)),
        Some(("regex".into(), 203))
    );
    assert_eq!(
        status(&get("httpbin.org", "/delay/12/x", 80)),
        None,
        "regex must match the whole path"
    );
    let mut r = get("httpbin.org", "/x", 80);
    r.headers = hdr("x-test", "yes");
    assert_eq!(status(&r), Some(("header".into(), 204)));
    r.headers = hdr("x-present", "anything");
    assert_eq!(status(&r), Some(("header-present".into(), 205)));
    assert_eq!(
        status(&get("httpbin.org", "/x?q=abc&z=1", 80)),
        Some(("query".into(), 206))
    );
    let mut r = get("httpbin.org", "/x", 80);
    r.method = "POST";
    assert_eq!(status(&r), Some(("method".into(), 207)));
    assert_eq!(
        status(&get("httpbin.org", "/w", 80)),
        Some(("without".into(), 208))
    );
    let mut r = get("httpbin.org", "/w", 8080);
    r.headers = hdr("x-skip", "1");
    assert_eq!(status(&r), Some(("port".into(), 209)));
    assert_eq!(
        status(&get("httpbin.org", "/a", 80)),
        Some(("authority".into(), 210))
    );
    assert_eq!(
        status(&get("httpbin.org", "/CASE", 80)),
        Some(("ignorecase".into(), 211))
    );
    // A VirtualService owns the host: nothing matched → 404 NR.
    assert!(matches!(
        route(&snap, &get("httpbin.org", "/nothing", 80)),
        HttpDecision::NoRoute { .. }
    ));
}

#[test]
fn weighted_destinations_subsets_and_ports() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: multi}
spec:
  hosts: [api.example.com]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 8080, name: http-alt, protocol: HTTP}
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api.example.com
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  http:
  - match: [{uri: {prefix: /split}}]
    route:
    - {destination: {host: api.example.com, subset: v1, port: {number: 80}}, weight: 75}
    - {destination: {host: api.example.com, subset: v2, port: {number: 80}}, weight: 25}
  - match: [{uri: {prefix: /nosubset}}]
    route:
    - destination: {host: api.example.com, subset: missing, port: {number: 80}}
  - route:
    - destination: {host: api.example.com}
"#,
    );
    let d = route(&snap, &get("api.example.com", "/split", 80));
    assert_eq!(
        clusters(&d, 80),
        [
            "outbound|80|v1|api.example.com",
            "outbound|80|v2|api.example.com"
        ]
    );
    let HttpDecision::Route { rule, .. } = d else {
        panic!()
    };
    let RouteAction::Forward(targets) = &rule.action else {
        panic!()
    };
    assert_eq!(
        targets.iter().map(|t| t.weight).collect::<Vec<_>>(),
        [75, 25]
    );
    // Weighted choice follows the weights.
    let picks: Vec<_> = (0..100)
        .map(|i| {
            sluice_model::route::pick_weighted(targets, f64::from(i) / 100.0)
                .unwrap()
                .weight
        })
        .collect();
    assert_eq!(picks.iter().filter(|w| **w == 75).count(), 75);
    // Multiple destinations: Istio's decorator names the VirtualService.
    assert_eq!(rule.operation.render(80), "api:80/split*");
    assert_eq!(rule.operation.header_value(81).unwrap(), "api:81/split*");
    // Subset clusters carry only the subset's endpoints.
    let v1 = &snap.clusters["outbound|80|v1|api.example.com"];
    assert_eq!(v1.endpoints.len(), 1);
    // Unknown subset: a cluster that does not exist (503 NC at request time).
    let d = route(&snap, &get("api.example.com", "/nosubset", 80));
    assert_eq!(
        clusters(&d, 80),
        ["MISSING outbound|80|missing|api.example.com"]
    );
    // No port on a multi-port service: the port the request arrived on.
    let d = route(&snap, &get("api.example.com", "/", 8080));
    assert_eq!(clusters(&d, 8080), ["outbound|8080||api.example.com"]);
    let HttpDecision::Route { rule, .. } = d else {
        panic!()
    };
    let RouteAction::Forward(t) = &rule.action else {
        panic!()
    };
    assert!(matches!(t[0].cluster, ClusterRef::ByListenerPort(..)));
    assert!(matches!(rule.operation, Operation::PerListenerPort { .. }));
}

#[test]
fn seed_004_wrong_port_routes_to_the_only_declared_port() {
    // The ServiceEntry declares only :81; the app calls :80. A destination without a port takes the
    // service's only port, so the call goes to :81 (and fails there), as in Istio.
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: worldclockapi-egress-rule
spec:
  hosts:
  - worldclockapi.com
  ports:
  - name: http-80
    number: 81
    protocol: http
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: worldclockapi-timeout
spec:
  hosts:
  - worldclockapi.com
  http:
  - timeout: 3s
    route:
    - destination:
        host: worldclockapi.com
      weight: 100
"#,
    );
    let d = route(&snap, &get("worldclockapi.com", "/api/json/cet/now", 80));
    assert_eq!(clusters(&d, 80), ["outbound|81||worldclockapi.com"]);
}

#[test]
fn oldest_virtual_service_wins_a_host() {
    let snap = snapshot(&format!(
        "{HTTPBIN_SE}\n---\n{}",
        r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: older, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [httpbin.org]
  http: [{directResponse: {status: 201}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: newer, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  hosts: [httpbin.org]
  http: [{directResponse: {status: 202}}]
"#
    ));
    let HttpDecision::Route { rule, .. } = route(&snap, &get("httpbin.org", "/", 80)) else {
        panic!()
    };
    assert!(matches!(
        rule.action,
        RouteAction::DirectResponse { status: 201, .. }
    ));
    assert!(snap
        .diagnostics
        .iter()
        .any(|d| d.message.contains("already defined")));
}

#[test]
fn gateways_and_source_labels_select_rules() {
    let snap = snapshot(&format!(
        "{HTTPBIN_SE}\n---\n{}",
        r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: scoped}
spec:
  hosts: [httpbin.org]
  gateways: [mesh, my-gateway]
  http:
  - match: [{sourceLabels: {app: other}}]
    directResponse: {status: 201}
  - match: [{gateways: [my-gateway]}]
    directResponse: {status: 202}
  - match: [{sourceLabels: {app: sleep}}]
    directResponse: {status: 203}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: gateway-only}
spec:
  hosts: [other.org]
  gateways: [my-gateway]
  http: [{directResponse: {status: 204}}]
"#
    ));
    let HttpDecision::Route { rule, .. } = route(&snap, &get("httpbin.org", "/", 80)) else {
        panic!()
    };
    assert!(matches!(
        rule.action,
        RouteAction::DirectResponse { status: 203, .. }
    ));
    assert!(matches!(
        route(&snap, &get("other.org", "/", 80)),
        HttpDecision::Passthrough
    ));
}

#[test]
fn export_to_hides_resources_from_other_namespaces() {
    let cfg = format!(
        "{}\n---\n{MESH_REGISTRY_ONLY}",
        HTTPBIN_SE.replace(
            "spec:\n",
            "  namespace: team-a\nspec:\n  exportTo: [\".\"]\n"
        )
    );
    let mine = snapshot_in("team-a", &[], &cfg);
    assert!(matches!(
        route(&mine, &get("httpbin.org", "/", 80)),
        HttpDecision::Route { .. }
    ));
    let theirs = snapshot_in("team-b", &[], &cfg);
    assert!(matches!(
        route(&theirs, &get("httpbin.org", "/", 80)),
        HttpDecision::Blocked
    ));
}

#[test]
fn tls_routes_by_sni_and_service_entry() {
    let google = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: google
spec:
  hosts:
  - www.google.com
  ports:
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
  location: MESH_EXTERNAL
"#;
    let google_vs = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: google
spec:
  hosts:
  - www.google.com
  tls:
  - match:
    - port: 443
      sni_hosts:
      - www.google.com
    route:
    - destination:
        host: www.google.com
        port:
          number: 443
      weight: 100
"#;
    let dst: SocketAddr = "142.250.1.1:443".parse().unwrap();
    let se_only = snapshot(&format!("{MESH_REGISTRY_ONLY}\n---\n{google}"));
    let StreamDecision::Cluster(c) = se_only.route_tls(Some("www.google.com"), dst) else {
        panic!()
    };
    assert_eq!(&*c.name, "outbound|443||www.google.com");
    assert!(matches!(
        se_only.route_tls(Some("edition.cnn.com"), dst),
        StreamDecision::Blocked
    ));
    assert!(matches!(
        se_only.route_tls(None, dst),
        StreamDecision::Blocked
    ));

    let with_vs = snapshot(&format!(
        "{MESH_REGISTRY_ONLY}\n---\n{google}\n---\n{google_vs}"
    ));
    let StreamDecision::Rule(rule) = with_vs.route_tls(Some("www.google.com"), dst) else {
        panic!()
    };
    assert_eq!(
        rule.targets[0].cluster.resolve(443).unwrap().name.as_ref(),
        "outbound|443||www.google.com"
    );
    // The rule's port must match.
    let other_port: SocketAddr = "142.250.1.1:8443".parse().unwrap();
    assert!(matches!(
        with_vs.route_tls(Some("www.google.com"), other_port),
        StreamDecision::Blocked
    ));
}

#[test]
fn tcp_routes_by_address_port_and_subnet() {
    let snap = snapshot(&format!(
        "{MESH_REGISTRY_ONLY}\n---\n{}",
        r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.internal]
  addresses: [10.1.0.0/16]
  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: db-replica}
spec:
  hosts: [replica.internal]
  addresses: [10.2.0.5]
  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.2.0.6}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db.internal]
  tcp:
  - match: [{port: 5432, destinationSubnets: [10.1.2.0/24]}]
    route: [{destination: {host: replica.internal, port: {number: 5432}}}]
"#
    ));
    let d = |a: &str| snap.route_tcp(a.parse().unwrap());
    let StreamDecision::Rule(r) = d("10.1.2.3:5432") else {
        panic!()
    };
    assert_eq!(
        r.targets[0].cluster.resolve(5432).unwrap().name.as_ref(),
        "outbound|5432||replica.internal"
    );
    let StreamDecision::Cluster(c) = d("10.1.9.9:5432") else {
        panic!()
    };
    assert_eq!(c.name.as_ref(), "outbound|5432||db.internal");
    assert!(matches!(d("10.3.0.1:5432"), StreamDecision::Blocked));
    assert!(matches!(d("10.1.9.9:5433"), StreamDecision::Blocked));
    assert_eq!(
        snap.declared_protocol("10.1.9.9:5432".parse().unwrap()),
        Some(sluice_model::Protocol::Tcp)
    );
}

#[test]
fn tls_origination_from_destination_rule() {
    let snap = snapshot(&format!(
        "{HTTPBIN_SE}\n---\n{}",
        r#"
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: originate}
spec:
  host: httpbin.org
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      tls:
        mode: SIMPLE
        sni: secure.httpbin.org
        caCertificates: /etc/ca.pem
"#
    ));
    let c = &snap.clusters["outbound|80||httpbin.org"];
    let tls = c.tls.as_ref().expect("TLS origination");
    assert_eq!(tls.sni.as_deref(), Some("secure.httpbin.org"));
    assert_eq!(
        tls.ca_certificates.as_deref(),
        Some(Path::new("/etc/ca.pem"))
    );
    assert!(!tls.insecure_skip_verify);
}

#[test]
fn rewrite_redirect_fault_mirror_headers_compile() {
    let snap = snapshot(&format!(
        "{HTTPBIN_SE}\n---\n{}",
        r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: features}
spec:
  hosts: [httpbin.org]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - match: [{uri: {prefix: /api/v1}}]
    rewrite: {uri: /v2}
    headers:
      request: {set: {x-set: a}, add: {x-add: b}, remove: [x-remove]}
      response: {set: {x-resp: c}}
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 50}}
      abort: {httpStatus: 418, percentage: {value: 10}}
    mirror: {host: httpbin.org}
    mirrorPercentage: {value: 25}
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx,connect-failure"}
    route: [{destination: {host: httpbin.org}}]
"#
    ));
    let HttpDecision::Route { rule, .. } = route(&snap, &get("httpbin.org", "/old/x", 80)) else {
        panic!()
    };
    let RouteAction::Redirect(rd) = &rule.action else {
        panic!()
    };
    assert_eq!((rd.uri.as_deref(), rd.code), (Some("/new"), 302));

    let HttpDecision::Route { rule, matched, .. } =
        route(&snap, &get("httpbin.org", "/api/v1/items?x=1", 80))
    else {
        panic!()
    };
    assert_eq!(
        rule.rewritten_path(matched, "/api/v1/items?x=1").as_deref(),
        Some("/v2/items?x=1")
    );
    let fault = rule.fault.as_ref().unwrap();
    assert_eq!(fault.delay, Some((Duration::from_secs(2), 50.0)));
    assert_eq!(fault.abort, Some((418, 10.0)));
    assert_eq!(rule.mirrors.len(), 1);
    assert_eq!(rule.mirrors[0].percent, 25.0);
    assert_eq!(rule.retry.attempts, 3);
    assert_eq!(rule.retry.per_try_timeout, Some(Duration::from_secs(1)));
    assert!(rule.retry.retry_on.five_xx && rule.retry.retry_on.connect_failure);
    let mut h = HeaderMap::new();
    h.insert("x-remove", "1".parse().unwrap());
    h.insert("x-add", "0".parse().unwrap());
    rule.request_headers.apply(&mut h);
    assert_eq!(h.get("x-set").unwrap(), "a");
    assert!(h.get("x-remove").is_none());
    assert_eq!(h.get_all("x-add").iter().count(), 2);
}

#[test]
fn wildcard_service_entry_matches_subdomains_only() {
    let snap = snapshot(&format!(
        "{MESH_REGISTRY_ONLY}\n---\n{}",
        r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: wild}
spec:
  hosts: ["*.example.com"]
  ports: [{number: 443, name: tls, protocol: TLS}, {number: 80, name: http, protocol: HTTP}]
  resolution: NONE
"#
    ));
    let dst: SocketAddr = "9.9.9.9:443".parse().unwrap();
    assert!(matches!(
        snap.route_tls(Some("a.example.com"), dst),
        StreamDecision::Cluster(_)
    ));
    assert!(matches!(
        snap.route_tls(Some("example.com"), dst),
        StreamDecision::Blocked
    ));
    assert!(matches!(
        route(&snap, &get("b.example.com", "/", 80)),
        HttpDecision::Route { .. }
    ));
}

#[test]
fn resolution_decides_where_connections_go() {
    use sluice_model::registry::EndpointAddress;
    use sluice_model::UpstreamAddress;
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: dns}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: rr}
spec:
  hosts: [rr.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS_ROUND_ROBIN
  endpoints: [{address: a.example.com}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: static}
spec:
  hosts: [static.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, ports: {http: 9000}}, {address: 10.0.0.2, weight: 3}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: none}
spec:
  hosts: [none.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
"#,
    );
    let up = |name: &str| snap.clusters[name].upstream();
    assert_eq!(
        up("outbound|80||httpbin.org"),
        UpstreamAddress::Endpoints(vec![(EndpointAddress::Name("httpbin.org".into()), 8080, 1)]),
        "DNS without endpoints resolves the host, on the targetPort"
    );
    assert_eq!(
        up("outbound|80||rr.example.com"),
        UpstreamAddress::Endpoints(vec![(EndpointAddress::Name("a.example.com".into()), 80, 1)])
    );
    assert_eq!(
        up("outbound|80||static.example.com"),
        UpstreamAddress::Endpoints(vec![
            (EndpointAddress::Ip("10.0.0.1".parse().unwrap()), 9000, 1),
            (EndpointAddress::Ip("10.0.0.2".parse().unwrap()), 80, 3),
        ]),
        "endpoint port by port name, weights kept"
    );
    assert_eq!(
        up("outbound|80||none.example.com"),
        UpstreamAddress::OriginalDestination
    );
}
