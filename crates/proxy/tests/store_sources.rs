//! A store fed by a folder and another source at once (`sluice control --config DIR --kube`):
//! not ready until the source has listed each of its kinds once; the folder's rescans never
//! drop the source's objects; a source's object the validator refuses is refused alone and its
//! last good version keeps serving; a new list replaces everything under its prefix.

use std::sync::mpsc;
use std::time::Duration;

use sluice_model::{HttpDecision, ProxyIdentity};
use sluice_proxy::store::{ConfigStore, SourceUpdate};

const SE_FILE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: from-folder, namespace: default}
spec:
  hosts: [folder.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
";

fn service_entry(name: &str, host: &str) -> (String, String) {
    (
        format!("kube:ServiceEntry/default/{name}"),
        format!(
            r#"{{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
  "metadata": {{"name": "{name}", "namespace": "default"}},
  "spec": {{"hosts": ["{host}"], "ports": [{{"number": 80, "name": "http", "protocol": "HTTP"}}], "resolution": "DNS"}}}}"#
        ),
    )
}

fn virtual_service(timeout: &str) -> (String, String) {
    (
        "kube:VirtualService/default/vs".to_string(),
        format!(
            r#"{{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
  "metadata": {{"name": "vs", "namespace": "default"}},
  "spec": {{"hosts": ["kube.example"], "http": [{{"timeout": "{timeout}", "route": [{{"destination": {{"host": "kube.example"}}}}]}}]}}}}"#
        ),
    )
}

/// Whether the snapshot routes `host` to a service (not passthrough or blocked).
fn routed(snapshot: &arc_swap::ArcSwap<sluice_model::Snapshot>, host: &str) -> bool {
    let snap = snapshot.load_full();
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

fn wait(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_and_a_source_serve_together() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("se.yaml"), SE_FILE).unwrap();
    let mut store = ConfigStore::new(dir.path().to_path_buf(), ProxyIdentity::default());
    store.add_source([
        "kube:ServiceEntry/".to_string(),
        "kube:VirtualService/".to_string(),
    ]);
    let status = store.status();
    let snapshot = store.snapshot();
    let gate = store.gate();
    let (tx, rx) = mpsc::channel();
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    store.spawn_with_sources(stop_rx, Some(rx)).await.unwrap();

    // The folder alone is not enough: the source has not listed yet.
    let not_ready = status.load().not_ready.join("\n");
    assert!(!gate.is_open(), "ready before the source listed");
    assert!(
        not_ready.contains("kube:ServiceEntry") && not_ready.contains("kube:VirtualService"),
        "{not_ready}"
    );
    tx.send(SourceUpdate::Listed {
        prefix: "kube:ServiceEntry/".into(),
        objects: vec![service_entry("a", "kube.example")],
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!gate.is_open(), "one kind listed of two");
    tx.send(SourceUpdate::Listed {
        prefix: "kube:VirtualService/".into(),
        objects: vec![virtual_service("3s")],
    })
    .unwrap();
    wait("ready once both kinds are listed", || gate.is_open());
    let has = |host: &str| routed(&snapshot, host);
    assert!(has("folder.example") && has("kube.example"));

    // A folder change and its rescan keep the source's objects.
    std::fs::write(
        dir.path().join("se.yaml"),
        SE_FILE.replace("folder.example", "folder2.example"),
    )
    .unwrap();
    wait("the folder's change", || has("folder2.example"));
    assert!(has("kube.example"), "a rescan dropped the source's objects");

    // A refused object is refused alone; its last good version serves.
    tx.send(SourceUpdate::Applied {
        path: virtual_service("3s").0,
        text: virtual_service("3 seconds").1,
    })
    .unwrap();
    wait("the refusal reported", || {
        status
            .load()
            .diagnostics
            .iter()
            .any(|d| d.contains("kube:VirtualService/default/vs") && d.contains("timeout"))
    });
    assert!(gate.is_open() && has("kube.example"));

    // A new list replaces its prefix: objects not in it are gone.
    tx.send(SourceUpdate::Listed {
        prefix: "kube:ServiceEntry/".into(),
        objects: vec![service_entry("b", "other.example")],
    })
    .unwrap();
    wait("the new list", || has("other.example"));
    assert!(has("folder2.example"));
}
