//! The config thread hands the allocator its chance to give memory back after every snapshot it
//! publishes, and only then (`store::AllocatorHooks::after_publish`; the sluice binary purges
//! jemalloc's arenas there). A test binary of its own: the hook is process-wide.

use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_model::ProxyIdentity;
use sluice_proxy::store::{set_allocator_hooks, AllocatorHooks, ConfigStore};

static RELEASES: AtomicUsize = AtomicUsize::new(0);

fn count_release() {
    RELEASES.fetch_add(1, Ordering::SeqCst);
}

const SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [ext.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
";

#[test]
fn memory_is_released_after_each_publish_and_only_then() {
    set_allocator_hooks(AllocatorHooks {
        thread_start: || {},
        after_publish: count_release,
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("se.yaml"), SE).unwrap();
    let mut store = ConfigStore::new(dir.path().to_path_buf(), ProxyIdentity::default());

    assert!(store.rescan(), "the first scan publishes");
    assert_eq!(RELEASES.load(Ordering::SeqCst), 1);

    assert!(!store.rescan(), "nothing changed");
    assert_eq!(RELEASES.load(Ordering::SeqCst), 1, "no publish, no release");

    std::fs::write(
        dir.path().join("se.yaml"),
        SE.replace("ext.example", "ext2.example"),
    )
    .unwrap();
    assert!(store.rescan());
    assert_eq!(RELEASES.load(Ordering::SeqCst), 2);
}
