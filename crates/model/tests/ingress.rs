//! Kubernetes Ingress on the ingress gateway: which Ingresses are served, and the Gateway and
//! VirtualService routes they become.

use std::path::PathBuf;

use http::HeaderMap;
use sluice_api::Spec;
use sluice_model::gateway::{Credential, ServerTlsMode};
use sluice_model::ingress::to_gateway_config;
use sluice_model::route::HttpRequestFacts;
use sluice_model::{HttpDecision, MeshSettings, RouteAction, Snapshot};

mod common;
use common::{gateway_snapshot, gateway_snapshot_of, resources, resources_from_files};

const INGRESS_GW: &[(&str, &str)] = &[("istio", "ingressgateway")];

/// The cluster a request is routed to, `404 <vhost>` for NoRoute.
fn outcome(snap: &Snapshot, port: u16, authority: &str, path: &str) -> String {
    let headers = HeaderMap::new();
    let d = snap.route_gateway_http(
        port,
        &HttpRequestFacts {
            method: "GET",
            scheme: "http",
            authority,
            path_and_query: path,
            headers: &headers,
            port,
        },
    );
    match d {
        HttpDecision::Route { rule, .. } => match &rule.action {
            RouteAction::Forward(t) => match t[0].cluster.resolve(port) {
                Ok(c) => c.name.to_string(),
                Err(missing) => format!("MISSING {missing}"),
            },
            other => format!("{other:?}"),
        },
        HttpDecision::NoRoute { vhost } => format!("404 {vhost}"),
        other => format!("unexpected {other:?}"),
    }
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec:
  ports: [{name: http, port: 8000}, {name: admin, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: default}
spec:
  ports: [{name: http, port: 80}]
"#;

fn ingress(name: &str, extra_meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n{extra_meta}spec:\n{spec}"
    )
}

const ISTIO_CLASS: &str = "  annotations: {kubernetes.io/ingress.class: istio}\n";

fn path(p: &str, ty: &str, svc: &str, port: u16) -> String {
    let ty = if ty.is_empty() {
        String::new()
    } else {
        format!("        pathType: {ty}\n")
    };
    format!(
        "      - path: \"{p}\"\n{ty}        backend: {{service: {{name: {svc}, port: {{number: {port}}}}}}}\n"
    )
}

fn rules(host: Option<&str>, paths: &[String]) -> String {
    let host = host.map_or(String::new(), |h| format!("    host: {h}\n"));
    format!(
        "  rules:\n  - http:\n      paths:\n{}{host}",
        paths.concat()
    )
}

fn snapshot(yaml: &str) -> Snapshot {
    gateway_snapshot(
        "istio-system",
        INGRESS_GW,
        &format!("{SERVICES}\n---\n{yaml}"),
    )
}

const A: &str = "outbound|8000||a.default.svc.cluster.local";
const B: &str = "outbound|80||b.default.svc.cluster.local";

#[test]
fn path_types() {
    let yaml = ingress(
        "paths",
        ISTIO_CLASS,
        &rules(
            None,
            &[
                path("/exact", "Exact", "a", 8000),
                path("/foo", "Prefix", "a", 8000),
                path("/bar/", "Prefix", "a", 8000),
                path("/status/*", "ImplementationSpecific", "a", 8000),
                path("/img.*", "", "a", 8000),
                path("/legacy", "", "a", 8000),
                path("/", "Prefix", "b", 80),
            ],
        ),
    );
    let snap = snapshot(&yaml);
    assert_eq!(outcome(&snap, 80, "any.host", "/exact"), A);
    assert_eq!(outcome(&snap, 80, "any.host", "/exact/x"), B);
    assert_eq!(outcome(&snap, 80, "any.host", "/foo"), A);
    assert_eq!(outcome(&snap, 80, "any.host", "/foo/bar?q=1"), A);
    assert_eq!(outcome(&snap, 80, "any.host", "/foobar"), B);
    assert_eq!(outcome(&snap, 80, "any.host", "/bar"), A);
    assert_eq!(outcome(&snap, 80, "any.host", "/bar/x"), A);
    assert_eq!(outcome(&snap, 80, "any.host", "/status/200"), A);
    assert_eq!(outcome(&snap, 80, "any.host", "/statusx"), B);
    assert_eq!(outcome(&snap, 80, "any.host", "/img/a.png"), A);
    assert_eq!(outcome(&snap, 80, "any.host", "/legacy"), A);
    assert_eq!(outcome(&snap, 80, "any.host", "/legacy/x"), B);
    assert_eq!(outcome(&snap, 80, "any.host", "/anything"), B);
}

#[test]
fn wildcard_paths_match_everything() {
    for p in ["", "*", "/*", ".*"] {
        let yaml = ingress("all", ISTIO_CLASS, &rules(None, &[path(p, "", "a", 8000)]));
        let snap = snapshot(&yaml);
        assert_eq!(outcome(&snap, 80, "x", "/whatever"), A, "path {p:?}");
    }
}

#[test]
fn routes_are_ordered_longest_first_exact_first_and_across_ingresses() {
    let first = ingress(
        "first",
        &format!("{ISTIO_CLASS}  creationTimestamp: \"2024-01-01T00:00:00Z\"\n"),
        &rules(
            Some("shop.example.com"),
            &[
                path("/", "Prefix", "b", 80),
                path("/api", "Prefix", "b", 80),
            ],
        ),
    );
    let second = ingress(
        "second",
        &format!("{ISTIO_CLASS}  creationTimestamp: \"2024-01-02T00:00:00Z\"\n"),
        &rules(
            Some("shop.example.com"),
            &[
                path("/api", "Exact", "a", 8000),
                path("/api/v1", "Prefix", "a", 8000),
            ],
        ),
    );
    let snap = snapshot(&format!("{first}\n---\n{second}"));
    assert_eq!(outcome(&snap, 80, "shop.example.com", "/api"), A);
    assert_eq!(outcome(&snap, 80, "shop.example.com", "/api/v1/x"), A);
    assert_eq!(outcome(&snap, 80, "shop.example.com", "/api/v2"), B);
    assert_eq!(outcome(&snap, 80, "shop.example.com", "/"), B);
    assert_eq!(
        outcome(&snap, 80, "other.example.com", "/api"),
        "404 blackhole:80"
    );
    let (generated, _) = to_gateway_config(
        &resources(&format!("{first}\n---\n{second}")),
        &MeshSettings::default(),
        "istio-system",
    );
    let vs: Vec<_> = generated
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::VirtualService(vs) => Some((r, vs)),
            _ => None,
        })
        .collect();
    assert_eq!(vs.len(), 1);
    let (res, vs) = vs[0];
    assert_eq!(
        res.meta.name,
        "shop-example-com-first-istio-autogenerated-k8s-ingress"
    );
    assert_eq!(vs.hosts, vec!["shop.example.com"]);
    let paths: Vec<String> = vs
        .http
        .iter()
        .map(|r| {
            let u = r.matches[0].uri.as_ref().unwrap();
            match (&u.exact, &u.prefix) {
                (Some(e), _) => format!("exact {e}"),
                (_, Some(p)) => format!("prefix {p}"),
                _ => "?".into(),
            }
        })
        .collect();
    assert_eq!(
        paths,
        vec!["prefix /api/v1", "exact /api", "prefix /api", "prefix /"]
    );
}

#[test]
fn backends_by_number_and_by_name() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: named
  namespace: default
  annotations: {kubernetes.io/ingress.class: istio}
spec:
  rules:
  - host: named.example.com
    http:
      paths:
      - path: /admin
        pathType: Prefix
        backend: {service: {name: a, port: {name: admin}}}
      - path: /broken
        pathType: Prefix
        backend: {service: {name: a, port: {name: nope}}}
      - path: /
        pathType: Prefix
        backend: {service: {name: a, port: {number: 8000}}}
"#;
    let snap = snapshot(yaml);
    assert_eq!(
        outcome(&snap, 80, "named.example.com", "/admin"),
        "outbound|9000||a.default.svc.cluster.local"
    );
    assert_eq!(outcome(&snap, 80, "named.example.com", "/x"), A);
    assert_eq!(
        outcome(&snap, 80, "named.example.com", "/broken"),
        "MISSING outbound|nope||a.default.svc.cluster.local"
    );
    let warning = snap
        .diagnostics
        .iter()
        .find(|d| d.message.contains("\"nope\""))
        .expect("unresolved port reported");
    assert_eq!(warning.resource.as_deref(), Some("Ingress default/named"));
    assert_eq!(
        warning.field,
        "spec.rules[0].http.paths[1].backend.service.port"
    );
}

#[test]
fn class_selection() {
    let served = |meta: &str, extra: &str| {
        let yaml = format!(
            "{extra}{}",
            ingress("i", meta, &rules(None, &[path("/x", "Exact", "a", 8000)]))
        );
        outcome(&snapshot(&yaml), 80, "h", "/x") == A
    };
    let class = |name: &str, controller: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: {name}}}\nspec: {{controller: {controller}}}\n---\n"
        )
    };
    assert!(served(ISTIO_CLASS, ""));
    assert!(!served(
        "  annotations: {kubernetes.io/ingress.class: nginx}\n",
        ""
    ));
    assert!(
        !served("", ""),
        "unannotated Ingresses are ignored in STRICT mode"
    );
    let by_class = "  annotations: {}\n";
    let with_class_name = |name: &str| {
        ingress(
            "i",
            by_class,
            &format!(
                "  ingressClassName: {name}\n{}",
                rules(None, &[path("/x", "Exact", "a", 8000)])
            ),
        )
    };
    let snap = snapshot(&format!(
        "{}{}",
        class("mine", "istio.io/ingress-controller"),
        with_class_name("mine")
    ));
    assert_eq!(outcome(&snap, 80, "h", "/x"), A);
    let snap = snapshot(&format!(
        "{}{}",
        class("theirs", "k8s.io/ingress-nginx"),
        with_class_name("theirs")
    ));
    assert_eq!(outcome(&snap, 80, "h", "/x"), "404 blackhole");
    // DEFAULT mode also serves Ingresses without a class.
    let default_mode = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |-\n    ingressControllerMode: DEFAULT\n---\n";
    assert!(served("", default_mode));
    // Only the gateway matching the ingress selector serves Ingresses.
    let yaml = format!(
        "{SERVICES}\n---\n{}",
        ingress(
            "i",
            ISTIO_CLASS,
            &rules(None, &[path("/x", "Exact", "a", 8000)])
        )
    );
    let other = gateway_snapshot("istio-system", &[("istio", "egressgateway")], &yaml);
    assert!(other.gateway_ports().is_empty());
}

#[test]
fn tls_entries_become_https_servers() {
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: shop-cert, namespace: istio-system}}\ntype: kubernetes.io/tls\nstringData: {{tls.crt: CERT, tls.key: KEY}}\n---\n{}",
        ingress(
            "shop",
            ISTIO_CLASS,
            &format!(
                "  tls:\n  - hosts: [shop.example.com]\n    secretName: shop-cert\n  - hosts: [x.example.com]\n{}",
                rules(Some("shop.example.com"), &[path("/", "Prefix", "a", 8000)])
            )
        )
    );
    let snap = snapshot(&yaml);
    let ports: Vec<u16> = snap.gateway_ports().iter().map(|p| p.number).collect();
    assert_eq!(ports, vec![80, 443]);
    let server = &snap.gateway_ports()[1].servers[0];
    assert_eq!(
        &*server.gateway,
        "istio-system/shop-istio-autogenerated-k8s-ingress-default"
    );
    assert_eq!(&*server.hosts[0].host, "shop.example.com");
    let tls = server.tls.as_ref().unwrap();
    assert_eq!(tls.mode, ServerTlsMode::Simple);
    assert!(
        matches!(&tls.credential, Credential::Secret { name, .. } if &**name == "istio-system/shop-cert")
    );
    assert_eq!(outcome(&snap, 443, "shop.example.com", "/"), A);
    assert_eq!(outcome(&snap, 80, "shop.example.com", "/"), A);
    // The entry without secretName is skipped with a warning naming the Ingress.
    assert!(
        snap.diagnostics
            .iter()
            .any(|d| d.field == "spec.tls[1]"
                && d.resource.as_deref() == Some("Ingress default/shop"))
    );
}

#[test]
fn missing_tls_secret_is_reported_on_the_ingress() {
    let yaml = ingress(
        "shop",
        ISTIO_CLASS,
        &format!(
            "  tls:\n  - secretName: nowhere\n{}",
            rules(None, &[path("/", "Prefix", "a", 8000)])
        ),
    );
    let snap = snapshot(&yaml);
    let d = snap
        .diagnostics
        .iter()
        .find(|d| d.message.contains("Secret istio-system/nowhere not found"))
        .expect("missing secret reported");
    assert_eq!(d.resource.as_deref(), Some("Ingress default/shop"));
    assert_eq!(d.field, "spec.tls[0].secretName");
}

#[test]
fn extensions_v1beta1_backends() {
    let yaml = r#"
apiVersion: extensions/v1beta1
kind: Ingress
metadata:
  name: old
  annotations: {kubernetes.io/ingress.class: istio}
spec:
  rules:
  - host: old.example.com
    http:
      paths:
      - path: /num
        backend: {serviceName: a, servicePort: 8000}
      - path: /name
        backend: {serviceName: a, servicePort: admin}
"#;
    let snap = snapshot(yaml);
    assert_eq!(outcome(&snap, 80, "old.example.com", "/num"), A);
    assert_eq!(
        outcome(&snap, 80, "old.example.com:80", "/name"),
        "outbound|9000||a.default.svc.cluster.local"
    );
    assert_eq!(
        outcome(&snap, 80, "old.example.com", "/num/x"),
        "404 old.example.com"
    );
}

fn seed(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../api/tests/fixtures/seeds")
        .join(name)
}

#[test]
fn seed_003_ingresses() {
    let mut res = resources_from_files(&[
        &seed("003-3-ingress-simple-ingress.yaml"),
        &seed("003-4-secret-istio-ingress-certs.yaml"),
        &seed("003-5-ingress-secure-ingress.yaml"),
    ]);
    res.extend(resources(
        "apiVersion: v1\nkind: Service\nmetadata: {name: httpbin, namespace: default}\nspec:\n  ports: [{name: http, port: 8000}]\n",
    ));
    let snap = gateway_snapshot_of("istio-system", INGRESS_GW, &res);
    let httpbin = "outbound|8000||httpbin.default.svc.cluster.local";
    for port in [80, 443] {
        assert_eq!(outcome(&snap, port, "1.2.3.4", "/status/200"), httpbin);
        assert_eq!(
            outcome(&snap, port, "httpbin.example.com", "/delay/1"),
            httpbin
        );
        assert_eq!(outcome(&snap, port, "x", "/headers"), "404 *");
    }
    let https: Vec<_> = snap.gateway_ports()[1].servers.iter().collect();
    assert_eq!(https.len(), 1);
    let tls = https[0].tls.as_ref().unwrap();
    assert_eq!(tls.mode, ServerTlsMode::Simple);
    match &tls.credential {
        Credential::Secret { name, cert, .. } => {
            assert_eq!(&**name, "istio-system/istio-ingress-certs");
            assert!(cert.starts_with(b"-----BEGIN CERTIFICATE-----"));
        }
        other => panic!("{other:?}"),
    }
    let errors: Vec<_> = snap.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{errors:?}");
}
