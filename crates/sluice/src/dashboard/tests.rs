//! Graph building from canned Prometheus answers, and the server against a fake Prometheus.

use super::*;
use std::sync::Mutex;

type L = Vec<(String, String)>;

/// `source_*` labels of a workload as sluice reports them (workload = app name).
fn src(ns: &str, app: &str, version: &str) -> L {
    vec![
        ("source_workload".into(), app.into()),
        ("source_workload_namespace".into(), ns.into()),
        ("source_app".into(), app.into()),
        ("source_version".into(), version.into()),
    ]
}

fn src_unknown() -> L {
    src("unknown", "unknown", "unknown")
}

/// `destination_*` workload labels (workload = the WorkloadEntry's name).
fn dst(ns: &str, app: &str, version: &str) -> L {
    vec![
        ("destination_workload".into(), format!("{app}-{version}")),
        ("destination_workload_namespace".into(), ns.into()),
        ("destination_app".into(), app.into()),
        ("destination_version".into(), version.into()),
    ]
}

fn dst_unknown() -> L {
    vec![
        ("destination_workload".into(), "unknown".into()),
        ("destination_workload_namespace".into(), "unknown".into()),
        ("destination_app".into(), "unknown".into()),
        ("destination_version".into(), "unknown".into()),
    ]
}

/// `destination_service*` of a Kubernetes service `name.ns`.
fn svc(name: &str, ns: &str) -> L {
    vec![
        (
            "destination_service".into(),
            format!("{name}.{ns}.svc.cluster.local"),
        ),
        ("destination_service_name".into(), name.into()),
        ("destination_service_namespace".into(), ns.into()),
    ]
}

/// A ServiceEntry host (sluice names it by its host).
fn se(host: &str, ns: &str) -> L {
    vec![
        ("destination_service".into(), host.into()),
        ("destination_service_name".into(), host.into()),
        ("destination_service_namespace".into(), ns.into()),
    ]
}

fn special(cluster: &str) -> L {
    vec![
        ("destination_service".into(), cluster.into()),
        ("destination_service_name".into(), cluster.into()),
        ("destination_service_namespace".into(), "unknown".into()),
    ]
}

fn series(reporter: &str, parts: &[L], extra: &[(&str, &str)], value: f64) -> PromSample {
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    labels.insert("reporter".into(), reporter.into());
    for p in parts {
        labels.extend(p.iter().cloned());
    }
    for (k, v) in extra {
        labels.insert((*k).into(), (*v).into());
    }
    PromSample { labels, value }
}

fn req(
    reporter: &str,
    parts: &[L],
    code: &str,
    flags: &str,
    policy: &str,
    value: f64,
) -> PromSample {
    series(
        reporter,
        parts,
        &[
            ("response_code", code),
            ("response_flags", flags),
            ("connection_security_policy", policy),
        ],
        value,
    )
}

/// Cumulative bucket rates for `counts` observations per bucket bound (Envoy's first buckets).
fn buckets(reporter: &str, parts: &[L], per_bucket: &[(&str, f64)]) -> Vec<PromSample> {
    let mut cum = 0.0;
    per_bucket
        .iter()
        .map(|(le, v)| {
            cum += v;
            series(reporter, parts, &[("le", le)], cum)
        })
        .collect()
}

fn blocked(wl: &str, ns: &str, host: &str, port: &str, proto: &str, v: f64) -> PromSample {
    let labels = [
        ("source_workload", wl),
        ("source_workload_namespace", ns),
        ("destination_host", host),
        ("port", port),
        ("protocol", proto),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    PromSample { labels, value: v }
}

const T: &str = "tutorial";

/// The tutorial chain as the proxies report it: client → customer → preference →
/// recommendation-v3 → worldclockapi.com (ServiceEntry) and BlackHoleCluster, a passthrough call,
/// a TCP connection, callers without a proxy, and blocked hosts.
fn tutorial_inputs() -> Inputs {
    let client = src(T, "client", "v1");
    let customer = src(T, "customer", "v1");
    let preference = src(T, "preference", "v1");
    let recommendation = src(T, "recommendation", "v3");
    let requests = vec![
        // client → customer: the client's proxy reports…
        req(
            "source",
            &[client.clone(), svc("customer", T), dst(T, "customer", "v1")],
            "200",
            "-",
            "unknown",
            10.0,
        ),
        // …and customer's inbound sidecar too, without knowing the client (no WorkloadEntry):
        // dropped, but its mTLS policy marks the service → workload edge.
        req(
            "destination",
            &[src_unknown(), svc("customer", T), dst(T, "customer", "v1")],
            "200",
            "-",
            "mutual_tls",
            10.0,
        ),
        // customer → preference: 9 ok, 1 failed.
        req(
            "source",
            &[
                customer.clone(),
                svc("preference", T),
                dst(T, "preference", "v1"),
            ],
            "200",
            "-",
            "unknown",
            9.0,
        ),
        req(
            "source",
            &[
                customer.clone(),
                svc("preference", T),
                dst(T, "preference", "v1"),
            ],
            "503",
            "-",
            "unknown",
            1.0,
        ),
        // The same, reported by preference's sidecar (known source): not counted again.
        req(
            "destination",
            &[
                customer.clone(),
                svc("preference", T),
                dst(T, "preference", "v1"),
            ],
            "200",
            "-",
            "none",
            10.0,
        ),
        // preference → recommendation-v3, one upstream reset (flags, code 0).
        req(
            "source",
            &[
                preference.clone(),
                svc("recommendation", T),
                dst(T, "recommendation", "v3"),
            ],
            "200",
            "-",
            "unknown",
            7.5,
        ),
        req(
            "source",
            &[
                preference.clone(),
                svc("recommendation", T),
                dst(T, "recommendation", "v3"),
            ],
            "0",
            "UF",
            "unknown",
            2.5,
        ),
        // recommendation-v3 → worldclockapi.com through a ServiceEntry, and → BlackHoleCluster.
        req(
            "source",
            &[
                recommendation.clone(),
                se("worldclockapi.com", T),
                dst_unknown(),
            ],
            "200",
            "-",
            "unknown",
            4.0,
        ),
        req(
            "source",
            &[
                recommendation.clone(),
                special("BlackHoleCluster"),
                dst_unknown(),
            ],
            "502",
            "-",
            "unknown",
            2.0,
        ),
        // client → PassthroughCluster (ALLOW_ANY).
        req(
            "source",
            &[client.clone(), special("PassthroughCluster"), dst_unknown()],
            "200",
            "-",
            "unknown",
            0.5,
        ),
        // A caller without a proxy (curl from the hub) into a workload no proxy calls: kept,
        // from the unknown node.
        req(
            "destination",
            &[src_unknown(), svc("httpbin", T), dst(T, "httpbin", "v1")],
            "200",
            "-",
            "none",
            3.0,
        ),
        // A workload without a sidecar but with a WorkloadEntry (legacy-v1) calling customer:
        // reported only by customer's sidecar, kept.
        req(
            "destination",
            &[
                src(T, "legacy", "v1"),
                svc("customer", T),
                dst(T, "customer", "v1"),
            ],
            "200",
            "-",
            "mutual_tls",
            1.0,
        ),
    ];
    let mut durations = Vec::new();
    // client → customer: 10 rps; 5 in (0,5], 4 in (5,10], 1 in (10,25].
    durations.extend(buckets(
        "source",
        &[client.clone(), svc("customer", T), dst(T, "customer", "v1")],
        &[("5", 5.0), ("10", 4.0), ("25", 1.0), ("+Inf", 0.0)],
    ));
    // The destination's own report of the same calls (dropped: must not change the p99).
    durations.extend(buckets(
        "destination",
        &[src_unknown(), svc("customer", T), dst(T, "customer", "v1")],
        &[("1000", 10.0), ("+Inf", 0.0)],
    ));
    // customer → preference, split over two series (two codes): merged per edge.
    durations.extend(buckets(
        "source",
        &[
            customer.clone(),
            svc("preference", T),
            dst(T, "preference", "v1"),
        ],
        &[("50", 0.0), ("100", 9.0), ("250", 0.0), ("+Inf", 0.0)],
    ));
    durations.extend(buckets(
        "source",
        &[
            customer.clone(),
            svc("preference", T),
            dst(T, "preference", "v1"),
        ],
        &[("50", 0.0), ("100", 0.0), ("250.0", 1.0), ("+Inf", 0.0)],
    ));
    let tcp_parts = [
        src(T, "client", "v1"),
        se("db.example.com", T),
        dst_unknown(),
    ];
    let tcp_extra = [
        ("response_flags", "-"),
        ("connection_security_policy", "unknown"),
    ];
    Inputs {
        requests,
        durations,
        tcp_bytes: vec![series("source", &tcp_parts, &tcp_extra, 1234.5)],
        tcp_connections: vec![series("source", &tcp_parts, &tcp_extra, 0.25)],
        blocked: vec![
            blocked("recommendation", T, "worldclockapi.com", "80", "http", 3.0),
            blocked("customer", T, "worldclockapi.com", "80", "http", 2.0),
            blocked("client", T, "www.google.com", "443", "tls", 1.0),
        ],
    }
}

fn node_ids(g: &Graph) -> Vec<&str> {
    g.nodes.keys().map(String::as_str).collect()
}

fn edge<'a>(g: &'a Graph, id: &str) -> &'a Edge {
    g.edges
        .get(id)
        .unwrap_or_else(|| panic!("no edge {id}; edges: {:?}", g.edges.keys()))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn nodes_are_workloads_services_external_hosts_and_special_clusters() {
    let g = build_graph(&tutorial_inputs());
    assert_eq!(
        node_ids(&g),
        vec![
            "blackhole:BlackHoleCluster",
            "external:db.example.com",
            "external:worldclockapi.com",
            "passthrough:PassthroughCluster",
            "service:customer.tutorial.svc.cluster.local",
            "service:httpbin.tutorial.svc.cluster.local",
            "service:preference.tutorial.svc.cluster.local",
            "service:recommendation.tutorial.svc.cluster.local",
            "unknown:source",
            "workload:tutorial/client-v1",
            "workload:tutorial/customer-v1",
            "workload:tutorial/httpbin-v1",
            "workload:tutorial/legacy-v1",
            "workload:tutorial/preference-v1",
            "workload:tutorial/recommendation-v3",
        ]
    );
    let customer = &g.nodes["workload:tutorial/customer-v1"];
    assert_eq!(customer.kind, NodeKind::Workload);
    assert_eq!(
        (
            customer.label.as_str(),
            customer.namespace.as_str(),
            customer.app.as_str(),
            customer.version.as_str()
        ),
        ("customer-v1", T, "customer", "v1")
    );
    // Seen as a source (workload "customer") and as a destination ("customer-v1").
    assert_eq!(
        customer.workloads.iter().collect::<Vec<_>>(),
        vec!["customer", "customer-v1"]
    );
    assert!(customer.sidecar);
    assert!(g.nodes["workload:tutorial/client-v1"].sidecar);
    assert!(
        !g.nodes["workload:tutorial/legacy-v1"].sidecar,
        "legacy-v1 never reports"
    );
    let svc = &g.nodes["service:preference.tutorial.svc.cluster.local"];
    assert_eq!(
        (svc.kind, svc.label.as_str(), svc.namespace.as_str()),
        (NodeKind::Service, "preference", T)
    );
    let ext = &g.nodes["external:worldclockapi.com"];
    assert_eq!(
        (ext.kind, ext.label.as_str(), ext.namespace.as_str()),
        (NodeKind::External, "worldclockapi.com", T)
    );
    assert_eq!(
        g.nodes["blackhole:BlackHoleCluster"].kind,
        NodeKind::BlackHole
    );
    assert_eq!(
        g.nodes["passthrough:PassthroughCluster"].kind,
        NodeKind::Passthrough
    );
}

#[test]
fn edges_go_through_services_and_count_each_request_once() {
    let g = build_graph(&tutorial_inputs());
    let ids: Vec<&str> = g.edges.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        vec![
            "service:customer.tutorial.svc.cluster.local->workload:tutorial/customer-v1",
            "service:httpbin.tutorial.svc.cluster.local->workload:tutorial/httpbin-v1",
            "service:preference.tutorial.svc.cluster.local->workload:tutorial/preference-v1",
            "service:recommendation.tutorial.svc.cluster.local->workload:tutorial/recommendation-v3",
            "unknown:source->service:httpbin.tutorial.svc.cluster.local",
            "workload:tutorial/client-v1->external:db.example.com",
            "workload:tutorial/client-v1->passthrough:PassthroughCluster",
            "workload:tutorial/client-v1->service:customer.tutorial.svc.cluster.local",
            "workload:tutorial/customer-v1->service:preference.tutorial.svc.cluster.local",
            "workload:tutorial/legacy-v1->service:customer.tutorial.svc.cluster.local",
            "workload:tutorial/preference-v1->service:recommendation.tutorial.svc.cluster.local",
            "workload:tutorial/recommendation-v3->blackhole:BlackHoleCluster",
            "workload:tutorial/recommendation-v3->external:worldclockapi.com",
        ]
    );
    // The client's own report only; customer's report of the same requests is not added.
    let e = edge(
        &g,
        "workload:tutorial/client-v1->service:customer.tutorial.svc.cluster.local",
    );
    assert!(close(e.rps, 10.0), "{e:?}");
    assert_eq!(e.reporters.iter().collect::<Vec<_>>(), vec!["source"]);
    // service → workload: the client's 10 plus legacy's 1 (reported by the destination).
    let e = edge(
        &g,
        "service:customer.tutorial.svc.cluster.local->workload:tutorial/customer-v1",
    );
    assert!(close(e.rps, 11.0), "{e:?}");
    assert!(close(g.nodes["workload:tutorial/customer-v1"].rps_in, 11.0));
    // customer → preference: 10 rps, 10% errors (the 503).
    let e = edge(
        &g,
        "workload:tutorial/customer-v1->service:preference.tutorial.svc.cluster.local",
    );
    assert!(close(e.rps, 10.0), "{e:?}");
    assert!(close(e.error_rate(), 10.0), "{e:?}");
    assert!(close(e.responses["503"], 1.0));
    // Response flags count as errors too (UF, code 0).
    let e = edge(
        &g,
        "workload:tutorial/preference-v1->service:recommendation.tutorial.svc.cluster.local",
    );
    assert!(close(e.error_rate(), 25.0), "{e:?}");
    assert!(close(e.flags["UF"], 2.5));
    // Blocked calls are 502 to BlackHoleCluster: all errors.
    let e = edge(
        &g,
        "workload:tutorial/recommendation-v3->blackhole:BlackHoleCluster",
    );
    assert!(close(e.rps, 2.0) && close(e.error_rate(), 100.0), "{e:?}");
    let e = edge(
        &g,
        "workload:tutorial/recommendation-v3->external:worldclockapi.com",
    );
    assert!(close(e.rps, 4.0) && close(e.error_rate(), 0.0), "{e:?}");
    assert!(e.http && !e.tcp);
    // The unknown caller's traffic into httpbin (no proxy calls it) is kept.
    let e = edge(
        &g,
        "unknown:source->service:httpbin.tutorial.svc.cluster.local",
    );
    assert!(close(e.rps, 3.0), "{e:?}");
    assert_eq!(e.reporters.iter().collect::<Vec<_>>(), vec!["destination"]);
}

#[test]
fn tcp_edges_carry_bytes_and_connections() {
    let g = build_graph(&tutorial_inputs());
    let e = edge(&g, "workload:tutorial/client-v1->external:db.example.com");
    assert!(e.tcp && !e.http);
    assert!(close(e.tcp_bytes_per_sec, 1234.5));
    assert!(close(e.tcp_connections_per_sec, 0.25));
    assert!(close(e.rps, 0.0));
    let json = g.to_json("1m");
    let je = json["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == e.id.as_str())
        .unwrap();
    assert_eq!(je["protocol"], "tcp");
    assert_eq!(je["idle"], false);
}

#[test]
fn mtls_comes_from_the_reports_that_know_the_policy() {
    let g = build_graph(&tutorial_inputs());
    let e = edge(
        &g,
        "service:customer.tutorial.svc.cluster.local->workload:tutorial/customer-v1",
    );
    assert!(e.mtls);
    assert!(close(e.mtls_percent(), 100.0), "{}", e.mtls_percent());
    // legacy → customer is mTLS (reported so by customer's sidecar).
    assert!(
        edge(
            &g,
            "workload:tutorial/legacy-v1->service:customer.tutorial.svc.cluster.local"
        )
        .mtls
    );
    // preference's sidecar says "none".
    let e = edge(
        &g,
        "service:preference.tutorial.svc.cluster.local->workload:tutorial/preference-v1",
    );
    assert!(!e.mtls);
    assert!(close(e.mtls_percent(), 0.0));
}

#[test]
fn p99_is_histogram_quantile_over_the_edges_buckets() {
    let g = build_graph(&tutorial_inputs());
    // 10 observations: rank 9.9 falls in (10, 25] (9 below 10): 10 + 15 * 0.9 = 23.5 ms.
    let e = edge(
        &g,
        "workload:tutorial/client-v1->service:customer.tutorial.svc.cluster.local",
    );
    assert!(close(e.p99_ms().unwrap(), 23.5), "{:?}", e.p99_ms());
    // Two series (le "250.0" and "250" are one bucket): rank 9.9 in (100, 250]: 100 + 150*0.9.
    let e = edge(
        &g,
        "workload:tutorial/customer-v1->service:preference.tutorial.svc.cluster.local",
    );
    assert!(close(e.p99_ms().unwrap(), 235.0), "{:?}", e.p99_ms());
    // No histogram: no p99 (null in JSON).
    let e = edge(
        &g,
        "workload:tutorial/recommendation-v3->external:worldclockapi.com",
    );
    assert_eq!(e.p99_ms(), None);
}

#[test]
fn histogram_quantile_matches_prometheus() {
    let b = vec![(0.5, 0.0), (1.0, 1.0), (5.0, 3.0), (f64::INFINITY, 4.0)];
    // rank 2 in (1,5]: 1 + 4 * (1/2) = 3
    assert!(close(histogram_quantile(0.5, b.clone()), 3.0));
    // rank 3.96 falls in +Inf: the highest finite bound.
    assert!(close(histogram_quantile(0.99, b.clone()), 5.0));
    assert!(
        histogram_quantile(0.5, vec![(1.0, 1.0)]).is_nan(),
        "no +Inf"
    );
    assert!(histogram_quantile(0.5, vec![(1.0, 0.0), (f64::INFINITY, 0.0)]).is_nan());
    // Non-monotonic counts are fixed up, as Prometheus does.
    let b = vec![(10.0, 5.0), (20.0, 4.0), (f64::INFINITY, 10.0)];
    assert!(close(histogram_quantile(0.25, b), 5.0));
}

#[test]
fn blocked_hosts_are_summed_with_their_callers_and_a_service_entry() {
    let g = build_graph(&tutorial_inputs());
    assert_eq!(g.blocked.len(), 2);
    let b = &g.blocked[0];
    assert_eq!(b.host, "worldclockapi.com");
    assert_eq!(
        b.ports.iter().collect::<Vec<_>>(),
        vec![(&80u16, &"http".to_string())]
    );
    assert!(close(b.count, 5.0));
    assert_eq!(
        b.workloads.iter().collect::<Vec<_>>(),
        vec!["tutorial/customer", "tutorial/recommendation"]
    );
    assert!(
        b.service_entry.contains("kind: ServiceEntry"),
        "{}",
        b.service_entry
    );
    assert!(b.service_entry.contains("worldclockapi.com"));
    assert!(b.service_entry.contains("    protocol: HTTP\n"));
    assert!(b.service_entry.contains("  - number: 80\n"));
    let google = &g.blocked[1];
    assert_eq!(google.host, "www.google.com");
    assert_eq!(google.ports.get(&443).map(String::as_str), Some("tls"));
}

#[test]
fn suggested_service_entries_pass_sluice_validate() {
    let mut inputs = tutorial_inputs();
    inputs
        .blocked
        .push(blocked("api", T, "10.1.2.3", "9000", "tcp", 1.0));
    inputs
        .blocked
        .push(blocked("api", T, "worldclockapi.com", "443", "tls", 1.0));
    let g = build_graph(&inputs);
    assert_eq!(g.blocked.len(), 3);
    let clock = g
        .blocked
        .iter()
        .find(|b| b.host == "worldclockapi.com")
        .unwrap();
    assert_eq!(clock.ports.len(), 2, "one ServiceEntry for both ports");
    let dir = tempfile::tempdir().unwrap();
    for (i, b) in g.blocked.iter().enumerate() {
        let f = dir.path().join(format!("se-{i}.yaml"));
        std::fs::write(&f, &b.service_entry).unwrap();
        let diags = crate::validate_cmd::check(&[f]);
        assert!(diags.is_empty(), "{}\n{diags:?}", b.service_entry);
    }
}

#[test]
fn reports_of_the_same_calls_by_both_sides_give_one_edge() {
    // Only destination reports with a known source (a caller with a WorkloadEntry but no
    // sidecar): used.
    let inputs = Inputs {
        requests: vec![req(
            "destination",
            &[src(T, "a", "v1"), svc("b", T), dst(T, "b", "v1")],
            "200",
            "-",
            "none",
            2.0,
        )],
        ..Inputs::default()
    };
    let g = build_graph(&inputs);
    assert!(close(
        edge(
            &g,
            "workload:tutorial/a-v1->service:b.tutorial.svc.cluster.local"
        )
        .rps,
        2.0
    ));
    assert!(!g.nodes["workload:tutorial/a-v1"].sidecar);
    assert!(g.nodes["workload:tutorial/b-v1"].sidecar);
}

#[test]
fn windows_are_single_prometheus_durations() {
    for ok in ["30s", "1m", "15m", "1h", "2d"] {
        assert!(valid_window(ok), "{ok}");
    }
    for bad in [
        "",
        "m",
        "0m",
        "1",
        "1m]) or vector(1",
        "1w",
        "-1m",
        "1.5m",
        "1mm",
    ] {
        assert!(!valid_window(bad), "{bad}");
    }
}

#[test]
fn queries_name_the_metrics_and_labels() {
    let q = Queries::new("1m");
    assert!(q.requests.contains("rate(istio_requests_total[1m])"));
    for l in [
        "reporter",
        "source_workload",
        "source_workload_namespace",
        "source_app",
        "source_version",
        "destination_service",
        "destination_service_name",
        "destination_service_namespace",
        "destination_workload",
        "destination_app",
        "destination_version",
        "response_code",
        "response_flags",
        "connection_security_policy",
    ] {
        assert!(q.requests.contains(l), "{l}");
    }
    assert!(q
        .durations
        .contains("rate(istio_request_duration_milliseconds_bucket[1m])"));
    assert!(q.durations.contains(", le)"));
    assert!(q.tcp_bytes.contains("istio_tcp_sent_bytes_total[1m]"));
    assert!(q
        .tcp_connections
        .contains("istio_tcp_connections_opened_total[1m]"));
    assert!(q.blocked.contains("sluice_egress_blocked_total[1m]"));
    for l in ["source_workload", "destination_host", "port", "protocol"] {
        assert!(q.blocked.contains(l), "{l}");
    }
}

#[test]
fn parses_prometheus_vectors_and_errors() {
    let body = br#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"reporter":"source","le":"+Inf"},"value":[1700000000.1,"2.5"]},
        {"metric":{},"value":[1700000000.1,"NaN"]}]}}"#;
    let v = parse_query_response(body).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].labels["reporter"], "source");
    assert!(close(v[0].value, 2.5));
    assert!(v[1].value.is_nan());
    let err =
        parse_query_response(br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#)
            .unwrap_err();
    assert!(format!("{err}").contains("parse error"));
    assert!(parse_query_response(b"<html>").is_err());
}

// === Against a fake Prometheus ===

fn vector_json(samples: &[PromSample]) -> String {
    let result: Vec<Value> = samples
        .iter()
        .map(|s| json!({"metric": s.labels, "value": [1700000000.5, format!("{}", s.value)]}))
        .collect();
    json!({"status": "success", "data": {"resultType": "vector", "result": result}}).to_string()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| u8::from_str_radix(&s[i + 1..i + 3], 16).ok())
            .flatten();
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(if b[i] == b'+' { b' ' } else { b[i] });
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// A Prometheus that answers `/api/v1/query` from canned vectors (chosen by the metric the
/// query names) and records the queries it got.
async fn fake_prometheus(inputs: Inputs) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(vec![
        (
            "istio_request_duration_milliseconds_bucket",
            vector_json(&inputs.durations),
        ),
        ("istio_requests_total", vector_json(&inputs.requests)),
        ("istio_tcp_sent_bytes_total", vector_json(&inputs.tcp_bytes)),
        (
            "istio_tcp_connections_opened_total",
            vector_json(&inputs.tcp_connections),
        ),
        ("sluice_egress_blocked_total", vector_json(&inputs.blocked)),
    ]);
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let answers = answers.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let answers = answers.clone();
                    let seen = seen.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/api/v1/query");
                        let q = query_param(req.uri().query().unwrap_or(""), "query")
                            .map(|q| percent_decode(&q))
                            .unwrap_or_default();
                        seen.lock().unwrap().push(q.clone());
                        let body = answers
                            .iter()
                            .find(|(m, _)| q.contains(m))
                            .map(|(_, b)| b.clone())
                            .unwrap_or_else(|| {
                                r#"{"status":"error","errorType":"bad_data","error":"unknown"}"#
                                    .into()
                            });
                        Ok::<_, Infallible>(respond(StatusCode::OK, "application/json", body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

async fn http_get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ct, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn fetch_graph_queries_prometheus_and_builds_the_graph() {
    let (addr, seen) = fake_prometheus(tutorial_inputs()).await;
    let prom = Prometheus::new(&format!("http://{addr}/")).unwrap();
    let g = fetch_graph(&prom, "5m").await.unwrap();
    let expected = build_graph(&tutorial_inputs());
    assert_eq!(g.nodes, expected.nodes);
    assert_eq!(g.edges, expected.edges);
    assert_eq!(g.blocked, expected.blocked);
    assert_eq!(g.nodes.len(), 15);
    assert_eq!(g.edges.len(), 13);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.iter().all(|q| q.contains("[5m]")), "{seen:?}");
}

#[tokio::test]
async fn server_serves_the_page_and_the_graph_json() {
    let (prom_addr, _) = fake_prometheus(tutorial_inputs()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let prom = Prometheus::new(&format!("http://{prom_addr}")).unwrap();
    tokio::spawn(serve(listener, prom, Duration::from_millis(2500)));

    let (status, ct, html) = http_get(addr, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(
        html.contains(r#"<meta name="sluice-refresh-ms" content="2500">"#),
        "{html}"
    );
    assert!(html.contains(r#"<script src="app.js">"#));
    // Offline: nothing is loaded from another origin.
    for (name, text) in [
        ("index.html", INDEX_HTML),
        ("app.js", APP_JS),
        ("style.css", STYLE_CSS),
    ] {
        for line in text.lines() {
            let outside = line.contains("https://")
                || (line.contains("http://") && !line.contains("http://www.w3.org/2000/svg"))
                || line.contains("@import")
                || line.contains("url(http");
            assert!(!outside, "{name} loads from elsewhere: {line}");
        }
    }
    let (status, ct, js) = http_get(addr, "/app.js").await;
    assert_eq!(
        (status, ct.starts_with("text/javascript")),
        (StatusCode::OK, true)
    );
    assert!(js.contains("data-edge"));
    let (status, _, css) = http_get(addr, "/style.css").await;
    assert_eq!(status, StatusCode::OK);
    assert!(css.contains(".shape.blackhole"));

    let (status, ct, body) = http_get(addr, "/api/graph?window=1m").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ct, "application/json");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["window"], "1m");
    assert!(v["generated_at"].as_str().unwrap().ends_with('Z'));
    let nodes = v["nodes"].as_array().unwrap();
    let ext = nodes
        .iter()
        .find(|n| n["id"] == "external:worldclockapi.com")
        .unwrap();
    assert_eq!(ext["kind"], "external");
    let e = v["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["id"]
                == "workload:tutorial/customer-v1->service:preference.tutorial.svc.cluster.local"
        })
        .unwrap();
    assert_eq!(e["source"], "workload:tutorial/customer-v1");
    assert_eq!(e["target"], "service:preference.tutorial.svc.cluster.local");
    assert_eq!(e["protocol"], "http");
    assert_eq!(e["rps"], 10.0);
    assert_eq!(e["error_rate"], 10.0);
    assert_eq!(e["p99_ms"], 235.0);
    assert_eq!(e["mtls"], false);
    assert_eq!(e["responses"]["503"], 1.0);
    let b = &v["blocked"][0];
    assert_eq!(b["host"], "worldclockapi.com");
    assert_eq!(b["ports"], json!([{"port": 80, "protocol": "http"}]));
    assert_eq!(b["count"], 5.0);
    assert_eq!(
        b["workloads"],
        json!(["tutorial/customer", "tutorial/recommendation"])
    );
    assert!(b["service_entry"]
        .as_str()
        .unwrap()
        .contains("kind: ServiceEntry"));

    let (status, _, body) = http_get(addr, "/api/graph?window=1m%5D)").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = http_get(addr, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unreachable_prometheus_is_a_502_with_the_reason() {
    // A port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap();
    drop(free);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let prom = Prometheus::new(&format!("http://{dead}")).unwrap();
    tokio::spawn(serve(listener, prom, Duration::from_secs(5)));
    let (status, _, body) = http_get(addr, "/api/graph").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach Prometheus"),
        "{body}"
    );
}

#[test]
fn prometheus_urls() {
    assert!(Prometheus::new("http://127.0.0.1:9090").is_ok());
    let p = Prometheus::new("http://prom.example:9090/prometheus/").unwrap();
    assert_eq!(p.prefix, "/prometheus");
    assert_eq!(p.authority, "prom.example:9090");
    assert!(Prometheus::new("https://127.0.0.1:9090").is_err());
    assert!(Prometheus::new("127.0.0.1:9090").is_err());
}

/// A failed gRPC call is HTTP 200 with its status in `grpc_response_status`: an error unless the
/// status is 0 (OK), as Kiali counts it; plain HTTP 200s (label empty) are not errors.
#[test]
fn grpc_calls_with_a_status_other_than_ok_are_errors() {
    let client = src(T, "client", "v1");
    let parts = [client, svc("grpc", T), dst(T, "grpc", "v1")];
    let grpc = |status: &str, v: f64| {
        series(
            "source",
            &parts,
            &[
                ("response_code", "200"),
                ("grpc_response_status", status),
                ("response_flags", "-"),
                ("connection_security_policy", "unknown"),
            ],
            v,
        )
    };
    let g = build_graph(&Inputs {
        requests: vec![grpc("0", 6.0), grpc("14", 3.0), grpc("", 1.0)],
        durations: Vec::new(),
        tcp_bytes: Vec::new(),
        tcp_connections: Vec::new(),
        blocked: Vec::new(),
    });
    let e = edge(
        &g,
        "workload:tutorial/client-v1->service:grpc.tutorial.svc.cluster.local",
    );
    assert!(close(e.rps, 10.0), "{}", e.rps);
    assert!(close(e.error_rps, 3.0), "{}", e.error_rps);
}
