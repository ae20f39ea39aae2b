//! Security as a proxy obeys it: PeerAuthentication precedence, AuthorizationPolicy evaluation
//! (Istio's RBAC semantics, HTTP and TCP), ISTIO_MUTUAL and auto-mTLS clusters, and wildcard
//! services through a gateway.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;
use sluice_api::Severity;
use sluice_model::security::{AuthzDecision, AuthzRequest, MtlsMode};
use sluice_model::{Cluster, Snapshot, UpstreamAddress};

mod common;
use common::{gateway_snapshot, resources, snapshot_in};

// === PeerAuthentication ===

const PEER_AUTHN: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns, namespace: foo}
spec:
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: workload, namespace: foo}
spec:
  selector:
    matchLabels: {app: a}
  mtls: {mode: DISABLE}
  portLevelMtls:
    8080: {mode: STRICT}
    9090: {mode: UNSET}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: inherits, namespace: foo}
spec:
  selector:
    matchLabels: {app: b}
  mtls: {mode: UNSET}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: root-selector, namespace: istio-system}
spec:
  selector:
    matchLabels: {app: c}
  mtls: {mode: DISABLE}
"#;

#[test]
fn peer_authentication_workload_beats_namespace_beats_mesh() {
    let a = snapshot_in("foo", &[("app", "a"), ("v", "1")], PEER_AUTHN);
    assert_eq!(a.mtls_mode, MtlsMode::Disable);
    assert_eq!(a.inbound_mtls(8080), MtlsMode::Strict);
    // UNSET at port level inherits the workload's mode.
    assert_eq!(a.inbound_mtls(9090), MtlsMode::Disable);
    assert_eq!(a.inbound_mtls(80), MtlsMode::Disable);

    // UNSET on the workload inherits from the namespace.
    let b = snapshot_in("foo", &[("app", "b")], PEER_AUTHN);
    assert_eq!(b.mtls_mode, MtlsMode::Permissive);
    assert!(b.mtls_ports.is_empty());

    // Only the mesh-wide policy applies in another namespace; a root-namespace policy with a
    // selector is not a mesh-wide one and applies nowhere else.
    let c = snapshot_in("bar", &[("app", "c")], PEER_AUTHN);
    assert_eq!(c.mtls_mode, MtlsMode::Strict);
}

#[test]
fn peer_authentication_defaults_and_root_namespace_from_mesh_config() {
    let none = snapshot_in("foo", &[], "");
    assert_eq!(none.mtls_mode, MtlsMode::Permissive);
    assert!(none.authorization.is_empty());

    let yaml = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    rootNamespace: mesh-root
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: mesh-root}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: not-root-anymore, namespace: istio-system}
spec:
  mtls: {mode: DISABLE}
"#;
    assert_eq!(snapshot_in("foo", &[], yaml).mtls_mode, MtlsMode::Strict);
}

#[test]
fn peer_authentication_does_not_apply_to_gateways() {
    let gw = gateway_snapshot("foo", &[("app", "a")], PEER_AUTHN);
    assert_eq!(gw.mtls_mode, MtlsMode::Permissive);
    assert!(gw.mtls_ports.is_empty());
}

// === AuthorizationPolicy ===

fn peer<'a>(ns: &'a str, principal: &'a str) -> AuthzRequest<'a> {
    AuthzRequest {
        source_principal: Some(principal),
        source_namespace: Some(ns),
        source_ip: Some("10.1.2.3".parse().expect("ip")),
        host: Some("httpbin.foo.svc.cluster.local"),
        port: 8000,
        method: Some("GET"),
        path: Some("/status/200"),
        sni: None,
        headers: None,
        request_auth: None,
    }
}

fn sleep_in(ns: &str) -> AuthzRequest<'static> {
    let principal: &'static str =
        Box::leak(format!("cluster.local/ns/{ns}/sa/sleep").into_boxed_str());
    let ns: &'static str = Box::leak(ns.to_string().into_boxed_str());
    peer(ns, principal)
}

fn deny(policy: &str) -> AuthzDecision {
    AuthzDecision::Deny {
        policy: Arc::from(policy),
    }
}

fn none() -> AuthzDecision {
    deny("none")
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    let mut out = format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
    );
    for line in spec.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn authz(ns: &str, labels: &[(&str, &str)], yaml: &str) -> Snapshot {
    snapshot_in(ns, labels, yaml)
}

#[test]
fn allow_by_namespace_denies_everyone_else() {
    let yaml = policy(
        "foo",
        "allow-foo",
        "rules:\n- from:\n  - source:\n      namespaces: [foo, \"team-*\"]\n",
    );
    let snap = authz("foo", &[("app", "httpbin")], &yaml);
    let a = &snap.authorization;
    assert!(!a.is_empty());
    assert_eq!(a.check(&sleep_in("foo")), AuthzDecision::Allow);
    assert_eq!(a.check(&sleep_in("team-blue")), AuthzDecision::Allow);
    assert_eq!(a.check(&sleep_in("bar")), none());
    // Plaintext peers have no identity, hence no namespace.
    let plaintext = AuthzRequest {
        source_principal: None,
        source_namespace: None,
        ..sleep_in("foo")
    };
    assert_eq!(a.check(&plaintext), none());
}

#[test]
fn deny_by_principal_names_the_rule() {
    let yaml = policy(
        "foo",
        "deny-sleep",
        "action: DENY\nrules:\n- {to: [{operation: {methods: [POST]}}]}\n- from:\n  - source:\n      principals: [cluster.local/ns/bar/sa/sleep, \"*/sa/admin\"]\n",
    );
    let a = authz("foo", &[], &yaml).authorization;
    assert_eq!(
        a.check(&sleep_in("bar")),
        deny("ns[foo]-policy[deny-sleep]-rule[1]")
    );
    assert_eq!(a.check(&sleep_in("foo")), AuthzDecision::Allow);
    assert_eq!(
        a.check(&peer("x", "cluster.local/ns/x/sa/admin")),
        deny("ns[foo]-policy[deny-sleep]-rule[1]")
    );
    let post = AuthzRequest {
        method: Some("POST"),
        ..sleep_in("foo")
    };
    assert_eq!(a.check(&post), deny("ns[foo]-policy[deny-sleep]-rule[0]"));
}

#[test]
fn deny_wins_over_allow_and_unmatched_allow_denies() {
    let yaml = policy(
        "foo",
        "allow-all-authenticated",
        "rules:\n- from:\n  - source:\n      principals: [\"*\"]\n",
    ) + &policy(
        "foo",
        "deny-bar",
        "action: DENY\nrules:\n- from:\n  - source:\n      namespaces: [bar]\n",
    );
    let a = authz("foo", &[], &yaml).authorization;
    assert_eq!(a.check(&sleep_in("foo")), AuthzDecision::Allow);
    assert_eq!(
        a.check(&sleep_in("bar")),
        deny("ns[foo]-policy[deny-bar]-rule[0]")
    );
    let anonymous = AuthzRequest {
        source_principal: None,
        source_namespace: None,
        ..sleep_in("foo")
    };
    assert_eq!(a.check(&anonymous), none());
}

#[test]
fn empty_allow_policy_denies_all_and_empty_deny_rules_allow() {
    let deny_all = policy("foo", "deny-all", "{}\n");
    let a = authz("foo", &[], &deny_all).authorization;
    assert!(!a.is_empty());
    assert_eq!(a.check(&sleep_in("foo")), none());

    let allow_all = policy("foo", "allow-all", "rules:\n- {}\n");
    let a = authz("foo", &[], &(deny_all + &allow_all)).authorization;
    assert_eq!(a.check(&sleep_in("foo")), AuthzDecision::Allow);

    let nothing = policy("foo", "nothing", "action: DENY\nrules: []\n");
    let a = authz("foo", &[], &nothing).authorization;
    assert!(a.is_empty());
    assert_eq!(a.check(&sleep_in("foo")), AuthzDecision::Allow);
}

#[test]
fn operation_wildcards_for_hosts_paths_methods_ports() {
    let yaml = policy(
        "foo",
        "ops",
        r#"rules:
- to:
  - operation:
      hosts: ["*.example.com", "API.internal*"]
      paths: ["/api/*", "*.js", "/exact", "/items/{*}/detail"]
      methods: [GET, "HE*"]
      ports: ["8000", "9000"]
"#,
    );
    let a = authz("foo", &[], &yaml).authorization;
    let req = |host, path, method, port| AuthzRequest {
        host: Some(host),
        path: Some(path),
        method: Some(method),
        port,
        ..sleep_in("foo")
    };
    let allowed = |r: AuthzRequest<'_>| a.check(&r) == AuthzDecision::Allow;
    assert!(allowed(req("www.Example.COM", "/api/v1", "GET", 8000)));
    assert!(allowed(req("api.internal.svc", "/app.js", "HEAD", 9000)));
    assert!(allowed(req("a.example.com", "/exact", "GET", 8000)));
    assert!(allowed(req(
        "a.example.com",
        "/items/42/detail",
        "GET",
        8000
    )));
    assert!(!allowed(req(
        "a.example.com",
        "/items/42/43/detail",
        "GET",
        8000
    )));
    assert!(!allowed(req("example.com", "/api/v1", "GET", 8000)));
    assert!(!allowed(req("a.example.com", "/exact/more", "GET", 8000)));
    assert!(!allowed(req("a.example.com", "/api/v1", "POST", 8000)));
    assert!(!allowed(req("a.example.com", "/api/v1", "GET", 8080)));
    // Methods are case-sensitive, as Envoy's header matcher is.
    assert!(!allowed(req("a.example.com", "/api/v1", "get", 8000)));
}

#[test]
fn not_fields_negate() {
    let yaml = policy(
        "foo",
        "nots",
        r#"action: DENY
rules:
- from:
  - source:
      notNamespaces: [foo]
      notIpBlocks: [10.0.0.0/8]
  to:
  - operation:
      notPaths: ["/healthz"]
      notMethods: [OPTIONS]
"#,
    );
    let a = authz("foo", &[], &yaml).authorization;
    let name = "ns[foo]-policy[nots]-rule[0]";
    let outside: IpAddr = "192.168.1.1".parse().expect("ip");
    let req = |ns: &'static str, ip: IpAddr, path, method| AuthzRequest {
        source_ip: Some(ip),
        path: Some(path),
        method: Some(method),
        ..sleep_in(ns)
    };
    assert_eq!(a.check(&req("bar", outside, "/data", "GET")), deny(name));
    assert_eq!(
        a.check(&req("foo", outside, "/data", "GET")),
        AuthzDecision::Allow
    );
    assert_eq!(
        a.check(&req("bar", "10.9.9.9".parse().expect("ip"), "/data", "GET")),
        AuthzDecision::Allow
    );
    assert_eq!(
        a.check(&req("bar", outside, "/healthz", "GET")),
        AuthzDecision::Allow
    );
    assert_eq!(
        a.check(&req("bar", outside, "/data", "OPTIONS")),
        AuthzDecision::Allow
    );
}

#[test]
fn when_conditions_sni_headers_and_source_ip() {
    let yaml = policy(
        "foo",
        "when",
        r#"rules:
- when:
  - key: connection.sni
    values: ["*.example.com"]
- when:
  - key: request.headers[X-Token]
    values: ["abc*"]
  - key: source.ip
    notValues: [10.1.0.0/16]
- when:
  - key: destination.port
    values: ["5432"]
  - key: source.principal
    values: [cluster.local/ns/db/sa/client]
"#,
    );
    let a = authz("foo", &[], &yaml).authorization;
    let tls = AuthzRequest {
        sni: Some("api.example.com"),
        method: None,
        path: None,
        host: None,
        ..sleep_in("foo")
    };
    assert_eq!(a.check(&tls), AuthzDecision::Allow);
    assert_eq!(
        a.check(&AuthzRequest {
            sni: Some("example.org"),
            ..tls.clone()
        }),
        none()
    );

    let mut headers = http::HeaderMap::new();
    headers.insert("x-token", "abcdef".parse().expect("header"));
    let with_token = AuthzRequest {
        headers: Some(&headers),
        source_ip: Some("10.2.0.1".parse().expect("ip")),
        ..sleep_in("foo")
    };
    assert_eq!(a.check(&with_token), AuthzDecision::Allow);
    assert_eq!(
        a.check(&AuthzRequest {
            source_ip: Some("10.1.0.1".parse().expect("ip")),
            ..with_token.clone()
        }),
        none()
    );
    assert_eq!(
        a.check(&AuthzRequest {
            headers: None,
            ..with_token.clone()
        }),
        none()
    );

    let db = AuthzRequest {
        port: 5432,
        method: None,
        path: None,
        host: None,
        ..sleep_in("db")
    };
    assert_eq!(
        a.check(&AuthzRequest {
            source_principal: Some("cluster.local/ns/db/sa/client"),
            ..db.clone()
        }),
        AuthzDecision::Allow
    );
    assert_eq!(a.check(&db), none());
}

#[test]
fn tcp_connections_drop_http_only_allow_rules_and_widen_deny_rules() {
    let yaml = policy(
        "foo",
        "allow-get",
        "rules:\n- to:\n  - operation:\n      methods: [GET]\n      ports: [\"8000\"]\n",
    ) + &policy(
        "foo",
        "deny-admin",
        "action: DENY\nrules:\n- to:\n  - operation:\n      paths: [/admin]\n      ports: [\"9000\"]\n",
    );
    let a = authz("foo", &[], &yaml).authorization;
    let tcp = |port| AuthzRequest {
        method: None,
        path: None,
        host: None,
        port,
        ..sleep_in("foo")
    };
    // The ALLOW rule names a method, which a TCP connection does not have: it never matches.
    assert_eq!(a.check(&tcp(8000)), none());
    // The DENY rule's path is left out on TCP, so it denies every connection to its port.
    assert_eq!(
        a.check(&tcp(9000)),
        deny("ns[foo]-policy[deny-admin]-rule[0]")
    );
    // Over HTTP both behave as written.
    assert_eq!(a.check(&sleep_in("foo")), AuthzDecision::Allow);
    let admin = AuthzRequest {
        path: Some("/admin"),
        port: 9000,
        ..sleep_in("foo")
    };
    assert_eq!(a.check(&admin), deny("ns[foo]-policy[deny-admin]-rule[0]"));
}

#[test]
fn root_namespace_and_selector_scoping() {
    let yaml = policy(
        "istio-system",
        "mesh-deny",
        "action: DENY\nrules:\n- from:\n  - source:\n      namespaces: [evil]\n",
    ) + &policy(
        "istio-system",
        "mesh-deny-db",
        "selector:\n  matchLabels: {app: db}\naction: DENY\nrules:\n- {}\n",
    ) + &policy(
        "foo",
        "only-httpbin",
        "selector:\n  matchLabels: {app: httpbin}\nrules:\n- from:\n  - source:\n      namespaces: [foo]\n",
    ) + &policy(
        "other",
        "elsewhere",
        "action: DENY\nrules:\n- {}\n",
    );
    let httpbin = authz("foo", &[("app", "httpbin")], &yaml).authorization;
    assert_eq!(httpbin.check(&sleep_in("foo")), AuthzDecision::Allow);
    assert_eq!(httpbin.check(&sleep_in("bar")), none());
    assert_eq!(
        httpbin.check(&sleep_in("evil")),
        deny("ns[istio-system]-policy[mesh-deny]-rule[0]")
    );

    // Another workload of `foo`: only the mesh-wide policy applies.
    let sleep = authz("foo", &[("app", "sleep")], &yaml).authorization;
    assert_eq!(sleep.check(&sleep_in("bar")), AuthzDecision::Allow);
    assert_eq!(
        sleep.check(&sleep_in("evil")),
        deny("ns[istio-system]-policy[mesh-deny]-rule[0]")
    );

    // A root-namespace policy with a selector applies to matching workloads everywhere.
    let db = authz("data", &[("app", "db")], &yaml).authorization;
    assert_eq!(
        db.check(&sleep_in("data")),
        deny("ns[istio-system]-policy[mesh-deny-db]-rule[0]")
    );

    // Gateways are workloads too.
    let gw = gateway_snapshot("foo", &[("app", "httpbin")], &yaml);
    assert_eq!(gw.authorization.check(&sleep_in("bar")), none());
}

#[test]
fn audit_and_custom_policies_are_not_enforced_with_a_warning() {
    let yaml = policy("foo", "audit", "action: AUDIT\nrules:\n- {}\n")
        + &policy(
            "foo",
            "ext",
            "action: CUSTOM\nprovider: {name: ext-authz}\nrules:\n- {}\n",
        );
    let snap = authz("foo", &[], &yaml);
    assert!(snap.authorization.is_empty());
    assert_eq!(
        snap.authorization.check(&sleep_in("foo")),
        AuthzDecision::Allow
    );
    let warnings: Vec<_> = snap
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning && d.field == "spec.action")
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(
        warnings,
        [
            "AUDIT policies are not enforced by sluice; this policy is ignored",
            "CUSTOM policies are not enforced by sluice; this policy is ignored",
        ]
    );
    let refs = sluice_model::references::check(&resources(&yaml));
    assert_eq!(refs.len(), 2, "{refs:?}");
}

// === ISTIO_MUTUAL and auto mTLS ===

/// `reviews` in `default`: two WorkloadEntries with sidecars (one with a service account).
const REVIEWS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.1.1
  selector: {app: reviews}
  ports:
  - {name: http, port: 9080}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec:
  address: 10.2.0.1
  serviceAccount: bookinfo-reviews
  labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: default}
spec:
  address: 10.2.0.2
  labels: {app: reviews, version: v2, security.istio.io/tlsMode: istio}
"#;

const REVIEWS_9080: &str = "outbound|9080||reviews.default.svc.cluster.local";

fn cluster<'a>(snap: &'a Snapshot, name: &str) -> &'a Arc<Cluster> {
    snap.clusters
        .get(name)
        .unwrap_or_else(|| panic!("no cluster {name}; have {:?}", snap.clusters.keys()))
}

fn istio_mutual_sans(snap: &Snapshot, name: &str) -> Option<Vec<String>> {
    let tls = cluster(snap, name).tls.as_ref()?;
    assert!(
        tls.istio_mutual,
        "{name}: TLS but not ISTIO_MUTUAL: {tls:?}"
    );
    assert!(tls.client_certificate.is_none() && tls.private_key.is_none());
    Some(tls.subject_alt_names.clone())
}

const REVIEWS_SANS: [&str; 2] = [
    "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
    "spiffe://cluster.local/ns/default/sa/default",
];

#[test]
fn istio_mutual_destination_rule_expects_the_endpoints_spiffe_ids() {
    let yaml = format!(
        "{REVIEWS}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec:\n  host: reviews\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n"
    );
    let snap = snapshot_in("default", &[], &yaml);
    assert_eq!(
        istio_mutual_sans(&snap, REVIEWS_9080),
        Some(REVIEWS_SANS.map(String::from).to_vec())
    );
    assert_eq!(
        istio_mutual_sans(&snap, "outbound|9080|v1|reviews.default.svc.cluster.local"),
        Some(vec![REVIEWS_SANS[0].to_string()])
    );
    assert_eq!(
        cluster(&snap, REVIEWS_9080)
            .tls
            .as_ref()
            .map(|t| t.sni.clone()),
        Some(None)
    );
    // Istio's SNI for mesh mTLS names the cluster, whatever host the request used.
    assert_eq!(
        cluster(&snap, REVIEWS_9080)
            .upstream_sni("reviews:9080")
            .as_deref(),
        Some("outbound_.9080_._.reviews.default.svc.cluster.local")
    );
    assert_eq!(
        cluster(&snap, "outbound|9080|v1|reviews.default.svc.cluster.local")
            .upstream_sni("")
            .as_deref(),
        Some("outbound_.9080_.v1_.reviews.default.svc.cluster.local")
    );

    // The user's subjectAltNames replace the service accounts, as in Istio.
    let yaml = format!(
        "{REVIEWS}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec:\n  host: reviews\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://x/ns/y/sa/z]}}}}\n"
    );
    let snap = snapshot_in("default", &[], &yaml);
    assert_eq!(
        istio_mutual_sans(&snap, REVIEWS_9080),
        Some(vec!["spiffe://x/ns/y/sa/z".to_string()])
    );

    // A DestinationRule `sni` wins (routing through an egress gateway needs it); SIMPLE without
    // one sends the request's host (Envoy's auto SNI); plaintext sends none.
    let yaml = format!(
        "{REVIEWS}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec:\n  host: reviews\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL, sni: reviews.example}}}}\n"
    );
    let snap = snapshot_in("default", &[], &yaml);
    let sni = cluster(&snap, REVIEWS_9080)
        .upstream_sni("x")
        .map(|s| s.into_owned());
    assert_eq!(sni.as_deref(), Some("reviews.example"));
    let yaml = format!(
        "{REVIEWS}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec:\n  host: reviews\n  trafficPolicy: {{tls: {{mode: SIMPLE}}}}\n"
    );
    let snap = snapshot_in("default", &[], &yaml);
    let sni = cluster(&snap, REVIEWS_9080)
        .upstream_sni("Reviews.Example:9080")
        .map(|s| s.into_owned());
    assert_eq!(sni.as_deref(), Some("Reviews.Example"));
    let plain = snapshot_in(
        "default",
        &[],
        &REVIEWS.replace("security.istio.io/tlsMode: istio", "x: y"),
    );
    assert_eq!(cluster(&plain, REVIEWS_9080).upstream_sni("reviews"), None);
}

#[test]
fn auto_mtls_follows_the_sidecar_label_and_a_dr_can_disable_it() {
    let snap = snapshot_in("default", &[], REVIEWS);
    assert_eq!(
        istio_mutual_sans(&snap, REVIEWS_9080),
        Some(REVIEWS_SANS.map(String::from).to_vec())
    );

    // One endpoint without a sidecar: plaintext, as Istio's per-endpoint match would for it.
    let without = REVIEWS.replacen(
        "labels: {app: reviews, version: v2, security.istio.io/tlsMode: istio}",
        "labels: {app: reviews, version: v2}",
        1,
    );
    assert!(
        cluster(&snapshot_in("default", &[], &without), REVIEWS_9080)
            .tls
            .is_none()
    );

    let disable = format!(
        "{REVIEWS}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec:\n  host: reviews\n  trafficPolicy: {{tls: {{mode: DISABLE}}}}\n"
    );
    assert!(
        cluster(&snapshot_in("default", &[], &disable), REVIEWS_9080)
            .tls
            .is_none()
    );

    let mesh_off = format!(
        "{REVIEWS}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    enableAutoMtls: false\n"
    );
    assert!(
        cluster(&snapshot_in("default", &[], &mesh_off), REVIEWS_9080)
            .tls
            .is_none()
    );

    // The server side disables mTLS: auto mTLS stays off.
    let server_disabled = format!(
        "{REVIEWS}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: off, namespace: default}}\nspec:\n  mtls: {{mode: DISABLE}}\n"
    );
    assert!(
        cluster(&snapshot_in("default", &[], &server_disabled), REVIEWS_9080)
            .tls
            .is_none()
    );
}

#[test]
fn service_entry_subject_alt_names_and_external_services() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm, namespace: vms}
spec:
  hosts: [vm.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  subjectAltNames: [spiffe://cluster.local/ns/vms/sa/legacy]
  endpoints:
  - address: 10.5.0.1
    serviceAccount: vm-sa
    labels: {security.istio.io/tlsMode: istio}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: vms}
spec:
  hosts: [ext.example.com]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints:
  - address: 10.6.0.1
    labels: {security.istio.io/tlsMode: istio}
"#;
    let snap = snapshot_in("default", &[], yaml);
    assert_eq!(
        istio_mutual_sans(&snap, "outbound|80||vm.internal"),
        Some(vec![
            "spiffe://cluster.local/ns/vms/sa/legacy".to_string(),
            "spiffe://cluster.local/ns/vms/sa/vm-sa".to_string(),
        ])
    );
    // MESH_EXTERNAL services never get auto mTLS.
    assert!(cluster(&snap, "outbound|80||ext.example.com").tls.is_none());
}

#[test]
fn istio_mutual_with_certificate_fields_is_reported() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL, clientCertificate: /etc/c.pem, privateKey: /etc/k.pem}
"#;
    let refs = sluice_model::references::check(&resources(yaml));
    let d = refs
        .iter()
        .find(|d| d.field == "spec.trafficPolicy.tls")
        .unwrap_or_else(|| panic!("no warning in {refs:?}"));
    assert_eq!(d.severity, Severity::Warning);
    assert_eq!(
        d.message,
        "clientCertificate, privateKey ignored with ISTIO_MUTUAL, which uses the proxy's mesh \
         certificate; use MUTUAL to present your own certificate"
    );
}

// === Wildcard services through a gateway ===

#[test]
fn wildcard_service_entry_is_original_destination_on_a_gateway() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: default}
spec:
  hosts: ["*.wikipedia.org"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dyn, namespace: default}
spec:
  hosts: ["*.example.com"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DYNAMIC_DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: exact, namespace: default}
spec:
  hosts: [exact.example.org]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
"#;
    let gw = gateway_snapshot("istio-system", &[("istio", "egressgateway")], yaml);
    assert_eq!(
        gw.clusters["outbound|443||*.wikipedia.org"].upstream(),
        UpstreamAddress::OriginalDestination
    );
    assert_eq!(
        gw.clusters["outbound|443||*.example.com"].upstream(),
        UpstreamAddress::OriginalDestination
    );
    // A non-wildcard NONE service keeps Istio's gateway behaviour: no endpoints (503 UH).
    assert_eq!(
        gw.clusters["outbound|443||exact.example.org"].upstream(),
        UpstreamAddress::Endpoints(vec![])
    );
}

#[test]
fn trust_domains_match_the_peer_identity_and_never_widen_an_allow() {
    let yaml = policy(
        "foo",
        "allow-td",
        "rules:\n- from:\n  - source:\n      trustDomains: [cluster.local, \"corp-*\"]\n      notTrustDomains: [corp-old]\n",
    );
    let snap = authz("foo", &[("app", "httpbin")], &yaml);
    let a = &snap.authorization;
    assert_eq!(a.check(&sleep_in("bar")), AuthzDecision::Allow);
    assert_eq!(
        a.check(&peer("bar", "corp-eu/ns/bar/sa/x")),
        AuthzDecision::Allow
    );
    // The trust domain is the identity's first segment only.
    assert_eq!(a.check(&peer("bar", "x.org/corp-eu/ns/bar/sa/x")), none());
    assert_eq!(a.check(&peer("bar", "corp-old/ns/bar/sa/x")), none());
    assert_eq!(a.check(&peer("bar", "other.org/ns/bar/sa/x")), none());
    let plaintext = AuthzRequest {
        source_principal: None,
        source_namespace: None,
        ..sleep_in("foo")
    };
    assert_eq!(a.check(&plaintext), none());
}

#[test]
fn when_trust_domain_and_service_account_keys() {
    let yaml = policy(
        "foo",
        "allow-sa",
        "rules:\n- when:\n  - key: source.trustDomain\n    values: [cluster.local]\n  - key: source.serviceAccount\n    values: [sleep, \"bar/api\"]\n",
    );
    let snap = authz("foo", &[("app", "httpbin")], &yaml);
    let a = &snap.authorization;
    // `sleep` alone is the policy's namespace's service account.
    assert_eq!(a.check(&sleep_in("foo")), AuthzDecision::Allow);
    assert_eq!(a.check(&sleep_in("bar")), none());
    assert_eq!(
        a.check(&peer("bar", "cluster.local/ns/bar/sa/api")),
        AuthzDecision::Allow
    );
    assert_eq!(a.check(&peer("bar", "other.org/ns/bar/sa/api")), none());
}

// === Request principals and JWT claims (RequestAuthentication) ===

/// What a verified token for `sub` with `claims` says, as the proxy hands it to authorization.
fn token(sub: &str, claims: serde_json::Value) -> sluice_model::jwt::RequestAuth {
    let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  jwtRules:\n  - issuer: https://issuer.example\n    jwks: '{\"keys\": []}'\n    spaceDelimitedClaims: [roles]\n";
    let snap = snapshot_in("foo", &[("app", "httpbin")], yaml);
    let provider = &snap.request_authentication.providers[0];
    let mut map = claims.as_object().expect("claims object").clone();
    map.insert("iss".into(), "https://issuer.example".into());
    map.insert("sub".into(), sub.into());
    sluice_model::jwt::RequestAuth::new(provider, map)
}

#[test]
fn request_principals_and_claims_match_the_verified_token() {
    let yaml = policy(
        "foo",
        "jwt",
        r#"rules:
- from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]
  to: [{operation: {paths: [/any]}}]
- from: [{source: {requestPrincipals: ["*/alice"]}}]
  to: [{operation: {paths: [/alice]}}]
- from: [{source: {notRequestPrincipals: ["*"]}}]
  to: [{operation: {paths: [/anonymous]}}]
- to: [{operation: {paths: [/groups]}}]
  when: [{key: "request.auth.claims[groups]", values: ["admin", "ops-*"]}]
- to: [{operation: {paths: [/nested]}}]
  when: [{key: "request.auth.claims[org][team]", values: [core]}]
- to: [{operation: {paths: [/scope]}}]
  when:
  - {key: "request.auth.claims[scope]", values: [write]}
  - {key: "request.auth.claims[roles]", values: [editor]}
- to: [{operation: {paths: [/aud]}}]
  when:
  - {key: request.auth.audiences, values: [web]}
  - {key: request.auth.presenter, values: [cli]}
  - {key: request.auth.principal, notValues: ["*/mallory"]}
- to: [{operation: {paths: [/not-admin]}}]
  when: [{key: "request.auth.claims[groups]", notValues: [admin]}]
"#,
    );
    let snap = authz("foo", &[("app", "httpbin")], &yaml);
    assert!(
        snap.diagnostics
            .iter()
            .all(|d| !d.message.contains("cannot evaluate")),
        "{:?}",
        snap.diagnostics
    );
    let a = &snap.authorization;
    let alice = token(
        "alice",
        json!({"groups": ["dev", "ops-eu"], "org": {"team": "core"}, "scope": "read write",
               "roles": "viewer editor", "aud": ["api", "web"], "azp": "cli"}),
    );
    let bob = token(
        "bob",
        json!({"groups": "admin", "org": {"team": 5}, "aud": "api"}),
    );
    let mallory = token("mallory", json!({"aud": "web", "azp": "cli"}));
    let at = |path: &'static str, auth: Option<&sluice_model::jwt::RequestAuth>| {
        let mut req = sleep_in("foo");
        req.path = Some(path);
        req.request_auth = auth;
        a.check(&req)
    };
    let allow = AuthzDecision::Allow;
    for (path, who, want) in [
        ("/any", Some(&alice), &allow),
        ("/any", None, &none()),
        ("/alice", Some(&alice), &allow),
        ("/alice", Some(&bob), &none()),
        ("/anonymous", None, &allow),
        ("/anonymous", Some(&bob), &none()),
        // A string claim or any string of a list claim; `ops-*` is a prefix.
        ("/groups", Some(&bob), &allow),
        ("/groups", Some(&alice), &allow),
        ("/groups", Some(&mallory), &none()),
        ("/nested", Some(&alice), &allow),
        // A number is not a string: no match.
        ("/nested", Some(&bob), &none()),
        // `scope` (Istio's default) and `roles` (spaceDelimitedClaims) are split at spaces.
        ("/scope", Some(&alice), &allow),
        ("/aud", Some(&alice), &allow),
        ("/aud", Some(&bob), &none()),
        ("/aud", Some(&mallory), &none()),
        // notValues: a token without the claim, or no token at all, passes.
        ("/not-admin", Some(&alice), &allow),
        ("/not-admin", None, &allow),
        ("/not-admin", Some(&bob), &none()),
    ] {
        assert_eq!(
            &at(path, who),
            want,
            "{path} as {:?}",
            who.map(|w| &w.principal)
        );
    }
}

#[test]
fn request_authentication_is_selected_like_authorization_policies() {
    let ra = |ns: &str, name: &str, selector: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{selector}  jwtRules:\n  - issuer: {name}\n    jwksUri: https://keys.example/{name}\n"
        )
    };
    let yaml = [
        ra("istio-system", "mesh", ""),
        ra("foo", "namespace", ""),
        ra("foo", "mine", "  selector: {matchLabels: {app: httpbin}}\n"),
        ra("foo", "other", "  selector: {matchLabels: {app: other}}\n"),
        ra("bar", "elsewhere", ""),
    ]
    .concat();
    let snap = snapshot_in("foo", &[("app", "httpbin")], &yaml);
    let issuers: Vec<&str> = snap
        .request_authentication
        .providers
        .iter()
        .map(|p| p.issuer.as_str())
        .collect();
    assert_eq!(issuers, ["mesh", "namespace", "mine"]);
    let gw = gateway_snapshot("istio-system", &[("istio", "ingressgateway")], &yaml);
    assert_eq!(gw.request_authentication.policies, ["istio-system/mesh"]);
}
