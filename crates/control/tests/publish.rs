//! What `sluice control` publishes from its folder: nothing while a file that may hold policy has
//! never been accepted (proxies would get a config more open than the operator wrote); every
//! collection a proxy subscribes to once it can; a new version only for collections whose
//! content changed; the mesh config as istiod's bare MeshConfig.

use std::sync::{Arc, Mutex};

use sluice_control::push::Encoder;
use sluice_model::ProxyIdentity;
use sluice_proxy::store::ConfigStore;
use sluice_xds::server::Published;

const MESH: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
";

const SE: &str = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
";

const VS: &str = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: ext, namespace: default}
spec:
  hosts: [httpbin.org]
  http:
  - timeout: 3s
    route: [{destination: {host: httpbin.org}}]
";

type Seen = Arc<Mutex<Vec<Published>>>;

fn control_store(dir: &std::path::Path) -> (ConfigStore, Seen) {
    let mut store = ConfigStore::new(dir.to_path_buf(), ProxyIdentity::default());
    let seen: Seen = Arc::default();
    let sink_seen = seen.clone();
    let mut encoder = Encoder::default();
    store.publish_to(Box::new(move |generation, resources| {
        sink_seen
            .lock()
            .unwrap()
            .push(encoder.encode(generation, resources));
    }));
    (store, seen)
}

fn version(p: &Published, collection: &str) -> String {
    p.collections[collection].version.clone()
}

#[test]
fn nothing_is_served_while_a_policy_file_has_never_been_accepted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        MESH.replace(
            "REGISTRY_ONLY",
            "REGISTRY_ONLY\n    connectTimeout: 10 seconds",
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("se.yaml"), SE).unwrap();
    let (mut store, seen) = control_store(dir.path());
    store.rescan();
    assert!(seen.lock().unwrap().is_empty(), "nothing may be served");
    let status = store.status().load();
    assert!(!status.ready);
    assert!(
        status.not_ready.join(" ").contains("mesh.yaml"),
        "{:?}",
        status.not_ready
    );

    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    store.rescan();
    let seen = seen.lock().unwrap();
    let published = seen
        .last()
        .expect("served once the mesh config is accepted");
    assert!(store.status().load().ready);
    // Every collection a proxy subscribes to is there, so a proxy can become ready.
    for collection in sluice_proxy::xds_source::collections() {
        assert!(
            published.collections.contains_key(&collection),
            "{collection} missing"
        );
    }
    // The mesh config is istiod's bare MeshConfig, REGISTRY_ONLY.
    let mesh = &published.collections["core/v1alpha1/MeshConfig"].resources;
    assert_eq!(mesh.len(), 1);
    assert_eq!(
        mesh[0].type_url,
        "type.googleapis.com/istio.mesh.v1alpha1.MeshConfig"
    );
    let decoded = sluice_xds::decode_resource("core/v1alpha1/MeshConfig", &mesh[0]).unwrap();
    assert_eq!(
        decoded.spec["outboundTrafficPolicy"]["mode"],
        "REGISTRY_ONLY"
    );
    let se = &published.collections["networking.istio.io/v1/ServiceEntry"].resources;
    let decoded =
        sluice_xds::decode_resource("networking.istio.io/v1/ServiceEntry", &se[0]).unwrap();
    assert_eq!(decoded.name, "default/ext");
    assert_eq!(decoded.spec["hosts"][0], "httpbin.org");
}

#[test]
fn only_changed_collections_get_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.path().join("se.yaml"), SE).unwrap();
    std::fs::write(dir.path().join("vs.yaml"), VS).unwrap();
    let (mut store, seen) = control_store(dir.path());
    store.rescan();
    let first = seen.lock().unwrap().last().cloned().unwrap();

    std::fs::write(dir.path().join("vs.yaml"), VS.replace("3s", "1s")).unwrap();
    store.rescan();
    let second = seen.lock().unwrap().last().cloned().unwrap();
    let vs = "networking.istio.io/v1/VirtualService";
    let se = "networking.istio.io/v1/ServiceEntry";
    assert_ne!(version(&first, vs), version(&second, vs));
    assert_eq!(version(&first, se), version(&second, se));
    assert!(Arc::ptr_eq(
        &first.collections[se].resources,
        &second.collections[se].resources
    ));

    // A refused VirtualService file keeps its last good version: nothing changes.
    std::fs::write(dir.path().join("vs.yaml"), VS.replace("3s", "3 seconds")).unwrap();
    store.rescan();
    let third = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(version(&second, vs), version(&third, vs));
}
