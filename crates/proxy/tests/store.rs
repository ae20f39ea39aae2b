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

// === fail closed ===

fn registry_only(store: &ConfigStore) -> bool {
    store.snapshot().load().mesh.outbound_policy == sluice_model::OutboundPolicy::RegistryOnly
}

fn reasons(store: &ConfigStore) -> String {
    store.status().load().not_ready.join("\n")
}

/// REGISTRY_ONLY plus a misspelled value elsewhere in the mesh config.
const MESH_TYPO: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
    connectTimeout: 10 seconds
";

#[test]
fn a_refused_mesh_config_at_startup_keeps_the_proxy_closed_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "mesh.yaml", MESH_TYPO);
    write(dir.path(), "se.yaml", SE);
    let mut store = ConfigStore::new(dir.path().to_path_buf(), ProxyIdentity::default());
    let gate = store.gate();
    store.rescan();
    let status = store.status().load_full();
    assert!(!status.ready);
    assert!(!gate.is_open(), "traffic must be refused");
    assert!(
        reasons(&store).contains("mesh.yaml was refused")
            && reasons(&store).contains("connectTimeout"),
        "{}",
        reasons(&store)
    );

    write(dir.path(), "mesh.yaml", MESH);
    store.rescan();
    assert!(store.status().load().ready, "{}", reasons(&store));
    assert!(gate.is_open());
    assert!(registry_only(&store));

    // While running, a bad edit keeps the last good mesh config and does not close the proxy.
    write(
        dir.path(),
        "mesh.yaml",
        MESH_TYPO.replace("REGISTRY_ONLY", "ALLOW_ANY").as_str(),
    );
    store.rescan();
    assert!(registry_only(&store));
    assert!(gate.is_open());
    assert!(store.status().load().ready);
}

#[test]
fn a_broken_file_that_may_hold_policy_closes_the_proxy_at_startup_but_a_broken_route_does_not() {
    let dir = tempfile::tempdir().unwrap();
    // Not YAML at all: what it held cannot be known.
    write(
        dir.path(),
        "policy.yaml",
        "kind: AuthorizationPolicy\nspec: [\n",
    );
    let mut store = ConfigStore::new(dir.path().to_path_buf(), ProxyIdentity::default());
    store.rescan();
    assert!(!store.gate().is_open(), "{}", reasons(&store));

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "mesh.yaml", MESH);
    write(
        dir.path(),
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a.example.com]\n  htp: []\n",
    );
    let mut store = ConfigStore::new(dir.path().to_path_buf(), ProxyIdentity::default());
    store.rescan();
    assert!(store.gate().is_open(), "{}", reasons(&store));
    assert!(store.status().load().ready);
}

#[test]
fn an_emptied_or_truncated_mesh_file_does_not_open_the_mesh() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "mesh.yaml", MESH);
    write(dir.path(), "se.yaml", SE);
    let mut store = ConfigStore::new(dir.path().to_path_buf(), ProxyIdentity::default());
    store.rescan();
    assert!(registry_only(&store));

    // Emptied in place (`: > mesh.yaml`, or caught between truncation and the write).
    write(dir.path(), "mesh.yaml", "");
    store.rescan();
    assert!(
        registry_only(&store),
        "an empty file must not open the mesh"
    );
    // A file holding a ServiceEntry and then the mesh config, truncated after the first
    // document: still valid, but the ConfigMap is gone.
    let other = SE
        .replace("httpbin-ext", "other")
        .replace("httpbin.org", "other.org");
    write(dir.path(), "mesh.yaml", &format!("{other}---\n{MESH}"));
    store.rescan();
    assert!(registry_only(&store));
    write(dir.path(), "mesh.yaml", &other);
    store.rescan();
    assert!(
        registry_only(&store),
        "a truncated file must not open the mesh"
    );
    assert!(
        store
            .status()
            .load()
            .diagnostics
            .iter()
            .any(|d| d.contains("last good version keeps serving")),
        "{:?}",
        store.status().load().diagnostics
    );
    // Truncated in the middle of the mesh text: refused, the last good one stays.
    write(dir.path(), "mesh.yaml", &MESH[..MESH.len() - 6]);
    store.rescan();
    assert!(registry_only(&store));

    // An explicit change still applies, and deleting the file returns to the defaults.
    write(
        dir.path(),
        "mesh.yaml",
        &MESH.replace("REGISTRY_ONLY", "ALLOW_ANY"),
    );
    store.rescan();
    assert!(!registry_only(&store));
    write(dir.path(), "mesh.yaml", MESH);
    store.rescan();
    assert!(registry_only(&store));
    std::fs::remove_file(dir.path().join("mesh.yaml")).unwrap();
    store.rescan();
    assert!(!registry_only(&store));
}

#[test]
fn what_cannot_be_read_is_reported_never_blocks_and_keeps_its_last_good_version() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "mesh.yaml", MESH);
    write(dir.path(), "se.yaml", SE);
    let mut store = ConfigStore::new(dir.path().to_path_buf(), ProxyIdentity::default());
    store.rescan();
    assert!(allowed(&store, "httpbin.org"));

    // A FIFO nobody writes to, a link to /dev/zero, a link loop, a directory loop, a huge file.
    let fifo = dir.path().join("fifo.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");
    symlink("/dev/zero", dir.path().join("zero.yaml")).unwrap();
    symlink("loop.yaml", dir.path().join("loop.yaml")).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    symlink("..", dir.path().join("sub").join("up")).unwrap();
    let huge = std::fs::File::create(dir.path().join("huge.yaml")).unwrap();
    huge.set_len(sluice_api::decode::MAX_FILE_BYTES + 1)
        .unwrap();
    // The good file is replaced by something unreadable: its resources stay.
    std::fs::remove_file(dir.path().join("se.yaml")).unwrap();
    symlink("/dev/zero", dir.path().join("se.yaml")).unwrap();

    let started = std::time::Instant::now();
    store.rescan();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the scan must not block on a FIFO or read /dev/zero forever"
    );
    assert!(
        allowed(&store, "httpbin.org"),
        "last good version must keep serving"
    );
    assert!(store.gate().is_open());
    let diags = store.status().load().diagnostics.join("\n");
    for expected in [
        "fifo.yaml:0: not a regular file (a FIFO)",
        "zero.yaml:0: not a regular file (a character device)",
        "loop.yaml:0: cannot read file: symlink loop",
        "huge.yaml:0: file too large",
        "se.yaml:0: not a regular file (a character device)",
        "is reached twice",
    ] {
        assert!(
            diags.contains(expected),
            "missing {expected:?} in:\n{diags}"
        );
    }
}

#[test]
fn cluster_runtimes_are_reconciled_by_the_store_before_the_data_path_sees_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "mesh.yaml", MESH);
    let balancers = std::sync::Arc::new(sluice_proxy::balancer::Balancers::default());
    let mut store = ConfigStore::new(dir.path().to_path_buf(), ProxyIdentity::default());
    store.reconcile(balancers.clone());
    assert!(store.rescan());
    let cluster = "outbound|80||httpbin.org";
    assert!(balancers.get(cluster).is_none());

    // A reload adds a cluster: its runtime exists as soon as the snapshot does, before any
    // request could have built it on a worker.
    write(dir.path(), "se.yaml", SE);
    assert!(store.rescan());
    assert!(store.snapshot().load().clusters.contains_key(cluster));
    let runtime = balancers
        .get(cluster)
        .expect("reconciled with the new snapshot");

    // Removed with its cluster; a cluster that stays keeps its runtime (breakers, pools).
    write(
        dir.path(),
        "se2.yaml",
        &SE.replace("httpbin-ext", "other")
            .replace("httpbin.org", "other.org"),
    );
    assert!(store.rescan());
    assert!(std::sync::Arc::ptr_eq(
        &runtime,
        &balancers.get(cluster).unwrap()
    ));
    std::fs::remove_file(dir.path().join("se.yaml")).unwrap();
    assert!(store.rescan());
    assert!(balancers.get(cluster).is_none());
    assert!(balancers.get("outbound|80||other.org").is_some());
}
