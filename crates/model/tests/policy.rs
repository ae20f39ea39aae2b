//! DestinationRule policy as clusters carry it (merge, lookup order, subset and port-level
//! overrides, load balancer, pool limits, outlier detection), the inbound side and workload
//! table of a snapshot, and reference warnings.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_api::{Resource, Severity};
use sluice_model::cluster::Cluster;
use sluice_model::policy::{HashKey, HashPolicy, LbPolicy, OutlierPolicy, PoolLimits};
use sluice_model::{Protocol, Snapshot, INBOUND_PASSTHROUGH_CLUSTER};

mod common;
use common::{resources, snapshot_in};

fn cluster<'a>(snap: &'a Snapshot, name: &str) -> &'a Arc<Cluster> {
    snap.clusters
        .get(name)
        .unwrap_or_else(|| panic!("no cluster {name}; have {:?}", snap.clusters.keys()))
}

/// A two-port Kubernetes Service `reviews` in `default` with three WorkloadEntries.
const REVIEWS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.1.1
  selector: {app: reviews}
  ports:
  - {name: http, port: 9080}
  - {name: http-admin, port: 8080, targetPort: 18080}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec: {address: 10.2.0.1, labels: {app: reviews, version: v1}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: default}
spec: {address: 10.2.0.2, labels: {app: reviews, version: v2}}
"#;

fn with_reviews(extra: &str) -> String {
    format!("{REVIEWS}---\n{extra}")
}

const DEFAULT_9080: &str = "outbound|9080||reviews.default.svc.cluster.local";
const DEFAULT_8080: &str = "outbound|8080||reviews.default.svc.cluster.local";
const V1_9080: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
const V2_9080: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";

#[test]
fn no_destination_rule_gives_istio_defaults() {
    let snap = snapshot_in("default", &[], REVIEWS);
    let c = cluster(&snap, DEFAULT_9080);
    assert_eq!(c.lb, LbPolicy::LeastRequest);
    assert_eq!(
        c.limits,
        PoolLimits::istio_default(snap.mesh.connect_timeout)
    );
    assert_eq!(c.outlier, None);
    assert_eq!(c.policy_source, None);
}

#[test]
fn two_rules_merge_first_subset_and_first_policy_win() {
    let snap = snapshot_in(
        "default",
        &[],
        &with_reviews(
            r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: first, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: second, namespace: default, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets:
  - {name: v1, labels: {version: v2}}
  - {name: v2, labels: {version: v2}}
"#,
        ),
    );
    assert_eq!(cluster(&snap, DEFAULT_9080).lb, LbPolicy::RoundRobin);
    let v1 = cluster(&snap, V1_9080);
    assert_eq!(v1.endpoints.len(), 1);
    assert_eq!(v1.endpoints[0].labels["version"], "v1");
    assert_eq!(cluster(&snap, V2_9080).endpoints.len(), 1);
    assert_eq!(
        cluster(&snap, DEFAULT_9080).policy_source.as_deref(),
        Some("DestinationRule default/first, DestinationRule default/second")
    );
}

const RULE_IN: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: NAME, namespace: NS}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: LB}}
"#;

fn rule_in(name: &str, ns: &str, lb: &str) -> String {
    RULE_IN
        .replace("NAME", name)
        .replace("NS", ns)
        .replace("LB", lb)
}

#[test]
fn lookup_order_is_proxy_namespace_then_service_namespace_then_root() {
    let all = with_reviews(&format!(
        "{}---\n{}---\n{}",
        rule_in("root", "istio-system", "RANDOM"),
        rule_in("svc", "default", "ROUND_ROBIN"),
        rule_in("client", "client", "PASSTHROUGH"),
    ));
    let lb = |ns: &str, yaml: &str| {
        cluster(&snapshot_in(ns, &[], yaml), DEFAULT_9080)
            .lb
            .clone()
    };
    assert_eq!(lb("client", &all), LbPolicy::Passthrough);
    assert_eq!(lb("other", &all), LbPolicy::RoundRobin);
    let root_only = with_reviews(&rule_in("root", "istio-system", "RANDOM"));
    assert_eq!(lb("other", &root_only), LbPolicy::Random);
    // A rule in an unrelated namespace is never used.
    let unrelated = with_reviews(&rule_in("third", "third", "RANDOM"));
    assert_eq!(lb("other", &unrelated), LbPolicy::LeastRequest);
}

const LAYERED: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 250ms}
    portLevelSettings:
    - port: {number: 8080}
      connectionPool:
        http: {http1MaxPendingRequests: 3}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      outlierDetection: {consecutive5xxErrors: 2}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
      portLevelSettings:
      - port: {number: 9080}
        outlierDetection: {interval: 1s}
"#;

#[test]
fn subset_policy_replaces_only_the_components_it_sets() {
    let snap = snapshot_in("default", &[], &with_reviews(LAYERED));
    let v1 = cluster(&snap, V1_9080);
    assert_eq!(v1.lb, LbPolicy::RoundRobin, "inherited from the top level");
    assert_eq!(
        v1.limits.max_connections, 10,
        "inherited from the top level"
    );
    assert_eq!(v1.connect_timeout, Duration::from_millis(250));
    assert_eq!(v1.outlier.as_ref().and_then(|o| o.consecutive_5xx), Some(2));
    let v2_admin = cluster(&snap, "outbound|8080|v2|reviews.default.svc.cluster.local");
    assert_eq!(v2_admin.lb, LbPolicy::Random, "the subset's own component");
    assert_eq!(
        v2_admin.limits.max_pending_requests, 3,
        "the top level's port-level entry for 8080"
    );
    assert_eq!(v2_admin.limits.max_connections, u32::MAX);
}

#[test]
fn port_level_settings_replace_the_whole_policy_for_their_port() {
    let snap = snapshot_in("default", &[], &with_reviews(LAYERED));
    let top = cluster(&snap, DEFAULT_9080);
    assert_eq!(top.lb, LbPolicy::RoundRobin);
    assert_eq!(top.limits.max_connections, 10);
    let admin = cluster(&snap, DEFAULT_8080);
    // No inheritance: what the port-level entry leaves unset takes Istio's defaults.
    assert_eq!(admin.lb, LbPolicy::LeastRequest);
    assert_eq!(admin.limits.max_connections, u32::MAX);
    assert_eq!(admin.limits.max_pending_requests, 3);
    assert_eq!(admin.connect_timeout, snap.mesh.connect_timeout);
    // A subset port-level entry replaces everything for that port, the subset's lb included.
    let v2 = cluster(&snap, V2_9080);
    assert_eq!(v2.lb, LbPolicy::LeastRequest);
    assert_eq!(
        v2.limits.max_connections,
        u32::MAX,
        "not inherited from the top level either"
    );
    assert_eq!(
        v2.outlier.as_ref().map(|o| o.interval),
        Some(Duration::from_secs(1))
    );
}

fn lb_of(lb_yaml: &str) -> LbPolicy {
    let yaml = with_reviews(&format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: lb}}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer: {lb_yaml}\n"
    ));
    cluster(&snapshot_in("default", &[], &yaml), DEFAULT_9080)
        .lb
        .clone()
}

#[test]
fn every_load_balancer_kind() {
    assert_eq!(lb_of("{simple: ROUND_ROBIN}"), LbPolicy::RoundRobin);
    assert_eq!(lb_of("{simple: LEAST_REQUEST}"), LbPolicy::LeastRequest);
    assert_eq!(lb_of("{simple: LEAST_CONN}"), LbPolicy::LeastRequest);
    assert_eq!(lb_of("{simple: UNSPECIFIED}"), LbPolicy::LeastRequest);
    assert_eq!(lb_of("{simple: RANDOM}"), LbPolicy::Random);
    assert_eq!(lb_of("{simple: PASSTHROUGH}"), LbPolicy::Passthrough);
    assert_eq!(
        lb_of("{consistentHash: {httpHeaderName: X-User}}"),
        LbPolicy::ConsistentHash(HashPolicy {
            key: HashKey::Header("x-user".into()),
            table_size: 1024,
            maglev: false,
        })
    );
    assert_eq!(
        lb_of("{consistentHash: {useSourceIp: true, maglev: {tableSize: 251}}}"),
        LbPolicy::ConsistentHash(HashPolicy {
            key: HashKey::SourceIp,
            table_size: 251,
            maglev: true,
        })
    );
    assert_eq!(
        lb_of("{consistentHash: {httpQueryParameterName: user, maglev: {tableSize: 65537}}}"),
        LbPolicy::ConsistentHash(HashPolicy {
            key: HashKey::QueryParameter("user".into()),
            table_size: 65537,
            maglev: true,
        })
    );
    assert_eq!(
        lb_of("{consistentHash: {httpCookie: {name: session, path: /, ttl: 60s}, ringHash: {minimumRingSize: 4096}}}"),
        LbPolicy::ConsistentHash(HashPolicy {
            key: HashKey::Cookie {
                name: "session".into(),
                path: Some("/".into()),
                ttl: Some(Duration::from_secs(60)),
            },
            table_size: 4096,
            maglev: false,
        })
    );
}

#[test]
fn connection_pool_limits() {
    let snap = snapshot_in(
        "default",
        &[],
        &with_reviews(
            r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
        connectTimeout: 2s
        maxConnectionDuration: 30m
        tcpKeepalive: {time: 7200s, interval: 75s, probes: 9}
        idleTimeout: 0s
      http:
        http1MaxPendingRequests: 1
        http2MaxRequests: 5
        maxRequestsPerConnection: 1
        maxRetries: 2
"#,
        ),
    );
    let c = cluster(&snap, DEFAULT_9080);
    let l = &c.limits;
    assert_eq!(l.max_connections, 1);
    assert_eq!(l.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.connect_timeout, Duration::from_secs(2));
    assert_eq!(l.max_connection_duration, Some(Duration::from_secs(1800)));
    let ka = l.tcp_keepalive.as_ref().expect("keepalive");
    assert_eq!(
        (ka.time, ka.interval, ka.probes),
        (
            Some(Duration::from_secs(7200)),
            Some(Duration::from_secs(75)),
            Some(9)
        )
    );
    assert_eq!(l.max_pending_requests, 1);
    assert_eq!(l.max_requests, 5);
    assert_eq!(l.max_requests_per_connection, 1);
    assert_eq!(l.max_retries, 2);
    assert_eq!(l.idle_timeout, None, "0s disables the idle timeout");
}

#[test]
fn outlier_detection_defaults_and_values() {
    let od = |yaml: &str| {
        let yaml = with_reviews(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: od}}\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {yaml}\n"
        ));
        cluster(&snapshot_in("default", &[], &yaml), DEFAULT_9080)
            .outlier
            .clone()
    };
    assert_eq!(
        od("{baseEjectionTime: 1m}"),
        Some(OutlierPolicy {
            base_ejection_time: Duration::from_secs(60),
            ..OutlierPolicy::default()
        })
    );
    assert_eq!(
        od("{consecutive5xxErrors: 0, consecutiveGatewayErrors: 3, interval: 5s, maxEjectionPercent: 50, minHealthPercent: 20}"),
        Some(OutlierPolicy {
            consecutive_5xx: None,
            consecutive_gateway: Some(3),
            consecutive_local_origin: None,
            interval: Duration::from_secs(5),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 50,
            min_health_percent: 20,
        })
    );
    assert_eq!(
        od("{splitExternalLocalOriginErrors: true}").and_then(|o| o.consecutive_local_origin),
        Some(5)
    );
    assert_eq!(
        od("{consecutiveErrors: 7}").and_then(|o| o.consecutive_5xx),
        Some(7),
        "the deprecated field still counts"
    );
}

#[test]
fn inbound_ports_from_services_selecting_the_proxy() {
    let yaml = format!(
        "{REVIEWS}---\n{}",
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews-vm, namespace: default}
spec:
  hosts: [reviews.vm.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7000, name: tcp-raw, protocol: TCP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 9081}]
"#
    );
    let snap = snapshot_in("default", &[("app", "reviews"), ("version", "v1")], &yaml);
    let p = snap.inbound_port(9080);
    assert_eq!(&*p.cluster_name, "inbound|9080||");
    assert_eq!(p.protocol, Protocol::Http);
    assert_eq!(
        p.service.as_ref().map(|s| &*s.hostname),
        Some("reviews.default.svc.cluster.local")
    );
    let admin = snap.inbound_port(18080);
    assert_eq!(
        &*admin.cluster_name, "inbound|18080||",
        "keyed by the target port"
    );
    assert_eq!(&*snap.inbound_port(7000).cluster_name, "inbound|7000||");
    assert_eq!(snap.inbound_port(7000).protocol, Protocol::Tcp);
    assert_eq!(
        &*snap.inbound_port(9081).cluster_name,
        INBOUND_PASSTHROUGH_CLUSTER
    );
    // From another namespace, the same labels select nothing.
    let elsewhere = snapshot_in("other", &[("app", "reviews")], &yaml);
    assert!(elsewhere.inbound_ports.is_empty());
}

#[test]
fn workloads_by_ip() {
    let yaml = format!(
        "{REVIEWS}---\n{}",
        r#"
apiVersion: v1
kind: Endpoints
metadata: {name: reviews, namespace: default}
subsets:
- addresses: [{ip: 10.2.0.1}, {ip: 10.2.0.9}]
  ports: [{name: http, port: 9080}]
"#
    );
    let snap = snapshot_in("other", &[], &yaml);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let v1 = snap.workload_by_ip(ip("10.2.0.1")).expect("WorkloadEntry");
    assert_eq!(&*v1.name, "reviews-v1");
    assert_eq!(&*v1.namespace, "default");
    assert_eq!(v1.labels["version"], "v1");
    assert_eq!(v1.service_account.as_deref(), Some("bookinfo-reviews"));
    let bare = snap
        .workload_by_ip(ip("10.2.0.9"))
        .expect("Endpoints address");
    assert_eq!(&*bare.name, "10.2.0.9");
    assert!(snap.workload_by_ip(ip("10.2.0.77")).is_none());
}

const SUBSET_ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v9, labels: {version: v9}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
      weight: 40
    - destination: {host: reviews, subset: v3, port: {number: 9080}}
      weight: 30
    - destination: {host: reviews, subset: v9, port: {number: 9080}}
      weight: 30
"#;

#[test]
fn compile_warns_about_subsets_that_cannot_work() {
    let snap = snapshot_in("default", &[], &with_reviews(SUBSET_ROUTES));
    let warnings: Vec<String> = snap
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| format!("{}: {}", d.field, d.message))
        .collect();
    assert_eq!(
        warnings,
        [
            "spec.http[0].route[1].destination.subset: subset v3 of destination reviews.default.svc.cluster.local is not defined in any DestinationRule for this host; requests routed to it get 503 NC",
            "spec.http[0].route[2].destination.subset: subset v9 of destination reviews.default.svc.cluster.local selects no endpoint of the service; requests routed to it get 503 UH",
        ]
    );
}

#[test]
fn references_check_matches_compile_and_flags_single_port_service_entries() {
    let mut res = resources(&with_reviews(SUBSET_ROUTES));
    res.extend(resources(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: worldclockapi-egress-rule}
spec:
  hosts: [worldclockapi.com]
  ports:
  - {name: http-80, number: 81, protocol: http}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: worldclockapi-timeout}
spec:
  hosts: [worldclockapi.com]
  http:
  - timeout: 3s
    route:
    - destination: {host: worldclockapi.com}
      weight: 100
    - destination: {host: nowhere.example.com}
      weight: 0
"#,
    ));
    let rendered: Vec<String> = sluice_model::references::check(&res)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        rendered,
        [
            "test.yaml:41: VirtualService default/reviews: spec.http[0].route[1].destination.subset: warning: subset v3 of destination reviews.default.svc.cluster.local is not defined in any DestinationRule for this host; requests routed to it get 503 NC",
            "test.yaml:43: VirtualService default/reviews: spec.http[0].route[2].destination.subset: warning: subset v9 of destination reviews.default.svc.cluster.local selects no endpoint of the service; requests routed to it get 503 UH",
            "test.yaml:18: VirtualService default/worldclockapi-timeout: spec.http[0].route[0].destination.host: warning: destination worldclockapi.com has no port: every request for this host goes to port 81, the ServiceEntry's only port, whatever port the client called",
            "test.yaml:20: VirtualService default/worldclockapi-timeout: spec.http[0].route[1].destination.host: warning: destination host nowhere.example.com is not in the service registry (no ServiceEntry or Service); requests routed to it get 503 NC",
        ]
    );
    // Once the ServiceEntry declares port 80, nothing is surprising any more.
    let fixed: Vec<Resource> = res
        .into_iter()
        .map(|mut r| {
            if let sluice_api::Spec::ServiceEntry(se) = &mut r.make_mut().spec {
                se.ports[0].number = 80;
            }
            r
        })
        .collect();
    assert!(!sluice_model::references::check(&fixed)
        .iter()
        .any(|d| d.message.contains("has no port")));
}

// === upstream HTTP version ===

/// A ServiceEntry with one port of each protocol that matters for the upstream HTTP version, and
/// `policy` (YAML lines under `connectionPool.http`) for the `http` port, if any.
fn protocols_yaml(policy: &str) -> String {
    let mut yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 81, name: http2, protocol: HTTP2}
  - {number: 82, name: grpc, protocol: GRPC}
  - {number: 83, name: grpc-web, protocol: GRPC-WEB}
  - {number: 84, name: other}
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{address: 10.9.0.1}]
"#
    .to_string();
    if !policy.is_empty() {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: api, namespace: default}}\nspec:\n  host: api.example.com\n  \
             trafficPolicy:\n    portLevelSettings:\n    - port: {{number: 80}}\n      \
             connectionPool:\n        http: {{{policy}}}\n"
        ));
    }
    yaml
}

#[test]
fn upstream_protocol_follows_port_protocol_and_destination_rule() {
    use sluice_model::UpstreamProtocol::{Downstream, Http1, Http2};
    let snap = snapshot_in("default", &[], &protocols_yaml(""));
    let proto =
        |port: u16| cluster(&snap, &format!("outbound|{port}||api.example.com")).upstream_protocol;
    assert_eq!(proto(80), Http1);
    assert_eq!(proto(81), Http2);
    assert_eq!(proto(82), Http2);
    // grpc-web is forwarded as is (no grpc-web → gRPC translation): HTTP/1.1.
    assert_eq!(proto(83), Http1);
    // Sniffed at a sidecar: the client's version.
    assert_eq!(proto(84), Downstream);

    for (policy, want) in [
        ("h2UpgradePolicy: UPGRADE", Http2),
        ("h2UpgradePolicy: DO_NOT_UPGRADE", Http1),
        ("h2UpgradePolicy: DEFAULT", Http1),
        ("useClientProtocol: true", Downstream),
    ] {
        let snap = snapshot_in("default", &[], &protocols_yaml(policy));
        let c = cluster(&snap, "outbound|80||api.example.com");
        assert_eq!(c.upstream_protocol, want, "{policy}");
    }
    let snap = snapshot_in("default", &[], &protocols_yaml("h2UpgradePolicy: UPGRADE"));
    let limits = &cluster(&snap, "outbound|80||api.example.com").limits;
    assert_eq!(
        limits.h2_upgrade_policy,
        sluice_model::policy::H2UpgradePolicy::Upgrade
    );
    assert!(!limits.use_client_protocol);
}

#[test]
fn upstream_protocol_decides_per_request() {
    use sluice_model::UpstreamProtocol::{Downstream, Http1, Http2};
    assert!(!Http1.is_http2(true));
    assert!(Http2.is_http2(false));
    assert!(Downstream.is_http2(true));
    assert!(!Downstream.is_http2(false));
}

#[test]
fn gateways_do_not_follow_the_client_on_sniffed_ports() {
    use sluice_model::cluster::UpstreamProtocol;
    use sluice_model::ProxyKind;
    let limits = PoolLimits::default();
    assert_eq!(
        UpstreamProtocol::for_port(Protocol::Unknown, &limits, ProxyKind::Gateway),
        UpstreamProtocol::Http1
    );
    assert_eq!(
        UpstreamProtocol::for_port(Protocol::Grpc, &limits, ProxyKind::Gateway),
        UpstreamProtocol::Http2
    );
    let client = PoolLimits {
        use_client_protocol: true,
        ..PoolLimits::default()
    };
    assert_eq!(
        UpstreamProtocol::for_port(Protocol::Unknown, &client, ProxyKind::Gateway),
        UpstreamProtocol::Downstream
    );
}

/// Istio fields sluice accepts but does not act on are never silently ignored: one warning per
/// field and resource, on the field as written (snake_case too), none for fields it enforces.
#[test]
fn fields_sluice_does_not_act_on_are_said() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      warmup: {duration: 10s}
    tls: {mode: SIMPLE, insecureSkipVerify: true}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        simple: LEAST_REQUEST
        warmup: {duration: 20s}
      proxy_protocol: {version: V1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - corsPolicy: {allowOrigins: [{exact: "https://a.example"}]}
    route:
    - destination: {host: reviews}
"#;
    let said: Vec<(String, String)> = sluice_model::references::check(&common::resources(yaml))
        .into_iter()
        .filter(|d| d.message.starts_with("SLU0004"))
        .map(|d| (d.resource.unwrap_or_default(), d.field))
        .collect();
    assert_eq!(
        said,
        [
            (
                "DestinationRule default/reviews".to_string(),
                "spec.subsets[0].trafficPolicy.loadBalancer.warmup".to_string()
            ),
            // Written `proxy_protocol`, named as Istio's API spells it.
            (
                "DestinationRule default/reviews".to_string(),
                "spec.subsets[0].trafficPolicy.proxyProtocol".to_string()
            ),
            (
                "VirtualService default/reviews".to_string(),
                "spec.http[0].corsPolicy".to_string()
            ),
        ]
    );
}

/// `tunnel` follows Istio's `tunnelingconfig.Apply`: the top level for the service's cluster, the
/// subset's own (with no fallback to the top level) for a subset's; a POST tunnel is said to be
/// carried with CONNECT.
#[test]
fn tunnel_settings_come_from_the_top_level_or_the_subset_alone() {
    let snap = snapshot_in(
        "default",
        &[],
        &with_reviews(
            r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    tunnel: {targetHost: "2001:db8::1", targetPort: 443}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      tunnel: {protocol: POST, targetHost: example.com, targetPort: 8443}
  - name: v2
    labels: {version: v2}
"#,
        ),
    );
    let authority = |name: &str| {
        cluster(&snap, name)
            .tunnel
            .as_ref()
            .map(|t| t.authority.clone())
    };
    assert_eq!(
        authority(DEFAULT_9080).as_deref(),
        Some("[2001:db8::1]:443")
    );
    assert_eq!(authority(V1_9080).as_deref(), Some("example.com:8443"));
    assert_eq!(
        authority(V2_9080),
        None,
        "a subset without a tunnel has none"
    );
    assert!(
        snap.diagnostics
            .iter()
            .any(|d| d.message.contains("tunnel protocol `POST`")),
        "{:?}",
        snap.diagnostics
    );
}
