//! Golden tests of `sluice inject` over manifests shaped like Istio's samples (httpbin, sleep,
//! bookinfo) and one of every workload kind: `tests/golden/NAME.yaml` → the checked-in
//! `NAME.injected.yaml` (and the warnings, `NAME.warnings.txt`).
//!
//! `SLUICE_UPDATE_GOLDEN=1 cargo nextest run -p sluice-kube --test inject_golden` rewrites the
//! expected files; review the diff before committing it.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice_kube::inject::{self, yaml, InjectOptions};

/// A fixed image, so the golden files do not change with the crate's version.
const IMAGE: &str = "ghcr.io/sluice-mesh/sluice:1.0.0";

fn options() -> InjectOptions {
    InjectOptions {
        image: IMAGE.to_string(),
        ..InjectOptions::default()
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn inputs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".yaml") && !name.ends_with(".injected.yaml")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 4, "golden inputs missing: {files:?}");
    files
}

fn sibling(input: &Path, suffix: &str) -> PathBuf {
    let stem = input.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    input.with_file_name(format!("{stem}{suffix}"))
}

fn check_or_update(path: &Path, actual: &str) {
    if std::env::var_os("SLUICE_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with SLUICE_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the injection, first at line {}:\n  expected: {:?}\n  actual:   {:?}\n\
             (SLUICE_UPDATE_GOLDEN=1 rewrites it)\n--- actual ---\n{actual}",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first),
        );
    }
}

#[test]
fn sample_manifests_inject_as_the_golden_files_say() {
    for input in inputs() {
        let name = input.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let text = std::fs::read_to_string(&input).expect("read input");
        let out = inject::inject_manifest(name, &text, &options())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check_or_update(&sibling(&input, ".injected.yaml"), &out.text);
        let warnings: String = out.warnings.iter().map(|w| format!("{w}\n")).collect();
        check_or_update(&sibling(&input, ".warnings.txt"), &warnings);
    }
}

/// The pod templates of every workload of `docs` (a Pod is its own template), by `Kind name`.
fn templates(docs: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or("");
        let name = format!("{kind} {}", doc["metadata"]["name"].as_str().unwrap_or(""));
        let template = match kind {
            "Pod" => Some(doc.clone()),
            "Deployment"
            | "StatefulSet"
            | "DaemonSet"
            | "ReplicaSet"
            | "Job"
            | "ReplicationController" => Some(doc["spec"]["template"].clone()),
            "CronJob" => Some(doc["spec"]["jobTemplate"]["spec"]["template"].clone()),
            "List" => {
                let items = doc["items"].as_array().cloned().unwrap_or_default();
                out.extend(templates(&items));
                None
            }
            _ => None,
        };
        if let Some(t) = template {
            out.push((name, t));
        }
    }
    out
}

fn parse_all(text: &str) -> Vec<Value> {
    yaml::parse_pieces(text)
        .unwrap_or_else(|e| panic!("output does not parse: {e}\n{text}"))
        .into_iter()
        .flat_map(|p| p.documents.into_iter().map(|d| d.value))
        .collect()
}

fn container_names(template: &Value, field: &str) -> Vec<String> {
    template["spec"][field]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn injected_samples_have_the_sidecar_and_read_back_as_the_same_objects() {
    for input in inputs() {
        let name = input.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let text = std::fs::read_to_string(&input).expect("read input");
        let out = inject::inject_manifest(name, &text, &options()).expect("inject");
        let before = parse_all(&text);
        let after = parse_all(&out.text);
        assert_eq!(before.len(), after.len(), "{name}: documents lost or added");
        // Same documents in the same order: kinds and names unchanged.
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(b["kind"], a["kind"], "{name}");
            assert_eq!(b["metadata"]["name"], a["metadata"]["name"], "{name}");
        }
        let mut injected = 0;
        for (workload, template) in templates(&after) {
            let status = &template["metadata"]["annotations"]["sidecar.istio.io/status"];
            let Some(status) = status.as_str() else {
                continue; // left alone (host network, injection disabled): see the warnings
            };
            injected += 1;
            let status: Value = serde_json::from_str(status).expect("status is JSON");
            let containers = container_names(&template, "containers");
            assert_eq!(
                containers.iter().filter(|c| *c == "istio-proxy").count(),
                1,
                "{name}: {workload}: {containers:?}"
            );
            if status["initContainers"].is_null() {
                assert!(!container_names(&template, "initContainers")
                    .contains(&"istio-init".to_string()));
            } else {
                assert_eq!(
                    container_names(&template, "initContainers")
                        .last()
                        .map(String::as_str),
                    Some("istio-init"),
                    "{name}: {workload}"
                );
            }
            let labels = &template["metadata"]["labels"];
            assert_eq!(
                labels["security.istio.io/tlsMode"], "istio",
                "{name}: {workload}"
            );
            assert!(labels["service.istio.io/canonical-name"].is_string());
            assert!(labels["service.istio.io/canonical-revision"].is_string());
            let proxy = template["spec"]["containers"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["name"] == "istio-proxy"))
                .expect("istio-proxy");
            assert_eq!(proxy["args"][0], "sidecar");
            assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
            assert_eq!(proxy["ports"][0]["containerPort"], 15090);
        }
        assert_eq!(injected, out.injected, "{name}");
        assert!(injected > 0, "{name}: nothing injected");
    }
}

#[test]
fn injecting_an_injected_manifest_changes_nothing() {
    for input in inputs() {
        let name = input.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let text = std::fs::read_to_string(&input).expect("read input");
        let once = inject::inject_manifest(name, &text, &options()).expect("inject");
        let twice = inject::inject_manifest(name, &once.text, &options()).expect("re-inject");
        assert_eq!(once.text, twice.text, "{name}: injecting twice differs");
    }
}

#[test]
fn documents_that_are_not_injected_are_written_back_byte_for_byte() {
    let input = golden_dir().join("kinds.yaml");
    let text = std::fs::read_to_string(&input).expect("read input");
    let out = inject::inject_manifest("kinds.yaml", &text, &options()).expect("inject");
    for kept in [
        "# Not a workload: written back exactly as it is.\napiVersion: networking.istio.io/v1\n",
        "  hosts: [hello]   # flow style and this comment stay\n",
        "      hostNetwork: true\n",
        "        sidecar.istio.io/inject: \"false\"\n",
    ] {
        assert!(
            out.text.contains(kept),
            "{kept:?} not kept in:\n{}",
            out.text
        );
    }
    let warnings: Vec<String> = out.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().any(|w| w.contains(
            "DaemonSet monitoring/node-agent: spec.template: warning: not injected: host networking is enabled"
        )),
        "{warnings:#?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("DaemonSet default/log-shipper")
                && w.contains("injection is disabled")),
        "{warnings:#?}"
    );
}
