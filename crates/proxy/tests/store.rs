//! The config store keeps the last good version of a refused file, reports the problem, and
//! withdraws the resources of removed files.

use std::path::Path;

use sluice_model::{HttpDecision, ProxyIdentity};
use sluice_proxy::store::ConfigStore;

const SE: &str = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.org
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
";

const MESH: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
";

fn allowed(store: &ConfigStore, host: &str) -> bool {
    let snap = store.snapshot().load_full();
    let headers = http::HeaderMap::new();
    let facts = sluice_model::HttpRequestFacts {
        method: "GET",
        scheme: "http",
        authority: host,
        path_and_query: "/",
        headers: &headers,
        port: 80,
    };
    matches!(snap.route_http(&facts), HttpDecision::Route { .. })
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn refused_file_keeps_last_good_version_and_removal_withdraws() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "mesh.yaml", MESH);
    write(dir.path(), "se.yaml", SE);
    let mut store = ConfigStore::new(dir.path().to_path_buf(), ProxyIdentity::default());
    assert!(store.rescan());
    assert!(allowed(&store, "httpbin.org"));
    let generation = store.snapshot().load().generation;

    // Nothing changed: no new snapshot.
    assert!(!store.rescan());

    // A typo: refused, reported, and the previous ServiceEntry keeps serving.
    write(dir.path(), "se.yaml", &SE.replace("hosts:", "hostz:"));
    store.rescan();
    assert!(
        allowed(&store, "httpbin.org"),
        "last good version must keep serving"
    );
    let status = store.status().load_full();
    let file = status
        .files
        .iter()
        .find(|f| f.path.ends_with("se.yaml"))
        .unwrap();
    assert!(file.refused);
    assert_eq!(file.resources, 1);
    assert!(
        status
            .diagnostics
            .iter()
            .any(|d| d.contains("se.yaml:6:") && d.contains("hostz")),
        "{:?}",
        status.diagnostics
    );
    assert!(store.snapshot().load().generation > generation);

    // Fixed with a different host: the new version replaces the old one.
    write(
        dir.path(),
        "se.yaml",
        &SE.replace("httpbin.org", "example.org"),
    );
    store.rescan();
    assert!(!allowed(&store, "httpbin.org"));
    assert!(allowed(&store, "example.org"));
    assert!(store.status().load().diagnostics.is_empty());

    // Removed: withdrawn.
    std::fs::remove_file(dir.path().join("se.yaml")).unwrap();
    store.rescan();
    assert!(!allowed(&store, "example.org"));
}

#[test]
fn a_new_file_with_errors_serves_nothing_from_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "mesh.yaml", MESH);
    write(
        dir.path(),
        "se.yaml",
        &SE.replace("number: 80", "number: 0"),
    );
    let mut store = ConfigStore::new(dir.path().to_path_buf(), ProxyIdentity::default());
    store.rescan();
    assert!(!allowed(&store, "httpbin.org"));
    assert!(!store.status().load().diagnostics.is_empty());
}
