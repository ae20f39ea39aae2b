//! Load balancing and outlier detection on a cluster's runtime state, without sockets.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use sluice_model::policy::{HashKey, HashPolicy, LbPolicy, OutlierPolicy};
use sluice_model::{compile, Cluster, ProxyIdentity, Snapshot};
use sluice_proxy::balancer::{
    hash_bytes, request_hash, Balancers, CallResult, ClusterRuntime, EndpointGuard, HashInput,
    RequestHash,
};

const NAME: &str = "outbound|80||svc.example.com";

fn snapshot(endpoints: &str, generation: u64) -> Snapshot {
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
{endpoints}
"#
    );
    let loaded = sluice_api::decode_str(Path::new("test.yaml"), &yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let proxy = ProxyIdentity {
        namespace: "default".into(),
        labels: Default::default(),
        service_account: None,
        kind: sluice_model::ProxyKind::Sidecar,
    };
    compile(&loaded.resources, &proxy, generation)
}

/// A cluster with `n` endpoints 10.0.0.1.. (weights as given) and the policy `edit` sets.
fn cluster(weights: &[u32], edit: impl FnOnce(&mut Cluster)) -> Arc<Cluster> {
    let eps: String = weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!("  - {{address: 10.0.0.{}, weight: {w}}}\n", i + 1))
        .collect();
    let snap = snapshot(&eps, 1);
    let mut c = (*snap.clusters[NAME]).clone();
    edit(&mut c);
    Arc::new(c)
}

fn runtime(weights: &[u32], edit: impl FnOnce(&mut Cluster)) -> Arc<ClusterRuntime> {
    Arc::new(ClusterRuntime::new(&cluster(weights, edit)))
}

fn host(g: &EndpointGuard) -> String {
    g.endpoint().host()
}

/// Picks `n` times (releasing each pick at once) and counts the hosts.
fn spread(rt: &Arc<ClusterRuntime>, n: usize, hash: Option<u64>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let g = rt.pick(hash, &[]).expect("an endpoint");
        *counts.entry(host(&g)).or_default() += 1;
    }
    counts
}

/// Picks until `want` comes up.
fn pick_host(rt: &Arc<ClusterRuntime>, want: &str) -> EndpointGuard {
    for _ in 0..1000 {
        let g = rt.pick(None, &[]).expect("an endpoint");
        if host(&g) == want {
            return g;
        }
    }
    panic!("{want} never picked");
}

fn fail_n(rt: &Arc<ClusterRuntime>, want: &str, n: usize, status: u16) {
    for _ in 0..n {
        pick_host(rt, want).report(CallResult::Status(status));
    }
}

#[test]
fn round_robin_splits_evenly() {
    let rt = runtime(&[1, 1, 1], |c| c.lb = LbPolicy::RoundRobin);
    let counts = spread(&rt, 300, None);
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|n| *n == 100), "{counts:?}");
}

#[test]
fn weighted_round_robin_follows_weights() {
    let rt = runtime(&[1, 2, 3], |c| c.lb = LbPolicy::RoundRobin);
    let counts = spread(&rt, 600, None);
    assert_eq!(counts["10.0.0.1:80"], 100, "{counts:?}");
    assert_eq!(counts["10.0.0.2:80"], 200, "{counts:?}");
    assert_eq!(counts["10.0.0.3:80"], 300, "{counts:?}");
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let rt = runtime(&[1, 1], |c| c.lb = LbPolicy::LeastRequest);
    // Keep 10 requests in flight on the first endpoint.
    let busy: Vec<_> = (0..10).map(|_| pick_host(&rt, "10.0.0.1:80")).collect();
    assert_eq!(busy[0].endpoint().rq_active(), 10);
    let counts = spread(&rt, 1000, None);
    // Two random choices: the busy endpoint only wins when both choices are it (1 in 4).
    let idle = counts.get("10.0.0.2:80").copied().unwrap_or(0);
    assert!(idle > 650, "{counts:?}");
    drop(busy);
    assert_eq!(rt.endpoints()[0].rq_active(), 0);
}

#[test]
fn weighted_least_request_uses_weights_and_load() {
    let rt = runtime(&[1, 9], |c| c.lb = LbPolicy::LeastRequest);
    let counts = spread(&rt, 1000, None);
    let heavy = counts.get("10.0.0.2:80").copied().unwrap_or(0);
    assert!(heavy > 800, "{counts:?}");
}

#[test]
fn random_covers_every_endpoint() {
    let rt = runtime(&[1, 1, 1, 1], |c| c.lb = LbPolicy::Random);
    let counts = spread(&rt, 400, None);
    assert_eq!(counts.len(), 4, "{counts:?}");
}

fn hash_policy(key: HashKey) -> LbPolicy {
    LbPolicy::ConsistentHash(HashPolicy {
        key,
        table_size: 1024,
        maglev: false,
    })
}

fn header_hash(value: &str) -> Option<u64> {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_str(value).unwrap());
    request_hash(
        &HashKey::Header("x-user".into()),
        &HashInput {
            headers: &headers,
            path_and_query: "/",
            source: "10.1.1.1:5000".parse().unwrap(),
        },
    )
    .value()
}

#[test]
fn consistent_hash_sticks_and_spreads() {
    let rt = runtime(&[1, 1, 1, 1], |c| {
        c.lb = hash_policy(HashKey::Header("x-user".into()))
    });
    let h = header_hash("alice");
    assert!(h.is_some());
    let counts = spread(&rt, 50, h);
    assert_eq!(counts.len(), 1, "same key, same endpoint: {counts:?}");

    let mut used = HashMap::<String, usize>::new();
    for i in 0..200 {
        let g = rt.pick(header_hash(&format!("user-{i}")), &[]).unwrap();
        *used.entry(host(&g)).or_default() += 1;
    }
    assert_eq!(used.len(), 4, "keys spread over the ring: {used:?}");
    assert!(used.values().all(|n| *n > 10), "{used:?}");

    // A retry that must avoid the hashed endpoint moves to another one.
    let first = rt.pick(h, &[]).unwrap();
    let avoid = [first.endpoint().clone()];
    let second = rt.pick(h, &avoid).unwrap();
    assert_ne!(host(&first), host(&second));
}

#[test]
fn query_parameter_and_source_ip_hashes() {
    let input = |pq: &'static str, src: &str| HashInput {
        headers: Box::leak(Box::new(HeaderMap::new())),
        path_and_query: pq,
        source: src.parse().unwrap(),
    };
    let q = HashKey::QueryParameter("id".into());
    let a = request_hash(&q, &input("/x?a=1&id=42", "10.0.0.9:1"));
    let b = request_hash(&q, &input("/y?id=42", "10.0.0.8:2"));
    assert_eq!(a, b);
    assert_ne!(a, RequestHash::None);
    assert_eq!(
        request_hash(&q, &input("/y?other=1", "10.0.0.8:2")),
        RequestHash::None
    );
    let s = HashKey::SourceIp;
    assert_eq!(
        request_hash(&s, &input("/", "10.0.0.9:1")),
        request_hash(&s, &input("/other", "10.0.0.9:2")),
    );
}

#[test]
fn cookie_is_generated_when_missing_with_ttl() {
    let key = HashKey::Cookie {
        name: "session".into(),
        path: Some("/".into()),
        ttl: Some(Duration::from_secs(60)),
    };
    let headers = HeaderMap::new();
    let input = HashInput {
        headers: &headers,
        path_and_query: "/",
        source: "10.1.1.1:5000".parse().unwrap(),
    };
    let RequestHash::NewCookie { hash, set_cookie } = request_hash(&key, &input) else {
        panic!("no cookie generated");
    };
    let value = set_cookie
        .strip_prefix("session=\"")
        .and_then(|r| r.split_once('"'))
        .map(|(v, rest)| {
            assert_eq!(rest, "; Max-Age=60; Path=/; HttpOnly");
            v.to_string()
        })
        .unwrap_or_else(|| panic!("bad Set-Cookie {set_cookie}"));
    assert_eq!(value.len(), 16);
    assert_eq!(hash, hash_bytes(value.as_bytes()));

    // The client sends it back: the same hash, nothing new to set.
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        HeaderValue::from_str(&format!("a=b; session=\"{value}\"")).unwrap(),
    );
    let input = HashInput {
        headers: &headers,
        path_and_query: "/",
        source: "10.1.1.2:6000".parse().unwrap(),
    };
    assert_eq!(request_hash(&key, &input), RequestHash::Hash(hash));

    // Without a TTL a missing cookie means no hash (random pick).
    let no_ttl = HashKey::Cookie {
        name: "session".into(),
        path: None,
        ttl: None,
    };
    let empty = HeaderMap::new();
    let input = HashInput {
        headers: &empty,
        path_and_query: "/",
        source: "10.1.1.1:5000".parse().unwrap(),
    };
    assert_eq!(request_hash(&no_ttl, &input), RequestHash::None);
}

fn outlier(consecutive_5xx: u32, base: Duration, max_percent: u32) -> OutlierPolicy {
    OutlierPolicy {
        consecutive_5xx: Some(consecutive_5xx),
        base_ejection_time: base,
        max_ejection_percent: max_percent,
        ..OutlierPolicy::default()
    }
}

#[test]
fn ejection_after_consecutive_errors_then_return() {
    let base = Duration::from_millis(200);
    let rt = runtime(&[1, 1, 1, 1], |c| {
        c.lb = LbPolicy::RoundRobin;
        c.outlier = Some(outlier(3, base, 50));
    });
    // Two errors then a success: the counter resets.
    fail_n(&rt, "10.0.0.1:80", 2, 500);
    pick_host(&rt, "10.0.0.1:80").report(CallResult::Status(200));
    fail_n(&rt, "10.0.0.1:80", 2, 503);
    assert!(!rt.is_ejected(&rt.endpoints()[0]));
    fail_n(&rt, "10.0.0.1:80", 1, 502);
    assert!(rt.is_ejected(&rt.endpoints()[0]));
    assert_eq!(rt.endpoints()[0].times_ejected(), 1);
    assert_eq!(rt.endpoints()[0].rq_error(), 5);
    let counts = spread(&rt, 90, None);
    assert!(!counts.contains_key("10.0.0.1:80"), "{counts:?}");

    // Connect failures count as 5xx (no split), and a second endpoint may go (25% < 50%).
    for _ in 0..3 {
        pick_host(&rt, "10.0.0.2:80").report(CallResult::ConnectFailed);
    }
    assert!(rt.is_ejected(&rt.endpoints()[1]));
    // A third would make 75%: 50% are already out, so it stays.
    fail_n(&rt, "10.0.0.3:80", 3, 500);
    assert!(!rt.is_ejected(&rt.endpoints()[2]));
    assert_eq!(
        rt.stats
            .ejections_total
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    // Back after the base ejection time.
    std::thread::sleep(base + Duration::from_millis(50));
    assert!(!rt.is_ejected(&rt.endpoints()[0]));
    let counts = spread(&rt, 40, None);
    assert_eq!(counts["10.0.0.1:80"], 10, "{counts:?}");

    // The second ejection lasts twice as long.
    fail_n(&rt, "10.0.0.1:80", 3, 500);
    assert_eq!(rt.endpoints()[0].times_ejected(), 2);
    std::thread::sleep(base + Duration::from_millis(50));
    assert!(rt.is_ejected(&rt.endpoints()[0]));
}

#[test]
fn gateway_errors_and_local_origin_split() {
    let rt = runtime(&[1, 1], |c| {
        c.lb = LbPolicy::RoundRobin;
        c.outlier = Some(OutlierPolicy {
            consecutive_5xx: None,
            consecutive_gateway: Some(2),
            consecutive_local_origin: Some(2),
            ..outlier(0, Duration::from_secs(30), 100)
        });
    });
    // 500 is not a gateway error.
    fail_n(&rt, "10.0.0.1:80", 3, 500);
    assert!(!rt.is_ejected(&rt.endpoints()[0]));
    fail_n(&rt, "10.0.0.1:80", 2, 504);
    assert!(rt.is_ejected(&rt.endpoints()[0]));
    // With the split, local-origin failures have their own counter, and any response (the
    // connection worked) resets it.
    pick_host(&rt, "10.0.0.2:80").report(CallResult::Timeout);
    pick_host(&rt, "10.0.0.2:80").report(CallResult::Status(502));
    pick_host(&rt, "10.0.0.2:80").report(CallResult::ConnectFailed);
    assert!(!rt.is_ejected(&rt.endpoints()[1]));
    pick_host(&rt, "10.0.0.2:80").report(CallResult::ConnectFailed);
    assert!(rt.is_ejected(&rt.endpoints()[1]));
}

#[test]
fn all_ejected_means_no_endpoint() {
    // One endpoint, 10%: the first ejection is always allowed.
    let rt = runtime(&[1], |c| {
        c.outlier = Some(outlier(1, Duration::from_secs(30), 10))
    });
    rt.pick(None, &[]).unwrap().report(CallResult::Status(500));
    assert!(rt.pick(None, &[]).is_none());
}

#[test]
fn min_health_percent_turns_on_panic_routing() {
    let rt = runtime(&[1, 1], |c| {
        c.lb = LbPolicy::RoundRobin;
        c.outlier = Some(OutlierPolicy {
            min_health_percent: 60,
            ..outlier(1, Duration::from_secs(30), 100)
        });
    });
    fail_n(&rt, "10.0.0.1:80", 1, 500);
    assert!(rt.is_ejected(&rt.endpoints()[0]));
    // 50% healthy < 60%: every endpoint takes traffic again.
    assert_eq!(spread(&rt, 10, None).len(), 2);
}

#[test]
fn retries_avoid_tried_endpoints() {
    let rt = runtime(&[1, 1, 1], |c| c.lb = LbPolicy::Random);
    for _ in 0..50 {
        let first = rt.pick(None, &[]).unwrap();
        let tried = [first.endpoint().clone()];
        let second = rt.pick(None, &tried).unwrap();
        assert_ne!(host(&first), host(&second));
    }
    // With a single endpoint the retry goes back to it.
    let one = runtime(&[1], |_| {});
    let first = one.pick(None, &[]).unwrap();
    let tried = [first.endpoint().clone()];
    assert!(one.pick(None, &tried).is_some());
}

#[test]
fn reload_keeps_state_of_remaining_endpoints() {
    let balancers = Balancers::default();
    let v1 = snapshot("  - {address: 10.0.0.1}\n  - {address: 10.0.0.2}\n", 1);
    balancers.sync(&v1);
    let rt = balancers.get(NAME).expect("runtime for the cluster");
    let held = rt.pick(None, &[]).unwrap();
    let kept = held.endpoint().host();

    let other = if kept == "10.0.0.1:80" {
        "10.0.0.2"
    } else {
        "10.0.0.1"
    };
    let survivor = kept.trim_end_matches(":80");
    let v2 = snapshot(
        &format!("  - {{address: {survivor}}}\n  - {{address: 10.0.0.3}}\n"),
        2,
    );
    balancers.sync(&v2);
    let rt2 = balancers.get(NAME).unwrap();
    assert!(Arc::ptr_eq(&rt, &rt2), "the runtime survives the reload");
    let hosts: Vec<_> = rt2.endpoints().iter().map(|e| e.host()).collect();
    assert!(hosts.contains(&kept) && hosts.contains(&"10.0.0.3:80".to_string()));
    assert!(!hosts.contains(&format!("{other}:80")));
    let survivor_state = rt2
        .endpoints()
        .into_iter()
        .find(|e| e.host() == kept)
        .unwrap();
    assert_eq!(survivor_state.rq_active(), 1, "in-flight count kept");
    assert!(Arc::ptr_eq(&survivor_state, held.endpoint()));

    // A snapshot without the cluster drops its runtime.
    let empty = compile(
        &[],
        &ProxyIdentity {
            namespace: "default".into(),
            labels: Default::default(),
            service_account: None,
            kind: sluice_model::ProxyKind::Sidecar,
        },
        3,
    );
    balancers.sync(&empty);
    assert!(balancers.get(NAME).is_none());
}

#[test]
fn admin_clusters_show_runtime_state() {
    use sluice_proxy::balancer::{clusters_json, clusters_text};
    let balancers = Balancers::default();
    let snap = snapshot("  - {address: 10.0.0.1, weight: 3}\n", 1);
    balancers.sync(&snap);
    let rt = balancers.get(NAME).unwrap();
    let held = rt.pick(None, &[]).unwrap();
    held.report(CallResult::Status(503));
    let text = clusters_text(&snap, &balancers);
    for line in [
        "outbound|80||svc.example.com::added_via_api::true",
        "outbound|80||svc.example.com::default_priority::max_connections::4294967295",
        "outbound|80||svc.example.com::10.0.0.1:80::rq_active::1",
        "outbound|80||svc.example.com::10.0.0.1:80::rq_total::1",
        "outbound|80||svc.example.com::10.0.0.1:80::rq_error::1",
        "outbound|80||svc.example.com::10.0.0.1:80::cx_active::0",
        "outbound|80||svc.example.com::10.0.0.1:80::health_flags::healthy",
        "outbound|80||svc.example.com::10.0.0.1:80::weight::3",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let json = clusters_json(&snap, &balancers);
    let host = &json["cluster_statuses"][0]["host_statuses"][0];
    assert_eq!(host["address"]["socket_address"]["port_value"], 80);
    assert_eq!(host["weight"], 3);
}
