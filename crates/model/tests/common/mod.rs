//! Helpers shared by the model's table tests: YAML as users write it → resources → snapshot.

#![allow(dead_code)]

use std::path::Path;

use sluice_api::Resource;
use sluice_model::{compile, ProxyIdentity, Snapshot};

/// Decodes and validates `yaml`, failing the test on any error.
pub fn resources(yaml: &str) -> Vec<Resource> {
    let loaded = sluice_api::decode_str(Path::new("test.yaml"), yaml);
    let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "test config does not decode: {errors:?}");
    for r in &loaded.resources {
        let errs: Vec<_> = sluice_api::validate(r)
            .into_iter()
            .filter(|d| d.is_error())
            .collect();
        assert!(errs.is_empty(), "test config does not validate: {errs:?}");
    }
    loaded.resources
}

/// The snapshot of a proxy in namespace `ns` with `labels`.
pub fn snapshot_in(ns: &str, labels: &[(&str, &str)], yaml: &str) -> Snapshot {
    let proxy = ProxyIdentity {
        namespace: ns.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        service_account: None,
        kind: sluice_model::ProxyKind::Sidecar,
    };
    compile(&resources(yaml), &proxy, 1)
}
