//! One document → one [`Resource`]: `kind`/`apiVersion` dispatch, metadata, the typed spec of
//! each kind, and `kind: List` flattening.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::kube::{EndpointSubset, IngressClassSpec, IngressSpec, SecretData, ServiceSpec};
use crate::mesh::MeshConfig;
use crate::networking::{
    DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use crate::resource::{
    Diagnostic, FieldLines, Kind, ObjectMeta, Origin, Resource, ResourceFields, Severity, Spec,
};
use crate::security::{AuthorizationPolicy, PeerAuthentication};

use super::typed::{from_json, suggest};
use super::yaml::{self, Document, Positions};
use super::{legacy, LoadResult};

/// Namespace of the mesh ConfigMap, and its name.
const MESH_CONFIGMAP_NAMESPACE: &str = "istio-system";
const MESH_CONFIGMAP_NAME: &str = "istio";

/// Top-level keys of the objects sluice reads; anything else is probably a typo (`sepc:`).
const TOP_LEVEL_KEYS: [&str; 11] = [
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "status",
    "data",
    "stringData",
    "binaryData",
    "type",
    "subsets",
    "immutable",
];

/// Diagnostics of one document, positioned with its line table.
struct Doc {
    file: Arc<Path>,
    positions: Positions,
    line: u32,
    /// `Kind ns/name` once known (or just `Kind`).
    label: Option<String>,
    diagnostics: Vec<Diagnostic>,
}

impl Doc {
    fn line_of(&self, path: &str) -> u32 {
        line_of(&self.positions, self.line, path)
    }

    fn push(&mut self, severity: Severity, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        self.diagnostics.push(Diagnostic {
            severity,
            file: self.file.display().to_string(),
            line: self.line_of(&field),
            resource: self.label.clone(),
            field,
            message: message.into(),
        });
    }

    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, field, message);
    }

    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, field, message);
    }

    fn warn_all(&mut self, warnings: Vec<legacy::Warning>) {
        for (field, message) in warnings {
            self.warn(field, message);
        }
    }

    fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Decodes `value` as `T`, reporting a failure as an error on its field.
    fn typed<T: DeserializeOwned>(&mut self, value: Value, base: &str) -> Option<T> {
        match from_json(value, base) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(e.path, e.message);
                None
            }
        }
    }
}

/// The line of `path`, or of its nearest ancestor that has one, or `default`.
fn line_of(positions: &Positions, default: u32, path: &str) -> u32 {
    let mut p = path;
    loop {
        if let Some(line) = positions.get(p) {
            return *line;
        }
        match p.rfind(['.', '[']) {
            Some(i) => p = &p[..i],
            None => return default,
        }
    }
}

/// Decodes one document into `out`: a resource (unless it has errors) and its diagnostics.
pub(super) fn decode_document(doc: Document, file: &Arc<Path>, out: &mut LoadResult) {
    let Document {
        value,
        positions,
        line,
    } = doc;
    let mut d = Doc {
        file: file.clone(),
        positions,
        line,
        label: None,
        diagnostics: Vec::new(),
    };
    let resource = decode_object(value, &mut d, file, out);
    if let Some(r) = resource.filter(|_| !d.has_errors()) {
        out.resources.push(r);
    }
    out.diagnostics.extend(d.diagnostics);
}

/// Istio's kinds that sluice reads but does not enforce: Istio accepts them, so a file that
/// holds them is valid; what they ask for does not happen here, which the warning says.
const ISTIO_NOT_ENFORCED: [(&str, &str); 6] = [
    ("RequestAuthentication", "security.istio.io"),
    ("Telemetry", "telemetry.istio.io"),
    ("WorkloadGroup", "networking.istio.io"),
    ("ProxyConfig", "networking.istio.io"),
    ("EnvoyFilter", "networking.istio.io"),
    ("WasmPlugin", "extensions.istio.io"),
];

/// A kind sluice has no schema for:
/// - one of Istio's that sluice does not enforce: a warning (SLU0003) that says so;
/// - any other kind in an Istio API group, or a near-miss of a kind sluice reads
///   (`ServiceEntery`): an error, with "did you mean", since what the operator meant would
///   silently not happen;
/// - anything else (a Deployment, a ServiceAccount): a warning that it is ignored.
fn unknown_kind(kind_name: &str, api_version: &str, d: &mut Doc) {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if let Some((_, istio_group)) = ISTIO_NOT_ENFORCED
        .iter()
        .find(|(k, g)| *k == kind_name && (group.is_empty() || group == *g))
    {
        d.warn(
            "kind",
            format!(
                "SLU0003: {kind_name} ({istio_group}) is valid Istio config, but sluice does not \
                 enforce it: what it asks for does not happen"
            ),
        );
        return;
    }
    // Only near-identical names: `ServiceAccount` is not a misspelled `Service`.
    let near = Kind::ALL
        .into_iter()
        .map(|k| k.as_str())
        .chain(ISTIO_NOT_ENFORCED.iter().map(|(k, _)| *k))
        .find(|k| strsim::damerau_levenshtein(kind_name, k) <= 2);
    let istio_group = group.ends_with(".istio.io") || group == "istio.io";
    match near {
        Some(k) => d.error(
            "kind",
            format!("unknown kind {kind_name} (did you mean {k}?)"),
        ),
        None if istio_group => d.error(
            "kind",
            format!("unknown kind {kind_name}: {group} has no such kind"),
        ),
        None => d.warn(
            "kind",
            format!("kind {kind_name} is not used by sluice; ignored"),
        ),
    }
}

fn decode_object(
    value: Value,
    d: &mut Doc,
    file: &Arc<Path>,
    out: &mut LoadResult,
) -> Option<Resource> {
    let Value::Object(mut root) = value else {
        d.error(
            "",
            "expected a Kubernetes object: a mapping with apiVersion, kind and metadata",
        );
        return None;
    };

    let kind_name = match root.get("kind") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(Value::String(_)) | None => {
            d.error("kind", "kind is required");
            return None;
        }
        Some(_) => {
            d.error("kind", "kind must be a string");
            return None;
        }
    };
    if kind_name == "List" {
        flatten_list(&mut root, d, file, out);
        return None;
    }
    let api_version = match root.get("apiVersion") {
        Some(Value::String(v)) => v.clone(),
        None => String::new(),
        Some(_) => {
            d.error("apiVersion", "apiVersion must be a string");
            return None;
        }
    };

    // Label diagnostics from the raw metadata, so even objects sluice ignores are named.
    d.label = Some(raw_label(&kind_name, &root));

    let Some(kind) = Kind::parse(&kind_name) else {
        unknown_kind(&kind_name, &api_version, d);
        return None;
    };

    let accepted = kind.api_versions();
    // Same kind name, another API group (the Gateway API's `Gateway`): a different object that
    // sluice does not read, rather than a wrong version of one it does.
    let group = |v: &str| v.rsplit_once('/').map_or("", |(g, _)| g).to_string();
    if !api_version.is_empty() && !accepted.iter().any(|v| group(v) == group(&api_version)) {
        d.warn(
            "apiVersion",
            format!("kind {kind_name} of {api_version} is not used by sluice; ignored"),
        );
        return None;
    }
    // The accepted spelling itself: every resource of a kind then shares one static string.
    let Some(api_version) = accepted.iter().copied().find(|v| *v == api_version) else {
        let list = accepted.join(", ");
        if api_version.is_empty() {
            d.error(
                "apiVersion",
                format!("apiVersion is required; {kind} accepts {list}"),
            );
        } else {
            d.error(
                "apiVersion",
                format!("apiVersion {api_version} is not supported for {kind}; use one of {list}"),
            );
        }
        return None;
    };
    let meta = decode_metadata(&mut root, d)?;
    if meta.name.is_empty() {
        d.error("metadata.name", "metadata.name is required");
        return None;
    }

    for key in root.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            let hint = suggest(key, &TOP_LEVEL_KEYS)
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            d.warn(
                key.clone(),
                format!("unknown top-level field `{key}` is ignored{hint}"),
            );
        }
    }

    let spec = decode_spec(kind, &meta, &mut root, d)?;
    Some(Resource::new(ResourceFields {
        kind,
        api_version,
        meta,
        spec,
        origin: Origin {
            file: file.clone(),
            line: d.line,
            positions: FieldLines::from(std::mem::take(&mut d.positions)),
        },
    }))
}

/// `Kind ns/name` from untyped metadata (`Kind` alone when there is no name).
fn raw_label(kind: &str, root: &Map<String, Value>) -> String {
    let meta = root.get("metadata");
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let name = field("name");
    let namespace = match field("namespace") {
        "" => "default",
        ns => ns,
    };
    if name.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} {namespace}/{name}")
    }
}

fn decode_metadata(root: &mut Map<String, Value>, d: &mut Doc) -> Option<ObjectMeta> {
    let value = match root.remove("metadata") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v) => v,
    };
    let mut meta: ObjectMeta = d.typed(value, "metadata")?;
    if meta.namespace.is_empty() {
        meta.namespace = "default".to_string();
    }
    Some(meta)
}

/// `spec` (or `{}` when absent or null, which Istio treats the same).
fn take_spec(root: &mut Map<String, Value>) -> Value {
    match root.remove("spec") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v) => v,
    }
}

fn decode_spec(
    kind: Kind,
    meta: &ObjectMeta,
    root: &mut Map<String, Value>,
    d: &mut Doc,
) -> Option<Spec> {
    Some(match kind {
        Kind::VirtualService => {
            let mut value = take_spec(root);
            let warnings = legacy::match_object_to_list(&mut value, &mut d.positions);
            d.warn_all(warnings);
            let mut vs: VirtualService = d.typed(value, "spec")?;
            let warnings = legacy::virtual_service(&mut vs);
            d.warn_all(warnings);
            Spec::VirtualService(vs)
        }
        Kind::DestinationRule => {
            let dr: DestinationRule = d.typed(take_spec(root), "spec")?;
            let warnings = legacy::destination_rule(&dr);
            d.warn_all(warnings);
            Spec::DestinationRule(Box::new(dr))
        }
        Kind::ServiceEntry => Spec::ServiceEntry(d.typed::<ServiceEntry>(take_spec(root), "spec")?),
        Kind::Gateway => {
            let mut gw: Gateway = d.typed(take_spec(root), "spec")?;
            let warnings = legacy::gateway(&mut gw);
            d.warn_all(warnings);
            Spec::Gateway(gw)
        }
        Kind::WorkloadEntry => {
            Spec::WorkloadEntry(d.typed::<WorkloadEntry>(take_spec(root), "spec")?)
        }
        Kind::Sidecar => Spec::Sidecar(d.typed::<Sidecar>(take_spec(root), "spec")?),
        Kind::Service => Spec::Service(d.typed::<ServiceSpec>(take_spec(root), "spec")?),
        Kind::Endpoints => {
            let subsets = root.remove("subsets").unwrap_or(Value::Null);
            let subsets = if subsets.is_null() {
                Value::Array(Vec::new())
            } else {
                subsets
            };
            Spec::Endpoints(d.typed::<Vec<EndpointSubset>>(subsets, "subsets")?)
        }
        Kind::Secret => decode_secret(root, d)?,
        Kind::ConfigMap => decode_config_map(meta, root, d)?,
        Kind::Ingress => Spec::Ingress(d.typed::<IngressSpec>(take_spec(root), "spec")?),
        Kind::IngressClass => {
            Spec::IngressClass(d.typed::<IngressClassSpec>(take_spec(root), "spec")?)
        }
        Kind::PeerAuthentication => {
            Spec::PeerAuthentication(d.typed::<PeerAuthentication>(take_spec(root), "spec")?)
        }
        Kind::AuthorizationPolicy => {
            Spec::AuthorizationPolicy(d.typed::<AuthorizationPolicy>(take_spec(root), "spec")?)
        }
    })
}

/// A string → string map such as ConfigMap `data` (absent or null → empty).
fn string_map(
    root: &mut Map<String, Value>,
    key: &str,
    d: &mut Doc,
) -> Option<BTreeMap<String, String>> {
    match root.remove(key) {
        None | Some(Value::Null) => Some(BTreeMap::new()),
        Some(v) => d.typed(v, key),
    }
}

/// Secret `data` (base64) merged with `stringData` (plain text, wins on conflict as in
/// Kubernetes).
fn decode_secret(root: &mut Map<String, Value>, d: &mut Doc) -> Option<Spec> {
    let secret_type = match root.get("type") {
        Some(Value::String(t)) => Some(t.clone()),
        _ => None,
    };
    let encoded = string_map(root, "data", d)?;
    let plain = string_map(root, "stringData", d)?;
    let mut data = SecretData::new();
    for (key, value) in encoded {
        // `kubectl get -o yaml` never wraps, but hand-written files sometimes do.
        let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
        match base64::engine::general_purpose::STANDARD.decode(compact) {
            Ok(bytes) => {
                data.insert(key, bytes);
            }
            Err(e) => d.error(
                format!("data.{key}"),
                format!("invalid base64 ({e}); put plain text under stringData instead"),
            ),
        }
    }
    for (key, value) in plain {
        data.insert(key, value.into_bytes());
    }
    Some(Spec::Secret { secret_type, data })
}

/// ConfigMap `data`; for `istio-system/istio`, also its `mesh` key decoded as MeshConfig.
fn decode_config_map(
    meta: &ObjectMeta,
    root: &mut Map<String, Value>,
    d: &mut Doc,
) -> Option<Spec> {
    let data = string_map(root, "data", d)?;
    let is_mesh = meta.name == MESH_CONFIGMAP_NAME && meta.namespace == MESH_CONFIGMAP_NAMESPACE;
    let mesh = match data.get("mesh") {
        Some(text) if is_mesh => Some(Box::new(decode_mesh(text, d)?)),
        _ => None,
    };
    Some(Spec::ConfigMap { data, mesh })
}

/// The embedded MeshConfig YAML. Errors point at `data.mesh` and say which line of the embedded
/// text is wrong, since its lines are not lines of the file.
fn decode_mesh(text: &str, d: &mut Doc) -> Option<MeshConfig> {
    let docs = match yaml::parse_documents(text) {
        Ok(docs) => docs,
        Err(e) => {
            d.error(
                "data.mesh",
                format!(
                    "invalid mesh config (line {} of the mesh text): {}",
                    e.line, e.message
                ),
            );
            return None;
        }
    };
    let Some(doc) = docs.into_iter().next() else {
        return Some(MeshConfig::default());
    };
    match from_json::<MeshConfig>(doc.value, "") {
        Ok(mesh) => Some(mesh),
        Err(e) => {
            let inner = line_of(&doc.positions, doc.line, &e.path);
            let at = if e.path.is_empty() {
                String::new()
            } else {
                format!(" at {}", e.path)
            };
            d.error(
                "data.mesh",
                format!(
                    "invalid mesh config{at} (line {inner} of the mesh text): {}",
                    e.message
                ),
            );
            None
        }
    }
}

/// `kind: List` (what `kubectl get -o yaml` prints for several objects): each item is decoded as
/// its own document, with its own line table.
fn flatten_list(
    root: &mut Map<String, Value>,
    d: &mut Doc,
    file: &Arc<Path>,
    out: &mut LoadResult,
) {
    let items = match root.remove("items") {
        None | Some(Value::Null) => return,
        Some(Value::Array(items)) => items,
        Some(_) => {
            d.error("items", "items must be a list of objects");
            return;
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let prefix = format!("items[{i}]");
        let item_line = d.line_of(&prefix);
        let fields = format!("{prefix}.");
        let positions: Positions = yaml::positions_under(&d.positions, &fields)
            .map(|(path, line)| (path[fields.len()..].to_string(), *line))
            .collect();
        let first_key_line = item
            .as_object()
            .and_then(|o| o.keys().next())
            .and_then(|k| positions.get(k).copied())
            .unwrap_or(item_line);
        decode_document(
            Document {
                value: item,
                positions,
                line: first_key_line,
            },
            file,
            out,
        );
    }
}
