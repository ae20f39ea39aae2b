//! One pod (or pod template): whether to inject, and the injection itself, following Istio's
//! injector: `injectRequired` and the sidecar template (`injection-template.yaml`), then its
//! post-processing (Prometheus annotations, the status annotation, container order).

use serde_json::{json, Map, Value};

use super::settings::{self, names, Interception, Settings};
use super::{
    InjectOptions, INBOUND_PORT, INIT_CONTAINER, OUTBOUND_PORT, PROXY_CONTAINER, PROXY_UID,
    ROOT_DIR, ROOT_VOLUME, SLUICE_PATH, STATS_PORT, STATUS_PORT, TOKEN_DIR, TOKEN_FILE,
    TOKEN_VOLUME,
};

/// Namespaces Istio never injects into (`IgnoredNamespaces`, `pkg/kube/inject/initializer.go`).
pub const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// What the workload around the pod is called, for the canonical-name label and messages
/// (Istio's `DeploymentMeta`).
#[derive(Debug, Clone, Default)]
pub struct WorkloadName {
    pub name: String,
    pub namespace: String,
}

/// Istio's agent port, where Istio's injector points Prometheus (merged metrics).
const ISTIO_AGENT_PORT: &str = "15020";

/// Why a pod was left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    HostNetwork,
    Disabled,
    IgnoredNamespace(String),
    AlreadyHasProxy,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::HostNetwork => f.write_str("host networking is enabled"),
            Skip::Disabled => write!(
                f,
                "sidecar injection is disabled ({}: \"false\")",
                names::INJECT
            ),
            Skip::IgnoredNamespace(ns) => {
                write!(f, "namespace {ns} is a Kubernetes system namespace")
            }
            Skip::AlreadyHasProxy => write!(
                f,
                "it already has a {PROXY_CONTAINER} container that no injector recorded in {}",
                names::STATUS
            ),
        }
    }
}

/// A problem found in the pod: the field (relative to the pod: `metadata.annotations.X`,
/// `spec.containers`) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProblem {
    pub field: String,
    pub message: String,
}

impl PodProblem {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        PodProblem {
            field: field.into(),
            message: message.into(),
        }
    }

    fn from_setting(p: settings::Problem) -> Self {
        PodProblem {
            field: p
                .annotation
                .map_or_else(String::new, |a| format!("metadata.annotations.{a}")),
            message: p.message,
        }
    }
}

/// What happened to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodOutcome {
    Injected,
    Skipped(Skip),
}

/// Injects the sidecar into `pod` (an object with `metadata` and `spec`: a Pod, or a workload's
/// pod template) in place. `namespace` is where the pod runs (for the system-namespace rule).
/// Warnings are appended to `warnings`.
pub fn inject(
    pod: &mut Map<String, Value>,
    workload: &WorkloadName,
    opts: &InjectOptions,
    warnings: &mut Vec<PodProblem>,
) -> Result<PodOutcome, PodProblem> {
    // The shape Kubernetes requires, checked before anything changes.
    let Some(Value::Object(spec)) = pod.get("spec") else {
        return Err(PodProblem::new(
            "spec",
            match pod.get("spec") {
                None | Some(Value::Null) => "a pod needs a spec",
                Some(_) => "must be a mapping",
            },
        ));
    };
    let meta = match pod.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => return Err(PodProblem::new("metadata", "must be a mapping")),
    };
    let labels = string_map(meta, "labels")?;
    let annotations = string_map(meta, "annotations")?;
    let app = containers(spec, "containers", true)?;
    containers(spec, "initContainers", false)?;
    if !matches!(
        spec.get("volumes"),
        None | Some(Value::Null | Value::Array(_))
    ) {
        return Err(PodProblem::new("spec.volumes", "must be a list"));
    }

    // injectRequired
    if spec.get("hostNetwork") == Some(&Value::Bool(true)) {
        return Ok(PodOutcome::Skipped(Skip::HostNetwork));
    }
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .unwrap_or(&workload.namespace);
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Ok(PodOutcome::Skipped(Skip::IgnoredNamespace(
            namespace.to_string(),
        )));
    }
    // The label is the newer API; when both are present it wins.
    let selector = labels
        .get(names::INJECT)
        .or_else(|| annotations.get(names::INJECT))
        .and_then(Value::as_str)
        .unwrap_or("");
    match selector {
        "false" => return Ok(PodOutcome::Skipped(Skip::Disabled)),
        "true" | "" => {}
        other => warnings.push(PodProblem::new(
            if labels.contains_key(names::INJECT) {
                format!("metadata.labels.{}", names::INJECT)
            } else {
                format!("metadata.annotations.{}", names::INJECT)
            },
            format!(
                "invalid value {other:?} for {}: only \"true\" and \"false\" are accepted; \
                 injecting by default",
                names::INJECT
            ),
        )),
    }

    let previous = injection_status(&annotations);
    if previous.is_none() && app.iter().any(|c| c.name == PROXY_CONTAINER) {
        return Ok(PodOutcome::Skipped(Skip::AlreadyHasProxy));
    }
    let (settings, setting_warnings) = settings::read(&annotations, &opts.default_proxy_config)
        .map_err(PodProblem::from_setting)?;
    warnings.extend(setting_warnings.into_iter().map(PodProblem::from_setting));

    // Re-injection (the pod went through an injector before): take out what that injection
    // added, as Istio's `stripPod` does, so injecting twice gives the same pod.
    if let Some(previous) = previous {
        strip(pod, &previous);
    }

    let app_containers: Vec<String> = match pod.get("spec").and_then(|s| s.get("containers")) {
        Some(Value::Array(cs)) => cs
            .iter()
            .filter_map(|c| c.get("name").and_then(Value::as_str))
            .filter(|n| *n != PROXY_CONTAINER)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };

    // Labels (the template's `metadata.labels`): existing values win.
    let meta = metadata_mut(pod);
    let labels = object_mut(meta, "labels");
    let canonical_name = {
        let name = labels
            .get(names::CANONICAL_NAME)
            .or_else(|| labels.get("app.kubernetes.io/name"))
            .or_else(|| labels.get("app"))
            .and_then(Value::as_str)
            .unwrap_or(&workload.name);
        let truncated: String = name.chars().take(63).collect();
        truncated.trim_matches(['-', '_', '.']).to_string()
    };
    let canonical_revision = labels
        .get(names::CANONICAL_REVISION)
        .or_else(|| labels.get("app.kubernetes.io/version"))
        .or_else(|| labels.get("version"))
        .and_then(Value::as_str)
        .unwrap_or("latest")
        .to_string();
    labels
        .entry(names::TLS_MODE)
        .or_insert_with(|| json!("istio"));
    labels.insert(names::CANONICAL_NAME.to_string(), json!(canonical_name));
    labels.insert(
        names::CANONICAL_REVISION.to_string(),
        json!(canonical_revision),
    );
    let label_arg = labels
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(",");

    // Annotations.
    let annotations = object_mut(meta, "annotations");
    annotations.insert(names::REVISION.to_string(), json!(opts.revision));
    if let Some(first) = app_containers.first() {
        annotations
            .entry(names::DEFAULT_LOGS_CONTAINER)
            .or_insert_with(|| json!(first));
        annotations
            .entry(names::DEFAULT_CONTAINER)
            .or_insert_with(|| json!(first));
    }
    prometheus_annotations(annotations, &settings, warnings);
    let init_names = match settings.interception {
        Interception::Redirect => json!([INIT_CONTAINER]),
        Interception::None => Value::Null,
    };
    let volumes = match &opts.ca_address {
        Some(_) => json!([TOKEN_VOLUME, ROOT_VOLUME]),
        None => Value::Null,
    };
    // Istio's SidecarInjectionStatus, field for field.
    let status = json!({
        "initContainers": init_names,
        "containers": [PROXY_CONTAINER],
        "volumes": volumes,
        "imagePullSecrets": null,
        "revision": opts.revision,
    });
    annotations.insert(names::STATUS.to_string(), json!(status.to_string()));

    // Containers.
    let image = settings.image.clone().unwrap_or_else(|| opts.image.clone());
    let spec = object_mut(pod, "spec");
    if settings.interception == Interception::Redirect {
        let init = init_container(&settings, &image);
        match spec.get_mut("initContainers") {
            Some(Value::Array(list)) => list.push(init),
            _ => {
                spec.insert("initContainers".to_string(), json!([init]));
            }
        }
    }
    let mut proxy = proxy_container(&settings, &image, &opts.xds_address, &label_arg);
    if let Some(ca) = &opts.ca_address {
        with_certificate_service(&mut proxy, ca);
        let added = [
            // A token only the certificate service accepts (the API server refuses audience
            // istio-ca), rotated by the kubelet; Istio's lifetime.
            json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
                "audience": "istio-ca", "expirationSeconds": 43200, "path": TOKEN_FILE}}]}}),
            // The mesh root, which the control plane publishes in every namespace.
            json!({"name": ROOT_VOLUME, "configMap": {"name": crate::root_cert::CONFIGMAP}}),
        ];
        match spec.get_mut("volumes") {
            Some(Value::Array(list)) => list.extend(added),
            _ => {
                spec.insert("volumes".to_string(), json!(added));
            }
        }
    }
    match spec.get_mut("containers") {
        // Last, so `kubectl exec` and `logs` keep defaulting to the application; first when the
        // application must wait for the proxy (Istio's reorderPod).
        Some(Value::Array(list)) if settings.proxy.hold_application_until_proxy_starts => {
            list.insert(0, proxy);
        }
        Some(Value::Array(list)) => list.push(proxy),
        _ => {
            spec.insert("containers".to_string(), json!([proxy]));
        }
    }
    Ok(PodOutcome::Injected)
}

/// A pod's container, as far as injection cares.
struct Container {
    name: String,
}

/// The containers under `spec.<field>`, checked to be a list of mappings.
fn containers(
    spec: &Map<String, Value>,
    field: &str,
    required: bool,
) -> Result<Vec<Container>, PodProblem> {
    let path = format!("spec.{field}");
    match spec.get(field) {
        None | Some(Value::Null) if required => {
            Err(PodProblem::new(path, "a pod needs at least one container"))
        }
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, c)| match c {
                Value::Object(c) => Ok(Container {
                    name: c
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                }),
                _ => Err(PodProblem::new(format!("{path}[{i}]"), "must be a mapping")),
            })
            .collect(),
        Some(_) => Err(PodProblem::new(path, "must be a list of containers")),
    }
}

/// `metadata.<field>` checked to map strings to strings (Kubernetes' labels and annotations).
fn string_map(
    meta: Option<&Map<String, Value>>,
    field: &str,
) -> Result<Map<String, Value>, PodProblem> {
    match meta.and_then(|m| m.get(field)) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if !v.is_string() {
                    let hint = match v {
                        Value::Bool(_) | Value::Number(_) => {
                            format!(" (write it quoted: \"{v}\")")
                        }
                        _ => String::new(),
                    };
                    return Err(PodProblem::new(
                        format!("metadata.{field}.{k}"),
                        format!("must be a string{hint}"),
                    ));
                }
            }
            Ok(m.clone())
        }
        Some(_) => Err(PodProblem::new(
            format!("metadata.{field}"),
            "must be a mapping of strings",
        )),
    }
}

/// What a previous injection recorded in `sidecar.istio.io/status` (`None` when absent or not
/// JSON, as Istio reads it).
#[derive(Debug, Default)]
struct Status {
    init_containers: Vec<String>,
    containers: Vec<String>,
    volumes: Vec<String>,
}

fn injection_status(annotations: &Map<String, Value>) -> Option<Status> {
    let text = annotations.get(names::STATUS)?.as_str()?;
    let value: Value = serde_json::from_str(text).ok()?;
    let list = |field: &str| -> Vec<String> {
        value
            .get(field)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    Some(Status {
        init_containers: list("initContainers"),
        containers: list("containers"),
        volumes: list("volumes"),
    })
}

/// Removes what a previous injection added (Istio's `stripPod`).
fn strip(pod: &mut Map<String, Value>, previous: &Status) {
    let spec = object_mut(pod, "spec");
    for (field, names) in [
        ("containers", &previous.containers),
        ("initContainers", &previous.init_containers),
        ("volumes", &previous.volumes),
    ] {
        if let Some(Value::Array(items)) = spec.get_mut(field) {
            items.retain(|item| {
                let name = item.get("name").and_then(Value::as_str).unwrap_or("");
                !names.iter().any(|n| n == name)
            });
            if items.is_empty() && field != "containers" {
                spec.shift_remove(field);
            }
        }
    }
    let annotations = object_mut(metadata_mut(pod), "annotations");
    // Ours, or the port of Istio's agent (15020), which only Istio's injector writes.
    let ours = find_prometheus(annotations, "prometheus_io_port")
        .is_some_and(|(_, v)| v == STATS_PORT.to_string() || v == ISTIO_AGENT_PORT);
    if ours {
        clear_prometheus(annotations);
    }
    annotations.shift_remove(names::STATUS);
}

/// Prometheus scrape annotations for the proxy's metrics (Istio: `applyPrometheusMerge`). Istio
/// points them at its agent, which merges the application's own metrics in; sluice serves
/// Istio's metrics itself on 15090 and merges nothing, so a pod that already asks for its own
/// metrics to be scraped keeps its annotations.
fn prometheus_annotations(
    annotations: &mut Map<String, Value>,
    settings: &Settings,
    warnings: &mut Vec<PodProblem>,
) {
    if !settings.merge_metrics {
        return;
    }
    if let Some((_, scrape)) = find_prometheus(annotations, "prometheus_io_scrape") {
        if settings::parse_go_bool(&scrape) == Some(false) {
            return;
        }
    }
    if let Some((key, port)) = find_prometheus(annotations, "prometheus_io_port") {
        if port != STATS_PORT.to_string() {
            warnings.push(PodProblem::new(
                format!("metadata.annotations.{key}"),
                format!(
                    "the application's Prometheus annotations are kept: sluice does not merge \
                     application metrics into the proxy's; the proxy's metrics are on port \
                     {STATS_PORT} (http-envoy-prom) at /stats/prometheus"
                ),
            ));
            return;
        }
    }
    clear_prometheus(annotations);
    annotations.insert("prometheus.io/scrape".to_string(), json!("true"));
    annotations.insert(
        "prometheus.io/port".to_string(),
        json!(STATS_PORT.to_string()),
    );
    annotations.insert("prometheus.io/path".to_string(), json!("/stats/prometheus"));
}

/// Prometheus reads `prometheus.io/port`, `prometheus.io.port` and `prometheus-io/port` alike
/// (label names are sanitized): the first annotation whose sanitized name is `sanitized`.
fn find_prometheus(annotations: &Map<String, Value>, sanitized: &str) -> Option<(String, String)> {
    annotations.iter().find_map(|(k, v)| {
        (sanitize(k) == sanitized).then(|| (k.clone(), v.as_str().unwrap_or("").to_string()))
    })
}

fn clear_prometheus(annotations: &mut Map<String, Value>) {
    annotations.retain(|k, _| {
        !matches!(
            sanitize(k).as_str(),
            "prometheus_io_scrape"
                | "prometheus_io_port"
                | "prometheus_io_path"
                | "prometheus_istio_io_scrape_targets"
        )
    });
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `pod.metadata`, created (before `spec`) when missing.
fn metadata_mut(pod: &mut Map<String, Value>) -> &mut Map<String, Value> {
    if !matches!(pod.get("metadata"), Some(Value::Object(_))) {
        pod.shift_remove("metadata");
        let at = pod.keys().position(|k| k == "spec").unwrap_or(pod.len());
        pod.shift_insert(at, "metadata".to_string(), json!({}));
    }
    object_mut(pod, "metadata")
}

/// `map.<key>` as a mapping, created (or replacing a null) when missing. Shapes were checked
/// before any change, so nothing else is replaced.
fn object_mut<'m>(map: &'m mut Map<String, Value>, key: &str) -> &'m mut Map<String, Value> {
    let slot = map.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made a mapping"),
    }
}

/// Istio's default proxy resources (`values.global.proxy.resources`), unless the pod's
/// annotations say otherwise.
fn resources(settings: &Settings) -> Value {
    if settings.requests.is_empty() && settings.limits.is_empty() {
        return json!({
            "limits": {"cpu": "2", "memory": "1Gi"},
            "requests": {"cpu": "100m", "memory": "128Mi"},
        });
    }
    let mut out = Map::new();
    if !settings.limits.is_empty() {
        out.insert("limits".to_string(), Value::Object(settings.limits.clone()));
    }
    if !settings.requests.is_empty() {
        out.insert(
            "requests".to_string(),
            Value::Object(settings.requests.clone()),
        );
    }
    Value::Object(out)
}

/// `istio-init`: `sluice init` with istio-iptables' flags, as Istio's template passes them.
fn init_container(settings: &Settings, image: &str) -> Value {
    let mut exclude_inbound = format!("{STATS_PORT},{STATUS_PORT}");
    if !settings.exclude_inbound_ports.is_empty() {
        exclude_inbound.push(',');
        exclude_inbound.push_str(&settings.exclude_inbound_ports);
    }
    let mut args: Vec<String> = [
        "init",
        "-p",
        &OUTBOUND_PORT.to_string(),
        "-z",
        &INBOUND_PORT.to_string(),
        "-u",
        &PROXY_UID.to_string(),
        "-m",
        "REDIRECT",
        "-i",
        &settings.include_outbound_ip_ranges,
        "-x",
        &settings.exclude_outbound_ip_ranges,
        "-b",
        &settings.include_inbound_ports,
        "-d",
        &exclude_inbound,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, value) in [
        ("-q", &settings.include_outbound_ports),
        ("-o", &settings.exclude_outbound_ports),
        ("-k", &settings.reroute_interfaces),
        ("-c", &settings.exclude_interfaces),
    ] {
        if let Some(v) = value {
            args.push(flag.to_string());
            args.push(v.clone());
        }
    }
    json!({
        "name": INIT_CONTAINER,
        "image": image,
        "args": args,
        "resources": resources(settings),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": false,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0,
        },
    })
}

/// Points the proxy at the certificate service `ca` (its 15012, also its xDS port then) with
/// the token and root volumes mounted.
fn with_certificate_service(proxy: &mut Value, ca: &str) {
    if let Some(Value::Array(args)) = proxy.get_mut("args") {
        if let Some(i) = args.iter().position(|a| a == "--xds") {
            args[i + 1] = json!(ca);
        }
        args.extend(
            [
                "--mesh-ca",
                ROOT_DIR,
                "--ca-address",
                ca,
                "--ca-token",
                &format!("{TOKEN_DIR}/{TOKEN_FILE}"),
            ]
            .map(|a| json!(a)),
        );
    }
    if let Value::Object(c) = proxy {
        c.insert(
            "volumeMounts".into(),
            json!([
                {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
                {"name": ROOT_VOLUME, "mountPath": ROOT_DIR, "readOnly": true},
            ]),
        );
    }
}

/// `istio-proxy`: `sluice sidecar` fed by the control plane, as uid/gid 1337.
fn proxy_container(settings: &Settings, image: &str, xds: &str, labels: &str) -> Value {
    let mut args: Vec<String> = vec![
        "sidecar".into(),
        "--xds".into(),
        xds.into(),
        // Istio's node id, so proxy-status and the control plane's logs name the pod.
        "--xds-node-id".into(),
        "sidecar~$(INSTANCE_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc.cluster.local"
            .into(),
        "--namespace".into(),
        "$(POD_NAMESPACE)".into(),
        "--service-account".into(),
        "$(SERVICE_ACCOUNT)".into(),
    ];
    if !labels.is_empty() {
        args.push("--labels".into());
        args.push(labels.into());
    }
    if let Some(n) = settings.proxy.concurrency {
        args.push("--concurrency".into());
        args.push(n.to_string());
    }
    if let Some(d) = &settings.proxy.termination_drain_duration {
        args.push("--termination-drain-duration".into());
        args.push(d.clone());
    }
    if let Some(level) = settings.log_level {
        args.push("--log-level".into());
        args.push(level.into());
    }
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
        json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
        json!({"name": "INSTANCE_IP", "valueFrom": field("status.podIP")}),
        json!({"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")}),
    ];
    for (name, value) in &settings.proxy.proxy_metadata {
        env.push(json!({"name": name, "value": value}));
    }
    let mut c = Map::new();
    c.insert("name".into(), json!(PROXY_CONTAINER));
    c.insert("image".into(), json!(image));
    c.insert("args".into(), json!(args));
    c.insert(
        "ports".into(),
        json!([{"containerPort": STATS_PORT, "protocol": "TCP", "name": "http-envoy-prom"}]),
    );
    c.insert("env".into(), Value::Array(env));
    if settings.proxy.hold_application_until_proxy_starts {
        // The kubelet starts the next container only when this hook returns: the application
        // starts once the proxy is ready (Istio runs `pilot-agent wait` here).
        c.insert(
            "lifecycle".into(),
            json!({"postStart": {"exec": {"command": [SLUICE_PATH, "wait"]}}}),
        );
    }
    if let Some(r) = settings.readiness {
        let probe = json!({"path": "/healthz/ready", "port": STATUS_PORT});
        c.insert(
            "startupProbe".into(),
            json!({
                "httpGet": probe,
                "initialDelaySeconds": 0,
                "periodSeconds": 1,
                "timeoutSeconds": 3,
                "failureThreshold": 600,
            }),
        );
        c.insert(
            "readinessProbe".into(),
            json!({
                "httpGet": probe,
                "initialDelaySeconds": r.initial_delay_seconds,
                "periodSeconds": r.period_seconds,
                "timeoutSeconds": 3,
                "failureThreshold": r.failure_threshold,
            }),
        );
    }
    c.insert(
        "securityContext".into(),
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "runAsUser": PROXY_UID,
        }),
    );
    c.insert("resources".into(), resources(settings));
    Value::Object(c)
}
