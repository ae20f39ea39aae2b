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

/// The snapshot of a gateway proxy (`sluice gateway`) in namespace `ns` with `labels`.
pub fn gateway_snapshot(ns: &str, labels: &[(&str, &str)], yaml: &str) -> Snapshot {
    gateway_snapshot_of(ns, labels, &resources(yaml))
}

/// The snapshot of a gateway proxy for already decoded resources.
pub fn gateway_snapshot_of(ns: &str, labels: &[(&str, &str)], resources: &[Resource]) -> Snapshot {
    let proxy = ProxyIdentity {
        namespace: ns.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        service_account: None,
        kind: sluice_model::ProxyKind::Gateway,
    };
    compile(resources, &proxy, 1)
}

/// Decodes files (such as the seed fixtures), keeping warnings, failing on errors.
pub fn resources_from_files(paths: &[&Path]) -> Vec<Resource> {
    let mut out = Vec::new();
    for p in paths {
        let loaded = sluice_api::decode_file(p);
        let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
        assert!(
            errors.is_empty(),
            "{} does not decode: {errors:?}",
            p.display()
        );
        out.extend(loaded.resources);
    }
    out
}
