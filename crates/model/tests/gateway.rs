//! Gateway proxies: which Gateways a proxy serves, how VirtualServices bind to their servers,
//! and the routing decisions on each port (table tests, no sockets).

use std::path::PathBuf;

use http::HeaderMap;
use sluice_model::gateway::{Credential, ServerTlsMode, TlsVersion};
use sluice_model::route::HttpRequestFacts;
use sluice_model::{HttpDecision, RouteAction, Snapshot, StreamDecision, UpstreamAddress};

mod common;
use common::{gateway_snapshot, gateway_snapshot_of, resources, resources_from_files};

const INGRESS: &[(&str, &str)] = &[("istio", "ingressgateway"), ("app", "istio-ingressgateway")];

fn route<'a>(snap: &'a Snapshot, port: u16, authority: &str, path: &str) -> HttpDecision<'a> {
    let headers = HeaderMap::new();
    snap.route_gateway_http(
        port,
        &HttpRequestFacts {
            method: "GET",
            scheme: "http",
            authority,
            path_and_query: path,
            headers: &headers,
            port,
        },
    )
}

/// `cluster` names of the route taken, `404 <vhost>` for NoRoute.
fn outcome(snap: &Snapshot, port: u16, authority: &str, path: &str) -> String {
    match route(snap, port, authority, path) {
        HttpDecision::Route { rule, .. } => match &rule.action {
            RouteAction::Forward(t) => t
                .iter()
                .map(|t| match t.cluster.resolve(port) {
                    Ok(c) => c.name.to_string(),
                    Err(missing) => format!("MISSING {missing}"),
                })
                .collect::<Vec<_>>()
                .join(","),
            RouteAction::DirectResponse { status, .. } => format!("direct {status}"),
            RouteAction::Redirect(_) => "redirect".into(),
        },
        HttpDecision::NoRoute { vhost } => format!("404 {vhost}"),
        other => format!("unexpected {other:?}"),
    }
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: default}
spec:
  selector: {app: httpbin}
  ports:
  - {name: http, port: 8000, targetPort: 80}
---
apiVersion: v1
kind: Endpoints
metadata: {name: httpbin, namespace: default}
subsets:
- addresses: [{ip: 10.0.0.5}]
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  ports:
  - {name: http, port: 80}
"#;

fn with_services(yaml: &str) -> String {
    format!("{SERVICES}\n---\n{yaml}")
}

const HTTP_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"#;

const HTTPBIN_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.example.com]
  gateways: [gw]
  http:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
"#;

#[test]
fn gateways_are_selected_by_labels_or_no_selector() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: other}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: everyone, namespace: other}
spec:
  servers:
  - port: {number: 80, name: http2, protocol: HTTP}
    hosts: ["a.example.com"]
  - port: {number: 9000, name: tcp, protocol: TCP}
    hosts: ["*"]
"#;
    let snap = gateway_snapshot("istio-system", INGRESS, yaml);
    let ports: Vec<(u16, Vec<String>)> = snap
        .gateway_ports()
        .iter()
        .map(|p| {
            (
                p.number,
                p.servers.iter().map(|s| s.source.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            (
                80,
                vec![
                    "Gateway default/ingress servers[0]".to_string(),
                    "Gateway other/everyone servers[0]".to_string()
                ]
            ),
            (9000, vec!["Gateway other/everyone servers[1]".to_string()]),
        ]
    );
    let egress = gateway_snapshot("istio-system", &[("istio", "egressgateway")], yaml);
    let numbers: Vec<u16> = egress.gateway_ports().iter().map(|p| p.number).collect();
    assert_eq!(numbers, vec![80, 8080, 9000]);
    // Sidecars serve no Gateway.
    assert!(common::snapshot_in("default", INGRESS, yaml)
        .gateway_ports()
        .is_empty());
}

#[test]
fn server_fields_are_resolved() {
    let snap = gateway_snapshot(
        "istio-system",
        INGRESS,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: prod}
spec:
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["./Shop.Example.com", "*/api.example.com", "dev/*", "*.example.org"]
    tls:
      mode: MUTUAL
      serverCertificate: /etc/certs/tls.crt
      privateKey: /etc/certs/tls.key
      caCertificates: /etc/certs/ca.crt
      minProtocolVersion: TLSV1_2
      maxProtocolVersion: TLS_AUTO
      cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]
      subjectAltNames: [client.example.com]
"#,
    );
    let server = &snap.gateway_ports()[0].servers[0];
    assert_eq!(&*server.gateway, "prod/gw");
    assert_eq!(server.name.as_deref(), Some("https"));
    let hosts: Vec<(Option<&str>, &str)> = server
        .hosts
        .iter()
        .map(|h| (h.namespace.as_deref(), &*h.host))
        .collect();
    assert_eq!(
        hosts,
        vec![
            (Some("prod"), "shop.example.com"),
            (None, "api.example.com"),
            (Some("dev"), "*"),
            (None, "*.example.org"),
        ]
    );
    let tls = server.tls.as_ref().unwrap();
    assert_eq!(tls.mode, ServerTlsMode::Mutual);
    assert_eq!(
        tls.credential,
        Credential::Files {
            cert: PathBuf::from("/etc/certs/tls.crt"),
            key: PathBuf::from("/etc/certs/tls.key"),
            ca: Some(PathBuf::from("/etc/certs/ca.crt")),
        }
    );
    assert_eq!(tls.min_version, Some(TlsVersion::Tls12));
    assert_eq!(tls.max_version, None);
    assert_eq!(tls.cipher_suites, vec!["ECDHE-RSA-AES128-GCM-SHA256"]);
    assert_eq!(tls.subject_alt_names, vec!["client.example.com"]);
    assert!(server.terminates_tls());
    assert!(snap.gateway_ports()[0].expects_tls());
}

#[test]
fn virtual_service_binds_by_name_and_namespaced_name_only_with_gateways() {
    let yaml = with_services(&format!(
        r#"{HTTP_GATEWAY}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bare, namespace: default}}
spec:
  hosts: [a.example.com]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: qualified, namespace: prod}}
spec:
  hosts: [b.example.com]
  gateways: [default/gw]
  http:
  - route: [{{destination: {{host: web}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: mesh-only, namespace: default}}
spec:
  hosts: [c.example.com]
  http:
  - route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: wrong-namespace, namespace: prod}}
spec:
  hosts: [d.example.com]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: web}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: hidden, namespace: default}}
spec:
  hosts: [e.example.com]
  gateways: [gw]
  exportTo: ["."]
  http:
  - route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
"#
    ));
    let snap = gateway_snapshot("istio-system", INGRESS, &yaml);
    assert_eq!(
        outcome(&snap, 80, "a.example.com", "/"),
        "outbound|8000||httpbin.default.svc.cluster.local"
    );
    assert_eq!(
        outcome(&snap, 80, "b.example.com", "/"),
        "outbound|80||web.prod.svc.cluster.local"
    );
    assert_eq!(outcome(&snap, 80, "c.example.com", "/"), "404 blackhole:80");
    assert_eq!(outcome(&snap, 80, "d.example.com", "/"), "404 blackhole:80");
    // Not exported to the gateway's namespace.
    assert_eq!(outcome(&snap, 80, "e.example.com", "/"), "404 blackhole:80");
    // A gateway named by a VirtualService but not defined is reported by `sluice validate`.
    let problems = sluice_model::references::check(&resources(&yaml));
    let unknown: Vec<_> = problems
        .iter()
        .filter(|d| d.field == "spec.gateways[0]")
        .collect();
    assert_eq!(unknown.len(), 1, "{problems:?}");
    assert_eq!(
        unknown[0].resource.as_deref(),
        Some("VirtualService prod/wrong-namespace")
    );
    assert!(unknown[0]
        .message
        .contains("Gateway prod/gw does not exist"));
}

#[test]
fn hosts_intersect_with_namespaces_and_wildcards() {
    let yaml = with_services(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["prod/*.shop.com", "*.example.com", "exact.org"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: prod}
spec:
  hosts: ["*"]
  gateways: [default/gw]
  http:
  - route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop-other-ns, namespace: default}
spec:
  hosts: ["www.shop.com"]
  gateways: [gw]
  http:
  - route: [{destination: {host: httpbin, port: {number: 8000}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sub, namespace: default}
spec:
  hosts: ["a.b.example.com", "example.com"]
  gateways: [gw]
  http:
  - route: [{destination: {host: httpbin, port: {number: 8000}}}]
"#,
    );
    let snap = gateway_snapshot("istio-system", INGRESS, &yaml);
    let web = "outbound|80||web.prod.svc.cluster.local";
    let httpbin = "outbound|8000||httpbin.default.svc.cluster.local";
    // VS `*` in prod takes every server host: prod/*.shop.com, *.example.com, exact.org.
    assert_eq!(outcome(&snap, 80, "www.shop.com", "/"), web);
    assert_eq!(outcome(&snap, 80, "exact.org", "/"), web);
    assert_eq!(outcome(&snap, 80, "x.example.com", "/"), web);
    // `a.b.example.com` is more specific than `*.example.com`; `example.com` is not covered.
    assert_eq!(outcome(&snap, 80, "a.b.example.com", "/"), httpbin);
    assert_eq!(outcome(&snap, 80, "example.com", "/"), "404 blackhole:80");
    assert_eq!(outcome(&snap, 80, "other.org", "/"), "404 blackhole:80");
    // The VS in `default` cannot use the `prod/` server host.
    let domains: Vec<String> = snap
        .gateway_virtual_hosts(80)
        .iter()
        .map(|v| v.domain.to_string())
        .collect();
    assert_eq!(
        domains,
        vec![
            "a.b.example.com",
            "exact.org",
            "*.example.com",
            "*.shop.com"
        ]
    );
}

#[test]
fn virtual_services_merge_with_catch_all_last_and_host_port_ignored() {
    let yaml = with_services(&format!(
        r#"{HTTP_GATEWAY}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: first, namespace: default}}
spec:
  hosts: [shop.example.com]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /}}}}]
    route: [{{destination: {{host: web.prod.svc.cluster.local}}}}]
  - match: [{{uri: {{exact: /never}}}}]
    directResponse: {{status: 418}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: second, namespace: default}}
spec:
  hosts: [shop.example.com]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /api}}}}]
    route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
"#
    ));
    let snap = gateway_snapshot("istio-system", INGRESS, &yaml);
    let httpbin = "outbound|8000||httpbin.default.svc.cluster.local";
    assert_eq!(outcome(&snap, 80, "shop.example.com", "/api/x"), httpbin);
    assert_eq!(outcome(&snap, 80, "shop.example.com:8080", "/api"), httpbin);
    assert_eq!(outcome(&snap, 80, "SHOP.example.com:80", "/api"), httpbin);
    assert_eq!(
        outcome(&snap, 80, "shop.example.com", "/never"),
        "direct 418"
    );
    assert_eq!(
        outcome(&snap, 80, "shop.example.com", "/other"),
        "outbound|80||web.prod.svc.cluster.local"
    );
    let vhosts = snap.gateway_virtual_hosts(80);
    let sources: Vec<&str> = vhosts[0].rules.iter().map(|r| &*r.source).collect();
    assert_eq!(
        sources,
        vec![
            "VirtualService default/first http[1]",
            "VirtualService default/second http[0]",
            "VirtualService default/first http[0]",
        ]
    );
}

#[test]
fn no_virtual_service_is_404_on_every_port() {
    let snap = gateway_snapshot("istio-system", INGRESS, &with_services(HTTP_GATEWAY));
    assert_eq!(outcome(&snap, 80, "anything", "/"), "404 blackhole:80");
    assert_eq!(outcome(&snap, 81, "anything", "/"), "404 blackhole");
    // A bound host without a matching path is also 404, on its own vhost.
    let yaml = with_services(&format!(
        "{HTTP_GATEWAY}\n---\n{}",
        HTTPBIN_VS.replace("- route:", "- match: [{uri: {exact: /x}}]\n    route:")
    ));
    let snap = gateway_snapshot("istio-system", INGRESS, &yaml);
    assert_eq!(
        outcome(&snap, 80, "httpbin.example.com", "/y"),
        "404 httpbin.example.com"
    );
}

fn seed(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../api/tests/fixtures/seeds")
        .join(name)
}

#[test]
fn seed_003_gateway_and_virtual_service() {
    let mut res = resources_from_files(&[
        &seed("003-1-gateway-httpbin-gateway.yaml"),
        &seed("003-2-virtualservice-httpbin.yaml"),
    ]);
    res.extend(resources(SERVICES));
    let snap = gateway_snapshot_of("istio-system", INGRESS, &res);
    let ports: Vec<u16> = snap.gateway_ports().iter().map(|p| p.number).collect();
    assert_eq!(ports, vec![80, 443]);
    let https = &snap.gateway_ports()[1].servers[0];
    assert!(https.terminates_tls());
    assert_eq!(
        https.tls.as_ref().unwrap().credential,
        Credential::Files {
            cert: "/tmp/tls.crt".into(),
            key: "/tmp/tls.key".into(),
            ca: None
        }
    );
    let httpbin = "outbound|8000||httpbin.default.svc.cluster.local";
    for host in ["httpbin", "httpbin.default.svc.cluster.local", "httpbin:80"] {
        for port in [80, 443] {
            assert_eq!(outcome(&snap, port, host, "/status/200"), httpbin, "{host}");
            assert_eq!(outcome(&snap, port, host, "/delay/1"), httpbin, "{host}");
            assert_eq!(
                outcome(&snap, port, host, "/headers"),
                "404 httpbin.default.svc.cluster.local"
            );
        }
    }
    assert_eq!(
        outcome(&snap, 80, "other.com", "/status/200"),
        "404 blackhole:80"
    );
}

#[test]
fn https_redirect_only_server() {
    let snap = gateway_snapshot(
        "istio-system",
        INGRESS,
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["secure.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 80, name: http-plain, protocol: HTTP}
    hosts: ["plain.example.com"]
"#,
    );
    let port = &snap.gateway_ports()[0];
    let tls = port.servers[0].tls.as_ref().unwrap();
    assert_eq!(tls.mode, ServerTlsMode::HttpsRedirectOnly);
    assert!(tls.https_redirect);
    assert_eq!(tls.credential, Credential::None);
    assert!(!port.expects_tls());
    assert!(snap.gateway_https_redirect(80, "secure.example.com:80"));
    assert!(!snap.gateway_https_redirect(80, "plain.example.com"));
    // A host no server covers has no virtual host (404 NR): not redirected, whatever the
    // port's first server says.
    assert!(!snap.gateway_https_redirect(80, "other.example.com"));
}

const CERT: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="; // "-----BEGIN CERTIFICATE-----\n"

fn secret(name: &str, keys: &[&str]) -> String {
    let data: Vec<String> = keys.iter().map(|k| format!("  {k}: {CERT}")).collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\ndata:\n{}\n",
        data.join("\n")
    )
}

fn simple_server(port: u16, host: &str, credential: &str) -> String {
    format!(
        "  - port: {{number: {port}, name: https-{port}-{credential}, protocol: HTTPS}}\n    hosts: [\"{host}\"]\n    tls: {{mode: SIMPLE, credentialName: {credential}}}\n"
    )
}

#[test]
fn sni_chooses_the_server_and_its_certificate() {
    let yaml = format!(
        "{}---\n{}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  servers:\n{}{}",
        secret("a-cred", &["tls.crt", "tls.key"]),
        secret("b-cred", &["cert", "key"]),
        simple_server(443, "a.example.com", "a-cred"),
        simple_server(443, "*.example.com", "b-cred"),
    );
    let snap = gateway_snapshot("istio-system", INGRESS, &yaml);
    let name = |sni: Option<&str>| {
        snap.gateway_server(443, sni)
            .map(|s| match &s.tls.as_ref().unwrap().credential {
                Credential::Secret { name, .. } => name.to_string(),
                other => format!("{other:?}"),
            })
    };
    assert_eq!(
        name(Some("a.example.com")).as_deref(),
        Some("istio-system/a-cred")
    );
    assert_eq!(
        name(Some("B.example.com")).as_deref(),
        Some("istio-system/b-cred")
    );
    // Several servers, no `*` host: no server for an unknown or missing SNI.
    assert_eq!(name(Some("other.org")), None);
    assert_eq!(name(None), None);
    assert!(snap.gateway_server(8443, Some("a.example.com")).is_none());
}

#[test]
fn secret_credential_forms() {
    let yaml = format!(
        "{}---\n{}---\n{}---\n{}---\n{}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  servers:\n{}{}{}{}{}",
        secret("tls-form", &["tls.crt", "tls.key", "ca.crt"]),
        secret("generic", &["cert", "key", "cacert"]),
        secret("split", &["tls.crt", "tls.key"]),
        secret("split-cacert", &["cacert"]),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: empty, namespace: istio-system}\nstringData:\n  tls.crt: \"\"\n  tls.key: \"\"\n",
        simple_server(1001, "*", "tls-form"),
        simple_server(1002, "*", "generic"),
        simple_server(1003, "*", "split"),
        simple_server(1004, "*", "missing"),
        simple_server(1005, "*", "empty"),
    );
    let snap = gateway_snapshot("istio-system", INGRESS, &yaml);
    let cred = |port: u16| {
        snap.gateway_server(port, None)
            .unwrap()
            .tls
            .as_ref()
            .unwrap()
            .credential
            .clone()
    };
    let pem = b"-----BEGIN CERTIFICATE-----\n";
    for port in [1001, 1002, 1003] {
        match cred(port) {
            Credential::Secret { cert, key, ca, .. } => {
                assert_eq!(&*cert, pem);
                assert_eq!(&*key, pem);
                assert_eq!(ca.as_deref(), Some(&pem[..]), "port {port}");
            }
            other => panic!("port {port}: {other:?}"),
        }
    }
    match cred(1004) {
        Credential::Missing { reason } => {
            assert!(
                reason.contains("Secret istio-system/missing not found"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    match cred(1005) {
        Credential::Missing { reason } => assert!(reason.contains("were empty"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let warning = snap
        .diagnostics
        .iter()
        .find(|d| d.field == "spec.servers[3].tls.credentialName")
        .expect("missing secret reported");
    assert!(warning
        .message
        .contains("Secret istio-system/missing not found"));
    // The Secret is looked up in the gateway proxy's namespace.
    let elsewhere = gateway_snapshot("gateways", INGRESS, &yaml);
    let c = &elsewhere
        .gateway_server(1001, None)
        .unwrap()
        .tls
        .as_ref()
        .unwrap()
        .credential;
    assert!(matches!(c, Credential::Missing { .. }), "{c:?}");
}

#[test]
fn passthrough_routes_by_sni_and_tcp_by_port() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backends, namespace: default}
spec:
  hosts: [a.internal, b.internal]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.internal]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 5432, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sni, namespace: default}
spec:
  hosts: ["a.example.com", "b.example.com"]
  gateways: [gw]
  tls:
  - match: [{sniHosts: [a.example.com]}]
    route: [{destination: {host: a.internal, port: {number: 443}}}]
  - match: [{sniHosts: [b.example.com]}]
    route: [{destination: {host: b.internal, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: ["db.example.com"]
  gateways: [gw]
  tcp:
  - match: [{port: 5432}]
    route: [{destination: {host: db.internal, port: {number: 5432}}}]
"#;
    let snap = gateway_snapshot("istio-system", INGRESS, yaml);
    let target = |d: StreamDecision<'_>| match d {
        StreamDecision::Rule(r) => r.targets[0]
            .cluster
            .resolve(0)
            .map(|c| c.name.to_string())
            .unwrap_or_else(|e| e),
        other => format!("{other:?}"),
    };
    assert_eq!(
        target(snap.route_gateway_tls(443, Some("a.example.com"))),
        "outbound|443||a.internal"
    );
    assert_eq!(
        target(snap.route_gateway_tls(443, Some("b.example.com"))),
        "outbound|443||b.internal"
    );
    assert_eq!(
        target(snap.route_gateway_tls(443, Some("c.example.com"))),
        "Blocked"
    );
    assert_eq!(target(snap.route_gateway_tls(443, None)), "Blocked");
    assert_eq!(
        target(snap.route_gateway_tcp(5432)),
        "outbound|5432||db.internal"
    );
    assert_eq!(target(snap.route_gateway_tcp(443)), "Blocked");
    assert!(!snap.gateway_ports()[0].servers[0].terminates_tls());
    assert!(snap.gateway_ports()[0].expects_tls());
}

#[test]
fn resolution_none_service_has_no_endpoints_on_a_gateway() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: passthrough, namespace: default}
spec:
  hosts: [ext.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
"#;
    let name = "outbound|80||ext.example.com";
    let gw = gateway_snapshot("istio-system", INGRESS, yaml);
    assert_eq!(
        gw.clusters[name].upstream(),
        UpstreamAddress::Endpoints(vec![])
    );
    let sidecar = common::snapshot_in("default", &[], yaml);
    assert_eq!(
        sidecar.clusters[name].upstream(),
        UpstreamAddress::OriginalDestination
    );
}
