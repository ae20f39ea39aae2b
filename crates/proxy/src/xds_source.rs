//! `--xds HOST:PORT`: the proxy's config comes from a control plane (sluice control, or istiod)
//! instead of a folder.
//!
//! The ADS client ([`sluice_xds::client`]) runs on a thread of its own with a small runtime, so
//! neither the stream nor decoding ever runs on a data-plane worker. Each collection it
//! receives is turned back into the documents a `--config` folder would hold and applied by the
//! config store on its thread, with the same validation and last-good rules: a collection with
//! an error is NACKed with the validator's `Kind ns/name: field: message` lines and the last
//! good version keeps serving. The proxy is not ready until every collection has been accepted
//! once.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};
use sluice_api::Kind;
use sluice_model::{ProxyIdentity, ProxyKind};
use sluice_xds::client::{ClientConfig, Received};
use sluice_xds::McpObject;

use crate::store::{CollectionUpdate, ConfigStore};

/// The Kubernetes kinds sluice control also serves, as istiod names their collections (istiod
/// itself sends Services as ServiceEntries instead). Secrets reach only a proxy that proved its
/// namespace with a client certificate (the mutual-TLS port), and only its namespace's.
pub const KUBERNETES_COLLECTIONS: &[(Kind, &str)] = &[
    (Kind::Service, "core/v1/Service"),
    (Kind::Endpoints, "core/v1/Endpoints"),
    (Kind::Secret, "core/v1/Secret"),
    (Kind::Ingress, "networking.k8s.io/v1/Ingress"),
    (Kind::IngressClass, "networking.k8s.io/v1/IngressClass"),
];

/// The collection a Kubernetes kind travels in, if it is one the control plane serves.
pub fn kubernetes_collection(kind: Kind) -> Option<&'static str> {
    KUBERNETES_COLLECTIONS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, c)| *c)
}

/// The collections a proxy subscribes to: Istio's, under the type URLs istiod serves them
/// (MeshConfig first), then the Kubernetes kinds.
pub fn collections() -> Vec<String> {
    let mut istio: Vec<&sluice_xds::Collection> = sluice_xds::COLLECTIONS.iter().collect();
    istio.sort_by_key(|c| c.kind != "MeshConfig");
    istio
        .iter()
        .map(|c| c.type_url)
        .chain(KUBERNETES_COLLECTIONS.iter().map(|(_, c)| *c))
        .map(str::to_string)
        .collect()
}

/// Whether `collection` is the mesh config's; it becomes the `istio-system/istio` ConfigMap.
fn is_mesh_config(collection: &str) -> bool {
    sluice_xds::collection(collection).is_some_and(|c| c.kind == "MeshConfig")
}

/// The `apiVersion` and `kind` a collection's documents take.
fn api_version_and_kind(collection: &str) -> Option<(String, &str)> {
    let (group_version, kind) = collection.rsplit_once('/')?;
    let api_version = match group_version.strip_prefix("core/") {
        Some(version) => version.to_string(),
        None => group_version.to_string(),
    };
    Some((api_version, kind))
}

/// A received collection as the documents of a `--config` file: one `List`, indented so every
/// field has a line of its own in diagnostics.
pub fn collection_text(collection: &str, objects: &[McpObject]) -> Result<String, String> {
    let items = objects
        .iter()
        .map(|o| document(collection, o))
        .collect::<Result<Vec<Value>, String>>()?;
    serde_json::to_string_pretty(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
        .map_err(|e| e.to_string())
}

fn document(collection: &str, object: &McpObject) -> Result<Value, String> {
    let (namespace, name) = match object.name.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => ("", object.name.as_str()),
    };
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(name));
    if !namespace.is_empty() {
        metadata.insert("namespace".into(), json!(namespace));
    }
    if !object.labels.is_empty() {
        metadata.insert("labels".into(), json!(object.labels));
    }
    if !object.annotations.is_empty() {
        metadata.insert("annotations".into(), json!(object.annotations));
    }
    if is_mesh_config(collection) {
        // istiod sends the mesh config itself; sluice reads it as the ConfigMap that holds it.
        let mesh = serde_json::to_string(&object.spec).map_err(|e| e.to_string())?;
        return Ok(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": mesh},
        }));
    }
    // Istio's kinds are written under their collection's main version; an alias such as
    // `networking.istio.io/v1alpha3/ServiceEntry` reads the same.
    let collection = sluice_xds::collection(collection).map_or(collection, |c| c.type_url);
    let Some((api_version, kind)) = api_version_and_kind(collection) else {
        return Err(format!(
            "collection {collection:?} is not group/version/kind"
        ));
    };
    let mut doc = Map::new();
    doc.insert("apiVersion".into(), json!(api_version));
    doc.insert("kind".into(), json!(kind));
    doc.insert("metadata".into(), Value::Object(metadata));
    if sluice_xds::collection(collection).is_some() {
        doc.insert("spec".into(), object.spec.clone());
    } else {
        // Kubernetes kinds travel as the object's fields other than its type and metadata.
        match &object.spec {
            Value::Object(fields) => {
                for (k, v) in fields {
                    if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        doc.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Null => {}
            _ => return Err(format!("{kind} {}: body is not an object", object.name)),
        }
    }
    Ok(Value::Object(doc))
}

/// The node this proxy presents, in Istio's form: `sidecar~IP~POD.NS~NS.svc.cluster.local` (or
/// `router~…` for a gateway), with the workload's namespace, labels and service account in the
/// metadata where istiod reads them.
pub fn node(identity: &ProxyIdentity, node_id: Option<&str>) -> sluice_xds::Node {
    use sluice_xds::envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string());
    let role = match identity.kind {
        ProxyKind::Sidecar => "sidecar",
        ProxyKind::Gateway => "router",
    };
    let ns = &identity.namespace;
    let id = node_id.map_or_else(
        || format!("{role}~0.0.0.0~{host}.{ns}~{ns}.svc.cluster.local"),
        str::to_string,
    );
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let mut fields = BTreeMap::new();
    fields.insert("NAMESPACE".to_string(), string(ns));
    fields.insert("NAME".to_string(), string(&host));
    fields.insert(
        "ISTIO_VERSION".to_string(),
        string(env!("CARGO_PKG_VERSION")),
    );
    if let Some(sa) = &identity.service_account {
        fields.insert("SERVICE_ACCOUNT".to_string(), string(sa));
    }
    let labels = identity
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), string(v)))
        .collect();
    fields.insert(
        "LABELS".to_string(),
        Value {
            kind: Some(Kind::StructValue(Struct { fields: labels })),
        },
    );
    sluice_xds::Node {
        id,
        cluster: identity
            .labels
            .get("app")
            .map_or_else(|| "sluice".to_string(), ToString::to_string),
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        user_agent_name: "sluice".to_string(),
        ..sluice_xds::Node::default()
    }
}

/// Starts the config thread fed by the control plane at `servers` and the ADS client that
/// feeds it (on a thread of its own). Returns the store's thread.
pub fn spawn(
    store: ConfigStore,
    client: ClientConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (updates_tx, updates_rx) = std::sync::mpsc::sync_channel::<CollectionUpdate>(64);
    let store_thread = store.spawn_xds(updates_rx, stop.clone())?;
    std::thread::Builder::new()
        .name("sluice-xds".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("cannot start the xDS client: {e}");
                    return;
                }
            };
            runtime.block_on(client_loop(client, updates_tx, stop));
        })?;
    Ok(store_thread)
}

async fn client_loop(
    client: ClientConfig,
    updates: std::sync::mpsc::SyncSender<CollectionUpdate>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Room for a connection's first burst: one response per collection.
    let (received_tx, mut received_rx) =
        tokio::sync::mpsc::channel::<Received>(client.collections.len() + 4);
    let wire = tokio::spawn(sluice_xds::client::run(client, received_tx));
    loop {
        let first = tokio::select! {
            r = received_rx.recv() => match r { Some(r) => r, None => break },
            _ = stop.wait_for(|s| *s) => break,
        };
        // Whatever else has arrived goes to the config thread with it, to be applied together.
        let mut batch = vec![first];
        while let Ok(more) = received_rx.try_recv() {
            batch.push(more);
        }
        let mut waiting = Vec::with_capacity(batch.len());
        for received in batch {
            let text = match collection_text(&received.type_url, &received.objects) {
                Ok(text) => text,
                Err(message) => {
                    let _ = received.reply.send(Err(message));
                    continue;
                }
            };
            let (reply, verdict) = tokio::sync::oneshot::channel();
            let update = CollectionUpdate {
                collection: received.type_url.clone(),
                text,
                reply,
            };
            if updates.send(update).is_err() {
                wire.abort();
                return;
            }
            waiting.push((received.reply, verdict));
        }
        for (reply, verdict) in waiting {
            let result = verdict
                .await
                .unwrap_or_else(|_| Err("the config thread stopped".to_string()));
            let _ = reply.send(result);
        }
    }
    wire.abort();
}

/// The ADS client settings for `--xds`: comma-separated replicas, Istio's collections, mutual
/// TLS with `tls` (the proxy's client config) when given.
pub fn client_config(
    servers: &str,
    node: sluice_xds::Node,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    delta: bool,
) -> ClientConfig {
    ClientConfig {
        servers: servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        node,
        collections: collections(),
        initial_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(15),
        tls,
        delta,
    }
}
