//! A config thread with nothing to do stays asleep: reading the files on a scan must not count
//! as a change that sets off another scan (inotify reports reads too). A test binary of its own:
//! the scan counter is process-wide.

use std::time::Duration;

use sluice_model::ProxyIdentity;
use sluice_proxy::store::{scans_total, ConfigStore, SETTLE};

const SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [ext.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
";

#[tokio::test]
async fn an_idle_store_does_not_rescan_on_its_own_reads_but_sees_a_write() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("se.yaml"), SE).unwrap();
    let store = ConfigStore::new(dir.path().to_path_buf(), ProxyIdentity::default());
    let snapshots = store.snapshot();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let thread = store.spawn(stop_rx).await.unwrap();

    // 2.5 s idle: the periodic rescan runs about twice a second at most (every RESCAN_INTERVAL,
    // plus a settle pass); a loop fed by its own reads would scan ~50 times.
    let before = scans_total();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let idle_scans = scans_total() - before;
    assert!(
        idle_scans <= 6,
        "{idle_scans} scans in 2.5 s with nothing changed: the store rescans on its own reads"
    );

    // A real change is still seen (by the watcher, well before the next periodic pass matters).
    let generation = snapshots.load().generation;
    std::fs::write(
        dir.path().join("se.yaml"),
        SE.replace("ext.example", "ext2.example"),
    )
    .unwrap();
    let mut seen = false;
    for _ in 0..100 {
        tokio::time::sleep(SETTLE / 4).await;
        if snapshots.load().generation > generation {
            seen = true;
            break;
        }
    }
    assert!(seen, "the write was not picked up");
    stop_tx.send(true).unwrap();
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
}
