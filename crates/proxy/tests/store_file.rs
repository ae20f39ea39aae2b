//! `--config FILE`: the store reads one file, sees it edited in place or replaced by a rename
//! (as editors save), ignores the other files of its directory, and keeps serving its last good
//! version when the file disappears. A test binary of its own: the scan counter is process-wide.

use std::path::Path;
use std::time::Duration;

use sluice_model::{HttpDecision, ProxyIdentity, Snapshot};
use sluice_proxy::store::{scans_total, ConfigStore, SETTLE};

fn service_entry(host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext, namespace: default}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |-
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
"
    )
}

fn allowed(snap: &Snapshot, host: &str) -> bool {
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

/// Writes `text` to `path` as editors that save atomically do: a new file renamed over it.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn one_config_file_is_watched_through_edits_renames_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, service_entry("one.example")).unwrap();
    // Another file beside it is not config: only the named file is.
    std::fs::write(
        dir.path().join("other.yaml"),
        service_entry("other.example"),
    )
    .unwrap();

    let store = ConfigStore::new(file.clone(), ProxyIdentity::default());
    let snapshots = store.snapshot();
    let status = store.status();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let thread = store.spawn(stop_rx).await.unwrap();
    let snap = snapshots.load_full();
    assert!(allowed(&snap, "one.example"));
    assert!(
        !allowed(&snap, "other.example"),
        "a file beside --config FILE was read"
    );

    let wait_for = |what: &'static str, check: &dyn Fn(&Snapshot) -> bool| {
        let snapshots = snapshots.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !check(&snapshots.load()) {
            assert!(std::time::Instant::now() < deadline, "{what}: not applied");
            std::thread::sleep(SETTLE / 4);
        }
    };

    // Edited in place.
    std::fs::write(&file, service_entry("two.example")).unwrap();
    wait_for("an edit in place", &|s| {
        allowed(s, "two.example") && !allowed(s, "one.example")
    });
    // Saved by rename, twice (a watch on the file's inode would be left on the old file).
    save_by_rename(&file, &service_entry("three.example"));
    wait_for("a save by rename", &|s| allowed(s, "three.example"));
    save_by_rename(&file, &service_entry("four.example"));
    wait_for("a second save by rename", &|s| allowed(s, "four.example"));

    // Churn beside the file does not wake the store (it watches the directory for one name).
    let before = scans_total();
    for i in 0..40 {
        std::fs::write(
            dir.path().join("other.yaml"),
            service_entry(&format!("o{i}.example")),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let scans = scans_total() - before;
    assert!(
        scans <= 6,
        "{scans} scans in 2 s of writes to another file: events beside --config FILE wake the store"
    );
    assert!(!allowed(&snapshots.load(), "o39.example"));

    // Removed: reported, and the last good version keeps serving (REGISTRY_ONLY included).
    let generation = snapshots.load().generation;
    std::fs::remove_file(&file).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !status
        .load()
        .diagnostics
        .iter()
        .any(|d| d.contains("mesh.yaml") && d.contains("cannot read"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the removal was not reported: {:?}",
            status.load().diagnostics
        );
        std::thread::sleep(SETTLE / 4);
    }
    let snap = snapshots.load_full();
    assert!(snap.generation >= generation);
    assert!(
        allowed(&snap, "four.example"),
        "the last good config was withdrawn"
    );
    assert!(!allowed(&snap, "anything.example"), "the mesh opened up");

    // Back: applied again.
    std::fs::write(&file, service_entry("five.example")).unwrap();
    wait_for("the file's return", &|s| allowed(s, "five.example"));

    stop_tx.send(true).unwrap();
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
}
