//! `sluice inject`, one rule at a time: each annotation Istio's injector honours, the skip
//! rules, idempotence, the mesh config's defaultConfig, and bad input (file, line, resource and
//! field in every error).

use serde_json::{json, Value};
use sluice_kube::inject::{self, yaml, InjectOptions};

/// A Deployment `web` whose pod template has `labels` and `annotations` (YAML flow mappings).
fn deployment(labels: &str, annotations: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {labels}
      annotations: {annotations}
    spec:
      containers:
      - name: web
        image: registry.example/web:1
        ports:
        - containerPort: 8080
"
    )
}

struct Run {
    template: Value,
    text: String,
    warnings: Vec<String>,
    injected: usize,
}

fn run_with(text: &str, opts: &InjectOptions) -> Run {
    let out = inject::inject_manifest("web.yaml", text, opts).unwrap_or_else(|e| panic!("{e}"));
    let docs = yaml::parse_pieces(&out.text).expect("output parses");
    let doc = docs[0].documents[0].value.clone();
    let template = match doc["kind"].as_str() {
        Some("Pod") => doc.clone(),
        _ => doc["spec"]["template"].clone(),
    };
    Run {
        template,
        text: out.text,
        warnings: out.warnings.iter().map(ToString::to_string).collect(),
        injected: out.injected,
    }
}

fn run(annotations: &str) -> Run {
    run_with(
        &deployment("{app: web}", annotations),
        &InjectOptions::default(),
    )
}

fn container<'a>(template: &'a Value, field: &str, name: &str) -> Option<&'a Value> {
    template["spec"][field]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn init_args(r: &Run) -> Vec<String> {
    args(container(&r.template, "initContainers", "istio-init").expect("istio-init"))
}

fn proxy(r: &Run) -> &Value {
    container(&r.template, "containers", "istio-proxy").expect("istio-proxy")
}

fn args(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

/// The value after `flag` in `args`.
fn flag(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn error_of(text: &str) -> String {
    inject::inject_manifest("web.yaml", text, &InjectOptions::default())
        .map(|o| o.text)
        .expect_err("should be refused")
        .to_string()
}

#[test]
fn defaults_follow_istios_template() {
    let r = run("{}");
    assert_eq!(r.injected, 1);
    let init = init_args(&r);
    assert_eq!(
        init,
        [
            "init",
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021"
        ]
    );
    let init_c = container(&r.template, "initContainers", "istio-init").unwrap();
    assert_eq!(init_c["securityContext"]["runAsUser"], 0);
    assert_eq!(init_c["securityContext"]["runAsNonRoot"], false);
    assert_eq!(
        init_c["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    let p = proxy(&r);
    let a = args(p);
    assert_eq!(a[0], "sidecar");
    assert_eq!(
        flag(&a, "--xds").as_deref(),
        Some(inject::DEFAULT_XDS_ADDRESS)
    );
    assert_eq!(flag(&a, "--namespace").as_deref(), Some("$(POD_NAMESPACE)"));
    assert_eq!(
        flag(&a, "--labels").as_deref(),
        Some("app=web,security.istio.io/tlsMode=istio,service.istio.io/canonical-name=web,service.istio.io/canonical-revision=latest")
    );
    assert_eq!(p["securityContext"]["runAsUser"], 1337);
    assert_eq!(p["securityContext"]["runAsGroup"], 1337);
    assert_eq!(
        p["readinessProbe"]["httpGet"],
        json!({"path": "/healthz/ready", "port": 15021})
    );
    assert_eq!(p["readinessProbe"]["periodSeconds"], 15);
    assert_eq!(
        p["ports"][0],
        json!({"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"})
    );
    let env: Vec<&str> = p["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        env,
        [
            "POD_NAME",
            "POD_NAMESPACE",
            "INSTANCE_IP",
            "SERVICE_ACCOUNT"
        ]
    );
    // The proxy comes last: `kubectl exec` and `logs` keep defaulting to the application.
    let names: Vec<&str> = r.template["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "istio-proxy"]);
    let a = &r.template["metadata"]["annotations"];
    assert_eq!(a["prometheus.io/scrape"], "true");
    assert_eq!(a["prometheus.io/port"], "15090");
    assert_eq!(a["prometheus.io/path"], "/stats/prometheus");
    assert_eq!(a["kubectl.kubernetes.io/default-container"], "web");
    assert_eq!(a["istio.io/rev"], "default");
    let status: Value =
        serde_json::from_str(a["sidecar.istio.io/status"].as_str().unwrap()).unwrap();
    assert_eq!(
        status,
        json!({"initContainers": ["istio-init"], "containers": ["istio-proxy"], "volumes": null, "imagePullSecrets": null, "revision": "default"})
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn traffic_annotations_become_sluice_init_flags() {
    let r = run(r#"{
        traffic.sidecar.istio.io/includeOutboundIPRanges: "10.0.0.0/8,fd00::/8",
        traffic.sidecar.istio.io/excludeOutboundIPRanges: "10.1.0.0/16",
        traffic.sidecar.istio.io/includeInboundPorts: "8080, 9090",
        traffic.sidecar.istio.io/excludeInboundPorts: "9999",
        traffic.sidecar.istio.io/includeOutboundPorts: "80",
        traffic.sidecar.istio.io/excludeOutboundPorts: "5432,6379",
        traffic.sidecar.istio.io/excludeInterfaces: "eth1",
        traffic.sidecar.istio.io/kubevirtInterfaces: "net1"}"#);
    let a = init_args(&r);
    assert_eq!(flag(&a, "-i").as_deref(), Some("10.0.0.0/8,fd00::/8"));
    assert_eq!(flag(&a, "-x").as_deref(), Some("10.1.0.0/16"));
    assert_eq!(flag(&a, "-b").as_deref(), Some("8080, 9090"));
    assert_eq!(flag(&a, "-d").as_deref(), Some("15090,15021,9999"));
    assert_eq!(flag(&a, "-q").as_deref(), Some("80"));
    assert_eq!(flag(&a, "-o").as_deref(), Some("5432,6379"));
    assert_eq!(flag(&a, "-c").as_deref(), Some("eth1"));
    assert_eq!(flag(&a, "-k").as_deref(), Some("net1"));
}

#[test]
fn an_empty_include_range_turns_outbound_capture_off() {
    let r = run(r#"{traffic.sidecar.istio.io/includeOutboundIPRanges: ""}"#);
    assert_eq!(flag(&init_args(&r), "-i").as_deref(), Some(""));
}

#[test]
fn interception_mode_none_means_no_init_container() {
    let r = run(r#"{sidecar.istio.io/interceptionMode: NONE}"#);
    assert!(container(&r.template, "initContainers", "istio-init").is_none());
    assert!(r.template["spec"].get("initContainers").is_none());
    let status = r.template["metadata"]["annotations"]["sidecar.istio.io/status"]
        .as_str()
        .unwrap();
    assert!(status.contains(r#""initContainers":null"#), "{status}");
    let r = run(r#"{sidecar.istio.io/interceptionMode: TPROXY}"#);
    assert_eq!(flag(&init_args(&r), "-m").as_deref(), Some("REDIRECT"));
    assert!(
        r.warnings[0].contains(
            "sidecar.istio.io/interceptionMode: warning: interception mode TPROXY is not supported"
        ),
        "{:?}",
        r.warnings
    );
}

#[test]
fn proxy_image_and_resources() {
    let r = run(r#"{sidecar.istio.io/proxyImage: "mirror.example/sluice:9",
            sidecar.istio.io/proxyCPU: 50m, sidecar.istio.io/proxyMemory: 64Mi,
            sidecar.istio.io/proxyCPULimit: "1", sidecar.istio.io/proxyMemoryLimit: 512Mi}"#);
    assert_eq!(proxy(&r)["image"], "mirror.example/sluice:9");
    let init = container(&r.template, "initContainers", "istio-init").unwrap();
    assert_eq!(init["image"], "mirror.example/sluice:9");
    let want = json!({"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "50m", "memory": "64Mi"}});
    assert_eq!(proxy(&r)["resources"], want);
    assert_eq!(init["resources"], want);
    let r = run(r#"{sidecar.istio.io/proxyImage: "distroless"}"#);
    assert_eq!(proxy(&r)["image"], inject::DEFAULT_IMAGE);
    assert!(r.warnings[0].contains("is not an image reference"));
}

#[test]
fn probes_follow_the_status_annotations() {
    let r = run(
        r#"{readiness.status.sidecar.istio.io/initialDelaySeconds: "2",
            readiness.status.sidecar.istio.io/periodSeconds: "5",
            readiness.status.sidecar.istio.io/failureThreshold: "9"}"#,
    );
    let probe = &proxy(&r)["readinessProbe"];
    assert_eq!(
        (
            &probe["initialDelaySeconds"],
            &probe["periodSeconds"],
            &probe["failureThreshold"]
        ),
        (&json!(2), &json!(5), &json!(9))
    );
    let r = run(r#"{status.sidecar.istio.io/port: "0"}"#);
    assert!(proxy(&r).get("readinessProbe").is_none());
    assert!(proxy(&r).get("startupProbe").is_none());
}

#[test]
fn log_level_maps_envoys_names() {
    let r = run(r#"{sidecar.istio.io/logLevel: warning}"#);
    assert_eq!(
        flag(&args(proxy(&r)), "--log-level").as_deref(),
        Some("warn")
    );
    let r = run(r#"{sidecar.istio.io/logLevel: loud}"#);
    assert_eq!(flag(&args(proxy(&r)), "--log-level"), None);
    assert!(
        r.warnings[0].contains("log level \"loud\""),
        "{:?}",
        r.warnings
    );
}

#[test]
fn prometheus_annotations() {
    let r = run(r#"{prometheus.istio.io/merge-metrics: "false"}"#);
    assert!(r.template["metadata"]["annotations"]
        .get("prometheus.io/port")
        .is_none());
    let r = run(r#"{prometheus.io/scrape: "false"}"#);
    assert_eq!(
        r.template["metadata"]["annotations"]["prometheus.io/scrape"],
        "false"
    );
    assert!(r.template["metadata"]["annotations"]
        .get("prometheus.io/port")
        .is_none());
    // The application's own metrics endpoint is kept (sluice merges nothing), with a warning.
    let r = run(r#"{prometheus.io/port: "9100", prometheus.io/path: /metrics}"#);
    assert_eq!(
        r.template["metadata"]["annotations"]["prometheus.io/port"],
        "9100"
    );
    assert_eq!(
        r.template["metadata"]["annotations"]["prometheus.io/path"],
        "/metrics"
    );
    assert!(
        r.warnings[0].contains(
            "prometheus.io/port: warning: the application's Prometheus annotations are kept"
        ),
        "{:?}",
        r.warnings
    );
    // Another spelling of the same annotation is replaced, not duplicated.
    let r = run(r#"{prometheus.io.path: /x}"#);
    let a = r.template["metadata"]["annotations"].as_object().unwrap();
    assert!(!a.contains_key("prometheus.io.path"));
    assert_eq!(a["prometheus.io/path"], "/stats/prometheus");
}

#[test]
fn proxy_config_annotation() {
    let r = run(
        r#"{proxy.istio.io/config: "holdApplicationUntilProxyStarts: true\nconcurrency: 3\nterminationDrainDuration: 45s\nproxyMetadata: {SLUICE_LOG: debug}\ntracing: {sampling: 100}\nnoSuchField: 1\n"}"#,
    );
    let names: Vec<&str> = r.template["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["istio-proxy", "web"],
        "held applications start after the proxy"
    );
    let p = proxy(&r);
    assert_eq!(
        p["lifecycle"]["postStart"]["exec"]["command"],
        json!([inject::SLUICE_PATH, "wait"])
    );
    let a = args(p);
    assert_eq!(flag(&a, "--concurrency").as_deref(), Some("3"));
    assert_eq!(
        flag(&a, "--termination-drain-duration").as_deref(),
        Some("45s")
    );
    assert!(p["env"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "SLUICE_LOG", "value": "debug"})));
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    assert!(r.warnings[0].ends_with("proxy.istio.io/config: warning: ProxyConfig field tracing is not supported by sluice; ignored"), "{:?}", r.warnings);
    assert!(r.warnings[1].ends_with("warning: unknown ProxyConfig field noSuchField; ignored"));
    // JSON works too, as Istio reads it.
    let r = run(r#"{proxy.istio.io/config: '{"concurrency": 1}'}"#);
    assert_eq!(
        flag(&args(proxy(&r)), "--concurrency").as_deref(),
        Some("1")
    );
}

#[test]
fn mesh_default_config_is_under_the_annotation() {
    let mesh = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    defaultConfig:\n      concurrency: 4\n      holdApplicationUntilProxyStarts: true\n      discoveryAddress: istiod.istio-system.svc:15012\n";
    let (default_config, warnings) =
        inject::load_mesh_config(std::path::Path::new("mesh.yaml"), mesh).expect("mesh config");
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].to_string().starts_with("mesh.yaml:6: data.mesh.defaultConfig: warning: ProxyConfig field discoveryAddress is not applied"),
        "{}",
        warnings[0]
    );
    let opts = InjectOptions {
        default_proxy_config: default_config,
        ..InjectOptions::default()
    };
    let r = run_with(
        &deployment("{app: web}", r#"{proxy.istio.io/config: "concurrency: 1"}"#),
        &opts,
    );
    assert_eq!(
        flag(&args(proxy(&r)), "--concurrency").as_deref(),
        Some("1")
    );
    assert!(proxy(&r).get("lifecycle").is_some());
    // A bare MeshConfig works as well as the ConfigMap.
    let (c, _) = inject::load_mesh_config(
        std::path::Path::new("mesh.yaml"),
        "defaultConfig:\n  concurrency: 8\n",
    )
    .unwrap();
    assert_eq!(c["concurrency"], 8);
    let err = inject::load_mesh_config(
        std::path::Path::new("mesh.yaml"),
        "defaultConfig:\n  concurrency: lots\n",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "mesh.yaml:1: defaultConfig: concurrency: must be a non-negative integer"
    );
}

#[test]
fn canonical_labels_as_istio_sets_them() {
    let r = run_with(
        &deployment(
            "{app.kubernetes.io/name: shop-web, app: other, app.kubernetes.io/version: 1.2.3, version: v9}",
            "{}",
        ),
        &InjectOptions::default(),
    );
    let l = &r.template["metadata"]["labels"];
    assert_eq!(l["service.istio.io/canonical-name"], "shop-web");
    assert_eq!(l["service.istio.io/canonical-revision"], "1.2.3");
    // Without an app label: the workload's name; existing canonical labels and tlsMode win.
    let r = run_with(
        &deployment(
            "{security.istio.io/tlsMode: disabled, service.istio.io/canonical-revision: r7}",
            "{}",
        ),
        &InjectOptions::default(),
    );
    let l = &r.template["metadata"]["labels"];
    assert_eq!(l["service.istio.io/canonical-name"], "web");
    assert_eq!(l["service.istio.io/canonical-revision"], "r7");
    assert_eq!(l["security.istio.io/tlsMode"], "disabled");
    // Truncated to 63 characters, then trimmed of -_. as Istio's template does.
    let long = format!("{}-x", "a".repeat(62));
    let r = run_with(
        &deployment(&format!("{{app: {long}}}"), "{}"),
        &InjectOptions::default(),
    );
    assert_eq!(
        r.template["metadata"]["labels"]["service.istio.io/canonical-name"],
        "a".repeat(62)
    );
}

#[test]
fn default_container_annotations_are_not_overwritten() {
    let r = run(r#"{kubectl.kubernetes.io/default-container: sidekick}"#);
    let a = &r.template["metadata"]["annotations"];
    assert_eq!(a["kubectl.kubernetes.io/default-container"], "sidekick");
    assert_eq!(a["kubectl.kubernetes.io/default-logs-container"], "web");
}

#[test]
fn skip_rules() {
    // The label wins over the annotation.
    let r = run_with(
        &deployment(
            "{app: web, sidecar.istio.io/inject: \"false\"}",
            r#"{sidecar.istio.io/inject: "true"}"#,
        ),
        &InjectOptions::default(),
    );
    assert_eq!(r.injected, 0);
    assert!(r.warnings[0].contains("not injected: sidecar injection is disabled"));
    let r = run(r#"{sidecar.istio.io/inject: "false"}"#);
    assert_eq!(r.injected, 0);
    let r = run_with(
        &deployment(
            "{app: web, sidecar.istio.io/inject: \"true\"}",
            r#"{sidecar.istio.io/inject: "false"}"#,
        ),
        &InjectOptions::default(),
    );
    assert_eq!(r.injected, 1);
    // Anything but true/false: a warning, and the default (inject).
    let r = run(r#"{sidecar.istio.io/inject: "yes"}"#);
    assert_eq!(r.injected, 1);
    assert!(r.warnings[0].contains("only \"true\" and \"false\" are accepted"));

    let host = deployment("{app: web}", "{}").replace(
        "    spec:\n      containers:",
        "    spec:\n      hostNetwork: true\n      containers:",
    );
    let r = run_with(&host, &InjectOptions::default());
    assert_eq!(r.injected, 0);
    assert_eq!(r.text, host, "left alone, byte for byte");
    assert!(r.warnings[0].starts_with("web.yaml:9: Deployment shop/web: spec.template: warning: not injected: host networking is enabled"), "{:?}", r.warnings);

    let system =
        deployment("{app: web}", "{}").replace("namespace: shop", "namespace: kube-system");
    let r = run_with(&system, &InjectOptions::default());
    assert_eq!(r.injected, 0);
    assert!(r.warnings[0].contains("namespace kube-system is a Kubernetes system namespace"));

    // A proxy container no injector recorded (written by hand): left alone.
    let by_hand = deployment("{app: web}", "{}").replace(
        "      - name: web\n",
        "      - name: istio-proxy\n        image: somebody/else\n      - name: web\n",
    );
    let r = run_with(&by_hand, &InjectOptions::default());
    assert_eq!(r.injected, 0);
    assert!(
        r.warnings[0].contains("already has a istio-proxy container"),
        "{:?}",
        r.warnings
    );
}

#[test]
fn re_injection_replaces_what_the_previous_injection_added() {
    let once = run(r#"{traffic.sidecar.istio.io/excludeOutboundPorts: "25"}"#);
    let twice = run_with(&once.text, &InjectOptions::default());
    assert_eq!(once.text, twice.text);
    // A newer image replaces the old containers instead of adding more.
    let newer = InjectOptions {
        image: "ghcr.io/sluice-mesh/sluice:9.9.9".to_string(),
        ..InjectOptions::default()
    };
    let r = run_with(&once.text, &newer);
    let containers = r.template["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(proxy(&r)["image"], "ghcr.io/sluice-mesh/sluice:9.9.9");
    // A pod injected by Istio's own injector: its containers and volumes are replaced by
    // sluice's (its status annotation lists them).
    let istio = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata:
      labels: {app: web}
      annotations:
        prometheus.io/port: "15020"
        sidecar.istio.io/status: '{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy","istio-data"],"imagePullSecrets":null,"revision":"default"}'
    spec:
      initContainers:
      - name: istio-init
        image: docker.io/istio/proxyv2:1.28.0
      containers:
      - name: web
        image: registry.example/web:1
      - name: istio-proxy
        image: docker.io/istio/proxyv2:1.28.0
      volumes:
      - name: istio-envoy
        emptyDir: {}
      - name: istio-data
        emptyDir: {}
      - name: app-data
        emptyDir: {}
"#;
    let r = run_with(istio, &InjectOptions::default());
    assert_eq!(r.injected, 1);
    let volumes = r.template["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes, &vec![json!({"name": "app-data", "emptyDir": {}})]);
    assert_eq!(
        container(&r.template, "initContainers", "istio-init").unwrap()["image"],
        inject::DEFAULT_IMAGE
    );
    assert_eq!(proxy(&r)["image"], inject::DEFAULT_IMAGE);
    assert_eq!(
        r.template["metadata"]["annotations"]["prometheus.io/port"],
        "15090"
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

/// With the control plane's certificate service, a sidecar gets its identity there as Istio's
/// do: a projected token for audience istio-ca and the istio-ca-root-cert ConfigMap mounted,
/// config over mutual TLS from the same port; injecting again adds nothing twice.
#[test]
fn with_a_certificate_service_the_sidecar_mounts_its_token_and_the_mesh_root() {
    let opts = InjectOptions {
        ca_address: Some("sluice-control.istio-system.svc:15012".to_string()),
        ..InjectOptions::default()
    };
    let r = run_with(&deployment("{app: web}", "{}"), &opts);
    let a = args(proxy(&r));
    assert_eq!(
        flag(&a, "--xds").as_deref(),
        Some("sluice-control.istio-system.svc:15012")
    );
    assert_eq!(
        flag(&a, "--ca-address").as_deref(),
        Some("sluice-control.istio-system.svc:15012")
    );
    assert_eq!(
        flag(&a, "--ca-token").as_deref(),
        Some("/var/run/secrets/tokens/istio-token")
    );
    assert_eq!(
        flag(&a, "--mesh-ca").as_deref(),
        Some("/var/run/secrets/istio")
    );
    assert_eq!(
        flag(&a, "--service-account").as_deref(),
        Some("$(SERVICE_ACCOUNT)")
    );
    assert_eq!(
        proxy(&r)["volumeMounts"],
        json!([
            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio", "readOnly": true},
        ])
    );
    let volumes = r.template["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 2, "{volumes:?}");
    assert_eq!(
        volumes[0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "istio-ca"
    );
    assert_eq!(volumes[1]["configMap"]["name"], "istio-ca-root-cert");
    let status: Value = serde_json::from_str(
        r.template["metadata"]["annotations"]["sidecar.istio.io/status"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["volumes"], json!(["istio-token", "istiod-ca-cert"]));
    // Again: the same pod, not two of each volume.
    let twice = run_with(&r.text, &opts);
    assert_eq!(r.text, twice.text);
    // And back to plaintext: the volumes go with the previous injection.
    let plain = run_with(&r.text, &InjectOptions::default());
    assert!(
        plain.template["spec"].get("volumes").is_none(),
        "{}",
        plain.text
    );
    assert_eq!(flag(&args(proxy(&plain)), "--ca-address"), None);
}

#[test]
fn every_workload_kind_and_lists() {
    let text = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "@daily"
  jobTemplate:
    spec:
      template:
        spec:
          containers: [{name: job, image: registry.example/job}]
---
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: StatefulSet
  metadata: {name: db}
  spec:
    template:
      spec:
        containers: [{name: db, image: registry.example/db}]
- apiVersion: example.com/v1
  kind: Deployment
  metadata: {name: not-kubernetes}
  spec:
    template:
      spec:
        containers: [{name: x, image: x}]
"#;
    let out = inject::inject_manifest("kinds.yaml", text, &InjectOptions::default()).unwrap();
    assert_eq!(out.injected, 2);
    let docs: Vec<Value> = yaml::parse_pieces(&out.text)
        .unwrap()
        .into_iter()
        .flat_map(|p| p.documents.into_iter().map(|d| d.value))
        .collect();
    let cron = &docs[0]["spec"]["jobTemplate"]["spec"]["template"];
    assert!(container(cron, "containers", "istio-proxy").is_some());
    // The template had no metadata: it gets one, before its spec.
    let keys: Vec<&String> = cron.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["metadata", "spec"]);
    assert_eq!(
        cron["metadata"]["labels"]["service.istio.io/canonical-name"],
        "nightly"
    );
    let sts = &docs[1]["items"][0]["spec"]["template"];
    assert!(container(sts, "containers", "istio-proxy").is_some());
    let other = &docs[1]["items"][1]["spec"]["template"];
    assert!(container(other, "containers", "istio-proxy").is_none());
}

#[test]
fn bad_input_names_file_line_resource_and_field() {
    let cases: Vec<(String, &str)> = vec![
        (
            deployment("{app: web}", r#"{traffic.sidecar.istio.io/excludeInboundPorts: "80,http"}"#),
            "web.yaml:12: Deployment shop/web: spec.template.metadata.annotations.traffic.sidecar.istio.io/excludeInboundPorts: invalid value \"80,http\" for annotation traffic.sidecar.istio.io/excludeInboundPorts: \"http\" is not a port number (0-65535)",
        ),
        (
            deployment("{app: web}", "{sidecar.istio.io/inject: false}"),
            "web.yaml:12: Deployment shop/web: spec.template.metadata.annotations.sidecar.istio.io/inject: must be a string (write it quoted: \"false\")",
        ),
        (
            deployment("{app: web}", r#"{proxy.istio.io/config: "concurrency: [1]"}"#),
            "web.yaml:12: Deployment shop/web: spec.template.metadata.annotations.proxy.istio.io/config: invalid value \"concurrency: [1]\" for annotation proxy.istio.io/config: concurrency: must be a non-negative integer",
        ),
        (
            deployment("{app: web}", "{}").replace("      containers:\n      - name: web\n        image: registry.example/web:1\n        ports:\n        - containerPort: 8080\n", "      containers: web\n"),
            "web.yaml:14: Deployment shop/web: spec.template.spec.containers: must be a list of containers",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n".to_string(),
            "web.yaml:4: Deployment default/web: spec.template: a Deployment needs a pod template here",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n".to_string(),
            "web.yaml:4: Pod default/p: spec.containers: a pod needs at least one container",
        ),
        (
            "kind: ServiceAccount\n---\nkind: Pod\nmetadata:\n  name: [unclosed\n".to_string(),
            "web.yaml:6: invalid YAML",
        ),
    ];
    for (text, want) in cases {
        let got = error_of(&text);
        assert!(got.starts_with(want), "got:  {got}\nwant: {want}");
    }
}
