//! Sidecar injection and the admission webhooks, against peers we did not write:
//! - `sluice control --mesh-ca DIR` (a root from `sluice ca init`) serves HTTPS on 15017 with a
//!   certificate for `sluice-control.istio-system.svc`; curl (`--cacert` the root) posts real
//!   AdmissionReview v1 payloads to `/inject` and `/validate`. The injection patch is applied
//!   with Python's `jsonpatch` and the patched Pod checked against Kubernetes' own schemas
//!   (`kubernetes-validate --strict`); a bad VirtualService is refused with exactly what
//!   `sluice validate` prints for it, a good one allowed; garbage and oversized bodies get 400.
//! - The same with a certificate from files (`--webhook-cert/--webhook-key`, made by openssl).
//! - `sluice inject` (from a file, from stdin, into `-o FILE`) on the golden sample manifests:
//!   the output passes `kubernetes-validate --strict`, and PyYAML (YAML 1.1, as kubectl's
//!   decoder) reads every original field back with the same value and type.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use sluice_e2e::prereq::{repo_root, sluice_bin, venv_dir};
use sluice_e2e::{eventually, CurlResult, Pki, TestEnv};

const HOST: &str = "sluice-control.istio-system.svc";
const PORT: u16 = 15017;
const KUBERNETES: &str = "1.33.0";

/// The venv's Python, checked to have what these tests need.
fn python() -> PathBuf {
    let python = venv_dir().join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import jsonpatch, kubernetes_validate, yaml"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the Python venv at {} cannot import jsonpatch, kubernetes_validate and yaml: run \
         scripts/install-test-deps.sh (pip install -r scripts/requirements-test.txt)",
        venv_dir().display()
    );
    python
}

fn run_python(script: &str, args: &[&Path]) -> (bool, String) {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(sluice_bin())
        .args(args)
        .output()
        .expect("run sluice")
}

/// POSTs `body` (a file) to the webhook `path`, trusting `ca`.
fn post(env: &TestEnv, ca: &Path, path: &str, body: &Path, content_type: &str) -> CurlResult {
    sluice_e2e::curl::Curl::new(&env.pod, env.dir(), &format!("https://{HOST}:{PORT}{path}"))
        .cacert(ca)
        .resolve(HOST, PORT, Ipv4Addr::LOCALHOST)
        .header(&format!("Content-Type: {content_type}"))
        .arg("--data-binary")
        .arg(&format!("@{}", body.display()))
        .run()
}

fn write_json(env: &TestEnv, name: &str, value: &Value) -> PathBuf {
    let path = env.dir().join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path
}

/// An AdmissionReview v1 as the API server posts it.
fn review(kind: (&str, &str, &str), resource: &str, object: Value) -> Value {
    let (group, version, kind) = kind;
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "9a6f3c1e-2b7d-4e8a-a1c5-0f4d3b2e1a90",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "namespace": "bookinfo",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "0e3a1f5c-8d2b-4c7e-9a6f-1b2c3d4e5f60",
                "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// The Pod a ReplicaSet of Deployment `ratings-v1` creates, with the API server's defaults.
fn ratings_pod() -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": "ratings-v1-6f8b7c4d9-",
            "namespace": "bookinfo",
            "labels": {"app": "ratings", "version": "v1", "pod-template-hash": "6f8b7c4d9"},
            "annotations": {"traffic.sidecar.istio.io/excludeOutboundPorts": "27017"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "ratings-v1-6f8b7c4d9", "uid": "5b1c2d3e-4f50-4a1b-8c2d-3e4f5a6b7c8d",
                "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-p2x9z", "projected": {"defaultMode": 420,
                "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "containers": [{
                "name": "ratings",
                "image": "docker.io/istio/examples-bookinfo-ratings-v1:1.20.2",
                "ports": [{"containerPort": 9080, "protocol": "TCP"}],
                "resources": {},
                "volumeMounts": [{"name": "kube-api-access-p2x9z", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "bookinfo-ratings",
            "serviceAccount": "bookinfo-ratings",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        }
    })
}

/// Applies the answer's patch to the review's Pod with Python's jsonpatch, validates the result
/// against Kubernetes' schema, and returns it.
const APPLY_AND_VALIDATE: &str = r#"
import base64, json, sys, jsonpatch, kubernetes_validate
review = json.load(open(sys.argv[1]))
answer = json.load(open(sys.argv[2]))
response = answer["response"]
assert response["patchType"] == "JSONPatch", response
patch = json.loads(base64.b64decode(response["patch"]))
pod = jsonpatch.apply_patch(review["request"]["object"], patch)
kubernetes_validate.validate(pod, sys.argv[3], strict=True)
print(json.dumps(pod))
"#;

fn wait_for_webhooks(env: &TestEnv, ca: &Path, body: &Path) {
    eventually("the webhook port answers", Duration::from_secs(20), || {
        let r = post(env, ca, "/validate", body, "application/json");
        (r.status == 200).then_some(()).ok_or(format!("{r}"))
    });
}

/// Checks both webhooks against the control plane listening now, trusting `ca`.
fn check_webhooks(env: &TestEnv, ca: &Path) -> Value {
    let good_vs = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "ratings-route", "namespace": "bookinfo"},
        "spec": {"hosts": ["ratings"], "http": [{"timeout": "3s",
            "route": [{"destination": {"host": "ratings", "subset": "v1"}}]}]}
    });
    let good = write_json(
        env,
        "good-vs.json",
        &review(
            ("networking.istio.io", "v1", "VirtualService"),
            "virtualservices",
            good_vs.clone(),
        ),
    );
    wait_for_webhooks(env, ca, &good);

    // Injection.
    let pod_review = write_json(
        env,
        "pod-review.json",
        &review(("", "v1", "Pod"), "pods", ratings_pod()),
    );
    let r = post(env, ca, "/inject", &pod_review, "application/json");
    assert_eq!(r.status, 200, "{r}");
    let answer = r.json();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(
        answer["response"]["uid"],
        "9a6f3c1e-2b7d-4e8a-a1c5-0f4d3b2e1a90"
    );
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let answer_path = write_json(env, "pod-answer.json", &answer);
    let (ok, out) = run_python(
        APPLY_AND_VALIDATE,
        &[&pod_review, &answer_path, Path::new(KUBERNETES)],
    );
    assert!(ok, "the patched pod is not a valid Pod:\n{out}");
    let pod: Value = serde_json::from_str(out.trim()).expect("patched pod JSON");
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| c["name"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names("containers"), ["ratings", "istio-proxy"], "{pod}");
    assert_eq!(names("initContainers"), ["istio-init"], "{pod}");
    let init_args = &pod["spec"]["initContainers"][0]["args"];
    assert_eq!(init_args[0], "init");
    let args: Vec<&str> = init_args
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let o = args.iter().position(|a| *a == "-o").expect("-o");
    assert_eq!(args[o + 1], "27017");
    let proxy = &pod["spec"]["containers"][1];
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15021);
    let proxy_args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let xds = proxy_args
        .iter()
        .position(|a| *a == "--xds")
        .expect("--xds");
    assert_eq!(proxy_args[xds + 1], "sluice-control.istio-system.svc:15010");
    assert_eq!(
        pod["metadata"]["labels"]["service.istio.io/canonical-name"],
        "ratings"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        "15090"
    );

    // A pod that opts out: allowed, no patch.
    let mut opted_out = ratings_pod();
    opted_out["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("false");
    let body = write_json(
        env,
        "optout-review.json",
        &review(("", "v1", "Pod"), "pods", opted_out),
    );
    let r = post(env, ca, "/inject", &body, "application/json");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["response"]["allowed"], true);
    assert!(r.json()["response"].get("patch").is_none(), "{r}");

    // Validation: refused with the message `sluice validate` prints (without file:line).
    let mut bad_vs = good_vs.clone();
    bad_vs["spec"]["http"][0]["timeout"] = json!("3 seconds");
    let bad_yaml = env.dir().join("bad-vs.json");
    std::fs::write(&bad_yaml, serde_json::to_vec_pretty(&bad_vs).unwrap()).unwrap();
    let validated = sluice(&["validate", &bad_yaml.to_string_lossy()]);
    assert_eq!(validated.status.code(), Some(1));
    let printed = String::from_utf8_lossy(&validated.stdout)
        .trim()
        .to_string();
    let prefix = format!("{}:", bad_yaml.display());
    let expected = printed
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_once(": "))
        .map(|(_line, message)| message.to_string())
        .unwrap_or_else(|| panic!("unexpected `sluice validate` output: {printed}"));
    let body = write_json(
        env,
        "bad-vs-review.json",
        &review(
            ("networking.istio.io", "v1", "VirtualService"),
            "virtualservices",
            bad_vs,
        ),
    );
    let r = post(env, ca, "/validate", &body, "application/json");
    assert_eq!(r.status, 200, "{r}");
    let response = &r.json()["response"];
    assert_eq!(response["allowed"], false, "{r}");
    assert_eq!(response["status"]["message"], expected.as_str(), "{r}");
    assert!(expected.starts_with(
        "VirtualService bookinfo/ratings-route: spec.http[0].timeout: invalid duration"
    ));

    let r = post(env, ca, "/validate", &good, "application/json");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["response"]["allowed"], true, "{r}");
    // The API server speaks HTTP/2 or HTTP/1.1 to webhooks: both are served.
    let r = sluice_e2e::curl::Curl::new(
        &env.pod,
        env.dir(),
        &format!("https://{HOST}:{PORT}/inject"),
    )
    .cacert(ca)
    .resolve(HOST, PORT, Ipv4Addr::LOCALHOST)
    .arg("--http1.1")
    .header("Content-Type: application/json")
    .arg("--data-binary")
    .arg(&format!("@{}", pod_review.display()))
    .run();
    assert_eq!(r.status, 200, "{r}");
    assert!(r.status_line.starts_with("HTTP/1.1"), "{r}");
    assert_eq!(r.json()["response"]["patchType"], "JSONPatch", "{r}");

    // Hostile bodies: 400 with a reason, and the server keeps serving.
    let garbage = env.dir().join("garbage.bin");
    std::fs::write(&garbage, b"\x00\xffnot json {{{").unwrap();
    for path in ["/inject", "/validate"] {
        let r = post(env, ca, path, &garbage, "application/json");
        assert_eq!(r.status, 400, "{r}");
        assert!(r.body.contains("not JSON"), "{r}");
    }
    let not_review = write_json(
        env,
        "not-review.json",
        &json!({"apiVersion": "v1", "kind": "Pod"}),
    );
    let r = post(env, ca, "/inject", &not_review, "application/json");
    assert_eq!(r.status, 400, "{r}");
    assert!(r.body.contains("not an AdmissionReview"), "{r}");
    let r = post(env, ca, "/inject", &pod_review, "text/plain");
    assert_eq!(r.status, 415, "{r}");
    let huge = env.dir().join("huge.json");
    let mut text = String::from("{\"pad\":\"");
    text.push_str(&"x".repeat(7 * 1024 * 1024));
    text.push_str("\"}");
    std::fs::write(&huge, text).unwrap();
    let r = post(env, ca, "/validate", &huge, "application/json");
    assert_eq!(r.status, 400, "{r}");
    assert!(r.body.contains("too large"), "{r}");
    let r = post(env, ca, "/validate", &good, "application/json");
    assert_eq!(r.status, 200, "still serving after hostile bodies: {r}");
    pod
}

/// Kills the process when dropped (the test may panic while it runs).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the injected istio-proxy container's command line in the pod namespace (the downward
/// API's variables filled in as the kubelet would, the control plane on loopback), and runs the
/// postStart hook of holdApplicationUntilProxyStarts (`sluice wait`), which must return once the
/// sidecar is ready with the control plane's config.
fn run_injected_sidecar(env: &TestEnv, pod: &Value) {
    let proxy = pod["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "istio-proxy"))
        .expect("istio-proxy");
    let vars = [
        ("$(POD_NAME)", "ratings-v1-6f8b7c4d9-x2x7q"),
        ("$(POD_NAMESPACE)", "bookinfo"),
        ("$(INSTANCE_IP)", "127.0.0.1"),
        ("$(SERVICE_ACCOUNT)", "bookinfo-ratings"),
    ];
    let mut args: Vec<String> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let mut a = a.as_str().unwrap().to_string();
            for (var, value) in vars {
                a = a.replace(var, value);
            }
            a
        })
        .collect();
    let xds = args.iter().position(|a| a == "--xds").unwrap();
    args[xds + 1] = "127.0.0.1:15010".to_string();
    let log = std::fs::File::create(env.dir().join("injected-sidecar.log")).unwrap();
    let child = env
        .pod
        .cmd(sluice_bin())
        .args(&args)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the injected sidecar");
    let _sidecar = KillOnDrop(child);
    let wait = env
        .pod
        .cmd(sluice_bin())
        .args(["wait", "--timeout", "30s"])
        .output()
        .expect("sluice wait");
    assert!(
        wait.status.success(),
        "sluice wait: {}\nsidecar log:\n{}",
        String::from_utf8_lossy(&wait.stderr),
        std::fs::read_to_string(env.dir().join("injected-sidecar.log")).unwrap_or_default()
    );
}

#[test]
fn sluice_control_serves_injection_and_validation_webhooks_over_https() {
    let mut env = TestEnv::new("kube_webhook");
    let ca_dir = env.dir().join("mesh-ca");
    let out = sluice(&["ca", "init", "--dir", &ca_dir.to_string_lossy()]);
    assert!(
        out.status.success(),
        "sluice ca init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.start_control_with(
        "control",
        15010,
        &[
            "--mesh-ca",
            &ca_dir.to_string_lossy(),
            "--webhook-port",
            &PORT.to_string(),
        ],
    );
    let pod = check_webhooks(&env, &ca_dir.join("root-cert.pem"));
    run_injected_sidecar(&env, &pod);

    // The same with a certificate from files (as cert-manager would provide).
    env.stop_server("control");
    let pki = Pki::generate(env.dir(), "webhook", &[HOST]);
    env.start_control_with(
        "control-files",
        15010,
        &[
            "--webhook-cert",
            &pki.server_cert.to_string_lossy(),
            "--webhook-key",
            &pki.server_key.to_string_lossy(),
        ],
    );
    check_webhooks(&env, &pki.ca_cert);
}

/// Every field of the input is in the output with the same value and type (PyYAML, YAML 1.1,
/// reads both); lists may have grown (injected containers).
const SUBSET: &str = r#"
import sys, yaml
def subset(a, b, path):
    if isinstance(a, dict):
        assert isinstance(b, dict), path
        for k, v in a.items():
            assert k in b, f"{path}.{k} lost"
            subset(v, b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(b) >= len(a), path
        for i, v in enumerate(a):
            assert any(is_subset(v, w) for w in b), f"{path}[{i}] lost: {v!r}"
    else:
        assert type(a) == type(b) and a == b, f"{path}: {a!r} became {b!r}"
def is_subset(a, b):
    try:
        subset(a, b, "")
        return True
    except AssertionError:
        return False
before = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]
after = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d is not None]
assert len(before) == len(after), (len(before), len(after))
for i, (a, b) in enumerate(zip(before, after)):
    subset(a, b, f"document {i}")
print("ok", len(after))
"#;

#[test]
fn sluice_inject_output_is_valid_kubernetes_and_keeps_every_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let golden = repo_root().join("crates/kube/tests/golden");
    let mut count = 0;
    for name in ["httpbin.yaml", "sleep.yaml", "bookinfo.yaml", "kinds.yaml"] {
        let input = golden.join(name);
        let output = dir.path().join(name);
        let out = sluice(&[
            "inject",
            "-f",
            &input.to_string_lossy(),
            "-o",
            &output.to_string_lossy(),
        ]);
        assert!(
            out.status.success(),
            "sluice inject -f {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // stdin to stdout gives the same text.
        let mut child = Command::new(sluice_bin())
            .args(["inject", "-f", "-"])
            .stdin(Stdio::from(std::fs::File::open(&input).unwrap()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice inject -f -");
        let mut piped = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut piped).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            piped,
            std::fs::read_to_string(&output).unwrap(),
            "{name}: -f - differs"
        );

        let validate = Command::new(venv_dir().join("bin/kubernetes-validate"))
            .args(["--strict", "--quiet", "--no-warn", "-k", KUBERNETES])
            .arg(&output)
            .output()
            .expect("kubernetes-validate (scripts/install-test-deps.sh installs it)");
        assert!(
            validate.status.success(),
            "{name}: kubernetes-validate refused the injected manifest:\n{}{}",
            String::from_utf8_lossy(&validate.stdout),
            String::from_utf8_lossy(&validate.stderr)
        );
        let (ok, out) = run_python(SUBSET, &[&input, &output]);
        assert!(ok, "{name}: {out}");
        count += 1;
    }
    assert_eq!(count, 4);

    // With the certificate service (the token and root volumes): still valid Kubernetes.
    let input = golden.join("bookinfo.yaml");
    let output = dir.path().join("bookinfo-ca.yaml");
    let out = sluice(&[
        "inject",
        "-f",
        &input.to_string_lossy(),
        "--ca-address",
        "sluice-control.istio-system.svc:15012",
        "-o",
        &output.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&output).unwrap();
    assert!(
        text.contains("audience: istio-ca") && text.contains("istio-ca-root-cert"),
        "{text}"
    );
    let validate = Command::new(venv_dir().join("bin/kubernetes-validate"))
        .args(["--strict", "--quiet", "--no-warn", "-k", KUBERNETES])
        .arg(&output)
        .output()
        .expect("kubernetes-validate (scripts/install-test-deps.sh installs it)");
    assert!(
        validate.status.success(),
        "kubernetes-validate refused the injected manifest with --ca-address:\n{}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );

    // Bad input: the file, line, resource and field, exit 1.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata:\n      annotations:\n        traffic.sidecar.istio.io/includeInboundPorts: \"80,eighty\"\n    spec:\n      containers: [{name: web, image: web}]\n",
    )
    .unwrap();
    let out = sluice(&["inject", "-f", &bad.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:8: Deployment default/web: spec.template.metadata.annotations.traffic.sidecar.istio.io/includeInboundPorts: invalid value",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
