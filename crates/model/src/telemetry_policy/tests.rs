//! Selection and merge rules, each against what istiod computes for the same Telemetries.

use std::path::Path;

use super::*;

/// Decodes `yaml` (Telemetry documents) and resolves them for a proxy in `ns` with `labels`.
fn resolve(yaml: &str, ns: &str, labels: &[(&str, &str)]) -> (TelemetryPolicy, Vec<Diagnostic>) {
    let loaded = sluice_api::decode_str(Path::new("t.yaml"), yaml);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let labels: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    TelemetryPolicy::compile(&loaded.resources, ns, &labels, "istio-system")
}

fn telemetry(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}\n---\n"
    )
}

const MESH_OFF: &str = "  accessLogging:\n  - providers: [{name: envoy}]\n    disabled: true";

#[test]
fn nothing_applies_without_telemetry() {
    let (p, d) = resolve("", "default", &[]);
    assert_eq!(p, TelemetryPolicy::default());
    assert!(d.is_empty());
    assert_eq!(
        p.access_logging.client.decision(),
        AccessLogDecision::MeshConfig
    );
    assert!(p.metrics.client.is_default() && p.tracing.is_none());
}

#[test]
fn root_namespace_applies_mesh_wide_and_a_workload_one_turns_logging_back_on() {
    let yaml = telemetry("istio-system", "mesh-default", MESH_OFF)
        + &telemetry(
            "default",
            "httpbin-logs",
            "  selector:\n    matchLabels: {app: httpbin}\n  accessLogging:\n  - disabled: false",
        );
    let (other, _) = resolve(&yaml, "default", &[("app", "sleep")]);
    assert_eq!(other.applied, ["istio-system/mesh-default"]);
    assert_eq!(
        other.access_logging.client.decision(),
        AccessLogDecision::Off
    );
    assert_eq!(
        other.access_logging.server.decision(),
        AccessLogDecision::Off
    );
    let (httpbin, _) = resolve(&yaml, "default", &[("app", "httpbin"), ("v", "1")]);
    assert_eq!(
        httpbin.applied,
        ["istio-system/mesh-default", "default/httpbin-logs"]
    );
    assert_eq!(
        httpbin.access_logging.server.decision(),
        AccessLogDecision::Envoy { filter: None }
    );
    // Another namespace's selector never applies.
    let (elsewhere, _) = resolve(&yaml, "other", &[("app", "httpbin")]);
    assert_eq!(
        elsewhere.access_logging.server.decision(),
        AccessLogDecision::Off
    );
}

#[test]
fn namespace_wide_overrides_root_and_only_the_first_selectorless_counts() {
    let yaml = telemetry("istio-system", "mesh", MESH_OFF)
        + &telemetry(
            "default",
            "a-ns",
            "  accessLogging:\n  - providers: [{name: envoy}]",
        )
        + &telemetry("default", "b-ns", MESH_OFF);
    let (p, _) = resolve(&yaml, "default", &[]);
    assert_eq!(p.applied, ["istio-system/mesh", "default/a-ns"]);
    assert_eq!(
        p.access_logging.client.decision(),
        AccessLogDecision::Envoy { filter: None }
    );
}

#[test]
fn match_mode_limits_an_entry_to_one_side() {
    let yaml = telemetry(
        "default",
        "inbound-off",
        "  accessLogging:\n  - providers: [{name: envoy}]\n  - match: {mode: SERVER}\n    disabled: true",
    );
    let (p, _) = resolve(&yaml, "default", &[]);
    assert_eq!(
        p.access_logging.client.decision(),
        AccessLogDecision::Envoy { filter: None }
    );
    assert_eq!(p.access_logging.server.decision(), AccessLogDecision::Off);
}

#[test]
fn filter_comes_from_the_entry_that_names_the_provider() {
    let yaml = telemetry(
        "istio-system",
        "errors-only",
        "  accessLogging:\n  - providers: [{name: envoy}]\n    filter:\n      expression: response.code >= 400",
    );
    let (p, _) = resolve(&yaml, "default", &[]);
    match p.access_logging.client.decision() {
        AccessLogDecision::Envoy { filter: Some(f) } => {
            assert_eq!(f.source(), "response.code >= 400")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn without_any_provider_the_mesh_config_log_stays_as_in_istiod() {
    // istiod resolves no provider (no default providers), so the legacy accessLogFile applies.
    let yaml = telemetry("default", "off", "  accessLogging:\n  - disabled: true");
    let (p, _) = resolve(&yaml, "default", &[]);
    assert_eq!(
        p.access_logging.client.decision(),
        AccessLogDecision::MeshConfig
    );
}

#[test]
fn unknown_provider_is_warned_and_logs_nothing() {
    let yaml = telemetry(
        "default",
        "otel",
        "  accessLogging:\n  - providers: [{name: otel-als}]",
    );
    let (p, d) = resolve(&yaml, "default", &[]);
    assert_eq!(p.access_logging.client.decision(), AccessLogDecision::Off);
    assert!(
        d[0].message.contains("SLU0004") && d[0].field.contains("providers[0]"),
        "{d:?}"
    );
}

#[test]
fn metrics_overrides_merge_deeply_per_metric_and_mode() {
    let yaml = telemetry(
        "istio-system",
        "mesh",
        "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT}\n      tagOverrides:\n        request_protocol: {operation: REMOVE}\n        x_team:\n          value: request.headers['x-team']",
    ) + &telemetry(
        "default",
        "ns",
        "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT, mode: SERVER}\n      tagOverrides:\n        request_protocol:\n          value: \"'h'\"\n    - match: {metric: REQUEST_DURATION}\n      disabled: true",
    );
    let (p, _) = resolve(&yaml, "default", &[]);
    let client = &p.metrics.client;
    let count = client.tags(&MetricName::RequestCount).unwrap();
    assert_eq!(count["request_protocol"], TagEdit::Remove);
    assert!(
        matches!(&count["x_team"], TagEdit::Upsert(e) if e.source() == "request.headers['x-team']")
    );
    let server = p.metrics.server.tags(&MetricName::RequestCount).unwrap();
    assert!(matches!(&server["request_protocol"], TagEdit::Upsert(_)));
    assert!(server.contains_key("x_team"), "kept from the root level");
    for m in [&p.metrics.client, &p.metrics.server] {
        assert!(!m.reports(&MetricName::RequestDuration));
        assert!(m.reports(&MetricName::RequestCount));
        assert!(m.tags(&MetricName::ResponseSize).is_none());
    }
}

#[test]
fn all_metrics_disabled_until_a_more_specific_override_enables() {
    let off =
        "  metrics:\n  - overrides:\n    - match: {metric: ALL_METRICS}\n      disabled: true";
    let yaml = telemetry("istio-system", "mesh", off);
    let (p, _) = resolve(&yaml, "default", &[]);
    assert!(p.metrics.client.disabled && p.metrics.server.disabled);
    let yaml = yaml
        + &telemetry(
            "default",
            "on",
            "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT, mode: CLIENT}\n      disabled: false",
        );
    let (p, _) = resolve(&yaml, "default", &[]);
    assert!(!p.metrics.client.disabled && p.metrics.server.disabled);
}

#[test]
fn metrics_for_another_provider_switch_prometheus_off() {
    let yaml = telemetry(
        "default",
        "sd",
        "  metrics:\n  - providers: [{name: stackdriver}]",
    );
    let (p, d) = resolve(&yaml, "default", &[]);
    assert!(p.metrics.client.disabled && p.metrics.server.disabled);
    assert_eq!(d.len(), 1);
}

#[test]
fn tracing_merges_shallowly_per_field_and_mode() {
    let yaml = telemetry(
        "istio-system",
        "mesh",
        "  tracing:\n  - providers: [{name: zipkin}]\n    randomSamplingPercentage: 10\n    customTags:\n      team:\n        literal: {value: core}",
    ) + &telemetry(
        "default",
        "wl",
        "  selector:\n    matchLabels: {app: a}\n  tracing:\n  - match: {mode: SERVER}\n    randomSamplingPercentage: 100\n    disableSpanReporting: true\n    customTags:\n      user:\n        header: {name: x-user, defaultValue: anon}",
    );
    let (p, _) = resolve(&yaml, "default", &[("app", "a")]);
    let t = p.tracing.unwrap();
    assert_eq!(t.client.provider.as_deref(), Some("zipkin"));
    assert_eq!(t.client.random_sampling_percentage, Some(10.0));
    assert!(!t.client.disabled);
    assert!(t.client.custom_tags.contains_key("team"));
    assert_eq!(t.server.provider.as_deref(), Some("zipkin"));
    assert_eq!(t.server.random_sampling_percentage, Some(100.0));
    assert!(t.server.disabled);
    // customTags replace, they do not merge (istiod's TODO says so).
    assert!(
        t.server.custom_tags.contains_key("user") && !t.server.custom_tags.contains_key("team")
    );
    assert!(t.server.use_request_id_for_trace_sampling && t.server.enable_istio_tags);
}

#[test]
fn tracing_without_provider_leaves_the_provider_to_the_mesh_default() {
    let yaml = telemetry(
        "default",
        "t",
        "  tracing:\n  - randomSamplingPercentage: 50",
    );
    let t = resolve(&yaml, "default", &[]).0.tracing.unwrap();
    assert!(!t.client.disabled && !t.server.disabled);
    assert_eq!(
        (t.client.provider.as_deref(), t.server.provider.as_deref()),
        (None, None)
    );
    assert_eq!(t.client.random_sampling_percentage, Some(50.0));
}

#[test]
fn target_refs_apply_to_no_proxy() {
    let yaml = telemetry(
        "default",
        "gw",
        "  targetRefs:\n  - kind: Gateway\n    group: gateway.networking.k8s.io\n    name: gw\n  accessLogging:\n  - providers: [{name: envoy}]\n    disabled: true",
    );
    let (p, d) = resolve(&yaml, "default", &[("app", "x")]);
    assert!(p.applied.is_empty());
    assert!(d[0].message.contains("targetRef"), "{d:?}");
}
