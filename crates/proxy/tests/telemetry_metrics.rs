//! Metrics: Istio names, label order, Envoy buckets, and valid Prometheus text format 0.0.4.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod common;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sluice_proxy::telemetry::metrics::ENVOY_DEFAULT_BUCKETS;
use sluice_proxy::telemetry::{
    HttpLabels, Metrics, PeerLabels, Reporter, RequestProtocol, SecurityPolicy, ServiceLabels,
    TcpLabels,
};

const HTTP_LABEL_ORDER: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    "response_code",
    "grpc_response_status",
];

fn productpage() -> Arc<PeerLabels> {
    Arc::new(PeerLabels {
        workload: "productpage-v1".into(),
        workload_namespace: "default".into(),
        principal: "unknown".into(),
        app: "productpage".into(),
        version: "v1".into(),
        canonical_service: "productpage".into(),
        canonical_revision: "v1".into(),
        cluster: "Kubernetes".into(),
    })
}

fn http_labels(code: u16) -> HttpLabels {
    HttpLabels {
        reporter: Reporter::Source,
        source: productpage(),
        destination: Arc::new(PeerLabels::unknown()),
        destination_service: Arc::new(ServiceLabels::new(
            "server.default.svc.cluster.local",
            "server",
            "default",
        )),
        request_protocol: RequestProtocol::Http,
        response_flags: Cow::Borrowed(""),
        connection_security_policy: SecurityPolicy::Unknown,
        response_code: code,
        grpc_response_status: None,
        tags: None,
    }
}

fn tcp_labels() -> TcpLabels {
    TcpLabels {
        reporter: Reporter::Source,
        source: productpage(),
        destination: Arc::new(PeerLabels::unknown()),
        destination_service: Arc::new(ServiceLabels::special_cluster("BlackHoleCluster")),
        response_flags: Cow::Borrowed("UH"),
        connection_security_policy: SecurityPolicy::Unknown,
    }
}

const HTTP_200_LABELS: &str = r#"reporter="source",source_workload="productpage-v1",source_workload_namespace="default",source_principal="unknown",source_app="productpage",source_version="v1",source_canonical_service="productpage",source_canonical_revision="v1",source_cluster="Kubernetes",destination_workload="unknown",destination_workload_namespace="unknown",destination_principal="unknown",destination_app="unknown",destination_version="unknown",destination_service="server.default.svc.cluster.local",destination_service_name="server",destination_service_namespace="default",destination_canonical_service="unknown",destination_canonical_revision="unknown",destination_cluster="unknown",request_protocol="http",response_flags="-",connection_security_policy="unknown",response_code="200",grpc_response_status="""#;

const TCP_LABELS: &str = r#"reporter="source",source_workload="productpage-v1",source_workload_namespace="default",source_principal="unknown",source_app="productpage",source_version="v1",source_canonical_service="productpage",source_canonical_revision="v1",source_cluster="Kubernetes",destination_workload="unknown",destination_workload_namespace="unknown",destination_principal="unknown",destination_app="unknown",destination_version="unknown",destination_service="BlackHoleCluster",destination_service_name="BlackHoleCluster",destination_service_namespace="unknown",destination_canonical_service="unknown",destination_canonical_revision="unknown",destination_cluster="unknown",request_protocol="tcp",response_flags="UH",connection_security_policy="unknown""#;

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn requests_total_has_istio_labels_in_order() {
    let m = Metrics::new("1.2.3");
    m.record_http(&http_labels(200), Duration::from_millis(4), 10, 135);
    let out = m.encode();
    let expected = format!("istio_requests_total{{{HTTP_200_LABELS}}} 1");
    assert!(lines(&out).contains(&expected.as_str()), "{out}");
    assert!(
        out.contains("# TYPE istio_requests_total counter\n"),
        "{out}"
    );
    assert!(!out.contains("_total_total"), "{out}");
    assert!(!out.contains("# EOF"), "{out}");
    assert!(!out.contains("# UNIT"), "{out}");

    // The label keys, in order, match Istio's all_tags_.
    let labels = expected.split_once('{').unwrap().1.trim_end_matches("} 1");
    let keys: Vec<&str> = labels
        .split("\",")
        .map(|kv| kv.split_once('=').unwrap().0)
        .collect();
    assert_eq!(keys, HTTP_LABEL_ORDER);
}

#[test]
fn histograms_use_envoy_buckets() {
    let m = Metrics::new("1.2.3");
    m.record_http(&http_labels(200), Duration::from_micros(4_900), 10, 135);
    let out = m.encode();
    let l = lines(&out);
    assert!(l.contains(&"# TYPE istio_request_duration_milliseconds histogram"));
    let bucket = |name: &str, le: &str, n: u64| {
        format!("{name}_bucket{{{HTTP_200_LABELS},le=\"{le}\"}} {n}")
    };
    let d = "istio_request_duration_milliseconds";
    // 4.9 ms is recorded as 4 ms, as Envoy does.
    for (le, n) in [
        ("0.5", 0),
        ("1", 0),
        ("5", 1),
        ("10", 1),
        ("3600000", 1),
        ("+Inf", 1),
    ] {
        let want = bucket(d, le, n);
        assert!(l.contains(&want.as_str()), "missing {want}\n{out}");
    }
    let count = format!("{d}_count{{{HTTP_200_LABELS}}} 1");
    assert!(l.contains(&count.as_str()), "{out}");
    let bucket_lines = l
        .iter()
        .filter(|x| x.starts_with("istio_request_duration_milliseconds_bucket{"))
        .count();
    assert_eq!(bucket_lines, ENVOY_DEFAULT_BUCKETS.len() + 1);

    let rq = bucket("istio_request_bytes", "25", 1);
    assert!(l.contains(&rq.as_str()), "{out}");
    let rq = bucket("istio_request_bytes", "5", 0);
    assert!(l.contains(&rq.as_str()), "{out}");
    let rs = bucket("istio_response_bytes", "250", 1);
    assert!(l.contains(&rs.as_str()), "{out}");
    let rs = bucket("istio_response_bytes", "100", 0);
    assert!(l.contains(&rs.as_str()), "{out}");
}

#[test]
fn tcp_counters() {
    let m = Metrics::new("1.2.3");
    let labels = tcp_labels();
    m.tcp_opened(&labels);
    m.tcp_bytes(&labels, 1000, 8);
    m.tcp_closed(&labels, 3986, 900);
    let out = m.encode();
    let l = lines(&out);
    for (name, value) in [
        ("istio_tcp_connections_opened_total", 1),
        ("istio_tcp_connections_closed_total", 1),
        ("istio_tcp_sent_bytes_total", 4986),
        ("istio_tcp_received_bytes_total", 908),
    ] {
        let want = format!("{name}{{{TCP_LABELS}}} {value}");
        assert!(l.contains(&want.as_str()), "missing {want}\n{out}");
        let ty = format!("# TYPE {name} counter");
        assert!(l.contains(&ty.as_str()), "missing {ty}\n{out}");
    }
    assert!(!out.contains("_total_total"), "{out}");
}

#[test]
fn build_info_and_sluice_counters() {
    let m = Metrics::new("1.2.3");
    m.config_reloads().inc();
    m.config_reloads().inc();
    m.config_errors().set(3);
    m.accesslog_dropped().inc_by(5);
    let custom = Counter::<u64>::default();
    custom.inc();
    // A trailing _total is tolerated and not doubled.
    m.register("sluice_custom_total", "A custom counter", custom);
    m.register(
        "sluice_custom_gauge",
        "A custom gauge",
        Gauge::<i64>::default(),
    );
    let out = m.encode();
    let l = lines(&out);
    for want in [
        r#"istio_build{component="proxy",tag="1.2.3"} 1"#,
        "# TYPE istio_build gauge",
        "sluice_config_reloads_total 2",
        "# TYPE sluice_config_reloads_total counter",
        "sluice_config_errors 3",
        "sluice_accesslog_dropped_total 5",
        "sluice_custom_total 1",
        "sluice_custom_gauge 0",
    ] {
        assert!(l.contains(&want), "missing {want}\n{out}");
    }
    assert!(!out.contains("_total_total"), "{out}");
    assert_eq!(m.build_tag(), "1.2.3");
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new("1.2.3");
    let mut labels = http_labels(503);
    labels.source = Arc::new(PeerLabels {
        workload: "we\"ird\\name\nx".into(),
        ..PeerLabels::unknown()
    });
    labels.response_flags = Cow::Borrowed("UF,URX");
    labels.request_protocol = RequestProtocol::Grpc;
    labels.grpc_response_status = Some(14);
    m.record_http(&labels, Duration::from_millis(1), 0, 0);
    let out = m.encode();
    assert!(
        out.contains(r#"source_workload="we\"ird\\name\nx""#),
        "{out}"
    );
    assert!(
        out.contains(r#"request_protocol="grpc",response_flags="UF,URX",connection_security_policy="unknown",response_code="503",grpc_response_status="14"} 1"#),
        "{out}"
    );
    validate_prometheus_004(&out);
}

/// Checks the exposition the way Prometheus' 0.0.4 text parser would: every sample line is
/// `name{labels} value` with valid names, properly quoted label values, a float value, and belongs to
/// a family declared by a preceding `# TYPE` with the matching name.
fn validate_prometheus_004(out: &str) {
    let mut types: HashMap<String, String> = HashMap::new();
    assert!(out.ends_with('\n'));
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE line");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                "{line}"
            );
            assert!(
                types.insert(name.to_string(), ty.to_string()).is_none(),
                "duplicate {line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let name_end = line.find(['{', ' ']).expect("sample line");
        let name = &line[..name_end];
        assert!(
            name.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic()
                    || c == '_'
                    || c == ':'
                    || (i > 0 && c.is_ascii_digit())),
            "bad name in {line}"
        );
        let mut rest = &line[name_end..];
        if let Some(labels) = rest.strip_prefix('{') {
            // key="value" pairs, value with \\ \" \n escapes only.
            let mut s = labels;
            loop {
                let eq = s.find("=\"").expect("label =\"");
                let key = &s[..eq];
                assert!(
                    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name {key:?} in {line}"
                );
                let mut chars = s[eq + 2..].char_indices();
                let end = loop {
                    match chars.next().expect("unterminated label value") {
                        (_, '\\') => {
                            let (_, e) = chars.next().expect("escape");
                            assert!(matches!(e, '\\' | '"' | 'n'), "bad escape in {line}");
                        }
                        (i, '"') => break eq + 2 + i,
                        (_, '\n') => panic!("raw newline"),
                        _ => {}
                    }
                };
                s = &s[end + 1..];
                if let Some(more) = s.strip_prefix(',') {
                    s = more;
                } else {
                    rest = s.strip_prefix('}').expect("closing brace");
                    break;
                }
            }
        }
        let value = rest.strip_prefix(' ').expect("space before value");
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in {line}"
        );
        let family = [
            (name.strip_suffix("_bucket"), "histogram"),
            (name.strip_suffix("_sum"), "histogram"),
            (name.strip_suffix("_count"), "histogram"),
        ]
        .into_iter()
        .find_map(|(base, ty)| base.filter(|b| types.get(*b).map(String::as_str) == Some(ty)))
        .unwrap_or(name);
        assert!(types.contains_key(family), "sample without TYPE: {line}");
    }
}

#[test]
fn whole_exposition_is_valid_prometheus_text() {
    let m = Metrics::new("1.2.3");
    m.record_http(&http_labels(200), Duration::from_millis(12), 1, 2);
    m.record_http(&http_labels(404), Duration::from_millis(1), 0, 0);
    m.tcp_opened(&tcp_labels());
    m.tcp_closed(&tcp_labels(), 1, 2);
    validate_prometheus_004(&m.encode());
    // And when nothing has been recorded yet.
    validate_prometheus_004(&Metrics::new("x").encode());
}

/// The labels of a known peer are built once per snapshot and (IP, principal), not per request,
/// and follow a new snapshot.
#[test]
fn peer_labels_are_built_once_per_snapshot_and_principal() {
    let yaml = |version: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: reviews-v1, namespace: default}}\nspec:\n  address: 10.2.0.1\n  labels: {{app: reviews, version: {version}}}\n"
        )
    };
    let mut snap = common::compile_yaml(&yaml("v1"), sluice_model::ProxyKind::Sidecar, "default");
    snap.generation = 1;
    let snapshots = Arc::new(ArcSwap::from_pointee(snap));
    let proxy = sluice_proxy::context::Proxy::new(
        snapshots.clone(),
        sluice_proxy::telemetry::AccessLogger::disabled(),
        Arc::new(Metrics::new("test")),
        "default",
        &Default::default(),
    );
    let ip = "10.2.0.1".parse().unwrap();
    let snap = snapshots.load_full();
    let first = proxy.peer_at(&snap, ip);
    assert_eq!(&*first.app, "reviews");
    assert_eq!(&*first.version, "v1");
    assert!(Arc::ptr_eq(&first, &proxy.peer_at(&snap, ip)), "built once");
    let principal: Arc<str> = Arc::from("cluster.local/ns/default/sa/reviews");
    let mtls = proxy.peer_with_principal(&snap, ip, Some(&principal));
    assert_eq!(mtls.principal, principal);
    assert_eq!(&*first.principal, "unknown", "the plain entry is unchanged");
    assert!(Arc::ptr_eq(
        &mtls,
        &proxy.peer_with_principal(&snap, ip, Some(&principal))
    ));
    // An unknown address is `unknown`, with the expected principal when there is one.
    let stranger = "10.9.9.9".parse().unwrap();
    assert!(Arc::ptr_eq(
        &proxy.peer_at(&snap, stranger),
        &proxy.unknown_peer
    ));
    let unknown_mtls = proxy.peer_with_principal(&snap, stranger, Some(&principal));
    assert_eq!(
        (&*unknown_mtls.app, &unknown_mtls.principal),
        ("unknown", &principal)
    );

    let mut next = common::compile_yaml(&yaml("v2"), sluice_model::ProxyKind::Sidecar, "default");
    next.generation = 2;
    snapshots.store(Arc::new(next));
    let snap = snapshots.load_full();
    assert_eq!(
        &*proxy.peer_at(&snap, ip).version,
        "v2",
        "a new snapshot is read"
    );
}
