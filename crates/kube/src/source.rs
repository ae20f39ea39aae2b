//! The Kubernetes API as a config source (`sluice control --kube`): what istiod watches for
//! traffic control, turned into the objects sluice reads from a folder, and fed to the same
//! store (validation, last good version, publishing) as [`SourceUpdate`]s.
//!
//! Watched with kube-rs's watcher, which follows the API's list/watch protocol (paginated
//! lists, watches from the list's `resourceVersion`, bookmarks, and a new list when the watch
//! expires with `410 Gone`):
//! - the Istio kinds sluice serves (`networking.istio.io/v1`, `security.istio.io/v1`,
//!   `telemetry.istio.io/v1`; the API server converts objects written in older versions);
//! - Services, and EndpointSlices (`discovery.k8s.io/v1`), which become one `Endpoints` object
//!   per Service (the form sluice's registry reads), with the ready endpoints only;
//! - Pods that are running and ready, as WorkloadEntries (their IP, labels and service
//!   account): what gives endpoints their labels for subsets, as istiod's pod cache does;
//! - Ingresses and IngressClasses (`networking.k8s.io/v1`), which the ingress gateway serves
//!   for the `istio` class;
//! - the `istio` ConfigMap in the Istio namespace (the mesh config);
//! - Secrets, of which only those a Gateway or DestinationRule names in `credentialName` are
//!   passed on, as istiod's credential controller does.
//!
//! Each object is its own "file" (`kube:Kind/namespace/name`), so one bad object is refused
//! alone and the rest of the cluster's config is served.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::Sender;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::{json, Map, Value};
use sluice_proxy::store::SourceUpdate;

/// One kind watched in the API.
#[derive(Debug, Clone, Copy)]
struct Watched {
    /// The kind as sluice names its objects' paths (`kube:Kind/ns/name`).
    path_kind: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
}

impl Watched {
    /// `group/version`, or `version` for the core group.
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether its objects name Secrets in `credentialName`.
    fn names_credentials(&self) -> bool {
        matches!(self.path_kind, "Gateway" | "DestinationRule")
    }
}

const fn watched(
    path_kind: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
) -> Watched {
    Watched {
        path_kind,
        group,
        version,
        kind,
        plural,
    }
}

/// Everything watched. The Istio kinds are those sluice decodes and serves.
const WATCHED: &[Watched] = &[
    watched(
        "VirtualService",
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    watched(
        "DestinationRule",
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    watched(
        "ServiceEntry",
        "networking.istio.io",
        "v1",
        "ServiceEntry",
        "serviceentries",
    ),
    watched(
        "Gateway",
        "networking.istio.io",
        "v1",
        "Gateway",
        "gateways",
    ),
    watched(
        "Sidecar",
        "networking.istio.io",
        "v1",
        "Sidecar",
        "sidecars",
    ),
    watched(
        "WorkloadEntry",
        "networking.istio.io",
        "v1",
        "WorkloadEntry",
        "workloadentries",
    ),
    watched(
        "AuthorizationPolicy",
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    watched(
        "PeerAuthentication",
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    watched(
        "RequestAuthentication",
        "security.istio.io",
        "v1",
        "RequestAuthentication",
        "requestauthentications",
    ),
    watched(
        "Telemetry",
        "telemetry.istio.io",
        "v1",
        "Telemetry",
        "telemetries",
    ),
    watched("Service", "", "v1", "Service", "services"),
    watched(
        "Endpoints",
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
    ),
    watched("Pod", "", "v1", "Pod", "pods"),
    // Kubernetes Ingress, which Istio's ingress gateway serves for the `istio` class.
    watched("Ingress", "networking.k8s.io", "v1", "Ingress", "ingresses"),
    watched(
        "IngressClass",
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
    ),
    watched("ConfigMap", "", "v1", "ConfigMap", "configmaps"),
    watched("Secret", "", "v1", "Secret", "secrets"),
];

/// The path prefix of a kind's objects in the store.
fn prefix(path_kind: &str) -> String {
    format!("kube:{path_kind}/")
}

fn path(path_kind: &str, namespace: &str, name: &str) -> String {
    format!("kube:{path_kind}/{namespace}/{name}")
}

/// What the source lists and watches in the API, as (API group, plural): what its RBAC must
/// grant (`deploy/base/rbac.yaml`; its test compares the two).
pub fn watched_resources() -> Vec<(&'static str, &'static str)> {
    WATCHED.iter().map(|w| (w.group, w.plural)).collect()
}

/// The Istio kinds read from the API, as (kind, API group, plural): those whose status
/// [`crate::status`] writes.
pub fn istio_kinds() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    WATCHED
        .iter()
        .filter(|w| w.group.ends_with(".istio.io"))
        .map(|w| (w.kind, w.group, w.plural))
}

/// The prefixes the store waits for before it is ready (each kind's first complete list).
pub fn prefixes() -> Vec<String> {
    WATCHED.iter().map(|w| prefix(w.path_kind)).collect()
}

/// Where the mesh config and the credentials live.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Istio's namespace, where the `istio` ConfigMap is (`istio-system`).
    pub istio_namespace: String,
    /// The namespaces whose Secrets may be credentials (where the gateways are): Secrets are
    /// watched only there, so the control plane needs to read Secrets only there (istiod reads
    /// every Secret of the cluster).
    pub credential_namespaces: Vec<String>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            istio_namespace: "istio-system".to_string(),
            credential_namespaces: vec!["istio-system".to_string()],
        }
    }
}

/// What a watcher saw, for the one task that turns it into store updates.
enum Seen {
    /// A complete list; for Secrets, of one namespace (`Some`).
    Listed(Watched, Option<String>, Vec<DynamicObject>),
    Applied(Watched, DynamicObject),
    Deleted(Watched, DynamicObject),
}

/// Watches the cluster behind `client` until `updates` is closed, sending what it sees.
pub async fn run(client: kube::Client, options: KubeOptions, updates: Sender<SourceUpdate>) {
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<Seen>(1024);
    for w in WATCHED {
        let w = *w;
        let resource = ApiResource {
            group: w.group.to_string(),
            version: w.version.to_string(),
            api_version: w.api_version(),
            kind: w.kind.to_string(),
            plural: w.plural.to_string(),
        };
        let watches: Vec<(Option<String>, Api<DynamicObject>, watcher::Config)> = match w.path_kind
        {
            "ConfigMap" => vec![(
                None,
                Api::namespaced_with(client.clone(), &options.istio_namespace, &resource),
                watcher::Config::default().fields("metadata.name=istio"),
            )],
            // istiod's filter: Helm's release records are never credentials.
            "Secret" => options
                .credential_namespaces
                .iter()
                .map(|ns| {
                    (
                        Some(ns.clone()),
                        Api::namespaced_with(client.clone(), ns, &resource),
                        watcher::Config::default().fields("type!=helm.sh/release.v1"),
                    )
                })
                .collect(),
            _ => vec![(
                None,
                Api::all_with(client.clone(), &resource),
                watcher::Config::default(),
            )],
        };
        for (namespace, api, config) in watches {
            tokio::spawn(watch(w, namespace, api, config, seen_tx.clone()));
        }
    }
    drop(seen_tx);
    let mut state = State {
        credential_namespaces: options.credential_namespaces.iter().cloned().collect(),
        ..State::default()
    };
    while let Some(seen) = seen_rx.recv().await {
        let mut out = Vec::new();
        state.take(seen, &mut out);
        for update in out {
            if updates.send(update).is_err() {
                return;
            }
        }
    }
}

/// An object's (namespace, name).
type Key = (String, String);

/// A Gateway or DestinationRule, by (kind, namespace, name).
type Owner = (&'static str, String, String);

/// An EndpointSlice: its key, and its Service with its subsets in `Endpoints` form.
type Slice = (Key, (String, Vec<Value>));

/// Follows one watch, sending what it sees (complete lists, then changes) until `seen` closes.
async fn watch(
    w: Watched,
    namespace: Option<String>,
    api: Api<DynamicObject>,
    config: watcher::Config,
    seen: tokio::sync::mpsc::Sender<Seen>,
) {
    let mut buffer = Vec::new();
    let mut listed = false;
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let item = match event {
            Ok(Event::Init) => {
                buffer.clear();
                continue;
            }
            Ok(Event::InitApply(obj)) => {
                buffer.push(obj);
                continue;
            }
            Ok(Event::InitDone) => {
                listed = true;
                Seen::Listed(w, namespace.clone(), std::mem::take(&mut buffer))
            }
            Ok(Event::Apply(obj)) => Seen::Applied(w, obj),
            Ok(Event::Delete(obj)) => Seen::Deleted(w, obj),
            // The API server does not serve the kind (its CRD is not installed): as istiod's
            // delayed informers, it counts as listed and empty, so the control plane becomes
            // ready, and the watcher's retries pick the kind up once the CRD is installed.
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if status.code == 404 && !listed =>
            {
                listed = true;
                tracing::warn!(
                    "the Kubernetes API does not serve {}/{} (is its CRD installed?): none are \
                     served until it does",
                    w.api_version(),
                    w.plural
                );
                Seen::Listed(w, namespace.clone(), Vec::new())
            }
            Err(e) => {
                // The watcher retries with backoff; the store keeps what it has.
                tracing::warn!(kind = w.kind, "watching the Kubernetes API: {e}");
                continue;
            }
        };
        if seen.send(item).await.is_err() {
            return;
        }
    }
}

/// What the source remembers to build objects from several others: EndpointSlices per
/// Service, and the Secrets and who names them.
#[derive(Default)]
struct State {
    /// (namespace, slice) → (its Service, its subsets).
    slices: BTreeMap<(String, String), (String, Vec<Value>)>,
    /// Every Secret seen, as its document.
    secrets: BTreeMap<(String, String), Value>,
    /// Where Secrets are watched, and those listed once.
    credential_namespaces: BTreeSet<String>,
    secrets_listed: BTreeSet<String>,
    /// (kind, namespace, name) of a Gateway or DestinationRule → the Secrets it names.
    credential_refs: HashMap<Owner, Vec<Key>>,
    /// Secrets passed on to the store, as sent; `None` until their first complete list.
    secrets_sent: Option<BTreeMap<Key, Value>>,
    /// Which of Secret, Gateway and DestinationRule have been listed once: Secrets are
    /// listed to the store only when all three have.
    listed: BTreeSet<&'static str>,
}

impl State {
    fn take(&mut self, seen: Seen, out: &mut Vec<SourceUpdate>) {
        match seen {
            Seen::Listed(w, namespace, objects) => match w.path_kind {
                "Endpoints" => {
                    self.slices.retain(|_, _| false);
                    for obj in &objects {
                        if let Some((key, value)) = slice(obj) {
                            self.slices.insert(key, value);
                        }
                    }
                    let services: BTreeSet<(String, String)> = self
                        .slices
                        .iter()
                        .map(|((ns, _), (svc, _))| (ns.clone(), svc.clone()))
                        .collect();
                    let objects = services
                        .into_iter()
                        .filter_map(|(ns, svc)| self.endpoints(&ns, &svc))
                        .collect();
                    out.push(SourceUpdate::Listed {
                        prefix: prefix("Endpoints"),
                        objects,
                    });
                }
                "Secret" => {
                    let namespace = namespace.unwrap_or_default();
                    self.secrets.retain(|(ns, _), _| *ns != namespace);
                    self.secrets.extend(
                        objects
                            .iter()
                            .filter_map(|o| Some((key(o)?, document(w, o)?))),
                    );
                    self.secrets_listed.insert(namespace);
                    if self.secrets_listed.is_superset(&self.credential_namespaces) {
                        self.listed.insert("Secret");
                    }
                    self.sync_secrets(out);
                }
                _ => {
                    let names_credentials = w.names_credentials();
                    if names_credentials {
                        self.credential_refs
                            .retain(|(kind, _, _), _| *kind != w.path_kind);
                        for obj in &objects {
                            self.note_credentials(w, obj, true);
                        }
                        self.listed.insert(w.path_kind);
                    }
                    let objects = objects
                        .iter()
                        .filter_map(|o| {
                            let (ns, name) = key(o)?;
                            Some((path(w.path_kind, &ns, &name), text(&document(w, o)?)))
                        })
                        .collect();
                    out.push(SourceUpdate::Listed {
                        prefix: prefix(w.path_kind),
                        objects,
                    });
                    if names_credentials {
                        self.sync_secrets(out);
                    }
                }
            },
            Seen::Applied(w, obj) if w.path_kind == "Endpoints" => {
                self.slice_changed(&obj, false, out)
            }
            Seen::Deleted(w, obj) if w.path_kind == "Endpoints" => {
                self.slice_changed(&obj, true, out)
            }
            Seen::Applied(w, obj) => {
                let Some((ns, name)) = key(&obj) else { return };
                if w.path_kind == "Secret" {
                    match document(w, &obj) {
                        Some(doc) => self.secrets.insert((ns, name), doc),
                        None => self.secrets.remove(&(ns, name)),
                    };
                    self.sync_secrets(out);
                    return;
                }
                let path = path(w.path_kind, &ns, &name);
                out.push(match document(w, &obj) {
                    Some(doc) => SourceUpdate::Applied {
                        path,
                        text: text(&doc),
                    },
                    // A pod that is no longer ready or running is no workload.
                    None => SourceUpdate::Deleted { path },
                });
                if w.names_credentials() {
                    self.note_credentials(w, &obj, true);
                    self.sync_secrets(out);
                }
            }
            Seen::Deleted(w, obj) => {
                let Some((ns, name)) = key(&obj) else { return };
                if w.path_kind == "Secret" {
                    self.secrets.remove(&(ns, name));
                    self.sync_secrets(out);
                    return;
                }
                out.push(SourceUpdate::Deleted {
                    path: path(w.path_kind, &ns, &name),
                });
                if w.names_credentials() {
                    self.note_credentials(w, &obj, false);
                    self.sync_secrets(out);
                }
            }
        }
    }

    /// An EndpointSlice added, changed or deleted: the Endpoints of its Service (and of the
    /// Service it belonged to before, if another) again.
    fn slice_changed(&mut self, obj: &DynamicObject, deleted: bool, out: &mut Vec<SourceUpdate>) {
        let Some(((ns, name), value)) = slice(obj) else {
            return;
        };
        let service = value.0.clone();
        let old = self.slices.remove(&(ns.clone(), name.clone()));
        if !deleted {
            self.slices.insert((ns.clone(), name), value);
        }
        let mut services = vec![service];
        services.extend(old.map(|(s, _)| s).filter(|s| *s != services[0]));
        for svc in services {
            out.push(match self.endpoints(&ns, &svc) {
                Some((path, text)) => SourceUpdate::Applied { path, text },
                None => SourceUpdate::Deleted {
                    path: path("Endpoints", &ns, &svc),
                },
            });
        }
    }

    /// The Endpoints object of Service `ns/svc` from its slices, or `None` if it has none.
    fn endpoints(&self, ns: &str, svc: &str) -> Option<(String, String)> {
        let subsets: Vec<Value> = self
            .slices
            .iter()
            .filter(|((slice_ns, _), (service, _))| slice_ns == ns && service == svc)
            .flat_map(|(_, (_, subsets))| subsets.iter().cloned())
            .collect();
        if subsets.is_empty() {
            return None;
        }
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": svc, "namespace": ns},
            "subsets": subsets,
        });
        Some((path("Endpoints", ns, svc), text(&doc)))
    }

    /// Records (or forgets) the Secrets a Gateway or DestinationRule names.
    fn note_credentials(&mut self, w: Watched, obj: &DynamicObject, present: bool) {
        let Some((ns, name)) = key(obj) else { return };
        let owner = (w.path_kind, ns.clone(), name);
        if !present {
            self.credential_refs.remove(&owner);
            return;
        }
        let mut names = Vec::new();
        collect_credential_names(obj.data.get("spec").unwrap_or(&Value::Null), &mut names);
        let refs = names
            .into_iter()
            .map(|n| {
                let n = n.strip_prefix("kubernetes://").unwrap_or(&n).to_string();
                (ns.clone(), n)
            })
            .collect();
        self.credential_refs.insert(owner, refs);
    }

    /// Passes on the Secrets that are named now and are new or changed since last sent, and
    /// withdraws those no longer named; the first time, as the Secrets' complete list.
    fn sync_secrets(&mut self, out: &mut Vec<SourceUpdate>) {
        if !["Secret", "Gateway", "DestinationRule"]
            .iter()
            .all(|k| self.listed.contains(k))
        {
            return;
        }
        let named: BTreeMap<Key, Value> = self
            .credential_refs
            .values()
            .flatten()
            .filter_map(|k| Some((k.clone(), self.secrets.get(k)?.clone())))
            .collect();
        let update = |(ns, name): &Key, doc: &Value| (path("Secret", ns, name), text(doc));
        match &self.secrets_sent {
            None => out.push(SourceUpdate::Listed {
                prefix: prefix("Secret"),
                objects: named.iter().map(|(k, doc)| update(k, doc)).collect(),
            }),
            Some(sent) => {
                for (ns, name) in sent.keys().filter(|k| !named.contains_key(*k)) {
                    out.push(SourceUpdate::Deleted {
                        path: path("Secret", ns, name),
                    });
                }
                for (k, doc) in named.iter().filter(|(k, doc)| sent.get(*k) != Some(*doc)) {
                    let (path, text) = update(k, doc);
                    out.push(SourceUpdate::Applied { path, text });
                }
            }
        }
        self.secrets_sent = Some(named);
    }
}

/// `credentialName`s anywhere in a Gateway's or DestinationRule's spec (servers' and
/// traffic policies' `tls`, port-level settings, subsets).
fn collect_credential_names(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("credentialName", Value::String(s)) if !s.is_empty() => out.push(s.clone()),
                    ("credentialNames", Value::Array(names)) => {
                        out.extend(names.iter().filter_map(Value::as_str).map(str::to_string))
                    }
                    _ => collect_credential_names(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_credential_names(v, out)),
        _ => {}
    }
}

fn key(obj: &DynamicObject) -> Option<(String, String)> {
    Some((
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone()?,
    ))
}

/// An EndpointSlice's key, its Service and its subsets in `Endpoints` form (ready endpoints
/// only: `conditions.ready` absent counts as ready, as the API documents).
fn slice(obj: &DynamicObject) -> Option<Slice> {
    let key = key(obj)?;
    let service = obj
        .metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")?
        .clone();
    let ports: Vec<Value> = obj
        .data
        .get("ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| {
                    let mut port = Map::new();
                    port.insert("port".into(), p.get("port")?.clone());
                    if let Some(name) = p.get("name").filter(|n| n.is_string()) {
                        port.insert("name".into(), name.clone());
                    }
                    if let Some(proto) = p.get("protocol").filter(|n| n.is_string()) {
                        port.insert("protocol".into(), proto.clone());
                    }
                    Some(Value::Object(port))
                })
                .collect()
        })
        .unwrap_or_default();
    let addresses: Vec<Value> = obj
        .data
        .get("endpoints")
        .and_then(Value::as_array)
        .map(|eps| {
            eps.iter()
                .filter(|ep| {
                    ep.pointer("/conditions/ready")
                        .and_then(Value::as_bool)
                        .unwrap_or(true)
                })
                .flat_map(|ep| {
                    ep.get("addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(|ip| json!({"ip": ip}))
                })
                .collect()
        })
        .unwrap_or_default();
    let subsets = if addresses.is_empty() {
        Vec::new()
    } else {
        vec![json!({"addresses": addresses, "ports": ports})]
    };
    Some((key, (service, subsets)))
}

/// The object as sluice reads it from a file, or `None` when it is no config (a pod that is
/// not running and ready).
fn document(w: Watched, obj: &DynamicObject) -> Option<Value> {
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(obj.metadata.name.clone()?));
    if let Some(ns) = &obj.metadata.namespace {
        metadata.insert("namespace".into(), json!(ns));
    }
    let labels = obj.metadata.labels.clone().unwrap_or_default();
    if !labels.is_empty() {
        metadata.insert("labels".into(), json!(labels));
    }
    if let Some(annotations) = obj.metadata.annotations.as_ref().filter(|a| !a.is_empty()) {
        metadata.insert("annotations".into(), json!(annotations));
    }
    if let Some(created) = &obj.metadata.creation_timestamp {
        metadata.insert("creationTimestamp".into(), json!(created.0.to_string()));
    }
    let api_version = w.api_version();
    let mut doc = Map::new();
    match w.path_kind {
        "Pod" => return pod_workload(obj, metadata, labels),
        "ConfigMap" | "Secret" => {
            doc.insert("apiVersion".into(), json!(api_version));
            doc.insert("kind".into(), json!(w.kind));
            doc.insert("metadata".into(), Value::Object(metadata));
            for field in ["type", "data"] {
                if let Some(v) = obj.data.get(field) {
                    doc.insert(field.into(), v.clone());
                }
            }
        }
        _ => {
            doc.insert("apiVersion".into(), json!(api_version));
            doc.insert("kind".into(), json!(w.kind));
            doc.insert("metadata".into(), Value::Object(metadata));
            doc.insert(
                "spec".into(),
                obj.data.get("spec").cloned().unwrap_or_else(|| json!({})),
            );
        }
    }
    Some(Value::Object(doc))
}

/// A running, ready pod with an IP as the WorkloadEntry sluice's registry reads.
fn pod_workload(
    obj: &DynamicObject,
    mut metadata: Map<String, Value>,
    labels: BTreeMap<String, String>,
) -> Option<Value> {
    let status = obj.data.get("status")?;
    if status.get("phase").and_then(Value::as_str) != Some("Running") {
        return None;
    }
    let ready = status
        .get("conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        });
    let ip = status.get("podIP").and_then(Value::as_str)?;
    if !ready || ip.is_empty() || obj.metadata.deletion_timestamp.is_some() {
        return None;
    }
    metadata.remove("annotations");
    let mut spec = Map::new();
    spec.insert("address".into(), json!(ip));
    if !labels.is_empty() {
        spec.insert("labels".into(), json!(labels));
    }
    if let Some(sa) = obj
        .data
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
    {
        spec.insert("serviceAccount".into(), json!(sa));
    }
    Some(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": metadata,
        "spec": spec,
    }))
}

fn text(doc: &Value) -> String {
    serde_json::to_string_pretty(doc).unwrap_or_default()
}
