//! The fuzz seeds of `config_decode` and `mesh_config` (fuzz/seeds/, see bench/README.md) through
//! what a proxy does with a config file, on a tokio worker's stack. Seeds named `known-crash-*`
//! once crashed the decoder (a duration past `Duration`'s range panicked; deep nesting overflowed
//! the stack); they must now be refused with an error that names the file.

use std::path::{Path, PathBuf};

use sluice_api::{decode_str, validate, Diagnostic};
use sluice_model::{compile, ProxyIdentity, ProxyKind};

/// Proxies decode and compile on tokio workers, whose stacks are 2 MiB.
const WORKER_STACK: usize = 2 * 1024 * 1024;

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz seeds missing at {}: {e}", dir.display()))
        .map(|e| e.expect("seed dir entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

/// Decode, validate, compile for a sidecar and a gateway, analyze: every diagnostic.
fn pipeline(name: &str, text: &str) -> Vec<Diagnostic> {
    let loaded = decode_str(Path::new(name), text);
    let mut diags = loaded.diagnostics;
    for r in &loaded.resources {
        diags.extend(validate(r));
    }
    for kind in [ProxyKind::Sidecar, ProxyKind::Gateway] {
        let proxy = ProxyIdentity {
            namespace: "istio-system".into(),
            labels: [("istio".to_string(), "ingressgateway".to_string())]
                .into_iter()
                .collect(),
            service_account: None,
            kind,
        };
        diags.extend(compile(&loaded.resources, &proxy, 1).diagnostics);
    }
    let _ = sluice_model::analyze::analyze(&loaded.resources);
    diags
}

/// Runs every seed on a worker-sized stack; a panic fails the test, an overflow aborts it.
fn replay(target: &str, wrap: fn(&str) -> String) -> Vec<(String, Vec<Diagnostic>)> {
    let files = seeds(target);
    std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || {
            files
                .iter()
                .map(|f| {
                    let name = f.file_name().unwrap_or_default().to_string_lossy();
                    let bytes = std::fs::read(f).expect("read seed");
                    let text = wrap(&String::from_utf8_lossy(&bytes));
                    (name.to_string(), pipeline(&name, &text))
                })
                .collect()
        })
        .expect("spawn")
        .join()
        .expect("a seed made the config pipeline panic")
}

fn check_known_crashes(results: &[(String, Vec<Diagnostic>)]) {
    let known: Vec<_> = results
        .iter()
        .filter(|(name, _)| name.starts_with("known-crash-"))
        .collect();
    assert!(!known.is_empty(), "the known crashes are among the seeds");
    for (name, diags) in known {
        let error = diags.iter().find(|d| d.is_error());
        let error = error.unwrap_or_else(|| panic!("{name}: accepted, expected an error"));
        assert_eq!(error.file, *name, "{name}: the error names the file");
    }
}

#[test]
fn config_decode_seeds_never_crash_and_known_crashes_are_refused() {
    let results = replay("config_decode", str::to_string);
    // The seed documents' YAML is served without errors.
    for (name, diags) in &results {
        if name.starts_with("00") {
            let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
            assert!(errors.is_empty(), "{name}: {errors:?}");
        }
    }
    check_known_crashes(&results);
}

#[test]
fn mesh_config_seeds_never_crash_and_known_crashes_are_refused() {
    // As the fuzz target builds it: the text as the `mesh` key of the `istio` ConfigMap.
    let results = replay("mesh_config", |mesh| {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": mesh},
        })
        .to_string()
    });
    for (name, diags) in &results {
        if name == "seed-001.txt" || name == "demo.txt" {
            let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
            assert!(errors.is_empty(), "{name}: {errors:?}");
        }
    }
    check_known_crashes(&results);
}
