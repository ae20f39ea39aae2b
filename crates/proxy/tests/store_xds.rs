//! A store fed by a control plane (`--xds`): not ready until every collection has been accepted
//! once; a collection with an error is refused whole (the NACK message names the resource and
//! field, without the sender's file and line) and its last good version keeps serving; after
//! that, nothing the control plane sends can close the proxy again.

use sluice_model::{HttpDecision, ProxyIdentity};
use sluice_proxy::store::ConfigStore;

const SE_COLLECTION: &str = "networking.istio.io/v1/ServiceEntry";
const VS_COLLECTION: &str = "networking.istio.io/v1/VirtualService";

fn service_entry(host: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "List", "items": [{{
  "apiVersion": "networking.istio.io/v1",
  "kind": "ServiceEntry",
  "metadata": {{"name": "ext", "namespace": "default"}},
  "spec": {{
    "hosts": ["{host}"],
    "ports": [{{"number": 80, "name": "http", "protocol": "HTTP"}}],
    "resolution": "DNS"
  }}
}}]}}"#
    )
}

fn virtual_service(timeout: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "List", "items": [{{
  "apiVersion": "networking.istio.io/v1",
  "kind": "VirtualService",
  "metadata": {{"name": "ext", "namespace": "default"}},
  "spec": {{
    "hosts": ["httpbin.org"],
    "http": [{{"timeout": "{timeout}", "route": [{{"destination": {{"host": "httpbin.org"}}}}]}}]
  }}
}}]}}"#
    )
}

const EMPTY: &str = r#"{"apiVersion": "v1", "kind": "List", "items": []}"#;

fn store() -> ConfigStore {
    ConfigStore::new_xds(
        "127.0.0.1:15010",
        [SE_COLLECTION.to_string(), VS_COLLECTION.to_string()],
        ProxyIdentity::default(),
    )
}

fn ready(store: &ConfigStore) -> bool {
    store.status().load().ready && store.gate().is_open()
}

fn reasons(store: &ConfigStore) -> String {
    store.status().load().not_ready.join("\n")
}

fn routed(store: &ConfigStore, host: &str) -> bool {
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

#[test]
fn not_ready_until_every_collection_has_been_accepted() {
    let mut store = store();
    assert!(!ready(&store));
    assert!(
        reasons(&store).contains("127.0.0.1:15010"),
        "{}",
        reasons(&store)
    );

    store
        .apply_collection(SE_COLLECTION, &service_entry("httpbin.org"))
        .unwrap();
    assert!(
        !ready(&store),
        "one collection of two is not a complete config"
    );
    let why = reasons(&store);
    assert!(
        why.contains(VS_COLLECTION) && !why.contains(SE_COLLECTION),
        "{why}"
    );

    store.apply_collection(VS_COLLECTION, EMPTY).unwrap();
    assert!(ready(&store), "{}", reasons(&store));
    assert!(routed(&store, "httpbin.org"));
}

#[test]
fn a_refused_collection_is_nacked_with_the_field_and_keeps_its_last_good_version() {
    let mut store = store();
    store
        .apply_collection(SE_COLLECTION, &service_entry("httpbin.org"))
        .unwrap();
    store
        .apply_collection(VS_COLLECTION, &virtual_service("3s"))
        .unwrap();
    let generation = store.snapshot().load().generation;

    let nack = store
        .apply_collection(VS_COLLECTION, &virtual_service("3 seconds"))
        .unwrap_err();
    assert!(
        nack.starts_with("VirtualService default/ext: spec.http[0].timeout: "),
        "the NACK names kind, resource and field, without a file or line: {nack}"
    );
    assert!(!nack.contains("xds:"), "{nack}");
    // The last good VirtualService still routes; readiness is untouched.
    assert!(ready(&store));
    assert!(routed(&store, "httpbin.org"));
    let dump = store.status().load();
    assert!(
        dump.diagnostics.iter().any(|d| d.contains("3 seconds")),
        "{:?}",
        dump.diagnostics
    );

    // The same refused collection again changes nothing; a good one applies.
    assert!(store
        .apply_collection(VS_COLLECTION, &virtual_service("3 seconds"))
        .is_err());
    assert_eq!(store.snapshot().load().generation, generation + 1);
    store
        .apply_collection(VS_COLLECTION, &virtual_service("1s"))
        .unwrap();
    assert!(store.snapshot().load().generation > generation + 1);
}

#[test]
fn a_first_response_that_is_refused_keeps_the_proxy_closed() {
    let mut store = store();
    store.apply_collection(SE_COLLECTION, EMPTY).unwrap();
    let nack = store
        .apply_collection(VS_COLLECTION, &virtual_service("soon"))
        .unwrap_err();
    assert!(nack.contains("spec.http[0].timeout"), "{nack}");
    assert!(
        !ready(&store),
        "a collection never accepted must keep traffic refused"
    );
    assert!(
        reasons(&store).contains(VS_COLLECTION),
        "{}",
        reasons(&store)
    );
    // Garbage instead of a document list is refused the same way.
    assert!(store.apply_collection(VS_COLLECTION, "{not json").is_err());
    assert!(!ready(&store));
    store.apply_collection(VS_COLLECTION, EMPTY).unwrap();
    assert!(ready(&store));
}

const RA_COLLECTION: &str = "security.istio.io/v1/RequestAuthentication";

fn request_authentication(jwks_fields: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "List", "items": [{{
  "apiVersion": "security.istio.io/v1",
  "kind": "RequestAuthentication",
  "metadata": {{"name": "mesh-jwt", "namespace": "istio-system"}},
  "spec": {{"jwtRules": [{{"issuer": "https://issuer.example", {jwks_fields}}}]}}
}}]}}"#
    )
}

/// A RequestAuthentication from the control plane is compiled like one from a folder (so a
/// proxy fed by `--xds` enforces it), and one Istio would refuse is NACKed naming the field.
#[test]
fn request_authentication_arrives_over_xds_and_is_enforced() {
    assert!(
        sluice_xds::collection(RA_COLLECTION).is_some(),
        "the control plane serves RequestAuthentication"
    );
    let mut store = ConfigStore::new_xds(
        "127.0.0.1:15010",
        [RA_COLLECTION.to_string()],
        ProxyIdentity::default(),
    );
    store
        .apply_collection(
            RA_COLLECTION,
            &request_authentication(r#""jwksUri": "https://issuer.example/keys""#),
        )
        .unwrap();
    assert!(ready(&store), "{}", reasons(&store));
    let snap = store.snapshot().load_full();
    let authn = &snap.request_authentication;
    assert_eq!(authn.policies, ["istio-system/mesh-jwt"]);
    assert_eq!(authn.providers[0].issuer, "https://issuer.example");

    let nack = store
        .apply_collection(
            RA_COLLECTION,
            &request_authentication(
                r#""jwksUri": "https://issuer.example/keys", "jwks": "{\"keys\": []}""#,
            ),
        )
        .unwrap_err();
    assert!(
        nack.starts_with("RequestAuthentication istio-system/mesh-jwt: spec.jwtRules[0]"),
        "{nack}"
    );
    // The last good rules keep applying.
    assert!(!store.snapshot().load().request_authentication.is_empty());
}
