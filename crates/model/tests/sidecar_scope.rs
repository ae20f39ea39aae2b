//! The `Sidecar` resource: which one applies to a sidecar proxy, its outbound policy override,
//! and the egress hosts that limit the services and VirtualServices the proxy imports.

use std::net::SocketAddr;

use http::HeaderMap;
use sluice_api::{Resource, Severity};
use sluice_model::route::HttpRequestFacts;
use sluice_model::snapshot::creation_order;
use sluice_model::{
    compile, HttpDecision, OutboundPolicy, ProxyIdentity, ProxyKind, Snapshot, StreamDecision,
};

mod common;
use common::{gateway_snapshot_of, resources};

/// Decodes `yaml` and sorts it by creation time, as the config store hands it to `compile`.
fn sorted(yaml: &str) -> Vec<Resource> {
    let mut rs = resources(yaml);
    rs.sort_by(creation_order);
    rs
}

fn sidecar(ns: &str, labels: &[(&str, &str)], yaml: &str) -> Snapshot {
    let proxy = ProxyIdentity {
        namespace: ns.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        service_account: None,
        kind: ProxyKind::Sidecar,
    };
    compile(&sorted(yaml), &proxy, 1)
}

fn http(snap: &Snapshot, authority: &str) -> String {
    let headers = HeaderMap::new();
    let d = snap.route_http(&HttpRequestFacts {
        method: "GET",
        scheme: "http",
        authority,
        path_and_query: "/",
        headers: &headers,
        port: 80,
    });
    match d {
        HttpDecision::Route { vhost, .. } => format!("route {vhost}"),
        HttpDecision::NoRoute { vhost } => format!("noroute {vhost}"),
        HttpDecision::Passthrough => "passthrough".into(),
        HttpDecision::Blocked => "blocked".into(),
    }
}

fn hosts(snap: &Snapshot) -> Vec<String> {
    let mut v: Vec<String> = snap
        .services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.hostname))
        .collect();
    v.sort();
    v
}

fn warnings(snap: &Snapshot) -> Vec<String> {
    snap.diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| format!("{:?} {}", d.resource, d.message))
        .collect()
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

/// An HTTP ServiceEntry for `host` in `ns`.
fn se(ns: &str, name: &str, host: &str) -> String {
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: ["{host}"]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
  location: MESH_EXTERNAL
"#
    )
}

/// A Sidecar; `body` is the YAML under `spec:` (indented two spaces).
fn sc(ns: &str, name: &str, created: &str, body: &str) -> String {
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {name}, namespace: {ns}, creationTimestamp: "{created}"}}
spec:
{body}
"#
    )
}

const REGISTRY_ONLY: &str = "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}";
const ALLOW_ANY: &str = "  outboundTrafficPolicy: {mode: ALLOW_ANY}";

#[test]
fn namespace_sidecar_overrides_mesh_outbound_policy() {
    let cfg = sc("locked", "default", "2024-01-01T00:00:00Z", REGISTRY_ONLY);
    let locked = sidecar("locked", &[("app", "sleep")], &cfg);
    assert_eq!(locked.mesh.outbound_policy, OutboundPolicy::RegistryOnly);
    assert_eq!(http(&locked, "example.com"), "blocked");
    let dst: SocketAddr = "1.2.3.4:443".parse().unwrap();
    assert!(matches!(
        locked.route_tls(Some("example.com"), dst),
        StreamDecision::Blocked
    ));
    assert!(matches!(locked.route_tcp(dst), StreamDecision::Blocked));
    assert_eq!(
        locked.sidecar_scope.as_ref().map(|s| &*s.source),
        Some("Sidecar locked/default")
    );
    assert!(locked
        .summary()
        .contains("scoped by Sidecar locked/default"));

    // Other namespaces keep the mesh's ALLOW_ANY.
    let other = sidecar("default", &[("app", "sleep")], &cfg);
    assert_eq!(other.mesh.outbound_policy, OutboundPolicy::AllowAny);
    assert_eq!(http(&other, "example.com"), "passthrough");
    assert!(other.sidecar_scope.is_none());

    // And the other way round: a REGISTRY_ONLY mesh, an ALLOW_ANY namespace.
    let cfg = format!(
        "{MESH_REGISTRY_ONLY}{}",
        sc("open", "default", "2024-01-01T00:00:00Z", ALLOW_ANY)
    );
    assert_eq!(
        http(&sidecar("open", &[], &cfg), "example.com"),
        "passthrough"
    );
    assert_eq!(
        http(&sidecar("default", &[], &cfg), "example.com"),
        "blocked"
    );
}

#[test]
fn workload_selector_sidecar_overrides_per_workload() {
    let cfg = format!(
        "{}{}",
        sc("default", "ns-wide", "2024-01-01T00:00:00Z", REGISTRY_ONLY),
        sc(
            "default",
            "curl-open",
            "2024-01-02T00:00:00Z",
            &format!("  workloadSelector: {{labels: {{app: curl}}}}\n{ALLOW_ANY}")
        ),
    );
    let curl = sidecar("default", &[("app", "curl"), ("version", "v1")], &cfg);
    assert_eq!(curl.mesh.outbound_policy, OutboundPolicy::AllowAny);
    assert_eq!(http(&curl, "example.com"), "passthrough");
    let sleep = sidecar("default", &[("app", "sleep")], &cfg);
    assert_eq!(sleep.mesh.outbound_policy, OutboundPolicy::RegistryOnly);
    assert_eq!(http(&sleep, "example.com"), "blocked");
    assert!(warnings(&curl).is_empty(), "{:?}", warnings(&curl));
}

#[test]
fn root_namespace_sidecar_is_the_mesh_default() {
    let root = sc(
        "istio-system",
        "default",
        "2024-01-01T00:00:00Z",
        REGISTRY_ONLY,
    );
    let snap = sidecar("default", &[("app", "sleep")], &root);
    assert_eq!(snap.mesh.outbound_policy, OutboundPolicy::RegistryOnly);
    assert_eq!(http(&snap, "example.com"), "blocked");

    // A namespace's own Sidecar replaces it entirely.
    let cfg = format!(
        "{root}{}",
        sc("open", "default", "2024-01-01T00:00:00Z", ALLOW_ANY)
    );
    assert_eq!(
        http(&sidecar("open", &[], &cfg), "example.com"),
        "passthrough"
    );

    // A root-namespace Sidecar with a selector is not a mesh default.
    let selected = sc(
        "istio-system",
        "only-curl",
        "2024-01-01T00:00:00Z",
        &format!("  workloadSelector: {{labels: {{app: sleep}}}}\n{REGISTRY_ONLY}"),
    );
    assert_eq!(
        http(
            &sidecar("default", &[("app", "sleep")], &selected),
            "example.com"
        ),
        "passthrough"
    );

    // The root namespace follows the mesh config's `rootNamespace`.
    let cfg = format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |-
    rootNamespace: mesh-root
{}{}"#,
        sc(
            "mesh-root",
            "default",
            "2024-01-01T00:00:00Z",
            REGISTRY_ONLY
        ),
        sc("istio-system", "default", "2024-01-01T00:00:00Z", ALLOW_ANY),
    );
    let snap = sidecar("default", &[], &cfg);
    assert_eq!(snap.mesh.outbound_policy, OutboundPolicy::RegistryOnly);
    assert_eq!(
        snap.sidecar_scope.as_ref().map(|s| &*s.source),
        Some("Sidecar mesh-root/default")
    );
}

/// ServiceEntries in three namespaces, a VirtualService in `team-a`.
fn three_namespaces() -> String {
    format!(
        "{}{}{}{}",
        se("default", "a", "a.example.com"),
        se("team-a", "b", "b.example.com"),
        se("team-a", "b2", "b2.example.com"),
        se("istio-system", "c", "c.example.com"),
    )
}

fn egress(hosts: &[&str]) -> String {
    let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!("  egress:\n  - hosts: [{}]", list.join(", "))
}

#[test]
fn egress_hosts_limit_imported_service_entries() {
    let imported = |hosts_: &[&str]| {
        let cfg = format!(
            "{}{}",
            three_namespaces(),
            sc(
                "default",
                "default",
                "2024-01-01T00:00:00Z",
                &egress(hosts_)
            )
        );
        hosts(&sidecar("default", &[("app", "sleep")], &cfg))
    };
    assert_eq!(imported(&["./*"]), ["default/a.example.com"]);
    assert_eq!(
        imported(&["*/*"]),
        [
            "default/a.example.com",
            "istio-system/c.example.com",
            "team-a/b.example.com",
            "team-a/b2.example.com"
        ]
    );
    assert_eq!(
        imported(&["istio-system/*"]),
        ["istio-system/c.example.com"]
    );
    assert_eq!(
        imported(&["./*", "team-a/b.example.com"]),
        ["default/a.example.com", "team-a/b.example.com"]
    );
    assert!(imported(&["~/*"]).is_empty());
    // A namespace named explicitly is decided by its own hosts, not by `*/…` (Istio's rule).
    assert_eq!(
        imported(&["team-a/b.example.com", "*/*"]),
        [
            "default/a.example.com",
            "istio-system/c.example.com",
            "team-a/b.example.com"
        ]
    );
    // `*/host` picks that host in any namespace.
    assert_eq!(
        imported(&["*/c.example.com"]),
        ["istio-system/c.example.com"]
    );

    // Without a Sidecar everything exported is imported.
    assert_eq!(
        hosts(&sidecar("default", &[], &three_namespaces())).len(),
        4
    );
}

#[test]
fn exported_to_still_applies_to_imports() {
    let cfg = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: private, namespace: team-a}}
spec:
  hosts: [private.example.com]
  exportTo: ["."]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
{}{}"#,
        se("team-a", "b", "b.example.com"),
        sc(
            "default",
            "default",
            "2024-01-01T00:00:00Z",
            &egress(&["*/*"])
        ),
    );
    assert_eq!(
        hosts(&sidecar("default", &[], &cfg)),
        ["team-a/b.example.com"]
    );
}

#[test]
fn wildcard_dns_names_import_matching_hosts() {
    let cfg = format!(
        "{}{}{}{}{}",
        se("default", "a", "a.example.com"),
        se("default", "deep", "x.y.example.com"),
        se("default", "apex", "example.com"),
        se("default", "wild", "*.example.com").replace("resolution: DNS", "resolution: NONE"),
        se("default", "other", "httpbin.org"),
    );
    let with = |hosts_: &[&str]| {
        let cfg = format!(
            "{cfg}{}",
            sc(
                "default",
                "default",
                "2024-01-01T00:00:00Z",
                &egress(hosts_)
            )
        );
        hosts(&sidecar("default", &[], &cfg))
    };
    assert_eq!(
        with(&["./*.example.com"]),
        [
            "default/*.example.com",
            "default/a.example.com",
            "default/x.y.example.com"
        ]
    );
    assert_eq!(
        with(&["*/*.y.example.com", "*/httpbin.org"]),
        ["default/httpbin.org", "default/x.y.example.com"]
    );
    // A concrete name does not import a wildcard service that covers it.
    assert_eq!(with(&["./a.example.com"]), ["default/a.example.com"]);
}

#[test]
fn unimported_hosts_follow_the_outbound_policy() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: team-a}
spec:
  hosts: [b.example.com]
  http:
  - route:
    - destination: {host: b.example.com}
"#;
    let base = format!("{}{vs}", three_namespaces());
    // Without a Sidecar, b.example.com is routed.
    assert_eq!(
        http(&sidecar("default", &[], &base), "b.example.com"),
        "route b.example.com"
    );

    let allow = format!(
        "{base}{}",
        sc(
            "default",
            "default",
            "2024-01-01T00:00:00Z",
            &egress(&["./*"])
        )
    );
    let snap = sidecar("default", &[], &allow);
    assert_eq!(http(&snap, "a.example.com"), "route a.example.com");
    assert_eq!(http(&snap, "b.example.com"), "passthrough");
    assert_eq!(http(&snap, "c.example.com"), "passthrough");
    assert!(!snap.clusters.contains_key("outbound|80||b.example.com"));
    assert!(snap.virtual_hosts().all(|v| &*v.domain != "b.example.com"));

    let block = format!(
        "{base}{}",
        sc(
            "default",
            "default",
            "2024-01-01T00:00:00Z",
            &format!("{}\n{REGISTRY_ONLY}", egress(&["./*"]))
        )
    );
    let snap = sidecar("default", &[], &block);
    assert_eq!(http(&snap, "a.example.com"), "route a.example.com");
    assert_eq!(http(&snap, "b.example.com"), "blocked");
    let dst: SocketAddr = "1.2.3.4:443".parse().unwrap();
    assert!(matches!(
        snap.route_tls(Some("c.example.com"), dst),
        StreamDecision::Blocked
    ));
}

#[test]
fn virtual_services_are_imported_by_their_hosts_with_their_destinations() {
    let cfg = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: ratings, namespace: backend}}
spec:
  clusterIP: 10.96.2.2
  ports: [{{name: http, port: 80}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: front, namespace: default}}
spec:
  hosts: [front.example.com]
  http:
  - route:
    - destination: {{host: ratings.backend.svc.cluster.local}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: elsewhere, namespace: team-a}}
spec:
  hosts: [b.example.com]
  http:
  - route:
    - destination: {{host: b.example.com}}
{}{}"#,
        se("team-a", "b", "b.example.com"),
        sc(
            "default",
            "default",
            "2024-01-01T00:00:00Z",
            &egress(&["./*"])
        ),
    );
    let snap = sidecar("default", &[], &cfg);
    // The VirtualService in the proxy's namespace is imported, and so is the service it routes
    // to, though `./*` does not name `backend`.
    assert_eq!(http(&snap, "front.example.com"), "route front.example.com");
    assert!(snap
        .clusters
        .contains_key("outbound|80||ratings.backend.svc.cluster.local"));
    assert_eq!(hosts(&snap), ["backend/ratings.backend.svc.cluster.local"]);
    // team-a's VirtualService is not.
    assert_eq!(http(&snap, "b.example.com"), "passthrough");

    // A VirtualService is imported when one of its hosts matches, wildcards included.
    let cfg2 = cfg.replace(&egress(&["./*"]), &egress(&["team-a/*.example.com"]));
    let snap = sidecar("default", &[], &cfg2);
    assert_eq!(http(&snap, "b.example.com"), "route b.example.com");
    assert_eq!(http(&snap, "front.example.com"), "passthrough");
}

#[test]
fn destination_rules_only_shape_imported_services() {
    let cfg = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: b, namespace: team-a}}
spec:
  host: b.example.com
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
{}{}{}"#,
        se("team-a", "b", "b.example.com"),
        se("default", "a", "a.example.com"),
        sc(
            "default",
            "default",
            "2024-01-01T00:00:00Z",
            &egress(&["./*"])
        ),
    );
    let snap = sidecar("default", &[], &cfg);
    assert!(snap.clusters.contains_key("outbound|80||a.example.com"));
    assert!(snap
        .clusters
        .values()
        .all(|c| c.policy_source.is_none() && &*c.service.hostname != "b.example.com"));
}

#[test]
fn selector_precedence_oldest_matching_selector_wins() {
    let cfg = format!(
        "{}{}{}{}",
        sc("istio-system", "default", "2024-01-01T00:00:00Z", ALLOW_ANY),
        sc("default", "ns-wide", "2024-01-01T00:00:00Z", ALLOW_ANY),
        // Created later but listed first: creation time decides, not file order.
        sc(
            "default",
            "newer",
            "2024-03-01T00:00:00Z",
            &format!("  workloadSelector: {{labels: {{app: curl}}}}\n{ALLOW_ANY}")
        ),
        sc(
            "default",
            "older",
            "2024-02-01T00:00:00Z",
            &format!("  workloadSelector: {{labels: {{app: curl, version: v1}}}}\n{REGISTRY_ONLY}")
        ),
    );
    let v1 = sidecar("default", &[("app", "curl"), ("version", "v1")], &cfg);
    assert_eq!(
        v1.sidecar_scope.as_ref().map(|s| &*s.source),
        Some("Sidecar default/older")
    );
    assert_eq!(v1.mesh.outbound_policy, OutboundPolicy::RegistryOnly);
    let w = warnings(&v1);
    assert!(
        w.iter()
            .any(|m| m.contains("Sidecar default/newer") && m.contains("IST0110")),
        "{w:?}"
    );

    let v2 = sidecar("default", &[("app", "curl"), ("version", "v2")], &cfg);
    assert_eq!(
        v2.sidecar_scope.as_ref().map(|s| &*s.source),
        Some("Sidecar default/newer")
    );
    let other = sidecar("default", &[("app", "sleep")], &cfg);
    assert_eq!(
        other.sidecar_scope.as_ref().map(|s| &*s.source),
        Some("Sidecar default/ns-wide")
    );
    let elsewhere = sidecar("team-a", &[("app", "curl")], &cfg);
    assert_eq!(
        elsewhere.sidecar_scope.as_ref().map(|s| &*s.source),
        Some("Sidecar istio-system/default")
    );
}

#[test]
fn gateways_ignore_sidecars() {
    let cfg = format!(
        "{}{}{}",
        se("istio-system", "c", "c.example.com"),
        sc(
            "istio-system",
            "default",
            "2024-01-01T00:00:00Z",
            &format!("{}\n{REGISTRY_ONLY}", egress(&["~/*"]))
        ),
        sc(
            "istio-system",
            "gw",
            "2024-01-01T00:00:00Z",
            &format!(
                "  workloadSelector: {{labels: {{istio: egressgateway}}}}\n{}",
                egress(&["~/*"])
            )
        ),
    );
    let gw = gateway_snapshot_of("istio-system", &[("istio", "egressgateway")], &sorted(&cfg));
    assert!(gw.sidecar_scope.is_none());
    assert_eq!(gw.mesh.outbound_policy, OutboundPolicy::AllowAny);
    assert_eq!(hosts(&gw), ["istio-system/c.example.com"]);
    assert!(warnings(&gw).is_empty(), "{:?}", warnings(&gw));

    // The same config scopes a sidecar in istio-system down to nothing.
    let sc_snap = sidecar("istio-system", &[("app", "sleep")], &cfg);
    assert!(hosts(&sc_snap).is_empty());
    assert_eq!(http(&sc_snap, "c.example.com"), "blocked");
}

#[test]
fn two_sidecars_without_selector_warn_and_the_oldest_wins() {
    let cfg = format!(
        "{}{}",
        sc("default", "second", "2024-02-01T00:00:00Z", ALLOW_ANY),
        sc("default", "first", "2024-01-01T00:00:00Z", REGISTRY_ONLY),
    );
    let snap = sidecar("default", &[("app", "sleep")], &cfg);
    assert_eq!(
        snap.sidecar_scope.as_ref().map(|s| &*s.source),
        Some("Sidecar default/first")
    );
    assert_eq!(snap.mesh.outbound_policy, OutboundPolicy::RegistryOnly);
    let w = warnings(&snap);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("IST0111"), "{w:?}");
    assert!(w[0].contains("Sidecar default/second"), "{w:?}");
    assert!(w[0].contains("default/first"), "{w:?}");

    // The same in the root namespace, seen from another namespace.
    let root = cfg.replace("namespace: default", "namespace: istio-system");
    let snap = sidecar("team-a", &[], &root);
    assert_eq!(
        snap.sidecar_scope.as_ref().map(|s| &*s.source),
        Some("Sidecar istio-system/first")
    );
    assert!(warnings(&snap).iter().any(|m| m.contains("IST0111")));
}

#[test]
fn sidecar_without_egress_imports_everything() {
    let cfg = format!(
        "{}{}",
        three_namespaces(),
        sc("default", "default", "2024-01-01T00:00:00Z", REGISTRY_ONLY)
    );
    let snap = sidecar("default", &[], &cfg);
    assert_eq!(hosts(&snap).len(), 4);
    assert_eq!(http(&snap, "b.example.com"), "route b.example.com");
    assert_eq!(http(&snap, "httpbin.org"), "blocked");
}

// === Listeners: per-port egress scopes, ingress ports ===

const TWO_PORT_SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: app}
spec:
  hosts: [a.example.com]
  resolution: DNS
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9081, name: http-2, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: app}
spec:
  hosts: [b.example.com]
  resolution: DNS
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9081, name: http-2, protocol: HTTP}]
"#;

fn http_on(snap: &Snapshot, authority: &str, port: u16) -> String {
    let dst = SocketAddr::from(([10, 0, 0, 1], port));
    let scoped = snap.outbound_scope(dst).map_or(snap, |s| &**s);
    let headers = HeaderMap::new();
    match scoped.route_http(&HttpRequestFacts {
        method: "GET",
        scheme: "http",
        authority,
        path_and_query: "/",
        headers: &headers,
        port,
    }) {
        HttpDecision::Route { vhost, .. } => format!("route {vhost}"),
        HttpDecision::NoRoute { vhost } => format!("noroute {vhost}"),
        HttpDecision::Passthrough => "passthrough".into(),
        HttpDecision::Blocked => "blocked".into(),
    }
}

#[test]
fn an_egress_listener_with_a_port_imports_on_that_port_only() {
    let yaml = format!(
        "{TWO_PORT_SERVICES}---{}",
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: app}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    hosts: [./a.example.com]
  - hosts: [./b.example.com]
"#
    );
    let snap = sidecar("app", &[], &yaml);
    assert_eq!(http_on(&snap, "a.example.com", 9080), "route a.example.com");
    assert_eq!(http_on(&snap, "a.example.com", 9081), "blocked");
    assert_eq!(http_on(&snap, "b.example.com", 9081), "route b.example.com");
    // The catch-all listener does not apply to a port that has its own listener.
    assert_eq!(http_on(&snap, "b.example.com", 9080), "blocked");
    // The whole proxy still imports both (its clusters, the config dump).
    assert_eq!(hosts(&snap), vec!["app/a.example.com", "app/b.example.com"]);
}

#[test]
fn without_a_catch_all_listener_other_ports_import_nothing() {
    let yaml = format!(
        "{TWO_PORT_SERVICES}---{}",
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: app}
spec:
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    hosts: [./*]
"#
    );
    let snap = sidecar("app", &[], &yaml);
    assert_eq!(http_on(&snap, "a.example.com", 9080), "route a.example.com");
    // ALLOW_ANY: an unimported host passes through, as any unknown host does.
    assert_eq!(http_on(&snap, "a.example.com", 9081), "passthrough");
}

#[test]
fn ingress_listeners_replace_the_workload_ports() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, name: http}, {port: 90, targetPort: 9090, name: tcp-x}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: app}
spec:
  ingress:
  - port: {number: 8080, protocol: TCP, name: tcp}
    defaultEndpoint: 127.0.0.1:7070
  - port: {number: 8443, protocol: HTTPS, name: https}
    captureMode: NONE
    bind: 127.0.0.1
    defaultEndpoint: unix:///run/web.sock
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
"#;
    let snap = sidecar("app", &[("app", "web")], yaml);
    let p = snap.inbound_port(8080);
    assert_eq!(&*p.cluster_name, "inbound|8080||");
    assert_eq!(p.protocol, sluice_model::Protocol::Tcp);
    assert_eq!(
        p.service.as_ref().map(|s| &*s.hostname),
        Some("web.app.svc.cluster.local")
    );
    assert_eq!(
        p.endpoint.tcp_addr("10.0.0.5:8080".parse().unwrap()),
        Some("127.0.0.1:7070".parse().unwrap())
    );
    // Istio's default: a service port no ingress listener lists is passthrough.
    assert_eq!(
        &*snap.inbound_port(9090).cluster_name,
        "InboundPassthroughClusterIpv4"
    );
    // captureMode NONE: a listener of its own, not a captured port.
    assert_eq!(
        &*snap.inbound_port(8443).cluster_name,
        "InboundPassthroughClusterIpv4"
    );
    let bound = &snap.sidecar_listeners.bound_ingress;
    let p = &bound[&"127.0.0.1:8443".parse::<SocketAddr>().unwrap()];
    assert_eq!(&*p.cluster_name, "inbound|8443||");

    // Only what sluice does not do is said (SLU0004): ingress tls.
    let said: Vec<String> = sluice_model::references::fields_not_acted_on(&sorted(yaml))
        .into_iter()
        .map(|d| d.field)
        .collect();
    assert_eq!(said, vec!["spec.ingress[1].tls"]);
}
