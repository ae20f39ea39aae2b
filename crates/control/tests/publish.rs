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

/// A Sidecar in `shop` that imports its own namespace and `istio-system`; a workload-specific
/// one for `app: api` that imports only `istio-system`; the root namespace's default, whose `.`
/// is each proxy's own namespace.
const SIDECAR_SCOPING: &str = "
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  egress: [{hosts: [./*, istio-system/*]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: api, namespace: shop}
spec:
  workloadSelector: {labels: {app: api}}
  egress: [{hosts: [istio-system/*]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress: [{hosts: [./*]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cart, namespace: shop}
spec: {hosts: [cart.shop.example], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: telemetry, namespace: istio-system}
spec: {hosts: [telemetry.example], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger, namespace: bank}
spec: {hosts: [ledger.bank.example], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: bank}
spec: {hosts: [payments.bank.example], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pay, namespace: shop}
spec:
  hosts: [pay.shop.example]
  http: [{route: [{destination: {host: payments.bank.example}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ledger, namespace: bank}
spec:
  hosts: [ledger.bank.example]
  http: [{timeout: 2s, route: [{destination: {host: ledger.bank.example}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ledger, namespace: bank}
spec: {host: ledger.bank.example, trafficPolicy: {tls: {mode: SIMPLE}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments, namespace: bank}
spec: {host: payments.bank.example, trafficPolicy: {tls: {mode: SIMPLE}}}
";

/// The names of the resources of `collection` a proxy of `namespace` with `labels` receives.
fn imported(
    published: &Published,
    collection: &str,
    namespace: &str,
    labels: &[(&str, &str)],
    is_sidecar: bool,
) -> Vec<String> {
    use sluice_xds::server::PeerScope;
    let scope = PeerScope {
        namespace: namespace.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        is_sidecar,
        ..PeerScope::default()
    };
    let selected = match (&published.sidecars, is_sidecar) {
        (Some(select), true) => select.select(&scope),
        _ => None,
    };
    let c = &published.collections[collection];
    let set = selected
        .as_ref()
        .and_then(|s| s.collections.get(collection));
    let mut names: Vec<String> = (0..c.resources.len())
        .filter(|i| set.is_none_or(|s| s.imported.contains(i)))
        .map(|i| c.names[i].clone())
        .collect();
    names.sort();
    names
}

#[test]
fn a_sidecar_resource_scopes_what_its_proxies_receive() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.path().join("scoping.yaml"), SIDECAR_SCOPING).unwrap();
    let (mut store, seen) = control_store(dir.path());
    store.rescan();
    let published = seen.lock().unwrap().last().cloned().expect("published");
    let se = "networking.istio.io/v1/ServiceEntry";
    let vs = "networking.istio.io/v1/VirtualService";
    let dr = "networking.istio.io/v1/DestinationRule";

    // shop's default Sidecar: its own namespace, istio-system, and the service its imported
    // VirtualService routes to (bank/payments), with that service's DestinationRule.
    assert_eq!(
        imported(&published, se, "shop", &[("app", "web")], true),
        ["bank/payments", "istio-system/telemetry", "shop/cart"]
    );
    assert_eq!(
        imported(&published, vs, "shop", &[("app", "web")], true),
        ["shop/pay"]
    );
    assert_eq!(
        imported(&published, dr, "shop", &[("app", "web")], true),
        ["bank/payments"]
    );
    // The workload-specific Sidecar wins for `app: api`; its own namespace's services still
    // come (its inbound side needs the services that select it).
    assert_eq!(
        imported(&published, se, "shop", &[("app", "api")], true),
        ["istio-system/telemetry", "shop/cart"]
    );
    assert!(imported(&published, vs, "shop", &[("app", "api")], true).is_empty());
    assert!(imported(&published, dr, "shop", &[("app", "api")], true).is_empty());
    // bank has no Sidecar: the root namespace's default applies, `.` meaning bank.
    assert_eq!(
        imported(&published, se, "bank", &[], true),
        ["bank/ledger", "bank/payments"]
    );
    assert_eq!(imported(&published, vs, "bank", &[], true), ["bank/ledger"]);
    assert_eq!(
        imported(&published, dr, "bank", &[], true),
        ["bank/ledger", "bank/payments"]
    );
    // Gateways take no Sidecar: everything visible.
    assert_eq!(imported(&published, se, "shop", &[], false).len(), 4);
    assert_eq!(imported(&published, vs, "shop", &[], false).len(), 2);
    // Kinds a Sidecar does not scope are not scoped.
    let select = published.sidecars.as_ref().expect("scoped by Sidecars");
    let shop = select
        .select(&sluice_xds::server::PeerScope {
            namespace: "shop".into(),
            is_sidecar: true,
            ..Default::default()
        })
        .expect("shop's default Sidecar");
    assert!(shop
        .collections
        .keys()
        .all(|c| [se, vs, dr].contains(&c.as_str())));
    assert!(shop.key.contains("shop/default"), "{}", shop.key);
}

#[test]
fn without_a_sidecar_resource_nothing_is_scoped_by_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.path().join("se.yaml"), SE).unwrap();
    let (mut store, seen) = control_store(dir.path());
    store.rescan();
    let published = seen.lock().unwrap().last().cloned().expect("published");
    assert!(published.sidecars.is_none());
}

#[test]
fn telemetry_is_published_and_kinds_only_analyze_reads_are_not() {
    // A Telemetry is Istio config proxies enforce: it travels in istiod's collection. A Pod
    // becomes a resource only `sluice analyze` reads, which no proxy gets from sluice control.
    const CONFIG: &str = "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ext-logs, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code >= 400'}}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: default, labels: {app: web}}
";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.path().join("vs.yaml"), VS).unwrap();
    std::fs::write(dir.path().join("telemetry.yaml"), CONFIG).unwrap();
    let (mut store, seen) = control_store(dir.path());
    store.rescan();
    let published = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        published.collections["networking.istio.io/v1/VirtualService"]
            .resources
            .len(),
        1
    );
    let telemetry = &published.collections["telemetry.istio.io/v1/Telemetry"];
    assert_eq!(telemetry.names.as_slice(), ["default/ext-logs"]);
    for (collection, content) in &published.collections {
        assert!(
            content.names.iter().all(|n| !n.ends_with("/web-0")),
            "{collection} carries {:?}",
            content.names
        );
    }
}
